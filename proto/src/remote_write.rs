//! Decoding of remote-write 1.0 requests (snappy block compression + protobuf) into a
//! [`WriteBatch`] without allocating per label.
//!
//! The decoder walks the protobuf wire format by hand: `WriteRequest.timeseries` (1) and
//! `metadata` (3); `TimeSeries.labels` (1), `samples` (2), `exemplars` (3) and `histograms` (4)
//! (the last two are counted and skipped: Norn stores float samples), and Mimir's
//! `created_timestamp` (6, the series' start timestamp); unknown fields are
//! skipped by wire type, as protobuf requires. Label names and values are recorded as byte
//! ranges of the decompressed body and checked to be UTF-8.
//!
//! [`encode_write_request`] goes the other way for the distributor's pushes to ingesters: it
//! writes the wire format straight from a batch's borrowed labels, sizing the output in a
//! first pass so the buffer is allocated once and no generated structs are built.

use bytes::Bytes;
use norn_model::{MetricMetadata, MetricType, Sample, WriteBatch, WriteBatchBuilder};

/// Why a request body could not be decoded. All of these are the sender's fault (HTTP 400),
/// except `TooLarge` (413).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("snappy decompression failed: {0}")]
    Snappy(String),
    #[error("request body too large: {size} bytes decompressed, limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("protobuf decode failed at byte {offset}: {what}")]
    Protobuf { offset: usize, what: &'static str },
    /// The body has bytes but not one field of the message it was read as: most likely a
    /// message of another protocol version sent with the wrong Content-Type. Answering 2xx
    /// would acknowledge data that was never seen.
    #[error(
        "the {size}-byte body holds no field of {message}: nothing in it could be read (was it sent with the wrong Content-Type? remote write 2.0 needs `Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request`)"
    )]
    NoKnownFields { message: &'static str, size: usize },
    /// A remote-write 2.0 request breaks the symbol-table rules (references out of range, an
    /// odd number of label references, an empty label name, `symbols[0]` not empty).
    #[error("invalid remote write 2.0 request: {0}")]
    InvalidV2(String),
}

/// Decompresses a snappy block-format body, refusing before allocating when the declared
/// decompressed size exceeds `limit`.
pub fn decompress_snappy(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let size = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    let mut out = vec![0u8; size];
    let n = snap::raw::Decoder::new()
        .decompress(body, &mut out)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    out.truncate(n);
    Ok(out)
}

/// Decodes an uncompressed `prometheus.WriteRequest`.
pub fn decode_write_request(body: Bytes) -> Result<WriteBatch, DecodeError> {
    let mut builder = WriteBatch::builder(body.clone());
    let mut r = Reader {
        buf: &body,
        pos: 0,
        end: body.len(),
    };
    let mut known = false;
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, WIRE_LEN) => {
                let end = r.len_end()?;
                decode_series(&mut r, end, &mut builder)?;
                known = true;
            }
            (3, WIRE_LEN) => {
                let end = r.len_end()?;
                let m = decode_metadata(&mut r, end)?;
                builder.add_metadata(m);
                known = true;
            }
            // Reserved in the 1.0 spec, Cortex's `source` enum (API/RULE) in Cortex/Mimir
            // clients: a 1.0 field all the same (2.0 reserves 1-3, so no 2.0 body has it).
            (2, WIRE_VARINT) => {
                r.varint()?;
                known = true;
            }
            _ => r.skip(wt)?,
        }
    }
    // A 2.0 body read as 1.0 (fields 1-3 are reserved in 2.0) lands here.
    if !known && !body.is_empty() {
        return Err(DecodeError::NoKnownFields {
            message: "prometheus.WriteRequest",
            size: body.len(),
        });
    }
    Ok(builder.build())
}

/// Encodes `batch` as an uncompressed `prometheus.WriteRequest` (series with labels and float
/// samples, then metadata). [`decode_write_request`] reads it back to an equal batch.
///
/// Both sample fields are always written, even when zero: the value keeps its exact bits
/// (`-0.0` survives, which proto3's omit-the-default rule would lose).
pub fn encode_write_request(batch: &WriteBatch) -> Vec<u8> {
    encode_write_request_parts(batch).into_vec()
}

/// A batch encoded once as a remote-write `WriteRequest`, with the byte range of each series'
/// field, so requests for any subset of the series are a concatenation of ranges. The
/// distributor sends each ingester the series it owns; encoding the batch once instead of once
/// per ingester takes the encoder off the top of its profile.
#[derive(Debug, Clone)]
pub struct EncodedWriteRequest {
    buf: bytes::Bytes,
    /// End offset of each series' field; series `i` spans `ends[i-1]..ends[i]`.
    ends: Vec<u32>,
}

impl EncodedWriteRequest {
    /// The whole request (every series and the metadata), without copying.
    pub fn all(&self) -> bytes::Bytes {
        self.buf.clone()
    }

    /// A request of the series at `idxs` (in that order), with the metadata when asked.
    pub fn select(&self, idxs: &[usize], with_metadata: bool) -> bytes::Bytes {
        if with_metadata
            && idxs.len() == self.ends.len()
            && idxs.iter().enumerate().all(|(k, &i)| k == i)
        {
            return self.all();
        }
        let range = |i: usize| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            start..self.ends[i] as usize
        };
        let meta = self.ends.last().map_or(0, |&e| e as usize)..self.buf.len();
        let mut len: usize = idxs.iter().map(|&i| range(i).len()).sum();
        if with_metadata {
            len += meta.len();
        }
        let mut out = Vec::with_capacity(len);
        for &i in idxs {
            out.extend_from_slice(&self.buf[range(i)]);
        }
        if with_metadata {
            out.extend_from_slice(&self.buf[meta]);
        }
        out.into()
    }

    fn into_vec(self) -> Vec<u8> {
        self.buf.into()
    }
}

/// Encodes `batch` once, remembering where each series is (see [`EncodedWriteRequest`]).
pub fn encode_write_request_parts(batch: &WriteBatch) -> EncodedWriteRequest {
    // First pass: each series' body length (needed for its length prefix) and the total.
    let mut series_len = Vec::with_capacity(batch.len());
    let mut total = 0;
    for s in batch.iter() {
        let mut n = 0;
        for (name, value) in s.label_bytes() {
            let l = label_len(name, value);
            n += 1 + varint_len(l as u64) + l;
        }
        for smp in s.samples() {
            let l = sample_len(smp);
            n += 1 + varint_len(l as u64) + l;
        }
        if let Some(st) = s.start_timestamp() {
            n += 1 + varint_len(st as u64);
        }
        series_len.push(n);
        total += 1 + varint_len(n as u64) + n;
    }
    for m in batch.metadata() {
        let l = metadata_len(m);
        total += 1 + varint_len(l as u64) + l;
    }

    let mut out = Vec::with_capacity(total);
    let mut ends = Vec::with_capacity(batch.len());
    for (s, len) in batch.iter().zip(series_len) {
        put_key(&mut out, 1, WIRE_LEN);
        put_varint(&mut out, len as u64);
        for (name, value) in s.label_bytes() {
            put_key(&mut out, 1, WIRE_LEN);
            put_varint(&mut out, label_len(name, value) as u64);
            put_bytes_field(&mut out, 1, name);
            put_bytes_field(&mut out, 2, value);
        }
        for smp in s.samples() {
            put_key(&mut out, 2, WIRE_LEN);
            put_varint(&mut out, sample_len(smp) as u64);
            put_key(&mut out, 1, WIRE_I64);
            out.extend_from_slice(&smp.v.to_bits().to_le_bytes());
            put_key(&mut out, 2, WIRE_VARINT);
            put_varint(&mut out, smp.t as u64);
        }
        if let Some(st) = s.start_timestamp() {
            put_key(&mut out, START_TIMESTAMP_FIELD, WIRE_VARINT);
            put_varint(&mut out, st as u64);
        }
        ends.push(out.len() as u32);
    }
    for m in batch.metadata() {
        put_key(&mut out, 3, WIRE_LEN);
        put_varint(&mut out, metadata_len(m) as u64);
        let t = crate::convert::metric_type_to_proto(m.metric_type) as u64;
        if t != 0 {
            put_key(&mut out, 1, WIRE_VARINT);
            put_varint(&mut out, t);
        }
        put_bytes_field(&mut out, 2, m.metric_family_name.as_bytes());
        put_bytes_field(&mut out, 4, m.help.as_bytes());
        put_bytes_field(&mut out, 5, m.unit.as_bytes());
    }
    debug_assert_eq!(out.len(), total, "size pass and write pass disagree");
    EncodedWriteRequest {
        buf: out.into(),
        ends,
    }
}

#[inline]
fn varint_len(v: u64) -> usize {
    // 7 payload bits per byte; `| 1` makes zero take one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Length of a string/bytes field, omitted (as proto3 does) when empty.
#[inline]
fn bytes_field_len(b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        1 + varint_len(b.len() as u64) + b.len()
    }
}

#[inline]
fn label_len(name: &[u8], value: &[u8]) -> usize {
    bytes_field_len(name) + bytes_field_len(value)
}

#[inline]
fn sample_len(s: &Sample) -> usize {
    1 + 8 + 1 + varint_len(s.t as u64)
}

fn metadata_len(m: &MetricMetadata) -> usize {
    let t = crate::convert::metric_type_to_proto(m.metric_type) as u64;
    (if t != 0 { 1 + varint_len(t) } else { 0 })
        + bytes_field_len(m.metric_family_name.as_bytes())
        + bytes_field_len(m.help.as_bytes())
        + bytes_field_len(m.unit.as_bytes())
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn put_key(out: &mut Vec<u8>, field: u32, wt: u8) {
    // Every field number here is below 16, so a key is one byte.
    out.push(((field << 3) as u8) | wt);
}

#[inline]
fn put_bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if b.is_empty() {
        return;
    }
    put_key(out, field, WIRE_LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// `TimeSeries` field carrying the series' start (created) timestamp in ms. Not in
/// Prometheus' 1.0 proto; Mimir's `TimeSeries` has `created_timestamp` at this number, and
/// Norn uses it on its own distributor → ingester pushes to carry a 2.0 request's start
/// timestamp (see `norn_model::WriteBatchBuilder::set_start_timestamp`).
pub(crate) const START_TIMESTAMP_FIELD: u32 = 6;

pub(crate) const WIRE_VARINT: u8 = 0;
pub(crate) const WIRE_I64: u8 = 1;
pub(crate) const WIRE_LEN: u8 = 2;
pub(crate) const WIRE_I32: u8 = 5;

/// A cursor over protobuf wire format, bounded by the current message's end.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

impl Reader<'_> {
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.end
    }

    pub(crate) fn err(&self, what: &'static str) -> DecodeError {
        DecodeError::Protobuf {
            offset: self.pos,
            what,
        }
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf[..self.end].get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    #[inline]
    pub(crate) fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let k = self.varint()?;
        let field = (k >> 3) as u32;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        Ok((field, (k & 7) as u8))
    }

    /// Reads a length prefix and returns the absolute end offset of the value.
    #[inline]
    pub(crate) fn len_end(&mut self) -> Result<usize, DecodeError> {
        let len = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| self.err("length overflow"))?;
        if end > self.end {
            return Err(self.err("length-delimited field runs past its message"));
        }
        Ok(end)
    }

    #[inline]
    pub(crate) fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.buf[..self.end]
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| self.err("truncated fixed64"))?;
        self.pos += 8;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])))
    }

    pub(crate) fn skip(&mut self, wt: u8) -> Result<(), DecodeError> {
        match wt {
            WIRE_VARINT => {
                self.varint()?;
            }
            WIRE_I64 => {
                self.fixed64()?;
            }
            WIRE_LEN => {
                self.pos = self.len_end()?;
            }
            WIRE_I32 => {
                if self.pos + 4 > self.end {
                    return Err(self.err("truncated fixed32"));
                }
                self.pos += 4;
            }
            _ => return Err(self.err("unsupported wire type")),
        }
        Ok(())
    }

    /// Runs `f` over a nested message ending at `end`, restoring the outer bound afterwards.
    #[inline]
    pub(crate) fn nested<T>(
        &mut self,
        end: usize,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let outer = self.end;
        self.end = end;
        let out = f(self)?;
        self.end = outer;
        Ok(out)
    }
}

fn decode_series(
    r: &mut Reader<'_>,
    end: usize,
    b: &mut WriteBatchBuilder,
) -> Result<(), DecodeError> {
    let res = r.nested(end, |r| {
        let (mut histograms, mut exemplars) = (0, 0);
        while !r.done() {
            let (field, wt) = r.key()?;
            match (field, wt) {
                (1, WIRE_LEN) => {
                    let end = r.len_end()?;
                    let (name, value) = r.nested(end, |r| {
                        let (mut name, mut value) = (r.pos..r.pos, r.pos..r.pos);
                        while !r.done() {
                            let (f, wt) = r.key()?;
                            match (f, wt) {
                                (1, WIRE_LEN) => {
                                    let e = r.len_end()?;
                                    name = r.pos..e;
                                    r.pos = e;
                                }
                                (2, WIRE_LEN) => {
                                    let e = r.len_end()?;
                                    value = r.pos..e;
                                    r.pos = e;
                                }
                                _ => r.skip(wt)?,
                            }
                        }
                        Ok((name, value))
                    })?;
                    b.add_label(name, value)
                        .map_err(|_| r.err("label name or value is not valid UTF-8"))?;
                }
                (2, WIRE_LEN) => {
                    let end = r.len_end()?;
                    let s = r.nested(end, |r| {
                        let mut s = Sample { t: 0, v: 0.0 };
                        while !r.done() {
                            let (f, wt) = r.key()?;
                            match (f, wt) {
                                (1, WIRE_I64) => s.v = f64::from_bits(r.fixed64()?),
                                (2, WIRE_VARINT) => s.t = r.varint()? as i64,
                                _ => r.skip(wt)?,
                            }
                        }
                        Ok(s)
                    })?;
                    b.add_sample(s);
                }
                (3, WIRE_LEN) => {
                    exemplars += 1;
                    r.skip(wt)?;
                }
                (4, WIRE_LEN) => {
                    histograms += 1;
                    r.skip(wt)?;
                }
                (START_TIMESTAMP_FIELD, WIRE_VARINT) => {
                    b.set_start_timestamp(r.varint()? as i64);
                }
                _ => r.skip(wt)?,
            }
        }
        Ok((histograms, exemplars))
    });
    match res {
        Ok((h, e)) => {
            b.note_histograms(h);
            b.note_exemplars(e);
            b.finish_series();
            Ok(())
        }
        Err(e) => {
            b.abandon_series();
            Err(e)
        }
    }
}

fn decode_metadata(r: &mut Reader<'_>, end: usize) -> Result<MetricMetadata, DecodeError> {
    r.nested(end, |r| {
        let mut m = MetricMetadata {
            metric_family_name: String::new(),
            metric_type: MetricType::Unknown,
            help: String::new(),
            unit: String::new(),
        };
        while !r.done() {
            let (f, wt) = r.key()?;
            match (f, wt) {
                (1, WIRE_VARINT) => m.metric_type = MetricType::from_proto(r.varint()? as i32),
                (2 | 4 | 5, WIRE_LEN) => {
                    let e = r.len_end()?;
                    let s = std::str::from_utf8(&r.buf[r.pos..e])
                        .map_err(|_| r.err("metadata string is not valid UTF-8"))?
                        .to_string();
                    r.pos = e;
                    match f {
                        2 => m.metric_family_name = s,
                        4 => m.help = s,
                        _ => m.unit = s,
                    }
                }
                _ => r.skip(wt)?,
            }
        }
        Ok(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus as pb;
    use proptest::prelude::*;
    use prost::Message;

    fn encode(req: &pb::WriteRequest) -> Bytes {
        Bytes::from(req.encode_to_vec())
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> pb::TimeSeries {
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

    #[test]
    fn decodes_what_prost_encodes() {
        let req = pb::WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "up"), ("job", "a")],
                    &[(1000, 1.0), (2000, f64::NAN)],
                ),
                series(&[("__name__", "x")], &[(-5, f64::INFINITY)]),
            ],
            metadata: vec![pb::MetricMetadata {
                r#type: 1,
                metric_family_name: "up".into(),
                help: "h".into(),
                unit: "u".into(),
            }],
        };
        let b = decode_write_request(encode(&req)).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            b.series(0).labels().collect::<Vec<_>>(),
            [("__name__", "up"), ("job", "a")]
        );
        assert_eq!(b.series(0).samples()[0], Sample::new(1000, 1.0));
        assert!(b.series(0).samples()[1].v.is_nan());
        assert_eq!(b.series(1).samples()[0], Sample::new(-5, f64::INFINITY));
        assert_eq!(b.metadata()[0].metric_type, MetricType::Counter);
        assert_eq!(b.metadata()[0].help, "h");
    }

    #[test]
    fn histograms_and_exemplars_are_counted_not_stored() {
        let mut ts = series(&[("__name__", "h")], &[]);
        ts.histograms.push(pb::Histogram::default());
        ts.exemplars.push(pb::Exemplar::default());
        let b = decode_write_request(encode(&pb::WriteRequest {
            timeseries: vec![ts],
            metadata: vec![],
        }))
        .unwrap();
        assert_eq!(b.skipped_histograms, 1);
        assert_eq!(b.skipped_exemplars, 1);
        assert_eq!(b.num_samples(), 0);
    }

    #[test]
    fn a_body_of_unknown_fields_is_an_error_not_an_empty_request() {
        // Field 4 (2.0's symbols) and field 5 (2.0's timeseries): what a 2.0 body looks like.
        for body in [&b"\x22\x00\x22\x02up"[..], b"\x2a\x00", b"\x78\x01"] {
            assert!(
                matches!(
                    decode_write_request(Bytes::copy_from_slice(body)),
                    Err(DecodeError::NoKnownFields { .. })
                ),
                "{body:?}"
            );
        }
        // Cortex's `source = RULE` alone is a (meaningless but valid) 1.0 request.
        assert!(
            decode_write_request(Bytes::from_static(b"\x10\x01"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b"\xff\xff\xff"[..],
            b"\x0a\x05abc",
            b"\x0a\x02\x0a\x09",
            b"hello world",
        ] {
            assert!(
                decode_write_request(Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn snappy_round_trip_and_limits() {
        let raw = vec![7u8; 1000];
        let c = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        assert_eq!(decompress_snappy(&c, 1000).unwrap(), raw);
        assert!(matches!(
            decompress_snappy(&c, 999),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress_snappy(b"\x05garbage", 100),
            Err(DecodeError::Snappy(_))
        ));
    }

    fn metric_type() -> impl Strategy<Value = MetricType> {
        (0i32..8).prop_map(MetricType::from_proto)
    }

    #[test]
    fn encoded_request_is_what_prost_reads() {
        let batch = norn_model::WriteBatch::from_series(&[(
            norn_model::Labels::from_pairs([("__name__", "up"), ("job", "a")]),
            vec![Sample::new(1000, 1.0), Sample::new(-7, -0.0)],
        )]);
        let req = pb::WriteRequest::decode(&encode_write_request(&batch)[..]).unwrap();
        assert_eq!(req.timeseries.len(), 1);
        assert_eq!(req.timeseries[0].labels[1].value, "a");
        assert_eq!(req.timeseries[0].samples[1].timestamp, -7);
        assert_eq!(
            req.timeseries[0].samples[1].value.to_bits(),
            (-0.0f64).to_bits()
        );
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(
            input in proptest::collection::vec(
                (proptest::collection::vec(("[a-z_]{0,6}", ".{0,6}"), 0..5),
                 proptest::collection::vec((any::<i64>(), any::<f64>()), 0..5),
                 prop_oneof![Just(0i64), any::<i64>()]), 0..5),
            metadata in proptest::collection::vec(
                (metric_type(), "[a-z_]{0,8}", ".{0,10}", "[a-z]{0,4}"), 0..3),
        ) {
            // Build through the builder so label order and empty names are kept as given.
            let mut buf = Vec::new();
            let mut spans = Vec::new();
            for (ls, _, _) in &input {
                let mut s = Vec::new();
                for (n, v) in ls {
                    let a = buf.len();
                    buf.extend_from_slice(n.as_bytes());
                    let b = buf.len();
                    buf.extend_from_slice(v.as_bytes());
                    s.push((a..b, b..buf.len()));
                }
                spans.push(s);
            }
            let mut bld = norn_model::WriteBatch::builder(Bytes::from(buf));
            for ((_, ss, st), spans) in input.iter().zip(spans) {
                for (n, v) in spans {
                    bld.add_label(n, v).unwrap();
                }
                bld.set_start_timestamp(*st);
                for (t, v) in ss {
                    bld.add_sample(Sample::new(*t, *v));
                }
                bld.finish_series();
            }
            for (t, name, help, unit) in &metadata {
                bld.add_metadata(MetricMetadata {
                    metric_family_name: name.clone(),
                    metric_type: *t,
                    help: help.clone(),
                    unit: unit.clone(),
                });
            }
            let batch = bld.build();
            let got = decode_write_request(Bytes::from(encode_write_request(&batch))).unwrap();
            prop_assert_eq!(got.len(), batch.len());
            for (g, w) in got.iter().zip(batch.iter()) {
                prop_assert_eq!(g.labels().collect::<Vec<_>>(), w.labels().collect::<Vec<_>>());
                prop_assert_eq!(g.start_timestamp(), w.start_timestamp());
                let gs: Vec<(i64, u64)> = g.samples().iter().map(|s| (s.t, s.v.to_bits())).collect();
                let ws: Vec<(i64, u64)> = w.samples().iter().map(|s| (s.t, s.v.to_bits())).collect();
                prop_assert_eq!(gs, ws);
            }
            prop_assert_eq!(got.metadata(), batch.metadata());

            // Any subset cut from the one encoding is the encoding of that subset.
            let parts = encode_write_request_parts(&batch);
            prop_assert_eq!(&parts.all()[..], &encode_write_request(&batch)[..]);
            let odd: Vec<usize> = (0..batch.len()).filter(|i| i % 2 == 1).collect();
            for with_metadata in [false, true] {
                prop_assert_eq!(
                    &parts.select(&odd, with_metadata)[..],
                    &encode_write_request(&batch.subset(&odd, with_metadata))[..]
                );
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_write_request(Bytes::from(body));
        }

        #[test]
        fn round_trips_arbitrary_requests(
            input in proptest::collection::vec(
                (proptest::collection::vec(("[a-z_]{1,6}", ".{0,6}"), 0..5),
                 proptest::collection::vec((any::<i64>(), any::<f64>()), 0..5)), 0..5)
        ) {
            let req = pb::WriteRequest {
                timeseries: input.iter().map(|(ls, ss)| pb::TimeSeries {
                    labels: ls.iter().map(|(n, v)| pb::Label { name: n.clone(), value: v.clone() }).collect(),
                    samples: ss.iter().map(|(t, v)| pb::Sample { timestamp: *t, value: *v }).collect(),
                    ..Default::default()
                }).collect(),
                metadata: vec![],
            };
            // prost is the reference decoder (it also normalises what proto3 cannot carry,
            // such as -0.0, which an encoder omits as the default value).
            let bytes = encode(&req);
            let reference = pb::WriteRequest::decode(bytes.clone()).unwrap();
            let b = decode_write_request(bytes).unwrap();
            prop_assert_eq!(b.len(), reference.timeseries.len());
            for (i, ts) in reference.timeseries.iter().enumerate() {
                let got: Vec<(String, String)> = b.series(i).labels().map(|(n, v)| (n.to_string(), v.to_string())).collect();
                let want: Vec<(String, String)> = ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
                prop_assert_eq!(got, want);
                let gs: Vec<(i64, u64)> = b.series(i).samples().iter().map(|s| (s.t, s.v.to_bits())).collect();
                let want: Vec<(i64, u64)> = ts.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect();
                prop_assert_eq!(gs, want);
            }
            prop_assert_eq!(b.len(), input.len());
        }
    }
}
