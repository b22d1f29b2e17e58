//! What the import prints: one line per block and its outcome.

/// What happened to one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Imported {
        bytes: u64,
    },
    WouldImport,
    AlreadyImported,
    /// Not imported because of the block itself (corrupt, unsupported, duplicate).
    Skipped(String),
    /// The bucket failed; the run stops here.
    Failed(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Imported { .. } => "imported".into(),
            Outcome::WouldImport => "would import".into(),
            Outcome::AlreadyImported => "already imported".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// What the per-block line shows.
#[derive(Debug, Clone)]
pub struct BlockLine {
    /// The ULID (from meta.json, else the directory's name), or the directory's path.
    pub id: String,
    pub range: Option<(i64, i64)>,
    pub series: u64,
    pub samples: u64,
    pub size: u64,
}

pub fn format_line(l: &BlockLine, o: &Outcome) -> String {
    let (min, max) = match l.range {
        Some((a, b)) => (rfc3339(a), rfc3339(b)),
        None => ("-".into(), "-".into()),
    };
    let num = |n: u64, known: bool| if known { n.to_string() } else { "-".into() };
    let known = l.range.is_some();
    format!(
        "{:<26}  {:<24}  {:<24}  {:>8}  {:>10}  {:>9}  {}",
        l.id,
        min,
        max,
        num(l.series, known),
        num(l.samples, known),
        if known {
            human_bytes(l.size)
        } else {
            "-".into()
        },
        o.describe()
    )
}

/// Milliseconds since the epoch as RFC3339 in UTC (milliseconds shown only when not zero).
fn rfc3339(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms % 1000 == 0 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(7_200_001), "1970-01-01T02:00:00.001Z");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0MiB");
    }
}
