//! PromQL functions: instant-vector math, range-vector (`*_over_time`, `rate`, ...),
//! label manipulation, sorting, dates and classic-bucket `histogram_quantile`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Timelike, Utc};
use norn_model::{Labels, METRIC_NAME};
use promql_parser::parser::{Call, Expr};

use crate::ast::absent_labels;
use crate::error::{PromqlError, Result, exec_err};
use crate::eval::{Evaluator, has_duplicate_labelsets};
use crate::math::{format_float, quantile};
use crate::range_fn::{RangeFn, linear_regression};
use crate::value::{Metric, Sample, Val};

/// Go's `math.Max`: NaN wins.
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

fn simple_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

fn date_fn(name: &str) -> Option<fn(&DateTime<Utc>) -> f64> {
    Some(match name {
        "day_of_month" => |d| d.day() as f64,
        "day_of_week" => |d| d.weekday().num_days_from_sunday() as f64,
        "day_of_year" => |d| d.ordinal() as f64,
        "hour" => |d| d.hour() as f64,
        "minute" => |d| d.minute() as f64,
        "month" => |d| d.month() as f64,
        "year" => |d| d.year() as f64,
        "days_in_month" => |d| {
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            let next = chrono::NaiveDate::from_ymd_opt(y, m, 1);
            let this = chrono::NaiveDate::from_ymd_opt(d.year(), d.month(), 1);
            match (next, this) {
                (Some(n), Some(t)) => (n - t).num_days() as f64,
                _ => f64::NAN,
            }
        },
        _ => return None,
    })
}

/// Natural-order comparison (digit runs compare numerically), as `sort_by_label` uses.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut ai, mut bi) = (a.char_indices().peekable(), b.char_indices().peekable());
    loop {
        match (ai.peek().copied(), bi.peek().copied()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((_, ca)), Some((_, cb))) if ca.is_ascii_digit() && cb.is_ascii_digit() => {
                let mut da = String::new();
                while let Some(&(_, c)) = ai.peek().filter(|(_, c)| c.is_ascii_digit()) {
                    da.push(c);
                    ai.next();
                }
                let mut db = String::new();
                while let Some(&(_, c)) = bi.peek().filter(|(_, c)| c.is_ascii_digit()) {
                    db.push(c);
                    bi.next();
                }
                let ta = da.trim_start_matches('0');
                let tb = db.trim_start_matches('0');
                let o = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| da.len().cmp(&db.len()));
                if o != Ordering::Equal {
                    return o;
                }
            }
            (Some((_, ca)), Some((_, cb))) => {
                if ca != cb {
                    return ca.cmp(&cb);
                }
                ai.next();
                bi.next();
            }
        }
    }
}

/// Classic-bucket quantile, as Prometheus' `BucketQuantile` (with its monotonicity fixes).
pub(crate) fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce buckets with equal bounds.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(ub, c) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    // Force monotonic counts, ignoring tiny float noise.
    let mut prev = merged[0].1;
    for b in merged.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) || curr < prev {
            b.1 = prev;
            continue;
        }
        prev = curr;
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = merged.len();
    let b = merged[..n - 1].partition_point(|x| x.1 < rank);
    if b == n - 1 {
        return merged[n - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let mut bucket_start = 0.0;
    let bucket_end = merged[b].0;
    let mut count = merged[b].1;
    if b > 0 {
        bucket_start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Prometheus' `almost.Equal` (relative tolerance).
pub(crate) fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    const MIN_NORMAL: f64 = 2.2250738585072014e-308;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    let sum = a.abs() + b.abs();
    if a == 0.0 || b == 0.0 || sum < MIN_NORMAL {
        return diff < eps * MIN_NORMAL;
    }
    diff / sum.min(f64::MAX) < eps
}

fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => t.parse::<f64>().ok(),
    }
}

impl Evaluator<'_> {
    pub(crate) fn eval_call(&mut self, c: &Call, t: i64) -> Result<Val> {
        if !self.sliding.is_empty()
            && let Some(vec) = self.sliding_value(c, t)?
        {
            return Ok(Val::Vector(vec));
        }
        let name = c.func.name;
        let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
        let arg = |i: usize| -> Result<&Expr> {
            args.get(i)
                .copied()
                .ok_or_else(|| PromqlError::Execution(format!("missing argument {i} to {name}")))
        };
        if let Some(f) = simple_fn(name) {
            let vec = self.eval_vector(arg(0)?, t)?;
            return Ok(Val::Vector(
                vec.into_iter()
                    .map(|s| Sample {
                        metric: s.metric,
                        v: f(s.v),
                        drop_name: true,
                    })
                    .collect(),
            ));
        }
        if let Some(f) = date_fn(name) {
            let vec = match args.first() {
                Some(e) => self.eval_vector(e, t)?,
                None => vec![Sample {
                    metric: Metric::default(),
                    v: t as f64 / 1000.0,
                    drop_name: false,
                }],
            };
            let mut out = Vec::with_capacity(vec.len());
            for s in vec {
                if s.v.is_nan() || s.v.is_infinite() {
                    out.push(Sample {
                        metric: s.metric,
                        v: f64::NAN,
                        drop_name: true,
                    });
                    continue;
                }
                let Some(d) = DateTime::from_timestamp(s.v as i64, 0) else {
                    continue;
                };
                out.push(Sample {
                    metric: s.metric,
                    v: f(&d),
                    drop_name: true,
                });
            }
            return Ok(Val::Vector(out));
        }
        match name {
            "info" => self.eval_info(c, t),
            "time" => Ok(Val::Scalar(t as f64 / 1000.0)),
            "start" => Ok(Val::Scalar(self.query_start as f64 / 1000.0)),
            "end" => Ok(Val::Scalar(self.query_end as f64 / 1000.0)),
            "range" => Ok(Val::Scalar(
                (self.query_end - self.query_start) as f64 / 1000.0,
            )),
            "step" => Ok(Val::Scalar(self.query_step as f64 / 1000.0)),
            "min_of" | "max_of" => {
                let a = self.eval_scalar(arg(0)?, t)?;
                let b = self.eval_scalar(arg(1)?, t)?;
                Ok(Val::Scalar(if name == "min_of" {
                    go_min(a, b)
                } else {
                    go_max(a, b)
                }))
            }
            "pi" => Ok(Val::Scalar(std::f64::consts::PI)),
            "vector" => {
                let v = self.eval_scalar(arg(0)?, t)?;
                Ok(Val::Vector(vec![Sample {
                    metric: Metric::default(),
                    v,
                    drop_name: false,
                }]))
            }
            "scalar" => {
                let vec = self.eval_vector(arg(0)?, t)?;
                Ok(Val::Scalar(if vec.len() == 1 {
                    vec[0].v
                } else {
                    f64::NAN
                }))
            }
            "timestamp" => {
                let a = unwrap_parens(arg(0)?);
                let vec = match a {
                    Expr::VectorSelector(vs) => self.eval_vector_selector(vs, t, true)?,
                    other => self
                        .eval_vector(other, t)?
                        .into_iter()
                        .map(|s| Sample {
                            v: t as f64 / 1000.0,
                            ..s
                        })
                        .collect(),
                };
                Ok(Val::Vector(
                    vec.into_iter()
                        .map(|s| Sample {
                            drop_name: true,
                            ..s
                        })
                        .collect(),
                ))
            }
            "round" => {
                let vec = self.eval_vector(arg(0)?, t)?;
                let to = match args.get(1) {
                    Some(e) => self.eval_scalar(e, t)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                Ok(Val::Vector(
                    vec.into_iter()
                        .map(|s| Sample {
                            metric: s.metric,
                            v: (s.v * inv + 0.5).floor() / inv,
                            drop_name: true,
                        })
                        .collect(),
                ))
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let vec = self.eval_vector(arg(0)?, t)?;
                let (lo, hi) = match name {
                    "clamp" => (self.eval_scalar(arg(1)?, t)?, self.eval_scalar(arg(2)?, t)?),
                    "clamp_min" => (self.eval_scalar(arg(1)?, t)?, f64::INFINITY),
                    _ => (f64::NEG_INFINITY, self.eval_scalar(arg(1)?, t)?),
                };
                if hi < lo {
                    return Ok(Val::Vector(Vec::new()));
                }
                Ok(Val::Vector(
                    vec.into_iter()
                        .map(|s| Sample {
                            metric: s.metric,
                            v: go_max(lo, go_min(hi, s.v)),
                            drop_name: true,
                        })
                        .collect(),
                ))
            }
            "label_replace" => {
                let vec = self.eval_vector(arg(0)?, t)?;
                let dst = self.eval_string(arg(1)?, t)?;
                let repl = self.eval_string(arg(2)?, t)?;
                let src = self.eval_string(arg(3)?, t)?;
                let re_s = self.eval_string(arg(4)?, t)?;
                let re = regex::Regex::new(&format!("^(?s:{re_s})$")).map_err(|e| {
                    PromqlError::Execution(format!(
                        "invalid regular expression in label_replace(): {e}"
                    ))
                })?;
                if dst.is_empty() || self.invalid_utf8.contains_key(&dst) {
                    return exec_err(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    ));
                }
                let mut out = Vec::with_capacity(vec.len());
                for mut s in vec {
                    let src_val = s.metric.get(&src).unwrap_or("").to_string();
                    if let Some(caps) = re.captures(&src_val) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        Arc::make_mut(&mut s.metric).set(&dst, &res);
                        if dst == METRIC_NAME {
                            s.drop_name = false;
                        }
                    }
                    out.push(s);
                }
                if has_duplicate_labelsets(&out, false) {
                    return exec_err("vector cannot contain metrics with the same labelset");
                }
                Ok(Val::Vector(out))
            }
            "label_join" => {
                let vec = self.eval_vector(arg(0)?, t)?;
                let dst = self.eval_string(arg(1)?, t)?;
                let sep = self.eval_string(arg(2)?, t)?;
                let mut srcs = Vec::new();
                for e in args.iter().skip(3) {
                    srcs.push(self.eval_string(e, t)?);
                }
                if dst.is_empty() || self.invalid_utf8.contains_key(&dst) {
                    return exec_err(format!(
                        "invalid destination label name in label_join(): {dst}"
                    ));
                }
                let mut out = Vec::with_capacity(vec.len());
                for mut s in vec {
                    let joined: Vec<&str> =
                        srcs.iter().map(|n| s.metric.get(n).unwrap_or("")).collect();
                    let v = joined.join(&sep);
                    Arc::make_mut(&mut s.metric).set(&dst, &v);
                    if dst == METRIC_NAME {
                        s.drop_name = false;
                    }
                    out.push(s);
                }
                if has_duplicate_labelsets(&out, false) {
                    return exec_err("vector cannot contain metrics with the same labelset");
                }
                Ok(Val::Vector(out))
            }
            "absent" => {
                let a = arg(0)?;
                let vec = self.eval_vector(a, t)?;
                if !vec.is_empty() {
                    return Ok(Val::Vector(Vec::new()));
                }
                let metric = match a {
                    Expr::VectorSelector(vs) => absent_labels(&vs.matchers),
                    _ => Labels::empty(),
                };
                Ok(Val::Vector(vec![Sample {
                    metric: Arc::new(metric),
                    v: 1.0,
                    drop_name: false,
                }]))
            }
            "absent_over_time" => {
                let a = arg(0)?;
                let m = self.eval_matrix(a, t)?;
                if !m.series.is_empty() {
                    return Ok(Val::Vector(Vec::new()));
                }
                let metric = match a {
                    Expr::MatrixSelector(ms) => absent_labels(&ms.vs.matchers),
                    _ => Labels::empty(),
                };
                Ok(Val::Vector(vec![Sample {
                    metric: Arc::new(metric),
                    v: 1.0,
                    drop_name: false,
                }]))
            }
            "sort" | "sort_desc" => {
                if self.range_mode {
                    self.warn("sort is ineffective for range queries since results are always ordered by labels".into(), name);
                }
                let mut vec = self.eval_vector(arg(0)?, t)?;
                let desc = name == "sort_desc";
                vec.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    _ if desc => b.v.total_cmp(&a.v),
                    _ => a.v.total_cmp(&b.v),
                });
                Ok(Val::Vector(vec))
            }
            "sort_by_label" | "sort_by_label_desc" => {
                if self.range_mode {
                    self.warn("sort is ineffective for range queries since results are always ordered by labels".into(), name);
                }
                let mut vec = self.eval_vector(arg(0)?, t)?;
                let mut names = Vec::new();
                for e in args.iter().skip(1) {
                    names.push(self.eval_string(e, t)?);
                }
                let desc = name == "sort_by_label_desc";
                vec.sort_by(|a, b| {
                    let mut o = Ordering::Equal;
                    for n in &names {
                        let (x, y) = (a.metric.get(n).unwrap_or(""), b.metric.get(n).unwrap_or(""));
                        if x != y {
                            o = natural_cmp(x, y);
                            break;
                        }
                    }
                    if o == Ordering::Equal {
                        o = a.metric.cmp(&b.metric);
                    }
                    if desc { o.reverse() } else { o }
                });
                Ok(Val::Vector(vec))
            }
            "histogram_quantile" => {
                let q = self.eval_scalar(arg(0)?, t)?;
                let a = arg(1)?;
                let vec = self.eval_vector(a, t)?;
                self.histogram_quantile(q, vec, &a.to_string())
            }
            "quantile_over_time" => {
                let q = self.eval_scalar(arg(0)?, t)?;
                if !(0.0..=1.0).contains(&q) {
                    self.warn(
                        format!(
                            "quantile value should be between 0 and 1, got {}",
                            format_float(q)
                        ),
                        name,
                    );
                }
                let m = self.eval_matrix(arg(1)?, t)?;
                Ok(Val::Vector(
                    m.series
                        .into_iter()
                        .map(|s| {
                            let mut vs: Vec<f64> = s.points.iter().map(|p| p.1).collect();
                            Sample {
                                metric: s.metric,
                                v: quantile(q, &mut vs),
                                drop_name: true,
                            }
                        })
                        .collect(),
                ))
            }
            "predict_linear" => {
                let m = self.eval_matrix(arg(0)?, t)?;
                let d = self.eval_scalar(arg(1)?, t)?;
                let mut out = Vec::new();
                for s in m.series {
                    if s.points.len() < 2 {
                        continue;
                    }
                    let (slope, intercept) = linear_regression(&s.points, t);
                    out.push(Sample {
                        metric: s.metric,
                        v: slope * d + intercept,
                        drop_name: true,
                    });
                }
                Ok(Val::Vector(out))
            }
            "double_exponential_smoothing" | "holt_winters" => {
                let m = self.eval_matrix(arg(0)?, t)?;
                let sf = self.eval_scalar(arg(1)?, t)?;
                let tf = self.eval_scalar(arg(2)?, t)?;
                if sf <= 0.0 || sf >= 1.0 {
                    return exec_err(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
                    ));
                }
                if tf <= 0.0 || tf >= 1.0 {
                    return exec_err(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
                    ));
                }
                let mut out = Vec::new();
                for s in m.series {
                    let p = &s.points;
                    if p.len() < 2 {
                        continue;
                    }
                    let (mut s0, mut s1, mut b) = (0.0, p[0].1, p[1].1 - p[0].1);
                    for (i, pt) in p.iter().enumerate().skip(1) {
                        let x = sf * pt.1;
                        if i > 1 {
                            b = tf * (s1 - s0) + (1.0 - tf) * b;
                        }
                        let y = (1.0 - sf) * (s1 + b);
                        s0 = s1;
                        s1 = x + y;
                    }
                    out.push(Sample {
                        metric: s.metric,
                        v: s1,
                        drop_name: true,
                    });
                }
                Ok(Val::Vector(out))
            }
            _ => self.eval_range_fn(name, arg(0)?, t),
        }
    }

    fn eval_range_fn(&mut self, name: &str, a: &Expr, t: i64) -> Result<Val> {
        let Some(f) = RangeFn::parse(name) else {
            return exec_err(format!("function {name} is not supported"));
        };
        let m = self.eval_matrix(a, t)?;
        let mut out = Vec::with_capacity(m.series.len());
        for s in &m.series {
            if let Some(v) = f.value(&s.points, m.range_start, m.range_end) {
                if f.is_counter_fn() {
                    self.note_if_not_counter(&s.metric);
                }
                out.push(Sample {
                    metric: Arc::clone(&s.metric),
                    v,
                    drop_name: if f.keeps_name() { s.drop_name } else { true },
                });
            }
        }
        self.recycle(m);
        Ok(Val::Vector(out))
    }

    fn histogram_quantile(&mut self, q: f64, vec: Vec<Sample>, arg_text: &str) -> Result<Val> {
        if q.is_nan() || !(0.0..=1.0).contains(&q) {
            self.warn(
                format!(
                    "quantile value should be between 0 and 1, got {}",
                    format_float(q)
                ),
                "histogram_quantile",
            );
        }
        let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for s in vec {
            let le = s.metric.get("le").unwrap_or("").to_string();
            let Some(ub) = parse_go_float(&le) else {
                let metric_name = s.metric.get(METRIC_NAME).unwrap_or("").to_string();
                self.warn(
                    format!(
                        "bucket label \"le\" is missing or has a malformed value of {le:?} for metric name {metric_name:?}"
                    ),
                    arg_text,
                );
                continue;
            };
            // The name stays in the key so different histograms never merge; it is
            // dropped from the output (delayed, like every name-changing function).
            let mut key = Labels::clone(&s.metric);
            key.remove("le");
            let gi = *index.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[gi].1.push((ub, s.v));
        }
        let mut out = Vec::with_capacity(groups.len());
        for (metric, mut buckets) in groups {
            let v = bucket_quantile(q, &mut buckets);
            out.push(Sample {
                metric: Arc::new(metric),
                v,
                drop_name: true,
            });
        }
        Ok(Val::Vector(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        assert_eq!(natural_cmp("a2", "a10"), Ordering::Less);
        assert_eq!(natural_cmp("b", "a10"), Ordering::Greater);
        assert_eq!(natural_cmp("x", "x"), Ordering::Equal);
    }

    #[test]
    fn bucket_quantile_interpolates_within_bucket() {
        let mut b = vec![(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(bucket_quantile(0.5, &mut b), 1.0);
        let mut b = vec![(1.0, 0.0), (2.0, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.5, &mut b), 1.5);
        let mut b = vec![(1.0, 10.0)];
        assert!(bucket_quantile(0.5, &mut b).is_nan(), "no +Inf bucket");
    }

    #[test]
    fn regression_of_a_line() {
        let pts = [(0, 1.0), (1000, 3.0), (2000, 5.0)];
        let (slope, intercept) = linear_regression(&pts, 0);
        assert!((slope - 2.0).abs() < 1e-12);
        assert!((intercept - 1.0).abs() < 1e-12);
    }

    #[test]
    fn go_min_max_propagate_nan() {
        assert!(go_max(1.0, f64::NAN).is_nan());
        assert!(go_min(f64::NAN, 1.0).is_nan());
    }
}
