//! Prometheus metrics of the TSDB (WAL and head), shared by every tenant's head.
//!
//! Handles are created once per process with [`TsdbMetrics::new`] and passed to each head as
//! an `Arc`; tests use [`TsdbMetrics::unregistered`]. No tenant or series labels: the
//! ingester adds per-tenant views where it needs them.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

/// The TSDB's metric handles.
#[derive(Clone)]
pub struct TsdbMetrics {
    pub wal_bytes_written: IntCounter,
    pub wal_records_written: IntCounter,
    pub wal_fsync_duration: Histogram,
    pub wal_corruptions: IntCounter,
    pub wal_replay_duration: Gauge,
    pub wal_write_failures: IntCounter,
    pub wal_broken: IntGauge,
    pub wal_recoveries: IntCounter,
    pub head_samples_appended: IntCounter,
    pub head_series_created: IntCounter,
    pub head_series_removed: IntCounter,
}

impl std::fmt::Debug for TsdbMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsdbMetrics").finish_non_exhaustive()
    }
}

impl TsdbMetrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered();
        registry.register(Box::new(m.wal_bytes_written.clone()))?;
        registry.register(Box::new(m.wal_records_written.clone()))?;
        registry.register(Box::new(m.wal_fsync_duration.clone()))?;
        registry.register(Box::new(m.wal_corruptions.clone()))?;
        registry.register(Box::new(m.wal_replay_duration.clone()))?;
        registry.register(Box::new(m.wal_write_failures.clone()))?;
        registry.register(Box::new(m.wal_broken.clone()))?;
        registry.register(Box::new(m.wal_recoveries.clone()))?;
        registry.register(Box::new(m.head_samples_appended.clone()))?;
        registry.register(Box::new(m.head_series_created.clone()))?;
        registry.register(Box::new(m.head_series_removed.clone()))?;
        Ok(m)
    }

    /// Metrics that are not exported anywhere (tests, tools).
    pub fn unregistered() -> Self {
        fn counter(name: &str, help: &str) -> IntCounter {
            IntCounter::with_opts(Opts::new(name, help)).expect("static metric definition")
        }
        Self {
            wal_bytes_written: counter(
                "norn_ingester_wal_bytes_written_total",
                "Bytes written to WAL segments, framing included.",
            ),
            wal_records_written: counter(
                "norn_ingester_wal_records_written_total",
                "Records written to the WAL.",
            ),
            wal_fsync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "norn_ingester_wal_fsync_duration_seconds",
                    "Duration of WAL fsyncs (one per group commit).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )
            .expect("static metric definition"),
            wal_corruptions: counter(
                "norn_ingester_wal_corruptions_total",
                "Corrupt or torn WAL tails found (and truncated) during replay.",
            ),
            wal_replay_duration: Gauge::with_opts(Opts::new(
                "norn_ingester_wal_replay_duration_seconds",
                "Duration of the last WAL replay.",
            ))
            .expect("static metric definition"),
            wal_write_failures: counter(
                "norn_ingester_wal_write_failures_total",
                "WAL writes or fsyncs that failed (the write is answered 5xx and the WAL refuses \
                 writes until it recovers).",
            ),
            wal_broken: IntGauge::with_opts(Opts::new(
                "norn_ingester_wal_broken",
                "WALs refusing writes after an I/O error, not recovered yet.",
            ))
            .expect("static metric definition"),
            wal_recoveries: counter(
                "norn_ingester_wal_recoveries_total",
                "WALs that recovered from an I/O error by starting a new segment.",
            ),
            head_samples_appended: counter(
                "norn_ingester_head_samples_appended_total",
                "Samples appended to heads.",
            ),
            head_series_created: counter(
                "norn_ingester_head_series_created_total",
                "Series created in heads.",
            ),
            head_series_removed: counter(
                "norn_ingester_head_series_removed_total",
                "Series removed from heads.",
            ),
        }
    }
}
