//! Times the dashboard workload's queries (docs/benchmarks.md, "Workload `dashboard`") as
//! range queries against a [`MemStore`], without HTTP or storage in the way: the quick loop
//! for engine work. The data imitates `norn-loadgen`'s: 100 targets × 100 series
//! (node_cpu counters, network counters, histogram buckets, filesystem gauges), one sample
//! every 15 s for 1 h, queried over that hour at a 15 s step (241 steps).
//!
//! ```sh
//! cargo run --release -p norn-promql --example dashboard -- [repeats] [query-name]
//! cargo run --release -p norn-promql --example dashboard -- cpu [repeats] [query-name]
//! ```
//!
//! `cpu` runs each query (and `vector(1)`, the fixed cost of any query) as an instant query at
//! the end of the data `repeats` times (default 2000) one after the other, and prints the
//! process' CPU time per query (user + system from `/proc/self/stat`, all threads, so the
//! query threads' start and stop are in it): on a shared machine CPU time is steadier than
//! wall time. Each select's answer is worked out once and then handed over as a copy (as any
//! storage hands one over), so the figures are the engine's and not the MemStore's scan of
//! every series; compare builds, not these figures with a server's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use norn_model::{Labels, Matcher, Queryable, Series, StorageError};
use norn_promql::memstore::MemStore;
use norn_promql::{Engine, Value};

const END_MS: i64 = 1_796_165_805_000;
const INTERVAL_MS: i64 = 15_000;
const POINTS: i64 = 241;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A counter growing by a per-series rate, with noise, as the load generator's.
fn counter(store: &MemStore, labels: &Labels, id: u64, lo: f64, hi: f64, round: f64) {
    let rate = lo + (hi - lo) * unit(mix(id ^ 0x5555));
    for k in 0..POINTS {
        let noise = unit(mix(id ^ (k as u64).wrapping_mul(0xa076_1d64_78bd_642f)));
        let v = (rate * (k as f64 + 0.9 * noise) / round).floor() * round;
        store.add_sample(labels, END_MS - (POINTS - 1 - k) * INTERVAL_MS, v);
    }
}

fn build() -> MemStore {
    const LE: [&str; 12] = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    const CDF: [f64; 12] = [
        0.05, 0.12, 0.25, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.995, 0.999, 1.0,
    ];
    let store = MemStore::new();
    for target in 0..100u64 {
        let instance = format!("host-{target:05}:9100");
        let base = |name: &str, extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("__name__", name.to_string()),
                ("instance", instance.clone()),
                ("job", "node".to_string()),
            ];
            pairs.extend(extra.iter().map(|(n, v)| (*n, v.to_string())));
            Labels::from_pairs(pairs)
        };
        let mut slot = target * 100;
        for cpu in ["0", "1", "2", "3"] {
            for (mode, lo, hi) in [
                ("idle", 8.0, 14.0),
                ("iowait", 0.01, 0.3),
                ("irq", 0.0, 0.01),
                ("nice", 0.0, 0.05),
                ("softirq", 0.01, 0.2),
                ("steal", 0.0, 0.1),
                ("system", 0.3, 2.0),
                ("user", 1.0, 6.0),
            ] {
                let l = base("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)]);
                counter(&store, &l, mix(slot), lo, hi, 0.01);
                slot += 1;
            }
        }
        for dev in ["eth0", "eth1", "lo"] {
            for name in [
                "node_network_receive_bytes_total",
                "node_network_transmit_bytes_total",
            ] {
                let l = base(name, &[("device", dev)]);
                counter(&store, &l, mix(slot), 1e4, 5e7, 1.0);
                slot += 1;
            }
        }
        for handler in ["/api/v1/query", "/api/v1/push"] {
            let hist = mix(slot);
            let rate = 10.0 + 90.0 * unit(mix(hist ^ 0x5555));
            for (le, cdf) in LE.iter().zip(CDF) {
                let l = base(
                    "http_request_duration_seconds_bucket",
                    &[("handler", handler), ("le", le)],
                );
                for k in 0..POINTS {
                    let noise = unit(mix(hist ^ (k as u64).wrapping_mul(0xa076_1d64_78bd_642f)));
                    let count = (rate * (k as f64 + 0.9 * noise)).floor();
                    store.add_sample(
                        &l,
                        END_MS - (POINTS - 1 - k) * INTERVAL_MS,
                        (count * cdf).floor(),
                    );
                }
                slot += 1;
            }
        }
        // The rest of the target: filesystem gauges, enough to make 100 series.
        let mut i = 0;
        while slot < (target + 1) * 100 {
            let fstype = ["ext4", "xfs", "tmpfs"][i % 3];
            let mp = format!("/mnt/{i}");
            let l = base(
                "node_filesystem_avail_bytes",
                &[("fstype", fstype), ("mountpoint", &mp)],
            );
            let b = 1e9 * (1.0 + unit(mix(slot)));
            for k in 0..POINTS {
                let v = (b * (1.0 + 0.1 * (k as f64 / 40.0).sin()) / 4096.0).floor() * 4096.0;
                store.add_sample(&l, END_MS - (POINTS - 1 - k) * INTERVAL_MS, v);
            }
            slot += 1;
            i += 1;
        }
    }
    store
}

const QUERIES: [(&str, &str); 5] = [
    ("rate_5m", "rate(node_network_receive_bytes_total[5m])"),
    (
        "sum_by_rate",
        "sum by (mode) (rate(node_cpu_seconds_total[5m]))",
    ),
    (
        "histogram_p99",
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    ),
    (
        "topk",
        "topk(10, node_filesystem_avail_bytes{fstype!=\"tmpfs\"})",
    ),
    (
        "regex_matcher",
        "sum by (instance) (rate(node_cpu_seconds_total{mode=~\"user|system\", instance=~\"host-0000[0-9]:9100\"}[5m]))",
    ),
];

/// The MemStore's answer to each select, worked out once and copied after.
struct Answers {
    store: MemStore,
    cache: Mutex<HashMap<String, Vec<Series>>>,
}

#[async_trait]
impl Queryable for Answers {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        let key = format!("{start_ms} {end_ms} {matchers:?}");
        if let Some(a) = self.cache.lock().expect("lock").get(&key) {
            return Ok(a.clone());
        }
        let a = self.store.select(start_ms, end_ms, matchers).await?;
        self.cache.lock().expect("lock").insert(key, a.clone());
        Ok(a)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.store.label_names(start_ms, end_ms, matchers).await
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.store
            .label_values(name, start_ms, end_ms, matchers)
            .await
    }
}

/// CPU time (user + system, all threads) this process has used so far, in seconds.
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // CLK_TCK is 100 on every Linux this runs on.
    ticks / 100.0
}

/// Voluntary context switches of every thread of this process so far (a thread waking
/// another and waiting for it counts one each time): the hand-offs a query costs.
fn voluntary_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The `cpu` mode: CPU and wall time per instant query.
fn cpu(mut args: impl Iterator<Item = String>) {
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let only = args.next();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = Answers {
        store: build(),
        cache: Mutex::default(),
    };
    let engine = Engine::default();
    println!(
        "| query | samples | CPU µs per query | wall µs per query | voluntary switches per query |"
    );
    println!("|---|---|---|---|---|");
    let all = std::iter::once(("vector1", "vector(1)")).chain(QUERIES);
    for (name, q) in all {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let run = || {
            rt.block_on(engine.instant_query(&store, q, END_MS))
                .expect("query")
        };
        let n = match run().value {
            Value::Vector(v) => v.len(),
            _ => 1,
        };
        for _ in 0..repeats / 10 {
            run();
        }
        let (c0, t0, v0) = (process_cpu_s(), Instant::now(), voluntary_switches());
        for _ in 0..repeats {
            run();
        }
        let (cpu, wall) = (process_cpu_s() - c0, t0.elapsed().as_secs_f64());
        let switches = voluntary_switches().saturating_sub(v0);
        println!(
            "| `{name}` | {n} | {:.1} | {:.1} | {:.1} |",
            cpu * 1e6 / repeats as f64,
            wall * 1e6 / repeats as f64,
            switches as f64 / repeats as f64
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("cpu") {
        args.next();
        return cpu(args);
    }
    let repeats: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let only = args.next();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let t0 = Instant::now();
    let store = build();
    eprintln!("{} series in {:?}", store.len(), t0.elapsed());
    let engine = Engine::default();
    let start = END_MS - 3_600_000;
    println!("| query | series | points | p50 (ms) | min (ms) |");
    println!("|---|---|---|---|---|");
    for (name, q) in QUERIES {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut times = Vec::with_capacity(repeats);
        let mut shape = (0, 0);
        for _ in 0..repeats + 1 {
            let t = Instant::now();
            let r = rt
                .block_on(engine.range_query(&store, q, start, END_MS, INTERVAL_MS))
                .expect("query");
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if let Value::Matrix(m) = &r.value {
                shape = (m.len(), m.iter().map(|s| s.samples.len()).sum::<usize>());
            }
        }
        times.remove(0); // warm-up
        times.sort_by(f64::total_cmp);
        println!(
            "| `{name}` | {} | {} | {:.1} | {:.1} |",
            shape.0,
            shape.1,
            times[times.len() / 2],
            times[0]
        );
    }
}
