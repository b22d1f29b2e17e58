//! A ruler that evaluates through a query-frontend (`--ruler.query-frontend.address`), with
//! real processes joined by gossip:
//!
//! * `A`: `--target=ingester,distributor,querier,query-frontend` — the write path, a querier
//!   and, in front of it, the query-frontend serving `/prometheus/api/v1/query`;
//! * `B`: `--target=ruler` with `--ruler.query-frontend.address=127.0.0.1:<A's HTTP port>`,
//!   sharing A's filesystem bucket (rule storage) and writing through the ingester ring.
//!
//! A recording rule's series equals the querier's answer at the same timestamps; an alerting
//! rule (whose annotation runs a template `query`) fires; every query the ruler made arrived
//! at A's frontend (its request counter is at least the ruler's query counter read before it),
//! and none failed (the `for`-state restore read, a range query, included).
//! Waits are bounded and generous (a loaded 2-core box); assertions are on values only.

mod common;

use std::time::{Duration, Instant};

use common::{Norn, now_ms, request, series, urlencode};

const TENANT: &str = "team-qf";

const GROUP: &str = r#"
name: via-frontend
interval: 1s
rules:
  - record: job:up:x2
    expr: up * 2
  - alert: UpHigh
    expr: up{job="a"} > 0
    for: 2s
    labels:
      severity: '{{ $labels.job }}-page'
    annotations:
      total: '{{ with query "sum(up) * 3" }}{{ . | first | value }}{{ end }}'
"#;

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn instant(n: &Norn, q: &str, t_ms: i64) -> Vec<serde_json::Value> {
    let (status, v) = n.get_json(
        Some(TENANT),
        &format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode(q),
            t_ms as f64 / 1000.0
        ),
    );
    assert_eq!(status, 200, "{v}");
    v["data"]["result"].as_array().unwrap().clone()
}

#[test]
fn ruler_evaluates_through_the_query_frontend() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bucket = root.join("bucket");
    let gossip = [common::free_port(), common::free_port()];
    let args = |i: usize, extra: &[String]| -> Vec<String> {
        let mut a = common::gossip_args(gossip[i], &gossip[..1]);
        a.extend([
            "--ingester.ring.replication-factor=1".to_string(),
            "--ingester.ring.heartbeat-period=500ms".to_string(),
            "--ruler.ring.heartbeat-period=500ms".to_string(),
            "--ruler.ring.heartbeat-timeout=5s".to_string(),
            "--ruler.poll-interval=1s".to_string(),
        ]);
        a.extend(extra.iter().cloned());
        a
    };
    let a_args = args(
        0,
        &[
            "--target=ingester,distributor,querier,query-frontend".into(),
            "--ingester.ring.instance-id=ingester-0".into(),
        ],
    );
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let a = Norn::start_with_bucket(&root.join("a"), &bucket, &a_args);
    let b_args = args(
        1,
        &[
            "--target=ruler".into(),
            "--ruler.ring.instance-id=ruler-0".into(),
            format!("--ruler.query-frontend.address=127.0.0.1:{}", a.port),
            "--ruler.query-frontend.timeout=20s".into(),
            // for: 2s is at least the grace period: the alert's for state is restored (a
            // range query of ALERTS_FOR_STATE through the frontend) after the 2nd evaluation.
            "--ruler.for-grace-period=1s".into(),
        ],
    );
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b = Norn::start_with_bucket(&root.join("b"), &bucket, &b_args);
    common::wait_ring_page(
        &a,
        "/ring",
        "the ingester",
        Duration::from_secs(60),
        common::all_active(1),
    );

    // up{job=a|b}: a sample a second from 10s ago to ~3 minutes ahead.
    let start_ms = now_ms() / 1000 * 1000 - 10_000;
    let ts = [("a", 1.0), ("b", 100.0)]
        .iter()
        .map(|(job, base)| {
            let samples: Vec<(i64, f64)> = (0..200)
                .map(|i| (start_ms + i * 1000, base + i as f64))
                .collect();
            series(&[("__name__", "up"), ("job", job)], &samples)
        })
        .collect();
    let (status, body) = a.push(Some(TENANT), &request(ts));
    assert_eq!(status, 200, "{body}");

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(&b.url("/prometheus/config/v1/rules/ns"))
        .header("X-Scope-OrgID", TENANT)
        .send(GROUP.as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    // The alert fires on B (for: 2s; the restore read after the 2nd evaluation goes through
    // the frontend too), with the template query's answer in its annotation.
    let alert = wait_for("the alert to fire", Duration::from_secs(120), || {
        let (_, v) = b.get_json(Some(TENANT), "/prometheus/api/v1/alerts");
        let alerts = v["data"]["alerts"].as_array()?.clone();
        (alerts.len() == 1 && alerts[0]["state"] == "firing").then(|| alerts[0].clone())
    });
    assert_eq!(alert["labels"]["alertname"], "UpHigh");
    assert_eq!(alert["labels"]["severity"], "a-page");
    let total: f64 = alert["annotations"]["total"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("template query answered {alert}: {e}"));
    assert!(total >= 3.0 * 101.0, "{alert}");
    let (_, rules) = b.get_json(Some(TENANT), "/prometheus/api/v1/rules");
    for r in rules["data"]["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(r["health"], "ok", "{rules}");
    }

    // Every query of the ruler arrived at A's frontend: B's count read first, A's after it,
    // before this test sends A any query of its own.
    let labels = format!("{{tenant=\"{TENANT}\"}}");
    let ruler_queries = b.metric(&format!("norn_ruler_queries_total{labels}"));
    let frontend_queries = a.metric("norn_query_frontend_queries_total{op=\"query\"");
    eprintln!("ruler queries {ruler_queries}, frontend instant queries {frontend_queries}");
    // Per evaluation a recording and an alerting rule, and the template query once the
    // alert is active; once the restore read.
    assert!(ruler_queries >= 6.0, "ruler queries: {ruler_queries}");
    assert!(
        frontend_queries >= ruler_queries,
        "frontend saw {frontend_queries} instant queries, the ruler made {ruler_queries}"
    );
    assert_eq!(
        b.metric(&format!("norn_ruler_queries_failed_total{labels}")),
        0.0,
        "{}",
        b.log()
    );

    // The recorded series equals the querier's answer at the same timestamps.
    let got = wait_for("recorded samples", Duration::from_secs(60), || {
        let got = a.raw_samples(Some(TENANT), "job:up:x2", now_ms() - 120_000, now_ms());
        (got.len() == 2 && got.iter().all(|(_, s)| !s.is_empty())).then_some(got)
    });
    for (labels, samples) in &got {
        let job = if labels.contains("\"a\"") { "a" } else { "b" };
        for &(t, v) in samples {
            let want = instant(&a, &format!("up{{job=\"{job}\"}} * 2"), t);
            let want: f64 = want[0]["value"][1].as_str().unwrap().parse().unwrap();
            assert_eq!(v, want, "{labels} at {t}");
        }
    }
    drop(b);
    drop(a);
}
