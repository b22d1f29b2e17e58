//! The head's read path: selections for PromQL, label names and values, and whole chunks
//! for the block writer.
//!
//! Matchers resolve to sorted series ids through the postings index; each series' chunks
//! are decoded for the requested range ([`Head::select`]), or handed out as they are
//! ([`Head::select_chunks`]: closed chunks from `chunks_head/`, the open chunk joined from
//! its spilled bytes and its tail, none cut to the range) for readers that ship them on.
//! [`HeadQueryable`] exposes both as a [`Queryable`] for the PromQL engine and the
//! ingester's query stream, and [`Head::series_chunks`] hands whole chunks to the block
//! writer.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use norn_model::{
    ChunkSeries, EncodedChunk, Matcher, Queryable, SampleBudget, Series, StorageError,
};

use super::Head;
use super::outcomes::{ChunkMeta, SeriesChunks};

impl Head {
    /// Series matching every matcher with their samples in `[mint, maxt]`, sorted by labels;
    /// series without samples in the range are left out.
    pub fn select(&self, mint: i64, maxt: i64, matchers: &[Matcher]) -> Vec<Series> {
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
    ) -> Vec<Series> {
        let matched = self.index.matching(matchers);
        read_in_parts(&matched, |part| {
            let mut out = Vec::new();
            for s in part {
                let samples = s.state.lock().samples_for_query(mint, maxt, self.store());
                if !budget.charge(samples.len()) {
                    break;
                }
                if !samples.is_empty() {
                    out.push(Series {
                        labels: self.index.labels_of(s),
                        samples,
                    });
                }
            }
            out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
            out
        })
    }

    /// [`select_within`](Self::select_within) keeping each series' newest sample only
    /// (an instant selector at one time), charged one sample per series.
    pub fn select_last_within(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Vec<Series> {
        let mut out = Vec::new();
        for s in self.index.matching(matchers) {
            let last = s
                .state
                .lock()
                .last_sample_for_query(mint, maxt, self.store());
            let Some(last) = last else { continue };
            if !budget.charge(1) {
                break;
            }
            out.push(Series {
                labels: self.index.labels_of(&s),
                samples: vec![last],
            });
        }
        out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Series matching every matcher with their chunks overlapping `[mint, maxt]`, as they
    /// are stored (not cut to the range), sorted by labels.
    pub fn select_chunks(&self, mint: i64, maxt: i64, matchers: &[Matcher]) -> Vec<ChunkSeries> {
        self.select_chunks_within(mint, maxt, matchers, &SampleBudget::unlimited())
    }

    /// [`select_chunks`](Self::select_chunks) that charges `budget` with each series'
    /// samples inside `[mint, maxt]` (what [`select_within`](Self::select_within) would
    /// charge) and stops once it is spent (the caller checks the budget). Counting walks only
    /// the chunks at the range's edges, and nothing at all for an unlimited budget.
    pub fn select_chunks_within(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Vec<ChunkSeries> {
        let count = !budget.is_unlimited();
        let matched = self.index.matching(matchers);
        read_in_parts(&matched, |part| {
            let mut out = Vec::new();
            // A series' chunks are copied into one buffer and handed out as slices of it:
            // one allocation a series, not one a chunk. Sized from the last series of the
            // part, as a selector's series mostly hold about as many bytes.
            let mut size_hint = 256;
            let mut spans: Vec<(i64, i64, usize, usize)> = Vec::new();
            for s in part {
                let mut buf: Vec<u8> = Vec::with_capacity(size_hint);
                spans.clear();
                s.state
                    .lock()
                    .chunks_for_query(mint, maxt, self.store(), |min_t, max_t, data| {
                        let at = buf.len();
                        buf.extend_from_slice(data);
                        spans.push((min_t, max_t, at, buf.len()));
                    });
                size_hint = (buf.len() + buf.len() / 8).clamp(64, 1 << 16);
                // The buffer is held as long as the chunks: no more than a little slack.
                if buf.capacity() > buf.len() + buf.len() / 4 + 64 {
                    buf.shrink_to_fit();
                }
                let all = Bytes::from(buf);
                let chunks: Vec<EncodedChunk> = spans
                    .iter()
                    .map(|&(min_t, max_t, from, to)| {
                        EncodedChunk::xor(min_t, max_t, all.slice(from..to))
                    })
                    .collect();
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
                        labels: self.index.labels_of(s),
                        chunks,
                    });
                }
            }
            out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
            out
        })
    }

    /// Whether `[mint, maxt]` overlaps the head's data.
    fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        match (self.min_time(), self.max_time()) {
            (Some(lo), Some(hi)) => lo <= maxt && hi >= mint,
            _ => false,
        }
    }

    /// Sorted label names of series matching `matchers` (all series when empty) with data
    /// in `[mint, maxt]`. Without matchers, every indexed name when the range overlaps the
    /// head (as Prometheus' head does).
    pub fn label_names(&self, mint: i64, maxt: i64, matchers: &[Matcher]) -> Vec<String> {
        if !self.overlaps(mint, maxt) {
            return Vec::new();
        }
        let mut syms: Vec<u32> = if matchers.is_empty() {
            self.index.postings.read().names().collect()
        } else {
            let mut syms = Vec::new();
            for s in self.index.matching(matchers) {
                if s.state.lock().overlaps(mint, maxt) {
                    syms.extend(s.labels().chunks_exact(2).map(|p| p[0]));
                }
            }
            syms
        };
        syms.sort_unstable();
        syms.dedup();
        let mut names: Vec<String> = syms
            .into_iter()
            .map(|s| self.index.symbols.get(s).to_string())
            .collect();
        names.sort_unstable();
        names
    }

    /// Sorted values of label `name` over series matching `matchers` with data in
    /// `[mint, maxt]`. Without matchers, every indexed value when the range overlaps.
    pub fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Vec<String> {
        if !self.overlaps(mint, maxt) {
            return Vec::new();
        }
        let Some(name_sym) = self.index.symbols.lookup(name) else {
            return Vec::new();
        };
        let mut syms: Vec<u32> = if matchers.is_empty() {
            self.index.postings.read().values(name_sym).collect()
        } else {
            let mut syms = Vec::new();
            for s in self.index.matching(matchers) {
                if let Some(p) = s.labels().chunks_exact(2).find(|p| p[0] == name_sym)
                    && s.state.lock().overlaps(mint, maxt)
                {
                    syms.push(p[1]);
                }
            }
            syms
        };
        syms.sort_unstable();
        syms.dedup();
        let mut values: Vec<String> = syms
            .into_iter()
            .map(|s| self.index.symbols.get(s).to_string())
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_unstable();
        values
    }

    /// Every series with samples in `[mint, maxt]` and its chunks overlapping that range,
    /// sorted by labels (input for the block writer). Chunks never straddle a multiple of
    /// the block range, so for an aligned range they lie entirely inside it.
    pub fn series_chunks(&self, mint: i64, maxt: i64) -> Vec<SeriesChunks> {
        let mut out = Vec::new();
        for s in self.index.matching(&[]) {
            let chunks: Vec<ChunkMeta> = s
                .state
                .lock()
                .chunks(mint, maxt, self.store())
                .map(|(min_t, max_t, data)| ChunkMeta {
                    min_t,
                    max_t,
                    data: data.bytes().to_vec(),
                })
                .collect();
            if !chunks.is_empty() {
                out.push(SeriesChunks {
                    labels: self.index.labels_of(&s),
                    chunks,
                });
            }
        }
        out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

/// A head as a PromQL [`Queryable`].
#[derive(Debug, Clone)]
pub struct HeadQueryable(pub Arc<Head>);

#[async_trait]
impl Queryable for HeadQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        check_shard(matchers)?;
        Ok(self.0.select(start_ms, end_ms, matchers))
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        check_shard(matchers)?;
        let got = self.0.select_within(start_ms, end_ms, matchers, budget);
        budget.check()?;
        Ok(got)
    }

    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        check_shard(matchers)?;
        let got = self
            .0
            .select_last_within(start_ms, end_ms, matchers, budget);
        budget.check()?;
        Ok(got)
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        check_shard(matchers)?;
        Ok(self.0.select_chunks(start_ms, end_ms, matchers))
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        check_shard(matchers)?;
        let got = self
            .0
            .select_chunks_within(start_ms, end_ms, matchers, budget);
        budget.check()?;
        Ok(got)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        check_shard(matchers)?;
        Ok(self.0.label_names(start_ms, end_ms, matchers))
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        check_shard(matchers)?;
        Ok(self.0.label_values(name, start_ms, end_ms, matchers))
    }
}

/// Refuses a malformed `__query_shard__` matcher (the head's lookups would match nothing).
fn check_shard(matchers: &[Matcher]) -> Result<(), StorageError> {
    norn_model::ShardSelector::split(matchers)?;
    Ok(())
}

/// Fewest matched series worth a thread of their own when a selection is read in parts.
const MIN_SERIES_PER_PART: usize = if cfg!(test) { 2 } else { 2048 };
/// Most threads one selection is read on.
const MAX_PARTS: usize = 4;

/// Reads `matched` with `read` (which returns its part's series sorted by labels), on several
/// threads when there are many, and joins the parts in label order. A selection over a
/// million series spends most of its time copying chunks and building label sets, series by
/// series: work that splits evenly.
fn read_in_parts<T, F>(matched: &[Arc<super::series::MemSeries>], read: F) -> Vec<T>
where
    T: Send + Labelled,
    F: Fn(&[Arc<super::series::MemSeries>]) -> Vec<T> + Sync,
{
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let parts = (matched.len() / MIN_SERIES_PER_PART).clamp(1, cores.min(MAX_PARTS));
    if parts == 1 {
        return read(matched);
    }
    let per = matched.len().div_ceil(parts);
    let read = &read;
    let lists: Vec<Vec<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = matched
            .chunks(per)
            .map(|part| scope.spawn(move || read(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    // The parts are distinct series of one head, so no two share labels and `join` never
    // runs.
    let merged = norn_model::merge_by_labels(lists, Labelled::labels, |first, _| {
        Ok::<_, std::convert::Infallible>(first)
    });
    match merged {
        Ok(all) => all,
        Err(never) => match never {},
    }
}

/// A selection's element, ordered by its labels.
trait Labelled {
    fn labels(&self) -> &norn_model::Labels;
}

impl Labelled for Series {
    fn labels(&self) -> &norn_model::Labels {
        &self.labels
    }
}

impl Labelled for ChunkSeries {
    fn labels(&self) -> &norn_model::Labels {
        &self.labels
    }
}
