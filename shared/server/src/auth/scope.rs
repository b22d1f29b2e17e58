//! Which scope each HTTP route needs under `--auth.type=tokens`.
//!
//! Classification works on axum's matched route template (`/prometheus/api/v1/label/{name}/values`),
//! never on the raw path, so percent-encoding, doubled slashes or `..` cannot make a request
//! look like a route it is not. A request that matched no route reaches only the 404 fallback,
//! which serves no data: any valid token gets its 404 (without credentials it is 401, so the
//! set of routes is not probed anonymously). A route that exists but is not in this table is
//! denied, so a new endpoint stays closed until someone decides which scope it needs.

use std::fmt;

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Remote write (`/api/v1/push`, OTLP).
    Write,
    /// The Prometheus query API, and read-only views of rules and alerts.
    Read,
    /// The ruler's configuration API (changes need `rules`; listing also accepts `read`).
    Rules,
    /// Operational endpoints: `/config`, rings, `/memberlist`, `/services`, ingester flush and
    /// shutdown. Not tied to a tenant.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Rules => "rules",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request needs before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed (`/ready`, `/metrics`).
    Open,
    /// A token with any of these scopes, for the request's tenant.
    Tenant(&'static [Scope]),
    /// A token with the `admin` scope; no tenant involved.
    Admin,
    /// A route this table does not know: not served under token auth.
    Deny,
    /// No route matched: any valid token, then the 404 fallback.
    NotFound,
}

const WRITE: &[Scope] = &[Scope::Write];
const READ: &[Scope] = &[Scope::Read];
const READ_OR_RULES: &[Scope] = &[Scope::Read, Scope::Rules];
const RULES: &[Scope] = &[Scope::Rules];

/// The access `template` (a matched route, `None` when nothing matched) needs for `method`.
pub fn access(template: Option<&str>, method: &Method) -> Access {
    let Some(t) = template else {
        return Access::NotFound;
    };
    let reads = method == Method::GET || method == Method::HEAD;
    match t {
        "/ready" | "/metrics" => return Access::Open,
        "/api/v1/push" | "/otlp/v1/metrics" => return Access::Tenant(WRITE),
        "/config" | "/services" | "/memberlist" | "/runtime_config" | "/ring" => {
            return Access::Admin;
        }
        _ => {}
    }
    if t.ends_with("/ring") || t.ends_with("/memberlist") || t.starts_with("/ingester/") {
        return Access::Admin;
    }
    let api = t.strip_prefix("/prometheus").unwrap_or(t);
    if api == "/config/v1/rules" || api.starts_with("/config/v1/rules/") {
        return Access::Tenant(if reads { READ_OR_RULES } else { RULES });
    }
    match api {
        "/api/v1/rules" | "/api/v1/alerts" => Access::Tenant(READ_OR_RULES),
        "/api/v1/query"
        | "/api/v1/query_range"
        | "/api/v1/query_exemplars"
        | "/api/v1/series"
        | "/api/v1/labels"
        | "/api/v1/label/{name}/values"
        | "/api/v1/metadata"
        | "/api/v1/status/buildinfo"
        | "/api/v1/format_query"
        | "/api/v1/read" => Access::Tenant(READ),
        _ => Access::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_scopes() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(access(Some("/ready"), &get), Access::Open);
        assert_eq!(access(Some("/metrics"), &get), Access::Open);
        assert_eq!(access(Some("/api/v1/push"), &post), Access::Tenant(WRITE));
        for p in [
            "/prometheus/api/v1/query",
            "/api/v1/query_range",
            "/prometheus/api/v1/series",
            "/prometheus/api/v1/labels",
            "/prometheus/api/v1/label/{name}/values",
            "/prometheus/api/v1/metadata",
        ] {
            assert_eq!(access(Some(p), &get), Access::Tenant(READ), "{p}");
            assert_eq!(access(Some(p), &post), Access::Tenant(READ), "{p}");
        }
        for p in [
            "/prometheus/config/v1/rules",
            "/prometheus/config/v1/rules/{namespace}",
            "/prometheus/config/v1/rules/{namespace}/{group}",
        ] {
            assert_eq!(access(Some(p), &get), Access::Tenant(READ_OR_RULES), "{p}");
            assert_eq!(access(Some(p), &post), Access::Tenant(RULES), "{p}");
            assert_eq!(access(Some(p), &Method::DELETE), Access::Tenant(RULES));
        }
        assert_eq!(
            access(Some("/prometheus/api/v1/rules"), &get),
            Access::Tenant(READ_OR_RULES)
        );
        assert_eq!(
            access(Some("/api/v1/alerts"), &get),
            Access::Tenant(READ_OR_RULES)
        );
        for p in [
            "/config",
            "/services",
            "/ring",
            "/memberlist",
            "/store-gateway/ring",
            "/compactor/ring",
            "/ruler/ring",
            "/ruler/memberlist",
            "/ingester/flush",
            "/ingester/shutdown",
        ] {
            assert_eq!(access(Some(p), &post), Access::Admin, "{p}");
        }
        assert_eq!(access(None, &get), Access::NotFound);
        assert_eq!(access(Some("/debug/pprof"), &get), Access::Deny);
        assert_eq!(access(Some("/prometheus/api/v1/new"), &get), Access::Deny);
        assert_eq!(
            access(Some("/prometheus/config/v1/rulesx"), &get),
            Access::Deny
        );
    }
}
