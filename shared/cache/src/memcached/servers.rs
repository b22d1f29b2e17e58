//! The memcached servers: the address list (with `dns+` names resolved), which server owns a
//! key (jump consistent hash, as Mimir's selector), and a small pool of idle connections per
//! server.
//!
//! Servers are sorted by address so that every replica with the same list sends a key to the
//! same server; jump hashing moves only ~1/n of the keys when a server is added. A connection
//! goes back to the pool only after a complete, well-formed exchange, so a reply cut by a
//! timeout never leaks into the next request on that connection.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::Address;

/// A `dns+` list is resolved again after a failure at most this often.
const RESOLVE_BACKOFF: Duration = Duration::from_secs(5);

/// One open connection.
pub type Conn = BufReader<TcpStream>;

/// One memcached server and its idle connections.
#[derive(Debug)]
pub struct Server {
    /// What is dialled: `host:port` as configured, or a resolved `ip:port`.
    pub addr: String,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
}

impl Server {
    fn new(addr: String, max_idle: usize) -> Self {
        Server {
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An idle connection (`true`: pooled), or a new one when there is none or `fresh` is
    /// asked for (the caller bounds the dial with its timeout).
    pub async fn conn(&self, fresh: bool) -> std::io::Result<(Conn, bool)> {
        if !fresh && let Some(c) = self.idle.lock().pop() {
            return Ok((c, true));
        }
        Ok((self.dial().await?, false))
    }

    async fn dial(&self) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    }

    /// Returns a connection after a complete exchange; beyond `max_idle` it is closed.
    pub fn put_back(&self, conn: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Idle connections now held (tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }
}

/// The server list and its resolution.
#[derive(Debug)]
pub struct Servers {
    addresses: Vec<Address>,
    max_idle: usize,
    current: RwLock<Arc<Vec<Arc<Server>>>>,
    /// When resolution last ran, and whether a failure asked for another.
    resolve_state: Mutex<(Option<Instant>, bool)>,
}

impl Servers {
    /// The list for `addresses`; `dns+` names are resolved now (a failure leaves them out until
    /// a later resolution succeeds, so a cache built before its DNS record exists still works
    /// once the record appears).
    pub fn new(addresses: Vec<Address>, max_idle: usize) -> Self {
        let s = Servers {
            addresses,
            max_idle,
            current: RwLock::new(Arc::new(Vec::new())),
            resolve_state: Mutex::new((None, false)),
        };
        s.resolve();
        s
    }

    /// The servers, sorted by address.
    pub fn list(&self) -> Arc<Vec<Arc<Server>>> {
        Arc::clone(&self.current.read())
    }

    /// Whether any address is a `dns+` name (only those can change by resolving again).
    fn has_dns(&self) -> bool {
        self.addresses
            .iter()
            .any(|a| matches!(a, Address::Dns { .. }))
    }

    /// Asks for a new resolution (a server failed: its address may have changed).
    pub fn note_failure(&self) {
        if self.has_dns() {
            self.resolve_state.lock().1 = true;
        }
    }

    /// Whether [`refresh_if_needed`](Self::refresh_if_needed) would resolve now: a failure
    /// (or an empty list) asked for it and the last resolution is older than the backoff.
    /// Cheap, so callers check it before leaving the reactor.
    pub fn refresh_due(&self) -> bool {
        if !self.has_dns() {
            return false;
        }
        let st = self.resolve_state.lock();
        let wanted = st.1 || self.current.read().is_empty();
        wanted && st.0.is_none_or(|t| t.elapsed() >= RESOLVE_BACKOFF)
    }

    /// Resolves again if [`refresh_due`](Self::refresh_due). Blocking DNS: the caller runs it
    /// off the reactor.
    pub fn refresh_if_needed(&self) -> bool {
        {
            let mut st = self.resolve_state.lock();
            // Checked again under the lock: two callers may both have seen it due.
            let wanted = st.1 || self.current.read().is_empty();
            let due = st.0.is_none_or(|t| t.elapsed() >= RESOLVE_BACKOFF);
            if !(self.has_dns() && wanted && due) {
                return false;
            }
            *st = (Some(Instant::now()), false);
        }
        self.resolve();
        true
    }

    /// Builds the list from the addresses, keeping the pools of servers that remain.
    fn resolve(&self) {
        let mut addrs: Vec<String> = Vec::new();
        for a in &self.addresses {
            match a {
                Address::Static(hp) => addrs.push(hp.clone()),
                Address::Dns { host, port } => match (host.as_str(), *port).to_socket_addrs() {
                    Ok(found) => addrs.extend(found.map(|sa| sa.to_string())),
                    Err(e) => {
                        tracing::warn!(host = %host, error = %e, "cannot resolve memcached address; retrying after the next failure");
                    }
                },
            }
        }
        addrs.sort();
        addrs.dedup();
        let old = self.list();
        let servers: Vec<Arc<Server>> = addrs
            .into_iter()
            .map(|a| {
                old.iter()
                    .find(|s| s.addr == a)
                    .map(Arc::clone)
                    .unwrap_or_else(|| Arc::new(Server::new(a, self.max_idle)))
            })
            .collect();
        *self.current.write() = Arc::new(servers);
        self.resolve_state.lock().0 = Some(Instant::now());
    }
}

/// The server (index into a list of `n`) that owns `wire_key`: jump consistent hash
/// (Lamping & Veach) of the key's xxh3.
pub fn pick(wire_key: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut key = xxh3_64(wire_key.as_bytes());
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_spreads_and_moves_few_keys() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        let mut counts = [0usize; 4];
        for k in &keys {
            counts[pick(k, 4)] += 1;
        }
        for c in counts {
            assert!((2000..3000).contains(&c), "{counts:?}");
        }
        // Going from 4 to 5 servers moves about a fifth of the keys, all to the new server.
        let moved: Vec<&String> = keys.iter().filter(|k| pick(k, 4) != pick(k, 5)).collect();
        assert!((1500..2500).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|k| pick(k, 5) == 4));
        assert_eq!(pick("x", 1), 0);
        assert_eq!(pick("x", 0), 0);
    }

    #[test]
    fn lists_are_sorted_and_deduplicated() {
        let s = Servers::new(
            vec![
                Address::Static("b:2".into()),
                Address::Static("a:1".into()),
                Address::Dns {
                    host: "127.0.0.1".into(),
                    port: 3,
                },
                Address::Static("a:1".into()),
            ],
            2,
        );
        let addrs: Vec<String> = s.list().iter().map(|s| s.addr.clone()).collect();
        assert_eq!(addrs, ["127.0.0.1:3", "a:1", "b:2"]);
        // Nothing asked for a resolution.
        assert!(!s.refresh_if_needed());
        s.note_failure();
        // Resolved at construction, less than the backoff ago.
        assert!(!s.refresh_if_needed());
    }
}
