//! Byte caches: the one interface the store-gateway's index and chunks caches and the
//! query-frontend's results cache are written against, and its backends.
//!
//! Keys are strings chosen by the caller (they include the tenant, so no tenant reads another's
//! entries); values are opaque bytes. A cache is an optimisation only: every method is
//! infallible from the caller's side, a backend that fails (memcached down, a timeout) counts
//! the failure and answers "miss", and the caller reads the source.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// A cache of byte values by string key.
#[async_trait]
pub trait Cache: Send + Sync {
    /// The values of those `keys` the cache holds; absent keys are misses.
    async fn get_many(&self, keys: &[String]) -> HashMap<String, Bytes>;
    /// Stores `items`, each for at most `ttl` (`Duration::ZERO`: the backend's default).
    /// Best effort: an item may be dropped (too large, evicted, backend down).
    async fn set_many(&self, items: Vec<(String, Bytes)>, ttl: Duration);
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
}
