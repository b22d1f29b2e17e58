//! The functions a template may call: Go's built-ins (`and`, `or`, `not`, `len`, `index`,
//! `print`, `printf`, `println`, `eq`…`ge`, `html`, `urlquery`) and Prometheus' template
//! functions (`query`, `first`, `label`, `value`, `strvalue`, `sortByLabel`, `humanize*`,
//! `reReplaceAll`, `match`, `title`, `toUpper`, `toLower`, `args`, `safeHtml`, `stripPort`,
//! `stripDomain`, `parseDuration`, `toTime`, `graphLink`, `tableLink`, `externalURL`,
//! `pathPrefix`), with Prometheus' output formats.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::exec::{Env, Value, compare, g4};
use super::gofmt::sprintf as go_sprintf;

/// Every function name a template may call (checked at parse time).
pub fn names() -> BTreeSet<&'static str> {
    [
        "and",
        "or",
        "not",
        "len",
        "index",
        "print",
        "printf",
        "println",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "html",
        "js",
        "urlquery",
        "query",
        "first",
        "label",
        "value",
        "strvalue",
        "sortByLabel",
        "humanize",
        "humanize1024",
        "humanizeDuration",
        "humanizePercentage",
        "humanizeTimestamp",
        "reReplaceAll",
        "match",
        "title",
        "toUpper",
        "toLower",
        "args",
        "safeHtml",
        "stripPort",
        "stripDomain",
        "parseDuration",
        "toTime",
        "graphLink",
        "tableLink",
        "externalURL",
        "pathPrefix",
    ]
    .into_iter()
    .collect()
}

fn want(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ));
    }
    Ok(())
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.clone()),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            other.go_type()
        )),
    }
}

/// Prometheus' `convertToFloat`.
fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("strconv.ParseFloat: parsing {s:?}: {e}")),
        other => Err(format!("can't convert {} to float", other.go_type())),
    }
}

fn sample_parts(v: &Value) -> Result<(BTreeMap<String, Value>, f64), String> {
    match v {
        Value::Struct(_, fs) => {
            let mut labels = BTreeMap::new();
            let mut val = 0.0;
            for (k, f) in fs {
                match (*k, f) {
                    ("Labels", Value::Map(m)) => labels = m.clone(),
                    ("Value", x) => val = x.as_f64().unwrap_or(0.0),
                    _ => {}
                }
            }
            Ok((labels, val))
        }
        other => Err(format!(
            "wrong type for value; expected *template.sample; got {}",
            other.go_type()
        )),
    }
}

fn url_escape(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                o.push(b as char)
            }
            b' ' => o.push('+'),
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Go's `time.Time.String()` of a UTC time.
fn go_time(secs: f64) -> Result<String, String> {
    if !secs.is_finite() || secs.abs() > 1e13 {
        return Err(format!("{} cannot be represented as a time", g4(secs)));
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round() as u32;
    let t = chrono::DateTime::from_timestamp(whole as i64, nanos.min(999_999_999))
        .ok_or_else(|| "time out of range".to_string())?;
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{:09}", nanos).trim_end_matches('0').to_string()
    };
    Ok(format!("{}{frac} +0000 UTC", t.format("%Y-%m-%d %H:%M:%S")))
}

fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return g4(v);
    }
    let mut v = v;
    if v.abs() >= 1.0 {
        let mut prefix = "";
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        return format!("{}{prefix}", g4(v));
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}", g4(v))
}

fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return g4(v);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", g4(v))
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return g4(v);
    }
    if v == 0.0 {
        return format!("{}s", g4(v));
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", g4(v));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", g4(v))
}

/// Go's `strings.Title`: the first letter of every word upper-cased.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = !(c.is_alphanumeric() || c == '_' || c == '\'');
    }
    out
}

fn regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("error parsing regexp: {e}"))
}

pub fn call(name: &str, a: Vec<Value>, env: &mut Env<'_>) -> Result<Value, String> {
    let s = |v: String| Ok(Value::Str(v));
    match name {
        "not" => {
            want(name, &a, 1)?;
            Ok(Value::Bool(!a[0].truth()))
        }
        "len" => {
            want(name, &a, 1)?;
            match &a[0] {
                Value::Str(x) => Ok(Value::Int(x.len() as i64)),
                Value::Map(m) => Ok(Value::Int(m.len() as i64)),
                Value::List(l) => Ok(Value::Int(l.len() as i64)),
                o => Err(format!("len of type {}", o.go_type())),
            }
        }
        "index" => {
            let mut it = a.into_iter();
            let mut v = it
                .next()
                .ok_or("wrong number of args for index: want at least 1 got 0")?;
            for k in it {
                v = match (&v, &k) {
                    (Value::Map(m), Value::Str(key)) => {
                        m.get(key).cloned().unwrap_or(Value::Str(String::new()))
                    }
                    (Value::List(l), Value::Int(i)) => l
                        .get(usize::try_from(*i).map_err(|_| format!("index out of range: {i}"))?)
                        .cloned()
                        .ok_or(format!("index out of range: {i}"))?,
                    _ => return Err(format!("can't index item of type {}", v.go_type())),
                };
            }
            Ok(v)
        }
        "print" | "println" => {
            // Go's Sprint puts spaces between operands when neither is a string.
            let mut out = String::new();
            for (i, v) in a.iter().enumerate() {
                if i > 0
                    && (name == "println"
                        || (!matches!(v, Value::Str(_)) && !matches!(a[i - 1], Value::Str(_))))
                {
                    out.push(' ');
                }
                out.push_str(&v.print());
            }
            if name == "println" {
                out.push('\n');
            }
            s(out)
        }
        "printf" => {
            let f = string(
                a.first()
                    .ok_or("wrong number of args for printf: want at least 1 got 0")?,
            )?;
            s(go_sprintf(&f, &a[1..]))
        }
        "eq" => {
            if a.len() < 2 {
                return Err("missing argument for comparison".into());
            }
            for b in &a[1..] {
                if compare(&a[0], b)? == Ordering::Equal {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            want(name, &a, 2)?;
            let o = compare(&a[0], &a[1])?;
            Ok(Value::Bool(match name {
                "ne" => o != Ordering::Equal,
                "lt" => o == Ordering::Less,
                "le" => o != Ordering::Greater,
                "gt" => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        "html" => s(html_escape(&a.iter().map(Value::print).collect::<String>())),
        "js" => s(a
            .iter()
            .map(Value::print)
            .collect::<String>()
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('"', "\\\"")),
        "urlquery" => s(url_escape(&a.iter().map(Value::print).collect::<String>())),
        "query" => {
            want(name, &a, 1)?;
            let q = string(&a[0])?;
            let res = (env.query)(&q)?;
            Ok(Value::List(
                res.iter().map(|(l, v)| Value::sample(l, *v)).collect(),
            ))
        }
        "first" => {
            want(name, &a, 1)?;
            match &a[0] {
                Value::List(l) => l
                    .first()
                    .cloned()
                    .ok_or_else(|| "first() called on vector with no elements".into()),
                o => Err(format!(
                    "wrong type for value; expected queryResult; got {}",
                    o.go_type()
                )),
            }
        }
        "label" => {
            want(name, &a, 2)?;
            let key = string(&a[0])?;
            let (labels, _) = sample_parts(&a[1])?;
            s(labels.get(&key).map(Value::print).unwrap_or_default())
        }
        "value" => {
            want(name, &a, 1)?;
            Ok(Value::Float(sample_parts(&a[0])?.1))
        }
        "strvalue" => {
            want(name, &a, 1)?;
            let (labels, _) = sample_parts(&a[0])?;
            s(labels
                .get("__value__")
                .map(Value::print)
                .unwrap_or_default())
        }
        "sortByLabel" => {
            want(name, &a, 2)?;
            let key = string(&a[0])?;
            let Value::List(mut l) = a[1].clone() else {
                return Err(format!(
                    "wrong type for value; expected queryResult; got {}",
                    a[1].go_type()
                ));
            };
            l.sort_by_key(|v| {
                sample_parts(v)
                    .ok()
                    .and_then(|(m, _)| m.get(&key).map(Value::print))
                    .unwrap_or_default()
            });
            Ok(Value::List(l))
        }
        "humanize" | "humanize1024" | "humanizeDuration" | "humanizePercentage"
        | "humanizeTimestamp" => {
            want(name, &a, 1)?;
            let v = float(&a[0])?;
            s(match name {
                "humanize" => humanize(v),
                "humanize1024" => humanize1024(v),
                "humanizeDuration" => humanize_duration(v),
                "humanizePercentage" => format!("{}%", g4(v * 100.0)),
                _ if !v.is_finite() => g4(v),
                _ => go_time(v)?,
            })
        }
        "toTime" => {
            want(name, &a, 1)?;
            s(go_time(float(&a[0])?)?)
        }
        "parseDuration" => {
            want(name, &a, 1)?;
            let d = norn_model::parse_duration(&string(&a[0])?).map_err(|e| e.to_string())?;
            Ok(Value::Float(d.as_secs_f64()))
        }
        "reReplaceAll" => {
            want(name, &a, 3)?;
            let re = regex(&string(&a[0])?)?;
            s(re.replace_all(&string(&a[2])?, string(&a[1])?.as_str())
                .into_owned())
        }
        "match" => {
            want(name, &a, 2)?;
            Ok(Value::Bool(
                regex(&string(&a[0])?)?.is_match(&string(&a[1])?),
            ))
        }
        "title" | "toUpper" | "toLower" | "safeHtml" | "stripPort" | "stripDomain" => {
            want(name, &a, 1)?;
            let x = string(&a[0])?;
            s(match name {
                "title" => title(&x),
                "toUpper" => x.to_uppercase(),
                "toLower" => x.to_lowercase(),
                "safeHtml" => x,
                "stripPort" => match x.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                        h.trim_start_matches('[').trim_end_matches(']').to_string()
                    }
                    _ => x,
                },
                _ => {
                    let (host, port) = match x.rsplit_once(':') {
                        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                            (h.to_string(), format!(":{p}"))
                        }
                        _ => (x.clone(), String::new()),
                    };
                    if host.parse::<std::net::IpAddr>().is_ok() {
                        x
                    } else {
                        format!("{}{port}", host.split('.').next().unwrap_or(""))
                    }
                }
            })
        }
        "args" => Ok(Value::Map(
            a.into_iter()
                .enumerate()
                .map(|(i, v)| (format!("arg{i}"), v))
                .collect(),
        )),
        "graphLink" | "tableLink" => {
            want(name, &a, 1)?;
            let e = url_escape(&string(&a[0])?);
            s(format!(
                "/graph?g0.expr={e}&g0.tab={}",
                if name == "graphLink" { 0 } else { 1 }
            ))
        }
        "externalURL" => s(env.external_url.to_string()),
        "pathPrefix" => {
            let u = env.external_url;
            let path = u
                .split_once("://")
                .map_or(u, |(_, r)| r.find('/').map_or("", |i| &r[i..]));
            s(path.trim_end_matches('/').to_string())
        }
        other => Err(format!("function {other:?} not defined")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanizers_match_prometheus() {
        assert_eq!(humanize(1234567.0), "1.235M");
        assert_eq!(humanize(0.0012), "1.2m");
        assert_eq!(humanize(0.0), "0");
        assert_eq!(humanize(999.0), "999");
        assert_eq!(humanize1024(1048576.0), "1Mi");
        assert_eq!(humanize1024(1.0), "1");
        assert_eq!(humanize_duration(90061.0), "1d 1h 1m 1s");
        assert_eq!(humanize_duration(3.5), "3.5s");
        assert_eq!(humanize_duration(0.0), "0s");
        assert_eq!(humanize_duration(0.25), "250ms");
        assert_eq!(humanize_duration(-65.0), "-1m 5s");
        assert_eq!(
            go_time(1_700_000_000.0).unwrap(),
            "2023-11-14 22:13:20 +0000 UTC"
        );
        assert_eq!(go_time(1.5).unwrap(), "1970-01-01 00:00:01.5 +0000 UTC");
        assert_eq!(title("hello wide_world-x"), "Hello Wide_world-X");
    }
}
