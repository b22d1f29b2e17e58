//! Process-level regression tests for the ingester's hardening (issue 14): absurd timestamps,
//! the TSDB directory lock and listener order, shutdown and readiness, the flush rate limit,
//! the tenant limit, and idle tenants being closed. Each test starts the real `norn` binary on
//! 127.0.0.1 with free ports.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Norn, free_port, now_ms, request, series};

fn post(n: &Norn, path: &str) -> (u16, String) {
    let mut resp = ureq::post(&n.url(path))
        .config()
        .http_status_as_error(false)
        .build()
        .send_empty()
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (status, body)
}

/// Runs a second `norn` with `args` and waits (bounded) for it to exit; returns whether it
/// succeeded and what it logged.
fn run_second(args: &[String]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start second norn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut log);
            return (status.success(), log);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second norn did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files under `dir`, recursively, with their sizes.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    e.metadata().unwrap().len(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_second_process_on_the_same_tsdb_dir_refuses_to_start_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let t = now_ms();
    let (status, body) = n.push(
        Some("a"),
        &request(vec![series(&[("__name__", "m")], &[(t, 1.0)])]),
    );
    assert_eq!(status, 200, "{body}");
    let tsdb = dir.path().join("tsdb");
    let before = listing(&tsdb);

    let (ok, log) = run_second(&[
        "--server.http-listen-address=127.0.0.1".into(),
        format!("--server.http-listen-port={}", free_port()),
        format!("--blocks-storage.tsdb.dir={}", tsdb.display()),
        format!(
            "--common.storage.filesystem.dir={}",
            dir.path().join("bucket").display()
        ),
    ]);
    assert!(!ok, "the second process must not start");
    assert!(log.contains("in use by another process"), "{log}");
    assert_eq!(
        listing(&tsdb),
        before,
        "the second process touched the TSDB dir"
    );

    // The first process is unharmed: it still takes writes and cuts blocks.
    let (status, body) = n.push(
        Some("a"),
        &request(vec![series(&[("__name__", "m")], &[(t + 1000, 2.0)])]),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&n, "/ingester/flush?wait=true");
    assert_eq!(status, 204, "{body}");
    let got = n.raw_samples(Some("a"), "m", t - 1000, t + 2000);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, [(t, 1.0), (t + 1000, 2.0)]);
}

#[test]
fn listeners_are_bound_before_the_tsdb_dir_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let fresh = dir.path().join("fresh-tsdb");
    let (ok, log) = run_second(&[
        "--server.http-listen-address=127.0.0.1".into(),
        format!("--server.http-listen-port={}", n.port),
        format!("--blocks-storage.tsdb.dir={}", fresh.display()),
        format!(
            "--common.storage.filesystem.dir={}",
            dir.path().join("bucket2").display()
        ),
    ]);
    assert!(!ok, "the port is taken");
    assert!(log.contains("binding HTTP listener"), "{log}");
    assert!(
        !fresh.exists(),
        "the TSDB dir was created before the port was bound"
    );
}

#[test]
fn shutdown_makes_ready_fail_and_flush_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let (status, body) = n.push(
        Some("a"),
        &request(vec![series(&[("__name__", "m")], &[(now_ms(), 1.0)])]),
    );
    assert_eq!(status, 200, "{body}");

    // An operator endpoint: once a minute, unless forced.
    assert_eq!(post(&n, "/ingester/flush?wait=true").0, 204);
    let (status, body) = post(&n, "/ingester/flush?wait=true");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("force=true"), "{body}");
    assert_eq!(post(&n, "/ingester/flush?wait=true&force=true").0, 204);
    assert_eq!(post(&n, "/ingester/flush?force=maybe").0, 400);

    assert_eq!(n.get_text("/ready").0, 200);
    let (status, body) = post(&n, "/ingester/shutdown");
    assert_eq!(status, 204, "{body}");
    // Every push now fails, so the orchestrator must see the process as not ready.
    let (status, _) = n.push(
        Some("a"),
        &request(vec![series(&[("__name__", "m")], &[(now_ms(), 2.0)])]),
    );
    assert_eq!(status, 503);
    let (status, body) = n.get_text("/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shut down"), "{body}");
}

#[test]
fn absurd_timestamps_are_refused_and_never_reach_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(dir.path(), &[]);
    let t = now_ms();
    for bad in [i64::MIN, i64::MIN + 1, -1, -(1 << 62)] {
        let (status, body) = n.push(
            Some("a"),
            &request(vec![
                series(&[("__name__", "bad")], &[(bad, 1.0)]),
                series(&[("__name__", "good")], &[(t, 1.0)]),
            ]),
        );
        assert_eq!(status, 400, "t={bad}: {body}");
    }
    // The valid series in the same requests was stored; a flush and a restart (WAL replay)
    // both work, and nothing of the refused samples comes back.
    assert_eq!(post(&n, "/ingester/flush?wait=true&force=true").0, 204);
    n.stop();
    n.restart();
    let (status, body) = n.push(
        Some("a"),
        &request(vec![series(&[("__name__", "good")], &[(t + 1000, 2.0)])]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(post(&n, "/ingester/flush?wait=true&force=true").0, 204);
    let got = n.raw_samples(Some("a"), "good", t - 1000, t + 2000);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, [(t, 1.0), (t + 1000, 2.0)]);
    let (status, v) = n.get_json(
        Some("a"),
        "/prometheus/api/v1/series?match[]=bad&start=-9999999999&end=9999999999",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"], serde_json::json!([]), "{v}");
}

#[test]
fn the_tenant_limit_refuses_new_tenants_retryably_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &["--ingester.instance-limits.max-tenants=2"]);
    let push = |tenant: &str| {
        n.push(
            Some(tenant),
            &request(vec![series(&[("__name__", "m")], &[(now_ms(), 1.0)])]),
        )
    };
    assert_eq!(push("a").0, 200);
    assert_eq!(push("b").0, 200);
    let (status, body) = push("c");
    assert_eq!(status, 503, "a retryable refusal: {body}");
    assert!(body.contains("max_tenants"), "{body}");
    assert_eq!(push("a").0, 200);
    assert_eq!(push("b").0, 200);
    assert!(n.metric("norn_ingester_tenants_refused_total{reason=\"max_tenants\"}") >= 1.0);
    assert!(!dir.path().join("tsdb").join("c").exists());
}

#[test]
fn idle_tenants_are_closed_and_their_data_stays_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(
        dir.path(),
        &[
            "--blocks-storage.tsdb.head-compaction-interval=200ms",
            "--blocks-storage.tsdb.head-compaction-idle-timeout=1s",
            "--blocks-storage.tsdb.close-idle-tsdb-timeout=2s",
            "--blocks-storage.tsdb.ship-interval=300ms",
            "--blocks-storage.bucket-store.sync-interval=300ms",
            // A closed tenant's data is in the bucket only: read it from there at once.
            "--querier.query-store-after=0s",
            "--blocks-storage.bucket-store.ignore-blocks-within=0s",
        ],
    );
    let t = now_ms();
    let (status, body) = n.push(
        Some("idle"),
        &request(vec![series(
            &[("__name__", "m")],
            &[(t, 1.0), (t + 1, 2.0)],
        )]),
    );
    assert_eq!(status, 200, "{body}");
    let tenant_dir = dir.path().join("tsdb").join("idle");
    assert!(tenant_dir.exists());
    let deadline = Instant::now() + Duration::from_secs(60);
    while tenant_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "the idle tenant was not closed\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(n.metric("norn_ingester_idle_tenants_closed_total"), 1.0);
    // The bucket has it all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = n.raw_samples(Some("idle"), "m", t - 1000, t + 1000);
        if got.len() == 1 {
            assert_eq!(got[0].1, [(t, 1.0), (t + 1, 2.0)]);
            break;
        }
        assert!(Instant::now() < deadline, "data not served from the bucket");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A new push opens the tenant again.
    let (status, body) = n.push(
        Some("idle"),
        &request(vec![series(&[("__name__", "m")], &[(now_ms(), 3.0)])]),
    );
    assert_eq!(status, 200, "{body}");
    assert!(tenant_dir.exists());
}

#[test]
fn a_flood_of_new_tenants_never_harms_the_tenants_already_there() {
    // A process with only 256 descriptors: before the budget, a flood of random tenant ids
    // exhausted them and then an existing tenant's block cut failed with EMFILE.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("norn.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_norn"));
    cmd.arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={port}"))
        .arg(format!(
            "--blocks-storage.tsdb.dir={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!(
            "--common.storage.filesystem.dir={}",
            dir.path().join("bucket").display()
        ))
        .arg(format!(
            "--blocks-storage.bucket-store.sync-dir={}",
            dir.path().join("tsdb-sync").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // SAFETY: setrlimit in the forked child before exec; async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut n = Norn::adopt(child, port, dir.path());
    n.wait_ready();
    let push = |tenant: &str, v: f64| {
        n.push(
            Some(tenant),
            &request(vec![series(&[("__name__", "m")], &[(now_ms(), v)])]),
        )
    };
    assert_eq!(push("existing", 1.0).0, 200);
    let mut refused = 0;
    for i in 0..300 {
        let (status, body) = push(&format!("flood-{i}"), 1.0);
        match status {
            200 => {}
            503 => {
                assert!(body.contains("file descriptors"), "{body}");
                refused += 1;
            }
            other => panic!("tenant {i}: {other} {body}"),
        }
    }
    assert!(refused > 0, "256 descriptors cannot hold 300 tenants");
    assert!(n.metric("norn_ingester_tenants_refused_total{reason=\"file_descriptors\"}") >= 1.0);
    // The tenant that was there keeps working: writes, a block cut and the shipper.
    assert_eq!(push("existing", 2.0).0, 200);
    let (status, body) = post(&n, "/ingester/flush?wait=true&tenant=existing");
    assert_eq!(status, 204, "{body}");
    assert_eq!(push("existing", 3.0).0, 200);
    assert_eq!(n.get_text("/ready").0, 200);
}
