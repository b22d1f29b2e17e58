//! Go's number and value formatting, as `fmt` prints them: `%v` of a float64 (shortest
//! digits, exponent form below 1e-4 and from 1e6 on — `strconv`'s 'g' with precision -1),
//! `%.Ng`, `%e`, `%f`, and the subset of `Printf` verbs templates use.

use super::exec::Value;

/// Decimal digits of `v` rounded to `prec` significant digits (`None`: shortest), and the
/// decimal point position (Go's `decimal.dp`), trailing zeros trimmed. `v` is finite, > 0.
fn digits(v: f64, prec: Option<usize>) -> (String, i32) {
    let s = match prec {
        Some(p) => format!("{:.*e}", p.max(1) - 1, v),
        // Go breaks a tie between two shortest candidates to the even digit; Rust's `{:e}`
        // does not (see `shortest_digits`).
        None => match norn_model::float_text::shortest_digits(v) {
            Some((d, dp)) => return (d.as_str().to_string(), dp),
            None => format!("{v:e}"),
        },
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let d: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let d = d.trim_end_matches('0');
    let d = if d.is_empty() { "0" } else { d };
    (d.to_string(), exp + 1)
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else {
        None
    }
}

/// `%e` with `prec` digits after the point from `digits`.
fn fmt_e(neg: bool, d: &str, dp: i32, prec: usize, upper: bool) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    let b = d.as_bytes();
    s.push(b.first().map_or('0', |c| *c as char));
    if prec > 0 {
        s.push('.');
        for i in 1..=prec {
            s.push(b.get(i).map_or('0', |c| *c as char));
        }
    }
    let exp = if d == "0" { 0 } else { dp - 1 };
    s.push(if upper { 'E' } else { 'e' });
    s.push(if exp < 0 { '-' } else { '+' });
    let a = exp.unsigned_abs();
    if a < 10 {
        s.push('0');
    }
    s.push_str(&a.to_string());
    s
}

/// `%f` with `prec` digits after the point from `digits`.
fn fmt_f(neg: bool, d: &str, dp: i32, prec: usize) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    let b = d.as_bytes();
    let at = |i: i32| -> char {
        if i >= 0 && (i as usize) < b.len() {
            b[i as usize] as char
        } else {
            '0'
        }
    };
    if dp > 0 {
        for i in 0..dp {
            s.push(at(i));
        }
    } else {
        s.push('0');
    }
    if prec > 0 {
        s.push('.');
        for i in 0..prec as i32 {
            s.push(at(dp + i));
        }
    }
    s
}

/// Go's `%g` with a precision (`Some`) or shortest (`None`, which is also `%v`).
pub fn fmt_g(v: f64, prec: Option<usize>, upper: bool) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative() && v != 0.0;
    let a = v.abs();
    if a == 0.0 {
        return if neg { "-0".into() } else { "0".into() };
    }
    let (d, dp) = digits(a, prec);
    let nd = d.len() as i32;
    let mut p = prec.map_or(nd, |p| p.max(1) as i32);
    let mut eprec = p;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    if prec.is_none() {
        eprec = 6;
    }
    let exp = dp - 1;
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        return fmt_e(neg, &d, dp, (p - 1).max(0) as usize, upper);
    }
    if p > dp {
        p = nd;
    }
    fmt_f(neg, &d, dp, (p - dp).max(0) as usize)
}

/// Go's `%e` / `%.Ne` (default precision 6).
pub fn fmt_e_prec(v: f64, prec: usize, upper: bool) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative() && v != 0.0;
    if v == 0.0 {
        return fmt_e(neg, "0", 1, prec, upper);
    }
    let (d, dp) = digits(v.abs(), Some(prec + 1));
    fmt_e(neg, &d, dp, prec, upper)
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`: the shortest digits, exponent form.
pub fn fmt_e_shortest(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative() && v != 0.0;
    if v == 0.0 {
        return fmt_e(neg, "0", 1, 0, false);
    }
    let (d, dp) = digits(v.abs(), None);
    fmt_e(neg, &d, dp, d.len() - 1, false)
}

/// Go's `%f` / `%.Nf` (default precision 6).
pub fn fmt_f_prec(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    format!("{v:.prec$}")
}

/// `%v` of a float64: Go's `%g` with the shortest precision.
pub fn fmt_float(v: f64) -> String {
    fmt_g(v, None, false)
}

/// Go's `fmt.Sprintf(format, args...)` for the verbs templates use.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut argi = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero, mut space) = (false, false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' => space = true,
                '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = None;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = Some(width.unwrap_or(0) * 10 + d as usize);
            chars.next();
            if width.unwrap_or(0) > 1000 {
                width = Some(1000);
            }
        }
        let mut prec = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = (p * 10 + d as usize).min(1000);
                chars.next();
            }
            prec = Some(p);
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(argi) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        argi += 1;
        let bad = || format!("%!{verb}({}={})", arg.go_type(), arg.print());
        let mut s = match (verb, arg) {
            ('v', _) | ('s', Value::Str(_)) => match (prec, arg) {
                (Some(p), Value::Float(f)) if verb == 'v' => fmt_g(*f, Some(p), false),
                (Some(p), Value::Str(s)) => s.chars().take(p).collect(),
                _ => arg.print(),
            },
            ('s', _) => arg.print(),
            ('q', Value::Str(s)) => format!("{s:?}"),
            ('d', Value::Int(i)) => i.to_string(),
            ('d', Value::Bool(_)) => bad(),
            ('x' | 'X', Value::Int(i)) => {
                let h = format!("{i:x}");
                if verb == 'X' { h.to_uppercase() } else { h }
            }
            ('x' | 'X', Value::Str(s)) => {
                let h: String = s.bytes().map(|b| format!("{b:02x}")).collect();
                if verb == 'X' { h.to_uppercase() } else { h }
            }
            ('t', Value::Bool(b)) => b.to_string(),
            ('f' | 'F' | 'e' | 'E' | 'g' | 'G', Value::Float(_) | Value::Int(_)) => {
                let f = arg.as_f64().unwrap_or(0.0);
                match verb {
                    'f' | 'F' => fmt_f_prec(f, prec.unwrap_or(6)),
                    'e' | 'E' => fmt_e_prec(f, prec.unwrap_or(6), verb == 'E'),
                    _ => fmt_g(f, prec, verb == 'G'),
                }
            }
            _ => bad(),
        };
        let numeric = matches!(arg, Value::Int(_) | Value::Float(_)) && !matches!(verb, 's' | 'q');
        if numeric && !s.starts_with('-') {
            if plus {
                s.insert(0, '+');
            } else if space {
                s.insert(0, ' ');
            }
        }
        if let Some(w) = width {
            let len = s.chars().count();
            if len < w {
                let pad = w - len;
                if minus {
                    s.push_str(&" ".repeat(pad));
                } else if zero && numeric {
                    let sign = s.starts_with(['-', '+', ' ']);
                    let at = usize::from(sign);
                    s.insert_str(at, &"0".repeat(pad));
                } else {
                    s.insert_str(0, &" ".repeat(pad));
                }
            }
        }
        out.push_str(&s);
    }
    if argi < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[argi..]
            .iter()
            .map(|a| format!("{}={}", a.go_type(), a.print()))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_does() {
        for (v, want) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            // Halfway between …4202e+14 and …4203e+14: Go takes the even digit.
            (581_340_081_208_420.0 + 0.25, "5.813400812084202e+14"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(fmt_float(v), want, "{v}");
        }
        for (v, want) in [
            (1234.5678, "1235"),
            (12345.0, "1.234e+04"),
            (100.0, "100"),
            (1.5, "1.5"),
            (0.000123456, "0.0001235"),
            (2.0, "2"),
        ] {
            assert_eq!(fmt_g(v, Some(4), false), want, "{v}");
        }
    }

    #[test]
    fn printf_verbs() {
        let f = Value::Float(1.23456);
        assert_eq!(sprintf("%.2f", std::slice::from_ref(&f)), "1.23");
        assert_eq!(
            sprintf("%s=%d", &[Value::Str("a".into()), Value::Int(7)]),
            "a=7"
        );
        assert_eq!(
            sprintf("%5.1f|%-4s|", &[f.clone(), Value::Str("x".into())]),
            "  1.2|x   |"
        );
        assert_eq!(
            sprintf("%d", std::slice::from_ref(&f)),
            "%!d(float64=1.23456)"
        );
        assert_eq!(sprintf("%v %%", &[Value::Float(1e6)]), "1e+06 %");
        assert_eq!(sprintf("%s", &[]), "%!s(MISSING)");
        assert_eq!(sprintf("%03d", &[Value::Int(7)]), "007");
        assert_eq!(sprintf("%.3e", &[Value::Float(12345.678)]), "1.235e+04");
    }
}
