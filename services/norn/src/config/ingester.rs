//! `ingester`: the ingester's instance limits and how long it keeps metric metadata. Its place
//! in the ring (`ingester.ring`) is in [`super::ring`]; its TSDB settings in [`super::tsdb`].

use std::time::Duration;

use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set, set_duration};
use super::ring::IngesterRingConfig;

/// `ingester` in YAML.
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

/// The `ingester.*` flags that are neither ring settings nor per-tenant limits.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Ingester")]
pub struct IngesterFlags {
    /// Most tenants one ingester holds (0 = unlimited); new tenants beyond it get a 5xx.
    #[arg(
        long = "ingester.instance-limits.max-tenants",
        env = "NORN_INGESTER_INSTANCE_LIMITS_MAX_TENANTS"
    )]
    pub max_tenants: Option<usize>,
    /// Metric metadata not re-sent for this long is dropped (0 keeps it).
    #[arg(
        long = "ingester.metadata-retain-period",
        env = "NORN_INGESTER_METADATA_RETAIN_PERIOD"
    )]
    pub metadata_retain_period: Option<Deferred>,
}

impl IngesterFlags {
    /// Applies to `ingester` except its `ring` (see [`super::ring::IngesterRingFlags`]).
    pub fn apply(&self, c: &mut IngesterConfig) -> anyhow::Result<()> {
        set(&mut c.instance_limits.max_tenants, &self.max_tenants);
        set_duration(&mut c.metadata_retain_period, &self.metadata_retain_period)
    }
}
