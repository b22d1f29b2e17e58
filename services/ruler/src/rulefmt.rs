//! Prometheus' rule-file format (`groups:` of `name`, `interval`, `limit`, `query_offset`,
//! `rules:`), as the config API takes and returns it, and the checks an upload must pass.
//!
//! What is stored is exactly what was uploaded (re-serialised), so a `GET` gives back the
//! group as it was sent. The checks that need no query thread live here ([`check_group`]);
//! PromQL parsing runs on the engine's query threads (deep expressions need their stack), in
//! [`crate::api`]. Every message names the group and the rule (its 1-based position and its
//! `record`/`alert` name), so a user can find the line to fix in a file of hundreds.

use std::collections::BTreeMap;
use std::time::Duration;

use norn_model::{is_valid_label_name, is_valid_metric_name, parse_duration};
use serde::{Deserialize, Serialize};

/// A rule file: what `--ruler-storage.backend=local` reads and `norn tools rules` will load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RuleGroup>,
}

/// One rule group, as in a Prometheus rule file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    /// Evaluation interval (Prometheus duration); absent = `--ruler.evaluation-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How far back of the evaluation time the rules query (absent = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_offset: Option<String>,
    /// Most series a rule may produce per evaluation; more fails the rule (0 = no limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: usize,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One recording or alerting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    /// The rule's name: its `record` or its `alert`.
    pub fn name(&self) -> &str {
        self.record
            .as_deref()
            .or(self.alert.as_deref())
            .unwrap_or("")
    }

    pub fn is_alerting(&self) -> bool {
        self.alert.is_some()
    }

    /// How messages name the rule: `rule 2 (record "job:up:sum")`.
    pub fn describe(&self, index: usize) -> String {
        match (&self.record, &self.alert) {
            (Some(r), _) => format!("rule {} (record {r:?})", index + 1),
            (None, Some(a)) => format!("rule {} (alert {a:?})", index + 1),
            (None, None) => format!("rule {}", index + 1),
        }
    }
}

/// A group's settings with defaults applied and durations parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTiming {
    pub interval: Duration,
    pub query_offset: Duration,
}

impl RuleGroup {
    /// Parses a single group (the body of `POST /config/v1/rules/{namespace}`).
    pub fn from_yaml(text: &str) -> Result<RuleGroup, String> {
        serde_yaml::from_str(text).map_err(|e| format!("invalid rule group YAML: {e}"))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Interval and query offset, the interval defaulting to `default_interval`. The group
    /// passed [`check_group`], so the durations parse; a bad one falls back to the default.
    pub fn timing(&self, default_interval: Duration) -> GroupTiming {
        let dur = |s: &Option<String>| s.as_deref().and_then(|s| parse_duration(s).ok());
        GroupTiming {
            interval: dur(&self.interval)
                .filter(|d| !d.is_zero())
                .unwrap_or(default_interval),
            query_offset: dur(&self.query_offset).unwrap_or_default(),
        }
    }
}

/// Checks everything about a group that needs no PromQL parser: a name, valid durations,
/// each rule either recording or alerting with a valid name and labels, and the per-tenant
/// rule count. Returns every problem found (each naming its rule), not just the first.
pub fn check_group(g: &RuleGroup, max_rules: usize) -> Vec<String> {
    let mut errs = Vec::new();
    let gname = &g.name;
    if g.name.is_empty() {
        errs.push("rule group name must not be empty".to_string());
    }
    for (key, v) in [("interval", &g.interval), ("query_offset", &g.query_offset)] {
        if let Some(s) = v
            && let Err(e) = parse_duration(s)
        {
            errs.push(format!("group {gname:?}: invalid {key} {s:?}: {e}"));
        }
    }
    if g.rules.is_empty() {
        errs.push(format!("group {gname:?} has no rules"));
    }
    if max_rules > 0 && g.rules.len() > max_rules {
        errs.push(format!(
            "group {gname:?} has {} rules, more than the limit of {max_rules} rules per rule group (ruler_max_rules_per_rule_group)",
            g.rules.len()
        ));
    }
    for (i, r) in g.rules.iter().enumerate() {
        let at = || format!("group {gname:?}, {}", r.describe(i));
        match (&r.record, &r.alert) {
            (Some(_), Some(_)) => errs.push(format!(
                "{}: only one of 'record' and 'alert' may be set",
                at()
            )),
            (None, None) => errs.push(format!("{}: one of 'record' or 'alert' must be set", at())),
            (Some(rec), None) => {
                if !is_valid_metric_name(rec.as_bytes()) {
                    errs.push(format!("{}: invalid recording rule name {rec:?}", at()));
                }
                if r.for_.is_some() || r.keep_firing_for.is_some() {
                    errs.push(format!(
                        "{}: 'for' and 'keep_firing_for' apply to alerting rules only",
                        at()
                    ));
                }
                if !r.annotations.is_empty() {
                    errs.push(format!(
                        "{}: annotations apply to alerting rules only",
                        at()
                    ));
                }
            }
            (None, Some(alert)) => {
                if alert.is_empty() {
                    errs.push(format!("{}: alert name must not be empty", at()));
                }
                // Labels and annotations are templates: a bad one is refused now, not
                // found when the alert fires.
                for (kind, map) in [("label", &r.labels), ("annotation", &r.annotations)] {
                    for (k, v) in map {
                        if let Err(e) = crate::template::Template::parse(alert, v) {
                            errs.push(format!("{}: {kind} {k:?}: {e}", at()));
                        }
                    }
                }
            }
        }
        if r.expr.trim().is_empty() {
            errs.push(format!("{}: 'expr' must not be empty", at()));
        }
        for (key, v) in [("for", &r.for_), ("keep_firing_for", &r.keep_firing_for)] {
            if let Some(s) = v
                && let Err(e) = parse_duration(s)
            {
                errs.push(format!("{}: invalid {key} {s:?}: {e}", at()));
            }
        }
        for name in r.labels.keys().chain(r.annotations.keys()) {
            if !is_valid_label_name(name.as_bytes()) {
                errs.push(format!("{}: invalid label name {name:?}", at()));
            }
        }
        if r.labels.contains_key(norn_model::METRIC_NAME) {
            errs.push(format!(
                "{}: label {:?} may not be set by a rule",
                at(),
                norn_model::METRIC_NAME
            ));
        }
    }
    errs
}

/// Group names must be unique within a namespace (a rule file).
pub fn check_unique_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(format!("{n:?}: repeated group name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: g1
interval: 30s
limit: 5
rules:
  - record: job:up:sum
    expr: sum by (job) (up)
    labels:
      team: a
  - alert: Down
    expr: up == 0
    for: 5m
    annotations:
      summary: "{{ $labels.job }} is down"
"#;

    #[test]
    fn a_good_group_round_trips() {
        let g = RuleGroup::from_yaml(GOOD).unwrap();
        assert!(check_group(&g, 20).is_empty(), "{:?}", check_group(&g, 20));
        assert_eq!(g.rules[1].for_.as_deref(), Some("5m"));
        let again = RuleGroup::from_yaml(&g.to_yaml()).unwrap();
        assert_eq!(again, g);
        let t = g.timing(Duration::from_secs(60));
        assert_eq!(t.interval, Duration::from_secs(30));
        assert_eq!(t.query_offset, Duration::ZERO);
    }

    #[test]
    fn defaults_apply() {
        let g = RuleGroup::from_yaml("name: x\nrules: [{record: a, expr: '1'}]").unwrap();
        assert_eq!(
            g.timing(Duration::from_secs(60)).interval,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn problems_name_the_group_and_rule() {
        let g = RuleGroup::from_yaml(
            r#"
name: g
interval: 1banana
rules:
  - record: "bad name"
    expr: up
  - record: ok
    alert: both
    expr: up
  - record: ok2
    expr: ""
    for: 5m
  - alert: A
    expr: up
    for: forever
    labels: {"0bad": x, sev: "{{ if }}"}
    annotations: {summary: "{{ $labels.job }", ok: "{{ $labels.job | toUpper }}"}
"#,
        )
        .unwrap();
        let errs = check_group(&g, 3).join("\n");
        for want in [
            "invalid interval \"1banana\"",
            "rule 1 (record \"bad name\"): invalid recording rule name",
            "rule 2 (record \"ok\"): only one of",
            "rule 3 (record \"ok2\"): 'for' and 'keep_firing_for'",
            "rule 3 (record \"ok2\"): 'expr' must not be empty",
            "rule 4 (alert \"A\"): invalid for \"forever\"",
            "rule 4 (alert \"A\"): invalid label name \"0bad\"",
            "rule 4 (alert \"A\"): label \"sev\": error parsing template __alert_A: template: __alert_A:1: missing value for if",
            "rule 4 (alert \"A\"): annotation \"summary\": error parsing template __alert_A",
            "has 4 rules, more than the limit of 3",
        ] {
            assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
        }
    }

    #[test]
    fn unknown_keys_and_repeated_names_are_refused() {
        assert!(RuleGroup::from_yaml("name: g\nrulez: []").is_err());
        assert!(check_unique_names(["a", "b"]).is_ok());
        assert!(
            check_unique_names(["a", "b", "a"])
                .unwrap_err()
                .contains("\"a\"")
        );
    }
}
