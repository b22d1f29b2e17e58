//! The query-frontend's queue with real processes on 127.0.0.1: an ingester+distributor, a
//! `--target=query-frontend` with no downstream URL, and two `--target=querier` processes
//! that connect out to it (`--querier.frontend-address`) with two workers each.
//!
//! What must hold:
//! * `kill -9` of one querier while queries are queued: every query still answers, with the
//!   right data (its in-flight requests are re-queued to the other querier);
//! * fairness: while tenant A floods 100 slow queries, tenant B's cheap queries never wait for
//!   one of A's to finish (A may hold its fair share, half the workers, while B is active), so B's median
//!   stays below one A query's latency (asserted) and near B's median alone (the ratio is
//!   printed; the target is 2x);
//! * `--query-frontend.max-outstanding-requests-per-tenant` refuses the flooding tenant with
//!   429 naming the limit, and only that tenant;
//! * an answer larger than the queriers' `--querier.frontend-client.grpc-max-send-msg-size`
//!   is a 413 naming the flag, and the queriers go on answering.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Norn, free_port, request, series, urlencode};

/// One cluster at a time: latencies should not depend on another test's processes.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

const A: &str = "tenant-a";
const B: &str = "tenant-b";
/// Series per tenant, and an hour of samples every 15 s ending at [`Cluster::end`].
const SERIES_A: usize = 400;
const SERIES_B: usize = 4;

struct Cluster {
    backend: Norn,
    frontend: Norn,
    queriers: Vec<Norn>,
    /// End of the data (ms); queries read the hour before it.
    end: i64,
}

fn start(root: &Path, frontend_extra: &[&str]) -> Cluster {
    start_with(root, frontend_extra, &[])
}

/// [`start`] with more flags for both queriers.
fn start_with(root: &Path, frontend_extra: &[&str], querier_extra: &[&str]) -> Cluster {
    let bucket = root.join("bucket");
    let gossip: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let seeds = &gossip[..1];
    let args = |i: usize, extra: &[String]| {
        let mut a = common::gossip_args(gossip[i], seeds);
        a.extend([
            "--ingester.ring.replication-factor=1".to_string(),
            "--ingester.ring.heartbeat-period=500ms".to_string(),
            "--distributor.ingestion-rate-limit=100000000".to_string(),
            "--distributor.ingestion-burst-size=100000000".to_string(),
            // Each leg whole: one request per query in the queue.
            "--query-frontend.split-queries-by-interval=0".to_string(),
        ]);
        a.extend(extra.iter().cloned());
        a
    };
    let backend = {
        let a = args(
            0,
            &[
                "--target=ingester,distributor".into(),
                "--ingester.ring.instance-id=ingester-0".into(),
            ],
        );
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        Norn::start_with_bucket(&root.join("backend"), &bucket, &a)
    };

    // The frontend is not ready until a querier connects: started by hand, waited for last.
    let fe_dir = root.join("frontend");
    std::fs::create_dir_all(&fe_dir).unwrap();
    let (fe_http, fe_grpc) = (free_port(), free_port());
    let mut fe_args = args(1, &["--target=query-frontend".into()]);
    fe_args.extend(frontend_extra.iter().map(|s| s.to_string()));
    let log = std::fs::File::create(fe_dir.join("norn.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={fe_http}"))
        .arg("--server.grpc-listen-address=127.0.0.1")
        .arg(format!("--server.grpc-listen-port={fe_grpc}"))
        .arg(format!(
            "--common.storage.filesystem.dir={}",
            bucket.display()
        ))
        .args(&fe_args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the query-frontend");
    let mut frontend = Norn::adopt(child, fe_http, &fe_dir);
    // Not ready with no querier: the frontend says why.
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    loop {
        if let Ok(mut r) = agent.get(&frontend.url("/ready")).call() {
            let mut text = String::new();
            let _ = r.body_mut().as_reader().read_to_string(&mut text);
            assert_eq!(r.status().as_u16(), 503, "ready with no querier: {text}");
            assert!(text.contains("no querier is connected"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "frontend never answered /ready\n{}",
            frontend.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let queriers: Vec<Norn> = (0..2)
        .map(|i| {
            let mut own = vec![
                "--target=querier".to_string(),
                format!("--querier.frontend-address=127.0.0.1:{fe_grpc}"),
                "--querier.max-concurrent=2".into(),
            ];
            own.extend(querier_extra.iter().map(|s| s.to_string()));
            let a = args(2 + i, &own);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            Norn::start_with_bucket(&root.join(format!("querier-{i}")), &bucket, &a)
        })
        .collect();
    frontend.wait_ready();

    // An hour of data for both tenants, ending a minute ago.
    let end = common::now_ms() / 15_000 * 15_000 - 60_000;
    for (tenant, n) in [(A, SERIES_A), (B, SERIES_B)] {
        let ts: Vec<_> = (0..n)
            .map(|i| {
                let samples: Vec<(i64, f64)> = (0..240)
                    .map(|k| (end - (239 - k) * 15_000, (k * (i as i64 + 1)) as f64))
                    .collect();
                series(
                    &[
                        ("__name__", "load"),
                        ("i", &i.to_string()),
                        ("job", &format!("j{}", i % 10)),
                    ],
                    &samples,
                )
            })
            .collect();
        let (status, body) = backend.push(Some(tenant), &request(ts));
        assert_eq!(status, 200, "{body}");
    }
    let c = Cluster {
        backend,
        frontend,
        queriers,
        end,
    };
    // Both queriers see the ingester: every answer has the data. Asked as A, so that B is
    // not active yet: a test that floods A alone gets every worker (with B active, A would
    // hold only its share, half of them).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answers: Vec<_> = (0..6).map(|_| c.query(A, CHEAP)).collect();
        if answers
            .iter()
            .all(|(s, b)| *s == 200 && b.contains("\"values\""))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queriers never answered with data: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c
}

/// A's slow query: every series, rate over the hour at a 15 s step.
const SLOW: &str = "sum by (job) (rate(load[5m])) * on() group_left() count(load)";
/// B's cheap query.
const CHEAP: &str = "sum(rate(load[5m]))";

impl Cluster {
    fn path(&self, q: &str) -> String {
        format!(
            "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=15",
            urlencode(q),
            (self.end - 3_600_000) / 1000,
            self.end / 1000
        )
    }

    /// A range query through the frontend: status and body.
    fn query(&self, tenant: &str, q: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut resp = agent
            .get(&self.frontend.url(&self.path(q)))
            .header("X-Scope-OrgID", tenant)
            .call()
            .expect("query request");
        let status = resp.status().as_u16();
        let mut text = String::new();
        let _ = resp.body_mut().as_reader().read_to_string(&mut text);
        (status, text)
    }

    /// Sends `n` queries of `tenant` at once, each on its own thread.
    fn flood(
        &self,
        tenant: &'static str,
        q: &'static str,
        n: usize,
    ) -> Vec<std::thread::JoinHandle<(u16, String)>> {
        let url = self.frontend.url(&self.path(q));
        (0..n)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(300)))
                        .build()
                        .into();
                    let mut resp = agent
                        .get(&url)
                        .header("X-Scope-OrgID", tenant)
                        .call()
                        .expect("query request");
                    let status = resp.status().as_u16();
                    let mut text = String::new();
                    let _ = resp.body_mut().as_reader().read_to_string(&mut text);
                    (status, text)
                })
            })
            .collect()
    }

    fn queue_length(&self, tenant: &str) -> f64 {
        self.frontend.metric(&format!(
            "norn_query_frontend_queue_length{{tenant=\"{tenant}\"}}"
        ))
    }

    /// Waits until `tenant` has at least `n` requests queued.
    fn wait_queued(&self, tenant: &str, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.queue_length(tenant) < n {
            assert!(
                Instant::now() < deadline,
                "{tenant} never had {n} requests queued\n{}",
                self.frontend.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Median latency of `n` cheap queries of B, one after another (all must succeed).
    fn b_median(&self, n: usize) -> Duration {
        let mut took: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                let (status, body) = self.query(B, CHEAP);
                assert_eq!(status, 200, "{body}");
                t.elapsed()
            })
            .collect();
        took.sort();
        took[n / 2]
    }
}

#[test]
fn killing_a_querier_with_queries_queued_loses_none() {
    let _one = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = start(tmp.path(), &[]);
    let (status, expected) = c.query(A, SLOW);
    assert_eq!(status, 200, "{expected}");
    assert!(expected.contains("\"values\""), "{expected}");

    let flood = c.flood(A, SLOW, 40);
    c.wait_queued(A, 10.0);
    c.queriers[0].kill9();
    let answers: Vec<_> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body, &expected,
            "a query answered differently after the kill"
        );
    }
    let requeued = c
        .frontend
        .metric("norn_query_frontend_requeued_requests_total");
    eprintln!("40 queries answered; re-queued after the kill: {requeued}");
    assert!(
        requeued >= 1.0,
        "the killed querier's workers were busy: their requests were re-queued"
    );
    assert_eq!(
        c.frontend.metric("norn_query_frontend_connected_workers"),
        2.0,
        "only the live querier's two workers remain"
    );
    drop(c.backend);
}

#[test]
fn a_flooding_tenant_does_not_starve_a_quiet_one() {
    let _one = serial();
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path(), &[]);
    // Warm both paths, then B alone.
    c.b_median(3);
    let alone = c.b_median(7);
    // One of A's slow queries alone: what B may have to wait for (a worker to free up).
    let t = Instant::now();
    assert_eq!(c.query(A, SLOW).0, 200);
    let a_alone = t.elapsed();

    let flood = c.flood(A, SLOW, 100);
    c.wait_queued(A, 20.0);
    let loaded = c.b_median(7);
    let still_queued = c.queue_length(A);
    let answers: Vec<_> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let ratio = loaded.as_secs_f64() / alone.as_secs_f64();
    let vs_slow = loaded.as_secs_f64() / a_alone.as_secs_f64();
    eprintln!(
        "tenant B median alone {alone:?}, under A's flood of 100 {loaded:?}: ratio {ratio:.2}; \
         one A query alone {a_alone:?}, B under flood / A alone {vs_slow:.2} \
         (A still had {still_queued} queued when B finished)"
    );
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert!(
        still_queued > 0.0,
        "B was measured while A's queue was not empty"
    );
    // Round robin, and one worker kept for another tenant while A floods: B waits for no A
    // query at all (before that bound it waited for one to finish, ~30x its own latency;
    // FIFO would make it wait for A's whole queue). What remains is sharing 2 cores with
    // A's running queries; the ratio to B alone (the figure, target 2x) is printed,
    // the assertion is the one that does not depend on the machine's load.
    assert!(
        vs_slow < 1.0,
        "B's median under A's flood is {vs_slow:.2}x one A query alone: B waited for A's queries"
    );
}

#[test]
fn the_outstanding_limit_refuses_only_the_flooding_tenant() {
    let _one = serial();
    let tmp = tempfile::tempdir().unwrap();
    let c = start(
        tmp.path(),
        &["--query-frontend.max-outstanding-requests-per-tenant=5"],
    );
    let flood = c.flood(A, SLOW, 30);
    c.wait_queued(A, 5.0);
    for _ in 0..3 {
        let (status, body) = c.query(B, CHEAP);
        assert_eq!(status, 200, "B is not limited by A's queue: {body}");
    }
    let answers: Vec<_> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    eprintln!("A: {ok} answered, {} refused with 429", refused.len());
    assert_eq!(ok + refused.len(), answers.len(), "{answers:?}");
    assert!(!refused.is_empty(), "30 at once over a limit of 5");
    assert!(ok >= 5, "what fits in the queue is answered");
    let body = &refused[0].1;
    assert!(
        body.contains("max_outstanding_per_tenant")
            && body.contains("\"errorType\":\"too_many_requests\""),
        "{body}"
    );
    assert!(
        c.frontend.metric(
            "norn_query_frontend_discarded_requests_total{reason=\"too_many_outstanding\"}"
        ) >= refused.len() as f64
    );
}

#[test]
fn an_answer_over_the_queriers_send_bound_is_a_413_naming_the_flag() {
    let _one = serial();
    let tmp = tempfile::tempdir().unwrap();
    let c = start_with(
        tmp.path(),
        &[],
        &["--querier.frontend-client.grpc-max-send-msg-size=1048576"],
    );
    // A's 400 series unaggregated, ~225 points each: a few MB of JSON.
    let legs_before = c
        .frontend
        .metric("norn_query_frontend_queue_duration_seconds_count");
    let (status, body) = c.query(A, "rate(load[5m])");
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("querier.frontend-client.grpc-max-send-msg-size")
            && body.contains("1048576")
            && body.contains("\"errorType\":\"execution\""),
        "{body}"
    );
    // Refused once: the request was not re-queued for another querier to evaluate again.
    let legs = c
        .frontend
        .metric("norn_query_frontend_queue_duration_seconds_count")
        - legs_before;
    assert_eq!(legs, 1.0, "the request was queued {legs} times");
    // The workers are still there: an aggregate of the same series answers.
    let (status, body) = c.query(A, CHEAP);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"values\""), "{body}");
}
