//! The querier as a service of the process: `build(config, deps)` and its routes.
//!
//! The querier answers from two sources merged: recent data from the ingesters (the one in
//! this process, or the ring's read set in a cluster), asked only for the last
//! `query_ingesters_within` of a query ([`crate::split`]), and the bucket's blocks through the
//! store-gateways (`norn_storegateway_client`), which serve what is older than
//! `query_store_after`.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use norn_limits::Overrides;
use norn_model::{MergedProvider, MetadataReader, QueryableProvider};
use norn_server::http::Guarded;
use norn_server::{Metrics, RequestGuard, Service, TenantResolver};
use tokio_util::sync::CancellationToken;

use crate::split::IngestersWithin;
use crate::{Config, Querier, routes};

/// What a querier needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub tenants: TenantResolver,
    pub metrics: Arc<Metrics>,
    /// Recent data: the ingesters.
    pub recent: Arc<dyn QueryableProvider>,
    /// Metric metadata: the ingesters.
    pub metadata: Arc<dyn MetadataReader>,
    /// The bucket's blocks: the store-gateways (`norn_storegateway_client`). `None` queries
    /// the ingesters alone.
    pub blocks: Option<Arc<dyn QueryableProvider>>,
    /// Largest POSTed query form (`frontend.max_body_size`).
    pub max_body_size: usize,
}

/// Why the querier did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("registering querier metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the querier: the engine over recent data and blocks merged, and the query API
/// behind its body limit.
pub fn build(config: Config, deps: Deps) -> Result<Arc<dyn Service>, BuildError> {
    let mut sources = vec![IngestersWithin::wrap(
        deps.recent,
        config.query_ingesters_within,
    )];
    sources.extend(deps.blocks);
    let storage: Arc<dyn QueryableProvider> = Arc::new(MergedProvider(sources));
    let querier = Querier::new(
        config,
        storage,
        deps.metadata,
        deps.tenants,
        deps.overrides,
        &deps.metrics.registry,
    )?;
    // POSTed query forms: bounded, and from a known tenant before they are read.
    let guard = RequestGuard::new(deps.max_body_size)
        .tenant_before_body(deps.tenants)
        .json_errors();
    Ok(Arc::new(Guarded::new(
        Arc::new(QuerierService(querier)),
        guard,
    )))
}

/// The querier inside the process.
pub struct QuerierService(pub Arc<Querier>);

#[async_trait]
impl Service for QuerierService {
    fn name(&self) -> &'static str {
        "querier"
    }

    fn routes(&self) -> Router {
        routes(Arc::clone(&self.0))
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn shutdown(&self, _: CancellationToken) {}
}
