//! Alerting rules evaluated by a group over an in-memory store: templates, the `ALERTS` /
//! `ALERTS_FOR_STATE` series and their stale markers, what is sent in one batch, the rule
//! status, and the `for` state restored from storage by a fresh runner.

use std::sync::Arc;

use norn_model::{Labels, Matcher, Queryable, Sample, TenantId, is_stale_nan};
use norn_promql::memstore::MemStore;
use parking_lot::Mutex;

use super::eval_tests::{Mem, up};
use super::*;

/// Keeps what was sent, per call.
#[derive(Default)]
pub(crate) struct Sink(pub Mutex<Vec<Vec<OutgoingAlert>>>);

impl AlertSink for Sink {
    fn send(&self, _: &TenantId, alerts: Vec<OutgoingAlert>) {
        self.0.lock().push(alerts);
    }
}

fn runner(yaml: &str, store: &Arc<MemStore>, sink: &Arc<Sink>, restore: bool) -> GroupRunner {
    let group = RuleGroup::from_yaml(yaml).unwrap();
    let mem = Arc::new(Mem(Arc::clone(store)));
    let deps = EvalDeps {
        engine: norn_promql::Engine::default(),
        querier: Arc::new(crate::rule_query::LocalQuerier::new(
            norn_promql::Engine::default(),
            Arc::clone(&mem) as _,
            Duration::from_secs(10),
        )),
        pusher: mem as _,
        metrics: Arc::new(RulerMetrics::new(&prometheus::Registry::new()).unwrap()),
        alert_sink: Some(Arc::clone(sink) as _),
        alerting: AlertingOptions {
            external_url: "http://norn.example".into(),
            ..AlertingOptions::default()
        },
    };
    let timing = group.timing(Duration::from_secs(60));
    let mut r = GroupRunner::new(
        GroupId {
            tenant: TenantId::new("t").unwrap(),
            namespace: "ns".into(),
            name: group.name.clone(),
        },
        group,
        timing,
        None,
        deps,
    );
    if !restore {
        r.skip_restore();
    }
    r
}

async fn last(store: &MemStore, m: &[Matcher]) -> Vec<(Labels, Sample)> {
    store
        .select(i64::MIN / 2, i64::MAX / 2, m)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.labels, *s.samples.last().unwrap()))
        .collect()
}

const M: i64 = 60_000;

#[tokio::test]
async fn alerts_are_templated_written_and_sent() {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    let mut r = runner(
        r#"
name: g
rules:
  - alert: Down
    expr: up==0
    for: 2m
    labels: {severity: "{{ if eq $labels.job \"a\" }}page{{ else }}ticket{{ end }}"}
    annotations:
      summary: "{{ $labels.job }} is down ({{ $value }})"
      total: '{{ with query "count(up)" }}{{ . | first | value }}{{ end }}'
  - record: alerts:count
    expr: count(ALERTS)
"#,
        &store,
        &sink,
        false,
    );
    for t in [M, 2 * M, 3 * M] {
        store.add_sample(&up("a"), t - 1000, 0.0);
        store.add_sample(&up("b"), t - 1000, 1.0);
        r.evaluate(t).await;
    }
    let st = r.status.lock().clone();
    assert_eq!(st.rules[0].health, "ok", "{st:?}");
    assert_eq!(
        st.rules[0].state,
        AlertState::Firing,
        "2m after it went pending"
    );
    let a = &st.rules[0].alerts[0];
    assert_eq!(
        a.labels,
        Labels::from_pairs([("alertname", "Down"), ("job", "a"), ("severity", "page")])
    );
    assert_eq!(
        a.annotations,
        Labels::from_pairs([("summary", "a is down (0)"), ("total", "2")])
    );
    assert_eq!((a.active_at_ms, a.fired_at_ms), (M, Some(3 * M)));
    // ALERTS as of the last evaluation: firing; the recording rule after it saw it.
    let alerts = last(&store, &[Matcher::equal("__name__", "ALERTS")]).await;
    assert_eq!(alerts.len(), 2, "a pending and a firing series: {alerts:?}");
    let firing = alerts
        .iter()
        .find(|(l, _)| l.get("alertstate") == Some("firing"))
        .unwrap();
    assert_eq!(firing.1, Sample::new(3 * M, 1.0));
    let pending = alerts
        .iter()
        .find(|(l, _)| l.get("alertstate") == Some("pending"))
        .unwrap();
    assert_eq!(pending.1.t, 3 * M);
    assert!(
        is_stale_nan(pending.1.v),
        "pending series went stale when it fired"
    );
    let gauge = |state: &str| r.deps.metrics.alerts.with_label_values(&["t", state]).get();
    assert_eq!((gauge("pending"), gauge("firing")), (0, 1));
    let fs = last(&store, &[Matcher::equal("__name__", "ALERTS_FOR_STATE")]).await;
    assert_eq!(fs[0].1, Sample::new(3 * M, 60.0));
    let count = last(&store, &[Matcher::equal("__name__", "alerts:count")]).await;
    assert_eq!(count[0].1, Sample::new(3 * M, 1.0));
    // Sent once, when it fired, in one batch.
    let sent = sink.0.lock().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), 1);
    assert_eq!(sent[0][0].starts_at_ms, 3 * M);
    assert_eq!(sent[0][0].ends_at_ms, 3 * M + 4 * M);
    assert_eq!(
        sent[0][0].generator_url, "http://norn.example/graph?g0.expr=up+%3D%3D+0&g0.tab=1",
        "the expression as Prometheus prints it"
    );

    // It recovers: resolved, sent at once with EndsAt = ResolvedAt, its ALERTS series stale.
    store.add_sample(&up("a"), 4 * M - 1000, 1.0);
    store.add_sample(&up("b"), 4 * M - 1000, 1.0);
    r.evaluate(4 * M).await;
    let sent = sink.0.lock().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1][0].ends_at_ms, 4 * M);
    let st = r.status.lock().clone();
    assert_eq!(
        r.deps
            .metrics
            .alerts
            .with_label_values(&["t", "firing"])
            .get(),
        0
    );
    assert_eq!(st.rules[0].state, AlertState::Inactive);
    assert!(st.rules[0].alerts.is_empty());
    for (l, s) in last(
        &store,
        &[Matcher::new(norn_model::MatchType::Regex, "__name__", "ALERTS.*").unwrap()],
    )
    .await
    {
        if l.get("alertstate") == Some("pending") {
            continue;
        }
        assert_eq!(s.t, 4 * M, "{l:?}");
        assert!(is_stale_nan(s.v), "{l:?}");
    }
    // Removing the group retires only what is still live (nothing).
    let written = r.written();
    assert!(written.per_rule[0].1.is_empty());
    assert_eq!(written.alerts.len(), 1, "the resolved alert is handed on");
}

#[tokio::test]
async fn a_failing_alerting_rule_reports_its_error() {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    let mut r = runner(
        "name: g\nlimit: 1\nrules:\n  - alert: A\n    expr: up\n  - alert: B\n    expr: up\n    labels: {job: x}\n",
        &store,
        &sink,
        false,
    );
    store.add_sample(&up("a"), M - 1000, 1.0);
    store.add_sample(&up("b"), M - 1000, 1.0);
    r.evaluate(M).await;
    let st = r.status.lock().clone();
    assert_eq!(st.rules[0].health, "err");
    assert_eq!(st.rules[0].last_error, "exceeded limit of 1 with 2 alerts");
    assert_eq!(st.rules[1].health, "err");
    assert!(
        st.rules[1]
            .last_error
            .contains("same labelset after applying alert labels")
    );
    assert!(sink.0.lock().is_empty());
    assert!(
        last(&store, &[Matcher::equal("__name__", "ALERTS")])
            .await
            .is_empty()
    );
}

/// The old ruler wrote `ALERTS_FOR_STATE` until `down_at`; a fresh runner restores from it
/// after its second evaluation, at `now`.
async fn restore_case(active_at_s: i64, down_at: i64, now: i64) -> (i64, bool) {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    let fs = Labels::from_pairs([
        ("__name__", "ALERTS_FOR_STATE"),
        ("alertname", "Down"),
        ("job", "a"),
        ("severity", "page"),
    ]);
    store.add_sample(&fs, down_at, active_at_s as f64);
    let mut r = runner(
        "name: g\nrules:\n  - alert: Down\n    expr: up == 0\n    for: 1h\n    labels: {severity: page}\n",
        &store,
        &sink,
        true,
    );
    for t in [now - M, now] {
        store.add_sample(&up("a"), t - 1000, 0.0);
        r.evaluate(t).await;
    }
    let st = r.status.lock().clone();
    let alerts_written = !last(&store, &[Matcher::equal("__name__", "ALERTS")])
        .await
        .is_empty();
    (st.rules[0].alerts[0].active_at_ms, alerts_written)
}

#[tokio::test]
async fn for_state_is_restored_after_the_second_evaluation() {
    let now = 10_000 * M;
    // 20m pending of 1h when the old ruler stopped 10m ago: the outage does not count.
    let (at, written) = restore_case((now - 30 * M) / 1000, now - 10 * M, now).await;
    assert_eq!(at, now - 20 * M);
    assert!(!written, "no ALERTS before the state is restored");
    // 55m pending: fires no sooner than the 10m grace period from now.
    let (at, _) = restore_case((now - 65 * M) / 1000, now - 10 * M, now).await;
    assert_eq!(at, now + 10 * M - 60 * M);
    // Last written longer ago than the outage tolerance (1h): not restored.
    let (at, _) = restore_case((now - 90 * M) / 1000, now - 61 * M, now).await;
    assert_eq!(at, now - M, "the for starts over at the first evaluation");
}

#[tokio::test]
async fn alerts_series_are_written_once_restored() {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    let mut r = runner(
        "name: g\nrules:\n  - alert: Down\n    expr: up == 0\n",
        &store,
        &sink,
        true,
    );
    for (i, t) in [M, 2 * M, 3 * M].into_iter().enumerate() {
        store.add_sample(&up("a"), t - 1000, 0.0);
        r.evaluate(t).await;
        let n = last(&store, &[Matcher::equal("__name__", "ALERTS")])
            .await
            .len();
        assert_eq!(n, usize::from(i == 2), "evaluation {i}");
    }
    assert_eq!(
        sink.0.lock().len(),
        2,
        "sent from the first evaluation on, again once the resend delay passed"
    );
}

#[tokio::test]
async fn a_changed_group_keeps_its_alerts() {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    let mut r = runner(
        "name: g\nrules:\n  - alert: Down\n    expr: up == 0\n    for: 1m\n",
        &store,
        &sink,
        false,
    );
    for t in [M, 2 * M] {
        store.add_sample(&up("a"), t - 1000, 0.0);
        r.evaluate(t).await;
    }
    assert_eq!(r.status.lock().rules[0].state, AlertState::Firing);
    let group = RuleGroup::from_yaml(
        "name: g\nrules:\n  - record: x\n    expr: up\n  - alert: Down\n    expr: up == 0\n    for: 1m\n",
    )
    .unwrap();
    let mut r2 = GroupRunner::new(
        r.id.clone(),
        group.clone(),
        group.timing(Duration::from_secs(60)),
        Some(r.written()),
        r.deps.clone(),
    );
    store.add_sample(&up("a"), 3 * M - 1000, 0.0);
    r2.evaluate(3 * M).await;
    let st = r2.status.lock().clone();
    assert_eq!(st.rules[1].state, AlertState::Firing, "{st:?}");
    assert_eq!(
        st.rules[1].alerts[0].active_at_ms, M,
        "the same alert, not a new one"
    );
    let alerts = last(&store, &[Matcher::equal("__name__", "ALERTS")]).await;
    assert_eq!(
        alerts[0].1,
        Sample::new(3 * M, 1.0),
        "written without a new restore"
    );
    assert_eq!(
        sink.0.lock().len(),
        1,
        "not sent again before the resend delay"
    );
}

#[tokio::test]
async fn query_offset_moves_the_query_and_the_series_not_the_alert_times() {
    let store = Arc::new(MemStore::new());
    let sink = Arc::new(Sink::default());
    let mut r = runner(
        "name: g\nquery_offset: 30s\nrules:\n  - alert: Down\n    expr: up == 0\n",
        &store,
        &sink,
        false,
    );
    store.add_sample(&up("a"), 50_000, 0.0);
    // A sample after the query time is not seen.
    store.add_sample(&up("b"), 70_000, 0.0);
    r.evaluate(90_000).await;
    let st = r.status.lock().clone();
    assert_eq!(st.rules[0].alerts.len(), 1, "{st:?}");
    assert_eq!(st.rules[0].alerts[0].active_at_ms, 90_000);
    let alerts = last(&store, &[Matcher::equal("__name__", "ALERTS")]).await;
    assert_eq!(alerts[0].1, Sample::new(60_000, 1.0));
    let fs = last(&store, &[Matcher::equal("__name__", "ALERTS_FOR_STATE")]).await;
    assert_eq!(fs[0].1, Sample::new(60_000, 90.0));
    assert_eq!(sink.0.lock()[0][0].starts_at_ms, 90_000);
}
