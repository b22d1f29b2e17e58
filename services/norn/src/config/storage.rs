//! `common.storage` and `blocks_storage` (all but `tsdb`): which bucket blocks live in, and how
//! the query path reads them from it.
//!
//! The bucket is `common.storage` with `blocks_storage`'s backend, `filesystem` and `s3`
//! overriding it, as in Mimir's per-component storage keys.

use std::path::PathBuf;
use std::time::Duration;

use norn_model::duration::serde_duration;
pub use norn_storage::{FilesystemConfig, S3Config, StorageConfig};
use serde::{Deserialize, Serialize};

use super::flags::{Deferred, set, set_duration};

/// `common` in YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommonConfig {
    pub storage: StorageConfig,
}

/// `blocks_storage` in YAML.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlocksStorageConfig {
    /// Overrides `common.storage.backend` for blocks (Mimir's per-component storage keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    pub tsdb: norn_ingester::config::TsdbConfig,
    pub bucket_store: BucketStoreConfig,
}

impl BlocksStorageConfig {
    /// The bucket blocks live in: `common` with this block's overrides.
    pub fn bucket(&self, common: &StorageConfig) -> StorageConfig {
        let mut c = common.clone();
        if let Some(b) = &self.backend {
            c.backend = b.clone();
        }
        if let Some(f) = &self.filesystem {
            c.filesystem = f.clone();
        }
        if let Some(s3) = &self.s3 {
            c.s3 = s3.clone();
        }
        c
    }
}

/// `blocks_storage.bucket_store`: how the query path (the store-gateway) reads blocks from
/// the bucket. The store-gateway fields mirror `norn_store_gateway::Config` one for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketStoreConfig {
    /// Local copies of bucket blocks, and the store-gateway's index-headers.
    pub sync_dir: PathBuf,
    /// How often the bucket's block list is re-read.
    #[serde(with = "serde_duration")]
    pub sync_interval: Duration,
    /// The store-gateway's postings and series cache (`--blocks-storage.bucket-store.index-cache.*`).
    #[serde(deserialize_with = "super::cache::de_index_cache")]
    pub index_cache: norn_cache::CacheConfig,
    /// The store-gateway's chunks cache (`--blocks-storage.bucket-store.chunks-cache.*`).
    #[serde(deserialize_with = "super::cache::de_chunks_cache")]
    pub chunks_cache: norn_cache::CacheConfig,
    /// Queries a store-gateway runs against blocks at once.
    pub max_concurrent: usize,
    /// How long a store-gateway query waits for a slot or fetch budget.
    #[serde(with = "serde_duration")]
    pub max_concurrent_queue_timeout: Duration,
    /// Bytes a store-gateway's queries may hold fetched from the bucket at once.
    pub max_inflight_fetch_bytes: u64,
    /// Index-headers a store-gateway builds at once.
    pub block_sync_concurrency: usize,
    /// Blocks whose min time is within this of now are left to the ingesters.
    #[serde(with = "serde_duration")]
    pub ignore_blocks_within: Duration,
    /// Blocks marked for deletion longer ago than this are no longer served.
    #[serde(with = "serde_duration")]
    pub ignore_deletion_mark_delay: Duration,
    pub index_header: IndexHeaderConfig,
}

impl Default for BucketStoreConfig {
    fn default() -> Self {
        Self {
            sync_dir: PathBuf::from("./tsdb-sync"),
            sync_interval: Duration::from_secs(15 * 60),
            index_cache: super::cache::default_index_cache(),
            chunks_cache: super::cache::default_chunks_cache(),
            max_concurrent: 200,
            max_concurrent_queue_timeout: Duration::from_secs(5),
            max_inflight_fetch_bytes: 1 << 30,
            block_sync_concurrency: 4,
            ignore_blocks_within: Duration::from_secs(10 * 3600),
            ignore_deletion_mark_delay: Duration::from_secs(3600),
            index_header: IndexHeaderConfig::default(),
        }
    }
}

/// `blocks_storage.bucket_store.index_header`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexHeaderConfig {
    pub lazy_loading_enabled: bool,
    #[serde(with = "serde_duration")]
    pub lazy_loading_idle_timeout: Duration,
}

impl Default for IndexHeaderConfig {
    fn default() -> Self {
        Self {
            lazy_loading_enabled: true,
            lazy_loading_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// The flags that choose the blocks bucket: `common.storage.*` and `blocks-storage.backend`.
/// `norn tools` takes the same block.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Storage (the blocks bucket)")]
pub struct BucketFlags {
    /// Object storage backend: filesystem or s3.
    #[arg(long = "common.storage.backend", env = "NORN_COMMON_STORAGE_BACKEND")]
    pub storage_backend: Option<String>,
    /// Bucket directory for the filesystem backend.
    #[arg(
        long = "common.storage.filesystem.dir",
        env = "NORN_COMMON_STORAGE_FILESYSTEM_DIR"
    )]
    pub storage_filesystem_dir: Option<PathBuf>,
    /// S3 endpoint (host:port).
    #[arg(
        long = "common.storage.s3.endpoint",
        env = "NORN_COMMON_STORAGE_S3_ENDPOINT"
    )]
    pub s3_endpoint: Option<String>,
    /// S3 bucket name.
    #[arg(
        long = "common.storage.s3.bucket-name",
        env = "NORN_COMMON_STORAGE_S3_BUCKET_NAME"
    )]
    pub s3_bucket_name: Option<String>,
    /// S3 access key id.
    #[arg(
        long = "common.storage.s3.access-key-id",
        env = "NORN_COMMON_STORAGE_S3_ACCESS_KEY_ID"
    )]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(
        long = "common.storage.s3.secret-access-key",
        env = "NORN_COMMON_STORAGE_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
    /// S3 region.
    #[arg(
        long = "common.storage.s3.region",
        env = "NORN_COMMON_STORAGE_S3_REGION"
    )]
    pub s3_region: Option<String>,
    /// Use plain HTTP to talk to S3.
    #[arg(
        long = "common.storage.s3.insecure",
        env = "NORN_COMMON_STORAGE_S3_INSECURE",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub s3_insecure: Option<bool>,
    /// Blocks backend, overriding common.storage.backend.
    #[arg(long = "blocks-storage.backend", env = "NORN_BLOCKS_STORAGE_BACKEND")]
    pub blocks_storage_backend: Option<String>,
}

impl BucketFlags {
    pub fn apply(&self, common: &mut CommonConfig, blocks: &mut BlocksStorageConfig) {
        let s = &mut common.storage;
        set(&mut s.backend, &self.storage_backend);
        set(&mut s.filesystem.dir, &self.storage_filesystem_dir);
        set(&mut s.s3.endpoint, &self.s3_endpoint);
        set(&mut s.s3.bucket_name, &self.s3_bucket_name);
        set(&mut s.s3.access_key_id, &self.s3_access_key_id);
        set(&mut s.s3.secret_access_key, &self.s3_secret_access_key);
        set(&mut s.s3.region, &self.s3_region);
        set(&mut s.s3.insecure, &self.s3_insecure);
        if self.blocks_storage_backend.is_some() {
            blocks.backend = self.blocks_storage_backend.clone();
        }
    }
}

/// The `blocks-storage.bucket-store.*` flags.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Bucket store (the query path's reader of bucket blocks)")]
pub struct BucketStoreFlags {
    /// Where the query path keeps local copies of bucket blocks.
    #[arg(
        long = "blocks-storage.bucket-store.sync-dir",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_SYNC_DIR"
    )]
    pub sync_dir: Option<PathBuf>,
    /// How often the query path re-reads the bucket's block list.
    #[arg(
        long = "blocks-storage.bucket-store.sync-interval",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_SYNC_INTERVAL"
    )]
    pub sync_interval: Option<Deferred>,
    /// Queries a store-gateway runs against blocks at once.
    #[arg(
        long = "blocks-storage.bucket-store.max-concurrent",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_MAX_CONCURRENT"
    )]
    pub bucket_store_max_concurrent: Option<usize>,
    /// How long a store-gateway query waits for a slot or fetch budget before it is refused.
    #[arg(
        long = "blocks-storage.bucket-store.max-concurrent-queue-timeout",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_MAX_CONCURRENT_QUEUE_TIMEOUT"
    )]
    pub bucket_store_max_concurrent_queue_timeout: Option<Deferred>,
    /// Bytes a store-gateway's queries may hold fetched from the bucket at once.
    #[arg(
        long = "blocks-storage.bucket-store.max-inflight-fetch-bytes",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_MAX_INFLIGHT_FETCH_BYTES"
    )]
    pub bucket_store_max_inflight_fetch_bytes: Option<u64>,
    /// Index-headers a store-gateway builds at once.
    #[arg(
        long = "blocks-storage.bucket-store.block-sync-concurrency",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_BLOCK_SYNC_CONCURRENCY"
    )]
    pub bucket_store_block_sync_concurrency: Option<usize>,
    /// Blocks whose max time is within this of now are not served by store-gateways.
    #[arg(
        long = "blocks-storage.bucket-store.ignore-blocks-within",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_IGNORE_BLOCKS_WITHIN"
    )]
    pub bucket_store_ignore_blocks_within: Option<Deferred>,
    /// Blocks marked for deletion longer ago than this are no longer served.
    #[arg(
        long = "blocks-storage.bucket-store.ignore-deletion-marks-delay",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_IGNORE_DELETION_MARKS_DELAY"
    )]
    pub bucket_store_ignore_deletion_mark_delay: Option<Deferred>,
    /// Map index-headers on first use instead of at load.
    #[arg(
        long = "blocks-storage.bucket-store.index-header.lazy-loading-enabled",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_INDEX_HEADER_LAZY_LOADING_ENABLED",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub bucket_store_lazy_loading_enabled: Option<bool>,
    /// Unmap an index-header unused for this long.
    #[arg(
        long = "blocks-storage.bucket-store.index-header.lazy-loading-idle-timeout",
        env = "NORN_BLOCKS_STORAGE_BUCKET_STORE_INDEX_HEADER_LAZY_LOADING_IDLE_TIMEOUT"
    )]
    pub bucket_store_lazy_loading_idle_timeout: Option<Deferred>,
}

impl BucketStoreFlags {
    pub fn apply(&self, c: &mut BucketStoreConfig) -> anyhow::Result<()> {
        set(&mut c.sync_dir, &self.sync_dir);
        set(&mut c.max_concurrent, &self.bucket_store_max_concurrent);
        set(
            &mut c.max_inflight_fetch_bytes,
            &self.bucket_store_max_inflight_fetch_bytes,
        );
        set(
            &mut c.block_sync_concurrency,
            &self.bucket_store_block_sync_concurrency,
        );
        set(
            &mut c.index_header.lazy_loading_enabled,
            &self.bucket_store_lazy_loading_enabled,
        );
        set_duration(
            &mut c.max_concurrent_queue_timeout,
            &self.bucket_store_max_concurrent_queue_timeout,
        )?;
        set_duration(
            &mut c.ignore_blocks_within,
            &self.bucket_store_ignore_blocks_within,
        )?;
        set_duration(
            &mut c.ignore_deletion_mark_delay,
            &self.bucket_store_ignore_deletion_mark_delay,
        )?;
        set_duration(
            &mut c.index_header.lazy_loading_idle_timeout,
            &self.bucket_store_lazy_loading_idle_timeout,
        )?;
        set_duration(&mut c.sync_interval, &self.sync_interval)
    }
}
