//! `frontend_worker`: where a querier's workers connect to pull queries (Mimir's
//! `frontend_worker` YAML block, `--querier.frontend-address`).

use serde::{Deserialize, Serialize};

use super::flags::set;

/// `frontend_worker` in YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendWorkerConfig {
    /// The query-frontend's gRPC address (`host:port`); empty: the querier serves only its
    /// HTTP API.
    pub frontend_address: String,
    /// TLS to the query-frontend (`--querier.frontend-client.tls-*`).
    pub grpc_client_config: norn_server::tls::ClientTlsSettings,
}

impl FrontendWorkerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let a = &self.frontend_address;
        if !a.is_empty() && (a.contains("://") || !a.contains(':')) {
            anyhow::bail!(
                "frontend_worker.frontend_address must be the query-frontend's gRPC host:port, got {a:?}"
            );
        }
        Ok(())
    }
}

/// The querier's `frontend_worker` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Querier")]
pub struct FrontendWorkerFlags {
    /// The query-frontend's gRPC address (host:port) to pull queries from; each querier runs --querier.max-concurrent workers.
    #[arg(
        long = "querier.frontend-address",
        env = "NORN_QUERIER_FRONTEND_ADDRESS"
    )]
    pub frontend_address: Option<String>,
}

impl FrontendWorkerFlags {
    pub fn apply(&self, c: &mut FrontendWorkerConfig) {
        set(&mut c.frontend_address, &self.frontend_address);
    }
}
