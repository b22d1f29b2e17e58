//! An ingester's life in the ring: JOINING as soon as its gRPC server listens, ACTIVE once
//! its WAL is replayed, LEAVING when the process is told to stop, and gone after it flushed
//! and closed.
//!
//! Why LEAVING comes before the WAL closes: distributors pick the next instance for new
//! writes as soon as the state reaches them, so the pushes still in flight land on replicas
//! the ring now names, instead of failing against an ingester that refuses writes.

use std::sync::Arc;
use std::time::Duration;

use norn_ring::{
    INGESTER_RING_KEY, InstanceState, Lifecycler, LifecyclerConfig, LifecyclerError, Memberlist,
};
use norn_server::periodic::{FirstRun, Periodic};
use tokio_util::sync::CancellationToken;

use crate::Ingester;

/// How long a LEAVING ingester keeps taking writes, so its state reaches the distributors.
const LEAVING_PROPAGATION: Duration = Duration::from_millis(500);

/// What an ingester needs to join a cluster's ingester ring.
pub struct RingMembership {
    /// The gossip the ring travels in.
    pub memberlist: Arc<Memberlist>,
    /// This instance: id, the gRPC address distributors and queriers reach, zone, tokens.
    pub lifecycler: LifecyclerConfig,
}

/// The ingester's registration in the ring.
pub(crate) struct RingLife {
    lifecycler: Arc<Lifecycler>,
}

impl RingLife {
    /// Registers JOINING, and turns ACTIVE once `ingester` has replayed its WAL.
    pub(crate) async fn join(
        membership: RingMembership,
        ingester: Arc<Ingester>,
        stop: CancellationToken,
    ) -> Result<Self, LifecyclerError> {
        let id = membership.lifecycler.id.clone();
        let addr = membership.lifecycler.addr.clone();
        let lifecycler = Lifecycler::start(
            membership.lifecycler,
            membership.memberlist,
            INGESTER_RING_KEY,
        )
        .await?;
        tracing::info!(id = %id, addr = %addr, "ingester registered in the ring (JOINING)");
        let active = stop.child_token();
        let (l, done) = (Arc::clone(&lifecycler), active.clone());
        Periodic::every("ring-activation", Duration::from_millis(50), Duration::ZERO)
            .first_run(FirstRun::Immediately)
            .spawn(active, move || {
                if ingester.readiness().is_ok() {
                    // A stop that came first (LEAVING) is never undone.
                    if matches!(l.state(), InstanceState::Pending | InstanceState::Joining) {
                        l.set_state(InstanceState::Active);
                        tracing::info!("WAL replayed; ingester ACTIVE in the ring");
                    }
                    done.cancel();
                }
                std::future::ready(())
            });
        Ok(Self { lifecycler })
    }

    /// Ready only while ACTIVE in the ring, as Mimir's ingester.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        match self.lifecycler.state() {
            InstanceState::Active => Ok(()),
            s => Err(format!("ingester is {} in the ring", s.as_str())),
        }
    }

    /// LEAVING: distributors stop choosing this ingester; then it refuses writes still on
    /// their way (retryable, so they go to another replica).
    pub(crate) async fn begin_leaving(&self, ingester: &Ingester) {
        self.lifecycler.set_state(InstanceState::Leaving);
        tracing::info!("ingester LEAVING the ring");
        tokio::time::sleep(LEAVING_PROPAGATION).await;
        ingester.set_read_only(true);
    }

    /// Removes the instance from the ring (after the ingester flushed and closed).
    pub(crate) async fn leave(&self) {
        self.lifecycler.leave().await;
        tracing::info!("ingester left the ring");
    }
}
