//! Norn's configuration: Mimir's YAML layout (`--config.file`) overlaid with Mimir-named flags,
//! each of which can also be set from the environment.
//!
//! Precedence: built-in defaults < YAML file < environment (`NORN_…`) < command-line flags.
//! Each component has a module under `config/` holding its YAML struct (unless the service
//! crate owns it: `norn_distributor::Config`, `norn_querier::Config`, `norn_limits::Limits`,
//! `norn_ingester::config::TsdbConfig`) and a `#[derive(clap::Args)]` block of its flags that
//! applies itself to that struct. [`Args`] flattens the blocks, and `norn tools` flattens the
//! ones it needs, so a flag is declared (name, help, environment variable, parser) once.
//!
//! A flag's environment variable is `NORN_` and the flag's name upper-cased with `.` and `-`
//! as `_` (`--blocks-storage.tsdb.dir` → `NORN_BLOCKS_STORAGE_TSDB_DIR`); clap reads it when
//! the flag is absent, which gives the precedence above for free.
//!
//! Unknown YAML keys are an error that names the key (serde's `deny_unknown_fields` on every
//! block), so a typo never silently falls back to a default. `/config` shows the effective
//! config with secrets masked.

mod auth;
mod cache;
mod compactor;
mod distributor;
mod federation;
mod flags;
mod frontend;
mod frontend_worker;
mod ingester;
mod limits;
mod querier;
mod ring;
mod ruler;
mod runtime;
mod server;
mod storage;
mod store_gateway;
mod tls;
mod tsdb;

#[cfg(test)]
mod docs_drift;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

pub use auth::{AuthConfig, AuthFlags, AuthType};
pub use cache::{ChunksCacheFlags, IndexCacheFlags, ResultsCacheFlags};
pub use compactor::CompactorFlags;
pub use distributor::DistributorFlags;
pub use federation::{TenantFederationConfig, TenantFederationFlags};
pub use frontend::FrontendFlags;
pub use frontend_worker::{FrontendWorkerConfig, FrontendWorkerFlags};
pub use ingester::IngesterFlags;
pub use limits::LimitsFlags;
pub use querier::QuerierFlags;
pub use ring::{IngesterRingFlags, MemberlistFlags};
pub use ruler::RulerFlags;
pub use runtime::RuntimeConfigFlags;
pub use server::{LogFlags, ServerFlags};
pub use storage::{BucketFlags, BucketStoreFlags};
pub use store_gateway::StoreGatewayRingFlags;
pub use tls::{ClientTlsFlags, IngesterClientConfig, Tls};
pub use tsdb::TsdbFlags;
pub use {
    frontend::FrontendConfig,
    ingester::IngesterConfig,
    ring::MemberlistConfig,
    runtime::RuntimeConfig,
    server::ServerConfig,
    storage::{BlocksStorageConfig, CommonConfig, StorageConfig},
    store_gateway::{STORE_GATEWAY_NUM_TOKENS, StoreGatewayConfig, StoreGatewayRingConfig},
};

/// Command-line flags (each also read from its `NORN_…` environment variable). Every flag has
/// a YAML key; the environment beats the YAML file and flags beat the environment.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "norn",
    version,
    about = "Norn: horizontally scalable long-term storage for Prometheus metrics."
)]
pub struct Args {
    #[command(flatten)]
    pub file: ConfigFileFlag,
    /// Comma-separated services to run: all (default), ingester, distributor, store-gateway, querier, query-frontend, compactor, ruler.
    #[arg(long = "target", env = "NORN_TARGET")]
    pub target: Option<String>,
    /// Require X-Scope-OrgID on every request (true); when false every request is tenant `anonymous`.
    #[arg(
        long = "auth.multitenancy-enabled",
        env = "NORN_AUTH_MULTITENANCY_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub multitenancy_enabled: Option<bool>,
    #[command(flatten)]
    pub auth: AuthFlags,
    #[command(flatten)]
    pub tenant_federation: TenantFederationFlags,
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(flatten)]
    pub frontend: FrontendFlags,
    #[command(flatten)]
    pub bucket: BucketFlags,
    #[command(flatten)]
    pub tsdb: TsdbFlags,
    #[command(flatten)]
    pub bucket_store: BucketStoreFlags,
    #[command(flatten)]
    pub index_cache: IndexCacheFlags,
    #[command(flatten)]
    pub chunks_cache: ChunksCacheFlags,
    #[command(flatten)]
    pub results_cache: ResultsCacheFlags,
    #[command(flatten)]
    pub distributor: DistributorFlags,
    #[command(flatten)]
    pub ingester: IngesterFlags,
    #[command(flatten)]
    pub ingester_ring: IngesterRingFlags,
    #[command(flatten)]
    pub memberlist: MemberlistFlags,
    #[command(flatten)]
    pub querier: QuerierFlags,
    #[command(flatten)]
    pub frontend_worker: FrontendWorkerFlags,
    #[command(flatten)]
    pub store_gateway_ring: StoreGatewayRingFlags,
    #[command(flatten)]
    pub compactor: CompactorFlags,
    #[command(flatten)]
    pub ruler: RulerFlags,
    #[command(flatten)]
    pub limits: LimitsFlags,
    #[command(flatten)]
    pub runtime_config: RuntimeConfigFlags,
    #[command(flatten)]
    pub client_tls: ClientTlsFlags,
}

/// `--config.file`, a block of its own because `norn tools` reads the same file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFileFlag {
    /// YAML configuration file in Mimir's layout.
    #[arg(long = "config.file", env = "NORN_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
}

/// The whole configuration, in Mimir's YAML layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub target: String,
    /// Mimir's switch; resolved together with `auth.type` at load (see [`auth::resolve`]).
    pub multitenancy_enabled: Option<bool>,
    pub auth: AuthConfig,
    pub tenant_federation: TenantFederationConfig,
    pub server: ServerConfig,
    pub common: CommonConfig,
    pub blocks_storage: BlocksStorageConfig,
    pub distributor: norn_distributor::Config,
    pub querier: norn_querier::Config,
    pub compactor: norn_compactor::Config,
    pub ruler: norn_ruler::Config,
    pub ruler_storage: norn_ruler::StorageConfig,
    pub frontend: FrontendConfig,
    pub frontend_worker: FrontendWorkerConfig,
    pub limits: norn_limits::Limits,
    pub runtime_config: RuntimeConfig,
    pub ingester: IngesterConfig,
    pub ingester_client: IngesterClientConfig,
    pub memberlist: MemberlistConfig,
    pub store_gateway: StoreGatewayConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: "all".into(),
            multitenancy_enabled: None,
            auth: AuthConfig::default(),
            tenant_federation: TenantFederationConfig::default(),
            server: ServerConfig::default(),
            common: CommonConfig::default(),
            blocks_storage: BlocksStorageConfig::default(),
            distributor: Default::default(),
            querier: Default::default(),
            compactor: Default::default(),
            ruler: Default::default(),
            ruler_storage: Default::default(),
            frontend: FrontendConfig::default(),
            frontend_worker: FrontendWorkerConfig::default(),
            limits: Default::default(),
            runtime_config: RuntimeConfig::default(),
            ingester: IngesterConfig::default(),
            ingester_client: IngesterClientConfig::default(),
            memberlist: MemberlistConfig::default(),
            store_gateway: StoreGatewayConfig::default(),
        }
    }
}

#[cfg(test)]
const MASK: &str = "********";

impl Config {
    /// Defaults, then the YAML file named by `--config.file`, then the environment and flags
    /// (clap has already put an environment variable's value where its flag was absent).
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let mut cfg = match &args.file.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Self::from_yaml(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_flags(args)?;
        auth::resolve(&mut cfg.multitenancy_enabled, &mut cfg.auth)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses YAML; an empty document is the defaults.
    pub fn from_yaml(text: &str) -> anyhow::Result<Config> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        Ok(serde_yaml::from_str(text)?)
    }

    /// Each block applies itself to the part of the config it owns.
    fn apply_flags(&mut self, a: &Args) -> anyhow::Result<()> {
        flags::set(&mut self.target, &a.target);
        if a.multitenancy_enabled.is_some() {
            self.multitenancy_enabled = a.multitenancy_enabled;
        }
        a.auth.apply(&mut self.auth)?;
        a.tenant_federation.apply(&mut self.tenant_federation);
        a.server.apply(&mut self.server)?;
        a.frontend.apply(&mut self.frontend)?;
        a.bucket.apply(&mut self.common, &mut self.blocks_storage);
        a.tsdb.apply(&mut self.blocks_storage.tsdb)?;
        a.bucket_store
            .apply(&mut self.blocks_storage.bucket_store)?;
        a.index_cache
            .apply(&mut self.blocks_storage.bucket_store.index_cache)?;
        a.chunks_cache
            .apply(&mut self.blocks_storage.bucket_store.chunks_cache)?;
        a.results_cache.apply(&mut self.frontend.results_cache)?;
        a.distributor.apply(&mut self.distributor)?;
        a.ingester.apply(&mut self.ingester)?;
        a.ingester_ring.apply(&mut self.ingester.ring)?;
        a.memberlist.apply(&mut self.memberlist)?;
        a.querier.apply(&mut self.querier)?;
        a.frontend_worker.apply(&mut self.frontend_worker);
        a.store_gateway_ring
            .apply(&mut self.store_gateway.sharding_ring)?;
        a.limits.apply(&mut self.limits)?;
        a.compactor.apply(&mut self.compactor, &mut self.limits)?;
        a.ruler
            .apply(&mut self.ruler, &mut self.ruler_storage, &mut self.limits)?;
        a.runtime_config.apply(&mut self.runtime_config)?;
        a.client_tls
            .ingester
            .apply(&mut self.ingester_client.grpc_client_config);
        a.client_tls
            .store_gateway
            .apply(&mut self.querier.store_gateway_client);
        a.client_tls
            .frontend
            .apply(&mut self.frontend_worker.grpc_client_config.tls);
        a.client_tls
            .alertmanager
            .apply(&mut self.ruler.alertmanager_client);
        a.client_tls
            .ruler_query_frontend
            .apply(&mut self.ruler.query_frontend.grpc_client_config);
        a.client_tls.ruler.apply(&mut self.ruler.ruler_client);
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        // The one list of services is the module table.
        crate::modules::resolve(&self.target)?;
        self.tenant_federation.validate()?;
        if !matches!(self.common.storage.backend.as_str(), "filesystem" | "s3") {
            bail!(
                "common.storage.backend must be filesystem or s3, got {:?}",
                self.common.storage.backend
            );
        }
        self.blocks_bucket()
            .validate()
            .context("blocks storage (common.storage with blocks_storage overrides)")?;
        if self.blocks_storage.tsdb.block_ranges_period < Duration::from_secs(60) {
            bail!("blocks_storage.tsdb.block_ranges_period must be at least 1m");
        }
        server::check_ip(
            "server.http_listen_address",
            &self.server.http_listen_address,
        )?;
        server::check_ip(
            "server.grpc_listen_address",
            &self.server.grpc_listen_address,
        )?;
        server::check_ip(
            "server.admin_listen_address",
            &self.server.admin_listen_address,
        )?;
        self.memberlist.validate()?;
        for (key, t) in [
            ("server.http_tls_config", &self.server.http_tls_config),
            ("server.grpc_tls_config", &self.server.grpc_tls_config),
        ] {
            t.client_auth().with_context(|| key.to_string())?;
        }
        self.ingester.ring.validate()?;
        self.store_gateway.sharding_ring.validate()?;
        if self.distributor.max_recv_msg_size == 0 || self.frontend.max_body_size == 0 {
            bail!(
                "distributor.max_recv_msg_size and frontend.max_body_size must be at least 1 byte"
            );
        }
        self.distributor
            .ha_tracker
            .validate()
            .map_err(|e| anyhow::anyhow!("distributor.ha_tracker: {e}"))?;
        self.querier.validate().map_err(anyhow::Error::msg)?;
        let url = &self.frontend.downstream_url;
        if !url.is_empty() && !url.starts_with("http://") {
            bail!(
                "frontend.downstream_url must be an http:// URL (no TLS to queriers yet), got {url:?}"
            );
        }
        self.frontend_worker.validate()?;
        self.server.validate()?;
        let bs = &self.blocks_storage.bucket_store;
        cache::validate("blocks_storage.bucket_store.index_cache", &bs.index_cache)?;
        cache::validate("blocks_storage.bucket_store.chunks_cache", &bs.chunks_cache)?;
        cache::validate("frontend.results_cache", &self.frontend.results_cache)?;
        self.compactor.validate().map_err(anyhow::Error::msg)?;
        self.ruler.validate().map_err(anyhow::Error::msg)?;
        self.ruler_storage.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The effective `auth.type` (after [`Config::load`]; `trust` when unresolved).
    pub fn auth_type(&self) -> AuthType {
        match (self.auth.kind, self.multitenancy_enabled) {
            (Some(k), _) => k,
            (None, Some(false)) => AuthType::None,
            (None, _) => AuthType::Trust,
        }
    }

    /// The bucket blocks live in: `common.storage` with `blocks_storage`'s overrides.
    pub fn blocks_bucket(&self) -> StorageConfig {
        self.blocks_storage.bucket(&self.common.storage)
    }

    /// The effective configuration as YAML with secrets replaced by a mask.
    pub fn masked_yaml(&self) -> String {
        let mut c = self.clone();
        c.common.storage = c.common.storage.masked();
        if let Some(s3) = &mut c.blocks_storage.s3 {
            *s3 = s3.masked();
        }
        serde_yaml::to_string(&c).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}
