//! The notifier against small Alertmanager stand-ins on 127.0.0.1 (axum): what is posted
//! (path, header, JSON), batching, the queue's overflow, failing and hung Alertmanagers,
//! tenants' isolation, stop and idle teardown. A stand-in can hold a post open until the test
//! lets it go, so every assertion is about order and content, never about durations; every wait
//! is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
use prometheus::Registry;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::*;

/// Longest any test waits for something to happen.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Received {
    path: String,
    tenant: String,
    content_type: String,
    authorization: String,
    body: Value,
}

impl Received {
    fn names(&self) -> Vec<String> {
        self.body
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
            .collect()
    }
}

/// How a stand-in answers a post.
#[derive(Clone)]
enum Reply {
    Ok,
    Fail,
    /// Answers 200 once it gets a permit from the semaphore (the test hands them out).
    Gate(Arc<Semaphore>),
    /// Never answers.
    Hang,
}

struct TestAm {
    base: String,
    rx: mpsc::UnboundedReceiver<Received>,
    /// Posts answered so far.
    answered: Arc<AtomicUsize>,
}

impl TestAm {
    /// A stand-in whose answer depends on the path and the tenant of the post.
    async fn start(reply: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> TestAm {
        Self::start_on(reply, None).await
    }

    /// [`TestAm::start`], serving HTTPS with `tls` when given.
    async fn start_on(
        reply: impl Fn(&str, &str) -> Reply + Send + Sync + 'static,
        tls: Option<norn_server::tls::listen::ServerTls>,
    ) -> TestAm {
        let (tx, rx) = mpsc::unbounded_channel();
        let answered = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let counter = Arc::clone(&answered);
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let reply = Arc::clone(&reply);
            let counter = Arc::clone(&counter);
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let r = Received {
                    path: uri.path().to_string(),
                    tenant: header("x-scope-orgid"),
                    content_type: header("content-type"),
                    authorization: header("authorization"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                };
                let how = reply(&r.path, &r.tenant);
                let _ = tx.send(r);
                let status = match how {
                    Reply::Ok => StatusCode::OK,
                    Reply::Fail => StatusCode::INTERNAL_SERVER_ERROR,
                    Reply::Gate(sem) => {
                        sem.acquire().await.unwrap().forget();
                        StatusCode::OK
                    }
                    Reply::Hang => std::future::pending().await,
                };
                counter.fetch_add(1, Ordering::SeqCst);
                status
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Some(tls) => {
                tokio::spawn(norn_server::serve::serve_with_tls(
                    listener,
                    app,
                    tokio_util::sync::CancellationToken::new(),
                    norn_server::ServerOptions::default(),
                    norn_server::Metrics::new(),
                    Some(tls),
                ));
            }
        }
        TestAm { base, rx, answered }
    }

    fn url(&self, prefix: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("{}{prefix}", self.base)).unwrap()
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no post within 30s")
            .expect("stand-in gone")
    }
}

fn tenant(t: &str) -> TenantId {
    TenantId::new(t).unwrap()
}

fn alert(name: &str) -> OutgoingAlert {
    OutgoingAlert {
        labels: Labels::from_pairs([("alertname", name), ("severity", "page")]),
        annotations: Labels::from_pairs([("summary", "it broke")]),
        starts_at_ms: 1_796_505_600_123,
        ends_at_ms: 0,
        generator_url: String::new(),
    }
}

fn alerts(prefix: &str, n: usize) -> Vec<OutgoingAlert> {
    (0..n).map(|i| alert(&format!("{prefix}{i}"))).collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn options(timeout: Duration) -> Options {
    Options {
        queue_capacity: 10_000,
        timeout,
        idle_teardown: IDLE_TEARDOWN,
        tls: None,
    }
}

fn metrics() -> (Registry, Arc<RulerMetrics>) {
    let r = Registry::new();
    let m = Arc::new(RulerMetrics::new(&r).unwrap());
    (r, m)
}

#[test]
fn api_url_keeps_the_path_prefix() {
    let u = |s: &str| api_url(reqwest::Url::parse(s).unwrap()).to_string();
    assert_eq!(u("http://am:9093"), "http://am:9093/api/v2/alerts");
    assert_eq!(u("http://am:9093/"), "http://am:9093/api/v2/alerts");
    assert_eq!(
        u("https://mimir:8080/alertmanager"),
        "https://mimir:8080/alertmanager/api/v2/alerts"
    );
    assert_eq!(
        u("http://mimir/alertmanager/"),
        "http://mimir/alertmanager/api/v2/alerts"
    );
}

#[tokio::test]
async fn new_is_none_without_alertmanagers_and_refuses_bad_urls() {
    let (_r, m) = metrics();
    assert!(
        Notifier::new(&Config::default(), Arc::clone(&m))
            .unwrap()
            .is_none()
    );
    let bad = Config {
        alertmanager_url: "am:9093".into(),
        ..Config::default()
    };
    assert!(matches!(
        Notifier::new(&bad, Arc::clone(&m)),
        Err(NotifierError::Config(_))
    ));
    let good = Config {
        alertmanager_url: "http://a:9093,http://b:9093/am".into(),
        ..Config::default()
    };
    let n = Notifier::new(&good, m).unwrap().expect("configured");
    assert_eq!(
        n.alertmanagers(),
        [
            "http://a:9093/api/v2/alerts",
            "http://b:9093/am/api/v2/alerts"
        ]
    );
}

#[tokio::test]
async fn posts_alertmanager_v2_json_with_the_tenant_header_to_every_url() {
    let mut am = TestAm::start(|_, _| Reply::Ok).await;
    let (_r, m) = metrics();
    let n = Notifier::start(vec![am.url(""), am.url("/alertmanager/")], options(WAIT), m).unwrap();
    let firing = OutgoingAlert {
        labels: Labels::from_pairs([("alertname", "HighLatency"), ("job", "api")]),
        annotations: Labels::from_pairs([("summary", "p99 > 1s")]),
        starts_at_ms: 1_796_505_600_123,
        ends_at_ms: 0,
        generator_url: "http://norn/graph?g0.expr=x".into(),
    };
    let resolved = OutgoingAlert {
        labels: Labels::from_pairs([("alertname", "DiskFull")]),
        annotations: Labels::empty(),
        starts_at_ms: 1_796_505_600_123,
        ends_at_ms: 1_796_505_660_000,
        generator_url: String::new(),
    };
    n.send(&tenant("team-a"), vec![firing, resolved]);
    let mut got = vec![am.next().await, am.next().await];
    got.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(got[0].path, "/alertmanager/api/v2/alerts");
    assert_eq!(got[1].path, "/api/v2/alerts");
    let expected = json!([
        {
            "labels": {"alertname": "HighLatency", "job": "api"},
            "annotations": {"summary": "p99 > 1s"},
            "startsAt": "2026-12-05T21:20:00.123Z",
            "generatorURL": "http://norn/graph?g0.expr=x"
        },
        {
            "labels": {"alertname": "DiskFull"},
            "annotations": {},
            "startsAt": "2026-12-05T21:20:00.123Z",
            "endsAt": "2026-12-05T21:21:00.000Z"
        }
    ]);
    for r in &got {
        assert_eq!(r.authorization, "");
        assert_eq!(r.tenant, "team-a");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, expected);
    }
    n.stop().await;
}

#[tokio::test]
async fn credentials_in_the_url_are_sent_as_basic_auth_and_kept_out_of_labels() {
    let mut am = TestAm::start(|_, _| Reply::Ok).await;
    let (_r, m) = metrics();
    let url = reqwest::Url::parse(&am.base.replace("http://", "http://norn:s3cret@")).unwrap();
    let n = Notifier::start(vec![url], options(WAIT), Arc::clone(&m)).unwrap();
    n.send(&tenant("t1"), alerts("a", 1));
    let r = am.next().await;
    // base64("norn:s3cret")
    assert_eq!(r.authorization, "Basic bm9ybjpzM2NyZXQ=");
    n.stop().await;
    let label = format!("{}/api/v2/alerts", am.base);
    assert_eq!(n.alertmanagers(), std::slice::from_ref(&label));
    assert_eq!(
        m.notifications
            .sent
            .with_label_values(&["t1", &label])
            .get(),
        1
    );
}

#[tokio::test]
async fn batches_hold_at_most_64_alerts_in_order() {
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let mut am = TestAm::start(move |_, _| Reply::Gate(Arc::clone(&g))).await;
    let (_r, m) = metrics();
    let n = Notifier::start(vec![am.url("")], options(WAIT), Arc::clone(&m)).unwrap();
    let t = tenant("t1");
    // The first post is held open, so the 150 that follow are all queued before the next batch
    // is cut.
    n.send(&t, alerts("a", 1));
    assert_eq!(am.next().await.names(), names("a", 0..1));
    n.send(&t, alerts("b", 150));
    gate.add_permits(100);
    let mut sizes = vec![];
    let mut all = vec![];
    for _ in 0..3 {
        let r = am.next().await;
        sizes.push(r.body.as_array().unwrap().len());
        all.extend(r.names());
    }
    assert_eq!(sizes, [64, 64, 22]);
    assert_eq!(all, names("b", 0..150));
    n.stop().await;
    let am_label = n.alertmanagers()[0].clone();
    let sent = m.notifications.sent.with_label_values(&["t1", &am_label]);
    assert_eq!(sent.get(), 151);
    let dropped = m.notifications.dropped.with_label_values(&["t1"]);
    assert_eq!(dropped.get(), 0);
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_alerts_and_counts_them() {
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let mut am = TestAm::start(move |_, _| Reply::Gate(Arc::clone(&g))).await;
    let (_r, m) = metrics();
    let opts = Options {
        queue_capacity: 5,
        ..options(WAIT)
    };
    let n = Notifier::start(vec![am.url("")], opts, Arc::clone(&m)).unwrap();
    let t = tenant("t1");
    let dropped = m.notifications.dropped.with_label_values(&["t1"]);
    let length = m.notifications.queue_length.with_label_values(&["t1"]);
    n.send(&t, alerts("a", 1));
    assert_eq!(am.next().await.names(), names("a", 0..1));
    // The post of a0 is held: the queue fills behind it.
    n.send(&t, alerts("b", 4));
    n.send(&t, alerts("c", 3));
    assert_eq!(dropped.get(), 2, "b0 and b1 pushed out");
    assert_eq!(length.get(), 5);
    assert_eq!(
        m.notifications
            .queue_capacity
            .with_label_values(&["t1"])
            .get(),
        5
    );
    gate.add_permits(1);
    let r = am.next().await;
    assert_eq!(r.names(), ["b2", "b3", "c0", "c1", "c2"]);
    // That post is held in turn; a hand-over larger than the queue keeps its newest alerts.
    n.send(&t, alerts("d", 7));
    assert_eq!(dropped.get(), 4, "d0 and d1 never queued");
    gate.add_permits(10);
    assert_eq!(am.next().await.names(), names("d", 2..7));
    n.stop().await;
    assert_eq!(dropped.get(), 4);
    assert_eq!(length.get(), 0);
}

#[tokio::test]
async fn a_batch_one_alertmanager_took_is_sent_and_one_none_took_is_dropped() {
    let mut am = TestAm::start(|path, _| {
        if path.starts_with("/bad") {
            Reply::Fail
        } else {
            Reply::Ok
        }
    })
    .await;
    let (_r, m) = metrics();
    let n = Notifier::start(
        vec![am.url("/bad"), am.url("/good")],
        options(WAIT),
        Arc::clone(&m),
    )
    .unwrap();
    n.send(&tenant("t1"), alerts("a", 3));
    am.next().await;
    am.next().await;
    // stop waits for the sender, so every count below is final.
    n.stop().await;
    let [bad, good] = <[String; 2]>::try_from(n.alertmanagers()).unwrap();
    let c = &m.notifications;
    assert_eq!(c.sent.with_label_values(&["t1", &bad]).get(), 3);
    assert_eq!(c.errors.with_label_values(&["t1", &bad]).get(), 3);
    assert_eq!(c.sent.with_label_values(&["t1", &good]).get(), 3);
    assert_eq!(c.errors.with_label_values(&["t1", &good]).get(), 0);
    assert_eq!(c.dropped.with_label_values(&["t1"]).get(), 0);
    assert_eq!(
        c.latency
            .with_label_values(&["t1", &bad])
            .get_sample_count(),
        1
    );
    assert_eq!(
        c.alertmanagers_discovered.with_label_values(&["t1"]).get(),
        2
    );

    // With only the failing one, the batch is lost: counted as dropped.
    let (_r, m) = metrics();
    let n = Notifier::start(vec![am.url("/bad")], options(WAIT), Arc::clone(&m)).unwrap();
    n.send(&tenant("t1"), alerts("a", 3));
    am.next().await;
    n.stop().await;
    let c = &m.notifications;
    assert_eq!(c.errors.with_label_values(&["t1", &bad]).get(), 3);
    assert_eq!(c.dropped.with_label_values(&["t1"]).get(), 3);
}

#[tokio::test]
async fn a_hung_alertmanager_times_out_and_the_sender_goes_on() {
    let mut am = TestAm::start(|_, _| Reply::Hang).await;
    let (_r, m) = metrics();
    // Long enough for a loaded machine to get each post to the stand-in before it is given up
    // (the test waits for both to arrive), short enough to keep the test quick.
    let n = Notifier::start(
        vec![am.url("")],
        options(Duration::from_secs(1)),
        Arc::clone(&m),
    )
    .unwrap();
    let t = tenant("t1");
    n.send(&t, alerts("a", 1));
    assert_eq!(am.next().await.names(), ["a0"]);
    // The first post never gets an answer: the second only arrives if it was given up.
    n.send(&t, alerts("b", 1));
    assert_eq!(am.next().await.names(), ["b0"]);
    n.stop().await;
    let label = &n.alertmanagers()[0];
    let c = &m.notifications;
    assert_eq!(c.errors.with_label_values(&["t1", label]).get(), 2);
    assert_eq!(c.dropped.with_label_values(&["t1"]).get(), 2);
    assert_eq!(am.answered.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_tenant_whose_alertmanager_hangs_does_not_hold_up_another() {
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let mut am = TestAm::start(move |_, tenant| {
        if tenant == "slow" {
            Reply::Gate(Arc::clone(&g))
        } else {
            Reply::Ok
        }
    })
    .await;
    let (_r, m) = metrics();
    let n = Notifier::start(vec![am.url("")], options(WAIT), m).unwrap();
    n.send(&tenant("slow"), alerts("s", 1));
    let r = am.next().await;
    assert_eq!((r.tenant.as_str(), r.names()), ("slow", names("s", 0..1)));
    // The slow tenant's post is open, and more of its alerts wait behind it.
    n.send(&tenant("slow"), alerts("s", 500));
    n.send(&tenant("fast"), alerts("f", 2));
    let r = am.next().await;
    assert_eq!((r.tenant.as_str(), r.names()), ("fast", names("f", 0..2)));
    // No permit was handed out yet: the slow tenant's first post is still open, and it arrived
    // while 500 more of that tenant's alerts wait. Now let the slow tenant through: its queue
    // follows, in order.
    gate.add_permits(1000);
    let mut slow = vec![];
    while slow.len() < 500 {
        let r = am.next().await;
        assert_eq!(r.tenant, "slow");
        slow.extend(r.names());
    }
    assert_eq!(slow, names("s", 0..500));
    n.stop().await;
}

#[tokio::test]
async fn stop_posts_what_is_queued_then_drops_later_alerts() {
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let mut am = TestAm::start(move |_, _| Reply::Gate(Arc::clone(&g))).await;
    let (_r, m) = metrics();
    let n = Notifier::start(vec![am.url("")], options(WAIT), Arc::clone(&m)).unwrap();
    let t = tenant("t1");
    n.send(&t, alerts("a", 1));
    am.next().await;
    n.send(&t, alerts("b", 3));
    let stopping = {
        let n = Arc::clone(&n);
        tokio::spawn(async move { n.stop().await })
    };
    tokio::time::timeout(WAIT, async {
        while !n.stopping() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("stop began");
    gate.add_permits(10);
    assert_eq!(am.next().await.names(), names("b", 0..3));
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("stop ended")
        .unwrap();
    let dropped = m.notifications.dropped.with_label_values(&["t1"]);
    assert_eq!(dropped.get(), 0);
    n.send(&t, alerts("z", 2));
    assert_eq!(dropped.get(), 2);
    assert!(am.rx.try_recv().is_err(), "nothing posted after stop");
}

/// Whether the registry has a notifier series of `tenant`.
fn has_series(r: &Registry, tenant: &str) -> bool {
    r.gather()
        .iter()
        .filter(|f| f.name().starts_with("norn_ruler_notification"))
        .flat_map(|f| f.get_metric())
        .any(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "tenant" && l.value() == tenant)
        })
}

#[tokio::test]
async fn an_idle_sender_ends_and_its_series_go() {
    let mut am = TestAm::start(|_, _| Reply::Ok).await;
    let (r, m) = metrics();
    let opts = Options {
        idle_teardown: Duration::from_millis(50),
        ..options(WAIT)
    };
    let n = Notifier::start(vec![am.url("")], opts, Arc::clone(&m)).unwrap();
    let t = tenant("t1");
    n.send(&t, alerts("a", 1));
    am.next().await;
    assert!(has_series(&r, "t1"));
    tokio::time::timeout(WAIT, async {
        while has_series(&r, "t1") || n.tenants() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the idle sender ended within 30s");
    // The next alert starts a new sender.
    n.send(&t, alerts("b", 1));
    assert_eq!(am.next().await.names(), ["b0"]);
    assert_eq!(n.tenants(), 1);
    n.stop().await;
}

/// An `https://` Alertmanager that requires a client certificate: the notifier with the CA
/// and a client certificate (`ruler.alertmanager_client.tls_*`) delivers; without its
/// certificate the post fails and is counted as an error.
#[tokio::test]
async fn alertmanager_over_mtls_with_the_client_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if !crate::test_pki::make_pki(d, &["am", "ruler"]) {
        eprintln!("SKIP: no openssl CLI");
        return;
    }
    let path = |f: &str| d.join(f).display().to_string();
    let server = norn_server::tls::ServerTlsSettings {
        cert_file: path("am.crt"),
        key_file: path("am.key"),
        client_ca_file: path("ca.crt"),
        client_auth_type: String::new(),
    }
    .load(
        "am",
        &[b"http/1.1"],
        &norn_server::tls::TlsMetrics::unregistered(),
    )
    .unwrap();
    let mut am = TestAm::start_on(|_, _| Reply::Ok, Some(server)).await;
    let settings = norn_server::tls::ClientTlsSettings {
        tls_enabled: true,
        tls_ca_path: path("ca.crt"),
        tls_cert_path: path("ruler.crt"),
        tls_key_path: path("ruler.key"),
        ..Default::default()
    };
    let config = Config {
        alertmanager_url: am.base.clone(),
        alertmanager_client: settings.clone(),
        ..Config::default()
    };
    let (_r, m) = metrics();
    let n = Notifier::new(&config, Arc::clone(&m)).unwrap().unwrap();
    n.send(&tenant("t1"), alerts("tls", 1));
    assert_eq!(am.next().await.names(), ["tls0"]);
    n.stop().await;

    // The same CA but no client certificate: refused by the Alertmanager's TLS.
    let config = Config {
        alertmanager_client: norn_server::tls::ClientTlsSettings {
            tls_cert_path: String::new(),
            tls_key_path: String::new(),
            ..settings
        },
        ..config
    };
    let (_r, m) = metrics();
    let n = Notifier::new(&config, Arc::clone(&m)).unwrap().unwrap();
    n.send(&tenant("t1"), alerts("refused", 1));
    let label = format!("{}/api/v2/alerts", am.base);
    let deadline = tokio::time::Instant::now() + WAIT;
    while m
        .notifications
        .errors
        .with_label_values(&["t1", &label])
        .get()
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "no error counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.stop().await;
    assert!(
        am.rx.try_recv().is_err(),
        "a post got through without a certificate"
    );
}
