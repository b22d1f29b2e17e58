//! The compactor against a real (in-memory) bucket with real blocks: RF-3 copies merge into
//! one, 2h blocks into 12h, split-and-merge, the bucket index, deletion only after the delay,
//! retention, a corrupt block marked no-compact while the rest compacts, and crashes
//! mid-upload and mid-job that the next run completes with nothing lost or doubled.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use norn_bucket_index::{DeletionMark, Index, IndexBlock, NoCompactMark, marks, update_index};
use norn_compactor::{CompactorService, Config, Deps, build};
use norn_limits::{Limits, Overrides};
use norn_model::{Labels, Matcher, Sample};
use norn_server::Metrics;
use norn_storage::{Bucket, layout};
use norn_tsdb::block::{Block, BlockOptions, chunks_from_samples, write_block};
use norn_tsdb::head::SeriesChunks;
use tokio_util::sync::CancellationToken;

const T: &str = "team-a";
const H: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The start of a day well in the past, so every window is settled.
fn day_start() -> i64 {
    (now_ms() / (24 * H) - 3) * 24 * H
}

struct Env {
    _dir: tempfile::TempDir,
    local: std::path::PathBuf,
    bucket: Bucket,
    service: Arc<CompactorService>,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn env_with(overrides: &str, deletion_delay: Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Bucket::in_memory();
    let cfg = Config {
        data_dir: dir.path().join("data"),
        deletion_delay,
        first_level_compaction_wait_period: Duration::ZERO,
        ..Config::default()
    };
    let stop = CancellationToken::new();
    let service = build(
        cfg,
        Deps {
            overrides: Arc::new(Overrides::from_yaml(Limits::default(), overrides).unwrap()),
            metrics: Metrics::new(),
            bucket: bucket.clone(),
            ring: None,
            stop: stop.clone(),
            // The loops never run on their own here: the tests drive every run.
            first_run_delay: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    let local = dir.path().join("blocks");
    std::fs::create_dir_all(&local).unwrap();
    Env {
        _dir: dir,
        local,
        bucket,
        service,
        stop,
    }
}

async fn env() -> Env {
    env_with("", Duration::from_secs(3600)).await
}

fn samples(from: i64, to: i64) -> Vec<Sample> {
    (0..)
        .map(|i| from + i * 15_000)
        .take_while(|t| *t < to)
        .map(|t| Sample::new(t, (t / 1000) as f64))
        .collect()
}

fn series_set(n: usize, from: i64, to: i64, per_chunk: usize) -> Vec<SeriesChunks> {
    (0..n)
        .map(|i| SeriesChunks {
            labels: Labels::from_pairs([("__name__", "up"), ("job", &format!("j{i:03}"))]),
            chunks: chunks_from_samples(&samples(from, to), per_chunk).unwrap(),
        })
        .collect()
}

impl Env {
    /// Writes a level-1 block (as an ingester ships it) and uploads it, meta.json last.
    async fn upload(&self, from: i64, to: i64, series: Vec<SeriesChunks>) -> String {
        let opts = BlockOptions::for_tenant(T, "receive", []).with_range(from, to);
        let meta = write_block(&self.local, series, opts).unwrap();
        self.bucket
            .upload_dir(
                &self.local.join(&meta.ulid),
                &layout::block_prefix(T, &meta.ulid),
                Some("meta.json"),
            )
            .await
            .unwrap();
        meta.ulid
    }

    async fn index(&self) -> norn_bucket_index::UpdateOutcome {
        update_index(&self.bucket, T, None, now_ms() / 1000)
            .await
            .unwrap()
    }

    /// Blocks without a deletion mark.
    async fn live(&self) -> Vec<IndexBlock> {
        let out = self.index().await;
        out.index
            .blocks
            .iter()
            .filter(|b| out.index.deletion_mark(&b.block_id).is_none())
            .cloned()
            .collect()
    }

    /// Every (series, timestamp) in the live blocks, counted.
    async fn live_samples(&self) -> BTreeMap<(String, i64), usize> {
        let mut out = BTreeMap::new();
        for b in self.live().await {
            let dir = self.local.join("read").join(&b.block_id);
            if !dir.exists() {
                self.bucket
                    .download_dir(&layout::block_prefix(T, &b.block_id), &dir)
                    .await
                    .unwrap();
            }
            let block = Block::open(&dir).unwrap();
            block.verify().unwrap();
            for s in block
                .select(i64::MIN, i64::MAX, &[Matcher::equal("__name__", "up")])
                .unwrap()
            {
                for x in s.samples {
                    *out.entry((s.labels.to_string(), x.t)).or_default() += 1;
                }
            }
        }
        out
    }

    fn compactor(&self) -> &norn_compactor::Compactor {
        self.service.compactor()
    }
}

fn each_once(got: &BTreeMap<(String, i64), usize>, series: usize, from: i64, to: i64) {
    let per = samples(from, to).len();
    assert_eq!(got.len(), series * per, "every sample present");
    assert!(got.values().all(|&n| n == 1), "no sample twice");
}

#[tokio::test]
async fn rf3_copies_merge_into_one_block() {
    let e = env().await;
    let d = day_start();
    for per_chunk in [120, 90, 120] {
        e.upload(d, d + 2 * H, series_set(20, d, d + 2 * H, per_chunk))
            .await;
    }
    let report = e.compactor().run_compaction().await.unwrap();
    assert_eq!(report[T].jobs, 1);
    assert_eq!(report[T].blocks_compacted, 3);
    let live = e.live().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].compaction_level, 2);
    assert_eq!((live[0].min_time, live[0].max_time), (d, d + 2 * H));
    assert_eq!(live[0].source, "compactor");
    each_once(&e.live_samples().await, 20, d, d + 2 * H);
    // The inputs are marked, not deleted: readers holding the old list see no hole.
    let out = e.index().await;
    assert_eq!(out.index.blocks.len(), 4);
    assert_eq!(out.index.block_deletion_marks.len(), 3);
    // Nothing more to do.
    let again = e.compactor().run_compaction().await.unwrap();
    assert_eq!(again[T].jobs, 0);
}

#[tokio::test]
async fn adjacent_2h_blocks_become_a_12h_block() {
    let e = env().await;
    let d = day_start();
    for w in 0..6 {
        let (from, to) = (d + w * 2 * H, d + (w + 1) * 2 * H);
        for _ in 0..3 {
            e.upload(from, to, series_set(5, from, to, 120)).await;
        }
    }
    let report = e.compactor().run_compaction().await.unwrap();
    assert_eq!(report[T].jobs, 7, "6 vertical merges, then one 12h merge");
    let live = e.live().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!((live[0].min_time, live[0].max_time), (d, d + 12 * H));
    assert_eq!(live[0].compaction_level, 3);
    each_once(&e.live_samples().await, 5, d, d + 12 * H);
}

#[tokio::test]
async fn split_and_merge_writes_disjoint_shards() {
    let e = env_with(
        "overrides:\n  team-a:\n    compactor_split_and_merge_shards: 2\n    compactor_split_groups: 2\n",
        Duration::from_secs(3600),
    )
    .await;
    let d = day_start();
    for _ in 0..3 {
        e.upload(d, d + 2 * H, series_set(30, d, d + 2 * H, 120))
            .await;
    }
    e.compactor().run_compaction().await.unwrap();
    let live = e.live().await;
    let mut shards: Vec<&str> = live.iter().map(|b| b.compactor_shard_id.as_str()).collect();
    shards.sort();
    assert_eq!(shards, ["1_of_2", "2_of_2"], "{live:?}");
    each_once(&e.live_samples().await, 30, d, d + 2 * H);
}

#[tokio::test]
async fn cleanup_writes_the_index_and_deletes_only_after_the_delay() {
    let e = env_with("", Duration::from_secs(2)).await;
    let d = day_start();
    let mut inputs = Vec::new();
    for _ in 0..3 {
        inputs.push(
            e.upload(d, d + 2 * H, series_set(3, d, d + 2 * H, 120))
                .await,
        );
    }
    e.compactor().run_compaction().await.unwrap();
    let first = e.compactor().run_cleanup().await.unwrap();
    assert!(first[T].deleted.is_empty(), "the delay has not passed");
    let index = Index::read(&e.bucket, T).await.unwrap().unwrap();
    assert_eq!(index.blocks.len(), 4);
    assert_eq!(index.block_deletion_marks.len(), 3);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = e.compactor().run_cleanup().await.unwrap();
    let mut deleted = second[T].deleted.clone();
    deleted.sort();
    inputs.sort();
    assert_eq!(deleted, inputs);
    for id in &inputs {
        assert!(
            e.bucket
                .list(&layout::block_prefix(T, id))
                .await
                .unwrap()
                .is_empty(),
            "{id} fully deleted"
        );
        assert!(
            marks::read::<DeletionMark>(&e.bucket, T, id)
                .await
                .unwrap()
                .is_none()
        );
    }
    let index = Index::read(&e.bucket, T).await.unwrap().unwrap();
    assert_eq!(index.blocks.len(), 1);
    assert!(index.block_deletion_marks.is_empty());
    each_once(&e.live_samples().await, 3, d, d + 2 * H);
}

#[tokio::test]
async fn retention_marks_old_blocks_and_deletion_waits() {
    let e = env_with(
        "overrides:\n  team-a:\n    compactor_blocks_retention_period: 2d\n",
        Duration::from_secs(3600),
    )
    .await;
    let old = day_start() - 24 * H;
    let recent = (now_ms() / (2 * H) - 1) * 2 * H;
    let old_id = e
        .upload(old, old + 2 * H, series_set(2, old, old + 2 * H, 120))
        .await;
    let new_id = e
        .upload(
            recent,
            recent + 2 * H,
            series_set(2, recent, recent + 2 * H, 120),
        )
        .await;
    let r = e.compactor().run_cleanup().await.unwrap();
    assert_eq!(r[T].retention_marked, std::slice::from_ref(&old_id));
    assert!(
        r[T].deleted.is_empty(),
        "marked, not deleted before the delay"
    );
    let index = Index::read(&e.bucket, T).await.unwrap().unwrap();
    assert!(index.deletion_mark(&old_id).is_some());
    assert!(index.deletion_mark(&new_id).is_none());
    // A second pass does not mark again.
    let r = e.compactor().run_cleanup().await.unwrap();
    assert!(r[T].retention_marked.is_empty());
}

#[tokio::test]
async fn a_corrupt_block_is_marked_no_compact_and_the_rest_compacts() {
    let e = env().await;
    let d = day_start();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            e.upload(d, d + 2 * H, series_set(10, d, d + 2 * H, 120))
                .await,
        );
    }
    // Damage the third copy's chunk data in the bucket.
    let key = layout::block_file(T, &ids[2], "chunks/000001");
    let mut bytes = e.bucket.get(&key).await.unwrap().to_vec();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    e.bucket.put(&key, bytes.into()).await.unwrap();

    let report = e.compactor().run_compaction().await.unwrap();
    assert_eq!(report[T].marked_no_compact, [ids[2].clone()]);
    assert_eq!(report[T].jobs, 1, "the two good copies merged");
    let mark = marks::read::<NoCompactMark>(&e.bucket, T, &ids[2])
        .await
        .unwrap()
        .expect("no-compact mark written");
    assert!(!mark.details.is_empty());
    let live = e.live().await;
    assert_eq!(live.len(), 2, "the merged block and the marked one");
    // The marked block is never picked again.
    let again = e.compactor().run_compaction().await.unwrap();
    assert_eq!(again[T].jobs, 0);
    assert!(again[T].marked_no_compact.is_empty());
}

#[tokio::test]
async fn a_crash_mid_upload_or_mid_job_ends_in_the_same_state() {
    let e = env_with(
        "overrides:\n  team-a:\n    compactor_partial_block_deletion_delay: 1s\n",
        Duration::from_secs(3600),
    )
    .await;
    let d = day_start();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let id = e
            .upload(d, d + 2 * H, series_set(8, d, d + 2 * H, 120))
            .await;
        dirs.push(e.local.join(id));
    }
    // A crash mid-upload: an output's files are up but not its meta.json.
    let out = e.local.join("crashed");
    std::fs::create_dir_all(&out).unwrap();
    let partial = norn_tsdb::compact::compact(&dirs, &out, &Default::default()).unwrap();
    let partial_id = partial.blocks[0].ulid.clone();
    upload_without_meta(&e.bucket, &out.join(&partial_id), &partial_id).await;
    // A crash after a whole output was uploaded, before the inputs were marked.
    let out2 = e.local.join("crashed2");
    std::fs::create_dir_all(&out2).unwrap();
    let whole = norn_tsdb::compact::compact(&dirs, &out2, &Default::default()).unwrap();
    let whole_id = whole.blocks[0].ulid.clone();
    e.bucket
        .upload_dir(
            &out2.join(&whole_id),
            &layout::block_prefix(T, &whole_id),
            Some("meta.json"),
        )
        .await
        .unwrap();

    e.compactor().run_compaction().await.unwrap();
    let live = e.live().await;
    assert_eq!(live.len(), 1, "{live:?}");
    each_once(&e.live_samples().await, 8, d, d + 2 * H);
    assert_eq!(e.index().await.partials.len(), 1, "the partial is ignored");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = e.compactor().run_cleanup().await.unwrap();
    assert_eq!(r[T].partials_deleted, std::slice::from_ref(&partial_id));
    assert!(
        e.bucket
            .list(&layout::block_prefix(T, &partial_id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(e.index().await.partials.is_empty());
    each_once(&e.live_samples().await, 8, d, d + 2 * H);
}

async fn upload_without_meta(bucket: &Bucket, dir: &Path, id: &str) {
    bucket
        .upload_dir(dir, &layout::block_prefix(T, id), None)
        .await
        .unwrap();
    bucket.delete(&layout::block_meta(T, id)).await.unwrap();
}
