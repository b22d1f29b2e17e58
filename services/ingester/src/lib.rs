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
//!
//! Where things are: this file holds the [`Ingester`] (open, replay, push, read); cutting
//! blocks and closing idle tenants are in `compaction`, uploading and local retention in
//! [`shipper`], the gRPC API in [`grpc`], the operator endpoints in `http`, the ring
//! membership in [`lifecycle`], and `build` with the [`IngesterService`] in `service`.

mod compaction;
pub mod config;
pub mod fd_budget;
pub mod grpc;
mod http;
pub mod lifecycle;
pub mod metadata;
mod metrics;
mod service;
pub mod shipper;
mod tenant;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use norn_limits::Overrides;
use norn_model::now_ms;
use norn_model::{
    MergeQueryable, MetadataReader, MetricMetadata, PushError, PushOutcome, Pusher, Queryable,
    QueryableProvider, StorageError, TenantId, WriteBatch,
};
use norn_server::Metrics;
use norn_storage::{Bucket, StorageError as BucketError, layout};
use norn_tsdb::block::{Block, TMP_SUFFIX};
use norn_tsdb::dir_lock::DirLock;
use norn_tsdb::head::{AppendLimits, Head, HeadOptions, HeadQueryable, RejectReason};
use norn_tsdb::{TsdbError, TsdbMetrics};
use parking_lot::{Mutex, RwLock};

pub use config::Config;
pub use lifecycle::RingMembership;
pub use service::{BuildError, Deps, IngesterService, build};

use fd_budget::FdBudget;
use metadata::{MetadataLimits, MetadataStore};
use metrics::IngesterMetrics;
use shipper::Shipped;
use tenant::TenantDb;

/// How often `/ingester/flush` may run without `force=true`: a flush cuts every head whole,
/// after which samples for the cut range are refused as too old, so an unauthenticated
/// caller flushing in a loop would make every tenant's in-flight samples fail.
pub(crate) const FLUSH_MIN_INTERVAL_MS: i64 = 60_000;

/// `source` in the Thanos section of the blocks the ingester cuts.
pub(crate) const BLOCK_SOURCE: &str = "ingester";

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
    ship_now: Arc<tokio::sync::Notify>,
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
        let own = IngesterMetrics::new(&metrics.registry)
            .map_err(|e| TsdbError::InvalidOption(format!("registering ingester metrics: {e}")))?;
        let fd_budget = FdBudget::for_process();
        own.fd_limit.set(fd_budget.limit() as i64);
        let ing = Arc::new(Self {
            config,
            overrides,
            metrics,
            tsdb_metrics,
            own,
            bucket,
            ship_now: Arc::new(tokio::sync::Notify::new()),
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
