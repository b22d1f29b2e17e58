//! The query load: a mix of PromQL instant and range queries run at a fixed concurrency.
//!
//! A query file holds one query per line: `<instant|range> <name> <PromQL>`; `#` starts a
//! comment. In the PromQL, `$instance` is replaced per execution by one of the generated targets'
//! `instance` values (picked deterministically from the seed), so "one host" queries spread over
//! the data set instead of hitting one cached series. Without a file the built-in mix is used.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::promapi;
use crate::series::{SERIES_PER_TARGET, splitmix64};
use crate::stats::{ErrorCounts, Latencies, format_errors, format_seconds};

/// Instant or range query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// `/query` at the evaluation time.
    Instant,
    /// `/query_range` over `[time - range, time]`.
    Range,
}

impl QueryKind {
    fn as_str(self) -> &'static str {
        match self {
            QueryKind::Instant => "instant",
            QueryKind::Range => "range",
        }
    }
}

/// One query of the mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTemplate {
    /// Short name used in reports.
    pub name: String,
    /// Instant or range.
    pub kind: QueryKind,
    /// PromQL, possibly with `$instance`.
    pub expr: String,
}

/// The built-in mix, in the query-file syntax.
pub const DEFAULT_MIX: &str = r#"
# kind    name               PromQL
instant   rate_5m            rate(node_network_receive_bytes_total[5m])
instant   sum_by_rate        sum by (mode) (rate(node_cpu_seconds_total[5m]))
range     sum_by_rate_range  sum by (mode) (rate(node_cpu_seconds_total[5m]))
range     histogram_p99      histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))
instant   topk               topk(10, node_filesystem_avail_bytes{fstype!="tmpfs"})
range     regex_matcher      sum by (instance) (rate(node_cpu_seconds_total{mode=~"user|system", instance=~"host-0000[0-9]:9100"}[5m]))
range     one_host           rate(node_cpu_seconds_total{instance="$instance"}[5m])
"#;

/// The dashboard mix (`--mix dashboard`): the five typical dashboard query kinds of the latency
/// comparison with Prometheus, each once as an instant query and once as a range query.
pub const DASHBOARD_MIX: &str = r#"
# kind    name                    PromQL
instant   rate_5m                 rate(node_network_receive_bytes_total[5m])
range     rate_5m                 rate(node_network_receive_bytes_total[5m])
instant   sum_by_rate             sum by (mode) (rate(node_cpu_seconds_total[5m]))
range     sum_by_rate             sum by (mode) (rate(node_cpu_seconds_total[5m]))
instant   histogram_p99           histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))
range     histogram_p99           histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))
instant   topk                    topk(10, node_filesystem_avail_bytes{fstype!="tmpfs"})
range     topk                    topk(10, node_filesystem_avail_bytes{fstype!="tmpfs"})
instant   regex_matcher           sum by (instance) (rate(node_cpu_seconds_total{mode=~"user|system", instance=~"host-0000[0-9]:9100"}[5m]))
range     regex_matcher           sum by (instance) (rate(node_cpu_seconds_total{mode=~"user|system", instance=~"host-0000[0-9]:9100"}[5m]))
"#;

/// The built-in mixes by name (`--mix`).
pub fn builtin_mix(name: &str) -> Option<&'static str> {
    match name {
        "default" => Some(DEFAULT_MIX),
        "dashboard" => Some(DASHBOARD_MIX),
        _ => None,
    }
}

/// Parses a query file. Errors name the line.
pub fn parse_templates(text: &str) -> Result<Vec<QueryTemplate>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let (name, expr) = match rest.trim_start().split_once(char::is_whitespace) {
            Some((name, expr)) => (Some(name), Some(expr.trim())),
            None => (None, None),
        };
        let kind = match kind {
            "instant" => QueryKind::Instant,
            "range" => QueryKind::Range,
            other => {
                return Err(format!(
                    "line {}: expected `instant` or `range`, found {other:?}",
                    i + 1
                ));
            }
        };
        match (name, expr) {
            (Some(name), Some(expr)) if !expr.is_empty() => out.push(QueryTemplate {
                name: name.to_string(),
                kind,
                expr: expr.to_string(),
            }),
            _ => {
                return Err(format!(
                    "line {}: expected `<instant|range> <name> <PromQL>`",
                    i + 1
                ));
            }
        }
    }
    if out.is_empty() {
        return Err("no queries".into());
    }
    Ok(out)
}

/// How to run the mix.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// API base, e.g. `http://127.0.0.1:9090/api/v1`.
    pub base: String,
    /// `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Queries in flight.
    pub concurrency: usize,
    /// Wall-time bound.
    pub duration: Duration,
    /// Bound on measured executions; `None` = only the duration bounds the run.
    pub max_queries: Option<u64>,
    /// Unmeasured rounds through the mix before measuring (each template `warmup` times).
    pub warmup: u64,
    /// Evaluation time (instant) and end (range), ms.
    pub time_ms: i64,
    /// Range of range queries.
    pub range: Duration,
    /// Step of range queries.
    pub step: Duration,
    /// Active series of the loaded data (to pick `$instance` values).
    pub series: usize,
    /// Seed for `$instance` picks.
    pub seed: u64,
}

/// Per-query results.
#[derive(Debug, Clone)]
pub struct QueryStats {
    /// The template.
    pub template: QueryTemplate,
    /// Latencies of successful executions.
    pub latencies: Latencies,
    /// Failures by class.
    pub errors: ErrorCounts,
    /// Series in the last successful result (a sanity check that the data is there).
    pub last_series: usize,
}

/// Results of a run.
#[derive(Debug, Clone)]
pub struct QueryReport {
    /// One entry per template, in mix order.
    pub queries: Vec<QueryStats>,
    /// Wall time.
    pub elapsed: Duration,
}

impl QueryReport {
    /// All successful latencies together.
    pub fn overall(&self) -> Latencies {
        let mut all = Latencies::default();
        for q in &self.queries {
            all.merge(&q.latencies);
        }
        all
    }

    /// Total failures.
    pub fn errors(&self) -> u64 {
        self.queries.iter().flat_map(|q| q.errors.values()).sum()
    }

    /// The report as JSON (seconds).
    pub fn to_json(&self) -> serde_json::Value {
        let mut all = self.overall();
        let per: Vec<_> = self
            .queries
            .iter()
            .map(|q| {
                let mut l = q.latencies.clone();
                serde_json::json!({
                    "name": q.template.name, "kind": q.template.kind.as_str(), "expr": q.template.expr,
                    "count": l.len(), "errors": q.errors, "series": q.last_series,
                    "p50": l.percentile(50.0), "p90": l.percentile(90.0), "p99": l.percentile(99.0),
                })
            })
            .collect();
        serde_json::json!({
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "count": all.len(), "errors": self.errors(),
            "p50": all.percentile(50.0), "p90": all.percentile(90.0), "p99": all.percentile(99.0),
            "queries": per,
        })
    }
}

impl std::fmt::Display for QueryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = |l: &mut Latencies, q| {
            l.percentile(q)
                .map(format_seconds)
                .unwrap_or_else(|| "-".into())
        };
        writeln!(
            f,
            "{:<20} {:<8} {:>7} {:>9} {:>9} {:>9} {:>7}  errors",
            "query", "kind", "count", "p50", "p90", "p99", "series"
        )?;
        for q in &self.queries {
            let mut l = q.latencies.clone();
            writeln!(
                f,
                "{:<20} {:<8} {:>7} {:>9} {:>9} {:>9} {:>7}  {}",
                q.template.name,
                q.template.kind.as_str(),
                l.len(),
                p(&mut l, 50.0),
                p(&mut l, 90.0),
                p(&mut l, 99.0),
                q.last_series,
                format_errors(&q.errors)
            )?;
        }
        let mut all = self.overall();
        write!(
            f,
            "{:<20} {:<8} {:>7} {:>9} {:>9} {:>9} {:>7}  {} errors in {:.1}s",
            "all",
            "",
            all.len(),
            p(&mut all, 50.0),
            p(&mut all, 90.0),
            p(&mut all, 99.0),
            "",
            self.errors(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs the mix until `duration` or `max_queries`, whichever comes first.
pub async fn run(
    http: reqwest::Client,
    templates: Vec<QueryTemplate>,
    cfg: QueryConfig,
) -> QueryReport {
    let client = promapi::Client::new(http, &cfg.base, cfg.tenant.clone());
    let stats: Arc<Vec<Mutex<QueryStats>>> = Arc::new(
        templates
            .iter()
            .map(|t| {
                Mutex::new(QueryStats {
                    template: t.clone(),
                    latencies: Latencies::default(),
                    errors: ErrorCounts::new(),
                    last_series: 0,
                })
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let targets = cfg.series.div_ceil(SERIES_PER_TARGET).max(1) as u64;
    // Executions numbered below this are warm-up: run, but neither timed nor counted.
    let warmup = cfg.warmup.saturating_mul(templates.len() as u64);

    let mut handles = Vec::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (client, stats, next, cfg) = (
            client.clone(),
            Arc::clone(&stats),
            Arc::clone(&next),
            cfg.clone(),
        );
        handles.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= deadline
                    || cfg
                        .max_queries
                        .is_some_and(|m| n >= warmup.saturating_add(m))
                {
                    break;
                }
                let i = (n % stats.len() as u64) as usize;
                let template = lock(&stats[i]).template.clone();
                let target = splitmix64(cfg.seed ^ n) % targets;
                let expr = template.expr.replace("$instance", &format!("host-{target:05}:9100"));
                let t0 = Instant::now();
                // Bound each query by what is left of the run, so the run ends on time.
                let remaining = deadline.saturating_duration_since(t0).max(Duration::from_millis(1));
                let fut = async {
                    match template.kind {
                        QueryKind::Instant => client.query(&expr, cfg.time_ms).await,
                        QueryKind::Range => {
                            let start = cfg.time_ms - cfg.range.as_millis() as i64;
                            client.query_range(&expr, start, cfg.time_ms, cfg.step).await
                        }
                    }
                };
                let outcome = tokio::time::timeout(remaining, fut).await;
                let elapsed = t0.elapsed();
                if n < warmup {
                    if let Ok(Err(e)) = &outcome {
                        tracing::warn!(query = %template.name, expr = %expr, error = %e, "warm-up query failed");
                    }
                    continue;
                }
                let mut s = lock(&stats[i]);
                match outcome {
                    Ok(Ok(result)) => {
                        s.latencies.record(elapsed);
                        s.last_series = result.series();
                    }
                    Ok(Err(e)) => {
                        let class = e.class();
                        let first = !s.errors.contains_key(&class);
                        *s.errors.entry(class).or_default() += 1;
                        if first {
                            tracing::warn!(query = %template.name, expr = %expr, error = %e, "query failed");
                        }
                    }
                    // Cut off by the end of the run: neither a latency nor a server error.
                    Err(_) => break,
                }
            }
        }));
    }
    for h in handles {
        if let Err(e) = h.await {
            tracing::error!(error = %e, "query worker failed");
        }
    }
    let queries = stats.iter().map(|m| lock(m).clone()).collect();
    QueryReport {
        queries,
        elapsed: started.elapsed(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another worker panicked mid-update; the tallies stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mix_parses() {
        let mix = parse_templates(DEFAULT_MIX).unwrap();
        assert_eq!(mix.len(), 7);
        assert_eq!(
            mix[0],
            QueryTemplate {
                name: "rate_5m".into(),
                kind: QueryKind::Instant,
                expr: "rate(node_network_receive_bytes_total[5m])".into()
            }
        );
        assert!(
            mix.iter()
                .any(|q| q.expr.starts_with("histogram_quantile(0.99"))
        );
        assert!(mix.iter().any(|q| q.expr.contains("=~")));
        assert!(mix.iter().any(|q| q.expr.starts_with("topk")));
    }

    #[test]
    fn dashboard_mix_has_each_kind_instant_and_range() {
        let mix = parse_templates(builtin_mix("dashboard").unwrap()).unwrap();
        assert_eq!(mix.len(), 10);
        for pair in mix.chunks(2) {
            assert_eq!(pair[0].kind, QueryKind::Instant);
            assert_eq!(pair[1].kind, QueryKind::Range);
            assert_eq!(
                (&pair[0].name, &pair[0].expr),
                (&pair[1].name, &pair[1].expr)
            );
        }
        for needle in [
            "rate(node_network_receive_bytes_total[5m])",
            "sum by (mode) (rate(",
            "histogram_quantile(0.99, sum by (le) (rate(",
            "topk(",
            "=~",
        ] {
            assert!(mix.iter().any(|q| q.expr.contains(needle)), "{needle}");
        }
        assert_eq!(builtin_mix("default"), Some(DEFAULT_MIX));
        assert_eq!(builtin_mix("nope"), None);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse_templates("# only a comment\n").unwrap_err(),
            "no queries"
        );
        assert!(
            parse_templates("instant x up\nfoo y up")
                .unwrap_err()
                .starts_with("line 2:")
        );
        assert!(
            parse_templates("range onlyname")
                .unwrap_err()
                .starts_with("line 1:")
        );
    }
}
