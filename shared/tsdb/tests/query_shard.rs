//! `__query_shard__` in the head and in blocks: the N shards' selections are disjoint, add
//! up to the unsharded selection, and each is exactly the series whose label hash falls in
//! it (`ShardSelector::contains`) — for samples, chunks, newest samples and label values;
//! a malformed shard matcher is `bad_data`. The head is checked as written and as replayed
//! from its WAL.

use std::sync::Arc;

use norn_model::{
    ErrorKind, Labels, MatchType, Matcher, Queryable, SHARD_LABEL, Sample, SampleBudget,
    ShardSelector, WriteBatch,
};
use norn_tsdb::block::{Block, BlockOptions, write_block};
use norn_tsdb::{AppendLimits, BlocksQueryable, Head, HeadOptions, HeadQueryable};

fn series() -> Vec<(Labels, Vec<Sample>)> {
    (0..60)
        .map(|i| {
            let l = Labels::from_pairs([
                ("__name__", if i % 2 == 0 { "a" } else { "b" }),
                ("i", &*i.to_string()),
                ("j", &*(i % 7).to_string()),
            ]);
            (
                l,
                (0..20)
                    .map(|k| Sample::new(k * 1000, (i * k) as f64))
                    .collect(),
            )
        })
        .collect()
}

fn with_shard(ms: &[Matcher], s: ShardSelector) -> Vec<Matcher> {
    let mut ms = ms.to_vec();
    ms.push(s.matcher());
    ms
}

/// Checks one source against the series list it holds.
async fn check(q: &dyn Queryable, all: &[(Labels, Vec<Sample>)]) {
    let budget = SampleBudget::unlimited();
    for base in [
        vec![],
        vec![Matcher::equal("__name__", "a")],
        vec![Matcher::new(MatchType::Regex, "j", "1|2|3").unwrap()],
    ] {
        let whole = q.select(0, 30_000, &base).await.unwrap();
        assert!(!whole.is_empty());
        // Powers of two read the hash bits kept in the head's id table; 3 hashes the labels.
        for n in [1u64, 2, 3, 16] {
            let mut union = Vec::new();
            for i in 0..n {
                let s = ShardSelector::new(i, n).unwrap();
                let ms = with_shard(&base, s);
                let got = q.select_within(0, 30_000, &ms, &budget).await.unwrap();
                let want: Vec<_> = whole
                    .iter()
                    .filter(|x| s.contains(&x.labels))
                    .cloned()
                    .collect();
                assert_eq!(got, want, "shard {s} of {base:?}");
                let chunks = q.select_chunks(0, 30_000, &ms).await.unwrap();
                let labels: Vec<_> = chunks.iter().map(|c| c.labels.clone()).collect();
                let want_labels: Vec<_> = want.iter().map(|x| x.labels.clone()).collect();
                assert_eq!(labels, want_labels);
                let last = q.select_last_within(0, 30_000, &ms, &budget).await.unwrap();
                assert_eq!(last.len(), want.len());
                let values = q.label_values("i", 0, 30_000, &ms).await.unwrap();
                assert_eq!(values.len(), want.len());
                union.extend(got);
            }
            union.sort_by(|a, b| a.labels.cmp(&b.labels));
            assert_eq!(union, whole, "{n} shards of {base:?}");
        }
    }
    // The unsharded selection holds every series.
    assert_eq!(q.select(0, 30_000, &[]).await.unwrap().len(), all.len());
    for bad in [
        Matcher::equal(SHARD_LABEL, "0_of_3"),
        Matcher::equal(SHARD_LABEL, "4_of_3"),
        Matcher::equal(SHARD_LABEL, "x"),
        Matcher::new(MatchType::NotEqual, SHARD_LABEL, "1_of_3").unwrap(),
    ] {
        let err = q
            .select(0, 30_000, std::slice::from_ref(&bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadData, "{bad}");
        let err = q.select_chunks(0, 30_000, &[bad]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadData);
    }
}

#[tokio::test]
async fn head_and_blocks_honour_the_shard_matcher() {
    let dir = tempfile::tempdir().unwrap();
    let all = series();
    let (head, _) = Head::open(HeadOptions::new(dir.path().join("head"))).unwrap();
    head.append(
        &WriteBatch::from_series(&all),
        &AppendLimits {
            max_series: 0,
            max_series_per_metric: 0,
        },
    )
    .unwrap();
    let head = Arc::new(head);
    check(&HeadQueryable(Arc::clone(&head)), &all).await;

    // A head replayed from its WAL keeps the same hash bits for its series.
    {
        let dir2 = tempfile::tempdir().unwrap();
        let opts = || HeadOptions::new(dir2.path().join("head"));
        let (first, _) = Head::open(opts()).unwrap();
        first
            .append(
                &WriteBatch::from_series(&all),
                &AppendLimits {
                    max_series: 0,
                    max_series_per_metric: 0,
                },
            )
            .unwrap();
        drop(first);
        let (replayed, _) = Head::open(opts()).unwrap();
        check(&HeadQueryable(Arc::new(replayed)), &all).await;
    }

    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let meta = write_block(
        &blocks,
        head.series_chunks(i64::MIN, i64::MAX),
        BlockOptions::default(),
    )
    .unwrap();
    let block = Arc::new(Block::open(blocks.join(&meta.ulid)).unwrap());
    check(&BlocksQueryable::new(vec![block]), &all).await;
}
