//! Chunk-level reads (`select_chunks`) of the head and of blocks agree with sample reads
//! (`select`): the same samples once decoded and trimmed, the same budget charged.

use std::sync::Arc;

use norn_model::query::decode_chunk_series;
use norn_model::{Labels, MergeQueryable, Queryable, Sample, SampleBudget, StorageError};

use super::*;
use crate::BlocksQueryable;
use crate::block::{Block, BlockOptions};

const NO_LIMITS: AppendLimits = AppendLimits {
    max_series: 0,
    max_series_per_metric: 0,
};

/// Two series over [0, 3 h] at 15 s (the second ends after 40 minutes): closed chunks,
/// spilled open chunks, and chunks that straddle the ranges read below.
fn three_hours(head: &Head) {
    let long = Labels::from_pairs([("__name__", "m"), ("job", "long")]);
    let short = Labels::from_pairs([("__name__", "m"), ("job", "short")]);
    for t in (0..=3 * 3_600_000).step_by(15_000) {
        let mut series = vec![(long.clone(), vec![Sample::new(t, t as f64)])];
        if t < 2_400_000 {
            series.push((short.clone(), vec![Sample::new(t, 1.0)]));
        }
        head.append(&norn_model::WriteBatch::from_series(&series), &NO_LIMITS)
            .unwrap();
    }
}

const RANGES: [(i64, i64); 7] = [
    (i64::MIN, i64::MAX),
    (0, 100_000),
    (3_599_000, 3_700_000),
    (1_000, 1_000),
    (10_000_000, 10_800_000),
    (10_799_000, 10_800_000),
    (20_000_000, 30_000_000),
];

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn head_chunks_decode_to_what_select_returns_and_charge_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
    three_hours(&head);
    for (a, b) in RANGES {
        let chunks = head.select_chunks(a, b, &[]);
        assert!(chunks.windows(2).all(|w| w[0].labels < w[1].labels));
        assert_eq!(
            decode_chunk_series(chunks, a, b).unwrap(),
            head.select(a, b, &[]),
            "range {a}..={b}"
        );
        let (by_samples, by_chunks) = (SampleBudget::new(1 << 40), SampleBudget::new(1 << 40));
        head.select_within(a, b, &[], &by_samples);
        head.select_chunks_within(a, b, &[], &by_chunks);
        assert_eq!(by_chunks.used(), by_samples.used(), "range {a}..={b}");
    }
}

#[test]
fn a_chunk_select_stops_once_the_budget_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
    three_hours(&head);
    let q = HeadQueryable(Arc::new(head));
    let budget = SampleBudget::new(100);
    let err = block_on(q.select_chunks_within(0, 3_600_000, &[], &budget));
    assert!(
        matches!(err, Err(StorageError::Limit(ref m)) if m == norn_model::TOO_MANY_SAMPLES),
        "{err:?}"
    );
    // The first series alone is over the limit: nothing more was read.
    assert_eq!(budget.used(), 241);
    let budget = SampleBudget::new(241 + 160);
    let got = block_on(q.select_chunks_within(0, 3_600_000, &[], &budget)).unwrap();
    assert_eq!(got.len(), 2);
}

#[test]
fn block_chunks_and_merged_sources_decode_to_what_select_returns() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let (head, _) = Head::open(HeadOptions::new(dir.path().join("head"))).unwrap();
    three_hours(&head);
    // Written but not cut: block and head both hold [0, 2 h), as in the middle of a cut.
    let meta = head
        .write_block(&blocks, 0, 7_200_000, BlockOptions::default())
        .unwrap()
        .unwrap();
    let block = Arc::new(Block::open(blocks.join(&meta.ulid)).unwrap());
    let in_blocks = BlocksQueryable::new(vec![block]);
    let head = Arc::new(head);
    let merged = MergeQueryable::new(vec![
        Arc::new(in_blocks.clone()),
        Arc::new(HeadQueryable(Arc::clone(&head))),
    ]);
    for (a, b) in RANGES {
        let want = block_on(in_blocks.select(a, b, &[])).unwrap();
        let got = block_on(in_blocks.select_chunks(a, b, &[])).unwrap();
        assert_eq!(decode_chunk_series(got, a, b).unwrap(), want, "{a}..={b}");

        let got = block_on(merged.select_chunks(a, b, &[])).unwrap();
        assert_eq!(
            decode_chunk_series(got, a, b).unwrap(),
            head.select(a, b, &[]),
            "merged {a}..={b}"
        );
        let (by_samples, by_chunks) = (SampleBudget::new(1 << 40), SampleBudget::new(1 << 40));
        block_on(in_blocks.select_within(a, b, &[], &by_samples)).unwrap();
        block_on(in_blocks.select_chunks_within(a, b, &[], &by_chunks)).unwrap();
        assert_eq!(by_chunks.used(), by_samples.used(), "blocks {a}..={b}");
    }
}

/// The newest-sample read (instant selectors) returns exactly the last sample `select` does,
/// whether it comes from the open chunk's state or from decoding, and charges one per series.
#[test]
fn last_sample_select_is_the_last_of_select() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
    let head = Arc::new(head);
    three_hours(&head);
    let mut ranges = RANGES.to_vec();
    // At and around the newest sample, inside the open chunk, and between samples.
    ranges.extend([
        (10_500_000, 10_800_000),
        (10_500_000, 10_799_999),
        (2_000_000, 2_400_000),
        (2_399_000, 2_500_000),
        (7_000_001, 7_000_014),
    ]);
    for (a, b) in ranges {
        let budget = SampleBudget::new(1_000);
        let last = head.select_last_within(a, b, &[], &budget);
        let want = norn_model::query::keep_last(head.select(a, b, &[]));
        assert_eq!(last, want, "range [{a}, {b}]");
        assert_eq!(budget.used(), want.len(), "range [{a}, {b}]");
        let queryable = HeadQueryable(Arc::clone(&head));
        let through_trait =
            block_on(queryable.select_last_within(a, b, &[], &SampleBudget::unlimited()));
        assert_eq!(through_trait.unwrap(), want);
    }
}
