//! Range-query answers as the frontend handles them: parsed from a querier's JSON, merged
//! across legs and cached extents, and written back in exactly the querier's format.
//!
//! A point's value stays the string the querier wrote (`"0.1"`, `"NaN"`): it is never parsed
//! to a float and printed again, so nothing can change in the round trip. It is held inline
//! ([`PointValue`]: up to 24 bytes, longer ones such as `1e300` written out go to the heap),
//! not as a heap string per point: a merged week of a few hundred series is millions of
//! points. Timestamps are
//! integral milliseconds and are written with the querier's own writer
//! (`norn_server::prom_json`), and series are ordered by labels as the engine orders a matrix,
//! so a merged answer is byte for byte the answer of the unsplit query.

use std::collections::BTreeMap;

use norn_server::prom_json::{write_annotations, write_str, write_timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A series' labels in order of name (as the querier writes them).
pub type LabelPairs = Vec<(String, String)>;

/// A point's value as the querier wrote it.
pub type PointValue = compact_str::CompactString;

/// One series of a matrix: its labels and its points `(ms, value as written)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesData {
    pub labels: LabelPairs,
    pub points: Vec<(i64, PointValue)>,
}

/// A range query's answer: series sorted by labels, and its annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matrix {
    pub series: Vec<SeriesData>,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

impl Matrix {
    /// Whether the answer carries annotations (then it is never cached).
    pub fn annotated(&self) -> bool {
        !self.warnings.is_empty() || !self.infos.is_empty()
    }
}

/// A querier's successful answer, unpacked: its results and annotations.
pub(crate) struct Success<T> {
    pub result: Vec<T>,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

#[derive(Deserialize)]
struct Envelope<T> {
    status: String,
    data: Option<Data<T>>,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    infos: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data<T> {
    result_type: String,
    result: Vec<T>,
}

/// Reads a querier's answer: it must be a success whose result has type `want`; `what`
/// names the query in the error otherwise.
pub(crate) fn parse_success<T: DeserializeOwned>(
    body: &[u8],
    want: &str,
    what: &str,
) -> Result<Success<T>, String> {
    let env: Envelope<T> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable querier answer: {e}"))?;
    if env.status != "success" {
        return Err(format!("querier answered status {:?}", env.status));
    }
    let data = env.data.ok_or("querier answer without data")?;
    if data.result_type != want {
        return Err(format!(
            "{what} answered with a {} instead of a {want}",
            data.result_type
        ));
    }
    Ok(Success {
        result: data.result,
        warnings: env.warnings,
        infos: env.infos,
    })
}

#[derive(Deserialize)]
struct RawSeries {
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, PointValue)>,
    /// Native histogram points: the engine writes none today; an answer with them is not
    /// merged (it would lose them), see [`parse_matrix`].
    #[serde(default)]
    histograms: Option<serde_json::Value>,
}

/// Parses a successful `query_range` answer.
pub fn parse_matrix(body: &[u8]) -> Result<Matrix, String> {
    let env = parse_success::<RawSeries>(body, "matrix", "range query")?;
    let mut series = Vec::with_capacity(env.result.len());
    for s in env.result {
        if s.histograms.is_some() {
            return Err("native histogram points cannot be merged yet".into());
        }
        series.push(SeriesData {
            // A BTreeMap iterates by name: the order the querier writes labels in.
            labels: s.metric.into_iter().collect(),
            points: s
                .values
                .into_iter()
                .map(|(t, v)| ((t * 1000.0).round() as i64, v))
                .collect(),
        });
    }
    Ok(Matrix {
        series,
        warnings: env.warnings,
        infos: env.infos,
    })
}

/// Merges matrices of consecutive, ordered time ranges: each series' points concatenated in
/// order (a point at or before one already taken is dropped, so an overlap at a boundary
/// counts once), series sorted by labels, annotations kept once each in first-seen order.
pub fn merge(parts: impl IntoIterator<Item = Matrix>) -> Matrix {
    let mut by_labels: BTreeMap<LabelPairs, Vec<(i64, PointValue)>> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut infos = Vec::new();
    for part in parts {
        for s in part.series {
            let points = by_labels.entry(s.labels).or_default();
            for p in s.points {
                if points.last().is_none_or(|last| last.0 < p.0) {
                    points.push(p);
                }
            }
        }
        for w in part.warnings {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        for i in part.infos {
            if !infos.contains(&i) {
                infos.push(i);
            }
        }
    }
    Matrix {
        series: by_labels
            .into_iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(labels, points)| SeriesData { labels, points })
            .collect(),
        warnings,
        infos,
    }
}

/// The points of `series` within `[start, end]`; series left with none are dropped.
pub fn trim(series: &[SeriesData], start: i64, end: i64) -> Vec<SeriesData> {
    series
        .iter()
        .filter_map(|s| {
            let points: Vec<_> = s
                .points
                .iter()
                .filter(|p| p.0 >= start && p.0 <= end)
                .cloned()
                .collect();
            (!points.is_empty()).then(|| SeriesData {
                labels: s.labels.clone(),
                points,
            })
        })
        .collect()
}

/// The `query_range` success envelope, exactly as the querier writes it.
pub fn write_matrix(m: &Matrix) -> String {
    let points: usize = m.series.iter().map(|s| s.points.len()).sum();
    let mut out = String::with_capacity(64 + m.series.len() * 64 + points * 24);
    out.push_str("{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[");
    for (i, s) in m.series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":{");
        for (j, (n, v)) in s.labels.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            write_str(&mut out, n);
            out.push(':');
            write_str(&mut out, v);
        }
        out.push_str("},\"values\":[");
        for (j, (t, v)) in s.points.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push('[');
            write_timestamp(&mut out, *t);
            out.push(',');
            write_str(&mut out, v);
            out.push(']');
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    write_annotations(&mut out, &m.warnings, &m.infos);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a\"<b>"},"values":[[0,"2.5"],[15,"NaN"],[1435781451.781,"+Inf"]]},{"metric":{},"values":[[1.500,"1"]]}]},"warnings":["w"]}"#;

    #[test]
    fn round_trips_the_querier_format_byte_for_byte() {
        let m = parse_matrix(BODY.as_bytes()).unwrap();
        assert_eq!(m.series[0].points[2], (1_435_781_451_781, "+Inf".into()));
        assert_eq!(m.warnings, ["w"]);
        // The querier escapes `<`, `>` and `&` as Go does; so do we.
        assert_eq!(
            write_matrix(&m),
            BODY.replace("a\\\"<b>", "a\\\"\\u003cb\\u003e")
        );
    }

    #[test]
    fn refuses_what_it_cannot_merge() {
        for bad in [
            r#"{"status":"error","errorType":"bad_data","error":"x"}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"histograms":[[1,{}]]}]}}"#,
            "not json",
        ] {
            assert!(parse_matrix(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    fn s(name: &str, points: &[(i64, &str)]) -> SeriesData {
        SeriesData {
            labels: vec![("__name__".into(), name.into())],
            points: points.iter().map(|(t, v)| (*t, (*v).into())).collect(),
        }
    }

    #[test]
    fn merge_concatenates_in_order_without_duplicates() {
        let a = Matrix {
            series: vec![s("b", &[(1, "1"), (2, "2")])],
            warnings: vec!["w".into()],
            infos: vec![],
        };
        let b = Matrix {
            series: vec![s("a", &[(3, "3")]), s("b", &[(2, "2"), (3, "3")])],
            warnings: vec!["w".into(), "v".into()],
            infos: vec!["i".into()],
        };
        let m = merge([a, b]);
        assert_eq!(
            m.series,
            [s("a", &[(3, "3")]), s("b", &[(1, "1"), (2, "2"), (3, "3")])]
        );
        assert_eq!(m.warnings, ["w", "v"]);
        assert_eq!(m.infos, ["i"]);
        assert_eq!(trim(&m.series, 2, 2), [s("b", &[(2, "2")])]);
    }
}
