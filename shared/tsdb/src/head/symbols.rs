//! The head's symbol table: every distinct label name and value is stored once and series
//! refer to it by `u32` id.
//!
//! Ids are handed out in creation order and never reused. Reading a string by id takes no
//! lock (the append path compares a request's label bytes with a series' labels for every
//! series it sees, so it must be cheap): strings live in buckets of doubling size that never
//! move, each slot written once before its id is published. The reverse map (string → id)
//! is a `HashTable<u32>` keyed by the strings in those slots, so a string is stored once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashTable;
use parking_lot::RwLock;

/// log2 of the first bucket's size.
const FIRST_BITS: u32 = 10;
/// Enough buckets for every u32 id.
const BUCKETS: usize = 23;

type Slot = OnceLock<Box<str>>;

pub(crate) struct SymbolTable {
    index: RwLock<HashTable<u32>>,
    hasher: hashbrown::DefaultHashBuilder,
    buckets: Box<[OnceLock<Box<[Slot]>>]>,
    len: AtomicU32,
}

fn locate(id: u32) -> (usize, usize) {
    let n = u64::from(id) + (1 << FIRST_BITS);
    let b = 63 - n.leading_zeros() - FIRST_BITS;
    (b as usize, (n - (1u64 << (b + FIRST_BITS))) as usize)
}

impl SymbolTable {
    pub(crate) fn new() -> Self {
        Self {
            index: RwLock::new(HashTable::new()),
            hasher: hashbrown::DefaultHashBuilder::default(),
            buckets: (0..BUCKETS).map(|_| OnceLock::new()).collect(),
            len: AtomicU32::new(0),
        }
    }

    fn hash(&self, s: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(s)
    }

    /// The string of `id`; "" for an id that was never handed out (a bug, not a panic).
    pub(crate) fn get(&self, id: u32) -> &str {
        let (b, i) = locate(id);
        self.buckets
            .get(b)
            .and_then(|bucket| bucket.get())
            .and_then(|slots| slots.get(i))
            .and_then(|slot| slot.get())
            .map_or("", |s| s)
    }

    /// The id of `s`, if interned.
    pub(crate) fn lookup(&self, s: &str) -> Option<u32> {
        let h = self.hash(s);
        self.index.read().find(h, |&id| self.get(id) == s).copied()
    }

    /// The id of `s`, interning it if new.
    pub(crate) fn intern(&self, s: &str) -> u32 {
        let h = self.hash(s);
        if let Some(&id) = self.index.read().find(h, |&id| self.get(id) == s) {
            return id;
        }
        let mut index = self.index.write();
        if let Some(&id) = index.find(h, |&id| self.get(id) == s) {
            return id;
        }
        let id = self.len.load(Ordering::Relaxed);
        let (b, i) = locate(id);
        let slots = self.buckets[b].get_or_init(|| {
            (0..(1usize << (b as u32 + FIRST_BITS)))
                .map(|_| OnceLock::new())
                .collect()
        });
        let _ = slots[i].set(s.into());
        index.insert_unique(h, id, |&id| self.hash(self.get(id)));
        self.len.store(id + 1, Ordering::Release);
        id
    }

    /// Number of symbols.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire) as usize
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_size(&self) -> usize {
        let n = self.len();
        let mut bytes = self.index.read().capacity() * 5;
        for (b, bucket) in self.buckets.iter().enumerate() {
            if bucket.get().is_some() {
                bytes += (1usize << (b as u32 + FIRST_BITS)) * std::mem::size_of::<Slot>();
            }
        }
        for id in 0..n as u32 {
            bytes += self.get(id).len();
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_ids_contiguously() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1023), (0, 1023));
        assert_eq!(locate(1024), (1, 0));
        assert_eq!(locate(1024 + 2047), (1, 2047));
        assert_eq!(locate(1024 + 2048), (2, 0));
        assert!(locate(u32::MAX).0 < BUCKETS);
    }

    #[test]
    fn intern_is_idempotent_and_readable() {
        let t = SymbolTable::new();
        let ids: Vec<u32> = (0..5000).map(|i| t.intern(&format!("s{i}"))).collect();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(id, i as u32);
            assert_eq!(t.get(id), format!("s{i}"));
            assert_eq!(t.intern(&format!("s{i}")), id);
            assert_eq!(t.lookup(&format!("s{i}")), Some(id));
        }
        assert_eq!(t.lookup("nope"), None);
        assert_eq!(t.get(999_999), "");
    }
}
