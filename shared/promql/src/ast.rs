//! What the engine needs from promql-parser's AST beyond its types: stable keys for nodes
//! (the per-node caches and fetched data are keyed by address), the time shifts of `offset`
//! and `@`, selector matchers converted to storage matchers, and what the parser loses from
//! the query text (string literals that are not valid UTF-8).
//!
//! No evaluator state here: the engine's planner, the evaluator and the functions all use
//! these, so they sit below all of them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use norn_model::{Labels, METRIC_NAME};
use promql_parser::label::Matchers;
use promql_parser::parser::{
    AggregateExpr, AtModifier, Call, Expr, MatrixSelector, Offset, VectorSelector,
};

use crate::error::{PromqlError, Result};

/// Address of a selector node; the AST is boxed and never mutated while a query runs.
pub(crate) fn node_key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

/// Address of a function call node: keys the sliding state of range functions and the
/// info series fetched for `info()`.
pub(crate) fn call_key(c: &Call) -> usize {
    c as *const Call as usize
}

/// Address of an aggregation node, for its group cache.
pub(crate) fn aggregate_key(a: &AggregateExpr) -> usize {
    a as *const AggregateExpr as usize
}

/// `e` without the parentheses around it.
pub(crate) fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

/// The matrix selector a call takes as its only argument, if it does (`rate(x[5m])`).
pub(crate) fn matrix_arg(c: &Call) -> Option<&MatrixSelector> {
    match c.args.args.as_slice() {
        [a] => match unwrap_parens(a) {
            Expr::MatrixSelector(ms) => Some(ms),
            _ => None,
        },
        _ => None,
    }
}

/// Milliseconds of an offset modifier (negative offsets look ahead).
pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

pub(crate) fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The fixed evaluation time an `@` modifier pins a node to, if any.
pub(crate) fn at_ms(at: &Option<AtModifier>, start: i64, end: i64) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(start),
        Some(AtModifier::End) => Some(end),
        Some(AtModifier::At(st)) => Some(match st.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => dur_ms(&d),
            Err(e) => -dur_ms(&e.duration()),
        }),
    }
}

/// Default resolution of a subquery without an explicit step (Prometheus' test setting and
/// the usual global evaluation interval).
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Converts a selector's matchers (plus its name) into storage matchers, one set per `or`
/// alternative.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Vec<norn_model::Matcher>>> {
    let groups: Vec<&Vec<promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![&vs.matchers.matchers]
    } else {
        vs.matchers.or_matchers.iter().collect()
    };
    let mut out = Vec::new();
    for g in groups {
        let mut ms = Vec::new();
        for m in g {
            ms.push(convert_matcher(m)?);
        }
        if let Some(name) = &vs.name
            && !ms
                .iter()
                .any(|m: &norn_model::Matcher| m.name == METRIC_NAME)
        {
            ms.push(norn_model::Matcher::equal(METRIC_NAME, name.clone()));
        }
        out.push(ms);
    }
    Ok(out)
}

fn convert_matcher(m: &promql_parser::label::Matcher) -> Result<norn_model::Matcher> {
    use norn_model::MatchType;
    use promql_parser::label::MatchOp;
    let kind = match m.op {
        MatchOp::Equal => MatchType::Equal,
        MatchOp::NotEqual => MatchType::NotEqual,
        MatchOp::Re(_) => MatchType::Regex,
        MatchOp::NotRe(_) => MatchType::NotRegex,
    };
    norn_model::Matcher::new(kind, m.name.clone(), m.value.clone())
        .map_err(|e| PromqlError::Parse(e.to_string()))
}

/// Equality matchers of a selector, for `absent()`'s output labels.
pub(crate) fn absent_labels(matchers: &Matchers) -> Labels {
    use promql_parser::label::MatchOp;
    let mut l = Labels::empty();
    let mut has: HashSet<&str> = HashSet::new();
    for m in &matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if matches!(m.op, MatchOp::Equal) && !has.contains(m.name.as_str()) {
            l.set(&m.name, &m.value);
            has.insert(&m.name);
        } else {
            l.remove(&m.name);
        }
    }
    l
}

/// Finds the string literals of `query` whose escapes make them invalid UTF-8 when decoded
/// as bytes (Go semantics), keyed by how promql-parser decodes them (each `\xHH` or octal
/// escape becomes the char U+00HH).
pub(crate) fn invalid_utf8_literals(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let q = chars[i];
        if q != '"' && q != '\'' {
            i += 1;
            continue;
        }
        i += 1;
        let start = i;
        let mut bytes: Vec<u8> = Vec::new();
        let mut parser_view = String::new();
        let mut has_byte_escape = false;
        while i < chars.len() && chars[i] != q {
            let c = chars[i];
            if c == '\\' && i + 1 < chars.len() {
                let e = chars[i + 1];
                let digits: String = if e == 'x' {
                    chars.iter().skip(i + 2).take(2).collect()
                } else {
                    chars.iter().skip(i + 1).take(3).collect()
                };
                let radix = if e == 'x' { 16 } else { 8 };
                let byte = (e == 'x' || e.is_digit(8))
                    .then(|| u8::from_str_radix(&digits, radix).ok())
                    .flatten()
                    .filter(|_| digits.len() == if e == 'x' { 2 } else { 3 });
                if let Some(b) = byte {
                    bytes.push(b);
                    parser_view.push(char::from(b));
                    has_byte_escape |= b >= 0x80;
                    i += 4;
                    continue;
                }
                // Other escapes decode to valid UTF-8 either way.
                let decoded = match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                };
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(decoded.encode_utf8(&mut buf).as_bytes());
                parser_view.push(decoded);
                i += 2;
                continue;
            }
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            parser_view.push(c);
            i += 1;
        }
        if has_byte_escape && std::str::from_utf8(&bytes).is_err() {
            out.insert(
                parser_view,
                chars[start..i.min(chars.len())].iter().collect(),
            );
        }
        i += 1;
    }
    out
}
