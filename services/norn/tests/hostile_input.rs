//! A hostile client against a real `norn` process: a seeded random stream of remote-write
//! requests (random label bytes, invalid UTF-8, timestamps over the whole `i64` range,
//! NaN/Inf/stale values, lying protobuf lengths, truncated or garbage snappy, wrong headers,
//! bad or missing tenants) and of PromQL strings (random tokens, deep nesting, long sums)
//! through the HTTP API, plus raw-socket abuse (huge declared bodies, partial headers).
//!
//! Throughout, the process must stay alive, every answer must be 2xx or 4xx — except a 503
//! from the query API whose `errorType` is `timeout` or `unavailable` (the query ran out of
//! time, or the querier is overloaded: the right answers for an expensive random query) —
//! and `/ready` must answer 200 within a second, checked by a thread that polls it the whole
//! time. Bounded: ~200 requests.
//!
//! The seed is printed; `NORN_HOSTILE_SEED=<n>` replays a run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Norn, now_ms, snappy, urlencode};

/// SplitMix64: a tiny deterministic generator, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// --- a protobuf writer that can lie (lengths, UTF-8) ------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn label_name(r: &mut Rng) -> Vec<u8> {
    match r.below(6) {
        0 => b"__name__".to_vec(),
        1 => r
            .pick(&[
                &b"job"[..],
                b"instance",
                b"le",
                b"a-b",
                b"",
                b"1x",
                b"__replica__",
            ])
            .to_vec(),
        2 => r.bytes(12),
        3 => vec![b'x'; r.below(3000) as usize],
        _ => format!("l{}", r.below(40)).into_bytes(),
    }
}

fn label_value(r: &mut Rng) -> Vec<u8> {
    match r.below(5) {
        0 => Vec::new(),
        1 => r.bytes(16),
        2 => vec![b'v'; r.below(5000) as usize],
        3 => "ünïcödé ✓".as_bytes().to_vec(),
        _ => format!("v{}", r.below(100)).into_bytes(),
    }
}

fn timestamp(r: &mut Rng) -> i64 {
    let now = now_ms();
    match r.below(10) {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => i64::MIN + 1,
        3 => i64::MAX - 1,
        4 => -1 - r.below(1 << 40) as i64,
        5 => 0,
        6 => r.next() as i64,
        7 => now + r.below(10 * 365 * 86_400_000) as i64,
        _ => now - r.below(3_600_000) as i64,
    }
}

fn value(r: &mut Rng) -> f64 {
    match r.below(6) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => f64::from_bits(0x7ff0_0000_0000_0002),
        4 => f64::from_bits(r.next()),
        _ => r.below(1000) as f64,
    }
}

fn write_request(r: &mut Rng) -> Vec<u8> {
    let mut req = Vec::new();
    for _ in 0..r.below(20) {
        let mut ts = Vec::new();
        for _ in 0..r.below(35) {
            let mut l = Vec::new();
            len_field(&mut l, 1, &label_name(r));
            len_field(&mut l, 2, &label_value(r));
            len_field(&mut ts, 1, &l);
        }
        for _ in 0..r.below(50) {
            let mut s = Vec::new();
            varint(&mut s, 1 << 3 | 1);
            s.extend_from_slice(&value(r).to_bits().to_le_bytes());
            varint(&mut s, 2 << 3);
            varint(&mut s, timestamp(r) as u64);
            len_field(&mut ts, 2, &s);
        }
        len_field(&mut req, 1, &ts);
    }
    if r.chance(20) {
        // Metadata, sometimes with absurd sizes.
        for _ in 0..r.below(50) {
            let mut m = Vec::new();
            varint(&mut m, 1 << 3);
            varint(&mut m, r.below(10));
            len_field(&mut m, 2, &label_name(r));
            len_field(&mut m, 4, &label_value(r));
            len_field(&mut req, 3, &m);
        }
    }
    if r.chance(15) {
        // A length that promises far more than follows ("huge counts").
        varint(&mut req, 1 << 3 | 2);
        varint(&mut req, 1 << (20 + r.below(40)));
        req.extend_from_slice(&r.bytes(64));
    }
    if r.chance(5) {
        req.extend_from_slice(&r.bytes(256));
    }
    req
}

fn push_body(r: &mut Rng) -> Vec<u8> {
    let raw = write_request(r);
    match r.below(12) {
        0 => {
            let mut c = snappy(&raw);
            let keep = r.below(c.len() as u64 + 1) as usize;
            c.truncate(keep);
            c
        }
        1 => r.bytes(512),
        2 => {
            // Snappy header claiming up to 2^35 decoded bytes, then garbage.
            let mut c = Vec::new();
            varint(&mut c, 1 << (20 + r.below(16)));
            c.extend_from_slice(&r.bytes(64));
            c
        }
        3 => raw, // not compressed at all
        _ => snappy(&raw),
    }
}

fn tenant(r: &mut Rng) -> Option<String> {
    match r.below(12) {
        0 => None,
        1 => Some(
            r.pick(&["rules", "__mimir_cluster", "__x", "a/b", "..", ""])
                .to_string(),
        ),
        2 => Some("x".repeat(151)),
        _ => Some(format!("t{}", r.below(3))),
    }
}

// --- PromQL --------------------------------------------------------------------------------

const TOKENS: &[&str] = &[
    "up",
    "x",
    "http_requests_total",
    "{",
    "}",
    "(",
    ")",
    "[5m]",
    "[1s:1ms]",
    "[",
    "]",
    "+",
    "-",
    "*",
    "/",
    "^",
    "%",
    "==",
    "!=",
    ">",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "(job)",
    "on",
    "ignoring",
    "group_left",
    "sum",
    "rate",
    "count_over_time",
    "histogram_quantile",
    "label_replace",
    "topk",
    "offset",
    "@",
    "1",
    "0.5",
    "-1e308",
    "NaN",
    "Inf",
    "\"s\"",
    "'",
    ",",
    "=~",
    "\".*\"",
    "job=\"a\"",
    "__name__",
    "5m",
    "bool",
    "abs",
    "vector(1)",
    "time()",
    "sort_desc",
    "absent",
    "scalar",
    "\u{0}",
    "ü",
    "#",
    "\\",
];

fn promql(r: &mut Rng) -> String {
    match r.below(10) {
        0 => {
            let n = 1 + r.below(5000) as usize;
            format!("{}1{}", "(".repeat(n), ")".repeat(n))
        }
        1 => {
            let n = 1 + r.below(10_000) as usize;
            format!("1{}", "+1".repeat(n))
        }
        2 => String::from_utf8_lossy(&r.bytes(200)).to_string(),
        3 => {
            let n = 1 + r.below(300) as usize;
            format!("{}up{}", "sum(".repeat(n), ")".repeat(n))
        }
        _ => {
            let n = 1 + r.below(30);
            (0..n)
                .map(|_| *r.pick(TOKENS))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

fn time_param(r: &mut Rng) -> String {
    match r.below(6) {
        0 => "-9223372036854775808".into(),
        1 => "1e300".into(),
        2 => "NaN".into(),
        3 => "2026-13-45T99:00:00Z".into(),
        _ => format!("{}", now_ms() / 1000 - r.below(86_400) as i64),
    }
}

// --- the run -------------------------------------------------------------------------------

struct Answer {
    status: u16,
    body: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn read_answer(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
    let status = resp.status().as_u16();
    let mut body = String::new();
    let _ = resp
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .reader()
        .read_to_string(&mut body);
    Answer { status, body }
}

/// A raw HTTP/1.1 exchange: `head` is sent, then `body`; returns the status line's code
/// (0 if the server closed without answering).
fn raw(port: u16, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn random_hostile_requests_never_kill_or_stall_the_process() {
    let seed: u64 = std::env::var("NORN_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    eprintln!("hostile input seed: {seed} (NORN_HOSTILE_SEED={seed} replays it)");
    let mut r = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut norn = Norn::start(
        dir.path(),
        &[
            "--querier.timeout=10s",
            "--server.http-server-read-header-timeout=1s",
        ],
    );
    let port = norn.port;

    // /ready, polled the whole time, must answer 200 within a second.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        let url = norn.url("/ready");
        std::thread::spawn(move || {
            let a: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(1)))
                .build()
                .into();
            let mut failures = Vec::new();
            let mut checks = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match a.get(&url).call() {
                    Ok(resp) if resp.status() == 200 => {}
                    Ok(resp) => failures.push(format!("status {}", resp.status())),
                    Err(e) => failures.push(format!("{e} after {:?}", started.elapsed())),
                }
                checks += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (checks, failures)
        })
    };

    let a = agent();
    let started = Instant::now();
    let mut problems: Vec<String> = Vec::new();
    for i in 0..200 {
        let (what, answer) = match r.below(10) {
            0..=4 => {
                let body = push_body(&mut r);
                let t = tenant(&mut r);
                // Refused from the headers alone; a body this large is not read, so the
                // server may close while the client still sends it.
                let unread = body.len() as u64 > norn_server::guard::DRAIN_MAX_BYTES
                    && t.as_deref()
                        .is_none_or(|t| norn_model::TenantId::new(t).is_err());
                let mut req = a.post(&norn.url("/api/v1/push"));
                match r.below(10) {
                    0 => {}
                    1 => req = req.header("Content-Encoding", "gzip"),
                    _ => req = req.header("Content-Encoding", "snappy"),
                }
                if let Some(t) = &t {
                    req = req.header("X-Scope-OrgID", t);
                }
                let resp = req.send(&body[..]);
                if unread && resp.is_err() {
                    continue;
                }
                (format!("push ({} bytes, tenant {t:?})", body.len()), resp)
            }
            5..=8 => {
                let q = promql(&mut r);
                let t = tenant(&mut r);
                let path = *r.pick(&["query", "query_range", "format_query", "series", "labels"]);
                let mut params = format!("query={}", urlencode(&q));
                if path == "query_range" {
                    params.push_str(&format!(
                        "&start={}&end={}&step={}",
                        time_param(&mut r),
                        time_param(&mut r),
                        r.pick(&["1", "0", "-1", "0.001", "1e-9", "15s", "1y"])
                    ));
                } else if path == "series" {
                    params = format!("match[]={}", urlencode(&q));
                } else {
                    params.push_str(&format!("&time={}", time_param(&mut r)));
                }
                let url = norn.url(&format!("/prometheus/api/v1/{path}"));
                let resp = if r.chance(50) {
                    let mut req = a
                        .post(&url)
                        .header("Content-Type", "application/x-www-form-urlencoded");
                    if let Some(t) = &t {
                        req = req.header("X-Scope-OrgID", t);
                    }
                    req.send(params.as_bytes())
                } else {
                    let mut req = a.get(&format!("{url}?{params}"));
                    if let Some(t) = &t {
                        req = req.header("X-Scope-OrgID", t);
                    }
                    req.call()
                };
                (format!("{path} of {} bytes: {:.80}", q.len(), q), resp)
            }
            _ => {
                // Raw-socket abuse: the answer must come before the body is sent.
                let code = match r.below(3) {
                    0 => raw(
                        port,
                        "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\nConnection: close\r\n\r\n",
                        b"",
                    ),
                    1 => raw(
                        port,
                        "POST /prometheus/api/v1/query HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t0\r\nContent-Length: 300000000\r\nConnection: close\r\n\r\n",
                        b"",
                    ),
                    _ => raw(port, "GET /ready HTTP/1.1\r\nHost: x\r\n", b""),
                };
                if !(code == 0 || (400..500).contains(&code)) {
                    problems.push(format!("request {i}: raw abuse answered {code}"));
                }
                if let Some(c) = norn.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    panic!(
                        "norn died at request {i} (raw abuse): {status}\n{}",
                        norn.log()
                    );
                }
                continue;
            }
        };
        if let Some(c) = norn.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "norn died at request {i} ({what}): {status}\n{}",
                norn.log()
            );
        }
        let answer = match answer {
            Ok(resp) => read_answer(resp),
            Err(e) => {
                problems.push(format!("request {i} ({what}): no answer: {e}"));
                continue;
            }
        };
        let query_timeout =
            answer.status == 503 && answer.body.contains("\"errorType\":\"timeout\"");
        let ok = (200..300).contains(&answer.status)
            || (400..500).contains(&answer.status)
            || (query_timeout && !what.starts_with("push"));
        if !ok {
            problems.push(format!(
                "request {i} ({what}): {} {:.300}",
                answer.status, answer.body
            ));
        }
    }
    let elapsed = started.elapsed();

    // Whatever was accepted must survive a cut: a sample near i64::MIN once made the flush
    // walk 2h ranges from there and abort.
    let flush = a
        .post(&norn.url("/ingester/flush?wait=true&force=true"))
        .send(&[][..])
        .map(read_answer);
    match flush {
        Ok(ans) => assert!(
            ans.status == 204,
            "flush after the storm: {} {}",
            ans.status,
            ans.body
        ),
        Err(e) => panic!("flush after the storm: {e}\n{}", norn.log()),
    }
    if let Some(c) = norn.child.as_mut()
        && let Ok(Some(status)) = c.try_wait()
    {
        panic!("norn died flushing: {status}\n{}", norn.log());
    }

    // Still alive, still correct: a valid push and a query for it.
    let t = now_ms();
    let req = common::request(vec![common::series(
        &[("__name__", "after_the_storm"), ("job", "x")],
        &[(t, 1.0)],
    )]);
    // A fresh tenant: the storm's tenants may hold samples up to the future grace period,
    // which a flush makes the floor of their heads.
    let (s, body) = norn.push(Some("after"), &req);
    assert_eq!(s, 200, "{body}");
    let got = norn.raw_samples(Some("after"), "after_the_storm", t - 1000, t + 1000);
    assert_eq!(got.len(), 1, "{got:?}");

    stop.store(true, Ordering::SeqCst);
    let (checks, ready_failures) = watcher.join().unwrap();
    eprintln!("{checks} /ready checks over {elapsed:?}");
    assert!(
        problems.is_empty(),
        "{} bad answers:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        norn.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        ready_failures.is_empty(),
        "/ready did not answer 200 within 1s {} times of {checks}: {:?}",
        ready_failures.len(),
        &ready_failures[..ready_failures.len().min(10)]
    );
}

/// The edge's answers to specific hostile requests, end to end.
#[test]
fn hostile_edge_requests_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let norn = Norn::start(
        dir.path(),
        &[
            "--query-frontend.max-body-size=1000",
            "--ingester.max-global-metadata-per-user=3",
        ],
    );
    let port = norn.port;
    // No tenant, a huge declared body: 401 before the body.
    assert_eq!(
        raw(
            port,
            "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n",
            b""
        ),
        401
    );
    // With a tenant: 413 before the body.
    assert_eq!(
        raw(
            port,
            "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t\r\nContent-Length: 300000000\r\n\r\n",
            b""
        ),
        413
    );
    assert_eq!(
        raw(
            port,
            "POST /prometheus/api/v1/query HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t\r\nContent-Length: 1001\r\n\r\n",
            b""
        ),
        413
    );
    assert_eq!(
        raw(
            port,
            "POST /prometheus/api/v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n",
            b""
        ),
        401
    );
    // The query API's 401 says who is missing, with an auth error type.
    let (s, v) = norn.get_json(None, "/prometheus/api/v1/query?query=up");
    assert_eq!(s, 401);
    assert_eq!(v["errorType"], "unauthorized", "{v}");
    // A tenant named like a top-level bucket directory is refused.
    let req = common::request(vec![common::series(
        &[("__name__", "x")],
        &[(now_ms(), 1.0)],
    )]);
    let (s, body) = norn.push(Some("rules"), &req);
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("reserved"), "{body}");
    // A sample at i64::MIN (the head's "empty" marker) and one 10 years ahead: 400, and the
    // valid sample beside them is stored.
    let t = now_ms();
    let req = common::request(vec![
        common::series(&[("__name__", "edge")], &[(i64::MIN, 1.0)]),
        common::series(
            &[("__name__", "edge2")],
            &[(t + 10 * 365 * 86_400_000, 1.0)],
        ),
        common::series(&[("__name__", "edge3")], &[(t, 1.0)]),
    ]);
    let (s, body) = norn.push(Some("t"), &req);
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        norn.raw_samples(Some("t"), "edge3", t - 1000, t + 1000)
            .len(),
        1
    );
    // Metadata: families read back grouped, whatever order they came in.
    let md = |name: &str, help: &str| norn_proto::prometheus::MetricMetadata {
        r#type: 1,
        metric_family_name: name.into(),
        help: help.into(),
        unit: String::new(),
    };
    let req = norn_proto::prometheus::WriteRequest {
        timeseries: vec![],
        metadata: vec![md("b", "1"), md("a", "1"), md("b", "2")],
    };
    let (s, body) = norn.push(Some("t"), &req);
    assert_eq!(s, 200, "{body}");
    let (s, v) = norn.get_json(Some("t"), "/prometheus/api/v1/metadata");
    assert_eq!(s, 200);
    assert_eq!(v["data"]["a"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"]["b"].as_array().unwrap().len(), 2, "{v}");
    // The tenant holds 3 entries, its limit: new families are dropped and counted, the push
    // itself succeeds (as in Mimir).
    let req = norn_proto::prometheus::WriteRequest {
        timeseries: vec![],
        metadata: vec![md("c", "1"), md("d", "1")],
    };
    let (s, body) = norn.push(Some("t"), &req);
    assert_eq!(s, 200, "{body}");
    let (_, v) = norn.get_json(Some("t"), "/prometheus/api/v1/metadata");
    assert!(
        v["data"].get("c").is_none() && v["data"].get("d").is_none(),
        "{v}"
    );
    assert_eq!(
        norn.metric(
            "norn_discarded_metadata_total{reason=\"per_user_metadata_limit\",tenant=\"t\"}"
        ),
        2.0
    );
}

/// Names that live beside the tenants — at the bucket's top level, or in the ingester's TSDB
/// directory — can never be tenant ids: such a tenant would lose its data or never open.
#[test]
fn names_beside_tenants_are_not_tenant_ids() {
    let names = norn_storage::layout::RESERVED_TOP_LEVEL
        .iter()
        .chain(&[norn_tsdb::dir_lock::LOCK_FILE]);
    for name in names {
        assert!(
            norn_model::TenantId::new(name).is_err(),
            "{name:?} sits beside the tenants but is a valid tenant id"
        );
    }
}
