//! Which tenants this compactor owns.
//!
//! In one process (no gossip) the compactor owns every tenant. In a cluster each compactor
//! registers ACTIVE in the compactor ring (gossiped key `compactor`, Mimir's) with random
//! tokens, and owns a tenant when it is the one instance (replication factor 1) the ring
//! names for the tenant's token. Every compactor computes the same answer from the same
//! ring, so a tenant is compacted by one of them; while the ring changes two may briefly
//! disagree, which costs a duplicate compaction that the next vertical merge undoes, never data.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use norn_ring::{
    InstanceState, Lifecycler, LifecyclerConfig, Memberlist, Operation, Ring, RingConfig,
    spawn_ring_watcher,
};

use crate::service::BuildError;

/// The gossiped key of the compactor ring.
pub const COMPACTOR_RING_KEY: &str = "compactor";
/// Tokens each compactor takes (Mimir's compactor default).
pub const NUM_TOKENS: usize = 512;

/// What a compactor needs to join the compactor ring.
pub struct RingMembership {
    pub memberlist: Arc<Memberlist>,
    /// This instance (id, an address to show on the ring page, heartbeat period).
    pub lifecycler: LifecyclerConfig,
    /// Members silent longer than this are left out.
    pub heartbeat_timeout: Duration,
}

/// Tenant ownership: everything, or the compactor ring's share.
pub enum Ownership {
    All,
    Ring {
        ring: Ring,
        lifecycler: Arc<Lifecycler>,
        memberlist: Arc<Memberlist>,
        id: String,
    },
}

/// The token of a tenant in the compactor ring.
pub fn tenant_token(tenant: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(tenant.as_bytes()) as u32
}

impl Ownership {
    /// Joins the ring (ACTIVE at once: a compactor has nothing to load) and follows it.
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
            COMPACTOR_RING_KEY,
            ring.clone(),
            Some(m.heartbeat_timeout.saturating_mul(2)),
            registry,
        )?;
        let id = m.lifecycler.id.clone();
        let lifecycler =
            Lifecycler::start(m.lifecycler, Arc::clone(&m.memberlist), COMPACTOR_RING_KEY).await?;
        lifecycler.set_state(InstanceState::Active);
        tracing::info!(id = %id, "compactor ACTIVE in the compactor ring");
        Ok(Ownership::Ring {
            ring,
            lifecycler,
            memberlist: m.memberlist,
            id,
        })
    }

    /// Whether this compactor owns `tenant` now.
    pub fn owns(&self, tenant: &str, now_ms: i64) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Ring { ring, id, .. } => {
                match ring.get(tenant_token(tenant), Operation::Write, now_ms) {
                    Ok(set) => set.instances.first().is_some_and(|i| i.id == *id),
                    Err(e) => {
                        tracing::debug!(tenant, error = %e, "compactor ring has no owner for the tenant");
                        false
                    }
                }
            }
        }
    }

    /// `/compactor/ring` (cluster only).
    pub fn routes(&self) -> Router {
        match self {
            Ownership::All => Router::new(),
            Ownership::Ring {
                ring, memberlist, ..
            } => Router::new().nest(
                "/compactor",
                norn_ring::http::routes_for_key(
                    ring.clone(),
                    Arc::clone(memberlist),
                    COMPACTOR_RING_KEY,
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
