//! `--server.admin-listen-address`: the admin endpoints on a listener of their own, and not on
//! the public one, with the probes on both.

mod common;

use std::time::Duration;

use common::{Norn, free_port, now_ms, request, series};

fn status(method: &str, url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = match method {
        "POST" => agent
            .post(url)
            .header("X-Scope-OrgID", "team-a")
            .send(&[][..]),
        _ => agent.get(url).header("X-Scope-OrgID", "team-a").call(),
    }
    .expect("request");
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (resp.status().as_u16(), body)
}

#[test]
fn admin_endpoints_are_served_only_on_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let n = Norn::start(
        dir.path(),
        &[
            "--server.admin-listen-address=127.0.0.1",
            &format!("--server.admin-listen-port={admin_port}"),
        ],
    );
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    assert_eq!(
        n.push(
            Some("team-a"),
            &request(vec![series(&[("__name__", "up")], &[(now_ms(), 1.0)])])
        )
        .0,
        200,
        "writes go to the public listener"
    );
    for (method, path, public, on_admin) in [
        ("GET", "/ready", 200, 200),
        ("GET", "/metrics", 200, 200),
        ("GET", "/config", 404, 200),
        ("GET", "/services", 404, 200),
        ("POST", "/ingester/flush", 404, 204),
        ("GET", "/prometheus/api/v1/query?query=up", 200, 404),
        // An empty body: refused by the push handler, not by the listener.
        ("POST", "/api/v1/push", 400, 404),
    ] {
        let (s, body) = status(method, &n.url(path));
        assert_eq!(s, public, "public {method} {path}: {body}");
        if public == 404 {
            assert!(body.contains("admin listener"), "{path}: {body}");
        }
        let (s, body) = status(method, &admin(path));
        if path == "/ingester/flush" {
            assert!((200..300).contains(&s), "admin {method} {path}: {s} {body}");
        } else {
            assert_eq!(s, on_admin, "admin {method} {path}: {body}");
        }
    }
    let (_, metrics) = status("GET", &admin("/metrics"));
    assert!(
        metrics.contains("norn_request_duration_seconds"),
        "{metrics}"
    );
}
