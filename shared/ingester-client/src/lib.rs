//! gRPC client for the ingester (`norn.ingester.v1.Ingester`), and a pool of them by address.
//!
//! [`replicas`] puts the pool under the distributor's and querier's interfaces.
//!
//! Distributors push through [`IngesterClient`] as a [`Pusher`]; queriers read through
//! [`IngesterClient::queryable`] as a [`Queryable`]. Channels are opened lazily
//! (`Endpoint::connect_lazy`): [`IngesterClientPool::get`] never waits on the network, and a
//! channel reconnects by itself after its ingester restarts. A refused connection fails the
//! call at once instead of waiting for the timeout, so a distributor moves on to the next
//! replica quickly.
//!
//! Errors keep their kind across the wire ([`norn_proto::status::error_kind`], then
//! `PushError::from_kind` / `StorageError::from_kind`): what the ingester or the network
//! cannot do right now (connection refused or reset, `UNAVAILABLE`, a timeout) becomes
//! `PushError::Unavailable` / `StorageError::Unavailable`, which callers retry elsewhere; a
//! query over a limit is `StorageError::Limit`; everything else is `Internal`.

pub mod replicas;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use norn_model::{
    ChunkSeries, EncodedChunk, Labels, Matcher, MetricMetadata, PushError, PushOutcome, Pusher,
    Queryable, RejectReason, Series, StorageError, TenantId, WriteBatch,
};
use norn_proto::TENANT_METADATA_KEY;
use norn_proto::convert::{labels_from_proto, matchers_to_proto, metadata_from_proto};
use norn_proto::health::v1::HealthCheckRequest;
use norn_proto::health::v1::health_check_response::ServingStatus;
use norn_proto::health::v1::health_client::HealthClient;
use norn_proto::ingester::v1 as pb;
use norn_proto::ingester::v1::ingester_client::IngesterClient as RpcClient;
use norn_proto::status::{MAX_MESSAGE_SIZE, error_kind};
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, Registry};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub use replicas::{EncodedPusher, IngesterReadSet, PusherPool};

/// Timeouts of the ingester client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Time to establish a TCP connection (and HTTP/2 handshake).
    pub connect_timeout: Duration,
    /// Deadline of a push and of the small RPCs (health, user stats).
    pub request_timeout: Duration,
    /// Deadline of reads: query stream, label names and values, series, metadata.
    pub query_timeout: Duration,
    /// TLS to the servers (`<prefix>.tls-*`); plain text when `None`.
    pub tls: Option<std::sync::Arc<norn_server::tls::ClientTls>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// A client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid ingester address {addr:?} (want host:port): {source}")]
    InvalidAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Per-tenant statistics an ingester reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserStats {
    /// Series in the tenant's head.
    pub num_series: u64,
    /// Samples per second; 0 when the ingester does not track it.
    pub ingestion_rate: f64,
    pub api_ingestion_rate: f64,
    pub rule_ingestion_rate: f64,
}

/// The client's metrics, shared by every client of a pool.
#[derive(Clone)]
struct ClientMetrics {
    duration: HistogramVec,
}

impl ClientMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_ingester_client_request_duration_seconds",
                "Time spent on requests to ingesters, by operation and gRPC status code.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["operation", "status_code"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { duration })
    }
}

/// Ingester clients by address, sharing one configuration and one set of metrics.
pub struct IngesterClientPool {
    config: ClientConfig,
    metrics: ClientMetrics,
    clients: Mutex<HashMap<String, IngesterClient>>,
}

impl IngesterClientPool {
    /// An empty pool whose metrics are registered on `registry` (one pool per registry).
    pub fn new(config: ClientConfig, registry: &Registry) -> prometheus::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            config,
            metrics: ClientMetrics::new(registry)?,
            clients: Mutex::default(),
        }))
    }

    /// The client for `addr` (`host:port`), created on first use. Never touches the network,
    /// but must run inside a Tokio runtime (the channel's worker task is spawned there).
    pub fn get(&self, addr: &str) -> Result<IngesterClient, ClientError> {
        if let Some(c) = self.clients.lock().get(addr) {
            return Ok(c.clone());
        }
        let client = IngesterClient::connect_lazy(addr, &self.config, self.metrics.clone())?;
        // Two callers may race to create it; the first one stored wins so both share a channel.
        Ok(self
            .clients
            .lock()
            .entry(addr.to_string())
            .or_insert(client)
            .clone())
    }

    /// Forgets the client for `addr` (an ingester that left the ring).
    pub fn remove(&self, addr: &str) {
        self.clients.lock().remove(addr);
    }

    /// Addresses of the pooled clients.
    pub fn addrs(&self) -> Vec<String> {
        self.clients.lock().keys().cloned().collect()
    }

    /// Health-checks every pooled client at once; removes the ones that fail (so a restarted
    /// node gets a fresh channel).
    pub async fn check_health_all(&self) {
        let clients: Vec<IngesterClient> = self.clients.lock().values().cloned().collect();
        let results = futures::future::join_all(
            clients
                .iter()
                .map(|c| async move { c.check_health().await }),
        )
        .await;
        let mut pool = self.clients.lock();
        for (c, healthy) in clients.iter().zip(results) {
            if healthy {
                continue;
            }
            // Only if it was not replaced meanwhile.
            if pool
                .get(c.addr())
                .is_some_and(|cur| Arc::ptr_eq(&cur.inner, &c.inner))
            {
                tracing::info!(addr = c.addr(), "removing unhealthy ingester client");
                pool.remove(c.addr());
            }
        }
    }
}

struct Inner {
    addr: String,
    rpc: RpcClient<Channel>,
    health: HealthClient<Channel>,
    config: ClientConfig,
    metrics: ClientMetrics,
}

/// A client of one ingester. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct IngesterClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IngesterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngesterClient")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

fn status_label(code: Code) -> String {
    format!("{code:?}")
}

/// The `&'static` reason string the ingester's head uses, so outcomes read the same whether
/// the ingester is in-process or remote. A reason this client does not know (a newer
/// ingester) is reported as `other` to keep metric labels bounded.
fn reason_str(reason: &str) -> &'static str {
    RejectReason::from_str_opt(reason).map_or("other", RejectReason::as_str)
}

impl IngesterClient {
    fn connect_lazy(
        addr: &str,
        config: &ClientConfig,
        metrics: ClientMetrics,
    ) -> Result<Self, ClientError> {
        let invalid = |source| ClientError::InvalidAddress {
            addr: addr.to_string(),
            source,
        };
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(invalid)?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Notices a dead peer (a node gone without closing its connections) between pushes.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = norn_server::tls::client::connect_lazy(channel, config.tls.as_ref());
        let rpc = RpcClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                rpc,
                health: HealthClient::new(channel),
                config: config.clone(),
                metrics,
            }),
        })
    }

    /// The ingester's address (`host:port`).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Reads of `tenant` from this ingester.
    pub fn queryable(&self, tenant: TenantId) -> Arc<dyn Queryable> {
        Arc::new(RemoteQueryable {
            client: self.clone(),
            tenant,
        })
    }

    fn request<T>(&self, tenant: &TenantId, msg: T, timeout: Duration) -> Request<T> {
        let mut req = Request::new(msg);
        // Tenant ids are validated to printable ASCII, so this always parses.
        if let Ok(v) = tenant.as_str().parse() {
            req.metadata_mut().insert(TENANT_METADATA_KEY, v);
        }
        // Tells the server the deadline too, so it stops working for a caller that gave up.
        req.set_timeout(timeout);
        req
    }

    /// Runs one call under a client-side deadline, recording its latency and status.
    async fn call<T>(
        &self,
        operation: &'static str,
        timeout: Duration,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        };
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        self.inner
            .metrics
            .duration
            .with_label_values(&[operation, &status_label(code)])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn storage_error(&self, operation: &str, s: Status) -> StorageError {
        let msg = format!(
            "{operation} on ingester {}: {} ({:?})",
            self.inner.addr,
            s.message(),
            s.code()
        );
        StorageError::from_kind(error_kind(&s), msg)
    }

    async fn query_stream(
        &self,
        tenant: &TenantId,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<pb::StreamSeries>, StorageError> {
        let timeout = self.inner.config.query_timeout;
        let req = self.request(
            tenant,
            pb::QueryRequest {
                start_ms,
                end_ms,
                matchers: matchers_to_proto(matchers),
            },
            timeout,
        );
        let mut rpc = self.inner.rpc.clone();
        self.call("QueryStream", timeout, async move {
            let mut stream = rpc.query_stream(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(msg) = stream.message().await? {
                out.extend(msg.series);
            }
            Ok(out)
        })
        .await
        .map_err(|s| self.storage_error("QueryStream", s))
    }

    /// Label sets of the series matching `matchers` with data in `[start_ms, end_ms]`,
    /// sorted.
    pub async fn series(
        &self,
        tenant: &TenantId,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Labels>, StorageError> {
        let timeout = self.inner.config.query_timeout;
        let req = self.request(
            tenant,
            pb::SeriesRequest {
                start_ms,
                end_ms,
                matchers: matchers_to_proto(matchers),
            },
            timeout,
        );
        let mut rpc = self.inner.rpc.clone();
        let resp = self
            .call("Series", timeout, async move {
                Ok(rpc.series(req).await?.into_inner())
            })
            .await
            .map_err(|s| self.storage_error("Series", s))?;
        let mut out: Vec<Labels> = resp
            .series
            .into_iter()
            .map(|s| labels_from_proto(s.labels))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Metric metadata; `metric` restricts to one family, `limit` (0 = none) caps families.
    pub async fn metadata(
        &self,
        tenant: &TenantId,
        metric: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError> {
        let timeout = self.inner.config.query_timeout;
        let req = self.request(
            tenant,
            pb::MetricsMetadataRequest {
                metric: metric.unwrap_or_default().to_string(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
            timeout,
        );
        let mut rpc = self.inner.rpc.clone();
        let resp = self
            .call("MetricsMetadata", timeout, async move {
                Ok(rpc.metrics_metadata(req).await?.into_inner())
            })
            .await
            .map_err(|s| self.storage_error("MetricsMetadata", s))?;
        Ok(resp.metadata.into_iter().map(metadata_from_proto).collect())
    }

    pub async fn user_stats(&self, tenant: &TenantId) -> Result<UserStats, StorageError> {
        let timeout = self.inner.config.request_timeout;
        let req = self.request(tenant, pb::UserStatsRequest {}, timeout);
        let mut rpc = self.inner.rpc.clone();
        let r = self
            .call("UserStats", timeout, async move {
                Ok(rpc.user_stats(req).await?.into_inner())
            })
            .await
            .map_err(|s| self.storage_error("UserStats", s))?;
        Ok(UserStats {
            num_series: r.num_series,
            ingestion_rate: r.ingestion_rate,
            api_ingestion_rate: r.api_ingestion_rate,
            rule_ingestion_rate: r.rule_ingestion_rate,
        })
    }

    /// Whether the ingester answers its health check with SERVING.
    pub async fn check_health(&self) -> bool {
        let timeout = self.inner.config.request_timeout;
        let mut req = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.set_timeout(timeout);
        let mut health = self.inner.health.clone();
        let result = self
            .call("Check", timeout, async move {
                Ok(health.check(req).await?.into_inner())
            })
            .await;
        match result {
            Ok(r) => r.status == ServingStatus::Serving as i32,
            Err(s) => {
                tracing::debug!(addr = self.addr(), code = ?s.code(), message = s.message(), "ingester health check failed");
                false
            }
        }
    }
}

#[async_trait]
impl Pusher for IngesterClient {
    async fn push(&self, tenant: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        self.push_encoded(tenant, norn_proto::encode_write_request(&batch).into())
            .await
    }
}

impl IngesterClient {
    /// Pushes an already encoded remote-write `WriteRequest` (uncompressed): the distributor
    /// encodes a request once and sends each replica its part.
    pub async fn push_encoded(
        &self,
        tenant: &TenantId,
        write_request: bytes::Bytes,
    ) -> Result<PushOutcome, PushError> {
        let timeout = self.inner.config.request_timeout;
        let req = self.request(tenant, pb::PushRequest { write_request }, timeout);
        let mut rpc = self.inner.rpc.clone();
        let resp = self
            .call("Push", timeout, async move {
                Ok(rpc.push(req).await?.into_inner())
            })
            .await;
        // The ingester refused part of the request for good (it stored the valid series):
        // an outcome with an error message, which the distributor answers with 400, not a
        // failure a retry could fix. This is the ingester's partial-refusal answer
        // (INVALID_ARGUMENT with `norn-appended`), so it is matched by code, not by kind.
        if let Err(s) = &resp
            && s.code() == Code::InvalidArgument
        {
            let appended = s
                .metadata()
                .get("norn-appended")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return Ok(PushOutcome {
                appended,
                rejected: Vec::new(),
                first_error: Some(s.message().to_string()),
            });
        }
        let resp = resp.map_err(|s| {
            let msg = format!(
                "push to ingester {}: {} ({:?})",
                self.inner.addr,
                s.message(),
                s.code()
            );
            PushError::from_kind(error_kind(&s), msg)
        })?;
        Ok(PushOutcome {
            appended: resp.appended as usize,
            rejected: resp
                .rejected
                .iter()
                .map(|r| (reason_str(&r.reason), r.count as usize))
                .collect(),
            first_error: (!resp.first_error.is_empty()).then_some(resp.first_error),
        })
    }
}

/// One tenant's view of one ingester.
struct RemoteQueryable {
    client: IngesterClient,
    tenant: TenantId,
}

/// Streamed series as they came: chunks as the ingester holds them, not decoded.
///
/// `pub` only so the `grpc_messages` fuzz target (`fuzz/`, outside the workspace) can run
/// the client's real conversion of a `QueryStream` answer; not part of the crate's API.
#[doc(hidden)]
pub fn chunk_series(series: Vec<pb::StreamSeries>) -> Vec<ChunkSeries> {
    series
        .into_iter()
        .map(|s| ChunkSeries {
            labels: labels_from_proto(s.labels),
            chunks: s
                .chunks
                .into_iter()
                .map(|c| EncodedChunk {
                    min_t: c.min_time_ms,
                    max_t: c.max_time_ms,
                    // An encoding that does not fit a byte is no encoding we know: 0 reads
                    // as "unsupported" when decoded.
                    encoding: u8::try_from(c.encoding).unwrap_or(0),
                    data: c.data,
                })
                .collect(),
        })
        .collect()
}

/// Decodes streamed series, keeping the samples in `[start_ms, end_ms]`; series left with no
/// sample are dropped. Sorted by labels.
fn decode_series(
    series: Vec<pb::StreamSeries>,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<Series>, String> {
    norn_model::query::decode_chunk_series(chunk_series(series), start_ms, end_ms)
}

#[async_trait]
impl Queryable for RemoteQueryable {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        let raw = self
            .client
            .query_stream(&self.tenant, start_ms, end_ms, matchers)
            .await?;
        // Decoding chunks is CPU work proportional to the result: off the reactor.
        let addr = self.client.addr().to_string();
        tokio::task::spawn_blocking(move || decode_series(raw, start_ms, end_ms))
            .await
            .map_err(|e| StorageError::Internal(format!("decoding task failed: {e}")))?
            .map_err(|e| StorageError::Internal(format!("query stream from ingester {addr}: {e}")))
    }

    /// The ingester's chunks as they came over the wire, sorted by labels: nothing is
    /// decoded (a store-gateway or a querier that merges chunks reads them so).
    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let raw = self
            .client
            .query_stream(&self.tenant, start_ms, end_ms, matchers)
            .await?;
        let mut out = chunk_series(raw);
        out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let c = &self.client;
        let timeout = c.inner.config.query_timeout;
        let req = c.request(
            &self.tenant,
            pb::LabelNamesRequest {
                start_ms,
                end_ms,
                matchers: matchers_to_proto(matchers),
            },
            timeout,
        );
        let mut rpc = c.inner.rpc.clone();
        c.call("LabelNames", timeout, async move {
            Ok(rpc.label_names(req).await?.into_inner().label_names)
        })
        .await
        .map_err(|s| c.storage_error("LabelNames", s))
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let c = &self.client;
        let timeout = c.inner.config.query_timeout;
        let req = c.request(
            &self.tenant,
            pb::LabelValuesRequest {
                label_name: name.to_string(),
                start_ms,
                end_ms,
                matchers: matchers_to_proto(matchers),
            },
            timeout,
        );
        let mut rpc = c.inner.rpc.clone();
        c.call("LabelValues", timeout, async move {
            Ok(rpc.label_values(req).await?.into_inner().label_values)
        })
        .await
        .map_err(|s| c.storage_error("LabelValues", s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_chunkenc::XorChunk;
    use norn_model::Sample;

    fn chunk(samples: &[(i64, f64)]) -> pb::Chunk {
        let mut c = XorChunk::new();
        for (t, v) in samples {
            c.append(*t, *v);
        }
        pb::Chunk {
            min_time_ms: samples[0].0,
            max_time_ms: samples[samples.len() - 1].0,
            encoding: pb::ChunkEncoding::Xor as i32,
            data: c.bytes().to_vec().into(),
        }
    }

    fn stream_series(name: &str, chunks: Vec<pb::Chunk>) -> pb::StreamSeries {
        pb::StreamSeries {
            labels: vec![pb::Label {
                name: "__name__".into(),
                value: name.into(),
            }],
            chunks,
        }
    }

    #[test]
    fn decoding_trims_to_the_range_and_sorts() {
        let raw = vec![
            stream_series("b", vec![chunk(&[(1, 1.0), (5, 2.0)]), chunk(&[(10, 3.0)])]),
            stream_series("a", vec![chunk(&[(2, 4.0), (3, 5.0)])]),
            stream_series("c", vec![chunk(&[(100, 1.0)])]),
        ];
        let got = decode_series(raw, 2, 10).unwrap();
        assert_eq!(got.len(), 2, "c has nothing in range");
        assert_eq!(got[0].labels.metric_name(), Some("a"));
        assert_eq!(
            got[1].samples,
            vec![Sample::new(5, 2.0), Sample::new(10, 3.0)]
        );
    }

    #[test]
    fn corrupt_or_unknown_chunks_are_errors() {
        let mut bad = chunk(&[(1, 1.0), (2, 2.0)]);
        bad.data = bad.data.slice(..3);
        assert!(decode_series(vec![stream_series("a", vec![bad])], 0, 10).is_err());
        let mut other = chunk(&[(1, 1.0)]);
        other.encoding = 7;
        assert!(decode_series(vec![stream_series("a", vec![other])], 0, 10).is_err());
    }

    #[test]
    fn unknown_reasons_stay_bounded() {
        assert_eq!(reason_str("sample-out-of-order"), "sample-out-of-order");
        assert_eq!(reason_str("something-new"), "other");
    }

    #[tokio::test]
    async fn bad_addresses_are_refused() {
        let pool = IngesterClientPool::new(ClientConfig::default(), &Registry::new()).unwrap();
        assert!(pool.get("not an address").is_err());
        assert!(pool.get("127.0.0.1:9095").is_ok());
        assert_eq!(pool.addrs(), ["127.0.0.1:9095"]);
        pool.remove("127.0.0.1:9095");
        assert!(pool.addrs().is_empty());
    }
}
