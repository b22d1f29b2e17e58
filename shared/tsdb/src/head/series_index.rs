//! The head's series index: every series of a head, found by labels (hash shards), by id
//! (id table) and by matchers (postings), with the interned symbols and the per-tenant and
//! per-metric series counts the limits check.
//!
//! One [`SeriesIndex`] is owned by the head; replay fills it before the WAL is opened and
//! the write path, reads, truncation and checkpoints use the same one. Lookups by labels
//! compare the borrowed label bytes of a write request against the interned symbols, so
//! finding an existing series never allocates; only a new series is interned and indexed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use hashbrown::HashMap;
use norn_model::{Label, Labels, METRIC_NAME, Matcher, SeriesView, ShardSelector};
use parking_lot::{Mutex, RwLock};

use super::options::AppendLimits;
use super::outcomes::RejectReason;
use super::postings::MemPostings;
use super::series::MemSeries;
use super::symbols::SymbolTable;

/// Number of lock shards for the series hash table and the id table (a power of two).
pub const SHARDS: usize = 256;

#[derive(Default)]
struct HashShard {
    /// Series by label hash; the common case of one series per hash.
    main: HashMap<u64, Arc<MemSeries>, IdentityHash>,
    /// Further series whose hash collides with one in `main` (practically never used).
    collisions: HashMap<u64, Vec<Arc<MemSeries>>, IdentityHash>,
}

/// The label hash is already a good 64-bit hash; hashing it again would be wasted work.
#[derive(Default, Clone, Copy)]
struct IdentityHash;

impl std::hash::BuildHasher for IdentityHash {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher(0)
    }
}

struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The same value as [`SeriesView::labels_hash`] (xxh3-64 over `name 0xff value 0xff …`),
/// computed in one shot over a reused buffer: the streaming hasher behind `labels_hash` pays
/// per call for the ~24 small pieces of a typical series, several times the one-shot cost.
pub(crate) fn labels_hash(sv: &SeriesView<'_>, buf: &mut Vec<u8>) -> u64 {
    hash_pairs(sv.label_bytes(), buf)
}

/// xxh3-64 of `name 0xff value 0xff …` over `pairs`, written into `buf` first.
fn hash_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    for (n, v) in pairs {
        buf.extend_from_slice(n);
        buf.push(0xff);
        buf.extend_from_slice(v);
        buf.push(0xff);
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// Shard of a label hash: middle bits, because the hash table itself uses the low bits for
/// the bucket and the top 7 for its control bytes.
fn hash_shard(hash: u64) -> usize {
    ((hash >> 32) as usize) & (SHARDS - 1)
}

/// One shard of the id table: series `id` lives in shard `id % SHARDS` at `id / SHARDS`.
#[derive(Default)]
struct IdTable {
    series: Vec<Option<Arc<MemSeries>>>,
    /// The low 32 bits of each series' label hash, beside it. A sharded query's legs each
    /// walk every series of their selection to keep their shard's: with a power-of-two
    /// shard count (Mimir's 16, say) the shard is in these bits, so a leg reads 4 bytes a
    /// series here instead of the series itself and its label strings (which cost each leg as
    /// much as reading the chunks of its series did). 4 bytes a series.
    hash_low: Vec<u32>,
}

type IdShard = RwLock<IdTable>;

/// Every series of a head and the ways to find them.
pub(crate) struct SeriesIndex {
    pub(crate) symbols: SymbolTable,
    hashes: Box<[RwLock<HashShard>]>,
    /// Series by id: shard `id % SHARDS`, index `id / SHARDS`.
    ids: Box<[IdShard]>,
    pub(crate) postings: RwLock<MemPostings>,
    next_id: AtomicU32,
    num_series: AtomicUsize,
    /// Series per metric-name symbol, for `max_series_per_metric`.
    per_metric: Mutex<HashMap<u32, u32>>,
}

impl SeriesIndex {
    pub(crate) fn new() -> Self {
        Self {
            symbols: SymbolTable::new(),
            hashes: (0..SHARDS)
                .map(|_| RwLock::new(HashShard::default()))
                .collect(),
            ids: (0..SHARDS)
                .map(|_| RwLock::new(IdTable::default()))
                .collect(),
            postings: RwLock::new(MemPostings::default()),
            next_id: AtomicU32::new(0),
            num_series: AtomicUsize::new(0),
            per_metric: Mutex::new(HashMap::new()),
        }
    }

    /// Number of series.
    pub(crate) fn num_series(&self) -> usize {
        self.num_series.load(Ordering::Acquire)
    }

    /// A snapshot of every series, one id shard at a time (no lock is held while the caller
    /// works on them).
    pub(crate) fn shards(&self) -> impl Iterator<Item = Vec<Arc<MemSeries>>> + '_ {
        self.ids
            .iter()
            .map(|shard| shard.read().series.iter().flatten().cloned().collect())
    }

    pub(crate) fn by_id(&self, id: u32) -> Option<Arc<MemSeries>> {
        let shard = self.ids[id as usize % SHARDS].read();
        shard
            .series
            .get(id as usize / SHARDS)
            .and_then(|s| s.as_ref().map(Arc::clone))
    }

    /// The series `id` when the low bits of its label hash, under `mask`, are `low`: a
    /// power-of-two shard's test, without touching the series unless it is in the shard.
    fn by_id_with_hash_low(&self, id: u32, mask: u32, low: u32) -> Option<Arc<MemSeries>> {
        let shard = self.ids[id as usize % SHARDS].read();
        let i = id as usize / SHARDS;
        if shard.hash_low.get(i)? & mask != low {
            return None;
        }
        shard.series.get(i)?.as_ref().map(Arc::clone)
    }

    /// Series matching every matcher (all series when empty), in id order.
    ///
    /// A `__query_shard__` matcher keeps the series of that shard, by label hash, before any
    /// chunk is read (see [`norn_model::shard`]); a malformed one matches nothing (readers
    /// that can answer an error check it first with [`ShardSelector::split`]).
    pub(crate) fn matching(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        let Ok((matchers, shard)) = ShardSelector::split(matchers) else {
            return Vec::new();
        };
        let ids = self.postings.read().select(&self.symbols, &matchers);
        match shard {
            // hash % 2^k is in the hash's low k bits (k ≤ 16: `MAX_SHARDS`).
            Some(shard) if shard.count.is_power_of_two() && shard.count <= 1 << 32 => {
                let (mask, low) = ((shard.count - 1) as u32, shard.index as u32);
                ids.into_iter()
                    .filter_map(|id| self.by_id_with_hash_low(id, mask, low))
                    .collect()
            }
            None => ids.into_iter().filter_map(|id| self.by_id(id)).collect(),
            Some(shard) => {
                let all = ids.into_iter().filter_map(|id| self.by_id(id));
                // Each leg of a sharded query hashes every series of its selection: the
                // one-shot hash over one reused buffer, not the streaming hasher.
                let mut buf = Vec::with_capacity(256);
                all.filter(|s| shard.contains_hash(self.stored_labels_hash(s, &mut buf)))
                    .collect()
            }
        }
    }

    /// A series' labels as strings.
    pub(crate) fn labels_of(&self, s: &MemSeries) -> Labels {
        Labels::from_sorted(
            s.labels()
                .chunks_exact(2)
                .map(|p| Label::new(self.symbols.get(p[0]), self.symbols.get(p[1])))
                .collect(),
        )
    }

    /// Orders two series by their label strings without materialising them.
    pub(crate) fn cmp_labels(&self, a: &MemSeries, b: &MemSeries) -> std::cmp::Ordering {
        let pa = a.labels().chunks_exact(2);
        let pb = b.labels().chunks_exact(2);
        for (x, y) in pa.zip(pb) {
            let o = self
                .symbols
                .get(x[0])
                .cmp(self.symbols.get(y[0]))
                .then_with(|| self.symbols.get(x[1]).cmp(self.symbols.get(y[1])));
            if o.is_ne() {
                return o;
            }
        }
        a.labels().len().cmp(&b.labels().len())
    }

    /// A series' (name, value) label bytes.
    pub(crate) fn label_bytes<'s>(
        &'s self,
        s: &'s MemSeries,
    ) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
        s.labels().chunks_exact(2).map(|p| {
            (
                self.symbols.get(p[0]).as_bytes(),
                self.symbols.get(p[1]).as_bytes(),
            )
        })
    }

    /// The label hash of a stored series (the same value the write path computes), as
    /// [`labels_hash`] computes it: in one shot over `buf`.
    pub(crate) fn stored_labels_hash(&self, s: &MemSeries, buf: &mut Vec<u8>) -> u64 {
        hash_pairs(self.label_bytes(s), buf)
    }

    fn labels_eq(&self, s: &MemSeries, sv: &SeriesView<'_>) -> bool {
        s.labels().len() == sv.num_labels() * 2
            && s.labels()
                .chunks_exact(2)
                .zip(sv.label_bytes())
                .all(|(p, (n, v))| {
                    self.symbols.get(p[0]).as_bytes() == n && self.symbols.get(p[1]).as_bytes() == v
                })
    }

    fn find_in(&self, shard: &HashShard, hash: u64, sv: &SeriesView<'_>) -> Option<Arc<MemSeries>> {
        let s = shard.main.get(&hash)?;
        if self.labels_eq(s, sv) {
            return Some(Arc::clone(s));
        }
        shard
            .collisions
            .get(&hash)?
            .iter()
            .find(|s| self.labels_eq(s, sv))
            .map(Arc::clone)
    }

    /// The existing series with these labels.
    pub(crate) fn get(&self, hash: u64, sv: &SeriesView<'_>) -> Option<Arc<MemSeries>> {
        let shard = self.hashes[hash_shard(hash)].read();
        self.find_in(&shard, hash, sv)
    }

    /// Finds or creates the series; `Ok((series, true))` when this call created it.
    pub(crate) fn create(
        &self,
        hash: u64,
        sv: &SeriesView<'_>,
        limits: &AppendLimits,
    ) -> Result<(Arc<MemSeries>, bool), RejectReason> {
        // Cheap pre-check so a flood of series over the limit does not fill the symbol table.
        if limits.max_series > 0 && self.num_series.load(Ordering::Acquire) >= limits.max_series {
            if let Some(s) = self.get(hash, sv) {
                return Ok((s, false));
            }
            return Err(RejectReason::MaxSeriesPerUser);
        }
        // Intern before taking the shard lock: the symbol table has its own lock.
        let flat: Box<[u32]> = sv
            .labels()
            .flat_map(|(n, v)| [self.symbols.intern(n), self.symbols.intern(v)])
            .collect();
        let mut shard = self.hashes[hash_shard(hash)].write();
        if let Some(s) = self.find_in(&shard, hash, sv) {
            return Ok((s, false));
        }
        let reserved = self
            .num_series
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (limits.max_series == 0 || n < limits.max_series).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(RejectReason::MaxSeriesPerUser);
        }
        let name = self.symbols.lookup(METRIC_NAME).and_then(|name_sym| {
            flat.chunks_exact(2)
                .find(|p| p[0] == name_sym)
                .map(|p| p[1])
        });
        if let Some(name) = name {
            let mut pm = self.per_metric.lock();
            let n = pm.entry(name).or_insert(0);
            if limits.max_series_per_metric > 0 && *n as usize >= limits.max_series_per_metric {
                drop(pm);
                self.num_series.fetch_sub(1, Ordering::AcqRel);
                return Err(RejectReason::MaxSeriesPerMetric);
            }
            *n += 1;
        }
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let series = Arc::new(MemSeries::new(id, flat));
        insert_hash(&mut shard, hash, &series);
        drop(shard);
        self.insert_id_and_postings(&series, hash);
        Ok((series, true))
    }

    /// Inserts a series built elsewhere (replay): hash table, id table, postings, counters;
    /// later ids are allocated after it.
    pub(crate) fn insert(&self, hash: u64, series: &Arc<MemSeries>) {
        insert_hash(&mut self.hashes[hash_shard(hash)].write(), hash, series);
        self.num_series.fetch_add(1, Ordering::AcqRel);
        if let Some(name_sym) = self.symbols.lookup(METRIC_NAME)
            && let Some(p) = series.labels().chunks_exact(2).find(|p| p[0] == name_sym)
        {
            *self.per_metric.lock().entry(p[1]).or_insert(0) += 1;
        }
        self.insert_id_and_postings(series, hash);
        self.next_id
            .fetch_max(series.id.saturating_add(1), Ordering::AcqRel);
    }

    fn insert_id_and_postings(&self, series: &Arc<MemSeries>, hash: u64) {
        let id = series.id as usize;
        {
            let mut shard = self.ids[id % SHARDS].write();
            let idx = id / SHARDS;
            if shard.series.len() <= idx {
                shard.series.resize(idx + 1, None);
                shard.hash_low.resize(idx + 1, 0);
            }
            shard.series[idx] = Some(Arc::clone(series));
            // Truncation on purpose: the low bits are what a power-of-two shard reads.
            shard.hash_low[idx] = hash as u32;
        }
        self.postings.write().add(series.id, series.labels());
    }

    /// Takes a series out of the hash and id tables and the counters (postings are done in
    /// bulk by the caller, see [`remove_postings`](Self::remove_postings)).
    /// `buf` is scratch for the label hash, reused across a truncation's removals.
    pub(crate) fn remove(&self, s: &Arc<MemSeries>, name_sym: Option<u32>, buf: &mut Vec<u8>) {
        let hash = self.stored_labels_hash(s, buf);
        {
            let mut shard = self.hashes[hash_shard(hash)].write();
            if shard.main.get(&hash).is_some_and(|m| Arc::ptr_eq(m, s)) {
                shard.main.remove(&hash);
                // Promote a colliding series, if any, into the main slot.
                let next = shard.collisions.get_mut(&hash).and_then(|list| list.pop());
                if let Some(next) = next {
                    shard.main.insert(hash, next);
                }
                if shard.collisions.get(&hash).is_some_and(|l| l.is_empty()) {
                    shard.collisions.remove(&hash);
                }
            } else if let Some(list) = shard.collisions.get_mut(&hash) {
                list.retain(|m| !Arc::ptr_eq(m, s));
                if list.is_empty() {
                    shard.collisions.remove(&hash);
                }
            }
        }
        let id = s.id as usize;
        if let Some(slot) = self.ids[id % SHARDS].write().series.get_mut(id / SHARDS) {
            *slot = None;
        }
        self.num_series.fetch_sub(1, Ordering::AcqRel);
        if let Some(name_sym) = name_sym
            && let Some(p) = s.labels().chunks_exact(2).find(|p| p[0] == name_sym)
        {
            let mut pm = self.per_metric.lock();
            if let Some(n) = pm.get_mut(&p[1]) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pm.remove(&p[1]);
                }
            }
        }
    }

    /// Removes removed series' ids from the postings, all at once.
    pub(crate) fn remove_postings(&self, removed: &[(u32, Box<[u32]>)]) {
        self.postings.write().remove_all(removed);
    }
}

fn insert_hash(shard: &mut HashShard, hash: u64, series: &Arc<MemSeries>) {
    if shard.main.contains_key(&hash) {
        shard
            .collisions
            .entry(hash)
            .or_default()
            .push(Arc::clone(series));
    } else {
        shard.main.insert(hash, Arc::clone(series));
    }
}
