//! The consistent-hash ring: a sorted token table built from the instance descriptions, and the
//! replica-set lookups the distributor (writes) and querier (reads) make on every request.
//!
//! Semantics follow Mimir's `ring.Get` with the default replication strategy, so a Mimir operator
//! can reason about availability the same way: quorum is `rf/2 + 1` of the replicas of a token.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rand::{Rng, SeedableRng};

use crate::desc::{InstanceDesc, InstanceState, random_seed};

/// The kind of request a replica set is for; decides which states count as healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Ingest: only ACTIVE instances take writes.
    Write,
    /// Query: ACTIVE and LEAVING instances (a leaving ingester still holds its unflushed data).
    Read,
}

/// The instances to send a request to and how many of them may fail.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationSet {
    /// Healthy instances to call.
    pub instances: Vec<InstanceDesc>,
    /// How many of `instances` may fail while the request still succeeds.
    pub max_errors: usize,
}

/// Ring behaviour.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Copies of each series.
    pub replication_factor: usize,
    /// An instance whose heartbeat is older than this is unhealthy. Zero disables the check.
    pub heartbeat_timeout: Duration,
    /// Place replicas in distinct zones (when instances have zones).
    pub zone_awareness_enabled: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            heartbeat_timeout: Duration::from_secs(60),
            zone_awareness_enabled: false,
        }
    }
}

/// Ring lookup errors.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// No instance (with tokens) is registered.
    #[error("empty ring")]
    Empty,
    /// Fewer healthy replicas than a quorum.
    #[error("too many unhealthy instances in the ring: {healthy} healthy of {needed} needed")]
    TooManyUnhealthy {
        /// Healthy replicas found.
        healthy: usize,
        /// Replicas a quorum needs.
        needed: usize,
    },
}

/// Result alias for ring lookups.
pub type Result<T, E = RingError> = std::result::Result<T, E>;

/// The immutable snapshot lookups read; rebuilt as a whole on every change because changes are
/// rare (heartbeats) and lookups are per request.
#[derive(Default)]
struct Table {
    /// Sorted by id.
    instances: Vec<InstanceDesc>,
    /// `(token, index into instances)`, sorted by token.
    tokens: Vec<(u32, usize)>,
    /// Distinct non-empty zones.
    zones: BTreeSet<String>,
}

struct Inner {
    config: RingConfig,
    table: RwLock<Arc<Table>>,
}

/// The hash ring. Cheap to clone (Arc inside); thread-safe; lookups take a read lock on a prebuilt
/// sorted token table.
#[derive(Clone)]
pub struct Ring {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table();
        f.debug_struct("Ring")
            .field("config", &self.inner.config)
            .field("instances", &t.instances.len())
            .field("tokens", &t.tokens.len())
            .finish()
    }
}

impl Ring {
    /// An empty ring.
    pub fn new(config: RingConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                table: RwLock::new(Arc::new(Table::default())),
            }),
        }
    }

    /// The configuration the ring was built with.
    pub fn config(&self) -> &RingConfig {
        &self.inner.config
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.inner.table.read())
    }

    /// Replace the ring contents (instances by id); rebuilds the token table. Instances in state
    /// LEFT are ignored. When two instances claim the same token, the one with the smaller id owns
    /// it, so every node builds the same table from the same state.
    pub fn set_instances(&self, instances: Vec<InstanceDesc>) {
        let mut by_id: BTreeMap<String, InstanceDesc> = BTreeMap::new();
        for inst in instances {
            if inst.state == InstanceState::Left {
                continue;
            }
            by_id.insert(inst.id.clone(), inst);
        }
        let instances: Vec<InstanceDesc> = by_id.into_values().collect();
        let mut tokens: Vec<(u32, usize)> = instances
            .iter()
            .enumerate()
            .flat_map(|(i, inst)| inst.tokens.iter().map(move |&t| (t, i)))
            .collect();
        tokens.sort_unstable();
        tokens.dedup_by_key(|(t, _)| *t);
        let zones = instances
            .iter()
            .filter(|i| !i.zone.is_empty())
            .map(|i| i.zone.clone())
            .collect();
        *self.inner.table.write() = Arc::new(Table {
            instances,
            tokens,
            zones,
        });
    }

    /// All instances, sorted by id.
    pub fn instances(&self) -> Vec<InstanceDesc> {
        self.table().instances.clone()
    }

    /// Whether `inst` may serve `op`: recent enough heartbeat and a state that serves it.
    pub fn is_healthy(&self, inst: &InstanceDesc, op: Operation, now_ms: i64) -> bool {
        let timeout = self.inner.config.heartbeat_timeout;
        if !timeout.is_zero() && now_ms - inst.heartbeat_ms > timeout.as_millis() as i64 {
            return false;
        }
        match op {
            Operation::Write => inst.state == InstanceState::Active,
            Operation::Read => matches!(inst.state, InstanceState::Active | InstanceState::Leaving),
        }
    }

    /// Whether an instance in `state` is skipped by the walk for `op` (it does not count toward
    /// the replication factor, so one more instance is taken). Mimir does this for writes over
    /// non-ACTIVE instances so a leaving/joining ingester does not cost a replica; for reads over
    /// JOINING/PENDING instances, which cannot hold data that is not also elsewhere.
    fn extends(op: Operation, state: InstanceState) -> bool {
        match op {
            Operation::Write => state != InstanceState::Active,
            Operation::Read => !matches!(state, InstanceState::Active | InstanceState::Leaving),
        }
    }

    fn zone_aware(&self, t: &Table) -> bool {
        self.inner.config.zone_awareness_enabled && !t.zones.is_empty()
    }

    /// The replication factor write quorums are computed from: the configured one, capped only
    /// by the number of zones with zone awareness (fewer zones than the replication factor is a
    /// deliberate layout, not an outage).
    fn quorum_rf(&self, t: &Table) -> usize {
        let mut rf = self.inner.config.replication_factor;
        if self.zone_aware(t) {
            rf = rf.min(t.zones.len());
        }
        rf.max(1)
    }

    /// The replication factor a read quorum is computed from (and how many instances a write
    /// walks to): capped by the number of instances, and
    /// with zone awareness by the number of zones (a replica set never holds two instances of
    /// one zone, so fewer zones than the replication factor means fewer replicas).
    fn effective_rf(&self, t: &Table) -> usize {
        let mut rf = self.inner.config.replication_factor.min(t.instances.len());
        if self.zone_aware(t) {
            rf = rf.min(t.zones.len());
        }
        rf.max(1)
    }

    /// The replica set for `token`. Mimir semantics: walk tokens clockwise from the first token
    /// `>= token` (wrapping) and collect `replication_factor` distinct instances (distinct zones
    /// too with zone awareness); instances the operation skips (non-ACTIVE for writes, JOINING or
    /// PENDING for reads) do not count and extend the walk by one. Unhealthy instances are then dropped; fewer than
    /// `rf/2 + 1` healthy ones is an error.
    pub fn get(&self, token: u32, op: Operation, now_ms: i64) -> Result<ReplicationSet> {
        let t = self.table();
        if t.tokens.is_empty() {
            return Err(RingError::Empty);
        }
        let start = t.tokens.partition_point(|(tok, _)| *tok < token);
        let (picked, max_errors) = self.pick(&t, start, op, now_ms)?;
        Ok(ReplicationSet {
            instances: picked.into_iter().map(|i| t.instances[i].clone()).collect(),
            max_errors,
        })
    }

    /// [`Ring::get`] for many tokens at once, against one snapshot of the ring: the distinct
    /// replica sets, and for each token the index of its set. A push of thousands of series
    /// lands on a handful of sets; this walks the ring once per distinct start position
    /// and clones each set once, instead of once per series.
    pub fn get_many(
        &self,
        tokens: impl IntoIterator<Item = u32>,
        op: Operation,
        now_ms: i64,
    ) -> Result<(Vec<ReplicationSet>, Vec<u32>)> {
        let t = self.table();
        if t.tokens.is_empty() {
            return Err(RingError::Empty);
        }
        let mut by_start: HashMap<usize, u32> = HashMap::new();
        let mut by_members: HashMap<Vec<usize>, u32> = HashMap::new();
        let mut sets = Vec::new();
        let mut of_token = Vec::new();
        for token in tokens {
            let start = t.tokens.partition_point(|(tok, _)| *tok < token) % t.tokens.len();
            let idx = match by_start.get(&start) {
                Some(&i) => i,
                None => {
                    let (picked, max_errors) = self.pick(&t, start, op, now_ms)?;
                    let i = match by_members.get(&picked) {
                        Some(&i) => i,
                        None => {
                            sets.push(ReplicationSet {
                                instances: picked.iter().map(|&i| t.instances[i].clone()).collect(),
                                max_errors,
                            });
                            let i = (sets.len() - 1) as u32;
                            by_members.insert(picked, i);
                            i
                        }
                    };
                    by_start.insert(start, i);
                    i
                }
            };
            of_token.push(idx);
        }
        Ok((sets, of_token))
    }

    /// The healthy instances (indices into the table) of the set whose walk starts at token
    /// position `start`, and how many of them may fail.
    fn pick(
        &self,
        t: &Table,
        start: usize,
        op: Operation,
        now_ms: i64,
    ) -> Result<(Vec<usize>, usize)> {
        let rf = self.effective_rf(t);
        // The quorum comes from the configured replication factor, not from how many
        // instances happen to be in the ring: when dead instances are forgotten, the survivors
        // must not start acknowledging writes with fewer copies than promised (Mimir: "at
        // least 2 live replicas required").
        let needed = self.quorum_rf(t) / 2 + 1;
        let zone_aware = self.zone_aware(t);
        let mut picked: Vec<usize> = Vec::with_capacity(rf + 1);
        let mut counted = 0;
        let mut zones: HashSet<&str> = HashSet::new();
        for i in 0..t.tokens.len() {
            if counted >= rf {
                break;
            }
            let idx = t.tokens[(start + i) % t.tokens.len()].1;
            if picked.contains(&idx) {
                continue;
            }
            let inst = &t.instances[idx];
            if zone_aware && zones.contains(inst.zone.as_str()) {
                continue;
            }
            picked.push(idx);
            if Self::extends(op, inst.state) {
                // Like Mimir, the skipped instance's zone stays free so the extra replica can
                // come from the same zone.
                continue;
            }
            counted += 1;
            if zone_aware {
                zones.insert(inst.zone.as_str());
            }
        }
        picked.retain(|&i| self.is_healthy(&t.instances[i], op, now_ms));
        if picked.len() < needed {
            return Err(RingError::TooManyUnhealthy {
                healthy: picked.len(),
                needed,
            });
        }
        let max_errors = picked.len() - needed;
        Ok((picked, max_errors))
    }

    /// Every instance that may hold a tenant's series (all instances: there is no shuffle
    /// sharding), for reads.
    ///
    /// Without zone awareness: the healthy instances, with `max_errors = rf/2 - unhealthy`.
    ///
    /// With zone awareness every series has one replica per zone, so a whole zone may fail: a
    /// zone with any unhealthy instance counts as failed and all its instances are left out
    /// (asking half a zone buys nothing), up to `rf/2` failed zones; `max_errors = rf/2 - failed
    /// zones`, which stays safe because that many errors can only spread over that many zones.
    pub fn replication_set_for_reads(&self, now_ms: i64) -> Result<ReplicationSet> {
        let t = self.table();
        if t.instances.is_empty() {
            return Err(RingError::Empty);
        }
        let rf = self.effective_rf(&t);
        let tolerated = rf / 2;
        let healthy = |i: &&InstanceDesc| self.is_healthy(i, Operation::Read, now_ms);
        if self.zone_aware(&t) {
            let failed: BTreeSet<&str> = t
                .instances
                .iter()
                .filter(|i| !healthy(i))
                .map(|i| i.zone.as_str())
                .collect();
            let instances: Vec<InstanceDesc> = t
                .instances
                .iter()
                .filter(|i| !failed.contains(i.zone.as_str()))
                .cloned()
                .collect();
            if failed.len() > tolerated {
                return Err(RingError::TooManyUnhealthy {
                    healthy: instances.len(),
                    needed: t.instances.len(),
                });
            }
            return Ok(ReplicationSet {
                instances,
                max_errors: tolerated - failed.len(),
            });
        }
        let instances: Vec<InstanceDesc> = t.instances.iter().filter(healthy).cloned().collect();
        let unhealthy = t.instances.len() - instances.len();
        if unhealthy > tolerated {
            return Err(RingError::TooManyUnhealthy {
                healthy: instances.len(),
                needed: t.instances.len() - tolerated,
            });
        }
        Ok(ReplicationSet {
            instances,
            max_errors: tolerated - unhealthy,
        })
    }

    /// Share of the token space each instance is the primary owner of (0.0–1.0), by id. A token
    /// `t` owns the keys after the previous token up to and including `t`.
    pub fn ownership(&self) -> BTreeMap<String, f64> {
        let t = self.table();
        let mut out: BTreeMap<String, f64> =
            t.instances.iter().map(|i| (i.id.clone(), 0.0)).collect();
        if t.tokens.is_empty() {
            return out;
        }
        let space = (u32::MAX as f64) + 1.0;
        for (i, &(tok, idx)) in t.tokens.iter().enumerate() {
            let prev = if i == 0 {
                t.tokens[t.tokens.len() - 1].0
            } else {
                t.tokens[i - 1].0
            };
            // Wrapping distance; a single token owns the whole space.
            let span = if t.tokens.len() == 1 {
                space
            } else {
                tok.wrapping_sub(prev) as f64
            };
            *out.entry(t.instances[idx].id.clone()).or_default() += span / space;
        }
        out
    }
}

/// Random tokens for a new instance: `n` distinct `u32` not already in `taken`, sorted.
pub fn generate_tokens(n: usize, taken: &HashSet<u32>) -> Vec<u32> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(random_seed());
    let mut out: HashSet<u32> = HashSet::with_capacity(n);
    while out.len() < n {
        let t: u32 = rng.random();
        if !taken.contains(&t) {
            out.insert(t);
        }
    }
    let mut out: Vec<u32> = out.into_iter().collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    const NOW: i64 = 1_000_000;

    fn inst(id: &str, zone: &str, state: InstanceState, tokens: Vec<u32>) -> InstanceDesc {
        InstanceDesc {
            id: id.to_string(),
            addr: format!("{id}:9095"),
            zone: zone.to_string(),
            state,
            heartbeat_ms: NOW,
            registered_ms: 0,
            tokens,
        }
    }

    fn ring(rf: usize, zones: bool) -> Ring {
        Ring::new(RingConfig {
            replication_factor: rf,
            heartbeat_timeout: Duration::from_secs(60),
            zone_awareness_enabled: zones,
        })
    }

    fn random_instances(n: usize, zones: usize, tokens: usize) -> Vec<InstanceDesc> {
        let mut taken = HashSet::new();
        (0..n)
            .map(|i| {
                let toks = generate_tokens(tokens, &taken);
                taken.extend(toks.iter().copied());
                let zone = if zones == 0 {
                    String::new()
                } else {
                    format!("zone-{}", i % zones)
                };
                inst(&format!("ing-{i}"), &zone, InstanceState::Active, toks)
            })
            .collect()
    }

    #[test]
    fn empty_ring_is_an_error() {
        let r = ring(3, false);
        assert!(matches!(
            r.get(1, Operation::Write, NOW),
            Err(RingError::Empty)
        ));
        assert!(matches!(
            r.replication_set_for_reads(NOW),
            Err(RingError::Empty)
        ));
    }

    #[test]
    fn walk_is_clockwise_and_wraps() {
        let r = ring(2, false);
        r.set_instances(vec![
            inst("a", "", InstanceState::Active, vec![10, 40]),
            inst("b", "", InstanceState::Active, vec![20]),
            inst("c", "", InstanceState::Active, vec![30]),
        ]);
        let ids = |tok| {
            r.get(tok, Operation::Write, NOW)
                .unwrap()
                .instances
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(15), vec!["b", "c"]);
        assert_eq!(ids(20), vec!["b", "c"]);
        assert_eq!(ids(35), vec!["a", "b"]);
        // Past the last token wraps to the first.
        assert_eq!(ids(41), vec!["a", "b"]);
        let set = r.get(15, Operation::Write, NOW).unwrap();
        assert_eq!(set.max_errors, 0);
    }

    #[test]
    fn left_instances_are_ignored() {
        let r = ring(3, false);
        r.set_instances(vec![
            inst("a", "", InstanceState::Active, vec![10]),
            inst("b", "", InstanceState::Left, vec![20]),
        ]);
        assert_eq!(r.instances().len(), 1);
        // One live instance is no quorum of three, even with b gone.
        assert!(matches!(
            r.get(15, Operation::Write, NOW),
            Err(RingError::TooManyUnhealthy {
                healthy: 1,
                needed: 2
            })
        ));
        let r = ring(1, false);
        r.set_instances(vec![
            inst("a", "", InstanceState::Active, vec![10]),
            inst("b", "", InstanceState::Left, vec![20]),
        ]);
        let set = r.get(15, Operation::Write, NOW).unwrap();
        assert_eq!(set.instances.len(), 1);
        assert_eq!(set.max_errors, 0);
    }

    #[test]
    fn write_extends_over_leaving_instance() {
        let r = ring(3, false);
        r.set_instances(vec![
            inst("a", "", InstanceState::Active, vec![10]),
            inst("b", "", InstanceState::Leaving, vec![20]),
            inst("c", "", InstanceState::Active, vec![30]),
            inst("d", "", InstanceState::Active, vec![40]),
            inst("e", "", InstanceState::Active, vec![50]),
        ]);
        let set = r.get(15, Operation::Write, NOW).unwrap();
        let ids: Vec<_> = set.instances.iter().map(|i| i.id.as_str()).collect();
        // b is walked over (and dropped as unhealthy for writes); e takes its place.
        assert_eq!(ids, vec!["c", "d", "e"]);
        assert_eq!(set.max_errors, 1);
        // Reads still go to the leaving instance, which holds unflushed data.
        let set = r.get(15, Operation::Read, NOW).unwrap();
        let ids: Vec<_> = set.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["b", "c", "d"]);
    }

    #[test]
    fn unhealthy_instances_are_dropped_and_quorum_enforced() {
        let r = ring(3, false);
        let mut stale = inst("b", "", InstanceState::Active, vec![20]);
        stale.heartbeat_ms = NOW - 61_000;
        r.set_instances(vec![
            inst("a", "", InstanceState::Active, vec![10]),
            stale.clone(),
            inst("c", "", InstanceState::Active, vec![30]),
        ]);
        assert!(!r.is_healthy(&stale, Operation::Read, NOW));
        let set = r.get(15, Operation::Write, NOW).unwrap();
        assert_eq!(set.instances.len(), 2);
        assert_eq!(set.max_errors, 0);
        let set = r.replication_set_for_reads(NOW).unwrap();
        assert_eq!(set.instances.len(), 2);
        assert_eq!(set.max_errors, 0);

        let mut stale_c = inst("c", "", InstanceState::Active, vec![30]);
        stale_c.heartbeat_ms = 0;
        r.set_instances(vec![
            inst("a", "", InstanceState::Active, vec![10]),
            stale,
            stale_c,
        ]);
        assert!(matches!(
            r.get(15, Operation::Write, NOW),
            Err(RingError::TooManyUnhealthy {
                healthy: 1,
                needed: 2
            })
        ));
        assert!(r.replication_set_for_reads(NOW).is_err());
    }

    #[test]
    fn joining_is_unhealthy_for_reads_and_writes() {
        let r = ring(3, false);
        let joining = inst("a", "", InstanceState::Joining, vec![10]);
        assert!(!r.is_healthy(&joining, Operation::Write, NOW));
        assert!(!r.is_healthy(&joining, Operation::Read, NOW));
        let leaving = inst("a", "", InstanceState::Leaving, vec![10]);
        assert!(!r.is_healthy(&leaving, Operation::Write, NOW));
        assert!(r.is_healthy(&leaving, Operation::Read, NOW));
    }

    #[test]
    fn reads_all_instances() {
        let r = ring(3, false);
        r.set_instances(random_instances(5, 0, 16));
        let set = r.replication_set_for_reads(NOW).unwrap();
        assert_eq!(set.instances.len(), 5);
        assert_eq!(set.max_errors, 1);
    }

    #[test]
    fn zone_aware_reads_tolerate_one_zone() {
        let r = ring(3, true);
        let mut insts = random_instances(6, 3, 16);
        // Both instances of zone-0 are down: one zone lost, still readable.
        insts[0].heartbeat_ms = 0;
        insts[3].heartbeat_ms = 0;
        r.set_instances(insts.clone());
        let set = r.replication_set_for_reads(NOW).unwrap();
        assert_eq!(set.instances.len(), 4);
        assert!(set.instances.iter().all(|i| i.zone != "zone-0"));
        assert_eq!(set.max_errors, 0);
        // One more in another zone: two zones lost.
        insts[1].heartbeat_ms = 0;
        r.set_instances(insts);
        assert!(r.replication_set_for_reads(NOW).is_err());
    }

    #[test]
    fn ownership_sums_to_one() {
        let r = ring(3, false);
        r.set_instances(random_instances(4, 0, 64));
        let total: f64 = r.ownership().values().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        r.set_instances(vec![inst("a", "", InstanceState::Active, vec![7])]);
        assert_eq!(r.ownership()["a"], 1.0);
    }

    #[test]
    fn generate_tokens_avoids_taken() {
        let taken: HashSet<u32> = generate_tokens(1000, &HashSet::new()).into_iter().collect();
        let new = generate_tokens(512, &taken);
        assert_eq!(new.len(), 512);
        assert!(new.windows(2).all(|w| w[0] < w[1]));
        assert!(new.iter().all(|t| !taken.contains(t)));
    }

    #[test]
    fn adding_an_instance_moves_about_one_nth_of_keys() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for n in [3usize, 5, 10] {
            let r = ring(3, false);
            let mut insts = random_instances(n, 0, 128);
            r.set_instances(insts.clone());
            let keys: Vec<u32> = (0..20_000).map(|_| rng.random()).collect();
            let before: Vec<String> = keys
                .iter()
                .map(|&k| {
                    r.get(k, Operation::Write, NOW).unwrap().instances[0]
                        .id
                        .clone()
                })
                .collect();
            let taken: HashSet<u32> = insts.iter().flat_map(|i| i.tokens.clone()).collect();
            insts.push(inst(
                "new",
                "",
                InstanceState::Active,
                generate_tokens(128, &taken),
            ));
            r.set_instances(insts);
            let mut moved = 0;
            for (k, old) in keys.iter().zip(&before) {
                let now = &r.get(*k, Operation::Write, NOW).unwrap().instances[0].id;
                if now != old {
                    // Keys only ever move to the new instance.
                    assert_eq!(now, "new");
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys.len() as f64;
            let expected = 1.0 / (n + 1) as f64;
            assert!(
                frac < expected + 0.08,
                "n={n}: moved {frac:.3}, expected ~{expected:.3}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn get_gives_rf_distinct_instances(n in 1usize..12, rf in 1usize..5, token: u32) {
            let r = ring(rf, false);
            r.set_instances(random_instances(n, 0, 16));
            let quorum = rf / 2 + 1;
            match r.get(token, Operation::Write, NOW) {
                // Fewer instances than a quorum of the configured factor: writes must fail.
                Err(RingError::TooManyUnhealthy { healthy, needed }) => {
                    prop_assert!(n < quorum);
                    prop_assert_eq!((healthy, needed), (n, quorum));
                }
                Err(e) => prop_assert!(false, "unexpected error {}", e),
                Ok(set) => {
                    let ids: HashSet<_> = set.instances.iter().map(|i| i.id.clone()).collect();
                    prop_assert_eq!(ids.len(), set.instances.len());
                    prop_assert_eq!(set.instances.len(), rf.min(n));
                    prop_assert_eq!(set.max_errors, rf.min(n) - quorum);
                }
            }
        }

        #[test]
        fn get_many_agrees_with_get(n in 1usize..8, rf in 1usize..4, tokens in proptest::collection::vec(any::<u32>(), 1..50)) {
            let r = ring(rf, false);
            r.set_instances(random_instances(n, 0, 16));
            match r.get_many(tokens.iter().copied(), Operation::Write, NOW) {
                Ok((sets, of_token)) => {
                    prop_assert_eq!(of_token.len(), tokens.len());
                    for (t, &i) in tokens.iter().zip(&of_token) {
                        prop_assert_eq!(&r.get(*t, Operation::Write, NOW).unwrap(), &sets[i as usize]);
                    }
                    let distinct: HashSet<Vec<String>> = sets
                        .iter()
                        .map(|s| s.instances.iter().map(|i| i.id.clone()).collect())
                        .collect();
                    prop_assert_eq!(distinct.len(), sets.len(), "sets are distinct");
                }
                Err(_) => prop_assert!(r.get(tokens[0], Operation::Write, NOW).is_err()),
            }
        }

        #[test]
        fn get_is_zone_distinct_with_three_zones(n in 3usize..12, token: u32) {
            let r = ring(3, true);
            r.set_instances(random_instances(n, 3, 16));
            let set = r.get(token, Operation::Write, NOW).unwrap();
            let zones: HashSet<_> = set.instances.iter().map(|i| i.zone.clone()).collect();
            prop_assert_eq!(set.instances.len(), 3);
            prop_assert_eq!(zones.len(), 3);
        }
    }
}
