//! Measures cutting a block out of a full head ("head compaction"): wall and CPU time, peak
//! extra memory, block size, bytes per sample, and the time to open and verify the block.
//!
//! Fills a head (WAL fsync `never`) with N node-exporter-like series (default 1,000,000: 100
//! series per target, 6–9 labels, 8 on most; counters grow by integer increments, load
//! averages are gauges with 2 decimals, byte gauges move in 4 KiB pages) for 1.5 block ranges
//! at one sample every 15 s (default: 2 h + 1 h from t = 0), in time order, from several
//! threads that each own a slice of the series. Then `[0, range)` is compactable, and the example
//! cuts it with [`Head::cut_block`] (or, with `--phases`, with its steps one by one:
//! `write_block`, `truncate`, `checkpoint_wal`), sampling `/proc/self/status` every 20 ms
//! (and resetting `VmHWM` through `/proc/self/clear_refs`) to find the peak resident memory
//! of each phase. `RssFile` is the head-chunk files and block files the cut reads through
//! memory maps (page cache, reclaimable); `RssAnon` is the heap.
//!
//! Run: `cargo run --release -p norn-tsdb --example block_cut -- --series 1000000`
//! (quick: `--series 100000`; `--help` lists the flags). A 1M-series run needs about
//! 10 GB of free disk for the WAL and a few GiB of memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use norn_model::{Sample, WriteBatch};
use norn_tsdb::block::{Block, BlockOptions};
use norn_tsdb::{AppendLimits, FsyncPolicy, Head, HeadOptions, TsdbMetrics};

const USAGE: &str = "usage: block_cut [--series N] [--range-minutes M] [--interval-seconds S]
                 [--threads T] [--samples-per-append K] [--dir PATH] [--phases]
                 [--pause-before-cut SECS] [--keep]

  --series N              series (default 1000000)
  --range-minutes M       block range (default 120); the head is filled for 1.5 ranges
  --interval-seconds S    scrape interval (default 15)
  --threads T             appending threads (default 2)
  --samples-per-append K  consecutive samples per series per append (default 10)
  --dir PATH              head directory (default: a temp dir, deleted at the end)
  --phases                time write_block, truncate and checkpoint_wal separately instead
                          of one cut_block call
  --pause-before-cut SECS sleep before the cut (to attach a profiler: perf record -p PID)
  --keep                  keep the temp dir";

struct Args {
    series: usize,
    range_ms: i64,
    interval_ms: i64,
    threads: usize,
    per_append: usize,
    dir: Option<PathBuf>,
    phases: bool,
    pause: u64,
    keep: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        series: 1_000_000,
        range_ms: 120 * 60_000,
        interval_ms: 15_000,
        threads: 2,
        per_append: 10,
        dir: None,
        phases: false,
        pause: 0,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| -> String {
            it.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        let num = |s: String| -> u64 {
            s.replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("not a number: {s}\n{USAGE}");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--series" => a.series = num(val("--series")) as usize,
            "--range-minutes" => a.range_ms = num(val("--range-minutes")) as i64 * 60_000,
            "--interval-seconds" => a.interval_ms = num(val("--interval-seconds")) as i64 * 1000,
            "--threads" => a.threads = (num(val("--threads")) as usize).max(1),
            "--samples-per-append" => {
                a.per_append = (num(val("--samples-per-append")) as usize).max(1)
            }
            "--dir" => a.dir = Some(PathBuf::from(val("--dir"))),
            "--phases" => a.phases = true,
            "--pause-before-cut" => a.pause = num(val("--pause-before-cut")),
            "--keep" => a.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => {
                eprintln!("unknown flag {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    if a.range_ms <= 0 || a.interval_ms <= 0 || a.series == 0 {
        eprintln!("series, range and interval must be positive\n{USAGE}");
        std::process::exit(2)
    }
    a
}

// ---------------------------------------------------------------------------------------
// The series and their values.

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const CPU_MODES: [&str; 8] = [
    "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
];
const MOUNTS: [(&str, &str, &str); 4] = [
    ("/dev/sda1", "ext4", "/"),
    ("/dev/sda2", "ext4", "/var"),
    ("/dev/sdb1", "xfs", "/data"),
    ("tmpfs", "tmpfs", "/run"),
];

#[derive(Clone, Copy)]
enum Kind {
    /// Grows by integer increments around `rate` per scrape.
    Counter { rate: u64 },
    /// Random walk in 4 KiB pages between 0 and `max`.
    Bytes { max: u64 },
    /// Mean-reverting walk rounded to 2 decimals.
    Decimal { mean: f64 },
    /// Small integer gauge.
    SmallInt,
    /// Never changes.
    Constant,
}

/// Labels of series `i` (100 per target), written as `name`, `value` pairs into `buf`,
/// sorted by name; returns the series' value model and start value.
fn series(
    i: usize,
    buf: &mut Vec<u8>,
    pairs: &mut Vec<(&'static str, std::ops::Range<usize>)>,
) -> (Kind, f64) {
    let target = i / 100;
    let slot = i % 100;
    let h = mix(i as u64);
    pairs.clear();
    let mut put = |buf: &mut Vec<u8>, name: &'static str, value: std::fmt::Arguments<'_>| {
        use std::io::Write;
        let start = buf.len();
        buf.write_fmt(value).expect("write to Vec");
        pairs.push((name, start..buf.len()));
    };
    let name: &str;
    let kind;
    match slot {
        0..64 => {
            name = "node_cpu_seconds_total";
            let mode = CPU_MODES[slot % 8];
            put(buf, "cpu", format_args!("{}", slot / 8));
            put(buf, "mode", format_args!("{mode}"));
            let rate = match mode {
                "idle" => 12,
                "user" => 2,
                "system" => 1,
                _ => 0,
            };
            kind = Kind::Counter { rate };
        }
        64..80 => {
            let (n, dev) = match (slot - 64) / 4 {
                0 => ("node_network_receive_bytes_total", "eth"),
                1 => ("node_network_transmit_bytes_total", "eth"),
                2 => ("node_disk_read_bytes_total", "sd"),
                _ => ("node_disk_written_bytes_total", "sd"),
            };
            name = n;
            let d = slot % 4;
            if dev == "eth" {
                put(buf, "device", format_args!("eth{d}"));
            } else {
                put(
                    buf,
                    "device",
                    format_args!("sd{}", (b'a' + d as u8) as char),
                );
            }
            kind = Kind::Counter {
                rate: 1 << (8 + h % 14),
            };
        }
        80..88 => {
            let (dev, fs, mnt) = MOUNTS[slot % 4];
            put(buf, "device", format_args!("{dev}"));
            put(buf, "fstype", format_args!("{fs}"));
            put(buf, "mountpoint", format_args!("{mnt}"));
            if slot < 84 {
                name = "node_filesystem_avail_bytes";
                kind = Kind::Bytes { max: 1 << 38 };
            } else {
                name = "node_filesystem_size_bytes";
                kind = Kind::Constant;
            }
        }
        88..92 => {
            name = [
                "node_memory_MemAvailable_bytes",
                "node_memory_MemFree_bytes",
                "node_memory_Cached_bytes",
                "node_memory_Buffers_bytes",
            ][slot - 88];
            kind = Kind::Bytes { max: 1 << 35 };
        }
        92..95 => {
            name = ["node_load1", "node_load5", "node_load15"][slot - 92];
            kind = Kind::Decimal {
                mean: (h % 800) as f64 / 100.0,
            };
        }
        95..98 => {
            name = [
                "node_context_switches_total",
                "node_intr_total",
                "node_forks_total",
            ][slot - 95];
            kind = Kind::Counter {
                rate: [40_000, 25_000, 30][slot - 95],
            };
        }
        98 => {
            name = "node_procs_running";
            kind = Kind::SmallInt;
        }
        _ => {
            name = "up";
            kind = Kind::Constant;
        }
    }
    put(buf, "__name__", format_args!("{name}"));
    put(
        buf,
        "instance",
        format_args!(
            "10.{}.{}.{}:9100",
            (target >> 16) & 255,
            (target >> 8) & 255,
            target & 255
        ),
    );
    put(buf, "job", format_args!("node"));
    put(
        buf,
        "env",
        format_args!("{}", ["prod", "staging", "dev"][target % 3]),
    );
    put(
        buf,
        "region",
        format_args!(
            "{}",
            ["eu-west-1", "us-east-1", "ap-south-1"][(target / 3) % 3]
        ),
    );
    put(buf, "cluster", format_args!("k8s-{:02}", target % 20));
    pairs.sort_unstable_by_key(|p| p.0);
    let start = match kind {
        Kind::Counter { rate } => ((h >> 8) % 1_000_000 * rate.max(1)) as f64,
        Kind::Bytes { max } => ((h >> 8) % (max / 4096)) as f64 * 4096.0,
        Kind::Decimal { mean } => mean,
        Kind::SmallInt => 1.0 + (h % 4) as f64,
        Kind::Constant => {
            if name == "up" {
                1.0
            } else {
                ((h >> 8) % (1 << 26) + 1) as f64 * 4096.0
            }
        }
    };
    (kind, start)
}

fn next_value(kind: Kind, v: f64, r: u64) -> f64 {
    match kind {
        Kind::Counter { rate } => v + (r % (2 * rate + 1)) as f64,
        Kind::Bytes { max } => {
            let pages = (r % 2001) as f64 - 1000.0;
            (v + pages * 4096.0).clamp(0.0, max as f64)
        }
        Kind::Decimal { mean } => {
            let step = ((r % 41) as f64 - 20.0) / 100.0;
            let x = v + step + (mean - v) * 0.05;
            (x.max(0.0) * 100.0).round() / 100.0
        }
        Kind::SmallInt => (r % 9) as f64,
        Kind::Constant => v,
    }
}

// ---------------------------------------------------------------------------------------
// Filling the head.

/// Appends all samples of `[0, end]` for series `lo..hi`, `per_append` samples per series
/// per call, 1,000 series per call; threads meet at a barrier after every round so the
/// head's time advances evenly.
#[allow(clippy::too_many_arguments)]
fn fill_slice(
    head: &Head,
    lo: usize,
    hi: usize,
    end: i64,
    interval: i64,
    per_append: usize,
    barrier: &Barrier,
    rounds: usize,
) -> u64 {
    let kinds_and_start: Vec<(Kind, f64)> = {
        let mut buf = Vec::new();
        let mut pairs = Vec::new();
        (lo..hi)
            .map(|i| {
                buf.clear();
                series(i, &mut buf, &mut pairs)
            })
            .collect()
    };
    let kinds: Vec<Kind> = kinds_and_start.iter().map(|k| k.0).collect();
    let mut values: Vec<f64> = kinds_and_start.iter().map(|k| k.1).collect();
    drop(kinds_and_start);
    let mut appended = 0u64;
    let limits = AppendLimits::default();
    let mut pairs = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new(); // pair range per series
    let mut all_pairs: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = Vec::new();
    for round in 0..rounds {
        let t0 = round as i64 * per_append as i64 * interval;
        if t0 <= end {
            for first in (lo..hi).step_by(1000) {
                let last = (first + 1000).min(hi);
                let mut buf: Vec<u8> = Vec::with_capacity(256 * (last - first));
                spans.clear();
                all_pairs.clear();
                for i in first..last {
                    series(i, &mut buf, &mut pairs);
                    let p0 = all_pairs.len();
                    for (name, v) in pairs.drain(..) {
                        let n0 = buf.len();
                        buf.extend_from_slice(name.as_bytes());
                        all_pairs.push((n0..buf.len(), v));
                    }
                    spans.push((p0, all_pairs.len()));
                }
                let mut b = WriteBatch::builder(Bytes::from(buf));
                for (k, i) in (first..last).enumerate() {
                    for (n, v) in &all_pairs[spans[k].0..spans[k].1] {
                        b.add_label(n.clone(), v.clone()).expect("utf-8 labels");
                    }
                    let local = i - lo;
                    for j in 0..per_append as i64 {
                        let t = t0 + j * interval;
                        if t > end {
                            break;
                        }
                        let r = mix((i as u64) << 24 ^ (t / interval) as u64);
                        let v = if t == 0 {
                            values[local]
                        } else {
                            next_value(kinds[local], values[local], r)
                        };
                        values[local] = v;
                        b.add_sample(Sample::new(t, v));
                    }
                    b.finish_series();
                }
                let batch = b.build();
                let out = head.append(&batch, &limits).expect("append");
                assert!(
                    out.rejected.is_empty(),
                    "rejected: {:?}",
                    &out.rejected[..1]
                );
                appended += out.appended as u64;
            }
        }
        barrier.wait();
    }
    appended
}

// ---------------------------------------------------------------------------------------
// Measuring.

#[derive(Clone, Copy, Default)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
}

impl Mem {
    fn max(self, o: Mem) -> Mem {
        Mem {
            rss: self.rss.max(o.rss),
            anon: self.anon.max(o.anon),
            file: self.file.max(o.file),
        }
    }
}

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mem_now() -> Mem {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Mem {
        rss: get("VmRSS:"),
        anon: get("RssAnon:"),
        file: get("RssFile:"),
    }
}

/// (utime + stime) of the process and of the calling thread, in seconds.
fn cpu_seconds() -> (f64, f64) {
    let tick = 100.0; // USER_HZ on Linux
    let parse = |path: &str| -> f64 {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        let fields: Vec<&str> = s
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let f = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (f(11) + f(12)) / tick
    };
    (parse("/proc/self/stat"), parse("/proc/thread-self/stat"))
}

/// Bytes this process caused to be read from / written to storage (`/proc/self/io`).
fn io_bytes() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |key: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("read_bytes:"), get("write_bytes:"))
}

fn dir_size(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_file() {
        return md.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Samples memory every 20 ms and keeps the peak per phase.
struct Sampler {
    phase: AtomicUsize,
    stop: AtomicBool,
    peaks: Mutex<Vec<Mem>>,
}

impl Sampler {
    fn start(phases: usize) -> (Arc<Sampler>, std::thread::JoinHandle<()>) {
        let s = Arc::new(Sampler {
            phase: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            peaks: Mutex::new(vec![Mem::default(); phases]),
        });
        let s2 = Arc::clone(&s);
        let h = std::thread::spawn(move || {
            while !s2.stop.load(Ordering::Acquire) {
                s2.sample();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        (s, h)
    }

    fn sample(&self) {
        let m = mem_now();
        let p = self.phase.load(Ordering::Acquire);
        let mut peaks = self.peaks.lock().expect("sampler lock");
        peaks[p] = peaks[p].max(m);
    }

    /// Takes a last sample for the current phase and moves to `p`.
    fn enter(&self, p: usize) {
        self.sample();
        self.phase.store(p, Ordering::Release);
        self.sample();
    }
}

struct Phase {
    name: &'static str,
    wall: Duration,
    cpu_thread: f64,
    cpu_process: f64,
    written: u64,
}

struct PhaseClock {
    t: Instant,
    cpu: (f64, f64),
    io: (u64, u64),
}

impl PhaseClock {
    fn now() -> Self {
        Self {
            t: Instant::now(),
            cpu: cpu_seconds(),
            io: io_bytes(),
        }
    }

    fn phase(&self, name: &'static str, end: &PhaseClock) -> Phase {
        Phase {
            name,
            wall: end.t - self.t,
            cpu_thread: end.cpu.1 - self.cpu.1,
            cpu_process: end.cpu.0 - self.cpu.0,
            written: end.io.1.saturating_sub(self.io.1),
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
}

fn main() {
    let args = parse_args();
    let tmp = args.dir.is_none().then(|| {
        tempfile::Builder::new()
            .prefix("norn-block-cut-")
            .tempdir()
            .expect("tempdir")
    });
    let dir = match (&args.dir, &tmp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!(),
    };
    let mut opts = HeadOptions::new(&dir);
    opts.fsync = FsyncPolicy::Never;
    opts.block_range_ms = args.range_ms;
    opts.too_old_window_ms = args.range_ms / 2;
    opts.metrics = Arc::new(TsdbMetrics::unregistered());
    let (head, stats) = Head::open(opts).expect("open head");
    assert_eq!(stats.samples, 0, "{} holds a head already", dir.display());
    let head = Arc::new(head);

    // Fill [0, 1.5 ranges]: then [0, range) is compactable.
    let end = args.range_ms + args.range_ms / 2;
    let intervals = (end / args.interval_ms + 1) as usize;
    let rounds = intervals.div_ceil(args.per_append);
    println!(
        "filling {} series x {} samples ({} h at {} s) with {} threads into {}",
        args.series,
        intervals,
        end as f64 / 3.6e6,
        args.interval_ms / 1000,
        args.threads,
        dir.display()
    );
    let fill_start = Instant::now();
    let cpu0 = cpu_seconds().0;
    let barrier = Arc::new(Barrier::new(args.threads + 1));
    let per = args.series.div_ceil(args.threads);
    let workers: Vec<_> = (0..args.threads)
        .map(|k| {
            let head = Arc::clone(&head);
            let barrier = Arc::clone(&barrier);
            let (lo, hi) = ((k * per).min(args.series), ((k + 1) * per).min(args.series));
            let (interval, per_append) = (args.interval_ms, args.per_append);
            std::thread::spawn(move || {
                fill_slice(&head, lo, hi, end, interval, per_append, &barrier, rounds)
            })
        })
        .collect();
    for r in 0..rounds {
        barrier.wait();
        if (r + 1) % (rounds / 10).max(1) == 0 {
            eprintln!(
                "  {:>3.0}% after {:.0} s",
                (r + 1) as f64 * 100.0 / rounds as f64,
                fill_start.elapsed().as_secs_f64()
            );
        }
    }
    let appended: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let fill = fill_start.elapsed();
    let fill_cpu = cpu_seconds().0 - cpu0;
    println!(
        "filled: {appended} samples in {:.1} s ({:.2} M samples/s, {:.2} CPU-s per 1M samples)",
        fill.as_secs_f64(),
        appended as f64 / fill.as_secs_f64() / 1e6,
        fill_cpu / appended as f64 * 1e6
    );

    let range = head.compactable_range();
    assert_eq!(range, Some((0, args.range_ms)), "compactable range");
    let (mint, maxt) = (0, args.range_ms);
    let wal_dir = dir.join("wal");
    let chunks_head = dir.join("chunks_head");
    let wal_before = dir_size(&wal_dir);
    let chunks_head_before = dir_size(&chunks_head);
    let series_before = head.num_series();
    let mem = head.memory();
    if args.pause > 0 {
        println!(
            "pid {}: cutting in {} s (e.g. perf record -g -p {})",
            std::process::id(),
            args.pause,
            std::process::id()
        );
        std::thread::sleep(Duration::from_secs(args.pause));
    }

    // The cut.
    let names: &[&str] = if args.phases {
        &[
            "idle",
            "write_block",
            "truncate",
            "checkpoint_wal",
            "open+verify",
        ]
    } else {
        &[
            "idle",
            "cut: write block",
            "cut: truncate+checkpoint",
            "open+verify",
        ]
    };
    let (sampler, sampler_thread) = Sampler::start(names.len());
    std::thread::sleep(Duration::from_millis(100));
    let before = mem_now();
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let opts = BlockOptions::for_tenant("bench", "ingester", []);
    let mut phases = Vec::new();
    let c0 = PhaseClock::now();
    sampler.enter(1);
    let (meta, truncated, checkpoint) = if args.phases {
        head.set_min_valid_time(maxt);
        let meta = head
            .write_block(&dir, mint, maxt, opts)
            .expect("write block");
        let c1 = PhaseClock::now();
        sampler.enter(2);
        let truncated = head.truncate(maxt);
        let c2 = PhaseClock::now();
        sampler.enter(3);
        let checkpoint = Some(head.checkpoint_wal(maxt).expect("checkpoint"));
        let c3 = PhaseClock::now();
        phases.push((c0.phase("write_block", &c1), vec![1]));
        phases.push((c1.phase("truncate", &c2), vec![2]));
        phases.push((c2.phase("checkpoint_wal", &c3), vec![3]));
        phases.push((c0.phase("total (= cut_block)", &c3), vec![1, 2, 3]));
        (meta, truncated, checkpoint)
    } else {
        let mut published: Option<PhaseClock> = None;
        let out = head
            .cut_block(&dir, mint, maxt, opts, |_| {
                published = Some(PhaseClock::now());
                sampler.enter(2);
                Ok(())
            })
            .expect("cut block");
        let c2 = PhaseClock::now();
        let c1 = published.expect("publish was called");
        phases.push((c0.phase("write block", &c1), vec![1]));
        phases.push((c1.phase("truncate + checkpoint", &c2), vec![2]));
        phases.push((c0.phase("cut_block total", &c2), vec![1, 2]));
        println!(
            "cut_block's own duration: {:.2} s",
            out.duration.as_secs_f64()
        );
        (out.meta, out.truncated, out.checkpoint)
    };
    let meta = meta.expect("the range holds data");
    let hwm = status_kb("VmHWM") * 1024;
    let after_cut = mem_now();

    // Open and verify.
    let verify_phase = names.len() - 1;
    sampler.enter(verify_phase);
    let v0 = PhaseClock::now();
    let block_dir = dir.join(&meta.ulid);
    let block = Block::open(&block_dir).expect("open block");
    let v1 = PhaseClock::now();
    block.verify().expect("verify block");
    let v2 = PhaseClock::now();
    sampler.enter(0);
    sampler.stop.store(true, Ordering::Release);
    sampler_thread.join().expect("sampler");
    let peaks = sampler.peaks.lock().expect("sampler lock").clone();
    let open = v0.phase("Block::open", &v1);
    let verify = v1.phase("verify()", &v2);

    let index = dir_size(&block_dir.join("index"));
    let chunks = dir_size(&block_dir.join("chunks"));
    let total = dir_size(&block_dir);
    let s = meta.stats;

    println!();
    println!(
        "head before the cut: {series_before} series, WAL {}, chunks_head {}, accounting {mem:?}",
        mib(wal_before),
        mib(chunks_head_before)
    );
    println!(
        "block {}: [{}, {}) {} series, {} chunks, {} samples",
        meta.ulid, meta.min_time, meta.max_time, s.num_series, s.num_chunks, s.num_samples
    );
    println!(
        "truncate: {truncated:?}; checkpoint: {checkpoint:?}; head after: {} series, WAL {}, chunks_head {}",
        head.num_series(),
        mib(dir_size(&wal_dir)),
        mib(dir_size(&chunks_head))
    );
    println!();
    println!(
        "| {:<26} | {:>9} | {:>12} | {:>13} | {:>12} | {:>22} |",
        "phase", "wall s", "CPU s (thr)", "CPU s (proc)", "written", "peak RSS (anon/file)"
    );
    println!(
        "|{:-<28}|{:->11}|{:->14}|{:->15}|{:->14}|{:->24}|",
        "", "", "", "", "", ""
    );
    let verify_peak = vec![verify_phase];
    for (p, idx) in phases
        .iter()
        .map(|(p, i)| (p, i))
        .chain([(&open, &verify_peak), (&verify, &verify_peak)])
    {
        let peak = idx.iter().fold(Mem::default(), |a, &i| a.max(peaks[i]));
        println!(
            "| {:<26} | {:>9.2} | {:>12.2} | {:>13.2} | {:>12} | {:>22} |",
            p.name,
            p.wall.as_secs_f64(),
            p.cpu_thread,
            p.cpu_process,
            mib(p.written),
            format!("{} ({}/{})", mib(peak.rss), mib(peak.anon), mib(peak.file))
        );
    }
    println!();
    let cut_peak = peaks[1..verify_phase]
        .iter()
        .fold(Mem::default(), |a, b| a.max(*b));
    println!(
        "RSS before the cut {} (anon {}, file {}); peak during the cut {} (VmHWM{}: {}), +{} \
         (anon +{}, file +{}); after the cut {} (anon {}, file {})",
        mib(before.rss),
        mib(before.anon),
        mib(before.file),
        mib(cut_peak.rss),
        if hwm_reset {
            ", reset before"
        } else {
            ", NOT reset"
        },
        mib(hwm),
        mib(cut_peak.rss.saturating_sub(before.rss)),
        mib(cut_peak.anon.saturating_sub(before.anon)),
        mib(cut_peak.file.saturating_sub(before.file)),
        mib(after_cut.rss),
        mib(after_cut.anon),
        mib(after_cut.file),
    );
    println!(
        "block on disk: {} bytes (index {} = {:.1} B/series, chunks {}, other {}); \
         {:.3} bytes/sample ({:.3} chunks only), {:.1} samples/chunk",
        total,
        index,
        index as f64 / s.num_series as f64,
        chunks,
        total - index - chunks,
        (index + chunks) as f64 / s.num_samples as f64,
        chunks as f64 / s.num_samples as f64,
        s.num_samples as f64 / s.num_chunks as f64
    );
    let cut_wall: f64 = phases.last().map_or(0.0, |p| p.0.wall.as_secs_f64());
    println!(
        "cut: {:.2} s for {} samples = {:.2} M samples/s, {:.1} µs per series",
        cut_wall,
        s.num_samples,
        s.num_samples as f64 / cut_wall / 1e6,
        cut_wall * 1e6 / s.num_series as f64
    );
    drop(block);
    drop(head);
    if args.keep
        && let Some(t) = tmp
    {
        println!("kept {}", t.keep().display());
    }
}
