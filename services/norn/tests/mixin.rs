//! The monitoring mixin (`deploy/mixin/`) against the real Norn and its runbooks:
//!
//! * `promtool check rules` accepts `alerts.yaml`;
//! * every alert has a `runbook_url` whose anchor is a heading of docs/operations.md, and every
//!   runbook heading (the `###` headings of its "… runbooks" sections) has an alert leading to it;
//! * every PromQL expression of every dashboard and alert parses, and every metric it names is
//!   exported by a running Norn cluster after a little traffic (a push, a flush, queries through
//!   the query-frontend, a rule group with a firing alert), or is on the commented allow-list
//!   of other exporters' metrics.

mod common;
#[path = "mixin/promql.rs"]
mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Norn, free_port, request, series, urlencode};

/// Metrics the mixin may use that Norn does not export: other exporters' series.
const OTHER_EXPORTERS: &[&str] = &[
    // cAdvisor (the kubelet): the ingester container's memory, against its limit.
    "container_memory_working_set_bytes",
    // kube-state-metrics: the container's memory limit.
    "kube_pod_container_resource_limits",
    // The kubelet's volume statistics: the compactor's free disk.
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every alerting rule of alerts.yaml: (name, expr, runbook_url).
fn alerts() -> Vec<(String, String, Option<String>)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read("deploy/mixin/alerts.yaml")).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .expect("a rule names an alert or a record")
                .to_string();
            let expr = r["expr"].as_str().expect("expr").to_string();
            let url = r["annotations"]["runbook_url"].as_str().map(str::to_string);
            out.push((name, expr, url));
        }
    }
    out
}

/// Every expression of every dashboard: (where, expr), template variables' `label_values`
/// metrics included as a plain selector.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dir = repo().join("deploy/mixin/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 11, "dashboards: {files:?}");
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        // The data source is a variable, never a fixed uid.
        let vars = d["templating"]["list"].as_array().expect("templating");
        assert!(
            vars.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
            "{name}: no datasource variable"
        );
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let q = v["definition"].as_str().expect("variable definition");
            let m = promql::label_values_metric(q)
                .unwrap_or_else(|| panic!("{name}: variable query {q}"));
            out.push((format!("{name} variable {}", v["name"]), m));
        }
        let mut n = 0;
        for p in d["panels"].as_array().expect("panels") {
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{name}: panel {} has a fixed data source",
                p["title"]
            );
            for t in p["targets"].as_array().expect("targets") {
                out.push((
                    format!("{name} panel {}", p["title"]),
                    t["expr"].as_str().expect("expr").to_string(),
                ));
                n += 1;
            }
        }
        assert!(n > 0, "{name} has no expression");
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// docs/operations.md: every heading's anchor, and the anchors of the runbooks (`###` under a
/// `##` heading that ends in "runbooks").
fn operations_anchors() -> (BTreeSet<String>, Vec<String>) {
    let text = read("docs/operations.md");
    let mut all = BTreeSet::new();
    let mut runbooks = Vec::new();
    let mut in_runbooks = false;
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            in_runbooks = h.trim().to_lowercase().ends_with("runbooks");
            all.insert(anchor(h));
        } else if let Some(h) = line.strip_prefix("### ") {
            let a = anchor(h);
            assert!(all.insert(a.clone()), "duplicate heading anchor #{a}");
            if in_runbooks {
                runbooks.push(a);
            }
        } else if let Some(h) = line.strip_prefix("# ") {
            all.insert(anchor(h));
        }
    }
    (all, runbooks)
}

#[test]
fn alerts_pass_promtool() {
    let Some(promtool) = common::peer("promtool") else {
        return;
    };
    let run = common::run_bounded(
        Command::new(promtool)
            .arg("check")
            .arg("rules")
            .arg(repo().join("deploy/mixin/alerts.yaml")),
        Duration::from_secs(60),
    );
    assert!(run.ok(), "{}", run.text());
    assert!(run.stdout.contains("SUCCESS"), "{}", run.text());
}

#[test]
fn every_alert_has_a_runbook_and_every_runbook_an_alert() {
    let (headings, runbooks) = operations_anchors();
    assert!(runbooks.len() >= 10, "runbooks found: {runbooks:?}");
    let mut linked = BTreeSet::new();
    for (name, _, url) in alerts() {
        let url = url.unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let a = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not into docs/operations.md"));
        assert!(
            headings.contains(a),
            "{name}: docs/operations.md has no heading #{a}"
        );
        linked.insert(a.to_string());
    }
    let orphans: Vec<&String> = runbooks.iter().filter(|r| !linked.contains(*r)).collect();
    assert!(
        orphans.is_empty(),
        "runbooks no alert leads to (give them an alert, or move them out of the runbook sections): {orphans:?}"
    );
}

#[test]
fn every_expression_parses() {
    let mut bad = Vec::new();
    let exprs = dashboard_exprs()
        .into_iter()
        .chain(alerts().into_iter().map(|(n, e, _)| (format!("alert {n}"), e)));
    for (place, e) in exprs {
        if let Err(err) = promql::metric_names(&promql::substitute_grafana_vars(&e)) {
            bad.push(format!("{place}: {e}: {err}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Every metric the mixin names against what a running cluster exports.
#[test]
fn mixin_metrics_are_exported_by_norn() {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let exprs = dashboard_exprs()
        .into_iter()
        .chain(alerts().into_iter().map(|(n, e, _)| (format!("alert {n}"), e)));
    for (place, e) in exprs {
        let names = promql::metric_names(&promql::substitute_grafana_vars(&e))
            .unwrap_or_else(|err| panic!("{place}: {err}"));
        for n in names {
            wanted.entry(n).or_default().push(place.clone());
        }
    }
    let root = tempfile::tempdir().unwrap();
    let exported = scrape_cluster(root.path());
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(n, _)| !exported.contains(*n) && !OTHER_EXPORTERS.contains(&n.as_str()))
        .map(|(n, places)| format!("{n} (in {})", places.join("; ")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics no Norn process exported:\n{}",
        missing.join("\n")
    );
    // The allow-list holds only what the mixin uses.
    for o in OTHER_EXPORTERS {
        assert!(wanted.contains_key(*o), "{o} is allow-listed but unused");
    }
}

/// Starts a cluster (one process with every component but the query-frontend, and a
/// query-frontend its querier pulls from), drives traffic through it and returns the names
/// both processes export.
fn scrape_cluster(root: &Path) -> BTreeSet<String> {
    let bucket = root.join("bucket");
    let gossip = [free_port(), free_port()];
    // Nothing listens here: the ruler's posts fail, which is what the notifier metrics count.
    let dead_alertmanager = free_port();
    let fe_dir = root.join("frontend");
    std::fs::create_dir_all(&fe_dir).unwrap();
    let (fe_http, fe_grpc) = (free_port(), free_port());
    let log = std::fs::File::create(fe_dir.join("norn.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={fe_http}"))
        .arg("--server.grpc-listen-address=127.0.0.1")
        .arg(format!("--server.grpc-listen-port={fe_grpc}"))
        .arg(format!("--common.storage.filesystem.dir={}", bucket.display()))
        .arg("--target=query-frontend")
        .arg("--query-frontend.cache-results=true")
        .args(common::gossip_args(gossip[1], &gossip[..1]))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the query-frontend");
    let mut frontend = Norn::adopt(child, fe_http, &fe_dir);

    let mut args = common::gossip_args(gossip[0], &gossip[..1]);
    args.extend([
        "--target=distributor,ingester,querier,store-gateway,compactor,ruler".to_string(),
        "--ingester.ring.replication-factor=1".into(),
        "--ingester.ring.instance-id=ingester-0".into(),
        "--ingester.ring.heartbeat-period=500ms".into(),
        "--store-gateway.sharding-ring.replication-factor=1".into(),
        "--blocks-storage.bucket-store.ignore-blocks-within=0".into(),
        "--blocks-storage.bucket-store.sync-interval=1s".into(),
        "--querier.query-store-after=0".into(),
        format!("--querier.frontend-address=127.0.0.1:{fe_grpc}"),
        "--ruler.evaluation-interval=1s".into(),
        "--ruler.poll-interval=1s".into(),
        format!("--ruler.alertmanager-url=http://127.0.0.1:{dead_alertmanager}"),
        "--compactor.first-level-compaction-wait-period=0s".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let backend = Norn::start_with_bucket(&root.join("backend"), &bucket, &args);
    frontend.wait_ready();

    drive_traffic(&backend, &frontend);

    let mut names = BTreeSet::new();
    for n in [&backend, &frontend] {
        let (status, text) = n.get_text("/metrics");
        assert_eq!(status, 200, "{text}");
        names.extend(promql::exposed_names(&text));
    }
    names
}

const TENANT: &str = "team-mixin";

fn drive_traffic(backend: &Norn, frontend: &Norn) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let call = |req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        let mut r = req.header("X-Scope-OrgID", TENANT).call().expect("request");
        let mut text = String::new();
        let _ = r.body_mut().as_reader().read_to_string(&mut text);
        (r.status().as_u16(), text)
    };

    // Two hours of a few series, so a flush cuts a block that is shipped and then loaded by
    // the store-gateway; and one sample far in the future, refused (a discarded-samples reason).
    let end = common::now_ms() / 15_000 * 15_000;
    let ts: Vec<_> = (0..5)
        .map(|i| {
            let samples: Vec<(i64, f64)> = (0..480)
                .map(|k| (end - (479 - k) * 15_000, (k * (i + 1)) as f64))
                .collect();
            series(&[("__name__", "up"), ("job", &format!("j{i}"))], &samples)
        })
        .collect();
    let (status, body) = backend.push(Some(TENANT), &request(ts));
    assert_eq!(status, 200, "{body}");
    let future = series(&[("__name__", "up"), ("job", "future")], &[(end + 86_400_000, 1.0)]);
    let (status, body) = backend.push(Some(TENANT), &request(vec![future]));
    assert!(status >= 400, "a sample a day ahead was accepted: {status} {body}");

    // A recording rule and an alert that fires at once (its posts fail: nothing listens).
    let group = "name: mixin\ninterval: 1s\nrules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: AlwaysFiring\n    expr: vector(1)\n";
    let mut r = agent
        .post(&backend.url("/prometheus/config/v1/rules/mixin"))
        .header("X-Scope-OrgID", TENANT)
        .header("Content-Type", "application/yaml")
        .send(group.as_bytes())
        .expect("POST rules");
    let mut text = String::new();
    let _ = r.body_mut().as_reader().read_to_string(&mut text);
    assert_eq!(r.status().as_u16(), 202, "{text}");

    // Cut and ship every head now.
    let mut r = agent
        .post(&backend.url("/ingester/flush?wait=true&force=true"))
        .send_empty()
        .expect("flush");
    let mut text = String::new();
    let _ = r.body_mut().as_reader().read_to_string(&mut text);
    assert!(r.status().as_u16() < 300, "flush: {} {text}", r.status());

    // Queries through the frontend (split, cached, queued, answered by the querier reading
    // the ingester and, once synced, the store-gateway), repeated until the store-gateway has
    // fetched from the bucket and the ruler's notifier has tried to post.
    let q = format!(
        "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=60",
        urlencode("sum(rate(up[5m]))"),
        (end - 7_200_000) / 1000,
        end / 1000
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = call(agent.get(&frontend.url(&q)));
        assert_eq!(status, 200, "{text}");
        let (_, metrics) = backend.get_text("/metrics");
        let fetched = metrics.contains("norn_storegateway_bucket_bytes_fetched_total{");
        let notified = metrics.contains("norn_ruler_notifications_errors_total{");
        if fetched && notified {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no store-gateway fetch ({fetched}) or notification attempt ({notified}) within 60s\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Through the backend's own query API too (the querier's request metrics).
    let (status, text) = call(agent.get(&backend.url(&format!(
        "/prometheus/api/v1/query?query={}",
        urlencode("up")
    ))));
    assert_eq!(status, 200, "{text}");
}
