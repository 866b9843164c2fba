// The one `unsafe` of the workspace: an allocator tunable, set before any
// thread starts.
#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    pin_mmap_threshold();
    trellis_cli::main_from(std::env::args_os())
}

/// glibc raises its mmap threshold each time a large block is freed, so
/// that later blocks that size are carved from arenas that keep them
/// resident: a few 3 MiB requests (refused at once) left a server 16 MiB
/// larger for good. Pinned, every block over 128 KiB is mapped on its own
/// and returned when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn pin_mmap_threshold() {
    // SAFETY: mallopt only changes a tunable of the allocator; no allocation
    // is in flight on another thread yet.
    let pinned = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    if pinned != 1 {
        eprintln!("trellis: could not pin the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}
