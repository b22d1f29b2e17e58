//! Ranged reads of one block's files in the bucket: postings lists and series entries from
//! `index`, chunks from `chunks/00000N`, each through its cache (a series' chunks in one
//! block as one cached run, since the block writer puts them back to back). Misses are sorted,
//! coalesced by the [partitioner](crate::partition) into few GETs, charged to the query's
//! byte budget and counted in `norn_storegateway_bucket_bytes_fetched_total`. A series entry
//! or chunk whose length is only known once its first bytes are read is fetched with an
//! estimate and, when longer, read again exactly. Everything read is CRC-checked; a cached
//! value that fails its check is treated as a miss (the cache is never trusted over the
//! bucket), bucket bytes that fail are a corrupt block.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use norn_cache::Cache;
use norn_storage::Bucket;
use norn_tsdb::block::chunks::{SEGMENT_HEADER_SIZE, chunk_size, decode_chunk, segment_name};
use norn_tsdb::block::index::{
    SeriesEntry, counted_body, counted_size, decode_postings, decode_series_entry,
    series_entry_size,
};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::header::IndexHeader;
use crate::limits::Ticket;
use crate::metrics::StoreGatewayMetrics;
use crate::partition::partition;

/// Gap below which two index ranges are read with one GET.
pub const INDEX_MAX_GAP: u64 = 512 << 10;
/// Gap below which two chunk ranges are read with one GET (Mimir's default).
pub const CHUNKS_MAX_GAP: u64 = 512 << 10;
/// Largest single GET.
pub const MAX_GET_SIZE: u64 = 16 << 20;
/// First guess at a series entry's size when the next requested entry does not bound it.
/// Entries are usually a few hundred bytes; a longer one costs one more exact read, while a
/// larger guess would be read for every sparse series of a selective query.
const SERIES_ESTIMATE: u64 = 4 << 10;
/// First guess at a chunk's size when the next chunk does not bound it (a 120-sample XOR
/// chunk is a few hundred bytes).
const CHUNK_ESTIMATE: u64 = 2 << 10;
/// A request for more series than this in one block is a wide read: its series entries and
/// chunks are cached only into room the cache has to spare ([`Cache::set_many_if_room`]).
/// Its reads are coalesced into a few GETs, so each value saves little on a later hit, and a
/// few wide queries over more data than the cache holds (a week of a thousand series) would
/// otherwise evict, round after round, the values of every narrow query, each of which costs
/// a GET of its own when missed.
pub const WIDE_READ_SERIES: usize = 64;

/// Whether a read of `series` series of one block is a wide read ([`WIDE_READ_SERIES`]).
pub fn is_wide_read(series: usize) -> bool {
    series > WIDE_READ_SERIES
}
/// GETs of one fetch in flight at once.
const GET_CONCURRENCY: usize = 8;
/// How long cached values live (the caches bound themselves by size; the data never
/// changes, so this only ages out blocks no longer queried).
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What one query read, summed over its blocks (the `QueryStats` of the answer).
#[derive(Debug, Default)]
pub struct FetchStats {
    pub series: AtomicU64,
    pub chunks: AtomicU64,
    pub chunk_bytes: AtomicU64,
    pub bucket_bytes: AtomicU64,
}

impl FetchStats {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Per-query context for fetches: the budget and the stats.
pub struct Ctx<'a> {
    pub ticket: &'a Ticket,
    pub stats: &'a FetchStats,
}

/// The caches a block reads through.
#[derive(Clone)]
pub struct Caches {
    pub index: Arc<dyn Cache>,
    pub chunks: Arc<dyn Cache>,
}

/// Ranged access to one block of one tenant.
pub struct BlockFetcher {
    bucket: Bucket,
    pub(crate) tenant: String,
    pub(crate) id: String,
    index_key: String,
    pub(crate) caches: Caches,
    metrics: StoreGatewayMetrics,
    /// `(key, size)` of each chunk segment, listed on first use.
    segments: OnceCell<Vec<(String, u64)>>,
}

impl BlockFetcher {
    pub fn new(
        bucket: Bucket,
        tenant: &str,
        id: &str,
        caches: Caches,
        metrics: StoreGatewayMetrics,
    ) -> Self {
        Self {
            index_key: norn_storage::layout::block_file(tenant, id, "index"),
            bucket,
            tenant: tenant.to_string(),
            id: id.to_string(),
            caches,
            metrics,
            segments: OnceCell::new(),
        }
    }

    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    pub fn index_key(&self) -> &str {
        &self.index_key
    }

    fn corrupt(&self, file: &str, msg: String) -> Error {
        Error::Corrupt {
            what: format!("{}/{}/{file}", self.tenant, self.id),
            msg,
        }
    }

    /// Reads `ranges` of `key`, returning one buffer per range (input order). Ranges are
    /// coalesced; each GET is charged to the query's budget before it is sent.
    async fn get_ranges(
        &self,
        key: &str,
        kind: &'static str,
        ranges: &[Range<u64>],
        max_gap: u64,
        ctx: &Ctx<'_>,
    ) -> Result<Vec<Bytes>> {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| (ranges[i].start, ranges[i].end));
        let sorted: Vec<Range<u64>> = order.iter().map(|&i| ranges[i].clone()).collect();
        let parts = partition(&sorted, max_gap, MAX_GET_SIZE);
        let mut out = vec![Bytes::new(); ranges.len()];
        let mut gets = futures::stream::iter(parts.into_iter().map(|p| async move {
            ctx.ticket.reserve(p.end - p.start).await?;
            let b = self
                .bucket
                .get_range(key, p.start..p.end)
                .await
                .map_err(|e| Error::bucket(key, e))?;
            Ok::<_, Error>((p, b))
        }))
        .buffer_unordered(GET_CONCURRENCY);
        while let Some(r) = gets.next().await {
            let (p, b) = r?;
            let n = b.len() as u64;
            self.metrics
                .bucket_bytes_fetched
                .with_label_values(&[kind])
                .inc_by(n);
            self.metrics
                .bucket_requests
                .with_label_values(&[kind])
                .inc();
            FetchStats::add(&ctx.stats.bucket_bytes, n);
            if n != p.end - p.start {
                return Err(self.corrupt(
                    key.rsplit('/').next().unwrap_or(key),
                    format!("short read of {}..{}: {n} bytes", p.start, p.end),
                ));
            }
            for &i in &order[p.elems] {
                let r = &ranges[i];
                out[i] = b.slice((r.start - p.start) as usize..(r.end - p.start) as usize);
            }
        }
        Ok(out)
    }

    /// Stores `items` in `cache`; those of a wide read only into spare room.
    pub(crate) async fn store(cache: &Arc<dyn Cache>, items: Vec<(String, Bytes)>, wide: bool) {
        if items.is_empty() {
            return;
        }
        if wide {
            cache.set_many_if_room(items, CACHE_TTL).await;
        } else {
            cache.set_many(items, CACHE_TTL).await;
        }
    }

    pub(crate) async fn cached(&self, cache: &str, keys: &[String]) -> HashMap<String, Bytes> {
        let c = if cache == "index" {
            &self.caches.index
        } else {
            &self.caches.chunks
        };
        let hits = c.get_many(keys).await;
        self.metrics
            .cache_requests
            .with_label_values(&[cache])
            .inc_by(keys.len() as u64);
        self.metrics
            .cache_hits
            .with_label_values(&[cache])
            .inc_by(hits.len() as u64);
        hits
    }

    /// The postings lists at `offsets` (from the header's table), decoded.
    pub async fn postings(
        &self,
        hdr: &IndexHeader,
        offsets: &[u64],
        ctx: &Ctx<'_>,
    ) -> Result<HashMap<u64, Vec<u32>>> {
        let key = |o: u64| format!("P:{}:{}:{o}", self.tenant, self.id);
        let keys: Vec<String> = offsets.iter().map(|&o| key(o)).collect();
        let hits = self.cached("index", &keys).await;
        let mut out = HashMap::with_capacity(offsets.len());
        let mut miss = Vec::new();
        for (&o, k) in offsets.iter().zip(&keys) {
            let decoded = hits
                .get(k)
                .and_then(|b| counted_body(b, "").ok())
                .and_then(|body| decode_postings(body).ok());
            match decoded {
                Some(l) => {
                    out.insert(o, l);
                }
                None => miss.push(o),
            }
        }
        if miss.is_empty() {
            return Ok(out);
        }
        let ranges = miss
            .iter()
            .map(|&o| {
                hdr.postings_range(o).ok_or_else(|| {
                    self.corrupt("index", format!("postings offset {o} is not in the table"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bufs = self
            .get_ranges(&self.index_key, "postings", &ranges, INDEX_MAX_GAP, ctx)
            .await?;
        let mut store = Vec::with_capacity(miss.len());
        for (o, b) in miss.into_iter().zip(bufs) {
            let bad = |m: String| self.corrupt("index", format!("postings list at {o}: {m}"));
            let body = counted_body(&b, "").map_err(bad)?;
            let list = decode_postings(body).map_err(bad)?;
            let n = counted_size(&b).unwrap_or(b.len()).min(b.len());
            store.push((key(o), b.slice(..n)));
            out.insert(o, list);
        }
        self.caches.index.set_many(store, CACHE_TTL).await;
        Ok(out)
    }

    /// The series entries at `refs` (ascending), in the same order.
    pub async fn series(
        &self,
        hdr: &IndexHeader,
        refs: &[u32],
        ctx: &Ctx<'_>,
    ) -> Result<Vec<SeriesEntry>> {
        let key = |r: u32| format!("S:{}:{}:{r}", self.tenant, self.id);
        let keys: Vec<String> = refs.iter().map(|&r| key(r)).collect();
        let hits = self.cached("index", &keys).await;
        // A cached entry that does not decode (damaged in the cache) is a miss.
        let mut decoded: Vec<Option<SeriesEntry>> = keys
            .iter()
            .map(|k| {
                hits.get(k)
                    .filter(|b| series_entry_size(b) == Some(b.len()))
                    .and_then(|b| decode_series_entry(b, |id| hdr.symbol(id)).ok())
            })
            .collect();
        let miss: Vec<usize> = (0..refs.len()).filter(|&i| decoded[i].is_none()).collect();
        let mut store = Vec::new();
        if !miss.is_empty() {
            // Entries are back to back (16-byte aligned), so the next requested entry bounds
            // this one; the estimate covers the last.
            let mut ranges = Vec::with_capacity(miss.len());
            for (j, &i) in miss.iter().enumerate() {
                let r = refs[i];
                let next = miss.get(j + 1).map(|&n| u64::from(refs[n]) * 16);
                let off = u64::from(r) * 16;
                let est = next
                    .filter(|&n| n > off)
                    .map_or(SERIES_ESTIMATE, |n| (n - off).min(SERIES_ESTIMATE));
                ranges.push(hdr.series_range(r, est).ok_or_else(|| {
                    self.corrupt(
                        "index",
                        format!("series ref {r} outside the series section"),
                    )
                })?);
            }
            let mut bufs = self
                .get_ranges(&self.index_key, "series", &ranges, INDEX_MAX_GAP, ctx)
                .await?;
            // Entries longer than their estimate: read again, exactly.
            let mut again = Vec::new();
            for (j, b) in bufs.iter().enumerate() {
                match series_entry_size(b) {
                    Some(n) if n <= b.len() => {}
                    Some(n) => again.push((j, ranges[j].start..ranges[j].start + n as u64)),
                    None => {
                        return Err(self.corrupt(
                            "index",
                            format!("series ref {}: malformed length", refs[miss[j]]),
                        ));
                    }
                }
            }
            if !again.is_empty() {
                let rs: Vec<Range<u64>> = again.iter().map(|(_, r)| r.clone()).collect();
                if rs.iter().any(|r| r.end > hdr.index_size()) {
                    return Err(self.corrupt("index", "series entry runs past the index".into()));
                }
                let more = self
                    .get_ranges(&self.index_key, "series", &rs, 0, ctx)
                    .await?;
                for ((j, _), b) in again.into_iter().zip(more) {
                    bufs[j] = b;
                }
            }
            for (j, b) in bufs.into_iter().enumerate() {
                let i = miss[j];
                let n = series_entry_size(&b).unwrap_or(0).min(b.len());
                let b = b.slice(..n);
                let e = decode_series_entry(&b, |id| hdr.symbol(id))
                    .map_err(|m| self.corrupt("index", format!("series ref {}: {m}", refs[i])))?;
                store.push((keys[i].clone(), b));
                decoded[i] = Some(e);
            }
        }
        let out: Vec<SeriesEntry> = decoded.into_iter().flatten().collect();
        if out.len() != refs.len() {
            return Err(self.corrupt("index", "series entries missing after the read".into()));
        }
        FetchStats::add(&ctx.stats.series, out.len() as u64);
        Self::store(&self.caches.index, store, is_wide_read(refs.len())).await;
        Ok(out)
    }

    async fn segments(&self) -> Result<&[(String, u64)]> {
        let v = self
            .segments
            .get_or_try_init(|| async {
                let prefix = norn_storage::layout::block_file(&self.tenant, &self.id, "chunks/");
                let mut segs: Vec<(String, u64)> = self
                    .bucket
                    .list(&prefix)
                    .await
                    .map_err(|e| Error::bucket(&prefix, e))?
                    .into_iter()
                    .map(|o| (o.key, o.size))
                    .collect();
                segs.sort();
                // Refs name segments by position: insist on 000001…N without gaps.
                for (i, (k, _)) in segs.iter().enumerate() {
                    if !k.ends_with(&format!("/{}", segment_name(i as u64 + 1))) {
                        return Err(self.corrupt(
                            "chunks",
                            format!("unexpected or missing chunk segment at {k}"),
                        ));
                    }
                }
                Ok(segs)
            })
            .await?;
        Ok(v)
    }

    /// The raw chunk records (`len · encoding · data · CRC`, CRC verified) of `runs`, by ref.
    /// A run is one series' wanted chunks in this block, refs ascending. The block writer puts
    /// a series' chunks back to back in one segment, so a run is read as one range and cached
    /// as one item: a few hundred bytes a chunk would otherwise each pay the cache's per-item
    /// overhead and a key. A run whose chunks turn out not to be back to back (another
    /// writer's block, a damaged one) is read and cached chunk by chunk.
    pub async fn chunks(&self, runs: &[Vec<u64>], ctx: &Ctx<'_>) -> Result<HashMap<u64, Bytes>> {
        let mut out = HashMap::with_capacity(runs.iter().map(Vec::len).sum());
        // A run never crosses a segment or goes back, and never spans more than
        // MAX_RUN_SPAN bytes (an odd block must not turn a few chunks into a large read).
        let mut split: Vec<&[u64]> = Vec::with_capacity(runs.len());
        for run in runs {
            let mut from = 0;
            for i in 1..=run.len() {
                let cut = i == run.len()
                    || run[i] >> 32 != run[i - 1] >> 32
                    || run[i] <= run[i - 1]
                    || (run[i] & OFFSET_MASK) - (run[from] & OFFSET_MASK) > MAX_RUN_SPAN;
                if cut {
                    if i > from {
                        split.push(&run[from..i]);
                    }
                    from = i;
                }
            }
        }
        let wide = is_wide_read(runs.len());
        let scattered = self.chunk_runs(&split, wide, ctx, &mut out).await?;
        if !scattered.is_empty() {
            let singles: Vec<&[u64]> = scattered.iter().flat_map(|r| r.chunks(1)).collect();
            let left = self.chunk_runs(&singles, wide, ctx, &mut out).await?;
            // A run of one chunk is never scattered: a bad record there is an error above.
            debug_assert!(left.is_empty());
        }
        Ok(out)
    }

    /// Reads `runs` through the chunks cache into `out`; returns the runs whose chunks are
    /// not back to back (nothing of them is in `out` then). What a `wide` read fetched is
    /// cached only into spare room.
    async fn chunk_runs<'r>(
        &self,
        runs: &[&'r [u64]],
        wide: bool,
        ctx: &Ctx<'_>,
        out: &mut HashMap<u64, Bytes>,
    ) -> Result<Vec<&'r [u64]>> {
        let key = |run: &[u64]| format!("C:{}:{}:{}:{}", self.tenant, self.id, run[0], run.len());
        let keys: Vec<String> = runs.iter().map(|r| key(r)).collect();
        let hits = self.cached("chunks", &keys).await;
        let mut miss = Vec::new();
        for (i, (run, k)) in runs.iter().zip(&keys).enumerate() {
            // A cached run that does not walk exactly (damaged in the cache) is a miss.
            match hits.get(k).map(|b| (b, walk_run(b, run))) {
                Some((b, RunWalk::Records(rs))) if rs.last().is_some_and(|r| r.end == b.len()) => {
                    for (&r, range) in run.iter().zip(rs) {
                        out.insert(r, b.slice(range));
                    }
                }
                _ => miss.push(i),
            }
        }
        if miss.is_empty() {
            return Ok(Vec::new());
        }
        let segments = self.segments().await?;
        let mut by_seg: HashMap<usize, Vec<usize>> = HashMap::new();
        for &i in &miss {
            by_seg
                .entry((runs[i][0] >> 32) as usize)
                .or_default()
                .push(i);
        }
        let mut store = Vec::new();
        let mut scattered = Vec::new();
        for (seg, mut list) in by_seg {
            list.sort_unstable_by_key(|&i| runs[i][0]);
            let seg_file = format!("chunks/{}", segment_name(seg as u64 + 1));
            let Some((seg_key, size)) = segments.get(seg) else {
                return Err(self.corrupt(
                    &seg_file,
                    format!("chunk segment missing (the block has {})", segments.len()),
                ));
            };
            let mut ranges = Vec::with_capacity(list.len());
            for (j, &i) in list.iter().enumerate() {
                let run = runs[i];
                for &r in run {
                    let off = r & OFFSET_MASK;
                    if off < SEGMENT_HEADER_SIZE || off >= *size {
                        return Err(self.corrupt(
                            &seg_file,
                            format!("chunk ref {r:#x} outside the segment ({size} bytes)"),
                        ));
                    }
                }
                let first = run[0] & OFFSET_MASK;
                let last = run[run.len() - 1] & OFFSET_MASK;
                // The next run's start bounds this run's last chunk; else an estimate.
                let next = list.get(j + 1).map(|&n| runs[n][0] & OFFSET_MASK);
                let est = next
                    .filter(|&n| n > last)
                    .map_or(CHUNK_ESTIMATE, |n| (n - last).min(CHUNK_ESTIMATE));
                ranges.push(first..(last + est).min(*size));
            }
            let mut bufs = self
                .get_ranges(seg_key, "chunks", &ranges, CHUNKS_MAX_GAP, ctx)
                .await?;
            // A run whose last chunk is longer than its estimate: read again, exactly.
            let mut again = Vec::new();
            for (j, b) in bufs.iter().enumerate() {
                if let RunWalk::Short(n) = walk_run(b, runs[list[j]]) {
                    let r = ranges[j].start..ranges[j].start + n as u64;
                    if r.end > *size {
                        return Err(self.corrupt(
                            &seg_file,
                            format!(
                                "chunk ref {:#x}: runs past the segment",
                                runs[list[j]][runs[list[j]].len() - 1]
                            ),
                        ));
                    }
                    again.push((j, r));
                }
            }
            if !again.is_empty() {
                let rs: Vec<Range<u64>> = again.iter().map(|(_, r)| r.clone()).collect();
                let more = self.get_ranges(seg_key, "chunks", &rs, 0, ctx).await?;
                for ((j, _), b) in again.into_iter().zip(more) {
                    bufs[j] = b;
                }
            }
            for (j, b) in bufs.into_iter().enumerate() {
                let run = runs[list[j]];
                match walk_run(&b, run) {
                    RunWalk::Records(rs) => {
                        let end = rs.last().map_or(0, |r| r.end);
                        for (&r, range) in run.iter().zip(rs) {
                            out.insert(r, b.slice(range));
                        }
                        store.push((keys[list[j]].clone(), b.slice(..end)));
                    }
                    RunWalk::Scattered if run.len() > 1 => scattered.push(run),
                    RunWalk::Scattered | RunWalk::Short(_) => {
                        return Err(self.corrupt(
                            &seg_file,
                            format!(
                                "chunk ref {:#x}: malformed length or runs past the segment",
                                run[0]
                            ),
                        ));
                    }
                    RunWalk::Corrupt(r, m) => {
                        return Err(self.corrupt(&seg_file, format!("chunk ref {r:#x}: {m}")));
                    }
                }
            }
        }
        Self::store(&self.caches.chunks, store, wide).await;
        Ok(scattered)
    }
}

/// The 32-bit offset within its segment that a chunk ref holds.
const OFFSET_MASK: u64 = 0xffff_ffff;
/// Most bytes from a run's first chunk to its last one's start; longer runs are split.
const MAX_RUN_SPAN: u64 = 1 << 20;

/// What reading a run's chunk records out of a buffer that starts at its first chunk gave.
#[derive(Debug, PartialEq)]
enum RunWalk {
    /// Each chunk's record, in run order, CRC verified.
    Records(Vec<Range<usize>>),
    /// The last chunk's record ends past the buffer, at this length.
    Short(usize),
    /// A chunk does not start where the one before it ends: not back to back.
    Scattered,
    /// A chunk's record is damaged.
    Corrupt(u64, String),
}

fn walk_run(b: &[u8], run: &[u64]) -> RunWalk {
    let first = run[0] & OFFSET_MASK;
    let mut records = Vec::with_capacity(run.len());
    let mut pos = 0usize;
    for (i, &r) in run.iter().enumerate() {
        if (r & OFFSET_MASK) - first != pos as u64 {
            return RunWalk::Scattered;
        }
        let Some(n) = b.get(pos..).and_then(chunk_size) else {
            return RunWalk::Scattered;
        };
        let Some(end) = pos.checked_add(n) else {
            return RunWalk::Scattered;
        };
        if end > b.len() {
            return if i + 1 == run.len() {
                RunWalk::Short(end)
            } else {
                RunWalk::Scattered
            };
        }
        match decode_chunk(&b[pos..end]) {
            Ok((_, m)) if m == n => {}
            Ok(_) => return RunWalk::Corrupt(r, "record length mismatch".into()),
            Err(m) => return RunWalk::Corrupt(r, m),
        }
        records.push(pos..end);
        pos = end;
    }
    RunWalk::Records(records)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::limits::Limiter;
    use crate::testutil::MapCache;
    use bytes::Bytes;
    use norn_cache::Cache;
    use norn_storage::{Bucket, layout};
    use norn_tsdb::block::chunks::{ChunkWriter, decode_chunk};

    /// Three series of `chunks` chunks each (sizes varying from 20 bytes to 3 KiB, so some
    /// pass the read estimate), written by the block writer into one segment and uploaded;
    /// returns the fetcher, its chunks cache and each series' refs.
    async fn segment(chunks: usize) -> (BlockFetcher, Arc<MapCache>, Vec<Vec<u64>>) {
        segment_of(3, chunks).await
    }

    /// [`segment`] with `n` series.
    async fn segment_of(n: usize, chunks: usize) -> (BlockFetcher, Arc<MapCache>, Vec<Vec<u64>>) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path(), 512 << 20);
        let mut series = Vec::new();
        for s in 0..n {
            let data: Vec<Vec<u8>> = (0..chunks)
                .map(|c| vec![(s * 16 + c) as u8; 20 + (c * 1500 + s * 7) % 3000])
                .collect();
            let list: Vec<(u8, &[u8])> = data.iter().map(|d| (1u8, d.as_slice())).collect();
            series.push(w.write_chunks(&list).unwrap());
        }
        w.finish().unwrap();
        let bucket = Bucket::in_memory();
        let key = layout::block_file("t", "B", "chunks/000001");
        bucket
            .upload_file(&key, &dir.path().join("000001"))
            .await
            .unwrap();
        let cache = Arc::new(MapCache::default());
        let caches = Caches {
            index: Arc::new(norn_cache::NoCache),
            chunks: Arc::clone(&cache) as Arc<dyn Cache>,
        };
        let metrics = StoreGatewayMetrics::new(&prometheus::Registry::new()).unwrap();
        let f = BlockFetcher::new(bucket, "t", "B", caches, metrics);
        (f, cache, series)
    }

    async fn fetch(f: &BlockFetcher, runs: &[Vec<u64>]) -> Result<HashMap<u64, Bytes>> {
        let limiter = Limiter::new(1, 64 << 20, Duration::from_secs(1));
        let ticket = limiter.admit().await.unwrap();
        let stats = FetchStats::default();
        f.chunks(
            runs,
            &Ctx {
                ticket: &ticket,
                stats: &stats,
            },
        )
        .await
    }

    fn check(got: &HashMap<u64, Bytes>, runs: &[Vec<u64>]) {
        let n: usize = runs.iter().map(Vec::len).sum();
        assert_eq!(got.len(), n);
        for r in runs.iter().flatten() {
            let b = &got[r];
            let (c, size) = decode_chunk(b).unwrap();
            assert_eq!(
                size,
                b.len(),
                "ref {r:#x}: the record is not exactly its bytes"
            );
            assert_eq!(c.encoding, 1);
        }
    }

    /// Each series' chunks are read as one run and cached as one item; a repeated read is
    /// served from the cache alone.
    #[tokio::test]
    async fn a_series_chunks_are_read_and_cached_as_one_run() {
        let (f, cache, series) = segment(5).await;
        let got = fetch(&f, &series).await.unwrap();
        check(&got, &series);
        let keys: Vec<String> = cache.0.lock().keys().cloned().collect();
        assert_eq!(keys.len(), 3, "one item a series: {keys:?}");
        assert!(
            keys.iter()
                .all(|k| k.starts_with("C:t:B:") && k.ends_with(":5"))
        );
        let fetched = f.metrics.fetched("chunks");
        let again = fetch(&f, &series).await.unwrap();
        assert_eq!(again, got);
        assert_eq!(
            f.metrics.fetched("chunks"),
            fetched,
            "a cached run read the bucket"
        );
    }

    /// A read of more than [`WIDE_READ_SERIES`] series is cached only into spare room; a
    /// narrower one as usual. Both are cached whole, one item a series.
    #[tokio::test]
    async fn wide_reads_are_cached_only_into_spare_room() {
        let (f, cache, series) = segment_of(WIDE_READ_SERIES + 1, 2).await;
        let narrow = &series[..WIDE_READ_SERIES];
        check(&fetch(&f, narrow).await.unwrap(), narrow);
        assert_eq!(cache.0.lock().len(), WIDE_READ_SERIES);
        assert!(
            cache.1.lock().is_empty(),
            "a narrow read was offered for spare room only"
        );
        cache.0.lock().clear();
        check(&fetch(&f, &series).await.unwrap(), &series);
        assert_eq!(cache.0.lock().len(), WIDE_READ_SERIES + 1);
        assert_eq!(cache.1.lock().len(), WIDE_READ_SERIES + 1);
    }

    /// A run whose chunks are not back to back (here every other chunk of a series, and two
    /// series' chunks interleaved) is read chunk by chunk, with the same answer.
    #[tokio::test]
    async fn runs_not_back_to_back_are_read_chunk_by_chunk() {
        let (f, cache, series) = segment(5).await;
        let gaps = vec![
            series[0].iter().step_by(2).copied().collect::<Vec<_>>(),
            vec![series[1][4], series[2][0]],
        ];
        let got = fetch(&f, &gaps).await.unwrap();
        check(&got, &gaps);
        let all = fetch(&f, &series).await.unwrap();
        for (r, b) in &got {
            assert_eq!(&all[r], b);
        }
        // The scattered ones were cached one by one, the back-to-back ones as runs.
        let m = cache.0.lock();
        assert!(
            m.keys()
                .any(|k| k.ends_with(&format!(":{}:1", series[0][2])))
        );
        assert!(
            m.keys()
                .any(|k| k.ends_with(&format!(":{}:5", series[1][0])))
        );
    }

    /// A damaged cached run is a miss (read again from the bucket); a ref beyond the segment
    /// is an error, never a panic.
    #[tokio::test]
    async fn damaged_cache_items_and_bad_refs() {
        let (f, cache, series) = segment(3).await;
        let good = fetch(&f, &series).await.unwrap();
        for v in cache.0.lock().values_mut() {
            let mut b = v.to_vec();
            let n = b.len() / 2;
            b[n] ^= 0x5a;
            *v = Bytes::from(b);
        }
        let before = f.metrics.fetched("chunks");
        assert_eq!(fetch(&f, &series).await.unwrap(), good);
        assert!(f.metrics.fetched("chunks") > before);
        let beyond = vec![vec![series[2][2] + (1 << 30)]];
        let e = fetch(&f, &beyond).await.unwrap_err();
        assert!(e.to_string().contains("outside the segment"), "{e}");
        let second_segment = vec![vec![(1u64 << 32) | 8]];
        assert!(fetch(&f, &second_segment).await.is_err());
    }

    #[test]
    fn walking_runs() {
        // Two records back to back: len 3 · enc · "abc" · CRC.
        let rec = |d: &[u8]| {
            let mut v = vec![d.len() as u8, 1];
            v.extend_from_slice(d);
            let crc = crc32c::crc32c(&v[1..]);
            v.extend_from_slice(&crc.to_be_bytes());
            v
        };
        let mut b = rec(b"abc");
        let first = b.len() as u64;
        b.extend(rec(b"defgh"));
        let whole = b.len();
        assert_eq!(
            walk_run(&b, &[100, 100 + first]),
            RunWalk::Records(vec![0..first as usize, first as usize..whole])
        );
        assert_eq!(
            walk_run(&b[..whole - 2], &[100, 100 + first]),
            RunWalk::Short(whole)
        );
        assert_eq!(walk_run(&b, &[100, 101 + first]), RunWalk::Scattered);
        let mut bad = b.clone();
        bad[3] ^= 1;
        assert!(matches!(walk_run(&bad, &[100]), RunWalk::Corrupt(100, _)));
        assert_eq!(walk_run(&[], &[100]), RunWalk::Scattered);
    }
}
