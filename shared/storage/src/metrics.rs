//! Optional bucket metrics: operations, failures and latency per operation.
//!
//! `operation` is one of the [`Bucket`](crate::Bucket) methods that talk to the backend
//! (`put`, `upload_file`, `get`, `get_range`, `download_file`, `exists`, `size`, `list`,
//! `list_dirs`, `delete`, `delete_prefix`); directory transfers count as their file
//! transfers. A missing object is an answer, not a failure: `NotFound` is not counted in
//! `norn_bucket_operation_failures_total`.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::error::StorageError;

/// The bucket's Prometheus metrics. Register once per process and share with
/// [`Bucket::with_metrics`](crate::Bucket::with_metrics).
#[derive(Debug, Clone)]
pub struct BucketMetrics {
    operations: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
}

impl BucketMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let operations = IntCounterVec::new(
            Opts::new(
                "norn_bucket_operations_total",
                "Bucket operations started, by operation.",
            ),
            &["operation"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "norn_bucket_operation_failures_total",
                "Bucket operations that failed (a missing object is not a failure), by operation.",
            ),
            &["operation"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_bucket_operation_duration_seconds",
                "Duration of bucket operations, by operation.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["operation"],
        )?;
        registry.register(Box::new(operations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            operations,
            failures,
            duration,
        })
    }

    pub(crate) fn observe(&self, op: &str, elapsed: Duration, error: Option<&StorageError>) {
        self.operations.with_label_values(&[op]).inc();
        self.duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
        if error.is_some_and(|e| !e.is_not_found()) {
            self.failures.with_label_values(&[op]).inc();
        }
    }
}
