//! Ingester configuration: the `blocks_storage.tsdb` keys Mimir uses for the ingester's TSDB
//! (WAL, head, block cutting and shipping).

use std::path::PathBuf;
use std::time::Duration;

use norn_model::duration::serde_duration;
use norn_tsdb::FsyncPolicy;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Everything the ingester needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub tsdb: TsdbConfig,
    pub instance_limits: InstanceLimits,
    /// Metric metadata not re-sent for this long is dropped (Mimir's
    /// `-ingester.metadata-retain-period`; zero keeps it forever).
    pub metadata_retain_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tsdb: TsdbConfig::default(),
            instance_limits: InstanceLimits::default(),
            metadata_retain_period: Duration::from_secs(600),
        }
    }
}

/// `ingester.instance_limits`: what one ingester takes on, whatever the tenants' limits say
/// (Mimir's keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceLimits {
    /// Most tenants with a head in this ingester (0 = unlimited, as in Mimir). A push for a
    /// new tenant beyond it is refused with a retryable error. Independent of it, a new
    /// tenant is also refused while the process is short of file descriptors.
    pub max_tenants: usize,
}

/// `blocks_storage.tsdb`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TsdbConfig {
    /// Where per-tenant WALs (and later local blocks) live.
    pub dir: PathBuf,
    /// Width of a block; the head accepts samples up to half of it behind its newest sample.
    #[serde(with = "serde_duration")]
    pub block_ranges_period: Duration,
    /// How long shipped blocks stay on local disk (from the block's creation).
    #[serde(with = "serde_duration")]
    pub retention_period: Duration,
    /// How often the ingester checks whether a head range is complete and cuts it.
    #[serde(with = "serde_duration")]
    pub head_compaction_interval: Duration,
    /// A tenant's head that received nothing for this long is cut whole (0 disables).
    #[serde(with = "serde_duration")]
    pub head_compaction_idle_timeout: Duration,
    /// A tenant that received nothing for this long, whose head is empty and whose blocks are
    /// all shipped, is closed: its WAL and files are released and its local directory
    /// deleted (0 disables; needs a bucket).
    #[serde(with = "serde_duration")]
    pub close_idle_tsdb_timeout: Duration,
    /// How often new local blocks are uploaded to the bucket (0 disables shipping).
    #[serde(with = "serde_duration")]
    pub ship_interval: Duration,
    /// Cut and ship every head on shutdown (otherwise the WAL keeps the data for the restart).
    pub flush_blocks_on_shutdown: bool,
    /// WAL segment size in bytes.
    pub wal_segment_size_bytes: u64,
    /// `always`: group-commit fsync before a push is acknowledged; `never`: leave it to the OS.
    #[serde(serialize_with = "ser_fsync", deserialize_with = "de_fsync")]
    pub wal_fsync: FsyncPolicy,
}

impl Default for TsdbConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("./tsdb"),
            block_ranges_period: Duration::from_secs(2 * 3600),
            retention_period: Duration::from_secs(13 * 3600),
            head_compaction_interval: Duration::from_secs(60),
            head_compaction_idle_timeout: Duration::from_secs(3600),
            close_idle_tsdb_timeout: Duration::from_secs(13 * 3600),
            ship_interval: Duration::from_secs(60),
            flush_blocks_on_shutdown: false,
            wal_segment_size_bytes: 128 << 20,
            wal_fsync: FsyncPolicy::Always,
        }
    }
}

fn ser_fsync<S: Serializer>(p: &FsyncPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match p {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Never => "never",
    })
}

fn de_fsync<'de, D: Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}
