//! The test's own view of the S3 bucket: which block directories a tenant has and which of
//! their files are there (one LIST), block metadata and marks, and raw object access to
//! damage a block or download one for `promtool`.

use std::collections::BTreeMap;
use std::path::Path;

use norn_storage::{Bucket, StorageConfig, layout};

/// What one block directory holds.
#[derive(Debug, Clone, Default)]
pub struct BlockFiles {
    /// Paths relative to the block directory (`index`, `chunks/000001`, …).
    pub files: Vec<String>,
    pub meta: bool,
    pub deletion: bool,
    pub no_compact: bool,
}

/// What the test needs of a block's `meta.json`.
#[derive(Debug, Clone)]
pub struct Meta {
    pub min_time: i64,
    pub max_time: i64,
    pub level: u64,
}

pub struct S3 {
    rt: tokio::runtime::Runtime,
    bucket: Bucket,
}

impl S3 {
    pub fn new(cfg: &StorageConfig) -> S3 {
        S3 {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            bucket: Bucket::from_config(cfg).unwrap(),
        }
    }

    /// The tenant's block directories (complete or not) and their files.
    pub fn listing(&self, tenant: &str) -> BTreeMap<String, BlockFiles> {
        let objects = self
            .rt
            .block_on(self.bucket.list(&format!("{tenant}/")))
            .unwrap();
        let mut out: BTreeMap<String, BlockFiles> = BTreeMap::new();
        for o in objects {
            let Some(rest) = o.key.strip_prefix(&format!("{tenant}/")) else {
                continue;
            };
            let Some((dir, file)) = rest.split_once('/') else {
                continue;
            };
            if !layout::is_block_id(dir) {
                continue;
            }
            let b = out.entry(dir.to_string()).or_default();
            match file {
                "meta.json" => b.meta = true,
                "deletion-mark.json" => b.deletion = true,
                "no-compact-mark.json" => b.no_compact = true,
                _ => {}
            }
            b.files.push(file.to_string());
        }
        out
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.rt.block_on(self.bucket.get(key)).unwrap().to_vec()
    }

    pub fn put(&self, key: &str, data: Vec<u8>) {
        self.rt.block_on(self.bucket.put(key, data.into())).unwrap();
    }

    fn json(&self, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(key)).unwrap()
    }

    /// The object, or `None` when it is not there.
    fn try_json(&self, key: &str) -> Option<serde_json::Value> {
        match self.rt.block_on(self.bucket.get(key)) {
            Ok(b) => Some(serde_json::from_slice(&b).unwrap()),
            Err(norn_storage::StorageError::NotFound { .. }) => None,
            Err(e) => panic!("{key}: {e}"),
        }
    }

    pub fn meta(&self, tenant: &str, id: &str) -> Meta {
        let v = self.json(&layout::block_meta(tenant, id));
        Meta {
            min_time: v["minTime"].as_i64().unwrap(),
            max_time: v["maxTime"].as_i64().unwrap(),
            level: v["compaction"]["level"].as_u64().unwrap(),
        }
    }

    /// `deletion_time` of the block's deletion mark (Unix seconds), if it has one.
    pub fn deletion_time(&self, tenant: &str, id: &str) -> Option<i64> {
        let v = self.try_json(&layout::deletion_mark(tenant, id))?;
        Some(v["deletion_time"].as_i64().unwrap())
    }

    pub fn no_compact_mark(&self, tenant: &str, id: &str) -> serde_json::Value {
        self.json(&layout::block_file(tenant, id, "no-compact-mark.json"))
    }

    /// The tenant's `bucket-index.json.gz`, if written.
    pub fn index(&self, tenant: &str) -> Option<norn_bucket_index::Index> {
        self.rt
            .block_on(norn_bucket_index::Index::read(&self.bucket, tenant))
            .unwrap()
    }

    /// Downloads the block into `dir` (marks included: promtool ignores them).
    pub fn download_block(&self, tenant: &str, id: &str, dir: &Path) {
        self.rt
            .block_on(
                self.bucket
                    .download_dir(&layout::block_prefix(tenant, id), dir),
            )
            .unwrap();
    }
}
