//! The distributor's flags. Its YAML struct is the distributor's own
//! ([`norn_distributor::Config`], `distributor` in YAML).
//!
//! The HA tracker's per-tenant settings (`--distributor.ha-tracker.enable-for-all-users`,
//! `.cluster`, `.replica`, `.max-clusters`) are limits, as in Mimir: see [`super::limits`].

use super::flags::{Deferred, set, set_duration};

/// The `distributor.*` flags that are not limits.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Distributor")]
pub struct DistributorFlags {
    /// Largest push body accepted, compressed and decompressed, in bytes.
    #[arg(
        long = "distributor.max-recv-msg-size",
        env = "NORN_DISTRIBUTOR_MAX_RECV_MSG_SIZE"
    )]
    pub max_recv_msg_size: Option<usize>,
    /// Longest the distributor waits for an ingester to answer a push.
    #[arg(
        long = "distributor.remote-timeout",
        env = "NORN_DISTRIBUTOR_REMOTE_TIMEOUT"
    )]
    pub remote_timeout: Option<Deferred>,
    /// Deduplicate samples from HA Prometheus pairs.
    #[arg(
        long = "distributor.ha-tracker.enable",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_ENABLE",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub ha_tracker_enable: Option<bool>,
    /// How long the elected replica may be silent before another takes over.
    #[arg(
        long = "distributor.ha-tracker.failover-timeout",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_FAILOVER_TIMEOUT"
    )]
    pub ha_tracker_failover_timeout: Option<Deferred>,
    /// How often the elected replica's last-seen time is updated in the shared store.
    #[arg(
        long = "distributor.ha-tracker.update-timeout",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_UPDATE_TIMEOUT"
    )]
    pub ha_tracker_update_timeout: Option<Deferred>,
    /// Largest random extra delay on the update timeout.
    #[arg(
        long = "distributor.ha-tracker.update-timeout-jitter-max",
        env = "NORN_DISTRIBUTOR_HA_TRACKER_UPDATE_TIMEOUT_JITTER_MAX"
    )]
    pub ha_tracker_update_timeout_jitter_max: Option<Deferred>,
}

impl DistributorFlags {
    pub fn apply(&self, c: &mut norn_distributor::Config) -> anyhow::Result<()> {
        set(&mut c.max_recv_msg_size, &self.max_recv_msg_size);
        set_duration(&mut c.remote_timeout, &self.remote_timeout)?;
        let ha = &mut c.ha_tracker;
        set(&mut ha.enable_ha_tracker, &self.ha_tracker_enable);
        set_duration(
            &mut ha.ha_tracker_failover_timeout,
            &self.ha_tracker_failover_timeout,
        )?;
        set_duration(
            &mut ha.ha_tracker_update_timeout,
            &self.ha_tracker_update_timeout,
        )?;
        set_duration(
            &mut ha.ha_tracker_update_timeout_jitter_max,
            &self.ha_tracker_update_timeout_jitter_max,
        )
    }
}
