//! `norn-continuous-test`: writes a small deterministic set of series forever (or for
//! `--duration`), reads them back with instant and range queries, checks every value exactly and
//! exports its counters on `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use norn_loadtests::continuous::{self, ContinuousConfig, Metrics};
use norn_loadtests::http;
use norn_model::parse_duration;

#[derive(Parser)]
#[command(
    name = "norn-continuous-test",
    version,
    about = "Continuously write, read back and verify a small set of series"
)]
struct Cli {
    /// Remote-write URL (Norn: /api/v1/push; Prometheus, VictoriaMetrics: /api/v1/write).
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/push")]
    write_url: String,
    /// Query API base: everything before /query (Norn: …/prometheus/api/v1).
    #[arg(long, default_value = "http://127.0.0.1:8080/prometheus/api/v1")]
    query_url: String,
    /// Tenant sent as X-Scope-OrgID.
    #[arg(long)]
    tenant: Option<String>,
    /// Number of series written.
    #[arg(long, default_value_t = 10)]
    series: usize,
    /// Write and check period.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    interval: Duration,
    /// Oldest data range queries reach back to.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    max_query_age: Duration,
    /// Only check data at least this old (VictoriaMetrics hides the last 30s by default).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    query_delay: Duration,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Seed of the values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Address of the /metrics endpoint.
    #[arg(long, default_value = "127.0.0.1:9900")]
    metrics_listen_address: String,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    anyhow::ensure!(cli.series > 0, "--series must be at least 1");
    anyhow::ensure!(!cli.interval.is_zero(), "--interval must be positive");
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(&cli.metrics_listen_address)
        .await
        .with_context(|| format!("cannot listen on {}", cli.metrics_listen_address))?;
    tracing::info!(address = %cli.metrics_listen_address, "serving /metrics");
    let server = tokio::spawn(continuous::serve_metrics(listener, Arc::clone(&metrics)));
    let cfg = ContinuousConfig {
        write_url: cli.write_url,
        query_base: cli.query_url,
        tenant: cli.tenant,
        series: cli.series,
        interval: cli.interval,
        max_query_age: cli.max_query_age,
        query_delay: cli.query_delay,
        duration: cli.duration,
        seed: cli.seed,
    };
    let client = http::client(cli.timeout, 4)?;
    tokio::select! {
        () = continuous::run(client, cfg, Arc::clone(&metrics)) => {}
        r = tokio::signal::ctrl_c() => {
            r.context("cannot listen for Ctrl-C")?;
            tracing::info!("interrupted");
        }
    }
    server.abort();
    print!("{}", metrics.render());
    Ok(())
}
