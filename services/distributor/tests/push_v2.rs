//! Remote write 2.0 through the distributor's HTTP route, in-process: content negotiation
//! (415s), the `…-Written` headers, partial writes for what Norn does not store, and the same
//! validation, rate limit and HA dedup as 1.0. Bodies are encoded from the 2.0 proto the way a
//! sender encodes them.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use norn_distributor::{Config, Distributor, DistributorService};
use norn_limits::{Limits, Overrides};
use norn_model::{
    MetricMetadata, MetricType, PushError, PushOutcome, Pusher, TenantId, WriteBatch,
};
use norn_proto::prometheus as v1;
use norn_proto::prometheus_write_v2 as v2;
use norn_server::{Metrics, Service, TenantResolver};
use parking_lot::Mutex;
use prost::Message;
use tower::ServiceExt;

const V2_CT: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// A series as `name{labels}` with its samples as (t, value bits).
type SeriesDump = (String, Vec<(i64, u64)>);

#[derive(Default)]
struct Recorder {
    /// (tenant, series) per push.
    pushed: Mutex<Vec<(String, Vec<SeriesDump>)>>,
    metadata: Mutex<Vec<MetricMetadata>>,
}

#[async_trait]
impl Pusher for Recorder {
    async fn push(&self, tenant: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        let series = batch
            .iter()
            .map(|s| {
                (
                    format!("{s:?}"),
                    s.samples().iter().map(|x| (x.t, x.v.to_bits())).collect(),
                )
            })
            .collect();
        self.pushed.lock().push((tenant.to_string(), series));
        self.metadata.lock().extend_from_slice(batch.metadata());
        Ok(PushOutcome {
            appended: batch.num_samples(),
            ..Default::default()
        })
    }
}

fn setup(limits: Limits) -> (Arc<Recorder>, axum::Router) {
    let rec = Arc::new(Recorder::default());
    let config = Config {
        ha_tracker: norn_distributor::ha_tracker::HaTrackerConfig {
            enable_ha_tracker: true,
            ..Default::default()
        },
        ..Config::default()
    };
    let d = Distributor::new(
        config,
        Arc::new(Overrides::new(limits)),
        Arc::clone(&rec) as Arc<dyn Pusher>,
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        Metrics::new(),
    )
    .unwrap();
    (rec, DistributorService(d).routes())
}

fn now() -> i64 {
    norn_model::now_ms()
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

/// A 2.0 request: each series is label pairs plus sample count, interned into one table.
fn v2_request(series: &[(&[(&str, &str)], usize)], t0: i64) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut intern = |s: &str| -> u32 {
        if let Some(i) = symbols.iter().position(|x| x == s) {
            return i as u32;
        }
        symbols.push(s.to_string());
        (symbols.len() - 1) as u32
    };
    let timeseries = series
        .iter()
        .map(|(labels, n)| v2::TimeSeries {
            labels_refs: labels
                .iter()
                .flat_map(|(k, v)| [intern(k), intern(v)])
                .collect(),
            samples: (0..*n)
                .map(|i| v2::Sample {
                    value: i as f64 + 0.5,
                    timestamp: t0 + 1000 * i as i64,
                    start_timestamp: 0,
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    v2::Request {
        symbols,
        timeseries,
    }
}

/// The same data as [`v2_request`], as 1.0.
fn v1_request(series: &[(&[(&str, &str)], usize)], t0: i64) -> v1::WriteRequest {
    v1::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, n)| v1::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(k, v)| v1::Label {
                        name: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: (0..*n)
                    .map(|i| v1::Sample {
                        value: i as f64 + 0.5,
                        timestamp: t0 + 1000 * i as i64,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    }
}

async fn post(
    app: &axum::Router,
    tenant: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Response<Body>) {
    let mut req = Request::post("/api/v1/push").header("X-Scope-OrgID", tenant);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    (resp.status(), resp)
}

fn written(resp: &Response<Body>) -> (u64, u64, u64) {
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .unwrap_or_else(|| panic!("missing {n}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        h("X-Prometheus-Remote-Write-Samples-Written"),
        h("X-Prometheus-Remote-Write-Histograms-Written"),
        h("X-Prometheus-Remote-Write-Exemplars-Written"),
    )
}

async fn text(resp: Response<Body>) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(b.to_vec()).unwrap()
}

const SERIES: &[(&[(&str, &str)], usize)] = &[
    (
        &[
            ("__name__", "http_requests_total"),
            ("code", "200"),
            ("job", "api"),
        ],
        3,
    ),
    (
        &[
            ("__name__", "http_requests_total"),
            ("code", "500"),
            ("job", "api"),
        ],
        2,
    ),
];

#[tokio::test]
async fn v2_reaches_the_pusher_as_the_same_batch_as_v1() {
    let t0 = now() - 60_000;
    let (rec2, app2) = setup(Limits::default());
    let (s, resp) = post(
        &app2,
        "t",
        &[("content-type", V2_CT), ("content-encoding", "snappy")],
        snappy(&v2_request(SERIES, t0).encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(written(&resp), (5, 0, 0));

    let (rec1, app1) = setup(Limits::default());
    let (s, resp) = post(
        &app1,
        "t",
        &[("content-type", "application/x-protobuf")],
        snappy(&v1_request(SERIES, t0).encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // 1.0 replies carry the headers too (Mimir 3 does; 1.0 senders ignore them).
    assert_eq!(written(&resp), (5, 0, 0));
    assert_eq!(*rec1.pushed.lock(), *rec2.pushed.lock());
    assert_eq!(rec2.pushed.lock()[0].1.len(), 2);
}

#[tokio::test]
async fn v2_metadata_reaches_the_metadata_path() {
    let mut req = v2_request(SERIES, now());
    req.symbols.push("Requests served.".into());
    let help = (req.symbols.len() - 1) as u32;
    for ts in &mut req.timeseries {
        ts.metadata = Some(v2::Metadata {
            r#type: v2::metadata::MetricType::Counter as i32,
            help_ref: help,
            unit_ref: 0,
        });
    }
    let (rec, app) = setup(Limits::default());
    let (s, _) = post(
        &app,
        "t",
        &[("content-type", V2_CT)],
        snappy(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        *rec.metadata.lock(),
        [MetricMetadata {
            metric_family_name: "http_requests_total".into(),
            metric_type: MetricType::Counter,
            help: "Requests served.".into(),
            unit: String::new(),
        }]
    );
}

#[tokio::test]
async fn histograms_and_exemplars_are_a_partial_write() {
    let mut req = v2_request(SERIES, now());
    req.timeseries[1].samples.clear();
    req.timeseries[1].histograms = vec![v2::Histogram::default(); 2];
    req.timeseries[0].exemplars = vec![v2::Exemplar {
        labels_refs: vec![],
        value: 1.0,
        timestamp: now(),
    }];
    let (rec, app) = setup(Limits::default());
    let (s, resp) = post(
        &app,
        "t",
        &[("content-type", V2_CT)],
        snappy(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The floats were stored, and only they are reported as written.
    assert_eq!(written(&resp), (3, 0, 0));
    let msg = text(resp).await;
    assert!(
        msg.contains("2 native histogram samples and 1 exemplars"),
        "{msg}"
    );
    assert_eq!(rec.pushed.lock()[0].1.len(), 1);
}

#[tokio::test]
async fn unsupported_content_types_and_encodings_are_415_naming_what_is_accepted() {
    let body = snappy(&v2_request(SERIES, now()).encode_to_vec());
    for headers in [
        &[(
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        )][..],
        &[("content-type", "application/json")][..],
        &[("content-type", V2_CT), ("content-encoding", "zstd")][..],
        &[("content-encoding", "gzip")][..],
    ] {
        let (rec, app) = setup(Limits::default());
        let (s, resp) = post(&app, "t", headers, body.clone()).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
        assert_eq!(written(&resp), (0, 0, 0));
        let msg = text(resp).await;
        assert!(
            msg.contains("proto=io.prometheus.write.v2.Request"),
            "{msg}"
        );
        assert!(msg.contains("prometheus.WriteRequest"), "{msg}");
        assert!(rec.pushed.lock().is_empty());
    }
}

/// The bug of issue 23: a 2.0 body without the 2.0 Content-Type decoded as an empty 1.0
/// request and got 200. Now it is a 400, and so is a 1.0 body sent as 2.0.
#[tokio::test]
async fn a_body_of_the_other_version_is_400_never_a_silent_2xx() {
    let t = now();
    for (ct, body) in [
        (
            "application/x-protobuf",
            v2_request(SERIES, t).encode_to_vec(),
        ),
        ("", v2_request(SERIES, t).encode_to_vec()),
        (V2_CT, v1_request(SERIES, t).encode_to_vec()),
    ] {
        let (rec, app) = setup(Limits::default());
        let (s, resp) = post(&app, "t", &[("content-type", ct)], snappy(&body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(written(&resp), (0, 0, 0));
        assert!(text(resp).await.contains("holds no field"));
        assert!(rec.pushed.lock().is_empty());
    }
    // An empty body is an empty request: nothing to store, 200 with zero counts.
    let (_, app) = setup(Limits::default());
    let (s, resp) = post(&app, "t", &[("content-type", V2_CT)], snappy(&[])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(written(&resp), (0, 0, 0));
}

#[tokio::test]
async fn broken_symbol_references_are_400_and_nothing_is_stored() {
    let t = now();
    type Breaker = fn(&mut v2::Request);
    let cases: [(&str, Breaker); 4] = [
        ("out of range", |r| r.timeseries[1].labels_refs[5] = 1000),
        ("odd number", |r| {
            r.timeseries[0].labels_refs.pop();
        }),
        ("reference 0", |r| r.timeseries[0].labels_refs[2] = 0),
        ("symbols[0]", |r| r.symbols[0] = "x".into()),
    ];
    for (want, break_it) in cases {
        let mut req = v2_request(SERIES, t);
        break_it(&mut req);
        let (rec, app) = setup(Limits::default());
        let (s, resp) = post(
            &app,
            "t",
            &[("content-type", V2_CT)],
            snappy(&req.encode_to_vec()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{want}");
        let msg = text(resp).await;
        assert!(msg.contains(want), "{want}: {msg}");
        assert!(rec.pushed.lock().is_empty());
    }
}

#[tokio::test]
async fn v2_is_validated_like_v1() {
    let (rec, app) = setup(Limits::default());
    let req = v2_request(
        &[
            (&[("__name__", "good")], 1),
            (&[("__name__", "bad"), ("x-y", "1")], 1),
            (&[("__name__", "dropped_empty"), ("e", "")], 1),
        ],
        now(),
    );
    let (s, resp) = post(
        &app,
        "t",
        &[("content-type", V2_CT)],
        snappy(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(written(&resp), (2, 0, 0));
    assert!(text(resp).await.contains("bad"));
    let names: Vec<String> = rec.pushed.lock()[0]
        .1
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(names, ["good", "dropped_empty"]);
}

#[tokio::test]
async fn one_rate_limit_counts_samples_of_both_versions() {
    let limits = Limits {
        ingestion_rate: 1.0,
        ingestion_burst_size: 6,
        ..Limits::default()
    };
    let (rec, app) = setup(limits);
    let t = now() - 60_000;
    // 5 samples in 1.0, then 5 in 2.0: the burst of 6 is spent by the first.
    let (s, _) = post(
        &app,
        "t",
        &[],
        snappy(&v1_request(SERIES, t).encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, resp) = post(
        &app,
        "t",
        &[("content-type", V2_CT)],
        snappy(&v2_request(SERIES, t + 10_000).encode_to_vec()),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(written(&resp), (0, 0, 0));
    assert_eq!(rec.pushed.lock().len(), 1);
}

#[tokio::test]
async fn ha_dedup_applies_to_v2() {
    let limits = Limits {
        accept_ha_samples: true,
        ..Limits::default()
    };
    let (rec, app) = setup(limits);
    let t = now();
    let from = |replica: &'static str| {
        v2_request(
            &[(
                &[
                    ("__name__", "up"),
                    ("__replica__", replica),
                    ("cluster", "c1"),
                ],
                1,
            )],
            t,
        )
        .encode_to_vec()
    };
    let (s, _) = post(&app, "t", &[("content-type", V2_CT)], snappy(&from("a"))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, resp) = post(&app, "t", &[("content-type", V2_CT)], snappy(&from("b"))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(written(&resp), (0, 0, 0));
    let pushed = rec.pushed.lock();
    assert_eq!(pushed.len(), 1);
    // The replica label is gone, as for 1.0.
    assert_eq!(pushed[0].1[0].0, r#"up{cluster="c1"}"#);
}
