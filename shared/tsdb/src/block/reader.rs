//! Opens a block directory and answers queries over it.
//!
//! [`Block::open`] parses and validates `meta.json`, memory-maps the index and the chunk
//! segments, checks the index TOC, symbol table and postings offset table (with CRCs), the
//! segment headers (numbered 1…N without gaps) and the tombstones; when meta.json has a
//! Thanos section it also checks the segment names and file sizes listed there, so a
//! missing or truncated file is reported at open. Series entries, postings lists and chunks are
//! CRC-checked as they are read; any failure makes the whole call fail with an error naming
//! the file and the problem, so a damaged block never serves partial data.
//! [`Block::verify`] checks every byte a query could touch, for the compactor and tests.
//!
//! Matchers resolve to series refs the way Prometheus' `PostingsForMatchers` does (spec §7):
//! matchers that cannot match the empty string intersect, the others subtract the series
//! whose value fails them, and only-subtracting selections start from all postings.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use norn_model::query::encode_samples;
use norn_model::{
    ChunkSeries, EncodedChunk, Labels, Matcher, Sample, SampleBudget, Series, ShardSelector,
};

use super::chunks::ChunkReader;
use super::index::{ChunkRef, IndexReader, SeriesEntry};
use super::meta::BlockMeta;
use super::postings::PostingsPlan;
use super::tombstones::Tombstones;
use super::writer::chunks_from_samples;
use super::{CHUNKS_DIRNAME, INDEX_FILENAME, META_FILENAME, TOMBSTONES_FILENAME};
use crate::chunkenc::{ENCODING_XOR, SAMPLES_PER_CHUNK, XorIterator};
use crate::error::{Result, TsdbError};
use crate::head::{ChunkMeta, SeriesChunks};

/// One series of a block as its files hold it ([`Block::raw_series`]).
#[derive(Debug)]
pub struct RawSeries<'a> {
    pub labels: Labels,
    pub chunks: Vec<RawSeriesChunk<'a>>,
    /// Deleted intervals `[mint, maxt]` (both inclusive) from the tombstones.
    pub deleted: &'a [(i64, i64)],
}

/// One chunk of a [`RawSeries`]: its index entry's range and its bytes in the segment.
#[derive(Debug, Clone, Copy)]
pub struct RawSeriesChunk<'a> {
    pub min_t: i64,
    pub max_t: i64,
    pub encoding: u8,
    pub data: &'a [u8],
}

/// An open, validated block.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    index: IndexReader,
    chunks: ChunkReader,
    tombstones: Tombstones,
    meta_size: u64,
    tombstones_size: u64,
    /// Chunks with a non-XOR encoding (native histograms, Thanos aggregates) skipped so far.
    skipped_chunks: AtomicU64,
}

impl Block {
    /// Opens and validates the block in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let meta_path = dir.join(META_FILENAME);
        let meta_bytes = std::fs::read(&meta_path).map_err(|e| TsdbError::io(&meta_path, e))?;
        let meta = BlockMeta::from_json(&meta_bytes, &meta_path)?;
        let index = IndexReader::open(&dir.join(INDEX_FILENAME))?;
        let chunks = ChunkReader::open(&dir.join(CHUNKS_DIRNAME))?;
        Self::check_files(&dir, &meta, &index, &chunks)?;
        let ts_path = dir.join(TOMBSTONES_FILENAME);
        // Very old blocks may lack the file; Prometheus treats that as "no tombstones".
        let (tombstones, tombstones_size) = match std::fs::read(&ts_path) {
            Ok(b) => (Tombstones::decode(&b, &ts_path)?, b.len() as u64),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Tombstones::default(), 0),
            Err(e) => return Err(TsdbError::io(&ts_path, e)),
        };
        Ok(Self {
            dir,
            meta,
            index,
            chunks,
            tombstones,
            meta_size: meta_bytes.len() as u64,
            tombstones_size,
            skipped_chunks: AtomicU64::new(0),
        })
    }

    /// Cheap cross-checks at open that catch a missing or truncated file before a query
    /// trips over it: series without any chunk segment, and (when meta.json has a Thanos
    /// section, as every block Thanos or Mimir uploaded does) the listed segment names
    /// and file sizes.
    fn check_files(
        dir: &Path,
        meta: &BlockMeta,
        index: &IndexReader,
        chunks: &ChunkReader,
    ) -> Result<()> {
        let chunks_dir = dir.join(CHUNKS_DIRNAME);
        if chunks.num_segments() == 0 && (meta.stats.num_chunks > 0 || index.num_series()? > 0) {
            return Err(TsdbError::Corrupt {
                path: chunks_dir.join(super::chunks::segment_name(1)),
                msg: "chunk segment is missing: the block has series but no chunk files".into(),
            });
        }
        let Some(thanos) = &meta.thanos else {
            return Ok(());
        };
        let meta_path = dir.join(META_FILENAME);
        if !thanos.segment_files.is_empty() {
            let have: Vec<String> = chunks
                .segments()
                .map(|(p, _)| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            if have != thanos.segment_files {
                let missing = thanos.segment_files.iter().find(|f| !have.contains(f));
                return Err(TsdbError::Corrupt {
                    path: missing.map_or_else(|| meta_path.clone(), |f| chunks_dir.join(f)),
                    msg: format!(
                        "chunk segments {have:?} differ from the {:?} meta.json lists",
                        thanos.segment_files
                    ),
                });
            }
        }
        let mut sizes: Vec<(String, PathBuf, u64)> = chunks
            .segments()
            .map(|(p, n)| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                (format!("{CHUNKS_DIRNAME}/{name}"), p.to_path_buf(), n)
            })
            .collect();
        sizes.push((
            INDEX_FILENAME.to_string(),
            index.path().to_path_buf(),
            index.size_bytes(),
        ));
        for f in &thanos.files {
            if f.size_bytes == 0 {
                continue;
            }
            match sizes.iter().find(|(rel, _, _)| *rel == f.rel_path) {
                Some((_, path, n)) if *n != f.size_bytes => {
                    return Err(TsdbError::Corrupt {
                        path: path.clone(),
                        msg: format!(
                            "file is {n} bytes but meta.json lists {} (truncated or replaced?)",
                            f.size_bytes
                        ),
                    });
                }
                None if f.rel_path.starts_with(&format!("{CHUNKS_DIRNAME}/")) => {
                    return Err(TsdbError::Corrupt {
                        path: dir.join(&f.rel_path),
                        msg: "chunk segment listed in meta.json is missing".into(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The block directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Parsed `meta.json`.
    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// Bytes of all the block's files (what `promtool tsdb list` reports as SIZE).
    pub fn size_bytes(&self) -> u64 {
        self.index.size_bytes() + self.chunks.size_bytes() + self.meta_size + self.tombstones_size
    }

    /// Number of non-float chunks skipped by reads so far (histograms are not served yet).
    pub fn skipped_chunks(&self) -> u64 {
        self.skipped_chunks.load(Ordering::Relaxed)
    }

    /// Float series matching `matchers` with their samples in `[mint, maxt]` (both
    /// inclusive, as a PromQL select), sorted by labels. Series with no sample in the range
    /// are left out. Samples under tombstones are dropped.
    pub fn select(&self, mint: i64, maxt: i64, matchers: &[Matcher]) -> Result<Vec<Series>> {
        self.select_within(mint, maxt, matchers, &SampleBudget::unlimited())
    }

    /// [`select`](Self::select) that stops reading once `budget` is spent (the answer is
    /// then incomplete: the caller checks the budget).
    pub fn select_within(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>> {
        let mut out = Vec::new();
        let mut skipped = 0;
        let (refs, shard) = self.select_refs(matchers)?;
        for r in refs {
            let s = self.index.series(r)?;
            if shard.is_some_and(|sh| !sh.contains(&s.labels)) {
                continue;
            }
            let deleted = self.tombstones.get(u64::from(r));
            let mut samples = Vec::new();
            for c in overlapping(&s.chunks, mint, maxt) {
                let Some(data) = self.xor_chunk(c, &s, &mut skipped)? else {
                    continue;
                };
                self.decode_into(data, c, &s, |t, v| {
                    if t >= mint && t <= maxt && !Tombstones::is_deleted(deleted, t) {
                        samples.push(Sample::new(t, v));
                    }
                })?;
            }
            if !budget.charge(samples.len()) {
                break;
            }
            if !samples.is_empty() {
                out.push(Series {
                    labels: s.labels,
                    samples,
                });
            }
        }
        self.note_skipped(skipped);
        Ok(out)
    }

    /// Float series matching `matchers` with their chunks overlapping `[mint, maxt]` as the
    /// chunk files hold them (not cut to the range, not decoded), sorted by labels, charging
    /// `budget` with the samples inside the range and stopping once it is spent (the caller
    /// checks the budget). A chunk touched by a tombstone is re-encoded without the deleted
    /// samples.
    pub fn select_chunks_within(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>> {
        let count = !budget.is_unlimited();
        let mut out = Vec::new();
        let mut skipped = 0;
        let (refs, shard) = self.select_refs(matchers)?;
        for r in refs {
            let s = self.index.series(r)?;
            if shard.is_some_and(|sh| !sh.contains(&s.labels)) {
                continue;
            }
            let deleted = self.tombstones.get(u64::from(r));
            let mut chunks = Vec::new();
            for c in overlapping(&s.chunks, mint, maxt) {
                let Some(data) = self.xor_chunk(c, &s, &mut skipped)? else {
                    continue;
                };
                if deleted.is_empty() {
                    let data = Bytes::copy_from_slice(data);
                    chunks.push(EncodedChunk::xor(c.min_t, c.max_t, data));
                    continue;
                }
                let mut samples = Vec::new();
                self.decode_into(data, c, &s, |t, v| {
                    if !Tombstones::is_deleted(deleted, t) {
                        samples.push(Sample::new(t, v));
                    }
                })?;
                chunks.extend(encode_samples(&samples));
            }
            if count {
                let n: usize = chunks.iter().map(|c| c.samples_in(mint, maxt)).sum();
                if !budget.charge(n) {
                    break;
                }
                if n == 0 {
                    continue;
                }
            }
            if !chunks.is_empty() {
                out.push(ChunkSeries {
                    labels: s.labels,
                    chunks,
                });
            }
        }
        self.note_skipped(skipped);
        Ok(out)
    }

    /// Raw XOR chunks overlapping `[mint, maxt]` of the series matching `matchers`, for
    /// compaction and streaming to queriers: chunks are not clipped to the range. A chunk
    /// touched by a tombstone is re-encoded without the deleted samples.
    pub fn series_chunks(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<SeriesChunks>> {
        let mut out = Vec::new();
        let mut skipped = 0;
        let (refs, shard) = self.select_refs(matchers)?;
        for r in refs {
            let s = self.index.series(r)?;
            if shard.is_some_and(|sh| !sh.contains(&s.labels)) {
                continue;
            }
            let deleted = self.tombstones.get(u64::from(r));
            let mut chunks = Vec::new();
            for c in overlapping(&s.chunks, mint, maxt) {
                let Some(data) = self.xor_chunk(c, &s, &mut skipped)? else {
                    continue;
                };
                // Decoding proves the chunk is intact before it is handed on.
                let mut samples = Vec::new();
                self.decode_into(data, c, &s, |t, v| {
                    if !Tombstones::is_deleted(deleted, t) {
                        samples.push(Sample::new(t, v));
                    }
                })?;
                let n = u16::from_be_bytes([data[0], data[1]]);
                if samples.len() == usize::from(n) {
                    chunks.push(ChunkMeta {
                        min_t: c.min_t,
                        max_t: c.max_t,
                        data: data.to_vec(),
                    });
                } else if !samples.is_empty() {
                    chunks.extend(chunks_from_samples(
                        &samples,
                        usize::from(SAMPLES_PER_CHUNK),
                    )?);
                }
            }
            if !chunks.is_empty() {
                out.push(SeriesChunks {
                    labels: s.labels,
                    chunks,
                });
            }
        }
        self.note_skipped(skipped);
        Ok(out)
    }

    /// Every series ref, ascending, which is label order: the compactor streams a block by them
    /// (4 bytes a series) instead of loading it.
    pub fn series_refs(&self) -> Result<Vec<u32>> {
        self.index.all_postings()
    }

    /// Series `r` as stored: labels, its chunks in index order (CRC-checked, not decoded, any
    /// encoding) and its tombstones. The caller decodes and checks the samples.
    pub fn raw_series(&self, r: u32) -> Result<RawSeries<'_>> {
        let s = self.index.series(r)?;
        let mut chunks = Vec::with_capacity(s.chunks.len());
        for c in &s.chunks {
            let raw = self.chunks.chunk(c.r)?;
            chunks.push(RawSeriesChunk {
                min_t: c.min_t,
                max_t: c.max_t,
                encoding: raw.encoding,
                data: raw.data,
            });
        }
        Ok(RawSeries {
            labels: s.labels,
            chunks,
            deleted: self.tombstones.get(u64::from(r)),
        })
    }

    /// Label names of the series matching `matchers` (all names when there are none), sorted.
    pub fn label_names(&self, matchers: &[Matcher]) -> Result<Vec<String>> {
        if matchers.is_empty() {
            return Ok(self.index.label_names().map(str::to_string).collect());
        }
        let mut names = std::collections::BTreeSet::new();
        let (refs, shard) = self.select_refs(matchers)?;
        for r in refs {
            let labels = self.index.series(r)?.labels;
            if shard.is_some_and(|sh| !sh.contains(&labels)) {
                continue;
            }
            for l in &labels {
                if !names.contains(&l.name) {
                    names.insert(l.name.clone());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Values of label `name` among the series matching `matchers` (all values when there
    /// are none), sorted.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Result<Vec<String>> {
        if matchers.is_empty() {
            return Ok(self
                .index
                .values(name)
                .iter()
                .map(|(v, _)| v.clone())
                .collect());
        }
        let mut values = std::collections::BTreeSet::new();
        let (refs, shard) = self.select_refs(matchers)?;
        for r in refs {
            let labels = self.index.series(r)?.labels;
            if shard.is_some_and(|sh| !sh.contains(&labels)) {
                continue;
            }
            if let Some(v) = labels.get(name)
                && !values.contains(v)
            {
                values.insert(v.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }

    /// Reads every series, postings list and chunk and checks that the index agrees with
    /// `meta.json`: proof that nothing a query could touch is damaged.
    pub fn verify(&self) -> Result<()> {
        // Disagreements between meta.json (which has no checksum) and the checksummed
        // index and chunks are blamed on meta.json.
        let corrupt = |msg: String| TsdbError::Corrupt {
            path: self.dir.join(META_FILENAME),
            msg,
        };
        let all = self.index.all_postings()?;
        for name in self.index.label_names() {
            for (_, off) in self.index.values(name) {
                self.index.postings_at(*off)?;
            }
        }
        let (mut nchunks, mut nsamples) = (0u64, 0u64);
        let mut prev: Option<Labels> = None;
        for &r in &all {
            let s = self.index.series(r)?;
            if prev.as_ref().is_some_and(|p| p >= &s.labels) {
                return Err(TsdbError::Corrupt {
                    path: self.index.path().to_path_buf(),
                    msg: format!("series {} is out of order", s.labels),
                });
            }
            for c in &s.chunks {
                let raw = self.chunks.chunk(c.r)?;
                nchunks += 1;
                if raw.encoding == ENCODING_XOR {
                    nsamples += self.decode_into(raw.data, c, &s, |_, _| {})?;
                } else {
                    nsamples += u64::from(u16::from_be_bytes(
                        raw.data
                            .get(..2)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0, 0]),
                    ));
                }
                if c.min_t < self.meta.min_time || c.max_t >= self.meta.max_time {
                    return Err(corrupt(format!(
                        "series {}: chunk [{}, {}] outside the block range [{}, {})",
                        s.labels, c.min_t, c.max_t, self.meta.min_time, self.meta.max_time
                    )));
                }
            }
            prev = Some(s.labels);
        }
        self.chunks.verify_all()?;
        let st = &self.meta.stats;
        let mismatch = |what: &str, meta: u64, index: u64| {
            corrupt(format!(
                "meta.json says {meta} {what}, the block holds {index}"
            ))
        };
        if st.num_series != 0 && st.num_series != all.len() as u64 {
            return Err(mismatch("series", st.num_series, all.len() as u64));
        }
        if st.num_chunks != 0 && st.num_chunks != nchunks {
            return Err(mismatch("chunks", st.num_chunks, nchunks));
        }
        if st.num_samples != 0 && st.num_samples != nsamples {
            return Err(mismatch("samples", st.num_samples, nsamples));
        }
        Ok(())
    }

    /// Reads the chunk behind `c`; `None` (counted) when it is not an XOR chunk.
    fn xor_chunk(&self, c: &ChunkRef, s: &SeriesEntry, skipped: &mut u64) -> Result<Option<&[u8]>> {
        let raw = self.chunks.chunk(c.r)?;
        if raw.encoding != ENCODING_XOR {
            *skipped += 1;
            tracing::debug!(
                block = %self.meta.ulid,
                series = %s.labels,
                encoding = raw.encoding,
                "skipping non-float chunk"
            );
            return Ok(None);
        }
        if raw.data.len() < 2 {
            return Err(self.chunk_corrupt(c, s, "shorter than its header"));
        }
        Ok(Some(raw.data))
    }

    /// Decodes XOR data, checking it holds the samples it claims inside `[min_t, max_t]`.
    fn decode_into(
        &self,
        data: &[u8],
        c: &ChunkRef,
        s: &SeriesEntry,
        mut f: impl FnMut(i64, f64),
    ) -> Result<u64> {
        let mut it = XorIterator::new(data);
        let want = u64::from(it.num_samples());
        let mut n = 0u64;
        let mut last = i64::MIN;
        for (t, v) in it.by_ref() {
            if t < c.min_t || t > c.max_t || (n > 0 && t <= last) {
                return Err(self.chunk_corrupt(c, s, "sample time outside the chunk's range"));
            }
            last = t;
            n += 1;
            f(t, v);
        }
        if it.error().is_some() || n != want {
            return Err(self.chunk_corrupt(c, s, "XOR data is truncated or malformed"));
        }
        Ok(n)
    }

    fn chunk_corrupt(&self, c: &ChunkRef, s: &SeriesEntry, msg: &str) -> TsdbError {
        TsdbError::Corrupt {
            path: self
                .dir
                .join(CHUNKS_DIRNAME)
                .join(super::chunks::segment_name((c.r >> 32) + 1)),
            msg: format!(
                "chunk ref {:#x} of series {} ({}..{}): {msg}",
                c.r, s.labels, c.min_t, c.max_t
            ),
        }
    }

    fn note_skipped(&self, skipped: u64) {
        if skipped > 0 {
            self.skipped_chunks.fetch_add(skipped, Ordering::Relaxed);
            tracing::warn!(
                block = %self.meta.ulid,
                chunks = skipped,
                "skipped non-float chunks (histograms are not supported yet)"
            );
        }
    }

    /// Series refs matching every matcher but a `__query_shard__` one, and that shard: the
    /// callers read each series' labels anyway and skip those of other shards before any
    /// chunk is read (see [`norn_model::shard`]). A malformed shard matcher matches nothing;
    /// the queryable over blocks refuses it before it gets here.
    fn select_refs(&self, matchers: &[Matcher]) -> Result<(Vec<u32>, Option<ShardSelector>)> {
        match ShardSelector::split(matchers) {
            Ok((rest, shard)) => Ok((self.postings_for_matchers(&rest)?, shard)),
            Err(_) => Ok((Vec::new(), None)),
        }
    }

    /// Series refs matching every matcher, ascending (spec §7).
    pub fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u32>> {
        let plan = PostingsPlan::new(
            matchers,
            |n| self.index.values(n),
            self.index.table().all_postings,
        );
        let offsets = plan.offsets();
        let mut lists = Vec::with_capacity(offsets.len());
        for &off in &offsets {
            lists.push(self.index.postings_at(off)?);
        }
        plan.resolve(|off| {
            offsets
                .binary_search(&off)
                .ok()
                .map(|i| lists[i].as_slice())
        })
        .map_err(|msg| TsdbError::Corrupt {
            path: self.index.path().to_path_buf(),
            msg,
        })
    }
}

fn overlapping(chunks: &[ChunkRef], mint: i64, maxt: i64) -> impl Iterator<Item = &ChunkRef> {
    chunks
        .iter()
        .filter(move |c| c.max_t >= mint && c.min_t <= maxt)
}

/// Opens a block from bytes already in memory (unit tests of the reader without files).
#[cfg(test)]
pub(crate) fn index_from_bytes(b: Vec<u8>) -> Result<IndexReader> {
    IndexReader::from_bytes(Path::new("index"), super::io::FileBytes::Owned(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_index_parses_without_files() {
        let r = index_from_bytes(crate::block::index::tests::hex(
            crate::block::index::tests::SPEC_INDEX,
        ))
        .unwrap();
        assert_eq!(r.values("__name__").len(), 1);
    }
}
