//! Binary operators: arithmetic and comparisons between scalars and vectors, vector
//! matching (`on`, `ignoring`, `group_left`/`group_right`, fill values) and the set
//! operators `and`, `or`, `unless`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use norn_model::{Labels, METRIC_NAME};
use promql_parser::parser::token::{self, TokenType};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use crate::error::{Result, exec_err};
use crate::eval::Evaluator;
use crate::value::{Metric, Sample, Val, final_labels};

impl Evaluator<'_> {
    pub(crate) fn eval_binary(&mut self, b: &BinaryExpr, t: i64) -> Result<Val> {
        let op = b.op;
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => {
                let (v, keep) = scalar_binop(op, l, r)?;
                if is_comparison(op) {
                    // Comparisons between scalars always carry `bool`.
                    Ok(Val::Scalar(if keep { 1.0 } else { 0.0 }))
                } else {
                    Ok(Val::Scalar(v))
                }
            }
            (Val::Vector(vec), Val::Scalar(s)) => {
                Ok(Val::Vector(vector_scalar(op, vec, s, false, return_bool)?))
            }
            (Val::Scalar(s), Val::Vector(vec)) => {
                Ok(Val::Vector(vector_scalar(op, vec, s, true, return_bool)?))
            }
            (Val::Vector(l), Val::Vector(r)) => {
                let modifier = b.modifier.as_ref();
                let matching = modifier.and_then(|m| m.matching.clone());
                let card = modifier
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                let id = op.id();
                if id == token::T_LAND || id == token::T_LOR || id == token::T_LUNLESS {
                    Ok(Val::Vector(set_op(id, l, r, matching.as_ref())))
                } else {
                    let fill = modifier
                        .map(|m| (m.fill_values.lhs, m.fill_values.rhs))
                        .unwrap_or((None, None));
                    Ok(Val::Vector(vector_binop(
                        op,
                        l,
                        r,
                        matching.as_ref(),
                        &card,
                        return_bool,
                        fill,
                    )?))
                }
            }
            (l, r) => exec_err(format!(
                "binary expression must contain only scalar and instant vector types, got {} and {}",
                l.type_name(),
                r.type_name()
            )),
        }
    }
}

pub(crate) fn is_comparison(op: TokenType) -> bool {
    op.is_comparison_operator()
}

/// Applies an arithmetic or comparison operator; returns the value and, for comparisons,
/// whether the comparison held.
pub(crate) fn scalar_binop(op: TokenType, l: f64, r: f64) -> Result<(f64, bool)> {
    let v = match op.id() {
        token::T_ADD => l + r,
        token::T_SUB => l - r,
        token::T_MUL => l * r,
        token::T_DIV => l / r,
        token::T_MOD => l % r,
        token::T_POW => l.powf(r),
        token::T_ATAN2 => l.atan2(r),
        token::T_EQLC => return Ok((l, l == r)),
        token::T_NEQ => return Ok((l, l != r)),
        token::T_GTR => return Ok((l, l > r)),
        token::T_LSS => return Ok((l, l < r)),
        token::T_GTE => return Ok((l, l >= r)),
        token::T_LTE => return Ok((l, l <= r)),
        _ => return exec_err(format!("operator {op} not allowed here")),
    };
    Ok((v, true))
}

fn vector_scalar(
    op: TokenType,
    vec: Vec<Sample>,
    s: f64,
    swap: bool,
    return_bool: bool,
) -> Result<Vec<Sample>> {
    let cmp = is_comparison(op);
    let mut out = Vec::with_capacity(vec.len());
    for mut smp in vec {
        let (l, r) = if swap { (s, smp.v) } else { (smp.v, s) };
        let (mut v, keep) = scalar_binop(op, l, r)?;
        if cmp && swap {
            // The vector element's value is what a filter keeps, whichever side it is on.
            v = r;
        }
        if return_bool {
            smp.v = if keep { 1.0 } else { 0.0 };
            smp.drop_name = true;
        } else if !keep {
            continue;
        } else {
            smp.v = v;
            if !cmp {
                smp.drop_name = true;
            }
        }
        out.push(smp);
    }
    Ok(out)
}

/// The key two samples are matched on: the `on` labels, or all but the `ignoring` labels
/// (and the metric name).
///
/// A 64-bit hash like Prometheus' signatures: no allocation per sample and step.
pub(crate) fn signature(m: &Labels, matching: Option<&LabelModifier>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    let mut add = |n: &str, v: &str| {
        h.update(n.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xff]);
    };
    match matching {
        Some(LabelModifier::Include(on)) => {
            for l in m.iter() {
                if on.labels.iter().any(|n| n == &l.name) {
                    add(&l.name, &l.value);
                }
            }
        }
        Some(LabelModifier::Exclude(ign)) => {
            for l in m.iter() {
                if l.name != METRIC_NAME && !ign.labels.iter().any(|n| n == &l.name) {
                    add(&l.name, &l.value);
                }
            }
        }
        None => {
            for l in m.iter() {
                if l.name != METRIC_NAME {
                    add(&l.name, &l.value);
                }
            }
        }
    }
    h.digest()
}

fn match_labels(m: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(on)) => m.keep(&on.labels),
        Some(LabelModifier::Exclude(ign)) => {
            let mut names: Vec<&str> = ign.labels.iter().map(String::as_str).collect();
            names.push(METRIC_NAME);
            m.drop_names(&names)
        }
        None => m.without_metric_name(),
    }
}

fn set_op(
    op: u16,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    matching: Option<&LabelModifier>,
) -> Vec<Sample> {
    match op {
        token::T_LAND => {
            let sigs: HashSet<u64> = rhs.iter().map(|s| signature(&s.metric, matching)).collect();
            lhs.into_iter()
                .filter(|s| sigs.contains(&signature(&s.metric, matching)))
                .collect()
        }
        token::T_LUNLESS => {
            let sigs: HashSet<u64> = rhs.iter().map(|s| signature(&s.metric, matching)).collect();
            lhs.into_iter()
                .filter(|s| !sigs.contains(&signature(&s.metric, matching)))
                .collect()
        }
        _ => {
            let sigs: HashSet<u64> = lhs.iter().map(|s| signature(&s.metric, matching)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|s| !sigs.contains(&signature(&s.metric, matching))),
            );
            out
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn vector_binop(
    op: TokenType,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    matching: Option<&LabelModifier>,
    card: &VectorMatchCardinality,
    return_bool: bool,
    fill: (Option<f64>, Option<f64>),
) -> Result<Vec<Sample>> {
    // `fill_left` stands in for a missing "many" side, `fill_right` for a missing "one"
    // side (sides as seen after group_right swaps them, as in Prometheus).
    let (fill_many, fill_one) = fill;
    if (lhs.is_empty() && fill_many.is_none()) || (rhs.is_empty() && fill_one.is_none()) {
        return Ok(Vec::new());
    }
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_sigs: HashMap<u64, usize> = HashMap::new();
    for (i, s) in one.iter().enumerate() {
        let sig = signature(&s.metric, matching);
        if let Some(&j) = one_sigs.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            let mut pair = [
                prom_labels_string(&one[j].metric),
                prom_labels_string(&s.metric),
            ];
            pair.sort();
            return exec_err(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                prom_labels_string(&match_labels(&s.metric, matching)),
                pair[0],
                pair[1]
            ));
        }
        one_sigs.insert(sig, i);
    }
    let include: Vec<String> = match card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            l.labels.clone()
        }
        _ => Vec::new(),
    };
    if matches!(card, VectorMatchCardinality::OneToOne) {
        // Checked before any filtering, so a comparison cannot hide an ambiguous match.
        let mut seen: HashSet<u64> = HashSet::new();
        let sigs: Vec<u64> = many
            .iter()
            .map(|s| signature(&s.metric, matching))
            .collect();
        for sig in &sigs {
            if one_sigs.contains_key(sig) && !seen.insert(*sig) {
                return exec_err(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                );
            }
        }
    }
    let cmp = is_comparison(op);
    let mut matched: HashMap<u64, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    let empty = Metric::default();
    let mut one_matched: HashSet<usize> = HashSet::new();
    for ms in &many {
        let sig = signature(&ms.metric, matching);
        let (one_metric, one_v) = match one_sigs.get(&sig) {
            Some(&oi) => {
                one_matched.insert(oi);
                (&one[oi].metric, one[oi].v)
            }
            None => match fill_one {
                Some(f) => (&empty, f),
                None => continue,
            },
        };
        let (l, r) = if one_to_many {
            (one_v, ms.v)
        } else {
            (ms.v, one_v)
        };
        let (mut v, keep) = scalar_binop(op, l, r)?;
        if return_bool {
            v = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        // Result labels come from the "many" side.
        let mut metric = Arc::clone(&ms.metric);
        if matches!(card, VectorMatchCardinality::OneToOne) {
            metric = match matching {
                Some(LabelModifier::Include(on)) => Arc::new(metric.keep(&on.labels)),
                Some(LabelModifier::Exclude(ign)) if !ign.labels.is_empty() => {
                    Arc::new(metric.drop_names(&ign.labels))
                }
                _ => metric,
            };
        }
        for ln in &include {
            match one_metric.get(ln) {
                Some(v) if !v.is_empty() => Arc::make_mut(&mut metric).set(ln, v),
                _ => Arc::make_mut(&mut metric).remove(ln),
            }
        }
        let drop_name = return_bool || !cmp || ms.drop_name;
        let entry = matched.entry(sig).or_default();
        if matches!(card, VectorMatchCardinality::OneToOne) {
            if !entry.is_empty() {
                return exec_err(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                );
            }
            entry.insert(Labels::empty());
        } else {
            let key = final_labels(&metric, drop_name);
            if !entry.insert(key) {
                return exec_err(
                    "multiple matches for labels: grouping labels must ensure unique matches",
                );
            }
        }
        out.push(Sample {
            metric,
            v,
            drop_name,
        });
    }
    if let Some(f) = fill_many {
        for (oi, os) in one.iter().enumerate() {
            if one_matched.contains(&oi) {
                continue;
            }
            let (l, r) = if one_to_many { (os.v, f) } else { (f, os.v) };
            let (mut v, keep) = scalar_binop(op, l, r)?;
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            out.push(Sample {
                metric: Arc::new(match_labels(&os.metric, matching)),
                v,
                drop_name: true,
            });
        }
    }
    Ok(out)
}

/// Prometheus' `labels.String()`: `{a="b", c="d"}` with the name as an ordinary label.
pub(crate) fn prom_labels_string(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}
