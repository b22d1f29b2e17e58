//! The experimental `info()` function: enriches series with the data labels of info metrics
//! (`target_info` by default) that share their identifying labels (`instance`, `job`),
//! looked up as of the same time the base series was read (honouring `@` and `offset`).

use std::collections::BTreeMap;

use norn_model::{Labels, METRIC_NAME, MatchType, Matcher, is_stale_nan};

use promql_parser::parser::{Call, Expr};

use crate::ast::{at_ms, call_key, offset_ms, selector_matchers};
use crate::error::{PromqlError, Result, exec_err};
use crate::eval::Evaluator;
use crate::value::{Sample, Val};

const IDENTIFYING: [&str; 2] = ["instance", "job"];
const DEFAULT_INFO_METRIC: &str = "target_info";

fn selector_arg(c: &Call) -> Option<&promql_parser::parser::VectorSelector> {
    match c.args.args.get(1).map(|b| b.as_ref()) {
        Some(Expr::VectorSelector(vs)) => Some(vs),
        _ => None,
    }
}

/// Storage matchers for the info series: the selector's, defaulting the name to
/// `target_info`.
pub(crate) fn info_matchers(c: &Call) -> Result<Vec<Vec<Matcher>>> {
    let mut groups = match selector_arg(c) {
        Some(vs) => selector_matchers(vs)?,
        None => vec![Vec::new()],
    };
    for g in &mut groups {
        let mut names = g.iter().filter(|m| m.name == METRIC_NAME).peekable();
        if names.peek().is_none() {
            g.push(Matcher::equal(METRIC_NAME, DEFAULT_INFO_METRIC));
        } else if names.all(|m| matches!(m.kind, MatchType::NotEqual | MatchType::NotRegex)) {
            // Only exclusions given: the candidates are still info metrics, not every series.
            let m = Matcher::new(MatchType::Regex, METRIC_NAME, ".+_info")
                .map_err(|e| PromqlError::Internal(e.to_string()))?;
            g.push(m);
        }
    }
    Ok(groups)
}

/// The time at which `e`, evaluated at `t`, reads its series: `@` and `offset` of the
/// selector or subquery that feeds it.
fn ref_time(e: &Expr, t: i64, qstart: i64, qend: i64) -> Option<i64> {
    match e {
        Expr::VectorSelector(vs) => Some(
            at_ms(&vs.at, qstart, qend)
                .unwrap_or(t)
                .saturating_sub(offset_ms(&vs.offset)),
        ),
        Expr::MatrixSelector(ms) => Some(
            at_ms(&ms.vs.at, qstart, qend)
                .unwrap_or(t)
                .saturating_sub(offset_ms(&ms.vs.offset)),
        ),
        Expr::Subquery(sq) => {
            let r = at_ms(&sq.at, qstart, qend)
                .unwrap_or(t)
                .saturating_sub(offset_ms(&sq.offset));
            Some(ref_time(&sq.expr, r, qstart, qend).unwrap_or(r))
        }
        Expr::Paren(p) => ref_time(&p.expr, t, qstart, qend),
        Expr::Unary(u) => ref_time(&u.expr, t, qstart, qend),
        Expr::Aggregate(a) => ref_time(&a.expr, t, qstart, qend),
        Expr::Binary(b) => {
            ref_time(&b.lhs, t, qstart, qend).or_else(|| ref_time(&b.rhs, t, qstart, qend))
        }
        Expr::Call(c) => c
            .args
            .args
            .iter()
            .find_map(|a| ref_time(a, t, qstart, qend)),
        _ => None,
    }
}

impl Evaluator<'_> {
    pub(crate) fn eval_info(&mut self, c: &Call, t: i64) -> Result<Val> {
        let Some(base_expr) = c.args.args.first() else {
            return exec_err("info() needs an argument");
        };
        let base = self.eval_vector(base_expr, t)?;
        let rt = ref_time(base_expr, t, self.query_start, self.query_end).unwrap_or(t);
        let sel = info_matchers(c)?;
        let name_matchers: Vec<&Matcher> =
            sel[0].iter().filter(|m| m.name == METRIC_NAME).collect();
        // Any label matcher (identifying ones too) limits which labels get copied.
        let data_matchers: Vec<&Matcher> =
            sel[0].iter().filter(|m| m.name != METRIC_NAME).collect();
        let all_match_empty = data_matchers.iter().all(|m| m.matches_empty());
        // Info series current at the reference time, with their sample timestamps.
        let mut current: Vec<(&Labels, i64)> = Vec::new();
        for s in self
            .data
            .get(&call_key(c))
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let hi = s.samples.partition_point(|x| x.t <= rt);
            if hi == 0 {
                continue;
            }
            let last = s.samples[hi - 1];
            if last.t <= rt.saturating_sub(self.lookback) || is_stale_nan(last.v) {
                continue;
            }
            current.push((&s.labels, last.t));
        }
        let mut out = Vec::with_capacity(base.len());
        for smp in base {
            let name = smp.metric.get(METRIC_NAME).unwrap_or("");
            let is_info =
                !name_matchers.is_empty() && name_matchers.iter().all(|m| m.matches(name));
            let has_ident = IDENTIFYING.iter().any(|l| smp.metric.get(l).is_some());
            if is_info {
                out.push(smp);
                continue;
            }
            // Latest matching info series per info metric name.
            let mut chosen: BTreeMap<&str, (&Labels, i64)> = BTreeMap::new();
            if has_ident {
                for &(l, ts) in &current {
                    if IDENTIFYING
                        .iter()
                        .any(|n| l.get(n).unwrap_or("") != smp.metric.get(n).unwrap_or(""))
                    {
                        continue;
                    }
                    let metric = l.get(METRIC_NAME).unwrap_or("");
                    match chosen.get(metric) {
                        Some(&(_, prev)) if prev >= ts => {}
                        _ => {
                            chosen.insert(metric, (l, ts));
                        }
                    }
                }
            }
            if chosen.is_empty() {
                if all_match_empty {
                    out.push(smp);
                }
                continue;
            }
            let mut added: BTreeMap<String, String> = BTreeMap::new();
            for (l, _) in chosen.values() {
                for lbl in l.iter() {
                    if lbl.name == METRIC_NAME || IDENTIFYING.contains(&lbl.name.as_str()) {
                        continue;
                    }
                    if !data_matchers.is_empty()
                        && !data_matchers.iter().any(|m| m.name == lbl.name)
                    {
                        continue;
                    }
                    if smp.metric.get(&lbl.name).is_some() {
                        continue;
                    }
                    if let Some(prev) = added.get(&lbl.name)
                        && *prev != lbl.value
                    {
                        return exec_err(format!(
                            "conflicting label: {} has values {prev:?} and {:?} in info metrics",
                            lbl.name, lbl.value
                        ));
                    }
                    added.insert(lbl.name.clone(), lbl.value.clone());
                }
            }
            let mut metric = smp.metric;
            for (n, v) in &added {
                std::sync::Arc::make_mut(&mut metric).set(n, v);
            }
            out.push(Sample { metric, ..smp });
        }
        Ok(Val::Vector(out))
    }
}

#[cfg(test)]
fn is_name_equal(m: &Matcher) -> bool {
    m.name == METRIC_NAME && m.kind == MatchType::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(q: &str) -> Call {
        match promql_parser::parser::parse(q) {
            Ok(Expr::Call(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn negative_name_matchers_still_select_info_metrics() {
        let m = info_matchers(&call("info(up, {__name__!=\"target_info\", a=\"b\"})")).unwrap();
        assert!(
            m[0].iter()
                .any(|m| m.name == METRIC_NAME && m.kind == MatchType::Regex)
        );
    }

    #[test]
    fn default_selector_is_target_info() {
        let c = match promql_parser::parser::parse("info(up)") {
            Ok(Expr::Call(c)) => c,
            other => panic!("{other:?}"),
        };
        let m = info_matchers(&c).unwrap();
        assert!(
            m[0].iter()
                .any(|m| is_name_equal(m) && m.value == DEFAULT_INFO_METRIC)
        );
    }
}
