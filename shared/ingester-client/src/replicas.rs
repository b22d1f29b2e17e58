//! The ingesters of a cluster as the distributor and querier see them.
//!
//! * [`EncodedPusher`] / [`PusherPool`]: the distributor's replication reaches an ingester by
//!   address and pushes a request it encoded once; [`IngesterClientPool`] is the pool.
//! * [`IngesterReadSet`]: a querier's recent data, every ingester of the ring's read set
//!   asked at once ([`QuorumQueryable`]), and the metadata reader over the same set.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use norn_model::{
    Matcher, MetadataReader, MetricMetadata, PushError, PushOutcome, Queryable, QueryableProvider,
    QuorumQueryable, Series, StorageError, TenantId, gather_quorum,
};
use norn_ring::Ring;

use crate::{IngesterClient, IngesterClientPool};

/// An ingester that takes a request already encoded as a remote-write `WriteRequest`
/// (uncompressed protobuf): the distributor encodes a request once and cuts each replica's
/// part out of that encoding.
#[async_trait]
pub trait EncodedPusher: Send + Sync {
    async fn push_encoded(
        &self,
        tenant: &TenantId,
        write_request: Bytes,
    ) -> Result<PushOutcome, PushError>;
}

/// Hands out the ingester at an address.
pub trait PusherPool: Send + Sync {
    fn pusher(&self, addr: &str) -> Result<Arc<dyn EncodedPusher>, PushError>;
}

#[async_trait]
impl EncodedPusher for IngesterClient {
    async fn push_encoded(
        &self,
        tenant: &TenantId,
        write_request: Bytes,
    ) -> Result<PushOutcome, PushError> {
        IngesterClient::push_encoded(self, tenant, write_request).await
    }
}

impl PusherPool for IngesterClientPool {
    fn pusher(&self, addr: &str) -> Result<Arc<dyn EncodedPusher>, PushError> {
        self.get(addr)
            .map(|c| Arc::new(c) as Arc<dyn EncodedPusher>)
            .map_err(|e| PushError::Unavailable(format!("ingester {addr}: {e}")))
    }
}

/// Recent data of a tenant: every ingester that may hold its series, asked at once; up to
/// the ring's tolerated failures may be missing.
pub struct IngesterReadSet {
    ring: Ring,
    pool: Arc<IngesterClientPool>,
}

impl IngesterReadSet {
    pub fn new(ring: Ring, pool: Arc<IngesterClientPool>) -> Self {
        Self { ring, pool }
    }

    fn clients(&self) -> Result<(Vec<IngesterClient>, usize), StorageError> {
        let set = self
            .ring
            .replication_set_for_reads(norn_model::now_ms())
            .map_err(|e| StorageError::Unavailable(format!("ingester ring: {e}")))?;
        let clients = set
            .instances
            .iter()
            .map(|i| {
                self.pool
                    .get(&i.addr)
                    .map_err(|e| StorageError::Unavailable(format!("ingester {}: {e}", i.addr)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((clients, set.max_errors))
    }
}

impl QueryableProvider for IngesterReadSet {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        match self.clients() {
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
impl MetadataReader for IngesterReadSet {
    async fn metadata(
        &self,
        tenant: &TenantId,
        metric: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError> {
        let (clients, max_errors) = self.clients()?;
        let answers = gather_quorum(
            clients.iter().map(|c| c.metadata(tenant, metric, limit)),
            max_errors,
        )
        .await?;
        let mut all: Vec<MetricMetadata> = answers.into_iter().flatten().collect();
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
