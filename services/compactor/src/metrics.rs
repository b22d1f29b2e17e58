//! The compactor's metrics: Mimir's compactor metric names under the `norn_compactor_` prefix.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct CompactorMetrics {
    pub runs_started: IntCounter,
    pub runs_completed: IntCounter,
    pub runs_failed: IntCounter,
    pub last_successful_run: IntGauge,
    pub blocks_compacted: IntCounter,
    pub compactions: IntCounter,
    pub compaction_failures: IntCounter,
    pub compaction_duration: Histogram,
    pub blocks_marked_for_deletion: IntCounterVec,
    pub blocks_deleted: IntCounter,
    pub partial_blocks_deleted: IntCounter,
    pub no_compact_marks: IntCounterVec,
    pub tenants_owned: IntGauge,
    pub cleanup_runs: IntCounter,
    pub cleanup_failures: IntCounter,
    pub bucket_index_updates: IntCounter,
    pub bucket_index_update_failures: IntCounter,
}

impl CompactorMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, label: &str| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let compaction_duration = Histogram::with_opts(
            HistogramOpts::new(
                "norn_compactor_compaction_duration_seconds",
                "Time of one compaction job: download, merge, upload, marks.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
            ]),
        )?;
        registry.register(Box::new(compaction_duration.clone()))?;
        Ok(Self {
            runs_started: counter(
                "norn_compactor_runs_started_total",
                "Compaction runs started (one pass over the owned tenants).",
            )?,
            runs_completed: counter(
                "norn_compactor_runs_completed_total",
                "Compaction runs in which every owned tenant compacted without error.",
            )?,
            runs_failed: counter(
                "norn_compactor_runs_failed_total",
                "Compaction runs in which at least one tenant failed (retried next run).",
            )?,
            last_successful_run: gauge(
                "norn_compactor_last_successful_run_timestamp_seconds",
                "Unix time the last compaction run completed without error.",
            )?,
            blocks_compacted: counter(
                "norn_compactor_blocks_compacted_total",
                "Input blocks merged by completed compaction jobs.",
            )?,
            compactions: counter(
                "norn_compactor_group_compactions_total",
                "Compaction jobs completed (outputs uploaded, inputs marked for deletion).",
            )?,
            compaction_failures: counter(
                "norn_compactor_group_compactions_failures_total",
                "Compaction jobs that failed (storage or disk errors; retried next run).",
            )?,
            compaction_duration,
            blocks_marked_for_deletion: counter_vec(
                "norn_compactor_blocks_marked_for_deletion_total",
                "Blocks marked for deletion, by reason (compaction, retention).",
                "reason",
            )?,
            blocks_deleted: counter(
                "norn_compactor_blocks_cleaned_total",
                "Blocks deleted from the bucket after the deletion delay.",
            )?,
            partial_blocks_deleted: counter(
                "norn_compactor_partial_blocks_deleted_total",
                "Partial blocks (no meta.json) deleted after the partial-block deletion delay.",
            )?,
            no_compact_marks: counter_vec(
                "norn_compactor_blocks_marked_for_no_compaction_total",
                "Blocks marked no-compact because they failed to read or verify, by reason.",
                "reason",
            )?,
            tenants_owned: gauge(
                "norn_compactor_tenants_owned",
                "Tenants this compactor owns in the compactor ring.",
            )?,
            cleanup_runs: counter(
                "norn_compactor_block_cleanup_started_total",
                "Cleanup runs started.",
            )?,
            cleanup_failures: counter(
                "norn_compactor_block_cleanup_failed_total",
                "Cleanup runs in which at least one tenant failed.",
            )?,
            bucket_index_updates: counter(
                "norn_compactor_bucket_index_updates_total",
                "Bucket indexes written.",
            )?,
            bucket_index_update_failures: counter(
                "norn_compactor_bucket_index_update_failures_total",
                "Bucket index updates that failed.",
            )?,
        })
    }
}
