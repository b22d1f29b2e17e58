//! One rule group evaluating on its schedule, with Prometheus' semantics.
//!
//! * **When.** Evaluation times are aligned as Prometheus aligns them: a group's times are
//!   `k * interval + offset`, with `offset = hash(group) % interval` (the hash of the label set
//!   `{file=<namespace>, name=<group>}`, xxhash64 as Prometheus' `labels.Hash`), so groups
//!   spread over the interval instead of all firing at once, and a group keeps its phase across
//!   restarts and rulers. An evaluation that overruns skips the times it missed (counted as
//!   missed iterations) rather than queueing them.
//! * **What.** Rules run in order. Each queries at `t - query_offset` and writes its output at
//!   that time before the next rule runs, so a later rule sees an earlier one's result of the
//!   same evaluation through storage, as in Prometheus. A recording rule's output takes the
//!   rule's name as `__name__` and its `labels`; two output series with one label set, or more
//!   than the group's `limit`, fail the rule and write nothing.
//! * **Staleness.** A series a rule wrote at the previous evaluation and not at this one gets
//!   Prometheus' stale marker at this evaluation's time, so queries stop returning it at once
//!   instead of after the 5m lookback. A rule that fails writes nothing (its series are not
//!   marked stale: the failure may be passing). When a group is removed its last series are
//!   all marked stale; when it is changed, the series of rules that are gone are.
//! * **Alerting rules** run in the same order, their state kept by [`crate::alerting`]:
//!   their `ALERTS` / `ALERTS_FOR_STATE` series are written like a recording rule's output
//!   (stale markers included), and the alerts due to be sent are handed to the
//!   [`AlertSink`] in one batch per group evaluation, after every rule ran. A runner that
//!   starts a group afresh restores the alerts' `for` state from `ALERTS_FOR_STATE` after its
//!   second evaluation, as Prometheus does (the first one may see data not yet complete),
//!   unless told not to ([`GroupRunner::skip_restore`]: the manager's choice); a changed
//!   group keeps its alerts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_model::{Labels, METRIC_NAME, Pusher, Sample, TenantId, WriteBatch, stale_nan};
use norn_promql::{Engine, Value};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::alerting::{ALERTS_FOR_STATE, Alert, AlertRule, AlertState, ExpandEnv};
use crate::metrics::{GroupMetrics, RulerMetrics};
use crate::outbound::{AlertSink, OutgoingAlert};
use crate::rule_query::RuleQuerier;
use crate::rulefmt::{GroupTiming, Rule, RuleGroup};

/// Identity of a group: tenant, namespace, group name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId {
    pub tenant: TenantId,
    pub namespace: String,
    pub name: String,
}

/// Prometheus' `Group.hash()`: `labels.Hash` of `{file=<namespace>, name=<group>}`.
pub fn group_hash(namespace: &str, name: &str) -> u64 {
    let mut b = Vec::with_capacity(namespace.len() + name.len() + 12);
    for (k, v) in [("file", namespace), ("name", name)] {
        b.extend_from_slice(k.as_bytes());
        b.push(0xff);
        b.extend_from_slice(v.as_bytes());
        b.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&b, 0)
}

/// Prometheus' `Group.EvalTimestamp`: the latest aligned evaluation time at or before `now_ns`.
pub fn eval_timestamp_ns(now_ns: i64, interval_ns: i64, hash: u64) -> i64 {
    let offset = (hash % interval_ns as u64) as i64;
    let start = now_ns - offset;
    let base = start - start.rem_euclid(interval_ns);
    base + offset
}

/// After an evaluation at `last_ns`, woken at `now_ns`: the next evaluation time and how many
/// were missed (Prometheus' ticker arithmetic).
pub fn next_after(last_ns: i64, now_ns: i64, interval_ns: i64) -> (i64, u64) {
    let missed = ((now_ns - last_ns) / interval_ns - 1).max(0);
    (last_ns + (missed + 1) * interval_ns, missed as u64)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Health of one rule at its last evaluation, as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleStatus {
    /// `ok`, `err` or `unknown`.
    pub health: &'static str,
    pub last_error: String,
    /// Unix ms of the last evaluation (0 = never).
    pub last_evaluation_ms: i64,
    pub evaluation_time: Duration,
    /// Alerting rules: the highest state of their alerts.
    pub state: AlertState,
    /// Alerting rules: the alerts not resolved.
    pub alerts: Vec<Alert>,
}

/// The group's state as the API shows it.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    pub rules: Vec<RuleStatus>,
    pub last_evaluation_ms: i64,
    pub evaluation_time: Duration,
}

/// What a group evaluation uses.
#[derive(Clone)]
pub struct EvalDeps {
    /// Prints expressions as Prometheus does (alerts' generator URL); queries do not run
    /// here but through `querier`.
    pub engine: Engine,
    /// Where every query of the rules runs (this process or a query-frontend).
    pub querier: Arc<dyn RuleQuerier>,
    pub pusher: Arc<dyn Pusher>,
    pub metrics: Arc<RulerMetrics>,
    /// Where alerts to send go (`None`: evaluated and shown, not sent).
    pub alert_sink: Option<Arc<dyn AlertSink>>,
    /// How alerts are sent, restored and templated.
    pub alerting: AlertingOptions,
}

/// The ruler-wide alerting settings (`ruler.*` in the configuration).
#[derive(Debug, Clone)]
pub struct AlertingOptions {
    pub resend_delay: Duration,
    pub for_outage_tolerance: Duration,
    pub for_grace_period: Duration,
    pub external_url: String,
    /// `$externalLabels` of templates.
    pub external_labels: std::collections::BTreeMap<String, String>,
}

impl Default for AlertingOptions {
    fn default() -> Self {
        let c = crate::Config::default();
        Self {
            resend_delay: c.resend_delay,
            for_outage_tolerance: c.for_outage_tolerance,
            for_grace_period: c.for_grace_period,
            external_url: c.external_url,
            external_labels: Default::default(),
        }
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The series each rule wrote at the last evaluation: what the next one marks stale if gone.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Per rule, keyed like [`rule_key`].
    pub per_rule: Vec<(String, HashSet<Labels>)>,
    /// The alerting rules' state, keyed like [`alert_key`], handed to the next version of
    /// the group.
    pub alerts: Vec<(String, AlertRule)>,
}

impl Written {
    /// Every series written (to mark stale when the group goes).
    pub fn all(self) -> Vec<Labels> {
        self.per_rule.into_iter().flat_map(|(_, s)| s).collect()
    }
}

/// Rules are matched across a group change by name, expression and labels, as Prometheus
/// matches them when it copies state into an updated group.
fn rule_key(r: &Rule) -> String {
    format!("{}\u{0}{}\u{0}{:?}", r.name(), r.expr, r.labels)
}

/// Prometheus' `CopyState` carries alerts over to a rule of the new group with the same
/// name and labels.
fn alert_key(r: &Rule) -> String {
    format!("{}\u{0}{:?}", r.name(), r.labels)
}

/// After which evaluation of a fresh runner the `for` state is restored (Prometheus waits
/// for a second evaluation: the first may run on data not all written yet).
const RESTORE_AFTER_EVALUATIONS: u64 = 2;

/// A group being evaluated.
pub struct GroupRunner {
    pub id: GroupId,
    pub group: RuleGroup,
    pub timing: GroupTiming,
    pub status: Arc<Mutex<GroupStatus>>,
    written: Vec<HashSet<Labels>>,
    /// Per rule: the alert state of alerting rules.
    alerts: Vec<Option<AlertRule>>,
    /// Series of the previous version of the group whose rules are gone: stale at the first
    /// evaluation.
    orphans: Vec<Labels>,
    /// Evaluations run by this runner.
    evaluations: u64,
    /// Alerts by state this runner counted in the `norn_ruler_alerts` gauge.
    counted: [i64; 2],
    deps: EvalDeps,
}

impl GroupRunner {
    /// A runner for `group`, taking over what the previous version of the group wrote.
    pub fn new(
        id: GroupId,
        group: RuleGroup,
        timing: GroupTiming,
        previous: Option<Written>,
        deps: EvalDeps,
    ) -> Self {
        let fresh = previous.is_none();
        let previous = previous.unwrap_or_default();
        let mut prev = previous.per_rule;
        let written = group
            .rules
            .iter()
            .map(|r| {
                let key = rule_key(r);
                match prev.iter().position(|(k, _)| *k == key) {
                    Some(i) => prev.swap_remove(i).1,
                    None => HashSet::new(),
                }
            })
            .collect();
        let orphans = prev.into_iter().flat_map(|(_, s)| s).collect();
        let mut prev_alerts = previous.alerts;
        let alerts = group
            .rules
            .iter()
            .map(|r| {
                r.is_alerting().then(|| {
                    // A rule new in a changed group is not restored: it had no alerts.
                    let mut a = AlertRule::new(r, !fresh);
                    let key = alert_key(r);
                    if let Some(i) = prev_alerts.iter().position(|(k, _)| *k == key) {
                        a.take_alerts_of(prev_alerts.swap_remove(i).1);
                    }
                    a
                })
            })
            .collect();
        let status = GroupStatus {
            rules: group
                .rules
                .iter()
                .map(|_| RuleStatus {
                    health: "unknown",
                    ..RuleStatus::default()
                })
                .collect(),
            ..GroupStatus::default()
        };
        Self {
            id,
            group,
            timing,
            status: Arc::new(Mutex::new(status)),
            written,
            alerts,
            orphans,
            evaluations: 0,
            counted: [0; 2],
            deps,
        }
    }

    /// Treats the `for` state as restored already: the group's alerts start from nothing
    /// and their `ALERTS` series are written from the first evaluation (as Prometheus does
    /// for groups added while it runs).
    pub fn skip_restore(&mut self) {
        for a in self.alerts.iter_mut().flatten() {
            a.restored = true;
        }
    }

    /// What this runner's rules wrote last.
    pub fn written(&self) -> Written {
        Written {
            per_rule: self
                .group
                .rules
                .iter()
                .map(rule_key)
                .zip(self.written.iter().cloned())
                .collect(),
            alerts: self
                .group
                .rules
                .iter()
                .zip(&self.alerts)
                .filter_map(|(r, a)| Some((alert_key(r), a.clone()?)))
                .collect(),
        }
    }

    /// Evaluates on schedule until `stop`; returns what it wrote last.
    pub async fn run(mut self, stop: CancellationToken) -> Written {
        let interval_ns = self.timing.interval.as_nanos().min(i64::MAX as u128) as i64;
        let hash = group_hash(&self.id.namespace, &self.id.name);
        let mut ts = eval_timestamp_ns(now_ns(), interval_ns, hash) + interval_ns;
        let tenant = self.id.tenant.as_str().to_string();
        let rule_group = GroupMetrics::label(&self.id.namespace, &self.id.name);
        let gm = &self.deps.metrics.group;
        gm.rules
            .with_label_values(&[&tenant, &rule_group])
            .set(self.group.rules.len() as i64);
        loop {
            let wait = Duration::from_nanos((ts - now_ns()).max(0) as u64);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            self.evaluate(ts / 1_000_000).await;
            let (next, missed) = next_after(ts, now_ns(), interval_ns);
            if missed > 0 {
                self.deps
                    .metrics
                    .iterations_missed
                    .with_label_values(&[&tenant])
                    .inc_by(missed);
                self.deps
                    .metrics
                    .group
                    .iterations_missed
                    .with_label_values(&[&tenant, &rule_group])
                    .inc_by(missed);
                tracing::warn!(tenant = %tenant, namespace = %self.id.namespace, group = %self.id.name, missed, "rule group evaluation overran its interval");
            }
            ts = next;
        }
        self.uncount_alerts();
        self.deps.metrics.group.remove(&tenant, &rule_group);
        self.written()
    }

    /// One evaluation of every rule at `ts_ms` (the aligned evaluation time).
    pub async fn evaluate(&mut self, ts_ms: i64) {
        let started = Instant::now();
        let tenant_id = self.id.tenant.clone();
        let tenant = tenant_id.as_str();
        let m = Arc::clone(&self.deps.metrics);
        m.iterations.with_label_values(&[tenant]).inc();
        let rule_group = GroupMetrics::label(&self.id.namespace, &self.id.name);
        let group_labels = [tenant, rule_group.as_str()];
        m.group.iterations.with_label_values(&group_labels).inc();
        let t = ts_ms - self.timing.query_offset.as_millis() as i64;
        let mut orphans = std::mem::take(&mut self.orphans);
        let mut to_send: Vec<OutgoingAlert> = Vec::new();
        for i in 0..self.group.rules.len() {
            let rule = self.group.rules[i].clone();
            let rule_started = Instant::now();
            m.evaluations.with_label_values(&[tenant]).inc();
            let result = if rule.is_alerting() {
                self.eval_alerting(i, &rule, ts_ms, t, &mut to_send).await
            } else {
                self.eval_recording(&rule, t).await
            };
            let outcome = match result {
                Ok(series) => {
                    let current: HashSet<Labels> = series.iter().map(|(l, _)| l.clone()).collect();
                    let mut stale: Vec<Labels> = self.written[i]
                        .iter()
                        .filter(|l| !current.contains(*l))
                        .cloned()
                        .collect();
                    // Retired series ride along with the first write; kept for the next
                    // write if this one fails.
                    stale.extend(orphans.iter().cloned());
                    match self.write(series, stale, t).await {
                        Ok(()) => {
                            self.written[i] = current;
                            orphans.clear();
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let mut st = self.status.lock();
            let rs = &mut st.rules[i];
            rs.last_evaluation_ms = ts_ms;
            rs.evaluation_time = rule_started.elapsed();
            if let Some(a) = &self.alerts[i] {
                rs.state = a.state();
                rs.alerts = a.active_alerts();
            }
            match outcome {
                Ok(()) => {
                    rs.health = "ok";
                    rs.last_error.clear();
                }
                Err(e) => {
                    m.evaluation_failures.with_label_values(&[tenant]).inc();
                    m.group
                        .evaluation_failures
                        .with_label_values(&group_labels)
                        .inc();
                    tracing::debug!(tenant, namespace = %self.id.namespace, group = %self.id.name, rule = %rule.name(), error = %e, "rule evaluation failed");
                    rs.health = "err";
                    rs.last_error = e;
                }
            }
        }
        if !to_send.is_empty()
            && let Some(sink) = &self.deps.alert_sink
        {
            m.alerts_sent
                .with_label_values(&[tenant])
                .inc_by(to_send.len() as u64);
            sink.send(&tenant_id, to_send);
        }
        self.count_alerts();
        self.evaluations += 1;
        if self.evaluations == RESTORE_AFTER_EVALUATIONS {
            self.restore_for_state(ts_ms).await;
        }
        if !orphans.is_empty() {
            // A group with no recording rule left (or none that wrote) still retires the old
            // series; if that fails too, the next evaluation tries again.
            if let Err(e) = self.write(Vec::new(), orphans.clone(), t).await {
                tracing::warn!(tenant, group = %self.id.name, error = %e, "writing stale markers failed");
                self.orphans = orphans;
            }
        }
        let took = started.elapsed();
        m.group_duration
            .with_label_values(&[tenant])
            .observe(took.as_secs_f64());
        m.group
            .last_duration
            .with_label_values(&group_labels)
            .set(took.as_secs_f64());
        m.group
            .last_evaluation
            .with_label_values(&group_labels)
            .set(ts_ms as f64 / 1000.0);
        let mut st = self.status.lock();
        st.last_evaluation_ms = ts_ms;
        st.evaluation_time = took;
    }

    /// An alerting rule's evaluation at `ts_ms` (querying at `t`): its state updated, the
    /// alerts to send added to `to_send`; returns its `ALERTS` / `ALERTS_FOR_STATE` series.
    async fn eval_alerting(
        &mut self,
        i: usize,
        rule: &Rule,
        ts_ms: i64,
        t: i64,
        to_send: &mut Vec<OutgoingAlert>,
    ) -> Result<Vec<(Labels, f64)>, String> {
        let raw = self.query_rule(rule, t).await?;
        let opts = &self.deps.alerting;
        let env = ExpandEnv {
            querier: Arc::clone(&self.deps.querier),
            tenant: self.id.tenant.clone(),
            t_ms: t,
            external_labels: opts.external_labels.clone(),
            external_url: opts.external_url.clone(),
        };
        if self.alerts[i]
            .as_ref()
            .is_some_and(AlertRule::needs_canonical_expr)
        {
            // Prometheus links to the expression as it prints it (its `String()`, one line:
            // the engine's layout when that fits on one line, the rule's text otherwise).
            let printed = self
                .deps
                .engine
                .format_query(&rule.expr)
                .await
                .ok()
                .filter(|p| !p.contains('\n'))
                .unwrap_or_else(|| rule.expr.trim().to_string());
            if let Some(a) = self.alerts[i].as_mut() {
                a.set_canonical_expr(printed);
            }
        }
        let state = self.alerts[i].as_mut().expect("an alerting rule has state");
        let found = state.candidates(raw, &env).await?;
        state.apply(ts_ms, found, self.group.limit)?;
        // Sent whatever becomes of the write, as Prometheus does: Alertmanager must hear of
        // a firing alert even when storage is failing.
        to_send.extend(state.to_send(
            ts_ms,
            ms(opts.resend_delay),
            ms(self.timing.interval),
            &opts.external_url,
        ));
        Ok(state.series())
    }

    /// Prometheus' `RestoreForState` at `ts_ms`: each alerting rule's active alerts take
    /// back the `ActiveAt` the previous evaluator wrote in `ALERTS_FOR_STATE` within the
    /// outage tolerance. A read failure restores nothing (the alerts wait their whole `for`).
    async fn restore_for_state(&mut self, ts_ms: i64) {
        let opts = self.deps.alerting.clone();
        let grace = ms(opts.for_grace_period);
        let mint = ts_ms - ms(opts.for_outage_tolerance);
        for (rule, state) in self.group.rules.iter().zip(self.alerts.iter_mut()) {
            let Some(state) = state else { continue };
            let mut last = HashMap::new();
            if state.needs_restore(grace) {
                let mut matchers = vec![
                    norn_model::Matcher::equal(METRIC_NAME, ALERTS_FOR_STATE),
                    norn_model::Matcher::equal("alertname", rule.name()),
                ];
                // Templated labels differ per alert: only the static ones narrow the read.
                for (k, v) in &rule.labels {
                    if !v.contains("{{") {
                        matchers.push(norn_model::Matcher::equal(k, v));
                    }
                }
                match self
                    .deps
                    .querier
                    .select(&self.id.tenant, mint, ts_ms, &matchers)
                    .await
                {
                    Ok(series) => {
                        for s in series {
                            if let Some(x) = s.samples.last() {
                                last.insert(s.labels.without_metric_name(), (x.t, x.v));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(tenant = %self.id.tenant, group = %self.id.name, rule = %rule.name(), error = %e, "restoring the for state of alerts failed");
                    }
                }
            }
            state.restore(ts_ms, grace, &last);
        }
        let mut st = self.status.lock();
        for (rs, a) in st.rules.iter_mut().zip(&self.alerts) {
            if let Some(a) = a {
                rs.alerts = a.active_alerts();
            }
        }
    }

    /// Moves this runner's alerts in the `norn_ruler_alerts` gauge to their current states.
    fn count_alerts(&mut self) {
        let mut now = [0i64; 2];
        for a in self.alerts.iter().flatten().flat_map(|r| r.all_alerts()) {
            match a.state {
                AlertState::Pending => now[0] += 1,
                AlertState::Firing => now[1] += 1,
                AlertState::Inactive => {}
            }
        }
        self.move_counts(now);
    }

    /// Takes this runner's alerts out of the gauge (it stops).
    fn uncount_alerts(&mut self) {
        self.move_counts([0, 0]);
    }

    fn move_counts(&mut self, now: [i64; 2]) {
        let tenant = self.id.tenant.as_str();
        for (j, state) in ["pending", "firing"].into_iter().enumerate() {
            let d = now[j] - self.counted[j];
            if d != 0 {
                self.deps
                    .metrics
                    .alerts
                    .with_label_values(&[tenant, state])
                    .add(d);
            }
        }
        self.counted = now;
    }

    /// A rule's expression at `t` as `(labels, value)` per series (a scalar is one series
    /// with no labels, as Prometheus treats it).
    async fn query_rule(&self, rule: &Rule, t: i64) -> Result<Vec<(Labels, f64)>, String> {
        match self
            .deps
            .querier
            .instant(&self.id.tenant, &rule.expr, t)
            .await?
        {
            Value::Vector(v) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect()),
            Value::Scalar { v, .. } => Ok(vec![(Labels::empty(), v)]),
            _ => Err("rule result is not a vector or scalar".to_string()),
        }
    }

    /// A recording rule's output at `t`: `(labels, value)` per series.
    async fn eval_recording(&self, rule: &Rule, t: i64) -> Result<Vec<(Labels, f64)>, String> {
        let record = rule.record.as_deref().unwrap_or_default();
        let raw = self.query_rule(rule, t).await?;
        let limit = self.group.limit;
        if limit > 0 && raw.len() > limit {
            return Err(format!(
                "exceeded limit of {limit} with {} series",
                raw.len()
            ));
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut seen = HashSet::with_capacity(raw.len());
        for (labels, v) in raw {
            let mut l = labels;
            l.set(METRIC_NAME, record);
            for (k, val) in &rule.labels {
                l.set(k, val);
            }
            if !seen.insert(l.clone()) {
                return Err(
                    "vector contains metrics with the same labelset after applying rule labels"
                        .to_string(),
                );
            }
            out.push((l, v));
        }
        Ok(out)
    }

    /// Writes `series` and stale markers for `stale`, all at `t`.
    async fn write(
        &self,
        series: Vec<(Labels, f64)>,
        stale: Vec<Labels>,
        t: i64,
    ) -> Result<(), String> {
        let mut all: Vec<(Labels, Vec<Sample>)> = series
            .into_iter()
            .map(|(l, v)| (l, vec![Sample::new(t, v)]))
            .collect();
        all.extend(
            stale
                .into_iter()
                .map(|l| (l, vec![Sample::new(t, stale_nan())])),
        );
        if all.is_empty() {
            return Ok(());
        }
        write_series(&self.deps, &self.id.tenant, &all).await
    }
}

/// Pushes owned series for `tenant`, counting what was written and refused.
pub async fn write_series(
    deps: &EvalDeps,
    tenant: &TenantId,
    series: &[(Labels, Vec<Sample>)],
) -> Result<(), String> {
    let n: usize = series.iter().map(|(_, s)| s.len()).sum();
    let batch = WriteBatch::from_series(series);
    let out = deps
        .pusher
        .push(tenant, batch)
        .await
        .map_err(|e| format!("writing rule output: {e}"))?;
    let t = tenant.as_str();
    deps.metrics
        .samples_written
        .with_label_values(&[t])
        .inc_by(out.appended as u64);
    let rejected = out.rejected_samples();
    if rejected > 0 {
        deps.metrics
            .samples_rejected
            .with_label_values(&[t])
            .inc_by(rejected as u64);
        // Out-of-order and duplicate samples are expected when two rulers briefly both own a
        // group; Prometheus treats them as warnings too.
        tracing::debug!(tenant = t, rejected, first = ?out.first_error, "rule output partly refused");
    }
    debug_assert!(out.appended + rejected <= n);
    Ok(())
}

/// Stale markers at `t_ms` for every series in `labels` (a removed group's output).
pub async fn mark_stale(deps: &EvalDeps, tenant: &TenantId, labels: Vec<Labels>, t_ms: i64) {
    if labels.is_empty() {
        return;
    }
    let series: Vec<(Labels, Vec<Sample>)> = labels
        .into_iter()
        .map(|l| (l, vec![Sample::new(t_ms, stale_nan())]))
        .collect();
    if let Err(e) = write_series(deps, tenant, &series).await {
        tracing::warn!(tenant = %tenant, error = %e, "writing stale markers for a removed rule group failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn evaluation_times_are_aligned_by_group_hash() {
        let interval = 60 * S;
        let h = group_hash("ns", "g");
        let offset = (h % interval as u64) as i64;
        for now in [1_700_000_000 * S, 1_700_000_017 * S + 5, 1_700_000_059 * S] {
            let t = eval_timestamp_ns(now, interval, h);
            assert!(t <= now && now - t < interval, "{t} {now}");
            assert_eq!(
                (t - offset).rem_euclid(interval),
                0,
                "phase is the hash offset"
            );
        }
        // Different groups get different phases (with overwhelming likelihood).
        assert_ne!(
            group_hash("ns", "g") % interval as u64,
            group_hash("ns", "h") % interval as u64
        );
        // The hash is Prometheus' labels.Hash layout: name, 0xff, value, 0xff, sorted by name.
        let mut b = Vec::new();
        b.extend_from_slice(b"file\xffns\xffname\xffg\xff");
        assert_eq!(h, xxhash_rust::xxh64::xxh64(&b, 0));
    }

    #[test]
    fn overruns_skip_missed_times() {
        let i = 10 * S;
        assert_eq!(next_after(100 * S, 109 * S, i), (110 * S, 0));
        assert_eq!(next_after(100 * S, 110 * S + 1, i), (110 * S, 0));
        assert_eq!(next_after(100 * S, 125 * S, i), (120 * S, 1));
        assert_eq!(next_after(100 * S, 141 * S, i), (140 * S, 3));
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod eval_tests;

#[cfg(test)]
#[path = "group_alert_tests.rs"]
mod alert_tests;
