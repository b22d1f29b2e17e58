//! Memberlist's metrics.

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

/// Gossip metrics: members seen, messages, live KV entries.
pub(super) struct MemberlistMetrics {
    pub(super) members: IntGauge,
    pub(super) received: IntCounter,
    pub(super) sent: IntCounter,
    pub(super) kv_entries: IntGaugeVec,
    pub(super) auth_failures: IntCounter,
}

impl MemberlistMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            members: IntGauge::new(
                "norn_memberlist_members",
                "Alive cluster members as seen by this node, itself included.",
            )?,
            received: IntCounter::new(
                "norn_memberlist_messages_received_total",
                "Gossip messages received (UDP datagrams and TCP frames).",
            )?,
            sent: IntCounter::new(
                "norn_memberlist_messages_sent_total",
                "Gossip messages sent (UDP datagrams and TCP frames).",
            )?,
            auth_failures: IntCounter::new(
                "norn_memberlist_authentication_failures_total",
                "Gossip datagrams and frames dropped because they were not sealed with this node's encryption key (a node without the key, or a forged or damaged packet).",
            )?,
            kv_entries: IntGaugeVec::new(
                Opts::new(
                    "norn_memberlist_kv_entries",
                    "Live (non-tombstone) entries in the gossiped state, by key.",
                ),
                &["key"],
            )?,
        };
        registry.register(Box::new(m.members.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.sent.clone()))?;
        registry.register(Box::new(m.kv_entries.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        Ok(m)
    }
}
