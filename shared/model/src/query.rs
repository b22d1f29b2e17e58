//! The read interface the PromQL engine evaluates over.
//!
//! A [`Queryable`] is already scoped to one tenant: whoever builds it (the querier, the
//! ruler, a test) binds the tenant, so the engine cannot read across tenants by mistake.
//! Selection returns materialised float series sorted by labels; the engine bounds memory with
//! its own sample limit. [`Queryable::select_chunks`] is the same selection with the samples
//! left in their encoded chunks, for readers that ship data on (see [`chunks`]).

pub mod chunks;
pub mod federated;

use async_trait::async_trait;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{ErrorKind, Labels, Matcher, MetricMetadata, Sample, TenantId};

pub use chunks::{
    ChunkSeries, EncodedChunk, SAMPLES_PER_ENCODED_CHUNK, decode_chunk_series, encode_samples,
    merge_chunk_series,
};
pub use federated::{FederatedQueryable, ORIGINAL_TENANT_ID_LABEL, TENANT_ID_LABEL};

/// A series and its samples within the selected time range, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A storage read failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Internal(String),
    /// The selection itself is invalid (a malformed `__query_shard__` matcher): a 400.
    #[error("{0}")]
    BadData(String),
}

impl From<crate::shard::ShardError> for StorageError {
    fn from(e: crate::shard::ShardError) -> Self {
        StorageError::BadData(e.to_string())
    }
}

impl StorageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Unavailable(_) => ErrorKind::Unavailable,
            StorageError::Limit(_) => ErrorKind::Execution,
            StorageError::Internal(_) => ErrorKind::Internal,
            StorageError::BadData(_) => ErrorKind::BadData,
        }
    }

    /// The storage error a failure of `kind` is (a remote store's answer): `Unavailable`
    /// when another replica may answer ([`ErrorKind::try_another_replica`]), `Limit` for a
    /// query over a limit, `Internal` otherwise.
    pub fn from_kind(kind: ErrorKind, message: String) -> Self {
        if kind.try_another_replica() {
            StorageError::Unavailable(message)
        } else if kind == ErrorKind::Execution {
            StorageError::Limit(message)
        } else if kind == ErrorKind::BadData {
            StorageError::BadData(message)
        } else {
            StorageError::Internal(message)
        }
    }
}

/// Prometheus' message for a query over its sample limit.
pub const TOO_MANY_SAMPLES: &str =
    "query processing would load too many samples into memory in query execution";

/// How many samples one query may still load, shared by every select it makes. Sources that
/// build their answer series by series charge each series as they go and stop once the
/// budget is spent, so a query holds at most its limit plus one series — not, as when the
/// count came after each answer, a whole answer over a million series.
#[derive(Debug)]
pub struct SampleBudget {
    limit: usize,
    used: AtomicUsize,
}

impl SampleBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    /// Charges `n` samples; false once the budget is spent (the caller stops reading).
    pub fn charge(&self, n: usize) -> bool {
        let used = self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        used <= self.limit
    }

    /// Whether this budget never runs out (sources may then skip counting).
    pub fn is_unlimited(&self) -> bool {
        self.limit == usize::MAX
    }

    /// Samples charged so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn exhausted(&self) -> bool {
        self.used() > self.limit
    }

    /// `Err(Limit)` once the budget is spent: a source whose reading stopped early must not
    /// hand out what it read.
    pub fn check(&self) -> Result<(), StorageError> {
        if self.exhausted() {
            return Err(StorageError::Limit(TOO_MANY_SAMPLES.to_string()));
        }
        Ok(())
    }
}

/// Charges a whole answer to `budget` at once (for sources that cannot stop part way).
/// Each series reduced to its newest sample (series without samples dropped).
pub fn keep_last(mut series: Vec<Series>) -> Vec<Series> {
    series.retain_mut(|s| match s.samples.pop() {
        Some(last) => {
            s.samples.clear();
            s.samples.push(last);
            true
        }
        None => false,
    });
    series
}

fn charge_whole(got: Vec<Series>, budget: &SampleBudget) -> Result<Vec<Series>, StorageError> {
    budget.charge(got.iter().map(|s| s.samples.len()).sum());
    budget.check()?;
    Ok(got)
}

/// Tenant-scoped read access to stored series. Time bounds are inclusive milliseconds.
#[async_trait]
pub trait Queryable: Send + Sync {
    /// [`select`](Self::select) within a sample budget: fails with
    /// [`StorageError::Limit`] once the budget is spent. The default charges the whole answer
    /// after it is built; sources that can hold much implement it to stop as soon as the
    /// budget runs out.
    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        charge_whole(self.select(start_ms, end_ms, matchers).await?, budget)
    }

    /// Series matching every matcher, with their samples in `[start_ms, end_ms]`, sorted by
    /// labels. Series with no sample in the range may be omitted.
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError>;

    /// [`select_within`](Self::select_within) keeping only each series' newest sample in
    /// `[start_ms, end_ms]`: what an instant vector selector evaluated at one time needs.
    /// The budget is charged with the samples returned (one per series, as Prometheus
    /// counts an instant selector). The default selects everything and drops the rest;
    /// sources that know their newest samples (the head) answer without decoding.
    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let all = self.select(start_ms, end_ms, matchers).await?;
        charge_whole(keep_last(all), budget)
    }

    /// [`select`](Self::select) with each series' samples left in the encoded chunks the
    /// source holds, sorted by labels. Chunks overlap `[start_ms, end_ms]` but are not cut to
    /// it: the reader that decodes them trims. The default encodes what `select` returns,
    /// for sources that hold samples rather than chunks; sources with chunks (the head,
    /// blocks) hand them out as they are.
    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let got = self.select(start_ms, end_ms, matchers).await?;
        Ok(got.iter().map(ChunkSeries::encode).collect())
    }

    /// [`select_chunks`](Self::select_chunks) within a sample budget, charged with the
    /// samples inside `[start_ms, end_ms]` (as [`select_within`](Self::select_within) is, so
    /// a query costs the same whichever way it reads). The default charges the whole answer
    /// after it is built.
    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let got = self.select_chunks(start_ms, end_ms, matchers).await?;
        chunks::charge_chunks(got, start_ms, end_ms, budget)
    }

    /// Sorted, unique label names of series matching `matchers` (all series when empty) that
    /// have data in the range.
    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError>;

    /// Sorted, unique values of label `name` over series matching `matchers`.
    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError>;
}

/// Hands out tenant-scoped [`Queryable`]s: the querier's view of storage for one tenant.
pub trait QueryableProvider: Send + Sync {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable>;
}

/// Reads metric metadata (type, help, unit) that remote write carried.
#[async_trait]
pub trait MetadataReader: Send + Sync {
    /// Metadata per metric family name; `metric` restricts to one family, `limit` (0 = no
    /// limit) caps the number of families.
    async fn metadata(
        &self,
        tenant: &TenantId,
        metric: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError>;
}

/// Several stores seen as one: the head and the blocks of an ingester, or ingesters and
/// the bucket in the querier. The same series from several sources becomes one series whose
/// samples are the union by timestamp: where sources overlap (a block still in the head
/// while it is being cut, a block both on an ingester's disk and in the bucket, replicas)
/// each timestamp is returned once, the first source's value winning.
///
/// It is a [`QuorumQueryable`] that tolerates no failure: every source holds data no other
/// one has.
pub struct MergeQueryable(QuorumQueryable);

impl MergeQueryable {
    pub fn new(sources: Vec<Arc<dyn Queryable>>) -> Self {
        Self(QuorumQueryable::new(sources, 0))
    }

    /// One source needs no merging: hand it out as it is.
    pub fn of(mut sources: Vec<Arc<dyn Queryable>>) -> Arc<dyn Queryable> {
        if sources.len() == 1 {
            return sources.pop().expect("one source");
        }
        Arc::new(Self::new(sources))
    }
}

/// Several [`QueryableProvider`]s as one: each tenant's view is the merge of theirs (the
/// querier over ingesters and the bucket store).
pub struct MergedProvider(pub Vec<Arc<dyn QueryableProvider>>);

impl QueryableProvider for MergedProvider {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        MergeQueryable::of(self.0.iter().map(|p| p.queryable(tenant)).collect())
    }
}

/// Merges two runs of samples sorted by time, keeping `a`'s sample on equal timestamps.
pub fn merge_samples(a: Vec<Sample>, b: Vec<Sample>) -> Vec<Sample> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    // The common case of disjoint sources (head after its blocks): a plain append.
    if a.last().is_some_and(|x| x.t < b[0].t) {
        let mut a = a;
        a.extend(b);
        return a;
    }
    if b.last().is_some_and(|x| x.t < a[0].t) {
        let mut b = b;
        b.extend(a);
        return b;
    }
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].t.cmp(&b[j].t) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Joins lists sorted by labels into one sorted list, two lists at a time; an item of each
/// list with equal labels (one series from two sources) becomes one through `join`, whose
/// first argument is from the earlier list. The series merges of the query path, over chunks
/// or samples, and the head's parallel reads all go through it.
pub fn merge_by_labels<T, E>(
    lists: Vec<Vec<T>>,
    labels: impl Fn(&T) -> &Labels,
    mut join: impl FnMut(T, T) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    let mut lists = lists.into_iter().filter(|l| !l.is_empty());
    let Some(mut acc) = lists.next() else {
        return Ok(Vec::new());
    };
    for list in lists {
        let mut out = Vec::with_capacity(acc.len().max(list.len()));
        let mut a = acc.into_iter().peekable();
        let mut b = list.into_iter().peekable();
        loop {
            let ord = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => labels(x).cmp(labels(y)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            match ord {
                std::cmp::Ordering::Less => out.extend(a.next()),
                std::cmp::Ordering::Greater => out.extend(b.next()),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    out.push(join(x, y)?);
                }
            }
        }
        acc = out;
    }
    Ok(acc)
}

/// Merges label-sorted series lists into one, joining series with equal labels.
pub fn merge_series(lists: Vec<Vec<Series>>) -> Vec<Series> {
    let joined = merge_by_labels(
        lists,
        |s| &s.labels,
        |x, y| {
            Ok::<_, std::convert::Infallible>(Series {
                labels: x.labels,
                samples: merge_samples(x.samples, y.samples),
            })
        },
    );
    match joined {
        Ok(series) => series,
        Err(never) => match never {},
    }
}

/// Sorted, unique union of label-name or label-value lists from several sources.
pub fn merge_strings(lists: Vec<Vec<String>>) -> Vec<String> {
    let mut all: Vec<String> = lists.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[async_trait]
impl Queryable for MergeQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        self.0.select(start_ms, end_ms, matchers).await
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        self.0
            .select_within(start_ms, end_ms, matchers, budget)
            .await
    }

    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        self.0
            .select_last_within(start_ms, end_ms, matchers, budget)
            .await
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        self.0.select_chunks(start_ms, end_ms, matchers).await
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        self.0
            .select_chunks_within(start_ms, end_ms, matchers, budget)
            .await
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.0.label_names(start_ms, end_ms, matchers).await
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.0.label_values(name, start_ms, end_ms, matchers).await
    }
}

/// The replicas of a tenant's recent data (the ingesters of the ring's read set) as one
/// store: every source is asked at once, up to `max_errors` of them may fail, and the
/// answers are merged so that a sample held by several replicas appears once. More failures
/// than that fail the read, because a missing replica could hold samples no other one has.
pub struct QuorumQueryable {
    sources: Vec<Arc<dyn Queryable>>,
    max_errors: usize,
}

impl QuorumQueryable {
    pub fn new(sources: Vec<Arc<dyn Queryable>>, max_errors: usize) -> Self {
        Self {
            sources,
            max_errors,
        }
    }

    async fn gather<T, F, Fut>(&self, ask: F) -> Result<Vec<T>, StorageError>
    where
        F: Fn(Arc<dyn Queryable>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        gather_quorum(
            self.sources.iter().map(|s| ask(Arc::clone(s))),
            self.max_errors,
        )
        .await
    }
}

/// Least time the replicas still out get, once a quorum has answered, before the read goes
/// on without them (see [`gather_quorum`]).
pub const STRAGGLER_GRACE_MIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs every replica's part of a read at once and keeps the answers, unless more than
/// `max_errors` replicas failed: then the read fails, because a missing replica could hold
/// data no other one has. Used for every kind of replica read (series, labels, metadata).
///
/// Once all but `max_errors` replicas have answered (the quorum, which holds every sample a
/// write quorum acknowledged), the others get as long again as the quorum took (at least
/// [`STRAGGLER_GRACE_MIN`]) and are then given up, as Mimir's replication set does: a replica
/// that died without closing its connections (a killed container, a lost machine) would
/// otherwise hold every read until the ring marks it unhealthy, up to a heartbeat timeout.
pub async fn gather_quorum<T, Fut>(
    asks: impl IntoIterator<Item = Fut>,
    max_errors: usize,
) -> Result<Vec<T>, StorageError>
where
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    use futures::FutureExt;
    use futures::stream::{FuturesUnordered, StreamExt};

    let started = std::time::Instant::now();
    let mut pending: FuturesUnordered<Fut> = asks.into_iter().collect();
    let total = pending.len();
    let quorum = total.saturating_sub(max_errors);
    let mut ok = Vec::with_capacity(total);
    let mut errors = Vec::new();
    while ok.len() < quorum && errors.len() <= max_errors {
        match pending.next().await {
            Some(Ok(v)) => ok.push(v),
            Some(Err(e)) => errors.push(e),
            None => break,
        }
    }
    if errors.len() <= max_errors {
        // Answers already in are always kept.
        while let Some(Some(a)) = pending.next().now_or_never() {
            match a {
                Ok(v) => ok.push(v),
                Err(e) => errors.push(e),
            }
        }
        if !pending.is_empty() {
            let mut rest = std::pin::pin!(async {
                while let Some(a) = pending.next().await {
                    match a {
                        Ok(v) => ok.push(v),
                        Err(e) => errors.push(e),
                    }
                }
            });
            // Without a Tokio runtime (no timer) the stragglers are awaited, as before.
            if tokio::runtime::Handle::try_current().is_ok() {
                let grace = started.elapsed().max(STRAGGLER_GRACE_MIN);
                let _ = tokio::time::timeout(grace, rest.as_mut()).await;
            } else {
                rest.await;
            }
        }
    }
    if errors.len() > max_errors {
        let failed = errors.len();
        let first = errors.swap_remove(0);
        return Err(match first {
            // With no failure tolerated (MergeQueryable) the source's own error says it all.
            StorageError::Unavailable(m) if max_errors > 0 => StorageError::Unavailable(format!(
                "{failed} of {total} replicas failed (at most {max_errors} may): {m}"
            )),
            other => other,
        });
    }
    Ok(ok)
}

#[async_trait]
impl Queryable for QuorumQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        let lists = self
            .gather(|s| async move { s.select(start_ms, end_ms, matchers).await })
            .await?;
        Ok(merge_series(lists))
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        if self.max_errors > 0 {
            // Replicas hold the same samples: charging each would count them RF times, so
            // the merged answer is charged once.
            return charge_whole(self.select(start_ms, end_ms, matchers).await?, budget);
        }
        // Distinct sources (head, local blocks, bucket blocks) share the budget as they read.
        let lists = self
            .gather(|s| async move { s.select_within(start_ms, end_ms, matchers, budget).await })
            .await?;
        budget.check()?;
        Ok(merge_series(lists))
    }

    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        if self.max_errors > 0 {
            // Replicas: charged once, on the merged answer (see `select_within`).
            let unlimited = SampleBudget::unlimited();
            let unlimited = &unlimited;
            let lists = self
                .gather(|s| async move {
                    s.select_last_within(start_ms, end_ms, matchers, unlimited)
                        .await
                })
                .await?;
            return charge_whole(keep_last(merge_series(lists)), budget);
        }
        let lists = self
            .gather(|s| async move {
                s.select_last_within(start_ms, end_ms, matchers, budget)
                    .await
            })
            .await?;
        budget.check()?;
        Ok(keep_last(merge_series(lists)))
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let lists = self
            .gather(|s| async move { s.select_chunks(start_ms, end_ms, matchers).await })
            .await?;
        merge_chunk_series(lists)
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        if self.max_errors > 0 {
            // Replicas: charged once, on the merged answer (see `select_within`).
            let got = self.select_chunks(start_ms, end_ms, matchers).await?;
            return chunks::charge_chunks(got, start_ms, end_ms, budget);
        }
        let lists = self
            .gather(|s| async move {
                s.select_chunks_within(start_ms, end_ms, matchers, budget)
                    .await
            })
            .await?;
        budget.check()?;
        merge_chunk_series(lists)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let lists = self
            .gather(|s| async move { s.label_names(start_ms, end_ms, matchers).await })
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
        let lists = self
            .gather(|s| async move { s.label_values(name, start_ms, end_ms, matchers).await })
            .await?;
        Ok(merge_strings(lists))
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    fn series(name: &str, samples: Vec<Sample>) -> Series {
        Series {
            labels: Labels::from_pairs([("__name__", name)]),
            samples,
        }
    }

    #[test]
    fn overlapping_samples_appear_once() {
        assert_eq!(
            merge_samples(
                vec![s(1, 1.0), s(3, 3.0)],
                vec![s(2, 2.0), s(3, 9.0), s(4, 4.0)]
            ),
            [s(1, 1.0), s(2, 2.0), s(3, 3.0), s(4, 4.0)]
        );
        assert_eq!(
            merge_samples(vec![s(5, 5.0)], vec![s(1, 1.0)]),
            [s(1, 1.0), s(5, 5.0)]
        );
        assert_eq!(merge_samples(vec![], vec![s(1, 1.0)]), [s(1, 1.0)]);
    }

    #[test]
    fn series_join_by_labels_and_stay_sorted() {
        let merged = merge_series(vec![
            vec![series("a", vec![s(1, 1.0)]), series("c", vec![s(1, 1.0)])],
            vec![],
            vec![
                series("b", vec![s(1, 1.0)]),
                series("c", vec![s(1, 1.0), s(2, 2.0)]),
            ],
        ]);
        let names: Vec<String> = merged.iter().map(|x| x.labels.to_string()).collect();
        assert_eq!(names.len(), 3);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(merged[2].samples, [s(1, 1.0), s(2, 2.0)]);
    }
}

#[cfg(test)]
mod quorum_tests {
    use super::*;

    /// A replica holding fixed series, or failing.
    struct Replica(Option<Vec<Series>>);

    #[async_trait]
    impl Queryable for Replica {
        async fn select(&self, _: i64, _: i64, _: &[Matcher]) -> Result<Vec<Series>, StorageError> {
            self.0
                .clone()
                .ok_or_else(|| StorageError::Unavailable("connection refused".into()))
        }
        async fn label_names(
            &self,
            _: i64,
            _: i64,
            _: &[Matcher],
        ) -> Result<Vec<String>, StorageError> {
            Ok(vec!["__name__".into()])
        }
        async fn label_values(
            &self,
            _: &str,
            _: i64,
            _: i64,
            _: &[Matcher],
        ) -> Result<Vec<String>, StorageError> {
            Ok(vec![])
        }
    }

    fn up(samples: &[(i64, f64)]) -> Vec<Series> {
        vec![Series {
            labels: Labels::from_pairs([("__name__", "up")]),
            samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        }]
    }

    #[tokio::test]
    async fn replicas_merge_without_duplicates_and_tolerate_max_errors() {
        let q = QuorumQueryable::new(
            vec![
                Arc::new(Replica(Some(up(&[(1, 1.0), (2, 2.0)])))),
                Arc::new(Replica(None)),
                Arc::new(Replica(Some(up(&[(2, 2.0), (3, 3.0)])))),
            ],
            1,
        );
        let got = q.select(0, 10, &[]).await.unwrap();
        assert_eq!(got, up(&[(1, 1.0), (2, 2.0), (3, 3.0)]));

        let q = QuorumQueryable::new(
            vec![
                Arc::new(Replica(Some(up(&[(1, 1.0)])))),
                Arc::new(Replica(None)),
                Arc::new(Replica(None)),
            ],
            1,
        );
        let err = q.select(0, 10, &[]).await.unwrap_err();
        assert!(matches!(err, StorageError::Unavailable(_)));
        assert!(err.to_string().contains("2 of 3 replicas failed"), "{err}");
    }

    /// An answer after `delay`, or none ever (`None`).
    async fn answer(delay: Option<u64>, v: u32) -> Result<u32, StorageError> {
        match delay {
            Some(ms) => {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Ok(v)
            }
            None => futures::future::pending().await,
        }
    }

    #[tokio::test]
    async fn a_replica_that_never_answers_does_not_hold_the_read() {
        // A dead ingester whose connection hangs: the quorum (2 of 3) answers at 20 ms, the
        // read goes on after the grace (at least STRAGGLER_GRACE_MIN) without it.
        let start = std::time::Instant::now();
        let mut got = gather_quorum(
            [answer(Some(10), 1), answer(None, 2), answer(Some(20), 3)],
            1,
        )
        .await
        .unwrap();
        got.sort();
        assert_eq!(got, vec![1, 3]);
        let took = start.elapsed();
        assert!(
            took >= STRAGGLER_GRACE_MIN && took < std::time::Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_straggler_within_the_grace_is_kept() {
        // Quorum at 300 ms, so the third gets 300 ms more; it answers at 400 ms and counts.
        let mut got = gather_quorum(
            [
                answer(Some(200), 1),
                answer(Some(300), 2),
                answer(Some(400), 3),
            ],
            1,
        )
        .await
        .unwrap();
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn no_tolerated_error_waits_for_every_source() {
        // max_errors 0 (MergeQueryable: every source holds its own data): no grace, all awaited.
        let mut got = gather_quorum([answer(Some(10), 1), answer(Some(500), 2)], 0)
            .await
            .unwrap();
        got.sort();
        assert_eq!(got, vec![1, 2]);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_budget_is_spent_past_its_limit_and_then_an_error() {
        let b = SampleBudget::new(10);
        assert!(b.charge(4));
        assert!(b.charge(6));
        assert!(b.check().is_ok());
        assert!(!b.charge(1));
        assert!(b.exhausted());
        assert!(matches!(b.check(), Err(StorageError::Limit(m)) if m == TOO_MANY_SAMPLES));
        let u = SampleBudget::unlimited();
        assert!(u.charge(usize::MAX / 2) && u.charge(usize::MAX / 2));
    }
}
