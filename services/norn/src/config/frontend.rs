//! `frontend`: the query-frontend's block (Mimir's `frontend` YAML block and
//! `query-frontend.*` flags): the query API's body bound, splitting, step alignment, the
//! results cache, retries, the slow-query log, the queue, and where the queriers are.

use std::time::Duration;

use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set, set_duration};

/// `frontend` in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendConfig {
    /// Largest query API request body, in bytes (POSTed forms).
    pub max_body_size: usize,
    /// The results cache (`--query-frontend.results-cache.*`).
    #[serde(deserialize_with = "super::cache::de_results_cache")]
    pub results_cache: norn_cache::CacheConfig,
    /// Move range queries' start and end down to multiples of their step.
    pub align_queries_with_step: bool,
    /// Split range queries at multiples of this (0: no splitting).
    #[serde(with = "serde_duration")]
    pub split_queries_by_interval: Duration,
    /// Cache range query results (in `results_cache`).
    pub cache_results: bool,
    /// Times a request to a querier is retried after a 5xx or no answer.
    pub max_retries: usize,
    /// Run shardable queries as `query_sharding_total_shards` legs over disjoint series.
    pub parallelize_shardable_queries: bool,
    /// Log queries slower than this (0: none).
    #[serde(with = "serde_duration")]
    pub log_queries_longer_than: Duration,
    /// A querier's HTTP address (`http://querier:8080`), when the querier is not in this
    /// process.
    pub downstream_url: String,
    /// Requests a tenant may have waiting in the queue for a querier; more get 429.
    pub max_outstanding_per_tenant: usize,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        let d = norn_query_frontend::Config::default();
        Self {
            max_body_size: 10 << 20,
            results_cache: super::cache::default_results_cache(),
            align_queries_with_step: d.align_queries_with_step,
            split_queries_by_interval: d.split_queries_by_interval,
            cache_results: d.cache_results,
            max_retries: d.max_retries,
            parallelize_shardable_queries: d.parallelize_shardable_queries,
            log_queries_longer_than: d.log_queries_longer_than,
            downstream_url: String::new(),
            max_outstanding_per_tenant: 100,
        }
    }
}

/// The `query-frontend.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Query frontend")]
pub struct FrontendFlags {
    /// Largest body of a query API request (POST form), in bytes.
    #[arg(
        long = "query-frontend.max-body-size",
        env = "NORN_QUERY_FRONTEND_MAX_BODY_SIZE"
    )]
    pub max_body_size: Option<usize>,
    /// Move range queries' start and end down to multiples of their step (makes them cacheable).
    #[arg(
        long = "query-frontend.align-queries-with-step",
        env = "NORN_QUERY_FRONTEND_ALIGN_QUERIES_WITH_STEP",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub align_queries_with_step: Option<bool>,
    /// Split range queries at multiples of this interval (0 = no splitting).
    #[arg(
        long = "query-frontend.split-queries-by-interval",
        env = "NORN_QUERY_FRONTEND_SPLIT_QUERIES_BY_INTERVAL"
    )]
    pub split_queries_by_interval: Option<Deferred>,
    /// Cache range query results in the results cache.
    #[arg(
        long = "query-frontend.cache-results",
        env = "NORN_QUERY_FRONTEND_CACHE_RESULTS",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub cache_results: Option<bool>,
    /// Times a request to a querier is retried after a 5xx or no answer.
    #[arg(
        long = "query-frontend.max-retries-per-request",
        env = "NORN_QUERY_FRONTEND_MAX_RETRIES_PER_REQUEST"
    )]
    pub max_retries: Option<usize>,
    /// Run shardable queries (sum, count, min, max, avg, topk… over series-local
    /// expressions) as legs over disjoint shards of the series, and combine them.
    #[arg(
        long = "query-frontend.parallelize-shardable-queries",
        env = "NORN_QUERY_FRONTEND_PARALLELIZE_SHARDABLE_QUERIES",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub parallelize_shardable_queries: Option<bool>,
    /// Log queries slower than this (0 = off).
    #[arg(
        long = "query-frontend.log-queries-longer-than",
        env = "NORN_QUERY_FRONTEND_LOG_QUERIES_LONGER_THAN"
    )]
    pub log_queries_longer_than: Option<Deferred>,
    /// A querier's HTTP address (http://host:port) when no querier runs in this process.
    #[arg(
        long = "query-frontend.downstream-url",
        env = "NORN_QUERY_FRONTEND_DOWNSTREAM_URL"
    )]
    pub downstream_url: Option<String>,
    /// Requests one tenant may have waiting for a querier; more get 429.
    #[arg(
        long = "query-frontend.max-outstanding-requests-per-tenant",
        env = "NORN_QUERY_FRONTEND_MAX_OUTSTANDING_REQUESTS_PER_TENANT"
    )]
    pub max_outstanding_per_tenant: Option<usize>,
}

impl FrontendFlags {
    pub fn apply(&self, c: &mut FrontendConfig) -> anyhow::Result<()> {
        set(&mut c.max_body_size, &self.max_body_size);
        set(
            &mut c.align_queries_with_step,
            &self.align_queries_with_step,
        );
        set_duration(
            &mut c.split_queries_by_interval,
            &self.split_queries_by_interval,
        )?;
        set(&mut c.cache_results, &self.cache_results);
        set(&mut c.max_retries, &self.max_retries);
        set(
            &mut c.parallelize_shardable_queries,
            &self.parallelize_shardable_queries,
        );
        set_duration(
            &mut c.log_queries_longer_than,
            &self.log_queries_longer_than,
        )?;
        set(&mut c.downstream_url, &self.downstream_url);
        set(
            &mut c.max_outstanding_per_tenant,
            &self.max_outstanding_per_tenant,
        );
        Ok(())
    }
}
