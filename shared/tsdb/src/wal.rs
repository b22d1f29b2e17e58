//! The write-ahead log: every sample a head accepts is here, durable, before the write is
//! acknowledged, and replaying it after a crash rebuilds the head.
//!
//! # On-disk format
//!
//! The layout is Prometheus' `wlog` (spec `tsdb-format.md` §10), so Prometheus' own tools can
//! read our WAL and we could read theirs:
//!
//! * A WAL is a directory of segment files named with 8 digits, `00000000`, `00000001`, …,
//!   each at most [`WalOptions::segment_size`] (default 128 MiB, a multiple of 32 KiB). No
//!   file header. Every open starts a new segment; records never cross segments.
//! * A segment is a sequence of 32 KiB pages holding fragments:
//!   `type u8 | len u16 BE | crc32c u32 BE (of the payload) | payload[len]`. Type bits 0–2:
//!   1 full, 2 first, 3 middle, 4 last (a record too large for the rest of the page is split
//!   into first/middle*/last); bit 3 (0x08) = payload is snappy (block format). A fragment
//!   header never straddles a page: when fewer than 7 bytes remain, the page is zero-filled.
//!   Type 0 means "rest of the page is zeros".
//! * A record is compressed as a whole with snappy (kept raw if that does not shrink it),
//!   then framed. Payloads are defined in [`record`]: series (ref → labels) and samples
//!   (ref, t, v, delta-encoded).
//!
//! # Durability and fsync policy
//!
//! [`Wal::log`] writes its records to the segment file with one `write` while holding the
//! writer lock, which fixes their order. Then, under [`FsyncPolicy::Always`] (the default),
//! it waits for an `fdatasync` covering them: group commit. Whoever takes the sync lock first
//! syncs everything written so far; appenders that queued behind it find their records
//! already covered and return without another fsync. So concurrent appenders share fsyncs
//! and `log` returns only once its records are on stable storage. A segment is fsynced when
//! it is closed, and the directory when a segment is created.
//!
//! [`FsyncPolicy::Never`] still writes every record to the kernel before returning, so an
//! ingester *process* crash loses nothing, but leaves flushing to the OS: a machine crash
//! can lose the last ~30 s (the kernel's writeback interval). Use it only with replication.
//!
//! # Replay and repair
//!
//! [`replay`] reads all segments in order. At the first torn or corrupt fragment (short
//! header or payload, bad CRC, bad fragment sequence, undecompressible payload, non-zero
//! padding) it logs a warning with the segment and offset, truncates that segment at the end
//! of the last intact record, deletes every later segment and reports it in
//! [`ReplayResult`]. Starting up is never refused because of a bad tail.
//!
//! # Truncation
//!
//! When the head has been cut into a block, the segments that only hold older data can go.
//! Their series records are still needed for series that live on, so [`Wal::checkpoint`]
//! first rewrites segments `..=n` into `checkpoint.n/` (Prometheus' layout: a directory of
//! segments in the same format) keeping only live series and samples at or after a given
//! time, then deletes the segments. Replay reads the newest checkpoint, then the segments
//! after it. [`Wal::segments`], [`Wal::rotate`] and [`Wal::truncate_before`] are the
//! lower-level hooks.

mod checkpoint;
mod framing;
pub mod record;
mod replay;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Result, TsdbError};
use crate::fault;
use crate::metrics::TsdbMetrics;

pub use checkpoint::{CheckpointStats, list_checkpoints};
pub use framing::PAGE_SIZE;
pub use replay::{ReplayResult, replay};

/// How often a broken WAL tries to recover: once per this interval at most, whatever the
/// write rate, so a full disk costs one failed segment creation a second, not one per push.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// Default maximum segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 << 20;

/// When the WAL calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Group-commit fsync before [`Wal::log`] returns (default).
    #[default]
    Always,
    /// Never fsync while writing; the OS flushes. Survives process crashes, not machine
    /// crashes.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = TsdbError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(TsdbError::InvalidOption(format!(
                "fsync policy must be always or never, got {other:?}"
            ))),
        }
    }
}

/// WAL settings.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Maximum segment size; rounded up to a multiple of 32 KiB, at least 64 KiB.
    pub segment_size: u64,
    pub fsync: FsyncPolicy,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// An open WAL, appending to its newest segment.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    writer: Mutex<Writer>,
    /// Highest write sequence number known to be on stable storage.
    synced: Mutex<u64>,
    broken: AtomicBool,
    /// When the last recovery was tried (ms since `created`), for [`RECOVERY_INTERVAL`].
    last_recovery_ms: AtomicI64,
    created: Instant,
    /// Mirrors `Writer::closed` for lock-free checks.
    closed: AtomicBool,
    metrics: Arc<TsdbMetrics>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .finish()
    }
}

struct Writer {
    file: Arc<File>,
    segment: u32,
    /// Bytes used in the current page.
    page_alloc: usize,
    /// Completed pages in the current segment.
    done_pages: usize,
    /// Number of `log` calls written so far.
    seq: u64,
    /// Bytes of the current segment written without error: always the end of a whole record
    /// (only complete records are ever flushed), so cutting the file back to it removes a
    /// failed write without touching what came before.
    good_len: u64,
    out: Vec<u8>,
    comp: Vec<u8>,
    encoder: snap::raw::Encoder,
    closed: bool,
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TsdbError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| TsdbError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 8
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = name.parse::<u32>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TsdbError::io(dir, e))
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing) and starts a new segment after the
    /// existing ones. Replay ([`replay`]) first if the data matters.
    pub fn open(
        dir: impl Into<PathBuf>,
        opts: WalOptions,
        metrics: Arc<TsdbMetrics>,
    ) -> Result<Wal> {
        let dir = dir.into();
        let mut opts = opts;
        let page = PAGE_SIZE as u64;
        opts.segment_size = opts.segment_size.max(2 * page).div_ceil(page) * page;
        fs::create_dir_all(&dir).map_err(|e| TsdbError::io(&dir, e))?;
        // Continue after both segments and checkpoints: replay skips segments a checkpoint
        // covers, so a new segment must never reuse such a number.
        let after_segments = list_segments(&dir)?.last().map_or(0, |n| n + 1);
        let after_checkpoints = list_checkpoints(&dir)?.last().map_or(0, |n| n + 1);
        let next = after_segments.max(after_checkpoints);
        let file = create_segment(&dir, next)?;
        Ok(Wal {
            dir,
            opts,
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                segment: next,
                page_alloc: 0,
                done_pages: 0,
                seq: 0,
                good_len: 0,
                out: Vec::new(),
                comp: Vec::new(),
                encoder: snap::raw::Encoder::new(),
                closed: false,
            }),
            synced: Mutex::new(0),
            broken: AtomicBool::new(false),
            last_recovery_ms: AtomicI64::new(i64::MIN),
            created: Instant::now(),
            closed: AtomicBool::new(false),
            metrics,
        })
    }

    /// Fails when `log` would fail because the WAL is closed or broken (lets the head refuse
    /// a write before touching memory). A broken WAL tries to recover first (at most once per
    /// [`RECOVERY_INTERVAL`]), so writes resume by themselves once the disk takes them again.
    pub fn check_writable(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            self.try_recover()?;
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(TsdbError::Closed);
        }
        Ok(())
    }

    /// Whether the WAL refuses writes after an I/O error (and has not recovered yet).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn mark_broken(&self) {
        self.metrics.wal_write_failures.inc();
        if !self.broken.swap(true, Ordering::AcqRel) {
            self.metrics.wal_broken.inc();
        }
    }

    /// Recovers a broken WAL: cuts the failed write off the current segment (so a torn
    /// record never sits in the middle of the log, where replay would stop and drop every
    /// later segment), fsyncs it and starts a new segment. Throttled to one attempt per
    /// [`RECOVERY_INTERVAL`]; until an attempt succeeds this answers
    /// [`TsdbError::WalBroken`]. What the failed write carried was never acknowledged.
    pub fn try_recover(&self) -> Result<()> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = self.created.elapsed().as_millis() as i64;
        let last = self.last_recovery_ms.load(Ordering::Acquire);
        if last != i64::MIN && now.saturating_sub(last) < RECOVERY_INTERVAL.as_millis() as i64 {
            return Err(TsdbError::WalBroken);
        }
        let mut w = self.writer.lock();
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        if w.closed {
            return Err(TsdbError::Closed);
        }
        self.last_recovery_ms.store(now, Ordering::Release);
        match self.start_fresh_segment(&mut w) {
            Ok(()) => {
                self.broken.store(false, Ordering::Release);
                self.metrics.wal_broken.dec();
                self.metrics.wal_recoveries.inc();
                tracing::info!(dir = %self.dir.display(), segment = w.segment, "WAL recovered from a write error: writing to a new segment");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "WAL still cannot be written; writes are refused until it can");
                Err(TsdbError::WalBroken)
            }
        }
    }

    fn start_fresh_segment(&self, w: &mut Writer) -> Result<()> {
        let path = segment_path(&self.dir, w.segment);
        fault::step(&path)?;
        w.file
            .set_len(w.good_len)
            .and_then(|()| w.file.sync_all())
            .map_err(|e| TsdbError::io(&path, e))?;
        w.out.clear();
        self.open_next_segment(w)
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `records` (payloads from [`record`]) in order, and returns once they are
    /// durable under the configured [`FsyncPolicy`]. After an I/O error every later call
    /// fails with [`TsdbError::WalBroken`].
    pub fn log(&self, records: &[&[u8]]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.broken.load(Ordering::Acquire) {
            return Err(TsdbError::WalBroken);
        }
        let seq = {
            let mut w = self.writer.lock();
            if w.closed {
                return Err(TsdbError::Closed);
            }
            let res = self.write_records(&mut w, records);
            if let Err(e) = res {
                self.mark_broken();
                tracing::error!(dir = %self.dir.display(), error = %e, "WAL write failed; refusing writes until a new segment can be started");
                return Err(e);
            }
            w.seq
        };
        if self.opts.fsync == FsyncPolicy::Always {
            self.wait_durable(seq)?;
        }
        Ok(())
    }

    /// Group commit: make sure write number `seq` is on stable storage.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut synced = self.synced.lock();
        if *synced >= seq {
            return Ok(());
        }
        // Everything written up to now gets covered by this one fsync.
        let (target, file, segment) = {
            let w = self.writer.lock();
            (w.seq, Arc::clone(&w.file), w.segment)
        };
        let start = Instant::now();
        let path = segment_path(&self.dir, segment);
        if let Err(e) = fault::step(&path)
            .and_then(|()| file.sync_data().map_err(|e| TsdbError::io(path.clone(), e)))
        {
            self.mark_broken();
            tracing::error!(dir = %self.dir.display(), error = %e, "WAL fsync failed; refusing writes until a new segment can be started");
            return Err(e);
        }
        self.metrics
            .wal_fsync_duration
            .observe(start.elapsed().as_secs_f64());
        *synced = target;
        Ok(())
    }

    fn write_records(&self, w: &mut Writer, records: &[&[u8]]) -> Result<()> {
        for rec in records {
            self.frame_record(w, rec)?;
        }
        self.flush_out(w)?;
        w.seq += 1;
        self.metrics
            .wal_records_written
            .inc_by(records.len() as u64);
        Ok(())
    }

    fn flush_out(&self, w: &mut Writer) -> Result<()> {
        if w.out.is_empty() {
            return Ok(());
        }
        let seg = w.segment;
        let path = segment_path(&self.dir, seg);
        if let Err(e) = fault::step(&path) {
            // A torn write, as a full disk leaves it: half the bytes made it.
            let _ = (&*w.file).write_all(&w.out[..w.out.len() / 2]);
            return Err(e);
        }
        (&*w.file)
            .write_all(&w.out)
            .map_err(|e| TsdbError::io(path, e))?;
        self.metrics.wal_bytes_written.inc_by(w.out.len() as u64);
        w.good_len += w.out.len() as u64;
        w.out.clear();
        Ok(())
    }

    /// Finishes the current segment (padded to a page, fsynced) and starts the next one.
    fn next_segment(&self, w: &mut Writer) -> Result<()> {
        if w.page_alloc > 0 {
            let pad = PAGE_SIZE - w.page_alloc;
            w.out.resize(w.out.len() + pad, 0);
        }
        self.flush_out(w)?;
        if self.opts.fsync == FsyncPolicy::Always {
            // Group commit syncs only the current file, so the old one must be durable now.
            let start = Instant::now();
            w.file
                .sync_data()
                .map_err(|e| TsdbError::io(segment_path(&self.dir, w.segment), e))?;
            self.metrics
                .wal_fsync_duration
                .observe(start.elapsed().as_secs_f64());
        }
        self.open_next_segment(w)
    }

    /// Creates the segment after the current one and writes to it from now on.
    fn open_next_segment(&self, w: &mut Writer) -> Result<()> {
        let next = w.segment + 1;
        let file = create_segment(&self.dir, next)?;
        w.file = Arc::new(file);
        w.segment = next;
        w.page_alloc = 0;
        w.done_pages = 0;
        w.good_len = 0;
        Ok(())
    }

    /// The segment currently written to.
    pub fn current_segment(&self) -> u32 {
        self.writer.lock().segment
    }

    /// Segment numbers on disk, ascending (the current one included).
    pub fn segments(&self) -> Result<Vec<u32>> {
        list_segments(&self.dir)
    }

    /// Closes the current segment and starts a new one, returning the number of the segment
    /// that was closed: everything logged so far lies in segments ≤ it. Used before cutting
    /// a block so the segments it covers can be truncated afterwards.
    pub fn rotate(&self) -> Result<u32> {
        let mut w = self.writer.lock();
        let closed = w.segment;
        self.next_segment(&mut w)
            .inspect_err(|_| self.mark_broken())?;
        Ok(closed)
    }

    /// Deletes every segment numbered below `segment` (never the current one). Returns how
    /// many were deleted.
    pub fn truncate_before(&self, segment: u32) -> Result<usize> {
        let current = self.current_segment();
        let mut n = 0;
        for s in list_segments(&self.dir)? {
            if s >= segment || s >= current {
                break;
            }
            let p = segment_path(&self.dir, s);
            fs::remove_file(&p).map_err(|e| TsdbError::io(&p, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Flushes and fsyncs; later `log` calls fail with [`TsdbError::Closed`].
    pub fn close(&self) -> Result<()> {
        let mut w = self.writer.lock();
        if w.closed {
            return Ok(());
        }
        w.closed = true;
        self.closed.store(true, Ordering::Release);
        if self.broken.swap(false, Ordering::AcqRel) {
            // What is buffered belongs to the write that failed: never flush half a record.
            self.metrics.wal_broken.dec();
            return Ok(());
        }
        self.flush_out(&mut w)?;
        w.file
            .sync_all()
            .map_err(|e| TsdbError::io(segment_path(&self.dir, w.segment), e))?;
        *self.synced.lock() = w.seq;
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, dir = %self.dir.display(), "closing WAL failed");
        }
    }
}

fn create_segment(dir: &Path, n: u32) -> Result<File> {
    let path = segment_path(dir, n);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| TsdbError::io(&path, e))?;
    // The new directory entry must survive a crash, or its records would vanish with it.
    sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests;
