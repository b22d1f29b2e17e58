//! What the bucket holds for a tenant: one recursive listing of `<tenant>/`, then each complete
//! block's `meta.json` and each mark that the listing found.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use futures::StreamExt;
use norn_bucket_index::marks::{self, DELETION_MARK_FILE, NO_COMPACT_MARK_FILE};
use norn_bucket_index::{DeletionMark, NoCompactMark};
use norn_storage::{Bucket, layout};
use norn_tsdb::block::BlockMeta;

/// Objects fetched at once.
const CONCURRENCY: usize = 16;

/// One file of a block directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFile {
    /// Relative to the block directory (`index`, `chunks/000001`, …).
    pub path: String,
    pub size: u64,
}

/// A block directory of the tenant, complete or not.
#[derive(Debug, Clone)]
pub struct BlockInfo {
    pub id: String,
    /// Every object under `<tenant>/<id>/`, marks included, sorted.
    pub files: Vec<BlockFile>,
    /// The newest object's write time: for a partial block, how long it has been idle.
    pub last_modified: Option<SystemTime>,
    /// `Some(Ok)`: complete; `Some(Err)`: `meta.json` exists but cannot be read or parsed;
    /// `None`: partial (no `meta.json`).
    pub meta: Option<Result<BlockMeta, String>>,
    pub deletion: Option<Result<DeletionMark, String>>,
    pub no_compact: Option<Result<NoCompactMark, String>>,
}

impl BlockInfo {
    fn new(id: &str) -> Self {
        BlockInfo {
            id: id.to_owned(),
            files: Vec::new(),
            last_modified: None,
            meta: None,
            deletion: None,
            no_compact: None,
        }
    }

    /// Sum of the sizes of the block's files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether the block has any object (a mark alone, global, does not count).
    pub fn exists(&self) -> bool {
        !self.files.is_empty()
    }
}

#[derive(Default)]
struct Listed {
    files: Vec<BlockFile>,
    newest: Option<SystemTime>,
    meta: bool,
    deletion: bool,
    no_compact: bool,
}

/// Every block directory of `tenant` (and blocks that only have global marks left), sorted
/// by id, with metas and marks read. A block whose `meta.json` or mark cannot be read is
/// reported as such, not fatal; a listing failure is.
pub async fn scan(
    bucket: &Bucket,
    tenant: &str,
    only: Option<&str>,
) -> anyhow::Result<Vec<BlockInfo>> {
    let prefix = match only {
        Some(id) => layout::block_prefix(tenant, id),
        None => tenant.to_owned(),
    };
    let mut dirs: BTreeMap<String, Listed> = BTreeMap::new();
    let tenant_dir = format!("{tenant}/");
    let markers = format!("{}/", layout::markers_prefix(tenant));
    let objects = bucket
        .list(&prefix)
        .await
        .with_context(|| format!("listing {prefix}/ in the bucket"))?;
    for o in objects {
        let Some(rest) = o.key.strip_prefix(&tenant_dir) else {
            continue;
        };
        let Some((dir, file)) = rest.split_once('/') else {
            continue;
        };
        if !layout::is_block_id(dir) || only.is_some_and(|id| id != dir) {
            continue;
        }
        let e = dirs.entry(dir.to_owned()).or_default();
        e.newest = e.newest.max(Some(o.last_modified));
        match file {
            layout::META_FILE => e.meta = true,
            DELETION_MARK_FILE => e.deletion = true,
            NO_COMPACT_MARK_FILE => e.no_compact = true,
            _ => {}
        }
        e.files.push(BlockFile {
            path: file.to_owned(),
            size: o.size,
        });
    }
    // Global marks: one listing of <tenant>/markers/.
    let global = bucket
        .list(markers.trim_end_matches('/'))
        .await
        .with_context(|| format!("listing {markers} in the bucket"))?;
    for o in global {
        let Some(name) = o.key.strip_prefix(&markers) else {
            continue;
        };
        if let Some((id, file)) = marks::parse_global_mark_name(name) {
            if only.is_some_and(|want| want != id) {
                continue;
            }
            let e = dirs.entry(id.to_owned()).or_default();
            e.deletion |= file == DELETION_MARK_FILE;
            e.no_compact |= file == NO_COMPACT_MARK_FILE;
        }
    }

    let infos = futures::stream::iter(dirs)
        .map(|(id, listed)| async move {
            let mut info = BlockInfo::new(&id);
            info.files = listed.files;
            info.last_modified = listed.newest;
            if listed.meta {
                let key = layout::block_meta(tenant, &id);
                info.meta = Some(match bucket.get(&key).await {
                    Ok(bytes) => BlockMeta::from_json(&bytes, Path::new(&key))
                        .map_err(|e| e.to_string())
                        .and_then(|m| {
                            if m.ulid == id {
                                Ok(m)
                            } else {
                                Err(format!("meta.json names block {}", m.ulid))
                            }
                        }),
                    Err(e) => Err(format!("cannot read meta.json: {e}")),
                });
            }
            if listed.deletion {
                info.deletion = marks::read::<DeletionMark>(bucket, tenant, &id)
                    .await
                    .map_err(|e| e.to_string())
                    .transpose();
            }
            if listed.no_compact {
                info.no_compact = marks::read::<NoCompactMark>(bucket, tenant, &id)
                    .await
                    .map_err(|e| e.to_string())
                    .transpose();
            }
            info
        })
        .buffered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    Ok(infos)
}
