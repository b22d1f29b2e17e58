//! The ingester's gRPC server: `norn.ingester.v1.Ingester` over an [`Ingester`], plus the
//! standard `grpc.health.v1.Health` service.
//!
//! The tenant comes from the `x-scope-orgid` request metadata. Pushes carry a remote-write
//! `WriteRequest` as bytes and are decoded with the same allocation-free decoder as the HTTP
//! endpoint. `QueryStream` ships each selected series' chunks as the head and blocks hold
//! them ([`select_chunks`](norn_model::Queryable::select_chunks): no decoding and
//! re-encoding on the way; the client decodes and trims to the range) and streams them
//! [`SERIES_PER_MESSAGE`] series at a time, so a large result never has to fit one message.
//! Chunks are not cut to the range here: a short range (a dashboard's last 5 minutes) then
//! ships whole open chunks, about 3.5 times the bytes, but cutting them
//! ([`ChunkSeries::trim_sparse`](norn_model::ChunkSeries::trim_sparse)) measured dearer in
//! CPU than the decode-and-re-encode it replaces (see `head_select`).
//!
//! Error codes follow the error kinds ([`norn_proto::status`]): a push the ingester cannot
//! take now (starting, stopping, leaving) is `UNAVAILABLE`, which distributors retry on
//! another replica; a body that does not decode is `INVALID_ARGUMENT`, which they must not
//! retry. Pushed series are
//! re-validated with the distributor's checks: the valid ones are stored and, if any was
//! refused, the answer is `INVALID_ARGUMENT` naming the first (with the count stored in the
//! `norn-appended` response metadata).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use norn_model::validation::check_batch;
use norn_model::{
    ErrorKind, MetadataReader, PushError, Pusher, QueryableProvider, StorageError, TenantError,
    TenantId, TimeWindow, WriteBatch,
};
use norn_proto::convert::{
    TENANT_METADATA_KEY, chunk_series_into_proto, labels_into_proto, matchers_from_proto,
    metadata_to_proto,
};
use norn_proto::health::v1::health_check_response::ServingStatus;
use norn_proto::health::v1::health_server::{Health, HealthServer};
use norn_proto::health::v1::{HealthCheckRequest, HealthCheckResponse};
use norn_proto::ingester::v1 as pb;
use norn_proto::ingester::v1::ingester_server::{Ingester as IngesterRpc, IngesterServer};
use norn_proto::status::{MessageLimits, status};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tonic::{Request, Response, Status};

use crate::Ingester;

/// Series per `QueryStreamResponse` message.
pub const SERIES_PER_MESSAGE: usize = 128;

/// Response metadata of an `INVALID_ARGUMENT` push: how many samples of the request's valid
/// series were stored anyway.
pub const APPENDED_METADATA_KEY: &str = "norn-appended";

/// Batches with more samples than this are validated off the async reactor.
const BLOCKING_CHECK_SAMPLES: usize = 20_000;

/// Full name of the ingester service, as health checks name it.
pub const SERVICE_NAME: &str = "norn.ingester.v1.Ingester";

/// How often `Health/Watch` looks at the ingester's state.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Serves both services on `listener` until `shutdown` resolves, then drains in-flight
/// requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingester: Arc<Ingester>,
    metrics: GrpcMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (ingester_svc, health_svc) = services(ingester, metrics, MessageLimits::default());
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ingester_svc)
        .add_service(health_svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The two tonic services, with message limits set, for a harness that mounts them itself.
pub fn services(
    ingester: Arc<Ingester>,
    metrics: GrpcMetrics,
    limits: MessageLimits,
) -> (IngesterServer<IngesterGrpc>, HealthServer<HealthGrpc>) {
    let ingester_svc = IngesterServer::new(IngesterGrpc::new(Arc::clone(&ingester), metrics))
        .max_decoding_message_size(limits.max_recv)
        .max_encoding_message_size(limits.max_send);
    let health_svc = HealthServer::new(HealthGrpc { ingester });
    (ingester_svc, health_svc)
}

/// Request counts and latencies per RPC method. Built once per process (usually on the
/// ingester's registry) and handed to every server started, so a gRPC server restarted in
/// the same process keeps counting where the last one stopped.
#[derive(Clone)]
pub struct GrpcMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl GrpcMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "norn_ingester_grpc_requests_total",
                "gRPC requests the ingester served, by method and status code.",
            ),
            &["method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_ingester_grpc_request_duration_seconds",
                "Time the ingester spent on gRPC requests, by method (streams: until the \
                 selection is done, not until the client has read it).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }

    fn observe<T>(&self, method: &str, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `norn.ingester.v1.Ingester` over an in-process [`Ingester`].
pub struct IngesterGrpc {
    ingester: Arc<Ingester>,
    metrics: GrpcMetrics,
}

impl IngesterGrpc {
    pub fn new(ingester: Arc<Ingester>, metrics: GrpcMetrics) -> Self {
        Self { ingester, metrics }
    }

    /// Runs `f`, recording its outcome and latency under `method`.
    async fn instrumented<T>(
        &self,
        method: &'static str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = f.await;
        self.metrics.observe(method, started, &result);
        result.map(Response::new)
    }
}

impl IngesterGrpc {
    /// Re-checks a pushed batch with the distributor's checks ([`check_batch`]) and the
    /// tenant's limits: anyone who reaches the gRPC port can push, and the head must never
    /// store what would break a cut or a query (unsorted or duplicate labels, invalid names,
    /// huge values, no metric name, timestamps outside the window). Returns the valid part
    /// and the first refusal's message; refusals are counted like the distributor's.
    async fn validate(
        &self,
        tenant: &TenantId,
        batch: WriteBatch,
    ) -> Result<(WriteBatch, Option<String>), Status> {
        let limits = self
            .ingester
            .overrides
            .for_tenant(tenant.as_str())
            .validation();
        let window = TimeWindow::new(norn_model::now_ms(), &limits);
        let check = move |mut batch: WriteBatch| {
            let checked = check_batch(&mut batch, &limits, window);
            (batch, checked)
        };
        let (batch, checked) = if batch.num_samples() > BLOCKING_CHECK_SAMPLES {
            tokio::task::spawn_blocking(move || check(batch))
                .await
                .map_err(|e| status(ErrorKind::Internal, format!("validation task failed: {e}")))?
        } else {
            check(batch)
        };
        let Some(first_error) = checked.first_error else {
            return Ok((batch, None));
        };
        for (reason, n) in &checked.refused {
            self.ingester
                .metrics
                .discarded_samples
                .with_label_values(&[tenant.as_str(), reason])
                .inc_by(*n as u64);
        }
        Ok((batch.subset(&checked.keep, true), Some(first_error)))
    }
}

/// The tenant named by the request's `x-scope-orgid` metadata.
fn tenant<T>(req: &Request<T>) -> Result<TenantId, Status> {
    let Some(value) = req.metadata().get(TENANT_METADATA_KEY) else {
        return Err(status(
            TenantError::Missing.kind(),
            format!("no org id: the {TENANT_METADATA_KEY} request metadata is missing"),
        ));
    };
    let id = value.to_str().map_err(|_| {
        status(
            ErrorKind::BadData,
            format!("the {TENANT_METADATA_KEY} request metadata is not printable ASCII"),
        )
    })?;
    TenantId::new(id).map_err(|e| {
        let message = match e {
            TenantError::Missing => {
                format!("no org id: the {TENANT_METADATA_KEY} request metadata is empty")
            }
            ref e => format!("invalid tenant id in {TENANT_METADATA_KEY}: {e}"),
        };
        status(e.kind(), message)
    })
}

fn push_status(e: PushError) -> Status {
    status(e.kind(), e.to_string())
}

fn storage_status(e: StorageError) -> Status {
    status(e.kind(), e.to_string())
}

fn matchers(m: Vec<pb::LabelMatcher>) -> Result<Vec<norn_model::Matcher>, Status> {
    matchers_from_proto(m).map_err(|e| status(ErrorKind::BadData, e.to_string()))
}

/// The messages of a `QueryStream` answer, each a batch of series with their chunks.
type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::QueryStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngesterRpc for IngesterGrpc {
    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        self.instrumented("Push", async {
            let tenant = tenant(&request)?;
            let body = request.into_inner().write_request;
            let batch = norn_proto::decode_write_request(body)
                .map_err(|e| status(ErrorKind::BadData, format!("decoding write request: {e}")))?;
            let (batch, refused) = self.validate(&tenant, batch).await?;
            let out = if batch.is_empty() && batch.metadata().is_empty() {
                Default::default()
            } else {
                self.ingester
                    .push(&tenant, batch)
                    .await
                    .map_err(push_status)?
            };
            if let Some(message) = refused {
                // The valid series are stored; the sender learns the rest never will be.
                let mut refusal = status(ErrorKind::BadData, message);
                if let Ok(v) = out.appended.to_string().parse() {
                    refusal.metadata_mut().insert(APPENDED_METADATA_KEY, v);
                }
                return Err(refusal);
            }
            Ok(pb::PushResponse {
                appended: out.appended as u64,
                rejected: out
                    .rejected
                    .iter()
                    .map(|(reason, count)| pb::Rejected {
                        reason: (*reason).to_string(),
                        count: *count as u64,
                    })
                    .collect(),
                first_error: out.first_error.unwrap_or_default(),
            })
        })
        .await
    }

    type QueryStreamStream = QueryStream;

    async fn query_stream(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStreamStream>, Status> {
        self.instrumented("QueryStream", async {
            let tenant = tenant(&request)?;
            let r = request.into_inner();
            let matchers = matchers(r.matchers)?;
            let series = self
                .ingester
                .queryable(&tenant)
                .select_chunks(r.start_ms, r.end_ms, &matchers)
                .await
                .map_err(storage_status)?;
            // Building messages (labels to proto) is work proportional to the result: off
            // the reactor. The small channel makes the builder wait for a slow reader instead
            // of buffering the whole answer; a reader that goes away ends it.
            let (tx, mut rx) = tokio::sync::mpsc::channel(2);
            tokio::task::spawn_blocking(move || {
                let mut series = series.into_iter().peekable();
                while series.peek().is_some() {
                    let msg = pb::QueryStreamResponse {
                        series: series
                            .by_ref()
                            .take(SERIES_PER_MESSAGE)
                            .map(chunk_series_into_proto)
                            .collect(),
                    };
                    if tx.blocking_send(Ok(msg)).is_err() {
                        return;
                    }
                }
            });
            let stream: QueryStream =
                Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
            Ok(stream)
        })
        .await
    }

    async fn label_names(
        &self,
        request: Request<pb::LabelNamesRequest>,
    ) -> Result<Response<pb::LabelNamesResponse>, Status> {
        self.instrumented("LabelNames", async {
            let tenant = tenant(&request)?;
            let r = request.into_inner();
            let matchers = matchers(r.matchers)?;
            let label_names = self
                .ingester
                .queryable(&tenant)
                .label_names(r.start_ms, r.end_ms, &matchers)
                .await
                .map_err(storage_status)?;
            Ok(pb::LabelNamesResponse { label_names })
        })
        .await
    }

    async fn label_values(
        &self,
        request: Request<pb::LabelValuesRequest>,
    ) -> Result<Response<pb::LabelValuesResponse>, Status> {
        self.instrumented("LabelValues", async {
            let tenant = tenant(&request)?;
            let r = request.into_inner();
            let matchers = matchers(r.matchers)?;
            let label_values = self
                .ingester
                .queryable(&tenant)
                .label_values(&r.label_name, r.start_ms, r.end_ms, &matchers)
                .await
                .map_err(storage_status)?;
            Ok(pb::LabelValuesResponse { label_values })
        })
        .await
    }

    async fn series(
        &self,
        request: Request<pb::SeriesRequest>,
    ) -> Result<Response<pb::SeriesResponse>, Status> {
        self.instrumented("Series", async {
            let tenant = tenant(&request)?;
            let r = request.into_inner();
            let matchers = matchers(r.matchers)?;
            // `Queryable` has no labels-only selection yet, so this reads the samples too
            // and drops them; fine for the ingester's few hours of data.
            let series = self
                .ingester
                .queryable(&tenant)
                .select(r.start_ms, r.end_ms, &matchers)
                .await
                .map_err(storage_status)?;
            Ok(pb::SeriesResponse {
                series: series
                    .into_iter()
                    .map(|s| pb::SeriesLabels {
                        labels: labels_into_proto(s.labels),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn metrics_metadata(
        &self,
        request: Request<pb::MetricsMetadataRequest>,
    ) -> Result<Response<pb::MetricsMetadataResponse>, Status> {
        self.instrumented("MetricsMetadata", async {
            let tenant = tenant(&request)?;
            let r = request.into_inner();
            let metric = (!r.metric.is_empty()).then_some(r.metric.as_str());
            let md = self
                .ingester
                .metadata(&tenant, metric, r.limit as usize)
                .await
                .map_err(storage_status)?;
            Ok(pb::MetricsMetadataResponse {
                metadata: md.iter().map(metadata_to_proto).collect(),
            })
        })
        .await
    }

    async fn user_stats(
        &self,
        request: Request<pb::UserStatsRequest>,
    ) -> Result<Response<pb::UserStatsResponse>, Status> {
        self.instrumented("UserStats", async {
            let tenant = tenant(&request)?;
            // Ingestion rates are not tracked yet: 0 says "unknown", as the proto documents.
            Ok(pb::UserStatsResponse {
                num_series: self.ingester.num_series(&tenant) as u64,
                ..Default::default()
            })
        })
        .await
    }
}

/// `grpc.health.v1.Health`: SERVING once WAL replay is done, until the ingester is closed.
pub struct HealthGrpc {
    ingester: Arc<Ingester>,
}

impl HealthGrpc {
    fn status(&self, service: &str) -> Result<ServingStatus, Status> {
        if !service.is_empty() && service != SERVICE_NAME {
            return Err(status(
                ErrorKind::NotFound,
                format!("unknown service {service:?}"),
            ));
        }
        Ok(serving_status(&self.ingester))
    }
}

fn serving_status(ingester: &Ingester) -> ServingStatus {
    if ingester.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthGrpc {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let status = self.status(&request.get_ref().service)?;
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = WatchStream;

    /// Sends the current status, then every change (checked once a second).
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.status(&request.get_ref().service)?;
        let ingester = Arc::clone(&self.ingester);
        let stream = futures::stream::unfold(None, move |last: Option<ServingStatus>| {
            let ingester = Arc::clone(&ingester);
            async move {
                loop {
                    let now = serving_status(&ingester);
                    if last != Some(now) {
                        let msg = HealthCheckResponse { status: now as i32 };
                        return Some((Ok(msg), Some(now)));
                    }
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::{ChunkSeries, Labels, Sample};
    use norn_tsdb::chunkenc::XorIterator;

    #[test]
    fn chunks_go_on_the_wire_as_they_are() {
        let samples: Vec<Sample> = (0..250)
            .map(|i| Sample::new(i * 15_000, i as f64))
            .collect();
        let s = ChunkSeries {
            labels: Labels::from_pairs([("__name__", "up")]),
            chunks: norn_model::query::encode_samples(&samples),
        };
        let enc = chunk_series_into_proto(s.clone());
        assert_eq!(enc.chunks.len(), 3);
        for (wire, chunk) in enc.chunks.iter().zip(&s.chunks) {
            assert_eq!(wire.min_time_ms, chunk.min_t);
            assert_eq!(wire.max_time_ms, chunk.max_t);
            assert_eq!(wire.encoding, pb::ChunkEncoding::Xor as i32);
            // The same bytes, not a copy.
            assert_eq!(wire.data.as_ptr(), chunk.data.as_ptr());
        }
        let back: Vec<Sample> = enc
            .chunks
            .iter()
            .flat_map(|c| XorIterator::new(&c.data).map(|(t, v)| Sample::new(t, v)))
            .collect();
        assert_eq!(back, samples);
    }

    #[test]
    fn tenant_errors_name_the_metadata() {
        let missing = tenant(&Request::new(())).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(
            missing.message().contains("x-scope-orgid"),
            "{}",
            missing.message()
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(TENANT_METADATA_KEY, "a/b".parse().unwrap());
        assert_eq!(
            tenant(&req).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(TENANT_METADATA_KEY, "team-a".parse().unwrap());
        assert_eq!(tenant(&req).unwrap().as_str(), "team-a");
    }
}
