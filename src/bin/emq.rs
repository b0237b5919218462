//! `emq up`: the quick start. Starts `emq-router` and `emq-jobmanager`
//! (the sibling binaries) on the built-in defaults, with the repo's example
//! job module (`./jobs`) on the workers' path, and supervises both: if one
//! dies the other is stopped; Ctrl-C (or SIGTERM) stops the job manager
//! first — its running jobs finish and report — then the router. A second
//! Ctrl-C stops everything at once. On servers, run the two binaries
//! separately.
//!
//! `emq keygen`: writes a CURVE key pair (`NAME.key`, secret, mode 0600;
//! `NAME.pub`, public) for a router or a client, one Z85 line per file,
//! and prints the public key — the half to hand to the other side.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "emq", version, about = "emq launcher")]
struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Run a router and a job manager together (quick start).
    Up {
        /// Settings file passed to both.
        #[arg(long, short = 'C')]
        config: Option<PathBuf>,
        /// Queues for the job manager (default: default).
        #[arg(long, short = 'Q')]
        queues: Option<String>,
        /// Worker processes.
        #[arg(long, short = 'J')]
        jobs: Option<usize>,
        /// Extra directories for the workers' sys.path (./jobs is added when present).
        #[arg(long = "python-path")]
        python_path: Vec<PathBuf>,
        #[command(flatten)]
        router: RouterFlags,
    },
    /// Write a CURVE key pair: NAME.key (secret, mode 0600) and NAME.pub
    /// (public), one Z85 line each; print the public key.
    Keygen {
        /// Directory for the two files (created if missing).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Key name: the file stem, and the user id a router reports for a
        /// client holding this key.
        #[arg(long, default_value = "emq")]
        name: String,
    },
}

/// The router's address and journal flags, as `emq-router` takes them
/// (each overrides the settings file and environment).
#[derive(clap::Args, Clone, Default)]
struct RouterFlags {
    /// Address clients connect to (frontend_addr).
    #[arg(long)]
    frontend_addr: Option<String>,
    /// Address job managers connect to (backend_addr); the job manager
    /// started here dials it.
    #[arg(long)]
    backend_addr: Option<String>,
    /// Address emq-cli connects to (administrative_addr).
    #[arg(long)]
    administrative_addr: Option<String>,
    /// Dashboard, metrics and HTTP API (http_addr; "" = off).
    #[arg(long)]
    http_addr: Option<String>,
    /// Where the router's journal lives (data_dir).
    #[arg(long)]
    data_dir: Option<String>,
}

impl RouterFlags {
    fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (flag, val) in [
            ("--frontend-addr", &self.frontend_addr),
            ("--backend-addr", &self.backend_addr),
            ("--administrative-addr", &self.administrative_addr),
            ("--http-addr", &self.http_addr),
            ("--data-dir", &self.data_dir),
        ] {
            if let Some(x) = val {
                v.push(flag.to_owned());
                v.push(x.clone());
            }
        }
        v
    }
}

/// `emq keygen`: existing files are never overwritten (a replaced key
/// locks its holders out), so a second run with the same name fails.
fn keygen(out_dir: PathBuf, name: String) -> Result<ExitCode> {
    let files = emq_receiver::curve::write_key_pair(&out_dir, &name)?;
    eprintln!(
        "emq keygen: wrote {} (secret, keep it private) and {} (public)",
        files.secret_path.display(),
        files.public_path.display()
    );
    println!("{}", files.public);
    Ok(ExitCode::SUCCESS)
}

static STOPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOPS.fetch_add(1, Ordering::SeqCst);
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating emq")?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!("{} not found next to {} (build all binaries: cargo build --release --bins)", name, me.display());
    }
    Ok(p)
}

fn spawn(mut cmd: Command, what: &str) -> Result<Child> {
    // Own process group: a terminal Ctrl-C reaches only this launcher, which
    // then stops the two in the right order.
    cmd.process_group(0);
    cmd.spawn().with_context(|| format!("starting {what}"))
}

fn signal(child: &Child, sig: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
}

fn wait_for(child: &mut Child, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn up(
    config: Option<PathBuf>,
    queues: Option<String>,
    jobs: Option<usize>,
    python_path: Vec<PathBuf>,
    flags: RouterFlags,
) -> Result<ExitCode> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let demo = demo_allowed_paths(&config);
    let backend = check_settings(&config, &queues, jobs, &python_path, &flags)?;
    if demo {
        eprintln!("emq up: allowed_paths = [\"benchjobs\"] (the demo module; set allowed_paths to serve your own)");
    }
    let action = SigAction::new(SigHandler::Handler(on_stop), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only bumps an atomic counter.
        unsafe { sigaction(sig, &action) }?;
    }
    let mut router_cmd = Command::new(sibling("emq-router")?);
    let mut jm_cmd = Command::new(sibling("emq-jobmanager")?);
    if let Some(c) = &config {
        router_cmd.arg("--config").arg(c);
        jm_cmd.arg("--config").arg(c);
    }
    router_cmd.args(flags.to_args());
    if let Some(q) = &queues {
        jm_cmd.args(["--queues", q]);
    }
    // The job manager dials the router started here, whatever backend
    // address it was given.
    jm_cmd.args(["--broker-addr", &backend]);
    if let Some(j) = jobs {
        jm_cmd.args(["--jobs", &j.to_string()]);
    }
    let mut paths = python_path;
    let local_jobs = PathBuf::from("jobs");
    if local_jobs.is_dir() {
        paths.push(local_jobs.canonicalize()?);
    }
    for p in &paths {
        jm_cmd.arg("--python-path").arg(p);
    }
    let mut router = spawn(router_cmd, "emq-router")?;
    // The job manager only once the router is bound (it refuses to start
    // against an address where nothing listens); a router that could not
    // bind has said why and exited.
    if let Some(st) = wait_listening(&mut router, &backend) {
        if st.code() != Some(2) {
            eprintln!("emq up: router exited ({st}) before it listened");
        }
        return Ok(ExitCode::from(exit_code(st)));
    }
    let mut jm = spawn(jm_cmd, "emq-jobmanager")?;
    eprintln!(
        "emq up: router pid {} and job manager pid {} running (python path: {:?}); Ctrl-C stops both",
        router.id(),
        jm.id(),
        paths
    );
    let mut stops_seen = 0;
    let code = loop {
        std::thread::sleep(Duration::from_millis(50));
        let stops = STOPS.load(Ordering::SeqCst);
        if stops > stops_seen {
            stops_seen = stops;
            // First: the job manager drains. Second: it stops at once.
            signal(&jm, Signal::SIGINT);
        }
        if let Ok(Some(st)) = jm.try_wait() {
            // Exit 2 is a setting or address the child refused: its own
            // line on stderr says which; pass the code on, add nothing.
            if stops_seen == 0 && st.code() != Some(2) {
                eprintln!("emq up: job manager exited ({st}); stopping the router");
            }
            signal(&router, Signal::SIGTERM);
            wait_for(&mut router, Duration::from_secs(5));
            break if stops_seen > 0 || st.success() { 0 } else { exit_code(st) };
        }
        if let Ok(Some(st)) = router.try_wait() {
            if st.code() != Some(2) {
                eprintln!("emq up: router exited ({st}); stopping the job manager");
            }
            signal(&jm, Signal::SIGTERM);
            if !wait_for(&mut jm, Duration::from_secs(30)) {
                signal(&jm, Signal::SIGKILL);
                let _ = jm.wait();
            }
            break if stops_seen > 0 { 0 } else { exit_code(st) };
        }
    };
    for c in [&mut jm, &mut router] {
        if let Ok(None) = c.try_wait() {
            signal(c, Signal::SIGKILL);
            let _ = c.wait();
        }
    }
    Ok(ExitCode::from(code))
}

/// Waits until something accepts connections at `addr` (the router's
/// backend), or the router exits (its status then), or a minute passes.
fn wait_listening(router: &mut Child, addr: &str) -> Option<std::process::ExitStatus> {
    let hostport = addr.strip_prefix("tcp://")?;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if let Ok(Some(st)) = router.try_wait() {
            return Some(st);
        }
        let reached = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .map(|mut a| a.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()))
            .unwrap_or(false);
        if reached {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// 2 when a child refused its settings (as the children and every other
/// binary report it), else 1.
fn exit_code(st: std::process::ExitStatus) -> u8 {
    if st.code() == Some(2) {
        2
    } else {
        1
    }
}

/// The quick start serves the demo module `benchjobs`: when no
/// `allowed_paths` is set anywhere, allow just that one (job managers are
/// closed by default and would refuse to start).
fn demo_allowed_paths(config: &Option<PathBuf>) -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if set("EMQ_ALLOWED_PATHS") || set("EVENTMQ_ALLOWED_PATHS") {
        return false;
    }
    let from_file: Option<emq_jobmanager::JobManagerSettings> = emq_settings::load(config.as_deref()).ok();
    if from_file.is_some_and(|s| s.allowed_paths.iter().any(|p| !p.trim().is_empty())) {
        return false;
    }
    // Before any thread is started: the children inherit it.
    std::env::set_var("EMQ_ALLOWED_PATHS", "benchjobs");
    true
}

/// Loads and validates both children's settings exactly as they will
/// (same file, environment and flags) before starting either, so a bad
/// value is one line and exit code 2 from `emq up` itself, not a router
/// that starts and a job manager that dies.
fn check_settings(
    config: &Option<PathBuf>,
    queues: &Option<String>,
    jobs: Option<usize>,
    python_path: &[PathBuf],
    flags: &RouterFlags,
) -> Result<String, emq_settings::SettingsError> {
    let router = emq_router::cli::Args {
        config: config.clone(),
        frontend_addr: flags.frontend_addr.clone(),
        backend_addr: flags.backend_addr.clone(),
        administrative_addr: flags.administrative_addr.clone(),
        http_addr: flags.http_addr.clone(),
        data_dir: flags.data_dir.clone(),
        journal_url: None,
        journal_repair: false,
    };
    let router_settings = emq_router::cli::settings(&router)?;
    let jm = emq_jobmanager::cli::Args {
        config: config.clone(),
        broker_addr: None,
        queues: queues.clone().map(|q| vec![q]),
        jobs,
        name: None,
        labels: None,
        allowed_commands: None,
        python_path: python_path.iter().map(|p| p.display().to_string()).collect(),
    };
    emq_jobmanager::cli::settings(&jm)?;
    Ok(dialable(&router_settings.backend_addr))
}

/// The address to dial for a bound one: a wildcard host (`*`, `0.0.0.0`)
/// is reached on loopback.
fn dialable(bound: &str) -> String {
    bound.replacen("://*:", "://127.0.0.1:", 1).replacen("://0.0.0.0:", "://127.0.0.1:", 1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Sub::Up { config, queues, jobs, python_path, router } => up(config, queues, jobs, python_path, router),
        Sub::Keygen { out_dir, name } => keygen(out_dir, name),
    };
    result.unwrap_or_else(|e| {
        eprintln!("emq: {e:#}");
        ExitCode::from(2)
    })
}
