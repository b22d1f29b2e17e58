//! Decoding of remote-write 2.0 requests (`io.prometheus.write.v2.Request`) into the same
//! [`WriteBatch`] the 1.0 decoder produces, so validation, limits, HA dedup and replication
//! treat both versions alike.
//!
//! A 2.0 request interns every string in `Request.symbols` (field 4) and refers to it by
//! index. The decoder records each symbol's byte range in the decompressed body (checking it is
//! UTF-8) and turns each series' `labels_refs` pairs into label ranges over the same buffer:
//! no label string is copied, exactly as in [`crate::remote_write`]. Symbols may come after the
//! series on the wire (protobuf allows any field order), so a first pass over the top level
//! collects symbols and series positions, and a second pass decodes the series.
//!
//! What a request may get wrong, and what it costs the sender (all 400, nothing stored,
//! because a request with a broken symbol table cannot be trusted to mean anything):
//! a reference past the end of the table, an odd number of label references, a label name
//! that is reference 0 (`symbols[0]` is the empty string), a non-empty `symbols[0]`, a symbol
//! that is not UTF-8, malformed wire format, or bytes without a single 2.0 field (a 1.0 body
//! sent with the 2.0 Content-Type).
//!
//! What is kept: float samples, and per-series metadata (type, help, unit), which becomes one
//! [`MetricMetadata`] per distinct (metric name, type, help, unit) in the request, named by the
//! series' metric family: its `__name__`, without the `_bucket`/`_sum`/`_count` of a classic
//! histogram's or summary's series, so it reads as 1.0 metadata of the same family does.
//! Native histograms and exemplars are counted into [`WriteBatch::skipped_histograms`] / [`WriteBatch::skipped_exemplars`] and
//! not stored; the distributor refuses them as a partial write. The series' start timestamp
//! (its first sample's `start_timestamp`, else the series-level `created_timestamp`, field 6,
//! that v3.0–v3.8 senders use) goes with the series into the batch; the ingester's head turns
//! it into Prometheus' created-timestamp zero sample. Later samples' start timestamps (a
//! counter reset inside one request) are not used.

use std::collections::HashSet;
use std::ops::Range;

use bytes::Bytes;
use norn_model::{METRIC_NAME, MetricMetadata, MetricType, Sample, WriteBatch, WriteBatchBuilder};

use crate::remote_write::{DecodeError, Reader, WIRE_I64, WIRE_LEN, WIRE_VARINT};

/// The protobuf message name of a remote-write 2.0 request, as `Content-Type: …;proto=` names it.
pub const V2_MESSAGE: &str = "io.prometheus.write.v2.Request";

/// Decodes an uncompressed `io.prometheus.write.v2.Request`.
pub fn decode_write_request_v2(body: Bytes) -> Result<WriteBatch, DecodeError> {
    let mut r = Reader {
        buf: &body,
        pos: 0,
        end: body.len(),
    };
    // Pass 1: the symbol table and where each series is.
    let mut symbols: Vec<Range<usize>> = Vec::new();
    let mut series: Vec<Range<usize>> = Vec::new();
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (4, WIRE_LEN) => {
                let end = r.len_end()?;
                if std::str::from_utf8(&r.buf[r.pos..end]).is_err() {
                    return Err(DecodeError::InvalidV2(format!(
                        "symbol {} is not valid UTF-8",
                        symbols.len()
                    )));
                }
                symbols.push(r.pos..end);
                r.pos = end;
            }
            (5, WIRE_LEN) => {
                let end = r.len_end()?;
                series.push(r.pos..end);
                r.pos = end;
            }
            _ => r.skip(wt)?,
        }
    }
    if symbols.is_empty() && series.is_empty() && !body.is_empty() {
        return Err(DecodeError::NoKnownFields {
            message: V2_MESSAGE,
            size: body.len(),
        });
    }
    if let Some(first) = symbols.first()
        && !first.is_empty()
    {
        // Quote at most 64 bytes: the sender chose the symbol's length, not the reply's.
        let shown = first.start..first.end.min(first.start + 64);
        return Err(DecodeError::InvalidV2(format!(
            "symbols[0] must be the empty string, got a {}-byte symbol starting {:?}",
            first.len(),
            String::from_utf8_lossy(&body[shown])
        )));
    }

    // Pass 2: the series.
    let mut d = SeriesDecoder {
        symbols: &symbols,
        builder: WriteBatch::builder(body.clone()),
        seen_metadata: HashSet::new(),
        last_metadata: None,
        pending_name: None,
        metric_name_ref: None,
    };
    for (i, range) in series.into_iter().enumerate() {
        let mut r = Reader {
            buf: &body,
            pos: range.start,
            end: range.end,
        };
        if let Err(e) = d.series(&mut r, i) {
            d.builder.abandon_series();
            return Err(e);
        }
    }
    Ok(d.builder.build())
}

/// Metadata of one series as refs, so duplicates across series cost no string.
#[derive(Default, Clone, Copy, PartialEq, Eq, Hash)]
struct MetadataRefs {
    metric_type: u64,
    help: u32,
    unit: u32,
}

struct SeriesDecoder<'s> {
    symbols: &'s [Range<usize>],
    builder: WriteBatchBuilder,
    /// (metric name ref, metadata) already turned into a `MetricMetadata` in this request.
    seen_metadata: HashSet<(u32, MetadataRefs)>,
    /// The last entry of `seen_metadata`: senders send a family's series together, so most
    /// series repeat the previous one's metadata and skip the hash.
    last_metadata: Option<(u32, MetadataRefs)>,
    /// A name reference waiting for its value (label refs may arrive in several chunks).
    pending_name: Option<u32>,
    /// The value ref of this series' `__name__`, once seen.
    metric_name_ref: Option<u32>,
}

impl SeriesDecoder<'_> {
    fn symbol(&self, series: usize, what: &str, r: u64) -> Result<Range<usize>, DecodeError> {
        usize::try_from(r)
            .ok()
            .and_then(|i| self.symbols.get(i))
            .cloned()
            .ok_or_else(|| {
                DecodeError::InvalidV2(format!(
                    "series {series}: {what} reference {r} is out of range (the request has {} symbols)",
                    self.symbols.len()
                ))
            })
    }

    fn label_ref(&mut self, buf: &[u8], series: usize, r: u64) -> Result<(), DecodeError> {
        match self.pending_name.take() {
            None => {
                if r == 0 {
                    return Err(DecodeError::InvalidV2(format!(
                        "series {series}: label name is reference 0, the empty string"
                    )));
                }
                self.symbol(series, "label name", r)?;
                // In range: symbol() checked it fits the table, which fits u32 on the wire.
                self.pending_name = Some(r as u32);
            }
            Some(name) => {
                let value = self.symbol(series, "label value", r)?;
                let name_range = self.symbols[name as usize].clone();
                if &buf[name_range.clone()] == METRIC_NAME.as_bytes() {
                    self.metric_name_ref = Some(r as u32);
                }
                self.builder
                    .add_label(name_range, value)
                    .map_err(|_| DecodeError::InvalidV2("label is not valid UTF-8".into()))?;
            }
        }
        Ok(())
    }

    fn series(&mut self, r: &mut Reader<'_>, series: usize) -> Result<(), DecodeError> {
        self.pending_name = None;
        self.metric_name_ref = None;
        let (mut histograms, mut exemplars) = (0, 0);
        let mut metadata: Option<MetadataRefs> = None;
        // Start timestamp: the first sample's (v3.9+ senders), else the series-level legacy
        // field (≤ v3.8 senders).
        let (mut first_sample_start, mut legacy_start) = (None, 0i64);
        while !r.done() {
            let (field, wt) = r.key()?;
            match (field, wt) {
                // labels_refs, packed (the proto3 default) …
                (1, WIRE_LEN) => {
                    let end = r.len_end()?;
                    let buf = r.buf;
                    r.nested(end, |r| {
                        while !r.done() {
                            let v = r.varint()?;
                            self.label_ref(buf, series, v)?;
                        }
                        Ok(())
                    })?;
                }
                // … or one unpacked element, which a decoder must also accept.
                (1, WIRE_VARINT) => {
                    let v = r.varint()?;
                    self.label_ref(r.buf, series, v)?;
                }
                (2, WIRE_LEN) => {
                    let end = r.len_end()?;
                    let (s, start) = r.nested(end, |r| {
                        let mut s = Sample { t: 0, v: 0.0 };
                        let mut start = 0;
                        while !r.done() {
                            let (f, wt) = r.key()?;
                            match (f, wt) {
                                (1, WIRE_I64) => s.v = f64::from_bits(r.fixed64()?),
                                (2, WIRE_VARINT) => s.t = r.varint()? as i64,
                                (3, WIRE_VARINT) => start = r.varint()? as i64,
                                _ => r.skip(wt)?,
                            }
                        }
                        Ok((s, start))
                    })?;
                    first_sample_start.get_or_insert(start);
                    self.builder.add_sample(s);
                }
                (3, WIRE_LEN) => {
                    histograms += 1;
                    r.skip(wt)?;
                }
                (4, WIRE_LEN) => {
                    // Not stored, but its references must be valid like any other.
                    exemplars += 1;
                    let end = r.len_end()?;
                    r.nested(end, |r| {
                        let mut n = 0usize;
                        while !r.done() {
                            let (f, wt) = r.key()?;
                            match (f, wt) {
                                (1, WIRE_LEN) => {
                                    let end = r.len_end()?;
                                    r.nested(end, |r| {
                                        while !r.done() {
                                            self.symbol(series, "exemplar label", r.varint()?)?;
                                            n += 1;
                                        }
                                        Ok(())
                                    })?;
                                }
                                (1, WIRE_VARINT) => {
                                    self.symbol(series, "exemplar label", r.varint()?)?;
                                    n += 1;
                                }
                                _ => r.skip(wt)?,
                            }
                        }
                        if n % 2 == 1 {
                            return Err(DecodeError::InvalidV2(format!(
                                "series {series}: an exemplar's labels_refs has an odd number of references"
                            )));
                        }
                        Ok(())
                    })?;
                }
                (5, WIRE_LEN) => {
                    let end = r.len_end()?;
                    let m = r.nested(end, |r| {
                        let mut m = MetadataRefs::default();
                        while !r.done() {
                            let (f, wt) = r.key()?;
                            match (f, wt) {
                                (1, WIRE_VARINT) => m.metric_type = r.varint()?,
                                (3, WIRE_VARINT) => m.help = ref32(r.varint()?),
                                (4, WIRE_VARINT) => m.unit = ref32(r.varint()?),
                                _ => r.skip(wt)?,
                            }
                        }
                        Ok(m)
                    })?;
                    // A later metadata field in the same series replaces an earlier one, as
                    // protobuf merges singular message fields (last one wins per field).
                    metadata = Some(m);
                }
                (6, WIRE_VARINT) => legacy_start = r.varint()? as i64,
                _ => r.skip(wt)?,
            }
        }
        if self.pending_name.is_some() {
            return Err(DecodeError::InvalidV2(format!(
                "series {series}: labels_refs has an odd number of references"
            )));
        }
        if let Some(m) = metadata {
            self.metadata(series, m)?;
        }
        let start = first_sample_start
            .filter(|&t| t != 0)
            .unwrap_or(legacy_start);
        self.builder.set_start_timestamp(start);
        self.builder.note_histograms(histograms);
        self.builder.note_exemplars(exemplars);
        self.builder.finish_series();
        Ok(())
    }

    fn metadata(&mut self, series: usize, m: MetadataRefs) -> Result<(), DecodeError> {
        let help = self.symbol(series, "metadata help", u64::from(m.help))?;
        let unit = self.symbol(series, "metadata unit", u64::from(m.unit))?;
        // Nothing to keep: no type, no help, no unit (what a sender without metadata sends).
        if m.metric_type == 0 && help.is_empty() && unit.is_empty() {
            return Ok(());
        }
        // Metadata is per metric family; a series without a name has none to attach it to.
        let Some(name) = self.metric_name_ref else {
            return Ok(());
        };
        if self.last_metadata == Some((name, m)) {
            return Ok(());
        }
        self.last_metadata = Some((name, m));
        if !self.seen_metadata.insert((name, m)) {
            return Ok(());
        }
        let buf = self.builder.buf();
        let text = |r: Range<usize>| String::from_utf8_lossy(&buf[r]).into_owned();
        let metric_type = MetricType::from_proto(i32::try_from(m.metric_type).unwrap_or(0));
        let md = MetricMetadata {
            metric_family_name: family_name(
                &text(self.symbols[name as usize].clone()),
                metric_type,
            )
            .to_string(),
            metric_type,
            help: text(help),
            unit: text(unit),
        };
        self.builder.add_metadata(md);
        Ok(())
    }
}

/// The metric family a series of `metric_type` belongs to. 2.0 attaches metadata to every
/// series, so a classic histogram's metadata arrives on `foo_bucket`, `foo_sum` and
/// `foo_count`; 1.0 (and `/api/v1/metadata` users, such as Grafana) name the family `foo`.
fn family_name(series_name: &str, metric_type: MetricType) -> &str {
    let suffixes: &[&str] = match metric_type {
        MetricType::Histogram => &["_bucket", "_sum", "_count"],
        MetricType::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
        MetricType::Summary => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .find_map(|s| series_name.strip_suffix(s).filter(|b| !b.is_empty()))
        .unwrap_or(series_name)
}

/// A reference read as a varint; anything past u32 cannot index a table and is kept out of
/// range (u32::MAX is, since a table that long would exceed every body limit).
fn ref32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "remote_write_v2/tests.rs"]
mod tests;
