//! Norn's object storage layer: the "bucket" that holds every block older than the ingesters'
//! heads, the rule groups and the bucket index.
//!
//! The ingester's shipper uploads blocks with it, the store-gateway and the compactor read,
//! list and delete them. There is one implementation, [`Bucket`], over the `object_store` crate
//! (the project's only S3 client) with two production backends chosen by [`StorageConfig`]:
//! a local directory (`filesystem`, the laptop / all-in-one mode) and any S3-compatible service
//! (`s3`: AWS, MinIO, moto; path-style addressing). [`Bucket::in_memory`] serves unit tests of
//! other crates.
//!
//! - [`config`]: `common.storage.*` in Mimir's YAML layout, validation, secret masking.
//! - [`bucket`]: the async API (put/get/ranges/streaming file transfers/list/delete, whole
//!   directories with a "commit file" uploaded last).
//! - [`layout`]: where blocks, markers, the bucket index and rules live in the bucket.
//! - [`error`]: [`StorageError`], which tells retryable outages from permanent failures.
//! - [`metrics`]: optional per-operation counters and latency histograms.
//! - `testing` (cargo feature `testing`): a `moto_server` harness for S3 tests.

pub mod bucket;
pub mod config;
pub mod error;
pub mod layout;
pub mod metrics;
#[cfg(feature = "testing")]
pub mod testing;

pub use bucket::{Bucket, ObjectInfo, S3Tuning, UploadStats};
pub use config::{FilesystemConfig, S3Config, StorageConfig};
pub use error::{Result, StorageError};
pub use metrics::BucketMetrics;
