//! Reading one store-gateway's `Series` stream under the query's limits, and turning what
//! the store-gateways sent into label-sorted [`ChunkSeries`] whose chunks do not overlap.
//!
//! Limits are counted as batches arrive, so a query over `max_fetched_chunk_bytes_per_query`
//! stops reading at the limit instead of holding everything first. The counters are shared by
//! every store-gateway call of one query; a series is counted once however many
//! store-gateways and blocks send it.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use norn_model::query::encode_samples;
use norn_model::query::merge_samples;
use norn_model::{ChunkSeries, EncodedChunk, Sample, SampleBudget, StorageError};
use norn_proto::convert::labels_from_proto;
use norn_proto::ingester::v1 as ipb;
use norn_proto::storegateway::v1 as pb;
use parking_lot::Mutex;
use tonic::Status;

use crate::gateway::SeriesStream;

/// A tenant's per-query limits on what the store-gateways send (0 = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchLimits {
    /// `max_fetched_series_per_query`.
    pub max_series: u64,
    /// `max_fetched_chunks_per_query`.
    pub max_chunks: u64,
    /// `max_fetched_chunk_bytes_per_query`.
    pub max_chunk_bytes: u64,
}

/// What one query fetched from the store-gateways so far, against its limits.
pub struct FetchCounters {
    limits: FetchLimits,
    /// Hashes of the label sets seen, so a series from several blocks counts once.
    series: Mutex<HashSet<u64>>,
    chunks: AtomicU64,
    chunk_bytes: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
}

impl FetchCounters {
    pub fn new(limits: FetchLimits) -> Self {
        Self {
            limits,
            series: Mutex::default(),
            chunks: AtomicU64::new(0),
            chunk_bytes: AtomicU64::new(0),
            hasher: Default::default(),
        }
    }

    /// Distinct series fetched so far.
    pub fn series(&self) -> u64 {
        self.series.lock().len() as u64
    }

    /// Chunks fetched so far (a chunk sent by two store-gateways counts twice: both were read).
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    /// Chunk bytes fetched so far.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes.load(Ordering::Relaxed)
    }

    /// Counts one batch; the limit it crossed, if any.
    fn add(&self, batch: &[ipb::StreamSeries]) -> Result<(), StorageError> {
        let l = self.limits;
        if l.max_series > 0 {
            let mut seen = self.series.lock();
            for s in batch {
                let mut h = self.hasher.build_hasher();
                for label in &s.labels {
                    label.name.hash(&mut h);
                    label.value.hash(&mut h);
                }
                seen.insert(h.finish());
            }
            if seen.len() as u64 > l.max_series {
                return Err(StorageError::Limit(format!(
                    "the query exceeded the maximum number of series (limit: {} series) (err-mimir-max-series-per-query); narrow the query or raise max_fetched_series_per_query",
                    l.max_series
                )));
            }
        }
        let chunks: u64 = batch.iter().map(|s| s.chunks.len() as u64).sum();
        let bytes: u64 = batch
            .iter()
            .flat_map(|s| &s.chunks)
            .map(|c| c.data.len() as u64)
            .sum();
        let total_chunks = self.chunks.fetch_add(chunks, Ordering::Relaxed) + chunks;
        if l.max_chunks > 0 && total_chunks > l.max_chunks {
            return Err(StorageError::Limit(format!(
                "the query exceeded the maximum number of chunks (limit: {} chunks) (err-mimir-max-chunks-per-query); narrow the query or raise max_fetched_chunks_per_query",
                l.max_chunks
            )));
        }
        let total_bytes = self.chunk_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if l.max_chunk_bytes > 0 && total_bytes > l.max_chunk_bytes {
            return Err(StorageError::Limit(format!(
                "the query exceeded the aggregated chunks size limit (limit: {} bytes) (err-mimir-max-chunks-bytes-per-query); narrow the query or raise max_fetched_chunk_bytes_per_query",
                l.max_chunk_bytes
            )));
        }
        Ok(())
    }
}

/// Why reading one store-gateway failed.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The call or its stream failed: another replica may answer.
    Call(Status),
    /// The query is over a limit: no replica can help.
    Fatal(StorageError),
}

/// One store-gateway's answer to `Series`.
pub(crate) struct SeriesAnswer {
    pub series: Vec<ipb::StreamSeries>,
    pub queried_block_ids: Vec<String>,
}

/// Reads a `Series` stream to its end under `counters` and the sample budget (stopping as
/// soon as another source spent it). A stream that ends without its hints is a failed call:
/// nothing says which blocks it covered.
pub(crate) async fn read_series(
    mut stream: SeriesStream,
    counters: &FetchCounters,
    budget: &SampleBudget,
) -> Result<SeriesAnswer, FetchError> {
    let mut series = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(FetchError::Call)?;
        match msg.result {
            Some(pb::series_response::Result::Batch(b)) => {
                counters.add(&b.series).map_err(FetchError::Fatal)?;
                budget.check().map_err(FetchError::Fatal)?;
                series.extend(b.series);
            }
            Some(pb::series_response::Result::Hints(h)) => {
                return Ok(SeriesAnswer {
                    series,
                    queried_block_ids: h.queried_block_ids,
                });
            }
            None => {}
        }
    }
    Err(FetchError::Call(Status::data_loss(
        "the series stream ended without its hints",
    )))
}

/// Streamed series as [`ChunkSeries`]: sorted by labels, one entry per label set, chunks in
/// time order without overlap. Blocks that are replicas of each other (until the compactor
/// merges them) hold the same samples: where chunks overlap, the series' samples are merged
/// (each timestamp once) and encoded again; elsewhere chunks pass as they came.
pub(crate) fn to_chunk_series(series: Vec<ipb::StreamSeries>) -> Result<Vec<ChunkSeries>, String> {
    let mut out: Vec<ChunkSeries> = series
        .into_iter()
        .map(|s| ChunkSeries {
            labels: labels_from_proto(s.labels),
            chunks: s
                .chunks
                .into_iter()
                .map(|c| EncodedChunk {
                    min_t: c.min_time_ms,
                    max_t: c.max_time_ms,
                    // An encoding that does not fit a byte is none we know: 0 decodes as
                    // "unsupported".
                    encoding: u8::try_from(c.encoding).unwrap_or(0),
                    data: c.data,
                })
                .collect(),
        })
        .collect();
    // Stable: of two entries for one label set, the first one's chunks come first.
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut merged: Vec<ChunkSeries> = Vec::with_capacity(out.len());
    for s in out {
        match merged.last_mut() {
            Some(last) if last.labels == s.labels => last.chunks.extend(s.chunks),
            _ => merged.push(s),
        }
    }
    for s in &mut merged {
        normalize(&mut s.chunks).map_err(|e| format!("series {}: {e}", s.labels))?;
    }
    Ok(merged)
}

/// Sorts chunks by time and, when any two overlap, replaces them by the merged samples.
fn normalize(chunks: &mut Vec<EncodedChunk>) -> Result<(), String> {
    chunks.sort_by_key(|c| (c.min_t, c.max_t));
    if chunks.windows(2).all(|w| w[0].max_t < w[1].min_t) {
        return Ok(());
    }
    let mut samples: Vec<Sample> = Vec::new();
    for c in chunks.iter() {
        let mut part = Vec::new();
        c.decode_into(i64::MIN, i64::MAX, &mut part)?;
        samples = merge_samples(samples, part);
    }
    *chunks = encode_samples(&samples);
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use norn_chunkenc::XorChunk;
    use norn_proto::ingester::v1::{Chunk, ChunkEncoding, Label};

    use super::*;

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

    fn series(name: &str, chunks: Vec<Chunk>) -> ipb::StreamSeries {
        ipb::StreamSeries {
            labels: vec![Label {
                name: "__name__".into(),
                value: name.into(),
            }],
            chunks,
        }
    }

    #[test]
    fn replicas_chunks_are_deduplicated_and_series_joined() {
        let got = to_chunk_series(vec![
            series("b", vec![chunk(&[(1, 1.0), (2, 2.0)])]),
            series("a", vec![chunk(&[(1, 1.0), (2, 2.0), (3, 3.0)])]),
            // The same samples from a replica block, plus one more.
            series("a", vec![chunk(&[(2, 2.0), (3, 3.0), (4, 4.0)])]),
        ])
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels.metric_name(), Some("a"));
        let samples = got[0].decode(i64::MIN, i64::MAX).unwrap();
        let ts: Vec<i64> = samples.iter().map(|s| s.t).collect();
        assert_eq!(ts, [1, 2, 3, 4]);
        // Disjoint chunks pass untouched.
        let got = to_chunk_series(vec![series(
            "a",
            vec![chunk(&[(5, 1.0)]), chunk(&[(1, 1.0), (2, 1.0)])],
        )])
        .unwrap();
        assert_eq!(got[0].chunks.len(), 2);
        assert_eq!(got[0].chunks[0].min_t, 1);
    }

    #[test]
    fn corrupt_overlapping_chunks_are_errors() {
        let mut bad = chunk(&[(1, 1.0), (2, 2.0)]);
        bad.data = bad.data.slice(..3);
        let r = to_chunk_series(vec![
            series("a", vec![bad]),
            series("a", vec![chunk(&[(1, 1.0)])]),
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn limits_name_themselves() {
        let batch = vec![
            series("a", vec![chunk(&[(1, 1.0)]), chunk(&[(2, 1.0)])]),
            series("b", vec![chunk(&[(1, 1.0)])]),
        ];
        let c = FetchCounters::new(FetchLimits {
            max_series: 2,
            ..Default::default()
        });
        c.add(&batch).unwrap();
        // The same series again: still two.
        c.add(&batch[..1]).unwrap();
        let e = c.add(&[series("c", vec![])]).unwrap_err().to_string();
        assert!(e.contains("max_fetched_series_per_query"), "{e}");
        let c = FetchCounters::new(FetchLimits {
            max_chunks: 2,
            ..Default::default()
        });
        let e = c.add(&batch).unwrap_err().to_string();
        assert!(e.contains("max_fetched_chunks_per_query"), "{e}");
        let c = FetchCounters::new(FetchLimits {
            max_chunk_bytes: 10,
            ..Default::default()
        });
        let e = c.add(&batch).unwrap_err().to_string();
        assert!(e.contains("max_fetched_chunk_bytes_per_query"), "{e}");
        assert!(matches!(c.add(&[]), Err(StorageError::Limit(_))));
    }
}
