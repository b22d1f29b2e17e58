//! A group evaluated over an in-memory store that is both what rules query and where they
//! write: rule order, labels, `limit`, `query_offset`, stale markers.

use std::sync::Arc;

use norn_model::{
    Labels, Matcher, PushError, PushOutcome, Pusher, Queryable, QueryableProvider, Sample,
    TenantId, WriteBatch, is_stale_nan,
};
use norn_promql::memstore::MemStore;

use super::*;

/// Storage for one test: queries see what rules wrote.
pub(super) struct Mem(pub(super) Arc<MemStore>);

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

fn runner(yaml: &str, store: &Arc<MemStore>) -> GroupRunner {
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
        alert_sink: None,
        alerting: AlertingOptions::default(),
    };
    let timing = group.timing(Duration::from_secs(60));
    GroupRunner::new(
        GroupId {
            tenant: TenantId::new("t").unwrap(),
            namespace: "ns".into(),
            name: group.name.clone(),
        },
        group,
        timing,
        None,
        deps,
    )
}

pub(super) fn up(job: &str) -> Labels {
    Labels::from_pairs([("__name__", "up"), ("job", job)])
}

async fn samples(store: &MemStore, name: &str) -> Vec<(Labels, Vec<Sample>)> {
    store
        .select(
            i64::MIN / 2,
            i64::MAX / 2,
            &[Matcher::equal("__name__", name)],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.labels, s.samples))
        .collect()
}

#[tokio::test]
async fn rules_run_in_order_with_labels_and_stale_markers() {
    let store = Arc::new(MemStore::new());
    store.add_sample(&up("a"), 50_000, 1.0);
    store.add_sample(&up("b"), 50_000, 3.0);
    let mut r = runner(
        r#"
name: g
rules:
  - record: job:up:x2
    expr: up * 2
    labels: {team: t1}
  - record: all:up:sum
    expr: sum(job:up:x2)
"#,
        &store,
    );
    r.evaluate(60_000).await;
    let st = r.status.lock().clone();
    assert!(st.rules.iter().all(|s| s.health == "ok"), "{st:?}");
    let x2 = samples(&store, "job:up:x2").await;
    assert_eq!(x2.len(), 2);
    assert_eq!(
        x2[0].0,
        Labels::from_pairs([("__name__", "job:up:x2"), ("job", "a"), ("team", "t1")])
    );
    assert_eq!(x2[0].1, [Sample::new(60_000, 2.0)]);
    // The second rule saw the first one's output of this very evaluation.
    let sum = samples(&store, "all:up:sum").await;
    assert_eq!(sum[0].1, [Sample::new(60_000, 8.0)]);

    // Job b stops reporting: its recorded series gets a stale marker at the next evaluation.
    store.clear();
    store.add_sample(&up("a"), 110_000, 5.0);
    r.evaluate(120_000).await;
    let x2 = samples(&store, "job:up:x2").await;
    let b = x2.iter().find(|(l, _)| l.get("job") == Some("b")).unwrap();
    assert_eq!(b.1.len(), 1);
    assert_eq!(b.1[0].t, 120_000);
    assert!(is_stale_nan(b.1[0].v), "{:?}", b.1);
    let a = x2.iter().find(|(l, _)| l.get("job") == Some("a")).unwrap();
    assert_eq!(a.1, [Sample::new(120_000, 10.0)]);
    // Removing the group marks everything it wrote stale.
    let written = r.written().all();
    assert_eq!(written.len(), 2, "job:up:x2{{job=a}} and all:up:sum");
}

#[tokio::test]
async fn limit_duplicates_and_query_offset() {
    let store = Arc::new(MemStore::new());
    store.add_sample(&up("a"), 50_000, 1.0);
    store.add_sample(&up("b"), 50_000, 1.0);
    let mut r = runner(
        r#"
name: g
limit: 1
query_offset: 30s
rules:
  - record: too_many
    expr: up
  - record: same
    expr: sum(up) or vector(1)
  - record: clash
    expr: label_replace(up, "job", "x", "", "")
  - alert: A
    expr: up == 0
"#,
        &store,
    );
    r.evaluate(90_000).await;
    let st = r.status.lock().clone();
    assert_eq!(st.rules[0].health, "err");
    assert!(
        st.rules[0]
            .last_error
            .contains("exceeded limit of 1 with 2 series")
    );
    assert_eq!(st.rules[1].health, "ok");
    assert_eq!(st.rules[2].health, "err");
    assert_eq!(st.rules[3].health, "ok");
    assert!(
        samples(&store, "too_many").await.is_empty(),
        "a failed rule writes nothing"
    );
    // Queried and written at 90s - 30s.
    assert_eq!(
        samples(&store, "same").await[0].1,
        [Sample::new(60_000, 2.0)]
    );
    // Per-group metrics: `rule_group="<namespace>;<group>"`.
    let g = &r.deps.metrics.group;
    let l = ["t", "ns;g"];
    assert_eq!(g.iterations.with_label_values(&l).get(), 1);
    assert_eq!(g.evaluation_failures.with_label_values(&l).get(), 2);
    assert_eq!(g.last_evaluation.with_label_values(&l).get(), 90.0);
    assert!(g.last_duration.with_label_values(&l).get() > 0.0);
}

#[tokio::test]
async fn a_changed_group_retires_the_series_of_rules_that_are_gone() {
    let store = Arc::new(MemStore::new());
    store.add_sample(&up("a"), 50_000, 1.0);
    let mut r = runner(
        "name: g\nrules: [{record: keep, expr: up}, {record: drop, expr: up}]",
        &store,
    );
    r.evaluate(60_000).await;
    let previous = r.written();
    let group = RuleGroup::from_yaml("name: g\nrules: [{record: keep, expr: up}]").unwrap();
    let mut r2 = GroupRunner::new(
        r.id.clone(),
        group.clone(),
        group.timing(Duration::from_secs(60)),
        Some(previous),
        r.deps.clone(),
    );
    store.add_sample(&up("a"), 110_000, 1.0);
    r2.evaluate(120_000).await;
    let dropped = samples(&store, "drop").await;
    assert!(is_stale_nan(dropped[0].1.last().unwrap().v));
    let kept = samples(&store, "keep").await;
    assert_eq!(kept[0].1.last().unwrap().v, 1.0, "kept, not stale");
}
