//! The shipper: uploads a tenant's local blocks to the bucket and remembers what it uploaded.
//!
//! Blocks go to `<tenant>/<ULID>/`, `meta.json` last, so a reader that lists blocks by their
//! `meta.json` never sees a half-uploaded one. What was uploaded is kept in `shipper.json`
//! in the tenant's directory (Thanos' and Mimir's file: `{"version":1,"uploaded":[…]}`),
//! written atomically after each upload. A process killed mid-upload finds the block missing
//! from the file and uploads it again, whole: objects are overwritten under the same keys, so
//! nothing is duplicated and the half-uploaded block is completed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Instant;

use norn_storage::{StorageError as BucketError, layout};
use norn_tsdb::block::{Block, Ulid};
use serde::{Deserialize, Serialize};

use crate::Ingester;
use crate::tenant::TenantDb;
use norn_model::now_ms;

/// Name of the shipper's state file in a tenant's TSDB directory.
pub const SHIPPER_FILE: &str = "shipper.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct ShipperState {
    version: u32,
    #[serde(default)]
    uploaded: Vec<String>,
}

/// The set of uploaded block ids of one tenant, persisted in `shipper.json`.
#[derive(Debug)]
pub struct Shipped {
    path: PathBuf,
    uploaded: BTreeSet<String>,
}

impl Shipped {
    /// Loads `dir/shipper.json`. A missing file means nothing was shipped; an unreadable one
    /// is logged and treated the same (blocks are then uploaded again, which is harmless).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(SHIPPER_FILE);
        let uploaded = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<ShipperState>(&bytes) {
                Ok(s) => s.uploaded.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable shipper state; blocks will be uploaded again");
                    BTreeSet::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read shipper state; blocks will be uploaded again");
                BTreeSet::new()
            }
        };
        Self { path, uploaded }
    }

    pub fn contains(&self, ulid: &str) -> bool {
        self.uploaded.contains(ulid)
    }

    pub fn len(&self) -> usize {
        self.uploaded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.uploaded.is_empty()
    }

    /// Records an upload and persists the set (write to a temp file, fsync, rename).
    pub fn insert(&mut self, ulid: &str) -> std::io::Result<()> {
        self.uploaded.insert(ulid.to_string());
        self.save()
    }

    /// Forgets blocks that no longer exist locally, so the file does not grow forever.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> std::io::Result<()> {
        let before = self.uploaded.len();
        self.uploaded.retain(|u| keep(u));
        if self.uploaded.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> std::io::Result<()> {
        let state = ShipperState {
            version: 1,
            uploaded: self.uploaded.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Ingester {
    /// Uploads the tenant's local blocks the shipper has not recorded yet, oldest first.
    /// Stops at the first failure (retried at the next ship interval).
    pub(crate) async fn ship(&self, db: &TenantDb) -> Result<usize, BucketError> {
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
    pub(crate) fn apply_retention(&self, db: &TenantDb) {
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

    /// One round of the ship loop: uploads every tenant's new blocks, applies local
    /// retention, and closes tenants that have gone idle.
    pub(crate) async fn ship_round(self: Arc<Self>) {
        for db in self.all_tenants() {
            // Failures are logged and counted in `ship`; the next round retries.
            let _ = self.ship(&db).await;
            self.apply_retention(&db);
            let ing = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || ing.close_if_idle(&db)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_loads_in_thanos_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Shipped::load(dir.path());
        assert!(s.is_empty());
        s.insert("01JABCDEFGHJKMNPQRSTVWXYZ0").unwrap();
        s.insert("01JABCDEFGHJKMNPQRSTVWXYZ1").unwrap();
        let s2 = Shipped::load(dir.path());
        assert_eq!(s2.len(), 2);
        assert!(s2.contains("01JABCDEFGHJKMNPQRSTVWXYZ0"));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(SHIPPER_FILE)).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["uploaded"].as_array().unwrap().len(), 2);
        let mut s2 = s2;
        s2.retain(|u| u.ends_with('1')).unwrap();
        assert_eq!(Shipped::load(dir.path()).len(), 1);
    }

    #[test]
    fn a_damaged_file_means_upload_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SHIPPER_FILE), b"{not json").unwrap();
        assert!(Shipped::load(dir.path()).is_empty());
    }
}
