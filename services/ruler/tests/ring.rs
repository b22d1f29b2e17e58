//! Two rulers in one loopback gossip cluster split the rule groups through the ruler ring:
//! once each sees the other ACTIVE, every group is owned by exactly one of them and each owns
//! a share; when one leaves, the other owns everything.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_ring::{LifecyclerConfig, Memberlist, MemberlistConfig};
use norn_ruler::RingMembership;
use norn_ruler::ring::{NUM_TOKENS, Ownership};

async fn node(name: &str, join: Vec<String>) -> Arc<Memberlist> {
    Memberlist::start(
        MemberlistConfig {
            node_name: name.to_string(),
            bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bind_port: 0,
            advertise_addr: None,
            advertise_port: None,
            join_members: join,
            gossip_interval: Duration::from_millis(100),
            pull_push_interval: Duration::from_secs(30),
            encryption_key: None,
        },
        &prometheus::Registry::new(),
    )
    .await
    .unwrap()
}

async fn ruler(ml: &Arc<Memberlist>, id: &str) -> Ownership {
    Ownership::join(
        RingMembership {
            memberlist: Arc::clone(ml),
            lifecycler: LifecyclerConfig {
                id: id.into(),
                addr: "127.0.0.1:8080".into(),
                zone: String::new(),
                num_tokens: NUM_TOKENS,
                tokens_file_path: None,
                heartbeat_period: Duration::from_millis(100),
            },
            heartbeat_timeout: Duration::from_secs(5),
        },
        &prometheus::Registry::new(),
    )
    .await
    .unwrap()
}

const GROUPS: usize = 200;

/// How many of the groups each ruler owns, and how many are owned by exactly one.
fn split(a: &Ownership, b: &Ownership) -> (usize, usize, usize) {
    let now = norn_model::now_ms();
    let (mut na, mut nb, mut once) = (0, 0, 0);
    for i in 0..GROUPS {
        let (t, ns, g) = (
            format!("t{}", i % 7),
            format!("ns{}", i % 3),
            format!("g{i}"),
        );
        let oa = a.owns(&t, &ns, &g, now);
        let ob = b.owns(&t, &ns, &g, now);
        na += oa as usize;
        nb += ob as usize;
        once += (oa != ob) as usize;
    }
    (na, nb, once)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rulers_split_the_groups() {
    let ml_a = node("ruler-a", vec![]).await;
    let ml_b = node("ruler-b", vec![ml_a.local_addr().to_string()]).await;
    let a = ruler(&ml_a, "ruler-a").await;
    let b = ruler(&ml_b, "ruler-b").await;
    eventually("both rulers to see the split", || {
        let (na, nb, once) = split(&a, &b);
        na > 0 && nb > 0 && once == GROUPS && na + nb == GROUPS
    })
    .await;
    let (na, nb, _) = split(&a, &b);
    // 128 random tokens each: neither is left with a sliver.
    assert!(na > GROUPS / 5 && nb > GROUPS / 5, "{na} / {nb}");

    b.leave().await;
    eventually("the remaining ruler to own every group", || {
        split(&a, &b).0 == GROUPS
    })
    .await;
    a.leave().await;
    ml_b.leave().await;
    ml_a.leave().await;
}
