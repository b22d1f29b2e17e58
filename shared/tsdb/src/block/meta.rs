//! `meta.json`: block id, time range, stats, compaction lineage and the Thanos section that
//! Thanos and Mimir tooling (bucket index, compactor, store-gateway) rely on (spec §2).
//!
//! Written the way Go's `json.MarshalIndent(meta, "", "\t")` writes it: tab indentation,
//! zero-valued stats and empty optional fields omitted, map keys sorted. Unknown keys are
//! ignored on read but kept (`extra`), so rewriting a meta file from another tool does not
//! drop its extensions.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::ulid::Ulid;
use crate::error::{Result, TsdbError};

/// The only `meta.json` version Prometheus reads and writes.
pub const META_VERSION: u32 = 1;
/// The only Thanos-section version there is.
pub const THANOS_VERSION: u32 = 1;

/// Parsed `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub ulid: String,
    /// First millisecond covered (inclusive).
    #[serde(rename = "minTime")]
    pub min_time: i64,
    /// End of the covered range (exclusive, as Prometheus).
    #[serde(rename = "maxTime")]
    pub max_time: i64,
    #[serde(default)]
    pub stats: BlockStats,
    #[serde(default)]
    pub compaction: Compaction,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thanos: Option<ThanosMeta>,
    /// Keys this code does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Block statistics; Go omits each zero field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    #[serde(rename = "numSamples", default, skip_serializing_if = "is_zero")]
    pub num_samples: u64,
    #[serde(rename = "numSeries", default, skip_serializing_if = "is_zero")]
    pub num_series: u64,
    #[serde(rename = "numChunks", default, skip_serializing_if = "is_zero")]
    pub num_chunks: u64,
    #[serde(rename = "numTombstones", default, skip_serializing_if = "is_zero")]
    pub num_tombstones: u64,
    #[serde(rename = "numFloatSamples", default, skip_serializing_if = "is_zero")]
    pub num_float_samples: u64,
    #[serde(
        rename = "numHistogramSamples",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub num_histogram_samples: u64,
}

/// A direct input of a compacted block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDesc {
    pub ulid: String,
    #[serde(rename = "minTime")]
    pub min_time: i64,
    #[serde(rename = "maxTime")]
    pub max_time: i64,
}

/// Compaction lineage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    pub level: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<BlockDesc>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deletable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

/// Thanos' extension of `meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThanosMeta {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub version: u32,
    /// External labels (tenant, replica, …). `null` reads as empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub downsample: ThanosDownsample,
    /// Who produced the block: `receive`, `compactor`, `sidecar`, …
    #[serde(default)]
    pub source: String,
    /// Deprecated list of `chunks/` file names; still read by older Thanos.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment_files: Vec<String>,
    /// Every file of the block with its size, sorted by path (meta.json listed without size).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ThanosFile>,
    /// Keys this code does not know (rewrites, index_stats, extensions, …), kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Downsampling resolution in ms (0 = raw).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThanosDownsample {
    pub resolution: i64,
}

/// One entry of `thanos.files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThanosFile {
    pub rel_path: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

impl BlockMeta {
    /// Serialises like Go's `json.MarshalIndent(meta, "", "\t")` (no trailing newline).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .map_err(|e| TsdbError::InvalidOption(format!("meta.json does not serialise: {e}")))?;
        Ok(out)
    }

    /// Parses and validates `meta.json` bytes; `path` only names the file in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |msg: String| TsdbError::Corrupt {
            path: path.to_path_buf(),
            msg,
        };
        let meta: BlockMeta =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
        if meta.version != META_VERSION {
            return Err(corrupt(format!(
                "unsupported meta version {} (want {META_VERSION})",
                meta.version
            )));
        }
        meta.ulid
            .parse::<Ulid>()
            .map_err(|e| corrupt(e.to_string()))?;
        if meta.min_time > meta.max_time {
            return Err(corrupt(format!(
                "minTime {} is after maxTime {}",
                meta.min_time, meta.max_time
            )));
        }
        if let Some(t) = &meta.thanos
            && t.version > THANOS_VERSION
        {
            return Err(corrupt(format!(
                "unsupported thanos section version {}",
                t.version
            )));
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// meta.json written by promtool 2.42 (spec §2), byte for byte.
    const PROMTOOL_META: &str = "{\n\t\"ulid\": \"01M827DMG4XHMT31HS5KJK0VWH\",\n\t\"minTime\": 1000,\n\t\"maxTime\": 3001,\n\t\"stats\": {\n\t\t\"numSamples\": 3,\n\t\t\"numSeries\": 1,\n\t\t\"numChunks\": 1\n\t},\n\t\"compaction\": {\n\t\t\"level\": 1,\n\t\t\"sources\": [\n\t\t\t\"01M827DMG4XHMT31HS5KJK0VWH\"\n\t\t]\n\t},\n\t\"version\": 1\n}";

    #[test]
    fn promtool_meta_round_trips_byte_for_byte() {
        let meta = BlockMeta::from_json(PROMTOOL_META.as_bytes(), Path::new("meta.json")).unwrap();
        assert_eq!(meta.min_time, 1000);
        assert_eq!(meta.max_time, 3001);
        assert_eq!(meta.stats.num_samples, 3);
        assert_eq!(meta.compaction.sources, vec![meta.ulid.clone()]);
        assert_eq!(
            String::from_utf8(meta.to_json().unwrap()).unwrap(),
            PROMTOOL_META
        );
    }

    #[test]
    fn thanos_section_reads_null_labels_and_keeps_unknown_keys() {
        let json = r#"{"ulid":"01M827DMG4XHMT31HS5KJK0VWH","minTime":0,"maxTime":7200000,
            "stats":{},"compaction":{"level":2},"version":1,"future":true,
            "thanos":{"labels":null,"downsample":{"resolution":0},"source":"receive",
            "index_stats":{},"upload_time":"0001-01-01T00:00:00Z"}}"#;
        let meta = BlockMeta::from_json(json.as_bytes(), Path::new("m")).unwrap();
        let t = meta.thanos.as_ref().unwrap();
        assert!(t.labels.is_empty());
        assert_eq!(t.source, "receive");
        assert!(t.extra.contains_key("index_stats"));
        assert!(meta.extra.contains_key("future"));
        let again = BlockMeta::from_json(&meta.to_json().unwrap(), Path::new("m")).unwrap();
        assert_eq!(again, meta);
    }

    #[test]
    fn bad_meta_is_rejected_with_the_reason() {
        let cases = [
            ("{", "invalid JSON"),
            (
                r#"{"ulid":"01M827DMG4XHMT31HS5KJK0VWH","minTime":0,"maxTime":1,"version":2}"#,
                "version",
            ),
            (
                r#"{"ulid":"nope","minTime":0,"maxTime":1,"version":1}"#,
                "ULID",
            ),
            (
                r#"{"ulid":"01M827DMG4XHMT31HS5KJK0VWH","minTime":5,"maxTime":1,"version":1}"#,
                "after",
            ),
            (
                r#"{"ulid":"01M827DMG4XHMT31HS5KJK0VWH","maxTime":1,"version":1}"#,
                "minTime",
            ),
        ];
        for (json, want) in cases {
            let err = BlockMeta::from_json(json.as_bytes(), Path::new("b/meta.json")).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("b/meta.json") && msg.contains(want),
                "{json}: {msg}"
            );
        }
    }
}
