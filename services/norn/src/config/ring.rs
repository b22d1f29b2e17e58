//! `ingester.ring` and `memberlist`: where ingesters sit in the hash ring, and the gossip that
//! carries the ring (SWIM over UDP, full-state exchange over TCP on the same port).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set, set_duration};
use super::server::check_ip;

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

impl IngesterRingConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.replication_factor == 0 {
            bail!("ingester.ring.replication_factor must be at least 1");
        }
        if self.num_tokens == 0 {
            bail!("ingester.ring.num_tokens must be at least 1");
        }
        if self.heartbeat_period.is_zero() || self.heartbeat_timeout <= self.heartbeat_period {
            bail!(
                "ingester.ring.heartbeat_timeout ({:?}) must be longer than ingester.ring.heartbeat_period ({:?})",
                self.heartbeat_timeout,
                self.heartbeat_period
            );
        }
        Ok(())
    }
}

/// `memberlist` in YAML.
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
    /// File holding the gossip encryption key (32 bytes, base64); empty: gossip in plain
    /// text. A Norn addition (hashicorp memberlist's `SecretKey`).
    pub encryption_key_path: String,
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
            encryption_key_path: String::new(),
        }
    }
}

impl MemberlistConfig {
    /// Addresses must be IP addresses (join members may be DNS names).
    pub fn validate(&self) -> anyhow::Result<()> {
        check_ip("memberlist.advertise_addr", &self.advertise_addr)?;
        for a in &self.bind_addr {
            check_ip("memberlist.bind_addr", a)?;
        }
        Ok(())
    }
}

/// The `ingester.ring.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Ingester ring")]
pub struct IngesterRingFlags {
    /// Ingesters each series is written to.
    #[arg(
        long = "ingester.ring.replication-factor",
        env = "NORN_INGESTER_RING_REPLICATION_FACTOR"
    )]
    pub replication_factor: Option<usize>,
    /// Tokens each ingester owns in the ring.
    #[arg(
        long = "ingester.ring.num-tokens",
        env = "NORN_INGESTER_RING_NUM_TOKENS"
    )]
    pub num_tokens: Option<usize>,
    /// File the ingester keeps its tokens in, so a restart owns the same ranges.
    #[arg(
        long = "ingester.ring.tokens-file-path",
        env = "NORN_INGESTER_RING_TOKENS_FILE_PATH"
    )]
    pub tokens_file_path: Option<PathBuf>,
    /// How often an ingester refreshes its heartbeat in the ring.
    #[arg(
        long = "ingester.ring.heartbeat-period",
        env = "NORN_INGESTER_RING_HEARTBEAT_PERIOD"
    )]
    pub heartbeat_period: Option<Deferred>,
    /// An ingester whose heartbeat is older than this is unhealthy.
    #[arg(
        long = "ingester.ring.heartbeat-timeout",
        env = "NORN_INGESTER_RING_HEARTBEAT_TIMEOUT"
    )]
    pub heartbeat_timeout: Option<Deferred>,
    /// Unhealthy ingesters are removed from the ring after this many heartbeat timeouts (0 = never).
    #[arg(
        long = "ingester.ring.auto-forget-unhealthy-periods",
        env = "NORN_INGESTER_RING_AUTO_FORGET_UNHEALTHY_PERIODS"
    )]
    pub auto_forget_unhealthy_periods: Option<u32>,
    /// This ingester's id in the ring (default: the hostname).
    #[arg(
        long = "ingester.ring.instance-id",
        env = "NORN_INGESTER_RING_INSTANCE_ID"
    )]
    pub instance_id: Option<String>,
    /// Address other services dial to reach this ingester's gRPC server.
    #[arg(
        long = "ingester.ring.instance-addr",
        env = "NORN_INGESTER_RING_INSTANCE_ADDR"
    )]
    pub instance_addr: Option<String>,
    /// Port advertised in the ring (default: the gRPC listen port).
    #[arg(
        long = "ingester.ring.instance-port",
        env = "NORN_INGESTER_RING_INSTANCE_PORT"
    )]
    pub instance_port: Option<u16>,
    /// Availability zone of this ingester.
    #[arg(
        long = "ingester.ring.instance-availability-zone",
        env = "NORN_INGESTER_RING_INSTANCE_AVAILABILITY_ZONE"
    )]
    pub instance_availability_zone: Option<String>,
    /// Place a series' replicas in distinct zones.
    #[arg(
        long = "ingester.ring.zone-awareness-enabled",
        env = "NORN_INGESTER_RING_ZONE_AWARENESS_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub zone_awareness_enabled: Option<bool>,
}

impl IngesterRingFlags {
    pub fn apply(&self, c: &mut IngesterRingConfig) -> anyhow::Result<()> {
        set(&mut c.replication_factor, &self.replication_factor);
        set(&mut c.num_tokens, &self.num_tokens);
        if let Some(p) = &self.tokens_file_path {
            c.tokens_file_path = p.display().to_string();
        }
        set_duration(&mut c.heartbeat_period, &self.heartbeat_period)?;
        set_duration(&mut c.heartbeat_timeout, &self.heartbeat_timeout)?;
        set(
            &mut c.auto_forget_unhealthy_periods,
            &self.auto_forget_unhealthy_periods,
        );
        set(&mut c.instance_id, &self.instance_id);
        set(&mut c.instance_addr, &self.instance_addr);
        set(&mut c.instance_port, &self.instance_port);
        set(
            &mut c.instance_availability_zone,
            &self.instance_availability_zone,
        );
        set(&mut c.zone_awareness_enabled, &self.zone_awareness_enabled);
        Ok(())
    }
}

/// The `memberlist.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Memberlist (gossip)")]
pub struct MemberlistFlags {
    /// Name of this node in the gossip cluster (default: hostname plus a random suffix).
    #[arg(long = "memberlist.nodename", env = "NORN_MEMBERLIST_NODENAME")]
    pub nodename: Option<String>,
    /// Address gossip listens on (UDP and TCP).
    #[arg(long = "memberlist.bind-addr", env = "NORN_MEMBERLIST_BIND_ADDR")]
    pub bind_addr: Option<String>,
    /// Port gossip listens on (UDP and TCP; default 7946).
    #[arg(long = "memberlist.bind-port", env = "NORN_MEMBERLIST_BIND_PORT")]
    pub bind_port: Option<u16>,
    /// Address advertised to other gossip members.
    #[arg(
        long = "memberlist.advertise-addr",
        env = "NORN_MEMBERLIST_ADVERTISE_ADDR"
    )]
    pub advertise_addr: Option<String>,
    /// Port advertised to other gossip members (default: the bind port).
    #[arg(
        long = "memberlist.advertise-port",
        env = "NORN_MEMBERLIST_ADVERTISE_PORT"
    )]
    pub advertise_port: Option<u16>,
    /// Gossip members to join (host:port or host; DNS names allowed); repeat or comma-separate.
    #[arg(
        long = "memberlist.join",
        env = "NORN_MEMBERLIST_JOIN",
        value_delimiter = ','
    )]
    pub join: Vec<String>,
    /// How often gossip messages are sent.
    #[arg(
        long = "memberlist.gossip-interval",
        env = "NORN_MEMBERLIST_GOSSIP_INTERVAL"
    )]
    pub gossip_interval: Option<Deferred>,
    /// How often the full state is exchanged with a random member over TCP.
    #[arg(
        long = "memberlist.pullpush-interval",
        env = "NORN_MEMBERLIST_PULLPUSH_INTERVAL"
    )]
    pub pullpush_interval: Option<Deferred>,
    /// File with the gossip encryption key: 32 bytes in base64 (`openssl rand -base64 32`); every gossip packet is sealed with AES-256-GCM and members without the key cannot join.
    #[arg(
        long = "memberlist.encryption-key-path",
        env = "NORN_MEMBERLIST_ENCRYPTION_KEY_PATH"
    )]
    pub encryption_key_path: Option<String>,
}

impl MemberlistFlags {
    pub fn apply(&self, c: &mut MemberlistConfig) -> anyhow::Result<()> {
        set(&mut c.node_name, &self.nodename);
        if let Some(b) = &self.bind_addr {
            c.bind_addr = vec![b.clone()];
        }
        set(&mut c.bind_port, &self.bind_port);
        set(&mut c.advertise_addr, &self.advertise_addr);
        set(&mut c.advertise_port, &self.advertise_port);
        if !self.join.is_empty() {
            c.join_members = self
                .join
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect();
        }
        set_duration(&mut c.gossip_interval, &self.gossip_interval)?;
        set(&mut c.encryption_key_path, &self.encryption_key_path);
        set_duration(&mut c.pull_push_interval, &self.pullpush_interval)
    }
}
