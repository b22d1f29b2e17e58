//! The distributor's contract with its `Pusher`, in-process: what reaches the ingester, and
//! which status the sender sees, for valid, mixed, rate-limited and failing pushes.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::HeaderMap;
use norn_distributor::{Config, Distributor};
use norn_limits::{Limits, Overrides};
use norn_model::{ErrorKind, PushError, PushOutcome, Pusher, TenantId, WriteBatch};
use norn_proto::prometheus as pb;
use norn_server::{Metrics, TenantResolver};
use parking_lot::Mutex;
use prost::Message;

#[derive(Default)]
struct Recorder {
    pushed: Mutex<Vec<(String, Vec<String>)>>,
    fail: bool,
}

#[async_trait]
impl Pusher for Recorder {
    async fn push(&self, tenant: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        if self.fail {
            return Err(PushError::Unavailable("ingester down".into()));
        }
        let names = batch.iter().map(|s| format!("{s:?}")).collect();
        self.pushed.lock().push((tenant.to_string(), names));
        Ok(PushOutcome {
            appended: batch.num_samples(),
            ..Default::default()
        })
    }
}

fn distributor(limits: Limits, pusher: Arc<Recorder>) -> Arc<Distributor> {
    Distributor::new(
        Config::default(),
        Arc::new(Overrides::new(limits)),
        pusher,
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        Metrics::new(),
    )
    .unwrap()
}

fn body(series: &[(&[(&str, &str)], usize)]) -> Bytes {
    let now = norn_model::now_ms();
    let req = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, n)| pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(k, v)| pb::Label {
                        name: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: (0..*n)
                    .map(|i| pb::Sample {
                        timestamp: now - 1000 * i as i64,
                        value: 1.0,
                    })
                    .rev()
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
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

#[tokio::test]
async fn valid_push_reaches_the_pusher_with_sorted_labels_and_no_empty_values() {
    let rec = Arc::new(Recorder::default());
    let d = distributor(Limits::default(), Arc::clone(&rec));
    d.push(
        &headers("t"),
        body(&[(&[("job", "a"), ("__name__", "up"), ("empty", "")], 2)]),
    )
    .await
    .unwrap();
    let pushed = rec.pushed.lock();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].0, "t");
    assert_eq!(pushed[0].1, [r#"up{job="a"}"#]);
}

#[tokio::test]
async fn mixed_push_stores_the_valid_part_and_names_the_bad_series() {
    let rec = Arc::new(Recorder::default());
    let d = distributor(Limits::default(), Arc::clone(&rec));
    let err = d
        .push(
            &headers("t"),
            body(&[
                (&[("__name__", "good")], 1),
                (&[("__name__", "bad"), ("x-y", "1")], 1),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadData);
    assert!(err.message.contains("bad"), "{}", err.message);
    assert_eq!(rec.pushed.lock()[0].1, ["good"]);
}

#[tokio::test]
async fn over_the_rate_limit_nothing_is_stored_and_429() {
    let rec = Arc::new(Recorder::default());
    let limits = Limits {
        ingestion_rate: 1.0,
        ingestion_burst_size: 3,
        ..Limits::default()
    };
    let d = distributor(limits, Arc::clone(&rec));
    d.push(&headers("t"), body(&[(&[("__name__", "a")], 3)]))
        .await
        .unwrap();
    let err = d
        .push(&headers("t"), body(&[(&[("__name__", "a")], 3)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooManyRequests);
    assert_eq!(rec.pushed.lock().len(), 1);
    // Another tenant has its own bucket.
    d.push(&headers("u"), body(&[(&[("__name__", "a")], 3)]))
        .await
        .unwrap();
}

#[tokio::test]
async fn storage_failure_is_retryable() {
    let rec = Arc::new(Recorder {
        fail: true,
        ..Default::default()
    });
    let d = distributor(Limits::default(), rec);
    let err = d
        .push(&headers("t"), body(&[(&[("__name__", "a")], 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(err.status().as_u16(), 503);
}

#[tokio::test]
async fn ha_pair_only_the_elected_replica_is_stored_without_its_replica_label() {
    let rec = Arc::new(Recorder::default());
    let config = Config {
        ha_tracker: norn_distributor::ha_tracker::HaTrackerConfig {
            enable_ha_tracker: true,
            ..Default::default()
        },
        ..Config::default()
    };
    let limits = Limits {
        accept_ha_samples: true,
        ..Limits::default()
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
    let from = |replica: &'static str| {
        body(&[(
            &[
                ("__name__", "up"),
                ("cluster", "prod"),
                ("__replica__", replica),
            ],
            1,
        )])
    };
    assert_eq!(
        d.push(&headers("t"), from("a")).await.unwrap(),
        norn_distributor::Pushed::Stored
    );
    match d.push(&headers("t"), from("b")).await.unwrap() {
        norn_distributor::Pushed::Deduplicated(m) => assert!(m.contains("elected=a"), "{m}"),
        other => panic!("expected the second replica to be deduplicated, got {other:?}"),
    }
    // Without HA labels nothing is deduplicated.
    d.push(&headers("t"), body(&[(&[("__name__", "x")], 1)]))
        .await
        .unwrap();
    let pushed = rec.pushed.lock();
    assert_eq!(pushed.len(), 2);
    assert_eq!(pushed[0].1, [r#"up{cluster="prod"}"#]);
}
