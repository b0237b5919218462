//! `emq-jobmanager`: see `emq_jobmanager::cli` (also the worker processes).
fn main() -> std::process::ExitCode {
    emq_jobmanager::cli::main()
}
