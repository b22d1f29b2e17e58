//! End to end with a real Prometheus (Debian `prometheus`) as the remote-write client: it
//! scrapes itself every second and remote-writes to Norn as tenant `e2e` (header, and the
//! basic-auth username because Debian's 2.42 build drops custom headers). After 20+ s,
//! every series Prometheus has must be in Norn with exactly the same samples over a window
//! that has surely been flushed, and Prometheus must report no failed samples.
//!
//! Skipped (with a message) when no `prometheus` binary is installed, unless
//! `NORN_REQUIRE_PEERS=1` (set by the project's test command), which makes a missing peer a
//! failure.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Norn, free_port, now_ms, urlencode};

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_prometheus() -> Option<String> {
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if std::path::Path::new(p).exists() {
            return Some(p.to_string());
        }
    }
    None
}

fn http_json(url: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut r = agent.get(url).call().expect("GET");
    let text = r.body_mut().read_to_string().expect("body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON from {url}: {text}"))
}

fn raw(base: &str, norn: Option<&Norn>, selector: &str, t_ms: i64) -> serde_json::Value {
    let q = urlencode(&format!("{selector}[10s]"));
    let path = format!("/api/v1/query?query={q}&time={}", t_ms as f64 / 1000.0);
    let v = match norn {
        Some(n) => n.get_json(Some("e2e"), &format!("/prometheus{path}")).1,
        None => http_json(&format!("{base}{path}")),
    };
    assert_eq!(v["status"], "success", "{v}");
    let mut r = v["data"]["result"].as_array().unwrap().clone();
    r.sort_by_key(|s| s["metric"].to_string());
    serde_json::Value::Array(r)
}

#[test]
fn prometheus_remote_writes_every_sample_exactly() {
    let Some(prom_bin) = find_prometheus() else {
        if std::env::var("NORN_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("prometheus is not installed but NORN_REQUIRE_PEERS=1");
        }
        eprintln!("SKIP: no prometheus binary; install Debian's `prometheus` to run this test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let norn = Norn::start(dir.path(), &[]);
    let prom_port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{prom_port}"]
remote_write:
  - url: "http://127.0.0.1:{norn_port}/api/v1/push"
    # Debian's Prometheus 2.42 drops `headers` (prometheus/prometheus#13030), so the tenant
    # travels as the basic-auth username; the header is kept for Prometheus builds that send it.
    headers:
      X-Scope-OrgID: e2e
    basic_auth:
      username: e2e
      password: unused
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 2000
    metadata_config:
      send_interval: 2s
"#,
            norn_port = norn.port
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let prom = Peer(
        Command::new(&prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom-data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus"),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(22));
    // A window that ended 5 s ago: every sample in it has been scraped and sent (1 s batches).
    let t = now_ms() - 5000;

    // Every series with every sample of the window, names kept: exactly equal.
    let all = "{__name__=~\".+\"}";
    let want = raw(&base, None, all, t);
    let got = raw(&base, Some(&norn), all, t);
    let (want, got) = (want.as_array().unwrap(), got.as_array().unwrap());
    assert!(
        want.len() > 100,
        "Prometheus has only {} series after {:?}",
        want.len(),
        started.elapsed()
    );
    let keys = |v: &[serde_json::Value]| {
        v.iter()
            .map(|s| s["metric"].to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let missing: Vec<_> = keys(want).difference(&keys(got)).take(5).cloned().collect();
    assert!(missing.is_empty(), "series missing in Norn: {missing:?}");
    let differing: Vec<_> = want
        .iter()
        .zip(got.iter())
        .filter(|(a, b)| a != b)
        .take(3)
        .collect();
    assert!(
        differing.is_empty(),
        "samples differ (prometheus, norn): {differing:?}"
    );
    assert_eq!(want.len(), got.len());
    let samples: usize = want
        .iter()
        .map(|s| s["values"].as_array().unwrap().len())
        .sum();
    eprintln!(
        "compared {} series, {samples} samples: identical",
        want.len()
    );

    // Prometheus saw no failures, and Norn's counters agree that samples arrived.
    let failed = http_json(&format!(
        "{base}/api/v1/query?query=sum(prometheus_remote_storage_samples_failed_total)"
    ));
    assert_eq!(failed["data"]["result"][0]["value"][1], "0", "{failed}");
    assert!(norn.metric("norn_distributor_received_samples_total{tenant=\"e2e\"}") > 1000.0);
    assert_eq!(norn.metric("norn_discarded_samples_total"), 0.0);
    // Metadata arrived too.
    let (_, md) = norn.get_json(
        Some("e2e"),
        "/prometheus/api/v1/metadata?metric=prometheus_http_requests_total",
    );
    assert_eq!(
        md["data"]["prometheus_http_requests_total"][0]["type"], "counter",
        "{md}"
    );
    drop(prom);
}

/// `sha256:<hex>` of `secret`, by `norn tools auth hash`.
fn token_hash(secret: &str) -> String {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_norn"))
        .args(["tools", "auth", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Prometheus 2.42 remote-writes into `--auth.type=tokens` three ways: `basic_auth` with the
/// tenant as username and the token as password, `authorization` (a bearer token whose one
/// tenant is implied), and a wrong password, which Norn refuses with 401 and counts.
#[test]
fn prometheus_remote_writes_with_tokens() {
    let Some(prom_bin) = find_prometheus() else {
        if std::env::var("NORN_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("prometheus is not installed but NORN_REQUIRE_PEERS=1");
        }
        eprintln!("SKIP: no prometheus binary; install Debian's `prometheus` to run this test");
        return;
    };
    let (secret_a, secret_b) = ("prom-a-secret-0123456789", "prom-b-secret-0123456789");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - name: prom-a\n    hash: \"{}\"\n    tenants: [team-a]\n    scopes: [write, read]\n  - name: prom-b\n    hash: \"{}\"\n    tenants: [team-b]\n    scopes: [write, read]\n",
            token_hash(secret_a),
            token_hash(secret_b)
        ),
    )
    .unwrap();
    let norn = Norn::start(
        dir.path(),
        &[
            "--auth.type=tokens",
            &format!("--auth.tokens-file={}", tokens.display()),
        ],
    );
    let prom_port = free_port();
    let cfg = dir.path().join("prometheus.yml");
    let url = format!("http://127.0.0.1:{}/api/v1/push", norn.port);
    std::fs::write(
        &cfg,
        format!(
            r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{prom_port}"]
remote_write:
  - name: basic
    url: "{url}"
    basic_auth:
      username: team-a
      password: {secret_a}
    queue_config: {{batch_send_deadline: 1s}}
  - name: bearer
    url: "{url}"
    authorization:
      credentials: {secret_b}
    queue_config: {{batch_send_deadline: 1s}}
  - name: wrong
    url: "{url}"
    basic_auth:
      username: team-a
      password: not-the-secret
    queue_config: {{batch_send_deadline: 1s}}
"#
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Peer(
        Command::new(&prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom-data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus"),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let up = |secret: &str| -> usize {
        let mut r = agent
            .get(norn.url("/prometheus/api/v1/query?query=up"))
            .header("Authorization", format!("Bearer {secret}"))
            .call()
            .expect("query");
        assert_eq!(r.status().as_u16(), 200);
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["data"]["result"].as_array().unwrap().len()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while up(secret_a) == 0
        || up(secret_b) == 0
        || norn.metric("norn_auth_failures_total{reason=\"invalid_credentials\"}") < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no data for team-a ({}) / team-b ({}) or no refused push after 60s\n{}",
            up(secret_a),
            up(secret_b),
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(norn.metric("norn_distributor_received_samples_total{tenant=\"team-a\"}") > 0.0);
    assert!(norn.metric("norn_distributor_received_samples_total{tenant=\"team-b\"}") > 0.0);
    assert!(!norn.log().contains(secret_a) && !norn.log().contains("not-the-secret"));
}
