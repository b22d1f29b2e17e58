//! Tenant federation: several tenants' stores read as one, each series labelled with the
//! tenant it came from.
//!
//! A read that names several tenants (`X-Scope-OrgID: a|b`, Mimir's tenant federation) sees
//! the union of their series. Each series gains `__tenant_id__="<tenant>"`, so the same
//! series of two tenants stays two series, and a selector can pick tenants with a matcher on
//! `__tenant_id__` (which is answered here, never sent to a store). A series that already
//! carries its own `__tenant_id__` keeps that value as `original___tenant_id__`, as Mimir
//! does.
//!
//! Each member is the tenant's own view (its limits already applied by whoever built it);
//! tenants are read concurrently, at most `max_concurrent` at a time, and the first failure
//! fails the read: a federated answer that silently lacks a tenant would look complete.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt};
use futures::{StreamExt, TryStreamExt, stream};

use super::{ChunkSeries, Queryable, SampleBudget, Series, StorageError};
use crate::{Labels, Matcher, TenantId};

/// The label a federated read adds to every series: the tenant it belongs to.
pub const TENANT_ID_LABEL: &str = "__tenant_id__";
/// Where a series' own `__tenant_id__` label goes in a federated answer.
pub const ORIGINAL_TENANT_ID_LABEL: &str = "original___tenant_id__";

/// One tenant of a federated read and its store.
type Member = (TenantId, Arc<dyn Queryable>);

/// Several tenants' [`Queryable`]s as one; see the module docs.
pub struct FederatedQueryable {
    members: Vec<Member>,
    max_concurrent: usize,
}

impl FederatedQueryable {
    /// `members` in the order their ids sort (the answer is sorted anyway); `max_concurrent`
    /// of at least 1 bounds how many tenants are read at once.
    pub fn new(members: Vec<(TenantId, Arc<dyn Queryable>)>, max_concurrent: usize) -> Self {
        Self {
            members,
            max_concurrent: max_concurrent.max(1),
        }
    }

    /// The members whose id every `__tenant_id__` matcher accepts, and the other matchers
    /// (what each member's store is asked).
    fn plan<'a>(&'a self, matchers: &[Matcher]) -> (Vec<&'a Member>, Vec<Matcher>) {
        let (tenant, rest): (Vec<Matcher>, Vec<Matcher>) = matchers
            .iter()
            .cloned()
            .partition(|m| m.name == TENANT_ID_LABEL);
        let chosen = self
            .members
            .iter()
            .filter(|(id, _)| tenant.iter().all(|m| m.matches(id.as_str())))
            .collect();
        (chosen, map_original(rest))
    }

    /// Runs `read` for every chosen member, at most `max_concurrent` at once, keeping each
    /// answer with its tenant; the first error ends the read. The reads are boxed before
    /// anything is awaited, so no closure lives in the caller's future.
    async fn each<'a, T: Send + 'a>(
        &self,
        chosen: Vec<&'a Member>,
        read: impl Fn(&'a Arc<dyn Queryable>) -> BoxFuture<'a, Result<T, StorageError>>,
    ) -> Result<Vec<(&'a TenantId, T)>, StorageError> {
        let reads: Vec<BoxFuture<'a, Result<(&'a TenantId, T), StorageError>>> = chosen
            .into_iter()
            .map(|(id, q)| {
                let fut = read(q);
                async move { fut.await.map(|t| (id, t)) }.boxed()
            })
            .collect();
        stream::iter(reads)
            .buffered(self.max_concurrent)
            .try_collect()
            .await
    }
}

/// A member store knows nothing of `__tenant_id__`: a matcher on `original___tenant_id__`
/// is, to it, a matcher on its own series' `__tenant_id__`.
fn map_original(matchers: Vec<Matcher>) -> Vec<Matcher> {
    matchers
        .into_iter()
        .map(|mut m| {
            if m.name == ORIGINAL_TENANT_ID_LABEL {
                m.name = TENANT_ID_LABEL.to_string();
            }
            m
        })
        .collect()
}

/// `labels` with the tenant's id added (and a clashing own label kept as the original).
fn with_tenant(mut labels: Labels, tenant: &TenantId) -> Labels {
    if let Some(own) = labels.get(TENANT_ID_LABEL).map(str::to_string) {
        labels.set(ORIGINAL_TENANT_ID_LABEL, &own);
    }
    labels.set(TENANT_ID_LABEL, tenant.as_str());
    labels
}

fn merge_series(answers: Vec<(&TenantId, Vec<Series>)>) -> Vec<Series> {
    let mut out: Vec<Series> = answers
        .into_iter()
        .flat_map(|(id, series)| {
            series.into_iter().map(move |s| Series {
                labels: with_tenant(s.labels, id),
                samples: s.samples,
            })
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

#[async_trait]
impl Queryable for FederatedQueryable {
    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        let rest = &rest;
        let got = self
            .each(chosen, |q| q.select_within(start_ms, end_ms, rest, budget))
            .await?;
        Ok(merge_series(got))
    }

    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        let rest = &rest;
        let got = self
            .each(chosen, |q| q.select(start_ms, end_ms, rest))
            .await?;
        Ok(merge_series(got))
    }

    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        let rest = &rest;
        let got = self
            .each(chosen, |q| {
                q.select_last_within(start_ms, end_ms, rest, budget)
            })
            .await?;
        Ok(merge_series(got))
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        let rest = &rest;
        let got = self
            .each(chosen, |q| q.select_chunks(start_ms, end_ms, rest))
            .await?;
        Ok(merge_chunk_answers(got))
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        let rest = &rest;
        let got = self
            .each(chosen, |q| {
                q.select_chunks_within(start_ms, end_ms, rest, budget)
            })
            .await?;
        Ok(merge_chunk_answers(got))
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let rest = &rest;
        let got = self
            .each(chosen, |q| q.label_names(start_ms, end_ms, rest))
            .await?;
        let mut names = BTreeSet::new();
        for (_, list) in got {
            for name in list {
                if name == TENANT_ID_LABEL {
                    names.insert(ORIGINAL_TENANT_ID_LABEL.to_string());
                } else {
                    names.insert(name);
                }
            }
        }
        names.insert(TENANT_ID_LABEL.to_string());
        Ok(names.into_iter().collect())
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let (chosen, rest) = self.plan(matchers);
        if name == TENANT_ID_LABEL {
            // The tenants the matchers choose that hold a matching series (with no other
            // matcher, every chosen tenant: Mimir lists the ids without asking the stores).
            if rest.is_empty() {
                return Ok(chosen
                    .iter()
                    .map(|(id, _)| id.as_str().to_string())
                    .collect());
            }
            let rest = &rest;
            let got = self
                .each(chosen, |q| q.label_names(start_ms, end_ms, rest))
                .await?;
            return Ok(got
                .into_iter()
                .filter(|(_, names)| !names.is_empty())
                .map(|(id, _)| id.as_str().to_string())
                .collect());
        }
        let asked = if name == ORIGINAL_TENANT_ID_LABEL {
            TENANT_ID_LABEL
        } else {
            name
        };
        let rest = &rest;
        let got = self
            .each(chosen, |q| q.label_values(asked, start_ms, end_ms, rest))
            .await?;
        let values: BTreeSet<String> = got.into_iter().flat_map(|(_, v)| v).collect();
        Ok(values.into_iter().collect())
    }
}

fn merge_chunk_answers(answers: Vec<(&TenantId, Vec<ChunkSeries>)>) -> Vec<ChunkSeries> {
    let mut out: Vec<ChunkSeries> = answers
        .into_iter()
        .flat_map(|(id, series)| {
            series.into_iter().map(move |s| ChunkSeries {
                labels: with_tenant(s.labels, id),
                chunks: s.chunks,
            })
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

#[cfg(test)]
#[path = "federated_tests.rs"]
mod tests;
