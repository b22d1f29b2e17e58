//! Remote write 2.0 against the real `norn` binary on 127.0.0.1: data written in 2.0 reads
//! back exactly as the same data written in 1.0 (samples, labels, metadata), the
//! `X-Prometheus-Remote-Write-*-Written` headers, and the negotiation failures (415, and the
//! 400 that replaced issue 23's silent 200). No 2.0 sender is packaged here (Debian's
//! Prometheus 2.42 speaks 1.0 only), so the bodies are encoded from the 2.0 proto as a sender
//! encodes them.

mod common;

use common::{Norn, now_ms, request, series, snappy};
use norn_proto::prometheus as pb;
use norn_proto::prometheus_write_v2 as v2;
use prost::Message;

const V2_CT: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

struct Reply {
    status: u16,
    /// Samples, histograms, exemplars written, from the response headers (None if absent).
    written: Option<(u64, u64, u64)>,
    body: String,
}

fn push(n: &Norn, tenant: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent
        .post(&n.url("/api/v1/push"))
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .header("X-Scope-OrgID", tenant);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let mut resp = req.send(body).expect("push request");
    let h = |name: &str| -> Option<u64> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let written = match (
        h("X-Prometheus-Remote-Write-Samples-Written"),
        h("X-Prometheus-Remote-Write-Histograms-Written"),
        h("X-Prometheus-Remote-Write-Exemplars-Written"),
    ) {
        (Some(s), Some(hi), Some(e)) => Some((s, hi, e)),
        _ => None,
    };
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        written,
        body,
    }
}

/// Labels and samples of one test series.
type TestSeries = (Vec<(&'static str, String)>, Vec<(i64, f64)>);

/// The test data, with -0.0, +Inf and a tiny value among the values.
fn data(base: i64) -> Vec<TestSeries> {
    let mut out = Vec::new();
    for i in 0..20 {
        let labels = vec![
            ("__name__", "rt_requests_total".to_string()),
            ("code", ["200", "500"][i % 2].to_string()),
            ("instance", format!("host-{i}:9100")),
            ("job", "api".to_string()),
        ];
        let samples = (0..30)
            .map(|j| (base + j * 15_000, (i as i64 * 100 + j) as f64))
            .collect();
        out.push((labels, samples));
    }
    out.push((
        vec![("__name__", "rt_odd_values".to_string())],
        vec![
            (base, -0.0),
            (base + 1000, f64::INFINITY),
            (base + 2000, 1e-300),
        ],
    ));
    out
}

fn as_v1(data: &[TestSeries]) -> pb::WriteRequest {
    let mut req = request(
        data.iter()
            .map(|(ls, ss)| {
                let ls: Vec<(&str, &str)> = ls.iter().map(|(n, v)| (*n, v.as_str())).collect();
                series(&ls, ss)
            })
            .collect(),
    );
    req.metadata.push(pb::MetricMetadata {
        r#type: 1,
        metric_family_name: "rt_requests_total".into(),
        help: "Requests served.".into(),
        unit: "requests".into(),
    });
    req
}

fn as_v2(data: &[TestSeries]) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut intern = |s: &str| -> u32 {
        match symbols.iter().position(|x| x == s) {
            Some(i) => i as u32,
            None => {
                symbols.push(s.to_string());
                (symbols.len() - 1) as u32
            }
        }
    };
    let help = intern("Requests served.");
    let unit = intern("requests");
    let timeseries = data
        .iter()
        .map(|(ls, ss)| v2::TimeSeries {
            labels_refs: ls
                .iter()
                .flat_map(|(n, v)| [intern(n), intern(v)])
                .collect(),
            samples: ss
                .iter()
                .map(|&(t, v)| v2::Sample {
                    value: v,
                    timestamp: t,
                    start_timestamp: 0,
                })
                .collect(),
            metadata: (ls[0].1 == "rt_requests_total").then_some(v2::Metadata {
                r#type: v2::metadata::MetricType::Counter as i32,
                help_ref: help,
                unit_ref: unit,
            }),
            ..Default::default()
        })
        .collect();
    v2::Request {
        symbols,
        timeseries,
    }
}

#[test]
fn v2_round_trip_reads_back_like_v1() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 30 * 15_000 - 60_000;
    let d = data(base);
    let total: usize = d.iter().map(|(_, s)| s.len()).sum();

    let r = push(
        &n,
        "via-v2",
        Some(V2_CT),
        &snappy(&as_v2(&d).encode_to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.written, Some((total as u64, 0, 0)));

    let r = push(
        &n,
        "via-v1",
        Some("application/x-protobuf"),
        &snappy(&as_v1(&d).encode_to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.written, Some((total as u64, 0, 0)));

    let end = base + 30 * 15_000;
    for selector in ["rt_requests_total", "rt_odd_values"] {
        let a = n.raw_samples(Some("via-v2"), selector, base, end);
        let b = n.raw_samples(Some("via-v1"), selector, base, end);
        assert!(!a.is_empty(), "{selector}: nothing read back\n{}", n.log());
        assert_eq!(a, b, "{selector}");
    }
    let got: usize = n
        .raw_samples(Some("via-v2"), "{__name__=~\"rt_.*\"}", base, end)
        .iter()
        .map(|(_, s)| s.len())
        .sum();
    assert_eq!(got, total);
    // +Inf survives (-0.0 does not, in either version: proto3 senders omit a zero double).
    let (_, v) = n.get_json(
        Some("via-v2"),
        &format!(
            "/prometheus/api/v1/query?query=rt_odd_values&time={}",
            (base + 1000) as f64 / 1000.0
        ),
    );
    assert_eq!(v["data"]["result"][0]["value"][1], "+Inf", "{v}");

    let meta = |t: &str| n.get_json(Some(t), "/prometheus/api/v1/metadata").1["data"].clone();
    assert_eq!(meta("via-v2"), meta("via-v1"));
    assert_eq!(
        meta("via-v2")["rt_requests_total"][0]["help"],
        "Requests served."
    );
    assert_eq!(meta("via-v2")["rt_requests_total"][0]["unit"], "requests");
}

/// Issue 23 as reported: a 2.0 body without the 2.0 Content-Type got 200 and was dropped.
#[test]
fn negotiation_failures_are_415_or_400_never_a_silent_200() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 60_000;
    let body = snappy(&as_v2(&data(base)).encode_to_vec());

    for ct in [None, Some("application/x-protobuf")] {
        let r = push(&n, "t", ct, &body);
        assert_eq!(r.status, 400, "{ct:?}: {}", r.body);
        assert!(r.body.contains("holds no field"), "{}", r.body);
        assert_eq!(r.written, Some((0, 0, 0)));
    }
    let r = push(
        &n,
        "t",
        Some("application/x-protobuf;proto=io.prometheus.write.v3.Request"),
        &body,
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert!(
        r.body.contains("io.prometheus.write.v2.Request"),
        "{}",
        r.body
    );
    assert_eq!(r.written, Some((0, 0, 0)));

    let r = push(&n, "t", Some("application/json"), &body);
    assert_eq!(r.status, 415, "{}", r.body);

    // Out-of-range symbol reference: 400, nothing stored.
    let mut bad = as_v2(&data(base));
    bad.timeseries[3].labels_refs[1] = 10_000;
    let r = push(&n, "t", Some(V2_CT), &snappy(&bad.encode_to_vec()));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("out of range"), "{}", r.body);

    assert!(
        n.raw_samples(
            Some("t"),
            "{__name__=~\"rt_.*\"}",
            base - 1000,
            base + 600_000
        )
        .is_empty()
    );
    // The process is still serving.
    let r = push(&n, "t", Some(V2_CT), &body);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn histograms_and_exemplars_are_a_partial_write_floats_stored() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 60_000;
    let mut req = as_v2(&data(base));
    let floats: usize = req.timeseries[1..].iter().map(|t| t.samples.len()).sum();
    req.timeseries[0].samples.clear();
    req.timeseries[0].histograms = vec![v2::Histogram {
        count: Some(v2::histogram::Count::CountInt(3)),
        sum: 4.5,
        timestamp: base,
        ..Default::default()
    }];
    req.timeseries[1].exemplars = vec![v2::Exemplar {
        labels_refs: vec![],
        value: 1.0,
        timestamp: base,
    }];
    let r = push(&n, "t", Some(V2_CT), &snappy(&req.encode_to_vec()));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body
            .contains("1 native histogram samples and 1 exemplars"),
        "{}",
        r.body
    );
    assert_eq!(r.written, Some((floats as u64, 0, 0)));
    let got: usize = n
        .raw_samples(
            Some("t"),
            "{__name__=~\"rt_.*\"}",
            base - 1000,
            base + 600_000,
        )
        .iter()
        .map(|(_, s)| s.len())
        .sum();
    assert_eq!(got, floats);
    assert!(n.metric("norn_discarded_exemplars_total") >= 1.0);
}

/// Created-timestamp zero ingestion: the first request of a counter stores a 0 at its start
/// time; later requests with the same start time are not refused (the zero is older than what
/// is stored), and the zeros are not counted as written.
#[test]
fn start_timestamp_stores_the_zero_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 120_000;
    let start = base - 30_000;
    let req = |t: i64, v: f64| v2::Request {
        symbols: ["", "__name__", "st_requests_total", "job", "api"]
            .map(String::from)
            .to_vec(),
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample {
                value: v,
                timestamp: t,
                start_timestamp: start,
            }],
            ..Default::default()
        }],
    };
    for (i, t) in [base, base + 15_000, base + 30_000].into_iter().enumerate() {
        let r = push(
            &n,
            "t",
            Some(V2_CT),
            &snappy(&req(t, 10.0 + i as f64).encode_to_vec()),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.written, Some((1, 0, 0)));
    }
    let got = n.raw_samples(Some("t"), "st_requests_total", start - 1000, base + 30_000);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1,
        [
            (start, 0.0),
            (base, 10.0),
            (base + 15_000, 11.0),
            (base + 30_000, 12.0)
        ]
    );
    assert_eq!(n.metric("norn_discarded_samples_total"), 0.0);
}
