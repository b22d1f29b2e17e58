//! The querier's flags. Its YAML struct is the querier's own ([`norn_querier::Config`],
//! `querier` in YAML), which also validates it.

use super::flags::{Deferred, set, set_duration};

/// The `querier.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Querier")]
pub struct QuerierFlags {
    /// Most samples one query may hold in memory.
    #[arg(long = "querier.max-samples", env = "NORN_QUERIER_MAX_SAMPLES")]
    pub max_samples: Option<usize>,
    /// Longest a query may run.
    #[arg(long = "querier.timeout", env = "NORN_QUERIER_TIMEOUT")]
    pub timeout: Option<Deferred>,
    /// How far back an instant vector selector looks for a sample.
    #[arg(long = "querier.lookback-delta", env = "NORN_QUERIER_LOOKBACK_DELTA")]
    pub lookback_delta: Option<Deferred>,
    /// Most queries (and series/label reads) running at once; more wait for a slot.
    #[arg(long = "querier.max-concurrent", env = "NORN_QUERIER_MAX_CONCURRENT")]
    pub max_concurrent: Option<usize>,
    /// Most queries waiting for a slot; more get 503 unavailable at once.
    #[arg(
        long = "querier.max-outstanding-requests",
        env = "NORN_QUERIER_MAX_OUTSTANDING_REQUESTS"
    )]
    pub max_outstanding_requests: Option<usize>,
    /// Longest query text accepted, in bytes (0 = no limit).
    #[arg(
        long = "querier.max-query-expression-size-bytes",
        env = "NORN_QUERIER_MAX_QUERY_EXPRESSION_SIZE_BYTES"
    )]
    pub max_query_expression_size_bytes: Option<usize>,
    /// Deepest nesting of a query expression accepted (1 to 1000).
    #[arg(
        long = "querier.max-query-expression-depth",
        env = "NORN_QUERIER_MAX_QUERY_EXPRESSION_DEPTH"
    )]
    pub max_query_expression_depth: Option<usize>,
    /// Only the last this-long of a query is asked of the ingesters (0 = all of it).
    #[arg(
        long = "querier.query-ingesters-within",
        env = "NORN_QUERIER_QUERY_INGESTERS_WITHIN"
    )]
    pub query_ingesters_within: Option<Deferred>,
    /// Only data older than this is asked of the store-gateways (0 = all of it).
    #[arg(
        long = "querier.query-store-after",
        env = "NORN_QUERIER_QUERY_STORE_AFTER"
    )]
    pub query_store_after: Option<Deferred>,
}

impl QuerierFlags {
    pub fn apply(&self, c: &mut norn_querier::Config) -> anyhow::Result<()> {
        set(&mut c.max_samples, &self.max_samples);
        set_duration(&mut c.timeout, &self.timeout)?;
        set_duration(&mut c.lookback_delta, &self.lookback_delta)?;
        set(&mut c.max_concurrent, &self.max_concurrent);
        set(
            &mut c.max_outstanding_requests,
            &self.max_outstanding_requests,
        );
        set(
            &mut c.max_query_expression_size_bytes,
            &self.max_query_expression_size_bytes,
        );
        set(
            &mut c.max_query_expression_depth,
            &self.max_query_expression_depth,
        );
        set_duration(&mut c.query_ingesters_within, &self.query_ingesters_within)?;
        set_duration(&mut c.query_store_after, &self.query_store_after)?;
        Ok(())
    }
}
