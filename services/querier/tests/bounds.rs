//! What bounds a query at the HTTP API (issue 14, items 1 and 4): deep or long query text is
//! a 400 before parsing on `/query` and `/format_query`; the request's timeout stops the
//! evaluation and the series/label reads; a client that goes away stops its query;
//! `max_concurrent` queues, then refuses with 503. In process, over an in-memory store and
//! a store whose reads hang until released. Timing is only bounded generously.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use norn_limits::{Limits, Overrides};
use norn_model::{
    Labels, Matcher, MetadataReader, MetricMetadata, Queryable, QueryableProvider, Sample, Series,
    StorageError, TenantId,
};
use norn_promql::memstore::MemStore;
use norn_querier::{Config, Querier, routes};
use norn_server::TenantResolver;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Reads that wait until the test opens the gate (or a minute passes).
struct Gated {
    inner: MemStore,
    gate: Arc<Semaphore>,
}

impl Gated {
    async fn pass(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(60), self.gate.acquire()).await;
    }
}

#[async_trait]
impl Queryable for Gated {
    async fn select(&self, a: i64, b: i64, m: &[Matcher]) -> Result<Vec<Series>, StorageError> {
        self.pass().await;
        self.inner.select(a, b, m).await
    }
    async fn label_names(
        &self,
        a: i64,
        b: i64,
        m: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.pass().await;
        self.inner.label_names(a, b, m).await
    }
    async fn label_values(
        &self,
        n: &str,
        a: i64,
        b: i64,
        m: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.pass().await;
        self.inner.label_values(n, a, b, m).await
    }
}

/// Tenant `a` reads an ordinary store, tenant `slow` the gated one.
struct Stores {
    a: Arc<MemStore>,
    slow: Arc<Gated>,
}

impl QueryableProvider for Stores {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        match tenant.as_str() {
            "slow" => Arc::clone(&self.slow) as Arc<dyn Queryable>,
            _ => Arc::clone(&self.a) as Arc<dyn Queryable>,
        }
    }
}

struct NoMetadata;

#[async_trait]
impl MetadataReader for NoMetadata {
    async fn metadata(
        &self,
        _: &TenantId,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError> {
        Ok(Vec::new())
    }
}

fn querier(config: Config) -> (Arc<Querier>, Arc<Semaphore>) {
    let a = Arc::new(MemStore::new());
    let up = Labels::from_pairs([("__name__", "up"), ("job", "api")]);
    a.add_series(&up, (0..=20).map(|i| Sample::new(i * 15_000, 1.0)));
    let gate = Arc::new(Semaphore::new(0));
    let slow = Arc::new(Gated {
        inner: MemStore::new(),
        gate: Arc::clone(&gate),
    });
    slow.inner.add_series(&up, [Sample::new(0, 1.0)]);
    let q = Querier::new(
        config,
        Arc::new(Stores { a, slow }),
        Arc::new(NoMetadata),
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        Arc::new(Overrides::new(Limits::default())),
        &prometheus::Registry::new(),
    )
    .unwrap();
    (q, gate)
}

async fn call(app: axum::Router, tenant: Option<&str>, uri: &str) -> (u16, serde_json::Value) {
    let mut req = Request::get(uri);
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{uri}: not JSON: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// POSTs a form body, as Grafana does for long queries.
async fn post(app: axum::Router, uri: &str, form: &str) -> (u16, serde_json::Value) {
    let req = Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).expect("JSON"))
}

/// Percent-encodes a query for a URL.
fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_error(status: u16, v: &serde_json::Value, want: u16, etype: &str, msg: &str) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["status"], "error", "{v}");
    assert_eq!(v["errorType"], etype, "{v}");
    assert!(v["error"].as_str().unwrap().contains(msg), "{v}");
}

#[tokio::test]
async fn deep_queries_are_400_on_query_and_format_query() {
    let (q, _) = querier(Config::default());
    let app = routes(Arc::clone(&q));
    let terms = vec!["1"; 10_000].join("+");
    let parens = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    for text in [&terms, &parens] {
        let e = enc(text);
        let (s, v) = call(
            app.clone(),
            Some("a"),
            &format!("/prometheus/api/v1/query?query={e}"),
        )
        .await;
        assert_error(s, &v, 400, "bad_data", "querier.max-query-expression-depth");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid parameter \"query\"")
        );
        let uri = format!("/prometheus/api/v1/query_range?query={e}&start=0&end=60&step=15");
        let (s, v) = call(app.clone(), Some("a"), &uri).await;
        assert_error(s, &v, 400, "bad_data", "querier.max-query-expression-depth");
        // No tenant needed here.
        let (s, v) = call(
            app.clone(),
            None,
            &format!("/prometheus/api/v1/format_query?query={e}"),
        )
        .await;
        assert_error(s, &v, 400, "bad_data", "querier.max-query-expression-depth");
    }
    // Over the size limit.
    let long = format!("up{{job=\"{}\"}}", "x".repeat(300 << 10));
    let form = format!("query={}", enc(&long));
    let (s, v) = post(app.clone(), "/prometheus/api/v1/format_query", &form).await;
    assert_error(
        s,
        &v,
        400,
        "bad_data",
        "querier.max-query-expression-size-bytes",
    );
    // The process is still serving.
    let (s, v) = call(
        app.clone(),
        Some("a"),
        "/prometheus/api/v1/query?query=up&time=300",
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_query_at_the_allowed_depth_still_answers() {
    let (q, _) = querier(Config::default());
    let app = routes(Arc::clone(&q));
    // 200 levels: a chain of 200 additions, then 200 parentheses around a selector.
    let chain = vec!["up"; 201].join(" + ");
    let (s, v) = call(
        app.clone(),
        Some("a"),
        &format!("/prometheus/api/v1/query?query={}&time=300", enc(&chain)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "201");
    let parens = format!("{}up{}", "(".repeat(200), ")".repeat(200));
    let (s, v) = call(
        app.clone(),
        Some("a"),
        &format!("/prometheus/api/v1/query?query={}&time=300", enc(&parens)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "1");
    let (s, v) = call(
        app.clone(),
        None,
        &format!("/prometheus/api/v1/format_query?query={}", enc(&chain)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A parse error in a deep query is located on a query thread, not the runtime's.
    let bad = format!("{}up{} bar", "(".repeat(200), ")".repeat(200));
    let (s, v) = call(
        app.clone(),
        Some("a"),
        &format!("/prometheus/api/v1/query?query={}", enc(&bad)),
    )
    .await;
    assert_error(s, &v, 400, "bad_data", "parse error");
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < until, "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_request_timeout_stops_a_runaway_subquery() {
    let (q, _) = querier(Config::default());
    let app = routes(Arc::clone(&q));
    let started = Instant::now();
    let uri = format!(
        "/prometheus/api/v1/query?query={}&time=0&timeout=1s",
        enc("count_over_time(vector(1)[30d:1ms])")
    );
    let (s, v) = call(app.clone(), Some("a"), &uri).await;
    assert_error(s, &v, 503, "timeout", "timed out");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The evaluation stopped with the answer: no thread keeps burning CPU.
    wait_for("the query thread to stop", || q.query_threads() == 0).await;
    assert_eq!(q.metrics().stopped.with_label_values(&["timeout"]).get(), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_stops_its_query() {
    let (q, _) = querier(Config::default());
    let app = routes(Arc::clone(&q));
    let uri = format!(
        "/prometheus/api/v1/query?query={}&time=0",
        enc("count_over_time(vector(1)[30d:1ms])")
    );
    let req = call(app.clone(), Some("a"), &uri);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), req)
            .await
            .is_err()
    );
    wait_for("the query thread to stop", || q.query_threads() == 0).await;
    assert_eq!(
        q.metrics().stopped.with_label_values(&["canceled"]).get(),
        1
    );
    assert_eq!(q.metrics().running.get(), 0);
}

#[tokio::test]
async fn series_and_labels_reads_get_the_timeout() {
    let (q, _gate) = querier(Config::default());
    let app = routes(Arc::clone(&q));
    for path in [
        "/prometheus/api/v1/series?match[]=up&timeout=200ms",
        "/prometheus/api/v1/labels?timeout=200ms",
        "/prometheus/api/v1/label/job/values?timeout=200ms",
    ] {
        let started = Instant::now();
        let (s, v) = call(app.clone(), Some("slow"), path).await;
        assert_error(s, &v, 503, "timeout", "timed out");
        assert!(started.elapsed() < Duration::from_secs(30), "{path}");
    }
    // The configured timeout applies without a parameter.
    let (q, _gate) = querier(Config {
        timeout: Duration::from_millis(200),
        ..Config::default()
    });
    let (s, v) = call(routes(q), Some("slow"), "/prometheus/api/v1/labels").await;
    assert_error(s, &v, 503, "timeout", "timed out");
}

#[tokio::test]
async fn beyond_max_concurrent_queries_wait_then_get_503() {
    let (q, gate) = querier(Config {
        max_concurrent: 1,
        max_outstanding_requests: 1,
        ..Config::default()
    });
    let app = routes(Arc::clone(&q));
    // One query takes the only slot and hangs in storage.
    let first = tokio::spawn(call(
        app.clone(),
        Some("slow"),
        "/prometheus/api/v1/query?query=up&time=10",
    ));
    wait_for("the first query to run", || q.metrics().running.get() == 1).await;
    // The next one waits in line.
    let second = tokio::spawn(call(
        app.clone(),
        Some("a"),
        "/prometheus/api/v1/query?query=up&time=300",
    ));
    wait_for("the second query to queue", || {
        q.metrics().queued.get() == 1
    })
    .await;
    // The line is full: refused at once.
    let (s, v) = call(
        app.clone(),
        Some("a"),
        "/prometheus/api/v1/query?query=up&time=300",
    )
    .await;
    assert_error(s, &v, 503, "unavailable", "max-concurrent");
    // Freeing the slot lets both finish.
    gate.add_permits(1_000);
    let (s, v) = first.await.unwrap();
    assert_eq!(s, 200, "{v}");
    let (s, v) = second.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "1");
    // A waiter whose deadline passes in line gets 503 unavailable.
    gate.forget_permits(1_000);
    // A query's slot is freed by its thread, just after its answer.
    wait_for("the slots to be free", || q.metrics().running.get() == 0).await;
    let hold = tokio::spawn(call(app.clone(), Some("slow"), "/prometheus/api/v1/labels"));
    wait_for("the slot to be taken", || q.metrics().running.get() == 1).await;
    let (s, v) = call(
        app.clone(),
        Some("a"),
        "/prometheus/api/v1/query?query=up&time=300&timeout=200ms",
    )
    .await;
    assert_error(s, &v, 503, "unavailable", "max-concurrent");
    gate.add_permits(1_000);
    assert_eq!(hold.await.unwrap().0, 200);
    let rejected = &q.metrics().rejected;
    assert_eq!(rejected.with_label_values(&["queue_full"]).get(), 1);
    assert_eq!(rejected.with_label_values(&["queue_timeout"]).get(), 1);
    assert_eq!(q.metrics().running.get(), 0);
    assert_eq!(q.metrics().queued.get(), 0);
}
