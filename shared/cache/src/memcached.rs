//! The memcached backend: memcached's text protocol over tokio TCP, keys spread over several
//! servers by jump hash, a small pool of connections per server.
//!
//! Written here rather than taken from a crate: the maintained Rust clients are either
//! synchronous (`memcache`, which would need a thread per call or `spawn_blocking`) or do not
//! let us bound every step (dial, write, read) by one timeout, cap the size of a value a
//! server announces, and pool per server with a bound; the subset used (`get` with many keys,
//! `set`) is two commands and a reply parser.
//!
//! Failure model: a cache is an optimisation, so nothing here returns an error. Each batch of
//! keys to one server runs under one `timeout` (waiting for a concurrency slot, dialling,
//! writing and reading all included) and batches run concurrently, so `get_many` and
//! `set_many` return within about one timeout whatever the servers do. A server that is down,
//! slow, or answers garbage costs its keys (misses, unstored items), counted in
//! `norn_cache_failures_total{operation,reason}`; its connection is closed, never reused.

mod protocol;
mod servers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::config::MemcachedConfig;
use crate::metrics::{
    CacheMetrics, FAIL_IO, FAIL_NO_SERVER, FAIL_PROTOCOL, FAIL_SERVER, FAIL_TIMEOUT,
};
use crate::{BACKEND_MEMCACHED, Cache, CacheError};
use protocol::ProtocolError;
pub use protocol::wire_key;
use servers::{Server, Servers};

/// The memcached cache.
#[derive(Debug)]
pub struct MemcachedCache {
    cfg: MemcachedConfig,
    servers: Arc<Servers>,
    slots: Semaphore,
    metrics: Arc<CacheMetrics>,
}

/// The reply a request expects.
enum Expect<'a> {
    /// `get`: the values of these wire keys (by the caller's index).
    Values(&'a HashMap<&'a str, usize>),
    /// That many `set` replies.
    Stored(usize),
}

/// What a complete exchange returned.
enum Answer {
    Values(Vec<(usize, Bytes)>),
    Stored(u64),
}

/// Why a batch failed.
enum Failure {
    Timeout,
    Protocol(ProtocolError),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => FAIL_TIMEOUT,
            Failure::Protocol(ProtocolError::Io(_)) => FAIL_IO,
            Failure::Protocol(ProtocolError::Protocol(_)) => FAIL_PROTOCOL,
            Failure::Protocol(ProtocolError::Server(_)) => FAIL_SERVER,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Protocol(e) => e.fmt(f),
        }
    }
}

impl MemcachedCache {
    /// A cache over `cfg.addresses`; `dns+` names are resolved now (blocking DNS: build it at
    /// start-up, not on a hot path).
    pub fn new(cfg: &MemcachedConfig, metrics: Arc<CacheMetrics>) -> Result<Self, CacheError> {
        let addresses = cfg.parse_addresses()?;
        let servers = Arc::new(Servers::new(addresses, cfg.max_idle_connections));
        metrics.servers.set(servers.list().len() as i64);
        Ok(MemcachedCache {
            cfg: cfg.clone(),
            servers,
            slots: Semaphore::new(cfg.max_async_concurrency.max(1)),
            metrics,
        })
    }

    /// Idle pooled connections per server address (tests and debugging).
    pub fn idle_connections(&self) -> Vec<(String, usize)> {
        self.servers
            .list()
            .iter()
            .map(|s| (s.addr.clone(), s.idle_count()))
            .collect()
    }

    /// The server list, re-resolved first if a failure asked for it (off the reactor, bounded
    /// by the timeout; on timeout the old list is used).
    async fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        if !self.servers.refresh_due() {
            return self.servers.list();
        }
        let servers = Arc::clone(&self.servers);
        let refresh = tokio::task::spawn_blocking(move || servers.refresh_if_needed());
        if let Ok(Ok(true)) = tokio::time::timeout(self.cfg.timeout, refresh).await {
            self.metrics.servers.set(self.servers.list().len() as i64);
        }
        self.servers.list()
    }

    /// Splits `keys` (indexes into the caller's list, with their wire keys) by owning server,
    /// then into batches of at most `max_get_multi_batch_size`.
    fn batches<'a, T>(
        &self,
        items: Vec<(&'a str, T)>,
        n: usize,
    ) -> Vec<(usize, Vec<(&'a str, T)>)> {
        let mut by_server: Vec<Vec<(&str, T)>> = (0..n).map(|_| Vec::new()).collect();
        for (wire, item) in items {
            by_server[servers::pick(wire, n)].push((wire, item));
        }
        let size = match self.cfg.max_get_multi_batch_size {
            0 => usize::MAX,
            s => s,
        };
        let mut out = Vec::new();
        for (server, mut keys) in by_server.into_iter().enumerate() {
            while !keys.is_empty() {
                let rest = keys.split_off(keys.len().min(size));
                out.push((server, std::mem::replace(&mut keys, rest)));
            }
        }
        out
    }

    /// Sends `request` to `server` and reads the reply `expect` describes, all within the
    /// timeout; the connection is pooled again only after a complete exchange.
    async fn exchange(
        &self,
        server: &Server,
        request: &[u8],
        expect: Expect<'_>,
    ) -> Result<Answer, Failure> {
        let work = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| ProtocolError::Io(std::io::Error::other("cache closed")))?;
            // A pooled connection the server closed while it sat idle (a restart, an idle
            // timeout on the way) fails on first use: that one failure is retried once on a
            // new connection. Both commands are idempotent, so a retry cannot double anything.
            let mut fresh = false;
            let (conn, answer) = loop {
                let (mut conn, pooled) = server.conn(fresh).await?;
                match self.round_trip(&mut conn, request, &expect).await {
                    Ok(answer) => break (conn, answer),
                    Err(ProtocolError::Io(_)) if pooled && !fresh => fresh = true,
                    Err(e) => return Err(e),
                }
            };
            server.put_back(conn);
            Ok::<Answer, ProtocolError>(answer)
        };
        match tokio::time::timeout(self.cfg.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Protocol(e)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// One request and its reply on `conn`.
    async fn round_trip(
        &self,
        conn: &mut servers::Conn,
        request: &[u8],
        expect: &Expect<'_>,
    ) -> Result<Answer, ProtocolError> {
        conn.get_mut().write_all(request).await?;
        Ok(match expect {
            Expect::Values(wanted) => Answer::Values(
                protocol::read_get_reply(conn, wanted, self.cfg.max_item_size).await?,
            ),
            Expect::Stored(n) => {
                let mut stored = 0u64;
                for _ in 0..*n {
                    stored += u64::from(protocol::read_set_reply(conn).await?);
                }
                Answer::Stored(stored)
            }
        })
    }

    fn failed(&self, operation: &str, server: &Server, f: &Failure) {
        self.metrics.failed(operation, f.reason());
        self.servers.note_failure();
        tracing::debug!(server = %server.addr, operation, error = %f, "memcached operation failed; answered as a miss");
    }
}

#[async_trait]
impl Cache for MemcachedCache {
    async fn get_many(&self, keys: &[String]) -> HashMap<String, Bytes> {
        let start = Instant::now();
        let mut out = HashMap::new();
        if keys.is_empty() {
            self.metrics.lookup(0, 0);
            return out;
        }
        let servers = self.servers().await;
        if servers.is_empty() {
            self.metrics.failed("get", FAIL_NO_SERVER);
            self.metrics.lookup(keys.len(), 0);
            return out;
        }
        // One wire key per distinct key; duplicates in `keys` are asked for once.
        let wire: Vec<String> = keys.iter().map(|k| wire_key(k)).collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (i, w) in wire.iter().enumerate() {
            if seen.insert(w.as_str(), i).is_none() {
                unique.push((w.as_str(), i));
            }
        }
        let batches = self.batches(unique, servers.len());
        let results = futures::future::join_all(batches.into_iter().map(|(s, batch)| {
            let server = &servers[s];
            async move {
                let wanted: HashMap<&str, usize> = batch.iter().copied().collect();
                let names: Vec<&str> = batch.iter().map(|(w, _)| *w).collect();
                let got = self
                    .exchange(
                        server,
                        &protocol::encode_get(&names),
                        Expect::Values(&wanted),
                    )
                    .await;
                (server, got)
            }
        }))
        .await;
        for (server, got) in results {
            match got {
                Ok(Answer::Values(values)) => {
                    for (i, v) in values {
                        out.insert(keys[i].clone(), v);
                    }
                }
                Ok(Answer::Stored(_)) => {}
                Err(f) => self.failed("get", server, &f),
            }
        }
        // A key asked twice is a hit (or miss) each time.
        let hits = keys.iter().filter(|k| out.contains_key(*k)).count();
        self.metrics.lookup(keys.len(), hits);
        self.metrics
            .get_duration
            .observe(start.elapsed().as_secs_f64());
        out
    }

    async fn set_many(&self, items: Vec<(String, Bytes)>, ttl: Duration) {
        let start = Instant::now();
        let mut keep = Vec::with_capacity(items.len());
        for (k, v) in items {
            if v.len() > self.cfg.max_item_size {
                self.metrics.items_skipped_too_large.inc();
            } else {
                keep.push((wire_key(&k), v));
            }
        }
        if keep.is_empty() {
            return;
        }
        let servers = self.servers().await;
        if servers.is_empty() {
            self.metrics.failed("set", FAIL_NO_SERVER);
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let exptime = protocol::expiry(ttl, now);
        let refs: Vec<(&str, &Bytes)> = keep.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let batches = self.batches(refs, servers.len());
        let results = futures::future::join_all(batches.into_iter().map(|(s, batch)| {
            let server = &servers[s];
            async move {
                // Pipelined: every set of the batch is written, then every reply read.
                let mut buf = Vec::new();
                for (k, v) in &batch {
                    protocol::encode_set(&mut buf, k, exptime, v);
                }
                let got = self
                    .exchange(server, &buf, Expect::Stored(batch.len()))
                    .await;
                (server, got)
            }
        }))
        .await;
        for (server, got) in results {
            match got {
                Ok(Answer::Stored(stored)) => self.metrics.items_stored.inc_by(stored),
                Ok(Answer::Values(_)) => {}
                Err(f) => self.failed("set", server, &f),
            }
        }
        self.metrics
            .set_duration
            .observe(start.elapsed().as_secs_f64());
    }

    fn backend(&self) -> &'static str {
        BACKEND_MEMCACHED
    }
}
