//! `blocks_storage.tsdb`: the ingester's WALs, heads and local blocks. The YAML struct is the
//! ingester's own ([`norn_ingester::config::TsdbConfig`]); this module holds its flags.

use std::path::PathBuf;

use norn_ingester::config::TsdbConfig;

use super::flags::{Deferred, set, set_duration};

/// The `blocks-storage.tsdb.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "TSDB (the ingester's WALs, heads and local blocks)")]
pub struct TsdbFlags {
    /// Directory of the ingesters' per-tenant WALs and local blocks.
    #[arg(long = "blocks-storage.tsdb.dir", env = "NORN_BLOCKS_STORAGE_TSDB_DIR")]
    pub dir: Option<PathBuf>,
    /// Block width (e.g. 2h); the head takes samples up to half of it behind its newest sample.
    #[arg(
        long = "blocks-storage.tsdb.block-ranges-period",
        env = "NORN_BLOCKS_STORAGE_TSDB_BLOCK_RANGES_PERIOD"
    )]
    pub block_ranges_period: Option<Deferred>,
    /// How long shipped blocks stay on the ingester's disk.
    #[arg(
        long = "blocks-storage.tsdb.retention-period",
        env = "NORN_BLOCKS_STORAGE_TSDB_RETENTION_PERIOD"
    )]
    pub retention_period: Option<Deferred>,
    /// WAL segment size in bytes.
    #[arg(
        long = "blocks-storage.tsdb.wal-segment-size-bytes",
        env = "NORN_BLOCKS_STORAGE_TSDB_WAL_SEGMENT_SIZE_BYTES"
    )]
    pub wal_segment_size_bytes: Option<u64>,
    /// WAL fsync policy: always (group commit before acknowledging) or never.
    #[arg(
        long = "blocks-storage.tsdb.wal-fsync",
        env = "NORN_BLOCKS_STORAGE_TSDB_WAL_FSYNC"
    )]
    pub wal_fsync: Option<Deferred>,
    /// How often heads are checked for a complete range to cut into a block.
    #[arg(
        long = "blocks-storage.tsdb.head-compaction-interval",
        env = "NORN_BLOCKS_STORAGE_TSDB_HEAD_COMPACTION_INTERVAL"
    )]
    pub head_compaction_interval: Option<Deferred>,
    /// Cut a tenant's whole head after this long without a push (0 disables).
    #[arg(
        long = "blocks-storage.tsdb.head-compaction-idle-timeout",
        env = "NORN_BLOCKS_STORAGE_TSDB_HEAD_COMPACTION_IDLE_TIMEOUT"
    )]
    pub head_compaction_idle_timeout: Option<Deferred>,
    /// Close a tenant idle this long whose head is empty and blocks all shipped (0 disables).
    #[arg(
        long = "blocks-storage.tsdb.close-idle-tsdb-timeout",
        env = "NORN_BLOCKS_STORAGE_TSDB_CLOSE_IDLE_TSDB_TIMEOUT"
    )]
    pub close_idle_tsdb_timeout: Option<Deferred>,
    /// How often new blocks are uploaded to the bucket (0 disables shipping).
    #[arg(
        long = "blocks-storage.tsdb.ship-interval",
        env = "NORN_BLOCKS_STORAGE_TSDB_SHIP_INTERVAL"
    )]
    pub ship_interval: Option<Deferred>,
    /// Cut and ship every head on shutdown.
    #[arg(
        long = "blocks-storage.tsdb.flush-blocks-on-shutdown",
        env = "NORN_BLOCKS_STORAGE_TSDB_FLUSH_BLOCKS_ON_SHUTDOWN",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub flush_blocks_on_shutdown: Option<bool>,
}

impl TsdbFlags {
    pub fn apply(&self, c: &mut TsdbConfig) -> anyhow::Result<()> {
        set(&mut c.dir, &self.dir);
        set_duration(&mut c.block_ranges_period, &self.block_ranges_period)?;
        set_duration(&mut c.retention_period, &self.retention_period)?;
        set(&mut c.wal_segment_size_bytes, &self.wal_segment_size_bytes);
        set_duration(
            &mut c.head_compaction_interval,
            &self.head_compaction_interval,
        )?;
        set_duration(
            &mut c.head_compaction_idle_timeout,
            &self.head_compaction_idle_timeout,
        )?;
        set_duration(&mut c.ship_interval, &self.ship_interval)?;
        set_duration(
            &mut c.close_idle_tsdb_timeout,
            &self.close_idle_tsdb_timeout,
        )?;
        set(
            &mut c.flush_blocks_on_shutdown,
            &self.flush_blocks_on_shutdown,
        );
        if let Some(p) = &self.wal_fsync {
            c.wal_fsync = p.parse()?;
        }
        Ok(())
    }
}
