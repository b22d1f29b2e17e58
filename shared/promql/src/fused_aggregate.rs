//! Aggregations straight over a sliding range function (`sum by (mode) (rate(x[5m]))`) in a
//! range query: the walk's bare values go into the groups' accumulators, without a labelled
//! sample per series per step.
//!
//! At a dashboard's size (thousands of series, hundreds of steps) building and regrouping
//! those samples cost about as much as the walk itself. The accumulators are the ones the
//! ordinary path uses, fed the same values in the same (series) order, so every result is
//! the same to the last bit, and the groups come out in the same first-seen order.

use std::sync::Arc;

use norn_model::METRIC_NAME;
use promql_parser::parser::{AggregateExpr, Call, Expr, token};

use crate::ast::{aggregate_key, unwrap_parens};
use crate::error::Result;
use crate::eval::Evaluator;
use crate::math::{AvgAcc, VarAcc, kahan_inc};
use crate::range_fn::RangeFn;
use crate::sliding::Fusion;
use crate::value::Sample;

/// One group's running aggregate at one step.
#[derive(Debug, Clone)]
pub(crate) enum Acc {
    Sum { sum: f64, c: f64 },
    Avg(AvgAcc),
    Count(f64),
    Group,
    Min(f64),
    Max(f64),
    Var { acc: VarAcc, sqrt: bool },
}

impl Acc {
    /// An empty accumulator for aggregation `op`, `None` for one this module does not fuse.
    pub(crate) fn new(op: token::TokenId) -> Option<Self> {
        Some(match op {
            token::T_SUM => Self::Sum { sum: 0.0, c: 0.0 },
            token::T_AVG => Self::Avg(AvgAcc::default()),
            token::T_COUNT => Self::Count(0.0),
            token::T_GROUP => Self::Group,
            token::T_MIN => Self::Min(f64::NAN),
            token::T_MAX => Self::Max(f64::NAN),
            token::T_STDDEV => Self::Var {
                acc: VarAcc::default(),
                sqrt: true,
            },
            token::T_STDVAR => Self::Var {
                acc: VarAcc::default(),
                sqrt: false,
            },
            _ => return None,
        })
    }

    #[inline]
    pub(crate) fn add(&mut self, v: f64) {
        match self {
            Self::Sum { sum, c } => (*sum, *c) = kahan_inc(v, *sum, *c),
            Self::Avg(acc) => acc.add(v),
            Self::Count(n) => *n += 1.0,
            Self::Group => {}
            Self::Min(m) => {
                if m.is_nan() || v < *m {
                    *m = v;
                }
            }
            Self::Max(m) => {
                if m.is_nan() || v > *m {
                    *m = v;
                }
            }
            Self::Var { acc, .. } => acc.add(v),
        }
    }

    pub(crate) fn value(&self) -> f64 {
        match self {
            Self::Sum { sum, c } => {
                if sum.is_infinite() {
                    *sum
                } else {
                    sum + c
                }
            }
            Self::Avg(acc) => acc.value(),
            Self::Count(n) => *n,
            Self::Group => 1.0,
            Self::Min(m) | Self::Max(m) => *m,
            Self::Var { acc, sqrt } => {
                let var = acc.variance();
                if *sqrt { var.sqrt() } else { var }
            }
        }
    }
}

/// Most groups an aggregation accumulates inside the walk: each step of a chunk keeps a
/// place per group (4 bytes), so a `by` over many groups takes the walk's values instead.
/// Two in unit tests, so that their queries take both ways.
const MAX_WALK_GROUPS: usize = if cfg!(test) { 2 } else { 1024 };
/// Most series whose aggregation accumulates inside the walk: each thread after the first
/// walks every series with windows of its own (some 500 bytes a series), so beyond this
/// the walk splits the series and hands over their values instead.
const MAX_WALK_SERIES: usize = 65_536;

/// Whether a range query at `step` has about as many steps as the series have samples (a
/// step no longer than 1.5 sample intervals, read from the first chunk's header), where
/// accumulating inside the walk pays: its later threads first decode from the start of the
/// chunk holding their first window, work per sample, against the per-step values it
/// saves, work per window. With fewer steps than samples (a dashboard's step of 1m over
/// 15s scrapes) that extra decoding costs more than it saves: measured 16-19 against 20 ms
/// at 10k series, 47-54 against 62-66 ms at 50k.
fn steps_outnumber_samples(fetched: &[crate::value::FetchedSeries], step: i64) -> bool {
    let Some(c) = fetched
        .iter()
        .flat_map(|s| s.chunks.iter())
        .find(|c| c.data.len() >= 2)
    else {
        return false;
    };
    let n = i64::from(u16::from_be_bytes([c.data[0], c.data[1]]));
    if n < 2 {
        return false;
    }
    let interval = (c.max_t - c.min_t) / (n - 1);
    interval > 0 && step.saturating_mul(2) <= interval.saturating_mul(3)
}

/// The sliding range function call `a` aggregates directly, if `a` is an aggregation this
/// module fuses with it (no parameter; `topk`, `quantile` and the like keep the ordinary
/// path).
fn fused_call(a: &AggregateExpr) -> Option<&Call> {
    if a.param.is_some() || Acc::new(a.op.id()).is_none() {
        return None;
    }
    match unwrap_parens(&a.expr) {
        Expr::Call(c) => Some(c),
        _ => None,
    }
}

impl Evaluator<'_> {
    /// The value of aggregation `a` at step `t` computed from its sliding range function's
    /// bare values, or `None` when `a` is not such an aggregation or the step is left to the
    /// ordinary path (which then reports whatever error the step runs into).
    pub(crate) fn fused_aggregate(
        &mut self,
        a: &AggregateExpr,
        t: i64,
    ) -> Result<Option<Vec<Sample>>> {
        let Some(c) = fused_call(a) else {
            return Ok(None);
        };
        let Some(f) = RangeFn::parse(c.func.name) else {
            return Ok(None);
        };
        let op = a.op.id();
        let key = aggregate_key(a);
        let mut cache = self.group_caches.remove(&key).unwrap_or_default();
        let fetched = self.sliding_selector_series(c);
        cache.begin(fetched.len());
        let groups = cache.take_series_groups(fetched, a.modifier.as_ref());
        let ngroups = cache.group_count();
        let in_walk = ngroups <= MAX_WALK_GROUPS
            && fetched.len() <= MAX_WALK_SERIES
            && steps_outnumber_samples(fetched, self.query_step);
        let accs = if in_walk {
            // Few groups: accumulated as the walk goes, on its threads.
            let fusion = Fusion {
                groups: &groups,
                ngroups,
                empty: Acc::new(op).expect("fused_call checked the operator"),
            };
            self.sliding_fused(c, t, &fusion).and_then(|step| {
                step.map(|s| self.work(s.values).map(|()| s.accs))
                    .transpose()
            })
        } else {
            self.sliding_values(c, t).and_then(|step| {
                step.map(|(values, _)| {
                    self.work(values.len())?;
                    // (group id, accumulator) in the order the groups first appear at
                    // this step.
                    let mut accs: Vec<(usize, Acc)> = Vec::new();
                    for &(i, v) in &values {
                        let g = groups[i];
                        let gi = match cache.output_index(g, accs.len()) {
                            Some(gi) => gi,
                            None => {
                                let acc = Acc::new(op).expect("fused_call checked the operator");
                                accs.push((g, acc));
                                accs.len() - 1
                            }
                        };
                        accs[gi].1.add(v);
                    }
                    self.sliding_give_back(c, values);
                    Ok(accs)
                })
                .transpose()
            })
        };
        cache.put_series_groups(groups);
        let accs = match accs {
            Ok(Some(accs)) => accs,
            other => {
                self.group_caches.insert(key, cache);
                return other.map(|_| None);
            }
        };
        // Every input sample of the step had the same name handling: the function's.
        let drop_name = !f.keeps_name();
        let out = accs
            .iter()
            .map(|(g, acc)| {
                let labels = cache.labels(*g);
                Sample {
                    metric: Arc::clone(labels),
                    v: acc.value(),
                    drop_name: drop_name && labels.get(METRIC_NAME).is_some(),
                }
            })
            .collect();
        self.group_caches.insert(key, cache);
        Ok(Some(out))
    }
}
