//! Aggregation operators (`sum`, `avg`, `topk`, `quantile`, `count_values`, ...) with
//! `by`/`without` grouping, following Prometheus' float arithmetic (Kahan sums,
//! incremental means) so results match its test expectations.

use std::collections::HashMap;
use std::sync::Arc;

use norn_model::{Labels, METRIC_NAME};
use promql_parser::parser::token;
use promql_parser::parser::{AggregateExpr, LabelModifier};

use crate::error::{Result, exec_err};
use crate::eval::{Evaluator, is_schema_label};
use crate::value::{Metric, Sample, Val};

/// Neumaier-improved Kahan summation step, as Prometheus' `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
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

/// Prometheus' `labels.Hash()` (XXH64 over `name 0xff value 0xff ...`): `limit_ratio` picks
/// series by it, so the same hash keeps the selection identical to Prometheus'.
pub(crate) fn prometheus_labels_hash(l: &Labels) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    for x in l.iter() {
        h.update(x.name.as_bytes());
        h.update(&[0xff]);
        h.update(x.value.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`.
pub(crate) fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

struct Group {
    labels: Metric,
    drop_name: bool,
    members: Vec<usize>,
}

/// What one aggregation node has learnt about its input series, kept across the steps of a
/// query: an input series' group does not change between steps, so it is worked out (hash
/// of the grouping labels, comparison with the groups seen so far) once per series instead
/// of once per sample per step.
#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    /// Group id by the address of an input label set. The entry holds a reference, so the
    /// address cannot be reused by another label set while it is cached.
    by_input: HashMap<usize, (Metric, usize)>,
    /// Grouping labels of each group id (shared by every output sample of the group).
    labels: Vec<Metric>,
    /// Group ids by hash of their grouping labels; collisions settled by comparing labels.
    by_hash: HashMap<u64, Vec<usize>>,
    /// Per group id: the evaluation (`epoch`) that last saw it and its index in that
    /// evaluation's output, so each evaluation keeps first-seen order without a map.
    seen: Vec<(u64, usize)>,
    epoch: u64,
    /// Input address and group id by position in the previous evaluation's input: a
    /// selector yields its series in the same order at every step, so most samples find
    /// their group here without hashing.
    by_position: Vec<(usize, usize)>,
}

impl GroupCache {
    fn clear(&mut self) {
        self.by_input.clear();
        self.labels.clear();
        self.by_hash.clear();
        self.seen.clear();
        self.by_position.clear();
    }

    /// The group id of the input at position `pos` of this evaluation.
    fn group_of(&mut self, pos: usize, m: &Metric, modifier: Option<&LabelModifier>) -> usize {
        let key = Arc::as_ptr(m) as usize;
        if let Some(&(k, g)) = self.by_position.get(pos)
            && k == key
        {
            return g;
        }
        let g = self.lookup(key, m, modifier);
        if pos < self.by_position.len() {
            self.by_position[pos] = (key, g);
        } else {
            self.by_position.push((key, g));
        }
        g
    }

    fn lookup(&mut self, key: usize, m: &Metric, modifier: Option<&LabelModifier>) -> usize {
        if let Some(&(_, g)) = self.by_input.get(&key) {
            return g;
        }
        let h = group_hash(m, modifier);
        let chain = self.by_hash.entry(h).or_default();
        let g = match chain
            .iter()
            .find(|&&g| in_group(&self.labels[g], m, modifier))
        {
            Some(&g) => g,
            None => {
                self.labels.push(Arc::new(group_labels(m, modifier)));
                self.seen.push((0, 0));
                chain.push(self.labels.len() - 1);
                self.labels.len() - 1
            }
        };
        self.by_input.insert(key, (Arc::clone(m), g));
        g
    }
}

impl Evaluator<'_> {
    pub(crate) fn eval_aggregate(&mut self, a: &AggregateExpr, t: i64) -> Result<Val> {
        let op = a.op.id();
        let vec = self.eval_vector(&a.expr, t)?;
        let param = match &a.param {
            Some(p) => Some(self.eval(p, t)?),
            None => None,
        };
        // Group samples in first-seen order, as Prometheus' output order follows it.
        let modifier = a.modifier.as_ref();
        let mut cache = self
            .group_caches
            .remove(&(a as *const AggregateExpr as usize))
            .unwrap_or_default();
        // Label sets made anew at every step (e.g. by label_replace) would only pile up.
        if cache.by_input.len() > 4 * vec.len() + 4096 {
            cache.clear();
        }
        cache.epoch += 1;
        let mut groups: Vec<Group> = Vec::new();
        for (i, s) in vec.iter().enumerate() {
            let g = cache.group_of(i, &s.metric, modifier);
            let gi = match cache.seen[g] {
                (e, gi) if e == cache.epoch => gi,
                _ => {
                    cache.seen[g] = (cache.epoch, groups.len());
                    groups.push(Group {
                        labels: Arc::clone(&cache.labels[g]),
                        drop_name: false,
                        members: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[gi].members.push(i);
            groups[gi].drop_name |= s.drop_name;
        }
        self.group_caches
            .insert(a as *const AggregateExpr as usize, cache);
        let mut out = Vec::new();
        match op {
            token::T_TOPK | token::T_BOTTOMK | token::T_LIMITK => {
                let k = match param {
                    Some(Val::Scalar(k)) => k,
                    _ => return exec_err("k parameter must be a scalar"),
                };
                if k.is_nan() {
                    return exec_err("Parameter value is NaN");
                }
                if k < 1.0 {
                    return Ok(Val::Vector(Vec::new()));
                }
                let k = if k >= 9.0e18 { usize::MAX } else { k as usize };
                for g in &groups {
                    let mut members = g.members.clone();
                    if op != token::T_LIMITK {
                        let top = op == token::T_TOPK;
                        // Ties go to the earlier sample (members are in input order), which
                        // makes the order total: selecting the best k and sorting only them
                        // gives exactly the first k of a stable sort of the whole group.
                        let cmp = |&x: &usize, &y: &usize| {
                            let (a, b) = (vec[x].v, vec[y].v);
                            // NaNs always lose, in both directions.
                            match (a.is_nan(), b.is_nan()) {
                                (true, true) => std::cmp::Ordering::Equal,
                                (true, false) => std::cmp::Ordering::Greater,
                                (false, true) => std::cmp::Ordering::Less,
                                _ if top => b.total_cmp(&a),
                                _ => a.total_cmp(&b),
                            }
                            .then(x.cmp(&y))
                        };
                        if k < members.len() {
                            members.select_nth_unstable_by(k - 1, cmp);
                            members.truncate(k);
                        }
                        members.sort_unstable_by(cmp);
                    }
                    for &i in members.iter().take(k) {
                        out.push(vec[i].clone());
                    }
                }
                return Ok(Val::Vector(out));
            }
            token::T_LIMIT_RATIO => {
                let r = match param {
                    Some(Val::Scalar(r)) => r,
                    _ => return exec_err("ratio parameter must be a scalar"),
                };
                if r.is_nan() {
                    return exec_err("Ratio value is NaN");
                }
                let r = if r > 1.0 {
                    self.warn(
                        format!(
                            "ratio value should be between -1 and 1, got {}, capping to 1",
                            format_float(r)
                        ),
                        "limit_ratio",
                    );
                    1.0
                } else if r < -1.0 {
                    self.warn(
                        format!(
                            "ratio value should be between -1 and 1, got {}, capping to -1",
                            format_float(r)
                        ),
                        "limit_ratio",
                    );
                    -1.0
                } else {
                    r
                };
                for s in vec {
                    let h = prometheus_labels_hash(&s.metric) as f64 / u64::MAX as f64;
                    let keep = if r >= 0.0 { h < r } else { h >= 1.0 + r };
                    if keep {
                        out.push(s);
                    }
                }
                return Ok(Val::Vector(out));
            }
            _ => {}
        }
        let mut cv_index: HashMap<Labels, usize> = HashMap::new();
        let mut cv_counts: Vec<(Labels, f64)> = Vec::new();
        for g in &groups {
            let vals = g.members.iter().map(|&i| vec[i].v);
            let v = match op {
                token::T_SUM => {
                    let (mut s, mut c) = (0.0, 0.0);
                    for v in vals {
                        (s, c) = kahan_inc(v, s, c);
                    }
                    if s.is_infinite() { s } else { s + c }
                }
                token::T_AVG => {
                    let mut acc = AvgAcc::default();
                    vals.for_each(|v| acc.add(v));
                    acc.value()
                }
                token::T_COUNT => g.members.len() as f64,
                token::T_GROUP => 1.0,
                token::T_MIN => vals.fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }),
                token::T_MAX => vals.fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }),
                token::T_STDDEV | token::T_STDVAR => {
                    let mut acc = VarAcc::default();
                    vals.for_each(|v| acc.add(v));
                    let var = acc.variance();
                    if op == token::T_STDDEV {
                        var.sqrt()
                    } else {
                        var
                    }
                }
                token::T_QUANTILE => {
                    let q = match param {
                        Some(Val::Scalar(q)) => q,
                        _ => return exec_err("quantile parameter must be a scalar"),
                    };
                    if !(0.0..=1.0).contains(&q) {
                        self.warn(
                            format!(
                                "quantile value should be between 0 and 1, got {}",
                                format_float(q)
                            ),
                            "quantile",
                        );
                    }
                    let mut vs: Vec<f64> = vals.collect();
                    quantile(q, &mut vs)
                }
                token::T_COUNT_VALUES => {
                    // Counted per output label set: groups that collapse once the value label
                    // overwrites a grouping label are merged, as in Prometheus.
                    let label = match &param {
                        Some(Val::Str(s)) => s.clone(),
                        _ => return exec_err("count_values parameter must be a string"),
                    };
                    if label.is_empty() || self.invalid_utf8.contains_key(&label) {
                        let shown = self
                            .invalid_utf8
                            .get(&label)
                            .cloned()
                            .unwrap_or_else(|| label.clone());
                        return exec_err(format!("invalid label name \"{shown}\""));
                    }
                    for v in vals {
                        let mut l = Labels::clone(&g.labels);
                        l.set(&label, &format_float(v));
                        match cv_index.get(&l) {
                            Some(&i) => cv_counts[i].1 += 1.0,
                            None => {
                                cv_index.insert(l.clone(), cv_counts.len());
                                cv_counts.push((l, 1.0));
                            }
                        }
                    }
                    continue;
                }
                _ => return exec_err(format!("unsupported aggregation {}", a.op)),
            };
            let drop_name = g.drop_name && g.labels.get(METRIC_NAME).is_some();
            out.push(Sample {
                metric: Arc::clone(&g.labels),
                v,
                drop_name,
            });
        }
        out.extend(cv_counts.into_iter().map(|(metric, v)| Sample {
            metric: Arc::new(metric),
            v,
            drop_name: false,
        }));
        Ok(Val::Vector(out))
    }
}

/// The labels a sample is grouped by: only the `by` labels, or all but the `without`
/// labels and the metric name.
fn grouped<'a>(
    m: &'a Labels,
    modifier: Option<&'a LabelModifier>,
) -> impl Iterator<Item = &'a norn_model::Label> + 'a {
    m.iter().filter(move |l| match modifier {
        None => false,
        Some(LabelModifier::Include(by)) => by.labels.iter().any(|n| n == &l.name),
        Some(LabelModifier::Exclude(without)) => {
            !is_schema_label(&l.name) && !without.labels.iter().any(|n| n == &l.name)
        }
    })
}

fn group_hash(m: &Labels, modifier: Option<&LabelModifier>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    for l in grouped(m, modifier) {
        h.update(l.name.as_bytes());
        h.update(&[0xff]);
        h.update(l.value.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
}

/// Whether `m`'s grouping labels are exactly `group`.
fn in_group(group: &Labels, m: &Labels, modifier: Option<&LabelModifier>) -> bool {
    let mut it = grouped(m, modifier);
    group.iter().all(|g| it.next() == Some(g)) && it.next().is_none()
}

fn group_labels(m: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::empty(),
        Some(LabelModifier::Include(by)) => m.keep(&by.labels),
        Some(LabelModifier::Exclude(without)) => Labels::from_sorted(
            m.iter()
                .filter(|l| {
                    !is_schema_label(&l.name) && !without.labels.iter().any(|n| n == &l.name)
                })
                .cloned()
                .collect(),
        ),
    }
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
    }
}
