//! How rules query: the seam between evaluation ([`crate::group`], [`crate::alerting`]) and
//! where PromQL runs.
//!
//! * [`LocalQuerier`]: in-process, `norn-promql`'s engine over the querier's
//!   `QueryableProvider` (the default, and what `--target=all` uses).
//! * [`FrontendQuerier`]: `--ruler.query-frontend.address`, as Mimir's
//!   `-ruler.query-frontend.address`: each rule query is an instant query sent to a
//!   query-frontend's Prometheus API (`POST <base>/prometheus/api/v1/query`, form-encoded,
//!   `X-Scope-OrgID: <tenant>`), so rule queries get the frontend's splitting, sharding,
//!   caching and fair queue. Mimir speaks gRPC (httpgrpc) to the frontend; Norn speaks the
//!   frontend's HTTP API.
//!
//! Every query a rule makes goes through a [`RuleQuerier`]: recording and alerting rules'
//! expressions, the `query` template function, and the read of `ALERTS_FOR_STATE` that
//! restores alerts' `for` state ([`RuleQuerier::select`], which the frontend client runs as
//! the range query `{matchers}[maxt - mint]` at `maxt`, as Mimir's remote querier does).
//!
//! Failure modes of the frontend client, each the rule's error (the rule is `err` in
//! `/api/v1/rules` and its output is not written, as for a local query error): the frontend
//! unreachable or slower than `ruler.query_frontend.timeout`; a non-2xx answer (its
//! Prometheus `error` text is kept); an answer that is not Prometheus' JSON; an answer larger
//! than [`MAX_RESPONSE_BYTES`] (refused while reading, so a hostile or broken frontend cannot
//! make the ruler hold an unbounded body).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use norn_model::{Label, Labels, Matcher, QueryableProvider, Sample, Series, TenantId};
use norn_promql::{Engine, QueryContext, Value, VectorSample};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::metrics::RulerMetrics;

/// Largest answer read from a query-frontend.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Runs the queries of a tenant's rules. Errors are the text shown as the rule's error.
#[async_trait]
pub trait RuleQuerier: Send + Sync {
    /// The instant query `expr` at `t_ms`.
    async fn instant(&self, tenant: &TenantId, expr: &str, t_ms: i64) -> Result<Value, String>;

    /// The raw samples of the series matching `matchers` within `[mint_ms, maxt_ms]`.
    async fn select(
        &self,
        tenant: &TenantId,
        mint_ms: i64,
        maxt_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, String>;
}

/// Rules query in this process: the engine over the querier's view of the data.
pub struct LocalQuerier {
    engine: Engine,
    provider: Arc<dyn QueryableProvider>,
    /// Longest one query may run.
    timeout: Duration,
}

impl LocalQuerier {
    pub fn new(engine: Engine, provider: Arc<dyn QueryableProvider>, timeout: Duration) -> Self {
        Self {
            engine,
            provider,
            timeout,
        }
    }
}

#[async_trait]
impl RuleQuerier for LocalQuerier {
    async fn instant(&self, tenant: &TenantId, expr: &str, t_ms: i64) -> Result<Value, String> {
        let q = self.provider.queryable(tenant);
        // The engine runs the query on its own query threads (deep stacks), as the querier's.
        self.engine
            .instant_query_within(q.as_ref(), expr, t_ms, QueryContext::timeout(self.timeout))
            .await
            .map(|r| r.value)
            .map_err(|e| e.to_string())
    }

    async fn select(
        &self,
        tenant: &TenantId,
        mint_ms: i64,
        maxt_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, String> {
        self.provider
            .queryable(tenant)
            .select(mint_ms, maxt_ms, matchers)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Rules query through a query-frontend's HTTP API.
pub struct FrontendQuerier {
    client: reqwest::Client,
    /// `<base>/prometheus/api/v1/query`.
    url: reqwest::Url,
    timeout: Duration,
}

impl FrontendQuerier {
    /// A client of the frontend at `base` (see [`crate::Config::query_frontend_url`]).
    /// `tls`: the CA and client certificate for an `https://` frontend
    /// (`--ruler.query-frontend.grpc-client-config.tls-*`); `None`: the system CA bundle.
    pub fn new(
        base: reqwest::Url,
        timeout: Duration,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        // No proxy from the environment, as the notifier: one meant for other traffic must not
        // carry rule queries.
        let mut client = reqwest::Client::builder()
            .user_agent(concat!("norn-ruler/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if let Some(tls) = tls {
            client = client.use_preconfigured_tls(tls);
        }
        let client = client
            .build()
            .map_err(|e| format!("building the query-frontend client: {e}"))?;
        let mut url = base;
        let path = format!(
            "{}/prometheus/api/v1/query",
            url.path().trim_end_matches('/')
        );
        url.set_path(&path);
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    /// Where queries are sent.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// Sends one instant query and reads the answer (at most [`MAX_RESPONSE_BYTES`]).
    async fn post(&self, tenant: &TenantId, expr: &str, t_ms: i64) -> Result<Vec<u8>, String> {
        let time = format_time(t_ms);
        let timeout = format!("{}ms", self.timeout.as_millis());
        let send = async {
            let mut resp = self
                .client
                .post(self.url.clone())
                .header("X-Scope-OrgID", tenant.as_str())
                .form(&[
                    ("query", expr),
                    ("time", time.as_str()),
                    ("timeout", timeout.as_str()),
                ])
                .send()
                .await
                .map_err(|e| format!("query-frontend: {}", crate::notifier::error_chain(&e)))?;
            let status = resp.status();
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
            {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("query-frontend: {}", crate::notifier::error_chain(&e)))?
            {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| format!("query-frontend: no answer within {:?}", self.timeout))??;
        if status.is_success() {
            return Ok(body);
        }
        // Prometheus' error answer carries the reason; anything else is shown shortened.
        match serde_json::from_slice::<Envelope>(&body) {
            Ok(Envelope {
                error: Some(e),
                error_type,
                ..
            }) => Err(match error_type {
                Some(t) => format!("{t}: {e}"),
                None => e,
            }),
            _ => Err(format!(
                "query-frontend answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(256)]).trim()
            )),
        }
    }
}

fn too_large() -> String {
    format!("query-frontend: answer larger than {MAX_RESPONSE_BYTES} bytes")
}

#[async_trait]
impl RuleQuerier for FrontendQuerier {
    async fn instant(&self, tenant: &TenantId, expr: &str, t_ms: i64) -> Result<Value, String> {
        let body = self.post(tenant, expr, t_ms).await?;
        decode(&body)
    }

    async fn select(
        &self,
        tenant: &TenantId,
        mint_ms: i64,
        maxt_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, String> {
        let expr = range_selector(matchers, maxt_ms - mint_ms);
        match self.instant(tenant, &expr, maxt_ms).await? {
            Value::Matrix(m) => Ok(m),
            other => Err(format!(
                "query-frontend: {expr} answered a {} instead of a matrix",
                type_name(&other)
            )),
        }
    }
}

/// Counts each tenant's rule queries and failed ones, around any querier.
pub struct Counted {
    pub inner: Arc<dyn RuleQuerier>,
    pub metrics: Arc<RulerMetrics>,
}

impl Counted {
    fn count<T>(&self, tenant: &TenantId, r: &Result<T, String>) {
        let t = tenant.as_str();
        self.metrics.queries.with_label_values(&[t]).inc();
        if r.is_err() {
            self.metrics.queries_failed.with_label_values(&[t]).inc();
        }
    }
}

#[async_trait]
impl RuleQuerier for Counted {
    async fn instant(&self, tenant: &TenantId, expr: &str, t_ms: i64) -> Result<Value, String> {
        let r = self.inner.instant(tenant, expr, t_ms).await;
        self.count(tenant, &r);
        r
    }

    async fn select(
        &self,
        tenant: &TenantId,
        mint_ms: i64,
        maxt_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, String> {
        let r = self.inner.select(tenant, mint_ms, maxt_ms, matchers).await;
        self.count(tenant, &r);
        r
    }
}

/// Unix ms as Prometheus' `time` parameter: seconds with millisecond precision.
pub fn format_time(t_ms: i64) -> String {
    let sign = if t_ms < 0 { "-" } else { "" };
    let a = t_ms.unsigned_abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

/// `{matchers}[<range>ms]`: the PromQL read of exactly those series over the range.
pub fn range_selector(matchers: &[Matcher], range_ms: i64) -> String {
    let ms: Vec<String> = matchers
        .iter()
        .map(|m| {
            format!(
                "{}{}{}",
                label_name(&m.name),
                m.kind.as_str(),
                quote(&m.value)
            )
        })
        .collect();
    format!("{{{}}}[{}ms]", ms.join(","), range_ms.max(1))
}

/// A label name as PromQL takes it: bare when it is a classic name, quoted otherwise.
fn label_name(n: &str) -> String {
    let classic = n
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if classic && !n.is_empty() {
        n.to_string()
    } else {
        quote(n)
    }
}

/// A PromQL double-quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Scalar { .. } => "scalar",
        Value::String { .. } => "string",
        Value::Vector(_) => "vector",
        Value::Matrix(_) => "matrix",
    }
}

/// Prometheus' answer envelope.
#[derive(Deserialize)]
struct Envelope<'a> {
    status: Option<String>,
    #[serde(borrow)]
    data: Option<Data<'a>>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(borrow)]
    result: &'a RawValue,
}

/// `[<unix seconds>, "<value>"]`.
#[derive(Deserialize)]
struct Point(serde_json::Number, String);

#[derive(Deserialize)]
struct VectorEntry {
    metric: std::collections::BTreeMap<String, String>,
    value: Option<Point>,
    histogram: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct MatrixEntry {
    metric: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<Point>,
    #[serde(default)]
    histograms: Vec<serde::de::IgnoredAny>,
}

fn bad(e: impl std::fmt::Display) -> String {
    format!("query-frontend: unexpected answer: {e}")
}

/// Decodes a successful Prometheus query answer into the engine's [`Value`].
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let env: Envelope<'_> = serde_json::from_slice(body).map_err(bad)?;
    if env.status.as_deref() != Some("success") {
        return Err(match (env.error_type, env.error) {
            (Some(t), Some(e)) => format!("{t}: {e}"),
            (None, Some(e)) => e,
            _ => bad("status is not success"),
        });
    }
    let data = env.data.ok_or_else(|| bad("no data"))?;
    let raw = data.result.get();
    match data.result_type.as_str() {
        "scalar" => {
            let (t, v) = point(serde_json::from_str(raw).map_err(bad)?)?;
            Ok(Value::Scalar { t, v })
        }
        "string" => {
            let p: Point = serde_json::from_str(raw).map_err(bad)?;
            Ok(Value::String {
                t: time_ms(&p.0)?,
                v: p.1,
            })
        }
        "vector" => {
            let entries: Vec<VectorEntry> = serde_json::from_str(raw).map_err(bad)?;
            entries
                .into_iter()
                .map(|e| {
                    if e.histogram.is_some() {
                        return Err(bad("native histograms are not supported in rule queries"));
                    }
                    let (t, v) = point(e.value.ok_or_else(|| bad("a sample without value"))?)?;
                    Ok(VectorSample {
                        labels: labels(e.metric),
                        t,
                        v,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Vector)
        }
        "matrix" => {
            let entries: Vec<MatrixEntry> = serde_json::from_str(raw).map_err(bad)?;
            entries
                .into_iter()
                .map(|e| {
                    if !e.histograms.is_empty() {
                        return Err(bad("native histograms are not supported in rule queries"));
                    }
                    let samples = e
                        .values
                        .into_iter()
                        .map(|p| point(p).map(|(t, v)| Sample::new(t, v)))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Series {
                        labels: labels(e.metric),
                        samples,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Matrix)
        }
        other => Err(bad(format!("result type {other:?}"))),
    }
}

fn labels(m: std::collections::BTreeMap<String, String>) -> Labels {
    // A JSON object's keys are unique, and a BTreeMap yields them sorted.
    Labels::from_sorted(m.into_iter().map(|(n, v)| Label::new(n, v)).collect())
}

fn point(p: Point) -> Result<(i64, f64), String> {
    Ok((time_ms(&p.0)?, parse_value(&p.1)?))
}

/// Unix seconds (a JSON number with up to millisecond precision) as ms.
fn time_ms(n: &serde_json::Number) -> Result<i64, String> {
    if let Some(s) = n.as_i64() {
        return s.checked_mul(1000).ok_or_else(|| bad("time out of range"));
    }
    let f = n.as_f64().ok_or_else(|| bad("time is not a number"))?;
    let ms = (f * 1000.0).round();
    if !ms.is_finite() || ms.abs() > i64::MAX as f64 {
        return Err(bad("time out of range"));
    }
    Ok(ms as i64)
}

/// A sample value as Prometheus writes it (`strconv.FormatFloat(v, 'f', -1, 64)`, `NaN`,
/// `+Inf`, `-Inf`): parsed exactly (Rust's and Go's parsers both round correctly).
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(format!("sample value {s:?}"))),
    }
}

#[cfg(test)]
#[path = "rule_query_tests.rs"]
mod tests;
