//! Which tenant a request belongs to.

use axum::http::HeaderMap;
use norn_model::{ErrorKind, ORG_ID_HEADER, TenantError, TenantId};

use crate::HttpError;

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
}

impl TenantResolver {
    pub fn resolve(&self, headers: &HeaderMap) -> Result<TenantId, HttpError> {
        if !self.multitenancy_enabled {
            return Ok(TenantId::anonymous());
        }
        let from_basic_auth;
        let raw = match headers.get(ORG_ID_HEADER) {
            Some(raw) => raw
                .to_str()
                .map_err(|_| HttpError::bad_data("X-Scope-OrgID is not valid ASCII"))?,
            None => match basic_auth_user(headers) {
                Some(user) => {
                    from_basic_auth = user;
                    from_basic_auth.as_str()
                }
                None => {
                    return Err(HttpError::new(
                        ErrorKind::Unauthorized,
                        "no org id: the X-Scope-OrgID header (or a basic-auth username) is required when multitenancy is enabled",
                    ));
                }
            },
        };
        if raw.contains('|') {
            return Err(HttpError::bad_data(
                "multiple tenant ids (tenant federation) are not supported",
            ));
        }
        TenantId::new(raw).map_err(|e| {
            let message = match e {
                TenantError::Missing => "no org id: the X-Scope-OrgID header is empty".to_string(),
                ref other => format!("invalid tenant ID: {other}"),
            };
            HttpError::new(e.kind(), message)
        })
    }
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
        };
        assert_eq!(
            off.resolve(&headers(Some("x"))).unwrap().as_str(),
            "anonymous"
        );
    }
}
