//! PromQL engine: parses with promql-parser and evaluates instant and range queries over a Queryable.
