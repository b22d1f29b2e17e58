//! Damaged blocks: bad input must give a clear error naming the file and the problem —
//! never a panic, never partial data.
//!
//! The exhaustive part truncates every file of a valid block at every length and flips every
//! byte (three patterns), then opens, verifies and queries the block. Each attempt must
//! either fail with an error that names the damaged file, or — where the damage hit bytes no
//! reader relies on (padding, the label indices Prometheus 2.42 still writes, meta.json
//! fields without a checksum) — return exactly the data of the intact block.
//! The named cases check the messages for the failures an operator will meet.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use norn_model::{Labels, MatchType, Matcher, Sample};
use norn_tsdb::SeriesChunks;
use norn_tsdb::block::index::IndexReader;
use norn_tsdb::block::{Block, BlockOptions, chunks_from_samples, write_block};

fn test_series() -> Vec<SeriesChunks> {
    let mut out = Vec::new();
    for (i, job) in ["api", "db", "web"].iter().enumerate() {
        let samples: Vec<Sample> = (0..250)
            .map(|k| {
                let v = match k % 50 {
                    7 => f64::NAN,
                    _ => (i * 1000 + k * k) as f64 / 8.0,
                };
                Sample::new(1_000_000 + k as i64 * 15_000 + (k % 3) as i64, v)
            })
            .collect();
        out.push(SeriesChunks {
            labels: Labels::from_pairs([("__name__", "up"), ("instance", "h:9100"), ("job", job)]),
            chunks: chunks_from_samples(&samples, 120).unwrap(),
        });
    }
    out
}

/// Writes the test block under `parent`; returns its directory.
fn write_test_block(parent: &Path, opts: BlockOptions) -> PathBuf {
    let opts = BlockOptions {
        segment_size: 1024,
        ..opts
    };
    let meta = write_block(parent, test_series(), opts).unwrap();
    parent.join(meta.ulid)
}

/// What a reader gets out of a block, with values as bits so NaNs compare.
type Answer = Vec<(Labels, Vec<(i64, u64)>)>;

fn load(dir: &Path) -> norn_tsdb::Result<(Answer, Answer, Vec<String>, Vec<String>)> {
    let b = Block::open(dir)?;
    b.verify()?;
    let bits = |ss: Vec<norn_model::Series>| -> Answer {
        ss.into_iter()
            .map(|s| {
                let v = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
                (s.labels, v)
            })
            .collect()
    };
    let all = bits(b.select(i64::MIN, i64::MAX, &[])?);
    let m = Matcher::new(MatchType::NotRegex, "job", "db").unwrap();
    let some = bits(b.select(1_500_000, 3_000_000, &[m])?);
    Ok((all, some, b.label_names(&[])?, b.label_values("job", &[])?))
}

/// The block's files, relative to its directory.
fn files(dir: &Path) -> Vec<String> {
    let mut out = vec![
        "meta.json".to_string(),
        "index".to_string(),
        "tombstones".to_string(),
    ];
    let mut segs: Vec<String> = fs::read_dir(dir.join("chunks"))
        .unwrap()
        .map(|e| format!("chunks/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    segs.sort();
    out.extend(segs);
    out
}

/// Every position of the first and last 64 bytes, every `stride`-th one in between.
fn positions(len: usize, stride: usize) -> impl Iterator<Item = usize> {
    (0..len).filter(move |&i| i < 64 || i + 64 >= len || i % stride == 0)
}

#[test]
fn every_truncation_and_flipped_byte_is_an_error_or_harmless() {
    let parent = tempfile::tempdir().unwrap();
    let dir = write_test_block(parent.path(), BlockOptions::default());
    let want = load(&dir).unwrap();
    assert_eq!(want.0.len(), 3);
    let rels = files(&dir);
    assert!(rels.len() >= 5, "want several chunk segments: {rels:?}");

    let (mut attempts, mut harmless) = (0u32, 0u32);
    for rel in &rels {
        let path = dir.join(rel);
        let good = fs::read(&path).unwrap();
        let mut attempt = |bytes: &[u8], what: &str, must_fail: bool| {
            fs::write(&path, bytes).unwrap();
            attempts += 1;
            let got = catch_unwind(AssertUnwindSafe(|| load(&dir)))
                .unwrap_or_else(|_| panic!("{rel}: {what}: the reader panicked"));
            match got {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(rel.as_str()),
                        "{rel}: {what}: error does not name the file: {msg}"
                    );
                }
                Ok(got) => {
                    assert!(!must_fail, "{rel}: {what}: damage went unnoticed");
                    assert!(got == want, "{rel}: {what}: served different data");
                    harmless += 1;
                }
            }
        };
        // Chunk segments are uniform (chunk after chunk, each behind a CRC) and most of the
        // bytes: a stride over their middle keeps the run short without losing a case.
        let stride = if rel.starts_with("chunks/") { 3 } else { 1 };
        for n in positions(good.len(), stride) {
            attempt(&good[..n], &format!("truncated to {n} bytes"), true);
        }
        for i in positions(good.len(), stride) {
            for x in [0x01u8, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] ^= x;
                attempt(&b, &format!("byte {i} ^ {x:#04x}"), false);
            }
        }
        fs::write(&path, &good).unwrap();
    }
    println!("{attempts} damaged variants, {harmless} harmless (unread bytes)");
    assert_eq!(load(&dir).unwrap(), want);
}

/// A checksummed region of a file: `covered` bytes whose CRC32C is stored at `crc_at`.
struct Region {
    file: String,
    covered: std::ops::Range<usize>,
    crc_at: usize,
}

fn uvarint(b: &[u8], mut pos: usize) -> (u64, usize) {
    let (mut x, mut s) = (0u64, 0);
    loop {
        let c = b[pos];
        pos += 1;
        x |= u64::from(c & 0x7f) << s;
        if c < 0x80 {
            return (x, pos);
        }
        s += 7;
    }
}

/// Every checksummed region of the test block, found through the index the way a reader
/// navigates it.
fn regions(dir: &Path) -> Vec<Region> {
    let ix = IndexReader::open(&dir.join("index")).unwrap();
    let index = fs::read(dir.join("index")).unwrap();
    let mut out = Vec::new();
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    // `len u32 · bytes · CRC` sections.
    let mut counted = |at: usize| {
        let len = be32(&index, at);
        out.push(Region {
            file: "index".into(),
            covered: at + 4..at + 4 + len,
            crc_at: at + 4 + len,
        });
    };
    let toc = ix.toc();
    counted(toc.symbols as usize);
    counted(toc.postings_table as usize);
    counted((toc.postings as usize).next_multiple_of(4));
    for name in ix.label_names() {
        for (_, off) in ix.values(name) {
            counted(*off as usize);
        }
    }
    let toc_at = index.len() - 52;
    out.push(Region {
        file: "index".into(),
        covered: toc_at..toc_at + 48,
        crc_at: toc_at + 48,
    });
    let mut chunk_refs = Vec::new();
    for r in ix.all_postings().unwrap() {
        let at = r as usize * 16;
        let (len, body) = uvarint(&index, at);
        out.push(Region {
            file: "index".into(),
            covered: body..body + len as usize,
            crc_at: body + len as usize,
        });
        chunk_refs.extend(ix.series(r).unwrap().chunks.iter().map(|c| c.r));
    }
    for r in chunk_refs {
        let file = format!("chunks/{:06}", (r >> 32) + 1);
        let seg = fs::read(dir.join(&file)).unwrap();
        let (len, enc) = uvarint(&seg, (r & 0xffff_ffff) as usize);
        out.push(Region {
            file,
            covered: enc..enc + 1 + len as usize,
            crc_at: enc + 1 + len as usize,
        });
    }
    let ts = fs::read(dir.join("tombstones")).unwrap();
    out.push(Region {
        file: "tombstones".into(),
        covered: 5..ts.len() - 4,
        crc_at: ts.len() - 4,
    });
    out
}

/// Damage a checksum cannot catch — a changed byte whose CRC was recomputed, as a buggy
/// writer would leave it — must never panic, and whatever the reader then serves must still
/// be well formed: series sorted and non-empty, samples strictly ascending inside the
/// block's range, label names sorted.
#[test]
fn damage_behind_a_valid_checksum_never_panics() {
    let parent = tempfile::tempdir().unwrap();
    let dir = write_test_block(parent.path(), BlockOptions::default());
    let meta = Block::open(&dir).unwrap().meta().clone();
    let (mut attempts, mut served) = (0u32, 0u32);
    for region in regions(&dir) {
        let path = dir.join(&region.file);
        let good = fs::read(&path).unwrap();
        let stride = if region.file.starts_with("chunks/") {
            3
        } else {
            1
        };
        for i in region.covered.clone().filter(|i| i % stride == 0) {
            for x in [0x01u8, 0x80] {
                let mut b = good.clone();
                b[i] ^= x;
                let crc = crc32c::crc32c(&b[region.covered.clone()]);
                b[region.crc_at..region.crc_at + 4].copy_from_slice(&crc.to_be_bytes());
                fs::write(&path, &b).unwrap();
                attempts += 1;
                let what = format!("{} byte {i} ^ {x:#04x} (CRC fixed)", region.file);
                let got = catch_unwind(AssertUnwindSafe(|| load(&dir)))
                    .unwrap_or_else(|_| panic!("{what}: the reader panicked"));
                let Ok((all, _, names, _)) = got else {
                    continue;
                };
                served += 1;
                assert!(
                    all.windows(2).all(|w| w[0].0 < w[1].0),
                    "{what}: series not sorted"
                );
                for (labels, samples) in &all {
                    assert!(!samples.is_empty(), "{what}: empty series {labels}");
                    assert!(
                        samples.windows(2).all(|w| w[0].0 < w[1].0),
                        "{what}: samples of {labels} not ascending"
                    );
                    assert!(
                        samples[0].0 >= meta.min_time
                            && samples[samples.len() - 1].0 < meta.max_time,
                        "{what}: samples of {labels} outside the block"
                    );
                }
                assert!(
                    names.windows(2).all(|w| w[0] < w[1]),
                    "{what}: label names not sorted"
                );
            }
        }
        fs::write(&path, &good).unwrap();
    }
    println!("{attempts} CRC-fixed variants, {served} still served (well formed)");
}

fn err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("damaged block {} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} does not mention {p:?}");
    }
}

/// Rewrites `dir/rel` with `f` applied to its bytes.
fn damage(dir: &Path, rel: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let path = dir.join(rel);
    let mut b = fs::read(&path).unwrap();
    f(&mut b);
    fs::write(&path, b).unwrap();
}

#[test]
fn named_failures_say_what_is_wrong() {
    let parent = tempfile::tempdir().unwrap();
    let fresh = |opts: BlockOptions| {
        write_test_block(&tempfile::tempdir_in(parent.path()).unwrap().keep(), opts)
    };

    // Bad magic in each binary file.
    for (rel, what) in [
        ("index", "bad index magic"),
        ("chunks/000001", "bad chunk segment magic"),
        ("tombstones", "bad tombstones magic"),
    ] {
        let d = fresh(BlockOptions::default());
        damage(&d, rel, |b| b[1] ^= 0x40);
        assert_mentions(&err(&d), &[rel, what]);
    }

    // CRC mismatch in a chunk.
    let d = fresh(BlockOptions::default());
    damage(&d, "chunks/000001", |b| b[20] ^= 0x04);
    assert_mentions(&err(&d), &["chunks/000001", "checksum mismatch"]);

    // Truncated TOC (the last bytes of the index are gone).
    let d = fresh(BlockOptions::default());
    damage(&d, "index", |b| b.truncate(b.len() - 10));
    assert_mentions(&err(&d), &["index", "TOC"]);

    // Missing chunk segments: the first, a middle one, the last.
    let d = fresh(BlockOptions::default());
    fs::remove_file(d.join("chunks/000001")).unwrap();
    assert_mentions(&err(&d), &["chunks/000001", "missing"]);
    let d = fresh(BlockOptions::default());
    fs::remove_file(d.join("chunks/000002")).unwrap();
    assert_mentions(&err(&d), &["chunks/000002", "missing"]);
    let d = fresh(BlockOptions::default());
    let last = files(&d).pop().unwrap();
    fs::remove_file(d.join(&last)).unwrap();
    assert_mentions(&err(&d), &[&last]);
    let d = fresh(BlockOptions::default());
    fs::remove_dir_all(d.join("chunks")).unwrap();
    assert_mentions(&err(&d), &["chunks/000001", "missing"]);

    // With a Thanos section (every uploaded block has one), a missing or truncated segment
    // is caught at open, before any query.
    let thanos = || BlockOptions::for_tenant("t", "receive", []);
    let d = fresh(thanos());
    let last = files(&d).pop().unwrap();
    fs::remove_file(d.join(&last)).unwrap();
    let e = Block::open(&d).unwrap_err().to_string();
    assert_mentions(&e, &[&last, "meta.json lists"]);
    let d = fresh(thanos());
    damage(&d, "chunks/000002", |b| b.truncate(b.len() - 1));
    let e = Block::open(&d).unwrap_err().to_string();
    assert_mentions(&e, &["chunks/000002", "truncated"]);

    // meta.json: invalid JSON, wrong version, missing file.
    let d = fresh(BlockOptions::default());
    fs::write(d.join("meta.json"), b"{\"ulid\": ").unwrap();
    assert_mentions(&err(&d), &["meta.json", "invalid JSON"]);
    let d = fresh(BlockOptions::default());
    let text = fs::read_to_string(d.join("meta.json")).unwrap();
    fs::write(
        d.join("meta.json"),
        text.replace("\"version\": 1", "\"version\": 2"),
    )
    .unwrap();
    assert_mentions(&err(&d), &["meta.json", "unsupported meta version 2"]);
    let d = fresh(BlockOptions::default());
    fs::remove_file(d.join("meta.json")).unwrap();
    assert_mentions(&err(&d), &["meta.json"]);

    // A chunk ref pointing past the end of its segment: cut the segment right at the last
    // chunk's start, so the header is intact and only the ref dangles.
    let d = fresh(BlockOptions::default());
    let ix = IndexReader::open(&d.join("index")).unwrap();
    let mut refs: Vec<u64> = Vec::new();
    for r in ix.all_postings().unwrap() {
        refs.extend(ix.series(r).unwrap().chunks.iter().map(|c| c.r));
    }
    drop(ix);
    let last_ref = *refs.iter().max().unwrap();
    let seg = format!("chunks/{:06}", (last_ref >> 32) + 1);
    let off = (last_ref & 0xffff_ffff) as usize;
    damage(&d, &seg, |b| b.truncate(off));
    assert_mentions(
        &err(&d),
        &[
            &seg,
            &format!("chunk at offset {off}"),
            "outside the segment",
        ],
    );
    // The open itself succeeds (nothing is read yet); the first read of it fails.
    let b = Block::open(&d).unwrap();
    assert!(b.select(i64::MIN, i64::MAX, &[]).is_err());
}
