//! The query-frontend end to end, with real processes:
//!
//! * `ref`: `norn --target=all` with splitting off and no cache: its frontend passes each
//!   query whole to the querier, so its answers are the querier's unsplit answers;
//! * `all`: `norn --target=all` with the results cache on (in memory), a 10-minute split
//!   interval and a 5-second freshness window, fed the same samples as `ref`;
//! * `qf`: `norn --target=query-frontend` in front of `ref`'s HTTP API
//!   (`--query-frontend.downstream-url`), its results cache in a real memcached
//!   (`/usr/bin/memcached` on a free 127.0.0.1 port).
//!
//! Split and cached answers must equal the unsplit ones byte for byte, repeats must be the
//! same bytes and count cache hits, data written after a query was cached must show up once it
//! is older than the freshness window, and bad input must get the right 4xx while the
//! frontend keeps serving.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Norn, free_port, now_ms, request, require_peers, series, urlencode};

const MEMCACHED: &str = "/usr/bin/memcached";

/// A memcached process on a free port, killed on drop.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    fn start() -> Option<Memcached> {
        if !PathBuf::from(MEMCACHED).is_file() {
            assert!(
                !require_peers(),
                "{MEMCACHED} is not installed but NORN_REQUIRE_PEERS=1"
            );
            eprintln!("SKIP: {MEMCACHED} not found (apt-get install memcached)");
            return None;
        }
        let port = free_port();
        let mut cmd = Command::new(MEMCACHED);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]);
        // memcached refuses to run as root unless told which user to be.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning memcached");
        let m = Memcached { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "memcached did not listen in 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(m)
    }
}

impl Memcached {
    /// `curr_items` from the server's `stats`.
    fn items(&self) -> u64 {
        use std::io::{BufRead, BufReader, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"stats\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.trim_end().strip_prefix("STAT curr_items ") {
                return v.parse().unwrap();
            }
            assert_ne!(line.trim_end(), "END", "no curr_items in stats");
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TENANT: &str = "qf-tenant";

/// GET with the tenant header; the status and the body's exact bytes.
fn get(n: &Norn, tenant: Option<&str>, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = agent.get(&n.url(path));
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let mut resp = req.call().expect("query request");
    let status = resp.status().as_u16();
    let mut text = String::new();
    let _ = resp.body_mut().as_reader().read_to_string(&mut text);
    (status, text)
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn range_path(query: &str, start: i64, end: i64, step: &str) -> String {
    format!(
        "/prometheus/api/v1/query_range?query={}&start={}&end={}&step={step}",
        urlencode(query),
        secs(start),
        secs(end)
    )
}

/// `ref`'s answer to `path`, which must be a success.
fn reference(r: &Norn, path: &str) -> String {
    let (status, body) = get(r, Some(TENANT), path);
    assert_eq!(status, 200, "{path}: {body}");
    assert!(body.contains("\"status\":\"success\""), "{body}");
    body
}

/// Pushes the same samples to every process.
fn push_all(to: &[&Norn], ts: Vec<norn_proto::prometheus::TimeSeries>) {
    let req = request(ts);
    for n in to {
        let (status, body) = n.push(Some(TENANT), &req);
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn query_frontend_splits_caches_and_refuses_bad_input() {
    let Some(memcached) = Memcached::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let r = Norn::start(
        &tmp.path().join("ref"),
        &["--query-frontend.split-queries-by-interval=0"],
    );
    let a = Norn::start(
        &tmp.path().join("all"),
        &[
            "--query-frontend.cache-results=true",
            "--query-frontend.split-queries-by-interval=10m",
            "--query-frontend.max-cache-freshness=5s",
            "--store.max-query-length=1d",
            "--query-frontend.log-queries-longer-than=1ms",
        ],
    );
    let downstream = format!(
        "--query-frontend.downstream-url=http://127.0.0.1:{}",
        r.port
    );
    let gossip = format!("--memberlist.bind-port={}", free_port());
    let memcached_addr = format!(
        "--query-frontend.results-cache.memcached.addresses=127.0.0.1:{}",
        memcached.port
    );
    let qf = Norn::start(
        &tmp.path().join("qf"),
        &[
            "--target=query-frontend",
            &downstream,
            &gossip,
            "--query-frontend.cache-results=true",
            "--query-frontend.split-queries-by-interval=7m",
            "--query-frontend.align-queries-with-step=true",
            "--query-frontend.results-cache.backend=memcached",
            "--query-frontend.results-cache.memcached.timeout=2s",
            &memcached_addr,
        ],
    );

    // 90 minutes of five series every 15s, ending a minute ago.
    let now = now_ms() / 1000 * 1000;
    let first = now - 90 * 60_000;
    let ts: Vec<_> = (0..5)
        .map(|i| {
            let samples: Vec<(i64, f64)> = (0..360)
                .map(|k| (first + k * 15_000, (i * 1000 + k * (i + 1)) as f64))
                .collect();
            let i = i.to_string();
            series(
                &[("__name__", "qf_test"), ("i", &i), ("job", "j")],
                &samples,
            )
        })
        .collect();
    push_all(&[&r, &a], ts);

    // Split (and on `qf`, aligned) answers equal the unsplit ones, first from the querier,
    // then from the cache, byte for byte.
    let queries = [
        "qf_test",
        "sum(qf_test)",
        "rate(qf_test[2m])",
        "sum by (i) (rate(qf_test[5m]))",
        "max_over_time(qf_test[10m]) - min_over_time(qf_test[3m])",
        "count(qf_test > 2000) or vector(0)",
    ];
    let ranges = [
        (first - 5 * 60_000, now, "15"),
        (first + 7_777, now - 60_000, "37"),
        (first, first + 40 * 60_000, "60"),
    ];
    let hits_before = a.metric("norn_query_frontend_results_cache_hits_total");
    for q in queries {
        for (start, end, step) in ranges {
            let path = range_path(q, start, end, step);
            let want = reference(&r, &path);
            for round in ["cold", "warm"] {
                let (status, got) = get(&a, Some(TENANT), &path);
                assert_eq!(status, 200, "{path}: {got}");
                assert_eq!(got, want, "all, {round}: {path}");
            }
            // `qf` aligns to the step: the reference is the aligned range.
            let s: i64 = step.parse::<i64>().unwrap() * 1000;
            let aligned = range_path(
                q,
                start - start.rem_euclid(s),
                end - end.rem_euclid(s),
                step,
            );
            let want = reference(&r, &aligned);
            for round in ["cold", "warm"] {
                let (status, got) = get(&qf, Some(TENANT), &path);
                assert_eq!(status, 200, "{path}: {got}");
                assert_eq!(got, want, "query-frontend with memcached, {round}: {path}");
            }
        }
    }
    assert!(
        a.metric("norn_query_frontend_results_cache_hits_total") > hits_before,
        "repeats were answered from the cache"
    );
    assert!(a.metric("norn_query_frontend_split_queries_total") > 36.0);
    assert!(qf.metric("norn_query_frontend_results_cache_hits_total") > 0.0);
    assert!(memcached.items() > 0, "memcached holds the results");

    // Data written after a query was cached shows up, and stays once the part of the range
    // it is in is old enough to be cached.
    let q = "sum(qf_test)";
    let path = range_path(q, now - 30 * 60_000, now, "15");
    let (status, _) = get(&a, Some(TENANT), &path);
    assert_eq!(status, 200);
    let late = now_ms() / 1000 * 1000;
    push_all(
        &[&r, &a],
        vec![series(
            &[("__name__", "qf_test"), ("i", "9"), ("job", "j")],
            &[(late, 1e6)],
        )],
    );
    std::thread::sleep(Duration::from_secs(1));
    let path = range_path(q, now - 30 * 60_000, late + 60_000, "15");
    let want = reference(&r, &path);
    let v: serde_json::Value = serde_json::from_str(&want).unwrap();
    let max = v["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap())
        .fold(0.0, f64::max);
    assert!(max >= 1e6, "the new series' sample is in the sum: {want}");
    let (_, got) = get(&a, Some(TENANT), &path);
    assert_eq!(got, want, "the new sample is in the fresh, uncached part");
    // Older than the freshness window now: cached with the new sample, and read back.
    std::thread::sleep(Duration::from_secs(6));
    for _ in 0..2 {
        let (_, got) = get(&a, Some(TENANT), &path);
        assert_eq!(got, want, "cached after the freshness window");
    }

    // Instant queries and the other reads go through the frontend to the querier.
    for path in [
        format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode("sum(qf_test)"),
            secs(now)
        ),
        "/prometheus/api/v1/labels".to_string(),
        format!("/prometheus/api/v1/series?match[]={}", urlencode("qf_test")),
        "/prometheus/api/v1/label/i/values".to_string(),
        "/api/v1/query?query=up".to_string(),
    ] {
        let want = reference(&r, &path);
        assert_eq!(get(&a, Some(TENANT), &path), (200, want.clone()), "{path}");
        assert_eq!(get(&qf, Some(TENANT), &path), (200, want), "{path}");
    }

    // Bad input: the right 4xx with a clear message, and the frontend keeps serving.
    let bad = [
        (
            range_path("sum(rate(qf_test[5m])", now - 60_000, now, "15"),
            400,
            "parse error",
        ),
        (
            range_path("qf_test", now - 86_400_000, now, "1"),
            400,
            "11,000 points",
        ),
        (
            range_path("qf_test", now - 2 * 86_400_000, now, "60"),
            400,
            "max_query_length",
        ),
        (
            range_path("qf_test", now - 60_000, now, "0"),
            400,
            "zero or negative",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", urlencode("1 +")),
            400,
            "parse error",
        ),
    ];
    for (path, status, want) in &bad {
        let (got, body) = get(&a, Some(TENANT), path);
        assert_eq!(got, *status, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errorType"], "bad_data", "{body}");
        assert!(
            v["error"].as_str().unwrap().contains(want),
            "{path}: {body}"
        );
    }
    let (status, body) = get(&a, None, &range_path("qf_test", now - 60_000, now, "15"));
    assert_eq!(status, 401, "no tenant: {body}");
    assert!(body.contains("X-Scope-OrgID"), "{body}");
    let path = range_path("qf_test", now - 60_000, now, "15");
    assert_eq!(get(&a, Some(TENANT), &path).1, reference(&r, &path));
    assert!(
        a.metric("norn_query_frontend_queries_total{op=\"query_range\",status=\"400\"}") >= 4.0
    );
    assert!(
        a.log().contains("slow query"),
        "every query takes over 1ms: the slow-query log has them"
    );
}
