//! The client against fake store-gateways served by tonic on 127.0.0.1: retries of blocks a
//! replica did not answer, the 5xx naming blocks no replica answered, the per-query limits'
//! 422, the tenant header, and the in-process path through the same code.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use norn_bucket_index::{Index, IndexBlock};
use norn_chunkenc::XorChunk;
use norn_limits::{Limits, Overrides};
use norn_model::{
    ErrorKind, MatchType, Matcher, QueryableProvider, StorageError, TenantId, now_ms,
};
use norn_proto::TENANT_METADATA_KEY;
use norn_proto::ingester::v1::{Chunk, ChunkEncoding, Label, StreamSeries};
use norn_proto::storegateway::v1 as pb;
use norn_proto::storegateway::v1::store_gateway_server::{StoreGateway, StoreGatewayServer};
use norn_ring::{BlocksSharding, InstanceDesc, InstanceState, Ring, RingConfig, block_token};
use norn_storage::Bucket;
use norn_storegateway_client::{
    ClientConfig, Config, GatewayClientPool, Gateways, InProcessGateway, StoreGatewayProvider,
};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

const TENANT: &str = "team-a";

/// A store-gateway that holds some blocks, each with one series `up{block="<id>"}` plus a
/// shared series `shared` whose samples every block repeats (replica blocks).
struct Fake {
    serves: HashSet<String>,
    fail: bool,
    /// Sends its batches, then breaks the stream instead of sending the hints (a process
    /// killed mid-answer).
    break_mid_stream: bool,
    tenants: Mutex<Vec<String>>,
    asked: Mutex<Vec<String>>,
}

impl Fake {
    fn new(serves: &[&str], fail: bool) -> Arc<Self> {
        Self::with(serves, fail, false)
    }

    fn with(serves: &[&str], fail: bool, break_mid_stream: bool) -> Arc<Self> {
        Arc::new(Self {
            serves: serves.iter().map(|s| s.to_string()).collect(),
            fail,
            break_mid_stream,
            tenants: Mutex::default(),
            asked: Mutex::default(),
        })
    }

    fn record<T>(&self, req: &Request<T>, blocks: &[String]) -> Result<(), Status> {
        let tenant = req
            .metadata()
            .get(TENANT_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.tenants.lock().push(tenant);
        self.asked.lock().extend(blocks.iter().cloned());
        if self.fail {
            return Err(Status::unavailable("fake store-gateway is down"));
        }
        Ok(())
    }

    fn served(&self, blocks: &[String]) -> Vec<String> {
        blocks
            .iter()
            .filter(|b| self.serves.contains(*b))
            .cloned()
            .collect()
    }
}

fn chunk(samples: &[(i64, f64)]) -> Chunk {
    let mut c = XorChunk::new();
    for (t, v) in samples {
        c.append(*t, *v);
    }
    Chunk {
        min_time_ms: samples[0].0,
        max_time_ms: samples[samples.len() - 1].0,
        encoding: ChunkEncoding::Xor as i32,
        data: Bytes::from(c.bytes().to_vec()),
    }
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.into(),
        value: value.into(),
    }
}

fn block_series(block: &str) -> Vec<StreamSeries> {
    vec![
        StreamSeries {
            labels: vec![label("__name__", "shared")],
            chunks: vec![chunk(&[(1000, 1.0), (2000, 2.0)])],
        },
        StreamSeries {
            labels: vec![label("__name__", "up"), label("block", block)],
            chunks: vec![chunk(&[(1000, 1.0), (1500, 1.0)])],
        },
    ]
}

#[async_trait::async_trait]
impl StoreGateway for Fake {
    type SeriesStream = futures::stream::BoxStream<'static, Result<pb::SeriesResponse, Status>>;

    async fn series(
        &self,
        req: Request<pb::SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        self.record(&req, &req.get_ref().block_ids)?;
        let served = self.served(&req.get_ref().block_ids);
        let mut msgs = Vec::new();
        for b in &served {
            msgs.push(Ok(pb::SeriesResponse {
                result: Some(pb::series_response::Result::Batch(pb::SeriesBatch {
                    series: block_series(b),
                })),
            }));
        }
        if self.break_mid_stream {
            msgs.push(Err(Status::unavailable("connection reset mid-stream")));
        }
        msgs.push(Ok(pb::SeriesResponse {
            result: Some(pb::series_response::Result::Hints(pb::SeriesHints {
                queried_block_ids: served,
                stats: None,
            })),
        }));
        Ok(Response::new(futures::stream::iter(msgs).boxed()))
    }

    async fn label_names(
        &self,
        req: Request<pb::LabelNamesRequest>,
    ) -> Result<Response<pb::LabelNamesResponse>, Status> {
        self.record(&req, &req.get_ref().block_ids)?;
        let served = self.served(&req.get_ref().block_ids);
        let mut names = vec!["__name__".to_string()];
        if !served.is_empty() {
            names.push("block".into());
        }
        Ok(Response::new(pb::LabelNamesResponse {
            label_names: names,
            queried_block_ids: served,
        }))
    }

    async fn label_values(
        &self,
        req: Request<pb::LabelValuesRequest>,
    ) -> Result<Response<pb::LabelValuesResponse>, Status> {
        self.record(&req, &req.get_ref().block_ids)?;
        let served = self.served(&req.get_ref().block_ids);
        Ok(Response::new(pb::LabelValuesResponse {
            label_values: served.clone(),
            queried_block_ids: served,
        }))
    }
}

/// Serves `fake` on a free loopback port; the server stops with the test's runtime.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(StoreGatewayServer::from_arc(fake))
            .serve_with_incoming(incoming)
            .await;
    });
    addr
}

fn index_block(id: &str) -> IndexBlock {
    IndexBlock {
        block_id: id.to_string(),
        min_time: 0,
        max_time: 7_200_000,
        segments_format: String::new(),
        segments_num: 1,
        uploaded_at: 0,
        compactor_shard_id: String::new(),
        source: String::new(),
        compaction_level: 1,
    }
}

async fn bucket_with(blocks: &[&str]) -> Bucket {
    let bucket = Bucket::in_memory();
    let mut index = Index::empty(1);
    index.blocks = blocks.iter().map(|b| index_block(b)).collect();
    index.write(&bucket, TENANT).await.unwrap();
    bucket
}

/// Two store-gateways "a" (token 1) and "b" (token 2^31) in a ring of replication factor 2:
/// a block whose token lies in (1, 2^31] is asked of b first, any other of a first.
fn ring(addr_a: &str, addr_b: &str) -> BlocksSharding {
    let ring = Ring::new(RingConfig {
        replication_factor: 2,
        heartbeat_timeout: Duration::from_secs(60),
        zone_awareness_enabled: false,
    });
    let inst = |id: &str, addr: &str, token: u32| InstanceDesc {
        id: id.into(),
        addr: addr.into(),
        zone: String::new(),
        state: InstanceState::Active,
        heartbeat_ms: now_ms(),
        registered_ms: 0,
        tokens: vec![token],
    };
    ring.set_instances(vec![inst("a", addr_a, 1), inst("b", addr_b, 1 << 31)]);
    BlocksSharding::new(ring)
}

/// A block id asked of `a` first.
fn block_for_a_first(n: usize) -> String {
    (0..)
        .map(|i| format!("01BLOCKA{n:02}{i:016}"))
        .find(|b| !(2..=(1u32 << 31)).contains(&block_token(b)))
        .unwrap_or_default()
}

fn provider(bucket: Bucket, gateways: Gateways, overrides: Overrides) -> StoreGatewayProvider {
    StoreGatewayProvider::new(
        Config::default(),
        bucket,
        gateways,
        Arc::new(overrides),
        &prometheus::Registry::new(),
    )
    .unwrap()
}

fn pool() -> Arc<GatewayClientPool> {
    GatewayClientPool::new(
        ClientConfig {
            query_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        },
        &prometheus::Registry::new(),
    )
    .unwrap()
}

fn all_series() -> Vec<Matcher> {
    vec![Matcher::new(MatchType::Regex, "__name__", ".+").unwrap()]
}

fn tenant() -> TenantId {
    TenantId::new(TENANT).unwrap()
}

#[tokio::test]
async fn a_block_missing_from_the_hints_is_retried_on_another_replica() {
    let x = block_for_a_first(1);
    let y = block_for_a_first(2);
    // a is asked first for both but only answers y; b holds both.
    let a = Fake::new(&[&y], false);
    let b = Fake::new(&[&x, &y], false);
    let (addr_a, addr_b) = (serve(Arc::clone(&a)).await, serve(Arc::clone(&b)).await);
    let p = provider(
        bucket_with(&[&x, &y]).await,
        Gateways::Ring {
            sharding: ring(&addr_a, &addr_b),
            pool: pool(),
        },
        Overrides::new(Limits::default()),
    );
    let q = p.queryable(&tenant());
    let got = q.select(0, 10_000, &all_series()).await.unwrap();
    let names: Vec<String> = got.iter().map(|s| s.labels.to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // The shared series is in both blocks: its samples appear once.
    let shared = got
        .iter()
        .find(|s| s.labels.metric_name() == Some("shared"))
        .unwrap();
    assert_eq!(shared.samples.len(), 2);
    assert!(names.iter().any(|n| n.contains(&x)) && names.iter().any(|n| n.contains(&y)));
    // a was asked for both, then b only for the one a did not answer.
    let mut asked_a = a.asked.lock().clone();
    asked_a.sort();
    let mut both = vec![x.clone(), y.clone()];
    both.sort();
    assert_eq!(asked_a, both);
    assert_eq!(*b.asked.lock(), vec![x.clone()]);
    // The tenant travelled in the metadata.
    assert!(
        a.tenants
            .lock()
            .iter()
            .chain(b.tenants.lock().iter())
            .all(|t| t == TENANT)
    );

    // Labels go the same way.
    let values = q.label_values("block", 0, 10_000, &[]).await.unwrap();
    assert_eq!(values, both);
}

#[tokio::test]
async fn blocks_no_replica_answers_fail_with_a_5xx_naming_them() {
    let x = block_for_a_first(3);
    let y = block_for_a_first(4);
    // a is down; b answers only y.
    let a = Fake::new(&[&x, &y], true);
    let b = Fake::new(&[&y], false);
    let (addr_a, addr_b) = (serve(a).await, serve(b).await);
    let p = provider(
        bucket_with(&[&x, &y]).await,
        Gateways::Ring {
            sharding: ring(&addr_a, &addr_b),
            pool: pool(),
        },
        Overrides::new(Limits::default()),
    );
    let q = p.queryable(&tenant());
    let err = q.select(0, 10_000, &all_series()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(err.kind().http_status(), 503);
    let msg = err.to_string();
    assert!(msg.contains(&x), "{msg}");
    assert!(!msg.contains(&y), "y was answered: {msg}");
    assert!(msg.contains("fake store-gateway is down"), "{msg}");
    let err = q.label_names(0, 10_000, &[]).await.unwrap_err();
    assert!(err.to_string().contains(&x));

    // Nothing listening at all: the same, not a hang.
    let p = provider(
        bucket_with(&[&x]).await,
        Gateways::Ring {
            sharding: ring("127.0.0.1:1", "127.0.0.1:2"),
            pool: pool(),
        },
        Overrides::new(Limits::default()),
    );
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        p.queryable(&tenant()).select(0, 10_000, &all_series()),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)));
    assert!(err.to_string().contains(&x));
}

#[tokio::test]
async fn per_query_limits_fail_with_422_naming_the_limit() {
    let blocks: Vec<String> = (0..4).map(block_for_a_first).collect();
    let ids: Vec<&str> = blocks.iter().map(String::as_str).collect();
    let fake = Fake::new(&ids, false);
    let addr = serve(Arc::clone(&fake)).await;
    let bucket = bucket_with(&ids).await;
    let cases = [
        (
            "max_fetched_series_per_query: 2",
            "max_fetched_series_per_query",
        ),
        (
            "max_fetched_chunks_per_query: 3",
            "max_fetched_chunks_per_query",
        ),
        (
            "max_fetched_chunk_bytes_per_query: 20",
            "max_fetched_chunk_bytes_per_query",
        ),
    ];
    for (yaml, name) in cases {
        let overrides = Overrides::from_yaml(
            Limits::default(),
            &format!("overrides:\n  {TENANT}:\n    {yaml}\n"),
        )
        .unwrap();
        let p = provider(
            bucket.clone(),
            Gateways::Ring {
                sharding: ring(&addr, &addr),
                pool: pool(),
            },
            overrides,
        );
        let err = p
            .queryable(&tenant())
            .select(0, 10_000, &all_series())
            .await
            .unwrap_err();
        assert_eq!(err.kind().http_status(), 422, "{name}: {err}");
        assert!(err.to_string().contains(name), "{err}");
        // Another tenant has the defaults.
        let other = TenantId::new("team-b").unwrap();
        let mut other_index = Index::empty(1);
        other_index.blocks = vec![index_block(&blocks[0])];
        other_index.write(&bucket, "team-b").await.unwrap();
        assert!(
            p.queryable(&other)
                .select(0, 10_000, &all_series())
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn in_process_gateway_takes_the_same_path() {
    let x = block_for_a_first(5);
    let fake = Fake::new(&[&x], false);
    let p = provider(
        bucket_with(&[&x]).await,
        Gateways::InProcess(InProcessGateway::of(Arc::clone(&fake))),
        Overrides::new(Limits::default()),
    );
    let q = p.queryable(&tenant());
    let got = q.select(0, 10_000, &all_series()).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(*fake.tenants.lock(), vec![TENANT.to_string()]);
    // Data newer than query-store-after is not asked of the store-gateways.
    let recent = now_ms() - 3_600_000;
    assert!(
        q.select(recent, now_ms(), &all_series())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(fake.asked.lock().len(), 1);
    // A block the in-process store-gateway has not loaded: a 5xx, not a partial answer.
    let missing = block_for_a_first(6);
    let p = provider(
        bucket_with(&[&x, &missing]).await,
        Gateways::InProcess(InProcessGateway::of(fake)),
        Overrides::new(Limits::default()),
    );
    let err = p
        .queryable(&tenant())
        .select(0, 10_000, &all_series())
        .await
        .unwrap_err();
    assert_eq!(err.kind().http_status(), 503);
    assert!(err.to_string().contains(&missing));
}

#[tokio::test]
async fn a_stream_broken_mid_answer_is_retried_on_another_replica() {
    let x = block_for_a_first(7);
    let y = block_for_a_first(8);
    // a sends both blocks' series, then dies before its hints; b answers both.
    let a = Fake::with(&[&x, &y], false, true);
    let b = Fake::new(&[&x, &y], false);
    let (addr_a, addr_b) = (serve(Arc::clone(&a)).await, serve(Arc::clone(&b)).await);
    let p = provider(
        bucket_with(&[&x, &y]).await,
        Gateways::Ring {
            sharding: ring(&addr_a, &addr_b),
            pool: pool(),
        },
        Overrides::new(Limits::default()),
    );
    let got = p
        .queryable(&tenant())
        .select(0, 10_000, &all_series())
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    for s in &got {
        // Complete, each timestamp once.
        let ts: Vec<i64> = s.samples.iter().map(|x| x.t).collect();
        let mut dedup = ts.clone();
        dedup.dedup();
        assert_eq!(ts, dedup, "{}", s.labels);
    }
    let mut asked_b = b.asked.lock().clone();
    asked_b.sort();
    let mut both = vec![x, y];
    both.sort();
    assert_eq!(asked_b, both);
}
