//! The HA tracker: deduplicates samples from pairs (or more) of Prometheus servers that scrape
//! the same targets.
//!
//! Mimir's semantics: a request whose first series carries both the tenant's cluster label
//! (`cluster`) and replica label (`__replica__`) belongs to an HA cluster. Per (tenant,
//! cluster) one replica is *elected*; its samples are accepted (with the replica label
//! removed, so both replicas write the same series), every other replica's requests get a
//! 202 and are dropped. The elected replica's last-seen time is refreshed at most every
//! `update_timeout`; when it has not been seen for `failover_timeout`, the next replica that
//! writes is elected. Requests without both labels pass untouched.
//!
//! Election state lives behind [`ReplicaStore`]: in memory for one distributor, or in the
//! gossiped key-value store so every distributor of a cluster agrees on the elected replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use norn_model::duration::serde_duration;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

/// HA tracker configuration (YAML block `distributor.ha_tracker`, Mimir's keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaTrackerConfig {
    /// Turns the tracker on (`--distributor.ha-tracker.enable`); tenants opt in with the
    /// `accept_ha_samples` limit (its flag, as in Mimir, is
    /// `--distributor.ha-tracker.enable-for-all-users`).
    pub enable_ha_tracker: bool,
    /// How often the elected replica's last-seen time is written to the store.
    #[serde(with = "serde_duration")]
    pub ha_tracker_update_timeout: Duration,
    /// Random extra delay added to the update timeout so distributors do not write in step.
    #[serde(with = "serde_duration")]
    pub ha_tracker_update_timeout_jitter_max: Duration,
    /// How long the elected replica may be silent before another one takes over.
    #[serde(with = "serde_duration")]
    pub ha_tracker_failover_timeout: Duration,
}

impl Default for HaTrackerConfig {
    fn default() -> Self {
        Self {
            enable_ha_tracker: false,
            ha_tracker_update_timeout: Duration::from_secs(15),
            ha_tracker_update_timeout_jitter_max: Duration::from_secs(5),
            ha_tracker_failover_timeout: Duration::from_secs(30),
        }
    }
}

impl HaTrackerConfig {
    /// Mimir's rule: a failover must not happen between two regular updates.
    pub fn validate(&self) -> Result<(), String> {
        if self.enable_ha_tracker
            && self.ha_tracker_failover_timeout
                <= self.ha_tracker_update_timeout + self.ha_tracker_update_timeout_jitter_max
        {
            return Err(format!(
                "HA tracker failover timeout ({:?}) must be greater than the update timeout ({:?}) plus its maximum jitter ({:?})",
                self.ha_tracker_failover_timeout,
                self.ha_tracker_update_timeout,
                self.ha_tracker_update_timeout_jitter_max
            ));
        }
        Ok(())
    }
}

/// The elected replica of one HA cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDesc {
    pub replica: String,
    /// When the elected replica was last seen (as last written to the store), unix ms.
    pub received_at_ms: i64,
    /// When this replica was elected, unix ms.
    pub elected_at_ms: i64,
}

/// Where election state is kept and shared.
pub trait ReplicaStore: Send + Sync {
    fn get(&self, tenant: &str, cluster: &str) -> Option<ReplicaDesc>;
    fn put(&self, tenant: &str, cluster: &str, desc: &ReplicaDesc);
    /// Clusters currently tracked for `tenant`.
    fn clusters(&self, tenant: &str) -> usize;
}

/// Election state of one distributor, not shared.
#[derive(Default)]
pub struct MemoryReplicaStore {
    entries: Mutex<HashMap<(String, String), ReplicaDesc>>,
}

impl ReplicaStore for MemoryReplicaStore {
    fn get(&self, tenant: &str, cluster: &str) -> Option<ReplicaDesc> {
        self.entries
            .lock()
            .get(&(tenant.to_string(), cluster.to_string()))
            .cloned()
    }

    fn put(&self, tenant: &str, cluster: &str, desc: &ReplicaDesc) {
        self.entries
            .lock()
            .insert((tenant.to_string(), cluster.to_string()), desc.clone());
    }

    fn clusters(&self, tenant: &str) -> usize {
        self.entries
            .lock()
            .keys()
            .filter(|(t, _)| t == tenant)
            .count()
    }
}

/// Key of the HA tracker's state in the gossiped store (subkey `<tenant>/<cluster>`).
pub const HA_TRACKER_KEY: &str = "ha-tracker";

/// Election state in a cluster's gossiped key-value store: last writer (by last-seen time)
/// wins, so distributors that raced converge on one replica.
pub struct GossipReplicaStore(pub Arc<norn_ring::Memberlist>);

fn subkey(tenant: &str, cluster: &str) -> String {
    format!("{tenant}/{cluster}")
}

impl ReplicaStore for GossipReplicaStore {
    fn get(&self, tenant: &str, cluster: &str) -> Option<ReplicaDesc> {
        let e = self.0.get_entry(HA_TRACKER_KEY, &subkey(tenant, cluster))?;
        if e.tombstone {
            return None;
        }
        serde_json::from_slice(&e.value).ok()
    }

    fn put(&self, tenant: &str, cluster: &str, desc: &ReplicaDesc) {
        let value = serde_json::to_vec(desc).expect("replica desc serializes");
        self.0.put(
            HA_TRACKER_KEY,
            &subkey(tenant, cluster),
            norn_ring::Entry {
                ts_ms: desc.received_at_ms,
                tombstone: false,
                value,
            },
        );
    }

    fn clusters(&self, tenant: &str) -> usize {
        self.0.count_live(HA_TRACKER_KEY, &format!("{tenant}/"))
    }
}

/// Why a request from an HA cluster is not stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HaError {
    /// Another replica is elected: the sender gets a 202 and the samples are dropped.
    #[error(
        "replicas did not match, rejecting sample: cluster={cluster}, replica={replica}, elected={elected}"
    )]
    NotElected {
        cluster: String,
        replica: String,
        elected: String,
    },
    /// The tenant already has as many HA clusters as it may: 400.
    #[error(
        "the write request has been rejected because the maximum number of high-availability (HA) clusters has been reached for this tenant (limit: {limit})"
    )]
    TooManyClusters { limit: usize },
}

/// Decides, per request, whether an HA replica's samples are stored.
pub struct HaTracker {
    config: HaTrackerConfig,
    store: Arc<dyn ReplicaStore>,
    /// Guards the read-decide-write of an election within this distributor; across
    /// distributors the store's last-writer-wins merge settles races.
    elect: Mutex<()>,
    metrics: HaTrackerMetrics,
}

/// The HA tracker's metrics. `norn_ha_tracker_…` is Mimir's name
/// (`cortex_ha_tracker_elected_replica_changes_total`), kept so dashboards carry over.
struct HaTrackerMetrics {
    deduped: IntCounterVec,
    elected_changes: IntCounterVec,
}

impl HaTrackerMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let deduped = IntCounterVec::new(
            Opts::new(
                "norn_distributor_deduped_samples_total",
                "Samples dropped because they came from an HA replica that is not the elected one.",
            ),
            &["tenant", "cluster"],
        )?;
        let elected_changes = IntCounterVec::new(
            Opts::new(
                "norn_ha_tracker_elected_replica_changes_total",
                "Times a new replica was elected for an HA cluster (first election included).",
            ),
            &["tenant", "cluster"],
        )?;
        registry.register(Box::new(deduped.clone()))?;
        registry.register(Box::new(elected_changes.clone()))?;
        Ok(Self {
            deduped,
            elected_changes,
        })
    }
}

impl HaTracker {
    /// A tracker whose metrics are registered on `registry` (one tracker per registry).
    pub fn new(
        config: HaTrackerConfig,
        store: Arc<dyn ReplicaStore>,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            config,
            store,
            elect: Mutex::new(()),
            metrics: HaTrackerMetrics::new(registry)?,
        }))
    }

    pub fn config(&self) -> &HaTrackerConfig {
        &self.config
    }

    /// Whether `tenant`'s requests are deduplicated.
    pub fn enabled_for(&self, accept_ha_samples: bool) -> bool {
        self.config.enable_ha_tracker && accept_ha_samples
    }

    /// Accepts or refuses a request of `replica` in `cluster` at `now_ms`.
    pub fn check(
        &self,
        tenant: &str,
        cluster: &str,
        replica: &str,
        max_clusters: usize,
        now_ms: i64,
    ) -> Result<(), HaError> {
        let update_ms = self.update_timeout_ms(tenant, cluster);
        let failover_ms = self.config.ha_tracker_failover_timeout.as_millis() as i64;
        // The common case, the elected replica within its update period, takes no lock.
        if let Some(d) = self.store.get(tenant, cluster)
            && d.replica == replica
            && now_ms - d.received_at_ms < update_ms
        {
            return Ok(());
        }
        let _guard = self.elect.lock();
        match self.store.get(tenant, cluster) {
            Some(d) if d.replica == replica => {
                if now_ms - d.received_at_ms >= update_ms {
                    self.store.put(
                        tenant,
                        cluster,
                        &ReplicaDesc {
                            received_at_ms: now_ms,
                            ..d
                        },
                    );
                }
                Ok(())
            }
            Some(d) if now_ms - d.received_at_ms > failover_ms => {
                tracing::info!(
                    tenant,
                    cluster,
                    from = %d.replica,
                    to = replica,
                    silent_ms = now_ms - d.received_at_ms,
                    "HA failover: electing a new replica"
                );
                self.elect_replica(tenant, cluster, replica, now_ms);
                Ok(())
            }
            Some(d) => Err(HaError::NotElected {
                cluster: cluster.to_string(),
                replica: replica.to_string(),
                elected: d.replica,
            }),
            None => {
                if max_clusters > 0 && self.store.clusters(tenant) >= max_clusters {
                    return Err(HaError::TooManyClusters {
                        limit: max_clusters,
                    });
                }
                tracing::info!(tenant, cluster, replica, "HA cluster seen first: electing");
                self.elect_replica(tenant, cluster, replica, now_ms);
                Ok(())
            }
        }
    }

    /// Counts samples dropped for a non-elected replica.
    pub fn count_deduped(&self, tenant: &str, cluster: &str, samples: usize) {
        self.metrics
            .deduped
            .with_label_values(&[tenant, cluster])
            .inc_by(samples as u64);
    }

    fn elect_replica(&self, tenant: &str, cluster: &str, replica: &str, now_ms: i64) {
        self.store.put(
            tenant,
            cluster,
            &ReplicaDesc {
                replica: replica.to_string(),
                received_at_ms: now_ms,
                elected_at_ms: now_ms,
            },
        );
        self.metrics
            .elected_changes
            .with_label_values(&[tenant, cluster])
            .inc();
    }

    /// The update timeout plus a jitter that is stable per cluster, so distributors spread
    /// their writes without a random number per request.
    fn update_timeout_ms(&self, tenant: &str, cluster: &str) -> i64 {
        let base = self.config.ha_tracker_update_timeout.as_millis() as i64;
        let jitter = self.config.ha_tracker_update_timeout_jitter_max.as_millis() as i64;
        if jitter == 0 {
            return base;
        }
        let h = xxhash_rust::xxh3::xxh3_64(format!("{tenant}/{cluster}").as_bytes());
        base + (h % jitter as u64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Arc<HaTracker> {
        HaTracker::new(
            HaTrackerConfig {
                enable_ha_tracker: true,
                ha_tracker_update_timeout_jitter_max: Duration::ZERO,
                ..Default::default()
            },
            Arc::new(MemoryReplicaStore::default()),
            &Registry::new(),
        )
        .unwrap()
    }

    #[test]
    fn first_replica_is_elected_and_others_refused() {
        let t = tracker();
        assert_eq!(t.check("t", "c", "a", 0, 1_000), Ok(()));
        assert_eq!(
            t.check("t", "c", "b", 0, 2_000),
            Err(HaError::NotElected {
                cluster: "c".into(),
                replica: "b".into(),
                elected: "a".into()
            })
        );
        assert_eq!(t.check("t", "c", "a", 0, 3_000), Ok(()));
        // Another cluster and another tenant elect on their own.
        assert_eq!(t.check("t", "d", "b", 0, 3_000), Ok(()));
        assert_eq!(t.check("u", "c", "b", 0, 3_000), Ok(()));
    }

    #[test]
    fn failover_after_timeout_but_not_before() {
        let t = tracker();
        t.check("t", "c", "a", 0, 0).unwrap();
        // a keeps writing until 20s; its last-seen time is refreshed at 15s.
        t.check("t", "c", "a", 0, 15_000).unwrap();
        t.check("t", "c", "a", 0, 20_000).unwrap();
        // 30s after the last stored refresh (15s) b may not take over yet...
        assert!(t.check("t", "c", "b", 0, 44_000).is_err());
        // ... but after it may, and then a is the one refused.
        assert_eq!(t.check("t", "c", "b", 0, 45_001), Ok(()));
        assert!(t.check("t", "c", "a", 0, 45_002).is_err());
    }

    #[test]
    fn max_clusters_refuses_new_clusters_only() {
        let t = tracker();
        t.check("t", "c1", "a", 2, 0).unwrap();
        t.check("t", "c2", "a", 2, 0).unwrap();
        assert_eq!(
            t.check("t", "c3", "a", 2, 0),
            Err(HaError::TooManyClusters { limit: 2 })
        );
        assert_eq!(t.check("t", "c1", "a", 2, 1), Ok(()));
    }

    #[test]
    fn opt_in_per_tenant() {
        let t = tracker();
        assert!(t.enabled_for(true));
        assert!(!t.enabled_for(false));
        let off = HaTracker::new(
            HaTrackerConfig::default(),
            Arc::new(MemoryReplicaStore::default()),
            &Registry::new(),
        )
        .unwrap();
        assert!(!off.enabled_for(true));
    }

    #[test]
    fn validate_requires_failover_beyond_update_and_jitter() {
        let mut c = HaTrackerConfig {
            enable_ha_tracker: true,
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        c.ha_tracker_failover_timeout = Duration::from_secs(20);
        assert!(c.validate().is_err());
    }
}
