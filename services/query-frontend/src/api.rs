//! The frontend's HTTP API: the query routes under `/prometheus/api/v1` (and `/api/v1`, as the
//! querier serves them), request parsing and validation, the tenant's limits, and the
//! answers' accounting (metrics, the slow-query log).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use norn_cache::Cache;
use norn_limits::Overrides;
use norn_model::{ErrorKind, TenantId};
use norn_promql::{Engine, EngineOptions, PromqlError, parse_error};
use norn_server::params::{Params, parse_duration_ms, parse_time};
use norn_server::{HttpError, TenantResolver};

use crate::metrics::FrontendMetrics;
use crate::range::{Answer, RangeQuery, Stats};
use crate::response::{Matrix, write_matrix};
use crate::shard_merge::write_vector;
use crate::split::align;
use crate::{Config, Downstream, DownstreamRequest, DownstreamResponse};

/// Most points a range query may return per series (Prometheus' rule).
const MAX_POINTS: i64 = 11_000;

/// Query threads kept idle for validation: parsing is quick, and the querier (in this
/// process or another) keeps its own for evaluation.
const IDLE_PARSE_THREADS: usize = 2;

/// The request headers a querier needs: who the tenant is, and how a form body is encoded.
const PASSED_HEADERS: [&str; 3] = ["x-scope-orgid", "authorization", "content-type"];

/// The query-frontend: its settings, the querier it forwards to, and its cache.
pub struct Frontend {
    pub(crate) config: Config,
    /// Parses queries to validate them (on query threads: deep queries need a deep stack).
    pub(crate) engine: Engine,
    pub(crate) downstream: Arc<dyn Downstream>,
    /// The results cache, when `cache_results` is on.
    pub(crate) cache: Option<Arc<dyn Cache>>,
    pub(crate) overrides: Arc<Overrides>,
    tenants: TenantResolver,
    pub(crate) metrics: FrontendMetrics,
}

impl Frontend {
    pub fn new(
        config: Config,
        downstream: Arc<dyn Downstream>,
        cache: Option<Arc<dyn Cache>>,
        overrides: Arc<Overrides>,
        tenants: TenantResolver,
        metrics: FrontendMetrics,
    ) -> Arc<Self> {
        let engine = Engine::new(EngineOptions {
            max_query_bytes: config.max_query_expression_size_bytes,
            max_query_depth: config
                .max_query_expression_depth
                .min(norn_promql::MAX_QUERY_DEPTH_CEILING),
            idle_query_threads: IDLE_PARSE_THREADS,
            ..EngineOptions::default()
        });
        let cache = if config.cache_results { cache } else { None };
        Arc::new(Self {
            config,
            engine,
            downstream,
            cache,
            overrides,
            tenants,
            metrics,
        })
    }

    /// The limits a read runs under: the tenant's, or for a federated read (`a|b`) every
    /// member's tightest query bounds ([`Overrides::for_tenants`]).
    pub(crate) fn limits(&self, tenant: &TenantId) -> Arc<norn_limits::Limits> {
        let members = tenant.members();
        self.overrides
            .for_tenants(members.iter().map(TenantId::as_str))
    }

    /// Refuses a query that does not parse, with Prometheus' message and position.
    async fn validate(&self, query: &str) -> Result<(), HttpError> {
        match self.engine.check_query(query).await {
            Ok(_) => Ok(()),
            Err(PromqlError::Parse(msg)) => {
                let q = query.to_string();
                let m = msg.clone();
                let described = self
                    .engine
                    .on_query_thread(move || parse_error::describe(&q, &m))
                    .await
                    .unwrap_or_else(|_| format!("invalid parameter \"query\": parse error: {msg}"));
                Err(HttpError::bad_data(described).into_json())
            }
            Err(PromqlError::TooComplex(msg)) => {
                Err(HttpError::bad_data(format!("invalid parameter \"query\": {msg}")).into_json())
            }
            Err(e) => Err(HttpError::new(e.kind(), e.to_string()).into_json()),
        }
    }

    /// Counts and times one answered request.
    fn observe(&self, op: &str, started: Instant, status: StatusCode) {
        self.metrics
            .queries
            .with_label_values(&[op, status.as_str()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sends a request on unchanged (but for the headers a querier does not need).
    async fn forward(
        &self,
        method: Method,
        path_and_query: String,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let req = DownstreamRequest {
            method,
            path_and_query,
            headers: self.passed_headers(headers),
            body,
        };
        match self.downstream.call(req).await {
            Ok(r) => downstream_response(r),
            Err(e) => HttpError::new(ErrorKind::Unavailable, e.to_string())
                .into_json()
                .into_response(),
        }
    }
}

/// The headers of `h` a querier is sent.
pub(crate) fn passed_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PASSED_HEADERS {
        if let Some(v) = h.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}

impl Frontend {
    /// [`passed_headers`] with `X-Scope-OrgID` set to the tenant the request resolves to:
    /// the queue is keyed by that header, so a tenant named only by its basic-auth username
    /// gets its own queue rather than sharing one with every such tenant, and `b|a` queues
    /// with `a|b`. A request that names no valid tenant is passed as it came, for the
    /// querier to refuse.
    pub(crate) fn passed_headers(&self, h: &HeaderMap) -> HeaderMap {
        let mut out = passed_headers(h);
        if let Ok(tenant) = self.tenants.resolve_read(h)
            && let Ok(v) = HeaderValue::from_str(tenant.as_str())
        {
            out.insert("x-scope-orgid", v);
        }
        out
    }
}

/// A querier's answer as ours.
pub(crate) fn downstream_response(r: DownstreamResponse) -> Response {
    let mut resp = (r.status, r.body).into_response();
    if let Some(ct) = r.content_type {
        resp.headers_mut().insert("content-type", ct);
    }
    resp
}

fn ok_json(body: String) -> Response {
    ([("content-type", "application/json")], body).into_response()
}

fn empty_matrix() -> Response {
    ok_json(write_matrix(&Matrix::default()))
}

/// Whether the request asks not to use the results cache (`Cache-Control: no-store`).
fn no_store(headers: &HeaderMap) -> bool {
    headers
        .get_all("cache-control")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
}

type F = State<Arc<Frontend>>;

fn path_and_query(path: &str, rq: Option<&str>) -> String {
    match rq {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

async fn query_range(
    State(f): F,
    headers: HeaderMap,
    RawQuery(rq): RawQuery,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let mut stats = Stats::default();
    let r = range_inner(&f, &headers, rq.as_deref(), &body, &mut stats).await;
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    f.observe("query_range", started, resp.status());
    let took = started.elapsed();
    let slow = f.config.log_queries_longer_than;
    if !slow.is_zero() && took >= slow {
        let p = Params::parse(rq.as_deref(), &body);
        let hit_ratio = if stats.legs == 0 {
            0.0
        } else {
            stats.legs_hit as f64 / stats.legs as f64
        };
        tracing::info!(
            tenant = %stats.tenant,
            query = p.get("query").unwrap_or(""),
            start = p.get("start").unwrap_or(""),
            end = p.get("end").unwrap_or(""),
            step = p.get("step").unwrap_or(""),
            wall_time_seconds = took.as_secs_f64(),
            legs = stats.legs,
            shards = stats.shards,
            cache_hit_ratio = hit_ratio,
            status = resp.status().as_u16(),
            "slow query"
        );
    }
    resp
}

async fn range_inner(
    f: &Frontend,
    headers: &HeaderMap,
    rq: Option<&str>,
    body: &[u8],
    stats: &mut Stats,
) -> Result<Response, HttpError> {
    let tenant = f
        .tenants
        .resolve_read(headers)
        .map_err(HttpError::into_json)?;
    stats.tenant = tenant.as_str().to_string();
    let p = Params::parse(rq, body);
    let bad = |m: &str| HttpError::bad_data(m.to_string()).into_json();
    let mut start = parse_time("start", p.get("start").unwrap_or(""))?;
    let mut end = parse_time("end", p.get("end").unwrap_or(""))?;
    if end < start {
        return Err(bad(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    let step = parse_duration_ms("step", p.get("step").unwrap_or(""))?;
    if step <= 0 {
        return Err(bad(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > MAX_POINTS {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let query = p.get("query").unwrap_or("").to_string();
    f.validate(&query).await?;
    let limits = f.limits(&tenant);
    if !limits.max_query_lookback.is_zero() {
        let oldest = norn_model::now_ms().saturating_sub(ms(limits.max_query_lookback));
        if end < oldest {
            // Wholly older than the tenant may read: no data, as Mimir answers.
            return Ok(empty_matrix());
        }
        if start < oldest {
            // The first point of the query's grid the tenant may read.
            start += (oldest - start + step - 1) / step * step;
        }
    }
    check_length(
        &tenant,
        "max_total_query_length",
        "err-mimir-max-total-query-length",
        limits.max_total_query_length,
        start,
        end,
        "the total query time range",
    )?;
    check_length(
        &tenant,
        "max_query_length",
        "err-mimir-max-query-length",
        limits.max_query_length,
        start,
        end,
        "the query time range",
    )?;
    if f.config.align_queries_with_step {
        (start, end) = align(start, end, step);
    }
    // `@ start()` / `@ end()` mean the query's own bounds, which a leg would change; any `@`
    // keeps the query whole and uncached (a cached `@` result would also outlive its data).
    let whole = query.contains('@');
    let extra: Vec<(String, String)> =
        p.0.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "query" | "start" | "end" | "step"))
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
            .collect();
    let parallelism = limits.max_query_parallelism.max(1);
    let shard = f.shard_plan(&tenant, &query, parallelism).await;
    stats.shards = shard.as_ref().map_or(0, |s| s.plan.shards);
    let q = RangeQuery {
        tenant,
        query,
        start,
        end,
        step,
        extra,
        headers: f.passed_headers(headers),
        split: !whole,
        use_cache: f.cache.is_some() && !whole && !no_store(headers),
        parallelism,
        max_cache_freshness: limits.max_cache_freshness,
        shard,
    };
    match f.run_range(&q, stats).await {
        Ok(Answer::Passthrough(r)) => Ok(downstream_response(r)),
        Ok(Answer::Merged(m)) => Ok(ok_json(write_matrix(&m))),
        Err(crate::range::Failure::Downstream(r)) => Ok(downstream_response(r)),
        Err(crate::range::Failure::Error(e)) => Err(e),
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Refuses a range longer than the tenant's `limit` (zero: no limit), naming it.
fn check_length(
    tenant: &TenantId,
    name: &str,
    code: &str,
    limit: Duration,
    start: i64,
    end: i64,
    what: &str,
) -> Result<(), HttpError> {
    let len = end.saturating_sub(start);
    if !limit.is_zero() && len > ms(limit) {
        tracing::debug!(
            tenant = tenant.as_str(),
            limit = name,
            "query refused: too long"
        );
        return Err(HttpError::bad_data(format!(
            "{what} exceeds the limit (query length: {}, limit: {}); the limit is {name} ({code})",
            norn_model::format_duration(Duration::from_millis(len as u64)),
            norn_model::format_duration(limit)
        ))
        .into_json());
    }
    Ok(())
}

async fn query(
    State(f): F,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    RawQuery(rq): RawQuery,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let r = async {
        let tenant = f
            .tenants
            .resolve_read(&headers)
            .map_err(HttpError::into_json)?;
        let p = Params::parse(rq.as_deref(), &body);
        let text = p.get("query").unwrap_or("");
        f.validate(text).await?;
        let parallelism = f.limits(&tenant).max_query_parallelism.max(1);
        if let Some(s) = f.shard_plan(&tenant, text, parallelism).await {
            let passed = f.passed_headers(&headers);
            let now = norn_model::now_ms();
            return Ok(
                match f.run_sharded_instant(&tenant, &passed, &s, &p, now).await {
                    Ok(v) => ok_json(write_vector(&v)),
                    Err(crate::range::Failure::Downstream(r)) => downstream_response(r),
                    Err(crate::range::Failure::Error(e)) => e.into_response(),
                },
            );
        }
        Ok::<_, HttpError>(
            f.forward(
                method,
                path_and_query(uri.path(), rq.as_deref()),
                &headers,
                body,
            )
            .await,
        )
    }
    .await;
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    f.observe("query", started, resp.status());
    resp
}

/// Every other read of the API, forwarded as it is; `op` names it in the metrics.
async fn forwarded(
    f: &Frontend,
    op: &str,
    method: Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let pq = path_and_query(uri.path(), uri.query());
    let resp = f.forward(method, pq, headers, body).await;
    f.observe(op, started, resp.status());
    resp
}

macro_rules! forward_handler {
    ($name:ident, $op:literal) => {
        async fn $name(
            State(f): F,
            method: Method,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            forwarded(&f, $op, method, &uri, &headers, body).await
        }
    };
}

forward_handler!(series, "series");
forward_handler!(labels, "labels");
forward_handler!(label_values, "label_values");
forward_handler!(metadata, "metadata");
forward_handler!(buildinfo, "buildinfo");
forward_handler!(format_query, "format_query");

/// The query API's routes, with and without the `/prometheus` prefix (the querier's paths).
pub fn routes(f: Arc<Frontend>) -> Router {
    let mut r = Router::new();
    for prefix in ["/prometheus", ""] {
        r = r
            .route(&format!("{prefix}/api/v1/query"), get(query).post(query))
            .route(
                &format!("{prefix}/api/v1/query_range"),
                get(query_range).post(query_range),
            )
            .route(&format!("{prefix}/api/v1/series"), get(series).post(series))
            .route(&format!("{prefix}/api/v1/labels"), get(labels).post(labels))
            .route(
                &format!("{prefix}/api/v1/label/{{name}}/values"),
                get(label_values),
            )
            .route(&format!("{prefix}/api/v1/metadata"), get(metadata))
            .route(&format!("{prefix}/api/v1/status/buildinfo"), get(buildinfo))
            .route(
                &format!("{prefix}/api/v1/format_query"),
                get(format_query).post(format_query),
            );
    }
    r.with_state(f)
}

/// `HeaderValue` for a form body.
pub(crate) fn form_content_type() -> HeaderValue {
    HeaderValue::from_static("application/x-www-form-urlencoded")
}
