//! Prometheus' JSON envelope and its pieces, written by hand for speed and exactness.
//!
//! Timestamps are seconds with up to three decimals (`1435781451.781`), values are strings in
//! Go's shortest round-trip `'f'` format (`"1"`, `"0.1"`, `"NaN"`, `"+Inf"`), and `warnings`
//! and `infos` appear only when non-empty — exactly what Grafana's Prometheus data source and
//! Prometheus' own clients parse. The querier writes its answers with these, and the
//! query-frontend writes merged answers with the same functions, so the two agree byte for byte.

use std::fmt::Write;

use norn_model::Labels;

/// Appends a millisecond timestamp as Prometheus writes it: seconds, then `.` and three
/// digits when the milliseconds are not zero (`1.5` s is `1.500`). It runs once per point of
/// every answer, so it formats with `itoa`, not through `fmt`.
pub fn write_timestamp(out: &mut String, t: i64) {
    if t < 0 {
        out.push('-');
    }
    let t = t.unsigned_abs();
    out.push_str(itoa::Buffer::new().format(t / 1000));
    let frac = (t % 1000) as u32;
    if frac != 0 {
        out.push('.');
        for d in [frac / 100, frac / 10 % 10, frac % 10] {
            out.push(char::from(b'0' + d as u8));
        }
    }
}

pub use norn_model::float_text::{format_value, write_value};

/// Appends a JSON string literal. Runs of bytes that need no escape are copied whole: label
/// values and the frontend's re-written sample values are almost always such a run.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            // Go's encoder escapes these for safe embedding in HTML; clients accept either.
            b'<' => "\\u003c",
            b'>' => "\\u003e",
            b'&' => "\\u0026",
            0..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so `i` is a character boundary.
        out.push_str(&s[from..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Appends a label set as a JSON object.
pub fn write_labels(out: &mut String, labels: &Labels) {
    out.push('{');
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, &l.name);
        out.push(':');
        write_str(out, &l.value);
    }
    out.push('}');
}

/// Appends `,"warnings":[…],"infos":[…]` when there are any.
pub fn write_annotations(out: &mut String, warnings: &[String], infos: &[String]) {
    for (key, list) in [("warnings", warnings), ("infos", infos)] {
        if list.is_empty() {
            continue;
        }
        let _ = write!(out, ",\"{key}\":[");
        for (i, w) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, w);
        }
        out.push(']');
    }
}

/// `{"status":"success","data":<data>}` plus annotations.
pub fn success(data: &str, warnings: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 40);
    out.push_str("{\"status\":\"success\",\"data\":");
    out.push_str(data);
    write_annotations(&mut out, warnings, &[]);
    out.push('}');
    out
}

/// A JSON array of strings.
pub fn string_array(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(&mut out, s);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_prometheus() {
        let f = |t| {
            let mut s = String::new();
            write_timestamp(&mut s, t);
            s
        };
        assert_eq!(f(1_435_781_451_781), "1435781451.781");
        assert_eq!(f(1000), "1");
        assert_eq!(f(1100), "1.100");
        assert_eq!(f(-1500), "-1.500");
        assert_eq!(f(7), "0.007");
        assert_eq!(f(-42), "-0.042");
        assert_eq!(f(0), "0");
        assert_eq!(f(i64::MIN), "-9223372036854775.808");
        assert_eq!(f(i64::MAX), "9223372036854775.807");
        // Prometheus' `jsonutil.MarshalTimestamp`, written out with `fmt`.
        let go = |t: i64| {
            let (sign, u) = if t < 0 {
                ("-", t.unsigned_abs())
            } else {
                ("", t as u64)
            };
            match u % 1000 {
                0 => format!("{sign}{}", u / 1000),
                frac => format!("{sign}{}.{frac:03}", u / 1000),
            }
        };
        let mut t: i64 = 1;
        for _ in 0..2_000 {
            for t in [
                t,
                t.wrapping_neg(),
                t / 7,
                t.wrapping_mul(31) % 1_000_000_007,
            ] {
                assert_eq!(f(t), go(t), "{t}");
            }
            t = t
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
        }
    }

    #[test]
    fn envelope_and_escapes() {
        let mut s = String::new();
        write_str(&mut s, "a\"<b>\n");
        assert_eq!(s, r#""a\"\u003cb\u003e\n""#);
        // Every kind of character, mixed with runs that need no escape: JSON that reads back
        // as the same string.
        for text in [
            "",
            "plain",
            "\u{1}x\u{1f}\u{7f}",
            "é\"ü\\日本\t<&>\r\n",
            "ends with a quote\"",
            "\"starts",
            "🦀 crab",
        ] {
            let mut out = String::new();
            write_str(&mut out, text);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, text, "{out}");
            assert!(
                !out[1..out.len() - 1].contains(['<', '>', '&', '\n']),
                "{out}"
            );
        }
        assert_eq!(
            success("[]", &["w".into()]),
            r#"{"status":"success","data":[],"warnings":["w"]}"#
        );
    }
}
