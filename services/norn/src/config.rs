//! Norn's configuration: Mimir's YAML layout (`--config.file`) overlaid with Mimir-named flags.
//!
//! Precedence: built-in defaults < YAML file < command-line flags. Unknown YAML keys are an
//! error that names the key (serde's `deny_unknown_fields` on every block), so a typo never
//! silently falls back to a default. `/config` shows the effective config with secrets masked.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use norn_model::duration::{parse_duration, serde_duration};
pub use norn_storage::{FilesystemConfig, S3Config, StorageConfig};
use serde::{Deserialize, Serialize};

/// Command-line flags. Every flag has a YAML key; flags win.
#[derive(Debug, Parser)]
#[command(
    name = "norn",
    version,
    about = "Norn: horizontally scalable long-term storage for Prometheus metrics."
)]
pub struct Args {
    /// YAML configuration file in Mimir's layout.
    #[arg(long = "config.file")]
    pub config_file: Option<PathBuf>,
    /// Comma-separated services to run: all (default), distributor, ingester, querier.
    #[arg(long = "target")]
    pub target: Option<String>,
    /// Address the HTTP server listens on (all interfaces when empty).
    #[arg(long = "server.http-listen-address")]
    pub http_listen_address: Option<String>,
    /// HTTP port (default 8080).
    #[arg(long = "server.http-listen-port")]
    pub http_listen_port: Option<u16>,
    /// Address the gRPC server listens on.
    #[arg(long = "server.grpc-listen-address")]
    pub grpc_listen_address: Option<String>,
    /// gRPC port (default 9095).
    #[arg(long = "server.grpc-listen-port")]
    pub grpc_listen_port: Option<u16>,
    /// Log level: debug, info, warn, error.
    #[arg(long = "log.level")]
    pub log_level: Option<String>,
    /// Longest from the start of an HTTP request to the end of its body (0 disables).
    #[arg(long = "server.http-server-read-timeout")]
    pub http_server_read_timeout: Option<String>,
    /// Longest to receive an HTTP request's headers (0: the read timeout).
    #[arg(long = "server.http-server-read-header-timeout")]
    pub http_server_read_header_timeout: Option<String>,
    /// Longest from the end of an HTTP request's headers to the end of its response (0 disables).
    #[arg(long = "server.http-server-write-timeout")]
    pub http_server_write_timeout: Option<String>,
    /// Longest an HTTP keep-alive connection waits for its next request (0: the read timeout).
    #[arg(long = "server.http-server-idle-timeout")]
    pub http_server_idle_timeout: Option<String>,
    /// Most HTTP connections served at once; more wait to be accepted (0 = no limit).
    #[arg(long = "server.http-conn-limit")]
    pub http_conn_limit: Option<usize>,
    /// Largest body of a query API request (POST form), in bytes.
    #[arg(long = "query-frontend.max-body-size")]
    pub query_frontend_max_body_size: Option<usize>,
    /// Require X-Scope-OrgID on every request (true); when false every request is tenant `anonymous`.
    #[arg(long = "auth.multitenancy-enabled", num_args = 0..=1, default_missing_value = "true")]
    pub multitenancy_enabled: Option<bool>,
    /// Object storage backend: filesystem or s3.
    #[arg(long = "common.storage.backend")]
    pub storage_backend: Option<String>,
    /// Bucket directory for the filesystem backend.
    #[arg(long = "common.storage.filesystem.dir")]
    pub storage_filesystem_dir: Option<PathBuf>,
    /// S3 endpoint (host:port).
    #[arg(long = "common.storage.s3.endpoint")]
    pub s3_endpoint: Option<String>,
    /// S3 bucket name.
    #[arg(long = "common.storage.s3.bucket-name")]
    pub s3_bucket_name: Option<String>,
    /// S3 access key id.
    #[arg(long = "common.storage.s3.access-key-id")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(long = "common.storage.s3.secret-access-key")]
    pub s3_secret_access_key: Option<String>,
    /// S3 region.
    #[arg(long = "common.storage.s3.region")]
    pub s3_region: Option<String>,
    /// Use plain HTTP to talk to S3.
    #[arg(long = "common.storage.s3.insecure", num_args = 0..=1, default_missing_value = "true")]
    pub s3_insecure: Option<bool>,
    /// Directory of the ingesters' per-tenant WALs and local blocks.
    #[arg(long = "blocks-storage.tsdb.dir")]
    pub tsdb_dir: Option<PathBuf>,
    /// Block width (e.g. 2h); the head takes samples up to half of it behind its newest sample.
    #[arg(long = "blocks-storage.tsdb.block-ranges-period")]
    pub tsdb_block_ranges_period: Option<String>,
    /// How long shipped blocks stay on the ingester's disk.
    #[arg(long = "blocks-storage.tsdb.retention-period")]
    pub tsdb_retention_period: Option<String>,
    /// WAL segment size in bytes.
    #[arg(long = "blocks-storage.tsdb.wal-segment-size-bytes")]
    pub tsdb_wal_segment_size_bytes: Option<u64>,
    /// WAL fsync policy: always (group commit before acknowledging) or never.
    #[arg(long = "blocks-storage.tsdb.wal-fsync")]
    pub tsdb_wal_fsync: Option<String>,
    /// How often heads are checked for a complete range to cut into a block.
    #[arg(long = "blocks-storage.tsdb.head-compaction-interval")]
    pub tsdb_head_compaction_interval: Option<String>,
    /// Cut a tenant's whole head after this long without a push (0 disables).
    #[arg(long = "blocks-storage.tsdb.head-compaction-idle-timeout")]
    pub tsdb_head_compaction_idle_timeout: Option<String>,
    /// Close a tenant idle this long whose head is empty and blocks all shipped (0 disables).
    #[arg(long = "blocks-storage.tsdb.close-idle-tsdb-timeout")]
    pub tsdb_close_idle_tsdb_timeout: Option<String>,
    /// Most tenants one ingester holds (0 = unlimited); new tenants beyond it get a 5xx.
    #[arg(long = "ingester.instance-limits.max-tenants")]
    pub ingester_max_tenants: Option<usize>,
    /// How often new blocks are uploaded to the bucket (0 disables shipping).
    #[arg(long = "blocks-storage.tsdb.ship-interval")]
    pub tsdb_ship_interval: Option<String>,
    /// Cut and ship every head on shutdown.
    #[arg(long = "blocks-storage.tsdb.flush-blocks-on-shutdown", num_args = 0..=1, default_missing_value = "true")]
    pub tsdb_flush_blocks_on_shutdown: Option<bool>,
    /// Blocks backend, overriding common.storage.backend.
    #[arg(long = "blocks-storage.backend")]
    pub blocks_storage_backend: Option<String>,
    /// Where the query path keeps local copies of bucket blocks.
    #[arg(long = "blocks-storage.bucket-store.sync-dir")]
    pub bucket_store_sync_dir: Option<PathBuf>,
    /// How often the query path re-reads the bucket's block list.
    #[arg(long = "blocks-storage.bucket-store.sync-interval")]
    pub bucket_store_sync_interval: Option<String>,
    /// Largest push body accepted, compressed and decompressed, in bytes.
    #[arg(long = "distributor.max-recv-msg-size")]
    pub distributor_max_recv_msg_size: Option<usize>,
    /// Per-tenant overrides file, re-read periodically.
    #[arg(long = "runtime-config.file")]
    pub runtime_config_file: Option<PathBuf>,
    /// How often the runtime config file is re-read.
    #[arg(long = "runtime-config.reload-period")]
    pub runtime_config_reload_period: Option<String>,
    /// Most samples one query may hold in memory.
    #[arg(long = "querier.max-samples")]
    pub querier_max_samples: Option<usize>,
    /// Longest a query may run.
    #[arg(long = "querier.timeout")]
    pub querier_timeout: Option<String>,
    /// How far back an instant vector selector looks for a sample.
    #[arg(long = "querier.lookback-delta")]
    pub querier_lookback_delta: Option<String>,
    /// Most queries (and series/label reads) running at once; more wait for a slot.
    #[arg(long = "querier.max-concurrent")]
    pub querier_max_concurrent: Option<usize>,
    /// Most queries waiting for a slot; more get 503 unavailable at once.
    #[arg(long = "querier.max-outstanding-requests")]
    pub querier_max_outstanding_requests: Option<usize>,
    /// Longest query text accepted, in bytes (0 = no limit).
    #[arg(long = "querier.max-query-expression-size-bytes")]
    pub querier_max_query_expression_size_bytes: Option<usize>,
    /// Deepest nesting of a query expression accepted (1 to 1000).
    #[arg(long = "querier.max-query-expression-depth")]
    pub querier_max_query_expression_depth: Option<usize>,
    /// Default samples/s per tenant.
    #[arg(long = "distributor.ingestion-rate-limit")]
    pub ingestion_rate: Option<f64>,
    /// Default token-bucket burst per tenant.
    #[arg(long = "distributor.ingestion-burst-size")]
    pub ingestion_burst_size: Option<usize>,
    /// Default in-memory series per tenant (0 = unlimited).
    #[arg(long = "ingester.max-global-series-per-user")]
    pub max_global_series_per_user: Option<usize>,
    /// Default in-memory series per metric per tenant (0 = unlimited).
    #[arg(long = "ingester.max-global-series-per-metric")]
    pub max_global_series_per_metric: Option<usize>,
    /// Default metric metadata entries kept per tenant (0 = unlimited).
    #[arg(long = "ingester.max-global-metadata-per-user")]
    pub max_global_metadata_per_user: Option<usize>,
    /// Default metric metadata entries kept per metric family per tenant (0 = unlimited).
    #[arg(long = "ingester.max-global-metadata-per-metric")]
    pub max_global_metadata_per_metric: Option<usize>,
    /// Metric metadata not re-sent for this long is dropped (0 keeps it).
    #[arg(long = "ingester.metadata-retain-period")]
    pub ingester_metadata_retain_period: Option<String>,
    /// Default of how far in the future a sample's timestamp may be.
    #[arg(long = "validation.create-grace-period")]
    pub validation_create_grace_period: Option<String>,
    /// Default of how far in the past a sample's timestamp may be (0: only before 1970 is refused).
    #[arg(long = "validation.past-grace-period")]
    pub validation_past_grace_period: Option<String>,

    /// Longest the distributor waits for an ingester to answer a push.
    #[arg(long = "distributor.remote-timeout")]
    pub distributor_remote_timeout: Option<String>,
    /// Deduplicate samples from HA Prometheus pairs.
    #[arg(long = "distributor.ha-tracker.enable", num_args = 0..=1, default_missing_value = "true")]
    pub ha_tracker_enable: Option<bool>,
    /// Default for every tenant's `accept_ha_samples` limit (Mimir's flag name).
    #[arg(long = "distributor.ha-tracker.enable-for-all-users", num_args = 0..=1, default_missing_value = "true")]
    pub ha_tracker_enable_for_all_users: Option<bool>,
    /// How long the elected replica may be silent before another takes over.
    #[arg(long = "distributor.ha-tracker.failover-timeout")]
    pub ha_tracker_failover_timeout: Option<String>,
    /// How often the elected replica's last-seen time is updated in the shared store.
    #[arg(long = "distributor.ha-tracker.update-timeout")]
    pub ha_tracker_update_timeout: Option<String>,
    /// Largest random extra delay on the update timeout.
    #[arg(long = "distributor.ha-tracker.update-timeout-jitter-max")]
    pub ha_tracker_update_timeout_jitter_max: Option<String>,
    /// Label naming an HA cluster (default `cluster`).
    #[arg(long = "distributor.ha-tracker.cluster")]
    pub ha_tracker_cluster: Option<String>,
    /// Label naming the replica in an HA cluster (default `__replica__`).
    #[arg(long = "distributor.ha-tracker.replica")]
    pub ha_tracker_replica: Option<String>,
    /// HA clusters per tenant (0 = unlimited).
    #[arg(long = "distributor.ha-tracker.max-clusters")]
    pub ha_tracker_max_clusters: Option<usize>,

    /// Ingesters each series is written to.
    #[arg(long = "ingester.ring.replication-factor")]
    pub ring_replication_factor: Option<usize>,
    /// Tokens each ingester owns in the ring.
    #[arg(long = "ingester.ring.num-tokens")]
    pub ring_num_tokens: Option<usize>,
    /// File the ingester keeps its tokens in, so a restart owns the same ranges.
    #[arg(long = "ingester.ring.tokens-file-path")]
    pub ring_tokens_file_path: Option<PathBuf>,
    /// How often an ingester refreshes its heartbeat in the ring.
    #[arg(long = "ingester.ring.heartbeat-period")]
    pub ring_heartbeat_period: Option<String>,
    /// An ingester whose heartbeat is older than this is unhealthy.
    #[arg(long = "ingester.ring.heartbeat-timeout")]
    pub ring_heartbeat_timeout: Option<String>,
    /// Unhealthy ingesters are removed from the ring after this many heartbeat timeouts (0 = never).
    #[arg(long = "ingester.ring.auto-forget-unhealthy-periods")]
    pub ring_auto_forget_unhealthy_periods: Option<u32>,
    /// This ingester's id in the ring (default: the hostname).
    #[arg(long = "ingester.ring.instance-id")]
    pub ring_instance_id: Option<String>,
    /// Address other services dial to reach this ingester's gRPC server.
    #[arg(long = "ingester.ring.instance-addr")]
    pub ring_instance_addr: Option<String>,
    /// Port advertised in the ring (default: the gRPC listen port).
    #[arg(long = "ingester.ring.instance-port")]
    pub ring_instance_port: Option<u16>,
    /// Availability zone of this ingester.
    #[arg(long = "ingester.ring.instance-availability-zone")]
    pub ring_instance_availability_zone: Option<String>,
    /// Place a series' replicas in distinct zones.
    #[arg(long = "ingester.ring.zone-awareness-enabled", num_args = 0..=1, default_missing_value = "true")]
    pub ring_zone_awareness_enabled: Option<bool>,

    /// Name of this node in the gossip cluster (default: hostname plus a random suffix).
    #[arg(long = "memberlist.nodename")]
    pub memberlist_nodename: Option<String>,
    /// Address gossip listens on (UDP and TCP).
    #[arg(long = "memberlist.bind-addr")]
    pub memberlist_bind_addr: Option<String>,
    /// Port gossip listens on (UDP and TCP; default 7946).
    #[arg(long = "memberlist.bind-port")]
    pub memberlist_bind_port: Option<u16>,
    /// Address advertised to other gossip members.
    #[arg(long = "memberlist.advertise-addr")]
    pub memberlist_advertise_addr: Option<String>,
    /// Port advertised to other gossip members (default: the bind port).
    #[arg(long = "memberlist.advertise-port")]
    pub memberlist_advertise_port: Option<u16>,
    /// Gossip members to join (host:port or host; DNS names allowed); repeat or comma-separate.
    #[arg(long = "memberlist.join", value_delimiter = ',')]
    pub memberlist_join: Vec<String>,
    /// How often gossip messages are sent.
    #[arg(long = "memberlist.gossip-interval")]
    pub memberlist_gossip_interval: Option<String>,
    /// How often the full state is exchanged with a random member over TCP.
    #[arg(long = "memberlist.pullpush-interval")]
    pub memberlist_pullpush_interval: Option<String>,
}

/// The whole configuration, in Mimir's YAML layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub target: String,
    pub multitenancy_enabled: bool,
    pub server: ServerConfig,
    pub common: CommonConfig,
    pub blocks_storage: BlocksStorageConfig,
    pub distributor: norn_distributor::Config,
    pub querier: norn_querier::Config,
    pub frontend: FrontendConfig,
    pub limits: norn_limits::Limits,
    pub runtime_config: RuntimeConfig,
    pub ingester: IngesterConfig,
    pub memberlist: MemberlistConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: "all".into(),
            multitenancy_enabled: true,
            server: ServerConfig::default(),
            common: CommonConfig::default(),
            blocks_storage: BlocksStorageConfig::default(),
            distributor: Default::default(),
            querier: Default::default(),
            frontend: FrontendConfig::default(),
            limits: Default::default(),
            runtime_config: RuntimeConfig::default(),
            ingester: IngesterConfig::default(),
            memberlist: MemberlistConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub http_listen_address: String,
    pub http_listen_port: u16,
    pub grpc_listen_address: String,
    pub grpc_listen_port: u16,
    pub log_level: String,
    #[serde(with = "serde_duration")]
    pub graceful_shutdown_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_read_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_read_header_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_write_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub http_server_idle_timeout: Duration,
    /// 0 = no limit.
    pub http_listen_conn_limit: usize,
}

impl ServerConfig {
    /// The HTTP server's timeouts and connection limit.
    pub fn http_options(&self) -> norn_server::ServerOptions {
        norn_server::ServerOptions {
            read_timeout: self.http_server_read_timeout,
            read_header_timeout: self.http_server_read_header_timeout,
            write_timeout: self.http_server_write_timeout,
            idle_timeout: self.http_server_idle_timeout,
            conn_limit: self.http_listen_conn_limit,
        }
    }
}

/// `frontend`: the query API's front door (Mimir's query-frontend block; in Norn the querier
/// serves the query API itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontendConfig {
    /// Largest query API request body, in bytes (POSTed forms).
    pub max_body_size: usize,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            max_body_size: 10 << 20,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen_address: String::new(),
            http_listen_port: 8080,
            grpc_listen_address: String::new(),
            grpc_listen_port: 9095,
            log_level: "info".into(),
            graceful_shutdown_timeout: Duration::from_secs(30),
            http_server_read_timeout: Duration::from_secs(120),
            http_server_read_header_timeout: Duration::from_secs(30),
            // Longer than querier.timeout (2m), so a slow query answers with its own timeout.
            http_server_write_timeout: Duration::from_secs(150),
            http_server_idle_timeout: Duration::from_secs(120),
            http_listen_conn_limit: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommonConfig {
    pub storage: StorageConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlocksStorageConfig {
    /// Overrides `common.storage.backend` for blocks (Mimir's per-component storage keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    pub tsdb: norn_ingester::config::TsdbConfig,
    pub bucket_store: BucketStoreConfig,
}

/// `blocks_storage.bucket_store`: how the query path reads blocks from the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketStoreConfig {
    /// Local copies of bucket blocks.
    pub sync_dir: PathBuf,
    /// How often the bucket's block list is re-read.
    #[serde(with = "serde_duration")]
    pub sync_interval: Duration,
}

impl Default for BucketStoreConfig {
    fn default() -> Self {
        Self {
            sync_dir: PathBuf::from("./tsdb-sync"),
            sync_interval: Duration::from_secs(15 * 60),
        }
    }
}

impl Config {
    /// The bucket blocks live in: `common.storage` with `blocks_storage`'s overrides.
    pub fn blocks_bucket(&self) -> StorageConfig {
        let mut c = self.common.storage.clone();
        if let Some(b) = &self.blocks_storage.backend {
            c.backend = b.clone();
        }
        if let Some(f) = &self.blocks_storage.filesystem {
            c.filesystem = f.clone();
        }
        if let Some(s3) = &self.blocks_storage.s3 {
            c.s3 = s3.clone();
        }
        c
    }
}

/// `ingester`: the ingester's place in the ring, and how long it keeps metric metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterConfig {
    pub ring: IngesterRingConfig,
    pub instance_limits: norn_ingester::config::InstanceLimits,
    #[serde(with = "serde_duration")]
    pub metadata_retain_period: Duration,
}

impl Default for IngesterConfig {
    fn default() -> Self {
        Self {
            ring: IngesterRingConfig::default(),
            instance_limits: Default::default(),
            metadata_retain_period: Duration::from_secs(600),
        }
    }
}

/// `ingester.ring`: Mimir's keys for the ingester ring (kept in the gossiped KV store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterRingConfig {
    pub replication_factor: usize,
    pub num_tokens: usize,
    /// Empty: tokens are not persisted (a restart takes new ones).
    pub tokens_file_path: String,
    #[serde(with = "serde_duration")]
    pub heartbeat_period: Duration,
    #[serde(with = "serde_duration")]
    pub heartbeat_timeout: Duration,
    /// Heartbeat timeouts after which an unhealthy instance is forgotten (0 = never).
    pub auto_forget_unhealthy_periods: u32,
    /// Empty: the hostname.
    pub instance_id: String,
    /// Empty: 127.0.0.1 when the gRPC listen address is loopback, else that address, else
    /// the address of the interface with the default route.
    pub instance_addr: String,
    /// 0: the gRPC listen port.
    pub instance_port: u16,
    pub instance_availability_zone: String,
    pub zone_awareness_enabled: bool,
}

impl Default for IngesterRingConfig {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            num_tokens: 128,
            tokens_file_path: String::new(),
            heartbeat_period: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(60),
            auto_forget_unhealthy_periods: 10,
            instance_id: String::new(),
            instance_addr: String::new(),
            instance_port: 0,
            instance_availability_zone: String::new(),
            zone_awareness_enabled: false,
        }
    }
}

/// `memberlist`: gossip (SWIM over UDP, full-state exchange over TCP on the same port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemberlistConfig {
    /// Empty: hostname plus a random suffix.
    pub node_name: String,
    /// Addresses to listen on; Norn uses the first (empty: 0.0.0.0).
    pub bind_addr: Vec<String>,
    pub bind_port: u16,
    /// Empty: 127.0.0.1 when bound to loopback, else the bind address, else the address of
    /// the interface with the default route.
    pub advertise_addr: String,
    /// 0: the bind port.
    pub advertise_port: u16,
    pub join_members: Vec<String>,
    #[serde(with = "serde_duration")]
    pub gossip_interval: Duration,
    #[serde(with = "serde_duration")]
    pub pull_push_interval: Duration,
}

impl Default for MemberlistConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            bind_addr: Vec::new(),
            bind_port: 7946,
            advertise_addr: String::new(),
            advertise_port: 0,
            join_members: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            pull_push_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub file: Option<PathBuf>,
    #[serde(with = "serde_duration")]
    pub period: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            file: None,
            period: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
const MASK: &str = "********";

impl Config {
    /// Defaults, then the YAML file named by `--config.file`, then flags.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let mut cfg = match &args.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Self::from_yaml(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_flags(args)?;
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

    fn apply_flags(&mut self, a: &Args) -> anyhow::Result<()> {
        let dur = |s: &Option<String>, name: &str| -> anyhow::Result<Option<Duration>> {
            s.as_deref()
                .map(|s| parse_duration(s).with_context(|| format!("flag --{name}")))
                .transpose()
        };
        macro_rules! set {
            ($field:expr, $flag:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(self.target, a.target);
        set!(self.multitenancy_enabled, a.multitenancy_enabled);
        set!(self.server.http_listen_address, a.http_listen_address);
        set!(self.server.http_listen_port, a.http_listen_port);
        set!(self.server.grpc_listen_address, a.grpc_listen_address);
        set!(self.server.grpc_listen_port, a.grpc_listen_port);
        set!(self.server.log_level, a.log_level);
        for (flag, value, field) in [
            (
                "server.http-server-read-timeout",
                &a.http_server_read_timeout,
                &mut self.server.http_server_read_timeout,
            ),
            (
                "server.http-server-read-header-timeout",
                &a.http_server_read_header_timeout,
                &mut self.server.http_server_read_header_timeout,
            ),
            (
                "server.http-server-write-timeout",
                &a.http_server_write_timeout,
                &mut self.server.http_server_write_timeout,
            ),
            (
                "server.http-server-idle-timeout",
                &a.http_server_idle_timeout,
                &mut self.server.http_server_idle_timeout,
            ),
            (
                "ingester.metadata-retain-period",
                &a.ingester_metadata_retain_period,
                &mut self.ingester.metadata_retain_period,
            ),
            (
                "validation.create-grace-period",
                &a.validation_create_grace_period,
                &mut self.limits.creation_grace_period,
            ),
            (
                "validation.past-grace-period",
                &a.validation_past_grace_period,
                &mut self.limits.past_grace_period,
            ),
        ] {
            if let Some(d) = dur(value, flag)? {
                *field = d;
            }
        }
        set!(self.server.http_listen_conn_limit, a.http_conn_limit);
        set!(self.frontend.max_body_size, a.query_frontend_max_body_size);
        set!(
            self.limits.max_global_metadata_per_user,
            a.max_global_metadata_per_user
        );
        set!(
            self.limits.max_global_metadata_per_metric,
            a.max_global_metadata_per_metric
        );
        set!(self.common.storage.backend, a.storage_backend);
        set!(self.common.storage.filesystem.dir, a.storage_filesystem_dir);
        set!(self.common.storage.s3.endpoint, a.s3_endpoint);
        set!(self.common.storage.s3.bucket_name, a.s3_bucket_name);
        set!(self.common.storage.s3.access_key_id, a.s3_access_key_id);
        set!(
            self.common.storage.s3.secret_access_key,
            a.s3_secret_access_key
        );
        set!(self.common.storage.s3.region, a.s3_region);
        set!(self.common.storage.s3.insecure, a.s3_insecure);
        let tsdb = &mut self.blocks_storage.tsdb;
        set!(tsdb.dir, a.tsdb_dir);
        if let Some(d) = dur(
            &a.tsdb_block_ranges_period,
            "blocks-storage.tsdb.block-ranges-period",
        )? {
            tsdb.block_ranges_period = d;
        }
        if let Some(d) = dur(
            &a.tsdb_retention_period,
            "blocks-storage.tsdb.retention-period",
        )? {
            tsdb.retention_period = d;
        }
        set!(tsdb.wal_segment_size_bytes, a.tsdb_wal_segment_size_bytes);
        for (flag, value, field) in [
            (
                "blocks-storage.tsdb.head-compaction-interval",
                &a.tsdb_head_compaction_interval,
                &mut tsdb.head_compaction_interval,
            ),
            (
                "blocks-storage.tsdb.head-compaction-idle-timeout",
                &a.tsdb_head_compaction_idle_timeout,
                &mut tsdb.head_compaction_idle_timeout,
            ),
            (
                "blocks-storage.tsdb.ship-interval",
                &a.tsdb_ship_interval,
                &mut tsdb.ship_interval,
            ),
            (
                "blocks-storage.tsdb.close-idle-tsdb-timeout",
                &a.tsdb_close_idle_tsdb_timeout,
                &mut tsdb.close_idle_tsdb_timeout,
            ),
        ] {
            if let Some(d) = dur(value, flag)? {
                *field = d;
            }
        }
        set!(
            tsdb.flush_blocks_on_shutdown,
            a.tsdb_flush_blocks_on_shutdown
        );
        if a.blocks_storage_backend.is_some() {
            self.blocks_storage.backend = a.blocks_storage_backend.clone();
        }
        let bs = &mut self.blocks_storage.bucket_store;
        set!(bs.sync_dir, a.bucket_store_sync_dir);
        if let Some(d) = dur(
            &a.bucket_store_sync_interval,
            "blocks-storage.bucket-store.sync-interval",
        )? {
            bs.sync_interval = d;
        }
        if let Some(p) = &a.tsdb_wal_fsync {
            tsdb.wal_fsync = p
                .parse()
                .map_err(|e| anyhow::anyhow!("flag --blocks-storage.tsdb.wal-fsync: {e}"))?;
        }
        set!(
            self.distributor.max_recv_msg_size,
            a.distributor_max_recv_msg_size
        );
        if a.runtime_config_file.is_some() {
            self.runtime_config.file = a.runtime_config_file.clone();
        }
        if let Some(d) = dur(
            &a.runtime_config_reload_period,
            "runtime-config.reload-period",
        )? {
            self.runtime_config.period = d;
        }
        set!(self.querier.max_samples, a.querier_max_samples);
        if let Some(d) = dur(&a.querier_timeout, "querier.timeout")? {
            self.querier.timeout = d;
        }
        if let Some(d) = dur(&a.querier_lookback_delta, "querier.lookback-delta")? {
            self.querier.lookback_delta = d;
        }
        set!(self.querier.max_concurrent, a.querier_max_concurrent);
        set!(
            self.querier.max_outstanding_requests,
            a.querier_max_outstanding_requests
        );
        set!(
            self.querier.max_query_expression_size_bytes,
            a.querier_max_query_expression_size_bytes
        );
        set!(
            self.querier.max_query_expression_depth,
            a.querier_max_query_expression_depth
        );
        set!(self.limits.ingestion_rate, a.ingestion_rate);
        set!(self.limits.ingestion_burst_size, a.ingestion_burst_size);
        set!(
            self.limits.max_global_series_per_user,
            a.max_global_series_per_user
        );
        set!(
            self.limits.max_global_series_per_metric,
            a.max_global_series_per_metric
        );

        if let Some(d) = dur(&a.distributor_remote_timeout, "distributor.remote-timeout")? {
            self.distributor.remote_timeout = d;
        }
        let ha = &mut self.distributor.ha_tracker;
        set!(ha.enable_ha_tracker, a.ha_tracker_enable);
        for (flag, value, field) in [
            (
                "distributor.ha-tracker.failover-timeout",
                &a.ha_tracker_failover_timeout,
                &mut ha.ha_tracker_failover_timeout,
            ),
            (
                "distributor.ha-tracker.update-timeout",
                &a.ha_tracker_update_timeout,
                &mut ha.ha_tracker_update_timeout,
            ),
            (
                "distributor.ha-tracker.update-timeout-jitter-max",
                &a.ha_tracker_update_timeout_jitter_max,
                &mut ha.ha_tracker_update_timeout_jitter_max,
            ),
        ] {
            if let Some(d) = dur(value, flag)? {
                *field = d;
            }
        }
        set!(
            self.limits.accept_ha_samples,
            a.ha_tracker_enable_for_all_users
        );
        set!(self.limits.ha_cluster_label, a.ha_tracker_cluster);
        set!(self.limits.ha_replica_label, a.ha_tracker_replica);
        set!(self.limits.ha_max_clusters, a.ha_tracker_max_clusters);

        set!(
            self.ingester.instance_limits.max_tenants,
            a.ingester_max_tenants
        );
        let ring = &mut self.ingester.ring;
        set!(ring.replication_factor, a.ring_replication_factor);
        set!(ring.num_tokens, a.ring_num_tokens);
        if let Some(p) = &a.ring_tokens_file_path {
            ring.tokens_file_path = p.display().to_string();
        }
        if let Some(d) = dur(&a.ring_heartbeat_period, "ingester.ring.heartbeat-period")? {
            ring.heartbeat_period = d;
        }
        if let Some(d) = dur(&a.ring_heartbeat_timeout, "ingester.ring.heartbeat-timeout")? {
            ring.heartbeat_timeout = d;
        }
        set!(
            ring.auto_forget_unhealthy_periods,
            a.ring_auto_forget_unhealthy_periods
        );
        set!(ring.instance_id, a.ring_instance_id);
        set!(ring.instance_addr, a.ring_instance_addr);
        set!(ring.instance_port, a.ring_instance_port);
        set!(
            ring.instance_availability_zone,
            a.ring_instance_availability_zone
        );
        set!(ring.zone_awareness_enabled, a.ring_zone_awareness_enabled);

        let ml = &mut self.memberlist;
        set!(ml.node_name, a.memberlist_nodename);
        if let Some(b) = &a.memberlist_bind_addr {
            ml.bind_addr = vec![b.clone()];
        }
        set!(ml.bind_port, a.memberlist_bind_port);
        set!(ml.advertise_addr, a.memberlist_advertise_addr);
        set!(ml.advertise_port, a.memberlist_advertise_port);
        if !a.memberlist_join.is_empty() {
            ml.join_members = a
                .memberlist_join
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect();
        }
        if let Some(d) = dur(&a.memberlist_gossip_interval, "memberlist.gossip-interval")? {
            ml.gossip_interval = d;
        }
        if let Some(d) = dur(
            &a.memberlist_pullpush_interval,
            "memberlist.pullpush-interval",
        )? {
            ml.pull_push_interval = d;
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        for t in self.targets() {
            if !matches!(t.as_str(), "all" | "distributor" | "ingester" | "querier") {
                bail!("unknown target {t:?}: expected all, distributor, ingester or querier");
            }
        }
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
        for (name, addr) in [
            (
                "server.http_listen_address",
                &self.server.http_listen_address,
            ),
            (
                "server.grpc_listen_address",
                &self.server.grpc_listen_address,
            ),
            ("memberlist.advertise_addr", &self.memberlist.advertise_addr),
        ]
        .into_iter()
        .chain(
            self.memberlist
                .bind_addr
                .iter()
                .map(|a| ("memberlist.bind_addr", a)),
        ) {
            if !addr.is_empty() && addr.parse::<IpAddr>().is_err() {
                bail!("{name} must be an IP address, got {addr:?}");
            }
        }
        let ring = &self.ingester.ring;
        if ring.replication_factor == 0 {
            bail!("ingester.ring.replication_factor must be at least 1");
        }
        if ring.num_tokens == 0 {
            bail!("ingester.ring.num_tokens must be at least 1");
        }
        if ring.heartbeat_period.is_zero() || ring.heartbeat_timeout <= ring.heartbeat_period {
            bail!(
                "ingester.ring.heartbeat_timeout ({:?}) must be longer than ingester.ring.heartbeat_period ({:?})",
                ring.heartbeat_timeout,
                ring.heartbeat_period
            );
        }
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
        Ok(())
    }

    /// The services `target` names.
    pub fn targets(&self) -> Vec<String> {
        self.target
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::parse_from(std::iter::once("norn").chain(list.iter().copied()))
    }

    #[test]
    fn yaml_in_mimir_layout() {
        let c = Config::from_yaml(
            "multitenancy_enabled: false\nserver:\n  http_listen_port: 9009\nblocks_storage:\n  tsdb:\n    dir: /x\n    block_ranges_period: 1h\nlimits:\n  ingestion_rate: 5\n",
        )
        .unwrap();
        assert!(!c.multitenancy_enabled);
        assert_eq!(c.server.http_listen_port, 9009);
        assert_eq!(c.blocks_storage.tsdb.dir, PathBuf::from("/x"));
        assert_eq!(
            c.blocks_storage.tsdb.block_ranges_period,
            Duration::from_secs(3600)
        );
        assert_eq!(c.limits.ingestion_rate, 5.0);
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let err = Config::from_yaml("server:\n  http_listen_prot: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http_listen_prot"), "{err}");
        let err = Config::from_yaml("bogus_block: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus_block"), "{err}");
    }

    #[test]
    fn flags_override_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "server:\n  http_listen_port: 1\n").unwrap();
        let a = args(&[
            "--config.file",
            f.to_str().unwrap(),
            "--server.http-listen-port=2",
            "--auth.multitenancy-enabled=false",
            "--blocks-storage.tsdb.block-ranges-period=30m",
        ]);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.server.http_listen_port, 2);
        assert!(!c.multitenancy_enabled);
        assert_eq!(
            c.blocks_storage.tsdb.block_ranges_period,
            Duration::from_secs(1800)
        );
    }

    #[test]
    fn querier_bounds_from_yaml_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "querier:\n  max_concurrent: 3\n  max_outstanding_requests: 7\n  max_query_expression_depth: 50\n",
        )
        .unwrap();
        let c = Config::load(&args(&[
            "--config.file",
            f.to_str().unwrap(),
            "--querier.max-query-expression-size-bytes=1000",
            "--querier.max-concurrent=5",
        ]))
        .unwrap();
        assert_eq!(c.querier.max_concurrent, 5);
        assert_eq!(c.querier.max_outstanding_requests, 7);
        assert_eq!(c.querier.max_query_expression_depth, 50);
        assert_eq!(c.querier.max_query_expression_size_bytes, 1000);
        let d = Config::load(&args(&[])).unwrap().querier;
        assert_eq!(d.max_concurrent, 20);
        assert_eq!(d.max_query_expression_depth, 200);
        assert_eq!(d.max_query_expression_size_bytes, 256 << 10);
    }

    #[test]
    fn secrets_are_masked() {
        let a = args(&["--common.storage.s3.secret-access-key=hunter2"]);
        let c = Config::load(&a).unwrap();
        let y = c.masked_yaml();
        assert!(!y.contains("hunter2"));
        assert!(y.contains(MASK));
        // And the masked YAML is itself a valid config.
        Config::from_yaml(&y).unwrap();
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::load(&args(&["--target=bogus"])).is_err());
        assert!(Config::load(&args(&["--common.storage.backend=gcs"])).is_err());
        assert!(Config::load(&args(&["--querier.timeout=soon"])).is_err());
        assert!(Config::load(&args(&["--querier.max-query-expression-depth=0"])).is_err());
        assert!(Config::load(&args(&["--querier.max-query-expression-depth=1001"])).is_err());
        assert!(Config::load(&args(&["--querier.max-concurrent=0"])).is_err());
        assert!(Config::load(&args(&["--server.http-server-idle-timeout=x"])).is_err());
        assert!(Config::load(&args(&["--query-frontend.max-body-size=0"])).is_err());
    }

    #[test]
    fn edge_flags_and_yaml() {
        let c = Config::load(&args(&[
            "--server.http-server-read-header-timeout=5s",
            "--server.http-conn-limit=7",
            "--query-frontend.max-body-size=1024",
            "--ingester.max-global-metadata-per-user=3",
            "--ingester.metadata-retain-period=1m",
            "--validation.past-grace-period=1h",
        ]))
        .unwrap();
        let o = c.server.http_options();
        assert_eq!(o.read_header_timeout, Duration::from_secs(5));
        assert_eq!(o.conn_limit, 7);
        assert_eq!(o.write_timeout, Duration::from_secs(150));
        assert_eq!(c.frontend.max_body_size, 1024);
        assert_eq!(c.limits.max_global_metadata_per_user, 3);
        assert_eq!(c.ingester.metadata_retain_period, Duration::from_secs(60));
        assert_eq!(c.limits.past_grace_period, Duration::from_secs(3600));
        let c = Config::from_yaml(
            "server:\n  http_server_idle_timeout: 10s\n  http_listen_conn_limit: 2\nfrontend:\n  max_body_size: 5\nlimits:\n  max_global_metadata_per_metric: 4\n",
        )
        .unwrap();
        assert_eq!(c.server.http_server_idle_timeout, Duration::from_secs(10));
        assert_eq!(c.server.http_listen_conn_limit, 2);
        assert_eq!(c.frontend.max_body_size, 5);
        assert_eq!(c.limits.max_global_metadata_per_metric, 4);
    }
}

#[cfg(test)]
mod docs_drift {
    use super::*;
    use clap::CommandFactory;

    fn yaml_paths(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    serde_yaml::Value::Mapping(_) => yaml_paths(v, &path, out),
                    _ => out.push(path),
                }
            }
        }
    }

    /// docs/configuration.md must name every flag and every YAML key the code accepts.
    #[test]
    fn configuration_reference_lists_every_option() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .expect("docs/configuration.md exists");
        let mut missing = Vec::new();
        for arg in Args::command().get_arguments() {
            if let Some(long) = arg.get_long()
                && !["help", "version"].contains(&long)
                && !doc.contains(&format!("`--{long}`"))
            {
                missing.push(format!("--{long}"));
            }
        }
        let mut paths = Vec::new();
        yaml_paths(
            &serde_yaml::to_value(Config::default()).unwrap(),
            "",
            &mut paths,
        );
        // Optional keys that default to null still belong in the reference.
        paths.push("runtime_config.file".into());
        for p in paths {
            if !doc.contains(&format!("`{p}`")) {
                missing.push(p);
            }
        }
        missing.sort();
        missing.dedup();
        assert!(
            missing.is_empty(),
            "docs/configuration.md does not mention: {missing:?}"
        );
    }
}
