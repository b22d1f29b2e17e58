//! Errors of the TSDB crate.
//!
//! Bad data on disk is reported (or repaired, for a WAL tail) but never panics; every error
//! maps to an [`ErrorKind`] so the server picks the HTTP/gRPC status in one place.

use std::path::PathBuf;

use norn_model::ErrorKind;

/// Result alias for this crate.
pub type Result<T, E = TsdbError> = std::result::Result<T, E>;

/// A TSDB operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Data on disk is malformed in a way that cannot be repaired automatically.
    #[error("corrupt data in {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// An earlier WAL write failed and the WAL has not recovered yet (it tries once a
    /// second); writes are refused, because acknowledging samples that are not durable would
    /// break the no-loss promise.
    #[error("WAL refuses writes after a write failure (retrying every second)")]
    WalBroken,
    /// Another process holds the TSDB directory.
    #[error("TSDB directory {path} is in use by another process{holder}")]
    Locked { path: PathBuf, holder: String },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The head has been closed.
    #[error("head is closed")]
    Closed,
}

impl TsdbError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TsdbError::Io {
            path: path.into(),
            source,
        }
    }

    /// How a client should see this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TsdbError::InvalidOption(_) => ErrorKind::BadData,
            TsdbError::Closed | TsdbError::WalBroken => ErrorKind::Unavailable,
            TsdbError::Io { .. } | TsdbError::Corrupt { .. } | TsdbError::Locked { .. } => {
                ErrorKind::Internal
            }
        }
    }
}
