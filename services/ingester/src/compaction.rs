//! Head compaction: cutting blocks out of the tenants' heads.
//!
//! A cut writes one aligned range of a head as a block in the tenant's directory, lets the
//! head drop it and checkpoints the WAL (see `Head::cut_block`). The loop cuts complete
//! ranges; a flush (`/ingester/flush`, shutdown) and an idle head cut everything. A tenant
//! idle past `close_idle_tsdb_timeout`, with an empty head and every block shipped, is closed
//! and its directory removed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use norn_model::TenantId;
use norn_server::HttpError;
use norn_tsdb::TsdbError;
use norn_tsdb::block::{Block, BlockOptions};

use crate::tenant::TenantDb;
use crate::{BLOCK_SOURCE, FLUSH_MIN_INTERVAL_MS, FlushError, Ingester};
use norn_model::now_ms;

impl Ingester {
    /// Cuts what is due in a tenant's head: every complete aligned range, or (`force`, for a
    /// flush or an idle head) everything. Blocking work. Returns the blocks written.
    pub(crate) fn cut_blocks(&self, db: &TenantDb, force: bool) -> Result<usize, TsdbError> {
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
    pub(crate) fn admit_flush_request(&self, force: bool) -> Result<(), HttpError> {
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

    /// One round of the head-compaction loop: cuts what is due in every head (everything, in
    /// a head idle for `head_compaction_idle_timeout`) and wakes the shipper if a block was
    /// written.
    pub(crate) async fn compaction_round(self: Arc<Self>) {
        if !self.ready.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
            return;
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

    /// Closes a tenant that has been idle for `close_idle_tsdb_timeout`, whose head is empty
    /// (the idle cut moved everything into blocks) and whose blocks are all in the bucket:
    /// its descriptors and memory are released and its local directory deleted, as Mimir
    /// does. A later push opens it afresh. Blocking work. Returns whether it was closed.
    pub(crate) fn close_if_idle(&self, db: &TenantDb) -> bool {
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
}
