//! Which tenant a request belongs to.

use axum::http::HeaderMap;
use norn_model::{ErrorKind, ORG_ID_HEADER, TenantError, TenantId};

use crate::HttpError;

/// Resolves the tenant of a request from `X-Scope-OrgID`, or makes everyone `anonymous`
/// when multitenancy is disabled (`--auth.multitenancy-enabled=false`).
#[derive(Debug, Clone, Copy)]
pub struct TenantResolver {
    pub multitenancy_enabled: bool,
}

impl TenantResolver {
    pub fn resolve(&self, headers: &HeaderMap) -> Result<TenantId, HttpError> {
        if !self.multitenancy_enabled {
            return Ok(TenantId::anonymous());
        }
        let Some(raw) = headers.get(ORG_ID_HEADER) else {
            return Err(HttpError::new(
                ErrorKind::Unauthorized,
                "no org id: the X-Scope-OrgID header is required when multitenancy is enabled",
            ));
        };
        let raw = raw.to_str().map_err(|_| HttpError::bad_data("X-Scope-OrgID is not valid ASCII"))?;
        if raw.contains('|') {
            return Err(HttpError::bad_data(
                "multiple tenant ids (tenant federation) are not supported",
            ));
        }
        TenantId::new(raw).map_err(|e| match e {
            TenantError::Missing => HttpError::new(
                ErrorKind::Unauthorized,
                "no org id: the X-Scope-OrgID header is empty",
            ),
            other => HttpError::bad_data(format!("invalid tenant ID: {other}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert(ORG_ID_HEADER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn resolves_or_rejects() {
        let on = TenantResolver { multitenancy_enabled: true };
        assert_eq!(on.resolve(&headers(Some("team-a"))).unwrap().as_str(), "team-a");
        assert_eq!(on.resolve(&headers(None)).unwrap_err().kind, ErrorKind::Unauthorized);
        assert_eq!(on.resolve(&headers(Some("a/b"))).unwrap_err().kind, ErrorKind::BadData);
        let off = TenantResolver { multitenancy_enabled: false };
        assert_eq!(off.resolve(&headers(Some("x"))).unwrap().as_str(), "anonymous");
    }
}
