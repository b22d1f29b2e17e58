//! The ingesters' share of a query: only the last `query_ingesters_within` of its range.
//!
//! Ingesters hold a tenant's recent data (their head, and the blocks they still keep after
//! shipping them); older data is asked of the store-gateways, which in turn only serve data
//! older than `query_store_after` (`norn_storegateway_client`). The two windows overlap by
//! design (13h and 12h by default) so that a block being shipped is always in one of them;
//! samples read from both are merged once per timestamp.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use norn_model::{
    ChunkSeries, Matcher, Queryable, QueryableProvider, SampleBudget, Series, StorageError,
    TenantId, now_ms,
};

/// A provider whose reads are cut to the last `within` (measured at the read).
pub struct IngestersWithin {
    inner: Arc<dyn QueryableProvider>,
    within: Duration,
}

impl IngestersWithin {
    /// `within` zero hands `inner` out as it is.
    pub fn wrap(inner: Arc<dyn QueryableProvider>, within: Duration) -> Arc<dyn QueryableProvider> {
        if within.is_zero() {
            return inner;
        }
        Arc::new(Self { inner, within })
    }
}

impl QueryableProvider for IngestersWithin {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable> {
        Arc::new(Within {
            inner: self.inner.queryable(tenant),
            within_ms: self.within.as_millis().min(i64::MAX as u128) as i64,
        })
    }
}

struct Within {
    inner: Arc<dyn Queryable>,
    within_ms: i64,
}

impl Within {
    /// The part of `[start, end]` inside the window, or `None` when there is none.
    fn clamp(&self, start_ms: i64, end_ms: i64) -> Option<i64> {
        let oldest = now_ms().saturating_sub(self.within_ms);
        let start = start_ms.max(oldest);
        (start <= end_ms).then_some(start)
    }
}

#[async_trait]
impl Queryable for Within {
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => self.inner.select(start, end_ms, matchers).await,
            None => Ok(Vec::new()),
        }
    }

    async fn select_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => {
                self.inner
                    .select_within(start, end_ms, matchers, budget)
                    .await
            }
            None => Ok(Vec::new()),
        }
    }

    async fn select_last_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<Series>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => {
                self.inner
                    .select_last_within(start, end_ms, matchers, budget)
                    .await
            }
            None => Ok(Vec::new()),
        }
    }

    async fn select_chunks(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => self.inner.select_chunks(start, end_ms, matchers).await,
            None => Ok(Vec::new()),
        }
    }

    async fn select_chunks_within(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<Vec<ChunkSeries>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => {
                self.inner
                    .select_chunks_within(start, end_ms, matchers, budget)
                    .await
            }
            None => Ok(Vec::new()),
        }
    }

    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => self.inner.label_names(start, end_ms, matchers).await,
            None => Ok(Vec::new()),
        }
    }

    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        match self.clamp(start_ms, end_ms) {
            Some(start) => self.inner.label_values(name, start, end_ms, matchers).await,
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the ranges it is asked for.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(i64, i64)>>, Mutex<usize>);

    #[async_trait]
    impl Queryable for Recorder {
        async fn select_last_within(
            &self,
            s: i64,
            e: i64,
            _: &[Matcher],
            _: &SampleBudget,
        ) -> Result<Vec<Series>, StorageError> {
            *self.1.lock().unwrap() += 1;
            self.0.lock().unwrap().push((s, e));
            Ok(Vec::new())
        }
        async fn select(&self, s: i64, e: i64, _: &[Matcher]) -> Result<Vec<Series>, StorageError> {
            self.0.lock().unwrap().push((s, e));
            Ok(Vec::new())
        }
        async fn label_names(
            &self,
            s: i64,
            e: i64,
            _: &[Matcher],
        ) -> Result<Vec<String>, StorageError> {
            self.0.lock().unwrap().push((s, e));
            Ok(Vec::new())
        }
        async fn label_values(
            &self,
            _: &str,
            s: i64,
            e: i64,
            _: &[Matcher],
        ) -> Result<Vec<String>, StorageError> {
            self.0.lock().unwrap().push((s, e));
            Ok(Vec::new())
        }
    }

    struct One(Arc<Recorder>);

    impl QueryableProvider for One {
        fn queryable(&self, _: &TenantId) -> Arc<dyn Queryable> {
            Arc::clone(&self.0) as Arc<dyn Queryable>
        }
    }

    #[tokio::test]
    async fn reads_are_cut_to_the_window() {
        let rec = Arc::new(Recorder::default());
        let p = IngestersWithin::wrap(Arc::new(One(Arc::clone(&rec))), Duration::from_secs(3600));
        let q = p.queryable(&TenantId::new("t").unwrap());
        let now = now_ms();
        // Wholly older than the window: the ingesters are not asked.
        q.select(0, now - 7_200_000, &[]).await.unwrap();
        assert!(rec.0.lock().unwrap().is_empty());
        // Straddling it: only the recent part.
        q.select(0, now, &[]).await.unwrap();
        q.label_names(now - 60_000, now, &[]).await.unwrap();
        let asked = rec.0.lock().unwrap().clone();
        assert_eq!(asked.len(), 2);
        assert!((asked[0].0 - (now - 3_600_000)).abs() < 5_000, "{asked:?}");
        assert_eq!(asked[1], (now - 60_000, now));
        // Instant selectors keep their newest-sample read (the head answers it without
        // decoding), cut to the window like the rest.
        q.select_last_within(now - 300_000, now, &[], &SampleBudget::unlimited())
            .await
            .unwrap();
        assert_eq!(*rec.1.lock().unwrap(), 1);
        assert_eq!(rec.0.lock().unwrap()[2], (now - 300_000, now));
    }
}
