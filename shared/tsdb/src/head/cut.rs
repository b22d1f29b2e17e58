//! Moving completed data out of the head: writing a range as a block, choosing the ranges
//! that are due, cutting (write, publish, then release) and truncation, and the WAL
//! checkpoint that follows a cut.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use norn_model::{METRIC_NAME, Sample};

use super::Head;
use super::outcomes::{ChunkMeta, CutOutcome, TruncateStats};
use super::series::{self, MemSeries};
use crate::block::{BlockMeta, BlockOptions, BlockWriter, chunks_from_samples};
use crate::chunkenc::{SAMPLES_PER_CHUNK, XorIterator};
use crate::error::{Result, TsdbError};
use crate::wal;

impl Head {
    /// Writes the head's data in `[mint, maxt)` as a block under `dir` (streaming series by
    /// series, so the head's chunks are never copied all at once). `None` when no series has
    /// data there. The chunk cutter never lets a chunk straddle a block-range multiple, so
    /// for an aligned range every chunk is copied as it is; a chunk reaching outside the
    /// range (a forced flush's open chunk, which appends may continue) is re-encoded with
    /// just the samples inside it, so a block never holds a sample outside its range.
    pub fn write_block(
        &self,
        dir: &std::path::Path,
        mint: i64,
        maxt: i64,
        opts: BlockOptions,
    ) -> Result<Option<BlockMeta>> {
        let last = maxt.saturating_sub(1);
        let mut series: Vec<Arc<MemSeries>> = self
            .index
            .matching(&[])
            .into_iter()
            .filter(|s| s.state.lock().overlaps(mint, last))
            .collect();
        if series.is_empty() {
            return Ok(None);
        }
        // Sort by label strings through the symbol table: materialising every series' labels
        // first would cost as much memory as the index itself.
        series.sort_by(|a, b| self.index.cmp_labels(a, b));
        let mut w = BlockWriter::create(dir, opts.with_range(mint, maxt))?;
        let mut chunks = Vec::new();
        for s in &series {
            chunks.clear();
            {
                let st = s.state.lock();
                for (min_t, max_t, data) in st.chunks(mint, last, self.store()) {
                    if matches!(data, series::ChunkBytes::Missing) {
                        return Err(TsdbError::Corrupt {
                            path: self.mapper.dir().to_path_buf(),
                            msg: format!("head chunk of series {} is missing", s.id),
                        });
                    }
                    if min_t >= mint && max_t < maxt {
                        chunks.push(ChunkMeta {
                            min_t,
                            max_t,
                            data: data.bytes().to_vec(),
                        });
                        continue;
                    }
                    // Only a forced flush gets here: the open chunk of an unaligned range
                    // (appends after the cut continue it). The block takes just its part.
                    let inside: Vec<Sample> = XorIterator::new(data.bytes())
                        .filter(|&(t, _)| t >= mint && t < maxt)
                        .map(|(t, v)| Sample::new(t, v))
                        .collect();
                    if !inside.is_empty() {
                        chunks.extend(chunks_from_samples(
                            &inside,
                            usize::from(SAMPLES_PER_CHUNK),
                        )?);
                    }
                }
            }
            if !chunks.is_empty() {
                w.add_series(&self.index.labels_of(s), &chunks)?;
            }
        }
        w.finish().map(Some)
    }

    /// Samples before this time are in blocks and rejected as too old.
    pub fn min_valid_time(&self) -> i64 {
        self.min_valid_time.load(Ordering::Acquire)
    }

    /// Raises `min_valid_time` to `t`; returns once no append that could still add a sample
    /// before `t` is running.
    pub fn set_min_valid_time(&self, t: i64) {
        self.min_valid_time.fetch_max(t, Ordering::AcqRel);
        drop(self.append_gate.write());
    }

    /// The oldest block-range-aligned range `[mint, maxt)` that is complete: the head's newest
    /// sample is half a range past its end, so no sample can be added to it any more (as
    /// Prometheus: compact once the head spans 1.5 block ranges). Checked arithmetic: a range
    /// that cannot be represented is never due.
    pub fn compactable_range(&self) -> Option<(i64, i64)> {
        let (lo, hi) = (self.min_time()?, self.max_time()?);
        let lo = lo.max(self.min_valid_time());
        let mint = self.range_start(lo)?;
        let maxt = mint.checked_add(self.chunk_range)?;
        (hi >= maxt.checked_add(self.chunk_range / 2)?).then_some((mint, maxt))
    }

    /// The first range a forced flush cuts: from the oldest sample still in the head to the
    /// end of its block-range-aligned range, or to right after the newest sample if that comes
    /// first. Cutting it and asking again walks the head range by range, and because the
    /// oldest sample is asked afresh each time, empty stretches between samples are skipped
    /// rather than walked.
    pub fn first_flush_range(&self) -> Option<(i64, i64)> {
        let (lo, hi) = (self.min_time()?, self.max_time()?);
        let min_valid = self.min_valid_time();
        // Right after a cut the head's bound is where the next piece starts, as long as the
        // oldest sample lies in the same aligned range (consecutive pieces stay contiguous).
        let mint = match self.range_start(lo) {
            Some(start) if (start..=lo).contains(&min_valid) => min_valid,
            _ => lo.max(min_valid),
        };
        let end = hi.saturating_add(1);
        if mint >= end {
            return None;
        }
        let aligned_end = self
            .range_start(mint)
            .and_then(|s| s.checked_add(self.chunk_range))
            .unwrap_or(i64::MAX);
        Some((mint, aligned_end.min(end)))
    }

    /// The start of the block-range-aligned range holding `t` (`None` if it does not fit in
    /// an `i64`).
    fn range_start(&self, t: i64) -> Option<i64> {
        t.div_euclid(self.chunk_range).checked_mul(self.chunk_range)
    }

    /// Cuts `[mint, maxt)` into a block under `dir`, then releases it from the head: no
    /// sample before `maxt` is accepted any more, chunks ending before it are dropped (series
    /// left empty are removed) and the WAL is checkpointed to what the head still holds.
    /// The block is durable (fsynced, renamed) before anything is dropped, so a crash at any
    /// point leaves the data in the block, the WAL, or both (replay then skips what the
    /// block holds, see [`HeadOptions::min_valid_time`]).
    ///
    /// `publish` runs once the block is durable and before the head lets go of its data:
    /// the caller makes the block queryable there, so a query never falls into a gap
    /// (for a moment both hold the data; readers merge duplicates).
    pub fn cut_block(
        &self,
        dir: &std::path::Path,
        mint: i64,
        maxt: i64,
        opts: BlockOptions,
        publish: impl FnOnce(Option<&BlockMeta>) -> Result<()>,
    ) -> Result<CutOutcome> {
        let start = Instant::now();
        let before = self.min_valid_time();
        self.set_min_valid_time(maxt);
        // Until the block is durable and published the head still owns the range: on any
        // failure the bound goes back down, so appends and the next cut see the range as
        // uncut, and nothing of it is dropped. (Cuts of one head are serialised by the caller,
        // so nothing else raised the bound meanwhile.)
        let restore = |e: TsdbError| {
            let _ = self.min_valid_time.compare_exchange(
                maxt.max(before),
                before,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            e
        };
        let meta = self.write_block(dir, mint, maxt, opts).map_err(restore)?;
        if let Err(e) = publish(meta.as_ref()) {
            // A block that was written but not published would be cut again on the retry:
            // remove it so the data is in exactly one place, the head.
            if let Some(m) = &meta {
                let written = dir.join(&m.ulid);
                if let Err(rm) = std::fs::remove_dir_all(&written) {
                    tracing::warn!(block = %written.display(), error = %rm, "cannot remove an unpublished block");
                }
            }
            return Err(restore(e));
        }
        let truncated = self.truncate(maxt);
        let checkpoint = self
            .checkpoint_wal(maxt)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "WAL checkpoint after a block cut failed; the block holds the data, the next checkpoint takes the segments");
            })
            .ok();
        Ok(CutOutcome {
            meta,
            truncated,
            checkpoint,
            duration: start.elapsed(),
        })
    }

    /// Drops every chunk that ends before `mint` and removes the series left empty; raises
    /// `min_valid_time` to `mint`. Head-chunk files holding only dropped chunks are deleted.
    pub fn truncate(&self, mint: i64) -> TruncateStats {
        self.set_min_valid_time(mint);
        let mut stats = TruncateStats::default();
        let mut removed: Vec<(u32, Box<[u32]>)> = Vec::new();
        let mut new_min = i64::MAX;
        let name_sym = self.index.symbols.lookup(METRIC_NAME);
        let mut hash_buf = Vec::with_capacity(256);
        for series in self.index.shards() {
            for s in series {
                let mut st = s.state.lock();
                stats.chunks_removed += st.truncate(mint, self.store());
                if !st.is_empty() {
                    if let Some(t) = st.min_t() {
                        new_min = new_min.min(t);
                    }
                    continue;
                }
                // Under the series lock, so an appender holding this series sees the flag
                // once it gets the lock, and looks the series up afresh.
                st.mark_removed();
                self.index.remove(&s, name_sym, &mut hash_buf);
                drop(st);
                removed.push((s.id, s.labels().into()));
            }
        }
        stats.series_removed = removed.len();
        self.index.remove_postings(&removed);
        self.min_t.store(new_min, Ordering::Release);
        stats.files_removed = self.mapper.truncate(mint);
        self.metrics
            .head_series_removed
            .inc_by(stats.series_removed as u64);
        tracing::debug!(
            mint,
            series_removed = stats.series_removed,
            chunks_removed = stats.chunks_removed,
            "head truncated"
        );
        stats
    }

    /// Checkpoints the WAL: closes the current segment, rewrites every older one into a
    /// checkpoint keeping the series still in the head and samples at or after `mint`, and
    /// deletes the rewritten segments. For after a block covering `< mint` was cut.
    pub fn checkpoint_wal(&self, mint: i64) -> Result<wal::CheckpointStats> {
        let closed = self.wal.rotate()?;
        let index = &self.index;
        self.wal.checkpoint(
            closed,
            |r| {
                u32::try_from(r)
                    .ok()
                    .and_then(|id| index.by_id(id))
                    .is_some()
            },
            mint,
        )
    }
}
