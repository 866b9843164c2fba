#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    trellis_cli::main_from(std::env::args_os())
}
