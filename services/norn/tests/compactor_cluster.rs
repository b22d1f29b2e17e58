//! The compactor in a real cluster on a real S3 server (`moto_server`): a distributor, three
//! ingesters at replication factor 3 cutting 2-minute blocks, a store-gateway, a querier and
//! two compactors (`--compactor.block-ranges=2m,6m`), each its own `norn` process on
//! 127.0.0.1, joined by gossip.
//!
//! One cluster run checks what issue 17 asks of the compactor:
//!
//! * after compaction every tenant holds one live block per 6-minute window, no two live
//!   blocks overlap, and `promtool tsdb dump` of them is exactly the accepted samples;
//! * range queries through the querier (store-gateway only: the data is older than
//!   `query-ingesters-within`) answer the same before and after;
//! * a compactor killed (`kill -9`) while its output's `meta.json` PUT hangs in a proxy — it
//!   has uploaded the rest of the block: a real partial block — comes back and the end state
//!   is the same as everywhere else; the partial block is deleted after
//!   `partial-block-deletion-delay`;
//! * a replica block whose chunks were overwritten gets `no-compact-mark.json` (reason
//!   `critical`), the counter moves, and the rest of its tenant compacts;
//! * `compactor_blocks_retention_period` (runtime overrides) deletes the blocks wholly older
//!   than it, never before `--compactor.deletion-delay` has passed since their mark, and
//!   nothing else;
//! * the two compactors split the tenants through the compactor ring, and no tenant is
//!   compacted by both.
//!
//! Peers missing (`promtool`, `moto_server`) print `SKIP` unless `NORN_REQUIRE_PEERS=1`.

mod common;
#[path = "compactor_cluster/hold_proxy.rs"]
mod hold_proxy;
#[path = "compactor_cluster/s3.rs"]
mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Norn, free_port, now_ms, peer, request, run_bounded, series, urlencode};
use hold_proxy::HoldProxy;
use s3::S3;

const BUCKET: &str = "norn-compactor-cluster";
const MIN: i64 = 60_000;
/// The ingesters' block range and the compactor's first range.
const RANGE: i64 = 2 * MIN;
/// The compactor's second range: three first-range windows.
const TOP: i64 = 6 * MIN;
const STEP: i64 = 15_000;
const SERIES: usize = 3;
/// Tenants with nothing special about them (enough that two compactors both get some).
const HEALTHY: usize = 12;
/// The tenant with a corrupted replica block.
const BAD: &str = "team-bad";
/// The tenant with a retention period.
const RET: &str = "team-ret";
const DELETION_DELAY_S: i64 = 20;
const PARTIAL_DELAY: &str = "10s";

/// Samples by series name, in time order.
type BySeries = BTreeMap<String, Vec<(i64, f64)>>;
/// Accepted samples by tenant.
type Sent = BTreeMap<String, BySeries>;

fn tenants() -> Vec<String> {
    let mut t: Vec<String> = (0..HEALTHY).map(|i| format!("team-{i:02}")).collect();
    t.push(BAD.into());
    t.push(RET.into());
    t
}

/// Loopback gossip with fast heartbeats, S3 on `endpoint`, and the store-gateway settings
/// every reader must agree on.
fn member_args(gossip: u16, seeds: &[u16], endpoint: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "--memberlist.bind-addr=127.0.0.1",
        "--memberlist.gossip-interval=100ms",
        "--memberlist.pullpush-interval=1s",
        "--ingester.ring.heartbeat-period=500ms",
        "--ingester.ring.heartbeat-timeout=5s",
        "--store-gateway.sharding-ring.replication-factor=1",
        "--store-gateway.sharding-ring.heartbeat-period=500ms",
        "--store-gateway.sharding-ring.heartbeat-timeout=5s",
        "--distributor.ingestion-rate-limit=10000000",
        "--distributor.ingestion-burst-size=10000000",
        "--common.storage.backend=s3",
        "--common.storage.s3.access-key-id=test",
        "--common.storage.s3.secret-access-key=test",
        "--common.storage.s3.region=us-east-1",
        "--common.storage.s3.insecure=true",
        "--blocks-storage.bucket-store.sync-interval=1s",
        "--blocks-storage.bucket-store.ignore-blocks-within=0s",
        // Well above the sync interval, well below the deletion delay: a querier never asks
        // for a block the store-gateway dropped, and never one deleted from the bucket.
        "--blocks-storage.bucket-store.ignore-deletion-marks-delay=5s",
    ]
    .map(String::from)
    .to_vec();
    a.push(format!("--memberlist.bind-port={gossip}"));
    a.push(format!("--common.storage.s3.bucket-name={BUCKET}"));
    a.push(format!("--common.storage.s3.endpoint={endpoint}"));
    let joins: Vec<String> = seeds
        .iter()
        .filter(|&&p| p != gossip)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    if !joins.is_empty() {
        a.push(format!("--memberlist.join={}", joins.join(",")));
    }
    a
}

fn start(root: &Path, name: &str, mut args: Vec<String>, more: &[String]) -> Norn {
    args.extend(more.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = root.join(name);
    Norn::start_with_bucket(&dir, &dir.join("unused-bucket"), &refs)
}

/// A ring page as `n` sees it: (id, state, healthy).
fn ring(n: &Norn, path: &str) -> Vec<(String, String, bool)> {
    let v: serde_json::Value = ureq::get(&n.url(path))
        .header("Accept", "application/json")
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut out: Vec<(String, String, bool)> = v["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["state"].as_str().unwrap_or_default().to_string(),
                s["healthy"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

fn wait_until(what: &str, limit: Duration, logs: &[&Norn], f: impl FnMut() -> bool) {
    wait_every(what, limit, Duration::from_millis(250), logs, f)
}

/// [`wait_until`] polling every `every` (bucket listings: moto serves the compactors too).
fn wait_every(
    what: &str,
    limit: Duration,
    every: Duration,
    logs: &[&Norn],
    mut f: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            let tails: Vec<String> = logs
                .iter()
                .map(|n| {
                    let log = n.log();
                    let from = log.len().saturating_sub(6000);
                    let from = (from..log.len())
                        .find(|&i| log.is_char_boundary(i))
                        .unwrap_or(0);
                    format!("--- {}\n{}", n.dir.display(), &log[from..])
                })
                .collect();
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                tails.join("\n")
            );
        }
        std::thread::sleep(every);
    }
}

/// Pushes `SERIES` series of `tenant` with a sample every 15 s in `[from, to)`, a minute per
/// request and in time order; every push must be accepted (2xx), and is recorded.
fn push_span(d: &Norn, sent: &mut Sent, tenant: &str, salt: usize, from: i64, to: i64) {
    let mut t0 = from;
    while t0 < to {
        let t1 = (t0 + MIN).min(to);
        let ts = (0..SERIES)
            .map(|s| {
                let name = format!("s{s}");
                let samples: Vec<(i64, f64)> = (t0..t1)
                    .step_by(STEP as usize)
                    .map(|t| (t, (t / STEP % 1000) as f64 * 0.5 + (salt * 10 + s) as f64))
                    .collect();
                sent.entry(tenant.to_string())
                    .or_default()
                    .entry(name.clone())
                    .or_default()
                    .extend(&samples);
                series(&[("__name__", "cc"), ("series", &name)], &samples)
            })
            .collect();
        let (status, body) = d.push(Some(tenant), &request(ts));
        assert!((200..300).contains(&status), "{tenant}: {status} {body}");
        t0 = t1;
    }
}

/// `cc[<span>]` at `to - 1` through the querier: (status, every raw sample by series, the
/// JSON answer).
fn raw(q: &Norn, tenant: &str, from: i64, to: i64) -> (u16, BySeries, serde_json::Value) {
    let (status, v) = q.get_json(
        Some(tenant),
        &format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode(&format!("cc[{}s]", (to - from) / 1000)),
            (to - 1) as f64 / 1000.0
        ),
    );
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().into_iter().flatten() {
        let samples = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    p[1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect();
        out.insert(s["metric"]["series"].as_str().unwrap().to_string(), samples);
    }
    (status, out, v)
}

/// `cc` over `[from, to)` as a range query (15 s steps) and as raw samples by series, through
/// the querier.
fn answers(q: &Norn, tenant: &str, from: i64, to: i64) -> (serde_json::Value, BySeries) {
    let (status, v) = q.get_json(
        Some(tenant),
        &format!(
            "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=15",
            urlencode("cc"),
            from / 1000,
            (to - STEP) / 1000
        ),
    );
    assert_eq!(status, 200, "{tenant}: {v}");
    let mut result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    result.sort_by_key(|r| r["metric"].to_string());
    let (status, samples, v) = raw(q, tenant, from, to);
    assert_eq!(status, 200, "{tenant}: {v}");
    (serde_json::Value::Array(result), samples)
}

/// The samples of `cc` in `promtool tsdb dump` output, by series.
fn parse_dump(text: &str) -> BySeries {
    let mut out = BySeries::new();
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

fn only(sent: &Sent, tenant: &str, from: i64, to: i64) -> BySeries {
    sent[tenant]
        .iter()
        .map(|(k, v)| {
            let in_span = v
                .iter()
                .copied()
                .filter(|(t, _)| (from..to).contains(t))
                .collect();
            (k.clone(), in_span)
        })
        .collect()
}

#[test]
fn compactor_cluster_on_s3_merges_replicas_survives_kills_and_bad_blocks() {
    let Some(promtool) = peer("promtool") else {
        return;
    };
    let Some(moto) = norn_storage::testing::MotoServer::start() else {
        return;
    };
    let s3 = S3::new(&moto.storage_config(BUCKET));
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let moto_endpoint = moto.endpoint();
    let tenants = tenants();

    // Gossip ports: three ingesters (the seeds), distributor, store-gateway, querier, two
    // compactors.
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let seeds = &ports[..3];
    let member = |i: usize| member_args(ports[i], seeds, &moto_endpoint);
    let ingesters: Vec<Norn> = (0..3)
        .map(|i| {
            let dir = root.join(format!("ingester-{i}"));
            start(
                root,
                &format!("ingester-{i}"),
                member(i),
                &[
                    "--target=ingester".into(),
                    format!("--ingester.ring.instance-id=ingester-{i}"),
                    format!(
                        "--ingester.ring.tokens-file-path={}",
                        dir.join("tokens.json").display()
                    ),
                    "--blocks-storage.tsdb.block-ranges-period=2m".into(),
                    "--blocks-storage.tsdb.head-compaction-interval=1s".into(),
                    "--blocks-storage.tsdb.ship-interval=1s".into(),
                ],
            )
        })
        .collect();
    let distributor = start(
        root,
        "distributor",
        member(3),
        &["--target=distributor".into()],
    );
    let store_gateway = start(
        root,
        "store-gateway",
        member(4),
        &[
            "--target=store-gateway".into(),
            "--store-gateway.sharding-ring.instance-id=store-gateway-0".into(),
        ],
    );
    let querier = start(
        root,
        "querier",
        member(5),
        &[
            "--target=querier".into(),
            "--querier.query-store-after=0s".into(),
            // The data is an hour old or more: the store-gateway alone answers for it.
            "--querier.query-ingesters-within=10m".into(),
        ],
    );
    let everyone = || -> Vec<&Norn> {
        let mut v: Vec<&Norn> = ingesters.iter().collect();
        v.extend([&distributor, &store_gateway, &querier]);
        v
    };
    wait_until(
        "three ACTIVE ingesters in the distributor's ring",
        Duration::from_secs(60),
        &everyone(),
        || {
            let r = ring(&distributor, "/ring");
            r.len() == 3 && r.iter().all(|(_, s, h)| s == "ACTIVE" && *h)
        },
    );
    wait_until(
        "the store-gateway ACTIVE in the querier's view",
        Duration::from_secs(60),
        &everyone(),
        || {
            ring(&querier, "/store-gateway/ring")
                .iter()
                .any(|(id, s, h)| id == "store-gateway-0" && s == "ACTIVE" && *h)
        },
    );

    // The data: six minutes (three 2m ranges, one 6m window) an hour ago for every tenant;
    // the retention tenant also has six minutes three hours before that.
    let recent = (now_ms() - 60 * MIN).div_euclid(TOP) * TOP;
    let old = recent - 180 * MIN;
    let mut sent = Sent::new();
    for (i, t) in tenants.iter().enumerate() {
        if t == RET {
            push_span(&distributor, &mut sent, t, i, old, old + TOP);
        }
        push_span(&distributor, &mut sent, t, i, recent, recent + TOP);
    }
    for ing in &ingesters {
        let resp = ureq::post(&ing.url("/ingester/flush?wait=true&force=true"))
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204, "flush");
    }
    // Three copies of every range: 9 blocks a tenant, 18 for the retention tenant.
    let expected = |t: &str| if t == RET { 18 } else { 9 };
    wait_until(
        "every replica's blocks in the bucket",
        Duration::from_secs(90),
        &everyone(),
        || {
            tenants.iter().all(|t| {
                let l = s3.listing(t);
                l.values().filter(|b| b.meta).count() == expected(t) && l.values().all(|b| b.meta)
            })
        },
    );
    let level1: BTreeMap<String, Vec<String>> = tenants
        .iter()
        .map(|t| (t.clone(), s3.listing(t).into_keys().collect()))
        .collect();
    let total: usize = level1.values().map(Vec::len).sum();
    wait_until(
        "the store-gateway loading every block",
        Duration::from_secs(120),
        &[&store_gateway],
        || store_gateway.metric("norn_storegateway_blocks_loaded") == total as f64,
    );
    // Past the querier's next bucket-index refresh.
    std::thread::sleep(Duration::from_secs(2));

    // Before compaction: the querier reads 3 copies and answers each sample once.
    let mut before = BTreeMap::new();
    for t in &tenants {
        let spans: &[i64] = if t == RET { &[old, recent] } else { &[recent] };
        for &from in spans {
            let (range, samples) = answers(&querier, t, from, from + TOP);
            assert_eq!(
                samples,
                only(&sent, t, from, from + TOP),
                "{t} before compaction"
            );
            before.insert((t.clone(), from), range);
        }
    }

    // Damage one replica of the bad tenant: bytes in the middle of its chunks overwritten.
    let bad_block = level1[BAD][0].clone();
    let chunks_key = format!("{BAD}/{bad_block}/chunks/000001");
    let mut chunks = s3.get(&chunks_key);
    assert!(chunks.len() > 64, "{} bytes of chunks", chunks.len());
    let mid = chunks.len() / 2;
    for b in &mut chunks[mid - 8..mid + 8] {
        *b ^= 0x5a;
    }
    s3.put(&chunks_key, chunks);

    // Retention for one tenant, in the runtime overrides file the compactors read.
    let overrides = root.join("overrides.yaml");
    std::fs::write(
        &overrides,
        format!("overrides:\n  {RET}:\n    compactor_blocks_retention_period: 2h\n"),
    )
    .unwrap();
    let compactor_args = |name: &str| -> Vec<String> {
        vec![
            "--target=compactor".into(),
            format!("--compactor.ring.instance-id={name}"),
            "--compactor.ring.heartbeat-period=500ms".into(),
            "--compactor.ring.heartbeat-timeout=5s".into(),
            "--compactor.block-ranges=2m,6m".into(),
            "--compactor.compaction-interval=1s".into(),
            "--compactor.cleanup-interval=1s".into(),
            format!("--compactor.deletion-delay={DELETION_DELAY_S}s"),
            "--compactor.first-level-compaction-wait-period=0s".into(),
            format!("--compactor.partial-block-deletion-delay={PARTIAL_DELAY}"),
            format!(
                "--compactor.data-dir={}",
                root.join(name).join("work").display()
            ),
            format!("--runtime-config.file={}", overrides.display()),
            "--runtime-config.reload-period=1s".into(),
        ]
    };

    // Compactor A alone, its S3 traffic through a proxy that holds every meta.json PUT: its
    // first job uploads an output block's index and chunks, then hangs on meta.json.
    let proxy = HoldProxy::start(moto.port(), |method, path| {
        method == "PUT" && path.ends_with("/meta.json")
    });
    let started_a = now_ms() / 1000;
    let mut a = start(
        root,
        "compactor-a",
        member_args(ports[6], seeds, &proxy.endpoint()),
        &compactor_args("compactor-a"),
    );
    wait_until(
        "compactor A hanging on an output's meta.json",
        Duration::from_secs(90),
        &[&a],
        || !proxy.held().is_empty(),
    );
    let held = proxy.held()[0].clone();
    // `/<bucket>/<tenant>/<block>/meta.json`
    let parts: Vec<&str> = held.trim_start_matches('/').split('/').collect();
    let (held_tenant, held_block) = (parts[1].to_string(), parts[2].to_string());
    let partial = &s3.listing(&held_tenant)[&held_block];
    assert!(
        !partial.meta && partial.files.iter().any(|f| f == "index"),
        "mid-upload: index up, meta.json not: {partial:?}"
    );
    a.kill9();
    drop(proxy);
    assert!(
        s3.listing(&held_tenant)
            .get(&held_block)
            .is_some_and(|b| !b.meta),
        "the killed compactor left a partial block"
    );

    // Second crash point: A again, alone, through a proxy that holds the first deletion mark
    // of a compaction (retention marks pass): its output is complete in the bucket, its
    // inputs are not marked yet, and both are live and overlap when A is killed.
    let proxy = HoldProxy::start(moto.port(), |method, path| {
        method == "PUT" && path.ends_with("/deletion-mark.json") && !path.contains("/team-ret/")
    });
    a.extra_args = member_args(ports[6], seeds, &proxy.endpoint());
    a.extra_args.extend(compactor_args("compactor-a"));
    a.restart();
    wait_until(
        "compactor A hanging on an input's deletion mark",
        Duration::from_secs(90),
        &[&a],
        || !proxy.held().is_empty(),
    );
    let held = proxy.held()[0].clone();
    let parts: Vec<&str> = held.trim_start_matches('/').split('/').collect();
    let (marking_tenant, input) = (parts[1].to_string(), parts[2].to_string());
    let listing = s3.listing(&marking_tenant);
    assert!(
        listing[&input].meta && !listing[&input].deletion,
        "the input is live: {:?}",
        listing[&input]
    );
    assert!(
        listing
            .iter()
            .any(|(id, b)| b.meta && !level1[&marking_tenant].contains(id)),
        "the output is complete: {listing:?}"
    );
    a.kill9();
    drop(proxy);

    // A restarts on the same data, straight to S3, and B joins: they split the tenants.
    a.extra_args = member_args(ports[6], seeds, &moto_endpoint);
    a.extra_args.extend(compactor_args("compactor-a"));
    a.restart();
    let b = start(
        root,
        "compactor-b",
        member(7),
        &compactor_args("compactor-b"),
    );
    wait_until(
        "both compactors in each other's compactor ring",
        Duration::from_secs(30),
        &[&a, &b],
        || {
            [&a, &b].iter().all(|n| {
                let r = ring(n, "/compactor/ring");
                r.len() == 2 && r.iter().all(|(_, s, h)| s == "ACTIVE" && *h)
            })
        },
    );

    // Wait for the end state, checking on the way that retention never deletes a block
    // before the deletion delay has passed since its mark.
    let old_blocks: BTreeSet<String> = level1[RET]
        .iter()
        .filter(|id| s3.meta(RET, id).max_time <= old + TOP)
        .cloned()
        .collect();
    assert_eq!(old_blocks.len(), 9);
    let mut mark_seen: BTreeMap<String, i64> = BTreeMap::new();
    let settled = |mark_seen: &mut BTreeMap<String, i64>| -> bool {
        let now_s = now_ms() / 1000;
        let ret = s3.listing(RET);
        for id in &old_blocks {
            let b = ret.get(id);
            if let Some(b) = b
                && b.meta
                && b.deletion
                && !mark_seen.contains_key(id)
            {
                // (None: deleted since the listing.)
                if let Some(marked) = s3.deletion_time(RET, id) {
                    mark_seen.insert(id.clone(), marked);
                }
            }
            if b.is_none_or(|b| !b.meta) {
                // Gone (or going): its mark, if we saw it, is at least the delay old, and in
                // any case no compactor ran its first cleanup before 10 s after A started.
                if let Some(&marked) = mark_seen.get(id) {
                    assert!(
                        now_s >= marked + DELETION_DELAY_S,
                        "{id} deleted at {now_s}, marked at {marked}"
                    );
                }
                assert!(
                    now_s >= started_a + 10 + DELETION_DELAY_S,
                    "{id} deleted before the deletion delay"
                );
            }
        }
        let live = |t: &str| -> Vec<String> {
            s3.listing(t)
                .into_iter()
                .filter(|(_, b)| b.meta && !b.deletion && !b.no_compact)
                .map(|(id, _)| id)
                .collect()
        };
        let no_partials = tenants
            .iter()
            .all(|t| s3.listing(t).values().all(|b| b.meta || b.deletion));
        no_partials
            && old_blocks.iter().all(|id| !ret.contains_key(id))
            && tenants.iter().all(|t| live(t).len() == 1)
    };
    wait_every(
        "compaction, retention and cleanup to settle",
        Duration::from_secs(240),
        Duration::from_secs(1),
        &[&a, &b],
        || settled(&mut mark_seen),
    );
    assert!(
        !mark_seen.is_empty(),
        "a retention mark was seen while its block was still there"
    );

    // The end state, tenant by tenant.
    let dumps = root.join("dumps");
    for t in &tenants {
        let listing = s3.listing(t);
        let live: Vec<(String, s3::Meta)> = listing
            .iter()
            .filter(|(_, b)| b.meta && !b.deletion)
            .map(|(id, _)| (id.clone(), s3.meta(t, id)))
            .collect();
        // No two live blocks overlap, except the no-compact block beside its window's merge.
        let compactable: Vec<&(String, s3::Meta)> = live
            .iter()
            .filter(|(id, _)| !listing[id].no_compact)
            .collect();
        for (i, (x, mx)) in compactable.iter().enumerate() {
            for (y, my) in &compactable[i + 1..] {
                assert!(
                    mx.max_time <= my.min_time || my.max_time <= mx.min_time,
                    "{t}: {x} {mx:?} overlaps {y} {my:?}"
                );
            }
        }
        // One block for the three 2m windows: replicas merged, then the windows.
        let (id, meta) = compactable[0];
        assert!(
            meta.min_time >= recent
                && meta.min_time < recent + RANGE
                && meta.max_time > recent + TOP - RANGE
                && meta.max_time <= recent + TOP
                && meta.level >= 3,
            "{t}: one 6m block, level 3: {id} {meta:?}"
        );
        if t == BAD {
            let marked: Vec<&String> = listing
                .iter()
                .filter(|(_, b)| b.no_compact)
                .map(|(id, _)| id)
                .collect();
            assert_eq!(marked, [&bad_block], "only the damaged block is no-compact");
            let mark = s3.no_compact_mark(BAD, &bad_block);
            assert_eq!(mark["reason"], "critical", "{mark}");
            assert!(
                !mark["details"].as_str().unwrap_or_default().is_empty(),
                "{mark}"
            );
        } else {
            assert!(listing.values().all(|b| !b.no_compact), "{t}: {listing:?}");
        }

        // promtool reads the compacted block: every accepted sample of the kept span, once.
        let view = dumps.join(t);
        std::fs::create_dir_all(view.join("wal")).unwrap();
        s3.download_block(t, id, &view.join(id));
        let run = run_bounded(
            Command::new(&promtool).args(["tsdb", "dump"]).arg(&view),
            Duration::from_secs(60),
        );
        assert!(run.ok(), "promtool tsdb dump {t}: {}", run.text());
        assert_eq!(
            parse_dump(&run.stdout),
            only(&sent, t, recent, recent + TOP),
            "{t}: promtool tsdb dump == accepted samples"
        );
    }

    // The cleanup's bucket index lists every live block, and any other block it lists is
    // marked for deletion (gone or about to be).
    wait_every(
        "bucket indexes that match the bucket",
        Duration::from_secs(30),
        Duration::from_secs(1),
        &[&a, &b],
        || {
            tenants.iter().all(|t| {
                let Some(index) = s3.index(t) else {
                    return false;
                };
                let listed: BTreeSet<&str> =
                    index.blocks.iter().map(|b| b.block_id.as_str()).collect();
                let marked: BTreeSet<&str> = index
                    .block_deletion_marks
                    .iter()
                    .map(|m| m.block_id.as_str())
                    .collect();
                let live: BTreeSet<String> = s3
                    .listing(t)
                    .into_iter()
                    .filter(|(_, b)| b.meta && !b.deletion)
                    .map(|(id, _)| id)
                    .collect();
                live.iter().all(|id| listed.contains(id.as_str()))
                    && listed
                        .iter()
                        .all(|id| live.contains(*id) || marked.contains(id))
            })
        },
    );

    // The damaged block was counted once, by the compactor that owns its tenant.
    let no_compact = |n: &Norn| n.metric("norn_compactor_blocks_marked_for_no_compaction_total");
    assert_eq!(no_compact(&a) + no_compact(&b), 1.0);
    // The killed upload's partial block was cleaned up.
    assert!(!s3.listing(&held_tenant).contains_key(&held_block));
    // (By whichever life of A or by B: the logs, unlike the counters, outlive a kill.)
    assert!(
        [&a, &b].iter().any(|n| n
            .log()
            .lines()
            .any(|l| l.contains("partial block deleted") && l.contains(&held_block))),
        "the partial block's deletion is logged"
    );

    // Two compactors split the tenants, and each tenant was compacted by one of them.
    let owned = |n: &Norn| n.metric("norn_compactor_tenants_owned");
    assert_eq!(owned(&a) + owned(&b), tenants.len() as f64);
    assert!(
        owned(&a) > 0.0 && owned(&b) > 0.0,
        "{} {}",
        owned(&a),
        owned(&b)
    );
    let (la, lb) = (a.log(), b.log());
    let jobs = |log: &str, t: &str| {
        log.lines()
            .filter(|l| l.contains("compaction job done") && l.contains(&format!("\"{t}\"")))
            .count()
    };
    for t in &tenants {
        let (ja, jb) = (jobs(&la, t), jobs(&lb, t));
        assert!(
            (ja == 0) != (jb == 0),
            "{t}: compacted by exactly one compactor (A {ja} jobs, B {jb})"
        );
    }

    // After compaction: the store-gateway serves the compacted blocks (the sources are gone)
    // and the queries answer as before.
    let live_total: usize = tenants
        .iter()
        .map(|t| {
            s3.listing(t)
                .values()
                .filter(|b| b.meta && !b.deletion)
                .count()
        })
        .sum();
    wait_until(
        "the store-gateway serving the compacted blocks only",
        Duration::from_secs(60),
        &[&store_gateway],
        || store_gateway.metric("norn_storegateway_blocks_loaded") == live_total as f64,
    );
    std::thread::sleep(Duration::from_secs(2));
    for t in tenants.iter().filter(|t| *t != BAD) {
        let (range, samples) = answers(&querier, t, recent, recent + TOP);
        assert_eq!(
            samples,
            only(&sent, t, recent, recent + TOP),
            "{t} after compaction"
        );
        assert_eq!(
            range,
            before[&(t.clone(), recent)],
            "{t}: range query before == after"
        );
    }
    // The damaged replica is still served beside the merge of its window: a query of its
    // tenant answers every sample once, or fails; never a wrong or partial 200.
    // (The store-gateway's chunks cache may still hold the chunks read before the damage.)
    let (status, samples, v) = raw(&querier, BAD, recent, recent + TOP);
    if status == 200 {
        assert_eq!(samples, only(&sent, BAD, recent, recent + TOP), "{v}");
    } else {
        assert!(status >= 500, "{status} {v}");
    }

    // Retention deleted the old span and nothing else.
    let (_, samples) = answers(&querier, RET, old, old + TOP);
    assert!(
        samples.is_empty(),
        "{RET}: the span past retention is gone: {samples:?}"
    );
}
