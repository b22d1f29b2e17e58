//! HTTP errors: an [`ErrorKind`] plus a message, rendered as text or as Prometheus' JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use norn_model::ErrorKind;
use serde_json::json;

/// An error on its way to an HTTP client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    pub kind: ErrorKind,
    pub message: String,
    /// Render as Prometheus' `{"status":"error",...}` envelope instead of plain text.
    pub json: bool,
}

impl HttpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            json: false,
        }
    }

    pub fn bad_data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadData, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The same error, rendered as the Prometheus API JSON envelope.
    pub fn into_json(mut self) -> Self {
        self.json = true;
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if self.json {
            let body = json!({
                "status": "error",
                "errorType": self.kind.prometheus_error_type(),
                "error": self.message,
            });
            (status, axum::Json(body)).into_response()
        } else {
            (
                status,
                [("content-type", "text/plain; charset=utf-8")],
                format!("{}\n", self.message),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_statuses() {
        assert_eq!(HttpError::bad_data("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            HttpError::new(ErrorKind::TooManyRequests, "x").status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            HttpError::new(ErrorKind::Canceled, "x").status().as_u16(),
            499
        );
    }
}
