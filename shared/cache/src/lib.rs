//! Byte caches: the one interface the store-gateway's index and chunks caches and the
//! query-frontend's results cache are written against, and its backends.
//!
//! Keys are strings chosen by the caller (they include the tenant, so no tenant reads another's
//! entries); values are opaque bytes. A cache is an optimisation only: every method is
//! infallible from the caller's side, a backend that fails (memcached down, a timeout) counts
//! the failure and answers "miss", and the caller reads the source.
//!
//! Backends ([`build`] picks one from a [`CacheConfig`]):
//! - [`NoCache`] (`backend: ""`): holds nothing.
//! - [`InMemoryCache`] (`inmemory`): moka, bounded in bytes, per-item TTL; local to a process.
//! - [`MemcachedCache`] (`memcached`): memcached servers shared by every replica, keys spread
//!   by jump hash; failures and timeouts are misses, never errors or long waits.
//!
//! Each cache has a name (`index-cache`, `chunks-cache`, `results-cache`) that labels its
//! metrics ([`metrics`], with the mapping to Mimir's metric names).

pub mod config;
pub mod inmemory;
pub mod memcached;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::Registry;

pub use config::{
    Address, BACKEND_INMEMORY, BACKEND_MEMCACHED, BACKEND_NONE, CacheConfig, InMemoryConfig,
    MemcachedConfig,
};
pub use inmemory::InMemoryCache;
pub use memcached::MemcachedCache;
pub use metrics::CacheMetrics;

/// What can go wrong building a cache (using one never fails).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The configuration is invalid; the message names the setting.
    #[error("cache configuration: {0}")]
    Config(String),
    /// The cache's metrics cannot be registered (the same cache name built twice).
    #[error("registering cache metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the cache `cfg` describes, named `name` in its metrics (`index-cache`,
/// `chunks-cache`, `results-cache`), registering them in `registry`. `backend: ""` is
/// [`NoCache`], with no metrics.
pub fn build(
    cfg: &CacheConfig,
    name: &str,
    registry: &Registry,
) -> Result<Arc<dyn Cache>, CacheError> {
    cfg.validate()
        .map_err(|e| CacheError::Config(format!("{name}: {e}")))?;
    Ok(match cfg.backend.as_str() {
        BACKEND_INMEMORY => {
            let metrics = Arc::new(CacheMetrics::new(registry, name, BACKEND_INMEMORY)?);
            Arc::new(InMemoryCache::new(cfg.inmemory.max_size_bytes, metrics))
        }
        BACKEND_MEMCACHED => {
            let metrics = Arc::new(CacheMetrics::new(registry, name, BACKEND_MEMCACHED)?);
            Arc::new(MemcachedCache::new(&cfg.memcached, metrics)?)
        }
        _ => Arc::new(NoCache),
    })
}

/// A cache of byte values by string key.
#[async_trait]
pub trait Cache: Send + Sync {
    /// The values of those `keys` the cache holds; absent keys are misses.
    async fn get_many(&self, keys: &[String]) -> HashMap<String, Bytes>;
    /// Stores `items`, each for at most `ttl` (`Duration::ZERO`: the backend's default).
    /// Best effort: an item may be dropped (too large, evicted, backend down).
    async fn set_many(&self, items: Vec<(String, Bytes)>, ttl: Duration);
    /// Stores `items` as [`Cache::set_many`] does, but only into room the cache has to spare:
    /// nothing it holds is evicted for them. For values that are cheap to read again because
    /// they come many to a request (a wide read's chunks), which must not push out values that
    /// each cost a request of their own. A backend that cannot tell its free room (memcached,
    /// whose servers run their own eviction) stores them as `set_many` does.
    async fn set_many_if_room(&self, items: Vec<(String, Bytes)>, ttl: Duration) {
        self.set_many(items, ttl).await;
    }
    /// The backend's name for logs and metrics (`inmemory`, `memcached`, `none`).
    fn backend(&self) -> &'static str;
}

/// The cache that holds nothing: the default when no cache is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    async fn get_many(&self, _keys: &[String]) -> HashMap<String, Bytes> {
        HashMap::new()
    }
    async fn set_many(&self, _items: Vec<(String, Bytes)>, _ttl: Duration) {}
    fn backend(&self) -> &'static str {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_cache_misses() {
        let c = NoCache;
        c.set_many(vec![("k".into(), Bytes::from_static(b"v"))], Duration::ZERO)
            .await;
        assert!(c.get_many(&["k".into()]).await.is_empty());
    }

    #[tokio::test]
    async fn build_picks_the_backend_and_names_its_metrics() {
        let reg = Registry::new();
        let none = build(&CacheConfig::default(), "results-cache", &reg).unwrap();
        assert_eq!(none.backend(), "none");
        let mem = build(
            &CacheConfig::with_backend("inmemory", 1 << 20),
            "index-cache",
            &reg,
        )
        .unwrap();
        assert_eq!(mem.backend(), "inmemory");
        mem.set_many(vec![("k".into(), Bytes::from_static(b"v"))], Duration::ZERO)
            .await;
        assert_eq!(mem.get_many(&["k".into(), "x".into()]).await.len(), 1);
        // A second cache beside the first, same metric names, another label.
        let mut mc = CacheConfig::with_backend("memcached", 1);
        mc.memcached.addresses = "127.0.0.1:1".into();
        let chunks = build(&mc, "chunks-cache", &reg).unwrap();
        assert_eq!(chunks.backend(), "memcached");
        let families = reg.gather();
        let hits = families
            .iter()
            .find(|f| f.name() == "norn_cache_items_hit_total")
            .unwrap();
        let label = |m: &prometheus::proto::Metric| {
            m.get_label()
                .iter()
                .find(|l| l.name() == "name")
                .map(|l| l.value().to_owned())
        };
        let mut names: Vec<_> = hits.get_metric().iter().filter_map(label).collect();
        names.sort();
        assert_eq!(names, ["chunks-cache", "index-cache"]);
        let hit = hits
            .get_metric()
            .iter()
            .find(|m| label(m).as_deref() == Some("index-cache"))
            .unwrap();
        assert_eq!(hit.get_counter().get_value(), 1.0);
        // The same name twice is refused; a bad config names the cache.
        let err = build(
            &CacheConfig::with_backend("inmemory", 1),
            "index-cache",
            &reg,
        )
        .err()
        .unwrap();
        assert!(matches!(err, CacheError::Metrics(_)), "{err}");
        let err = build(&CacheConfig::with_backend("redis", 1), "chunks-cache", &reg)
            .err()
            .unwrap();
        assert!(err.to_string().contains("chunks-cache"), "{err}");
    }
}
