//! Combining the answers of a sharded query's legs, and evaluating the aggregations above
//! the sharded one, step by step.
//!
//! Every leg answers the same aggregation over its own shard of the series. Per step, the
//! legs' samples are gathered and combined as [`Combine`] says: a group that appears in
//! several legs is one group of the whole query cut in pieces, so its pieces are summed
//! (`sum`, and the counts of `count`), or the min/max/group taken, or `sum/count` for `avg`;
//! `topk`/`bottomk` take the best `k` per group of the union of the legs' best `k`, which are
//! the best `k` of the whole. Values follow the engine's rules: NaN loses to any number in
//! `min`/`max` and in `topk`/`bottomk`, sums are compensated (Kahan–Neumaier). Values are
//! written back with the querier's float format, series ordered by labels.
//!
//! Instant queries answer a vector: [`parse_vector`] and [`write_vector`] read and write it
//! in the querier's format, as `response` does for matrices.

use std::collections::{BTreeMap, HashMap};

use norn_server::prom_json::{
    format_value, write_annotations, write_str, write_timestamp, write_value,
};
use serde::Deserialize;

use crate::response::{LabelPairs, Matrix, PointValue, SeriesData, parse_success};
use crate::sharding::{AggOp, Combine, Grouping, ShardPlan, Stage};

/// Samples per step: `timestamp → [(labels, value)]`.
pub type Steps = BTreeMap<i64, Vec<(LabelPairs, f64)>>;

/// An instant query's answer: a vector, and its annotations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vector {
    /// `(labels, timestamp, value as written)`.
    pub samples: Vec<(LabelPairs, i64, String)>,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: Option<(f64, String)>,
    /// A native histogram sample cannot be combined (the engine writes none today).
    #[serde(default)]
    histogram: Option<serde_json::Value>,
}

/// Parses a successful instant query answer of type vector.
pub fn parse_vector(body: &[u8]) -> Result<Vector, String> {
    let env = parse_success::<RawSample>(body, "vector", "sharded instant query")?;
    let mut samples = Vec::with_capacity(env.result.len());
    for s in env.result {
        if s.histogram.is_some() {
            return Err("native histogram samples cannot be combined yet".into());
        }
        let (t, v) = s.value.ok_or("vector sample without a value")?;
        samples.push((
            s.metric.into_iter().collect(),
            (t * 1000.0).round() as i64,
            v,
        ));
    }
    Ok(Vector {
        samples,
        warnings: env.warnings,
        infos: env.infos,
    })
}

/// The instant query success envelope, as the querier writes it.
pub fn write_vector(v: &Vector) -> String {
    let mut out = String::with_capacity(64 + v.samples.len() * 64);
    out.push_str("{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[");
    for (i, (labels, t, value)) in v.samples.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":{");
        for (j, (n, lv)) in labels.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            write_str(&mut out, n);
            out.push(':');
            write_str(&mut out, lv);
        }
        out.push_str("},\"value\":[");
        write_timestamp(&mut out, *t);
        out.push(',');
        write_str(&mut out, value);
        out.push_str("]}");
    }
    out.push_str("]}");
    write_annotations(&mut out, &v.warnings, &v.infos);
    out.push('}');
    out
}

/// A value as the querier wrote it (`"1.5"`, `"NaN"`, `"+Inf"`).
fn value(s: &str) -> Result<f64, String> {
    s.parse()
        .map_err(|_| format!("unreadable sample value {s:?} in a querier answer"))
}

/// A matrix's samples by step.
pub fn steps_of_matrix(m: Matrix, into: &mut Steps) -> Result<(), String> {
    for s in m.series {
        for (t, v) in s.points {
            into.entry(t)
                .or_default()
                .push((s.labels.clone(), value(&v)?));
        }
    }
    Ok(())
}

/// A vector's samples (all at one step).
pub fn steps_of_vector(v: Vector, into: &mut Steps) -> Result<(), String> {
    for (labels, t, v) in v.samples {
        into.entry(t).or_default().push((labels, value(&v)?));
    }
    Ok(())
}

/// Steps as a matrix: series ordered by labels, points by time.
pub fn matrix_of_steps(steps: Steps) -> Matrix {
    let mut series: BTreeMap<LabelPairs, Vec<(i64, PointValue)>> = BTreeMap::new();
    // One text buffer for every value: a point's value is held inline (`PointValue`), so
    // a `String` per point would be an allocation per point only to be copied and freed.
    let mut text = String::with_capacity(32);
    for (t, samples) in steps {
        for (labels, v) in samples {
            text.clear();
            write_value(&mut text, v);
            series
                .entry(labels)
                .or_default()
                .push((t, PointValue::from(text.as_str())));
        }
    }
    Matrix {
        series: series
            .into_iter()
            .map(|(labels, points)| SeriesData { labels, points })
            .collect(),
        ..Matrix::default()
    }
}

/// Steps as a vector, ordered by labels.
pub fn vector_of_steps(steps: Steps) -> Vector {
    let mut samples: Vec<(LabelPairs, i64, String)> = steps
        .into_iter()
        .flat_map(|(t, s)| s.into_iter().map(move |(l, v)| (l, t, format_value(v))))
        .collect();
    samples.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    Vector {
        samples,
        ..Vector::default()
    }
}

/// The sharded query's answer from its legs' answers (`parts[p]`: every leg of part `p`,
/// gathered by step), with the aggregations above it applied.
pub fn combine(plan: &ShardPlan, parts: Vec<Steps>) -> Steps {
    let mut parts = parts.into_iter();
    let first = parts.next().unwrap_or_default();
    let mut out: Steps = match &plan.combine {
        Combine::Groups(op) => first
            .into_iter()
            .map(|(t, s)| (t, aggregate(*op, &Grouping::Identity, s)))
            .collect(),
        Combine::Top(stage) => first
            .into_iter()
            .map(|(t, s)| (t, aggregate(stage.op, &stage.grouping, s)))
            .collect(),
        Combine::Avg => {
            let mut counts = parts.next().unwrap_or_default();
            first
                .into_iter()
                .map(|(t, sums)| {
                    let sums = aggregate(AggOp::Sum, &Grouping::Identity, sums);
                    let counts: HashMap<LabelPairs, f64> = aggregate(
                        AggOp::Sum,
                        &Grouping::Identity,
                        counts.remove(&t).unwrap_or_default(),
                    )
                    .into_iter()
                    .collect();
                    let avgs = sums
                        .into_iter()
                        .filter_map(|(l, s)| counts.get(&l).map(|c| (s / c, l)))
                        .map(|(v, l)| (l, v))
                        .collect();
                    (t, avgs)
                })
                .collect()
        }
    };
    for Stage { op, grouping } in &plan.outer {
        out = out
            .into_iter()
            .map(|(t, s)| (t, aggregate(*op, grouping, s)))
            .collect();
    }
    out.retain(|_, s| !s.is_empty());
    out
}

/// The labels of a sample's group.
fn group_key(labels: &LabelPairs, grouping: &Grouping) -> LabelPairs {
    match grouping {
        Grouping::Identity => labels.clone(),
        Grouping::By(names) => labels
            .iter()
            .filter(|(n, v)| !v.is_empty() && names.iter().any(|x| x == n))
            .cloned()
            .collect(),
        Grouping::Without(names) => labels
            .iter()
            .filter(|(n, v)| {
                !v.is_empty() && n != norn_model::METRIC_NAME && !names.iter().any(|x| x == n)
            })
            .cloned()
            .collect(),
    }
}

/// One aggregation of one step's samples, with the engine's semantics.
pub fn aggregate(
    op: AggOp,
    grouping: &Grouping,
    samples: Vec<(LabelPairs, f64)>,
) -> Vec<(LabelPairs, f64)> {
    // Groups in first-seen order.
    let mut index: HashMap<LabelPairs, usize> = HashMap::new();
    let mut groups: Vec<(LabelPairs, Vec<(LabelPairs, f64)>)> = Vec::new();
    for (labels, v) in samples {
        let key = group_key(&labels, grouping);
        let i = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push((labels, v));
    }
    let mut out = Vec::with_capacity(groups.len());
    for (key, members) in groups {
        let vals = members.iter().map(|m| m.1);
        let v = match op {
            AggOp::Sum => kahan_sum(vals),
            AggOp::Count => members.len() as f64,
            AggOp::Group => 1.0,
            AggOp::Avg => kahan_sum(vals) / members.len() as f64,
            AggOp::Min => vals.fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }),
            AggOp::Max => vals.fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }),
            AggOp::TopK(k) | AggOp::BottomK(k) => {
                let top = matches!(op, AggOp::TopK(_));
                let mut members = members;
                // NaN always loses; ties keep input order (a stable sort).
                members.sort_by(|(_, a), (_, b)| match (a.is_nan(), b.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if top => b.total_cmp(a),
                    _ => a.total_cmp(b),
                });
                members.truncate(k);
                out.extend(members);
                continue;
            }
        };
        out.push((key, v));
    }
    out
}

/// A compensated sum (Kahan–Neumaier), as the engine sums.
fn kahan_sum(vals: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0f64, 0.0f64);
    for v in vals {
        let t = sum + v;
        if t.is_infinite() {
            c = 0.0;
        } else if sum.abs() >= v.abs() {
            c += (sum - t) + v;
        } else {
            c += (v - t) + sum;
        }
        sum = t;
    }
    if c.is_finite() { sum + c } else { sum }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharding::analyse;

    fn l(pairs: &[(&str, &str)]) -> LabelPairs {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn step(samples: &[(&[(&str, &str)], f64)]) -> Steps {
        let mut s = Steps::new();
        s.insert(
            1000,
            samples.iter().map(|(p, v)| (l(p), *v)).collect::<Vec<_>>(),
        );
        s
    }

    fn only(s: Steps) -> Vec<(LabelPairs, f64)> {
        let mut v = s.into_values().next().unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn sums_of_sums_and_counts() {
        let plan = analyse("sum by (job) (x)", 2).unwrap();
        let legs = step(&[
            (&[("job", "a")], 1.0),
            (&[("job", "b")], 2.0),
            (&[("job", "a")], 3.0),
        ]);
        assert_eq!(
            only(combine(&plan, vec![legs.clone()])),
            [(l(&[("job", "a")]), 4.0), (l(&[("job", "b")]), 2.0)]
        );
        let plan = analyse("count by (job) (x)", 2).unwrap();
        assert_eq!(only(combine(&plan, vec![legs]))[0].1, 4.0);
    }

    #[test]
    fn min_max_keep_numbers_over_nan() {
        let legs = step(&[(&[], f64::NAN), (&[], 3.0), (&[], 1.0)]);
        let min = analyse("min(x)", 3).unwrap();
        let max = analyse("max(x)", 3).unwrap();
        assert_eq!(only(combine(&min, vec![legs.clone()]))[0].1, 1.0);
        assert_eq!(only(combine(&max, vec![legs]))[0].1, 3.0);
        let nan = step(&[(&[], f64::NAN), (&[], f64::NAN)]);
        assert!(only(combine(&min, vec![nan]))[0].1.is_nan());
    }

    #[test]
    fn avg_is_sum_over_count() {
        let plan = analyse("avg by (job) (x)", 2).unwrap();
        let sums = step(&[(&[("job", "a")], 6.0), (&[("job", "a")], 4.0)]);
        let counts = step(&[(&[("job", "a")], 2.0), (&[("job", "a")], 3.0)]);
        assert_eq!(only(combine(&plan, vec![sums, counts]))[0].1, 2.0);
    }

    #[test]
    fn topk_of_topks_per_group() {
        let plan = analyse("topk by (job) (1, x)", 2).unwrap();
        let legs = step(&[
            (&[("__name__", "x"), ("job", "a"), ("i", "1")], 5.0),
            (&[("__name__", "x"), ("job", "b"), ("i", "2")], 1.0),
            (&[("__name__", "x"), ("job", "a"), ("i", "3")], 7.0),
            (&[("__name__", "x"), ("job", "b"), ("i", "4")], f64::NAN),
        ]);
        let got = only(combine(&plan, vec![legs]));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, l(&[("__name__", "x"), ("job", "a"), ("i", "3")]));
        assert_eq!(got[1].1, 1.0);
        let plan = analyse("bottomk(1, x)", 2).unwrap();
        let legs = step(&[(&[("i", "1")], 5.0), (&[("i", "2")], -1.0)]);
        assert_eq!(only(combine(&plan, vec![legs]))[0].1, -1.0);
    }

    #[test]
    fn outer_aggregations_run_over_the_combined_groups() {
        let plan = analyse("max(sum by (job) (x))", 2).unwrap();
        // Job a is 1+3 = 4 over two legs, b is 3 in one: the max is 4, not 3.
        let legs = step(&[
            (&[("job", "a")], 1.0),
            (&[("job", "b")], 3.0),
            (&[("job", "a")], 3.0),
        ]);
        assert_eq!(only(combine(&plan, vec![legs])), [(l(&[]), 4.0)]);
        let plan = analyse("count without (i) (sum by (i, job) (x))", 2).unwrap();
        let legs = step(&[
            (&[("i", "1"), ("job", "a")], 1.0),
            (&[("i", "2"), ("job", "a")], 1.0),
            (&[("i", "1"), ("job", "a")], 1.0),
        ]);
        assert_eq!(
            only(combine(&plan, vec![legs])),
            [(l(&[("job", "a")]), 2.0)]
        );
    }

    #[test]
    fn vectors_round_trip_in_the_querier_format() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"a"},"value":[1.500,"NaN"]},{"metric":{},"value":[1.500,"2"]}]},"warnings":["w"]}"#;
        let v = parse_vector(body.as_bytes()).unwrap();
        assert_eq!(v.samples[0].1, 1500);
        assert_eq!(write_vector(&v), body);
        assert!(
            parse_vector(
                br#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#
            )
            .is_err()
        );
        assert!(parse_vector(b"{").is_err());
        let mut steps = Steps::new();
        steps_of_vector(v, &mut steps).unwrap();
        let out = vector_of_steps(steps);
        assert_eq!(out.samples[0].0, l(&[]));
        assert_eq!(out.samples[1].2, "NaN");
    }
}
