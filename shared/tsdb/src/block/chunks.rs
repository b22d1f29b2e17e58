//! Chunk segment files `chunks/000001…` (spec §3).
//!
//! A segment is an 8-byte header (magic `0x85BD40DD`, version 1, 3 zero bytes) followed by
//! chunks back to back: `len uvarint` (data bytes) · `encoding u8` · data · CRC32C over the
//! encoding byte and the data. A chunk's ref is `segment_index << 32 | offset`, where the
//! index is the 0-based position of the file among the sorted numeric names (not the number
//! in the name). Every writer numbers segments 1, 2, 3… without gaps, and the reader insists
//! on it: with a file missing, the refs of later segments would land on the wrong file, at
//! offsets where valid chunks start (each segment's first chunk sits at offset 8).
//!
//! The writer cuts segments where Prometheus' `chunks.Writer.WriteChunks` cuts them (one call
//! per series, chunk sizes budgeted with a 5-byte length field), so Norn's segment files are
//! byte-identical to what Prometheus writes for the same chunks.

use std::fs;
use std::path::{Path, PathBuf};

use super::CHUNKS_DIRNAME;
use super::io::{Decbuf, FileBytes, PosWriter, crc, put_uvarint};
use crate::error::{Result, TsdbError};

/// Segment magic.
pub const MAGIC_CHUNKS: u32 = 0x85BD_40DD;
/// Segment format version.
pub const CHUNKS_FORMAT_V1: u8 = 1;
/// Header bytes before the first chunk.
pub const SEGMENT_HEADER_SIZE: u64 = 8;
/// Prometheus' default and maximum segment size: refs hold a 32-bit offset, and Prometheus
/// cuts at 512 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 512 << 20;
/// Room Prometheus reserves for the `len` field when deciding whether a chunk fits.
const MAX_LEN_FIELD: u64 = 5;

/// Name of segment `seq` (1-based): `000001`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:06}")
}

/// Writes chunks into consecutive segment files of one block.
pub struct ChunkWriter {
    dir: PathBuf,
    segment_size: u64,
    cur: Option<PosWriter>,
    /// `(file name, size)` of every finished segment.
    files: Vec<(String, u64)>,
}

impl ChunkWriter {
    /// Writes into `dir` (the block's `chunks/` directory, which must exist).
    pub fn new(dir: &Path, segment_size: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            // Any size works (a segment always takes at least one chunk); offsets must fit the
            // 32-bit half of a chunk ref.
            segment_size: segment_size.clamp(SEGMENT_HEADER_SIZE, 4 << 30),
            cur: None,
            files: Vec::new(),
        }
    }

    /// Appends one chunk and returns its ref.
    pub fn write(&mut self, encoding: u8, data: &[u8]) -> Result<u64> {
        Ok(self.write_chunks(&[(encoding, data)])?[0])
    }

    /// Appends the chunks of one series and returns their refs, cutting segments exactly
    /// where Prometheus' `chunks.Writer.WriteChunks` (called once per series by the
    /// compactor) cuts them: each chunk is *estimated* at `5 + 1 + len + 4` bytes (the
    /// longest length field), the chunks of a call are grouped into batches that fit a
    /// segment, and a segment always receives at least one chunk, however large.
    pub fn write_chunks(&mut self, chunks: &[(u8, &[u8])]) -> Result<Vec<u64>> {
        let header = SEGMENT_HEADER_SIZE;
        let cur_n = self.cur.as_ref().map_or(0, |w| w.pos);
        let mut cut_before = vec![false; chunks.len()];
        let mut batch = 0u64;
        let mut first_batch = true;
        for (i, (_, data)) in chunks.iter().enumerate() {
            let size = MAX_LEN_FIELD + 1 + data.len() as u64 + 4;
            batch += size;
            let mut cut = i != 0 && batch + header > self.segment_size;
            if first_batch && cur_n > header {
                cut = batch + cur_n > self.segment_size;
                if cut {
                    first_batch = false;
                }
            }
            if cut {
                cut_before[i] = true;
                batch = size;
            }
        }
        if self.cur.is_none() {
            self.cut()?;
        }
        let mut refs = Vec::with_capacity(chunks.len());
        for (&(encoding, data), cut) in chunks.iter().zip(cut_before) {
            if cut {
                self.cut()?;
            }
            refs.push(self.append(encoding, data)?);
        }
        Ok(refs)
    }

    /// Writes one chunk into the current segment, whatever its size.
    fn append(&mut self, encoding: u8, data: &[u8]) -> Result<u64> {
        let seg = self.files.len() as u64;
        let w = self.cur.as_mut().ok_or_else(|| {
            TsdbError::InvalidOption("chunk writer has no open segment".to_string())
        })?;
        let off = w.pos;
        if off > u64::from(u32::MAX) {
            return Err(TsdbError::InvalidOption(format!(
                "chunk offset {off} in {} does not fit a 32-bit chunk ref",
                w.path().display()
            )));
        }
        let mut head = Vec::with_capacity(6);
        put_uvarint(&mut head, data.len() as u64);
        head.push(encoding);
        w.write(&head)?;
        w.write(data)?;
        let mut c = crc32c::crc32c(&[encoding]);
        c = crc32c::crc32c_append(c, data);
        w.write(&c.to_be_bytes())?;
        Ok((seg << 32) | off)
    }

    fn cut(&mut self) -> Result<()> {
        self.finish_current()?;
        let name = segment_name(self.files.len() as u64 + 1);
        let mut w = PosWriter::create(&self.dir.join(&name))?;
        let mut header = [0u8; SEGMENT_HEADER_SIZE as usize];
        header[..4].copy_from_slice(&MAGIC_CHUNKS.to_be_bytes());
        header[4] = CHUNKS_FORMAT_V1;
        w.write(&header)?;
        self.cur = Some(w);
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some(w) = self.cur.take() {
            let name = segment_name(self.files.len() as u64 + 1);
            let size = w.finish()?;
            self.files.push((name, size));
        }
        Ok(())
    }

    /// Flushes and fsyncs the last segment; returns every segment's name and size.
    pub fn finish(mut self) -> Result<Vec<(String, u64)>> {
        self.finish_current()?;
        Ok(self.files)
    }
}

/// Total size of the chunk (`len uvarint · encoding · data · CRC`) starting at `b[0]`, once
/// its length field is there.
pub fn chunk_size(b: &[u8]) -> Option<usize> {
    let mut d = Decbuf::new(b);
    let len = usize::try_from(d.uvarint()?).ok()?;
    d.pos.checked_add(len)?.checked_add(1 + 4)
}

/// Decodes the chunk at the start of `b`, verifying its CRC; also returns its total size.
pub fn decode_chunk(b: &[u8]) -> std::result::Result<(RawChunk<'_>, usize), String> {
    let mut d = Decbuf::new(b);
    let len = d.uvarint().ok_or("truncated or malformed length")?;
    let body = usize::try_from(len)
        .ok()
        .and_then(|l| d.bytes(l.checked_add(1)?))
        .ok_or_else(|| format!("length {len} runs past the end of the segment (truncated?)"))?;
    let want = d.be32().ok_or("truncated checksum")?;
    let got = crc(body);
    if got != want {
        return Err(format!(
            "checksum mismatch: stored {want:#010x}, computed {got:#010x}"
        ));
    }
    let chunk = RawChunk {
        encoding: body[0],
        data: &body[1..],
    };
    Ok((chunk, d.pos))
}

/// Read access to a block's chunk segments.
#[derive(Debug)]
pub struct ChunkReader {
    /// The `chunks/` directory, for errors about segments that do not exist.
    dir: PathBuf,
    segments: Vec<(PathBuf, FileBytes)>,
}

/// One chunk as stored: its encoding byte and data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawChunk<'a> {
    pub encoding: u8,
    pub data: &'a [u8],
}

impl ChunkReader {
    /// Maps every numerically named file in `dir` (sorted by number) and checks headers.
    /// A missing directory is an empty reader: a block without series has no segments.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        match fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(|e| TsdbError::io(dir, e))?;
                    let name = e.file_name();
                    if let Some(n) = name.to_str().and_then(|s| s.parse::<u64>().ok()) {
                        names.push((n, e.path()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TsdbError::io(dir, e)),
        }
        names.sort();
        // Refs name a segment by its position, so a missing file would silently shift every
        // later segment onto the refs of the one before it (and every segment's first chunk
        // sits at offset 8, so CRCs would still pass). Writers number segments 1, 2, 3…
        // without gaps; anything else is a damaged block.
        for (i, (n, path)) in names.iter().enumerate() {
            let want = i as u64 + 1;
            if *n != want {
                let found: Vec<String> = names
                    .iter()
                    .map(|(_, p)| {
                        p.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect();
                let msg = if *n < want {
                    format!("duplicate chunk segment number {n} ({})", path.display())
                } else {
                    format!("chunk segment is missing (the directory holds {found:?})")
                };
                return Err(TsdbError::Corrupt {
                    path: dir.join(segment_name(want)),
                    msg,
                });
            }
        }
        let mut segments = Vec::with_capacity(names.len());
        for (_, path) in names {
            let bytes = FileBytes::open(&path)?;
            Self::check_header(&path, &bytes)?;
            segments.push((path, bytes));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            segments,
        })
    }

    /// Wraps in-memory segments (tests).
    pub fn from_segments(segments: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let dir = segments
            .first()
            .and_then(|(p, _)| p.parent())
            .map_or_else(|| PathBuf::from(CHUNKS_DIRNAME), Path::to_path_buf);
        let segments = segments
            .into_iter()
            .map(|(p, b)| {
                let b = FileBytes::Owned(b);
                Self::check_header(&p, &b).map(|()| (p, b))
            })
            .collect::<Result<_>>()?;
        Ok(Self { dir, segments })
    }

    fn check_header(path: &Path, b: &[u8]) -> Result<()> {
        let corrupt = |msg: &str| TsdbError::Corrupt {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        };
        if b.len() < SEGMENT_HEADER_SIZE as usize {
            return Err(corrupt("chunk segment shorter than its 8-byte header"));
        }
        if b[..4] != MAGIC_CHUNKS.to_be_bytes() {
            return Err(corrupt("bad chunk segment magic"));
        }
        if b[4] != CHUNKS_FORMAT_V1 {
            return Err(corrupt(&format!(
                "unsupported chunk segment version {}",
                b[4]
            )));
        }
        Ok(())
    }

    /// Number of segment files.
    pub fn num_segments(&self) -> usize {
        self.segments.len()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// Path and size of each segment, in ref order.
    pub fn segments(&self) -> impl Iterator<Item = (&Path, u64)> {
        self.segments
            .iter()
            .map(|(p, b)| (p.as_path(), b.len() as u64))
    }

    /// Reads the chunk at `r`, verifying its CRC.
    pub fn chunk(&self, r: u64) -> Result<RawChunk<'_>> {
        self.chunk_at(r).map(|(c, _)| c)
    }

    /// Reads the chunk at `r`; also returns the offset just past it (after its CRC).
    fn chunk_at(&self, r: u64) -> Result<(RawChunk<'_>, usize)> {
        let seg = (r >> 32) as usize;
        let off = (r & 0xffff_ffff) as usize;
        let Some((path, bytes)) = self.segments.get(seg) else {
            return Err(TsdbError::Corrupt {
                path: self.dir.join(segment_name(seg as u64 + 1)),
                msg: format!(
                    "chunk ref {r:#x} needs this chunk segment, but the block has only {} \
                     (file missing?)",
                    self.segments.len()
                ),
            });
        };
        let corrupt = |msg: String| TsdbError::Corrupt {
            path: path.clone(),
            msg: format!("chunk at offset {off}: {msg}"),
        };
        if off < SEGMENT_HEADER_SIZE as usize || off >= bytes.len() {
            return Err(corrupt(format!(
                "offset outside the segment ({} bytes; truncated?)",
                bytes.len()
            )));
        }
        let (chunk, n) = decode_chunk(&bytes[off..]).map_err(corrupt)?;
        Ok((chunk, off + n))
    }

    /// Walks every chunk of every segment in file order, checking each CRC; returns the
    /// number of chunks. Used by [`super::Block::verify`] to prove the files are intact
    /// even where the index does not point.
    pub fn verify_all(&self) -> Result<u64> {
        let mut n = 0;
        for (seg, (_, bytes)) in self.segments.iter().enumerate() {
            let mut off = SEGMENT_HEADER_SIZE as usize;
            while off < bytes.len() {
                let r = ((seg as u64) << 32) | off as u64;
                off = self.chunk_at(r)?.1;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The spec's worked example: the whole 32-byte `chunks/000001` of `foo{a="b"}`.
    pub(crate) const SPEC_SEGMENT: [u8; 32] = [
        0x85, 0xBD, 0x40, 0xDD, 0x01, 0x00, 0x00, 0x00, 0x12, 0x01, 0x00, 0x03, 0xD0, 0x0F, 0x3F,
        0xF0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xE8, 0x07, 0x30, 0x97, 0xFF, 0xC0, 0x79, 0x61,
        0x73, 0x68,
    ];

    #[test]
    fn spec_segment_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path(), DEFAULT_SEGMENT_SIZE);
        let r = w.write(1, &SPEC_SEGMENT[10..28]).unwrap();
        assert_eq!(r, 8);
        let files = w.finish().unwrap();
        assert_eq!(files, vec![("000001".to_string(), 32)]);
        assert_eq!(fs::read(dir.path().join("000001")).unwrap(), SPEC_SEGMENT);

        let rd = ChunkReader::open(dir.path()).unwrap();
        let c = rd.chunk(8).unwrap();
        assert_eq!(c.encoding, 1);
        assert_eq!(c.data, &SPEC_SEGMENT[10..28]);
        assert_eq!(rd.verify_all().unwrap(), 1);
    }

    /// Segment cutting follows Prometheus' `WriteChunks`: every chunk is budgeted with the
    /// 5-byte maximum length field, so two 46-byte chunks (1-byte length) do not share a
    /// 100-byte segment even though 8 + 46 + 46 = 100 would fit, and the chunks of one call
    /// (one series) are batched against an estimated, not the actual, size.
    #[test]
    fn cuts_segments_and_refs_name_the_segment_index() {
        let data = [7u8; 40];
        // (segment size, one call for all five chunks, chunks per segment)
        let cases: [(u64, bool, &[usize]); 4] = [
            (100, false, &[1, 1, 1, 1, 1]),
            (100, true, &[1, 1, 1, 1, 1]),
            // Separate calls see the actual 46-byte chunks already written: 8 + 46·2 + 50
            // fits 150; one call budgets 8 + 50·3 > 150.
            (150, false, &[3, 2]),
            (150, true, &[2, 2, 1]),
        ];
        for (size, batched, per_segment) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut w = ChunkWriter::new(dir.path(), size);
            let refs: Vec<u64> = if batched {
                w.write_chunks(&[(1, &data[..]); 5]).unwrap()
            } else {
                (0..5).map(|_| w.write(1, &data).unwrap()).collect()
            };
            let files = w.finish().unwrap();
            let want: Vec<u64> = per_segment
                .iter()
                .enumerate()
                .flat_map(|(seg, &n)| (0..n as u64).map(move |i| (seg as u64) << 32 | (8 + 46 * i)))
                .collect();
            assert_eq!(refs, want, "size {size} batched {batched}");
            assert_eq!(files.len(), per_segment.len());
            let rd = ChunkReader::open(dir.path()).unwrap();
            for r in refs {
                assert_eq!(rd.chunk(r).unwrap().data, &data);
            }
            assert_eq!(rd.verify_all().unwrap(), 5);
        }
    }

    /// A chunk larger than the segment size gets a segment of its own, and never an empty
    /// segment before it.
    #[test]
    fn oversized_chunks_get_their_own_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path(), 64);
        let big = [1u8; 200];
        let small = [2u8; 10];
        let refs = w
            .write_chunks(&[(1, &big[..]), (1, &small[..]), (1, &small[..])])
            .unwrap();
        let files = w.finish().unwrap();
        // 8 + 20 + 20 = 48 ≤ 64 with the estimate: the two small chunks share a segment.
        assert_eq!(refs, [8, 1 << 32 | 8, 1 << 32 | 24]);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].1, 8 + 2 + 1 + 200 + 4);
    }

    #[test]
    fn damaged_segments_are_reported_not_served() {
        let seg =
            |b: Vec<u8>| ChunkReader::from_segments(vec![(PathBuf::from("chunks/000001"), b)]);
        assert!(seg(SPEC_SEGMENT[..5].to_vec()).is_err());
        let mut bad = SPEC_SEGMENT.to_vec();
        bad[0] ^= 1;
        assert!(seg(bad).unwrap_err().to_string().contains("magic"));
        for i in 8..SPEC_SEGMENT.len() {
            let mut b = SPEC_SEGMENT.to_vec();
            b[i] ^= 0x10;
            let r = seg(b).unwrap();
            assert!(r.chunk(8).is_err(), "flip at {i} went unnoticed");
        }
        let r = seg(SPEC_SEGMENT[..20].to_vec()).unwrap();
        let e = r.chunk(8).unwrap_err().to_string();
        assert!(
            e.contains("chunks/000001") && e.contains("truncated"),
            "{e}"
        );
        assert!(r.chunk(2 << 32 | 8).is_err());
        assert!(r.chunk(3).is_err());
    }
}
