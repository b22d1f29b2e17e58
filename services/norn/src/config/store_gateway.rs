//! `store_gateway.sharding_ring`: where store-gateways sit in their ring (kept in the same
//! gossiped KV store as the ingester ring, under its own key), which decides which of them
//! load and serve each bucket block (`norn_ring::blocks`). Keys and flags are Mimir's.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set, set_duration};

/// Tokens each store-gateway owns. Mimir fixes it (no flag): enough for an even spread of
/// blocks over a few hundred instances.
pub const STORE_GATEWAY_NUM_TOKENS: usize = 512;

/// `store_gateway` in YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreGatewayConfig {
    pub sharding_ring: StoreGatewayRingConfig,
}

/// `store_gateway.sharding_ring`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreGatewayRingConfig {
    /// Store-gateways each block is loaded by.
    pub replication_factor: usize,
    /// Empty: tokens are not persisted (a restart takes new ones and re-shards).
    pub tokens_file_path: String,
    #[serde(with = "serde_duration")]
    pub heartbeat_period: Duration,
    #[serde(with = "serde_duration")]
    pub heartbeat_timeout: Duration,
    /// Forget store-gateways unhealthy for 10 heartbeat timeouts, so their blocks move for
    /// good to the others.
    pub auto_forget_enabled: bool,
    /// Empty: the hostname.
    pub instance_id: String,
    /// Empty: as the ingester ring (loopback when the gRPC listener is, else the listener's
    /// address, else the default route's interface).
    pub instance_addr: String,
    /// 0: the gRPC listen port.
    pub instance_port: u16,
    pub instance_availability_zone: String,
}

impl Default for StoreGatewayRingConfig {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            tokens_file_path: String::new(),
            heartbeat_period: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(60),
            auto_forget_enabled: true,
            instance_id: String::new(),
            instance_addr: String::new(),
            instance_port: 0,
            instance_availability_zone: String::new(),
        }
    }
}

impl StoreGatewayRingConfig {
    /// Heartbeat timeouts after which an unhealthy store-gateway is forgotten (Mimir's).
    pub const AUTO_FORGET_PERIODS: u32 = 10;

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.replication_factor == 0 {
            bail!("store_gateway.sharding_ring.replication_factor must be at least 1");
        }
        if self.heartbeat_period.is_zero() || self.heartbeat_timeout <= self.heartbeat_period {
            bail!(
                "store_gateway.sharding_ring.heartbeat_timeout ({:?}) must be longer than store_gateway.sharding_ring.heartbeat_period ({:?})",
                self.heartbeat_timeout,
                self.heartbeat_period
            );
        }
        Ok(())
    }
}

/// The `store-gateway.sharding-ring.*` flags (fields prefixed `sg_`: clap ids must differ
/// from the ingester ring's).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Store-gateway ring")]
pub struct StoreGatewayRingFlags {
    /// Store-gateways each block is loaded by (and queried from, with retries).
    #[arg(
        long = "store-gateway.sharding-ring.replication-factor",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_REPLICATION_FACTOR"
    )]
    pub sg_replication_factor: Option<usize>,
    /// File the store-gateway keeps its tokens in, so a restart owns the same blocks.
    #[arg(
        long = "store-gateway.sharding-ring.tokens-file-path",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_TOKENS_FILE_PATH"
    )]
    pub sg_tokens_file_path: Option<PathBuf>,
    /// How often a store-gateway refreshes its heartbeat in the ring.
    #[arg(
        long = "store-gateway.sharding-ring.heartbeat-period",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_HEARTBEAT_PERIOD"
    )]
    pub sg_heartbeat_period: Option<Deferred>,
    /// A store-gateway whose heartbeat is older than this is unhealthy: its blocks are asked
    /// of the next replicas.
    #[arg(
        long = "store-gateway.sharding-ring.heartbeat-timeout",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_HEARTBEAT_TIMEOUT"
    )]
    pub sg_heartbeat_timeout: Option<Deferred>,
    /// Forget store-gateways unhealthy for 10 heartbeat timeouts.
    #[arg(
        long = "store-gateway.sharding-ring.auto-forget-enabled",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_AUTO_FORGET_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub sg_auto_forget_enabled: Option<bool>,
    /// This store-gateway's id in the ring (default: the hostname).
    #[arg(
        long = "store-gateway.sharding-ring.instance-id",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_INSTANCE_ID"
    )]
    pub sg_instance_id: Option<String>,
    /// Address queriers dial to reach this store-gateway's gRPC server.
    #[arg(
        long = "store-gateway.sharding-ring.instance-addr",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_INSTANCE_ADDR"
    )]
    pub sg_instance_addr: Option<String>,
    /// Port advertised in the ring (default: the gRPC listen port).
    #[arg(
        long = "store-gateway.sharding-ring.instance-port",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_INSTANCE_PORT"
    )]
    pub sg_instance_port: Option<u16>,
    /// Availability zone of this store-gateway (shown on the ring page; zone-aware placement
    /// of blocks is not implemented).
    #[arg(
        long = "store-gateway.sharding-ring.instance-availability-zone",
        env = "NORN_STORE_GATEWAY_SHARDING_RING_INSTANCE_AVAILABILITY_ZONE"
    )]
    pub sg_instance_availability_zone: Option<String>,
}

impl StoreGatewayRingFlags {
    pub fn apply(&self, c: &mut StoreGatewayRingConfig) -> anyhow::Result<()> {
        set(&mut c.replication_factor, &self.sg_replication_factor);
        if let Some(p) = &self.sg_tokens_file_path {
            c.tokens_file_path = p.display().to_string();
        }
        set_duration(&mut c.heartbeat_period, &self.sg_heartbeat_period)?;
        set_duration(&mut c.heartbeat_timeout, &self.sg_heartbeat_timeout)?;
        set(&mut c.auto_forget_enabled, &self.sg_auto_forget_enabled);
        set(&mut c.instance_id, &self.sg_instance_id);
        set(&mut c.instance_addr, &self.sg_instance_addr);
        set(&mut c.instance_port, &self.sg_instance_port);
        set(
            &mut c.instance_availability_zone,
            &self.sg_instance_availability_zone,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Args, Config};
    use super::*;

    fn load(yaml: &str, flags: &[&str]) -> anyhow::Result<Config> {
        let mut c = Config::from_yaml(yaml)?;
        let args = Args::parse_from(std::iter::once("norn").chain(flags.iter().copied()));
        c.apply_flags(&args)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn ring_and_query_windows_from_yaml_and_flags() {
        let c = load(
            "store_gateway:\n  sharding_ring:\n    replication_factor: 2\n    heartbeat_timeout: 2m\nquerier:\n  query_store_after: 6h\nlimits:\n  store_gateway_tenant_shard_size: 3\n",
            &[
                "--store-gateway.sharding-ring.instance-id=sg-1",
                "--querier.query-ingesters-within=7h",
                "--querier.max-fetched-chunk-bytes-per-query=1000",
            ],
        )
        .unwrap();
        let r = &c.store_gateway.sharding_ring;
        assert_eq!(r.replication_factor, 2);
        assert_eq!(r.heartbeat_timeout, Duration::from_secs(120));
        assert_eq!(r.instance_id, "sg-1");
        assert_eq!(c.querier.query_store_after, Duration::from_secs(6 * 3600));
        assert_eq!(
            c.querier.query_ingesters_within,
            Duration::from_secs(7 * 3600)
        );
        assert_eq!(c.limits.store_gateway_tenant_shard_size, 3);
        assert_eq!(c.limits.max_fetched_chunk_bytes_per_query, 1000);
        let d = load("", &[]).unwrap();
        assert_eq!(d.querier.query_store_after, Duration::from_secs(12 * 3600));
        assert_eq!(
            d.querier.query_ingesters_within,
            Duration::from_secs(13 * 3600)
        );
        assert_eq!(d.store_gateway.sharding_ring.replication_factor, 3);
    }

    #[test]
    fn bad_settings_are_refused() {
        for flags in [
            &["--store-gateway.sharding-ring.replication-factor=0"][..],
            &["--store-gateway.sharding-ring.heartbeat-timeout=1s"][..],
            // A gap between the two windows would be queried from nobody.
            &["--querier.query-store-after=14h"][..],
        ] {
            assert!(load("", flags).is_err(), "{flags:?}");
        }
        assert!(load("store_gateway:\n  sharding_ring:\n    nope: 1\n", &[]).is_err());
    }
}
