//! Parsing of the Prometheus HTTP API's `match[]` selectors; times, durations and the
//! parameters themselves are `norn_server::params`' (shared with the query-frontend), re-exported.

use norn_model::{MatchType, Matcher};
use norn_server::HttpError;
pub use norn_server::params::{
    MAX_TIME_MS, MIN_TIME_MS, Params, parse_duration_ms, parse_time, time_or,
};

/// Parses every `match[]` selector into matcher lists.
pub fn matcher_sets(p: &Params) -> Result<Vec<Vec<Matcher>>, HttpError> {
    p.all("match[]").iter().map(|s| parse_selector(s)).collect()
}

/// Parses one series selector (`up{job="x"}`) into matchers.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, HttpError> {
    let expr = norn_promql::check_duration_literals(s)
        .and_then(|()| promql_parser::parser::parse(s))
        .map_err(|e| {
            HttpError::bad_data(format!("invalid parameter \"match[]\": {e}")).into_json()
        })?;
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        return Err(HttpError::bad_data(format!(
            "invalid parameter \"match[]\": {s:?} is not a series selector"
        ))
        .into_json());
    };
    let mut out = Vec::new();
    if let Some(name) = &vs.name {
        out.push(Matcher::equal("__name__", name.clone()));
    }
    for m in vs.matchers.matchers.iter() {
        let kind = match &m.op {
            promql_parser::label::MatchOp::Equal => MatchType::Equal,
            promql_parser::label::MatchOp::NotEqual => MatchType::NotEqual,
            promql_parser::label::MatchOp::Re(_) => MatchType::Regex,
            promql_parser::label::MatchOp::NotRe(_) => MatchType::NotRegex,
        };
        out.push(
            Matcher::new(kind, m.name.clone(), m.value.clone()).map_err(|e| {
                HttpError::bad_data(format!("invalid parameter \"match[]\": {e}")).into_json()
            })?,
        );
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(HttpError::bad_data(
            "invalid parameter \"match[]\": 'or' in selectors is not supported",
        )
        .into_json());
    }
    if out.iter().all(|m| m.matches_empty()) {
        return Err(HttpError::bad_data(
            "invalid parameter \"match[]\": match[] must contain at least one non-empty matcher",
        )
        .into_json());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let m = parse_selector("up{job=~\"a|b\"}").unwrap();
        assert_eq!(m.len(), 2);
        assert!(parse_selector("rate(up[5m])").is_err());
        assert!(parse_selector("{job=\"\"}").is_err());
    }
}
