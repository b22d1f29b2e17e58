//! Parsing of the Prometheus HTTP API's parameters: times and durations, from the query
//! string and a POSTed form, and the form encoding to send them on.
//!
//! Parameters come from the query string and, for POST, from a form body; both are merged
//! (Prometheus does the same). Error messages match Prometheus' wording. The querier and the
//! query-frontend both read requests with this, so they agree on every parameter.

use std::collections::HashMap;

use chrono::DateTime;
use norn_model::parse_duration;

use crate::HttpError;

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

/// Appends `k=v` to a form body (`application/x-www-form-urlencoded`), `&`-separated.
pub fn push_form_pair(out: &mut String, k: &str, v: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    encode_into(out, k);
    out.push('=');
    encode_into(out, v);
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986), space as `+`.
fn encode_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
                out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
            }
        }
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
    fn form_encoding_round_trips() {
        let mut body = String::new();
        let q = "sum by (job) (rate(x{a=~\"b|c\", d!=\"&=%+\"}[5m])) @ 1.5";
        push_form_pair(&mut body, "query", q);
        push_form_pair(&mut body, "step", "15");
        let p = Params::parse(None, body.as_bytes());
        assert_eq!(p.get("query"), Some(q));
        assert_eq!(p.get("step"), Some("15"));
    }
}
