//! Generates the gRPC code for every contract under `proto/` with `protox`, a
//! pure-Rust protobuf compiler, so building needs no system `protoc`. The
//! encoded descriptor set is written next to the code for server reflection.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "casebook/auth/v1/auth.proto",
    "casebook/cases/v1/cases.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by protox itself, so options such as `google.api.http` (which
    // prost's own descriptor types would drop) reach the runtime.
    fs::write(
        out_dir.join("casebook_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let descriptors = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec with a smaller starting buffer (src/codec.rs says why).
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
