//! Protobuf messages: Prometheus remote write/read (written from the spec) and Norn's internal services, compiled without a system protoc.
