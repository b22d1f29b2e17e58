//! Issue 14's hostile queries against the real process: deep PromQL used to abort it with a
//! stack overflow (also through `format_query`, without a tenant), and a runaway subquery
//! kept burning CPU and memory after its request had timed out. Bounds are generous: the
//! checks are "the process is alive", "the answer is the right error", "CPU and memory stop
//! growing", never a latency.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Norn, urlencode};

fn pid(n: &Norn) -> u32 {
    n.child.as_ref().expect("running").id()
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn hostile_queries_do_not_take_the_process_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(dir.path(), &["--querier.max-samples=5000000"]);
    let terms = vec!["1"; 10_000].join("+");
    let parens = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    for q in [&terms, &parens] {
        let path = format!("/prometheus/api/v1/query?query={}", urlencode(q));
        let (s, v) = n.get_json(Some("t"), &path);
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["errorType"], "bad_data", "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("querier.max-query-expression-depth"),
            "{v}"
        );
        let path = format!("/prometheus/api/v1/format_query?query={}", urlencode(q));
        let (s, v) = n.get_json(None, &path);
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["errorType"], "bad_data", "{v}");
    }
    n.wait_ready();

    // Three runaway subqueries at once as range queries, whose steps share a subquery cache
    // (it used to be uncounted: 5M cached steps are ~650 MB per query).
    let pid = pid(&n);
    let path = format!(
        "/prometheus/api/v1/query_range?query={}&start=0&end=60&step=60&timeout=3s",
        urlencode("count_over_time(vector(1)[30d:1ms])")
    );
    let started = Instant::now();
    let mut peak_rss = 0;
    let answers = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| n.get_json(Some("t"), &path)))
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            peak_rss = peak_rss.max(rss_bytes(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(started.elapsed() < Duration::from_secs(30));
    for (s, v) in answers {
        // The sample limit, or the timeout on a slow machine.
        assert!(
            (s == 422 && v["errorType"] == "execution")
                || (s == 503 && v["errorType"] == "timeout"),
            "{s} {v}"
        );
    }
    assert!(
        peak_rss < 1 << 30,
        "RSS reached {} MB with three queries of at most 5M samples (80 MB) each",
        peak_rss >> 20
    );

    // A subquery that holds nothing (every inner step is empty) only burns CPU: 2.6e9 inner
    // steps. It must stop at the request's deadline, not at querier.timeout (2m).
    let path = format!(
        "/prometheus/api/v1/query?query={}&timeout=2s",
        urlencode("count_over_time((vector(1) > 2)[30d:1ms])")
    );
    let (s, v) = n.get_json(Some("t"), &path);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["errorType"], "timeout", "{v}");
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 1.5,
        "{used} CPU-s in 3 s after the query was answered: its evaluation runs on"
    );
    n.wait_ready();
    assert!(n.metric("norn_querier_stopped_queries_total") >= 1.0);
    assert_eq!(n.metric("norn_querier_running_queries"), 0.0);

    // A client that goes away: the same CPU-only query with a long timeout, the connection
    // closed after half a second. Its evaluation must stop too.
    let path = format!(
        "/prometheus/api/v1/query?query={}&timeout=60s",
        urlencode("count_over_time((vector(1) > 2)[30d:1ms])")
    );
    {
        let mut conn = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Scope-OrgID: t\r\n\r\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while n.metric("norn_querier_stopped_queries_total{reason=\"canceled\"}") < 1.0 {
        assert!(Instant::now() < until, "the dropped query was not stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 1.5,
        "{used} CPU-s in 3 s after the client went away: its evaluation runs on"
    );
    assert_eq!(n.metric("norn_querier_query_threads"), 0.0);
}
