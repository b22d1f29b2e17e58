//! Differential test against Prometheus 2.42 itself: Norn's group runner evaluates a rule
//! file (recording and alerting rules, `for`, `keep_firing_for`, templates with `$labels`,
//! `$value`, `humanize*`, `query`, `$externalURL` and `$externalLabels`) over input
//! series at every evaluation time from 0, and what Norn observed — the firing alerts with
//! their labels and annotations, and the recorded and `ALERTS` series — is written as the
//! expectations of a `promtool test rules` file over the same input. promtool passing means
//! Prometheus computed exactly what Norn did.
//!
//! Skipped (with a message) when `promtool` is not installed (Debian: `apt-get install
//! prometheus`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use norn_model::{
    Labels, PushError, PushOutcome, Pusher, Queryable, QueryableProvider, TenantId, WriteBatch,
    stale_nan,
};
use norn_promql::memstore::MemStore;
use norn_promql::{Engine, Value};
use norn_ruler::alerting::AlertState;
use norn_ruler::group::{AlertingOptions, EvalDeps, GroupId, GroupRunner};
use norn_ruler::metrics::RulerMetrics;
use norn_ruler::rulefmt::RuleFile;

/// Storage where rule output lands and is queried, as one Prometheus TSDB.
struct Mem(Arc<MemStore>);

impl QueryableProvider for Mem {
    fn queryable(&self, _: &TenantId) -> Arc<dyn Queryable> {
        Arc::clone(&self.0) as Arc<dyn Queryable>
    }
}

#[async_trait::async_trait]
impl Pusher for Mem {
    async fn push(&self, _: &TenantId, batch: WriteBatch) -> Result<PushOutcome, PushError> {
        let mut n = 0;
        for s in batch.iter() {
            let l = s.to_labels();
            for x in s.samples() {
                self.0.add_sample(&l, x.t, x.v);
                n += 1;
            }
        }
        Ok(PushOutcome {
            appended: n,
            ..PushOutcome::default()
        })
    }
}

const RULES: &str = r#"
groups:
  - name: diff
    rules:
      - record: job:load:avg
        expr: avg by (job) (load)
      - alert: HighLoad
        expr: job:load:avg > 0.8
        for: 3m
        keep_firing_for: 2m
        labels:
          severity: '{{ if gt $value 1.5 }}page{{ else }}ticket{{ end }}'
        annotations:
          summary: '{{ $labels.job }} load is {{ $value | humanize }}'
          name: '[{{ $labels.__name__ }}]'
      - alert: InstanceDown
        expr: up == 0
        for: 2m
        labels:
          team: '{{ $labels.job }}-oncall'
        annotations:
          description: '{{ $labels.instance }} of job {{ $labels.job }} has been down (value {{ $value }})'
      - alert: TooManyDown
        expr: count by (job) (up == 0) >= 2
        annotations:
          percent: '{{ $value | humanizePercentage }}'
          up: '{{ with query "sum(up)" }}{{ . | first | value }}{{ end }} of {{ with query "count(up)" }}{{ . | first | value }}{{ end }} up'
          link: '{{ $externalURL }}/alerts?cluster={{ $externalLabels.cluster }}'
      - record: alerts:firing:count
        expr: count by (alertname) (ALERTS{alertstate="firing"})
"#;

/// One input series: a value (or `None`: no sample, or a stale marker) per minute from 0.
enum V {
    N(f64),
    Gap,
    Stale,
}

fn series() -> Vec<(&'static str, Labels, Vec<V>)> {
    use V::*;
    let load = |inst: &str, job: &str| {
        Labels::from_pairs([("__name__", "load"), ("instance", inst), ("job", job)])
    };
    let up = |inst: &str, job: &str| {
        Labels::from_pairs([("__name__", "up"), ("instance", inst), ("job", job)])
    };
    let rep = |v: f64, n: usize| (0..n).map(move |_| N(v));
    vec![
        (
            r#"load{instance="a",job="api"}"#,
            load("a", "api"),
            [
                N(0.5),
                N(0.9),
                N(0.9),
                N(0.9),
                N(0.9),
                N(2.0),
                N(2.0),
                N(0.3),
                N(0.3),
            ]
            .into_iter()
            .chain(rep(0.95, 6))
            .chain([Stale])
            .chain(rep(0.2, 4))
            .collect(),
        ),
        (
            r#"load{instance="b",job="api"}"#,
            load("b", "api"),
            rep(0.8, 20).collect(),
        ),
        (
            r#"load{instance="c",job="db"}"#,
            load("c", "db"),
            rep(1.2, 6)
                .chain([Stale, Gap, Gap])
                .chain(rep(1.7, 11))
                .collect(),
        ),
        (
            r#"up{instance="a",job="api"}"#,
            up("a", "api"),
            [
                1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0,
            ]
            .into_iter()
            .map(N)
            .chain(rep(0.0, 7))
            .collect(),
        ),
        (
            r#"up{instance="b",job="api"}"#,
            up("b", "api"),
            rep(1.0, 4)
                .chain(rep(0.0, 5))
                .chain([Stale])
                .chain(rep(0.0, 10))
                .collect(),
        ),
        (
            r#"up{instance="c",job="db"}"#,
            up("c", "db"),
            rep(0.0, 3).chain(rep(1.0, 17)).collect(),
        ),
    ]
}

/// promtool's series notation for labels.
fn promql_labels(l: &Labels) -> String {
    let name = l.get("__name__").unwrap_or("");
    let rest: Vec<String> = l
        .iter()
        .filter(|x| x.name != "__name__")
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

fn yaml_map(l: &Labels, skip: &str) -> String {
    let parts: Vec<String> = l
        .iter()
        .filter(|x| x.name != skip)
        .map(|x| format!("{:?}: {:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

const MINUTES: i64 = 20;
const M: i64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_agrees_with_norn_on_alerts_and_recorded_series() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    };
    eprintln!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );

    let store = Arc::new(MemStore::new());
    let input = series();
    for (_, labels, values) in &input {
        for (i, v) in values.iter().enumerate() {
            let t = i as i64 * M;
            match v {
                V::N(x) => store.add_sample(labels, t, *x),
                V::Stale => store.add_sample(labels, t, stale_nan()),
                V::Gap => {}
            }
        }
    }
    let file: RuleFile = serde_yaml::from_str(RULES).unwrap();
    let group = file.groups[0].clone();
    let mem = Arc::new(Mem(Arc::clone(&store)));
    let engine = Engine::default();
    let deps = EvalDeps {
        engine: engine.clone(),
        querier: Arc::new(norn_ruler::rule_query::LocalQuerier::new(
            engine.clone(),
            Arc::clone(&mem) as _,
            Duration::from_secs(10),
        )),
        pusher: mem as _,
        metrics: Arc::new(RulerMetrics::new(&prometheus::Registry::new()).unwrap()),
        alert_sink: None,
        alerting: AlertingOptions {
            external_url: "http://norn.example/prometheus".into(),
            external_labels: [("cluster".to_string(), "eu1".to_string())].into(),
            ..AlertingOptions::default()
        },
    };
    let timing = group.timing(Duration::from_secs(60));
    let mut runner = GroupRunner::new(
        GroupId {
            tenant: TenantId::new("t").unwrap(),
            namespace: "rules.yml".into(),
            name: group.name.clone(),
        },
        group.clone(),
        timing,
        None,
        deps,
    );
    // promtool's rules are restored from the start: ALERTS are written at once.
    runner.skip_restore();

    // Alert expectations: Norn's firing alerts after each evaluation.
    let mut alert_tests = String::new();
    let mut firing_seen = 0;
    for k in 0..=MINUTES {
        runner.evaluate(k * M).await;
        let st = runner.status.lock().clone();
        for (r, rs) in group.rules.iter().zip(&st.rules) {
            assert_eq!(rs.health, "ok", "{} at {k}m: {}", r.name(), rs.last_error);
            let Some(name) = &r.alert else { continue };
            let _ = writeln!(
                alert_tests,
                "      - eval_time: {k}m\n        alertname: {name}\n        exp_alerts:"
            );
            let firing: Vec<_> = rs
                .alerts
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .collect();
            if firing.is_empty() {
                alert_tests.pop();
                alert_tests.push_str(" []\n");
            }
            for a in firing {
                firing_seen += 1;
                let _ = writeln!(
                    alert_tests,
                    "          - exp_labels: {}\n            exp_annotations: {}",
                    yaml_map(&a.labels, "alertname"),
                    yaml_map(&a.annotations, "")
                );
            }
        }
    }
    assert!(firing_seen > 20, "the inputs fire alerts ({firing_seen})");

    // Series expectations: what Norn's storage answers at each evaluation time.
    let exprs = [
        "job:load:avg",
        "alerts:firing:count",
        "ALERTS",
        "ALERTS_FOR_STATE",
    ];
    let mut expr_tests = String::new();
    for k in 0..=MINUTES {
        for e in exprs {
            let res = engine
                .instant_query(store.as_ref(), e, k * M)
                .await
                .unwrap();
            let Value::Vector(v) = res.value else {
                panic!("{e}: not a vector")
            };
            let _ = writeln!(
                expr_tests,
                "      - expr: '{e}'\n        eval_time: {k}m\n        exp_samples:"
            );
            if v.is_empty() {
                expr_tests.pop();
                expr_tests.push_str(" []\n");
            }
            for s in v {
                let _ = writeln!(
                    expr_tests,
                    "          - labels: '{}'\n            value: {}",
                    promql_labels(&s.labels),
                    s.v
                );
            }
        }
    }

    let mut inputs = String::new();
    for (text, _, values) in &input {
        let vals: Vec<String> = values
            .iter()
            .map(|v| match v {
                V::N(x) => format!("{x}"),
                V::Gap => "_".into(),
                V::Stale => "stale".into(),
            })
            .collect();
        let _ = writeln!(
            inputs,
            "      - series: '{text}'\n        values: '{}'",
            vals.join(" ")
        );
    }
    let test = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    external_url: http://norn.example/prometheus\n    external_labels: {{cluster: eu1}}\n    input_series:\n{inputs}    alert_rule_test:\n{alert_tests}    promql_expr_test:\n{expr_tests}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), RULES).unwrap();
    std::fs::write(dir.path().join("test.yml"), &test).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    if !out.status.success() || std::env::var_os("NORN_KEEP_PROMTOOL_DIFF").is_some() {
        // Left for a look: the rule file and the expectations Norn produced.
        let keep = std::env::temp_dir().join("norn-promtool-diff");
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::write(keep.join("rules.yml"), RULES);
        let _ = std::fs::write(keep.join("test.yml"), &test);
        eprintln!("promtool files kept in {}", keep.display());
    }
    assert!(
        out.status.success(),
        "promtool disagrees with Norn:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
