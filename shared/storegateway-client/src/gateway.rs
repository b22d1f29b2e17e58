//! One store-gateway as the querier calls it: [`Gateway`], implemented by the gRPC client
//! ([`GatewayClient`], pooled by address in [`GatewayClientPool`]) and, in one process, by the
//! store-gateway's own API object ([`InProcessGateway`]), so both modes share every line of
//! the routing, retry and merging code.
//!
//! The tenant travels in the `x-scope-orgid` request metadata in both modes: the in-process
//! call builds the same `tonic::Request` a network call would.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use norn_model::TenantId;
use norn_proto::TENANT_METADATA_KEY;
use norn_proto::health::v1::HealthCheckRequest;
use norn_proto::health::v1::health_check_response::ServingStatus;
use norn_proto::health::v1::health_client::HealthClient;
use norn_proto::status::MAX_MESSAGE_SIZE;
use norn_proto::storegateway::v1 as pb;
use norn_proto::storegateway::v1::store_gateway_client::StoreGatewayClient;
use norn_proto::storegateway::v1::store_gateway_server::StoreGateway;
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, Registry};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The stream of a `Series` call.
pub type SeriesStream = Pin<Box<dyn Stream<Item = Result<pb::SeriesResponse, Status>> + Send>>;

/// One store-gateway, remote or in this process.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// Its address (`host:port`), or a name for the in-process one; errors name it.
    fn addr(&self) -> &str;

    /// `Series`: the response stream, not yet read (the caller reads it under its limits).
    async fn series(
        &self,
        tenant: &TenantId,
        req: pb::SeriesRequest,
    ) -> Result<SeriesStream, Status>;

    async fn label_names(
        &self,
        tenant: &TenantId,
        req: pb::LabelNamesRequest,
    ) -> Result<pb::LabelNamesResponse, Status>;

    async fn label_values(
        &self,
        tenant: &TenantId,
        req: pb::LabelValuesRequest,
    ) -> Result<pb::LabelValuesResponse, Status>;
}

/// `msg` with the tenant in its metadata and `timeout` as its deadline.
fn request<T>(tenant: &TenantId, msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut req = Request::new(msg);
    // Tenant ids are validated to printable ASCII, so this always parses.
    if let Ok(v) = tenant.as_str().parse() {
        req.metadata_mut().insert(TENANT_METADATA_KEY, v);
    }
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

/// The store-gateway of this process (`--target=all`), called through its gRPC trait.
pub struct InProcessGateway<S> {
    api: Arc<S>,
}

impl<S: StoreGateway> InProcessGateway<S> {
    /// The store-gateway API `api` as a [`Gateway`].
    pub fn of(api: Arc<S>) -> Arc<dyn Gateway> {
        Arc::new(Self { api })
    }
}

#[async_trait]
impl<S: StoreGateway> Gateway for InProcessGateway<S> {
    fn addr(&self) -> &str {
        "in-process"
    }

    async fn series(
        &self,
        tenant: &TenantId,
        req: pb::SeriesRequest,
    ) -> Result<SeriesStream, Status> {
        let stream = self
            .api
            .series(request(tenant, req, None))
            .await?
            .into_inner();
        Ok(stream.boxed())
    }

    async fn label_names(
        &self,
        tenant: &TenantId,
        req: pb::LabelNamesRequest,
    ) -> Result<pb::LabelNamesResponse, Status> {
        Ok(self
            .api
            .label_names(request(tenant, req, None))
            .await?
            .into_inner())
    }

    async fn label_values(
        &self,
        tenant: &TenantId,
        req: pb::LabelValuesRequest,
    ) -> Result<pb::LabelValuesResponse, Status> {
        Ok(self
            .api
            .label_values(request(tenant, req, None))
            .await?
            .into_inner())
    }
}

/// Timeouts of the store-gateway client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Time to establish a TCP connection (and HTTP/2 handshake).
    pub connect_timeout: Duration,
    /// Deadline of one call, its whole stream included.
    pub query_timeout: Duration,
    /// Deadline of a health check.
    pub health_check_timeout: Duration,
    /// TLS to the servers (`<prefix>.tls-*`); plain text when `None`.
    pub tls: Option<std::sync::Arc<norn_server::tls::ClientTls>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(120),
            health_check_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// A client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid store-gateway address {addr:?} (want host:port): {source}")]
    InvalidAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

#[derive(Clone)]
struct ClientMetrics {
    duration: HistogramVec,
}

impl ClientMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_storegateway_client_request_duration_seconds",
                "Time spent on requests to store-gateways, by operation and gRPC status code.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0,
            ]),
            &["operation", "status_code"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { duration })
    }

    fn observe(&self, operation: &str, code: Code, started: Instant) {
        self.duration
            .with_label_values(&[operation, &format!("{code:?}")])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A gRPC client of one store-gateway. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct GatewayClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    addr: String,
    rpc: StoreGatewayClient<Channel>,
    health: HealthClient<Channel>,
    config: ClientConfig,
    metrics: ClientMetrics,
}

impl GatewayClient {
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
            // Notices a store-gateway gone without closing its connections (kill -9, a lost
            // host) between queries, rather than on the next query's deadline.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = norn_server::tls::client::connect_lazy(channel, config.tls.as_ref());
        let rpc = StoreGatewayClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            inner: Arc::new(ClientInner {
                addr: addr.to_string(),
                rpc,
                health: HealthClient::new(channel),
                config: config.clone(),
                metrics,
            }),
        })
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let timeout = self.inner.config.query_timeout;
        let result = match tokio::time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        };
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.inner.metrics.observe(operation, code, started);
        result
    }

    /// Whether the store-gateway answers its health check. A server without the health
    /// service (UNIMPLEMENTED) answered, so it counts as up.
    pub async fn check_health(&self) -> bool {
        let timeout = self.inner.config.health_check_timeout;
        let mut req = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.set_timeout(timeout);
        let mut health = self.inner.health.clone();
        match tokio::time::timeout(timeout, health.check(req)).await {
            Ok(Ok(r)) => r.into_inner().status == ServingStatus::Serving as i32,
            Ok(Err(s)) => s.code() == Code::Unimplemented,
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Gateway for GatewayClient {
    fn addr(&self) -> &str {
        &self.inner.addr
    }

    async fn series(
        &self,
        tenant: &TenantId,
        req: pb::SeriesRequest,
    ) -> Result<SeriesStream, Status> {
        let timeout = self.inner.config.query_timeout;
        let req = request(tenant, req, Some(timeout));
        let mut rpc = self.inner.rpc.clone();
        let stream = self
            .call(
                "Series",
                async move { Ok(rpc.series(req).await?.into_inner()) },
            )
            .await?;
        // The stream's own reading is bounded by the caller's deadline (the querier's query
        // timeout) and by the request's grpc-timeout, which the server honours.
        Ok(stream.boxed())
    }

    async fn label_names(
        &self,
        tenant: &TenantId,
        req: pb::LabelNamesRequest,
    ) -> Result<pb::LabelNamesResponse, Status> {
        let req = request(tenant, req, Some(self.inner.config.query_timeout));
        let mut rpc = self.inner.rpc.clone();
        self.call("LabelNames", async move {
            Ok(rpc.label_names(req).await?.into_inner())
        })
        .await
    }

    async fn label_values(
        &self,
        tenant: &TenantId,
        req: pb::LabelValuesRequest,
    ) -> Result<pb::LabelValuesResponse, Status> {
        let req = request(tenant, req, Some(self.inner.config.query_timeout));
        let mut rpc = self.inner.rpc.clone();
        self.call("LabelValues", async move {
            Ok(rpc.label_values(req).await?.into_inner())
        })
        .await
    }
}

/// Store-gateway clients by address, sharing one configuration and one set of metrics.
pub struct GatewayClientPool {
    config: ClientConfig,
    metrics: ClientMetrics,
    clients: Mutex<HashMap<String, GatewayClient>>,
}

impl GatewayClientPool {
    /// An empty pool whose metrics are registered on `registry` (one pool per registry).
    pub fn new(config: ClientConfig, registry: &Registry) -> prometheus::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            config,
            metrics: ClientMetrics::new(registry)?,
            clients: Mutex::default(),
        }))
    }

    /// The client for `addr`, created on first use without touching the network (must run
    /// inside a Tokio runtime).
    pub fn get(&self, addr: &str) -> Result<GatewayClient, ClientError> {
        if let Some(c) = self.clients.lock().get(addr) {
            return Ok(c.clone());
        }
        let client = GatewayClient::connect_lazy(addr, &self.config, self.metrics.clone())?;
        Ok(self
            .clients
            .lock()
            .entry(addr.to_string())
            .or_insert(client)
            .clone())
    }

    /// Addresses of the pooled clients.
    pub fn addrs(&self) -> Vec<String> {
        self.clients.lock().keys().cloned().collect()
    }

    /// Health-checks every pooled client at once and drops the failing ones, so a restarted
    /// store-gateway gets a fresh channel and a gone one stops holding a connection.
    pub async fn check_health_all(&self) {
        let clients: Vec<GatewayClient> = self.clients.lock().values().cloned().collect();
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
            if pool
                .get(c.addr())
                .is_some_and(|cur| Arc::ptr_eq(&cur.inner, &c.inner))
            {
                tracing::info!(addr = c.addr(), "removing unhealthy store-gateway client");
                pool.remove(c.addr());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_addresses_are_refused_and_clients_are_shared() {
        let pool = GatewayClientPool::new(ClientConfig::default(), &Registry::new()).unwrap();
        assert!(pool.get("not an address").is_err());
        let a = pool.get("127.0.0.1:1").unwrap();
        let b = pool.get("127.0.0.1:1").unwrap();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        // Nothing listens on port 1: the check fails and the client is dropped.
        pool.check_health_all().await;
        assert!(pool.addrs().is_empty());
    }
}
