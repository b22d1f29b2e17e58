//! The block writer's series, spilled to a file until the index is written.
//!
//! The index starts with the symbol table of every string the series use, so a writer cannot
//! write a series entry before it has seen them all and must keep every series' label pairs
//! and chunk refs until the end. Held as `IndexSeries` values (two `Vec`s each) that was about
//! 270 bytes of memory a series of a 2h block, so a block cut's or a compaction's memory grew
//! with the tenant's series. They go instead, varint-encoded as in the index's own series
//! section (about 60-80 bytes a series), to a file beside the block's other files, which is
//! read back in order, memory-mapped, as the index is written, and then deleted. What stays in
//! memory per series is the index writer's postings work (a few bytes per label pair, for the
//! series of this one block).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::index::{ChunkRef, IndexSeries};
use super::io::{Decbuf, FileBytes, put_uvarint, put_varint};
use crate::error::{Result, TsdbError};

/// Series appended in order to a file, read back in the same order.
#[derive(Debug)]
pub struct SeriesSpill {
    path: PathBuf,
    out: BufWriter<File>,
    /// One series' encoding, reused.
    buf: Vec<u8>,
    len: usize,
    bytes: u64,
}

impl SeriesSpill {
    /// Creates (truncates) the spill file at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| TsdbError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 16, f),
            buf: Vec::with_capacity(256),
            len: 0,
            bytes: 0,
        })
    }

    /// Appends a series: label pairs as symbol ids, chunk refs in time order.
    pub fn push(&mut self, labels: &[(u32, u32)], chunks: &[ChunkRef]) -> Result<()> {
        let b = &mut self.buf;
        b.clear();
        put_uvarint(b, labels.len() as u64);
        for &(n, v) in labels {
            put_uvarint(b, u64::from(n));
            put_uvarint(b, u64::from(v));
        }
        put_uvarint(b, chunks.len() as u64);
        // Deltas against the previous chunk (from zero for the first), wrapping both ways, so
        // any i64/u64 round-trips.
        let (mut prev_max, mut prev_r) = (0i64, 0u64);
        for c in chunks {
            put_varint(b, c.min_t.wrapping_sub(prev_max));
            put_uvarint(b, c.max_t.wrapping_sub(c.min_t) as u64);
            put_varint(b, c.r.wrapping_sub(prev_r) as i64);
            (prev_max, prev_r) = (c.max_t, c.r);
        }
        self.out
            .write_all(b)
            .map_err(|e| TsdbError::io(&self.path, e))?;
        self.bytes += b.len() as u64;
        self.len += 1;
        Ok(())
    }

    /// Series pushed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends writing and maps the file to read the series back.
    pub fn into_reader(self) -> Result<SeriesSpillReader> {
        let path = self.path;
        self.out
            .into_inner()
            .map_err(|e| TsdbError::io(&path, e.into_error()))?;
        let data = FileBytes::open(&path)?;
        Ok(SeriesSpillReader { data, pos: 0 })
    }
}

/// Reads a [`SeriesSpill`] back, one series at a time into a reused [`IndexSeries`].
pub struct SeriesSpillReader {
    data: FileBytes,
    pos: usize,
}

impl SeriesSpillReader {
    /// The next series into `out` (its vectors reused); `Ok(false)` at the end. The file holds
    /// only what `push` wrote, so anything unreadable means it changed underneath: an error.
    pub fn next_into(&mut self, out: &mut IndexSeries) -> Result<bool> {
        out.labels.clear();
        out.chunks.clear();
        if self.pos >= self.data.len() {
            return Ok(false);
        }
        let mut d = Decbuf::new(&self.data);
        d.pos = self.pos;
        read_series(&mut d, out).ok_or_else(|| {
            TsdbError::InvalidOption(format!(
                "block writer: the spilled series at byte {} do not decode",
                self.pos
            ))
        })?;
        self.pos = d.pos;
        Ok(true)
    }
}

fn read_series(d: &mut Decbuf<'_>, out: &mut IndexSeries) -> Option<()> {
    let nl = usize::try_from(d.uvarint()?).ok()?;
    for _ in 0..nl {
        let n = u32::try_from(d.uvarint()?).ok()?;
        let v = u32::try_from(d.uvarint()?).ok()?;
        out.labels.push((n, v));
    }
    let nc = usize::try_from(d.uvarint()?).ok()?;
    let (mut prev_max, mut prev_r) = (0i64, 0u64);
    for _ in 0..nc {
        let min_t = prev_max.wrapping_add(d.varint()?);
        let max_t = min_t.wrapping_add(d.uvarint()? as i64);
        let r = prev_r.wrapping_add(d.varint()? as u64);
        out.chunks.push(ChunkRef { min_t, max_t, r });
        (prev_max, prev_r) = (max_t, r);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_come_back_as_pushed_including_extreme_values() {
        let series = vec![
            IndexSeries {
                labels: vec![(1, 2), (3, 4)],
                chunks: vec![
                    ChunkRef {
                        min_t: 1_700_000_000_000,
                        max_t: 1_700_000_119_000,
                        r: (1 << 32) | 8,
                    },
                    ChunkRef {
                        min_t: 1_700_000_120_000,
                        max_t: 1_700_000_239_000,
                        r: (1 << 32) | 300,
                    },
                ],
            },
            IndexSeries {
                labels: vec![(u32::MAX, 0)],
                chunks: vec![
                    ChunkRef {
                        min_t: i64::MIN,
                        max_t: i64::MIN + 1,
                        r: u64::MAX,
                    },
                    ChunkRef {
                        min_t: -5,
                        max_t: i64::MAX,
                        r: 0,
                    },
                ],
            },
            IndexSeries::default(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut spill = SeriesSpill::create(&dir.path().join("spill")).unwrap();
        for s in &series {
            spill.push(&s.labels, &s.chunks).unwrap();
        }
        assert_eq!(spill.len(), 3);
        let mut r = spill.into_reader().unwrap();
        let mut got = IndexSeries::default();
        for want in &series {
            assert!(r.next_into(&mut got).unwrap());
            assert_eq!(&got, want);
        }
        assert!(!r.next_into(&mut got).unwrap());
        assert!(!r.next_into(&mut got).unwrap());
    }

    #[test]
    fn a_file_cut_short_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill");
        let mut spill = SeriesSpill::create(&path).unwrap();
        let chunks = [ChunkRef {
            min_t: 1_000,
            max_t: 2_000,
            r: 1 << 40,
        }];
        spill.push(&[(1, 2)], &chunks).unwrap();
        let n = spill.bytes();
        drop(spill.into_reader().unwrap());
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..n as usize - 1]).unwrap();
        let mut r = SeriesSpillReader {
            data: FileBytes::open(&path).unwrap(),
            pos: 0,
        };
        assert!(r.next_into(&mut IndexSeries::default()).is_err());
    }

    #[test]
    fn a_typical_series_takes_a_fraction_of_its_vectors() {
        // Twelve label pairs and a 2h block's four chunks, as a node_exporter series.
        let labels: Vec<(u32, u32)> = (0..12).map(|i| (i * 2, 1000 + i * 37)).collect();
        let chunks: Vec<ChunkRef> = (0..4)
            .map(|i| ChunkRef {
                min_t: 1_796_342_400_000 + i * 1_800_000,
                max_t: 1_796_342_400_000 + i * 1_800_000 + 1_785_000,
                r: (1 << 32) | (8 + i as u64 * 700),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut spill = SeriesSpill::create(&dir.path().join("spill")).unwrap();
        for _ in 0..1000 {
            spill.push(&labels, &chunks).unwrap();
        }
        let per_series = spill.bytes() as usize / 1000;
        let as_vectors = 2 * size_of::<Vec<u8>>()
            + labels.len() * size_of::<(u32, u32)>()
            + chunks.len() * size_of::<ChunkRef>();
        assert!(
            per_series * 2 < as_vectors,
            "{per_series} bytes a series encoded against {as_vectors} as vectors"
        );
    }
}
