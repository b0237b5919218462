//! Routers sharing a PostgreSQL journal (`journal_url`): one leads, the
//! others stand by. The process goes round one loop:
//!
//! 1. **Standby** — binds nothing on its frontend, backend and admin
//!    addresses (an open port means the leader), answers `GET /health` with
//!    503 and who leads, and tries to take the lease every
//!    [`STANDBY_POLL`]: an `UPDATE` that succeeds only when the lease has
//!    expired by the database's clock, and gives a new epoch.
//! 2. **Leader** — a keeper thread renews the lease; the journal is
//!    replayed (every commit of an earlier epoch is visible: the takeover's
//!    `UPDATE` waited for any journal transaction that held the lease row),
//!    the state rebuilt, the sockets bound, and the router serves under
//!    that epoch. Every journal commit is fenced by the epoch in the
//!    database; the poll loop checks the local lease window before acting
//!    on anything and before every send.
//! 3. **Lost** — a refused renewal, a window that ran out, or a fenced
//!    commit: the router stops at once (no dispatch, no receipt, sockets
//!    closed without lingering) and goes back to 1.
//!
//! A stop signal: a standby exits; a leader hands over at once (checkpoint,
//! the lease given up so a standby takes it at its next attempt) and exits.

use crate::http::{SharedSnapshot, Snapshot};
use crate::server::{RunEnd, Server};
use crate::RouterSettings;
use emq_pgjournal::lease::LeaseKeeper;
use emq_pgjournal::{ha_json, Election};
use serde_json::json;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often a standby tries to take the lease.
pub const STANDBY_POLL: Duration = Duration::from_millis(200);
/// How often a standby says it is there and reads who leads.
const STANDBY_REPORT: Duration = Duration::from_secs(1);

/// This process's name in the lease row: host, pid and a random part (a
/// restarted router is never taken for its earlier self).
pub fn holder_name() -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
    let mut r = [0u8; 4];
    let _ = getrandom_fill(&mut r);
    format!("{host}:{}:{:02x}{:02x}{:02x}{:02x}", std::process::id(), r[0], r[1], r[2], r[3])
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Runs standby → leader → standby until a stop signal. `configure` is
/// given each new leader's server (signal flags, reloader).
pub fn run(
    settings: &RouterSettings,
    url: &str,
    ttl: Duration,
    stop: Arc<AtomicU32>,
    mut configure: impl FnMut(&mut Server),
) -> ExitCode {
    let holder = holder_name();
    let http = match spawn_http(settings) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("emq-router: {e}");
            return ExitCode::from(2);
        }
    };
    info!(holder, journal = %emq_pgjournal::redact(url), lease_ttl = ?ttl, "shared journal: standing by for the lease");
    let presence = (settings.http_addr.trim().to_owned(), settings.frontend_addr.clone());
    loop {
        let Some((election, epoch, sent)) = stand_by(url, &holder, ttl, &stop, http.as_ref(), &presence) else {
            info!("stopped while standing by");
            return ExitCode::SUCCESS;
        };
        info!(epoch, holder, "took the lease: leading");
        let keeper = match LeaseKeeper::start(election.into_db(), epoch, holder.clone(), ttl, sent, presence.clone()) {
            Ok(k) => k,
            Err(e) => {
                error!(error = %e, "cannot start the lease keeper");
                return ExitCode::FAILURE;
            }
        };
        let lease = keeper.shared();
        let mut server = match Server::bind_leader(settings, url, lease, http.clone()) {
            Ok(s) => s,
            Err(e) => {
                // E.g. an address still held by a leader that has not yet
                // noticed it lost (or PostgreSQL gone mid-replay): give the
                // lease back and stand by again.
                error!(error = %e, epoch, "cannot serve as the leader; giving the lease back");
                keeper.release();
                std::thread::sleep(STANDBY_POLL);
                continue;
            }
        };
        server.set_stop_counter(stop.clone());
        configure(&mut server);
        match server.run() {
            Ok(RunEnd::Stopped) => {
                server.drain_outbox(Duration::from_millis(300));
                drop(server);
                keeper.release();
                info!(epoch, "router stopped; lease given up");
                return ExitCode::SUCCESS;
            }
            Ok(RunEnd::LeaseLost(why)) => {
                drop(server);
                drop(keeper);
                warn!(epoch, why, "no longer the leader: standing by");
                set_health(http.as_ref(), 503, json!({"role": "standby", "status": "lost the lease", "why": why}));
            }
            Err(e) => {
                error!(error = %e, "router failed");
                drop(server);
                keeper.release();
                return ExitCode::FAILURE;
            }
        }
    }
}

/// The HTTP endpoint, up in every role (a load balancer asks each router).
fn spawn_http(settings: &RouterSettings) -> Result<Option<SharedSnapshot>, String> {
    let snap = crate::http::spawn_for(settings, &settings.administrative_addr)?;
    set_health(snap.as_ref(), 503, json!({"role": "standby", "status": "starting"}));
    Ok(snap)
}

fn set_health(http: Option<&SharedSnapshot>, code: u16, body: serde_json::Value) {
    let Some(snap) = http else { return };
    let role = body.get("role").and_then(|r| r.as_str()).unwrap_or("standby").to_owned();
    let epoch = body.get("leader_epoch").and_then(|e| e.as_i64()).unwrap_or(0);
    let failovers = body.get("failovers").and_then(|e| e.as_i64()).unwrap_or(0);
    let metrics = format!(
        "# HELP emq_leader 1 when this router leads (shared journal), else 0.\n# TYPE emq_leader gauge\nemq_leader {}\n\
         # HELP emq_epoch The lease epoch (the fencing token) of the current leader.\n# TYPE emq_epoch gauge\nemq_epoch {epoch}\n\
         # HELP emq_failovers_total Times the lease passed to another router.\n# TYPE emq_failovers_total counter\nemq_failovers_total {failovers}\n",
        u8::from(role == "leader")
    );
    let status = json!({"status": {"ha": body}}).to_string();
    if let Ok(mut s) = snap.lock() {
        *s = Snapshot { metrics, status_json: status, health: (code, body.to_string()) };
    }
}

/// Tries to take the lease until it is ours (`Some`) or a stop signal
/// comes (`None`). Says once per change what is in the way.
fn stand_by(
    url: &str,
    holder: &str,
    ttl: Duration,
    stop: &AtomicU32,
    http: Option<&SharedSnapshot>,
    presence: &(String, String),
) -> Option<(Election, i64, Instant)> {
    let stops_at_start = stop.load(Ordering::Relaxed);
    let mut election = match Election::new(url, holder.to_owned(), ttl) {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, "cannot start the election");
            return None;
        }
    };
    let mut schema_ok = false;
    let mut last_error: Option<String> = None;
    let mut reported: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) != stops_at_start {
            return None;
        }
        let attempt = if schema_ok {
            election.try_acquire()
        } else {
            election.ensure_schema().map(|()| {
                schema_ok = true;
                None
            })
        };
        match attempt {
            Ok(Some((epoch, sent))) => return Some((election, epoch, sent)),
            Ok(None) => {
                if last_error.take().is_some() {
                    info!("PostgreSQL answers again: standing by");
                }
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, journal = %emq_pgjournal::redact(url), "standby: PostgreSQL unreachable; retrying");
                    last_error = Some(e);
                }
            }
        }
        if reported.is_none_or(|t| t.elapsed() >= STANDBY_REPORT) {
            reported = Some(Instant::now());
            let _ = election.present(&presence.0, &presence.1, "standby");
            let mut body = match (election.leader(), election.routers()) {
                (Ok(l), Ok(r)) => ha_json(&l, &r),
                _ => json!({"leader": null, "error": last_error}),
            };
            body["role"] = json!("standby");
            body["holder"] = json!(holder);
            body["status"] = json!("standing by");
            set_health(http, 503, body);
        }
        std::thread::sleep(STANDBY_POLL);
    }
}
