//! The cleanup run, per owned tenant: retention marks, deletion of blocks whose mark is older
//! than the deletion delay, deletion of stale partial blocks, and the bucket index.
//!
//! A block is deleted `meta.json` first, so from the first step on it is a partial block
//! (no reader opens it) carrying its deletion mark; then its other files, then its global
//! marks, then its block-local marks. A crash anywhere leaves a partial block with a
//! deletion mark, which the next cleanup deletes at once.
//!
//! Deletions run [`DELETE_CONCURRENCY`] blocks at a time, and a block's files at once once its
//! `meta.json` is gone: each is a round trip to the bucket, and one at a time a tenant with
//! many blocks due kept every other tenant's bucket index waiting for minutes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use norn_bucket_index::index::IndexDeletionMark;
use norn_bucket_index::marks::{DELETION_MARK_FILE, NO_COMPACT_MARK_FILE};
use norn_bucket_index::{DeletionMark, Index, NoCompactMark, marks, update_index};
use norn_storage::layout;

use crate::compactor::{Compactor, CompactorError, unix};

/// Blocks of one tenant deleted at once.
const DELETE_CONCURRENCY: usize = 8;

/// What one tenant's cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantCleanup {
    /// Blocks marked for deletion by retention.
    pub retention_marked: Vec<String>,
    /// Blocks deleted (deletion delay passed).
    pub deleted: Vec<String>,
    /// Partial blocks deleted.
    pub partials_deleted: Vec<String>,
    /// Blocks in the index written.
    pub index_blocks: usize,
}

impl Compactor {
    /// One cleanup run over every owned tenant; a failing tenant does not stop the others.
    pub async fn run_cleanup(&self) -> Result<BTreeMap<String, TenantCleanup>, CompactorError> {
        self.metrics.cleanup_runs.inc();
        let tenants = match self.owned_tenants().await {
            Ok(t) => t,
            Err(e) => {
                self.metrics.cleanup_failures.inc();
                return Err(e);
            }
        };
        let mut out = BTreeMap::new();
        let mut failed = None;
        for tenant in tenants {
            if self.stop.is_cancelled() {
                return Err(CompactorError::Stopped);
            }
            match self.cleanup_tenant(&tenant).await {
                Ok(r) => {
                    out.insert(tenant, r);
                }
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "cleanup of tenant failed; retried next run");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => {
                self.metrics.cleanup_failures.inc();
                Err(e)
            }
            None => Ok(out),
        }
    }

    /// Retention, deletions, partial blocks and the bucket index of `tenant`.
    pub async fn cleanup_tenant(&self, tenant: &str) -> Result<TenantCleanup, CompactorError> {
        let limits = self.overrides.for_tenant(tenant);
        let now = SystemTime::now();
        let (now_s, now_ms) = unix(now);
        let previous = match Index::read(&self.bucket, tenant).await {
            Ok(p) => p,
            Err(e) => {
                // A damaged index is rebuilt from the listing, never trusted nor fatal.
                tracing::warn!(tenant, error = %e, "bucket index unreadable; rebuilding it");
                None
            }
        };
        let outcome = update_index(&self.bucket, tenant, previous.as_ref(), now_s).await;
        let mut outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.metrics.bucket_index_update_failures.inc();
                return Err(e.into());
            }
        };
        let mut report = TenantCleanup::default();

        let retention = limits.compactor_blocks_retention_period;
        if !retention.is_zero() {
            let cutoff =
                now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let marked: HashSet<String> = outcome
                .index
                .block_deletion_marks
                .iter()
                .map(|m| m.block_id.clone())
                .collect();
            for b in &outcome.index.blocks {
                if b.max_time <= cutoff && !marked.contains(&b.block_id) {
                    marks::write(&self.bucket, tenant, &DeletionMark::new(&b.block_id, now_s))
                        .await?;
                    self.metrics
                        .blocks_marked_for_deletion
                        .with_label_values(&["retention"])
                        .inc();
                    tracing::info!(tenant, block = %b.block_id, max_time = b.max_time, "block past retention marked for deletion");
                    report.retention_marked.push(b.block_id.clone());
                }
            }
            for id in &report.retention_marked {
                outcome.index.block_deletion_marks.push(IndexDeletionMark {
                    block_id: id.clone(),
                    deletion_time: now_s,
                });
            }
        }

        let delay = i64::try_from(self.cfg.deletion_delay.as_secs()).unwrap_or(i64::MAX);
        let due: Vec<String> = outcome
            .index
            .block_deletion_marks
            .iter()
            .filter(|m| m.deletion_time.saturating_add(delay) <= now_s)
            .map(|m| m.block_id.clone())
            .collect();
        // The futures are made up front: a stream mapping through a closure that borrows
        // `self` is not provably `Send` for every lifetime (rustc's higher-ranked closures).
        let deletions: Vec<_> = due.iter().map(|id| self.delete_due(tenant, id)).collect();
        futures::stream::iter(deletions)
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        let gone: HashSet<&str> = due.iter().map(String::as_str).collect();
        outcome
            .index
            .blocks
            .retain(|b| !gone.contains(b.block_id.as_str()));
        outcome
            .index
            .block_deletion_marks
            .retain(|m| !gone.contains(m.block_id.as_str()));
        report.deleted = due;

        let partial_delay = limits.compactor_partial_block_deletion_delay;
        for p in &outcome.partials {
            let marked = marks::read::<DeletionMark>(&self.bucket, tenant, &p.id)
                .await
                .map(|m| m.is_some())
                // A mark that does not parse still says "delete".
                .unwrap_or(true);
            let idle = now
                .duration_since(p.last_modified)
                .unwrap_or(Duration::ZERO);
            if marked || (!partial_delay.is_zero() && idle >= partial_delay) {
                self.delete_block(tenant, &p.id).await?;
                self.metrics.partial_blocks_deleted.inc();
                tracing::info!(tenant, block = %p.id, idle_s = idle.as_secs(), marked, "partial block deleted");
                report.partials_deleted.push(p.id.clone());
            }
        }

        outcome.index.updated_at = now_s;
        outcome.index.sort();
        match outcome.index.write(&self.bucket, tenant).await {
            Ok(()) => self.metrics.bucket_index_updates.inc(),
            Err(e) => {
                self.metrics.bucket_index_update_failures.inc();
                return Err(e.into());
            }
        }
        report.index_blocks = outcome.index.blocks.len();
        Ok(report)
    }

    /// Deletes a block whose deletion delay has passed, counted and logged.
    async fn delete_due(&self, tenant: &str, id: &str) -> Result<(), CompactorError> {
        self.delete_block(tenant, id).await?;
        self.metrics.blocks_deleted.inc();
        tracing::info!(tenant, block = %id, "block deleted (deletion delay passed)");
        Ok(())
    }

    /// Deletes a block in the crash-safe order described in the module docs.
    async fn delete_block(&self, tenant: &str, id: &str) -> Result<(), CompactorError> {
        self.bucket.delete(&layout::block_meta(tenant, id)).await?;
        let prefix = layout::block_prefix(tenant, id);
        let local_marks = [
            layout::block_file(tenant, id, DELETION_MARK_FILE),
            layout::block_file(tenant, id, NO_COMPACT_MARK_FILE),
        ];
        let files = self.bucket.list(&format!("{prefix}/")).await?;
        let deletions: Vec<_> = files
            .iter()
            .filter(|o| !local_marks.contains(&o.key))
            .map(|o| self.bucket.delete(&o.key))
            .collect();
        futures::stream::iter(deletions)
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        self.bucket
            .delete(&marks::global_mark_key(tenant, id, NO_COMPACT_MARK_FILE))
            .await?;
        self.bucket
            .delete(&marks::global_mark_key(tenant, id, DELETION_MARK_FILE))
            .await?;
        marks::remove::<NoCompactMark>(&self.bucket, tenant, id).await?;
        marks::remove::<DeletionMark>(&self.bucket, tenant, id).await?;
        Ok(())
    }
}
