//! gRPC client for the ingester (work in progress).
