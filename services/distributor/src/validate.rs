//! Validation of a whole push: the shared checks of [`norn_model::validation`] applied to
//! every series and sample, with the tenant's limits.
//!
//! A series-level problem (bad labels) refuses all of the series' samples; a sample-level
//! problem (timestamp outside the tenant's window) refuses just that sample. Refusals are
//! *counted* by reason; only the first one gets a message (a request can carry millions of
//! refused samples, and formatting each series would let one small request burn seconds of
//! CPU). [`check_batch`] is plain synchronous work: the caller runs it off the async reactor
//! when the batch is big.

use norn_model::WriteBatch;
use norn_model::validation::{Refusal, TimeWindow, ValidationLimits, validate_series};

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
    use norn_model::{Labels, Sample};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
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
