//! Norn's time-series database: XOR chunks, WAL, in-memory head with postings index, and
//! blocks in Prometheus' on-disk format.
//!
//! * [`chunkenc`]: Prometheus' XOR chunk encoding and its chunk-cutting rule (the
//!   `norn-chunkenc` crate, which chunk readers outside the TSDB use directly).
//! * [`wal`]: the write-ahead log (Prometheus' `wlog` format), group commit, repair on replay.
//! * [`head`]: the per-tenant in-memory TSDB: series, postings index, appends, selects
//!   (decoded, or as stored chunks), and cutting a completed range into a block.
//! * [`block`]: block writer and reader (meta.json, index v2, chunk segments, tombstones).
//! * [`block_queryable`]: a set of blocks as a PromQL `Queryable`.
//! * [`compact`]: N blocks merged into one, or split into shards, streaming series.

pub mod block;
pub mod block_queryable;
pub mod compact;
/// Prometheus' chunk encodings, from `norn-chunkenc` (kept at this path for callers).
pub use norn_chunkenc as chunkenc;
pub mod dir_lock;
pub mod error;
mod fault;
pub mod head;
pub mod metrics;
pub mod wal;

pub use block_queryable::BlocksQueryable;
pub use error::{Result, TsdbError};
pub use head::{
    AppendLimits, AppendOutcome, ChunkMeta, CutOutcome, Head, HeadMemory, HeadOptions,
    HeadQueryable, RejectReason, Rejection, ReplayStats, SeriesChunks, TruncateStats,
};
pub use metrics::TsdbMetrics;
pub use wal::{CheckpointStats, FsyncPolicy, ReplayResult, Wal, WalOptions};
