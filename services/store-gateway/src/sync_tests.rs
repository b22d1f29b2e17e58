//! Tests of what decides which blocks are served (deletion marks) and of the process-wide
//! fetch budget seen through the API.

use std::sync::Arc;
use std::time::Duration;

use norn_bucket_index::DeletionMark;
use norn_storage::Bucket;

use crate::OwnAll;
use crate::tests::{config, re, series, start};
use crate::testutil::write_test_block_in;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_marked_for_deletion_long_ago_are_dropped() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let old = write_test_block_in(&bucket, local.path(), "t1", 0, 3).await;
    let recent = write_test_block_in(&bucket, local.path(), "t1", 7_200_000, 3).await;
    let kept = write_test_block_in(&bucket, local.path(), "t1", 14_400_000, 3).await;
    let now_s = norn_model::now_ms() / 1000;
    norn_bucket_index::marks::write(&bucket, "t1", &DeletionMark::new(&old, now_s - 7200))
        .await
        .unwrap();
    norn_bucket_index::marks::write(&bucket, "t1", &DeletionMark::new(&recent, now_s - 60))
        .await
        .unwrap();
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let store = h.svc.store();
    // Marked 2h ago (past the 1h delay): gone; marked a minute ago: still served.
    assert!(store.block("t1", &old).is_none());
    assert!(store.block("t1", &recent).is_some());
    assert!(store.block("t1", &kept).is_some());
    let (_, hints) = series(
        &h,
        "t1",
        &[&old, &recent],
        i64::MIN,
        i64::MAX,
        &[re("__name__", ".+")],
    )
    .await
    .unwrap();
    assert_eq!(hints.queried_block_ids, std::slice::from_ref(&recent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_larger_than_the_fetch_budget_is_refused_as_a_limit() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 3000).await;
    let sync = tempfile::tempdir().unwrap();
    let mut cfg = config(sync.path());
    cfg.max_inflight_fetch_bytes = 1 << 20;
    cfg.max_concurrent_queue_timeout = Duration::from_millis(200);
    let h = start(&bucket, cfg, Arc::new(OwnAll)).await;
    // Every chunk of the block: more than 1 MiB.
    let e = series(
        &h,
        "t1",
        &[&id],
        i64::MIN,
        i64::MAX,
        &[re("__name__", ".+")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(h.metrics.overloaded.get(), 1);
    // A small query still fits, and the budget was released.
    let (got, _) = series(
        &h,
        "t1",
        &[&id],
        i64::MIN,
        i64::MAX,
        &[norn_model::Matcher::equal("instance", "inst00007")],
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 1);
}
