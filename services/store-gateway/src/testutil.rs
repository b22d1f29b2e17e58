//! Blocks for tests: written with Norn's block writer and uploaded to a bucket; and a cache
//! whose items tests can read and damage.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use norn_model::{Labels, Sample};
use norn_storage::{Bucket, layout};
use norn_tsdb::SeriesChunks;
use norn_tsdb::block::{BlockOptions, chunks_from_samples, write_block};

/// `<tenant>/<id>`.
pub fn tenant_block(tenant: &str, id: &str) -> String {
    layout::block_prefix(tenant, id)
        .trim_end_matches('/')
        .to_string()
}

/// The series of a test block: `n` series named `metric_{i%5}` with `job`, `instance`
/// labels, 240 samples each (two chunks) every 15 s from `t0`.
pub fn test_series(n: usize, t0: i64) -> Vec<SeriesChunks> {
    let mut v: Vec<SeriesChunks> = (0..n)
        .map(|i| {
            let samples: Vec<Sample> = (0..240)
                .map(|k| Sample::new(t0 + k * 15_000, (i * 1000 + k as usize) as f64))
                .collect();
            SeriesChunks {
                labels: Labels::from_pairs([
                    ("__name__", format!("metric_{}", i % 5).as_str()),
                    ("instance", format!("inst{i:05}").as_str()),
                    ("job", format!("job{}", i % 3).as_str()),
                ]),
                chunks: chunks_from_samples(&samples, 120).unwrap(),
            }
        })
        .collect();
    v.sort_by(|a, b| a.labels.cmp(&b.labels));
    v
}

/// Writes a block of [`test_series`] into `dir` and uploads it under `tenant`.
pub async fn write_test_block_in(
    bucket: &Bucket,
    dir: &std::path::Path,
    tenant: &str,
    t0: i64,
    n: usize,
) -> String {
    let meta = write_block(
        dir,
        test_series(n, t0),
        BlockOptions::for_tenant(tenant, "test", []),
    )
    .unwrap();
    let id = meta.ulid.to_string();
    bucket
        .upload_dir(
            &dir.join(&id),
            &layout::block_prefix(tenant, &id),
            Some("meta.json"),
        )
        .await
        .unwrap();
    id
}

/// [`write_test_block_in`] with a throw-away local directory.
pub async fn write_test_block(bucket: &Bucket, tenant: &str, t0: i64, n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_test_block_in(bucket, dir.path(), tenant, t0, n).await
}

/// A cache that keeps everything, in a map tests can look into and change (`.0`), and the
/// keys it was given through `set_many_if_room` (`.1`).
#[derive(Default)]
pub struct MapCache(
    pub Mutex<HashMap<String, Bytes>>,
    pub Mutex<std::collections::HashSet<String>>,
);

#[async_trait::async_trait]
impl norn_cache::Cache for MapCache {
    async fn get_many(&self, keys: &[String]) -> HashMap<String, Bytes> {
        let m = self.0.lock();
        keys.iter()
            .filter_map(|k| m.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }
    async fn set_many(&self, items: Vec<(String, Bytes)>, _ttl: Duration) {
        self.0.lock().extend(items);
    }
    async fn set_many_if_room(&self, items: Vec<(String, Bytes)>, ttl: Duration) {
        self.1.lock().extend(items.iter().map(|(k, _)| k.clone()));
        self.set_many(items, ttl).await;
    }
    fn backend(&self) -> &'static str {
        "test"
    }
}

/// A fetcher of block `id` of `tenant` over an empty in-memory bucket, without caches.
pub fn fetcher(tenant: &str, id: &str) -> crate::fetch::BlockFetcher {
    let caches = crate::fetch::Caches {
        index: std::sync::Arc::new(norn_cache::NoCache),
        chunks: std::sync::Arc::new(norn_cache::NoCache),
    };
    let metrics = crate::metrics::StoreGatewayMetrics::new(&prometheus::Registry::new()).unwrap();
    crate::fetch::BlockFetcher::new(Bucket::in_memory(), tenant, id, caches, metrics)
}
