//! Writes small valid seeds for every fuzz target into the directory given as the first
//! argument (normally `fuzz/corpus`). Deterministic apart from block ids and the head's
//! file layout; re-running it replaces the seeds it wrote.

use std::fs;
use std::path::{Path, PathBuf};

use norn_model::{Labels, Sample, WriteBatch};
use norn_proto::ingester::v1 as pb;
use norn_proto::prometheus_write_v2 as v2;
use norn_tsdb::block::{BlockOptions, Ulid, chunks_from_samples, write_block};
use norn_tsdb::{AppendLimits, FsyncPolicy, Head, HeadOptions, SeriesChunks};
use prost::Message;

const T0: i64 = 1_700_000_000_000;

fn series() -> Vec<(Labels, Vec<Sample>)> {
    let mut out = Vec::new();
    for (i, (name, job)) in [("up", "api"), ("up", "db"), ("http_requests_total", "api")]
        .into_iter()
        .enumerate()
    {
        let labels = Labels::from_pairs([("__name__", name), ("job", job), ("instance", "a:9090")]);
        let samples = (0..30)
            .map(|k| {
                Sample::new(
                    T0 + k * 15_000 + i as i64,
                    (k * (i as i64 + 1)) as f64 + 0.5,
                )
            })
            .collect();
        out.push((labels, samples));
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

fn v2_request(series: &[(Labels, Vec<Sample>)]) -> Vec<u8> {
    let mut symbols = vec![String::new()];
    let mut sym = |s: &str| -> u32 {
        if let Some(i) = symbols.iter().position(|x| x == s) {
            return i as u32;
        }
        symbols.push(s.to_string());
        (symbols.len() - 1) as u32
    };
    let mut timeseries = Vec::new();
    for (labels, samples) in series {
        let mut refs = Vec::new();
        for l in labels.iter() {
            refs.push(sym(&l.name));
            refs.push(sym(&l.value));
        }
        timeseries.push(v2::TimeSeries {
            labels_refs: refs,
            samples: samples
                .iter()
                .map(|s| v2::Sample {
                    value: s.v,
                    timestamp: s.t,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    v2::Request {
        symbols,
        timeseries,
        ..Default::default()
    }
    .encode_to_vec()
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: seedgen <corpus dir>"),
    );
    let all = series();
    let small = &all[..1];

    // remote_write_decode: snappy bodies as sent, and the raw messages.
    let d = out.join("remote_write_decode");
    let v1 = norn_proto::encode_write_request(&WriteBatch::from_series(&all));
    let v1_small = norn_proto::encode_write_request(&WriteBatch::from_series(small));
    let v2b = v2_request(&all);
    write(&d, "v1-snappy", &snappy(&v1));
    write(&d, "v1-raw-small", &v1_small);
    write(&d, "v2-snappy", &snappy(&v2b));
    write(&d, "v2-raw-small", &v2_request(small));

    // promql_eval: a few queries over the target's fixed store.
    let d = out.join("promql_eval");
    for (i, q) in [
        "up",
        "sum by (job) (rate(http_requests_total[2m]))",
        "histogram_quantile(0.9, sum by (le) (rate(temperature[5m])))",
        "max_over_time(up{instance=~\"a|b\"}[1m:15s]) offset 30s",
        "topk(2, http_requests_total) / on(job) group_left sum by (job) (up) > bool 0.5",
        "label_replace(absent(nope), \"x\", \"$1\", \"job\", \"(.*)\") or vector(1)",
        "quantile_over_time(0.5, temperature[10m]) @ end()",
        "count_values(\"v\", up) unless ignoring(v) predict_linear(up[5m], 60)",
    ]
    .iter()
    .enumerate()
    {
        write(&d, &format!("q{i}"), q.as_bytes());
    }

    // wal_replay: the first segment of a head that took the series (one append per series,
    // so the segment holds series and samples records).
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = HeadOptions::new(tmp.path().join("head"));
    opts.fsync = FsyncPolicy::Never;
    opts.wal_segment_size = 64 << 10;
    {
        let (head, _) = Head::open(opts).unwrap();
        for s in &all {
            head.append(
                &WriteBatch::from_series(std::slice::from_ref(s)),
                &AppendLimits::default(),
            )
            .unwrap();
        }
    }
    let seg = fs::read(tmp.path().join("head/wal/00000000")).unwrap();
    let d = out.join("wal_replay");
    write(&d, "segment-3-series", &seg);
    // The same with a torn last record: replay repairs the tail.
    write(&d, "segment-torn-tail", &seg[..seg.len() - 3]);

    // block_read: [meta len][index len][meta.json][index][chunks/000001].
    let bparent = tmp.path().join("blocks");
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let chunks: Vec<SeriesChunks> = sorted
        .iter()
        .map(|(l, s)| SeriesChunks {
            labels: l.clone(),
            chunks: chunks_from_samples(s, 10).unwrap(),
        })
        .collect();
    let bmeta = write_block(
        &bparent,
        chunks,
        BlockOptions {
            ulid: Some("01BKGV7JBM69T2G1BGBGM6KB12".parse::<Ulid>().unwrap()),
            compaction_level: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let bdir = bparent.join(bmeta.ulid.to_string());
    let meta = fs::read(bdir.join("meta.json")).unwrap();
    let index = fs::read(bdir.join("index")).unwrap();
    let seg = fs::read(bdir.join("chunks/000001")).unwrap();
    let mut b = Vec::new();
    b.extend((meta.len() as u32).to_le_bytes());
    b.extend((index.len() as u32).to_le_bytes());
    b.extend(&meta);
    b.extend(&index);
    b.extend(&seg);
    write(&out.join("block_read"), "block-3-series", &b);

    // xor_chunk: chunks as the head and blocks hold them.
    let d = out.join("xor_chunk");
    for (i, (_, s)) in all.iter().enumerate() {
        let mut c = norn_chunkenc::XorChunk::new();
        for smp in s.iter().take(5 + 10 * i) {
            c.append(smp.t, smp.v);
        }
        write(&d, &format!("chunk{i}"), c.bytes());
    }

    // grpc_messages: a Push, a QueryRequest and a QueryStreamResponse.
    let d = out.join("grpc_messages");
    let push = pb::PushRequest {
        write_request: v1_small.clone().into(),
    };
    write(&d, "push", &push.encode_to_vec());
    let query = pb::QueryRequest {
        start_ms: T0,
        end_ms: T0 + 3_600_000,
        matchers: vec![
            pb::LabelMatcher {
                r#type: pb::MatchType::Eq as i32,
                name: "__name__".into(),
                value: "up".into(),
            },
            pb::LabelMatcher {
                r#type: pb::MatchType::Re as i32,
                name: "job".into(),
                value: "api|db.*".into(),
            },
        ],
    };
    write(&d, "query", &query.encode_to_vec());
    let resp = pb::QueryStreamResponse {
        series: all
            .iter()
            .map(|(l, s)| {
                norn_proto::convert::chunk_series_into_proto(norn_model::ChunkSeries {
                    labels: l.clone(),
                    chunks: norn_model::query::encode_samples(s),
                })
            })
            .collect(),
    };
    write(&d, "query-stream-response", &resp.encode_to_vec());
    println!("seeds written to {}", out.display());
}
