//! `emq-jobmanager [--config PATH] [-B|--broker-addr A] [-Q|--queues Q]
//! [-J|--jobs N] [-n|--name NAME]`. Settings: defaults < file <
//! `EVENTMQ_*` < `EMQ_*` < flags. The same binary is also the worker
//! process, when started with the hidden `__emq_worker` argument.

use crate::server::Server;
use crate::settings::{JobManagerSettings, QueuesSetting};
use crate::state::JobManagerState;
use clap::Parser;
use emq_settings::SettingsError;
use std::path::PathBuf;
use std::process::ExitCode;

/// The eMQP job manager: runs Python callables in a supervised pool.
#[derive(Debug, Clone, Parser)]
#[command(name = "emq-jobmanager", version, about)]
pub struct Args {
    /// Settings file (TOML). Default: ./settings.toml when present.
    #[arg(long, short = 'C')]
    pub config: Option<PathBuf>,
    /// Router backend address (worker_addr).
    #[arg(long = "broker-addr", short = 'B')]
    pub broker_addr: Option<String>,
    /// Queues: `a,b`, `20:heavy,10:default` or `[[20,"heavy"],[10,"default"]]`.
    #[arg(long, short = 'Q', num_args = 1.., value_delimiter = None)]
    pub queues: Option<Vec<String>>,
    /// Worker processes (concurrent_jobs).
    #[arg(long, short = 'J')]
    pub jobs: Option<usize>,
    /// Name prefix of this job manager's identity at the router.
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// Labels jobs can require (`--labels gpu,eu`; setting `labels`).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Programs command jobs may run (`--allowed-commands /bin/echo,/usr/bin/*`;
    /// setting `allowed_commands`).
    #[arg(long = "allowed-commands", value_delimiter = ',')]
    pub allowed_commands: Option<Vec<String>>,
    /// Directory prepended to the workers' sys.path (repeatable).
    #[arg(long = "python-path")]
    pub python_path: Vec<String>,
}

/// Resolves settings from all sources and validates every key.
pub fn settings(args: &Args) -> Result<JobManagerSettings, SettingsError> {
    let mut s: JobManagerSettings = emq_settings::load(args.config.as_deref())?;
    if let Some(a) = &args.broker_addr {
        s.worker_addr = a.clone();
    }
    if let Some(q) = &args.queues {
        // `-Q a b` (EventMQ's form, one word per queue) is `a,b`.
        s.queues = QueuesSetting::Text(q.join(","));
    }
    if let Some(j) = args.jobs {
        s.concurrent_jobs = j;
    }
    if let Some(n) = &args.name {
        s.name = n.clone();
    }
    if let Some(l) = &args.labels {
        s.labels = l.iter().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
    }
    if let Some(c) = &args.allowed_commands {
        s.allowed_commands = c.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect();
    }
    s.python_path.extend(args.python_path.iter().cloned());
    s.to_config()?;
    Ok(s)
}

/// The `emq-jobmanager` binary (and the worker processes it starts).
pub fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(emq_pool::WORKER_ARG) {
        return ExitCode::from(emq_pool::worker::worker_main().clamp(0, 255) as u8);
    }
    let args = Args::parse();
    let (s, cfg) = match settings(&args).and_then(|s| s.to_config().map(|c| (s, c))) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("emq-jobmanager: {e}");
            return ExitCode::from(2);
        }
    };
    emq_settings::init_logging(&s.log_level, &s.log_format);
    emq_settings::warn_unused_eventmq_vars();
    if nix::unistd::geteuid().is_root() && s.worker_user.trim().is_empty() {
        tracing::warn!("running as root: jobs run as root too; set worker_user to run them as another user");
    }
    if cfg.allowed_paths.iter().any(|p| p == "*") {
        tracing::warn!(
            "allowed_paths = [\"*\"]: any importable callable can be run by anyone who can reach the router"
        );
    }
    if cfg.allowed_commands.iter().any(|p| p == "*") {
        tracing::warn!("allowed_commands = [\"*\"]: any program can be run by anyone who can reach the router");
    } else if !cfg.allowed_commands.is_empty() {
        tracing::info!(allowed_commands = ?cfg.allowed_commands, "command jobs allowed");
    }
    tracing::info!(
        router = %s.worker_addr, queues = %cfg.queues.to_wire(), workers = cfg.workers,
        python = %python_description(), "job manager starting"
    );
    // A wrong address is said at once (exit 2), not as "router silent"
    // for ever; a router starting beside us gets a moment to bind.
    if let Err(why) = router_listening(&cfg.addrs, std::time::Duration::from_secs(3)) {
        eprintln!("emq-jobmanager: {why}");
        return ExitCode::from(2);
    }
    let reload_args = args.clone();
    let reload = Box::new(move || {
        let s = settings(&reload_args)?;
        Ok((s.to_config()?, s.worker_config()))
    });
    let state = JobManagerState::new(cfg, std::time::Instant::now());
    let mut server = match Server::new(state, s.worker_config(), s.name.clone(), reload) {
        Ok(srv) => srv,
        Err(e) => {
            eprintln!("emq-jobmanager: {e}");
            return ExitCode::from(2);
        }
    };
    server.set_max_message_bytes(s.max_message_bytes as i64);
    match s.fork_workers() {
        Ok(fork) => server.set_fork_workers(fork),
        Err(e) => {
            eprintln!("emq-jobmanager: {e}");
            return ExitCode::from(2);
        }
    }
    match s.curve_keys() {
        Ok(keys) => server.set_curve_keys(keys),
        Err(e) => {
            eprintln!("emq-jobmanager: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::from(server.run().clamp(0, 255) as u8)
}

/// Ok once one of the router addresses does not refuse connections;
/// `Err` when all of them refused for all of `patience`.
fn router_listening(addrs: &[String], patience: std::time::Duration) -> Result<(), String> {
    let end = std::time::Instant::now() + patience;
    loop {
        let mut last = String::new();
        for a in addrs {
            match emq_sender::refuses_connections(a) {
                Ok(()) => return Ok(()),
                Err(why) => last = why,
            }
        }
        if std::time::Instant::now() >= end || addrs.is_empty() {
            return if addrs.is_empty() { Ok(()) } else { Err(last) };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Which libpython this binary was built against (for the start-up log).
fn python_description() -> String {
    option_env!("EMQ_PYTHON_LIBDIR").map(|d| format!("libpython from {d}")).unwrap_or_else(|| "system".into())
}
