//! A cache's Prometheus metrics, all labelled `name` (`index-cache`, `chunks-cache`,
//! `results-cache`) and `backend`.
//!
//! The label pair is a constant label of each collector, so several caches register the same
//! metric names in one registry side by side; registering one name twice is an error.
//!
//! Mimir's equivalents, for dashboards being ported:
//!
//! | Norn | Mimir |
//! |---|---|
//! | `norn_cache_requests_total` | (get calls; no direct equivalent) |
//! | `norn_cache_items_fetched_total` | `thanos_cache_requests_total` |
//! | `norn_cache_items_hit_total` | `thanos_cache_hits_total` |
//! | `norn_cache_items_missed_total` | requests − hits |
//! | `norn_cache_items_stored_total` | `thanos_cache_operations_total{operation="set"}` |
//! | `norn_cache_items_skipped_total{reason="too-large"}` | `thanos_cache_operation_skipped_total{reason="too-big"}` |
//! | `norn_cache_items_skipped_total{reason="no-room"}` | (none: a wide read's values offered only for free room) |
//! | `norn_cache_evictions_total` | `thanos_store_index_cache_items_evicted_total` |
//! | `norn_cache_stored_bytes`, `norn_cache_stored_items` | `thanos_store_index_cache_items_size_bytes`, `..._items` |
//! | `norn_cache_failures_total{operation,reason}` | `thanos_cache_operation_failures_total` (`thanos_memcached_…` in older versions) |
//! | `norn_cache_operation_duration_seconds{operation}` | `thanos_cache_operation_duration_seconds` |
//! | `norn_cache_servers` | `thanos_cache_dns_provider_results` (memcached servers known) |

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Why an item was not stored.
pub const SKIP_TOO_LARGE: &str = "too-large";
/// Offered to [`crate::Cache::set_many_if_room`] when the cache had no room to spare.
pub const SKIP_NO_ROOM: &str = "no-room";

/// Why a memcached operation failed.
pub const FAIL_TIMEOUT: &str = "timeout";
pub const FAIL_IO: &str = "io";
pub const FAIL_PROTOCOL: &str = "protocol";
pub const FAIL_SERVER: &str = "server-error";
pub const FAIL_NO_SERVER: &str = "no-server";

/// Metrics of one cache.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// `get_many` calls.
    pub requests: IntCounter,
    pub items_fetched: IntCounter,
    pub items_hit: IntCounter,
    pub items_missed: IntCounter,
    pub items_stored: IntCounter,
    pub items_skipped_too_large: IntCounter,
    /// In-memory only: offered only for free room, and the cache had none.
    pub items_skipped_no_room: IntCounter,
    /// In-memory only: items dropped to stay within the byte bound.
    pub evictions: IntCounter,
    /// In-memory only.
    pub stored_bytes: IntGauge,
    pub stored_items: IntGauge,
    /// Memcached only: by operation (`get`, `set`) and reason.
    pub failures: IntCounterVec,
    /// Memcached only: servers currently known.
    pub servers: IntGauge,
    pub get_duration: Histogram,
    pub set_duration: Histogram,
}

impl CacheMetrics {
    /// Creates the metrics of cache `name` with backend `backend` and registers them.
    pub fn new(registry: &Registry, name: &str, backend: &str) -> prometheus::Result<Self> {
        let opts = |metric: &str, help: &str| {
            Opts::new(metric, help)
                .const_label("name", name)
                .const_label("backend", backend)
        };
        let counter = |metric: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(opts(metric, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |metric: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::with_opts(opts(metric, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let requests = counter(
            "norn_cache_requests_total",
            "Cache lookups (get_many calls).",
        )?;
        let items_fetched = counter(
            "norn_cache_items_fetched_total",
            "Keys looked up in the cache.",
        )?;
        let items_hit = counter("norn_cache_items_hit_total", "Keys found in the cache.")?;
        let items_missed = counter(
            "norn_cache_items_missed_total",
            "Keys not found in the cache (absent, expired, or the backend failed).",
        )?;
        let items_stored = counter(
            "norn_cache_items_stored_total",
            "Items handed to the backend to store.",
        )?;
        let skipped = IntCounterVec::new(
            opts(
                "norn_cache_items_skipped_total",
                "Items not stored, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        let evictions = counter(
            "norn_cache_evictions_total",
            "Items the in-memory cache dropped to stay within its size bound.",
        )?;
        let stored_bytes = gauge(
            "norn_cache_stored_bytes",
            "Memory held by the in-memory cache: keys, values and its per-item overhead (what its size bound counts).",
        )?;
        let stored_items = gauge(
            "norn_cache_stored_items",
            "Items held by the in-memory cache.",
        )?;
        let failures = IntCounterVec::new(
            opts(
                "norn_cache_failures_total",
                "Backend operations that failed (answered as misses), by operation and reason.",
            ),
            &["operation", "reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        let servers = gauge(
            "norn_cache_servers",
            "Memcached servers the cache currently spreads keys over.",
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_cache_operation_duration_seconds",
                "Duration of cache operations (a whole get_many or set_many), by operation.",
            )
            .const_label("name", name)
            .const_label("backend", backend)
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["operation"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(CacheMetrics {
            requests,
            items_fetched,
            items_hit,
            items_missed,
            items_stored,
            items_skipped_too_large: skipped.with_label_values(&[SKIP_TOO_LARGE]),
            items_skipped_no_room: skipped.with_label_values(&[SKIP_NO_ROOM]),
            evictions,
            stored_bytes,
            stored_items,
            failures,
            servers,
            get_duration: duration.with_label_values(&["get"]),
            set_duration: duration.with_label_values(&["set"]),
        })
    }

    /// Metrics registered nowhere, for tests and callers that do not export them.
    pub fn unregistered(name: &str, backend: &str) -> Self {
        // A fresh registry cannot already hold these names.
        Self::new(&Registry::new(), name, backend).expect("fresh registry")
    }

    /// Counts one lookup of `asked` keys of which `hit` were found.
    pub(crate) fn lookup(&self, asked: usize, hit: usize) {
        self.requests.inc();
        self.items_fetched.inc_by(asked as u64);
        self.items_hit.inc_by(hit as u64);
        self.items_missed.inc_by(asked.saturating_sub(hit) as u64);
    }

    /// Counts a failed memcached operation.
    pub(crate) fn failed(&self, operation: &str, reason: &str) {
        self.failures.with_label_values(&[operation, reason]).inc();
    }
}
