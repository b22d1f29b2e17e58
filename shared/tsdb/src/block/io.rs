//! File plumbing shared by the block writer and reader: memory-mapped file contents,
//! a position-tracking buffered writer (the formats align sections to absolute offsets),
//! fsync helpers, and a bounds-checked decoder that turns short or malformed input into
//! `None` instead of a panic.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Result, TsdbError};
use crate::fault;

/// The bytes of a file: memory-mapped, or owned when the file is empty (mapping zero bytes
/// is not portable) or when built in memory for tests.
#[derive(Debug)]
pub enum FileBytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| TsdbError::io(path, e))?;
        let len = file.metadata().map_err(|e| TsdbError::io(path, e))?.len();
        if len == 0 {
            return Ok(FileBytes::Owned(Vec::new()));
        }
        // SAFETY: block files are immutable once the block directory has been renamed into
        // place; nothing in Norn writes to them afterwards (Prometheus makes the same
        // assumption). A file truncated underneath us by another process would fault, as in
        // Prometheus.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| TsdbError::io(path, e))?;
        Ok(FileBytes::Map(map))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Map(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// A buffered writer that knows its absolute position, for alignment and offsets.
pub struct PosWriter<W: Write = BufWriter<File>> {
    path: PathBuf,
    w: W,
    pub pos: u64,
}

impl PosWriter<Vec<u8>> {
    /// Writes into memory (unit tests, golden comparisons).
    pub fn memory() -> Self {
        Self {
            path: PathBuf::from("<memory>"),
            w: Vec::new(),
            pos: 0,
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.w
    }
}

impl PosWriter {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path) -> Result<Self> {
        fault::step(path)?;
        let f = File::create(path).map_err(|e| TsdbError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 17, f),
            pos: 0,
        })
    }

    /// Flushes and fsyncs; returns the file size.
    pub fn finish(self) -> Result<u64> {
        let path = self.path;
        fault::step(&path)?;
        let f = self
            .w
            .into_inner()
            .map_err(|e| TsdbError::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| TsdbError::io(&path, e))?;
        Ok(self.pos)
    }
}

impl<W: Write> PosWriter<W> {
    /// The file this writes, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, b: &[u8]) -> Result<()> {
        fault::step(&self.path)?;
        self.w
            .write_all(b)
            .map_err(|e| TsdbError::io(&self.path, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Zero-pads up to the next multiple of `align`.
    pub fn pad(&mut self, align: u64) -> Result<()> {
        let rem = self.pos % align;
        if rem != 0 {
            const ZEROS: [u8; 16] = [0; 16];
            self.write(&ZEROS[..(align - rem) as usize])?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` and fsyncs it.
pub fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut w = PosWriter::create(path)?;
    w.write(bytes)?;
    w.finish().map(|_| ())
}

/// Fsyncs a directory so a rename or a new entry in it is durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    fault::step(path)?;
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| TsdbError::io(path, e))
}

/// Appends Go's `PutUvarint`.
pub fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Appends Go's `PutVarint` (zigzag).
pub fn put_varint(out: &mut Vec<u8>, x: i64) {
    put_uvarint(out, ((x << 1) ^ (x >> 63)) as u64);
}

/// Appends a Go string: uvarint length + bytes.
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// CRC-32C as every block structure uses it.
pub fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// A bounds-checked cursor over bytes. Every read returns `None` when the input is short or
/// malformed; callers turn that into a `Corrupt` error naming the structure.
#[derive(Debug, Clone)]
pub struct Decbuf<'a> {
    b: &'a [u8],
    pub pos: usize,
}

impl<'a> Decbuf<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    pub fn be32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn be64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }

    /// Go `binary.Uvarint`, rejecting overlong encodings and overflow.
    pub fn uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        let mut s = 0u32;
        for i in 0..10 {
            let b = self.u8()?;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return None;
                }
                return Some(x | (u64::from(b) << s));
            }
            x |= u64::from(b & 0x7f) << s;
            s += 7;
        }
        None
    }

    pub fn varint(&mut self) -> Option<i64> {
        let ux = self.uvarint()?;
        Some(((ux >> 1) as i64) ^ -((ux & 1) as i64))
    }

    /// A Go string (uvarint length + bytes), as raw bytes.
    pub fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.uvarint()?).ok()?;
        self.bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_go() {
        let mut b = Vec::new();
        put_varint(&mut b, 1000);
        put_uvarint(&mut b, 1000);
        put_uvarint(&mut b, u64::MAX);
        assert_eq!(&b[..4], &[0xD0, 0x0F, 0xE8, 0x07]);
        let mut d = Decbuf::new(&b);
        assert_eq!(d.varint(), Some(1000));
        assert_eq!(d.uvarint(), Some(1000));
        assert_eq!(d.uvarint(), Some(u64::MAX));
        assert_eq!(d.uvarint(), None);
        // 11 continuation bytes overflow.
        assert_eq!(Decbuf::new(&[0xff; 11]).uvarint(), None);
        assert_eq!(Decbuf::new(&[0x05, b'a']).str_bytes(), None);
    }

    #[test]
    fn crc_is_castagnoli() {
        assert_eq!(crc(b""), 0);
        assert_eq!(crc(b"123456789"), 0xE306_9283);
    }
}
