//! Remote-write decode throughput: snappy + protobuf into a WriteBatch, 1,000 node-exporter-like
//! series × 5 samples per request (the design's reference workload), in 1.0 and in 2.0 (the
//! same data interned into a symbol table; once without metadata, once with the type and help
//! on every series, as Prometheus 3 sends it).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_proto::prometheus as pb;
use norn_proto::prometheus_write_v2 as v2;
use prost::Message;

fn labels(i: usize) -> [(&'static str, String); 5] {
    [
        ("__name__", "node_cpu_seconds_total".to_string()),
        ("cpu", (i % 16).to_string()),
        ("instance", format!("host-{}.example.com:9100", i / 64)),
        ("job", "node".to_string()),
        (
            "mode",
            ["idle", "user", "system", "iowait"][i % 4].to_string(),
        ),
    ]
}

fn request_v2(with_metadata: bool) -> Vec<u8> {
    let mut symbols = vec![String::new()];
    let mut index = std::collections::HashMap::new();
    let mut intern = |s: &str| -> u32 {
        *index.entry(s.to_string()).or_insert_with(|| {
            symbols.push(s.to_string());
            (symbols.len() - 1) as u32
        })
    };
    let help = intern("Seconds the CPUs spent in each mode.");
    let mut ts = Vec::new();
    for i in 0..1000 {
        ts.push(v2::TimeSeries {
            labels_refs: labels(i)
                .iter()
                .flat_map(|(n, v)| [intern(n), intern(v)])
                .collect(),
            samples: (0..5)
                .map(|j| v2::Sample {
                    timestamp: 1_700_000_000_000 + j * 15_000,
                    value: (i as i64 * j) as f64,
                    start_timestamp: 0,
                })
                .collect(),
            metadata: with_metadata.then_some(v2::Metadata {
                r#type: v2::metadata::MetricType::Counter as i32,
                help_ref: help,
                unit_ref: 0,
            }),
            ..Default::default()
        });
    }
    let raw = v2::Request {
        symbols,
        timeseries: ts,
    }
    .encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap()
}

fn request() -> Vec<u8> {
    let mut ts = Vec::new();
    for i in 0..1000 {
        let labels = labels(i);
        ts.push(pb::TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| pb::Label {
                    name: n.to_string(),
                    value: v.clone(),
                })
                .collect(),
            samples: (0..5)
                .map(|j| pb::Sample {
                    timestamp: 1_700_000_000_000 + j * 15_000,
                    value: (i as i64 * j) as f64,
                })
                .collect(),
            ..Default::default()
        });
    }
    let raw = pb::WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
    .encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap()
}

fn bench(c: &mut Criterion) {
    let body = request();
    println!(
        "v1 snappy+protobuf 1000x5: {} bytes compressed, {} uncompressed",
        body.len(),
        snap::raw::decompress_len(&body).unwrap()
    );
    let mut g = c.benchmark_group("remote_write_decode");
    g.throughput(Throughput::Elements(5000));
    g.bench_function("snappy+protobuf 1000x5", |b| {
        b.iter(|| {
            let raw = norn_proto::decompress_snappy(&body, 100 << 20).unwrap();
            norn_proto::decode_write_request(Bytes::from(raw)).unwrap()
        })
    });
    for (name, with_metadata) in [
        ("v2 snappy+protobuf 1000x5", false),
        ("v2 snappy+protobuf 1000x5 +metadata", true),
    ] {
        let body = request_v2(with_metadata);
        let raw_len = snap::raw::decompress_len(&body).unwrap();
        println!(
            "{name}: {} bytes compressed, {raw_len} uncompressed",
            body.len()
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                let raw = norn_proto::decompress_snappy(&body, 100 << 20).unwrap();
                norn_proto::decode_write_request_v2(Bytes::from(raw)).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
