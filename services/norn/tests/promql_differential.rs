//! Differential PromQL test against the real Prometheus (Debian `prometheus`, 2.42).
//!
//! One deterministic data set (counters with resets, gauges, classic histograms, a series that
//! ends with a stale marker, 1 h at 15 s) is remote-written to both Norn and a Prometheus
//! started with its remote-write receiver. Every query of the list runs as an instant query
//! and as a range query against both; results must match with a relative tolerance of 1e-6.
//!
//! 2.x → 3.x semantic differences are kept out of the comparison by construction, not by
//! exceptions: range windows are left-open in 3.x and left-closed in 2.42, so a sample or a
//! subquery step exactly on a window's start counts in one and not the other. Sample
//! timestamps sit at 7 s past the 15 s grid and evaluation times at 3 s past the minute, so
//! neither raw samples nor subquery steps (aligned to multiples of their step) ever fall on a
//! window boundary. `holt_winters` (renamed in 3.x) is not in the list. Queries whose 2.42 result is known to differ from
//! 3.x are listed in `KNOWN_DIFFERENCES` with the reason.
//!
//! Norn answers through its query-frontend with range queries split in 7-minute legs, the
//! results cache on and query sharding on (4 shards): every range query runs twice (cold,
//! then from the cache) and both must match Prometheus' unsplit answer, and the shardable
//! aggregations of the list (instant and range) run as legs over the ingester's shards.
//!
//! Skipped (with a message) without a `prometheus` binary unless `NORN_REQUIRE_PEERS=1`.

mod common;

use std::time::Duration;

use common::{Norn, Prometheus, compare_results, now_ms, request, series, snappy, urlencode};
use norn_proto::prometheus as pb;
use prost::Message;

const QUERIES: &[&str] = &[
    // selectors and matchers
    "http_requests_total",
    "http_requests_total{method=\"GET\"}",
    "http_requests_total{method!=\"GET\"}",
    "http_requests_total{status=~\"5..\"}",
    "http_requests_total{status!~\"2..|3..\"}",
    "{__name__=~\"memory_.*\"}",
    "memory_bytes offset 10m",
    "memory_bytes @ end()",
    "ephemeral_gauge",
    // counters
    "rate(http_requests_total[5m])",
    "irate(http_requests_total[5m])",
    "increase(http_requests_total[10m])",
    "resets(http_requests_total[30m])",
    "changes(memory_bytes[10m])",
    "rate(http_requests_total[1m] offset 5m)",
    // gauges
    "delta(memory_bytes[10m])",
    "idelta(memory_bytes[5m])",
    "deriv(memory_bytes[10m])",
    "predict_linear(memory_bytes[10m], 600)",
    "avg_over_time(memory_bytes[10m])",
    "min_over_time(memory_bytes[10m])",
    "max_over_time(memory_bytes[10m])",
    "sum_over_time(memory_bytes[5m])",
    "count_over_time(memory_bytes[5m])",
    "stddev_over_time(memory_bytes[10m])",
    "stdvar_over_time(memory_bytes[10m])",
    "quantile_over_time(0.9, memory_bytes[10m])",
    "last_over_time(memory_bytes[10m])",
    "present_over_time(memory_bytes[5m])",
    "absent_over_time(nonexistent[5m])",
    // aggregations
    "sum(rate(http_requests_total[5m]))",
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum without (instance) (rate(http_requests_total[5m]))",
    "avg by (method) (rate(http_requests_total[5m]))",
    "min by (job) (memory_bytes)",
    "max by (job) (memory_bytes)",
    "count by (status) (http_requests_total)",
    "group by (job) (memory_bytes)",
    "stddev by (job) (memory_bytes)",
    "stdvar(memory_bytes)",
    "topk(3, memory_bytes)",
    "bottomk(2, rate(http_requests_total[5m]))",
    "quantile by (job) (0.75, memory_bytes)",
    "count_values(\"value\", floor(memory_bytes / 1e8))",
    // binary operators
    "memory_bytes / 1024 / 1024",
    "memory_bytes * 2 + 1",
    "memory_bytes % 7",
    "memory_bytes ^ 0.5",
    "-memory_bytes",
    "memory_bytes > 3e8",
    "memory_bytes > bool 3e8",
    "memory_bytes == memory_bytes",
    "rate(http_requests_total[5m]) / ignoring(status) group_left sum without (status) (rate(http_requests_total[5m]))",
    "sum by (job, instance) (rate(http_requests_total[5m])) / on(job, instance) memory_bytes",
    "memory_bytes * on(job, instance) group_left(version) build_info",
    "memory_bytes and on(job) memory_bytes{job=\"api\"}",
    "memory_bytes or ephemeral_gauge",
    "memory_bytes unless memory_bytes{instance=\"i1\"}",
    "1 + 2 * 3",
    "time() - 60",
    // histograms
    "histogram_quantile(0.5, sum by (le) (rate(request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.99, sum by (le, job) (rate(request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.9, rate(request_duration_seconds_bucket[10m]))",
    // functions
    "abs(delta(memory_bytes[5m]))",
    "ceil(memory_bytes / 1e6)",
    "floor(memory_bytes / 1e6)",
    "round(memory_bytes / 1e6, 0.5)",
    "clamp(memory_bytes, 2e8, 4e8)",
    "clamp_min(memory_bytes, 3e8)",
    "clamp_max(memory_bytes, 3e8)",
    "exp(memory_bytes / 1e9)",
    "ln(memory_bytes)",
    "log2(memory_bytes)",
    "log10(memory_bytes)",
    "sqrt(memory_bytes)",
    "sgn(deriv(memory_bytes[5m]))",
    "sin(memory_bytes)",
    "atan2(memory_bytes, 1e8)",
    "label_replace(memory_bytes, \"host\", \"$1\", \"instance\", \"i(.*)\")",
    "label_join(memory_bytes, \"id\", \"-\", \"job\", \"instance\")",
    "absent(nonexistent)",
    "absent(memory_bytes)",
    "timestamp(memory_bytes)",
    "vector(1)",
    "scalar(sum(memory_bytes))",
    "sort(memory_bytes)",
    "sort_desc(memory_bytes)",
    "day_of_week()",
    "hour(timestamp(memory_bytes))",
    "minute()",
    "month()",
    "year()",
    "days_in_month()",
    // subqueries
    "max_over_time(rate(http_requests_total[1m])[10m:1m])",
    "avg_over_time(sum(memory_bytes)[15m:30s])",
    "rate(http_requests_total[5m])[10m:2m] offset 1m",
];

/// Queries whose Prometheus 2.42 result legitimately differs from Prometheus 3.x semantics.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

/// The data set: (labels, samples) per series, timestamps `start + 7s + 15s*i`.
/// A series as (label pairs, samples).
type DataSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

fn dataset(start: i64, points: usize) -> Vec<DataSeries> {
    let mut out = Vec::new();
    let ts = |i: usize| start + 7_000 + 15_000 * i as i64;
    let lbl = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    for (j, job) in ["api", "web"].iter().enumerate() {
        for inst in 0..3 {
            let instance = format!("i{inst}");
            for (m, method) in ["GET", "POST"].iter().enumerate() {
                for (s, status) in ["200", "404", "500"].iter().enumerate() {
                    let rate = 1.0 + (j * 7 + inst * 3 + m * 2 + s) as f64 * 0.37;
                    let mut v = 0.0;
                    let samples = (0..points)
                        .map(|i| {
                            // a counter reset every 97 points for some series
                            if (inst + s) % 2 == 0 && i % 97 == 96 {
                                v = 0.0;
                            }
                            v += rate * 15.0 * (1.0 + ((i * 31 + s) % 7) as f64 / 10.0);
                            (ts(i), v.round())
                        })
                        .collect();
                    out.push((
                        lbl(&[
                            ("__name__", "http_requests_total"),
                            ("job", job),
                            ("instance", &instance),
                            ("method", method),
                            ("status", status),
                        ]),
                        samples,
                    ));
                }
            }
            let base = 2e8 + (j * 3 + inst) as f64 * 5e7;
            out.push((
                lbl(&[
                    ("__name__", "memory_bytes"),
                    ("job", job),
                    ("instance", &instance),
                ]),
                (0..points)
                    .map(|i| (ts(i), base + ((i * 7919 + inst * 13) % 1000) as f64 * 1e5))
                    .collect(),
            ));
            out.push((
                lbl(&[
                    ("__name__", "build_info"),
                    ("job", job),
                    ("instance", &instance),
                    ("version", &format!("1.{inst}")),
                ]),
                (0..points).map(|i| (ts(i), 1.0)).collect(),
            ));
            let mut cum = 0.0;
            let mut counts = [0.0; 6];
            let series_of: Vec<Vec<(i64, f64)>> = {
                let mut per = vec![Vec::new(); 6];
                for i in 0..points {
                    cum += 1.0;
                    let obs = ((i * 37 + inst * 11 + j * 5) % 100) as f64 / 100.0;
                    for (b, le) in [0.05, 0.1, 0.25, 0.5, 1.0, f64::INFINITY]
                        .iter()
                        .enumerate()
                    {
                        if obs <= *le {
                            counts[b] += 3.0;
                        }
                        per[b].push((ts(i), counts[b] + cum * 0.0));
                    }
                }
                per
            };
            for (b, le) in ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"]
                .iter()
                .enumerate()
            {
                out.push((
                    lbl(&[
                        ("__name__", "request_duration_seconds_bucket"),
                        ("job", job),
                        ("instance", &instance),
                        ("le", le),
                    ]),
                    series_of[b].clone(),
                ));
            }
        }
    }
    // A gauge that stops half-way with a stale marker.
    let mut eph: Vec<(i64, f64)> = (0..points / 2).map(|i| (ts(i), i as f64)).collect();
    eph.push((ts(points / 2), norn_model::stale_nan()));
    out.push((lbl(&[("__name__", "ephemeral_gauge"), ("job", "api")]), eph));
    out
}

fn write_all(url: &str, tenant_header: bool, data: &[DataSeries], points: usize) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // Time-ordered requests of 20 points each for every series.
    for chunk in (0..points).step_by(20) {
        let ts: Vec<pb::TimeSeries> = data
            .iter()
            .filter_map(|(labels, samples)| {
                let part: Vec<(i64, f64)> = samples.iter().skip(chunk).take(20).copied().collect();
                if part.is_empty() {
                    return None;
                }
                let l: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                Some(series(&l, &part))
            })
            .collect();
        if ts.is_empty() {
            continue;
        }
        let body = snappy(&request(ts).encode_to_vec());
        let mut req = agent
            .post(url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf");
        if tenant_header {
            req = req.header("X-Scope-OrgID", "diff");
        }
        let mut resp = req.send(&body[..]).expect("push");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        assert!(status / 100 == 2, "push to {url} failed: {status} {text}");
    }
}

fn get(url: &str, tenant: bool) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    if tenant {
        req = req.header("X-Scope-OrgID", "diff");
    }
    let Ok(mut resp) = req.call() else {
        return (0, serde_json::Value::Null);
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn promql_matches_prometheus_on_identical_data() {
    let Some(prom_bin) = Prometheus::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let norn = Norn::start(
        dir.path(),
        &[
            "--distributor.ingestion-rate-limit=100000000",
            "--distributor.ingestion-burst-size=100000000",
            // Range queries through the query-frontend split in 7-minute legs (the 29-minute
            // range crosses four boundaries) and cached: each runs twice, cold and warm.
            "--query-frontend.split-queries-by-interval=7m",
            "--query-frontend.cache-results=true",
            "--query-frontend.max-cache-freshness=1m",
            "--query-frontend.parallelize-shardable-queries=true",
            "--query-frontend.query-sharding-total-shards=4",
        ],
    );
    let prom_peer = Prometheus::start(
        &prom_bin,
        dir.path(),
        &dir.path().join("prom-data"),
        &["--web.enable-remote-write-receiver"],
    );
    let prom = prom_peer.url("");

    let points = 240; // 1 h at 15 s
    let end = (now_ms() / 60_000) * 60_000 - 120_000;
    let start = end - 15_000 * points as i64;
    let data = dataset(start, points);
    write_all(&format!("{prom}/api/v1/write"), false, &data, points);
    write_all(&norn.url("/api/v1/push"), true, &data, points);

    let (range_start, range_end) = (end - 1_800_000, end - 60_000);
    let mut failures = Vec::new();
    let mut compared = 0;
    for q in QUERIES {
        if KNOWN_DIFFERENCES.iter().any(|(k, _)| k == q) {
            continue;
        }
        let enc = urlencode(q);
        for (kind, params) in [
            (
                "instant",
                format!(
                    "query?query={enc}&time={}",
                    (end - 60_000 + 3_000) as f64 / 1000.0
                ),
            ),
            (
                "range",
                format!(
                    "query_range?query={enc}&start={}&end={}&step=60",
                    (range_start + 3_000) as f64 / 1000.0,
                    (range_end + 3_000) as f64 / 1000.0
                ),
            ),
        ] {
            let (ps, pv) = get(&format!("{prom}/api/v1/{params}"), false);
            let (ns, nv) = get(&norn.url(&format!("/prometheus/api/v1/{params}")), true);
            compared += 1;
            if ps != ns {
                failures.push(format!(
                    "{kind} {q}: status prometheus {ps} norn {ns}: {nv}"
                ));
                continue;
            }
            if ps != 200 {
                continue;
            }
            if let Err(e) = compare_results(&pv, &nv) {
                failures.push(format!("{kind} {q}: {e}"));
            }
            if kind == "range" {
                // Again, from the results cache (`@` queries are never cached): the same answer.
                let (ns2, nv2) = get(&norn.url(&format!("/prometheus/api/v1/{params}")), true);
                if (ns2, &nv2) != (ns, &nv) {
                    failures.push(format!("{kind} {q}: the cached answer differs: {nv2}"));
                }
            }
        }
    }
    eprintln!(
        "differential: {} of {compared} query runs match Prometheus ({} queries × instant/range)",
        compared - failures.len(),
        QUERIES.len()
    );
    assert!(QUERIES.len() >= 60);
    // The range queries really were split and answered from the cache the second time.
    assert!(norn.metric("norn_query_frontend_split_queries_total") >= 4.0 * QUERIES.len() as f64);
    assert!(norn.metric("norn_query_frontend_results_cache_hits_total") > QUERIES.len() as f64);
    // The shardable aggregations of the list (about a dozen, instant and range) ran sharded.
    let sharded = norn.metric("norn_query_frontend_sharded_queries_total");
    assert!(sharded >= 20.0, "{sharded} queries sharded");
    assert!(norn.metric("norn_query_frontend_sharded_query_legs_total") >= 4.0 * sharded);
    shard_selectors_are_honoured(&norn, end - 60_000 + 3_000);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The ingester honours `__query_shard__` by series hash (the two shards' counts add up to
/// the whole, each is a real part), and a malformed selector is a 400 from the querier.
fn shard_selectors_are_honoured(norn: &Norn, t: i64) {
    let count = |q: &str| -> f64 {
        let url = norn.url(&format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode(q),
            t as f64 / 1000.0
        ));
        let (s, v) = get(&url, true);
        assert_eq!(s, 200, "{q}: {v}");
        let r = &v["data"]["result"];
        r[0]["value"][1]
            .as_str()
            .map_or(0.0, |x| x.parse().unwrap())
    };
    let all = count("count(http_requests_total)");
    let one = count("count(http_requests_total{__query_shard__=\"1_of_2\"})");
    let two = count("count(http_requests_total{__query_shard__=\"2_of_2\"})");
    assert_eq!(all, 36.0);
    assert_eq!(one + two, all, "shards {one} + {two}");
    assert!(one > 0.0 && two > 0.0, "shards {one} + {two}");
    for bad in ["0_of_2", "3_of_2", "1of2"] {
        let q = format!("count(http_requests_total{{__query_shard__=\"{bad}\"}})");
        let url = norn.url(&format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode(&q),
            t as f64 / 1000.0
        ));
        let (s, v) = get(&url, true);
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["errorType"], "bad_data", "{q}: {v}");
    }
}
