//! Merge tests on real block directories: dedup of replicas, deterministic conflicts, stale
//! markers, re-cut at 120, shards, tombstones, corrupt inputs named, and promtool reading
//! the output.

use std::path::{Path, PathBuf};

use norn_model::{Labels, Matcher, Sample, is_stale_nan, stale_nan};

use super::*;
use crate::block::{Block, BlockOptions, chunks_from_samples, write_block};
use crate::head::SeriesChunks;

const H2: i64 = 7_200_000;

fn series(name: &str, extra: &str, samples: &[Sample], per_chunk: usize) -> SeriesChunks {
    SeriesChunks {
        labels: Labels::from_pairs([("__name__", name), ("i", extra)]),
        chunks: chunks_from_samples(samples, per_chunk).unwrap(),
    }
}

fn samples(from: i64, to: i64, step: i64, v: impl Fn(i64) -> f64) -> Vec<Sample> {
    (0..)
        .map(|i| from + i * step)
        .take_while(|t| *t < to)
        .map(|t| Sample::new(t, v(t)))
        .collect()
}

/// Writes a level-1 block of `series` covering `[min, max)` into `dir`; returns its path.
fn block(dir: &Path, min: i64, max: i64, series: Vec<SeriesChunks>) -> PathBuf {
    let opts = BlockOptions::for_tenant("t", "receive", []).with_range(min, max);
    let meta = write_block(dir, series, opts).unwrap();
    dir.join(meta.ulid)
}

fn read_all(dir: &Path) -> Vec<(Labels, Vec<Sample>)> {
    let b = Block::open(dir).unwrap();
    b.verify().unwrap();
    let all = b
        .select(i64::MIN, i64::MAX, &[Matcher::equal("__name__", "m")])
        .unwrap();
    all.into_iter().map(|s| (s.labels, s.samples)).collect()
}

fn chunk_sizes(dir: &Path) -> Vec<u16> {
    let b = Block::open(dir).unwrap();
    let mut out = Vec::new();
    for r in b.series_refs().unwrap() {
        for c in b.raw_series(r).unwrap().chunks {
            out.push(u16::from_be_bytes([c.data[0], c.data[1]]));
        }
    }
    out
}

fn run(inputs: &[PathBuf], out: &Path, shards: u32) -> Result<CompactOutput, CompactError> {
    std::fs::create_dir_all(out).unwrap();
    let opts = CompactOptions {
        labels: [("__org_id__".to_string(), "t".to_string())].into(),
        shards,
        ..CompactOptions::default()
    };
    compact(inputs, out, &opts)
}

#[test]
fn replicas_merge_into_one_copy_of_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(0, H2, 15_000, |t| t as f64);
    // Three replicas: the same samples, cut into chunks at different places, one missing a
    // stretch (an ingester that was down) that the others fill in.
    let gap: Vec<Sample> = s
        .iter()
        .filter(|x| !(1_000_000..2_000_000).contains(&x.t))
        .copied()
        .collect();
    let inputs = vec![
        block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]),
        block(dir.path(), 0, H2, vec![series("m", "a", &s, 77)]),
        block(dir.path(), 0, H2, vec![series("m", "a", &gap, 120)]),
    ];
    let out = dir.path().join("out");
    let res = run(&inputs, &out, 1).unwrap();
    assert_eq!(res.blocks.len(), 1);
    let meta = &res.blocks[0];
    assert_eq!(meta.stats.num_samples, s.len() as u64);
    assert_eq!(meta.stats.num_series, 1);
    assert_eq!((meta.min_time, meta.max_time), (0, H2));
    assert_eq!(meta.compaction.level, 2);
    assert_eq!(meta.compaction.sources.len(), 3);
    assert_eq!(meta.compaction.parents.len(), 3);
    let thanos = meta.thanos.as_ref().unwrap();
    assert_eq!(thanos.source, "compactor");
    assert_eq!(thanos.labels["__org_id__"], "t");
    assert!(!thanos.labels.contains_key(SHARD_ID_LABEL));
    let got = read_all(&out.join(&meta.ulid));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, s, "each timestamp once, nothing lost");
    // 480 samples re-cut into 4 chunks of 120.
    assert_eq!(chunk_sizes(&out.join(&meta.ulid)), [120, 120, 120, 120]);
    assert_eq!(
        res.stats.duplicates_dropped,
        (s.len() * 2 - (s.len() - gap.len())) as u64
    );
    assert_eq!(res.stats.conflicts, 0);
}

#[test]
fn conflicts_resolve_the_same_whatever_the_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = samples(0, 600_000, 15_000, |_| 1.0);
    let mut b = samples(0, 600_000, 15_000, |_| 2.0);
    // A stale marker on one replica where another has a value: the value wins.
    b[3].v = stale_nan();
    let ia = block(dir.path(), 0, H2, vec![series("m", "a", &a, 120)]);
    let ib = block(dir.path(), 0, H2, vec![series("m", "a", &b, 120)]);
    let one = run(&[ia.clone(), ib.clone()], &dir.path().join("o1"), 1).unwrap();
    let two = run(&[ib, ia], &dir.path().join("o2"), 1).unwrap();
    let r1 = read_all(&dir.path().join("o1").join(&one.blocks[0].ulid));
    let r2 = read_all(&dir.path().join("o2").join(&two.blocks[0].ulid));
    let bits = |r: &[(Labels, Vec<Sample>)]| -> Vec<(i64, u64)> {
        r[0].1.iter().map(|s| (s.t, s.v.to_bits())).collect()
    };
    assert_eq!(bits(&r1), bits(&r2));
    assert_eq!(r1[0].1[3].v, 1.0, "a value beats a stale marker");
    assert!(
        r1[0]
            .1
            .iter()
            .enumerate()
            .all(|(i, s)| i == 3 || s.v == 2.0)
    );
    assert_eq!(one.stats.conflicts, a.len() as u64);
    // The rule itself: commutative, stale loses, greater wins, NaN payloads ordered.
    assert_eq!(pick_value(1.0, 2.0), 2.0);
    assert_eq!(pick_value(2.0, 1.0), 2.0);
    assert_eq!(pick_value(stale_nan(), -5.0), -5.0);
    assert_eq!(pick_value(-5.0, stale_nan()), -5.0);
    assert!(is_stale_nan(pick_value(stale_nan(), stale_nan())));
}

#[test]
fn stale_markers_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = samples(0, 300_000, 15_000, |t| t as f64);
    s[5].v = stale_nan();
    let inputs = vec![
        block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]),
        block(dir.path(), 0, H2, vec![series("m", "a", &s, 7)]),
    ];
    let out = dir.path().join("out");
    let res = run(&inputs, &out, 1).unwrap();
    let got = read_all(&out.join(&res.blocks[0].ulid));
    assert_eq!(got[0].1.len(), s.len());
    assert!(is_stale_nan(got[0].1[5].v));
}

#[test]
fn adjacent_blocks_concatenate_and_long_chunks_are_recut() {
    let dir = tempfile::tempdir().unwrap();
    let first = samples(0, H2, 15_000, |t| t as f64);
    let second = samples(H2, 2 * H2, 15_000, |t| t as f64);
    let inputs = vec![
        block(dir.path(), 0, H2, vec![series("m", "a", &first, 120)]),
        // A foreign block with 480-sample chunks: re-cut to 120.
        block(dir.path(), H2, 2 * H2, vec![series("m", "a", &second, 480)]),
    ];
    let out = dir.path().join("out");
    let res = run(&inputs, &out, 1).unwrap();
    let meta = &res.blocks[0];
    assert_eq!((meta.min_time, meta.max_time), (0, 2 * H2));
    let got = read_all(&out.join(&meta.ulid));
    let mut want = first.clone();
    want.extend(&second);
    assert_eq!(got[0].1, want);
    assert!(chunk_sizes(&out.join(&meta.ulid)).iter().all(|&n| n <= 120));
    assert_eq!(
        res.stats.chunks_copied, 4,
        "the 120-sample chunks are copied as they are"
    );
}

#[test]
fn split_writes_disjoint_shards_with_their_label() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(0, 600_000, 15_000, |_| 1.0);
    let all: Vec<SeriesChunks> = (0..64)
        .map(|i| series("m", &format!("{i:03}"), &s, 120))
        .collect();
    let inputs = vec![
        block(dir.path(), 0, H2, all.clone()),
        block(dir.path(), 0, H2, all.clone()),
    ];
    let out = dir.path().join("out");
    let res = run(&inputs, &out, 4).unwrap();
    assert_eq!(res.blocks.len(), 4, "64 series fill 4 shards");
    let mut seen = Vec::new();
    for meta in &res.blocks {
        let label = meta.thanos.as_ref().unwrap().labels[SHARD_ID_LABEL].clone();
        let i: u32 = label.split('_').next().unwrap().parse().unwrap();
        for (labels, got) in read_all(&out.join(&meta.ulid)) {
            assert_eq!(shard_of(&labels, 4), i - 1, "{labels} in shard {label}");
            assert_eq!(got, s);
            seen.push(labels);
        }
    }
    seen.sort();
    assert_eq!(seen.len(), 64);
    seen.dedup();
    assert_eq!(seen.len(), 64, "each series in exactly one shard");
}

#[test]
fn corrupt_input_is_named_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(0, 600_000, 15_000, |t| t as f64);
    let good = block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]);
    let bad = block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]);
    // Flip a byte inside the chunk data: the segment CRC no longer matches.
    let seg = bad.join("chunks/000001");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let out = dir.path().join("out");
    let err = run(&[good.clone(), bad.clone()], &out, 1).unwrap_err();
    match &err {
        CompactError::BadBlock { block, kind, .. } => {
            assert_eq!(block, &bad.file_name().unwrap().to_string_lossy());
            assert_eq!(*kind, BadBlockKind::Corrupt);
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "no partial output"
    );

    // A block whose index is gone is bad at open.
    let gone = block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]);
    std::fs::remove_file(gone.join("index")).unwrap();
    let err = run(&[good, gone.clone()], &out, 1).unwrap_err();
    assert!(
        matches!(&err, CompactError::BadBlock { block, .. } if *block == gone.file_name().unwrap().to_string_lossy()),
        "{err}"
    );
}

#[test]
fn out_of_order_chunks_are_their_own_kind() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(0, 600_000, 15_000, |t| t as f64);
    let good = block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]);
    // Two overlapping chunks in one series; the block writer refuses that, so the block is
    // made by hand.
    let bad = overlapping_chunks_block(dir.path(), &s);
    let err = run(&[good, bad.clone()], &dir.path().join("out"), 1).unwrap_err();
    match err {
        CompactError::BadBlock {
            block,
            kind,
            reason,
        } => {
            assert_eq!(block, bad.file_name().unwrap().to_string_lossy());
            assert_eq!(kind, BadBlockKind::OutOfOrderChunks, "{reason}");
        }
        other => panic!("{other}"),
    }
}

/// A block whose one series has two chunks that overlap in time (what old Prometheus
/// versions could write), made with the chunk and index writers directly.
fn overlapping_chunks_block(dir: &Path, s: &[Sample]) -> PathBuf {
    use crate::block::chunks::ChunkWriter;
    use crate::block::index::{ChunkRef, IndexSeries, write_index};
    use crate::block::meta::{BlockMeta, BlockStats, Compaction, META_VERSION};
    use crate::block::ulid::Ulid;
    let ulid = Ulid::new().to_string();
    let b = dir.join(&ulid);
    std::fs::create_dir_all(b.join("chunks")).unwrap();
    // The second chunk starts at the first one's last timestamp: one sample overlaps (the
    // index format cannot even express more overlap than that).
    let c1 = chunks_from_samples(&s[..20], 120).unwrap().remove(0);
    let c2 = chunks_from_samples(&s[19..], 120).unwrap().remove(0);
    let mut cw = ChunkWriter::new(&b.join("chunks"), 1 << 20);
    let refs = cw
        .write_chunks(&[(1, c1.data.as_slice()), (1, c2.data.as_slice())])
        .unwrap();
    cw.finish().unwrap();
    // Symbols sorted: "", "__name__", "a", "i", "m".
    let symbols: Vec<&[u8]> = ["", "__name__", "a", "i", "m"]
        .iter()
        .map(|s| s.as_bytes())
        .collect();
    let series = vec![IndexSeries {
        labels: vec![(1, 4), (3, 2)],
        chunks: [&c1, &c2]
            .iter()
            .zip(&refs)
            .map(|(c, &r)| ChunkRef {
                min_t: c.min_t,
                max_t: c.max_t,
                r,
            })
            .collect(),
    }];
    let mut w = crate::block::io::PosWriter::create(&b.join("index")).unwrap();
    write_index(&mut w, &symbols, &series).unwrap();
    w.finish().unwrap();
    let meta = BlockMeta {
        ulid: ulid.clone(),
        min_time: 0,
        max_time: H2,
        stats: BlockStats::default(),
        compaction: Compaction {
            level: 1,
            sources: vec![ulid],
            ..Compaction::default()
        },
        version: META_VERSION,
        thanos: None,
        extra: Default::default(),
    };
    std::fs::write(b.join("meta.json"), meta.to_json().unwrap()).unwrap();
    b
}

#[test]
fn tombstoned_samples_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(0, 600_000, 15_000, |t| t as f64);
    let b = block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]);
    let mut ts = crate::block::tombstones::Tombstones::default();
    let r = Block::open(&b).unwrap().series_refs().unwrap()[0];
    ts.add(u64::from(r), 0, 100_000);
    std::fs::write(b.join("tombstones"), ts.encode()).unwrap();
    let out = dir.path().join("out");
    let res = run(&[b], &out, 1).unwrap();
    let got = read_all(&out.join(&res.blocks[0].ulid));
    assert!(got[0].1.iter().all(|x| x.t > 100_000));
    assert_eq!(got[0].1.len(), s.iter().filter(|x| x.t > 100_000).count());
}

#[test]
fn promtool_reads_the_output() {
    let promtool = Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        eprintln!("promtool not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = samples(0, H2, 15_000, |t| (t / 1000) as f64);
    let all: Vec<SeriesChunks> = (0..10)
        .map(|i| series("m", &format!("{i}"), &s, 120))
        .collect();
    let inputs = vec![
        block(dir.path(), 0, H2, all.clone()),
        block(dir.path(), 0, H2, all),
    ];
    let out = dir.path().join("out");
    let res = run(&inputs, &out, 1).unwrap();
    let ulid = &res.blocks[0].ulid;
    // `dump` opens the directory as a TSDB, which needs a (here empty) WAL.
    std::fs::create_dir_all(out.join("wal")).unwrap();
    let analyze = std::process::Command::new(promtool)
        .args(["tsdb", "analyze"])
        .arg(&out)
        .arg(ulid)
        .output()
        .unwrap();
    assert!(
        analyze.status.success(),
        "{}",
        String::from_utf8_lossy(&analyze.stderr)
    );
    let dump = std::process::Command::new(promtool)
        .args(["tsdb", "dump", "--min-time=0", "--max-time=100000000000"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let lines = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(lines, 10 * s.len(), "promtool dumps each sample once");
}

#[test]
fn hostile_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        run(&[], &dir.path().join("o"), 1),
        Err(CompactError::Invalid(_))
    ));
    let s = samples(0, 60_000, 15_000, |_| 1.0);
    let b = block(dir.path(), 0, H2, vec![series("m", "a", &s, 120)]);
    assert!(matches!(
        run(
            std::slice::from_ref(&b),
            &dir.path().join("o"),
            MAX_SHARDS + 1
        ),
        Err(CompactError::Invalid(_))
    ));
    assert!(matches!(
        run(&[b.clone(), b], &dir.path().join("o"), 1),
        Err(CompactError::Invalid(_))
    ));
}
