//! Model-based round trip of the block writer and reader: random series (random label sets)
//! with random sample streams (increasing timestamps, any f64 bit pattern) are written with
//! [`write_block`], reopened with [`Block::open`], verified, and queried over random ranges
//! with random `=`, `!=`, `=~`, `!~` matchers. Every answer must equal what a brute-force
//! scan of the input gives, values compared by their bits.

use std::collections::{BTreeMap, BTreeSet};

use norn_model::{Label, Labels, MatchType, Matcher, Sample, Series, matches_all};
use norn_tsdb::SeriesChunks;
use norn_tsdb::block::{Block, BlockOptions, chunks_from_samples, write_block};
use proptest::prelude::*;

const NAMES: &[&str] = &["__name__", "a", "b", "job", "zz"];
/// Matcher names include one no series has.
const MATCH_NAMES: &[&str] = &["__name__", "a", "b", "job", "zz", "missing"];
const VALUES: &[&str] = &["", "a", "b", "ab", "c", "é", "zz"];
const REGEXES: &[&str] = &[
    ".*", ".+", "a.*", "a|b", "(a|ab)", "[bc].*", "", "é.*", "zz|", "c|é|b",
];
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

fn label_set() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(prop::sample::select(NAMES), "[abcé]{1,3}", 1..5).prop_map(|m| {
        Labels::new(
            m.into_iter()
                .map(|(n, v)| Label::new(n, v))
                .collect::<Vec<_>>(),
        )
    })
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => any::<u64>().prop_map(f64::from_bits),
        3 => (-100_000i64..100_000).prop_map(|x| x as f64 / 100.0),
        2 => Just(1.0),
        1 => Just(f64::NAN),
        1 => Just(f64::from_bits(STALE_NAN_BITS)),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
    ]
}

fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 14_990i64..15_010,
        2 => 1i64..100,
        1 => 1i64..20_000_000,
        1 => Just(15_000i64),
    ]
}

fn samples() -> impl Strategy<Value = Vec<Sample>> {
    (
        -1_000_000_000_000i64..2_000_000_000_000,
        prop::collection::vec((delta(), value()), 1..400),
    )
        .prop_map(|(start, steps)| {
            let mut t = start;
            steps
                .into_iter()
                .map(|(d, v)| {
                    t += d;
                    Sample::new(t, v)
                })
                .collect()
        })
}

/// (range fractions, matchers as (name, kind, value) indexes).
type Query = (u16, u16, Vec<(usize, u8, usize)>);

fn query() -> impl Strategy<Value = Query> {
    (
        any::<u16>(),
        any::<u16>(),
        prop::collection::vec((0..MATCH_NAMES.len(), 0u8..4, 0usize..64), 0..4),
    )
}

fn matcher(name: usize, kind: u8, value: usize) -> Matcher {
    let name = MATCH_NAMES[name];
    match kind {
        0 => Matcher::new(MatchType::Equal, name, VALUES[value % VALUES.len()]),
        1 => Matcher::new(MatchType::NotEqual, name, VALUES[value % VALUES.len()]),
        2 => Matcher::new(MatchType::Regex, name, REGEXES[value % REGEXES.len()]),
        _ => Matcher::new(MatchType::NotRegex, name, REGEXES[value % REGEXES.len()]),
    }
    .unwrap()
}

fn bits(series: &[Series]) -> Vec<(Labels, Vec<(i64, u64)>)> {
    series
        .iter()
        .map(|s| {
            (
                s.labels.clone(),
                s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn block_answers_like_a_brute_force_scan(
        raw in prop::collection::vec((label_set(), samples()), 1..16),
        per_chunk in prop_oneof![Just(120usize), 1usize..300],
        segment_size in prop_oneof![Just(512u64 << 20), 64u64..4096],
        queries in prop::collection::vec(query(), 1..10),
    ) {
        // The writer wants series sorted by labels and unique.
        let model: BTreeMap<Labels, Vec<Sample>> = raw.into_iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let series: Vec<SeriesChunks> = model
            .iter()
            .map(|(l, ss)| SeriesChunks {
                labels: l.clone(),
                chunks: chunks_from_samples(ss, per_chunk).unwrap(),
            })
            .collect();
        let opts = BlockOptions { segment_size, ..BlockOptions::default() };
        let meta = write_block(dir.path(), series, opts).unwrap();
        let block = Block::open(dir.path().join(&meta.ulid)).unwrap();
        block.verify().unwrap();

        let nsamples: usize = model.values().map(Vec::len).sum();
        prop_assert_eq!(meta.stats.num_samples, nsamples as u64);
        prop_assert_eq!(meta.stats.num_series, model.len() as u64);
        let lo = model.values().map(|s| s[0].t).min().unwrap();
        let hi = model.values().map(|s| s[s.len() - 1].t).max().unwrap();
        prop_assert_eq!((meta.min_time, meta.max_time), (lo, hi + 1));

        // Everything, with no matchers.
        let all: Vec<Series> = model
            .iter()
            .map(|(l, s)| Series { labels: l.clone(), samples: s.clone() })
            .collect();
        prop_assert_eq!(bits(&block.select(i64::MIN, i64::MAX, &[]).unwrap()), bits(&all));

        let names: BTreeSet<&str> = model.keys().flat_map(|l| l.iter().map(|l| l.name.as_str())).collect();
        prop_assert_eq!(
            block.label_names(&[]).unwrap(),
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );
        for name in MATCH_NAMES {
            let want: BTreeSet<&str> = model.keys().filter_map(|l| l.get(name)).collect();
            prop_assert_eq!(
                block.label_values(name, &[]).unwrap(),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            );
        }

        let span = (hi - lo).max(1);
        for (a, b, ms) in queries {
            // Ranges reach a quarter of the span beyond either end.
            let at = |f: u16| lo - span / 4 + ((span as i128 * 3 / 2 * i128::from(f)) / 65_535) as i64;
            let (mint, maxt) = (at(a.min(b)), at(a.max(b)));
            let matchers: Vec<Matcher> = ms.iter().map(|&(n, k, v)| matcher(n, k, v)).collect();
            let matching: Vec<(&Labels, &Vec<Sample>)> = model
                .iter()
                .filter(|(l, _)| matches_all(&matchers, |n| l.get(n)))
                .collect();
            let want: Vec<Series> = matching
                .iter()
                .map(|(l, ss)| Series {
                    labels: (*l).clone(),
                    samples: ss.iter().filter(|s| s.t >= mint && s.t <= maxt).copied().collect(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect();
            let got = block.select(mint, maxt, &matchers).unwrap();
            prop_assert_eq!(bits(&got), bits(&want), "select [{}, {}] {:?}", mint, maxt, matchers);

            let want_names: BTreeSet<&str> = matching
                .iter()
                .flat_map(|(l, _)| l.iter().map(|l| l.name.as_str()))
                .collect();
            if !matchers.is_empty() {
                prop_assert_eq!(
                    block.label_names(&matchers).unwrap(),
                    want_names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "label_names {:?}", matchers
                );
                for name in ["a", "job", "missing"] {
                    let want: BTreeSet<&str> = matching.iter().filter_map(|(l, _)| l.get(name)).collect();
                    prop_assert_eq!(
                        block.label_values(name, &matchers).unwrap(),
                        want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                        "label_values {} {:?}", name, matchers
                    );
                }
            }

            // Raw chunks for the same selection overlap it and hold the selected samples.
            let chunks = block.series_chunks(mint, maxt, &matchers).unwrap();
            let from_chunks: Vec<Series> = chunks
                .iter()
                .map(|sc| {
                    let samples = sc
                        .chunks
                        .iter()
                        .flat_map(|c| norn_tsdb::chunkenc::XorIterator::new(&c.data))
                        .filter(|(t, _)| *t >= mint && *t <= maxt)
                        .map(|(t, v)| Sample::new(t, v))
                        .collect();
                    Series { labels: sc.labels.clone(), samples }
                })
                // A chunk can overlap the range with no sample inside it (a gap).
                .filter(|s| !s.samples.is_empty())
                .collect();
            prop_assert_eq!(bits(&from_chunks), bits(&want), "series_chunks [{}, {}] {:?}", mint, maxt, matchers);
        }
    }
}
