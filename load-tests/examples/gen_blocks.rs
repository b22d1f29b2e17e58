//! Writes Prometheus-format blocks of the load generator's series straight to disk, for the
//! store-gateway and compactor benchmarks (`load-tests/bench store-gateway|compactor`).
//!
//! Pushing 4 billion samples through remote write and waiting for the ingesters to cut blocks
//! would take hours on the benchmark machine, and `promtool tsdb create-blocks-from openmetrics`
//! is slower still. This writes the blocks with norn-tsdb's block writer (the one the ingesters
//! and the compactor use, whose output is byte-identical to Prometheus 2.42's for the same
//! samples, see docs/benchmarks.md) directly into a filesystem bucket's tenant directory, as an
//! ingester's shipper would leave them: `<out>/<ULID>/{meta.json,index,chunks/000001}`.
//!
//! ```sh
//! cargo run --release -p norn-loadtests --example gen_blocks -- \
//!     --out /work/benchdata/bucket/anonymous --series 100000 --hours 168 \
//!     --end 1796428800 [--replicas 1] [--range 2h] [--tenant anonymous] [--seed 1] [--threads 2] \
//!     [--link-replicas true]
//! ```
//!
//! The series and values are exactly those of `norn-loadgen write --seed <seed> --interval 15s`
//! (node_exporter / kube-state-metrics-like, 100 series per target, no churn), with interval 0 at
//! `end - hours`, so the query mix of `norn-loadgen query` finds what it expects. Every replica
//! of a range holds the same samples, as RF-3 ingesters ship them. ULIDs are stamped with the
//! block's end time (a cut happens after the range closes), so age-based checks (the compactor's
//! first-level wait, the store-gateway's ignore-blocks-within) see old blocks as old. Prints one
//! JSON line: blocks, samples, bytes, elapsed seconds.
//!
//! `--link-replicas true` writes each range once and gives the other replicas hard links to its
//! `index` and `chunks/` under their own ULID and `meta.json`. The replicas' files would be
//! byte-identical anyway (same samples, same writer), so a reader sees exactly what independent
//! writes would have left; only the disk holds one copy. That is what lets a 1M-series RF-3
//! day (about 65 GB written out three times) fit on the benchmark machine. `bytes` in the JSON
//! line still counts every replica's files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use norn_loadtests::series::{Generator, GeneratorConfig, splitmix64};
use norn_model::{Labels, Sample};
use norn_tsdb::block::{BlockMeta, BlockOptions, BlockWriter, Ulid, chunks_from_samples};

const STEP_MS: i64 = 15_000;

struct Args {
    out: PathBuf,
    tenant: String,
    series: usize,
    hours: i64,
    end_s: i64,
    replicas: usize,
    range_ms: i64,
    seed: u64,
    threads: usize,
    link_replicas: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        out: PathBuf::new(),
        tenant: "anonymous".into(),
        series: 1_000,
        hours: 24,
        end_s: 0,
        replicas: 1,
        range_ms: 2 * 3_600_000,
        seed: 1,
        threads: 2,
        link_replicas: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let int = |v: &str| v.parse::<i64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(value),
            "--tenant" => a.tenant = value,
            "--series" => a.series = int(&value)? as usize,
            "--hours" => a.hours = int(&value)?,
            "--end" => a.end_s = int(&value)?,
            "--replicas" => a.replicas = int(&value)? as usize,
            "--range" => {
                a.range_ms = norn_model::parse_duration(&value)
                    .map_err(|e| format!("--range: {e}"))?
                    .as_millis() as i64
            }
            "--seed" => a.seed = int(&value)? as u64,
            "--threads" => a.threads = int(&value)?.max(1) as usize,
            "--link-replicas" => {
                a.link_replicas = value
                    .parse()
                    .map_err(|_| format!("{flag}: want true or false"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.out.as_os_str().is_empty() {
        return Err("--out is required".into());
    }
    if a.series == 0 || a.replicas == 0 || a.hours <= 0 {
        return Err("--series, --replicas and --hours must be positive".into());
    }
    if a.range_ms < STEP_MS || a.range_ms % STEP_MS != 0 {
        return Err("--range must be a multiple of 15s".into());
    }
    let span = a.hours * 3_600_000;
    if span % a.range_ms != 0 {
        return Err("--hours must be a whole number of ranges".into());
    }
    if a.end_s <= 0 || (a.end_s * 1000) % a.range_ms != 0 {
        return Err("--end (unix seconds) must be given and aligned to the range".into());
    }
    Ok(a)
}

fn main() -> Result<(), String> {
    let a = parse_args()?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let end_ms = a.end_s * 1000;
    let start_ms = end_ms - a.hours * 3_600_000;
    let generator = Generator::new(GeneratorConfig {
        series: a.series,
        churn_per_interval: 0,
        seed: a.seed,
        start_ms,
        interval_ms: STEP_MS,
    });
    // A block's series must come in label order: sort the slots once.
    let mut series: Vec<(Labels, usize)> = (0..a.series)
        .map(|slot| (Labels::from_pairs(generator.labels(slot, 0)), slot))
        .collect();
    series.sort();

    let ranges = (a.hours * 3_600_000 / a.range_ms) as usize;
    // With linked replicas only replica 0 is written; the others follow it as links.
    let written = if a.link_replicas { 1 } else { a.replicas };
    let jobs: Vec<(usize, usize)> = (0..ranges)
        .flat_map(|r| (0..written).map(move |rep| (r, rep)))
        .collect();
    let next = AtomicUsize::new(0);
    let totals = Mutex::new((0u64, 0u64, Vec::<String>::new()));
    let t0 = Instant::now();
    let per_block = (a.range_ms / STEP_MS) as u64;
    std::thread::scope(|s| -> Result<(), String> {
        let workers: Vec<_> = (0..a.threads).map(|_| {
            s.spawn(|| -> Result<(), String> {
                let mut buf = Vec::with_capacity(per_block as usize);
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(r, rep)) = jobs.get(j) else {
                        return Ok(());
                    };
                    let (from, to) = (
                        start_ms + r as i64 * a.range_ms,
                        start_ms + (r as i64 + 1) * a.range_ms,
                    );
                    // What an ingester's shipper writes: Thanos labels {__org_id__: tenant}.
                    let mut opts = BlockOptions::for_tenant(&a.tenant, "receive", [])
                        .with_range(from, to);
                    let ulid_of = |rep: usize| {
                        Ulid::from_parts(
                            to as u64,
                            u128::from(splitmix64((r as u64) << 8 | rep as u64)),
                        )
                    };
                    opts.ulid = Some(ulid_of(rep));
                    let mut w = BlockWriter::create(&a.out, opts).map_err(|e| e.to_string())?;
                    let k0 = ((from - start_ms) / STEP_MS) as u64;
                    for (labels, slot) in &series {
                        buf.clear();
                        buf.extend((0..per_block).map(|i| {
                            let k = k0 + i;
                            Sample::new(generator.timestamp_ms(k), generator.value(*slot, 0, k))
                        }));
                        let chunks = chunks_from_samples(&buf, 120).map_err(|e| e.to_string())?;
                        w.add_series(labels, &chunks).map_err(|e| e.to_string())?;
                    }
                    let meta = w.finish().map_err(|e| e.to_string())?;
                    let mut blocks = vec![meta.clone()];
                    if a.link_replicas {
                        for other in 1..a.replicas {
                            blocks.push(link_replica(&a.out, &meta, &ulid_of(other).to_string())?);
                        }
                    }
                    for meta in blocks {
                        let bytes = dir_bytes(&a.out.join(&meta.ulid));
                        let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                        t.0 += meta.stats.num_samples;
                        t.1 += bytes;
                        t.2.push(meta.ulid.clone());
                        eprintln!(
                            "gen_blocks: {}/{} {} [{from}, {to}): {} samples, {bytes} bytes, {:.0} s",
                            t.2.len(),
                            ranges * a.replicas,
                            meta.ulid,
                            meta.stats.num_samples,
                            t0.elapsed().as_secs_f64()
                        );
                    }
                }
            })
        }).collect();
        for w in workers {
            w.join()
                .map_err(|_| "a writer thread panicked".to_string())??;
        }
        Ok(())
    })?;
    let t = totals.into_inner().unwrap_or_else(|e| e.into_inner());
    if t.2.len() != ranges * a.replicas {
        return Err(format!(
            "only {} of {} blocks written",
            t.2.len(),
            ranges * a.replicas
        ));
    }
    println!(
        "{{\"blocks\":{},\"samples\":{},\"bytes\":{},\"start_ms\":{start_ms},\"end_ms\":{end_ms},\"elapsed_seconds\":{:.1}}}",
        t.2.len(),
        t.0,
        t.1,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Another replica of the block `meta` under `ulid`: its `index` and `chunks/` hard-linked, its
/// own `meta.json`; built in a temporary directory and renamed into place, as a writer would.
fn link_replica(out: &Path, meta: &BlockMeta, ulid: &str) -> Result<BlockMeta, String> {
    let err = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    let src = out.join(&meta.ulid);
    let tmp = out.join(format!("{ulid}.tmp-for-link"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("chunks")).map_err(err(&tmp))?;
    // Every file but meta.json (index, tombstones if any, chunks/<segments>).
    for dir in [PathBuf::new(), PathBuf::from("chunks")] {
        for entry in std::fs::read_dir(src.join(&dir)).map_err(err(&src))? {
            let entry = entry.map_err(err(&src))?;
            let name = dir.join(entry.file_name());
            if entry.file_type().map_err(err(&entry.path()))?.is_file()
                && name != Path::new("meta.json")
            {
                std::fs::hard_link(entry.path(), tmp.join(&name)).map_err(err(&entry.path()))?;
            }
        }
    }
    let mut copy = meta.clone();
    copy.ulid = ulid.to_string();
    copy.compaction.sources = vec![ulid.to_string()];
    let json = copy.to_json().map_err(|e| e.to_string())?;
    std::fs::write(tmp.join("meta.json"), json).map_err(err(&tmp))?;
    std::fs::rename(&tmp, out.join(ulid)).map_err(err(&tmp))?;
    Ok(copy)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
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
