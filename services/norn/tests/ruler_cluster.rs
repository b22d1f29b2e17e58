//! Rulers in microservices mode: an ingester, a distributor, a querier and two
//! `--target=ruler` processes joined only by gossip. The rulers query the ingester through the
//! ingester ring and write through the ring's replication (no distributor or querier in their
//! process); they split the groups through the ruler ring (`/ruler/ring`), each group
//! evaluated by exactly one of them, and the recorded series equal the querier's answer for
//! the same expression at the same timestamps. `/prometheus/api/v1/rules` and `/alerts` asked
//! of either ruler show the whole cluster (each asks the other and merges); a ruler's own
//! share is what it answers with `X-Norn-Ruler-Local: true`. When one ruler is killed (-9),
//! the other evaluates its groups and, once the dead one is out of the ring, answers alone
//! for the whole cluster again (until then a 503 naming the dead ruler).

mod common;

use std::time::{Duration, Instant};

use common::{Norn, all_active, free_port, now_ms, request, series, urlencode};

const TENANT: &str = "team-r";
const GROUPS: usize = 12;

fn start(root: &std::path::Path) -> Vec<Norn> {
    let bucket = root.join("bucket");
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let seeds = &ports[..1];
    let member = |i: usize, name: &str, extra: &[String]| {
        let mut a = common::gossip_args(ports[i], seeds);
        a.extend([
            "--ingester.ring.replication-factor=1".to_string(),
            "--ingester.ring.heartbeat-period=500ms".to_string(),
            "--ruler.ring.heartbeat-period=500ms".to_string(),
            "--ruler.ring.heartbeat-timeout=5s".to_string(),
            "--ruler.poll-interval=1s".to_string(),
        ]);
        a.extend(extra.iter().cloned());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        Norn::start_with_bucket(&root.join(name), &bucket, &a)
    };
    vec![
        member(
            0,
            "ingester",
            &[
                "--target=ingester".into(),
                "--ingester.ring.instance-id=ingester-0".into(),
            ],
        ),
        member(1, "distributor", &["--target=distributor".into()]),
        member(2, "querier", &["--target=querier".into()]),
        member(
            3,
            "ruler-0",
            &[
                "--target=ruler".into(),
                "--ruler.ring.instance-id=ruler-0".into(),
            ],
        ),
        member(
            4,
            "ruler-1",
            &[
                "--target=ruler".into(),
                "--ruler.ring.instance-id=ruler-1".into(),
            ],
        ),
    ]
}

fn instant(n: &Norn, q: &str, t_ms: i64) -> Vec<serde_json::Value> {
    let (status, v) = n.get_json(
        Some(TENANT),
        &format!(
            "/prometheus/api/v1/query?query={}&time={}",
            urlencode(q),
            t_ms as f64 / 1000.0
        ),
    );
    assert_eq!(status, 200, "{v}");
    v["data"]["result"].as_array().unwrap().clone()
}

/// GET as the tenant; `local` asks for the ruler's own answer only (as another ruler does).
fn get(n: &Norn, path: &str, local: bool) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(&n.url(path)).header("X-Scope-OrgID", TENANT);
    if local {
        req = req.header("X-Norn-Ruler-Local", "true");
    }
    let mut resp = req.call().expect("request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// The names of the groups of a `/rules` answer reported evaluated (health `ok` on every
/// rule); empty when the request failed.
fn ok_groups(status: u16, v: &serde_json::Value) -> Vec<String> {
    if status != 200 {
        return Vec::new();
    }
    v["data"]["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .filter(|g| {
                    g["rules"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().all(|r| r["health"] == "ok"))
                })
                .map(|g| g["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The groups a ruler itself reports as evaluated.
fn evaluated_by(n: &Norn) -> Vec<String> {
    let (status, v) = get(n, "/prometheus/api/v1/rules", true);
    ok_groups(status, &v)
}

/// The groups the cluster reports as evaluated, asked of `n`; a failed request must be the
/// 503 naming a ruler that did not answer.
fn evaluated_in_cluster(n: &Norn) -> Vec<String> {
    let (status, v) = get(n, "/prometheus/api/v1/rules", false);
    if status != 200 {
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["errorType"], "unavailable", "{v}");
        assert!(v["error"].as_str().unwrap().contains("ruler-"), "{v}");
        eprintln!("cluster answer failed as it should: {}", v["error"]);
    }
    ok_groups(status, &v)
}

/// The alert names `/alerts` asked of `n` lists (empty when the request failed).
fn alert_names(n: &Norn) -> Vec<String> {
    let (status, v) = get(n, "/prometheus/api/v1/alerts", false);
    if status != 200 {
        return Vec::new();
    }
    let mut names: Vec<String> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn all_groups() -> Vec<String> {
    let mut g: Vec<String> = (0..GROUPS).map(|k| format!("g{k}")).collect();
    g.sort();
    g
}

#[test]
fn two_rulers_split_groups_and_write_through_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = start(dir.path());
    let (distributor, querier, r0, r1) = (&procs[1], &procs[2], &procs[3], &procs[4]);
    for r in [r0, r1] {
        common::wait_ring_page(
            r,
            "/ruler/ring",
            "two ACTIVE rulers",
            Duration::from_secs(60),
            all_active(2),
        );
    }
    common::wait_ring_page(
        distributor,
        "/ring",
        "the ingester",
        Duration::from_secs(60),
        all_active(1),
    );
    let start_ms = now_ms() / 1000 * 1000 - 10_000;
    let samples: Vec<(i64, f64)> = (0..200).map(|i| (start_ms + i * 1000, i as f64)).collect();
    let (status, body) = distributor.push(
        Some(TENANT),
        &request(vec![series(&[("__name__", "up"), ("job", "x")], &samples)]),
    );
    assert_eq!(status, 200, "{body}");

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for k in 0..GROUPS {
        let group = format!(
            "name: g{k}\ninterval: 1s\nrules:\n  - record: rec_{k}\n    expr: up * {k}\n  - alert: Up{k}\n    expr: up > -1\n    for: 0s\n"
        );
        let resp = agent
            .post(&r0.url("/prometheus/config/v1/rules/ns"))
            .header("X-Scope-OrgID", TENANT)
            .send(group.as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202);
    }

    // Each group ends up evaluated by exactly one ruler, and both rulers have a share.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (on0, on1) = loop {
        let (a, b) = (evaluated_by(r0), evaluated_by(r1));
        if a.len() + b.len() == GROUPS && a.iter().all(|g| !b.contains(g)) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "groups not split: {a:?} / {b:?}\n{}\n{}",
            r0.log(),
            r1.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(!on0.is_empty() && !on1.is_empty(), "{on0:?} / {on1:?}");

    // Either ruler answers for the cluster: every group once, evaluated, and the alerts of
    // the groups of both.
    for r in [r0, r1] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, v) = get(r, "/prometheus/api/v1/rules", false);
            assert_eq!(status, 200, "{v}");
            let mut names: Vec<String> = v["data"]["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(names.len(), GROUPS, "every group once: {names:?}");
            names.sort();
            assert_eq!(names, all_groups());
            let mut ok = ok_groups(status, &v);
            ok.sort();
            let alerts = alert_names(r);
            let want_alerts: Vec<String> = {
                let mut a: Vec<String> = (0..GROUPS).map(|k| format!("Up{k}")).collect();
                a.sort();
                a
            };
            if ok == all_groups() && alerts == want_alerts {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not answer for the cluster: evaluated {ok:?}, alerts {alerts:?}\n{}",
                r.url(""),
                r.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    // Every group's output, wherever it was evaluated, equals the querier's answer.
    for k in 0..GROUPS {
        let got = querier.raw_samples(
            Some(TENANT),
            &format!("rec_{k}"),
            now_ms() - 60_000,
            now_ms(),
        );
        assert_eq!(got.len(), 1, "rec_{k}: {got:?}");
        assert!(!got[0].1.is_empty());
        for &(t, v) in &got[0].1 {
            let want = instant(querier, &format!("up * {k}"), t);
            let want: f64 = want[0]["value"][1].as_str().unwrap().parse().unwrap();
            assert_eq!(v, want, "rec_{k} at {t}");
        }
    }

    // kill -9 one ruler: once its heartbeat is older than the timeout (5s) the other owns
    // every group, and the dead one's groups go on being evaluated there; the survivor then
    // answers alone for the cluster (while the dead one is still in the ring, a 503).
    procs[4].kill9();
    let killed_at = now_ms();
    let (querier, r0) = (&procs[2], &procs[3]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Both asked every time: the cluster answer is checked (200, or the 503 naming the
        // dead ruler) from right after the kill on.
        let (own, cluster) = (evaluated_by(r0), evaluated_in_cluster(r0));
        if own.len() == GROUPS && cluster.len() == GROUPS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the surviving ruler did not take over: {own:?} / {cluster:?}\n{}",
            r0.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for g in &on1 {
        let k: usize = g.trim_start_matches('g').parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = querier.raw_samples(Some(TENANT), &format!("rec_{k}"), killed_at, now_ms());
            if got.first().is_some_and(|(_, s)| !s.is_empty()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{g} (on the killed ruler) not evaluated after the kill"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}
