//! Compiles the push API with protox (a pure-Rust protobuf compiler), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/trellis/push/v1/push.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small per-stream buffers (see src/codec.rs).
        .codec_path("crate::codec::PushCodec")
        .compile_fds(fds)?;
    Ok(())
}
