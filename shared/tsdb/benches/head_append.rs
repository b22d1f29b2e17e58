//! Head write and read throughput over node-exporter-like series.
//!
//! `append_5000` appends batches of 1,000 series × 5 samples (the shape of a Prometheus
//! remote-write request) to existing series, with the WAL fsync policy `never` (CPU cost) and
//! `always` (group commit on this disk). `select` reads one metric's series over an hour.
//! `select_chunks_100k` reads 100,000 series of one metric as chunks, whole and as the 16
//! legs of a sharded query (`__query_shard__`), to show what sharding adds to the head's
//! side of a query.
//!
//! Run: `cargo bench -p norn-tsdb --bench head_append`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_model::{Labels, Matcher, Sample, WriteBatch};
use norn_tsdb::{AppendLimits, FsyncPolicy, Head, HeadOptions, TsdbMetrics};

/// `n` node-exporter-like label sets spread over a few metrics and 50 instances.
fn node_series(n: usize) -> Vec<Labels> {
    let metrics = [
        ("node_cpu_seconds_total", &["cpu", "mode"][..]),
        ("node_network_receive_bytes_total", &["device"][..]),
        (
            "node_filesystem_avail_bytes",
            &["device", "fstype", "mountpoint"][..],
        ),
        ("node_disk_io_time_seconds_total", &["device"][..]),
        ("node_memory_MemAvailable_bytes", &[][..]),
    ];
    (0..n)
        .map(|i| {
            let (name, extra) = metrics[i % metrics.len()];
            let mut pairs = vec![
                ("__name__".to_string(), name.to_string()),
                (
                    "instance".to_string(),
                    format!("host-{}.example.com:9100", i % 50),
                ),
                ("job".to_string(), "node".to_string()),
                ("env".to_string(), "prod".to_string()),
                ("region".to_string(), "eu-west-1".to_string()),
                ("series".to_string(), format!("{}", i / 5 / 50)),
            ];
            for (k, e) in extra.iter().enumerate() {
                pairs.push((e.to_string(), format!("{e}{}", (i + k) % 8)));
            }
            Labels::from_pairs(pairs)
        })
        .collect()
}

fn make_batch(series: &[Labels], round: i64) -> WriteBatch {
    let data: Vec<(Labels, Vec<Sample>)> = series
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let samples = (0..5)
                .map(|k| {
                    let t = (round * 5 + k) * 15_000;
                    Sample::new(t, (i as f64) * 10.0 + (t / 15_000) as f64 * 0.25)
                })
                .collect();
            (l.clone(), samples)
        })
        .collect();
    WriteBatch::from_series(&data)
}

fn bench_append(c: &mut Criterion) {
    let series = node_series(1000);
    // Pre-built batches: decoding is not what this measures.
    let batches: Vec<WriteBatch> = (0..400).map(|r| make_batch(&series, r)).collect();
    let mut group = c.benchmark_group("head");
    group.throughput(Throughput::Elements(5000));
    for (name, fsync) in [
        ("append_5000_fsync_never", FsyncPolicy::Never),
        ("append_5000_fsync_always", FsyncPolicy::Always),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = HeadOptions::new(dir.path());
        opts.fsync = fsync;
        opts.metrics = Arc::new(TsdbMetrics::unregistered());
        let (head, _) = Head::open(opts).unwrap();
        head.append(&batches[0], &AppendLimits::default()).unwrap();
        let mut round = 1usize;
        let mut offset = 0i64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // Past the pre-built batches, shift timestamps forward by rebuilding.
                    if round == batches.len() {
                        round = 0;
                        offset += batches.len() as i64;
                    }
                    let b = if offset == 0 {
                        batches[round].clone()
                    } else {
                        make_batch(&series, offset + round as i64)
                    };
                    round += 1;
                    b
                },
                |batch| black_box(head.append(&batch, &AppendLimits::default()).unwrap()),
                criterion::BatchSize::SmallInput,
            )
        });
    }

    // Two appenders on disjoint series (two remote-write clients), WAL fsync `always`, so
    // their records share group commits. 10,000 samples per iteration.
    {
        let series_b = node_series(2000)[1000..].to_vec();
        let batches_b: Vec<WriteBatch> = (0..400).map(|r| make_batch(&series_b, r)).collect();
        let dir = tempfile::tempdir().unwrap();
        let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
        let mut round = 0usize;
        let mut offset = 0i64;
        group.throughput(Throughput::Elements(10_000));
        group.bench_function("append_2x5000_two_threads_fsync_always", |b| {
            b.iter_batched(
                || {
                    if round == batches.len() {
                        round = 0;
                        offset += batches.len() as i64;
                    }
                    let pair = if offset == 0 {
                        (batches[round].clone(), batches_b[round].clone())
                    } else {
                        let r = offset + round as i64;
                        (make_batch(&series, r), make_batch(&series_b, r))
                    };
                    round += 1;
                    pair
                },
                |(a, b)| {
                    std::thread::scope(|s| {
                        s.spawn(|| head.append(&a, &AppendLimits::default()).unwrap());
                        head.append(&b, &AppendLimits::default()).unwrap();
                    })
                },
                criterion::BatchSize::SmallInput,
            )
        });
        group.throughput(Throughput::Elements(5000));
    }

    let dir = tempfile::tempdir().unwrap();
    let mut opts = HeadOptions::new(dir.path());
    opts.fsync = FsyncPolicy::Never;
    let (head, _) = Head::open(opts).unwrap();
    for b in &batches[..240] {
        head.append(b, &AppendLimits::default()).unwrap();
    }
    let m = [
        Matcher::equal("__name__", "node_cpu_seconds_total"),
        Matcher::equal("instance", "host-7.example.com:9100"),
    ];
    group.throughput(Throughput::Elements(1));
    group.bench_function("select_one_instance_1h", |b| {
        b.iter(|| black_box(head.select(0, 3_600_000, &m)))
    });
    let m = [Matcher::equal("__name__", "node_cpu_seconds_total")];
    group.bench_function("select_metric_200_series_1h", |b| {
        b.iter(|| black_box(head.select(0, 3_600_000, &m)))
    });
    group.finish();
}

/// One metric's 100,000 series over 5 minutes at 15 s, read as chunks: the whole selection
/// at once, and the same selection as the 16 legs of a sharded query one after the other.
/// The two differ by what each leg repeats: the postings lookup and keeping its shard's
/// series by label hash.
fn bench_sharded_select(c: &mut Criterion) {
    const SERIES: usize = 100_000;
    let series: Vec<Labels> = (0..SERIES)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "node_cpu_seconds_total".to_string()),
                ("cpu", format!("{}", i % 16)),
                ("env", "prod".to_string()),
                ("instance", format!("host-{:05}.example.com:9100", i / 128)),
                ("job", "node".to_string()),
                ("mode", format!("mode{}", (i / 16) % 8)),
                ("region", "eu-west-1".to_string()),
            ])
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = HeadOptions::new(dir.path());
    opts.fsync = FsyncPolicy::Never;
    opts.metrics = Arc::new(TsdbMetrics::unregistered());
    let (head, _) = Head::open(opts).unwrap();
    for round in 0..4 {
        for part in series.chunks(10_000) {
            head.append(&make_batch(part, round), &AppendLimits::default())
                .unwrap();
        }
    }
    let metric = Matcher::equal("__name__", "node_cpu_seconds_total");
    let legs: Vec<[Matcher; 2]> = (1..=16)
        .map(|i| {
            [
                metric.clone(),
                Matcher::equal("__query_shard__", format!("{i}_of_16")),
            ]
        })
        .collect();
    let mut group = c.benchmark_group("head");
    group.sample_size(20);
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("select_chunks_100k_unsharded", |b| {
        b.iter(|| black_box(head.select_chunks(0, 300_000, std::slice::from_ref(&metric))))
    });
    group.bench_function("select_chunks_100k_as_16_shards", |b| {
        b.iter(|| {
            for leg in &legs {
                black_box(head.select_chunks(0, 300_000, leg));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_sharded_select);
criterion_main!(benches);
