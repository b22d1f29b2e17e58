//! Label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus' semantics.
//!
//! Regular expressions are fully anchored (`^(?s:re)$`), and a missing label matches like an
//! empty value, so `{foo=""}` selects series without `foo`.
//!
//! A regex that can only match a few literal strings (`a|b|c`, `host-0000[0-9]:9100`,
//! `(?i)get`) carries them as its [set](Matcher::set_matches), worked out once when the
//! matcher is built, as Prometheus' `findSetMatches` does: indexes then look those values
//! up instead of running the regex over every value of the label, and the matcher itself
//! tests values against the set without compiling the regex at all.
//!
//! Compiling a regex costs tens of microseconds (more than the rest of a small dashboard
//! query), and dashboards send the same patterns over and over, so compiled patterns are kept
//! in a small process-wide cache keyed by the pattern.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;
use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// Most literal strings a regex is expanded to (Prometheus' `maxSetMatches`).
const MAX_SET_MATCHES: usize = 256;

/// The four matcher operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Equal => "=",
            MatchType::NotEqual => "!=",
            MatchType::Regex => "=~",
            MatchType::NotRegex => "!~",
        }
    }
}

/// A matcher could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid regular expression {pattern:?} in matcher for label {name:?}: {source}")]
pub struct MatcherError {
    pub name: String,
    pub pattern: String,
    #[source]
    pub source: regex::Error,
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub kind: MatchType,
    pub name: String,
    pub value: String,
    /// The compiled pattern of a regex kind.
    compiled: Option<Arc<Compiled>>,
}

/// A regex pattern compiled for matching: either the literal strings it can only match, or
/// the regex itself.
#[derive(Debug)]
struct Compiled {
    /// The strings the pattern matches, in the pattern's order, when they are few.
    set: Option<Vec<String>>,
    /// `set`, sorted, for lookups.
    sorted: Vec<String>,
    /// The anchored regex, when the pattern is not a literal set.
    re: Option<Regex>,
}

/// Patterns compiled recently. Bounded in entries (cleared when full) and in pattern length,
/// so hostile queries cannot grow it.
static COMPILED: LazyLock<Mutex<HashMap<String, Arc<Compiled>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
const COMPILED_MAX_ENTRIES: usize = 1024;
const COMPILED_MAX_PATTERN: usize = 4096;

impl Compiled {
    fn get(pattern: &str) -> Result<Arc<Compiled>, regex::Error> {
        let cache = || COMPILED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache().get(pattern) {
            return Ok(Arc::clone(c));
        }
        let set = literal_set(pattern);
        let re = match set {
            Some(_) => None,
            None => Some(Regex::new(&format!("^(?s:{pattern})$"))?),
        };
        let mut sorted = set.clone().unwrap_or_default();
        sorted.sort_unstable();
        let compiled = Arc::new(Compiled { set, sorted, re });
        if pattern.len() <= COMPILED_MAX_PATTERN {
            let mut cache = cache();
            if cache.len() >= COMPILED_MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(pattern.to_owned(), Arc::clone(&compiled));
        }
        Ok(compiled)
    }

    fn matches(&self, value: &str) -> bool {
        match &self.re {
            Some(re) => re.is_match(value),
            None => self
                .sorted
                .binary_search_by(|s| s.as_str().cmp(value))
                .is_ok(),
        }
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.name == other.name && self.value == other.value
    }
}

impl Eq for Matcher {}

impl Matcher {
    /// Builds a matcher; regex kinds compile `value` fully anchored.
    pub fn new(
        kind: MatchType,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let compiled = match kind {
            MatchType::Regex | MatchType::NotRegex => {
                Some(Compiled::get(&value).map_err(|source| MatcherError {
                    name: name.clone(),
                    pattern: value.clone(),
                    source,
                })?)
            }
            _ => None,
        };
        Ok(Self {
            kind,
            name,
            value,
            compiled,
        })
    }

    /// An `=` matcher (cannot fail).
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: MatchType::Equal,
            name: name.into(),
            value: value.into(),
            compiled: None,
        }
    }

    /// Whether a label value (empty when the label is absent) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self.kind {
            MatchType::Equal => self.value == value,
            MatchType::NotEqual => self.value != value,
            MatchType::Regex => self.regex_matches(value),
            MatchType::NotRegex => !self.regex_matches(value),
        }
    }

    fn regex_matches(&self, value: &str) -> bool {
        self.compiled.as_ref().is_some_and(|c| c.matches(value))
    }

    /// Whether the matcher accepts the empty string, i.e. also matches series that lack the
    /// label. Selecting by such a matcher alone needs the full series list.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For a `=~` regex that matches only a few literal strings (`a|b|c`, `x[0-9]`), exactly
    /// those strings; lets an index look the values up directly instead of scanning every
    /// value.
    pub fn set_matches(&self) -> Option<&[String]> {
        match self.kind {
            MatchType::Regex => self.compiled.as_ref()?.set.as_deref(),
            _ => None,
        }
    }
}

/// The strings `pattern` (fully anchored, `(?s)`, as [`Matcher::new`] compiles it) matches,
/// if they are at most [`MAX_SET_MATCHES`]: literals, small character classes, and
/// concatenations and alternations of them.
fn literal_set(pattern: &str) -> Option<Vec<String>> {
    // Parsed exactly as compiled: a pattern such as `a)|(b` escapes the group and the anchors.
    let hir = regex_syntax::Parser::new()
        .parse(&format!("^(?s:{pattern})$"))
        .ok()?;
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let anchored = parts.len() >= 2
        && matches!(parts[0].kind(), HirKind::Look(Look::Start))
        && matches!(parts[parts.len() - 1].kind(), HirKind::Look(Look::End));
    if !anchored {
        return None;
    }
    let mut set = expand_concat(&parts[1..parts.len() - 1])?;
    // Keep the first of duplicates (`a|a`), in the pattern's order.
    let mut seen = std::collections::HashSet::with_capacity(set.len());
    set.retain(|s| seen.insert(s.clone()));
    Some(set)
}

/// Every string `hir` matches, unless there are more than [`MAX_SET_MATCHES`] or the
/// expression is not made of literals, classes, concatenations and alternations.
fn expand(hir: &Hir) -> Option<Vec<String>> {
    match hir.kind() {
        HirKind::Empty => Some(vec![String::new()]),
        HirKind::Literal(l) => Some(vec![String::from_utf8(l.0.to_vec()).ok()?]),
        HirKind::Class(Class::Unicode(c)) => {
            let n: u32 = c
                .ranges()
                .iter()
                .map(|r| u32::from(r.end()) - u32::from(r.start()) + 1)
                .sum();
            if n as usize > MAX_SET_MATCHES {
                return None;
            }
            let chars = c.ranges().iter().flat_map(|r| r.start()..=r.end());
            Some(chars.map(String::from).collect())
        }
        HirKind::Capture(c) => expand(&c.sub),
        HirKind::Concat(parts) => expand_concat(parts),
        HirKind::Alternation(alts) => {
            let mut out = Vec::new();
            for a in alts {
                out.extend(expand(a)?);
                if out.len() > MAX_SET_MATCHES {
                    return None;
                }
            }
            Some(out)
        }
        // Byte classes, anchors and word boundaries, repetitions.
        HirKind::Class(Class::Bytes(_)) | HirKind::Look(_) | HirKind::Repetition(_) => None,
    }
}

/// Every concatenation of one string of each of `parts`, in order (see [`expand`]).
fn expand_concat(parts: &[Hir]) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    for p in parts {
        let tails = expand(p)?;
        if out.len() * tails.len() > MAX_SET_MATCHES {
            return None;
        }
        out = out
            .iter()
            .flat_map(|head| tails.iter().map(move |t| format!("{head}{t}")))
            .collect();
    }
    Some(out)
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.kind.as_str(), self.value)
    }
}

/// Whether a label set (given as a lookup function) satisfies every matcher.
pub fn matches_all<'a>(matchers: &[Matcher], get: impl Fn(&str) -> Option<&'a str>) -> bool {
    matchers
        .iter()
        .all(|m| m.matches(get(&m.name).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_anchored_and_dotall() {
        let m = Matcher::new(MatchType::Regex, "a", "fo+").unwrap();
        assert!(m.matches("foo"));
        assert!(!m.matches("xfoo"));
        assert!(!m.matches("foox"));
        let m = Matcher::new(MatchType::Regex, "a", ".*").unwrap();
        assert!(m.matches("a\nb"));
    }

    #[test]
    fn empty_matchers() {
        assert!(Matcher::equal("a", "").matches_empty());
        assert!(
            !Matcher::new(MatchType::Regex, "a", ".+")
                .unwrap()
                .matches_empty()
        );
        assert!(
            Matcher::new(MatchType::NotRegex, "a", ".+")
                .unwrap()
                .matches_empty()
        );
    }

    #[test]
    fn set_matches_only_for_literal_alternations() {
        let m = Matcher::new(MatchType::Regex, "a", "x|y|zz").unwrap();
        assert_eq!(m.set_matches().unwrap(), ["x", "y", "zz"]);
        assert!(
            Matcher::new(MatchType::Regex, "a", "x.*")
                .unwrap()
                .set_matches()
                .is_none()
        );
    }

    #[test]
    fn set_matches_expand_small_classes_and_groups() {
        let set = |re: &str| {
            Matcher::new(MatchType::Regex, "a", re)
                .unwrap()
                .set_matches()
                .map(<[String]>::to_vec)
        };
        let hosts: Vec<String> = (0..10).map(|i| format!("host-0000{i}:9100")).collect();
        assert_eq!(set("host-0000[0-9]:9100").unwrap(), hosts);
        assert_eq!(set(r"a\.b|c").unwrap(), ["a.b", "c"]);
        assert_eq!(set("(?i)ab").unwrap().len(), 4);
        assert_eq!(set("(a|b)(c|d)").unwrap(), ["ac", "ad", "bc", "bd"]);
        assert_eq!(set("x|").unwrap(), ["x", ""]);
        assert_eq!(set("a|a").unwrap(), ["a"]);
        assert!(set("x+").is_none());
        assert!(set("^x$").is_none());
        // Closes the anchoring group: `^(?s:a)|(b)$` matches "ab", not only "a" and "b".
        assert!(set("a)|(b").is_none());
        assert!(set("[a-z][a-z]").is_none(), "676 strings");
        assert!(
            Matcher::new(MatchType::NotRegex, "a", "x|y")
                .unwrap()
                .set_matches()
                .is_none()
        );
    }

    proptest::proptest! {
        /// A set, when there is one, is exactly what the regex matches.
        #[test]
        fn set_matches_agree_with_the_regex(
            re in "(a|b|[xy]|\\.|\\(|\\)|\\||\\?|\\*|z?|\\[|\\]|c{2}){0,5}",
            probe in "[abxyz.()|c]{0,4}",
        ) {
            if let Ok(m) = Matcher::new(MatchType::Regex, "l", re.clone())
                && let Some(set) = m.set_matches()
            {
                for s in set {
                    proptest::prop_assert!(m.matches(s), "{re:?} does not match {s:?}");
                }
                proptest::prop_assert_eq!(
                    m.matches(&probe),
                    set.contains(&probe),
                    "{:?} on {:?}", re, probe
                );
            }
        }
    }

    #[test]
    fn bad_regex_is_an_error() {
        let err = Matcher::new(MatchType::Regex, "a", "(").unwrap_err();
        assert!(err.to_string().contains("invalid regular expression"));
    }
}
