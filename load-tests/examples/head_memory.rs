//! Heap breakdown of a head loaded with the load generator's series, without HTTP in between:
//! where the resident bytes per active series go, plus the append rate (first round, which
//! creates the series, apart from the later ones) and how fast the WAL replays. The one
//! head-memory example (it replaced `norn-tsdb`'s `head_rss`).
//!
//! `cargo run --release -p norn-loadtests --example head_memory -- [series] [samples_per_series]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use norn_loadtests::series::{Generator, GeneratorConfig};
use norn_model::{Labels, Sample, WriteBatch};
use norn_tsdb::{AppendLimits, Head, HeadOptions};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let series: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_series: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(240);
    let interval_ms = 15_000;
    let end_ms = args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_796_165_925_000i64);
    let start_ms = end_ms - per_series as i64 * interval_ms;
    let generator = Generator::new(GeneratorConfig {
        series,
        churn_per_interval: 0,
        seed: 1,
        start_ms,
        interval_ms,
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = HeadOptions::new(dir.path());
    opts.fsync = norn_tsdb::FsyncPolicy::Never;
    let (head, _) = Head::open(opts.clone()).expect("open head");
    let labels: Vec<Labels> = (0..series)
        .map(|s| Labels::from_pairs(generator.labels(s, 0)))
        .collect();
    let rss0 = status("VmRSS:");
    let live0 = LIVE.load(Ordering::Relaxed);
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let limits = AppendLimits::default();
    // Time spent inside `append` only (batch building excluded), for the first round (which
    // creates the series) and for the later ones (existing series).
    let (mut create_time, mut create_samples) = (std::time::Duration::ZERO, 0usize);
    let (mut steady_time, mut steady_samples) = (std::time::Duration::ZERO, 0usize);
    let mut k = 0u64;
    while k < per_series {
        let n = 5.min(per_series - k);
        for chunk in (0..series).collect::<Vec<_>>().chunks(1000) {
            let batch: Vec<(Labels, Vec<Sample>)> = chunk
                .iter()
                .map(|&s| {
                    let samples = (k..k + n)
                        .map(|i| Sample::new(generator.timestamp_ms(i), generator.value(s, 0, i)))
                        .collect();
                    (labels[s].clone(), samples)
                })
                .collect();
            let batch = WriteBatch::from_series(&batch);
            let t = Instant::now();
            let appended = head.append(&batch, &limits).expect("append").appended;
            if k == 0 {
                create_time += t.elapsed();
                create_samples += appended;
            } else {
                steady_time += t.elapsed();
                steady_samples += appended;
            }
        }
        k += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss1 = status("VmRSS:");
    let live = LIVE.load(Ordering::Relaxed) - live0;
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let m = head.memory();
    let per = |b: f64| b / series as f64;
    println!("series {series}, samples/series {per_series}, load {secs:.1} s");
    println!(
        "append only: first round (creates series) {:.0} samples/s, later rounds {:.0} samples/s",
        create_samples as f64 / create_time.as_secs_f64().max(1e-9),
        steady_samples as f64 / steady_time.as_secs_f64().max(1e-9)
    );
    println!(
        "RSS delta {:.0} B/series (RssAnon {} MB, RssFile {} MB)",
        per((rss1 - rss0) as f64),
        status("RssAnon:") >> 20,
        status("RssFile:") >> 20
    );
    println!(
        "live heap {:.0} B/series in {:.2} allocations/series",
        per(live as f64),
        allocs as f64 / series as f64
    );
    println!(
        "head.memory(): chunks {:.0}, postings {:.0}, symbols {:.0} ({} symbols) B/series",
        per(m.chunk_bytes as f64),
        per(m.postings_bytes as f64),
        per(m.symbol_bytes as f64),
        m.symbols
    );
    let mut hist = std::collections::BTreeMap::new();
    for s in head.series_chunks(i64::MIN, i64::MAX).iter().take(100_000) {
        if let Some(c) = s.chunks.last() {
            *hist.entry(c.data.len() / 64 * 64).or_insert(0usize) += 1;
        }
    }
    println!("open-chunk byte sizes (first 100k series, 64-byte buckets): {hist:?}");
    let du = |d: &str| -> u64 {
        std::fs::read_dir(dir.path().join(d))
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    println!(
        "on disk: chunks_head {} MB, head_spill {} MB in {} files",
        du("chunks_head") >> 20,
        du("head_spill") >> 20,
        m.spill_files
    );
    // Replay speed: reopen the same directory.
    drop(head);
    let t = Instant::now();
    let (head, stats) = Head::open(opts).expect("reopen head");
    println!(
        "replay: {} series, {} samples, {} WAL records in {:.2} s ({:.0} samples/s)",
        stats.series,
        stats.samples,
        stats.wal.records,
        t.elapsed().as_secs_f64(),
        stats.samples as f64 / t.elapsed().as_secs_f64()
    );
    assert_eq!(head.num_series(), series);
    // Flush as the ingester does: every range into a block, then truncation.
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).expect("blocks dir");
    let mut removed = 0;
    while let Some((mint, maxt)) = head.first_flush_range() {
        let out = head
            .cut_block(
                &blocks,
                mint,
                maxt,
                norn_tsdb::block::BlockOptions::for_tenant("t", "head_memory", []),
                |_| Ok(()),
            )
            .expect("cut block");
        removed += out.truncated.series_removed;
    }
    println!(
        "after flushing everything: {} series removed, head_spill {} MB in {} files",
        removed,
        du("head_spill") >> 20,
        head.memory().spill_files
    );
}
