//! Error kinds: the one classification every error in Norn maps to.
//!
//! The kind decides, here and nowhere else, the HTTP status and Prometheus `errorType`
//! ([`ErrorKind::http_status`], [`ErrorKind::prometheus_error_type`]), the gRPC code a server
//! answers with ([`ErrorKind::grpc_code`]), what a client makes of a gRPC code it receives
//! ([`ErrorKind::from_grpc_code`]) and whether a remote-write sender may retry
//! ([`ErrorKind::retryable`], [`retryable_http_status`]). So a library error never picks a
//! status code itself, and the HTTP and gRPC sides cannot drift apart.
//!
//! The codes are plain numbers (gRPC's canonical codes, [`grpc`]) so this crate stays free of
//! tonic and http; `norn-server` and `norn-proto` convert them.

/// What kind of failure an error is, as far as a client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request can never succeed as sent (HTTP 400, `bad_data`). Never retry.
    BadData,
    /// The caller did not say who it is (HTTP 401, `unauthorized`).
    Unauthorized,
    /// The request body is larger than allowed (HTTP 413).
    PayloadTooLarge,
    /// The request's Content-Type or Content-Encoding is not one this endpoint accepts (HTTP
    /// 415). Never retry as sent; a remote-write 2.0 sender may retry with another version.
    UnsupportedMediaType,
    /// A per-tenant rate limit was hit (HTTP 429, `too_many_requests`). Retry later.
    TooManyRequests,
    /// The query could be parsed but not executed within limits (HTTP 422, `execution`).
    Execution,
    /// Resource not found (HTTP 404, `not_found`).
    NotFound,
    /// The operation took too long (HTTP 503, `timeout`).
    Timeout,
    /// The client went away (HTTP 499, `canceled`).
    Canceled,
    /// A dependency is down or the process is not ready (HTTP 503, `unavailable`). Retry.
    Unavailable,
    /// A bug or an I/O failure on our side (HTTP 500, `internal`). Retry may help.
    Internal,
}

impl ErrorKind {
    /// The HTTP status code for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadData => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Execution => 422,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Canceled => 499,
            ErrorKind::Internal => 500,
            ErrorKind::Timeout | ErrorKind::Unavailable => 503,
        }
    }

    /// The Prometheus HTTP API `errorType` string for this kind.
    pub fn prometheus_error_type(self) -> &'static str {
        match self {
            ErrorKind::BadData | ErrorKind::PayloadTooLarge | ErrorKind::UnsupportedMediaType => {
                "bad_data"
            }
            // Prometheus has no type for this (it has no tenants); a client must be able to
            // tell "who are you?" from "your query is wrong".
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Execution => "execution",
            ErrorKind::TooManyRequests => "too_many_requests",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Canceled => "canceled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The gRPC status code a server answers with (one of [`grpc`]'s constants).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorKind::BadData | ErrorKind::UnsupportedMediaType => grpc::INVALID_ARGUMENT,
            ErrorKind::Unauthorized => grpc::UNAUTHENTICATED,
            ErrorKind::NotFound => grpc::NOT_FOUND,
            // gRPC's own answer to an oversized message.
            ErrorKind::PayloadTooLarge => grpc::RESOURCE_EXHAUSTED,
            // A query over a limit (too many samples): what ingesters have always sent, and
            // what queriers read back as "limit", not as a failure to retry elsewhere.
            ErrorKind::Execution => grpc::RESOURCE_EXHAUSTED,
            // RESOURCE_EXHAUSTED already means "a query limit, do not retry" here; a rate
            // limit is worth retrying, so it travels as UNAVAILABLE.
            ErrorKind::TooManyRequests | ErrorKind::Unavailable => grpc::UNAVAILABLE,
            ErrorKind::Timeout => grpc::DEADLINE_EXCEEDED,
            ErrorKind::Canceled => grpc::CANCELLED,
            ErrorKind::Internal => grpc::INTERNAL,
        }
    }

    /// What a client makes of a gRPC status code it received (`OK` and codes Norn never
    /// sends count as [`ErrorKind::Internal`]).
    ///
    /// `CANCELLED` and `ABORTED` are [`ErrorKind::Unavailable`]: the caller did not cancel
    /// (it would not be reading the answer), so the server gave up on the call, typically
    /// while stopping, and another replica may serve it.
    pub fn from_grpc_code(code: i32) -> ErrorKind {
        match code {
            grpc::INVALID_ARGUMENT | grpc::FAILED_PRECONDITION | grpc::OUT_OF_RANGE => {
                ErrorKind::BadData
            }
            grpc::UNAUTHENTICATED | grpc::PERMISSION_DENIED => ErrorKind::Unauthorized,
            grpc::NOT_FOUND => ErrorKind::NotFound,
            grpc::RESOURCE_EXHAUSTED => ErrorKind::Execution,
            grpc::DEADLINE_EXCEEDED => ErrorKind::Timeout,
            grpc::UNAVAILABLE | grpc::CANCELLED | grpc::ABORTED => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }

    /// Whether the same request may succeed if sent again later: 429 and 5xx, as the
    /// remote-write specification has it (4xx, 429 aside, means "never retry").
    pub fn retryable(self) -> bool {
        retryable_http_status(self.http_status())
    }

    /// Whether the failure is about the replica that answered, now (down, stopping, too slow,
    /// too busy), rather than about the request: a caller with replicas tries another one.
    /// `Internal` is not: retrying may help, but the replica is up and said no.
    pub fn try_another_replica(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::TooManyRequests
        )
    }
}

/// Whether a remote-write answer with this HTTP status may succeed on retry: 429 and 5xx.
pub fn retryable_http_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// gRPC's canonical status codes (`google.rpc.Code`), the ones Norn sends or reads.
pub mod grpc {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_are_429_or_5xx() {
        for kind in [
            ErrorKind::TooManyRequests,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            let s = kind.http_status();
            assert!(s == 429 || s >= 500, "{kind:?} -> {s}");
        }
        for kind in [
            ErrorKind::BadData,
            ErrorKind::PayloadTooLarge,
            ErrorKind::UnsupportedMediaType,
            ErrorKind::Unauthorized,
        ] {
            let s = kind.http_status();
            assert!((400..500).contains(&s) && s != 429, "{kind:?} -> {s}");
            assert!(!kind.retryable(), "{kind:?}");
        }
    }

    const ALL: [ErrorKind; 11] = [
        ErrorKind::BadData,
        ErrorKind::Unauthorized,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::TooManyRequests,
        ErrorKind::Execution,
        ErrorKind::NotFound,
        ErrorKind::Timeout,
        ErrorKind::Canceled,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    #[test]
    fn retry_follows_the_remote_write_rule() {
        for kind in ALL {
            let s = kind.http_status();
            assert_eq!(kind.retryable(), s == 429 || s >= 500, "{kind:?}");
        }
        assert!(retryable_http_status(503) && retryable_http_status(429));
        assert!(!retryable_http_status(400) && !retryable_http_status(413));
    }

    /// A kind sent over gRPC comes back, on the client, as a kind a caller treats the same:
    /// retry or not, and "try another replica" or not. `Canceled` is the exception by design
    /// (see `from_grpc_code`).
    #[test]
    fn grpc_round_trip_keeps_what_callers_decide_on() {
        for kind in ALL {
            if kind == ErrorKind::Canceled {
                continue;
            }
            let back = ErrorKind::from_grpc_code(kind.grpc_code());
            assert_eq!(back.retryable(), kind.retryable(), "{kind:?} -> {back:?}");
            assert_eq!(
                back.try_another_replica(),
                kind.try_another_replica(),
                "{kind:?} -> {back:?}"
            );
        }
    }

    /// A remote answer's kind becomes the store or push error callers already act on.
    #[test]
    fn kinds_become_storage_and_push_errors() {
        use crate::{PushError, StorageError};
        for kind in ALL {
            let s = StorageError::from_kind(kind, "m".into());
            let p = PushError::from_kind(kind, "m".into());
            match kind {
                ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::TooManyRequests => {
                    assert!(matches!(s, StorageError::Unavailable(_)), "{kind:?}");
                    assert!(matches!(p, PushError::Unavailable(_)), "{kind:?}");
                }
                ErrorKind::Execution => {
                    assert!(matches!(s, StorageError::Limit(_)));
                    assert!(matches!(p, PushError::Internal(_)));
                }
                // A store refusing the selection itself (a malformed `__query_shard__`).
                ErrorKind::BadData => {
                    assert!(matches!(s, StorageError::BadData(_)));
                }
                _ => {
                    assert!(matches!(s, StorageError::Internal(_)), "{kind:?}");
                    assert!(matches!(p, PushError::Internal(_)), "{kind:?}");
                }
            }
        }
        // And back: what a server sends for each is what the client reads.
        for e in [
            StorageError::Unavailable("m".into()),
            StorageError::Limit("m".into()),
            StorageError::Internal("m".into()),
            StorageError::BadData("m".into()),
        ] {
            let back = StorageError::from_kind(
                ErrorKind::from_grpc_code(e.kind().grpc_code()),
                "m".into(),
            );
            assert_eq!(back.kind(), e.kind(), "{e:?}");
        }
    }

    /// The codes ingesters have always answered with, and what clients made of them.
    #[test]
    fn grpc_codes_are_the_ones_on_the_wire() {
        assert_eq!(ErrorKind::BadData.grpc_code(), grpc::INVALID_ARGUMENT);
        assert_eq!(ErrorKind::Unauthorized.grpc_code(), grpc::UNAUTHENTICATED);
        assert_eq!(ErrorKind::Execution.grpc_code(), grpc::RESOURCE_EXHAUSTED);
        assert_eq!(ErrorKind::Unavailable.grpc_code(), grpc::UNAVAILABLE);
        assert_eq!(ErrorKind::Internal.grpc_code(), grpc::INTERNAL);
        for code in [
            grpc::UNAVAILABLE,
            grpc::DEADLINE_EXCEEDED,
            grpc::CANCELLED,
            grpc::ABORTED,
        ] {
            assert!(
                ErrorKind::from_grpc_code(code).try_another_replica(),
                "{code}"
            );
        }
        for code in [
            grpc::OK,
            grpc::UNKNOWN,
            grpc::INTERNAL,
            grpc::INVALID_ARGUMENT,
        ] {
            assert!(
                !ErrorKind::from_grpc_code(code).try_another_replica(),
                "{code}"
            );
        }
    }
}
