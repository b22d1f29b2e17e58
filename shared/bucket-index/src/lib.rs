//! The per-tenant bucket index and the block marks: how every reader of the bucket learns which
//! blocks exist without listing it.
//!
//! - [`index`]: `<tenant>/bucket-index.json.gz` in Mimir's format (blocks, deletion marks,
//!   `updated_at`), gzip-compressed JSON, read and written whole.
//! - [`marks`]: `deletion-mark.json` and `no-compact-mark.json`, written both inside the block
//!   directory (Thanos' place) and under `<tenant>/markers/` (Mimir's global markers, which
//!   one listing finds).
//! - [`updater`]: builds a tenant's index from the bucket, re-reading only what changed since the
//!   previous index. The compactor writes the result at every cleanup; a store-gateway or
//!   querier that finds no index yet builds one in memory the same way and does not write it.

pub mod error;
pub mod index;
pub mod marks;
pub mod updater;

pub use error::{BucketIndexError, Result};
pub use index::{INDEX_VERSION, Index, IndexBlock, IndexDeletionMark};
pub use marks::{DeletionMark, NoCompactMark, NoCompactReason};
pub use updater::{Discovered, PartialBlock, UpdateOutcome, discover, update_index};
