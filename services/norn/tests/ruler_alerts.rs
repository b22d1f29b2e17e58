//! Alerting rules end to end in the real process (`--target=all`, filesystem bucket, 1s
//! intervals):
//! * an alert evaluated by Norn's ruler reaches a real Alertmanager (Debian's
//!   `prometheus-alertmanager`, which scripts/test.sh installs) and its webhook receiver —
//!   served by this test — firing with the rule's templated labels and annotations, then
//!   resolved once its series ends;
//! * a pending alert's `for` progress survives a restart of the process (restored from
//!   `ALERTS_FOR_STATE`, with the downtime not counted, as Prometheus restores it).
//!
//! Waits are bounded and generous (a loaded 2-core box); assertions are on values only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Norn, free_port, now_ms, request, series};

const TENANT: &str = "team-a";
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const WAIT: Duration = Duration::from_secs(60);

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Stores `group` in namespace `ns` for the tenant.
fn upload(n: &Norn, ns: &str, group: &str) {
    let mut resp = http()
        .post(&n.url(&format!("/prometheus/config/v1/rules/{ns}")))
        .header("X-Scope-OrgID", TENANT)
        .header("Content-Type", "application/yaml")
        .send(group.as_bytes())
        .expect("POST rules");
    let mut body = String::new();
    let _ = resp.body_mut().as_reader().read_to_string(&mut body);
    assert_eq!(resp.status().as_u16(), 202, "{body}");
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The tenant's active alerts as `/api/v1/alerts` shows them.
fn alerts(n: &Norn) -> Vec<serde_json::Value> {
    let (status, v) = n.get_json(Some(TENANT), "/prometheus/api/v1/alerts");
    assert_eq!(status, 200, "{v}");
    v["data"]["alerts"].as_array().cloned().unwrap_or_default()
}

fn rfc3339_ms(v: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// An Alertmanager process routing everything to `webhook`, killed on drop.
struct Alertmanager {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Alertmanager {
    fn start(webhook: &str) -> Alertmanager {
        assert!(
            Path::new(ALERTMANAGER).is_file(),
            "{ALERTMANAGER} not found: install Debian's prometheus-alertmanager \
             (scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning prometheus-alertmanager");
        let am = Alertmanager { child, dir, port };
        wait_for("alertmanager to be ready", || {
            let r = http()
                .get(&format!("http://127.0.0.1:{port}/-/ready"))
                .call()
                .ok()?;
            (r.status().as_u16() == 200).then_some(())
        });
        am
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            eprintln!("--- alertmanager log ---\n{log}");
        }
    }
}

/// A webhook receiver on a thread: every notification's JSON body, in arrival order.
fn webhook() -> (String, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok() {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (url, rx)
}

/// The next notification with `status` (firing or resolved); earlier others are skipped.
fn next_with_status(rx: &mpsc::Receiver<serde_json::Value>, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {status} notification within {WAIT:?}"));
        if n["status"] == status {
            return n;
        }
    }
}

const HIGH_LEVEL: &str = r#"
name: levels
interval: 1s
rules:
  - alert: LevelHigh
    expr: level > 5
    labels:
      severity: page
      owner: '{{ $labels.team }}'
    annotations:
      summary: 'level of {{ $labels.team }} is {{ $value }}'
"#;

#[test]
fn evaluated_alerts_reach_a_real_alertmanager_firing_then_resolved() {
    let (hook, notifications) = webhook();
    let am = Alertmanager::start(&hook);
    let dir = tempfile::tempdir().unwrap();
    let am_url = format!("--ruler.alertmanager-url=http://127.0.0.1:{}", am.port);
    let mut n = Norn::start(
        dir.path(),
        &[
            "--ruler.evaluation-interval=1s",
            "--ruler.poll-interval=1s",
            "--ruler.resend-delay=1s",
            "--ruler.external.url=http://norn.example",
            &am_url,
        ],
    );
    n.wait_ready();

    // level{team="x"} = 10 every second from 30s ago to 5s ahead: the alert fires at once.
    let start = now_ms() / 1000 * 1000 - 30_000;
    let last = start + 35_000;
    let samples: Vec<(i64, f64)> = (start..=last).step_by(1000).map(|t| (t, 10.0)).collect();
    let level = [("__name__", "level"), ("team", "x")];
    let (status, body) = n.push(Some(TENANT), &request(vec![series(&level, &samples)]));
    assert_eq!(status, 200, "{body}");
    upload(&n, "ops", HIGH_LEVEL);

    let firing = next_with_status(&notifications, "firing");
    let a = &firing["alerts"][0];
    assert_eq!(a["status"], "firing", "{firing}");
    assert_eq!(
        a["labels"],
        serde_json::json!({"alertname": "LevelHigh", "team": "x", "severity": "page", "owner": "x"}),
        "{firing}"
    );
    assert_eq!(
        a["annotations"],
        serde_json::json!({"summary": "level of x is 10"}),
        "{firing}"
    );
    let generator = a["generatorURL"].as_str().unwrap();
    assert!(
        generator.starts_with("http://norn.example/graph?g0.expr="),
        "{generator}"
    );
    // The alert as the ruler's API shows it started when Alertmanager says it did.
    let active = wait_for("the alert in /api/v1/alerts", || {
        alerts(&n).into_iter().find(|a| a["state"] == "firing")
    });
    assert_eq!(rfc3339_ms(&a["startsAt"]), rfc3339_ms(&active["activeAt"]));

    // The series ends (a stale marker after its last sample): the alert resolves and
    // Alertmanager says so.
    wait_for("the last sample to be in the past", || {
        (now_ms() > last + 1000).then_some(())
    });
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let (status, body) = n.push(
        Some(TENANT),
        &request(vec![series(&level, &[(last + 1000, stale)])]),
    );
    assert_eq!(status, 200, "{body}");
    let resolved = next_with_status(&notifications, "resolved");
    let a = &resolved["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "LevelHigh", "{resolved}");
    assert_eq!(a["labels"]["owner"], "x", "{resolved}");
    assert!(rfc3339_ms(&a["endsAt"]) > rfc3339_ms(&a["startsAt"]), "{a}");

    wait_for("alerts to be counted as sent", || {
        (n.metric("norn_ruler_notifications_sent_total") >= 2.0).then_some(())
    });
    assert_eq!(n.metric("norn_ruler_notifications_errors_total"), 0.0);
    assert_eq!(n.metric("norn_ruler_notifications_dropped_total"), 0.0);
    assert!(alerts(&n).is_empty());
    n.stop();
}

const SLOW_ALERT: &str = r#"
name: slow
interval: 1s
rules:
  - alert: SlowToFire
    expr: up > 0
    for: 5m
"#;

#[test]
fn a_pending_alerts_for_progress_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(
        dir.path(),
        &[
            "--ruler.evaluation-interval=1s",
            "--ruler.poll-interval=1s",
            // Prometheus skips restoring rules whose `for` is shorter than the grace period,
            // and extends the pending time to the grace period: 1s keeps both out of the way.
            "--ruler.for-grace-period=1s",
        ],
    );
    n.wait_ready();
    // up{job="a"} = 1 every second from 30s ago to 3 minutes ahead.
    let start = now_ms() / 1000 * 1000 - 30_000;
    let samples: Vec<(i64, f64)> = (0..210).map(|i| (start + i * 1000, 1.0)).collect();
    let (status, body) = n.push(
        Some(TENANT),
        &request(vec![series(&[("__name__", "up"), ("job", "a")], &samples)]),
    );
    assert_eq!(status, 200, "{body}");
    upload(&n, "ops", SLOW_ALERT);

    // Pending for at least 12 seconds of its 5 minutes.
    let first = wait_for("the alert to go pending", || {
        alerts(&n).into_iter().find(|a| a["state"] == "pending")
    });
    let active_at = rfc3339_ms(&first["activeAt"]);
    wait_for("12s of pending", || {
        (now_ms() - active_at >= 12_000).then_some(())
    });
    let spent_before = now_ms() - active_at;
    n.stop();
    let restarted_at = now_ms();
    n.restart();
    n.wait_ready();

    // A fresh alert would be active from an evaluation after the restart; the restored one
    // keeps the time it had spent pending (and the downtime does not count), so it went
    // active well before the restart, but later than the first time.
    let restored = wait_for("the restored alert", || {
        alerts(&n)
            .into_iter()
            .find(|a| a["state"] == "pending" && rfc3339_ms(&a["activeAt"]) < restarted_at)
    });
    let restored_at = rfc3339_ms(&restored["activeAt"]);
    assert!(restored_at > active_at, "{restored} vs first {first}");
    let spent_after_restore = now_ms() - restored_at;
    assert!(
        spent_after_restore >= 12_000 && spent_after_restore > spent_before - 2_000,
        "pending for {spent_after_restore} ms after the restart, {spent_before} ms before it"
    );
    n.stop();
}
