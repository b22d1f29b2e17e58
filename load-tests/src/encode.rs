//! A small, allocation-free protobuf encoder for remote write 1.0 `prometheus.WriteRequest`.
//!
//! The load generator must never be the bottleneck of what it measures, so instead of building
//! owned `prost` messages (one `String` per label, one `Vec` per series) we write the wire format
//! straight into a reused buffer:
//!
//! * a series' label block (`repeated Label labels = 1`) is encoded once, when the series is
//!   created, and copied verbatim into every request that carries the series;
//! * samples are appended directly;
//! * the request buffer and the snappy output buffer are kept across requests.
//!
//! Field numbers follow `/work/shared/specs/remote-write.md` §1:
//! `WriteRequest.timeseries = 1`, `TimeSeries.labels = 1`, `TimeSeries.samples = 2`,
//! `Label.name = 1`, `Label.value = 2`, `Sample.value = 1` (double), `Sample.timestamp = 2`
//! (int64). Like every proto3 encoder we omit scalar fields holding their default value, so the
//! bytes are the canonical ones a `prost` encoder produces.

use thiserror::Error;

/// Protobuf wire type 1: 64-bit little endian.
const WIRE_I64: u8 = 1;
/// Protobuf wire type 2: length-delimited.
const WIRE_LEN: u8 = 2;
/// Protobuf wire type 0: varint.
const WIRE_VARINT: u8 = 0;

const fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

/// Errors of the encoder.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// Snappy refused the input (only possible for inputs above its 4 GiB limit).
    #[error("snappy compression failed: {0}")]
    Snappy(#[from] snap::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, EncodeError>;

/// One float sample: value and timestamp in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The sample value.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Appends `v` as a base-128 varint.
#[inline]
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Number of bytes `v` takes as a varint.
#[inline]
pub const fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the encoding of one `Label { name, value }` as field 1 of `TimeSeries`.
///
/// Callers pass labels sorted by name (the spec requires it); the encoder does not sort, because
/// sorting belongs to series creation, not to the per-request hot path.
pub fn encode_label(buf: &mut Vec<u8>, name: &str, value: &str) {
    let inner = 1
        + varint_len(name.len() as u64)
        + name.len()
        + 1
        + varint_len(value.len() as u64)
        + value.len();
    buf.push(tag(1, WIRE_LEN));
    put_varint(buf, inner as u64);
    buf.push(tag(1, WIRE_LEN));
    put_varint(buf, name.len() as u64);
    buf.extend_from_slice(name.as_bytes());
    buf.push(tag(2, WIRE_LEN));
    put_varint(buf, value.len() as u64);
    buf.extend_from_slice(value.as_bytes());
}

/// Encodes a whole sorted label set into the bytes of `TimeSeries.labels` entries.
pub fn encode_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut buf = Vec::new();
    for (name, value) in labels {
        encode_label(&mut buf, name, value);
    }
    buf
}

/// Size of one encoded `Sample` message body (without its own tag and length).
#[inline]
fn sample_body_len(s: &Sample) -> usize {
    let mut n = 0;
    // Compare bits, not values: -0.0 is not the default and must survive the round trip.
    if s.value.to_bits() != 0 {
        n += 1 + 8;
    }
    if s.timestamp_ms != 0 {
        n += 1 + varint_len(s.timestamp_ms as u64);
    }
    n
}

/// Builds remote-write 1.0 request bodies in reused buffers.
pub struct WriteRequestEncoder {
    buf: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
    series: usize,
    samples: usize,
}

impl Default for WriteRequestEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WriteRequestEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequestEncoder")
            .field("buffered_bytes", &self.buf.len())
            .field("series", &self.series)
            .field("samples", &self.samples)
            .finish()
    }
}

impl WriteRequestEncoder {
    /// A fresh encoder; buffers grow to the largest request and are then reused.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
            series: 0,
            samples: 0,
        }
    }

    /// Forgets the current request but keeps the allocated buffers.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.series = 0;
        self.samples = 0;
    }

    /// Appends one `TimeSeries` whose labels were encoded by [`encode_labels`].
    pub fn push_series(&mut self, encoded_labels: &[u8], samples: &[Sample]) {
        let samples_len: usize = samples
            .iter()
            .map(|s| {
                let body = sample_body_len(s);
                1 + varint_len(body as u64) + body
            })
            .sum();
        let ts_len = encoded_labels.len() + samples_len;
        let buf = &mut self.buf;
        buf.reserve(1 + varint_len(ts_len as u64) + ts_len);
        buf.push(tag(1, WIRE_LEN));
        put_varint(buf, ts_len as u64);
        buf.extend_from_slice(encoded_labels);
        for s in samples {
            buf.push(tag(2, WIRE_LEN));
            put_varint(buf, sample_body_len(s) as u64);
            if s.value.to_bits() != 0 {
                buf.push(tag(1, WIRE_I64));
                buf.extend_from_slice(&s.value.to_le_bytes());
            }
            if s.timestamp_ms != 0 {
                buf.push(tag(2, WIRE_VARINT));
                // int64 is encoded as its two's complement 64-bit pattern (10 bytes if negative).
                put_varint(buf, s.timestamp_ms as u64);
            }
        }
        self.series += 1;
        self.samples += samples.len();
    }

    /// Number of series in the current request.
    pub fn series(&self) -> usize {
        self.series
    }

    /// Number of samples in the current request.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The uncompressed protobuf bytes of the current request.
    pub fn protobuf(&self) -> &[u8] {
        &self.buf
    }

    /// Snappy block-compresses the current request into the reused output buffer.
    pub fn compress(&mut self) -> Result<&[u8]> {
        let max = snap::raw::max_compress_len(self.buf.len());
        if self.compressed.len() < max {
            self.compressed.resize(max, 0);
        }
        let n = self.snappy.compress(&self.buf, &mut self.compressed)?;
        Ok(&self.compressed[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference messages declared by hand from the spec's field table, decoded with prost.
    #[derive(Clone, PartialEq, prost::Message)]
    struct WriteRequest {
        #[prost(message, repeated, tag = "1")]
        timeseries: Vec<TimeSeries>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct TimeSeries {
        #[prost(message, repeated, tag = "1")]
        labels: Vec<Label>,
        #[prost(message, repeated, tag = "2")]
        samples: Vec<PSample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Label {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PSample {
        #[prost(double, tag = "1")]
        value: f64,
        #[prost(int64, tag = "2")]
        timestamp: i64,
    }

    type LabelPairs<'a> = Vec<(&'a str, &'a str)>;

    fn label(n: &str, v: &str) -> Label {
        Label {
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "value {v}");
        }
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
    }

    #[test]
    fn decodes_with_prost_reference_and_matches_its_bytes() {
        use prost::Message;
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        // A name over 127 bytes exercises two-byte length varints.
        let long_name = "x".repeat(300);
        let series: Vec<(LabelPairs, Vec<Sample>)> = vec![
            (
                vec![
                    ("__name__", "node_cpu_seconds_total"),
                    ("cpu", "0"),
                    ("mode", "idle"),
                    ("instance", "é-ü"),
                ],
                vec![
                    Sample {
                        value: 1.5,
                        timestamp_ms: 1_700_000_000_000,
                    },
                    Sample {
                        value: 0.0,
                        timestamp_ms: 1_700_000_015_000,
                    },
                    Sample {
                        value: stale,
                        timestamp_ms: 1_700_000_030_000,
                    },
                ],
            ),
            (
                vec![("__name__", "up")],
                vec![
                    Sample {
                        value: -3.25,
                        timestamp_ms: -5,
                    },
                    Sample {
                        value: 1.0,
                        timestamp_ms: 0,
                    },
                ],
            ),
            (vec![("__name__", long_name.as_str())], vec![]),
        ];
        let mut enc = WriteRequestEncoder::new();
        // Encode twice through the same encoder: reused buffers must not leak old bytes.
        for _ in 0..2 {
            enc.clear();
            for (labels, samples) in &series {
                enc.push_series(&encode_labels(labels.iter().copied()), samples);
            }
        }
        assert_eq!(enc.series(), 3);
        assert_eq!(enc.samples(), 5);
        let decoded = WriteRequest::decode(enc.protobuf()).expect("prost decodes our bytes");
        let expected = WriteRequest {
            timeseries: series
                .iter()
                .map(|(labels, samples)| TimeSeries {
                    labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
                    samples: samples
                        .iter()
                        .map(|s| PSample {
                            value: s.value,
                            timestamp: s.timestamp_ms,
                        })
                        .collect(),
                })
                .collect(),
        };
        assert_eq!(decoded.timeseries.len(), 3);
        for (d, e) in decoded.timeseries.iter().zip(&expected.timeseries) {
            assert_eq!(d.labels, e.labels);
            assert_eq!(d.samples.len(), e.samples.len());
            for (ds, es) in d.samples.iter().zip(&e.samples) {
                // Bit equality keeps the staleness NaN payload honest.
                assert_eq!(ds.value.to_bits(), es.value.to_bits());
                assert_eq!(ds.timestamp, es.timestamp);
            }
        }
        // Canonical proto3 bytes: identical to what prost itself produces.
        assert_eq!(enc.protobuf(), expected.encode_to_vec().as_slice());

        // The snappy block round-trips to the same protobuf.
        let proto = enc.protobuf().to_vec();
        let compressed = enc.compress().expect("compress").to_vec();
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&compressed)
            .expect("snappy block format");
        assert_eq!(raw, proto);
    }

    #[test]
    fn hand_checked_bytes_for_a_tiny_request() {
        let mut enc = WriteRequestEncoder::new();
        enc.push_series(
            &encode_labels([("a", "b")]),
            &[Sample {
                value: 1.0,
                timestamp_ms: 1,
            }],
        );
        let one = 1.0f64.to_le_bytes();
        let mut want = vec![
            0x0a, 21, 0x0a, 6, 0x0a, 1, b'a', 0x12, 1, b'b', 0x12, 11, 0x09,
        ];
        want.extend_from_slice(&one);
        want.extend_from_slice(&[0x10, 0x01]);
        assert_eq!(enc.protobuf(), want.as_slice());
    }
}
