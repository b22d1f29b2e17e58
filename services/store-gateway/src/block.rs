//! One owned block: its index-header (built in the background, opened lazily, closed when
//! idle) and the queries answered from it with ranged reads.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use norn_model::{ChunkSeries, EncodedChunk, Matcher, ShardSelector};
use norn_tsdb::block::index::SeriesEntry;
use norn_tsdb::block::postings::PostingsPlan;
use norn_tsdb::chunkenc::ENCODING_XOR;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::fetch::{BlockFetcher, Ctx, FetchStats};
use crate::header::{HEADER_FILENAME, IndexHeader};
use crate::metrics::StoreGatewayMetrics;

/// Where a block's header stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderState {
    /// Being built (or checked on disk); queries wait.
    Building,
    /// On disk and valid.
    Ready,
    /// The build failed; queries naming the block fail until a later sync rebuilds it.
    /// `corrupt`: the index itself is damaged (else the bucket could not be read).
    Failed { msg: String, corrupt: bool },
}

/// A block this store-gateway owns.
pub struct LoadedBlock {
    pub tenant: String,
    pub id: String,
    pub min_time: i64,
    /// Exclusive, as in meta.json.
    pub max_time: i64,
    pub(crate) fetcher: BlockFetcher,
    dir: PathBuf,
    state: watch::Sender<HeaderState>,
    header: Mutex<Option<Arc<IndexHeader>>>,
    open_lock: tokio::sync::Mutex<()>,
    /// Milliseconds since `epoch` when the header was last used.
    last_used: AtomicU64,
    epoch: Instant,
    lazy: bool,
    metrics: StoreGatewayMetrics,
}

impl LoadedBlock {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tenant: &str,
        id: &str,
        min_time: i64,
        max_time: i64,
        fetcher: BlockFetcher,
        dir: PathBuf,
        lazy: bool,
        epoch: Instant,
        metrics: StoreGatewayMetrics,
    ) -> Self {
        Self {
            tenant: tenant.to_string(),
            id: id.to_string(),
            min_time,
            max_time,
            fetcher,
            dir,
            state: watch::channel(HeaderState::Building).0,
            header: Mutex::new(None),
            open_lock: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
            epoch,
            lazy,
            metrics,
        }
    }

    pub fn header_path(&self) -> PathBuf {
        self.dir.join(HEADER_FILENAME)
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn state(&self) -> HeaderState {
        self.state.borrow().clone()
    }

    /// Whether `[mint, maxt]` (inclusive) overlaps the block.
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.min_time <= maxt && self.max_time > mint
    }

    /// Makes the header ready: reuses a valid one on disk (no bucket read), else builds it.
    pub(crate) async fn load(&self) {
        self.state.send_replace(HeaderState::Building);
        let path = self.header_path();
        let opened = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || IndexHeader::open(&p))
                .await
                .map_err(|e| Error::Io(e.to_string()))
                .and_then(|r| r)
        };
        let result = match opened {
            Ok(h) => {
                self.install(h);
                Ok(())
            }
            Err(e) => {
                if path.exists() {
                    tracing::warn!(
                        tenant = %self.tenant, block = %self.id, error = %e,
                        "index-header on disk is invalid; rebuilding it from the bucket"
                    );
                }
                self.metrics.header_builds.inc();
                match crate::header::build(self.fetcher.bucket(), self.fetcher.index_key(), &path)
                    .await
                {
                    Ok(stats) => {
                        self.metrics
                            .bucket_bytes_fetched
                            .with_label_values(&["index-header"])
                            .inc_by(stats.bytes_fetched);
                        self.metrics
                            .bucket_requests
                            .with_label_values(&["index-header"])
                            .inc_by(stats.requests);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        // Without lazy loading every header stays mapped from load to unload.
        let result = match result {
            Ok(()) if !self.lazy && !self.is_open() => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || IndexHeader::open(&p))
                    .await
                    .map_err(|e| Error::Io(e.to_string()))
                    .and_then(|r| r)
                    .map(|h| {
                        self.install(h);
                    })
            }
            r => r,
        };
        match result {
            Ok(()) => {
                self.state.send_replace(HeaderState::Ready);
            }
            Err(e) => {
                self.metrics.header_build_failures.inc();
                tracing::error!(
                    tenant = %self.tenant, block = %self.id, error = %e,
                    "cannot build the block's index-header; queries for it fail until it builds"
                );
                self.state.send_replace(HeaderState::Failed {
                    msg: e.to_string(),
                    corrupt: matches!(e, Error::Corrupt { .. }),
                });
            }
        }
    }

    fn install(&self, h: IndexHeader) -> Arc<IndexHeader> {
        let h = Arc::new(h);
        let mut cur = self.header.lock();
        if cur.is_none() {
            self.metrics.headers_open.inc();
        }
        *cur = Some(Arc::clone(&h));
        self.touch();
        h
    }

    fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// The header, waiting for its build and opening it if it is closed.
    pub async fn header(&self) -> Result<Arc<IndexHeader>> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| *s != HeaderState::Building)
            .await
            .map_err(|_| Error::NotLoaded(self.id.clone()))?
            .clone();
        match state {
            HeaderState::Failed { msg, corrupt: true } => {
                return Err(Error::Corrupt {
                    what: format!("{}/{}/index", self.tenant, self.id),
                    msg,
                });
            }
            HeaderState::Failed { msg, .. } => {
                return Err(Error::NotLoaded(format!("{} ({msg})", self.id)));
            }
            _ => {}
        }
        if let Some(h) = self.header.lock().clone() {
            self.touch();
            return Ok(h);
        }
        let _g = self.open_lock.lock().await;
        if let Some(h) = self.header.lock().clone() {
            self.touch();
            return Ok(h);
        }
        let p = self.header_path();
        let h = tokio::task::spawn_blocking(move || IndexHeader::open(&p))
            .await
            .map_err(|e| Error::Io(e.to_string()))??;
        self.metrics.header_lazy_loads.inc();
        Ok(self.install(h))
    }

    /// Closes the header if lazy loading is on, it is open, unused by any query and idle for
    /// longer than `idle`. Returns whether it closed it.
    pub fn close_if_idle(&self, idle: Duration) -> bool {
        if !self.lazy {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut cur = self.header.lock();
        let Some(h) = cur.as_ref() else {
            return false;
        };
        let last = self.last_used.load(Ordering::Relaxed);
        if now.saturating_sub(last) < idle.as_millis() as u64 || Arc::strong_count(h) > 1 {
            return false;
        }
        *cur = None;
        self.metrics.headers_open.dec();
        self.metrics.header_lazy_unloads.inc();
        true
    }

    /// Whether the header is memory-mapped now.
    pub fn is_open(&self) -> bool {
        self.header.lock().is_some()
    }

    /// Drops the open header (the block is being unloaded).
    pub(crate) fn close(&self) {
        if self.header.lock().take().is_some() {
            self.metrics.headers_open.dec();
        }
    }

    /// Series refs matching `matchers` and their entries.
    async fn matching(
        &self,
        hdr: &IndexHeader,
        matchers: &[Matcher],
        ctx: &Ctx<'_>,
    ) -> Result<Vec<SeriesEntry>> {
        // A `__query_shard__` matcher is no label of the index: it keeps the series of one
        // shard by label hash, once their labels are read and before any chunk is fetched.
        let (matchers, shard) =
            ShardSelector::split(matchers).map_err(|e| Error::BadRequest(e.to_string()))?;
        let key = self.fetcher.expanded_key(&matchers);
        let refs = match self.fetcher.expanded_postings(&key).await {
            Some(refs) => refs,
            None => {
                let table = hdr.table();
                let plan = PostingsPlan::new(&matchers, |n| table.values(n), table.all_postings);
                if plan.is_empty() {
                    return Ok(Vec::new());
                }
                let lists = self.fetcher.postings(hdr, &plan.offsets(), ctx).await?;
                let refs = plan
                    .resolve(|o| lists.get(&o).map(Vec::as_slice))
                    .map_err(|m| Error::Corrupt {
                        what: format!("{}/{}/index", self.tenant, self.id),
                        msg: m,
                    })?;
                drop(lists);
                self.fetcher.store_expanded_postings(key, &refs).await;
                refs
            }
        };
        let mut entries = self.fetcher.series(hdr, &refs, ctx).await?;
        if let Some(shard) = shard {
            entries.retain(|e| shard.contains(&e.labels));
        }
        Ok(entries)
    }

    /// Series matching `matchers` with their chunks overlapping `[mint, maxt]` (as stored:
    /// not cut, not decoded; non-float chunks left out), sorted by labels. With
    /// `skip_chunks`, the series that have such chunks, without them.
    pub async fn series(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
        skip_chunks: bool,
        ctx: &Ctx<'_>,
    ) -> Result<Vec<ChunkSeries>> {
        let hdr = self.header().await?;
        let entries = self.matching(&hdr, matchers, ctx).await?;
        drop(hdr);
        let overlapping = |e: &SeriesEntry| -> Vec<norn_tsdb::block::index::ChunkRef> {
            e.chunks
                .iter()
                .filter(|c| c.max_t >= mint && c.min_t <= maxt)
                .copied()
                .collect()
        };
        if skip_chunks {
            return Ok(entries
                .into_iter()
                .filter(|e| !overlapping(e).is_empty())
                .map(|e| ChunkSeries {
                    labels: e.labels,
                    chunks: Vec::new(),
                })
                .collect());
        }
        let wanted: Vec<Vec<_>> = entries.iter().map(overlapping).collect();
        // One run a series: its chunks lie back to back, so they are read and cached as one.
        let runs: Vec<Vec<u64>> = wanted
            .iter()
            .map(|cs| {
                let mut run: Vec<u64> = cs.iter().map(|c| c.r).collect();
                run.sort_unstable();
                run.dedup();
                run
            })
            .collect();
        let raw = self.fetcher.chunks(&runs, ctx).await?;
        let mut out = Vec::with_capacity(entries.len());
        let mut skipped = 0u64;
        for (e, cs) in entries.into_iter().zip(wanted) {
            let mut chunks = Vec::with_capacity(cs.len());
            for c in cs {
                let b = raw.get(&c.r).ok_or_else(|| Error::Corrupt {
                    what: format!("{}/{}/chunks", self.tenant, self.id),
                    msg: format!("chunk ref {:#x} not read", c.r),
                })?;
                let (rc, _) =
                    norn_tsdb::block::chunks::decode_chunk(b).map_err(|m| Error::Corrupt {
                        what: format!("{}/{}/chunks", self.tenant, self.id),
                        msg: m,
                    })?;
                if rc.encoding != ENCODING_XOR {
                    skipped += 1;
                    continue;
                }
                if rc.data.len() < 2 {
                    return Err(Error::Corrupt {
                        what: format!("{}/{}/chunks", self.tenant, self.id),
                        msg: format!("chunk ref {:#x} shorter than its header", c.r),
                    });
                }
                // The record is `len · encoding · data · CRC`: slice the data out of the
                // buffer without copying.
                let start = b.len() - 4 - rc.data.len();
                let data = b.slice(start..b.len() - 4);
                FetchStats::add(&ctx.stats.chunks, 1);
                FetchStats::add(&ctx.stats.chunk_bytes, data.len() as u64);
                chunks.push(EncodedChunk {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    encoding: ENCODING_XOR,
                    data,
                });
            }
            if !chunks.is_empty() {
                out.push(ChunkSeries {
                    labels: e.labels,
                    chunks,
                });
            }
        }
        if skipped > 0 {
            tracing::debug!(block = %self.id, chunks = skipped, "skipped non-float chunks");
        }
        Ok(out)
    }

    /// Label names of the series matching `matchers` (all names with none), sorted.
    pub async fn label_names(&self, matchers: &[Matcher], ctx: &Ctx<'_>) -> Result<Vec<String>> {
        let hdr = self.header().await?;
        if matchers.is_empty() {
            return Ok(hdr.table().names.iter().map(|n| n.name.clone()).collect());
        }
        let mut names = BTreeSet::new();
        for e in self.matching(&hdr, matchers, ctx).await? {
            for l in &e.labels {
                if !names.contains(&l.name) {
                    names.insert(l.name.clone());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Values of `name` among the series matching `matchers` (all values with none), sorted.
    pub async fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        ctx: &Ctx<'_>,
    ) -> Result<Vec<String>> {
        let hdr = self.header().await?;
        if matchers.is_empty() {
            return Ok(hdr
                .table()
                .values(name)
                .iter()
                .map(|(v, _)| v.clone())
                .collect());
        }
        let mut values = BTreeSet::new();
        for e in self.matching(&hdr, matchers, ctx).await? {
            if let Some(v) = e.labels.get(name)
                && !values.contains(v)
            {
                values.insert(v.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }
}
