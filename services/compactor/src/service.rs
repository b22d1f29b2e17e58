//! The compactor as a service of the process: `build(config, deps)`, its two loops and its
//! place in the stop sequence.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use norn_limits::Overrides;
use norn_ring::LifecyclerError;
use norn_server::periodic::{FirstRun, Periodic};
use norn_server::{Metrics, Service};
use norn_storage::Bucket;
use tokio_util::sync::CancellationToken;

use crate::compactor::Compactor;
use crate::config::Config;
use crate::metrics::CompactorMetrics;
use crate::ring::{Ownership, RingMembership};

/// Shortest interval honoured for either loop (a zero setting must not spin a core).
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The first cleanup and compaction wait this long after start, so starting a process
/// (and its tests) is never slowed by a bucket scan.
pub const FIRST_RUN_DELAY: Duration = Duration::from_secs(10);

/// What a compactor needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub metrics: Arc<Metrics>,
    pub bucket: Bucket,
    /// The compactor ring to join (a cluster); `None` owns every tenant.
    pub ring: Option<RingMembership>,
    /// Cancelled when the process stops: ends the loops (a running job stops between jobs).
    pub stop: CancellationToken,
    /// Delay before the loops' first runs ([`FIRST_RUN_DELAY`] in the binary).
    pub first_run_delay: Duration,
}

/// Why the compactor did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid compactor configuration: {0}")]
    Config(String),
    #[error("joining the compactor ring: {0}")]
    Ring(#[from] LifecyclerError),
    #[error("registering compactor metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Builds the compactor and starts its loops.
pub async fn build(config: Config, deps: Deps) -> Result<Arc<CompactorService>, BuildError> {
    config.validate().map_err(BuildError::Config)?;
    let metrics = CompactorMetrics::new(&deps.metrics.registry)?;
    let ownership = match deps.ring {
        Some(m) => Ownership::join(m, &deps.metrics.registry).await?,
        None => Ownership::All,
    };
    let compactor = Arc::new(Compactor {
        cfg: config,
        bucket: deps.bucket,
        overrides: deps.overrides,
        ownership,
        metrics,
        stop: deps.stop.clone(),
    });
    spawn_loops(&compactor, deps.stop, deps.first_run_delay);
    Ok(Arc::new(CompactorService(compactor)))
}

fn spawn_loops(compactor: &Arc<Compactor>, stop: CancellationToken, delay: Duration) {
    let c = Arc::clone(compactor);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let cleanup = Arc::clone(&c);
        Periodic::every("compactor-cleanup", c.cfg.cleanup_interval, MIN_INTERVAL)
            .first_run(FirstRun::Immediately)
            .spawn(stop.clone(), move || {
                let c = Arc::clone(&cleanup);
                async move {
                    match c.run_cleanup().await {
                        Ok(r) => tracing::debug!(tenants = r.len(), "compactor cleanup done"),
                        Err(e) => tracing::warn!(error = %e, "compactor cleanup failed"),
                    }
                }
            });
        let compaction = Arc::clone(&c);
        Periodic::every("compaction", c.cfg.compaction_interval, MIN_INTERVAL)
            .first_run(FirstRun::Immediately)
            .spawn(stop, move || {
                let c = Arc::clone(&compaction);
                async move {
                    match c.run_compaction().await {
                        Ok(r) => tracing::debug!(tenants = r.len(), "compaction run done"),
                        Err(e) => tracing::warn!(error = %e, "compaction run failed"),
                    }
                }
            });
    });
}

/// The compactor inside the process.
pub struct CompactorService(pub Arc<Compactor>);

impl CompactorService {
    /// The compactor (runs on demand, for tests and tools).
    pub fn compactor(&self) -> &Arc<Compactor> {
        &self.0
    }
}

#[async_trait]
impl Service for CompactorService {
    fn name(&self) -> &'static str {
        "compactor"
    }

    fn routes(&self) -> Router {
        self.0.ownership.routes()
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn shutdown(&self, _abandon: CancellationToken) {
        // The loops stop with the process token; a job cut short leaves only a partial
        // upload or a work directory, both cleaned later.
        self.0.ownership.leave().await;
    }
}
