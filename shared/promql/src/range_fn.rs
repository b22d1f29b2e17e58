//! Range functions over a window of samples (`rate`, `*_over_time`, ...) and their
//! evaluation over a matrix selector for a whole range query at once.
//!
//! Evaluating a range query step by step cuts each series' window anew at every step and
//! redoes per-series work (copying the window without stale markers, the counter-name check).
//! For `f(selector[range])` outside any subquery, [`SlidingRangeFn`] instead walks each
//! fetched series once across a chunk of consecutive steps with two forward-moving cursors,
//! as Prometheus does for range queries, and hands each step its ready instant vector. The
//! windows are borrowed slices of the fetched samples; only a series that holds stale markers
//! is copied, once, without them.

use std::collections::HashMap;
use std::sync::Arc;

use norn_model::{METRIC_NAME, Sample as ModelSample, is_stale_nan};
use promql_parser::parser::{Call, Expr, MatrixSelector};

use crate::aggregate::{AvgAcc, kahan_inc, quantile};
use crate::error::Result;
use crate::eval::{Evaluator, at_ms, dur_ms, node_key, offset_ms};
use crate::value::{FetchedSeries, Metric, Sample};

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
            SumOverTime => {
                let (mut sum, mut c) = (0.0, 0.0);
                for v in vals() {
                    (sum, c) = kahan_inc(v, sum, c);
                }
                Some(if sum.is_infinite() { sum } else { sum + c })
            }
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

/// Kahan-compensated Welford variance, as Prometheus' `stdvar_over_time`.
fn variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Most output samples one chunk of steps may hold (all series × the chunk's steps), so the
/// memory held ahead stays bounded however many series a selector matches. Tiny in unit
/// tests, so that their few series still cross chunk boundaries.
const CHUNK_CELLS: usize = if cfg!(test) { 16 } else { 1 << 20 };
/// Most steps evaluated ahead per chunk.
const MAX_CHUNK_STEPS: usize = 256;

/// State of one `f(selector[range])` call evaluated across the steps of a range query.
#[derive(Debug)]
pub(crate) struct SlidingRangeFn {
    f: RangeFn,
    initialized: bool,
    /// Per fetched series: a copy without stale markers, only for series that hold any;
    /// the others' windows are slices of the fetched samples.
    clean: Vec<Option<Vec<ModelSample>>>,
    /// Per fetched series: the window of the last step evaluated.
    cursors: Vec<Cursor>,
    /// Per fetched series: whether the counter-name check already ran (its outcome does not
    /// change between steps).
    noted: Vec<bool>,
    /// Step index of `results[0]`.
    first: usize,
    /// The instant vector of each step of the current chunk; `None` once handed out, or for
    /// a step that must be evaluated the ordinary way (to report the error it runs into).
    results: Vec<Option<Vec<Sample>>>,
}

impl SlidingRangeFn {
    fn new(f: RangeFn) -> Self {
        Self {
            f,
            initialized: false,
            clean: Vec::new(),
            cursors: Vec::new(),
            noted: Vec::new(),
            first: 0,
            results: Vec::new(),
        }
    }
}

/// A series' window `[lo, hi)` and its counter resets: `resets_hi` counts the `k` in
/// `[1, hi)`, `resets_lo` the `k` in `[1, lo]` with `v[k] < v[k-1]`, so the window holds
/// `resets_hi - resets_lo` resets (the comparison `rate` uses, over the same samples).
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    lo: usize,
    hi: usize,
    resets_lo: usize,
    resets_hi: usize,
}

fn call_key(c: &Call) -> usize {
    c as *const Call as usize
}

fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

fn matrix_arg(c: &Call) -> Option<&MatrixSelector> {
    match c.args.args.as_slice() {
        [a] => match unwrap_parens(a) {
            Expr::MatrixSelector(ms) => Some(ms),
            _ => None,
        },
        _ => None,
    }
}

/// Finds the calls of a range query that can be evaluated across all steps at once: a range
/// function directly over a matrix selector, not inside a subquery (whose inner expression
/// is evaluated at the subquery's own timestamps, not at the query's steps).
pub(crate) fn plan_sliding(e: &Expr, out: &mut HashMap<usize, SlidingRangeFn>) {
    match e {
        Expr::Call(c) => {
            if let Some(f) = RangeFn::parse(c.func.name)
                && matrix_arg(c).is_some()
            {
                out.insert(call_key(c), SlidingRangeFn::new(f));
            }
            for a in &c.args.args {
                plan_sliding(a, out);
            }
        }
        Expr::Paren(p) => plan_sliding(&p.expr, out),
        Expr::Unary(u) => plan_sliding(&u.expr, out),
        Expr::Binary(b) => {
            plan_sliding(&b.lhs, out);
            plan_sliding(&b.rhs, out);
        }
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                plan_sliding(p, out);
            }
            plan_sliding(&a.expr, out);
        }
        Expr::Subquery(_)
        | Expr::MatrixSelector(_)
        | Expr::VectorSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

impl Evaluator<'_> {
    /// The "might not be a counter" info of `rate`/`increase` for one series.
    pub(crate) fn note_if_not_counter(&mut self, metric: &Metric) {
        if let Some(metric_name) = metric.get(METRIC_NAME)
            && !["_total", "_sum", "_count", "_bucket"]
                .iter()
                .any(|suf| metric_name.ends_with(suf))
        {
            let needle = metric_name.to_string();
            self.info(
                format!(
                    "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {metric_name:?}"
                ),
                &needle,
            );
        }
    }

    /// The value of call `c` at `t` if it was planned by [`plan_sliding`] and `t` is one of
    /// the query's steps; `None` means "evaluate it the ordinary way".
    pub(crate) fn sliding_value(&mut self, c: &Call, t: i64) -> Result<Option<Vec<Sample>>> {
        let key = call_key(c);
        let Some(mut st) = self.sliding.remove(&key) else {
            return Ok(None);
        };
        let r = self.sliding_step(&mut st, c, t);
        self.sliding.insert(key, st);
        r
    }

    fn sliding_step(
        &mut self,
        st: &mut SlidingRangeFn,
        c: &Call,
        t: i64,
    ) -> Result<Option<Vec<Sample>>> {
        let (start, end, step) = (self.query_start, self.query_end, self.query_step);
        if step <= 0 || t < start || t > end || (t - start) % step != 0 {
            return Ok(None);
        }
        let Some(ms) = matrix_arg(c) else {
            return Ok(None);
        };
        let idx = ((t - start) / step) as usize;
        if idx < st.first {
            return Ok(None);
        }
        if idx >= st.first + st.results.len() {
            self.slide_chunk(st, ms, idx)?;
        }
        Ok(st.results[idx - st.first].take())
    }

    /// Evaluates `st`'s function for a chunk of steps from step index `first` on: each series
    /// once, its window cursors moving forward from where the previous chunk left them.
    fn slide_chunk(
        &mut self,
        st: &mut SlidingRangeFn,
        ms: &MatrixSelector,
        first: usize,
    ) -> Result<()> {
        let vs = &ms.vs;
        let range = dur_ms(&ms.range);
        let data = self.data;
        let fetched: &[FetchedSeries] = data.get(&node_key(vs)).map_or(&[], Vec::as_slice);
        if !st.initialized {
            st.clean = fetched
                .iter()
                .map(|s| {
                    s.samples.iter().any(|x| is_stale_nan(x.v)).then(|| {
                        s.samples
                            .iter()
                            .filter(|x| !is_stale_nan(x.v))
                            .copied()
                            .collect()
                    })
                })
                .collect();
            st.cursors = vec![Cursor::default(); fetched.len()];
            st.noted = vec![false; fetched.len()];
            st.initialized = true;
        }
        let (qstart, qend, qstep) = (self.query_start, self.query_end, self.query_step);
        let at = at_ms(&vs.at, qstart, qend);
        let off = offset_ms(&vs.offset);
        let steps_left = ((qend - qstart) / qstep) as usize + 1 - first;
        let chunk = (CHUNK_CELLS / fetched.len().max(1)).clamp(1, MAX_CHUNK_STEPS);
        let ref_ts: Vec<i64> = (0..chunk.min(steps_left))
            .map(|i| {
                at.unwrap_or(qstart + (first + i) as i64 * qstep)
                    .saturating_sub(off)
            })
            .collect();
        let mut results: Vec<Vec<Sample>> = ref_ts
            .iter()
            .map(|_| Vec::with_capacity(fetched.len()))
            .collect();
        let mut totals = vec![0usize; ref_ts.len()];
        let drop_name = !st.f.keeps_name();
        for (i, s) in fetched.iter().enumerate() {
            self.check_deadline()?;
            let samples: &[ModelSample] = st.clean[i].as_deref().unwrap_or(&s.samples);
            let mut c = st.cursors[i];
            let is_reset =
                |k: usize| k >= 1 && k < samples.len() && samples[k].v < samples[k - 1].v;
            let mut produced = false;
            for (j, &ref_t) in ref_ts.iter().enumerate() {
                let wstart = ref_t.saturating_sub(range);
                while c.lo < samples.len() && samples[c.lo].t <= wstart {
                    c.lo += 1;
                    c.resets_lo += usize::from(is_reset(c.lo));
                }
                while c.hi < c.lo || (c.hi < samples.len() && samples[c.hi].t <= ref_t) {
                    c.resets_hi += usize::from(is_reset(c.hi));
                    c.hi += 1;
                }
                let (lo, hi) = (c.lo, c.hi);
                if lo == hi {
                    continue;
                }
                totals[j] += hi - lo;
                let no_resets = c.resets_hi == c.resets_lo;
                if let Some(v) =
                    st.f.value_hinted(&samples[lo..hi], wstart, ref_t, no_resets)
                {
                    results[j].push(Sample {
                        metric: Arc::clone(&s.labels),
                        v,
                        drop_name,
                    });
                    produced = true;
                }
            }
            st.cursors[i] = c;
            if produced && st.f.is_counter_fn() && !st.noted[i] {
                st.noted[i] = true;
                self.note_if_not_counter(&s.labels);
            }
        }
        st.first = first;
        st.results = results
            .into_iter()
            .zip(totals)
            // A step whose windows hold too many samples is left to the ordinary path,
            // which fails it the same way (and only once the query gets there).
            .map(|(r, total)| (self.held.saturating_add(total) <= self.max_samples).then_some(r))
            .collect();
        Ok(())
    }
}
