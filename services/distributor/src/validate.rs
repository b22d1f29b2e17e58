//! Series and sample validation with Mimir's rules and reason names.
//!
//! A series-level problem (bad labels) refuses all of the series' samples; a sample-level
//! problem (timestamp too far in the future or past) refuses just that sample. Every refusal
//! carries Mimir's reason string (the `reason` label of `norn_discarded_samples_total`) and a
//! message naming the series.

use norn_limits::Limits;
use norn_model::labels::{is_valid_label_name, is_valid_metric_name};
use norn_model::{METRIC_NAME, Sample, SeriesView};

/// Why a series or sample was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

/// Checks a series' labels (already sorted by name, empty values already dropped).
pub fn validate_series(s: &SeriesView<'_>, limits: &Limits) -> Result<(), Refusal> {
    let series = || format!("{:?}", s).chars().take(1024).collect::<String>();
    if limits.enforce_metric_name {
        match s.metric_name() {
            None | Some("") => {
                return Err(refuse(
                    "missing_metric_name",
                    format!(
                        "received a series without a metric name, series: '{}'",
                        series()
                    ),
                ));
            }
            Some(name) if !is_valid_metric_name(name.as_bytes()) => {
                return Err(refuse(
                    "invalid_metric_name",
                    format!(
                        "received a series with an invalid metric name: '{name}' series: '{}'",
                        series()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if s.num_labels() > limits.max_label_names_per_series {
        return Err(refuse(
            "max_label_names_per_series",
            format!(
                "received a series whose number of labels exceeds the limit (actual: {}, limit: {}) series: '{}'",
                s.num_labels(),
                limits.max_label_names_per_series,
                series()
            ),
        ));
    }
    // Bytes, not `&str`: the decoder checked UTF-8 already, and this loop runs for every
    // label of every series.
    let mut prev: Option<&[u8]> = None;
    for (name_bytes, value) in s.label_bytes() {
        let name = || String::from_utf8_lossy(name_bytes);
        if name_bytes != METRIC_NAME.as_bytes() && !is_valid_label_name(name_bytes) {
            return Err(refuse(
                "label_invalid",
                format!(
                    "received a series with an invalid label name: '{}' series: '{}'",
                    name(),
                    series()
                ),
            ));
        }
        if prev == Some(name_bytes) {
            return Err(refuse(
                "duplicate_label_names",
                format!(
                    "received a series with duplicate label name, label: '{}' series: '{}'",
                    name(),
                    series()
                ),
            ));
        }
        prev = Some(name_bytes);
        if name_bytes.len() > limits.max_label_name_length {
            return Err(refuse(
                "label_name_too_long",
                format!(
                    "received a series whose label name length exceeds the limit ({}), label: '{}' series: '{}'",
                    limits.max_label_name_length,
                    name(),
                    series()
                ),
            ));
        }
        if value.len() > limits.max_label_value_length {
            return Err(refuse(
                "label_value_too_long",
                format!(
                    "received a series whose label value length of {} exceeds the limit of {}, label: '{}' series: '{}'",
                    value.len(),
                    limits.max_label_value_length,
                    name(),
                    series()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a timestamp is within the tenant's grace periods (the cheap form of
/// [`validate_sample`]).
pub fn sample_time_ok(t: i64, limits: &Limits, now_ms: i64) -> bool {
    let future = limits.creation_grace_period.as_millis() as i64;
    let past = limits.past_grace_period.as_millis() as i64;
    t <= now_ms.saturating_add(future) && (past == 0 || t >= now_ms.saturating_sub(past))
}

/// Checks a sample's timestamp against the tenant's grace periods.
pub fn validate_sample(
    s: &SeriesView<'_>,
    sample: &Sample,
    limits: &Limits,
    now_ms: i64,
) -> Result<(), Refusal> {
    let future = limits.creation_grace_period.as_millis() as i64;
    if sample.t > now_ms.saturating_add(future) {
        return Err(refuse(
            "sample_too_far_in_future",
            format!(
                "received a sample whose timestamp is too far in the future, timestamp: {} series: '{:?}'",
                sample.t, s
            ),
        ));
    }
    let past = limits.past_grace_period.as_millis() as i64;
    if past > 0 && sample.t < now_ms.saturating_sub(past) {
        return Err(refuse(
            "sample_too_far_in_past",
            format!(
                "received a sample whose timestamp is too far in the past, timestamp: {} series: '{:?}'",
                sample.t, s
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::{Labels, WriteBatch};

    fn check(pairs: &[(&str, &str)]) -> Result<(), &'static str> {
        // Build without Labels::new so duplicates survive, as they would from the wire.
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
        bld.finish_series();
        let mut batch = bld.build();
        batch.sort_labels();
        validate_series(&batch.series(0), &Limits::default()).map_err(|r| r.reason)
    }

    #[test]
    fn label_rules() {
        assert_eq!(check(&[("__name__", "up"), ("job", "a")]), Ok(()));
        assert_eq!(check(&[("job", "a")]), Err("missing_metric_name"));
        assert_eq!(check(&[("__name__", "a-b")]), Err("invalid_metric_name"));
        assert_eq!(
            check(&[("__name__", "up"), ("a-b", "x")]),
            Err("label_invalid")
        );
        assert_eq!(
            check(&[("__name__", "up"), ("a", "x"), ("a", "y")]),
            Err("duplicate_label_names")
        );
        let long = "x".repeat(2049);
        assert_eq!(
            check(&[("__name__", "up"), ("a", &long)]),
            Err("label_value_too_long")
        );
        let many: Vec<(String, String)> = (0..31)
            .map(|i| (format!("l{i:02}"), "v".to_string()))
            .collect();
        let mut refs: Vec<(&str, &str)> =
            many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        refs.push(("__name__", "up"));
        assert_eq!(check(&refs), Err("max_label_names_per_series"));
    }

    #[test]
    fn future_and_past_samples() {
        let b = WriteBatch::from_series(&[(Labels::from_pairs([("__name__", "up")]), vec![])]);
        let s = b.series(0);
        let mut l = Limits::default();
        let now = 1_000_000_000;
        assert!(validate_sample(&s, &Sample::new(now + 600_000, 1.0), &l, now).is_ok());
        assert_eq!(
            validate_sample(&s, &Sample::new(now + 600_001, 1.0), &l, now)
                .unwrap_err()
                .reason,
            "sample_too_far_in_future"
        );
        assert!(validate_sample(&s, &Sample::new(0, 1.0), &l, now).is_ok());
        l.past_grace_period = std::time::Duration::from_secs(60);
        assert_eq!(
            validate_sample(&s, &Sample::new(0, 1.0), &l, now)
                .unwrap_err()
                .reason,
            "sample_too_far_in_past"
        );
    }
}
