//! The frontend's pipeline end to end over a synthetic querier: split + merge equals the
//! unsplit answer (property test), the cache answers repeats with the same bytes and never
//! keeps the freshest part, 5xx legs are retried and 4xx are not, and bad input and the
//! tenant's limits get Prometheus' 400s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use norn_cache::{Cache, CacheMetrics, InMemoryCache};
use norn_limits::{Limits, Overrides};
use norn_server::TenantResolver;
use norn_server::params::{Params, parse_duration_ms, parse_time};
use proptest::prelude::*;
use tower::ServiceExt;

use crate::api::{Frontend, routes};
use crate::metrics::FrontendMetrics;
use crate::response::{Matrix, PointValue, SeriesData, write_matrix};
use crate::{Config, Downstream, DownstreamError, DownstreamRequest, DownstreamResponse};

/// A querier whose answer is a pure function of the range (plus `version`, to tell old
/// answers from new): three series, each present only on some steps, so legs see different
/// series sets. It counts calls and in-flight calls, and fails the first `fail_first` calls
/// with `fail_status`.
#[derive(Default)]
struct Synthetic {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    fail_first: AtomicUsize,
    fail_status: AtomicUsize,
    version: AtomicUsize,
    /// Failures say `timeout` instead of `unavailable`.
    fail_body_timeout: std::sync::atomic::AtomicBool,
    delay_ms: u64,
}

impl Synthetic {
    fn answer(&self, start: i64, end: i64, step: i64) -> Matrix {
        let version = self.version.load(Ordering::SeqCst);
        let mut series = Vec::new();
        for i in 0..3i64 {
            let points: Vec<(i64, PointValue)> = (0..)
                .map(|k| start + k * step)
                .take_while(|t| *t <= end)
                .filter(|t| (t.div_euclid(7_000) + i) % 3 != 0)
                .map(|t| {
                    (
                        t,
                        format!("{}", (t as f64) / 1000.0 + i as f64 + version as f64 * 0.5).into(),
                    )
                })
                .collect();
            if !points.is_empty() {
                series.push(SeriesData {
                    labels: vec![("__name__".into(), "m".into()), ("i".into(), i.to_string())],
                    points,
                });
            }
        }
        Matrix {
            series,
            ..Matrix::default()
        }
    }
}

#[async_trait]
impl Downstream for Synthetic {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let failing = self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Ok(DownstreamResponse {
                status: StatusCode::from_u16(self.fail_status.load(Ordering::SeqCst) as u16)
                    .unwrap(),
                content_type: None,
                body: if self.fail_body_timeout.load(Ordering::SeqCst) {
                    Bytes::from_static(
                        br#"{"status":"error","errorType":"timeout","error":"query timed out"}"#,
                    )
                } else {
                    Bytes::from_static(
                        br#"{"status":"error","errorType":"unavailable","error":"boom"}"#,
                    )
                },
            });
        }
        let (path, query) = req
            .path_and_query
            .split_once('?')
            .unwrap_or((&req.path_and_query, ""));
        assert!(path.ends_with("/query_range"), "{path}");
        let p = Params::parse(Some(query), &req.body);
        let start = parse_time("start", p.get("start").unwrap()).unwrap();
        let end = parse_time("end", p.get("end").unwrap()).unwrap();
        let step = parse_duration_ms("step", p.get("step").unwrap()).unwrap();
        Ok(DownstreamResponse {
            status: StatusCode::OK,
            content_type: None,
            body: write_matrix(&self.answer(start, end, step)).into(),
        })
    }
}

struct Setup {
    app: axum::Router,
    querier: Arc<Synthetic>,
    metrics: FrontendMetrics,
}

fn setup(config: Config, limits: Limits, querier: Synthetic) -> Setup {
    let querier = Arc::new(querier);
    let metrics = FrontendMetrics::new(&prometheus::Registry::new()).unwrap();
    let cache: Arc<dyn Cache> = Arc::new(InMemoryCache::new(
        64 << 20,
        Arc::new(CacheMetrics::unregistered("results-cache", "inmemory")),
    ));
    let f = Frontend::new(
        config,
        Arc::clone(&querier) as Arc<dyn Downstream>,
        Some(cache),
        Arc::new(Overrides::new(limits)),
        TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        },
        metrics.clone(),
    );
    Setup {
        app: routes(f),
        querier,
        metrics,
    }
}

fn cached(split: Duration) -> Config {
    Config {
        split_queries_by_interval: split,
        cache_results: true,
        max_retries: 2,
        ..Config::default()
    }
}

async fn get(
    app: &axum::Router,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
) -> (StatusCode, String) {
    get_with(app, query, start, end, step, &[]).await
}

async fn get_with(
    app: &axum::Router,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut form = String::new();
    norn_server::params::push_form_pair(&mut form, "query", query);
    norn_server::params::push_form_pair(&mut form, "start", &format!("{}", start as f64 / 1000.0));
    norn_server::params::push_form_pair(&mut form, "end", &format!("{}", end as f64 / 1000.0));
    norn_server::params::push_form_pair(&mut form, "step", &format!("{}", step as f64 / 1000.0));
    let mut req = Request::post("/prometheus/api/v1/query_range")
        .header("x-scope-orgid", "t1")
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(form)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 30)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the range, step, split interval and cache state, the frontend answers with
    /// the unsplit query's bytes, and a repeat gives the same bytes again.
    #[test]
    fn split_and_merge_equal_the_unsplit_answer(
        start in 1_600_000_000_000i64..1_600_000_100_000,
        points in 0i64..300,
        step in 1i64..20_000,
        interval in prop_oneof![Just(0i64), 1_000i64..100_000],
        cache in any::<bool>(),
        align in any::<bool>(),
    ) {
        rt().block_on(async {
            let config = Config {
                split_queries_by_interval: Duration::from_millis(interval as u64),
                cache_results: cache,
                align_queries_with_step: align,
                ..Config::default()
            };
            let s = setup(config, Limits::default(), Synthetic::default());
            let end = start + points * step;
            let (want_start, want_end) = if align {
                crate::split::align(start, end, step)
            } else {
                (start, end)
            };
            let want = write_matrix(&s.querier.answer(want_start, want_end, step));
            let (status, got) = get(&s.app, "m", start, end, step).await;
            assert_eq!(status, StatusCode::OK, "{got}");
            assert_eq!(got, want);
            let (_, again) = get(&s.app, "m", start, end, step).await;
            assert_eq!(again, want);
        });
    }
}

#[tokio::test]
async fn repeats_come_from_the_cache_except_the_freshest_part() {
    let s = setup(
        cached(Duration::from_secs(60)),
        Limits::default(),
        Synthetic::default(),
    );
    let now = norn_model::now_ms() / 1000 * 1000;
    // Old enough to be cached whole: 10 minutes ending 20 minutes ago, 6 legs of a minute.
    let (start, end) = (now - 30 * 60_000, now - 20 * 60_000 - 1);
    let (_, first) = get(&s.app, "m", start, end, 10_000).await;
    let calls = s.querier.calls.load(Ordering::SeqCst);
    assert_eq!(s.metrics.cache_misses.get(), calls as u64);
    let (_, second) = get(&s.app, "m", start, end, 10_000).await;
    assert_eq!(first, second);
    assert_eq!(
        s.querier.calls.load(Ordering::SeqCst),
        calls,
        "all from the cache"
    );
    assert_eq!(
        s.metrics.cache_hits.get(),
        s.metrics.split_queries.get() / 2
    );
    // New data: the cached part keeps the old answer, the last 10 minutes are asked again.
    s.querier.version.store(1, Ordering::SeqCst);
    let (_, old) = get(&s.app, "m", start, end, 10_000).await;
    assert_eq!(old, first, "cached extents are not refetched");
    let (start, end) = (now - 15 * 60_000, now);
    let (_, a) = get(&s.app, "m", start, end, 10_000).await;
    let before = s.querier.calls.load(Ordering::SeqCst);
    let (_, b) = get(&s.app, "m", start, end, 10_000).await;
    assert_eq!(a, b);
    let asked = s.querier.calls.load(Ordering::SeqCst) - before;
    assert!(
        (1..=12).contains(&asked),
        "the freshest 10 minutes ({asked} legs) are always asked"
    );
    // `Cache-Control: no-store` skips the cache: every leg is asked.
    let before = s.querier.calls.load(Ordering::SeqCst);
    let (_, c) = get_with(
        &s.app,
        "m",
        now - 30 * 60_000,
        now - 20 * 60_000 - 1,
        10_000,
        &[("cache-control", "no-store")],
    )
    .await;
    assert_ne!(c, first, "answered by the querier's new version");
    assert!(s.querier.calls.load(Ordering::SeqCst) - before >= 10);
}

#[tokio::test]
async fn five_hundreds_are_retried_and_four_hundreds_are_not() {
    let q = Synthetic::default();
    q.fail_first.store(2, Ordering::SeqCst);
    q.fail_status.store(503, Ordering::SeqCst);
    let s = setup(cached(Duration::ZERO), Limits::default(), q);
    let (status, body) = get(&s.app, "m", 0, 60_000, 1_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.metrics.retries.get(), 2);
    // More failures than retries: the querier's last answer is ours.
    s.querier.fail_first.store(3, Ordering::SeqCst);
    let (status, body) = get(&s.app, "m", 0, 61_000, 1_000).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("boom"), "{body}");
    // A timeout is final: it would only run as long again.
    s.querier.fail_first.store(1, Ordering::SeqCst);
    s.querier.fail_status.store(503, Ordering::SeqCst);
    s.querier.fail_body_timeout.store(true, Ordering::SeqCst);
    let retries = s.metrics.retries.get();
    let (status, body) = get(&s.app, "m", 0, 63_000, 1_000).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(s.metrics.retries.get(), retries);
    s.querier.fail_body_timeout.store(false, Ordering::SeqCst);
    // A 4xx is final.
    s.querier.fail_first.store(1, Ordering::SeqCst);
    s.querier.fail_status.store(422, Ordering::SeqCst);
    let retries = s.metrics.retries.get();
    let (status, _) = get(&s.app, "m", 0, 62_000, 1_000).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.metrics.retries.get(), retries);
}

#[tokio::test]
async fn legs_run_at_most_max_query_parallelism_at_once() {
    let limits = Limits {
        max_query_parallelism: 3,
        ..Limits::default()
    };
    let q = Synthetic {
        delay_ms: 20,
        ..Synthetic::default()
    };
    let s = setup(
        Config {
            split_queries_by_interval: Duration::from_secs(1),
            ..Config::default()
        },
        limits,
        q,
    );
    let (status, _) = get(&s.app, "m", 0, 20_000, 500).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.querier.calls.load(Ordering::SeqCst), 21);
    assert_eq!(s.querier.max_in_flight.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bad_input_and_limits_get_prometheus_four_hundreds() {
    let limits = Limits {
        max_query_length: Duration::from_secs(3600),
        max_total_query_length: Duration::from_secs(7200),
        ..Limits::default()
    };
    let s = setup(
        cached(Duration::from_secs(600)),
        limits,
        Synthetic::default(),
    );
    let cases: &[(&str, i64, i64, i64, &str)] = &[
        (
            "sum(rate(m[5m])",
            0,
            60_000,
            1_000,
            "invalid parameter \"query\": 1:4: parse error: unclosed left parenthesis",
        ),
        (
            "m",
            0,
            11_001_000,
            1_000,
            "exceeded maximum resolution of 11,000 points per timeseries",
        ),
        (
            "m",
            0,
            60_000,
            0,
            "zero or negative query resolution step widths are not accepted",
        ),
        (
            "m",
            60_000,
            0,
            1_000,
            "end timestamp must not be before start time",
        ),
        ("m", 0, 3_700_000, 1_000, "max_query_length"),
        ("m", 0, 7_300_000, 1_000, "max_total_query_length"),
    ];
    for (q, start, end, step, want) in cases {
        let (status, body) = get(&s.app, q, *start, *end, *step).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{q} {start} {end} {step}: {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "bad_data");
        assert!(v["error"].as_str().unwrap().contains(want), "{body}");
    }
    assert_eq!(
        s.querier.calls.load(Ordering::SeqCst),
        0,
        "nothing reached the querier"
    );
    // And it keeps serving.
    let (status, _) = get(&s.app, "m", 0, 60_000, 1_000).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn lookback_moves_the_start_up_on_the_grid() {
    let limits = Limits {
        max_query_lookback: Duration::from_secs(3600),
        ..Limits::default()
    };
    let s = setup(Config::default(), limits, Synthetic::default());
    let now = norn_model::now_ms();
    // Wholly older: empty, and no querier asked.
    let (status, body) = get(&s.app, "m", now - 7_200_000, now - 3_700_000, 60_000).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, write_matrix(&Matrix::default()));
    assert_eq!(s.querier.calls.load(Ordering::SeqCst), 0);
    // Straddling: only the grid's points inside the last hour.
    let start = now - 7_200_000;
    let (_, body) = get(&s.app, "m", start, now, 60_000).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Every step has a point in two of the three series: the earliest is the first step.
    let first_ms = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["values"][0][0].as_f64().unwrap() * 1000.0).round() as i64)
        .min()
        .unwrap();
    assert!(
        first_ms >= now - 3_600_000 && first_ms < now - 3_600_000 + 2 * 60_000,
        "{first_ms}"
    );
    assert_eq!((first_ms - start) % 60_000, 0, "on the query's grid");
}
