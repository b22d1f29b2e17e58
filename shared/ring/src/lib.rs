//! The hash ring of Norn: instance descriptions, tokens and states ([`desc`]), replica-set
//! lookups ([`ring`]), a last-writer-wins key-value CRDT ([`kv`]) spread by SWIM gossip over foca
//! ([`memberlist`]), the lifecycler that registers and heartbeats an instance and the watcher that
//! keeps a [`Ring`] in sync with the gossiped state ([`lifecycler`]), and the `/ring` and
//! `/memberlist` pages ([`http`]), the write path's view of a ring ([`replicas`]) and the
//! addresses a member binds and advertises ([`net`]), and the placement of bucket blocks on
//! the store-gateway ring ([`blocks`]).
//!
//! Modelled on Grafana Mimir's `dskit/ring` and `dskit/kv/memberlist`, so the same operational
//! knowledge (states, quorum, forgetting unhealthy members) applies.

pub mod blocks;
pub mod desc;
pub mod gossip_key;
pub mod http;
pub mod kv;
pub mod lifecycler;
pub mod memberlist;
pub mod net;
pub mod replicas;
pub mod ring;

pub use blocks::{
    BlocksOp, BlocksSharding, RingBlockOwnership, STORE_GATEWAY_RING_KEY, ShardSizeFn, TenantShard,
    block_token,
};
pub use desc::{InstanceDesc, InstanceState};
pub use gossip_key::GossipKey;
pub use kv::{Entry, KvState};
pub use lifecycler::{
    INGESTER_RING_KEY, Lifecycler, LifecyclerConfig, LifecyclerError, spawn_ring_watcher,
};
pub use memberlist::{MemberInfo, Memberlist, MemberlistConfig, MemberlistError};
pub use replicas::{ReplicaSet, WriteRing};
pub use ring::{Operation, ReplicationSet, Ring, RingConfig, RingError, generate_tokens};
