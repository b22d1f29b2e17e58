//! A minimal client for the Prometheus HTTP query API (`/query`, `/query_range`).
//!
//! The base URL is everything before `/query`, so the same code drives Prometheus and
//! VictoriaMetrics (`http://host:port/api/v1`) and Norn (`http://host:port/prometheus/api/v1`).
//! Results are parsed into plain vectors keyed by sorted label sets; values keep their exact
//! float64 (Prometheus prints the shortest representation that round-trips).

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use crate::http::classify_error;

/// A label set, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// Errors of a query.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The request did not complete (connect, timeout, …).
    #[error("{class}: {source}")]
    Transport {
        /// Short class used as a counter key.
        class: &'static str,
        /// The client error.
        source: reqwest::Error,
    },
    /// The server answered with a non-2xx status.
    #[error("HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body (usually the Prometheus error envelope).
        body: String,
    },
    /// The body is not a Prometheus success envelope of a known result type.
    #[error("bad response: {0}")]
    Parse(String),
}

impl ApiError {
    /// Counter key: the HTTP status, the transport class, or `parse`.
    pub fn class(&self) -> String {
        match self {
            ApiError::Transport { class, .. } => (*class).to_string(),
            ApiError::Status { status, .. } => status.to_string(),
            ApiError::Parse(_) => "parse".into(),
        }
    }
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ApiError>;

/// A parsed query result.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// Instant vector: one `(timestamp_ms, value)` per series.
    Vector(Vec<(Labels, (i64, f64))>),
    /// Range vector: the points of each series.
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
    /// A scalar.
    Scalar((i64, f64)),
    /// A string.
    String(String),
}

impl QueryResult {
    /// Number of series (1 for scalars and strings).
    pub fn series(&self) -> usize {
        match self {
            QueryResult::Vector(v) => v.len(),
            QueryResult::Matrix(m) => m.len(),
            _ => 1,
        }
    }
}

/// Formats milliseconds as the API's decimal seconds (`1700000000.123`).
pub fn format_time(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// The API's query client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    tenant: Option<String>,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:9090/api/v1`), sending `X-Scope-OrgID: tenant`.
    pub fn new(http: reqwest::Client, base: &str, tenant: Option<String>) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            tenant,
        }
    }

    /// Instant query at `time_ms`.
    pub async fn query(&self, query: &str, time_ms: i64) -> Result<QueryResult> {
        let params = [("query", query.to_string()), ("time", format_time(time_ms))];
        self.get("query", &params).await
    }

    /// Range query over `[start_ms, end_ms]` every `step`.
    pub async fn query_range(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step: Duration,
    ) -> Result<QueryResult> {
        let params = [
            ("query", query.to_string()),
            ("start", format_time(start_ms)),
            ("end", format_time(end_ms)),
            ("step", format!("{}", step.as_secs_f64())),
        ];
        self.get("query_range", &params).await
    }

    async fn get(&self, endpoint: &str, params: &[(&str, String)]) -> Result<QueryResult> {
        let mut req = self
            .http
            .get(format!("{}/{endpoint}", self.base))
            .query(params);
        if let Some(t) = &self.tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        let resp = req.send().await.map_err(|e| ApiError::Transport {
            class: classify_error(&e),
            source: e,
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ApiError::Transport {
            class: classify_error(&e),
            source: e,
        })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(ApiError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        parse_response(&body)
    }
}

/// Parses a Prometheus API success envelope.
pub fn parse_response(body: &[u8]) -> Result<QueryResult> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::Parse(format!("not JSON: {e}")))?;
    if v["status"] != "success" {
        return Err(ApiError::Parse(format!(
            "status is not success: {}",
            v["error"]
        )));
    }
    let data = &v["data"];
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("vector") => {
            let items = result
                .as_array()
                .ok_or_else(|| ApiError::Parse("vector result is not an array".into()))?;
            items
                .iter()
                .map(|s| Ok((parse_labels(&s["metric"])?, parse_point(&s["value"])?)))
                .collect::<Result<_>>()
                .map(QueryResult::Vector)
        }
        Some("matrix") => {
            let items = result
                .as_array()
                .ok_or_else(|| ApiError::Parse("matrix result is not an array".into()))?;
            items
                .iter()
                .map(|s| {
                    let values = s["values"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    Ok((
                        parse_labels(&s["metric"])?,
                        values.iter().map(parse_point).collect::<Result<Vec<_>>>()?,
                    ))
                })
                .collect::<Result<_>>()
                .map(QueryResult::Matrix)
        }
        Some("scalar") => parse_point(result).map(QueryResult::Scalar),
        Some("string") => Ok(QueryResult::String(
            result[1].as_str().unwrap_or_default().to_string(),
        )),
        other => Err(ApiError::Parse(format!("unknown resultType {other:?}"))),
    }
}

fn parse_labels(v: &serde_json::Value) -> Result<Labels> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::Parse("metric is not an object".into()))?;
    obj.iter()
        .map(|(k, v)| {
            let s = v
                .as_str()
                .ok_or_else(|| ApiError::Parse(format!("label {k} is not a string")))?;
            Ok((k.clone(), s.to_string()))
        })
        .collect()
}

/// Parses `[<unix seconds>, "<value>"]`.
fn parse_point(v: &serde_json::Value) -> Result<(i64, f64)> {
    let ts = v[0]
        .as_f64()
        .ok_or_else(|| ApiError::Parse(format!("bad timestamp in {v}")))?;
    let s = v[1]
        .as_str()
        .ok_or_else(|| ApiError::Parse(format!("bad value in {v}")))?;
    Ok(((ts * 1000.0).round() as i64, parse_value(s)?))
}

/// Parses a sample value as Prometheus prints it (`1.5`, `NaN`, `+Inf`, `-Inf`).
pub fn parse_value(s: &str) -> Result<f64> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse()
            .map_err(|e| ApiError::Parse(format!("bad value {s:?}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vector_and_matrix() {
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a"},"value":[1700000000.123,"0.1"]}]}}"#;
        match parse_response(v).unwrap() {
            QueryResult::Vector(s) => {
                assert_eq!(s.len(), 1);
                assert_eq!(s[0].0["job"], "a");
                assert_eq!(s[0].1, (1_700_000_000_123, 0.1));
            }
            other => panic!("{other:?}"),
        }
        let m = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"+Inf"],[2,"-2.5e-7"]]}]}}"#;
        match parse_response(m).unwrap() {
            QueryResult::Matrix(s) => {
                assert_eq!(s[0].1, vec![(1000, f64::INFINITY), (2000, -2.5e-7)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse_response(br#"{"status":"error","errorType":"bad_data","error":"x"}"#).is_err()
        );
        assert_eq!(format_time(1_700_000_000_005), "1700000000.005");
        assert_eq!(format_time(-1), "-0.001");
    }
}
