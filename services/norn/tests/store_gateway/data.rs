//! The data of the store-gateway test: what each tenant's series are, written as OpenMetrics
//! text and turned into 2h blocks by `promtool tsdb create-blocks-from openmetrics`, then
//! uploaded with `norn tools import-blocks`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Run, block_dirs, run_bounded};
use crate::{HOUR_S, SAMPLES, STEP_S};

/// One input series: OpenMetrics family and type, labels (with `__name__` first), samples
/// as (unix seconds, value).
pub struct Input {
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
pub fn tenant_a(t0: i64) -> Vec<Input> {
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
pub fn tenant_b(t0: i64) -> Vec<Input> {
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

pub fn openmetrics(inputs: &[Input]) -> String {
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
pub fn promtool_blocks(promtool: &Path, dir: &Path, name: &str, inputs: &[Input]) -> Vec<String> {
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
pub fn s3_flags(endpoint: &str) -> Vec<String> {
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

pub fn import(s3: &[String], tenant: &str, dir: &Path) -> Run {
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
pub fn block_bytes(dir: &Path) -> u64 {
    let mut total = std::fs::metadata(dir.join("index")).unwrap().len();
    for e in std::fs::read_dir(dir.join("chunks")).unwrap() {
        total += e.unwrap().metadata().unwrap().len();
    }
    total
}

pub fn read_meta(block: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(block.join("meta.json")).unwrap()).unwrap()
}

/// Renames the blocks under `dir` to the ids of the blocks under `ids_from` with the same
/// min time (directory and `meta.json`).
pub fn give_ids(dir: &Path, ids_from: &Path) {
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

pub fn copy_dir(from: &Path, to: &Path) {
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
