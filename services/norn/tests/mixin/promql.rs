//! What the mixin's expressions reference: Grafana's variables substituted, each expression
//! parsed with `promql-parser`, and the metric names of its selectors collected.

use std::collections::BTreeSet;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};

/// Grafana's variables replaced by values that keep the expression valid PromQL: intervals by
/// durations, every other `$var` / `${var}` (instance, tenant, datasource) by `.*`, which is
/// what the dashboards' `allValue` is.
pub fn substitute_grafana_vars(expr: &str) -> String {
    let s = expr
        .replace("$__rate_interval", "5m")
        .replace("${__rate_interval}", "5m")
        .replace("$__interval", "1m")
        .replace("${__interval}", "1m")
        .replace("$__range", "1h")
        .replace("${__range}", "1h");
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let braced = chars.get(i + 1) == Some(&'{');
            let mut j = i + 1 + usize::from(braced);
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            if braced && chars.get(j) == Some(&'}') {
                j += 1;
            }
            if j > i + 1 {
                out.push_str(".*");
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The metric names an expression selects (`name{…}` or `{__name__="name"}`); an error
/// when it does not parse or selects by a `__name__` regex (its names cannot be checked).
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parser::parse(expr)?;
    let mut names = BTreeSet::new();
    walk(&ast, &mut names)?;
    Ok(names)
}

fn walk(e: &Expr, names: &mut BTreeSet<String>) -> Result<(), String> {
    match e {
        Expr::Aggregate(a) => {
            walk(&a.expr, names)?;
            if let Some(p) = &a.param {
                walk(p, names)?;
            }
        }
        Expr::Unary(u) => walk(&u.expr, names)?,
        Expr::Binary(b) => {
            walk(&b.lhs, names)?;
            walk(&b.rhs, names)?;
        }
        Expr::Paren(p) => walk(&p.expr, names)?,
        Expr::Subquery(s) => walk(&s.expr, names)?,
        Expr::VectorSelector(v) => selector(v, names)?,
        Expr::MatrixSelector(m) => selector(&m.vs, names)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, names)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

fn selector(
    v: &promql_parser::parser::VectorSelector,
    names: &mut BTreeSet<String>,
) -> Result<(), String> {
    if let Some(n) = &v.name {
        names.insert(n.clone());
        return Ok(());
    }
    for m in &v.matchers.matchers {
        if m.name == "__name__" {
            if matches!(m.op, MatchOp::Equal) {
                names.insert(m.value.clone());
                return Ok(());
            }
            return Err(format!("selector {v} matches __name__ by {:?}", m.op));
        }
    }
    Err(format!("selector {v} names no metric"))
}

/// The metric of a Grafana `label_values(metric, label)` variable query; `None` for
/// `label_values(label)` (no metric named).
pub fn label_values_metric(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (metric, _label) = inner.rsplit_once(',')?;
    Some(metric.trim().to_string())
}

/// Metric names in a `/metrics` exposition (histograms appear as `_bucket`, `_sum`, `_count`).
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn grafana_variables_are_substituted() {
    assert_eq!(
        substitute_grafana_vars(
            r#"sum(rate(x{instance=~"$instance",t=~"${tenant}"}[$__rate_interval]))"#
        ),
        r#"sum(rate(x{instance=~".*",t=~".*"}[5m]))"#
    );
    let names = metric_names(&substitute_grafana_vars(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{i=~"$i"}[$__rate_interval]))) / on() group_left b + {__name__="c"}"#,
    ))
    .unwrap();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b", "c"]
    );
    assert!(metric_names("sum(rate(x[5m])").is_err());
    assert!(metric_names(r#"{__name__=~"norn_.*"}"#).is_err());
    assert_eq!(
        label_values_metric("label_values(norn_x, tenant)").as_deref(),
        Some("norn_x")
    );
}
