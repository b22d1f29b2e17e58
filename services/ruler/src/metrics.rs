//! The ruler's metrics: Mimir's `cortex_prometheus_rule_*` analogues under `norn_ruler_`, with
//! the tenant as the only label. Prometheus labels these by `rule_group`, but group names are
//! chosen by tenants and unbounded; per-group detail is in `/prometheus/api/v1/rules`.

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
        })
    }
}
