//! Parsing of the Prometheus HTTP API's parameters: times, durations, `match[]`.
//!
//! Parameters come from the query string and, for POST, from a form body; both are merged
//! (Prometheus does the same). Error messages match Prometheus' wording.

use std::collections::HashMap;

use chrono::DateTime;
use norn_model::{MatchType, Matcher, parse_duration};
use norn_server::HttpError;

/// The earliest and latest times Prometheus accepts as "unbounded" (its MinTime/MaxTime).
pub const MIN_TIME_MS: i64 = -62_135_596_800_000;
pub const MAX_TIME_MS: i64 = 253_402_300_799_000;

/// All parameters of a request; repeated keys (`match[]`) keep every value.
#[derive(Debug, Default, Clone)]
pub struct Params(pub HashMap<String, Vec<String>>);

impl Params {
    /// Parses `a=b&c=d` pairs from a query string and a form body.
    pub fn parse(query: Option<&str>, body: &[u8]) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        let body = std::str::from_utf8(body).unwrap_or("");
        for part in query.unwrap_or("").split('&').chain(body.split('&')) {
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            map.entry(decode(k)).or_default().push(decode(v));
        }
        Self(map)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.first()).map(String::as_str)
    }

    pub fn all(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Percent-decoding with `+` as space (application/x-www-form-urlencoded).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn bad(param: &str, msg: String) -> HttpError {
    HttpError::bad_data(format!("invalid parameter \"{param}\": {msg}")).into_json()
}

/// Parses a time: unix seconds with decimals, or RFC 3339.
pub fn parse_time(param: &str, s: &str) -> Result<i64, HttpError> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            let ms = (f * 1000.0).round();
            if ms >= MIN_TIME_MS as f64 && ms <= MAX_TIME_MS as f64 {
                return Ok(ms as i64);
            }
        }
        return Err(bad(
            param,
            format!("cannot parse {s:?} to a valid timestamp"),
        ));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    Err(bad(
        param,
        format!("cannot parse {s:?} to a valid timestamp"),
    ))
}

/// A time parameter, or `default` when absent.
pub fn time_or(p: &Params, param: &str, default: i64) -> Result<i64, HttpError> {
    match p.get(param) {
        None | Some("") => Ok(default),
        Some(s) => parse_time(param, s),
    }
}

/// Parses a duration: float seconds or a Prometheus duration string; returns milliseconds.
pub fn parse_duration_ms(param: &str, s: &str) -> Result<i64, HttpError> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms.abs() > i64::MAX as f64 {
            return Err(bad(
                param,
                format!("cannot parse {s:?} to a valid duration. It overflows int64"),
            ));
        }
        return Ok(ms.round() as i64);
    }
    parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| bad(param, format!("cannot parse {s:?} to a valid duration")))
}

/// Parses every `match[]` selector into matcher lists.
pub fn matcher_sets(p: &Params) -> Result<Vec<Vec<Matcher>>, HttpError> {
    p.all("match[]").iter().map(|s| parse_selector(s)).collect()
}

/// Parses one series selector (`up{job="x"}`) into matchers.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, HttpError> {
    let expr = promql_parser::parser::parse(s).map_err(|e| {
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
    fn times() {
        assert_eq!(parse_time("t", "1.5").unwrap(), 1500);
        assert_eq!(
            parse_time("t", "2015-07-01T20:10:51.781Z").unwrap(),
            1_435_781_451_781
        );
        assert!(parse_time("t", "yesterday").is_err());
        assert!(parse_time("t", "NaN").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("step", "15").unwrap(), 15_000);
        assert_eq!(parse_duration_ms("step", "1m").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("step", "0.5").unwrap(), 500);
        assert!(parse_duration_ms("step", "x").is_err());
    }

    #[test]
    fn params_merge_query_and_form() {
        let p = Params::parse(Some("match[]=up&x=1"), b"match[]=%7Bjob%3D%22a%22%7D&q=a+b");
        assert_eq!(p.all("match[]"), ["up", "{job=\"a\"}"]);
        assert_eq!(p.get("q"), Some("a b"));
    }

    #[test]
    fn selectors() {
        let m = parse_selector("up{job=~\"a|b\"}").unwrap();
        assert_eq!(m.len(), 2);
        assert!(parse_selector("rate(up[5m])").is_err());
        assert!(parse_selector("{job=\"\"}").is_err());
    }
}
