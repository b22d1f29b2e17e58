//! The block's files and the meta.json an imported block gets (see the `import_blocks` module
//! docs for what changes and what is kept).

use std::path::Path;

use norn_storage::layout::META_FILE;
use norn_tsdb::block::meta::{META_VERSION, THANOS_VERSION};
use norn_tsdb::block::writer::ORG_ID_LABEL;
use norn_tsdb::block::{
    BlockMeta, CHUNKS_DIRNAME, INDEX_FILENAME, TOMBSTONES_FILENAME, ThanosFile, ThanosMeta,
};

/// The `source` an imported block gets when it does not name one.
pub const IMPORT_SOURCE: &str = "import";

/// Refuses a `meta.json` whose version is not 1 with a clearer reason than "corrupt".
/// Everything else about meta.json is left to [`norn_tsdb::block::Block::open`].
pub fn check_meta_version(dir: &Path) -> Result<(), String> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("{}: missing (not a complete block)", path.display())
        }
        _ => format!("{}: cannot read: {e}", path.display()),
    })?;
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(version) = v.get("version").and_then(|v| v.as_u64())
        && version != u64::from(META_VERSION)
    {
        return Err(format!(
            "{}: meta.json version {version} is not supported (Norn imports version {META_VERSION}, Prometheus' block format)",
            path.display()
        ));
    }
    Ok(())
}

/// A file of a block other than meta.json, relative to the block directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFile {
    pub rel_path: String,
    pub size: u64,
}

/// The files uploaded besides meta.json: `index`, the chunk segments (`chunks/NNNNNN`) and
/// `tombstones` when present. Anything else in the directory (marks, editor leftovers) is
/// not part of the block and stays behind.
pub fn block_files(dir: &Path) -> Result<Vec<BlockFile>, String> {
    let size = |rel: &str| -> Result<u64, String> {
        let p = dir.join(rel);
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut out = vec![BlockFile {
        rel_path: INDEX_FILENAME.into(),
        size: size(INDEX_FILENAME)?,
    }];
    let chunks = dir.join(CHUNKS_DIRNAME);
    let mut segments: Vec<String> = std::fs::read_dir(&chunks)
        .map_err(|e| format!("{}: {e}", chunks.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    segments.sort();
    for s in segments {
        let rel = format!("{CHUNKS_DIRNAME}/{s}");
        out.push(BlockFile {
            size: size(&rel)?,
            rel_path: rel,
        });
    }
    if dir.join(TOMBSTONES_FILENAME).is_file() {
        out.push(BlockFile {
            rel_path: TOMBSTONES_FILENAME.into(),
            size: size(TOMBSTONES_FILENAME)?,
        });
    }
    Ok(out)
}

/// The meta.json an imported block gets (see the module docs), and the `__org_id__` it had
/// before when that was another tenant.
pub fn import_meta(
    meta: &BlockMeta,
    tenant: &str,
    files: &[BlockFile],
) -> (BlockMeta, Option<String>) {
    let mut m = meta.clone();
    let t = m.thanos.get_or_insert_with(ThanosMeta::default);
    if t.version == 0 {
        t.version = THANOS_VERSION;
    }
    let replaced = t
        .labels
        .insert(ORG_ID_LABEL.to_string(), tenant.to_string())
        .filter(|old| old != tenant);
    if t.source.is_empty() {
        t.source = IMPORT_SOURCE.to_string();
    }
    t.downsample.resolution = 0;
    if t.files.is_empty() {
        // As Norn's writer lists them: chunk segments and index with sizes, meta.json without.
        let mut listed: Vec<ThanosFile> = files
            .iter()
            .filter(|f| f.rel_path != TOMBSTONES_FILENAME)
            .map(|f| ThanosFile {
                rel_path: f.rel_path.clone(),
                size_bytes: f.size,
            })
            .chain([ThanosFile {
                rel_path: META_FILE.to_string(),
                size_bytes: 0,
            }])
            .collect();
        listed.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        t.files = listed;
        if t.segment_files.is_empty() {
            t.segment_files = files
                .iter()
                .filter_map(|f| f.rel_path.strip_prefix(&format!("{CHUNKS_DIRNAME}/")))
                .map(str::to_owned)
                .collect();
        }
    }
    (m, replaced)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(thanos: Option<ThanosMeta>) -> BlockMeta {
        let mut extra = BTreeMap::new();
        extra.insert("future_key".to_string(), serde_json::json!({"x": 1}));
        BlockMeta {
            ulid: "01M827DMG4XHMT31HS5KJK0VWH".into(),
            min_time: 0,
            max_time: 7_200_000,
            stats: Default::default(),
            compaction: Default::default(),
            version: 1,
            thanos,
            extra,
        }
    }

    fn files() -> Vec<BlockFile> {
        vec![
            BlockFile {
                rel_path: "index".into(),
                size: 500,
            },
            BlockFile {
                rel_path: "chunks/000001".into(),
                size: 900,
            },
            BlockFile {
                rel_path: "tombstones".into(),
                size: 9,
            },
        ]
    }

    #[test]
    fn prometheus_block_gets_a_thanos_section() {
        let (m, replaced) = import_meta(&meta(None), "team-a", &files());
        assert_eq!(replaced, None);
        let t = m.thanos.as_ref().unwrap();
        assert_eq!(t.version, THANOS_VERSION);
        assert_eq!(
            t.labels.get(ORG_ID_LABEL).map(String::as_str),
            Some("team-a")
        );
        assert_eq!(t.labels.len(), 1);
        assert_eq!(t.source, IMPORT_SOURCE);
        assert_eq!(t.downsample.resolution, 0);
        let listed: Vec<(&str, u64)> = t
            .files
            .iter()
            .map(|f| (f.rel_path.as_str(), f.size_bytes))
            .collect();
        assert_eq!(
            listed,
            [("chunks/000001", 900), ("index", 500), ("meta.json", 0)]
        );
        assert_eq!(t.segment_files, ["000001"]);
        assert!(m.extra.contains_key("future_key"), "unknown keys are kept");
        // It is still a valid meta.json.
        BlockMeta::from_json(&m.to_json().unwrap(), Path::new("meta.json")).unwrap();
    }

    #[test]
    fn thanos_block_keeps_labels_source_and_file_list() {
        let mut labels = BTreeMap::new();
        labels.insert("cluster".to_string(), "eu-1".to_string());
        labels.insert(ORG_ID_LABEL.to_string(), "someone-else".to_string());
        let mut extra = BTreeMap::new();
        extra.insert("index_stats".to_string(), serde_json::json!({}));
        let thanos = ThanosMeta {
            version: 1,
            labels,
            source: "sidecar".into(),
            files: vec![ThanosFile {
                rel_path: "index".into(),
                size_bytes: 1,
            }],
            extra,
            ..ThanosMeta::default()
        };
        let (m, replaced) = import_meta(&meta(Some(thanos)), "team-a", &files());
        assert_eq!(replaced.as_deref(), Some("someone-else"));
        let t = m.thanos.unwrap();
        assert_eq!(t.labels["cluster"], "eu-1");
        assert_eq!(t.labels[ORG_ID_LABEL], "team-a");
        assert_eq!(t.source, "sidecar", "an existing producer is kept");
        assert_eq!(t.files.len(), 1, "an existing file list is kept");
        assert!(t.segment_files.is_empty());
        assert!(t.extra.contains_key("index_stats"));
        // Same tenant again: nothing reported as replaced.
        let (again, replaced) = import_meta(&meta(Some(t.clone())), "team-a", &files());
        assert_eq!(replaced, None);
        assert_eq!(again.thanos.unwrap(), t);
    }
}
