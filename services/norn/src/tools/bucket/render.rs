//! How `ls` and `inspect` print blocks: a table for people, JSON for scripts.

use std::time::SystemTime;

use norn_bucket_index::{DeletionMark, NoCompactMark, NoCompactReason};
use serde::Serialize;

use super::scan::BlockInfo;

/// Milliseconds since the epoch as RFC3339 in UTC (milliseconds shown only when not zero).
pub fn rfc3339_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms % 1000 == 0 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Unix seconds as RFC3339 in UTC.
pub fn rfc3339_s(s: i64) -> String {
    rfc3339_ms(s.saturating_mul(1000))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A span of milliseconds as a Prometheus duration (`2h`, `1d12h`).
pub fn duration_ms(ms: i64) -> String {
    norn_model::format_duration(std::time::Duration::from_millis(ms.max(0) as u64))
}

fn age_s(t: Option<SystemTime>, now: SystemTime) -> Option<u64> {
    t.map(|t| now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0))
}

fn reason_text(r: &NoCompactReason) -> String {
    match serde_json::to_value(r) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{r:?}"),
    }
}

/// One block as JSON.
#[derive(Debug, Serialize)]
pub struct BlockJson {
    pub id: String,
    /// `complete`, `partial` (no meta.json) or `corrupt` (meta.json unreadable).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_time_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_time_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_level: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub size_bytes: u64,
    pub files: usize,
    /// Seconds since the newest object was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    pub deletion_mark: Option<MarkJson>,
    pub no_compact_mark: Option<MarkJson>,
}

/// A mark as JSON.
#[derive(Debug, Serialize)]
pub struct MarkJson {
    /// When the block was marked (RFC3339), absent when the mark cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn deletion_json(m: &Result<DeletionMark, String>) -> MarkJson {
    match m {
        Ok(m) => MarkJson {
            time: Some(rfc3339_s(m.deletion_time)),
            reason: None,
            details: None,
            error: None,
        },
        Err(e) => MarkJson {
            time: None,
            reason: None,
            details: None,
            error: Some(e.clone()),
        },
    }
}

fn no_compact_json(m: &Result<NoCompactMark, String>) -> MarkJson {
    match m {
        Ok(m) => MarkJson {
            time: Some(rfc3339_s(m.no_compact_time)),
            reason: Some(reason_text(&m.reason)),
            details: (!m.details.is_empty()).then(|| m.details.clone()),
            error: None,
        },
        Err(e) => MarkJson {
            time: None,
            reason: None,
            details: None,
            error: Some(e.clone()),
        },
    }
}

pub fn block_json(b: &BlockInfo, now: SystemTime) -> BlockJson {
    let mut j = BlockJson {
        id: b.id.clone(),
        state: "partial",
        error: None,
        min_time: None,
        max_time: None,
        min_time_ms: None,
        max_time_ms: None,
        duration: None,
        compaction_level: None,
        series: None,
        samples: None,
        chunks: None,
        source: None,
        size_bytes: b.size(),
        files: b.files.len(),
        age_seconds: age_s(b.last_modified, now),
        deletion_mark: b.deletion.as_ref().map(deletion_json),
        no_compact_mark: b.no_compact.as_ref().map(no_compact_json),
    };
    match &b.meta {
        Some(Ok(m)) => {
            j.state = "complete";
            j.min_time = Some(rfc3339_ms(m.min_time));
            j.max_time = Some(rfc3339_ms(m.max_time));
            j.min_time_ms = Some(m.min_time);
            j.max_time_ms = Some(m.max_time);
            j.duration = Some(duration_ms(m.max_time - m.min_time));
            j.compaction_level = Some(m.compaction.level);
            j.series = Some(m.stats.num_series);
            j.samples = Some(m.stats.num_samples);
            j.chunks = Some(m.stats.num_chunks);
            j.source = m.thanos.as_ref().map(|t| t.source.clone());
        }
        Some(Err(e)) => {
            j.state = "corrupt";
            j.error = Some(e.clone());
        }
        None if !b.exists() => j.state = "deleted",
        None => {}
    }
    j
}

/// The MARKS column: `deletion@<time>`, `no-compact(<reason>)`, or what is wrong.
fn marks_text(b: &BlockInfo, now: SystemTime) -> String {
    let mut parts = Vec::new();
    match &b.meta {
        None if !b.exists() => parts.push("deleted (only global marks remain)".to_owned()),
        None => parts.push(format!(
            "partial (no meta.json), last written {} ago",
            age_s(b.last_modified, now)
                .map(|s| norn_model::format_duration(std::time::Duration::from_secs(s)))
                .unwrap_or_else(|| "?".into())
        )),
        Some(Err(e)) => parts.push(format!("corrupt: {e}")),
        Some(Ok(_)) => {}
    }
    match &b.deletion {
        Some(Ok(m)) => parts.push(format!("deletion@{}", rfc3339_s(m.deletion_time))),
        Some(Err(e)) => parts.push(format!("deletion (unreadable: {e})")),
        None => {}
    }
    match &b.no_compact {
        Some(Ok(m)) => parts.push(format!("no-compact({})", reason_text(&m.reason))),
        Some(Err(e)) => parts.push(format!("no-compact (unreadable: {e})")),
        None => {}
    }
    parts.join(", ")
}

/// The `ls` table.
pub fn table(blocks: &[BlockInfo], now: SystemTime) -> String {
    let mut out = format!(
        "{:<26}  {:<24}  {:<24}  {:>8}  {:>5}  {:>9}  {:>12}  {:>9}  MARKS\n",
        "BLOCK ULID", "MIN TIME", "MAX TIME", "DURATION", "LEVEL", "SERIES", "SAMPLES", "SIZE"
    );
    for b in blocks {
        let j = block_json(b, now);
        let dash = || "-".to_owned();
        let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(dash);
        let line = format!(
            "{:<26}  {:<24}  {:<24}  {:>8}  {:>5}  {:>9}  {:>12}  {:>9}  {}",
            b.id,
            j.min_time.clone().unwrap_or_else(dash),
            j.max_time.clone().unwrap_or_else(dash),
            j.duration.clone().unwrap_or_else(dash),
            j.compaction_level
                .map(|l| l.to_string())
                .unwrap_or_else(dash),
            num(j.series),
            num(j.samples),
            human_bytes(j.size_bytes),
            marks_text(b, now)
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `inspect` text: meta.json's fields, the files with sizes, the marks.
pub fn inspect_text(b: &BlockInfo, now: SystemTime) -> String {
    let j = block_json(b, now);
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<18} {v}\n"));
    line("block", b.id.clone());
    line("state", j.state.to_owned());
    match &b.meta {
        Some(Ok(m)) => {
            line(
                "time range",
                format!(
                    "{} .. {} ({}; {} .. {} ms)",
                    rfc3339_ms(m.min_time),
                    rfc3339_ms(m.max_time),
                    duration_ms(m.max_time - m.min_time),
                    m.min_time,
                    m.max_time
                ),
            );
            line("meta version", m.version.to_string());
            line("series", m.stats.num_series.to_string());
            line("samples", m.stats.num_samples.to_string());
            line("chunks", m.stats.num_chunks.to_string());
            line("tombstones", m.stats.num_tombstones.to_string());
            line("compaction level", m.compaction.level.to_string());
            line("sources", m.compaction.sources.join(", "));
            let parents: Vec<&str> = m
                .compaction
                .parents
                .iter()
                .map(|p| p.ulid.as_str())
                .collect();
            line(
                "parents",
                if parents.is_empty() {
                    "-".into()
                } else {
                    parents.join(", ")
                },
            );
            if m.compaction.deletable || m.compaction.failed {
                line(
                    "flags",
                    format!(
                        "deletable={} failed={}",
                        m.compaction.deletable, m.compaction.failed
                    ),
                );
            }
            match &m.thanos {
                Some(t) => {
                    line("source", t.source.clone());
                    let labels: Vec<String> =
                        t.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    line("external labels", format!("{{{}}}", labels.join(", ")));
                    line(
                        "downsampling",
                        match t.downsample.resolution {
                            0 => "raw".into(),
                            r => format!("{r} ms"),
                        },
                    );
                }
                None => line("source", "- (no Thanos section)".into()),
            }
        }
        Some(Err(e)) => line("meta.json", format!("corrupt: {e}")),
        None => line(
            "meta.json",
            format!(
                "missing: a partial block, last written {} ago",
                j.age_seconds
                    .map(|s| norn_model::format_duration(std::time::Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into())
            ),
        ),
    }
    let marks = |m: &Option<MarkJson>| match m {
        None => "none".to_owned(),
        Some(MarkJson { error: Some(e), .. }) => format!("unreadable: {e}"),
        Some(m) => {
            let mut s = format!("since {}", m.time.clone().unwrap_or_default());
            if let Some(r) = &m.reason {
                s.push_str(&format!(", reason {r}"));
            }
            if let Some(d) = &m.details {
                s.push_str(&format!(", details {d:?}"));
            }
            s
        }
    };
    line("deletion mark", marks(&j.deletion_mark));
    line("no-compact mark", marks(&j.no_compact_mark));
    line(
        "files",
        format!("{} ({} total)", b.files.len(), human_bytes(b.size())),
    );
    for f in &b.files {
        out.push_str(&format!(
            "  {:<30} {:>12}  {}\n",
            f.path,
            f.size,
            human_bytes(f.size)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(7_200_001), "1970-01-01T02:00:00.001Z");
        assert_eq!(rfc3339_s(60), "1970-01-01T00:01:00Z");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(duration_ms(7_200_000), "2h");
        assert_eq!(duration_ms(-5), "0s");
        assert_eq!(reason_text(&NoCompactReason::Manual), "manual");
        assert_eq!(reason_text(&NoCompactReason::Other("x-y".into())), "x-y");
    }
}
