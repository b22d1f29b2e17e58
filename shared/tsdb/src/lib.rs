//! Norn's time-series database: XOR chunks, WAL, in-memory head with postings index, and
//! (later) blocks in Prometheus' on-disk format.
//!
//! * [`chunkenc`]: Prometheus' XOR chunk encoding and its chunk-cutting rule.
//! * [`wal`]: the write-ahead log (Prometheus' `wlog` format), group commit, repair on replay.
//! * [`head`]: the per-tenant in-memory TSDB: series, postings index, appends, selects.

pub mod block;
pub mod chunkenc;
pub mod error;
pub mod head;
pub mod metrics;
pub mod wal;

pub use error::{Result, TsdbError};
pub use head::{
    AppendLimits, AppendOutcome, ChunkMeta, Head, HeadMemory, HeadOptions, HeadQueryable,
    RejectReason, Rejection, ReplayStats, SeriesChunks,
};
pub use metrics::TsdbMetrics;
pub use wal::{CheckpointStats, FsyncPolicy, ReplayResult, Wal, WalOptions};
