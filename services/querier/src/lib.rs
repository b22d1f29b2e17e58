//! Querier: the Prometheus query HTTP API over the PromQL engine.
