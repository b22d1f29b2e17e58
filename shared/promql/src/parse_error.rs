//! Prometheus-style positions (`line:col`) for PromQL parse errors.
//!
//! The `promql-parser` crate reports what is wrong but not where. Prometheus answers
//! `invalid parameter "query": 1:5: parse error: unclosed left parenthesis`, and users (and
//! Grafana's query editor) rely on the position. Lexer errors name a character or construct we
//! can find directly; for grammar errors we find the first token after which no completion of
//! the query parses — where Prometheus' parser would stop too.

/// Formats a parse error of `query` the way Prometheus' API does.
pub fn describe(query: &str, message: &str) -> String {
    let offset = locate(query, message).unwrap_or(query.len());
    let (line, col) = line_col(query, offset);
    format!("invalid parameter \"query\": {line}:{col}: parse error: {message}")
}

fn line_col(s: &str, offset: usize) -> (usize, usize) {
    let before = &s[..offset.min(s.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Byte offset of the error, if it can be told.
fn locate(q: &str, message: &str) -> Option<usize> {
    if message.contains("unclosed left parenthesis") {
        return unmatched_open(q, b'(', b')');
    }
    if message.contains("unclosed left bracket") {
        return unmatched_open(q, b'[', b']');
    }
    if message.contains("unclosed left brace") {
        return unmatched_open(q, b'{', b'}');
    }
    if message.contains("unterminated quoted string") {
        return unterminated_quote(q);
    }
    if let Some(ch) = quoted_char(message) {
        return outside_strings(q).find(|&(_, c)| c == ch).map(|(i, _)| i);
    }
    first_bad_token(q)
}

/// The character a lexer message quotes, e.g. `unexpected character: '#'`.
fn quoted_char(message: &str) -> Option<char> {
    let rest = message.rsplit_once(": ")?.1;
    let inner = rest.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut chars = inner.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// Characters outside string literals, with their byte offsets.
fn outside_strings(q: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    q.char_indices().filter(move |&(_, c)| {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && open != '`' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            return false;
        }
        if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
            return false;
        }
        true
    })
}

fn unmatched_open(q: &str, open: u8, close: u8) -> Option<usize> {
    let mut stack = Vec::new();
    for (i, c) in outside_strings(q) {
        if c as u32 == u32::from(open) {
            stack.push(i);
        } else if c as u32 == u32::from(close) {
            stack.pop();
        }
    }
    stack.first().copied()
}

fn unterminated_quote(q: &str) -> Option<usize> {
    let mut quote: Option<(char, usize)> = None;
    let mut escaped = false;
    for (i, c) in q.char_indices() {
        match quote {
            Some((open, _)) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && open != '`' {
                    escaped = true;
                } else if c == open {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some((c, i)),
            None => {}
        }
    }
    quote.map(|(_, i)| i)
}

/// Token boundaries: offsets where a new token starts (whitespace-separated, plus punctuation).
fn token_starts(q: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut prev_word = false;
    for (i, c) in outside_strings_with_strings(q) {
        match c {
            Tok::Space => prev_word = false,
            Tok::Word => {
                if !prev_word {
                    starts.push(i);
                }
                prev_word = true;
            }
            Tok::Punct => {
                starts.push(i);
                prev_word = false;
            }
            Tok::StringStart => {
                starts.push(i);
                prev_word = false;
            }
        }
    }
    starts
}

enum Tok {
    Space,
    Word,
    Punct,
    StringStart,
}

fn outside_strings_with_strings(q: &str) -> Vec<(usize, Tok)> {
    let mut out = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in q.char_indices() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && open != '`' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        let t = if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
            Tok::StringStart
        } else if c.is_whitespace() {
            Tok::Space
        } else if c.is_alphanumeric() || matches!(c, '_' | ':' | '.') {
            Tok::Word
        } else {
            Tok::Punct
        };
        out.push((i, t));
    }
    out
}

/// Completions tried after a prefix: if none makes it parse, the error is in the prefix.
const COMPLETIONS: &[&str] = &[
    "",
    " x",
    " 1",
    ")",
    "))",
    ")))",
    "}",
    "\"}",
    "]",
    ")]",
    "m]",
    "m:]",
    " x)",
    " 1)",
    "\"",
    "\")",
    "=\"\"}",
    "(x)",
    " by (x) (x)",
    " x)",
    "x",
    "1",
    "5m]",
];

fn completable(prefix: &str) -> bool {
    COMPLETIONS
        .iter()
        .any(|c| promql_parser::parser::parse(&format!("{prefix}{c}")).is_ok())
}

/// Longest query whose grammar error is located by trying every token prefix (each try is
/// a few parses of the prefix: quadratic in the query's length).
const LINEAR_SEARCH_MAX_BYTES: usize = 1 << 10;

/// Longest query whose grammar error is located at all, by bisecting the token prefixes;
/// beyond it the error is reported at the end of the query rather than spending seconds of
/// CPU on a hostile input.
const BISECT_MAX_BYTES: usize = 16 << 10;

/// The start of the first token whose prefix can no longer be completed into a valid query.
fn first_bad_token(q: &str) -> Option<usize> {
    if q.len() > BISECT_MAX_BYTES {
        return None;
    }
    let starts = token_starts(q);
    let prefix_end = |k: usize| starts.get(k + 1).copied().unwrap_or(q.len());
    if q.len() <= LINEAR_SEARCH_MAX_BYTES {
        for (k, &s) in starts.iter().enumerate() {
            if !completable(&q[..prefix_end(k)]) {
                return Some(s);
            }
        }
        return None;
    }
    // Once a prefix cannot be completed, longer ones almost never can: bisect for the first.
    let (mut lo, mut hi) = (0, starts.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if completable(&q[..prefix_end(mid)]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    starts.get(lo).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(q: &str) -> String {
        let msg = promql_parser::parser::parse(q).unwrap_err();
        describe(q, &msg)
    }

    #[test]
    fn lexer_errors_point_at_the_culprit() {
        assert!(
            pos("sum(").contains("1:4: parse error: unclosed left parenthesis"),
            "{}",
            pos("sum(")
        );
        assert!(
            pos("up{job=\"a}").contains("1:8:"),
            "{}",
            pos("up{job=\"a}")
        );
        assert!(pos("up $ x").contains("1:4:"), "{}", pos("up $ x"));
    }

    #[test]
    fn grammar_errors_point_at_the_first_impossible_token() {
        assert!(pos("foo bar").contains("1:5:"), "{}", pos("foo bar"));
        assert!(
            pos("sum(up) by").contains(": parse error:"),
            "{}",
            pos("sum(up) by")
        );
        assert!(
            pos("1 +").starts_with("invalid parameter \"query\": 1:"),
            "{}",
            pos("1 +")
        );
    }

    #[test]
    fn long_queries_are_located_with_few_parses() {
        // A long valid prefix then a grammar error: bisected, same answer as the scan.
        let q = format!("sum(up{{job=\"{}\"}}) by (job) bar", "x".repeat(1_500));
        assert!(q.len() > LINEAR_SEARCH_MAX_BYTES);
        let col = q.len() - 2;
        assert!(pos(&q).contains(&format!("1:{col}:")), "{}", pos(&q));
        // Beyond the bisect bound the error is put at the end, without parsing prefixes.
        let q = format!("up{{job=\"{}\"}} bar", "x".repeat(20_000));
        assert!(q.len() > BISECT_MAX_BYTES);
        assert_eq!(first_bad_token(&q), None);
    }

    #[test]
    fn multi_line_positions() {
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
