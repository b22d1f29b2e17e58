//! Labels and label sets.
//!
//! A [`Labels`] value is always sorted by label name and holds no duplicate names, so two equal
//! label sets compare, hash and serialise identically. [`hash_label_pairs`] is the stable 64-bit
//! hash used to find a series by its labels; it works on borrowed bytes so the write path can
//! look a series up without building a `Labels` first.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label: a name and a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A sorted set of labels with unique names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// An empty label set.
    pub fn empty() -> Self {
        Self(Vec::new())
    }

    /// Builds a label set, sorting by name. When a name appears twice the last value wins;
    /// callers that must reject duplicates (validation) check before building.
    pub fn new(mut labels: Vec<Label>) -> Self {
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        // Keep the last of equal names: reverse-dedup keeps the first of each run.
        labels.reverse();
        labels.dedup_by(|a, b| a.name == b.name);
        labels.reverse();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        Self(labels)
    }

    /// Wraps labels that the caller guarantees are sorted by name and unique.
    pub fn from_sorted(labels: Vec<Label>) -> Self {
        debug_assert!(
            labels.windows(2).all(|w| w[0].name < w[1].name),
            "labels not sorted"
        );
        Self(labels)
    }

    /// Builds a label set from `(name, value)` pairs.
    pub fn from_pairs<N: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        Self::new(pairs.into_iter().map(|(n, v)| Label::new(n, v)).collect())
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    /// The metric name, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// Sets (or replaces) a label, keeping the set sorted. An empty value removes the label,
    /// as in Prometheus.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].value = value.to_string(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, Label::new(name, value)),
        }
    }

    /// Removes a label if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }

    /// A copy without the metric name.
    pub fn without_metric_name(&self) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| l.name != METRIC_NAME)
                .cloned()
                .collect(),
        )
    }

    /// Only the named labels (used by `by (...)` grouping).
    pub fn keep(&self, names: &[impl AsRef<str>]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| names.iter().any(|n| n.as_ref() == l.name))
                .cloned()
                .collect(),
        )
    }

    /// All but the named labels (used by `without (...)` grouping).
    pub fn drop_names(&self, names: &[impl AsRef<str>]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| !names.iter().any(|n| n.as_ref() == l.name))
                .cloned()
                .collect(),
        )
    }

    /// The stable 64-bit hash of this label set; equal to [`hash_label_pairs`] over the same
    /// names and values.
    pub fn stable_hash(&self) -> u64 {
        hash_label_pairs(
            self.0
                .iter()
                .map(|l| (l.name.as_bytes(), l.value.as_bytes())),
        )
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `name{a="b", c="d"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        if let Some(name) = name {
            f.write_str(name)?;
        }
        let rest: Vec<&Label> = self.0.iter().filter(|l| l.name != METRIC_NAME).collect();
        if rest.is_empty() && name.is_some() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, l) in rest.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Separator byte between names and values in the hash input; it cannot appear in valid
/// UTF-8, so `{a="bc"}` and `{ab="c"}` hash differently.
const SEP: u8 = 0xff;

/// The stable hash of sorted `(name, value)` byte pairs (xxh3-64 over `name 0xff value 0xff`…).
/// Stable across processes and versions: it decides series placement on the ring.
pub fn hash_label_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    for (n, v) in pairs {
        h.update(n);
        h.update(&[SEP]);
        h.update(v);
        h.update(&[SEP]);
    }
    h.digest()
}

/// Whether `name` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, the legacy charset that
/// every Prometheus version accepts).
pub fn is_valid_label_name(name: &[u8]) -> bool {
    match name.split_first() {
        None => false,
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        }
    }
}

/// Whether `name` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_valid_metric_name(name: &[u8]) -> bool {
    match name.split_first() {
        None => false,
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_' || *first == b':')
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_sorts_and_last_duplicate_wins() {
        let l = Labels::new(vec![
            Label::new("b", "1"),
            Label::new("a", "2"),
            Label::new("b", "3"),
        ]);
        assert_eq!(l.len(), 2);
        assert_eq!(l.get("a"), Some("2"));
        assert_eq!(l.get("b"), Some("3"));
    }

    #[test]
    fn display_is_prometheus_text_form() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]);
        assert_eq!(l.to_string(), r#"up{job="x"}"#);
        assert_eq!(Labels::from_pairs([("__name__", "up")]).to_string(), "up");
        assert_eq!(Labels::from_pairs([("a", "b")]).to_string(), r#"{a="b"}"#);
    }

    #[test]
    fn set_and_remove_keep_order() {
        let mut l = Labels::from_pairs([("a", "1"), ("c", "3")]);
        l.set("b", "2");
        assert_eq!(
            l.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        l.set("b", "");
        assert_eq!(l.get("b"), None);
        l.remove("a");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn hash_separates_name_and_value() {
        let a = Labels::from_pairs([("a", "bc")]);
        let b = Labels::from_pairs([("ab", "c")]);
        assert_ne!(a.stable_hash(), b.stable_hash());
    }

    #[test]
    fn name_charsets() {
        assert!(is_valid_label_name(b"_a1"));
        assert!(!is_valid_label_name(b"1a"));
        assert!(!is_valid_label_name(b"a:b"));
        assert!(!is_valid_label_name(b""));
        assert!(is_valid_metric_name(b"a:b_c"));
        assert!(!is_valid_metric_name(b"a-b"));
    }

    proptest! {
        #[test]
        fn stable_hash_equals_pair_hash(pairs in proptest::collection::btree_map("[a-z_]{1,8}", ".{0,8}", 0..8)) {
            let l = Labels::from_pairs(pairs.clone());
            let h = hash_label_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            prop_assert_eq!(l.stable_hash(), h);
        }
    }
}
