//! The query-frontend as a service of the process: `build(config, deps)` and its routes.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use norn_cache::Cache;
use norn_limits::Overrides;
use norn_server::http::Guarded;
use norn_server::{Metrics, RequestGuard, Service, TenantResolver};
use tokio_util::sync::CancellationToken;

use crate::api::{Frontend, routes};
use crate::metrics::FrontendMetrics;
use crate::{Config, Downstream};

/// What a query-frontend needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub tenants: TenantResolver,
    pub metrics: Arc<Metrics>,
    /// The queriers: over HTTP (`--query-frontend.downstream-url`) or in this process.
    pub downstream: Arc<dyn Downstream>,
    /// The results cache (`frontend.results_cache`); used when `cache_results` is on.
    pub results_cache: Option<Arc<dyn Cache>>,
    /// Largest POSTed query form (`frontend.max_body_size`).
    pub max_body_size: usize,
}

/// Why the query-frontend did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("registering query-frontend metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the query-frontend behind the query API's body limit and tenant check.
pub fn build(config: Config, deps: Deps) -> Result<Arc<dyn Service>, BuildError> {
    let metrics = FrontendMetrics::new(&deps.metrics.registry)?;
    let frontend = Frontend::new(
        config,
        deps.downstream,
        deps.results_cache,
        deps.overrides,
        deps.tenants,
        metrics,
    );
    let guard = RequestGuard::new(deps.max_body_size)
        .tenant_before_body(deps.tenants)
        .json_errors();
    Ok(Arc::new(Guarded::new(
        Arc::new(FrontendService(frontend)),
        guard,
    )))
}

struct FrontendService(Arc<Frontend>);

#[async_trait]
impl Service for FrontendService {
    fn name(&self) -> &'static str {
        "query-frontend"
    }

    fn routes(&self) -> Router {
        routes(Arc::clone(&self.0))
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn shutdown(&self, _: CancellationToken) {}
}
