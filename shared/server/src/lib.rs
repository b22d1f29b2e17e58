//! HTTP plumbing shared by every Norn service.
//!
//! * [`HttpError`]: the one place where an [`ErrorKind`] becomes an HTTP status, as plain text
//!   (remote write) or as Prometheus' JSON envelope (query API).
//! * [`tenant`]: `X-Scope-OrgID` extraction with multitenancy on or off.
//! * [`admin_listener`]: admin endpoints on a listener of their own.
//! * [`auth`]: `--auth.type=tokens`: bearer/basic-auth tokens, scopes per route, verified tenant.
//! * [`Service`]: what each service hands the harness (routes, readiness, shutdown).
//! * [`http`]: the harness: `/ready`, `/metrics`, `/config`, `/services`, request metrics.
//! * [`guard`]: per-route tenant-before-body and body-size checks.
//! * [`serve`]: the server loop with Mimir's timeouts and connection limit.
//! * [`grpc`]: the gRPC server that carries every service's gRPC API on one port.
//! * [`tls`]: TLS and mTLS of the listeners and clients, reloaded when the files change.
//! * [`params`], [`prom_json`]: the Prometheus API's parameters and JSON envelope, shared by
//!   the querier and the query-frontend.
//! * [`periodic`]: the one helper for "do this every period until stopped".

pub mod admin_listener;
pub mod auth;
pub mod error;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod params;
pub mod periodic;
pub mod prom_json;
pub mod serve;
pub mod tenant;
pub mod tls;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use error::HttpError;
pub use guard::RequestGuard;
pub use metrics::Metrics;
pub use norn_model::ErrorKind;
pub use serve::ServerOptions;
pub use tenant::{Federation, TenantResolver};

/// One service in the process. The binary builds each service from its crate's
/// `build(config, deps)`, then the harness mounts its HTTP routes and gRPC services, asks it
/// whether it is ready, and stops it in reverse start order:
///
/// 1. [`Service::stopping`] when the signal arrives, while HTTP still serves (an ingester goes
///    LEAVING in the ring here, so distributors stop choosing it);
/// 2. HTTP drains, the gRPC server stops;
/// 3. [`Service::shutdown`]: stop taking work and make everything durable.
#[async_trait]
pub trait Service: Send + Sync {
    /// Name shown by `/services` (Mimir's names: `distributor`, `ingester`, …).
    fn name(&self) -> &'static str;
    /// HTTP routes the service serves, mounted at the root.
    fn routes(&self) -> axum::Router {
        axum::Router::new()
    }
    /// Adds the service's gRPC services to the process's gRPC server (cluster mode only: in
    /// one process the services call each other directly).
    fn grpc_services(&self, _routes: &mut tonic::service::RoutesBuilder) {}
    /// `Ok` once the service can do its job; `Err(reason)` otherwise.
    fn ready(&self) -> Result<(), String>;
    /// The process is about to stop: announce it (e.g. leave the ring's write path) while
    /// requests are still served.
    async fn stopping(&self) {}
    /// Stops taking work and makes everything durable (e.g. flushes and syncs the WAL).
    /// When `abandon` is cancelled (the graceful-shutdown timeout passed), work that can be
    /// redone at the next start (a flush to the bucket) is given up; durability is not.
    async fn shutdown(&self, abandon: CancellationToken);
}
