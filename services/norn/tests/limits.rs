//! Per-tenant limits from the runtime config file (`--runtime-config.file`), enforced end to
//! end and reloaded without a restart.

mod common;

use std::time::{Duration, Instant};

use common::{Norn, now_ms, request, series, urlencode};

#[test]
fn runtime_overrides_apply_per_tenant_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("runtime.yaml");
    std::fs::write(
        &rc,
        "overrides:\n  small:\n    max_fetched_series_per_query: 2\n    max_total_query_length: 1h\n    max_label_names_per_series: 3\n",
    )
    .unwrap();
    let n = Norn::start(
        dir.path(),
        &[
            &format!("--runtime-config.file={}", rc.display()),
            "--runtime-config.reload-period=1s",
        ],
    );
    let now = now_ms();
    let three: Vec<_> = (0..3)
        .map(|i| series(&[("__name__", "m"), ("i", &i.to_string())], &[(now, 1.0)]))
        .collect();
    for t in ["small", "big"] {
        assert_eq!(n.push(Some(t), &request(three.clone())).0, 200);
    }
    // Series limit per query: 3 series > 2 for `small`, fine for `big`.
    let (s, v) = n.get_json(Some("small"), "/prometheus/api/v1/query?query=m");
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["errorType"], "execution");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("maximum number of series"),
        "{v}"
    );
    let (s, _) = n.get_json(Some("big"), "/prometheus/api/v1/query?query=m");
    assert_eq!(s, 200);
    // Query length: 2h > 1h.
    let path = format!(
        "/prometheus/api/v1/query_range?query={}&start={}&end={}&step=60",
        urlencode("sum(m)"),
        (now - 7_200_000) / 1000,
        now / 1000
    );
    let (s, v) = n.get_json(Some("small"), &path);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("query time range exceeds the limit"),
        "{v}"
    );
    // Labels per series: 4 > 3 for `small`.
    let (s, body) = n.push(
        Some("small"),
        &request(vec![series(
            &[("__name__", "m"), ("a", "1"), ("b", "2"), ("c", "3")],
            &[(now, 1.0)],
        )]),
    );
    assert_eq!(s, 400, "{body}");

    // Raise the limit in the file: applied within a few reload periods, no restart.
    std::fs::write(
        &rc,
        "overrides:\n  small:\n    max_fetched_series_per_query: 10\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _) = n.get_json(Some("small"), "/prometheus/api/v1/query?query=m");
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "overrides not reloaded within 15s\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A broken file keeps the last good overrides and the process keeps serving.
    std::fs::write(&rc, "overrides: [").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        n.get_json(Some("small"), "/prometheus/api/v1/query?query=m")
            .0,
        200
    );
    assert!(
        n.log().contains("reloading runtime config failed"),
        "{}",
        n.log()
    );
}
