//! `tenant_federation`: whether one query may read several tenants (`X-Scope-OrgID: a|b`),
//! Mimir's tenant federation, and its bounds.

use serde::{Deserialize, Serialize};

/// `tenant_federation` in YAML (Mimir's block and keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantFederationConfig {
    pub enabled: bool,
    /// How many tenants of one federated query are read at once.
    pub max_concurrent: usize,
    /// At most this many tenants in one query (0: no limit).
    pub max_tenants: usize,
}

impl Default for TenantFederationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_concurrent: 16,
            max_tenants: 0,
        }
    }
}

impl TenantFederationConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_concurrent == 0 {
            anyhow::bail!(
                "tenant_federation.max_concurrent (--tenant-federation.max-concurrent) must be at least 1"
            );
        }
        Ok(())
    }

    /// What the tenant resolvers of the read paths need.
    pub fn resolver(&self) -> norn_server::Federation {
        norn_server::Federation {
            enabled: self.enabled,
            max_tenants: self.max_tenants,
            max_concurrent: self.max_concurrent,
        }
    }
}

/// The `--tenant-federation.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Tenant federation")]
pub struct TenantFederationFlags {
    /// Let queries read several tenants at once with X-Scope-OrgID: a|b; every series gets __tenant_id__ (default false).
    #[arg(
        id = "tenant_federation_enabled",
        long = "tenant-federation.enabled",
        env = "NORN_TENANT_FEDERATION_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub enabled: Option<bool>,
    /// How many tenants of one federated query are read at once (default 16).
    #[arg(
        id = "tenant_federation_max_concurrent",
        long = "tenant-federation.max-concurrent",
        env = "NORN_TENANT_FEDERATION_MAX_CONCURRENT"
    )]
    pub max_concurrent: Option<usize>,
    /// At most this many tenants in one federated query; 0 is no limit (default 0).
    #[arg(
        id = "tenant_federation_max_tenants",
        long = "tenant-federation.max-tenants",
        env = "NORN_TENANT_FEDERATION_MAX_TENANTS"
    )]
    pub max_tenants: Option<usize>,
}

impl TenantFederationFlags {
    pub fn apply(&self, c: &mut TenantFederationConfig) {
        if let Some(v) = self.enabled {
            c.enabled = v;
        }
        if let Some(v) = self.max_concurrent {
            c.max_concurrent = v;
        }
        if let Some(v) = self.max_tenants {
            c.max_tenants = v;
        }
    }
}
