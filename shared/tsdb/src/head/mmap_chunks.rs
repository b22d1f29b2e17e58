//! Completed head chunks written to `chunks_head/` and read back through memory maps, so the
//! head keeps only each series' open chunk on the heap.
//!
//! The files use Prometheus' head-chunk format (spec §9): an 8-byte header (magic
//! `0x0130BC91`, version 1, 3 zero bytes), then chunks of
//! `series_ref u64 | mint i64 | maxt i64 | encoding u8 | len uvarint | data | crc32c u32`, the
//! CRC covering everything before it. A chunk ref is `file_number << 32 | offset`, with
//! 1-based 6-digit file names `000001`, `000002`, ….
//!
//! Chunks are written with `pwrite`, not through the mapping: pages the kernel holds for the
//! file only count against the process once a query touches them, which is what keeps the
//! resident size per series small. Each file is sized to its maximum up front (a sparse
//! file) so the whole mapping is valid, and trimmed when it is finished.
//!
//! A chunk that cannot be written (disk full, I/O error) is kept in memory under a ref with
//! file number `u32::MAX`, so a failing disk costs memory, never samples.
//!
//! The directory is a cache: the WAL holds every sample, and opening a head wipes
//! `chunks_head/` and rebuilds it while replaying. (Reusing it on start-up, as Prometheus
//! does to replay faster, is a later optimisation.)

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};

use super::cache_dir::{self, MemoryFallback, file_path};
use crate::chunkenc::{ENCODING_XOR, put_uvarint};
use crate::error::{Result, TsdbError};

/// Magic number of head chunk files.
const MAGIC: u32 = 0x0130_BC91;
const HEADER_SIZE: u64 = 8;
/// Maximum size of one file (Prometheus uses the same).
pub(crate) const MAX_FILE_SIZE: u64 = 128 << 20;
/// Fixed part of a chunk record: ref, mint, maxt, encoding.
const CHUNK_META: usize = 8 + 8 + 8 + 1;

struct Writer {
    file: Option<File>,
    number: u32,
    offset: u64,
    buf: Vec<u8>,
    /// Newest sample time in each file (by number - 1), to know when a file is obsolete.
    max_t: Vec<i64>,
}

/// Writes completed chunks to `chunks_head/` and reads them back by ref.
pub(crate) struct ChunkMapper {
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// Mappings by file number - 1.
    maps: RwLock<Vec<Option<Arc<Mmap>>>>,
    /// Chunks that could not be written: (max time, bytes).
    memory: MemoryFallback<(i64, Arc<[u8]>)>,
}

/// A chunk's bytes inside a mapped file (or in memory).
pub(crate) enum MappedChunk {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        end: usize,
    },
    Memory(Arc<[u8]>),
}

impl MappedChunk {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            MappedChunk::Mapped { map, start, end } => &map[*start..*end],
            MappedChunk::Memory(b) => b,
        }
    }
}

impl ChunkMapper {
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
                max_t: Vec::new(),
            }),
            maps: RwLock::new(Vec::new()),
            memory: MemoryFallback::new("chunks_head"),
        })
    }

    fn start_file(&self, w: &mut Writer) -> Result<()> {
        if let Some(old) = w.file.take() {
            // Trim the sparse tail; the mapping of the old file stays valid for what it holds.
            old.set_len(w.offset)
                .map_err(|e| TsdbError::io(file_path(&self.dir, w.number), e))?;
        }
        let number = w.number + 1;
        let (file, path) = cache_dir::create(&self.dir, number)?;
        file.set_len(MAX_FILE_SIZE)
            .map_err(|e| TsdbError::io(&path, e))?;
        let mut header = [0u8; HEADER_SIZE as usize];
        header[..4].copy_from_slice(&MAGIC.to_be_bytes());
        header[4] = 1;
        file.write_all_at(&header, 0)
            .map_err(|e| TsdbError::io(&path, e))?;
        // SAFETY: the file is private to this process (created here, in a directory the head
        // owns and wipes on open) and is never truncated below the bytes a ref points to
        // while the mapping exists, so the mapped memory stays valid. Bytes are only read
        // after `pwrite` returned, so readers see fully written chunks.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| TsdbError::io(&path, e))?;
        let mut maps = self.maps.write();
        let idx = number as usize - 1;
        if maps.len() <= idx {
            maps.resize(idx + 1, None);
        }
        maps[idx] = Some(Arc::new(map));
        w.file = Some(file);
        w.number = number;
        w.offset = HEADER_SIZE;
        Ok(())
    }

    /// Writes a completed chunk and returns its ref; a chunk that cannot be written is kept
    /// in memory.
    pub(crate) fn store(&self, series_ref: u64, mint: i64, maxt: i64, data: &[u8]) -> u64 {
        match self.write(series_ref, mint, maxt, data) {
            Ok(r) => {
                self.memory.wrote();
                r
            }
            Err(e) => self.memory.keep(&e, (maxt, data.into())),
        }
    }

    /// Writes a completed chunk and returns its ref.
    pub(crate) fn write(&self, series_ref: u64, mint: i64, maxt: i64, data: &[u8]) -> Result<u64> {
        let mut w = self.writer.lock();
        let w = &mut *w;
        w.buf.clear();
        w.buf.extend_from_slice(&series_ref.to_be_bytes());
        w.buf.extend_from_slice(&mint.to_be_bytes());
        w.buf.extend_from_slice(&maxt.to_be_bytes());
        w.buf.push(ENCODING_XOR);
        let mut tmp = [0u8; 10];
        let n = put_uvarint(&mut tmp, data.len() as u64);
        w.buf.extend_from_slice(&tmp[..n]);
        w.buf.extend_from_slice(data);
        let crc = crc32c::crc32c(&w.buf);
        w.buf.extend_from_slice(&crc.to_be_bytes());
        if w.file.is_none() || w.offset + w.buf.len() as u64 > MAX_FILE_SIZE {
            if w.buf.len() as u64 + HEADER_SIZE > MAX_FILE_SIZE {
                return Err(TsdbError::InvalidOption(
                    "chunk larger than a head chunk file".into(),
                ));
            }
            self.start_file(w)?;
        }
        let Some(file) = w.file.as_ref() else {
            return Err(TsdbError::Closed);
        };
        file.write_all_at(&w.buf, w.offset)
            .map_err(|e| TsdbError::io(file_path(&self.dir, w.number), e))?;
        let r = (u64::from(w.number) << 32) | w.offset;
        w.offset += w.buf.len() as u64;
        let idx = w.number as usize - 1;
        if w.max_t.len() <= idx {
            w.max_t.resize(idx + 1, i64::MIN);
        }
        w.max_t[idx] = w.max_t[idx].max(maxt);
        Ok(r)
    }

    /// Deletes files holding only chunks that end before `mint` (the head dropped those
    /// chunks). Returns how many files were deleted. The file being written counts too
    /// (after a flush emptied the head it is all garbage): it is closed, and the next chunk
    /// starts a new one, as Prometheus does.
    pub(crate) fn truncate(&self, mint: i64) -> usize {
        self.memory.retain(|_, (max_t, _)| *max_t >= mint);
        let mut w = self.writer.lock();
        let current = w.number as usize;
        if current > 0 && w.file.is_some() && w.max_t.get(current - 1).is_some_and(|&t| t < mint) {
            w.file = None;
        }
        let mut maps = self.maps.write();
        let mut n = 0;
        for (idx, &max_t) in w.max_t.iter().enumerate() {
            let number = idx as u32 + 1;
            if (number == w.number && w.file.is_some()) || max_t >= mint {
                continue;
            }
            if let Some(slot) = maps.get_mut(idx)
                && slot.take().is_some()
            {
                // Readers holding the mapping keep it valid after the unlink.
                let path = file_path(&self.dir, number);
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(error = %e, file = %path.display(), "cannot delete head chunk file");
                }
                n += 1;
            }
        }
        n
    }

    /// The data of the chunk at `r` (None for a ref this mapper never wrote).
    pub(crate) fn get(&self, r: u64) -> Option<MappedChunk> {
        if cache_dir::is_memory_ref(r) {
            return self
                .memory
                .with(r, |(_, b)| MappedChunk::Memory(Arc::clone(b)));
        }
        let number = (r >> 32) as usize;
        let offset = (r & 0xffff_ffff) as usize;
        let map = Arc::clone(self.maps.read().get(number.checked_sub(1)?)?.as_ref()?);
        let meta_end = offset.checked_add(CHUNK_META)?;
        let mut len = 0usize;
        let mut shift = 0;
        let mut pos = meta_end;
        loop {
            let b = *map.get(pos)?;
            len |= ((b & 0x7f) as usize) << shift;
            pos += 1;
            if b < 0x80 {
                break;
            }
            shift += 7;
            if shift > 35 {
                return None;
            }
        }
        let end = pos.checked_add(len)?;
        if end > map.len() {
            return None;
        }
        Some(MappedChunk::Mapped {
            map,
            start: pos,
            end,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes written so far (all files).
    #[cfg(test)]
    pub(crate) fn written(&self) -> u64 {
        let w = self.writer.lock();
        u64::from(w.number.saturating_sub(1)) * MAX_FILE_SIZE + w.offset
    }
}

impl Drop for ChunkMapper {
    fn drop(&mut self) {
        let w = self.writer.get_mut();
        if let Some(f) = w.file.take() {
            // Trim the sparse tail so the directory does not look 128 MiB large.
            let _ = f.set_len(w.offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read_back_in_prometheus_layout() {
        let dir = tempfile::tempdir().unwrap();
        let m = ChunkMapper::open(dir.path().join("chunks_head")).unwrap();
        let r1 = m.write(7, 1000, 3000, b"\x00\x03abc").unwrap();
        let r2 = m.write(8, 5, 6, b"xy").unwrap();
        assert_eq!(r1, (1 << 32) | 8);
        assert_eq!(m.get(r1).unwrap().bytes(), b"\x00\x03abc");
        assert_eq!(m.get(r2).unwrap().bytes(), b"xy");
        assert!(m.get(5 << 32).is_none());
        // The current file is kept while it holds a live chunk…
        assert_eq!(m.truncate(i64::MIN + 1), 0);
        assert_eq!(m.written(), 8 + (25 + 1 + 5 + 4) + (25 + 1 + 2 + 4));
        drop(m);
        let data = fs::read(dir.path().join("chunks_head/000001")).unwrap();
        assert_eq!(&data[..8], &[0x01, 0x30, 0xBC, 0x91, 1, 0, 0, 0]);
        assert_eq!(data.len(), 8 + 35 + 32);
        let rec = &data[8..8 + 35];
        assert_eq!(&rec[..8], &7u64.to_be_bytes());
        assert_eq!(rec[24], 1);
        assert_eq!(rec[25], 5);
        assert_eq!(&rec[31..], &crc32c::crc32c(&rec[..31]).to_be_bytes());
    }

    #[test]
    fn an_all_obsolete_current_file_is_deleted_and_writing_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let m = ChunkMapper::open(dir.path().join("chunks_head")).unwrap();
        let r1 = m.write(1, 0, 100, b"ab").unwrap();
        assert_eq!(m.truncate(50), 0, "a live chunk keeps the file");
        assert_eq!(m.truncate(101), 1);
        assert!(!dir.path().join("chunks_head/000001").exists());
        assert!(m.get(r1).is_none());
        let r2 = m.write(2, 200, 300, b"cd").unwrap();
        assert_eq!(r2 >> 32, 2, "a new file");
        assert_eq!(m.get(r2).unwrap().bytes(), b"cd");
    }

    #[test]
    fn chunks_that_cannot_be_written_stay_in_memory_until_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let m = ChunkMapper::open(dir.path().join("chunks_head")).unwrap();
        fs::remove_dir_all(m.dir()).unwrap();
        let r = m.store(1, 0, 100, b"\x00\x01xyz");
        assert!(cache_dir::is_memory_ref(r));
        assert_eq!(m.get(r).unwrap().bytes(), b"\x00\x01xyz");
        m.truncate(100);
        assert!(m.get(r).is_some());
        m.truncate(101);
        assert!(m.get(r).is_none());
    }
}
