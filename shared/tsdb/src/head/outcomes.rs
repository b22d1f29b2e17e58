//! What the head's operations report back: append outcomes and their rejections, replay
//! statistics, what a cut or truncation released, memory accounting, and the chunk shapes
//! the block writer takes.

use std::time::Duration;

use norn_model::Labels;
pub use norn_model::RejectReason;

use crate::block::BlockMeta;
use crate::wal::{self, ReplayResult};

/// Samples of one series rejected for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the series in the batch.
    pub series_index: usize,
    pub reason: RejectReason,
    pub samples: usize,
}

/// Result of [`Head::append`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Samples appended (exact duplicates of the last sample are accepted but not counted).
    pub appended: usize,
    pub series_created: usize,
    pub rejected: Vec<Rejection>,
}

/// What opening a head found in its WAL.
#[derive(Debug, Clone, Default)]
pub struct ReplayStats {
    pub wal: ReplayResult,
    /// Series restored.
    pub series: u64,
    /// Samples restored.
    pub samples: u64,
    /// Samples whose series record was never found (dropped).
    pub unknown_series_samples: u64,
    /// Records whose payload did not decode (skipped).
    pub bad_records: u64,
    pub duration: Duration,
}

/// One chunk of a series, for the block writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMeta {
    pub min_t: i64,
    /// Time of the last sample (inclusive).
    pub max_t: i64,
    /// XOR chunk data (encoding 1), as a block's chunk file stores it.
    pub data: Vec<u8>,
}

/// A series with its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesChunks {
    pub labels: Labels,
    pub chunks: Vec<ChunkMeta>,
}

/// What [`Head::truncate`] released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TruncateStats {
    pub series_removed: usize,
    pub chunks_removed: usize,
    pub files_removed: usize,
}

/// What [`Head::cut_block`] did.
#[derive(Debug, Clone)]
pub struct CutOutcome {
    /// The block written, `None` when the range held no data.
    pub meta: Option<BlockMeta>,
    pub truncated: TruncateStats,
    /// `None` when the WAL checkpoint failed: the block holds the data, so that is not a
    /// failed cut; the WAL keeps the old segments until the next checkpoint covers them.
    pub checkpoint: Option<wal::CheckpointStats>,
    pub duration: Duration,
}

/// Rough memory accounting of a head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadMemory {
    pub series: usize,
    pub symbols: usize,
    pub symbol_bytes: usize,
    pub postings_bytes: usize,
    pub chunk_bytes: usize,
    /// Files in `head_spill/` (settled bytes of open chunks).
    pub spill_files: usize,
}
