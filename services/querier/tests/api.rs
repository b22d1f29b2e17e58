//! The query API in-process over an in-memory store: golden JSON for the shapes Grafana's
//! Prometheus data source parses, and Prometheus' status codes and error types for bad input.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::Request;
use norn_limits::{Limits, Overrides};
use norn_model::{
    Labels, MetadataReader, MetricMetadata, MetricType, Queryable, QueryableProvider, Sample,
    StorageError, TenantId,
};
use norn_promql::memstore::MemStore;
use norn_querier::{Config, Querier, routes};
use norn_server::TenantResolver;
use tower::ServiceExt;

struct Stores {
    a: Arc<MemStore>,
}

impl QueryableProvider for Stores {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        if tenant.as_str() == "a" {
            Arc::clone(&self.a) as Arc<dyn Queryable>
        } else {
            Arc::new(MemStore::new())
        }
    }
}

struct Md;

#[async_trait]
impl MetadataReader for Md {
    async fn metadata(
        &self,
        _: &TenantId,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError> {
        Ok(vec![MetricMetadata {
            metric_family_name: "http_requests_total".into(),
            metric_type: MetricType::Counter,
            help: "Total requests.".into(),
            unit: String::new(),
        }])
    }
}

fn app(config: Config) -> axum::Router {
    let a = Arc::new(MemStore::new());
    for (job, base) in [("api", 0.0), ("web", 100.0)] {
        let l = Labels::from_pairs([("__name__", "http_requests_total"), ("job", job)]);
        a.add_series(
            &l,
            (0..=20).map(|i| Sample::new(i * 15_000, base + i as f64 * 15.0)),
        );
    }
    a.add_series(
        &Labels::from_pairs([("__name__", "up"), ("job", "api")]),
        (0..=20).map(|i| Sample::new(i * 15_000, 1.0)),
    );
    routes(
        Querier::new(
            config,
            Arc::new(Stores { a }),
            Arc::new(Md),
            TenantResolver {
                multitenancy_enabled: true,
                federation: Default::default(),
            },
            Arc::new(Overrides::new(Limits::default())),
            &prometheus::Registry::new(),
        )
        .unwrap(),
    )
}

async fn get(app: axum::Router, uri: &str) -> (u16, String) {
    let req = Request::get(uri)
        .header("X-Scope-OrgID", "a")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn golden_grafana_shapes() {
    let a = app(Config::default());
    let cases = [
        (
            "/prometheus/api/v1/query?query=http_requests_total&time=300",
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"http_requests_total","job":"api"},"value":[300,"300"]},{"metric":{"__name__":"http_requests_total","job":"web"},"value":[300,"400"]}]}}"#,
        ),
        (
            "/prometheus/api/v1/query_range?query=sum(http_requests_total)&start=120&end=240&step=60",
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[120,"340"],[180,"460"],[240,"580"]]}]}}"#,
        ),
        (
            "/prometheus/api/v1/query?query=1%2B1&time=10.5",
            r#"{"status":"success","data":{"resultType":"scalar","result":[10.500,"2"]}}"#,
        ),
        (
            "/prometheus/api/v1/labels",
            r#"{"status":"success","data":["__name__","job"]}"#,
        ),
        (
            "/prometheus/api/v1/label/__name__/values",
            r#"{"status":"success","data":["http_requests_total","up"]}"#,
        ),
        (
            "/prometheus/api/v1/series?match[]=up",
            r#"{"status":"success","data":[{"__name__":"up","job":"api"}]}"#,
        ),
        (
            "/prometheus/api/v1/metadata",
            r#"{"status":"success","data":{"http_requests_total":[{"type":"counter","help":"Total requests.","unit":""}]}}"#,
        ),
        (
            "/prometheus/api/v1/label/job/values?limit=1",
            r#"{"status":"success","data":["api"],"warnings":["results truncated due to limit"]}"#,
        ),
    ];
    for (uri, want) in cases {
        let (status, body) = get(a.clone(), uri).await;
        assert_eq!(status, 200, "{uri}: {body}");
        assert_eq!(body, want, "{uri}");
    }
    let (status, body) = get(a.clone(), "/prometheus/api/v1/status/buildinfo").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success");
    assert!(v["data"]["version"].is_string());
    // The same routes without the /prometheus prefix.
    assert_eq!(get(a, "/api/v1/query?query=up&time=0").await.0, 200);
}

#[tokio::test]
async fn bad_input_like_prometheus() {
    let a = app(Config::default());
    let cases = [
        (
            "/prometheus/api/v1/query?query=sum(",
            400,
            "bad_data",
            "1:4: parse error: unclosed left parenthesis",
        ),
        (
            "/prometheus/api/v1/query?query=foo%20bar",
            400,
            "bad_data",
            "1:5: parse error",
        ),
        (
            "/prometheus/api/v1/query?query=up&time=yesterday",
            400,
            "bad_data",
            "invalid parameter \"time\"",
        ),
        (
            "/prometheus/api/v1/query_range?query=up&start=10&end=5&step=1",
            400,
            "bad_data",
            "end timestamp must not be before start time",
        ),
        (
            "/prometheus/api/v1/query_range?query=up&start=0&end=10&step=0",
            400,
            "bad_data",
            "zero or negative query resolution step",
        ),
        (
            "/prometheus/api/v1/query_range?query=up&start=0&end=100000&step=1",
            400,
            "bad_data",
            "exceeded maximum resolution of 11,000 points",
        ),
        (
            "/prometheus/api/v1/query_range?query=up&end=10&step=1",
            400,
            "bad_data",
            "invalid parameter \"start\"",
        ),
        (
            "/prometheus/api/v1/series",
            400,
            "bad_data",
            "no match[] parameter provided",
        ),
        (
            "/prometheus/api/v1/series?match[]=%7Bjob%3D%22%22%7D",
            400,
            "bad_data",
            "at least one non-empty matcher",
        ),
        (
            "/prometheus/api/v1/label/bad-name/values",
            400,
            "bad_data",
            "invalid label name",
        ),
        (
            "/prometheus/api/v1/labels?limit=x",
            400,
            "bad_data",
            "limit",
        ),
    ];
    for (uri, status, etype, msg) in cases {
        let (s, body) = get(a.clone(), uri).await;
        assert_eq!(s, status, "{uri}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{uri}: not JSON: {body}"));
        assert_eq!(v["status"], "error", "{uri}");
        assert_eq!(v["errorType"], etype, "{uri}: {body}");
        assert!(v["error"].as_str().unwrap().contains(msg), "{uri}: {body}");
    }
    // Missing tenant.
    let resp = a
        .clone()
        .oneshot(
            Request::get("/prometheus/api/v1/query?query=up")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn sample_limit_and_timeout() {
    let limited = app(Config {
        max_samples: 5,
        ..Config::default()
    });
    let (s, body) = get(
        limited,
        "/prometheus/api/v1/query_range?query=http_requests_total&start=0&end=300&step=15",
    )
    .await;
    assert_eq!(s, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errorType"], "execution");
    assert!(
        v["error"].as_str().unwrap().contains("too many samples"),
        "{body}"
    );

    let slow = app(Config {
        timeout: Duration::from_nanos(1),
        ..Config::default()
    });
    let (s, body) = get(slow, "/prometheus/api/v1/query_range?query=sum(rate(http_requests_total%5B5m%5D))&start=0&end=300&step=1").await;
    assert_eq!(s, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errorType"], "timeout");
}
