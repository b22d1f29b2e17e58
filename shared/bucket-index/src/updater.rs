//! Builds a tenant's [`Index`] from the bucket.
//!
//! One recursive listing of `<tenant>/` finds every block directory, whether it has its
//! `meta.json` (complete) or not (partial), and every mark, global or block-local. Only what the
//! previous index does not already hold is fetched: `meta.json` is immutable, so a listed block
//! is never re-read, and a deletion mark is read once for its time. A corrupt `meta.json` or
//! mark is reported and left out, never fatal: one bad object must not stop the index of a whole
//! tenant from being written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use norn_storage::{Bucket, layout};
use norn_tsdb::block::BlockMeta;

use crate::error::{BucketIndexError, Result};
use crate::index::{Index, IndexBlock, IndexDeletionMark};
use crate::marks::{self, DELETION_MARK_FILE, DeletionMark, NO_COMPACT_MARK_FILE};

/// How many objects are fetched at once while updating.
const FETCH_CONCURRENCY: usize = 16;

/// A block directory without `meta.json`: an upload in progress, or one a crash left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialBlock {
    pub id: String,
    /// The newest object in the directory: how long the upload has been idle.
    pub last_modified: SystemTime,
}

/// What [`update_index`] found.
#[derive(Debug, Clone)]
pub struct UpdateOutcome {
    pub index: Index,
    pub partials: Vec<PartialBlock>,
    /// Blocks left out because their `meta.json` (or mark) is corrupt: (block id, why).
    pub corrupted: Vec<(String, String)>,
    /// Blocks with a no-compact mark (global or block-local), sorted.
    pub no_compact: BTreeSet<String>,
    /// `meta.json` files fetched (the rest came from the previous index).
    pub metas_fetched: usize,
}

#[derive(Default)]
struct Listed {
    meta_modified: Option<SystemTime>,
    newest: Option<SystemTime>,
    deletion_mark: bool,
    no_compact_mark: bool,
}

fn unix_s(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Builds `tenant`'s index at `now_s` (Unix s), reusing what `previous` already knows.
pub async fn update_index(
    bucket: &Bucket,
    tenant: &str,
    previous: Option<&Index>,
    now_s: i64,
) -> Result<UpdateOutcome> {
    let mut dirs: BTreeMap<String, Listed> = BTreeMap::new();
    let markers = format!("{}/", layout::markers_prefix(tenant));
    let tenant_dir = format!("{tenant}/");
    for object in bucket.list(tenant).await? {
        if let Some(name) = object.key.strip_prefix(&markers) {
            if let Some((id, file)) = marks::parse_global_mark_name(name) {
                let entry = dirs.entry(id.to_owned()).or_default();
                entry.deletion_mark |= file == DELETION_MARK_FILE;
                entry.no_compact_mark |= file == NO_COMPACT_MARK_FILE;
            }
            continue;
        }
        let Some((dir, file)) = object
            .key
            .strip_prefix(&tenant_dir)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        if !layout::is_block_id(dir) {
            continue;
        }
        let entry = dirs.entry(dir.to_owned()).or_default();
        entry.newest = entry.newest.max(Some(object.last_modified));
        match file {
            layout::META_FILE => entry.meta_modified = Some(object.last_modified),
            DELETION_MARK_FILE => entry.deletion_mark = true,
            NO_COMPACT_MARK_FILE => entry.no_compact_mark = true,
            _ => {}
        }
    }

    let known: BTreeMap<&str, &IndexBlock> = previous
        .map(|p| p.blocks.iter().map(|b| (b.block_id.as_str(), b)).collect())
        .unwrap_or_default();
    let mut outcome = UpdateOutcome {
        index: Index::empty(now_s),
        partials: Vec::new(),
        corrupted: Vec::new(),
        no_compact: BTreeSet::new(),
        metas_fetched: 0,
    };
    let mut to_fetch = Vec::new();
    for (id, listed) in &dirs {
        if listed.no_compact_mark {
            outcome.no_compact.insert(id.clone());
        }
        match listed.meta_modified {
            Some(_) => match known.get(id.as_str()) {
                Some(block) => outcome.index.blocks.push((*block).clone()),
                None => to_fetch.push((id.clone(), listed.meta_modified.unwrap_or(UNIX_EPOCH))),
            },
            // Marks alone (the block's files already deleted) are not a partial block.
            None if listed.newest.is_some() => outcome.partials.push(PartialBlock {
                id: id.clone(),
                last_modified: listed.newest.unwrap_or(UNIX_EPOCH),
            }),
            None => {}
        }
    }

    outcome.metas_fetched = to_fetch.len();
    let fetched: Vec<(String, Result<IndexBlock>)> = futures::stream::iter(to_fetch)
        .map(|(id, modified)| async move {
            let key = layout::block_meta(tenant, &id);
            let got = match bucket.get(&key).await {
                Ok(bytes) => BlockMeta::from_json(&bytes, Path::new(&key))
                    .map_err(|e| BucketIndexError::corrupt(&key, e))
                    .and_then(|meta| {
                        if meta.ulid == id {
                            Ok(IndexBlock::from_meta(&meta, unix_s(modified)))
                        } else {
                            Err(BucketIndexError::corrupt(
                                &key,
                                format!("names block {} in directory {id}", meta.ulid),
                            ))
                        }
                    }),
                Err(e) => Err(e.into()),
            };
            (id, got)
        })
        .buffer_unordered(FETCH_CONCURRENCY)
        .collect()
        .await;
    for (id, got) in fetched {
        match got {
            Ok(block) => outcome.index.blocks.push(block),
            // Deleted between the listing and the read: gone, not corrupt.
            Err(BucketIndexError::Storage(e)) if e.is_not_found() => {}
            Err(BucketIndexError::Corrupt { message, key }) => {
                tracing::warn!(tenant, block = %id, %key, %message, "block left out of the bucket index");
                outcome.corrupted.push((id, message));
            }
            Err(e) => return Err(e),
        }
    }

    // Deletion marks of blocks still listed; a mark already in the previous index keeps its time.
    let listed_ids: BTreeSet<&str> = outcome
        .index
        .blocks
        .iter()
        .map(|b| b.block_id.as_str())
        .collect();
    let mut new_marks = Vec::new();
    for (id, listed) in &dirs {
        if !listed.deletion_mark || !listed_ids.contains(id.as_str()) {
            continue;
        }
        match previous.and_then(|p| p.deletion_mark(id)) {
            Some(mark) => outcome.index.block_deletion_marks.push(mark.clone()),
            None => new_marks.push(id.clone()),
        }
    }
    let read: Vec<(String, Result<Option<DeletionMark>>)> = futures::stream::iter(new_marks)
        .map(|id| async move {
            let got = marks::read::<DeletionMark>(bucket, tenant, &id).await;
            (id, got)
        })
        .buffer_unordered(FETCH_CONCURRENCY)
        .collect()
        .await;
    for (id, got) in read {
        match got {
            Ok(Some(mark)) => outcome.index.block_deletion_marks.push(IndexDeletionMark {
                block_id: id,
                deletion_time: mark.deletion_time,
            }),
            Ok(None) => {}
            // A mark that cannot be parsed still says "delete": keep the block marked as of now
            // rather than serve or compact it forever.
            Err(BucketIndexError::Corrupt { message, .. }) => {
                tracing::warn!(tenant, block = %id, %message, "corrupt deletion mark; treated as marked now");
                outcome.index.block_deletion_marks.push(IndexDeletionMark {
                    block_id: id,
                    deletion_time: now_s,
                });
            }
            Err(e) => return Err(e),
        }
    }
    outcome.index.sort();
    Ok(outcome)
}

/// A reader's view of a tenant's blocks.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub index: Index,
    /// `true` when read from `bucket-index.json.gz`, `false` when built by listing because the
    /// tenant has no index yet (no compactor has run for it).
    pub from_index: bool,
}

/// The tenant's blocks as a store-gateway or querier discovers them: the bucket index when
/// there is one, else a listing of the bucket (not written back: only the compactor writes).
pub async fn discover(bucket: &Bucket, tenant: &str) -> Result<Discovered> {
    if let Some(index) = Index::read(bucket, tenant).await? {
        return Ok(Discovered {
            index,
            from_index: true,
        });
    }
    let now = unix_s(SystemTime::now());
    let outcome = update_index(bucket, tenant, None, now).await?;
    Ok(Discovered {
        index: outcome.index,
        from_index: false,
    })
}

/// Lists the tenants that have an index or blocks: what a reader iterates over.
pub async fn tenants(bucket: &Bucket) -> Result<Vec<String>> {
    layout::list_tenants(bucket).await.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use norn_tsdb::block::meta::META_VERSION;
    use norn_tsdb::block::{BlockStats, Compaction};

    use super::*;
    use crate::marks::NoCompactMark;

    const A: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJK";
    const B: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJM";
    const C: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJN";

    fn meta(id: &str, min: i64) -> Bytes {
        let meta = BlockMeta {
            ulid: id.into(),
            min_time: min,
            max_time: min + 1000,
            stats: BlockStats::default(),
            compaction: Compaction {
                level: 1,
                sources: vec![id.into()],
                ..Default::default()
            },
            version: META_VERSION,
            thanos: None,
            extra: Default::default(),
        };
        Bytes::from(meta.to_json().unwrap())
    }

    #[tokio::test]
    async fn finds_blocks_partials_marks_and_corruption() {
        let bucket = Bucket::in_memory();
        bucket
            .put(&format!("t/{A}/index"), Bytes::from_static(b"i"))
            .await
            .unwrap();
        bucket
            .put(&layout::block_meta("t", A), meta(A, 0))
            .await
            .unwrap();
        bucket
            .put(&layout::block_meta("t", B), meta(B, 1000))
            .await
            .unwrap();
        bucket
            .put(&format!("t/{C}/chunks/000001"), Bytes::from_static(b"c"))
            .await
            .unwrap();
        marks::write(&bucket, "t", &DeletionMark::new(B, 77))
            .await
            .unwrap();
        marks::write(
            &bucket,
            "t",
            &NoCompactMark::new(A, 5, crate::NoCompactReason::Manual, String::new()),
        )
        .await
        .unwrap();

        let out = update_index(&bucket, "t", None, 100).await.unwrap();
        let ids: Vec<_> = out
            .index
            .blocks
            .iter()
            .map(|b| b.block_id.as_str())
            .collect();
        assert_eq!(ids, [A, B]);
        assert_eq!(out.index.deletion_mark(B).unwrap().deletion_time, 77);
        assert_eq!(out.partials.len(), 1);
        assert_eq!(out.partials[0].id, C);
        assert!(out.no_compact.contains(A));
        assert_eq!(out.metas_fetched, 2);

        // A second update re-reads nothing it already knows.
        bucket
            .put(
                &layout::block_meta("t", C),
                Bytes::from_static(b"{not json"),
            )
            .await
            .unwrap();
        let again = update_index(&bucket, "t", Some(&out.index), 200)
            .await
            .unwrap();
        assert_eq!(again.metas_fetched, 1);
        assert_eq!(again.corrupted.len(), 1);
        assert_eq!(again.corrupted[0].0, C);
        assert_eq!(again.index.blocks.len(), 2);
        assert_eq!(again.index.updated_at, 200);
    }

    #[tokio::test]
    async fn discover_prefers_the_index() {
        let bucket = Bucket::in_memory();
        bucket
            .put(&layout::block_meta("t", A), meta(A, 0))
            .await
            .unwrap();
        let listed = discover(&bucket, "t").await.unwrap();
        assert!(!listed.from_index);
        assert_eq!(listed.index.blocks.len(), 1);
        Index::empty(5).write(&bucket, "t").await.unwrap();
        let indexed = discover(&bucket, "t").await.unwrap();
        assert!(indexed.from_index);
        assert!(indexed.index.blocks.is_empty());
    }
}
