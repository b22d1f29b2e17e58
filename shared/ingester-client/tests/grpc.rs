//! The client against a real ingester served over gRPC on an ephemeral port: push, every
//! read, tenant errors, and what a distributor sees when the ingester stops and comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_ingester::grpc::GrpcMetrics;
use norn_ingester::{Config, Ingester, config::TsdbConfig};
use norn_ingester_client::{ClientConfig, IngesterClient, IngesterClientPool};
use norn_limits::{Limits, Overrides};
use norn_model::{
    Labels, MatchType, Matcher, MetricMetadata, MetricType, PushError, Pusher, Sample, TenantId,
    WriteBatch, now_ms,
};
use norn_proto::ingester::v1 as pb;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn start_ingester(dir: &std::path::Path) -> Arc<Ingester> {
    Ingester::start(
        Config {
            tsdb: TsdbConfig {
                dir: dir.to_path_buf(),
                wal_fsync: norn_tsdb::FsyncPolicy::Never,
                ..Default::default()
            },
            ..Default::default()
        },
        Arc::new(Overrides::new(Limits::default())),
        norn_server::Metrics::new(),
        None,
    )
    .unwrap()
}

/// A running gRPC server; dropping `stop` (or sending on it) shuts it down.
struct Server {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn serve(listener: TcpListener, ing: &Arc<Ingester>, metrics: &GrpcMetrics) -> Server {
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(norn_ingester::grpc::serve(
        listener,
        Arc::clone(ing),
        metrics.clone(),
        async {
            let _ = rx.await;
        },
    ));
    Server { stop, task }
}

async fn wait_healthy(c: &IngesterClient) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.check_health().await {
        assert!(Instant::now() < deadline, "ingester never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn eq(name: &str, value: &str) -> Matcher {
    Matcher::new(MatchType::Equal, name, value).unwrap()
}

fn batch(t0: i64) -> (WriteBatch, Vec<Sample>) {
    let a: Vec<Sample> = (0..300)
        .map(|i| Sample::new(t0 + i * 1000, i as f64))
        .collect();
    let series = WriteBatch::from_series(&[
        (
            Labels::from_pairs([("__name__", "up"), ("job", "b")]),
            vec![Sample::new(t0, 42.0)],
        ),
        (
            Labels::from_pairs([("__name__", "up"), ("job", "a")]),
            a.clone(),
        ),
    ]);
    // `from_series` carries no metadata; concatenated protobuf messages merge, so appending
    // an encoded request holding only metadata adds it.
    let mut body = norn_proto::encode_write_request(&series);
    body.extend(
        norn_proto::prometheus::WriteRequest {
            timeseries: vec![],
            metadata: vec![norn_proto::prometheus::MetricMetadata {
                r#type: 2,
                metric_family_name: "up".into(),
                help: "whether the target is up".into(),
                unit: String::new(),
            }],
        }
        .encode_to_vec(),
    );
    (norn_proto::decode_write_request(body.into()).unwrap(), a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_read_back_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let ing = start_ingester(dir.path());
    let grpc_metrics = GrpcMetrics::new(ing.registry()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = serve(listener, &ing, &grpc_metrics);

    let registry = prometheus::Registry::new();
    let pool = IngesterClientPool::new(ClientConfig::default(), &registry).unwrap();
    let client = pool.get(&addr).unwrap();
    assert_eq!(client.addr(), addr);
    wait_healthy(&client).await;

    let tenant = TenantId::new("team-a").unwrap();
    let t0 = now_ms() - 600_000;
    let (b, a_samples) = batch(t0);
    let out = client.push(&tenant, b).await.unwrap();
    assert_eq!(out.appended, 301);
    assert!(out.rejected.is_empty());

    // An older sample for an existing series is refused per sample, not as an error.
    let late = WriteBatch::from_series(&[(
        Labels::from_pairs([("__name__", "up"), ("job", "b")]),
        vec![Sample::new(t0 - 1, 1.0)],
    )]);
    let out = client.push(&tenant, late).await.unwrap();
    assert_eq!(out.appended, 0);
    assert_eq!(out.rejected, vec![("sample-out-of-order", 1)]);
    assert!(out.first_error.unwrap().contains("job=\"b\""));

    let q = client.queryable(tenant.clone());
    let all = q
        .select(t0 - 10, t0 + 1_000_000, &[eq("__name__", "up")])
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].labels.get("job"), Some("a"), "sorted by labels");
    assert_eq!(all[0].samples, a_samples, "300 samples across three chunks");
    assert_eq!(all[1].samples, vec![Sample::new(t0, 42.0)]);

    let part = q
        .select(t0 + 5_000, t0 + 130_000, &[eq("job", "a")])
        .await
        .unwrap();
    assert_eq!(part.len(), 1);
    assert_eq!(part[0].samples, a_samples[5..=130]);

    assert_eq!(
        q.label_names(t0 - 10, t0 + 1_000_000, &[]).await.unwrap(),
        ["__name__", "job"]
    );
    assert_eq!(
        q.label_values("job", t0 - 10, t0 + 1_000_000, &[])
            .await
            .unwrap(),
        ["a", "b"]
    );
    let series = client
        .series(&tenant, t0 - 10, t0 + 1_000_000, &[eq("job", "b")])
        .await
        .unwrap();
    assert_eq!(
        series,
        [Labels::from_pairs([("__name__", "up"), ("job", "b")])]
    );
    let md = client.metadata(&tenant, None, 0).await.unwrap();
    assert_eq!(
        md,
        [MetricMetadata {
            metric_family_name: "up".into(),
            metric_type: MetricType::Gauge,
            help: "whether the target is up".into(),
            unit: String::new(),
        }]
    );
    assert!(
        client
            .metadata(&tenant, Some("other"), 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.user_stats(&tenant).await.unwrap().num_series, 2);

    // Tenants are isolated.
    let other = TenantId::new("team-b").unwrap();
    assert!(
        client
            .queryable(other.clone())
            .select(t0 - 10, t0 + 1_000_000, &[eq("__name__", "up")])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.user_stats(&other).await.unwrap().num_series, 0);

    // A raw call without the tenant metadata is refused with a message saying what is missing.
    let mut raw = pb::ingester_client::IngesterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let err = raw.user_stats(pb::UserStatsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("x-scope-orgid"), "{}", err.message());
    let err = raw
        .push(pb::PushRequest {
            write_request: vec![0xff, 0xff].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::PushRequest {
        write_request: vec![0xff, 0xff].into(),
    });
    req.metadata_mut()
        .insert("x-scope-orgid", "team-a".parse().unwrap());
    assert_eq!(
        raw.push(req).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // A leaving ingester refuses pushes with a retryable error but still serves reads.
    ing.set_read_only(true);
    let (b, _) = batch(t0 + 400_000);
    match client.push(&tenant, b).await {
        Err(PushError::Unavailable(m)) => assert!(m.contains("leaving"), "{m}"),
        other => panic!("want Unavailable, got {other:?}"),
    }
    assert_eq!(client.user_stats(&tenant).await.unwrap().num_series, 2);
    ing.set_read_only(false);

    let families: Vec<String> = ing
        .registry()
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert!(families.contains(&"norn_ingester_grpc_requests_total".to_string()));
    assert!(families.contains(&"norn_ingester_grpc_request_duration_seconds".to_string()));
    assert!(
        registry
            .gather()
            .iter()
            .any(|f| f.name() == "norn_ingester_client_request_duration_seconds")
    );

    // A closed ingester says so to health checks.
    ing.close();
    assert!(!client.check_health().await);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_ingester_is_unavailable_fast_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ing = start_ingester(dir.path());
    let grpc_metrics = GrpcMetrics::new(ing.registry()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sock = listener.local_addr().unwrap();
    let addr = sock.to_string();
    let server = serve(listener, &ing, &grpc_metrics);

    let pool =
        IngesterClientPool::new(ClientConfig::default(), &prometheus::Registry::new()).unwrap();
    let client = pool.get(&addr).unwrap();
    wait_healthy(&client).await;
    let tenant = TenantId::new("t").unwrap();
    let t0 = now_ms();
    let one = |t: i64| {
        WriteBatch::from_series(&[(
            Labels::from_pairs([("__name__", "m")]),
            vec![Sample::new(t, 1.0)],
        )])
    };
    assert_eq!(client.push(&tenant, one(t0)).await.unwrap().appended, 1);

    server.stop().await;
    let started = Instant::now();
    match client.push(&tenant, one(t0 + 1)).await {
        Err(PushError::Unavailable(_)) => {}
        other => panic!("want Unavailable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "a refused connection must fail fast, took {:?}",
        started.elapsed()
    );

    // The health sweep drops the dead node's client.
    pool.check_health_all().await;
    assert!(pool.addrs().is_empty());

    // Same port again: the old client's channel reconnects by itself.
    let listener = TcpListener::bind(sock).await.unwrap();
    let server = serve(listener, &ing, &grpc_metrics);
    assert_eq!(client.push(&tenant, one(t0 + 2)).await.unwrap().appended, 1);
    let fresh = pool.get(&addr).unwrap();
    assert_eq!(fresh.push(&tenant, one(t0 + 3)).await.unwrap().appended, 1);
    let got = fresh
        .queryable(tenant.clone())
        .select(t0, t0 + 10, &[eq("__name__", "m")])
        .await
        .unwrap();
    assert_eq!(got[0].samples.len(), 3);
    server.stop().await;
}

/// A raw remote-write series, labels exactly as given (unsorted, duplicated, whatever).
fn raw_series(labels: &[(&str, &str)], t: i64) -> norn_proto::prometheus::TimeSeries {
    norn_proto::prometheus::TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| norn_proto::prometheus::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: vec![norn_proto::prometheus::Sample {
            timestamp: t,
            value: 1.0,
        }],
        ..Default::default()
    }
}

/// Anyone who reaches the gRPC port can push: the ingester re-checks each series with the
/// distributor's rules, refuses every bad kind with INVALID_ARGUMENT and stores the good
/// series sent with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_push_validates_each_series_and_stores_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ing = start_ingester(dir.path());
    let grpc_metrics = GrpcMetrics::new(ing.registry()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = serve(listener, &ing, &grpc_metrics);
    let registry = prometheus::Registry::new();
    let pool = IngesterClientPool::new(ClientConfig::default(), &registry).unwrap();
    let client = pool.get(&addr).unwrap();
    wait_healthy(&client).await;
    let mut rpc = pb::ingester_client::IngesterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let now = now_ms();
    let big = "v".repeat(100 * 1024);
    let bad: Vec<(&str, norn_proto::prometheus::TimeSeries)> = vec![
        (
            "not sorted",
            raw_series(&[("job", "a"), ("__name__", "bad")], now),
        ),
        (
            "duplicate",
            raw_series(&[("__name__", "bad"), ("a", "1"), ("a", "2")], now),
        ),
        (
            "invalid name",
            raw_series(&[("__name__", "bad"), ("a-b", "1")], now),
        ),
        (
            "invalid metric name",
            raw_series(&[("__name__", "bad-name")], now),
        ),
        (
            "100 KB value",
            raw_series(&[("__name__", "bad"), ("a", &big)], now),
        ),
        (
            "empty value",
            raw_series(&[("__name__", "bad"), ("a", "")], now),
        ),
        ("no name", raw_series(&[("job", "bad")], now)),
        (
            "10 years ahead",
            raw_series(&[("__name__", "bad")], now + 10 * 365 * 86_400_000),
        ),
        ("i64::MIN", raw_series(&[("__name__", "bad")], i64::MIN)),
        ("before 1970", raw_series(&[("__name__", "bad")], -1)),
    ];
    let tenant = TenantId::new("team-a").unwrap();
    for (i, (what, series)) in bad.into_iter().enumerate() {
        let good = raw_series(&[("__name__", "good"), ("n", &i.to_string())], now);
        let req = norn_proto::prometheus::WriteRequest {
            timeseries: vec![series, good],
            metadata: vec![],
        };
        let mut request = tonic::Request::new(pb::PushRequest {
            write_request: req.encode_to_vec().into(),
        });
        request
            .metadata_mut()
            .insert("x-scope-orgid", "team-a".parse().unwrap());
        let status = rpc.push(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert_eq!(
            status.metadata().get("norn-appended").unwrap(),
            "1",
            "{what}: the good series was stored"
        );
    }
    let q = client.queryable(tenant.clone());
    let good = q
        .select(0, now + 1, &[eq("__name__", "good")])
        .await
        .unwrap();
    assert_eq!(good.len(), 10, "every good series stored");
    assert!(
        q.label_values("__name__", 0, i64::MAX, &[]).await.unwrap() == ["good"],
        "no bad series stored"
    );
    // Through the client (the distributor's path) the refusal is a message, not a failure.
    let req = norn_proto::prometheus::WriteRequest {
        timeseries: vec![raw_series(&[("job", "x")], now)],
        metadata: vec![],
    };
    let out = client
        .push_encoded(&tenant, req.encode_to_vec().into())
        .await
        .unwrap();
    assert!(out.first_error.unwrap().contains("metric name"));
    server.stop().await;
}
