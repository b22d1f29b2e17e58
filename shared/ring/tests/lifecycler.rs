//! Lifecyclers and ring watchers over a loopback memberlist cluster.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_model::now_ms;
use norn_ring::lifecycler::{INGESTER_RING_KEY, Lifecycler, LifecyclerConfig, spawn_ring_watcher};
use norn_ring::{InstanceState, Memberlist, MemberlistConfig, Operation, Ring, RingConfig};

async fn node(name: &str, join: Vec<String>, registry: &prometheus::Registry) -> Arc<Memberlist> {
    let config = MemberlistConfig {
        node_name: name.to_string(),
        bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        bind_port: 0,
        advertise_addr: None,
        advertise_port: None,
        join_members: join,
        gossip_interval: Duration::from_millis(200),
        pull_push_interval: Duration::from_secs(30),
        encryption_key: None,
    };
    Memberlist::start(config, registry).await.unwrap()
}

async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lc_config(id: &str, tokens_file: Option<std::path::PathBuf>) -> LifecyclerConfig {
    LifecyclerConfig {
        id: id.to_string(),
        addr: format!("127.0.0.1:{}", 9000 + id.len()),
        zone: String::new(),
        num_tokens: 32,
        tokens_file_path: tokens_file,
        heartbeat_period: Duration::from_millis(200),
    }
}

fn ids(ring: &Ring) -> Vec<String> {
    ring.instances().into_iter().map(|i| i.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecyclers_fill_every_ring_and_leave_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut mls = Vec::new();
    let mut rings = Vec::new();
    let mut registries = Vec::new();
    for i in 0..3 {
        let registry = prometheus::Registry::new();
        let join = mls
            .first()
            .map(|m: &Arc<Memberlist>| vec![m.local_addr().to_string()])
            .unwrap_or_default();
        let ml = node(&format!("node-{i}"), join, &registry).await;
        let ring = Ring::new(RingConfig {
            replication_factor: 3,
            heartbeat_timeout: Duration::from_secs(5),
            zone_awareness_enabled: false,
        });
        spawn_ring_watcher(
            Arc::clone(&ml),
            INGESTER_RING_KEY,
            ring.clone(),
            None,
            &registry,
        )
        .unwrap();
        mls.push(ml);
        rings.push(ring);
        registries.push(registry);
    }
    let mut lcs = Vec::new();
    for (i, ml) in mls.iter().enumerate() {
        let path = dir.path().join(format!("ing-{i}.tokens"));
        let lc = Lifecycler::start(
            lc_config(&format!("ing-{i}"), Some(path)),
            Arc::clone(ml),
            INGESTER_RING_KEY,
        )
        .await
        .unwrap();
        assert_eq!(lc.state(), InstanceState::Joining);
        lcs.push(lc);
    }
    for ring in &rings {
        eventually("3 instances in every ring", Duration::from_secs(5), || {
            ring.instances().len() == 3
        })
        .await;
        assert!(ring.get(42, Operation::Write, now_ms()).is_err());
    }
    for lc in &lcs {
        lc.set_state(InstanceState::Active);
    }
    for ring in &rings {
        eventually("writable rings", Duration::from_secs(5), || {
            ring.get(42, Operation::Write, now_ms())
                .is_ok_and(|s| s.instances.len() == 3)
        })
        .await;
    }
    let names: Vec<String> = registries[0]
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert!(
        names.contains(&"norn_ring_members".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"norn_memberlist_kv_entries".to_string()));

    // Leaving: LEAVING first (reads still go there), then gone from every ring.
    let tokens_before = lcs[2].desc().tokens;
    lcs[2].set_state(InstanceState::Leaving);
    eventually("leaving seen", Duration::from_secs(5), || {
        rings[0]
            .instances()
            .iter()
            .any(|i| i.id == "ing-2" && i.state == InstanceState::Leaving)
    })
    .await;
    lcs[2].leave().await;
    for ring in &rings {
        eventually("ing-2 gone", Duration::from_secs(5), || {
            ids(ring) == vec!["ing-0", "ing-1"]
        })
        .await;
    }
    // Heartbeats stopped: it stays gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&rings[0]), vec!["ing-0", "ing-1"]);

    // Restarting with the same tokens file keeps the tokens.
    let lc = Lifecycler::start(
        lc_config("ing-2", Some(dir.path().join("ing-2.tokens"))),
        Arc::clone(&mls[2]),
        INGESTER_RING_KEY,
    )
    .await
    .unwrap();
    assert_eq!(lc.desc().tokens, tokens_before);
    eventually("ing-2 back", Duration::from_secs(5), || {
        rings[0].instances().len() == 3
    })
    .await;
    for ml in &mls {
        ml.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_stop_heartbeating_are_forgotten() {
    let registry = prometheus::Registry::new();
    let a = node("a", vec![], &registry).await;
    let b = node(
        "b",
        vec![a.local_addr().to_string()],
        &prometheus::Registry::new(),
    )
    .await;
    let ring = Ring::new(RingConfig {
        replication_factor: 3,
        heartbeat_timeout: Duration::from_secs(1),
        zone_awareness_enabled: false,
    });
    spawn_ring_watcher(
        Arc::clone(&a),
        INGESTER_RING_KEY,
        ring.clone(),
        Some(Duration::from_secs(2)),
        &registry,
    )
    .unwrap();
    let keep = Lifecycler::start(lc_config("keep", None), Arc::clone(&a), INGESTER_RING_KEY)
        .await
        .unwrap();
    let crash = Lifecycler::start(lc_config("crash", None), Arc::clone(&b), INGESTER_RING_KEY)
        .await
        .unwrap();
    eventually("both in the ring", Duration::from_secs(5), || {
        ids(&ring) == vec!["crash", "keep"]
    })
    .await;
    // A crash: no leave, heartbeats just stop.
    drop(crash);
    eventually("crash forgotten", Duration::from_secs(8), || {
        ids(&ring) == vec!["keep"]
    })
    .await;
    // The tombstone reached the other node too.
    eventually("tombstone everywhere", Duration::from_secs(3), || {
        b.get(INGESTER_RING_KEY)
            .get("crash")
            .is_some_and(|e| e.tombstone)
    })
    .await;
    // A restarted instance heartbeats with a newer timestamp and comes back.
    let _again = Lifecycler::start(lc_config("crash", None), Arc::clone(&b), INGESTER_RING_KEY)
        .await
        .unwrap();
    eventually("crash back", Duration::from_secs(5), || {
        ids(&ring) == vec!["crash", "keep"]
    })
    .await;
    assert_eq!(keep.state(), InstanceState::Joining);
    a.leave().await;
    b.leave().await;
}
