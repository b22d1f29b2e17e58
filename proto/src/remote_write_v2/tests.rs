//! Remote-write 2.0 decoder tests: requests built with the prost types generated from the 2.0
//! proto (as a sender encodes them), hand-written wire bytes for what prost cannot produce
//! (unpacked refs, symbols after series), and a proptest over random symbol tables.

use super::*;
use crate::prometheus_write_v2 as v2;
use proptest::prelude::*;
use prost::Message;

fn decode(req: &v2::Request) -> Result<WriteBatch, DecodeError> {
    decode_write_request_v2(Bytes::from(req.encode_to_vec()))
}

fn sample(t: i64, v: f64) -> v2::Sample {
    v2::Sample {
        value: v,
        timestamp: t,
        start_timestamp: 0,
    }
}

fn labels(b: &WriteBatch, i: usize) -> Vec<(&str, &str)> {
    b.series(i).labels().collect()
}

/// The spec's own example of decoding: series labels are `(symbols[refs[2k]],
/// symbols[refs[2k+1]])`, with `symbols[0] == ""` and help/unit ref 0 meaning "empty".
fn spec_example() -> v2::Request {
    v2::Request {
        symbols: [
            "",
            "__name__",
            "http_requests_total",
            "job",
            "api-server",
            "code",
            "200",
            "Total HTTP requests.",
            "requests",
            "500",
        ]
        .map(String::from)
        .to_vec(),
        timeseries: vec![
            v2::TimeSeries {
                labels_refs: vec![1, 2, 5, 6, 3, 4],
                samples: vec![sample(1000, 1.0), sample(2000, 2.0)],
                metadata: Some(v2::Metadata {
                    r#type: v2::metadata::MetricType::Counter as i32,
                    help_ref: 7,
                    unit_ref: 8,
                }),
                ..Default::default()
            },
            v2::TimeSeries {
                labels_refs: vec![1, 2, 5, 9, 3, 4],
                samples: vec![sample(1000, 5.0)],
                metadata: Some(v2::Metadata {
                    r#type: v2::metadata::MetricType::Counter as i32,
                    help_ref: 7,
                    unit_ref: 8,
                }),
                ..Default::default()
            },
        ],
    }
}

#[test]
fn decodes_the_spec_example() {
    let b = decode(&spec_example()).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(
        labels(&b, 0),
        [
            ("__name__", "http_requests_total"),
            ("code", "200"),
            ("job", "api-server")
        ]
    );
    assert_eq!(labels(&b, 1)[1], ("code", "500"));
    assert_eq!(
        b.series(0).samples(),
        &[Sample::new(1000, 1.0), Sample::new(2000, 2.0)]
    );
    assert_eq!(b.series(1).samples(), &[Sample::new(1000, 5.0)]);
    // Two series of one family with the same metadata: one entry.
    assert_eq!(
        b.metadata(),
        &[MetricMetadata {
            metric_family_name: "http_requests_total".into(),
            metric_type: MetricType::Counter,
            help: "Total HTTP requests.".into(),
            unit: "requests".into(),
        }]
    );
    assert_eq!((b.skipped_histograms, b.skipped_exemplars), (0, 0));
}

#[test]
fn labels_borrow_the_body() {
    let body = Bytes::from(spec_example().encode_to_vec());
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    let b = decode_write_request_v2(body.clone()).unwrap();
    for (n, v) in b.series(0).label_bytes() {
        assert!(range.contains(&(n.as_ptr() as usize)), "name copied");
        assert!(range.contains(&(v.as_ptr() as usize)), "value copied");
    }
}

#[test]
fn stale_marker_bits_survive() {
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let mut req = spec_example();
    req.timeseries[0].samples = vec![sample(3000, stale)];
    let b = decode(&req).unwrap();
    assert_eq!(b.series(0).samples()[0].v.to_bits(), 0x7ff0_0000_0000_0002);
}

#[test]
fn histograms_and_exemplars_are_counted_not_stored() {
    let mut req = spec_example();
    req.timeseries[1].samples.clear();
    req.timeseries[1].histograms = vec![v2::Histogram::default(), v2::Histogram::default()];
    req.timeseries[0].exemplars = vec![v2::Exemplar {
        labels_refs: vec![],
        value: 1.0,
        timestamp: 1000,
    }];
    let b = decode(&req).unwrap();
    assert_eq!(b.skipped_histograms, 2);
    assert_eq!(b.skipped_exemplars, 1);
    assert_eq!(b.num_samples(), 2);
}

#[test]
fn start_timestamps_go_with_their_series() {
    let mut req = spec_example();
    // v3.9+: per sample (the first sample's is the series'); ≤ v3.8: series-level field 6.
    req.timeseries[0].samples[0].start_timestamp = 500;
    req.timeseries[0].samples[1].start_timestamp = 1500;
    req.timeseries[0].created_timestamp = 400;
    req.timeseries[1].created_timestamp = 300;
    let b = decode(&req).unwrap();
    assert_eq!(b.series(0).start_timestamp(), Some(500));
    assert_eq!(b.series(1).start_timestamp(), Some(300));
    assert_eq!(
        b.series(0).samples(),
        &[Sample::new(1000, 1.0), Sample::new(2000, 2.0)]
    );
    assert_eq!(
        decode(&spec_example()).unwrap().series(0).start_timestamp(),
        None
    );
    // And they survive the re-encoding for the ingester.
    let again = crate::decode_write_request(Bytes::from(crate::encode_write_request(&b))).unwrap();
    assert_eq!(again.series(0).start_timestamp(), Some(500));
    assert_eq!(again.series(1).start_timestamp(), Some(300));
}

#[test]
fn metadata_refs_zero_mean_empty_and_unspecified_is_dropped() {
    let mut req = spec_example();
    req.timeseries[0].metadata = Some(v2::Metadata {
        r#type: v2::metadata::MetricType::Gauge as i32,
        help_ref: 0,
        unit_ref: 0,
    });
    req.timeseries[1].metadata = Some(v2::Metadata::default());
    let b = decode(&req).unwrap();
    assert_eq!(b.metadata().len(), 1);
    assert_eq!(b.metadata()[0].metric_type, MetricType::Gauge);
    assert_eq!(b.metadata()[0].help, "");
}

#[test]
fn classic_histogram_and_summary_metadata_is_named_by_family() {
    let mut req = v2::Request {
        symbols: [
            "",
            "__name__",
            "rpc_seconds_bucket",
            "rpc_seconds_sum",
            "rpc_seconds_count",
            "le",
            "+Inf",
            "lat_sum",
            "_sum",
            "Latency.",
        ]
        .map(String::from)
        .to_vec(),
        timeseries: vec![],
    };
    let md = |t: v2::metadata::MetricType| {
        Some(v2::Metadata {
            r#type: t as i32,
            help_ref: 9,
            unit_ref: 0,
        })
    };
    use v2::metadata::MetricType as T;
    for (refs, t) in [
        (vec![1, 2, 5, 6], T::Histogram),
        (vec![1, 3], T::Histogram),
        (vec![1, 4], T::Histogram),
        (vec![1, 7], T::Summary),
        // A counter keeps its name; a bare suffix is not trimmed to nothing.
        (vec![1, 3], T::Counter),
        (vec![1, 8], T::Summary),
    ] {
        req.timeseries.push(v2::TimeSeries {
            labels_refs: refs,
            samples: vec![sample(1, 1.0)],
            metadata: md(t),
            ..Default::default()
        });
    }
    let b = decode(&req).unwrap();
    let names: Vec<(&str, MetricType)> = b
        .metadata()
        .iter()
        .map(|m| (m.metric_family_name.as_str(), m.metric_type))
        .collect();
    assert_eq!(
        names,
        [
            ("rpc_seconds", MetricType::Histogram),
            ("rpc_seconds", MetricType::Histogram),
            ("rpc_seconds", MetricType::Histogram),
            ("lat", MetricType::Summary),
            ("rpc_seconds_sum", MetricType::Counter),
            ("_sum", MetricType::Summary),
        ]
    );
}

fn invalid(req: &v2::Request) -> String {
    match decode(req) {
        Err(DecodeError::InvalidV2(m)) => m,
        other => panic!("expected InvalidV2, got {other:?}"),
    }
}

#[test]
fn out_of_range_refs_are_refused() {
    let mut req = spec_example();
    req.timeseries[1].labels_refs[3] = 10;
    assert!(invalid(&req).contains("reference 10 is out of range"));

    let mut req = spec_example();
    req.timeseries[0].labels_refs[0] = u32::MAX;
    assert!(invalid(&req).contains("out of range"));

    let mut req = spec_example();
    req.timeseries[0].metadata.as_mut().unwrap().help_ref = 99;
    assert!(invalid(&req).contains("metadata help reference 99"));

    let mut req = spec_example();
    req.timeseries[0].metadata.as_mut().unwrap().unit_ref = 10;
    assert!(invalid(&req).contains("metadata unit"));
}

#[test]
fn exemplar_refs_are_checked_too() {
    let mut req = spec_example();
    req.timeseries[0].exemplars = vec![v2::Exemplar {
        labels_refs: vec![3, 42],
        value: 1.0,
        timestamp: 1,
    }];
    assert!(invalid(&req).contains("exemplar label reference 42 is out of range"));
    req.timeseries[0].exemplars[0].labels_refs = vec![3];
    assert!(invalid(&req).contains("exemplar's labels_refs has an odd number"));
    req.timeseries[0].exemplars[0].labels_refs = vec![3, 4];
    assert_eq!(decode(&req).unwrap().skipped_exemplars, 1);
}

#[test]
fn odd_length_refs_are_refused() {
    let mut req = spec_example();
    req.timeseries[0].labels_refs.pop();
    assert!(invalid(&req).contains("odd number"));
}

#[test]
fn ref_zero_as_a_name_is_refused() {
    let mut req = spec_example();
    req.timeseries[0].labels_refs[2] = 0;
    assert!(invalid(&req).contains("reference 0"));
}

#[test]
fn first_symbol_must_be_empty() {
    let mut req = spec_example();
    req.symbols[0] = "oops".into();
    assert!(invalid(&req).contains("symbols[0]"));
    // A huge first symbol is not echoed back whole.
    req.symbols[0] = "x".repeat(1 << 20);
    let m = invalid(&req);
    assert!(m.len() < 300 && m.contains("1048576-byte"), "{}", m.len());
}

#[test]
fn empty_symbol_table_with_labels_is_out_of_range() {
    let req = v2::Request {
        symbols: vec![],
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2],
            samples: vec![sample(1, 1.0)],
            ..Default::default()
        }],
    };
    assert!(invalid(&req).contains("out of range (the request has 0 symbols)"));
}

#[test]
fn value_ref_zero_is_an_empty_value() {
    // An empty value means "label absent"; the distributor drops it as it does for 1.0.
    let mut req = spec_example();
    req.timeseries[0].labels_refs[3] = 0;
    let b = decode(&req).unwrap();
    assert_eq!(labels(&b, 0)[1], ("code", ""));
}

#[test]
fn a_v1_body_is_not_silently_empty() {
    let v1 = crate::prometheus::WriteRequest {
        timeseries: vec![crate::prometheus::TimeSeries {
            labels: vec![crate::prometheus::Label {
                name: "__name__".into(),
                value: "up".into(),
            }],
            samples: vec![crate::prometheus::Sample {
                value: 1.0,
                timestamp: 1,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let err = decode_write_request_v2(Bytes::from(v1.encode_to_vec())).unwrap_err();
    assert!(matches!(err, DecodeError::NoKnownFields { .. }), "{err:?}");
    // And the other way round: a 2.0 body read as 1.0.
    let err = crate::decode_write_request(Bytes::from(spec_example().encode_to_vec())).unwrap_err();
    assert!(matches!(err, DecodeError::NoKnownFields { .. }), "{err:?}");
    // An empty body is an empty request in both versions.
    assert!(decode_write_request_v2(Bytes::new()).unwrap().is_empty());
    assert!(
        crate::decode_write_request(Bytes::new())
            .unwrap()
            .is_empty()
    );
}

/// Hand-written wire bytes: symbols after the series, label refs unpacked and split.
#[test]
fn field_order_and_unpacked_refs() {
    let mut series = Vec::new();
    // labels_refs unpacked: key (1<<3|0) then varint, four times.
    for r in [1u8, 2, 3, 4] {
        series.extend_from_slice(&[0x08, r]);
    }
    // one sample: value 2.5 at t=7
    let mut s = vec![0x09];
    s.extend_from_slice(&2.5f64.to_bits().to_le_bytes());
    s.extend_from_slice(&[0x10, 7]);
    series.push(0x12);
    series.push(s.len() as u8);
    series.extend_from_slice(&s);

    let mut body = vec![0x2a, series.len() as u8];
    body.extend_from_slice(&series);
    for sym in ["", "__name__", "up", "job", "a"] {
        body.push(0x22);
        body.push(sym.len() as u8);
        body.extend_from_slice(sym.as_bytes());
    }
    // prost reads the same bytes the same way (so they are valid 2.0).
    let p = v2::Request::decode(&body[..]).unwrap();
    assert_eq!(p.timeseries[0].labels_refs, [1, 2, 3, 4]);
    let b = decode_write_request_v2(Bytes::from(body)).unwrap();
    assert_eq!(labels(&b, 0), [("__name__", "up"), ("job", "a")]);
    assert_eq!(b.series(0).samples(), &[Sample::new(7, 2.5)]);
}

#[test]
fn invalid_utf8_symbol_is_refused() {
    let body = vec![0x22, 0x00, 0x22, 0x02, 0xff, 0xfe];
    assert!(matches!(
        decode_write_request_v2(Bytes::from(body)),
        Err(DecodeError::InvalidV2(_))
    ));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for body in [
        &b"\xff\xff\xff"[..],
        b"\x22\x05abc",
        b"\x2a\x02\x0a\x09",
        b"\x2a\x03\x0a\x01\x05",
    ] {
        assert!(
            decode_write_request_v2(Bytes::copy_from_slice(body)).is_err(),
            "{body:?}"
        );
    }
}

/// Reference decoding with prost, for the proptest: what the labels must be, or `None` when
/// a ref is invalid.
type RefSeries = (Vec<(String, String)>, Vec<(i64, u64)>);

fn reference(req: &v2::Request) -> Option<Vec<RefSeries>> {
    if req.symbols.first().is_some_and(|s| !s.is_empty()) {
        return None;
    }
    let mut out = Vec::new();
    for ts in &req.timeseries {
        if ts.labels_refs.len() % 2 == 1 {
            return None;
        }
        let mut ls = Vec::new();
        for p in ts.labels_refs.chunks(2) {
            if p[0] == 0 {
                return None;
            }
            let n = req.symbols.get(p[0] as usize)?;
            let v = req.symbols.get(p[1] as usize)?;
            ls.push((n.clone(), v.clone()));
        }
        for e in &ts.exemplars {
            if e.labels_refs.len() % 2 == 1 {
                return None;
            }
            for &r in &e.labels_refs {
                req.symbols.get(r as usize)?;
            }
        }
        if let Some(m) = &ts.metadata {
            req.symbols.get(m.help_ref as usize)?;
            req.symbols.get(m.unit_ref as usize)?;
        }
        let ss = ts
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value.to_bits()))
            .collect();
        out.push((ls, ss));
    }
    Some(out)
}

fn request() -> impl Strategy<Value = v2::Request> {
    let symbols = prop_oneof![
        4 => proptest::collection::vec(".{0,5}", 0..8).prop_map(|mut s| {
            s.insert(0, String::new());
            s
        }),
        1 => proptest::collection::vec(".{0,5}", 0..8),
    ];
    let series = (
        proptest::collection::vec(0u32..12, 0..8),
        proptest::collection::vec((any::<i64>(), any::<f64>(), any::<i64>()), 0..4),
        proptest::option::of((0i32..9, 0u32..12, 0u32..12)),
        0usize..2,
        proptest::collection::vec(proptest::collection::vec(0u32..12, 0..4), 0..2),
    )
        .prop_map(|(refs, samples, md, h, e)| v2::TimeSeries {
            labels_refs: refs,
            samples: samples
                .into_iter()
                .map(|(t, v, st)| v2::Sample {
                    value: v,
                    timestamp: t,
                    start_timestamp: st,
                })
                .collect(),
            histograms: vec![v2::Histogram::default(); h],
            exemplars: e
                .into_iter()
                .map(|labels_refs| v2::Exemplar {
                    labels_refs,
                    value: 1.0,
                    timestamp: 1,
                })
                .collect(),
            metadata: md.map(|(t, help, unit)| v2::Metadata {
                r#type: t,
                help_ref: help,
                unit_ref: unit,
            }),
            created_timestamp: 0,
        });
    (symbols, proptest::collection::vec(series, 0..6)).prop_map(|(symbols, timeseries)| {
        v2::Request {
            symbols,
            timeseries,
        }
    })
}

proptest! {
    #[test]
    fn random_symbol_tables_decode_as_prost_or_are_refused(req in request()) {
        // prost is the reference reader (proto3 drops what it cannot carry, such as -0.0).
        let want = reference(&v2::Request::decode(&req.encode_to_vec()[..]).unwrap());
        match (decode(&req), want) {
            (Ok(b), Some(want)) => {
                prop_assert_eq!(b.len(), want.len());
                for (i, (ls, ss)) in want.iter().enumerate() {
                    let got: Vec<(String, String)> = b.series(i).labels()
                        .map(|(n, v)| (n.to_string(), v.to_string())).collect();
                    prop_assert_eq!(&got, ls);
                    let gs: Vec<(i64, u64)> = b.series(i).samples().iter()
                        .map(|s| (s.t, s.v.to_bits())).collect();
                    prop_assert_eq!(&gs, ss);
                }
                let h: usize = req.timeseries.iter().map(|t| t.histograms.len()).sum();
                let e: usize = req.timeseries.iter().map(|t| t.exemplars.len()).sum();
                prop_assert_eq!((b.skipped_histograms, b.skipped_exemplars), (h, e));
            }
            (Err(DecodeError::InvalidV2(_)), None) => {}
            (got, want) => prop_assert!(false, "decoder {:?} vs reference {:?}", got.map(|b| b.len()), want.map(|w| w.len())),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_write_request_v2(Bytes::from(body));
    }

    #[test]
    fn truncated_requests_never_panic(req in request(), cut in any::<prop::sample::Index>()) {
        let full = req.encode_to_vec();
        let at = cut.index(full.len() + 1);
        let _ = decode_write_request_v2(Bytes::from(full[..at].to_vec()));
    }
}
