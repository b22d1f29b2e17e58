//! The memcached backend against real memcached servers (`/usr/bin/memcached`, Debian's
//! `memcached`), started on free 127.0.0.1 ports and killed by each test.
//!
//! Without the binary every test prints `SKIP` and passes, unless `NORN_REQUIRE_PEERS=1`
//! (scripts/test.sh), which turns the absence into a failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use norn_cache::{Cache, CacheConfig, CacheMetrics, MemcachedCache, MemcachedConfig};

const BIN: &str = "/usr/bin/memcached";

use norn_storage::testing::free_port;

/// A memcached process, killed on drop.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    /// Starts one, or `None` (after printing SKIP) when the binary is missing.
    fn start() -> Option<Memcached> {
        Self::start_on(free_port())
    }

    /// Starts one on `port`.
    fn start_on(port: u16) -> Option<Memcached> {
        if !PathBuf::from(BIN).is_file() {
            assert!(
                std::env::var("NORN_REQUIRE_PEERS").as_deref() != Ok("1"),
                "{BIN} is not installed but NORN_REQUIRE_PEERS=1 (apt-get install memcached)"
            );
            eprintln!("SKIP: {BIN} not found (apt-get install memcached)");
            return None;
        }
        let mut cmd = Command::new(BIN);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]);
        // memcached refuses to run as root unless told which user to be.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning memcached");
        let m = Memcached { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "memcached did not listen in 10s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(m)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `curr_items` from the server's `stats`.
    fn items(&self) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"stats\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.trim_end().strip_prefix("STAT curr_items ") {
                return v.parse().unwrap();
            }
            assert_ne!(line.trim_end(), "END", "no curr_items in stats");
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cache(
    addrs: &[String],
    tweak: impl FnOnce(&mut MemcachedConfig),
) -> (MemcachedCache, Arc<CacheMetrics>) {
    let mut cfg = CacheConfig::with_backend("memcached", 1).memcached;
    cfg.addresses = addrs.join(",");
    cfg.timeout = Duration::from_millis(500);
    tweak(&mut cfg);
    let m = Arc::new(CacheMetrics::unregistered("test", "memcached"));
    (MemcachedCache::new(&cfg, Arc::clone(&m)).unwrap(), m)
}

fn items(n: usize, prefix: &str) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}{i}"),
                Bytes::from(format!("value-{i}-{prefix}")),
            )
        })
        .collect()
}

fn failures(m: &CacheMetrics, op: &str, reason: &str) -> u64 {
    m.failures.with_label_values(&[op, reason]).get()
}

/// Keys spread over two servers, fetched in batches with one multi-get per batch.
#[tokio::test]
async fn multi_get_across_two_servers() {
    let (Some(a), Some(b)) = (Memcached::start(), Memcached::start()) else {
        return;
    };
    let (c, m) = cache(&[a.addr(), b.addr()], |c| c.max_get_multi_batch_size = 7);
    let written = items(200, "tenant-1:postings:");
    c.set_many(written.clone(), Duration::ZERO).await;
    assert_eq!(m.items_stored.get(), 200);
    // Both servers hold a share; together, everything.
    let (ia, ib) = (a.items(), b.items());
    assert_eq!(ia + ib, 200);
    assert!(ia > 50 && ib > 50, "{ia} / {ib}");

    let mut keys: Vec<String> = written.iter().map(|(k, _)| k.clone()).collect();
    keys.push("absent".into());
    keys.push("tenant-1:postings:3".into()); // asked twice
    let got = c.get_many(&keys).await;
    assert_eq!(got.len(), 200);
    for (k, v) in &written {
        assert_eq!(&got[k], v, "{k}");
    }
    assert_eq!(m.items_fetched.get(), 202);
    assert_eq!(m.items_hit.get(), 201);
    assert_eq!(m.items_missed.get(), 1);
    assert_eq!(m.failures.with_label_values(&["get", "io"]).get(), 0);
    // Connections went back to the pools.
    assert!(c.idle_connections().iter().all(|(_, n)| *n >= 1));
}

/// Keys memcached refuses (over 250 bytes, spaces, control characters) are hashed, and two
/// such keys stay distinct.
#[tokio::test]
async fn long_and_odd_keys() {
    let Some(a) = Memcached::start() else { return };
    let (c, m) = cache(&[a.addr()], |_| {});
    let long1 = format!("t:{}", "x".repeat(400));
    let long2 = format!("t:{}y", "x".repeat(400));
    let spaced = "tenant a/series {job=\"x y\"}".to_string();
    let ctl = "a\r\nset injected 0 0 1".to_string();
    c.set_many(
        vec![
            (long1.clone(), Bytes::from_static(b"one")),
            (long2.clone(), Bytes::from_static(b"two")),
            (spaced.clone(), Bytes::from_static(b"three")),
            (ctl.clone(), Bytes::from_static(b"four")),
        ],
        Duration::ZERO,
    )
    .await;
    let got = c
        .get_many(&[long1.clone(), long2.clone(), spaced.clone(), ctl.clone()])
        .await;
    assert_eq!(got[&long1], "one");
    assert_eq!(got[&long2], "two");
    assert_eq!(got[&spaced], "three");
    assert_eq!(got[&ctl], "four");
    assert_eq!(a.items(), 4, "no command was injected through a key");
    assert_eq!(m.failures.with_label_values(&["set", "protocol"]).get(), 0);
}

/// Items above max_item_size are not sent; an item the server itself refuses (its own 1 MiB
/// limit) is a counted server error, not a failure of the others.
#[tokio::test]
async fn items_too_large() {
    let Some(a) = Memcached::start() else { return };
    let (c, m) = cache(&[a.addr()], |c| c.max_item_size = 1000);
    c.set_many(
        vec![
            ("small".into(), Bytes::from(vec![1u8; 1000])),
            ("big".into(), Bytes::from(vec![2u8; 1001])),
        ],
        Duration::ZERO,
    )
    .await;
    assert_eq!(m.items_skipped_too_large.get(), 1);
    assert_eq!(m.items_stored.get(), 1);
    let got = c.get_many(&["small".into(), "big".into()]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(a.items(), 1);

    let (c, m) = cache(&[a.addr()], |c| c.max_item_size = 4 << 20);
    c.set_many(
        vec![("huge".into(), Bytes::from(vec![3u8; 2 << 20]))],
        Duration::ZERO,
    )
    .await;
    assert_eq!(failures(&m, "set", "server-error"), 1);
    assert!(c.get_many(&["huge".into()]).await.is_empty());
    // The connection was dropped, not reused mid-reply: the next exchange works.
    c.set_many(
        vec![("after".into(), Bytes::from_static(b"ok"))],
        Duration::ZERO,
    )
    .await;
    assert_eq!(c.get_many(&["after".into()]).await["after"], "ok");
}

#[tokio::test]
async fn ttl_expires_items() {
    let Some(a) = Memcached::start() else { return };
    let (c, _) = cache(&[a.addr()], |_| {});
    c.set_many(
        vec![("short".into(), Bytes::from_static(b"1"))],
        Duration::from_secs(1),
    )
    .await;
    c.set_many(
        vec![("long".into(), Bytes::from_static(b"2"))],
        Duration::from_secs(3600),
    )
    .await;
    assert_eq!(c.get_many(&["short".into(), "long".into()]).await.len(), 2);
    // memcached's clock ticks once a second: 1s may last until just under 2s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = c.get_many(&["short".into(), "long".into()]).await;
    assert!(!got.contains_key("short"));
    assert!(got.contains_key("long"));
}

/// One of two servers killed mid-test: its keys are misses, counted as failures, the other
/// server's keys still hit, and nothing waits longer than the timeout.
#[tokio::test]
async fn server_killed_mid_test() {
    let (Some(a), Some(mut b)) = (Memcached::start(), Memcached::start()) else {
        return;
    };
    let (c, m) = cache(&[a.addr(), b.addr()], |_| {});
    let written = items(100, "k");
    c.set_many(written.clone(), Duration::ZERO).await;
    let on_a = a.items() as usize;
    let keys: Vec<String> = written.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(c.get_many(&keys).await.len(), 100);

    b.kill();
    let start = Instant::now();
    let got = c.get_many(&keys).await;
    let took = start.elapsed();
    assert_eq!(got.len(), on_a, "the live server's keys still hit");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(m.items_missed.get(), (100 - on_a) as u64);
    let failed = failures(&m, "get", "io") + failures(&m, "get", "timeout");
    assert!(failed >= 1, "the dead server's batch is counted");
    // Writes to the dead server fail the same way, quickly.
    let start = Instant::now();
    c.set_many(items(20, "again"), Duration::ZERO).await;
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert!(failures(&m, "set", "io") + failures(&m, "set", "timeout") >= 1);
}

/// A server that accepts connections and never answers costs one timeout, not a hang.
#[tokio::test]
async fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Accept and hold connections without reading or answering.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let (c, m) = cache(&[addr], |c| c.timeout = Duration::from_millis(200));
    let start = Instant::now();
    let got = c.get_many(&["a".into(), "b".into()]).await;
    let took = start.elapsed();
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
    assert_eq!(failures(&m, "get", "timeout"), 1);
    assert_eq!(m.items_missed.get(), 2);
    drop(c);
    holder.join().unwrap();
}

/// Nothing listening at all: a refused connection is an immediate miss.
#[tokio::test]
async fn no_server_is_a_miss() {
    let port = free_port();
    let (c, m) = cache(&[format!("127.0.0.1:{port}")], |_| {});
    c.set_many(vec![("a".into(), Bytes::from_static(b"1"))], Duration::ZERO)
        .await;
    assert!(c.get_many(&["a".into()]).await.is_empty());
    assert_eq!(failures(&m, "get", "io"), 1);
    assert_eq!(failures(&m, "set", "io"), 1);
}

/// A server restarted on the same port: the pooled connections to the old process are dead;
/// the first use of one is retried on a new connection, so nothing fails.
#[tokio::test]
async fn restarted_server_is_used_again_without_failures() {
    let Some(mut a) = Memcached::start() else {
        return;
    };
    let port = a.port;
    let (c, m) = cache(&[a.addr()], |_| {});
    c.set_many(items(10, "before"), Duration::ZERO).await;
    assert_eq!(c.get_many(&["before1".into()]).await.len(), 1);
    assert!(c.idle_connections()[0].1 >= 1, "a pooled connection");
    a.kill();
    let Some(_b) = Memcached::start_on(port) else {
        return;
    };
    c.set_many(items(10, "after"), Duration::ZERO).await;
    let got = c.get_many(&["after1".into(), "before1".into()]).await;
    assert!(got.contains_key("after1"));
    assert!(
        !got.contains_key("before1"),
        "a new process holds nothing from before"
    );
    let failed: u64 = ["io", "timeout", "protocol"]
        .iter()
        .flat_map(|r| ["get", "set"].map(|op| failures(&m, op, r)))
        .sum();
    assert_eq!(failed, 0);
}

/// `dns+host:port` resolves the name once at start; every address it resolves to is a server.
#[tokio::test]
async fn dns_addresses_are_resolved() {
    let Some(a) = Memcached::start() else { return };
    let (c, m) = cache(&[format!("dns+127.0.0.1:{}", a.port)], |_| {});
    assert_eq!(m.servers.get(), 1);
    assert_eq!(c.idle_connections()[0].0, a.addr());
    c.set_many(items(5, "d"), Duration::ZERO).await;
    assert_eq!(
        c.get_many(&["d0".into(), "d4".into()]).await.len(),
        2,
        "served through the resolved address"
    );
}
