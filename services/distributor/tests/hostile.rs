//! Pushes built to hurt: refused samples by the hundred thousand, absurd timestamps,
//! metadata floods, bodies larger than allowed (declared, streamed, or hidden in snappy's
//! header), and bodies from nobody. Each must end in a clear 4xx, fast, having stored
//! exactly the valid part.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use norn_distributor::{Config, Distributor, DistributorService};
use norn_limits::{Limits, Overrides};
use norn_model::{ErrorKind, PushError, PushOutcome, Pusher, TenantId, WriteBatch, now_ms};
use norn_proto::prometheus as pb;
use norn_server::{Metrics, Service, TenantResolver};
use parking_lot::Mutex;
use prost::Message;
use tower::ServiceExt;

#[derive(Default)]
struct Recorder {
    samples: Mutex<Vec<(String, i64)>>,
    metadata: Mutex<usize>,
}

#[async_trait]
impl Pusher for Recorder {
    async fn push(&self, _: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        for s in batch.iter() {
            for x in s.samples() {
                self.samples.lock().push((format!("{s:?}"), x.t));
            }
        }
        *self.metadata.lock() += batch.metadata().len();
        Ok(PushOutcome {
            appended: batch.num_samples(),
            ..Default::default()
        })
    }
}

fn distributor(limits: Limits, config: Config, rec: &Arc<Recorder>) -> Arc<Distributor> {
    Distributor::new(
        config,
        Arc::new(Overrides::new(limits)),
        Arc::clone(rec) as Arc<dyn Pusher>,
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        Metrics::new(),
    )
    .unwrap()
}

fn series(labels: &[(&str, &str)], ts: &[i64]) -> pb::TimeSeries {
    pb::TimeSeries {
        labels: labels
            .iter()
            .map(|(k, v)| pb::Label {
                name: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: ts
            .iter()
            .map(|t| pb::Sample {
                timestamp: *t,
                value: 1.0,
            })
            .collect(),
        ..Default::default()
    }
}

fn encode(req: &pb::WriteRequest) -> Bytes {
    Bytes::from(
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap(),
    )
}

fn headers(tenant: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("X-Scope-OrgID", tenant.parse().unwrap());
    h
}

/// The request: 29 labels of 2 KB and 400k far-future samples. It took 24 s of
/// formatting; now each refusal is counted and one bounded message is built.
#[tokio::test]
async fn many_refused_samples_build_one_bounded_message() {
    let rec = Arc::new(Recorder::default());
    let d = distributor(Limits::default(), Config::default(), &rec);
    let v = "v".repeat(2000);
    let names: Vec<String> = (0..28).map(|i| format!("l{i:02}")).collect();
    let mut labels: Vec<(&str, &str)> = vec![("__name__", "flood")];
    labels.extend(names.iter().map(|n| (n.as_str(), v.as_str())));
    let future = now_ms() + 3_600_000;
    let ts: Vec<i64> = (0..400_000).map(|i| future + i).collect();
    let good = now_ms();
    let req = pb::WriteRequest {
        timeseries: vec![series(&labels, &ts), series(&[("__name__", "ok")], &[good])],
        metadata: vec![],
    };
    let err = d.push(&headers("t"), encode(&req)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData);
    assert!(
        err.message.contains("too far in the future"),
        "{}",
        err.message
    );
    assert!(
        err.message.len() < 2048,
        "message of {} bytes",
        err.message.len()
    );
    assert_eq!(*rec.samples.lock(), [("ok".to_string(), good)]);
}

/// Timestamps that overflow time arithmetic (and `i64::MIN`, the head's "empty" marker) are
/// refused with 400, not stored.
#[tokio::test]
async fn extreme_timestamps_are_refused_and_the_rest_stored() {
    let rec = Arc::new(Recorder::default());
    let d = distributor(Limits::default(), Config::default(), &rec);
    let now = now_ms();
    let req = pb::WriteRequest {
        timeseries: vec![series(
            &[("__name__", "x")],
            &[i64::MIN, i64::MIN + 1, -1, now, i64::MAX - 1, i64::MAX],
        )],
        metadata: vec![],
    };
    let err = d.push(&headers("t"), encode(&req)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData, "{}", err.message);
    assert_eq!(*rec.samples.lock(), [("x".to_string(), now)]);
    // With a past grace period, old samples are refused too.
    let limits = Limits {
        past_grace_period: std::time::Duration::from_secs(3600),
        ..Limits::default()
    };
    let rec = Arc::new(Recorder::default());
    let d = distributor(limits, Config::default(), &rec);
    let req = pb::WriteRequest {
        timeseries: vec![series(&[("__name__", "x")], &[now - 7_200_000, now])],
        metadata: vec![],
    };
    let err = d.push(&headers("t"), encode(&req)).await.unwrap_err();
    assert!(
        err.message.contains("too far in the past"),
        "{}",
        err.message
    );
    assert_eq!(rec.samples.lock().len(), 1);
}

/// Metadata counts toward the ingestion rate: a flood of it gets 429 like samples do.
#[tokio::test]
async fn metadata_counts_toward_the_ingestion_rate() {
    let rec = Arc::new(Recorder::default());
    let limits = Limits {
        ingestion_rate: 10.0,
        ingestion_burst_size: 100,
        ..Limits::default()
    };
    let d = distributor(limits, Config::default(), &rec);
    let md = |n: usize| -> Vec<pb::MetricMetadata> {
        (0..n)
            .map(|i| pb::MetricMetadata {
                r#type: 1,
                metric_family_name: format!("m{i}"),
                help: "h".into(),
                unit: String::new(),
            })
            .collect()
    };
    let req = pb::WriteRequest {
        timeseries: vec![],
        metadata: md(50),
    };
    d.push(&headers("t"), encode(&req)).await.unwrap();
    let req = pb::WriteRequest {
        timeseries: vec![],
        metadata: md(100),
    };
    let err = d.push(&headers("t"), encode(&req)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooManyRequests);
    assert_eq!(*rec.metadata.lock(), 50);
}

/// Snappy's header states the decoded size: a tiny body claiming gigabytes is refused before
/// anything is allocated.
#[tokio::test]
async fn snappy_bombs_are_refused_from_the_header() {
    let rec = Arc::new(Recorder::default());
    let config = Config {
        max_recv_msg_size: 1 << 20,
        ..Config::default()
    };
    let d = distributor(Limits::default(), config, &rec);
    // Varint 0xFFFFFFFF (4 GiB) as the decoded length, then garbage.
    let bomb = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x01, 0x02]);
    let err = d.push(&headers("t"), bomb).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::PayloadTooLarge, "{}", err.message);
    let garbage = Bytes::from_static(&[0x05, 0x01, 0x02]);
    let err = d.push(&headers("t"), garbage).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData, "{}", err.message);
}

async fn call(svc: &DistributorService, req: Request<Body>) -> (StatusCode, String) {
    let resp = svc.routes().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// The push route knows the tenant and the declared size before it reads the body.
#[tokio::test]
async fn the_route_checks_tenant_and_size_before_reading() {
    let rec = Arc::new(Recorder::default());
    let config = Config {
        max_recv_msg_size: 1000,
        ..Config::default()
    };
    let svc = DistributorService(distributor(Limits::default(), config, &rec));
    // A body that fails if read: the 401 comes first.
    let poisoned = || {
        Body::from_stream(futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::other("the body was read"))
        }))
    };
    let req = Request::post("/api/v1/push")
        .header("content-length", "300000000")
        .body(poisoned())
        .unwrap();
    let (s, text) = call(&svc, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("no org id"), "{text}");
    let req = Request::post("/api/v1/push")
        .header("x-scope-orgid", "t")
        .header("content-length", "300000000")
        .body(poisoned())
        .unwrap();
    let (s, text) = call(&svc, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    // Chunked, no length: cut while streaming.
    let chunks = futures::stream::iter(
        (0..100).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 100]))),
    );
    let req = Request::post("/api/v1/push")
        .header("x-scope-orgid", "t")
        .body(Body::from_stream(chunks))
        .unwrap();
    assert_eq!(call(&svc, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(rec.samples.lock().is_empty());
    // And a valid push still goes through the route.
    let req = pb::WriteRequest {
        timeseries: vec![series(&[("__name__", "ok")], &[now_ms()])],
        metadata: vec![],
    };
    let req = Request::post("/api/v1/push")
        .header("x-scope-orgid", "t")
        .body(Body::from(encode(&req)))
        .unwrap();
    assert_eq!(call(&svc, req).await.0, StatusCode::OK);
    assert_eq!(rec.samples.lock().len(), 1);
}
