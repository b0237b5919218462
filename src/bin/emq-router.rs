//! `emq-router`: see `emq_router::cli`.
fn main() -> std::process::ExitCode {
    emq_router::cli::main()
}
