//! `frontend`: the query API's front door (Mimir's query-frontend block; in Norn the querier
//! serves the query API itself, so only the request-body bound lives here for now).

use serde::{Deserialize, Serialize};

use super::flags::set;

/// `frontend` in YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendConfig {
    /// Largest query API request body, in bytes (POSTed forms).
    pub max_body_size: usize,
    /// The results cache (`--query-frontend.results-cache.*`).
    #[serde(deserialize_with = "super::cache::de_results_cache")]
    pub results_cache: norn_cache::CacheConfig,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            max_body_size: 10 << 20,
            results_cache: super::cache::default_results_cache(),
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
}

impl FrontendFlags {
    pub fn apply(&self, c: &mut FrontendConfig) {
        set(&mut c.max_body_size, &self.max_body_size);
    }
}
