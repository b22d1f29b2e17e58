//! The ingester: one TSDB head (with its WAL) per tenant.
//!
//! Pushes land in the tenant's head and are durable in its WAL before the push returns, so a
//! crash never loses an acknowledged sample. On start the ingester finds every tenant directory
//! under `blocks_storage.tsdb.dir` and replays its WAL in the background; until that is done
//! `/ready` says so and pushes get 503 (retryable). It serves recent data to the query path
//! as tenant-scoped [`Queryable`]s, and keeps the metric metadata remote write carries.

pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use norn_limits::Overrides;
use norn_model::{
    MetadataReader, MetricMetadata, PushError, PushOutcome, Pusher, Queryable, QueryableProvider,
    StorageError, TenantId, WriteBatch,
};
use norn_server::{Metrics, Service};
use norn_tsdb::head::{AppendLimits, Head, HeadOptions, HeadQueryable, RejectReason};
use norn_tsdb::{TsdbError, TsdbMetrics};
use parking_lot::{Mutex, RwLock};
use prometheus::{IntGauge, IntGaugeVec, Opts};

pub use config::Config;

/// Metric families kept per metric name (Mimir keeps a handful per metric too).
const MAX_METADATA_PER_METRIC: usize = 10;

struct TenantDb {
    head: Arc<Head>,
    metadata: Mutex<BTreeMap<String, Vec<MetricMetadata>>>,
}

struct IngesterMetrics {
    memory_series: IntGaugeVec,
    memory_users: IntGauge,
}

/// The ingester service.
pub struct Ingester {
    config: Config,
    overrides: Arc<Overrides>,
    metrics: Arc<Metrics>,
    tsdb_metrics: Arc<TsdbMetrics>,
    own: IngesterMetrics,
    tenants: RwLock<HashMap<TenantId, Arc<TenantDb>>>,
    /// Serialises creating a tenant's head so two pushes cannot open the same WAL twice.
    create_lock: Mutex<()>,
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Ingester {
    /// Creates the ingester and starts replaying existing tenants' WALs in the background.
    pub fn start(
        config: Config,
        overrides: Arc<Overrides>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, TsdbError> {
        std::fs::create_dir_all(&config.tsdb.dir).map_err(|source| TsdbError::Io {
            path: config.tsdb.dir.clone(),
            source,
        })?;
        let tsdb_metrics = Arc::new(
            TsdbMetrics::new(&metrics.registry)
                .map_err(|e| TsdbError::InvalidOption(format!("registering TSDB metrics: {e}")))?,
        );
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
        metrics
            .registry
            .register(Box::new(memory_series.clone()))
            .expect("registered once");
        metrics
            .registry
            .register(Box::new(memory_users.clone()))
            .expect("registered once");
        let ing = Arc::new(Self {
            config,
            overrides,
            metrics,
            tsdb_metrics,
            own: IngesterMetrics {
                memory_series,
                memory_users,
            },
            tenants: RwLock::default(),
            create_lock: Mutex::new(()),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
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
            if let Err(e) = self.open_tenant(&t) {
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

    fn head_options(&self, tenant: &TenantId) -> HeadOptions {
        let block_range_ms = self.config.tsdb.block_ranges_period.as_millis() as i64;
        HeadOptions {
            dir: self.config.tsdb.dir.join(tenant.as_str()),
            wal_segment_size: self.config.tsdb.wal_segment_size_bytes,
            fsync: self.config.tsdb.wal_fsync,
            block_range_ms,
            too_old_window_ms: block_range_ms / 2,
            metrics: Arc::clone(&self.tsdb_metrics),
        }
    }

    fn open_tenant(&self, tenant: &TenantId) -> Result<Arc<TenantDb>, TsdbError> {
        let _guard = self.create_lock.lock();
        if let Some(db) = self.tenants.read().get(tenant) {
            return Ok(Arc::clone(db));
        }
        let (head, stats) = Head::open(self.head_options(tenant))?;
        tracing::info!(tenant = %tenant, series = head.num_series(), ?stats, "opened tenant head");
        let db = Arc::new(TenantDb {
            head: Arc::new(head),
            metadata: Mutex::default(),
        });
        let mut tenants = self.tenants.write();
        tenants.insert(tenant.clone(), Arc::clone(&db));
        self.own.memory_users.set(tenants.len() as i64);
        self.own
            .memory_series
            .with_label_values(&[tenant.as_str()])
            .set(db.head.num_series() as i64);
        Ok(db)
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

    /// Series in memory for a tenant (0 if unknown).
    pub fn num_series(&self, tenant: &TenantId) -> usize {
        self.tenant(tenant)
            .map(|db| db.head.num_series())
            .unwrap_or(0)
    }

    fn store_metadata(&self, db: &TenantDb, batch: &WriteBatch) {
        if batch.metadata().is_empty() {
            return;
        }
        let mut md = db.metadata.lock();
        for m in batch.metadata() {
            let list = md.entry(m.metric_family_name.clone()).or_default();
            if !list.contains(m) {
                if list.len() >= MAX_METADATA_PER_METRIC {
                    list.remove(0);
                }
                list.push(m.clone());
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
            "the sample has been rejected because its timestamp is too old: it is older than the ingester's head window (half a block range behind the newest sample)"
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
    };
    format!("{what} (reason: {}), series: '{series}'", reason.as_str())
}

#[async_trait]
impl Pusher for Ingester {
    async fn push(&self, tenant: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable("ingester is shutting down".into()));
        }
        if !self.ready.load(Ordering::SeqCst) {
            return Err(PushError::Unavailable(
                "ingester is starting: WAL replay in progress".into(),
            ));
        }
        let db = match self.tenant(tenant) {
            Some(db) => db,
            None => self.open_tenant(tenant).map_err(|e| {
                PushError::Internal(format!("opening TSDB for tenant {tenant}: {e}"))
            })?,
        };
        let limits = self.overrides.for_tenant(tenant.as_str());
        let append_limits = AppendLimits {
            max_series: limits.max_global_series_per_user,
            max_series_per_metric: limits.max_global_series_per_metric,
        };
        self.store_metadata(&db, &batch);
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
            Some(db) => Arc::new(HeadQueryable(Arc::clone(&db.head))),
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
        let md = db.metadata.lock();
        let mut out = Vec::new();
        for (name, list) in md.iter() {
            if metric.is_some_and(|m| m != name) {
                continue;
            }
            if limit > 0 && out.len() >= limit {
                break;
            }
            out.extend(list.iter().cloned());
        }
        Ok(out)
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
        if self.0.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("replaying WAL".to_string())
        }
    }

    async fn shutdown(&self) {
        let ing = Arc::clone(&self.0);
        let _ = tokio::task::spawn_blocking(move || ing.close()).await;
    }
}
