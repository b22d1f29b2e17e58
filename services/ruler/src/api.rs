//! The ruler's HTTP API: Mimir's rules config API (YAML in and out) and Prometheus'
//! `GET /api/v1/rules` and `GET /api/v1/alerts` (in a cluster, every ruler's: [`fanout`]).
//!
//! Every request is scoped to the caller's tenant (`X-Scope-OrgID`, or basic auth), and the
//! store is only ever addressed with that tenant, so no call can list, change or delete
//! another tenant's groups. An upload is checked whole before anything is stored — YAML,
//! names, durations, PromQL (parsed on the engine's query threads), and the tenant's
//! `ruler_max_rule_groups_per_tenant` / `ruler_max_rules_per_rule_group` — and a refused one
//! gets a 400 naming the rule and the problem while what was stored stays as it was. After a
//! change is stored the tenant's running groups are synced at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use norn_limits::Overrides;
use norn_model::{ErrorKind, TenantId};
use norn_promql::Engine;
use norn_server::params::Params;
use norn_server::{HttpError, RequestGuard, TenantResolver};
use serde_json::{Value as Json, json};

use crate::alerting::Alert;
use crate::fanout::{self, Endpoint, Fanout};
use crate::group::{GroupId, GroupStatus, RuleStatus};
use crate::manager::Manager;
use crate::rulefmt::{RuleGroup, check_group};
use crate::store::StoreError;

/// Largest rule group upload accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 512 << 10;

/// What the handlers share.
pub struct Api {
    pub manager: Arc<Manager>,
    pub tenants: TenantResolver,
    pub overrides: Arc<Overrides>,
    pub engine: Engine,
    /// Asks the other rulers (a cluster).
    pub fanout: Fanout,
}

type S = State<Arc<Api>>;

/// The routes, body size bounded and the tenant known before a body is read.
pub fn routes(api: Arc<Api>) -> Router {
    let tenants = api.tenants;
    let config = Router::new()
        .route("/prometheus/config/v1/rules", get(list_all))
        .route(
            "/prometheus/config/v1/rules/{namespace}",
            get(get_namespace).post(post_group).delete(delete_namespace),
        )
        .route(
            "/prometheus/config/v1/rules/{namespace}/{group}",
            get(get_group).delete(delete_group),
        );
    let prom = Router::new()
        .route("/prometheus/api/v1/rules", get(prometheus_rules))
        .route("/api/v1/rules", get(prometheus_rules))
        .route("/prometheus/api/v1/alerts", get(prometheus_alerts))
        .route("/api/v1/alerts", get(prometheus_alerts));
    RequestGuard::new(MAX_BODY_BYTES)
        .tenant_before_body(tenants)
        .json_errors()
        .apply(config.merge(prom))
        .with_state(api)
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> HttpError {
    HttpError::new(kind, msg).into_json()
}

fn store_err(e: StoreError) -> HttpError {
    err(e.kind(), e.to_string())
}

fn yaml(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/yaml")], body).into_response()
}

/// Mimir's answer to a change: 202 and an empty success envelope.
fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "success", "data": null, "errorType": "", "error": ""})),
    )
        .into_response()
}

impl Api {
    fn tenant(&self, headers: &HeaderMap) -> Result<TenantId, HttpError> {
        self.tenants.resolve(headers).map_err(HttpError::into_json)
    }

    /// The tenant's groups by namespace.
    async fn by_namespace(
        &self,
        tenant: &TenantId,
    ) -> Result<BTreeMap<String, Vec<RuleGroup>>, HttpError> {
        let mut out: BTreeMap<String, Vec<RuleGroup>> = BTreeMap::new();
        for g in self
            .manager
            .store()
            .groups(tenant.as_str())
            .await
            .map_err(store_err)?
        {
            out.entry(g.namespace).or_default().push(g.group);
        }
        Ok(out)
    }

    /// The other rulers' answers (their `data` lists) to the same request, all of which
    /// must answer; `None` when this ruler answers alone (one process, or asked by another
    /// ruler).
    async fn cluster_ask(
        &self,
        endpoint: Endpoint,
        query: Option<&str>,
        tenant: &TenantId,
        headers: &HeaderMap,
    ) -> Result<Option<Vec<Vec<Json>>>, HttpError> {
        if fanout::is_local_only(headers) {
            return Ok(None);
        }
        let Some(peers) = fanout::peers(self.manager.ownership(), norn_model::now_ms()) else {
            return Ok(None);
        };
        self.fanout
            .ask_all(endpoint, &peers, query, tenant, headers)
            .await
            .map(Some)
            .map_err(|e| err(e.kind(), e.to_string()))
    }

    /// Applies a stored change to the running groups now; a failure leaves it to the next
    /// poll.
    async fn resync(&self, tenant: &TenantId) {
        if let Err(e) = self.manager.sync_tenant(tenant).await {
            tracing::warn!(tenant = %tenant, error = %e, "applying a rule change failed; the next poll retries");
        }
    }
}

fn render(groups: &BTreeMap<String, Vec<RuleGroup>>) -> String {
    serde_yaml::to_string(groups).unwrap_or_default()
}

async fn list_all(State(api): S, headers: HeaderMap) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match api.by_namespace(&tenant).await {
        Ok(g) if g.is_empty() => err(ErrorKind::NotFound, "no rule groups found").into_response(),
        Ok(g) => yaml(StatusCode::OK, render(&g)),
        Err(e) => e.into_response(),
    }
}

async fn get_namespace(State(api): S, headers: HeaderMap, Path(ns): Path<String>) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match api.by_namespace(&tenant).await {
        Ok(mut g) => match g.remove(&ns) {
            Some(groups) => yaml(StatusCode::OK, render(&BTreeMap::from([(ns, groups)]))),
            None => err(ErrorKind::NotFound, "no rule groups found").into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn get_group(
    State(api): S,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match api.by_namespace(&tenant).await {
        Ok(mut g) => match g
            .remove(&ns)
            .and_then(|gs| gs.into_iter().find(|g| g.name == name))
        {
            Some(group) => yaml(StatusCode::OK, group.to_yaml()),
            None => err(ErrorKind::NotFound, "group does not exist").into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn post_group(
    State(api): S,
    headers: HeaderMap,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let group = match validate_upload(&api, &tenant, &ns, &body).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = api.manager.store().put(tenant.as_str(), &ns, &group).await {
        return store_err(e).into_response();
    }
    tracing::info!(tenant = %tenant, namespace = %ns, group = %group.name, "rule group stored");
    api.resync(&tenant).await;
    accepted()
}

/// Every check an upload must pass, before anything is stored.
async fn validate_upload(
    api: &Api,
    tenant: &TenantId,
    ns: &str,
    body: &[u8],
) -> Result<RuleGroup, HttpError> {
    let bad = |m: String| err(ErrorKind::BadData, m);
    if ns.is_empty() {
        return Err(bad("namespace must not be empty".into()));
    }
    let text =
        std::str::from_utf8(body).map_err(|_| bad("the rule group is not valid UTF-8".into()))?;
    let group = RuleGroup::from_yaml(text).map_err(bad)?;
    let limits = api.overrides.for_tenant(tenant.as_str());
    let mut problems = check_group(&group, limits.ruler_max_rules_per_rule_group);
    for (i, rule) in group.rules.iter().enumerate() {
        if rule.expr.trim().is_empty() {
            continue;
        }
        if let Err(e) = api.engine.format_query(&rule.expr).await {
            problems.push(format!(
                "group {:?}, {}: could not parse expression: {e}",
                group.name,
                rule.describe(i)
            ));
        }
    }
    if !problems.is_empty() {
        return Err(bad(problems.join("; ")));
    }
    let max_groups = limits.ruler_max_rule_groups_per_tenant;
    if max_groups > 0 {
        let existing = api
            .manager
            .store()
            .groups(tenant.as_str())
            .await
            .map_err(store_err)?;
        let others = existing
            .iter()
            .filter(|g| !(g.namespace == ns && g.group.name == group.name))
            .count();
        if others + 1 > max_groups {
            return Err(bad(format!(
                "group {:?}: the tenant would have {} rule groups, more than the limit of {max_groups} (ruler_max_rule_groups_per_tenant)",
                group.name,
                others + 1
            )));
        }
    }
    Ok(group)
}

async fn delete_namespace(State(api): S, headers: HeaderMap, Path(ns): Path<String>) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match api
        .manager
        .store()
        .delete_namespace(tenant.as_str(), &ns)
        .await
    {
        Ok(0) => err(ErrorKind::NotFound, "namespace does not exist").into_response(),
        Ok(_) => {
            api.resync(&tenant).await;
            accepted()
        }
        Err(e) => store_err(e).into_response(),
    }
}

async fn delete_group(
    State(api): S,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match api
        .manager
        .store()
        .delete_group(tenant.as_str(), &ns, &name)
        .await
    {
        Ok(false) => err(ErrorKind::NotFound, "group does not exist").into_response(),
        Ok(true) => {
            api.resync(&tenant).await;
            accepted()
        }
        Err(e) => store_err(e).into_response(),
    }
}

/// Prometheus' time format for `lastEvaluation`; never evaluated is Go's zero time.
fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

fn dur_secs(s: &Option<String>) -> f64 {
    s.as_deref()
        .and_then(|s| norn_model::parse_duration(s).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The filters of `/api/v1/rules`.
struct Filter {
    alerting: Option<bool>,
    names: BTreeSet<String>,
    groups: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl Filter {
    fn parse(p: &Params) -> Result<Filter, String> {
        let alerting = match p.get("type") {
            None | Some("") => None,
            Some("alert") => Some(true),
            Some("record") => Some(false),
            Some(other) => {
                return Err(format!(
                    "invalid query parameter type {other:?}: use alert or record"
                ));
            }
        };
        let set = |k: &str| p.all(k).iter().cloned().collect::<BTreeSet<String>>();
        Ok(Filter {
            alerting,
            names: set("rule_name[]"),
            groups: set("rule_group[]"),
            files: set("file[]"),
        })
    }

    /// Rule filters drop groups left without rules (Prometheus' behaviour).
    fn filters_rules(&self) -> bool {
        self.alerting.is_some() || !self.names.is_empty()
    }
}

async fn prometheus_rules(State(api): S, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let filter = match Filter::parse(&Params::parse(q.as_deref(), b"")) {
        Ok(f) => f,
        Err(m) => return err(ErrorKind::BadData, m).into_response(),
    };
    let remote = api.cluster_ask(Endpoint::Rules, q.as_deref(), &tenant, &headers);
    let (local, remote) = futures::join!(local_rules(&api, &tenant, &filter), remote);
    let groups = match (local, remote) {
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
        (Ok(local), Ok(None)) => local,
        (Ok(local), Ok(Some(others))) => fanout::merge_groups(std::iter::once(local).chain(others)),
    };
    axum::Json(json!({"status": "success", "data": {"groups": groups}})).into_response()
}

/// This ruler's answer to `/api/v1/rules`: every stored group of the tenant that passes the
/// filter, with the evaluation state of the groups it runs (`unknown` for the others).
async fn local_rules(
    api: &Api,
    tenant: &TenantId,
    filter: &Filter,
) -> Result<Vec<Json>, HttpError> {
    let stored = api
        .manager
        .store()
        .groups(tenant.as_str())
        .await
        .map_err(store_err)?;
    let mut groups = Vec::new();
    for g in stored {
        if (!filter.groups.is_empty() && !filter.groups.contains(&g.group.name))
            || (!filter.files.is_empty() && !filter.files.contains(&g.namespace))
        {
            continue;
        }
        let id = GroupId {
            tenant: tenant.clone(),
            namespace: g.namespace.clone(),
            name: g.group.name.clone(),
        };
        let status = api.manager.status(&id).unwrap_or_default();
        let timing = g.group.timing(api.manager.default_interval());
        let mut rules = Vec::new();
        for (i, r) in g.group.rules.iter().enumerate() {
            if filter.alerting.is_some_and(|a| a != r.is_alerting())
                || (!filter.names.is_empty() && !filter.names.contains(r.name()))
            {
                continue;
            }
            rules.push(rule_json(r, status.rules.get(i)));
        }
        if rules.is_empty() && filter.filters_rules() {
            continue;
        }
        groups.push(group_json(&g.namespace, &g.group, &status, timing, rules));
    }
    Ok(groups)
}

/// Prometheus' `/api/v1/alerts`: the tenant's active (pending and firing) alerts, ordered by
/// group and rule; in a cluster those of every ruler, this one's first, then each other's.
async fn prometheus_alerts(State(api): S, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let tenant = match api.tenant(&headers) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let alerts = match api
        .cluster_ask(Endpoint::Alerts, q.as_deref(), &tenant, &headers)
        .await
    {
        Err(e) => return e.into_response(),
        Ok(None) => local_alerts(&api, &tenant),
        Ok(Some(others)) => {
            fanout::merge_alerts(std::iter::once(local_alerts(&api, &tenant)).chain(others))
        }
    };
    axum::Json(json!({"status": "success", "data": {"alerts": alerts}})).into_response()
}

/// The tenant's active alerts on this ruler.
fn local_alerts(api: &Api, tenant: &TenantId) -> Vec<Json> {
    api.manager
        .tenant_statuses(tenant)
        .iter()
        .flat_map(|(_, st)| {
            st.rules
                .iter()
                .flat_map(|r| r.alerts.iter().map(alert_json))
        })
        .collect()
}

fn labels_json(l: &norn_model::Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|l| (l.name.clone(), Json::String(l.value.clone())))
            .collect(),
    )
}

/// One alert as Prometheus' API shows it.
fn alert_json(a: &Alert) -> Json {
    json!({
        "labels": labels_json(&a.labels),
        "annotations": labels_json(&a.annotations),
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at_ms),
        "value": crate::template::format_value(a.value),
    })
}

fn group_json(
    file: &str,
    g: &RuleGroup,
    st: &GroupStatus,
    timing: crate::rulefmt::GroupTiming,
    rules: Vec<Json>,
) -> Json {
    json!({
        "name": g.name,
        "file": file,
        "rules": rules,
        "interval": timing.interval.as_secs_f64(),
        "limit": g.limit,
        "queryOffset": timing.query_offset.as_secs_f64(),
        "evaluationTime": st.evaluation_time.as_secs_f64(),
        "lastEvaluation": rfc3339(st.last_evaluation_ms),
    })
}

fn rule_json(r: &crate::rulefmt::Rule, st: Option<&RuleStatus>) -> Json {
    let unknown = RuleStatus {
        health: "unknown",
        ..RuleStatus::default()
    };
    let st = st.unwrap_or(&unknown);
    let mut v = json!({
        "name": r.name(),
        "query": r.expr,
        "labels": r.labels,
        "health": st.health,
        "evaluationTime": st.evaluation_time.as_secs_f64(),
        "lastEvaluation": rfc3339(st.last_evaluation_ms),
        "type": if r.is_alerting() { "alerting" } else { "recording" },
    });
    let o = v.as_object_mut().expect("an object");
    if !st.last_error.is_empty() {
        o.insert("lastError".into(), json!(st.last_error));
    }
    if r.is_alerting() {
        o.insert("state".into(), json!(st.state.as_str()));
        o.insert("duration".into(), json!(dur_secs(&r.for_)));
        o.insert("keepFiringFor".into(), json!(dur_secs(&r.keep_firing_for)));
        o.insert("annotations".into(), json!(r.annotations));
        let alerts: Vec<Json> = st.alerts.iter().map(alert_json).collect();
        o.insert("alerts".into(), json!(alerts));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_render_as_prometheus_does() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn alerts_render_as_prometheus_does() {
        let a = Alert {
            labels: norn_model::Labels::from_pairs([("alertname", "A"), ("job", "x")]),
            annotations: norn_model::Labels::from_pairs([("summary", "s")]),
            state: crate::alerting::AlertState::Pending,
            value: 1234.5,
            active_at_ms: 1_700_000_000_123,
            fired_at_ms: None,
            resolved_at_ms: None,
            last_sent_at_ms: None,
            valid_until_ms: None,
            keep_firing_since_ms: None,
        };
        assert_eq!(
            alert_json(&a),
            json!({
                "labels": {"alertname": "A", "job": "x"},
                "annotations": {"summary": "s"},
                "state": "pending",
                "activeAt": "2023-11-14T22:13:20.123Z",
                "value": "1.2345e+03",
            })
        );
        for (v, want) in [
            (1.0, "1e+00"),
            (0.5, "5e-01"),
            (0.0, "0e+00"),
            (-2.25e-7, "-2.25e-07"),
            // A tie between two shortest digit strings: Go takes the even one.
            (581_340_081_208_420.0 + 0.25, "5.813400812084202e+14"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(crate::template::format_value(v), want);
        }
    }

    #[test]
    fn filters_parse() {
        let p = Params::parse(
            Some("type=record&rule_name[]=a&rule_name[]=b&file[]=ns"),
            b"",
        );
        let f = Filter::parse(&p).unwrap();
        assert_eq!(f.alerting, Some(false));
        assert_eq!(f.names.len(), 2);
        assert!(f.filters_rules());
        assert!(Filter::parse(&Params::parse(Some("type=banana"), b"")).is_err());
    }
}
