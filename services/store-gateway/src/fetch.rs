//! Ranged reads of one block's files in the bucket: postings lists and series entries from
//! `index`, chunks from `chunks/00000N`, each through its cache. Misses are sorted,
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
    tenant: String,
    id: String,
    index_key: String,
    caches: Caches,
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

    async fn cached(&self, cache: &str, keys: &[String]) -> HashMap<String, Bytes> {
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
        if !store.is_empty() {
            self.caches.index.set_many(store, CACHE_TTL).await;
        }
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

    /// The raw chunk records (`len · encoding · data · CRC`, CRC verified) at `refs`,
    /// sorted ascending and unique, with the size hint of each (0: unknown).
    pub async fn chunks(&self, refs: &[(u64, u64)], ctx: &Ctx<'_>) -> Result<HashMap<u64, Bytes>> {
        let key = |r: u64| format!("C:{}:{}:{r}", self.tenant, self.id);
        let keys: Vec<String> = refs.iter().map(|&(r, _)| key(r)).collect();
        let hits = self.cached("chunks", &keys).await;
        let mut out = HashMap::with_capacity(refs.len());
        let mut miss = Vec::new();
        for (&(r, hint), k) in refs.iter().zip(&keys) {
            match hits
                .get(k)
                .filter(|b| decode_chunk(b).is_ok_and(|(_, n)| n == b.len()))
            {
                Some(b) => {
                    out.insert(r, b.clone());
                }
                None => miss.push((r, hint)),
            }
        }
        if miss.is_empty() {
            return Ok(out);
        }
        let segments = self.segments().await?;
        let mut by_seg: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
        for &(r, hint) in &miss {
            by_seg
                .entry((r >> 32) as usize)
                .or_default()
                .push((r, hint));
        }
        let mut store = Vec::new();
        for (seg, list) in by_seg {
            let seg_file = format!("chunks/{}", segment_name(seg as u64 + 1));
            let Some((seg_key, size)) = segments.get(seg) else {
                return Err(self.corrupt(
                    &seg_file,
                    format!("chunk segment missing (the block has {})", segments.len()),
                ));
            };
            let mut ranges = Vec::with_capacity(list.len());
            for (j, &(r, hint)) in list.iter().enumerate() {
                let off = r & 0xffff_ffff;
                if off < SEGMENT_HEADER_SIZE || off >= *size {
                    return Err(self.corrupt(
                        &seg_file,
                        format!("chunk ref {r:#x} outside the segment ({size} bytes)"),
                    ));
                }
                let next = list.get(j + 1).map(|&(n, _)| n & 0xffff_ffff);
                let est = if hint > 0 {
                    hint
                } else {
                    next.filter(|&n| n > off)
                        .map_or(CHUNK_ESTIMATE, |n| (n - off).min(CHUNK_ESTIMATE))
                };
                ranges.push(off..(off + est).min(*size));
            }
            let mut bufs = self
                .get_ranges(seg_key, "chunks", &ranges, CHUNKS_MAX_GAP, ctx)
                .await?;
            let mut again = Vec::new();
            for (j, b) in bufs.iter().enumerate() {
                match chunk_size(b) {
                    Some(n) if n <= b.len() => {}
                    Some(n) if ranges[j].start + n as u64 <= *size => {
                        again.push((j, ranges[j].start..ranges[j].start + n as u64));
                    }
                    _ => {
                        return Err(self.corrupt(
                            &seg_file,
                            format!(
                                "chunk ref {:#x}: malformed length or runs past the segment",
                                list[j].0
                            ),
                        ));
                    }
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
                let r = list[j].0;
                let n = decode_chunk(&b)
                    .map_err(|m| self.corrupt(&seg_file, format!("chunk ref {r:#x}: {m}")))?
                    .1;
                let b = b.slice(..n);
                store.push((key(r), b.clone()));
                out.insert(r, b);
            }
        }
        self.caches.chunks.set_many(store, CACHE_TTL).await;
        Ok(out)
    }
}
