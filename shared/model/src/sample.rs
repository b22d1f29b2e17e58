//! Float samples and Prometheus' stale marker.

/// The bit pattern Prometheus writes as a staleness marker: a NaN that no arithmetic produces.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker value.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `v` is the staleness marker (and not just any NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The oldest sample timestamp Norn stores: the Unix epoch. Mimir's `past_grace_period` is
/// off by default and lets any past timestamp in; Norn keeps a floor so that no timestamp near
/// `i64::MIN` ever reaches block-range arithmetic (aligning it to a 2 h range overflows) or
/// collides with the "no sample" markers the storage uses.
pub const MIN_SAMPLE_TIME_MS: i64 = 0;

/// The newest sample timestamp Norn stores, whatever the creation grace period says:
/// 9999-12-31T23:59:59.999Z, the last instant Prometheus' API can name.
pub const MAX_SAMPLE_TIME_MS: i64 = 253_402_300_799_999;

/// Whether `t` lies in `[MIN_SAMPLE_TIME_MS, MAX_SAMPLE_TIME_MS]`: the absolute bounds every
/// layer (distributor, ingester, head, WAL replay) checks, before any per-tenant window.
pub fn sample_time_in_bounds(t: i64) -> bool {
    (MIN_SAMPLE_TIME_MS..=MAX_SAMPLE_TIME_MS).contains(&t)
}

/// One float sample: a millisecond timestamp and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: i64,
    pub v: f64,
}

impl Sample {
    pub fn new(t: i64, v: f64) -> Self {
        Self { t, v }
    }

    /// Equality that treats two NaNs with the same bits as equal (what storage needs to
    /// decide whether a re-sent sample is a duplicate).
    pub fn bit_eq(&self, other: &Sample) -> bool {
        self.t == other.t && self.v.to_bits() == other.v.to_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_time_bounds() {
        assert!(sample_time_in_bounds(0));
        assert!(sample_time_in_bounds(1_700_000_000_000));
        assert!(sample_time_in_bounds(MAX_SAMPLE_TIME_MS));
        assert!(!sample_time_in_bounds(-1));
        assert!(!sample_time_in_bounds(i64::MIN));
        assert!(!sample_time_in_bounds(i64::MIN + 1));
        assert!(!sample_time_in_bounds(MAX_SAMPLE_TIME_MS + 1));
        assert!(!sample_time_in_bounds(i64::MAX));
    }

    #[test]
    fn stale_marker_is_a_nan_but_not_every_nan_is_stale() {
        assert!(stale_nan().is_nan());
        assert!(is_stale_nan(stale_nan()));
        assert!(!is_stale_nan(f64::NAN));
    }
}
