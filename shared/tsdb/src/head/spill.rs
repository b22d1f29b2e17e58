//! Finished bytes of open head chunks, kept on disk in `head_spill/` so an open chunk holds
//! only its encoder state and its last few bytes on the heap.
//!
//! An XOR chunk only ever adds bits to its last byte, so every byte before the last is final
//! the moment it is written. When an open chunk's in-memory tail fills up, the head moves
//! those bytes here as a *piece* and keeps the piece's ref; each piece starts with the ref of
//! the chunk's previous piece, so a chain of pieces on disk costs the heap one ref. Reading an
//! open chunk walks its chain back to the first piece and joins the pieces with the tail.
//! When the chunk completes it is assembled once, written to `chunks_head/` like any
//! completed chunk, and its pieces are released.
//!
//! Piece layout: `prev_ref u64 LE | len u16 LE | bytes`. A ref is `file_number << 32 |
//! offset` (0 = no piece: offsets start after an 8-byte file header). A piece that cannot
//! be written (disk full, I/O error) is kept in memory under a ref with file number
//! `u32::MAX`, so a failing disk costs memory, never samples. Pieces are gathered in
//! a write buffer and written with `pwrite` when it fills, so a piece costs a copy, not a
//! system call; reads of pieces still in the buffer are served from it.
//!
//! Queries read pieces on disk through a read-only mapping of each file, so reading a head's
//! recent data costs no system call per chunk (a `pread` per piece made queries over the last
//! hour 3–6× slower), and a query that finds a chain of several pieces rewrites it as one
//! (see `HeadChunk::bytes_for_query`). The write path's reads (assembling a completing chunk,
//! which every piece goes through once, and block cuts, which read every open chunk) use
//! `pread` instead: a mapped page a read touches counts in the process' resident size until
//! the file is unmapped, and reading the whole directory that way would put it all back into
//! the resident size the spill exists to save. So only the pages queries touch become
//! resident (file-backed, reclaimable), and only until their file is deleted. A file is deleted (and unmapped) once every piece written to it is
//! released.
//!
//! Like `chunks_head/`, the directory is a cache: the WAL holds every sample, and opening a
//! head wipes it.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions};
use parking_lot::{Mutex, RwLock};

use super::cache_dir::{self, MemoryFallback, file_path};
use crate::error::{Result, TsdbError};

/// Largest file; a file is started fresh when the next piece would not fit.
const MAX_FILE_SIZE: u64 = 64 << 20;
/// `NORNSPL1`: the files are Norn's own, not a Prometheus format.
const MAGIC: &[u8; 8] = b"NORNSPL1";
const HEADER_SIZE: u64 = 8;
/// Pieces are gathered here before one `pwrite`.
const WRITE_BUFFER: usize = 256 << 10;
/// Fixed part of a piece: previous ref and length.
const PIECE_META: usize = 8 + 2;
/// Longest chain the mapped read path gathers on the stack; a longer one takes the general
/// path. A 120-sample chunk spills in about ten pieces.
const MAPPED_CHAIN: usize = 32;

struct SpillFile {
    /// `None` once deleted.
    file: Option<Arc<File>>,
    /// The whole file's extent (`MAX_FILE_SIZE`), read-only, for queries; `None` if mapping
    /// failed (reads then use `pread`) or once deleted. Only bytes below `flushed` are read
    /// through it: they are in the file, and `pwrite` and a shared mapping see one page cache.
    map: Option<Mmap>,
    /// Bytes of the file written with `pwrite` so far.
    flushed: AtomicU64,
    /// Pieces written to the file and not released yet.
    live: u64,
}

struct Writer {
    file: Option<Arc<File>>,
    number: u32,
    /// Where the next piece goes in the current file.
    offset: u64,
    /// Bytes of the current file from `flushed` on, not written yet.
    buf: Vec<u8>,
    flushed: u64,
}

/// Writes, reads and releases open-chunk pieces.
pub(crate) struct SpillLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// By file number - 1.
    files: RwLock<Vec<SpillFile>>,
    /// Pieces that could not be written: (previous ref, bytes).
    memory: MemoryFallback<(u64, Box<[u8]>)>,
}

impl SpillLog {
    /// Opens `dir`, deleting whatever an earlier run left there.
    pub(crate) fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = cache_dir::reset(dir)?;
        Ok(Self {
            dir,
            writer: Mutex::new(Writer {
                file: None,
                number: 0,
                offset: 0,
                buf: Vec::new(),
                flushed: 0,
            }),
            files: RwLock::new(Vec::new()),
            memory: MemoryFallback::new("head_spill"),
        })
    }

    fn flush(&self, w: &mut Writer) -> Result<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        let Some(file) = w.file.as_ref() else {
            return Err(TsdbError::Closed);
        };
        file.write_all_at(&w.buf, w.flushed)
            .map_err(|e| TsdbError::io(file_path(&self.dir, w.number), e))?;
        w.flushed += w.buf.len() as u64;
        w.buf.clear();
        if let Some(f) = self.files.read().get(w.number as usize - 1) {
            f.flushed.store(w.flushed, Ordering::Release);
        }
        Ok(())
    }

    fn start_file(&self, w: &mut Writer) -> Result<()> {
        self.flush(w)?;
        if w.file.take().is_some() {
            self.delete_if_unused(w.number, &mut self.files.write());
        }
        let number = w.number + 1;
        let (file, path) = cache_dir::create(&self.dir, number)?;
        file.write_all_at(MAGIC, 0)
            .map_err(|e| TsdbError::io(&path, e))?;
        // SAFETY: the file is ours (a cache directory this process wiped and owns) and only
        // ever appended to with `pwrite`; bytes are read through the map only below what was
        // written, so no access reaches past the end of the file.
        let map = unsafe { MmapOptions::new().len(MAX_FILE_SIZE as usize).map(&file) }
            .inspect_err(|e| {
                tracing::debug!(error = %e, file = %path.display(), "cannot map head spill file; queries read it with pread")
            })
            .ok();
        let file = Arc::new(file);
        let mut files = self.files.write();
        debug_assert_eq!(files.len(), number as usize - 1);
        files.push(SpillFile {
            file: Some(Arc::clone(&file)),
            map,
            flushed: AtomicU64::new(HEADER_SIZE),
            live: 0,
        });
        w.file = Some(file);
        w.number = number;
        w.offset = HEADER_SIZE;
        w.flushed = HEADER_SIZE;
        Ok(())
    }

    /// Appends `bytes` (at most 64 KiB) to the chain whose newest piece is `prev` (0 for a
    /// new chain) and returns the ref of the new piece.
    pub(crate) fn push(&self, prev: u64, bytes: &[u8]) -> u64 {
        match self.push_to_file(prev, bytes) {
            Ok(r) => {
                self.memory.wrote();
                r
            }
            Err(e) => self.memory.keep(&e, (prev, bytes.into())),
        }
    }

    fn push_to_file(&self, prev: u64, bytes: &[u8]) -> Result<u64> {
        let len = u16::try_from(bytes.len())
            .map_err(|_| TsdbError::InvalidOption("spill piece larger than 64 KiB".into()))?;
        let mut w = self.writer.lock();
        let w = &mut *w;
        let size = (PIECE_META + bytes.len()) as u64;
        if w.file.is_none() || w.offset + size > MAX_FILE_SIZE {
            self.start_file(w)?;
        }
        if w.buf.len() + size as usize > WRITE_BUFFER {
            self.flush(w)?;
        }
        if w.buf.capacity() == 0 {
            w.buf.reserve_exact(WRITE_BUFFER);
        }
        w.buf.extend_from_slice(&prev.to_le_bytes());
        w.buf.extend_from_slice(&len.to_le_bytes());
        w.buf.extend_from_slice(bytes);
        let r = (u64::from(w.number) << 32) | w.offset;
        w.offset += size;
        if let Some(f) = self.files.write().get_mut(w.number as usize - 1) {
            f.live += 1;
        }
        Ok(r)
    }

    /// Calls `f(prev_ref, bytes)` for the piece at `r`; false if there is no such piece.
    fn with_piece(&self, r: u64, f: &mut impl FnMut(u64, &[u8])) -> bool {
        let number = (r >> 32) as u32;
        let offset = r & 0xffff_ffff;
        if cache_dir::is_memory_ref(r) {
            return self
                .memory
                .with(r, |(prev, bytes)| f(*prev, bytes))
                .is_some();
        }
        {
            let w = self.writer.lock();
            if number == w.number && w.file.is_some() && offset >= w.flushed {
                let start = (offset - w.flushed) as usize;
                return match piece(&w.buf, start) {
                    Some((prev, bytes)) => {
                        f(prev, bytes);
                        true
                    }
                    None => false,
                };
            }
        }
        let file = {
            let files = self.files.read();
            match number
                .checked_sub(1)
                .and_then(|i| files.get(i as usize))
                .and_then(|f| f.file.as_ref())
            {
                Some(file) => Arc::clone(file),
                None => return false,
            }
        };
        // One read covers the usual piece (a few dozen bytes); a longer one takes a second.
        let mut head = [0u8; 128];
        let Ok(n) = read_at_most(&file, &mut head, offset) else {
            return false;
        };
        if let Some((prev, bytes)) = piece(&head[..n], 0) {
            f(prev, bytes);
            return true;
        }
        let Some(len) = head[..n]
            .get(8..PIECE_META)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        else {
            return false;
        };
        let mut body = vec![0u8; len];
        if file
            .read_exact_at(&mut body, offset + PIECE_META as u64)
            .is_err()
        {
            return false;
        }
        let prev = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        f(prev, &body);
        true
    }

    /// Appends the bytes of every piece of the chain whose newest piece is `last`, oldest
    /// first, to `out`. False if a piece could not be read (never expected). Pieces on disk
    /// are read with `pread`: for the write path (block cuts, replay), which reads every open
    /// chunk once and must not make the whole directory resident.
    pub(crate) fn read(&self, last: u64, out: &mut Vec<u8>) -> bool {
        self.walk(last, Some(out), false)
    }

    /// [`read`](Self::read) for queries: pieces on disk are read through the files'
    /// mappings. Returns how many pieces the chain has (`None` if a piece could not be read).
    pub(crate) fn read_counted(&self, last: u64, out: &mut Vec<u8>) -> Option<usize> {
        if let Some(n) = self.read_mapped(last, out) {
            return Some(n);
        }
        let mut n = 0;
        self.walk_counting(last, Some(out), false, &mut n)
            .then_some(n)
    }

    /// [`read`](Self::read) with no system call: the chain's newest pieces, if still in the
    /// write buffer, are copied from it (the writer lock is taken only then), the rest is read
    /// through the files' mappings. False, with `out` untouched, when a piece is elsewhere (in
    /// memory after a write failure, in an unmapped file) or the chain is longer than
    /// [`MAPPED_CHAIN`]: [`walk`](Self::walk) reads those.
    fn read_mapped(&self, last: u64, out: &mut Vec<u8>) -> Option<usize> {
        let mut r = last;
        // The newest pieces, newest first, copied out of the write buffer.
        let mut buffered: Vec<u8> = Vec::new();
        let mut buffered_ends = [0usize; MAPPED_CHAIN];
        let mut nb = 0;
        if r != 0 && !cache_dir::is_memory_ref(r) && !self.is_flushed(r) {
            let w = self.writer.lock();
            while r != 0 && !cache_dir::is_memory_ref(r) {
                let number = (r >> 32) as u32;
                let offset = r & 0xffff_ffff;
                if number != w.number || w.file.is_none() || offset < w.flushed {
                    break;
                }
                if nb == MAPPED_CHAIN {
                    return None;
                }
                let (prev, bytes) = piece(&w.buf, (offset - w.flushed) as usize)?;
                buffered.extend_from_slice(bytes);
                buffered_ends[nb] = buffered.len();
                nb += 1;
                r = prev;
            }
        }
        // The writer lock is released before the files lock is taken: writers take them in
        // the other order.
        let files = self.files.read();
        let mut parts: [&[u8]; MAPPED_CHAIN] = [&[]; MAPPED_CHAIN];
        let mut n = 0;
        while r != 0 {
            if n == MAPPED_CHAIN || cache_dir::is_memory_ref(r) {
                return None;
            }
            let (f, map) = mapped_file(&files, r)?;
            let flushed = (f.flushed.load(Ordering::Acquire) as usize).min(map.len());
            let (prev, bytes) = piece(&map[..flushed], (r & 0xffff_ffff) as usize)?;
            parts[n] = bytes;
            n += 1;
            r = prev;
        }
        out.reserve(parts[..n].iter().map(|p| p.len()).sum::<usize>() + buffered.len());
        for p in parts[..n].iter().rev() {
            out.extend_from_slice(p);
        }
        for i in (0..nb).rev() {
            let start = if i == 0 { 0 } else { buffered_ends[i - 1] };
            out.extend_from_slice(&buffered[start..buffered_ends[i]]);
        }
        Some(n + nb)
    }

    /// Whether the piece at `r` is in its file already (it may then be read through the map).
    fn is_flushed(&self, r: u64) -> bool {
        let files = self.files.read();
        mapped_file(&files, r)
            .is_some_and(|(f, _)| (r & 0xffff_ffff) < f.flushed.load(Ordering::Acquire))
    }

    /// [`read`](Self::read), then [`release`](Self::release), in one walk of the chain.
    pub(crate) fn take(&self, last: u64, out: &mut Vec<u8>) -> bool {
        self.walk(last, Some(out), true)
    }

    /// Releases every piece of the chain whose newest piece is `last`; files whose pieces
    /// are all released are deleted.
    pub(crate) fn release(&self, last: u64) {
        self.walk(last, None, true);
    }

    fn walk(&self, last: u64, out: Option<&mut Vec<u8>>, release: bool) -> bool {
        self.walk_counting(last, out, release, &mut 0)
    }

    fn walk_counting(
        &self,
        last: u64,
        out: Option<&mut Vec<u8>>,
        release: bool,
        pieces: &mut usize,
    ) -> bool {
        // Pieces are found newest first: gather them, then copy them out in reverse.
        let mut gathered = Vec::new();
        let mut ends = Vec::new();
        let mut refs = Vec::new();
        let keep = out.is_some();
        let mut r = last;
        let mut complete = true;
        while r != 0 {
            let mut prev = 0;
            let found = self.with_piece(r, &mut |p, bytes| {
                prev = p;
                if keep {
                    gathered.extend_from_slice(bytes);
                    ends.push(gathered.len());
                }
            });
            if !found {
                complete = false;
                break;
            }
            refs.push(r);
            r = prev;
        }
        if let Some(out) = out
            && complete
        {
            out.reserve(gathered.len());
            for i in (0..ends.len()).rev() {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                out.extend_from_slice(&gathered[start..ends[i]]);
            }
        }
        if release && !refs.is_empty() {
            self.release_refs(&refs);
        }
        *pieces = refs.len();
        complete
    }

    fn release_refs(&self, refs: &[u64]) {
        let mut w = self.writer.lock();
        let mut files = self.files.write();
        for &r in refs {
            if cache_dir::is_memory_ref(r) {
                self.memory.remove(r);
                continue;
            }
            let n = (r >> 32) as u32;
            if let Some(f) = files.get_mut(n as usize - 1) {
                f.live = f.live.saturating_sub(1);
            }
            if n != w.number {
                self.delete_if_unused(n, &mut files);
            }
        }
        // Everything in the file being written is released too (the head was truncated
        // or flushed): drop it rather than leave it on disk; the next push starts a file.
        if w.file.is_some()
            && files
                .get(w.number as usize - 1)
                .is_some_and(|f| f.live == 0)
        {
            w.file = None;
            w.buf.clear();
            self.delete_if_unused(w.number, &mut files);
        }
    }

    fn delete_if_unused(&self, number: u32, files: &mut [SpillFile]) {
        let Some(f) = files.get_mut(number as usize - 1) else {
            return;
        };
        if f.live == 0 && f.file.take().is_some() {
            f.map = None;
            // Readers holding the file keep reading it after the unlink.
            let path = file_path(&self.dir, number);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(error = %e, file = %path.display(), "cannot delete head spill file");
            }
        }
    }

    /// Files on disk now.
    pub(crate) fn files(&self) -> usize {
        self.files
            .read()
            .iter()
            .filter(|f| f.file.is_some())
            .count()
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// The file of the piece at `r` and its mapping, if it has one.
fn mapped_file(files: &[SpillFile], r: u64) -> Option<(&SpillFile, &Mmap)> {
    let f = ((r >> 32) as usize)
        .checked_sub(1)
        .and_then(|i| files.get(i))?;
    Some((f, f.map.as_ref()?))
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The piece at `start` of `data`: (previous ref, bytes).
fn piece(data: &[u8], start: usize) -> Option<(u64, &[u8])> {
    let meta = data.get(start..start.checked_add(PIECE_META)?)?;
    let prev = u64::from_le_bytes(meta[..8].try_into().ok()?);
    let len = u16::from_le_bytes(meta[8..].try_into().ok()?) as usize;
    let body = start + PIECE_META;
    Some((prev, data.get(body..body.checked_add(len)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_read_back_in_order_from_buffer_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = SpillLog::open(dir.path().join("head_spill")).unwrap();
        let mut a = 0;
        let mut b = 0;
        let mut want_a = Vec::new();
        let mut want_b = Vec::new();
        // Enough pieces to flush the write buffer several times.
        for i in 0..20_000u32 {
            let pa: Vec<u8> = (0..(i % 50) as u8 + 1).map(|x| x ^ i as u8).collect();
            a = log.push(a, &pa);
            want_a.extend_from_slice(&pa);
            if i % 3 == 0 {
                let pb = [i as u8; 7];
                b = log.push(b, &pb);
                want_b.extend_from_slice(&pb);
            }
        }
        let mut out = vec![9u8];
        assert!(log.read(a, &mut out));
        assert_eq!(out[0], 9);
        assert_eq!(&out[1..], &want_a[..]);
        let mut mapped = vec![9u8];
        assert_eq!(log.read_counted(a, &mut mapped), Some(20_000));
        assert_eq!(mapped, out);
        out.clear();
        assert!(log.read(b, &mut out));
        assert_eq!(out, want_b);
        out.clear();
        assert!(log.read(0, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn flushed_chains_are_read_through_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let log = SpillLog::open(dir.path().join("head_spill")).unwrap();
        let mut a = 0;
        let mut want = Vec::new();
        for i in 0..12u8 {
            let p = [i; 19];
            a = log.push(a, &p);
            want.extend_from_slice(&p);
        }
        // Other series' pieces push these out of the write buffer into the file.
        let mut other = 0;
        for _ in 0..(2 * WRITE_BUFFER / 1000) {
            other = log.push(other, &[0xAA; 990]);
        }
        let mut out = vec![1];
        assert_eq!(
            log.read_mapped(a, &mut out),
            Some(12),
            "no system call for flushed pieces"
        );
        assert_eq!(&out[1..], &want[..]);
        // A chain whose newest piece is still in the write buffer: that piece comes from the
        // buffer, the rest from the map.
        let c = log.push(a, b"tail");
        want.extend_from_slice(b"tail");
        out.clear();
        assert_eq!(log.read_mapped(c, &mut out), Some(13));
        assert_eq!(out, want);
        // A chain entirely in the buffer, too.
        let d = log.push(log.push(0, b"ab"), b"cd");
        out.clear();
        assert_eq!(log.read_mapped(d, &mut out), Some(2));
        assert_eq!(out, b"abcd");
        // Completing the chunk (take) still reads it whole and releases it.
        out.clear();
        assert!(log.take(c, &mut out));
        assert_eq!(out, want);
    }

    #[test]
    fn files_are_deleted_once_all_their_pieces_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let log = SpillLog::open(dir.path().join("head_spill")).unwrap();
        let big = vec![7u8; 60_000];
        let mut chains = Vec::new();
        // ~60 KB per piece: more than one file's worth.
        for _ in 0..1500 {
            chains.push(log.push(0, &big));
        }
        let files = log.files();
        assert!(files >= 2, "{files}");
        for c in &chains[..chains.len() - 1] {
            log.release(*c);
        }
        // Only the current file (still written to) remains.
        assert_eq!(log.files(), 1);
        let last = *chains.last().unwrap();
        let mut out = Vec::new();
        assert!(log.read(last, &mut out));
        assert_eq!(out, big);
        let left: Vec<_> = fs::read_dir(log.dir()).unwrap().collect();
        assert_eq!(left.len(), 1);
        // Releasing the last piece empties the directory; writing goes on in a new file.
        log.release(last);
        assert_eq!(log.files(), 0);
        assert_eq!(fs::read_dir(log.dir()).unwrap().count(), 0);
        let again = log.push(0, b"xyz");
        out.clear();
        assert!(log.read(again, &mut out));
        assert_eq!(out, b"xyz");
        assert_eq!(log.files(), 1);
    }

    #[test]
    fn pieces_that_cannot_be_written_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let log = SpillLog::open(dir.path().join("head_spill")).unwrap();
        let first = log.push(0, b"abc");
        // The directory vanishes: the next file cannot be created.
        fs::remove_dir_all(log.dir()).unwrap();
        let big = vec![1u8; 60_000];
        let mut chain = first;
        for _ in 0..1200 {
            chain = log.push(chain, &big);
        }
        assert!(log.memory.len() > 0);
        let mut out = Vec::new();
        assert!(log.read(chain, &mut out));
        assert_eq!(out.len(), 3 + 1200 * 60_000);
        assert_eq!(&out[..3], b"abc");
        log.release(chain);
        assert_eq!(log.memory.len(), 0);
    }
}
