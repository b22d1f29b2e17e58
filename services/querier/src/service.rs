//! The querier as a service of the process: `build(config, deps)` and its routes.
//!
//! The querier answers from two sources merged: recent data from the ingesters (the one in
//! this process, or the ring's read set in a cluster) and the bucket's blocks, which it syncs
//! and reads itself until the store-gateway serves them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use norn_limits::Overrides;
use norn_model::{MergedProvider, MetadataReader, QueryableProvider};
use norn_server::http::Guarded;
use norn_server::periodic::{FirstRun, Periodic};
use norn_server::{Metrics, RequestGuard, Service, TenantResolver};
use norn_storage::Bucket;
use norn_tsdb::BucketStore;
use tokio_util::sync::CancellationToken;

use crate::{Config, Querier, routes};

/// Shortest bucket sync interval honoured.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// What a querier needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub tenants: TenantResolver,
    pub metrics: Arc<Metrics>,
    /// Recent data: the ingesters.
    pub recent: Arc<dyn QueryableProvider>,
    /// Metric metadata: the ingesters.
    pub metadata: Arc<dyn MetadataReader>,
    /// The bucket whose blocks the querier reads.
    pub bucket: Bucket,
    /// Local directory for the blocks' files (`blocks_storage.bucket_store.sync_dir`).
    pub sync_dir: PathBuf,
    /// How often the bucket is listed for new blocks.
    pub sync_interval: Duration,
    /// Largest POSTed query form (`frontend.max_body_size`).
    pub max_body_size: usize,
    /// Cancelled when the process stops: ends the bucket sync.
    pub stop: CancellationToken,
}

/// Why the querier did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("registering querier metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the querier: its bucket store (synced at once, then every `sync_interval`), the
/// engine over recent data and blocks merged, and the query API behind its body limit.
pub fn build(config: Config, deps: Deps) -> Result<Arc<dyn Service>, BuildError> {
    let bucket_store = Arc::new(BucketStore::new(
        deps.bucket,
        &deps.sync_dir,
        Some(&deps.metrics.registry),
    )?);
    {
        let store = Arc::clone(&bucket_store);
        Periodic::every("bucket-sync", deps.sync_interval, MIN_SYNC_INTERVAL)
            .first_run(FirstRun::Immediately)
            .spawn(deps.stop, move || {
                let store = Arc::clone(&store);
                async move {
                    match store.sync().await {
                        Ok(s) => tracing::debug!(
                            tenants = s.tenants,
                            blocks = s.blocks,
                            loaded = s.loaded,
                            failed = s.failed,
                            "bucket store synced"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "bucket store sync failed; keeping the blocks already loaded"
                        ),
                    }
                }
            });
    }
    let storage: Arc<dyn QueryableProvider> = Arc::new(MergedProvider(vec![
        deps.recent,
        bucket_store as Arc<dyn QueryableProvider>,
    ]));
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
