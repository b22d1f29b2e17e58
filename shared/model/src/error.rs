//! Error kinds: the one classification every error in Norn maps to.
//!
//! The kind decides the HTTP status, the Prometheus `errorType` and the gRPC code in one
//! place (`norn-server`), so a library error never picks a status code itself.

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
        }
    }
}
