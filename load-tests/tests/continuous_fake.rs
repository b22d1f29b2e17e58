//! End-to-end test of `norn-continuous-test`'s loop against an in-process fake store.
//!
//! The fake accepts remote write 1.0 (decoded with a `prost` message declared here from the spec,
//! independently of the crate's encoder) and answers `/query` and `/query_range` for a bare metric
//! selector with Prometheus' 5 minute lookback. It can corrupt one stored sample, which the test
//! must report as a mismatch; a clean run must report none.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use norn_loadtests::continuous::{self, ContinuousConfig, Metrics};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

type Labels = BTreeMap<String, String>;

#[derive(Default)]
struct Store {
    series: HashMap<Labels, BTreeMap<i64, f64>>,
    /// Corrupt the first sample stored for `series_id="1"`.
    corrupt: bool,
    corrupted: bool,
}

type Shared = Arc<Mutex<Store>>;

async fn push(State(store): State<Shared>, body: axum::body::Bytes) -> StatusCode {
    let Ok(raw) = snap::raw::Decoder::new().decompress_vec(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Ok(req) = WriteRequest::decode(raw.as_slice()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut s = store.lock().unwrap();
    for ts in req.timeseries {
        let labels: Labels = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
        let corrupt_this =
            s.corrupt && !s.corrupted && labels.get("series_id").is_some_and(|v| v == "1");
        for mut sample in ts.samples {
            if corrupt_this {
                sample.value += 1.0;
                s.corrupted = true;
            }
            s.series
                .entry(labels.clone())
                .or_default()
                .insert(sample.timestamp, sample.value);
        }
    }
    StatusCode::NO_CONTENT
}

fn param_ms(p: &HashMap<String, String>, k: &str) -> i64 {
    (p[k].parse::<f64>().unwrap() * 1000.0).round() as i64
}

/// Latest sample in `(t - 5m, t]`.
fn at(samples: &BTreeMap<i64, f64>, t: i64) -> Option<f64> {
    samples
        .range(t - 300_000 + 1..=t)
        .next_back()
        .map(|(_, v)| *v)
}

fn selected<'a>(
    s: &'a Store,
    name: &str,
) -> impl Iterator<Item = (&'a Labels, &'a BTreeMap<i64, f64>)> {
    s.series
        .iter()
        .filter(move |(l, _)| l.get("__name__").is_some_and(|n| n == name))
}

async fn query(
    State(store): State<Shared>,
    Query(p): Query<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    let t = param_ms(&p, "time");
    let s = store.lock().unwrap();
    let result: Vec<_> = selected(&s, &p["query"])
        .filter_map(|(l, samples)| {
            at(samples, t).map(
                |v| serde_json::json!({"metric": l, "value": [t as f64 / 1000.0, v.to_string()]}),
            )
        })
        .collect();
    axum::Json(
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}}),
    )
}

async fn query_range(
    State(store): State<Shared>,
    Query(p): Query<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    let (start, end, step) = (
        param_ms(&p, "start"),
        param_ms(&p, "end"),
        param_ms(&p, "step"),
    );
    let s = store.lock().unwrap();
    let result: Vec<_> = selected(&s, &p["query"])
        .map(|(l, samples)| {
            let values: Vec<_> = (0..)
                .map(|i| start + i * step)
                .take_while(|&t| t <= end)
                .filter_map(|t| {
                    at(samples, t).map(|v| serde_json::json!([t as f64 / 1000.0, v.to_string()]))
                })
                .collect();
            serde_json::json!({"metric": l, "values": values})
        })
        .collect();
    axum::Json(
        serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": result}}),
    )
}

async fn start_fake(corrupt: bool) -> (String, Shared) {
    let store: Shared = Arc::new(Mutex::new(Store {
        corrupt,
        ..Store::default()
    }));
    let app = axum::Router::new()
        .route("/api/v1/write", post(push))
        .route("/api/v1/query", get(query))
        .route("/api/v1/query_range", get(query_range))
        .with_state(Arc::clone(&store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), store)
}

async fn run_against_fake(corrupt: bool) -> (Arc<Metrics>, Shared) {
    let (base, store) = start_fake(corrupt).await;
    let metrics = Arc::new(Metrics::default());
    let cfg = ContinuousConfig {
        write_url: format!("{base}/api/v1/write"),
        query_base: format!("{base}/api/v1"),
        tenant: Some("test".into()),
        series: 3,
        interval: Duration::from_millis(100),
        max_query_age: Duration::from_secs(60),
        query_delay: Duration::ZERO,
        duration: Some(Duration::from_millis(1500)),
        seed: 9,
    };
    let client = norn_loadtests::http::client(Duration::from_secs(5), 2).unwrap();
    // The run bounds itself with `duration`; the outer timeout only guards the test.
    tokio::time::timeout(
        Duration::from_secs(30),
        continuous::run(client, cfg, Arc::clone(&metrics)),
    )
    .await
    .expect("continuous test stops after --duration");
    (metrics, store)
}

fn load(m: &std::sync::atomic::AtomicU64) -> u64 {
    m.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn clean_run_reports_no_mismatch() {
    let (m, store) = run_against_fake(false).await;
    assert!(
        load(&m.writes_total) >= 5,
        "writes: {}",
        load(&m.writes_total)
    );
    assert_eq!(load(&m.writes_failed_total), 0);
    assert!(
        load(&m.queries_total) >= 10,
        "queries: {}",
        load(&m.queries_total)
    );
    assert_eq!(load(&m.queries_failed_total), 0);
    assert_eq!(load(&m.query_mismatches_total), 0);
    assert_eq!(store.lock().unwrap().series.len(), 3);
}

#[tokio::test]
async fn corrupted_sample_is_reported_as_mismatch() {
    let (m, store) = run_against_fake(true).await;
    assert!(
        store.lock().unwrap().corrupted,
        "the fake never corrupted a sample"
    );
    assert_eq!(load(&m.queries_failed_total), 0);
    // The instant query right after the corrupted write, and every later range query that
    // reaches back to it, must flag it.
    assert!(
        load(&m.query_mismatches_total) >= 1,
        "mismatches: {}",
        load(&m.query_mismatches_total)
    );
}

#[tokio::test]
async fn metrics_endpoint_exports_the_counters() {
    let metrics = Arc::new(Metrics::default());
    metrics
        .query_mismatches_total
        .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(continuous::serve_metrics(listener, Arc::clone(&metrics)));
    let client = norn_loadtests::http::client(Duration::from_secs(5), 1).unwrap();
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.abort();
    for name in [
        "writes_total",
        "writes_failed_total",
        "queries_total",
        "queries_failed_total",
    ] {
        assert!(
            text.contains(&format!("\nnorn_continuous_test_{name} 0\n")),
            "{name} missing in:\n{text}"
        );
    }
    assert!(text.contains("\nnorn_continuous_test_query_mismatches_total 2\n"));
}
