//! Prometheus metrics of the TSDB (WAL and head), shared by every tenant's head.
//!
//! Handles are created once per process with [`TsdbMetrics::new`] and passed to each head as
//! an `Arc`; tests use [`TsdbMetrics::unregistered`]. No tenant or series labels: the
//! ingester adds per-tenant views where it needs them.
//!
//! The TSDB is a library: the component embedding it names its metrics. Names are
//! `<prefix>_wal_…` and `<prefix>_head_…`; the ingester passes [`INGESTER_PREFIX`], which
//! keeps its exported names (`norn_ingester_wal_fsync_duration_seconds`, …); a future
//! store-gateway or compactor embedding a head would pass its own.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

/// The prefix the ingester's TSDB metrics carry (`norn_<component>`).
pub const INGESTER_PREFIX: &str = "norn_ingester";

/// The prefix of metrics that are never exported ([`TsdbMetrics::unregistered`]).
const UNREGISTERED_PREFIX: &str = "norn_tsdb";

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
    /// Creates the metrics named `<prefix>_…` (`prefix` is `norn_<component>`, e.g.
    /// [`INGESTER_PREFIX`]) and registers them with `registry`.
    pub fn new(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let m = Self::named(prefix)?;
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
        Self::named(UNREGISTERED_PREFIX).expect("static metric definitions")
    }

    fn named(prefix: &str) -> prometheus::Result<Self> {
        let name = |what: &str| format!("{prefix}_{what}");
        let counter = |name: String, help: &str| IntCounter::with_opts(Opts::new(name, help));
        Ok(Self {
            wal_bytes_written: counter(
                name("wal_bytes_written_total"),
                "Bytes written to WAL segments, framing included.",
            )?,
            wal_records_written: counter(
                name("wal_records_written_total"),
                "Records written to the WAL.",
            )?,
            wal_fsync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    name("wal_fsync_duration_seconds"),
                    "Duration of WAL fsyncs (one per group commit).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )?,
            wal_corruptions: counter(
                name("wal_corruptions_total"),
                "Corrupt or torn WAL tails found (and truncated) during replay.",
            )?,
            wal_replay_duration: Gauge::with_opts(Opts::new(
                name("wal_replay_duration_seconds"),
                "Duration of the last WAL replay.",
            ))?,
            wal_write_failures: counter(
                name("wal_write_failures_total"),
                "WAL writes or fsyncs that failed (the write is answered 5xx and the WAL refuses \
                 writes until it recovers).",
            )?,
            wal_broken: IntGauge::with_opts(Opts::new(
                name("wal_broken"),
                "WALs refusing writes after an I/O error, not recovered yet.",
            ))?,
            wal_recoveries: counter(
                name("wal_recoveries_total"),
                "WALs that recovered from an I/O error by starting a new segment.",
            )?,
            head_samples_appended: counter(
                name("head_samples_appended_total"),
                "Samples appended to heads.",
            )?,
            head_series_created: counter(
                name("head_series_created_total"),
                "Series created in heads.",
            )?,
            head_series_removed: counter(
                name("head_series_removed_total"),
                "Series removed from heads.",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_names_the_metrics() {
        let registry = Registry::new();
        TsdbMetrics::new(&registry, INGESTER_PREFIX).unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"norn_ingester_wal_fsync_duration_seconds".to_string()));
        assert!(names.contains(&"norn_ingester_head_series_created_total".to_string()));
        assert_eq!(names.len(), 11, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("norn_ingester_")));

        let other = Registry::new();
        TsdbMetrics::new(&other, "norn_store_gateway").unwrap();
        assert!(
            other
                .gather()
                .iter()
                .all(|f| f.name().starts_with("norn_store_gateway_"))
        );
        assert!(TsdbMetrics::new(&Registry::new(), "bad prefix").is_err());
    }
}
