//! The ingester's own metrics (the TSDB's are `norn_tsdb::TsdbMetrics`), in Norn's one
//! idiom: a struct built from the registry, every metric created and registered once.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

pub(crate) struct IngesterMetrics {
    pub(crate) memory_series: IntGaugeVec,
    pub(crate) memory_users: IntGauge,
    pub(crate) blocks_cut: IntCounter,
    pub(crate) block_cut_failures: IntCounter,
    pub(crate) block_cut_duration: Histogram,
    pub(crate) local_blocks: IntGaugeVec,
    pub(crate) block_open_failures: IntCounter,
    pub(crate) shipper_uploads: IntCounter,
    pub(crate) shipper_upload_failures: IntCounter,
    pub(crate) shipper_last_success: IntGauge,
    pub(crate) blocks_deleted: IntCounterVec,
    pub(crate) tenants_refused: IntCounterVec,
    pub(crate) tenants_closed: IntCounter,
    pub(crate) fd_limit: IntGauge,
}

impl IngesterMetrics {
    pub(crate) fn new(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let memory_series = IntGaugeVec::new(
            Opts::new(
                "norn_ingester_memory_series",
                "Series held in the ingester's heads, by tenant.",
            ),
            &["tenant"],
        )?;
        let memory_users = IntGauge::new(
            "norn_ingester_memory_users",
            "Tenants with a head in this ingester.",
        )?;
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        let blocks_cut = counter(
            "norn_ingester_blocks_cut_total",
            "Blocks cut from heads (head compactions that produced a block).",
        )?;
        let block_cut_failures = counter(
            "norn_ingester_block_cut_failures_total",
            "Head compactions that failed (the data stays in the head and WAL; retried).",
        )?;
        let block_cut_duration = Histogram::with_opts(
            HistogramOpts::new(
                "norn_ingester_block_cut_duration_seconds",
                "Time to write a block from the head, release it and checkpoint the WAL.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )?;
        let local_blocks = IntGaugeVec::new(
            Opts::new(
                "norn_ingester_local_blocks",
                "Blocks on the ingester's local disk, by tenant.",
            ),
            &["tenant"],
        )?;
        let block_open_failures = counter(
            "norn_ingester_block_open_failures_total",
            "Local blocks that could not be opened on start (left on disk, not served).",
        )?;
        let shipper_uploads = counter(
            "norn_ingester_shipper_uploads_total",
            "Blocks uploaded to the bucket.",
        )?;
        let shipper_upload_failures = counter(
            "norn_ingester_shipper_upload_failures_total",
            "Block uploads that failed (retried at the next ship interval).",
        )?;
        let shipper_last_success = IntGauge::new(
            "norn_ingester_shipper_last_successful_upload_timestamp_seconds",
            "Unix time of the last successful block upload.",
        )?;
        let blocks_deleted = IntCounterVec::new(
            Opts::new(
                "norn_ingester_local_blocks_deleted_total",
                "Shipped local blocks deleted after the retention period, by tenant.",
            ),
            &["tenant"],
        )?;
        let tenants_refused = IntCounterVec::new(
            Opts::new(
                "norn_ingester_tenants_refused_total",
                "Pushes for a new tenant refused (retryably) by an instance limit, by reason \
                 (max_tenants, file_descriptors).",
            ),
            &["reason"],
        )?;
        let tenants_closed = counter(
            "norn_ingester_idle_tenants_closed_total",
            "Idle tenants whose head was closed and local directory deleted (everything shipped).",
        )?;
        let fd_limit = IntGauge::new(
            "norn_ingester_file_descriptors_limit",
            "The soft open-files limit new tenants are budgeted against (0 = unknown, no budget).",
        )?;
        let m = Self {
            memory_series,
            memory_users,
            blocks_cut,
            block_cut_failures,
            block_cut_duration,
            local_blocks,
            block_open_failures,
            shipper_uploads,
            shipper_upload_failures,
            shipper_last_success,
            blocks_deleted,
            tenants_refused,
            tenants_closed,
            fd_limit,
        };
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.memory_series.clone()),
            Box::new(m.memory_users.clone()),
            Box::new(m.blocks_cut.clone()),
            Box::new(m.block_cut_failures.clone()),
            Box::new(m.block_cut_duration.clone()),
            Box::new(m.local_blocks.clone()),
            Box::new(m.block_open_failures.clone()),
            Box::new(m.shipper_uploads.clone()),
            Box::new(m.shipper_upload_failures.clone()),
            Box::new(m.shipper_last_success.clone()),
            Box::new(m.blocks_deleted.clone()),
            Box::new(m.tenants_refused.clone()),
            Box::new(m.tenants_closed.clone()),
            Box::new(m.fd_limit.clone()),
        ];
        for c in all {
            registry.register(c)?;
        }
        Ok(m)
    }
}
