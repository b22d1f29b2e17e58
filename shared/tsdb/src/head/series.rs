//! One series in the head: its interned labels and its chunks.
//!
//! Labels are a boxed slice of symbol ids (name, value, name, value, …) so a series costs a
//! few bytes per label. Samples live in XOR chunks: a mutable head chunk plus completed
//! chunks, cut with Prometheus' rule so blocks get the chunks Prometheus would write.

use norn_model::Sample;
use parking_lot::Mutex;

use crate::chunkenc::{ChunkCutter, XorChunk, XorIterator};

/// Initial capacity of a head chunk: a handful of samples; a full 120-sample chunk of
/// regular scrapes is ~150–250 bytes and grows by doubling.
const INITIAL_CHUNK_CAPACITY: usize = 32;

pub(crate) struct MemSeries {
    pub(crate) id: u32,
    /// Flattened (name, value) symbol ids, sorted by name.
    pub(crate) labels: Box<[u32]>,
    pub(crate) state: Mutex<SeriesState>,
}

impl MemSeries {
    pub(crate) fn new(id: u32, labels: Box<[u32]>) -> Self {
        Self {
            id,
            labels,
            state: Mutex::new(SeriesState::default()),
        }
    }
}

/// A completed chunk.
pub(crate) struct ClosedChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) data: Box<[u8]>,
}

pub(crate) struct HeadChunk {
    pub(crate) chunk: XorChunk,
    pub(crate) min_t: i64,
}

pub(crate) struct SeriesState {
    pub(crate) head: Option<HeadChunk>,
    pub(crate) closed: Vec<ClosedChunk>,
    cutter: ChunkCutter,
}

impl Default for SeriesState {
    fn default() -> Self {
        Self {
            head: None,
            closed: Vec::new(),
            cutter: ChunkCutter { next_at: i64::MIN },
        }
    }
}

impl SeriesState {
    /// The last sample as (t, value bits), if any.
    pub(crate) fn last(&self) -> Option<(i64, u64)> {
        self.head
            .as_ref()
            .map(|h| (h.chunk.last_t(), h.chunk.last_v().to_bits()))
    }

    /// Time of the first sample.
    pub(crate) fn min_t(&self) -> Option<i64> {
        self.closed
            .first()
            .map(|c| c.min_t)
            .or_else(|| self.head.as_ref().map(|h| h.min_t))
    }

    /// Whether the series has a sample in `[mint, maxt]` according to its chunk bounds.
    pub(crate) fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        match (self.min_t(), self.last()) {
            (Some(lo), Some((hi, _))) => lo <= maxt && hi >= mint,
            _ => false,
        }
    }

    /// Appends a sample newer than the last one, cutting a chunk when Prometheus would.
    pub(crate) fn append(&mut self, t: i64, v: f64, chunk_range: i64) {
        let (min_t, max_t, num) = match &self.head {
            Some(h) => (h.min_t, h.chunk.last_t(), h.chunk.num_samples()),
            None => (0, 0, 0),
        };
        if self.cutter.must_cut(t, min_t, max_t, num) {
            if let Some(h) = self.head.take() {
                self.closed.push(ClosedChunk {
                    min_t: h.min_t,
                    max_t: h.chunk.last_t(),
                    data: h.chunk.into_bytes(),
                });
            }
            self.cutter.cut(t, chunk_range);
            self.head = Some(HeadChunk {
                chunk: XorChunk::with_capacity(INITIAL_CHUNK_CAPACITY),
                min_t: t,
            });
        }
        if let Some(h) = &mut self.head {
            h.chunk.append(t, v);
        }
    }

    /// Inserts a sample older than the last one by re-encoding the series (WAL replay only:
    /// two concurrent appends to one series can reach the WAL in the opposite order from
    /// memory). Returns false if the timestamp already exists.
    pub(crate) fn insert_out_of_order(&mut self, t: i64, v: f64, chunk_range: i64) -> bool {
        let mut all = self.samples(i64::MIN, i64::MAX);
        match all.binary_search_by_key(&t, |s| s.t) {
            Ok(_) => false,
            Err(i) => {
                all.insert(i, Sample::new(t, v));
                *self = SeriesState::default();
                for s in all {
                    self.append(s.t, s.v, chunk_range);
                }
                true
            }
        }
    }

    /// Chunks overlapping `[mint, maxt]` as (min_t, max_t, bytes), oldest first.
    pub(crate) fn chunks(&self, mint: i64, maxt: i64) -> impl Iterator<Item = (i64, i64, &[u8])> {
        self.closed
            .iter()
            .map(|c| (c.min_t, c.max_t, &c.data[..]))
            .chain(
                self.head
                    .as_ref()
                    .map(|h| (h.min_t, h.chunk.last_t(), h.chunk.bytes())),
            )
            .filter(move |&(lo, hi, _)| lo <= maxt && hi >= mint)
    }

    /// Samples in `[mint, maxt]`.
    pub(crate) fn samples(&self, mint: i64, maxt: i64) -> Vec<Sample> {
        let mut out = Vec::new();
        for (_, _, data) in self.chunks(mint, maxt) {
            for (t, v) in XorIterator::new(data) {
                if t > maxt {
                    break;
                }
                if t >= mint {
                    out.push(Sample::new(t, v));
                }
            }
        }
        out
    }

    /// Heap bytes held by the chunks.
    pub(crate) fn heap_size(&self) -> usize {
        self.closed.capacity() * std::mem::size_of::<ClosedChunk>()
            + self.closed.iter().map(|c| c.data.len()).sum::<usize>()
            + self.head.as_ref().map_or(0, |h| h.chunk.heap_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_insert_rebuilds_in_order() {
        let mut s = SeriesState::default();
        let range = 7_200_000;
        for t in [10, 20, 40] {
            s.append(t, t as f64, range);
        }
        assert!(s.insert_out_of_order(30, 30.0, range));
        assert!(!s.insert_out_of_order(20, 99.0, range));
        let ts: Vec<i64> = s.samples(i64::MIN, i64::MAX).iter().map(|x| x.t).collect();
        assert_eq!(ts, [10, 20, 30, 40]);
        assert_eq!(s.samples(15, 30).len(), 2);
    }

    #[test]
    fn chunks_are_cut_at_range_end() {
        let mut s = SeriesState::default();
        let range = 1000;
        for t in (0..3000).step_by(100) {
            s.append(t, 1.0, range);
        }
        let chunks: Vec<(i64, i64)> = s
            .chunks(i64::MIN, i64::MAX)
            .map(|(a, b, _)| (a, b))
            .collect();
        assert_eq!(chunks, [(0, 900), (1000, 1900), (2000, 2900)]);
    }
}
