//! Range functions over one window of samples (`rate`, `*_over_time`, ...): what each maps
//! a series' window to, with Prometheus' extrapolation and float arithmetic.
//!
//! Pure functions of the window: the step-by-step path (`functions`) and the across-steps
//! path (the `sliding` module) both call [`RangeFn::value_hinted`] on their windows.

use norn_model::Sample as ModelSample;

use crate::math::{AvgAcc, kahan_inc, kahan_sum, quantile, variance};

/// A sample in a window: evaluated both over fetched samples (borrowed windows) and over the
/// points of a range vector built by a subquery or a step-wise selector.
pub(crate) trait Point: Copy {
    fn t(&self) -> i64;
    fn v(&self) -> f64;
}

impl Point for (i64, f64) {
    #[inline]
    fn t(&self) -> i64 {
        self.0
    }
    #[inline]
    fn v(&self) -> f64 {
        self.1
    }
}

impl Point for ModelSample {
    #[inline]
    fn t(&self) -> i64 {
        self.t
    }
    #[inline]
    fn v(&self) -> f64 {
        self.v
    }
}

/// The functions that map each series' window to one value (at most), resolved from the
/// name once per call instead of per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeFn {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    AvgOverTime,
    SumOverTime,
    CountOverTime,
    MinOverTime,
    MaxOverTime,
    StddevOverTime,
    StdvarOverTime,
    LastOverTime,
    FirstOverTime,
    TsOfLastOverTime,
    TsOfFirstOverTime,
    TsOfMaxOverTime,
    TsOfMinOverTime,
    PresentOverTime,
    Changes,
    Resets,
    MadOverTime,
}

impl RangeFn {
    pub fn parse(name: &str) -> Option<Self> {
        use RangeFn::*;
        Some(match name {
            "rate" => Rate,
            "increase" => Increase,
            "delta" => Delta,
            "irate" => Irate,
            "idelta" => Idelta,
            "deriv" => Deriv,
            "avg_over_time" => AvgOverTime,
            "sum_over_time" => SumOverTime,
            "count_over_time" => CountOverTime,
            "min_over_time" => MinOverTime,
            "max_over_time" => MaxOverTime,
            "stddev_over_time" => StddevOverTime,
            "stdvar_over_time" => StdvarOverTime,
            "last_over_time" => LastOverTime,
            "first_over_time" => FirstOverTime,
            "ts_of_last_over_time" => TsOfLastOverTime,
            "ts_of_first_over_time" => TsOfFirstOverTime,
            "ts_of_max_over_time" => TsOfMaxOverTime,
            "ts_of_min_over_time" => TsOfMinOverTime,
            "present_over_time" => PresentOverTime,
            "changes" => Changes,
            "resets" => Resets,
            "mad_over_time" => MadOverTime,
            _ => return None,
        })
    }

    /// `rate` and `increase` warn (as an info) about series not named like counters.
    pub fn is_counter_fn(self) -> bool {
        matches!(self, RangeFn::Rate | RangeFn::Increase)
    }

    /// Whether the result keeps the input's name (the value still means the same thing).
    pub fn keeps_name(self) -> bool {
        matches!(self, RangeFn::LastOverTime | RangeFn::FirstOverTime)
    }

    /// The function's value over one non-empty window `(range_start, range_end]` (stale
    /// markers already removed), or `None` when it yields no sample for this series.
    pub fn value<P: Point>(self, p: &[P], range_start: i64, range_end: i64) -> Option<f64> {
        self.value_hinted(p, range_start, range_end, false)
    }

    /// [`Self::value`], told whether the window is known to hold no counter reset (so
    /// `rate` and `increase` need not scan it for one).
    pub fn value_hinted<P: Point>(
        self,
        p: &[P],
        range_start: i64,
        range_end: i64,
        no_resets: bool,
    ) -> Option<f64> {
        use RangeFn::*;
        let vals = || p.iter().map(|x| x.v());
        match self {
            Rate => extrapolated_rate(p, range_start, range_end, true, !no_resets, true),
            Increase => extrapolated_rate(p, range_start, range_end, true, !no_resets, false),
            Delta => extrapolated_rate(p, range_start, range_end, false, false, false),
            Irate | Idelta => {
                if p.len() < 2 {
                    return None;
                }
                let (lt, lv) = (p[p.len() - 1].t(), p[p.len() - 1].v());
                let (pt, pv) = (p[p.len() - 2].t(), p[p.len() - 2].v());
                if self == Idelta {
                    return Some(lv - pv);
                }
                let d = if lv < pv { lv } else { lv - pv };
                let dt = lt - pt;
                (dt != 0).then(|| d / (dt as f64 / 1000.0))
            }
            Deriv => (p.len() >= 2).then(|| linear_regression(p, p[0].t()).0),
            AvgOverTime => {
                let mut acc = AvgAcc::default();
                vals().for_each(|v| acc.add(v));
                Some(acc.value())
            }
            SumOverTime => Some(kahan_sum(vals())),
            CountOverTime => Some(p.len() as f64),
            MinOverTime => {
                Some(vals().fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }))
            }
            MaxOverTime => {
                Some(vals().fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }))
            }
            StddevOverTime => Some(variance(vals()).sqrt()),
            StdvarOverTime => Some(variance(vals())),
            LastOverTime => p.last().map(|x| x.v()),
            FirstOverTime => p.first().map(|x| x.v()),
            TsOfLastOverTime => p.last().map(|x| x.t() as f64 / 1000.0),
            TsOfFirstOverTime => p.first().map(|x| x.t() as f64 / 1000.0),
            TsOfMaxOverTime | TsOfMinOverTime => {
                let max = self == TsOfMaxOverTime;
                let mut best: Option<(i64, f64)> = None;
                for x in p {
                    let (pt, pv) = (x.t(), x.v());
                    best = match best {
                        None => Some((pt, pv)),
                        Some((_, bv)) if bv.is_nan() || (max && pv >= bv) || (!max && pv <= bv) => {
                            Some((pt, pv))
                        }
                        keep => keep,
                    };
                }
                best.map(|b| b.0 as f64 / 1000.0)
            }
            PresentOverTime => Some(1.0),
            Changes | Resets => {
                let mut n = 0.0;
                for w in p.windows(2) {
                    let (prev, cur) = (w[0].v(), w[1].v());
                    let hit = if self == Changes {
                        cur != prev && !(cur.is_nan() && prev.is_nan())
                    } else {
                        cur < prev
                    };
                    if hit {
                        n += 1.0;
                    }
                }
                Some(n)
            }
            MadOverTime => {
                if p.iter().any(|x| x.v().is_nan()) {
                    return Some(f64::NAN);
                }
                let mut vs: Vec<f64> = vals().collect();
                let med = quantile(0.5, &mut vs);
                let mut dev: Vec<f64> = vs.iter().map(|v| (v - med).abs()).collect();
                Some(quantile(0.5, &mut dev))
            }
        }
    }
}

/// Prometheus' `extrapolatedRate` for `rate`, `increase` and `delta`. `scan_resets` is
/// false only where the caller knows the window holds no counter reset.
fn extrapolated_rate<P: Point>(
    points: &[P],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    scan_resets: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n1 = points.len() - 1;
    let (first_t, first_v) = (points[0].t(), points[0].v());
    let (last_t, last_v) = (points[n1].t(), points[n1].v());
    let mut result = last_v - first_v;
    if is_counter && scan_resets {
        let mut prev = first_v;
        for v in points[1..].iter().map(Point::v) {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_step = sampled / n1 as f64;
    let threshold = avg_step * 1.1;
    let mut extrapolate_to = sampled;
    if to_start >= threshold {
        to_start = avg_step / 2.0;
    }
    if is_counter && result > 0.0 && first_v >= 0.0 {
        // A counter cannot go below zero: do not extrapolate past its likely zero point.
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    extrapolate_to += to_start;
    if to_end >= threshold {
        to_end = avg_step / 2.0;
    }
    extrapolate_to += to_end;
    let mut factor = extrapolate_to / sampled;
    if is_rate {
        factor /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Least-squares fit with x in seconds relative to `intercept_t`, as Prometheus'
/// `linearRegression` (Kahan sums, constant series special-cased).
pub(crate) fn linear_regression<P: Point>(points: &[P], intercept_t: i64) -> (f64, f64) {
    let init_y = points[0].v();
    let const_y = points.iter().all(|p| p.v() == init_y);
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        let (t, v) = (p.t(), p.v());
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    let intercept = sy / n - slope * sx / n;
    (slope, intercept)
}
