//! Which blocks a query needs: the tenant's bucket index (or a listing where it has none),
//! cached per tenant and re-read once it is older than the refresh interval, then the blocks
//! overlapping the query's range.
//!
//! A tenant with no blocks costs one small GET per refresh (the missing index, then an empty
//! listing). Concurrent queries of one tenant share one refresh. Tenants not queried for a while
//! are forgotten, so the cache holds the indexes of the tenants being queried, not of every
//! tenant ever queried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_bucket_index::{Index, IndexBlock};
use norn_model::StorageError;
use norn_storage::Bucket;
use parking_lot::Mutex;

/// A tenant's cached index that failed to refresh is still used up to this age; beyond it the
/// query fails rather than miss blocks the index does not know yet.
const MAX_STALE: Duration = Duration::from_secs(3600);

/// Tenants not queried for this long are dropped from the cache.
const IDLE_EVICT: Duration = Duration::from_secs(3600);

struct Cached {
    index: Arc<Index>,
    fetched: Instant,
}

struct TenantSlot {
    /// Held while refreshing, so concurrent queries of one tenant wait for one GET.
    cached: tokio::sync::Mutex<Option<Cached>>,
    last_used: Mutex<Instant>,
}

/// The per-tenant block lists of a bucket, cached.
pub struct BlocksFinder {
    bucket: Bucket,
    refresh: Duration,
    tenants: Mutex<HashMap<String, Arc<TenantSlot>>>,
    last_evict: Mutex<Instant>,
}

impl BlocksFinder {
    /// Finds blocks in `bucket`, re-reading a tenant's index when it is older than `refresh`
    /// (`blocks-storage.bucket-store.sync-interval`).
    pub fn new(bucket: Bucket, refresh: Duration) -> Self {
        Self {
            bucket,
            refresh,
            tenants: Mutex::default(),
            last_evict: Mutex::new(Instant::now()),
        }
    }

    fn slot(&self, tenant: &str) -> Arc<TenantSlot> {
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        {
            let mut last = self.last_evict.lock();
            if now.duration_since(*last) > IDLE_EVICT / 4 {
                *last = now;
                tenants.retain(|_, s| now.duration_since(*s.last_used.lock()) < IDLE_EVICT);
            }
        }
        let slot = Arc::clone(tenants.entry(tenant.to_string()).or_insert_with(|| {
            Arc::new(TenantSlot {
                cached: tokio::sync::Mutex::new(None),
                last_used: Mutex::new(now),
            })
        }));
        *slot.last_used.lock() = now;
        slot
    }

    /// The tenant's index, from the cache when fresh.
    pub async fn index(&self, tenant: &str) -> Result<Arc<Index>, StorageError> {
        let slot = self.slot(tenant);
        let mut cached = slot.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.fetched.elapsed() < self.refresh
        {
            return Ok(Arc::clone(&c.index));
        }
        match norn_bucket_index::discover(&self.bucket, tenant).await {
            Ok(d) => {
                let index = Arc::new(d.index);
                *cached = Some(Cached {
                    index: Arc::clone(&index),
                    fetched: Instant::now(),
                });
                Ok(index)
            }
            Err(e) => match cached.as_ref() {
                Some(c) if c.fetched.elapsed() < MAX_STALE => {
                    tracing::warn!(tenant, error = %e, "bucket index refresh failed; using the cached one");
                    Ok(Arc::clone(&c.index))
                }
                _ => Err(StorageError::Unavailable(format!(
                    "reading the bucket index of tenant {tenant}: {e}"
                ))),
            },
        }
    }
}

/// The blocks of `index` a query of `[start_ms, end_ms]` needs: those overlapping the range,
/// less those marked for deletion longer than `ignore_deletion_marks_delay` ago (the
/// store-gateways have dropped them; their data lives on in the compacted block that replaced
/// them). Sorted by block id.
pub fn blocks_for_range(
    index: &Index,
    start_ms: i64,
    end_ms: i64,
    now_unix_s: i64,
    ignore_deletion_marks_delay: Duration,
) -> Vec<IndexBlock> {
    let limit = now_unix_s.saturating_sub(ignore_deletion_marks_delay.as_secs() as i64);
    let mut out: Vec<IndexBlock> = index
        .blocks
        .iter()
        .filter(|b| b.overlaps(start_ms, end_ms))
        .filter(|b| {
            index
                .deletion_mark(&b.block_id)
                .is_none_or(|m| m.deletion_time > limit)
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| a.block_id.cmp(&b.block_id));
    out.dedup_by(|a, b| a.block_id == b.block_id);
    out
}

#[cfg(test)]
mod tests {
    use norn_bucket_index::IndexDeletionMark;

    use super::*;

    fn block(id: &str, min: i64, max: i64) -> IndexBlock {
        IndexBlock {
            block_id: id.to_string(),
            min_time: min,
            max_time: max,
            segments_format: String::new(),
            segments_num: 1,
            uploaded_at: 0,
            compactor_shard_id: String::new(),
            source: String::new(),
            compaction_level: 1,
        }
    }

    #[test]
    fn picks_overlapping_blocks_and_drops_long_deleted_ones() {
        let mut index = Index::empty(0);
        index.blocks = vec![
            block("c", 200, 300),
            block("a", 0, 100),
            block("b", 100, 200),
            block("d", 300, 400),
        ];
        index.block_deletion_marks = vec![
            IndexDeletionMark {
                block_id: "b".into(),
                deletion_time: 1000,
            },
            IndexDeletionMark {
                block_id: "c".into(),
                deletion_time: 9_000,
            },
        ];
        let ids = |v: Vec<IndexBlock>| v.into_iter().map(|b| b.block_id).collect::<Vec<_>>();
        // max_time is exclusive: [100, 250] does not touch a.
        let got = blocks_for_range(&index, 100, 250, 10_000, Duration::from_secs(3600));
        // b was marked 9000 s ago (> 1h): dropped; c only 1000 s ago: still queried.
        assert_eq!(ids(got), ["c"]);
        let got = blocks_for_range(&index, 0, 1000, 10_000, Duration::from_secs(100_000));
        assert_eq!(ids(got), ["a", "b", "c", "d"]);
    }

    #[tokio::test]
    async fn index_is_cached_and_refreshed() {
        let bucket = Bucket::in_memory();
        let finder = BlocksFinder::new(bucket.clone(), Duration::from_millis(200));
        // No index, no blocks: an empty list.
        assert!(finder.index("t").await.unwrap().blocks.is_empty());
        let mut index = Index::empty(1);
        index.blocks.push(block("01A", 0, 10));
        index.write(&bucket, "t").await.unwrap();
        // Still the cached (empty) one.
        assert!(finder.index("t").await.unwrap().blocks.is_empty());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(finder.index("t").await.unwrap().blocks.len(), 1);
        // Another tenant is separate.
        assert!(finder.index("u").await.unwrap().blocks.is_empty());
    }
}
