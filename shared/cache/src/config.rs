//! A cache's configuration in Mimir's YAML shape (`backend`, `inmemory`, `memcached`), shared by
//! the index, chunks and results caches; the binary's flag blocks fill it in.
//!
//! Defaults follow Mimir's memcached client (200ms timeout, 100 idle connections per server,
//! 50 concurrent operations, batches of 100 keys, 1 MiB items). The in-memory size is the
//! caller's choice (`InMemoryConfig::with_max_size`), since each cache has its own default.

use std::time::Duration;

use norn_model::duration::serde_duration;
use serde::{Deserialize, Deserializer, Serialize};

use crate::CacheError;

/// `backend: ""`: no cache.
pub const BACKEND_NONE: &str = "";
/// `backend: inmemory`: moka, bounded in bytes, local to the process.
pub const BACKEND_INMEMORY: &str = "inmemory";
/// `backend: memcached`: one or more memcached servers, shared by every replica.
pub const BACKEND_MEMCACHED: &str = "memcached";

/// memcached refuses keys longer than this (its `KEY_MAX_LENGTH`).
pub const MEMCACHED_MAX_KEY_LEN: usize = 250;

/// One cache: `<...>_cache` in YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `""` (none), `inmemory` or `memcached`.
    pub backend: String,
    pub inmemory: InMemoryConfig,
    pub memcached: MemcachedConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            backend: BACKEND_NONE.to_owned(),
            inmemory: InMemoryConfig::default(),
            memcached: MemcachedConfig::default(),
        }
    }
}

impl CacheConfig {
    /// A config with `backend` and an in-memory size of `max_size_bytes`; the rest defaults.
    pub fn with_backend(backend: &str, max_size_bytes: u64) -> Self {
        CacheConfig {
            backend: backend.to_owned(),
            inmemory: InMemoryConfig { max_size_bytes },
            memcached: MemcachedConfig::default(),
        }
    }

    /// Checks the chosen backend's settings (the other backend's are not used, so not checked).
    pub fn validate(&self) -> Result<(), CacheError> {
        match self.backend.as_str() {
            BACKEND_NONE => Ok(()),
            BACKEND_INMEMORY => self.inmemory.validate(),
            BACKEND_MEMCACHED => self.memcached.validate(),
            other => Err(CacheError::Config(format!(
                "backend must be \"\", {BACKEND_INMEMORY} or {BACKEND_MEMCACHED}, got {other:?}"
            ))),
        }
    }
}

/// `inmemory` in YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InMemoryConfig {
    /// Bound on the memory held (keys, values and each item's overhead).
    pub max_size_bytes: u64,
}

impl Default for InMemoryConfig {
    fn default() -> Self {
        // Mimir's index cache default.
        InMemoryConfig {
            max_size_bytes: 1 << 30,
        }
    }
}

impl InMemoryConfig {
    fn validate(&self) -> Result<(), CacheError> {
        if self.max_size_bytes == 0 {
            return Err(CacheError::Config(
                "inmemory.max_size_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// `memcached` in YAML (Mimir's memcached client block, the subset Norn implements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemcachedConfig {
    /// Comma-separated `host:port` or `dns+host:port` (every A/AAAA record is a server).
    pub addresses: String,
    /// Bound on one operation (connect, write, read) against one server.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Idle connections kept per server.
    pub max_idle_connections: usize,
    /// Operations (get batches, sets) in flight at once, over all servers.
    pub max_async_concurrency: usize,
    /// Keys per `get` command; more are split into batches fetched concurrently (0: no limit).
    pub max_get_multi_batch_size: usize,
    /// Items larger than this are not stored, and a reply announcing one is a protocol error.
    pub max_item_size: usize,
}

impl Default for MemcachedConfig {
    fn default() -> Self {
        MemcachedConfig {
            addresses: String::new(),
            timeout: Duration::from_millis(200),
            max_idle_connections: 100,
            max_async_concurrency: 50,
            max_get_multi_batch_size: 100,
            max_item_size: 1 << 20,
        }
    }
}

/// A YAML cache block as written: every key optional, so that what is left out keeps the
/// default of the cache being configured (see [`deserialize_over`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    backend: Option<String>,
    inmemory: Option<WrittenInMemory>,
    memcached: Option<WrittenMemcached>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenInMemory {
    max_size_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenMemcached {
    addresses: Option<String>,
    #[serde(default, deserialize_with = "some_duration")]
    timeout: Option<Duration>,
    max_idle_connections: Option<usize>,
    max_async_concurrency: Option<usize>,
    max_get_multi_batch_size: Option<usize>,
    max_item_size: Option<usize>,
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    serde_duration::deserialize(d).map(Some)
}

/// Deserialises a cache block over `defaults`: a key the YAML leaves out keeps the default of
/// *this* cache (the index cache's `inmemory` backend, say), where serde's `default` would
/// take [`CacheConfig::default`] for the whole block as soon as any key of it is written.
pub fn deserialize_over<'de, D: Deserializer<'de>>(
    d: D,
    defaults: CacheConfig,
) -> Result<CacheConfig, D::Error> {
    let w = Written::deserialize(d)?;
    let mut c = defaults;
    if let Some(b) = w.backend {
        c.backend = b;
    }
    if let Some(v) = w.inmemory.and_then(|i| i.max_size_bytes) {
        c.inmemory.max_size_bytes = v;
    }
    if let Some(m) = w.memcached {
        let t = &mut c.memcached;
        if let Some(v) = m.addresses {
            t.addresses = v;
        }
        if let Some(v) = m.timeout {
            t.timeout = v;
        }
        if let Some(v) = m.max_idle_connections {
            t.max_idle_connections = v;
        }
        if let Some(v) = m.max_async_concurrency {
            t.max_async_concurrency = v;
        }
        if let Some(v) = m.max_get_multi_batch_size {
            t.max_get_multi_batch_size = v;
        }
        if let Some(v) = m.max_item_size {
            t.max_item_size = v;
        }
    }
    Ok(c)
}

/// One entry of `addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`, dialled as given (the system resolver runs at each dial).
    Static(String),
    /// `dns+host:port`: every address the name resolves to is a server; resolved at start and
    /// again after a failure.
    Dns { host: String, port: u16 },
}

impl MemcachedConfig {
    fn validate(&self) -> Result<(), CacheError> {
        self.parse_addresses()?;
        if self.timeout.is_zero() {
            return Err(CacheError::Config(
                "memcached.timeout must be above 0".into(),
            ));
        }
        if self.max_async_concurrency == 0 {
            return Err(CacheError::Config(
                "memcached.max_async_concurrency must be at least 1".into(),
            ));
        }
        if self.max_item_size == 0 {
            return Err(CacheError::Config(
                "memcached.max_item_size must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// `addresses` split and checked: at least one, each `host:port` with a valid port.
    pub fn parse_addresses(&self) -> Result<Vec<Address>, CacheError> {
        let mut out = Vec::new();
        for raw in self.addresses.split(',').map(str::trim) {
            if raw.is_empty() {
                continue;
            }
            let bad =
                |why: &str| CacheError::Config(format!("memcached.addresses: {raw:?}: {why}"));
            let (dns, hostport) = match raw.strip_prefix("dns+") {
                Some(rest) => (true, rest),
                None if raw.contains('+') => {
                    return Err(bad("only the dns+ prefix is supported"));
                }
                None => (false, raw),
            };
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| bad("expected host:port"))?;
            let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || port == 0 {
                return Err(bad("expected host:port"));
            }
            out.push(if dns {
                Address::Dns {
                    host: host.to_owned(),
                    port,
                }
            } else {
                Address::Static(hostport.to_owned())
            });
        }
        if out.is_empty() {
            return Err(CacheError::Config(
                "memcached.addresses is empty: the memcached backend needs at least one server"
                    .into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_shape_is_mimirs() {
        let c: CacheConfig = serde_yaml::from_str(
            "backend: memcached\nmemcached:\n  addresses: a:11211, dns+b.example:11211\n  timeout: 1s\n  max_item_size: 2048\n",
        )
        .unwrap();
        assert_eq!(c.backend, "memcached");
        assert_eq!(c.memcached.timeout, Duration::from_secs(1));
        assert_eq!(c.memcached.max_idle_connections, 100);
        assert_eq!(
            c.memcached.parse_addresses().unwrap(),
            [
                Address::Static("a:11211".into()),
                Address::Dns {
                    host: "b.example".into(),
                    port: 11211
                }
            ]
        );
        c.validate().unwrap();
        let err = serde_yaml::from_str::<CacheConfig>("backend: inmemory\nsize: 3\n").unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }

    #[test]
    fn partial_blocks_keep_the_given_defaults() {
        #[derive(Deserialize)]
        struct Wrap {
            #[serde(deserialize_with = "over_inmemory")]
            c: CacheConfig,
        }
        fn over_inmemory<'de, D: Deserializer<'de>>(d: D) -> Result<CacheConfig, D::Error> {
            deserialize_over(d, CacheConfig::with_backend("inmemory", 256))
        }
        let w: Wrap = serde_yaml::from_str("c:\n  memcached:\n    timeout: 2s\n").unwrap();
        assert_eq!(w.c.backend, "inmemory");
        assert_eq!(w.c.inmemory.max_size_bytes, 256);
        assert_eq!(w.c.memcached.timeout, Duration::from_secs(2));
        assert_eq!(w.c.memcached.max_item_size, 1 << 20);
        let w: Wrap = serde_yaml::from_str("c:\n  backend: \"\"\n  inmemory: {}\n").unwrap();
        assert_eq!(w.c.backend, "");
        assert_eq!(w.c.inmemory.max_size_bytes, 256);
        let err = serde_yaml::from_str::<Wrap>("c:\n  memcached:\n    adresses: x\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("adresses"), "{err}");
        let err = serde_yaml::from_str::<Wrap>("c:\n  memcached:\n    timeout: soon\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        for (cfg, want) in [
            (CacheConfig::with_backend("redis", 1), "backend"),
            (CacheConfig::with_backend("inmemory", 0), "max_size_bytes"),
            (CacheConfig::with_backend("memcached", 1), "empty"),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        let mut c = CacheConfig::with_backend("memcached", 1);
        for (addr, want) in [
            ("nohost", "host:port"),
            ("h:99999", "port"),
            ("dnssrv+h:1", "dns+"),
            (":11211", "host:port"),
        ] {
            c.memcached.addresses = addr.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{addr}: {err}");
        }
        c.memcached.addresses = "127.0.0.1:1".into();
        c.memcached.timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().to_string().contains("timeout"));
        // An unused backend's settings are not checked.
        CacheConfig::with_backend("", 0).validate().unwrap();
    }
}
