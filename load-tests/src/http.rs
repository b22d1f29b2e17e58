//! HTTP plumbing shared by the tools: the client, remote-write headers and outcome classes.
//!
//! Everything goes through one `reqwest` client (HTTP/1, no TLS: the targets are local) so the
//! connection pool is shared by all workers of a process.

use std::time::Duration;

use thiserror::Error;

/// `User-Agent` sent by every tool.
pub const USER_AGENT: &str = concat!("norn-loadtests/", env!("CARGO_PKG_VERSION"));

/// Errors building the client.
#[derive(Debug, Error)]
pub enum HttpError {
    /// reqwest could not build a client (bad TLS/proxy setup; should not happen without TLS).
    #[error("cannot build HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Builds the shared client with a per-request timeout and `pool` idle connections per host.
pub fn client(timeout: Duration, pool: usize) -> Result<reqwest::Client, HttpError> {
    Ok(reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        // Load targets are on loopback: never route through a proxy from the environment.
        .no_proxy()
        .build()?)
}

/// Short outcome class of a transport error, used as the key of error tallies.
pub fn classify_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "network"
    }
}

/// Whether a remote-write response status may succeed on retry (spec: 5xx and, optionally,
/// 429): Norn's one rule, [`norn_model::retryable_http_status`].
pub fn retryable(status: reqwest::StatusCode) -> bool {
    norn_model::retryable_http_status(status.as_u16())
}
