//! Process-level tests of the block lifecycle: the real `norn` binary cuts blocks from its
//! heads, ships them to the bucket (a directory, or a real S3 server: `moto_server`), deletes
//! them locally after the retention period and serves queries over head + local blocks +
//! bucket blocks; Debian's `promtool` reads what Norn wrote.
//!
//! Peers missing (`promtool`, `moto_server`) make a test print `SKIP` and pass, unless
//! `NORN_REQUIRE_PEERS=1` (set by the project's test command).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Norn, block_dirs, now_ms, peer, request, run_bounded, series};

const TENANT: &str = "tenant-a";
const T: Option<&str> = Some(TENANT);
const STEP: i64 = 15_000;

/// Sent samples by series name (`s0`…), in time order.
type Sent = BTreeMap<String, Vec<(i64, f64)>>;

/// Pushes `series` series with one sample every 15 s in `[from, to)`, in time order, ten
/// minutes per request (so the head's too-old window never rejects any), and records them.
fn push_range(n: &Norn, sent: &mut Sent, series_count: usize, from: i64, to: i64) {
    let mut t0 = from;
    while t0 < to {
        let t1 = (t0 + 600_000).min(to);
        let ts = (0..series_count)
            .map(|s| {
                let name = format!("s{s}");
                let samples: Vec<(i64, f64)> = (t0..t1)
                    .step_by(STEP as usize)
                    .map(|t| (t, (t / STEP) as f64 * 0.25 + s as f64))
                    .collect();
                sent.entry(name.clone())
                    .or_default()
                    .extend(samples.iter().copied());
                series(
                    &[
                        ("__name__", "block_test"),
                        ("job", "e2e"),
                        ("series", &name),
                    ],
                    &samples,
                )
            })
            .collect();
        let (status, body) = n.push(T, &request(ts));
        assert_eq!(status, 200, "{body}");
        t0 = t1;
    }
}

/// Every sample Norn returns for the test metric over `[from, to]`, by series name.
fn queried(n: &Norn, from: i64, to: i64) -> Sent {
    let mut out = Sent::new();
    for (metric, samples) in n.raw_samples(T, "block_test", from, to) {
        let v: serde_json::Value = serde_json::from_str(&metric).unwrap();
        out.insert(v["series"].as_str().unwrap().to_string(), samples);
    }
    out
}

fn assert_exactly(n: &Norn, sent: &Sent, from: i64, to: i64, what: &str) {
    let got = queried(n, from, to);
    assert_eq!(got.len(), sent.len(), "{what}: series");
    for (name, samples) in sent {
        let g = &got[name];
        assert_eq!(g.len(), samples.len(), "{what}: samples of {name}");
        assert_eq!(g, samples, "{what}: samples of {name}");
    }
}

fn flush(n: &Norn, wait: bool) {
    let resp = ureq::post(&n.url(&format!("/ingester/flush?wait={wait}&force=true")))
        .config()
        .http_status_as_error(false)
        .build()
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "flush");
}

fn wait_until(what: &str, n: &Norn, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Parses `promtool tsdb dump` output (`{labels} value timestamp` per line).
fn parse_dump(text: &str) -> Sent {
    let mut out = Sent::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (labels, rest) = line.rsplit_once('}').expect("dump line has labels");
        let mut f = rest.split_whitespace();
        let v: f64 = f.next().unwrap().parse().unwrap();
        let t: i64 = f.next().unwrap().parse().unwrap();
        let name = labels
            .split(", ")
            .find_map(|kv| kv.trim_start_matches('{').strip_prefix("series=\""))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_else(|| panic!("no series label in {line}"));
        out.entry(name).or_default().push((t, v));
    }
    for v in out.values_mut() {
        v.sort_by_key(|x| x.0);
    }
    out
}

fn block_args() -> Vec<&'static str> {
    vec![
        "--blocks-storage.tsdb.head-compaction-interval=1s",
        "--blocks-storage.tsdb.ship-interval=1s",
        "--blocks-storage.bucket-store.sync-interval=1s",
        // Data hours old lives in the bucket only here: read it through the store-gateway
        // at once (Mimir's defaults leave the last 12 h to the ingesters).
        "--querier.query-store-after=0s",
        "--blocks-storage.bucket-store.ignore-blocks-within=0s",
    ]
}

#[test]
fn blocks_are_cut_shipped_and_read_by_promtool() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(dir.path(), &block_args());
    let mut sent = Sent::new();
    // Five hours ending now: the compaction loop cuts the complete 2 h ranges by itself.
    let end = now_ms() / STEP * STEP;
    let start = end - 5 * 3_600_000;
    push_range(&n, &mut sent, 6, start, end);
    wait_until("automatic block cuts", &n, Duration::from_secs(30), || {
        n.metric("norn_ingester_blocks_cut_total") >= 2.0
    });
    flush(&n, true);
    let bucket_dir = dir.path().join("bucket").join(TENANT);
    let local_dir = dir.path().join("tsdb").join(TENANT);
    let shipped = block_dirs(&bucket_dir);
    assert!(shipped.len() >= 3, "blocks in the bucket: {shipped:?}");
    assert_eq!(shipped, block_dirs(&local_dir));
    assert_eq!(
        n.metric("norn_ingester_shipper_uploads_total"),
        shipped.len() as f64
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(local_dir.join("shipper.json")).unwrap()).unwrap();
    assert_eq!(state["uploaded"].as_array().unwrap().len(), shipped.len());
    // The head is empty now; every sample comes from blocks, once.
    assert_exactly(&n, &sent, start, end, "after flush");

    // promtool reads the bucket's tenant directory as a TSDB: every block analyses, and the
    // dump is exactly what was sent.
    for b in &shipped {
        let run = run_bounded(
            Command::new(&promtool)
                .args(["tsdb", "analyze"])
                .arg(&bucket_dir)
                .arg(b),
            Duration::from_secs(60),
        );
        assert!(run.ok(), "promtool tsdb analyze {b}: {}", run.text());
        assert!(run.stdout.contains("Series: 6"), "{}", run.text());
    }
    // `promtool tsdb dump` opens a whole TSDB, WAL included: give it the bucket's blocks
    // beside an empty WAL.
    let view = dir.path().join("promtool-view");
    std::fs::create_dir_all(view.join("wal")).unwrap();
    for b in &shipped {
        // A copy: promtool skips symlinked block directories.
        let status = Command::new("cp")
            .arg("-r")
            .arg(bucket_dir.join(b))
            .arg(view.join(b))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let run = run_bounded(
        Command::new(&promtool).args(["tsdb", "dump"]).arg(&view),
        Duration::from_secs(60),
    );
    assert!(run.ok(), "promtool tsdb dump: {}", run.text());
    assert_eq!(
        parse_dump(&run.stdout),
        sent,
        "promtool tsdb dump == samples sent"
    );

    // A restart reopens the local blocks and replays the checkpointed WAL: still exactly once.
    n.kill9();
    n.restart();
    assert_exactly(&n, &sent, start, end, "after restart");
    // Samples for ranges already in blocks are refused; later ones are taken.
    let (status, body) = n.push(
        T,
        &request(vec![series(
            &[("__name__", "block_test"), ("job", "e2e"), ("series", "s0")],
            &[(end - 3_600_000, 1.0)],
        )]),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("sample-too-old") || body.contains("too old"),
        "{body}"
    );
    assert_exactly(&n, &sent, start, end, "after a refused late sample");
}

#[test]
fn queries_span_bucket_local_blocks_and_head_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = block_args();
    args.push("--blocks-storage.tsdb.retention-period=1s");
    let mut n = Norn::start(dir.path(), &args);
    let mut sent = Sent::new();
    let end = now_ms() / STEP * STEP;
    let t0 = end - 5 * 3_600_000;
    let local_dir = dir.path().join("tsdb").join(TENANT);

    // Phase 1: two hours, flushed, shipped, then deleted locally (1 s retention): these
    // samples now live in the bucket only.
    push_range(&n, &mut sent, 4, t0, t0 + 2 * 3_600_000);
    flush(&n, true);
    let first = block_dirs(&dir.path().join("bucket").join(TENANT));
    assert!(!first.is_empty());
    wait_until(
        "local deletion after retention",
        &n,
        Duration::from_secs(30),
        || block_dirs(&local_dir).is_empty(),
    );
    wait_until("bucket store sync", &n, Duration::from_secs(30), || {
        n.metric("norn_storegateway_blocks_loaded") >= first.len() as f64
    });
    assert_exactly(&n, &sent, t0, t0 + 2 * 3_600_000, "bucket only");

    // Phase 2: restart with the default retention; two more hours go into local blocks
    // (also shipped), the last hour stays in the head.
    n.extra_args
        .retain(|a| !a.starts_with("--blocks-storage.tsdb.retention-period"));
    n.kill9();
    n.restart();
    push_range(&n, &mut sent, 4, t0 + 2 * 3_600_000, t0 + 4 * 3_600_000);
    flush(&n, true);
    push_range(&n, &mut sent, 4, t0 + 4 * 3_600_000, end);
    assert!(!block_dirs(&local_dir).is_empty());
    let in_bucket = block_dirs(&dir.path().join("bucket").join(TENANT)).len();
    wait_until("bucket store sync", &n, Duration::from_secs(30), || {
        n.metric("norn_storegateway_blocks_loaded") >= in_bucket as f64
    });
    // Bucket-only, local-and-bucket and head data in one query, each sample once.
    assert_exactly(&n, &sent, t0, end, "bucket + local blocks + head");
    let (status, v) = n.get_json(
        T,
        &format!(
            "/prometheus/api/v1/query?query=count_over_time(block_test%5B6h%5D)&time={}",
            end as f64 / 1000.0
        ),
    );
    assert_eq!(status, 200, "{v}");
    for r in v["data"]["result"].as_array().unwrap() {
        assert_eq!(r["value"][1].as_str().unwrap(), "1200", "{r}");
    }

    // Mimir's /ingester/shutdown: everything is cut and shipped, then writes are refused
    // (retryable) while queries still answer.
    let resp = ureq::post(&n.url("/ingester/shutdown"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(
        n.log().contains("cut block from head"),
        "the head's last hour was cut"
    );
    let (status, body) = n.push(
        T,
        &request(vec![series(
            &[("__name__", "block_test"), ("job", "e2e"), ("series", "s0")],
            &[(end + STEP, 1.0)],
        )]),
    );
    assert_eq!(status, 503, "{body}");
    let local = block_dirs(&local_dir);
    let bucket = block_dirs(&dir.path().join("bucket").join(TENANT));
    assert!(
        local.iter().all(|b| bucket.contains(b)),
        "{local:?} ⊆ {bucket:?}"
    );
    assert_exactly(&n, &sent, t0, end, "after /ingester/shutdown");
}

#[test]
fn s3_shipping_survives_outages_and_kills() {
    let Some(moto) = norn_storage::testing::MotoServer::start() else {
        return;
    };
    let cfg = moto.storage_config("norn-blocks");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bucket = norn_storage::Bucket::from_config(&cfg).unwrap();
    let complete = |bucket: &norn_storage::Bucket| {
        rt.block_on(norn_storage::layout::list_blocks(bucket, TENANT))
            .unwrap()
    };
    let partial = |bucket: &norn_storage::Bucket| {
        rt.block_on(norn_storage::layout::list_partial_blocks(bucket, TENANT))
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("--common.storage.s3.endpoint={}", moto.endpoint());
    let mut args = block_args();
    args.extend([
        "--common.storage.backend=s3",
        "--common.storage.s3.bucket-name=norn-blocks",
        "--common.storage.s3.access-key-id=test",
        "--common.storage.s3.secret-access-key=test",
        "--common.storage.s3.region=us-east-1",
        "--common.storage.s3.insecure=true",
        endpoint.as_str(),
    ]);
    let mut n = Norn::start(dir.path(), &args);
    let (_, config) = n.get_text("/config");
    assert!(
        !config.contains("secret_access_key: test"),
        "the secret is masked in /config"
    );
    let mut sent = Sent::new();
    let end = now_ms() / STEP * STEP;
    let t0 = end - 3 * 3_600_000;
    let hour = 3_600_000;

    push_range(&n, &mut sent, 3, t0, t0 + hour);
    flush(&n, true);
    // One hour gives one block, or two when it crosses a 2h boundary.
    let blocks = complete(&bucket);
    assert_eq!(
        blocks,
        block_dirs(&dir.path().join("tsdb").join(TENANT)),
        "every local block is in the bucket"
    );
    assert!((1..=2).contains(&blocks.len()), "{blocks:?}");
    let files: Vec<String> = rt
        .block_on(bucket.list(&norn_storage::layout::block_prefix(TENANT, &blocks[0])))
        .unwrap()
        .into_iter()
        .map(|o| o.key.rsplit_once(&blocks[0]).unwrap().1.to_string())
        .collect();
    for f in ["/meta.json", "/index", "/chunks/000001", "/tombstones"] {
        assert!(files.iter().any(|x| x == f), "{f} in {files:?}");
    }

    let local_dir = dir.path().join("tsdb").join(TENANT);
    // The server hangs for a while: the upload fails and is retried; once it is back the
    // blocks arrive, once.
    let first = block_dirs(&local_dir).len();
    moto.pause();
    push_range(&n, &mut sent, 3, t0 + hour, t0 + 2 * hour);
    flush(&n, false);
    wait_until(
        "the cut during the outage",
        &n,
        Duration::from_secs(30),
        || block_dirs(&local_dir).len() > first,
    );
    std::thread::sleep(Duration::from_secs(3));
    moto.resume();
    wait_until(
        "upload after the outage",
        &n,
        Duration::from_secs(90),
        || complete(&bucket) == block_dirs(&local_dir),
    );
    assert!(partial(&bucket).is_empty());

    // Killed mid-upload: the restarted process uploads the block again, whole.
    let before = block_dirs(&local_dir).len();
    moto.pause();
    push_range(&n, &mut sent, 3, t0 + 2 * hour, end);
    flush(&n, false);
    wait_until(
        "the cut before the kill",
        &n,
        Duration::from_secs(30),
        || block_dirs(&local_dir).len() > before,
    );
    // Let the upload start and hang on the frozen server.
    std::thread::sleep(Duration::from_millis(500));
    n.kill9();
    moto.resume();
    n.restart();
    // The shipper records a block in shipper.json just after its meta.json lands, so the
    // bucket can be complete a moment before the record is: wait for both.
    let recorded = || -> Vec<String> {
        let Ok(bytes) = std::fs::read(local_dir.join("shipper.json")) else {
            return Vec::new();
        };
        let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut ids: Vec<String> = state["uploaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    wait_until(
        "upload after the restart",
        &n,
        Duration::from_secs(90),
        || {
            let local = block_dirs(&local_dir);
            complete(&bucket) == local && recorded() == local
        },
    );
    assert!(partial(&bucket).is_empty());
    assert_eq!(
        recorded(),
        block_dirs(&local_dir),
        "every local block recorded as shipped, each once"
    );
    assert_exactly(&n, &sent, t0, end, "after outage and kill");
}

#[test]
fn idle_heads_are_cut_and_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = block_args();
    args.push("--blocks-storage.tsdb.head-compaction-idle-timeout=2s");
    let n = Norn::start(dir.path(), &args);
    let mut sent = Sent::new();
    let end = now_ms() / STEP * STEP;
    // Thirty minutes: no range is complete, only the idle timeout cuts it.
    push_range(&n, &mut sent, 2, end - 1_800_000, end);
    let bucket_dir = dir.path().join("bucket").join(TENANT);
    wait_until(
        "the idle head's block in the bucket",
        &n,
        Duration::from_secs(30),
        || !block_dirs(&bucket_dir).is_empty(),
    );
    assert_eq!(n.metric("norn_ingester_memory_series"), 0.0);
    assert_exactly(&n, &sent, end - 1_800_000, end, "after the idle cut");
}
