//! The S3 backend against a real S3 server (`moto_server`, PyPI `moto[server]`) on 127.0.0.1:
//! round trips, a multipart upload, directory listings, and outages simulated by freezing the
//! server (SIGSTOP) for a while. Skipped when `moto_server` is not installed, unless
//! `NORN_REQUIRE_PEERS=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use norn_storage::testing::MotoServer;
use norn_storage::{Bucket, S3Tuning, StorageError, layout};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

const BLOCK: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJK";
const PARTIAL: &str = "01HQ3Z5V6W7X8Y9ZABCDEFGHJM";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let bucket = Bucket::from_config(&moto.storage_config("round-trips")).unwrap();
    assert_eq!(
        bucket.describe(),
        format!("s3:round-trips@{}", moto.endpoint())
    );

    let body = Bytes::from(pattern(100_000, 1));
    bucket.put("t1/x/index", body.clone()).await.unwrap();
    bucket
        .put("t1/x/chunks/000001", Bytes::from_static(b"c"))
        .await
        .unwrap();
    bucket.put("t10/y", Bytes::from_static(b"y")).await.unwrap();
    assert_eq!(bucket.get("t1/x/index").await.unwrap(), body);
    assert_eq!(
        bucket.get_range("t1/x/index", 4096..8192).await.unwrap(),
        body.slice(4096..8192)
    );
    assert!(bucket.exists("t1/x/index").await.unwrap());
    assert!(!bucket.exists("t1/x/missing").await.unwrap());
    assert_eq!(bucket.size("t1/x/index").await.unwrap(), 100_000);
    match bucket.get("t1/x/missing").await {
        Err(StorageError::NotFound { key }) => assert_eq!(key, "t1/x/missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(
        bucket
            .size("t1/x/missing")
            .await
            .unwrap_err()
            .is_not_found()
    );

    let keys: Vec<String> = bucket
        .list("t1")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["t1/x/chunks/000001", "t1/x/index"]);
    assert_eq!(bucket.list_dirs("").await.unwrap(), ["t1", "t10"]);
    assert_eq!(bucket.list_dirs("t1/x").await.unwrap(), ["chunks"]);

    bucket.delete("t1/x/index").await.unwrap();
    bucket.delete("t1/x/index").await.unwrap(); // missing is fine
    assert!(!bucket.exists("t1/x/index").await.unwrap());
    assert_eq!(bucket.delete_prefix("t1").await.unwrap(), 1);
    assert_eq!(bucket.list_dirs("").await.unwrap(), ["t10"]);

    // A block directory, meta.json last; a partial upload beside it; rules.
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "chunks/000001", &pattern(300_000, 2));
    write(src.path(), "chunks/000002", &pattern(1_000, 3));
    write(src.path(), "index", &pattern(20_000, 4));
    write(src.path(), "meta.json", b"{\"version\":1}");
    let stats = bucket
        .upload_dir(
            src.path(),
            &layout::block_prefix("t1", BLOCK),
            Some(layout::META_FILE),
        )
        .await
        .unwrap();
    assert_eq!(stats.files, 4);
    assert_eq!(stats.bytes, 300_000 + 1_000 + 20_000 + 13);
    bucket
        .put(
            &layout::block_file("t1", PARTIAL, "index"),
            Bytes::from_static(b"i"),
        )
        .await
        .unwrap();
    bucket
        .put(
            &format!("{}/g.yaml", layout::rules_prefix("t1")),
            Bytes::from_static(b"groups: []"),
        )
        .await
        .unwrap();
    assert_eq!(layout::list_tenants(&bucket).await.unwrap(), ["t1", "t10"]);
    assert_eq!(layout::list_blocks(&bucket, "t1").await.unwrap(), [BLOCK]);
    assert_eq!(
        layout::list_partial_blocks(&bucket, "t1").await.unwrap(),
        [PARTIAL]
    );

    let back = tempfile::tempdir().unwrap();
    let total = bucket
        .download_dir(&layout::block_prefix("t1", BLOCK), back.path())
        .await
        .unwrap();
    assert_eq!(total, stats.bytes);
    for rel in ["chunks/000001", "chunks/000002", "index", "meta.json"] {
        assert!(
            std::fs::read(src.path().join(rel)).unwrap()
                == std::fs::read(back.path().join(rel)).unwrap(),
            "{rel} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_of_a_large_file() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let bucket = Bucket::from_config(&moto.storage_config("multipart")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("000001");
    let data = pattern(40 * 1024 * 1024 + 12_345, 9);
    std::fs::write(&src, &data).unwrap();

    let started = Instant::now();
    let key = layout::block_file("t1", BLOCK, "chunks/000001");
    assert_eq!(
        bucket.upload_file(&key, &src).await.unwrap(),
        data.len() as u64
    );
    let upload = started.elapsed();
    assert_eq!(bucket.size(&key).await.unwrap(), data.len() as u64);
    // moto logs every request line: the file went up in 8 MiB parts.
    let moto_log = std::fs::read_to_string(moto.log_path()).unwrap();
    let parts = moto_log.matches("partNumber=").count();
    assert!(
        parts >= 6,
        "expected a multipart upload of 6 parts:\n{moto_log}"
    );

    // Across the boundary of the first two 8 MiB parts.
    let boundary = 8 * 1024 * 1024u64;
    assert_eq!(
        bucket
            .get_range(&key, boundary - 10..boundary + 10)
            .await
            .unwrap(),
        Bytes::copy_from_slice(&data[boundary as usize - 10..boundary as usize + 10])
    );

    let dst = dir.path().join("down/000001");
    let started = Instant::now();
    assert_eq!(
        bucket.download_file(&key, &dst).await.unwrap(),
        data.len() as u64
    );
    let download = started.elapsed();
    assert!(std::fs::read(&dst).unwrap() == data, "bytes differ");
    eprintln!("40 MiB: upload {upload:?}, download {download:?}");
}

/// Short timeouts so that a frozen server is noticed (and retried) within a second.
fn impatient(retry_timeout: Duration) -> S3Tuning {
    S3Tuning {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(1500),
        max_retries: 10,
        retry_timeout,
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_survive_a_short_outage() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let cfg = moto.storage_config("outage");
    let bucket = Bucket::from_config_with(&cfg, &impatient(Duration::from_secs(20))).unwrap();
    // Warm the connection pool: the outage then hits established connections too.
    bucket
        .put("t/warm", Bytes::from_static(b"w"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chunk");
    let data = pattern(20 * 1024 * 1024, 5); // multipart: 3 parts
    std::fs::write(&file, &data).unwrap();
    let small = Bytes::from(pattern(512 * 1024, 6));

    moto.pause();
    let started = Instant::now();
    let put = {
        let bucket = bucket.clone();
        let small = small.clone();
        tokio::spawn(async move { bucket.put("t/blk/index", small).await })
    };
    let upload = {
        let bucket = bucket.clone();
        let file = file.clone();
        tokio::spawn(async move { bucket.upload_file("t/blk/chunks/000001", &file).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!put.is_finished() && !upload.is_finished());
    moto.resume();

    put.await.unwrap().expect("put completes after the outage");
    let n = upload
        .await
        .unwrap()
        .expect("multipart upload completes after the outage");
    let elapsed = started.elapsed();
    assert_eq!(n, data.len() as u64);
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(25), "{elapsed:?}");
    assert_eq!(bucket.get("t/blk/index").await.unwrap(), small);
    assert!(
        bucket.get("t/blk/chunks/000001").await.unwrap() == data,
        "bytes differ"
    );
    eprintln!("short outage: uploads done {elapsed:?} after the server froze");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_is_unavailable_and_retryable() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let mut cfg = moto.storage_config("long-outage");
    cfg.s3.secret_access_key = "s3cr3t-never-shown".into(); // moto accepts any
    let bucket = Bucket::from_config_with(&cfg, &impatient(Duration::from_secs(2))).unwrap();
    bucket
        .put("t/blk/meta.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();

    moto.pause();
    let started = Instant::now();
    let err = bucket
        .put("t/blk/index", Bytes::from_static(b"index"))
        .await
        .unwrap_err();
    let put_elapsed = started.elapsed();
    let started = Instant::now();
    let get_err = bucket.get("t/blk/meta.json").await.unwrap_err();
    let get_elapsed = started.elapsed();

    for (err, op, elapsed) in [(&err, "put", put_elapsed), (&get_err, "get", get_elapsed)] {
        assert!(
            matches!(err, StorageError::Unavailable { .. }),
            "{op}: {err:?}"
        );
        assert!(err.is_retryable());
        assert_eq!(err.kind(), norn_model::error::ErrorKind::Unavailable);
        let text = err.to_string();
        assert!(text.contains(op) && text.contains("t/blk/"), "{text}");
        assert!(!text.contains("s3cr3t") && !format!("{err:?}").contains("s3cr3t"));
        // Gave up after the retry budget (2 s) plus at most one request timeout, not before.
        assert!(elapsed >= Duration::from_secs(2), "{op}: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "{op}: {elapsed:?}");
        eprintln!("{op} failed after {elapsed:?}: {text}");
    }

    // Retryable indeed: once the server is back the same handle works again.
    moto.resume();
    bucket
        .put("t/blk/index", Bytes::from_static(b"index"))
        .await
        .unwrap();
    assert_eq!(
        bucket.get("t/blk/index").await.unwrap(),
        Bytes::from_static(b"index")
    );
}
