//! Where things live in the bucket (Mimir's / Thanos' layout):
//!
//! ```text
//! <tenant>/<block ULID>/meta.json, index, chunks/000001, …
//! <tenant>/<block ULID>/deletion-mark.json
//! <tenant>/markers/…
//! <tenant>/bucket-index.json.gz
//! rules/<tenant>/…
//! ```
//!
//! A block directory without `meta.json` is an upload in progress (or one that failed):
//! `meta.json` is always uploaded last ([`crate::Bucket::upload_dir`] with `last`).

use std::collections::BTreeMap;

use crate::bucket::Bucket;
use crate::error::Result;

/// A block's metadata file, uploaded last: its presence makes the block visible.
pub const META_FILE: &str = "meta.json";
/// A block's deletion mark file (inside the block directory, as Thanos/Mimir place it).
pub const DELETION_MARK_FILE: &str = "deletion-mark.json";
/// The per-tenant markers directory.
pub const MARKERS_DIR: &str = "markers";
/// The per-tenant bucket index.
pub const BUCKET_INDEX_FILE: &str = "bucket-index.json.gz";
/// The top-level directory of rule groups; never a tenant.
pub const RULES_DIR: &str = "rules";
/// Every top-level name of the bucket that is not a tenant. Each is refused as a tenant id by
/// `TenantId::new` (a test checks), so no tenant's blocks can land in one.
pub const RESERVED_TOP_LEVEL: &[&str] = &[RULES_DIR];

/// `<tenant>/<ulid>`: a block's directory.
pub fn block_prefix(tenant: &str, ulid: &str) -> String {
    format!("{tenant}/{ulid}")
}

/// `<tenant>/<ulid>/<rel>`: a file of a block (`meta.json`, `index`, `chunks/000001`).
pub fn block_file(tenant: &str, ulid: &str, rel: &str) -> String {
    format!("{tenant}/{ulid}/{rel}")
}

/// `<tenant>/<ulid>/meta.json`.
pub fn block_meta(tenant: &str, ulid: &str) -> String {
    block_file(tenant, ulid, META_FILE)
}

/// `<tenant>/markers`.
pub fn markers_prefix(tenant: &str) -> String {
    format!("{tenant}/{MARKERS_DIR}")
}

/// `<tenant>/<ulid>/deletion-mark.json`.
pub fn deletion_mark(tenant: &str, ulid: &str) -> String {
    block_file(tenant, ulid, DELETION_MARK_FILE)
}

/// `<tenant>/bucket-index.json.gz`.
pub fn bucket_index(tenant: &str) -> String {
    format!("{tenant}/{BUCKET_INDEX_FILE}")
}

/// `rules/<tenant>`.
pub fn rules_prefix(tenant: &str) -> String {
    format!("{RULES_DIR}/{tenant}")
}

/// Whether `name` is a ULID as block directories are named: 26 characters of Crockford
/// base32 (upper case, no I, L, O, U), the first at most `7` (128 bits).
pub fn is_block_id(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 26
        && bytes[0] <= b'7'
        && bytes
            .iter()
            .all(|&b| matches!(b, b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z'))
}

/// Tenants that have anything in the bucket: the top-level directories that are valid tenant
/// ids (so not `rules` nor any other reserved name).
pub async fn list_tenants(bucket: &Bucket) -> Result<Vec<String>> {
    let mut dirs = bucket.list_dirs("").await?;
    dirs.retain(|d| norn_model::TenantId::new(d).is_ok());
    Ok(dirs)
}

/// The complete blocks of `tenant` (ULID directories with a `meta.json`), sorted.
pub async fn list_blocks(bucket: &Bucket, tenant: &str) -> Result<Vec<String>> {
    Ok(scan_blocks(bucket, tenant).await?.0)
}

/// The ULID directories of `tenant` without a `meta.json`: uploads in progress, or failed
/// ones the compactor eventually cleans up. Sorted.
pub async fn list_partial_blocks(bucket: &Bucket, tenant: &str) -> Result<Vec<String>> {
    Ok(scan_blocks(bucket, tenant).await?.1)
}

/// (complete, partial) block ULIDs of `tenant`, from one recursive listing.
async fn scan_blocks(bucket: &Bucket, tenant: &str) -> Result<(Vec<String>, Vec<String>)> {
    // ULID -> has meta.json
    let mut ids: BTreeMap<String, bool> = BTreeMap::new();
    for object in bucket.list(tenant).await? {
        let Some(rest) = object
            .key
            .strip_prefix(tenant)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let Some((dir, file)) = rest.split_once('/') else {
            continue; // a file at the tenant's top level (bucket index)
        };
        if is_block_id(dir) {
            *ids.entry(dir.to_owned()).or_default() |= file == META_FILE;
        }
    }
    let (complete, partial): (Vec<_>, Vec<_>) = ids.into_iter().partition(|(_, meta)| *meta);
    Ok((
        complete.into_iter().map(|(id, _)| id).collect(),
        partial.into_iter().map(|(id, _)| id).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const A: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJK";
    const B: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJM";
    const C: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJN";

    #[test]
    fn paths() {
        assert_eq!(block_prefix("t1", A), format!("t1/{A}"));
        assert_eq!(
            block_file("t1", A, "chunks/000001"),
            format!("t1/{A}/chunks/000001")
        );
        assert_eq!(block_meta("t1", A), format!("t1/{A}/meta.json"));
        assert_eq!(markers_prefix("t1"), "t1/markers");
        assert_eq!(deletion_mark("t1", A), format!("t1/{A}/deletion-mark.json"));
        assert_eq!(bucket_index("t1"), "t1/bucket-index.json.gz");
        assert_eq!(rules_prefix("t1"), "rules/t1");
    }

    /// A tenant named like a top-level directory would ship its blocks into it and vanish
    /// from `list_tenants`: every such name must be refused as a tenant id.
    #[test]
    fn top_level_names_are_reserved_tenant_ids() {
        for name in RESERVED_TOP_LEVEL {
            assert!(
                norn_model::TenantId::new(name).is_err(),
                "{name:?} is a top-level bucket name but a valid tenant id"
            );
        }
        assert!(RESERVED_TOP_LEVEL.contains(&RULES_DIR));
    }

    #[test]
    fn block_ids() {
        assert!(is_block_id(A));
        assert!(is_block_id("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
        assert!(!is_block_id("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"), "over 128 bits");
        assert!(!is_block_id("01HQ3Z5V6W7X8Y9ZABCDEFGHJ"), "25 chars");
        assert!(!is_block_id("01hq3z5v6w7x8y9zabcdefghjk"), "lower case");
        assert!(
            !is_block_id("01HQ3Z5V6W7X8Y9ZABCDEFGHIK"),
            "I is not Crockford"
        );
        assert!(!is_block_id("markers"));
        assert!(!is_block_id(""));
    }

    #[tokio::test]
    async fn lists_tenants_and_blocks() {
        let bucket = Bucket::in_memory();
        let put = |key: String| {
            let bucket = bucket.clone();
            async move { bucket.put(&key, Bytes::from_static(b"x")).await.unwrap() }
        };
        // Two complete blocks, one partial one, a non-ULID dir, markers and the index.
        for id in [A, C] {
            put(block_file("t1", id, "index")).await;
            put(block_file("t1", id, "chunks/000001")).await;
            put(block_meta("t1", id)).await;
        }
        put(block_file("t1", B, "index")).await;
        put(block_file("t1", B, "chunks/000001")).await;
        put(format!("t1/not-a-block/{META_FILE}")).await;
        put(format!("{}/{A}-deletion-mark.json", markers_prefix("t1"))).await;
        put(bucket_index("t1")).await;
        put(block_meta("t2", B)).await;
        put(format!("{}/group.yaml", rules_prefix("t1"))).await;

        assert_eq!(list_tenants(&bucket).await.unwrap(), ["t1", "t2"]);
        assert_eq!(list_blocks(&bucket, "t1").await.unwrap(), [A, C]);
        assert_eq!(list_partial_blocks(&bucket, "t1").await.unwrap(), [B]);
        assert_eq!(list_blocks(&bucket, "t2").await.unwrap(), [B]);
        assert!(list_partial_blocks(&bucket, "t2").await.unwrap().is_empty());
        assert!(list_blocks(&bucket, "nobody").await.unwrap().is_empty());

        // Finishing the partial upload makes it a block.
        put(block_meta("t1", B)).await;
        assert_eq!(list_blocks(&bucket, "t1").await.unwrap(), [A, B, C]);
        assert!(list_partial_blocks(&bucket, "t1").await.unwrap().is_empty());
    }
}
