//! Read cost of a head's recent data: the hottest read path (dashboards read the last hour,
//! and the last minutes of it live in open chunks whose settled bytes are in `head_spill/`).
//! Builds a head of node-exporter-like series, one sample every 15 s for an hour, then selects
//! every series over the last 5 minutes and over the whole hour, and prints the median wall
//! time and the median CPU time of this thread (user + system: a system call per chunk shows
//! there, and CPU time holds up better than wall time on a busy machine). Each range is read
//! twice: decoded to samples (`select`, what PromQL reads) and as the stored chunks
//! (`select_chunks`, what the ingester's query stream ships).
//!
//! ```sh
//! cargo run --release -p norn-tsdb --example head_select -- [series] [repeats]
//! ```

use std::time::{Duration, Instant};

use norn_model::{Labels, Matcher, Sample, WriteBatch};
use norn_tsdb::{AppendLimits, FsyncPolicy, Head, HeadOptions};

const STEP_MS: i64 = 15_000;
const HOUR_MS: i64 = 3_600_000;

fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct passed.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let labels: Vec<Labels> = (0..n)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "node_cpu_seconds_total".to_string()),
                ("cpu", (i % 8).to_string()),
                ("instance", format!("host-{:05}:9100", i / 8)),
                ("job", "node".to_string()),
                (
                    "mode",
                    ["idle", "user", "system", "iowait"][i % 4].to_string(),
                ),
                ("zone", format!("zone-{}", i % 3)),
            ])
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HeadOptions::new(dir.path());
    opts.fsync = FsyncPolicy::Never;
    let (head, _) = Head::open(opts).unwrap();
    let end = 1_796_165_805_000i64;
    let start = end - HOUR_MS;
    let mut t = start;
    while t <= end {
        let data: Vec<(Labels, Vec<Sample>)> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let v = (t / STEP_MS) as f64 * (1.0 + (i % 7) as f64 * 0.37);
                (l.clone(), vec![Sample::new(t, v.floor())])
            })
            .collect();
        for chunk in data.chunks(1000) {
            head.append(&WriteBatch::from_series(chunk), &AppendLimits::default())
                .unwrap();
        }
        t += STEP_MS;
    }
    let m = [Matcher::equal("job", "node")];
    for (name, mint) in [("last_5m", end - 300_000), ("last_1h", start)] {
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        let mut samples = 0;
        for _ in 0..reps {
            let (w0, c0) = (Instant::now(), thread_cpu());
            let s = head.select(mint, end, &m);
            cpu.push(thread_cpu() - c0);
            wall.push(w0.elapsed());
            samples = s.iter().map(|s| s.samples.len()).sum::<usize>();
        }
        println!(
            "{name}: select, {n} series, {samples} samples: median wall {:.2} ms, median thread CPU {:.2} ms",
            median(wall).as_secs_f64() * 1e3,
            median(cpu).as_secs_f64() * 1e3,
        );
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        let (mut bytes, mut shipped) = (0, Vec::new());
        for _ in 0..reps {
            let (w0, c0) = (Instant::now(), thread_cpu());
            let s = head.select_chunks(mint, end, &m);
            cpu.push(thread_cpu() - c0);
            wall.push(w0.elapsed());
            bytes = s
                .iter()
                .flat_map(|s| &s.chunks)
                .map(|c| c.data.len())
                .sum::<usize>();
            shipped = s;
        }
        println!(
            "{name}: select_chunks, {bytes} chunk bytes: median wall {:.2} ms, median thread CPU {:.2} ms",
            median(wall).as_secs_f64() * 1e3,
            median(cpu).as_secs_f64() * 1e3,
        );
        // The chunks, those mostly outside the range cut to it (fewer bytes on the wire; not
        // what the ingester's query stream does, for what it costs here).
        let mut cpu = Vec::new();
        for _ in 0..reps {
            let c0 = thread_cpu();
            let mut got = head.select_chunks(mint, end, &m);
            for s in &mut got {
                s.trim_sparse(mint, end).unwrap();
            }
            cpu.push(thread_cpu() - c0);
            // The answer is dropped outside the measured span, as in the loops above.
            bytes = got
                .iter()
                .flat_map(|s| &s.chunks)
                .map(|c| c.data.len())
                .sum::<usize>();
        }
        println!(
            "{name}: select_chunks + trim_sparse, {bytes} chunk bytes: median thread CPU {:.2} ms",
            median(cpu).as_secs_f64() * 1e3,
        );
        // What the reader at the other end (the querier) spends decoding and trimming the
        // chunks the query stream ships (uncut).
        let mut cpu = Vec::new();
        for _ in 0..reps {
            let input = shipped.clone();
            let c0 = thread_cpu();
            let s = norn_model::query::decode_chunk_series(input, mint, end).unwrap();
            cpu.push(thread_cpu() - c0);
            assert_eq!(s.iter().map(|s| s.samples.len()).sum::<usize>(), samples);
        }
        println!(
            "{name}: decoding those chunks (reader side): median thread CPU {:.2} ms",
            median(cpu).as_secs_f64() * 1e3,
        );
    }
}
