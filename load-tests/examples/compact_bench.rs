//! Compaction benchmark: what RF-3 ingesters ship for a day, compacted the way the compactor's
//! planner does it (replicas of each 2h range into one block, then 2h → 12h → 24h).
//!
//! ```sh
//! cargo run --release -p norn-loadtests --example compact_bench -- \
//!     --series 100000 --hours 24 --replicas 3 [--shards 0] [--dir /big/disk/tmp]
//! ```
//!
//! Prints, per stage and in total: wall time, CPU time (user + system), peak RSS of the
//! compaction (the generation's peak is reset first, Linux `clear_refs`), bytes before and
//! after, and bytes per sample of the final blocks (index and chunks, per unique sample).
//! Samples are 15 s apart; half the series are counters, half gauges with a random walk, so
//! XOR chunks compress as real ones do rather than as constants.

use std::path::{Path, PathBuf};
use std::time::Instant;

use norn_model::{Labels, Sample};
use norn_tsdb::block::{BlockMeta, BlockOptions, chunks_from_samples, write_block};
use norn_tsdb::compact::{CompactOptions, compact};
use norn_tsdb::head::SeriesChunks;

const H: i64 = 3_600_000;
const STEP: i64 = 15_000;

struct Args {
    series: usize,
    hours: i64,
    replicas: usize,
    shards: u32,
    dir: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        series: 10_000,
        hours: 24,
        replicas: 3,
        shards: 0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag}: {e}");
        match flag.as_str() {
            "--series" => a.series = value.parse().map_err(bad)?,
            "--hours" => a.hours = value.parse().map_err(bad)?,
            "--replicas" => a.replicas = value.parse().map_err(bad)?,
            "--shards" => a.shards = value.parse().map_err(bad)?,
            "--dir" => a.dir = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.hours <= 0 || a.hours % 2 != 0 {
        return Err("--hours must be a positive multiple of 2".into());
    }
    if a.series == 0 || a.replicas == 0 {
        return Err("--series and --replicas must be positive".into());
    }
    Ok(a)
}

/// The second half of the series are counters, the first half gauges.
fn is_counter(i: usize, series: usize) -> bool {
    i >= series / 2
}

/// The samples of series `i` in `[from, to)`: deterministic, realistic enough for XOR.
fn samples(i: usize, counter: bool, from: i64, to: i64) -> Vec<Sample> {
    let mut x = (i as u64 ^ (from as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // A counter keeps rising from window to window (about 4.5 a step); a gauge starts anew.
    let mut v = if counter {
        (from / STEP) as f64 * 4.5 + (i % 1000) as f64
    } else {
        (i % 1000) as f64
    };
    (0..)
        .map(|k| from + k * STEP)
        .take_while(|t| *t < to)
        .map(|t| {
            if counter {
                v += (next() % 10) as f64;
            } else {
                v = ((v + (next() % 21) as f64 - 10.0) * 100.0).round() / 100.0;
            }
            Sample::new(t, v)
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// (user + system CPU seconds, peak RSS bytes) of this process, from /proc.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (index 11 and 12 after the name); 100 Hz ticks.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, hwm * 1024)
}

fn reset_peak_rss() {
    // "5" resets VmHWM to the current RSS (Linux 4.0+); harmless when unsupported.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn stage(
    name: &str,
    groups: Vec<Vec<PathBuf>>,
    out: &Path,
    opts: &CompactOptions,
) -> Result<Vec<BlockMeta>, String> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let (cpu0, _) = usage();
    let t0 = Instant::now();
    let mut metas = Vec::new();
    for g in groups {
        let res = compact(&g, out, opts).map_err(|e| e.to_string())?;
        metas.extend(res.blocks);
    }
    let (cpu1, peak) = usage();
    println!(
        "{name:<28} wall {:>8.2}s  cpu {:>8.2}s  peak RSS {:>8.1} MiB  blocks {}",
        t0.elapsed().as_secs_f64(),
        cpu1 - cpu0,
        peak as f64 / (1 << 20) as f64,
        metas.len()
    );
    Ok(metas)
}

fn main() -> Result<(), String> {
    let a = args()?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let input = root.join("input");
    std::fs::create_dir_all(&input).map_err(|e| e.to_string())?;
    let windows = a.hours / 2;
    let per_series = (2 * H / STEP) as u64 * windows as u64;

    let t0 = Instant::now();
    let mut by_window: Vec<Vec<PathBuf>> = Vec::new();
    for w in 0..windows {
        let (from, to) = (w * 2 * H, (w + 1) * 2 * H);
        let mut dirs = Vec::new();
        for r in 0..a.replicas {
            let series = (0..a.series).map(|i| SeriesChunks {
                labels: Labels::from_pairs([
                    (
                        "__name__",
                        // Series go in label order: the gauges, then the counters.
                        if is_counter(i, a.series) {
                            "bench_total"
                        } else {
                            "bench_gauge"
                        },
                    ),
                    ("instance", &format!("host-{:06}", i / 10)),
                    ("shard", &format!("{}", i % 10)),
                ]),
                chunks: chunks_from_samples(&samples(i, is_counter(i, a.series), from, to), 120)
                    .unwrap_or_default(),
            });
            let opts =
                BlockOptions::for_tenant("bench", "receive", [("replica", &*format!("r{r}"))])
                    .with_range(from, to);
            let meta = write_block(&input, series, opts).map_err(|e| e.to_string())?;
            dirs.push(input.join(meta.ulid));
        }
        by_window.push(dirs);
    }
    let before = dir_bytes(&input);
    let unique = per_series * a.series as u64;
    println!(
        "generated {} blocks ({} replicas x {} windows, {} series, {} unique samples) in {:.1}s: {:.1} MiB, {:.3} bytes/sample incl. replicas",
        windows as usize * a.replicas,
        a.replicas,
        windows,
        a.series,
        unique,
        t0.elapsed().as_secs_f64(),
        before as f64 / (1 << 20) as f64,
        before as f64 / (unique * a.replicas as u64) as f64
    );

    let opts = CompactOptions {
        shards: a.shards,
        ..CompactOptions::default()
    };
    reset_peak_rss();
    let (cpu0, _) = usage();
    let total = Instant::now();
    let out2h = root.join("2h");
    let m2 = stage("replicas -> 2h", by_window, &out2h, &opts)?;
    // With shards, each later stage merges one shard's blocks; without, all of a window's.
    let group = |metas: &[BlockMeta], dir: &Path, span: i64| -> Vec<Vec<PathBuf>> {
        let mut groups: std::collections::BTreeMap<(i64, String), Vec<PathBuf>> =
            Default::default();
        for m in metas {
            let shard = m
                .thanos
                .as_ref()
                .and_then(|t| t.labels.get(norn_tsdb::compact::SHARD_ID_LABEL).cloned())
                .unwrap_or_default();
            groups
                .entry((m.min_time.div_euclid(span), shard))
                .or_default()
                .push(dir.join(&m.ulid));
        }
        groups.into_values().collect()
    };
    let merge_opts = CompactOptions {
        shards: 1,
        ..CompactOptions::default()
    };
    let mut final_dir = out2h.clone();
    let mut finals = m2.clone();
    if a.hours >= 12 {
        let out12 = root.join("12h");
        finals = stage("2h -> 12h", group(&m2, &out2h, 12 * H), &out12, &merge_opts)?;
        final_dir = out12.clone();
        if a.hours >= 24 {
            let out24 = root.join("24h");
            finals = stage(
                "12h -> 24h",
                group(&finals, &out12, 24 * H),
                &out24,
                &merge_opts,
            )?;
            final_dir = out24;
        }
    }
    let (cpu1, peak) = usage();
    let after = dir_bytes(&final_dir);
    let samples_out: u64 = finals.iter().map(|m| m.stats.num_samples).sum();
    println!(
        "total                        wall {:>8.2}s  cpu {:>8.2}s  peak RSS {:>8.1} MiB",
        total.elapsed().as_secs_f64(),
        cpu1 - cpu0,
        peak as f64 / (1 << 20) as f64
    );
    println!(
        "bytes: {:.1} MiB before (all replicas), {:.1} MiB after; {:.3} bytes/sample of the final blocks; samples out {} (want {})",
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        after as f64 / samples_out.max(1) as f64,
        samples_out,
        unique
    );
    if samples_out != unique {
        return Err(format!(
            "lost or doubled samples: {samples_out} != {unique}"
        ));
    }
    Ok(())
}
