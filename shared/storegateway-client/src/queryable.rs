//! The store-gateways as the querier's long-term source: a [`QueryableProvider`] whose
//! tenant views find the blocks a query needs, ask each block of a store-gateway that holds it,
//! check that every block was answered, retry the missing ones on the other replicas, and merge.
//!
//! A block no replica answered fails the query with a 5xx that names it: an answer missing a
//! block is never returned as complete.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use norn_limits::Overrides;
use norn_model::query::{decode_chunk_series, merge_strings};
use norn_model::{
    ChunkSeries, ErrorKind, Matcher, Queryable, QueryableProvider, SampleBudget, Series,
    StorageError, TenantId, now_ms,
};
use norn_proto::convert::matchers_to_proto;
use norn_proto::ingester::v1 as ipb;
use norn_proto::status::error_kind;
use norn_proto::storegateway::v1 as pb;
use norn_ring::{BlocksOp, BlocksSharding};
use norn_storage::Bucket;
use prometheus::{IntCounter, Registry};

use crate::fetch::{FetchCounters, FetchError, FetchLimits, read_series, to_chunk_series};
use crate::finder::{BlocksFinder, blocks_for_range};
use crate::gateway::{Gateway, GatewayClientPool};

/// At most this many block ids are listed in an error message (the count says the rest).
const MAX_IDS_IN_ERROR: usize = 10;

/// Answers with at most this many chunks are merged and decoded on the calling task; larger
/// ones go to the blocking pool. A chunk holds about 120 samples and decodes in a microsecond
/// or two, so this is tens of microseconds of CPU, within what a task may take between two
/// awaits. Below it the two trips to a blocking thread (wake it, wait for it, wake the caller)
/// cost more than the work, and on a loaded machine each wake-up can wait milliseconds for a
/// core: the whole warm cost of a one-series query was a few such trips.
pub const INLINE_MAX_CHUNKS: usize = 32;

/// How many chunks that only need their headers copied (not decoded) weigh as one decoded
/// chunk (or one series' labels converted) in [`decode_work`]: a copy is tens of
/// nanoseconds, a decode a microsecond or two.
const UNDECODED_CHUNKS_PER_DECODED: usize = 16;

/// Runs `f`, which works through `chunks` chunks: here when they are few, else on the blocking
/// pool (so a large answer never holds a reactor thread).
async fn decode_work<T, F>(chunks: usize, f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if chunks <= INLINE_MAX_CHUNKS {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

/// What merging the store-gateways' answers costs, in decoded chunks (for [`decode_work`]).
/// One answer whose series each hold disjoint chunks (one copy of every sample: compacted
/// blocks, or one replica's) needs no decoding, only its labels converted and a copy of each
/// chunk's header: a series and a fraction of its chunks. Anything else may decode every chunk.
fn merge_work(lists: &[Vec<ipb::StreamSeries>]) -> usize {
    let chunks: usize = lists.iter().flatten().map(|s| s.chunks.len()).sum();
    let one_copy = lists.len() <= 1
        && lists.iter().flatten().all(|s| {
            s.chunks
                .windows(2)
                .all(|w| w[0].max_time_ms < w[1].min_time_ms)
        });
    if one_copy {
        lists.iter().map(Vec::len).sum::<usize>() + chunks / UNDECODED_CHUNKS_PER_DECODED
    } else {
        chunks
    }
}

/// The querier's store-gateway settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Only data older than this is asked of the store-gateways (`querier.query-store-after`);
    /// the ingesters serve the rest. Zero asks them for every range.
    pub query_store_after: Duration,
    /// How often a tenant's bucket index is re-read
    /// (`blocks-storage.bucket-store.sync-interval`).
    pub index_refresh: Duration,
    /// Blocks marked for deletion longer ago than this are no longer asked for: the
    /// store-gateways dropped them (`blocks-storage.bucket-store.ignore-deletion-marks-delay`).
    pub ignore_deletion_marks_delay: Duration,
    /// A block uploaded less than this long ago may be missing from every store-gateway's
    /// answer without failing the query: the store-gateways load new blocks at their next
    /// sync, and until then the ingesters that shipped the block still serve its data (their
    /// local retention is hours). Mimir's consistency check has the same grace. The wiring
    /// sets it to three sync intervals.
    pub upload_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            query_store_after: Duration::from_secs(12 * 3600),
            index_refresh: Duration::from_secs(15 * 60),
            ignore_deletion_marks_delay: Duration::from_secs(3600),
            upload_grace: Duration::from_secs(45 * 60),
        }
    }
}

/// Where the store-gateways are.
pub enum Gateways {
    /// `--target=all`: the store-gateway of this process, which holds every block.
    InProcess(Arc<dyn Gateway>),
    /// A cluster: the store-gateway ring (blocks placed by [`BlocksSharding`], the tenant's
    /// shard size from `store_gateway_tenant_shard_size`) and a client pool.
    Ring {
        sharding: BlocksSharding,
        pool: Arc<GatewayClientPool>,
    },
}

struct QueryMetrics {
    consistency_checks: IntCounter,
    consistency_failed: IntCounter,
    refetches: IntCounter,
}

impl QueryMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let consistency_checks = IntCounter::new(
            "norn_querier_blocks_consistency_checks_total",
            "Queries of the store-gateways whose answered blocks were checked against the blocks they needed.",
        )?;
        let consistency_failed = IntCounter::new(
            "norn_querier_blocks_consistency_checks_failed_total",
            "Queries of the store-gateways that failed because some blocks were not answered by any replica.",
        )?;
        let refetches = IntCounter::new(
            "norn_querier_storegateway_refetches_total",
            "Rounds of asking other store-gateway replicas for blocks a first round did not answer.",
        )?;
        registry.register(Box::new(consistency_checks.clone()))?;
        registry.register(Box::new(consistency_failed.clone()))?;
        registry.register(Box::new(refetches.clone()))?;
        Ok(Self {
            consistency_checks,
            consistency_failed,
            refetches,
        })
    }
}

struct Shared {
    config: Config,
    finder: BlocksFinder,
    gateways: Gateways,
    overrides: Arc<Overrides>,
    metrics: QueryMetrics,
}

/// The store-gateways as the querier's source of bucket blocks.
#[derive(Clone)]
pub struct StoreGatewayProvider {
    shared: Arc<Shared>,
}

impl StoreGatewayProvider {
    /// Reads `bucket`'s indexes and asks `gateways`; limits per tenant come from `overrides`.
    /// Registers its metrics on `registry` (one provider per registry).
    pub fn new(
        config: Config,
        bucket: Bucket,
        gateways: Gateways,
        overrides: Arc<Overrides>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                finder: BlocksFinder::new(bucket, config.index_refresh),
                config,
                gateways,
                overrides,
                metrics: QueryMetrics::new(registry)?,
            }),
        })
    }
}

impl QueryableProvider for StoreGatewayProvider {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        Arc::new(StoreQueryable {
            shared: Arc::clone(&self.shared),
            tenant: tenant.clone(),
        })
    }
}

/// One tenant's view of the store-gateways.
struct StoreQueryable {
    shared: Arc<Shared>,
    tenant: TenantId,
}

/// What one query needs from the store-gateways.
struct Plan {
    start_ms: i64,
    end_ms: i64,
    blocks: Vec<String>,
    /// Blocks uploaded within the upload grace: not loaded by any store-gateway yet is fine.
    fresh: HashSet<String>,
}

fn now_unix_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl StoreQueryable {
    /// The range the store-gateways serve and the blocks in it; `None` when the query needs
    /// nothing from them (all of it is recent enough for the ingesters).
    async fn plan(&self, start_ms: i64, end_ms: i64) -> Result<Option<Plan>, StorageError> {
        let cfg = &self.shared.config;
        let mut end = end_ms;
        if !cfg.query_store_after.is_zero() {
            let newest = now_ms().saturating_sub(
                i64::try_from(cfg.query_store_after.as_millis()).unwrap_or(i64::MAX),
            );
            end = end.min(newest);
        }
        if end < start_ms {
            return Ok(None);
        }
        let index = self.shared.finder.index(self.tenant.as_str()).await?;
        let now = now_unix_s();
        let found = blocks_for_range(&index, start_ms, end, now, cfg.ignore_deletion_marks_delay);
        let grace_start = now.saturating_sub(cfg.upload_grace.as_secs() as i64);
        let fresh = found
            .iter()
            .filter(|b| b.uploaded_at > grace_start)
            .map(|b| b.block_id.clone())
            .collect();
        let blocks: Vec<String> = found.into_iter().map(|b| b.block_id).collect();
        if blocks.is_empty() {
            return Ok(None);
        }
        Ok(Some(Plan {
            start_ms,
            end_ms: end,
            blocks,
            fresh,
        }))
    }

    fn limits(&self) -> FetchLimits {
        let l = self.shared.overrides.for_tenant(self.tenant.as_str());
        FetchLimits {
            max_series: l.max_fetched_series_per_query as u64,
            max_chunks: l.max_fetched_chunks_per_query as u64,
            max_chunk_bytes: l.max_fetched_chunk_bytes_per_query as u64,
        }
    }

    /// Each block's replicas, in the order they are asked.
    fn replicas(&self, blocks: &[String]) -> HashMap<String, Vec<Arc<dyn Gateway>>> {
        match &self.shared.gateways {
            Gateways::InProcess(g) => blocks
                .iter()
                .map(|b| (b.clone(), vec![Arc::clone(g)]))
                .collect(),
            Gateways::Ring { sharding, pool } => {
                let shard_size = self
                    .shared
                    .overrides
                    .for_tenant(self.tenant.as_str())
                    .store_gateway_tenant_shard_size;
                let shard = sharding.tenant_shard(self.tenant.as_str(), shard_size, now_ms());
                blocks
                    .iter()
                    .map(|b| {
                        let gws = shard
                            .replicas(b, BlocksOp::Read)
                            .into_iter()
                            .filter_map(|inst| match pool.get(&inst.addr) {
                                Ok(c) => Some(Arc::new(c) as Arc<dyn Gateway>),
                                Err(e) => {
                                    tracing::warn!(instance = %inst.id, error = %e, "store-gateway with an unusable address");
                                    None
                                }
                            })
                            .collect();
                        (b.clone(), gws)
                    })
                    .collect()
            }
        }
    }

    /// Asks for `blocks`, each of one replica at a time, until every block was answered or
    /// its replicas are exhausted. `call` asks one store-gateway for some blocks and returns
    /// its answer and the blocks it actually queried.
    async fn fetch<T, F, Fut>(&self, plan: &Plan, call: F) -> Result<Vec<T>, StorageError>
    where
        F: Fn(Arc<dyn Gateway>, Vec<String>) -> Fut,
        Fut: Future<Output = Result<(T, Vec<String>), FetchError>>,
    {
        let blocks = &plan.blocks;
        let replicas = self.replicas(blocks);
        let mut remaining: BTreeSet<String> = blocks.iter().cloned().collect();
        let mut tried: HashMap<String, HashSet<String>> = HashMap::new();
        let mut errors: Vec<String> = Vec::new();
        let mut answers = Vec::new();
        let mut round = 0;
        let metrics = &self.shared.metrics;
        metrics.consistency_checks.inc();
        while !remaining.is_empty() {
            // One store-gateway per block this round: the first replica not asked yet.
            let mut asks: HashMap<String, (Arc<dyn Gateway>, Vec<String>)> = HashMap::new();
            for b in &remaining {
                let tried = tried.entry(b.clone()).or_default();
                let next = replicas
                    .get(b)
                    .and_then(|gws| gws.iter().find(|g| !tried.contains(g.addr())));
                if let Some(g) = next {
                    tried.insert(g.addr().to_string());
                    asks.entry(g.addr().to_string())
                        .or_insert_with(|| (Arc::clone(g), Vec::new()))
                        .1
                        .push(b.clone());
                }
            }
            if asks.is_empty() {
                break;
            }
            if round > 0 {
                metrics.refetches.inc();
            }
            round += 1;
            let results = futures::future::join_all(asks.into_values().map(|(g, bs)| {
                let asked: HashSet<String> = bs.iter().cloned().collect();
                let addr = g.addr().to_string();
                let fut = call(g, bs);
                async move { (addr, asked, fut.await) }
            }))
            .await;
            for (addr, asked, result) in results {
                match result {
                    Ok((answer, queried)) => {
                        for q in queried.iter().filter(|q| asked.contains(*q)) {
                            remaining.remove(q);
                        }
                        answers.push(answer);
                    }
                    Err(FetchError::Fatal(e)) => return Err(e),
                    Err(FetchError::Call(s)) => {
                        let kind = error_kind(&s);
                        if kind == ErrorKind::Execution {
                            // Over a limit on the store-gateway: no other replica can help.
                            return Err(StorageError::Limit(s.message().to_string()));
                        }
                        tracing::debug!(store_gateway = %addr, code = ?s.code(), message = s.message(), "store-gateway call failed; trying other replicas");
                        errors.push(format!("{addr}: {} ({:?})", s.message(), s.code()));
                    }
                }
            }
        }
        let before = remaining.len();
        remaining.retain(|b| !plan.fresh.contains(b));
        if before > remaining.len() {
            tracing::debug!(
                blocks = before - remaining.len(),
                "blocks uploaded within the grace period not loaded by any store-gateway yet"
            );
        }
        if remaining.is_empty() {
            return Ok(answers);
        }
        metrics.consistency_failed.inc();
        let listed: Vec<&str> = remaining
            .iter()
            .take(MAX_IDS_IN_ERROR)
            .map(String::as_str)
            .collect();
        let more = remaining.len().saturating_sub(MAX_IDS_IN_ERROR);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let why = if errors.is_empty() {
            "no store-gateway that holds them answered for them (none in the ring, or none loaded them)".to_string()
        } else {
            errors.truncate(MAX_IDS_IN_ERROR);
            format!("errors: {}", errors.join("; "))
        };
        Err(StorageError::Unavailable(format!(
            "failed to fetch {} of {} blocks from the store-gateways after {round} round(s): {}{more}; {why}",
            remaining.len(),
            blocks.len(),
            listed.join(", "),
        )))
    }

    /// The chunk series of the plan's blocks, merged, under the query's fetch limits and
    /// `budget` (checked while reading; the merged answer is charged by the caller).
    async fn fetch_chunks(
        &self,
        plan: &Plan,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let counters = FetchCounters::new(self.limits());
        let matchers = matchers_to_proto(matchers);
        let tenant = &self.tenant;
        let lists = self
            .fetch(plan, |g, blocks| {
                let req = pb::SeriesRequest {
                    start_ms: plan.start_ms,
                    end_ms: plan.end_ms,
                    matchers: matchers.clone(),
                    block_ids: blocks,
                    skip_chunks: false,
                };
                let counters = &counters;
                async move {
                    let stream = g.series(tenant, req).await.map_err(FetchError::Call)?;
                    let answer = read_series(stream, counters, budget).await?;
                    Ok((answer.series, answer.queried_block_ids))
                }
            })
            .await?;
        // Merging replicas' overlapping chunks decodes them: CPU work, off the reactor unless
        // it is small.
        let work = merge_work(&lists);
        let all: Vec<_> = lists.into_iter().flatten().collect();
        decode_work(work, move || to_chunk_series(all))
            .await
            .map_err(|e| StorageError::Internal(format!("merging store-gateway series: {e}")))?
            .map_err(|e| StorageError::Internal(format!("store-gateway series: {e}")))
    }

    async fn chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<(Vec<ChunkSeries>, i64), StorageError> {
        let Some(plan) = self.plan(start_ms, end_ms).await? else {
            return Ok((Vec::new(), end_ms));
        };
        let got = self.fetch_chunks(&plan, matchers, budget).await?;
        if !budget.is_unlimited() {
            budget.charge(
                got.iter()
                    .map(|s| s.samples_in(start_ms, plan.end_ms))
                    .sum(),
            );
            budget.check()?;
        }
        Ok((got, plan.end_ms))
    }
}

#[async_trait]
impl Queryable for StoreQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        self.select_within(start_ms, end_ms, matchers, &SampleBudget::unlimited())
            .await
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let (got, end) = self
            .chunks_within(start_ms, end_ms, matchers, budget)
            .await?;
        let chunks = got.iter().map(|s| s.chunks.len()).sum();
        decode_work(chunks, move || decode_chunk_series(got, start_ms, end))
            .await
            .map_err(|e| StorageError::Internal(format!("decoding task failed: {e}")))?
            .map_err(|e| StorageError::Internal(format!("store-gateway chunks: {e}")))
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        self.select_chunks_within(start_ms, end_ms, matchers, &SampleBudget::unlimited())
            .await
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        Ok(self
            .chunks_within(start_ms, end_ms, matchers, budget)
            .await?
            .0)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let Some(plan) = self.plan(start_ms, end_ms).await? else {
            return Ok(Vec::new());
        };
        let matchers = matchers_to_proto(matchers);
        let tenant = &self.tenant;
        let lists = self
            .fetch(&plan, |g, blocks| {
                let req = pb::LabelNamesRequest {
                    start_ms: plan.start_ms,
                    end_ms: plan.end_ms,
                    matchers: matchers.clone(),
                    block_ids: blocks,
                };
                async move {
                    let r = g.label_names(tenant, req).await.map_err(FetchError::Call)?;
                    Ok((r.label_names, r.queried_block_ids))
                }
            })
            .await?;
        Ok(merge_strings(lists))
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let Some(plan) = self.plan(start_ms, end_ms).await? else {
            return Ok(Vec::new());
        };
        let matchers = matchers_to_proto(matchers);
        let tenant = &self.tenant;
        let lists = self
            .fetch(&plan, |g, blocks| {
                let req = pb::LabelValuesRequest {
                    label_name: name.to_string(),
                    start_ms: plan.start_ms,
                    end_ms: plan.end_ms,
                    matchers: matchers.clone(),
                    block_ids: blocks,
                };
                async move {
                    let r = g
                        .label_values(tenant, req)
                        .await
                        .map_err(FetchError::Call)?;
                    Ok((r.label_values, r.queried_block_ids))
                }
            })
            .await?;
        Ok(merge_strings(lists))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread() -> std::thread::ThreadId {
        std::thread::current().id()
    }

    /// A small answer is decoded by the task that fetched it, with no trip to the blocking
    /// pool; a large one on a blocking thread.
    #[tokio::test(flavor = "current_thread")]
    async fn small_answers_are_decoded_in_place_large_ones_on_the_blocking_pool() {
        let here = thread();
        let small = decode_work(INLINE_MAX_CHUNKS, thread).await.unwrap();
        assert_eq!(small, here);
        let none = decode_work(0, thread).await.unwrap();
        assert_eq!(none, here);
        let large = decode_work(INLINE_MAX_CHUNKS + 1, thread).await.unwrap();
        assert_ne!(large, here);
    }

    /// One answer of disjoint chunks weighs its series and a sixteenth of its chunks (no
    /// decoding); overlapping chunks or several answers weigh every chunk.
    #[test]
    fn merge_work_counts_decoding_only_where_chunks_overlap() {
        let series = |spans: &[(i64, i64)]| ipb::StreamSeries {
            labels: Vec::new(),
            chunks: spans
                .iter()
                .map(|&(min_time_ms, max_time_ms)| ipb::Chunk {
                    min_time_ms,
                    max_time_ms,
                    ..Default::default()
                })
                .collect(),
        };
        let disjoint: Vec<(i64, i64)> = (0..48).map(|i| (i * 10, i * 10 + 9)).collect();
        assert_eq!(merge_work(&[vec![series(&disjoint)]]), 1 + 3);
        assert!(merge_work(&[vec![series(&disjoint)]]) <= INLINE_MAX_CHUNKS);
        let mut overlapping = disjoint.clone();
        overlapping[5].1 = overlapping[6].0;
        assert_eq!(merge_work(&[vec![series(&overlapping)]]), 48);
        assert_eq!(
            merge_work(&[vec![series(&disjoint)], vec![series(&disjoint)]]),
            96
        );
        assert_eq!(merge_work(&[]), 0);
    }

    /// With every blocking thread taken (by a large query's decoding, say), a small answer is
    /// still decoded: it does not queue behind them.
    #[test]
    fn small_answers_do_not_wait_for_a_busy_blocking_pool() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let hog = rt.spawn_blocking(move || {
            started_tx.send(()).unwrap();
            wait.recv().unwrap();
        });
        started.recv().unwrap();
        // The only blocking thread is held until `release`: only in-place work can finish.
        let got = rt.block_on(decode_work(1, || 7)).unwrap();
        assert_eq!(got, 7);
        release.send(()).unwrap();
        rt.block_on(hog).unwrap();
    }
}
