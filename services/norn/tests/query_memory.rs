//! The per-tenant memory limit of a query (`max_estimated_memory_consumption_per_query`,
//! `--querier.max-estimated-memory-consumption-per-query`) end to end, and the peak each query
//! held, from the engine's own accounting, in `/metrics`.

mod common;

use common::{Norn, now_ms, request, series, urlencode};

#[test]
fn a_query_over_its_tenants_memory_limit_gets_422_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("runtime.yaml");
    // 200 series with an hour of samples: ~48k samples, ~770 kB as the engine counts them.
    std::fs::write(
        &rc,
        "overrides:\n  tight:\n    max_estimated_memory_consumption_per_query: 100000\n",
    )
    .unwrap();
    let n = Norn::start(
        &dir.path().join("norn"),
        &[&format!("--runtime-config.file={}", rc.display())],
    );
    let now = now_ms();
    let ts: Vec<_> = (0..200)
        .map(|i| {
            let samples: Vec<(i64, f64)> = (0..240)
                .map(|k| (now - 3_600_000 + k * 15_000, k as f64))
                .collect();
            series(&[("__name__", "mem_test"), ("i", &i.to_string())], &samples)
        })
        .collect();
    for t in ["tight", "roomy"] {
        let (s, body) = n.push(Some(t), &request(ts.clone()));
        assert_eq!(s, 200, "{body}");
    }
    let path = format!(
        "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=60",
        // A subquery's selector holds every sample it fetched, decoded: 48,000 × 16 bytes.
        // (A range query's own selectors would hold their chunks and windows only.)
        urlencode("sum(last_over_time(mem_test[1m:1m]))"),
        (now - 3_600_000) / 1000,
        now / 1000
    );
    let (s, v) = n.get_json(Some("tight"), &path);
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errorType"], "execution", "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("err-mimir-max-estimated-memory-consumption-per-query")
            && msg.contains("100000 bytes"),
        "{msg}"
    );
    // The same query for a tenant without the limit answers, and its peak is measured.
    let (s, v) = n.get_json(Some("roomy"), &path);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1);
    let peak_count = n.metric("norn_querier_query_estimated_peak_memory_bytes_count");
    let peak_sum = n.metric("norn_querier_query_estimated_peak_memory_bytes_sum");
    assert!(peak_count >= 1.0, "{peak_count}");
    // At least the fetched samples (16 bytes each) of the answered query.
    assert!(peak_sum >= 200.0 * 200.0 * 16.0, "{peak_sum}");
    assert!(n.metric("norn_querier_query_peak_samples_sum") >= 40_000.0);
}
