//! The fan-out's HTTP side against stand-in rulers on loopback: what a forwarded request
//! carries (the query, the tenant, `Authorization`, the local-only marker), and that a ruler
//! that refuses connections, answers an error, answers too much or never answers fails the
//! whole request, naming it, and is counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use norn_model::TenantId;
use norn_ring::{InstanceDesc, InstanceState};
use norn_ruler::fanout::{Endpoint, Fanout, LOCAL_HEADER};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// What a stand-in ruler was sent: headers and query.
type Seen = Arc<Mutex<Vec<(HeaderMap, Option<String>)>>>;

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn peer(id: &str, addr: impl ToString) -> InstanceDesc {
    InstanceDesc {
        id: id.into(),
        addr: addr.to_string(),
        zone: String::new(),
        state: InstanceState::Active,
        heartbeat_ms: 0,
        registered_ms: 0,
        tokens: vec![1],
    }
}

/// A ruler answering `/rules` with one group named after it, recording what it was sent.
async fn good(name: &'static str, seen: Seen) -> SocketAddr {
    let app = Router::new().route(
        "/prometheus/api/v1/rules",
        get(move |h: HeaderMap, RawQuery(q): RawQuery| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().push((h, q));
                axum::Json(json!({"status": "success", "data": {"groups": [{"file": "ns", "name": name}]}}))
            }
        }),
    );
    serve(app).await
}

fn fanout() -> Fanout {
    Fanout::new(&prometheus::Registry::new()).unwrap()
}

fn headers(auth: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("X-Scope-OrgID", "team-a".parse().unwrap());
    if let Some(a) = auth {
        h.insert("authorization", a.parse().unwrap());
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_the_request_and_collects_every_answer() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = good("ga", Arc::clone(&seen)).await;
    let b = good("gb", Arc::clone(&seen)).await;
    let f = fanout();
    let tenant = TenantId::new("team-a").unwrap();
    let got = f
        .ask_all(
            Endpoint::Rules,
            &[peer("a", a), peer("b", b)],
            Some("type=alert&rule_group[]=x"),
            &tenant,
            &headers(Some("Basic dGVhbS1hOnB3")),
        )
        .await
        .unwrap();
    let names: Vec<&str> = got.iter().map(|l| l[0]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ga", "gb"]);
    let seen = seen.lock();
    assert_eq!(seen.len(), 2);
    for (h, q) in seen.iter() {
        assert_eq!(q.as_deref(), Some("type=alert&rule_group[]=x"));
        assert_eq!(h["x-scope-orgid"], "team-a");
        assert_eq!(h["authorization"], "Basic dGVhbS1hOnB3");
        assert_eq!(h[LOCAL_HEADER], "true");
    }
    assert_eq!(f.failures(Endpoint::Rules), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_ruler_not_answering_fails_the_request_naming_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ok = good("g", seen).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let failing = serve(Router::new().route(
        "/prometheus/api/v1/alerts",
        get(|| async {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"status": "error", "errorType": "internal", "error": "boom"})),
            )
        }),
    ))
    .await;
    let huge = serve(Router::new().route(
        "/prometheus/api/v1/rules",
        get(|| async {
            let groups: Vec<Value> = (0..1000)
                .map(|i| json!({"name": format!("g{i}")}))
                .collect();
            axum::Json(json!({"status": "success", "data": {"groups": groups}}))
        }),
    ))
    .await;
    let hanging = serve(Router::new().route(
        "/prometheus/api/v1/rules",
        get(std::future::pending::<String>),
    ))
    .await;
    let tenant = TenantId::new("team-a").unwrap();
    let h = headers(None);
    let f = fanout().with_limits(Duration::from_millis(300), 4096);

    let e = f
        .ask_all(
            Endpoint::Rules,
            &[peer("ok", ok), peer("dead", closed)],
            None,
            &tenant,
            &h,
        )
        .await
        .unwrap_err();
    assert_eq!(e.id, "dead");
    assert!(e.to_string().contains(&closed.to_string()), "{e}");
    assert!(e.reason.to_lowercase().contains("refused"), "{e}");

    let e = f
        .ask_all(
            Endpoint::Alerts,
            &[peer("failing", failing)],
            None,
            &tenant,
            &h,
        )
        .await
        .unwrap_err();
    assert_eq!(e.id, "failing");
    assert!(e.reason.contains("500") && e.reason.contains("boom"), "{e}");

    let e = f
        .ask_all(Endpoint::Rules, &[peer("huge", huge)], None, &tenant, &h)
        .await
        .unwrap_err();
    assert_eq!(e.id, "huge");
    assert!(e.reason.contains("larger than 4096"), "{e}");

    let e = f
        .ask_all(
            Endpoint::Rules,
            &[peer("ok", ok), peer("hanging", hanging)],
            None,
            &tenant,
            &h,
        )
        .await
        .unwrap_err();
    assert_eq!(e.id, "hanging");
    assert!(e.reason.contains("no answer within"), "{e}");

    assert_eq!(f.failures(Endpoint::Rules), 3);
    assert_eq!(f.failures(Endpoint::Alerts), 1);
}
