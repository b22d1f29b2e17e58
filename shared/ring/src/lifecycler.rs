//! Ring membership over the memberlist: the [`Lifecycler`] registers this instance (tokens,
//! state, heartbeats) under a KV key, and [`spawn_ring_watcher`] keeps a [`Ring`] in sync with
//! that key on every node, forgetting instances that stopped heartbeating.
//!
//! Background tasks hold the memberlist and the lifecycler weakly, so dropping them (a crash in
//! tests) stops heartbeats just like a dead process would.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{Gauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::desc::{InstanceDesc, InstanceState};
use crate::kv::Entry;
use crate::memberlist::Memberlist;
use crate::ring::{Ring, generate_tokens};
use norn_model::now_ms;

/// The KV key of the ingester ring.
pub const INGESTER_RING_KEY: &str = "ingester";

/// How often the watcher re-checks heartbeats even when nothing changed (for forgetting and
/// the heartbeat-age gauge).
const WATCH_TICK: Duration = Duration::from_secs(1);

/// Lifecycler errors.
#[derive(Debug, thiserror::Error)]
pub enum LifecyclerError {
    /// Reading or writing the tokens file failed.
    #[error("tokens file {path}: {source}")]
    TokensFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The tokens file is not `{"tokens":[...]}`.
    #[error("tokens file {path}: {source}")]
    BadTokensFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Result alias for the lifecycler.
pub type Result<T, E = LifecyclerError> = std::result::Result<T, E>;

/// Decode the live instances of a ring key; undecodable entries are logged and skipped so one
/// bad writer cannot empty the ring.
pub fn decode_instances(entries: &std::collections::BTreeMap<String, Entry>) -> Vec<InstanceDesc> {
    entries
        .iter()
        .filter(|(_, e)| !e.tombstone)
        .filter_map(
            |(id, e)| match serde_json::from_slice::<InstanceDesc>(&e.value) {
                Ok(d) => Some(d),
                Err(err) => {
                    warn!(instance = %id, %err, "ring: undecodable instance entry");
                    None
                }
            },
        )
        .collect()
}

/// Write a tombstone for `id` under `key` that beats its current entry, so the whole cluster
/// drops it. Used by the watcher's auto-forget and by `/ring`'s forget button.
pub fn forget_instance(memberlist: &Memberlist, key: &str, id: &str) {
    let current = memberlist.get(key).get(id).map(|e| e.ts_ms).unwrap_or(0);
    memberlist.put(key, id, Entry::tombstone(now_ms().max(current + 1)));
}

/// A ring watcher's metrics, labelled with the ring's key (`name`), so watchers of several
/// rings share one registry.
struct WatcherMetrics {
    members: IntGaugeVec,
    oldest_age: Gauge,
}

impl WatcherMetrics {
    fn new(key: &str, registry: &Registry) -> prometheus::Result<Self> {
        let members = IntGaugeVec::new(
            Opts::new("norn_ring_members", "Ring members by state.").const_label("name", key),
            &["state"],
        )?;
        let oldest_age = Gauge::with_opts(
            Opts::new(
                "norn_ring_oldest_member_heartbeat_age_seconds",
                "Age of the oldest heartbeat among ring members.",
            )
            .const_label("name", key),
        )?;
        registry.register(Box::new(members.clone()))?;
        registry.register(Box::new(oldest_age.clone()))?;
        Ok(Self {
            members,
            oldest_age,
        })
    }
}

/// Keeps `ring` in sync with memberlist key `key` (entries' JSON [`InstanceDesc`], tombstones
/// skipped). With `forget_after`, any instance whose heartbeat is older gets a tombstone
/// (ts = now) so the whole cluster drops it; a restarted instance heartbeats with a newer ts and
/// comes back. The ring is filled before this returns; the task runs until the memberlist stops.
/// Must be called inside a tokio runtime. Fails only if a watcher of the same key already
/// registered its metrics on `registry`.
pub fn spawn_ring_watcher(
    memberlist: Arc<Memberlist>,
    key: &'static str,
    ring: Ring,
    forget_after: Option<Duration>,
    registry: &Registry,
) -> prometheus::Result<()> {
    let metrics = WatcherMetrics::new(key, registry)?;
    let mut changes = memberlist.watch();
    let mut stopped = memberlist.stopped();
    sync_ring(&memberlist, key, &ring, forget_after, &metrics);
    let weak: Weak<Memberlist> = Arc::downgrade(&memberlist);
    drop(memberlist);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = stopped.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(WATCH_TICK) => {}
            }
            let Some(memberlist) = weak.upgrade() else {
                return;
            };
            sync_ring(&memberlist, key, &ring, forget_after, &metrics);
        }
    });
    Ok(())
}

fn sync_ring(
    memberlist: &Memberlist,
    key: &str,
    ring: &Ring,
    forget_after: Option<Duration>,
    metrics: &WatcherMetrics,
) {
    let now = now_ms();
    let mut instances = decode_instances(&memberlist.get(key));
    if let Some(after) = forget_after {
        let limit = after.as_millis() as i64;
        instances.retain(|inst| {
            if now - inst.heartbeat_ms <= limit {
                return true;
            }
            info!(key, instance = %inst.id, last_heartbeat_ms = inst.heartbeat_ms, "ring: forgetting unhealthy instance");
            forget_instance(memberlist, key, &inst.id);
            false
        });
    }
    for state in InstanceState::ALL {
        let n = instances.iter().filter(|i| i.state == state).count();
        metrics
            .members
            .with_label_values(&[state.as_str()])
            .set(n as i64);
    }
    let oldest = instances.iter().map(|i| i.heartbeat_ms).min();
    metrics
        .oldest_age
        .set(oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0));
    ring.set_instances(instances);
}

/// Lifecycler settings.
#[derive(Clone, Debug)]
pub struct LifecyclerConfig {
    /// Instance id (unique in the ring).
    pub id: String,
    /// gRPC `host:port` others reach this instance at.
    pub addr: String,
    /// Availability zone, empty for none.
    pub zone: String,
    /// Tokens to own.
    pub num_tokens: usize,
    /// Where tokens persist across restarts, so a restarted instance owns the same series.
    pub tokens_file_path: Option<PathBuf>,
    /// How often to heartbeat.
    pub heartbeat_period: Duration,
}

#[derive(Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<u32>,
}

struct LcState {
    desc: InstanceDesc,
    /// Last KV timestamp written; writes must be strictly increasing or a state change in the
    /// same millisecond as a heartbeat could lose to it.
    last_ts: i64,
    left: bool,
}

/// Registers one instance in the ring and keeps it there.
pub struct Lifecycler {
    memberlist: Arc<Memberlist>,
    key: &'static str,
    state: Mutex<LcState>,
}

impl std::fmt::Debug for Lifecycler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Lifecycler")
            .field("id", &s.desc.id)
            .field("state", &s.desc.state)
            .finish()
    }
}

fn load_tokens(path: &PathBuf) -> Result<Option<Vec<u32>>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LifecyclerError::TokensFile {
                path: path.clone(),
                source,
            });
        }
    };
    let file: TokensFile =
        serde_json::from_slice(&data).map_err(|source| LifecyclerError::BadTokensFile {
            path: path.clone(),
            source,
        })?;
    let mut tokens = file.tokens;
    tokens.sort_unstable();
    tokens.dedup();
    Ok(Some(tokens))
}

fn store_tokens(path: &PathBuf, tokens: &[u32]) -> Result<()> {
    let io = |source| LifecyclerError::TokensFile {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let data = serde_json::to_vec(&TokensFile {
        tokens: tokens.to_vec(),
    })
    .expect("tokens serialise");
    // Write then rename, so a crash mid-write never leaves a truncated file behind.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Lifecycler {
    /// Loads tokens from `tokens_file_path` when it exists (JSON `{"tokens":[...]}`), else reuses
    /// the tokens the ring already has for this id, else generates `num_tokens` avoiding taken
    /// tokens (as far as this node knows the ring yet) and writes the file; registers the
    /// instance in state JOINING; heartbeats every `heartbeat_period`.
    pub async fn start(
        config: LifecyclerConfig,
        memberlist: Arc<Memberlist>,
        key: &'static str,
    ) -> Result<Arc<Lifecycler>> {
        let existing = decode_instances(&memberlist.get(key));
        let previous = existing.iter().find(|i| i.id == config.id).cloned();
        let from_file = match &config.tokens_file_path {
            Some(path) => load_tokens(path)?,
            None => None,
        };
        let tokens = match (from_file, &previous) {
            (Some(t), _) => t,
            (None, Some(prev)) if !prev.tokens.is_empty() => prev.tokens.clone(),
            _ => {
                let taken: HashSet<u32> = existing
                    .iter()
                    .filter(|i| i.id != config.id)
                    .flat_map(|i| i.tokens.iter().copied())
                    .collect();
                generate_tokens(config.num_tokens, &taken)
            }
        };
        if let Some(path) = &config.tokens_file_path {
            store_tokens(path, &tokens)?;
        }
        let now = now_ms();
        let desc = InstanceDesc {
            id: config.id.clone(),
            addr: config.addr.clone(),
            zone: config.zone.clone(),
            state: InstanceState::Joining,
            heartbeat_ms: now,
            registered_ms: previous.as_ref().map_or(now, |p| p.registered_ms),
            tokens,
        };
        let last_ts = memberlist.get(key).get(&config.id).map_or(0, |e| e.ts_ms);
        let lc = Arc::new(Lifecycler {
            memberlist,
            key,
            state: Mutex::new(LcState {
                desc,
                last_ts,
                left: false,
            }),
        });
        lc.write();
        info!(key, instance = %config.id, "lifecycler: registered as JOINING");
        let weak = Arc::downgrade(&lc);
        let mut stopped = lc.memberlist.stopped();
        let period = config.heartbeat_period;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                let Some(lc) = weak.upgrade() else { return };
                if lc.state.lock().left {
                    return;
                }
                lc.write();
            }
        });
        Ok(lc)
    }

    /// Put the description with a fresh heartbeat.
    fn write(&self) {
        let (id, entry) = {
            let mut s = self.state.lock();
            if s.left {
                return;
            }
            let ts = now_ms().max(s.last_ts + 1);
            s.last_ts = ts;
            s.desc.heartbeat_ms = ts;
            let value = serde_json::to_vec(&s.desc).expect("instance serialises");
            (s.desc.id.clone(), Entry::value(ts, value))
        };
        self.memberlist.put(self.key, &id, entry);
    }

    /// Change state; written (and gossiped) immediately.
    pub fn set_state(&self, state: InstanceState) {
        self.state.lock().desc.state = state;
        self.write();
    }

    /// The current state.
    pub fn state(&self) -> InstanceState {
        self.state.lock().desc.state
    }

    /// This instance's description as last written.
    pub fn desc(&self) -> InstanceDesc {
        self.state.lock().desc.clone()
    }

    /// LEAVING was set by the caller before flushing; this removes the instance (tombstone) and
    /// stops heartbeats.
    pub async fn leave(&self) {
        let (id, ts) = {
            let mut s = self.state.lock();
            if s.left {
                return;
            }
            s.left = true;
            let ts = now_ms().max(s.last_ts + 1);
            s.last_ts = ts;
            (s.desc.id.clone(), ts)
        };
        self.memberlist.put(self.key, &id, Entry::tombstone(ts));
        info!(key = self.key, instance = %id, "lifecycler: left the ring");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tokens.json");
        assert!(load_tokens(&path).unwrap().is_none());
        store_tokens(&path, &[3, 1, 2]).unwrap();
        assert_eq!(load_tokens(&path).unwrap().unwrap(), vec![1, 2, 3]);
        std::fs::write(&path, b"nope").unwrap();
        assert!(matches!(
            load_tokens(&path),
            Err(LifecyclerError::BadTokensFile { .. })
        ));
    }
}
