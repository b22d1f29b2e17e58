//! Norn's block format against the real Prometheus tools (Debian `promtool` 2.42, spec §14).
//!
//! * Norn → promtool: a block written by [`write_block`] is listed, analysed and dumped by
//!   promtool, and the dump reproduces every sample exactly once.
//! * promtool → Norn: blocks made by `promtool tsdb create-blocks-from openmetrics` open,
//!   verify and return every input sample exactly once through [`Block`].
//! * The same node-exporter-like data written both ways gives the disk bytes per sample of
//!   each, and (because Norn cuts chunks with Prometheus' head rule) identical index and chunk
//!   files.
//!
//! Without promtool on `PATH` every test prints `SKIP: promtool not found` and passes, unless
//! `NORN_REQUIRE_PEERS=1`, which turns the absence into a failure. Every promtool run is
//! killed after 60 s; all files live in temporary directories that are removed at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use norn_model::{Label, Labels, MatchType, Matcher, Sample};
use norn_tsdb::block::{Block, BlockMeta, BlockOptions, write_block};
use norn_tsdb::chunkenc::{ChunkCutter, XorChunk};
use norn_tsdb::{ChunkMeta, SeriesChunks};

/// Prometheus' staleness marker.
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;
/// Go's `math.NaN()`, what promtool stores for a `NaN` in text input.
const GO_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;
/// Prometheus' default block range, also its head chunk range.
const TWO_HOURS: i64 = 7_200_000;
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Running promtool.

/// The promtool binary, or `None` (with the SKIP line printed) when it is not installed.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("NORN_REQUIRE_PEERS").as_deref() != Ok("1"),
            "promtool not found on PATH and NORN_REQUIRE_PEERS=1 (apt-get install prometheus)"
        );
        println!("SKIP: promtool not found");
    }
    found
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs promtool with `args`, killing it after [`PROMTOOL_TIMEOUT`]. Output goes to
/// anonymous temporary files, so a large dump cannot block on a full pipe.
fn run(tool: &Path, args: &[String]) -> Run {
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tool.display()));
    let deadline = Instant::now() + PROMTOOL_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool {args:?} did not finish within {PROMTOOL_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |f: &mut fs::File| {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    Run {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// Runs promtool and insists on exit status 0.
fn run_ok(tool: &Path, args: &[String]) -> String {
    let r = run(tool, args);
    assert!(
        r.status.success(),
        "promtool {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
    r.stdout
}

fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------
// Test data: node-exporter-like series.

/// splitmix64: deterministic, dependency-free.
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
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Cumulative seconds with 2 decimals (node_cpu_seconds_total).
    CpuCounter,
    /// Cumulative integer increments (bytes, packets).
    IntCounter,
    /// A gauge with 2 decimals (node_load1, temperatures).
    Gauge2,
    /// Page-aligned bytes (node_memory_*_bytes).
    BytesGauge,
    /// Never changes (node_memory_MemTotal_bytes, node_network_up).
    Constant,
    /// Rarely increments, by small integers (error and drop counters).
    RareCounter,
}

/// Series of one host, as a node exporter exposes them (a representative subset).
fn node_series(host: usize) -> Vec<(Labels, Kind)> {
    let instance = format!("host-{host:03}.example.org:9100");
    let base = |name: &str, extra: &[(&str, &str)]| {
        let mut l = vec![
            Label::new("__name__", name),
            Label::new("instance", instance.as_str()),
            Label::new("job", "node"),
        ];
        l.extend(extra.iter().map(|(n, v)| Label::new(*n, *v)));
        Labels::new(l)
    };
    let mut out = Vec::new();
    for cpu in ["0", "1"] {
        for mode in ["idle", "iowait", "system", "user"] {
            out.push((
                base("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)]),
                Kind::CpuCounter,
            ));
        }
    }
    for dev in ["eth0", "lo"] {
        out.push((
            base("node_network_receive_bytes_total", &[("device", dev)]),
            Kind::IntCounter,
        ));
    }
    out.push((base("node_load1", &[]), Kind::Gauge2));
    out.push((
        base("node_memory_MemAvailable_bytes", &[]),
        Kind::BytesGauge,
    ));
    out.push((
        base(
            "node_filesystem_avail_bytes",
            &[
                ("device", "/dev/sda1"),
                ("fstype", "ext4"),
                ("mountpoint", "/"),
            ],
        ),
        Kind::BytesGauge,
    ));
    out.push((
        base(
            "node_hwmon_temp_celsius",
            &[("chip", "platform_coretemp_0")],
        ),
        Kind::Gauge2,
    ));
    out.push((base("node_memory_MemTotal_bytes", &[]), Kind::Constant));
    out.push((
        base("node_network_receive_errs_total", &[("device", "eth0")]),
        Kind::RareCounter,
    ));
    out.push((
        base("node_network_up", &[("device", "eth0")]),
        Kind::Constant,
    ));
    out
}

/// `n` samples every 15 s from `start`, with up to `jitter_ms` of scrape jitter.
fn samples(rng: &mut Rng, kind: Kind, start: i64, n: usize, jitter_ms: u64) -> Vec<Sample> {
    let mut v: f64 = match kind {
        Kind::CpuCounter => (rng.below(1_000_000) as f64) / 100.0,
        Kind::IntCounter => rng.below(1 << 40) as f64,
        Kind::Gauge2 => (rng.unit() * 4.0 * 100.0).round() / 100.0,
        Kind::BytesGauge => (rng.below(1 << 20) * 4096) as f64,
        Kind::Constant => (rng.below(4) * (1 << 30)) as f64,
        Kind::RareCounter => rng.below(10) as f64,
    };
    let mut out: Vec<Sample> = Vec::with_capacity(n);
    for i in 0..n {
        let jitter = if jitter_ms == 0 {
            0
        } else {
            rng.below(jitter_ms) as i64
        };
        let t = start + i as i64 * 15_000 + jitter;
        v = match kind {
            Kind::CpuCounter => ((v + rng.unit() * 15.0) * 100.0).round() / 100.0,
            Kind::IntCounter => v + rng.below(200_000) as f64,
            Kind::Gauge2 => ((v + rng.unit() - 0.5).abs() * 100.0).round() / 100.0,
            Kind::BytesGauge => {
                let pages = (v / 4096.0) as i64 + rng.below(257) as i64 - 128;
                (pages.max(0) * 4096) as f64
            }
            Kind::Constant => v,
            Kind::RareCounter if rng.below(50) == 0 => v + 1.0 + rng.below(3) as f64,
            Kind::RareCounter => v,
        };
        out.push(Sample::new(t, v));
    }
    out
}

/// XOR chunks cut exactly where Prometheus' head cuts them (spec §5) for a head whose
/// chunk range is `chunk_range`.
fn head_chunks(samples: &[Sample], chunk_range: i64) -> Vec<ChunkMeta> {
    let mut out = Vec::new();
    let mut cutter = ChunkCutter { next_at: i64::MIN };
    let mut cur: Option<(i64, XorChunk)> = None;
    for s in samples {
        let (min_t, max_t, num) = match &cur {
            Some((min_t, c)) => (*min_t, c.last_t(), c.num_samples()),
            None => (0, 0, 0),
        };
        if cutter.must_cut(s.t, min_t, max_t, num) {
            if let Some((min_t, c)) = cur.take() {
                out.push(ChunkMeta {
                    min_t,
                    max_t: c.last_t(),
                    data: c.into_bytes().into_vec(),
                });
            }
            cutter.cut(s.t, chunk_range);
            cur = Some((s.t, XorChunk::new()));
        }
        if let Some((_, c)) = &mut cur {
            assert!(c.append(s.t, s.v));
        }
    }
    if let Some((min_t, c)) = cur {
        out.push(ChunkMeta {
            min_t,
            max_t: c.last_t(),
            data: c.into_bytes().into_vec(),
        });
    }
    out
}

/// Go's `labels.Labels.String()`: `{__name__="x", a="b"}` (the values used here need no
/// escaping, which the generator asserts).
fn go_labels(l: &Labels) -> String {
    let mut s = String::from("{");
    for (i, l) in l.iter().enumerate() {
        assert!(
            !l.value.contains(['"', '\\', '\n']),
            "test label values must not need quoting"
        );
        if i > 0 {
            s.push_str(", ");
        }
        write!(s, "{}=\"{}\"", l.name, l.value).unwrap();
    }
    s.push('}');
    s
}

/// A value as promtool prints or reads it, parsed back: Go's `%g` is the shortest
/// representation that round-trips, so non-NaN values must come back bit for bit.
fn parse_go_float(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s
            .parse()
            .unwrap_or_else(|e| panic!("promtool printed value {s:?}: {e}")),
    }
}

fn same_value(want: f64, got: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else {
        want.to_bits() == got.to_bits()
    }
}

/// Parses `promtool tsdb dump` output: `{labels} value timestamp_ms` per line.
fn parse_dump(out: &str) -> Vec<(String, i64, f64)> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let close = line
                .rfind("} ")
                .unwrap_or_else(|| panic!("dump line without labels: {line:?}"));
            let labels = &line[..=close];
            let mut rest = line[close + 2..].split(' ');
            let (Some(v), Some(t), None) = (rest.next(), rest.next(), rest.next()) else {
                panic!("dump line is not `labels value ts`: {line:?}");
            };
            let t: i64 = t
                .parse()
                .unwrap_or_else(|e| panic!("bad timestamp in {line:?}: {e}"));
            (labels.to_string(), t, parse_go_float(v))
        })
        .collect()
}

/// The row of `promtool tsdb list` for `ulid`: (min, max, samples, chunks, series, size).
fn list_row(out: &str, ulid: &str) -> (i64, i64, u64, u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(ulid))
        .unwrap_or_else(|| panic!("block {ulid} not in `tsdb list` output:\n{out}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 8, "unexpected `tsdb list` row {line:?}");
    let n = |i: usize| -> u64 { f[i].parse().unwrap() };
    (
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        n(4),
        n(5),
        n(6),
        n(7),
    )
}

/// `promtool tsdb dump` over `[mint, maxt]` of the data directory `db`.
fn dump(tool: &Path, db: &Path, mint: i64, maxt: i64) -> Vec<(String, i64, f64)> {
    // 2.42 opens the directory as a read-only DB, which needs a wal/ directory.
    fs::create_dir_all(db.join("wal")).unwrap();
    parse_dump(&run_ok(
        tool,
        &[
            "tsdb".into(),
            "dump".into(),
            format!("--min-time={mint}"),
            format!("--max-time={maxt}"),
            s(db),
        ],
    ))
}

/// Expected dump lines for `data` restricted to `[mint, maxt]`, in promtool's order
/// (series sorted by labels, samples by time).
fn expected_dump(data: &[(Labels, Vec<Sample>)], mint: i64, maxt: i64) -> Vec<(String, i64, f64)> {
    let mut sorted: Vec<&(Labels, Vec<Sample>)> = data.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .into_iter()
        .flat_map(|(l, ss)| {
            let l = go_labels(l);
            ss.iter()
                .filter(move |s| s.t >= mint && s.t <= maxt)
                .map(move |s| (l.clone(), s.t, s.v))
        })
        .collect()
}

fn assert_dump_eq(got: &[(String, i64, f64)], want: &[(String, i64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: number of dumped samples");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.0 == w.0 && g.1 == w.1 && same_value(w.2, g.2),
            "{what}: dump line {i} is {g:?}, want {w:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Norn → promtool.

/// Series for the Norn → promtool test: three hosts, 2 000 samples (8 h 20 m) each with
/// scrape jitter, and the special values Prometheus stores: NaN, the stale marker, ±Inf, −0.
fn norn_test_data() -> Vec<(Labels, Vec<Sample>)> {
    let mut rng = Rng(42);
    let start = 1_700_000_123_456;
    let mut data = Vec::new();
    for host in 0..3 {
        for (labels, kind) in node_series(host) {
            let ss = samples(&mut rng, kind, start, 2_000, 40);
            data.push((labels, ss));
        }
    }
    data[0].1[500].v = f64::from_bits(STALE_NAN_BITS);
    data[1].1[700].v = f64::NAN;
    data[2].1[900].v = f64::INFINITY;
    data[2].1[901].v = f64::NEG_INFINITY;
    data[3].1[10].v = -0.0;
    // A series that goes stale and comes back, as after a target restart.
    let last = data.len() - 1;
    data[last].1[1_000].v = f64::from_bits(STALE_NAN_BITS);
    data.sort_by(|a, b| a.0.cmp(&b.0));
    data
}

#[test]
fn promtool_reads_norn_blocks() {
    let Some(tool) = promtool() else { return };
    let data = norn_test_data();
    let db = tempfile::tempdir().unwrap();
    let series: Vec<SeriesChunks> = data
        .iter()
        .map(|(l, ss)| SeriesChunks {
            labels: l.clone(),
            chunks: head_chunks(ss, TWO_HOURS),
        })
        .collect();
    let opts = BlockOptions {
        // Small segments: the block spans many chunk files.
        segment_size: 16 << 10,
        ..BlockOptions::default()
    };
    let meta: BlockMeta = write_block(db.path(), series, opts).unwrap();
    let block_dir = db.path().join(&meta.ulid);
    let nsegments = fs::read_dir(block_dir.join("chunks")).unwrap().count();
    assert!(
        nsegments > 2,
        "wanted several chunk segments, got {nsegments}"
    );
    let nsamples: usize = data.iter().map(|(_, s)| s.len()).sum();
    let first = data.iter().map(|(_, s)| s[0].t).min().unwrap();
    let last = data.iter().map(|(_, s)| s[s.len() - 1].t).max().unwrap();
    assert_eq!((meta.min_time, meta.max_time), (first, last + 1));
    assert!(meta.stats.num_chunks > 2 * data.len() as u64);

    // analyze (index) and analyze --extended (also reads every chunk).
    for extended in [false, true] {
        let mut args = vec!["tsdb".into(), "analyze".into()];
        if extended {
            args.push("--extended".into());
        }
        args.extend([s(db.path()), meta.ulid.clone()]);
        let out = run_ok(&tool, &args);
        assert!(out.contains(&format!("Block ID: {}", meta.ulid)), "{out}");
        assert!(
            out.contains(&format!("\nSeries: {}\n", data.len())),
            "analyze reports the wrong series count:\n{out}"
        );
        let names: BTreeSet<&str> = data
            .iter()
            .flat_map(|(l, _)| l.iter().map(|l| l.name.as_str()))
            .collect();
        assert!(
            out.contains(&format!("\nLabel names: {}\n", names.len())),
            "{out}"
        );
        if extended {
            assert!(out.contains("Compaction analysis"), "{out}");
        }
    }

    // list: the block with the right range and stats; SIZE is every file of the block.
    let out = run_ok(&tool, &["tsdb".into(), "list".into(), s(db.path())]);
    let (min, max, samples, chunks, nseries, size) = list_row(&out, &meta.ulid);
    assert_eq!((min, max), (meta.min_time, meta.max_time), "{out}");
    assert_eq!(samples, nsamples as u64, "{out}");
    assert_eq!(chunks, meta.stats.num_chunks, "{out}");
    assert_eq!(nseries, data.len() as u64, "{out}");
    let block = Block::open(&block_dir).unwrap();
    assert_eq!(size, block.size_bytes(), "{out}");
    drop(block);

    // dump: every sample exactly once, over the whole block and over an inner range.
    let got = dump(&tool, db.path(), meta.min_time, meta.max_time);
    assert_dump_eq(
        &got,
        &expected_dump(&data, i64::MIN, i64::MAX),
        "full-range dump",
    );
    // promtool prints the stale marker (a NaN payload) as plain `NaN`.
    let stale_line = got
        .iter()
        .find(|(l, t, _)| *l == go_labels(&data[0].0) && *t == data[0].1[500].t)
        .unwrap();
    assert!(stale_line.2.is_nan());
    let (a, b) = (first + 3 * 3_600_000 + 7, first + 5 * 3_600_000 + 11);
    let got = dump(&tool, db.path(), a, b);
    assert_dump_eq(&got, &expected_dump(&data, a, b), "inner-range dump");
    assert!(!got.is_empty());
}

// ---------------------------------------------------------------------------------------
// promtool → Norn.

/// Series as (labels, [(t, value bits)]), comparable even with NaNs.
fn by_bits(series: &[norn_model::Series]) -> Vec<(&Labels, Vec<(i64, u64)>)> {
    series
        .iter()
        .map(|s| {
            (
                &s.labels,
                s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect()
}

/// Writes OpenMetrics text for `data` (grouped by metric family, each series' samples in
/// time order, timestamps in seconds with millisecond fractions). Returns the timestamps
/// promtool will store: it parses seconds as a float and truncates `ts * 1000`, so a
/// fraction such as `.123` can come back as 122 ms. The expectation reproduces that.
fn openmetrics(data: &[(Labels, Vec<Sample>, Kind)]) -> (String, Vec<(Labels, Vec<Sample>)>) {
    let mut text = String::new();
    let mut stored = Vec::new();
    let mut families: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (l, _, _)) in data.iter().enumerate() {
        families
            .entry(l.metric_name().unwrap().to_string())
            .or_default()
            .push(i);
    }
    for (name, members) in families {
        let counter = matches!(
            data[members[0]].2,
            Kind::CpuCounter | Kind::IntCounter | Kind::RareCounter
        );
        let family = if counter {
            name.strip_suffix("_total").expect("counters end in _total")
        } else {
            name.as_str()
        };
        let ty = if counter { "counter" } else { "gauge" };
        writeln!(text, "# HELP {family} Test data.\n# TYPE {family} {ty}").unwrap();
        for i in members {
            let (labels, ss, _) = &data[i];
            let rest: Vec<String> = labels
                .iter()
                .filter(|l| l.name != "__name__")
                .map(|l| format!("{}=\"{}\"", l.name, l.value))
                .collect();
            let mut kept = Vec::with_capacity(ss.len());
            for smp in ss {
                let v = if smp.v.is_nan() {
                    "NaN".to_string()
                } else if smp.v == f64::INFINITY {
                    "+Inf".to_string()
                } else if smp.v == f64::NEG_INFINITY {
                    "-Inf".to_string()
                } else {
                    format!("{}", smp.v)
                };
                assert!(smp.t >= 0);
                let ts = format!("{}.{:03}", smp.t / 1000, smp.t % 1000);
                writeln!(text, "{name}{{{}}} {v} {ts}", rest.join(",")).unwrap();
                let t = (ts.parse::<f64>().unwrap() * 1000.0) as i64;
                let v = if smp.v.is_nan() {
                    f64::from_bits(GO_NAN_BITS)
                } else {
                    smp.v
                };
                kept.push(Sample::new(t, v));
            }
            stored.push((labels.clone(), kept));
        }
    }
    text.push_str("# EOF\n");
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    (text, stored)
}

/// Runs `promtool tsdb create-blocks-from openmetrics` over `text`; returns the block dirs.
fn promtool_blocks(tool: &Path, text: &str, work: &Path) -> Vec<PathBuf> {
    let input = work.join("input.om");
    fs::write(&input, text).unwrap();
    let out = work.join("blocks");
    fs::create_dir_all(&out).unwrap();
    run_ok(
        tool,
        &[
            "tsdb".into(),
            "create-blocks-from".into(),
            "openmetrics".into(),
            s(&input),
            s(&out),
        ],
    );
    let mut dirs: Vec<PathBuf> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn norn_reads_promtool_blocks() {
    let Some(tool) = promtool() else { return };
    let mut rng = Rng(7);
    // 3 h 20 m starting 25 min before a 2 h boundary: three 2h-aligned blocks.
    let start = 1_699_999_200_000 - 25 * 60_000 + 321;
    let mut input = Vec::new();
    for host in 0..2 {
        for (labels, kind) in node_series(host).into_iter().step_by(2) {
            let ss = samples(&mut rng, kind, start, 800, 1_000);
            input.push((labels, ss, kind));
        }
    }
    input[1].1[100].v = f64::NAN;
    input[2].1[200].v = f64::INFINITY;
    input[3].1[300].v = -0.0;
    let (text, data) = openmetrics(&input);
    let work = tempfile::tempdir().unwrap();
    let dirs = promtool_blocks(&tool, &text, work.path());
    assert_eq!(dirs.len(), 3, "expected three 2h-aligned blocks");

    let mut got: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut prev_max = i64::MIN;
    for dir in &dirs {
        let b = Block::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        b.verify().unwrap();
        let m = b.meta().clone();
        // promtool's meta range is [first sample, last sample + 1) within one 2 h window.
        assert_eq!(
            m.min_time.div_euclid(TWO_HOURS),
            (m.max_time - 1).div_euclid(TWO_HOURS),
            "block crosses a 2h boundary"
        );
        assert!(m.min_time >= prev_max, "blocks overlap");
        prev_max = m.max_time;
        let all = b.select(i64::MIN, i64::MAX, &[]).unwrap();
        let by_regex = b
            .select(
                m.min_time,
                m.max_time - 1,
                &[Matcher::new(MatchType::Regex, "__name__", ".+").unwrap()],
            )
            .unwrap();
        assert!(
            by_bits(&all) == by_bits(&by_regex),
            "select without matchers and with {{__name__=~\".+\"}} disagree"
        );
        assert_eq!(all.len() as u64, m.stats.num_series);
        let mut block_names = BTreeSet::new();
        let mut block_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut n = 0u64;
        for series in all {
            for l in &series.labels {
                block_names.insert(l.name.clone());
                block_values
                    .entry(l.name.clone())
                    .or_default()
                    .insert(l.value.clone());
            }
            for smp in &series.samples {
                assert!(
                    smp.t >= m.min_time && smp.t < m.max_time,
                    "sample outside its block"
                );
            }
            n += series.samples.len() as u64;
            got.entry(series.labels).or_default().extend(series.samples);
        }
        assert_eq!(n, m.stats.num_samples);
        let ln: BTreeSet<String> = b.label_names(&[]).unwrap().into_iter().collect();
        assert_eq!(ln, block_names, "label_names of {}", dir.display());
        for (name, vals) in &block_values {
            let lv: BTreeSet<String> = b.label_values(name, &[]).unwrap().into_iter().collect();
            assert_eq!(&lv, vals, "label_values({name}) of {}", dir.display());
        }
        names.extend(block_names);
        for (k, v) in block_values {
            values.entry(k).or_default().extend(v);
        }
    }

    let want: BTreeMap<Labels, Vec<Sample>> = data.iter().cloned().collect();
    assert_eq!(got.len(), want.len(), "series count");
    for (labels, ws) in &want {
        let gs = &got[labels];
        assert_eq!(gs.len(), ws.len(), "{labels}: sample count");
        for (g, w) in gs.iter().zip(ws) {
            assert!(
                g.t == w.t && g.v.to_bits() == w.v.to_bits(),
                "{labels}: got {g:?}, want {w:?}"
            );
        }
    }
    let want_names: BTreeSet<String> = data
        .iter()
        .flat_map(|(l, _)| l.iter().map(|l| l.name.clone()))
        .collect();
    assert_eq!(names, want_names);
    for (name, vals) in values {
        let want: BTreeSet<String> = data
            .iter()
            .filter_map(|(l, _)| l.get(&name).map(str::to_string))
            .collect();
        assert_eq!(vals, want, "values of {name}");
    }
}

// ---------------------------------------------------------------------------------------
// Disk bytes per sample, and byte-for-byte equality with promtool's block.

/// index + chunks bytes of a block directory.
fn index_and_chunk_bytes(dir: &Path) -> (u64, u64) {
    let index = fs::metadata(dir.join("index")).unwrap().len();
    let chunks = fs::read_dir(dir.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    (index, chunks)
}

#[test]
fn bytes_per_sample_against_promtool() {
    let Some(tool) = promtool() else { return };
    // ~100 node-exporter series (6 hosts × 17) over one aligned 2 h block at 15 s.
    let mut rng = Rng(2024);
    let start = 1_699_999_200_000;
    let mut input = Vec::new();
    for host in 0..6 {
        for (labels, kind) in node_series(host) {
            input.push((labels, samples(&mut rng, kind, start, 480, 0), kind));
        }
    }
    let (text, data) = openmetrics(&input);
    let nsamples: u64 = data.iter().map(|(_, s)| s.len() as u64).sum();

    let work = tempfile::tempdir().unwrap();
    let dirs = promtool_blocks(&tool, &text, work.path());
    assert_eq!(dirs.len(), 1);
    let prom = &dirs[0];
    let prom_meta = Block::open(prom).unwrap().meta().clone();

    let norn_dir = work.path().join("norn");
    fs::create_dir_all(&norn_dir).unwrap();
    let series: Vec<SeriesChunks> = data
        .iter()
        .map(|(l, ss)| SeriesChunks {
            labels: l.clone(),
            chunks: head_chunks(ss, TWO_HOURS),
        })
        .collect();
    let opts = BlockOptions::default().with_range(prom_meta.min_time, prom_meta.max_time);
    let meta = write_block(&norn_dir, series, opts).unwrap();
    let norn = norn_dir.join(&meta.ulid);
    assert_eq!(meta.stats, prom_meta.stats);

    let (pi, pc) = index_and_chunk_bytes(prom);
    let (ni, nc) = index_and_chunk_bytes(&norn);
    println!(
        "bytes/sample over {} series, {nsamples} samples (2 h at 15 s):",
        data.len()
    );
    println!(
        "  promtool 2.42: index {pi} + chunks {pc} = {} bytes, {:.3} bytes/sample ({:.3} chunks only)",
        pi + pc,
        (pi + pc) as f64 / nsamples as f64,
        pc as f64 / nsamples as f64
    );
    println!(
        "  norn:          index {ni} + chunks {nc} = {} bytes, {:.3} bytes/sample ({:.3} chunks only)",
        ni + nc,
        (ni + nc) as f64 / nsamples as f64,
        nc as f64 / nsamples as f64
    );
    // Same chunks cut at the same places, same index layout: the files are identical.
    assert_eq!(
        fs::read(norn.join("chunks/000001")).unwrap(),
        fs::read(prom.join("chunks/000001")).unwrap(),
        "chunk segment differs from promtool's"
    );
    assert_eq!(
        fs::read(norn.join("index")).unwrap(),
        fs::read(prom.join("index")).unwrap(),
        "index differs from promtool's"
    );
}
