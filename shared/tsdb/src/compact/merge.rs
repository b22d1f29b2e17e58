//! One series' chunks from every input that holds it, merged into the output's chunks.
//!
//! The chunks of all inputs are sorted by start time and grouped into runs that overlap
//! (transitively). A run of one chunk that no tombstone touches and that holds at most
//! `samples_per_chunk` samples is copied as it is, after a decode that proves its data is what
//! the index promises. Any other run is decoded, merged by timestamp and re-cut into chunks of
//! `samples_per_chunk` samples, streaming: the decoders read the memory-mapped input and only
//! the output chunks are held.
//!
//! When inputs hold different values at the same timestamp (replicas disagree), the kept value
//! is [`pick_value`]'s: a real value beats a stale marker, then the greater value in IEEE 754
//! total order. The rule looks only at the values, never at which block they came from, so the
//! result is the same whatever the order, number or ids of the inputs, and merging in any
//! grouping (vertical first, then horizontal) gives the same block. Prometheus' chain merger
//! keeps one sample per timestamp too, but which one depends on the iterators' heap order.

use norn_model::is_stale_nan;

use super::{BadBlockKind, CompactError};
use crate::block::reader::{RawSeries, RawSeriesChunk};
use crate::chunkenc::{ENCODING_XOR, XorChunk, XorIterator};
use crate::head::ChunkMeta;

/// Counts of one compaction, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Output series.
    pub series: u64,
    /// Chunks copied without re-encoding.
    pub chunks_copied: u64,
    /// Input chunks decoded and merged.
    pub chunks_merged: u64,
    /// Samples written into re-encoded chunks.
    pub samples_reencoded: u64,
    /// Samples dropped because another input held the same timestamp.
    pub duplicates_dropped: u64,
    /// Of those, how many held a different value (replicas disagreed).
    pub conflicts: u64,
    /// Samples dropped because a tombstone covers them.
    pub deleted_dropped: u64,
}

/// One input's copy of the series being merged.
pub(super) struct Part<'a, 'b> {
    /// The input block's id, for errors.
    pub block: &'b str,
    /// The input block's `[minTime, maxTime)`.
    pub range: (i64, i64),
    pub series: &'b RawSeries<'a>,
}

/// The value kept when inputs disagree at one timestamp: a real value beats a stale marker,
/// then the greatest in IEEE 754 total order. Commutative and associative, so the order in
/// which replicas are merged never changes the outcome.
pub fn pick_value(a: f64, b: f64) -> f64 {
    let key = |v: f64| (!is_stale_nan(v), v);
    let (ka, kb) = (key(a), key(b));
    match ka.0.cmp(&kb.0).then_with(|| ka.1.total_cmp(&kb.1)) {
        std::cmp::Ordering::Less => b,
        _ => a,
    }
}

/// Merges series; reused across series so its buffers are too.
pub(super) struct SeriesMerger {
    per_chunk: u16,
}

/// One input chunk being decoded, checked as it goes.
struct Decoder<'a, 'b> {
    it: XorIterator<'a>,
    chunk: RawSeriesChunk<'a>,
    block: &'b str,
    deleted: &'a [(i64, i64)],
    read: u32,
    last: i64,
    cur: Option<(i64, f64)>,
}

impl<'a, 'b> Decoder<'a, 'b> {
    fn new(chunk: RawSeriesChunk<'a>, block: &'b str, deleted: &'a [(i64, i64)]) -> Self {
        Self {
            it: XorIterator::new(chunk.data),
            chunk,
            block,
            deleted,
            read: 0,
            last: i64::MIN,
            cur: None,
        }
    }

    fn corrupt(&self, labels: &norn_model::Labels, msg: &str) -> CompactError {
        CompactError::bad(
            self.block,
            BadBlockKind::Corrupt,
            format!(
                "series {labels}: chunk [{}, {}]: {msg}",
                self.chunk.min_t, self.chunk.max_t
            ),
        )
    }

    /// The next sample not under a tombstone, or `None` at the end; every sample, deleted or
    /// not, is checked against the chunk's range and order.
    fn next(
        &mut self,
        labels: &norn_model::Labels,
        deleted_dropped: &mut u64,
    ) -> Result<Option<(i64, f64)>, CompactError> {
        loop {
            let Some((t, v)) = self.it.next() else {
                if self.it.error().is_some() || self.read != u32::from(self.it.num_samples()) {
                    return Err(self.corrupt(labels, "XOR data is truncated or malformed"));
                }
                return Ok(None);
            };
            if t < self.chunk.min_t || t > self.chunk.max_t || (self.read > 0 && t <= self.last) {
                return Err(self.corrupt(
                    labels,
                    &format!("sample at {t} outside the chunk's range or out of order"),
                ));
            }
            self.read += 1;
            self.last = t;
            if self
                .deleted
                .iter()
                .any(|&(mint, maxt)| t >= mint && t <= maxt)
            {
                *deleted_dropped += 1;
                continue;
            }
            return Ok(Some((t, v)));
        }
    }
}

/// Re-cuts a stream of samples into chunks of at most `per` samples.
struct Recut {
    per: u16,
    cur: Option<(XorChunk, i64, i64)>,
    out: Vec<ChunkMeta>,
}

impl Recut {
    fn push(&mut self, t: i64, v: f64) {
        let (c, _, max) = self
            .cur
            .get_or_insert_with(|| (XorChunk::with_capacity(256), t, t));
        // Never full: the chunk is flushed at `per` (≤ u16::MAX) samples.
        let _ = c.append(t, v);
        *max = t;
        if c.num_samples() >= self.per {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some((c, min_t, max_t)) = self.cur.take() {
            self.out.push(ChunkMeta {
                min_t,
                max_t,
                data: c.into_bytes().into_vec(),
            });
        }
    }
}

impl SeriesMerger {
    pub(super) fn new(per_chunk: u16) -> Self {
        Self {
            per_chunk: per_chunk.max(1),
        }
    }

    /// The output chunks of one series held by `parts` (all with the same labels).
    pub(super) fn merge(
        &mut self,
        parts: &[Part<'_, '_>],
        stats: &mut MergeStats,
    ) -> Result<Vec<ChunkMeta>, CompactError> {
        let Some(first) = parts.first() else {
            return Ok(Vec::new());
        };
        let labels = &first.series.labels;
        let mut items: Vec<(usize, RawSeriesChunk<'_>)> = Vec::new();
        for (pi, p) in parts.iter().enumerate() {
            let mut prev_max: Option<i64> = None;
            for c in &p.series.chunks {
                let bad = |kind, msg: String| {
                    CompactError::bad(
                        p.block,
                        kind,
                        format!("series {labels}: chunk [{}, {}]: {msg}", c.min_t, c.max_t),
                    )
                };
                if c.encoding != ENCODING_XOR {
                    return Err(bad(
                        BadBlockKind::Corrupt,
                        format!(
                            "encoding {} cannot be compacted yet (only float XOR chunks)",
                            c.encoding
                        ),
                    ));
                }
                if c.data.len() < 2 || c.min_t > c.max_t {
                    return Err(bad(BadBlockKind::Corrupt, "malformed chunk".into()));
                }
                if prev_max.is_some_and(|m| c.min_t <= m) {
                    return Err(bad(
                        BadBlockKind::OutOfOrderChunks,
                        "overlaps or precedes the previous chunk of the series".into(),
                    ));
                }
                if c.min_t < p.range.0 || c.max_t >= p.range.1 {
                    return Err(bad(
                        BadBlockKind::Corrupt,
                        format!("outside the block range [{}, {})", p.range.0, p.range.1),
                    ));
                }
                prev_max = Some(c.max_t);
                items.push((pi, *c));
            }
        }
        items.sort_by_key(|(pi, c)| (c.min_t, *pi));

        let mut recut = Recut {
            per: self.per_chunk,
            cur: None,
            out: Vec::new(),
        };
        let mut i = 0;
        while i < items.len() {
            let mut j = i + 1;
            let mut group_max = items[i].1.max_t;
            while j < items.len() && items[j].1.min_t <= group_max {
                group_max = group_max.max(items[j].1.max_t);
                j += 1;
            }
            let group = &items[i..j];
            i = j;
            if let [(pi, c)] = group {
                let deleted = parts[*pi].series.deleted;
                let touched = deleted
                    .iter()
                    .any(|&(mint, maxt)| mint <= c.max_t && maxt >= c.min_t);
                let n = u16::from_be_bytes([c.data[0], c.data[1]]);
                if !touched && n <= self.per_chunk && n > 0 {
                    let mut d = Decoder::new(*c, parts[*pi].block, deleted);
                    let mut ignored = 0;
                    while d.next(labels, &mut ignored)?.is_some() {}
                    recut.flush();
                    recut.out.push(ChunkMeta {
                        min_t: c.min_t,
                        max_t: c.max_t,
                        data: c.data.to_vec(),
                    });
                    stats.chunks_copied += 1;
                    continue;
                }
            }
            self.merge_group(parts, group, labels, &mut recut, stats)?;
            // A re-encoded run ends its last chunk, so a copied chunk after it keeps order.
            recut.flush();
        }
        recut.flush();
        if !recut.out.is_empty() {
            stats.series += 1;
        }
        Ok(recut.out)
    }

    fn merge_group(
        &mut self,
        parts: &[Part<'_, '_>],
        group: &[(usize, RawSeriesChunk<'_>)],
        labels: &norn_model::Labels,
        recut: &mut Recut,
        stats: &mut MergeStats,
    ) -> Result<(), CompactError> {
        let mut decoders: Vec<Decoder<'_, '_>> = group
            .iter()
            .map(|(pi, c)| Decoder::new(*c, parts[*pi].block, parts[*pi].series.deleted))
            .collect();
        stats.chunks_merged += decoders.len() as u64;
        for d in &mut decoders {
            d.cur = d.next(labels, &mut stats.deleted_dropped)?;
        }
        while let Some(t) = decoders.iter().filter_map(|d| d.cur.map(|c| c.0)).min() {
            let mut kept: Option<f64> = None;
            for d in &mut decoders {
                let Some((dt, dv)) = d.cur else { continue };
                if dt != t {
                    continue;
                }
                kept = Some(match kept {
                    None => dv,
                    Some(k) => {
                        stats.duplicates_dropped += 1;
                        if k.to_bits() != dv.to_bits() {
                            stats.conflicts += 1;
                        }
                        pick_value(k, dv)
                    }
                });
                d.cur = d.next(labels, &mut stats.deleted_dropped)?;
            }
            if let Some(v) = kept {
                recut.push(t, v);
                stats.samples_reencoded += 1;
            }
        }
        Ok(())
    }
}
