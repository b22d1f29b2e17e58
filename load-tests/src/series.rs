//! Deterministic series and sample generator modelled on node_exporter and kube-state-metrics.
//!
//! Every value is a pure function of `(seed, slot, generation, interval)`, with no state carried
//! from one interval to the next. That buys three things:
//!
//! * two systems loaded with the same arguments hold bit-identical data, whatever the
//!   concurrency or the order in which requests happened to complete;
//! * workers can generate their shard of series independently, and so can a checker that wants
//!   to know what a series should hold at some interval;
//! * a counter is still monotonic: `v(k) = rate · (k + 0.9 · u(k))` with `u ∈ [0, 1)` grows by at
//!   least `0.1 · rate` per interval.
//!
//! Series are laid out as *targets* of [`SERIES_PER_TARGET`] slots; slot `s` belongs to target
//! `s / 100` and plays the role of the template `s % 100`. Churn replaces series round-robin:
//! after interval `k`, the first `k · churn` slots (mod the series count) have been replaced once
//! more, and a replaced slot gets a new `instance` label (`host-00042-g3:9100`), i.e. a new series.

use crate::encode;

/// Number of series one simulated scrape target exposes.
pub const SERIES_PER_TARGET: usize = 100;

/// How a template's value evolves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Monotonic counter with a per-series rate (per interval) in `[lo, hi)`, rounded to `round`.
    Counter { lo: f64, hi: f64, round: f64 },
    /// Counter that increases by one every `period` intervals on average.
    SlowCounter,
    /// Gauge wandering around a per-series base in `[lo, hi)` by ±`swing` (relative), rounded.
    Gauge {
        lo: f64,
        hi: f64,
        swing: f64,
        round: f64,
    },
    /// Constant value.
    Constant(f64),
    /// The scrape timestamp in seconds (node_time_seconds).
    TimeSeconds,
    /// Cumulative histogram bucket: index into [`LE_CDF`].
    Bucket(usize),
    /// Histogram `_count`.
    HistCount,
    /// Histogram `_sum`.
    HistSum,
}

/// One slot of a target: metric name, extra labels (besides `instance`, `job`), value kind.
#[derive(Debug, Clone)]
struct Template {
    name: &'static str,
    job: &'static str,
    labels: Vec<(&'static str, String)>,
    kind: Kind,
    /// For histogram series: the template index of the histogram's first bucket, shared by all
    /// of its series so that buckets, `_sum` and `_count` agree.
    group: usize,
}

/// Upper bounds of the histogram buckets (`le`), Prometheus client defaults.
const LE: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
];
/// Fraction of requests at or below each bound; ascending, ending at 1 for `+Inf`.
const LE_CDF: [f64; 12] = [
    0.05, 0.12, 0.25, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.995, 0.999, 1.0,
];

fn templates() -> Vec<Template> {
    let mut t = Vec::with_capacity(SERIES_PER_TARGET);
    let node = |name, labels: Vec<(&'static str, String)>, kind| Template {
        name,
        job: "node",
        labels,
        kind,
        group: 0,
    };
    // node_cpu_seconds_total{cpu, mode}: 4 cpus x 8 modes = 32 counters.
    for cpu in 0..4 {
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
            t.push(node(
                "node_cpu_seconds_total",
                vec![("cpu", cpu.to_string()), ("mode", mode.to_string())],
                Kind::Counter {
                    lo,
                    hi,
                    round: 0.01,
                },
            ));
        }
    }
    // Network bytes: 3 devices x rx/tx = 6 counters.
    for dev in ["eth0", "eth1", "lo"] {
        for name in [
            "node_network_receive_bytes_total",
            "node_network_transmit_bytes_total",
        ] {
            t.push(node(
                name,
                vec![("device", dev.to_string())],
                Kind::Counter {
                    lo: 1e4,
                    hi: 5e7,
                    round: 1.0,
                },
            ));
        }
    }
    // Filesystems: 3 x avail/size = 6 gauges.
    for (dev, mp, fs) in [
        ("/dev/vda1", "/", "ext4"),
        ("/dev/vdb1", "/var/lib/data", "xfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        let labels = vec![
            ("device", dev.to_string()),
            ("fstype", fs.to_string()),
            ("mountpoint", mp.to_string()),
        ];
        t.push(node(
            "node_filesystem_avail_bytes",
            labels.clone(),
            Kind::Gauge {
                lo: 1e9,
                hi: 5e10,
                swing: 0.05,
                round: 4096.0,
            },
        ));
        t.push(node(
            "node_filesystem_size_bytes",
            labels,
            Kind::Constant(1.073_741_824e11),
        ));
    }
    // Memory and load: 5 gauges.
    t.push(node(
        "node_memory_MemAvailable_bytes",
        vec![],
        Kind::Gauge {
            lo: 2e9,
            hi: 3e10,
            swing: 0.2,
            round: 4096.0,
        },
    ));
    t.push(node(
        "node_memory_MemTotal_bytes",
        vec![],
        Kind::Constant(3.435_973_836_8e10),
    ));
    for name in ["node_load1", "node_load5", "node_load15"] {
        t.push(node(
            name,
            vec![],
            Kind::Gauge {
                lo: 0.1,
                hi: 4.0,
                swing: 0.5,
                round: 0.01,
            },
        ));
    }
    // Disks: 2 devices x read/written = 4 counters.
    for dev in ["vda", "vdb"] {
        for name in [
            "node_disk_read_bytes_total",
            "node_disk_written_bytes_total",
        ] {
            t.push(node(
                name,
                vec![("device", dev.to_string())],
                Kind::Counter {
                    lo: 1e3,
                    hi: 1e7,
                    round: 512.0,
                },
            ));
        }
    }
    // A classic histogram: 2 handlers x (12 buckets + sum + count) = 28 series.
    for handler in ["/api/v1/query", "/api/v1/push"] {
        let group = t.len();
        let h = |name, mut labels: Vec<(&'static str, String)>, kind| {
            labels.push(("handler", handler.to_string()));
            Template {
                name,
                job: "app",
                labels,
                kind,
                group,
            }
        };
        for (i, le) in LE.iter().enumerate() {
            t.push(h(
                "http_request_duration_seconds_bucket",
                vec![("le", le.to_string())],
                Kind::Bucket(i),
            ));
        }
        t.push(h(
            "http_request_duration_seconds_sum",
            vec![],
            Kind::HistSum,
        ));
        t.push(h(
            "http_request_duration_seconds_count",
            vec![],
            Kind::HistCount,
        ));
    }
    // kube-state-metrics: 5 container restart counters, 5 pod phases, 3 deployments = 13.
    let ksm = |name, labels, kind| Template {
        name,
        job: "kube-state-metrics",
        labels,
        kind,
        group: 0,
    };
    for c in ["app", "sidecar", "init", "exporter", "proxy"] {
        t.push(ksm(
            "kube_pod_container_status_restarts_total",
            vec![
                ("container", c.to_string()),
                ("namespace", "default".into()),
                ("pod", "web-0".into()),
            ],
            Kind::SlowCounter,
        ));
    }
    for phase in ["Failed", "Pending", "Running", "Succeeded", "Unknown"] {
        let v = if phase == "Running" { 1.0 } else { 0.0 };
        t.push(ksm(
            "kube_pod_status_phase",
            vec![
                ("namespace", "default".into()),
                ("phase", phase.to_string()),
                ("pod", "web-0".into()),
            ],
            Kind::Constant(v),
        ));
    }
    for d in ["web", "api", "worker"] {
        t.push(ksm(
            "kube_deployment_status_replicas",
            vec![
                ("deployment", d.to_string()),
                ("namespace", "default".into()),
            ],
            Kind::Gauge {
                lo: 1.0,
                hi: 10.0,
                swing: 0.0,
                round: 1.0,
            },
        ));
    }
    // Process-wide node counters and gauges: 6 more, 100 in all.
    for name in ["node_context_switches_total", "node_intr_total"] {
        t.push(node(
            name,
            vec![],
            Kind::Counter {
                lo: 10.0,
                hi: 1e5,
                round: 1.0,
            },
        ));
    }
    t.push(node(
        "node_boot_time_seconds",
        vec![],
        Kind::Constant(1.7e9),
    ));
    t.push(node("node_time_seconds", vec![], Kind::TimeSeconds));
    t.push(node(
        "node_procs_running",
        vec![],
        Kind::Gauge {
            lo: 1.0,
            hi: 20.0,
            swing: 0.5,
            round: 1.0,
        },
    ));
    t.push(node("up", vec![], Kind::Constant(1.0)));
    assert_eq!(
        t.len(),
        SERIES_PER_TARGET,
        "target template must have exactly {SERIES_PER_TARGET} slots"
    );
    t
}

/// SplitMix64: a tiny, well-mixed, stateless hash; good enough for load-test noise.
#[inline]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps a hash to `[0, 1)` using its top 53 bits.
#[inline]
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[inline]
fn round_to(v: f64, step: f64) -> f64 {
    (v / step).floor() * step
}

/// Parameters that fully determine the generated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Active series at any time (per tenant).
    pub series: usize,
    /// Series replaced by new ones per interval.
    pub churn_per_interval: usize,
    /// Seed of every value.
    pub seed: u64,
    /// Timestamp of interval 0, in ms.
    pub start_ms: i64,
    /// Scrape interval in ms.
    pub interval_ms: i64,
}

/// The series generator. Cheap to share (`Arc`) between workers.
#[derive(Debug, Clone)]
pub struct Generator {
    cfg: GeneratorConfig,
    templates: Vec<Template>,
}

impl Generator {
    /// A generator for `cfg`.
    pub fn new(cfg: GeneratorConfig) -> Self {
        Self {
            cfg,
            templates: templates(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.cfg
    }

    /// Timestamp (ms) of interval `k`.
    pub fn timestamp_ms(&self, k: u64) -> i64 {
        self.cfg.start_ms + k as i64 * self.cfg.interval_ms
    }

    /// How many times `slot` has been replaced once interval `k` is being sent.
    pub fn generation(&self, slot: usize, k: u64) -> u64 {
        let churned = k.saturating_mul(self.cfg.churn_per_interval as u64);
        let s = slot as u64;
        if churned > s {
            (churned - s - 1) / self.cfg.series as u64 + 1
        } else {
            0
        }
    }

    /// The first interval in which `slot` is in generation `gen`.
    fn birth(&self, slot: usize, generation: u64) -> u64 {
        if generation == 0 || self.cfg.churn_per_interval == 0 {
            return 0;
        }
        let need = slot as u64 + (generation - 1) * self.cfg.series as u64 + 1;
        need.div_ceil(self.cfg.churn_per_interval as u64)
    }

    /// Sorted label set of `slot` in generation `gen`, `__name__` included.
    pub fn labels(&self, slot: usize, generation: u64) -> Vec<(&'static str, String)> {
        let t = &self.templates[slot % SERIES_PER_TARGET];
        let target = slot / SERIES_PER_TARGET;
        let instance = if generation == 0 {
            format!("host-{target:05}:9100")
        } else {
            format!("host-{target:05}-g{generation}:9100")
        };
        let mut labels = Vec::with_capacity(t.labels.len() + 3);
        labels.push(("__name__", t.name.to_string()));
        labels.push(("instance", instance));
        labels.push(("job", t.job.to_string()));
        labels.extend(t.labels.iter().cloned());
        labels.sort_by(|a, b| a.0.cmp(b.0));
        labels
    }

    /// The label block of `slot`/`gen`, already protobuf-encoded for [`encode::WriteRequestEncoder`].
    pub fn encoded_labels(&self, slot: usize, generation: u64) -> Vec<u8> {
        let labels = self.labels(slot, generation);
        encode::encode_labels(labels.iter().map(|(n, v)| (*n, v.as_str())))
    }

    /// Value of `slot`/`gen` at interval `k`.
    pub fn value(&self, slot: usize, generation: u64, k: u64) -> f64 {
        let t = &self.templates[slot % SERIES_PER_TARGET];
        let id = splitmix64(self.cfg.seed ^ splitmix64(slot as u64 ^ splitmix64(generation)));
        // Intervals since the series was born: a new series' counters start near zero.
        let age = k.saturating_sub(self.birth(slot, generation)) as f64;
        let noise = unit(splitmix64(id ^ k.wrapping_mul(0xa076_1d64_78bd_642f)));
        let fixed = unit(splitmix64(id ^ 0x5555));
        match t.kind {
            Kind::Counter { lo, hi, round } => {
                let rate = lo + (hi - lo) * fixed;
                round_to(rate * (age + 0.9 * noise), round)
            }
            Kind::SlowCounter => {
                let period = 200.0 + 1800.0 * fixed;
                (age / period).floor()
            }
            Kind::Gauge {
                lo,
                hi,
                swing,
                round,
            } => {
                let base = lo + (hi - lo) * fixed;
                let phase = fixed * std::f64::consts::TAU;
                let wave = (k as f64 / 40.0 + phase).sin();
                round_to(
                    base * (1.0 + swing * (0.8 * wave + 0.2 * (2.0 * noise - 1.0))),
                    round,
                )
                .max(0.0)
            }
            Kind::Constant(v) => v,
            Kind::TimeSeconds => self.timestamp_ms(k) as f64 / 1000.0,
            Kind::Bucket(_) | Kind::HistCount | Kind::HistSum => {
                // All series of one histogram share one identity, so buckets, count and sum stay
                // consistent with each other.
                let group = slot - slot % SERIES_PER_TARGET + t.group;
                let hist_id =
                    splitmix64(self.cfg.seed ^ splitmix64(group as u64 ^ splitmix64(generation)));
                let hist_noise = unit(splitmix64(hist_id ^ k.wrapping_mul(0xa076_1d64_78bd_642f)));
                let rate = 10.0 + 90.0 * unit(splitmix64(hist_id ^ 0x5555));
                let count = (rate * (age + 0.9 * hist_noise)).floor();
                match t.kind {
                    Kind::Bucket(i) => (count * LE_CDF[i]).floor(),
                    Kind::HistCount => count,
                    _ => round_to(count * 0.137, 0.001),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(series: usize, churn: usize) -> GeneratorConfig {
        GeneratorConfig {
            series,
            churn_per_interval: churn,
            seed: 42,
            start_ms: 1_700_000_000_000,
            interval_ms: 15_000,
        }
    }

    #[test]
    fn same_arguments_same_data() {
        let a = Generator::new(cfg(1000, 7));
        let b = Generator::new(cfg(1000, 7));
        for slot in [0, 1, 57, 99, 100, 999] {
            for k in [0, 1, 2, 100, 1000] {
                let g = a.generation(slot, k);
                assert_eq!(g, b.generation(slot, k));
                assert_eq!(a.labels(slot, g), b.labels(slot, g));
                assert_eq!(a.encoded_labels(slot, g), b.encoded_labels(slot, g));
                assert_eq!(a.value(slot, g, k).to_bits(), b.value(slot, g, k).to_bits());
            }
        }
        // A different seed changes the values.
        let c = Generator::new(GeneratorConfig {
            seed: 43,
            ..cfg(1000, 7)
        });
        assert!((0..100).any(|s| c.value(s, 0, 5) != a.value(s, 0, 5)));
    }

    #[test]
    fn counters_never_decrease_and_histograms_are_cumulative() {
        let g = Generator::new(cfg(200, 0));
        for slot in 0..200 {
            let name = g.labels(slot, 0)[0].1.clone();
            if name.ends_with("_total")
                || name.ends_with("_bucket")
                || name.ends_with("_count")
                || name.ends_with("_sum")
            {
                let mut prev = f64::MIN;
                for k in 0..500 {
                    let v = g.value(slot, 0, k);
                    assert!(
                        v >= prev,
                        "{name} slot {slot} went down at {k}: {prev} -> {v}"
                    );
                    prev = v;
                }
            }
        }
        // Buckets ascend with `le`, and +Inf equals _count.
        let first_bucket = (0..100)
            .find(|&s| g.labels(s, 0)[0].1 == "http_request_duration_seconds_bucket")
            .unwrap();
        for k in [1, 10, 300] {
            let buckets: Vec<f64> = (0..12).map(|i| g.value(first_bucket + i, 0, k)).collect();
            assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
            assert_eq!(buckets[11], g.value(first_bucket + 13, 0, k));
        }
    }

    #[test]
    fn labels_are_sorted_unique_and_series_distinct() {
        let g = Generator::new(cfg(300, 0));
        let mut seen = std::collections::HashSet::new();
        for slot in 0..300 {
            let l = g.labels(slot, 0);
            assert_eq!(l[0].0, "__name__");
            assert!(l.windows(2).all(|w| w[0].0 < w[1].0), "{l:?}");
            assert!(l.iter().all(|(_, v)| !v.is_empty()));
            assert!(seen.insert(l), "duplicate series at slot {slot}");
        }
    }

    #[test]
    fn churn_replaces_round_robin() {
        let g = Generator::new(cfg(10, 3));
        // After interval 0 nothing churned; interval 1 replaced slots 0..3; interval 4 wraps.
        assert_eq!(
            (0..10).map(|s| g.generation(s, 0)).collect::<Vec<_>>(),
            [0; 10]
        );
        assert_eq!(
            (0..10).map(|s| g.generation(s, 1)).collect::<Vec<_>>(),
            [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            (0..10).map(|s| g.generation(s, 4)).collect::<Vec<_>>(),
            [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        );
        // Each new generation is born when it first appears.
        for s in 0..10 {
            for k in 0..20 {
                let gen_k = g.generation(s, k);
                assert!(g.birth(s, gen_k) <= k);
                if gen_k > 0 {
                    assert_eq!(g.generation(s, g.birth(s, gen_k)), gen_k);
                    assert!(g.generation(s, g.birth(s, gen_k) - 1) < gen_k);
                }
            }
        }
        assert_ne!(g.labels(0, 0), g.labels(0, 1));
    }
}
