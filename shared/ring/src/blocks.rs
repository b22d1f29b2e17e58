//! Block sharding over the store-gateway ring: which store-gateways hold block B of tenant T.
//!
//! One function, [`BlocksSharding::replicas`], answers it for both sides: the querier routes
//! each block to the first of its replicas (and retries the others), and a store-gateway loads
//! exactly the blocks [`BlocksSharding::owns`] says it owns. Both derive from the same gossiped
//! ring, so they agree whenever their views of the ring agree.
//!
//! As in Mimir:
//! - a block's token is a hash of its ID; its replicas are the first `replication_factor`
//!   instances clockwise from that token;
//! - with a per-tenant shard size (`store_gateway_tenant_shard_size`, 0 = every instance) the
//!   walk only visits the tenant's shard, a subset chosen per tenant. The shard is picked by
//!   rendezvous hashing of (tenant, instance id), so an instance joining or leaving changes at
//!   most one member of each tenant's shard;
//! - an instance that is JOINING or PENDING, or whose heartbeat is older than the heartbeat
//!   timeout, does not count for reads: the walk extends by one instance instead.
//!
//! Re-sharding never leaves a gap: a store-gateway owns a block when it is in the block's
//! read replicas *or* in its sync replicas, where a JOINING instance does count. So while a new
//! instance is JOINING (loading its share) the old owner still holds the block the querier
//! still asks it for; once the new one is ACTIVE the old owner drops it.

use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::Arc;

use norn_model::now_ms;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::desc::{InstanceDesc, InstanceState};
use crate::ring::Ring;

/// The KV key of the store-gateway ring.
pub const STORE_GATEWAY_RING_KEY: &str = "store-gateway";

/// The ring token of a block: a hash of its ID (the tenant is not part of it, as in Mimir).
pub fn block_token(block_id: &str) -> u32 {
    xxh3_64(block_id.as_bytes()) as u32
}

/// Whom a replica walk is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlocksOp {
    /// The querier asking for a block: only ACTIVE and LEAVING instances with a fresh
    /// heartbeat serve; others extend the walk.
    Read,
    /// A store-gateway deciding what to load: JOINING instances count too, so a new instance
    /// loads its blocks before it is ACTIVE and takes reads.
    Sync,
}

impl BlocksOp {
    fn counts(self, state: InstanceState) -> bool {
        match self {
            BlocksOp::Read => matches!(state, InstanceState::Active | InstanceState::Leaving),
            BlocksOp::Sync => matches!(
                state,
                InstanceState::Joining | InstanceState::Active | InstanceState::Leaving
            ),
        }
    }
}

/// A frozen view of the store-gateway ring for one tenant: built once per query (or per
/// sync) and then asked about every block, so a query over thousands of blocks walks a
/// prebuilt token table instead of cloning the ring per block.
#[derive(Debug, Clone)]
pub struct TenantShard {
    /// The tenant's shard, sorted by id.
    instances: Vec<InstanceDesc>,
    /// `(token, index into instances)`, sorted by token.
    tokens: Vec<(u32, usize)>,
    replication_factor: usize,
    heartbeat_timeout_ms: i64,
    now_ms: i64,
}

impl TenantShard {
    /// The instances of the tenant's shard, sorted by id.
    pub fn instances(&self) -> &[InstanceDesc] {
        &self.instances
    }

    fn fresh(&self, inst: &InstanceDesc) -> bool {
        self.heartbeat_timeout_ms <= 0
            || self.now_ms - inst.heartbeat_ms <= self.heartbeat_timeout_ms
    }

    /// The instances that hold `block_id` for `op`, in walk order (the querier asks the first
    /// and retries the next ones). At most `replication_factor` instances; empty when the
    /// shard has no instance that may serve.
    pub fn replicas(&self, block_id: &str, op: BlocksOp) -> Vec<&InstanceDesc> {
        if self.tokens.is_empty() {
            return Vec::new();
        }
        let token = block_token(block_id);
        let start = self.tokens.partition_point(|(t, _)| *t < token);
        let mut seen: HashSet<usize> = HashSet::new();
        let mut out = Vec::with_capacity(self.replication_factor);
        for i in 0..self.tokens.len() {
            if out.len() >= self.replication_factor || seen.len() == self.instances.len() {
                break;
            }
            let idx = self.tokens[(start + i) % self.tokens.len()].1;
            if !seen.insert(idx) {
                continue;
            }
            let inst = &self.instances[idx];
            // Instances that cannot serve extend the walk, so the block still gets RF
            // replicas and every node computes the same extension.
            if op.counts(inst.state) && self.fresh(inst) {
                out.push(inst);
            }
        }
        out
    }

    /// Whether instance `id` should hold `block_id`: it is among the block's read replicas
    /// (the querier asks it now) or its sync replicas (it takes reads once ACTIVE).
    pub fn owns(&self, id: &str, block_id: &str) -> bool {
        [BlocksOp::Read, BlocksOp::Sync]
            .into_iter()
            .any(|op| self.replicas(block_id, op).iter().any(|i| i.id == id))
    }
}

/// Block placement over a [`Ring`] of store-gateways.
#[derive(Clone, Debug)]
pub struct BlocksSharding {
    ring: Ring,
}

impl BlocksSharding {
    /// Sharding over `ring` (its replication factor and heartbeat timeout apply; zone
    /// awareness is not used for blocks).
    pub fn new(ring: Ring) -> Self {
        Self { ring }
    }

    /// The ring itself (for `/store-gateway/ring`).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The tenant's view of the ring at `now_ms`; `shard_size` 0 (or at least the number of
    /// instances) means every instance.
    pub fn tenant_shard(&self, tenant: &str, shard_size: usize, now_ms: i64) -> TenantShard {
        let config = self.ring.config();
        shard_of(
            self.ring.instances(),
            tenant,
            shard_size,
            config.replication_factor.max(1),
            i64::try_from(config.heartbeat_timeout.as_millis()).unwrap_or(i64::MAX),
            now_ms,
        )
    }

    /// [`TenantShard::owns`] for one block: what a store-gateway asks during its sync.
    pub fn owns(
        &self,
        id: &str,
        tenant: &str,
        shard_size: usize,
        block_id: &str,
        now_ms: i64,
    ) -> bool {
        self.tenant_shard(tenant, shard_size, now_ms)
            .owns(id, block_id)
    }
}

/// A tenant's shard size (`store_gateway_tenant_shard_size`, 0 = every instance), looked up
/// per call so runtime overrides apply at the next sync.
pub type ShardSizeFn = Arc<dyn Fn(&str) -> usize + Send + Sync>;

/// "Does this store-gateway own block B of tenant T?" over the ring: what a store-gateway in a
/// cluster asks during its sync (the store-gateway crate implements its `BlockOwnership` for
/// it). The same placement as the querier's routing, since both use [`TenantShard`].
#[derive(Clone)]
pub struct RingBlockOwnership {
    sharding: BlocksSharding,
    instance_id: String,
    shard_size: ShardSizeFn,
}

impl std::fmt::Debug for RingBlockOwnership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBlockOwnership")
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

impl RingBlockOwnership {
    /// Ownership for the store-gateway registered as `instance_id`.
    pub fn new(
        sharding: BlocksSharding,
        instance_id: impl Into<String>,
        shard_size: ShardSizeFn,
    ) -> Self {
        Self {
            sharding,
            instance_id: instance_id.into(),
            shard_size,
        }
    }

    /// The tenant's view of the ring now: ask it about many blocks of one sync.
    pub fn tenant_shard(&self, tenant: &str) -> TenantShard {
        self.sharding
            .tenant_shard(tenant, (self.shard_size)(tenant), now_ms())
    }

    /// Whether this instance should hold `block_id` of `tenant` now.
    pub fn owns(&self, tenant: &str, block_id: &str) -> bool {
        self.tenant_shard(tenant).owns(&self.instance_id, block_id)
    }
}

/// The rendezvous weight of an instance for a tenant: the tenant's shard is the
/// `shard_size` instances with the largest weights.
fn weight(tenant: &str, id: &str) -> u64 {
    let mut h = Xxh3::new();
    h.write(tenant.as_bytes());
    // A separator so ("ab", "c") and ("a", "bc") differ.
    h.write_u8(0xff);
    h.write(id.as_bytes());
    h.finish()
}

fn shard_of(
    mut instances: Vec<InstanceDesc>,
    tenant: &str,
    shard_size: usize,
    replication_factor: usize,
    heartbeat_timeout_ms: i64,
    now_ms: i64,
) -> TenantShard {
    instances.retain(|i| i.state != InstanceState::Left);
    if shard_size > 0 && shard_size < instances.len() {
        instances.sort_by_cached_key(|i| std::cmp::Reverse((weight(tenant, &i.id), i.id.clone())));
        instances.truncate(shard_size);
    }
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    let mut tokens: Vec<(u32, usize)> = instances
        .iter()
        .enumerate()
        .flat_map(|(i, inst)| inst.tokens.iter().map(move |&t| (t, i)))
        .collect();
    tokens.sort_unstable();
    // Same rule as the ring: the smaller id owns a token two instances claim.
    tokens.dedup_by_key(|(t, _)| *t);
    TenantShard {
        instances,
        tokens,
        replication_factor,
        heartbeat_timeout_ms,
        now_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use super::*;
    use crate::ring::{RingConfig, generate_tokens};

    const NOW: i64 = 10_000_000;

    fn inst(id: &str, state: InstanceState, tokens: Vec<u32>) -> InstanceDesc {
        InstanceDesc {
            id: id.to_string(),
            addr: format!("{id}:9095"),
            zone: String::new(),
            state,
            heartbeat_ms: NOW,
            registered_ms: 0,
            tokens,
        }
    }

    fn instances(n: usize) -> Vec<InstanceDesc> {
        let mut taken = HashSet::new();
        (0..n)
            .map(|i| {
                let t = generate_tokens(128, &taken);
                taken.extend(t.iter().copied());
                inst(&format!("sg-{i}"), InstanceState::Active, t)
            })
            .collect()
    }

    fn sharding(rf: usize, insts: Vec<InstanceDesc>) -> BlocksSharding {
        let ring = Ring::new(RingConfig {
            replication_factor: rf,
            heartbeat_timeout: Duration::from_secs(60),
            zone_awareness_enabled: false,
        });
        ring.set_instances(insts);
        BlocksSharding::new(ring)
    }

    fn block_ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("01HQ{i:022}")).collect()
    }

    fn ids(v: Vec<&InstanceDesc>) -> Vec<String> {
        v.into_iter().map(|i| i.id.clone()).collect()
    }

    #[test]
    fn every_block_gets_rf_distinct_replicas_spread_evenly() {
        let s = sharding(3, instances(5));
        let shard = s.tenant_shard("t", 0, NOW);
        let mut per_instance: HashMap<String, usize> = HashMap::new();
        let blocks = block_ids(5000);
        for b in &blocks {
            let r = ids(shard.replicas(b, BlocksOp::Read));
            assert_eq!(r.len(), 3, "{b}");
            assert_eq!(r.iter().collect::<HashSet<_>>().len(), 3);
            for id in r {
                *per_instance.entry(id).or_default() += 1;
            }
        }
        // 5000 blocks x 3 copies over 5 instances: 3000 each, within 25%.
        for (id, n) in per_instance {
            assert!((2250..=3750).contains(&n), "{id} holds {n}");
        }
    }

    #[test]
    fn rf_is_capped_by_the_instances_and_the_empty_ring_has_no_replicas() {
        let s = sharding(3, instances(2));
        assert_eq!(
            s.tenant_shard("t", 0, NOW)
                .replicas("b", BlocksOp::Read)
                .len(),
            2
        );
        let s = sharding(3, Vec::new());
        assert!(
            s.tenant_shard("t", 0, NOW)
                .replicas("b", BlocksOp::Read)
                .is_empty()
        );
    }

    #[test]
    fn joining_and_stale_instances_extend_reads_but_joining_counts_for_sync() {
        // Tokens placed around the block's token: the walk from it meets b, c, d, then a.
        let block = "01HQJOINING".to_string();
        let t = block_token(&block);
        let mut insts = vec![
            inst("a", InstanceState::Active, vec![t.wrapping_sub(10)]),
            inst("b", InstanceState::Joining, vec![t]),
            inst("c", InstanceState::Active, vec![t.wrapping_add(10)]),
            inst("d", InstanceState::Active, vec![t.wrapping_add(20)]),
        ];
        let shard = sharding(2, insts.clone()).tenant_shard("t", 0, NOW);
        assert_eq!(ids(shard.replicas(&block, BlocksOp::Read)), ["c", "d"]);
        assert_eq!(ids(shard.replicas(&block, BlocksOp::Sync)), ["b", "c"]);
        // d still owns it until b is ACTIVE: no gap while b loads.
        assert!(shard.owns("d", &block) && shard.owns("b", &block) && shard.owns("c", &block));
        assert!(!shard.owns("a", &block));
        insts[1].state = InstanceState::Active;
        let shard = sharding(2, insts.clone()).tenant_shard("t", 0, NOW);
        assert!(!shard.owns("d", &block), "d drops it once b is active");
        // A dead instance (stale heartbeat) hands its blocks to the next one.
        insts[1].heartbeat_ms = NOW - 61_000;
        let shard = sharding(2, insts).tenant_shard("t", 0, NOW);
        assert_eq!(ids(shard.replicas(&block, BlocksOp::Read)), ["c", "d"]);
        assert_eq!(ids(shard.replicas(&block, BlocksOp::Sync)), ["c", "d"]);
    }

    #[test]
    fn a_joining_instance_takes_only_its_share() {
        let mut insts = instances(4);
        let blocks = block_ids(4000);
        let before = sharding(3, insts.clone()).tenant_shard("t", 0, NOW);
        let taken: HashSet<u32> = insts.iter().flat_map(|i| i.tokens.clone()).collect();
        insts.push(inst(
            "new",
            InstanceState::Active,
            generate_tokens(128, &taken),
        ));
        let after = sharding(3, insts).tenant_shard("t", 0, NOW);
        let mut moved = 0;
        for b in &blocks {
            let old: HashSet<String> = ids(before.replicas(b, BlocksOp::Read))
                .into_iter()
                .collect();
            let new: HashSet<String> = ids(after.replicas(b, BlocksOp::Read)).into_iter().collect();
            // Copies only ever move to the new instance.
            for id in new.difference(&old) {
                assert_eq!(id, "new");
                moved += 1;
            }
        }
        // The new instance holds about 3/5 of the blocks (RF 3 of 5 instances).
        let share = moved as f64 / blocks.len() as f64;
        assert!(
            (0.45..0.75).contains(&share),
            "new instance took {share:.3}"
        );
    }

    #[test]
    fn shuffle_shards_are_stable_and_distinct_per_tenant() {
        let insts = instances(10);
        let s = sharding(3, insts.clone());
        let members = |shard: &TenantShard| {
            shard
                .instances()
                .iter()
                .map(|i| i.id.clone())
                .collect::<HashSet<_>>()
        };
        let a = s.tenant_shard("tenant-a", 4, NOW);
        assert_eq!(a.instances().len(), 4);
        assert_eq!(members(&a), members(&s.tenant_shard("tenant-a", 4, NOW)));
        // Every block of the tenant stays inside its shard.
        for b in block_ids(200) {
            for r in a.replicas(&b, BlocksOp::Read) {
                assert!(members(&a).contains(&r.id));
            }
        }
        // Different tenants land on different shards (10 choose 4 = 210 possibilities).
        let shards: HashSet<Vec<String>> = (0..20)
            .map(|t| {
                let mut v: Vec<String> = members(&s.tenant_shard(&format!("t{t}"), 4, NOW))
                    .into_iter()
                    .collect();
                v.sort();
                v
            })
            .collect();
        assert!(shards.len() > 5, "{} distinct shards", shards.len());
        // One more instance changes at most one member of a shard.
        let mut more = insts.clone();
        more.push(inst(
            "sg-new",
            InstanceState::Active,
            generate_tokens(128, &HashSet::new()),
        ));
        let s2 = sharding(3, more);
        for t in 0..50 {
            let tenant = format!("t{t}");
            let old = members(&s.tenant_shard(&tenant, 4, NOW));
            let new = members(&s2.tenant_shard(&tenant, 4, NOW));
            assert!(old.difference(&new).count() <= 1, "{tenant}");
        }
        // Shard size 0 or larger than the ring: every instance.
        assert_eq!(s.tenant_shard("x", 0, NOW).instances().len(), 10);
        assert_eq!(s.tenant_shard("x", 50, NOW).instances().len(), 10);
    }

    #[test]
    fn ring_ownership_uses_the_tenants_shard_size() {
        // Ownership is asked at the real "now": fresh heartbeats.
        let insts: Vec<InstanceDesc> = instances(6)
            .into_iter()
            .map(|mut i| {
                i.heartbeat_ms = now_ms();
                i
            })
            .collect();
        let s = sharding(1, insts.clone());
        let shard_size: ShardSizeFn = Arc::new(|t: &str| if t == "small" { 2 } else { 0 });
        let owners = |tenant: &str| {
            let mut ids = HashSet::new();
            for b in block_ids(300) {
                for i in &insts {
                    let o =
                        RingBlockOwnership::new(s.clone(), i.id.clone(), Arc::clone(&shard_size));
                    if o.owns(tenant, &b) {
                        ids.insert(i.id.clone());
                    }
                }
            }
            ids.len()
        };
        assert_eq!(owners("small"), 2);
        assert_eq!(owners("big"), 6);
    }

    #[test]
    fn owns_agrees_with_the_read_replicas() {
        let s = sharding(2, instances(4));
        for b in block_ids(300) {
            let readers = ids(s.tenant_shard("t", 3, NOW).replicas(&b, BlocksOp::Read));
            for i in 0..4 {
                let id = format!("sg-{i}");
                assert_eq!(
                    s.owns(&id, "t", 3, &b, NOW),
                    readers.contains(&id),
                    "{b} {id}"
                );
            }
        }
    }
}
