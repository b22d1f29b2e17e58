//! The continuous correctness test: write a small deterministic set of series, read it back,
//! compare every value exactly.
//!
//! Modelled on `mimir-continuous-test`. Every `interval` it writes one sample for each of
//! `series` series `norn_continuous_test_sine_wave{series_id="<i>"}` at the wall-clock time
//! aligned down to the interval, then checks:
//!
//! * an **instant** query of the metric at the newest acknowledged timestamp: exactly the
//!   expected series, each with the expected value;
//! * a **range** query from a random earlier acknowledged timestamp (within `max_query_age`) to
//!   the newest, step = `interval`: every point at an acknowledged timestamp must be present and
//!   exact, and no unknown series may appear.
//!
//! Values are a pure function of `(seed, series_id, timestamp)`, rounded to 1/1000, so that
//! stores that keep values in a decimal form (VictoriaMetrics) also return them bit-exactly, and a
//! previous run's data written at the same timestamps agrees with this run's. Only timestamps
//! whose write was acknowledged (2xx) in this run are checked: a failed write may or may not have
//! been stored, and guessing would produce false mismatches.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::encode::{Sample, WriteRequestEncoder, encode_labels};
use crate::http::USER_AGENT;
use crate::now_ms;
use crate::promapi::{self, QueryResult};
use crate::series::splitmix64;

/// Metric written and read back.
pub const METRIC: &str = "norn_continuous_test_sine_wave";

/// What to test against.
#[derive(Debug, Clone)]
pub struct ContinuousConfig {
    /// Remote-write URL.
    pub write_url: String,
    /// Query API base (`…/api/v1`).
    pub query_base: String,
    /// `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Number of series written.
    pub series: usize,
    /// Write (and check) period.
    pub interval: Duration,
    /// Oldest data a range query reaches back to.
    pub max_query_age: Duration,
    /// Only check timestamps older than this (for stores that hide the newest data).
    pub query_delay: Duration,
    /// Stop after this long; `None` = forever.
    pub duration: Option<Duration>,
    /// Seed of the values and of the range picks.
    pub seed: u64,
}

/// The exported counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Write requests made.
    pub writes_total: AtomicU64,
    /// Write requests that failed (non-2xx or transport error).
    pub writes_failed_total: AtomicU64,
    /// Queries made.
    pub queries_total: AtomicU64,
    /// Queries whose result differed from what was written.
    pub query_mismatches_total: AtomicU64,
    /// Queries that failed (non-2xx, transport or unparsable response).
    pub queries_failed_total: AtomicU64,
}

impl Metrics {
    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, v) in [
            (
                "writes_total",
                "Remote-write requests made.",
                &self.writes_total,
            ),
            (
                "writes_failed_total",
                "Remote-write requests that failed.",
                &self.writes_failed_total,
            ),
            ("queries_total", "Queries made.", &self.queries_total),
            (
                "query_mismatches_total",
                "Queries whose result differed from the written data.",
                &self.query_mismatches_total,
            ),
            (
                "queries_failed_total",
                "Queries that failed.",
                &self.queries_failed_total,
            ),
        ] {
            let _ = writeln!(out, "# HELP norn_continuous_test_{name} {help}");
            let _ = writeln!(out, "# TYPE norn_continuous_test_{name} counter");
            let _ = writeln!(
                out,
                "norn_continuous_test_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// The exact value of `series_id` at `ts_ms`.
pub fn expected_value(seed: u64, series_id: usize, ts_ms: i64) -> f64 {
    // A sine wave with a 10 minute period, phase-shifted per series, plus a small seeded offset.
    let phase =
        series_id as f64 * 0.7 + (splitmix64(seed ^ series_id as u64) % 1000) as f64 / 1000.0;
    let v = 100.0 * ((ts_ms as f64 / 600_000.0) * std::f64::consts::TAU + phase).sin();
    // n / 1000 is the correctly rounded double of the decimal text "x.yyy", which is what any
    // store that keeps decimals will hand back.
    (v * 1000.0).round() / 1000.0
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

/// Runs the test until `duration` (or forever).
pub async fn run(http: reqwest::Client, cfg: ContinuousConfig, metrics: Arc<Metrics>) {
    let api = promapi::Client::new(http.clone(), &cfg.query_base, cfg.tenant.clone());
    let interval_ms = (cfg.interval.as_millis() as i64).max(1);
    let labels: Vec<Vec<u8>> = (0..cfg.series)
        .map(|i| encode_labels([("__name__", METRIC), ("series_id", &i.to_string())]))
        .collect();
    let mut enc = WriteRequestEncoder::new();
    let mut acked: BTreeSet<i64> = BTreeSet::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_ts = i64::MIN;
    let mut cycle: u64 = 0;

    loop {
        tick.tick().await;
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        cycle += 1;
        let ts = now_ms().div_euclid(interval_ms) * interval_ms;
        if ts > last_ts {
            last_ts = ts;
            enc.clear();
            for (i, l) in labels.iter().enumerate() {
                enc.push_series(
                    l,
                    &[Sample {
                        value: expected_value(cfg.seed, i, ts),
                        timestamp_ms: ts,
                    }],
                );
            }
            if write(&http, &cfg, &mut enc, &metrics).await {
                acked.insert(ts);
            }
        }
        // Forget what range queries can no longer reach.
        let oldest = now_ms() - cfg.max_query_age.as_millis() as i64;
        acked = acked.split_off(&oldest);

        let newest_visible = now_ms() - cfg.query_delay.as_millis() as i64;
        let Some(&end) = acked.range(..=newest_visible).next_back() else {
            continue;
        };
        check_instant(&api, &cfg, end, &metrics).await;
        let candidates: Vec<i64> = acked.range(..=end).copied().collect();
        let start = candidates[(splitmix64(cfg.seed ^ cycle) % candidates.len() as u64) as usize];
        let expected: BTreeSet<i64> = acked.range(start..=end).copied().collect();
        check_range(&api, &cfg, start, end, &expected, &metrics).await;
    }
}

async fn write(
    http: &reqwest::Client,
    cfg: &ContinuousConfig,
    enc: &mut WriteRequestEncoder,
    metrics: &Metrics,
) -> bool {
    metrics.writes_total.fetch_add(1, Ordering::Relaxed);
    let body = match enc.compress() {
        Ok(b) => b.to_vec(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode write request");
            metrics.writes_failed_total.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    let mut req = http
        .post(&cfg.write_url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header("User-Agent", USER_AGENT)
        .body(body);
    if let Some(t) = &cfg.tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            tracing::warn!(status, body = %body.trim(), url = %cfg.write_url, "write failed");
            metrics.writes_failed_total.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, url = %cfg.write_url, "write failed");
            metrics.writes_failed_total.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// One difference between what was written and what a query returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Mismatch {
    /// A series that was never written.
    UnexpectedSeries(String),
    /// An expected point is absent.
    Missing {
        /// Series id.
        series_id: usize,
        /// Timestamp, ms.
        ts: i64,
    },
    /// A point has another value.
    Value {
        /// Series id.
        series_id: usize,
        /// Timestamp, ms.
        ts: i64,
        /// Written value.
        expected: f64,
        /// Returned value.
        got: f64,
    },
}

/// Compares returned points (series_id → ts → value) with the expectation: every id in
/// `0..series` at every timestamp of `expected_ts`; points at other timestamps are not judged.
pub fn compare(
    seed: u64,
    series: usize,
    expected_ts: &BTreeSet<i64>,
    returned: &[(promapi::Labels, Vec<(i64, f64)>)],
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut by_id: BTreeMap<usize, BTreeMap<i64, f64>> = BTreeMap::new();
    for (labels, points) in returned {
        let id = labels
            .get("series_id")
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&i| i < series);
        match id {
            Some(id) if !by_id.contains_key(&id) => {
                by_id.insert(id, points.iter().copied().collect());
            }
            _ => out.push(Mismatch::UnexpectedSeries(format!("{labels:?}"))),
        }
    }
    for id in 0..series {
        let got = by_id.get(&id);
        for &ts in expected_ts {
            let expected = expected_value(seed, id, ts);
            match got.and_then(|p| p.get(&ts)) {
                None => out.push(Mismatch::Missing { series_id: id, ts }),
                // Bit equality: the check is exact, and -0.0 vs 0.0 would be a real difference.
                Some(&v) if v.to_bits() != expected.to_bits() => out.push(Mismatch::Value {
                    series_id: id,
                    ts,
                    expected,
                    got: v,
                }),
                Some(_) => {}
            }
        }
    }
    out
}

fn report(query: &str, kind: &str, mismatches: &[Mismatch], metrics: &Metrics) {
    if mismatches.is_empty() {
        return;
    }
    metrics
        .query_mismatches_total
        .fetch_add(1, Ordering::Relaxed);
    // Log every difference of the first few; a systematically broken store would flood the log.
    for m in mismatches.iter().take(20) {
        match m {
            Mismatch::Value {
                series_id,
                ts,
                expected,
                got,
            } => tracing::error!(
                query,
                kind,
                series_id,
                ts,
                expected,
                got,
                difference = got - expected,
                "query result mismatch: wrong value"
            ),
            Mismatch::Missing { series_id, ts } => {
                tracing::error!(
                    query,
                    kind,
                    series_id,
                    ts,
                    "query result mismatch: missing sample"
                )
            }
            Mismatch::UnexpectedSeries(labels) => {
                tracing::error!(query, kind, labels = %labels, "query result mismatch: unexpected series")
            }
        }
    }
    if mismatches.len() > 20 {
        tracing::error!(
            query,
            kind,
            total = mismatches.len(),
            "further mismatches not logged"
        );
    }
}

async fn check_instant(api: &promapi::Client, cfg: &ContinuousConfig, ts: i64, metrics: &Metrics) {
    metrics.queries_total.fetch_add(1, Ordering::Relaxed);
    match api.query(METRIC, ts).await {
        Ok(QueryResult::Vector(v)) => {
            let series: Vec<_> = v.into_iter().map(|(l, p)| (l, vec![p])).collect();
            let mismatches = compare(cfg.seed, cfg.series, &BTreeSet::from([ts]), &series);
            report(METRIC, "instant", &mismatches, metrics);
        }
        Ok(other) => {
            metrics.queries_failed_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(query = METRIC, result = ?other, "instant query did not return a vector");
        }
        Err(e) => {
            metrics.queries_failed_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(query = METRIC, error = %e, "instant query failed");
        }
    }
}

async fn check_range(
    api: &promapi::Client,
    cfg: &ContinuousConfig,
    start: i64,
    end: i64,
    expected_ts: &BTreeSet<i64>,
    metrics: &Metrics,
) {
    metrics.queries_total.fetch_add(1, Ordering::Relaxed);
    match api.query_range(METRIC, start, end, cfg.interval).await {
        Ok(QueryResult::Matrix(m)) => {
            let mismatches = compare(cfg.seed, cfg.series, expected_ts, &m);
            report(
                &format!("{METRIC} [{start}..{end}]"),
                "range",
                &mismatches,
                metrics,
            );
        }
        Ok(other) => {
            metrics.queries_failed_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(query = METRIC, result = ?other, "range query did not return a matrix");
        }
        Err(e) => {
            metrics.queries_failed_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(query = METRIC, error = %e, "range query failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(id: &str) -> promapi::Labels {
        [
            ("__name__".to_string(), METRIC.to_string()),
            ("series_id".to_string(), id.to_string()),
        ]
        .into()
    }

    #[test]
    fn values_are_deterministic_and_decimal() {
        for id in 0..5 {
            let v = expected_value(1, id, 1_700_000_000_000);
            assert_eq!(
                v.to_bits(),
                expected_value(1, id, 1_700_000_000_000).to_bits()
            );
            // Printing and parsing gives back the same double (what a JSON API does).
            assert_eq!(
                format!("{v}").parse::<f64>().unwrap().to_bits(),
                v.to_bits()
            );
            assert!((-100.0..=100.0).contains(&v));
        }
    }

    #[test]
    fn compare_finds_value_missing_and_extra() {
        let ts: BTreeSet<i64> = [1000, 2000].into();
        let good = |id: usize| {
            (
                labels(&id.to_string()),
                ts.iter()
                    .map(|&t| (t, expected_value(7, id, t)))
                    .collect::<Vec<_>>(),
            )
        };
        let clean = vec![good(0), good(1)];
        assert!(compare(7, 2, &ts, &clean).is_empty());

        let mut corrupt = clean.clone();
        corrupt[1].1[0].1 += 0.001;
        let m = compare(7, 2, &ts, &corrupt);
        assert!(
            matches!(
                m.as_slice(),
                [Mismatch::Value {
                    series_id: 1,
                    ts: 1000,
                    ..
                }]
            ),
            "{m:?}"
        );

        let mut missing = clean.clone();
        missing[0].1.pop();
        assert_eq!(
            compare(7, 2, &ts, &missing),
            vec![Mismatch::Missing {
                series_id: 0,
                ts: 2000
            }]
        );

        let mut extra = clean;
        extra.push((labels("9"), vec![]));
        assert!(matches!(
            compare(7, 2, &ts, &extra).as_slice(),
            [Mismatch::UnexpectedSeries(_)]
        ));
    }
}
