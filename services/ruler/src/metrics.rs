//! The ruler's metrics: Mimir's `cortex_prometheus_rule_*` analogues under `norn_ruler_`.
//!
//! Two levels: per tenant (every metric of [`RulerMetrics`]), and per rule group
//! ([`GroupMetrics`], labels `tenant` and `rule_group="<namespace>;<group>"` as Prometheus and
//! Mimir name it): evaluations, failures, missed iterations, last evaluation time and duration,
//! rules. The per-group series live only while this ruler evaluates the group (removed when it
//! stops, moves to another ruler or is deleted), so their number is bounded by the groups the
//! tenants' `ruler_max_rule_groups_per_tenant` allows.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub struct RulerMetrics {
    /// Rule evaluations (one per rule per group evaluation).
    pub evaluations: IntCounterVec,
    /// Rule evaluations that failed (query error, limit, write error).
    pub evaluation_failures: IntCounterVec,
    /// Group evaluations that were due and were run.
    pub iterations: IntCounterVec,
    /// Group evaluations skipped because the previous one ran past their time.
    pub iterations_missed: IntCounterVec,
    /// Time of one group evaluation.
    pub group_duration: HistogramVec,
    /// Oldest "last evaluation" among the tenant's groups this ruler runs: a group that stops
    /// evaluating holds it back.
    pub last_evaluation: GaugeVec,
    /// Groups this ruler evaluates.
    pub groups: IntGaugeVec,
    /// Samples written by recording rules (stale markers included).
    pub samples_written: IntCounterVec,
    /// Samples the write path refused.
    pub samples_rejected: IntCounterVec,
    /// Alerts by state (`pending`, `firing`) of the groups this ruler evaluates.
    pub alerts: IntGaugeVec,
    /// Alerts handed to the notifier (each send of an alert counts).
    pub alerts_sent: IntCounterVec,
    /// Queries rules made (expressions, template `query`, `for`-state restore), in this
    /// process or through the query-frontend.
    pub queries: IntCounterVec,
    /// Of those, the ones that failed (query error, frontend error or timeout).
    pub queries_failed: IntCounterVec,
    /// The notifier's (delivery of alerts to Alertmanager).
    pub notifications: NotifierMetrics,
    /// Per rule group.
    pub group: GroupMetrics,
}

/// Prometheus' per-group rule metrics (`prometheus_rule_group_*`), labelled `tenant` and
/// `rule_group`.
pub struct GroupMetrics {
    /// Group evaluations run.
    pub iterations: IntCounterVec,
    /// Group evaluations skipped because the previous one overran.
    pub iterations_missed: IntCounterVec,
    /// Rule evaluations of the group that failed.
    pub evaluation_failures: IntCounterVec,
    /// Unix seconds of the group's last evaluation.
    pub last_evaluation: GaugeVec,
    /// Seconds the group's last evaluation took.
    pub last_duration: GaugeVec,
    /// Rules in the group.
    pub rules: IntGaugeVec,
}

impl GroupMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        const LABELS: &[&str] = &["tenant", "rule_group"];
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), LABELS)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), LABELS)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let rules = IntGaugeVec::new(
            Opts::new("norn_ruler_rule_group_rules", "Rules in the rule group."),
            LABELS,
        )?;
        registry.register(Box::new(rules.clone()))?;
        Ok(Self {
            iterations: counter(
                "norn_ruler_rule_group_iterations_total",
                "Evaluations of the rule group.",
            )?,
            iterations_missed: counter(
                "norn_ruler_rule_group_iterations_missed_total",
                "Evaluations of the rule group skipped because the previous one overran.",
            )?,
            evaluation_failures: counter(
                "norn_ruler_rule_group_evaluation_failures_total",
                "Rule evaluations of the rule group that failed.",
            )?,
            last_evaluation: gauge(
                "norn_ruler_rule_group_last_evaluation_timestamp_seconds",
                "Unix time of the rule group's last evaluation.",
            )?,
            last_duration: gauge(
                "norn_ruler_rule_group_last_duration_seconds",
                "Time the rule group's last evaluation took.",
            )?,
            rules,
        })
    }

    /// Prometheus' `rule_group` label: `<file>;<group>` (the namespace is the file here).
    pub fn label(namespace: &str, group: &str) -> String {
        format!("{namespace};{group}")
    }

    /// Removes the group's series (it stopped on this ruler).
    pub fn remove(&self, tenant: &str, rule_group: &str) {
        let l = [tenant, rule_group];
        let _ = self.iterations.remove_label_values(&l);
        let _ = self.iterations_missed.remove_label_values(&l);
        let _ = self.evaluation_failures.remove_label_values(&l);
        let _ = self.last_evaluation.remove_label_values(&l);
        let _ = self.last_duration.remove_label_values(&l);
        let _ = self.rules.remove_label_values(&l);
    }
}

/// The notifier's metrics: Prometheus' `prometheus_notifications_*` as Mimir exposes them per
/// tenant (`cortex_prometheus_notifications_*{user}`), with `tenant` and, where Prometheus has
/// it, `alertmanager` (the URL posted to; bounded by the configuration). A tenant's series are
/// removed when its sender is torn down after being idle, so tenants that stopped alerting do
/// not keep series forever.
pub struct NotifierMetrics {
    /// Alerts posted, per Alertmanager, whether or not it took them (Prometheus counts so).
    pub sent: IntCounterVec,
    /// Alerts in posts that failed (error, timeout or non-2xx), per Alertmanager.
    pub errors: IntCounterVec,
    /// Alerts dropped: pushed out of a full queue, or in a batch no Alertmanager took.
    pub dropped: IntCounterVec,
    /// Alerts waiting in the tenant's queue.
    pub queue_length: IntGaugeVec,
    /// Capacity of the tenant's queue.
    pub queue_capacity: IntGaugeVec,
    /// Time of one post to one Alertmanager.
    pub latency: HistogramVec,
    /// Alertmanagers the tenant's alerts go to.
    pub alertmanagers_discovered: IntGaugeVec,
}

impl NotifierMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let per_am = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["tenant", "alertmanager"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["tenant"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let dropped = IntCounterVec::new(
            Opts::new(
                "norn_ruler_notifications_dropped_total",
                "Alerts dropped: pushed out of a full queue or in a batch no Alertmanager took.",
            ),
            &["tenant"],
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "norn_ruler_notification_latency_seconds",
                "Time of one post of alerts to one Alertmanager.",
            )
            .buckets(vec![0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0]),
            &["tenant", "alertmanager"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            sent: per_am(
                "norn_ruler_notifications_sent_total",
                "Alerts posted to an Alertmanager, whether or not it took them.",
            )?,
            errors: per_am(
                "norn_ruler_notifications_errors_total",
                "Alerts in posts to an Alertmanager that failed (error, timeout or non-2xx).",
            )?,
            dropped,
            queue_length: gauge(
                "norn_ruler_notifications_queue_length",
                "Alerts waiting in the tenant's notification queue.",
            )?,
            queue_capacity: gauge(
                "norn_ruler_notifications_queue_capacity",
                "Capacity of the tenant's notification queue.",
            )?,
            latency,
            alertmanagers_discovered: gauge(
                "norn_ruler_notifications_alertmanagers_discovered",
                "Alertmanagers the tenant's alerts are sent to.",
            )?,
        })
    }

    /// Forgets a tenant's series (its sender was torn down).
    pub fn remove_tenant(&self, tenant: &str, alertmanagers: &[String]) {
        // An error only says the series did not exist (e.g. no post was made): nothing to do.
        for am in alertmanagers {
            let _ = self.sent.remove_label_values(&[tenant, am]);
            let _ = self.errors.remove_label_values(&[tenant, am]);
            let _ = self.latency.remove_label_values(&[tenant, am]);
        }
        let _ = self.dropped.remove_label_values(&[tenant]);
        let _ = self.queue_length.remove_label_values(&[tenant]);
        let _ = self.queue_capacity.remove_label_values(&[tenant]);
        let _ = self.alertmanagers_discovered.remove_label_values(&[tenant]);
    }
}

impl RulerMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["tenant"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let group_duration = HistogramVec::new(
            HistogramOpts::new(
                "norn_ruler_group_evaluation_duration_seconds",
                "Time of one rule group evaluation (every rule, queries and writes).",
            )
            .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            &["tenant"],
        )?;
        registry.register(Box::new(group_duration.clone()))?;
        let last_evaluation = GaugeVec::new(
            Opts::new(
                "norn_ruler_last_evaluation_timestamp_seconds",
                "Oldest last-evaluation time among the tenant's rule groups on this ruler (Unix seconds).",
            ),
            &["tenant"],
        )?;
        registry.register(Box::new(last_evaluation.clone()))?;
        let groups = IntGaugeVec::new(
            Opts::new(
                "norn_ruler_rule_groups",
                "Rule groups this ruler evaluates.",
            ),
            &["tenant"],
        )?;
        registry.register(Box::new(groups.clone()))?;
        let alerts = IntGaugeVec::new(
            Opts::new(
                "norn_ruler_alerts",
                "Alerts of the rule groups this ruler evaluates, by state (pending, firing).",
            ),
            &["tenant", "state"],
        )?;
        registry.register(Box::new(alerts.clone()))?;
        Ok(Self {
            alerts,
            alerts_sent: counter(
                "norn_ruler_alerts_sent_total",
                "Alerts handed to the notifier (every send of an alert counts).",
            )?,
            evaluations: counter("norn_ruler_rule_evaluations_total", "Rule evaluations.")?,
            queries: counter(
                "norn_ruler_queries_total",
                "Queries made by rules (expressions, template query, for-state restore).",
            )?,
            queries_failed: counter(
                "norn_ruler_queries_failed_total",
                "Queries made by rules that failed (query error, query-frontend error or timeout).",
            )?,
            evaluation_failures: counter(
                "norn_ruler_rule_evaluation_failures_total",
                "Rule evaluations that failed (query, limit or write error).",
            )?,
            iterations: counter(
                "norn_ruler_group_iterations_total",
                "Rule group evaluations run.",
            )?,
            iterations_missed: counter(
                "norn_ruler_group_iterations_missed_total",
                "Rule group evaluations skipped because the previous one overran.",
            )?,
            group_duration,
            last_evaluation,
            groups,
            samples_written: counter(
                "norn_ruler_samples_written_total",
                "Samples written by recording and alerting rules (ALERTS series), stale markers included.",
            )?,
            samples_rejected: counter(
                "norn_ruler_samples_rejected_total",
                "Recording-rule samples the write path refused.",
            )?,
            notifications: NotifierMetrics::new(registry)?,
            group: GroupMetrics::new(registry)?,
        })
    }
}
