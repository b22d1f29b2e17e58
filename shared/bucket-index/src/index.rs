//! `<tenant>/bucket-index.json.gz`: Mimir's bucket index format.
//!
//! Field names and units follow Mimir (times of blocks in milliseconds, `uploaded_at`,
//! `deletion_time` and `updated_at` in Unix seconds), so Mimir's tools read Norn's index and
//! the reverse. Partial blocks (no `meta.json`) are never listed. Blocks marked for deletion
//! are listed, with their mark in `block_deletion_marks`: a reader still serves them until the
//! deletion delay passes, so queriers holding an older list never see a hole.

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use norn_storage::{Bucket, layout};
use norn_tsdb::block::BlockMeta;
use serde::{Deserialize, Serialize};

use crate::error::{BucketIndexError, Result};

/// The version written: Mimir's version 2 (version 1 plus `compactor_shard_id`).
pub const INDEX_VERSION: u32 = 2;
/// `segments_format` of blocks whose chunk files are `000001`, `000002`, … (all of Norn's and
/// Prometheus').
pub const SEGMENTS_FORMAT_1B6D: &str = "1b6d";
/// Bound on the decompressed index: ~100 bytes per block, so room for millions of blocks, and a
/// gzip bomb in the bucket cannot exhaust memory.
const MAX_DECOMPRESSED: u64 = 512 << 20;
/// The label Mimir's split compactor puts in a block's Thanos labels.
pub const COMPACTOR_SHARD_ID_LABEL: &str = "__compactor_shard_id__";

/// A tenant's bucket index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    /// Every complete block, sorted by `min_time` then id.
    #[serde(default)]
    pub blocks: Vec<IndexBlock>,
    /// The deletion marks of blocks still in `blocks` (or just deleted), sorted by id.
    #[serde(default)]
    pub block_deletion_marks: Vec<IndexDeletionMark>,
    /// When the index was built, Unix seconds.
    pub updated_at: i64,
}

/// One complete block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlock {
    pub block_id: String,
    /// First millisecond covered (inclusive).
    pub min_time: i64,
    /// End of the range (exclusive).
    pub max_time: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub segments_format: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub segments_num: u32,
    /// When `meta.json` was uploaded, Unix seconds.
    pub uploaded_at: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compactor_shard_id: String,
    /// Who wrote the block (`ingester`, `compactor`, …), from the Thanos section.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Norn's addition (Mimir ignores unknown keys): the compaction level, so a planner can
    /// work from the index alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compaction_level: u32,
}

/// A block's deletion mark as the index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDeletionMark {
    pub block_id: String,
    /// When the block was marked, Unix seconds.
    pub deletion_time: i64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl IndexBlock {
    /// The index entry of a block from its `meta.json`, uploaded at `uploaded_at` (Unix s).
    pub fn from_meta(meta: &BlockMeta, uploaded_at: i64) -> Self {
        let (segments_format, segments_num, shard, source) = match &meta.thanos {
            Some(t) => {
                let numbered = !t.segment_files.is_empty()
                    && t.segment_files
                        .iter()
                        .enumerate()
                        .all(|(i, f)| *f == format!("{:06}", i + 1));
                (
                    if numbered {
                        SEGMENTS_FORMAT_1B6D.to_owned()
                    } else {
                        String::new()
                    },
                    if numbered {
                        t.segment_files.len() as u32
                    } else {
                        0
                    },
                    t.labels
                        .get(COMPACTOR_SHARD_ID_LABEL)
                        .cloned()
                        .unwrap_or_default(),
                    t.source.clone(),
                )
            }
            None => Default::default(),
        };
        IndexBlock {
            block_id: meta.ulid.clone(),
            min_time: meta.min_time,
            max_time: meta.max_time,
            segments_format,
            segments_num,
            uploaded_at,
            compactor_shard_id: shard,
            source,
            compaction_level: meta.compaction.level,
        }
    }

    /// Whether the block holds any millisecond of `[mint, maxt]` (both inclusive).
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.min_time <= maxt && mint < self.max_time
    }
}

impl Index {
    /// An empty index built at `updated_at` (Unix s).
    pub fn empty(updated_at: i64) -> Self {
        Index {
            version: INDEX_VERSION,
            blocks: Vec::new(),
            block_deletion_marks: Vec::new(),
            updated_at,
        }
    }

    /// The deletion mark of `block_id`, if it has one.
    pub fn deletion_mark(&self, block_id: &str) -> Option<&IndexDeletionMark> {
        self.block_deletion_marks
            .binary_search_by(|m| m.block_id.as_str().cmp(block_id))
            .ok()
            .map(|i| &self.block_deletion_marks[i])
    }

    /// The block `block_id`, if listed.
    pub fn block(&self, block_id: &str) -> Option<&IndexBlock> {
        self.blocks.iter().find(|b| b.block_id == block_id)
    }

    /// Puts blocks and marks in the order the format promises.
    pub fn sort(&mut self) {
        self.blocks
            .sort_by(|a, b| (a.min_time, &a.block_id).cmp(&(b.min_time, &b.block_id)));
        self.block_deletion_marks
            .sort_by(|a, b| a.block_id.cmp(&b.block_id));
    }

    /// The gzip-compressed JSON written to the bucket.
    pub fn encode(&self) -> Result<Bytes> {
        let json = serde_json::to_vec(self)
            .map_err(|e| BucketIndexError::corrupt("bucket-index.json.gz", e))?;
        let mut gz = GzEncoder::new(
            Vec::with_capacity(json.len() / 4 + 64),
            Compression::default(),
        );
        gz.write_all(&json)
            .and_then(|()| gz.finish())
            .map(Bytes::from)
            .map_err(|e| BucketIndexError::corrupt("bucket-index.json.gz", e))
    }

    /// Decodes what [`Index::encode`] wrote (or Mimir's); `key` names the object in errors.
    pub fn decode(bytes: &[u8], key: &str) -> Result<Self> {
        let mut json = Vec::new();
        GzDecoder::new(bytes)
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(&mut json)
            .map_err(|e| BucketIndexError::corrupt(key, format!("not gzip: {e}")))?;
        if json.len() as u64 > MAX_DECOMPRESSED {
            return Err(BucketIndexError::corrupt(
                key,
                format!("larger than {MAX_DECOMPRESSED} bytes decompressed"),
            ));
        }
        let mut index: Index = serde_json::from_slice(&json)
            .map_err(|e| BucketIndexError::corrupt(key, format!("invalid JSON: {e}")))?;
        if !(1..=INDEX_VERSION).contains(&index.version) {
            return Err(BucketIndexError::corrupt(
                key,
                format!("unsupported version {}", index.version),
            ));
        }
        index.sort();
        Ok(index)
    }

    /// Reads `tenant`'s index; `None` when it has none yet.
    pub async fn read(bucket: &Bucket, tenant: &str) -> Result<Option<Self>> {
        let key = layout::bucket_index(tenant);
        match bucket.get(&key).await {
            Ok(bytes) => Self::decode(&bytes, &key).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `tenant`'s index (one PUT: readers see the old or the new one whole).
    pub async fn write(&self, bucket: &Bucket, tenant: &str) -> Result<()> {
        bucket
            .put(&layout::bucket_index(tenant), self.encode()?)
            .await?;
        Ok(())
    }

    /// Deletes `tenant`'s index (a tenant with no blocks left).
    pub async fn delete(bucket: &Bucket, tenant: &str) -> Result<()> {
        bucket.delete(&layout::bucket_index(tenant)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str, min: i64) -> IndexBlock {
        IndexBlock {
            block_id: id.into(),
            min_time: min,
            max_time: min + 7_200_000,
            segments_format: SEGMENTS_FORMAT_1B6D.into(),
            segments_num: 1,
            uploaded_at: 1_700_000_000,
            compactor_shard_id: String::new(),
            source: "ingester".into(),
            compaction_level: 1,
        }
    }

    #[test]
    fn round_trips_and_sorts() {
        let mut index = Index::empty(1_700_000_100);
        index.blocks = vec![block("01B", 7_200_000), block("01A", 0)];
        index.block_deletion_marks = vec![IndexDeletionMark {
            block_id: "01A".into(),
            deletion_time: 1_700_000_050,
        }];
        let decoded = Index::decode(&index.encode().unwrap(), "k").unwrap();
        assert_eq!(decoded.blocks[0].block_id, "01A");
        assert_eq!(decoded.blocks[1].block_id, "01B");
        assert_eq!(
            decoded.deletion_mark("01A").unwrap().deletion_time,
            1_700_000_050
        );
        assert!(decoded.deletion_mark("01B").is_none());
    }

    #[test]
    fn reads_mimirs_json() {
        // The shape Mimir writes: optional fields absent, unknown ones present.
        let json = br#"{"version":1,"blocks":[{"block_id":"01FXYZ","min_time":10,"max_time":20,
            "uploaded_at":5,"segments_format":"1b6d","segments_num":2,"future":1}],
            "block_deletion_marks":[],"updated_at":7}"#;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(json).unwrap();
        let index = Index::decode(&gz.finish().unwrap(), "k").unwrap();
        assert_eq!(index.blocks[0].segments_num, 2);
        assert_eq!(index.blocks[0].compaction_level, 0);
        assert_eq!(index.updated_at, 7);
    }

    #[test]
    fn refuses_garbage_and_unknown_versions() {
        assert!(matches!(
            Index::decode(b"not gzip", "k"),
            Err(BucketIndexError::Corrupt { .. })
        ));
        let mut v9 = Index::empty(1);
        v9.version = 9;
        let bytes = v9.encode().unwrap();
        let err = Index::decode(&bytes, "k").unwrap_err().to_string();
        assert!(err.contains("unsupported version 9"), "{err}");
    }

    #[test]
    fn overlap_is_half_open_on_max_time() {
        let b = block("01A", 0);
        assert!(b.overlaps(0, 0));
        assert!(b.overlaps(7_199_999, 9_000_000));
        assert!(!b.overlaps(7_200_000, 9_000_000));
    }
}
