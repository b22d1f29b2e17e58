//! Writes a block directory in Prometheus' layout (spec §1–8).
//!
//! Chunks stream straight into the segment files as series arrive. The index must start with
//! the symbol table of every string the series use, so the index side of each series (label
//! pairs as interned symbol ids, chunk refs) waits in a [`SeriesSpill`] file until
//! [`BlockWriter::finish`] knows every symbol: while series arrive, memory holds the symbols
//! only; the postings are built as the index is written. Everything is written into
//! `<ULID>.tmp-for-creation`, fsynced, and renamed into place, so a crash leaves either no
//! block or a complete one (a leftover tmp directory is garbage, as in Prometheus).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use norn_model::{Labels, Sample};

use super::chunks::{ChunkWriter, DEFAULT_SEGMENT_SIZE};
use super::index::{ChunkRef, IndexSeries, write_index_with};
use super::io::{PosWriter, sync_dir, write_file_synced};
use super::meta::{
    BlockDesc, BlockMeta, BlockStats, Compaction, META_VERSION, THANOS_VERSION, ThanosDownsample,
    ThanosFile, ThanosMeta,
};
use super::series_spill::SeriesSpill;
use super::tombstones::Tombstones;
use super::ulid::Ulid;
use super::{CHUNKS_DIRNAME, INDEX_FILENAME, META_FILENAME, TMP_SUFFIX, TOMBSTONES_FILENAME};
use crate::chunkenc::{ENCODING_XOR, XorChunk};
use crate::error::{Result, TsdbError};
use crate::fault;
use crate::head::{ChunkMeta, SeriesChunks};

/// The series spill inside the block's temporary directory; removed before the rename, so a
/// finished block never holds it.
const SERIES_SPILL_FILENAME: &str = "series.spill";

/// The external label Cortex/Mimir-style tooling uses for the tenant.
pub const ORG_ID_LABEL: &str = "__org_id__";

/// How to write a block.
#[derive(Debug, Clone)]
pub struct BlockOptions {
    /// Block id; a fresh one stamped with the current time when `None`.
    pub ulid: Option<Ulid>,
    /// Start of the covered range (inclusive). Defaults to the first chunk's start.
    pub min_time: Option<i64>,
    /// End of the covered range (exclusive). Defaults to the last sample + 1, as promtool.
    pub max_time: Option<i64>,
    /// 1 for a block cut from a head; max(parents) + 1 for a compacted one.
    pub compaction_level: u32,
    /// Level-1 ancestors; empty means "this block itself" (right for level 1).
    pub sources: Vec<String>,
    /// Direct inputs of a compaction.
    pub parents: Vec<BlockDesc>,
    /// Thanos section (external labels, source, resolution). The writer fills in the
    /// version and the file list.
    pub thanos: Option<ThanosMeta>,
    /// Maximum chunk segment size (Prometheus: 512 MiB); smaller only for tests.
    pub segment_size: u64,
}

impl Default for BlockOptions {
    fn default() -> Self {
        Self {
            ulid: None,
            min_time: None,
            max_time: None,
            compaction_level: 1,
            sources: Vec::new(),
            parents: Vec::new(),
            thanos: None,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

impl BlockOptions {
    /// Options for a tenant's block: Thanos labels `{__org_id__: tenant}` plus `extra`
    /// (replica labels and the like), raw resolution, and `source` (`receive`, `compactor`…).
    pub fn for_tenant<'a>(
        tenant: &str,
        source: &str,
        extra: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut labels: BTreeMap<String, String> = extra
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert(ORG_ID_LABEL.to_string(), tenant.to_string());
        Self {
            thanos: Some(ThanosMeta {
                labels,
                source: source.to_string(),
                ..ThanosMeta::default()
            }),
            ..Self::default()
        }
    }

    /// Sets the covered range `[min_time, max_time)`.
    pub fn with_range(mut self, min_time: i64, max_time: i64) -> Self {
        self.min_time = Some(min_time);
        self.max_time = Some(max_time);
        self
    }
}

/// Streams series, sorted by labels, into a new block.
pub struct BlockWriter {
    parent: PathBuf,
    ulid: Ulid,
    tmp: PathBuf,
    opts: BlockOptions,
    chunks: Option<ChunkWriter>,
    /// Interned strings → provisional ids (final ids are positions after sorting).
    symbol_ids: HashMap<Box<str>, u32>,
    symbols: Vec<Box<str>>,
    /// `None` once finished.
    series: Option<SeriesSpill>,
    last_labels: Option<Labels>,
    stats: BlockStats,
    min_t: i64,
    max_t: i64,
    done: bool,
}

impl BlockWriter {
    /// Starts a block under `parent` (which must exist), in `<ULID>.tmp-for-creation`.
    pub fn create(parent: impl AsRef<Path>, opts: BlockOptions) -> Result<Self> {
        let parent = parent.as_ref().to_path_buf();
        if let (Some(a), Some(b)) = (opts.min_time, opts.max_time)
            && a >= b
        {
            return Err(TsdbError::InvalidOption(format!(
                "block range [{a}, {b}) is empty"
            )));
        }
        let ulid = opts.ulid.unwrap_or_default();
        let tmp = parent.join(format!("{ulid}{TMP_SUFFIX}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TsdbError::io(&tmp, e))?;
        }
        let chunks_dir = tmp.join(CHUNKS_DIRNAME);
        fault::step(&chunks_dir)?;
        fs::create_dir_all(&chunks_dir).map_err(|e| TsdbError::io(&chunks_dir, e))?;
        let series = SeriesSpill::create(&tmp.join(SERIES_SPILL_FILENAME))?;
        let mut w = Self {
            chunks: Some(ChunkWriter::new(&chunks_dir, opts.segment_size)),
            parent,
            ulid,
            tmp,
            opts,
            symbol_ids: HashMap::new(),
            symbols: Vec::new(),
            series: Some(series),
            last_labels: None,
            stats: BlockStats::default(),
            min_t: i64::MAX,
            max_t: i64::MIN,
            done: false,
        };
        // The all-postings key ("", "") needs the empty symbol (Prometheus 2.42 writes it).
        w.intern("");
        Ok(w)
    }

    /// The id the block will have.
    pub fn ulid(&self) -> Ulid {
        self.ulid
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.symbol_ids.get(s) {
            return id;
        }
        let id = self.symbols.len() as u32;
        self.symbols.push(s.into());
        self.symbol_ids.insert(s.into(), id);
        id
    }

    /// Adds a series. Series must come in strictly ascending label order; chunks must hold
    /// XOR data, be sorted, not overlap, and lie in the block's range. A series without
    /// chunks is skipped (Prometheus never writes one).
    pub fn add_series(&mut self, labels: &Labels, chunks: &[ChunkMeta]) -> Result<()> {
        let invalid = |m: String| TsdbError::InvalidOption(format!("series {labels}: {m}"));
        if chunks.is_empty() {
            return Ok(());
        }
        if labels.is_empty() {
            return Err(invalid("a series needs at least one label".into()));
        }
        if labels
            .iter()
            .any(|l| l.name.is_empty() || l.value.is_empty())
        {
            return Err(invalid(
                "empty label names and values are not stored".into(),
            ));
        }
        if let Some(prev) = &self.last_labels
            && prev >= labels
        {
            return Err(invalid(format!(
                "out of order: series must be sorted by labels, and it follows {prev}"
            )));
        }
        let mut prev_max: Option<i64> = None;
        for c in chunks {
            let n = match c.data.as_slice() {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 0,
            };
            if n == 0 {
                return Err(invalid("empty or malformed chunk".into()));
            }
            if c.max_t < c.min_t || prev_max.is_some_and(|p| c.min_t <= p) {
                return Err(invalid(format!(
                    "chunk [{}, {}] overlaps or precedes the previous one",
                    c.min_t, c.max_t
                )));
            }
            if self.opts.min_time.is_some_and(|m| c.min_t < m)
                || self.opts.max_time.is_some_and(|m| c.max_t >= m)
            {
                return Err(invalid(format!(
                    "chunk [{}, {}] lies outside the block range",
                    c.min_t, c.max_t
                )));
            }
            prev_max = Some(c.max_t);
            self.stats.num_samples += u64::from(n);
        }
        let cw = self
            .chunks
            .as_mut()
            .ok_or_else(|| TsdbError::InvalidOption("block writer already finished".into()))?;
        // One call per series, as Prometheus' compactor, so segments are cut where it cuts.
        let raw: Vec<(u8, &[u8])> = chunks
            .iter()
            .map(|c| (ENCODING_XOR, c.data.as_slice()))
            .collect();
        let refs: Vec<ChunkRef> = cw
            .write_chunks(&raw)?
            .into_iter()
            .zip(chunks)
            .map(|(r, c)| ChunkRef {
                min_t: c.min_t,
                max_t: c.max_t,
                r,
            })
            .collect();
        let mut pairs = Vec::with_capacity(labels.len());
        for l in labels {
            let n = self.intern(&l.name);
            let v = self.intern(&l.value);
            pairs.push((n, v));
        }
        self.stats.num_series += 1;
        self.stats.num_chunks += chunks.len() as u64;
        self.min_t = self.min_t.min(chunks[0].min_t);
        self.max_t = self.max_t.max(chunks[chunks.len() - 1].max_t);
        self.series
            .as_mut()
            .ok_or_else(|| TsdbError::InvalidOption("block writer already finished".into()))?
            .push(&pairs, &refs)?;
        self.last_labels = Some(labels.clone());
        Ok(())
    }

    /// Writes the index, tombstones and meta.json, fsyncs everything and renames the
    /// directory into place. Returns the written meta.
    pub fn finish(mut self) -> Result<BlockMeta> {
        let cw = self
            .chunks
            .take()
            .ok_or_else(|| TsdbError::InvalidOption("block writer already finished".into()))?;
        let segments = cw.finish()?;

        let min_time = match self.opts.min_time {
            Some(t) => t,
            None if self.stats.num_series > 0 => self.min_t,
            None => {
                return Err(TsdbError::InvalidOption(
                    "a block without series needs an explicit time range".into(),
                ));
            }
        };
        let max_time = match self.opts.max_time {
            Some(t) => t,
            None => self.max_t.max(min_time).saturating_add(1),
        };
        if min_time >= max_time {
            return Err(TsdbError::InvalidOption(format!(
                "block range [{min_time}, {max_time}) is empty"
            )));
        }

        // Final symbol ids are positions in byte order; remap the provisional ones.
        let mut order: Vec<u32> = (0..self.symbols.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.symbols[a as usize].cmp(&self.symbols[b as usize]));
        let mut remap = vec![0u32; order.len()];
        for (fin, &tmp) in order.iter().enumerate() {
            remap[tmp as usize] = fin as u32;
        }
        let sorted: Vec<&[u8]> = order
            .iter()
            .map(|&i| self.symbols[i as usize].as_bytes())
            .collect();
        let index_path = self.tmp.join(INDEX_FILENAME);
        let mut iw = PosWriter::create(&index_path)?;
        let spill = self
            .series
            .take()
            .ok_or_else(|| TsdbError::InvalidOption("block writer already finished".into()))?;
        let mut series = spill.into_reader()?;
        write_index_with(&mut iw, &sorted, |s: &mut IndexSeries| {
            if !series.next_into(s)? {
                return Ok(false);
            }
            for p in &mut s.labels {
                *p = (remap[p.0 as usize], remap[p.1 as usize]);
            }
            Ok(true)
        })?;
        let index_size = iw.finish()?;
        drop((sorted, series));
        let spill_path = self.tmp.join(SERIES_SPILL_FILENAME);
        fs::remove_file(&spill_path).map_err(|e| TsdbError::io(&spill_path, e))?;

        write_file_synced(
            &self.tmp.join(TOMBSTONES_FILENAME),
            &Tombstones::default().encode(),
        )?;

        let ulid = self.ulid.to_string();
        let thanos = self.opts.thanos.take().map(|mut t| {
            t.version = THANOS_VERSION;
            t.downsample = ThanosDownsample {
                resolution: t.downsample.resolution,
            };
            t.segment_files = segments.iter().map(|(n, _)| n.clone()).collect();
            t.files = segments
                .iter()
                .map(|(n, size)| ThanosFile {
                    rel_path: format!("{CHUNKS_DIRNAME}/{n}"),
                    size_bytes: *size,
                })
                .chain([
                    ThanosFile {
                        rel_path: INDEX_FILENAME.to_string(),
                        size_bytes: index_size,
                    },
                    ThanosFile {
                        rel_path: META_FILENAME.to_string(),
                        size_bytes: 0,
                    },
                ])
                .collect();
            t
        });
        let sources = if self.opts.sources.is_empty() {
            vec![ulid.clone()]
        } else {
            let mut s = std::mem::take(&mut self.opts.sources);
            s.sort();
            s.dedup();
            s
        };
        let meta = BlockMeta {
            ulid: ulid.clone(),
            min_time,
            max_time,
            stats: self.stats,
            compaction: Compaction {
                level: self.opts.compaction_level.max(1),
                sources,
                parents: std::mem::take(&mut self.opts.parents),
                ..Compaction::default()
            },
            version: META_VERSION,
            thanos,
            extra: BTreeMap::new(),
        };
        write_file_synced(&self.tmp.join(META_FILENAME), &meta.to_json()?)?;
        sync_dir(&self.tmp.join(CHUNKS_DIRNAME))?;
        sync_dir(&self.tmp)?;

        let dest = self.parent.join(&ulid);
        if dest.exists() {
            return Err(TsdbError::InvalidOption(format!(
                "block directory {} already exists",
                dest.display()
            )));
        }
        fault::step(&dest)?;
        fs::rename(&self.tmp, &dest).map_err(|e| TsdbError::io(&dest, e))?;
        self.done = true;
        if let Err(e) = sync_dir(&self.parent) {
            // The rename may not survive a crash, so the caller must not count on the block:
            // take it away again rather than leave a block the caller believes was not written
            // (it would cut the same data again).
            let _ = fs::remove_dir_all(&dest);
            return Err(e);
        }
        tracing::debug!(
            block = %ulid,
            series = meta.stats.num_series,
            samples = meta.stats.num_samples,
            "block written"
        );
        Ok(meta)
    }
}

impl Drop for BlockWriter {
    /// An abandoned or failed write leaves no half-built directory behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Writes `series` (sorted by labels) as a block under `dir`; returns its meta.
pub fn write_block(
    dir: impl AsRef<Path>,
    series: impl IntoIterator<Item = SeriesChunks>,
    opts: BlockOptions,
) -> Result<BlockMeta> {
    let mut w = BlockWriter::create(dir, opts)?;
    for s in series {
        w.add_series(&s.labels, &s.chunks)?;
    }
    w.finish()
}

/// Encodes samples (strictly ascending timestamps) into XOR chunks of at most `per_chunk`
/// samples — Prometheus cuts re-encoded chunks at 120 ([`crate::chunkenc::SAMPLES_PER_CHUNK`]).
pub fn chunks_from_samples(samples: &[Sample], per_chunk: usize) -> Result<Vec<ChunkMeta>> {
    let per_chunk = per_chunk.clamp(1, usize::from(u16::MAX));
    if let Some(w) = samples.windows(2).find(|w| w[1].t <= w[0].t) {
        return Err(TsdbError::InvalidOption(format!(
            "samples out of order: {} after {}",
            w[1].t, w[0].t
        )));
    }
    Ok(samples
        .chunks(per_chunk)
        .map(|group| {
            let mut c = XorChunk::with_capacity(group.len() * 2 + 16);
            for s in group {
                c.append(s.t, s.v);
            }
            ChunkMeta {
                min_t: group[0].t,
                max_t: group[group.len() - 1].t,
                data: c.into_bytes().into_vec(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::chunks::tests::SPEC_SEGMENT;
    use crate::block::index::tests::{SPEC_INDEX, hex};

    fn spec_series() -> SeriesChunks {
        let samples = [
            Sample::new(1000, 1.0),
            Sample::new(2000, 1.0),
            Sample::new(3000, 2.0),
        ];
        SeriesChunks {
            labels: Labels::from_pairs([("__name__", "foo"), ("a", "b")]),
            chunks: chunks_from_samples(&samples, 120).unwrap(),
        }
    }

    #[test]
    fn spec_block_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let ulid: Ulid = "01M827DMG4XHMT31HS5KJK0VWH".parse().unwrap();
        let opts = BlockOptions {
            ulid: Some(ulid),
            ..BlockOptions::default()
        };
        let meta = write_block(dir.path(), [spec_series()], opts).unwrap();
        let b = dir.path().join(ulid.to_string());
        assert_eq!(fs::read(b.join("index")).unwrap(), hex(SPEC_INDEX));
        assert_eq!(fs::read(b.join("chunks/000001")).unwrap(), SPEC_SEGMENT);
        assert_eq!(
            fs::read(b.join("tombstones")).unwrap(),
            [1, 0x30, 0xBA, 0x30, 1, 0, 0, 0, 0]
        );
        // promtool's meta.json for the same data, except for the ULID we chose to match.
        let want = "{\n\t\"ulid\": \"01M827DMG4XHMT31HS5KJK0VWH\",\n\t\"minTime\": 1000,\n\t\"maxTime\": 3001,\n\t\"stats\": {\n\t\t\"numSamples\": 3,\n\t\t\"numSeries\": 1,\n\t\t\"numChunks\": 1\n\t},\n\t\"compaction\": {\n\t\t\"level\": 1,\n\t\t\"sources\": [\n\t\t\t\"01M827DMG4XHMT31HS5KJK0VWH\"\n\t\t]\n\t},\n\t\"version\": 1\n}";
        assert_eq!(fs::read_to_string(b.join("meta.json")).unwrap(), want);
        assert_eq!((meta.min_time, meta.max_time), (1000, 3001));
        assert!(!dir.path().join(format!("{ulid}{TMP_SUFFIX}")).exists());
    }

    #[test]
    fn thanos_section_lists_files() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BlockOptions::for_tenant("team-a", "receive", [("replica", "r1")])
            .with_range(0, 7_200_000);
        let meta = write_block(dir.path(), [spec_series()], opts).unwrap();
        let t = meta.thanos.unwrap();
        assert_eq!(t.labels["__org_id__"], "team-a");
        assert_eq!(t.labels["replica"], "r1");
        assert_eq!(t.version, 1);
        assert_eq!(t.segment_files, ["000001"]);
        let paths: Vec<_> = t.files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(paths, ["chunks/000001", "index", "meta.json"]);
        assert_eq!(t.files[0].size_bytes, 32);
        let text = fs::read_to_string(dir.path().join(&meta.ulid).join("meta.json")).unwrap();
        assert!(
            text.contains("\"downsample\": {\n\t\t\t\"resolution\": 0\n\t\t}"),
            "{text}"
        );
        assert!(text.contains("\"source\": \"receive\""));
    }

    #[test]
    fn rejects_bad_input_and_leaves_no_tmp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec_series();
        let mut w = BlockWriter::create(dir.path(), BlockOptions::default()).unwrap();
        w.add_series(&s.labels, &s.chunks).unwrap();
        assert!(
            w.add_series(&s.labels, &s.chunks).is_err(),
            "duplicate series"
        );
        let earlier = Labels::from_pairs([("__name__", "bar")]);
        assert!(w.add_series(&earlier, &s.chunks).is_err(), "out of order");
        let later = Labels::from_pairs([("__name__", "zzz")]);
        let mut overlapping = s.chunks.clone();
        overlapping.extend(s.chunks.clone());
        assert!(w.add_series(&later, &overlapping).is_err(), "overlap");
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        let opts = BlockOptions::default().with_range(0, 2000);
        let mut w = BlockWriter::create(dir.path(), opts).unwrap();
        assert!(w.add_series(&s.labels, &s.chunks).is_err(), "outside range");
        assert!(write_block(dir.path(), [], BlockOptions::default()).is_err());
        assert!(chunks_from_samples(&[Sample::new(2, 0.0), Sample::new(1, 0.0)], 120).is_err());
    }

    #[test]
    fn cuts_at_120_samples() {
        let samples: Vec<Sample> = (0..400)
            .map(|i| Sample::new(i * 15_000, i as f64))
            .collect();
        let chunks = chunks_from_samples(&samples, 120).unwrap();
        let sizes: Vec<u16> = chunks
            .iter()
            .map(|c| u16::from_be_bytes([c.data[0], c.data[1]]))
            .collect();
        assert_eq!(sizes, [120, 120, 120, 40]);
        assert_eq!(chunks[1].min_t, 120 * 15_000);
        assert_eq!(chunks[3].max_t, 399 * 15_000);
    }
}
