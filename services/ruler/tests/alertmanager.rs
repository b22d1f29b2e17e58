//! The notifier against a real Alertmanager (Debian's `prometheus-alertmanager`, which
//! scripts/test.sh installs): Alertmanager runs on a free 127.0.0.1 port with clustering off and
//! its storage in a temporary directory, routing everything to a webhook receiver served by this
//! test. Alerts pushed through [`Notifier`] must come out of the webhook firing, with the labels
//! and annotations given, and then resolved once an alert with an end in the past is pushed.
//!
//! Every wait is bounded (30 s); Alertmanager is killed when the test ends, panics included.
//! Unlike the tests that SKIP without their peer, this one fails when the binary is missing:
//! it is the only test of the notifier against the real API.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use norn_model::{Labels, TenantId};
use norn_ruler::Config;
use norn_ruler::metrics::RulerMetrics;
use norn_ruler::notifier::Notifier;
use norn_ruler::outbound::{AlertSink, OutgoingAlert};
use serde_json::Value;
use tokio::sync::mpsc;

const BIN: &str = "/usr/bin/prometheus-alertmanager";
const WAIT: Duration = Duration::from_secs(30);

use norn_storage::testing::free_port;

/// An Alertmanager process, killed on drop; its log is printed if the test panicked.
struct Alertmanager {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Alertmanager {
    fn start(webhook: &str) -> Alertmanager {
        assert!(
            Path::new(BIN).is_file(),
            "{BIN} not found: install Debian's prometheus-alertmanager \
             (apt-get install prometheus-alertmanager; scripts/test.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        // Short group timers so a notification follows within a second or two; a long repeat
        // interval so only state changes produce notifications.
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n"
            ),
        )
        .unwrap();
        let storage = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let port = free_port();
        let child = Command::new(BIN)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning prometheus-alertmanager");
        Alertmanager { child, dir, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = client
                .get(format!("{}/-/ready", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("alertmanager exited: {status}");
            }
            assert!(Instant::now() < deadline, "alertmanager not ready in 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut log = String::new();
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join("log")) {
                let _ = f.read_to_string(&mut log);
            }
            eprintln!("--- alertmanager log ---\n{log}");
        }
    }
}

/// The webhook receiver: every notification's JSON, in order.
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// The next notification whose status is `status` (earlier ones, e.g. a repeat, are skipped).
async fn next_with_status(rx: &mut mpsc::UnboundedReceiver<Value>, status: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let n = rx.recv().await.expect("webhook receiver gone");
            if n["status"] == status {
                return n;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {status} notification within 30s"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_real_alertmanager_firing_then_resolved() {
    let (hook, mut notifications) = webhook().await;
    let mut am = Alertmanager::start(&hook);
    am.wait_ready().await;

    let registry = prometheus::Registry::new();
    let metrics = Arc::new(RulerMetrics::new(&registry).unwrap());
    let config = Config {
        alertmanager_url: am.url(),
        ..Config::default()
    };
    let notifier = Notifier::new(&config, Arc::clone(&metrics))
        .unwrap()
        .expect("an Alertmanager is configured");
    let sink: Arc<dyn AlertSink> = Arc::clone(&notifier) as Arc<dyn AlertSink>;

    let tenant = TenantId::new("team-a").unwrap();
    let labels = Labels::from_pairs([
        ("alertname", "NornNotifierTest"),
        ("job", "api"),
        ("severity", "page"),
        ("team", "a"),
    ]);
    let annotations = Labels::from_pairs([
        ("summary", "api is down"),
        ("runbook_url", "https://example.org/runbook"),
    ]);
    let starts = now_ms() - 10_000;
    let firing = OutgoingAlert {
        labels: labels.clone(),
        annotations: annotations.clone(),
        starts_at_ms: starts,
        // As Prometheus sends a firing alert: valid for a few resend delays.
        ends_at_ms: now_ms() + 180_000,
        generator_url: "http://norn/graph?g0.expr=up+%3D%3D+0".into(),
    };
    sink.send(&tenant, vec![firing.clone()]);

    let n = next_with_status(&mut notifications, "firing").await;
    let alerts = n["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{n}");
    let a = &alerts[0];
    assert_eq!(a["status"], "firing");
    for l in labels.iter() {
        assert_eq!(a["labels"][&l.name], l.value.as_str(), "{a}");
    }
    assert_eq!(a["labels"].as_object().unwrap().len(), labels.len(), "{a}");
    for l in annotations.iter() {
        assert_eq!(a["annotations"][&l.name], l.value.as_str(), "{a}");
    }
    assert_eq!(a["generatorURL"], "http://norn/graph?g0.expr=up+%3D%3D+0");
    let started = chrono::DateTime::parse_from_rfc3339(a["startsAt"].as_str().unwrap()).unwrap();
    assert_eq!(started.timestamp_millis(), starts, "{a}");

    // Resolved: the same alert with an end in the past.
    sink.send(
        &tenant,
        vec![OutgoingAlert {
            ends_at_ms: now_ms() - 1_000,
            ..firing
        }],
    );
    let n = next_with_status(&mut notifications, "resolved").await;
    let a = &n["alerts"][0];
    assert_eq!(a["status"], "resolved", "{n}");
    assert_eq!(a["labels"]["alertname"], "NornNotifierTest");
    assert_eq!(a["labels"]["team"], "a");

    notifier.stop().await;
    let am_label = &notifier.alertmanagers()[0];
    let c = &metrics.notifications;
    assert_eq!(c.sent.with_label_values(&["team-a", am_label]).get(), 2);
    assert_eq!(c.errors.with_label_values(&["team-a", am_label]).get(), 0);
    assert_eq!(c.dropped.with_label_values(&["team-a"]).get(), 0);
}
