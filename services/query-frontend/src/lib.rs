//! The query-frontend: the public query API (`/prometheus/api/v1/*`) in front of the queriers.
//!
//! Every query API request reaches a querier through the frontend. Range queries go through a
//! pipeline ([`range`]), in Mimir's order:
//!
//! 1. parse and validate (`promql-parser`, on a query thread; Prometheus' error shape, step
//!    and 11,000-point rules), and the tenant's limits (`max_query_lookback` moves the start
//!    up, `max_query_length` and `max_total_query_length` refuse with 400);
//! 2. align start and end to the step (`align_queries_with_step`);
//! 3. split at multiples of `split_queries_by_interval` ([`split`]); the legs run at once, at
//!    most `max_query_parallelism` (per tenant) at a time, and are merged ([`response`]);
//! 4. per leg, the results cache ([`extents`]): what was answered before is read back, only
//!    the gaps are asked of a querier, and the new parts are stored, except the freshest
//!    `max_cache_freshness` and answers with warnings;
//! 5. each request to a querier is retried on a 5xx or no answer (`max_retries`).
//!
//! Instant queries are validated and forwarded; series, labels, label values, metadata,
//! build info and `format_query` are forwarded as they are. The pipeline ends in a
//! [`Downstream`]: a querier's HTTP address (`--query-frontend.downstream-url`), or the
//! per-tenant fair [`queue`] that queriers' [`worker`]s pull from, over gRPC
//! ([`frontend_grpc`]) or in this process; see `docs/architecture.md`.

mod api;
pub mod downstream;
pub mod extents;
pub mod frontend_grpc;
pub mod metrics;
pub mod queue;
pub mod queue_metrics;
pub mod queue_service;
mod range;
pub mod response;
mod service;
pub mod shard_merge;
mod shard_run;
#[cfg(test)]
mod shard_tests;
pub mod sharding;
pub mod split;
#[cfg(test)]
mod tests;
pub mod worker;

use std::time::Duration;

pub use downstream::{
    Downstream, DownstreamError, DownstreamRequest, DownstreamResponse, HttpDownstream,
    RouterDownstream,
};
pub use service::{BuildError, Deps, build};

/// The query-frontend's settings (YAML `frontend`, in the binary).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Move start and end down to multiples of the step.
    pub align_queries_with_step: bool,
    /// Split range queries at multiples of this (zero: no splitting).
    pub split_queries_by_interval: Duration,
    /// Cache range query results.
    pub cache_results: bool,
    /// Times a request to a querier is sent again after a 5xx or no answer.
    pub max_retries: usize,
    /// Run shardable queries as the tenant's `query_sharding_total_shards` legs.
    pub parallelize_shardable_queries: bool,
    /// Log queries slower than this (zero: none).
    pub log_queries_longer_than: Duration,
    /// Longest query text accepted, in bytes (0 = no limit); the querier's setting.
    pub max_query_expression_size_bytes: usize,
    /// Deepest nesting accepted; the querier's setting.
    pub max_query_expression_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            align_queries_with_step: false,
            split_queries_by_interval: Duration::from_secs(24 * 3600),
            cache_results: false,
            max_retries: 5,
            parallelize_shardable_queries: false,
            log_queries_longer_than: Duration::ZERO,
            max_query_expression_size_bytes: norn_promql::DEFAULT_MAX_QUERY_BYTES,
            max_query_expression_depth: norn_promql::DEFAULT_MAX_QUERY_DEPTH,
        }
    }
}
