//! What keeps one query from taking the process down: a size and nesting check of the query
//! text before it is parsed, the thread with a known stack that parses, plans and evaluates
//! it, and the stop signal (deadline or cancellation) the evaluation polls.
//!
//! Why each exists:
//! - The parser (an LR parser whose actions build a boxed AST), the planner, the evaluator,
//!   `prettify` and even `Drop` of the AST recurse once per level of nesting. `1+1+…+1` with
//!   10,000 terms or 5,000 parentheses overflowed a runtime thread's stack and aborted the
//!   process, and deep nesting is also slow to parse (3,000 parentheses took 24 s). The text
//!   is therefore scanned before parsing (linear, no allocation per byte) for an upper bound
//!   of the AST's depth, and refused with `bad_data` above the configured depth.
//! - The depth limit alone would tie safety to frame sizes that change with every compiler
//!   release and build profile, so parsing and evaluation run on a thread of their own whose
//!   stack ([`QUERY_THREAD_STACK_BYTES`]) is far larger than the deepest query the limit lets
//!   through needs (a test evaluates a query at [`MAX_QUERY_DEPTH_CEILING`]). That thread also
//!   keeps CPU-heavy parsing off the async reactor. The threads are pooled (`crate::threads`).
//! - A query's deadline and its caller going away are seen by the evaluation through
//!   [`Stop`]: a flag set when the query's future is dropped (client disconnect, request
//!   timeout) plus the deadline, polled every [`CHECK_EVERY`] units of work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{PromqlError, Result};

/// Stack of the thread a query is parsed, planned and evaluated on. Only the pages a query
/// touches are committed; the rest is address space.
pub const QUERY_THREAD_STACK_BYTES: usize = 64 << 20;

/// The deepest nesting a configuration may allow; the thread's stack is sized (and tested)
/// for it.
pub const MAX_QUERY_DEPTH_CEILING: usize = 1_000;

/// Default longest query text (256 KiB): far beyond what dashboards send.
pub const DEFAULT_MAX_QUERY_BYTES: usize = 256 << 10;

/// Default deepest nesting: far beyond hand-written and generated dashboard queries.
pub const DEFAULT_MAX_QUERY_DEPTH: usize = 200;

/// Units of work (steps, windows, samples produced) between two looks at the clock and the
/// flag: a few microseconds of work, so the check costs nothing measurable.
pub(crate) const CHECK_EVERY: u64 = 256;

/// Refuses a query text that is longer than `max_bytes` (0 = no limit) or whose expression
/// could nest deeper than `max_depth`, before any parsing.
pub fn check_query_text(query: &str, max_bytes: usize, max_depth: usize) -> Result<()> {
    checked_depth(query, max_bytes, max_depth).map(|_| ())
}

/// [`check_query_text`], returning the nesting depth it found (the engine decides with it
/// where a query is planned, without scanning the text again).
pub(crate) fn checked_depth(query: &str, max_bytes: usize, max_depth: usize) -> Result<usize> {
    if max_bytes > 0 && query.len() > max_bytes {
        return Err(PromqlError::TooComplex(format!(
            "the query expression is {} bytes long, more than the limit of {max_bytes} bytes (querier.max-query-expression-size-bytes)",
            query.len()
        )));
    }
    let depth = nesting_depth(query);
    if depth > max_depth {
        return Err(PromqlError::TooComplex(format!(
            "the query expression nests {depth} levels deep, more than the limit of {max_depth} levels (querier.max-query-expression-depth); nesting counts parentheses, brackets, braces, unary and binary operators"
        )));
    }
    check_duration_literals(query).map_err(PromqlError::Parse)?;
    Ok(depth)
}

/// The largest duration a number may spell in seconds (`[300]`, `[5m:60]`, `offset 1e3`):
/// Go's `time.Duration` limit, about 292 years, as Prometheus has.
const MAX_DURATION_SECONDS: f64 = 9_223_372_036.0;

/// Refuses a number written where promql-parser expects a duration (inside `[…]`, after
/// `offset`) that no duration can hold: too large, negative, infinite or NaN. The parser turns
/// such numbers into a `Duration` with `Duration::from_secs_f64`, which panics on them
/// (`max_over_time(up[3m:1e27])`, found by the `promql_eval` fuzzer): every caller of the
/// parser runs this first. Strings and comments are skipped; anything it cannot read as a
/// number is left to the parser.
pub fn check_duration_literals(query: &str) -> std::result::Result<(), String> {
    let b = query.as_bytes();
    let mut i = 0;
    let mut brackets = 0usize;
    let mut after_offset = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' && c != b'`' { 2 } else { 1 };
                }
                i += 1;
                after_offset = false;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'[' => brackets += 1,
            b']' => brackets = brackets.saturating_sub(1),
            _ => {}
        }
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || b[i] == b'_'
                    || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let token = &query[start..i];
            if token.eq_ignore_ascii_case("offset") {
                after_offset = true;
                continue;
            }
            if (brackets > 0 || after_offset)
                && let Some(v) = number_value(token)
                && !(v.is_finite() && (0.0..=MAX_DURATION_SECONDS).contains(&v))
            {
                return Err(format!("duration out of range: {token}"));
            }
            after_offset = false;
            continue;
        }
        if !c.is_ascii_whitespace() && c != b'-' && c != b'+' {
            after_offset = false;
        }
        i += 1;
    }
    Ok(())
}

/// The value of a number token as PromQL reads one (decimal, `0x` hex, `Inf`, `NaN`), or
/// `None` when it is no number (a duration with units such as `5m`, a name).
fn number_value(token: &str) -> Option<f64> {
    let t = token.to_ascii_lowercase();
    if let Some(hex) = t.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(|v| v as f64);
    }
    if t == "inf" || t == "nan" {
        return Some(if t == "inf" { f64::INFINITY } else { f64::NAN });
    }
    if !t.starts_with(|ch: char| ch.is_ascii_digit() || ch == '.') {
        return None;
    }
    t.parse::<f64>().ok()
}

/// One open bracket while scanning: the operators seen in the current argument, the deepest
/// bracket closed inside it, and the deepest earlier argument (arguments are siblings).
#[derive(Default, Clone, Copy)]
struct Frame {
    ops: usize,
    deepest_child: usize,
    deepest_arg: usize,
    braces: bool,
}

impl Frame {
    fn arg_depth(&self) -> usize {
        self.ops.saturating_add(self.deepest_child)
    }

    fn depth(&self) -> usize {
        self.deepest_arg.max(self.arg_depth())
    }
}

/// An upper bound of how deep the AST of `query` nests: per bracket level, the operators of
/// one argument (a chain of `n` binary or unary operators is `n` levels deep, whatever the
/// precedence) plus the deepest bracket inside it, plus one for the bracket. Strings and
/// comments are skipped; operators inside `{…}` are label matchers and do not count. It
/// only has to be an upper bound: counting a few things that are not operators (the sign of
/// `offset -5m`) costs a level or two, never a crash.
pub fn nesting_depth(query: &str) -> usize {
    let b = query.as_bytes();
    let mut stack: Vec<Frame> = vec![Frame::default()];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let in_braces = stack.last().is_some_and(|f| f.braces);
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => stack.push(Frame {
                braces: c == b'{',
                ..Frame::default()
            }),
            b')' | b']' | b'}' => close(&mut stack),
            b',' => {
                let f = stack.last_mut().expect("root stays");
                f.deepest_arg = f.depth();
                f.ops = 0;
                f.deepest_child = 0;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' if !in_braces => {
                count_op(&mut stack);
                // `<=` and `>=` are one operator.
                if i + 1 < b.len() && b[i + 1] == b'=' {
                    i += 1;
                }
            }
            // `==`, `!=`; a lone `=` or `!` is a syntax error the parser reports.
            b'=' | b'!' if !in_braces && b.get(i + 1) == Some(&b'=') => {
                count_op(&mut stack);
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                i = skip_number(b, i);
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &b[start..i];
                if !in_braces
                    && ["and", "or", "unless", "atan2"]
                        .iter()
                        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
                {
                    count_op(&mut stack);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // Unclosed brackets are a parse error, but the parser still recurses over them.
    while stack.len() > 1 {
        close(&mut stack);
    }
    stack[0].depth()
}

/// Closes the innermost bracket: its depth, plus one for itself, counts in its parent.
fn close(stack: &mut Vec<Frame>) {
    if stack.len() > 1 {
        let f = stack.pop().expect("more than the root");
        let d = f.depth().saturating_add(1);
        let parent = stack.last_mut().expect("root stays");
        parent.deepest_child = parent.deepest_child.max(d);
    }
}

fn count_op(stack: &mut [Frame]) {
    let f = stack.last_mut().expect("root stays");
    f.ops = f.ops.saturating_add(1);
}

/// The end of a number literal starting at `i` (`1e-5` keeps its sign, hex and durations
/// like `5m` are one token).
fn skip_number(b: &[u8], mut i: usize) -> usize {
    let hex = b[i] == b'0' && i + 1 < b.len() && (b[i + 1] | 0x20) == b'x';
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' {
            i += 1;
            if !hex && (c | 0x20) == b'e' && i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
        } else {
            break;
        }
    }
    i
}

/// How a running query learns that it must stop: its deadline, or the flag its caller's
/// drop guard sets.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    pub deadline: Instant,
    pub canceled: Arc<AtomicBool>,
}

impl Stop {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            canceled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Fails with why the query must stop, if it must.
    pub fn check(&self) -> Result<()> {
        if self.canceled.load(Ordering::Relaxed) {
            return Err(PromqlError::Canceled);
        }
        if Instant::now() > self.deadline {
            return Err(PromqlError::Timeout);
        }
        Ok(())
    }

    /// A guard that cancels the query when dropped, unless disarmed: held by the query's
    /// future, so dropping that future stops the evaluation thread.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Arc::clone(&self.canceled))
    }
}

/// Sets the cancellation flag when dropped.
pub(crate) struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_and_operator_chains() {
        assert_eq!(nesting_depth("up"), 0);
        assert_eq!(nesting_depth("sum(rate(x[5m]))"), 3);
        assert_eq!(nesting_depth("((((1))))"), 4);
        assert_eq!(nesting_depth("1+1+1+1"), 3);
        assert_eq!(nesting_depth("- - - 1"), 3);
        assert_eq!(nesting_depth("a and b or c unless d"), 3);
        assert_eq!(nesting_depth("a >= b <= c == d != e"), 4);
        // Arguments are siblings, not a chain.
        assert_eq!(nesting_depth("f(a+b, c+d)"), 2);
        // Matchers, strings, comments and number literals are no operators.
        assert_eq!(nesting_depth(r#"x{a!="-", b=~"+*(("}"#), 1);
        assert_eq!(nesting_depth("x # (((((+\n"), 0);
        assert_eq!(nesting_depth("1e-5 + 0x1e"), 1);
        assert_eq!(nesting_depth("'a\\'(('"), 0);
        // Unclosed brackets still count.
        assert_eq!(nesting_depth("((((("), 5);
        // Stray closers do not underflow.
        assert_eq!(nesting_depth(")))(x)"), 1);
    }

    #[test]
    fn huge_inputs_are_refused_before_parsing() {
        let terms = vec!["1"; 10_000].join("+");
        let e =
            check_query_text(&terms, DEFAULT_MAX_QUERY_BYTES, DEFAULT_MAX_QUERY_DEPTH).unwrap_err();
        assert!(matches!(e, PromqlError::TooComplex(_)));
        assert!(e.to_string().contains("9999 levels"), "{e}");
        assert!(e.to_string().contains("limit of 200"), "{e}");
        let parens = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
        let e = check_query_text(&parens, DEFAULT_MAX_QUERY_BYTES, DEFAULT_MAX_QUERY_DEPTH)
            .unwrap_err();
        assert!(e.to_string().contains("5000 levels"), "{e}");
        let long = "x".repeat(DEFAULT_MAX_QUERY_BYTES + 1);
        let e =
            check_query_text(&long, DEFAULT_MAX_QUERY_BYTES, DEFAULT_MAX_QUERY_DEPTH).unwrap_err();
        assert!(
            e.to_string().contains("max-query-expression-size-bytes"),
            "{e}"
        );
        assert!(check_query_text(&long, 0, DEFAULT_MAX_QUERY_DEPTH).is_ok());
    }
}
