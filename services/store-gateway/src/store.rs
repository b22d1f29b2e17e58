//! The set of blocks this store-gateway serves, kept in step with the bucket.
//!
//! Every sync (at start, then every `sync_interval`) lists the tenants, reads each one's
//! bucket index (or lists its blocks when it has none) and keeps the blocks that are
//! queryable here: not younger than `ignore_blocks_within` (the ingesters still serve
//! them), not marked for deletion longer ago than `ignore_deletion_mark_delay` (queriers
//! may still be asking for a block marked recently), and owned by this instance. New
//! blocks enter at once in the `Building` state — a query naming one waits for its header —
//! and their headers are built with bounded concurrency; blocks no longer owned are dropped
//! only after the new ones are ready, so re-sharding never leaves a window where a block is
//! served nowhere. A tenant whose listing fails keeps its previous blocks.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use norn_storage::Bucket;
use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::BlockOwnership;
use crate::block::LoadedBlock;
use crate::fetch::{BlockFetcher, Caches};
use crate::metrics::StoreGatewayMetrics;

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub tenants: usize,
    pub owned: usize,
    pub loaded: usize,
    pub dropped: usize,
    pub failed_tenants: usize,
}

/// Settings the store needs (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub sync_dir: PathBuf,
    pub ignore_blocks_within: Duration,
    pub ignore_deletion_mark_delay: Duration,
    pub block_sync_concurrency: usize,
    pub lazy_loading: bool,
}

type TenantBlocks = HashMap<String, Arc<LoadedBlock>>;

/// The owned blocks of every tenant.
pub struct BlockStore {
    opts: StoreOptions,
    bucket: Bucket,
    ownership: Arc<dyn BlockOwnership>,
    caches: Caches,
    metrics: StoreGatewayMetrics,
    blocks: RwLock<HashMap<String, TenantBlocks>>,
    listed: AtomicBool,
    builds: Arc<Semaphore>,
    sync_lock: tokio::sync::Mutex<()>,
    epoch: Instant,
}

impl BlockStore {
    pub fn new(
        opts: StoreOptions,
        bucket: Bucket,
        ownership: Arc<dyn BlockOwnership>,
        caches: Caches,
        metrics: StoreGatewayMetrics,
    ) -> Self {
        Self {
            builds: Arc::new(Semaphore::new(opts.block_sync_concurrency.max(1))),
            opts,
            bucket,
            ownership,
            caches,
            metrics,
            blocks: RwLock::new(HashMap::new()),
            listed: AtomicBool::new(false),
            sync_lock: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    /// True once the first sync has listed the owned blocks (headers may still be building).
    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// The block `id` of `tenant`, if this instance serves it.
    pub fn block(&self, tenant: &str, id: &str) -> Option<Arc<LoadedBlock>> {
        self.blocks.read().get(tenant)?.get(id).cloned()
    }

    /// Every served block of `tenant`.
    pub fn tenant_blocks(&self, tenant: &str) -> Vec<Arc<LoadedBlock>> {
        self.blocks
            .read()
            .get(tenant)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Closes the headers idle for longer than `idle` (lazy loading).
    pub fn close_idle(&self, idle: Duration) -> usize {
        let all: Vec<Arc<LoadedBlock>> = self
            .blocks
            .read()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        all.iter().filter(|b| b.close_if_idle(idle)).count()
    }

    fn block_dir(&self, tenant: &str, id: &str) -> PathBuf {
        self.opts.sync_dir.join(tenant).join(id)
    }

    /// One sync round; see the module docs.
    pub async fn sync(&self) -> norn_bucket_index::Result<SyncStats> {
        let _one = self.sync_lock.lock().await;
        self.metrics.syncs.inc();
        let mut stats = SyncStats::default();
        let tenants = match norn_bucket_index::updater::tenants(&self.bucket).await {
            Ok(t) => t,
            Err(e) => {
                self.metrics.sync_failures.inc();
                return Err(e);
            }
        };
        stats.tenants = tenants.len();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let now_ms = now.as_millis() as i64;
        let newest_ms = now_ms.saturating_sub(self.opts.ignore_blocks_within.as_millis() as i64);
        let marked_before_s =
            now.as_secs() as i64 - self.opts.ignore_deletion_mark_delay.as_secs() as i64;

        // The wanted set of each tenant listed successfully.
        let mut wanted: HashMap<String, HashSet<String>> = HashMap::new();
        let mut new_blocks: Vec<Arc<LoadedBlock>> = Vec::new();
        let mut failed: HashSet<String> = HashSet::new();
        for tenant in &tenants {
            let tenant: &String = tenant;
            let d = match norn_bucket_index::discover(&self.bucket, tenant).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "store-gateway: cannot list the tenant's blocks; keeping the previous ones");
                    failed.insert(tenant.clone());
                    continue;
                }
            };
            let mut set = HashSet::new();
            for b in &d.index.blocks {
                if !self.opts.ignore_blocks_within.is_zero() && b.min_time > newest_ms {
                    continue;
                }
                if d.index
                    .deletion_mark(&b.block_id)
                    .is_some_and(|m| m.deletion_time <= marked_before_s)
                {
                    continue;
                }
                if !self.ownership.owns(tenant, &b.block_id) {
                    continue;
                }
                set.insert(b.block_id.clone());
                if self.block(tenant, &b.block_id).is_none() {
                    let blk = Arc::new(LoadedBlock::new(
                        tenant,
                        &b.block_id,
                        b.min_time,
                        b.max_time,
                        BlockFetcher::new(
                            self.bucket.clone(),
                            tenant,
                            &b.block_id,
                            self.caches.clone(),
                            self.metrics.clone(),
                        ),
                        self.block_dir(tenant, &b.block_id),
                        self.opts.lazy_loading,
                        self.epoch,
                        self.metrics.clone(),
                    ));
                    self.blocks
                        .write()
                        .entry(tenant.clone())
                        .or_default()
                        .insert(b.block_id.clone(), Arc::clone(&blk));
                    new_blocks.push(blk);
                }
            }
            stats.owned += set.len();
            wanted.insert(tenant.clone(), set);
        }
        stats.failed_tenants = failed.len();
        if !failed.is_empty() {
            self.metrics.sync_failures.inc();
        }
        // Listed: queries may come; those naming a block still building wait for it.
        self.listed.store(true, Ordering::Release);

        // Build new headers (bounded), and also retry the failed ones.
        let mut to_build = new_blocks;
        for m in self.blocks.read().values() {
            for b in m.values() {
                if matches!(b.state(), crate::block::HeaderState::Failed { .. })
                    && !to_build.iter().any(|n| Arc::ptr_eq(n, b))
                {
                    to_build.push(Arc::clone(b));
                }
            }
        }
        stats.loaded = to_build.len();
        let mut tasks = Vec::with_capacity(to_build.len());
        for b in to_build {
            let sem = Arc::clone(&self.builds);
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                b.load().await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }

        // Then drop what is no longer wanted (never for a tenant whose listing failed).
        let mut dropped: Vec<Arc<LoadedBlock>> = Vec::new();
        {
            let mut all = self.blocks.write();
            for (tenant, m) in all.iter_mut() {
                if failed.contains(tenant) {
                    continue;
                }
                let keep = wanted.get(tenant);
                m.retain(|id, b| {
                    let k = keep.is_some_and(|s| s.contains(id));
                    if !k {
                        dropped.push(Arc::clone(b));
                    }
                    k
                });
            }
            all.retain(|_, m| !m.is_empty());
        }
        stats.dropped = dropped.len();
        for b in dropped {
            b.close();
            remove_header(b.dir()).await;
        }
        self.remove_orphans(&wanted).await;
        self.metrics
            .blocks_loaded
            .set(self.blocks.read().values().map(|m| m.len() as i64).sum());
        Ok(stats)
    }

    /// Deletes index-headers left on disk for blocks not served (from before a restart, or
    /// moved to another instance).
    async fn remove_orphans(&self, wanted: &HashMap<String, HashSet<String>>) {
        let Ok(mut tenants) = tokio::fs::read_dir(&self.opts.sync_dir).await else {
            return;
        };
        while let Ok(Some(t)) = tenants.next_entry().await {
            let tenant = t.file_name().to_string_lossy().into_owned();
            let Some(keep) = wanted.get(&tenant) else {
                continue;
            };
            let Ok(mut blocks) = tokio::fs::read_dir(t.path()).await else {
                continue;
            };
            while let Ok(Some(b)) = blocks.next_entry().await {
                let id = b.file_name().to_string_lossy().into_owned();
                if !keep.contains(&id) && norn_storage::layout::is_block_id(&id) {
                    remove_header(&b.path()).await;
                }
            }
        }
    }
}

/// Deletes a block's local index-header, and its directory when nothing else is in it (the
/// sync dir may be shared with other readers of the bucket).
async fn remove_header(dir: &Path) {
    let path = dir.join(crate::header::HEADER_FILENAME);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete index-header"),
    }
    let _ = tokio::fs::remove_dir(dir).await;
}
