//! A write request as the write path carries it: series whose label strings borrow from the
//! request body.
//!
//! Remote-write decoding is the hottest code in Norn. Building a `String` per label costs more
//! than everything else a push does, so a [`WriteBatch`] keeps the decompressed body and refers
//! to label names and values by offset. A series is hashed and looked up from these borrowed
//! bytes; only a series the head has never seen is copied into owned [`Labels`].

use std::ops::Range;

use bytes::Bytes;

use crate::{Label, Labels, Sample, hash_label_pairs};

/// Byte ranges of one label's name and value inside the batch's buffer.
#[derive(Debug, Clone, Copy)]
struct LabelRef {
    name: (u32, u32),
    value: (u32, u32),
}

#[derive(Debug, Clone)]
struct SeriesEntry {
    labels: Range<u32>,
    samples: Range<u32>,
    /// Start (created) timestamp of the series' samples in ms, 0 when unset (remote write
    /// 2.0's convention).
    start_ms: i64,
}

/// The type of a metric family, as remote write's `MetricMetadata.type` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Unknown,
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
}

impl MetricType {
    /// From the protobuf enum number.
    pub fn from_proto(n: i32) -> Self {
        match n {
            1 => MetricType::Counter,
            2 => MetricType::Gauge,
            3 => MetricType::Histogram,
            4 => MetricType::GaugeHistogram,
            5 => MetricType::Summary,
            6 => MetricType::Info,
            7 => MetricType::StateSet,
            _ => MetricType::Unknown,
        }
    }

    /// The lower-case name used by Prometheus' `/api/v1/metadata`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Unknown => "unknown",
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
        }
    }
}

/// Metadata about one metric family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricMetadata {
    pub metric_family_name: String,
    pub metric_type: MetricType,
    pub help: String,
    pub unit: String,
}

/// A batch of series with samples, decoded from one write request.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    buf: Bytes,
    labels: Vec<LabelRef>,
    series: Vec<SeriesEntry>,
    samples: Vec<Sample>,
    metadata: Vec<MetricMetadata>,
    /// Samples of series the decoder saw but that carry no float samples we store (native
    /// histograms); reported so callers can count them.
    pub skipped_histograms: usize,
    /// Exemplars seen in the request (not stored yet).
    pub skipped_exemplars: usize,
}

/// Borrowed view of one series in a [`WriteBatch`].
#[derive(Clone, Copy)]
pub struct SeriesView<'a> {
    batch: &'a WriteBatch,
    entry: &'a SeriesEntry,
}

impl WriteBatch {
    /// Starts a batch over `buf`; label ranges given to the builder index into it.
    pub fn builder(buf: Bytes) -> WriteBatchBuilder {
        WriteBatchBuilder {
            batch: WriteBatch {
                buf,
                ..Default::default()
            },
            label_start: 0,
            sample_start: 0,
            start_ms: 0,
        }
    }

    /// Builds a batch from owned series (tests, recording rules). Labels are sorted.
    pub fn from_series(series: &[(Labels, Vec<Sample>)]) -> Self {
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for (labels, _) in series {
            let mut s = Vec::with_capacity(labels.len());
            for l in labels {
                let n = buf.len()..buf.len() + l.name.len();
                buf.extend_from_slice(l.name.as_bytes());
                let v = buf.len()..buf.len() + l.value.len();
                buf.extend_from_slice(l.value.as_bytes());
                s.push((n, v));
            }
            spans.push(s);
        }
        let mut b = WriteBatch::builder(Bytes::from(buf));
        for ((_, samples), spans) in series.iter().zip(spans) {
            for (n, v) in spans {
                b.add_label(n, v).expect("labels come from valid strings");
            }
            for s in samples {
                b.add_sample(*s);
            }
            b.finish_series();
        }
        b.build()
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Number of float samples across all series.
    pub fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// The series at `idx`.
    pub fn series(&self, idx: usize) -> SeriesView<'_> {
        SeriesView {
            batch: self,
            entry: &self.series[idx],
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = SeriesView<'_>> {
        self.series
            .iter()
            .map(move |entry| SeriesView { batch: self, entry })
    }

    pub fn metadata(&self) -> &[MetricMetadata] {
        &self.metadata
    }

    /// Keeps only the metadata entries for which `keep` is true; returns how many were dropped.
    pub fn retain_metadata(&mut self, keep: impl FnMut(&MetricMetadata) -> bool) -> usize {
        let before = self.metadata.len();
        self.metadata.retain(keep);
        before - self.metadata.len()
    }

    /// Sorts every series' labels by name (remote write requires sorted labels, but senders
    /// get it wrong; Prometheus sorts rather than rejects).
    pub fn sort_labels(&mut self) {
        let buf = &self.buf;
        for e in &self.series {
            let s = &mut self.labels[e.labels.start as usize..e.labels.end as usize];
            if !s
                .windows(2)
                .all(|w| slice(buf, w[0].name) <= slice(buf, w[1].name))
            {
                s.sort_by(|a, b| slice(buf, a.name).cmp(slice(buf, b.name)));
            }
        }
    }

    /// Removes label `name` from every series that has it (e.g. the HA replica label).
    pub fn remove_label(&mut self, name: &str) {
        self.retain_labels(|n, _| n != name.as_bytes());
    }

    /// Keeps only the labels for which `keep(name, value)` is true (e.g. drops empty values,
    /// which mean "label absent").
    pub fn retain_labels(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let mut labels = Vec::with_capacity(self.labels.len());
        for e in &mut self.series {
            let start = labels.len() as u32;
            for l in &self.labels[e.labels.start as usize..e.labels.end as usize] {
                if keep(slice(&self.buf, l.name), slice(&self.buf, l.value)) {
                    labels.push(*l);
                }
            }
            e.labels = start..labels.len() as u32;
        }
        self.labels = labels;
    }

    /// A batch holding only the series whose indices are in `keep` (ascending), sharing the
    /// buffer. Metadata goes with it only if `with_metadata`.
    pub fn subset(&self, keep: &[usize], with_metadata: bool) -> WriteBatch {
        let mut out = WriteBatch {
            buf: self.buf.clone(),
            metadata: if with_metadata {
                self.metadata.clone()
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        for &i in keep {
            let e = &self.series[i];
            let ls = out.labels.len() as u32;
            out.labels
                .extend_from_slice(&self.labels[e.labels.start as usize..e.labels.end as usize]);
            let ss = out.samples.len() as u32;
            out.samples
                .extend_from_slice(&self.samples[e.samples.start as usize..e.samples.end as usize]);
            out.series.push(SeriesEntry {
                labels: ls..out.labels.len() as u32,
                samples: ss..out.samples.len() as u32,
                start_ms: e.start_ms,
            });
        }
        out
    }

    /// Keeps only the samples for which `keep(series_index, sample)` is true; series left with
    /// no samples stay (they may still carry metadata-only value for callers) but are empty.
    pub fn retain_samples(&mut self, mut keep: impl FnMut(usize, &Sample) -> bool) {
        let mut samples = Vec::with_capacity(self.samples.len());
        for (i, e) in self.series.iter_mut().enumerate() {
            let start = samples.len() as u32;
            for s in &self.samples[e.samples.start as usize..e.samples.end as usize] {
                if keep(i, s) {
                    samples.push(*s);
                }
            }
            e.samples = start..samples.len() as u32;
        }
        self.samples = samples;
    }
}

/// What an ingester did with a pushed batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushOutcome {
    /// Samples stored.
    pub appended: usize,
    /// Samples refused, by reason (Mimir's reason strings, e.g. `sample-out-of-order`).
    pub rejected: Vec<(&'static str, usize)>,
    /// A human-readable message naming the first refused series and why.
    pub first_error: Option<String>,
}

impl PushOutcome {
    pub fn rejected_samples(&self) -> usize {
        self.rejected.iter().map(|(_, n)| n).sum()
    }
}

/// Anything that stores write batches for a tenant: an ingester in-process, an ingester over
/// gRPC, or the distributor's replication over several of them.
#[async_trait::async_trait]
pub trait Pusher: Send + Sync {
    /// Stores `batch` durably before returning `Ok`. Per-sample refusals (out of order, series
    /// limits, …) are reported in the outcome, not as an error: the rest is stored.
    async fn push(
        &self,
        tenant: &crate::TenantId,
        batch: WriteBatch,
    ) -> Result<PushOutcome, PushError>;
}

/// A push failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Storage cannot take writes right now (starting, stopping, disk trouble): retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl PushError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            PushError::Unavailable(_) => crate::ErrorKind::Unavailable,
            PushError::Internal(_) => crate::ErrorKind::Internal,
        }
    }

    /// The push error a failure of `kind` is (a remote ingester's answer): `Unavailable`
    /// when another replica may take it ([`crate::ErrorKind::try_another_replica`]),
    /// `Internal` otherwise.
    pub fn from_kind(kind: crate::ErrorKind, message: String) -> Self {
        if kind.try_another_replica() {
            PushError::Unavailable(message)
        } else {
            PushError::Internal(message)
        }
    }
}

fn slice(buf: &Bytes, (off, len): (u32, u32)) -> &[u8] {
    &buf[off as usize..(off + len) as usize]
}

fn as_str(bytes: &[u8]) -> &str {
    // Every range was checked to be UTF-8 when it was added (WriteBatchBuilder::add_label),
    // and the buffer is immutable, so this never falls back.
    std::str::from_utf8(bytes).unwrap_or("")
}

impl<'a> SeriesView<'a> {
    /// Labels as `(name, value)` byte slices, in the batch's order (sorted after
    /// [`WriteBatch::sort_labels`]).
    pub fn label_bytes(&self) -> impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone + 'a {
        let buf = &self.batch.buf;
        self.batch.labels[self.entry.labels.start as usize..self.entry.labels.end as usize]
            .iter()
            .map(move |l| (slice(buf, l.name), slice(buf, l.value)))
    }

    /// Labels as `(name, value)` strings.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone + 'a {
        self.label_bytes().map(|(n, v)| (as_str(n), as_str(v)))
    }

    pub fn num_labels(&self) -> usize {
        (self.entry.labels.end - self.entry.labels.start) as usize
    }

    /// The value of label `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.labels().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The metric name, if any.
    pub fn metric_name(&self) -> Option<&'a str> {
        self.get(crate::METRIC_NAME)
    }

    pub fn samples(&self) -> &'a [Sample] {
        &self.batch.samples[self.entry.samples.start as usize..self.entry.samples.end as usize]
    }

    /// The series' start (created) timestamp in ms, if the sender gave one.
    pub fn start_timestamp(&self) -> Option<i64> {
        (self.entry.start_ms != 0).then_some(self.entry.start_ms)
    }

    /// Stable hash of the labels (equal to [`Labels::stable_hash`] once sorted).
    pub fn labels_hash(&self) -> u64 {
        hash_label_pairs(self.label_bytes())
    }

    /// Whether these labels equal `other` (both sorted).
    pub fn labels_eq(&self, other: &Labels) -> bool {
        self.num_labels() == other.len()
            && self
                .labels()
                .zip(other.iter())
                .all(|((n, v), l)| n == l.name && v == l.value)
    }

    /// Copies the labels into an owned, sorted label set.
    pub fn to_labels(&self) -> Labels {
        Labels::new(self.labels().map(|(n, v)| Label::new(n, v)).collect())
    }
}

impl std::fmt::Debug for SeriesView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_labels())
    }
}

/// Builds a [`WriteBatch`] series by series.
pub struct WriteBatchBuilder {
    batch: WriteBatch,
    label_start: u32,
    sample_start: u32,
    start_ms: i64,
}

/// A label name or value was not UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("label name or value is not valid UTF-8")]
pub struct InvalidUtf8;

impl WriteBatchBuilder {
    /// The buffer label ranges refer to.
    pub fn buf(&self) -> &Bytes {
        &self.batch.buf
    }

    /// Adds a label of the current series; ranges index the buffer and must be UTF-8.
    pub fn add_label(
        &mut self,
        name: Range<usize>,
        value: Range<usize>,
    ) -> Result<(), InvalidUtf8> {
        let buf = &self.batch.buf;
        if name.end > buf.len() || value.end > buf.len() {
            return Err(InvalidUtf8);
        }
        if std::str::from_utf8(&buf[name.clone()]).is_err()
            || std::str::from_utf8(&buf[value.clone()]).is_err()
        {
            return Err(InvalidUtf8);
        }
        self.batch.labels.push(LabelRef {
            name: (name.start as u32, (name.end - name.start) as u32),
            value: (value.start as u32, (value.end - value.start) as u32),
        });
        Ok(())
    }

    /// Adds a sample of the current series.
    pub fn add_sample(&mut self, s: Sample) {
        self.batch.samples.push(s);
    }

    /// Closes the current series.
    pub fn finish_series(&mut self) {
        let l = self.batch.labels.len() as u32;
        let s = self.batch.samples.len() as u32;
        self.batch.series.push(SeriesEntry {
            labels: self.label_start..l,
            samples: self.sample_start..s,
            start_ms: std::mem::take(&mut self.start_ms),
        });
        self.label_start = l;
        self.sample_start = s;
    }

    /// Sets the current series' start (created) timestamp in ms; 0 means unset. The head
    /// stores a 0 sample there when it is before the series' first sample and newer than
    /// what is stored (Prometheus' created-timestamp zero ingestion).
    pub fn set_start_timestamp(&mut self, ms: i64) {
        self.start_ms = ms;
    }

    /// Drops labels and samples added since the last `finish_series` (a series the decoder
    /// decided to skip).
    pub fn abandon_series(&mut self) {
        self.start_ms = 0;
        self.batch.labels.truncate(self.label_start as usize);
        self.batch.samples.truncate(self.sample_start as usize);
    }

    pub fn add_metadata(&mut self, m: MetricMetadata) {
        self.batch.metadata.push(m);
    }

    pub fn note_histograms(&mut self, n: usize) {
        self.batch.skipped_histograms += n;
    }

    pub fn note_exemplars(&mut self, n: usize) {
        self.batch.skipped_exemplars += n;
    }

    pub fn build(self) -> WriteBatch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> WriteBatch {
        WriteBatch::from_series(&[
            (
                Labels::from_pairs([("__name__", "up"), ("job", "a")]),
                vec![Sample::new(1, 1.0)],
            ),
            (
                Labels::from_pairs([("__name__", "up"), ("job", "b"), ("replica", "r1")]),
                vec![Sample::new(1, 2.0), Sample::new(2, 3.0)],
            ),
        ])
    }

    #[test]
    fn views_round_trip_labels_and_hash() {
        let b = batch();
        assert_eq!(b.len(), 2);
        assert_eq!(b.num_samples(), 3);
        let s = b.series(1);
        assert_eq!(s.get("job"), Some("b"));
        assert_eq!(s.labels_hash(), s.to_labels().stable_hash());
        assert!(s.labels_eq(&s.to_labels()));
        assert_eq!(s.samples().len(), 2);
    }

    #[test]
    fn subset_remove_and_retain() {
        let mut b = batch().subset(&[1], false);
        assert_eq!(b.len(), 1);
        b.remove_label("replica");
        assert_eq!(b.series(0).num_labels(), 2);
        b.retain_samples(|_, s| s.t > 1);
        assert_eq!(b.series(0).samples(), &[Sample::new(2, 3.0)]);
    }

    #[test]
    fn start_timestamps_follow_their_series() {
        let mut bld = WriteBatch::builder(Bytes::from_static(b"__name__ab"));
        bld.add_label(0..8, 8..9).unwrap();
        bld.set_start_timestamp(5);
        bld.add_sample(Sample::new(10, 1.0));
        bld.finish_series();
        bld.add_label(0..8, 9..10).unwrap();
        bld.add_sample(Sample::new(10, 1.0));
        bld.finish_series();
        let b = bld.build();
        assert_eq!(b.series(0).start_timestamp(), Some(5));
        assert_eq!(b.series(1).start_timestamp(), None);
        let sub = b.subset(&[0], false);
        assert_eq!(sub.series(0).start_timestamp(), Some(5));
    }

    #[test]
    fn sort_labels_sorts_by_name() {
        let buf = Bytes::from_static(b"zzaa__name__x");
        let mut bld = WriteBatch::builder(buf);
        bld.add_label(0..1, 1..2).unwrap();
        bld.add_label(2..3, 3..4).unwrap();
        bld.add_label(4..12, 12..13).unwrap();
        bld.finish_series();
        let mut b = bld.build();
        b.sort_labels();
        let names: Vec<_> = b.series(0).labels().map(|(n, _)| n).collect();
        assert_eq!(names, ["__name__", "a", "z"]);
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut bld = WriteBatch::builder(Bytes::from_static(&[0xff, 0xfe]));
        assert!(bld.add_label(0..1, 1..2).is_err());
        assert!(bld.add_label(0..5, 1..2).is_err());
    }
}
