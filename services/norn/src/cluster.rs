//! Microservices mode: the adapters that put the gossiped ring and the gRPC ingester clients
//! under the interfaces the services already use in-process.
//!
//! * [`RingWrite`]: the ring as the distributor's [`WriteRing`].
//! * [`ClientPushers`]: the gRPC client pool as the distributor's [`PusherPool`].
//! * [`IngestersProvider`]: the querier's view of recent data, one [`QuorumQueryable`] over the
//!   ingesters of the ring's read set; also the metadata reader.
//! * [`GossipReplicaStore`]: HA-tracker election state in the gossiped key-value store, so
//!   every distributor sees the same elected replica.

use std::sync::Arc;

use async_trait::async_trait;
use norn_distributor::ha_tracker::{ReplicaDesc, ReplicaStore};
use norn_distributor::replication::{EncodedPusher, PusherPool, ReplicaSet, WriteRing};
use norn_ingester_client::IngesterClientPool;
use norn_model::{
    Matcher, MetadataReader, MetricMetadata, PushError, PushOutcome, Queryable, QueryableProvider,
    QuorumQueryable, Series, StorageError, TenantId,
};
use norn_ring::{Entry, Memberlist, Operation, Ring};

/// Key of the HA tracker's state in the gossiped store (subkey `<tenant>/<cluster>`).
pub const HA_TRACKER_KEY: &str = "ha-tracker";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The ingester ring as seen by the distributor.
pub struct RingWrite(pub Ring);

impl WriteRing for RingWrite {
    fn replicas_for(&self, tokens: &[u32]) -> Result<(Vec<ReplicaSet>, Vec<u32>), String> {
        let (sets, of_token) = self
            .0
            .get_many(tokens.iter().copied(), Operation::Write, now_ms())
            .map_err(|e| e.to_string())?;
        let sets = sets
            .into_iter()
            .map(|s| ReplicaSet {
                addrs: s.instances.into_iter().map(|i| i.addr).collect(),
                max_errors: s.max_errors,
            })
            .collect();
        Ok((sets, of_token))
    }
}

/// Pooled gRPC clients as pushers.
pub struct ClientPushers(pub Arc<IngesterClientPool>);

impl PusherPool for ClientPushers {
    fn pusher(&self, addr: &str) -> Result<Arc<dyn EncodedPusher>, PushError> {
        self.0
            .get(addr)
            .map(|c| Arc::new(EncodedClient(c)) as Arc<dyn EncodedPusher>)
            .map_err(|e| PushError::Unavailable(format!("ingester {addr}: {e}")))
    }
}

struct EncodedClient(norn_ingester_client::IngesterClient);

#[async_trait]
impl EncodedPusher for EncodedClient {
    async fn push_encoded(
        &self,
        tenant: &TenantId,
        write_request: bytes::Bytes,
    ) -> Result<PushOutcome, PushError> {
        self.0.push_encoded(tenant, write_request).await
    }
}

/// Recent data of a tenant: every ingester that may hold its series, asked at once.
pub struct IngestersProvider {
    pub ring: Ring,
    pub pool: Arc<IngesterClientPool>,
}

impl IngestersProvider {
    fn read_set(&self) -> Result<(Vec<norn_ingester_client::IngesterClient>, usize), StorageError> {
        let set = self
            .ring
            .replication_set_for_reads(now_ms())
            .map_err(|e| StorageError::Unavailable(format!("ingester ring: {e}")))?;
        let mut clients = Vec::with_capacity(set.instances.len());
        for i in &set.instances {
            clients.push(
                self.pool
                    .get(&i.addr)
                    .map_err(|e| StorageError::Unavailable(format!("ingester {}: {e}", i.addr)))?,
            );
        }
        Ok((clients, set.max_errors))
    }
}

impl QueryableProvider for IngestersProvider {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        match self.read_set() {
            Ok((clients, max_errors)) => Arc::new(QuorumQueryable::new(
                clients
                    .into_iter()
                    .map(|c| c.queryable(tenant.clone()))
                    .collect(),
                max_errors,
            )),
            Err(e) => Arc::new(Failing(e.to_string())),
        }
    }
}

#[async_trait]
impl MetadataReader for IngestersProvider {
    async fn metadata(
        &self,
        tenant: &TenantId,
        metric: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError> {
        let (clients, max_errors) = self.read_set()?;
        let answers =
            futures::future::join_all(clients.iter().map(|c| c.metadata(tenant, metric, limit)))
                .await;
        let mut errors = 0;
        let mut first_error = None;
        let mut all: Vec<MetricMetadata> = Vec::new();
        for a in answers {
            match a {
                Ok(list) => all.extend(list),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if errors > max_errors {
            return Err(first_error.unwrap_or_else(|| StorageError::Internal("metadata".into())));
        }
        all.sort_by(|a, b| {
            (&a.metric_family_name, &a.help, &a.unit).cmp(&(
                &b.metric_family_name,
                &b.help,
                &b.unit,
            ))
        });
        all.dedup();
        if limit > 0 {
            let mut families = 0;
            let mut last: Option<String> = None;
            all.retain(|m| {
                if last.as_deref() != Some(m.metric_family_name.as_str()) {
                    families += 1;
                    last = Some(m.metric_family_name.clone());
                }
                families <= limit
            });
        }
        Ok(all)
    }
}

/// A read that cannot start (no quorum of ingesters in the ring): every call says why.
struct Failing(String);

#[async_trait]
impl Queryable for Failing {
    async fn select(&self, _: i64, _: i64, _: &[Matcher]) -> Result<Vec<Series>, StorageError> {
        Err(StorageError::Unavailable(self.0.clone()))
    }
    async fn label_names(
        &self,
        _: i64,
        _: i64,
        _: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Err(StorageError::Unavailable(self.0.clone()))
    }
    async fn label_values(
        &self,
        _: &str,
        _: i64,
        _: i64,
        _: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Err(StorageError::Unavailable(self.0.clone()))
    }
}

/// HA election state in the gossiped key-value store: last writer (by last-seen time) wins,
/// so distributors that raced converge on one replica.
pub struct GossipReplicaStore(pub Arc<Memberlist>);

fn subkey(tenant: &str, cluster: &str) -> String {
    format!("{tenant}/{cluster}")
}

impl ReplicaStore for GossipReplicaStore {
    fn get(&self, tenant: &str, cluster: &str) -> Option<ReplicaDesc> {
        let e = self.0.get_entry(HA_TRACKER_KEY, &subkey(tenant, cluster))?;
        if e.tombstone {
            return None;
        }
        serde_json::from_slice(&e.value).ok()
    }

    fn put(&self, tenant: &str, cluster: &str, desc: &ReplicaDesc) {
        let value = serde_json::to_vec(desc).expect("replica desc serializes");
        self.0.put(
            HA_TRACKER_KEY,
            &subkey(tenant, cluster),
            Entry {
                ts_ms: desc.received_at_ms,
                tombstone: false,
                value,
            },
        );
    }

    fn clusters(&self, tenant: &str) -> usize {
        self.0.count_live(HA_TRACKER_KEY, &format!("{tenant}/"))
    }
}
