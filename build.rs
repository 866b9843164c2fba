//! Compiles every `.proto` under `proto/` with protox (pure Rust, so no system
//! `protoc`), writes the descriptor set that reflection serves, and a table
//! of what each RPC's options declare (who may call it, whether it only
//! reads), so servers and the gateway read the same truth as reflection.

use std::fmt::Write as _;
use std::{env, fs, io, path::Path, path::PathBuf};

use prost_reflect::{DescriptorPool, Value};

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

/// `METHODS`: every RPC of the `trellis.` packages with its declared caller
/// (`trellis.common.v1.caller`), whether it is `NO_SIDE_EFFECTS` and whether
/// it answers with a stream.
fn method_table(pool: &DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let caller = pool
        .get_extension_by_name("trellis.common.v1.caller")
        .ok_or("trellis.common.v1.caller is not declared")?;
    let callers = caller
        .kind()
        .as_enum()
        .cloned()
        .ok_or("trellis.common.v1.caller is not an enum")?;
    let mut table = String::from(
        "/// Every Trellis RPC, as `proto/` declares it.\n\
         pub const METHODS: &[crate::MethodPolicy] = &[\n",
    );
    let mut services: Vec<_> = pool
        .services()
        .filter(|service| service.full_name().starts_with("trellis."))
        .collect();
    services.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    for service in services {
        for method in service.methods() {
            let options = method.options();
            let declared = match options.get_extension(&caller).as_ref() {
                Value::EnumNumber(number) => *number,
                other => return Err(format!("{}: caller is {other:?}", method.full_name()).into()),
            };
            let variant = callers
                .get_value(declared)
                .ok_or_else(|| format!("{}: unknown caller {declared}", method.full_name()))?;
            // CALLER_UNSPECIFIED -> Unspecified, as prost names the variants.
            let variant: String = variant
                .name()
                .trim_start_matches("CALLER_")
                .split('_')
                .map(|word| {
                    let mut letters = word.chars();
                    letters.next().map_or_else(String::new, |first| {
                        first.to_string() + &letters.as_str().to_lowercase()
                    })
                })
                .collect();
            let read_only = matches!(
                options.get_field_by_name("idempotency_level").as_deref(),
                Some(Value::EnumNumber(1))
            );
            let streams = method.is_server_streaming();
            writeln!(
                table,
                "    crate::MethodPolicy {{ path: \"/{}/{}\", caller: crate::common::v1::Caller::{variant}, read_only: {read_only}, server_streaming: {streams} }},",
                service.full_name(),
                method.name(),
            )?;
        }
    }
    table.push_str("];\n");
    Ok(table)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build does not print this for us.
    println!("cargo:rerun-if-changed=proto");

    let mut files = Vec::new();
    proto_files(Path::new("proto"), &mut files)?;
    files.sort();

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded from the pool, so custom options (the caller of each RPC)
    // reach reflection clients too; prost's own types would drop them.
    fs::write(
        out_dir.join("trellis_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    fs::write(
        out_dir.join("trellis_methods.rs"),
        method_table(&compiler.descriptor_pool())?,
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Services answer UNIMPLEMENTED for RPCs they do not override yet.
        .generate_default_stubs(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
