//! PromQL engine: parses with promql-parser and evaluates instant and range queries over a
//! [`norn_model::Queryable`], with Prometheus 3.x semantics (left-open range windows, 5m
//! lookback, stale markers, delayed `__name__` removal).
//!
//! The querier's HTTP API and the ruler call [`Engine::instant_query`] and
//! [`Engine::range_query`]; [`memstore::MemStore`] is an in-memory store for tests and rules.

mod aggregate;
mod ast;
mod binop;
mod chunk_walk;
mod engine;
mod error;
mod eval;
mod functions;
mod fused_aggregate;
mod group;
mod guard;
mod info;
mod math;
mod memory;
pub mod memstore;
pub mod parse_error;
mod range_fn;
mod sliding;
mod subquery;
mod threads;
mod value;

pub use engine::{Engine, EngineOptions, QueryContext, SharedEngine};
pub use error::{PromqlError, Result};
pub use guard::{
    DEFAULT_MAX_QUERY_BYTES, DEFAULT_MAX_QUERY_DEPTH, MAX_QUERY_DEPTH_CEILING,
    QUERY_THREAD_STACK_BYTES, check_duration_literals, check_query_text, nesting_depth,
};
pub use threads::DEFAULT_IDLE_QUERY_THREADS;
pub use value::{QueryResult, QueryStats, Value, VectorSample};
