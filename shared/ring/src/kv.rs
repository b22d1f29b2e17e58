//! A last-writer-wins key-value CRDT: the state the memberlist gossips.
//!
//! The state is `key` (e.g. `"ingester"`, `"ha-tracker"`) → `subkey` (e.g. an instance id) →
//! [`Entry`]. Values are opaque bytes (the user picks JSON), so one gossip layer serves the ring,
//! the HA tracker and anything else. Deletions are tombstones so they win over older writes that
//! are still in flight; [`KvState::gc`] drops them once every node has surely seen them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One versioned value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix milliseconds of the write; the larger wins.
    pub ts_ms: i64,
    /// A deletion marker.
    pub tombstone: bool,
    /// The user's encoding (JSON by convention); empty for tombstones.
    pub value: Vec<u8>,
}

impl Entry {
    /// A live value written at `ts_ms`.
    pub fn value(ts_ms: i64, value: Vec<u8>) -> Self {
        Self {
            ts_ms,
            tombstone: false,
            value,
        }
    }

    /// A deletion at `ts_ms`.
    pub fn tombstone(ts_ms: i64) -> Self {
        Self {
            ts_ms,
            tombstone: true,
            value: Vec::new(),
        }
    }

    /// The total order merge uses: later timestamp, then tombstone over value (a delete and a
    /// write in the same millisecond resolve to the delete everywhere), then larger bytes. Being
    /// total is what makes merge commutative and associative.
    fn order(&self, other: &Entry) -> Ordering {
        self.ts_ms
            .cmp(&other.ts_ms)
            .then(self.tombstone.cmp(&other.tombstone))
            .then_with(|| self.value.cmp(&other.value))
    }
}

/// The whole gossiped state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvState {
    /// `key` → `subkey` → entry.
    pub keys: BTreeMap<String, BTreeMap<String, Entry>>,
}

impl KvState {
    /// Merge one entry; returns whether it changed the state.
    pub fn merge_entry(&mut self, key: &str, subkey: &str, entry: &Entry) -> bool {
        let current = self.keys.get(key).and_then(|m| m.get(subkey));
        if current.is_some_and(|c| entry.order(c) != Ordering::Greater) {
            return false;
        }
        self.keys
            .entry(key.to_string())
            .or_default()
            .insert(subkey.to_string(), entry.clone());
        true
    }

    /// Merge: per (key, subkey) the entry with the larger `ts_ms` wins; on a tie the tombstone
    /// wins, then the larger value bytes. Returns the entries that changed (for re-broadcast).
    pub fn merge(&mut self, other: &KvState) -> Vec<(String, String, Entry)> {
        let mut changed = Vec::new();
        for (key, entries) in &other.keys {
            for (subkey, entry) in entries {
                if self.merge_entry(key, subkey, entry) {
                    changed.push((key.clone(), subkey.clone(), entry.clone()));
                }
            }
        }
        changed
    }

    /// Drop tombstones older than `older_than_ms`. Only safe once every node has seen them:
    /// otherwise a node that missed the delete would bring the value back by push/pull.
    pub fn gc(&mut self, older_than_ms: i64) {
        for entries in self.keys.values_mut() {
            entries.retain(|_, e| !(e.tombstone && e.ts_ms < older_than_ms));
        }
        self.keys.retain(|_, entries| !entries.is_empty());
    }

    /// The entries of `key` (tombstones included), empty when unknown.
    pub fn get(&self, key: &str) -> BTreeMap<String, Entry> {
        self.keys.get(key).cloned().unwrap_or_default()
    }

    /// Number of live (non-tombstone) entries per key.
    pub fn live_counts(&self) -> BTreeMap<String, usize> {
        self.keys
            .iter()
            .map(|(k, m)| (k.clone(), m.values().filter(|e| !e.tombstone).count()))
            .collect()
    }

    /// A state holding the given entries, for sending a delta.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, String, Entry)>) -> Self {
        let mut s = KvState::default();
        for (k, sk, e) in entries {
            s.merge_entry(&k, &sk, &e);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn later_wins_and_tombstone_wins_ties() {
        let mut s = KvState::default();
        assert!(s.merge_entry("k", "a", &Entry::value(10, b"x".to_vec())));
        assert!(!s.merge_entry("k", "a", &Entry::value(9, b"y".to_vec())));
        assert!(s.merge_entry("k", "a", &Entry::tombstone(10)));
        assert!(!s.merge_entry("k", "a", &Entry::value(10, b"zzz".to_vec())));
        assert!(s.get("k")["a"].tombstone);
        assert!(s.merge_entry("k", "a", &Entry::value(11, b"back".to_vec())));
        assert_eq!(s.live_counts()["k"], 1);
    }

    #[test]
    fn merge_reports_changes_only() {
        let mut a = KvState::from_entries([
            ("k".into(), "a".into(), Entry::value(5, b"1".to_vec())),
            ("k".into(), "b".into(), Entry::value(5, b"1".to_vec())),
        ]);
        let b = KvState::from_entries([
            ("k".into(), "a".into(), Entry::value(6, b"2".to_vec())),
            ("k".into(), "b".into(), Entry::value(4, b"2".to_vec())),
            ("j".into(), "c".into(), Entry::tombstone(1)),
        ]);
        let changed = a.merge(&b);
        let names: Vec<_> = changed.iter().map(|(k, s, _)| format!("{k}/{s}")).collect();
        assert_eq!(names, vec!["j/c", "k/a"]);
        assert!(a.merge(&b).is_empty());
    }

    #[test]
    fn gc_drops_old_tombstones_only() {
        let mut s = KvState::from_entries([
            ("k".into(), "old".into(), Entry::tombstone(5)),
            ("k".into(), "new".into(), Entry::tombstone(50)),
            ("k".into(), "live".into(), Entry::value(1, vec![])),
            ("j".into(), "old".into(), Entry::tombstone(1)),
        ]);
        s.gc(10);
        assert_eq!(s.keys.len(), 1);
        let k = s.get("k");
        assert!(k.contains_key("new") && k.contains_key("live") && !k.contains_key("old"));
    }

    fn arb_state() -> impl Strategy<Value = KvState> {
        let entry = (
            0i64..5,
            any::<bool>(),
            proptest::collection::vec(0u8..3, 0..2),
        )
            .prop_map(|(ts, tomb, value)| Entry {
                ts_ms: ts,
                tombstone: tomb,
                value,
            });
        proptest::collection::vec(("[ab]", "[xyz]", entry), 0..8).prop_map(|v| {
            KvState::from_entries(v.into_iter().map(|(k, s, e)| (k.to_string(), s, e)))
        })
    }

    fn merged(a: &KvState, b: &KvState) -> KvState {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_state(), b in arb_state()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_state(), b in arb_state()) {
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
            prop_assert_eq!(merged(&a, &a), a);
        }
    }
}
