//! The compactor's flags. Its YAML struct is the compactor's own ([`norn_compactor::Config`],
//! `compactor` in YAML, which also validates it); the per-tenant compactor settings are limits
//! (`limits` in YAML and in the runtime overrides), whose default-setting flags Mimir names
//! `compactor.*` too, so they are declared here.

use std::path::PathBuf;

use anyhow::Context;

use super::flags::{Deferred, set, set_duration};

/// The `compactor.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Compactor")]
pub struct CompactorFlags {
    /// Comma-separated ranges blocks are compacted to, each a multiple of the previous (2h0m0s,12h0m0s,24h0m0s).
    #[arg(long = "compactor.block-ranges", env = "NORN_COMPACTOR_BLOCK_RANGES")]
    pub block_ranges: Option<String>,
    /// Local directory for the blocks a compaction downloads and writes.
    #[arg(long = "compactor.data-dir", env = "NORN_COMPACTOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How often tenants are compacted.
    #[arg(
        long = "compactor.compaction-interval",
        env = "NORN_COMPACTOR_COMPACTION_INTERVAL"
    )]
    pub compaction_interval: Option<Deferred>,
    /// How often retention, deletions and bucket indexes are done.
    #[arg(
        long = "compactor.cleanup-interval",
        env = "NORN_COMPACTOR_CLEANUP_INTERVAL"
    )]
    pub cleanup_interval: Option<Deferred>,
    /// How long a block marked for deletion stays before it is deleted.
    #[arg(
        long = "compactor.deletion-delay",
        env = "NORN_COMPACTOR_DELETION_DELAY"
    )]
    pub deletion_delay: Option<Deferred>,
    /// Level-1 blocks uploaded more recently than this are not compacted yet.
    #[arg(
        long = "compactor.first-level-compaction-wait-period",
        env = "NORN_COMPACTOR_FIRST_LEVEL_COMPACTION_WAIT_PERIOD"
    )]
    pub first_level_compaction_wait_period: Option<Deferred>,
    /// How often a compactor refreshes its heartbeat in the compactor ring.
    #[arg(
        long = "compactor.ring.heartbeat-period",
        env = "NORN_COMPACTOR_RING_HEARTBEAT_PERIOD"
    )]
    pub ring_heartbeat_period: Option<Deferred>,
    /// A compactor whose heartbeat is older than this is left out of the compactor ring.
    #[arg(
        long = "compactor.ring.heartbeat-timeout",
        env = "NORN_COMPACTOR_RING_HEARTBEAT_TIMEOUT"
    )]
    pub ring_heartbeat_timeout: Option<Deferred>,
    /// This compactor's id in the compactor ring (default: the host name).
    #[arg(
        long = "compactor.ring.instance-id",
        env = "NORN_COMPACTOR_RING_INSTANCE_ID"
    )]
    pub ring_instance_id: Option<String>,
    /// Default retention of a tenant's blocks (0 = forever).
    #[arg(
        long = "compactor.blocks-retention-period",
        env = "NORN_COMPACTOR_BLOCKS_RETENTION_PERIOD"
    )]
    pub blocks_retention_period: Option<Deferred>,
    /// Default shards a tenant's ranges are split into (0 = no split).
    #[arg(
        long = "compactor.split-and-merge-shards",
        env = "NORN_COMPACTOR_SPLIT_AND_MERGE_SHARDS"
    )]
    pub split_and_merge_shards: Option<usize>,
    /// Default split jobs per range of a tenant.
    #[arg(long = "compactor.split-groups", env = "NORN_COMPACTOR_SPLIT_GROUPS")]
    pub split_groups: Option<usize>,
    /// Default idle time after which a tenant's partial blocks are deleted (0 = never).
    #[arg(
        long = "compactor.partial-block-deletion-delay",
        env = "NORN_COMPACTOR_PARTIAL_BLOCK_DELETION_DELAY"
    )]
    pub partial_block_deletion_delay: Option<Deferred>,
}

impl CompactorFlags {
    pub fn apply(
        &self,
        c: &mut norn_compactor::Config,
        limits: &mut norn_limits::Limits,
    ) -> anyhow::Result<()> {
        if let Some(text) = &self.block_ranges {
            c.block_ranges = norn_compactor::parse_block_ranges(text)
                .map_err(anyhow::Error::msg)
                .context("flag --compactor.block-ranges (env NORN_COMPACTOR_BLOCK_RANGES)")?;
        }
        set(&mut c.data_dir, &self.data_dir);
        set_duration(&mut c.compaction_interval, &self.compaction_interval)?;
        set_duration(&mut c.cleanup_interval, &self.cleanup_interval)?;
        set_duration(&mut c.deletion_delay, &self.deletion_delay)?;
        set_duration(
            &mut c.first_level_compaction_wait_period,
            &self.first_level_compaction_wait_period,
        )?;
        set_duration(
            &mut c.sharding_ring.heartbeat_period,
            &self.ring_heartbeat_period,
        )?;
        set_duration(
            &mut c.sharding_ring.heartbeat_timeout,
            &self.ring_heartbeat_timeout,
        )?;
        set(&mut c.sharding_ring.instance_id, &self.ring_instance_id);
        set_duration(
            &mut limits.compactor_blocks_retention_period,
            &self.blocks_retention_period,
        )?;
        set(
            &mut limits.compactor_split_and_merge_shards,
            &self.split_and_merge_shards,
        );
        set(&mut limits.compactor_split_groups, &self.split_groups);
        set_duration(
            &mut limits.compactor_partial_block_deletion_delay,
            &self.partial_block_deletion_delay,
        )?;
        Ok(())
    }
}
