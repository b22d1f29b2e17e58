//! `norn`: runs Norn's services in one process.
//!
//! The binary only parses arguments, loads the configuration, wires services and handles
//! signals. Which services run is `--target` ([`modules`]); how they reach each other is the
//! [`wiring`]: `--target=all` (the default) builds every service in one process with no
//! network between them, any other list (comma-separated) runs them as members of a cluster
//! that find each other through the gossiped ring and talk gRPC. Both go through the same
//! builders. The process serves HTTP (and, in a cluster, gRPC) until SIGTERM/SIGINT, then
//! tells services it is stopping (an ingester leaves the ring's write path), lets in-flight
//! requests finish, and shuts services down in reverse order so the ingester's WAL is synced
//! last.
//!
//! `norn tools …` (the first argument `tools`) runs offline tools instead of the server:
//! see [`tools`].

mod config;
mod modules;
mod tools;
mod wiring;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use norn_limits::Overrides;
use norn_server::admin_listener::{self, Serves};
use norn_server::auth::{Authenticator, TokenStore};
use norn_server::grpc::GrpcServer;
use norn_server::http::{Harness, router};
use norn_server::periodic::Periodic;
use norn_server::serve::serve_with_tls;
use norn_server::tls::TlsMetrics;
use norn_server::{Metrics, Service, TenantResolver};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::{Args, AuthType, Config, Tls};
use crate::modules::Context as ModuleContext;
use crate::wiring::Wiring;

/// Shown at the end of `norn --help`.
const TOOLS_HELP: &str = "Tools (run instead of the server; `norn tools --help` lists them):\n  \
    norn tools import-blocks --tenant=<TENANT> [storage flags] <DIR>...\n      \
    verify Prometheus TSDB blocks and upload them into the tenant's part of the bucket\n  \
    norn tools auth token --name=<NAME> --tenant=<TENANT> --scope=<SCOPE>...\n      \
    make a secret and its entry for --auth.tokens-file (`norn tools auth hash` hashes one)\n  \
    norn tools ready [--url=http://127.0.0.1:8080/ready]\n      \
    exit 0 when the process answers /ready with 200 (the container image's health check)";

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

async fn run(cfg: Config) -> anyhow::Result<()> {
    let (modules, in_process) = modules::resolve(&cfg.target)?;
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let overrides = Arc::new(match &cfg.runtime_config.file {
        Some(path) => Overrides::with_file(cfg.limits.clone(), path)
            .with_context(|| format!("loading runtime config {}", path.display()))?,
        None => Overrides::new(cfg.limits.clone()),
    });
    if overrides.path().is_some() {
        let o = Arc::clone(&overrides);
        Periodic::every(
            "runtime-config-reload",
            cfg.runtime_config.period,
            Duration::from_secs(1),
        )
        .spawn(shutdown.clone(), move || {
            if let Err(e) = o.reload() {
                tracing::error!(error = %e, "reloading runtime config failed; keeping the previous overrides");
            }
            std::future::ready(())
        });
    }
    // Before any listener: a missing or bad tokens file stops the process here.
    let auth = match (cfg.auth_type(), &cfg.auth.tokens_file) {
        (AuthType::Tokens, Some(path)) => {
            let store = TokenStore::open(path)
                .with_context(|| format!("loading the tokens file {}", path.display()))?;
            tracing::info!(tokens = store.current().len(), path = %path.display(), "token authentication on");
            let a =
                Authenticator::new(store, &metrics.registry).context("registering auth metrics")?;
            a.spawn_reload(cfg.auth.tokens_reload_period, shutdown.clone());
            Some(a)
        }
        _ => None,
    };
    let bucket_metrics = Arc::new(
        norn_storage::BucketMetrics::new(&metrics.registry)
            .context("registering bucket metrics")?,
    );
    let bucket = norn_storage::Bucket::from_config(&cfg.blocks_bucket())
        .context("opening the blocks bucket")?
        .with_metrics(bucket_metrics);
    tracing::info!(bucket = bucket.describe(), "blocks bucket");

    // Certificates and keys are read before any listener too: a missing or bad file stops
    // the process with the setting's name, having bound nothing.
    let tls_metrics = TlsMetrics::new(&metrics.registry).context("registering TLS metrics")?;
    let tls = Arc::new(Tls::load(&cfg, &tls_metrics)?);
    if tls.http.is_some() || tls.grpc.is_some() {
        tracing::info!(
            http = tls.http.is_some(),
            grpc = tls.grpc.is_some(),
            "TLS on; certificates are reloaded when their files change"
        );
    }

    // Every listener is bound before a service touches its directory or replays a WAL: a
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
    // Admin endpoints on their own listener (`--server.admin-listen-address`), bound with the
    // others so a port clash stops the process before it changes anything.
    let admin_listener = if cfg.server.admin_listen_address.is_empty() {
        None
    } else {
        let ip: IpAddr = cfg.server.admin_listen_address.parse()?;
        let addr = SocketAddr::new(ip, cfg.server.admin_listen_port);
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin HTTP listener on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "admin HTTP server listening");
        Some(l)
    };
    let grpc_listener = if !in_process && modules.iter().any(|m| m.serves_grpc) {
        let bind = norn_ring::net::parse_bind(&cfg.server.grpc_listen_address)?;
        let addr = SocketAddr::new(bind, cfg.server.grpc_listen_port);
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC listener on {addr}"))?;
        tracing::info!(addr = %l.local_addr()?, "gRPC server listening");
        Some(l)
    } else {
        None
    };

    let wiring = Arc::new(Wiring::new(&cfg, in_process, &metrics, &tls, shutdown.clone()).await?);
    let mut ctx = ModuleContext {
        cfg: Arc::clone(&cfg),
        metrics: Arc::clone(&metrics),
        overrides,
        tenants: TenantResolver {
            multitenancy_enabled: cfg.auth_type() != AuthType::None,
            federation: cfg.tenant_federation.resolver(),
        },
        bucket,
        wiring: Arc::clone(&wiring),
        grpc_addr: grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?,
        stop: shutdown.clone(),
        tls: Arc::clone(&tls),
        local_ingester: None,
        local_store_gateway: None,
        frontend_here: modules.iter().any(|m| m.name == "query-frontend"),
        local_querier: None,
        query_sources: None,
        local_pusher: None,
    };
    let mut services: Vec<Arc<dyn Service>> = Vec::new();
    for m in &modules {
        let service = (m.build)(&mut ctx)
            .await
            .with_context(|| format!("starting the {}", m.name))?;
        tracing::info!(service = m.name, "started");
        services.push(service);
    }
    drop(ctx);
    services.extend(wiring.ring_pages());

    let grpc_server = grpc_listener.map(|l| {
        let mut routes = tonic::service::RoutesBuilder::default();
        for s in &services {
            s.grpc_services(&mut routes);
        }
        GrpcServer::start_with_tls(l, routes.routes(), tls.grpc.clone())
    });
    let harness = Harness {
        services: services.clone(),
        metrics: Arc::clone(&metrics),
        config_yaml: Arc::from(cfg.masked_yaml()),
        auth,
    };
    let app = match &admin_listener {
        Some(_) => admin_listener::only(router(harness.clone()), Serves::Public),
        None => router(harness.clone()),
    };
    // The admin listener takes the HTTP listener's TLS settings (and client CA).
    let admin_server = admin_listener.map(|l| {
        tokio::spawn(serve_with_tls(
            l,
            admin_listener::only(router(harness), Serves::Admin),
            shutdown.clone(),
            cfg.server.http_options(),
            Arc::clone(&metrics),
            tls.http.clone(),
        ))
    });
    let server = tokio::spawn(serve_with_tls(
        listener,
        app,
        shutdown.clone(),
        cfg.server.http_options(),
        Arc::clone(&metrics),
        tls.http.clone(),
    ));

    wait_for_signal().await;
    for s in services.iter().rev() {
        s.stopping().await;
    }
    tracing::info!("shutting down: draining HTTP requests");
    shutdown.cancel();
    let abandon = CancellationToken::new();
    match tokio::time::timeout(cfg.server.graceful_shutdown_timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server error"),
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => {
            tracing::warn!("graceful shutdown timed out; stopping with requests in flight");
            abandon.cancel();
        }
    }
    if let Some(a) = admin_server {
        // Drained with the main listener (the same shutdown token); not waited for longer.
        if tokio::time::timeout(Duration::from_secs(1), a)
            .await
            .is_err()
        {
            tracing::warn!("admin HTTP server still draining at shutdown");
        }
    }
    if let Some(g) = grpc_server {
        g.stop().await;
    }
    for s in services.iter().rev() {
        tracing::info!(service = s.name(), "stopping");
        s.shutdown(abandon.clone()).await;
    }
    wiring.leave().await;
    tracing::info!("stopped");
    Ok(())
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
