use std::collections::BTreeMap;

use norn_model::{MatchType, Sample, stale_nan};
use proptest::prelude::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use norn_model::{Labels, Matcher, Queryable, StorageError, WriteBatch};

use super::*;
use crate::block::BlockOptions;
use crate::wal::FsyncPolicy;
use crate::wal::record::{self, RefSample};

fn opts(dir: &std::path::Path) -> HeadOptions {
    HeadOptions::new(dir)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

fn batch(series: &[(Labels, Vec<(i64, f64)>)]) -> WriteBatch {
    let owned: Vec<(Labels, Vec<Sample>)> = series
        .iter()
        .map(|(l, s)| {
            (
                l.clone(),
                s.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
            )
        })
        .collect();
    WriteBatch::from_series(&owned)
}

const NO_LIMITS: AppendLimits = AppendLimits {
    max_series: 0,
    max_series_per_metric: 0,
};

fn all_samples(head: &Head) -> Vec<(Labels, Vec<(i64, u64)>)> {
    head.select(i64::MIN, i64::MAX, &[])
        .into_iter()
        .map(|s| {
            (
                s.labels,
                s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect()
}

#[test]
fn append_select_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let up_a = labels(&[("__name__", "up"), ("job", "a")]);
    let up_b = labels(&[("__name__", "up"), ("job", "b")]);
    let other = labels(&[("__name__", "other"), ("job", "a")]);
    let before;
    {
        let (head, stats) = Head::open(opts(dir.path())).unwrap();
        assert_eq!(stats.series, 0);
        let out = head
            .append(
                &batch(&[
                    (up_b.clone(), vec![(1000, 1.0), (2000, 2.0)]),
                    (up_a.clone(), vec![(1000, 3.0)]),
                    (other.clone(), vec![(1500, stale_nan())]),
                ]),
                &NO_LIMITS,
            )
            .unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                appended: 4,
                series_created: 3,
                rejected: vec![]
            }
        );
        let out = head
            .append(&batch(&[(up_a.clone(), vec![(2000, 4.0)])]), &NO_LIMITS)
            .unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                appended: 1,
                series_created: 0,
                rejected: vec![]
            }
        );

        let got = head.select(0, 10_000, &[Matcher::equal("__name__", "up")]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels, up_a);
        assert_eq!(
            got[0].samples,
            [Sample::new(1000, 3.0), Sample::new(2000, 4.0)]
        );
        assert_eq!(got[1].labels, up_b);
        // Range filtering; series without samples in range are left out.
        let got = head.select(1500, 1999, &[]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels, other);
        assert!(got[0].samples[0].v.to_bits() == stale_nan().to_bits());

        assert_eq!(head.num_series(), 3);
        assert_eq!(head.min_time(), Some(1000));
        assert_eq!(head.max_time(), Some(2000));
        assert_eq!(head.label_names(0, 10_000, &[]), ["__name__", "job"]);
        assert_eq!(head.label_values("job", 0, 10_000, &[]), ["a", "b"]);
        assert_eq!(
            head.label_values("__name__", 0, 10_000, &[Matcher::equal("job", "a")]),
            ["other", "up"]
        );
        assert_eq!(
            head.label_values("job", 0, 10_000, &[Matcher::equal("__name__", "other")]),
            ["a"]
        );
        assert!(head.label_names(5000, 6000, &[]).is_empty());
        before = all_samples(&head);
        head.close().unwrap();
    }
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.series, 3);
    assert_eq!(stats.samples, 5);
    assert_eq!(stats.wal.corruptions, 0);
    assert_eq!(all_samples(&head), before);
    assert_eq!(head.min_time(), Some(1000));
    // New series after replay get fresh ids.
    let out = head
        .append(
            &batch(&[(labels(&[("__name__", "new")]), vec![(3000, 1.0)])]),
            &NO_LIMITS,
        )
        .unwrap();
    assert_eq!(out.series_created, 1);
    assert_eq!(head.num_series(), 4);
    assert_eq!(all_samples(&head).len(), 4);
}

#[test]
fn per_sample_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let s = labels(&[("__name__", "m")]);
    let hour = 3_600_000;
    head.append(&batch(&[(s.clone(), vec![(10 * hour, 1.0)])]), &NO_LIMITS)
        .unwrap();
    let out = head
        .append(
            &batch(&[(
                s.clone(),
                vec![
                    (10 * hour, 1.0),          // exact duplicate: accepted silently
                    (10 * hour, 2.0),          // new value for timestamp
                    (10 * hour - 1, 1.0),      // out of order
                    (8 * hour, 1.0),           // too old (max_t - 1h)
                    (10 * hour + 1, f64::NAN), // fine
                    (10 * hour + 1, f64::NAN), // same bits: duplicate
                ],
            )]),
            &NO_LIMITS,
        )
        .unwrap();
    assert_eq!(out.appended, 1);
    let mut rej = out.rejected.clone();
    rej.sort_by_key(|r| r.reason.as_str());
    assert_eq!(
        rej,
        [
            Rejection {
                series_index: 0,
                reason: RejectReason::DuplicateTimestamp,
                samples: 1
            },
            Rejection {
                series_index: 0,
                reason: RejectReason::OutOfOrder,
                samples: 1
            },
            Rejection {
                series_index: 0,
                reason: RejectReason::TooOld,
                samples: 1
            },
        ]
    );
    assert_eq!(RejectReason::TooOld.as_str(), "sample-too-old");
    assert_eq!(
        RejectReason::MaxSeriesPerMetric.as_str(),
        "per_metric_series_limit"
    );
    let got = head.select(0, i64::MAX, &[]);
    assert_eq!(got[0].samples.len(), 2);
}

#[test]
fn series_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let limits = AppendLimits {
        max_series: 3,
        max_series_per_metric: 2,
    };
    let mk = |name: &str, i: usize| {
        (
            labels(&[("__name__", name), ("i", &i.to_string())]),
            vec![(1, 1.0)],
        )
    };
    let out = head
        .append(
            &batch(&[mk("a", 0), mk("a", 1), mk("a", 2), mk("b", 0), mk("b", 1)]),
            &limits,
        )
        .unwrap();
    assert_eq!(out.series_created, 3);
    assert_eq!(
        out.rejected,
        [
            Rejection {
                series_index: 2,
                reason: RejectReason::MaxSeriesPerMetric,
                samples: 1
            },
            Rejection {
                series_index: 4,
                reason: RejectReason::MaxSeriesPerUser,
                samples: 1
            },
        ]
    );
    // Existing series keep accepting samples at the limit.
    let out = head
        .append(&batch(&[(mk("a", 0).0, vec![(2, 1.0)])]), &limits)
        .unwrap();
    assert_eq!(out.appended, 1);
    assert_eq!(head.num_series(), 3);
}

#[test]
fn matchers_through_head() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let mut series = Vec::new();
    for job in ["api", "db", "web"] {
        for inst in 0..3 {
            series.push((
                labels(&[
                    ("__name__", "up"),
                    ("job", job),
                    ("instance", &format!("h{inst}")),
                ]),
                vec![(1, 1.0)],
            ));
        }
    }
    series.push((labels(&[("__name__", "up"), ("job", "x")]), vec![(1, 1.0)]));
    head.append(&batch(&series), &NO_LIMITS).unwrap();
    let count = |ms: Vec<Matcher>| head.select(0, 10, &ms).len();
    assert_eq!(count(vec![Matcher::equal("job", "api")]), 3);
    assert_eq!(
        count(vec![
            Matcher::new(MatchType::Regex, "job", "api|db").unwrap()
        ]),
        6
    );
    assert_eq!(
        count(vec![
            Matcher::new(MatchType::NotRegex, "job", "a.*").unwrap()
        ]),
        7
    );
    assert_eq!(count(vec![Matcher::equal("instance", "")]), 1);
    assert_eq!(
        count(vec![
            Matcher::new(MatchType::NotEqual, "instance", "h1").unwrap()
        ]),
        7
    );
    assert_eq!(
        count(vec![
            Matcher::equal("__name__", "up"),
            Matcher::new(MatchType::Regex, "instance", "h[01]").unwrap(),
            Matcher::new(MatchType::NotEqual, "job", "web").unwrap(),
        ]),
        4
    );
    let sorted = head.select(0, 10, &[]);
    assert!(sorted.windows(2).all(|w| w[0].labels < w[1].labels));
}

#[test]
fn series_chunks_follow_prometheus_cutting() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let s = labels(&[("__name__", "m")]);
    let samples: Vec<(i64, f64)> = (0..400).map(|i| (i * 15_000, i as f64)).collect();
    for chunk in samples.chunks(50) {
        head.append(&batch(&[(s.clone(), chunk.to_vec())]), &NO_LIMITS)
            .unwrap();
    }
    let sc = head.series_chunks(i64::MIN, i64::MAX);
    assert_eq!(sc.len(), 1);
    let counts: Vec<u16> = sc[0]
        .chunks
        .iter()
        .map(|c| u16::from_be_bytes([c.data[0], c.data[1]]))
        .collect();
    assert_eq!(counts, [120, 120, 120, 40]);
    assert_eq!(sc[0].chunks[0].min_t, 0);
    assert_eq!(sc[0].chunks[0].max_t, 119 * 15_000);
}

#[test]
fn torn_wal_tail_is_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = labels(&[("__name__", "m")]);
    {
        let (head, _) = Head::open(opts(dir.path())).unwrap();
        for i in 0..10 {
            head.append(&batch(&[(s.clone(), vec![(i, i as f64)])]), &NO_LIMITS)
                .unwrap();
        }
    }
    let seg = dir.path().join("wal").join("00000000");
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.wal.corruptions, 1);
    assert_eq!(stats.samples, 9);
    assert_eq!(head.select(0, 100, &[])[0].samples.len(), 9);
    // And it keeps working.
    head.append(&batch(&[(s.clone(), vec![(100, 1.0)])]), &NO_LIMITS)
        .unwrap();
    drop(head);
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.wal.corruptions, 0);
    assert_eq!(head.select(0, 100, &[])[0].samples.len(), 10);
}

#[test]
fn replay_tolerates_reordered_records() {
    // Write the WAL by hand in the order a race between two appenders can produce: a sample
    // before its series record, and an older sample after a newer one.
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(TsdbMetrics::unregistered());
    {
        let wal = Wal::open(
            dir.path().join("wal"),
            WalOptions::default(),
            Arc::clone(&metrics),
        )
        .unwrap();
        let mut samples = Vec::new();
        record::encode_samples(
            &mut samples,
            &[RefSample {
                series: 7,
                t: 20,
                v: 2.0,
            }],
        );
        let mut series = Vec::new();
        record::begin_series(&mut series);
        let l = labels(&[("__name__", "m")]);
        record::push_series(
            &mut series,
            7,
            l.iter().map(|l| (l.name.as_bytes(), l.value.as_bytes())),
        );
        let mut older = Vec::new();
        record::encode_samples(
            &mut older,
            &[RefSample {
                series: 7,
                t: 10,
                v: 1.0,
            }],
        );
        wal.log(&[&samples, &series, &older]).unwrap();
    }
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.samples, 2);
    let got = head.select(0, 100, &[]);
    assert_eq!(got[0].samples, [Sample::new(10, 1.0), Sample::new(20, 2.0)]);
    // The next id is past the replayed one.
    let out = head
        .append(
            &batch(&[(labels(&[("__name__", "n")]), vec![(30, 1.0)])]),
            &NO_LIMITS,
        )
        .unwrap();
    assert_eq!(out.series_created, 1);
    assert_eq!(head.select(0, 100, &[]).len(), 2);
}

#[test]
fn concurrent_appenders_agree_with_replay() {
    let dir = tempfile::tempdir().unwrap();
    let expected;
    {
        let (head, _) = Head::open(opts(dir.path())).unwrap();
        let head = Arc::new(head);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let head = Arc::clone(&head);
                std::thread::spawn(move || {
                    for round in 0..50i64 {
                        // Every thread writes shared series (contention, races on creation)
                        // and its own ones.
                        let mut series = Vec::new();
                        for i in 0..20 {
                            series.push((
                                labels(&[("__name__", "shared"), ("i", &i.to_string())]),
                                vec![(round * 100 + t, (t * 1000 + round) as f64)],
                            ));
                            series.push((
                                labels(&[
                                    ("__name__", "own"),
                                    ("t", &t.to_string()),
                                    ("i", &i.to_string()),
                                ]),
                                vec![(round * 10, round as f64), (round * 10 + 5, 0.5)],
                            ));
                        }
                        head.append(&batch(&series), &NO_LIMITS).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(head.num_series(), 20 + 4 * 20);
        expected = all_samples(&head);
        let own: usize = expected
            .iter()
            .filter(|(l, _)| l.metric_name() == Some("own"))
            .map(|(_, s)| s.len())
            .sum();
        assert_eq!(own, 4 * 20 * 100);
    }
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.unknown_series_samples, 0);
    assert_eq!(all_samples(&head), expected);
}

#[test]
fn head_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Head>();
    check::<HeadQueryable>();
}

/// One operation of the model-based test.
#[derive(Debug, Clone)]
enum Op {
    /// Append to series `s` (of a few) samples at these time offsets.
    Append { s: u8, ts: Vec<u8>, v: u8 },
    /// Crash: drop the head, cut the newest WAL segment to `frac` of its length, reopen.
    Crash { frac: f64 },
    /// Clean restart.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, proptest::collection::vec(any::<u8>(), 1..5), any::<u8>())
            .prop_map(|(s, ts, v)| Op::Append { s, ts, v }),
        1 => (0.0f64..1.0).prop_map(|frac| Op::Crash { frac }),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random appends, crashes (torn WAL tails) and restarts: after every reopen the head
    /// holds exactly what the model says — all acknowledged samples before a clean restart,
    /// and after a crash a per-series prefix of them that includes everything in intact
    /// WAL records.
    #[test]
    fn model_based_crash_recovery(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.wal_segment_size = 64 * 1024;
        let (mut head, _) = Head::open(o.clone()).unwrap();
        // Model: series index → acknowledged samples in order.
        let mut model: BTreeMap<u8, Vec<(i64, u64)>> = BTreeMap::new();
        let mut clock = 0i64;
        for op in ops {
            match op {
                Op::Append { s, ts, v } => {
                    let l = labels(&[("__name__", "m"), ("s", &s.to_string())]);
                    let samples: Vec<(i64, f64)> =
                        ts.iter().map(|&d| (clock + i64::from(d), f64::from(v) + f64::from(d))).collect();
                    clock += 300;
                    let out = head.append(&batch(&[(l, samples.clone())]), &NO_LIMITS).unwrap();
                    // Mirror the head's acceptance rules in the model.
                    let m = model.entry(s).or_default();
                    let mut appended = 0;
                    for (t, v) in samples {
                        match m.last() {
                            Some(&(lt, _)) if t <= lt => {}
                            _ => {
                                m.push((t, v.to_bits()));
                                appended += 1;
                            }
                        }
                    }
                    prop_assert_eq!(out.appended, appended);
                }
                Op::Restart => {
                    drop(head);
                    head = Head::open(o.clone()).unwrap().0;
                    check_exact(&head, &model)?;
                }
                Op::Crash { frac } => {
                    drop(head);
                    let wal_dir = dir.path().join("wal");
                    let segs = wal::list_segments(&wal_dir).unwrap();
                    let p = wal_dir.join(format!("{:08}", segs.last().unwrap()));
                    let len = std::fs::metadata(&p).unwrap().len();
                    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                    f.set_len((len as f64 * frac) as u64).unwrap();
                    drop(f);
                    head = Head::open(o.clone()).unwrap().0;
                    // What survived must be a prefix of each series' acknowledged samples;
                    // the model becomes what survived.
                    let got = all_samples(&head);
                    let mut survived = BTreeMap::new();
                    for (l, samples) in got {
                        let s: u8 = l.get("s").unwrap().parse().unwrap();
                        let m = model.get(&s).cloned().unwrap_or_default();
                        prop_assert!(samples.len() <= m.len());
                        prop_assert_eq!(&samples[..], &m[..samples.len()]);
                        survived.insert(s, samples);
                    }
                    model = survived;
                    clock += 1000;
                }
            }
        }
        drop(head);
        let (head, _) = Head::open(o).unwrap();
        check_exact(&head, &model)?;
    }
}

fn check_exact(head: &Head, model: &BTreeMap<u8, Vec<(i64, u64)>>) -> Result<(), TestCaseError> {
    let got: BTreeMap<u8, Vec<(i64, u64)>> = all_samples(head)
        .into_iter()
        .map(|(l, s)| (l.get("s").unwrap().parse().unwrap(), s))
        .collect();
    let want: BTreeMap<u8, Vec<(i64, u64)>> = model
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    prop_assert_eq!(got, want);
    Ok(())
}

#[test]
fn wal_checkpoint_then_replay() {
    let dir = tempfile::tempdir().unwrap();
    let a = labels(&[("__name__", "a")]);
    let b = labels(&[("__name__", "b")]);
    {
        let (head, _) = Head::open(opts(dir.path())).unwrap();
        head.append(
            &batch(&[
                (a.clone(), vec![(10, 1.0), (20, 2.0)]),
                (b.clone(), vec![(10, 1.0)]),
            ]),
            &NO_LIMITS,
        )
        .unwrap();
        let stats = head.checkpoint_wal(15).unwrap();
        assert_eq!(stats.series_kept, 2);
        assert_eq!(stats.samples_kept, 1);
        head.append(&batch(&[(a.clone(), vec![(30, 3.0)])]), &NO_LIMITS)
            .unwrap();
    }
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.series, 2);
    let got = head.select(0, 100, &[]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].samples, [Sample::new(20, 2.0), Sample::new(30, 3.0)]);
    // Series b survived without samples and accepts new ones under its old id.
    let out = head
        .append(&batch(&[(b.clone(), vec![(40, 1.0)])]), &NO_LIMITS)
        .unwrap();
    assert_eq!(out.series_created, 0);
}

proptest! {
    #[test]
    fn one_shot_hash_equals_model_hash(pairs in proptest::collection::btree_map("[a-z_]{1,8}", ".{0,12}", 0..12)) {
        let b = batch(&[(Labels::from_pairs(pairs), vec![(1, 1.0)])]);
        let sv = b.series(0);
        let mut buf = Vec::new();
        prop_assert_eq!(labels_hash(&sv, &mut buf), sv.labels_hash());
    }

    /// The shard contract: a stored series' hash, as a sharded selection computes it, is the
    /// labels' stable hash every other store (blocks, store-gateway, engine) shards by.
    #[test]
    fn stored_series_hash_equals_stable_hash(pairs in proptest::collection::btree_map("[a-z_]{1,8}", ".{0,12}", 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let (head, _) = Head::open(opts(dir.path())).unwrap();
        let l = Labels::from_pairs(pairs);
        head.append(&batch(&[(l.clone(), vec![(1, 1.0)])]), &NO_LIMITS).unwrap();
        let stored = head.index.matching(&[]);
        prop_assert_eq!(stored.len(), 1);
        let mut buf = Vec::new();
        prop_assert_eq!(head.index.stored_labels_hash(&stored[0], &mut buf), l.stable_hash());
    }
}

/// Two series over [0, 3 h] at 15 s, one of them ending after 40 minutes.
fn three_hours(head: &Head) -> (Labels, Labels) {
    let long = labels(&[("__name__", "m"), ("job", "long")]);
    let short = labels(&[("__name__", "m"), ("job", "short")]);
    for t in (0..=3 * 3_600_000).step_by(15_000) {
        let mut series = vec![(long.clone(), vec![(t, t as f64)])];
        if t < 2_400_000 {
            series.push((short.clone(), vec![(t, 1.0)]));
        }
        head.append(&batch(&series), &NO_LIMITS).unwrap();
    }
    (long, short)
}

#[test]
fn cut_block_moves_a_range_out_of_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(head.compactable_range(), None);
    let (long, short) = three_hours(&head);
    // 0..3h of data with 2h blocks: [0, 2h) is complete once the head reaches 3h.
    assert_eq!(head.compactable_range(), Some((0, 7_200_000)));
    let out = head
        .cut_block(
            &blocks,
            0,
            7_200_000,
            BlockOptions::for_tenant("t", "ingester", []),
            |_| Ok(()),
        )
        .unwrap();
    let meta = out.meta.unwrap();
    assert_eq!((meta.min_time, meta.max_time), (0, 7_200_000));
    assert_eq!(meta.stats.num_series, 2);
    assert_eq!(meta.stats.num_samples, 480 + 160);
    assert_eq!(out.truncated.series_removed, 1);
    assert_eq!(head.num_series(), 1);
    assert_eq!(head.min_time(), Some(7_200_000));
    assert_eq!(head.compactable_range(), None);

    // The block holds exactly the range; the head holds exactly the rest.
    let block = crate::block::Block::open(blocks.join(&meta.ulid)).unwrap();
    let in_block = block.select(i64::MIN, i64::MAX, &[]).unwrap();
    assert_eq!(in_block.len(), 2);
    assert_eq!(in_block[0].labels, long);
    assert_eq!(in_block[0].samples.len(), 480);
    assert_eq!(in_block[0].samples.last().unwrap().t, 7_200_000 - 15_000);
    assert_eq!(in_block[1].labels, short);
    let in_head = head.select(i64::MIN, i64::MAX, &[]);
    assert_eq!(in_head.len(), 1);
    assert_eq!(in_head[0].samples.len(), 241);
    assert_eq!(in_head[0].samples[0].t, 7_200_000);

    // Samples for the cut range are refused now; the removed series comes back as new.
    let out = head
        .append(
            &batch(&[(short.clone(), vec![(7_000_000, 1.0), (10_800_000, 2.0)])]),
            &NO_LIMITS,
        )
        .unwrap();
    assert_eq!(out.appended, 1);
    assert_eq!(out.series_created, 1);
    assert_eq!(out.rejected[0].reason, RejectReason::TooOld);

    // Replay after the checkpoint, told where the blocks end, rebuilds just the head.
    let expect = all_samples(&head);
    drop(head);
    let mut o = opts(dir.path());
    o.min_valid_time = 7_200_000;
    let (head, _) = Head::open(o).unwrap();
    assert_eq!(all_samples(&head), expect);
    assert_eq!(head.num_series(), 2);
}

#[test]
fn replay_without_checkpoint_skips_what_blocks_hold() {
    // A crash after the block was written but before the WAL checkpoint: the WAL still has
    // everything, and min_valid_time keeps the head from holding the block's samples twice.
    let dir = tempfile::tempdir().unwrap();
    {
        let (head, _) = Head::open(opts(dir.path())).unwrap();
        three_hours(&head);
    }
    let mut o = opts(dir.path());
    o.min_valid_time = 7_200_000;
    let (head, _) = Head::open(o).unwrap();
    assert_eq!(
        head.num_series(),
        1,
        "the series that ended before 2h is gone"
    );
    let s = head.select(i64::MIN, i64::MAX, &[]);
    assert_eq!(s[0].samples.first().unwrap().t, 7_200_000);
    assert_eq!(s[0].samples.len(), 241);
}

#[test]
fn flush_ranges_cover_the_head_in_aligned_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(head.first_flush_range(), None);
    let l = labels(&[("__name__", "m")]);
    head.append(&batch(&[(l.clone(), vec![(3_600_000, 1.0)])]), &NO_LIMITS)
        .unwrap();
    head.append(&batch(&[(l, vec![(9_000_000, 1.0)])]), &NO_LIMITS)
        .unwrap();
    let blocks = dir.path().join("b");
    std::fs::create_dir_all(&blocks).unwrap();
    let mut cut = Vec::new();
    while let Some((a, b)) = head.first_flush_range() {
        let out = head
            .cut_block(&blocks, a, b, BlockOptions::default(), |_| Ok(()))
            .unwrap();
        assert_eq!(out.meta.unwrap().stats.num_samples, 1);
        cut.push((a, b));
    }
    assert_eq!(cut, [(3_600_000, 7_200_000), (7_200_000, 9_000_001)]);
    assert_eq!(head.num_series(), 0);
    assert_eq!(head.first_flush_range(), None);
    assert_eq!(head.min_valid_time(), 9_000_001);
}

#[test]
fn flush_skips_empty_stretches_instead_of_walking_them() {
    // Samples 50 years apart: walking every 2 h range between them would be 219k cuts.
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let l = labels(&[("__name__", "m")]);
    let late = 50 * 365 * 86_400_000i64;
    head.append(&batch(&[(l.clone(), vec![(1_000, 1.0)])]), &NO_LIMITS)
        .unwrap();
    head.append(&batch(&[(l, vec![(late, 2.0)])]), &NO_LIMITS)
        .unwrap();
    let blocks = dir.path().join("b");
    std::fs::create_dir_all(&blocks).unwrap();
    let mut cuts = 0;
    while let Some((a, b)) = head.first_flush_range() {
        head.cut_block(&blocks, a, b, BlockOptions::default(), |_| Ok(()))
            .unwrap();
        cuts += 1;
        assert!(cuts <= 2, "walked an empty range");
    }
    assert_eq!(cuts, 2);
    assert_eq!(head.num_series(), 0);
}

#[test]
fn samples_outside_the_absolute_bounds_are_refused_and_ranges_never_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let l = labels(&[("__name__", "m")]);
    let out = head
        .append(
            &batch(&[(
                l.clone(),
                vec![
                    (i64::MIN, 1.0),
                    (i64::MIN + 1, 1.0),
                    (-1, 1.0),
                    (norn_model::MAX_SAMPLE_TIME_MS + 1, 1.0),
                    (i64::MAX, 1.0),
                ],
            )]),
            &NO_LIMITS,
        )
        .unwrap();
    assert_eq!(out.appended, 0);
    assert_eq!(
        out.rejected,
        [Rejection {
            series_index: 0,
            reason: RejectReason::OutOfBounds,
            samples: 5
        }]
    );
    assert_eq!(head.first_flush_range(), None);
    assert_eq!(head.compactable_range(), None);
    // The bounds themselves are fine, and so is every range computed from them.
    head.append(
        &batch(&[(l, vec![(0, 1.0), (norn_model::MAX_SAMPLE_TIME_MS, 2.0)])]),
        &NO_LIMITS,
    )
    .unwrap();
    assert_eq!(head.first_flush_range(), Some((0, 7_200_000)));
    assert_eq!(head.compactable_range(), Some((0, 7_200_000)));
}

#[test]
fn appends_racing_a_truncation_are_never_lost() {
    // Series are emptied and removed while appenders keep writing to them; every accepted
    // sample must be in the head (or rejected as too old), never in a removed series.
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let head = Arc::new(head);
    let l = |i: usize| labels(&[("__name__", "m"), ("i", &i.to_string())]);
    let accepted = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for w in 0..2 {
            let head = Arc::clone(&head);
            let accepted = Arc::clone(&accepted);
            scope.spawn(move || {
                for t in 0..400i64 {
                    let series: Vec<_> = (0..20)
                        .filter(|i| i % 2 == w)
                        .map(|i| (l(i), vec![(t * 1000, 1.0)]))
                        .collect();
                    let out = head.append(&batch(&series), &NO_LIMITS).unwrap();
                    accepted.fetch_add(out.appended, Ordering::Relaxed);
                }
            });
        }
        let head = Arc::clone(&head);
        scope.spawn(move || {
            for k in 0..40 {
                head.truncate(k * 10_000);
                std::thread::yield_now();
            }
        });
    });
    // Truncation works on whole chunks: a chunk reaching past the last truncation point
    // (390 s) keeps its older samples, so how many of those survive depends on how far the
    // appenders got before the truncations (it differs under load). What holds for every
    // interleaving: each series keeps a contiguous run of its samples ending at the last one
    // (nothing accepted went missing in the middle, none landed in a removed series), that
    // run covers every sample at or after 390 s, and it starts no earlier than one chunk
    // (120 samples) before 390 s.
    let series = head.select(i64::MIN, i64::MAX, &[]);
    assert_eq!(series.len(), 20, "every series is still in the head");
    let mut in_head = 0;
    for s in &series {
        let ts: Vec<i64> = s.samples.iter().map(|x| x.t).collect();
        let first = ts[0];
        let expected: Vec<i64> = (first / 1000..400).map(|t| t * 1000).collect();
        assert_eq!(ts, expected, "{}: a contiguous run up to 399 s", s.labels);
        assert!(first <= 390_000, "{}: starts at {first}", s.labels);
        assert!(
            first >= 390_000 - 120_000,
            "{}: starts at {first}",
            s.labels
        );
        in_head += ts.len();
    }
    assert!(accepted.load(Ordering::Relaxed) >= in_head);
}

#[test]
fn a_block_never_holds_samples_outside_its_range() {
    // A forced flush cuts at the newest sample + 1, inside an open chunk that later appends
    // continue: the block must take only its part of that chunk.
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let l = labels(&[("__name__", "m")]);
    let samples: Vec<(i64, f64)> = (0..10).map(|i| (i * 1000, i as f64)).collect();
    head.append(&batch(&[(l.clone(), samples)]), &NO_LIMITS)
        .unwrap();
    let meta = head
        .write_block(dir.path(), 2000, 5000, BlockOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(meta.stats.num_samples, 3);
    let block = crate::block::Block::open(dir.path().join(&meta.ulid)).unwrap();
    block.verify().unwrap();
    let got = block.select(i64::MIN, i64::MAX, &[]).unwrap();
    let ts: Vec<i64> = got[0].samples.iter().map(|s| s.t).collect();
    assert_eq!(ts, [2000, 3000, 4000]);
}

#[test]
fn open_chunks_spilled_to_disk_read_back_exactly_and_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.fsync = FsyncPolicy::Never;
    let (head, _) = Head::open(o).unwrap();
    // Noisy values take ~9 bytes a sample, so every open chunk spills many pieces and the
    // spill log's write buffer is flushed to its files many times over.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f64::from_bits(x >> 2)
    };
    let names: Vec<Labels> = (0..2000)
        .map(|i| labels(&[("__name__", "m"), ("i", &i.to_string())]))
        .collect();
    let mut want: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
    for step in 0..100i64 {
        let series: Vec<(Labels, Vec<(i64, f64)>)> = names
            .iter()
            .map(|l| (l.clone(), vec![(step * 15_000, noise())]))
            .collect();
        for (l, s) in &series {
            want.entry(l.clone())
                .or_default()
                .extend(s.iter().map(|&(t, v)| (t, v.to_bits())));
        }
        head.append(&batch(&series), &NO_LIMITS).unwrap();
        if step == 50 {
            // Mid-chunk: every open chunk is spilled pieces plus its tail.
            let got: BTreeMap<_, _> = all_samples(&head).into_iter().collect();
            let half: BTreeMap<_, _> = want.clone();
            assert!(got == half, "open chunks read back differently mid-way");
        }
    }
    assert!(head.memory().spill_files >= 1);
    let got: BTreeMap<_, _> = all_samples(&head).into_iter().collect();
    assert!(got == want, "open chunks read back differently");
    // Reopening replays the WAL into a fresh spill directory.
    drop(head);
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let got: BTreeMap<_, _> = all_samples(&head).into_iter().collect();
    assert!(got == want, "replayed head differs");
    // Dropping every chunk releases every piece: at most the file being written remains.
    head.truncate(i64::MAX);
    assert_eq!(head.num_series(), 0);
    assert!(
        head.memory().spill_files <= 1,
        "{}",
        head.memory().spill_files
    );
}

#[test]
fn a_forced_flush_leaves_no_spill_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let names: Vec<Labels> = (0..500)
        .map(|i| labels(&[("__name__", "m"), ("i", &i.to_string())]))
        .collect();
    // An hour of noisy samples crossing a 2 h boundary, as a flush of a live head sees.
    for step in 0..240i64 {
        let t = 7_200_000 - 1_800_000 + step * 15_000;
        let series: Vec<(Labels, Vec<(i64, f64)>)> = names
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), vec![(t, (t as f64).sin() * i as f64 + 0.1)]))
            .collect();
        head.append(&batch(&series), &NO_LIMITS).unwrap();
    }
    assert!(head.memory().spill_files > 0);
    while let Some((mint, maxt)) = head.first_flush_range() {
        head.cut_block(
            &blocks,
            mint,
            maxt,
            BlockOptions::for_tenant("t", "ingester", []),
            |_| Ok(()),
        )
        .unwrap();
    }
    assert_eq!(head.num_series(), 0);
    assert_eq!(head.memory().spill_files, 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("head_spill"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_cut_failing_at_any_io_step_loses_nothing_and_is_retried() {
    use crate::fault;
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    three_hours(&head);
    let expect = all_samples(&head);
    let range = head.compactable_range().unwrap();
    let bound = head.min_valid_time();
    let mut step = 0;
    let meta = loop {
        fault::fail_at(Some(step));
        let res = head.cut_block(
            &blocks,
            range.0,
            range.1,
            BlockOptions::for_tenant("t", "ingester", []),
            |_| Ok(()),
        );
        let fired = fault::fired();
        fault::fail_at(None);
        // Once the block is durable and published, a failing WAL checkpoint does not fail
        // the cut: the block holds the data.
        if let Ok(out) = res {
            break out.meta.unwrap();
        }
        assert!(fired, "step {step}: an error without a fault");
        // The head still owns the whole range: nothing dropped, the bound back where it was,
        // the same range due again, and no block (or half-built one) left behind.
        assert_eq!(all_samples(&head), expect, "step {step}");
        assert_eq!(head.min_valid_time(), bound, "step {step}");
        assert_eq!(head.compactable_range(), Some(range), "step {step}");
        assert_eq!(
            std::fs::read_dir(&blocks).unwrap().count(),
            0,
            "step {step}"
        );
        step += 1;
    };
    assert!(step > 10, "only {step} I/O steps were exercised");
    // The retry that succeeded holds the range; block and head together are everything.
    let block = crate::block::Block::open(blocks.join(&meta.ulid)).unwrap();
    let mut together: BTreeMap<Labels, Vec<(i64, u64)>> = all_samples(&head).into_iter().collect();
    for s in block.select(i64::MIN, i64::MAX, &[]).unwrap() {
        let e = together.entry(s.labels.clone()).or_default();
        e.extend(s.samples.iter().map(|x| (x.t, x.v.to_bits())));
        e.sort();
    }
    assert_eq!(together, expect.into_iter().collect::<BTreeMap<_, _>>());
}

#[test]
fn a_cut_whose_publish_fails_removes_the_block_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    three_hours(&head);
    let expect = all_samples(&head);
    let range = head.compactable_range().unwrap();
    let err = head
        .cut_block(&blocks, range.0, range.1, BlockOptions::default(), |_| {
            Err(TsdbError::InvalidOption("publish refused".into()))
        })
        .unwrap_err();
    assert!(err.to_string().contains("publish refused"));
    assert_eq!(all_samples(&head), expect);
    assert_eq!(std::fs::read_dir(&blocks).unwrap().count(), 0);
    assert_eq!(head.compactable_range(), Some(range));
    assert_eq!(head.min_valid_time(), i64::MIN, "the bound is back down");
}

#[test]
fn a_wal_write_error_is_recovered_from_and_loses_nothing_acknowledged() {
    use crate::fault;
    let dir = tempfile::tempdir().unwrap();
    let old = labels(&[("__name__", "m"), ("s", "old")]);
    let new = labels(&[("__name__", "m"), ("s", "new")]);
    {
        let (head, _) = Head::open(opts(dir.path())).unwrap();
        head.append(&batch(&[(old.clone(), vec![(1_000, 1.0)])]), &NO_LIMITS)
            .unwrap();
        // The disk fails in the middle of the write that creates `new` (half of it lands).
        fault::fail_at(Some(0));
        let err = head
            .append(&batch(&[(new.clone(), vec![(2_000, 2.0)])]), &NO_LIMITS)
            .unwrap_err();
        assert!(fault::fired());
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(head.wal_broken());

        // The first recovery attempt fails too; the next one is throttled.
        fault::fail_at(Some(0));
        let err = head
            .append(&batch(&[(new.clone(), vec![(3_000, 3.0)])]), &NO_LIMITS)
            .unwrap_err();
        assert!(fault::fired());
        assert!(matches!(err, TsdbError::WalBroken), "{err}");
        let err = head
            .append(&batch(&[(new.clone(), vec![(3_000, 3.0)])]), &NO_LIMITS)
            .unwrap_err();
        assert!(matches!(err, TsdbError::WalBroken), "{err}");

        // Once the disk works again, writes resume on their own, with no restart.
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let out = head
            .append(
                &batch(&[
                    (new.clone(), vec![(4_000, 4.0)]),
                    (old.clone(), vec![(4_000, 4.0)]),
                ]),
                &NO_LIMITS,
            )
            .unwrap();
        assert_eq!(out.appended, 2);
        assert!(!head.wal_broken());
        assert_eq!(head.metrics.wal_broken.get(), 0);
        assert_eq!(head.metrics.wal_recoveries.get(), 1);
    }
    // Everything acknowledged is replayed: `new` was created by the failed write, and its
    // series record made it into the WAL only through the relog after recovery.
    let (head, stats) = Head::open(opts(dir.path())).unwrap();
    assert_eq!(stats.wal.corruptions, 0, "the torn write was cut off");
    assert_eq!(stats.unknown_series_samples, 0);
    let got: BTreeMap<Labels, Vec<(i64, u64)>> = all_samples(&head).into_iter().collect();
    assert_eq!(
        got[&old],
        [(1_000, 1f64.to_bits()), (4_000, 4f64.to_bits())]
    );
    assert_eq!(got[&new], [(4_000, 4f64.to_bits())]);
}

#[test]
fn a_select_within_a_sample_budget_stops_reading_once_it_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(opts(dir.path())).unwrap();
    let series: Vec<(Labels, Vec<(i64, f64)>)> = (0..100)
        .map(|i| {
            (
                labels(&[("__name__", "m"), ("i", &format!("{i:03}"))]),
                (0..10).map(|k| (k * 15_000, k as f64)).collect(),
            )
        })
        .collect();
    head.append(&batch(&series), &NO_LIMITS).unwrap();

    let budget = norn_model::SampleBudget::new(250);
    let got = head.select_within(i64::MIN, i64::MAX, &[], &budget);
    // It read 26 series (260 samples) and stopped: not the 1,000 samples of the answer. (Read
    // in parts on several threads, each part may pass the budget by one series.)
    assert!(got.len() <= 25, "{} series kept", got.len());
    assert!((260..=270).contains(&budget.used()), "{}", budget.used());
    assert!(budget.exhausted());

    // Through the Queryable, the spent budget is an error, never a partial answer.
    let q = HeadQueryable(Arc::new(head));
    let budget = norn_model::SampleBudget::new(250);
    let err = futures_lite_block_on(q.select_within(i64::MIN, i64::MAX, &[], &budget));
    assert!(
        matches!(err, Err(StorageError::Limit(ref m)) if m == norn_model::TOO_MANY_SAMPLES),
        "{err:?}"
    );
    let budget = norn_model::SampleBudget::new(1_000);
    let all = futures_lite_block_on(q.select_within(i64::MIN, i64::MAX, &[], &budget)).unwrap();
    assert_eq!(all.len(), 100);
}

/// Runs a future that never waits (the head's select is synchronous).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}
