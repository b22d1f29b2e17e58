//! The store-gateway's errors and their [`ErrorKind`]s (which pick the gRPC status).

use norn_model::ErrorKind;
use norn_storage::StorageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A block's data (index, chunks, or the local header) is damaged: the query fails
    /// rather than being served partially.
    #[error("corrupt block data in {what}: {msg}")]
    Corrupt { what: String, msg: String },
    #[error("reading {key} from the bucket: {source}")]
    Bucket {
        key: String,
        #[source]
        source: StorageError,
    },
    #[error("local disk: {0}")]
    Io(String),
    /// The process-wide budget of fetched bytes or concurrent queries is spent.
    #[error("store-gateway overloaded: {0}")]
    Overloaded(String),
    /// One query needs more than the whole process budget: a limit, not worth retrying.
    #[error("query too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("block {0} is not loaded")]
    NotLoaded(String),
}

impl Error {
    pub fn bucket(key: &str, source: StorageError) -> Self {
        Error::Bucket {
            key: key.to_string(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Corrupt { .. } | Error::Io(_) => ErrorKind::Internal,
            // A block object that vanished was deleted under us: the querier retries
            // elsewhere or after its next sync.
            Error::Bucket { source, .. } if source.kind() == ErrorKind::NotFound => {
                ErrorKind::Unavailable
            }
            Error::Bucket { source, .. } => source.kind(),
            Error::Overloaded(_) | Error::NotLoaded(_) => ErrorKind::Unavailable,
            Error::TooLarge(_) => ErrorKind::Execution,
            Error::BadRequest(_) => ErrorKind::BadData,
        }
    }
}
