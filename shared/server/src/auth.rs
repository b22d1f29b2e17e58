//! Built-in authentication and authorization of the HTTP API (`--auth.type=tokens`).
//!
//! One axum middleware ([`middleware`]) sits on the combined router of the process, so every
//! service's routes are covered and no handler changes. For each request it:
//!
//! 1. finds the scope the matched route needs ([`scope::access`]); `/ready` and `/metrics`
//!    pass untouched, a route the table does not know is denied, and a path that matched no
//!    route gets its 404 once the token is valid;
//! 2. takes the secret from `Authorization: Bearer <secret>` or from the password of basic
//!    auth (the username then names the tenant: what Prometheus sends with `basic_auth`);
//!    no credentials or an unknown secret is 401 with `WWW-Authenticate: Bearer`;
//! 3. checks the token's scopes (403 when it lacks the route's scope), then picks the tenant:
//!    `X-Scope-OrgID` if sent, else the basic-auth username, else the token's only tenant. A
//!    tenant the token does not hold is 403; a token for several tenants with none named is
//!    400; `a|b` (tenant federation) passes for reads when the token holds every tenant named
//!    (403 otherwise; 400 on any other route);
//! 4. replaces every client-sent `X-Scope-OrgID` with the verified tenant, so the handlers'
//!    [`crate::TenantResolver`] (which prefers the header) can only ever see a tenant the
//!    token holds. Admin routes are not tenant-scoped: there a header naming a tenant the
//!    token lacks is removed.
//!
//! Failures are counted by reason (`norn_auth_failures_total{reason}`), successes by token
//! name; neither logs nor responses ever contain the secret. gRPC and memberlist gossip are
//! not covered by tokens: they are secured by mTLS ([`crate::tls`]) and the gossip key
//! (docs/operations.md, "Threat model").

pub mod scope;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use norn_model::{ORG_ID_HEADER, TENANT_SEPARATOR};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::periodic::Periodic;
pub use scope::{Access, Scope};
pub use tokens::{Reload, Token, TokenSet, TokenStore, TokensError, hash_secret, new_secret};

/// Checks every request against the token set of a [`TokenStore`].
pub struct Authenticator {
    store: TokenStore,
    metrics: AuthMetrics,
}

struct AuthMetrics {
    failures: IntCounterVec,
    successes: IntCounterVec,
    reloads: IntCounterVec,
    tokens: IntGauge,
}

/// Why a request was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    MissingCredentials,
    InvalidCredentials,
    MissingScope,
    ForbiddenTenant,
    NoTenant,
    BadTenant,
    UnknownRoute,
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::MissingCredentials => "missing_credentials",
            Failure::InvalidCredentials => "invalid_credentials",
            Failure::MissingScope => "missing_scope",
            Failure::ForbiddenTenant => "forbidden_tenant",
            Failure::NoTenant => "no_tenant",
            Failure::BadTenant => "bad_tenant",
            Failure::UnknownRoute => "unknown_route",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Failure::MissingCredentials | Failure::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Failure::MissingScope | Failure::ForbiddenTenant | Failure::UnknownRoute => {
                StatusCode::FORBIDDEN
            }
            Failure::NoTenant | Failure::BadTenant => StatusCode::BAD_REQUEST,
        }
    }
}

impl Authenticator {
    /// Registers the auth metrics on `registry`.
    pub fn new(store: TokenStore, registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let failures = IntCounterVec::new(
            Opts::new(
                "norn_auth_failures_total",
                "HTTP requests refused by token authentication, by reason.",
            ),
            &["reason"],
        )?;
        let successes = IntCounterVec::new(
            Opts::new(
                "norn_auth_requests_total",
                "HTTP requests let through by token authentication, by token name.",
            ),
            &["token"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "norn_auth_tokens_reloads_total",
                "Reloads of the tokens file that changed it (result=success) or failed (result=failure; the previous tokens stay in force).",
            ),
            &["result"],
        )?;
        let tokens = IntGauge::new("norn_auth_tokens", "Tokens in force.")?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(successes.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        tokens.set(store.current().len() as i64);
        Ok(Arc::new(Self {
            store,
            metrics: AuthMetrics {
                failures,
                successes,
                reloads,
                tokens,
            },
        }))
    }

    /// Re-reads the tokens file once; logs and counts the outcome.
    pub fn reload(&self) {
        match self.store.reload() {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Loaded(n)) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.tokens.set(n as i64);
                tracing::info!(tokens = n, path = %self.store.path().display(), "reloaded the tokens file");
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                tracing::error!(error = %e, "reloading the tokens file failed; keeping the previous tokens");
            }
        }
    }

    /// Re-reads the tokens file every `period` (at least 100ms) until `stop`.
    pub fn spawn_reload(self: &Arc<Self>, period: Duration, stop: CancellationToken) {
        let me = Arc::clone(self);
        Periodic::every("auth-tokens-reload", period, Duration::from_millis(100)).spawn(
            stop,
            move || {
                me.reload();
                std::future::ready(())
            },
        );
    }

    /// The decision for one request: `Ok(tenant to set, token name)` or the failure.
    fn check(&self, access: Access, headers: &HeaderMap) -> Result<Allowed, Refused> {
        let Some(creds) = credentials(headers) else {
            return Err((Failure::MissingCredentials, None));
        };
        let set = self.store.current();
        let Some(token) = set.lookup(creds.secret.as_bytes()) else {
            return Err((Failure::InvalidCredentials, None));
        };
        let name = Arc::clone(&token.name);
        let fail = |f: Failure| Err((f, Some(Arc::clone(&name))));
        let requested = match headers.get(ORG_ID_HEADER) {
            Some(v) => match v.to_str() {
                Ok(s) => Some(s.to_string()),
                Err(_) => return fail(Failure::BadTenant),
            },
            None => creds.user,
        };
        match access {
            Access::Open | Access::NotFound => Ok((None, name)),
            Access::Deny => fail(Failure::UnknownRoute),
            Access::Admin => {
                if !token.has_any(&[Scope::Admin]) {
                    return fail(Failure::MissingScope);
                }
                // Not tenant-scoped: keep a tenant only if the token holds it.
                let tenant = requested
                    .filter(|t| token.allows_tenant(t))
                    .and_then(|t| HeaderValue::from_str(&t).ok());
                Ok((tenant, name))
            }
            Access::Tenant(scopes) => {
                if !token.has_any(scopes) {
                    return fail(Failure::MissingScope);
                }
                let tenant = match requested {
                    // Tenant federation: only reads, and only of tenants the token holds
                    // (whether federation is enabled is the read handler's to say).
                    Some(t) if t.contains(TENANT_SEPARATOR) => {
                        if scopes != [Scope::Read] {
                            return fail(Failure::BadTenant);
                        }
                        let mut ids: Vec<&str> = t.split(TENANT_SEPARATOR).collect();
                        if ids.iter().any(|id| id.is_empty()) {
                            return fail(Failure::BadTenant);
                        }
                        if !ids.iter().all(|id| token.allows_tenant(id)) {
                            return fail(Failure::ForbiddenTenant);
                        }
                        ids.sort_unstable();
                        ids.dedup();
                        ids.join("|")
                    }
                    Some(t) if token.allows_tenant(&t) => t,
                    Some(_) => return fail(Failure::ForbiddenTenant),
                    None => match token.tenants.as_slice() {
                        [only] => only.as_str().to_string(),
                        _ => return fail(Failure::NoTenant),
                    },
                };
                match HeaderValue::from_str(&tenant) {
                    Ok(v) => Ok((Some(v), name)),
                    Err(_) => fail(Failure::BadTenant),
                }
            }
        }
    }
}

/// A request let through: the tenant to set (`None`: no tenant) and the token's name.
type Allowed = (Option<HeaderValue>, Arc<str>);
/// A request refused, with the token's name when the secret was valid.
type Refused = (Failure, Option<Arc<str>>);

/// The secret of a request and, for basic auth, its username.
struct Credentials {
    secret: String,
    user: Option<String>,
}

fn credentials(headers: &HeaderMap) -> Option<Credentials> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| Credentials {
            secret: rest.to_string(),
            user: None,
        });
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = crate::tenant::decode_base64(rest)?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, pass) = text.split_once(':')?;
        return (!pass.is_empty()).then(|| Credentials {
            secret: pass.to_string(),
            user: (!user.is_empty()).then(|| user.to_string()),
        });
    }
    None
}

/// The middleware; apply with `axum::middleware::from_fn_with_state(authenticator, middleware)`
/// as a `Router::layer` (so the matched route is known).
pub async fn middleware(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let template = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let access = scope::access(template, req.method());
    if access == Access::Open {
        return next.run(req).await;
    }
    match auth.check(access, req.headers()) {
        Ok((tenant, name)) => {
            auth.metrics.successes.with_label_values(&[&*name]).inc();
            let headers = req.headers_mut();
            headers.remove(ORG_ID_HEADER);
            if let Some(t) = tenant {
                headers.insert(ORG_ID_HEADER, t);
            }
            next.run(req).await
        }
        Err((failure, name)) => {
            auth.metrics
                .failures
                .with_label_values(&[failure.reason()])
                .inc();
            let route = template.unwrap_or("(no route)");
            tracing::debug!(
                reason = failure.reason(),
                token = name.as_deref().unwrap_or(""),
                route,
                "request refused by token authentication"
            );
            // A remote-write sender must read the 4xx (it drops the batch), not a broken pipe
            // (which it retries forever): discard a small body first, as the guards do.
            crate::guard::discard_refused_body(req).await;
            refuse(failure)
        }
    }
}

fn refuse(f: Failure) -> Response {
    let message = match f {
        Failure::MissingCredentials => {
            "no credentials: send Authorization: Bearer <token>, or basic auth with the tenant as username and the token as password"
        }
        Failure::InvalidCredentials => "invalid credentials",
        Failure::MissingScope => "the token lacks the scope this endpoint needs",
        Failure::ForbiddenTenant => "the token is not valid for the requested tenant",
        Failure::NoTenant => "the token is valid for several tenants: name one with X-Scope-OrgID",
        Failure::BadTenant => {
            "invalid X-Scope-OrgID (several tenant ids, tenant federation, are only for queries and need every tenant in the token)"
        }
        Failure::UnknownRoute => "this endpoint is not served under token authentication",
    };
    let mut resp = (
        f.status(),
        [("content-type", "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response();
    if f.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"norn\""),
        );
    }
    resp
}

#[cfg(test)]
mod tests;
