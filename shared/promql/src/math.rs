//! Float arithmetic shared by aggregations and range functions, done the way Prometheus
//! does it (Kahan-compensated sums, incremental means, Go's float formatting), so that
//! results match its test expectations to the last bit.
//!
//! Pure functions and accumulators only: no evaluator state, no AST.

/// Neumaier-improved Kahan summation step, as Prometheus' `kahanSumInc`.
///
/// Both compensations are computed and one is picked: which one depends on the values'
/// magnitudes, a branch the CPU mispredicts about half the time over a group's samples.
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let sum_bigger = (sum - t) + inc;
    let inc_bigger = (inc - t) + sum;
    let d = if sum.abs() >= inc.abs() {
        sum_bigger
    } else {
        inc_bigger
    };
    let c = if t.is_infinite() { 0.0 } else { c + d };
    (t, c)
}

/// Kahan-compensated sum of `values`, as Prometheus' `sum` and `sum_over_time`.
pub(crate) fn kahan_sum(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in values {
        (sum, c) = kahan_inc(v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

/// Prometheus' `quantile`: linear interpolation between closest ranks.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    // NaNs sort after +Inf with total_cmp but Prometheus treats them as smallest-first
    // through sort.Float64s: move them to the front.
    let nans = values.iter().filter(|v| v.is_nan()).count();
    values.rotate_right(nans);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Running mean the way Prometheus' `avg` computes it: a Kahan sum while it does not
/// overflow, then an incremental mean.
#[derive(Debug, Default, Clone)]
pub(crate) struct AvgAcc {
    count: f64,
    sum: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

impl AvgAcc {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        if self.count == 1.0 {
            self.sum = v;
            self.c = 0.0;
            return;
        }
        if !self.incremental {
            let (ns, nc) = kahan_inc(v, self.sum, self.c);
            if !ns.is_infinite() {
                self.sum = ns;
                self.c = nc;
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.count - 1.0);
            self.c /= self.count - 1.0;
        }
        if self.mean.is_infinite() {
            if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                return;
            }
            if !v.is_infinite() && !v.is_nan() {
                return;
            }
        }
        let current = self.mean + self.c;
        let (m, c) = kahan_inc(v / self.count - current / self.count, self.mean, self.c);
        self.mean = m;
        self.c = c;
    }

    pub fn value(&self) -> f64 {
        if self.incremental {
            self.mean + self.c
        } else {
            (self.sum + self.c) / self.count
        }
    }
}

/// Welford's running variance, as Prometheus' `stdvar`/`stddev`.
#[derive(Debug, Default, Clone)]
pub(crate) struct VarAcc {
    count: f64,
    mean: f64,
    value: f64,
}

impl VarAcc {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        let delta = v - self.mean;
        self.mean += delta / self.count;
        self.value += delta * (v - self.mean);
    }

    pub fn variance(&self) -> f64 {
        self.value / self.count
    }
}

/// Kahan-compensated Welford variance, as Prometheus' `stdvar_over_time`.
pub(crate) fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`, as Prometheus writes label values made from
/// numbers (`count_values`, the `le` and `quantile` labels).
pub(crate) fn format_float(v: f64) -> String {
    norn_model::float_text::format_value(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(0.5, &mut [1.0, 2.0, 3.0, 4.0]), 2.5);
        assert_eq!(quantile(0.0, &mut [3.0, 1.0]), 1.0);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn kahan_keeps_small_terms() {
        let (mut s, mut c) = (0.0, 0.0);
        for v in [1e100, 1.0, -1e100] {
            (s, c) = kahan_inc(v, s, c);
        }
        assert_eq!(s + c, 1.0);
    }

    #[test]
    fn avg_survives_overflow() {
        let mut a = AvgAcc::default();
        a.add(f64::MAX);
        a.add(f64::MAX);
        assert_eq!(a.value(), f64::MAX);
    }

    #[test]
    fn go_float_format() {
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(0.5), "0.5");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        // Halfway between two shortest candidates: Go (and Prometheus) take the even one.
        assert_eq!(
            format_float(581_340_081_208_420.0 + 0.25),
            "581340081208420.2"
        );
    }
}
