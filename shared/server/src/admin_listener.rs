//! Admin endpoints on a listener of their own (`--server.admin-listen-address`).
//!
//! A public deployment exposes the API port (push, queries, rules) to tenants, and the admin
//! endpoints — `/config`, `/services`, `/runtime_config`, the ring and memberlist pages (which
//! can forget instances) and `/ingester/*` (flush, shutdown) — only to operators. With an
//! admin listener, the router of each listener is the same router behind a filter
//! ([`only`]): the public listener answers 404 for admin routes, and the admin listener
//! serves the admin routes and the probes (`/ready`, `/metrics`) and 404 for everything else.
//! Which route is an admin route is the one table the token scopes use
//! ([`crate::auth::scope::access`]), so the two can never disagree.

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::scope::{Access, access};

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// Everything but the admin routes (the API listener when an admin listener exists).
    Public,
    /// The admin routes and the probes only.
    Admin,
}

/// `app` restricted to what `serves` allows; call after every route is added, so the
/// matched route is known.
pub fn only(app: Router, serves: Serves) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| filter(serves, req, next),
    ))
}

async fn filter(serves: Serves, req: Request, next: Next) -> Response {
    let template = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let a = access(template, req.method());
    let allowed = match serves {
        Serves::Public => a != Access::Admin,
        Serves::Admin => matches!(a, Access::Admin | Access::Open),
    };
    if allowed {
        return next.run(req).await;
    }
    let message = match serves {
        Serves::Public => {
            "404 page not found: admin endpoints are served on the admin listener (--server.admin-listen-address)\n"
        }
        Serves::Admin => {
            "404 page not found: the admin listener serves only admin endpoints, /ready and /metrics\n"
        }
    };
    (StatusCode::NOT_FOUND, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route("/ready", get(|| async { "ready" }))
            .route("/metrics", get(|| async { "metrics" }))
            .route("/config", get(|| async { "config" }))
            .route("/ingester/shutdown", post(|| async { "bye" }))
            .route("/ingester/ring", get(|| async { "ring" }))
            .route("/prometheus/api/v1/query", get(|| async { "query" }))
            .route("/api/v1/push", post(|| async { "pushed" }))
    }

    async fn status(app: &Router, method: &str, path: &str) -> u16 {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn each_listener_serves_its_own_routes_and_both_serve_the_probes() {
        let public = only(app(), Serves::Public);
        let admin = only(app(), Serves::Admin);
        for (method, path, on_public, on_admin) in [
            ("GET", "/ready", 200, 200),
            ("GET", "/metrics", 200, 200),
            ("GET", "/config", 404, 200),
            ("POST", "/ingester/shutdown", 404, 200),
            ("GET", "/ingester/ring", 404, 200),
            ("GET", "/prometheus/api/v1/query", 200, 404),
            ("POST", "/api/v1/push", 200, 404),
        ] {
            assert_eq!(
                status(&public, method, path).await,
                on_public,
                "public {path}"
            );
            assert_eq!(status(&admin, method, path).await, on_admin, "admin {path}");
        }
    }
}
