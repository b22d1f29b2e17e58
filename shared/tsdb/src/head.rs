//! The per-tenant in-memory TSDB ("head"): series with their XOR chunks, a postings index,
//! appends from write requests and reads for PromQL, made durable by the [WAL](crate::wal).
//!
//! # Layout
//!
//! * `series_index`: every series, found by labels ([`SHARDS`] hash shards), id and
//!   matchers (postings), with the interned symbols and the series counts limits check.
//! * `append`: the write path ([`Head::append`]): look up or create each series, check and
//!   append its samples under the series' own lock, then log to the WAL and wait for its
//!   group commit.
//! * `replay`: rebuilding the head from its WAL. Memory is written before the WAL, so a
//!   sample can reach the log before its series record, and two appends to one series in
//!   the opposite order from memory; replay handles both.
//! * `read`: selections for PromQL ([`HeadQueryable`]), label names and values, and whole
//!   chunks for the block writer ([`Head::series_chunks`]).
//! * `cut`: writing a range as a block, cutting (write, publish, release), truncation and
//!   the WAL checkpoint.
//! * `series`, `symbols`, `postings`, `mmap_chunks`, `spill`, `cache_dir`: one series and
//!   its chunks, the symbol table, the postings index, and where chunk bytes live.
//! * `options`, `outcomes`: the settings a head takes and what its operations report.
//!
//! # Memory
//!
//! A series costs one 136-byte `Arc` allocation (id, label-id pointer, chunk state with the
//! open chunk's encoder and last bytes inline), one for its symbol ids (8 bytes a label), one for
//! its completed chunks' refs (24 bytes a chunk), 16 bytes in a hash shard, 8 in the id
//! table and 4 per label in the postings; label strings are stored once in the symbol table.
//! No sample bytes stay on the heap: completed chunks are written to `chunks_head/` and read
//! back through memory maps (see `mmap_chunks`), and an open chunk keeps its last ~24 bytes
//! inline and moves the bytes before them, which no append changes any more, to
//! `head_spill/` (see `spill`). Both directories are caches rebuilt from the WAL on start.
mod append;
mod cache_dir;
mod cut;
mod mmap_chunks;
mod options;
mod outcomes;
mod postings;
mod read;
mod replay;
mod series;
mod series_index;
mod spill;
mod symbols;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::error::{Result, TsdbError};
use crate::metrics::TsdbMetrics;
use crate::wal::{self, Wal, WalOptions};

use mmap_chunks::ChunkMapper;
use replay::{HeadMem, ReplayState};
use series::Store;
use series_index::SeriesIndex;
use spill::SpillLog;

pub use options::{AppendLimits, DEFAULT_BLOCK_RANGE_MS, HeadOptions};
pub use outcomes::{
    AppendOutcome, ChunkMeta, CutOutcome, HeadMemory, RejectReason, Rejection, ReplayStats,
    SeriesChunks, TruncateStats,
};
pub use read::HeadQueryable;
pub use series_index::SHARDS;

/// The per-tenant in-memory TSDB. `Send + Sync`: share it behind an `Arc`.
pub struct Head {
    chunk_range: i64,
    /// Completed chunks, memory-mapped from `chunks_head/`.
    mapper: ChunkMapper,
    /// Settled bytes of open chunks, in `head_spill/`.
    spill: SpillLog,
    too_old_window: i64,
    /// Samples before this are in blocks (set when a block is cut); appends reject them.
    min_valid_time: AtomicI64,
    /// Appends hold it shared for their whole run; a block cut takes it exclusively for an
    /// instant after raising `min_valid_time`, so no append that read the old bound is still
    /// running when the cut reads the head.
    append_gate: RwLock<()>,
    /// Every series and the ways to find them.
    index: SeriesIndex,
    min_t: AtomicI64,
    max_t: AtomicI64,
    wal: Wal,
    /// Set when a WAL write failed: series created by the failed append exist in memory but
    /// their records may not be in the WAL, so once it takes writes again every series
    /// record is logged anew before anything else is acknowledged.
    wal_relog: AtomicBool,
    relog_lock: Mutex<()>,
    metrics: Arc<TsdbMetrics>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("wal", &self.wal)
            .field("num_series", &self.num_series())
            .finish_non_exhaustive()
    }
}

impl Head {
    /// Opens the head in `opts.dir`, replaying its WAL.
    pub fn open(opts: HeadOptions) -> Result<(Head, ReplayStats)> {
        if opts.block_range_ms <= 0 || opts.too_old_window_ms < 0 {
            return Err(TsdbError::InvalidOption(
                "block range must be positive and the too-old window non-negative".into(),
            ));
        }
        std::fs::create_dir_all(&opts.dir).map_err(|e| TsdbError::io(&opts.dir, e))?;
        let wal_dir = opts.dir.join("wal");
        let start = Instant::now();
        let mut stats = ReplayStats::default();
        let mut state = ReplayState::default();

        // The WAL is opened after replay (it starts a new segment), so build the head in two
        // steps: replay into the in-memory part, then attach the WAL.
        let mut mem = HeadMem::new(
            opts.block_range_ms,
            ChunkMapper::open(opts.dir.join("chunks_head"))?,
            SpillLog::open(opts.dir.join("head_spill"))?,
        );
        mem.min_valid_time = opts.min_valid_time;
        stats.wal = wal::replay(&wal_dir, &opts.metrics, |rec| {
            mem.replay_record(rec, &mut state, &mut stats);
        })?;
        stats.unknown_series_samples += state.pending.values().map(|v| v.len() as u64).sum::<u64>();
        if stats.unknown_series_samples > 0 {
            tracing::warn!(
                samples = stats.unknown_series_samples,
                "WAL replay dropped samples of series without a series record"
            );
        }
        let wal = Wal::open(
            wal_dir,
            WalOptions {
                segment_size: opts.wal_segment_size,
                fsync: opts.fsync,
            },
            Arc::clone(&opts.metrics),
        )?;
        stats.duration = start.elapsed();
        opts.metrics
            .wal_replay_duration
            .set(stats.duration.as_secs_f64());
        let head = Head {
            chunk_range: opts.block_range_ms,
            mapper: mem.mapper,
            spill: mem.spill,
            too_old_window: opts.too_old_window_ms,
            min_valid_time: AtomicI64::new(opts.min_valid_time),
            append_gate: RwLock::new(()),
            index: mem.index,
            min_t: mem.min_t,
            max_t: mem.max_t,
            wal,
            wal_relog: AtomicBool::new(false),
            relog_lock: Mutex::new(()),
            metrics: opts.metrics,
        };
        if opts.min_valid_time != i64::MIN {
            // Series whose samples all lie in blocks were replayed empty: drop them now.
            head.truncate(opts.min_valid_time);
        }
        tracing::info!(
            series = head.num_series(),
            samples = stats.samples,
            duration_ms = stats.duration.as_millis() as u64,
            "head replayed WAL"
        );
        Ok((head, stats))
    }

    fn store(&self) -> Store<'_> {
        Store {
            chunk_range: self.chunk_range,
            mapper: &self.mapper,
            spill: &self.spill,
        }
    }

    /// Whether the head's WAL refuses writes after an I/O error it has not recovered from.
    pub fn wal_broken(&self) -> bool {
        self.wal.is_broken()
    }

    /// Number of series.
    pub fn num_series(&self) -> usize {
        self.index.num_series()
    }

    /// Time of the oldest sample, if any.
    pub fn min_time(&self) -> Option<i64> {
        let t = self.min_t.load(Ordering::Acquire);
        (t != i64::MAX).then_some(t)
    }

    /// Time of the newest sample, if any.
    pub fn max_time(&self) -> Option<i64> {
        let t = self.max_t.load(Ordering::Acquire);
        (t != i64::MIN).then_some(t)
    }

    /// The head's WAL (segment listing and truncation hooks for block cutting).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Rough memory accounting (walks every series; for diagnostics and benchmarks).
    pub fn memory(&self) -> HeadMemory {
        let mut chunk_bytes = 0;
        for series in self.index.shards() {
            for s in &series {
                chunk_bytes += s.state.lock().heap_size();
            }
        }
        HeadMemory {
            series: self.num_series(),
            symbols: self.index.symbols.len(),
            symbol_bytes: self.index.symbols.heap_size(),
            postings_bytes: self.index.postings.read().heap_size(),
            chunk_bytes,
            spill_files: self.spill.files(),
        }
    }

    /// Closes the head if it holds no series, atomically with respect to appends: an append
    /// either finished before (and the head is not empty) or fails with
    /// [`TsdbError::Closed`]. For dropping an idle tenant without racing a late push.
    pub fn close_if_empty(&self) -> Result<bool> {
        let _gate = self.append_gate.write();
        if self.num_series() > 0 {
            return Ok(false);
        }
        self.wal.close()?;
        Ok(true)
    }

    /// Flushes and fsyncs the WAL; later appends fail with [`TsdbError::Closed`].
    pub fn close(&self) -> Result<()> {
        self.wal.close()
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        if let Err(e) = self.wal.close() {
            tracing::error!(error = %e, "closing head WAL failed");
        }
    }
}

#[cfg(test)]
use series_index::labels_hash;
#[cfg(test)]
mod chunk_read_tests;
#[cfg(test)]
mod start_zero_tests;
#[cfg(test)]
mod tests;
