//! The range-query pipeline after validation: split into legs, each from the results cache
//! and/or a querier (retried on 5xx), legs run concurrently up to the tenant's
//! `max_query_parallelism`, answers merged.

use std::time::Duration;

use axum::http::{HeaderMap, Method};
use futures::{StreamExt, TryStreamExt, stream};
use norn_model::{ErrorKind, TenantId};
use norn_server::HttpError;
use norn_server::params::push_form_pair;
use norn_server::prom_json::write_timestamp;

use crate::api::{Frontend, form_content_type};
use crate::extents::{Entry, Extent, backend_key, key_text, merge_extents, partition};
use crate::response::{Matrix, merge, parse_matrix, trim};
use crate::shard_run::Sharded;
use crate::split::{Leg, last_point_at_or_before, split_by_interval};
use crate::{DownstreamRequest, DownstreamResponse};

/// First wait before sending a failed request again; doubled each time, capped at 1s.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// Path of the querier's range-query API that legs are sent to.
const QUERY_RANGE_PATH: &str = "/prometheus/api/v1/query_range";

/// A validated range query, ready to run.
pub struct RangeQuery {
    pub tenant: TenantId,
    pub query: String,
    pub start: i64,
    pub end: i64,
    pub step: i64,
    /// The request's other parameters (`timeout`, …), sent with each leg.
    pub extra: Vec<(String, String)>,
    /// The headers a querier is sent (the tenant's).
    pub headers: HeaderMap,
    /// Whether the range may be split.
    pub split: bool,
    /// Whether the results cache is read and written.
    pub use_cache: bool,
    /// Legs running at once.
    pub parallelism: usize,
    /// The freshest part never cached.
    pub max_cache_freshness: Duration,
    /// The shards' legs that answer each part asked of a querier, when the query is
    /// shardable and sharding is on (`shard_run`).
    pub shard: Option<Sharded>,
}

/// What a query's run came to, for the slow-query log.
#[derive(Debug, Default)]
pub struct Stats {
    pub tenant: String,
    pub legs: usize,
    /// Legs answered wholly from the cache.
    pub legs_hit: usize,
    /// Shards each part asked of a querier ran in (0: not sharded).
    pub shards: usize,
}

/// A successful answer: the querier's own bytes (one leg, no cache), or merged legs.
pub enum Answer {
    Passthrough(DownstreamResponse),
    Merged(Matrix),
}

/// A failed one: the querier's error answer, passed on as it is, or the frontend's own.
pub enum Failure {
    Downstream(DownstreamResponse),
    Error(HttpError),
}

impl Frontend {
    pub(crate) async fn run_range(
        &self,
        q: &RangeQuery,
        stats: &mut Stats,
    ) -> Result<Answer, Failure> {
        let interval = if q.split {
            ms(self.config.split_queries_by_interval)
        } else {
            0
        };
        let legs = split_by_interval(q.start, q.end, q.step, interval);
        stats.legs = legs.len();
        self.metrics.split_queries.inc_by(legs.len() as u64);
        if legs.len() == 1 && !q.use_cache && q.shard.is_none() {
            return self
                .fetch(q, &q.query, q.start, q.end)
                .await
                .map(Answer::Passthrough);
        }
        // The futures are made up front: a stream holding the closure that makes them would
        // not be `Send` for every lifetime axum's handler needs.
        let legs: Vec<_> = legs.iter().map(|l| self.leg(q, *l, interval)).collect();
        let answers: Vec<(Matrix, bool)> = stream::iter(legs)
            .buffered(q.parallelism)
            .try_collect()
            .await?;
        stats.legs_hit = answers.iter().filter(|a| a.1).count();
        Ok(Answer::Merged(merge(answers.into_iter().map(|a| a.0))))
    }

    /// One leg, through the cache when it is on; `true` when the cache answered all of it.
    async fn leg(
        &self,
        q: &RangeQuery,
        leg: Leg,
        interval: i64,
    ) -> Result<(Matrix, bool), Failure> {
        let Some(cache) = self.cache.as_ref().filter(|_| q.use_cache) else {
            return Ok((self.fetch_matrix(q, leg.start, leg.end).await?, false));
        };
        let tenant = q.tenant.as_str();
        let text = key_text(tenant, &q.query, q.step, interval, leg.start);
        let key = backend_key(tenant, &text);
        let extents = cache
            .get_many(std::slice::from_ref(&key))
            .await
            .remove(&key)
            .and_then(|b| Entry::decode(&b, &text))
            .map(|e| e.extents)
            .unwrap_or_default();
        let (cached, gaps) = partition(leg.start, leg.end, q.step, &extents);
        if gaps.is_empty() {
            self.metrics.cache_hits.inc();
            return Ok((merge(cached.into_iter().map(matrix_of)), true));
        }
        self.metrics.cache_misses.inc();
        let mut fresh = Vec::with_capacity(gaps.len());
        for (s, e) in gaps {
            fresh.push((s, e, self.fetch_matrix(q, s, e).await?));
        }
        // Store what is settled: not the freshest part, nothing annotated.
        let cutoff = norn_model::now_ms().saturating_sub(ms(q.max_cache_freshness));
        let new: Vec<Extent> = fresh
            .iter()
            .filter(|(_, _, m)| !m.annotated())
            .filter_map(|(s, e, m)| {
                let last = last_point_at_or_before(*s, q.step, (*e).min(cutoff))?;
                Some(Extent {
                    start: *s,
                    end: last,
                    series: trim(&m.series, *s, last),
                })
            })
            .collect();
        if !new.is_empty() {
            let mut all = extents;
            all.extend(new);
            let entry = Entry {
                key: text,
                extents: merge_extents(all, q.step),
            };
            cache
                .set_many(vec![(key, entry.encode().into())], Duration::ZERO)
                .await;
        }
        let mut parts: Vec<(i64, Matrix)> = cached
            .into_iter()
            .map(|c| (c.start, matrix_of(c)))
            .chain(fresh.into_iter().map(|(s, _, m)| (s, m)))
            .collect();
        parts.sort_by_key(|p| p.0);
        Ok((merge(parts.into_iter().map(|p| p.1)), false))
    }

    /// `[start, end]` of the query from a querier, parsed.
    async fn fetch_matrix(&self, q: &RangeQuery, start: i64, end: i64) -> Result<Matrix, Failure> {
        if let Some(sharded) = &q.shard {
            return self.fetch_sharded_range(q, sharded, start, end).await;
        }
        let r = self.fetch(q, &q.query, start, end).await?;
        parse_matrix(&r.body).map_err(|e| Failure::Error(HttpError::internal(e).into_json()))
    }

    /// `[start, end]` of `query` (the query's own text, or a shard leg's) from a querier,
    /// see [`send`](Self::send).
    pub(crate) async fn fetch(
        &self,
        q: &RangeQuery,
        query: &str,
        start: i64,
        end: i64,
    ) -> Result<DownstreamResponse, Failure> {
        let mut form = String::new();
        push_form_pair(&mut form, "query", query);
        push_form_pair(&mut form, "start", &seconds(start));
        push_form_pair(&mut form, "end", &seconds(end));
        push_form_pair(&mut form, "step", &seconds(q.step));
        for (k, v) in &q.extra {
            push_form_pair(&mut form, k, v);
        }
        let mut headers = q.headers.clone();
        headers.insert("content-type", form_content_type());
        let req = DownstreamRequest {
            method: Method::POST,
            path_and_query: QUERY_RANGE_PATH.to_string(),
            headers,
            body: form.into(),
        };
        self.send(&q.tenant, req).await
    }

    /// A request to a querier: a 2xx answer, or the last failure once 5xx answers and
    /// transport errors have been retried `max_retries` times; a 4xx, and a 5xx that is a
    /// timeout or cancellation, is final.
    pub(crate) async fn send(
        &self,
        tenant: &TenantId,
        req: DownstreamRequest,
    ) -> Result<DownstreamResponse, Failure> {
        let mut backoff = RETRY_BACKOFF;
        let mut attempt = 0;
        loop {
            let failure = match self.downstream.call(req.clone()).await {
                Ok(r) if r.status.is_success() => return Ok(r),
                Ok(r) if r.status.is_server_error() && retryable(&r) => Failure::Downstream(r),
                Ok(r) => return Err(Failure::Downstream(r)),
                Err(e) => Failure::Error(
                    HttpError::new(ErrorKind::Unavailable, e.to_string()).into_json(),
                ),
            };
            if attempt >= self.config.max_retries {
                return Err(failure);
            }
            attempt += 1;
            self.metrics.retries.inc();
            tracing::debug!(
                tenant = tenant.as_str(),
                attempt,
                "retrying a range query leg"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Whether a querier's 5xx may succeed when sent again: not when the query ran out of time
/// (`timeout`) or was cancelled, which would only run it that long again.
fn retryable(r: &DownstreamResponse) -> bool {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "errorType")]
        error_type: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(ErrorBody {
            error_type: Some(t),
        }) => !matches!(t.as_str(), "timeout" | "canceled"),
        _ => true,
    }
}

fn matrix_of(e: Extent) -> Matrix {
    Matrix {
        series: e.series,
        ..Matrix::default()
    }
}

/// Milliseconds as the API's seconds (`1.5`).
fn seconds(t: i64) -> String {
    let mut s = String::new();
    write_timestamp(&mut s, t);
    s
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}
