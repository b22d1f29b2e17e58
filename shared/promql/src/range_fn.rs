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

    /// [`Self::value_hinted`], for a walk of one series across steps: `rate`, `increase`
    /// and `delta` reuse the extrapolation of the last window's shape in `shape` (see
    /// [`extrapolated_rate_cached`]).
    #[inline]
    pub fn value_walked<P: Point>(
        self,
        p: &[P],
        range_start: i64,
        range_end: i64,
        no_resets: bool,
        shape: &mut Option<RateShape>,
    ) -> Option<f64> {
        use RangeFn::*;
        let (counter, rate) = match self {
            Rate => (true, true),
            Increase => (true, false),
            Delta => (false, false),
            _ => return self.value_hinted(p, range_start, range_end, no_resets),
        };
        extrapolated_rate_cached(p, range_start, range_end, counter, !no_resets, rate, shape)
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

/// A window's samples less one, its first sample, its last timestamp, and its last less
/// first value with the value before each counter reset added when `scan_resets`; `None`
/// for fewer than two samples.
#[inline]
fn window_increase<P: Point>(
    points: &[P],
    scan_resets: bool,
) -> Option<(usize, (i64, f64), i64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n1 = points.len() - 1;
    let (first_t, first_v) = (points[0].t(), points[0].v());
    let (last_t, last_v) = (points[n1].t(), points[n1].v());
    let mut result = last_v - first_v;
    if scan_resets {
        let mut prev = first_v;
        for v in points[1..].iter().map(Point::v) {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    Some((n1, (first_t, first_v), last_t, result))
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
    let (n1, (first_t, first_v), last_t, result) =
        window_increase(points, is_counter && scan_resets)?;
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

/// [`extrapolated_rate`] with the window's shape taken from `cache` when the last window
/// given with it had the same one: its first and last samples as far from the range's ends,
/// as many samples, the same range. The walk of a series across a range query's steps meets
/// the same shape at step after step (timestamps on the scrape interval, as Prometheus
/// aligns them, and a step that is a multiple of it), and the shape is where the divisions
/// are: four of them in one dependent chain, most of a `rate` over a dashboard's series.
/// Bit for bit the value [`extrapolated_rate`] gives.
#[allow(clippy::too_many_arguments)]
pub(crate) fn extrapolated_rate_cached<P: Point>(
    points: &[P],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    scan_resets: bool,
    is_rate: bool,
    cache: &mut Option<RateShape>,
) -> Option<f64> {
    let (n1, (first_t, first_v), last_t, result) =
        window_increase(points, is_counter && scan_resets)?;
    let key = ShapeKey {
        to_start: first_t - range_start,
        to_end: range_end - last_t,
        range: range_end - range_start,
        n1,
    };
    let shape = match cache {
        Some(shape) if shape.key == key => *shape,
        _ => {
            let shape = RateShape::of(first_t, last_t, n1, range_start, range_end, is_rate);
            *cache = Some(shape);
            shape
        }
    };
    Some(shape.apply(result, first_v, is_counter, is_rate, range_start, range_end))
}

/// Where a window's first and last samples fall, in milliseconds, and its samples less one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShapeKey {
    to_start: i64,
    to_end: i64,
    range: i64,
    n1: usize,
}

/// The part of Prometheus' extrapolation that depends on a window's timestamps only, with
/// the extrapolation factor for windows whose counter is not clamped at its zero point.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateShape {
    key: ShapeKey,
    /// Seconds from the range's start to the first sample, or half the average interval
    /// when that is farther than 1.1 intervals.
    to_start: f64,
    /// The same to the range's end.
    to_end: f64,
    /// Seconds between the first and the last sample.
    sampled: f64,
    /// The factor when the start is not clamped at the counter's zero point.
    factor: f64,
    /// A counter whose first value is at least `increase * clamp_bound` is surely not
    /// clamped: twice the least ratio that clamps, a margin far wider than the rounding
    /// of the exact test. Below it the exact test decides.
    clamp_bound: f64,
}

impl RateShape {
    fn of(
        first_t: i64,
        last_t: i64,
        n1: usize,
        range_start: i64,
        range_end: i64,
        is_rate: bool,
    ) -> Self {
        let mut to_start = (first_t - range_start) as f64 / 1000.0;
        let mut to_end = (range_end - last_t) as f64 / 1000.0;
        let sampled = (last_t - first_t) as f64 / 1000.0;
        let avg_step = sampled / n1 as f64;
        let threshold = avg_step * 1.1;
        if to_start >= threshold {
            to_start = avg_step / 2.0;
        }
        if to_end >= threshold {
            to_end = avg_step / 2.0;
        }
        let factor = Self::factor(sampled, to_start, to_end, is_rate, range_start, range_end);
        RateShape {
            key: ShapeKey {
                to_start: first_t - range_start,
                to_end: range_end - last_t,
                range: range_end - range_start,
                n1,
            },
            to_start,
            to_end,
            sampled,
            factor,
            clamp_bound: to_start / sampled * 2.0,
        }
    }

    #[inline]
    fn factor(
        sampled: f64,
        to_start: f64,
        to_end: f64,
        is_rate: bool,
        range_start: i64,
        range_end: i64,
    ) -> f64 {
        let mut extrapolate_to = sampled;
        extrapolate_to += to_start;
        extrapolate_to += to_end;
        let mut factor = extrapolate_to / sampled;
        if is_rate {
            factor /= (range_end - range_start) as f64 / 1000.0;
        }
        factor
    }

    /// The extrapolated value of a window of this shape whose last less first value
    /// (resets added) is `result`.
    #[inline]
    fn apply(
        &self,
        result: f64,
        first_v: f64,
        is_counter: bool,
        is_rate: bool,
        range_start: i64,
        range_end: i64,
    ) -> f64 {
        if is_counter && result > 0.0 && first_v >= 0.0 {
            let bound = result * self.clamp_bound;
            // A normal bound: one that underflowed could pass a zero first value.
            let surely_not = bound >= f64::MIN_POSITIVE && first_v >= bound;
            if !surely_not {
                // A counter cannot go below zero: do not extrapolate past its likely zero
                // point.
                let to_zero = self.sampled * (first_v / result);
                if to_zero < self.to_start {
                    let factor = Self::factor(
                        self.sampled,
                        to_zero,
                        self.to_end,
                        is_rate,
                        range_start,
                        range_end,
                    );
                    return result * factor;
                }
            }
        }
        result * self.factor
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the test needs spread, not quality.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Values that stress the zero-point clamp and its bound: zeros, tiny and huge
    /// magnitudes, subnormals, infinities, NaN, negatives.
    fn value(r: &mut XorShift) -> f64 {
        const SPECIAL: [f64; 12] = [
            0.0,
            -0.0,
            1e-310,
            f64::MIN_POSITIVE,
            1e-300,
            1.0,
            1e300,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -5.0,
        ];
        match r.below(4) {
            0 => SPECIAL[r.below(SPECIAL.len() as u64) as usize],
            1 => r.below(1000) as f64,
            2 => (r.next() >> 11) as f64 * 1e-3,
            _ => f64::from_bits(r.next()),
        }
    }

    /// The cached extrapolation gives the uncached one's bits for windows of one shape with
    /// every kind of value, for shapes that change and come back, rate, increase and delta.
    #[test]
    fn cached_extrapolation_is_bit_for_bit_the_uncached_one() {
        let mut r = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0usize;
        for _ in 0..400 {
            let (counter, rate) =
                [(true, true), (true, false), (false, false)][r.below(3) as usize];
            let range = [60_000, 300_000, 1_000, 7][r.below(4) as usize];
            let interval = 1 + r.below(range as u64 / 2 + 1) as i64;
            let mut cache = None;
            for _ in 0..50 {
                let range_end = 1_700_000_000_000 + r.below(100_000) as i64;
                let range_start = range_end - range;
                let n = 2 + r.below(6) as usize;
                let first = range_start + 1 + r.below(range as u64) as i64 / 2;
                let points: Vec<(i64, f64)> = (0..n as i64)
                    .map(|k| ((first + k * interval).min(range_end), value(&mut r)))
                    .collect();
                // The same shape several times with other values, as a walk meets it.
                for _ in 0..4 {
                    let mut points = points.clone();
                    for p in &mut points {
                        p.1 = value(&mut r);
                    }
                    let scan = r.below(2) == 0;
                    let want =
                        extrapolated_rate(&points, range_start, range_end, counter, scan, rate);
                    let got = extrapolated_rate_cached(
                        &points,
                        range_start,
                        range_end,
                        counter,
                        scan,
                        rate,
                        &mut cache,
                    );
                    assert_eq!(
                        want.map(f64::to_bits),
                        got.map(f64::to_bits),
                        "{points:?} ({range_start}, {range_end}] counter {counter} rate {rate}: {want:?} != {got:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 400 * 50 * 4);
    }

    /// A first value just at the counter's zero point clamps the extrapolation, cached or
    /// not: the bound only ever sends doubtful windows to the exact test.
    #[test]
    fn zero_point_clamp_applies_from_the_cache() {
        // Samples at 10 s and 20 s of (0, 30 s]: the start would extrapolate 10 s.
        let points = [(10_000i64, 1.0), (20_000i64, 101.0)];
        let mut cache = None;
        for first_v in [1.0, 0.0, 50.0, 1000.0, 1e-320] {
            let points = [(points[0].0, first_v), (points[1].0, first_v + 100.0)];
            let want = extrapolated_rate(&points, 0, 30_000, true, true, false);
            let got = extrapolated_rate_cached(&points, 0, 30_000, true, true, false, &mut cache);
            assert_eq!(
                want.map(f64::to_bits),
                got.map(f64::to_bits),
                "first {first_v}"
            );
        }
        // Clamped: to zero is 10 s × 1/100 = 0.1 s, so 100 × (10 + 0.1 + 10) / 10 = 201,
        // where unclamped it would be 100 × 30 / 10 = 300.
        let got = extrapolated_rate_cached(&points, 0, 30_000, true, true, false, &mut cache);
        assert!((got.unwrap() - 201.0).abs() < 1e-9, "{got:?}");
    }
}
