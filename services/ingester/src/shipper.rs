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

use serde::{Deserialize, Serialize};

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
