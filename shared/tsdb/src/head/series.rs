//! One series in the head: its interned labels and its chunks.
//!
//! Labels are a boxed slice of symbol ids (name, value, name, value, …) so a series costs a
//! few bytes per label. Samples live in XOR chunks: a mutable head chunk plus completed
//! chunks, cut with Prometheus' rule so blocks get the chunks Prometheus would write.

use std::ptr::NonNull;

use norn_model::Sample;
use parking_lot::Mutex;

use super::mmap_chunks::{ChunkMapper, MappedChunk};
use super::spill::SpillLog;
use crate::chunkenc::{ChunkCutter, InlineBuf, XorChunk, XorIterator};

/// Where completed chunks and the settled bytes of open chunks go, and the chunk range for
/// cutting.
#[derive(Clone, Copy)]
pub(crate) struct Store<'a> {
    pub(crate) chunk_range: i64,
    pub(crate) mapper: &'a ChunkMapper,
    pub(crate) spill: &'a SpillLog,
}

/// A chunk's bytes while being read.
pub(crate) enum ChunkBytes<'a> {
    Borrowed(&'a [u8]),
    Mapped(MappedChunk),
    /// An open chunk joined from its spilled pieces and its tail.
    Owned(Vec<u8>),
    /// A chunk that could not be found (never expected; reads as empty).
    Missing,
}

impl ChunkBytes<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            ChunkBytes::Borrowed(b) => b,
            ChunkBytes::Mapped(m) => m.bytes(),
            ChunkBytes::Owned(v) => v,
            ChunkBytes::Missing => &[],
        }
    }
}

/// Bytes of an open chunk kept inside the series: the 2-byte header and the stream bytes not
/// spilled yet. 26 makes [`HeadChunk`] 72 bytes; before an append would not fit, the
/// settled bytes (~20) go to the spill log as one piece.
const TAIL_BYTES: usize = 26;

pub(crate) struct MemSeries {
    pub(crate) id: u32,
    /// Length of `labels`, kept next to `id` so the two fill one word.
    labels_len: u32,
    /// Flattened (name, value) symbol ids, sorted by name: a `Box<[u32]>` of `labels_len`
    /// ids, stored as a thin pointer (a boxed slice's length would cost 8 more bytes, which
    /// takes the series allocation into the next malloc size).
    labels: NonNull<u32>,
    pub(crate) state: Mutex<SeriesState>,
}

// SAFETY: `labels` is an owned, immutable `Box<[u32]>` (see `new` and `Drop`); sharing or
// sending it is as safe as sharing or sending the box.
unsafe impl Send for MemSeries {}
// SAFETY: as above; the ids are never written after `new`.
unsafe impl Sync for MemSeries {}

impl MemSeries {
    pub(crate) fn new(id: u32, labels: Box<[u32]>) -> Self {
        // A series has at most a few hundred labels in practice; the WAL's series record
        // and the request size limit keep this far below u32::MAX.
        let labels_len = u32::try_from(labels.len()).expect("fewer than 2^32 label symbols");
        let raw = Box::into_raw(labels);
        Self {
            id,
            labels_len,
            // SAFETY: `Box::into_raw` never returns null.
            labels: unsafe { NonNull::new_unchecked(raw.cast::<u32>()) },
            state: Mutex::new(SeriesState::default()),
        }
    }

    /// Flattened (name, value) symbol ids, sorted by name.
    pub(crate) fn labels(&self) -> &[u32] {
        // SAFETY: `labels` and `labels_len` are the pointer and length of the box `new` took
        // over, alive until `drop`; an empty box's pointer is dangling but aligned, which a
        // zero-length slice allows.
        unsafe { std::slice::from_raw_parts(self.labels.as_ptr(), self.labels_len as usize) }
    }
}

impl Drop for MemSeries {
    fn drop(&mut self) {
        let slice =
            std::ptr::slice_from_raw_parts_mut(self.labels.as_ptr(), self.labels_len as usize);
        // SAFETY: rebuilds the box `new` gave up, exactly once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// A completed chunk: its time range and its ref in the [`ChunkMapper`].
pub(crate) struct ClosedChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) chunk_ref: u64,
}

/// Spilled pieces from which a query rewrites an open chunk's chain as one piece.
const COMPACT_PIECES: usize = 4;

/// The open chunk of a series.
pub(crate) struct HeadChunk {
    /// Encoder state, header and the stream bytes not spilled yet.
    pub(crate) chunk: XorChunk<InlineBuf<TAIL_BYTES>>,
    pub(crate) min_t: i64,
    /// Newest piece of the stream bytes moved to the spill log (0 = none); they come
    /// between `chunk`'s header and the rest of its bytes.
    spilled: u64,
}

impl HeadChunk {
    fn new(min_t: i64) -> Self {
        Self {
            chunk: XorChunk::inline(),
            min_t,
            spilled: 0,
        }
    }

    /// The whole chunk: header, spilled bytes, tail.
    fn bytes<'a>(&'a self, spill: &SpillLog) -> ChunkBytes<'a> {
        self.join(spill, SpillLog::read)
    }

    /// The whole chunk, giving the spilled pieces back to the log (the chunk completed).
    fn take_bytes(&self, spill: &SpillLog) -> ChunkBytes<'_> {
        self.join(spill, SpillLog::take)
    }

    fn join<'a>(
        &'a self,
        spill: &SpillLog,
        read: impl FnOnce(&SpillLog, u64, &mut Vec<u8>) -> bool,
    ) -> ChunkBytes<'a> {
        let held = self.chunk.bytes();
        if self.spilled == 0 {
            return ChunkBytes::Borrowed(held);
        }
        let mut out = Vec::with_capacity(held.len() + 8 * TAIL_BYTES);
        out.extend_from_slice(&held[..2]);
        if !read(spill, self.spilled, &mut out) {
            return ChunkBytes::Missing;
        }
        out.extend_from_slice(&held[2..]);
        ChunkBytes::Owned(out)
    }

    /// The whole chunk for a query. A chain of [`COMPACT_PIECES`] or more pieces is also
    /// rewritten as one piece (and the old ones released): the pieces of one chain lie far
    /// apart in the spill files, so each costs a cache miss per read, and dashboards read the
    /// same open chunks over and over. Writing the piece costs a copy into the write buffer.
    fn bytes_for_query(&mut self, spill: &SpillLog) -> ChunkBytes<'_> {
        let held = self.chunk.bytes();
        if self.spilled == 0 {
            return ChunkBytes::Borrowed(held);
        }
        let mut out = Vec::with_capacity(held.len() + 8 * TAIL_BYTES);
        out.extend_from_slice(&held[..2]);
        let Some(pieces) = spill.read_counted(self.spilled, &mut out) else {
            return ChunkBytes::Missing;
        };
        if pieces >= COMPACT_PIECES && out.len() - 2 <= usize::from(u16::MAX) {
            let joined = spill.push(0, &out[2..]);
            spill.release(self.spilled);
            self.spilled = joined;
        }
        out.extend_from_slice(&held[2..]);
        ChunkBytes::Owned(out)
    }

    /// Gives the spilled pieces back to the log (the chunk is dropped).
    fn release(&self, spill: &SpillLog) {
        if self.spilled != 0 {
            spill.release(self.spilled);
        }
    }

    fn append(&mut self, t: i64, v: f64, spill: &SpillLog) {
        if !self.chunk.fits(t, v) {
            self.spilled = spill.push(self.spilled, self.chunk.settled());
            self.chunk.drop_settled();
        }
        self.chunk.append(t, v);
    }
}

pub(crate) struct SeriesState {
    /// The open chunk; empty (no sample) when there is none. Not an `Option`: the tag would
    /// cost 8 bytes in every series.
    open: HeadChunk,
    /// Completed chunks, oldest first. A boxed slice rather than a `Vec`: chunks complete
    /// every ~30 minutes, so an exact-size reallocation then costs less than a `Vec`'s
    /// spare capacity and length field in every series.
    pub(crate) closed: Box<[ClosedChunk]>,
    cutter: ChunkCutter,
}

impl Default for SeriesState {
    fn default() -> Self {
        Self {
            open: HeadChunk::new(0),
            closed: Box::default(),
            cutter: ChunkCutter { next_at: i64::MIN },
        }
    }
}

/// Appends the samples of an XOR chunk that lie in `[mint, maxt]`.
fn decode_into(out: &mut Vec<Sample>, chunk: &[u8], mint: i64, maxt: i64) {
    for (t, v) in XorIterator::new(chunk) {
        if t > maxt {
            break;
        }
        if t >= mint {
            out.push(Sample::new(t, v));
        }
    }
}

/// `cutter.next_at` of a series head truncation removed from the index.
const REMOVED: i64 = i64::MAX;

impl SeriesState {
    /// The open chunk, if any.
    fn head(&self) -> Option<&HeadChunk> {
        (!self.open.chunk.is_empty()).then_some(&self.open)
    }

    /// Takes the open chunk out, if any.
    fn take_head(&mut self) -> Option<HeadChunk> {
        (!self.open.chunk.is_empty()).then(|| std::mem::replace(&mut self.open, HeadChunk::new(0)))
    }

    /// Marks the series as removed from the index by head truncation (it is empty). An
    /// appender that found the series just before sees this once it holds the lock, and
    /// looks the series up again. Kept in the cutter, which a removed series never uses,
    /// so the flag costs no byte.
    pub(crate) fn mark_removed(&mut self) {
        self.cutter.next_at = REMOVED;
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.cutter.next_at == REMOVED && self.is_empty()
    }

    /// The last sample as (t, value bits), if any.
    pub(crate) fn last(&self) -> Option<(i64, u64)> {
        self.head()
            .map(|h| (h.chunk.last_t(), h.chunk.last_v().to_bits()))
    }

    /// Whether the series holds no sample.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.chunk.is_empty() && self.closed.is_empty()
    }

    /// Drops the chunks that end before `mint`; returns how many.
    pub(crate) fn truncate(&mut self, mint: i64, store: Store<'_>) -> usize {
        let mut removed = 0;
        if self.closed.iter().any(|c| c.max_t < mint) {
            let before = self.closed.len();
            let keep: Vec<ClosedChunk> = std::mem::take(&mut self.closed)
                .into_vec()
                .into_iter()
                .filter(|c| c.max_t >= mint)
                .collect();
            removed += before - keep.len();
            self.closed = keep.into_boxed_slice();
        }
        if self.head().is_some_and(|h| h.chunk.last_t() < mint) {
            if let Some(h) = self.take_head() {
                h.release(store.spill);
            }
            removed += 1;
        }
        removed
    }

    /// Time of the first sample.
    pub(crate) fn min_t(&self) -> Option<i64> {
        self.closed
            .first()
            .map(|c| c.min_t)
            .or_else(|| self.head().map(|h| h.min_t))
    }

    /// Whether the series has a sample in `[mint, maxt]` according to its chunk bounds.
    pub(crate) fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        match (self.min_t(), self.last()) {
            (Some(lo), Some((hi, _))) => lo <= maxt && hi >= mint,
            _ => false,
        }
    }

    /// Appends a sample newer than the last one, cutting a chunk when Prometheus would. A
    /// completed chunk goes to the store's mapper (heap if that fails: memory is not a
    /// reason to lose data).
    pub(crate) fn append(&mut self, id: u32, t: i64, v: f64, store: Store<'_>) {
        let (min_t, max_t, num) = match self.head() {
            Some(h) => (h.min_t, h.chunk.last_t(), h.chunk.num_samples()),
            None => (0, 0, 0),
        };
        if self.cutter.must_cut(t, min_t, max_t, num) {
            if let Some(h) = self.take_head() {
                let max_t = h.chunk.last_t();
                let chunk_ref = store.mapper.store(
                    u64::from(id),
                    h.min_t,
                    max_t,
                    h.take_bytes(store.spill).bytes(),
                );
                let mut closed = std::mem::take(&mut self.closed).into_vec();
                closed.reserve_exact(1);
                closed.push(ClosedChunk {
                    min_t: h.min_t,
                    max_t,
                    chunk_ref,
                });
                self.closed = closed.into_boxed_slice();
            }
            self.cutter.cut(t, store.chunk_range);
            self.open = HeadChunk::new(t);
        }
        // After a cut (always taken for a first sample) the open chunk exists.
        self.open.append(t, v, store.spill);
    }

    /// Inserts a sample older than the last one by re-encoding the series (WAL replay only:
    /// two concurrent appends to one series can reach the WAL in the opposite order from
    /// memory). Returns false if the timestamp already exists.
    pub(crate) fn insert_out_of_order(
        &mut self,
        id: u32,
        t: i64,
        v: f64,
        store: Store<'_>,
    ) -> bool {
        let mut all = self.samples(i64::MIN, i64::MAX, store);
        match all.binary_search_by_key(&t, |s| s.t) {
            Ok(_) => false,
            Err(i) => {
                all.insert(i, Sample::new(t, v));
                self.release(store);
                *self = SeriesState::default();
                for s in all {
                    self.append(id, s.t, s.v, store);
                }
                true
            }
        }
    }

    /// Chunks overlapping `[mint, maxt]` as (min_t, max_t, bytes), oldest first.
    pub(crate) fn chunks<'a>(
        &'a self,
        mint: i64,
        maxt: i64,
        store: Store<'a>,
    ) -> impl Iterator<Item = (i64, i64, ChunkBytes<'a>)> + 'a {
        let closed = self
            .closed
            .iter()
            .filter(move |c| c.min_t <= maxt && c.max_t >= mint)
            .map(move |c| {
                let bytes = store
                    .mapper
                    .get(c.chunk_ref)
                    .map_or(ChunkBytes::Missing, ChunkBytes::Mapped);
                (c.min_t, c.max_t, bytes)
            });
        let head = self
            .head()
            .filter(move |h| h.min_t <= maxt && h.chunk.last_t() >= mint)
            .map(move |h| (h.min_t, h.chunk.last_t(), h.bytes(store.spill)));
        closed.chain(head)
    }

    /// Samples in `[mint, maxt]`.
    pub(crate) fn samples(&self, mint: i64, maxt: i64, store: Store<'_>) -> Vec<Sample> {
        let mut out = Vec::new();
        for (_, _, data) in self.chunks(mint, maxt, store) {
            decode_into(&mut out, data.bytes(), mint, maxt);
        }
        out
    }

    /// [`samples`](Self::samples) for a query: the open chunk is read with
    /// [`HeadChunk::bytes_for_query`], which keeps its spilled chain short.
    pub(crate) fn samples_for_query(
        &mut self,
        mint: i64,
        maxt: i64,
        store: Store<'_>,
    ) -> Vec<Sample> {
        let mut out = Vec::new();
        for c in self
            .closed
            .iter()
            .filter(|c| c.min_t <= maxt && c.max_t >= mint)
        {
            let bytes = store
                .mapper
                .get(c.chunk_ref)
                .map_or(ChunkBytes::Missing, ChunkBytes::Mapped);
            decode_into(&mut out, bytes.bytes(), mint, maxt);
        }
        if !self.open.chunk.is_empty()
            && self.open.min_t <= maxt
            && self.open.chunk.last_t() >= mint
        {
            let bytes = self.open.bytes_for_query(store.spill);
            decode_into(&mut out, bytes.bytes(), mint, maxt);
        }
        out
    }

    /// The newest sample in `[mint, maxt]`. When that is the open chunk's last sample (a
    /// query at or after the series' newest data, as dashboards ask) it comes from the
    /// appender's state, with nothing decoded; otherwise the range is decoded as for
    /// [`samples_for_query`](Self::samples_for_query).
    pub(crate) fn last_sample_for_query(
        &mut self,
        mint: i64,
        maxt: i64,
        store: Store<'_>,
    ) -> Option<Sample> {
        if !self.open.chunk.is_empty() && self.open.chunk.last_t() <= maxt {
            // The open chunk holds the series' newest samples: its last one is the newest
            // at or before `maxt`.
            let t = self.open.chunk.last_t();
            return (t >= mint).then(|| Sample::new(t, self.open.chunk.last_v()));
        }
        self.samples_for_query(mint, maxt, store).pop()
    }

    /// The chunks overlapping `[mint, maxt]` as they are stored, for a chunk-level query:
    /// `f` gets each one's `(min_t, max_t, bytes)` in time order. The open chunk is read as
    /// in [`samples_for_query`](Self::samples_for_query); a chunk that cannot be found is
    /// skipped, as it reads as empty there.
    pub(crate) fn chunks_for_query(
        &mut self,
        mint: i64,
        maxt: i64,
        store: Store<'_>,
        mut f: impl FnMut(i64, i64, &[u8]),
    ) {
        for c in self
            .closed
            .iter()
            .filter(|c| c.min_t <= maxt && c.max_t >= mint)
        {
            if let Some(m) = store.mapper.get(c.chunk_ref) {
                f(c.min_t, c.max_t, m.bytes());
            }
        }
        if !self.open.chunk.is_empty()
            && self.open.min_t <= maxt
            && self.open.chunk.last_t() >= mint
        {
            let (min_t, max_t) = (self.open.min_t, self.open.chunk.last_t());
            let bytes = self.open.bytes_for_query(store.spill);
            if !matches!(bytes, ChunkBytes::Missing) {
                f(min_t, max_t, bytes.bytes());
            }
        }
    }

    /// Gives the open chunk's spilled bytes back to the log (the series is dropped whole).
    pub(crate) fn release(&self, store: Store<'_>) {
        if let Some(h) = self.head() {
            h.release(store.spill);
        }
    }

    /// Heap bytes held by the chunks (the open chunk lives inside the series).
    pub(crate) fn heap_size(&self) -> usize {
        self.closed.len() * std::mem::size_of::<ClosedChunk>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapper and a spill log in a temporary directory.
    struct Dirs {
        _dir: tempfile::TempDir,
        mapper: ChunkMapper,
        spill: SpillLog,
    }

    impl Dirs {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            Self {
                mapper: ChunkMapper::open(dir.path().join("chunks_head")).unwrap(),
                spill: SpillLog::open(dir.path().join("head_spill")).unwrap(),
                _dir: dir,
            }
        }

        fn store(&self, chunk_range: i64) -> Store<'_> {
            Store {
                chunk_range,
                mapper: &self.mapper,
                spill: &self.spill,
            }
        }
    }

    #[test]
    fn out_of_order_insert_rebuilds_in_order() {
        let dirs = Dirs::new();
        let store = dirs.store(7_200_000);
        let mut s = SeriesState::default();
        for t in [10, 20, 40] {
            s.append(1, t, t as f64, store);
        }
        assert!(s.insert_out_of_order(1, 30, 30.0, store));
        assert!(!s.insert_out_of_order(1, 20, 99.0, store));
        let ts: Vec<i64> = s
            .samples(i64::MIN, i64::MAX, store)
            .iter()
            .map(|x| x.t)
            .collect();
        assert_eq!(ts, [10, 20, 30, 40]);
        assert_eq!(s.samples(15, 30, store).len(), 2);
    }

    #[test]
    fn completed_chunks_go_to_the_mapper() {
        let dirs = Dirs::new();
        let store = dirs.store(1000);
        let mut s = SeriesState::default();
        for t in (0..3000).step_by(10) {
            s.append(1, t, t as f64, store);
        }
        assert!(
            s.closed
                .iter()
                .all(|c| store.mapper.get(c.chunk_ref).is_some())
        );
        assert_eq!(s.closed.len(), 2);
        assert!(dirs.mapper.written() > 0);
        let got = s.samples(995, 1005, store);
        assert_eq!(got, [Sample::new(1000, 1000.0)]);
        assert_eq!(s.samples(i64::MIN, i64::MAX, store).len(), 300);
    }

    #[test]
    fn truncate_drops_old_chunks() {
        let dirs = Dirs::new();
        let store = dirs.store(1000);
        let mut s = SeriesState::default();
        for t in (0..3000).step_by(100) {
            s.append(1, t, 1.0, store);
        }
        // Chunks [0, 900], [1000, 1900] (closed) and [2000, 2900] (open).
        assert_eq!(s.truncate(1000, store), 1);
        assert_eq!(s.min_t(), Some(1000));
        assert_eq!(s.truncate(1000, store), 0);
        assert_eq!(s.truncate(2000, store), 1);
        assert!(!s.is_empty());
        assert_eq!(s.truncate(2901, store), 1);
        assert!(s.is_empty());
        s.append(1, 5000, 1.0, store);
        assert_eq!(s.samples(0, 10_000, store), [Sample::new(5000, 1.0)]);
    }

    #[test]
    fn series_struct_stays_small() {
        // The per-series allocation is the largest fixed cost of the head: with the `Arc`'s
        // two counts it must stay within a 144-byte malloc chunk (136 + 8 bytes of header).
        use std::mem::size_of;
        assert!(
            size_of::<MemSeries>() + 16 <= 136,
            "{}",
            size_of::<MemSeries>()
        );
        assert_eq!(size_of::<ClosedChunk>(), 24);
    }

    #[test]
    fn chunks_are_cut_at_range_end() {
        let mut s = SeriesState::default();
        let dirs = Dirs::new();
        let store = dirs.store(1000);
        for t in (0..3000).step_by(100) {
            s.append(1, t, 1.0, store);
        }
        let chunks: Vec<(i64, i64)> = s
            .chunks(i64::MIN, i64::MAX, store)
            .map(|(a, b, _)| (a, b))
            .collect();
        assert_eq!(chunks, [(0, 900), (1000, 1900), (2000, 2900)]);
    }
}

#[cfg(test)]
mod query_compaction_tests {
    use super::*;

    #[test]
    fn a_query_rewrites_a_long_spill_chain_as_one_piece() {
        let dir = tempfile::tempdir().unwrap();
        let mapper = ChunkMapper::open(dir.path().join("chunks_head")).unwrap();
        let spill = SpillLog::open(dir.path().join("head_spill")).unwrap();
        let store = Store {
            chunk_range: 7_200_000,
            mapper: &mapper,
            spill: &spill,
        };
        let mut s = SeriesState::default();
        // Noisy values spill often: 100 samples leave a long chain in the open chunk.
        let value = |i: i64| (i as f64 * 1.37).sin() * 1e6;
        for i in 0..100 {
            s.append(1, i * 15_000, value(i), store);
        }
        let chain = |s: &SeriesState| spill.read_counted(s.open.spilled, &mut Vec::new());
        assert!(chain(&s).unwrap() >= COMPACT_PIECES, "{:?}", chain(&s));
        let all = s.samples(i64::MIN, i64::MAX, store);
        assert_eq!(all.len(), 100);

        // The query reads the same samples, and leaves one piece behind.
        assert_eq!(s.samples_for_query(i64::MIN, i64::MAX, store), all);
        assert_eq!(chain(&s), Some(1));
        assert_eq!(s.samples_for_query(300_000, 600_000, store), &all[20..=40]);

        // Appends go on from the rewritten chain; the completed chunk holds everything.
        for i in 100..200 {
            s.append(1, i * 15_000, value(i), store);
        }
        let every = s.samples(i64::MIN, i64::MAX, store);
        assert_eq!(every.len(), 200);
        assert_eq!(&every[..100], &all[..]);
        for (i, smp) in every.iter().enumerate() {
            assert_eq!(smp.t, i as i64 * 15_000);
            assert_eq!(smp.v.to_bits(), value(i as i64).to_bits());
        }
    }
}
