//! Federated reads: tenant labels, `__tenant_id__` matchers, clashing labels, failures.

use super::*;
use crate::{MatchType, Sample};

/// One tenant's series, matched by the matchers (on `__name__` and any label).
struct Store(Vec<Series>);

impl Store {
    fn matching(&self, matchers: &[Matcher]) -> Vec<Series> {
        self.0
            .iter()
            .filter(|s| crate::matcher::matches_all(matchers, |n| s.labels.get(n)))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Queryable for Store {
    async fn select(&self, _: i64, _: i64, m: &[Matcher]) -> Result<Vec<Series>, StorageError> {
        Ok(self.matching(m))
    }
    async fn label_names(
        &self,
        _: i64,
        _: i64,
        m: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let names: BTreeSet<String> = self
            .matching(m)
            .iter()
            .flat_map(|s| s.labels.iter().map(|l| l.name.clone()).collect::<Vec<_>>())
            .collect();
        Ok(names.into_iter().collect())
    }
    async fn label_values(
        &self,
        name: &str,
        _: i64,
        _: i64,
        m: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let values: BTreeSet<String> = self
            .matching(m)
            .iter()
            .filter_map(|s| s.labels.get(name).map(str::to_string))
            .collect();
        Ok(values.into_iter().collect())
    }
}

struct Down;

#[async_trait]
impl Queryable for Down {
    async fn select(&self, _: i64, _: i64, _: &[Matcher]) -> Result<Vec<Series>, StorageError> {
        Err(StorageError::Unavailable("ingesters down".into()))
    }
    async fn label_names(
        &self,
        _: i64,
        _: i64,
        _: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Err(StorageError::Unavailable("ingesters down".into()))
    }
    async fn label_values(
        &self,
        _: &str,
        _: i64,
        _: i64,
        _: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        Err(StorageError::Unavailable("ingesters down".into()))
    }
}

fn series(pairs: &[(&str, &str)], v: f64) -> Series {
    Series {
        labels: Labels::from_pairs(pairs.iter().copied()),
        samples: vec![Sample::new(1, v)],
    }
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn two_tenants() -> FederatedQueryable {
    let a = Store(vec![
        series(&[("__name__", "up"), ("job", "api")], 1.0),
        series(&[("__name__", "up"), ("job", "db")], 2.0),
    ]);
    let b = Store(vec![
        series(&[("__name__", "up"), ("job", "api")], 3.0),
        // A series that carries its own __tenant_id__ (say, from an earlier federation).
        series(
            &[("__name__", "up"), ("job", "edge"), ("__tenant_id__", "x")],
            4.0,
        ),
    ]);
    FederatedQueryable::new(
        vec![(tenant("a"), Arc::new(a)), (tenant("b"), Arc::new(b))],
        2,
    )
}

fn m(kind: MatchType, name: &str, value: &str) -> Matcher {
    Matcher::new(kind, name, value).unwrap()
}

#[tokio::test]
async fn every_series_is_labelled_with_its_tenant_and_the_answer_is_sorted() {
    let q = two_tenants();
    let got = q
        .select(0, 10, &[m(MatchType::Equal, "__name__", "up")])
        .await
        .unwrap();
    let shown: Vec<(String, f64)> = got
        .iter()
        .map(|s| (s.labels.to_string(), s.samples[0].v))
        .collect();
    assert_eq!(
        shown,
        [
            (r#"up{__tenant_id__="a", job="api"}"#.to_string(), 1.0),
            (r#"up{__tenant_id__="a", job="db"}"#.to_string(), 2.0),
            (r#"up{__tenant_id__="b", job="api"}"#.to_string(), 3.0),
            (
                r#"up{__tenant_id__="b", job="edge", original___tenant_id__="x"}"#.to_string(),
                4.0
            ),
        ]
    );
}

#[tokio::test]
async fn tenant_matchers_pick_tenants_and_never_reach_the_stores() {
    let q = two_tenants();
    for (matcher, want) in [
        (m(MatchType::Equal, "__tenant_id__", "b"), vec!["b", "b"]),
        (m(MatchType::NotEqual, "__tenant_id__", "b"), vec!["a", "a"]),
        (
            m(MatchType::Regex, "__tenant_id__", "a|b"),
            vec!["a", "a", "b", "b"],
        ),
        (m(MatchType::Equal, "__tenant_id__", "c"), vec![]),
    ] {
        let got = q
            .select(
                0,
                10,
                &[m(MatchType::Equal, "__name__", "up"), matcher.clone()],
            )
            .await
            .unwrap();
        let tenants: Vec<&str> = got
            .iter()
            .map(|s| s.labels.get("__tenant_id__").unwrap())
            .collect();
        assert_eq!(tenants, want, "{matcher:?}");
    }
    // A matcher on the original label is the series' own __tenant_id__ to the store.
    let got = q
        .select(0, 10, &[m(MatchType::Equal, "original___tenant_id__", "x")])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels.get("job"), Some("edge"));
}

#[tokio::test]
async fn label_names_and_values_cover_the_tenants() {
    let q = two_tenants();
    let names = q.label_names(0, 10, &[]).await.unwrap();
    assert_eq!(
        names,
        ["__name__", "__tenant_id__", "job", "original___tenant_id__"]
    );
    let ids = q.label_values("__tenant_id__", 0, 10, &[]).await.unwrap();
    assert_eq!(ids, ["a", "b"]);
    // Only tenants holding a matching series.
    let ids = q
        .label_values("__tenant_id__", 0, 10, &[m(MatchType::Equal, "job", "db")])
        .await
        .unwrap();
    assert_eq!(ids, ["a"]);
    let jobs = q.label_values("job", 0, 10, &[]).await.unwrap();
    assert_eq!(jobs, ["api", "db", "edge"]);
    let jobs = q
        .label_values("job", 0, 10, &[m(MatchType::Equal, "__tenant_id__", "a")])
        .await
        .unwrap();
    assert_eq!(jobs, ["api", "db"]);
    let originals = q
        .label_values("original___tenant_id__", 0, 10, &[])
        .await
        .unwrap();
    assert_eq!(originals, ["x"]);
}

#[tokio::test]
async fn chunk_reads_are_labelled_too() {
    let q = two_tenants();
    let got = q
        .select_chunks(0, 10, &[m(MatchType::Equal, "job", "api")])
        .await
        .unwrap();
    let tenants: Vec<&str> = got
        .iter()
        .map(|s| s.labels.get("__tenant_id__").unwrap())
        .collect();
    assert_eq!(tenants, ["a", "b"]);
    assert!(got.iter().all(|s| !s.chunks.is_empty()));
}

#[tokio::test]
async fn one_failing_tenant_fails_the_read() {
    let q = FederatedQueryable::new(
        vec![
            (
                tenant("a"),
                Arc::new(Store(vec![series(&[("__name__", "up")], 1.0)])),
            ),
            (tenant("b"), Arc::new(Down)),
        ],
        1,
    );
    let err = q.select(0, 10, &[]).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    // ...unless the matchers leave that tenant out.
    let got = q
        .select(0, 10, &[m(MatchType::Equal, "__tenant_id__", "a")])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}
