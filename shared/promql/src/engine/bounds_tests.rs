//! Regression tests for what bounds a query: text size and nesting (issue 14 item 1), the
//! deadline and cancellation inside evaluation, and the sample count that includes subquery
//! results, their cache and fetching (item 4). Timing is never asserted beyond generous
//! "it came back at all" bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use norn_model::{ErrorKind, Labels, Matcher, Queryable, Series, StorageError};

use crate::memstore::MemStore;
use crate::{
    DEFAULT_MAX_QUERY_DEPTH, Engine, EngineOptions, MAX_QUERY_DEPTH_CEILING, PromqlError,
    QueryContext, Value, nesting_depth,
};

const M: i64 = 60_000;

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn store() -> MemStore {
    let s = MemStore::new();
    for i in 0..=10 {
        s.add_sample(
            &Labels::from_pairs([("__name__", "up"), ("job", "a")]),
            i * M,
            1.0,
        );
    }
    s
}

fn scalar(v: &Value) -> f64 {
    match v {
        Value::Scalar { v, .. } => *v,
        Value::Vector(vec) if vec.len() == 1 => vec[0].v,
        other => panic!("expected one value, got {other:?}"),
    }
}

#[test]
fn the_reported_deep_queries_are_refused_before_parsing() {
    let s = store();
    let e = Engine::default();
    let terms = vec!["1"; 10_000].join("+");
    let parens = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    for q in [&terms, &parens] {
        let err = run(e.instant_query(&s, q, 0)).unwrap_err();
        assert!(matches!(err, PromqlError::TooComplex(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::BadData);
        assert!(
            err.to_string().contains("max-query-expression-depth"),
            "{err}"
        );
        let err = run(e.range_query(&s, q, 0, M, M)).unwrap_err();
        assert!(matches!(err, PromqlError::TooComplex(_)), "{err}");
        let err = run(e.format_query(q)).unwrap_err();
        assert!(matches!(err, PromqlError::TooComplex(_)), "{err}");
        let err = run(e.check_query(q)).unwrap_err();
        assert!(matches!(err, PromqlError::TooComplex(_)), "{err}");
    }
    assert_eq!(e.query_threads(), 0, "refused before a thread was started");
}

/// A query-frontend checks every query before queueing it: a text it (or a querier in the
/// same process) parsed recently is answered without a query thread; anything else is parsed
/// on one, with the parser's own message for a bad text.
#[test]
fn check_query_parses_once_and_then_answers_from_the_cache() {
    let text = "rate(check_query_cache_test{job=~\"a.+\"}[5m])";
    let first = Engine::default();
    run(first.check_query(text)).expect("parses");
    assert_eq!(first.query_threads_started(), 1, "parsed on a query thread");
    let second = Engine::default();
    run(second.check_query(text)).expect("still parses");
    assert_eq!(
        second.query_threads_started(),
        0,
        "answered from the parse cache"
    );

    let bad = "sum(rate(check_query_cache_test[5m])";
    let err = run(second.check_query(bad)).unwrap_err();
    let formatted = run(second.format_query(bad)).unwrap_err();
    assert!(matches!(err, PromqlError::Parse(_)), "{err}");
    assert_eq!(err.to_string(), formatted.to_string());
    let err = run(second.check_query(bad)).unwrap_err();
    assert!(
        matches!(err, PromqlError::Parse(_)),
        "errors are not cached: {err}"
    );
}

/// Queries exactly at a depth limit: the chain, parentheses, unary minus, function calls and
/// a vector binary chain, each parsed, planned, evaluated, formatted and dropped.
fn at_depth(depth: usize) -> Vec<(String, f64)> {
    vec![
        (vec!["1"; depth + 1].join("+"), (depth + 1) as f64),
        (format!("{}2{}", "(".repeat(depth), ")".repeat(depth)), 2.0),
        (
            format!("{}3", "-".repeat(depth)),
            if depth.is_multiple_of(2) { 3.0 } else { -3.0 },
        ),
        (
            format!("{}up{}", "abs(".repeat(depth), ")".repeat(depth)),
            1.0,
        ),
        (vec!["up"; depth + 1].join(" * "), 1.0),
    ]
}

#[test]
fn a_query_at_the_default_depth_still_evaluates() {
    let s = store();
    let e = Engine::default();
    for (q, want) in at_depth(DEFAULT_MAX_QUERY_DEPTH) {
        assert_eq!(nesting_depth(&q), DEFAULT_MAX_QUERY_DEPTH, "{q}");
        let r = run(e.instant_query(&s, &q, 5 * M)).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(scalar(&r.value), want, "{q}");
        let r = run(e.range_query(&s, &q, 0, 2 * M, M)).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(
            matches!(r.value, Value::Matrix(ref m) if m.len() == 1),
            "{q}"
        );
        assert!(run(e.format_query(&q)).is_ok(), "{q}");
        // One level more is refused.
        let deeper = format!("-{q}");
        assert!(matches!(
            run(e.instant_query(&s, &deeper, 5 * M)),
            Err(PromqlError::TooComplex(_))
        ));
    }
}

#[test]
fn the_query_thread_stack_holds_the_deepest_allowed_query() {
    // The stack is sized for the ceiling any configuration may set, in this (debug) build
    // whose frames are the largest.
    let s = store();
    let e = Engine::new(EngineOptions {
        max_query_depth: MAX_QUERY_DEPTH_CEILING,
        ..Default::default()
    });
    for (q, want) in at_depth(MAX_QUERY_DEPTH_CEILING) {
        let r = run(e.instant_query(&s, &q, 5 * M)).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(scalar(&r.value), want, "{q}");
        assert!(run(e.format_query(&q)).is_ok());
    }
}

/// `count_over_time(vector(1)[30d:1ms])`: 2.6e9 inner steps, from issue 14.
const RUNAWAY: &str = "count_over_time(vector(1)[30d:1ms])";

#[test]
fn a_runaway_subquery_stops_at_the_request_deadline() {
    let s = store();
    // The engine's own timeout is long; the request's short one must win.
    let e = Engine::default();
    let started = Instant::now();
    let err = run(e.instant_query_within(
        &s,
        RUNAWAY,
        0,
        QueryContext::timeout(Duration::from_millis(300)),
    ))
    .unwrap_err();
    assert!(matches!(err, PromqlError::Timeout), "{err}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let ctx = QueryContext::timeout(Duration::from_millis(300));
    let err = run(e.range_query_within(&s, RUNAWAY, 0, 10 * M, M, ctx)).unwrap_err();
    assert!(
        matches!(err, PromqlError::Timeout | PromqlError::TooManySamples),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The evaluation threads have stopped, not just been abandoned.
    wait_for_threads(&e, 0);
}

fn wait_for_threads(e: &Engine, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while e.query_threads() != n {
        assert!(
            Instant::now() < until,
            "{} query threads still running",
            e.query_threads()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Drops `query`'s future mid-evaluation, as a client that goes away, and checks that its
/// evaluation stops and what the caller asked to keep alive is released with the thread.
fn dropping_stops_the_evaluation(e: &Engine, s: &MemStore, query: &str) {
    let slot = Arc::new(());
    run(async {
        let ctx = QueryContext {
            timeout: None,
            keep_alive: Some(Box::new(Arc::clone(&slot))),
            ..Default::default()
        };
        let q = e.instant_query_within(s, query, 0, ctx);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), q)
                .await
                .is_err()
        );
    });
    wait_for_threads(e, 0);
    assert_eq!(Arc::strong_count(&slot), 1, "released with the thread");
}

#[test]
fn dropping_the_query_future_stops_its_evaluation() {
    // Nested past what the caller plans, so parsed and planned on the query thread.
    let deep = format!("{}{RUNAWAY}{}", "(".repeat(20), ")".repeat(20));
    dropping_stops_the_evaluation(&Engine::default(), &store(), &deep);
}

#[test]
fn subquery_cache_and_results_count_against_max_samples() {
    let s = store();
    let e = Engine::new(EngineOptions {
        max_samples: 100,
        ..Default::default()
    });
    // Each step's subquery yields 60 points (under the limit on its own); the cache that
    // the range query's steps share held up to 60 more steps uncounted before.
    let err =
        run(e.range_query(&s, "count_over_time(vector(1)[1m:1s])", 0, 10 * M, M)).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples), "{err}");
    assert_eq!(err.kind(), ErrorKind::Execution);
    // Nested subqueries cache the inner one even in an instant query.
    let err = run(e.instant_query(
        &s,
        "max_over_time(count_over_time(vector(1)[1m:1s])[5m:1m])",
        10 * M,
    ))
    .unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples), "{err}");
    // An instant query's own subquery caches nothing: 60 points fit.
    let r = run(e.instant_query(&s, "count_over_time(vector(1)[1m:1s])", 10 * M)).unwrap();
    assert_eq!(scalar(&r.value), 60.0);
    // With room for the cache the range query gives the right answer.
    let roomy = Engine::new(EngineOptions {
        max_samples: 10_000,
        ..Default::default()
    });
    let r = run(roomy.range_query(&s, "count_over_time(vector(1)[1m:1s])", 0, 10 * M, M)).unwrap();
    let Value::Matrix(m) = r.value else {
        panic!("matrix")
    };
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].samples.len(), 11);
    assert!(m[0].samples.iter().all(|x| x.v == 60.0));
}

#[test]
fn the_range_output_counts_together_with_what_was_fetched() {
    let s = store();
    // A selector read as samples (a two-argument range function does not slide over
    // chunks): 11 samples fetched, a one-sample window, 11 output points. Each fits 15,
    // together they do not.
    let q = "quantile_over_time(0.5, up[1s])";
    let e = Engine::new(EngineOptions {
        max_samples: 15,
        ..Default::default()
    });
    let err = run(e.range_query(&s, q, 0, 10 * M, M)).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples), "{err}");
    let e = Engine::new(EngineOptions {
        max_samples: 22,
        ..Default::default()
    });
    let r = run(e.range_query(&s, q, 0, 10 * M, M)).unwrap();
    assert_eq!(r.stats.peak_samples, 22);
    // The plain selector is read as chunks: their bytes (16 to a unit) plus the output.
    let r = run(e.range_query(&s, "up", 0, 10 * M, M)).unwrap();
    assert!(r.stats.samples_fetched < 11, "{:?}", r.stats);
    assert_eq!(r.stats.peak_samples, r.stats.samples_fetched + 11);
}

/// A [`MemStore`] that runs `on_select` at every select: to count them, or to look at the
/// engine while one runs.
struct HookedStore {
    inner: MemStore,
    on_select: Box<dyn Fn() + Send + Sync>,
}

#[async_trait]
impl Queryable for HookedStore {
    async fn select(&self, a: i64, b: i64, m: &[Matcher]) -> Result<Vec<Series>, StorageError> {
        (self.on_select)();
        self.inner.select(a, b, m).await
    }
    async fn label_names(
        &self,
        a: i64,
        b: i64,
        m: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.inner.label_names(a, b, m).await
    }
    async fn label_values(
        &self,
        n: &str,
        a: i64,
        b: i64,
        m: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.inner.label_values(n, a, b, m).await
    }
}

#[test]
fn fetching_stops_once_the_limit_is_passed() {
    let selects = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&selects);
    let s = HookedStore {
        inner: store(),
        on_select: Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }),
    };
    let e = Engine::new(EngineOptions {
        max_samples: 1,
        ..Default::default()
    });
    // Three selectors of 11 samples each, read as chunks (a range query's step selectors),
    // which may hold 8 × max_samples while they are read: the first alone is over that.
    let err =
        run(e.range_query(&s, "up + up{job=\"a\"} + up{job=~\"a\"}", 0, 10 * M, M)).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples), "{err}");
    assert_eq!(selects.load(Ordering::Relaxed), 1);
}

/// A context with a memory limit of `bytes`.
fn memory(bytes: u64) -> QueryContext {
    QueryContext {
        max_estimated_memory_bytes: bytes,
        ..Default::default()
    }
}

#[test]
fn the_memory_limit_stops_a_query_naming_itself_and_stats_report_the_peak() {
    // 100 series x 11 samples.
    let s = MemStore::new();
    for i in 0..100 {
        let labels = Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())]);
        for t in 0..=10 {
            s.add_sample(&labels, t * M, 1.0);
        }
    }
    let e = Engine::default();
    // Unlimited: the answer, and what it cost.
    let r = run(e.range_query_within(&s, "sum(m)", 0, 10 * M, M, memory(0))).unwrap();
    // Read as chunks: their bytes count, 16 to a unit, far fewer than 1,100 samples.
    let fetched = r.stats.samples_fetched;
    assert!((100..1100).contains(&fetched), "{:?}", r.stats);
    // Fetched chunks plus the 11 output points.
    assert_eq!(r.stats.peak_samples, fetched + 11);
    let labels = r.stats.estimated_peak_bytes - 16 * (fetched as u64 + 11);
    assert!(
        (100 * 80..100 * 400).contains(&labels),
        "labels of 100 series estimated at {labels} bytes"
    );
    // A limit at the peak passes; one byte less fails with the memory error (422), both
    // while fetching (far below) and while evaluating (just below).
    let peak = r.stats.estimated_peak_bytes;
    let ok = run(e.range_query_within(&s, "sum(m)", 0, 10 * M, M, memory(peak))).unwrap();
    assert_eq!(ok.value, r.value);
    for limit in [peak - 1, peak / 2, 1000] {
        let err = run(e.range_query_within(&s, "sum(m)", 0, 10 * M, M, memory(limit))).unwrap_err();
        assert!(
            matches!(err, PromqlError::MemoryLimit(l) if l == limit),
            "{limit}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::Execution);
        assert!(
            err.to_string()
                .contains("err-mimir-max-estimated-memory-consumption-per-query"),
            "{err}"
        );
    }
    // Where max_samples is the lower cap, the error stays the sample limit's.
    let few = Engine::new(EngineOptions {
        max_samples: fetched,
        ..Default::default()
    });
    let err = run(few.range_query_within(&s, "sum(m)", 0, 10 * M, M, memory(peak))).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples), "{err}");
    // An instant query holds one sample per series.
    let r = run(e.instant_query_within(&s, "sum(m)", 10 * M, memory(0))).unwrap();
    assert_eq!(r.stats.samples_fetched, 100);
    assert_eq!(r.stats.peak_samples, 100);
}

/// A range function sliding over a range query's steps reads its selector as encoded chunks
/// and holds only the current windows decoded: `max_samples` bounds what is held at once (as
/// in Prometheus), not the samples fetched. A plain selector's series are walked the same way;
/// a subquery's selector still holds all it fetched.
#[test]
fn a_sliding_range_function_holds_its_windows_not_its_fetched_samples() {
    let s = MemStore::new();
    // 20 series × 600 samples (every 15 s for 150 minutes): 12,000 samples fetched.
    for i in 0..20 {
        let labels = Labels::from_pairs([("__name__", "c_total"), ("i", &i.to_string())]);
        for k in 0..600i64 {
            s.add_sample(&labels, k * 15_000, (k * (i + 1)) as f64);
        }
    }
    let e = Engine::new(EngineOptions {
        max_samples: 5_000,
        ..Default::default()
    });
    let end = 599 * 15_000;
    let r = run(e.range_query(&s, "sum(rate(c_total[1m]))", 0, end, M))
        .unwrap_or_else(|err| panic!("sliding over chunks: {err}"));
    let Value::Matrix(m) = &r.value else {
        panic!("matrix")
    };
    // d/dt of Σ k·(i+1) per 15 s = Σ(i+1)/15 = 210/15 = 14 per second.
    let last = m[0].samples.last().unwrap();
    assert!((last.v - 14.0).abs() < 1e-9, "{last:?}");
    // The chunks (1-2 bytes a sample, counted 16 bytes to a unit) and the windows (20 series
    // × at most 4 samples) stay far below the 12,000 samples a decoded fetch would hold.
    assert!(
        r.stats.peak_samples < 3_000,
        "peak {} samples held",
        r.stats.peak_samples
    );
    // So does a plain selector, read as chunks with one decoder per series.
    let r = run(e.range_query(&s, "sum(c_total)", 0, end, M)).unwrap();
    assert!(r.stats.peak_samples < 3_000, "{:?}", r.stats);
    // A subquery's selector is read as samples, all of them held: over the limit.
    let err = run(e.range_query(&s, "sum(last_over_time(c_total[1m:1m]))", 0, end, M)).unwrap_err();
    assert!(matches!(err, PromqlError::TooManySamples), "{err}");
    // The same function in an instant query, or under a subquery, reads samples as before.
    let r = run(e.instant_query(&s, "sum(rate(c_total[1m]))", end)).unwrap();
    assert!((scalar(&r.value) - 14.0).abs() < 1e-9);
}

/// Numbers written as durations that no duration holds are refused as bad data before the
/// parser sees them (it panics on them: `Duration::from_secs_f64`); valid ones and numbers
/// elsewhere (strings, comments, comparisons) pass.
#[test]
fn numbers_no_duration_can_hold_are_refused_before_parsing() {
    let s = store();
    let e = Engine::default();
    for q in [
        "max_over_time(up{instance=~\"_|b\"}[3m:1000000000000000000000000000444422]) #offses",
        "up[1e30]",
        "rate(up[inf])",
        "up[NaN]",
        "sum_over_time(up[5m:1e300])",
        "up offset 1e30",
        "up offset -1e30",
        "up[0xFFFFFFFFFFFFFFFF]",
    ] {
        let err = run(e.instant_query(&s, q, 10 * M)).unwrap_err();
        assert!(matches!(err, PromqlError::Parse(_)), "{q}: {err}");
        assert_eq!(err.kind(), ErrorKind::BadData, "{q}");
        assert!(
            err.to_string().contains("duration out of range"),
            "{q}: {err}"
        );
        let err = run(e.range_query(&s, q, 0, 10 * M, M)).unwrap_err();
        assert!(matches!(err, PromqlError::Parse(_)), "{q}: {err}");
    }
    for q in [
        "count_over_time(up[600])",
        "count_over_time(up[5m:60])",
        "count_over_time(up[0x258])",
        "up offset 1",
        "up offset -5m",
        "up > 1e300",
        "up{job!=\"[1e30]\"} # [1e30]",
        "count_over_time(up[1h] offset 1e3)",
    ] {
        assert!(run(e.instant_query(&s, q, 10 * M)).is_ok(), "{q}");
    }
}

#[test]
fn a_repeated_shallow_query_is_planned_by_the_caller_and_answers_the_same() {
    let engine = Arc::new(Engine::default());
    // How many query threads were busy while each select ran.
    let busy_at_select = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (watched, record) = (Arc::clone(&engine), Arc::clone(&busy_at_select));
    let s = HookedStore {
        inner: store(),
        on_select: Box::new(move || record.lock().unwrap().push(watched.query_threads())),
    };
    // Texts no other test parses (the parse cache is the process').
    let shallow = "sum by (job) (up{job=\"a\", fast_path=\"\"}) * 2";
    let deep = format!(
        "{}up{{fast_path=\"deep\"}}{}",
        "(".repeat(20),
        ")".repeat(20)
    );
    assert!(nesting_depth(&deep) > 16);
    for q in [shallow, deep.as_str()] {
        // A query thread counts as busy until just after it has sent its answer: each run
        // waits for the last one's thread to be counted idle, or the next select could see it.
        let first = run(engine.range_query(&s, q, 0, 10 * M, M)).unwrap();
        wait_for_threads(&engine, 0);
        let second = run(engine.range_query(&s, q, 0, 10 * M, M)).unwrap();
        wait_for_threads(&engine, 0);
        assert_eq!(
            format!("{:?}", first.value),
            format!("{:?}", second.value),
            "{q}"
        );
    }
    let busy = busy_at_select.lock().unwrap().clone();
    // The first run of each is parsed on a query thread, which waits there for the data;
    // the shallow query's second run is planned by the caller, so no thread waits while it
    // fetches; the deep one always goes to a thread.
    assert_eq!(busy, [1, 0, 1, 1]);
    wait_for_threads(&engine, 0);
}

#[test]
fn dropping_a_query_planned_by_the_caller_stops_its_evaluation() {
    let s = store();
    let e = Engine::default();
    // Parsed once (and cached) under a deadline, so the next run is planned by the caller.
    let runaway = format!("{RUNAWAY} + 0 * vector(7)");
    let ctx = QueryContext {
        timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    assert!(run(e.instant_query_within(&s, &runaway, 0, ctx)).is_err());
    wait_for_threads(&e, 0);
    dropping_stops_the_evaluation(&e, &s, &runaway);
}

/// A caller-planned query is evaluated on the calling task only when it is small: few
/// samples, few series × steps, shallow, and no subquery (nor anything that looks like one).
#[test]
fn only_small_queries_are_evaluated_in_place() {
    use super::{Span, evaluates_in_place};
    use crate::eval::Fetched;
    use crate::value::FetchedSeries;

    let fetched = |series: usize, held: usize| -> (Fetched, usize) {
        let one = || {
            FetchedSeries::from(Series {
                labels: Labels::from_pairs([("a", "b")]),
                samples: Vec::new(),
            })
        };
        (
            Fetched::from_iter([(0, (0..series).map(|_| one()).collect())]),
            held,
        )
    };
    let instant = Span {
        start: 0,
        end: 0,
        step: 0,
        range: false,
    };
    let range = |steps: i64| Span {
        start: 0,
        end: (steps - 1) * M,
        step: M,
        range: true,
    };
    let q = "sum(rate(up[5m]))";
    assert!(evaluates_in_place(q, 2, instant, &fetched(10, 4096)));
    assert!(!evaluates_in_place(q, 2, instant, &fetched(10, 4097)));
    assert!(!evaluates_in_place(q, 7, instant, &fetched(1, 1)));
    // (series + 1) × steps: 16 × 1,024 fits, 16 × 1,025 does not.
    assert!(evaluates_in_place(q, 2, range(1024), &fetched(15, 100)));
    assert!(!evaluates_in_place(q, 2, range(1025), &fetched(15, 100)));
    for sub in [
        "max_over_time(up[1h:1m])",
        "rate(up[5m:])",
        "up{a=\"[x:y]\"}",
    ] {
        assert!(
            !evaluates_in_place(sub, 2, instant, &fetched(1, 1)),
            "{sub}"
        );
    }
    assert!(evaluates_in_place(
        "up{a=\"x:y\"}[5m]",
        1,
        instant,
        &fetched(1, 1)
    ));
}
