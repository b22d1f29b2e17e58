//! The cheap checks every stored series and sample must pass, in one place.
//!
//! The distributor runs them with the tenant's limits before anything reaches an ingester;
//! the ingester's gRPC `Push` runs them again, because anyone who can reach the gRPC port can
//! push, and what the head stores must never break a block cut, a flush or a query (invalid
//! label names, unsorted or duplicate labels, a series without a name, a sample at
//! `i64::MIN` that overflows time arithmetic later). The checks are per label and per sample:
//! comparisons on borrowed bytes, no allocation. Only the *first* refusal of a request gets a
//! message ([`Refusal::message`]), truncated to [`MAX_MESSAGE_SERIES_BYTES`]: a request with
//! a million refused samples must not format a million series.
//!
//! [`check_batch`] applies them to a whole request: refused series and samples are dropped
//! from the batch and counted by reason. It is plain synchronous work, linear in the
//! request: callers run it off the async reactor when the batch is big.
//!
//! Reason strings are Mimir's (`norn_discarded_samples_total{reason}`), plus
//! `label_value_empty` and `labels_not_sorted`, which the distributor never sees (it drops
//! empty values and sorts first) but a raw gRPC push can send.

use std::fmt::Write as _;
use std::time::Duration;

use crate::labels::{is_valid_label_name, is_valid_metric_name};
use crate::{METRIC_NAME, SeriesView, WriteBatch};

/// The absolute bounds (epoch to year 9999) every window stays inside: Mimir has no floor
/// when `past_grace_period` is 0, but a floor is what keeps block-range arithmetic
/// (`t / range`, `t - range`) away from `i64::MIN`, the head's "empty" marker.
pub use crate::sample::{MAX_SAMPLE_TIME_MS, MIN_SAMPLE_TIME_MS};

/// How much of a series a refusal message shows; the rest is cut with `…`.
pub const MAX_MESSAGE_SERIES_BYTES: usize = 1024;

/// The limits the checks use: the validation part of a tenant's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationLimits {
    pub enforce_metric_name: bool,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_label_names_per_series: usize,
    /// How far ahead of now a sample may be.
    pub creation_grace_period: Duration,
    /// How far behind now a sample may be (zero: only [`MIN_SAMPLE_TIME_MS`] applies).
    pub past_grace_period: Duration,
}

impl Default for ValidationLimits {
    /// Mimir's defaults.
    fn default() -> Self {
        Self {
            enforce_metric_name: true,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_label_names_per_series: 30,
            creation_grace_period: Duration::from_secs(600),
            past_grace_period: Duration::ZERO,
        }
    }
}

/// What is wrong with a series or a sample. [`Refusal::reason`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingMetricName,
    InvalidMetricName,
    TooManyLabels {
        actual: usize,
        limit: usize,
    },
    /// The label at this index has an invalid name.
    InvalidLabelName(usize),
    /// The label at this index repeats the previous name.
    DuplicateLabelName(usize),
    /// The label at this index sorts before the previous one.
    LabelsNotSorted(usize),
    LabelNameTooLong {
        label: usize,
        limit: usize,
    },
    LabelValueTooLong {
        label: usize,
        len: usize,
        limit: usize,
    },
    LabelValueEmpty(usize),
    TooFarInFuture {
        t: i64,
        max: i64,
    },
    TooFarInPast {
        t: i64,
        min: i64,
    },
}

impl Refusal {
    /// Mimir's reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::MissingMetricName => "missing_metric_name",
            Refusal::InvalidMetricName => "invalid_metric_name",
            Refusal::TooManyLabels { .. } => "max_label_names_per_series",
            Refusal::InvalidLabelName(_) => "label_invalid",
            Refusal::DuplicateLabelName(_) => "duplicate_label_names",
            Refusal::LabelsNotSorted(_) => "labels_not_sorted",
            Refusal::LabelNameTooLong { .. } => "label_name_too_long",
            Refusal::LabelValueTooLong { .. } => "label_value_too_long",
            Refusal::LabelValueEmpty(_) => "label_value_empty",
            Refusal::TooFarInFuture { .. } => "sample_too_far_in_future",
            Refusal::TooFarInPast { .. } => "sample_too_far_in_past",
        }
    }

    /// The message for a client: what is wrong and the series (truncated). Build it only for
    /// the first refusal of a request.
    pub fn message(&self, s: &SeriesView<'_>) -> String {
        let label_name = |i: usize| {
            s.label_bytes()
                .nth(i)
                .map(|(n, _)| truncate(&String::from_utf8_lossy(n), 128))
                .unwrap_or_default()
        };
        let what = match *self {
            Refusal::MissingMetricName => "received a series without a metric name".to_string(),
            Refusal::InvalidMetricName => format!(
                "received a series with an invalid metric name: '{}'",
                truncate(s.metric_name().unwrap_or_default(), 128)
            ),
            Refusal::TooManyLabels { actual, limit } => format!(
                "received a series whose number of labels exceeds the limit (actual: {actual}, limit: {limit})"
            ),
            Refusal::InvalidLabelName(i) => format!(
                "received a series with an invalid label name: '{}'",
                label_name(i)
            ),
            Refusal::DuplicateLabelName(i) => format!(
                "received a series with duplicate label name, label: '{}'",
                label_name(i)
            ),
            Refusal::LabelsNotSorted(i) => format!(
                "received a series whose labels are not sorted by name, label: '{}'",
                label_name(i)
            ),
            Refusal::LabelNameTooLong { label, limit } => format!(
                "received a series whose label name length exceeds the limit ({limit}), label: '{}'",
                label_name(label)
            ),
            Refusal::LabelValueTooLong { label, len, limit } => format!(
                "received a series whose label value length of {len} exceeds the limit of {limit}, label: '{}'",
                label_name(label)
            ),
            Refusal::LabelValueEmpty(i) => format!(
                "received a series with an empty label value, label: '{}'",
                label_name(i)
            ),
            Refusal::TooFarInFuture { t, max } => format!(
                "received a sample whose timestamp is too far in the future, timestamp: {t} (latest accepted: {max})"
            ),
            Refusal::TooFarInPast { t, min } => format!(
                "received a sample whose timestamp is too far in the past, timestamp: {t} (oldest accepted: {min})"
            ),
        };
        format!("{what} series: '{}'", describe_series(s))
    }
}

/// `name{a="b", …}` of a series, at most [`MAX_MESSAGE_SERIES_BYTES`] long, in the order
/// the labels were sent (no sorting, no owned label set).
pub fn describe_series(s: &SeriesView<'_>) -> String {
    let mut out = String::new();
    let name = s.metric_name();
    if let Some(n) = name {
        out.push_str(&truncate(n, MAX_MESSAGE_SERIES_BYTES));
    }
    out.push('{');
    let mut first = true;
    for (n, v) in s.labels() {
        if n == METRIC_NAME && name == Some(v) {
            continue;
        }
        if out.len() >= MAX_MESSAGE_SERIES_BYTES {
            break;
        }
        if !first {
            out.push_str(", ");
        }
        first = false;
        let room = MAX_MESSAGE_SERIES_BYTES.saturating_sub(out.len()).max(16);
        let _ = write!(out, "{}={:?}", truncate(n, room), truncate(v, room));
    }
    if out.len() > MAX_MESSAGE_SERIES_BYTES {
        out = truncate(&out, MAX_MESSAGE_SERIES_BYTES);
    }
    out.push('}');
    out
}

/// At most `max` bytes of `s` (on a character boundary), with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks a series' labels: a valid metric name (when enforced), at most
/// `max_label_names_per_series` labels, names valid, sorted and unique, values non-empty and
/// within length. Labels must already be sorted (the distributor sorts; a raw push must send
/// them sorted, as the remote-write spec says).
pub fn validate_series(s: &SeriesView<'_>, limits: &ValidationLimits) -> Result<(), Refusal> {
    // A series with no labels at all cannot be selected or named, whatever the limits say.
    if s.num_labels() == 0 {
        return Err(Refusal::MissingMetricName);
    }
    if limits.enforce_metric_name {
        match s.metric_name() {
            None | Some("") => return Err(Refusal::MissingMetricName),
            Some(name) if !is_valid_metric_name(name.as_bytes()) => {
                return Err(Refusal::InvalidMetricName);
            }
            Some(_) => {}
        }
    }
    let n = s.num_labels();
    if n > limits.max_label_names_per_series {
        return Err(Refusal::TooManyLabels {
            actual: n,
            limit: limits.max_label_names_per_series,
        });
    }
    let mut prev: Option<&[u8]> = None;
    for (i, (name, value)) in s.label_bytes().enumerate() {
        if name != METRIC_NAME.as_bytes() && !is_valid_label_name(name) {
            return Err(Refusal::InvalidLabelName(i));
        }
        match prev {
            Some(p) if p == name => return Err(Refusal::DuplicateLabelName(i)),
            Some(p) if p > name => return Err(Refusal::LabelsNotSorted(i)),
            _ => {}
        }
        prev = Some(name);
        if name.len() > limits.max_label_name_length {
            return Err(Refusal::LabelNameTooLong {
                label: i,
                limit: limits.max_label_name_length,
            });
        }
        if value.is_empty() {
            return Err(Refusal::LabelValueEmpty(i));
        }
        if value.len() > limits.max_label_value_length {
            return Err(Refusal::LabelValueTooLong {
                label: i,
                len: value.len(),
                limit: limits.max_label_value_length,
            });
        }
    }
    Ok(())
}

/// The timestamps a sample may have at wall-clock time `now_ms`: `[min, max]`, computed
/// once per request so the per-sample check is two comparisons. All arithmetic saturates:
/// no `now` or grace period can overflow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub min: i64,
    pub max: i64,
}

impl TimeWindow {
    pub fn new(now_ms: i64, limits: &ValidationLimits) -> Self {
        let future = duration_ms(limits.creation_grace_period);
        let past = duration_ms(limits.past_grace_period);
        let min = if past == 0 {
            MIN_SAMPLE_TIME_MS
        } else {
            now_ms.saturating_sub(past).max(MIN_SAMPLE_TIME_MS)
        };
        Self {
            min,
            max: now_ms.saturating_add(future).min(MAX_SAMPLE_TIME_MS),
        }
    }

    pub fn contains(&self, t: i64) -> bool {
        t >= self.min && t <= self.max
    }

    /// `Ok` when `t` is inside the window, else why not.
    pub fn check(&self, t: i64) -> Result<(), Refusal> {
        if t > self.max {
            Err(Refusal::TooFarInFuture { t, max: self.max })
        } else if t < self.min {
            Err(Refusal::TooFarInPast { t, min: self.min })
        } else {
            Ok(())
        }
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What [`check_batch`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Checked {
    /// Indices of the series left with labels that passed and at least one sample.
    pub keep: Vec<usize>,
    /// Samples in the kept series.
    pub valid_samples: usize,
    /// Refused samples by reason (few distinct reasons, so a small vector).
    pub refused: Vec<(&'static str, usize)>,
    /// The message of the first refusal, naming its series.
    pub first_error: Option<String>,
}

impl Checked {
    fn refuse(&mut self, reason: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        match self.refused.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.refused.push((reason, n)),
        }
    }
}

/// Checks every series of `batch` (labels already sorted, empty values dropped) and every
/// sample's timestamp against `window`; drops refused samples from `batch`.
pub fn check_batch(
    batch: &mut WriteBatch,
    limits: &ValidationLimits,
    window: TimeWindow,
) -> Checked {
    let mut out = Checked::default();
    let mut bad = vec![false; batch.len()];
    let mut any_sample_refused = false;
    for (i, s) in batch.iter().enumerate() {
        if let Err(r) = validate_series(&s, limits) {
            out.refuse(r.reason(), s.samples().len());
            if out.first_error.is_none() {
                out.first_error = Some(r.message(&s));
            }
            bad[i] = true;
            continue;
        }
        // Two comparisons per sample; the message is built once.
        let samples = s.samples();
        let outside = samples.iter().filter(|x| !window.contains(x.t)).count();
        if outside > 0 {
            any_sample_refused = true;
            let (mut future, mut past) = (0, 0);
            for x in samples {
                match window.check(x.t) {
                    Ok(()) => {}
                    Err(r @ Refusal::TooFarInFuture { .. }) => {
                        future += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(r.message(&s));
                        }
                    }
                    Err(r) => {
                        past += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(r.message(&s));
                        }
                    }
                }
            }
            out.refuse("sample_too_far_in_future", future);
            out.refuse("sample_too_far_in_past", past);
        }
    }
    if any_sample_refused {
        batch.retain_samples(|i, sample| !bad[i] && window.contains(sample.t));
    }
    out.keep = (0..batch.len())
        .filter(|&i| !bad[i] && !batch.series(i).samples().is_empty())
        .collect();
    out.valid_samples = out
        .keep
        .iter()
        .map(|&i| batch.series(i).samples().len())
        .sum();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Labels, Sample};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    /// A one-series batch with the labels exactly as given (no sorting, duplicates kept).
    fn raw(pairs: &[(&str, &str)]) -> WriteBatch {
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for (n, v) in pairs {
            let a = buf.len();
            buf.extend_from_slice(n.as_bytes());
            let b = buf.len();
            buf.extend_from_slice(v.as_bytes());
            spans.push((a..b, b..buf.len()));
        }
        let mut bld = WriteBatch::builder(buf.into());
        for (n, v) in spans {
            bld.add_label(n, v).unwrap();
        }
        bld.add_sample(Sample::new(1, 1.0));
        bld.finish_series();
        bld.build()
    }

    fn check(pairs: &[(&str, &str)]) -> Result<(), &'static str> {
        let b = raw(pairs);
        validate_series(&b.series(0), &ValidationLimits::default()).map_err(|r| r.reason())
    }

    #[test]
    fn label_rules() {
        assert_eq!(check(&[("__name__", "up"), ("job", "a")]), Ok(()));
        assert_eq!(check(&[("job", "a")]), Err("missing_metric_name"));
        assert_eq!(check(&[("__name__", "")]), Err("missing_metric_name"));
        assert_eq!(check(&[("__name__", "a-b")]), Err("invalid_metric_name"));
        assert_eq!(
            check(&[("__name__", "up"), ("a-b", "x")]),
            Err("label_invalid")
        );
        assert_eq!(
            check(&[("__name__", "up"), ("", "x")]),
            Err("label_invalid")
        );
        assert_eq!(
            check(&[("__name__", "up"), ("a", "x"), ("a", "y")]),
            Err("duplicate_label_names")
        );
        assert_eq!(
            check(&[("__name__", "up"), ("b", "x"), ("a", "y")]),
            Err("labels_not_sorted")
        );
        assert_eq!(
            check(&[("__name__", "up"), ("a", "")]),
            Err("label_value_empty")
        );
        let long = "x".repeat(2049);
        assert_eq!(
            check(&[("__name__", "up"), ("a", &long)]),
            Err("label_value_too_long")
        );
        let long_name = "x".repeat(1025);
        assert_eq!(
            check(&[("__name__", "up"), (&long_name, "v")]),
            Err("label_name_too_long")
        );
        let many: Vec<(String, String)> = (0..31)
            .map(|i| (format!("l{i:02}"), "v".to_string()))
            .collect();
        let mut refs: Vec<(&str, &str)> = vec![("__name__", "up")];
        refs.extend(many.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        assert_eq!(check(&refs), Err("max_label_names_per_series"));
        let off = ValidationLimits {
            enforce_metric_name: false,
            ..Default::default()
        };
        assert!(validate_series(&raw(&[("job", "a")]).series(0), &off).is_ok());
        assert_eq!(
            validate_series(&raw(&[]).series(0), &off).map_err(|r| r.reason()),
            Err("missing_metric_name"),
            "an empty label set is never stored"
        );
    }

    #[test]
    fn messages_are_bounded_and_name_the_series() {
        let v = "v".repeat(2000);
        let names: Vec<String> = (0..29).map(|i| format!("l{i:02}")).collect();
        let mut pairs: Vec<(&str, &str)> = vec![("__name__", "up")];
        pairs.extend(names.iter().map(|n| (n.as_str(), v.as_str())));
        let b = raw(&pairs);
        let msg = Refusal::TooFarInFuture { t: 5, max: 1 }.message(&b.series(0));
        assert!(msg.contains("too far in the future"), "{msg}");
        assert!(msg.contains("up{l00="), "{msg}");
        assert!(
            msg.len() < MAX_MESSAGE_SERIES_BYTES + 300,
            "message is {} bytes",
            msg.len()
        );
        let b = raw(&[("__name__", "up"), ("a-b", "x")]);
        let msg = Refusal::InvalidLabelName(1).message(&b.series(0));
        assert!(msg.contains("'a-b'"), "{msg}");
        // A multi-byte character at the cut is not split.
        let wide = "é".repeat(3000);
        let b = raw(&[("__name__", "up"), ("a", &wide)]);
        let d = describe_series(&b.series(0));
        assert!(
            d.ends_with("…}") && d.len() <= MAX_MESSAGE_SERIES_BYTES + 8,
            "{d}"
        );
    }

    #[test]
    fn time_window_is_checked_without_overflow() {
        let l = ValidationLimits::default();
        let now = 1_700_000_000_000;
        let w = TimeWindow::new(now, &l);
        assert!(w.contains(now + 600_000));
        assert_eq!(
            w.check(now + 600_001).unwrap_err().reason(),
            "sample_too_far_in_future"
        );
        assert!(
            w.contains(0),
            "no past limit by default, but the epoch floor"
        );
        assert_eq!(w.check(-1).unwrap_err().reason(), "sample_too_far_in_past");
        assert!(!w.contains(i64::MIN) && !w.contains(i64::MAX));
        let l = ValidationLimits {
            past_grace_period: Duration::from_secs(60),
            creation_grace_period: Duration::MAX,
            ..Default::default()
        };
        let w = TimeWindow::new(now, &l);
        assert!(!w.contains(now - 60_001) && w.contains(now - 60_000));
        assert_eq!(
            w.max, MAX_SAMPLE_TIME_MS,
            "a huge grace period saturates, and stops at the absolute bound"
        );
        for now in [i64::MIN, -1, 0, i64::MAX] {
            let w = TimeWindow::new(now, &l);
            assert!(w.min >= MIN_SAMPLE_TIME_MS);
            let _ = w.check(i64::MIN);
            let _ = w.check(i64::MAX);
        }
    }

    #[test]
    fn refusals_are_counted_and_only_the_first_is_described() {
        let now = 1_700_000_000_000;
        let l = ValidationLimits::default();
        let window = TimeWindow::new(now, &l);
        let mut b = WriteBatch::from_series(&[
            (
                labels(&[("__name__", "up"), ("job", "a")]),
                vec![
                    Sample::new(now, 1.0),
                    Sample::new(now + 3_600_000, 2.0),
                    Sample::new(i64::MAX, 3.0),
                    Sample::new(i64::MIN, 4.0),
                ],
            ),
            (labels(&[("job", "nameless")]), vec![Sample::new(now, 1.0)]),
            (
                labels(&[("__name__", "future_only")]),
                vec![Sample::new(now + 3_600_000, 1.0)],
            ),
        ]);
        let c = check_batch(&mut b, &l, window);
        assert_eq!(c.keep, [0]);
        assert_eq!(c.valid_samples, 1);
        assert_eq!(b.series(0).samples(), [Sample::new(now, 1.0)]);
        let mut refused = c.refused.clone();
        refused.sort();
        assert_eq!(
            refused,
            [
                ("missing_metric_name", 1),
                ("sample_too_far_in_future", 3),
                ("sample_too_far_in_past", 1)
            ]
        );
        let msg = c.first_error.unwrap();
        assert!(msg.contains("too far in the future"), "{msg}");
        assert!(msg.contains(r#"up{job="a"}"#), "{msg}");
    }

    #[test]
    fn a_clean_batch_is_left_alone() {
        let now = 1_700_000_000_000;
        let l = ValidationLimits::default();
        let mut b = WriteBatch::from_series(&[(
            labels(&[("__name__", "up")]),
            vec![Sample::new(now - 1, 1.0), Sample::new(now, 2.0)],
        )]);
        let c = check_batch(&mut b, &l, TimeWindow::new(now, &l));
        assert_eq!(c.keep, [0]);
        assert_eq!(c.valid_samples, 2);
        assert!(c.refused.is_empty() && c.first_error.is_none());
    }
}
