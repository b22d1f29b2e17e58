//! The querier: Prometheus' HTTP query API over the PromQL engine.
//!
//! Routes are served under Mimir's `/prometheus` prefix and, for scripts written against a
//! plain Prometheus, at `/api/v1/...` too. Every read is scoped to the caller's tenant
//! through a [`QueryableProvider`], so no handler can reach another tenant's series.
//! Responses use Prometheus' JSON envelope, float formatting and error types.

pub mod admission;
pub mod json;
pub mod limited;
pub mod params;
mod service;
pub mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use norn_limits::Overrides;
use norn_model::duration::serde_duration;
use norn_model::{
    ErrorKind, FederatedQueryable, MetadataReader, Queryable, QueryableProvider, TenantId,
};
use norn_promql::{Engine, EngineOptions, QueryContext};
use norn_server::{HttpError, TenantResolver};
use serde::{Deserialize, Serialize};

pub use norn_promql::parse_error;
pub use service::{BuildError, Deps, QuerierService, build};

use crate::admission::{Admission, Outcome, QuerierMetrics, Slot};
use crate::limited::SeriesLimited;
use crate::params::{MAX_TIME_MS, MIN_TIME_MS, Params, matcher_sets, parse_duration_ms, time_or};

/// Most points a range query may return per series (Prometheus' rule).
const MAX_POINTS: i64 = 11_000;

/// Querier configuration (YAML block `querier`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Most samples one query may hold in memory.
    pub max_samples: usize,
    /// Longest a query may run.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// How far back an instant selector looks for a sample.
    #[serde(with = "serde_duration")]
    pub lookback_delta: Duration,
    /// Most queries (and series/label reads) running at once.
    pub max_concurrent: usize,
    /// Most queries waiting for a slot; beyond it they get 503 at once.
    pub max_outstanding_requests: usize,
    /// Longest query text accepted, in bytes (0 = no limit).
    pub max_query_expression_size_bytes: usize,
    /// Deepest nesting of a query expression accepted.
    pub max_query_expression_depth: usize,
    /// Only the last this-long of a query is asked of the ingesters (0 = every range): older
    /// data is in the bucket's blocks. Mimir's `query_ingesters_within`.
    #[serde(with = "serde_duration")]
    pub query_ingesters_within: Duration,
    /// Only data older than this is asked of the store-gateways (0 = every range): newer
    /// data is still in the ingesters. Mimir's `query_store_after`.
    #[serde(with = "serde_duration")]
    pub query_store_after: Duration,
    /// TLS to the store-gateways (Mimir's `store_gateway_client`,
    /// `--querier.store-gateway-client.tls-*`).
    pub store_gateway_client: norn_server::tls::ClientTlsSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            lookback_delta: Duration::from_secs(300),
            max_concurrent: 20,
            max_outstanding_requests: 100,
            max_query_expression_size_bytes: norn_promql::DEFAULT_MAX_QUERY_BYTES,
            max_query_expression_depth: norn_promql::DEFAULT_MAX_QUERY_DEPTH,
            query_ingesters_within: Duration::from_secs(13 * 3600),
            query_store_after: Duration::from_secs(12 * 3600),
            store_gateway_client: Default::default(),
        }
    }
}

impl Config {
    /// Refuses settings the querier cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 {
            return Err("querier.max-concurrent must be at least 1".into());
        }
        let d = self.max_query_expression_depth;
        if d == 0 || d > norn_promql::MAX_QUERY_DEPTH_CEILING {
            return Err(format!(
                "querier.max-query-expression-depth must be between 1 and {} (the query thread's stack is sized for that), got {d}",
                norn_promql::MAX_QUERY_DEPTH_CEILING
            ));
        }
        let within = self.query_ingesters_within;
        if !within.is_zero() && !self.query_store_after.is_zero() && self.query_store_after > within
        {
            // The window between the two would be asked of nobody: data there would vanish
            // from every answer.
            return Err(format!(
                "querier.query-store-after ({}) must not be greater than querier.query-ingesters-within ({}): data between them would be queried from neither the ingesters nor the store-gateways",
                norn_model::format_duration(self.query_store_after),
                norn_model::format_duration(within)
            ));
        }
        Ok(())
    }
}

/// The query API service.
pub struct Querier {
    config: Config,
    engine: Engine,
    storage: Arc<dyn QueryableProvider>,
    metadata: Arc<dyn MetadataReader>,
    tenants: TenantResolver,
    overrides: Arc<Overrides>,
    admission: Admission,
}

impl Querier {
    pub fn new(
        config: Config,
        storage: Arc<dyn QueryableProvider>,
        metadata: Arc<dyn MetadataReader>,
        tenants: TenantResolver,
        overrides: Arc<Overrides>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let engine = Engine::new(EngineOptions {
            lookback_delta_ms: config.lookback_delta.as_millis() as i64,
            max_samples: config.max_samples,
            timeout: config.timeout,
            max_query_bytes: config.max_query_expression_size_bytes,
            // Validated by the binary; clamped here so no caller can exceed the stack.
            max_query_depth: config
                .max_query_expression_depth
                .min(norn_promql::MAX_QUERY_DEPTH_CEILING),
            // As many threads as queries may run at once stay ready for the next query.
            idle_query_threads: config.max_concurrent,
        });
        let admission = Admission::new(
            config.max_concurrent,
            config.max_outstanding_requests,
            QuerierMetrics::new(registry, &engine)?,
        );
        Ok(Arc::new(Self {
            config,
            engine,
            storage,
            metadata,
            tenants,
            overrides,
            admission,
        }))
    }

    /// The querier's metrics (running, queued, rejected and stopped queries).
    pub fn metrics(&self) -> &QuerierMetrics {
        self.admission.metrics()
    }

    /// The engine's query threads alive now (see [`Engine::query_threads`]).
    pub fn query_threads(&self) -> usize {
        self.engine.query_threads()
    }

    /// A slot to run in, waiting for one until `deadline` (see [`admission`]).
    async fn enter(&self, deadline: Instant) -> Result<Slot, HttpError> {
        self.admission.enter(deadline).await
    }

    /// The tenant's storage view for one query, with the per-query series limit applied
    /// (to each member of a federated read on its own).
    fn store(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        self.federate(tenant, |t| {
            let limit = self
                .overrides
                .for_tenant(t.as_str())
                .max_fetched_series_per_query;
            Arc::new(SeriesLimited::new(self.storage.queryable(t), limit))
        })
    }

    /// The tenant's storage view with no series limit (label names and values).
    fn unlimited_store(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        self.federate(tenant, |t| self.storage.queryable(t))
    }

    /// `view` of the tenant, or, for a federated read (`a|b`), of each member, read as one
    /// with `__tenant_id__` on every series.
    fn federate(
        &self,
        tenant: &TenantId,
        view: impl Fn(&TenantId) -> Arc<dyn Queryable>,
    ) -> Arc<dyn Queryable> {
        if !tenant.is_federated() {
            return view(tenant);
        }
        let members = tenant
            .members()
            .into_iter()
            .map(|t| {
                let v = view(&t);
                (t, v)
            })
            .collect();
        Arc::new(FederatedQueryable::new(
            members,
            self.tenants.federation.max_concurrent,
        ))
    }

    /// Refuses a query whose time range is longer than the tenant's `max_total_query_length`
    /// (for a federated read, the smallest of its members' limits).
    fn check_length(&self, tenant: &TenantId, start: i64, end: i64) -> Result<(), HttpError> {
        let max = tenant
            .members()
            .iter()
            .map(|t| self.overrides.for_tenant(t.as_str()).max_total_query_length)
            .filter(|m| !m.is_zero())
            .min()
            .unwrap_or_default();
        let len = end.saturating_sub(start);
        if !max.is_zero() && len > max.as_millis() as i64 {
            return Err(HttpError::bad_data(format!(
                "the total query time range exceeds the limit (query length: {}, limit: {}) (err-mimir-max-total-query-length)",
                norn_model::format_duration(Duration::from_millis(len as u64)),
                norn_model::format_duration(max)
            ))
            .into_json());
        }
        Ok(())
    }

    /// The tenant's `max_estimated_memory_consumption_per_query` (for a federated read, the
    /// smallest of its members').
    fn max_memory(&self, tenant: &TenantId) -> u64 {
        let members = tenant.members();
        self.overrides
            .for_tenants(members.iter().map(TenantId::as_str))
            .max_estimated_memory_consumption_per_query
    }

    /// The tenant a read is for: with tenant federation on, possibly several (`a|b`).
    fn tenant(&self, headers: &HeaderMap) -> Result<TenantId, HttpError> {
        self.tenants
            .resolve_read(headers)
            .map_err(HttpError::into_json)
    }

    /// A per-request `timeout` parameter can only shorten the configured one.
    fn timeout(&self, p: &Params) -> Result<Duration, HttpError> {
        match p.get("timeout") {
            None | Some("") => Ok(self.config.timeout),
            Some(s) => {
                let ms = parse_duration_ms("timeout", s)?;
                Ok(Duration::from_millis(ms.max(0) as u64).min(self.config.timeout))
            }
        }
    }
}

/// When a request with `timeout` must have been answered; waiting for a slot counts.
fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(10 * 365 * 86_400))
}

/// The engine's view of a request: what is left until its deadline, and its slot, which
/// the query thread keeps until it has stopped.
fn query_context(deadline: Instant, slot: Slot, max_memory_bytes: u64) -> QueryContext {
    QueryContext {
        max_estimated_memory_bytes: max_memory_bytes,
        timeout: Some(deadline.saturating_duration_since(Instant::now())),
        keep_alive: Some(Box::new(slot)),
    }
}

fn ok_json(body: String) -> Response {
    ([("content-type", "application/json")], body).into_response()
}

/// Maps an engine error to the API's; a parse error gets its position, found on a query
/// thread since locating it parses prefixes of the (possibly deep) query.
async fn engine_error(engine: &Engine, query: &str, e: norn_promql::PromqlError) -> HttpError {
    match e {
        norn_promql::PromqlError::Parse(msg) => {
            let q = query.to_string();
            let m = msg.clone();
            let described = engine
                .on_query_thread(move || parse_error::describe(&q, &m))
                .await
                .unwrap_or_else(|_| format!("invalid parameter \"query\": parse error: {msg}"));
            HttpError::bad_data(described).into_json()
        }
        norn_promql::PromqlError::TooComplex(msg) => {
            HttpError::bad_data(format!("invalid parameter \"query\": {msg}")).into_json()
        }
        e => HttpError::new(e.kind(), e.to_string()).into_json(),
    }
}

fn storage_error(e: norn_model::StorageError) -> HttpError {
    HttpError::new(e.kind(), e.to_string()).into_json()
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::new(
            ErrorKind::Timeout,
            "query timed out in expression evaluation",
        )
        .into_json()),
    }
}

type Q = State<Arc<Querier>>;

async fn query(State(q): Q, headers: HeaderMap, RawQuery(rq): RawQuery, body: Bytes) -> Response {
    into_response(query_inner(&q, &headers, rq.as_deref(), &body).await)
}

async fn query_inner(
    q: &Querier,
    headers: &HeaderMap,
    rq: Option<&str>,
    body: &[u8],
) -> Result<Response, HttpError> {
    let tenant = q.tenant(headers)?;
    let p = Params::parse(rq, body);
    let expr = p.get("query").unwrap_or("");
    let t = time_or(&p, "time", norn_model::now_ms())?;
    let timeout = q.timeout(&p)?;
    let deadline = deadline_in(timeout);
    let memory = q.max_memory(&tenant);
    let outcome = Outcome::new(q.metrics());
    let r = with_timeout(timeout, async {
        let slot = q.enter(deadline).await?;
        let store = q.store(&tenant);
        match q
            .engine
            .instant_query_within(&*store, expr, t, query_context(deadline, slot, memory))
            .await
        {
            Ok(r) => {
                q.metrics().observe_query(&r.stats);
                Ok(r)
            }
            Err(e) => Err(engine_error(&q.engine, expr, e).await),
        }
    })
    .await;
    outcome.finish(&r);
    Ok(ok_json(json::query_response(&r?)))
}

async fn query_range(
    State(q): Q,
    headers: HeaderMap,
    RawQuery(rq): RawQuery,
    body: Bytes,
) -> Response {
    into_response(query_range_inner(&q, &headers, rq.as_deref(), &body).await)
}

async fn query_range_inner(
    q: &Querier,
    headers: &HeaderMap,
    rq: Option<&str>,
    body: &[u8],
) -> Result<Response, HttpError> {
    let tenant = q.tenant(headers)?;
    let p = Params::parse(rq, body);
    let bad = |m: &str| HttpError::bad_data(m.to_string()).into_json();
    let start = params::parse_time("start", p.get("start").unwrap_or(""))?;
    let end = params::parse_time("end", p.get("end").unwrap_or(""))?;
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
    q.check_length(&tenant, start, end)?;
    let expr = p.get("query").unwrap_or("");
    let timeout = q.timeout(&p)?;
    let deadline = deadline_in(timeout);
    let memory = q.max_memory(&tenant);
    let outcome = Outcome::new(q.metrics());
    let r = with_timeout(timeout, async {
        let slot = q.enter(deadline).await?;
        let store = q.store(&tenant);
        let ctx = query_context(deadline, slot, memory);
        match q
            .engine
            .range_query_within(&*store, expr, start, end, step, ctx)
            .await
        {
            Ok(r) => {
                q.metrics().observe_query(&r.stats);
                Ok(r)
            }
            Err(e) => Err(engine_error(&q.engine, expr, e).await),
        }
    })
    .await;
    outcome.finish(&r);
    Ok(ok_json(json::query_response(&r?)))
}

fn limit_param(p: &Params) -> Result<usize, HttpError> {
    match p.get("limit") {
        None | Some("") => Ok(0),
        Some(s) => s.parse::<usize>().map_err(|_| {
            HttpError::bad_data(format!(
                "invalid parameter \"limit\": cannot parse {s:?} to a valid limit"
            ))
            .into_json()
        }),
    }
}

/// Truncates to `limit` (0 = none) and says so, as Prometheus does.
fn apply_limit<T>(items: &mut Vec<T>, limit: usize, warnings: &mut Vec<String>) {
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        warnings.push("results truncated due to limit".to_string());
    }
}

async fn series(State(q): Q, headers: HeaderMap, RawQuery(rq): RawQuery, body: Bytes) -> Response {
    into_response(series_inner(&q, &headers, rq.as_deref(), &body).await)
}

async fn series_inner(
    q: &Querier,
    headers: &HeaderMap,
    rq: Option<&str>,
    body: &[u8],
) -> Result<Response, HttpError> {
    let tenant = q.tenant(headers)?;
    let p = Params::parse(rq, body);
    let sets = matcher_sets(&p)?;
    if sets.is_empty() {
        return Err(HttpError::bad_data("no match[] parameter provided").into_json());
    }
    let start = time_or(&p, "start", MIN_TIME_MS)?;
    let end = time_or(&p, "end", MAX_TIME_MS)?;
    let limit = limit_param(&p)?;
    let timeout = q.timeout(&p)?;
    let deadline = deadline_in(timeout);
    let outcome = Outcome::new(q.metrics());
    let r = with_timeout(timeout, async {
        let _slot = q.enter(deadline).await?;
        let store = q.store(&tenant);
        let mut all = BTreeSet::new();
        for m in &sets {
            for s in store.select(start, end, m).await.map_err(storage_error)? {
                all.insert(s.labels);
            }
        }
        Ok(all)
    })
    .await;
    outcome.finish(&r);
    let mut list: Vec<_> = r?.into_iter().collect();
    let mut warnings = Vec::new();
    apply_limit(&mut list, limit, &mut warnings);
    let mut data = String::from("[");
    for (i, l) in list.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        json::write_labels(&mut data, l);
    }
    data.push(']');
    Ok(ok_json(json::success(&data, &warnings)))
}

async fn labels(State(q): Q, headers: HeaderMap, RawQuery(rq): RawQuery, body: Bytes) -> Response {
    into_response(labels_inner(&q, &headers, rq.as_deref(), &body, None).await)
}

async fn label_values(
    State(q): Q,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(rq): RawQuery,
) -> Response {
    into_response(labels_inner(&q, &headers, rq.as_deref(), &[], Some(name)).await)
}

async fn labels_inner(
    q: &Querier,
    headers: &HeaderMap,
    rq: Option<&str>,
    body: &[u8],
    name: Option<String>,
) -> Result<Response, HttpError> {
    let tenant = q.tenant(headers)?;
    let p = Params::parse(rq, body);
    if let Some(n) = &name
        && n != "__name__"
        && !norn_model::is_valid_label_name(n.as_bytes())
    {
        return Err(HttpError::bad_data(format!("invalid label name: {n:?}")).into_json());
    }
    let mut sets = matcher_sets(&p)?;
    if sets.is_empty() {
        sets.push(Vec::new());
    }
    let start = time_or(&p, "start", MIN_TIME_MS)?;
    let end = time_or(&p, "end", MAX_TIME_MS)?;
    let limit = limit_param(&p)?;
    let timeout = q.timeout(&p)?;
    let deadline = deadline_in(timeout);
    let outcome = Outcome::new(q.metrics());
    let r = with_timeout(timeout, async {
        let _slot = q.enter(deadline).await?;
        let store = q.unlimited_store(&tenant);
        let mut all = BTreeSet::new();
        for m in &sets {
            let got = match &name {
                None => store.label_names(start, end, m).await,
                Some(n) => store.label_values(n, start, end, m).await,
            }
            .map_err(storage_error)?;
            all.extend(got);
        }
        Ok(all)
    })
    .await;
    outcome.finish(&r);
    let mut list: Vec<String> = r?.into_iter().collect();
    let mut warnings = Vec::new();
    apply_limit(&mut list, limit, &mut warnings);
    Ok(ok_json(json::success(
        &json::string_array(&list),
        &warnings,
    )))
}

async fn metadata(State(q): Q, headers: HeaderMap, RawQuery(rq): RawQuery) -> Response {
    let r = async {
        let tenant = q.tenant(&headers)?;
        let p = Params::parse(rq.as_deref(), &[]);
        let limit = match p.get("limit") {
            None | Some("") => 0,
            Some(s) => s
                .parse::<i64>()
                .map_err(|_| HttpError::bad_data("limit must be a number").into_json())?
                .max(0) as usize,
        };
        let timeout = q.timeout(&p)?;
        let deadline = deadline_in(timeout);
        let md = with_timeout(timeout, async {
            let _slot = q.enter(deadline).await?;
            // A federated read asks each member; the same entry from several tenants is
            // shown once (Mimir's federated metadata merges the same way).
            let mut all = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for t in tenant.members() {
                let got = q
                    .metadata
                    .metadata(&t, p.get("metric"), limit)
                    .await
                    .map_err(storage_error)?;
                all.extend(got.into_iter().filter(|m| seen.insert(m.clone())));
            }
            if limit > 0 {
                // `limit` counts families, as for one tenant.
                let mut families = BTreeSet::new();
                all.retain(|m| {
                    if families.contains(&m.metric_family_name) {
                        return true;
                    }
                    families.len() < limit && families.insert(m.metric_family_name.clone())
                });
            }
            Ok(all)
        })
        .await?;
        Ok::<_, HttpError>(ok_json(json::success(&metadata_json(&md), &[])))
    }
    .await;
    into_response(r)
}

/// `{family: [{type, help, unit}, ...], ...}` in one pass over the entries, grouped by
/// family whatever their order (a scan per family was quadratic: minutes for 200k entries).
fn metadata_json(md: &[norn_model::MetricMetadata]) -> String {
    let mut by_family: BTreeMap<&str, Vec<&norn_model::MetricMetadata>> = BTreeMap::new();
    for m in md {
        by_family
            .entry(m.metric_family_name.as_str())
            .or_default()
            .push(m);
    }
    let mut data = String::from("{");
    for (i, (fam, entries)) in by_family.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        json::write_str(&mut data, fam);
        data.push_str(":[");
        for (j, m) in entries.iter().enumerate() {
            if j > 0 {
                data.push(',');
            }
            data.push_str("{\"type\":");
            json::write_str(&mut data, m.metric_type.as_str());
            data.push_str(",\"help\":");
            json::write_str(&mut data, &m.help);
            data.push_str(",\"unit\":");
            json::write_str(&mut data, &m.unit);
            data.push('}');
        }
        data.push(']');
    }
    data.push('}');
    data
}

async fn buildinfo() -> Response {
    let data = format!(
        "{{\"version\":\"{}\",\"revision\":\"\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"rust\"}}",
        env!("CARGO_PKG_VERSION")
    );
    ok_json(json::success(&data, &[]))
}

async fn format_query(State(q): Q, RawQuery(rq): RawQuery, body: Bytes) -> Response {
    let p = Params::parse(rq.as_deref(), &body);
    let expr = p.get("query").unwrap_or("");
    let timeout = q.config.timeout;
    let r = with_timeout(timeout, async {
        // Needs no tenant, so it takes a slot like any query: parsing is CPU on a thread.
        let _slot = q.enter(deadline_in(timeout)).await?;
        q.engine
            .format_query(expr)
            .await
            .map(|pretty| {
                let mut s = String::new();
                json::write_str(&mut s, &pretty);
                ok_json(json::success(&s, &[]))
            })
            .map_err(|e| match e {
                norn_promql::PromqlError::Parse(m) => {
                    HttpError::bad_data(format!("invalid parameter \"query\": {m}")).into_json()
                }
                norn_promql::PromqlError::TooComplex(m) => {
                    HttpError::bad_data(format!("invalid parameter \"query\": {m}")).into_json()
                }
                e => HttpError::new(e.kind(), e.to_string()).into_json(),
            })
    })
    .await;
    into_response(r)
}

fn into_response(r: Result<Response, HttpError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Routes of the query API, with and without the `/prometheus` prefix.
pub fn routes(q: Arc<Querier>) -> Router {
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
    r.with_state(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::{MetricMetadata, MetricType};

    fn md(fam: &str, help: &str) -> MetricMetadata {
        MetricMetadata {
            metric_family_name: fam.into(),
            metric_type: MetricType::Gauge,
            help: help.into(),
            unit: String::new(),
        }
    }

    #[test]
    fn metadata_groups_families_in_any_order() {
        let got = metadata_json(&[md("b", "1"), md("a", "2"), md("b", "3")]);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2, "{got}");
        assert_eq!(v["b"].as_array().unwrap().len(), 2, "{got}");
        assert_eq!(v["b"][1]["help"], "3");
        assert_eq!(v["a"][0]["help"], "2");
        // Many families, each one entry: one pass, every family once.
        let many: Vec<MetricMetadata> = (0..50_000).map(|i| md(&format!("m{i}"), "")).collect();
        let v: serde_json::Value = serde_json::from_str(&metadata_json(&many)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 50_000);
    }
}
