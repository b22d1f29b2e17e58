//! The store-gateway test's cluster (distributor, three ingesters, querier, store-gateways on
//! one S3 bucket, joined by gossip) and what it asks of it and of Prometheus: the API paths
//! compared and how answers are compared.

use std::path::Path;
use std::time::Duration;

use crate::common::{Norn, compare_results, free_port, gossip_args, urlencode};
use crate::{GATEWAYS, HOUR_S};

pub struct Cluster {
    /// Kept for the lifetime of the cluster (its processes are killed on drop).
    _ingesters: Vec<Norn>,
    pub distributor: Norn,
    pub querier: Norn,
    pub gateways: Vec<Norn>,
}

pub fn start_cluster(root: &Path, s3: &[String]) -> Cluster {
    let gossip: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |name: &str, target: &str, own: &[String]| -> Norn {
        let mut args = vec![
            format!("--target={target}"),
            format!("--memberlist.nodename={name}"),
            "--ingester.ring.heartbeat-period=500ms".to_string(),
            "--ingester.ring.heartbeat-timeout=10s".to_string(),
            "--ingester.ring.replication-factor=3".to_string(),
            // Every store-gateway loads every block: one may die and the other answers.
            format!("--store-gateway.sharding-ring.replication-factor={GATEWAYS}"),
            "--store-gateway.sharding-ring.heartbeat-period=1s".to_string(),
            // Long enough that a killed store-gateway stays in the ring through the kill
            // check: the querier must retry the other replica, not skip the dead one.
            "--store-gateway.sharding-ring.heartbeat-timeout=5m".to_string(),
            // Store-gateways see new blocks within 2 s; the querier re-reads the block list
            // as often and lets a block uploaded in the last 3 intervals (6 s) be missing
            // from every store-gateway. The blocks are imported well before the cluster
            // starts, so no check below falls in that grace.
            "--blocks-storage.bucket-store.sync-interval=2s".to_string(),
        ];
        args.extend(s3.iter().cloned());
        args.extend(own.iter().cloned());
        let port = if let Some(i) = name.strip_prefix("ingester-") {
            gossip[i.parse::<usize>().unwrap()]
        } else {
            free_port()
        };
        args.extend(gossip_args(port, &gossip));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = root.join(name);
        Norn::start_with_bucket(&dir, &dir.join("unused-bucket"), &refs)
    };
    let ingesters: Vec<Norn> = (0..3)
        .map(|i| {
            let name = format!("ingester-{i}");
            let tokens = root.join(&name).join("tokens.json");
            start(
                &name,
                "ingester",
                &[
                    format!("--ingester.ring.instance-id={name}"),
                    format!("--ingester.ring.tokens-file-path={}", tokens.display()),
                ],
            )
        })
        .collect();
    let gateways: Vec<Norn> = (0..GATEWAYS)
        .map(|i| {
            let name = format!("store-gateway-{i}");
            start(
                &name,
                "store-gateway",
                &[format!("--store-gateway.sharding-ring.instance-id={name}")],
            )
        })
        .collect();
    let distributor = start(
        "distributor-0",
        "distributor",
        &["--distributor.ingestion-rate-limit=10000000".to_string()],
    );
    let querier = start("querier-0", "querier", &[]);
    Cluster {
        _ingesters: ingesters,
        distributor,
        querier,
        gateways,
    }
}

impl Cluster {
    pub fn gateway(&self, i: usize) -> &Norn {
        &self.gateways[i]
    }

    /// Bytes the running store-gateways read from the bucket for queries, by kind
    /// (postings, series, chunks; index-header builds are not queries).
    pub fn query_bytes_fetched(&self) -> [f64; 3] {
        let mut out = [0.0; 3];
        for g in &self.gateways {
            for (k, kind) in ["postings", "series", "chunks"].iter().enumerate() {
                out[k] += g.metric(&format!(
                    "norn_storegateway_bucket_bytes_fetched_total{{kind=\"{kind}\"}}"
                ));
            }
        }
        out
    }
}

/// An API path for both: Prometheus serves it at `/api/v1/…`, Norn at
/// `/prometheus/api/v1/…`.
fn norn_path(p: &str) -> String {
    format!("/prometheus{p}")
}

/// GET through the querier as `tenant` with a fresh agent (usable from any thread).
pub fn norn_get(port: u16, tenant: &str, path: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let resp = agent
        .get(&format!("http://127.0.0.1:{port}{}", norn_path(path)))
        .header("X-Scope-OrgID", tenant)
        .call();
    let Ok(mut resp) = resp else {
        return (0, serde_json::Value::Null);
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// Whether two answers of an API path agree: query results as in the PromQL differential
/// test, label lists exactly, series lists as sets.
pub fn same_answer(
    path: &str,
    prom: &serde_json::Value,
    norn: &serde_json::Value,
) -> Result<(), String> {
    if norn["status"] != "success" {
        return Err(format!("norn: {norn}"));
    }
    if path.starts_with("/api/v1/query") {
        return compare_results(prom, norn);
    }
    let as_set = |v: &serde_json::Value| -> Vec<String> {
        let mut out: Vec<String> = v["data"]
            .as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect())
            .unwrap_or_default();
        out.sort();
        out
    };
    let (p, n) = (as_set(prom), as_set(norn));
    if p == n {
        return Ok(());
    }
    let only_p: Vec<_> = p.iter().filter(|x| !n.contains(x)).take(5).collect();
    let only_n: Vec<_> = n.iter().filter(|x| !p.contains(x)).take(5).collect();
    Err(format!(
        "{} vs {} entries: only in prometheus {only_p:?}, only in norn {only_n:?}",
        p.len(),
        n.len()
    ))
}

pub const QUERIES: &[&str] = &[
    "http_requests_total{job=\"api\",instance=\"i3\"}",
    "http_requests_total{code=~\"5..\",instance=~\"i[0-3]\"}",
    "http_requests_total{method!=\"GET\",code!~\"2..|4..\"}",
    "{__name__=~\"memory_.*|temperature_.*\"}",
    "ephemeral_gauge",
    "rate(http_requests_total{job=\"web\"}[5m])",
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum by (code, method) (increase(http_requests_total[1h]))",
    "count(http_requests_total)",
    "resets(http_requests_total{job=\"batch\"}[1h])",
    "count by (le) (request_duration_seconds_bucket)",
    "histogram_quantile(0.9, sum by (le, job) (rate(request_duration_seconds_bucket[10m])))",
    "max_over_time(memory_bytes[30m])",
    "avg by (job) (memory_bytes)",
    "temperature_celsius offset 1h",
    "changes(temperature_celsius[20m])",
    "sum(memory_bytes) / count(memory_bytes)",
];

/// Every API path compared with Prometheus, as `/api/v1/…` (seconds since the epoch).
pub fn api_paths(t0: i64) -> Vec<String> {
    let mut out = Vec::new();
    for q in QUERIES {
        let q = urlencode(q);
        // Inside the first block, 3 s after a block boundary (the lookback reaches into the
        // block before), and after the last sample.
        for t in [t0 + HOUR_S + 1803, t0 + 2 * HOUR_S + 3, t0 + 6 * HOUR_S + 3] {
            out.push(format!("/api/v1/query?query={q}&time={t}"));
        }
        // All three blocks and past their end, every 2 minutes.
        out.push(format!(
            "/api/v1/query_range?query={q}&start={}&end={}&step=120",
            t0 + 3,
            t0 + 6 * HOUR_S + 603
        ));
    }
    let full = format!("start={t0}&end={}", t0 + 6 * HOUR_S);
    // From just past the first block: its series and label values are not in range.
    let late = format!("start={}&end={}", t0 + 2 * HOUR_S + 3, t0 + 6 * HOUR_S);
    // Half an hour after the ephemeral gauge ended, inside the first block.
    let mid = format!("start={}&end={}", t0 + 90 * 60, t0 + 6 * HOUR_S);
    let m = |s: &str| format!("match[]={}", urlencode(s));
    for range in [&full, &late] {
        out.push(format!("/api/v1/labels?{range}"));
        out.push(format!("/api/v1/label/__name__/values?{range}"));
        out.push(format!("/api/v1/label/phase/values?{range}"));
        out.push(format!(
            "/api/v1/series?{}&{}&{range}",
            m("memory_bytes"),
            m("ephemeral_gauge")
        ));
    }
    out.push(format!("/api/v1/labels?{}&{full}", m("memory_bytes")));
    out.push(format!(
        "/api/v1/label/job/values?{}&{full}",
        m("http_requests_total{code=\"500\"}")
    ));
    out.push(format!("/api/v1/label/instance/values?{full}"));
    out.push(format!("/api/v1/label/phase/values?{mid}"));
    out.push(format!("/api/v1/labels?{mid}"));
    out.push(format!(
        "/api/v1/labels?{}&{mid}",
        m("{__name__=~\"ephemeral_gauge|temperature_celsius\"}")
    ));
    out.push(format!(
        "/api/v1/label/phase/values?{}&{mid}",
        m("{job=\"api\"}")
    ));
    out.push(format!(
        "/api/v1/series?{}&{full}",
        m("http_requests_total{instance=\"i1\",method=\"POST\"}")
    ));
    out.push(format!("/api/v1/series?{}&{full}", m("{__name__=~\".+\"}")));
    out.push(format!(
        "/api/v1/series?{}&{mid}",
        m("{__name__=~\"ephemeral_gauge|temperature_celsius\"}")
    ));
    out
}
