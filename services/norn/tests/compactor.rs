//! The compactor as real processes on a shared filesystem bucket: two `--target=compactor`
//! members of one gossip cluster split the tenants through the compactor ring, each tenant is
//! compacted by exactly one of them, and each ends with one block holding every sample once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Norn, free_port};
use norn_model::{Labels, Matcher, Sample};
use norn_tsdb::block::{Block, BlockOptions, chunks_from_samples, write_block};
use norn_tsdb::head::SeriesChunks;

const H: i64 = 3_600_000;
const TENANTS: usize = 12;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Three replica blocks of one past 2h window for `tenant`, written straight into the bucket
/// directory (meta.json last, as the shipper does).
fn seed_tenant(bucket: &Path, tenant: &str, from: i64) {
    let dir = bucket.join(tenant);
    std::fs::create_dir_all(&dir).unwrap();
    let samples: Vec<Sample> = (0..480)
        .map(|i| Sample::new(from + i * 15_000, i as f64))
        .collect();
    for _ in 0..3 {
        let series = (0..4).map(|i| SeriesChunks {
            labels: Labels::from_pairs([("__name__", "up"), ("job", &format!("j{i}"))]),
            chunks: chunks_from_samples(&samples, 120).unwrap(),
        });
        let opts = BlockOptions::for_tenant(tenant, "receive", []).with_range(from, from + 2 * H);
        write_block(&dir, series, opts).unwrap();
    }
}

/// Blocks of `tenant` with a meta.json and no deletion mark.
fn live_blocks(bucket: &Path, tenant: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(bucket.join(tenant)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("meta.json").exists() && !p.join("deletion-mark.json").exists())
        .collect()
}

fn compactor(root: &Path, name: &str, bucket: &Path, gossip: u16, seed: Option<u16>) -> Norn {
    let mut args = vec![
        "--target=compactor".to_string(),
        "--memberlist.bind-addr=127.0.0.1".to_string(),
        format!("--memberlist.bind-port={gossip}"),
        "--memberlist.gossip-interval=100ms".to_string(),
        "--memberlist.pullpush-interval=1s".to_string(),
        format!("--compactor.ring.instance-id={name}"),
        "--compactor.ring.heartbeat-period=500ms".to_string(),
        "--compactor.ring.heartbeat-timeout=5s".to_string(),
        "--compactor.first-level-compaction-wait-period=0s".to_string(),
        format!(
            "--compactor.data-dir={}",
            root.join(name).join("work").display()
        ),
    ];
    if let Some(s) = seed {
        args.push(format!("--memberlist.join=127.0.0.1:{s}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Norn::start_with_bucket(&root.join(name), bucket, &refs)
}

#[test]
fn two_compactors_split_the_tenants_and_compact_each_once() {
    let root = tempfile::tempdir().unwrap();
    let bucket = root.path().join("bucket");
    let from = (now_ms() / (24 * H) - 2) * 24 * H;
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i:02}")).collect();
    for t in &tenants {
        seed_tenant(&bucket, t, from);
    }
    let (ga, gb) = (free_port(), free_port());
    let a = compactor(root.path(), "compactor-a", &bucket, ga, None);
    let b = compactor(root.path(), "compactor-b", &bucket, gb, Some(ga));

    // Both see both in the compactor ring.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, pa) = a.get_text("/compactor/ring");
        let (sb, pb) = b.get_text("/compactor/ring");
        if sa == 200
            && sb == 200
            && [&pa, &pb]
                .iter()
                .all(|p| p.contains("compactor-a") && p.contains("compactor-b"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ring never showed both:\n{pa}\n{pb}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The first run starts 10 s after start; wait until every tenant has one live block.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !tenants.iter().all(|t| live_blocks(&bucket, t).len() == 1) {
        assert!(
            Instant::now() < deadline,
            "not compacted in time\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let owned_a = a.metric("norn_compactor_tenants_owned");
    let owned_b = b.metric("norn_compactor_tenants_owned");
    assert_eq!(
        owned_a + owned_b,
        TENANTS as f64,
        "a {owned_a}, b {owned_b}"
    );
    assert!(owned_a > 0.0 && owned_b > 0.0, "a {owned_a}, b {owned_b}");
    // No tenant was compacted by both: each job line names its tenant once, in one log.
    let (la, lb) = (a.log(), b.log());
    for t in &tenants {
        let count = |log: &str| {
            log.lines()
                .filter(|l| l.contains("compaction job done") && l.contains(t.as_str()))
                .count()
        };
        assert_eq!(
            count(&la) + count(&lb),
            1,
            "{t} compacted once, by one compactor"
        );
        let live = live_blocks(&bucket, t);
        let block = Block::open(&live[0]).unwrap();
        block.verify().unwrap();
        let got = block
            .select(i64::MIN, i64::MAX, &[Matcher::equal("__name__", "up")])
            .unwrap();
        assert_eq!(got.len(), 4);
        assert!(
            got.iter().all(|s| s.samples.len() == 480),
            "each sample once"
        );
    }
    // The bucket index is written by the cleanup of the owner.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tenants
        .iter()
        .all(|t| bucket.join(t).join("bucket-index.json.gz").exists())
    {
        assert!(Instant::now() < deadline, "bucket indexes not written");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--target=all` on moto S3: what the ingester ships for three past 2h ranges is compacted
/// into one block; queries answer every pushed sample exactly once before and after, and
/// after a `kill -9` and restart the bucket stays in the same state.
#[test]
fn all_in_one_on_s3_compacts_and_queries_stay_exact() {
    let Some(moto) = norn_storage::testing::MotoServer::start() else {
        return;
    };
    const TENANT: &str = "team-s3";
    let cfg = moto.storage_config("norn-compact");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bucket = norn_storage::Bucket::from_config(&cfg).unwrap();
    let live = |bucket: &norn_storage::Bucket| -> Vec<String> {
        rt.block_on(async {
            let mut out = Vec::new();
            for id in norn_storage::layout::list_blocks(bucket, TENANT)
                .await
                .unwrap()
            {
                let mark = norn_storage::layout::deletion_mark(TENANT, &id);
                if !bucket.exists(&mark).await.unwrap() {
                    out.push(id);
                }
            }
            out
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("--common.storage.s3.endpoint={}", moto.endpoint());
    let work = format!(
        "--compactor.data-dir={}",
        dir.path().join("compactor").display()
    );
    let args = [
        "--common.storage.backend=s3",
        "--common.storage.s3.bucket-name=norn-compact",
        "--common.storage.s3.access-key-id=test",
        "--common.storage.s3.secret-access-key=test",
        "--common.storage.s3.region=us-east-1",
        "--common.storage.s3.insecure=true",
        endpoint.as_str(),
        "--blocks-storage.tsdb.head-compaction-interval=1s",
        "--blocks-storage.tsdb.ship-interval=1s",
        "--blocks-storage.bucket-store.sync-interval=1s",
        "--compactor.compaction-interval=1s",
        "--compactor.cleanup-interval=1s",
        "--compactor.first-level-compaction-wait-period=0s",
        // The samples are two days old and sit in the head before the flush: ask the
        // ingesters for every range (Mimir's default asks them for the last 13 h only).
        "--querier.query-ingesters-within=0s",
        work.as_str(),
    ];
    let mut n = Norn::start(dir.path(), &args);

    // Six hours of three series, two days ago: three complete 2h ranges.
    let from = (now_ms() / (24 * H) - 2) * 24 * H;
    let to = from + 6 * H;
    let mut sent: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    let mut t0 = from;
    while t0 < to {
        let t1 = (t0 + 600_000).min(to);
        let ts = (0..3)
            .map(|s| {
                let name = format!("s{s}");
                let samples: Vec<(i64, f64)> = (t0..t1)
                    .step_by(15_000)
                    .map(|t| (t, (t / 15_000) as f64 + s as f64))
                    .collect();
                sent.entry(name.clone()).or_default().extend(&samples);
                common::series(&[("__name__", "compacted"), ("series", &name)], &samples)
            })
            .collect();
        let (status, body) = n.push(Some(TENANT), &common::request(ts));
        assert_eq!(status, 200, "{body}");
        t0 = t1;
    }
    let exact = |n: &Norn, when: &str| {
        let got = n.raw_samples(Some(TENANT), "compacted", from, to - 1);
        assert_eq!(got.len(), 3, "{when}: {got:?}");
        for (labels, samples) in got {
            let name = labels
                .split("\"series\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string();
            assert_eq!(samples, sent[&name], "{when}: {labels}");
        }
    };
    exact(&n, "before the flush");
    let resp = ureq::post(&n.url("/ingester/flush?wait=true&force=true"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let blocks = live(&bucket);
        let merged = blocks.len() == 1 && n.metric("norn_compactor_group_compactions_total") >= 1.0;
        if merged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted: {blocks:?}\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = live(&bucket);
    // The bucket store syncs every second: give it two rounds to drop the marked blocks.
    std::thread::sleep(Duration::from_secs(3));
    exact(&n, "after compaction");

    n.kill9();
    n.restart();
    // Past the first compaction and cleanup runs after the restart.
    std::thread::sleep(Duration::from_secs(13));
    assert_eq!(
        live(&bucket),
        after,
        "a restart leaves the bucket as it was"
    );
    exact(&n, "after kill -9 and restart");
}
