//! HTTP plumbing shared by all services: error-to-status mapping, /metrics registry, request instrumentation, lifecycle.
