//! `norn`: runs Norn's services in one process.
//!
//! `--target=all` (the default) wires the distributor, ingester and querier in-process with
//! no network hops between them. `--target=distributor|ingester|querier` (comma-separated for
//! several) runs them as separate processes that find each other through the gossiped ring
//! and talk gRPC (see [`membership`]). The process serves HTTP until SIGTERM/SIGINT, then stops taking requests, lets
//! in-flight ones finish, and shuts services down in reverse order so the ingester's WAL is
//! synced last.
//!
//! `norn tools …` (the first argument `tools`) runs offline tools instead of the server:
//! see [`tools`].

mod cluster;
mod config;
mod membership;
mod tools;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches};
use norn_distributor::{Distributor, DistributorService};
use norn_ingester::{Ingester, IngesterService};
use norn_limits::Overrides;
use norn_model::{MergedProvider, MetadataReader, Pusher, QueryableProvider};
use norn_querier::{Querier, QuerierService};
use norn_server::http::{Guarded, Harness, router, serve};
use norn_server::{Metrics, RequestGuard, Service, TenantResolver};
use norn_tsdb::BucketStore;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Args, Config};
use crate::membership::Cluster;

/// Shown at the end of `norn --help`.
const TOOLS_HELP: &str = "Tools (run instead of the server; `norn tools --help` lists them):\n  \
    norn tools import-blocks --tenant=<TENANT> [storage flags] <DIR>...\n      \
    verify Prometheus TSDB blocks and upload them into the tenant's part of the bucket";

fn main() -> anyhow::Result<ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "tools") {
        return Ok(tools::main(argv.into_iter().skip(1)));
    }
    let matches = Args::command()
        .after_help(TOOLS_HELP)
        .get_matches_from(argv);
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let cfg = Config::load(&args)?;
    init_logging(&cfg.server.log_level)?;
    raise_open_files_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("norn")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cfg))?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft open-files limit to the hard one, as Go (and so Prometheus and Mimir) does at
/// start: every tenant holds a few descriptors, and the ingester budgets new tenants against
/// the soft limit, which distributions default to a mere 1024.
fn raise_open_files_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 || rl.rlim_cur >= rl.rlim_max {
            return;
        }
        let soft = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
            tracing::debug!(from = soft, to = rl.rlim_max, "raised the open-files limit");
        }
    }
}

pub(crate) fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .with_context(|| format!("invalid log level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Services `--target` may name (comma-separated); `all` is the three in one process with no
/// network between them.
const TARGETS: [&str; 4] = ["all", "distributor", "ingester", "querier"];

async fn run(cfg: Config) -> anyhow::Result<()> {
    let targets = cfg.targets();
    if targets.is_empty() {
        bail!("--target is empty; use one of {}", TARGETS.join(", "));
    }
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown target {t:?}: use one of {} (comma-separated to run several)",
                TARGETS.join(", ")
            );
        }
    }
    let all = targets.iter().any(|t| t == "all");
    if all && targets.len() > 1 {
        bail!("target `all` already runs every service; do not combine it with others");
    }
    let has = |t: &str| all || targets.iter().any(|x| x == t);

    let metrics = Metrics::new();
    let overrides = Arc::new(match &cfg.runtime_config.file {
        Some(path) => Overrides::with_file(cfg.limits.clone(), path)
            .with_context(|| format!("loading runtime config {}", path.display()))?,
        None => Overrides::new(cfg.limits.clone()),
    });
    let shutdown = CancellationToken::new();
    if overrides.path().is_some() {
        spawn_overrides_reloader(
            Arc::clone(&overrides),
            cfg.runtime_config.period,
            shutdown.clone(),
        );
    }
    let tenants = TenantResolver {
        multitenancy_enabled: cfg.multitenancy_enabled,
    };

    let bucket_metrics = Arc::new(
        norn_storage::BucketMetrics::new(&metrics.registry)
            .context("registering bucket metrics")?,
    );
    let bucket = norn_storage::Bucket::from_config(&cfg.blocks_bucket())
        .context("opening the blocks bucket")?
        .with_metrics(bucket_metrics);
    tracing::info!(bucket = bucket.describe(), "blocks bucket");

    // Every listener is bound before the ingester touches its directory or replays a WAL: a
    // second process started by mistake on the same ports fails here, having changed nothing.
    let ip: IpAddr = if cfg.server.http_listen_address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        cfg.server.http_listen_address.parse()?
    };
    let addr = SocketAddr::new(ip, cfg.server.http_listen_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP listener on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, target = %cfg.target, "Norn HTTP server listening");
    let grpc_listener = match has("ingester") && !all {
        true => Some(membership::bind_grpc(&cfg).await?),
        false => None,
    };

    // Microservices mode: every process joins the gossip cluster and follows the ring.
    let cluster = if all {
        None
    } else {
        Some(Cluster::start(&cfg, &metrics, shutdown.clone()).await?)
    };

    let mut services: Vec<Arc<dyn Service>> = Vec::new();
    let mut ingester: Option<Arc<Ingester>> = None;
    let mut grpc_server = None;
    if has("ingester") {
        let ing = Ingester::start(
            norn_ingester::Config {
                tsdb: cfg.blocks_storage.tsdb.clone(),
                instance_limits: cfg.ingester.instance_limits.clone(),
                metadata_retain_period: cfg.ingester.metadata_retain_period,
            },
            Arc::clone(&overrides),
            Arc::clone(&metrics),
            Some(bucket.clone()),
        )
        .context("starting the ingester")?;
        ing.spawn_background(shutdown.clone());
        if let (Some(c), Some(listener)) = (&cluster, grpc_listener) {
            grpc_server = Some(c.start_ingester(&cfg, Arc::clone(&ing), listener).await?);
        }
        services.push(Arc::new(IngesterService(Arc::clone(&ing))));
        ingester = Some(ing);
    }
    if has("distributor") {
        let distributor = match (&cluster, &ingester) {
            (None, Some(ing)) => Distributor::new(
                cfg.distributor.clone(),
                Arc::clone(&overrides),
                Arc::clone(ing) as Arc<dyn Pusher>,
                tenants,
                Arc::clone(&metrics),
            )
            .context("registering distributor metrics")?,
            (Some(c), _) => c.distributor(&cfg, Arc::clone(&overrides), tenants, &metrics)?,
            (None, None) => unreachable!("all-in-one mode always runs the ingester"),
        };
        services.push(Arc::new(DistributorService(distributor)));
    }
    if has("querier") {
        // The querier reads the bucket's blocks directly until the store-gateway exists.
        let bucket_store = Arc::new(
            BucketStore::new(
                bucket.clone(),
                &cfg.blocks_storage.bucket_store.sync_dir,
                Some(&metrics.registry),
            )
            .context("registering bucket store metrics")?,
        );
        spawn_bucket_sync(
            Arc::clone(&bucket_store),
            cfg.blocks_storage.bucket_store.sync_interval,
            shutdown.clone(),
        );
        let (recent, metadata): (Arc<dyn QueryableProvider>, Arc<dyn MetadataReader>) =
            match (&cluster, &ingester) {
                (None, Some(ing)) => (
                    Arc::clone(ing) as Arc<dyn QueryableProvider>,
                    Arc::clone(ing) as Arc<dyn MetadataReader>,
                ),
                (Some(c), _) => {
                    let p = Arc::new(c.ingesters_provider());
                    (
                        Arc::clone(&p) as Arc<dyn QueryableProvider>,
                        p as Arc<dyn MetadataReader>,
                    )
                }
                (None, None) => unreachable!("all-in-one mode always runs the ingester"),
            };
        let storage: Arc<dyn QueryableProvider> = Arc::new(MergedProvider(vec![
            recent,
            bucket_store as Arc<dyn QueryableProvider>,
        ]));
        let querier = Querier::new(
            cfg.querier.clone(),
            storage,
            metadata,
            tenants,
            Arc::clone(&overrides),
            &metrics.registry,
        )
        .context("registering querier metrics")?;
        // POSTed query forms: bounded, and from a known tenant before they are read.
        let guard = RequestGuard::new(cfg.frontend.max_body_size)
            .tenant_before_body(tenants)
            .json_errors();
        services.push(Arc::new(Guarded::new(
            Arc::new(QuerierService(querier)),
            guard,
        )));
    }
    if let Some(c) = &cluster {
        services.push(c.ring_service());
    }

    let app = router(Harness {
        services: services.clone(),
        metrics: Arc::clone(&metrics),
        config_yaml: Arc::from(cfg.masked_yaml()),
    });
    let server = tokio::spawn(serve(
        listener,
        app,
        shutdown.clone(),
        cfg.server.http_options(),
        Arc::clone(&metrics),
    ));

    wait_for_signal().await;
    // A leaving ingester first tells the ring (so distributors stop choosing it) and stops
    // taking writes; its replicas hold everything it acknowledged.
    if let (Some(c), Some(ing)) = (&cluster, &ingester) {
        c.begin_leaving(ing).await;
    }
    tracing::info!("shutting down: draining HTTP requests");
    shutdown.cancel();
    match tokio::time::timeout(cfg.server.graceful_shutdown_timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("graceful shutdown timed out; stopping with requests in flight"),
    }
    if let Some(g) = grpc_server {
        g.stop().await;
    }
    for s in services.iter().rev() {
        tracing::info!(service = s.name(), "stopping");
        s.shutdown().await;
    }
    if let Some(c) = cluster {
        c.leave().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Syncs the bucket store at start and then every `period` (failures keep the old list).
fn spawn_bucket_sync(
    store: Arc<BucketStore>,
    period: std::time::Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period.max(std::time::Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match store.sync().await {
                Ok(s) => tracing::debug!(
                    tenants = s.tenants,
                    blocks = s.blocks,
                    loaded = s.loaded,
                    failed = s.failed,
                    "bucket store synced"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "bucket store sync failed; keeping the blocks already loaded")
                }
            }
        }
    });
}

fn spawn_overrides_reloader(
    o: Arc<Overrides>,
    period: std::time::Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period.max(std::time::Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = o.reload() {
                        tracing::error!(error = %e, "reloading runtime config failed; keeping the previous overrides");
                    }
                }
            }
        }
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("received SIGTERM"),
                    _ = int.recv() => tracing::info!("received SIGINT"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
