//! The thin poll loop around [`JobManagerState`]: one `zmq::poll` over the
//! router DEALER, a signal self-pipe and every worker's output pipe; each
//! readable source is drained completely, turned into events, and the
//! state machine's actions are performed. Process handling stays behind
//! `emq_pool::WorkerProcess`.

use crate::state::{Action, Event, JobManagerState, LingerDecision, ReplyLinger, WorkerReadHoldoff};
use emq_pool::{FromWorker, Template, ToWorker, WorkerConfig, WorkerProcess};
use emq_protocol::{Command, Heartbeat, Message};
use emq_sender::Sender;
use nix::sys::signal::Signal;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// How often timers are checked when nothing else happens.
const TICK: Duration = Duration::from_millis(20);

/// Reloads settings on SIGHUP; returns the new state config and worker config.
pub type Reloader = Box<dyn FnMut() -> Result<(crate::state::JmConfig, WorkerConfig), emq_settings::SettingsError>>;

/// The job manager process: router socket, workers, state.
pub struct Server {
    ctx: zmq::Context,
    /// ZeroMQ's threads: batch while jobs wait here past the workers
    /// (`JobManagerState::backlogged`), normal otherwise
    /// (`emq_sender::IoThreads`).
    io_threads: emq_sender::IoThreads,
    socket: Option<Sender>,
    /// The router connection's monitor (reconnects).
    watch: Option<emq_sender::ConnectionWatch>,
    /// `ZMQ_MAXMSGSIZE` of the router socket (`max_message_bytes`).
    max_message_bytes: i64,
    /// CURVE keys for the router connection, when configured.
    curve: Option<emq_sender::CurveClientKeys>,
    workers: Vec<Option<WorkerProcess>>,
    state: JobManagerState,
    exe: PathBuf,
    worker_cfg: WorkerConfig,
    /// Fork workers from a warm template (`worker_start = "fork"`).
    fork_workers: bool,
    template: Option<Arc<Mutex<Template>>>,
    /// After a template failure, exec workers until then.
    template_retry_at: Option<Instant>,
    last_memory_check: Instant,
    /// REPLYs and READYs of this poll pass, sent as one BATCH at its end.
    batch: emq_protocol::Batch,
    /// Running jobs' updates of this poll pass, sent as one JOB_UPDATE
    /// just before the BATCH (an update goes before its job's REPLY).
    batch_updates: Vec<emq_protocol::JobUpdate>,
    /// Whether the gathered batch waits for more (`reply_linger`).
    linger: ReplyLinger,
    /// Whether this poll leaves the workers' pipes unread (their `Done`s
    /// pile up and are read in one wake-up; `worker_read_holdoff`).
    holdoff: WorkerReadHoldoff,
    identity_prefix: String,
    signals: OwnedFd,
    reload: Reloader,
    last_tick: Instant,
    /// CPU-time samples for the health frame's CPU percentages.
    proc_stats: crate::procstats::ProcStats,
}

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: nix::libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = [sig as u8];
        // SAFETY: write(2) is async-signal-safe; the fd lives as long as the process.
        unsafe {
            nix::libc::write(fd, b.as_ptr().cast(), 1);
        }
    }
}

fn install_signal_pipe() -> std::io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    SIGNAL_PIPE.store(w.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(w); // the write end lives for the whole process
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP] {
        // SAFETY: the handler only writes one byte to a pipe.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(r)
}

impl Server {
    pub fn new(
        mut state: JobManagerState,
        worker_cfg: WorkerConfig,
        identity_prefix: String,
        reload: Reloader,
    ) -> std::io::Result<Server> {
        let exe = std::env::current_exe()?;
        state.set_name(identity_prefix.clone());
        let workers = (0..state.slots().len()).map(|_| None).collect();
        let (ctx, io_threads) = emq_sender::io_context();
        Ok(Server {
            ctx,
            io_threads,
            socket: None,
            watch: None,
            max_message_bytes: 16 << 20,
            curve: None,
            workers,
            state,
            exe,
            worker_cfg,
            fork_workers: false,
            template: None,
            template_retry_at: None,
            last_memory_check: Instant::now(),
            batch: Default::default(),
            batch_updates: Vec::new(),
            linger: ReplyLinger::default(),
            holdoff: WorkerReadHoldoff::default(),
            identity_prefix,
            signals: install_signal_pipe()?,
            reload,
            last_tick: Instant::now(),
            proc_stats: Default::default(),
        })
    }

    /// Fork workers from a warm template (else each starts its own
    /// interpreter).
    pub fn set_fork_workers(&mut self, fork: bool) {
        self.fork_workers = fork;
    }

    /// Starts a worker: forked from the warm template when that works,
    /// else by exec. A template that fails is dropped, and exec is used
    /// for 10 s before a new template is tried.
    fn start_worker(&mut self) -> std::io::Result<WorkerProcess> {
        if self.fork_workers && self.template_retry_at.is_none_or(|t| Instant::now() >= t) {
            if self.template.as_ref().is_some_and(|t| t.lock().map_or(true, |mut t| !t.alive())) {
                warn!("worker template gone: starting a new one");
                self.template = None;
            }
            if self.template.is_none() {
                match Template::start(&self.exe, &self.worker_cfg, Duration::from_secs(60)) {
                    Ok(t) => {
                        info!(pid = t.pid(), "warm worker template started: workers are forked from it");
                        self.template = Some(Arc::new(Mutex::new(t)));
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot start the worker template: starting workers by exec for now");
                        self.template_retry_at = Some(Instant::now() + Duration::from_secs(10));
                    }
                }
            }
            if let Some(t) = &self.template {
                match WorkerProcess::fork_from(t) {
                    Ok(w) => return Ok(w),
                    Err(e) => {
                        warn!(error = %e, "cannot fork from the worker template: exec for now");
                        self.template = None;
                        self.template_retry_at = Some(Instant::now() + Duration::from_secs(10));
                    }
                }
            }
        }
        WorkerProcess::spawn(&self.exe, &self.worker_cfg)
    }

    /// Once a second, with `max_memory_per_worker` set: workers past it.
    fn check_memory(&mut self) -> Vec<Event> {
        let limit = self.state.max_memory_per_worker();
        if limit == 0 || self.last_memory_check.elapsed() < Duration::from_secs(1) {
            return Vec::new();
        }
        self.last_memory_check = Instant::now();
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) } {
            p if p > 0 => p as u64,
            _ => 4096,
        };
        let mut over = Vec::new();
        for (slot, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            let rss = std::fs::read_to_string(format!("/proc/{}/statm", w.pid()))
                .ok()
                .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
                .map(|pages| pages * page);
            if let Some(rss_bytes) = rss.filter(|r| *r > limit) {
                over.push(Event::WorkerOverMemory { slot, rss_bytes });
            }
        }
        over
    }

    /// Connect to the router as a CURVE client with these keys.
    pub fn set_curve_keys(&mut self, keys: Option<emq_sender::CurveClientKeys>) {
        self.curve = keys;
    }

    /// The largest message the router may send us (`max_message_bytes`).
    pub fn set_max_message_bytes(&mut self, n: i64) {
        self.max_message_bytes = n;
    }

    /// Runs until the state machine says exit; returns the exit code.
    pub fn run(&mut self) -> i32 {
        if let Some(code) = self.step(Event::Start) {
            return code;
        }
        loop {
            let mut events = Vec::new();
            self.poll_once(&mut events);
            for e in events {
                if let Some(code) = self.step(e) {
                    return self.finish(code);
                }
            }
            if self.last_tick.elapsed() >= TICK {
                self.last_tick = Instant::now();
                if let Some(code) = self.step(Event::Tick) {
                    return self.finish(code);
                }
                for e in self.check_memory() {
                    if let Some(code) = self.step(e) {
                        return self.finish(code);
                    }
                }
            }
            // End of the pass: the workers' new jobs, then its REPLYs and
            // READYs in one message — or, while the job manager is
            // backlogged, up to `reply_linger` later with the next passes'
            // (fewer messages, wake-ups and group commits per job under
            // load; an idle job manager's REPLY never waits).
            self.flush_workers();
            self.flush_batch_unless_lingering();
            self.io_threads.follow_load(self.state.backlogged(), Instant::now());
        }
    }

    /// Writes the commands queued for each worker this pass.
    fn flush_workers(&mut self) {
        for (slot, w) in self.workers.iter_mut().enumerate() {
            if let Some(w) = w {
                if let Err(e) = w.flush() {
                    // Its death shows up as end-of-stream on its pipe.
                    warn!(slot, pid = w.pid(), error = %e, "cannot hand commands to worker");
                }
            }
        }
    }

    fn finish(&mut self, code: i32) -> i32 {
        self.flush_workers();
        self.flush_batch();
        // Give the last REPLYs / KBYE a moment to leave (socket linger).
        if let Some(s) = self.socket.as_mut() {
            s.stop_watching();
        }
        self.watch = None;
        self.socket = None;
        for w in self.workers.iter_mut() {
            *w = None; // Drop kills any straggler
        }
        info!(code, "job manager exiting");
        code
    }

    fn poll_once(&mut self, events: &mut Vec<Event>) {
        // While every worker has jobs queued behind its running one, their
        // pipes are read every holdoff instead of at each `Done`.
        let hold = self.holdoff.before_poll(self.state.worker_read_holdoff(), Instant::now());
        let worker_fds: Vec<(usize, RawFd)> = if hold.is_some() {
            Vec::new()
        } else {
            self.workers.iter().enumerate().filter_map(|(i, w)| w.as_ref().map(|w| (i, w.output_fd()))).collect()
        };
        let timeout = match hold {
            // Rounded up (a poll of 0 would spin): the holdoff leaves a
            // job and a millisecond before any worker could run dry.
            Some(d) => self.poll_timeout_ms().min(d.as_micros().div_ceil(1000) as i64),
            None => self.poll_timeout_ms(),
        };
        let (sock_ready, sig_ready, ready_workers) = {
            let mut items = Vec::with_capacity(2 + worker_fds.len());
            items.push(zmq::PollItem::from_fd(self.signals.as_raw_fd(), zmq::POLLIN));
            if let Some(s) = &self.socket {
                items.push(s.socket().as_poll_item(zmq::POLLIN));
            }
            let base = items.len();
            for (_, fd) in &worker_fds {
                items.push(zmq::PollItem::from_fd(*fd, zmq::POLLIN));
            }
            match zmq::poll(&mut items, timeout) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => error!(error = %e, "poll failed"),
            }
            let sig = items[0].is_readable();
            let sock = base == 2 && items[1].is_readable();
            let ready: Vec<usize> = worker_fds
                .iter()
                .enumerate()
                .filter(|(k, _)| items[base + k].is_readable() || items[base + k].is_error())
                .map(|(_, (slot, _))| *slot)
                .collect();
            (sock, sig, ready)
        };
        if sig_ready {
            self.read_signals(events);
        }
        if let Some(w) = &mut self.watch {
            for e in w.events() {
                match e {
                    emq_sender::ConnectionEvent::Reconnected => events.push(Event::RouterReconnected),
                    emq_sender::ConnectionEvent::Disconnected => events.push(Event::RouterDisconnected),
                }
            }
        }
        if sock_ready {
            if let Some(s) = &self.socket {
                // Drain everything waiting.
                loop {
                    match s.try_recv() {
                        Ok(Some(m)) => events.push(Event::Router(m)),
                        Ok(None) => break,
                        Err(e) => {
                            error!(error = %e, "router socket error");
                            break;
                        }
                    }
                }
            }
        }
        for slot in ready_workers {
            self.read_worker(slot, events);
        }
    }

    fn read_signals(&mut self, events: &mut Vec<Event>) {
        let mut buf = [0u8; 16];
        while let Ok(n) = nix::unistd::read(&self.signals, &mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                match Signal::try_from(b as i32) {
                    Ok(Signal::SIGHUP) => match (self.reload)() {
                        Ok((cfg, worker_cfg)) => {
                            info!("SIGHUP: settings reloaded");
                            if self.worker_cfg != worker_cfg {
                                // New workers start from the new settings.
                                self.template = None;
                            }
                            self.worker_cfg = worker_cfg;
                            events.push(Event::Reloaded(cfg));
                        }
                        Err(e) => warn!(
                            key = e.key().unwrap_or("-"),
                            error = %e,
                            "SIGHUP: settings not reloaded; the old ones stay"
                        ),
                    },
                    Ok(sig) => {
                        info!(signal = sig.as_str(), "stop signal");
                        events.push(Event::Stop);
                    }
                    Err(_) => {}
                }
            }
        }
    }

    fn read_worker(&mut self, slot: usize, events: &mut Vec<Event>) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let pid = w.pid();
        let outcome = w.read_available();
        for f in outcome.frames {
            events.push(match f {
                FromWorker::Ready { pid } => Event::WorkerUp { slot, pid },
                FromWorker::Done { msgid, reply_json, error_type } => {
                    Event::WorkerDone { slot, msgid, reply_json, error_type }
                }
                FromWorker::Stolen { msgids } => Event::WorkerStole { slot, msgids },
                FromWorker::Update { msgid, progress, checkpoint } => {
                    Event::WorkerUpdate { slot, msgid, progress, checkpoint }
                }
                FromWorker::Extend { msgid, seconds } => Event::WorkerExtend { slot, msgid, seconds },
                // Kept by the worker process itself (its kills reach the
                // command's group); nothing for the state machine.
                FromWorker::CommandStarted { .. } => continue,
            });
        }
        if let Some(e) = &outcome.error {
            warn!(slot, pid, error = %e, "worker stream broken: killing it");
            w.signal(Signal::SIGKILL);
        }
        if outcome.eof || outcome.error.is_some() {
            let exit = if w.retiring() && outcome.error.is_none() {
                // Recycled or stopping: not worth a wait in this loop.
                w.reap_retired().map_or_else(|| "exited after it was told to stop".to_owned(), |e| e.to_string())
            } else {
                w.reap().to_string()
            };
            self.workers[slot] = None;
            events.push(Event::WorkerExited { slot, pid, exit });
        }
    }

    /// Feeds one event and performs the actions; `Some(code)` to exit.
    ///
    /// Workers are started last, after what the event made us tell the
    /// router has gone out: a fork waits for the template, and a spare
    /// that took a dead worker's place is announced (READY) before its
    /// replacement is forked, not after.
    fn step(&mut self, event: Event) -> Option<i32> {
        let mut queue = vec![event];
        let mut spawns = Vec::new();
        loop {
            while let Some(event) = queue.pop() {
                let actions = self.state.handle_vec(event, Instant::now());
                for action in actions {
                    if let Action::Spawn { slot } = action {
                        spawns.push(slot);
                        continue;
                    }
                    if let Some(code) = self.perform(action, &mut queue) {
                        return Some(code);
                    }
                }
            }
            if spawns.is_empty() {
                return None;
            }
            self.flush_batch();
            for slot in spawns.drain(..) {
                if let Some(code) = self.perform(Action::Spawn { slot }, &mut queue) {
                    return Some(code);
                }
            }
        }
    }

    fn perform(&mut self, action: Action, feedback: &mut Vec<Event>) -> Option<i32> {
        match action {
            Action::Connect { addr } => {
                // What was gathered for the old connection: a reconnect
                // sends the unconfirmed reports again anyway.
                self.batch = Default::default();
                self.batch_updates.clear();
                // Another address (a standby that took over): the same
                // identity, so the new router matches the jobs we run to
                // the ones its journal says it handed us. The same address
                // again: a new one (the router may still hold the old).
                let moved = self.socket.as_ref().filter(|s| s.addr() != addr).map(|s| s.identity().to_owned());
                let identity = moved.unwrap_or_else(|| {
                    if self.identity_prefix.is_empty() {
                        emq_protocol::new_msgid()
                    } else {
                        format!("{}:{}", self.identity_prefix, emq_protocol::new_msgid())
                    }
                });
                if let Some(mut old) = self.socket.take() {
                    // Its monitor first: an event for a monitor nobody reads
                    // would block ZeroMQ's I/O thread (every connection).
                    old.stop_watching();
                    // Tell the router to forget the old identity now rather
                    // than at its heartbeat timeout; never wait for it.
                    let _ = old.try_send(&Message::new(Command::Kbye));
                    let _ = old.socket().set_linger(100);
                }
                self.watch = None;
                let connected = match &self.curve {
                    Some(keys) => Sender::connect_curve(&self.ctx, &addr, identity, 100_000, keys),
                    None => Sender::connect_with(&self.ctx, &addr, identity, 100_000),
                };
                match connected {
                    Ok(s) => {
                        if let Err(e) = s.socket().set_maxmsgsize(self.max_message_bytes) {
                            warn!(error = %e, "cannot set max_message_bytes on the router socket");
                        }
                        // Tells us when the connection drops and comes back
                        // (a restarted router), so we re-attach at once.
                        match s.watch_connection() {
                            Ok(w) => self.watch = Some(w),
                            Err(e) => warn!(error = %e, "cannot watch the router connection"),
                        }
                        self.socket = Some(s);
                    }
                    Err(e) => error!(%addr, error = %e, "cannot connect"),
                }
            }
            Action::Send(m) => self.send_or_batch(m),
            Action::Heartbeat(mut health) => {
                self.proc_stats.fill(&mut health);
                let mut hb = Heartbeat::now();
                hb.health = Some(health.to_json());
                self.send(&Message::new(Command::Heartbeat(hb)));
            }
            Action::Spawn { slot } => match self.start_worker() {
                Ok(w) => {
                    debug!(slot, "worker starting");
                    self.workers[slot] = Some(w);
                }
                Err(e) => feedback.push(Event::SpawnFailed { slot, error: e.to_string() }),
            },
            // Commands to workers are written at the end of the poll pass
            // (`flush_workers`), one write per worker.
            Action::Run { slot, msgid, payload, attempt, checkpoint } => {
                if let Some(w) = self.workers[slot].as_mut() {
                    w.queue(&ToWorker::run(msgid, payload, attempt, checkpoint));
                }
            }
            Action::Steal { slot } => {
                if let Some(w) = self.workers[slot].as_mut() {
                    w.queue(&ToWorker::Steal);
                }
            }
            Action::Retire { slot } => {
                if let Some(w) = self.workers[slot].as_mut() {
                    w.queue(&ToWorker::Shutdown);
                }
            }
            Action::Kill { slot, force } => {
                if let Some(w) = &self.workers[slot] {
                    w.signal(if force { Signal::SIGKILL } else { Signal::SIGTERM });
                }
            }
            Action::Exit(code) => return Some(code),
        }
        None
    }

    /// REPLYs and READYs wait for the end of the poll pass (one BATCH) when
    /// the router takes batches, and running jobs' updates with them (one
    /// JOB_UPDATE, sent first); anything else goes now, after them.
    fn send_or_batch(&mut self, m: Message) {
        if self.state.router_batches() {
            match m.command {
                Command::JobUpdate(u) => {
                    self.batch_updates.extend(u.updates);
                    if self.batch_updates.len() >= emq_protocol::MAX_JOB_UPDATES {
                        self.flush_batch();
                    }
                    return;
                }
                Command::Reply(emq_protocol::Reply::Result { reply_json, orig_msgid }) => {
                    self.batch.replies.push((reply_json, orig_msgid));
                    if self.batch.replies.len() >= emq_protocol::MAX_BATCH_REPLIES {
                        self.flush_batch();
                    }
                    return;
                }
                Command::Ready => {
                    self.batch.ready += 1;
                    return;
                }
                _ => {}
            }
        }
        self.flush_batch();
        self.send(&m);
    }

    /// Whether anything waits to go out in the batch.
    fn batch_pending(&self) -> bool {
        !self.batch_updates.is_empty() || !self.batch.replies.is_empty() || self.batch.ready > 0
    }

    /// The end of a poll pass: the batch goes out unless the workers are
    /// backlogged and it is younger than `reply_linger` ([`ReplyLinger`]).
    fn flush_batch_unless_lingering(&mut self) {
        let (pending, backlogged) = (self.batch_pending(), self.state.backlogged());
        if self.linger.decide(pending, backlogged, self.state.reply_linger(), Instant::now()) == LingerDecision::Send {
            self.flush_batch();
        }
    }

    /// How long the next poll may wait: until the next tick, or the
    /// lingering batch's deadline.
    fn poll_timeout_ms(&self) -> i64 {
        let mut wait = TICK;
        if let Some(due) = self.linger.due_in(self.state.reply_linger(), Instant::now()) {
            wait = wait.min(due);
        }
        // Rounded up: a poll that wakes early only loops once more.
        (wait.as_micros().div_ceil(1000)) as i64
    }

    /// Sends what the pass gathered: its jobs' updates (JOB_UPDATE), then
    /// one BATCH (a lone READY or REPLY goes as itself).
    fn flush_batch(&mut self) {
        self.linger.sent();
        let mut updates = std::mem::take(&mut self.batch_updates);
        while !updates.is_empty() {
            let rest = updates.split_off(updates.len().min(emq_protocol::MAX_JOB_UPDATES));
            self.send(&Message::new(Command::JobUpdate(emq_protocol::JobUpdates { updates })));
            updates = rest;
        }
        let b = std::mem::take(&mut self.batch);
        match (b.replies.len(), b.ready) {
            (0, 0) => {}
            (0, 1) => self.send(&Message::new(Command::Ready)),
            (1, 0) => {
                let (reply_json, orig_msgid) = b.replies.into_iter().next().expect("one");
                self.send(&Message::new(Command::Reply(emq_protocol::Reply::Result { reply_json, orig_msgid })));
            }
            _ => self.send(&Message::new(Command::Batch(b))),
        }
    }

    fn send(&self, m: &Message) {
        if let Some(s) = &self.socket {
            if let Err(e) = s.send(m) {
                error!(msgid = %m.msgid, command = m.command.name(), error = %e, "send to router failed");
            }
        }
    }
}
