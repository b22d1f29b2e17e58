//! `norn.storegateway.v1.StoreGateway` over the [`BlockStore`]: the same struct serves
//! gRPC in microservices mode and is called directly (with a `tonic::Request`) by the
//! querier's client in one process.
//!
//! Only blocks of the request's tenant (`x-scope-orgid`) are ever looked up, so a request
//! cannot reach another tenant's block whatever ids it names. A named block that is not
//! served here is left out of `queried_block_ids` for the querier to retry elsewhere; a
//! served block whose data is damaged fails the whole call (never a partial answer).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use norn_model::{ChunkSeries, ErrorKind, Labels, Matcher, TenantError, TenantId};
use norn_proto::convert::{TENANT_METADATA_KEY, chunk_series_into_proto, matchers_from_proto};
use norn_proto::ingester::v1 as ipb;
use norn_proto::status::status;
use norn_proto::storegateway::v1 as pb;
use norn_proto::storegateway::v1::store_gateway_server::StoreGateway;
use tonic::{Request, Response, Status};

use crate::block::LoadedBlock;
use crate::error::Error;
use crate::fetch::{Ctx, FetchStats};
use crate::limits::Limiter;
use crate::metrics::StoreGatewayMetrics;
use crate::store::BlockStore;

/// Most series in one `SeriesBatch`.
pub const SERIES_PER_BATCH: usize = 256;
/// A batch is closed once its chunk data passes this many bytes.
pub const BATCH_BYTES: usize = 1 << 20;
/// Most block ids one request may name.
const MAX_BLOCK_IDS: usize = 100_000;

/// The store-gateway's API.
pub struct StoreGatewayApi {
    store: Arc<BlockStore>,
    limiter: Limiter,
    metrics: StoreGatewayMetrics,
}

type SeriesStream = Pin<Box<dyn Stream<Item = Result<pb::SeriesResponse, Status>> + Send>>;

impl StoreGatewayApi {
    pub fn new(store: Arc<BlockStore>, limiter: Limiter, metrics: StoreGatewayMetrics) -> Self {
        Self {
            store,
            limiter,
            metrics,
        }
    }

    /// The named blocks this instance serves for `tenant` (unique, in request order).
    fn served(&self, tenant: &TenantId, ids: &[String]) -> Result<Vec<Arc<LoadedBlock>>, Status> {
        if ids.len() > MAX_BLOCK_IDS {
            return Err(status(
                ErrorKind::BadData,
                format!(
                    "{} block ids in one request (max {MAX_BLOCK_IDS})",
                    ids.len()
                ),
            ));
        }
        let mut out: Vec<Arc<LoadedBlock>> = Vec::new();
        for id in ids {
            if out.iter().any(|b| &b.id == id) {
                continue;
            }
            if let Some(b) = self.store.block(tenant.as_str(), id) {
                out.push(b);
            }
        }
        Ok(out)
    }

    fn error(&self, tenant: &TenantId, e: Error) -> Status {
        match &e {
            Error::Corrupt { .. } => {
                self.metrics
                    .block_errors
                    .with_label_values(&[tenant.as_str()])
                    .inc();
                tracing::error!(tenant = %tenant, error = %e, "store-gateway: damaged block data; failing the request");
            }
            Error::Overloaded(_) | Error::TooLarge(_) => self.metrics.overloaded.inc(),
            Error::Bucket { .. } => {
                tracing::warn!(tenant = %tenant, error = %e, "store-gateway: bucket read failed");
            }
            _ => {}
        }
        status(e.kind(), e.to_string())
    }
}

fn bad_request(msg: String) -> Status {
    status(ErrorKind::BadData, msg)
}

/// The tenant named by the request's `x-scope-orgid` metadata.
fn tenant<T>(req: &Request<T>) -> Result<TenantId, Status> {
    let Some(value) = req.metadata().get(TENANT_METADATA_KEY) else {
        return Err(status(
            TenantError::Missing.kind(),
            format!("no org id: the {TENANT_METADATA_KEY} request metadata is missing"),
        ));
    };
    let id = value.to_str().map_err(|_| {
        bad_request(format!(
            "the {TENANT_METADATA_KEY} request metadata is not printable ASCII"
        ))
    })?;
    TenantId::new(id).map_err(|e| status(e.kind(), format!("invalid tenant id: {e}")))
}

fn parse(matchers: Vec<ipb::LabelMatcher>, start: i64, end: i64) -> Result<Vec<Matcher>, Status> {
    if start > end {
        return Err(bad_request(format!("start {start} is after end {end}")));
    }
    let matchers =
        matchers_from_proto(matchers).map_err(|e| bad_request(format!("invalid matcher: {e}")))?;
    // A malformed `__query_shard__` is refused before any block is looked at.
    norn_model::ShardSelector::split(&matchers).map_err(|e| bad_request(e.to_string()))?;
    Ok(matchers)
}

/// Joins label-sorted lists: equal label sets become one series with all chunks, sorted
/// by min time (chunks from different blocks may overlap; the querier deduplicates).
fn merge(lists: Vec<Vec<ChunkSeries>>) -> Vec<ChunkSeries> {
    if lists.len() == 1 {
        return lists.into_iter().next().unwrap_or_default();
    }
    let mut by_labels: BTreeMap<Labels, Vec<norn_model::EncodedChunk>> = BTreeMap::new();
    for s in lists.into_iter().flatten() {
        by_labels.entry(s.labels).or_default().extend(s.chunks);
    }
    by_labels
        .into_iter()
        .map(|(labels, mut chunks)| {
            chunks.sort_by_key(|c| (c.min_t, c.max_t));
            ChunkSeries { labels, chunks }
        })
        .collect()
}

/// Splits the answer into batches bounded in series and bytes.
fn batches(series: Vec<ChunkSeries>) -> Vec<pb::SeriesResponse> {
    let mut out = Vec::new();
    let mut cur: Vec<ipb::StreamSeries> = Vec::new();
    let mut bytes = 0usize;
    for s in series {
        bytes += s.chunks.iter().map(|c| c.data.len()).sum::<usize>();
        cur.push(chunk_series_into_proto(s));
        if cur.len() >= SERIES_PER_BATCH || bytes >= BATCH_BYTES {
            out.push(batch(std::mem::take(&mut cur)));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        out.push(batch(cur));
    }
    out
}

fn batch(series: Vec<ipb::StreamSeries>) -> pb::SeriesResponse {
    pb::SeriesResponse {
        result: Some(pb::series_response::Result::Batch(pb::SeriesBatch {
            series,
        })),
    }
}

#[tonic::async_trait]
impl StoreGateway for StoreGatewayApi {
    type SeriesStream = SeriesStream;

    async fn series(
        &self,
        request: Request<pb::SeriesRequest>,
    ) -> Result<Response<Self::SeriesStream>, Status> {
        let tenant = tenant(&request)?;
        let r = request.into_inner();
        let matchers = parse(r.matchers, r.start_ms, r.end_ms)?;
        let blocks = self.served(&tenant, &r.block_ids)?;
        let ticket = self
            .limiter
            .admit()
            .await
            .map_err(|e| self.error(&tenant, e))?;
        let stats = FetchStats::default();
        let ctx = Ctx {
            ticket: &ticket,
            stats: &stats,
        };
        let lists = futures::future::try_join_all(
            blocks
                .iter()
                .filter(|b| b.overlaps(r.start_ms, r.end_ms))
                .map(|b| b.series(r.start_ms, r.end_ms, &matchers, r.skip_chunks, &ctx)),
        )
        .await
        .map_err(|e| self.error(&tenant, e))?;
        let merged = merge(lists);
        let hints = pb::SeriesHints {
            queried_block_ids: blocks.iter().map(|b| b.id.clone()).collect(),
            stats: Some(pb::QueryStats {
                fetched_series: FetchStats::get(&stats.series),
                fetched_chunks: FetchStats::get(&stats.chunks),
                fetched_chunk_bytes: FetchStats::get(&stats.chunk_bytes),
                fetched_bucket_bytes: FetchStats::get(&stats.bucket_bytes),
            }),
        };
        let msgs = batches(merged);
        // The ticket (query slot and fetched bytes) is held until the last message is
        // taken or the stream is dropped.
        let tail = futures::stream::once(async move {
            drop(ticket);
            Ok(pb::SeriesResponse {
                result: Some(pb::series_response::Result::Hints(hints)),
            })
        });
        let stream =
            futures::StreamExt::chain(futures::stream::iter(msgs.into_iter().map(Ok)), tail);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn label_names(
        &self,
        request: Request<pb::LabelNamesRequest>,
    ) -> Result<Response<pb::LabelNamesResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.into_inner();
        let matchers = parse(r.matchers, r.start_ms, r.end_ms)?;
        let blocks = self.served(&tenant, &r.block_ids)?;
        let ticket = self
            .limiter
            .admit()
            .await
            .map_err(|e| self.error(&tenant, e))?;
        let stats = FetchStats::default();
        let ctx = Ctx {
            ticket: &ticket,
            stats: &stats,
        };
        let lists = futures::future::try_join_all(
            blocks
                .iter()
                .filter(|b| b.overlaps(r.start_ms, r.end_ms))
                .map(|b| b.label_names(&matchers, &ctx)),
        )
        .await
        .map_err(|e| self.error(&tenant, e))?;
        Ok(Response::new(pb::LabelNamesResponse {
            label_names: norn_model::merge_strings(lists),
            queried_block_ids: blocks.iter().map(|b| b.id.clone()).collect(),
        }))
    }

    async fn label_values(
        &self,
        request: Request<pb::LabelValuesRequest>,
    ) -> Result<Response<pb::LabelValuesResponse>, Status> {
        let tenant = tenant(&request)?;
        let r = request.into_inner();
        let matchers = parse(r.matchers, r.start_ms, r.end_ms)?;
        if r.label_name.is_empty() {
            return Err(bad_request("label_name is empty".into()));
        }
        let blocks = self.served(&tenant, &r.block_ids)?;
        let ticket = self
            .limiter
            .admit()
            .await
            .map_err(|e| self.error(&tenant, e))?;
        let stats = FetchStats::default();
        let ctx = Ctx {
            ticket: &ticket,
            stats: &stats,
        };
        let lists = futures::future::try_join_all(
            blocks
                .iter()
                .filter(|b| b.overlaps(r.start_ms, r.end_ms))
                .map(|b| b.label_values(&r.label_name, &matchers, &ctx)),
        )
        .await
        .map_err(|e| self.error(&tenant, e))?;
        Ok(Response::new(pb::LabelValuesResponse {
            label_values: norn_model::merge_strings(lists),
            queried_block_ids: blocks.iter().map(|b| b.id.clone()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use norn_model::EncodedChunk;

    use super::*;

    fn cs(name: &str, chunks: &[(i64, i64)]) -> ChunkSeries {
        ChunkSeries {
            labels: Labels::from_pairs([("__name__", name)]),
            chunks: chunks
                .iter()
                .map(|&(a, b)| EncodedChunk::xor(a, b, Bytes::from_static(&[0, 0])))
                .collect(),
        }
    }

    #[test]
    fn merge_joins_equal_labels_and_sorts_chunks() {
        let got = merge(vec![
            vec![cs("a", &[(10, 20)]), cs("c", &[(0, 5)])],
            vec![cs("a", &[(0, 9)]), cs("b", &[(1, 2)])],
        ]);
        let names: Vec<String> = got.iter().map(|s| s.labels.to_string()).collect();
        assert_eq!(names.len(), 3);
        assert_eq!(got[0].labels, Labels::from_pairs([("__name__", "a")]));
        assert_eq!(
            got[0].chunks.iter().map(|c| c.min_t).collect::<Vec<_>>(),
            [0, 10]
        );
        assert!(got.windows(2).all(|w| w[0].labels < w[1].labels));
    }

    #[test]
    fn batches_are_bounded() {
        let many: Vec<ChunkSeries> = (0..600)
            .map(|i| cs(&format!("m{i:04}"), &[(0, 1)]))
            .collect();
        let b = batches(many);
        assert_eq!(b.len(), 3);
        let n: usize = b
            .iter()
            .map(|m| match &m.result {
                Some(pb::series_response::Result::Batch(b)) => b.series.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(n, 600);
    }
}
