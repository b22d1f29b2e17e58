//! Per-route request guards: who is asking and how large a body they may send, both decided
//! from the headers before one byte of the body is read.
//!
//! Without this a client with no tenant could make the process buffer a 300 MB body only to
//! be told 401, and any route would buffer whatever it was sent. A [`RequestGuard`]:
//!
//! * resolves the tenant first when the request carries a body (a route that takes bodies
//!   from anonymous clients would read them before anyone knew who sent them); requests
//!   without a body go on, and the handler resolves the tenant as before;
//! * refuses a `Content-Length` over the route's limit with 413 at once;
//! * wraps the body so a chunked or lying body is cut at the limit while it streams (the
//!   handler's body extractor answers 413).
//!
//! A refused request's body is discarded only when it is small ([`DRAIN_MAX_BYTES`], 1 MiB),
//! so the sender can read the answer; a larger one is never read.
//!
//! The harness limits every other route to [`DEFAULT_MAX_BODY_BYTES`].

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use norn_model::ErrorKind;

use crate::{HttpError, TenantResolver};

/// Body limit of routes that set none (operational endpoints, forms).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// A refused request's body of at most this many bytes is read and discarded (never
/// buffered) before the answer, so a client still sending it reads the 401/413 instead of a
/// broken pipe — which a remote-write sender would retry forever, where a 4xx makes it drop
/// the batch. (Go's HTTP server, and so Mimir, discards 256 KiB; remote-write batches are
/// usually larger than that.) Larger bodies are not read: the connection is closed after the
/// answer.
pub const DRAIN_MAX_BYTES: u64 = 1 << 20;

/// Longest spent discarding a refused request's body.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Tenant and body-size checks for a set of routes. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct RequestGuard {
    tenants: Option<TenantResolver>,
    max_body_bytes: usize,
    json_errors: bool,
}

impl RequestGuard {
    /// Bodies of at most `max_body_bytes`; no tenant check.
    pub fn new(max_body_bytes: usize) -> Self {
        Self {
            tenants: None,
            max_body_bytes,
            json_errors: false,
        }
    }

    /// A request with a body must name its tenant before the body is read.
    pub fn tenant_before_body(mut self, tenants: TenantResolver) -> Self {
        self.tenants = Some(tenants);
        self
    }

    /// Errors as Prometheus' JSON envelope (query API) instead of plain text (remote write).
    pub fn json_errors(mut self) -> Self {
        self.json_errors = true;
        self
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// `router` with this guard in front of each of its routes.
    pub fn apply<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        // Inner layer first: the guard bounds the body itself, so axum's own default limit
        // must not cut in (a push may be 100 MiB); the guard runs before it.
        router
            .route_layer(DefaultBodyLimit::disable())
            .route_layer(axum::middleware::from_fn_with_state(self, guard))
    }

    fn error(&self, e: HttpError) -> Response {
        if self.json_errors {
            e.into_json().into_response()
        } else {
            e.into_response()
        }
    }
}

/// Whether a request carries a body: a non-zero `Content-Length` or any transfer coding.
fn has_body(req: &Request) -> bool {
    let h = req.headers();
    h.contains_key(TRANSFER_ENCODING)
        || h.get(CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().map_or(true, |s| s.trim() != "0"))
}

/// Reads and discards at most [`DRAIN_MAX_BYTES`] of a refused request's body, for at most
/// [`DRAIN_TIMEOUT`]; a body declared larger is left alone.
async fn drain(req: Request, declared: Option<u64>) {
    if declared.is_some_and(|n| n > DRAIN_MAX_BYTES) {
        return;
    }
    let mut body = Limited::new(req.into_body(), DRAIN_MAX_BYTES as usize);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// Discards a refused request's body as [`drain`] does (small bodies only), so the client
/// reads the answer; used by the auth layer, which refuses before any guard runs.
pub(crate) async fn discard_refused_body(req: Request) {
    if !has_body(&req) {
        return;
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    drain(req, declared).await;
}

async fn guard(State(g): State<RequestGuard>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if has_body(&req)
        && let Some(t) = g.tenants
        && let Err(e) = t.resolve_read(req.headers())
    {
        drain(req, declared).await;
        return g.error(e);
    }
    if let Some(len) = declared
        && len > g.max_body_bytes as u64
    {
        drain(req, declared).await;
        return g.error(HttpError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the request has been rejected because its message size of {len} bytes is larger than the allowed limit of {} bytes",
                g.max_body_bytes
            ),
        ));
    }
    let limit = g.max_body_bytes;
    next.run(req.map(|b| Body::new(Limited::new(b, limit))))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

    fn app(g: RequestGuard) -> Router {
        g.apply(Router::new().route(
            "/p",
            post(|body: axum::body::Bytes| async move { format!("{}", body.len()) }),
        ))
    }

    fn guard() -> RequestGuard {
        RequestGuard::new(10).tenant_before_body(TenantResolver {
            multitenancy_enabled: true,
            federation: Default::default(),
        })
    }

    async fn call(app: Router, req: Request) -> (StatusCode, String) {
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).to_string())
    }

    #[tokio::test]
    async fn tenant_is_checked_before_the_body_is_read() {
        // A body that fails when read: the 401 does not depend on it (the small-body drain
        // after the decision ends at the error).
        let body = Body::from_stream(futures::stream::once(async {
            Err::<axum::body::Bytes, _>(std::io::Error::other("body was read"))
        }));
        let req = Request::post("/p")
            .header("transfer-encoding", "chunked")
            .body(body)
            .unwrap();
        let (s, text) = call(app(guard()), req).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{text}");
        assert!(text.contains("no org id"), "{text}");
    }

    #[tokio::test]
    async fn declared_and_streamed_sizes_are_limited() {
        let req = Request::post("/p")
            .header("x-scope-orgid", "t")
            .header("content-length", "11")
            .body(Body::from("x".repeat(11)))
            .unwrap();
        let (s, text) = call(app(guard()), req).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        assert!(text.contains("allowed limit of 10 bytes"), "{text}");
        // No Content-Length: cut while streaming.
        let chunks = futures::stream::iter(
            (0..5).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"xxx"))),
        );
        let req = Request::post("/p")
            .header("x-scope-orgid", "t")
            .body(Body::from_stream(chunks))
            .unwrap();
        assert_eq!(
            call(app(guard()), req).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let req = Request::post("/p")
            .header("x-scope-orgid", "t")
            .body(Body::from("x".repeat(10)))
            .unwrap();
        assert_eq!(
            call(app(guard()), req).await,
            (StatusCode::OK, "10".to_string())
        );
    }

    #[tokio::test]
    async fn json_errors_and_bodyless_requests() {
        let app = guard()
            .json_errors()
            .apply(Router::new().route("/p", post(|| async { "ok" }).get(|| async { "ok" })));
        let req = Request::post("/p")
            .header("content-length", "3")
            .body(Body::from("a=b"))
            .unwrap();
        let (s, text) = call(app.clone(), req).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errorType"], "unauthorized");
        // No body: the handler decides (here: no tenant needed).
        let req = Request::get("/p").body(Body::empty()).unwrap();
        assert_eq!(call(app, req).await.0, StatusCode::OK);
    }
}
