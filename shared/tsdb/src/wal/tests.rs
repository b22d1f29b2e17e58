use super::*;
use proptest::prelude::*;

fn metrics() -> Arc<TsdbMetrics> {
    Arc::new(TsdbMetrics::unregistered())
}

fn read_all(dir: &Path) -> (Vec<Vec<u8>>, ReplayResult) {
    let mut got = Vec::new();
    let res = replay(dir, &metrics(), |r| got.push(r.to_vec())).unwrap();
    (got, res)
}

/// Records of varied size: tiny, multi-page, incompressible.
fn sample_records() -> Vec<Vec<u8>> {
    let mut recs = vec![vec![2u8], b"hello world".to_vec(), vec![7u8; 100_000]];
    let mut x = 12345u64;
    let noise: Vec<u8> = (0..70_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    recs.push(noise);
    recs.push(Vec::new());
    recs
}

#[test]
fn round_trip_across_pages_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let recs = sample_records();
    {
        let wal = Wal::open(
            dir.path(),
            WalOptions {
                segment_size: 64 * 1024,
                fsync: FsyncPolicy::Always,
            },
            metrics(),
        )
        .unwrap();
        for r in &recs {
            wal.log(&[r]).unwrap();
        }
        assert!(wal.segments().unwrap().len() > 1);
    }
    let (got, res) = read_all(dir.path());
    assert_eq!(got, recs);
    assert_eq!(res.corruptions, 0);
    // Reopening starts a new segment and keeps the old data.
    {
        let wal = Wal::open(dir.path(), WalOptions::default(), metrics()).unwrap();
        wal.log(&[b"more"]).unwrap();
    }
    let (got, _) = read_all(dir.path());
    assert_eq!(got.len(), recs.len() + 1);
}

#[test]
fn concurrent_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), WalOptions::default(), metrics()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    wal.log(&[&[t as u8, (i >> 8) as u8, i as u8]]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(wal);
    let (got, _) = read_all(dir.path());
    assert_eq!(got.len(), 200);
    for t in 0..4u8 {
        let mine: Vec<u32> = got
            .iter()
            .filter(|r| r[0] == t)
            .map(|r| (u32::from(r[1]) << 8) | u32::from(r[2]))
            .collect();
        assert_eq!(mine, (0..50).collect::<Vec<_>>(), "per-thread order kept");
    }
}

#[test]
fn truncate_before_keeps_current() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default(), metrics()).unwrap();
    wal.log(&[b"a"]).unwrap();
    let closed = wal.rotate().unwrap();
    wal.log(&[b"b"]).unwrap();
    assert_eq!(wal.segments().unwrap(), [0, 1]);
    assert_eq!(wal.truncate_before(closed + 1).unwrap(), 1);
    assert_eq!(wal.truncate_before(100).unwrap(), 0);
    drop(wal);
    assert_eq!(read_all(dir.path()).0, [b"b".to_vec()]);
}

#[test]
fn checkpoint_keeps_live_series_and_recent_samples() {
    use record::{Record, RefSample};
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let series_rec = |r: u64, name: &str| {
        let mut b = Vec::new();
        record::begin_series(&mut b);
        record::push_series(&mut b, r, [(&b"__name__"[..], name.as_bytes())].into_iter());
        b
    };
    let samples_rec = |s: &[(u64, i64)]| {
        let mut b = Vec::new();
        let v: Vec<RefSample> = s
            .iter()
            .map(|&(r, t)| RefSample {
                series: r,
                t,
                v: 1.0,
            })
            .collect();
        record::encode_samples(&mut b, &v);
        b
    };
    let wal = Wal::open(dir.path(), WalOptions::default(), Arc::clone(&m)).unwrap();
    wal.log(&[&series_rec(1, "a"), &series_rec(2, "b")])
        .unwrap();
    wal.log(&[&samples_rec(&[(1, 10), (2, 10), (1, 20)])])
        .unwrap();
    let closed = wal.rotate().unwrap();
    wal.log(&[&samples_rec(&[(1, 30)])]).unwrap();
    let stats = wal.checkpoint(closed, |r| r == 1, 15).unwrap();
    assert_eq!(stats.series_kept, 1);
    assert_eq!(stats.samples_kept, 1);
    assert_eq!(stats.segments_deleted, 1);
    assert!(wal.checkpoint(wal.current_segment(), |_| true, 0).is_err());
    // A second checkpoint folds the first one in.
    let closed = wal.rotate().unwrap();
    wal.log(&[&samples_rec(&[(1, 40)])]).unwrap();
    wal.checkpoint(closed, |_| true, 0).unwrap();
    assert_eq!(list_checkpoints(dir.path()).unwrap(), [closed]);
    drop(wal);
    // Reopening numbers segments after the checkpoint even if none are left before it.
    let wal = Wal::open(dir.path(), WalOptions::default(), Arc::clone(&m)).unwrap();
    assert!(wal.current_segment() > closed);
    drop(wal);
    let (recs, _) = read_all(dir.path());
    let decoded: Vec<Record> = recs.iter().map(|r| record::decode(r).unwrap()).collect();
    let mut ts = Vec::new();
    let mut series = Vec::new();
    for r in decoded {
        match r {
            Record::Series(s) => series.extend(s.into_iter().map(|s| s.series)),
            Record::Samples(s) => ts.extend(s.into_iter().map(|s| (s.series, s.t))),
            Record::Unknown(_) => {}
        }
    }
    assert_eq!(series, [1]);
    assert_eq!(ts, [(1, 20), (1, 30), (1, 40)]);
}

fn write_wal(dir: &Path, recs: &[Vec<u8>], segment_size: u64) {
    let wal = Wal::open(
        dir,
        WalOptions {
            segment_size,
            fsync: FsyncPolicy::Never,
        },
        metrics(),
    )
    .unwrap();
    for r in recs {
        wal.log(&[r]).unwrap();
    }
}

/// Where each record ends (segment, file length after it).
fn record_ends(recs: &[Vec<u8>]) -> Vec<(u32, u64)> {
    // Re-derive by writing each prefix into a fresh WAL: the framing is deterministic.
    let mut ends = Vec::new();
    for n in 1..=recs.len() {
        let d = tempfile::tempdir().unwrap();
        write_wal(d.path(), &recs[..n], 64 * 1024);
        let segs = list_segments(d.path()).unwrap();
        let last = *segs.last().unwrap();
        let len = fs::metadata(segment_path(d.path(), last)).unwrap().len();
        ends.push((last, len));
    }
    ends
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Model-based: random logs, crashes (the newest segment cut at a random point) and
    /// clean reopens. After each crash, replay returns a prefix of the model holding every
    /// record that ended before the cut; the model then becomes that prefix.
    #[test]
    fn model_based_crashes(
        ops in proptest::collection::vec(
            prop_oneof![
                4 => proptest::collection::vec(0usize..20_000, 1..4).prop_map(Some),
                1 => Just(None),
            ],
            1..16,
        ),
        cuts in proptest::collection::vec(0.0f64..1.0, 16),
        clean in proptest::collection::vec(any::<bool>(), 16),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions { segment_size: 64 * 1024, fsync: FsyncPolicy::Never };
        let mut wal = Some(Wal::open(dir.path(), opts.clone(), metrics()).unwrap());
        // Model: records, each with (segment, file length right after it was written).
        let mut model: Vec<(Vec<u8>, u32, u64)> = Vec::new();
        let mut n = 0u32;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Some(sizes) => {
                    let w = wal.as_ref().unwrap();
                    for size in sizes {
                        n += 1;
                        let rec: Vec<u8> = (0..size).map(|j| (j as u32 ^ n) as u8).collect();
                        w.log(&[&rec]).unwrap();
                        let seg = w.current_segment();
                        let len = fs::metadata(segment_path(dir.path(), seg)).unwrap().len();
                        model.push((rec, seg, len));
                    }
                }
                None => {
                    let w = wal.take().unwrap();
                    let last = w.current_segment();
                    drop(w);
                    let intact = if clean[i] {
                        model.len()
                    } else {
                        let p = segment_path(dir.path(), last);
                        let len = fs::metadata(&p).unwrap().len();
                        let cut = (len as f64 * cuts[i]) as u64;
                        OpenOptions::new().write(true).open(&p).unwrap().set_len(cut).unwrap();
                        model.iter().filter(|(_, s, e)| *s < last || *e <= cut).count()
                    };
                    let (got, _) = read_all(dir.path());
                    prop_assert!(got.len() >= intact && got.len() <= intact + 1);
                    prop_assert!(got.len() <= model.len());
                    for (g, (m, _, _)) in got.iter().zip(&model) {
                        prop_assert_eq!(g, m);
                    }
                    model.truncate(got.len());
                    wal = Some(Wal::open(dir.path(), opts.clone(), metrics()).unwrap());
                }
            }
        }
        drop(wal);
        let (got, res) = read_all(dir.path());
        prop_assert_eq!(res.corruptions, 0);
        let want: Vec<Vec<u8>> = model.into_iter().map(|(r, _, _)| r).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_records_round_trip(
        recs in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..100),
                proptest::collection::vec(any::<u8>(), 0..70_000),
                (0usize..100_000).prop_map(|n| vec![b'x'; n]),
            ],
            0..12,
        ),
        pages in 2u64..6,
        batched in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(
                dir.path(),
                WalOptions { segment_size: pages * PAGE_SIZE as u64, fsync: FsyncPolicy::Never },
                metrics(),
            )
            .unwrap();
            if batched {
                let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
                wal.log(&refs).unwrap();
            } else {
                for r in &recs {
                    wal.log(&[r]).unwrap();
                }
            }
        }
        let (got, res) = read_all(dir.path());
        prop_assert_eq!(res.corruptions, 0);
        prop_assert_eq!(got, recs);
    }

    #[test]
    fn damaged_tail_recovers_exactly_the_intact_prefix(
        sizes in proptest::collection::vec(prop_oneof![0usize..50, 0usize..40_000], 1..8),
        cut_frac in 0.0f64..1.0,
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        flip in any::<bool>(),
    ) {
        let recs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7 % 251) as u8).collect())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        write_wal(dir.path(), &recs, 64 * 1024);
        let ends = record_ends(&recs);
        // Damage the last segment: cut it somewhere, then maybe append garbage or flip a byte.
        let segs = list_segments(dir.path()).unwrap();
        let last = *segs.last().unwrap();
        let path = segment_path(dir.path(), last);
        let mut data = fs::read(&path).unwrap();
        let cut = (data.len() as f64 * cut_frac) as usize;
        if flip && cut < data.len() {
            data[cut] ^= 0x5a;
        } else {
            data.truncate(cut);
            data.extend_from_slice(&garbage);
        }
        fs::write(&path, &data).unwrap();

        let (got, res) = read_all(dir.path());
        // Whatever came back is a prefix of what was written…
        prop_assert!(got.len() <= recs.len());
        prop_assert_eq!(&got[..], &recs[..got.len()]);
        // …and every record that ends before the damage is in it.
        let damage_at = cut as u64;
        let intact = ends
            .iter()
            .filter(|&&(s, e)| s < last || (s == last && e <= damage_at))
            .count();
        prop_assert!(got.len() >= intact, "got {} intact {}", got.len(), intact);
        // A second replay sees the repaired WAL as clean and returns the same records.
        let (again, res2) = read_all(dir.path());
        prop_assert_eq!(again, got);
        prop_assert_eq!(res2.corruptions, 0);
        let _ = res;
    }
}
