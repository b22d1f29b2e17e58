//! Persistent TSDB blocks in Prometheus' on-disk format (spec `tsdb-format.md` §1–8).
//!
//! A block is a directory named by a ULID holding `meta.json`, `index` (format v2),
//! `chunks/000001…` and `tombstones`. Norn writes blocks that Prometheus, promtool, Thanos and
//! Mimir read byte for byte, and reads blocks any of them wrote, so the store-gateway and the
//! compactor can serve and merge blocks from either side.
//!
//! * [`writer`]: [`BlockWriter`] / [`write_block`] stream sorted series into a new block,
//!   written into `<ULID>.tmp-for-creation` and renamed into place once durable.
//! * [`reader`]: [`Block::open`] validates a block and answers selects, label queries and raw
//!   chunk reads for compaction.
//! * [`meta`], [`ulid`]: `meta.json` (with the Thanos section) and block ids.
//! * `index`, `chunks`, `tombstones`: the binary formats, shared by writer and reader. The
//!   index's section parsers and [`postings`] (matchers to series refs) work on bytes alone,
//!   so the store-gateway runs them on ranged reads of the bucket's files.

pub mod chunks;
pub mod index;
pub mod io;
pub mod meta;
pub mod postings;
pub mod reader;
pub mod series_spill;
pub mod tombstones;
pub mod ulid;
pub mod writer;

pub use meta::{BlockMeta, BlockStats, Compaction, ThanosDownsample, ThanosFile, ThanosMeta};
pub use reader::Block;
pub use ulid::Ulid;
pub use writer::{BlockOptions, BlockWriter, chunks_from_samples, write_block};

/// Name of the metadata file inside a block directory.
pub const META_FILENAME: &str = "meta.json";
/// Name of the index file inside a block directory.
pub const INDEX_FILENAME: &str = "index";
/// Name of the chunk-segment directory inside a block directory.
pub const CHUNKS_DIRNAME: &str = "chunks";
/// Name of the tombstones file inside a block directory.
pub const TOMBSTONES_FILENAME: &str = "tombstones";
/// Suffix of the directory a block is built in before the atomic rename (as Prometheus).
pub const TMP_SUFFIX: &str = ".tmp-for-creation";
