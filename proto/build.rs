//! Compiles the .proto files with protox (pure Rust), so building Norn needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["prometheus/types.proto", "prometheus/remote.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
