//! The ingester as a service of the process: `build(config, deps)`, its background loops,
//! its routes and gRPC API, and its part in the process's stop sequence.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use norn_limits::Overrides;
use norn_ring::LifecyclerError;
use norn_server::periodic::{FirstRun, Periodic};
use norn_server::{Metrics, Service};
use norn_storage::Bucket;
use norn_tsdb::TsdbError;
use tokio_util::sync::CancellationToken;

use crate::grpc::GrpcMetrics;
use crate::lifecycle::{RingLife, RingMembership};
use crate::{Config, Ingester};
use norn_proto::MessageLimits;

/// Shortest head-compaction interval honoured (a zero setting must not spin a core).
const MIN_COMPACTION_INTERVAL: Duration = Duration::from_millis(100);

/// What an ingester needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub metrics: Arc<Metrics>,
    /// Where blocks are shipped; `None` keeps them local.
    pub bucket: Option<Bucket>,
    /// The ingester ring to join (a cluster); `None` in one process, where the distributor
    /// and querier call the ingester directly.
    pub ring: Option<RingMembership>,
    /// Cancelled when the process stops: ends the background loops.
    pub stop: CancellationToken,
    /// The gRPC server's message bounds (`--server.grpc-max-*-msg-size-bytes`).
    pub grpc_limits: MessageLimits,
}

/// Why the ingester did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("starting the ingester: {0}")]
    Tsdb(#[from] TsdbError),
    #[error("joining the ingester ring: {0}")]
    Ring(#[from] LifecyclerError),
    #[error("registering the ingester's gRPC metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Opens the ingester (WAL replay runs in the background), starts its loops and, in a
/// cluster, registers it in the ring.
pub async fn build(config: Config, deps: Deps) -> Result<Arc<IngesterService>, BuildError> {
    // Only a cluster member serves gRPC, so only it has gRPC metrics.
    let grpc_metrics = match deps.ring {
        Some(_) => Some(GrpcMetrics::new(&deps.metrics.registry)?),
        None => None,
    };
    let ingester = Ingester::start(config, deps.overrides, deps.metrics, deps.bucket)?;
    ingester.spawn_background(deps.stop.clone());
    let ring = match deps.ring {
        Some(m) => Some(RingLife::join(m, Arc::clone(&ingester), deps.stop).await?),
        None => None,
    };
    Ok(Arc::new(IngesterService {
        ingester,
        ring,
        grpc_metrics,
        grpc_limits: deps.grpc_limits,
    }))
}

impl Ingester {
    /// Starts the head-compaction and ship loops; they end when `stop` is cancelled.
    pub fn spawn_background(self: &Arc<Self>, stop: CancellationToken) {
        let ing = Arc::clone(self);
        Periodic::every(
            "head-compaction",
            self.config.tsdb.head_compaction_interval,
            MIN_COMPACTION_INTERVAL,
        )
        .spawn(stop.clone(), move || Arc::clone(&ing).compaction_round());
        if self.bucket.is_some() && !self.config.tsdb.ship_interval.is_zero() {
            let ing = Arc::clone(self);
            Periodic::every("shipper", self.config.tsdb.ship_interval, Duration::ZERO)
                .first_run(FirstRun::Immediately)
                .woken_by(Arc::clone(&self.ship_now))
                .spawn(stop, move || Arc::clone(&ing).ship_round());
        }
    }
}

/// The ingester inside the process.
pub struct IngesterService {
    ingester: Arc<Ingester>,
    ring: Option<RingLife>,
    grpc_metrics: Option<GrpcMetrics>,
    grpc_limits: MessageLimits,
}

impl IngesterService {
    /// The ingester itself: the distributor's pusher and the querier's recent data when they
    /// run in the same process.
    pub fn ingester(&self) -> &Arc<Ingester> {
        &self.ingester
    }
}

#[async_trait]
impl Service for IngesterService {
    fn name(&self) -> &'static str {
        "ingester"
    }

    fn ready(&self) -> Result<(), String> {
        self.ingester.readiness()?;
        match &self.ring {
            Some(r) => r.readiness(),
            None => Ok(()),
        }
    }

    fn routes(&self) -> axum::Router {
        crate::http::routes(Arc::clone(&self.ingester))
    }

    fn grpc_services(&self, routes: &mut tonic::service::RoutesBuilder) {
        if let Some(metrics) = &self.grpc_metrics {
            let (ingester, health) = crate::grpc::services(
                Arc::clone(&self.ingester),
                metrics.clone(),
                self.grpc_limits,
            );
            routes.add_service(ingester).add_service(health);
        }
    }

    async fn stopping(&self) {
        if let Some(r) = &self.ring {
            r.begin_leaving(&self.ingester).await;
        }
    }

    async fn shutdown(&self, abandon: CancellationToken) {
        let ing = &self.ingester;
        // A flush is not interrupted once started: a cut stopped halfway would race the
        // heads' close. Past the graceful-shutdown timeout it is skipped; the WAL keeps the
        // data and the next start cuts it.
        if ing.config.tsdb.flush_blocks_on_shutdown
            && ing.ready.load(Ordering::SeqCst)
            && !abandon.is_cancelled()
            && let Err(e) = ing.flush(None).await
        {
            tracing::error!(error = %e, "flushing blocks on shutdown failed; the WAL keeps the data");
        }
        let closing = Arc::clone(ing);
        let _ = tokio::task::spawn_blocking(move || closing.close()).await;
        if let Some(r) = &self.ring {
            r.leave().await;
        }
    }
}
