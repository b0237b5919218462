//! `emq-send`: see `emq_client::send_cli`.
fn main() -> std::process::ExitCode {
    emq_client::send_cli::main()
}
