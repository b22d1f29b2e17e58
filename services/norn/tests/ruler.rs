//! The ruler in the real process (`--target=all`, filesystem bucket, 1s intervals): rule groups
//! uploaded over Mimir's config API (good and bad), listed back, evaluated, their recorded
//! series equal to the querier's answer for the same expression at the same timestamps;
//! an alerting rule's alert goes pending then firing, shown by `/api/v1/alerts` and
//! `/api/v1/rules` and written as `ALERTS` / `ALERTS_FOR_STATE` series; a deleted group's
//! series end at once (stale markers); and tenants never see or touch each other's rules,
//! alerts or series.
//!
//! Waits are bounded and generous (a loaded 2-core box); assertions are on values only.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Norn, now_ms, request, series, urlencode};

const A: &str = "tenant-a";
const B: &str = "tenant-b";

/// Good group for tenant A: a recording rule with labels, one that reads the first one's
/// output of the same evaluation, and an alerting rule on job `a` (pending for 5s, then
/// firing; its `ALERTS` series are written from the third evaluation, once the `for` state
/// was restored).
const G1: &str = r#"
name: g1
interval: 1s
rules:
  - record: job:up:x2
    expr: up * 2
    labels:
      team: t1
  - record: tenant:up:sum
    expr: sum(job:up:x2)
  - alert: JobUp
    expr: up{job="a"} > 0
    for: 5s
    labels:
      severity: '{{ $labels.job }}-page'
    annotations:
      summary: 'job {{ $labels.job }} is up'
"#;

const G2: &str = r#"
name: g2
rules:
  - record: up:count
    expr: count(up)
"#;

struct Http(ureq::Agent);

impl Http {
    fn new() -> Http {
        Http(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
        )
    }

    fn read(mut resp: ureq::http::Response<ureq::Body>) -> (u16, String) {
        let status = resp.status().as_u16();
        let mut text = String::new();
        let _ = resp.body_mut().as_reader().read_to_string(&mut text);
        (status, text)
    }

    fn get(&self, n: &Norn, tenant: &str, path: &str) -> (u16, String) {
        Self::read(
            self.0
                .get(&n.url(path))
                .header("X-Scope-OrgID", tenant)
                .call()
                .expect("GET"),
        )
    }

    fn post(&self, n: &Norn, tenant: &str, path: &str, body: &str) -> (u16, String) {
        Self::read(
            self.0
                .post(&n.url(path))
                .header("X-Scope-OrgID", tenant)
                .header("Content-Type", "application/yaml")
                .send(body.as_bytes())
                .expect("POST"),
        )
    }

    fn delete(&self, n: &Norn, tenant: &str, path: &str) -> (u16, String) {
        Self::read(
            self.0
                .delete(&n.url(path))
                .header("X-Scope-OrgID", tenant)
                .call()
                .expect("DELETE"),
        )
    }
}

const RULES: &str = "/prometheus/config/v1/rules";

/// `up{job=...}` for a tenant: a sample every second from 30s ago to 3 minutes ahead (within
/// the creation grace period), values changing every second so that evaluations at different
/// times see different data.
fn push_up(n: &Norn, tenant: &str, jobs: &[(&str, f64)]) {
    let start = now_ms() / 1000 * 1000 - 30_000;
    let ts = jobs
        .iter()
        .map(|(job, base)| {
            let samples: Vec<(i64, f64)> = (0..210)
                .map(|i| (start + i * 1000, base + i as f64))
                .collect();
            series(&[("__name__", "up"), ("job", job)], &samples)
        })
        .collect();
    let (status, body) = n.push(Some(tenant), &request(ts));
    assert_eq!(status, 200, "{body}");
}

/// Instant query for `tenant` at `t_ms`: `(labels as JSON text, value)` sorted.
fn instant(n: &Norn, tenant: &str, q: &str, t_ms: i64) -> Vec<(String, f64)> {
    let (status, v) = n.get_json(
        Some(tenant),
        &format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode(q),
            t_ms as f64 / 1000.0
        ),
    );
    assert_eq!(status, 200, "{v}");
    let mut out: Vec<(String, f64)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"].to_string(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start() -> (tempfile::TempDir, Norn) {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(
        dir.path(),
        &[
            "--ruler.evaluation-interval=1s",
            "--ruler.poll-interval=1s",
            "--ruler.max-rules-per-rule-group=3",
            "--ruler.max-rule-groups-per-tenant=2",
        ],
    );
    (dir, n)
}

/// Bad uploads get a 400 naming the rule and the problem, and change nothing stored.
fn bad_uploads_are_refused(n: &Norn, http: &Http) {
    let ns = format!("{RULES}/ns1");
    let cases: &[(&str, &[&str])] = &[
        (
            "name: g1\nrules:\n  - record: good\n    expr: up\n  - record: bad:rule\n    expr: sum(up\n",
            &["rule 2 (record \"bad:rule\")", "could not parse expression"],
        ),
        (
            "name: g1\ninterval: 5banana\nrules:\n  - record: r\n    expr: up\n",
            &["invalid interval \"5banana\""],
        ),
        (
            "name: g1\nrules:\n  - alert: A\n    expr: up\n    for: forever\n",
            &["rule 1 (alert \"A\")", "invalid for \"forever\""],
        ),
        (
            "name: g1\nrules: [{record: a, expr: up}, {record: b, expr: up}, {record: c, expr: up}, {record: d, expr: up}]\n",
            &["4 rules", "ruler_max_rules_per_rule_group"],
        ),
        ("name: g1\nrulez: []\n", &["rulez"]),
        (
            "name: g3\nrules: [{record: a, expr: up}]\n",
            &["ruler_max_rule_groups_per_tenant"],
        ),
    ];
    for (body, wants) in cases {
        let (status, text) = http.post(n, A, &ns, body);
        assert_eq!(status, 400, "{body}\n{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errorType"], "bad_data");
        let text = v["error"].as_str().unwrap();
        for w in *wants {
            assert!(text.contains(w), "{w:?} missing from {text}");
        }
    }
    // Too large a body (over the ruler's 512 KiB; small enough that the server reads it
    // before answering, so the client sees the 413 rather than a closed connection).
    let huge = format!(
        "name: g1\nrules:\n  - record: r\n    expr: up\n#{}\n",
        "x".repeat(600 << 10)
    );
    let (status, _) = http.post(n, A, &ns, &huge);
    assert_eq!(status, 413);
    let (status, text) = http.get(n, A, &format!("{ns}/g1"));
    assert_eq!(status, 200, "{text}");
    let stored: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let want: serde_yaml::Value = serde_yaml::from_str(G1).unwrap();
    assert_eq!(stored, want, "the stored group is unchanged");
}

fn upload_and_list(n: &Norn, http: &Http) {
    for g in [G1, G2] {
        let (status, text) = http.post(n, A, &format!("{RULES}/ns1"), g);
        assert_eq!(status, 202, "{text}");
    }
    bad_uploads_are_refused(n, http);
    let (status, text) = http.get(n, A, RULES);
    assert_eq!(status, 200, "{text}");
    let all: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let names: Vec<&str> = all["ns1"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["g1", "g2"]);
    let (status, text) = http.get(n, A, &format!("{RULES}/ns1"));
    assert_eq!(status, 200);
    assert_eq!(
        serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap(),
        all
    );
    assert_eq!(http.get(n, A, &format!("{RULES}/ns1/nope")).0, 404);
    assert_eq!(http.get(n, A, &format!("{RULES}/nope")).0, 404);
}

/// Recorded samples at the timestamps they were written equal the querier's answer for the
/// rule's expression at the same timestamps.
fn recorded_series_match_the_querier(n: &Norn) {
    let x2 = wait_for("three evaluations of g1", Duration::from_secs(60), || {
        let got = n.raw_samples(Some(A), "job:up:x2", now_ms() - 60_000, now_ms());
        (got.len() == 2 && got.iter().all(|(_, s)| s.len() >= 3)).then_some(got)
    });
    for (labels, samples) in &x2 {
        let v: serde_json::Value = serde_json::from_str(labels).unwrap();
        assert_eq!(v["team"], "t1", "{labels}");
        assert!(
            v["job"] == "a" || v["job"] == "b",
            "only A's series: {labels}"
        );
        let job = v["job"].as_str().unwrap();
        for &(t, got) in samples {
            let want = instant(n, A, &format!("up{{job=\"{job}\"}} * 2"), t);
            assert_eq!(want.len(), 1, "{want:?}");
            assert_eq!(got, want[0].1, "job:up:x2{{job={job}}} at {t}");
        }
    }
    let sums = n.raw_samples(Some(A), "tenant:up:sum", now_ms() - 60_000, now_ms());
    assert_eq!(sums.len(), 1, "{sums:?}");
    assert!(sums[0].1.len() >= 3);
    for &(t, got) in &sums[0].1 {
        // The second rule saw the first one's output of the same evaluation.
        let want = instant(n, A, "sum(up) * 2", t);
        assert_eq!(got, want[0].1, "tenant:up:sum at {t}");
    }
}

/// The alert goes pending, then fires; `/api/v1/alerts` shows it with its templated labels
/// and annotations, and the `ALERTS` series hold both states at the times they were held.
fn alerts_go_pending_then_firing(n: &Norn, http: &Http) {
    let alert = wait_for("JobUp to fire", Duration::from_secs(60), || {
        let (_, v) = n.get_json(Some(A), "/prometheus/api/v1/alerts");
        let alerts = v["data"]["alerts"].as_array()?.clone();
        (alerts.len() == 1 && alerts[0]["state"] == "firing").then(|| alerts[0].clone())
    });
    assert_eq!(
        alert["labels"],
        serde_json::json!({"alertname": "JobUp", "job": "a", "severity": "a-page"})
    );
    assert_eq!(
        alert["annotations"],
        serde_json::json!({"summary": "job a is up"})
    );
    let value: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!(value >= 1.0, "{alert}");
    let active_at = chrono::DateTime::parse_from_rfc3339(alert["activeAt"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    // The history in storage: pending first, then firing, 5s after it went active.
    let history = n.raw_samples(Some(A), "ALERTS", now_ms() - 120_000, now_ms());
    let times = |state: &str| -> Vec<i64> {
        history
            .iter()
            .filter(|(l, _)| l.contains(&format!("\"alertstate\":\"{state}\"")))
            .flat_map(|(l, s)| {
                assert!(l.contains("\"severity\":\"a-page\""), "{l}");
                s.iter().map(|(t, v)| {
                    assert_eq!(*v, 1.0);
                    *t
                })
            })
            .collect()
    };
    let (pending, firing) = (times("pending"), times("firing"));
    assert!(!pending.is_empty() && !firing.is_empty(), "{history:?}");
    assert!(pending.iter().max() < firing.iter().min(), "{history:?}");
    assert!(
        firing.iter().min().unwrap() - active_at >= 5_000,
        "{history:?}"
    );
    let for_state = instant(n, A, "ALERTS_FOR_STATE", now_ms());
    assert_eq!(for_state.len(), 1, "{for_state:?}");
    assert_eq!(for_state[0].1, (active_at / 1000) as f64);
    // B sees none of it.
    let (_, text) = http.get(n, B, "/prometheus/api/v1/alerts");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"]["alerts"], serde_json::json!([]), "{v}");
    assert!(instant(n, B, "ALERTS", now_ms()).is_empty());
    assert!(n.metric("norn_ruler_alerts{state=\"firing\",tenant=\"tenant-a\"}") >= 1.0);
}

fn prometheus_rules_api(n: &Norn, http: &Http) {
    let (status, v) = n.get_json(Some(A), "/prometheus/api/v1/rules");
    assert_eq!(status, 200, "{v}");
    let groups = v["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    let g1 = &groups[0];
    assert_eq!(g1["name"], "g1");
    assert_eq!(g1["file"], "ns1");
    assert_eq!(g1["interval"], 1.0);
    let rules = g1["rules"].as_array().unwrap();
    assert_eq!(rules[0]["type"], "recording");
    assert_eq!(rules[0]["health"], "ok", "{v}");
    assert_eq!(rules[2]["type"], "alerting");
    assert_eq!(rules[2]["health"], "ok", "{v}");
    assert!(rules[2].get("lastError").is_none(), "{v}");
    assert_eq!(rules[2]["duration"], 5.0);
    assert_eq!(rules[2]["keepFiringFor"], 0.0);
    assert_eq!(rules[2]["state"], "firing", "{v}");
    assert_eq!(rules[2]["labels"]["severity"], "{{ $labels.job }}-page");
    let alerts = rules[2]["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{v}");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["labels"]["severity"], "a-page");
    let (_, v) = n.get_json(Some(A), "/prometheus/api/v1/rules?type=alert");
    let groups = v["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "g2 has no alerting rule: {v}");
    assert_eq!(groups[0]["rules"].as_array().unwrap().len(), 1);
    let (_, v) = n.get_json(
        Some(A),
        &format!("/prometheus/api/v1/rules?{}=g2", urlencode("rule_group[]")),
    );
    assert_eq!(v["data"]["groups"][0]["name"], "g2");
    assert_eq!(v["data"]["groups"].as_array().unwrap().len(), 1);
    let (_, v) = n.get_json(
        Some(A),
        &format!(
            "/prometheus/api/v1/rules?{}=tenant:up:sum",
            urlencode("rule_name[]")
        ),
    );
    assert_eq!(v["data"]["groups"][0]["rules"][0]["name"], "tenant:up:sum");
    let (status, _) = n.get_json(Some(A), "/prometheus/api/v1/rules?type=banana");
    assert_eq!(status, 400);
    let (_, text) = http.get(n, B, "/prometheus/api/v1/rules");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["file"] != "ns1" || g["name"] != "g2"),
        "B never lists A's groups: {v}"
    );
}

/// B's calls never see, change or delete A's rules; B's rules see only B's series.
fn tenants_are_isolated(n: &Norn, http: &Http) {
    assert_eq!(http.get(n, B, RULES).0, 404, "B has no groups");
    assert_eq!(http.get(n, B, &format!("{RULES}/ns1/g1")).0, 404);
    assert_eq!(http.delete(n, B, &format!("{RULES}/ns1/g1")).0, 404);
    assert_eq!(http.delete(n, B, &format!("{RULES}/ns1")).0, 404);
    let b_group = "name: g1\ninterval: 1s\nrules:\n  - record: tenant:up:sum\n    expr: sum(up)\n";
    let (status, text) = http.post(n, B, &format!("{RULES}/ns1"), b_group);
    assert_eq!(status, 202, "{text}");
    let (_, text) = http.get(n, A, &format!("{RULES}/ns1/g1"));
    assert_eq!(
        serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap(),
        serde_yaml::from_str::<serde_yaml::Value>(G1).unwrap(),
        "A's g1 is untouched by B's upload of a group with the same name"
    );
    let b_sums = wait_for("B's rule to evaluate", Duration::from_secs(60), || {
        let got = n.raw_samples(Some(B), "tenant:up:sum", now_ms() - 60_000, now_ms());
        (got.len() == 1 && got[0].1.len() >= 2).then_some(got)
    });
    for &(t, got) in &b_sums[0].1 {
        assert_eq!(got, instant(n, B, "sum(up)", t)[0].1, "B's sum at {t}");
        let a = instant(n, A, "sum(up)", t);
        assert_ne!(got, a[0].1, "B's rule never reads A's series");
    }
    // A's recorded series never carry B's job.
    let a_jobs = instant(n, A, "job:up:x2", now_ms());
    assert!(
        a_jobs.iter().all(|(l, _)| !l.contains("\"c\"")),
        "{a_jobs:?}"
    );
}

/// Deleting a group stops it and ends its series at once: an instant query right after the
/// delete no longer returns them (without stale markers they would linger for the 5m lookback).
fn deleted_group_series_go_stale(n: &Norn, http: &Http) {
    assert_eq!(instant(n, A, "job:up:x2", now_ms()).len(), 2);
    let (status, text) = http.delete(n, A, &format!("{RULES}/ns1/g1"));
    assert_eq!(status, 202, "{text}");
    let t = now_ms() + 1;
    let q = "{__name__=~\"job:up:x2|tenant:up:sum|ALERTS|ALERTS_FOR_STATE\"}";
    let left = instant(n, A, q, t);
    assert!(left.is_empty(), "still returned after delete: {left:?}");
    // Stays gone: the group no longer evaluates.
    std::thread::sleep(Duration::from_secs(3));
    assert!(instant(n, A, q, now_ms()).is_empty());
    assert_eq!(http.get(n, A, &format!("{RULES}/ns1/g1")).0, 404);
    // B's group of the same name still evaluates.
    assert_eq!(http.get(n, B, &format!("{RULES}/ns1/g1")).0, 200);
    let b = instant(n, B, "tenant:up:sum", now_ms());
    assert_eq!(b.len(), 1, "{b:?}");
    // Deleting a whole namespace.
    let (status, _) = http.delete(n, A, &format!("{RULES}/ns1"));
    assert_eq!(status, 202);
    assert_eq!(http.get(n, A, RULES).0, 404);
}

#[test]
fn ruler_records_isolates_tenants_and_marks_deleted_groups_stale() {
    let (_dir, n) = start();
    let http = Http::new();
    push_up(&n, A, &[("a", 1.0), ("b", 1000.0)]);
    push_up(&n, B, &[("c", 50_000.0)]);
    upload_and_list(&n, &http);
    recorded_series_match_the_querier(&n);
    alerts_go_pending_then_firing(&n, &http);
    prometheus_rules_api(&n, &http);
    tenants_are_isolated(&n, &http);
    deleted_group_series_go_stale(&n, &http);
    assert!(n.metric("norn_ruler_rule_evaluations_total{tenant=\"tenant-a\"}") > 0.0);
    assert!(n.metric("norn_ruler_group_iterations_total{tenant=\"tenant-b\"}") > 0.0);
}

/// `--ruler-storage.backend=local`: rule files in `<dir>/<tenant>/<namespace>` are evaluated and
/// listed; the config API refuses changes.
#[test]
fn local_rule_files_are_evaluated_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join(A)).unwrap();
    std::fs::write(
        rules.join(A).join("team.yaml"),
        "groups:\n  - name: local\n    interval: 1s\n    rules:\n      - record: job:up:x3\n        expr: up * 3\n",
    )
    .unwrap();
    // An Alertmanager URL builds the notifier; with no alerting rule nothing is posted, but the
    // process must start and stop cleanly with it (the stop drains the notifier).
    let am = format!(
        "--ruler.alertmanager-url=http://127.0.0.1:{}/alertmanager",
        common::free_port()
    );
    let mut n = Norn::start(
        &dir.path().join("norn"),
        &[
            "--ruler.poll-interval=1s",
            "--ruler-storage.backend=local",
            &format!("--ruler-storage.local.directory={}", rules.display()),
            &am,
        ],
    );
    let http = Http::new();
    push_up(&n, A, &[("a", 7.0)]);
    let got = wait_for(
        "the local group to evaluate",
        Duration::from_secs(60),
        || {
            let got = n.raw_samples(Some(A), "job:up:x3", now_ms() - 60_000, now_ms());
            (got.len() == 1 && got[0].1.len() >= 2).then_some(got)
        },
    );
    for &(t, v) in &got[0].1 {
        assert_eq!(v, instant(&n, A, "up * 3", t)[0].1, "job:up:x3 at {t}");
    }
    let (status, text) = http.get(&n, A, RULES);
    assert_eq!(status, 200);
    assert!(
        text.contains("team.yaml") && text.contains("job:up:x3"),
        "{text}"
    );
    let (status, text) = http.post(&n, A, &format!("{RULES}/team.yaml"), G2);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert_eq!(http.delete(&n, A, &format!("{RULES}/team.yaml")).0, 400);
    let (_, v) = n.get_json(Some(A), "/prometheus/api/v1/rules");
    assert_eq!(v["data"]["groups"][0]["file"], "team.yaml", "{v}");
    assert_eq!(v["data"]["groups"][0]["rules"][0]["health"], "ok", "{v}");
    assert_eq!(http.get(&n, B, RULES).0, 404, "B has no rule files");
    let status = n.stop();
    assert!(status.success(), "{status}\n{}", n.log());
}
