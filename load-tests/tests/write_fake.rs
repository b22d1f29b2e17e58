//! The write load end to end against an in-process receiver: every sample arrives, in timestamp
//! order per series, and the stored data does not depend on concurrency or batching; errors are
//! counted by status and retried only when the spec says so.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use norn_loadtests::series::{Generator, GeneratorConfig};
use norn_loadtests::write::{self, WriteConfig};
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

/// (tenant, labels) -> samples as (timestamp, value bits), in arrival order.
type Data = BTreeMap<(String, Vec<(String, String)>), Vec<(i64, u64)>>;

#[derive(Default)]
struct Receiver {
    data: Mutex<Data>,
    /// Answer this status to the first `fail_first` requests.
    fail_status: u16,
    fail_first: u64,
    requests: AtomicU64,
}

async fn push(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = r.requests.fetch_add(1, Ordering::Relaxed);
    if n < r.fail_first {
        return StatusCode::from_u16(r.fail_status).unwrap();
    }
    assert_eq!(headers["content-encoding"], "snappy");
    assert_eq!(headers["x-prometheus-remote-write-version"], "0.1.0");
    let tenant = headers
        .get("x-scope-orgid")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
    let req = WriteRequest::decode(raw.as_slice()).unwrap();
    let mut data = r.data.lock().unwrap();
    for ts in req.timeseries {
        let labels = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
        let stored = data.entry((tenant.clone(), labels)).or_default();
        stored.extend(ts.samples.iter().map(|s| (s.timestamp, s.value.to_bits())));
    }
    StatusCode::NO_CONTENT
}

async fn start(receiver: Arc<Receiver>) -> String {
    let app = axum::Router::new()
        .route("/api/v1/write", post(push))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/api/v1/write")
}

fn config(
    url: String,
    concurrency: usize,
    samples_per_request: usize,
    samples_per_series: usize,
) -> WriteConfig {
    WriteConfig {
        url,
        tenants: vec!["a".into(), "b".into()],
        intervals: 7,
        samples_per_request,
        samples_per_series,
        concurrency,
        rate: None,
        live: false,
        max_duration: Some(Duration::from_secs(30)),
        progress_every: None,
        retries: 2,
    }
}

fn generator() -> Arc<Generator> {
    Arc::new(Generator::new(GeneratorConfig {
        series: 250,
        churn_per_interval: 40,
        seed: 3,
        start_ms: 1_700_000_000_000,
        interval_ms: 15_000,
    }))
}

async fn load(
    concurrency: usize,
    per_request: usize,
    per_series: usize,
) -> (Data, write::WriteSummary) {
    let receiver = Arc::new(Receiver::default());
    let url = start(Arc::clone(&receiver)).await;
    let client = norn_loadtests::http::client(Duration::from_secs(10), 4).unwrap();
    let summary = write::run(
        client,
        generator(),
        config(url, concurrency, per_request, per_series),
    )
    .await;
    let data = receiver.data.lock().unwrap().clone();
    (data, summary)
}

#[tokio::test]
async fn all_samples_arrive_in_order_whatever_the_concurrency() {
    let (one, s1) = load(1, 100, 1).await;
    let (many, s2) = load(3, 37, 3).await;
    // 250 series x 7 intervals x 2 tenants.
    assert_eq!(s1.samples_sent, 3500);
    assert_eq!(s2.samples_sent, 3500);
    assert!(s1.errors.is_empty() && s2.errors.is_empty());
    for series in one.values() {
        assert!(
            series.windows(2).all(|w| w[0].0 < w[1].0),
            "out of order: {series:?}"
        );
    }
    // Churn made more distinct series than slots; the data is identical in both runs.
    assert!(one.len() > 500, "{} series", one.len());
    assert_eq!(one, many);
}

#[tokio::test]
async fn retries_5xx_but_not_4xx() {
    let client = norn_loadtests::http::client(Duration::from_secs(10), 4).unwrap();
    for (status, sent, failed) in [(503u16, 3500, 0), (400, 3500 - 200, 200)] {
        // The first two requests fail: a 503 is retried and lands, a 400 is dropped.
        let receiver = Arc::new(Receiver {
            fail_status: status,
            fail_first: 2,
            ..Receiver::default()
        });
        let url = start(Arc::clone(&receiver)).await;
        let summary = write::run(client.clone(), generator(), config(url, 1, 100, 1)).await;
        assert_eq!(
            summary.errors.get(&status.to_string()),
            Some(&2),
            "{status}: {summary}"
        );
        assert_eq!(summary.samples_sent, sent, "{status}: {summary}");
        assert_eq!(summary.samples_failed, failed, "{status}: {summary}");
    }
}
