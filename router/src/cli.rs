//! `emq-router [--config PATH] [--frontend-addr A] [--backend-addr A]
//! [--administrative-addr A]`: settings from defaults < file < environment
//! < flags; a bad setting or address is one line on stderr and exit code 2.
//! SIGHUP re-reads the same sources (see [`crate::server::Server::reload_settings`]).

use crate::server::Server;
use crate::RouterSettings;
use clap::Parser;
use emq_settings::SettingsError;
use std::path::PathBuf;
use std::process::ExitCode;

/// The eMQP router: brokers jobs between clients and job managers.
#[derive(Debug, Clone, Parser)]
#[command(name = "emq-router", version, about)]
pub struct Args {
    /// Settings file (TOML). Default: ./settings.toml when present.
    #[arg(long, short = 'C')]
    pub config: Option<PathBuf>,
    /// Address clients connect to (frontend_addr).
    #[arg(long)]
    pub frontend_addr: Option<String>,
    /// Address job managers connect to (backend_addr).
    #[arg(long)]
    pub backend_addr: Option<String>,
    /// Address emq-cli connects to (administrative_addr).
    #[arg(long)]
    pub administrative_addr: Option<String>,
    /// Address of the dashboard, metrics and HTTP API (http_addr; "" = off).
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Where the journal lives (data_dir).
    #[arg(long)]
    pub data_dir: Option<String>,
    /// A shared PostgreSQL journal (journal_url): routers sharing it elect
    /// one leader; the others stand by.
    #[arg(long)]
    pub journal_url: Option<String>,
    /// Start past damaged journal records: keep every valid record, drop
    /// and list the damaged ones (without it, damage stops the start).
    #[arg(long)]
    pub journal_repair: bool,
}

/// Resolves settings from all sources and validates every key.
pub fn settings(args: &Args) -> Result<RouterSettings, SettingsError> {
    let mut s: RouterSettings = emq_settings::load(args.config.as_deref())?;
    if let Some(a) = &args.frontend_addr {
        s.frontend_addr = a.clone();
    }
    if let Some(a) = &args.backend_addr {
        s.backend_addr = a.clone();
    }
    if let Some(a) = &args.administrative_addr {
        s.administrative_addr = a.clone();
    }
    if let Some(a) = &args.http_addr {
        s.http_addr = a.clone();
    }
    if let Some(d) = &args.data_dir {
        s.data_dir = d.clone();
    }
    if let Some(u) = &args.journal_url {
        s.journal_url = u.clone();
    }
    s.validate()?;
    Ok(s)
}

/// No transparent huge pages for this process. The allocator (mimalloc)
/// asks for them on its arenas where the system allows it on request
/// (`madvise`, Debian's default); a router's heap then grows by 2 MiB at a
/// time, each first touched in a page fault that zeroes all 2 MiB on the
/// thread that touched it — the poll loop or the events writer, mid-pass.
/// Measured under 1 ms jobs (scenario 16, `perf`): 6–7 % of the router's
/// CPU in `clear_page_erms` from huge-page faults with them, 0.5–1.3 %
/// without; the events writer 6.3–7.2 → 4.9–5.7 µs per job in alternating
/// runs. The jobs' own memory is elsewhere (the workers' processes).
/// A kernel that refuses leaves things as they were.
fn no_huge_pages() {
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// The `emq-router` binary.
pub fn main() -> ExitCode {
    no_huge_pages();
    let args = Args::parse();
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("emq-router: {e}");
            return ExitCode::from(2);
        }
    };
    emq_settings::init_logging(&settings.log_level, &settings.log_format);
    emq_settings::warn_unused_eventmq_vars();
    if let Ok(Some((url, ttl))) = settings.lease() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        for sig in [signal_hook_consts::SIGINT, signal_hook_consts::SIGTERM] {
            let _ = install_stop(sig, stop.clone());
        }
        let reload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _ = install_reload(reload.clone());
        return crate::ha::run(&settings, &url, ttl, stop, |server| {
            // SIGHUP sets the one flag installed above; each leader reads it.
            server.set_reload_flag(reload.clone());
            let reload_args = args.clone();
            server.set_reloader(Box::new(move || crate::cli::settings(&reload_args)));
        });
    }
    let mut server = match Server::bind_with(&settings, args.journal_repair) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("emq-router: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = server.stop_counter();
    for sig in [signal_hook_consts::SIGINT, signal_hook_consts::SIGTERM] {
        let _ = install_stop(sig, stop.clone());
    }
    // Without a handler SIGHUP's default action would kill the router.
    let _ = install_reload(server.reload_flag());
    let reload_args = args.clone();
    server.set_reloader(Box::new(move || crate::cli::settings(&reload_args)));
    match server.run() {
        Ok(_) => {
            server.drain_outbox(std::time::Duration::from_millis(500));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("emq-router: {e}");
            ExitCode::FAILURE
        }
    }
}

mod signal_hook_consts {
    pub const SIGINT: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGINT;
    pub const SIGTERM: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGTERM;
    pub const SIGHUP: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGHUP;
}

static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicU32>> = std::sync::OnceLock::new();

/// Counts the signal: the first stops gracefully, a second at once.
extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    if let Some(f) = STOP.get() {
        f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn install_stop(sig: nix::sys::signal::Signal, flag: std::sync::Arc<std::sync::atomic::AtomicU32>) -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let _ = STOP.set(flag);
    let action = SigAction::new(SigHandler::Handler(on_stop_signal), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { sigaction(sig, &action) }.map(|_| ())
}

static RELOAD: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_reload_signal(_: nix::libc::c_int) {
    if let Some(f) = RELOAD.get() {
        f.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// SIGHUP sets `flag`; the poll loop (woken by EINTR, or within its
/// bounded timeout) reloads the settings.
fn install_reload(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let _ = RELOAD.set(flag);
    let action = SigAction::new(SigHandler::Handler(on_reload_signal), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { sigaction(signal_hook_consts::SIGHUP, &action) }.map(|_| ())
}
