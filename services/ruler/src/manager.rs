//! The set of groups this ruler evaluates, kept equal to what the rule store holds and the
//! ring gives this ruler.
//!
//! A sync compares the wanted groups (store ∩ owned) with the running ones: a new group
//! starts, a removed one stops and its last output gets stale markers, a changed one stops and
//! restarts with the new rules, taking over what the old version wrote (so a rule that
//! survives the change is not marked stale, and a rule that is gone is). A full sync runs
//! every `poll_interval`; the API runs a sync of one tenant right after it changed the store,
//! so a change takes effect at once on the ruler that received it. Syncs are serialised.
//!
//! Alerts: a changed group keeps its alerts; the groups of a tenant this ruler starts
//! evaluating (at start, or handed over by the ring) restore their alerts' `for` state from
//! `ALERTS_FOR_STATE`; a group added to a tenant already here starts with no alerts.
//!
//! A store that cannot be read leaves every running group as it is: a bucket outage must not
//! stop rules that were evaluating, nor mark their output stale.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use norn_model::TenantId;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::group::{EvalDeps, GroupId, GroupRunner, GroupStatus, Written, mark_stale};
use crate::ring::Ownership;
use crate::rulefmt::{GroupTiming, RuleGroup};
use crate::store::{RuleStore, StoreError};

/// What the store holds and what of it this ruler owns.
#[derive(Default)]
struct Wanted {
    stored: BTreeSet<GroupId>,
    owned: Vec<(GroupId, RuleGroup)>,
}

struct Running {
    group: RuleGroup,
    timing: GroupTiming,
    stop: CancellationToken,
    handle: JoinHandle<Written>,
}

impl Running {
    /// Stops the runner after its evaluation in progress; what it wrote last.
    async fn stop(self) -> Written {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

/// The running groups.
pub struct Manager {
    store: Arc<dyn RuleStore>,
    ownership: Ownership,
    deps: EvalDeps,
    default_interval: Duration,
    running: tokio::sync::Mutex<BTreeMap<GroupId, Running>>,
    /// Read by the API without waiting for a sync.
    statuses: Mutex<BTreeMap<GroupId, Arc<Mutex<GroupStatus>>>>,
    stop: CancellationToken,
}

impl Manager {
    pub fn new(
        store: Arc<dyn RuleStore>,
        ownership: Ownership,
        deps: EvalDeps,
        default_interval: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self {
            store,
            ownership,
            deps,
            default_interval,
            running: tokio::sync::Mutex::new(BTreeMap::new()),
            statuses: Mutex::new(BTreeMap::new()),
            stop,
        }
    }

    pub fn store(&self) -> &Arc<dyn RuleStore> {
        &self.store
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    pub fn default_interval(&self) -> Duration {
        self.default_interval
    }

    /// The evaluation state of a running group.
    pub fn status(&self, id: &GroupId) -> Option<GroupStatus> {
        self.statuses.lock().get(id).map(|s| s.lock().clone())
    }

    /// The evaluation state of every running group of `tenant`.
    pub fn tenant_statuses(&self, tenant: &TenantId) -> Vec<(GroupId, GroupStatus)> {
        self.statuses
            .lock()
            .iter()
            .filter(|(id, _)| id.tenant == *tenant)
            .map(|(id, s)| (id.clone(), s.lock().clone()))
            .collect()
    }

    /// The groups of `tenant` in the store (ids), and those of them this ruler owns.
    async fn wanted(&self, tenant: &TenantId) -> Result<Wanted, StoreError> {
        let now = norn_model::now_ms();
        let mut w = Wanted::default();
        for g in self.store.groups(tenant.as_str()).await? {
            let id = GroupId {
                tenant: tenant.clone(),
                namespace: g.namespace,
                name: g.group.name.clone(),
            };
            if self
                .ownership
                .owns(tenant.as_str(), &id.namespace, &id.name, now)
            {
                w.owned.push((id.clone(), g.group));
            }
            w.stored.insert(id);
        }
        Ok(w)
    }

    /// Brings every tenant's running groups in line with the store and the ring.
    pub async fn sync_all(&self) -> Result<(), StoreError> {
        let mut wanted = Wanted::default();
        for t in self.store.tenants().await? {
            let Ok(tenant) = TenantId::new(&t) else {
                tracing::warn!(tenant = %t, "skipping rules of an invalid tenant id");
                continue;
            };
            let w = self.wanted(&tenant).await?;
            wanted.owned.extend(w.owned);
            wanted.stored.extend(w.stored);
        }
        self.apply(None, wanted).await;
        self.update_gauges();
        Ok(())
    }

    /// Brings one tenant's running groups in line with the store (after an API change).
    pub async fn sync_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let wanted = self.wanted(tenant).await?;
        self.apply(Some(tenant), wanted).await;
        self.update_gauges();
        Ok(())
    }

    /// Starts, restarts and stops runners so that those of `scope` (every tenant when
    /// `None`) are exactly `wanted`.
    async fn apply(&self, scope: Option<&TenantId>, w: Wanted) {
        if self.stop.is_cancelled() {
            return;
        }
        let mut running = self.running.lock().await;
        // Tenants this ruler already evaluates: a group new to one of them starts with fresh
        // alerts; a tenant new here restores its alerts' `for` state (Mimir runs one
        // Prometheus rule manager per tenant, which restores only the groups it starts with).
        let tenants_before: BTreeSet<TenantId> =
            running.keys().map(|id| id.tenant.clone()).collect();
        let wanted: BTreeMap<GroupId, RuleGroup> = w.owned.into_iter().collect();
        let gone: Vec<GroupId> = running
            .keys()
            .filter(|id| scope.is_none_or(|t| id.tenant == *t) && !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            let r = running.remove(&id).expect("listed above");
            self.statuses.lock().remove(&id);
            let written = r.stop().await;
            if w.stored.contains(&id) {
                // Moved to another ruler, which goes on writing the series: no stale markers.
                tracing::info!(tenant = %id.tenant, namespace = %id.namespace, group = %id.name, "rule group now owned by another ruler");
                continue;
            }
            tracing::info!(tenant = %id.tenant, namespace = %id.namespace, group = %id.name, "rule group removed");
            mark_stale(&self.deps, &id.tenant, written.all(), norn_model::now_ms()).await;
        }
        for (id, group) in wanted {
            let timing = group.timing(self.default_interval);
            let previous = match running.get(&id) {
                Some(r) if r.group == group && r.timing == timing => continue,
                Some(_) => {
                    let r = running.remove(&id).expect("present");
                    tracing::info!(tenant = %id.tenant, namespace = %id.namespace, group = %id.name, "rule group changed");
                    Some(r.stop().await)
                }
                None => {
                    tracing::info!(tenant = %id.tenant, namespace = %id.namespace, group = %id.name, "rule group added");
                    None
                }
            };
            let fresh_tenant = previous.is_none() && !tenants_before.contains(&id.tenant);
            let mut runner = GroupRunner::new(
                id.clone(),
                group.clone(),
                timing,
                previous,
                self.deps.clone(),
            );
            if !fresh_tenant {
                runner.skip_restore();
            }
            let status = Arc::clone(&runner.status);
            let stop = self.stop.child_token();
            let handle = tokio::spawn(runner.run(stop.clone()));
            self.statuses.lock().insert(id.clone(), status);
            running.insert(
                id,
                Running {
                    group,
                    timing,
                    stop,
                    handle,
                },
            );
        }
    }

    /// Groups per tenant and the oldest last evaluation among them.
    fn update_gauges(&self) {
        let m = &self.deps.metrics;
        let mut per: BTreeMap<String, (i64, Option<i64>)> = BTreeMap::new();
        for (id, st) in self.statuses.lock().iter() {
            let last = st.lock().last_evaluation_ms;
            let e = per.entry(id.tenant.as_str().to_string()).or_default();
            e.0 += 1;
            if last > 0 {
                e.1 = Some(e.1.map_or(last, |o: i64| o.min(last)));
            }
        }
        m.groups.reset();
        m.last_evaluation.reset();
        for (t, (n, oldest)) in per {
            m.groups.with_label_values(&[&t]).set(n);
            if let Some(o) = oldest {
                m.last_evaluation
                    .with_label_values(&[&t])
                    .set(o as f64 / 1000.0);
            }
        }
    }

    /// Stops every runner (shutdown). Their output is not marked stale: another ruler, or
    /// this one after a restart, goes on evaluating the groups.
    pub async fn stop_all(&self) {
        let mut running = self.running.lock().await;
        for (_, r) in std::mem::take(&mut *running) {
            let _ = r.stop().await;
        }
        self.statuses.lock().clear();
    }
}
