//! The thin ZeroMQ poll loop around [`RouterState`]: poll the three
//! sockets, drain every readable one completely, hand each message to the
//! state machine, perform its actions, tick on time. A send that would block
//! (peer pipe at its high-water mark) is kept in that peer's outbox and
//! retried in order — never dropped. A SIGHUP (a flag set by the signal
//! handler) re-reads the settings between polls: valid ones apply to the
//! state machine at once, invalid ones are logged and the old ones kept.
//!
//! The journal: at bind, the journal in `data_dir` is replayed into the
//! state machine. Records the state machine asks for go into the current
//! pass's batch; at the end of each pass the batch is handed to the journal
//! thread (group commit), and receipts (`SendDurable`) wait until their
//! batch is durable — the journal thread wakes the poll through a pipe
//! (with the file journal, not while jobs are buffered: then they go with
//! the next pass, at most `QUIET_RELEASE_MS` later, instead of a pass of
//! their own per commit).
//! Everything else (dispatch, results) goes out at once. A checkpoint is
//! written when the journal has grown well past the live state, and at a
//! graceful stop.

use crate::state::{Action, Event, Now, RouterConfig, RouterState, SocketKind};
use crate::RouterSettings;
use emq_journal::{JobLog, Journal, JournalError, SyncPolicy};
use emq_pgjournal::lease::LeaseShared;
use emq_pgjournal::{PgError, PgJournal};
use emq_protocol::{Command, Message};
use emq_receiver::{Incoming, PeerId, Receiver, ReceiverError, SendError};
use emq_settings::SettingsError;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Re-reads the settings from the sources used at start (file,
/// environment, flags) on SIGHUP.
pub type Reloader = Box<dyn FnMut() -> Result<RouterSettings, SettingsError>>;

/// Why the router cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Socket(#[from] ReceiverError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("CURVE: {0}")]
    Curve(#[from] emq_receiver::CurveError),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// Where the journal is.
enum JournalSource {
    /// Segment files in `data_dir`.
    File { repair: bool },
    /// A shared PostgreSQL journal, under a lease this router holds.
    Postgres { url: String, lease: Arc<LeaseShared> },
}

/// How [`Server::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Stopped (stop signals, admin DISCONNECT).
    Stopped,
    /// The leader lease was lost (or the journal fenced this router):
    /// nothing more was sent; the process stands by again.
    LeaseLost(String),
}

/// The three bound sockets.
struct Sockets {
    frontend: Receiver,
    backend: Receiver,
    admin: Receiver,
    zap: Option<emq_receiver::ZapHandler>,
}

/// Binds the frontend, backend and admin sockets (CURVE where set).
fn bind_sockets(settings: &RouterSettings, ctx: &zmq::Context) -> Result<Sockets, BindError> {
    // A message bigger than max_message_bytes drops its sender's
    // connection instead of being held (memory exhaustion).
    let max = settings.max_message_bytes as i64;
    let secret = match settings.curve_secret_key.trim() {
        "" => None,
        path => Some(emq_receiver::Key::from_file(std::path::Path::new(path))?),
    };
    let dirs = [
        ("frontend", &settings.frontend_addr, settings.curve_frontend_keys.trim()),
        ("backend", &settings.backend_addr, settings.curve_backend_keys.trim()),
        ("admin", &settings.administrative_addr, settings.curve_admin_keys.trim()),
    ];
    let zap = match &secret {
        Some(_) if dirs.iter().any(|(_, _, d)| !d.is_empty()) => Some(emq_receiver::ZapHandler::start(ctx)?),
        _ => None,
    };
    let mut bound = Vec::new();
    for (domain, addr, dir) in dirs {
        let r = match (&secret, &zap) {
            (Some(key), Some(zap)) if !dir.is_empty() => {
                let allowed = emq_receiver::AllowList::from_dir(std::path::Path::new(dir))?;
                info!(socket = domain, keys = allowed.len(), dir, "CURVE: encrypted, only allowed keys");
                zap.set_domain(domain, allowed);
                let server = emq_receiver::CurveServer { secret: *key, domain: domain.to_owned() };
                Receiver::bind_curve_with(ctx, addr, settings.socket_hwm, max, &server, zap)?
            }
            _ => Receiver::bind_with(ctx, addr, settings.socket_hwm, max)?,
        };
        bound.push(r);
    }
    let admin = bound.pop().expect("three sockets");
    let backend = bound.pop().expect("three sockets");
    let frontend = bound.pop().expect("three sockets");
    Ok(Sockets { frontend, backend, admin, zap })
}

/// Messages kept for one client whose pipe is full; past it, more are
/// dropped (counted): receipts it does not read, results it can find in
/// the job records.
const FRONTEND_OUTBOX_MAX: usize = 10_000;

/// Journal bytes handed to the writer and not yet written, past which the
/// frontend is not read (the disk is slower than the clients).
const JOURNAL_BACKLOG_MAX: u64 = 64 << 20;

/// The admin token in `dir/admin.token`, readable by this user only:
/// `emq-cli` reads it to prove it may change things. Kept across restarts
/// (dashboards and scripts holding it go on working); a new one (OS CSPRNG)
/// only when there is none yet, or the file is not one this router wrote
/// (not 64 hex digits, or readable by others). `emq-cli token rotate`
/// replaces it.
fn load_or_write_admin_token(dir: &std::path::Path) -> Result<String, JournalError> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(emq_settings::ADMIN_TOKEN_FILE);
    if let (Ok(meta), Ok(text)) = (std::fs::symlink_metadata(&path), std::fs::read_to_string(&path)) {
        let token = text.trim();
        let private = meta.file_type().is_file() && meta.mode() & 0o077 == 0;
        if private && token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
            info!(token_file = %path.display(), "admin token kept from the last start (emq-cli reads it)");
            return Ok(token.to_owned());
        }
        warn!(token_file = %path.display(), "admin token file unusable (not private, or not a token): writing a new one");
    }
    let token = emq_protocol::random_hex(32);
    write_admin_token(dir, &token)?;
    info!(token_file = %path.display(), "admin token written (emq-cli reads it)");
    Ok(token)
}

/// Writes `token` to `dir/admin.token` (mode 0600), replacing the file
/// whole (a new file renamed over the old: never half a token).
fn write_admin_token(dir: &std::path::Path, token: &str) -> Result<(), JournalError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(emq_settings::ADMIN_TOKEN_FILE);
    let tmp = dir.join(format!("{}.new", emq_settings::ADMIN_TOKEN_FILE));
    let io = |e| JournalError::Io { path: path.clone(), source: e };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(token.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// Journal growth before a checkpoint is considered at all.
const CHECKPOINT_MIN_BYTES: u64 = 64 << 20;
/// A checkpoint is written when the journal has grown this many times past
/// the live state's estimated size (so its cost is spread over the writes).
const CHECKPOINT_GROWTH: u64 = 4;
/// Rough bytes per live job in a checkpoint, for that estimate.
const CHECKPOINT_BYTES_PER_JOB: u64 = 300;

/// While jobs are buffered, the longest a receipt, result or event
/// released by a journal commit waits for the loop's next pass (ms): a
/// commit then wakes no pass of its own, nor the clients it answers. Every
/// slot is busy then; the client's next jobs would wait anyway. Measured
/// (`docs/benchmarks.md`, issue 29 sixth part): 10 ms jobs, the loop's
/// wake-ups per job 1.01 → 0.72 and the router's CPU per job ~35 µs less;
/// 1 ms jobs (commits ~25 jobs apart already), within the noise.
const QUIET_RELEASE_MS: i64 = 5;

/// Clients remembered as taking REPLIES at most; past it the set starts
/// over (a client forgotten gets single REPLYs until its next REQUEST says
/// so again — both are correct, one is cheaper).
const BATCH_CLIENTS_MAX: usize = 100_000;

/// The router's sockets and state.
pub struct Server {
    frontend: Receiver,
    backend: Receiver,
    admin: Receiver,
    state: RouterState,
    /// Messages waiting for a full pipe to drain, per socket and peer.
    outbox: HashMap<(SocketKind, PeerId), VecDeque<Message>>,
    /// REQUESTs for job managers that take batches, gathered during a poll
    /// pass and sent at its end as one REQUESTS message per job manager.
    requests: HashMap<PeerId, Vec<(String, emq_protocol::Request)>>,
    /// Clients whose REQUESTs carried `batch-replies`
    /// ([`emq_protocol::HEADER_BATCH_REPLIES`]): their receipts and
    /// results of a pass go as one REPLIES message.
    batch_clients: HashSet<PeerId>,
    /// Receipts and results for those clients, gathered during a poll
    /// pass (with their bytes) and sent at its end, or sooner before
    /// anything else for the same client.
    client_replies: HashMap<PeerId, (Vec<(String, String)>, usize)>,
    /// Gathered replies a flush inside `send` could not deliver: fed to
    /// the state machine by the caller's next step.
    unsent: Vec<Event>,
    actions: Vec<Action>,
    /// Stop signals received (the handler counts); the loop feeds one
    /// `Event::Stop` per new one.
    stop: Arc<AtomicU32>,
    stops_seen: u32,
    journal: Box<dyn JobLog + Send>,
    /// Where the admin token and spilled buffers live.
    data_dir: std::path::PathBuf,
    /// The leader lease (with a shared journal): nothing is sent once it
    /// no longer holds, and the loop stops. With it, REQUESTs also wait,
    /// as receipts do, until the record of their dispatch is committed (a
    /// new leader must know every job that may be running, or it would run
    /// it a second time).
    lease: Option<Arc<LeaseShared>>,
    /// Receipts waiting for their journal batch to be durable, in order.
    held: VecDeque<(u64, SocketKind, PeerId, Message)>,
    /// The messages one `drain` read, kept between passes (no allocation
    /// per pass).
    pass: Vec<Incoming>,
    /// Scratch space for grouping a pass's messages by client.
    pass_groups: HashMap<PeerId, (usize, usize)>,
    /// CURVE user names seen, shared.
    user_names: HashMap<String, Arc<str>>,
    /// Checks CURVE keys (when any socket uses CURVE); kept alive here.
    _zap: Option<emq_receiver::ZapHandler>,
    /// The frontend is not read (buffers or journal past their budget):
    /// clients' sends wait in ZeroMQ — back-pressure, nothing refused.
    frontend_paused: bool,
    /// What the HTTP thread serves, refreshed every tick (when enabled).
    snapshot: Option<crate::http::SharedSnapshot>,
    /// When the HTTP snapshot was last rebuilt (at most once a second:
    /// ticks come as often as timers are due).
    snapshot_at: Option<Instant>,
    /// The settings in force (for restart-only keys: the ones bound at
    /// start), to tell what a reload changes.
    settings: RouterSettings,
    /// Set by the SIGHUP handler; the loop clears it and reloads.
    reload: Arc<AtomicBool>,
    /// The event stream: records → events, published once durable.
    events: crate::events::EventLog,
    reloader: Option<Reloader>,
    /// ZeroMQ's threads: batch while jobs are buffered (every slot busy),
    /// normal otherwise (`emq_sender::IoThreads`).
    io_threads: emq_sender::IoThreads,
}

impl Server {
    /// Validates the settings, then binds all three sockets (and the HTTP
    /// endpoint when enabled).
    pub fn bind(settings: &RouterSettings) -> Result<Server, BindError> {
        Self::bind_with(settings, false)
    }

    /// Uses `stop` as the stop-signal counter (the HA loop keeps one for
    /// the whole process, across roles).
    pub fn set_stop_counter(&mut self, stop: Arc<AtomicU32>) {
        self.stops_seen = stop.load(Ordering::Relaxed);
        self.stop = stop;
    }

    /// [`Self::bind`], replaying the journal past damaged records when
    /// `journal_repair` (the `--journal-repair` flag).
    pub fn bind_with(settings: &RouterSettings, journal_repair: bool) -> Result<Server, BindError> {
        Self::start(settings, JournalSource::File { repair: journal_repair }, None)
    }

    /// The leader of routers sharing a PostgreSQL journal: the journal is
    /// replayed first (the lease is ours: every earlier epoch's commit is
    /// visible), then the sockets are bound. `http` is the endpoint the
    /// process serves in every role.
    pub fn bind_leader(
        settings: &RouterSettings,
        url: &str,
        lease: Arc<LeaseShared>,
        http: Option<crate::http::SharedSnapshot>,
    ) -> Result<Server, BindError> {
        Self::start(settings, JournalSource::Postgres { url: url.to_owned(), lease }, http)
    }

    fn start(
        settings: &RouterSettings,
        source: JournalSource,
        http: Option<crate::http::SharedSnapshot>,
    ) -> Result<Server, BindError> {
        let cfg = settings.to_config()?;
        let repair = matches!(source, JournalSource::File { repair: true });
        let opts = settings.journal_options(repair)?;
        let (ctx, io_threads) = emq_sender::io_context();
        let mut state = RouterState::new(cfg, Now::real());
        let started = Instant::now();
        let events_dir = opts.dir.join("events");
        let mut events = crate::events::EventLog::open(&events_dir, settings.retention()?)
            .map_err(|e| JournalError::Io { path: events_dir.clone(), source: e })?;
        let (sockets, mut journal, lease) = match source {
            JournalSource::File { .. } => {
                // Sockets first (an address problem is one line and no
                // journal touched), then the journal replay; peers that
                // connect meanwhile wait in ZeroMQ until the loop starts.
                let sockets = bind_sockets(settings, &ctx)?;
                info!(data_dir = %opts.dir.display(), sync = ?opts.sync, "opening the journal");
                let (journal, report) = Journal::open(&opts, |record| {
                    events.on_replay(&record);
                    state.restore(record)
                })?;
                info!(records = report.records, bytes = report.bytes, segments = report.segments,
                      checkpoint = ?report.checkpoint, secs = started.elapsed().as_secs_f64(), "journal replayed");
                if let Some((path, offset, dropped)) = &report.torn_tail {
                    warn!(segment = %path.display(), offset, dropped, "journal: torn tail truncated (a crash mid-write)");
                }
                for (path, from, to) in &report.repaired {
                    warn!(segment = %path.display(), from, to, "journal repair: damaged bytes dropped");
                }
                (sockets, Box::new(journal) as Box<dyn JobLog + Send>, None)
            }
            JournalSource::Postgres { url, lease } => {
                emq_journal::make_private_dir(&opts.dir)
                    .map_err(|e| JournalError::Io { path: opts.dir.clone(), source: e })?;
                info!(journal = %emq_pgjournal::redact(&url), epoch = lease.epoch, "replaying the PostgreSQL journal");
                let (journal, report) = PgJournal::open(&url, lease.clone(), |record| {
                    events.on_replay(&record);
                    state.restore(record)
                })?;
                info!(
                    rows = report.rows,
                    records = report.records,
                    bytes = report.bytes,
                    secs = started.elapsed().as_secs_f64(),
                    "PostgreSQL journal replayed"
                );
                let sockets = bind_sockets(settings, &ctx)?;
                (sockets, Box::new(journal) as Box<dyn JobLog + Send>, Some(lease))
            }
        };
        // The event cursor past everything a reader may have seen, first
        // thing in this run's journal (see `events`).
        journal.append(&events.finish_replay());
        let Sockets { frontend, backend, admin, zap } = sockets;
        let snapshot = match http {
            Some(snap) => Some(snap),
            None => crate::http::spawn_for(settings, admin.addr()).map_err(|e| {
                tracing::error!(error = %e, "http endpoint");
                ReceiverError::Bind { addr: settings.http_addr.clone(), source: zmq::Error::EADDRINUSE }
            })?,
        };
        if let Some(s) = &snapshot {
            s.set_events(Some(events.window()));
        }
        // Only once every address is bound: "listening" is then true.
        info!(frontend = frontend.addr(), backend = backend.addr(), admin = admin.addr(), "router listening");
        let spill_dir = opts.dir.join("spill");
        let spill = crate::state::spill::FileSpill::new(spill_dir.clone())
            .map_err(|e| JournalError::Io { path: spill_dir, source: e })?;
        state.set_spill(Box::new(spill));
        let summary = state.finish_restore(Now::real());
        state.set_journal_stats(journal.stats_handle());
        state.set_admin_token(load_or_write_admin_token(&opts.dir)?);
        info!(
            secs = started.elapsed().as_secs_f64(),
            buffered = summary.buffered,
            in_doubt = summary.in_doubt,
            retrying = summary.retrying,
            dead_letters = summary.dead_letters,
            results_resent = summary.results_resent,
            "state restored"
        );
        let mut server = Server {
            io_threads,
            snapshot,
            snapshot_at: None,
            events,
            frontend,
            backend,
            admin,
            state,
            outbox: HashMap::new(),
            requests: HashMap::new(),
            batch_clients: HashSet::new(),
            client_replies: HashMap::new(),
            unsent: Vec::new(),
            actions: Vec::new(),
            stop: Arc::new(AtomicU32::new(0)),
            stops_seen: 0,
            lease,
            journal,
            data_dir: opts.dir.clone(),
            held: VecDeque::new(),
            pass: Vec::new(),
            pass_groups: HashMap::new(),
            frontend_paused: false,
            user_names: HashMap::new(),
            _zap: zap,
            settings: settings.clone(),
            reload: Arc::new(AtomicBool::new(false)),
            reloader: None,
        };
        server.refresh_ha();
        Ok(server)
    }

    /// A flag that makes the loop reload settings when set (the SIGHUP
    /// handler sets it).
    pub fn reload_flag(&self) -> Arc<AtomicBool> {
        self.reload.clone()
    }

    /// Uses `flag` as the reload flag (the HA loop keeps one per process).
    pub fn set_reload_flag(&mut self, flag: Arc<AtomicBool>) {
        self.reload = flag;
    }

    /// How to re-read the settings on SIGHUP (without one, SIGHUP is
    /// logged and ignored).
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.reloader = Some(reloader);
    }

    /// The state machine's settings in force.
    pub fn config(&self) -> &RouterConfig {
        self.state.config()
    }

    /// SIGHUP: re-reads and validates the settings. A bad value is logged
    /// with its key and why, and the old settings stay (the router keeps
    /// running). Good ones apply at once, except the keys that need a
    /// restart ([`RouterSettings::RESTART_KEYS`]), whose old values stay.
    pub fn reload_settings(&mut self) {
        let Some(reloader) = self.reloader.as_mut() else {
            warn!("SIGHUP: this router cannot re-read its settings; ignored");
            return;
        };
        let (mut new, cfg) = match reloader().and_then(|s| s.to_config().map(|c| (s, c))) {
            Ok(ok) => ok,
            Err(e) => {
                warn!(key = e.key().unwrap_or("-"), error = %e, "SIGHUP: settings not reloaded; the old ones stay");
                return;
            }
        };
        let changed = new.changed_keys(&self.settings);
        let (restart, live): (Vec<&str>, Vec<&str>) =
            changed.into_iter().partition(|k| RouterSettings::RESTART_KEYS.contains(k));
        if !restart.is_empty() {
            warn!(keys = ?restart, "SIGHUP: these settings need a restart; their old values stay");
        }
        let old = &self.settings;
        new.frontend_addr = old.frontend_addr.clone();
        new.backend_addr = old.backend_addr.clone();
        new.administrative_addr = old.administrative_addr.clone();
        new.http_addr = old.http_addr.clone();
        new.socket_hwm = old.socket_hwm;
        new.log_level = old.log_level.clone();
        self.state.reload(cfg);
        self.settings = new;
        info!(changed = ?live, "SIGHUP: settings reloaded");
    }

    /// Counts stop signals (the handlers add one each): the first stops
    /// gracefully, a second at once.
    pub fn stop_counter(&self) -> Arc<AtomicU32> {
        self.stop.clone()
    }

    /// Runs until the state machine asks to shut down (admin DISCONNECT,
    /// stop signals), then flushes the journal.
    pub fn run(&mut self) -> Result<RunEnd, ReceiverError> {
        let mut shutdown = false;
        while !shutdown {
            // Jobs buffered (every slot busy): a journal commit does not
            // wake the loop for a pass of its own; what it releases
            // (receipts, results, events) goes with the next pass — a
            // message, a timer, or at most `QUIET_RELEASE_MS` later. Not
            // with a shared (PostgreSQL) journal: there every dispatch
            // waits for its commit, and the pipe also says "fenced".
            let quiet_journal = self.lease.is_none() && self.state.buffered() > 0;
            let mut timeout = self.poll_timeout();
            if quiet_journal && (!self.held.is_empty() || self.events.pending() > 0) {
                timeout = timeout.min(QUIET_RELEASE_MS);
            }
            self.update_back_pressure();
            let frontend_events = if self.frontend_paused { zmq::PollEvents::empty() } else { zmq::POLLIN };
            let journal_events = if quiet_journal { zmq::PollEvents::empty() } else { zmq::POLLIN };
            let readable = {
                let mut items = [
                    self.frontend.socket().as_poll_item(frontend_events),
                    self.backend.socket().as_poll_item(zmq::POLLIN),
                    self.admin.socket().as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.journal.notify_fd(), journal_events),
                ];
                match zmq::poll(&mut items, timeout) {
                    Ok(_) => {
                        [items[0].is_readable(), items[1].is_readable(), items[2].is_readable(), items[3].is_readable()]
                    }
                    Err(zmq::Error::EINTR) => [false; 4],
                    Err(e) => return Err(e.into()),
                }
            };
            // Before anything read is acted on: a router whose lease is
            // gone (a SIGSTOP past it, a cut link) does nothing more.
            if let Some(why) = self.lease_lost() {
                self.abandon(&why);
                return Ok(RunEnd::LeaseLost(why));
            }
            if self.reload.swap(false, Ordering::Relaxed) {
                self.reload_settings();
            }
            let stops = self.stop.load(Ordering::Relaxed);
            while self.stops_seen < stops {
                self.stops_seen += 1;
                shutdown |= self.step(Event::Stop);
                if self.lease.is_some() {
                    // A leader hands over at once: its job managers report
                    // what they run to the next leader, and clients send
                    // again what has no receipt.
                    shutdown |= self.step(Event::Stop);
                }
            }
            for (i, kind) in [SocketKind::Frontend, SocketKind::Backend, SocketKind::Admin].into_iter().enumerate() {
                if readable[i] && !(kind == SocketKind::Frontend && self.frontend_paused) {
                    shutdown |= self.drain(kind)?;
                }
            }
            let now = Instant::now();
            if now >= self.state.next_tick() {
                if self.state.tick_due(now) {
                    self.refresh_ha();
                    shutdown |= self.step(Event::Tick);
                    self.refresh_snapshot();
                } else {
                    shutdown |= self.step(Event::Timers);
                }
            }
            // End of the pass: the REQUESTs it gathered, then one group
            // commit for all it journaled.
            self.flush_requests();
            self.journal.submit();
            if readable[3] || quiet_journal {
                self.journal.drain_notify();
            }
            self.release_durable();
            self.maybe_checkpoint();
            self.flush_outbox();
            self.flush_client_replies();
            // Jobs buffered: every slot is busy and this machine likely
            // is too; ZeroMQ's threads then wait for the loop's pass to
            // end rather than pre-empt it per send.
            self.io_threads.follow_load(self.state.buffered() > 0, now);
        }
        if let Some(why) = self.lease_lost() {
            self.abandon(&why);
            return Ok(RunEnd::LeaseLost(why));
        }
        self.close_journal();
        self.flush_outbox();
        info!("router stopped");
        Ok(RunEnd::Stopped)
    }

    /// Why this router may no longer act as the leader, if so.
    fn lease_lost(&self) -> Option<String> {
        let lease = self.lease.as_ref()?;
        if let Some(why) = self.journal.fenced() {
            return Some(why);
        }
        lease.why_lost()
    }

    /// The lease is gone: nothing more goes out (held receipts and queued
    /// messages are dropped; the sockets close without lingering).
    fn abandon(&mut self, why: &str) {
        error!(
            why,
            epoch = self.lease.as_ref().map_or(0, |l| l.epoch),
            "leadership lost: stopping at once (no dispatch, no receipt)"
        );
        self.held.clear();
        self.outbox.clear();
        self.requests.clear();
        self.client_replies.clear();
        // Readers go to the new leader (its window).
        if let Some(s) = &self.snapshot {
            s.set_events(None);
        }
        for r in [&self.frontend, &self.backend, &self.admin] {
            let _ = r.socket().set_linger(0);
        }
        self.journal.close();
    }

    /// Leadership figures for STATUS, metrics and `/health`.
    fn refresh_ha(&mut self) {
        let Some(lease) = &self.lease else {
            self.state.set_ha_status(None);
            return;
        };
        let mut v = lease.info();
        v["role"] = serde_json::json!("leader");
        v["epoch"] = serde_json::json!(lease.epoch);
        v["holder"] = serde_json::json!(lease.holder);
        v["lease_expires_in"] =
            serde_json::json!(lease.valid_until().saturating_duration_since(Instant::now()).as_secs_f64());
        self.state.set_ha_status(Some(v));
    }

    /// Past `journal_max_bytes` (journal plus spilled buffers) with
    /// `on_full = "wait"`, the frontend is not read until job managers
    /// drain the buffers: clients' sends wait in ZeroMQ (and block them at
    /// their high-water mark) instead of being refused. Job managers and
    /// the admin socket are served all the while. (Memory needs no such
    /// limit: past `buffer_memory` buffers spill to disk.)
    fn update_back_pressure(&mut self) {
        let cfg = self.state.config();
        let (max, refuse) = (cfg.journal_max_bytes, cfg.refuse_when_full);
        let mut used = self.disk_used();
        if used > max && !self.frontend_paused && self.journal.bytes_since_checkpoint() > 0 {
            // Reclaim what is settled before calling it full.
            self.checkpoint();
            used = self.disk_used();
        }
        // Full only while there are buffered jobs to drain: what is left
        // past the budget otherwise (kept results in the history) does not
        // go away by waiting, and must not stop the router for good.
        let full = used > max && self.state.buffered() > 0;
        self.state.set_disk_full(full);
        // A disk slower than the clients: wait for the writer to catch up.
        let behind = self.journal.stats().queued_bytes.load(Ordering::Relaxed) > JOURNAL_BACKLOG_MAX;
        let pause = (full && !refuse) || behind;
        if pause != self.frontend_paused {
            self.frontend_paused = pause;
            if pause {
                warn!(
                    disk_bytes = used,
                    journal_max_bytes = max,
                    "router full: not reading the frontend until job managers drain it (clients' sends wait)"
                );
            } else {
                info!(disk_bytes = used, "reading the frontend again");
            }
        }
    }

    /// Journal and spilled buffers on disk.
    fn disk_used(&self) -> u64 {
        self.journal.stats().disk_bytes.load(Ordering::Relaxed) + self.state.spilled_bytes()
    }

    /// Receipts whose batch is durable go out, in order.
    fn release_durable(&mut self) {
        let durable = self.journal.durable();
        self.events.release(durable);
        let mut events = Vec::new();
        while self.held.front().is_some_and(|(id, ..)| *id <= durable) {
            let (_, socket, peer, message) = self.held.pop_front().expect("non-empty");
            match message {
                // A dispatch held for its commit: batched as usual.
                Message { msgid, command: Command::Request(r), .. }
                    if socket == SocketKind::Backend && self.state.batches_to(&peer) =>
                {
                    let jobs = self.requests.entry(peer.clone()).or_default();
                    jobs.push((msgid, r));
                    if jobs.len() >= emq_protocol::MAX_BATCH_REPLIES {
                        events.extend(self.flush_requests_to(&peer));
                    }
                }
                message => {
                    if socket == SocketKind::Backend && self.requests.contains_key(&peer) {
                        events.extend(self.flush_requests_to(&peer));
                    }
                    events.extend(self.send(socket, peer, message));
                }
            }
        }
        for e in events {
            self.step(e);
        }
        self.flush_requests();
        self.flush_client_replies();
    }

    /// A checkpoint once the journal has grown well past the live state.
    fn maybe_checkpoint(&mut self) {
        let grown = self.journal.bytes_since_checkpoint();
        if grown < CHECKPOINT_MIN_BYTES {
            return;
        }
        let live = self.state.live_jobs() as u64 * CHECKPOINT_BYTES_PER_JOB;
        if grown < live.saturating_mul(CHECKPOINT_GROWTH) {
            return;
        }
        self.checkpoint();
    }

    fn checkpoint(&mut self) {
        let t = Instant::now();
        let mut records = self.state.checkpoint_records(Now::real());
        records.extend(self.events.checkpoint_records());
        let n = records.len();
        self.journal.checkpoint(&mut records.into_iter());
        info!(records = n, secs = t.elapsed().as_secs_f64(), "journal checkpoint written");
    }

    /// At exit: a checkpoint (so the next start replays little), then
    /// everything durable and the held receipts out.
    fn close_journal(&mut self) {
        self.journal.submit();
        self.checkpoint();
        self.journal.close();
        // What waited for the journal goes out only if its batch is
        // durable now (always, with the file journal: close waits; with a
        // shared journal that lost its lease, nothing is).
        self.release_durable();
        self.held.clear();
        self.events.close();
        let st = self.journal.stats();
        info!(
            batches = st.batches.load(Ordering::Relaxed),
            syncs = st.syncs.load(Ordering::Relaxed),
            records = st.records.load(Ordering::Relaxed),
            "journal closed"
        );
    }

    /// The journal, for figures (STATUS, benchmarks).
    pub fn journal(&self) -> &dyn JobLog {
        self.journal.as_ref()
    }

    fn refresh_snapshot(&mut self) {
        let Some(snap) = self.snapshot.clone() else { return };
        if self.snapshot_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.snapshot_at = Some(Instant::now());
        let now = Now::real();
        let health = match &self.lease {
            None => serde_json::json!({"role": "single", "status": "ok"}),
            // `refresh_ha` ran with the tick this snapshot follows.
            Some(_) => {
                let mut v = self.state.ha_status().cloned().unwrap_or_default();
                v["status"] = serde_json::json!("ok");
                v
            }
        };
        let (first, last, events, bytes) = self.events.window().figures();
        let mut metrics = self.state.metrics_text(now);
        metrics.push_str(&format!(
            "# HELP emq_events_offset The newest event offset published.\n# TYPE emq_events_offset gauge\nemq_events_offset {last}\n\
             # HELP emq_events_first_offset The oldest event offset kept (readers from before get a gap).\n# TYPE emq_events_first_offset gauge\nemq_events_first_offset {first}\n\
             # HELP emq_events_window Events kept in the window.\n# TYPE emq_events_window gauge\nemq_events_window {events}\n\
             # HELP emq_events_window_bytes Bytes of the event window (within events_retention).\n# TYPE emq_events_window_bytes gauge\nemq_events_window_bytes {bytes}\n\
             # HELP emq_events_pending Events waiting for their journal batch to be durable.\n# TYPE emq_events_pending gauge\nemq_events_pending {}\n",
            self.events.pending()
        ));
        let fresh = crate::http::Snapshot {
            metrics,
            status_json: self.state.api_status_json(now),
            health: (200, health.to_string()),
        };
        if let Ok(mut s) = snap.lock() {
            *s = fresh;
        };
    }

    fn poll_timeout(&self) -> i64 {
        if !self.outbox.is_empty() {
            return 1;
        }
        let until = self.state.next_tick().saturating_duration_since(Instant::now());
        (until.as_millis() as i64).clamp(0, 100)
    }

    fn socket(&self, kind: SocketKind) -> &Receiver {
        match kind {
            SocketKind::Frontend => &self.frontend,
            SocketKind::Backend => &self.backend,
            SocketKind::Admin => &self.admin,
        }
    }

    /// Reads everything waiting on one socket. Returns true on shutdown.
    fn drain(&mut self, kind: SocketKind) -> Result<bool, ReceiverError> {
        let mut shutdown = false;
        // Bounded so one busy socket cannot starve the others.
        let mut pass = std::mem::take(&mut self.pass);
        while pass.len() < DRAIN_PER_PASS {
            let Some(incoming) = self.socket(kind).try_recv()? else { break };
            pass.push(incoming);
        }
        if kind == SocketKind::Frontend {
            // A client's REQUESTS is its jobs' REQUESTs, each taken (and
            // answered, refused, journaled) exactly as if sent alone.
            split_client_requests(&mut pass);
            // ZeroMQ's fair queueing hands us one message per client in
            // turn: with many clients sending at once, each one's jobs —
            // and so its receipts and results — would be spread one per
            // client across the whole pass, one TCP segment each on the
            // way back. Grouped by client in runs of up to 16 (clients in
            // the order ZeroMQ first showed each; each client's own order
            // kept — an order its fair queueing could have given too), a
            // client's receipts and results leave together, and a burst
            // puts at most 16 jobs before another client's first.
            group_by_sender(&mut pass, &mut self.pass_groups, GROUP_RUN_MAX, |m| &m.peer);
        }
        for incoming in pass.drain(..) {
            if kind == SocketKind::Frontend {
                self.note_batch_client(&incoming);
            }
            let user = incoming.user.map(|u| self.user_name(u));
            shutdown |=
                self.step(Event::Received { socket: kind, peer: incoming.peer, message: incoming.message, user });
        }
        self.pass = pass;
        Ok(shutdown)
    }

    /// The shared name of a CURVE user (a handful of key names).
    fn user_name(&mut self, u: String) -> Arc<str> {
        if let Some(n) = self.user_names.get(&u) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(u.as_str());
        if self.user_names.len() < 10_000 {
            self.user_names.insert(u, n.clone());
        }
        n
    }

    /// Feeds one event to the state machine and performs its actions.
    fn step(&mut self, event: Event) -> bool {
        let mut actions = std::mem::take(&mut self.actions);
        self.state.handle(event, Now::real(), &mut actions);
        let mut shutdown = false;
        let mut follow_up = Vec::new();
        for action in actions.drain(..) {
            match action {
                Action::Send { socket: SocketKind::Backend, peer, message }
                    if self.lease.is_some() && matches!(message.command, Command::Request(_)) =>
                {
                    self.held.push_back((self.journal.covering_batch(), SocketKind::Backend, peer, message));
                }
                Action::Send {
                    socket: SocketKind::Backend,
                    peer,
                    message: Message { msgid, command: Command::Request(r), .. },
                } if self.state.batches_to(&peer) => {
                    let jobs = self.requests.entry(peer.clone()).or_default();
                    jobs.push((msgid, r));
                    if jobs.len() >= emq_protocol::MAX_BATCH_REPLIES {
                        follow_up.extend(self.flush_requests_to(&peer));
                    }
                }
                Action::Send { socket, peer, message } => {
                    if socket == SocketKind::Backend && !self.requests.is_empty() && self.requests.contains_key(&peer) {
                        // Keep the order: its REQUESTs before anything else for it.
                        follow_up.extend(self.flush_requests_to(&peer));
                    }
                    if let Some(e) = self.send(socket, peer, message) {
                        follow_up.push(e);
                    }
                }
                Action::SendDurable { socket, peer, message } => {
                    // Waits only for what was journaled before it: with
                    // nothing pending and all durable (an idle router's
                    // heartbeat confirming reports), it goes out at once.
                    let covering = self.journal.covering_batch();
                    if self.journal.sync_policy() == SyncPolicy::Off
                        || (self.held.is_empty() && covering <= self.journal.durable())
                    {
                        if let Some(e) = self.send(socket, peer, message) {
                            follow_up.push(e);
                        }
                    } else {
                        self.held.push_back((covering, socket, peer, message));
                    }
                }
                Action::Journal(record) => {
                    self.journal.append(&record);
                    self.events.on_live(&record, self.journal.current_batch());
                }
                Action::Forget { socket, peer } => {
                    // Also what waits for a commit or for the end of the
                    // pass: its jobs were requeued or failed.
                    self.held.retain(|(_, s, p, _)| !(*s == socket && *p == peer));
                    if socket == SocketKind::Backend {
                        self.requests.remove(&peer);
                    } else if socket == SocketKind::Frontend {
                        self.client_replies.remove(&peer);
                    }
                    self.outbox.remove(&(socket, peer));
                }
                Action::Shutdown => shutdown = true,
                Action::WriteAdminToken(token) => match write_admin_token(&self.data_dir, &token) {
                    Ok(()) => info!("new admin token written"),
                    Err(e) => error!(error = %e, "cannot write the new admin token: emq-cli cannot read it"),
                },
            }
        }
        self.actions = actions;
        follow_up.append(&mut self.unsent);
        for e in follow_up {
            shutdown |= self.step(e);
        }
        shutdown
    }

    /// Sends now, or queues behind earlier messages for a full pipe; a
    /// receipt or result for a batch client is gathered for the end of the
    /// pass instead. An unreachable peer becomes an event for the state
    /// machine.
    fn send(&mut self, socket: SocketKind, peer: PeerId, message: Message) -> Option<Event> {
        // A client whose pipe is full (not reading) gets no batches: its
        // queued messages stay countable against FRONTEND_OUTBOX_MAX.
        let message = if socket == SocketKind::Frontend
            && self.batch_clients.contains(&peer)
            && (self.outbox.is_empty() || !self.outbox.contains_key(&(socket, peer.clone())))
        {
            match self.gather_client_reply(&peer, message) {
                Ok(()) => return None,
                // Not a receipt or result (an admin answer): what was
                // gathered for this client goes first.
                Err(message) => {
                    let lost = self.flush_client_replies_to(&peer);
                    self.unsent.extend(lost);
                    message
                }
            }
        } else {
            message
        };
        self.send_now(socket, peer, message)
    }

    /// Sends now, or queues behind earlier messages for a full pipe
    /// (nothing gathered).
    fn send_now(&mut self, socket: SocketKind, peer: PeerId, message: Message) -> Option<Event> {
        if self.lease.as_ref().is_some_and(|l| !l.valid()) {
            // Not the leader any more: the loop stops at its next check.
            return None;
        }
        let key = (socket, peer);
        if let Some(q) = self.outbox.get_mut(&key) {
            if socket == SocketKind::Frontend && q.len() >= FRONTEND_OUTBOX_MAX {
                // A client that does not read (EventMQ's fire-and-forget
                // client never reads its receipts) must not grow the
                // router without bound. Its results stay in the job
                // records, where a client that comes back finds them.
                self.state.count_anomaly("frontend_outbox_full_dropped");
                return None;
            }
            q.push_back(message);
            return None;
        }
        match self.socket(socket).send(&key.1, &message) {
            Ok(()) => None,
            Err(SendError::WouldBlock(_)) => {
                self.outbox.entry(key).or_default().push_back(message);
                None
            }
            Err(SendError::Unreachable(peer)) => Some(Event::Unreachable { socket, peer, message }),
            Err(e) => {
                error!(error = %e, "send failed");
                Some(Event::Unreachable { socket, peer: key.1, message })
            }
        }
    }

    /// Sends every job manager's gathered REQUESTs (see `requests`); what
    /// cannot be delivered comes back to the state machine.
    fn flush_requests(&mut self) {
        if self.requests.is_empty() {
            return;
        }
        let peers: Vec<PeerId> = self.requests.keys().cloned().collect();
        let mut events = Vec::new();
        for p in peers {
            events.extend(self.flush_requests_to(&p));
        }
        for e in events {
            self.step(e);
        }
    }

    /// One job manager's gathered REQUESTs: alone as a REQUEST, several as
    /// REQUESTS. An unreachable peer hands each job back as its own
    /// REQUEST, so the state machine requeues them one by one.
    fn flush_requests_to(&mut self, peer: &PeerId) -> Vec<Event> {
        let Some(mut jobs) = self.requests.remove(peer) else { return Vec::new() };
        let message = if jobs.len() == 1 {
            let (msgid, r) = jobs.pop().expect("one");
            Message::with_msgid(msgid, Command::Request(r))
        } else {
            Message::new(Command::Requests(emq_protocol::Requests { jobs }))
        };
        match self.send(SocketKind::Backend, peer.clone(), message) {
            None => Vec::new(),
            Some(Event::Unreachable { socket, peer, message: Message { command: Command::Requests(rs), .. } }) => rs
                .jobs
                .into_iter()
                .map(|(msgid, r)| Event::Unreachable {
                    socket,
                    peer: peer.clone(),
                    message: Message::with_msgid(msgid, Command::Request(r)),
                })
                .collect(),
            Some(e) => vec![e],
        }
    }

    /// A client whose REQUEST carries `batch-replies` takes REPLIES from
    /// now on (its own client code knows them).
    fn note_batch_client(&mut self, incoming: &Incoming) {
        let Ok(Message { command: Command::Request(r), .. }) = &incoming.message else { return };
        if !r.headers.split(',').any(|h| h.trim() == emq_protocol::HEADER_BATCH_REPLIES)
            || self.batch_clients.contains(&incoming.peer)
        {
            return;
        }
        if self.batch_clients.len() >= BATCH_CLIENTS_MAX {
            // Cannot tell who left: start over (see BATCH_CLIENTS_MAX) —
            // what was gathered goes first, so nothing sent to a forgotten
            // client later in this pass overtakes it.
            self.flush_client_replies();
            self.batch_clients.clear();
        }
        self.batch_clients.insert(incoming.peer.clone());
    }

    /// Keeps a receipt or result for a batch client until the end of the
    /// pass (sending the gathered ones first when full); hands back what
    /// cannot go in a REPLIES.
    // The `Err` is the message handed back, moved, not a boxed error.
    #[allow(clippy::result_large_err)]
    fn gather_client_reply(&mut self, peer: &PeerId, message: Message) -> Result<(), Message> {
        let Message { msgid, command: Command::Reply(reply), .. } = message else { return Err(message) };
        let item = match emq_protocol::Replies::item_of(reply) {
            Ok(item) => item,
            Err(reply) => return Err(Message::with_msgid(msgid, Command::Reply(reply))),
        };
        let bytes = item.0.len() + item.1.len();
        let (items, size) = self.client_replies.entry(peer.clone()).or_default();
        items.push(item);
        *size += bytes;
        if items.len() >= emq_protocol::MAX_BATCH_REPLIES || *size >= emq_protocol::MAX_REPLIES_BYTES {
            let lost = self.flush_client_replies_to(peer);
            self.unsent.extend(lost);
        }
        Ok(())
    }

    /// Sends every batch client's gathered replies; what cannot be
    /// delivered goes back to the state machine.
    fn flush_client_replies(&mut self) {
        if self.client_replies.is_empty() && self.unsent.is_empty() {
            return;
        }
        let peers: Vec<PeerId> = self.client_replies.keys().cloned().collect();
        let mut events = std::mem::take(&mut self.unsent);
        for p in peers {
            events.extend(self.flush_client_replies_to(&p));
        }
        for e in events {
            self.step(e);
        }
    }

    /// One client's gathered replies as one REPLIES — even one of them:
    /// the same frames as its REPLY, and it tells the client at its first
    /// receipt that this router takes REQUESTS, so a client that sent one
    /// job first sends its next jobs together (undeliverable, the state
    /// machine takes a REPLIES as its REPLYs, as it would have had them one
    /// by one — here or when it waited in the client's outbox).
    fn flush_client_replies_to(&mut self, peer: &PeerId) -> Vec<Event> {
        let Some((items, _)) = self.client_replies.remove(peer) else { return Vec::new() };
        let message = Message::new(Command::Replies(emq_protocol::Replies { items }));
        // Straight to the socket (or its outbox): not gathered again.
        self.send_now(SocketKind::Frontend, peer.clone(), message).into_iter().collect()
    }

    /// Retries queued messages, oldest first, per peer.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        if self.lease.as_ref().is_some_and(|l| !l.valid()) {
            // Not the leader any more: nothing more leaves.
            self.outbox.clear();
            return;
        }
        let mut events = Vec::new();
        let keys: Vec<(SocketKind, PeerId)> = self.outbox.keys().cloned().collect();
        for key in keys {
            let Some(mut q) = self.outbox.remove(&key) else { continue };
            while let Some(m) = q.pop_front() {
                match self.socket(key.0).send(&key.1, &m) {
                    Ok(()) => {}
                    Err(SendError::WouldBlock(_)) => {
                        q.push_front(m);
                        break;
                    }
                    Err(_) => {
                        // Gone: everything queued for it goes back to the
                        // state machine.
                        events.push(Event::Unreachable { socket: key.0, peer: key.1.clone(), message: m });
                        events.extend(q.drain(..).map(|m| Event::Unreachable {
                            socket: key.0,
                            peer: key.1.clone(),
                            message: m,
                        }));
                    }
                }
            }
            if !q.is_empty() {
                self.outbox.insert(key, q);
            }
        }
        for e in events {
            self.step(e);
        }
    }

    /// Waits up to `grace` for queued messages to leave.
    pub fn drain_outbox(&mut self, grace: Duration) {
        self.flush_client_replies();
        let end = Instant::now() + grace;
        while !self.outbox.is_empty() && Instant::now() < end {
            self.flush_outbox();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Messages read from one socket per pass at most: one busy socket cannot
/// starve the others.
const DRAIN_PER_PASS: usize = 4096;

/// A sender's messages taken in a row at most when a pass is grouped
/// ([`group_by_sender`]): enough for the many-clients case (a 4,096-message
/// pass from 1,000 clients holds ~4 of each) while one client's burst
/// puts at most this many of its jobs before another client's first.
const GROUP_RUN_MAX: usize = 16;

/// Replaces each client REQUESTS in `pass` by the REQUESTs it carries, in
/// place and in order, each from the same peer and CURVE user: everything
/// after (grouping, limits, refusals, the journal, receipts) sees only
/// REQUESTs. A pass without one is left as it is.
pub(crate) fn split_client_requests(pass: &mut Vec<Incoming>) {
    let is_requests = |i: &Incoming| matches!(&i.message, Ok(Message { command: Command::Requests(_), .. }));
    if !pass.iter().any(is_requests) {
        return;
    }
    let mut split = Vec::with_capacity(pass.len());
    for incoming in pass.drain(..) {
        match incoming {
            Incoming { peer, message: Ok(Message { command: Command::Requests(rs), .. }), user } => {
                for message in rs.into_messages() {
                    split.push(Incoming { peer: peer.clone(), message: Ok(message), user: user.clone() });
                }
            }
            other => split.push(other),
        }
    }
    *pass = split;
}

/// Reorders `items` like a fair queue with a quantum of `run_max`: senders
/// (by `key`) in the order each first appears, each taking up to `run_max`
/// of its items in a row per round, rounds repeated until all are placed.
/// Each sender's own order is kept. ZeroMQ's fair queueing takes one
/// message per sender per turn; this takes up to `run_max`, so a sender's
/// receipts and results can leave together, while a sender with one
/// message still gets it in after at most `run_max` of any other's.
/// `groups` is scratch space kept between calls. Items already in that
/// order (one sender, or each sender's messages already together and
/// no longer than `run_max`) are left as they are.
pub(crate) fn group_by_sender<T, K: std::hash::Hash + Eq + Clone>(
    items: &mut Vec<T>,
    groups: &mut HashMap<K, (usize, usize)>,
    run_max: usize,
    key: impl Fn(&T) -> &K,
) {
    // One sender (the common case): nothing to do, no hashing.
    if items.len() < 3 || items.windows(2).all(|w| key(&w[0]) == key(&w[1])) {
        return;
    }
    let run_max = run_max.max(1);
    groups.clear();
    // Each item's place: (round, sender's first-seen rank).
    let mut place: Vec<(usize, usize)> = Vec::with_capacity(items.len());
    for item in items.iter() {
        let k = key(item);
        let next = groups.len();
        let (rank, seen) = match groups.get_mut(k) {
            Some(g) => g,
            None => {
                groups.insert(k.clone(), (next, 0));
                groups.get_mut(k).expect("just inserted")
            }
        };
        place.push((*seen / run_max, *rank));
        *seen += 1;
    }
    groups.clear();
    if place.windows(2).all(|w| w[0] <= w[1]) {
        return;
    }
    let mut tagged: Vec<((usize, usize), T)> = place.into_iter().zip(items.drain(..)).collect();
    // Stable: a sender's items within one round keep their order.
    tagged.sort_by_key(|(p, _)| *p);
    items.extend(tagged.into_iter().map(|(_, item)| item));
}

#[cfg(test)]
mod tests {
    use super::group_by_sender;
    use std::collections::HashMap;

    fn grouped(v: &[(char, u32)], run_max: usize) -> Vec<(char, u32)> {
        let mut v = v.to_vec();
        group_by_sender(&mut v, &mut HashMap::new(), run_max, |(k, _)| k);
        v
    }

    #[test]
    fn interleaved_senders_come_out_together_in_first_seen_order_each_in_its_own_order() {
        let v = [('b', 1), ('a', 1), ('c', 1), ('b', 2), ('a', 2), ('c', 2), ('b', 3), ('a', 3)];
        assert_eq!(grouped(&v, 16), [('b', 1), ('b', 2), ('b', 3), ('a', 1), ('a', 2), ('a', 3), ('c', 1), ('c', 2)]);
    }

    #[test]
    fn already_grouped_or_short_passes_are_unchanged() {
        let v = [('z', 1), ('z', 2), ('a', 1), ('a', 2), ('m', 1)];
        assert_eq!(grouped(&v, 16), v);
        assert_eq!(grouped(&[('b', 1), ('a', 1)], 16), [('b', 1), ('a', 1)]);
        assert_eq!(grouped(&[], 16), []);
        let one: Vec<(char, u32)> = (0..100).map(|i| ('x', i)).collect();
        assert_eq!(grouped(&one, 16), one);
    }

    #[test]
    fn a_burst_puts_at_most_one_run_before_another_senders_first_message() {
        // ZeroMQ's order: a1 b1 a2 a3 ... a40 (b sent one job).
        let mut v = vec![('a', 1), ('b', 1)];
        v.extend((2..=40).map(|i| ('a', i)));
        let g = grouped(&v, 16);
        let b = g.iter().position(|m| m.0 == 'b').expect("b kept");
        assert_eq!(b, 16, "after a's first run of 16: {g:?}");
        let a: Vec<u32> = g.iter().filter(|m| m.0 == 'a').map(|m| m.1).collect();
        assert_eq!(a, (1..=40).collect::<Vec<_>>(), "a's order kept");
    }

    #[test]
    fn nothing_is_lost_or_duplicated_and_runs_stay_within_the_quantum() {
        // A pseudo-random interleaving of 50 senders' 40 messages each.
        let mut v = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = [0u32; 50];
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut k = (x % 50) as usize;
            while next[k] == 40 {
                k = (k + 1) % 50;
            }
            v.push((k as u32, next[k]));
            next[k] += 1;
        }
        let mut g = v.clone();
        group_by_sender(&mut g, &mut HashMap::new(), 16, |(k, _)| k);
        assert_eq!(g.len(), v.len());
        let mut seen = [0u32; 50];
        let mut run = 0;
        for (i, (k, n)) in g.iter().enumerate() {
            assert_eq!(*n, seen[*k as usize], "each sender's order kept");
            seen[*k as usize] += 1;
            run = if i > 0 && g[i - 1].0 == *k { run + 1 } else { 1 };
            assert!(run <= 16, "a run longer than the quantum at {i}");
        }
        assert!(seen.iter().all(|n| *n == 40), "nothing lost or doubled");
        // Every sender's first message within the first round.
        let firsts = g.iter().enumerate().filter(|(_, m)| m.1 == 0).map(|(i, _)| i).max().unwrap();
        assert!(firsts < 50 * 16, "{firsts}");
    }

    /// A client's REQUESTS becomes its REQUESTs in place, in order, from
    /// its peer and user; what is not a REQUESTS (or could not be read)
    /// stays where it was.
    #[test]
    fn a_client_requests_is_split_in_place() {
        use emq_protocol::{Command, Message, Request, Requests};
        use emq_receiver::Incoming;
        let req = |q: &str| Request { queue: q.into(), headers: "batch-replies".into(), payload: "[]".into() };
        let msg = |peer: &str, command: Command| Incoming {
            peer: peer.into(),
            message: Ok(Message::with_msgid("outer", command)),
            user: Some(peer.to_uppercase()),
        };
        let bad =
            emq_protocol::Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"REQUESTS", b"x", b"a"]).unwrap_err();
        let mut pass = vec![
            msg("c1", Command::Request(req("q0"))),
            msg("c2", Command::Requests(Requests { jobs: vec![("a".into(), req("q1")), ("b".into(), req("q2"))] })),
            Incoming { peer: "c3".into(), message: Err(bad), user: None },
            msg("c2", Command::Requests(Requests { jobs: vec![] })),
            msg("c1", Command::Ready),
        ];
        super::split_client_requests(&mut pass);
        // (msgid, queue, the batch and item it came from)
        type Seen = (String, Option<String>, Option<(String, String)>);
        let seen: Vec<Seen> = pass
            .iter()
            .map(|i| {
                let m = i.message.as_ref().ok().map(|m| match &m.command {
                    Command::Request(r) => (m.msgid.clone(), r.queue.clone()),
                    other => (m.msgid.clone(), other.name().to_owned()),
                });
                (i.peer.to_string(), i.user.clone(), m)
            })
            .collect();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            seen,
            vec![
                (s("c1"), Some(s("C1")), Some((s("outer"), s("q0")))),
                (s("c2"), Some(s("C2")), Some((s("a"), s("q1")))),
                (s("c2"), Some(s("C2")), Some((s("b"), s("q2")))),
                (s("c3"), None, None),
                (s("c1"), Some(s("C1")), Some((s("outer"), s("READY")))),
            ]
        );
    }
}
