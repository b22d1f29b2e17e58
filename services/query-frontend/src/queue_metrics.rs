//! The queue's metrics (`norn_query_frontend_queue_*` and the workers'), registered with the
//! frontend's when the queue is built.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Reasons a request leaves the queue unanswered by a querier (the `reason` label).
pub const DISCARD_REASONS: [&str; 4] = [
    "too_many_outstanding",
    "timeout",
    "cancelled",
    "requeue_limit",
];

#[derive(Clone)]
pub struct QueueMetrics {
    /// Requests waiting, by tenant (a tenant's series is removed when its queue empties, so
    /// the label stays bounded by the tenants with work waiting).
    pub queue_length: IntGaugeVec,
    /// Time from being queued to a worker taking the request (first time).
    pub queue_duration: Histogram,
    /// Requests that left the queue without a querier's answer, by reason.
    pub discarded: IntCounterVec,
    /// Workers pulling from the queue (each querier connects `--querier.max-concurrent`).
    pub connected_workers: IntGauge,
    /// Requests put back in the queue because their querier went away.
    pub requeued: IntCounter,
}

impl QueueMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let queue_length = IntGaugeVec::new(
            Opts::new(
                "norn_query_frontend_queue_length",
                "Requests waiting in the query-frontend's queue for a querier, by tenant.",
            ),
            &["tenant"],
        )?;
        let queue_duration = Histogram::with_opts(
            HistogramOpts::new(
                "norn_query_frontend_queue_duration_seconds",
                "Time a request waited in the query-frontend's queue before a querier took it.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0,
            ]),
        )?;
        let discarded = IntCounterVec::new(
            Opts::new(
                "norn_query_frontend_discarded_requests_total",
                "Requests the query-frontend's queue gave up on, by reason (too_many_outstanding: 429; timeout: 504; cancelled: the caller went away; requeue_limit: its queriers kept going away).",
            ),
            &["reason"],
        )?;
        let connected_workers = IntGauge::new(
            "norn_query_frontend_connected_workers",
            "Querier workers pulling from the query-frontend's queue (in-process ones included).",
        )?;
        let requeued = IntCounter::new(
            "norn_query_frontend_requeued_requests_total",
            "Requests put back in the query-frontend's queue because the querier running them went away.",
        )?;
        registry.register(Box::new(queue_length.clone()))?;
        registry.register(Box::new(queue_duration.clone()))?;
        registry.register(Box::new(discarded.clone()))?;
        registry.register(Box::new(connected_workers.clone()))?;
        registry.register(Box::new(requeued.clone()))?;
        for r in DISCARD_REASONS {
            discarded.with_label_values(&[r]);
        }
        Ok(Self {
            queue_length,
            queue_duration,
            discarded,
            connected_workers,
            requeued,
        })
    }

    pub(crate) fn discarded(&self, reason: &str) {
        self.discarded.with_label_values(&[reason]).inc();
    }

    pub(crate) fn set_length(&self, tenant: &str, len: usize) {
        self.queue_length
            .with_label_values(&[tenant])
            .set(len as i64);
    }

    pub(crate) fn forget(&self, tenant: &str) {
        let _ = self.queue_length.remove_label_values(&[tenant]);
    }
}
