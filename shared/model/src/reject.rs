//! Why an ingester refused samples it was sent ([`RejectReason`]).
//!
//! The head decides these, but they cross the wire (gRPC push responses carry the reason
//! string) and label the discarded-samples metrics of every layer, so they belong to the
//! shared vocabulary: the ingester client reads them without depending on the TSDB.

/// Why samples were not appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Older than the series' last sample.
    OutOfOrder,
    /// Older than the head's lower bound (`max_t - window`).
    TooOld,
    /// Same timestamp as the last sample, different value.
    DuplicateTimestamp,
    /// The tenant has `max_series` series.
    MaxSeriesPerUser,
    /// The metric has `max_series_per_metric` series.
    MaxSeriesPerMetric,
    /// Outside the absolute bounds every layer checks ([`crate::sample_time_in_bounds`]).
    OutOfBounds,
}

impl RejectReason {
    /// Every reason, for mapping reason strings back to bounded `&'static str` labels.
    pub const ALL: [RejectReason; 6] = [
        RejectReason::OutOfOrder,
        RejectReason::TooOld,
        RejectReason::DuplicateTimestamp,
        RejectReason::MaxSeriesPerUser,
        RejectReason::MaxSeriesPerMetric,
        RejectReason::OutOfBounds,
    ];

    /// Mimir's reason string (used as the `reason` label of discarded-samples metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "sample-out-of-order",
            RejectReason::TooOld => "sample-too-old",
            RejectReason::DuplicateTimestamp => "new-value-for-timestamp",
            RejectReason::MaxSeriesPerUser => "per_user_series_limit",
            RejectReason::MaxSeriesPerMetric => "per_metric_series_limit",
            RejectReason::OutOfBounds => "sample-out-of-bounds",
        }
    }

    /// The reason whose [`as_str`](Self::as_str) is `s`.
    pub fn from_str_opt(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_str_opt(r.as_str()), Some(r));
        }
        assert_eq!(RejectReason::from_str_opt("something-new"), None);
    }
}
