//! Where the frontend's pipeline ends: the [`Downstream`] that answers one HTTP request of
//! the query API.
//!
//! Today there are two: [`HttpDownstream`] forwards to a querier's HTTP address
//! (`--query-frontend.downstream-url`, as Mimir's downstream mode does), and
//! [`RouterDownstream`] calls the querier's routes in this process (`--target=all`), with no
//! socket in between. The per-tenant queue with queriers pulling work over gRPC will be a
//! third implementation of the same trait; nothing before it in the pipeline changes.
//!
//! A downstream answers with a status and a body, as the querier does. A transport failure
//! (connection refused, reset, timeout) is an error here and a 5xx to the pipeline, which
//! retries it like any other 5xx.

use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use tower::ServiceExt;

/// Largest answer read from a downstream (a range query's JSON for many series is large, but
/// not unbounded).
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// One request of the query API, as the frontend sends it on.
#[derive(Debug, Clone)]
pub struct DownstreamRequest {
    pub method: Method,
    /// `/prometheus/api/v1/...` with the query string, if any.
    pub path_and_query: String,
    /// The headers passed through: the tenant's (`X-Scope-OrgID`, `Authorization`) and
    /// `Content-Type` for a form body.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A downstream's answer.
#[derive(Debug, Clone)]
pub struct DownstreamResponse {
    pub status: StatusCode,
    pub content_type: Option<axum::http::HeaderValue>,
    pub body: Bytes,
}

/// Why a downstream gave no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    #[error("querier unreachable: {0}")]
    Transport(String),
    #[error("reading the querier's answer: {0}")]
    Body(String),
}

/// Answers one query API request: a querier, however it is reached.
#[async_trait]
pub trait Downstream: Send + Sync {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError>;
}

/// A querier's HTTP API at a base URL (`http://querier:8080`).
pub struct HttpDownstream {
    base: String,
    client: reqwest::Client,
}

impl HttpDownstream {
    /// `timeout` bounds one request (connect to last byte); it should exceed the querier's
    /// own query timeout so the querier's answer, not ours, reports a slow query.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, DownstreamError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| DownstreamError::Transport(e.to_string()))?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            client,
        })
    }
}

#[async_trait]
impl Downstream for HttpDownstream {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        let url = format!("{}{}", self.base, req.path_and_query);
        let resp = self
            .client
            .request(req.method, url)
            .headers(req.headers)
            .body(req.body)
            .send()
            .await
            .map_err(|e| DownstreamError::Transport(e.to_string()))?;
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        let body = resp
            .bytes()
            .await
            .map_err(|e| DownstreamError::Body(e.to_string()))?;
        Ok(DownstreamResponse {
            status,
            content_type,
            body,
        })
    }
}

/// The querier's routes in this process.
pub struct RouterDownstream(pub Router);

#[async_trait]
impl Downstream for RouterDownstream {
    async fn call(&self, req: DownstreamRequest) -> Result<DownstreamResponse, DownstreamError> {
        let uri: Uri = req
            .path_and_query
            .parse()
            .map_err(|e| DownstreamError::Transport(format!("bad path: {e}")))?;
        let mut r = axum::http::Request::builder()
            .method(req.method)
            .uri(uri)
            .body(Body::from(req.body))
            .map_err(|e| DownstreamError::Transport(e.to_string()))?;
        *r.headers_mut() = req.headers;
        let resp = match self.0.clone().oneshot(r).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        let body = axum::body::to_bytes(resp.into_body(), MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| DownstreamError::Body(e.to_string()))?;
        Ok(DownstreamResponse {
            status,
            content_type,
            body,
        })
    }
}
