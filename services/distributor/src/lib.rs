//! Distributor: remote-write endpoint, validation, per-tenant limits, sharding to ingesters.
