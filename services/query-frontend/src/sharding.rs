//! Query sharding's analysis: which queries can run as N legs over disjoint series, and the
//! legs' query text.
//!
//! A query is sharded when it is an aggregation the frontend can finish from partial answers
//! (`sum`, `count`, `min`, `max`, `avg` as `sum`/`count`, `group`, `topk`/`bottomk` with a
//! literal `k`; `by`/`without` or neither) over a *series-local* expression: one whose every
//! output series depends on one input series only — selectors, the `*_over_time` and
//! `rate` family, per-series math (`abs`, `clamp`, `round`, …), arithmetic and comparisons
//! with number literals, and subqueries of such expressions. Then every series, and so every
//! input of the aggregation, lives in exactly one shard (`__query_shard__`, see
//! `norn_model::shard`), each leg aggregates its shard, and the frontend combines the legs'
//! groups ([`crate::shard_merge`]): sums of sums, sums of counts, min of mins, max of maxes,
//! `sum/count` for `avg`, the top k of the legs' top k.
//!
//! Aggregations above the sharded one (`max(sum by (job) (rate(x[5m])))`) are evaluated by
//! the frontend over the combined groups, one step at a time, when they are of the same kinds.
//!
//! Anything else runs unsharded, and [`analyse`] says why: `quantile`, `stddev`,
//! `count_values`, `limitk` (the answer needs every input at once), binary operators
//! between vectors, `absent`, `label_replace` and the other label-rewriting or
//! series-creating functions, scalar arguments that are not literals, `or` selectors.
//! The rule is "provably shardable or not at all": a refusal costs only speed.

use promql_parser::label::{MatchOp, Matcher as PMatcher};
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use norn_model::{SHARD_LABEL, ShardSelector};

/// Functions whose output series is computed from one input series alone.
const SERIES_LOCAL_FUNCTIONS: &[&str] = &[
    // Range-vector functions.
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "holt_winters",
    "double_exponential_smoothing",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "last_over_time",
    "present_over_time",
    "mad_over_time",
    // Per-sample math.
    "abs",
    "ceil",
    "floor",
    "round",
    "exp",
    "ln",
    "log2",
    "log10",
    "sqrt",
    "sgn",
    "clamp",
    "clamp_min",
    "clamp_max",
    "timestamp",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
    "deg",
    "rad",
    // Date functions, with their vector argument (without one they make a series).
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "hour",
    "minute",
    "month",
    "year",
];

/// How series are grouped by an aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    /// `by (…)`; no modifier is `by ()`.
    By(Vec<String>),
    /// `without (…)`: also drops the metric name.
    Without(Vec<String>),
    /// Each distinct label set on its own (combining the legs' groups).
    Identity,
}

/// An aggregation the frontend evaluates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggOp {
    Sum,
    Count,
    Min,
    Max,
    Avg,
    Group,
    /// `topk`/`bottomk` with its `k` (already `>= 1`; smaller answers nothing).
    TopK(usize),
    BottomK(usize),
}

/// One aggregation: its operator and grouping.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub op: AggOp,
    pub grouping: Grouping,
}

/// A sharded query: the legs to run and how their answers combine.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// The aggregations each shard runs (one; `sum` and `count` for `avg`).
    parts: Vec<AggregateExpr>,
    /// How the legs' answers of each part combine, and (for `avg`) the parts with each other.
    pub combine: Combine,
    /// Aggregations above the sharded one, innermost first, evaluated over the combined
    /// answer.
    pub outer: Vec<Stage>,
    /// Number of shards.
    pub shards: usize,
}

/// How the legs' answers become the sharded aggregation's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Combine {
    /// The legs' groups are disjoint pieces of the same groups: apply `op` per label set.
    Groups(AggOp),
    /// `sum` (part 0) over `count` (part 1), per label set.
    Avg,
    /// The best `k` per group of the legs' best `k`.
    Top(Stage),
}

impl ShardPlan {
    /// Number of parts (queries per shard).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Every leg's query: `(part, text)`, each part once per shard.
    pub fn leg_queries(&self) -> Vec<(usize, String)> {
        let mut out = Vec::with_capacity(self.parts.len() * self.shards);
        for (p, agg) in self.parts.iter().enumerate() {
            for i in 0..self.shards {
                let shard = ShardSelector {
                    index: i as u64,
                    count: self.shards as u64,
                };
                let mut e = Expr::Aggregate(agg.clone());
                add_shard_matcher(&mut e, &shard);
                out.push((p, e.to_string()));
            }
        }
        out
    }
}

/// Why a query is not sharded.
pub type Refusal = &'static str;

/// Plans `query` in `shards` legs, or says why it runs whole. `query` has been validated.
pub fn analyse(query: &str, shards: usize) -> Result<ShardPlan, Refusal> {
    if shards < 2 {
        return Err("fewer than two shards");
    }
    if query.contains(SHARD_LABEL) {
        return Err("the query selects a shard itself");
    }
    // The parser panics on some numbers written as durations; refused before it sees them.
    norn_promql::check_duration_literals(query).map_err(|_| "does not parse")?;
    let expr = promql_parser::parser::parse(query).map_err(|_| "does not parse")?;
    let mut outer = Vec::new();
    let mut e = unparen(&expr);
    loop {
        let Expr::Aggregate(a) = e else {
            return Err(if outer.is_empty() {
                "not an aggregation"
            } else {
                "an aggregation over something that is neither series-local nor an aggregation"
            });
        };
        let stage = stage_of(a)?;
        let inner = unparen(&a.expr);
        if series_local(inner)? {
            outer.reverse();
            return Ok(plan(a, stage, outer, shards));
        }
        outer.push(stage);
        e = inner;
    }
}

fn plan(a: &AggregateExpr, stage: Stage, outer: Vec<Stage>, shards: usize) -> ShardPlan {
    let with_op = |op: TokenId| {
        let mut p = a.clone();
        p.op = token::TokenType::new(op);
        p
    };
    let (parts, combine) = match stage.op {
        AggOp::Avg => (
            vec![with_op(token::T_SUM), with_op(token::T_COUNT)],
            Combine::Avg,
        ),
        AggOp::Count => (vec![a.clone()], Combine::Groups(AggOp::Sum)),
        AggOp::TopK(_) | AggOp::BottomK(_) => (vec![a.clone()], Combine::Top(stage)),
        op => (vec![a.clone()], Combine::Groups(op)),
    };
    ShardPlan {
        parts,
        combine,
        outer,
        shards,
    }
}

/// The operator and grouping of an aggregation the frontend can finish.
fn stage_of(a: &AggregateExpr) -> Result<Stage, Refusal> {
    let op = match a.op.id() {
        token::T_SUM => AggOp::Sum,
        token::T_COUNT => AggOp::Count,
        token::T_MIN => AggOp::Min,
        token::T_MAX => AggOp::Max,
        token::T_AVG => AggOp::Avg,
        token::T_GROUP => AggOp::Group,
        id @ (token::T_TOPK | token::T_BOTTOMK) => {
            let k = a
                .param
                .as_deref()
                .and_then(literal)
                .ok_or("topk/bottomk with a k that is not a number literal")?;
            if k.is_nan() || k < 1.0 {
                return Err("topk/bottomk with k below 1");
            }
            let k = if k >= 9.0e18 { usize::MAX } else { k as usize };
            if id == token::T_TOPK {
                AggOp::TopK(k)
            } else {
                AggOp::BottomK(k)
            }
        }
        _ => return Err("an aggregation that needs all its inputs at once"),
    };
    let grouping = match &a.modifier {
        None => Grouping::By(Vec::new()),
        Some(LabelModifier::Include(l)) => Grouping::By(l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => Grouping::Without(l.labels.clone()),
    };
    Ok(Stage { op, grouping })
}

fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// The value of an expression made of number literals only.
fn literal(e: &Expr) -> Option<f64> {
    match e {
        Expr::NumberLiteral(n) => Some(n.val),
        Expr::Paren(p) => literal(&p.expr),
        Expr::Unary(u) => literal(&u.expr).map(|v| -v),
        _ => None,
    }
}

/// Whether an expression is a scalar computed from literals alone (`2`, `(1 + 2) * 3`).
fn literal_scalar(e: &Expr) -> bool {
    match e {
        Expr::NumberLiteral(_) => true,
        Expr::Paren(p) => literal_scalar(&p.expr),
        Expr::Unary(u) => literal_scalar(&u.expr),
        Expr::Binary(b) => literal_scalar(&b.lhs) && literal_scalar(&b.rhs),
        _ => false,
    }
}

/// `Ok(true)` when every output series of `e` depends on one input series only; `Ok(false)`
/// when `e` contains an aggregation (it may be the inner one of a chain); `Err` when it
/// cannot be sharded at all.
fn series_local(e: &Expr) -> Result<bool, Refusal> {
    match e {
        Expr::VectorSelector(vs) => {
            if vs.matchers.or_matchers.is_empty() {
                Ok(true)
            } else {
                Err("a selector with `or` matchers")
            }
        }
        Expr::MatrixSelector(ms) => {
            if ms.vs.matchers.or_matchers.is_empty() {
                Ok(true)
            } else {
                Err("a selector with `or` matchers")
            }
        }
        Expr::Paren(p) => series_local(&p.expr),
        Expr::Unary(u) => series_local(&u.expr),
        Expr::Subquery(s) => series_local(&s.expr),
        Expr::Aggregate(_) => Ok(false),
        Expr::Binary(b) => {
            let (l, r) = (literal_scalar(&b.lhs), literal_scalar(&b.rhs));
            if matches!(b.op.id(), token::T_LAND | token::T_LOR | token::T_LUNLESS) {
                return Err("a set operator");
            }
            match (l, r) {
                (true, true) => Err("a scalar expression"),
                (true, false) => series_local(&b.rhs),
                (false, true) => series_local(&b.lhs),
                (false, false) => Err("a binary operator between vectors"),
            }
        }
        Expr::Call(c) => {
            if !SERIES_LOCAL_FUNCTIONS.contains(&c.func.name) {
                return Err("a function that is not series-local");
            }
            let mut vectors = 0;
            for arg in &c.args.args {
                if literal_scalar(arg) {
                    continue;
                }
                vectors += 1;
                if !series_local(arg)? {
                    return Ok(false);
                }
            }
            if vectors == 1 {
                Ok(true)
            } else {
                Err("a function without exactly one vector argument")
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Err("a literal"),
        Expr::Extension(_) => Err("an extension"),
    }
}

/// Adds `__query_shard__="i_of_N"` to every selector of `e`.
fn add_shard_matcher(e: &mut Expr, shard: &ShardSelector) {
    let m = || PMatcher::new(MatchOp::Equal, SHARD_LABEL, &shard.label_value());
    match e {
        Expr::VectorSelector(vs) => vs.matchers.matchers.push(m()),
        Expr::MatrixSelector(ms) => ms.vs.matchers.matchers.push(m()),
        Expr::Aggregate(a) => add_shard_matcher(&mut a.expr, shard),
        Expr::Unary(u) => add_shard_matcher(&mut u.expr, shard),
        Expr::Binary(b) => {
            add_shard_matcher(&mut b.lhs, shard);
            add_shard_matcher(&mut b.rhs, shard);
        }
        Expr::Paren(p) => add_shard_matcher(&mut p.expr, shard),
        Expr::Subquery(s) => add_shard_matcher(&mut s.expr, shard),
        Expr::Call(c) => {
            for a in &mut c.args.args {
                add_shard_matcher(a, shard);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_aggregations_over_series_local_expressions() {
        for q in [
            "sum(rate(http_requests_total[5m]))",
            "sum by (job) (rate(http_requests_total[5m]))",
            "sum without (instance) (rate(x[5m]))",
            "count by (status) (x)",
            "min by (job) (memory_bytes)",
            "max(max_over_time(memory_bytes[10m]))",
            "avg by (method) (rate(x[5m]))",
            "group by (job) (x)",
            "topk(3, memory_bytes)",
            "bottomk by (job) (2, rate(x[5m]))",
            "sum(quantile_over_time(0.9, x[10m]))",
            "sum(clamp(x, 1, 2) * 2 > bool 1)",
            "sum(-abs(x offset 5m))",
            "max(max_over_time(rate(x[1m])[10m:1m]))",
            "((sum((rate(x[5m])))))",
            "sum(hour(timestamp(x)))",
            "sum(x{a=\"b\\\"c\", d=~\"e.*\"})",
        ] {
            let p = analyse(q, 4).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert!(p.outer.is_empty(), "{q}");
        }
    }

    #[test]
    fn nested_aggregations_shard_the_innermost() {
        let p = analyse("max(sum by (job) (rate(x[5m])))", 4).unwrap();
        assert_eq!(p.combine, Combine::Groups(AggOp::Sum));
        assert_eq!(
            p.outer,
            [Stage {
                op: AggOp::Max,
                grouping: Grouping::By(vec![])
            }]
        );
        let p = analyse("topk(2, avg without (i) (count by (i, j) (x)))", 4).unwrap();
        assert_eq!(p.outer.len(), 2);
        assert_eq!(p.outer[0].op, AggOp::Avg);
        assert_eq!(p.outer[1].op, AggOp::TopK(2));
    }

    #[test]
    fn refuses_what_it_cannot_prove() {
        for q in [
            "quantile by (job) (0.75, x)",
            "count_values(\"value\", x)",
            "stddev(x)",
            "stdvar(x)",
            "sum(x) / sum(y)",
            "sum(x / y)",
            "sum(x and y)",
            "absent(x)",
            "sum(absent(x))",
            "label_replace(sum(x), \"a\", \"$1\", \"b\", \"(.*)\")",
            "sum(label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\"))",
            "sum(histogram_quantile(0.9, x))",
            "x",
            "rate(x[5m])",
            "sum(x) * 2",
            "sum(vector(1))",
            "sum(hour())",
            "sum(scalar(y) * x)",
            "topk(scalar(y), x)",
            "topk(0, x)",
            "sum(x{a=\"1\" or b=\"2\"})",
            "quantile(0.5, sum by (job) (x))",
            "sum(sort(x))",
            "sum(x{__query_shard__=\"1_of_2\"})",
            "sum(1)",
        ] {
            assert!(analyse(q, 4).is_err(), "{q} was sharded");
        }
        assert!(analyse("sum(x)", 1).is_err());
    }

    #[test]
    fn legs_carry_the_shard_matcher_on_every_selector() {
        let p = analyse(
            "avg by (job) (rate(x{a=\"b\"}[5m]) * 2 + max_over_time(y[1m:10s] offset 1m) * 0)",
            2,
        );
        // Two vectors under a binary operator: refused.
        assert!(p.is_err());
        let p = analyse(
            "avg by (job) (max_over_time(rate(x{a=\"b\"}[5m])[1h:1m]))",
            3,
        )
        .unwrap();
        let legs = p.leg_queries();
        assert_eq!(legs.len(), 6);
        for (i, (part, q)) in legs.iter().enumerate() {
            assert_eq!(*part, i / 3);
            let shard = format!("__query_shard__=\"{}_of_3\"", i % 3 + 1);
            assert!(q.contains(&shard), "{q}");
            assert!(q.starts_with(if i < 3 { "sum" } else { "count" }), "{q}");
            // The rewritten text parses, and plans again as the same shape.
            promql_parser::parser::parse(q).unwrap();
        }
    }
}
