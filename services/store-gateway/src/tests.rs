//! End-to-end tests of the store-gateway over blocks written by Norn's block writer: answers
//! equal the whole-file block reader's, selective queries read little, damage is an error,
//! tenants are isolated, restarts reuse headers, idle headers close, gRPC round trip.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use norn_cache::NoCache;
use norn_model::{ChunkSeries, EncodedChunk, Labels, MatchType, Matcher, SampleBudget};
use norn_proto::convert::{TENANT_METADATA_KEY, labels_from_proto, matchers_to_proto};
use norn_proto::storegateway::v1 as pb;
use norn_proto::storegateway::v1::store_gateway_server::StoreGateway;
use norn_storage::{Bucket, layout};
use norn_tsdb::block::Block;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::testutil::write_test_block_in;
use crate::{BlockOwnership, Config, Deps, OwnAll, StoreGatewayMetrics, StoreGatewayService};

pub(crate) struct Harness {
    pub(crate) svc: Arc<StoreGatewayService>,
    pub(crate) metrics: StoreGatewayMetrics,
    _stop: CancellationToken,
}

pub(crate) fn config(dir: &Path) -> Config {
    Config {
        sync_dir: dir.to_path_buf(),
        sync_interval: Duration::from_secs(3600),
        ignore_blocks_within: Duration::ZERO,
        max_concurrent_queue_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

pub(crate) async fn start(
    bucket: &Bucket,
    cfg: Config,
    ownership: Arc<dyn BlockOwnership>,
) -> Harness {
    let metrics = StoreGatewayMetrics::new(&Registry::new()).unwrap();
    let stop = CancellationToken::new();
    let svc = crate::build_inner(
        cfg,
        Deps {
            bucket: bucket.clone(),
            ownership,
            index_cache: Arc::new(NoCache),
            chunks_cache: Arc::new(NoCache),
            metrics: norn_server::Metrics::new(),
            stop: stop.clone(),
            grpc_limits: Default::default(),
        },
        metrics.clone(),
        false,
    )
    .unwrap();
    use norn_server::Service;
    assert!(svc.ready().is_err(), "ready before the first sync");
    svc.store().sync().await.unwrap();
    assert!(svc.ready().is_ok());
    Harness {
        svc,
        metrics,
        _stop: stop,
    }
}

fn req<T>(tenant: &str, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert(TENANT_METADATA_KEY, tenant.parse().unwrap());
    r
}

/// Runs `Series` in process; returns the series and the hints.
pub(crate) async fn series(
    h: &Harness,
    tenant: &str,
    blocks: &[&str],
    mint: i64,
    maxt: i64,
    matchers: &[Matcher],
) -> Result<(Vec<ChunkSeries>, pb::SeriesHints), tonic::Status> {
    let stream = h
        .svc
        .api()
        .series(req(
            tenant,
            pb::SeriesRequest {
                start_ms: mint,
                end_ms: maxt,
                matchers: matchers_to_proto(matchers),
                block_ids: blocks.iter().map(|s| s.to_string()).collect(),
                skip_chunks: false,
            },
        ))
        .await?
        .into_inner();
    collect(stream).await
}

async fn collect(
    mut stream: impl futures::Stream<Item = Result<pb::SeriesResponse, tonic::Status>> + Unpin,
) -> Result<(Vec<ChunkSeries>, pb::SeriesHints), tonic::Status> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut hints = None;
    while let Some(m) = stream.next().await {
        match m?.result {
            Some(pb::series_response::Result::Batch(b)) => {
                assert!(hints.is_none(), "batch after hints");
                for s in b.series {
                    out.push(ChunkSeries {
                        labels: labels_from_proto(s.labels),
                        chunks: s
                            .chunks
                            .into_iter()
                            .map(|c| EncodedChunk::xor(c.min_time_ms, c.max_time_ms, c.data))
                            .collect(),
                    });
                }
            }
            Some(pb::series_response::Result::Hints(h)) => hints = Some(h),
            None => panic!("empty response"),
        }
    }
    Ok((out, hints.expect("hints last")))
}

/// What the whole-file reader answers for the same blocks, merged by labels.
fn expected(dirs: &[std::path::PathBuf], mint: i64, maxt: i64, ms: &[Matcher]) -> Vec<ChunkSeries> {
    let mut by: BTreeMap<Labels, Vec<EncodedChunk>> = BTreeMap::new();
    for d in dirs {
        let b = Block::open(d).unwrap();
        if !(b.meta().min_time <= maxt && b.meta().max_time > mint) {
            continue;
        }
        for s in b
            .select_chunks_within(mint, maxt, ms, &SampleBudget::unlimited())
            .unwrap()
        {
            by.entry(s.labels).or_default().extend(s.chunks);
        }
    }
    by.into_iter()
        .map(|(labels, mut chunks)| {
            chunks.sort_by_key(|c| (c.min_t, c.max_t));
            ChunkSeries { labels, chunks }
        })
        .collect()
}

pub(crate) fn re(name: &str, v: &str) -> Matcher {
    Matcher::new(MatchType::Regex, name, v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_whole_file_reader() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let a = write_test_block_in(&bucket, local.path(), "t1", 0, 60).await;
    // A second block later in time with overlapping series: joined by labels.
    let b = write_test_block_in(&bucket, local.path(), "t1", 3_600_000, 40).await;
    let dirs = [local.path().join(&a), local.path().join(&b)];
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;

    let cases: Vec<(i64, i64, Vec<Matcher>)> = vec![
        (
            i64::MIN,
            i64::MAX,
            vec![Matcher::equal("__name__", "metric_1")],
        ),
        (0, 1_000_000, vec![Matcher::equal("job", "job2")]),
        (
            i64::MIN,
            i64::MAX,
            vec![
                re("__name__", "metric_(1|3)"),
                Matcher::new(MatchType::NotEqual, "job", "job0").unwrap(),
            ],
        ),
        (i64::MIN, i64::MAX, vec![re("instance", "inst0001.")]),
        (3_600_000, 3_700_000, vec![re("__name__", ".+")]),
        (i64::MIN, i64::MAX, vec![Matcher::equal("job", "nope")]),
        (
            i64::MIN,
            i64::MAX,
            vec![Matcher::new(MatchType::NotRegex, "instance", "inst000.*").unwrap()],
        ),
    ];
    // Query sharding: each shard's series (by label hash) and only their chunks are fetched.
    let mut cases = cases;
    for i in 0..3 {
        let shard = norn_model::ShardSelector::new(i, 3).unwrap().matcher();
        cases.push((
            i64::MIN,
            i64::MAX,
            vec![re("__name__", ".+"), shard.clone()],
        ));
        cases.push((0, 1_000_000, vec![Matcher::equal("job", "job2"), shard]));
    }
    for (mint, maxt, ms) in cases {
        let (got, hints) = series(&h, "t1", &[&a, &b], mint, maxt, &ms).await.unwrap();
        let want = expected(&dirs, mint, maxt, &ms);
        assert_eq!(got, want, "matchers {ms:?} [{mint}, {maxt}]");
        let mut q = hints.queried_block_ids.clone();
        q.sort();
        let mut ab = vec![a.clone(), b.clone()];
        ab.sort();
        assert_eq!(q, ab);
        let st = hints.stats.unwrap();
        assert_eq!(
            st.fetched_chunks,
            want.iter().map(|s| s.chunks.len() as u64).sum::<u64>()
        );
    }

    // Label names and values, with and without matchers.
    let api = h.svc.api();
    let names = api
        .label_names(req(
            "t1",
            pb::LabelNamesRequest {
                start_ms: i64::MIN,
                end_ms: i64::MAX,
                matchers: vec![],
                block_ids: vec![a.clone(), b.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names.label_names, ["__name__", "instance", "job"]);
    let block_a = Block::open(&dirs[0]).unwrap();
    for ms in [vec![], vec![Matcher::equal("__name__", "metric_2")]] {
        let vals = api
            .label_values(req(
                "t1",
                pb::LabelValuesRequest {
                    label_name: "instance".into(),
                    start_ms: i64::MIN,
                    end_ms: 1000,
                    matchers: matchers_to_proto(&ms),
                    block_ids: vec![a.clone(), b.clone()],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        // Only block a overlaps [.., 1000].
        assert_eq!(
            vals.label_values,
            block_a.label_values("instance", &ms).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selective_query_reads_a_small_fraction_of_the_block() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 3000).await;
    let size: u64 = bucket
        .list(&layout::block_prefix("t1", &id))
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let header_bytes = h.metrics.fetched("index-header");
    assert!(header_bytes > 0);

    let ms = [Matcher::equal("instance", "inst00042")];
    let (got, hints) = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap();
    assert_eq!(
        got,
        expected(&[local.path().join(&id)], i64::MIN, i64::MAX, &ms)
    );
    assert_eq!(got.len(), 1);
    let fetched: u64 = ["postings", "series", "chunks"]
        .iter()
        .map(|k| h.metrics.fetched(k))
        .sum();
    assert!(fetched > 0);
    assert_eq!(hints.stats.unwrap().fetched_bucket_bytes, fetched);
    // The query reads well under 1% of the block (the header is a one-off, also small).
    assert!(
        fetched * 100 < size,
        "fetched {fetched} bytes of a {size}-byte block"
    );
    assert!(header_bytes * 4 < size, "header {header_bytes} of {size}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_fails_the_query() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 20).await;
    let key = layout::block_file("t1", &id, "chunks/000001");
    let mut b = bucket.get(&key).await.unwrap().to_vec();
    let n = b.len();
    b[n / 2] ^= 0x55;
    bucket.put(&key, b.into()).await.unwrap();
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let e = series(
        &h,
        "t1",
        &[&id],
        i64::MIN,
        i64::MAX,
        &[re("__name__", ".+")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(
        e.message().contains(&id) && e.message().contains("chunks"),
        "{}",
        e.message()
    );
    assert_eq!(h.metrics.block_errors.with_label_values(&["t1"]).get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_unknown_blocks_are_not_queried() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let a = write_test_block_in(&bucket, local.path(), "ta", 0, 10).await;
    let b = write_test_block_in(&bucket, local.path(), "tb", 0, 10).await;
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let all = [re("__name__", ".+")];
    // Tenant tb names ta's block: not served to it.
    let (got, hints) = series(&h, "tb", &[&a], i64::MIN, i64::MAX, &all)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(hints.queried_block_ids.is_empty());
    let (got, hints) = series(
        &h,
        "tb",
        &[&a, &b, "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        i64::MIN,
        i64::MAX,
        &all,
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(hints.queried_block_ids, std::slice::from_ref(&b));
    // No tenant at all: refused.
    let e = h
        .svc
        .api()
        .series(tonic::Request::new(pb::SeriesRequest::default()))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_from_the_headers_on_disk() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 30).await;
    let sync = tempfile::tempdir().unwrap();
    let ms = [Matcher::equal("job", "job1")];
    let first = {
        let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
        assert!(h.metrics.fetched("index-header") > 0);
        series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
            .await
            .unwrap()
            .0
    };
    assert!(
        sync.path()
            .join("t1")
            .join(&id)
            .join("index-header")
            .exists()
    );
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    assert_eq!(
        h.metrics.fetched("index-header"),
        0,
        "the header was refetched"
    );
    assert_eq!(h.metrics.header_builds.get(), 0);
    let again = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap()
        .0;
    assert_eq!(first, again);
    assert!(!again.is_empty());

    // A damaged header on disk is rebuilt, not served.
    drop(h);
    let p = sync.path().join("t1").join(&id).join("index-header");
    let mut b = std::fs::read(&p).unwrap();
    b[20] ^= 1;
    std::fs::write(&p, b).unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    assert_eq!(h.metrics.header_builds.get(), 1);
    let again = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap()
        .0;
    assert_eq!(first, again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_headers_open_on_use_and_close_when_idle() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 10).await;
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let blk = h.svc.store().block("t1", &id).unwrap();
    // Built, not mapped until a query needs it.
    assert!(!blk.is_open());
    let ms = [Matcher::equal("job", "job0")];
    series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap();
    assert!(blk.is_open());
    assert_eq!(h.metrics.header_lazy_loads.get(), 1);
    // Not idle long enough yet.
    assert_eq!(h.svc.store().close_idle(Duration::from_secs(3600)), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(h.svc.store().close_idle(Duration::from_millis(10)), 1);
    assert!(!blk.is_open());
    assert_eq!(h.metrics.headers_open.get(), 0);
    series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap();
    assert_eq!(h.metrics.header_lazy_loads.get(), 2);

    // Without lazy loading the header is mapped at load and never closed for idleness.
    let sync2 = tempfile::tempdir().unwrap();
    let mut cfg = config(sync2.path());
    cfg.index_header.lazy_loading_enabled = false;
    let h2 = start(&bucket, cfg, Arc::new(OwnAll)).await;
    let blk2 = h2.svc.store().block("t1", &id).unwrap();
    assert!(blk2.is_open());
    assert_eq!(h2.svc.store().close_idle(Duration::ZERO), 0);
}

/// Owns blocks while `on` is set.
struct Toggle(AtomicBool);

impl BlockOwnership for Toggle {
    fn owns(&self, _t: &str, _b: &str) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_blocks_no_longer_owned_are_dropped() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 5).await;
    let sync = tempfile::tempdir().unwrap();
    let own = Arc::new(Toggle(AtomicBool::new(true)));
    let h = start(
        &bucket,
        config(sync.path()),
        Arc::clone(&own) as Arc<dyn BlockOwnership>,
    )
    .await;
    let header = sync.path().join("t1").join(&id).join("index-header");
    assert!(header.exists());
    own.0.store(false, Ordering::Relaxed);
    let s = h.svc.store().sync().await.unwrap();
    assert_eq!(s.dropped, 1);
    assert!(h.svc.store().block("t1", &id).is_none());
    assert!(!header.exists());
    let (got, hints) = series(
        &h,
        "t1",
        &[&id],
        i64::MIN,
        i64::MAX,
        &[re("__name__", ".+")],
    )
    .await
    .unwrap();
    assert!(got.is_empty() && hints.queried_block_ids.is_empty());

    // Blocks too recent are left to the ingesters.
    let sync2 = tempfile::tempdir().unwrap();
    let mut cfg = config(sync2.path());
    cfg.ignore_blocks_within = Duration::from_secs(10 * 3600);
    let recent = write_test_block_in(&bucket, local.path(), "t2", norn_model::now_ms(), 2).await;
    let h2 = start(&bucket, cfg, Arc::new(OwnAll)).await;
    assert!(h2.svc.store().block("t2", &recent).is_none());
    assert!(h2.svc.store().block("t1", &id).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_trip() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 20).await;
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = {
        let svc = h.svc.grpc_server();
        let stop = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.cancelled_owned(),
                )
                .await
        })
    };
    let mut client = tokio::time::timeout(
        Duration::from_secs(10),
        pb::store_gateway_client::StoreGatewayClient::connect(format!("http://{addr}")),
    )
    .await
    .unwrap()
    .unwrap();
    let ms = [Matcher::equal("job", "job2")];
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        client.series(req(
            "t1",
            pb::SeriesRequest {
                start_ms: i64::MIN,
                end_ms: i64::MAX,
                matchers: matchers_to_proto(&ms),
                block_ids: vec![id.clone()],
                skip_chunks: false,
            },
        )),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    let (got, hints) = collect(stream).await.unwrap();
    assert_eq!(
        got,
        expected(&[local.path().join(&id)], i64::MIN, i64::MAX, &ms)
    );
    assert_eq!(hints.queried_block_ids, std::slice::from_ref(&id));
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Series entries and chunks longer than the first-read estimates are read again exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_entries_and_large_chunks_are_read_whole() {
    use norn_model::Sample;
    use norn_tsdb::SeriesChunks;
    use norn_tsdb::block::{BlockOptions, chunks_from_samples, write_block};

    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    // Values that compress badly: large XOR chunks (1000 samples each, several KiB).
    let noisy: Vec<Sample> = (0..3000)
        .map(|k| Sample::new(k * 1000, ((k * 7919) % 104_729) as f64 * 1.000_123_4))
        .collect();
    // One sample per chunk: a series entry with 1500 chunk refs (several KiB).
    let many: Vec<Sample> = (0..1500).map(|k| Sample::new(k * 1000, k as f64)).collect();
    let mut input = vec![
        SeriesChunks {
            labels: Labels::from_pairs([("__name__", "big_chunks")]),
            chunks: chunks_from_samples(&noisy, 1000).unwrap(),
        },
        SeriesChunks {
            labels: Labels::from_pairs([("__name__", "many_chunks")]),
            chunks: chunks_from_samples(&many, 1).unwrap(),
        },
    ];
    input.sort_by(|a, b| a.labels.cmp(&b.labels));
    assert!(input[0].chunks.iter().all(|c| c.data.len() > 4096));
    let meta = write_block(
        local.path(),
        input,
        BlockOptions::for_tenant("t1", "test", []),
    )
    .unwrap();
    let id = meta.ulid.to_string();
    bucket
        .upload_dir(
            &local.path().join(&id),
            &layout::block_prefix("t1", &id),
            Some("meta.json"),
        )
        .await
        .unwrap();
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    for name in ["big_chunks", "many_chunks"] {
        let ms = [Matcher::equal("__name__", name)];
        let (got, _) = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
            .await
            .unwrap();
        assert_eq!(
            got,
            expected(&[local.path().join(&id)], i64::MIN, i64::MAX, &ms)
        );
        assert_eq!(got.len(), 1);
    }
    // Everything at once, and a range cutting the middle.
    let all = [re("__name__", ".+")];
    for (a, b) in [(i64::MIN, i64::MAX), (400_000, 1_200_000)] {
        let (got, _) = series(&h, "t1", &[&id], a, b, &all).await.unwrap();
        assert_eq!(got, expected(&[local.path().join(&id)], a, b, &all));
    }
}

/// Cached expanded postings, series and chunks serve a repeated query without bucket reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_serve_repeated_queries() {
    use bytes::Bytes;

    use crate::testutil::MapCache;

    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 50).await;
    let sync = tempfile::tempdir().unwrap();
    let metrics = StoreGatewayMetrics::new(&Registry::new()).unwrap();
    let index_cache = Arc::new(MapCache::default());
    let svc = crate::build_inner(
        config(sync.path()),
        Deps {
            bucket: bucket.clone(),
            ownership: Arc::new(OwnAll),
            index_cache: Arc::clone(&index_cache) as Arc<dyn norn_cache::Cache>,
            chunks_cache: Arc::new(MapCache::default()),
            metrics: norn_server::Metrics::new(),
            stop: CancellationToken::new(),
            grpc_limits: Default::default(),
        },
        metrics.clone(),
        false,
    )
    .unwrap();
    svc.store().sync().await.unwrap();
    let h = Harness {
        svc,
        metrics,
        _stop: CancellationToken::new(),
    };
    let ms = [Matcher::equal("job", "job1")];
    let first = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap();
    let fetched = |h: &Harness| -> u64 {
        ["postings", "series", "chunks"]
            .iter()
            .map(|k| h.metrics.fetched(k))
            .sum()
    };
    let before = fetched(&h);
    assert!(before > 0);
    // Keys name the tenant and the block.
    assert!(
        index_cache
            .0
            .lock()
            .keys()
            .all(|k| k.contains(":t1:") && k.contains(&id))
    );
    // The matchers' expanded postings stand in for their postings lists: with the lists gone
    // from the cache, a repeat still reads nothing.
    {
        let mut m = index_cache.0.lock();
        assert_eq!(m.keys().filter(|k| k.starts_with("X:")).count(), 1);
        m.retain(|k, _| !k.starts_with("P:"));
    }
    let second = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap();
    assert_eq!(first.0, second.0);
    assert_eq!(fetched(&h), before, "a repeated query read the bucket");
    assert_eq!(second.1.stats.unwrap().fetched_bucket_bytes, 0);
    // A damaged cache entry is not trusted: the bucket is read again.
    for v in index_cache.0.lock().values_mut() {
        let mut b = v.to_vec();
        let n = b.len();
        b[n - 1] ^= 0xff;
        *v = Bytes::from(b);
    }
    let third = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &ms)
        .await
        .unwrap();
    assert_eq!(first.0, third.0);
    assert!(fetched(&h) > before);
}

/// A block whose index cannot give a header fails the queries naming it; a later sync
/// retries the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_index_fails_the_query_until_repaired() {
    let bucket = Bucket::in_memory();
    let local = tempfile::tempdir().unwrap();
    let id = write_test_block_in(&bucket, local.path(), "t1", 0, 10).await;
    let key = layout::block_file("t1", &id, "index");
    let good = bucket.get(&key).await.unwrap();
    let mut bad = good.to_vec();
    let n = bad.len();
    bad[n - 20] ^= 0x01; // the TOC
    bucket.put(&key, bad.into()).await.unwrap();
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    assert_eq!(h.metrics.header_build_failures.get(), 1);
    let all = [re("__name__", ".+")];
    let e = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &all)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(e.message().contains("TOC"), "{}", e.message());
    assert_eq!(h.metrics.block_errors.with_label_values(&["t1"]).get(), 1);

    bucket.put(&key, good).await.unwrap();
    h.svc.store().sync().await.unwrap();
    let (got, _) = series(&h, "t1", &[&id], i64::MIN, i64::MAX, &all)
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
}

/// Bad requests are refused with INVALID_ARGUMENT, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    let bucket = Bucket::in_memory();
    let sync = tempfile::tempdir().unwrap();
    let h = start(&bucket, config(sync.path()), Arc::new(OwnAll)).await;
    let api = h.svc.api();
    let bad_regex = norn_proto::ingester::v1::LabelMatcher {
        r#type: norn_proto::ingester::v1::MatchType::Re as i32,
        name: "a".into(),
        value: "(".into(),
    };
    let unknown_type = norn_proto::ingester::v1::LabelMatcher {
        r#type: 99,
        name: "a".into(),
        value: "b".into(),
    };
    let bad_shard = norn_proto::ingester::v1::LabelMatcher {
        r#type: norn_proto::ingester::v1::MatchType::Eq as i32,
        name: norn_model::SHARD_LABEL.into(),
        value: "0_of_3".into(),
    };
    for (m, s, e) in [
        (vec![bad_shard], 0, 1),
        (vec![bad_regex], 0, 1),
        (vec![unknown_type], 0, 1),
        (vec![], 10, 1),
    ] {
        let r = api
            .series(req(
                "t1",
                pb::SeriesRequest {
                    start_ms: s,
                    end_ms: e,
                    matchers: m,
                    block_ids: vec!["x".into()],
                    skip_chunks: false,
                },
            ))
            .await;
        assert_eq!(r.err().unwrap().code(), tonic::Code::InvalidArgument);
    }
    let r = api
        .label_values(req(
            "t1",
            pb::LabelValuesRequest {
                label_name: String::new(),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(r.err().unwrap().code(), tonic::Code::InvalidArgument);
}
