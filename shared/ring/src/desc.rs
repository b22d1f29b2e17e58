//! What the ring says about one instance: its address, zone, lifecycle state, heartbeat and
//! tokens. This is the JSON value stored under the ring key in the gossiped key-value state.

use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

/// Lifecycle state of a ring member, as in Mimir. The serialised form matches Mimir's spelling
/// (`ACTIVE`, `LEAVING`, …) so operators see the names they know on `/ring`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Registered without tokens yet.
    Pending,
    /// Has tokens but is not ready to receive writes (e.g. replaying its WAL).
    Joining,
    /// Serves reads and writes.
    Active,
    /// Shutting down: still serves reads while flushing, takes no new writes.
    Leaving,
    /// Gone; ignored by the ring.
    Left,
}

impl InstanceState {
    /// Mimir's upper-case name, for pages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "PENDING",
            InstanceState::Joining => "JOINING",
            InstanceState::Active => "ACTIVE",
            InstanceState::Leaving => "LEAVING",
            InstanceState::Left => "LEFT",
        }
    }

    /// All states, for initialising per-state gauges so absent states read 0 instead of vanishing.
    pub const ALL: [InstanceState; 5] = [
        InstanceState::Pending,
        InstanceState::Joining,
        InstanceState::Active,
        InstanceState::Leaving,
        InstanceState::Left,
    ];
}

/// One ring member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceDesc {
    /// Unique instance id (usually the hostname).
    pub id: String,
    /// gRPC `host:port`.
    pub addr: String,
    /// Availability zone; empty when zones are not used.
    pub zone: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Unix milliseconds of the last heartbeat; also the last-writer-wins timestamp of the entry.
    pub heartbeat_ms: i64,
    /// Unix milliseconds of the first registration.
    pub registered_ms: i64,
    /// Sorted, unique ring tokens.
    pub tokens: Vec<u32>,
}

/// A seed that differs between processes and calls. The workspace builds `rand` without OS
/// entropy, and ring tokens need only be spread, not secret: std's per-process random hasher keys
/// plus the clock are enough.
pub(crate) fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    h.finish()
}
