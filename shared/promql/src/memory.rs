//! The per-query memory limit (`max_estimated_memory_consumption_per_query`) and the peak a
//! query reached, from the engine's own accounting.
//!
//! The engine counts what a query holds in units of one decoded sample, 16 bytes
//! ([`crate::eval::Evaluator::hold`]): the fetched samples, range-vector windows, subquery
//! results and their cache, and a range query's output. A selector that a range function
//! slides over across a range query's steps is fetched as encoded chunks and counted by their
//! bytes (16 to a unit); only its current windows are decoded, counted step by step as
//! Prometheus counts them. The estimated bytes a query holds are
//! those units × 16 plus the label sets of the fetched series ([`label_bytes`]). A memory
//! limit therefore becomes a cap on held units, `(limit − label bytes) / 16`, applied together
//! with `max_samples` (the lower wins): the query stops as soon as either is passed, having
//! loaded about its limit, never the whole answer. When the memory cap is the lower one, the
//! error names it (422, Mimir's message and error id) rather than the sample limit.
//!
//! It is an estimate: allocator overhead, the query's parse tree and transient per-step
//! vectors are not counted, so a process needs head-room beyond the sum of its queries'
//! limits.

use norn_model::Labels;

use crate::error::PromqlError;

/// Bytes one held unit (a decoded sample: timestamp and value) stands for.
pub(crate) const BYTES_PER_SAMPLE: u64 = 16;
/// Per label of a fetched series, beside its name and value: their two string headers.
const BYTES_PER_LABEL: u64 = 48;
/// Per fetched series: its label vector, the shared handle and the samples vector.
const BYTES_PER_SERIES: u64 = 80;

/// The estimated bytes of one fetched series' label set.
pub(crate) fn label_bytes(labels: &Labels) -> u64 {
    BYTES_PER_SERIES
        + labels
            .iter()
            .map(|l| (l.name.len() + l.value.len()) as u64 + BYTES_PER_LABEL)
            .sum::<u64>()
}

/// The memory limit of one query, with the label bytes it holds once its series are fetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryLimit {
    /// 0: no limit.
    limit_bytes: u64,
    max_samples: usize,
    label_bytes: u64,
}

impl MemoryLimit {
    pub fn new(limit_bytes: u64, max_samples: usize) -> Self {
        Self {
            limit_bytes,
            max_samples,
            label_bytes: 0,
        }
    }

    /// The same limit once the fetched series' labels (`label_bytes`) are held.
    pub fn with_labels(self, label_bytes: u64) -> Self {
        Self {
            label_bytes,
            ..self
        }
    }

    /// The most units the query may hold: `max_samples`, or less under a memory limit.
    pub fn sample_cap(&self) -> usize {
        match self.memory_cap() {
            Some(cap) => cap.min(self.max_samples),
            None => self.max_samples,
        }
    }

    fn memory_cap(&self) -> Option<usize> {
        (self.limit_bytes > 0).then(|| {
            let left = self.limit_bytes.saturating_sub(self.label_bytes) / BYTES_PER_SAMPLE;
            usize::try_from(left).unwrap_or(usize::MAX)
        })
    }

    /// Whether the labels alone are over the limit.
    pub fn labels_over(&self) -> bool {
        self.limit_bytes > 0 && self.label_bytes > self.limit_bytes
    }

    /// The error a query over its cap gets: the memory limit's when that is the lower cap.
    pub fn explain(&self, e: PromqlError) -> PromqlError {
        match e {
            PromqlError::TooManySamples
                if self.memory_cap().is_some_and(|cap| cap < self.max_samples) =>
            {
                self.exceeded()
            }
            e => e,
        }
    }

    pub fn exceeded(&self) -> PromqlError {
        PromqlError::MemoryLimit(self.limit_bytes)
    }

    /// The estimated bytes of `units` held units plus the labels.
    pub fn estimate(&self, units: usize) -> u64 {
        (units as u64)
            .saturating_mul(BYTES_PER_SAMPLE)
            .saturating_add(self.label_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_cap_wins_and_names_itself() {
        let off = MemoryLimit::new(0, 1000);
        assert_eq!(off.sample_cap(), 1000);
        assert!(matches!(
            off.explain(PromqlError::TooManySamples),
            PromqlError::TooManySamples
        ));
        // 16 kB is 1024 samples: above max_samples, so the sample limit is the one hit.
        let loose = MemoryLimit::new(16 * 1024, 1000);
        assert_eq!(loose.sample_cap(), 1000);
        assert!(matches!(
            loose.explain(PromqlError::TooManySamples),
            PromqlError::TooManySamples
        ));
        // With 8 kB of labels held, 512 samples are left: now memory is the lower cap.
        let tight = loose.with_labels(8 * 1024);
        assert_eq!(tight.sample_cap(), 512);
        assert!(matches!(
            tight.explain(PromqlError::TooManySamples),
            PromqlError::MemoryLimit(16384)
        ));
        assert_eq!(tight.estimate(10), 8 * 1024 + 160);
        assert!(!tight.labels_over());
        assert!(tight.with_labels(20_000).labels_over());
        // Other errors pass through.
        assert!(matches!(
            tight.explain(PromqlError::Timeout),
            PromqlError::Timeout
        ));
    }

    #[test]
    fn label_bytes_grow_with_names_and_values() {
        let a = label_bytes(&Labels::from_pairs([("__name__", "up")]));
        let b = label_bytes(&Labels::from_pairs([("__name__", "up"), ("job", "api")]));
        assert_eq!(a, BYTES_PER_SERIES + 10 + BYTES_PER_LABEL);
        assert_eq!(b - a, 6 + BYTES_PER_LABEL);
    }
}
