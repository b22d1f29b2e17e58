//! Loopback clusters of memberlist nodes: KV propagation, failure detection and push/pull.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_ring::{Entry, Memberlist, MemberlistConfig};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A node's config on 127.0.0.1 (`port` 0: any free one), gossiping every 200 ms.
fn config(name: &str, port: u16, join: Vec<String>) -> MemberlistConfig {
    MemberlistConfig {
        node_name: name.to_string(),
        bind_addr: LOCALHOST,
        bind_port: port,
        advertise_addr: None,
        advertise_port: None,
        join_members: join,
        gossip_interval: Duration::from_millis(200),
        pull_push_interval: Duration::from_secs(30),
        encryption_key: None,
    }
}

async fn node(name: &str, join: Vec<String>) -> Arc<Memberlist> {
    Memberlist::start(config(name, 0, join), &prometheus::Registry::new())
        .await
        .unwrap()
}

async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(m: &Memberlist, name: &str) -> bool {
    m.members()
        .iter()
        .any(|i| i.name == name && i.state == "alive")
}

async fn cluster(n: usize) -> Vec<Arc<Memberlist>> {
    let first = node("node-0", vec![]).await;
    let seed = first.local_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(node(&format!("node-{i}"), vec![seed.clone()]).await);
    }
    for a in &nodes {
        for i in 0..n {
            let name = format!("node-{i}");
            eventually(&format!("{name} alive"), Duration::from_secs(10), || {
                alive(a, &name)
            })
            .await;
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_reach_every_node() {
    let nodes = cluster(3).await;
    let mut watch = nodes[0].watch();
    let before = *watch.borrow_and_update();
    nodes[1].put("ingester", "a", Entry::value(10, b"\"hello\"".to_vec()));
    for n in &nodes {
        eventually("put visible", Duration::from_secs(3), || {
            n.get("ingester")
                .get("a")
                .is_some_and(|e| e.value == b"\"hello\"")
        })
        .await;
    }
    assert!(*watch.borrow_and_update() > before);

    // An older write loses everywhere; a tombstone wins everywhere.
    nodes[2].put("ingester", "a", Entry::value(5, b"old".to_vec()));
    nodes[2].put("ingester", "b", Entry::tombstone(20));
    nodes[0].put("ingester", "a", Entry::tombstone(11));
    for n in &nodes {
        eventually("tombstones visible", Duration::from_secs(3), || {
            let m = n.get("ingester");
            m.get("a").is_some_and(|e| e.tombstone) && m.get("b").is_some_and(|e| e.tombstone)
        })
        .await;
    }

    // Larger than a datagram: goes by TCP.
    let big = vec![b'x'; 200_000];
    nodes[0].put("big", "blob", Entry::value(1, big.clone()));
    for n in &nodes {
        eventually("big entry visible", Duration::from_secs(3), || {
            n.get("big").get("blob").is_some_and(|e| e.value == big)
        })
        .await;
    }
    for n in &nodes {
        n.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_nodes_are_no_longer_alive() {
    let mut nodes = cluster(4).await;
    // A clean leave is announced.
    nodes[3].leave().await;
    for n in &nodes[..3] {
        eventually("node-3 not alive", Duration::from_secs(10), || {
            !alive(n, "node-3")
        })
        .await;
    }
    // A crash (dropped without leaving) is found by failed probes.
    drop(nodes.remove(2));
    for n in &nodes[..2] {
        eventually("node-2 not alive", Duration::from_secs(30), || {
            !alive(n, "node-2")
        })
        .await;
    }
    for n in &nodes {
        n.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_gets_full_state_and_start_order_does_not_matter() {
    // `early` starts first, pointing at a seed that is not up yet. The seed's port is picked
    // free and released, so another socket (often a TCP connection's ephemeral port, since
    // the seed binds TCP too) can take it before the seed binds: then both start over on a
    // new port.
    let mut attempt = 0;
    let (early, seed) = loop {
        attempt += 1;
        let seed_port = {
            let s = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
            s.local_addr().unwrap().port()
        };
        let early = node("early", vec![format!("127.0.0.1:{seed_port}")]).await;
        early.put("ha-tracker", "t1", Entry::value(3, b"{}".to_vec()));
        let seed = config("seed", seed_port, vec![]);
        match Memberlist::start(seed, &prometheus::Registry::new()).await {
            Ok(seed) => break (early, seed),
            Err(err) => {
                assert!(attempt < 5, "binding the seed, attempt {attempt}: {err}");
                early.leave().await;
            }
        }
    };
    seed.put("ingester", "x", Entry::value(1, b"1".to_vec()));
    eventually("early joined", Duration::from_secs(10), || {
        alive(&seed, "early") && alive(&early, "seed")
    })
    .await;
    eventually("seed has early's state", Duration::from_secs(5), || {
        seed.get("ha-tracker").contains_key("t1")
    })
    .await;

    // A fresh node gets everything by push/pull, without any new put.
    let late = node("late", vec![seed.local_addr().to_string()]).await;
    eventually("late has the full state", Duration::from_secs(5), || {
        late.get("ingester").contains_key("x") && late.get("ha-tracker").contains_key("t1")
    })
    .await;
    for n in [&early, &seed, &late] {
        n.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_see_a_put_within_two_seconds() {
    let nodes = cluster(5).await;
    for (i, writer) in nodes.iter().enumerate() {
        let sub = format!("from-{i}");
        let start = Instant::now();
        writer.put("ingester", &sub, Entry::value(1, vec![i as u8]));
        for n in &nodes {
            eventually("put visible", Duration::from_secs(2), || {
                n.get("ingester").contains_key(&sub)
            })
            .await;
        }
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    for n in &nodes {
        n.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_with_same_name_and_port_rejoins() {
    let seed = node("seed", vec![]).await;
    let join = vec![seed.local_addr().to_string()];
    let first = node("worker", join.clone()).await;
    let port = first.local_addr().port();
    eventually("worker alive", Duration::from_secs(10), || {
        alive(&seed, "worker")
    })
    .await;
    first.put("ingester", "w", Entry::value(1, b"1".to_vec()));
    // Crash: dropped without leaving; wait until the seed declares it gone.
    drop(first);
    eventually("worker not alive", Duration::from_secs(30), || {
        !alive(&seed, "worker")
    })
    .await;
    // Same name, same address: a newer generation supersedes the down identity.
    let config = config("worker", port, join);
    let start = Instant::now();
    let again = loop {
        // The old sockets close once the old node's tasks notice the stop.
        match Memberlist::start(config.clone(), &prometheus::Registry::new()).await {
            Ok(m) => break m,
            Err(err) => {
                assert!(start.elapsed() < Duration::from_secs(5), "rebinding: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eventually("worker alive again", Duration::from_secs(10), || {
        alive(&seed, "worker") && alive(&again, "seed")
    })
    .await;
    // It got its own earlier write back by push/pull.
    eventually("state restored", Duration::from_secs(5), || {
        again.get("ingester").contains_key("w")
    })
    .await;
    assert_eq!(
        seed.members().iter().filter(|m| m.name == "worker").count(),
        1
    );
    again.leave().await;
    seed.leave().await;
}

async fn keyed_node(
    name: &str,
    join: Vec<String>,
    key: Option<[u8; 32]>,
) -> (Arc<Memberlist>, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let config = MemberlistConfig {
        node_name: name.to_string(),
        bind_addr: LOCALHOST,
        bind_port: 0,
        join_members: join,
        gossip_interval: Duration::from_millis(100),
        pull_push_interval: Duration::from_secs(1),
        encryption_key: key.map(|k| Arc::new(norn_ring::GossipKey::from_bytes(&k).unwrap())),
        ..MemberlistConfig::default()
    };
    (
        Memberlist::start(config, &registry).await.unwrap(),
        registry,
    )
}

fn auth_failures(r: &prometheus::Registry) -> f64 {
    r.gather()
        .iter()
        .find(|f| f.name() == "norn_memberlist_authentication_failures_total")
        .map(|f| f.get_metric()[0].get_counter().get_value())
        .unwrap_or(0.0)
}

/// With an encryption key, members with the same key gossip as usual (membership and KV),
/// while a node without the key or with another one never joins, never sees the state, and
/// its packets are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encryption_key_keeps_outsiders_out() {
    let key = [42u8; 32];
    let (a, reg_a) = keyed_node("keyed-a", vec![], Some(key)).await;
    let seed = a.local_addr().to_string();
    let (b, _) = keyed_node("keyed-b", vec![seed.clone()], Some(key)).await;
    eventually("b joins a", Duration::from_secs(10), || {
        alive(&a, "keyed-b") && alive(&b, "keyed-a")
    })
    .await;
    a.put("ingester", "x", Entry::value(10, b"\"secret\"".to_vec()));
    eventually("b sees the put", Duration::from_secs(5), || {
        b.get("ingester").contains_key("x")
    })
    .await;

    let (plain, _) = keyed_node("plain", vec![seed.clone()], None).await;
    let (other, _) = keyed_node("other-key", vec![seed], Some([7u8; 32])).await;
    eventually(
        "a drops outsiders' packets",
        Duration::from_secs(10),
        || auth_failures(&reg_a) >= 2.0,
    )
    .await;
    // Several push/pull and join rounds later, still nobody got in either direction.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for outsider in [&plain, &other] {
        assert!(!alive(&a, outsider.node_name()));
        assert!(!alive(outsider, "keyed-a"));
        assert!(outsider.get("ingester").is_empty());
    }
    assert_eq!(a.members().iter().filter(|m| m.state == "alive").count(), 2);
}
