//! Query sharding's series selector: the `__query_shard__="i_of_N"` matcher.
//!
//! The query-frontend runs a shardable aggregation as N legs, each with the matcher
//! `__query_shard__="i_of_N"` (1-based, as Mimir writes it) added to every vector selector.
//! No stored series carries that label: every read source takes the matcher out of the list
//! ([`ShardSelector::split`]) before looking series up, and keeps only the series whose
//! [stable label hash](crate::Labels::stable_hash) falls in shard `i` (hash mod N). The hash
//! is a function of the labels alone, so a series is in the same shard in the head, in every
//! block, on every ingester and store-gateway, and the N legs together read every series
//! exactly once.
//!
//! A malformed value (`0_of_4`, `5_of_4`, `x`), a matcher on the label that is not `=`, or two
//! shard matchers in one selector are refused with [`ShardError`] (a 400 at the querier):
//! silently matching nothing, or everything, would give a wrong answer that looks right.

use std::borrow::Cow;
use std::fmt;

use crate::labels::Labels;
use crate::matcher::{MatchType, Matcher};

/// The label name of the shard matcher (Mimir's).
pub const SHARD_LABEL: &str = "__query_shard__";

/// Most shards a query may be cut into (bounds the legs a hostile matcher could imply, and
/// is far above any useful `query_sharding_total_shards`).
pub const MAX_SHARDS: u64 = 1 << 16;

/// One shard of N: the series whose label hash is `index` mod `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardSelector {
    /// Zero-based shard index, `< count`.
    pub index: u64,
    /// Number of shards, `>= 1`.
    pub count: u64,
}

/// A shard matcher that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {SHARD_LABEL} matcher: {0}")]
pub struct ShardError(String);

impl ShardSelector {
    /// Shard `index` (zero-based) of `count`.
    pub fn new(index: u64, count: u64) -> Result<Self, ShardError> {
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(ShardError(format!(
                "shard {} of {count} (shards are 1 to N, N at most {MAX_SHARDS})",
                index.saturating_add(1)
            )));
        }
        Ok(Self { index, count })
    }

    /// Parses a label value `i_of_N` (1-based `i`).
    pub fn parse(value: &str) -> Result<Self, ShardError> {
        let bad = || {
            ShardError(format!(
                "value {value:?} is not of the form \"<shard>_of_<total>\""
            ))
        };
        let (i, n) = value.split_once("_of_").ok_or_else(bad)?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(i) || !digits(n) {
            return Err(bad());
        }
        let (i, n): (u64, u64) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if i == 0 {
            return Err(bad());
        }
        Self::new(i - 1, n)
    }

    /// The label value, `i_of_N`.
    pub fn label_value(&self) -> String {
        format!("{}_of_{}", self.index + 1, self.count)
    }

    /// The matcher that selects this shard.
    pub fn matcher(&self) -> Matcher {
        Matcher::equal(SHARD_LABEL, self.label_value())
    }

    /// Whether a series with this [label hash](crate::hash_label_pairs) is in the shard.
    pub fn contains_hash(&self, hash: u64) -> bool {
        hash % self.count == self.index
    }

    /// Whether a series with these labels is in the shard.
    pub fn contains(&self, labels: &Labels) -> bool {
        self.contains_hash(labels.stable_hash())
    }

    /// Takes the shard matcher out of `matchers`: `None` when there is none.
    pub fn take_from(matchers: &mut Vec<Matcher>) -> Result<Option<Self>, ShardError> {
        let Some(pos) = matchers.iter().position(|m| m.name == SHARD_LABEL) else {
            return Ok(None);
        };
        let m = matchers.remove(pos);
        if matchers.iter().any(|m| m.name == SHARD_LABEL) {
            return Err(ShardError("more than one in a selector".into()));
        }
        if m.kind != MatchType::Equal {
            return Err(ShardError(format!(
                "operator {} (only = selects a shard)",
                m.kind.as_str()
            )));
        }
        Self::parse(&m.value).map(Some)
    }

    /// `matchers` without the shard matcher, and the shard it selects; borrows when there is
    /// no shard matcher (the common case costs no copy).
    pub fn split(matchers: &[Matcher]) -> Result<(Cow<'_, [Matcher]>, Option<Self>), ShardError> {
        if !matchers.iter().any(|m| m.name == SHARD_LABEL) {
            return Ok((Cow::Borrowed(matchers), None));
        }
        let mut rest = matchers.to_vec();
        let shard = Self::take_from(&mut rest)?;
        Ok((Cow::Owned(rest), shard))
    }
}

impl fmt::Display for ShardSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_of_{}", self.index + 1, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mimir_values_and_refuses_the_rest() {
        assert_eq!(
            ShardSelector::parse("1_of_16").unwrap(),
            ShardSelector {
                index: 0,
                count: 16
            }
        );
        assert_eq!(ShardSelector::parse("16_of_16").unwrap().index, 15);
        assert_eq!(
            ShardSelector::parse("3_of_16").unwrap().label_value(),
            "3_of_16"
        );
        for bad in [
            "",
            "0_of_4",
            "5_of_4",
            "1_of_0",
            "x",
            "1of2",
            "1_of_",
            "_of_2",
            "-1_of_2",
            "+1_of_2",
            "1_of_2_of_3",
            "99999999999999999999_of_2",
            "1_of_100000",
        ] {
            assert!(ShardSelector::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn takes_the_matcher_out() {
        let mut ms = vec![
            Matcher::equal("__name__", "up"),
            Matcher::equal(SHARD_LABEL, "2_of_3"),
        ];
        let s = ShardSelector::take_from(&mut ms).unwrap().unwrap();
        assert_eq!(s, ShardSelector { index: 1, count: 3 });
        assert_eq!(ms, [Matcher::equal("__name__", "up")]);
        assert_eq!(ShardSelector::take_from(&mut ms).unwrap(), None);
        let (rest, s) = ShardSelector::split(&ms).unwrap();
        assert!(matches!(rest, Cow::Borrowed(_)) && s.is_none());

        let twice = [
            Matcher::equal(SHARD_LABEL, "1_of_2"),
            Matcher::equal(SHARD_LABEL, "2_of_2"),
        ];
        assert!(ShardSelector::split(&twice).is_err());
        let regex = [Matcher::new(MatchType::Regex, SHARD_LABEL, "1_of_2").unwrap()];
        assert!(ShardSelector::split(&regex).is_err());
    }

    #[test]
    fn every_series_is_in_exactly_one_shard() {
        for n in [1u64, 2, 3, 16] {
            for i in 0..200 {
                let l = Labels::from_pairs([("__name__", "x"), ("i", &*i.to_string())]);
                let hits = (0..n)
                    .filter(|k| ShardSelector::new(*k, n).unwrap().contains(&l))
                    .count();
                assert_eq!(hits, 1);
            }
        }
    }
}
