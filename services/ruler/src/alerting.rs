//! The state of one alerting rule across evaluations: Prometheus 2.42's `AlertingRule`
//! (`rules/alerting.go`) and its `RestoreForState` (`rules/manager.go`).
//!
//! * **Alerts.** Each output series of the rule's expression is one alert, identified by its
//!   labels: the series' labels without `__name__`, the rule's `labels` (templates, expanded
//!   per series) and `alertname`. Two series that end up with one label set fail the rule
//!   (the state is left as it was), as in Prometheus.
//! * **States.** A new alert is pending from the evaluation that first saw it; it fires at the
//!   first evaluation at least `for` later (`for: 0` fires at once). A pending alert that
//!   disappears is forgotten; a firing one resolves, unless `keep_firing_for` holds it firing
//!   that long after its series went. A resolved alert is kept 15 minutes so Alertmanager
//!   hears that it resolved even if a send is lost; one that comes back meanwhile starts over
//!   as pending. More active alerts than the group's `limit` drop all of the rule's alerts
//!   and fail the rule.
//! * **Sending** (`needsSending`): pending alerts are never sent; a firing alert is sent every
//!   `resend_delay`, a resolved one once more at once. Each send says how long the alert is
//!   valid (`4 × max(resend_delay, interval)`), so Alertmanager resolves it by itself if the
//!   ruler dies.
//! * **Restart** ([`AlertRule::restore`]): the `ALERTS_FOR_STATE` series hold each active
//!   alert's `ActiveAt`; a ruler that takes a group over reads them back so a pending alert
//!   does not start its `for` again from zero, without firing sooner than the grace period.
//!   Until then the rule writes no `ALERTS` series (they would claim a wrong `ActiveAt`).
//!
//! Evaluation itself (querying, writing, handing alerts to the sink) is [`crate::group`]'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use norn_model::{Labels, METRIC_NAME, TenantId, is_stale_nan};
use norn_promql::Value;

use crate::outbound::OutgoingAlert;
use crate::rule_query::RuleQuerier;
use crate::rulefmt::Rule;
use crate::template::{AlertData, Template};

/// Name of the series of active alerts.
pub const ALERTS: &str = "ALERTS";
/// Name of the series holding each active alert's `ActiveAt` (Unix seconds).
pub const ALERTS_FOR_STATE: &str = "ALERTS_FOR_STATE";
/// How long a resolved alert is kept (and re-sent) before it is forgotten.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// An alert's state; ordered so the highest is a rule's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertState {
    #[default]
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of a rule. Times are Unix ms; `None` is Go's zero time (never).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub state: AlertState,
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub last_sent_at_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    /// When its series went while `keep_firing_for` holds it firing.
    pub keep_firing_since_ms: Option<i64>,
}

impl Alert {
    /// Prometheus' `needsSending`.
    fn needs_sending(&self, ts: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        // Resolved since it was last sent: Alertmanager must hear it at once.
        if let Some(r) = self.resolved_at_ms
            && self.last_sent_at_ms.is_none_or(|s| r > s)
        {
            return true;
        }
        self.last_sent_at_ms
            .is_none_or(|s| s.saturating_add(resend_delay_ms) < ts)
    }
}

/// An output series of the rule at one evaluation, labels and annotations expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub labels: Labels,
    pub annotations: Labels,
    pub value: f64,
}

/// What templates are expanded with besides the series.
#[derive(Clone)]
pub struct ExpandEnv {
    /// Where the `query` function's queries run, for `tenant`.
    pub querier: Arc<dyn RuleQuerier>,
    pub tenant: TenantId,
    /// The query time of the evaluation (`query` in templates runs at it).
    pub t_ms: i64,
    pub external_labels: BTreeMap<String, String>,
    pub external_url: String,
}

/// What the `query` template function gets back: `(labels, value)` per sample.
type QueryAnswer = Result<Vec<(BTreeMap<String, String>, f64)>, String>;

/// Parsed templates of a rule's labels and annotations.
#[derive(Debug, Clone)]
struct Templates {
    labels: Vec<(String, Template)>,
    annotations: Vec<(String, Template)>,
}

impl Templates {
    fn uses_query(&self) -> bool {
        self.labels
            .iter()
            .chain(&self.annotations)
            .any(|(_, t)| t.uses_query())
    }

    /// Expands every template for each series. `query` answers the `query` function.
    fn expand_all(
        &self,
        alertname: &str,
        series: Vec<(Labels, f64)>,
        env: &ExpandEnv,
        query: &mut crate::template::QueryFn<'_>,
    ) -> Vec<Candidate> {
        series
            .into_iter()
            .map(|(metric, value)| {
                // Prometheus hands templates the series' labels as they are, `__name__`
                // included when the expression kept it.
                let map: BTreeMap<String, String> = metric
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                let data = AlertData {
                    labels: &map,
                    external_labels: &env.external_labels,
                    external_url: &env.external_url,
                    value,
                };
                let mut labels = metric.without_metric_name();
                for (k, t) in &self.labels {
                    labels.set(k, &t.expand(&data, query));
                }
                labels.set("alertname", alertname);
                let annotations = Labels::from_pairs(
                    self.annotations
                        .iter()
                        .map(|(k, t)| (k.clone(), t.expand(&data, query))),
                );
                Candidate {
                    labels,
                    annotations,
                    value,
                }
            })
            .collect()
    }
}

/// One alerting rule's alerts and settings.
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub name: String,
    pub expr: String,
    pub hold_ms: i64,
    pub keep_firing_for_ms: i64,
    templates: Result<Templates, String>,
    active: BTreeMap<Labels, Alert>,
    /// False until the `for` state was restored: no `ALERTS` series are written before.
    pub restored: bool,
    /// The expression as Prometheus prints it (`up==0` → `up == 0`), for the generator
    /// URL; the rule's text until [`Self::set_canonical_expr`] was called.
    canonical_expr: Option<String>,
}

fn dur_ms(s: &Option<String>) -> i64 {
    s.as_deref()
        .and_then(|s| norn_model::parse_duration(s).ok())
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

impl AlertRule {
    /// The state of `rule` (an alerting rule), no alerts yet.
    pub fn new(rule: &Rule, restored: bool) -> AlertRule {
        let name = rule.name().to_string();
        let parse = |m: &BTreeMap<String, String>| -> Result<Vec<(String, Template)>, String> {
            m.iter()
                .map(|(k, v)| Ok((k.clone(), Template::parse(&name, v)?)))
                .collect()
        };
        let templates = parse(&rule.labels).and_then(|labels| {
            Ok(Templates {
                labels,
                annotations: parse(&rule.annotations)?,
            })
        });
        AlertRule {
            expr: rule.expr.clone(),
            hold_ms: dur_ms(&rule.for_),
            keep_firing_for_ms: dur_ms(&rule.keep_firing_for),
            templates,
            active: BTreeMap::new(),
            restored,
            canonical_expr: None,
            name,
        }
    }

    /// Whether the printed expression is still wanted.
    pub fn needs_canonical_expr(&self) -> bool {
        self.canonical_expr.is_none()
    }

    pub fn set_canonical_expr(&mut self, expr: String) {
        self.canonical_expr = Some(expr);
    }

    /// Takes over the alerts (and restore progress) of this rule in the previous version of
    /// the group: Prometheus' `CopyState`.
    pub fn take_alerts_of(&mut self, old: AlertRule) {
        self.active = old.active;
        self.restored = self.restored || old.restored;
    }

    /// Expands the rule's templates for each output series of its expression. Templates
    /// that call `query` run on a blocking thread, where they can wait for the rule querier
    /// (the engine or the query-frontend).
    pub async fn candidates(
        &self,
        series: Vec<(Labels, f64)>,
        env: &ExpandEnv,
    ) -> Result<Vec<Candidate>, String> {
        let templates = self.templates.clone()?;
        if series.is_empty() {
            return Ok(Vec::new());
        }
        if !templates.uses_query() {
            let mut no_query =
                |_: &str| -> QueryAnswer { Err("query is not available".to_string()) };
            return Ok(templates.expand_all(&self.name, series, env, &mut no_query));
        }
        let env = env.clone();
        let name = self.name.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut query = |q: &str| -> QueryAnswer {
                let value = handle.block_on(env.querier.instant(&env.tenant, q, env.t_ms))?;
                let to_map = |l: &Labels| {
                    l.iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect::<BTreeMap<_, _>>()
                };
                match value {
                    Value::Vector(v) => Ok(v.iter().map(|s| (to_map(&s.labels), s.v)).collect()),
                    Value::Scalar { v, .. } => Ok(vec![(BTreeMap::new(), v)]),
                    _ => Err("query result is not a vector or scalar".to_string()),
                }
            };
            templates.expand_all(&name, series, &env, &mut query)
        })
        .await
        .map_err(|e| format!("expanding alert templates: {e}"))
    }

    /// One evaluation at `ts` given the expression's expanded output: Prometheus'
    /// `AlertingRule.Eval` after the query.
    pub fn apply(&mut self, ts: i64, found: Vec<Candidate>, limit: usize) -> Result<(), String> {
        let mut current = HashSet::with_capacity(found.len());
        for c in &found {
            if !current.insert(c.labels.clone()) {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .to_string(),
                );
            }
        }
        for c in found {
            match self.active.get_mut(&c.labels) {
                Some(a) if a.state != AlertState::Inactive => {
                    a.value = c.value;
                    a.annotations = c.annotations;
                }
                _ => {
                    let alert = Alert {
                        labels: c.labels.clone(),
                        annotations: c.annotations,
                        state: AlertState::Pending,
                        value: c.value,
                        active_at_ms: ts,
                        fired_at_ms: None,
                        resolved_at_ms: None,
                        last_sent_at_ms: None,
                        valid_until_ms: None,
                        keep_firing_since_ms: None,
                    };
                    self.active.insert(c.labels, alert);
                }
            }
        }
        let mut active = 0usize;
        let mut forget = Vec::new();
        for (key, a) in self.active.iter_mut() {
            if current.contains(key) {
                a.keep_firing_since_ms = None;
            } else {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && self.keep_firing_for_ms > 0 {
                    let since = *a.keep_firing_since_ms.get_or_insert(ts);
                    keep_firing = ts - since < self.keep_firing_for_ms;
                }
                if a.state == AlertState::Pending
                    || a.resolved_at_ms
                        .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
                {
                    forget.push(key.clone());
                }
                if keep_firing {
                    // Still firing: counted and written below like a present alert.
                } else {
                    if a.state != AlertState::Inactive {
                        a.state = AlertState::Inactive;
                        a.resolved_at_ms = Some(ts);
                    }
                    continue;
                }
            }
            active += 1;
            if a.state == AlertState::Pending && ts - a.active_at_ms >= self.hold_ms {
                a.state = AlertState::Firing;
                a.fired_at_ms = Some(ts);
            }
        }
        for k in forget {
            self.active.remove(&k);
        }
        if limit > 0 && active > limit {
            self.active.clear();
            return Err(format!("exceeded limit of {limit} with {active} alerts"));
        }
        Ok(())
    }

    /// The `ALERTS` and `ALERTS_FOR_STATE` samples of this evaluation (none before the `for`
    /// state is restored).
    pub fn series(&self) -> Vec<(Labels, f64)> {
        if !self.restored {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(2 * self.active.len());
        for a in self.active.values() {
            if a.state == AlertState::Inactive {
                continue;
            }
            let mut l = a.labels.clone();
            l.set(METRIC_NAME, ALERTS);
            l.set("alertstate", a.state.as_str());
            out.push((l, 1.0));
            let mut f = a.labels.clone();
            f.set(METRIC_NAME, ALERTS_FOR_STATE);
            // Go's `ActiveAt.Unix()`: whole seconds, rounded down.
            out.push((f, a.active_at_ms.div_euclid(1000) as f64));
        }
        out
    }

    /// Prometheus' `sendAlerts`: the alerts to send after the evaluation at `ts`, marked sent.
    pub fn to_send(
        &mut self,
        ts: i64,
        resend_delay_ms: i64,
        interval_ms: i64,
        external_url: &str,
    ) -> Vec<OutgoingAlert> {
        let mut out = Vec::new();
        let expr = self.canonical_expr.as_deref().unwrap_or(self.expr.trim());
        let generator_url = generator_url(external_url, expr);
        for a in self.active.values_mut() {
            if !a.needs_sending(ts, resend_delay_ms) {
                continue;
            }
            a.last_sent_at_ms = Some(ts);
            // Valid for four sends, so two lost evaluations or sends do not resolve it.
            let valid_until = ts + 4 * resend_delay_ms.max(interval_ms);
            a.valid_until_ms = Some(valid_until);
            out.push(OutgoingAlert {
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                starts_at_ms: a.fired_at_ms.unwrap_or(a.active_at_ms),
                ends_at_ms: a.resolved_at_ms.unwrap_or(valid_until),
                generator_url: generator_url.clone(),
            });
        }
        out
    }

    /// Whether [`Self::restore`] has anything to do for this rule: rules whose `for` is
    /// shorter than the grace period just start over (Prometheus skips them too).
    pub fn needs_restore(&self, grace_ms: i64) -> bool {
        !self.restored && self.hold_ms >= grace_ms && self.hold_ms > 0
    }

    /// Prometheus' `RestoreForState` for this rule at `ts`: `last` maps an alert's labels to
    /// the last `(t, v)` of its `ALERTS_FOR_STATE` series within the outage tolerance.
    pub fn restore(&mut self, ts: i64, grace_ms: i64, last: &HashMap<Labels, (i64, f64)>) {
        if self.needs_restore(grace_ms) {
            for a in self.active.values_mut() {
                let Some(&(t, v)) = last.get(&a.labels) else {
                    continue;
                };
                if is_stale_nan(v) || !v.is_finite() {
                    continue;
                }
                // Go's time.Unix(t/1000, 0) and time.Unix(int64(v), 0): whole seconds.
                let down_at = (t / 1000) * 1000;
                let mut restored_active_at = (v as i64).saturating_mul(1000);
                let spent_pending = down_at - restored_active_at;
                let remaining = self.hold_ms - spent_pending;
                if remaining <= 0 {
                    // It was firing when the previous ruler stopped: the next evaluation
                    // fires it again if it is still there.
                } else if remaining < grace_ms {
                    // Fire no sooner than the grace period from now.
                    restored_active_at = ts + grace_ms - self.hold_ms;
                } else {
                    // The time the ruler was down does not count as pending.
                    restored_active_at += ts - down_at;
                }
                a.active_at_ms = restored_active_at;
            }
        }
        self.restored = true;
    }

    /// The highest state of the rule's alerts.
    pub fn state(&self) -> AlertState {
        self.active
            .values()
            .map(|a| a.state)
            .max()
            .unwrap_or_default()
    }

    /// Alerts not resolved (what the API lists), in label order.
    pub fn active_alerts(&self) -> Vec<Alert> {
        self.active
            .values()
            .filter(|a| a.resolved_at_ms.is_none())
            .cloned()
            .collect()
    }

    /// Every alert held, resolved ones included.
    pub fn all_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }
}

/// Prometheus' link to a rule's expression: `<external URL>/graph?g0.expr=…&g0.tab=1`.
pub fn generator_url(external_url: &str, expr: &str) -> String {
    format!(
        "{}/graph?g0.expr={}&g0.tab=1",
        external_url.trim_end_matches('/'),
        query_escape(expr)
    )
}

/// Go's `url.QueryEscape`: unreserved bytes as they are, space as `+`, the rest `%XX`.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[path = "alerting_tests.rs"]
mod tests;
