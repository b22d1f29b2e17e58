//! Running a sharded query: the last stage of the range pipeline (split → results cache →
//! shard, as Mimir orders it: a cached extent holds the combined answer), and the instant
//! query's only stage.
//!
//! Each part asked of a querier becomes `shards × parts` legs ([`crate::sharding`]), sent at
//! once through the same retrying path as any request ([`Frontend::send`]), but never more
//! than the tenant's `max_query_parallelism` in flight for the whole query: every leg holds a
//! permit of the query's semaphore while it waits for a querier. A leg that fails fails the
//! query (with the querier's answer, as an unsharded one would). The legs' answers are
//! combined ([`crate::shard_merge`]) on a query thread: it is CPU work over every group.

use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use futures::future::try_join_all;
use norn_model::TenantId;
use norn_server::HttpError;
use norn_server::params::{Params, push_form_pair};
use norn_server::prom_json::write_timestamp;
use tokio::sync::Semaphore;

use crate::DownstreamRequest;
use crate::api::{Frontend, form_content_type};
use crate::range::{Failure, RangeQuery};
use crate::response::{Matrix, parse_matrix};
use crate::shard_merge::{
    Steps, Vector, combine, matrix_of_steps, parse_vector, steps_of_matrix, steps_of_vector,
    vector_of_steps,
};
use crate::sharding::{ShardPlan, analyse};

/// Path of the querier's instant-query API.
const QUERY_PATH: &str = "/prometheus/api/v1/query";

/// A query that runs sharded: its plan, and the permits its legs share.
pub struct Sharded {
    pub plan: ShardPlan,
    permits: Arc<Semaphore>,
}

impl Frontend {
    /// How `query` runs sharded for `tenant`, when sharding is on, the tenant's
    /// `query_sharding_total_shards` is above 1 and the query is shardable; `parallelism`
    /// bounds its legs in flight.
    pub(crate) async fn shard_plan(
        &self,
        tenant: &TenantId,
        query: &str,
        parallelism: usize,
    ) -> Option<Sharded> {
        if !self.config.parallelize_shardable_queries {
            return None;
        }
        let shards = self.limits(tenant).query_sharding_total_shards;
        let q = query.to_string();
        // On a query thread: the parser recurses as deep as the query nests.
        let planned = self
            .engine
            .on_query_thread(move || analyse(&q, shards))
            .await
            .ok()?;
        match planned {
            Ok(plan) => {
                self.metrics.sharded_queries.inc();
                Some(Sharded {
                    plan,
                    permits: Arc::new(Semaphore::new(parallelism.max(1))),
                })
            }
            Err(reason) => {
                tracing::debug!(tenant = tenant.as_str(), reason, "query not sharded");
                None
            }
        }
    }

    /// `[start, end]` of a range query from its shards' legs, combined.
    pub(crate) async fn fetch_sharded_range(
        &self,
        q: &RangeQuery,
        s: &Sharded,
        start: i64,
        end: i64,
    ) -> Result<Matrix, Failure> {
        let legs = s.plan.leg_queries();
        self.metrics.sharded_legs.inc_by(legs.len() as u64);
        let futs: Vec<_> = legs
            .iter()
            .map(|(part, text)| async move {
                let _permit = s.permits.acquire().await;
                let r = self.fetch(q, text, start, end).await?;
                let m = parse_matrix(&r.body).map_err(internal)?;
                Ok::<_, Failure>((*part, m))
            })
            .collect();
        let answers = try_join_all(futs).await?;
        let plan = s.plan.clone();
        self.engine
            .on_query_thread(move || {
                let mut parts = vec![Steps::new(); plan.parts()];
                let mut notes = (Vec::new(), Vec::new());
                for (p, m) in answers {
                    note(&mut notes, &m.warnings, &m.infos);
                    steps_of_matrix(m, &mut parts[p])?;
                }
                let mut m = matrix_of_steps(combine(&plan, parts));
                (m.warnings, m.infos) = notes;
                Ok::<_, String>(m)
            })
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(internal)
    }

    /// An instant query from its shards' legs, combined. `params` are the request's; the
    /// evaluation time is fixed here when the request has none, so every leg evaluates at
    /// the same instant.
    pub(crate) async fn run_sharded_instant(
        &self,
        tenant: &TenantId,
        headers: &HeaderMap,
        s: &Sharded,
        params: &Params,
        now_ms: i64,
    ) -> Result<Vector, Failure> {
        let time = match params.get("time") {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => {
                let mut t = String::new();
                write_timestamp(&mut t, now_ms);
                t
            }
        };
        let mut rest = vec![("time", time.as_str())];
        for (k, vs) in &params.0 {
            if matches!(k.as_str(), "query" | "time") {
                continue;
            }
            rest.extend(vs.iter().map(|v| (k.as_str(), v.as_str())));
        }
        let mut headers = headers.clone();
        headers.insert("content-type", form_content_type());
        let legs = s.plan.leg_queries();
        self.metrics.sharded_legs.inc_by(legs.len() as u64);
        let futs: Vec<_> = legs
            .iter()
            .map(|(part, text)| {
                let mut form = String::new();
                push_form_pair(&mut form, "query", text);
                for (k, v) in &rest {
                    push_form_pair(&mut form, k, v);
                }
                let req = DownstreamRequest {
                    method: Method::POST,
                    path_and_query: QUERY_PATH.to_string(),
                    headers: headers.clone(),
                    body: form.into(),
                };
                async move {
                    let _permit = s.permits.acquire().await;
                    let r = self.send(tenant, req).await?;
                    let v = parse_vector(&r.body).map_err(internal)?;
                    Ok::<_, Failure>((*part, v))
                }
            })
            .collect();
        let answers = try_join_all(futs).await?;
        let plan = s.plan.clone();
        self.engine
            .on_query_thread(move || {
                let mut parts = vec![Steps::new(); plan.parts()];
                let mut notes = (Vec::new(), Vec::new());
                for (p, v) in answers {
                    note(&mut notes, &v.warnings, &v.infos);
                    steps_of_vector(v, &mut parts[p])?;
                }
                let mut v = vector_of_steps(combine(&plan, parts));
                (v.warnings, v.infos) = notes;
                Ok::<_, String>(v)
            })
            .await
            .map_err(|e| internal(e.to_string()))?
            .map_err(internal)
    }
}

/// Keeps each annotation once, in first-seen order.
fn note(into: &mut (Vec<String>, Vec<String>), warnings: &[String], infos: &[String]) {
    for w in warnings {
        if !into.0.contains(w) {
            into.0.push(w.clone());
        }
    }
    for i in infos {
        if !into.1.contains(i) {
            into.1.push(i.clone());
        }
    }
}

fn internal(e: String) -> Failure {
    Failure::Error(HttpError::internal(e).into_json())
}
