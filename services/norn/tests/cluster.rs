//! Microservices mode, process by process on 127.0.0.1: a distributor, three ingesters at
//! replication factor 3 and a querier, joined only by gossip.
//!
//! What must hold: every acknowledged sample is queryable exactly once; a `kill -9` of one
//! ingester under continuous writes fails no write and loses nothing; the killed ingester
//! rejoins ACTIVE after replaying its WAL; with two of three down writes fail with 5xx and
//! recover when one returns; an HA pair writing through two distributors is deduplicated
//! with the election shared by gossip, and fails over.

mod common;
#[path = "tls/pki.rs"]
mod pki;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Norn, all_active, free_port, now_ms, request, series};
use std::sync::Mutex;

/// Flags every member of a test cluster shares: loopback everywhere, fast heartbeats so the
/// ring notices a dead ingester in seconds.
fn cluster_args(gossip_port: u16, seeds: &[u16]) -> Vec<String> {
    let mut a = common::gossip_args(gossip_port, seeds);
    a.extend([
        "--ingester.ring.heartbeat-period=500ms".to_string(),
        "--ingester.ring.heartbeat-timeout=3s".to_string(),
        "--distributor.remote-timeout=2s".to_string(),
        // Rate limits are not under test; a continuous writer must never hit them.
        "--distributor.ingestion-rate-limit=10000000".to_string(),
        "--distributor.ingestion-burst-size=10000000".to_string(),
    ]);
    a
}

struct Cluster {
    distributors: Vec<Norn>,
    ingesters: Vec<Norn>,
    querier: Norn,
}

fn start_cluster(root: &Path, ingesters: usize, distributors: usize, extra: &[&str]) -> Cluster {
    let bucket = root.join("bucket");
    let ports: Vec<u16> = (0..ingesters + distributors + 1)
        .map(|_| free_port())
        .collect();
    // Seeds: the ingesters' gossip ports, so any member can restart and find the cluster.
    let seeds = &ports[..ingesters];
    let with = |mut a: Vec<String>, more: &[String]| {
        a.extend(more.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let ingesters: Vec<Norn> = (0..ingesters)
        .map(|i| {
            let dir = root.join(format!("ingester-{i}"));
            let args = with(
                cluster_args(ports[i], seeds),
                &[
                    "--target=ingester".to_string(),
                    format!("--ingester.ring.instance-id=ingester-{i}"),
                    format!(
                        "--ingester.ring.tokens-file-path={}",
                        dir.join("tokens.json").display()
                    ),
                ],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Norn::start_with_bucket(&dir, &bucket, &args)
        })
        .collect();
    let distributors = (0..distributors)
        .map(|d| {
            let args = with(
                cluster_args(ports[ingesters.len() + d], seeds),
                &["--target=distributor".to_string()],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Norn::start_with_bucket(&root.join(format!("distributor-{d}")), &bucket, &args)
        })
        .collect();
    let args = with(
        cluster_args(*ports.last().unwrap(), seeds),
        &["--target=querier".to_string()],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let querier = Norn::start_with_bucket(&root.join("querier"), &bucket, &args);
    Cluster {
        distributors,
        ingesters,
        querier,
    }
}

/// Waits until `cond` holds on `n`'s ingester ring; returns how long that took.
fn wait_ring(
    n: &Norn,
    what: &str,
    limit: Duration,
    cond: impl Fn(&[(String, String, bool)]) -> bool,
) -> Duration {
    common::wait_ring_page(n, "/ring", what, limit, cond)
}

const TENANT: Option<&str> = Some("team-a");

/// One cluster at a time: each test runs five or six processes, and the ring's timing (3 s
/// heartbeat timeout) should not depend on how many other clusters share the two cores.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
const SERIES: usize = 20;

/// A continuous writer: one sample per series per push, timestamps one second apart,
/// remembering which pushes were acknowledged and which failed (and when).
struct Writer {
    acked: Arc<Mutex<Vec<i64>>>,
    failed: Arc<Mutex<Vec<(Instant, u16, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(port: u16, base_ms: i64) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, failed, stop) =
                (Arc::clone(&acked), Arc::clone(&failed), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut k = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    let t = base_ms + k * 1000;
                    k += 1;
                    let ts = (0..SERIES)
                        .map(|i| {
                            series(
                                &[("__name__", "load"), ("series", &i.to_string())],
                                &[(t, k as f64)],
                            )
                        })
                        .collect();
                    let body = common::snappy(&prost::Message::encode_to_vec(&request(ts)));
                    let resp = agent
                        .post(&format!("http://127.0.0.1:{port}/api/v1/push"))
                        .header("Content-Encoding", "snappy")
                        .header("Content-Type", "application/x-protobuf")
                        .header("X-Scope-OrgID", TENANT.unwrap())
                        .send(&body[..]);
                    match resp {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(t),
                        Ok(mut r) => {
                            let status = r.status().as_u16();
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            failed.lock().unwrap().push((Instant::now(), status, text));
                        }
                        Err(e) => failed
                            .lock()
                            .unwrap()
                            .push((Instant::now(), 0, e.to_string())),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Writer {
            acked,
            failed,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<i64>, Vec<(Instant, u16, String)>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (acked, failed)
    }
}

/// Every acknowledged timestamp is in every series exactly once.
fn assert_all_acked_readable(q: &Norn, acked: &[i64], base_ms: i64) {
    let end = *acked.iter().max().unwrap();
    let got = q.raw_samples(TENANT, "load", base_ms, end);
    assert_eq!(got.len(), SERIES, "one result per series: {got:?}");
    for (labels, samples) in &got {
        let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
        let mut unique = ts.clone();
        unique.dedup();
        assert_eq!(ts, unique, "{labels}: duplicate timestamps in the result");
        let missing: Vec<&i64> = acked.iter().filter(|t| !ts.contains(t)).collect();
        assert!(
            missing.is_empty(),
            "{labels}: {} acknowledged samples missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

#[test]
fn replicated_cluster_survives_kill9_loses_nothing_and_needs_quorum() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    kill9_and_quorum(root.path(), &[]);
}

/// The same run with mTLS on every gRPC hop (distributor and querier to ingesters, each
/// process with its certificate, client certificates required) and gossip sealed with a key:
/// reconnecting to a restarted ingester goes through a new handshake.
#[test]
fn replicated_cluster_with_mtls_and_a_gossip_key_survives_kill9() {
    if !pki::available() {
        return;
    }
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let ca = pki::ca(d, "ca");
    let node = pki::leaf(d, "node", &ca);
    let key = d.join("gossip.key");
    std::fs::write(&key, "Tm9ybi1jbHVzdGVyLXRlc3QtZ29zc2lwLWtleS0zMmI=\n").unwrap();
    let flags = [
        format!("--server.grpc-tls-cert-path={}", node.crt.display()),
        format!("--server.grpc-tls-key-path={}", node.key.display()),
        format!("--server.grpc-tls-client-ca-path={}", ca.crt.display()),
        "--ingester.client.tls-enabled".to_string(),
        format!("--ingester.client.tls-ca-path={}", ca.crt.display()),
        format!("--ingester.client.tls-cert-path={}", node.crt.display()),
        format!("--ingester.client.tls-key-path={}", node.key.display()),
        format!("--memberlist.encryption-key-path={}", key.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    kill9_and_quorum(&d.join("cluster"), &flags);
}

fn kill9_and_quorum(root: &Path, extra: &[&str]) {
    let mut c = start_cluster(root, 3, 1, extra);
    let d = &c.distributors[0];
    let took = wait_ring(
        d,
        "3 ACTIVE ingesters",
        Duration::from_secs(30),
        all_active(3),
    );
    eprintln!("cluster formed: ring with 3 ACTIVE ingesters after {took:?}");
    wait_ring(
        &c.querier,
        "3 ACTIVE ingesters",
        Duration::from_secs(30),
        all_active(3),
    );

    // Plain writes and reads.
    let base = now_ms() - 600_000;
    let writer = Writer::start(d.port, base);
    std::thread::sleep(Duration::from_secs(2));

    // kill -9 one ingester under load.
    c.ingesters[1].kill9();
    let killed_at = Instant::now();
    let unhealthy = wait_ring(d, "ingester-1 unhealthy", Duration::from_secs(20), |r| {
        r.iter().any(|(id, _, h)| id == "ingester-1" && !*h)
    });
    eprintln!("kill -9 → ring marks ingester-1 unhealthy after {unhealthy:?}");
    std::thread::sleep(Duration::from_secs(2));

    // Restart it: it replays its WAL and comes back ACTIVE.
    let restart_started = Instant::now();
    c.ingesters[1].restart();
    wait_ring(
        d,
        "ingester-1 ACTIVE again",
        Duration::from_secs(30),
        all_active(3),
    );
    eprintln!(
        "restart → ring shows ingester-1 ACTIVE and healthy after {:?} ({:?} after kill)",
        restart_started.elapsed(),
        killed_at.elapsed()
    );
    // Its series came back from its WAL, not from new writes alone.
    let replayed = c.ingesters[1].metric("norn_ingester_wal_replay_duration_seconds");
    assert!(
        replayed > 0.0,
        "the restarted ingester replayed its tenant's WAL"
    );
    let in_memory = c.ingesters[1].metric("norn_ingester_memory_series");
    assert!(
        in_memory >= SERIES as f64,
        "series in memory after restart: {in_memory}"
    );
    eprintln!(
        "ingester-1 after restart: {in_memory} series in memory, WAL replayed in {replayed}s"
    );
    // The operator pages.
    let (status, page) = d.get_text("/ring");
    assert_eq!(status, 200);
    assert!(
        page.contains("ingester-0") && page.contains("ACTIVE"),
        "{page}"
    );
    let (status, page) = d.get_text("/memberlist");
    assert_eq!(status, 200);
    assert!(page.contains("ingester"), "{page}");
    std::thread::sleep(Duration::from_secs(2));
    let (acked, failed) = writer.finish();
    assert!(
        acked.len() > 50,
        "the writer made progress: {}",
        acked.len()
    );
    assert!(
        failed.is_empty(),
        "no write may fail while a quorum of ingesters is up: {failed:?}"
    );
    assert_all_acked_readable(&c.querier, &acked, base);
    eprintln!(
        "{} pushes acknowledged, all readable, no duplicates",
        acked.len()
    );

    // Two of three down: writes fail with 5xx, never 2xx.
    c.ingesters[0].kill9();
    c.ingesters[2].kill9();
    let t = now_ms() - 1000;
    let req = request(vec![series(
        &[("__name__", "load"), ("series", "0")],
        &[(t, 1.0)],
    )]);
    let (status, body) = d.push(TENANT, &req);
    assert!(
        (500..600).contains(&status),
        "two of three ingesters down must fail the push with 5xx, got {status}: {body}"
    );
    // Still 5xx once the ring has noticed (a different code path: no quorum in the ring).
    wait_ring(d, "two unhealthy ingesters", Duration::from_secs(20), |r| {
        r.iter().filter(|(_, _, h)| !*h).count() == 2
    });
    let (status, body) = d.push(TENANT, &req);
    assert!((500..600).contains(&status), "got {status}: {body}");
    assert!(
        body.contains("unhealthy") || body.contains("quorum"),
        "{body}"
    );

    // One comes back: writes succeed again and everything acknowledged is still there.
    c.ingesters[2].restart();
    let started = Instant::now();
    loop {
        let (status, body) = d.push(TENANT, &req);
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes did not recover after an ingester came back: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "writes recovered {:?} after the second ingester restarted",
        started.elapsed()
    );
    wait_ring(
        &c.querier,
        "ingester-2 healthy",
        Duration::from_secs(30),
        |r| {
            r.iter()
                .any(|(id, s, h)| id == "ingester-2" && s == "ACTIVE" && *h)
        },
    );
    assert_all_acked_readable(&c.querier, &acked, base);
}

#[test]
fn ha_pair_through_two_distributors_is_deduplicated_and_fails_over() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let c = start_cluster(
        root.path(),
        1,
        2,
        &[
            "--ingester.ring.replication-factor=1",
            "--distributor.ha-tracker.enable",
            "--distributor.ha-tracker.enable-for-all-users",
            "--distributor.ha-tracker.failover-timeout=3s",
            "--distributor.ha-tracker.update-timeout=500ms",
            "--distributor.ha-tracker.update-timeout-jitter-max=0s",
        ],
    );
    for d in &c.distributors {
        wait_ring(
            d,
            "1 ACTIVE ingester",
            Duration::from_secs(30),
            all_active(1),
        );
    }
    let push = |d: &Norn, replica: &str, t: i64, v: f64| {
        let req = request(vec![series(
            &[
                ("__name__", "ha_up"),
                ("cluster", "prod"),
                ("__replica__", replica),
            ],
            &[(t, v)],
        )]);
        d.push(TENANT, &req)
    };
    let base = now_ms() - 120_000;
    // Replica a writes through distributor 0 and is elected.
    assert_eq!(push(&c.distributors[0], "a", base, 1.0).0, 200);
    // Replica b writes the same series through distributor 1, which learned the election by
    // gossip: refused with 202, naming the elected replica.
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = push(&c.distributors[1], "b", base + 1000, 100.0);
    assert_eq!(
        status, 202,
        "distributor 1 must know replica a is elected: {body}"
    );
    assert!(
        body.contains("elected=a"),
        "names the elected replica: {body}"
    );
    // Both keep writing for a while; only a's samples are stored.
    let mut t = base + 10_000;
    let mut a_last = base;
    for _ in 0..5 {
        assert_eq!(push(&c.distributors[0], "a", t, 1.0).0, 200);
        a_last = t;
        assert_eq!(push(&c.distributors[1], "b", t, 100.0).0, 202);
        t += 1000;
        std::thread::sleep(Duration::from_millis(200));
    }
    // a stops; b takes over once the failover timeout passed since a's last write.
    let stopped = Instant::now();
    let took_over = loop {
        t += 1000;
        let (status, body) = push(&c.distributors[1], "b", t, 100.0);
        if status == 200 {
            break stopped.elapsed();
        }
        assert_eq!(status, 202, "{body}");
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "replica b never took over"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("replica b took over {took_over:?} after replica a stopped (failover timeout 3s)");
    // The failover counts from a's last-seen time in the store, refreshed every update
    // timeout (500ms), and `stopped` is 200ms after a's last push.
    assert!(took_over >= Duration::from_millis(2000), "{took_over:?}");
    // And now a is the one refused.
    t += 1000;
    assert_eq!(push(&c.distributors[0], "a", t, 1.0).0, 202);

    let got = c.querier.raw_samples(TENANT, "ha_up", base, t);
    assert_eq!(got.len(), 1, "one series, without __replica__: {got:?}");
    assert!(!got[0].0.contains("__replica__"), "{}", got[0].0);
    let samples = &got[0].1;
    assert!(samples.iter().any(|(_, v)| *v == 1.0) && samples.iter().any(|(_, v)| *v == 100.0));
    for (ts, v) in samples {
        let expected = if *ts <= a_last { 1.0 } else { 100.0 };
        assert_eq!(
            *v, expected,
            "at {ts}: a until it stopped, b after: {samples:?}"
        );
    }
}

#[test]
fn joining_ingester_takes_series_and_leaving_one_loses_nothing() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut c = start_cluster(root.path(), 3, 1, &[]);
    let d = &c.distributors[0];
    wait_ring(
        d,
        "3 ACTIVE ingesters",
        Duration::from_secs(30),
        all_active(3),
    );
    wait_ring(
        &c.querier,
        "3 ACTIVE ingesters",
        Duration::from_secs(30),
        all_active(3),
    );
    let base = now_ms() - 600_000;
    let writer = Writer::start(d.port, base);
    std::thread::sleep(Duration::from_secs(1));

    // Scale up: a fourth ingester joins through the same seeds and owns its tokens' ranges.
    let seeds: Vec<u16> = c
        .ingesters
        .iter()
        .map(|i| {
            let a = i
                .extra_args
                .iter()
                .find_map(|a| a.strip_prefix("--memberlist.bind-port="))
                .unwrap();
            a.parse().unwrap()
        })
        .collect();
    let dir = root.path().join("ingester-3");
    let mut args = cluster_args(free_port(), &seeds);
    args.push("--target=ingester".into());
    args.push("--ingester.ring.instance-id=ingester-3".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let joined = Norn::start_with_bucket(&dir, &root.path().join("bucket"), &args);
    wait_ring(
        d,
        "4 ACTIVE ingesters",
        Duration::from_secs(30),
        all_active(4),
    );
    let started = Instant::now();
    while joined.metric("norn_ingester_memory_series") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new ingester never got a series"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "ingester-3 joined and holds {} of {SERIES} series",
        joined.metric("norn_ingester_memory_series")
    );
    c.ingesters.push(joined);

    // Scale down: SIGTERM one of the first ingesters under load; it leaves the ring.
    let status = c.ingesters[0].stop();
    assert!(status.success(), "clean exit: {status}");
    wait_ring(d, "ingester-0 gone", Duration::from_secs(20), |r| {
        r.len() == 3
            && r.iter()
                .all(|(id, s, h)| id != "ingester-0" && s == "ACTIVE" && *h)
    });
    std::thread::sleep(Duration::from_secs(1));
    let (acked, failed) = writer.finish();
    assert!(
        failed.is_empty(),
        "no write may fail while ingesters join and leave: {failed:?}"
    );
    wait_ring(
        &c.querier,
        "ingester-0 gone",
        Duration::from_secs(20),
        |r| r.len() == 3,
    );
    assert_all_acked_readable(&c.querier, &acked, base);
    eprintln!(
        "{} pushes acknowledged through a join and a leave, all readable",
        acked.len()
    );
}

/// Remote write 2.0 at replication factor 3: the batch decoded from 2.0 is re-encoded for the
/// ingesters like a 1.0 one, carrying each series' start timestamp, so every replica stores
/// the created-timestamp zero once and the querier merges the replicas into one series; the
/// second request with the same start time is not refused on any replica; metadata arrives.
#[test]
fn remote_write_v2_replicates_with_start_timestamps_and_metadata() {
    use norn_proto::prometheus_write_v2 as v2;
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let c = start_cluster(root.path(), 3, 1, &[]);
    let d = &c.distributors[0];
    for n in [d, &c.querier] {
        wait_ring(
            n,
            "3 ACTIVE ingesters",
            Duration::from_secs(30),
            all_active(3),
        );
    }
    let base = now_ms() - 120_000;
    let start = base - 60_000;
    let req = |t: i64, v: f64| v2::Request {
        symbols: ["", "__name__", "v2_jobs_total", "job", "batch", "Jobs run."]
            .map(String::from)
            .to_vec(),
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample {
                value: v,
                timestamp: t,
                start_timestamp: start,
            }],
            metadata: Some(v2::Metadata {
                r#type: v2::metadata::MetricType::Counter as i32,
                help_ref: 5,
                unit_ref: 0,
            }),
            ..Default::default()
        }],
    };
    for (i, t) in [base, base + 15_000].into_iter().enumerate() {
        let body = common::snappy(&prost::Message::encode_to_vec(&req(t, 5.0 + i as f64)));
        let (status, text) = d.push_typed(
            TENANT,
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            &body,
        );
        assert_eq!(status, 200, "{text}");
        // The push is answered at quorum; the third replica may still be writing. Sent on at
        // once, the next sample could reach it first and make this one out of order there.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while c
            .ingesters
            .iter()
            .any(|n| n.metric("norn_ingester_head_samples_appended_total") < (i + 1) as f64)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "a replica never got push {i}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let got = c
        .querier
        .raw_samples(TENANT, "v2_jobs_total", start - 1000, base + 15_000);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, [(start, 0.0), (base, 5.0), (base + 15_000, 6.0)]);
    for i in &c.ingesters {
        assert_eq!(i.metric("norn_discarded_samples_total"), 0.0);
        assert_eq!(i.metric("norn_ingester_memory_series"), 1.0);
    }
    let (_, v) = c.querier.get_json(TENANT, "/prometheus/api/v1/metadata");
    assert_eq!(v["data"]["v2_jobs_total"][0]["help"], "Jobs run.", "{v}");
}
