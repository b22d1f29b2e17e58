//! The per-tenant in-memory TSDB ("head"): series with their XOR chunks, a postings index,
//! appends from write requests and reads for PromQL, made durable by the [WAL](crate::wal).
//!
//! # Write path
//!
//! For each series of a [`WriteBatch`] the head hashes the borrowed label bytes and looks the
//! series up in one of [`SHARDS`] hash shards, comparing labels against the interned symbols
//! without allocating. Only a new series is copied (interned, given an id, indexed). Samples
//! are checked (too old, out of order, duplicate) and appended under the series' own mutex,
//! so appenders only contend when they write the same series. Everything accepted is then
//! written to the WAL, new series records before the samples, and `append` returns after the
//! WAL's group commit made it durable.
//!
//! Memory is written before the WAL, so two concurrent appends to one series can reach the WAL
//! in the opposite order from memory, and a sample can reach the WAL before the series
//! record another appender is about to log. Replay handles both: it re-inserts an older
//! sample in order, and holds samples of a not-yet-seen series until its record arrives.
//!
//! # Read path
//!
//! Matchers resolve to sorted series ids through the postings index; each series' chunks
//! are decoded for the requested range. [`HeadQueryable`] exposes this as a
//! [`Queryable`] for the PromQL engine, and [`Head::series_chunks`] hands whole chunks to
//! the block writer.
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

mod cache_dir;
mod mmap_chunks;
mod postings;
mod series;
mod spill;
mod symbols;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hashbrown::HashMap;
use norn_model::{
    Label, Labels, METRIC_NAME, Matcher, Queryable, Sample, SampleBudget, Series, SeriesView,
    StorageError, WriteBatch,
};
use parking_lot::{Mutex, RwLock};

use crate::block::{BlockMeta, BlockOptions, BlockWriter, chunks_from_samples};
use crate::chunkenc::{SAMPLES_PER_CHUNK, XorIterator};
use crate::error::{Result, TsdbError};
use crate::metrics::TsdbMetrics;
use crate::wal::record::{self, RefSample};
use crate::wal::{self, FsyncPolicy, ReplayResult, Wal, WalOptions};

use mmap_chunks::ChunkMapper;
use postings::MemPostings;
use series::{MemSeries, Store};
use spill::SpillLog;
use symbols::SymbolTable;

/// Number of lock shards for the series hash table and the id table (a power of two).
pub const SHARDS: usize = 256;

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

/// Why samples were not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Older than the series' last sample.
    OutOfOrder,
    /// Older than the head's lower bound (`max_t - window`).
    TooOld,
    /// Same timestamp as the last sample, different value.
    DuplicateTimestamp,
    /// The tenant has `max_series` series.
    MaxSeriesPerUser,
    /// The metric has `max_series_per_metric` series.
    MaxSeriesPerMetric,
    /// Outside the absolute bounds every layer checks ([`norn_model::sample_time_in_bounds`]).
    OutOfBounds,
}

impl RejectReason {
    /// Mimir's reason string (used as the `reason` label of discarded-samples metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "sample-out-of-order",
            RejectReason::TooOld => "sample-too-old",
            RejectReason::DuplicateTimestamp => "new-value-for-timestamp",
            RejectReason::MaxSeriesPerUser => "per_user_series_limit",
            RejectReason::MaxSeriesPerMetric => "per_metric_series_limit",
            RejectReason::OutOfBounds => "sample-out-of-bounds",
        }
    }
}

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

#[derive(Default)]
struct HashShard {
    /// Series by label hash; the common case of one series per hash.
    main: HashMap<u64, Arc<MemSeries>, IdentityHash>,
    /// Further series whose hash collides with one in `main` (practically never used).
    collisions: HashMap<u64, Vec<Arc<MemSeries>>, IdentityHash>,
}

/// The label hash is already a good 64-bit hash; hashing it again would be wasted work.
#[derive(Default, Clone, Copy)]
struct IdentityHash;

impl std::hash::BuildHasher for IdentityHash {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The same value as [`SeriesView::labels_hash`] (xxh3-64 over `name 0xff value 0xff …`),
/// computed in one shot over a reused buffer: the streaming hasher behind `labels_hash` pays
/// per call for the ~24 small pieces of a typical series, several times the one-shot cost.
fn labels_hash(sv: &SeriesView<'_>, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    for (n, v) in sv.label_bytes() {
        buf.extend_from_slice(n);
        buf.push(0xff);
        buf.extend_from_slice(v);
        buf.push(0xff);
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// Shard of a label hash: middle bits, because the hash table itself uses the low bits for
/// the bucket and the top 7 for its control bytes.
fn hash_shard(hash: u64) -> usize {
    ((hash >> 32) as usize) & (SHARDS - 1)
}

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
    symbols: SymbolTable,
    hashes: Box<[RwLock<HashShard>]>,
    /// Series by id: shard `id % SHARDS`, index `id / SHARDS`.
    ids: Box<[IdShard]>,
    postings: RwLock<MemPostings>,
    next_id: AtomicU32,
    num_series: AtomicUsize,
    /// Series per metric-name symbol, for `max_series_per_metric`.
    per_metric: Mutex<HashMap<u32, u32>>,
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

/// One shard of the id table: series `id` lives in shard `id % SHARDS` at `id / SHARDS`.
type IdShard = RwLock<Vec<Option<Arc<MemSeries>>>>;

/// Samples of a series not known yet during replay, by ref.
type Pending = std::collections::HashMap<u64, Vec<(i64, f64)>>;

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
        let mut state = ReplayState {
            pending: Pending::new(),
        };

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
            symbols: mem.symbols,
            hashes: mem.hashes,
            ids: mem.ids,
            postings: mem.postings,
            next_id: mem.next_id,
            num_series: mem.num_series,
            per_metric: mem.per_metric,
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

    fn as_mem(&self) -> HeadMemRef<'_> {
        HeadMemRef {
            symbols: &self.symbols,
            hashes: &self.hashes,
            ids: &self.ids,
            postings: &self.postings,
            next_id: &self.next_id,
            num_series: &self.num_series,
            per_metric: &self.per_metric,
        }
    }

    /// Appends a batch and returns once everything accepted is durable in the WAL (with
    /// fsync policy `always`; it blocks on fsync, so async callers should use
    /// `spawn_blocking`). Per-sample problems are reported in the outcome, not as errors;
    /// an error means the WAL failed and nothing about this batch can be promised (the head
    /// then refuses further writes with [`TsdbError::WalBroken`]).
    pub fn append(&self, batch: &WriteBatch, limits: &AppendLimits) -> Result<AppendOutcome> {
        self.ensure_wal_writable()?;
        let _gate = self.append_gate.read();
        let mut out = AppendOutcome::default();
        let mut series_rec: Vec<u8> = Vec::new();
        let mut wal_samples: Vec<RefSample> = Vec::with_capacity(batch.num_samples());
        let max_t = self.max_t.load(Ordering::Acquire);
        let min_valid = if max_t == i64::MIN {
            i64::MIN
        } else {
            max_t.saturating_sub(self.too_old_window)
        }
        .max(self.min_valid_time.load(Ordering::Acquire));
        let mut batch_min = i64::MAX;
        let mut batch_max = i64::MIN;
        let mem = self.as_mem();
        let store = self.store();
        let mut hash_buf = Vec::with_capacity(256);
        let mut start_zeros = 0usize;

        'series: for (idx, sv) in batch.iter().enumerate() {
            let samples = sv.samples();
            if samples.is_empty() {
                continue;
            }
            let hash = labels_hash(&sv, &mut hash_buf);
            let (mut too_old, mut ooo, mut dup, mut bounds) = (0usize, 0usize, 0usize, 0usize);
            // A series found here may be removed by a concurrent truncation before its lock
            // is taken (the flag is set under that lock); then it is looked up, and so
            // created, again.
            loop {
                let series = match mem.get(hash, &sv) {
                    Some(s) => s,
                    None => match mem.create(hash, &sv, limits) {
                        Ok((s, created)) => {
                            if created {
                                out.series_created += 1;
                                if series_rec.is_empty() {
                                    record::begin_series(&mut series_rec);
                                }
                                record::push_series(
                                    &mut series_rec,
                                    u64::from(s.id),
                                    sv.label_bytes(),
                                );
                            }
                            s
                        }
                        Err(reason) => {
                            out.rejected.push(Rejection {
                                series_index: idx,
                                reason,
                                samples: samples.len(),
                            });
                            continue 'series;
                        }
                    },
                };
                let mut st = series.state.lock();
                if st.is_removed() {
                    continue;
                }
                let mut last = st.last();
                // Created-timestamp zero ingestion, as Prometheus does it: a 0 at the series'
                // start time when that is before its first sample here and newer than what is
                // stored (so a counter's increase from its start is visible); otherwise it is
                // skipped silently — never an out-of-order refusal — and it is never counted
                // as an appended sample.
                if let Some(ct) = sv.start_timestamp()
                    && norn_model::sample_time_in_bounds(ct)
                    && ct < samples[0].t
                    && ct >= min_valid
                    && last.is_none_or(|(lt, _)| ct > lt)
                {
                    st.append(series.id, ct, 0.0, store);
                    last = Some((ct, 0.0f64.to_bits()));
                    wal_samples.push(RefSample {
                        series: u64::from(series.id),
                        t: ct,
                        v: 0.0,
                    });
                    start_zeros += 1;
                    batch_min = batch_min.min(ct);
                    batch_max = batch_max.max(ct);
                }
                for s in samples {
                    if !norn_model::sample_time_in_bounds(s.t) {
                        bounds += 1;
                        continue;
                    }
                    if s.t < min_valid {
                        too_old += 1;
                        continue;
                    }
                    if let Some((lt, lv)) = last {
                        if s.t < lt {
                            ooo += 1;
                            continue;
                        }
                        if s.t == lt {
                            if s.v.to_bits() != lv {
                                dup += 1;
                            }
                            continue;
                        }
                    }
                    st.append(series.id, s.t, s.v, store);
                    last = Some((s.t, s.v.to_bits()));
                    wal_samples.push(RefSample {
                        series: u64::from(series.id),
                        t: s.t,
                        v: s.v,
                    });
                    batch_min = batch_min.min(s.t);
                    batch_max = batch_max.max(s.t);
                }
                break;
            }
            for (reason, n) in [
                (RejectReason::TooOld, too_old),
                (RejectReason::OutOfOrder, ooo),
                (RejectReason::DuplicateTimestamp, dup),
                (RejectReason::OutOfBounds, bounds),
            ] {
                if n > 0 {
                    out.rejected.push(Rejection {
                        series_index: idx,
                        reason,
                        samples: n,
                    });
                }
            }
        }

        out.appended = wal_samples.len() - start_zeros;
        let mut samples_rec = Vec::new();
        if !wal_samples.is_empty() {
            record::encode_samples(&mut samples_rec, &wal_samples);
        }
        let recs: Vec<&[u8]> = [&series_rec[..], &samples_rec[..]]
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect();
        if let Err(e) = self.wal.log(&recs) {
            self.wal_relog.store(true, Ordering::Release);
            return Err(e);
        }

        if batch_max != i64::MIN {
            self.min_t.fetch_min(batch_min, Ordering::AcqRel);
            self.max_t.fetch_max(batch_max, Ordering::AcqRel);
        }
        self.metrics
            .head_samples_appended
            .inc_by(out.appended as u64);
        self.metrics
            .head_series_created
            .inc_by(out.series_created as u64);
        Ok(out)
    }

    /// Fails while the WAL cannot be written; after it recovered from an error, first logs
    /// every series record again (see `wal_relog`). Replay ignores a series record it has
    /// seen, and holds samples that arrive before their series' record, so neither the
    /// duplicates nor a concurrent append's samples written ahead of the records harm it.
    fn ensure_wal_writable(&self) -> Result<()> {
        if self.wal.is_broken() {
            self.wal_relog.store(true, Ordering::Release);
        }
        self.wal.check_writable()?;
        if !self.wal_relog.load(Ordering::Acquire) {
            return Ok(());
        }
        let _relog = self.relog_lock.lock();
        if !self.wal_relog.load(Ordering::Acquire) {
            return Ok(());
        }
        self.log_all_series()?;
        self.wal_relog.store(false, Ordering::Release);
        Ok(())
    }

    /// Writes a series record for every series in the head, about 1 MiB per record.
    fn log_all_series(&self) -> Result<()> {
        const RECORD_BYTES: usize = 1 << 20;
        let mut rec = Vec::new();
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        let mut logged = 0usize;
        for shard in self.ids.iter() {
            let series: Vec<Arc<MemSeries>> = shard.read().iter().flatten().cloned().collect();
            for s in series {
                if rec.is_empty() {
                    record::begin_series(&mut rec);
                }
                pairs.clear();
                pairs.extend(s.labels().chunks_exact(2).map(|p| {
                    (
                        self.symbols.get(p[0]).as_bytes(),
                        self.symbols.get(p[1]).as_bytes(),
                    )
                }));
                record::push_series(&mut rec, u64::from(s.id), pairs.iter().copied());
                logged += 1;
                if rec.len() >= RECORD_BYTES {
                    self.wal.log(&[&rec])?;
                    rec.clear();
                }
            }
        }
        if !rec.is_empty() {
            self.wal.log(&[&rec])?;
        }
        tracing::info!(
            series = logged,
            "series records logged again after a WAL write error"
        );
        Ok(())
    }

    /// Whether the head's WAL refuses writes after an I/O error it has not recovered from.
    pub fn wal_broken(&self) -> bool {
        self.wal.is_broken()
    }

    fn series_by_id(&self, id: u32) -> Option<Arc<MemSeries>> {
        self.as_mem().by_id(id)
    }

    fn labels_of(&self, s: &MemSeries) -> Labels {
        Labels::from_sorted(
            s.labels()
                .chunks_exact(2)
                .map(|p| Label::new(self.symbols.get(p[0]), self.symbols.get(p[1])))
                .collect(),
        )
    }

    fn matching(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        let ids = self.postings.read().select(&self.symbols, matchers);
        ids.into_iter()
            .filter_map(|id| self.series_by_id(id))
            .collect()
    }

    /// Series matching every matcher with their samples in `[mint, maxt]`, sorted by labels;
    /// series without samples in the range are left out.
    pub fn select(&self, mint: i64, maxt: i64, matchers: &[Matcher]) -> Vec<Series> {
        self.select_within(mint, maxt, matchers, &SampleBudget::unlimited())
    }

    /// [`select`](Self::select) that stops reading once `budget` is spent (the answer is
    /// then incomplete: the caller checks the budget).
    pub fn select_within(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Vec<Series> {
        let mut out = Vec::new();
        for s in self.matching(matchers) {
            let samples = s.state.lock().samples_for_query(mint, maxt, self.store());
            if !budget.charge(samples.len()) {
                break;
            }
            if !samples.is_empty() {
                out.push(Series {
                    labels: self.labels_of(&s),
                    samples,
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Whether `[mint, maxt]` overlaps the head's data.
    fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        match (self.min_time(), self.max_time()) {
            (Some(lo), Some(hi)) => lo <= maxt && hi >= mint,
            _ => false,
        }
    }

    /// Sorted label names of series matching `matchers` (all series when empty) with data
    /// in `[mint, maxt]`. Without matchers, every indexed name when the range overlaps the
    /// head (as Prometheus' head does).
    pub fn label_names(&self, mint: i64, maxt: i64, matchers: &[Matcher]) -> Vec<String> {
        if !self.overlaps(mint, maxt) {
            return Vec::new();
        }
        let mut syms: Vec<u32> = if matchers.is_empty() {
            self.postings.read().names().collect()
        } else {
            let mut syms = Vec::new();
            for s in self.matching(matchers) {
                if s.state.lock().overlaps(mint, maxt) {
                    syms.extend(s.labels().chunks_exact(2).map(|p| p[0]));
                }
            }
            syms
        };
        syms.sort_unstable();
        syms.dedup();
        let mut names: Vec<String> = syms
            .into_iter()
            .map(|s| self.symbols.get(s).to_string())
            .collect();
        names.sort_unstable();
        names
    }

    /// Sorted values of label `name` over series matching `matchers` with data in
    /// `[mint, maxt]`. Without matchers, every indexed value when the range overlaps.
    pub fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Vec<String> {
        if !self.overlaps(mint, maxt) {
            return Vec::new();
        }
        let Some(name_sym) = self.symbols.lookup(name) else {
            return Vec::new();
        };
        let mut syms: Vec<u32> = if matchers.is_empty() {
            self.postings.read().values(name_sym).collect()
        } else {
            let mut syms = Vec::new();
            for s in self.matching(matchers) {
                if let Some(p) = s.labels().chunks_exact(2).find(|p| p[0] == name_sym)
                    && s.state.lock().overlaps(mint, maxt)
                {
                    syms.push(p[1]);
                }
            }
            syms
        };
        syms.sort_unstable();
        syms.dedup();
        let mut values: Vec<String> = syms
            .into_iter()
            .map(|s| self.symbols.get(s).to_string())
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_unstable();
        values
    }

    /// Every series with samples in `[mint, maxt]` and its chunks overlapping that range,
    /// sorted by labels (input for the block writer). Chunks never straddle a multiple of
    /// the block range, so for an aligned range they lie entirely inside it.
    pub fn series_chunks(&self, mint: i64, maxt: i64) -> Vec<SeriesChunks> {
        let mut out = Vec::new();
        for s in self.matching(&[]) {
            let chunks: Vec<ChunkMeta> = s
                .state
                .lock()
                .chunks(mint, maxt, self.store())
                .map(|(min_t, max_t, data)| ChunkMeta {
                    min_t,
                    max_t,
                    data: data.bytes().to_vec(),
                })
                .collect();
            if !chunks.is_empty() {
                out.push(SeriesChunks {
                    labels: self.labels_of(&s),
                    chunks,
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Writes the head's data in `[mint, maxt)` as a block under `dir` (streaming series by
    /// series, so the head's chunks are never copied all at once). `None` when no series has
    /// data there. The chunk cutter never lets a chunk straddle a block-range multiple, so
    /// for an aligned range every chunk is copied as it is; a chunk reaching outside the
    /// range (a forced flush's open chunk, which appends may continue) is re-encoded with
    /// just the samples inside it, so a block never holds a sample outside its range.
    pub fn write_block(
        &self,
        dir: &std::path::Path,
        mint: i64,
        maxt: i64,
        opts: BlockOptions,
    ) -> Result<Option<BlockMeta>> {
        let last = maxt.saturating_sub(1);
        let mut series: Vec<Arc<MemSeries>> = self
            .matching(&[])
            .into_iter()
            .filter(|s| s.state.lock().overlaps(mint, last))
            .collect();
        if series.is_empty() {
            return Ok(None);
        }
        // Sort by label strings through the symbol table: materialising every series' labels
        // first would cost as much memory as the index itself.
        series.sort_by(|a, b| self.cmp_labels(a, b));
        let mut w = BlockWriter::create(dir, opts.with_range(mint, maxt))?;
        let mut chunks = Vec::new();
        for s in &series {
            chunks.clear();
            {
                let st = s.state.lock();
                for (min_t, max_t, data) in st.chunks(mint, last, self.store()) {
                    if matches!(data, series::ChunkBytes::Missing) {
                        return Err(TsdbError::Corrupt {
                            path: self.mapper.dir().to_path_buf(),
                            msg: format!("head chunk of series {} is missing", s.id),
                        });
                    }
                    if min_t >= mint && max_t < maxt {
                        chunks.push(ChunkMeta {
                            min_t,
                            max_t,
                            data: data.bytes().to_vec(),
                        });
                        continue;
                    }
                    // Only a forced flush gets here: the open chunk of an unaligned range
                    // (appends after the cut continue it). The block takes just its part.
                    let inside: Vec<Sample> = XorIterator::new(data.bytes())
                        .filter(|&(t, _)| t >= mint && t < maxt)
                        .map(|(t, v)| Sample::new(t, v))
                        .collect();
                    if !inside.is_empty() {
                        chunks.extend(chunks_from_samples(
                            &inside,
                            usize::from(SAMPLES_PER_CHUNK),
                        )?);
                    }
                }
            }
            if !chunks.is_empty() {
                w.add_series(&self.labels_of(s), &chunks)?;
            }
        }
        w.finish().map(Some)
    }

    fn cmp_labels(&self, a: &MemSeries, b: &MemSeries) -> std::cmp::Ordering {
        let pa = a.labels().chunks_exact(2);
        let pb = b.labels().chunks_exact(2);
        for (x, y) in pa.zip(pb) {
            let o = self
                .symbols
                .get(x[0])
                .cmp(self.symbols.get(y[0]))
                .then_with(|| self.symbols.get(x[1]).cmp(self.symbols.get(y[1])));
            if o.is_ne() {
                return o;
            }
        }
        a.labels().len().cmp(&b.labels().len())
    }

    /// Samples before this time are in blocks and rejected as too old.
    pub fn min_valid_time(&self) -> i64 {
        self.min_valid_time.load(Ordering::Acquire)
    }

    /// Raises `min_valid_time` to `t`; returns once no append that could still add a sample
    /// before `t` is running.
    pub fn set_min_valid_time(&self, t: i64) {
        self.min_valid_time.fetch_max(t, Ordering::AcqRel);
        drop(self.append_gate.write());
    }

    /// The oldest block-range-aligned range `[mint, maxt)` that is complete: the head's newest
    /// sample is half a range past its end, so no sample can be added to it any more (as
    /// Prometheus: compact once the head spans 1.5 block ranges). Checked arithmetic: a range
    /// that cannot be represented is never due.
    pub fn compactable_range(&self) -> Option<(i64, i64)> {
        let (lo, hi) = (self.min_time()?, self.max_time()?);
        let lo = lo.max(self.min_valid_time());
        let mint = self.range_start(lo)?;
        let maxt = mint.checked_add(self.chunk_range)?;
        (hi >= maxt.checked_add(self.chunk_range / 2)?).then_some((mint, maxt))
    }

    /// The first range a forced flush cuts: from the oldest sample still in the head to the
    /// end of its block-range-aligned range, or to right after the newest sample if that comes
    /// first. Cutting it and asking again walks the head range by range, and because the
    /// oldest sample is asked afresh each time, empty stretches between samples are skipped
    /// rather than walked.
    pub fn first_flush_range(&self) -> Option<(i64, i64)> {
        let (lo, hi) = (self.min_time()?, self.max_time()?);
        let min_valid = self.min_valid_time();
        // Right after a cut the head's bound is where the next piece starts, as long as the
        // oldest sample lies in the same aligned range (consecutive pieces stay contiguous).
        let mint = match self.range_start(lo) {
            Some(start) if (start..=lo).contains(&min_valid) => min_valid,
            _ => lo.max(min_valid),
        };
        let end = hi.saturating_add(1);
        if mint >= end {
            return None;
        }
        let aligned_end = self
            .range_start(mint)
            .and_then(|s| s.checked_add(self.chunk_range))
            .unwrap_or(i64::MAX);
        Some((mint, aligned_end.min(end)))
    }

    /// The start of the block-range-aligned range holding `t` (`None` if it does not fit in
    /// an `i64`).
    fn range_start(&self, t: i64) -> Option<i64> {
        t.div_euclid(self.chunk_range).checked_mul(self.chunk_range)
    }

    /// Cuts `[mint, maxt)` into a block under `dir`, then releases it from the head: no
    /// sample before `maxt` is accepted any more, chunks ending before it are dropped (series
    /// left empty are removed) and the WAL is checkpointed to what the head still holds.
    /// The block is durable (fsynced, renamed) before anything is dropped, so a crash at any
    /// point leaves the data in the block, the WAL, or both (replay then skips what the
    /// block holds, see [`HeadOptions::min_valid_time`]).
    ///
    /// `publish` runs once the block is durable and before the head lets go of its data:
    /// the caller makes the block queryable there, so a query never falls into a gap
    /// (for a moment both hold the data; readers merge duplicates).
    pub fn cut_block(
        &self,
        dir: &std::path::Path,
        mint: i64,
        maxt: i64,
        opts: BlockOptions,
        publish: impl FnOnce(Option<&BlockMeta>) -> Result<()>,
    ) -> Result<CutOutcome> {
        let start = Instant::now();
        let before = self.min_valid_time();
        self.set_min_valid_time(maxt);
        // Until the block is durable and published the head still owns the range: on any
        // failure the bound goes back down, so appends and the next cut see the range as
        // uncut, and nothing of it is dropped. (Cuts of one head are serialised by the caller,
        // so nothing else raised the bound meanwhile.)
        let restore = |e: TsdbError| {
            let _ = self.min_valid_time.compare_exchange(
                maxt.max(before),
                before,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            e
        };
        let meta = self.write_block(dir, mint, maxt, opts).map_err(restore)?;
        if let Err(e) = publish(meta.as_ref()) {
            // A block that was written but not published would be cut again on the retry:
            // remove it so the data is in exactly one place, the head.
            if let Some(m) = &meta {
                let written = dir.join(&m.ulid);
                if let Err(rm) = std::fs::remove_dir_all(&written) {
                    tracing::warn!(block = %written.display(), error = %rm, "cannot remove an unpublished block");
                }
            }
            return Err(restore(e));
        }
        let truncated = self.truncate(maxt);
        let checkpoint = self
            .checkpoint_wal(maxt)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "WAL checkpoint after a block cut failed; the block holds the data, the next checkpoint takes the segments");
            })
            .ok();
        Ok(CutOutcome {
            meta,
            truncated,
            checkpoint,
            duration: start.elapsed(),
        })
    }

    /// Drops every chunk that ends before `mint` and removes the series left empty; raises
    /// `min_valid_time` to `mint`. Head-chunk files holding only dropped chunks are deleted.
    pub fn truncate(&self, mint: i64) -> TruncateStats {
        self.set_min_valid_time(mint);
        let mut stats = TruncateStats::default();
        let mut removed: Vec<(u32, Box<[u32]>)> = Vec::new();
        let mut new_min = i64::MAX;
        let name_sym = self.symbols.lookup(METRIC_NAME);
        for shard in self.ids.iter() {
            let series: Vec<Arc<MemSeries>> = shard.read().iter().flatten().cloned().collect();
            for s in series {
                let mut st = s.state.lock();
                stats.chunks_removed += st.truncate(mint, self.store());
                if !st.is_empty() {
                    if let Some(t) = st.min_t() {
                        new_min = new_min.min(t);
                    }
                    continue;
                }
                // Under the series lock, so an appender holding this series sees the flag
                // once it gets the lock, and looks the series up afresh.
                st.mark_removed();
                self.remove_series(&s, name_sym);
                drop(st);
                removed.push((s.id, s.labels().into()));
            }
        }
        stats.series_removed = removed.len();
        self.postings.write().remove_all(&removed);
        self.min_t.store(new_min, Ordering::Release);
        stats.files_removed = self.mapper.truncate(mint);
        self.metrics
            .head_series_removed
            .inc_by(stats.series_removed as u64);
        tracing::debug!(
            mint,
            series_removed = stats.series_removed,
            chunks_removed = stats.chunks_removed,
            "head truncated"
        );
        stats
    }

    /// Takes a series out of the hash and id tables and the counters (postings are done in
    /// bulk by the caller).
    fn remove_series(&self, s: &Arc<MemSeries>, name_sym: Option<u32>) {
        let hash = self.labels_hash_of(s);
        {
            let mut shard = self.hashes[hash_shard(hash)].write();
            if shard.main.get(&hash).is_some_and(|m| Arc::ptr_eq(m, s)) {
                shard.main.remove(&hash);
                // Promote a colliding series, if any, into the main slot.
                let next = shard.collisions.get_mut(&hash).and_then(|list| list.pop());
                if let Some(next) = next {
                    shard.main.insert(hash, next);
                }
                if shard.collisions.get(&hash).is_some_and(|l| l.is_empty()) {
                    shard.collisions.remove(&hash);
                }
            } else if let Some(list) = shard.collisions.get_mut(&hash) {
                list.retain(|m| !Arc::ptr_eq(m, s));
                if list.is_empty() {
                    shard.collisions.remove(&hash);
                }
            }
        }
        let id = s.id as usize;
        if let Some(slot) = self.ids[id % SHARDS].write().get_mut(id / SHARDS) {
            *slot = None;
        }
        self.num_series.fetch_sub(1, Ordering::AcqRel);
        if let Some(name_sym) = name_sym
            && let Some(p) = s.labels().chunks_exact(2).find(|p| p[0] == name_sym)
        {
            let mut pm = self.per_metric.lock();
            if let Some(n) = pm.get_mut(&p[1]) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pm.remove(&p[1]);
                }
            }
        }
    }

    /// The label hash of a stored series (the same value the write path computes).
    fn labels_hash_of(&self, s: &MemSeries) -> u64 {
        norn_model::hash_label_pairs(s.labels().chunks_exact(2).map(|p| {
            (
                self.symbols.get(p[0]).as_bytes(),
                self.symbols.get(p[1]).as_bytes(),
            )
        }))
    }

    /// Number of series.
    pub fn num_series(&self) -> usize {
        self.num_series.load(Ordering::Acquire)
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

    /// Checkpoints the WAL: closes the current segment, rewrites every older one into a
    /// checkpoint keeping the series still in the head and samples at or after `mint`, and
    /// deletes the rewritten segments. For after a block covering `< mint` was cut.
    pub fn checkpoint_wal(&self, mint: i64) -> Result<wal::CheckpointStats> {
        let closed = self.wal.rotate()?;
        let mem = self.as_mem();
        self.wal.checkpoint(
            closed,
            |r| u32::try_from(r).ok().and_then(|id| mem.by_id(id)).is_some(),
            mint,
        )
    }

    /// Rough memory accounting (walks every series; for diagnostics and benchmarks).
    pub fn memory(&self) -> HeadMemory {
        let mut chunk_bytes = 0;
        for shard in self.ids.iter() {
            for s in shard.read().iter().flatten() {
                chunk_bytes += s.state.lock().heap_size();
            }
        }
        HeadMemory {
            series: self.num_series(),
            symbols: self.symbols.len(),
            symbol_bytes: self.symbols.heap_size(),
            postings_bytes: self.postings.read().heap_size(),
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

/// The parts of a head that exist before its WAL is opened (during replay).
struct HeadMem {
    chunk_range: i64,
    /// Replay drops samples before this (they are in blocks already).
    min_valid_time: i64,
    mapper: ChunkMapper,
    spill: SpillLog,
    symbols: SymbolTable,
    hashes: Box<[RwLock<HashShard>]>,
    ids: Box<[IdShard]>,
    postings: RwLock<MemPostings>,
    next_id: AtomicU32,
    num_series: AtomicUsize,
    per_metric: Mutex<HashMap<u32, u32>>,
    min_t: AtomicI64,
    max_t: AtomicI64,
}

struct ReplayState {
    pending: Pending,
}

/// Borrowed view of the series structures, shared by the write path and replay.
#[derive(Clone, Copy)]
struct HeadMemRef<'a> {
    symbols: &'a SymbolTable,
    hashes: &'a [RwLock<HashShard>],
    ids: &'a [IdShard],
    postings: &'a RwLock<MemPostings>,
    next_id: &'a AtomicU32,
    num_series: &'a AtomicUsize,
    per_metric: &'a Mutex<HashMap<u32, u32>>,
}

impl HeadMem {
    fn new(chunk_range: i64, mapper: ChunkMapper, spill: SpillLog) -> Self {
        Self {
            chunk_range,
            min_valid_time: i64::MIN,
            mapper,
            spill,
            symbols: SymbolTable::new(),
            hashes: (0..SHARDS)
                .map(|_| RwLock::new(HashShard::default()))
                .collect(),
            ids: (0..SHARDS).map(|_| RwLock::new(Vec::new())).collect(),
            postings: RwLock::new(MemPostings::default()),
            next_id: AtomicU32::new(0),
            num_series: AtomicUsize::new(0),
            per_metric: Mutex::new(HashMap::new()),
            min_t: AtomicI64::new(i64::MAX),
            max_t: AtomicI64::new(i64::MIN),
        }
    }

    fn view(&self) -> HeadMemRef<'_> {
        HeadMemRef {
            symbols: &self.symbols,
            hashes: &self.hashes,
            ids: &self.ids,
            postings: &self.postings,
            next_id: &self.next_id,
            num_series: &self.num_series,
            per_metric: &self.per_metric,
        }
    }

    fn replay_record(&self, rec: &[u8], state: &mut ReplayState, stats: &mut ReplayStats) {
        match record::decode(rec) {
            Ok(record::Record::Series(series)) => {
                for rs in series {
                    self.replay_series(rs, state, stats);
                }
            }
            Ok(record::Record::Samples(samples)) => {
                let mut last: Option<Arc<MemSeries>> = None;
                for s in &samples {
                    let series = match &last {
                        Some(l) if u64::from(l.id) == s.series => Some(Arc::clone(l)),
                        _ => u32::try_from(s.series)
                            .ok()
                            .and_then(|id| self.view().by_id(id)),
                    };
                    match series {
                        Some(series) => {
                            if self.replay_sample(&series, s.t, s.v) {
                                stats.samples += 1;
                            }
                            last = Some(series);
                        }
                        None => state.pending.entry(s.series).or_default().push((s.t, s.v)),
                    }
                }
            }
            Ok(record::Record::Unknown(_)) => {}
            Err(e) => {
                stats.bad_records += 1;
                tracing::warn!(error = %e, "skipping undecodable WAL record");
            }
        }
    }

    fn replay_series(
        &self,
        rs: record::RefSeries,
        state: &mut ReplayState,
        stats: &mut ReplayStats,
    ) {
        let Ok(id) = u32::try_from(rs.series) else {
            stats.bad_records += 1;
            return;
        };
        let mem = self.view();
        if mem.by_id(id).is_some() {
            return;
        }
        let flat: Box<[u32]> = rs
            .labels
            .iter()
            .flat_map(|l| [self.symbols.intern(&l.name), self.symbols.intern(&l.value)])
            .collect();
        let series = Arc::new(MemSeries::new(id, flat));
        mem.insert(rs.labels.stable_hash(), &series);
        stats.series += 1;
        self.next_id
            .fetch_max(id.saturating_add(1), Ordering::AcqRel);
        if let Some(samples) = state.pending.remove(&rs.series) {
            for (t, v) in samples {
                if self.replay_sample(&series, t, v) {
                    stats.samples += 1;
                }
            }
        }
    }

    /// Appends a replayed sample; older ones are inserted in order (see the module docs).
    fn replay_sample(&self, series: &MemSeries, t: i64, v: f64) -> bool {
        // A WAL written before the absolute bounds existed may hold such a sample; taking it
        // back would put the head in a state no cut can handle.
        if t < self.min_valid_time || !norn_model::sample_time_in_bounds(t) {
            return false;
        }
        let store = Store {
            chunk_range: self.chunk_range,
            mapper: &self.mapper,
            spill: &self.spill,
        };
        let mut st = series.state.lock();
        let ok = match st.last() {
            Some((lt, _)) if t == lt => false,
            Some((lt, _)) if t < lt => st.insert_out_of_order(series.id, t, v, store),
            _ => {
                st.append(series.id, t, v, store);
                true
            }
        };
        if ok {
            self.min_t.fetch_min(t, Ordering::AcqRel);
            self.max_t.fetch_max(t, Ordering::AcqRel);
        }
        ok
    }
}

impl<'a> HeadMemRef<'a> {
    fn by_id(&self, id: u32) -> Option<Arc<MemSeries>> {
        let shard = self.ids[id as usize % SHARDS].read();
        shard
            .get(id as usize / SHARDS)
            .and_then(|s| s.as_ref().map(Arc::clone))
    }

    fn labels_eq(&self, s: &MemSeries, sv: &SeriesView<'_>) -> bool {
        s.labels().len() == sv.num_labels() * 2
            && s.labels()
                .chunks_exact(2)
                .zip(sv.label_bytes())
                .all(|(p, (n, v))| {
                    self.symbols.get(p[0]).as_bytes() == n && self.symbols.get(p[1]).as_bytes() == v
                })
    }

    fn find_in(&self, shard: &HashShard, hash: u64, sv: &SeriesView<'_>) -> Option<Arc<MemSeries>> {
        let s = shard.main.get(&hash)?;
        if self.labels_eq(s, sv) {
            return Some(Arc::clone(s));
        }
        shard
            .collisions
            .get(&hash)?
            .iter()
            .find(|s| self.labels_eq(s, sv))
            .map(Arc::clone)
    }

    /// The existing series with these labels.
    fn get(&self, hash: u64, sv: &SeriesView<'_>) -> Option<Arc<MemSeries>> {
        let shard = self.hashes[hash_shard(hash)].read();
        self.find_in(&shard, hash, sv)
    }

    /// Finds or creates the series; `Ok((series, true))` when this call created it.
    fn create(
        &self,
        hash: u64,
        sv: &SeriesView<'_>,
        limits: &AppendLimits,
    ) -> Result<(Arc<MemSeries>, bool), RejectReason> {
        // Cheap pre-check so a flood of series over the limit does not fill the symbol table.
        if limits.max_series > 0 && self.num_series.load(Ordering::Acquire) >= limits.max_series {
            if let Some(s) = self.get(hash, sv) {
                return Ok((s, false));
            }
            return Err(RejectReason::MaxSeriesPerUser);
        }
        // Intern before taking the shard lock: the symbol table has its own lock.
        let flat: Box<[u32]> = sv
            .labels()
            .flat_map(|(n, v)| [self.symbols.intern(n), self.symbols.intern(v)])
            .collect();
        let mut shard = self.hashes[hash_shard(hash)].write();
        if let Some(s) = self.find_in(&shard, hash, sv) {
            return Ok((s, false));
        }
        let reserved = self
            .num_series
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limits.max_series == 0 || n < limits.max_series).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(RejectReason::MaxSeriesPerUser);
        }
        let name = self.symbols.lookup(METRIC_NAME).and_then(|name_sym| {
            flat.chunks_exact(2)
                .find(|p| p[0] == name_sym)
                .map(|p| p[1])
        });
        if let Some(name) = name {
            let mut pm = self.per_metric.lock();
            let n = pm.entry(name).or_insert(0);
            if limits.max_series_per_metric > 0 && *n as usize >= limits.max_series_per_metric {
                drop(pm);
                self.num_series.fetch_sub(1, Ordering::AcqRel);
                return Err(RejectReason::MaxSeriesPerMetric);
            }
            *n += 1;
        }
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let series = Arc::new(MemSeries::new(id, flat));
        insert_hash(&mut shard, hash, &series);
        drop(shard);
        self.insert_id_and_postings(&series);
        Ok((series, true))
    }

    /// Inserts a series built elsewhere (replay): hash table, id table, postings, counters.
    fn insert(&self, hash: u64, series: &Arc<MemSeries>) {
        insert_hash(&mut self.hashes[hash_shard(hash)].write(), hash, series);
        self.num_series.fetch_add(1, Ordering::AcqRel);
        if let Some(name_sym) = self.symbols.lookup(METRIC_NAME)
            && let Some(p) = series.labels().chunks_exact(2).find(|p| p[0] == name_sym)
        {
            *self.per_metric.lock().entry(p[1]).or_insert(0) += 1;
        }
        self.insert_id_and_postings(series);
    }

    fn insert_id_and_postings(&self, series: &Arc<MemSeries>) {
        let id = series.id as usize;
        {
            let mut shard = self.ids[id % SHARDS].write();
            let idx = id / SHARDS;
            if shard.len() <= idx {
                shard.resize(idx + 1, None);
            }
            shard[idx] = Some(Arc::clone(series));
        }
        self.postings.write().add(series.id, series.labels());
    }
}

fn insert_hash(shard: &mut HashShard, hash: u64, series: &Arc<MemSeries>) {
    if shard.main.contains_key(&hash) {
        shard
            .collisions
            .entry(hash)
            .or_default()
            .push(Arc::clone(series));
    } else {
        shard.main.insert(hash, Arc::clone(series));
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        if let Err(e) = self.wal.close() {
            tracing::error!(error = %e, "closing head WAL failed");
        }
    }
}

/// A head as a PromQL [`Queryable`].
#[derive(Debug, Clone)]
pub struct HeadQueryable(pub Arc<Head>);

#[async_trait]
impl Queryable for HeadQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        Ok(self.0.select(start_ms, end_ms, matchers))
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let got = self.0.select_within(start_ms, end_ms, matchers, budget);
        budget.check()?;
        Ok(got)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Ok(self.0.label_names(start_ms, end_ms, matchers))
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Ok(self.0.label_values(name, start_ms, end_ms, matchers))
    }
}

#[cfg(test)]
mod start_zero_tests;
#[cfg(test)]
mod tests;
