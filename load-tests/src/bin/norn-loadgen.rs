//! `norn-loadgen`: remote-write load (`write`) and PromQL query load (`query`) against Norn or a
//! peer (Prometheus, VictoriaMetrics). See `load-tests/README.md` for examples.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use norn_loadtests::series::{Generator, GeneratorConfig};
use norn_loadtests::{http, now_ms, parse_time_ms, query, write};
use norn_model::parse_duration;

#[derive(Parser)]
#[command(
    name = "norn-loadgen",
    version,
    about = "Remote-write and query load generator for Norn and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate node_exporter-like series and push them with remote write 1.0.
    Write(WriteArgs),
    /// Run a mix of PromQL instant and range queries and report latency percentiles.
    Query(QueryArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Timestamps from now-<backfill> to now, sent as fast as possible (or at --rate).
    Backfill,
    /// Real time: one sample per series every --interval.
    Live,
}

#[derive(Args)]
struct WriteArgs {
    /// Remote-write URL (Norn: /api/v1/push; Prometheus, VictoriaMetrics: /api/v1/write).
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/push")]
    url: String,
    /// Tenant(s) sent as X-Scope-OrgID, comma-separated; each tenant gets the full series set.
    #[arg(long, value_delimiter = ',')]
    tenant: Vec<String>,
    /// Active series per tenant (100 per simulated target).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Series replaced by new ones per interval (churn).
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// Scrape interval (spacing of the samples of one series).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    interval: Duration,
    /// Maximum samples per request.
    #[arg(long, default_value_t = 2000)]
    samples_per_request: usize,
    /// Backfill only: consecutive samples of one series per request.
    #[arg(long, default_value_t = 1)]
    samples_per_series: usize,
    /// Concurrent requests per tenant (each worker owns a shard of the series).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Target samples/s in all; default as fast as possible (backfill) or real time (live).
    #[arg(long)]
    rate: Option<f64>,
    /// Backfill or live.
    #[arg(long, value_enum, default_value_t = Mode::Backfill)]
    mode: Mode,
    /// Backfill: span of data to write, ending at --end-time.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    backfill: Duration,
    /// Number of intervals to send (overrides --backfill; in live mode defaults to --duration / --interval).
    #[arg(long)]
    intervals: Option<u64>,
    /// Backfill: timestamp of the last sample (unix seconds or `now`), aligned down to --interval.
    #[arg(long, default_value = "now", value_parser = parse_time_ms)]
    end_time: i64,
    /// Hard bound on wall time (live mode default 1m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Seed of all values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Retries of 5xx, 429 and transport failures.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Progress line period (0s: none).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress: Duration,
    /// Print the final summary as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct QueryArgs {
    /// Query API base: everything before /query (Norn: …/prometheus/api/v1).
    #[arg(long, default_value = "http://127.0.0.1:8080/prometheus/api/v1")]
    url: String,
    /// Tenant sent as X-Scope-OrgID.
    #[arg(long)]
    tenant: Option<String>,
    /// File of queries, one per line: `<instant|range> <name> <PromQL>`; default: built-in mix.
    #[arg(long, conflicts_with = "mix")]
    queries: Option<std::path::PathBuf>,
    /// Built-in mix: `default` (the general mix) or `dashboard` (rate, sum by of a rate,
    /// histogram_quantile, topk and a regex matcher, each instant and range).
    #[arg(long, default_value = "default", value_parser = ["default", "dashboard"])]
    mix: String,
    /// Unmeasured rounds through the mix before measuring (each query this many times).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Queries in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many measured queries (warm-up not counted).
    #[arg(long, conflicts_with = "repeat")]
    max_queries: Option<u64>,
    /// Stop after each query of the mix ran this many measured times (with --concurrency 1
    /// exactly; the queries run round-robin).
    #[arg(long)]
    repeat: Option<u64>,
    /// Evaluation time of instant queries and end of range queries (unix seconds or `now`).
    #[arg(long, default_value = "now", value_parser = parse_time_ms)]
    time: i64,
    /// Range of range queries.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    range: Duration,
    /// Step of range queries.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    step: Duration,
    /// Active series of the written data (to choose `$instance` values).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Seed of the `$instance` choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-query timeout.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Write(a) => rt.block_on(run_write(a)),
        Command::Query(a) => rt.block_on(run_query(a)),
    }
}

async fn run_write(a: WriteArgs) -> anyhow::Result<()> {
    if a.series == 0 {
        bail!("--series must be at least 1");
    }
    if a.interval.is_zero() {
        bail!("--interval must be positive");
    }
    let interval_ms = a.interval.as_millis() as i64;
    let live = a.mode == Mode::Live;
    let duration = a.duration.or(live.then(|| Duration::from_secs(60)));
    let intervals = match (a.intervals, live) {
        (Some(n), _) => n,
        (None, false) => (a.backfill.as_millis() as i64 / interval_ms).max(1) as u64,
        (None, true) => duration.map_or(1, |d| (d.as_millis() as i64 / interval_ms).max(1) as u64),
    };
    let start_ms = if live {
        now_ms().div_euclid(interval_ms) * interval_ms
    } else {
        a.end_time.div_euclid(interval_ms) * interval_ms - (intervals as i64 - 1) * interval_ms
    };
    let generator = Arc::new(Generator::new(GeneratorConfig {
        series: a.series,
        churn_per_interval: a.churn,
        seed: a.seed,
        start_ms,
        interval_ms,
    }));
    let client = http::client(a.timeout, a.concurrency * a.tenant.len().max(1))?;
    eprintln!(
        "norn-loadgen write: {} series x {} intervals ({} samples per tenant, {} tenant(s)) to {} [{} mode, first timestamp {}]",
        a.series,
        intervals,
        a.series as u64 * intervals,
        a.tenant.len().max(1),
        a.url,
        if live { "live" } else { "backfill" },
        start_ms
    );
    let summary = write::run(
        client,
        generator,
        write::WriteConfig {
            url: a.url,
            tenants: a.tenant,
            intervals,
            samples_per_request: a.samples_per_request.max(1),
            samples_per_series: a.samples_per_series.max(1),
            concurrency: a.concurrency.max(1),
            rate: a.rate.filter(|r| *r > 0.0),
            live,
            max_duration: duration,
            progress_every: (!a.progress.is_zero()).then_some(a.progress),
            retries: a.retries,
        },
    )
    .await;
    println!("{summary}");
    if a.json {
        println!("{}", summary.to_json());
    }
    if summary.samples_sent == 0 {
        bail!(
            "no sample was accepted: errors {}",
            norn_loadtests::stats::format_errors(&summary.errors)
        );
    }
    Ok(())
}

async fn run_query(a: QueryArgs) -> anyhow::Result<()> {
    let text = match &a.queries {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read query file {}", path.display()))?,
        None => query::builtin_mix(&a.mix)
            .with_context(|| format!("unknown mix {:?}", a.mix))?
            .to_string(),
    };
    let templates =
        query::parse_templates(&text).map_err(|e| anyhow::anyhow!("query file: {e}"))?;
    let max_queries = a
        .repeat
        .map(|r| r.saturating_mul(templates.len() as u64))
        .or(a.max_queries);
    let client = http::client(a.timeout, a.concurrency)?;
    let report = query::run(
        client,
        templates,
        query::QueryConfig {
            base: a.url,
            tenant: a.tenant,
            concurrency: a.concurrency,
            duration: a.duration,
            max_queries,
            warmup: a.warmup,
            time_ms: a.time,
            range: a.range,
            step: a.step,
            series: a.series,
            seed: a.seed,
        },
    )
    .await;
    println!("{report}");
    if a.json {
        println!("{}", report.to_json());
    }
    Ok(())
}
