//! `runtime_config`: the per-tenant overrides file and how often it is re-read.

use std::path::PathBuf;
use std::time::Duration;

use norn_model::duration::serde_duration;
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set_duration};

/// `runtime_config` in YAML.
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

/// The `runtime-config.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Runtime config (per-tenant overrides)")]
pub struct RuntimeConfigFlags {
    /// Per-tenant overrides file, re-read periodically.
    #[arg(long = "runtime-config.file", env = "NORN_RUNTIME_CONFIG_FILE")]
    pub file: Option<PathBuf>,
    /// How often the runtime config file is re-read.
    #[arg(
        long = "runtime-config.reload-period",
        env = "NORN_RUNTIME_CONFIG_RELOAD_PERIOD"
    )]
    pub reload_period: Option<Deferred>,
}

impl RuntimeConfigFlags {
    pub fn apply(&self, c: &mut RuntimeConfig) -> anyhow::Result<()> {
        if self.file.is_some() {
            c.file = self.file.clone();
        }
        set_duration(&mut c.period, &self.reload_period)
    }
}
