//! Which rule groups this ruler evaluates.
//!
//! In one process (no gossip) the ruler owns every group. In a cluster each ruler registers
//! ACTIVE in the ruler ring (gossiped key `ruler`, Mimir's) with random tokens, and owns a
//! group when it is the one instance (replication factor 1) the ring names for the token of
//! the group's tenant, namespace and name (Mimir's sharding unit), so two rulers split one
//! tenant's groups. Every ruler computes the same answer from the same ring; while the ring
//! changes two may briefly both evaluate a group, which writes the same samples twice (the
//! second copy is refused as a duplicate), never loses an evaluation for long. A ruler that
//! leaves or stops heartbeating drops out of the ring and the others take its groups at their
//! next poll.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use norn_ring::{
    InstanceState, Lifecycler, LifecyclerConfig, Memberlist, Operation, Ring, RingConfig,
    spawn_ring_watcher,
};

use crate::service::BuildError;

/// The gossiped key of the ruler ring.
pub const RULER_RING_KEY: &str = "ruler";
/// Tokens each ruler takes (Mimir's ruler default).
pub const NUM_TOKENS: usize = 128;

/// What a ruler needs to join the ruler ring.
pub struct RingMembership {
    pub memberlist: Arc<Memberlist>,
    /// This instance (id, an address to show on the ring page, heartbeat period).
    pub lifecycler: LifecyclerConfig,
    /// Members silent longer than this are left out.
    pub heartbeat_timeout: Duration,
}

/// Group ownership: everything, or the ruler ring's share.
pub enum Ownership {
    All,
    Ring {
        ring: Ring,
        lifecycler: Arc<Lifecycler>,
        memberlist: Arc<Memberlist>,
        id: String,
    },
}

/// The token of a group in the ruler ring: tenant, namespace and group name, separated by a
/// byte no name holds so that `("a", "bc")` and `("ab", "c")` differ.
pub fn group_token(tenant: &str, namespace: &str, group: &str) -> u32 {
    let mut b = Vec::with_capacity(tenant.len() + namespace.len() + group.len() + 2);
    b.extend_from_slice(tenant.as_bytes());
    b.push(0);
    b.extend_from_slice(namespace.as_bytes());
    b.push(0);
    b.extend_from_slice(group.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&b) as u32
}

impl Ownership {
    /// Joins the ring (ACTIVE at once: a ruler has nothing to load first) and follows it.
    pub async fn join(
        m: RingMembership,
        registry: &prometheus::Registry,
    ) -> Result<Self, BuildError> {
        let ring = Ring::new(RingConfig {
            replication_factor: 1,
            heartbeat_timeout: m.heartbeat_timeout,
            zone_awareness_enabled: false,
        });
        spawn_ring_watcher(
            Arc::clone(&m.memberlist),
            RULER_RING_KEY,
            ring.clone(),
            Some(m.heartbeat_timeout.saturating_mul(2)),
            registry,
        )?;
        let id = m.lifecycler.id.clone();
        let lifecycler =
            Lifecycler::start(m.lifecycler, Arc::clone(&m.memberlist), RULER_RING_KEY).await?;
        lifecycler.set_state(InstanceState::Active);
        tracing::info!(id = %id, "ruler ACTIVE in the ruler ring");
        Ok(Ownership::Ring {
            ring,
            lifecycler,
            memberlist: m.memberlist,
            id,
        })
    }

    /// Whether this ruler owns the group now.
    pub fn owns(&self, tenant: &str, namespace: &str, group: &str, now_ms: i64) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Ring { ring, id, .. } => {
                let token = group_token(tenant, namespace, group);
                match ring.get(token, Operation::Write, now_ms) {
                    Ok(set) => set.instances.first().is_some_and(|i| i.id == *id),
                    Err(e) => {
                        tracing::debug!(tenant, error = %e, "ruler ring has no owner for the group");
                        false
                    }
                }
            }
        }
    }

    /// `/ruler/ring` (cluster only).
    pub fn routes(&self) -> Router {
        match self {
            Ownership::All => Router::new(),
            Ownership::Ring {
                ring, memberlist, ..
            } => Router::new().nest(
                "/ruler",
                norn_ring::http::routes_for_key(
                    ring.clone(),
                    Arc::clone(memberlist),
                    RULER_RING_KEY,
                ),
            ),
        }
    }

    /// Leaves the ring (shutdown).
    pub async fn leave(&self) {
        if let Ownership::Ring { lifecycler, .. } = self {
            lifecycler.set_state(InstanceState::Leaving);
            lifecycler.leave().await;
        }
    }
}
