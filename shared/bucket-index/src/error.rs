//! Errors of the bucket index and marks.

use norn_storage::StorageError;

/// What can go wrong reading or writing the index or a mark.
#[derive(Debug, thiserror::Error)]
pub enum BucketIndexError {
    /// The bucket failed (outage, permission, …); see [`StorageError::is_retryable`].
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An object exists but cannot be decoded: a corrupt index, mark or `meta.json`.
    #[error("{key}: corrupt: {message}")]
    Corrupt { key: String, message: String },
}

impl BucketIndexError {
    pub(crate) fn corrupt(key: &str, message: impl std::fmt::Display) -> Self {
        BucketIndexError::Corrupt {
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// Whether trying again later may succeed (an outage, not corrupt data).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BucketIndexError::Storage(e) if e.is_retryable())
    }
}

pub type Result<T, E = BucketIndexError> = std::result::Result<T, E>;
