//! WAL record payloads, in Prometheus' `record` encoding (spec §10): type 1 = series,
//! type 2 = samples. Other types are skipped on replay.
//!
//! Samples are delta-encoded against the record's first entry (ref and timestamp as signed
//! varints), so a batch of samples scraped at the same time costs ~10 bytes per sample
//! before snappy.

use norn_model::{Label, Labels};

use crate::chunkenc::{put_uvarint, put_varint};

/// Record type byte of a series record.
pub const SERIES: u8 = 1;
/// Record type byte of a samples record.
pub const SAMPLES: u8 = 2;

/// A sample addressed by series ref.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefSample {
    pub series: u64,
    pub t: i64,
    pub v: f64,
}

/// A series definition: ref → labels.
#[derive(Debug, Clone, PartialEq)]
pub struct RefSeries {
    pub series: u64,
    pub labels: Labels,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Series(Vec<RefSeries>),
    Samples(Vec<RefSample>),
    /// A record type this version does not use (skipped, not an error).
    Unknown(u8),
}

/// A record's payload does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WAL record: {0}")]
pub struct DecodeError(pub &'static str);

/// Appends the type byte of a series record to an empty `buf`.
pub fn begin_series(buf: &mut Vec<u8>) {
    buf.push(SERIES);
}

/// Appends one series entry (labels sorted by name) after [`begin_series`].
pub fn push_series<'a>(
    buf: &mut Vec<u8>,
    series: u64,
    labels: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) {
    buf.extend_from_slice(&series.to_be_bytes());
    put_uv(buf, labels.len() as u64);
    for (n, v) in labels {
        put_uv(buf, n.len() as u64);
        buf.extend_from_slice(n);
        put_uv(buf, v.len() as u64);
        buf.extend_from_slice(v);
    }
}

/// Encodes a samples record into `buf` (appended).
pub fn encode_samples(buf: &mut Vec<u8>, samples: &[RefSample]) {
    buf.push(SAMPLES);
    let Some(first) = samples.first() else { return };
    buf.extend_from_slice(&first.series.to_be_bytes());
    buf.extend_from_slice(&first.t.to_be_bytes());
    for s in samples {
        put_v(buf, s.series.wrapping_sub(first.series) as i64);
        put_v(buf, s.t.wrapping_sub(first.t));
        buf.extend_from_slice(&s.v.to_bits().to_be_bytes());
    }
}

fn put_uv(buf: &mut Vec<u8>, x: u64) {
    let mut tmp = [0u8; 10];
    let n = put_uvarint(&mut tmp, x);
    buf.extend_from_slice(&tmp[..n]);
}

fn put_v(buf: &mut Vec<u8>, x: i64) {
    let mut tmp = [0u8; 10];
    let n = put_varint(&mut tmp, x);
    buf.extend_from_slice(&tmp[..n]);
}

struct Dec<'a> {
    b: &'a [u8],
}

impl<'a> Dec<'a> {
    fn be64(&mut self) -> Result<u64, DecodeError> {
        if self.b.len() < 8 {
            return Err(DecodeError("short fixed-width field"));
        }
        let (h, t) = self.b.split_at(8);
        self.b = t;
        Ok(u64::from_be_bytes(h.try_into().expect("8 bytes")))
    }

    fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut x = 0u64;
        let mut s = 0u32;
        for i in 0..10 {
            let Some((&b, rest)) = self.b.split_first() else {
                return Err(DecodeError("short varint"));
            };
            self.b = rest;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(DecodeError("varint overflows 64 bits"));
                }
                return Ok(x | (u64::from(b) << s));
            }
            x |= u64::from(b & 0x7f) << s;
            s += 7;
        }
        Err(DecodeError("varint overflows 64 bits"))
    }

    fn varint(&mut self) -> Result<i64, DecodeError> {
        let ux = self.uvarint()?;
        Ok(((ux >> 1) as i64) ^ -((ux & 1) as i64))
    }

    fn string(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.uvarint()?;
        if n > self.b.len() as u64 {
            return Err(DecodeError("string longer than record"));
        }
        let (h, t) = self.b.split_at(n as usize);
        self.b = t;
        std::str::from_utf8(h).map_err(|_| DecodeError("label is not UTF-8"))
    }
}

/// Decodes a record payload (after decompression).
pub fn decode(rec: &[u8]) -> Result<Record, DecodeError> {
    let Some((&typ, body)) = rec.split_first() else {
        return Err(DecodeError("empty record"));
    };
    let mut d = Dec { b: body };
    match typ {
        SERIES => {
            let mut out = Vec::new();
            while !d.b.is_empty() {
                let series = d.be64()?;
                let n = d.uvarint()?;
                // Each label takes at least 2 bytes; refuse counts the record cannot hold.
                if n > d.b.len() as u64 / 2 {
                    return Err(DecodeError("label count larger than record"));
                }
                let mut labels = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let name = d.string()?;
                    let value = d.string()?;
                    labels.push(Label::new(name, value));
                }
                out.push(RefSeries {
                    series,
                    labels: Labels::new(labels),
                });
            }
            Ok(Record::Series(out))
        }
        SAMPLES => {
            let mut out = Vec::new();
            if d.b.is_empty() {
                return Ok(Record::Samples(out));
            }
            let ref0 = d.be64()?;
            let t0 = d.be64()? as i64;
            while !d.b.is_empty() {
                let dr = d.varint()?;
                let dt = d.varint()?;
                let v = f64::from_bits(d.be64()?);
                out.push(RefSample {
                    series: ref0.wrapping_add(dr as u64),
                    t: t0.wrapping_add(dt),
                    v,
                });
            }
            Ok(Record::Samples(out))
        }
        other => Ok(Record::Unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn samples_match_prometheus_layout() {
        let mut buf = Vec::new();
        encode_samples(
            &mut buf,
            &[
                RefSample {
                    series: 5,
                    t: 1000,
                    v: 1.0,
                },
                RefSample {
                    series: 4,
                    t: 1001,
                    v: 2.0,
                },
            ],
        );
        let mut want = vec![2];
        want.extend_from_slice(&5u64.to_be_bytes());
        want.extend_from_slice(&1000i64.to_be_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[1, 2]); // zigzag(-1) = 1, zigzag(1) = 2
        want.extend_from_slice(&2.0f64.to_bits().to_be_bytes());
        assert_eq!(buf, want);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[1, 0, 0]).is_err());
        assert!(decode(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff]).is_err());
        assert!(decode(&[2, 1, 2, 3]).is_err());
        assert_eq!(decode(&[9, 1, 2]).unwrap(), Record::Unknown(9));
    }

    proptest! {
        #[test]
        fn records_round_trip(
            series in proptest::collection::vec((any::<u64>(), proptest::collection::btree_map("[a-z_]{1,6}", ".{0,6}", 0..5)), 0..10),
            samples in proptest::collection::vec((any::<u64>(), any::<i64>(), any::<u64>()), 0..50),
        ) {
            let mut buf = Vec::new();
            begin_series(&mut buf);
            let mut want = Vec::new();
            for (r, l) in &series {
                let labels = Labels::from_pairs(l.clone());
                push_series(&mut buf, *r, labels.iter().map(|l| (l.name.as_bytes(), l.value.as_bytes())));
                want.push(RefSeries { series: *r, labels });
            }
            prop_assert_eq!(decode(&buf).unwrap(), Record::Series(want));

            let samples: Vec<_> = samples.iter().map(|&(r, t, v)| RefSample { series: r, t, v: f64::from_bits(v) }).collect();
            let mut buf = Vec::new();
            encode_samples(&mut buf, &samples);
            let Record::Samples(got) = decode(&buf).unwrap() else { panic!("wrong type") };
            prop_assert_eq!(got.len(), samples.len());
            for (g, w) in got.iter().zip(&samples) {
                prop_assert!(g.series == w.series && g.t == w.t && g.v.to_bits() == w.v.to_bits());
            }
        }
    }
}
