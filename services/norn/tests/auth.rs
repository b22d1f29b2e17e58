//! Process-level test of `--auth.type=tokens`: the real binary with a tokens file, probed over
//! HTTP with no credentials, wrong secrets, tokens of the wrong tenant or scope, bearer and
//! basic auth; refused writes store nothing and refused reads return no data; a token removed
//! from the file stops working while the process runs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Norn, now_ms, request, series, snappy, urlencode};
use prost::Message;

const SECRET_A: &str = "secret-of-team-a-0123456789";
const SECRET_B: &str = "secret-of-team-b-0123456789";
const SECRET_ADMIN: &str = "secret-of-ops-0123456789";
const SECRET_A_RULES: &str = "secret-of-a-rules-0123456789";

fn hash(secret: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_norn"))
        .args(["tools", "auth", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(secret.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn tokens_file(path: &Path, with_b: bool) {
    let mut s = format!(
        "tokens:\n  - name: team-a-agent\n    hash: \"{}\"\n    tenants: [team-a]\n    scopes: [write, read]\n  - name: ops\n    hash: \"{}\"\n    scopes: [admin]\n  - name: team-a-rules\n    hash: \"{}\"\n    tenants: [team-a]\n    scopes: [rules]\n",
        hash(SECRET_A),
        hash(SECRET_ADMIN),
        hash(SECRET_A_RULES)
    );
    if with_b {
        s.push_str(&format!(
            "  - name: team-b-grafana\n    hash: \"{}\"\n    tenants: [team-b]\n    scopes: [read]\n",
            hash(SECRET_B)
        ));
    }
    // Write then rename, so a reload never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

#[derive(Clone, Copy)]
enum Creds<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

fn call(
    n: &Norn,
    method: &str,
    path: &str,
    creds: Creds,
    org: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, String, Option<String>) {
    let url = n.url(path);
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    match creds {
        Creds::None => {}
        Creds::Bearer(s) => req = req.header("Authorization", format!("Bearer {s}")),
        Creds::Basic(u, p) => {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req = req.header("Authorization", format!("Basic {b}"));
        }
    }
    if let Some(t) = org {
        req = req.header("X-Scope-OrgID", t);
    }
    let body = match body {
        Some((ct, b)) => {
            req = req.header("Content-Type", ct);
            if ct == "application/x-protobuf" {
                req = req
                    .header("Content-Encoding", "snappy")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0");
            }
            b
        }
        None => Vec::new(),
    };
    let mut resp = agent().run(req.body(body).unwrap()).expect("request");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text, www)
}

fn push_body(metric: &str, t: i64) -> Vec<u8> {
    snappy(
        &request(vec![series(
            &[("__name__", metric), ("job", "auth")],
            &[(t, 1.0)],
        )])
        .encode_to_vec(),
    )
}

fn push(n: &Norn, creds: Creds, org: Option<&str>, metric: &str) -> (u16, String) {
    let (s, b, _) = call(
        n,
        "POST",
        "/api/v1/push",
        creds,
        org,
        Some(("application/x-protobuf", push_body(metric, now_ms()))),
    );
    (s, b)
}

/// Series of `metric` visible to `creds` (bearer `secret`, tenant implied).
fn count(n: &Norn, creds: Creds, org: Option<&str>, metric: &str) -> usize {
    let (s, b, _) = call(
        n,
        "GET",
        &format!("/prometheus/api/v1/query?query={}", urlencode(metric)),
        creds,
        org,
        None,
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    v["data"]["result"].as_array().unwrap().len()
}

fn rules_post(n: &Norn, creds: Creds) -> u16 {
    let group = "name: g1\nrules:\n  - record: auth:up\n    expr: vector(1)\n";
    call(
        n,
        "POST",
        "/prometheus/config/v1/rules/ns1",
        creds,
        None,
        Some(("application/yaml", group.as_bytes().to_vec())),
    )
    .0
}

#[test]
fn tokens_guard_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    tokens_file(&file, true);
    let n = Norn::start(
        dir.path(),
        &[
            "--target=all",
            "--auth.type=tokens",
            &format!("--auth.tokens-file={}", file.display()),
            "--auth.tokens-reload-period=200ms",
        ],
    );
    let a = Creds::Bearer(SECRET_A);
    let b = Creds::Bearer(SECRET_B);
    let admin = Creds::Bearer(SECRET_ADMIN);
    let wrong = Creds::Bearer("not-a-token");

    // Team A writes with its token (tenant implied) and with basic auth as Prometheus sends it.
    assert_eq!(push(&n, a, None, "auth_a_bearer").0, 200);
    assert_eq!(
        push(&n, Creds::Basic("team-a", SECRET_A), None, "auth_a_basic").0,
        200
    );
    assert_eq!(count(&n, a, None, "auth_a_bearer"), 1);
    assert_eq!(count(&n, a, None, "auth_a_basic"), 1);
    // A rule group for team-a, so the rules APIs have something to (not) show.
    assert_eq!(rules_post(&n, Creds::Bearer(SECRET_A_RULES)), 202);

    let now = now_ms() / 1000;
    let reads = [
        "/prometheus/api/v1/query?query=auth_a_bearer".to_string(),
        format!(
            "/prometheus/api/v1/query_range?query=auth_a_bearer&start={}&end={}&step=15",
            now - 300,
            now + 60
        ),
        "/prometheus/api/v1/series?match[]=auth_a_bearer".to_string(),
        "/prometheus/api/v1/labels".to_string(),
        "/prometheus/api/v1/label/__name__/values".to_string(),
        "/prometheus/api/v1/metadata".to_string(),
        "/prometheus/config/v1/rules".to_string(),
        "/prometheus/api/v1/rules".to_string(),
        "/api/v1/query?query=auth_a_bearer".to_string(),
    ];
    let admin_paths = [
        ("GET", "/config"),
        ("GET", "/services"),
        ("POST", "/ingester/flush"),
    ];

    // Without credentials, or with a wrong secret: 401 with a challenge, everywhere but
    // /ready and /metrics; the secret is never echoed.
    for creds in [Creds::None, wrong, Creds::Basic("team-a", "not-a-token")] {
        for p in &reads {
            let (s, body, www) = call(&n, "GET", p, creds, Some("team-a"), None);
            assert_eq!(s, 401, "{p}: {body}");
            assert_eq!(www.as_deref(), Some("Bearer realm=\"norn\""), "{p}");
            assert!(!body.contains("not-a-token") && !body.contains("auth_a"));
        }
        for (m, p) in admin_paths.iter().chain(&[("GET", "/ring")]) {
            assert_eq!(call(&n, m, p, creds, None, None).0, 401, "{p}");
        }
        assert_eq!(
            push(&n, creds, Some("team-a"), "auth_refused_unauth").0,
            401
        );
    }
    // A refused push of a sizeable body still reads its 401 (the body is discarded first).
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    for creds in [Creds::None, wrong] {
        let (s, _, _) = call(
            &n,
            "POST",
            "/api/v1/push",
            creds,
            Some("team-a"),
            Some(("application/x-protobuf", big.clone())),
        );
        assert_eq!(s, 401);
    }
    assert_eq!(call(&n, "GET", "/ready", Creds::None, None, None).0, 200);
    assert_eq!(call(&n, "GET", "/metrics", Creds::None, None, None).0, 200);

    // A reads all of its own data.
    for p in &reads {
        let (s, body, _) = call(&n, "GET", p, a, None, None);
        assert_eq!(s, 200, "{p}: {body}");
    }
    let (_, body, _) = call(&n, "GET", &reads[2], a, None, None);
    assert!(body.contains("auth_a_bearer"), "{body}");

    // B (read-only, team-b) asking for team-a: 403 and none of A's data; writing: 403.
    for p in &reads {
        let (s, body, _) = call(&n, "GET", p, b, Some("team-a"), None);
        assert_eq!(s, 403, "{p}: {body}");
        assert!(!body.contains("auth_a"), "{p}: {body}");
    }
    let (s, body, _) = call(
        &n,
        "GET",
        "/prometheus/api/v1/query?query=auth_a_bearer",
        Creds::Basic("team-a", SECRET_B),
        None,
        None,
    );
    assert_eq!(s, 403, "basic-auth username naming another tenant: {body}");
    assert_eq!(push(&n, b, None, "auth_refused_b").0, 403);
    assert_eq!(push(&n, b, Some("team-b"), "auth_refused_b").0, 403);
    // B's own tenant: allowed, and it sees none of team-a's series.
    assert_eq!(count(&n, b, None, "auth_a_bearer"), 0);
    assert_eq!(
        count(&n, b, None, "auth_refused_b"),
        0,
        "a refused write stored nothing"
    );
    assert_eq!(
        count(&n, a, None, "auth_refused_unauth"),
        0,
        "a refused write stored nothing"
    );
    // A client-sent X-Scope-OrgID for another tenant does not widen A's token.
    assert_eq!(push(&n, a, Some("team-b"), "auth_refused_a_to_b").0, 403);
    assert_eq!(count(&n, b, None, "auth_refused_a_to_b"), 0);

    // Admin routes: A gets 403, the admin token 200; the admin token reads no tenant data.
    for (m, p) in admin_paths {
        assert_eq!(call(&n, m, p, a, None, None).0, 403, "{p}");
        let (s, body, _) = call(&n, m, p, admin, None, None);
        assert!(s == 200 || s == 204, "{p}: {s} {body}");
    }
    let (_, cfg, _) = call(&n, "GET", "/config", admin, None, None);
    assert!(cfg.contains("type: tokens"), "{cfg}");
    assert_eq!(
        call(&n, "GET", &reads[0], admin, Some("team-a"), None).0,
        403
    );
    // No /ring in one process: a valid token gets the 404.
    assert_eq!(call(&n, "GET", "/ring", admin, None, None).0, 404);

    // Rules: A (read) lists but cannot change; the rules token can.
    assert_eq!(rules_post(&n, a), 403);
    let (s, body, _) = call(&n, "GET", "/prometheus/config/v1/rules", a, None, None);
    assert_eq!(s, 200);
    assert!(body.contains("auth:up"), "{body}");
    let (s, body, _) = call(&n, "GET", "/prometheus/config/v1/rules", b, None, None);
    assert!(s == 200 || s == 404, "{s} {body}");
    assert!(
        !body.contains("auth:up"),
        "team-b sees no team-a rules: {body}"
    );

    // Failures are counted by reason.
    assert!(n.metric("norn_auth_failures_total{reason=\"missing_credentials\"}") >= 1.0);
    assert!(n.metric("norn_auth_failures_total{reason=\"invalid_credentials\"}") >= 1.0);
    assert!(n.metric("norn_auth_failures_total{reason=\"forbidden_tenant\"}") >= 1.0);
    assert!(n.metric("norn_auth_failures_total{reason=\"missing_scope\"}") >= 1.0);

    // Removing B from the file stops B within a bounded wait; a broken file changes nothing.
    tokens_file(&file, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _, _) = call(&n, "GET", &reads[0], b, None, None);
        if s == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still accepted 10s after removal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&file, "tokens: [broken").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while n.metric("norn_auth_tokens_reloads_total{result=\"failure\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&n, a, None, "auth_a_bearer"), 1, "old tokens kept");
    assert!(!n.log().contains(SECRET_A), "secrets never logged");
}

/// `norn tools auth token` makes a secret and an entry that a running Norn accepts as is.
#[test]
fn generated_token_works() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_norn"))
        .args([
            "tools", "auth", "token", "--name", "gen", "--tenant", "team-g", "--scope", "write",
            "--scope", "read",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .find(|l| l.starts_with("norn_"))
        .expect("a secret line")
        .to_string();
    let entry: String = text
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!entry.contains(&secret), "the entry holds only the hash");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    std::fs::write(&file, format!("tokens:\n{entry}")).unwrap();
    let n = Norn::start(
        dir.path(),
        &[
            "--auth.type=tokens",
            &format!("--auth.tokens-file={}", file.display()),
        ],
    );
    let g = Creds::Bearer(&secret);
    assert_eq!(push(&n, g, None, "auth_generated").0, 200);
    assert_eq!(count(&n, g, None, "auth_generated"), 1);
    assert_eq!(
        push(&n, Creds::Basic("team-g", &secret), None, "auth_generated2").0,
        200
    );
    assert_eq!(n.metric("norn_auth_requests_total{token=\"gen\"}"), 3.0);
}
