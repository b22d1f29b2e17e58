//! The querier's side of the store-gateway (`norn.storegateway.v1.StoreGateway`): the bucket's
//! blocks as a [`QueryableProvider`](norn_model::QueryableProvider).
//!
//! - [`finder`]: which blocks a query needs, from each tenant's bucket index (cached, refreshed
//!   every sync interval);
//! - [`gateway`]: one store-gateway, over gRPC ([`GatewayClient`], pooled) or in this process
//!   ([`InProcessGateway`]) — one code path either way;
//! - [`queryable`]: routing each block to its replicas on the store-gateway ring, the
//!   consistency check (every block answered by some replica, else retry, else a 5xx naming
//!   the blocks), merging;
//! - [`fetch`]: reading a `Series` stream under the per-query limits
//!   (`max_fetched_series_per_query`, `max_fetched_chunks_per_query`,
//!   `max_fetched_chunk_bytes_per_query`) and deduplicating the replicas' chunks.

pub mod fetch;
pub mod finder;
pub mod gateway;
pub mod queryable;

pub use fetch::{FetchCounters, FetchLimits};
pub use finder::{BlocksFinder, blocks_for_range};
pub use gateway::{
    ClientConfig, ClientError, Gateway, GatewayClient, GatewayClientPool, InProcessGateway,
    SeriesStream,
};
pub use queryable::{Config, Gateways, StoreGatewayProvider};
