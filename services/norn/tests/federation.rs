//! Tenant federation end to end (`--tenant-federation.enabled`): one query over several
//! tenants through the whole read path of `all` (query-frontend, queue, querier, ingesters),
//! every series labelled with its tenant, and the bounds that keep a federated read from
//! doing what its tenants may not.

mod common;

use common::{Norn, now_ms, request, series, urlencode};
use serde_json::Value;

/// `(labels without __name__ as "k=v,...", value)` of an instant vector, sorted.
fn vector(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no result: {v}"))
        .iter()
        .map(|r| {
            let m = r["metric"].as_object().unwrap();
            let labels: Vec<String> = m
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            (
                labels.join(","),
                r["value"][1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn strings(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_query_reads_several_tenants_each_series_labelled_with_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("runtime.yaml");
    std::fs::write(
        &rc,
        "overrides:\n  small:\n    max_fetched_series_per_query: 1\n    max_total_query_length: 1h\n",
    )
    .unwrap();
    let n = Norn::start(
        &dir.path().join("norn"),
        &[
            "--tenant-federation.enabled",
            "--tenant-federation.max-tenants=3",
            &format!("--runtime-config.file={}", rc.display()),
        ],
    );
    let now = now_ms();
    let push = |tenant: &str, ts| {
        let (s, body) = n.push(Some(tenant), &request(ts));
        assert_eq!(s, 200, "{tenant}: {body}");
    };
    push(
        "team-a",
        vec![
            series(&[("__name__", "up"), ("job", "api")], &[(now, 1.0)]),
            series(&[("__name__", "up"), ("job", "db")], &[(now, 2.0)]),
        ],
    );
    push(
        "team-b",
        vec![series(&[("__name__", "up"), ("job", "api")], &[(now, 3.0)])],
    );
    push(
        "small",
        vec![
            series(&[("__name__", "up"), ("job", "x")], &[(now, 4.0)]),
            series(&[("__name__", "up"), ("job", "y")], &[(now, 5.0)]),
        ],
    );
    let at = now as f64 / 1000.0;
    let query = |org: &str, q: &str| {
        n.get_json(
            Some(org),
            &format!("/prometheus/api/v1/query?query={}&time={at}", urlencode(q)),
        )
    };

    // The union, each series with its tenant: the same `up{job="api"}` of two tenants stays two.
    let (s, v) = query("team-b|team-a", "up");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        vector(&v),
        [
            ("__tenant_id__=team-a,job=api".to_string(), "1".to_string()),
            ("__tenant_id__=team-a,job=db".to_string(), "2".to_string()),
            ("__tenant_id__=team-b,job=api".to_string(), "3".to_string()),
        ]
    );
    let (s, v) = query("team-a|team-b", "sum by (__tenant_id__) (up)");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        vector(&v),
        [
            ("__tenant_id__=team-a".to_string(), "3".to_string()),
            ("__tenant_id__=team-b".to_string(), "3".to_string()),
        ]
    );
    // A matcher on __tenant_id__ picks a tenant.
    let (s, v) = query("team-a|team-b", r#"up{__tenant_id__="team-b"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        vector(&v),
        [("__tenant_id__=team-b,job=api".to_string(), "3".to_string())]
    );
    // One tenant is read as always: no __tenant_id__.
    let (_, v) = query("team-b", "up");
    assert_eq!(vector(&v), [("job=api".to_string(), "3".to_string())]);

    // A range query (split, queued and maybe cached by the query-frontend) federates too.
    let (s, v) = n.get_json(
        Some("team-a|team-b"),
        &format!(
            "/prometheus/api/v1/query_range?query={}&start={}&end={at}&step=15",
            urlencode("count by (__tenant_id__) (up)"),
            at - 60.0
        ),
    );
    assert_eq!(s, 200, "{v}");
    let tenants: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["__tenant_id__"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["team-a", "team-b"], "{v}");

    // Series, label names and values.
    let (s, v) = n.get_json(
        Some("team-a|team-b"),
        &format!(
            "/prometheus/api/v1/series?match[]=up&start={}&end={at}",
            at - 60.0
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = n.get_json(Some("team-a|team-b"), "/prometheus/api/v1/labels");
    assert_eq!(strings(&v), ["__name__", "__tenant_id__", "job"]);
    let (_, v) = n.get_json(
        Some("team-a|team-b"),
        "/prometheus/api/v1/label/__tenant_id__/values",
    );
    assert_eq!(strings(&v), ["team-a", "team-b"]);
    let (_, v) = n.get_json(
        Some("team-a|team-b"),
        &format!(
            "/prometheus/api/v1/label/__tenant_id__/values?match[]={}",
            urlencode(r#"up{job="db"}"#)
        ),
    );
    assert_eq!(strings(&v), ["team-a"]);

    // Each member's own limits hold inside a federated read: `small` may fetch 1 series.
    let (s, v) = query("team-a|small", "up");
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("maximum number of series"),
        "{v}"
    );
    // ...and the tightest query length of the members (small: 1h).
    let (s, v) = n.get_json(
        Some("team-a|small"),
        &format!(
            "/prometheus/api/v1/query_range?query=up&start={}&end={at}&step=60",
            at - 7200.0
        ),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("exceeds the limit"),
        "{v}"
    );

    // Hostile or wrong: too many tenants, an empty or invalid id, a federated write.
    for org in ["a|b|c|d", "team-a|", "team-a|bad/id"] {
        let (s, v) = query(org, "up");
        assert_eq!(s, 400, "{org}: {v}");
    }
    let (s, body) = n.push(
        Some("team-a|team-b"),
        &request(vec![series(&[("__name__", "up")], &[(now, 1.0)])]),
    );
    assert_eq!(s, 400, "{body}");
    let (_, v) = query("team-a", "up");
    assert_eq!(vector(&v).len(), 2, "the refused write wrote nothing: {v}");
}

#[test]
fn without_the_flag_several_tenants_are_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let (s, v) = n.get_json(Some("team-a|team-b"), "/prometheus/api/v1/query?query=up");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--tenant-federation.enabled"),
        "{v}"
    );
}
