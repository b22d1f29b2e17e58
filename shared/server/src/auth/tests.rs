use super::*;
use crate::TenantResolver;
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use tower::ServiceExt;

const ALL: &str = "
tokens:
  - name: a
    hash: \"HA\"
    tenants: [team-a]
    scopes: [write, read]
  - name: b
    hash: \"HB\"
    tenants: [team-b]
    scopes: [read]
  - name: multi
    hash: \"HM\"
    tenants: [team-a, team-b]
    scopes: [read]
  - name: ops
    hash: \"HO\"
    scopes: [admin]
";

fn app() -> (Router, Arc<Authenticator>) {
    let text = ALL
        .replace("HA", &hash_secret("sa"))
        .replace("HB", &hash_secret("sb"))
        .replace("HM", &hash_secret("sm"))
        .replace("HO", &hash_secret("so"));
    let dir = std::env::temp_dir().join(format!(
        "norn-auth-mw-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.yaml");
    std::fs::write(&path, text).unwrap();
    let store = TokenStore::open(&path).unwrap();
    let auth = Authenticator::new(store, &Registry::new()).unwrap();
    let tenant = |h: HeaderMap| async move {
        match (TenantResolver {
            multitenancy_enabled: true,
            federation: crate::Federation {
                enabled: true,
                max_tenants: 0,
                max_concurrent: 1,
            },
        })
        .resolve_read(&h)
        {
            Ok(t) => t.as_str().to_string(),
            Err(e) => format!("error {}", e.message),
        }
    };
    let r = Router::new()
        .route("/api/v1/push", post(tenant))
        .route("/prometheus/api/v1/query", get(tenant))
        .route("/prometheus/config/v1/rules", get(tenant).post(tenant))
        .route("/ingester/flush", post(tenant))
        .route("/ready", get(|| async { "ready" }))
        .route("/debug/x", get(|| async { "x" }))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&auth),
            middleware,
        ));
    (r, auth)
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned(), www)
}

fn bearer(s: &str) -> String {
    format!("Bearer {s}")
}

/// `Basic base64(user:pass)`.
fn basic(user: &str, pass: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}").into_bytes();
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[tokio::test]
async fn decides_every_case() {
    let (app, _) = app();
    let q = "/prometheus/api/v1/query";
    // Open routes.
    assert_eq!(call(&app, "GET", "/ready", &[]).await.0, 200);
    // No or wrong credentials: 401 with a challenge, never echoing the secret.
    let (s, body, www) = call(&app, "GET", q, &[]).await;
    assert_eq!((s, www.as_deref()), (401, Some("Bearer realm=\"norn\"")));
    assert!(body.contains("no credentials"));
    let (s, body, _) = call(&app, "GET", q, &[("authorization", &bearer("nope-secret"))]).await;
    assert_eq!(s, 401);
    assert!(!body.contains("nope-secret"));
    assert_eq!(
        call(&app, "GET", q, &[("authorization", "Bearer ")])
            .await
            .0,
        401
    );
    assert_eq!(
        call(&app, "GET", q, &[("authorization", &basic("team-a", ""))])
            .await
            .0,
        401
    );
    // A one-tenant token implies its tenant.
    assert_eq!(
        call(&app, "GET", q, &[("authorization", &bearer("sa"))]).await,
        (200, "team-a".into(), None)
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/v1/push",
            &[("authorization", &bearer("sa"))]
        )
        .await
        .1,
        "team-a"
    );
    // Basic auth: username = tenant, password = secret.
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/v1/push",
            &[("authorization", &basic("team-a", "sa"))]
        )
        .await
        .1,
        "team-a"
    );
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/v1/push",
            &[("authorization", &basic("team-b", "sa"))]
        )
        .await
        .0,
        403
    );
    // A client-sent header never selects a tenant the token lacks.
    let (s, body, _) = call(
        &app,
        "GET",
        q,
        &[("authorization", &bearer("sb")), (ORG_ID_HEADER, "team-a")],
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        call(
            &app,
            "POST",
            "/api/v1/push",
            &[("authorization", &bearer("sb"))]
        )
        .await
        .0,
        403,
        "read-only token writes"
    );
    // Several tenants: the header picks one of them; none named is 400; federation reads
    // the tenants the token holds (sorted, each once), and no others.
    assert_eq!(
        call(&app, "GET", q, &[("authorization", &bearer("sm"))])
            .await
            .0,
        400
    );
    assert_eq!(
        call(
            &app,
            "GET",
            q,
            &[("authorization", &bearer("sm")), (ORG_ID_HEADER, "team-b")]
        )
        .await
        .1,
        "team-b"
    );
    assert_eq!(
        call(
            &app,
            "GET",
            q,
            &[
                ("authorization", &bearer("sm")),
                (ORG_ID_HEADER, "team-b|team-a|team-b")
            ]
        )
        .await
        .1,
        "team-a|team-b"
    );
    for (token, org, status) in [
        ("sa", "team-a|team-b", 403), // holds only team-a
        ("sm", "team-a|team-c", 403),
        ("sm", "team-a|", 400),
    ] {
        let got = call(
            &app,
            "GET",
            q,
            &[("authorization", &bearer(token)), (ORG_ID_HEADER, org)],
        )
        .await;
        assert_eq!(got.0, status, "{token} {org}: {got:?}");
    }
    // Never for writes.
    let got = call(
        &app,
        "POST",
        "/api/v1/push",
        &[
            ("authorization", &bearer("sa")),
            (ORG_ID_HEADER, "team-a|team-a"),
        ],
    )
    .await;
    assert_eq!(got.0, 400, "{got:?}");
    // Rules: listing accepts read, changing needs rules.
    let rules = "/prometheus/config/v1/rules";
    assert_eq!(
        call(&app, "GET", rules, &[("authorization", &bearer("sa"))])
            .await
            .0,
        200
    );
    assert_eq!(
        call(&app, "POST", rules, &[("authorization", &bearer("sa"))])
            .await
            .0,
        403
    );
    // Admin routes need admin; a tenant-less admin token passes and carries no tenant.
    assert_eq!(
        call(
            &app,
            "POST",
            "/ingester/flush",
            &[("authorization", &bearer("sa"))]
        )
        .await
        .0,
        403
    );
    let (s, body, _) = call(
        &app,
        "POST",
        "/ingester/flush",
        &[("authorization", &bearer("so")), (ORG_ID_HEADER, "team-a")],
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.starts_with("error"), "the header was stripped: {body}");
    // The admin token cannot read tenant data.
    assert_eq!(
        call(&app, "GET", q, &[("authorization", &bearer("so"))])
            .await
            .0,
        403
    );
    // Routes the scope table does not know are denied; no route at all is 404 once
    // authenticated, 401 without credentials.
    assert_eq!(
        call(&app, "GET", "/debug/x", &[("authorization", &bearer("so"))])
            .await
            .0,
        403
    );
    assert_eq!(
        call(&app, "GET", "/nothing", &[("authorization", &bearer("sa"))])
            .await
            .0,
        404
    );
    assert_eq!(call(&app, "GET", "/nothing", &[]).await.0, 401);
}

#[tokio::test]
async fn counts_failures_by_reason() {
    let (app, auth) = app();
    call(&app, "GET", "/prometheus/api/v1/query", &[]).await;
    call(
        &app,
        "GET",
        "/prometheus/api/v1/query",
        &[("authorization", &bearer("x"))],
    )
    .await;
    call(
        &app,
        "POST",
        "/api/v1/push",
        &[("authorization", &bearer("sb"))],
    )
    .await;
    let f = &auth.metrics.failures;
    assert_eq!(f.with_label_values(&["missing_credentials"]).get(), 1);
    assert_eq!(f.with_label_values(&["invalid_credentials"]).get(), 1);
    assert_eq!(f.with_label_values(&["missing_scope"]).get(), 1);
}
