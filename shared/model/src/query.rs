//! The read interface the PromQL engine evaluates over.
//!
//! A [`Queryable`] is already scoped to one tenant: whoever builds it (the querier, the
//! ruler, a test) binds the tenant, so the engine cannot read across tenants by mistake.
//! Selection returns materialised float series sorted by labels; the engine bounds memory with
//! its own sample limit.

use async_trait::async_trait;

use std::sync::Arc;

use crate::{ErrorKind, Labels, Matcher, MetricMetadata, Sample, TenantId};

/// A series and its samples within the selected time range, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A storage read failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Internal(String),
}

impl StorageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Unavailable(_) => ErrorKind::Unavailable,
            StorageError::Limit(_) => ErrorKind::Execution,
            StorageError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Tenant-scoped read access to stored series. Time bounds are inclusive milliseconds.
#[async_trait]
pub trait Queryable: Send + Sync {
    /// Series matching every matcher, with their samples in `[start_ms, end_ms]`, sorted by
    /// labels. Series with no sample in the range may be omitted.
    async fn select(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Series>, StorageError>;

    /// Sorted, unique label names of series matching `matchers` (all series when empty) that
    /// have data in the range.
    async fn label_names(
        &self,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError>;

    /// Sorted, unique values of label `name` over series matching `matchers`.
    async fn label_values(
        &self,
        name: &str,
        start_ms: i64,
        end_ms: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError>;
}

/// Hands out tenant-scoped [`Queryable`]s: the querier's view of storage for one tenant.
pub trait QueryableProvider: Send + Sync {
    fn queryable(&self, tenant: &TenantId) -> Arc<dyn Queryable>;
}

/// Reads metric metadata (type, help, unit) that remote write carried.
#[async_trait]
pub trait MetadataReader: Send + Sync {
    /// Metadata per metric family name; `metric` restricts to one family, `limit` (0 = no
    /// limit) caps the number of families.
    async fn metadata(
        &self,
        tenant: &TenantId,
        metric: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MetricMetadata>, StorageError>;
}
