//! Per-query limits enforced around storage: a [`Queryable`] decorator that refuses once a
//! query has fetched more series than the tenant's `max_fetched_series_per_query`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use norn_model::{ChunkSeries, Matcher, Queryable, SampleBudget, Series, StorageError};

/// Counts series fetched by one query across all its selects.
pub struct SeriesLimited {
    inner: Arc<dyn Queryable>,
    limit: usize,
    fetched: AtomicUsize,
}

impl SeriesLimited {
    /// Wraps `inner`; `limit == 0` means unlimited.
    pub fn new(inner: Arc<dyn Queryable>, limit: usize) -> Self {
        Self {
            inner,
            limit,
            fetched: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Queryable for SeriesLimited {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        let out = self.inner.select(start_ms, end_ms, matchers).await?;
        self.count(out)
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let out = self
            .inner
            .select_within(start_ms, end_ms, matchers, budget)
            .await?;
        self.count(out)
    }

    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        let out = self
            .inner
            .select_last_within(start_ms, end_ms, matchers, budget)
            .await?;
        self.count(out)
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let out = self.inner.select_chunks(start_ms, end_ms, matchers).await?;
        self.count(out)
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        let out = self
            .inner
            .select_chunks_within(start_ms, end_ms, matchers, budget)
            .await?;
        self.count(out)
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.inner.label_names(start_ms, end_ms, matchers).await
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.inner
            .label_values(name, start_ms, end_ms, matchers)
            .await
    }
}

impl SeriesLimited {
    /// Counts a select's series against the limit.
    fn count<T>(&self, out: Vec<T>) -> Result<Vec<T>, StorageError> {
        let total = self.fetched.fetch_add(out.len(), Ordering::Relaxed) + out.len();
        if self.limit > 0 && total > self.limit {
            return Err(StorageError::Limit(format!(
                "the query exceeded the maximum number of series (limit: {} series) (err-mimir-max-series-per-query); narrow the query or raise max_fetched_series_per_query",
                self.limit
            )));
        }
        Ok(out)
    }
}
