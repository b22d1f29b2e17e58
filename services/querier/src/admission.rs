//! How many queries run at once (`--querier.max-concurrent`), how many may wait for a turn
//! (`--querier.max-outstanding-requests`), and the metrics that show it.
//!
//! Every query-API request that evaluates or reads series (`query`, `query_range`, `series`,
//! `labels`, `label/<name>/values`, `format_query`) takes a slot first. Without a bound, a
//! burst of expensive queries shares the CPU until every one of them times out, and each
//! holds its fetched samples meanwhile (three runaway queries reached 16 GB RSS). A request
//! that finds every slot taken waits in line until its own deadline, then gets 503
//! `unavailable` (retryable; Grafana shows it); once the line is full, new requests get that
//! answer at once instead of piling up. The line is one FIFO for all tenants: fairness
//! between tenants is the query-frontend's job.
//!
//! A PromQL query's slot goes with it to the engine's query thread and is freed when that
//! thread ends, not when the handler stops waiting: after a client disconnect or a request
//! timeout the thread notices within a few hundred units of work and stops, and only then is
//! its slot another query's. So `max_concurrent` bounds evaluations actually running. The
//! other reads hold their slot in the handler, whose drop stops their storage calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use norn_model::ErrorKind;
use norn_server::HttpError;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The querier's metrics: admission (running, queued, rejected and stopped queries) and the
/// engine's query threads.
#[derive(Clone)]
pub struct QuerierMetrics {
    /// Queries holding a slot.
    pub running: IntGauge,
    /// Queries waiting for a slot.
    pub queued: IntGauge,
    /// Queries refused a slot, by reason (`queue_full`, `queue_timeout`).
    pub rejected: IntCounterVec,
    /// Queries stopped before they finished, by reason (`timeout`, `canceled`).
    pub stopped: IntCounterVec,
    /// The most samples each finished query held at once (the engine's accounting).
    pub peak_samples: Histogram,
    /// The most bytes each finished query held at once, as the engine estimates them.
    pub peak_memory: Histogram,
}

impl QuerierMetrics {
    /// Records what a finished query cost.
    pub fn observe_query(&self, stats: &norn_promql::QueryStats) {
        self.peak_samples.observe(stats.peak_samples as f64);
        self.peak_memory.observe(stats.estimated_peak_bytes as f64);
    }
}

impl QuerierMetrics {
    /// Creates the metrics, and a gauge of `engine`'s query threads, on `registry`.
    pub fn new(registry: &Registry, engine: &norn_promql::Engine) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["reason"])?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str| {
            // 1k to ~4G in powers of four.
            let buckets = prometheus::exponential_buckets(1024.0, 4.0, 12)?;
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let metrics = Self {
            running: gauge(
                "norn_querier_running_queries",
                "Queries running now (at most querier.max-concurrent).",
            )?,
            queued: gauge(
                "norn_querier_queued_queries",
                "Queries waiting for a free slot (at most querier.max-outstanding-requests).",
            )?,
            rejected: counter(
                "norn_querier_rejected_queries_total",
                "Queries answered 503 unavailable without running, by reason: queue_full, queue_timeout.",
            )?,
            stopped: counter(
                "norn_querier_stopped_queries_total",
                "Queries stopped before they finished, by reason: timeout (deadline passed), canceled (client went away).",
            )?,
            peak_samples: histogram(
                "norn_querier_query_peak_samples",
                "The most samples a finished query held at once (fetched samples, windows, subquery results, output): what querier.max-samples bounds.",
            )?,
            peak_memory: histogram(
                "norn_querier_query_estimated_peak_memory_bytes",
                "The most bytes a finished query held at once, as the engine estimates them (samples at 16 bytes plus the fetched series' labels): what max_estimated_memory_consumption_per_query bounds.",
            )?,
        };
        registry.register(Box::new(QueryThreads::new(engine.clone())?))?;
        Ok(metrics)
    }
}

/// `norn_querier_query_threads`: the engine's busy query threads, read at scrape time. Above
/// `norn_querier_running_queries` for more than a moment means evaluations outlive their
/// requests.
struct QueryThreads {
    engine: norn_promql::Engine,
    gauge: IntGauge,
}

impl QueryThreads {
    fn new(engine: norn_promql::Engine) -> prometheus::Result<Self> {
        Ok(Self {
            engine,
            gauge: IntGauge::new(
                "norn_querier_query_threads",
                "PromQL query threads busy with a query (parsing, evaluating, or winding down after its request ended); idle pooled threads are not counted.",
            )?,
        })
    }
}

impl prometheus::core::Collector for QueryThreads {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set(self.engine.query_threads() as i64);
        self.gauge.collect()
    }
}

/// The slots and the line in front of them.
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    metrics: QuerierMetrics,
}

/// A held slot; frees it when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    running: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.running.dec();
    }
}

/// Uncounts a waiting request however its wait ends (a slot, its deadline, its drop).
struct Waiting<'a>(&'a Admission);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.queued.dec();
    }
}

impl Admission {
    /// `max_concurrent` slots (at least one); up to `max_waiting` requests wait for one.
    pub fn new(max_concurrent: usize, max_waiting: usize, metrics: QuerierMetrics) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
            metrics,
        }
    }

    pub fn metrics(&self) -> &QuerierMetrics {
        &self.metrics
    }

    /// A slot, waiting for one until `deadline` if all are taken.
    pub async fn enter(&self, deadline: Instant) -> Result<Slot, HttpError> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Reserve a place in line, or refuse when the line is full.
                let took = self
                    .waiting
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < self.max_waiting).then_some(n + 1)
                    });
                if took.is_err() {
                    self.metrics
                        .rejected
                        .with_label_values(&["queue_full"])
                        .inc();
                    return Err(unavailable(format!(
                        "too many queries: every one of the querier's slots is busy and {} queries are already waiting (querier.max-concurrent, querier.max-outstanding-requests); retry later",
                        self.max_waiting
                    )));
                }
                self.metrics.queued.inc();
                let _waiting = Waiting(self);
                let acquire = Arc::clone(&self.slots).acquire_owned();
                match tokio::time::timeout_at(deadline.into(), acquire).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => {
                        return Err(unavailable("the querier is shutting down".into()));
                    }
                    Err(_) => {
                        self.metrics
                            .rejected
                            .with_label_values(&["queue_timeout"])
                            .inc();
                        return Err(unavailable(
                            "too many queries: no querier slot became free before the query's timeout (querier.max-concurrent); retry later".into(),
                        ));
                    }
                }
            }
        };
        self.metrics.running.inc();
        Ok(Slot {
            _permit: permit,
            running: self.metrics.running.clone(),
        })
    }
}

fn unavailable(msg: String) -> HttpError {
    HttpError::new(ErrorKind::Unavailable, msg).into_json()
}

/// Counts the query as canceled if dropped before [`Self::finish`] said how it ended: the
/// handler's future is dropped when the client goes away.
pub struct Outcome<'a> {
    metrics: &'a QuerierMetrics,
    done: bool,
}

impl<'a> Outcome<'a> {
    pub fn new(metrics: &'a QuerierMetrics) -> Self {
        Self {
            metrics,
            done: false,
        }
    }

    /// Records how the query ended.
    pub fn finish<T>(mut self, r: &Result<T, HttpError>) {
        self.done = true;
        if let Err(e) = r {
            match e.kind {
                ErrorKind::Timeout => self.metrics.stopped.with_label_values(&["timeout"]).inc(),
                ErrorKind::Canceled => self.metrics.stopped.with_label_values(&["canceled"]).inc(),
                _ => {}
            }
        }
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.stopped.with_label_values(&["canceled"]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slots_then_a_bounded_line_then_refusal() {
        let engine = norn_promql::Engine::new(Default::default());
        let metrics = QuerierMetrics::new(&Registry::new(), &engine).unwrap();
        let a = Admission::new(1, 1, metrics);
        let far = Instant::now() + Duration::from_secs(60);
        let held = a.enter(far).await.unwrap();
        assert_eq!(a.metrics().running.get(), 1);
        // The line holds one: a second waiter is refused at once.
        let waiter = a.enter(far);
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiter)
                .await
                .is_err()
        );
        assert_eq!(a.metrics().queued.get(), 1);
        let e = a.enter(far).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("max-outstanding-requests"), "{e}");
        // The slot passes to the one in line.
        drop(held);
        let next = waiter.await.unwrap();
        assert_eq!(a.metrics().queued.get(), 0);
        // Waiting ends at the deadline.
        let soon = Instant::now() + Duration::from_millis(50);
        let e = a.enter(soon).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("timeout"), "{e}");
        assert_eq!(a.metrics().queued.get(), 0);
        drop(next);
        assert_eq!(a.metrics().running.get(), 0);
        let r = &a.metrics().rejected;
        assert_eq!(r.with_label_values(&["queue_full"]).get(), 1);
        assert_eq!(r.with_label_values(&["queue_timeout"]).get(), 1);
    }
}
