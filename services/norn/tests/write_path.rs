//! Process-level tests of the write path: the real `norn` binary on 127.0.0.1, pushed to over
//! HTTP, read back through the query API. Covers durability (kill -9, WAL corruption),
//! bad input (each with its status and message, no panic, valid parts stored) and tenant
//! isolation.

mod common;

use common::{Norn, now_ms, request, series, snappy};
use norn_proto::prometheus as pb;
use prost::Message;

const T: Option<&str> = Some("tenant-a");

fn push_n(n: &Norn, metric: &str, count: usize, base: i64) {
    // 10 series, `count` samples each, 1 request per 10 samples per series.
    for chunk in 0..count.div_ceil(10) {
        let ts = (0..10)
            .map(|s| {
                let inst = format!("i{s}");
                let samples: Vec<(i64, f64)> = (chunk * 10..((chunk + 1) * 10).min(count))
                    .map(|i| (base + i as i64 * 1000, (s * 1000 + i) as f64))
                    .collect();
                series(
                    &[("__name__", metric), ("instance", &inst), ("job", "test")],
                    &samples,
                )
            })
            .collect();
        let (status, body) = n.push(T, &request(ts));
        assert_eq!(status, 200, "{body}");
    }
}

fn count_samples(n: &Norn, metric: &str, base: i64, count: usize) -> usize {
    n.raw_samples(T, metric, base, base + count as i64 * 1000)
        .iter()
        .map(|(_, s)| s.len())
        .sum()
}

#[test]
fn kill_9_loses_no_acknowledged_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 600_000;
    push_n(&n, "durable_total", 200, base);
    assert_eq!(count_samples(&n, "durable_total", base, 200), 2000);
    n.kill9();
    n.restart();
    assert_eq!(
        count_samples(&n, "durable_total", base, 200),
        2000,
        "{}",
        n.log()
    );
    // Still writable after replay, and out-of-order detection survived the restart.
    let (status, body) = n.push(
        T,
        &request(vec![series(
            &[
                ("__name__", "durable_total"),
                ("instance", "i0"),
                ("job", "test"),
            ],
            &[(base, 1.0)],
        )]),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("out-of-order"), "{body}");
}

#[test]
fn sigterm_is_a_clean_shutdown_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 300_000;
    push_n(&n, "graceful_total", 30, base);
    let status = n.stop();
    assert!(status.success(), "exit status {status}\n{}", n.log());
    assert!(n.log().contains("stopped"));
    n.restart();
    assert_eq!(count_samples(&n, "graceful_total", base, 30), 300);
}

#[test]
fn corrupt_wal_tail_is_repaired_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Norn::start(dir.path(), &[]);
    let base = now_ms() - 600_000;
    push_n(&n, "before_total", 100, base);
    n.kill9();
    // Damage the end of the newest WAL segment: flip its last bytes and append garbage.
    let wal = dir.path().join("tsdb/tenant-a/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    segs.sort();
    let last = segs.last().expect("a WAL segment").clone();
    let mut bytes = std::fs::read(&last).unwrap();
    let len = bytes.len();
    assert!(len > 64);
    for b in &mut bytes[len - 8..] {
        *b ^= 0xff;
    }
    bytes.extend_from_slice(b"\x01garbage that is not a record");
    std::fs::write(&last, &bytes).unwrap();
    n.restart();
    // 10 pushes of 100 samples, one WAL record each: the damaged last record is lost,
    // everything before it is not.
    let got = count_samples(&n, "before_total", base, 100);
    assert!(
        (900..=1000).contains(&got),
        "got {got} samples\n{}",
        n.log()
    );
    assert!(n.metric("norn_ingester_wal_corruptions_total") >= 1.0);
    // And the process takes writes again.
    push_n(&n, "after_total", 10, now_ms() - 60_000);
}

#[test]
fn bad_input_gets_the_right_status_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(
        dir.path(),
        &[
            "--distributor.max-recv-msg-size=200000",
            "--distributor.ingestion-rate-limit=1000",
            "--distributor.ingestion-burst-size=5000",
            "--ingester.max-global-series-per-user=50",
        ],
    );
    let now = now_ms();
    let ok = |name: &str| series(&[("__name__", name), ("job", "j")], &[(now, 1.0)]);
    // (what, tenant, body, expected status, expected message part)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "garbage body",
            T,
            b"this is not snappy".to_vec(),
            400,
            "snappy",
        ),
        (
            "valid snappy, bad protobuf",
            T,
            snappy(b"\x0a\xff\xff\xff\x0f"),
            400,
            "protobuf",
        ),
        (
            "bad snappy",
            T,
            vec![0x0a, 0xfe, 0xff, 0x01, 0x02],
            400,
            "snappy",
        ),
        (
            "snappy declaring a huge size",
            T,
            vec![0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3],
            413,
            "too large",
        ),
        (
            "missing tenant",
            None,
            snappy(&request(vec![ok("m")]).encode_to_vec()),
            401,
            "no org id",
        ),
        (
            "invalid tenant",
            Some("a/b"),
            snappy(&request(vec![ok("m")]).encode_to_vec()),
            400,
            "tenant",
        ),
        (
            "invalid label name",
            T,
            snappy(
                &request(vec![series(
                    &[("__name__", "m"), ("bad-name", "x")],
                    &[(now, 1.0)],
                )])
                .encode_to_vec(),
            ),
            400,
            "invalid label name",
        ),
        (
            "duplicate labels",
            T,
            snappy(
                &request(vec![series(
                    &[("__name__", "m"), ("a", "x"), ("a", "y")],
                    &[(now, 1.0)],
                )])
                .encode_to_vec(),
            ),
            400,
            "duplicate label name",
        ),
        (
            "too many labels",
            T,
            {
                let names: Vec<String> = (0..31).map(|i| format!("l{i:02}")).collect();
                let mut l: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
                l.push(("__name__", "m"));
                snappy(&request(vec![series(&l, &[(now, 1.0)])]).encode_to_vec())
            },
            400,
            "number of labels exceeds the limit",
        ),
        (
            "missing metric name",
            T,
            snappy(&request(vec![series(&[("job", "x")], &[(now, 1.0)])]).encode_to_vec()),
            400,
            "without a metric name",
        ),
        (
            "sample too far in the future",
            T,
            snappy(
                &request(vec![series(
                    &[("__name__", "m")],
                    &[(now + 3_600_000, 1.0)],
                )])
                .encode_to_vec(),
            ),
            400,
            "too far in the future",
        ),
        (
            "oversized body",
            T,
            vec![0u8; 300_000],
            413,
            "larger than the allowed limit",
        ),
        (
            "oversized after decompression",
            T,
            snappy(&vec![0u8; 300_000]),
            413,
            "too large",
        ),
    ];
    for (what, tenant, body, want_status, want_msg) in cases {
        let (status, text) = n.push_raw(tenant, &body);
        assert_eq!(status, want_status, "{what}: {text}");
        assert!(
            text.to_lowercase().contains(&want_msg.to_lowercase()),
            "{what}: {text:?} lacks {want_msg:?}"
        );
    }
    // Out of order: the second push goes back in time.
    assert_eq!(
        n.push(
            T,
            &request(vec![series(
                &[("__name__", "ooo"), ("job", "j")],
                &[(now, 1.0)]
            )])
        )
        .0,
        200
    );
    let (status, text) = n.push(
        T,
        &request(vec![series(
            &[("__name__", "ooo"), ("job", "j")],
            &[(now - 1000, 1.0)],
        )]),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("out-of-order"), "{text}");
    // Mixed request: the valid series is stored, the 400 names the bad one.
    let (status, text) = n.push(
        T,
        &request(vec![
            ok("mixed_good"),
            series(
                &[("__name__", "mixed_bad"), ("bad-name", "x")],
                &[(now, 1.0)],
            ),
        ]),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("mixed_bad"), "{text}");
    let (_, v) = n.get_json(T, "/prometheus/api/v1/query?query=mixed_good");
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1, "{v}");
    // Series limit: 50 per tenant; some series already exist, so 60 new ones overflow.
    let many: Vec<pb::TimeSeries> = (0..60)
        .map(|i| series(&[("__name__", "lim"), ("i", &i.to_string())], &[(now, 1.0)]))
        .collect();
    let (status, text) = n.push(T, &request(many));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("per_user_series_limit"), "{text}");
    // Rate limit: burst 5000 samples; a 6000-sample request can never fit.
    let big = series(
        &[("__name__", "ok_metric"), ("job", "j")],
        &(0..6000)
            .map(|i| (now - 6_000_000 + i * 1000, 1.0))
            .collect::<Vec<_>>(),
    );
    let (status, text) = n.push(Some("tenant-rate"), &request(vec![big]));
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("ingestion rate limit"), "{text}");
    // Every refusal is counted by reason.
    for reason in [
        "label_invalid",
        "duplicate_label_names",
        "max_label_names_per_series",
        "missing_metric_name",
        "sample_too_far_in_future",
        "sample-out-of-order",
        "per_user_series_limit",
        "rate_limited",
    ] {
        assert!(
            n.metric(&format!(
                "norn_discarded_samples_total{{reason=\"{reason}\""
            )) > 0.0,
            "no discard counted for {reason}"
        );
    }
    // Nothing crashed.
    assert_eq!(n.get_text("/ready").0, 200);
}

#[test]
fn tenants_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let now = now_ms();
    assert_eq!(
        n.push(
            Some("a"),
            &request(vec![series(
                &[("__name__", "secret"), ("owner", "a")],
                &[(now, 1.0)]
            )])
        )
        .0,
        200
    );
    assert_eq!(
        n.push(
            Some("b"),
            &request(vec![series(
                &[("__name__", "public"), ("owner", "b")],
                &[(now, 2.0)]
            )])
        )
        .0,
        200
    );
    for (path, needle) in [
        ("/prometheus/api/v1/query?query=secret", "secret"),
        (
            "/prometheus/api/v1/query?query=%7Bowner%3D~%22.%2B%22%7D",
            "\"a\"",
        ),
        (
            "/prometheus/api/v1/series?match[]=%7Bowner%3D~%22.%2B%22%7D",
            "secret",
        ),
        ("/prometheus/api/v1/label/__name__/values", "secret"),
        ("/prometheus/api/v1/labels", "owner"),
    ] {
        let (status, v) = n.get_json(Some("b"), path);
        assert_eq!(status, 200, "{path}: {v}");
        if needle == "owner" {
            // b has its own `owner` label; make sure a's values never show up elsewhere.
            continue;
        }
        assert!(
            !v.to_string().contains(needle),
            "tenant b sees tenant a's data at {path}: {v}"
        );
    }
    let (_, v) = n.get_json(Some("b"), "/prometheus/api/v1/label/owner/values");
    assert_eq!(v["data"], serde_json::json!(["b"]));
    let (_, v) = n.get_json(Some("a"), "/prometheus/api/v1/query?query=secret");
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1);
    // Multitenancy off: everyone is `anonymous`, no header needed.
    let dir2 = tempfile::tempdir().unwrap();
    let anon = Norn::start(dir2.path(), &["--auth.multitenancy-enabled=false"]);
    assert_eq!(
        anon.push(
            None,
            &request(vec![series(&[("__name__", "anon_metric")], &[(now, 1.0)])])
        )
        .0,
        200
    );
    assert!(dir2.path().join("tsdb/anonymous").is_dir());
}

#[test]
fn metadata_is_stored_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(dir.path(), &[]);
    let req = pb::WriteRequest {
        timeseries: vec![],
        metadata: vec![pb::MetricMetadata {
            r#type: 1,
            metric_family_name: "http_requests_total".into(),
            help: "Requests.".into(),
            unit: "".into(),
        }],
    };
    assert_eq!(n.push(T, &req).0, 200);
    let (_, v) = n.get_json(T, "/prometheus/api/v1/metadata");
    assert_eq!(
        v["data"]["http_requests_total"][0]["type"], "counter",
        "{v}"
    );
    assert_eq!(v["data"]["http_requests_total"][0]["help"], "Requests.");
    let (_, v) = n.get_json(Some("other"), "/prometheus/api/v1/metadata");
    assert_eq!(v["data"], serde_json::json!({}));
}

#[test]
fn operational_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let n = Norn::start(
        dir.path(),
        &["--common.storage.s3.secret-access-key=topsecret"],
    );
    assert_eq!(
        n.push(
            T,
            &request(vec![series(&[("__name__", "m")], &[(now_ms(), 1.0)])])
        )
        .0,
        200
    );
    let (s, cfg) = n.get_text("/config");
    assert_eq!(s, 200);
    assert!(
        cfg.contains("http_listen_port") && !cfg.contains("topsecret"),
        "{cfg}"
    );
    let (s, services) = n.get_text("/services");
    assert_eq!(s, 200);
    assert!(services.contains("ingester Running") && services.contains("distributor Running"));
    let (_, metrics) = n.get_text("/metrics");
    for m in [
        "norn_request_duration_seconds",
        "norn_ingester_memory_series",
        "process_resident_memory_bytes",
        "norn_ingester_wal_fsync_duration_seconds",
    ] {
        assert!(metrics.contains(m), "/metrics lacks {m}");
    }
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("norn.yaml");
    std::fs::write(
        &cfg,
        "server:\n  http_listen_port: 1\n  not_a_real_key: 2\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_norn"))
        .arg(format!("--config.file={}", cfg.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_a_real_key"), "{err}");
}
