//! Block marks: `deletion-mark.json` (delete after the deletion delay) and
//! `no-compact-mark.json` (never compact this block again; why, and since when).
//!
//! A mark is written to two places: inside the block directory, where Thanos and Prometheus
//! tooling look, and as `<tenant>/markers/<ulid>-<mark file>`, Mimir's global markers, so the
//! bucket-index updater finds every mark of a tenant with one listing of one directory. The
//! global copy is written second: a crash between the two leaves the block-local mark, which
//! the updater also honours.

use norn_storage::{Bucket, layout};
use serde::{Deserialize, Serialize};

use crate::error::{BucketIndexError, Result};

/// The only mark version there is.
pub const MARK_VERSION: u32 = 1;
/// A block's deletion mark file.
pub const DELETION_MARK_FILE: &str = layout::DELETION_MARK_FILE;
/// A block's no-compact mark file.
pub const NO_COMPACT_MARK_FILE: &str = "no-compact-mark.json";

/// `deletion-mark.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionMark {
    pub id: String,
    /// When the block was marked, Unix seconds.
    pub deletion_time: i64,
    pub version: u32,
}

/// Why a block must not be compacted. Serialised as Mimir's reason strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoCompactReason {
    /// An operator marked it (`norn tools bucket mark`).
    Manual,
    /// The index holds chunks out of order (Prometheus' known corruption).
    BlockIndexOutOfOrderChunk,
    /// The block cannot be read or fails verification.
    Critical,
    /// A reason written by another tool.
    #[serde(untagged)]
    Other(String),
}

/// `no-compact-mark.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoCompactMark {
    pub id: String,
    pub version: u32,
    /// When the block was marked, Unix seconds.
    pub no_compact_time: i64,
    pub reason: NoCompactReason,
    /// What was wrong, for the operator.
    #[serde(default)]
    pub details: String,
}

/// The two kinds of marks.
pub trait Mark: Serialize + for<'de> Deserialize<'de> {
    /// The file name inside a block directory.
    const FILE: &'static str;
    /// The block the mark is for.
    fn block_id(&self) -> &str;
}

impl Mark for DeletionMark {
    const FILE: &'static str = DELETION_MARK_FILE;
    fn block_id(&self) -> &str {
        &self.id
    }
}

impl Mark for NoCompactMark {
    const FILE: &'static str = NO_COMPACT_MARK_FILE;
    fn block_id(&self) -> &str {
        &self.id
    }
}

impl DeletionMark {
    pub fn new(block_id: &str, now_s: i64) -> Self {
        DeletionMark {
            id: block_id.to_owned(),
            deletion_time: now_s,
            version: MARK_VERSION,
        }
    }
}

impl NoCompactMark {
    pub fn new(block_id: &str, now_s: i64, reason: NoCompactReason, details: String) -> Self {
        NoCompactMark {
            id: block_id.to_owned(),
            version: MARK_VERSION,
            no_compact_time: now_s,
            reason,
            details,
        }
    }
}

/// `<tenant>/markers/<ulid>-<file>`: the global copy of a mark.
pub fn global_mark_key(tenant: &str, block_id: &str, file: &str) -> String {
    format!("{}/{block_id}-{file}", layout::markers_prefix(tenant))
}

/// The block id and mark file of a key under `<tenant>/markers/`, if it is a known mark.
pub fn parse_global_mark_name(name: &str) -> Option<(&str, &str)> {
    let (id, file) = name.split_at_checked(26)?;
    let file = file.strip_prefix('-')?;
    (layout::is_block_id(id) && (file == DELETION_MARK_FILE || file == NO_COMPACT_MARK_FILE))
        .then_some((id, file))
}

/// Writes `mark` for `tenant`'s block, in the block directory and then globally.
pub async fn write<M: Mark>(bucket: &Bucket, tenant: &str, mark: &M) -> Result<()> {
    let id = mark.block_id();
    let body =
        serde_json::to_vec_pretty(mark).map_err(|e| BucketIndexError::corrupt(M::FILE, e))?;
    bucket
        .put(
            &layout::block_file(tenant, id, M::FILE),
            body.clone().into(),
        )
        .await?;
    bucket
        .put(&global_mark_key(tenant, id, M::FILE), body.into())
        .await?;
    Ok(())
}

/// Reads `tenant`'s mark of kind `M` for `block_id`: the global copy, else the block-local one.
pub async fn read<M: Mark>(bucket: &Bucket, tenant: &str, block_id: &str) -> Result<Option<M>> {
    for key in [
        global_mark_key(tenant, block_id, M::FILE),
        layout::block_file(tenant, block_id, M::FILE),
    ] {
        match bucket.get(&key).await {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| BucketIndexError::corrupt(&key, e));
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Removes `tenant`'s mark of kind `M` for `block_id` from both places (the global copy
/// first, so a crash in between leaves the block-local mark the updater still honours).
pub async fn remove<M: Mark>(bucket: &Bucket, tenant: &str, block_id: &str) -> Result<()> {
    bucket
        .delete(&global_mark_key(tenant, block_id, M::FILE))
        .await?;
    bucket
        .delete(&layout::block_file(tenant, block_id, M::FILE))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJK";

    #[test]
    fn mark_json_is_mimirs() {
        let d = serde_json::to_value(DeletionMark::new(ID, 100)).unwrap();
        assert_eq!(
            d,
            serde_json::json!({"id": ID, "deletion_time": 100, "version": 1})
        );
        let n = NoCompactMark::new(
            ID,
            5,
            NoCompactReason::BlockIndexOutOfOrderChunk,
            "x".into(),
        );
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["reason"], "block-index-out-of-order-chunk");
        let other: NoCompactMark = serde_json::from_value(serde_json::json!(
            {"id": ID, "version": 1, "no_compact_time": 1, "reason": "someone-elses"}))
        .unwrap();
        assert_eq!(other.reason, NoCompactReason::Other("someone-elses".into()));
    }

    #[test]
    fn global_mark_names_parse() {
        let key = global_mark_key("t", ID, NO_COMPACT_MARK_FILE);
        assert_eq!(key, format!("t/markers/{ID}-no-compact-mark.json"));
        let name = key.rsplit('/').next().unwrap();
        assert_eq!(
            parse_global_mark_name(name),
            Some((ID, NO_COMPACT_MARK_FILE))
        );
        assert_eq!(parse_global_mark_name("short"), None);
        assert_eq!(parse_global_mark_name(&format!("{ID}-other.json")), None);
    }

    #[tokio::test]
    async fn write_read_remove() {
        let bucket = Bucket::in_memory();
        assert!(
            read::<DeletionMark>(&bucket, "t", ID)
                .await
                .unwrap()
                .is_none()
        );
        write(&bucket, "t", &DeletionMark::new(ID, 42))
            .await
            .unwrap();
        let got: DeletionMark = read(&bucket, "t", ID).await.unwrap().unwrap();
        assert_eq!(got.deletion_time, 42);
        assert!(
            bucket
                .exists(&layout::deletion_mark("t", ID))
                .await
                .unwrap()
        );
        remove::<DeletionMark>(&bucket, "t", ID).await.unwrap();
        assert!(
            read::<DeletionMark>(&bucket, "t", ID)
                .await
                .unwrap()
                .is_none()
        );
    }
}
