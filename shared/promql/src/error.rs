//! Errors a PromQL query can end with, and how each maps onto Norn's error kinds.

use norn_model::{ErrorKind, StorageError};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    /// The query text is not valid PromQL; carries the parser's message (with position).
    #[error("{0}")]
    Parse(String),
    /// The query is valid but cannot be evaluated (bad arguments, label collisions, ...).
    #[error("{0}")]
    Execution(String),
    /// The query ran longer than the engine's timeout.
    #[error("query timed out in query execution")]
    Timeout,
    /// The caller went away before the query finished.
    #[error("query was canceled in query execution")]
    Canceled,
    /// The query would hold more samples in memory than the engine allows.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The query would hold more bytes than its tenant's
    /// `max_estimated_memory_consumption_per_query` (see [`crate::memory`]).
    #[error(
        "the query exceeded the maximum allowed estimated amount of memory consumed by a single query (limit: {0} bytes) (err-mimir-max-estimated-memory-consumption-per-query)"
    )]
    MemoryLimit(u64),
    /// The query text is longer or nests deeper than the engine allows; refused before
    /// parsing.
    #[error("{0}")]
    TooComplex(String),
    /// The engine cannot take the query now (no thread for it); a retry can succeed.
    #[error("{0}")]
    Unavailable(String),
    /// Reading series from storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug in the engine (e.g. a panicked evaluation task), never the user's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PromqlError {
    /// The error kind that decides the HTTP status and Prometheus `errorType`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PromqlError::Parse(_) | PromqlError::TooComplex(_) => ErrorKind::BadData,
            PromqlError::Unavailable(_) => ErrorKind::Unavailable,
            PromqlError::Execution(_)
            | PromqlError::TooManySamples
            | PromqlError::MemoryLimit(_) => ErrorKind::Execution,
            PromqlError::Timeout => ErrorKind::Timeout,
            PromqlError::Canceled => ErrorKind::Canceled,
            PromqlError::Storage(e) => e.kind(),
            PromqlError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Result alias for the engine.
pub type Result<T, E = PromqlError> = std::result::Result<T, E>;

/// Shorthand for an execution error with a formatted message.
pub(crate) fn exec_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(PromqlError::Execution(msg.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_prometheus_error_types() {
        assert_eq!(PromqlError::Parse("x".into()).kind(), ErrorKind::BadData);
        assert_eq!(PromqlError::TooManySamples.kind(), ErrorKind::Execution);
        assert_eq!(PromqlError::Timeout.kind(), ErrorKind::Timeout);
        assert_eq!(
            PromqlError::TooManySamples.to_string(),
            "query processing would load too many samples into memory in query execution"
        );
        let s = PromqlError::Storage(StorageError::Unavailable("down".into()));
        assert_eq!(s.kind(), ErrorKind::Unavailable);
    }
}
