//! The distributor: Norn's write front door.
//!
//! `POST /api/v1/push` takes remote write 1.0 and 2.0 (snappy + protobuf; the Content-Type picks
//! the version, see [`negotiate`]). A [`RequestGuard`] in front of the route resolves the
//! tenant and checks the declared size before the body is read. The pipeline is decode →
//! validate → rate-limit → push: labels are sorted and checked with the shared rules of
//! [`norn_model::validation`] (the ingester's gRPC push re-runs them), samples outside the
//! tenant's time window are dropped, the tenant's token bucket is charged for samples and
//! metadata, and what is valid goes to the [`Pusher`] (the ingester in-process; replication
//! over the ring in a cluster). Responses follow the remote-write spec: 2xx when everything
//! was stored; 400
//! naming the first refused series when some data will never be accepted (the rest is still
//! stored); 429 over the rate limit; 5xx only when a retry can succeed.

pub mod ha_tracker;
pub mod negotiate;
pub mod rate;
pub mod replication;
pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use norn_limits::Overrides;
use norn_model::{ErrorKind, Pusher, TenantId, TimeWindow, WriteBatch};
use norn_server::RequestGuard;
use norn_server::{HttpError, Metrics, Service, TenantResolver};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ha_tracker::{
    GossipReplicaStore, HaError, HaTracker, HaTrackerConfig, MemoryReplicaStore, ReplicaStore,
};
use crate::negotiate::{Protocol, Written};
use crate::rate::RateLimiter;
use crate::replication::{PusherPool, WriteRing};
use crate::validate::check_batch;

/// Batches with more samples than this are validated off the async reactor.
const BLOCKING_CHECK_SAMPLES: usize = 20_000;

/// Distributor configuration (YAML block `distributor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Largest push body accepted, compressed and decompressed (bytes).
    pub max_recv_msg_size: usize,
    /// Longest a push to one ingester may take before it counts as failed.
    #[serde(with = "norn_model::duration::serde_duration")]
    pub remote_timeout: std::time::Duration,
    /// HA-pair deduplication.
    pub ha_tracker: HaTrackerConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_recv_msg_size: 100 << 20,
            remote_timeout: std::time::Duration::from_secs(2),
            ha_tracker: HaTrackerConfig::default(),
        }
    }
}

/// What became of an accepted push.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// Stored (200).
    Stored,
    /// Dropped because it came from an HA replica that is not the elected one (202); the
    /// message says which replica is elected.
    Deduplicated(String),
}

/// The distributor's own counters; the discarded-samples and -metadata counters are the
/// process-wide ones in [`Metrics`], shared with the ingester.
struct DistributorMetrics {
    received_samples: IntCounterVec,
    incoming_samples: IntCounterVec,
    received_metadata: IntCounterVec,
    requests: IntCounterVec,
    discarded_exemplars: IntCounterVec,
}

impl DistributorMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            received_samples: counter(
                "norn_distributor_received_samples_total",
                "Samples accepted by the distributor and handed to ingesters (after validation and limits).",
                &["tenant"],
            )?,
            incoming_samples: counter(
                "norn_distributor_samples_in_total",
                "Samples received in push requests, before validation and limits.",
                &["tenant"],
            )?,
            received_metadata: counter(
                "norn_distributor_received_metadata_total",
                "Metric metadata entries received in push requests.",
                &["tenant"],
            )?,
            requests: counter(
                "norn_distributor_requests_in_total",
                "Push requests received.",
                &["tenant"],
            )?,
            // Named like the process-wide discarded counters (Mimir's
            // `cortex_discarded_exemplars_total`), though only the distributor counts it.
            discarded_exemplars: counter(
                "norn_discarded_exemplars_total",
                "Exemplars refused, by tenant and reason.",
                &["tenant", "reason"],
            )?,
        })
    }
}

/// The distributor service.
pub struct Distributor {
    config: Config,
    overrides: Arc<Overrides>,
    pusher: Arc<dyn Pusher>,
    tenants: TenantResolver,
    limiter: RateLimiter,
    ha: Arc<HaTracker>,
    metrics: Arc<Metrics>,
    own: DistributorMetrics,
}

impl Distributor {
    /// A distributor whose HA election state stays in this process.
    pub fn new(
        config: Config,
        overrides: Arc<Overrides>,
        pusher: Arc<dyn Pusher>,
        tenants: TenantResolver,
        metrics: Arc<Metrics>,
    ) -> prometheus::Result<Arc<Self>> {
        Self::with_replica_store(
            config,
            overrides,
            pusher,
            tenants,
            metrics,
            Arc::new(MemoryReplicaStore::default()),
        )
    }

    /// A distributor sharing HA election state through `store` (the gossiped KV in a
    /// cluster).
    pub fn with_replica_store(
        config: Config,
        overrides: Arc<Overrides>,
        pusher: Arc<dyn Pusher>,
        tenants: TenantResolver,
        metrics: Arc<Metrics>,
        store: Arc<dyn ReplicaStore>,
    ) -> prometheus::Result<Arc<Self>> {
        let own = DistributorMetrics::new(&metrics.registry)?;
        let ha = HaTracker::new(config.ha_tracker.clone(), store, &metrics.registry)?;
        Ok(Arc::new(Self {
            config,
            overrides,
            pusher,
            tenants,
            limiter: RateLimiter::default(),
            ha,
            metrics,
            own,
        }))
    }

    /// Where this distributor writes (the ingesters): the ruler of the same process writes its
    /// recording rules' output through it too.
    pub fn pusher(&self) -> Arc<dyn Pusher> {
        Arc::clone(&self.pusher)
    }

    fn discard(&self, tenant: &TenantId, reason: &str, n: usize) {
        if n > 0 {
            self.metrics
                .discarded_samples
                .with_label_values(&[tenant.as_str(), reason])
                .inc_by(n as u64);
        }
    }

    /// Handles one push body end to end; the HTTP handler only maps the result.
    pub async fn push(&self, headers: &HeaderMap, body: Bytes) -> Result<Pushed, HttpError> {
        self.push_counted(headers, body, &mut Written::default())
            .await
    }

    /// [`Distributor::push`], also reporting in `written` what was stored (for the
    /// `X-Prometheus-Remote-Write-*-Written` headers), whatever the result.
    pub async fn push_counted(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        written: &mut Written,
    ) -> Result<Pushed, HttpError> {
        let tenant = self.tenants.resolve(headers)?;
        self.own
            .requests
            .with_label_values(&[tenant.as_str()])
            .inc();
        let limit = self.config.max_recv_msg_size;
        if body.len() > limit {
            return Err(HttpError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the incoming push request has been rejected because its message size of {} bytes is larger than the allowed limit of {limit} bytes",
                    body.len()
                ),
            ));
        }
        let protocol = negotiate::negotiate(headers)?;
        // Big bodies take milliseconds to decode: keep them off the async reactor.
        let big = body.len() > (256 << 10);
        let decode = move || negotiate::decode(protocol, &body, limit);
        let decoded = if big {
            tokio::task::spawn_blocking(decode)
                .await
                .map_err(|e| HttpError::internal(format!("decode task failed: {e}")))?
        } else {
            decode()
        };
        let mut batch = decoded?;
        let not_stored = self.refuse_unstored(protocol, &tenant, &batch);
        self.own
            .incoming_samples
            .with_label_values(&[tenant.as_str()])
            .inc_by(batch.num_samples() as u64);
        if !batch.metadata().is_empty() {
            self.own
                .received_metadata
                .with_label_values(&[tenant.as_str()])
                .inc_by(batch.metadata().len() as u64);
        }
        let limits = self.overrides.for_tenant(tenant.as_str());
        let max_md = limits.max_metadata_length;
        let dropped_md = batch.retain_metadata(|m| {
            m.metric_family_name.len() <= max_md && m.help.len() <= max_md && m.unit.len() <= max_md
        });
        if dropped_md > 0 {
            self.metrics
                .discarded_metadata
                .with_label_values(&[tenant.as_str(), "metadata_too_long"])
                .inc_by(dropped_md as u64);
        }

        // Empty values mean "label absent" in remote write; sorting is required by the spec
        // but senders get it wrong, and sorting is cheaper than a round trip.
        batch.retain_labels(|_, v| !v.is_empty());
        batch.sort_labels();
        let now_ms = norn_model::now_ms();

        if self.ha.enabled_for(limits.accept_ha_samples)
            && let Some(deduped) = self.ha_dedupe(&tenant, &mut batch, &limits, now_ms)?
        {
            return Ok(deduped);
        }

        // Checking is linear in the request; a big one runs off the async reactor so it
        // cannot delay other requests (or /ready).
        let vlimits = limits.validation();
        let window = TimeWindow::new(now_ms, &vlimits);
        let check = move |mut batch: WriteBatch| {
            let checked = check_batch(&mut batch, &vlimits, window);
            (batch, checked)
        };
        let (batch, checked) = if big || batch.num_samples() > BLOCKING_CHECK_SAMPLES {
            tokio::task::spawn_blocking(move || check(batch))
                .await
                .map_err(|e| HttpError::internal(format!("validation task failed: {e}")))?
        } else {
            check(batch)
        };
        for (reason, n) in &checked.refused {
            self.discard(&tenant, reason, *n);
        }
        let mut first_error = checked.first_error;
        let keep = checked.keep;
        let valid_samples = checked.valid_samples;

        // Metadata entries count toward the ingestion rate, as in Mimir: a request of metadata
        // alone must not bypass the limit.
        let items = valid_samples + batch.metadata().len();
        if !self.limiter.allow(
            tenant.as_str(),
            items,
            limits.ingestion_rate,
            limits.ingestion_burst_size,
            Instant::now(),
        ) {
            self.discard(&tenant, "rate_limited", valid_samples);
            if !batch.metadata().is_empty() {
                self.metrics
                    .discarded_metadata
                    .with_label_values(&[tenant.as_str(), "rate_limited"])
                    .inc_by(batch.metadata().len() as u64);
            }
            return Err(HttpError::new(
                ErrorKind::TooManyRequests,
                format!(
                    "the request has been rejected because the tenant exceeded the ingestion rate limit, set to {} items/s with a maximum allowed burst of {}",
                    limits.ingestion_rate, limits.ingestion_burst_size
                ),
            ));
        }

        if !keep.is_empty() || !batch.metadata().is_empty() {
            let to_push = if keep.len() == batch.len() {
                batch
            } else {
                batch.subset(&keep, true)
            };
            let outcome = self
                .pusher
                .push(&tenant, to_push)
                .await
                .map_err(|e| HttpError::new(e.kind(), e.to_string()))?;
            self.own
                .received_samples
                .with_label_values(&[tenant.as_str()])
                .inc_by(outcome.appended as u64);
            written.samples = outcome.appended as u64;
            if let Some(e) = outcome.first_error {
                first_error.get_or_insert(e);
            }
        }
        if let Some(m) = not_stored {
            first_error = Some(match first_error {
                Some(e) => format!("{e}; {m}"),
                None => m,
            });
        }
        match first_error {
            None => Ok(Pushed::Stored),
            Some(message) => Err(HttpError::bad_data(message)),
        }
    }

    /// Counts what a 2.0 request carries that Norn does not store (native histograms,
    /// exemplars) and returns the partial-write message for it. A 1.0 request's are counted
    /// by the decoder only and skipped, as they always were (a 400 would make every Prometheus
    /// 2.x with exemplar storage log an error per request, for data 1.0 leaves optional).
    fn refuse_unstored(
        &self,
        protocol: Protocol,
        tenant: &TenantId,
        batch: &WriteBatch,
    ) -> Option<String> {
        if protocol != Protocol::V2 {
            return None;
        }
        self.discard(
            tenant,
            "native_histogram_unsupported",
            batch.skipped_histograms,
        );
        if batch.skipped_exemplars > 0 {
            self.own
                .discarded_exemplars
                .with_label_values(&[tenant.as_str(), "exemplar_unsupported"])
                .inc_by(batch.skipped_exemplars as u64);
        }
        negotiate::not_stored_message(batch)
    }

    /// Applies the HA tracker to a request whose first series names an HA cluster and
    /// replica: `Some` when the request is dropped as a non-elected replica's, `None` when it
    /// goes on (with the replica label removed from every series, as Mimir does).
    fn ha_dedupe(
        &self,
        tenant: &TenantId,
        batch: &mut WriteBatch,
        limits: &norn_limits::Limits,
        now_ms: i64,
    ) -> Result<Option<Pushed>, HttpError> {
        let Some(first) = batch.iter().next() else {
            return Ok(None);
        };
        let (Some(cluster), Some(replica)) = (
            first.get(&limits.ha_cluster_label),
            first.get(&limits.ha_replica_label),
        ) else {
            return Ok(None);
        };
        let (cluster, replica) = (cluster.to_string(), replica.to_string());
        match self.ha.check(
            tenant.as_str(),
            &cluster,
            &replica,
            limits.ha_max_clusters,
            now_ms,
        ) {
            Ok(()) => {
                batch.remove_label(&limits.ha_replica_label);
                Ok(None)
            }
            Err(e @ HaError::NotElected { .. }) => {
                self.ha
                    .count_deduped(tenant.as_str(), &cluster, batch.num_samples());
                Ok(Some(Pushed::Deduplicated(e.to_string())))
            }
            Err(e @ HaError::TooManyClusters { .. }) => {
                self.discard(tenant, "too_many_ha_clusters", batch.num_samples());
                Err(HttpError::bad_data(e.to_string()))
            }
        }
    }
}

async fn push_handler(
    State(d): State<Arc<Distributor>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut written = Written::default();
    let mut response = match d.push_counted(&headers, body, &mut written).await {
        Ok(Pushed::Stored) => StatusCode::OK.into_response(),
        Ok(Pushed::Deduplicated(message)) => (StatusCode::ACCEPTED, message).into_response(),
        Err(e) => {
            if e.kind != ErrorKind::BadData {
                tracing::debug!(status = e.kind.http_status(), error = %e.message, "push refused");
            }
            e.into_response()
        }
    };
    written.set_headers(response.headers_mut());
    response
}

/// The routes and lifecycle of a distributor inside the process.
pub struct DistributorService(pub Arc<Distributor>);

#[async_trait]
impl Service for DistributorService {
    fn name(&self) -> &'static str {
        "distributor"
    }

    fn routes(&self) -> Router {
        // The tenant is known and the declared size checked before the body is read.
        RequestGuard::new(self.0.config.max_recv_msg_size)
            .tenant_before_body(self.0.tenants)
            .apply(
                Router::new()
                    .route("/api/v1/push", post(push_handler))
                    .with_state(Arc::clone(&self.0)),
            )
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn shutdown(&self, _: CancellationToken) {}
}

/// Where the distributor sends what it accepted.
pub enum Ingesters {
    /// The ingester in this process.
    InProcess(Arc<dyn Pusher>),
    /// The ingesters of the ring, over gRPC, each series to its replicas
    /// ([`replication::ReplicatedPusher`]).
    Replicated {
        ring: Arc<dyn WriteRing>,
        pool: Arc<dyn PusherPool>,
    },
}

/// What a distributor needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub tenants: TenantResolver,
    pub metrics: Arc<Metrics>,
    pub ingesters: Ingesters,
    /// The cluster's gossiped key-value store, where HA election state is shared between
    /// distributors; `None` keeps it in this process.
    pub kv: Option<Arc<norn_ring::Memberlist>>,
}

/// Builds the distributor service (an error is a metric registered twice: a wiring bug).
pub fn build(config: Config, deps: Deps) -> prometheus::Result<Arc<DistributorService>> {
    let pusher: Arc<dyn Pusher> = match deps.ingesters {
        Ingesters::InProcess(p) => p,
        Ingesters::Replicated { ring, pool } => Arc::new(replication::ReplicatedPusher::new(
            ring,
            pool,
            config.remote_timeout,
            &deps.metrics.registry,
        )?),
    };
    let store: Arc<dyn ReplicaStore> = match deps.kv {
        Some(kv) if config.ha_tracker.enable_ha_tracker => Arc::new(GossipReplicaStore(kv)),
        _ => Arc::new(MemoryReplicaStore::default()),
    };
    Ok(Arc::new(DistributorService(
        Distributor::with_replica_store(
            config,
            deps.overrides,
            pusher,
            deps.tenants,
            deps.metrics,
            store,
        )?,
    )))
}
