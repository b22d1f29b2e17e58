//! Sharding end to end over the real PromQL engine: a querier that evaluates with
//! `norn_promql::Engine` over a `MemStore` (which honours `__query_shard__` as every store
//! does) answers the frontend with sharding on and off; for a table of queries, instant and
//! range, the sharded answer equals the unsharded one (values to a relative 1e-9: sums of
//! partial sums round differently), the shardable ones really ran as legs, and the rest were
//! not sharded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use norn_limits::{Limits, Overrides};
use norn_model::{Labels, Sample};
use norn_promql::memstore::MemStore;
use norn_promql::{Engine, EngineOptions, Value};
use norn_server::TenantResolver;
use norn_server::params::{Params, parse_duration_ms, parse_time};
use tower::ServiceExt;

use crate::api::{Frontend, routes};
use crate::metrics::FrontendMetrics;
use crate::response::{Matrix, SeriesData, write_matrix};
use crate::shard_merge::{Vector, write_vector};
use crate::{Config, Downstream, DownstreamError, DownstreamRequest, DownstreamResponse};

const MIN: i64 = 60_000;

/// A querier: the engine over a memstore, answering in the querier's JSON.
struct EngineQuerier {
    engine: Engine,
    store: MemStore,
    calls: AtomicUsize,
}

fn pairs(l: &Labels) -> Vec<(String, String)> {
    l.iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

#[async_trait]
impl Downstream for EngineQuerier {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (path, qs) = req
            .path_and_query
            .split_once('?')
            .unwrap_or((&req.path_and_query, ""));
        let p = Params::parse(Some(qs), &req.body);
        let query = p.get("query").unwrap_or("");
        let got = if path.ends_with("/query_range") {
            let start = parse_time("start", p.get("start").unwrap()).unwrap();
            let end = parse_time("end", p.get("end").unwrap()).unwrap();
            let step = parse_duration_ms("step", p.get("step").unwrap()).unwrap();
            self.engine
                .range_query(&self.store, query, start, end, step)
                .await
        } else {
            let t = parse_time("time", p.get("time").unwrap()).unwrap();
            self.engine.instant_query(&self.store, query, t).await
        };
        let (status, body) = match got {
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(r#"{{"status":"error","errorType":"execution","error":"{e}"}}"#),
            ),
            Ok(r) => {
                let body = match r.value {
                    Value::Matrix(series) => write_matrix(&Matrix {
                        series: series
                            .iter()
                            .map(|s| SeriesData {
                                labels: pairs(&s.labels),
                                points: s
                                    .samples
                                    .iter()
                                    .map(|x| {
                                        (x.t, norn_server::prom_json::format_value(x.v).into())
                                    })
                                    .collect(),
                            })
                            .collect(),
                        warnings: r.warnings,
                        infos: r.infos,
                    }),
                    Value::Vector(v) => write_vector(&Vector {
                        samples: v
                            .iter()
                            .map(|s| {
                                (
                                    pairs(&s.labels),
                                    s.t,
                                    norn_server::prom_json::format_value(s.v),
                                )
                            })
                            .collect(),
                        warnings: r.warnings,
                        infos: r.infos,
                    }),
                    other => panic!("unexpected result {other:?}"),
                };
                (StatusCode::OK, body)
            }
        };
        Ok(DownstreamResponse {
            status,
            content_type: None,
            body: Bytes::from(body),
        })
    }
}

/// 2 jobs × 5 instances × 3 methods of a counter, and a gauge per instance; values differ
/// everywhere, so `topk` has no ties to break differently.
fn store() -> MemStore {
    let store = MemStore::new();
    for (j, job) in ["api", "web"].into_iter().enumerate() {
        for i in 0..5 {
            for (m, method) in ["GET", "POST", "PUT"].into_iter().enumerate() {
                let l = Labels::from_pairs([
                    ("__name__", "requests_total"),
                    ("job", job),
                    ("instance", &*format!("i{i}")),
                    ("method", method),
                ]);
                let rate = 1.0 + (j * 17 + i * 5 + m) as f64 * 0.13;
                store.add_series(
                    &l,
                    (0..120)
                        .map(|k| Sample::new(k * 15_000 + 7_000, (k as f64 * rate * 15.0).round())),
                );
            }
            let l = Labels::from_pairs([
                ("__name__", "memory_bytes"),
                ("job", job),
                ("instance", &*format!("i{i}")),
            ]);
            let base = 1e8 + (j * 5 + i) as f64 * 3.3e6;
            store.add_series(
                &l,
                (0..120).map(|k| {
                    Sample::new(
                        k * 15_000 + 7_000,
                        base + ((k * 7919 + i as i64 * 13) % 1000) as f64 * 1e3,
                    )
                }),
            );
        }
    }
    store
}

fn frontend(querier: Arc<EngineQuerier>, shard: bool) -> (axum::Router, FrontendMetrics) {
    let metrics = FrontendMetrics::new(&prometheus::Registry::new()).unwrap();
    let limits = Limits {
        query_sharding_total_shards: 3,
        max_query_parallelism: 4,
        ..Limits::default()
    };
    let f = Frontend::new(
        Config {
            parallelize_shardable_queries: shard,
            split_queries_by_interval: std::time::Duration::from_secs(600),
            ..Config::default()
        },
        querier as Arc<dyn Downstream>,
        None,
        Arc::new(Overrides::new(limits)),
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        metrics.clone(),
    );
    (routes(f), metrics)
}

async fn ask(app: &axum::Router, path_and_query: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::get(path_and_query)
        .header("X-Scope-OrgID", "t")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// `labels → [(t, value)]` of a matrix or vector answer.
fn normalise(v: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<(f64, f64)>> {
    let mut out = std::collections::BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let key = s["metric"].to_string();
        let points: Vec<&serde_json::Value> = match s.get("values") {
            Some(vs) => vs.as_array().unwrap().iter().collect(),
            None => vec![&s["value"]],
        };
        let points = points
            .iter()
            .map(|p| {
                (
                    p[0].as_f64().unwrap(),
                    p[1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect();
        assert!(out.insert(key, points).is_none(), "duplicate series");
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

const SHARDED: &[&str] = &[
    "sum(rate(requests_total[5m]))",
    "sum by (job) (rate(requests_total[5m]))",
    "sum without (instance) (rate(requests_total[5m]))",
    "count by (method) (requests_total)",
    "count(memory_bytes > 1.1e8)",
    "min by (job) (memory_bytes)",
    "max(max_over_time(memory_bytes[10m]))",
    "avg by (method) (rate(requests_total[5m]))",
    "avg(memory_bytes)",
    "group by (job) (memory_bytes)",
    "topk(3, memory_bytes)",
    "topk by (job) (2, rate(requests_total[5m]))",
    "bottomk(4, rate(requests_total[5m]) * 60)",
    "sum(quantile_over_time(0.9, memory_bytes[10m]))",
    "max(sum by (job) (rate(requests_total[5m])))",
    "count(sum by (job, instance) (requests_total))",
    "topk(1, avg by (instance) (memory_bytes))",
    "sum(max_over_time(rate(requests_total[1m])[10m:1m]))",
    "sum by (job) (increase(requests_total[10m] offset 5m))",
    "max by (job) (clamp_max(memory_bytes / 1e6, 110))",
];

const WHOLE: &[&str] = &[
    "quantile by (job) (0.75, memory_bytes)",
    "stddev(memory_bytes)",
    "count_values(\"v\", floor(memory_bytes / 1e7))",
    "sum(rate(requests_total[5m])) / sum(requests_total)",
    "sum by (job, instance) (rate(requests_total[5m])) / on(job, instance) memory_bytes",
    "absent(nonexistent)",
    "label_replace(sum by (job) (memory_bytes), \"j\", \"$1\", \"job\", \"(.*)\")",
    "rate(requests_total[5m])",
];

#[tokio::test]
async fn sharded_answers_equal_unsharded_ones_over_the_engine() {
    let querier = Arc::new(EngineQuerier {
        engine: Engine::new(EngineOptions::default()),
        store: store(),
        calls: AtomicUsize::new(0),
    });
    let (plain, _) = frontend(Arc::clone(&querier), false);
    let (sharded, metrics) = frontend(Arc::clone(&querier), true);
    let (start, end, t) = (10 * MIN + 3_000, 29 * MIN + 3_000, 20 * MIN + 3_000);
    let mut checked = 0;
    for (i, q) in SHARDED.iter().chain(WHOLE).enumerate() {
        let enc = urlencode(q);
        for path in [
            format!(
                "/prometheus/api/v1/query?query={enc}&time={}",
                t as f64 / 1000.0
            ),
            format!(
                "/prometheus/api/v1/query_range?query={enc}&start={}&end={}&step=60",
                start as f64 / 1000.0,
                end as f64 / 1000.0
            ),
        ] {
            let before = metrics.sharded_queries.get();
            let (ps, pv) = ask(&plain, &path).await;
            let (ss, sv) = ask(&sharded, &path).await;
            assert_eq!(ps, StatusCode::OK, "{q}: {pv}");
            assert_eq!(ss, StatusCode::OK, "{q}: {sv}");
            assert_eq!(pv["data"]["resultType"], sv["data"]["resultType"], "{q}");
            let (a, b) = (normalise(&pv), normalise(&sv));
            assert!(!a.is_empty() || q.contains("absent"), "{q}: no data");
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{q} {path}"
            );
            for (k, pa) in &a {
                let pb = &b[k];
                assert_eq!(pa.len(), pb.len(), "{q}: {k}");
                for ((ta, va), (tb, vb)) in pa.iter().zip(pb) {
                    assert!(
                        ta == tb && close(*va, *vb),
                        "{q}: {k} ({ta}, {va}) vs ({tb}, {vb})"
                    );
                }
            }
            let was_sharded = metrics.sharded_queries.get() > before;
            assert_eq!(was_sharded, i < SHARDED.len(), "{q}: sharded {was_sharded}");
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * (SHARDED.len() + WHOLE.len()));
    // Each sharded run sent 3 legs per part (6 for avg) per split leg.
    assert!(metrics.sharded_query_legs() >= 3 * 2 * SHARDED.len() as u64);
}

/// Fails the legs of one shard with a 422, as a querier refusing a query does.
struct FailOneShard(Arc<EngineQuerier>);

#[async_trait]
impl Downstream for FailOneShard {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        if String::from_utf8_lossy(&req.body).contains("2_of_3") {
            return Ok(DownstreamResponse {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                content_type: None,
                body: Bytes::from_static(
                    br#"{"status":"error","errorType":"execution","error":"leg refused"}"#,
                ),
            });
        }
        self.0.call(req).await
    }
}

#[tokio::test]
async fn a_failing_leg_fails_the_query_with_the_queriers_answer() {
    let querier = Arc::new(EngineQuerier {
        engine: Engine::new(EngineOptions::default()),
        store: store(),
        calls: AtomicUsize::new(0),
    });
    let metrics = FrontendMetrics::new(&prometheus::Registry::new()).unwrap();
    let f = Frontend::new(
        Config {
            parallelize_shardable_queries: true,
            ..Config::default()
        },
        Arc::new(FailOneShard(Arc::clone(&querier))) as Arc<dyn Downstream>,
        None,
        Arc::new(Overrides::new(Limits {
            query_sharding_total_shards: 3,
            ..Limits::default()
        })),
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        metrics,
    );
    let app = routes(f);
    for path in [
        "/prometheus/api/v1/query?query=sum(memory_bytes)&time=600",
        "/prometheus/api/v1/query_range?query=sum(memory_bytes)&start=600&end=1200&step=60",
    ] {
        let (s, v) = ask(&app, path).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"], "leg refused");
    }
    // Legs of the other shards reached the querier: the query really ran sharded.
    assert!(querier.calls.load(Ordering::SeqCst) >= 2);
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FrontendMetrics {
    fn sharded_query_legs(&self) -> u64 {
        self.sharded_legs.get()
    }
}
