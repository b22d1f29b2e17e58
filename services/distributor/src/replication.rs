//! Replication over the ingester ring: each series goes to the ingesters the ring names for
//! its token, and a push succeeds once a quorum of every series' replicas stored it.
//!
//! The [`ReplicatedPusher`] is a [`Pusher`] like the in-process ingester, so the distributor's
//! pipeline does not know whether it runs in one process or in a cluster. It sees the ring
//! through [`WriteRing`] (the gossiped `norn_ring::Ring` in a cluster) and reaches ingesters
//! through [`PusherPool`] (the gRPC client pool); tests use plain in-memory fakes.
//!
//! Why per-series quorum and not per-request: a request's series land on different replica
//! sets, and one dead ingester must not fail series it does not own. Every sub-push is bounded
//! by the remote timeout; the answer goes back as soon as each series has its quorum, while
//! the pushes to slower replicas finish in the background (they still count: the data is on
//! the replica the ring will ask at query time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use norn_model::{ErrorKind, PushError, PushOutcome, Pusher, TenantId, WriteBatch};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub use norn_ingester_client::{EncodedPusher, PusherPool};
pub use norn_ring::{ReplicaSet, WriteRing};

/// The ring token of a series: a hash of the tenant and all its (sorted) labels, as Mimir's
/// shard-by-all-labels, so one tenant's series spread over every ingester.
pub fn shard_token<'a>(
    tenant: &TenantId,
    labels: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(tenant.as_str().as_bytes());
    h.update(&[0xff]);
    for (name, value) in labels {
        h.update(name);
        h.update(&[0xff]);
        h.update(value);
        h.update(&[0xff]);
    }
    let x = h.digest();
    (x ^ (x >> 32)) as u32
}

/// Per-ingester push counts, failures and latency.
struct ReplicationMetrics {
    appends: IntCounterVec,
    failures: IntCounterVec,
    latency: HistogramVec,
}

impl ReplicationMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let appends = IntCounterVec::new(
            Opts::new(
                "norn_distributor_ingester_appends_total",
                "Pushes sent to each ingester.",
            ),
            &["ingester"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "norn_distributor_ingester_append_failures_total",
                "Pushes to an ingester that failed, by kind (unavailable, timeout, internal).",
            ),
            &["ingester", "kind"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "norn_distributor_ingester_push_duration_seconds",
                "Time for one ingester to answer a push.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
            &["ingester"],
        )?;
        registry.register(Box::new(appends.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            appends,
            failures,
            latency,
        })
    }
}

/// Writes each series to its replica set and waits for per-series quorum.
pub struct ReplicatedPusher {
    ring: Arc<dyn WriteRing>,
    pool: Arc<dyn PusherPool>,
    remote_timeout: Duration,
    metrics: Arc<ReplicationMetrics>,
}

impl ReplicatedPusher {
    /// A pusher whose metrics are registered on `registry` (one per registry).
    pub fn new(
        ring: Arc<dyn WriteRing>,
        pool: Arc<dyn PusherPool>,
        remote_timeout: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            ring,
            pool,
            remote_timeout,
            metrics: Arc::new(ReplicationMetrics::new(registry)?),
        })
    }
}

/// What one ingester's sub-push came back with.
struct SubResult {
    addr_idx: usize,
    result: Result<PushOutcome, PushError>,
}

#[async_trait]
impl Pusher for ReplicatedPusher {
    async fn push(&self, tenant: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        // Assign series to replica sets (a handful of distinct sets for the whole request).
        let tokens: Vec<u32> = if batch.is_empty() {
            // Metadata only: it goes to one replica set's ingesters, any will do.
            if batch.metadata().is_empty() {
                return Ok(PushOutcome::default());
            }
            vec![0]
        } else {
            batch
                .iter()
                .map(|s| shard_token(tenant, s.label_bytes()))
                .collect()
        };
        let (sets, series_set) = self
            .ring
            .replicas_for(&tokens)
            .map_err(PushError::Unavailable)?;
        // Per ingester, the series it gets.
        let mut addrs: Vec<String> = Vec::new();
        let mut addr_index: HashMap<&str, usize> = HashMap::new();
        let mut per_addr: Vec<Vec<usize>> = Vec::new();
        let mut set_addrs: Vec<Vec<usize>> = Vec::with_capacity(sets.len());
        for set in &sets {
            let mut idxs = Vec::with_capacity(set.addrs.len());
            for a in &set.addrs {
                let i = *addr_index.entry(a.as_str()).or_insert_with(|| {
                    addrs.push(a.clone());
                    per_addr.push(Vec::new());
                    addrs.len() - 1
                });
                idxs.push(i);
            }
            set_addrs.push(idxs);
        }
        if !batch.is_empty() {
            for (series, &set) in series_set.iter().enumerate() {
                for &a in &set_addrs[set as usize] {
                    per_addr[a].push(series);
                }
            }
        }

        // Sets an ingester takes part in: its success or failure counts for all of them.
        let mut addr_sets: Vec<Vec<usize>> = vec![Vec::new(); addrs.len()];
        for (set, idxs) in set_addrs.iter().enumerate() {
            for &a in idxs {
                addr_sets[a].push(set);
            }
        }

        let mut pending = FuturesUnordered::new();
        let encoded = norn_proto::encode_write_request_parts(&batch);
        for (addr_idx, series) in per_addr.into_iter().enumerate() {
            let sub = encoded.select(&series, true);
            let addr = addrs[addr_idx].clone();
            let pool = Arc::clone(&self.pool);
            let tenant = tenant.clone();
            let timeout = self.remote_timeout;
            let metrics = Arc::clone(&self.metrics);
            // A task, not a plain future: pushes still running when the quorum is reached
            // finish in the background instead of being dropped half-way.
            pending.push(tokio::spawn(async move {
                metrics.appends.with_label_values(&[&addr]).inc();
                let started = Instant::now();
                // The failure kind is known where the failure happens; the metric takes it
                // from there rather than from the message. A timeout is an unavailable
                // ingester to the quorum, but counted as what it is.
                let (result, timed_out) = match pool.pusher(&addr) {
                    Err(e) => (Err(e), false),
                    Ok(p) => {
                        match tokio::time::timeout(timeout, p.push_encoded(&tenant, sub)).await {
                            Ok(r) => (r, false),
                            Err(_) => (
                                Err(PushError::Unavailable(format!(
                                    "ingester {addr} did not answer within {timeout:?}"
                                ))),
                                true,
                            ),
                        }
                    }
                };
                metrics
                    .latency
                    .with_label_values(&[&addr])
                    .observe(started.elapsed().as_secs_f64());
                if let Err(e) = &result {
                    let kind = if timed_out {
                        ErrorKind::Timeout
                    } else {
                        e.kind()
                    };
                    metrics
                        .failures
                        .with_label_values(&[&addr, kind.prometheus_error_type()])
                        .inc();
                    tracing::debug!(ingester = %addr, error = %e, "push to ingester failed");
                }
                SubResult { addr_idx, result }
            }));
        }

        let mut ok = vec![0usize; sets.len()];
        let mut failed = vec![0usize; sets.len()];
        let mut done_sets = 0usize;
        let mut outcomes: Vec<(usize, PushOutcome)> = Vec::new();
        let mut first_failure: Option<PushError> = None;
        while let Some(joined) = pending.next().await {
            let SubResult { addr_idx, result } = joined.unwrap_or_else(|e| SubResult {
                addr_idx: usize::MAX,
                result: Err(PushError::Internal(format!("push task failed: {e}"))),
            });
            if addr_idx == usize::MAX {
                return Err(first_failure
                    .unwrap_or_else(|| PushError::Internal("push task failed".to_string())));
            }
            match result {
                Ok(outcome) => {
                    for &s in &addr_sets[addr_idx] {
                        ok[s] += 1;
                        let need = sets[s]
                            .addrs
                            .len()
                            .saturating_sub(sets[s].max_errors)
                            .max(1);
                        if ok[s] == need {
                            done_sets += 1;
                        }
                    }
                    outcomes.push((addr_idx, outcome));
                }
                Err(e) => {
                    for &s in &addr_sets[addr_idx] {
                        failed[s] += 1;
                        if failed[s] > sets[s].max_errors {
                            return Err(PushError::Unavailable(format!(
                                "failed pushing to ingester {}: {e} (quorum of {} impossible)",
                                addrs[addr_idx],
                                sets[s].addrs.len() - sets[s].max_errors
                            )));
                        }
                    }
                    first_failure.get_or_insert(e);
                }
            }
            if done_sets == sets.len() {
                break;
            }
        }
        if done_sets < sets.len() {
            return Err(first_failure.unwrap_or_else(|| {
                PushError::Internal("replication ended without a quorum".to_string())
            }));
        }
        Ok(merge_outcomes(&batch, &sets, &addr_sets, outcomes))
    }
}

/// One outcome for the request from the replicas' outcomes. Replicas get the same series and
/// refuse the same samples, so each replica's refusals count once per replica of the series it
/// got: a sub-push's counts are divided by the replication of its sets.
fn merge_outcomes(
    batch: &WriteBatch,
    sets: &[ReplicaSet],
    addr_sets: &[Vec<usize>],
    outcomes: Vec<(usize, PushOutcome)>,
) -> PushOutcome {
    let mut rejected: Vec<(&'static str, f64)> = Vec::new();
    let mut first_error = None;
    for (addr_idx, outcome) in outcomes {
        let replication = addr_sets[addr_idx]
            .iter()
            .map(|&s| sets[s].addrs.len())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        for (reason, n) in outcome.rejected {
            match rejected.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n as f64 / replication,
                None => rejected.push((reason, n as f64 / replication)),
            }
        }
        if first_error.is_none() {
            first_error = outcome.first_error;
        }
    }
    let rejected: Vec<(&'static str, usize)> = rejected
        .into_iter()
        .map(|(r, n)| (r, n.round() as usize))
        .filter(|(_, n)| *n > 0)
        .collect();
    let refused: usize = rejected.iter().map(|(_, n)| n).sum();
    PushOutcome {
        appended: batch.num_samples().saturating_sub(refused),
        rejected,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use norn_model::{Labels, Sample};
    use parking_lot::Mutex;

    /// An ingester that remembers what it got, or fails.
    #[derive(Default)]
    struct FakeIngester {
        got: Mutex<Vec<String>>,
        down: std::sync::atomic::AtomicBool,
        slow: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl EncodedPusher for FakeIngester {
        async fn push_encoded(
            &self,
            _t: &TenantId,
            write_request: Bytes,
        ) -> Result<PushOutcome, PushError> {
            let batch = norn_proto::decode_write_request(write_request)
                .map_err(|e| PushError::Internal(e.to_string()))?;
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(PushError::Unavailable("connection refused".into()));
            }
            if self.slow.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let mut got = self.got.lock();
            for s in batch.iter() {
                got.push(format!("{:?}", s.labels().collect::<Vec<_>>()));
            }
            Ok(PushOutcome {
                appended: batch.num_samples(),
                ..Default::default()
            })
        }
    }

    struct Fakes(Vec<Arc<FakeIngester>>);

    impl PusherPool for Fakes {
        fn pusher(&self, addr: &str) -> Result<Arc<dyn EncodedPusher>, PushError> {
            let i: usize = addr.parse().unwrap();
            Ok(Arc::clone(&self.0[i]) as Arc<dyn EncodedPusher>)
        }
    }

    /// A ring of `n` ingesters where token t belongs to t%n and the next rf-1.
    struct ModRing {
        n: usize,
        rf: usize,
    }

    impl WriteRing for ModRing {
        fn replicas_for(&self, tokens: &[u32]) -> Result<(Vec<ReplicaSet>, Vec<u32>), String> {
            let mut sets: Vec<ReplicaSet> = Vec::new();
            let mut of_token = Vec::new();
            for &token in tokens {
                let first = token as usize % self.n;
                let set = ReplicaSet {
                    addrs: (0..self.rf)
                        .map(|k| ((first + k) % self.n).to_string())
                        .collect(),
                    max_errors: self.rf - (self.rf / 2 + 1),
                };
                let i = match sets.iter().position(|s| *s == set) {
                    Some(i) => i,
                    None => {
                        sets.push(set);
                        sets.len() - 1
                    }
                };
                of_token.push(i as u32);
            }
            Ok((sets, of_token))
        }
    }

    fn batch(n: usize) -> WriteBatch {
        let series: Vec<(Labels, Vec<Sample>)> = (0..n)
            .map(|i| {
                (
                    Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())]),
                    vec![Sample::new(1000, i as f64)],
                )
            })
            .collect();
        WriteBatch::from_series(&series)
    }

    fn setup(n: usize, rf: usize) -> (ReplicatedPusher, Vec<Arc<FakeIngester>>) {
        let ings: Vec<_> = (0..n).map(|_| Arc::new(FakeIngester::default())).collect();
        let p = ReplicatedPusher::new(
            Arc::new(ModRing { n, rf }),
            Arc::new(Fakes(ings.clone())),
            Duration::from_millis(300),
            &Registry::new(),
        )
        .unwrap();
        (p, ings)
    }

    #[tokio::test]
    async fn every_series_reaches_rf_ingesters() {
        let (p, ings) = setup(5, 3);
        let out = p.push(&TenantId::anonymous(), batch(100)).await.unwrap();
        assert_eq!(out.appended, 100);
        // Background pushes finish shortly after the quorum answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let total: usize = ings.iter().map(|i| i.got.lock().len()).sum();
        assert_eq!(total, 300);
        for i in &ings {
            assert!(
                !i.got.lock().is_empty(),
                "series spread over every ingester"
            );
        }
    }

    #[tokio::test]
    async fn one_of_three_down_still_succeeds_two_fails() {
        let (p, ings) = setup(3, 3);
        ings[1]
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        p.push(&TenantId::anonymous(), batch(10)).await.unwrap();
        ings[2]
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let err = p.push(&TenantId::anonymous(), batch(10)).await.unwrap_err();
        assert!(matches!(err, PushError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("quorum"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_replica_does_not_hold_the_answer_and_times_out_alone() {
        let (p, ings) = setup(3, 3);
        ings[0]
            .slow
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        p.push(&TenantId::anonymous(), batch(10)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        ings[1]
            .slow
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let err = p.push(&TenantId::anonymous(), batch(10)).await.unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
    }

    #[test]
    fn shard_token_depends_on_tenant_and_every_label() {
        let a = TenantId::new("a").unwrap();
        let b = TenantId::new("b").unwrap();
        let l1: [(&[u8], &[u8]); 2] = [(b"__name__", b"up"), (b"job", b"x")];
        let l2: [(&[u8], &[u8]); 2] = [(b"__name__", b"up"), (b"job", b"y")];
        assert_ne!(shard_token(&a, l1), shard_token(&b, l1));
        assert_ne!(shard_token(&a, l1), shard_token(&a, l2));
        assert_eq!(shard_token(&a, l1), shard_token(&a, l1));
    }
}
