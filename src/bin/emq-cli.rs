//! `emq-cli`: see `emq_client::admin_cli`.
fn main() -> std::process::ExitCode {
    emq_client::admin_cli::main()
}
