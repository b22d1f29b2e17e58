//! Storage errors: what went wrong with which operation on which key, and whether retrying can
//! help.
//!
//! `object_store` errors are classified once, here: a missing object is [`StorageError::NotFound`];
//! transport failures (connect, timeout, dropped connection) and 5xx / 429 / 408 answers that
//! survived `object_store`'s own retries are [`StorageError::Unavailable`] (retry later);
//! everything else is [`StorageError::Other`]. No message ever contains the S3 secret: the
//! client signs requests in headers, and errors only carry methods, URLs and server bodies.

use std::path::PathBuf;

use norn_model::error::ErrorKind;

/// The `Result` of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Every failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist.
    #[error("object {key:?} not found in the bucket")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },

    /// The backend could not be reached or answered with a transient error, after retries.
    /// Retrying later can succeed.
    #[error("bucket {op} {key:?}: backend unavailable: {message}")]
    Unavailable {
        /// The operation (`put`, `get`, `list`, …).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the backend said.
        message: String,
    },

    /// The storage configuration cannot work.
    #[error("invalid storage config: {0}")]
    InvalidConfig(String),

    /// A key that cannot name an object (empty, `..`, `//`, …).
    #[error("invalid bucket key {key:?}: {message}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it is refused.
        message: String,
    },

    /// A local file could not be read or written.
    #[error("local file {path:?}: {source}")]
    Io {
        /// The local path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Any other failure of the backend (permission denied, bad response, …). Not retryable.
    #[error("bucket {op} {key:?}: {message}")]
    Other {
        /// The operation (`put`, `get`, `list`, …).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What went wrong.
        message: String,
    },
}

impl StorageError {
    /// Whether the same operation can succeed later (the backend was down or overloaded).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }

    /// Whether this is [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// The error kind, which decides HTTP status and gRPC code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::NotFound { .. } => ErrorKind::NotFound,
            StorageError::Unavailable { .. } => ErrorKind::Unavailable,
            StorageError::InvalidConfig(_) | StorageError::InvalidKey { .. } => ErrorKind::BadData,
            StorageError::Io { .. } | StorageError::Other { .. } => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    /// Classifies an `object_store` error of operation `op` on `key`.
    pub(crate) fn from_object_store(op: &'static str, key: &str, err: object_store::Error) -> Self {
        use object_store::Error as E;
        let key = key.to_owned();
        match err {
            E::NotFound { .. } => StorageError::NotFound { key },
            E::InvalidPath { source } => StorageError::InvalidKey {
                key,
                message: source.to_string(),
            },
            err => {
                let message = chain_message(&err);
                if is_transient(&err) {
                    StorageError::Unavailable { op, key, message }
                } else {
                    StorageError::Other { op, key, message }
                }
            }
        }
    }
}

/// The error and its sources, each cause added once (object_store often repeats its source in
/// its own message already).
fn chain_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// A transport failure anywhere in the chain, or an HTTP status that means "try again later".
///
/// `object_store`'s retry error is not public, so statuses are recognised by the text it
/// renders them with (`… status code: 503 Service Unavailable …`).
fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<object_store::client::HttpError>()
            .is_some()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::TimedOut
                    | K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
            ) {
                return true;
            }
        }
        if transient_status(&e.to_string()) {
            return true;
        }
        current = e.source();
    }
    false
}

fn transient_status(text: &str) -> bool {
    const MARKER: &str = "status code: ";
    let mut rest = text;
    while let Some(at) = rest.find(MARKER) {
        rest = &rest[at + MARKER.len()..];
        let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(code) = code.parse::<u16>()
            && (code >= 500 || code == 429 || code == 408)
        {
            return true;
        }
    }
    // S3 answers some overloads with 200 and an error body, which object_store retries and then
    // reports as an "error response".
    text.contains("SlowDown") || text.contains("InternalError")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_retryability() {
        let not_found = StorageError::NotFound { key: "a/b".into() };
        assert_eq!(not_found.kind(), ErrorKind::NotFound);
        assert!(!not_found.is_retryable());
        assert!(not_found.is_not_found());
        assert!(not_found.to_string().contains("a/b"));

        let down = StorageError::Unavailable {
            op: "put",
            key: "t/01/meta.json".into(),
            message: "connection refused".into(),
        };
        assert!(down.is_retryable());
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        let text = down.to_string();
        assert!(
            text.contains("put") && text.contains("t/01/meta.json"),
            "{text}"
        );

        let other = StorageError::Other {
            op: "get",
            key: "k".into(),
            message: "403".into(),
        };
        assert!(!other.is_retryable());
        assert_eq!(other.kind(), ErrorKind::Internal);
        assert_eq!(
            StorageError::InvalidConfig("x".into()).kind(),
            ErrorKind::BadData
        );
    }

    #[test]
    fn classifies_object_store_errors() {
        let nf = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(StorageError::from_object_store("get", "x", nf).is_not_found());

        let status = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://h/b/k in 3s - Server returned non-2xx status code: 503 Service Unavailable: ".into(),
        };
        let e = StorageError::from_object_store("put", "k", status);
        assert!(e.is_retryable(), "{e:?}");

        let io = object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        };
        assert!(StorageError::from_object_store("get", "k", io).is_retryable());

        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "Server returned non-2xx status code: 403 Forbidden: AccessDenied".into(),
        };
        let e = StorageError::from_object_store("get", "k", denied);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("403"), "{e}");
    }

    #[test]
    fn status_parsing() {
        assert!(transient_status("non-2xx status code: 500 Internal"));
        assert!(transient_status("status code: 429 Too Many Requests"));
        assert!(!transient_status("status code: 404 Not Found"));
        assert!(!transient_status("status code: 400 Bad Request"));
        assert!(!transient_status("nothing here"));
    }
}
