//! `emq-router`: see `emq_router::cli`.

/// mimalloc: less overhead per small allocation than glibc's malloc, which
/// matters for a router holding a million buffered jobs (bench scenario 5).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    emq_router::cli::main()
}
