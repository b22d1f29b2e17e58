//! The in-memory backend: a moka cache bounded in bytes, with a TTL per item.
//!
//! An item weighs its key, its value and [`ENTRY_OVERHEAD`], so the bound is close to the
//! memory the cache really takes: the store-gateway's chunks are a few hundred bytes each, and
//! counting only their payload let a "1 GiB" cache take several. A value is copied when it is
//! stored, since the values callers hand in are often slices of a larger buffer (a coalesced
//! ranged GET of the bucket), which a stored slice would keep alive whole.
//!
//! moka's admission policy (TinyLFU) may refuse a new item in favour of items used more often,
//! and evicts the least useful ones when the bound is passed; both count as evictions. The
//! bound is kept by moka's maintenance, which runs on writes, so the bytes held can exceed it
//! briefly between a write and its maintenance, never by more than one batch of writes.
//!
//! [`Cache::set_many_if_room`] stores only while the bytes held stay below 7/8 of the bound
//! (as of moka's last maintenance), and never evicts: what it is offered beyond that is counted
//! as skipped for `no-room`.
//!
//! One item may take at most an eighth of the bound: a single huge value (a postings list of a
//! label every series has) must not flush everything else. Larger items are skipped and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::Expiry;
use moka::notification::RemovalCause;

use crate::metrics::CacheMetrics;
use crate::{BACKEND_INMEMORY, Cache};

/// A TTL beyond this is treated as this (moka computes deadlines as `Instant + ttl`, which
/// must not overflow).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Clone)]
struct Entry {
    value: Bytes,
    /// `None`: kept until evicted.
    ttl: Option<Duration>,
}

/// Each entry expires after its own TTL, counted from its last write.
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _at: Instant) -> Option<Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _at: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        value.ttl
    }
}

/// The in-memory cache.
pub struct InMemoryCache {
    cache: moka::sync::Cache<String, Entry>,
    max_item_bytes: u64,
    /// What [`Cache::set_many_if_room`] fills the cache up to.
    spare_room_bound: u64,
    metrics: Arc<CacheMetrics>,
}

impl std::fmt::Debug for InMemoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryCache")
            .field("max_item_bytes", &self.max_item_bytes)
            .finish_non_exhaustive()
    }
}

/// Bytes of memory an item takes beyond its key and value: moka's entry (its node in the
/// access and write orders, the TTL timer, the frequency sketch's share), the key's `String`
/// and `Bytes` headers, and the allocator's headers. Measured with moka 0.12 on x86_64 by
/// inserting 1M items of 64, 200 and 1,000 bytes and reading the process' RSS: 488-496 bytes
/// an item beyond key and value (a plain `HashMap<String, Bytes>` takes 175).
pub const ENTRY_OVERHEAD: u64 = 488;

/// [`Cache::set_many_if_room`] leaves this fraction (1/n) of the bound free: values stored
/// with eviction still find room without evicting right away, once values offered only for
/// room have filled the rest.
const SPARE_ROOM_RESERVE: u64 = 8;

fn weight(key: &str, value: &Bytes) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD
}

impl InMemoryCache {
    /// A cache holding at most `max_size_bytes` of keys, values and their overhead.
    pub fn new(max_size_bytes: u64, metrics: Arc<CacheMetrics>) -> Self {
        let evictions = metrics.evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_size_bytes)
            .weigher(|k: &String, v: &Entry| u32::try_from(weight(k, &v.value)).unwrap_or(u32::MAX))
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        InMemoryCache {
            cache,
            max_item_bytes: (max_size_bytes / 8).clamp(1, u64::from(u32::MAX)),
            spare_room_bound: max_size_bytes - max_size_bytes / SPARE_ROOM_RESERVE,
            metrics,
        }
    }

    /// The largest item (key, value and [`ENTRY_OVERHEAD`]) this cache stores.
    pub fn max_item_bytes(&self) -> u64 {
        self.max_item_bytes
    }

    /// Runs moka's pending maintenance (evictions, expirations) now and refreshes the size
    /// gauges; writes do this on their own, tests call it to observe a settled state.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
        self.refresh_gauges();
    }

    /// Bytes held (keys, values and [`ENTRY_OVERHEAD`] an item), as of the last maintenance.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Stores `items`; with `if_room`, only while the bytes held stay within
    /// [`Self::spare_room_bound`], so nothing is evicted for them.
    fn store(&self, items: Vec<(String, Bytes)>, ttl: Duration, if_room: bool) {
        let start = Instant::now();
        let ttl = (!ttl.is_zero()).then(|| ttl.min(MAX_TTL));
        // As of moka's last maintenance, plus what this call adds: concurrent callers may
        // each see the same room, so the bound can be passed by one batch of writes.
        let mut held = self.cache.weighted_size();
        for (key, value) in items {
            let w = weight(&key, &value);
            if w > self.max_item_bytes {
                self.metrics.items_skipped_too_large.inc();
                continue;
            }
            if if_room {
                if held + w > self.spare_room_bound {
                    self.metrics.items_skipped_no_room.inc();
                    continue;
                }
                held += w;
            }
            self.metrics.items_stored.inc();
            let value = Bytes::copy_from_slice(&value);
            self.cache.insert(key, Entry { value, ttl });
        }
        self.refresh_gauges();
        self.metrics
            .set_duration
            .observe(start.elapsed().as_secs_f64());
    }

    fn refresh_gauges(&self) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.metrics
            .stored_bytes
            .set(clamp(self.cache.weighted_size()));
        self.metrics
            .stored_items
            .set(clamp(self.cache.entry_count()));
    }
}

#[async_trait]
impl Cache for InMemoryCache {
    async fn get_many(&self, keys: &[String]) -> HashMap<String, Bytes> {
        let start = Instant::now();
        let mut out = HashMap::new();
        for k in keys {
            if let Some(e) = self.cache.get(k) {
                out.insert(k.clone(), e.value);
            }
        }
        self.metrics.lookup(keys.len(), out.len());
        self.metrics
            .get_duration
            .observe(start.elapsed().as_secs_f64());
        out
    }

    async fn set_many(&self, items: Vec<(String, Bytes)>, ttl: Duration) {
        self.store(items, ttl, false);
    }

    async fn set_many_if_room(&self, items: Vec<(String, Bytes)>, ttl: Duration) {
        self.store(items, ttl, true);
    }

    fn backend(&self) -> &'static str {
        BACKEND_INMEMORY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max: u64) -> (InMemoryCache, Arc<CacheMetrics>) {
        let m = Arc::new(CacheMetrics::unregistered("test", "inmemory"));
        (InMemoryCache::new(max, Arc::clone(&m)), m)
    }

    fn item(i: usize, len: usize) -> (String, Bytes) {
        (format!("k{i:04}"), Bytes::from(vec![i as u8; len]))
    }

    #[tokio::test]
    async fn hits_misses_and_replacement() {
        let (c, m) = cache(1 << 20);
        c.set_many(vec![item(1, 10), item(2, 10)], Duration::ZERO)
            .await;
        let got = c
            .get_many(&["k0001".into(), "k0002".into(), "nope".into()])
            .await;
        assert_eq!(got.len(), 2);
        assert_eq!(got["k0001"], vec![1u8; 10]);
        c.set_many(
            vec![("k0001".into(), Bytes::from_static(b"new"))],
            Duration::ZERO,
        )
        .await;
        assert_eq!(c.get_many(&["k0001".into()]).await["k0001"], "new");
        assert_eq!(m.requests.get(), 2);
        assert_eq!(m.items_fetched.get(), 4);
        assert_eq!(m.items_hit.get(), 3);
        assert_eq!(m.items_missed.get(), 1);
        assert_eq!(m.items_stored.get(), 3);
    }

    /// Writing far more than the bound keeps the bytes held within it, and the items dropped are
    /// counted as evictions.
    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let max = 64 * 1024;
        let (c, m) = cache(max);
        for batch in 0..40 {
            let items = (0..50).map(|i| item(batch * 50 + i, 1000)).collect();
            c.set_many(items, Duration::ZERO).await;
            c.run_pending_tasks();
            assert!(
                c.weighted_size() <= max,
                "{} bytes held, bound {max}",
                c.weighted_size()
            );
        }
        // 2,000 items of ~1 KB were written into 64 KiB; each weighs its key, its 1,000 bytes
        // and the overhead, so at most this many fit:
        let fit = max / (1005 + ENTRY_OVERHEAD);
        assert_eq!(m.items_stored.get(), 2000);
        assert!(m.evictions.get() >= 2000 - fit, "{}", m.evictions.get());
        assert!(m.stored_bytes.get() as u64 <= max);
        assert!(m.stored_bytes.get() > 0);
        assert!(
            m.stored_items.get() as u64 <= fit,
            "{}",
            m.stored_items.get()
        );
    }

    /// Values offered only for spare room fill the cache to 7/8 of its bound and then are
    /// skipped: nothing held is evicted for them, and ordinary writes still get in.
    #[tokio::test]
    async fn if_room_never_evicts() {
        let max = 64 * 1024;
        let (c, m) = cache(max);
        let narrow: Vec<_> = (0..8).map(|i| item(i, 1000)).collect();
        c.set_many(narrow, Duration::ZERO).await;
        for batch in 1..40 {
            let wide = (0..10).map(|i| item(batch * 100 + i, 1000)).collect();
            c.set_many_if_room(wide, Duration::ZERO).await;
            c.run_pending_tasks();
        }
        assert_eq!(m.evictions.get(), 0);
        assert!(m.items_skipped_no_room.get() > 0);
        let held = c.weighted_size();
        let one = 1005 + ENTRY_OVERHEAD;
        assert_eq!(
            held,
            m.items_stored.get() * one,
            "every stored item is held"
        );
        assert!(held <= max - max / 8, "{held} bytes held");
        // Within one item of the 7/8 bound: the room was used, not left empty.
        assert!(held + one > max - max / 8, "{held} bytes held");
        let keys: Vec<String> = (0..8).map(|i| format!("k{i:04}")).collect();
        assert_eq!(
            c.get_many(&keys).await.len(),
            8,
            "a narrow value was evicted"
        );
        // An ordinary write still stores, evicting if it must.
        c.set_many(
            (0..20).map(|i| item(9000 + i, 1000)).collect(),
            Duration::ZERO,
        )
        .await;
        c.run_pending_tasks();
        assert!(c.weighted_size() <= max);
        assert_eq!(m.items_stored.get() * one, held + 20 * one);
    }

    #[tokio::test]
    async fn items_over_an_eighth_of_the_bound_are_skipped() {
        let (c, m) = cache(8 * 2000);
        assert_eq!(c.max_item_bytes(), 2000);
        let fits = 2000 - 5 - ENTRY_OVERHEAD as usize;
        c.set_many(vec![item(1, fits), item(2, fits + 1)], Duration::ZERO)
            .await;
        // "k0001", its value and the overhead weigh 2,000: it fits; the other is one byte over.
        let got = c.get_many(&["k0001".into(), "k0002".into()]).await;
        assert_eq!(got.len(), 1);
        assert!(got.contains_key("k0001"));
        assert_eq!(m.items_skipped_too_large.get(), 1);
    }

    /// A value that is a slice of a larger buffer is stored as a copy of its own bytes, so the
    /// cache never keeps the rest of that buffer alive.
    #[tokio::test]
    async fn a_stored_slice_does_not_keep_its_buffer() {
        let (c, _) = cache(1 << 20);
        let big = Bytes::from(vec![9u8; 64 * 1024]);
        let part = big.slice(1000..1100);
        c.set_many(vec![("k".into(), part.clone())], Duration::ZERO)
            .await;
        let got = c.get_many(&["k".into()]).await.remove("k").unwrap();
        assert_eq!(got, part);
        let inside = big.as_ptr_range();
        assert!(
            !inside.contains(&got.as_ptr()),
            "the cached value points into the buffer it was sliced from"
        );
    }

    #[tokio::test]
    async fn ttl_is_honoured_per_item() {
        let (c, _) = cache(1 << 20);
        c.set_many(vec![item(1, 10)], Duration::from_millis(150))
            .await;
        c.set_many(vec![item(2, 10)], Duration::ZERO).await;
        c.set_many(vec![item(3, 10)], Duration::MAX).await;
        assert_eq!(
            c.get_many(&["k0001".into(), "k0002".into(), "k0003".into()])
                .await
                .len(),
            3
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = c
            .get_many(&["k0001".into(), "k0002".into(), "k0003".into()])
            .await;
        assert!(!got.contains_key("k0001"), "expired item still served");
        assert!(got.contains_key("k0002") && got.contains_key("k0003"));
        // A rewrite with a new TTL restarts it.
        c.set_many(vec![item(1, 10)], Duration::from_secs(60)).await;
        assert!(c.get_many(&["k0001".into()]).await.contains_key("k0001"));
    }
}
