//! The store-gateway as real processes on a real S3 server (`moto_server`), checked against
//! a real Prometheus (Debian's 2.42) serving the same blocks.
//!
//! One cluster serves every check, each process on 127.0.0.1 with free ports and its own
//! instance id, joined only by gossip: a distributor, three ingesters (replication factor 3),
//! a querier and two store-gateways that both load every block
//! (`--store-gateway.sharding-ring.replication-factor=2`). The data is written by Prometheus'
//! own tooling: `promtool tsdb create-blocks-from openmetrics` turns six hours of counters,
//! gauges and classic-histogram buckets (as plain series), three days ago, into three 2h
//! blocks per tenant, and `norn tools import-blocks` uploads them into the tenants of the
//! bucket. Prometheus gets a copy of tenant A's blocks in its data directory (retention long
//! enough to keep them, block compaction off so its label APIs see the same block ranges).
//! Three days ago is older than `--querier.query-ingesters-within` (13h) and than the
//! store-gateways' `ignore-blocks-within` (10h), so with the defaults the historical range is
//! read from the store-gateways alone, as in production.
//!
//! In order, on that one cluster:
//! 1. bytes: a selective query on cold caches reads a small fraction of the blocks' bytes
//!    from the bucket (`norn_storegateway_bucket_bytes_fetched_total`, both store-gateways);
//! 2. differential: instant and range queries of several shapes (selectors, regex matchers,
//!    rate, sum by, histogram_quantile, offsets, across block boundaries) and the label APIs
//!    (`/series`, `/labels`, `/label/<name>/values`, with and without `match[]`, over full and
//!    partial ranges) answer what Prometheus answers;
//! 3. tenant isolation: tenant B's imported series (under A's metric names, and its own)
//!    never reach tenant A through any of these APIs, nor A's reach B, although B's blocks
//!    carry the very block ids of A's (so nothing keyed by block id alone can mix them);
//! 4. `kill -9` of one store-gateway while two threads loop over queries: every answer is
//!    complete (equal to Prometheus), never a partial 200; the querier's retry of the other
//!    replica is what answers (`norn_querier_storegateway_refetches_total` rises);
//! 5. both store-gateways down: every read API fails with a 5xx that names the missing blocks;
//! 6. one store-gateway restarted: it serves at once from the index-headers it kept on disk
//!    (none rebuilt) and every answer is complete again.
//!
//! Sample timestamps sit at 7 s past the 15 s grid and evaluation times at 3 s past the
//! minute, so no sample falls on the edge of a range window, where Prometheus 2.x
//! (left-closed) and 3.x (left-open, Norn) differ. Values are integers or multiples of 0.25,
//! exact through the text format.
//!
//! Without `promtool`, `prometheus` or `moto_server` the test prints `SKIP` and passes,
//! unless `NORN_REQUIRE_PEERS=1`. It takes about a minute on a loaded two-core machine.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Norn, Prometheus, all_active, block_dirs, now_ms, peer, request, series, urlencode,
    wait_ring_page,
};
use data::{
    block_bytes, copy_dir, give_ids, import, promtool_blocks, s3_flags, tenant_a, tenant_b,
};
use harness::{Cluster, QUERIES, api_paths, norn_get, same_answer, start_cluster};
use norn_storage::testing::MotoServer;

const TENANT_A: &str = "team-a";
const TENANT_B: &str = "team-b";
const STEP_S: i64 = 15;
const HOUR_S: i64 = 3600;
/// Six hours: three 2h blocks.
const SAMPLES: i64 = 6 * HOUR_S / STEP_S;
/// Store-gateways in the cluster; each loads every block.
const GATEWAYS: usize = 2;

#[path = "store_gateway/data.rs"]
mod data;
#[path = "store_gateway/harness.rs"]
mod harness;

/// Everything the checks share: the cluster, the reference Prometheus and what was imported.
struct Setup {
    c: Cluster,
    prom: Prometheus,
    /// Start of the data (unix seconds, on a 2h boundary).
    t0: i64,
    /// Tenant A's block ids (tenant B's blocks carry the same ids).
    a_blocks: Vec<String>,
    a_series: usize,
    b_series: usize,
    /// Bytes of tenant A's blocks (index and chunk files), and of their index files.
    a_bytes: u64,
    a_index_bytes: u64,
    /// Blocks each store-gateway loads (both tenants').
    all_blocks: f64,
    started: Instant,
    /// When the last block was uploaded.
    imported: Instant,
    /// Dropped last: the processes above use them.
    _moto: MotoServer,
    _root: tempfile::TempDir,
}

impl Setup {
    /// `start=…&end=…` of the whole imported range.
    fn full(&self) -> String {
        format!("start={}&end={}", self.t0, self.t0 + 6 * HOUR_S)
    }

    fn get(&self, tenant: &str, path: &str) -> (u16, serde_json::Value) {
        norn_get(self.c.querier.port, tenant, path)
    }
}

/// The querier's upload grace in this cluster: three times the harness' sync interval.
const UPLOAD_GRACE: Duration = Duration::from_secs(3 * 2);

#[test]
fn store_gateways_serve_prometheus_blocks_like_prometheus_and_survive_kills() {
    let (Some(promtool), Some(prom_bin)) = (peer("promtool"), Prometheus::binary()) else {
        return;
    };
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let mut s = set_up(&promtool, &prom_bin, moto);
    selective_query_reads_little(&s);
    let references = answers_equal_prometheus(&s);
    tenants_stay_apart(&s);
    // The kills come last: they end the cluster as it was. The queries looped over while a
    // store-gateway dies: range queries and label APIs over all three blocks.
    let loop_set: Vec<(String, serde_json::Value)> = references
        .into_iter()
        .filter(|(p, _)| {
            p.contains("query_range") || p.contains("/series") || p.contains("/labels")
        })
        .take(24)
        .collect();
    let victim = kill_one_while_querying(&mut s, &loop_set);
    kill_both(&mut s, victim);
    restart_one(&mut s, victim, &loop_set);
}

/// Writes and imports the blocks, starts Prometheus on a copy of tenant A's and the cluster,
/// waits until every store-gateway serves every block, and checks the write path once.
fn set_up(promtool: &Path, prom_bin: &Path, moto: MotoServer) -> Setup {
    moto.create_bucket("norn-sg").unwrap();
    let s3 = s3_flags(&moto.endpoint());
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path();
    let started = Instant::now();

    // Six hours, three days ago, starting on a 2h boundary: three blocks per tenant.
    let t0 = (now_ms() / 1000 - 3 * 24 * HOUR_S) / (2 * HOUR_S) * (2 * HOUR_S);
    let a_inputs = tenant_a(t0);
    let a_series = a_inputs.len();
    let a_blocks = promtool_blocks(promtool, root, "blocks-a", &a_inputs);
    drop(a_inputs);
    let b_inputs = tenant_b(t0);
    let b_series = b_inputs.len();
    let b_blocks = promtool_blocks(promtool, root, "blocks-b", &b_inputs);
    assert_eq!(a_blocks.len(), 3, "promtool wrote {a_blocks:?}");
    assert_eq!(b_blocks.len(), 3, "promtool wrote {b_blocks:?}");
    let a_dir = root.join("blocks-a");
    let a_bytes: u64 = a_blocks.iter().map(|b| block_bytes(&a_dir.join(b))).sum();
    let a_index_bytes: u64 = a_blocks
        .iter()
        .map(|b| {
            std::fs::metadata(a_dir.join(b).join("index"))
                .unwrap()
                .len()
        })
        .sum();
    import(&s3, TENANT_A, &a_dir);
    // Tenant B's blocks take tenant A's block ids: anything in the read path keyed by block
    // id alone (caches, index-headers on disk, the loaded blocks) would mix the tenants.
    give_ids(&root.join("blocks-b"), &a_dir);
    assert_eq!(block_dirs(&root.join("blocks-b")), a_blocks);
    import(&s3, TENANT_B, &root.join("blocks-b"));
    let imported = Instant::now();
    eprintln!(
        "{a_series} series of tenant A in {} blocks ({a_bytes} bytes of index and chunks), imported after {:?}",
        a_blocks.len(),
        started.elapsed()
    );

    // The reference: Prometheus with a copy of tenant A's blocks. A 2h maximum block
    // duration keeps it from compacting them (its label APIs answer per block).
    let prom_data = root.join("prometheus-data");
    for b in &a_blocks {
        copy_dir(&a_dir.join(b), &prom_data.join(b));
    }
    let prom = Prometheus::start(
        prom_bin,
        &root.join("prometheus"),
        &prom_data,
        &[
            "--storage.tsdb.retention.time=100y",
            "--storage.tsdb.min-block-duration=2h",
            "--storage.tsdb.max-block-duration=2h",
        ],
    );

    let c = start_cluster(root, &s3);
    wait_ring_page(
        &c.distributor,
        "/ring",
        "3 ACTIVE ingesters",
        Duration::from_secs(60),
        all_active(3),
    );
    wait_ring_page(
        &c.querier,
        "/store-gateway/ring",
        "2 ACTIVE store-gateways",
        Duration::from_secs(60),
        all_active(GATEWAYS),
    );
    let all_blocks = (a_blocks.len() + b_blocks.len()) as f64;
    for i in 0..GATEWAYS {
        let g = c.gateway(i);
        let deadline = Instant::now() + Duration::from_secs(60);
        while g.metric("norn_storegateway_blocks_loaded") < all_blocks {
            assert!(
                Instant::now() < deadline,
                "store-gateway-{i} did not load {all_blocks} blocks\n{}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Recent data goes the other way (distributor → ingesters); it is outside every
    // historical range below, so the comparisons also check it stays out of them.
    let now = now_ms();
    let (status, body) = c.distributor.push(
        Some(TENANT_A),
        &request(vec![series(
            &[("__name__", "recent_gauge"), ("src", "distributor")],
            &[(now - 1000, 7.0)],
        )]),
    );
    assert_eq!(status, 200, "{body}");
    let (status, v) = c.querier.get_json(
        Some(TENANT_A),
        &format!(
            "/prometheus/api/v1/query?query=recent_gauge&time={}",
            now as f64 / 1000.0
        ),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "7", "{v}");
    eprintln!("cluster ready after {:?}", started.elapsed());

    Setup {
        c,
        prom,
        t0,
        a_blocks,
        a_series,
        b_series,
        a_bytes,
        a_index_bytes,
        all_blocks,
        started,
        imported,
        _moto: moto,
        _root: root_dir,
    }
}

/// Step 1: A selective query on cold caches reads a small part of the blocks from the bucket.
fn selective_query_reads_little(s: &Setup) {
    let (c, t0) = (&s.c, s.t0);
    let (a_bytes, a_index_bytes, a_series) = (s.a_bytes, s.a_index_bytes, s.a_series);
    let selective = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        urlencode(
            "http_requests_total{job=\"batch\",instance=\"i7\",method=\"POST\",code=\"404\"}"
        ),
        t0 + 3,
        t0 + 6 * HOUR_S + 3
    );
    let before = c.query_bytes_fetched();
    let (status, answer) = s.get(TENANT_A, &selective);
    let after = c.query_bytes_fetched();
    assert_eq!(status, 200, "{answer}");
    let (_, reference) = s.prom.get_json(&selective);
    same_answer(&selective, &reference, &answer).unwrap();
    assert_eq!(answer["data"]["result"].as_array().unwrap().len(), 1);
    let by_kind: Vec<f64> = (0..3).map(|k| after[k] - before[k]).collect();
    let fetched: f64 = by_kind.iter().sum();
    let share = fetched / a_bytes as f64;
    eprintln!(
        "selective query: {fetched} bytes fetched from the bucket (postings, series, chunks: {by_kind:?}), {:.2} % of the blocks' {a_bytes}; index files alone: {a_index_bytes}",
        share * 100.0
    );
    assert!(
        by_kind.iter().all(|b| *b > 0.0),
        "on cold caches the store-gateways read postings, series and chunks from the bucket: {by_kind:?}"
    );
    // Reading the index files whole would cost more than this, the chunk files far more.
    assert!(
        fetched < a_index_bytes as f64 && share < 0.10,
        "one series of {a_series} cost {fetched} bytes; the blocks hold {a_bytes}, their index files {a_index_bytes}"
    );
}

/// Step 2: Queries and label APIs answer what Prometheus answers; returns (path, Prometheus'
/// answer) of each.
fn answers_equal_prometheus(s: &Setup) -> Vec<(String, serde_json::Value)> {
    let t0 = s.t0;
    let paths = api_paths(t0);
    let mut references = Vec::new();
    let mut failures = Vec::new();
    for p in &paths {
        let (ps, pv) = s.prom.get_json(p);
        assert_eq!(ps, 200, "prometheus {p}: {pv}");
        let (ns, nv) = s.get(TENANT_A, p);
        if ns != 200 {
            failures.push(format!("{p}: status {ns}: {nv}"));
        } else if let Err(e) = same_answer(p, &pv, &nv) {
            failures.push(format!("{p}: {e}"));
        }
        references.push((p.clone(), pv));
    }
    assert!(
        failures.is_empty(),
        "{} of {} answers differ from Prometheus:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
    // Non-trivial answers: the comparison is not of empty lists.
    let everything = format!(
        "/api/v1/series?match[]={}&start={t0}&end={}",
        urlencode("{__name__=~\".+\"}"),
        t0 + 6 * HOUR_S
    );
    let (_, all_series) = s.get(TENANT_A, &everything);
    assert_eq!(all_series["data"].as_array().unwrap().len(), s.a_series);
    eprintln!(
        "{} answers equal Prometheus' after {:?}",
        paths.len(),
        s.started.elapsed()
    );
    references
}

/// Step 3: Tenant B's blocks never reach tenant A, nor A's B; each sees its own.
fn tenants_stay_apart(s: &Setup) {
    let t0 = s.t0;
    let full = s.full();
    let everything = format!(
        "/api/v1/series?match[]={}&{full}",
        urlencode("{__name__=~\".+\"}")
    );
    let leaks = [
        format!(
            "/api/v1/query?query=tenant_b_only&time={}",
            t0 + 3 * HOUR_S + 3
        ),
        format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=600",
            urlencode("http_requests_total{job=\"b-secret\"}"),
            t0 + 3,
            t0 + 6 * HOUR_S + 3
        ),
        format!(
            "/api/v1/series?match[]={}&{full}",
            urlencode("{job=\"b-secret\"}")
        ),
        format!("/api/v1/series?match[]=tenant_b_only&{full}"),
        format!("/api/v1/label/owner/values?{full}"),
    ];
    for p in &leaks {
        let (status, v) = s.get(TENANT_A, p);
        assert_eq!(status, 200, "{p}: {v}");
        let data = if p.contains("/query") {
            &v["data"]["result"]
        } else {
            &v["data"]
        };
        assert_eq!(
            data.as_array().map(Vec::len),
            Some(0),
            "A sees B's data: {p}: {v}"
        );
        let (status, v) = s.get(TENANT_B, p);
        assert_eq!(status, 200, "{p}: {v}");
        let data = if p.contains("/query") {
            &v["data"]["result"]
        } else {
            &v["data"]
        };
        assert!(
            !data.as_array().unwrap().is_empty(),
            "B sees its data: {p}: {v}"
        );
    }
    // Label lists: each tenant sees its own names and values and none of the other's.
    for (p, only_a, only_b) in [
        (format!("/api/v1/labels?{full}"), "phase", "owner"),
        (
            format!("/api/v1/label/__name__/values?{full}"),
            "memory_bytes",
            "tenant_b_only",
        ),
        (
            format!("/api/v1/label/job/values?{full}"),
            "api",
            "b-secret",
        ),
    ] {
        for (tenant, own, other) in [(TENANT_A, only_a, only_b), (TENANT_B, only_b, only_a)] {
            let (status, v) = s.get(tenant, &p);
            assert_eq!(status, 200, "{p}: {v}");
            let list: Vec<&str> = v["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|x| x.as_str())
                .collect();
            assert!(
                list.contains(&own) && !list.contains(&other),
                "{tenant}: {p}: {v}"
            );
        }
    }
    let (_, v) = s.get(TENANT_B, &everything);
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(s.b_series),
        "tenant B's series, all of them and only them: {v}"
    );
}

/// Step 4: `kill -9` of one store-gateway while two threads loop over `loop_set`: every answer
/// stays complete. Returns which one was killed.
fn kill_one_while_querying(s: &mut Setup, loop_set: &[(String, serde_json::Value)]) -> usize {
    // The one killed is one the querier asks first for some of tenant A's blocks (the
    // replica order is the ring's), so some blocks must be fetched again from the other.
    let served = |g: &Norn| g.metric("norn_storegateway_cache_requests_total");
    let victim = if served(s.c.gateway(0)) >= served(s.c.gateway(1)) {
        0
    } else {
        1
    };
    assert!(
        served(s.c.gateway(victim)) > 0.0,
        "store-gateway-{victim} served queries"
    );
    let loop_set: Arc<Vec<(String, serde_json::Value)>> = Arc::new(loop_set.to_vec());
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Arc<Vec<AtomicUsize>> = Arc::new((0..2).map(|_| AtomicUsize::new(0)).collect());
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    // When each query was sent and answered, to tell how many the kill interrupted.
    let spans: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (loop_set, stop, rounds, bad, spans) = (
                Arc::clone(&loop_set),
                Arc::clone(&stop),
                Arc::clone(&rounds),
                Arc::clone(&bad),
                Arc::clone(&spans),
            );
            let port = s.c.querier.port;
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // The two workers walk the list from different ends.
                    for k in 0..loop_set.len() {
                        let (p, reference) =
                            &loop_set[if w == 0 { k } else { loop_set.len() - 1 - k }];
                        let sent = Instant::now();
                        let (s, v) = norn_get(port, TENANT_A, p);
                        spans.lock().unwrap().push((sent, Instant::now()));
                        let verdict = if s != 200 {
                            Err(format!("status {s}: {v}"))
                        } else {
                            same_answer(p, reference, &v)
                        };
                        if let Err(e) = verdict {
                            bad.lock().unwrap().push(format!("{p}: {e}"));
                        }
                    }
                    rounds[w].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_rounds = |at_least: [usize; 2]| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while (0..2).any(|w| rounds[w].load(Ordering::SeqCst) < at_least[w]) {
            assert!(Instant::now() < deadline, "query loops stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_rounds([1, 1]);
    let refetches =
        s.c.querier
            .metric("norn_querier_storegateway_refetches_total");
    s.c.gateways[victim].kill9();
    let killed_at = Instant::now();
    let after_kill = [0, 1].map(|w| rounds[w].load(Ordering::SeqCst) + 2);
    // Two whole rounds each after the kill (the rounds in flight at the kill do not count).
    wait_rounds(after_kill);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} answers incomplete or failed with store-gateway-{victim} killed:\n{}",
        bad.len(),
        bad.join("\n")
    );
    let refetched =
        s.c.querier
            .metric("norn_querier_storegateway_refetches_total")
            - refetches;
    assert!(
        refetched > 0.0,
        "the querier asked the other replica again ({refetched} refetch rounds)"
    );
    let spans = spans.lock().unwrap();
    let interrupted = spans
        .iter()
        .filter(|(sent, done)| *sent < killed_at && killed_at < *done)
        .count();
    let after = spans.iter().filter(|(sent, _)| *sent > killed_at).count();
    eprintln!(
        "kill -9 store-gateway-{victim}: {} answers, all equal to Prometheus' ({interrupted} in flight at the kill, {after} sent after it); {refetched} refetch rounds",
        spans.len()
    );

    victim
}

/// Step 5: No store-gateway left: every read API fails with a 5xx naming the blocks it misses.
fn kill_both(s: &mut Setup, victim: usize) {
    s.c.gateways[1 - victim].kill9();
    // A block uploaded within the querier's grace (three sync intervals of the harness' 2 s)
    // may be missing without failing a query, as the ingesters that shipped it still serve
    // it: the blocks must be older than that here, or a fast run sees empty answers. A
    // second more for the bucket's whole-second upload times.
    let grace = UPLOAD_GRACE + Duration::from_secs(1);
    if let Some(left) = grace.checked_sub(s.imported.elapsed()) {
        std::thread::sleep(left);
    }
    let failed_checks =
        s.c.querier
            .metric("norn_querier_blocks_consistency_checks_failed_total");
    let (t0, full) = (s.t0, s.full());
    let q = urlencode(QUERIES[0]);
    // (path, how many of tenant A's blocks it needs): the instant query's five-minute
    // lookback lies inside the first block, the others span all three.
    let failing = [
        (
            format!(
                "/api/v1/query_range?query={q}&start={}&end={}&step=120",
                t0 + 3,
                t0 + 6 * HOUR_S + 603
            ),
            3,
        ),
        (
            format!("/api/v1/query?query={q}&time={}", t0 + HOUR_S + 1803),
            1,
        ),
        (format!("/api/v1/series?match[]=memory_bytes&{full}"), 3),
        (format!("/api/v1/labels?{full}"), 3),
        (format!("/api/v1/label/__name__/values?{full}"), 3),
    ];
    for (p, needed) in &failing {
        let (status, v) = s.get(TENANT_A, p);
        assert!((500..600).contains(&status), "{p}: status {status}: {v}");
        assert_eq!(v["status"], "error", "{p}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains("store-gateway"), "{p}: {msg}");
        let named = s
            .a_blocks
            .iter()
            .filter(|b| msg.contains(b.as_str()))
            .count();
        assert_eq!(
            named, *needed,
            "{p}: the error names the blocks it misses: {msg}"
        );
        if *needed == 1 {
            eprintln!("with no store-gateway: {status} {}: {msg}", v["errorType"]);
        }
    }
    assert!(
        s.c.querier
            .metric("norn_querier_blocks_consistency_checks_failed_total")
            >= failed_checks + failing.len() as f64,
        "each failure is counted as a failed consistency check"
    );
    eprintln!(
        "both store-gateways down: 5xx naming the blocks after {:?}",
        s.started.elapsed()
    );
}

/// Step 6: One store-gateway back: it serves from the index-headers it left on disk (none built
/// again) and every answer is complete again; the other is still down (and still in the
/// ring), so the querier keeps retrying around it.
fn restart_one(s: &mut Setup, victim: usize, loop_set: &[(String, serde_json::Value)]) {
    let back = &mut s.c.gateways[victim];
    let restarted = Instant::now();
    back.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.metric("norn_storegateway_blocks_loaded") < s.all_blocks {
        assert!(
            Instant::now() < deadline,
            "restarted store-gateway-{victim} did not load its blocks\n{}",
            back.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        back.metric("norn_storegateway_index_header_builds_total"),
        0.0,
        "a restart reuses the index-headers on disk"
    );
    // The querier still lists the killed process as ACTIVE; wait until it shows the new one
    // ACTIVE: that state with a heartbeat sent after the restart (a restarted store-gateway
    // is JOINING, and not asked, until its first sync is done).
    let id = format!("store-gateway-{victim}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shards = common::ring_shards(&s.c.querier, "/store-gateway/ring");
        let fresh_active = shards.iter().any(|s| {
            s["id"] == id.as_str()
                && s["state"] == "ACTIVE"
                && s["heartbeat_age_seconds"]
                    .as_f64()
                    .is_some_and(|age| age < restarted.elapsed().as_secs_f64())
        });
        if fresh_active {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the querier never saw the restarted {id} ACTIVE: {shards:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut failures = Vec::new();
    for (p, reference) in loop_set.iter() {
        let (status, v) = s.get(TENANT_A, p);
        if status != 200 {
            failures.push(format!("{p}: status {status}: {v}"));
        } else if let Err(e) = same_answer(p, reference, &v) {
            failures.push(format!("{p}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "after store-gateway-{victim} came back:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "store-gateway-{victim} restarted: {} answers equal Prometheus' again; total {:?}",
        loop_set.len(),
        s.started.elapsed()
    );
}
