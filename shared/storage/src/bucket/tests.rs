//! Unit tests of [`Bucket`] over the filesystem (in a temp dir) and in-memory backends.

use std::fmt;
use std::sync::Mutex;

use futures::stream::BoxStream;
use object_store::{
    CopyOptions, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions, PutOptions,
    PutResult,
};

use super::*;
use crate::config::{FilesystemConfig, S3Config};

fn fs_bucket() -> (tempfile::TempDir, Bucket) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig {
        backend: "filesystem".into(),
        filesystem: FilesystemConfig {
            dir: dir.path().join("bucket"),
        },
        ..Default::default()
    };
    let bucket = Bucket::from_config(&cfg).unwrap();
    (dir, bucket)
}

/// Deterministic, position-dependent content that catches shifted or swapped ranges.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

async fn round_trip(bucket: &Bucket) {
    let body = Bytes::from(pattern(10_000, 1));
    bucket.put("t1/blk/index", body.clone()).await.unwrap();
    bucket
        .put("t1/blk/chunks/000001", Bytes::from_static(b"chunks"))
        .await
        .unwrap();
    bucket
        .put("t1/blk/meta.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    bucket
        .put("t1/other/meta.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    bucket
        .put("t10/x", Bytes::from_static(b"not t1"))
        .await
        .unwrap();
    bucket.put("top", Bytes::from_static(b"top")).await.unwrap();

    assert_eq!(bucket.get("t1/blk/index").await.unwrap(), body);
    assert_eq!(
        bucket.get_range("t1/blk/index", 100..164).await.unwrap(),
        body.slice(100..164)
    );
    assert_eq!(
        bucket
            .get_range("t1/blk/index", 9_990..10_000)
            .await
            .unwrap(),
        body.slice(9_990..)
    );
    assert!(
        bucket
            .get_range("t1/blk/index", 5..5)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(bucket.exists("t1/blk/index").await.unwrap());
    assert!(!bucket.exists("t1/blk/nope").await.unwrap());
    assert!(
        !bucket.exists("t1/blk").await.unwrap(),
        "a prefix is no object"
    );
    assert_eq!(bucket.size("t1/blk/index").await.unwrap(), 10_000);

    // Overwrite replaces.
    bucket
        .put("t1/blk/chunks/000001", Bytes::from_static(b"chunks v2"))
        .await
        .unwrap();
    assert_eq!(
        bucket.get("t1/blk/chunks/000001").await.unwrap(),
        Bytes::from_static(b"chunks v2")
    );

    let listed = bucket.list("t1").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "t1/blk/chunks/000001",
            "t1/blk/index",
            "t1/blk/meta.json",
            "t1/other/meta.json"
        ],
        "recursive, full keys, whole segments only (no t10)"
    );
    assert_eq!(listed[1].size, 10_000);
    assert_eq!(listed[0].size, 9);
    let age = SystemTime::now()
        .duration_since(listed[0].last_modified)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(300), "last_modified is recent");
    // A trailing slash means the same prefix.
    assert_eq!(bucket.list("t1/").await.unwrap(), listed);
    assert_eq!(bucket.list("").await.unwrap().len(), 6);
    assert!(bucket.list("nobody").await.unwrap().is_empty());

    assert_eq!(bucket.list_dirs("").await.unwrap(), ["t1", "t10"]);
    assert_eq!(bucket.list_dirs("t1").await.unwrap(), ["blk", "other"]);
    assert_eq!(bucket.list_dirs("t1/blk/").await.unwrap(), ["chunks"]);
    assert!(bucket.list_dirs("t1/blk/chunks").await.unwrap().is_empty());
    assert!(bucket.list_dirs("nobody").await.unwrap().is_empty());

    bucket.delete("t1/blk/index").await.unwrap();
    assert!(!bucket.exists("t1/blk/index").await.unwrap());
    bucket.delete("t1/blk/index").await.unwrap(); // missing is fine
    bucket.delete("never/was").await.unwrap();

    assert_eq!(bucket.delete_prefix("t1/blk").await.unwrap(), 2);
    assert_eq!(bucket.list_dirs("t1").await.unwrap(), ["other"]);
    assert_eq!(bucket.delete_prefix("t1/blk").await.unwrap(), 0);
    assert_eq!(bucket.delete_prefix("t1").await.unwrap(), 1);
    assert_eq!(bucket.list_dirs("").await.unwrap(), ["t10"]);
    assert!(bucket.exists("t10/x").await.unwrap(), "t10 is not under t1");
    assert!(matches!(
        bucket.delete_prefix("/").await,
        Err(StorageError::InvalidKey { .. })
    ));
    assert!(bucket.exists("top").await.unwrap());
}

async fn not_found(bucket: &Bucket) {
    for err in [
        bucket.get("t/missing").await.unwrap_err(),
        bucket.get_range("t/missing", 0..4).await.unwrap_err(),
        bucket.get_range("t/missing", 0..0).await.unwrap_err(),
        bucket.size("t/missing").await.unwrap_err(),
    ] {
        match &err {
            StorageError::NotFound { key } => assert_eq!(key, "t/missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert_eq!(err.kind(), norn_model::error::ErrorKind::NotFound);
        assert!(!err.is_retryable());
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sub/file");
    let err = bucket
        .download_file("t/missing", &target)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(!target.exists());
    let err = bucket
        .download_dir("t/missing", &dir.path().join("d"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

async fn invalid_keys(bucket: &Bucket) {
    for key in ["", "/a", "a/", "a//b", "a/../b", "a/./b"] {
        let err = bucket.put(key, Bytes::new()).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key:?}: {err:?}"
        );
        assert!(!err.is_retryable());
    }
    assert!(matches!(
        bucket.list("a//b").await,
        Err(StorageError::InvalidKey { .. })
    ));
}

async fn files_and_dirs(bucket: &Bucket) {
    let src = tempfile::tempdir().unwrap();
    let big = pattern(MULTIPART_THRESHOLD as usize + 3 * PART_SIZE / 2 + 17, 7);
    std::fs::create_dir_all(src.path().join("chunks")).unwrap();
    std::fs::create_dir_all(src.path().join("empty/nested")).unwrap();
    std::fs::write(src.path().join("chunks/000001"), &big).unwrap();
    std::fs::write(src.path().join("chunks/000002"), pattern(1000, 2)).unwrap();
    std::fs::write(src.path().join("index"), pattern(5000, 3)).unwrap();
    std::fs::write(src.path().join("tombstones"), b"").unwrap();
    std::fs::write(src.path().join("meta.json"), b"{\"ulid\":\"x\"}").unwrap();

    // One large file: multipart up, ranged chunks down.
    let n = bucket
        .upload_file("t/blk/chunks/000001", &src.path().join("chunks/000001"))
        .await
        .unwrap();
    assert_eq!(n, big.len() as u64);
    assert_eq!(bucket.size("t/blk/chunks/000001").await.unwrap(), n);
    let dst = tempfile::tempdir().unwrap();
    let local = dst.path().join("one/two/chunk");
    assert_eq!(
        bucket
            .download_file("t/blk/chunks/000001", &local)
            .await
            .unwrap(),
        n
    );
    assert!(std::fs::read(&local).unwrap() == big, "bytes differ");
    let leftovers: Vec<_> = std::fs::read_dir(local.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["chunk"], "no temporary file is left behind");
    // An empty object downloads as an empty file.
    bucket.put("t/empty", Bytes::new()).await.unwrap();
    assert_eq!(
        bucket
            .download_file("t/empty", &dst.path().join("empty"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(std::fs::read(dst.path().join("empty")).unwrap(), b"");

    // The whole directory, meta.json last.
    let stats = bucket
        .upload_dir(src.path(), "t/01BLOCK/", Some("meta.json"))
        .await
        .unwrap();
    assert_eq!(stats.files, 5);
    assert_eq!(stats.bytes, big.len() as u64 + 1000 + 5000 + 12);
    let keys: Vec<String> = bucket
        .list("t/01BLOCK")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys,
        [
            "t/01BLOCK/chunks/000001",
            "t/01BLOCK/chunks/000002",
            "t/01BLOCK/index",
            "t/01BLOCK/meta.json",
            "t/01BLOCK/tombstones"
        ],
        "regular files only, relative paths kept"
    );

    let back = tempfile::tempdir().unwrap();
    let total = bucket
        .download_dir("t/01BLOCK", &back.path().join("blk"))
        .await
        .unwrap();
    assert_eq!(total, stats.bytes);
    for rel in [
        "chunks/000001",
        "chunks/000002",
        "index",
        "tombstones",
        "meta.json",
    ] {
        assert!(
            std::fs::read(src.path().join(rel)).unwrap()
                == std::fs::read(back.path().join("blk").join(rel)).unwrap(),
            "{rel} differs"
        );
    }

    // `last` must exist.
    let err = bucket
        .upload_dir(src.path(), "t/02BLOCK", Some("nope.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(bucket.list("t/02BLOCK").await.unwrap().is_empty());

    // Missing local file / dir.
    assert!(matches!(
        bucket.upload_file("t/x", &src.path().join("missing")).await,
        Err(StorageError::Io { .. })
    ));
    assert!(matches!(
        bucket
            .upload_dir(&src.path().join("missing"), "t/x", None)
            .await,
        Err(StorageError::Io { .. })
    ));
}

#[tokio::test]
async fn filesystem_round_trip() {
    let (_dir, bucket) = fs_bucket();
    round_trip(&bucket).await;
}

#[tokio::test]
async fn memory_round_trip() {
    round_trip(&Bucket::in_memory()).await;
}

#[tokio::test]
async fn filesystem_not_found_and_invalid_keys() {
    let (_dir, bucket) = fs_bucket();
    not_found(&bucket).await;
    invalid_keys(&bucket).await;
}

#[tokio::test]
async fn memory_not_found_and_invalid_keys() {
    let bucket = Bucket::in_memory();
    not_found(&bucket).await;
    invalid_keys(&bucket).await;
}

#[tokio::test]
async fn filesystem_files_and_dirs() {
    let (_dir, bucket) = fs_bucket();
    files_and_dirs(&bucket).await;
}

#[tokio::test]
async fn memory_files_and_dirs() {
    files_and_dirs(&Bucket::in_memory()).await;
}

#[tokio::test]
async fn filesystem_backend_writes_under_its_dir() {
    let (dir, bucket) = fs_bucket();
    assert!(dir.path().join("bucket").is_dir(), "created by from_config");
    let root = std::fs::canonicalize(dir.path().join("bucket")).unwrap();
    assert_eq!(bucket.describe(), format!("filesystem:{}", root.display()));
    assert!(format!("{bucket:?}").contains("filesystem:"));
    bucket
        .put("t/b/meta.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("t/b/meta.json")).unwrap(), b"{}");
    bucket.delete("t/b/meta.json").await.unwrap();
    assert!(!root.join("t").exists(), "empty directories are cleaned up");
    // Another handle on the same directory sees the same objects.
    bucket.put("t/c", Bytes::from_static(b"1")).await.unwrap();
    let again = Bucket::from_config(&StorageConfig {
        filesystem: FilesystemConfig { dir: root.clone() },
        ..Default::default()
    })
    .unwrap();
    assert_eq!(again.get("t/c").await.unwrap(), Bytes::from_static(b"1"));
}

#[test]
fn from_config_validates() {
    let err = Bucket::from_config(&StorageConfig {
        backend: "gcs".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, StorageError::InvalidConfig(_)), "{err:?}");
}

fn s3_config(endpoint: String) -> StorageConfig {
    StorageConfig {
        backend: "s3".into(),
        s3: S3Config {
            endpoint,
            bucket_name: "blocks".into(),
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "very-secret-value".into(),
            region: String::new(),
            insecure: true,
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn s3_description_never_holds_the_secret() {
    let bucket = Bucket::from_config(&s3_config("127.0.0.1:9000".into())).unwrap();
    assert_eq!(bucket.describe(), "s3:blocks@http://127.0.0.1:9000");
    assert!(!format!("{bucket:?}").contains("very-secret-value"));
    let mut aws = s3_config(String::new());
    aws.s3.region = "eu-west-1".into();
    aws.s3.insecure = false;
    let bucket = Bucket::from_config(&aws).unwrap();
    assert_eq!(bucket.describe(), "s3:blocks@aws/eu-west-1");
}

/// Nothing listens on the port: every operation fails fast with a retryable `Unavailable`
/// error that names the operation and the key, and never the secret.
#[tokio::test]
async fn s3_unreachable_is_unavailable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tuning = S3Tuning {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        max_retries: 2,
        retry_timeout: Duration::from_secs(1),
        init_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let bucket =
        Bucket::from_config_with(&s3_config(format!("127.0.0.1:{port}")), &tuning).unwrap();
    let started = Instant::now();
    let errors = [
        bucket
            .put("t/blk/meta.json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err(),
        bucket.get("t/blk/meta.json").await.unwrap_err(),
        bucket.exists("t/blk/meta.json").await.unwrap_err(),
        bucket.list("t/blk").await.unwrap_err(),
    ];
    assert!(started.elapsed() < Duration::from_secs(20));
    for (err, op) in errors.iter().zip(["put", "get", "exists", "list"]) {
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.kind(), norn_model::error::ErrorKind::Unavailable);
        let text = err.to_string();
        assert!(text.contains(op), "{text}");
        assert!(text.contains("t/blk"), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(!format!("{err:?}").contains("very-secret-value"));
    }
}

#[tokio::test]
async fn metrics_count_operations_and_failures() {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(BucketMetrics::new(&registry).unwrap());
    let bucket = Bucket::in_memory().with_metrics(Arc::clone(&metrics));
    bucket.put("a/b", Bytes::from_static(b"x")).await.unwrap();
    bucket.get("a/b").await.unwrap();
    assert!(bucket.get("a/missing").await.unwrap_err().is_not_found());
    assert!(bucket.put("", Bytes::new()).await.is_err());

    let value = |name: &str, op: &str| -> f64 {
        for family in registry.gather() {
            if family.name() != name {
                continue;
            }
            for m in family.get_metric() {
                if m.get_label().iter().any(|l| l.value() == op) {
                    return if name.ends_with("_seconds") {
                        m.get_histogram().get_sample_count() as f64
                    } else {
                        m.get_counter().get_value()
                    };
                }
            }
        }
        0.0
    };
    assert_eq!(value("norn_bucket_operations_total", "put"), 2.0);
    assert_eq!(value("norn_bucket_operations_total", "get"), 2.0);
    assert_eq!(value("norn_bucket_operation_failures_total", "put"), 1.0);
    assert_eq!(
        value("norn_bucket_operation_failures_total", "get"),
        0.0,
        "NotFound is an answer, not a failure"
    );
    assert_eq!(value("norn_bucket_operation_duration_seconds", "get"), 2.0);
    // A second registration into the same registry is refused, not silently duplicated.
    assert!(BucketMetrics::new(&registry).is_err());
}

/// An in-memory store that records the order of completed writes and can be told to fail
/// writes of one key.
#[derive(Debug)]
struct Recording {
    inner: InMemory,
    writes: Mutex<Vec<String>>,
    fail: Option<String>,
}

impl fmt::Display for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recording({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Recording {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail.as_deref() == Some(location.as_ref()) {
            return Err(object_store::Error::Generic {
                store: "Recording",
                source: "injected failure".into(),
            });
        }
        // Give concurrent uploads a chance to interleave.
        tokio::task::yield_now().await;
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.writes.lock().unwrap().push(location.to_string());
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.writes
            .lock()
            .unwrap()
            .push(format!("{location} (multipart)"));
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn recording(fail: Option<&str>) -> (Arc<Recording>, Bucket) {
    let store = Arc::new(Recording {
        inner: InMemory::new(),
        writes: Mutex::new(Vec::new()),
        fail: fail.map(str::to_owned),
    });
    let bucket = Bucket::new(
        Arc::clone(&store) as Arc<dyn ObjectStore>,
        "recording".into(),
    );
    (store, bucket)
}

fn block_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("chunks")).unwrap();
    for i in 1..=6 {
        std::fs::write(
            dir.path().join(format!("chunks/{i:06}")),
            pattern(100 * i, 1),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("index"), b"index").unwrap();
    // Sorts before most names, so "last" cannot come from sorting alone.
    std::fs::write(dir.path().join("aaa-meta.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("meta.json"), b"{}").unwrap();
    dir
}

#[tokio::test]
async fn upload_dir_writes_last_after_everything_else() {
    let dir = block_dir();
    let (store, bucket) = recording(None);
    let stats = bucket
        .upload_dir(dir.path(), "t/BLK", Some("aaa-meta.json"))
        .await
        .unwrap();
    assert_eq!(stats.files, 9);
    let writes = store.writes.lock().unwrap().clone();
    assert_eq!(writes.len(), 9, "{writes:?}");
    assert_eq!(writes.last().unwrap(), "t/BLK/aaa-meta.json", "{writes:?}");
    assert_eq!(
        writes
            .iter()
            .filter(|w| w.ends_with("aaa-meta.json"))
            .count(),
        1
    );
}

#[tokio::test]
async fn upload_dir_failure_never_writes_last() {
    let dir = block_dir();
    let (store, bucket) = recording(Some("t/BLK/chunks/000004"));
    let err = bucket
        .upload_dir(dir.path(), "t/BLK", Some("meta.json"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("t/BLK/chunks/000004"), "{err}");
    let writes = store.writes.lock().unwrap().clone();
    assert!(
        !writes.iter().any(|w| w.ends_with("/meta.json")),
        "{writes:?}"
    );
    assert!(!bucket.exists("t/BLK/meta.json").await.unwrap());
    assert!(
        crate::layout::list_blocks(&bucket, "t")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn upload_dir_without_last_and_with_empty_prefix() {
    let dir = block_dir();
    let bucket = Bucket::in_memory();
    let stats = bucket.upload_dir(dir.path(), "", None).await.unwrap();
    assert_eq!(stats.files, 9);
    assert!(bucket.exists("chunks/000006").await.unwrap());
    assert!(bucket.exists("meta.json").await.unwrap());
    let back = tempfile::tempdir().unwrap();
    assert_eq!(
        bucket.download_dir("", back.path()).await.unwrap(),
        stats.bytes
    );
    assert_eq!(std::fs::read(back.path().join("index")).unwrap(), b"index");
}

#[test]
fn local_paths_cannot_escape() {
    let root = Path::new("/data");
    assert_eq!(local_path(root, "a/b").unwrap(), PathBuf::from("/data/a/b"));
    for bad in ["", "a//b", "../x", "a/..", ".", "/abs"] {
        assert!(local_path(root, bad).is_err(), "{bad:?}");
    }
}
