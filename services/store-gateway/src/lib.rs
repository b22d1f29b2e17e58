//! The store-gateway: serves the blocks in the bucket to queriers without downloading them.
//!
//! For each block it owns it keeps an [index-header](header) on local disk (TOC, symbols,
//! postings offset table — fetched with ranged reads, memory-mapped, opened lazily and
//! closed when idle), and answers `Series`, `LabelNames` and `LabelValues` by reading just
//! the postings lists, series entries and chunks a query needs with coalesced ranged GETs
//! ([`fetch`], [`partition`]) through the index and chunks caches. [`store`] keeps the set
//! of owned blocks in step with the bucket; [`grpc`] is the API, usable in-process
//! ([`StoreGatewayService::api`]) or over gRPC; [`limits`] bounds concurrent queries and
//! bytes in flight.
//!
//! Blocks in the bucket carry no tombstones in Norn (nor in Mimir): the `tombstones` file is
//! not read.

pub mod block;
pub mod error;
pub mod expanded;
pub mod fetch;
pub mod grpc;
pub mod header;
pub mod limits;
pub mod metrics;
pub mod partition;
pub mod store;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use norn_cache::Cache;
use norn_model::duration::serde_duration;
use norn_proto::MessageLimits;
use norn_proto::storegateway::v1::store_gateway_server::StoreGatewayServer;
use norn_server::periodic::{FirstRun, Periodic};
use norn_server::{Metrics, Service};
use norn_storage::Bucket;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};
pub use grpc::StoreGatewayApi;
pub use metrics::StoreGatewayMetrics;
pub use store::{BlockStore, SyncStats};

/// Whether this instance serves a block. The ring-based implementation lives with the
/// store-gateway ring; [`OwnAll`] serves everything (one process, or tests).
pub trait BlockOwnership: Send + Sync {
    fn owns(&self, tenant: &str, block_id: &str) -> bool;
}

/// Owns every block: `all` mode, a single store-gateway.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnAll;

impl BlockOwnership for OwnAll {
    fn owns(&self, _tenant: &str, _block_id: &str) -> bool {
        true
    }
}

/// `blocks_storage.bucket_store.index_header`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexHeaderConfig {
    /// Map a block's index-header on first use rather than at load.
    pub lazy_loading_enabled: bool,
    /// Unmap an index-header unused for this long (lazy loading only; 0 = never).
    #[serde(with = "serde_duration")]
    pub lazy_loading_idle_timeout: Duration,
}

impl Default for IndexHeaderConfig {
    fn default() -> Self {
        Self {
            lazy_loading_enabled: true,
            lazy_loading_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// The store-gateway's settings: Mimir's keys under `blocks_storage.bucket_store`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Local directory for index-headers (`<dir>/<tenant>/<ULID>/index-header`).
    pub sync_dir: PathBuf,
    /// How often the owned blocks are re-synced with the bucket (and once at start).
    #[serde(with = "serde_duration")]
    pub sync_interval: Duration,
    /// Queries reading blocks at once.
    pub max_concurrent: usize,
    /// How long a query waits for a slot (or for fetch budget) before it is refused.
    #[serde(with = "serde_duration")]
    pub max_concurrent_queue_timeout: Duration,
    /// Bytes queries may hold fetched from the bucket at once (Norn's own limit).
    pub max_inflight_fetch_bytes: u64,
    /// Index-headers built at once.
    pub block_sync_concurrency: usize,
    /// Blocks whose min time is within this of now are not served (ingesters serve them), as
    /// Mimir: the querier asks store-gateways only for data older than `query_store_after`.
    #[serde(with = "serde_duration")]
    pub ignore_blocks_within: Duration,
    /// Blocks marked for deletion longer ago than this are no longer served.
    #[serde(with = "serde_duration")]
    pub ignore_deletion_mark_delay: Duration,
    pub index_header: IndexHeaderConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sync_dir: PathBuf::from("./tsdb-sync"),
            sync_interval: Duration::from_secs(15 * 60),
            max_concurrent: 200,
            max_concurrent_queue_timeout: Duration::from_secs(5),
            max_inflight_fetch_bytes: 1 << 30,
            block_sync_concurrency: 4,
            ignore_blocks_within: Duration::from_secs(10 * 3600),
            ignore_deletion_mark_delay: Duration::from_secs(3600),
            index_header: IndexHeaderConfig::default(),
        }
    }
}

impl Config {
    /// Refuses settings the store-gateway cannot honour.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_concurrent == 0 {
            return Err("blocks_storage.bucket_store.max_concurrent must be at least 1".into());
        }
        if self.block_sync_concurrency == 0 {
            return Err(
                "blocks_storage.bucket_store.block_sync_concurrency must be at least 1".into(),
            );
        }
        if self.max_inflight_fetch_bytes < 1 << 20 {
            return Err(
                "blocks_storage.bucket_store.max_inflight_fetch_bytes must be at least 1MiB".into(),
            );
        }
        Ok(())
    }
}

/// What the store-gateway needs from the process.
pub struct Deps {
    pub bucket: Bucket,
    /// Which blocks this instance serves.
    pub ownership: Arc<dyn BlockOwnership>,
    /// Postings and series entries.
    pub index_cache: Arc<dyn Cache>,
    /// Chunks.
    pub chunks_cache: Arc<dyn Cache>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the process stops: ends the sync loop.
    pub stop: CancellationToken,
    /// The gRPC server's message bounds (`--server.grpc-max-*-msg-size-bytes`).
    pub grpc_limits: MessageLimits,
}

/// Why the store-gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("registering store-gateway metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("invalid store-gateway configuration: {0}")]
    Config(String),
}

/// Smallest sync period accepted (a zero setting must not spin).
const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The running store-gateway.
pub struct StoreGatewayService {
    store: Arc<BlockStore>,
    api: Arc<StoreGatewayApi>,
    stop: CancellationToken,
    grpc_limits: MessageLimits,
}

impl StoreGatewayService {
    /// The API, for in-process callers.
    pub fn api(&self) -> Arc<StoreGatewayApi> {
        Arc::clone(&self.api)
    }

    /// The block set (sync on demand, inspection).
    pub fn store(&self) -> &Arc<BlockStore> {
        &self.store
    }
}

/// Builds the store-gateway and starts its sync loop (first sync at once) and, with lazy
/// loading, the loop closing idle index-headers. Must run inside a Tokio runtime.
pub fn build(
    config: Config,
    deps: Deps,
) -> std::result::Result<Arc<StoreGatewayService>, BuildError> {
    let metrics = StoreGatewayMetrics::new(&deps.metrics.registry)?;
    build_with(config, deps, metrics)
}

/// [`build`] with metrics already registered (tests use their own registry).
pub fn build_with(
    config: Config,
    deps: Deps,
    metrics: StoreGatewayMetrics,
) -> std::result::Result<Arc<StoreGatewayService>, BuildError> {
    build_inner(config, deps, metrics, true)
}

/// `loops: false` starts no background task (tests drive syncs and idle closing).
fn build_inner(
    config: Config,
    deps: Deps,
    metrics: StoreGatewayMetrics,
    loops: bool,
) -> std::result::Result<Arc<StoreGatewayService>, BuildError> {
    config.validate().map_err(BuildError::Config)?;
    // Our own token: shutting the store-gateway down must not stop the rest of the process.
    let stop = deps.stop.child_token();
    let store = Arc::new(BlockStore::new(
        store::StoreOptions {
            sync_dir: config.sync_dir.clone(),
            ignore_blocks_within: config.ignore_blocks_within,
            ignore_deletion_mark_delay: config.ignore_deletion_mark_delay,
            block_sync_concurrency: config.block_sync_concurrency,
            lazy_loading: config.index_header.lazy_loading_enabled,
        },
        deps.bucket,
        deps.ownership,
        fetch::Caches {
            index: deps.index_cache,
            chunks: deps.chunks_cache,
        },
        metrics.clone(),
    ));
    let limiter = limits::Limiter::new(
        config.max_concurrent,
        config.max_inflight_fetch_bytes,
        config.max_concurrent_queue_timeout,
    );
    let api = Arc::new(StoreGatewayApi::new(Arc::clone(&store), limiter, metrics));
    if loops {
        let store = Arc::clone(&store);
        Periodic::every(
            "store-gateway-sync",
            config.sync_interval,
            MIN_SYNC_INTERVAL,
        )
        .first_run(FirstRun::Immediately)
        .spawn(stop.clone(), move || {
            let store = Arc::clone(&store);
            async move {
                match store.sync().await {
                    Ok(s) => tracing::debug!(?s, "store-gateway synced"),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "store-gateway sync failed; keeping the blocks already loaded"
                    ),
                }
            }
        });
    }
    let idle = config.index_header.lazy_loading_idle_timeout;
    if loops && config.index_header.lazy_loading_enabled && !idle.is_zero() {
        let store = Arc::clone(&store);
        Periodic::every("index-header-idle", idle / 4, MIN_SYNC_INTERVAL).spawn(
            stop.clone(),
            move || {
                let store = Arc::clone(&store);
                async move {
                    let n = store.close_idle(idle);
                    if n > 0 {
                        tracing::debug!(closed = n, "closed idle index-headers");
                    }
                }
            },
        );
    }
    Ok(Arc::new(StoreGatewayService {
        store,
        api,
        stop,
        grpc_limits: deps.grpc_limits,
    }))
}

impl StoreGatewayService {
    /// The tonic service for a gRPC server (what `grpc_services` registers).
    pub fn grpc_server(&self) -> StoreGatewayServer<StoreGatewayApi> {
        StoreGatewayServer::from_arc(Arc::clone(&self.api))
            .max_decoding_message_size(self.grpc_limits.max_recv)
            .max_encoding_message_size(self.grpc_limits.max_send)
    }
}

#[async_trait]
impl Service for StoreGatewayService {
    fn name(&self) -> &'static str {
        "store-gateway"
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(self.grpc_server());
    }

    fn ready(&self) -> std::result::Result<(), String> {
        if self.store.is_listed() {
            Ok(())
        } else {
            Err("store-gateway: the initial sync has not listed the owned blocks yet".into())
        }
    }

    async fn shutdown(&self, _abandon: CancellationToken) {
        // Nothing to make durable: headers are rebuilt or reused at the next start.
        self.stop.cancel();
    }
}
