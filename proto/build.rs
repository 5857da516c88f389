//! Generates the kite.v1 messages and services from `proto/kite/v1/kite.proto` without a system
//! `protoc`: protox parses the file into a descriptor set, tonic-prost-build generates Rust from
//! it. The descriptor set is also written out for gRPC reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/kite/v1/kite.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kite_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
