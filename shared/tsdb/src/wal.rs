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

pub mod record;

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

/// How often a broken WAL tries to recover: once per this interval at most, whatever the
/// write rate, so a full disk costs one failed segment creation a second, not one per push.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// WAL page size.
pub const PAGE_SIZE: usize = 32 * 1024;
/// Fragment header size: type, length, CRC.
const HEADER_SIZE: usize = 7;
/// Default maximum segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 128 << 20;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;
const SNAPPY: u8 = 0x08;

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

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayResult {
    /// Segments read.
    pub segments: usize,
    /// Records handed to the callback.
    pub records: u64,
    /// Corrupt or torn tails repaired (0 or 1: the first one ends the replay).
    pub corruptions: u64,
    /// Bytes cut off by the repair, later segments included.
    pub truncated_bytes: u64,
    /// Later segments deleted by the repair.
    pub deleted_segments: usize,
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

    fn frame_record(&self, w: &mut Writer, rec: &[u8]) -> Result<()> {
        // Compress the whole record; keep it raw when snappy does not help.
        let mut comp = std::mem::take(&mut w.comp);
        comp.resize(snap::raw::max_compress_len(rec.len()), 0);
        let (payload, flag): (&[u8], u8) = match w.encoder.compress(rec, &mut comp) {
            Ok(n) if n < rec.len() => (&comp[..n], SNAPPY),
            _ => (rec, 0),
        };

        let pages_per_segment = (self.opts.segment_size as usize) / PAGE_SIZE;
        let left = (PAGE_SIZE - w.page_alloc - HEADER_SIZE)
            + (PAGE_SIZE - HEADER_SIZE) * pages_per_segment.saturating_sub(w.done_pages + 1);
        let segment_empty = w.done_pages == 0 && w.page_alloc == 0;
        if payload.len() > left && !segment_empty {
            let res = self.next_segment(w);
            if let Err(e) = res {
                w.comp = comp;
                return Err(e);
            }
        }

        let mut rest = payload;
        let mut i = 0;
        while i == 0 || !rest.is_empty() {
            let l = rest.len().min(PAGE_SIZE - w.page_alloc - HEADER_SIZE);
            let (part, tail) = rest.split_at(l);
            let typ = match (i == 0, tail.is_empty()) {
                (true, true) => FULL,
                (false, true) => LAST,
                (true, false) => FIRST,
                (false, false) => MIDDLE,
            } | flag;
            w.out.push(typ);
            w.out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            w.out.extend_from_slice(&crc32c::crc32c(part).to_be_bytes());
            w.out.extend_from_slice(part);
            w.page_alloc += HEADER_SIZE + part.len();
            if PAGE_SIZE - w.page_alloc < HEADER_SIZE {
                let pad = PAGE_SIZE - w.page_alloc;
                w.out.resize(w.out.len() + pad, 0);
                w.page_alloc = 0;
                w.done_pages += 1;
            }
            rest = tail;
            i += 1;
        }
        w.comp = comp;
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

/// Why a segment's tail was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Damage {
    Torn(&'static str),
    Corrupt(&'static str),
}

impl Damage {
    fn reason(&self) -> &'static str {
        match self {
            Damage::Torn(r) | Damage::Corrupt(r) => r,
        }
    }
}

/// Parses one segment's bytes, calling `f` for each complete record. Returns the offset just
/// past the last intact record and the damage found after it, if any.
fn read_segment(
    data: &[u8],
    decoder: &mut snap::raw::Decoder,
    f: &mut dyn FnMut(&[u8]),
) -> (usize, u64, Option<(usize, Damage)>) {
    let mut pos = 0usize;
    let mut good_end = 0usize;
    let mut record_start = 0usize;
    let mut records = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    let mut in_record = false;
    let mut record_flag = 0u8;
    let mut out = Vec::new();
    while pos < data.len() {
        let page_end = (pos / PAGE_SIZE + 1) * PAGE_SIZE;
        let page_left = page_end - pos;
        if page_left < HEADER_SIZE || data[pos] == 0 {
            // Page padding: must be all zeros up to the page end (or the end of the file).
            let end = page_end.min(data.len());
            if data[pos..end].iter().any(|&b| b != 0) {
                return (
                    good_end,
                    records,
                    Some((pos, Damage::Corrupt("non-zero page padding"))),
                );
            }
            pos = end;
            continue;
        }
        if pos + HEADER_SIZE > data.len() {
            return (
                good_end,
                records,
                Some((pos, Damage::Torn("short fragment header"))),
            );
        }
        let typ = data[pos];
        let kind = typ & 0x07;
        let flag = typ & SNAPPY;
        if typ & !0x0f != 0 || kind > LAST {
            return (
                good_end,
                records,
                Some((pos, Damage::Corrupt("unknown fragment type"))),
            );
        }
        let len = u16::from_be_bytes([data[pos + 1], data[pos + 2]]) as usize;
        let crc = u32::from_be_bytes([data[pos + 3], data[pos + 4], data[pos + 5], data[pos + 6]]);
        if HEADER_SIZE + len > page_left {
            return (
                good_end,
                records,
                Some((pos, Damage::Corrupt("fragment crosses a page"))),
            );
        }
        let start = pos + HEADER_SIZE;
        if start + len > data.len() {
            return (
                good_end,
                records,
                Some((pos, Damage::Torn("short fragment payload"))),
            );
        }
        let part = &data[start..start + len];
        if crc32c::crc32c(part) != crc {
            return (
                good_end,
                records,
                Some((pos, Damage::Corrupt("fragment CRC mismatch"))),
            );
        }
        match (kind, in_record) {
            (FULL | FIRST, false) => {
                record_start = pos;
                record_flag = flag;
                buf.clear();
            }
            (MIDDLE | LAST, true) if flag == record_flag => {}
            _ => {
                return (
                    good_end,
                    records,
                    Some((pos, Damage::Corrupt("bad fragment sequence"))),
                );
            }
        }
        buf.extend_from_slice(part);
        pos = start + len;
        if kind == FULL || kind == LAST {
            in_record = false;
            let rec: &[u8] = if record_flag == SNAPPY {
                let n = match snap::raw::decompress_len(&buf) {
                    Ok(n) => n,
                    Err(_) => {
                        return (
                            good_end,
                            records,
                            Some((record_start, Damage::Corrupt("bad snappy payload"))),
                        );
                    }
                };
                out.resize(n, 0);
                match decoder.decompress(&buf, &mut out) {
                    Ok(n) => &out[..n],
                    Err(_) => {
                        return (
                            good_end,
                            records,
                            Some((record_start, Damage::Corrupt("bad snappy payload"))),
                        );
                    }
                }
            } else {
                &buf
            };
            f(rec);
            records += 1;
            good_end = pos;
        } else {
            in_record = true;
        }
    }
    if in_record {
        return (
            good_end,
            records,
            Some((record_start, Damage::Torn("record cut short"))),
        );
    }
    (good_end, records, None)
}

/// Checkpoint directories (`checkpoint.NNNNNNNN`) in `dir`, ascending by the segment they
/// cover. Unfinished ones (`.tmp`) are not listed.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TsdbError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| TsdbError::io(dir, e))?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("checkpoint.")) else {
            continue;
        };
        if rest.len() == 8
            && rest.bytes().all(|b| b.is_ascii_digit())
            && let Ok(n) = rest.parse::<u32>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn checkpoint_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("checkpoint.{n:08}"))
}

/// Replays `segments` of `dir`, repairing a damaged one (truncate it, delete the later ones
/// of this list). Returns whether damage was found.
fn replay_segments(
    dir: &Path,
    segments: &[u32],
    metrics: &TsdbMetrics,
    res: &mut ReplayResult,
    f: &mut dyn FnMut(&[u8]),
) -> Result<bool> {
    let mut decoder = snap::raw::Decoder::new();
    for (i, &seg) in segments.iter().enumerate() {
        let path = segment_path(dir, seg);
        let data = fs::read(&path).map_err(|e| TsdbError::io(&path, e))?;
        res.segments += 1;
        let (good_end, records, damage) = read_segment(&data, &mut decoder, f);
        res.records += records;
        let Some((offset, damage)) = damage else {
            continue;
        };
        tracing::warn!(
            segment = %path.display(),
            offset,
            truncate_at = good_end,
            reason = damage.reason(),
            torn = matches!(damage, Damage::Torn(_)),
            "WAL tail is damaged; truncating at the last intact record"
        );
        metrics.wal_corruptions.inc();
        res.corruptions += 1;
        res.truncated_bytes += (data.len() - good_end) as u64;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| TsdbError::io(&path, e))?;
        file.set_len(good_end as u64)
            .map_err(|e| TsdbError::io(&path, e))?;
        file.sync_all().map_err(|e| TsdbError::io(&path, e))?;
        for &later in &segments[i + 1..] {
            let p = segment_path(dir, later);
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&p).map_err(|e| TsdbError::io(&p, e))?;
            tracing::warn!(segment = %p.display(), "deleted WAL segment after a damaged one");
            res.truncated_bytes += len;
            res.deleted_segments += 1;
        }
        sync_dir(dir)?;
        return Ok(true);
    }
    Ok(false)
}

/// Reads the newest checkpoint (if any) and then every later segment in `dir`, in order,
/// calling `f` with each record payload (decompressed). Repairs a damaged tail as described
/// in the module docs; a damaged checkpoint is truncated the same way and replay goes on
/// with the segments.
pub fn replay(dir: &Path, metrics: &TsdbMetrics, mut f: impl FnMut(&[u8])) -> Result<ReplayResult> {
    let mut res = ReplayResult::default();
    let mut first_segment = 0u32;
    if let Some(&cp) = list_checkpoints(dir)?.last() {
        let cp_dir = checkpoint_path(dir, cp);
        let segs = list_segments(&cp_dir)?;
        replay_segments(&cp_dir, &segs, metrics, &mut res, &mut f)?;
        first_segment = cp.saturating_add(1);
    }
    // Segments the checkpoint covers may still exist if a crash interrupted their deletion.
    let segments: Vec<u32> = list_segments(dir)?
        .into_iter()
        .filter(|&s| s >= first_segment)
        .collect();
    replay_segments(dir, &segments, metrics, &mut res, &mut f)?;
    Ok(res)
}

/// What [`Wal::checkpoint`] kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The last segment the checkpoint covers (its directory is `checkpoint.<this>`).
    pub segment: u32,
    pub series_kept: u64,
    pub series_dropped: u64,
    pub samples_kept: u64,
    pub samples_dropped: u64,
    /// Segments deleted after the checkpoint was written.
    pub segments_deleted: usize,
}

impl Wal {
    /// Compacts segments `..= upto` (and the previous checkpoint) into
    /// `checkpoint.<upto>`: series records of series for which `keep_series(ref)` holds and
    /// their samples at or after `mint`; everything else is dropped. Then deletes those
    /// segments and older checkpoints. Call [`Wal::rotate`] first so `upto` is complete;
    /// `upto` must be below the current segment. Crash-safe: the checkpoint is written to a
    /// `.tmp` directory, fsynced and renamed before anything is deleted.
    pub fn checkpoint(
        &self,
        upto: u32,
        keep_series: impl Fn(u64) -> bool,
        mint: i64,
    ) -> Result<CheckpointStats> {
        if upto >= self.current_segment() {
            return Err(TsdbError::InvalidOption(format!(
                "checkpoint must end before the current segment, got {upto}"
            )));
        }
        let mut stats = CheckpointStats {
            segment: upto,
            ..Default::default()
        };
        let prev = list_checkpoints(&self.dir)?
            .into_iter()
            .rfind(|&c| c <= upto);
        let tmp = self.dir.join(format!("checkpoint.{upto:08}.tmp"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TsdbError::io(&tmp, e))?;
        }
        {
            let out = Wal::open(
                &tmp,
                WalOptions {
                    segment_size: self.opts.segment_size,
                    fsync: FsyncPolicy::Never,
                },
                Arc::clone(&self.metrics),
            )?;
            let mut inputs: Vec<(PathBuf, Vec<u32>)> = Vec::new();
            let first = match prev {
                Some(cp) => {
                    let d = checkpoint_path(&self.dir, cp);
                    let segs = list_segments(&d)?;
                    inputs.push((d, segs));
                    cp + 1
                }
                None => 0,
            };
            let segs: Vec<u32> = list_segments(&self.dir)?
                .into_iter()
                .filter(|&s| s >= first && s <= upto)
                .collect();
            inputs.push((self.dir.clone(), segs));

            let mut decoder = snap::raw::Decoder::new();
            let mut err: Option<TsdbError> = None;
            let mut buf = Vec::new();
            for (dir, segs) in &inputs {
                for &seg in segs {
                    let path = segment_path(dir, seg);
                    let data = fs::read(&path).map_err(|e| TsdbError::io(&path, e))?;
                    let mut on_record = |rec: &[u8]| {
                        if err.is_some() {
                            return;
                        }
                        buf.clear();
                        match record::decode(rec) {
                            Ok(record::Record::Series(series)) => {
                                record::begin_series(&mut buf);
                                let before = buf.len();
                                for s in series {
                                    if keep_series(s.series) {
                                        stats.series_kept += 1;
                                        record::push_series(
                                            &mut buf,
                                            s.series,
                                            s.labels
                                                .iter()
                                                .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
                                        );
                                    } else {
                                        stats.series_dropped += 1;
                                    }
                                }
                                if buf.len() == before {
                                    buf.clear();
                                }
                            }
                            Ok(record::Record::Samples(samples)) => {
                                let kept: Vec<record::RefSample> = samples
                                    .iter()
                                    .filter(|s| s.t >= mint && keep_series(s.series))
                                    .copied()
                                    .collect();
                                stats.samples_kept += kept.len() as u64;
                                stats.samples_dropped += (samples.len() - kept.len()) as u64;
                                if !kept.is_empty() {
                                    record::encode_samples(&mut buf, &kept);
                                }
                            }
                            Ok(record::Record::Unknown(_)) | Err(_) => {}
                        }
                        if !buf.is_empty()
                            && let Err(e) = out.log(&[&buf])
                        {
                            err = Some(e);
                        }
                    };
                    let (_, _, damage) = read_segment(&data, &mut decoder, &mut on_record);
                    if let Some(e) = err.take() {
                        return Err(e);
                    }
                    if let Some((offset, damage)) = damage {
                        return Err(TsdbError::Corrupt {
                            path,
                            msg: format!("{} at offset {offset}", damage.reason()),
                        });
                    }
                }
            }
            out.close()?;
        }
        let final_dir = checkpoint_path(&self.dir, upto);
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(|e| TsdbError::io(&final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| TsdbError::io(&tmp, e))?;
        sync_dir(&self.dir)?;
        // Only now is it safe to delete what the checkpoint replaces.
        stats.segments_deleted = self.truncate_before(upto + 1)?;
        for cp in list_checkpoints(&self.dir)? {
            if cp < upto {
                let d = checkpoint_path(&self.dir, cp);
                fs::remove_dir_all(&d).map_err(|e| TsdbError::io(&d, e))?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn metrics() -> Arc<TsdbMetrics> {
        Arc::new(TsdbMetrics::unregistered())
    }

    fn read_all(dir: &Path) -> (Vec<Vec<u8>>, ReplayResult) {
        let mut got = Vec::new();
        let res = replay(dir, &metrics(), |r| got.push(r.to_vec())).unwrap();
        (got, res)
    }

    /// Records of varied size: tiny, multi-page, incompressible.
    fn sample_records() -> Vec<Vec<u8>> {
        let mut recs = vec![vec![2u8], b"hello world".to_vec(), vec![7u8; 100_000]];
        let mut x = 12345u64;
        let noise: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        recs.push(noise);
        recs.push(Vec::new());
        recs
    }

    #[test]
    fn round_trip_across_pages_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let recs = sample_records();
        {
            let wal = Wal::open(
                dir.path(),
                WalOptions {
                    segment_size: 64 * 1024,
                    fsync: FsyncPolicy::Always,
                },
                metrics(),
            )
            .unwrap();
            for r in &recs {
                wal.log(&[r]).unwrap();
            }
            assert!(wal.segments().unwrap().len() > 1);
        }
        let (got, res) = read_all(dir.path());
        assert_eq!(got, recs);
        assert_eq!(res.corruptions, 0);
        // Reopening starts a new segment and keeps the old data.
        {
            let wal = Wal::open(dir.path(), WalOptions::default(), metrics()).unwrap();
            wal.log(&[b"more"]).unwrap();
        }
        let (got, _) = read_all(dir.path());
        assert_eq!(got.len(), recs.len() + 1);
    }

    #[test]
    fn concurrent_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(dir.path(), WalOptions::default(), metrics()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    for i in 0..50u32 {
                        wal.log(&[&[t as u8, (i >> 8) as u8, i as u8]]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(wal);
        let (got, _) = read_all(dir.path());
        assert_eq!(got.len(), 200);
        for t in 0..4u8 {
            let mine: Vec<u32> = got
                .iter()
                .filter(|r| r[0] == t)
                .map(|r| (u32::from(r[1]) << 8) | u32::from(r[2]))
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>(), "per-thread order kept");
        }
    }

    #[test]
    fn truncate_before_keeps_current() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalOptions::default(), metrics()).unwrap();
        wal.log(&[b"a"]).unwrap();
        let closed = wal.rotate().unwrap();
        wal.log(&[b"b"]).unwrap();
        assert_eq!(wal.segments().unwrap(), [0, 1]);
        assert_eq!(wal.truncate_before(closed + 1).unwrap(), 1);
        assert_eq!(wal.truncate_before(100).unwrap(), 0);
        drop(wal);
        assert_eq!(read_all(dir.path()).0, [b"b".to_vec()]);
    }

    #[test]
    fn checkpoint_keeps_live_series_and_recent_samples() {
        use record::{Record, RefSample};
        let dir = tempfile::tempdir().unwrap();
        let m = metrics();
        let series_rec = |r: u64, name: &str| {
            let mut b = Vec::new();
            record::begin_series(&mut b);
            record::push_series(&mut b, r, [(&b"__name__"[..], name.as_bytes())].into_iter());
            b
        };
        let samples_rec = |s: &[(u64, i64)]| {
            let mut b = Vec::new();
            let v: Vec<RefSample> = s
                .iter()
                .map(|&(r, t)| RefSample {
                    series: r,
                    t,
                    v: 1.0,
                })
                .collect();
            record::encode_samples(&mut b, &v);
            b
        };
        let wal = Wal::open(dir.path(), WalOptions::default(), Arc::clone(&m)).unwrap();
        wal.log(&[&series_rec(1, "a"), &series_rec(2, "b")])
            .unwrap();
        wal.log(&[&samples_rec(&[(1, 10), (2, 10), (1, 20)])])
            .unwrap();
        let closed = wal.rotate().unwrap();
        wal.log(&[&samples_rec(&[(1, 30)])]).unwrap();
        let stats = wal.checkpoint(closed, |r| r == 1, 15).unwrap();
        assert_eq!(stats.series_kept, 1);
        assert_eq!(stats.samples_kept, 1);
        assert_eq!(stats.segments_deleted, 1);
        assert!(wal.checkpoint(wal.current_segment(), |_| true, 0).is_err());
        // A second checkpoint folds the first one in.
        let closed = wal.rotate().unwrap();
        wal.log(&[&samples_rec(&[(1, 40)])]).unwrap();
        wal.checkpoint(closed, |_| true, 0).unwrap();
        assert_eq!(list_checkpoints(dir.path()).unwrap(), [closed]);
        drop(wal);
        // Reopening numbers segments after the checkpoint even if none are left before it.
        let wal = Wal::open(dir.path(), WalOptions::default(), Arc::clone(&m)).unwrap();
        assert!(wal.current_segment() > closed);
        drop(wal);
        let (recs, _) = read_all(dir.path());
        let decoded: Vec<Record> = recs.iter().map(|r| record::decode(r).unwrap()).collect();
        let mut ts = Vec::new();
        let mut series = Vec::new();
        for r in decoded {
            match r {
                Record::Series(s) => series.extend(s.into_iter().map(|s| s.series)),
                Record::Samples(s) => ts.extend(s.into_iter().map(|s| (s.series, s.t))),
                Record::Unknown(_) => {}
            }
        }
        assert_eq!(series, [1]);
        assert_eq!(ts, [(1, 20), (1, 30), (1, 40)]);
    }

    fn write_wal(dir: &Path, recs: &[Vec<u8>], segment_size: u64) {
        let wal = Wal::open(
            dir,
            WalOptions {
                segment_size,
                fsync: FsyncPolicy::Never,
            },
            metrics(),
        )
        .unwrap();
        for r in recs {
            wal.log(&[r]).unwrap();
        }
    }

    /// Where each record ends (segment, file length after it).
    fn record_ends(recs: &[Vec<u8>]) -> Vec<(u32, u64)> {
        // Re-derive by writing each prefix into a fresh WAL: the framing is deterministic.
        let mut ends = Vec::new();
        for n in 1..=recs.len() {
            let d = tempfile::tempdir().unwrap();
            write_wal(d.path(), &recs[..n], 64 * 1024);
            let segs = list_segments(d.path()).unwrap();
            let last = *segs.last().unwrap();
            let len = fs::metadata(segment_path(d.path(), last)).unwrap().len();
            ends.push((last, len));
        }
        ends
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Model-based: random logs, crashes (the newest segment cut at a random point) and
        /// clean reopens. After each crash, replay returns a prefix of the model holding every
        /// record that ended before the cut; the model then becomes that prefix.
        #[test]
        fn model_based_crashes(
            ops in proptest::collection::vec(
                prop_oneof![
                    4 => proptest::collection::vec(0usize..20_000, 1..4).prop_map(Some),
                    1 => Just(None),
                ],
                1..16,
            ),
            cuts in proptest::collection::vec(0.0f64..1.0, 16),
            clean in proptest::collection::vec(any::<bool>(), 16),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let opts = WalOptions { segment_size: 64 * 1024, fsync: FsyncPolicy::Never };
            let mut wal = Some(Wal::open(dir.path(), opts.clone(), metrics()).unwrap());
            // Model: records, each with (segment, file length right after it was written).
            let mut model: Vec<(Vec<u8>, u32, u64)> = Vec::new();
            let mut n = 0u32;
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Some(sizes) => {
                        let w = wal.as_ref().unwrap();
                        for size in sizes {
                            n += 1;
                            let rec: Vec<u8> = (0..size).map(|j| (j as u32 ^ n) as u8).collect();
                            w.log(&[&rec]).unwrap();
                            let seg = w.current_segment();
                            let len = fs::metadata(segment_path(dir.path(), seg)).unwrap().len();
                            model.push((rec, seg, len));
                        }
                    }
                    None => {
                        let w = wal.take().unwrap();
                        let last = w.current_segment();
                        drop(w);
                        let intact = if clean[i] {
                            model.len()
                        } else {
                            let p = segment_path(dir.path(), last);
                            let len = fs::metadata(&p).unwrap().len();
                            let cut = (len as f64 * cuts[i]) as u64;
                            OpenOptions::new().write(true).open(&p).unwrap().set_len(cut).unwrap();
                            model.iter().filter(|(_, s, e)| *s < last || *e <= cut).count()
                        };
                        let (got, _) = read_all(dir.path());
                        prop_assert!(got.len() >= intact && got.len() <= intact + 1);
                        prop_assert!(got.len() <= model.len());
                        for (g, (m, _, _)) in got.iter().zip(&model) {
                            prop_assert_eq!(g, m);
                        }
                        model.truncate(got.len());
                        wal = Some(Wal::open(dir.path(), opts.clone(), metrics()).unwrap());
                    }
                }
            }
            drop(wal);
            let (got, res) = read_all(dir.path());
            prop_assert_eq!(res.corruptions, 0);
            let want: Vec<Vec<u8>> = model.into_iter().map(|(r, _, _)| r).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn random_records_round_trip(
            recs in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..100),
                    proptest::collection::vec(any::<u8>(), 0..70_000),
                    (0usize..100_000).prop_map(|n| vec![b'x'; n]),
                ],
                0..12,
            ),
            pages in 2u64..6,
            batched in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            {
                let wal = Wal::open(
                    dir.path(),
                    WalOptions { segment_size: pages * PAGE_SIZE as u64, fsync: FsyncPolicy::Never },
                    metrics(),
                )
                .unwrap();
                if batched {
                    let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
                    wal.log(&refs).unwrap();
                } else {
                    for r in &recs {
                        wal.log(&[r]).unwrap();
                    }
                }
            }
            let (got, res) = read_all(dir.path());
            prop_assert_eq!(res.corruptions, 0);
            prop_assert_eq!(got, recs);
        }

        #[test]
        fn damaged_tail_recovers_exactly_the_intact_prefix(
            sizes in proptest::collection::vec(prop_oneof![0usize..50, 0usize..40_000], 1..8),
            cut_frac in 0.0f64..1.0,
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<bool>(),
        ) {
            let recs: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7 % 251) as u8).collect())
                .collect();
            let dir = tempfile::tempdir().unwrap();
            write_wal(dir.path(), &recs, 64 * 1024);
            let ends = record_ends(&recs);
            // Damage the last segment: cut it somewhere, then maybe append garbage or flip a byte.
            let segs = list_segments(dir.path()).unwrap();
            let last = *segs.last().unwrap();
            let path = segment_path(dir.path(), last);
            let mut data = fs::read(&path).unwrap();
            let cut = (data.len() as f64 * cut_frac) as usize;
            if flip && cut < data.len() {
                data[cut] ^= 0x5a;
            } else {
                data.truncate(cut);
                data.extend_from_slice(&garbage);
            }
            fs::write(&path, &data).unwrap();

            let (got, res) = read_all(dir.path());
            // Whatever came back is a prefix of what was written…
            prop_assert!(got.len() <= recs.len());
            prop_assert_eq!(&got[..], &recs[..got.len()]);
            // …and every record that ends before the damage is in it.
            let damage_at = cut as u64;
            let intact = ends
                .iter()
                .filter(|&&(s, e)| s < last || (s == last && e <= damage_at))
                .count();
            prop_assert!(got.len() >= intact, "got {} intact {}", got.len(), intact);
            // A second replay sees the repaired WAL as clean and returns the same records.
            let (again, res2) = read_all(dir.path());
            prop_assert_eq!(again, got);
            prop_assert_eq!(res2.corruptions, 0);
            let _ = res;
        }
    }
}
