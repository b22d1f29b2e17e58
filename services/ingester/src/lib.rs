//! Ingester: per-tenant TSDB heads and WALs; takes pushes from distributors and serves recent data.
