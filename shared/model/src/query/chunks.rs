//! Chunk-level reads: series with their samples still in the encoded chunks the store keeps
//! them in ([`ChunkSeries`]), for readers that ship data on rather than evaluate it.
//!
//! The ingester answers a query stream with the chunks its head and blocks hold, byte for
//! byte, instead of decoding them to samples and encoding them again for the wire; the
//! store-gateway does the same with bucket blocks. Only the final reader decodes, and it
//! trims to the query range: chunks are never cut to the range on the way (a chunk reaching
//! outside it is sent whole).
//!
//! Within one [`ChunkSeries`] chunks are in time order and do not overlap (the wire format
//! promises it). Merging the same series from several sources keeps that: chunks that do not
//! overlap are concatenated as they are; where they do (a block cut while its data is still
//! in the head) that series' samples are merged and encoded afresh, the first source's
//! value winning on equal timestamps, as [`merge_samples`](super::merge_samples) does.

use bytes::Bytes;
use norn_chunkenc::{ENCODING_XOR, XorChunk, XorIterator};

use super::{SampleBudget, Series, StorageError, merge_by_labels, merge_samples};
use crate::{Labels, Sample};

/// Samples per chunk when chunks are built from samples (Prometheus' target chunk size).
pub const SAMPLES_PER_ENCODED_CHUNK: usize = 120;

/// One encoded chunk as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    /// Time of the first sample.
    pub min_t: i64,
    /// Time of the last sample (inclusive).
    pub max_t: i64,
    /// Prometheus' chunk encoding byte ([`ENCODING_XOR`] for float chunks).
    pub encoding: u8,
    /// The chunk's bytes, header included, as a block's chunk file stores them.
    pub data: Bytes,
}

/// A series and its chunks overlapping the selected range, in time order, not overlapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSeries {
    pub labels: Labels,
    pub chunks: Vec<EncodedChunk>,
}

impl EncodedChunk {
    /// An XOR chunk of `data` holding samples from `min_t` to `max_t`.
    pub fn xor(min_t: i64, max_t: i64, data: impl Into<Bytes>) -> Self {
        Self {
            min_t,
            max_t,
            encoding: ENCODING_XOR,
            data: data.into(),
        }
    }

    /// Appends the chunk's samples in `[mint, maxt]` to `out`.
    pub fn decode_into(&self, mint: i64, maxt: i64, out: &mut Vec<Sample>) -> Result<(), String> {
        if self.encoding != ENCODING_XOR {
            return Err(format!("unsupported chunk encoding {}", self.encoding));
        }
        let mut it = XorIterator::new(&self.data);
        out.extend(
            it.by_ref()
                .filter(|(t, _)| (mint..=maxt).contains(t))
                .map(|(t, v)| Sample::new(t, v)),
        );
        match it.error() {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// Samples of the chunk in `[mint, maxt]`: read from the header when the chunk lies
    /// inside the range, else by walking it (only the chunks at the range's edges).
    pub fn samples_in(&self, mint: i64, maxt: i64) -> usize {
        if self.encoding != ENCODING_XOR {
            return 0;
        }
        let it = XorIterator::new(&self.data);
        if self.min_t >= mint && self.max_t <= maxt {
            return usize::from(it.num_samples());
        }
        it.filter(|(t, _)| (mint..=maxt).contains(t)).count()
    }
}

impl EncodedChunk {
    /// Whether less than half of the chunk's time span lies in `[mint, maxt]`: the share of
    /// its samples there, estimated from its bounds without decoding it.
    fn mostly_outside(&self, mint: i64, maxt: i64) -> bool {
        let span = (self.max_t as i128 - self.min_t as i128) + 1;
        let inside = (self.max_t.min(maxt) as i128 - self.min_t.max(mint) as i128 + 1).max(0);
        2 * inside < span
    }
}

impl ChunkSeries {
    /// Cuts the chunks that lie mostly outside `[mint, maxt]` down to their samples inside
    /// it (decoded and encoded again); the others stay as they are. For a wire to a reader
    /// of a short range: a dashboard's last 5 minutes would otherwise ship (and make the
    /// reader decode) the whole open chunk, about half an hour at a 15 s scrape interval,
    /// for a few samples. The CPU moves from the reader to the sender; the bytes shrink.
    /// Not used by the ingester's query stream yet: on `head_select`'s last 5 minutes it
    /// cost more than the decode-and-re-encode it would replace.
    pub fn trim_sparse(&mut self, mint: i64, maxt: i64) -> Result<(), String> {
        if !self.chunks.iter().any(|c| c.mostly_outside(mint, maxt)) {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.chunks.len());
        for c in std::mem::take(&mut self.chunks) {
            if !c.mostly_outside(mint, maxt) {
                out.push(c);
                continue;
            }
            let mut samples = Vec::new();
            c.decode_into(mint, maxt, &mut samples)?;
            out.extend(encode_samples(&samples));
        }
        self.chunks = out;
        Ok(())
    }

    /// A series' samples as XOR chunks of at most [`SAMPLES_PER_ENCODED_CHUNK`] samples (for
    /// sources that hold samples, not chunks).
    pub fn encode(s: &Series) -> Self {
        Self {
            labels: s.labels.clone(),
            chunks: encode_samples(&s.samples),
        }
    }

    /// Samples in `[mint, maxt]` over all chunks (for charging a [`SampleBudget`]).
    pub fn samples_in(&self, mint: i64, maxt: i64) -> usize {
        self.chunks.iter().map(|c| c.samples_in(mint, maxt)).sum()
    }

    /// The series' samples in `[mint, maxt]`, in time order.
    pub fn decode(&self, mint: i64, maxt: i64) -> Result<Vec<Sample>, String> {
        let mut samples = Vec::new();
        for c in &self.chunks {
            if c.max_t < mint || c.min_t > maxt {
                continue;
            }
            c.decode_into(mint, maxt, &mut samples)?;
        }
        Ok(samples)
    }
}

/// Samples sorted by time as XOR chunks of at most [`SAMPLES_PER_ENCODED_CHUNK`] samples.
pub fn encode_samples(samples: &[Sample]) -> Vec<EncodedChunk> {
    let mut chunks = Vec::with_capacity(samples.len().div_ceil(SAMPLES_PER_ENCODED_CHUNK));
    for part in samples.chunks(SAMPLES_PER_ENCODED_CHUNK) {
        // Regular scrapes take 1-2 bytes a sample; starting there avoids most regrowth.
        let mut c = XorChunk::with_capacity(2 * part.len() + 16);
        for smp in part {
            c.append(smp.t, smp.v);
        }
        chunks.push(EncodedChunk::xor(
            part[0].t,
            part[part.len() - 1].t,
            Bytes::from(c.into_bytes()),
        ));
    }
    chunks
}

/// Decodes chunk series to sample series in `[mint, maxt]`, sorted by labels; series left
/// with no sample in the range are dropped.
pub fn decode_chunk_series(
    series: Vec<ChunkSeries>,
    mint: i64,
    maxt: i64,
) -> Result<Vec<Series>, String> {
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let samples = s.decode(mint, maxt)?;
        if !samples.is_empty() {
            out.push(Series {
                labels: s.labels,
                samples,
            });
        }
    }
    out.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// Charges a whole chunk answer to `budget` by its samples in `[mint, maxt]`.
pub(super) fn charge_chunks(
    got: Vec<ChunkSeries>,
    mint: i64,
    maxt: i64,
    budget: &SampleBudget,
) -> Result<Vec<ChunkSeries>, StorageError> {
    budget.charge(got.iter().map(|s| s.samples_in(mint, maxt)).sum());
    budget.check()?;
    Ok(got)
}

/// Joins the chunks of one series from two sources; `a`'s samples win on equal timestamps.
fn merge_chunks(a: Vec<EncodedChunk>, b: Vec<EncodedChunk>) -> Result<Vec<EncodedChunk>, String> {
    if b.is_empty() {
        return Ok(a);
    }
    if a.is_empty() {
        return Ok(b);
    }
    // Disjoint sources (blocks before the head): the chunks go on as they are.
    let (a_lo, a_hi) = (a[0].min_t, a[a.len() - 1].max_t);
    let (b_lo, b_hi) = (b[0].min_t, b[b.len() - 1].max_t);
    if a_hi < b_lo {
        return Ok(a.into_iter().chain(b).collect());
    }
    if b_hi < a_lo {
        return Ok(b.into_iter().chain(a).collect());
    }
    // Replicas that received the same samples cut the same chunks: the chunks both sources
    // start with alike are kept as they are (what follows them begins after them in both),
    // and only the rest, usually the open chunk, is decoded and merged.
    let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if same > 0 {
        let (mut a, mut b) = (a, b);
        let (a_rest, b_rest) = (a.split_off(same), b.split_off(same));
        a.extend(merge_chunks(a_rest, b_rest)?);
        return Ok(a);
    }
    let decode = |cs: &[EncodedChunk]| -> Result<Vec<Sample>, String> {
        let mut out = Vec::new();
        for c in cs {
            c.decode_into(i64::MIN, i64::MAX, &mut out)?;
        }
        Ok(out)
    };
    Ok(encode_samples(&merge_samples(decode(&a)?, decode(&b)?)))
}

/// Merges label-sorted chunk-series lists into one, joining series with equal labels (see
/// the module docs for overlapping chunks).
pub fn merge_chunk_series(lists: Vec<Vec<ChunkSeries>>) -> Result<Vec<ChunkSeries>, StorageError> {
    merge_by_labels(
        lists,
        |s| &s.labels,
        |x, y| {
            let chunks = merge_chunks(x.chunks, y.chunks).map_err(|e| {
                StorageError::Internal(format!("merging chunks of {}: {e}", x.labels))
            })?;
            Ok(ChunkSeries {
                labels: x.labels,
                chunks,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    fn series(name: &str, samples: &[(i64, f64)]) -> ChunkSeries {
        let samples: Vec<Sample> = samples.iter().map(|&(t, v)| s(t, v)).collect();
        ChunkSeries {
            labels: Labels::from_pairs([("__name__", name)]),
            chunks: encode_samples(&samples),
        }
    }

    #[test]
    fn replicas_with_the_same_chunks_are_not_decoded_and_their_tails_merge() {
        let s = |t: i64| Sample::new(t, t as f64);
        let first: Vec<Sample> = (0..120).map(|i| s(i * 10)).collect();
        let common = encode_samples(&first);
        // Replica a got two more samples in the open chunk than replica b.
        let mut a = common.clone();
        a.extend(encode_samples(&[s(1_200), s(1_210), s(1_220)]));
        let mut b = common.clone();
        b.extend(encode_samples(&[s(1_200)]));
        let merged = merge_chunks(a.clone(), b).unwrap();
        assert_eq!(merged[0], common[0], "the shared chunk is kept as it is");
        let mut got = Vec::new();
        for c in &merged {
            c.decode_into(i64::MIN, i64::MAX, &mut got).unwrap();
        }
        let want: Vec<Sample> = (0..123).map(|i| s(i * 10)).collect();
        assert_eq!(got, want);
        // Identical lists come back as they are.
        assert_eq!(merge_chunks(a.clone(), a.clone()).unwrap(), a);
    }

    #[test]
    fn series_are_cut_into_chunks_of_120() {
        let samples: Vec<Sample> = (0..250).map(|i| s(i * 15_000, i as f64)).collect();
        let enc = ChunkSeries::encode(&Series {
            labels: Labels::from_pairs([("__name__", "up")]),
            samples: samples.clone(),
        });
        assert_eq!(enc.chunks.len(), 3);
        assert_eq!(enc.chunks[1].min_t, 120 * 15_000);
        assert_eq!(enc.chunks[2].max_t, 249 * 15_000);
        assert_eq!(enc.decode(i64::MIN, i64::MAX).unwrap(), samples);
        assert_eq!(enc.samples_in(i64::MIN, i64::MAX), 250);
        assert_eq!(enc.samples_in(15_000, 2 * 15_000), 2);
    }

    #[test]
    fn decoding_trims_to_the_range_and_sorts() {
        let mut b = series("b", &[(1, 1.0), (5, 2.0)]);
        b.chunks.extend(encode_samples(&[s(10, 3.0)]));
        let raw = vec![
            b,
            series("a", &[(2, 4.0), (3, 5.0)]),
            series("c", &[(100, 1.0)]),
        ];
        let got = decode_chunk_series(raw, 2, 10).unwrap();
        assert_eq!(got.len(), 2, "c has nothing in range");
        assert_eq!(got[0].labels.metric_name(), Some("a"));
        assert_eq!(got[1].samples, vec![s(5, 2.0), s(10, 3.0)]);
    }

    #[test]
    fn merging_keeps_disjoint_chunks_and_merges_overlapping_ones() {
        let blocks = vec![series("a", &[(1, 1.0), (2, 2.0)]), series("b", &[(1, 1.0)])];
        let head = vec![series("a", &[(3, 3.0)]), series("c", &[(1, 1.0)])];
        let got = merge_chunk_series(vec![blocks.clone(), head.clone()]).unwrap();
        assert_eq!(got.len(), 3);
        // Disjoint: the chunks themselves, untouched.
        assert_eq!(
            got[0].chunks,
            [blocks[0].chunks[0].clone(), head[0].chunks[0].clone()]
        );

        // Mid-cut: both hold t=2; one sample each, the first source's value.
        let blocks = vec![series("a", &[(1, 1.0), (2, 2.0)])];
        let head = vec![series("a", &[(2, 9.0), (3, 3.0)])];
        let got = merge_chunk_series(vec![blocks, head]).unwrap();
        assert_eq!(got[0].chunks.len(), 1);
        assert_eq!(
            got[0].decode(i64::MIN, i64::MAX).unwrap(),
            [s(1, 1.0), s(2, 2.0), s(3, 3.0)]
        );
    }

    #[test]
    fn only_chunks_mostly_outside_the_range_are_trimmed() {
        let samples: Vec<Sample> = (0..240).map(|i| s(i * 15_000, i as f64)).collect();
        let whole = ChunkSeries {
            labels: Labels::from_pairs([("__name__", "up")]),
            chunks: encode_samples(&samples),
        };
        // The last 5 minutes of the second chunk: it is cut to those 21 samples.
        let (mint, maxt) = (219 * 15_000, 239 * 15_000);
        let mut t = whole.clone();
        t.trim_sparse(mint, maxt).unwrap();
        assert_eq!(t.chunks.len(), 1, "the first chunk is outside: dropped");
        assert_eq!(
            t.chunks
                .iter()
                .map(|c| c.samples_in(i64::MIN, i64::MAX))
                .sum::<usize>(),
            21
        );
        assert_eq!(
            t.decode(mint, maxt).unwrap(),
            whole.decode(mint, maxt).unwrap()
        );
        // Most of both chunks in range: both go as they are.
        let (mint, maxt) = (30 * 15_000, 200 * 15_000);
        let mut t = whole.clone();
        t.trim_sparse(mint, maxt).unwrap();
        assert_eq!(t, whole);
    }

    #[test]
    fn corrupt_or_unknown_chunks_are_errors() {
        let mut bad = series("a", &[(1, 1.0), (2, 2.0)]);
        bad.chunks[0].data = bad.chunks[0].data.slice(..3);
        assert!(decode_chunk_series(vec![bad], 0, 10).is_err());
        let mut other = series("a", &[(1, 1.0)]);
        other.chunks[0].encoding = 7;
        assert!(decode_chunk_series(vec![other], 0, 10).is_err());
    }
}
