//! `/ring` and `/memberlist` pages, through the router.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use norn_model::now_ms;
use norn_ring::{
    Entry, INGESTER_RING_KEY, InstanceDesc, InstanceState, Memberlist, MemberlistConfig, Ring,
    RingConfig, spawn_ring_watcher,
};
use tower::ServiceExt;

async fn body_string(resp: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn desc(id: &str, tokens: Vec<u32>) -> InstanceDesc {
    InstanceDesc {
        id: id.to_string(),
        addr: format!("127.0.0.1:90{}", id.len()),
        zone: "zone-a".to_string(),
        state: InstanceState::Active,
        heartbeat_ms: now_ms(),
        registered_ms: now_ms(),
        tokens,
    }
}

#[tokio::test]
async fn ring_and_memberlist_pages() {
    let registry = prometheus::Registry::new();
    let ml = Memberlist::start(
        MemberlistConfig {
            node_name: "pages".to_string(),
            bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bind_port: 0,
            advertise_addr: None,
            advertise_port: None,
            join_members: vec![],
            gossip_interval: Duration::from_millis(200),
            pull_push_interval: Duration::from_secs(30),
            encryption_key: None,
        },
        &registry,
    )
    .await
    .unwrap();
    for (id, tokens) in [
        ("ing-a", vec![1u32 << 30, 3 << 30]),
        ("ing-b<", vec![2 << 30]),
    ] {
        let d = desc(id, tokens);
        ml.put(
            INGESTER_RING_KEY,
            id,
            Entry::value(d.heartbeat_ms, serde_json::to_vec(&d).unwrap()),
        );
    }
    let ring = Ring::new(RingConfig::default());
    spawn_ring_watcher(
        std::sync::Arc::clone(&ml),
        INGESTER_RING_KEY,
        ring.clone(),
        None,
        &registry,
    )
    .unwrap();
    let app = norn_ring::http::routes(ring.clone(), std::sync::Arc::clone(&ml));

    // JSON
    let resp = app
        .clone()
        .oneshot(
            Request::get("/ring")
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
    let shards = v["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[0]["id"], "ing-a");
    assert_eq!(shards[0]["state"], "ACTIVE");
    assert_eq!(shards[0]["zone"], "zone-a");
    assert_eq!(shards[0]["tokens"].as_array().unwrap().len(), 2);
    assert!(shards[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    let total: f64 = shards
        .iter()
        .map(|s| s["ownership"].as_f64().unwrap())
        .sum();
    assert!((total - 100.0).abs() < 1e-6);
    assert!((shards[0]["ownership"].as_f64().unwrap() - 75.0).abs() < 1e-6);

    // HTML, escaped
    let resp = app
        .clone()
        .oneshot(Request::get("/ring").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = body_string(resp).await;
    assert!(html.contains("ing-a") && html.contains("ing-b&lt;") && html.contains("75.0%"));
    assert!(!html.contains("ing-b<"));

    // Forget
    let resp = app
        .clone()
        .oneshot(
            Request::post("/ring")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("forget=ing-a"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(resp.status().is_redirection());
    assert!(ml.get(INGESTER_RING_KEY)["ing-a"].tombstone);
    let start = Instant::now();
    while ring.instances().len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "ring did not drop ing-a"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Memberlist JSON and HTML
    let resp = app
        .clone()
        .oneshot(
            Request::get("/memberlist")
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
    assert_eq!(v["members"][0]["name"], "pages");
    assert_eq!(v["members"][0]["state"], "alive");
    assert_eq!(v["keys"][0]["key"], INGESTER_RING_KEY);
    assert_eq!(v["keys"][0]["entries"], 1);
    assert_eq!(v["keys"][0]["tombstones"], 1);
    let resp = app
        .oneshot(Request::get("/memberlist").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let html = body_string(resp).await;
    assert!(html.contains("pages") && html.contains(INGESTER_RING_KEY));
    ml.leave().await;
}

/// `/store-gateway/ring`: the store-gateway ring's own page, filled by a lifecycler under its
/// key, next to (not instead of) the ingester ring; its forget form posts back to it.
#[tokio::test]
async fn store_gateway_ring_page() {
    use norn_ring::lifecycler::{Lifecycler, LifecyclerConfig};
    use norn_ring::{BlocksOp, BlocksSharding, STORE_GATEWAY_RING_KEY};

    let registry = prometheus::Registry::new();
    let ml = Memberlist::start(
        MemberlistConfig {
            node_name: "sg-pages".to_string(),
            bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bind_port: 0,
            advertise_addr: None,
            advertise_port: None,
            join_members: vec![],
            gossip_interval: Duration::from_millis(200),
            pull_push_interval: Duration::from_secs(30),
            encryption_key: None,
        },
        &registry,
    )
    .await
    .unwrap();
    let ring = Ring::new(RingConfig::default());
    spawn_ring_watcher(
        std::sync::Arc::clone(&ml),
        STORE_GATEWAY_RING_KEY,
        ring.clone(),
        None,
        &registry,
    )
    .unwrap();
    let lc = Lifecycler::start(
        LifecyclerConfig {
            id: "sg-1".into(),
            addr: "127.0.0.1:9095".into(),
            zone: String::new(),
            num_tokens: 512,
            tokens_file_path: None,
            heartbeat_period: Duration::from_millis(200),
        },
        std::sync::Arc::clone(&ml),
        STORE_GATEWAY_RING_KEY,
    )
    .await
    .unwrap();
    let start = Instant::now();
    while ring.instances().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "sg-1 not in the ring"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // JOINING: it loads its blocks but is not asked for them yet.
    let sharding = BlocksSharding::new(ring.clone());
    let shard = sharding.tenant_shard("t", 0, now_ms());
    assert!(shard.replicas("blk", BlocksOp::Read).is_empty());
    assert_eq!(shard.replicas("blk", BlocksOp::Sync)[0].id, "sg-1");
    lc.set_state(InstanceState::Active);

    let app = norn_ring::http::ring_page_at(
        ring.clone(),
        std::sync::Arc::clone(&ml),
        STORE_GATEWAY_RING_KEY,
        "/store-gateway/ring",
    );
    let resp = app
        .clone()
        .oneshot(
            Request::get("/store-gateway/ring")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html = body_string(resp).await;
    assert!(html.contains("sg-1") && html.contains("action=\"/store-gateway/ring\""));
    assert!(html.contains(STORE_GATEWAY_RING_KEY));
    // The ingester ring's path is not served by this router.
    let resp = app
        .clone()
        .oneshot(Request::get("/ring").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app
        .oneshot(
            Request::post("/store-gateway/ring")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("forget=sg-1"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(resp.status().is_redirection());
    assert_eq!(
        resp.headers()[header::LOCATION].to_str().unwrap(),
        "/store-gateway/ring"
    );
    assert!(ml.get(STORE_GATEWAY_RING_KEY)["sg-1"].tombstone);
    ml.leave().await;
}
