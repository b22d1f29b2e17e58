//! gRPC status codes from and to [`ErrorKind`], and the message size limit, shared by every
//! Norn gRPC server and client.
//!
//! The mapping itself is [`ErrorKind::grpc_code`] / [`ErrorKind::from_grpc_code`] in
//! `norn-model`; this module only converts to tonic's types. A client reads one more thing
//! from a status than its code: tonic reports some connection failures as `UNKNOWN` with the
//! transport error as the source, and those mean "the server cannot be reached", like
//! `UNAVAILABLE`.

use norn_model::ErrorKind;
use tonic::{Code, Status};

/// Largest message sent or accepted, either way, by servers and clients alike. Mimir allows
/// 100 MiB too: a distributor's push to one ingester and a query's batch of series can both
/// be large.
pub const MAX_MESSAGE_SIZE: usize = 100 << 20;

/// The largest message a gRPC server accepts and sends (Mimir's
/// `-server.grpc-max-recv-msg-size-bytes` and `-server.grpc-max-send-msg-size-bytes`), both
/// [`MAX_MESSAGE_SIZE`] unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    pub max_recv: usize,
    pub max_send: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_recv: MAX_MESSAGE_SIZE,
            max_send: MAX_MESSAGE_SIZE,
        }
    }
}

/// The status a server answers an error of `kind` with.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    Status::new(Code::from(kind.grpc_code()), message)
}

/// What kind of failure a status a client received is.
pub fn error_kind(s: &Status) -> ErrorKind {
    if s.code() == Code::Unknown && is_transport_failure(s) {
        return ErrorKind::Unavailable;
    }
    ErrorKind::from_grpc_code(s.code() as i32)
}

/// Whether the status carries a transport or I/O error as its source.
fn is_transport_failure(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_become_the_codes_ingesters_always_sent() {
        assert_eq!(
            status(ErrorKind::BadData, "x").code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status(ErrorKind::Unauthorized, "x").code(),
            Code::Unauthenticated
        );
        assert_eq!(
            status(ErrorKind::Unavailable, "x").code(),
            Code::Unavailable
        );
        assert_eq!(
            status(ErrorKind::Execution, "x").code(),
            Code::ResourceExhausted
        );
        assert_eq!(status(ErrorKind::Internal, "x").code(), Code::Internal);
        assert_eq!(status(ErrorKind::Internal, "boom").message(), "boom");
    }

    #[test]
    fn clients_read_unreachable_servers_as_unavailable() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Aborted,
        ] {
            assert!(error_kind(&Status::new(code, "x")).try_another_replica());
        }
        assert_eq!(error_kind(&Status::unknown("x")), ErrorKind::Internal);
        let refused = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(refused.code(), Code::Unknown);
        assert_eq!(error_kind(&refused), ErrorKind::Unavailable);
        assert_eq!(
            error_kind(&Status::resource_exhausted("x")),
            ErrorKind::Execution
        );
    }
}
