//! Subquery evaluation (`expr[range:step]`): the inner expression at every aligned step of
//! the window, and the cache that lets overlapping outer steps reuse inner results.
//!
//! Both the result being built and the cache are counted against `max_samples` (the cache
//! by the bytes it holds), so a long window at a fine step ends in a 422 instead of growing
//! without bound: `count_over_time(vector(1)[30d:1ms])` is 2.6e9 inner steps. The cache is
//! kept only where it is reused: in range queries and inside another subquery.

use std::collections::HashMap;
use std::sync::Arc;

use promql_parser::parser::SubqueryExpr;

use crate::ast::{DEFAULT_SUBQUERY_STEP_MS, at_ms, dur_ms, offset_ms};
use crate::error::{Result, exec_err};
use crate::eval::Evaluator;
use crate::value::{MatrixVal, Metric, RSeries, Sample, Val};

/// Bytes of one unit of [`Evaluator::hold`]: a fetched sample (timestamp and value).
const UNIT_BYTES: usize = std::mem::size_of::<norn_model::Sample>();

/// Units one cached subquery step costs beyond its samples: its map entry, with the slack
/// of a B-tree node.
const CACHE_ENTRY_UNITS: usize =
    (2 * (std::mem::size_of::<i64>() + std::mem::size_of::<Val>())).div_ceil(UNIT_BYTES);

/// Units one sample of an instant vector (labels shared, value, flag) costs.
const VECTOR_SAMPLE_UNITS: usize = std::mem::size_of::<Sample>().div_ceil(UNIT_BYTES);

/// What a cached subquery step costs against `max_samples`.
fn cache_units(v: &Val) -> usize {
    let samples = match v {
        Val::Vector(vec) => vec.len() * VECTOR_SAMPLE_UNITS,
        Val::Matrix(m) => m.series.iter().map(|s| s.points.len()).sum(),
        Val::Scalar(_) | Val::Str(_) => 1,
    };
    CACHE_ENTRY_UNITS + samples
}

impl Evaluator<'_> {
    pub(crate) fn eval_subquery(&mut self, sq: &SubqueryExpr, t: i64) -> Result<MatrixVal> {
        let ref_t = at_ms(&sq.at, self.query_start, self.query_end)
            .unwrap_or(t)
            .saturating_sub(offset_ms(&sq.offset));
        let range = dur_ms(&sq.range);
        let step = sq
            .step
            .as_ref()
            .map(dur_ms)
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
        let start = ref_t.saturating_sub(range);
        // First step-aligned timestamp strictly after the window start.
        let Some(mut ts) = start
            .div_euclid(step)
            .checked_mul(step)
            .and_then(|x| x.checked_add(step))
        else {
            return Ok(MatrixVal {
                series: Vec::new(),
                range_start: start,
                range_end: ref_t,
            });
        };
        let mut by_labels: HashMap<Metric, usize> = HashMap::new();
        let mut series: Vec<RSeries> = Vec::new();
        let mut total = 0usize;
        let key = sq as *const SubqueryExpr as usize;
        let first_ts = ts;
        // Only a subquery evaluated at several outer times (the steps of a range query, or
        // inside another subquery) can reuse its inner results; in an instant query's own
        // subquery the cache would only double the memory.
        let use_cache = self.range_mode || self.subquery_depth > 0;
        while ts <= ref_t {
            self.check_deadline()?;
            let cached = if use_cache {
                self.subquery_cache
                    .get(&key)
                    .and_then(|c| c.get(&ts))
                    .cloned()
            } else {
                None
            };
            let val = match cached {
                Some(v) => v,
                None => {
                    self.subquery_depth += 1;
                    let v = self.eval(&sq.expr, ts);
                    self.subquery_depth -= 1;
                    let v = v?;
                    // Empty steps are cheap to redo and can be countless (a long window over
                    // sparse data): caching them would only cost memory.
                    if use_cache && !matches!(&v, Val::Vector(vec) if vec.is_empty()) {
                        self.hold(cache_units(&v))?;
                        self.subquery_cache
                            .entry(key)
                            .or_default()
                            .insert(ts, v.clone());
                    }
                    v
                }
            };
            let n = match val {
                Val::Scalar(v) => {
                    push_point(&mut by_labels, &mut series, Metric::default(), false, ts, v);
                    1
                }
                Val::Vector(vec) => {
                    let n = vec.len();
                    for s in vec {
                        push_point(&mut by_labels, &mut series, s.metric, s.drop_name, ts, s.v);
                    }
                    n
                }
                other => {
                    return exec_err(format!(
                        "subquery over {} is not allowed",
                        other.type_name()
                    ));
                }
            };
            total += n;
            self.hold(n)?;
            match ts.checked_add(step) {
                Some(n) => ts = n,
                None => break,
            }
        }
        // Outer steps move forward in time: what lies before this window is not needed again.
        if let Some(c) = self.subquery_cache.get_mut(&key) {
            let keep = c.split_off(&first_ts);
            let dropped: usize = c.values().map(cache_units).sum();
            *c = keep;
            self.release(dropped);
        }
        // The result lives only until its caller has consumed it; its peak was counted.
        self.release(total);
        series.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(MatrixVal {
            series,
            range_start: start,
            range_end: ref_t,
        })
    }
}

fn push_point(
    idx: &mut HashMap<Metric, usize>,
    series: &mut Vec<RSeries>,
    metric: Metric,
    drop_name: bool,
    t: i64,
    v: f64,
) {
    match idx.get(&metric) {
        Some(&i) => {
            series[i].points.push((t, v));
            series[i].drop_name |= drop_name;
        }
        None => {
            idx.insert(Arc::clone(&metric), series.len());
            series.push(RSeries {
                metric,
                points: vec![(t, v)],
                drop_name,
            });
        }
    }
}
