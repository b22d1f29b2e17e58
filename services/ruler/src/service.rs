//! The ruler as a service of the process: `build(config, deps)`, its poll loop and its place
//! in the stop sequence.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use norn_limits::Overrides;
use norn_model::{Pusher, QueryableProvider};
use norn_promql::{Engine, EngineOptions};
use norn_ring::LifecyclerError;
use norn_server::periodic::{FirstRun, Periodic};
use norn_server::{Metrics, Service, TenantResolver};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, routes};
use crate::config::{Config, MIN_INTERVAL};
use crate::fanout::Fanout;
use crate::group::{AlertingOptions, EvalDeps};
use crate::manager::Manager;
use crate::metrics::RulerMetrics;
use crate::notifier::{Notifier, NotifierError};
use crate::outbound::AlertSink;
use crate::ring::{Ownership, RingMembership};
use crate::rule_query::{Counted, FrontendQuerier, LocalQuerier, RuleQuerier};
use crate::store::RuleStore;

/// What a ruler needs from the process it runs in.
pub struct Deps {
    pub overrides: Arc<Overrides>,
    pub tenants: TenantResolver,
    pub metrics: Arc<Metrics>,
    /// Where rule groups are stored.
    pub store: Arc<dyn RuleStore>,
    /// What rules query: the querier's merged view (ingesters and store-gateways). Unused
    /// when `ruler.query_frontend.address` sends rule queries to a query-frontend.
    pub queryable: Arc<dyn QueryableProvider>,
    /// Where recording rules write: the ingesters, as the distributor writes to them.
    pub pusher: Arc<dyn Pusher>,
    /// The engine's settings (the querier's lookback, sample limit and timeout).
    pub engine: EngineOptions,
    /// The ruler ring to join (a cluster); `None` owns every group.
    pub ring: Option<RingMembership>,
    /// Cancelled when the process stops: ends the poll loop and every group.
    pub stop: CancellationToken,
}

/// Why the ruler did not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid ruler configuration: {0}")]
    Config(String),
    #[error("joining the ruler ring: {0}")]
    Ring(#[from] LifecyclerError),
    #[error("registering ruler metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Notifier(#[from] NotifierError),
}

/// Builds the ruler and starts polling the rule store.
pub async fn build(config: Config, deps: Deps) -> Result<Arc<RulerService>, BuildError> {
    config.validate().map_err(BuildError::Config)?;
    let metrics = Arc::new(RulerMetrics::new(&deps.metrics.registry)?);
    // None when ruler.alertmanager-url is empty. Idle until a tenant's first alert.
    let notifier = Notifier::new(&config, Arc::clone(&metrics))?;
    let ownership = match deps.ring {
        Some(m) => Ownership::join(m, &deps.metrics.registry).await?,
        None => Ownership::All,
    };
    let query_timeout = deps.engine.timeout;
    let engine = Engine::new(deps.engine);
    let querier: Arc<dyn RuleQuerier> =
        match config.query_frontend.url().map_err(BuildError::Config)? {
            Some(base) => {
                let tls = config
                    .query_frontend
                    .grpc_client_config
                    .rustls_config(&[b"http/1.1"])
                    .map_err(|e| {
                        BuildError::Config(format!("ruler.query_frontend.grpc_client_config: {e}"))
                    })?;
                let q = FrontendQuerier::new(base, config.query_frontend.timeout, tls)
                    .map_err(BuildError::Config)?;
                tracing::info!(url = %q.url(), "rule queries go to the query-frontend");
                Arc::new(q)
            }
            None => Arc::new(LocalQuerier::new(
                engine.clone(),
                deps.queryable,
                query_timeout,
            )),
        };
    let querier = Arc::new(Counted {
        inner: querier,
        metrics: Arc::clone(&metrics),
    });
    let manager = Arc::new(Manager::new(
        deps.store,
        ownership,
        EvalDeps {
            engine: engine.clone(),
            querier,
            pusher: deps.pusher,
            metrics,
            // Without ruler.alertmanager-url alerts are evaluated, written and listed but not
            // sent.
            alert_sink: notifier
                .as_ref()
                .map(|n| Arc::clone(n) as Arc<dyn AlertSink>),
            alerting: AlertingOptions {
                resend_delay: config.resend_delay,
                for_outage_tolerance: config.for_outage_tolerance,
                for_grace_period: config.for_grace_period,
                external_url: config.external_url.clone(),
                external_labels: Default::default(),
            },
        },
        config.evaluation_interval,
        deps.stop.clone(),
    ));
    let polled = Arc::clone(&manager);
    Periodic::every("ruler-poll", config.poll_interval, MIN_INTERVAL)
        .first_run(FirstRun::Immediately)
        .spawn(deps.stop, move || {
            let m = Arc::clone(&polled);
            async move {
                if let Err(e) = m.sync_all().await {
                    tracing::warn!(error = %e, "reading rule groups failed; running groups left as they are");
                }
            }
        });
    let api = Arc::new(Api {
        manager: Arc::clone(&manager),
        tenants: deps.tenants,
        overrides: deps.overrides,
        engine,
        fanout: Fanout::new(&deps.metrics.registry)?
            .with_tls(
                config
                    .ruler_client
                    .rustls_config(&[b"http/1.1"])
                    .map_err(|e| BuildError::Config(format!("ruler.ruler_client: {e}")))?,
            )
            .map_err(BuildError::Config)?,
    });
    Ok(Arc::new(RulerService {
        manager,
        api,
        notifier,
    }))
}

/// The ruler inside the process.
pub struct RulerService {
    manager: Arc<Manager>,
    api: Arc<Api>,
    /// Delivers alerts to Alertmanager; `None` when none is configured.
    notifier: Option<Arc<Notifier>>,
}

impl RulerService {
    /// The running groups (tests, tools).
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// The notifier (`None` when `ruler.alertmanager-url` is empty).
    pub fn notifier(&self) -> Option<&Arc<Notifier>> {
        self.notifier.as_ref()
    }
}

#[async_trait]
impl Service for RulerService {
    fn name(&self) -> &'static str {
        "ruler"
    }

    fn routes(&self) -> Router {
        routes(Arc::clone(&self.api)).merge(self.manager.ownership().routes())
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn stopping(&self) {
        self.manager.ownership().leave().await;
    }

    async fn shutdown(&self, _abandon: CancellationToken) {
        // Groups stop after the evaluation in progress; their output is not marked stale, as
        // another ruler (or this one, restarted) goes on evaluating them.
        self.manager.stop_all().await;
        // After the groups: the alerts of their last evaluations are in the queues, and are
        // posted once (bounded by ruler.notification-timeout) before the process ends.
        if let Some(n) = &self.notifier {
            n.stop().await;
        }
    }
}
