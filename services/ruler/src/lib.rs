//! The ruler: per-tenant Prometheus rule groups, stored in the bucket, evaluated on schedule.
//!
//! * [`store`]: where groups live — `rules/<tenant>/<ns>/<group>` in the bucket (names in
//!   URL-safe base64, as Mimir), or a read-only local directory of rule files.
//! * [`api`]: Mimir's rules config API (YAML) and Prometheus' `/api/v1/rules`, with the
//!   upload checks of [`rulefmt`] and the tenant's limits; in a cluster [`fanout`] asks every
//!   ruler and merges, so `/api/v1/rules` and `/api/v1/alerts` show the whole cluster.
//! * [`manager`]: keeps the running groups equal to the store's groups this ruler owns
//!   ([`ring`]: all of them in one process, the ruler ring's share in a cluster), every
//!   `poll_interval` and at once after an API change.
//! * [`group`]: one group's evaluation loop with Prometheus' semantics (aligned times, rules
//!   in order, `limit`, `query_offset`, stale markers), querying through a
//!   [`rule_query::RuleQuerier`] and writing through a `Pusher`.
//! * [`rule_query`]: where rule queries run — in this process (`norn-promql` over the
//!   querier's `QueryableProvider`) or through a query-frontend's HTTP API
//!   (`ruler.query_frontend.address`).
//!
//! * [`notifier`]: delivers alerts to Alertmanager's API v2 — a bounded queue and a sender
//!   per tenant, batches of 64, every configured Alertmanager, `X-Scope-OrgID` on each post;
//!   it is the [`outbound::AlertSink`] evaluation hands alerts to.
//! * [`template`]: Prometheus' alert templates (Go `text/template` syntax and Prometheus'
//!   functions); an alerting rule whose label or annotation does not parse is refused at upload.
//! * [`alerting`]: an alerting rule's alerts across evaluations (pending, firing, resolved,
//!   `keep_firing_for`, what to send when, `for` state restored after a restart); the alerts
//!   go to an [`outbound::AlertSink`] (the notifier).

pub mod alerting;
pub mod api;
pub mod config;
pub mod fanout;
pub mod group;
pub mod manager;
pub mod metrics;
pub mod notifier;
pub mod outbound;
pub mod ring;
pub mod rule_query;
pub mod rulefmt;
pub mod service;
pub mod store;
pub mod template;
#[cfg(test)]
mod test_pki;

pub use config::{Config, LocalStorageConfig, RingConfig, StorageConfig};
pub use ring::{RULER_RING_KEY, RingMembership};
pub use service::{BuildError, Deps, RulerService, build};
pub use store::{BucketRuleStore, LocalRuleStore, RuleStore};
