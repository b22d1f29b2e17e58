//! How a head is set up ([`HeadOptions`]) and the per-tenant series limits its appends
//! enforce ([`AppendLimits`]).

use std::path::PathBuf;
use std::sync::Arc;

use crate::metrics::TsdbMetrics;
use crate::wal::{self, FsyncPolicy};

/// Default block range: 2 h.
pub const DEFAULT_BLOCK_RANGE_MS: i64 = 2 * 3600 * 1000;

/// Settings of a head.
#[derive(Debug, Clone)]
pub struct HeadOptions {
    /// The tenant's TSDB directory; the WAL goes to `dir/wal`.
    pub dir: PathBuf,
    /// Maximum WAL segment size (default 128 MiB).
    pub wal_segment_size: u64,
    /// WAL fsync policy (default: group-commit fsync before `append` returns).
    pub fsync: FsyncPolicy,
    /// Block range, also the chunk range for cutting chunks (default 2 h).
    pub block_range_ms: i64,
    /// Samples older than `max_t - too_old_window_ms` are rejected as too old (default:
    /// half the block range, as Prometheus).
    pub too_old_window_ms: i64,
    /// Samples before this time are already in blocks: replay drops them and appends reject
    /// them as too old (the ingester passes the newest local block's end).
    pub min_valid_time: i64,
    /// Shared metric handles.
    pub metrics: Arc<TsdbMetrics>,
}

impl HeadOptions {
    /// Defaults for a head in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            wal_segment_size: wal::DEFAULT_SEGMENT_SIZE,
            fsync: FsyncPolicy::Always,
            block_range_ms: DEFAULT_BLOCK_RANGE_MS,
            too_old_window_ms: DEFAULT_BLOCK_RANGE_MS / 2,
            min_valid_time: i64::MIN,
            metrics: Arc::new(TsdbMetrics::unregistered()),
        }
    }
}

/// Per-tenant series limits applied when creating series (0 = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendLimits {
    pub max_series: usize,
    pub max_series_per_metric: usize,
}
