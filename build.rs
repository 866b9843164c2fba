//! Compiles every `.proto` under `proto/` with protox (pure Rust, so no system
//! `protoc`) and writes the descriptor set that reflection serves.

use std::{env, fs, io, path::Path, path::PathBuf};

use prost::Message;

fn proto_files(dir: &Path, found: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not print this for us.
    println!("cargo:rerun-if-changed=proto");

    let mut files = Vec::new();
    proto_files(Path::new("proto"), &mut files)?;
    files.sort();

    let descriptors = protox::compile(&files, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("trellis_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Services answer UNIMPLEMENTED for RPCs they do not override yet.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
