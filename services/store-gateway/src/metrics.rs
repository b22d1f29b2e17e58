//! The store-gateway's metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges of one store-gateway (registered once per process).
#[derive(Clone)]
pub struct StoreGatewayMetrics {
    /// Bytes read from the bucket, by `kind` (`postings`, `series`, `chunks`,
    /// `index-header`): cache misses only.
    pub bucket_bytes_fetched: IntCounterVec,
    /// GET requests sent to the bucket, by `kind`.
    pub bucket_requests: IntCounterVec,
    /// Cache lookups and hits, by `cache` (`index`, `chunks`).
    pub cache_requests: IntCounterVec,
    pub cache_hits: IntCounterVec,
    /// Queries failed because a block was damaged, by tenant.
    pub block_errors: IntCounterVec,
    pub blocks_loaded: IntGauge,
    pub headers_open: IntGauge,
    pub header_builds: IntCounter,
    pub header_build_failures: IntCounter,
    pub header_lazy_loads: IntCounter,
    pub header_lazy_unloads: IntCounter,
    pub syncs: IntCounter,
    pub sync_failures: IntCounter,
    /// Requests refused because the process was over its budget.
    pub overloaded: IntCounter,
}

impl StoreGatewayMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let m = Self {
            bucket_bytes_fetched: vec(
                "norn_storegateway_bucket_bytes_fetched_total",
                "Bytes the store-gateway read from the bucket (cache misses), by kind.",
                "kind",
            )?,
            bucket_requests: vec(
                "norn_storegateway_bucket_get_requests_total",
                "Ranged GET requests the store-gateway sent to the bucket, by kind.",
                "kind",
            )?,
            cache_requests: vec(
                "norn_storegateway_cache_requests_total",
                "Items looked up in the index and chunks caches.",
                "cache",
            )?,
            cache_hits: vec(
                "norn_storegateway_cache_hits_total",
                "Items found in the index and chunks caches.",
                "cache",
            )?,
            block_errors: vec(
                "norn_storegateway_block_errors_total",
                "Requests failed because a block's data was damaged, by tenant.",
                "tenant",
            )?,
            blocks_loaded: IntGauge::new(
                "norn_storegateway_blocks_loaded",
                "Blocks this store-gateway owns and serves.",
            )?,
            headers_open: IntGauge::new(
                "norn_storegateway_index_headers_open",
                "Index-headers memory-mapped now.",
            )?,
            header_builds: IntCounter::new(
                "norn_storegateway_index_header_builds_total",
                "Index-headers built from the bucket.",
            )?,
            header_build_failures: IntCounter::new(
                "norn_storegateway_index_header_build_failures_total",
                "Index-header builds that failed (block not served until a later sync succeeds).",
            )?,
            header_lazy_loads: IntCounter::new(
                "norn_storegateway_index_header_lazy_load_total",
                "Index-headers opened on first use.",
            )?,
            header_lazy_unloads: IntCounter::new(
                "norn_storegateway_index_header_lazy_unload_total",
                "Index-headers closed after the idle timeout.",
            )?,
            syncs: IntCounter::new(
                "norn_storegateway_syncs_total",
                "Syncs of the owned blocks with the bucket.",
            )?,
            sync_failures: IntCounter::new(
                "norn_storegateway_sync_failures_total",
                "Syncs that failed for at least one tenant (its previous blocks are kept).",
            )?,
            overloaded: IntCounter::new(
                "norn_storegateway_requests_refused_total",
                "Requests refused because the store-gateway's concurrency or byte budget was spent.",
            )?,
        };
        registry.register(Box::new(m.bucket_bytes_fetched.clone()))?;
        registry.register(Box::new(m.bucket_requests.clone()))?;
        registry.register(Box::new(m.cache_requests.clone()))?;
        registry.register(Box::new(m.cache_hits.clone()))?;
        registry.register(Box::new(m.block_errors.clone()))?;
        registry.register(Box::new(m.blocks_loaded.clone()))?;
        registry.register(Box::new(m.headers_open.clone()))?;
        registry.register(Box::new(m.header_builds.clone()))?;
        registry.register(Box::new(m.header_build_failures.clone()))?;
        registry.register(Box::new(m.header_lazy_loads.clone()))?;
        registry.register(Box::new(m.header_lazy_unloads.clone()))?;
        registry.register(Box::new(m.syncs.clone()))?;
        registry.register(Box::new(m.sync_failures.clone()))?;
        registry.register(Box::new(m.overloaded.clone()))?;
        Ok(m)
    }

    /// Bytes fetched from the bucket so far for `kind`.
    pub fn fetched(&self, kind: &str) -> u64 {
        self.bucket_bytes_fetched.with_label_values(&[kind]).get()
    }
}
