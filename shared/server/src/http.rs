//! The HTTP harness: every service's routes plus the operational endpoints Mimir users expect
//! (`/ready`, `/metrics`, `/config`, `/services`), request-latency metrics for every route,
//! and graceful shutdown.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Metrics, RequestGuard, ServerOptions, Service};

/// What the operational endpoints need to know about the process.
#[derive(Clone)]
pub struct Harness {
    pub services: Vec<Arc<dyn Service>>,
    pub metrics: Arc<Metrics>,
    /// The effective configuration as YAML, secrets already masked.
    pub config_yaml: Arc<str>,
    /// `--auth.type=tokens`: every route but `/ready` and `/metrics` needs a token.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
}

/// The full router: operational endpoints, every service's routes, request metrics.
pub fn router(h: Harness) -> Router {
    let metrics = Arc::clone(&h.metrics);
    let mut app = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_handler))
        .route("/config", get(config))
        .route("/services", get(services))
        .with_state(h.clone());
    for s in &h.services {
        app = app.merge(s.routes());
    }
    app = app.fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") });
    if let Some(auth) = &h.auth {
        // Inside the request metrics, so refused requests are measured too.
        app = app.layer(axum::middleware::from_fn_with_state(
            Arc::clone(auth),
            crate::auth::middleware,
        ));
    }
    app
        // Routes with a `RequestGuard` (push, the query API) set their own limit; this one
        // bounds every other route's body extractors.
        .layer(DefaultBodyLimit::max(crate::guard::DEFAULT_MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(metrics, instrument))
}

async fn instrument(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| route_label(p.as_str()))
        .unwrap_or_else(|| "other".to_string());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.request_duration
        .with_label_values(&[method.as_str(), route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// Mimir-style route label: the path with `/` turned into `_` (`api_v1_push`).
fn route_label(path: &str) -> String {
    path.trim_matches('/').replace(['/', '{', '}', ':'], "_")
}

async fn ready(State(h): State<Harness>) -> Response {
    for s in &h.services {
        if let Err(reason) = s.ready() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} not ready: {reason}\n", s.name()),
            )
                .into_response();
        }
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics_handler(State(h): State<Harness>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        h.metrics.render(),
    )
        .into_response()
}

async fn config(State(h): State<Harness>) -> Response {
    (
        [("content-type", "text/plain; charset=utf-8")],
        h.config_yaml.to_string(),
    )
        .into_response()
}

async fn services(State(h): State<Harness>) -> Response {
    let mut out = String::new();
    for s in &h.services {
        let state = if s.ready().is_ok() {
            "Running"
        } else {
            "Starting"
        };
        out.push_str(&format!("{} {}\n", s.name(), state));
    }
    ([("content-type", "text/plain; charset=utf-8")], out).into_response()
}

/// Serves `app` on `listener` with `opts`' timeouts and connection limit until `shutdown`
/// is cancelled, then lets in-flight requests finish (see [`crate::serve`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    crate::serve::serve(listener, app, shutdown, opts, metrics).await
}

/// A service whose routes all sit behind a [`RequestGuard`] (e.g. the query API behind the
/// query body limit and the tenant-before-body check), everything else unchanged.
pub struct Guarded {
    inner: Arc<dyn Service>,
    guard: RequestGuard,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Service>, guard: RequestGuard) -> Self {
        Self { inner, guard }
    }
}

#[async_trait::async_trait]
impl Service for Guarded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn routes(&self) -> Router {
        self.guard.apply(self.inner.routes())
    }

    fn ready(&self) -> Result<(), String> {
        self.inner.ready()
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        self.inner.grpc_services(routes)
    }

    async fn stopping(&self) {
        self.inner.stopping().await
    }

    async fn shutdown(&self, abandon: CancellationToken) {
        self.inner.shutdown(abandon).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use axum::body::Body;
    use tower::ServiceExt;

    struct Fake(bool);

    #[async_trait]
    impl Service for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn ready(&self) -> Result<(), String> {
            if self.0 {
                Ok(())
            } else {
                Err("replaying WAL".into())
            }
        }
        async fn shutdown(&self, _: CancellationToken) {}
    }

    async fn get_status(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).to_string())
    }

    fn app(ready: bool) -> Router {
        router(Harness {
            services: vec![Arc::new(Fake(ready))],
            metrics: Metrics::new(),
            config_yaml: Arc::from("a: 1\n"),
            auth: None,
        })
    }

    #[tokio::test]
    async fn ready_reflects_services() {
        assert_eq!(get_status(app(true), "/ready").await.0, StatusCode::OK);
        let (s, body) = get_status(app(false), "/ready").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("replaying WAL"));
    }

    #[tokio::test]
    async fn metrics_config_services_and_404() {
        let a = app(true);
        let _ = get_status(a.clone(), "/config").await;
        let (_, m) = get_status(a.clone(), "/metrics").await;
        assert!(m.contains("norn_request_duration_seconds"), "{m}");
        assert!(m.contains("process_resident_memory_bytes"));
        assert_eq!(get_status(a.clone(), "/config").await.1, "a: 1\n");
        assert_eq!(get_status(a.clone(), "/services").await.1, "fake Running\n");
        assert_eq!(get_status(a, "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
