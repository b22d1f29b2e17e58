//! Which tenant a request belongs to.

use axum::http::HeaderMap;
use norn_model::{ErrorKind, ORG_ID_HEADER, TENANT_SEPARATOR, TenantError, TenantId};

use crate::HttpError;

/// Tenant federation (`--tenant-federation.*`): whether a read may name several tenants,
/// `X-Scope-OrgID: a|b`, and how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Federation {
    pub enabled: bool,
    /// At most this many tenants in one read (0: no limit but the header's size).
    pub max_tenants: usize,
    /// How many tenants of one read are read at once (0 is taken as 1).
    pub max_concurrent: usize,
}

/// Resolves the tenant of a request from `X-Scope-OrgID`, or makes everyone `anonymous`
/// when multitenancy is disabled (`--auth.multitenancy-enabled=false`).
///
/// When the header is absent, the username of HTTP basic auth names the tenant. Some senders
/// cannot set custom headers — Debian's Prometheus 2.42 silently drops `remote_write.headers`
/// (prometheus/prometheus#13030) but does send `basic_auth` — and hosted Prometheus services
/// use the same convention. The header always wins when present.
#[derive(Debug, Clone, Copy)]
pub struct TenantResolver {
    pub multitenancy_enabled: bool,
    /// Whether [`resolve_read`](Self::resolve_read) accepts several tenants.
    pub federation: Federation,
}

impl TenantResolver {
    /// The one tenant of a request (writes, rules, anything but a read of series): `a|b` is
    /// refused.
    pub fn resolve(&self, headers: &HeaderMap) -> Result<TenantId, HttpError> {
        let Some(raw) = self.raw(headers)? else {
            return Ok(TenantId::anonymous());
        };
        if raw.contains(TENANT_SEPARATOR) {
            return Err(HttpError::bad_data(
                "multiple tenant ids (tenant federation) are only accepted by queries, and only with --tenant-federation.enabled",
            ));
        }
        one_tenant(&raw)
    }

    /// The tenant of a read (queries, series, labels, metadata): with federation enabled,
    /// `a|b` names several, and the answer is their [federated id](TenantId::federated).
    pub fn resolve_read(&self, headers: &HeaderMap) -> Result<TenantId, HttpError> {
        let Some(raw) = self.raw(headers)? else {
            return Ok(TenantId::anonymous());
        };
        if !raw.contains(TENANT_SEPARATOR) {
            return one_tenant(&raw);
        }
        if !self.federation.enabled {
            return Err(HttpError::bad_data(
                "multiple tenant ids (tenant federation) are not accepted: --tenant-federation.enabled is false",
            ));
        }
        let named = raw.split(TENANT_SEPARATOR).count();
        let max = self.federation.max_tenants;
        if max > 0 && named > max {
            return Err(HttpError::bad_data(format!(
                "too many tenant ids in one query: max {max}, actual {named} (--tenant-federation.max-tenants)"
            )));
        }
        let ids = raw
            .split(TENANT_SEPARATOR)
            .map(|id| match id {
                "" => Err(HttpError::bad_data(
                    "an empty tenant id in a federated X-Scope-OrgID (a|b)",
                )),
                id => one_tenant(id),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TenantId::federated(ids).expect("at least one id: split yields one"))
    }

    /// The raw tenant text of a request: the header, else the basic-auth username; `None`
    /// when multitenancy is off (everyone is `anonymous`).
    fn raw(&self, headers: &HeaderMap) -> Result<Option<String>, HttpError> {
        if !self.multitenancy_enabled {
            return Ok(None);
        }
        match headers.get(ORG_ID_HEADER) {
            Some(raw) => raw
                .to_str()
                .map(|s| Some(s.to_string()))
                .map_err(|_| HttpError::bad_data("X-Scope-OrgID is not valid ASCII")),
            None => match basic_auth_user(headers) {
                Some(user) => Ok(Some(user)),
                None => Err(HttpError::new(
                    ErrorKind::Unauthorized,
                    "no org id: the X-Scope-OrgID header (or a basic-auth username) is required when multitenancy is enabled",
                )),
            },
        }
    }
}

fn one_tenant(raw: &str) -> Result<TenantId, HttpError> {
    TenantId::new(raw).map_err(|e| {
        let message = match e {
            TenantError::Missing => "no org id: the X-Scope-OrgID header is empty".to_string(),
            ref other => format!("invalid tenant ID: {other}"),
        };
        HttpError::new(e.kind(), message)
    })
}

/// The username of an `Authorization: Basic` header, if any.
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = decode_base64(rest.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    (!user.is_empty()).then(|| user.to_string())
}

/// Standard base64 (with or without padding); `None` on any invalid character.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
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
        let on = TenantResolver {
            multitenancy_enabled: true,
            federation: Federation::default(),
        };
        assert_eq!(
            on.resolve(&headers(Some("team-a"))).unwrap().as_str(),
            "team-a"
        );
        assert_eq!(
            on.resolve(&headers(None)).unwrap_err().kind,
            ErrorKind::Unauthorized
        );
        assert_eq!(
            on.resolve(&headers(Some("a/b"))).unwrap_err().kind,
            ErrorKind::BadData
        );
        // "team-b:secret" in base64
        let mut h = headers(None);
        h.insert(
            "authorization",
            "Basic dGVhbS1iOnNlY3JldA==".parse().unwrap(),
        );
        assert_eq!(on.resolve(&h).unwrap().as_str(), "team-b");
        h.insert(ORG_ID_HEADER, "team-a".parse().unwrap());
        assert_eq!(
            on.resolve(&h).unwrap().as_str(),
            "team-a",
            "the header wins"
        );
        let mut h = headers(None);
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(on.resolve(&h).unwrap_err().kind, ErrorKind::Unauthorized);
        let off = TenantResolver {
            multitenancy_enabled: false,
            federation: Federation::default(),
        };
        assert_eq!(
            off.resolve(&headers(Some("x"))).unwrap().as_str(),
            "anonymous"
        );
    }

    #[test]
    fn reads_name_several_tenants_only_with_federation() {
        let off = TenantResolver {
            multitenancy_enabled: true,
            federation: Federation::default(),
        };
        let err = off.resolve_read(&headers(Some("a|b"))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadData);
        assert!(
            err.message.contains("--tenant-federation.enabled"),
            "{}",
            err.message
        );
        let on = TenantResolver {
            multitenancy_enabled: true,
            federation: Federation {
                enabled: true,
                max_tenants: 3,
                max_concurrent: 2,
            },
        };
        let got = on.resolve_read(&headers(Some("b|a|b"))).unwrap();
        assert_eq!(got.as_str(), "a|b");
        assert_eq!(on.resolve_read(&headers(Some("a"))).unwrap().as_str(), "a");
        // Writes never federate.
        assert_eq!(
            on.resolve(&headers(Some("a|b"))).unwrap_err().kind,
            ErrorKind::BadData
        );
        // Every member is a valid tenant, and there are not too many.
        for bad in ["a|", "a||b", "a|b/c", "a|__x", "a|b|c|d"] {
            let err = on.resolve_read(&headers(Some(bad))).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadData, "{bad}: {err:?}");
        }
    }
}
