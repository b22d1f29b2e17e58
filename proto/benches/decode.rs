//! Remote-write decode throughput: snappy + protobuf into a WriteBatch, 1,000 node-exporter-like
//! series × 5 samples per request (the design's reference workload).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_proto::prometheus as pb;
use prost::Message;

fn request() -> Vec<u8> {
    let mut ts = Vec::new();
    for i in 0..1000 {
        let labels = [
            ("__name__", "node_cpu_seconds_total".to_string()),
            ("cpu", (i % 16).to_string()),
            ("instance", format!("host-{}.example.com:9100", i / 64)),
            ("job", "node".to_string()),
            (
                "mode",
                ["idle", "user", "system", "iowait"][i % 4].to_string(),
            ),
        ];
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
    let mut g = c.benchmark_group("remote_write_decode");
    g.throughput(Throughput::Elements(5000));
    g.bench_function("snappy+protobuf 1000x5", |b| {
        b.iter(|| {
            let raw = norn_proto::decompress_snappy(&body, 100 << 20).unwrap();
            norn_proto::decode_write_request(Bytes::from(raw)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
