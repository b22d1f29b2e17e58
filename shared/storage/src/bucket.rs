//! [`Bucket`]: the async object storage API every service uses, over `object_store`.
//!
//! Keys are `/`-separated strings relative to the bucket root (`tenant/01H…/meta.json`); a
//! "prefix" names a directory (`tenant/01H…`, a trailing `/` is optional) and matches whole
//! segments only, so prefix `a/b` never matches `a/bc`.
//!
//! Large files never sit in memory: [`Bucket::upload_file`] switches to a multipart upload
//! above 16 MiB (8 MiB parts, a few in flight) and [`Bucket::download_file`] streams ranged
//! reads of 16 MiB into a temporary file that is renamed into place once complete, so every
//! single request stays small enough for the request timeout and its retries.

use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use tokio::io::AsyncWriteExt;

use crate::config::{BACKEND_FILESYSTEM, BACKEND_S3, StorageConfig};
use crate::error::{Result, StorageError};
use crate::metrics::BucketMetrics;

/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Size of one part of a multipart upload (S3 wants at least 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one file uploaded at the same time.
const PART_CONCURRENCY: usize = 3;
/// Size of one ranged read of [`Bucket::download_file`].
pub const DOWNLOAD_CHUNK: u64 = 16 * 1024 * 1024;
/// Files transferred at the same time by [`Bucket::upload_dir`] / [`Bucket::download_dir`].
/// With [`PART_CONCURRENCY`] this bounds the memory of a directory upload to
/// 2 × (3 + 1) × 8 MiB.
const DIR_CONCURRENCY: usize = 2;

/// Client timeouts and retries of the S3 backend.
///
/// The defaults bound one operation to about 30 s when the server is down: 15 s of retries
/// with backoff, plus the last attempt's request timeout. Tests shorten them to simulate
/// outages quickly. `object_store` retries connection errors, 5xx, 429 and timeouts of
/// idempotent requests (every request Norn makes is idempotent: PUTs overwrite, parts are
/// numbered).
#[derive(Debug, Clone, PartialEq)]
pub struct S3Tuning {
    /// Time to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time for one whole request, body included.
    pub request_timeout: Duration,
    /// Retries of one request after the first attempt.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
    /// First backoff between attempts (doubled each time, with jitter).
    pub init_backoff: Duration,
    /// Longest backoff between attempts.
    pub max_backoff: Duration,
}

impl Default for S3Tuning {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_retries: 5,
            retry_timeout: Duration::from_secs(15),
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key, relative to the bucket root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written.
    pub last_modified: SystemTime,
}

/// What [`Bucket::upload_dir`] uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Files uploaded.
    pub files: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// A handle on the bucket. Cheap to clone; clones share connections and metrics.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    description: Arc<str>,
    metrics: Option<Arc<BucketMetrics>>,
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Bucket").field(&self.description).finish()
    }
}

impl Bucket {
    /// Opens the bucket `cfg` describes, with the default [`S3Tuning`].
    ///
    /// `filesystem` creates the directory when missing. `s3` only builds the client; nothing
    /// is sent until the first operation.
    pub fn from_config(cfg: &StorageConfig) -> Result<Bucket> {
        Self::from_config_with(cfg, &S3Tuning::default())
    }

    /// Like [`Bucket::from_config`], with explicit S3 timeouts and retries.
    pub fn from_config_with(cfg: &StorageConfig, tuning: &S3Tuning) -> Result<Bucket> {
        cfg.validate()?;
        match cfg.backend.as_str() {
            BACKEND_FILESYSTEM => {
                let dir = &cfg.filesystem.dir;
                std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
                let root = std::fs::canonicalize(dir).map_err(|e| StorageError::io(dir, e))?;
                let store = LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| {
                        StorageError::InvalidConfig(format!(
                            "common.storage.filesystem.dir {}: {e}",
                            dir.display()
                        ))
                    })?
                    // Deleting a block's last file removes its directory too, so that
                    // directory listings do not show deleted blocks.
                    .with_automatic_cleanup(true);
                Ok(Self::new(
                    Arc::new(store),
                    format!("filesystem:{}", root.display()),
                ))
            }
            BACKEND_S3 => {
                let s3 = &cfg.s3;
                let endpoint = s3.endpoint_url();
                let allow_http = s3.insecure
                    || endpoint
                        .as_deref()
                        .is_some_and(|e| e.starts_with("http://"));
                let retry = RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: tuning.init_backoff,
                        max_backoff: tuning.max_backoff,
                        base: 2.0,
                    },
                    max_retries: tuning.max_retries,
                    retry_timeout: tuning.retry_timeout,
                };
                let client = ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_connect_timeout(tuning.connect_timeout)
                    .with_timeout(tuning.request_timeout);
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket_name)
                    .with_region(s3.effective_region())
                    // Path style (`endpoint/bucket/key`): what MinIO and moto need.
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(allow_http)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(endpoint) = &endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if !s3.access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&s3.access_key_id)
                        .with_secret_access_key(&s3.secret_access_key);
                }
                let store = builder
                    .build()
                    .map_err(|e| StorageError::InvalidConfig(format!("common.storage.s3: {e}")))?;
                let at = endpoint.unwrap_or_else(|| format!("aws/{}", s3.effective_region()));
                Ok(Self::new(
                    Arc::new(store),
                    format!("s3:{}@{at}", s3.bucket_name),
                ))
            }
            other => Err(StorageError::InvalidConfig(format!(
                "unknown backend {other:?}"
            ))),
        }
    }

    /// An empty bucket in memory, for tests.
    pub fn in_memory() -> Bucket {
        Self::new(Arc::new(InMemory::new()), "memory".into())
    }

    fn new(store: Arc<dyn ObjectStore>, description: String) -> Bucket {
        Bucket {
            store,
            description: description.into(),
            metrics: None,
        }
    }

    /// Counts and times every operation into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<BucketMetrics>) -> Bucket {
        self.metrics = Some(metrics);
        self
    }

    /// `filesystem:/abs/dir`, `s3:bucket@http://host:port` or `memory`, for logs. Never holds
    /// credentials.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Writes `data` at `key`, replacing any previous object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.observe("put", async {
            let path = object_path(key)?;
            self.store
                .put(&path, PutPayload::from(data))
                .await
                .map_err(|e| StorageError::from_object_store("put", key, e))?;
            Ok(())
        })
        .await
    }

    /// Uploads the local file `local` to `key` and returns its size. Streams: files above
    /// [`MULTIPART_THRESHOLD`] go up in [`PART_SIZE`] parts.
    pub async fn upload_file(&self, key: &str, local: &Path) -> Result<u64> {
        self.observe("upload_file", self.upload_file_inner(key, local))
            .await
    }

    async fn upload_file_inner(&self, key: &str, local: &Path) -> Result<u64> {
        let path = object_path(key)?;
        let len = tokio::fs::metadata(local)
            .await
            .map_err(|e| StorageError::io(local, e))?
            .len();
        if len <= MULTIPART_THRESHOLD {
            let data = tokio::fs::read(local)
                .await
                .map_err(|e| StorageError::io(local, e))?;
            let n = data.len() as u64;
            self.store
                .put(&path, PutPayload::from(data))
                .await
                .map_err(|e| StorageError::from_object_store("upload_file", key, e))?;
            return Ok(n);
        }

        let file = std::fs::File::open(local).map_err(|e| StorageError::io(local, e))?;
        let mut upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| StorageError::from_object_store("upload_file", key, e))?;
        let result = upload_parts(upload.as_mut(), file, key, local).await;
        let result = match result {
            Ok(n) => upload
                .complete()
                .await
                .map(|_| n)
                .map_err(|e| StorageError::from_object_store("upload_file", key, e)),
            Err(e) => Err(e),
        };
        if result.is_err()
            && let Err(abort) = upload.abort().await
        {
            tracing::warn!(key, error = %abort, "could not abort a failed multipart upload");
        }
        result
    }

    /// Reads the whole object at `key`. Use [`Bucket::download_file`] for large objects.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.observe("get", async {
            let path = object_path(key)?;
            let map = |e| StorageError::from_object_store("get", key, e);
            self.store
                .get(&path)
                .await
                .map_err(map)?
                .bytes()
                .await
                .map_err(map)
        })
        .await
    }

    /// Reads bytes `range` of the object at `key`. The range must lie within the object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.observe("get_range", async {
            let path = object_path(key)?;
            if range.start > range.end {
                return Err(StorageError::Other {
                    op: "get_range",
                    key: key.to_owned(),
                    message: format!("invalid range {range:?}"),
                });
            }
            if range.is_empty() {
                // Still tell a missing object from an empty read.
                self.store
                    .head(&path)
                    .await
                    .map_err(|e| StorageError::from_object_store("get_range", key, e))?;
                return Ok(Bytes::new());
            }
            self.store
                .get_range(&path, range)
                .await
                .map_err(|e| StorageError::from_object_store("get_range", key, e))
        })
        .await
    }

    /// Downloads the object at `key` to the local file `local` (parent directories are
    /// created) and returns its size. The data goes to a temporary file beside `local`, is
    /// fsynced and renamed into place, so `local` is either absent or complete.
    pub async fn download_file(&self, key: &str, local: &Path) -> Result<u64> {
        self.observe("download_file", self.download_file_inner(key, local))
            .await
    }

    async fn download_file_inner(&self, key: &str, local: &Path) -> Result<u64> {
        let path = object_path(key)?;
        let map = |e| StorageError::from_object_store("download_file", key, e);
        let meta = self.store.head(&path).await.map_err(map)?;
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| StorageError::io(&parent, e))?;
        let tmp = temp_path(&parent, local);
        let result = async {
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| StorageError::io(&tmp, e))?;
            let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
            let mut written = 0u64;
            while written < meta.size {
                let end = (written + DOWNLOAD_CHUNK).min(meta.size);
                let options = GetOptions {
                    range: Some(GetRange::Bounded(written..end)),
                    // Fail rather than stitch two versions together.
                    if_match: meta.e_tag.clone(),
                    ..Default::default()
                };
                let mut stream = self
                    .store
                    .get_opts(&path, options)
                    .await
                    .map_err(map)?
                    .into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(map)?;
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| StorageError::io(&tmp, e))?;
                    written += chunk.len() as u64;
                }
                if written != end {
                    return Err(StorageError::Other {
                        op: "download_file",
                        key: key.to_owned(),
                        message: format!("short read: {written} bytes of {end} expected"),
                    });
                }
            }
            out.flush().await.map_err(|e| StorageError::io(&tmp, e))?;
            let file = out.into_inner();
            file.sync_all()
                .await
                .map_err(|e| StorageError::io(&tmp, e))?;
            drop(file);
            tokio::fs::rename(&tmp, local)
                .await
                .map_err(|e| StorageError::io(local, e))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.observe("exists", async {
            let path = object_path(key)?;
            match self.store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(StorageError::from_object_store("exists", key, e)),
            }
        })
        .await
    }

    /// Size in bytes of the object at `key`.
    pub async fn size(&self, key: &str) -> Result<u64> {
        self.observe("size", async {
            let path = object_path(key)?;
            let meta = self
                .store
                .head(&path)
                .await
                .map_err(|e| StorageError::from_object_store("size", key, e))?;
            Ok(meta.size)
        })
        .await
    }

    /// Every object under `prefix` (recursively; `""` is the whole bucket), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.observe("list", async {
            let path = prefix_path(prefix)?;
            let mut objects: Vec<ObjectInfo> = self
                .store
                .list(path.as_ref())
                .map_ok(|meta| ObjectInfo {
                    key: meta.location.to_string(),
                    size: meta.size,
                    last_modified: meta.last_modified.into(),
                })
                .try_collect()
                .await
                .map_err(|e| StorageError::from_object_store("list", prefix, e))?;
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(objects)
        })
        .await
    }

    /// The names (last segment only) of the "directories" right under `prefix`, sorted.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        self.observe("list_dirs", async {
            let path = prefix_path(prefix)?;
            let listing = self
                .store
                .list_with_delimiter(path.as_ref())
                .await
                .map_err(|e| StorageError::from_object_store("list_dirs", prefix, e))?;
            let mut dirs: Vec<String> = listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect();
            dirs.sort();
            Ok(dirs)
        })
        .await
    }

    /// Deletes the object at `key`; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.observe("delete", async {
            let path = object_path(key)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(StorageError::from_object_store("delete", key, e)),
            }
        })
        .await
    }

    /// Deletes every object under `prefix` and returns how many there were. The empty prefix
    /// (the whole bucket) is refused.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        self.observe("delete_prefix", async {
            let path = prefix_path(prefix)?;
            if path.is_none() {
                return Err(StorageError::InvalidKey {
                    key: prefix.to_owned(),
                    message: "refusing to delete the whole bucket".into(),
                });
            }
            let map = |e| StorageError::from_object_store("delete_prefix", prefix, e);
            let locations: Vec<ObjectPath> = self
                .store
                .list(path.as_ref())
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(map)?;
            let count = locations.len();
            let input = futures::stream::iter(locations.into_iter().map(Ok)).boxed();
            let mut deleted = self.store.delete_stream(input);
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(map(e)),
                }
            }
            Ok(count)
        })
        .await
    }

    /// Uploads every regular file under `local_dir` (recursively) to `prefix/<relative path>`.
    ///
    /// `last`, a relative path such as `meta.json`, is uploaded only after every other file
    /// succeeded, so a reader that waits for it never sees a partial directory. It must exist.
    pub async fn upload_dir(
        &self,
        local_dir: &Path,
        prefix: &str,
        last: Option<&str>,
    ) -> Result<UploadStats> {
        let prefix = prefix.trim_matches('/');
        let dir = local_dir.to_path_buf();
        let mut files = tokio::task::spawn_blocking(move || walk_files(&dir))
            .await
            .map_err(|e| StorageError::Other {
                op: "upload_dir",
                key: prefix.to_owned(),
                message: format!("directory walk panicked: {e}"),
            })??;
        let last_file = match last {
            None => None,
            Some(last) => {
                let wanted = last.trim_start_matches("./");
                let Some(at) = files.iter().position(|(rel, _)| rel == wanted) else {
                    return Err(StorageError::io(
                        local_dir.join(last),
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the file to upload last is missing",
                        ),
                    ));
                };
                Some(files.remove(at))
            }
        };

        let started = Instant::now();
        let mut stats = UploadStats::default();
        // The futures own what they use (a clone of the handle, the key, the path): futures
        // borrowing from this frame make callers' futures fail higher-ranked `Send` checks
        // when they are spawned.
        let jobs: Vec<(Bucket, String, PathBuf)> = files
            .iter()
            .map(|(rel, abs)| (self.clone(), join_key(prefix, rel), abs.clone()))
            .collect();
        let mut uploads = futures::stream::iter(jobs.into_iter().map(upload_job))
            .buffer_unordered(DIR_CONCURRENCY);
        while let Some(result) = uploads.next().await {
            stats.bytes += result?;
            stats.files += 1;
        }
        drop(uploads);
        if let Some((rel, abs)) = &last_file {
            stats.bytes += self.upload_file(&join_key(prefix, rel), abs).await?;
            stats.files += 1;
        }
        tracing::debug!(
            bucket = %self.description,
            prefix,
            files = stats.files,
            bytes = stats.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "uploaded directory"
        );
        Ok(stats)
    }

    /// Downloads every object under `prefix` into `local_dir` (creating subdirectories) and
    /// returns the bytes written. Nothing under `prefix` is [`StorageError::NotFound`].
    pub async fn download_dir(&self, prefix: &str, local_dir: &Path) -> Result<u64> {
        let prefix = prefix.trim_matches('/');
        let objects = self.list(prefix).await?;
        if objects.is_empty() {
            return Err(StorageError::NotFound {
                key: prefix.to_owned(),
            });
        }
        let mut targets = Vec::with_capacity(objects.len());
        for object in &objects {
            let rel = if prefix.is_empty() {
                object.key.as_str()
            } else {
                object
                    .key
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_prefix('/'))
                    .unwrap_or(object.key.as_str())
            };
            targets.push((object.key.as_str(), local_path(local_dir, rel)?));
        }
        let mut total = 0u64;
        let jobs: Vec<(Bucket, String, PathBuf)> = targets
            .iter()
            .map(|(key, local)| (self.clone(), key.to_string(), local.clone()))
            .collect();
        let mut downloads = futures::stream::iter(jobs.into_iter().map(download_job))
            .buffer_unordered(DIR_CONCURRENCY);
        while let Some(result) = downloads.next().await {
            total += result?;
        }
        Ok(total)
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some(metrics) = &self.metrics else {
            return fut.await;
        };
        let started = Instant::now();
        let result = fut.await;
        metrics.observe(op, started.elapsed(), result.as_ref().err());
        result
    }
}

/// Reads `file` in [`PART_SIZE`] chunks off the reactor and uploads them, a few at a time.
async fn upload_parts(
    upload: &mut dyn object_store::MultipartUpload,
    file: std::fs::File,
    key: &str,
    local: &Path,
) -> Result<u64> {
    let mut parts = tokio::task::JoinSet::new();
    let mut file = Some(file);
    let mut total = 0u64;
    loop {
        while parts.len() >= PART_CONCURRENCY {
            join_part(&mut parts, key).await?;
        }
        let f = file.take().expect("file is put back after each read");
        let local_owned = local.to_path_buf();
        let (f, chunk) = tokio::task::spawn_blocking(move || read_chunk(f, PART_SIZE))
            .await
            .map_err(|e| StorageError::Other {
                op: "upload_file",
                key: key.to_owned(),
                message: format!("file read panicked: {e}"),
            })?
            .map_err(|e| StorageError::io(local_owned, e))?;
        file = Some(f);
        if chunk.is_empty() {
            break;
        }
        total += chunk.len() as u64;
        parts.spawn(upload.put_part(PutPayload::from(chunk)));
    }
    while !parts.is_empty() {
        join_part(&mut parts, key).await?;
    }
    Ok(total)
}

async fn join_part(
    parts: &mut tokio::task::JoinSet<object_store::Result<()>>,
    key: &str,
) -> Result<()> {
    match parts.join_next().await {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(StorageError::from_object_store("upload_file", key, e)),
        Some(Err(e)) => Err(StorageError::Other {
            op: "upload_file",
            key: key.to_owned(),
            message: format!("part upload task failed: {e}"),
        }),
    }
}

/// Fills up to `size` bytes from `file` (less only at the end of the file).
fn read_chunk(mut file: std::fs::File, size: usize) -> std::io::Result<(std::fs::File, Bytes)> {
    use std::io::Read;
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok((file, Bytes::from(buf)))
}

/// Every regular file under `dir` as (`a/b/c` relative key, absolute path), sorted.
fn walk_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = pending.pop() {
        let entries = std::fs::read_dir(&abs).map_err(|e| StorageError::io(&abs, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&abs, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| StorageError::io(&path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(StorageError::InvalidKey {
                    key: path.display().to_string(),
                    message: "file name is not UTF-8".into(),
                });
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if kind.is_dir() {
                pending.push((path, child));
            } else if kind.is_file() {
                out.push((child, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `local_dir` joined with the `/`-separated relative key `rel`, refusing anything that could
/// escape `local_dir`.
fn local_path(local_dir: &Path, rel: &str) -> Result<PathBuf> {
    let mut path = local_dir.to_path_buf();
    for part in rel.split('/') {
        let ok = !part.is_empty()
            && matches!(
                Path::new(part).components().collect::<Vec<_>>().as_slice(),
                [Component::Normal(_)]
            );
        if !ok {
            return Err(StorageError::InvalidKey {
                key: rel.to_owned(),
                message: "cannot be a local relative path".into(),
            });
        }
        path.push(part);
    }
    Ok(path)
}

fn join_key(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_owned()
    } else {
        format!("{prefix}/{rel}")
    }
}

fn temp_path(parent: &Path, local: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(".{name}.download-{}-{n}", std::process::id()))
}

/// The object path of `key`, which must name an object.
fn object_path(key: &str) -> Result<ObjectPath> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(StorageError::InvalidKey {
            key: key.to_owned(),
            message: "an object key is non-empty and neither starts nor ends with '/'".into(),
        });
    }
    ObjectPath::parse(key).map_err(|e| StorageError::InvalidKey {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// The object path of a prefix; `None` for the bucket root.
fn prefix_path(prefix: &str) -> Result<Option<ObjectPath>> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    ObjectPath::parse(trimmed)
        .map(Some)
        .map_err(|e| StorageError::InvalidKey {
            key: prefix.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests;

// Named async fns over owned inputs rather than closures borrowing the caller's frame: the
// latter make every future that awaits `upload_dir`/`download_dir` fail the higher-ranked
// `Send` check when it is spawned.
async fn upload_job((bucket, key, path): (Bucket, String, PathBuf)) -> Result<u64> {
    bucket.upload_file(&key, &path).await
}

async fn download_job((bucket, key, path): (Bucket, String, PathBuf)) -> Result<u64> {
    bucket.download_file(&key, &path).await
}
