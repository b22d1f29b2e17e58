//! The frontend's cost of a split range query's answer: parsing each leg's JSON, merging the
//! legs by series and writing the merged answer, as `run_range` does for every query it splits
//! or caches.
//!
//! The workload is a 7-day `query_range` at a 60 s step split by day: 7 legs of 100 series of
//! 1,440 points each (about 25 MB of JSON in all), with node-exporter-like labels and values
//! of a dozen significant digits.
//!
//! Run: `cargo bench -p norn-query-frontend --bench merge_legs`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_query_frontend::response::{merge, parse_matrix, write_matrix};

const LEGS: usize = 7;
const SERIES: usize = 100;
const POINTS_PER_LEG: usize = 1_440;

/// One leg's answer, as a querier writes it.
fn leg_body(leg: usize) -> String {
    let mut b = String::from(r#"{"status":"success","data":{"resultType":"matrix","result":["#);
    for s in 0..SERIES {
        if s > 0 {
            b.push(',');
        }
        b.push_str(&format!(
            r#"{{"metric":{{"__name__":"node_cpu_seconds_total","cpu":"{}","instance":"host-{s}.example.com:9100","job":"node","mode":"idle"}},"values":["#,
            s % 8
        ));
        for p in 0..POINTS_PER_LEG {
            if p > 0 {
                b.push(',');
            }
            let t = 1_700_000_000 + ((leg * POINTS_PER_LEG + p) * 60) as u64;
            let v = (s * 31 + p * 7) as f64 * 0.013_7;
            b.push_str(&format!(r#"[{t},"{v}"]"#));
        }
        b.push_str("]}");
    }
    b.push_str("]}}");
    b
}

fn merge_legs(c: &mut Criterion) {
    let bodies: Vec<String> = (0..LEGS).map(leg_body).collect();
    let bytes: usize = bodies.iter().map(String::len).sum();
    let mut g = c.benchmark_group("merge_legs");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse_merge_write_7x100x1440", |b| {
        b.iter(|| {
            let parts: Vec<_> = bodies
                .iter()
                .map(|body| parse_matrix(body.as_bytes()).expect("a leg parses"))
                .collect();
            black_box(write_matrix(&merge(parts)).len())
        })
    });
    g.finish();
}

criterion_group!(benches, merge_legs);
criterion_main!(benches);
