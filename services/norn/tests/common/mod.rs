//! Test support for process-level tests: start the real `norn` binary on 127.0.0.1 with free
//! ports and a temporary data directory, push remote-write requests, query the HTTP API,
//! kill it (gracefully or with SIGKILL) and restart it on the same data.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use norn_proto::prometheus as pb;
use prost::Message;

/// A free TCP and UDP port on 127.0.0.1, below the ephemeral range (see there why).
pub use norn_storage::testing::free_port;

#[allow(unused_imports)] // not every test file reads the clock
pub use norn_model::now_ms;

/// A running Norn process.
pub struct Norn {
    pub child: Option<Child>,
    pub port: u16,
    /// gRPC port, kept across restarts (an ingester keeps its address in the ring).
    pub grpc_port: u16,
    pub dir: PathBuf,
    /// Filesystem bucket; processes of one cluster share it.
    pub bucket_dir: PathBuf,
    pub extra_args: Vec<String>,
    agent: ureq::Agent,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

impl Norn {
    /// Starts Norn with its data under `dir` and waits for `/ready`.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Norn {
        Self::start_with_bucket(dir, &dir.join("bucket"), extra_args)
    }

    /// Starts Norn with its own data under `dir` and the bucket at `bucket_dir`.
    pub fn start_with_bucket(dir: &Path, bucket_dir: &Path, extra_args: &[&str]) -> Norn {
        std::fs::create_dir_all(dir).unwrap();
        let mut n = Norn {
            child: None,
            port: free_port(),
            grpc_port: free_port(),
            dir: dir.to_path_buf(),
            bucket_dir: bucket_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            agent: agent(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("norn.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_norn"))
            .arg("--server.http-listen-address=127.0.0.1")
            .arg(format!("--server.http-listen-port={}", self.port))
            .arg("--server.grpc-listen-address=127.0.0.1")
            .arg(format!("--server.grpc-listen-port={}", self.grpc_port))
            .arg(format!(
                "--blocks-storage.tsdb.dir={}",
                self.dir.join("tsdb").display()
            ))
            .arg(format!(
                "--common.storage.filesystem.dir={}",
                self.bucket_dir.display()
            ))
            .arg(format!(
                "--blocks-storage.bucket-store.sync-dir={}",
                self.dir.join("tsdb-sync").display()
            ))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start norn");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Wraps a `norn` process the test started itself (special flags or limits), with its
    /// data under `dir`; the caller waits for `/ready`.
    pub fn adopt(child: Child, port: u16, dir: &Path) -> Norn {
        Norn {
            child: Some(child),
            port,
            grpc_port: 0,
            dir: dir.to_path_buf(),
            bucket_dir: dir.join("bucket"),
            extra_args: Vec::new(),
            agent: agent(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "norn exited before becoming ready: {status}\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self.agent.get(&self.url("/ready")).call()
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "norn not ready in 60s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("norn.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "norn did not stop within 30s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.port = free_port();
        self.spawn();
    }

    /// POSTs a raw body to /api/v1/push; returns (status, body text).
    pub fn push_raw(&self, tenant: Option<&str>, body: &[u8]) -> (u16, String) {
        self.push_typed(tenant, "application/x-protobuf", body)
    }

    /// POSTs a raw body to /api/v1/push with `content_type` (e.g. remote write 2.0's
    /// `application/x-protobuf;proto=io.prometheus.write.v2.Request`); returns (status, body).
    pub fn push_typed(
        &self,
        tenant: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String) {
        let version = if content_type.contains("write.v2") {
            "2.0.0"
        } else {
            "0.1.0"
        };
        let mut req = self
            .agent
            .post(&self.url("/api/v1/push"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", content_type)
            .header("X-Prometheus-Remote-Write-Version", version);
        if let Some(t) = tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        let mut resp = req.send(body).expect("push request");
        let status = resp.status().as_u16();
        let mut text = String::new();
        let _ = resp.body_mut().as_reader().read_to_string(&mut text);
        (status, text)
    }

    /// Encodes and pushes a write request.
    pub fn push(&self, tenant: Option<&str>, req: &pb::WriteRequest) -> (u16, String) {
        self.push_raw(tenant, &snappy(&req.encode_to_vec()))
    }

    /// GET an API path; returns (status, parsed JSON).
    pub fn get_json(&self, tenant: Option<&str>, path_and_query: &str) -> (u16, serde_json::Value) {
        let mut req = self.agent.get(&self.url(path_and_query));
        if let Some(t) = tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        let mut resp = req.call().expect("query request");
        let status = resp.status().as_u16();
        let mut text = String::new();
        let _ = resp.body_mut().as_reader().read_to_string(&mut text);
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    pub fn get_text(&self, path: &str) -> (u16, String) {
        let mut resp = self.agent.get(&self.url(path)).call().expect("request");
        let status = resp.status().as_u16();
        let mut text = String::new();
        let _ = resp.body_mut().as_reader().read_to_string(&mut text);
        (status, text)
    }

    /// Every sample of series matching `selector` in [start, end] (ms), via a range query
    /// over `selector[range]` evaluated at `end` — returns raw samples, not lookback points.
    pub fn raw_samples(
        &self,
        tenant: Option<&str>,
        selector: &str,
        start: i64,
        end: i64,
    ) -> Vec<(String, Vec<(i64, f64)>)> {
        let range_s = ((end - start) / 1000).max(1) + 1;
        let q = format!("{selector}[{range_s}s]");
        let (status, v) = self.get_json(
            tenant,
            &format!(
                "/prometheus/api/v1/query?query={}&time={}",
                urlencode(&q),
                end as f64 / 1000.0
            ),
        );
        assert_eq!(status, 200, "{v}");
        let mut out = Vec::new();
        for s in v["data"]["result"].as_array().unwrap() {
            let samples = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                        p[1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect();
            out.push((s["metric"].to_string(), samples));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Reads one metric value from /metrics (sum over all series whose line starts with `prefix`).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = self.get_text("/metrics");
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Norn {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A series with the given labels (in the given order) and samples.
pub fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> pb::TimeSeries {
    pb::TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| pb::Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|(t, v)| pb::Sample {
                timestamp: *t,
                value: *v,
            })
            .collect(),
        ..Default::default()
    }
}

pub fn request(ts: Vec<pb::TimeSeries>) -> pb::WriteRequest {
    pb::WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
}

/// Whether a missing peer (promtool, moto_server, …) is a failure (`NORN_REQUIRE_PEERS=1`).
pub fn require_peers() -> bool {
    std::env::var("NORN_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// The peer binary on PATH; `None` (after printing `SKIP`) when missing, unless required.
pub fn peer(bin: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !require_peers(),
            "{bin} is not installed but NORN_REQUIRE_PEERS=1"
        );
        eprintln!("SKIP: {bin} not found");
    }
    found
}

/// What a finished command printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The stdout line of block `id`.
    pub fn line_of(&self, id: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no line for {id}\n{}", self.text()))
    }
}

/// Runs a command with a time bound.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Run {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let err_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(out_file.reopen().unwrap())
        .stderr(err_file.reopen().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(out_file.path()).unwrap(),
        stderr: std::fs::read_to_string(err_file.path()).unwrap(),
    }
}

/// Complete block directories (with `meta.json`) under `dir`, sorted.
pub fn block_dirs(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("meta.json").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    out.sort();
    out
}

/// Gossip flags for one member of a test cluster: loopback only, fast gossip so the cluster
/// forms in seconds; `seeds` are the gossip ports to join (this member's own is skipped).
pub fn gossip_args(gossip_port: u16, seeds: &[u16]) -> Vec<String> {
    let mut a = vec![
        "--memberlist.bind-addr=127.0.0.1".to_string(),
        format!("--memberlist.bind-port={gossip_port}"),
        "--memberlist.gossip-interval=100ms".to_string(),
        "--memberlist.pullpush-interval=2s".to_string(),
    ];
    let joins: Vec<String> = seeds
        .iter()
        .filter(|&&p| p != gossip_port)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    if !joins.is_empty() {
        a.push(format!("--memberlist.join={}", joins.join(",")));
    }
    a
}

/// The members of a ring as process `n` shows them on `page` (`/ring`,
/// `/store-gateway/ring`, …) in JSON (`id`, `state`, `healthy`, `heartbeat_age_seconds`,
/// `tokens`, …); empty when the page does not answer.
pub fn ring_shards(n: &Norn, page: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = n
        .agent
        .get(&n.url(page))
        .header("Accept", "application/json")
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    match v {
        serde_json::Value::Object(mut o) => match o.remove("shards") {
            Some(serde_json::Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// A ring as process `n` sees it on `page`: (id, state, healthy), sorted by id.
pub fn ring_members(n: &Norn, page: &str) -> Vec<(String, String, bool)> {
    let mut out: Vec<_> = ring_shards(n, page)
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["state"].as_str().unwrap_or_default().to_string(),
                s["healthy"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until `cond` holds on the ring `n` shows on `page`; returns how long that took.
pub fn wait_ring_page(
    n: &Norn,
    page: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(&[(String, String, bool)]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let r = ring_members(n, page);
        if cond(&r) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{page} never showed {what} within {limit:?}; last: {r:?}\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A condition for [`wait_ring_page`]: exactly `n` members, all ACTIVE and healthy.
pub fn all_active(n: usize) -> impl Fn(&[(String, String, bool)]) -> bool {
    move |r| r.len() == n && r.iter().all(|(_, s, h)| s == "ACTIVE" && *h)
}

/// A real Prometheus (Debian's 2.42) as the reference for PromQL and the HTTP API, killed on
/// drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    agent: ureq::Agent,
}

impl Prometheus {
    /// The `prometheus` binary; `None` (after printing `SKIP`) when missing, unless required.
    pub fn binary() -> Option<PathBuf> {
        peer("prometheus")
    }

    /// Starts `bin` on a free port with its TSDB at `data_dir` (which may already hold
    /// blocks) and `extra` flags, logs in `<dir>/prometheus.log`; waits for `/-/ready`.
    pub fn start(bin: &Path, dir: &Path, data_dir: &Path, extra: &[&str]) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        // Nothing to scrape: the data comes from its TSDB or remote write.
        std::fs::write(&config, "global:\n  scrape_interval: 1h\n").unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            port,
            dir: dir.to_path_buf(),
            agent: agent(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "prometheus exited before becoming ready: {status}\n{}",
                    p.log()
                );
            }
            if p.get_json("/-/ready").0 == 200 {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 60s\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET a path; (status, parsed JSON or the text as a JSON string); status 0 when the
    /// request itself failed.
    pub fn get_json(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let Ok(mut resp) = self.agent.get(&self.url(path_and_query)).call() else {
            return (0, serde_json::Value::Null);
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query result as (result type, labels → points) so that series order does not matter.
pub fn normalise_result(
    v: &serde_json::Value,
) -> (String, BTreeMap<String, Vec<(String, String)>>) {
    let kind = v["data"]["resultType"].as_str().unwrap_or("").to_string();
    let mut out = BTreeMap::new();
    let r = &v["data"]["result"];
    match kind.as_str() {
        "scalar" | "string" => {
            out.insert(
                String::new(),
                vec![(r[0].to_string(), r[1].as_str().unwrap_or("").to_string())],
            );
        }
        _ => {
            for s in r.as_array().into_iter().flatten() {
                let key = s["metric"].to_string();
                let points = if let Some(vals) = s["values"].as_array() {
                    vals.iter()
                        .map(|p| (p[0].to_string(), p[1].as_str().unwrap_or("").to_string()))
                        .collect()
                } else {
                    vec![(
                        s["value"][0].to_string(),
                        s["value"][1].as_str().unwrap_or("").to_string(),
                    )]
                };
                out.insert(key, points);
            }
        }
    }
    (kind, out)
}

/// Two sample values as the API prints them are equal, or within a relative 1e-6 (the
/// engines may sum in different orders); NaN equals NaN.
pub fn close_values(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => {
            if x.is_nan() || y.is_nan() {
                return x.is_nan() && y.is_nan();
            }
            let d = (x - y).abs();
            d <= 1e-6 * x.abs().max(y.abs()) || d < 1e-9
        }
        _ => false,
    }
}

/// Compares a query answer of Prometheus with Norn's: same result type, same series, same
/// timestamps, values equal up to [`close_values`]. The error says what differs first.
pub fn compare_results(prom: &serde_json::Value, norn: &serde_json::Value) -> Result<(), String> {
    let (pk, pr) = normalise_result(prom);
    let (nk, nr) = normalise_result(norn);
    if pk != nk {
        return Err(format!("result type: prometheus {pk}, norn {nk}"));
    }
    let pkeys: Vec<_> = pr.keys().collect();
    let nkeys: Vec<_> = nr.keys().collect();
    if pkeys != nkeys {
        let only_p: Vec<_> = pr.keys().filter(|k| !nr.contains_key(*k)).take(3).collect();
        let only_n: Vec<_> = nr.keys().filter(|k| !pr.contains_key(*k)).take(3).collect();
        return Err(format!(
            "series differ ({} vs {}): only in prometheus {only_p:?}, only in norn {only_n:?}",
            pr.len(),
            nr.len()
        ));
    }
    for (k, pp) in &pr {
        let np = &nr[k];
        if pp.len() != np.len() {
            return Err(format!(
                "{k}: {} points in prometheus, {} in norn",
                pp.len(),
                np.len()
            ));
        }
        for ((pt, pv), (nt, nv)) in pp.iter().zip(np) {
            if pt != nt || !close_values(pv, nv) {
                return Err(format!("{k}: prometheus ({pt}, {pv}) vs norn ({nt}, {nv})"));
            }
        }
    }
    Ok(())
}
