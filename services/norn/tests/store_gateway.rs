//! The store-gateway as real processes on a real S3 server (`moto_server`), checked against
//! a real Prometheus (Debian's 2.42) serving the same blocks.
//!
//! One cluster serves every check, each process on 127.0.0.1 with free ports and its own
//! instance id, joined only by gossip: a distributor, three ingesters (replication factor 3),
//! a querier and two store-gateways that both load every block
//! (`--store-gateway.sharding-ring.replication-factor=2`). The data is written by Prometheus'
//! own tooling: `promtool tsdb create-blocks-from openmetrics` turns six hours of counters,
//! gauges and classic-histogram buckets (as plain series), three days ago, into three 2h
//! blocks per tenant, and `norn tools import-blocks` uploads them into the tenants of the
//! bucket. Prometheus gets a copy of tenant A's blocks in its data directory (retention long
//! enough to keep them, block compaction off so its label APIs see the same block ranges).
//! Three days ago is older than `--querier.query-ingesters-within` (13h) and than the
//! store-gateways' `ignore-blocks-within` (10h), so with the defaults the historical range is
//! read from the store-gateways alone, as in production.
//!
//! In order, on that one cluster:
//! 1. bytes: a selective query on cold caches reads a small fraction of the blocks' bytes
//!    from the bucket (`norn_storegateway_bucket_bytes_fetched_total`, both store-gateways);
//! 2. differential: instant and range queries of several shapes (selectors, regex matchers,
//!    rate, sum by, histogram_quantile, offsets, across block boundaries) and the label APIs
//!    (`/series`, `/labels`, `/label/<name>/values`, with and without `match[]`, over full and
//!    partial ranges) answer what Prometheus answers;
//! 3. tenant isolation: tenant B's imported series (under A's metric names, and its own)
//!    never reach tenant A through any of these APIs, nor A's reach B, although B's blocks
//!    carry the very block ids of A's (so nothing keyed by block id alone can mix them);
//! 4. `kill -9` of one store-gateway while two threads loop over queries: every answer is
//!    complete (equal to Prometheus), never a partial 200; the querier's retry of the other
//!    replica is what answers (`norn_querier_storegateway_refetches_total` rises);
//! 5. both store-gateways down: every read API fails with a 5xx that names the missing blocks;
//! 6. one store-gateway restarted: it serves at once from the index-headers it kept on disk
//!    (none rebuilt) and every answer is complete again.
//!
//! Sample timestamps sit at 7 s past the 15 s grid and evaluation times at 3 s past the
//! minute, so no sample falls on the edge of a range window, where Prometheus 2.x
//! (left-closed) and 3.x (left-open, Norn) differ. Values are integers or multiples of 0.25,
//! exact through the text format.
//!
//! Without `promtool`, `prometheus` or `moto_server` the test prints `SKIP` and passes,
//! unless `NORN_REQUIRE_PEERS=1`. It takes about a minute on a loaded two-core machine.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Norn, Prometheus, Run, all_active, block_dirs, compare_results, free_port, gossip_args, now_ms,
    peer, request, run_bounded, series, urlencode, wait_ring_page,
};

const TENANT_A: &str = "team-a";
const TENANT_B: &str = "team-b";
const STEP_S: i64 = 15;
const HOUR_S: i64 = 3600;
/// Six hours: three 2h blocks.
const SAMPLES: i64 = 6 * HOUR_S / STEP_S;
/// Store-gateways in the cluster; each loads every block.
const GATEWAYS: usize = 2;

/// One input series: OpenMetrics family and type, labels (with `__name__` first), samples
/// as (unix seconds, value).
struct Input {
    family: &'static str,
    kind: &'static str,
    labels: Vec<(String, String)>,
    samples: Vec<(i64, f64)>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Tenant A: ~400 series over `[t0, t0 + 6h)`, one sample every 15 s at 7 s past the grid:
/// HTTP request counters (with resets), memory gauges, classic-histogram buckets as plain
/// series, temperatures (negative and fractional), and a gauge of the first hour only.
fn tenant_a(t0: i64) -> Vec<Input> {
    let ts = |i: i64| t0 + 7 + STEP_S * i;
    let mut out = Vec::new();
    for (j, job) in ["api", "web", "batch"].iter().enumerate() {
        for inst in 0..10usize {
            let instance = format!("i{inst}");
            for (m, method) in ["GET", "POST"].iter().enumerate() {
                for (c, code) in ["200", "404", "500"].iter().enumerate() {
                    // Counters of an exporter that ran before the range: far from zero.
                    let mut v = 1e6 * (1 + inst) as f64;
                    let samples = (0..SAMPLES)
                        .map(|i| {
                            if (inst + c) % 3 == 0 && i % 331 == 330 {
                                v = 0.0; // a restart of the exporter
                            }
                            v += (1 + (j * 5 + inst * 3 + m * 2 + c) % 7) as f64
                                * (1 + (i as usize * 31 + c) % 5) as f64;
                            (ts(i), v)
                        })
                        .collect();
                    out.push(Input {
                        family: "http_requests",
                        kind: "counter",
                        labels: labels(&[
                            ("__name__", "http_requests_total"),
                            ("code", code),
                            ("instance", &instance),
                            ("job", job),
                            ("method", method),
                        ]),
                        samples,
                    });
                }
            }
        }
    }
    for (j, job) in ["api", "web", "batch"].iter().enumerate() {
        for inst in 0..10usize {
            let base = 2e8 + (j * 10 + inst) as f64 * 5e7;
            out.push(Input {
                family: "memory_bytes",
                kind: "gauge",
                labels: labels(&[
                    ("__name__", "memory_bytes"),
                    ("instance", &format!("i{inst}")),
                    ("job", job),
                ]),
                samples: (0..SAMPLES)
                    .map(|i| {
                        let wobble = ((i as usize * 7919 + inst * 13 + j) % 1000) as f64;
                        (ts(i), base + wobble * 1e5)
                    })
                    .collect(),
            });
        }
    }
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
    for (j, job) in ["api", "web", "batch"].iter().enumerate() {
        for inst in 0..10usize {
            let mut counts = [1e5f64; 6];
            let mut per: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 6];
            for i in 0..SAMPLES {
                let obs = ((i as usize * 37 + inst * 11 + j * 5) % 100) as f64 / 100.0;
                for (b, le) in [0.05, 0.1, 0.25, 0.5, 1.0, f64::INFINITY]
                    .iter()
                    .enumerate()
                {
                    if obs <= *le {
                        counts[b] += 3.0;
                    }
                    per[b].push((ts(i), counts[b]));
                }
            }
            for (b, le) in bounds.iter().enumerate() {
                out.push(Input {
                    family: "request_duration_seconds_bucket",
                    kind: "gauge",
                    labels: labels(&[
                        ("__name__", "request_duration_seconds_bucket"),
                        ("instance", &format!("i{inst}")),
                        ("job", job),
                        ("le", le),
                    ]),
                    samples: std::mem::take(&mut per[b]),
                });
            }
        }
    }
    for (r, room) in ["hall", "lab", "roof"].iter().enumerate() {
        out.push(Input {
            family: "temperature_celsius",
            kind: "gauge",
            labels: labels(&[("__name__", "temperature_celsius"), ("room", room)]),
            samples: (0..SAMPLES)
                .map(|i| {
                    let v = -4.0 + r as f64 * 9.5 + ((i as usize * 7 + r) % 40) as f64 * 0.25;
                    (ts(i), v)
                })
                .collect(),
        });
    }
    out.push(Input {
        family: "ephemeral_gauge",
        kind: "gauge",
        labels: labels(&[
            ("__name__", "ephemeral_gauge"),
            ("job", "api"),
            ("phase", "warmup"),
        ]),
        samples: (0..HOUR_S / STEP_S).map(|i| (ts(i), i as f64)).collect(),
    });
    out
}

/// Tenant B: series under tenant A's metric name with values of its own, and a metric and a
/// label name tenant A does not have, over the same hours.
fn tenant_b(t0: i64) -> Vec<Input> {
    let ts = |i: i64| t0 + 7 + STEP_S * i;
    let mut out = Vec::new();
    for inst in 0..5 {
        out.push(Input {
            family: "http_requests",
            kind: "counter",
            labels: labels(&[
                ("__name__", "http_requests_total"),
                ("code", "200"),
                ("instance", &format!("i{inst}")),
                ("job", "b-secret"),
                ("method", "GET"),
            ]),
            samples: (0..SAMPLES).map(|i| (ts(i), (i * 1000) as f64)).collect(),
        });
    }
    out.push(Input {
        family: "tenant_b_only",
        kind: "gauge",
        labels: labels(&[("__name__", "tenant_b_only"), ("owner", "b")]),
        samples: (0..SAMPLES).map(|i| (ts(i), 42.0)).collect(),
    });
    out
}

fn openmetrics(inputs: &[Input]) -> String {
    let mut out = String::new();
    let mut last_family = "";
    for s in inputs {
        if s.family != last_family {
            writeln!(out, "# HELP {} Store-gateway test data.", s.family).unwrap();
            writeln!(out, "# TYPE {} {}", s.family, s.kind).unwrap();
            last_family = s.family;
        }
        let name = &s.labels[0].1;
        let rest: Vec<String> = s.labels[1..]
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let selector = format!("{name}{{{}}}", rest.join(","));
        for (t, v) in &s.samples {
            writeln!(out, "{selector} {v} {t}").unwrap();
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Writes `inputs` as 2h blocks with promtool into `out`; returns the block ids.
fn promtool_blocks(promtool: &Path, dir: &Path, name: &str, inputs: &[Input]) -> Vec<String> {
    let om = dir.join(format!("{name}.om"));
    std::fs::write(&om, openmetrics(inputs)).unwrap();
    let out = dir.join(name);
    let run = run_bounded(
        Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&out),
        Duration::from_secs(120),
    );
    assert!(run.ok(), "promtool: {}", run.text());
    std::fs::remove_file(&om).unwrap();
    block_dirs(&out)
}

/// The flags that point a process (or `norn tools`) at the moto bucket.
fn s3_flags(endpoint: &str) -> Vec<String> {
    vec![
        "--common.storage.backend=s3".to_string(),
        format!("--common.storage.s3.endpoint={endpoint}"),
        "--common.storage.s3.bucket-name=norn-sg".to_string(),
        "--common.storage.s3.access-key-id=test".to_string(),
        "--common.storage.s3.secret-access-key=test".to_string(),
        "--common.storage.s3.region=us-east-1".to_string(),
        "--common.storage.s3.insecure=true".to_string(),
    ]
}

fn import(s3: &[String], tenant: &str, dir: &Path) -> Run {
    let run = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_norn"))
            .args(["tools", "import-blocks"])
            .arg(format!("--tenant={tenant}"))
            .args(s3)
            .arg(dir),
        Duration::from_secs(120),
    );
    assert!(run.ok(), "import into {tenant}: {}", run.text());
    run
}

/// Bytes of a block's index and chunk files on disk.
fn block_bytes(dir: &Path) -> u64 {
    let mut total = std::fs::metadata(dir.join("index")).unwrap().len();
    for e in std::fs::read_dir(dir.join("chunks")).unwrap() {
        total += e.unwrap().metadata().unwrap().len();
    }
    total
}

fn read_meta(block: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(block.join("meta.json")).unwrap()).unwrap()
}

/// Renames the blocks under `dir` to the ids of the blocks under `ids_from` with the same
/// min time (directory and `meta.json`).
fn give_ids(dir: &Path, ids_from: &Path) {
    for b in block_dirs(dir) {
        let mut meta = read_meta(&dir.join(&b));
        let twin = block_dirs(ids_from)
            .into_iter()
            .find(|a| read_meta(&ids_from.join(a))["minTime"] == meta["minTime"])
            .unwrap_or_else(|| panic!("no block of {} starts with {b}", ids_from.display()));
        meta["ulid"] = twin.clone().into();
        std::fs::write(
            dir.join(&b).join("meta.json"),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        std::fs::rename(dir.join(&b), dir.join(&twin)).unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

struct Cluster {
    /// Kept for the lifetime of the cluster (its processes are killed on drop).
    _ingesters: Vec<Norn>,
    distributor: Norn,
    querier: Norn,
    gateways: Vec<Norn>,
}

fn start_cluster(root: &Path, s3: &[String]) -> Cluster {
    let gossip: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |name: &str, target: &str, own: &[String]| -> Norn {
        let mut args = vec![
            format!("--target={target}"),
            format!("--memberlist.nodename={name}"),
            "--ingester.ring.heartbeat-period=500ms".to_string(),
            "--ingester.ring.heartbeat-timeout=10s".to_string(),
            "--ingester.ring.replication-factor=3".to_string(),
            // Every store-gateway loads every block: one may die and the other answers.
            format!("--store-gateway.sharding-ring.replication-factor={GATEWAYS}"),
            "--store-gateway.sharding-ring.heartbeat-period=1s".to_string(),
            // Long enough that a killed store-gateway stays in the ring through the kill
            // check: the querier must retry the other replica, not skip the dead one.
            "--store-gateway.sharding-ring.heartbeat-timeout=5m".to_string(),
            // Store-gateways see new blocks within 2 s; the querier re-reads the block list
            // as often and lets a block uploaded in the last 3 intervals (6 s) be missing
            // from every store-gateway. The blocks are imported well before the cluster
            // starts, so no check below falls in that grace.
            "--blocks-storage.bucket-store.sync-interval=2s".to_string(),
        ];
        args.extend(s3.iter().cloned());
        args.extend(own.iter().cloned());
        let port = if let Some(i) = name.strip_prefix("ingester-") {
            gossip[i.parse::<usize>().unwrap()]
        } else {
            free_port()
        };
        args.extend(gossip_args(port, &gossip));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = root.join(name);
        Norn::start_with_bucket(&dir, &dir.join("unused-bucket"), &refs)
    };
    let ingesters: Vec<Norn> = (0..3)
        .map(|i| {
            let name = format!("ingester-{i}");
            let tokens = root.join(&name).join("tokens.json");
            start(
                &name,
                "ingester",
                &[
                    format!("--ingester.ring.instance-id={name}"),
                    format!("--ingester.ring.tokens-file-path={}", tokens.display()),
                ],
            )
        })
        .collect();
    let gateways: Vec<Norn> = (0..GATEWAYS)
        .map(|i| {
            let name = format!("store-gateway-{i}");
            start(
                &name,
                "store-gateway",
                &[format!("--store-gateway.sharding-ring.instance-id={name}")],
            )
        })
        .collect();
    let distributor = start(
        "distributor-0",
        "distributor",
        &["--distributor.ingestion-rate-limit=10000000".to_string()],
    );
    let querier = start("querier-0", "querier", &[]);
    Cluster {
        _ingesters: ingesters,
        distributor,
        querier,
        gateways,
    }
}

impl Cluster {
    fn gateway(&self, i: usize) -> &Norn {
        &self.gateways[i]
    }

    /// Bytes the running store-gateways read from the bucket for queries, by kind
    /// (postings, series, chunks; index-header builds are not queries).
    fn query_bytes_fetched(&self) -> [f64; 3] {
        let mut out = [0.0; 3];
        for g in &self.gateways {
            for (k, kind) in ["postings", "series", "chunks"].iter().enumerate() {
                out[k] += g.metric(&format!(
                    "norn_storegateway_bucket_bytes_fetched_total{{kind=\"{kind}\"}}"
                ));
            }
        }
        out
    }
}

/// An API path for both: Prometheus serves it at `/api/v1/…`, Norn at
/// `/prometheus/api/v1/…`.
fn norn_path(p: &str) -> String {
    format!("/prometheus{p}")
}

/// GET through the querier as `tenant` with a fresh agent (usable from any thread).
fn norn_get(port: u16, tenant: &str, path: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let resp = agent
        .get(&format!("http://127.0.0.1:{port}{}", norn_path(path)))
        .header("X-Scope-OrgID", tenant)
        .call();
    let Ok(mut resp) = resp else {
        return (0, serde_json::Value::Null);
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// Whether two answers of an API path agree: query results as in the PromQL differential
/// test, label lists exactly, series lists as sets.
fn same_answer(
    path: &str,
    prom: &serde_json::Value,
    norn: &serde_json::Value,
) -> Result<(), String> {
    if norn["status"] != "success" {
        return Err(format!("norn: {norn}"));
    }
    if path.starts_with("/api/v1/query") {
        return compare_results(prom, norn);
    }
    let as_set = |v: &serde_json::Value| -> Vec<String> {
        let mut out: Vec<String> = v["data"]
            .as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect())
            .unwrap_or_default();
        out.sort();
        out
    };
    let (p, n) = (as_set(prom), as_set(norn));
    if p == n {
        return Ok(());
    }
    let only_p: Vec<_> = p.iter().filter(|x| !n.contains(x)).take(5).collect();
    let only_n: Vec<_> = n.iter().filter(|x| !p.contains(x)).take(5).collect();
    Err(format!(
        "{} vs {} entries: only in prometheus {only_p:?}, only in norn {only_n:?}",
        p.len(),
        n.len()
    ))
}

const QUERIES: &[&str] = &[
    "http_requests_total{job=\"api\",instance=\"i3\"}",
    "http_requests_total{code=~\"5..\",instance=~\"i[0-3]\"}",
    "http_requests_total{method!=\"GET\",code!~\"2..|4..\"}",
    "{__name__=~\"memory_.*|temperature_.*\"}",
    "ephemeral_gauge",
    "rate(http_requests_total{job=\"web\"}[5m])",
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum by (code, method) (increase(http_requests_total[1h]))",
    "count(http_requests_total)",
    "resets(http_requests_total{job=\"batch\"}[1h])",
    "count by (le) (request_duration_seconds_bucket)",
    "histogram_quantile(0.9, sum by (le, job) (rate(request_duration_seconds_bucket[10m])))",
    "max_over_time(memory_bytes[30m])",
    "avg by (job) (memory_bytes)",
    "temperature_celsius offset 1h",
    "changes(temperature_celsius[20m])",
    "sum(memory_bytes) / count(memory_bytes)",
];

/// Every API path compared with Prometheus, as `/api/v1/…` (seconds since the epoch).
fn api_paths(t0: i64) -> Vec<String> {
    let mut out = Vec::new();
    for q in QUERIES {
        let q = urlencode(q);
        // Inside the first block, 3 s after a block boundary (the lookback reaches into the
        // block before), and after the last sample.
        for t in [t0 + HOUR_S + 1803, t0 + 2 * HOUR_S + 3, t0 + 6 * HOUR_S + 3] {
            out.push(format!("/api/v1/query?query={q}&time={t}"));
        }
        // All three blocks and past their end, every 2 minutes.
        out.push(format!(
            "/api/v1/query_range?query={q}&start={}&end={}&step=120",
            t0 + 3,
            t0 + 6 * HOUR_S + 603
        ));
    }
    let full = format!("start={t0}&end={}", t0 + 6 * HOUR_S);
    // From just past the first block: its series and label values are not in range.
    let late = format!("start={}&end={}", t0 + 2 * HOUR_S + 3, t0 + 6 * HOUR_S);
    // Half an hour after the ephemeral gauge ended, inside the first block.
    let mid = format!("start={}&end={}", t0 + 90 * 60, t0 + 6 * HOUR_S);
    let m = |s: &str| format!("match[]={}", urlencode(s));
    for range in [&full, &late] {
        out.push(format!("/api/v1/labels?{range}"));
        out.push(format!("/api/v1/label/__name__/values?{range}"));
        out.push(format!("/api/v1/label/phase/values?{range}"));
        out.push(format!(
            "/api/v1/series?{}&{}&{range}",
            m("memory_bytes"),
            m("ephemeral_gauge")
        ));
    }
    out.push(format!("/api/v1/labels?{}&{full}", m("memory_bytes")));
    out.push(format!(
        "/api/v1/label/job/values?{}&{full}",
        m("http_requests_total{code=\"500\"}")
    ));
    out.push(format!("/api/v1/label/instance/values?{full}"));
    out.push(format!("/api/v1/label/phase/values?{mid}"));
    out.push(format!("/api/v1/labels?{mid}"));
    out.push(format!(
        "/api/v1/labels?{}&{mid}",
        m("{__name__=~\"ephemeral_gauge|temperature_celsius\"}")
    ));
    out.push(format!(
        "/api/v1/label/phase/values?{}&{mid}",
        m("{job=\"api\"}")
    ));
    out.push(format!(
        "/api/v1/series?{}&{full}",
        m("http_requests_total{instance=\"i1\",method=\"POST\"}")
    ));
    out.push(format!("/api/v1/series?{}&{full}", m("{__name__=~\".+\"}")));
    out.push(format!(
        "/api/v1/series?{}&{mid}",
        m("{__name__=~\"ephemeral_gauge|temperature_celsius\"}")
    ));
    out
}

#[test]
fn store_gateways_serve_prometheus_blocks_like_prometheus_and_survive_kills() {
    let (Some(promtool), Some(prom_bin)) = (peer("promtool"), Prometheus::binary()) else {
        return;
    };
    let Some(moto) = norn_storage::testing::MotoServer::start() else {
        return;
    };
    moto.create_bucket("norn-sg").unwrap();
    let s3 = s3_flags(&moto.endpoint());
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let started = Instant::now();

    // Six hours, three days ago, starting on a 2h boundary: three blocks per tenant.
    let t0 = (now_ms() / 1000 - 3 * 24 * HOUR_S) / (2 * HOUR_S) * (2 * HOUR_S);
    let a_inputs = tenant_a(t0);
    let a_series = a_inputs.len();
    let a_blocks = promtool_blocks(&promtool, root, "blocks-a", &a_inputs);
    drop(a_inputs);
    let b_inputs = tenant_b(t0);
    let b_series = b_inputs.len();
    let b_blocks = promtool_blocks(&promtool, root, "blocks-b", &b_inputs);
    assert_eq!(a_blocks.len(), 3, "promtool wrote {a_blocks:?}");
    assert_eq!(b_blocks.len(), 3, "promtool wrote {b_blocks:?}");
    let a_dir = root.join("blocks-a");
    let a_bytes: u64 = a_blocks.iter().map(|b| block_bytes(&a_dir.join(b))).sum();
    let a_index_bytes: u64 = a_blocks
        .iter()
        .map(|b| {
            std::fs::metadata(a_dir.join(b).join("index"))
                .unwrap()
                .len()
        })
        .sum();
    import(&s3, TENANT_A, &a_dir);
    // Tenant B's blocks take tenant A's block ids: anything in the read path keyed by block
    // id alone (caches, index-headers on disk, the loaded blocks) would mix the tenants.
    give_ids(&root.join("blocks-b"), &a_dir);
    assert_eq!(block_dirs(&root.join("blocks-b")), a_blocks);
    import(&s3, TENANT_B, &root.join("blocks-b"));
    eprintln!(
        "{a_series} series of tenant A in {} blocks ({a_bytes} bytes of index and chunks), imported after {:?}",
        a_blocks.len(),
        started.elapsed()
    );

    // The reference: Prometheus with a copy of tenant A's blocks. A 2h maximum block
    // duration keeps it from compacting them (its label APIs answer per block).
    let prom_data = root.join("prometheus-data");
    for b in &a_blocks {
        copy_dir(&a_dir.join(b), &prom_data.join(b));
    }
    let prom = Prometheus::start(
        &prom_bin,
        &root.join("prometheus"),
        &prom_data,
        &[
            "--storage.tsdb.retention.time=100y",
            "--storage.tsdb.min-block-duration=2h",
            "--storage.tsdb.max-block-duration=2h",
        ],
    );

    let mut c = start_cluster(root, &s3);
    wait_ring_page(
        &c.distributor,
        "/ring",
        "3 ACTIVE ingesters",
        Duration::from_secs(60),
        all_active(3),
    );
    wait_ring_page(
        &c.querier,
        "/store-gateway/ring",
        "2 ACTIVE store-gateways",
        Duration::from_secs(60),
        all_active(GATEWAYS),
    );
    let all_blocks = (a_blocks.len() + b_blocks.len()) as f64;
    for i in 0..GATEWAYS {
        let g = c.gateway(i);
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.metric("norn_storegateway_blocks_loaded") < all_blocks {
            assert!(
                Instant::now() < deadline,
                "store-gateway-{i} did not load {all_blocks} blocks\n{}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Recent data goes the other way (distributor → ingesters); it is outside every
    // historical range below, so the comparisons also check it stays out of them.
    let now = now_ms();
    let (status, body) = c.distributor.push(
        Some(TENANT_A),
        &request(vec![series(
            &[("__name__", "recent_gauge"), ("src", "distributor")],
            &[(now - 1000, 7.0)],
        )]),
    );
    assert_eq!(status, 200, "{body}");
    let (status, v) = c.querier.get_json(
        Some(TENANT_A),
        &format!(
            "/prometheus/api/v1/query?query=recent_gauge&time={}",
            now as f64 / 1000.0
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "7", "{v}");
    eprintln!("cluster ready after {:?}", started.elapsed());

    // 1. A selective query on cold caches reads little of the blocks.
    let selective = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        urlencode(
            "http_requests_total{job=\"batch\",instance=\"i7\",method=\"POST\",code=\"404\"}"
        ),
        t0 + 3,
        t0 + 6 * HOUR_S + 3
    );
    let before = c.query_bytes_fetched();
    let (status, answer) = norn_get(c.querier.port, TENANT_A, &selective);
    let after = c.query_bytes_fetched();
    assert_eq!(status, 200, "{answer}");
    let (_, reference) = prom.get_json(&selective);
    same_answer(&selective, &reference, &answer).unwrap();
    assert_eq!(answer["data"]["result"].as_array().unwrap().len(), 1);
    let by_kind: Vec<f64> = (0..3).map(|k| after[k] - before[k]).collect();
    let fetched: f64 = by_kind.iter().sum();
    let share = fetched / a_bytes as f64;
    eprintln!(
        "selective query: {fetched} bytes fetched from the bucket (postings, series, chunks: {by_kind:?}), {:.2} % of the blocks' {a_bytes}; index files alone: {a_index_bytes}",
        share * 100.0
    );
    assert!(
        by_kind.iter().all(|b| *b > 0.0),
        "on cold caches the store-gateways read postings, series and chunks from the bucket: {by_kind:?}"
    );
    // Reading the index files whole would cost more than this, the chunk files far more.
    assert!(
        fetched < a_index_bytes as f64 && share < 0.10,
        "one series of {a_series} cost {fetched} bytes; the blocks hold {a_bytes}, their index files {a_index_bytes}"
    );

    // 2. Queries and label APIs answer what Prometheus answers.
    let paths = api_paths(t0);
    let mut references = Vec::new();
    let mut failures = Vec::new();
    for p in &paths {
        let (ps, pv) = prom.get_json(p);
        assert_eq!(ps, 200, "prometheus {p}: {pv}");
        let (ns, nv) = norn_get(c.querier.port, TENANT_A, p);
        if ns != 200 {
            failures.push(format!("{p}: status {ns}: {nv}"));
        } else if let Err(e) = same_answer(p, &pv, &nv) {
            failures.push(format!("{p}: {e}"));
        }
        references.push((p.clone(), pv));
    }
    assert!(
        failures.is_empty(),
        "{} of {} answers differ from Prometheus:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
    // Non-trivial answers: the comparison is not of empty lists.
    let everything = format!(
        "/api/v1/series?match[]={}&start={t0}&end={}",
        urlencode("{__name__=~\".+\"}"),
        t0 + 6 * HOUR_S
    );
    let (_, all_series) = norn_get(c.querier.port, TENANT_A, &everything);
    assert_eq!(all_series["data"].as_array().unwrap().len(), a_series);
    eprintln!(
        "{} answers equal Prometheus' after {:?}",
        paths.len(),
        started.elapsed()
    );

    // 3. Tenant B's blocks never reach tenant A; B sees them.
    let full = format!("start={t0}&end={}", t0 + 6 * HOUR_S);
    let leaks = [
        format!(
            "/api/v1/query?query=tenant_b_only&time={}",
            t0 + 3 * HOUR_S + 3
        ),
        format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=600",
            urlencode("http_requests_total{job=\"b-secret\"}"),
            t0 + 3,
            t0 + 6 * HOUR_S + 3
        ),
        format!(
            "/api/v1/series?match[]={}&{full}",
            urlencode("{job=\"b-secret\"}")
        ),
        format!("/api/v1/series?match[]=tenant_b_only&{full}"),
        format!("/api/v1/label/owner/values?{full}"),
    ];
    for p in &leaks {
        let (s, v) = norn_get(c.querier.port, TENANT_A, p);
        assert_eq!(s, 200, "{p}: {v}");
        let data = if p.contains("/query") {
            &v["data"]["result"]
        } else {
            &v["data"]
        };
        assert_eq!(
            data.as_array().map(Vec::len),
            Some(0),
            "A sees B's data: {p}: {v}"
        );
        let (s, v) = norn_get(c.querier.port, TENANT_B, p);
        assert_eq!(s, 200, "{p}: {v}");
        let data = if p.contains("/query") {
            &v["data"]["result"]
        } else {
            &v["data"]
        };
        assert!(
            !data.as_array().unwrap().is_empty(),
            "B sees its data: {p}: {v}"
        );
    }
    // Label lists: each tenant sees its own names and values and none of the other's.
    for (p, only_a, only_b) in [
        (format!("/api/v1/labels?{full}"), "phase", "owner"),
        (
            format!("/api/v1/label/__name__/values?{full}"),
            "memory_bytes",
            "tenant_b_only",
        ),
        (
            format!("/api/v1/label/job/values?{full}"),
            "api",
            "b-secret",
        ),
    ] {
        for (tenant, own, other) in [(TENANT_A, only_a, only_b), (TENANT_B, only_b, only_a)] {
            let (s, v) = norn_get(c.querier.port, tenant, &p);
            assert_eq!(s, 200, "{p}: {v}");
            let list: Vec<&str> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_str())
                .collect();
            assert!(
                list.contains(&own) && !list.contains(&other),
                "{tenant}: {p}: {v}"
            );
        }
    }
    let (_, v) = norn_get(c.querier.port, TENANT_B, &everything);
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(b_series),
        "tenant B's series, all of them and only them: {v}"
    );

    // 4. kill -9 one store-gateway while queries run: every answer stays complete. The one
    // killed is one the querier asks first for some of tenant A's blocks (the replica order
    // is the ring's), so some blocks must be fetched again from the other.
    let served = |g: &Norn| g.metric("norn_storegateway_cache_requests_total");
    let victim = if served(c.gateway(0)) >= served(c.gateway(1)) {
        0
    } else {
        1
    };
    assert!(
        served(c.gateway(victim)) > 0.0,
        "store-gateway-{victim} served queries"
    );
    let loop_set: Arc<Vec<(String, serde_json::Value)>> = Arc::new(
        references
            .iter()
            .filter(|(p, _)| {
                p.contains("query_range") || p.contains("/series") || p.contains("/labels")
            })
            .take(24)
            .cloned()
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Arc<Vec<AtomicUsize>> = Arc::new((0..2).map(|_| AtomicUsize::new(0)).collect());
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    // When each query was sent and answered, to tell how many the kill interrupted.
    let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (loop_set, stop, rounds, bad, spans) = (
                Arc::clone(&loop_set),
                Arc::clone(&stop),
                Arc::clone(&rounds),
                Arc::clone(&bad),
                Arc::clone(&spans),
            );
            let port = c.querier.port;
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // The two workers walk the list from different ends.
                    for k in 0..loop_set.len() {
                        let (p, reference) =
                            &loop_set[if w == 0 { k } else { loop_set.len() - 1 - k }];
                        let sent = Instant::now();
                        let (s, v) = norn_get(port, TENANT_A, p);
                        spans.lock().unwrap().push((sent, Instant::now()));
                        let verdict = if s != 200 {
                            Err(format!("status {s}: {v}"))
                        } else {
                            same_answer(p, reference, &v)
                        };
                        if let Err(e) = verdict {
                            bad.lock().unwrap().push(format!("{p}: {e}"));
                        }
                    }
                    rounds[w].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_rounds = |at_least: [usize; 2]| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while (0..2).any(|w| rounds[w].load(Ordering::SeqCst) < at_least[w]) {
            assert!(Instant::now() < deadline, "query loops stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_rounds([1, 1]);
    let refetches = c
        .querier
        .metric("norn_querier_storegateway_refetches_total");
    c.gateways[victim].kill9();
    let killed_at = Instant::now();
    let after_kill = [0, 1].map(|w| rounds[w].load(Ordering::SeqCst) + 2);
    // Two whole rounds each after the kill (the rounds in flight at the kill do not count).
    wait_rounds(after_kill);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} answers incomplete or failed with store-gateway-{victim} killed:\n{}",
        bad.len(),
        bad.join("\n")
    );
    let refetched = c
        .querier
        .metric("norn_querier_storegateway_refetches_total")
        - refetches;
    assert!(
        refetched > 0.0,
        "the querier asked the other replica again ({refetched} refetch rounds)"
    );
    let spans = spans.lock().unwrap();
    let interrupted = spans
        .iter()
        .filter(|(sent, done)| *sent < killed_at && killed_at < *done)
        .count();
    let after = spans.iter().filter(|(sent, _)| *sent > killed_at).count();
    eprintln!(
        "kill -9 store-gateway-{victim}: {} answers, all equal to Prometheus' ({interrupted} in flight at the kill, {after} sent after it); {refetched} refetch rounds",
        spans.len()
    );

    // 5. No store-gateway left: a 5xx that names the blocks, never a partial answer.
    c.gateways[1 - victim].kill9();
    let failed_checks = c
        .querier
        .metric("norn_querier_blocks_consistency_checks_failed_total");
    // (path, how many of tenant A's blocks it needs): the instant query's five-minute
    // lookback lies inside one block, the others span all three.
    let failing = [
        (
            paths
                .iter()
                .find(|p| p.contains("query_range"))
                .unwrap()
                .clone(),
            3,
        ),
        (
            paths
                .iter()
                .find(|p| p.contains("/api/v1/query?"))
                .unwrap()
                .clone(),
            1,
        ),
        (format!("/api/v1/series?match[]=memory_bytes&{full}"), 3),
        (format!("/api/v1/labels?{full}"), 3),
        (format!("/api/v1/label/__name__/values?{full}"), 3),
    ];
    for (p, needed) in &failing {
        let (s, v) = norn_get(c.querier.port, TENANT_A, p);
        assert!((500..600).contains(&s), "{p}: status {s}: {v}");
        assert_eq!(v["status"], "error", "{p}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains("store-gateway"), "{p}: {msg}");
        let named = a_blocks.iter().filter(|b| msg.contains(b.as_str())).count();
        assert_eq!(
            named, *needed,
            "{p}: the error names the blocks it misses: {msg}"
        );
    }
    assert!(
        c.querier
            .metric("norn_querier_blocks_consistency_checks_failed_total")
            >= failed_checks + failing.len() as f64,
        "each failure is counted as a failed consistency check"
    );
    eprintln!(
        "both store-gateways down: 5xx naming the blocks after {:?}",
        started.elapsed()
    );

    // 6. One store-gateway back: it serves from the index-headers it left on disk (none
    // built again) and every answer is complete again; the other is still down (and still
    // in the ring), so the querier keeps retrying around it.
    let back = &mut c.gateways[victim];
    back.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.metric("norn_storegateway_blocks_loaded") < all_blocks {
        assert!(
            Instant::now() < deadline,
            "restarted store-gateway-{victim} did not load its blocks\n{}",
            back.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        back.metric("norn_storegateway_index_header_builds_total"),
        0.0,
        "a restart reuses the index-headers on disk"
    );
    wait_ring_page(
        &c.querier,
        "/store-gateway/ring",
        "the restarted store-gateway ACTIVE",
        Duration::from_secs(60),
        |r| {
            r.iter()
                .any(|(id, state, _)| *id == format!("store-gateway-{victim}") && state == "ACTIVE")
        },
    );
    let mut failures = Vec::new();
    for (p, reference) in loop_set.iter() {
        let (s, v) = norn_get(c.querier.port, TENANT_A, p);
        if s != 200 {
            failures.push(format!("{p}: status {s}: {v}"));
        } else if let Err(e) = same_answer(p, reference, &v) {
            failures.push(format!("{p}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "after store-gateway-{victim} came back:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "store-gateway-{victim} restarted: {} answers equal Prometheus' again; total {:?}",
        loop_set.len(),
        started.elapsed()
    );
}
