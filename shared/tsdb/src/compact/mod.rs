//! Compaction: N block directories merged, series by series, into one block or into N shard
//! blocks (split-and-merge).
//!
//! Series flow in label order through a k-way merge of the inputs' indexes; one series of each
//! input is in memory at a time, its chunks read straight from the memory-mapped segments. The
//! output [`BlockWriter`] writes chunks as they come and spills each series' index side (symbol
//! ids, chunk refs) to a file until the index is written, so a compaction's memory is the
//! symbols, the inputs' series refs and one output block's postings work at a time, never the
//! samples.
//!
//! Per series (see [`merge`]): chunks that overlap no other chunk are copied as they are (when
//! they hold at most `samples_per_chunk` samples and no tombstone touches them); overlapping
//! chunks (the RF copies of a range, imports) are decoded, merged so each timestamp appears
//! once, and re-cut into chunks of at most `samples_per_chunk` samples.
//!
//! Inputs are verified while they are read: series order, chunk order within a series,
//! chunk CRCs (by the reader), XOR data that decodes to the samples its header and index entry
//! promise. A failure names the input block ([`CompactError::BadBlock`]) so the caller can mark
//! that block no-compact and go on without it; the outputs written so far are discarded.

mod merge;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use norn_model::Labels;

use crate::block::meta::BlockDesc;
use crate::block::{Block, BlockMeta, BlockOptions, BlockWriter, ThanosMeta};
use crate::chunkenc::SAMPLES_PER_CHUNK;
use crate::error::TsdbError;

pub use merge::{MergeStats, pick_value};

/// Thanos/Mimir external label naming a split-and-merge shard: `"<i+1>_of_<N>"`.
pub const SHARD_ID_LABEL: &str = "__compactor_shard_id__";
/// `thanos.source` of blocks the compactor writes.
pub const COMPACTOR_SOURCE: &str = "compactor";
/// Most shards one compaction may write (each is an open block writer).
pub const MAX_SHARDS: u32 = 1024;
/// Most inputs one compaction may read (each is an open, memory-mapped block).
pub const MAX_INPUTS: usize = 1024;

/// How to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// External labels of the outputs (`__org_id__`, …); the shard label is added per shard.
    pub labels: BTreeMap<String, String>,
    /// Output blocks: series go to shard `stable_hash(labels) % shards`. 0 and 1 mean one block.
    pub shards: u32,
    /// Most samples in a re-encoded chunk (Prometheus: 120).
    pub samples_per_chunk: u16,
    /// Chunk segment size of the outputs (Prometheus: 512 MiB); smaller only for tests.
    pub segment_size: u64,
    /// Set to stop a running compaction (checked between series); the outputs are discarded.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            labels: BTreeMap::new(),
            shards: 1,
            samples_per_chunk: SAMPLES_PER_CHUNK,
            segment_size: BlockOptions::default().segment_size,
            cancel: None,
        }
    }
}

/// Why a block is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadBlockKind {
    /// Chunks of a series out of order or overlapping in the index (Prometheus' known
    /// corruption; Mimir's `block-index-out-of-order-chunk`).
    OutOfOrderChunks,
    /// Unreadable, failed a checksum, malformed data, or holds what Norn cannot merge.
    Corrupt,
}

/// A compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// An input block is bad: compacting without it is the way on.
    #[error("block {block} is bad: {reason}")]
    BadBlock {
        /// The input's ULID (its directory name).
        block: String,
        kind: BadBlockKind,
        reason: String,
    },
    /// The options or the set of inputs make no sense.
    #[error("invalid compaction: {0}")]
    Invalid(String),
    /// [`CompactOptions::cancel`] was set.
    #[error("compaction cancelled")]
    Cancelled,
    /// Writing an output failed (disk full, …): nothing is wrong with the inputs.
    #[error("writing the compacted block: {0}")]
    Output(#[source] TsdbError),
}

impl CompactError {
    fn bad(block: &str, kind: BadBlockKind, reason: impl Into<String>) -> Self {
        CompactError::BadBlock {
            block: block.to_string(),
            kind,
            reason: reason.into(),
        }
    }
}

/// What a compaction wrote.
#[derive(Debug, Clone)]
pub struct CompactOutput {
    /// The output blocks (one, or one per non-empty shard), each renamed into place under the
    /// output directory. Empty when the inputs held no sample at all.
    pub blocks: Vec<BlockMeta>,
    pub stats: MergeStats,
}

/// The shard of a series among `shards` (`0..shards`), stable across processes and versions.
pub fn shard_of(labels: &Labels, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    (labels.stable_hash() % u64::from(shards)) as u32
}

/// The shard label's value for shard `i` of `n` (`"1_of_4"` for the first), as Mimir.
pub fn shard_label(i: u32, n: u32) -> String {
    format!("{}_of_{n}", i + 1)
}

/// An input being read: the block, its series refs, where we are, and the current series.
struct Cursor<'a> {
    block: &'a Block,
    id: String,
    refs: Vec<u32>,
    pos: usize,
    current: Option<crate::block::reader::RawSeries<'a>>,
}

impl<'a> Cursor<'a> {
    /// Moves to the next series, checking that labels strictly ascend.
    fn advance(&mut self) -> Result<(), CompactError> {
        let prev = self.current.take().map(|s| s.labels);
        let Some(&r) = self.refs.get(self.pos) else {
            return Ok(());
        };
        self.pos += 1;
        let s = self
            .block
            .raw_series(r)
            .map_err(|e| CompactError::bad(&self.id, BadBlockKind::Corrupt, e.to_string()))?;
        if let Some(p) = prev
            && p >= s.labels
        {
            return Err(CompactError::bad(
                &self.id,
                BadBlockKind::Corrupt,
                format!("index: series {} follows {p} (out of order)", s.labels),
            ));
        }
        self.current = Some(s);
        Ok(())
    }
}

/// Opens each input directory as a block; the first that fails is the bad one.
pub fn open_inputs(inputs: &[PathBuf]) -> Result<Vec<Block>, CompactError> {
    if inputs.is_empty() {
        return Err(CompactError::Invalid("no input blocks".into()));
    }
    if inputs.len() > MAX_INPUTS {
        return Err(CompactError::Invalid(format!(
            "{} inputs; at most {MAX_INPUTS} per compaction",
            inputs.len()
        )));
    }
    inputs
        .iter()
        .map(|dir| {
            Block::open(dir).map_err(|e| {
                CompactError::bad(&dir_name(dir), BadBlockKind::Corrupt, e.to_string())
            })
        })
        .collect()
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Compacts the blocks in `inputs` (directories) into `opts.shards` blocks under `out_dir`.
///
/// The outputs cover `[min input minTime, max input maxTime)`, are one level above the
/// highest input, list the union of the inputs' sources and the inputs as parents, and carry
/// `opts.labels` (plus the shard label when split) with source `compactor`.
pub fn compact(
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &CompactOptions,
) -> Result<CompactOutput, CompactError> {
    let blocks = open_inputs(inputs)?;
    compact_blocks(&blocks, out_dir, opts)
}

/// [`compact`] over blocks already open.
pub fn compact_blocks(
    blocks: &[Block],
    out_dir: &Path,
    opts: &CompactOptions,
) -> Result<CompactOutput, CompactError> {
    if blocks.is_empty() {
        return Err(CompactError::Invalid("no input blocks".into()));
    }
    if opts.shards > MAX_SHARDS {
        return Err(CompactError::Invalid(format!(
            "{} shards; at most {MAX_SHARDS}",
            opts.shards
        )));
    }
    if opts.samples_per_chunk == 0 {
        return Err(CompactError::Invalid(
            "samples per chunk must be at least 1".into(),
        ));
    }
    let shards = opts.shards.max(1);
    let metas: Vec<&BlockMeta> = blocks.iter().map(Block::meta).collect();
    let mut ids: Vec<&str> = metas.iter().map(|m| m.ulid.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(CompactError::Invalid(
            "an input block is given twice".into(),
        ));
    }
    let min_time = metas.iter().map(|m| m.min_time).min().unwrap_or(0);
    let max_time = metas.iter().map(|m| m.max_time).max().unwrap_or(0);
    let level = metas
        .iter()
        .map(|m| m.compaction.level)
        .max()
        .unwrap_or(1)
        .saturating_add(1);
    let mut sources: Vec<String> = metas
        .iter()
        .flat_map(|m| {
            if m.compaction.sources.is_empty() {
                vec![m.ulid.clone()]
            } else {
                m.compaction.sources.clone()
            }
        })
        .collect();
    sources.sort();
    sources.dedup();
    let mut parents: Vec<BlockDesc> = metas
        .iter()
        .map(|m| BlockDesc {
            ulid: m.ulid.clone(),
            min_time: m.min_time,
            max_time: m.max_time,
        })
        .collect();
    parents.sort_by(|a, b| a.ulid.cmp(&b.ulid));

    let mut writers = Vec::with_capacity(shards as usize);
    for i in 0..shards {
        let mut labels = opts.labels.clone();
        if shards > 1 {
            labels.insert(SHARD_ID_LABEL.to_string(), shard_label(i, shards));
        }
        let wopts = BlockOptions {
            compaction_level: level,
            sources: sources.clone(),
            parents: parents.clone(),
            thanos: Some(ThanosMeta {
                labels,
                source: COMPACTOR_SOURCE.to_string(),
                ..ThanosMeta::default()
            }),
            segment_size: opts.segment_size,
            ..BlockOptions::default()
        }
        .with_range(min_time, max_time);
        let w = BlockWriter::create(out_dir, wopts).map_err(CompactError::Output)?;
        writers.push((w, 0u64));
    }

    let mut cursors: Vec<Cursor<'_>> = Vec::with_capacity(blocks.len());
    for b in blocks {
        let id = b.meta().ulid.clone();
        let refs = b
            .series_refs()
            .map_err(|e| CompactError::bad(&id, BadBlockKind::Corrupt, e.to_string()))?;
        let mut c = Cursor {
            block: b,
            id,
            refs,
            pos: 0,
            current: None,
        };
        c.advance()?;
        cursors.push(c);
    }

    let mut stats = MergeStats::default();
    let mut merger = merge::SeriesMerger::new(opts.samples_per_chunk);
    loop {
        if opts
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(CompactError::Cancelled);
        }
        // The smallest current labels; few inputs, so a scan beats a heap.
        let Some(min) = cursors
            .iter()
            .filter_map(|c| c.current.as_ref().map(|s| &s.labels))
            .min()
            .cloned()
        else {
            break;
        };
        let mut parts = Vec::new();
        for c in &cursors {
            if let Some(s) = &c.current
                && s.labels == min
            {
                parts.push(merge::Part {
                    block: &c.id,
                    range: (c.block.meta().min_time, c.block.meta().max_time),
                    series: s,
                });
            }
        }
        let chunks = merger.merge(&parts, &mut stats)?;
        drop(parts);
        if !chunks.is_empty() {
            let (w, n) = &mut writers[shard_of(&min, shards) as usize];
            w.add_series(&min, &chunks).map_err(CompactError::Output)?;
            *n += 1;
        }
        for c in &mut cursors {
            if c.current.as_ref().is_some_and(|s| s.labels == min) {
                c.advance()?;
            }
        }
    }

    let mut out = Vec::new();
    for (w, n) in writers {
        // An empty shard is no block (Mimir writes none either); dropping removes its tmp dir.
        if n > 0 {
            out.push(w.finish().map_err(CompactError::Output)?);
        }
    }
    Ok(CompactOutput { blocks: out, stats })
}
