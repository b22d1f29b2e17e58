//! HTTP plumbing shared by every Norn service.
//!
//! * [`HttpError`]: the one place where an [`ErrorKind`] becomes an HTTP status, as plain text
//!   (remote write) or as Prometheus' JSON envelope (query API).
//! * [`tenant`]: `X-Scope-OrgID` extraction with multitenancy on or off.
//! * [`Service`]: what each service hands the harness (routes, readiness, shutdown).
//! * [`http`]: the harness: `/ready`, `/metrics`, `/config`, `/services`, request metrics.
//! * [`guard`]: per-route tenant-before-body and body-size checks.
//! * [`serve`]: the server loop with Mimir's timeouts and connection limit.

pub mod error;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod serve;
pub mod tenant;

use async_trait::async_trait;

pub use error::HttpError;
pub use guard::RequestGuard;
pub use metrics::Metrics;
pub use norn_model::ErrorKind;
pub use serve::ServerOptions;
pub use tenant::TenantResolver;

/// One service in the process: the harness mounts its routes, asks it whether it is ready, and
/// shuts it down in reverse start order.
#[async_trait]
pub trait Service: Send + Sync {
    /// Name shown by `/services` (Mimir's names: `distributor`, `ingester`, …).
    fn name(&self) -> &'static str;
    /// HTTP routes the service serves, mounted at the root.
    fn routes(&self) -> axum::Router {
        axum::Router::new()
    }
    /// `Ok` once the service can do its job; `Err(reason)` otherwise.
    fn ready(&self) -> Result<(), String>;
    /// Stops taking work and makes everything durable (e.g. syncs the WAL).
    async fn shutdown(&self);
}
