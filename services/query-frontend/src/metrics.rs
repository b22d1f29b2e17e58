//! The query-frontend's metrics (`norn_query_frontend_*`).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Registered once per process (see `norn_server::metrics` for the idiom).
#[derive(Clone)]
pub struct FrontendMetrics {
    /// Requests answered, by `op` (`query_range`, `query`, `series`, …) and HTTP `status`.
    pub queries: IntCounterVec,
    /// Time to answer a request, by `op`.
    pub duration: HistogramVec,
    /// Split legs (parts of a range query asked of a querier or the cache).
    pub split_queries: IntCounter,
    /// Legs answered wholly from the results cache.
    pub cache_hits: IntCounter,
    /// Legs that needed a querier for some or all of their range.
    pub cache_misses: IntCounter,
    /// Requests to a querier sent again after a 5xx or no answer.
    pub retries: IntCounter,
    /// Queries run sharded.
    pub sharded_queries: IntCounter,
    /// Legs of sharded queries sent to a querier (shards × parts, per part asked).
    pub sharded_legs: IntCounter,
}

impl FrontendMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let queries = IntCounterVec::new(
            Opts::new(
                "norn_query_frontend_queries_total",
                "Query API requests the query-frontend answered, by operation and HTTP status.",
            ),
            &["op", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_query_frontend_request_duration_seconds",
                "Time the query-frontend took to answer a request, by operation.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["op"],
        )?;
        let split_queries = IntCounter::new(
            "norn_query_frontend_split_queries_total",
            "Split legs of range queries, each answered by a querier or the results cache.",
        )?;
        let cache_hits = IntCounter::new(
            "norn_query_frontend_results_cache_hits_total",
            "Split legs answered wholly from the results cache.",
        )?;
        let cache_misses = IntCounter::new(
            "norn_query_frontend_results_cache_misses_total",
            "Split legs that needed a querier for some or all of their range.",
        )?;
        let retries = IntCounter::new(
            "norn_query_frontend_retries_total",
            "Requests to a querier sent again after a 5xx answer or none.",
        )?;
        let sharded_queries = IntCounter::new(
            "norn_query_frontend_sharded_queries_total",
            "Queries the query-frontend ran sharded (as legs over disjoint shards of the series).",
        )?;
        let sharded_legs = IntCounter::new(
            "norn_query_frontend_sharded_query_legs_total",
            "Legs of sharded queries sent to a querier, one per shard of each part asked.",
        )?;
        registry.register(Box::new(sharded_queries.clone()))?;
        registry.register(Box::new(sharded_legs.clone()))?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(split_queries.clone()))?;
        registry.register(Box::new(cache_hits.clone()))?;
        registry.register(Box::new(cache_misses.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        Ok(Self {
            queries,
            duration,
            split_queries,
            cache_hits,
            cache_misses,
            retries,
            sharded_queries,
            sharded_legs,
        })
    }
}
