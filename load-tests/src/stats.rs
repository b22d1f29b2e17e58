//! Latency percentiles and error tallies shared by the write and query tools.
//!
//! Percentiles use the *nearest-rank* definition on the exact sorted sample set: the p-th
//! percentile is the smallest recorded value such that at least p % of the values are at or below
//! it. Load tests here record at most a few million latencies, so keeping them all is cheaper and
//! easier to trust than a sketch.

use std::collections::BTreeMap;
use std::time::Duration;

/// The nearest-rank percentile `p` (0..=100) of `sorted`, or `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // rank = ceil(p/100 · n), at least 1; index = rank - 1.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Recorded latencies of one kind of operation.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    seconds: Vec<f64>,
    sorted: bool,
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        self.seconds.push(d.as_secs_f64());
        self.sorted = false;
    }

    /// Number of recorded latencies.
    pub fn len(&self) -> usize {
        self.seconds.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        self.seconds.extend_from_slice(&other.seconds);
        self.sorted = false;
    }

    /// Percentile `p` in seconds (sorts once, lazily).
    pub fn percentile(&mut self, p: f64) -> Option<f64> {
        if !self.sorted {
            self.seconds.sort_by(f64::total_cmp);
            self.sorted = true;
        }
        percentile(&self.seconds, p)
    }

    /// Arithmetic mean in seconds.
    pub fn mean(&self) -> Option<f64> {
        (!self.seconds.is_empty())
            .then(|| self.seconds.iter().sum::<f64>() / self.seconds.len() as f64)
    }
}

/// Outcome classes counted by status: an HTTP status code, or a named transport failure.
pub type ErrorCounts = BTreeMap<String, u64>;

/// Formats error counts as `400=3 timeout=1`, or `none`.
pub fn format_errors(errors: &ErrorCounts) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Formats seconds as a short human latency (`850µs`, `12.3ms`, `1.52s`).
pub fn format_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 0.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        // 1..=100: p50 is the 50th value, p99 the 99th, p100 the max.
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 90.0), Some(90.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        // Textbook example: {15, 20, 35, 40, 50}: p30 = 20, p40 = 20, p50 = 35, p100 = 50.
        let w = [15.0, 20.0, 35.0, 40.0, 50.0];
        assert_eq!(percentile(&w, 30.0), Some(20.0));
        assert_eq!(percentile(&w, 40.0), Some(20.0));
        assert_eq!(percentile(&w, 50.0), Some(35.0));
        assert_eq!(percentile(&w, 100.0), Some(50.0));
        // Ten values: p99 must be the maximum, p90 the 9th.
        let t: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&t, 99.0), Some(10.0));
        assert_eq!(percentile(&t, 90.0), Some(9.0));
    }

    #[test]
    fn latencies_sort_lazily_and_merge() {
        let mut a = Latencies::default();
        for ms in [30, 10, 20] {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Latencies::default();
        b.record(Duration::from_millis(40));
        a.merge(&b);
        assert_eq!(a.len(), 4);
        assert_eq!(a.percentile(50.0), Some(0.02));
        assert_eq!(a.percentile(100.0), Some(0.04));
        assert!((a.mean().unwrap() - 0.025).abs() < 1e-12);
    }

    #[test]
    fn formatting() {
        let mut e = ErrorCounts::new();
        assert_eq!(format_errors(&e), "none");
        e.insert("500".into(), 2);
        e.insert("connect".into(), 1);
        assert_eq!(format_errors(&e), "500=2 connect=1");
        assert_eq!(format_seconds(0.0005), "500µs");
        assert_eq!(format_seconds(0.0123), "12.3ms");
        assert_eq!(format_seconds(1.5), "1.50s");
    }
}
