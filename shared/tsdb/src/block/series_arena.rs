//! The block writer's series, kept compactly until the index is written.
//!
//! The index starts with the symbol table of every string the series use, so a writer cannot
//! write a series entry before it has seen them all and must keep every series' label pairs
//! and chunk refs until the end. As `IndexSeries` values (two `Vec`s each) that was about
//! 270 bytes a series of a 2h block; encoded here back to back, varints as in the index's own
//! series section, it is about 60-80. It is what bounds a block cut's or a compaction's memory
//! by the number of series: at 1M series a few tens of MB instead of a few hundred.

use super::index::{ChunkRef, IndexSeries};
use super::io::{Decbuf, put_uvarint, put_varint};

/// Series appended in order, read back in the same order.
#[derive(Debug, Default)]
pub struct SeriesArena {
    bytes: Vec<u8>,
    len: usize,
}

impl SeriesArena {
    /// Appends a series: label pairs as symbol ids, chunk refs in time order.
    pub fn push(&mut self, labels: &[(u32, u32)], chunks: &[ChunkRef]) {
        let b = &mut self.bytes;
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
        self.len += 1;
    }

    /// Series pushed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (for memory accounting and tests).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// The series in push order.
    pub fn reader(&self) -> SeriesArenaReader<'_> {
        SeriesArenaReader {
            d: Decbuf::new(&self.bytes),
        }
    }
}

/// Reads a [`SeriesArena`] back, one series at a time into a reused [`IndexSeries`].
#[derive(Debug)]
pub struct SeriesArenaReader<'a> {
    d: Decbuf<'a>,
}

impl SeriesArenaReader<'_> {
    /// The next series into `out` (its vectors reused); false at the end. The arena only
    /// holds what `push` wrote, so a short read is a bug and reads as the end.
    pub fn next_into(&mut self, out: &mut IndexSeries) -> bool {
        out.labels.clear();
        out.chunks.clear();
        if self.d.remaining() == 0 {
            return false;
        }
        self.read(out).is_some()
    }

    fn read(&mut self, out: &mut IndexSeries) -> Option<()> {
        let d = &mut self.d;
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
        let mut arena = SeriesArena::default();
        for s in &series {
            arena.push(&s.labels, &s.chunks);
        }
        assert_eq!(arena.len(), 3);
        let mut r = arena.reader();
        let mut got = IndexSeries::default();
        for want in &series {
            assert!(r.next_into(&mut got));
            assert_eq!(&got, want);
        }
        assert!(!r.next_into(&mut got));
        assert!(!r.next_into(&mut got));
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
        let mut arena = SeriesArena::default();
        for _ in 0..1000 {
            arena.push(&labels, &chunks);
        }
        let per_series = arena.bytes.len() / 1000;
        let as_vectors = 2 * size_of::<Vec<u8>>()
            + labels.len() * size_of::<(u32, u32)>()
            + chunks.len() * size_of::<ChunkRef>();
        assert!(
            per_series * 2 < as_vectors,
            "{per_series} bytes a series encoded against {as_vectors} as vectors"
        );
    }
}
