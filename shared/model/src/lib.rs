//! Norn's shared vocabulary: the types every crate speaks.
//!
//! Labels and label sets, samples and stale markers, label matchers, tenant ids, the error kinds
//! that decide HTTP/gRPC status codes and retries, the wall clock in milliseconds, and the
//! [`Queryable`] read interface that the PromQL engine evaluates over (implemented by the
//! ingester's head, and later by store-gateways and the querier's fan-out). Nothing here does
//! I/O.

pub mod duration;
pub mod error;
pub mod float_text;
pub mod labels;
pub mod matcher;
pub mod query;
pub mod reject;
pub mod sample;
pub mod shard;
pub mod tenant;
pub mod time;
pub mod validation;
pub mod write;

pub use duration::{DurationError, format_duration, parse_duration};
pub use error::{ErrorKind, retryable_http_status};
pub use labels::{Label, Labels, METRIC_NAME};
pub use labels::{hash_label_pairs, is_valid_label_name, is_valid_metric_name};
pub use matcher::matches_all;
pub use matcher::{MatchType, Matcher, MatcherError};
pub use query::{
    ChunkSeries, EncodedChunk, FederatedQueryable, MergeQueryable, MergedProvider, MetadataReader,
    ORIGINAL_TENANT_ID_LABEL, Queryable, QueryableProvider, QuorumQueryable, SampleBudget, Series,
    StorageError, TENANT_ID_LABEL, TOO_MANY_SAMPLES, gather_quorum, keep_last, merge_by_labels,
    merge_series, merge_strings,
};
pub use reject::RejectReason;
pub use sample::{
    MAX_SAMPLE_TIME_MS, MIN_SAMPLE_TIME_MS, STALE_NAN_BITS, Sample, is_stale_nan,
    sample_time_in_bounds, stale_nan,
};
pub use shard::{SHARD_LABEL, ShardError, ShardSelector};
pub use tenant::{ANONYMOUS, ORG_ID_HEADER, TENANT_SEPARATOR};
pub use tenant::{TenantError, TenantId};
pub use time::now_ms;
pub use validation::{Refusal, TimeWindow, ValidationLimits};
pub use write::{
    MetricMetadata, MetricType, PushError, PushOutcome, Pusher, SeriesView, WriteBatch,
    WriteBatchBuilder,
};
