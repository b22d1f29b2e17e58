//! Engine tests over a [`MemStore`]: one group per operator family, function family and
//! time modifier, plus limits and error reporting. No I/O.

use std::time::Duration;

use norn_model::{ErrorKind, Labels, stale_nan};

use crate::memstore::MemStore;
use crate::{Engine, EngineOptions, PromqlError, QueryResult, Value};

const M: i64 = 60_000;

fn labels(s: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(s.iter().copied())
}

/// Adds `values` to a series at `0, step, 2*step, ...`; `None` leaves a gap.
fn load(store: &MemStore, l: &[(&str, &str)], step: i64, values: &[Option<f64>]) {
    let l = labels(l);
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v {
            store.add_sample(&l, i as i64 * step, *v);
        }
    }
}

fn vals(v: &[f64]) -> Vec<Option<f64>> {
    v.iter().copied().map(Some).collect()
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn instant(store: &MemStore, q: &str, t: i64) -> Result<QueryResult, PromqlError> {
    run(Engine::default().instant_query(store, q, t))
}

/// Instant vector result as sorted `(labels text, value)` pairs.
fn vector(store: &MemStore, q: &str, t: i64) -> Vec<(String, f64)> {
    match instant(store, q, t)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .value
    {
        Value::Vector(v) => {
            let mut out: Vec<(String, f64)> =
                v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{q}: expected vector, got {other:?}"),
    }
}

fn scalar(store: &MemStore, q: &str, t: i64) -> f64 {
    match instant(store, q, t)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .value
    {
        Value::Scalar { v, .. } => v,
        other => panic!("{q}: expected scalar, got {other:?}"),
    }
}

fn one(store: &MemStore, q: &str, t: i64) -> f64 {
    let v = vector(store, q, t);
    assert_eq!(v.len(), 1, "{q}: {v:?}");
    v[0].1
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn counters() -> MemStore {
    let s = MemStore::new();
    // Two counters scraped every minute for 10 minutes.
    load(
        &s,
        &[("__name__", "req_total"), ("job", "a")],
        M,
        &vals(&[0., 10., 20., 30., 40., 50., 60., 70., 80., 90., 100.]),
    );
    load(
        &s,
        &[("__name__", "req_total"), ("job", "b")],
        M,
        &vals(&[0., 20., 40., 60., 80., 100., 120., 140., 160., 180., 200.]),
    );
    s
}

#[test]
fn lookback_and_staleness() {
    let s = MemStore::new();
    load(
        &s,
        &[("__name__", "m")],
        10_000,
        &[Some(1.0), Some(2.0), Some(stale_nan()), Some(3.0)],
    );
    assert_eq!(one(&s, "m", 10_000), 2.0);
    assert!(
        vector(&s, "m", 20_000).is_empty(),
        "a stale marker ends the series"
    );
    assert_eq!(one(&s, "m", 30_000), 3.0);
    assert_eq!(one(&s, "m", 30_000 + 299_999), 3.0);
    assert!(
        vector(&s, "m", 30_000 + 300_000).is_empty(),
        "lookback is left-open"
    );
    // A stale marker is never a value in a range either.
    assert_eq!(one(&s, "count_over_time(m[1m])", 30_000), 3.0);
}

#[test]
fn configurable_lookback() {
    let s = MemStore::new();
    load(&s, &[("__name__", "m")], M, &[Some(1.0)]);
    let e = Engine::new(EngineOptions {
        lookback_delta_ms: M,
        ..Default::default()
    });
    let r = run(e.instant_query(&s, "m", 2 * M)).unwrap();
    assert_eq!(r.value, Value::Vector(vec![]));
}

#[test]
fn range_windows_are_left_open() {
    let s = counters();
    assert_eq!(
        one(&s, "count_over_time(req_total{job=\"a\"}[5m])", 10 * M),
        5.0
    );
    assert_eq!(
        one(&s, "sum_over_time(req_total{job=\"a\"}[2m])", 10 * M),
        190.0
    );
}

#[test]
fn offset_and_at_modifiers() {
    let s = counters();
    assert_eq!(one(&s, "req_total{job=\"a\"} offset 5m", 10 * M), 50.0);
    assert_eq!(one(&s, "req_total{job=\"a\"} offset -5m", 2 * M), 70.0);
    assert_eq!(one(&s, "req_total{job=\"a\"} @ 120", 10 * M), 20.0);
    assert_eq!(one(&s, "req_total{job=\"a\"} @ 180 offset 1m", 0), 20.0);
    let r =
        run(Engine::default().range_query(&s, "req_total{job=\"a\"} @ start()", 3 * M, 5 * M, M))
            .unwrap();
    let Value::Matrix(m) = r.value else {
        panic!("matrix")
    };
    assert_eq!(
        m[0].samples.iter().map(|x| x.v).collect::<Vec<_>>(),
        [30.0, 30.0, 30.0]
    );
    let r = run(Engine::default().range_query(&s, "req_total{job=\"a\"} @ end()", 3 * M, 5 * M, M))
        .unwrap();
    let Value::Matrix(m) = r.value else {
        panic!("matrix")
    };
    assert_eq!(
        m[0].samples.iter().map(|x| x.v).collect::<Vec<_>>(),
        [50.0, 50.0, 50.0]
    );
}

#[test]
fn counter_functions() {
    let s = counters();
    assert!(close(
        one(&s, "rate(req_total{job=\"a\"}[5m])", 10 * M),
        10.0 / 60.0
    ));
    assert!(close(
        one(&s, "increase(req_total{job=\"a\"}[5m])", 10 * M),
        50.0
    ));
    assert!(close(
        one(&s, "irate(req_total{job=\"b\"}[5m])", 10 * M),
        20.0 / 60.0
    ));
    assert!(close(
        one(&s, "idelta(req_total{job=\"b\"}[5m])", 10 * M),
        20.0
    ));
    assert!(close(
        one(&s, "deriv(req_total{job=\"a\"}[5m])", 10 * M),
        10.0 / 60.0
    ));
    assert!(close(
        one(&s, "delta(req_total{job=\"a\"}[5m])", 10 * M),
        50.0
    ));
    assert_eq!(one(&s, "resets(req_total{job=\"a\"}[10m])", 10 * M), 0.0);
    assert_eq!(one(&s, "changes(req_total{job=\"a\"}[10m])", 10 * M), 9.0);
    // predict_linear extrapolates the fitted line.
    assert!(close(
        one(&s, "predict_linear(req_total{job=\"a\"}[5m], 60)", 10 * M),
        110.0
    ));
}

#[test]
fn counter_reset_is_compensated() {
    let s = MemStore::new();
    load(
        &s,
        &[("__name__", "c_total")],
        M,
        &vals(&[0., 10., 20., 5., 15.]),
    );
    assert!(close(
        one(&s, "increase(c_total[4m])", 4 * M),
        25.0 * 4.0 / 3.0
    ));
    assert_eq!(one(&s, "resets(c_total[5m])", 4 * M), 1.0);
}

#[test]
fn over_time_functions() {
    let s = MemStore::new();
    load(&s, &[("__name__", "g")], M, &vals(&[1., 5., 3., 2.]));
    let t = 3 * M;
    assert_eq!(one(&s, "avg_over_time(g[5m])", t), 2.75);
    assert_eq!(one(&s, "min_over_time(g[5m])", t), 1.0);
    assert_eq!(one(&s, "max_over_time(g[5m])", t), 5.0);
    assert_eq!(one(&s, "last_over_time(g[5m])", t), 2.0);
    assert_eq!(one(&s, "first_over_time(g[5m])", t), 1.0);
    assert_eq!(one(&s, "present_over_time(g[5m])", t), 1.0);
    assert_eq!(one(&s, "quantile_over_time(0.5, g[5m])", t), 2.5);
    assert!(close(one(&s, "stdvar_over_time(g[5m])", t), 2.1875));
    assert!(vector(&s, "absent_over_time(g[5m])", t).is_empty());
    assert_eq!(
        vector(&s, "absent_over_time(nope{a=\"b\"}[5m])", t),
        [("{a=\"b\"}".to_string(), 1.0)]
    );
}

#[test]
fn arithmetic_and_comparisons() {
    let s = counters();
    let t = 10 * M;
    assert_eq!(
        vector(&s, "req_total * 2", t),
        [("{job=\"a\"}".into(), 200.0), ("{job=\"b\"}".into(), 400.0)]
    );
    assert_eq!(
        vector(&s, "req_total > 150", t),
        [("req_total{job=\"b\"}".into(), 200.0)]
    );
    assert_eq!(
        vector(&s, "150 < req_total", t),
        [("req_total{job=\"b\"}".into(), 200.0)]
    );
    assert_eq!(
        vector(&s, "req_total > bool 150", t),
        [("{job=\"a\"}".into(), 0.0), ("{job=\"b\"}".into(), 1.0)]
    );
    assert_eq!(scalar(&s, "2 ^ 3 % 5", t), 3.0);
    assert_eq!(scalar(&s, "1 < bool 2", t), 1.0);
    assert_eq!(
        one(&s, "req_total{job=\"a\"} + on(job) req_total{job=\"a\"}", t),
        200.0
    );
    assert!(vector(&s, "req_total{job=\"a\"} / on(job) req_total{job=\"b\"}", t).is_empty());
    assert_eq!(
        vector(&s, "-req_total{job=\"a\"}", t),
        [("{job=\"a\"}".into(), -100.0)]
    );
}

#[test]
fn vector_matching_cardinalities() {
    let s = MemStore::new();
    load(
        &s,
        &[("__name__", "req"), ("method", "get"), ("status", "200")],
        M,
        &vals(&[10.]),
    );
    load(
        &s,
        &[("__name__", "req"), ("method", "post"), ("status", "200")],
        M,
        &vals(&[20.]),
    );
    load(
        &s,
        &[("__name__", "limit"), ("status", "200"), ("owner", "x")],
        M,
        &vals(&[100.]),
    );
    let got = vector(&s, "req / on(status) group_left(owner) limit", 0);
    assert_eq!(
        got,
        [
            ("{method=\"get\", owner=\"x\", status=\"200\"}".into(), 0.1),
            ("{method=\"post\", owner=\"x\", status=\"200\"}".into(), 0.2)
        ]
    );
    let got = vector(&s, "limit * on(status) group_right req", 0);
    assert_eq!(got.len(), 2);
    let err = instant(&s, "req * on(status) limit", 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("many-to-one matching must be explicit"),
        "{err}"
    );
    let err = instant(&s, "limit * on(status) req", 0).unwrap_err();
    assert!(err.to_string().contains("on the right hand-side"), "{err}");
    let err = instant(&s, "limit * on(status) group_left req", 0).unwrap_err();
    assert!(
        err.to_string()
            .contains("many-to-many matching not allowed"),
        "{err}"
    );
}

#[test]
fn set_operators() {
    let s = counters();
    let t = 10 * M;
    assert_eq!(vector(&s, "req_total and req_total{job=\"a\"}", t).len(), 1);
    assert_eq!(
        vector(&s, "req_total unless req_total{job=\"a\"}", t),
        [("req_total{job=\"b\"}".into(), 200.0)]
    );
    assert_eq!(vector(&s, "req_total{job=\"a\"} or req_total", t).len(), 2);
    assert_eq!(vector(&s, "req_total and on() vector(1)", t).len(), 2);
}

#[test]
fn aggregations() {
    let s = counters();
    load(
        &s,
        &[("__name__", "req_total"), ("job", "c"), ("env", "x")],
        M,
        &vals(&[5.; 11]),
    );
    let t = 10 * M;
    assert_eq!(vector(&s, "sum(req_total)", t), [("{}".into(), 305.0)]);
    assert_eq!(vector(&s, "count(req_total)", t), [("{}".into(), 3.0)]);
    assert_eq!(one(&s, "avg(req_total)", t), 305.0 / 3.0);
    assert_eq!(one(&s, "min(req_total)", t), 5.0);
    assert_eq!(one(&s, "max(req_total)", t), 200.0);
    assert_eq!(one(&s, "group(req_total)", t), 1.0);
    assert_eq!(one(&s, "quantile(0.5, req_total)", t), 100.0);
    assert_eq!(
        vector(&s, "sum by (env) (req_total)", t),
        [("{env=\"x\"}".into(), 5.0), ("{}".into(), 300.0)]
    );
    assert_eq!(vector(&s, "sum without (job) (req_total)", t).len(), 2);
    assert_eq!(
        vector(&s, "topk(1, req_total)", t),
        [("req_total{job=\"b\"}".into(), 200.0)]
    );
    assert_eq!(
        vector(&s, "bottomk(1, req_total)", t),
        [("req_total{env=\"x\", job=\"c\"}".into(), 5.0)]
    );
    assert!(close(one(&s, "stddev(req_total{env=\"\"})", t), 50.0));
    assert_eq!(
        vector(&s, "count_values(\"v\", req_total)", t),
        [
            ("{v=\"100\"}".into(), 1.0),
            ("{v=\"200\"}".into(), 1.0),
            ("{v=\"5\"}".into(), 1.0)
        ]
    );
    let err = instant(&s, "topk(scalar(nope), req_total)", t).unwrap_err();
    assert_eq!(err.to_string(), "Parameter value is NaN");
}

#[test]
fn subqueries() {
    let s = counters();
    // rate sampled every minute over the last 5 minutes: constant 1/6.
    assert!(close(
        one(
            &s,
            "max_over_time(rate(req_total{job=\"a\"}[2m])[5m:1m])",
            10 * M
        ),
        10.0 / 60.0
    ));
    assert_eq!(
        one(&s, "count_over_time(req_total{job=\"a\"}[5m:1m])", 10 * M),
        5.0
    );
    assert_eq!(
        one(
            &s,
            "count_over_time(req_total{job=\"a\"}[5m:2m] offset 1m)",
            10 * M
        ),
        2.0
    );
    assert_eq!(one(&s, "sum_over_time(vector(1)[3m:])", 10 * M), 3.0);
}

#[test]
fn delayed_name_removal() {
    let s = counters();
    let t = 10 * M;
    assert_eq!(
        vector(
            &s,
            "label_replace(rate(req_total{job=\"a\"}[5m]), \"n\", \"$1\", \"__name__\", \"(.+)\")",
            t
        )[0]
        .0,
        "{job=\"a\", n=\"req_total\"}"
    );
    assert_eq!(
        vector(&s, "last_over_time(req_total{job=\"a\"}[5m])", t)[0].0,
        "req_total{job=\"a\"}"
    );
    assert_eq!(
        vector(&s, "abs(req_total{job=\"a\"})", t)[0].0,
        "{job=\"a\"}"
    );
}

#[test]
fn label_functions() {
    let s = counters();
    let t = 10 * M;
    assert_eq!(
        vector(
            &s,
            "label_join(req_total{job=\"a\"}, \"x\", \"-\", \"job\", \"job\")",
            t
        )[0]
        .0,
        "req_total{job=\"a\", x=\"a-a\"}"
    );
    let err = instant(
        &s,
        "label_replace(req_total, \"job\", \"same\", \"job\", \".*\")",
        t,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "vector cannot contain metrics with the same labelset"
    );
    assert!(
        instant(
            &s,
            "label_replace(req_total, \"x\", \"\", \"job\", \"(\")",
            t
        )
        .is_err()
    );
    assert_eq!(
        vector(&s, "absent(nope{a=\"b\"})", t),
        [("{a=\"b\"}".into(), 1.0)]
    );
    assert!(vector(&s, "absent(req_total)", t).is_empty());
}

#[test]
fn math_functions() {
    let s = MemStore::new();
    load(&s, &[("__name__", "x")], M, &vals(&[-2.5]));
    assert_eq!(one(&s, "abs(x)", 0), 2.5);
    assert_eq!(one(&s, "ceil(x)", 0), -2.0);
    assert_eq!(one(&s, "floor(x)", 0), -3.0);
    assert_eq!(one(&s, "round(x)", 0), -2.0);
    assert_eq!(one(&s, "round(x, 2)", 0), -2.0);
    assert_eq!(one(&s, "clamp(x, -1, 1)", 0), -1.0);
    assert_eq!(one(&s, "clamp_min(x, 0)", 0), 0.0);
    assert_eq!(one(&s, "clamp_max(x, -3)", 0), -3.0);
    assert!(vector(&s, "clamp(x, 1, -1)", 0).is_empty());
    assert_eq!(one(&s, "sgn(x)", 0), -1.0);
    assert_eq!(scalar(&s, "scalar(x)", 0), -2.5);
    assert_eq!(scalar(&s, "time()", 90_000), 90.0);
    assert_eq!(one(&s, "timestamp(x)", 90_000), 0.0);
    assert_eq!(one(&s, "year(vector(0))", 0), 1970.0);
    assert_eq!(one(&s, "days_in_month(vector(2678400))", 0), 28.0);
    assert_eq!(one(&s, "day_of_week(vector(0))", 0), 4.0);
}

#[test]
fn histogram_quantile_over_classic_buckets() {
    let s = MemStore::new();
    for (le, v) in [("0.1", 10.0), ("0.5", 30.0), ("1", 40.0), ("+Inf", 40.0)] {
        load(
            &s,
            &[("__name__", "lat_bucket"), ("le", le)],
            M,
            &vals(&[v]),
        );
    }
    assert!(close(
        one(&s, "histogram_quantile(0.5, lat_bucket)", 0),
        0.3
    ));
    assert!(close(
        one(&s, "histogram_quantile(0.9, lat_bucket)", 0),
        0.8
    ));
    let r = instant(&s, "histogram_quantile(1.5, lat_bucket)", 0).unwrap();
    assert!(!r.warnings.is_empty());
}

#[test]
fn sort_orders_instant_vectors() {
    let s = counters();
    let Value::Vector(v) = instant(&s, "sort_desc(req_total)", 10 * M).unwrap().value else {
        panic!()
    };
    assert_eq!(v.iter().map(|x| x.v).collect::<Vec<_>>(), [200.0, 100.0]);
    let Value::Vector(v) = instant(&s, "sort(req_total)", 10 * M).unwrap().value else {
        panic!()
    };
    assert_eq!(v.iter().map(|x| x.v).collect::<Vec<_>>(), [100.0, 200.0]);
}

#[test]
fn queries_over_many_series_answer_then_free() {
    // More series than the engine frees before answering (FREE_AFTER_ANSWER_SERIES): the
    // answer goes first, the fetched data is freed after, and nothing of it is lost.
    let s = MemStore::new();
    let n = super::FREE_AFTER_ANSWER_SERIES + 3_616;
    for i in 0..n {
        let id = i.to_string();
        load(
            &s,
            &[("__name__", "x"), ("i", &id)],
            M,
            &vals(&[i as f64, i as f64]),
        );
    }
    let total = (n * (n - 1) / 2) as f64;
    assert_eq!(one(&s, "sum(x)", M), total);
    assert_eq!(one(&s, "count(x)", M), n as f64);
    let r = run(Engine::default().range_query(&s, "sum(x)", 0, M, M)).unwrap();
    let Value::Matrix(m) = r.value else {
        panic!("matrix")
    };
    let got: Vec<f64> = m[0].samples.iter().map(|x| x.v).collect();
    assert_eq!(got, vec![total, total]);
    // The same process answers the next query as before.
    assert_eq!(one(&s, "count(x{i=\"7\"})", M), 1.0);
}

#[test]
fn range_query_is_sorted_matrix() {
    let s = counters();
    let r = run(Engine::default().range_query(&s, "req_total", 0, 2 * M, M)).unwrap();
    let Value::Matrix(m) = r.value else {
        panic!("matrix")
    };
    assert_eq!(m.len(), 2);
    assert!(m[0].labels < m[1].labels);
    assert_eq!(
        m[0].samples.iter().map(|x| (x.t, x.v)).collect::<Vec<_>>(),
        [(0, 0.0), (M, 10.0), (2 * M, 20.0)]
    );
    let r = run(Engine::default().range_query(&s, "1 + 1", 0, M, M)).unwrap();
    let Value::Matrix(m) = r.value else {
        panic!("matrix")
    };
    assert_eq!(m.len(), 1);
    assert!(m[0].labels.is_empty());
    let r = run(Engine::default().range_query(&s, "sort(req_total)", 0, M, M)).unwrap();
    assert!(r.warnings[0].contains("sort is ineffective"));
}

/// A range query must give, at every step, exactly what an instant query at that step gives:
/// range queries take other paths (range functions evaluated across all steps at once,
/// cached grouping and output labels), instant queries the step-wise one.
#[test]
fn range_query_equals_instant_query_at_every_step() {
    let s = MemStore::new();
    let half = M / 2;
    // Counters with a reset, a gap and stale markers; a gauge with a NaN; a series not named
    // like a counter (for rate's info); samples every 30 s over 20 minutes.
    let n = 41;
    let mut reset = Vec::new();
    let mut gappy = Vec::new();
    let mut stale = Vec::new();
    let mut gauge = Vec::new();
    for i in 0..n {
        let x = i as f64;
        reset.push(Some(if i < 20 { 3.0 * x } else { x - 20.0 }));
        gappy.push((!(12..22).contains(&i)).then_some(x * x));
        stale.push(Some(if i == 15 || i == 30 {
            stale_nan()
        } else {
            2.0 * x
        }));
        gauge.push(Some(if i == 25 {
            f64::NAN
        } else {
            (x / 3.0).sin() * 10.0
        }));
    }
    load(
        &s,
        &[("__name__", "c_total"), ("job", "a"), ("k", "reset")],
        half,
        &reset,
    );
    load(
        &s,
        &[("__name__", "c_total"), ("job", "b"), ("k", "gappy")],
        half,
        &gappy,
    );
    load(
        &s,
        &[("__name__", "c_total"), ("job", "a"), ("k", "stale")],
        half,
        &stale,
    );
    load(&s, &[("__name__", "g"), ("job", "b")], half, &gauge);
    load(&s, &[("__name__", "g"), ("job", "c")], half, &reset);
    let small = SmallChunks(&s);
    let fns = [
        "rate",
        "increase",
        "delta",
        "irate",
        "idelta",
        "deriv",
        "avg_over_time",
        "sum_over_time",
        "count_over_time",
        "min_over_time",
        "max_over_time",
        "stddev_over_time",
        "stdvar_over_time",
        "last_over_time",
        "first_over_time",
        "ts_of_last_over_time",
        "ts_of_first_over_time",
        "ts_of_max_over_time",
        "ts_of_min_over_time",
        "present_over_time",
        "changes",
        "resets",
        "mad_over_time",
    ];
    let mut queries: Vec<String> = Vec::new();
    for f in fns {
        queries.push(format!("{f}({{__name__=~\"c_total|g\"}}[3m])"));
        queries.push(format!("{f}(g[90s] offset 2m)"));
        queries.push(format!("{f}(c_total[5m] @ 600)"));
    }
    queries.extend(
        [
            "sum by (job) (rate(c_total[2m]))",
            "sum without (k) (rate(c_total[2m]))",
            "sum(rate(g[2m]))",
            // Aggregations fused with the walk (crate::fused_aggregate), every operator.
            "avg by (job) (rate(c_total[2m]))",
            "count without (k) (irate({__name__=~\"c_total|g\"}[2m]))",
            "min by (job) (delta(g[2m]))",
            "max ((deriv({__name__=~\"c_total|g\"}[3m])))",
            "group by (job) (changes({__name__=~\"c_total|g\"}[2m]))",
            "stddev by (job) (avg_over_time({__name__=~\"c_total|g\"}[2m]))",
            "stdvar without (job) (sum_over_time({__name__=~\"c_total|g\"}[90s]))",
            "sum by (__name__, job) (rate(c_total[1m]))",
            "sum by (__name__, job) (last_over_time({__name__=~\"c_total|g\"}[1m]))",
            "max by (k) (max_over_time(c_total[2m] offset 1m))",
            "count by (__name__) (last_over_time({job=~\"a|b\"}[1m]))",
            "max by (job) (rate(c_total[2m])) / on (job) group_left sum by (job) (g)",
            "rate(c_total[2m]) * 2 > 0.01",
            "label_replace(rate(c_total[2m]), \"x\", \"$1\", \"k\", \"(.*)\")",
            "histogram_quantile(0.5, sum by (le) (label_replace(rate(c_total[3m]), \"le\", \"$1\", \"k\", \"(reset|stale)\")))",
            "max_over_time(rate(c_total[2m])[5m:1m])",
            "rate(c_total[2m]) or rate(g[2m])",
            "topk(2, rate(c_total[1m]))",
            "{__name__=~\"c_total|g\"}",
            "c_total offset 1m",
            "g @ 300",
            "timestamp(g)",
            "topk(2, g)",
            "bottomk(2, {__name__=~\"c_total|g\"})",
            "topk(3, {__name__=~\"c_total|g\"} * 0)",
            "bottomk by (job) (1, {__name__=~\"c_total|g\"} > 5)",
        ]
        .map(String::from),
    );
    for q in &queries {
        for (start, end, step) in [
            (0, 20 * M, half),
            (M / 4, 22 * M, 70_000),
            (5 * M, 5 * M, M),
            (0, 20 * M, 5 * M),
        ] {
            let r = run(Engine::default().range_query(&s, q, start, end, step))
                .unwrap_or_else(|e| panic!("{q}: {e}"));
            // The same from chunks of a few samples each, so that the sliding walk crosses
            // chunk boundaries inside its windows.
            let from_small = run(Engine::default().range_query(&small, q, start, end, step))
                .unwrap_or_else(|e| panic!("{q} (small chunks): {e}"));
            // Compared as text: NaN results are equal there.
            assert_eq!(
                format!("{:?}", from_small.value),
                format!("{:?}", r.value),
                "{q} from small chunks"
            );
            assert_eq!(
                (&from_small.warnings, &from_small.infos),
                (&r.warnings, &r.infos),
                "{q} from small chunks"
            );
            let Value::Matrix(m) = r.value else {
                panic!("{q}: matrix")
            };
            let mut infos: Vec<String> = Vec::new();
            let mut t = start;
            while t <= end {
                let i = instant(&s, q, t).unwrap_or_else(|e| panic!("{q} @ {t}: {e}"));
                let Value::Vector(v) = i.value else {
                    panic!("{q}: vector")
                };
                let mut want: Vec<(String, u64)> = v
                    .iter()
                    .map(|x| (x.labels.to_string(), x.v.to_bits()))
                    .collect();
                let mut got: Vec<(String, u64)> = m
                    .iter()
                    .filter_map(|ser| {
                        let smp = ser.samples.iter().find(|x| x.t == t)?;
                        Some((ser.labels.to_string(), smp.v.to_bits()))
                    })
                    .collect();
                want.sort();
                got.sort();
                assert_eq!(got, want, "{q} at {t} (range {start}..{end} step {step})");
                infos.extend(i.infos);
                t += step;
            }
            infos.sort();
            infos.dedup();
            let mut got_infos = r.infos.clone();
            got_infos.sort();
            assert_eq!(got_infos, infos, "{q}: infos");
        }
    }
    // Two series that differ only by name collide once the name goes, from the step where
    // the second one appears on.
    let late: Vec<Option<f64>> = (0..n).map(|i| (i >= 30).then_some(1.0)).collect();
    load(&s, &[("__name__", "h"), ("job", "b")], half, &late);
    for q in ["{__name__=~\"g|h\"} * 2", "rate({__name__=~\"g|h\"}[1m])"] {
        assert!(instant(&s, q, 10 * M).is_ok(), "{q}");
        let e = instant(&s, q, 16 * M).unwrap_err();
        assert!(e.to_string().contains("same labelset"), "{q}: {e}");
        let e = run(Engine::default().range_query(&s, q, 0, 20 * M, M)).unwrap_err();
        assert!(e.to_string().contains("same labelset"), "{q}: {e}");
        assert!(run(Engine::default().range_query(&s, q, 0, 14 * M, M)).is_ok());
    }
}

#[test]
fn literals_and_strings() {
    let s = MemStore::new();
    assert_eq!(scalar(&s, "0x10", 0), 16.0);
    assert_eq!(
        instant(&s, "\"hi\"", 0).unwrap().value,
        Value::String {
            t: 0,
            v: "hi".into()
        }
    );
}

#[test]
fn errors_have_kinds() {
    let s = counters();
    let e = instant(&s, "sum(", 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadData);
    let e = run(Engine::default().range_query(&s, "req_total[5m]", 0, M, M)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadData);
    let e = run(Engine::default().range_query(&s, "req_total", 0, M, 0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadData);
    let e = instant(
        &s,
        "abs({__name__=~\"req_total|other\", job=\"a\"}) or abs(req_total{job=\"a\"} * 2)",
        0,
    );
    assert!(e.is_ok(), "or keeps only the left side for equal labels");
}

#[test]
fn max_samples_is_enforced() {
    let s = counters();
    let e = Engine::new(EngineOptions {
        max_samples: 5,
        ..Default::default()
    });
    let err = run(e.instant_query(&s, "count_over_time(req_total[10m])", 10 * M)).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples));
    assert_eq!(err.kind(), ErrorKind::Execution);
    let err = run(e.range_query(&s, "req_total", 0, 10 * M, M)).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples));
}

#[test]
fn timeout_is_enforced() {
    let s = counters();
    let e = Engine::new(EngineOptions {
        timeout: Duration::ZERO,
        ..Default::default()
    });
    let err = run(e.range_query(&s, "req_total", 0, 10 * M, M)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

#[test]
fn bad_queries_never_panic() {
    let s = counters();
    for q in [
        "",
        "{",
        "sum by (",
        "rate(req_total)",
        "label_replace(req_total, \"\", \"\", \"\", \"\")",
        "topk(\"a\", req_total)",
        "req_total[5m] + 1",
        "histogram_quantile(0.5, req_total)",
        "count_values(\"\", req_total)",
        "1 / 0",
        "req_total offset -1000000000w",
        "req_total @ 1e18",
        "quantile_over_time(2, req_total[1m])",
        "double_exponential_smoothing(req_total[5m], 2, 0.5)",
        "round(req_total, 0)",
        "vector(1)[5m:0s]",
    ] {
        let _ = instant(&s, q, 10 * M);
    }
}

#[test]
fn byte_escapes_that_are_not_utf8_are_invalid_label_names() {
    let s = counters();
    let err = instant(&s, "count_values(\"a\\xc5z\", req_total)", 10 * M).unwrap_err();
    assert_eq!(err.to_string(), "invalid label name \"a\\xc5z\"");
    assert!(
        instant(
            &s,
            "label_replace(req_total, \"\\xff\", \"\", \"job\", \"(.*)\")",
            10 * M
        )
        .is_err()
    );
    // A valid two-byte sequence spelled with escapes is fine.
    assert!(instant(&s, "count_values(\"\\xc3\\xa9\", req_total)", 10 * M).is_ok());
}

#[test]
fn count_values_merges_groups_that_collapse() {
    let s = MemStore::new();
    load(&s, &[("__name__", "v"), ("job", "a")], M, &vals(&[6.]));
    load(&s, &[("__name__", "v"), ("job", "b")], M, &vals(&[6.]));
    assert_eq!(
        vector(&s, "count_values by (job) (\"job\", v)", 0),
        [("{job=\"6\"}".into(), 2.0)]
    );
}

#[test]
fn extreme_times_do_not_overflow() {
    let s = counters();
    // A 100000w subquery at 1m resolution is 10^9 steps: it must end by the timeout (with
    // bounded memory), not overflow or run on.
    let e = Engine::new(EngineOptions {
        timeout: Duration::from_millis(500),
        ..Default::default()
    });
    for q in [
        "req_total[5m:1m]",
        "max_over_time(req_total[100000w:1m])",
        "req_total offset 100000w",
    ] {
        let _ = run(e.instant_query(&s, q, i64::MIN / 2));
        let _ = run(e.instant_query(&s, q, i64::MAX / 2));
    }
}

/// A store that hands its series out as XOR chunks of at most 7 samples.
struct SmallChunks<'a>(&'a MemStore);

#[async_trait::async_trait]
impl norn_model::Queryable for SmallChunks<'_> {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[norn_model::Matcher],
    ) -> Result<Vec<norn_model::Series>, norn_model::StorageError> {
        self.0.select(start_ms, end_ms, matchers).await
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[norn_model::Matcher],
    ) -> Result<Vec<norn_model::ChunkSeries>, norn_model::StorageError> {
        let got = self.0.select(start_ms, end_ms, matchers).await?;
        Ok(got
            .into_iter()
            .map(|s| norn_model::ChunkSeries {
                chunks: s
                    .samples
                    .chunks(7)
                    .flat_map(norn_model::query::encode_samples)
                    .collect(),
                labels: s.labels,
            })
            .collect())
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[norn_model::Matcher],
    ) -> Result<Vec<String>, norn_model::StorageError> {
        self.0.label_names(start_ms, end_ms, matchers).await
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[norn_model::Matcher],
    ) -> Result<Vec<String>, norn_model::StorageError> {
        self.0.label_values(name, start_ms, end_ms, matchers).await
    }
}
