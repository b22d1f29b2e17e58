//! Compiles the .proto files with protox (pure Rust), so building Norn needs no system protoc;
//! tonic-prost-build adds the gRPC client and server code for the services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "prometheus/types.proto",
        "prometheus/remote.proto",
        "io/prometheus/write/v2/types.proto",
        "norn/ingester/v1/ingester.proto",
        "norn/storegateway/v1/storegateway.proto",
        "norn/frontend/v1/frontend.proto",
        "grpc/health/v1/health.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Bytes fields as `bytes::Bytes`: a pushed write request is decoded in place, borrowing
    // label strings from the request buffer, and chunk data is handed on without copying.
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
