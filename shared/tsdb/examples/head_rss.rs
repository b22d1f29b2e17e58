//! Measures the head's resident memory per series.
//!
//! Creates N node-exporter-like series (default 1,000,000) with S samples each (default 8,
//! appended in remote-write-sized batches of 5,000 samples, WAL fsync `never`), then prints
//! the RSS growth per series and the head's own accounting.
//!
//! Run: `cargo run --release -p norn-tsdb --example head_rss -- 1000000 8`.

use std::time::Instant;

use norn_model::{Labels, Sample, WriteBatch};
use norn_tsdb::{AppendLimits, FsyncPolicy, Head, HeadOptions};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn labels(i: usize) -> Labels {
    let metrics = [
        "node_cpu_seconds_total",
        "node_network_receive_bytes_total",
        "node_filesystem_avail_bytes",
        "node_disk_io_time_seconds_total",
    ];
    Labels::from_pairs([
        (
            "__name__".to_string(),
            metrics[i % metrics.len()].to_string(),
        ),
        (
            "instance".to_string(),
            format!("host-{}.example.com:9100", i / 400),
        ),
        ("job".to_string(), "node".to_string()),
        ("env".to_string(), "prod".to_string()),
        ("cpu".to_string(), format!("{}", (i / 4) % 50)),
        (
            "mode".to_string(),
            ["user", "system"][(i / 200) % 2].to_string(),
        ),
    ])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let samples: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = HeadOptions::new(dir.path());
    opts.fsync = FsyncPolicy::Never;
    let (head, _) = Head::open(opts.clone()).expect("open head");
    let before = rss_bytes();
    let start = Instant::now();
    let per_batch = 1000usize;
    let mut total = 0usize;
    // Time spent inside `append` only (batch building excluded), for the first round (which
    // creates the series) and for the later ones (existing series).
    let mut create_time = std::time::Duration::ZERO;
    let mut create_samples = 0usize;
    let mut steady_time = std::time::Duration::ZERO;
    let mut steady_samples = 0usize;
    for round in 0..(samples + 4) / 5 {
        for first in (0..n).step_by(per_batch) {
            let data: Vec<(Labels, Vec<Sample>)> = (first..(first + per_batch).min(n))
                .map(|i| {
                    let l = labels(i);
                    let k = 5.min(samples - round * 5);
                    (
                        l,
                        (0..k)
                            .map(|j| Sample::new((round * 5 + j) * 15_000, (i + j as usize) as f64))
                            .collect(),
                    )
                })
                .collect();
            let batch = WriteBatch::from_series(&data);
            let t0 = Instant::now();
            let appended = head
                .append(&batch, &AppendLimits::default())
                .expect("append")
                .appended;
            let dt = t0.elapsed();
            if round == 0 {
                create_time += dt;
                create_samples += appended;
            } else {
                steady_time += dt;
                steady_samples += appended;
            }
            total += appended;
        }
    }
    let elapsed = start.elapsed();
    let after = rss_bytes();
    println!(
        "append only: first round (creates series) {:.0} samples/s, later rounds {:.0} samples/s",
        create_samples as f64 / create_time.as_secs_f64(),
        steady_samples as f64 / steady_time.as_secs_f64().max(1e-9)
    );
    let mem = head.memory();
    println!("series: {}", head.num_series());
    println!(
        "samples appended: {total} in {:.2}s ({:.0} samples/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "RSS growth: {} bytes = {:.0} bytes/series (includes the load generator's freed-but-retained heap)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );
    println!("head accounting: {mem:?}");
    println!(
        "per series: symbols {:.0} B, postings {:.0} B, chunks {:.0} B",
        mem.symbol_bytes as f64 / n as f64,
        mem.postings_bytes as f64 / n as f64,
        mem.chunk_bytes as f64 / n as f64
    );

    // Replay speed: reopen the same directory.
    drop(head);
    let t0 = Instant::now();
    let (head, stats) = Head::open(opts).expect("reopen head");
    println!(
        "replay: {} series, {} samples, {} WAL records in {:.2}s ({:.0} samples/s)",
        stats.series,
        stats.samples,
        stats.wal.records,
        t0.elapsed().as_secs_f64(),
        stats.samples as f64 / t0.elapsed().as_secs_f64()
    );
    assert_eq!(head.num_series(), n);
}
