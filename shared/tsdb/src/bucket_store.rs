//! The query path's view of the blocks in the bucket.
//!
//! [`BucketStore::sync`] lists every tenant's complete blocks (those with a `meta.json`, not
//! marked for deletion), downloads the new ones into `sync_dir/<tenant>/<ULID>/`, and opens
//! and verifies each before serving it: a corrupt or truncated block is reported (which block,
//! which file, what is wrong), counted and skipped, never served as partial data. Blocks gone
//! from the bucket are dropped. A local copy that already verifies is reused after a restart.
//!
//! This is the core the store-gateway will own; today the all-in-one process queries it
//! directly. It downloads whole blocks; index-headers and ranged chunk reads come with the
//! store-gateway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use norn_model::{Queryable, QueryableProvider, TenantId};
use norn_storage::{Bucket, StorageError as BucketError, layout};
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntGauge, Registry};

use crate::block::{Block, TMP_SUFFIX};
use crate::block_queryable::BlocksQueryable;

/// What one [`BucketStore::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub tenants: usize,
    pub blocks: usize,
    pub loaded: usize,
    pub dropped: usize,
    pub failed: usize,
}

struct StoreMetrics {
    blocks_loaded: IntGauge,
    block_loads: IntCounter,
    block_load_failures: IntCounter,
    syncs: IntCounter,
    sync_failures: IntCounter,
}

impl StoreMetrics {
    fn new(registry: Option<&Registry>) -> prometheus::Result<Self> {
        let m = Self {
            blocks_loaded: IntGauge::new(
                "norn_bucket_store_blocks_loaded",
                "Bucket blocks currently served by the query path.",
            )?,
            block_loads: IntCounter::new(
                "norn_bucket_store_block_loads_total",
                "Bucket blocks downloaded and opened.",
            )?,
            block_load_failures: IntCounter::new(
                "norn_bucket_store_block_load_failures_total",
                "Bucket blocks that failed to download, open or verify (skipped, not served).",
            )?,
            syncs: IntCounter::new(
                "norn_bucket_store_syncs_total",
                "Syncs of the bucket's block list.",
            )?,
            sync_failures: IntCounter::new(
                "norn_bucket_store_sync_failures_total",
                "Syncs of the bucket's block list that failed (the previous list is kept).",
            )?,
        };
        if let Some(r) = registry {
            r.register(Box::new(m.blocks_loaded.clone()))?;
            r.register(Box::new(m.block_loads.clone()))?;
            r.register(Box::new(m.block_load_failures.clone()))?;
            r.register(Box::new(m.syncs.clone()))?;
            r.register(Box::new(m.sync_failures.clone()))?;
        }
        Ok(m)
    }
}

/// Blocks of every tenant in the bucket, loaded for queries.
pub struct BucketStore {
    bucket: Bucket,
    dir: PathBuf,
    blocks: RwLock<HashMap<String, Vec<Arc<Block>>>>,
    /// Blocks that failed to load, with the error: reported once, not downloaded every sync.
    failed: Mutex<BTreeMap<(String, String), String>>,
    metrics: StoreMetrics,
    sync_lock: tokio::sync::Mutex<()>,
}

impl BucketStore {
    /// A store keeping local copies under `dir`; metrics go to `registry` when given.
    pub fn new(
        bucket: Bucket,
        dir: impl Into<PathBuf>,
        registry: Option<&Registry>,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            bucket,
            dir: dir.into(),
            blocks: RwLock::default(),
            failed: Mutex::default(),
            metrics: StoreMetrics::new(registry)?,
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The loaded blocks of `tenant`, oldest first.
    pub fn blocks(&self, tenant: &str) -> Vec<Arc<Block>> {
        self.blocks.read().get(tenant).cloned().unwrap_or_default()
    }

    /// Blocks that failed to load and why, as `(tenant, ulid, error)`.
    pub fn failed_blocks(&self) -> Vec<(String, String, String)> {
        self.failed
            .lock()
            .iter()
            .map(|((t, u), e)| (t.clone(), u.clone(), e.clone()))
            .collect()
    }

    /// Re-reads the bucket's block list and loads what is new. A failed listing keeps the
    /// blocks already loaded.
    pub async fn sync(&self) -> Result<SyncStats, BucketError> {
        let _guard = self.sync_lock.lock().await;
        self.metrics.syncs.inc();
        let result = self.sync_inner().await;
        if result.is_err() {
            self.metrics.sync_failures.inc();
        }
        result
    }

    async fn sync_inner(&self) -> Result<SyncStats, BucketError> {
        let mut stats = SyncStats::default();
        let tenants = layout::list_tenants(&self.bucket).await?;
        let mut seen_tenants = BTreeSet::new();
        for tenant in tenants {
            if TenantId::new(&tenant).is_err() {
                continue;
            }
            stats.tenants += 1;
            let wanted = self.live_blocks(&tenant).await?;
            let current: HashMap<String, Arc<Block>> = self
                .blocks(&tenant)
                .into_iter()
                .map(|b| (b.meta().ulid.clone(), b))
                .collect();
            let mut next: Vec<Arc<Block>> = Vec::with_capacity(wanted.len());
            for ulid in &wanted {
                if let Some(b) = current.get(ulid) {
                    next.push(Arc::clone(b));
                    continue;
                }
                let key = (tenant.clone(), ulid.clone());
                if self.failed.lock().contains_key(&key) {
                    continue;
                }
                match self.load(&tenant, ulid).await {
                    Ok(b) => {
                        stats.loaded += 1;
                        self.metrics.block_loads.inc();
                        next.push(Arc::new(b));
                    }
                    Err(e) => {
                        stats.failed += 1;
                        self.metrics.block_load_failures.inc();
                        tracing::error!(tenant = %tenant, block = %ulid, error = %e, "skipping bucket block that cannot be loaded");
                        self.failed.lock().insert(key, e);
                    }
                }
            }
            for (ulid, b) in &current {
                if !wanted.contains(ulid) {
                    stats.dropped += 1;
                    let _ = std::fs::remove_dir_all(b.dir());
                }
            }
            next.sort_by_key(|b| (b.meta().min_time, b.meta().ulid.clone()));
            stats.blocks += next.len();
            self.blocks.write().insert(tenant.clone(), next);
            seen_tenants.insert(tenant);
        }
        self.blocks.write().retain(|t, _| seen_tenants.contains(t));
        self.metrics.blocks_loaded.set(stats.blocks as i64);
        Ok(stats)
    }

    /// Complete blocks of `tenant` not marked for deletion.
    async fn live_blocks(&self, tenant: &str) -> Result<BTreeSet<String>, BucketError> {
        let mut complete = BTreeSet::new();
        let mut marked = BTreeSet::new();
        for o in self.bucket.list(tenant).await? {
            let Some((dir, file)) = o
                .key
                .strip_prefix(tenant)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            if !layout::is_block_id(dir) {
                continue;
            }
            if file == layout::META_FILE {
                complete.insert(dir.to_string());
            } else if file == layout::DELETION_MARK_FILE {
                marked.insert(dir.to_string());
            }
        }
        Ok(complete.difference(&marked).cloned().collect())
    }

    /// Downloads (unless a verified local copy exists), opens and verifies a block.
    async fn load(&self, tenant: &str, ulid: &str) -> Result<Block, String> {
        let dir = self.dir.join(tenant).join(ulid);
        if dir.join(layout::META_FILE).exists()
            && let Ok(b) = open_verified(dir.clone()).await
        {
            return Ok(b);
        }
        let tmp = self.dir.join(tenant).join(format!("{ulid}{TMP_SUFFIX}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&dir);
        self.bucket
            .download_dir(&layout::block_prefix(tenant, ulid), &tmp)
            .await
            .map_err(|e| format!("downloading: {e}"))?;
        std::fs::rename(&tmp, &dir).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
        match open_verified(dir.clone()).await {
            Ok(b) => Ok(b),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Blocks of `tenant` as a [`Queryable`].
    pub fn queryable_for(&self, tenant: &str) -> BlocksQueryable {
        BlocksQueryable::new(self.blocks(tenant))
    }

    /// Where local copies live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn open_verified(dir: PathBuf) -> Result<Block, String> {
    tokio::task::spawn_blocking(move || {
        let b = Block::open(&dir).map_err(|e| e.to_string())?;
        b.verify().map_err(|e| e.to_string())?;
        Ok(b)
    })
    .await
    .map_err(|e| format!("block check task failed: {e}"))?
}

impl QueryableProvider for BucketStore {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        Arc::new(self.queryable_for(tenant.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockOptions, chunks_from_samples, write_block};
    use crate::head::SeriesChunks;
    use norn_model::{Labels, Sample};

    fn block_in(dir: &Path, name: &str, t0: i64) -> String {
        let samples: Vec<Sample> = (0..100)
            .map(|i| Sample::new(t0 + i * 1000, i as f64))
            .collect();
        let meta = write_block(
            dir,
            [SeriesChunks {
                labels: Labels::from_pairs([("__name__", name)]),
                chunks: chunks_from_samples(&samples, 120).unwrap(),
            }],
            BlockOptions::for_tenant("t", "test", []),
        )
        .unwrap();
        meta.ulid
    }

    #[tokio::test]
    async fn loads_new_blocks_skips_corrupt_and_drops_deleted() {
        let local = tempfile::tempdir().unwrap();
        let bucket = Bucket::in_memory();
        let good = block_in(local.path(), "good", 0);
        let bad = block_in(local.path(), "bad", 200_000);
        // Truncate the bad block's index before upload.
        let idx = local.path().join(&bad).join("index");
        let bytes = std::fs::read(&idx).unwrap();
        std::fs::write(&idx, &bytes[..bytes.len() / 2]).unwrap();
        for u in [&good, &bad] {
            bucket
                .upload_dir(
                    &local.path().join(u),
                    &layout::block_prefix("t", u),
                    Some("meta.json"),
                )
                .await
                .unwrap();
        }
        // A partial upload (no meta.json) is not a block yet.
        bucket
            .put(
                &layout::block_file("t", "01HQ3Z5V6W7X8Y9ZABCDEFGHJK", "index"),
                bytes::Bytes::from_static(b"x"),
            )
            .await
            .unwrap();

        let cache = tempfile::tempdir().unwrap();
        let store = BucketStore::new(bucket.clone(), cache.path(), None).unwrap();
        let s = store.sync().await.unwrap();
        assert_eq!((s.tenants, s.blocks, s.loaded, s.failed), (1, 1, 1, 1));
        let failed = store.failed_blocks();
        assert_eq!(failed[0].1, bad);
        assert!(
            failed[0].2.contains("index"),
            "names the file: {}",
            failed[0].2
        );

        let q = store.queryable(&TenantId::new("t").unwrap());
        let series = q.select(i64::MIN, i64::MAX, &[]).await.unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].samples.len(), 100);

        // A second sync loads nothing new; a deleted block is dropped.
        assert_eq!(store.sync().await.unwrap().loaded, 0);
        bucket
            .delete_prefix(&layout::block_prefix("t", &good))
            .await
            .unwrap();
        let s = store.sync().await.unwrap();
        assert_eq!((s.blocks, s.dropped), (0, 1));
        assert!(store.blocks("t").is_empty());
    }
}
