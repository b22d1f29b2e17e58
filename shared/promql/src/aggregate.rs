//! Aggregation operators (`sum`, `avg`, `topk`, `quantile`, `count_values`, ...) with
//! `by`/`without` grouping, following Prometheus' float arithmetic (Kahan sums,
//! incremental means) so results match its test expectations.

use std::collections::HashMap;
use std::sync::Arc;

use norn_model::{Labels, METRIC_NAME};
use promql_parser::parser::AggregateExpr;
use promql_parser::parser::token;

use crate::ast::aggregate_key;
use crate::error::{Result, exec_err};
use crate::eval::Evaluator;
use crate::math::{AvgAcc, VarAcc, format_float, kahan_sum, quantile};
use crate::value::{Metric, Sample, Val};

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

struct Group {
    labels: Metric,
    drop_name: bool,
    members: Vec<usize>,
}

impl Evaluator<'_> {
    pub(crate) fn eval_aggregate(&mut self, a: &AggregateExpr, t: i64) -> Result<Val> {
        if !self.sliding.is_empty()
            && let Some(out) = self.fused_aggregate(a, t)?
        {
            return Ok(Val::Vector(out));
        }
        let op = a.op.id();
        let vec = self.eval_vector(&a.expr, t)?;
        let param = match &a.param {
            Some(p) => Some(self.eval(p, t)?),
            None => None,
        };
        // Group samples in first-seen order, as Prometheus' output order follows it.
        let modifier = a.modifier.as_ref();
        let key = aggregate_key(a);
        let mut cache = self.group_caches.remove(&key).unwrap_or_default();
        cache.begin(vec.len());
        let mut groups: Vec<Group> = Vec::new();
        for (i, s) in vec.iter().enumerate() {
            let g = cache.group_of(i, &s.metric, modifier);
            let gi = match cache.output_index(g, groups.len()) {
                Some(gi) => gi,
                None => {
                    groups.push(Group {
                        labels: Arc::clone(cache.labels(g)),
                        drop_name: false,
                        members: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[gi].members.push(i);
            groups[gi].drop_name |= s.drop_name;
        }
        self.group_caches.insert(key, cache);
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
                for g in groups {
                    let mut members = g.members;
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
                token::T_SUM => kahan_sum(vals),
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
