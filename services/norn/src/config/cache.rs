//! The caches' flags: `--blocks-storage.bucket-store.index-cache.*`,
//! `--blocks-storage.bucket-store.chunks-cache.*` and `--query-frontend.results-cache.*`, each
//! a [`norn_cache::CacheConfig`] in YAML (`blocks_storage.bucket_store.index_cache`,
//! `blocks_storage.bucket_store.chunks_cache`, `frontend.results_cache`).
//!
//! The three blocks have the same eight flags under different prefixes, so one macro declares
//! them; the names are Mimir's. Defaults: all three caches are `inmemory`. Mimir agrees for the
//! index cache (1 GiB); its chunks and results caches have no in-memory backend and default to
//! no cache at all, while Norn keeps an in-memory one (1 GiB of chunks, 256 MiB of results) so
//! a single process is fast without a memcached beside it.

use norn_cache::{BACKEND_INMEMORY, CacheConfig};
use serde::Deserializer;

use super::flags::{Deferred, set, set_duration};

/// The index cache's defaults (Mimir's).
pub fn default_index_cache() -> CacheConfig {
    CacheConfig::with_backend(BACKEND_INMEMORY, 1 << 30)
}

/// The chunks cache's defaults (Mimir's has no in-memory backend; see the module docs).
pub fn default_chunks_cache() -> CacheConfig {
    CacheConfig::with_backend(BACKEND_INMEMORY, 1 << 30)
}

/// The results cache's defaults (Mimir's has no in-memory backend; see the module docs).
pub fn default_results_cache() -> CacheConfig {
    CacheConfig::with_backend(BACKEND_INMEMORY, 256 << 20)
}

/// `#[serde(deserialize_with)]` for each cache's YAML block: keys left out keep that cache's
/// defaults above.
pub fn de_index_cache<'de, D: Deserializer<'de>>(d: D) -> Result<CacheConfig, D::Error> {
    norn_cache::config::deserialize_over(d, default_index_cache())
}

pub fn de_chunks_cache<'de, D: Deserializer<'de>>(d: D) -> Result<CacheConfig, D::Error> {
    norn_cache::config::deserialize_over(d, default_chunks_cache())
}

pub fn de_results_cache<'de, D: Deserializer<'de>>(d: D) -> Result<CacheConfig, D::Error> {
    norn_cache::config::deserialize_over(d, default_results_cache())
}

/// Declares a flag block `$name` for one cache whose flags start with `$prefix` (and whose
/// environment variables start with `$env`).
macro_rules! cache_flags {
    ($(#[$doc:meta])* $name:ident, $heading:literal, $prefix:literal, $env:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, clap::Args)]
        #[command(next_help_heading = $heading)]
        pub struct $name {
            /// Cache backend: inmemory, memcached, or empty for none.
            #[arg(id = concat!($prefix, ".backend"), long = concat!($prefix, ".backend"),
                value_name = "BACKEND", env = concat!($env, "_BACKEND"))]
            pub backend: Option<String>,
            /// Bound on the memory the in-memory cache holds (keys, values and each item's overhead).
            #[arg(
                id = concat!($prefix, ".inmemory.max-size-bytes"),
                long = concat!($prefix, ".inmemory.max-size-bytes"),
                value_name = "BYTES",
                env = concat!($env, "_INMEMORY_MAX_SIZE_BYTES")
            )]
            pub inmemory_max_size_bytes: Option<u64>,
            /// Comma-separated memcached servers: host:port, or dns+host:port for every address of a name.
            #[arg(
                id = concat!($prefix, ".memcached.addresses"),
                long = concat!($prefix, ".memcached.addresses"),
                value_name = "ADDRESSES",
                env = concat!($env, "_MEMCACHED_ADDRESSES")
            )]
            pub memcached_addresses: Option<String>,
            /// Bound on one memcached exchange (connect, write, read); slower is a miss.
            #[arg(
                id = concat!($prefix, ".memcached.timeout"),
                long = concat!($prefix, ".memcached.timeout"),
                value_name = "DURATION",
                env = concat!($env, "_MEMCACHED_TIMEOUT")
            )]
            pub memcached_timeout: Option<Deferred>,
            /// Idle connections kept per memcached server.
            #[arg(
                id = concat!($prefix, ".memcached.max-idle-connections"),
                long = concat!($prefix, ".memcached.max-idle-connections"),
                value_name = "N",
                env = concat!($env, "_MEMCACHED_MAX_IDLE_CONNECTIONS")
            )]
            pub memcached_max_idle_connections: Option<usize>,
            /// Memcached operations in flight at once.
            #[arg(
                id = concat!($prefix, ".memcached.max-async-concurrency"),
                long = concat!($prefix, ".memcached.max-async-concurrency"),
                value_name = "N",
                env = concat!($env, "_MEMCACHED_MAX_ASYNC_CONCURRENCY")
            )]
            pub memcached_max_async_concurrency: Option<usize>,
            /// Keys per memcached get command (more are split into concurrent batches; 0: no limit).
            #[arg(
                id = concat!($prefix, ".memcached.max-get-multi-batch-size"),
                long = concat!($prefix, ".memcached.max-get-multi-batch-size"),
                value_name = "N",
                env = concat!($env, "_MEMCACHED_MAX_GET_MULTI_BATCH_SIZE")
            )]
            pub memcached_max_get_multi_batch_size: Option<usize>,
            /// Largest item stored in memcached, in bytes; larger ones are not sent.
            #[arg(
                id = concat!($prefix, ".memcached.max-item-size"),
                long = concat!($prefix, ".memcached.max-item-size"),
                value_name = "BYTES",
                env = concat!($env, "_MEMCACHED_MAX_ITEM_SIZE")
            )]
            pub memcached_max_item_size: Option<usize>,
        }

        impl $name {
            pub fn apply(&self, c: &mut CacheConfig) -> anyhow::Result<()> {
                set(&mut c.backend, &self.backend);
                set(&mut c.inmemory.max_size_bytes, &self.inmemory_max_size_bytes);
                let m = &mut c.memcached;
                set(&mut m.addresses, &self.memcached_addresses);
                set_duration(&mut m.timeout, &self.memcached_timeout)?;
                set(&mut m.max_idle_connections, &self.memcached_max_idle_connections);
                set(&mut m.max_async_concurrency, &self.memcached_max_async_concurrency);
                set(
                    &mut m.max_get_multi_batch_size,
                    &self.memcached_max_get_multi_batch_size,
                );
                set(&mut m.max_item_size, &self.memcached_max_item_size);
                Ok(())
            }
        }
    };
}

cache_flags!(
    /// `--blocks-storage.bucket-store.index-cache.*`: the store-gateway's postings and series cache.
    IndexCacheFlags,
    "Index cache (store-gateway)",
    "blocks-storage.bucket-store.index-cache",
    "NORN_BLOCKS_STORAGE_BUCKET_STORE_INDEX_CACHE"
);

cache_flags!(
    /// `--blocks-storage.bucket-store.chunks-cache.*`: the store-gateway's chunks cache.
    ChunksCacheFlags,
    "Chunks cache (store-gateway)",
    "blocks-storage.bucket-store.chunks-cache",
    "NORN_BLOCKS_STORAGE_BUCKET_STORE_CHUNKS_CACHE"
);

cache_flags!(
    /// `--query-frontend.results-cache.*`: the query-frontend's results cache.
    ResultsCacheFlags,
    "Results cache (query-frontend)",
    "query-frontend.results-cache",
    "NORN_QUERY_FRONTEND_RESULTS_CACHE"
);

/// Checks one cache's settings, naming its YAML block in the error.
pub fn validate(path: &str, c: &CacheConfig) -> anyhow::Result<()> {
    c.validate().map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use crate::config::{Args, Config};

    fn load(yaml: &str, flags: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let file = f.to_str().unwrap().to_owned();
        let argv = ["norn", "--config.file", &file]
            .into_iter()
            .chain(flags.iter().copied());
        Config::load(&Args::parse_from(argv))
    }

    #[test]
    fn defaults_are_inmemory() {
        let c = load("", &[]).unwrap();
        let bs = &c.blocks_storage.bucket_store;
        assert_eq!(bs.index_cache.backend, "inmemory");
        assert_eq!(bs.index_cache.inmemory.max_size_bytes, 1 << 30);
        assert_eq!(bs.chunks_cache.backend, "inmemory");
        assert_eq!(c.frontend.results_cache.backend, "inmemory");
        assert_eq!(c.frontend.results_cache.inmemory.max_size_bytes, 256 << 20);
        assert_eq!(bs.index_cache.memcached.timeout, Duration::from_millis(200));
    }

    #[test]
    fn yaml_and_flags_reach_each_cache() {
        let c = load(
            "blocks_storage:\n  bucket_store:\n    index_cache:\n      backend: memcached\n      memcached:\n        addresses: a:11211\n        max_item_size: 5000\n    chunks_cache:\n      inmemory:\n        max_size_bytes: 1234\nfrontend:\n  results_cache:\n    backend: \"\"\n",
            &[
                "--blocks-storage.bucket-store.index-cache.memcached.timeout=1s",
                "--blocks-storage.bucket-store.chunks-cache.memcached.max-get-multi-batch-size=9",
                "--query-frontend.results-cache.backend=memcached",
                "--query-frontend.results-cache.memcached.addresses=dns+memcached.local:11211,b:1",
                "--query-frontend.results-cache.memcached.max-idle-connections=3",
                "--query-frontend.results-cache.memcached.max-async-concurrency=4",
                "--query-frontend.results-cache.inmemory.max-size-bytes=77",
            ],
        )
        .unwrap();
        let bs = &c.blocks_storage.bucket_store;
        assert_eq!(bs.index_cache.backend, "memcached");
        assert_eq!(bs.index_cache.memcached.addresses, "a:11211");
        assert_eq!(bs.index_cache.memcached.max_item_size, 5000);
        assert_eq!(bs.index_cache.memcached.timeout, Duration::from_secs(1));
        assert_eq!(bs.chunks_cache.inmemory.max_size_bytes, 1234);
        // A block that names some keys keeps this cache's defaults for the others.
        assert_eq!(bs.chunks_cache.backend, "inmemory");
        assert_eq!(bs.index_cache.inmemory.max_size_bytes, 1 << 30);
        assert_eq!(bs.index_cache.memcached.max_idle_connections, 100);
        assert_eq!(bs.chunks_cache.memcached.max_get_multi_batch_size, 9);
        let r = &c.frontend.results_cache;
        assert_eq!(r.backend, "memcached");
        assert_eq!(r.memcached.max_idle_connections, 3);
        assert_eq!(r.memcached.max_async_concurrency, 4);
        assert_eq!(r.inmemory.max_size_bytes, 77);
    }

    #[test]
    fn bad_settings_name_the_cache() {
        for (yaml, flags, want) in [
            (
                "",
                &["--query-frontend.results-cache.backend=redis"][..],
                "frontend.results_cache",
            ),
            (
                "",
                &["--blocks-storage.bucket-store.index-cache.backend=memcached"][..],
                "index_cache: cache configuration: memcached.addresses is empty",
            ),
            (
                "",
                &["--blocks-storage.bucket-store.chunks-cache.memcached.timeout=soon"][..],
                "chunks-cache.memcached.timeout",
            ),
            (
                "blocks_storage:\n  bucket_store:\n    chunks_cache:\n      inmemory:\n        max_size_bytes: 0\n",
                &[][..],
                "chunks_cache",
            ),
        ] {
            let err = format!("{:#}", load(yaml, flags).unwrap_err());
            assert!(err.contains(want), "{flags:?}: {err}");
        }
    }
}
