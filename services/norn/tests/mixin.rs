//! The monitoring mixin (`deploy/mixin/`) against the real Norn and its runbooks:
//!
//! * the dashboards' JSON is what `deploy/mixin/generate.py` writes;
//! * `promtool check rules` accepts `alerts.yaml`;
//! * every alert has a `runbook_url` whose anchor is a heading of docs/operations.md, and every
//!   runbook heading (the `###` headings of its "… runbooks" sections) has an alert leading to it;
//! * every PromQL expression of every dashboard and alert parses, and every metric it names is
//!   exported by a running Norn cluster after a little traffic (a push, a flush, queries through
//!   the query-frontend, a rule group with a firing alert, and the events the mixin watches
//!   for that are cheap to cause), or is on one of two commented lists: other exporters'
//!   metrics, and Norn's metrics that appear only after an event the test does not cause
//!   (their registration is checked in the source instead).

mod common;
#[path = "mixin/promql.rs"]
mod promql;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Norn, free_port, request, series, urlencode};
use norn_proto::prometheus as pb;

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

/// Norn's metrics that exist only after an event this test does not cause (a failing bucket,
/// a damaged block, an overloaded querier, a request waiting in the queue at the moment of the
/// scrape): each with the source file that registers it, where the test finds its name.
const EVENT_ONLY: &[(&str, &str)] = &[
    // A bucket call failing (S3 down, bad credentials).
    (
        "norn_bucket_operation_failures_total",
        "shared/storage/src/metrics.rs",
    ),
    // A block the compactor cannot verify (corrupt chunks or index).
    (
        "norn_compactor_blocks_marked_for_no_compaction_total",
        "services/compactor/src/metrics.rs",
    ),
    // Every querier slot busy and the line full, or waiting past the deadline.
    (
        "norn_querier_rejected_queries_total",
        "services/querier/src/admission.rs",
    ),
    // A tenant's queue exists only while requests wait in it.
    (
        "norn_query_frontend_queue_length",
        "services/query-frontend/src/queue_metrics.rs",
    ),
    // A rule group overrunning its interval.
    (
        "norn_ruler_group_iterations_missed_total",
        "services/ruler/src/metrics.rs",
    ),
    // Rule output the ingesters refuse (out of order after a ring change, a series limit).
    (
        "norn_ruler_samples_rejected_total",
        "services/ruler/src/metrics.rs",
    ),
    // Damaged postings, series or chunks found by a query.
    (
        "norn_storegateway_block_errors_total",
        "services/store-gateway/src/metrics.rs",
    ),
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
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
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

/// The committed JSON is what `deploy/mixin/generate.py` writes (nobody edited one without
/// the other).
#[test]
fn dashboards_are_generated() {
    if !Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            !common::require_peers(),
            "python3 is missing but NORN_REQUIRE_PEERS=1"
        );
        eprintln!("SKIP: python3 not found");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = common::run_bounded(
        Command::new("python3")
            .arg(repo().join("deploy/mixin/generate.py"))
            .env("NORN_MIXIN_OUT", out.path()),
        Duration::from_secs(60),
    );
    assert!(run.ok(), "{}", run.text());
    let dir = repo().join("deploy/mixin/dashboards");
    let mut generated: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    generated.sort();
    let mut committed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    committed.sort();
    assert_eq!(generated, committed);
    for f in generated {
        assert_eq!(
            std::fs::read_to_string(out.path().join(&f)).unwrap(),
            std::fs::read_to_string(dir.join(&f)).unwrap(),
            "{f} differs from generate.py's output: run python3 deploy/mixin/generate.py"
        );
    }
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
    let exprs = dashboard_exprs().into_iter().chain(
        alerts()
            .into_iter()
            .map(|(n, e, _)| (format!("alert {n}"), e)),
    );
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
    let exprs = dashboard_exprs().into_iter().chain(
        alerts()
            .into_iter()
            .map(|(n, e, _)| (format!("alert {n}"), e)),
    );
    for (place, e) in exprs {
        let names = promql::metric_names(&promql::substitute_grafana_vars(&e))
            .unwrap_or_else(|err| panic!("{place}: {err}"));
        for n in names {
            wanted.entry(n).or_default().push(place.clone());
        }
    }
    let root = tempfile::tempdir().unwrap();
    let needed: BTreeSet<String> = wanted
        .keys()
        .filter(|n| !OTHER_EXPORTERS.contains(&n.as_str()))
        .filter(|n| !EVENT_ONLY.iter().any(|(e, _)| *e == n.as_str()))
        .cloned()
        .collect();
    let exported = scrape_cluster(root.path(), &needed);
    // The event-only ones are registered where the list says (a renamed metric fails here).
    for (name, file) in EVENT_ONLY {
        assert!(
            read(file).contains(&format!("\"{name}\"")),
            "{name} is not registered in {file}"
        );
    }
    let event_only = |n: &str| EVENT_ONLY.iter().any(|(e, _)| *e == n);
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(n, _)| {
            !exported.contains(*n) && !OTHER_EXPORTERS.contains(&n.as_str()) && !event_only(n)
        })
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
/// both processes export once every `needed` name is there (or after 90 s).
fn scrape_cluster(root: &Path, needed: &BTreeSet<String>) -> BTreeSet<String> {
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
        .arg(format!(
            "--common.storage.filesystem.dir={}",
            bucket.display()
        ))
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
        // Events the mixin watches for, made to happen: retention marks blocks for deletion,
        // a second tenant is refused, a query over 3 series fails (a failing rule), the
        // rules' output beyond 9 series is refused, an HA replica's samples are deduplicated.
        "--compactor.compaction-interval=2s".into(),
        "--compactor.cleanup-interval=2s".into(),
        "--compactor.blocks-retention-period=1m".into(),
        "--ingester.instance-limits.max-tenants=1".into(),
        "--querier.max-fetched-series-per-query=3".into(),
        "--ingester.max-global-series-per-user=9".into(),
        "--distributor.ha-tracker.enable=true".into(),
        "--distributor.ha-tracker.enable-for-all-users=true".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let backend = Norn::start_with_bucket(&root.join("backend"), &bucket, &args);
    frontend.wait_ready();

    let query_path = drive_traffic(&backend, &frontend);

    // Queries go on (through the frontend, and the querier's own API) until every needed
    // name is exported: some appear only after the store-gateway's sync, the ruler's poll,
    // the notifier's first post or the compactor's cleanup.
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, text) = get(&agent, &frontend.url(&query_path));
        assert_eq!(status, 200, "{text}");
        let (status, text) = get(
            &agent,
            &backend.url(&format!(
                "/prometheus/api/v1/query?query={}",
                urlencode("up")
            )),
        );
        assert_eq!(status, 200, "{text}");
        // A query with no time at all: stopped by its deadline (a `stopped` reason).
        let _ = get(&agent, &backend.url(&format!("{query_path}&timeout=0s")));
        let mut names = BTreeSet::new();
        for n in [&backend, &frontend] {
            let (status, text) = n.get_text("/metrics");
            assert_eq!(status, 200, "{text}");
            names.extend(promql::exposed_names(&text));
        }
        if needed.is_subset(&names) || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A GET as [`TENANT`]: status and body.
fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = agent
        .get(url)
        .header("X-Scope-OrgID", TENANT)
        .call()
        .expect("GET");
    let mut text = String::new();
    let _ = r.body_mut().as_reader().read_to_string(&mut text);
    (r.status().as_u16(), text)
}

const TENANT: &str = "team-mixin";

/// One round of writes, rules and a flush; returns the range query to repeat.
fn drive_traffic(backend: &Norn, frontend: &Norn) -> String {
    let agent = agent();
    // Two hours of `up` (2 series) and `other` (5 series), so a flush cuts blocks that are
    // shipped, loaded by the store-gateway and marked by retention.
    let end = common::now_ms() / 15_000 * 15_000;
    let two_hours = |name: &str, i: i64| {
        let samples: Vec<(i64, f64)> = (0..480)
            .map(|k| (end - (479 - k) * 15_000, (k * (i + 1)) as f64))
            .collect();
        series(&[("__name__", name), ("job", &format!("j{i}"))], &samples)
    };
    let mut ts: Vec<_> = (0..2).map(|i| two_hours("up", i)).collect();
    ts.extend((0..5).map(|i| two_hours("other", i)));
    let mut req = request(ts);
    // Help text over the 1024-byte max_metadata_length: dropped and counted.
    req.metadata.push(pb::MetricMetadata {
        r#type: 1,
        metric_family_name: "up".into(),
        help: "x".repeat(2000),
        unit: String::new(),
    });
    let (status, body) = backend.push(Some(TENANT), &req);
    assert_eq!(status, 200, "{body}");
    // A sample a day ahead: refused (a discarded-samples reason).
    let future = series(
        &[("__name__", "up"), ("job", "future")],
        &[(end + 86_400_000, 1.0)],
    );
    let (status, body) = backend.push(Some(TENANT), &request(vec![future]));
    assert!(
        status >= 400,
        "a sample a day ahead was accepted: {status} {body}"
    );
    // An HA pair: the first replica is elected, the second one's samples are deduplicated.
    for replica in ["r1", "r2"] {
        let s = series(
            &[
                ("__name__", "ha"),
                ("cluster", "c1"),
                ("__replica__", replica),
            ],
            &[(end, 1.0)],
        );
        let (status, body) = backend.push(Some(TENANT), &request(vec![s]));
        assert!(status < 300, "HA replica {replica}: {status} {body}");
    }
    // A second tenant, beyond --ingester.instance-limits.max-tenants=1: refused.
    let s = series(&[("__name__", "up")], &[(end, 1.0)]);
    let (status, body) = backend.push(Some("team-refused"), &request(vec![s]));
    assert!(
        status >= 500,
        "a second tenant was accepted: {status} {body}"
    );

    // Rules: a recording rule whose output goes over the series limit (refused), one whose
    // query fetches more than 3 series (fails), and an alert that fires at once (its posts
    // fail: nothing listens at the Alertmanager's address).
    let group = "name: mixin\ninterval: 1s\nrules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - record: other:count\n    expr: count(other)\n  - alert: AlwaysFiring\n    expr: vector(1)\n";
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
    let _ = frontend;
    format!(
        "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=60",
        urlencode("sum(rate(up[5m]))"),
        (end - 7_200_000) / 1000,
        end / 1000
    )
}
