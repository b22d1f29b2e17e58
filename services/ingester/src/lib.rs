//! The ingester: one TSDB head (with its WAL) and a set of local blocks per tenant.
//!
//! Pushes land in the tenant's head and are durable in its WAL before the push returns, so a
//! crash never loses an acknowledged sample. On start the ingester finds every tenant directory
//! under `blocks_storage.tsdb.dir`, opens its local blocks and replays its WAL in the
//! background; until that is done `/ready` says so and pushes get 503 (retryable).
//!
//! # Block lifecycle
//!
//! Every `head_compaction_interval` each head is checked: once its newest sample is half a
//! block range past the end of its oldest aligned range, that range is cut into a block in
//! `<tsdb dir>/<tenant>/<ULID>/` (Prometheus' format), the head lets go of it and the WAL is
//! checkpointed. A head idle for `head_compaction_idle_timeout` is cut whole. The shipper
//! uploads new blocks to the bucket (`meta.json` last) and records them in `shipper.json`;
//! shipped blocks are deleted locally after `retention_period`. `POST /ingester/flush` cuts
//! and ships everything now; `POST /ingester/shutdown` does that and stops the ingester.
//!
//! Reads see the head and the local blocks merged, so a query never falls into the seam of a
//! cut. Metric metadata from remote write is kept per tenant, bounded and expiring
//! ([`metadata`]).

pub mod config;
pub mod fd_budget;
pub mod grpc;
pub mod metadata;
pub mod shipper;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use norn_limits::Overrides;
use norn_model::{
    MergeQueryable, MetadataReader, MetricMetadata, PushError, PushOutcome, Pusher, Queryable,
    QueryableProvider, StorageError, TenantId, WriteBatch,
};
use norn_server::{HttpError, Metrics, Service};
use norn_storage::{Bucket, StorageError as BucketError, layout};
use norn_tsdb::block::{Block, BlockOptions, TMP_SUFFIX, Ulid};
use norn_tsdb::dir_lock::DirLock;
use norn_tsdb::head::{AppendLimits, Head, HeadOptions, HeadQueryable, RejectReason};
use norn_tsdb::{BlocksQueryable, TsdbError, TsdbMetrics};
use parking_lot::{Mutex, RwLock};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use fd_budget::FdBudget;
use metadata::{MetadataLimits, MetadataStore};
use shipper::Shipped;

/// How often `/ingester/flush` may run without `force=true`: a flush cuts every head whole,
/// after which samples for the cut range are refused as too old, so an unauthenticated
/// caller flushing in a loop would make every tenant's in-flight samples fail.
const FLUSH_MIN_INTERVAL_MS: i64 = 60_000;

/// `source` in the Thanos section of the blocks the ingester cuts.
const BLOCK_SOURCE: &str = "ingester";

struct TenantDb {
    tenant: TenantId,
    dir: PathBuf,
    head: Arc<Head>,
    metadata: MetadataStore,
    /// Local blocks, oldest first.
    blocks: RwLock<Vec<Arc<Block>>>,
    shipped: Mutex<Shipped>,
    /// Serialises cuts (the compaction loop and flush requests).
    cut_lock: Mutex<()>,
    /// Serialises uploads, so two shippers never upload the same block at once.
    ship_lock: tokio::sync::Mutex<()>,
    /// Wall-clock time of the last push, for the idle timeout.
    last_push_ms: AtomicI64,
}

impl TenantDb {
    fn blocks_queryable(&self) -> BlocksQueryable {
        BlocksQueryable::new(self.blocks.read().clone())
    }

    fn add_block(&self, block: Block) {
        let mut blocks = self.blocks.write();
        blocks.push(Arc::new(block));
        blocks.sort_by_key(|b| (b.meta().min_time, b.meta().ulid.clone()));
    }
}

struct IngesterMetrics {
    memory_series: IntGaugeVec,
    memory_users: IntGauge,
    blocks_cut: IntCounter,
    block_cut_failures: IntCounter,
    block_cut_duration: Histogram,
    local_blocks: IntGaugeVec,
    block_open_failures: IntCounter,
    shipper_uploads: IntCounter,
    shipper_upload_failures: IntCounter,
    shipper_last_success: IntGauge,
    blocks_deleted: IntCounterVec,
    tenants_refused: IntCounterVec,
    tenants_closed: IntCounter,
    fd_limit: IntGauge,
}

impl IngesterMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        let memory_series = IntGaugeVec::new(
            Opts::new(
                "norn_ingester_memory_series",
                "Series held in the ingester's heads, by tenant.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let memory_users = IntGauge::new(
            "norn_ingester_memory_users",
            "Tenants with a head in this ingester.",
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let blocks_cut = counter(
            "norn_ingester_blocks_cut_total",
            "Blocks cut from heads (head compactions that produced a block).",
        );
        let block_cut_failures = counter(
            "norn_ingester_block_cut_failures_total",
            "Head compactions that failed (the data stays in the head and WAL; retried).",
        );
        let block_cut_duration = Histogram::with_opts(
            HistogramOpts::new(
                "norn_ingester_block_cut_duration_seconds",
                "Time to write a block from the head, release it and checkpoint the WAL.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        let local_blocks = IntGaugeVec::new(
            Opts::new(
                "norn_ingester_local_blocks",
                "Blocks on the ingester's local disk, by tenant.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let block_open_failures = counter(
            "norn_ingester_block_open_failures_total",
            "Local blocks that could not be opened on start (left on disk, not served).",
        );
        let shipper_uploads = counter(
            "norn_ingester_shipper_uploads_total",
            "Blocks uploaded to the bucket.",
        );
        let shipper_upload_failures = counter(
            "norn_ingester_shipper_upload_failures_total",
            "Block uploads that failed (retried at the next ship interval).",
        );
        let shipper_last_success = IntGauge::new(
            "norn_ingester_shipper_last_successful_upload_timestamp_seconds",
            "Unix time of the last successful block upload.",
        )
        .expect("valid metric");
        let blocks_deleted = IntCounterVec::new(
            Opts::new(
                "norn_ingester_local_blocks_deleted_total",
                "Shipped local blocks deleted after the retention period, by tenant.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let tenants_refused = IntCounterVec::new(
            Opts::new(
                "norn_ingester_tenants_refused_total",
                "Pushes for a new tenant refused (retryably) by an instance limit, by reason \
                 (max_tenants, file_descriptors).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let tenants_closed = counter(
            "norn_ingester_idle_tenants_closed_total",
            "Idle tenants whose head was closed and local directory deleted (everything shipped).",
        );
        let fd_limit = IntGauge::new(
            "norn_ingester_file_descriptors_limit",
            "The soft open-files limit new tenants are budgeted against (0 = unknown, no budget).",
        )
        .expect("valid metric");
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
            registry.register(c).expect("registered once");
        }
        m
    }
}

/// Why a flush did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cutting blocks for tenant {tenant}: {source}")]
    Cut { tenant: String, source: TsdbError },
    #[error("shipping blocks of tenant {tenant}: {source}")]
    Ship { tenant: String, source: BucketError },
    #[error("flush task failed: {0}")]
    Task(String),
}

/// Why a tenant's TSDB was not opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// An instance limit: retryable, the tenant may fit later or on another ingester.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Tsdb(#[from] TsdbError),
}

impl FlushError {
    pub fn kind(&self) -> norn_model::ErrorKind {
        match self {
            FlushError::Ship { source, .. } if source.is_retryable() => {
                norn_model::ErrorKind::Unavailable
            }
            _ => norn_model::ErrorKind::Internal,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The ingester service.
pub struct Ingester {
    config: Config,
    overrides: Arc<Overrides>,
    metrics: Arc<Metrics>,
    tsdb_metrics: Arc<TsdbMetrics>,
    own: IngesterMetrics,
    /// Where blocks are shipped; `None` keeps them local (tests, or shipping disabled).
    bucket: Option<Bucket>,
    /// Wakes the shipper after a cut.
    ship_now: tokio::sync::Notify,
    tenants: RwLock<HashMap<TenantId, Arc<TenantDb>>>,
    /// Serialises creating a tenant's head so two pushes cannot open the same WAL twice.
    create_lock: Mutex<()>,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// Refuses pushes while still serving reads (an ingester LEAVING the ring).
    read_only: AtomicBool,
    fd_budget: FdBudget,
    /// Wall-clock time of the last `/ingester/flush` that ran (for its rate limit).
    last_flush_request_ms: AtomicI64,
    /// Held for the life of the ingester: no second process may use the TSDB directory.
    _dir_lock: DirLock,
}

impl Ingester {
    /// Creates the ingester and starts replaying existing tenants' WALs in the background.
    pub fn start(
        config: Config,
        overrides: Arc<Overrides>,
        metrics: Arc<Metrics>,
        bucket: Option<Bucket>,
    ) -> Result<Arc<Self>, TsdbError> {
        // Before anything reads or wipes a file in it: a second process on the same directory
        // would replay every tenant, wipe the head caches and collide with our WAL segments.
        let dir_lock = DirLock::acquire(&config.tsdb.dir)?;
        let tsdb_metrics = Arc::new(
            TsdbMetrics::new(&metrics.registry, norn_tsdb::metrics::INGESTER_PREFIX)
                .map_err(|e| TsdbError::InvalidOption(format!("registering TSDB metrics: {e}")))?,
        );
        let own = IngesterMetrics::new(&metrics.registry);
        let fd_budget = FdBudget::for_process();
        own.fd_limit.set(fd_budget.limit() as i64);
        let ing = Arc::new(Self {
            config,
            overrides,
            metrics,
            tsdb_metrics,
            own,
            bucket,
            ship_now: tokio::sync::Notify::new(),
            tenants: RwLock::default(),
            create_lock: Mutex::new(()),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            read_only: AtomicBool::new(false),
            fd_budget,
            last_flush_request_ms: AtomicI64::new(i64::MIN),
            _dir_lock: dir_lock,
        });
        let bg = Arc::clone(&ing);
        std::thread::Builder::new()
            .name("wal-replay".into())
            .spawn(move || bg.replay_all())
            .map_err(|source| TsdbError::Io {
                path: PathBuf::from("wal-replay thread"),
                source,
            })?;
        Ok(ing)
    }

    /// Opens (and so replays) every tenant found on disk, then marks the ingester ready.
    fn replay_all(&self) {
        let start = Instant::now();
        let mut tenants = Vec::new();
        match std::fs::read_dir(&self.config.tsdb.dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let name = e.file_name().to_string_lossy().to_string();
                    match TenantId::new(&name) {
                        Ok(t) => tenants.push(t),
                        Err(err) => {
                            tracing::warn!(dir = %name, error = %err, "skipping directory that is not a tenant")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.config.tsdb.dir.display(), error = %e, "listing TSDB dir")
            }
        }
        for t in tenants {
            // Tenants already on disk hold acknowledged data: no instance limit applies.
            if let Err(e) = self.open_tenant(&t, false) {
                tracing::error!(tenant = %t, error = %e, "opening tenant TSDB failed");
            }
        }
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            tenants = self.tenants.read().len(),
            elapsed_ms = start.elapsed().as_millis() as u64,
            "ingester ready: WAL replay done"
        );
    }

    fn block_range_ms(&self) -> i64 {
        self.config.tsdb.block_ranges_period.as_millis() as i64
    }

    fn head_options(&self, dir: PathBuf, min_valid_time: i64) -> HeadOptions {
        let block_range_ms = self.block_range_ms();
        HeadOptions {
            dir,
            wal_segment_size: self.config.tsdb.wal_segment_size_bytes,
            fsync: self.config.tsdb.wal_fsync,
            block_range_ms,
            too_old_window_ms: block_range_ms / 2,
            min_valid_time,
            metrics: Arc::clone(&self.tsdb_metrics),
        }
    }

    /// Opens the blocks in a tenant's directory. Leftovers of an interrupted cut
    /// (`*.tmp-for-creation`) are deleted; a block that does not open is logged, counted and
    /// left on disk for an operator, never served.
    fn open_local_blocks(&self, tenant: &TenantId, dir: &Path) -> Vec<Block> {
        let mut blocks = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return blocks;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if name.ends_with(TMP_SUFFIX) {
                tracing::info!(tenant = %tenant, dir = %path.display(), "deleting the leftover of an interrupted block cut");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot delete leftover block dir");
                }
                continue;
            }
            if !layout::is_block_id(&name) {
                continue;
            }
            match Block::open(&path) {
                Ok(b) => blocks.push(b),
                Err(err) => {
                    self.own.block_open_failures.inc();
                    tracing::error!(tenant = %tenant, block = %name, error = %err, "cannot open local block; leaving it on disk, not serving it");
                }
            }
        }
        blocks.sort_by_key(|b| (b.meta().min_time, b.meta().ulid.clone()));
        blocks
    }

    /// Opens a tenant's TSDB (replaying its WAL). A tenant new to this ingester (`admit`) must
    /// first fit the instance limits: `max_tenants` and the file-descriptor budget.
    fn open_tenant(&self, tenant: &TenantId, admit: bool) -> Result<Arc<TenantDb>, OpenError> {
        let _guard = self.create_lock.lock();
        if let Some(db) = self.tenants.read().get(tenant) {
            return Ok(Arc::clone(db));
        }
        if admit {
            let max = self.config.instance_limits.max_tenants;
            if max > 0 && self.tenants.read().len() >= max {
                self.own
                    .tenants_refused
                    .with_label_values(&["max_tenants"])
                    .inc();
                return Err(OpenError::Refused(format!(
                    "this ingester already holds the most tenants it may (ingester.instance_limits.max_tenants = {max}); retry later or add ingesters"
                )));
            }
            if let Err(why) = self.fd_budget.admit_tenant() {
                self.own
                    .tenants_refused
                    .with_label_values(&["file_descriptors"])
                    .inc();
                tracing::warn!(tenant = %tenant, reason = %why, "refusing a new tenant");
                return Err(OpenError::Refused(why));
            }
        }
        let dir = self.config.tsdb.dir.join(tenant.as_str());
        std::fs::create_dir_all(&dir).map_err(|source| TsdbError::Io {
            path: dir.clone(),
            source,
        })?;
        let blocks = self.open_local_blocks(tenant, &dir);
        // The head must not take again what the blocks hold (a crash between a cut and the
        // WAL checkpoint leaves both).
        let min_valid = blocks
            .iter()
            .map(|b| b.meta().max_time)
            .max()
            .unwrap_or(i64::MIN);
        let (head, stats) = Head::open(self.head_options(dir.clone(), min_valid))?;
        tracing::info!(tenant = %tenant, series = head.num_series(), blocks = blocks.len(), ?stats, "opened tenant TSDB");
        let db = Arc::new(TenantDb {
            tenant: tenant.clone(),
            shipped: Mutex::new(Shipped::load(&dir)),
            dir,
            head: Arc::new(head),
            metadata: MetadataStore::new(self.config.metadata_retain_period),
            blocks: RwLock::new(blocks.into_iter().map(Arc::new).collect()),
            cut_lock: Mutex::new(()),
            ship_lock: tokio::sync::Mutex::new(()),
            last_push_ms: AtomicI64::new(now_ms()),
        });
        let mut tenants = self.tenants.write();
        tenants.insert(tenant.clone(), Arc::clone(&db));
        self.own.memory_users.set(tenants.len() as i64);
        self.update_gauges(&db);
        Ok(db)
    }

    fn update_gauges(&self, db: &TenantDb) {
        let t = [db.tenant.as_str()];
        self.own
            .memory_series
            .with_label_values(&t)
            .set(db.head.num_series() as i64);
        self.own
            .local_blocks
            .with_label_values(&t)
            .set(db.blocks.read().len() as i64);
    }

    fn all_tenants(&self) -> Vec<Arc<TenantDb>> {
        self.tenants.read().values().cloned().collect()
    }

    /// Cuts what is due in a tenant's head: every complete aligned range, or (`force`, for a
    /// flush or an idle head) everything. Blocking work. Returns the blocks written.
    fn cut_blocks(&self, db: &TenantDb, force: bool) -> Result<usize, TsdbError> {
        let _guard = db.cut_lock.lock();
        let mut written = 0;
        loop {
            let range = if force {
                db.head.first_flush_range()
            } else {
                db.head.compactable_range()
            };
            let Some((mint, maxt)) = range else {
                break;
            };
            let opts = BlockOptions::for_tenant(db.tenant.as_str(), BLOCK_SOURCE, []);
            let started = Instant::now();
            let outcome = db
                .head
                .cut_block(&db.dir, mint, maxt, opts, |meta| {
                    if let Some(meta) = meta {
                        db.add_block(Block::open(db.dir.join(&meta.ulid))?);
                    }
                    Ok(())
                })
                .inspect_err(|_| self.own.block_cut_failures.inc())?;
            self.own
                .block_cut_duration
                .observe(started.elapsed().as_secs_f64());
            if let Some(meta) = &outcome.meta {
                written += 1;
                self.own.blocks_cut.inc();
                tracing::info!(
                    tenant = %db.tenant,
                    block = %meta.ulid,
                    min_time = meta.min_time,
                    max_time = meta.max_time,
                    series = meta.stats.num_series,
                    samples = meta.stats.num_samples,
                    series_removed = outcome.truncated.series_removed,
                    duration_ms = outcome.duration.as_millis() as u64,
                    "cut block from head"
                );
            }
        }
        self.update_gauges(db);
        Ok(written)
    }

    /// Uploads the tenant's local blocks the shipper has not recorded yet, oldest first.
    /// Stops at the first failure (retried at the next ship interval).
    async fn ship(&self, db: &TenantDb) -> Result<usize, BucketError> {
        let Some(bucket) = &self.bucket else {
            return Ok(0);
        };
        let _guard = db.ship_lock.lock().await;
        let pending: Vec<Arc<Block>> = {
            let shipped = db.shipped.lock();
            db.blocks
                .read()
                .iter()
                .filter(|b| !shipped.contains(&b.meta().ulid))
                .cloned()
                .collect()
        };
        let mut n = 0;
        for b in pending {
            let ulid = b.meta().ulid.clone();
            let prefix = layout::block_prefix(db.tenant.as_str(), &ulid);
            let started = Instant::now();
            match bucket
                .upload_dir(b.dir(), &prefix, Some(layout::META_FILE))
                .await
            {
                Ok(stats) => {
                    if let Err(e) = db.shipped.lock().insert(&ulid) {
                        // The block is in the bucket; it will be uploaded again (harmlessly)
                        // if the process restarts before the file is written.
                        tracing::error!(tenant = %db.tenant, block = %ulid, error = %e, "cannot record shipped block");
                    }
                    n += 1;
                    self.own.shipper_uploads.inc();
                    self.own.shipper_last_success.set(now_ms() / 1000);
                    tracing::info!(tenant = %db.tenant, block = %ulid, files = stats.files, bytes = stats.bytes, duration_ms = started.elapsed().as_millis() as u64, bucket = bucket.describe(), "shipped block");
                }
                Err(e) => {
                    self.own.shipper_upload_failures.inc();
                    tracing::warn!(tenant = %db.tenant, block = %ulid, error = %e, "block upload failed; will retry");
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    /// Deletes shipped local blocks created more than `retention_period` ago.
    fn apply_retention(&self, db: &TenantDb) {
        if self.bucket.is_none() {
            return;
        }
        let cutoff = now_ms() - self.config.tsdb.retention_period.as_millis() as i64;
        let expired: Vec<Arc<Block>> = {
            let shipped = db.shipped.lock();
            let mut blocks = db.blocks.write();
            let (old, keep): (Vec<_>, Vec<_>) = blocks.drain(..).partition(|b| {
                let created = b
                    .meta()
                    .ulid
                    .parse::<Ulid>()
                    .map_or(i64::MAX, |u| u.timestamp_ms() as i64);
                shipped.contains(&b.meta().ulid) && created < cutoff
            });
            *blocks = keep;
            old
        };
        if expired.is_empty() {
            return;
        }
        for b in &expired {
            // Queries holding the block keep their memory maps; the files go once they finish.
            if let Err(e) = std::fs::remove_dir_all(b.dir()) {
                tracing::warn!(tenant = %db.tenant, block = %b.meta().ulid, error = %e, "cannot delete local block");
            } else {
                tracing::info!(tenant = %db.tenant, block = %b.meta().ulid, "deleted shipped local block after retention");
            }
        }
        self.own
            .blocks_deleted
            .with_label_values(&[db.tenant.as_str()])
            .inc_by(expired.len() as u64);
        let live: std::collections::HashSet<String> = db
            .blocks
            .read()
            .iter()
            .map(|b| b.meta().ulid.clone())
            .collect();
        if let Err(e) = db.shipped.lock().retain(|u| live.contains(u)) {
            tracing::warn!(tenant = %db.tenant, error = %e, "cannot update shipper state");
        }
        self.update_gauges(db);
    }

    /// Cuts every head (or only `tenants`) whole and ships the blocks: Mimir's
    /// `/ingester/flush`.
    pub async fn flush(self: &Arc<Self>, tenants: Option<&[TenantId]>) -> Result<(), FlushError> {
        let dbs: Vec<Arc<TenantDb>> = self
            .all_tenants()
            .into_iter()
            .filter(|db| tenants.is_none_or(|ts| ts.contains(&db.tenant)))
            .collect();
        for db in dbs {
            let ing = Arc::clone(self);
            let d = Arc::clone(&db);
            tokio::task::spawn_blocking(move || ing.cut_blocks(&d, true))
                .await
                .map_err(|e| FlushError::Task(e.to_string()))?
                .map_err(|source| FlushError::Cut {
                    tenant: db.tenant.to_string(),
                    source,
                })?;
            self.ship(&db).await.map_err(|source| FlushError::Ship {
                tenant: db.tenant.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// `/ingester/flush` runs at most once per [`FLUSH_MIN_INTERVAL_MS`] unless forced.
    fn admit_flush_request(&self, force: bool) -> Result<(), HttpError> {
        let now = now_ms();
        let last = self.last_flush_request_ms.load(Ordering::Acquire);
        if !force && last != i64::MIN && now.saturating_sub(last) < FLUSH_MIN_INTERVAL_MS {
            return Err(HttpError::new(
                norn_model::ErrorKind::TooManyRequests,
                format!(
                    "the last flush ran {} s ago; flushes run at most once a minute (add force=true to flush anyway)",
                    now.saturating_sub(last) / 1000
                ),
            ));
        }
        self.last_flush_request_ms.store(now, Ordering::Release);
        Ok(())
    }

    /// Starts the compaction and shipping loops; they stop when `stop` is cancelled.
    pub fn spawn_background(self: &Arc<Self>, stop: CancellationToken) {
        let ing = Arc::clone(self);
        let stop2 = stop.clone();
        tokio::spawn(async move { ing.compaction_loop(stop2).await });
        if self.bucket.is_some() && !self.config.tsdb.ship_interval.is_zero() {
            let ing = Arc::clone(self);
            tokio::spawn(async move { ing.ship_loop(stop).await });
        }
    }

    async fn compaction_loop(self: Arc<Self>, stop: CancellationToken) {
        let period = self
            .config
            .tsdb
            .head_compaction_interval
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.ready.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
                continue;
            }
            let idle_ms = self.config.tsdb.head_compaction_idle_timeout.as_millis() as i64;
            let mut cut_any = false;
            for db in self.all_tenants() {
                let idle = idle_ms > 0
                    && now_ms() - db.last_push_ms.load(Ordering::Relaxed) > idle_ms
                    && db.head.max_time().is_some();
                let ing = Arc::clone(&self);
                let d = Arc::clone(&db);
                match tokio::task::spawn_blocking(move || ing.cut_blocks(&d, idle)).await {
                    Ok(Ok(n)) => cut_any |= n > 0,
                    Ok(Err(e)) => {
                        tracing::error!(tenant = %db.tenant, error = %e, "head compaction failed; data stays in the head and WAL")
                    }
                    Err(e) => {
                        tracing::error!(tenant = %db.tenant, error = %e, "head compaction task failed")
                    }
                }
            }
            if cut_any {
                self.ship_now.notify_one();
            }
        }
    }

    async fn ship_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.tsdb.ship_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.ship_now.notified() => {}
            }
            for db in self.all_tenants() {
                // Failures are logged and counted in `ship`; the next round retries.
                let _ = self.ship(&db).await;
                self.apply_retention(&db);
                let ing = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || ing.close_if_idle(&db)).await;
            }
        }
    }

    /// Closes a tenant that has been idle for `close_idle_tsdb_timeout`, whose head is empty
    /// (the idle cut moved everything into blocks) and whose blocks are all in the bucket:
    /// its descriptors and memory are released and its local directory deleted, as Mimir
    /// does. A later push opens it afresh. Blocking work. Returns whether it was closed.
    fn close_if_idle(&self, db: &TenantDb) -> bool {
        let timeout_ms = self.config.tsdb.close_idle_tsdb_timeout.as_millis() as i64;
        let idle = |db: &TenantDb| {
            now_ms().saturating_sub(db.last_push_ms.load(Ordering::Relaxed)) > timeout_ms
        };
        if timeout_ms == 0 || self.bucket.is_none() || !idle(db) || db.head.num_series() > 0 {
            return false;
        }
        let all_shipped = {
            let shipped = db.shipped.lock();
            db.blocks
                .read()
                .iter()
                .all(|b| shipped.contains(&b.meta().ulid))
        };
        if !all_shipped {
            return false;
        }
        let _create = self.create_lock.lock();
        let _cut = db.cut_lock.lock();
        // A push may have come in meanwhile: `close_if_empty` decides atomically with appends.
        match db.head.close_if_empty() {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(tenant = %db.tenant, error = %e, "closing an idle tenant's head failed");
                return false;
            }
        }
        {
            let mut tenants = self.tenants.write();
            tenants.remove(&db.tenant);
            self.own.memory_users.set(tenants.len() as i64);
        }
        let t = [db.tenant.as_str()];
        let _ = self.own.memory_series.remove_label_values(&t);
        let _ = self.own.local_blocks.remove_label_values(&t);
        if let Err(e) = std::fs::remove_dir_all(&db.dir) {
            tracing::warn!(tenant = %db.tenant, dir = %db.dir.display(), error = %e, "cannot delete an idle tenant's directory");
        }
        self.own.tenants_closed.inc();
        tracing::info!(tenant = %db.tenant, "closed idle tenant: head empty, every block shipped");
        true
    }

    fn tenant(&self, tenant: &TenantId) -> Option<Arc<TenantDb>> {
        self.tenants.read().get(tenant).cloned()
    }

    /// Closes every head, syncing its WAL. Pushes after this get 503.
    pub fn close(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for (t, db) in self.tenants.read().iter() {
            if let Err(e) = db.head.close() {
                tracing::error!(tenant = %t, error = %e, "closing head");
            }
        }
    }

    /// Whether WAL replay is done and the ingester has not been closed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    /// What `/ready` says: not while replaying, not once shut down (an orchestrator must
    /// replace a process that refuses every push), and not while a tenant's WAL refuses
    /// writes after an I/O error it could not recover from (each check retries the recovery,
    /// at most once a second per WAL).
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("ingester is shut down".to_string());
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err("replaying WAL".to_string());
        }
        for db in self.all_tenants() {
            if db.head.wal_broken() && db.head.wal().try_recover().is_err() {
                return Err(format!(
                    "the WAL of tenant {} refuses writes after an I/O error (disk full or failing?)",
                    db.tenant
                ));
            }
        }
        Ok(())
    }

    /// Refuses (or again accepts) pushes with a retryable error while reads keep working:
    /// an ingester that is LEAVING the ring must not take new samples, so distributors
    /// write to the next replica instead.
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::SeqCst);
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    /// The registry the ingester's metrics live in (the gRPC server adds its own).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }

    /// Series in memory for a tenant (0 if unknown).
    pub fn num_series(&self, tenant: &TenantId) -> usize {
        self.tenant(tenant)
            .map(|db| db.head.num_series())
            .unwrap_or(0)
    }

    fn store_metadata(&self, db: &TenantDb, batch: &WriteBatch, limits: &norn_limits::Limits) {
        let added = db.metadata.add(
            batch.metadata(),
            MetadataLimits {
                per_user: limits.max_global_metadata_per_user,
                per_metric: limits.max_global_metadata_per_metric,
            },
            now_ms(),
        );
        for (reason, n) in [
            (metadata::PER_USER_LIMIT, added.refused_per_user),
            (metadata::PER_METRIC_LIMIT, added.refused_per_metric),
        ] {
            if n > 0 {
                self.metrics
                    .discarded_metadata
                    .with_label_values(&[db.tenant.as_str(), reason])
                    .inc_by(n as u64);
            }
        }
    }
}

fn reject_message(reason: RejectReason, batch: &WriteBatch, series_index: usize) -> String {
    let series = batch.series(series_index).to_labels();
    let what = match reason {
        RejectReason::OutOfOrder => {
            "the sample has been rejected because another sample with a more recent timestamp has already been ingested and out-of-order samples are not allowed"
        }
        RejectReason::TooOld => {
            "the sample has been rejected because its timestamp is too old: it is older than the ingester's head window (half a block range behind the newest sample) or in a time range already cut into a block"
        }
        RejectReason::DuplicateTimestamp => {
            "the sample has been rejected because another sample with the same timestamp, but a different value, has already been ingested"
        }
        RejectReason::MaxSeriesPerUser => {
            "per-user series limit exceeded: this tenant has too many series in memory; adjust max_global_series_per_user or reduce the number of series sent"
        }
        RejectReason::MaxSeriesPerMetric => {
            "per-metric series limit exceeded: this metric has too many series in memory; adjust max_global_series_per_metric or reduce the number of series sent"
        }
        RejectReason::OutOfBounds => {
            "the sample has been rejected because its timestamp is outside the range Norn stores (from the Unix epoch to the year 9999)"
        }
    };
    format!("{what} (reason: {}), series: '{series}'", reason.as_str())
}

#[async_trait]
impl Pusher for Ingester {
    async fn push(&self, tenant: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable("ingester is shutting down".into()));
        }
        if self.read_only.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable("ingester is leaving".into()));
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable(
                "ingester is starting: WAL replay in progress".into(),
            ));
        }
        let db = match self.tenant(tenant) {
            Some(db) => db,
            None => self.open_tenant(tenant, true).map_err(|e| match e {
                OpenError::Refused(why) => PushError::Unavailable(why),
                OpenError::Tsdb(e) => {
                    PushError::Internal(format!("opening TSDB for tenant {tenant}: {e}"))
                }
            })?,
        };
        let limits = self.overrides.for_tenant(tenant.as_str());
        let append_limits = AppendLimits {
            max_series: limits.max_global_series_per_user,
            max_series_per_metric: limits.max_global_series_per_metric,
        };
        db.last_push_ms.store(now_ms(), Ordering::Relaxed);
        self.store_metadata(&db, &batch, &limits);
        // Appending fsyncs the WAL: blocking work, off the reactor.
        let head = Arc::clone(&db.head);
        let (outcome, batch) = tokio::task::spawn_blocking(move || {
            let r = head.append(&batch, &append_limits);
            (r, batch)
        })
        .await
        .map_err(|e| PushError::Internal(format!("append task failed: {e}")))?;
        let outcome = outcome.map_err(|e| match e.kind() {
            norn_model::ErrorKind::Unavailable => PushError::Unavailable(e.to_string()),
            _ => PushError::Internal(e.to_string()),
        })?;
        self.own
            .memory_series
            .with_label_values(&[tenant.as_str()])
            .set(db.head.num_series() as i64);
        let mut out = PushOutcome {
            appended: outcome.appended,
            ..Default::default()
        };
        let mut by_reason: Vec<(&'static str, usize)> = Vec::new();
        for r in &outcome.rejected {
            let reason = r.reason.as_str();
            self.metrics
                .discarded_samples
                .with_label_values(&[tenant.as_str(), reason])
                .inc_by(r.samples as u64);
            match by_reason.iter_mut().find(|(n, _)| *n == reason) {
                Some((_, c)) => *c += r.samples,
                None => by_reason.push((reason, r.samples)),
            }
            if out.first_error.is_none() {
                out.first_error = Some(reject_message(r.reason, &batch, r.series_index));
            }
        }
        out.rejected = by_reason;
        Ok(out)
    }
}

/// Reads nothing: the view of a tenant this ingester has never seen.
struct EmptyQueryable;

#[async_trait]
impl Queryable for EmptyQueryable {
    async fn select(
        &self,
        _: i64,
        _: i64,
        _: &[norn_model::Matcher],
    ) -> Result<Vec<norn_model::Series>, StorageError> {
        Ok(Vec::new())
    }
    async fn label_names(
        &self,
        _: i64,
        _: i64,
        _: &[norn_model::Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }
    async fn label_values(
        &self,
        _: &str,
        _: i64,
        _: i64,
        _: &[norn_model::Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Ok(Vec::new())
    }
}

impl QueryableProvider for Ingester {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        match self.tenant(tenant) {
            // Blocks first: on a timestamp both hold (mid-cut) the values are the same.
            Some(db) => MergeQueryable::of(vec![
                Arc::new(db.blocks_queryable()),
                Arc::new(HeadQueryable(Arc::clone(&db.head))),
            ]),
            None => Arc::new(EmptyQueryable),
        }
    }
}

#[async_trait]
impl MetadataReader for Ingester {
    async fn metadata(
        &self,
        tenant: &TenantId,
        metric: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError> {
        let Some(db) = self.tenant(tenant) else {
            return Ok(Vec::new());
        };
        Ok(db.metadata.read(metric, limit, now_ms()))
    }
}

/// The ingester's lifecycle inside the process.
pub struct IngesterService(pub Arc<Ingester>);

#[async_trait]
impl Service for IngesterService {
    fn name(&self) -> &'static str {
        "ingester"
    }

    fn ready(&self) -> Result<(), String> {
        self.0.readiness()
    }

    fn routes(&self) -> axum::Router {
        axum::Router::new()
            .route("/ingester/flush", axum::routing::post(flush_handler))
            .route("/ingester/shutdown", axum::routing::post(shutdown_handler))
            .with_state(Arc::clone(&self.0))
    }

    async fn shutdown(&self) {
        if self.0.config.tsdb.flush_blocks_on_shutdown
            && self.0.ready.load(Ordering::SeqCst)
            && let Err(e) = self.0.flush(None).await
        {
            tracing::error!(error = %e, "flushing blocks on shutdown failed; the WAL keeps the data");
        }
        let ing = Arc::clone(&self.0);
        let _ = tokio::task::spawn_blocking(move || ing.close()).await;
    }
}

/// Query parameters of `/ingester/flush`: `tenant` (repeatable; default every tenant) and
/// `wait` (`true`: answer once everything is cut and shipped; otherwise answer at once).
fn flush_params(query: Option<&str>) -> Result<(Option<Vec<TenantId>>, bool, bool), HttpError> {
    let mut tenants = Vec::new();
    let mut wait = false;
    let mut force = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "tenant" => tenants.push(
                TenantId::new(v).map_err(|e| HttpError::bad_data(format!("tenant {v:?}: {e}")))?,
            ),
            "wait" => {
                wait = v.parse().map_err(|_| {
                    HttpError::bad_data(format!("wait must be true or false, got {v:?}"))
                })?
            }
            "force" => {
                force = v.parse().map_err(|_| {
                    HttpError::bad_data(format!("force must be true or false, got {v:?}"))
                })?
            }
            _ => {}
        }
    }
    Ok(((!tenants.is_empty()).then_some(tenants), wait, force))
}

async fn flush_handler(
    axum::extract::State(ing): axum::extract::State<Arc<Ingester>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (tenants, wait, force) = match flush_params(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !ing.ready.load(Ordering::SeqCst) {
        return HttpError::new(
            norn_model::ErrorKind::Unavailable,
            "ingester is starting: WAL replay in progress",
        )
        .into_response();
    }
    if let Err(e) = ing.admit_flush_request(force) {
        return e.into_response();
    }
    let job = {
        let ing = Arc::clone(&ing);
        async move { ing.flush(tenants.as_deref()).await }
    };
    if wait {
        match job.await {
            Ok(()) => axum::http::StatusCode::NO_CONTENT.into_response(),
            Err(e) => HttpError::new(e.kind(), e.to_string()).into_response(),
        }
    } else {
        tokio::spawn(async move {
            if let Err(e) = job.await {
                tracing::error!(error = %e, "flush failed");
            }
        });
        axum::http::StatusCode::NO_CONTENT.into_response()
    }
}

/// Mimir's `/ingester/shutdown`: cut and ship everything, then stop taking writes.
async fn shutdown_handler(
    axum::extract::State(ing): axum::extract::State<Arc<Ingester>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(e) = ing.flush(None).await {
        return HttpError::new(e.kind(), e.to_string()).into_response();
    }
    let i = Arc::clone(&ing);
    let _ = tokio::task::spawn_blocking(move || i.close()).await;
    tracing::info!("ingester flushed and stopped by /ingester/shutdown");
    axum::http::StatusCode::NO_CONTENT.into_response()
}
