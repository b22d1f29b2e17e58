//! Created-timestamp zero ingestion in [`Head::append`]: the 0 at a series' start time is
//! stored only when it is before the series' first sample in the batch and newer than what is
//! stored, is never a refusal, is never counted as appended, and survives a WAL replay.

use bytes::Bytes;
use norn_model::{Sample, WriteBatch};

use super::*;

const NO_LIMITS: AppendLimits = AppendLimits {
    max_series: 0,
    max_series_per_metric: 0,
};

/// One series `c_total{job="a"}` with `samples` and start timestamp `start` (0 = none).
fn batch(start: i64, samples: &[(i64, f64)]) -> WriteBatch {
    let mut b = WriteBatch::builder(Bytes::from_static(b"__name__c_totaljoba"));
    b.add_label(0..8, 8..15).unwrap();
    b.add_label(15..18, 18..19).unwrap();
    b.set_start_timestamp(start);
    for &(t, v) in samples {
        b.add_sample(Sample::new(t, v));
    }
    b.finish_series();
    b.build()
}

fn stored(head: &Head) -> Vec<(i64, f64)> {
    let got = head.select(i64::MIN, i64::MAX, &[]);
    assert!(got.len() <= 1);
    got.first()
        .map(|s| s.samples.iter().map(|x| (x.t, x.v)).collect())
        .unwrap_or_default()
}

#[test]
fn zero_sample_at_the_start_time_when_newer_than_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
        // New series: the zero goes in before the first sample, uncounted.
        let out = head
            .append(&batch(1_000, &[(5_000, 3.0), (6_000, 4.0)]), &NO_LIMITS)
            .unwrap();
        assert_eq!(out.appended, 2);
        assert!(out.rejected.is_empty());
        assert_eq!(stored(&head), [(1_000, 0.0), (5_000, 3.0), (6_000, 4.0)]);

        // The same start time again (every later request of a counter): older than what is
        // stored, so skipped — silently, not an out-of-order refusal.
        let out = head
            .append(&batch(1_000, &[(7_000, 5.0)]), &NO_LIMITS)
            .unwrap();
        assert_eq!(out.appended, 1);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);

        // A counter reset: a new start time after the stored samples gets its zero.
        let out = head
            .append(&batch(7_500, &[(8_000, 1.0)]), &NO_LIMITS)
            .unwrap();
        assert_eq!(out.appended, 1);
        assert!(out.rejected.is_empty());

        // A start time not before the first sample is ignored (Prometheus refuses it too).
        let out = head
            .append(&batch(9_000, &[(9_000, 2.0)]), &NO_LIMITS)
            .unwrap();
        assert_eq!(out.appended, 1);
        // No start time: nothing extra.
        head.append(&batch(0, &[(10_000, 3.0)]), &NO_LIMITS)
            .unwrap();
    }
    let want = [
        (1_000, 0.0),
        (5_000, 3.0),
        (6_000, 4.0),
        (7_000, 5.0),
        (7_500, 0.0),
        (8_000, 1.0),
        (9_000, 2.0),
        (10_000, 3.0),
    ];
    // The zeros are in the WAL like any sample.
    let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
    assert_eq!(stored(&head), want);
}

#[test]
fn a_start_time_outside_the_absolute_bounds_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (head, _) = Head::open(HeadOptions::new(dir.path())).unwrap();
    for start in [i64::MIN, i64::MIN + 1, -1] {
        let out = head
            .append(&batch(start, &[(5_000, 3.0)]), &NO_LIMITS)
            .unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    }
    assert_eq!(stored(&head), [(5_000, 3.0)]);
    assert_eq!(head.first_flush_range(), Some((5_000, 5_001)));
}
