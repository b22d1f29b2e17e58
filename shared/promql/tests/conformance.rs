//! Conformance runner: executes Prometheus' PromQL test scripts (`*.test`, see the README in
//! that folder) against the engine over a [`MemStore`] and reports pass/fail/skip counts.
//!
//! The scripts live outside the repository (`../shared/promql-tests` beside the checkout, or
//! `$NORN_PROMQL_TESTS_DIR`); when they are absent the test passes with a message. The test
//! fails when fewer evals pass than `conformance_floor.txt` says, so regressions show up.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use norn_model::{Labels, Series, stale_nan};
use norn_promql::memstore::MemStore;
use norn_promql::{Engine, EngineOptions, QueryResult, Value};

const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

/// How many extra `@`-pinned and range-mode checks ran (reported so a silent no-op shows).
static AT_CHECKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static RANGE_CHECKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Failure details printed per file.
fn max_details() -> usize {
    std::env::var("NORN_PROMQL_DETAILS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// Functions the parser knows that the engine does not implement (experimental ones).
const UNSUPPORTED_FUNCTIONS: &[&str] = &[
    "histogram_quantiles",
    "integral",
    "start_timestamp",
    "histogram_avg",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
];

fn tests_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NORN_PROMQL_TESTS_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promql-tests")
}

// ---------------------------------------------------------------------------------------
// Lexical helpers
// ---------------------------------------------------------------------------------------

/// Parses a Prometheus duration such as `1m30s`, `0`, `10s53ms` into milliseconds.
fn parse_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: i64 = s[start..i].parse().ok()?;
        let unit_ms = if s[i..].starts_with("ms") {
            i += 2;
            1
        } else {
            let u = *b.get(i)?;
            i += 1;
            match u {
                b's' => 1000,
                b'm' => 60_000,
                b'h' => 3_600_000,
                b'd' => 86_400_000,
                b'w' => 7 * 86_400_000,
                b'y' => 365 * 86_400_000,
                _ => return None,
            }
        };
        total += n * unit_ms;
    }
    Some(total)
}

/// Parses a PromQL number (decimal, hex, Inf, NaN; case-insensitive specials).
fn parse_number(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    let (sign, body) = match lower.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, lower.strip_prefix('+').unwrap_or(&lower)),
    };
    match body {
        "inf" => return Some(sign * f64::INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if let Some(hex) = body.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(|v| sign * v as f64);
    }
    if let Some(oct) = body.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok().map(|v| sign * v as f64);
    }
    if let Some(bin) = body.strip_prefix("0b") {
        return i64::from_str_radix(bin, 2).ok().map(|v| sign * v as f64);
    }
    if body.is_empty()
        || !body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    if body.chars().any(|c| c.is_ascii_alphabetic() && c != 'e') {
        return None;
    }
    body.parse::<f64>().ok().map(|v| sign * v)
}

/// Unquotes a Go string literal ("..", '..' or `..`).
fn unquote(s: &str) -> Option<String> {
    let mut chars = s.chars();
    let q = chars.next()?;
    if !s.ends_with(q) || s.len() < 2 {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    if q == '`' {
        return Some(inner.to_string());
    }
    let mut out = String::new();
    let mut it = inner.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'x' => {
                let h: String = [it.next()?, it.next()?].iter().collect();
                out.push(char::from(u8::from_str_radix(&h, 16).ok()?));
            }
            'u' => {
                let h: String = (0..4).filter_map(|_| it.next()).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            'U' => {
                let h: String = (0..8).filter_map(|_| it.next()).collect();
                out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
            }
            d if d.is_digit(8) => {
                let h: String = [d, it.next()?, it.next()?].iter().collect();
                out.push(char::from(u8::from_str_radix(&h, 8).ok()?));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Splits a series line into its identifier (labels) and the rest (value items).
fn parse_series_line(line: &str) -> Result<(Labels, String), String> {
    let b: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut name = String::new();
    while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == ':') {
        name.push(b[i]);
        i += 1;
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !name.is_empty() {
        pairs.push(("__name__".into(), name));
    }
    if i < b.len() && b[i] == '{' {
        i += 1;
        loop {
            while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                i += 1;
            }
            if i >= b.len() {
                return Err("unterminated labels".into());
            }
            if b[i] == '}' {
                i += 1;
                break;
            }
            // Label name: identifier or quoted string.
            let (lname, ni) = read_token(&b, i)?;
            i = ni;
            while i < b.len() && b[i].is_whitespace() {
                i += 1;
            }
            if i < b.len() && b[i] == '=' {
                i += 1;
                while i < b.len() && b[i].is_whitespace() {
                    i += 1;
                }
                let (raw, ni) = read_token(&b, i)?;
                i = ni;
                let value = unquote(&raw).ok_or_else(|| format!("bad label value {raw}"))?;
                let lname = if lname.starts_with(['"', '\'', '`']) {
                    unquote(&lname).ok_or("bad label name")?
                } else {
                    lname
                };
                pairs.push((lname, value));
            } else {
                // A lone quoted name inside braces is the metric name.
                let n = unquote(&lname).ok_or_else(|| format!("bad label entry {lname}"))?;
                pairs.push(("__name__".into(), n));
            }
        }
    }
    let rest: String = b[i..].iter().collect();
    Ok((Labels::from_pairs(pairs), rest.trim().to_string()))
}

fn read_token(b: &[char], mut i: usize) -> Result<(String, usize), String> {
    let start = i;
    if i < b.len() && matches!(b[i], '"' | '\'' | '`') {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            if b[i] == '\\' && q != '`' {
                i += 1;
            }
            i += 1;
        }
        if i >= b.len() {
            return Err("unterminated string".into());
        }
        i += 1;
    } else {
        while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.' || b[i] == ':') {
            i += 1;
        }
    }
    if start == i {
        return Err(format!("unexpected character at {i}"));
    }
    Ok((b[start..i].iter().collect(), i))
}

/// One expanded value slot: a value or an omitted sample.
type Slot = Option<f64>;

fn expand_values(items: &str) -> Result<Vec<Slot>, String> {
    let mut out = Vec::new();
    for tok in items.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if tok == "stale" {
            out.push(Some(stale_nan()));
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad item {tok}"))?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        // `AxN` wins over a hex literal: `0x59` is 60 zeros, as in Prometheus' series lexer.
        let repeat = tok.rfind('x').and_then(|xi| {
            let n: usize = tok[xi + 1..].parse().ok()?;
            Some((xi, n))
        });
        let Some((xi, n)) = repeat else {
            match parse_number(tok) {
                Some(v) => {
                    out.push(Some(v));
                    continue;
                }
                None => return Err(format!("bad item {tok}")),
            }
        };
        let head = &tok[..xi];
        let (a, b) = if let Some(a) = parse_number(head) {
            (a, 0.0)
        } else {
            let hb: Vec<char> = head.chars().collect();
            let mut split = None;
            for k in 1..hb.len() {
                if (hb[k] == '+' || hb[k] == '-') && !matches!(hb[k - 1], 'e' | 'E') {
                    split = Some(k);
                    break;
                }
            }
            let k = split.ok_or_else(|| format!("bad item {tok}"))?;
            let a: String = hb[..k].iter().collect();
            let b: String = hb[k + 1..].iter().collect();
            let a = parse_number(&a).ok_or_else(|| format!("bad item {tok}"))?;
            let b = parse_number(&b).ok_or_else(|| format!("bad item {tok}"))?;
            (a, if hb[k] == '-' { -b } else { b })
        };
        let mut v = a;
        out.push(Some(v));
        for _ in 0..n {
            v += b;
            out.push(Some(v));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Script model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Matchspec {
    Any,
    Msg(String),
    Regex(String),
}

impl Matchspec {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matchspec::Any => true,
            Matchspec::Msg(m) => m == s,
            Matchspec::Regex(r) => regex::Regex::new(r)
                .map(|re| re.is_match(s))
                .unwrap_or(false),
        }
    }
}

#[derive(Debug)]
struct ExpectedSeries {
    labels: Labels,
    values: Vec<Slot>,
}

#[derive(Debug)]
struct Eval {
    line: usize,
    expr: String,
    range: Option<(i64, i64, i64)>,
    at: i64,
    fail: Option<Matchspec>,
    warn: Vec<Matchspec>,
    info: Vec<Matchspec>,
    no_warn: bool,
    no_info: bool,
    ordered: bool,
    string: Option<String>,
    scalar: Option<f64>,
    range_vector: Option<(i64, i64, i64)>,
    series: Vec<ExpectedSeries>,
    histogram_expected: bool,
}

fn parse_matchspec(rest: &str) -> Matchspec {
    let rest = rest.trim();
    if let Some(m) = rest.strip_prefix("msg:") {
        Matchspec::Msg(m.trim().to_string())
    } else if let Some(r) = rest.strip_prefix("regex:") {
        Matchspec::Regex(r.trim().to_string())
    } else {
        Matchspec::Any
    }
}

fn parse_eval_header(line: &str, lineno: usize) -> Result<Eval, String> {
    let (cmd, rest) = line.split_once(char::is_whitespace).ok_or("bad eval")?;
    let mut ev = Eval {
        line: lineno,
        expr: String::new(),
        range: None,
        at: 0,
        fail: None,
        warn: Vec::new(),
        info: Vec::new(),
        no_warn: false,
        no_info: false,
        ordered: false,
        string: None,
        scalar: None,
        range_vector: None,
        series: Vec::new(),
        histogram_expected: false,
    };
    match cmd {
        "eval" => {}
        "eval_fail" => ev.fail = Some(Matchspec::Any),
        "eval_warn" => ev.warn.push(Matchspec::Any),
        "eval_info" => ev.info.push(Matchspec::Any),
        "eval_ordered" => ev.ordered = true,
        _ => return Err(format!("unknown command {cmd}")),
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let skip_words = |n: usize| -> String {
        let mut r = rest.trim_start();
        for _ in 0..n {
            r = r.trim_start();
            let end = r.find(char::is_whitespace).unwrap_or(r.len());
            r = &r[end..];
        }
        r.trim().to_string()
    };
    match words.first() {
        Some(&"instant") => {
            if words.get(1) != Some(&"at") {
                return Err("instant eval without at".into());
            }
            ev.at = parse_duration(words.get(2).ok_or("missing time")?).ok_or("bad time")?;
            ev.expr = skip_words(3);
        }
        Some(&"range") => {
            if words.get(1) != Some(&"from")
                || words.get(3) != Some(&"to")
                || words.get(5) != Some(&"step")
            {
                return Err("bad range eval".into());
            }
            let from = parse_duration(words[2]).ok_or("bad from")?;
            let to = parse_duration(words[4]).ok_or("bad to")?;
            let step = parse_duration(words.get(6).ok_or("missing step")?).ok_or("bad step")?;
            ev.range = Some((from, to, step));
            ev.expr = skip_words(7);
        }
        _ => return Err("bad eval".into()),
    }
    Ok(ev)
}

// ---------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------

fn float_eq(a: f64, b: f64) -> bool {
    const MIN_NORMAL: f64 = 2.2250738585072014e-308;
    let (sa, sb) = (a.to_bits() == STALE_BITS, b.to_bits() == STALE_BITS);
    if sa || sb {
        return sa && sb;
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    let sum = a.abs() + b.abs();
    if a == 0.0 || b == 0.0 || sum < MIN_NORMAL {
        return diff < 1e-6 * MIN_NORMAL;
    }
    diff / sum.min(f64::MAX) < 1e-6
}

fn check_annotations(
    kind: &str,
    got: &[String],
    want: &[Matchspec],
    none: bool,
) -> Result<(), String> {
    if none && !got.is_empty() {
        return Err(format!("expected no {kind} annotations, got {got:?}"));
    }
    if want.is_empty() {
        return Ok(());
    }
    if got.is_empty() {
        return Err(format!("expected {kind} annotation, got none"));
    }
    for g in got {
        if !want.iter().any(|w| w.matches(g)) {
            return Err(format!("unexpected {kind} annotation {g:?}"));
        }
    }
    for w in want {
        if !got.iter().any(|g| w.matches(g)) {
            return Err(format!(
                "expected {kind} annotation {w:?} not found in {got:?}"
            ));
        }
    }
    Ok(())
}

fn compare_matrix(got: &[Series], ev: &Eval, start: i64, step: i64) -> Result<(), String> {
    for w in got.windows(2) {
        if w[0].labels >= w[1].labels {
            return Err(format!(
                "matrix not sorted: {} before {}",
                w[0].labels, w[1].labels
            ));
        }
    }
    let mut expected: BTreeMap<&Labels, &ExpectedSeries> = BTreeMap::new();
    for e in &ev.series {
        expected.insert(&e.labels, e);
    }
    for s in got {
        if !expected.contains_key(&s.labels) {
            return Err(format!("unexpected series {} {:?}", s.labels, s.samples));
        }
    }
    for e in &ev.series {
        let Some(s) = got.iter().find(|s| s.labels == e.labels) else {
            return Err(format!("missing series {}", e.labels));
        };
        let want: Vec<(i64, f64)> = e
            .values
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.map(|v| (start + k as i64 * step, v)))
            .collect();
        let ok = want.len() == s.samples.len()
            && want
                .iter()
                .zip(&s.samples)
                .all(|(w, g)| w.0 == g.t && float_eq(w.1, g.v));
        if !ok {
            let got_pts: Vec<(i64, f64)> = s.samples.iter().map(|x| (x.t, x.v)).collect();
            return Err(format!(
                "series {}: want {want:?}, got {got_pts:?}",
                e.labels
            ));
        }
    }
    Ok(())
}

fn compare(ev: &Eval, res: Result<QueryResult, norn_promql::PromqlError>) -> Result<(), String> {
    let res = match (res, &ev.fail) {
        (Err(e), Some(spec)) => {
            return if spec.matches(&e.to_string()) {
                Ok(())
            } else {
                Err(format!("error {:?} does not match {spec:?}", e.to_string()))
            };
        }
        (Ok(r), Some(_)) => return Err(format!("expected failure, got {:?}", r.value)),
        (Err(e), None) => return Err(format!("unexpected error: {e}")),
        (Ok(r), None) => r,
    };
    check_annotations("warn", &res.warnings, &ev.warn, ev.no_warn)?;
    check_annotations("info", &res.infos, &ev.info, ev.no_info)?;
    if let Some(want) = &ev.string {
        return match &res.value {
            Value::String { v, .. } if v == want => Ok(()),
            other => Err(format!("want string {want:?}, got {other:?}")),
        };
    }
    if let Some(want) = ev.scalar {
        return match &res.value {
            Value::Scalar { v, .. } if float_eq(*v, want) => Ok(()),
            other => Err(format!("want scalar {want}, got {other:?}")),
        };
    }
    match &res.value {
        Value::Matrix(m) => {
            if ev.ordered {
                return Err("expect ordered with a matrix result".into());
            }
            if let Some((from, _, step)) = ev.range_vector {
                compare_matrix(m, ev, from, step)
            } else if let Some((from, _, step)) = ev.range {
                compare_matrix(m, ev, from, step)
            } else {
                Err(format!("unexpected matrix result {m:?}"))
            }
        }
        Value::Vector(v) => {
            if ev.range.is_some() || ev.range_vector.is_some() {
                return Err("want matrix, got vector".into());
            }
            if v.len() != ev.series.len() {
                let got: Vec<String> = v.iter().map(|s| format!("{} {}", s.labels, s.v)).collect();
                return Err(format!(
                    "want {} samples, got {}: {got:?}",
                    ev.series.len(),
                    v.len()
                ));
            }
            for (i, s) in v.iter().enumerate() {
                let e = if ev.ordered {
                    let e = &ev.series[i];
                    if e.labels != s.labels {
                        return Err(format!(
                            "order: position {i} want {}, got {}",
                            e.labels, s.labels
                        ));
                    }
                    e
                } else {
                    match ev.series.iter().find(|e| e.labels == s.labels) {
                        Some(e) => e,
                        None => return Err(format!("unexpected sample {} {}", s.labels, s.v)),
                    }
                };
                let want = e.values.first().copied().flatten();
                match want {
                    Some(w) if float_eq(w, s.v) => {}
                    _ => return Err(format!("{}: want {want:?}, got {}", s.labels, s.v)),
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected result {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// Running a file
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    pass: usize,
    fail: usize,
    skip: usize,
    skip_reasons: BTreeMap<String, usize>,
    details: Vec<String>,
}

impl Stats {
    fn skip(&mut self, reason: &str) {
        self.skip += 1;
        *self.skip_reasons.entry(reason.to_string()).or_default() += 1;
    }
}

fn called_functions(e: &promql_parser::parser::Expr, out: &mut Vec<&'static str>) {
    use promql_parser::parser::Expr;
    match e {
        Expr::Aggregate(a) => {
            called_functions(&a.expr, out);
            if let Some(p) = &a.param {
                called_functions(p, out);
            }
        }
        Expr::Unary(u) => called_functions(&u.expr, out),
        Expr::Binary(b) => {
            called_functions(&b.lhs, out);
            called_functions(&b.rhs, out);
        }
        Expr::Paren(p) => called_functions(&p.expr, out),
        Expr::Subquery(s) => called_functions(&s.expr, out),
        Expr::Call(c) => {
            out.push(c.func.name);
            for a in &c.args.args {
                called_functions(a, out);
            }
        }
        _ => {}
    }
}

/// `NORN_PROMQL_LENIENT=1` runs float evals even while histograms are loaded (they are simply
/// absent from the store); a debugging aid to find float bugs hidden by the strict rule.
fn lenient() -> bool {
    std::env::var("NORN_PROMQL_LENIENT").is_ok_and(|v| v == "1")
}

fn is_block_end(l: &str) -> bool {
    l.is_empty() || l.starts_with('#')
}

fn run_file(rt: &tokio::runtime::Runtime, engine: &Engine, text: &str) -> Stats {
    let mut stats = Stats::default();
    let store = MemStore::new();
    let mut has_hist = false;
    let mut has_st = false;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if is_block_end(line) {
            i += 1;
            continue;
        }
        let cmd = line.split_whitespace().next().unwrap_or("");
        if cmd == "clear" {
            store.clear();
            has_hist = false;
            has_st = false;
            i += 1;
            continue;
        }
        if cmd == "load" || cmd == "load_with_nhcb" {
            if cmd == "load_with_nhcb" {
                has_hist = true;
            }
            let interval = line
                .split_whitespace()
                .nth(1)
                .and_then(parse_duration)
                .unwrap_or(0);
            i += 1;
            while i < lines.len() && !is_block_end(lines[i]) {
                let l = lines[i];
                i += 1;
                if l.contains("{{") {
                    has_hist = true;
                    continue;
                }
                let Ok((labels, rest)) = parse_series_line(l) else {
                    stats
                        .details
                        .push(format!("line {i}: cannot parse load line {l:?}"));
                    continue;
                };
                if rest.starts_with("@st") || l.contains("}@st") {
                    has_st = true;
                    continue;
                }
                match expand_values(&rest) {
                    Ok(vals) => {
                        for (k, v) in vals.into_iter().enumerate() {
                            if let Some(v) = v {
                                store.add_sample(&labels, k as i64 * interval, v);
                            }
                        }
                    }
                    Err(e) => stats.details.push(format!("line {i}: load {l:?}: {e}")),
                }
            }
            continue;
        }
        if !cmd.starts_with("eval") {
            stats
                .details
                .push(format!("line {}: unknown command {line:?}", i + 1));
            i += 1;
            continue;
        }
        let header = parse_eval_header(line, i + 1);
        i += 1;
        let mut block_err: Option<String> = None;
        let mut ev = match header {
            Ok(ev) => Some(ev),
            Err(e) => {
                block_err = Some(e);
                None
            }
        };
        while i < lines.len() && !is_block_end(lines[i]) {
            let l = lines[i];
            i += 1;
            let Some(ev) = ev.as_mut() else { continue };
            if let Some(rest) = l.strip_prefix("expected_fail_message") {
                ev.fail = Some(Matchspec::Msg(rest.trim().to_string()));
                break;
            }
            if let Some(rest) = l.strip_prefix("expected_fail_regexp") {
                ev.fail = Some(Matchspec::Regex(rest.trim().to_string()));
                break;
            }
            if let Some(rest) = l.strip_prefix("expect range vector") {
                let w: Vec<&str> = rest.split_whitespace().collect();
                let parsed = (|| {
                    Some((
                        parse_duration(w.get(1)?)?,
                        parse_duration(w.get(3)?)?,
                        parse_duration(w.get(5)?)?,
                    ))
                })();
                match parsed {
                    Some(rv) => {
                        ev.range_vector = Some(rv);
                        ev.at = rv.1;
                    }
                    None => block_err = Some(format!("bad range vector line {l:?}")),
                }
                continue;
            }
            if let Some(rest) = l.strip_prefix("expect string") {
                match unquote(rest.trim()) {
                    Some(s) => ev.string = Some(s),
                    None => block_err = Some(format!("bad string line {l:?}")),
                }
                continue;
            }
            if let Some(rest) = l.strip_prefix("expect ") {
                let rest = rest.trim();
                let (kind, spec) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                match kind {
                    "fail" => ev.fail = Some(parse_matchspec(spec)),
                    "warn" => ev.warn.push(parse_matchspec(spec)),
                    "info" => ev.info.push(parse_matchspec(spec)),
                    "no_warn" => ev.no_warn = true,
                    "no_info" => ev.no_info = true,
                    "ordered" => ev.ordered = true,
                    _ => block_err = Some(format!("unknown expect {l:?}")),
                }
                continue;
            }
            if let Some(v) = parse_number(l) {
                ev.scalar = Some(v);
                break;
            }
            if l.contains("{{") {
                ev.histogram_expected = true;
                continue;
            }
            match parse_series_line(l)
                .and_then(|(labels, rest)| Ok((labels, expand_values(&rest)?)))
            {
                Ok((labels, values)) => ev.series.push(ExpectedSeries { labels, values }),
                Err(e) => block_err = Some(format!("bad expected line {l:?}: {e}")),
            }
        }
        let Some(ev) = ev else {
            stats.fail += 1;
            stats
                .details
                .push(format!("line {i}: {}", block_err.unwrap_or_default()));
            continue;
        };
        if ev.histogram_expected || (has_hist && !lenient()) {
            stats.skip("native histograms");
            continue;
        }
        if has_st {
            stats.skip("start timestamps (@st)");
            continue;
        }
        let parsed = match promql_parser::parser::parse(&ev.expr) {
            Ok(p) => p,
            Err(_) => {
                stats.skip("syntax the parser does not support (experimental)");
                continue;
            }
        };
        let mut fns = Vec::new();
        called_functions(&parsed, &mut fns);
        if let Some(f) = fns.iter().find(|f| UNSUPPORTED_FUNCTIONS.contains(f)) {
            stats.skip(&format!("unsupported experimental function {f}()"));
            continue;
        }
        if let Some(e) = block_err {
            stats.fail += 1;
            stats
                .details
                .push(format!("line {}: script error {e}", ev.line));
            continue;
        }
        let outcome = rt.block_on(run_eval(engine, &store, &ev, &parsed, &fns));
        match outcome {
            Ok(()) => stats.pass += 1,
            Err(e) => {
                stats.fail += 1;
                if stats.details.len() < max_details() {
                    stats
                        .details
                        .push(format!("line {}: {} -- {e}", ev.line, ev.expr));
                }
            }
        }
    }
    stats
}

/// Functions whose result depends on the evaluation time itself, so pinning selectors with
/// `@` would change the answer (upstream skips the `@` check for them).
const TIME_DEPENDENT: &[&str] = &[
    "time",
    "timestamp",
    "predict_linear",
    "start",
    "end",
    "range",
    "step",
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
];

/// Adds `@ at` to every selector and subquery that has none; does not descend into
/// subqueries, whose inner selectors must keep following the subquery's steps.
fn pin_at(e: &mut promql_parser::parser::Expr, at: std::time::SystemTime) {
    use promql_parser::parser::{AtModifier, Expr};
    match e {
        Expr::VectorSelector(vs) if vs.at.is_none() => vs.at = Some(AtModifier::At(at)),
        Expr::MatrixSelector(ms) if ms.vs.at.is_none() => ms.vs.at = Some(AtModifier::At(at)),
        Expr::Subquery(sq) if sq.at.is_none() => sq.at = Some(AtModifier::At(at)),
        Expr::Aggregate(a) => {
            pin_at(&mut a.expr, at);
            if let Some(p) = a.param.as_mut() {
                pin_at(p, at);
            }
        }
        Expr::Unary(u) => pin_at(&mut u.expr, at),
        Expr::Binary(b) => {
            pin_at(&mut b.lhs, at);
            pin_at(&mut b.rhs, at);
        }
        Expr::Paren(p) => pin_at(&mut p.expr, at),
        Expr::Call(c) => {
            for a in c.args.args.iter_mut() {
                pin_at(a, at);
            }
        }
        _ => {}
    }
}

fn system_time(ms: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// Turns a range-mode result into what the instant query would have returned at `t`.
fn point_at(res: QueryResult, t: i64, want_scalar: bool) -> Result<QueryResult, String> {
    let Value::Matrix(m) = &res.value else {
        return Err(format!("range query returned {:?}", res.value));
    };
    for w in m.windows(2) {
        if w[0].labels >= w[1].labels {
            return Err("range-mode matrix not sorted".into());
        }
    }
    let pts: Vec<norn_promql::VectorSample> = m
        .iter()
        .filter_map(|s| {
            s.samples
                .iter()
                .find(|x| x.t == t)
                .map(|x| norn_promql::VectorSample {
                    labels: s.labels.clone(),
                    t,
                    v: x.v,
                })
        })
        .collect();
    let value = if want_scalar && pts.len() == 1 && pts[0].labels.is_empty() {
        Value::Scalar { t, v: pts[0].v }
    } else {
        Value::Vector(pts)
    };
    Ok(QueryResult {
        value,
        warnings: res.warnings,
        infos: res.infos,
        stats: res.stats,
    })
}

/// Runs one eval plus upstream's extra checks for instant evals: the same expectations must
/// hold with every selector pinned by `@` at other evaluation times, and in range mode.
async fn run_eval(
    engine: &Engine,
    store: &MemStore,
    ev: &Eval,
    parsed: &promql_parser::parser::Expr,
    fns: &[&'static str],
) -> Result<(), String> {
    if let Some((from, to, step)) = ev.range {
        return compare(
            ev,
            engine.range_query(store, &ev.expr, from, to, step).await,
        );
    }
    compare(ev, engine.instant_query(store, &ev.expr, ev.at).await)?;
    let t = ev.at;
    let range_mode_ok = ev.range_vector.is_none()
        && ev.string.is_none()
        && !ev.ordered
        && !fns
            .iter()
            .any(|f| ["start", "end", "range", "step"].contains(f));
    let mut variants = vec![(ev.expr.clone(), "")];
    // The AST printer turns byte escapes like `\xff` into chars, which changes their
    // meaning, so such queries are not rewritten.
    if !fns.iter().any(|f| TIME_DEPENDENT.contains(f)) && !ev.expr.contains("\\x") {
        let mut pinned = parsed.clone();
        pin_at(&mut pinned, system_time(t));
        let text = pinned.to_string();
        if promql_parser::parser::parse(&text).is_ok() && text != ev.expr {
            let times: Vec<i64> = if t == 0 {
                vec![-1000, 0, 1000]
            } else {
                vec![-10 * t, 0, t / 5, t, 10 * t]
            };
            for at in times {
                AT_CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                compare(ev, engine.instant_query(store, &text, at).await)
                    .map_err(|e| format!("with @ pinned ({text}) at {at}ms: {e}"))?;
            }
            variants.push((text, " @-pinned"));
        }
    }
    if range_mode_ok {
        for (text, what) in variants {
            RANGE_CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let res = engine
                .range_query(store, &text, t - 60_000, t + 60_000, 60_000)
                .await;
            let res = match res {
                Ok(r) => point_at(r, t, ev.scalar.is_some())
                    .map_err(|e| format!("range mode{what}: {e}"))?,
                Err(e) => {
                    compare(ev, Err(e)).map_err(|e| format!("range mode{what}: {e}"))?;
                    continue;
                }
            };
            compare(ev, Ok(res)).map_err(|e| format!("range mode{what} ({text}): {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn prometheus_conformance() {
    let dir = tests_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!(
            "PromQL conformance scripts not found at {}; skipping",
            dir.display()
        );
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::new(EngineOptions {
        lookback_delta_ms: 300_000,
        max_samples: 50_000_000,
        timeout: std::time::Duration::from_secs(100),
        ..EngineOptions::default()
    });
    let only = std::env::var("NORN_PROMQL_TEST_FILE").ok();
    let mut total = Stats::default();
    let mut report = String::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let s = run_file(&rt, &engine, &text);
        let _ = writeln!(
            report,
            "{name:28} pass {:4}  fail {:4}  skip {:4}",
            s.pass, s.fail, s.skip
        );
        for (r, n) in &s.skip_reasons {
            let _ = writeln!(report, "    skipped {n:4}: {r}");
        }
        for d in &s.details {
            let _ = writeln!(report, "    FAIL {d}");
        }
        total.pass += s.pass;
        total.fail += s.fail;
        total.skip += s.skip;
        for (r, n) in s.skip_reasons {
            *total.skip_reasons.entry(r).or_default() += n;
        }
    }
    let _ = writeln!(
        report,
        "{:28} pass {:4}  fail {:4}  skip {:4}",
        "TOTAL", total.pass, total.fail, total.skip
    );
    for (r, n) in &total.skip_reasons {
        let _ = writeln!(report, "    skipped {n:4}: {r}");
    }
    let _ = writeln!(
        report,
        "extra checks run on passing instant evals: {} with @ pinned, {} in range mode",
        AT_CHECKS.load(std::sync::atomic::Ordering::Relaxed),
        RANGE_CHECKS.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("{report}");
    let floor_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance_floor.txt");
    let floor: usize = std::fs::read_to_string(&floor_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if only.is_none() && !lenient() {
        assert!(
            total.pass >= floor,
            "conformance regressed: {} evals pass, floor is {floor}",
            total.pass
        );
    }
}
