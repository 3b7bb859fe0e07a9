//! Compiles the OTLP messages the span exporter sends (`proto/trellis/otlp/v1/otlp.proto`) with
//! protox (a pure-Rust protobuf compiler), like the push API: no `protoc` is needed. Messages
//! only: the exporter makes its one gRPC call itself (`src/span_export.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/trellis/otlp/v1/otlp.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
