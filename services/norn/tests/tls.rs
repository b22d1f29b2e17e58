//! TLS end to end with the real binary on 127.0.0.1 and certificates made by the `openssl`
//! CLI:
//!
//! * HTTPS with mTLS: a client without a certificate, or with one from another CA, is
//!   refused; the right one is served; a plain-text client gets a closed connection at once;
//!   a rotated certificate is served without a restart, and a broken one keeps the old one
//!   (counted in `norn_tls_config_reloads_total{result="failure"}`);
//! * a missing or bad certificate stops the process at startup, naming the setting;
//! * a real Prometheus 2.42 remote-writes over HTTPS (`tls_config.ca_file`) with a bearer
//!   token, and the data is queryable;
//! * microservices (ingester, distributor, querier, query-frontend) with mTLS on every gRPC
//!   hop and a gossip encryption key; a process without the key does not join.

mod common;
#[path = "tls/https.rs"]
mod https;
#[path = "tls/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Norn, free_port};
use pki::Pair;

/// Starts `norn` with HTTPS on (its other flags in `args`) and waits until `/ready` answers
/// 200 over TLS with `client`.
fn start_https(dir: &Path, args: &[String], client: &Arc<rustls::ClientConfig>) -> Norn {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("norn.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={port}"))
        .arg("--server.grpc-listen-address=127.0.0.1")
        .arg(format!("--server.grpc-listen-port={}", free_port()))
        .arg(format!(
            "--blocks-storage.tsdb.dir={}",
            dir.join("tsdb").display()
        ))
        .arg(format!(
            "--common.storage.filesystem.dir={}",
            dir.join("bucket").display()
        ))
        .arg(format!(
            "--blocks-storage.bucket-store.sync-dir={}",
            dir.join("tsdb-sync").display()
        ))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start norn");
    let mut n = Norn::adopt(child, port, dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(c) = n.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("norn exited: {status}\n{}", n.log());
        }
        if https::get(client, port, "/ready").is_ok_and(|r| r.status == 200) {
            return n;
        }
        assert!(Instant::now() < deadline, "not ready in 60s\n{}", n.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the first sample line of `/metrics` starting with `prefix`; 0 when absent.
fn metric(client: &Arc<rustls::ClientConfig>, port: u16, prefix: &str) -> f64 {
    let body = https::get(client, port, "/metrics").unwrap().body;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Replaces `dst`'s certificate and key with `src`'s, each by an atomic rename.
fn install(src: &Pair, dst: &Pair) {
    for (from, to) in [(&src.crt, &dst.crt), (&src.key, &dst.key)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
}

fn tls_flags(prefix: &str, served: &Pair, client_ca: Option<&Path>) -> Vec<String> {
    let mut a = vec![
        format!("--server.{prefix}-tls-cert-path={}", served.crt.display()),
        format!("--server.{prefix}-tls-key-path={}", served.key.display()),
    ];
    if let Some(ca) = client_ca {
        a.push(format!(
            "--server.{prefix}-tls-client-ca-path={}",
            ca.display()
        ));
    }
    a
}

#[test]
fn https_with_mtls_refuses_wrong_clients_and_reloads_rotated_certificates() {
    if !pki::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let other_ca = pki::ca(d, "other-ca");
    let first = pki::leaf(d, "server-1", &ca);
    let second = pki::leaf(d, "server-2", &ca);
    // The files Norn reads; rotated in place below.
    let served = Pair {
        crt: d.join("served.crt"),
        key: d.join("served.key"),
    };
    install(&first, &served);
    let good = pki::leaf(d, "client", &ca);
    let stranger = pki::leaf(d, "stranger", &other_ca);

    let with_cert = pki::client_config(&ca.crt, Some(&good));
    let norn = start_https(
        &d.join("norn"),
        &tls_flags("http", &served, Some(&ca.crt)),
        &with_cert,
    );
    let port = norn.port;

    // The right client certificate is served, with the first server certificate.
    let r = https::get(&with_cert, port, "/ready").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.server_cert, pki::der(&first.crt));

    // No client certificate, or one from another CA: refused at the handshake.
    let without = pki::client_config(&ca.crt, None);
    let e = https::get(&without, port, "/ready").err();
    assert!(e.is_some(), "a client without a certificate was served");
    let wrong = pki::client_config(&ca.crt, Some(&stranger));
    let e = https::get(&wrong, port, "/ready").err();
    assert!(e.is_some(), "a certificate of another CA was accepted");
    // A client that does not trust the server's CA refuses the server.
    let distrusting = pki::client_config(&other_ca.crt, Some(&stranger));
    assert!(https::get(&distrusting, port, "/ready").is_err());

    // Plain text to the TLS port: answered by a closed connection, quickly, never a 200.
    let started = Instant::now();
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "plain-text client held {:?}",
        started.elapsed()
    );
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
    assert!(
        metric(
            &with_cert,
            port,
            "norn_tls_handshake_failures_total{listener=\"http\"}"
        ) >= 3.0
    );
    let expiry = metric(
        &with_cert,
        port,
        "norn_tls_certificate_expiry_timestamp_seconds{listener=\"http\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 2.0 * 86400.0 && expiry < now + 4.0 * 86400.0,
        "expiry {expiry} vs now {now}"
    );

    // Rotation: the new certificate is served from a new connection, no restart.
    install(&second, &served);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = https::get(&with_cert, port, "/ready").unwrap();
        if r.server_cert == pki::der(&second.crt) {
            break;
        }
        assert!(Instant::now() < deadline, "rotated certificate not served");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ok = "norn_tls_config_reloads_total{listener=\"http\",result=\"success\"}";
    assert!(metric(&with_cert, port, ok) >= 1.0);

    // A broken certificate file keeps the last good certificate, and is counted.
    std::fs::write(&served.crt, "not a certificate").unwrap();
    let failed = "norn_tls_config_reloads_total{listener=\"http\",result=\"failure\"}";
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&with_cert, port, failed) < 1.0 {
        assert!(Instant::now() < deadline, "broken file not reported");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = https::get(&with_cert, port, "/ready").unwrap();
    assert_eq!((r.status, r.server_cert), (200, pki::der(&second.crt)));
    assert!(norn.log().contains("TLS reload failed"), "{}", norn.log());
}

/// Runs `norn` with `args` (nothing else listening) and returns its exit status and stderr.
fn run_to_exit(dir: &Path, args: &[String]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={}", free_port()))
        .arg(format!("--server.grpc-listen-port={}", free_port()))
        .arg(format!(
            "--blocks-storage.tsdb.dir={}",
            dir.join("tsdb").display()
        ))
        .arg(format!(
            "--common.storage.filesystem.dir={}",
            dir.join("bucket").display()
        ))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("norn with {args:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_missing_or_bad_certificate_stops_the_process_naming_the_setting() {
    if !pki::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let server = pki::leaf(d, "server", &ca);
    let other = pki::leaf(d, "other", &ca);
    let missing = d.join("missing.crt");
    let garbage = d.join("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![
                format!("--server.http-tls-cert-path={}", missing.display()),
                format!("--server.http-tls-key-path={}", server.key.display()),
            ],
            vec!["server.http_tls_config", "missing.crt"],
        ),
        (
            vec![
                format!("--server.grpc-tls-cert-path={}", server.crt.display()),
                format!("--server.grpc-tls-key-path={}", garbage.display()),
                "--target=ingester".into(),
            ],
            vec!["server.grpc_tls_config", "garbage.key"],
        ),
        (
            // A key that is not the certificate's.
            vec![
                format!("--server.http-tls-cert-path={}", server.crt.display()),
                format!("--server.http-tls-key-path={}", other.key.display()),
            ],
            vec!["does not match"],
        ),
        (
            vec![format!(
                "--server.http-tls-cert-path={}",
                server.crt.display()
            )],
            vec!["both a certificate and a key"],
        ),
        (
            vec![
                format!("--server.http-tls-cert-path={}", server.crt.display()),
                format!("--server.http-tls-key-path={}", server.key.display()),
                "--server.http-tls-client-auth=RequireAndVerifyClientCert".into(),
            ],
            vec!["needs a client CA"],
        ),
        (
            vec![
                "--ingester.client.tls-enabled".into(),
                format!("--ingester.client.tls-ca-path={}", missing.display()),
                "--target=distributor".into(),
            ],
            vec!["ingester_client.grpc_client_config", "missing.crt"],
        ),
    ];
    for (args, wanted) in cases {
        let (ok, err) = run_to_exit(d, &args);
        assert!(!ok, "{args:?} started");
        for w in wanted {
            assert!(err.contains(w), "{args:?}: {w:?} not in\n{err}");
        }
    }
}

/// `sha256:<hex>` of `secret`, by `norn tools auth hash`.
fn token_hash(secret: &str) -> String {
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

/// Prometheus 2.42 remote-writes over HTTPS, trusting Norn's CA (`tls_config.ca_file`), with
/// a bearer token (`--auth.type=tokens`); what it wrote is then queried back over HTTPS.
#[test]
fn prometheus_remote_writes_over_https_with_a_bearer_token() {
    if !pki::available() {
        return;
    }
    let Some(prom_bin) = common::Prometheus::binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::ca(d, "ca");
    let server = pki::leaf(d, "norn", &ca);
    let secret = "prom-tls-secret-0123456789";
    let tokens = d.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - name: prom\n    hash: \"{}\"\n    tenants: [team-tls]\n    scopes: [write, read]\n",
            token_hash(secret)
        ),
    )
    .unwrap();
    let client = pki::client_config(&ca.crt, None);
    let mut args = tls_flags("http", &server, None);
    args.push("--auth.type=tokens".into());
    args.push(format!("--auth.tokens-file={}", tokens.display()));
    let norn = start_https(&d.join("norn"), &args, &client);

    let prom_port = free_port();
    let cfg = d.join("prometheus.yml");
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
  - url: "https://127.0.0.1:{}/api/v1/push"
    authorization:
      credentials: {secret}
    tls_config:
      ca_file: {}
    queue_config: {{batch_send_deadline: 1s}}
"#,
            norn.port,
            ca.crt.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("prometheus.log")).unwrap();
    let mut prom = Command::new(&prom_bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            d.join("prom-data").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start prometheus");
    let auth = format!("Bearer {secret}");
    let query = |q: &str| -> Result<usize, String> {
        let r = https::request(
            &client,
            norn.port,
            "GET",
            &format!("/prometheus/api/v1/query?query={q}"),
            &[("Authorization", &auth)],
            &[],
        )?;
        if r.status != 200 {
            return Err(format!("{}: {}", r.status, r.body));
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        match query("up") {
            Ok(n) if n > 0 => break Ok(n),
            other if Instant::now() > deadline => break Err(format!("{other:?}")),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    let _ = prom.kill();
    let _ = prom.wait();
    let prom_log = std::fs::read_to_string(d.join("prometheus.log")).unwrap_or_default();
    assert!(
        result.is_ok(),
        "no data over TLS after 60s: {result:?}\n{prom_log}"
    );
    // Several series of Prometheus' own metrics arrived, and none of it unauthenticated.
    assert!(query("prometheus_build_info").unwrap() >= 1);
    let unauthenticated = https::get(&client, norn.port, "/prometheus/api/v1/query?query=up")
        .unwrap()
        .status;
    assert_eq!(unauthenticated, 401);
    assert!(!prom_log.contains("x509"), "{prom_log}");
}

/// Starts `norn` with plain HTTP (so the test harness can probe it) and `args`, without
/// waiting for `/ready`.
fn spawn_plain_http(dir: &Path, bucket: &Path, args: &[String]) -> Norn {
    std::fs::create_dir_all(dir).unwrap();
    let (port, grpc_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.join("norn.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg("--server.http-listen-address=127.0.0.1")
        .arg(format!("--server.http-listen-port={port}"))
        .arg("--server.grpc-listen-address=127.0.0.1")
        .arg(format!("--server.grpc-listen-port={grpc_port}"))
        .arg(format!(
            "--blocks-storage.tsdb.dir={}",
            dir.join("tsdb").display()
        ))
        .arg(format!(
            "--common.storage.filesystem.dir={}",
            bucket.display()
        ))
        .arg(format!(
            "--blocks-storage.bucket-store.sync-dir={}",
            dir.join("tsdb-sync").display()
        ))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start norn");
    let mut n = Norn::adopt(child, port, dir);
    n.grpc_port = grpc_port;
    n
}

/// Every gRPC hop of a microservices cluster over mTLS (each process serves gRPC with its
/// certificate, requires a client certificate of the cluster CA, and dials ingesters,
/// store-gateways and the query-frontend with its own), and gossip sealed with a key:
/// writes go distributor -> ingester, queries query-frontend <- querier worker -> ingester.
/// A plain-text gRPC client is refused at the handshake, and an ingester started without
/// the gossip key never joins the ring.
#[test]
fn microservices_with_grpc_mtls_and_a_gossip_key() {
    if !pki::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bucket = d.join("bucket");
    let ca = pki::ca(d, "cluster-ca");
    let node = pki::leaf(d, "node", &ca);
    let key = d.join("gossip.key");
    std::fs::write(&key, "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\n").unwrap();
    let gossip: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let seeds = &gossip[..1];

    let mut tls = tls_flags("grpc", &node, Some(&ca.crt));
    for client in [
        "ingester.client",
        "querier.store-gateway-client",
        "querier.frontend-client",
    ] {
        tls.extend([
            format!("--{client}.tls-enabled"),
            format!("--{client}.tls-ca-path={}", ca.crt.display()),
            format!("--{client}.tls-cert-path={}", node.crt.display()),
            format!("--{client}.tls-key-path={}", node.key.display()),
        ]);
    }
    let member = |i: usize, target: &str, keyed: bool, more: &[String]| -> Vec<String> {
        let mut a = common::gossip_args(gossip[i], seeds);
        a.extend([
            format!("--target={target}"),
            "--ingester.ring.replication-factor=1".into(),
            "--ingester.ring.heartbeat-period=500ms".into(),
        ]);
        a.extend(tls.iter().cloned());
        if keyed {
            a.push(format!(
                "--memberlist.encryption-key-path={}",
                key.display()
            ));
        }
        a.extend(more.iter().cloned());
        a
    };

    let mut ingester = spawn_plain_http(
        &d.join("ingester"),
        &bucket,
        &member(
            0,
            "ingester",
            true,
            &["--ingester.ring.instance-id=ingester-0".into()],
        ),
    );
    ingester.wait_ready();
    let mut distributor = spawn_plain_http(
        &d.join("distributor"),
        &bucket,
        &member(1, "distributor", true, &[]),
    );
    distributor.wait_ready();
    let mut frontend = spawn_plain_http(
        &d.join("frontend"),
        &bucket,
        &member(2, "query-frontend", true, &[]),
    );
    let frontend_address = format!(
        "--querier.frontend-address=127.0.0.1:{}",
        frontend.grpc_port
    );
    let mut querier = spawn_plain_http(
        &d.join("querier"),
        &bucket,
        &member(3, "querier", true, &[frontend_address]),
    );
    querier.wait_ready();
    // Ready once a querier worker is connected over mTLS.
    frontend.wait_ready();
    common::wait_ring_page(
        &distributor,
        "/ring",
        "ingester-0 ACTIVE",
        Duration::from_secs(30),
        common::all_active(1),
    );

    let tenant = Some("team-mtls");
    let now = common::now_ms();
    let (status, body) = distributor.push(
        tenant,
        &common::request(vec![common::series(
            &[("__name__", "over_mtls"), ("job", "tls")],
            &[(now, 42.0)],
        )]),
    );
    assert_eq!(status, 200, "push through the distributor: {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = frontend.get_json(
            tenant,
            &format!(
                "/prometheus/api/v1/query?query=over_mtls&time={}",
                now as f64 / 1000.0
            ),
        );
        if status == 200 && v["data"]["result"][0]["value"][1] == "42" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through frontend -> querier -> ingester: {status} {v}\n{}",
            querier.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Plain text to an mTLS gRPC port: the connection is closed at once.
    let started = Instant::now();
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", ingester.grpc_port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(started.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ingester.metric("norn_tls_handshake_failures_total{listener=\"grpc\"}") < 1.0 {
        assert!(Instant::now() < deadline, "refused handshake not counted");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An ingester without the gossip key: its packets are dropped, it never enters the ring.
    // Alive members on a node's /memberlist page, itself included.
    let rows = |n: &Norn| {
        n.get_text("/memberlist")
            .1
            .matches("<td>alive</td>")
            .count()
    };
    // The querier and the frontend joined last: on a loaded machine the distributor may not
    // have heard of them yet when the query above answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let members_before = loop {
        let n = rows(&distributor);
        if n == 4 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        members_before,
        4,
        "{}",
        distributor.get_text("/memberlist").1
    );
    let mut intruder = spawn_plain_http(
        &d.join("intruder"),
        &bucket,
        &member(
            4,
            "ingester",
            false,
            &["--ingester.ring.instance-id=intruder".into()],
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while ingester.metric("norn_memberlist_authentication_failures_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the intruder's gossip was not seen\n{}",
            intruder.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Several gossip and push/pull rounds later, the ring still has one member.
    std::thread::sleep(Duration::from_secs(4));
    let ring = common::ring_members(&distributor, "/ring");
    assert_eq!(ring.len(), 1, "{ring:?}");
    assert_eq!(ring[0].0, "ingester-0");
    assert_eq!(rows(&distributor), members_before);
    intruder.wait_ready();
    assert_eq!(rows(&intruder), 1, "{}", intruder.get_text("/memberlist").1);
    assert_eq!(common::ring_members(&intruder, "/ring").len(), 1);
}
