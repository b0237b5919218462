//! The job manager as a pure state machine. [`JobManagerState::handle`]
//! takes one [`Event`] and the time, and appends [`Action`]s for the poll
//! loop to perform. No sockets, no processes, no clock reads: tests drive it
//! with a fake clock.
//!
//! Each event's handler only records what happened (and sends what that
//! event itself calls for: a REPLY, a Retire, a Kill...). Then
//! [`JobManagerState::settle`] runs the same steps, in the same order, after
//! every event: hand queued jobs to workers, reconcile the slots announced
//! to the router, check whether it is time to exit. The rooms:
//!
//! - [`router_link`]: connecting, INFORM / ACK, requests from the router,
//!   and the READY reconcile;
//! - [`workers`]: a worker slot's life cycle (spawn, up, done, stole,
//!   exited), spares, and handing out jobs (pipelining);
//! - [`tick`]: the timers, as a list of named steps;
//! - [`stopping`]: stop, kill, exit, reload;
//! - [`health`]: the pool's [`PoolHealth`] for heartbeats;
//! - [`stats`]: the pool's counters ([`PoolStats`]);
//! - [`reports`]: REPLYs the router has not confirmed yet;
//! - [`updates`]: running jobs' progress and checkpoints on their way to
//!   the router (JOB_UPDATE), and a job's `extend()`.
//!
//! Slot accounting with the router: `announced` counts READYs sent minus
//! REQUESTs received since the last ACK — the router's idea of our free
//! slots. After every event, [`JobManagerState::reconcile`] sends READYs
//! until `announced` matches the idle workers not already spoken for by
//! locally queued jobs. So a READY goes out only after the previous job's
//! REPLY, a replacement worker is announced only once it is up, and a job
//! that arrives while a replacement is starting waits locally instead of
//! being lost.

mod health;
mod linger;
mod reports;
mod router_link;
mod stats;
mod stopping;
#[cfg(test)]
mod tests;
mod tick;
mod updates;
mod workers;

pub use linger::{LingerDecision, ReplyLinger, WorkerReadHoldoff};
pub use stats::PoolStats;

use reports::{UnconfirmedReports, RECENT_REPORT_BYTES};
use router_link::RouterLink;
use stopping::Lifecycle;
use updates::PendingUpdates;
use workers::Workers;

use emq_protocol::{
    Command, DecodeError, Headers, JobErrorKind, JobReply, Message, PoolHealth, Progress, QueueSpec, Reply, RunPayload,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What a backlogged job manager's REPLYs may always linger
/// (`reply_linger` permitting), however short its jobs; longer jobs may
/// linger longer ([`JobManagerState::reply_linger`]).
pub const BASE_LINGER: Duration = Duration::from_millis(5);

/// The shortest worker read holdoff ([`JobManagerState::worker_read_holdoff`]):
/// a poll waits in whole milliseconds, and below it the jobs are short
/// enough that their `Done`s already arrive together.
pub const MIN_WORKER_HOLDOFF: Duration = Duration::from_millis(1);

/// The state machine's configuration (from [`crate::JobManagerSettings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JmConfig {
    pub queues: QueueSpec,
    pub workers: usize,
    pub max_job_count: u64,
    /// RSS bytes past which a worker is replaced after its job (0: off).
    pub max_memory_per_worker: u64,
    pub global_timeout: Duration,
    /// The longest a job may run, whatever its timeout and `extend()`s.
    pub max_runtime: Duration,
    pub kill_grace: Duration,
    pub kill_escalation: Duration,
    pub heartbeat_interval: Duration,
    pub router_silence_limit: Duration,
    pub reconnect_timeout: Duration,
    /// Jobs a worker may hold: one running plus `worker_pipeline - 1`
    /// queued behind it, so it never waits for the job manager between jobs.
    pub worker_pipeline: usize,
    /// Extra jobs held in the job manager's own queue beyond what its
    /// workers hold, so the next job is already here when a worker frees
    /// (hides the READY → REQUEST round trip through the router).
    pub prefetch: usize,
    /// Prefetch only while the average job runs shorter than this: for
    /// longer jobs the router round trip does not matter, and a job must
    /// not wait here while another job manager is idle.
    pub prefetch_below: Duration,
    /// The prefetched jobs cover at most this much of the workers' time at
    /// the average job length (`workers × prefetch_span ÷ average` jobs):
    /// a job manager holds back at most this long a share of the work
    /// from the others, whatever `prefetch` says.
    pub prefetch_span: Duration,
    /// The prefetched jobs take at most this many bytes of payload at the
    /// average payload size, and none are prefetched while the jobs in the
    /// local queue take this much: a job manager's memory is bounded
    /// whatever size the jobs are (READYs already sent are not taken back:
    /// jobs that turn large at once can still fill those).
    pub prefetch_bytes: usize,
    /// Started, idle workers kept in reserve: one takes over at once when a
    /// worker is recycled, dies or is killed.
    pub spares: usize,
    /// A job queued behind one that has run this long is taken back
    /// (Steal) so it can run elsewhere: prefetching never strands a job.
    pub steal_after: Duration,
    /// How long REPLYs may wait to go out together while the workers are
    /// [`JobManagerState::backlogged`] (zero: never).
    pub reply_linger: Duration,
    /// Router addresses: the main one, then failovers.
    pub addrs: Vec<String>,
    pub allowed_paths: Vec<String>,
    /// Programs command jobs may run (absolute paths or globs); empty: no
    /// command job is taken (and none is announced at INFORM).
    pub allowed_commands: Vec<String>,
    /// Bytes of each output stream of a command job kept.
    pub command_output_bytes: u64,
    /// This job manager's labels (setting `labels`): jobs that `requires:`
    /// them come here.
    pub labels: Vec<String>,
}

impl JmConfig {
    /// `timeout:N` when given (and > 0), else `global_timeout`; at most
    /// `max_runtime`.
    pub fn timeout_for(&self, h: &Headers) -> Duration {
        h.timeout_secs
            .map(|t| Duration::from_secs(t.min(emq_protocol::MAX_TIMEOUT_SECS)))
            .unwrap_or(self.global_timeout)
            .min(self.max_runtime)
    }

    /// Whether `payload`'s module may run here: it is one of
    /// `allowed_paths` or inside one (`myapp.tasks` allows
    /// `myapp.tasks.email`), or `allowed_paths` is `["*"]`. Empty allows
    /// nothing (settings refuse to start that way).
    fn allowed(&self, payload: &RunPayload) -> bool {
        emq_protocol::path_allowed(&self.allowed_paths, payload.module_and_class().0)
    }
}

/// Something that happened to the job manager.
// `Router` is the large variant and the most frequent one: boxing it would
// allocate once per message to save bytes on a value that lives on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// Start: connect and start the workers.
    Start,
    /// A message from the router (or why it could not be read).
    Router(Result<Message, DecodeError>),
    /// A worker finished starting.
    WorkerUp {
        slot: usize,
        pid: u32,
    },
    /// A worker finished a job.
    WorkerDone {
        slot: usize,
        msgid: String,
        reply_json: String,
        error_type: Option<JobErrorKind>,
    },
    /// A worker's RSS is past `max_memory_per_worker` (the poll loop reads
    /// `/proc`).
    WorkerOverMemory {
        slot: usize,
        rss_bytes: u64,
    },
    /// What a worker's running job said about itself (coalesced by the
    /// worker): its progress and / or its checkpoint (JSON text).
    WorkerUpdate {
        slot: usize,
        msgid: String,
        progress: Option<Progress>,
        checkpoint: Option<String>,
    },
    /// A worker's running job asked for its timeout to start again,
    /// `seconds` from now.
    WorkerExtend {
        slot: usize,
        msgid: String,
        seconds: f64,
    },
    /// A worker gave back jobs it had not started (answer to Steal).
    WorkerStole {
        slot: usize,
        msgids: Vec<String>,
    },
    /// A worker process ended (and was reaped).
    WorkerExited {
        slot: usize,
        pid: u32,
        exit: String,
    },
    /// A worker could not be started.
    SpawnFailed {
        slot: usize,
        error: String,
    },
    Tick,
    /// SIGTERM / SIGINT / SIGQUIT: drain and stop (a second one: stop now).
    Stop,
    /// SIGHUP: new settings were loaded.
    Reloaded(JmConfig),
    /// The TCP connection to the router dropped and came back: a restarted
    /// router does not know us yet (INFORM again, same identity).
    RouterReconnected,
    /// The connection to the router dropped (ZeroMQ's monitor).
    RouterDisconnected,
}

/// What the poll loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Replace the router socket with a new one (new identity) to `addr`.
    Connect { addr: String },
    /// Send a message to the router.
    Send(Message),
    /// Send a HEARTBEAT carrying this health, once the poll loop has added
    /// its process figures (pid, host, load, memory and CPU).
    Heartbeat(PoolHealth),
    /// Start a worker process for `slot`.
    Spawn { slot: usize },
    /// Hand a job to the worker in `slot` (with the checkpoint an earlier
    /// attempt kept, as JSON text).
    Run { slot: usize, msgid: String, payload: String, attempt: u32, checkpoint: Option<String> },
    /// Ask the worker in `slot` to exit after its current job (recycling).
    Retire { slot: usize },
    /// Ask the worker in `slot` to give back jobs it has not started.
    Steal { slot: usize },
    /// Signal the worker in `slot` (and its process group).
    Kill { slot: usize, force: bool },
    /// Exit the process with this code.
    Exit(i32),
}

/// A job running in a worker.
#[derive(Debug, Clone)]
pub struct JobInFlight {
    pub msgid: String,
    pub queue: String,
    pub callable: std::sync::Arc<str>,
    pub started: Instant,
    pub deadline: Instant,
    /// Kept so a job the worker gives back unstarted can be sent again.
    payload: String,
    timeout: Duration,
    attempt: u32,
    checkpoint: Option<String>,
    /// The job moved its deadline (`extend()`).
    extended: bool,
}

impl JobInFlight {
    /// A queued job, started now.
    fn start(job: QueuedJob, now: Instant) -> Self {
        JobInFlight {
            deadline: deadline(now, job.timeout),
            msgid: job.msgid,
            queue: job.queue,
            callable: job.callable,
            started: now,
            payload: job.payload,
            timeout: job.timeout,
            attempt: job.attempt,
            checkpoint: job.checkpoint,
            extended: false,
        }
    }

    /// The job as it was before it started (given back by its worker).
    fn unstarted(&self) -> QueuedJob {
        QueuedJob {
            msgid: self.msgid.clone(),
            queue: self.queue.clone(),
            callable: self.callable.clone(),
            payload: self.payload.clone(),
            timeout: self.timeout,
            attempt: self.attempt,
            checkpoint: self.checkpoint.clone(),
        }
    }
}

/// A job received from the router and not yet running.
#[derive(Debug, Clone)]
struct QueuedJob {
    msgid: String,
    queue: String,
    /// `module.func`, for the per-callable figures.
    callable: std::sync::Arc<str>,
    /// Kept until the job starts: a job taken back from a worker is sent
    /// again as it was.
    payload: String,
    timeout: Duration,
    /// 1 on the first run; the router's `attempt:N` header on re-runs.
    attempt: u32,
    /// The router's `checkpoint:` header on re-runs: what an earlier
    /// attempt kept (JSON text).
    checkpoint: Option<String>,
}

/// Life cycle of one worker slot.
#[derive(Debug)]
pub enum SlotState {
    /// Spawned, not yet Ready.
    Starting,
    Idle,
    Busy(JobInFlight),
    /// Asked to exit (recycling / shutdown); waiting for it to go.
    Retiring,
    /// Being killed (timeout or forced stop); `forced` once SIGKILL went.
    Killing {
        since: Instant,
        forced: bool,
    },
    /// Died at start; respawn at this time (backoff).
    Waiting {
        respawn_at: Instant,
    },
    /// Stopped for good (shutdown).
    Gone,
}

/// One worker slot: the process in it comes and goes.
#[derive(Debug)]
pub struct WorkerSlot {
    pub state: SlotState,
    pub pid: Option<u32>,
    /// Jobs run by the current process (for `max_job_count`).
    pub jobs_done: u64,
    /// How much below `max_job_count` this process is recycled, as a
    /// fraction of a sixteenth of it (0..=65535): see
    /// [`JobManagerState::job_limit`].
    pub limit_jitter: u16,
    /// Consecutive deaths before Ready, for respawn backoff.
    pub quick_deaths: u32,
    /// Replace after the current job (settings reloaded).
    pub recycle_after_job: bool,
    /// Jobs sent to this worker behind the running one, not started yet.
    waiting: VecDeque<QueuedJob>,
    /// A Steal was sent and not answered yet.
    steal_pending: bool,
    /// In reserve: started but not announced, takes over a slot's work.
    pub spare: bool,
}

/// The whole job manager state: its settings and name, and one room per
/// part of the state machine, each keeping its own invariants.
pub struct JobManagerState {
    cfg: JmConfig,
    /// The `--name` this job manager was started with (empty when unnamed),
    /// for its health.
    name: String,
    /// Worker slots, the local queue, cancellations pending at workers.
    workers: Workers,
    /// Connection, INFORM / ACK, heartbeats, READYs announced.
    link: RouterLink,
    /// REPLYs the router has not confirmed yet (sent again after an ACK).
    reports: UnconfirmedReports,
    /// Stopping and exiting.
    lifecycle: Lifecycle,
    /// Counters for the health.
    stats: PoolStats,
    /// Running jobs' progress and checkpoints not sent to the router yet.
    updates: PendingUpdates,
}

/// `now + timeout`, saturating far in the future instead of overflowing.
fn deadline(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(emq_protocol::MAX_TIMEOUT_SECS / 10))
}

impl JobManagerState {
    pub fn new(cfg: JmConfig, now: Instant) -> Self {
        JobManagerState {
            workers: Workers::new(cfg.workers, cfg.spares),
            cfg,
            name: String::new(),
            link: RouterLink::new(now),
            reports: UnconfirmedReports::with_budget(RECENT_REPORT_BYTES),
            lifecycle: Lifecycle::default(),
            stats: PoolStats::default(),
            updates: PendingUpdates::default(),
        }
    }

    /// Sets the name shown in this job manager's health (its `--name`).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    pub fn slots(&self) -> &[WorkerSlot] {
        &self.workers.slots
    }

    /// The pool's counters.
    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Handles one event, appending actions to `out`: the event's own
    /// handler records what happened, then [`Self::settle`] follows up.
    pub fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Start => self.on_start(now, out),
            Event::Router(Ok(m)) => self.on_router(m, now, out),
            Event::Router(Err(e)) => {
                self.link.heard(now);
                self.stats.error("bad_router_frame");
                warn!(msgid = e.msgid.as_deref().unwrap_or("-"), error = %e.kind, "malformed message from router");
            }
            Event::WorkerUp { slot, pid } => self.on_worker_up(slot, pid, out),
            Event::WorkerDone { slot, msgid, reply_json, error_type } => {
                self.on_worker_done(slot, msgid, reply_json, error_type, now, out)
            }
            Event::WorkerOverMemory { slot, rss_bytes } => self.on_worker_over_memory(slot, rss_bytes, out),
            Event::WorkerUpdate { slot, msgid, progress, checkpoint } => {
                self.on_worker_update(slot, msgid, progress, checkpoint)
            }
            Event::WorkerExtend { slot, msgid, seconds } => self.on_worker_extend(slot, msgid, seconds, now),
            Event::WorkerStole { slot, msgids } => self.on_worker_stole(slot, msgids, out),
            Event::WorkerExited { slot, pid, exit } => self.on_worker_exited(slot, pid, exit, now, out),
            Event::SpawnFailed { slot, error } => self.on_spawn_failed(slot, error, now),
            Event::Tick => self.on_tick(now, out),
            Event::Stop => self.on_stop(now, out),
            Event::Reloaded(cfg) => self.on_reloaded(cfg, now, out),
            Event::RouterReconnected => self.on_router_reconnected(now, out),
            Event::RouterDisconnected => self.on_router_disconnected(now, out),
        }
        self.settle(now, out);
    }

    /// What follows every event, in this order:
    /// 1. hand locally queued jobs to idle workers, then to pipelines
    ///    (nothing when nothing is queued);
    /// 2. reconcile the slots announced to the router (READYs; only once
    ///    ACKed and while not stopping). After step 1, so a job just handed
    ///    out is not announced as free; after the handler, so a finished
    ///    job's REPLY precedes the READY for its slot;
    /// 3. exit when it is time: the last worker gone while stopping, or a
    ///    second stop signal. Last, so nothing follows `Exit`.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.hand_out_queued_jobs(now, out);
        self.reconcile(out);
        self.check_exit(out);
    }

    /// Convenience for tests.
    /// Whether the router takes BATCH messages.
    pub fn router_batches(&self) -> bool {
        self.link.batches()
    }

    /// Whether the jobs here that no worker has started cover both the
    /// workers (each has another after the one it runs) and half of what
    /// this job manager may hold (`worker_pipeline` per worker, plus
    /// `prefetch` while it is in force): then the REPLYs may linger
    /// (`reply_linger`) — the READYs they carry, which let the router send
    /// more, are not needed for a while, and what is left here covers the
    /// router's round trip once they go. Below that they go at once, so
    /// the workers never run dry waiting for a lingering batch.
    ///
    /// A stopping job manager is draining: never backlogged (its REPLYs go
    /// at once, its workers' pipes are read as they come).
    pub fn backlogged(&self) -> bool {
        if self.lifecycle.is_stopping() {
            return false;
        }
        let n = self.workers.not_started();
        n > 0 && n >= self.cfg.workers.max(self.capacity() / 2)
    }

    /// How long the workers' pipes may go unread: while the job manager
    /// is backlogged ([`Self::backlogged`]) and every worker runs a job
    /// with at least two more queued behind it, none can run dry before
    /// it has finished (queued − 1) jobs of the average length (less a
    /// poll's granularity, in whole milliseconds) — so their
    /// `Done`s may pile up in the pipes (nothing is lost there: a worker
    /// that dies after writing one still has it read) and be read in one
    /// wake-up instead of one each, at most the linger in force later
    /// ([`Self::reply_linger`]; the REPLYs linger as long anyway).
    /// `None`: read them as they come (a worker idle, starting, nearly dry
    /// or asked to give its queued jobs back — a `Steal` empties its
    /// pipeline; short jobs, where it would save under
    /// [`MIN_WORKER_HOLDOFF`]; `reply_linger` 0).
    pub fn worker_read_holdoff(&self) -> Option<Duration> {
        let linger = self.reply_linger();
        if linger.is_zero() || !self.backlogged() {
            return None;
        }
        let mut least_queued = usize::MAX;
        for s in self.workers.slots.iter().filter(|s| !s.spare) {
            // A worker asked to give its queued jobs back (`Steal`) keeps
            // only its running one: its pipe must be read as it comes.
            if !matches!(s.state, SlotState::Busy(_)) || s.steal_pending {
                return None;
            }
            least_queued = least_queued.min(s.waiting.len());
        }
        if least_queued < 2 || least_queued == usize::MAX {
            return None;
        }
        let avg = self.stats.job_secs_avg();
        if !avg.is_finite() || avg <= 0.0 {
            return None;
        }
        // A job's margin and a poll's granularity (whole milliseconds,
        // the last one rounded up) below the time the worker with the
        // fewest queued can run before it is dry, in whole milliseconds.
        let secs = (avg * (least_queued - 1) as f64 - MIN_WORKER_HOLDOFF.as_secs_f64()).min(linger.as_secs_f64());
        let hold = Duration::from_millis((secs * 1000.0).floor().max(0.0) as u64);
        (hold >= MIN_WORKER_HOLDOFF).then_some(hold)
    }

    /// Jobs this job manager may hold at once: its workers' pipelines, and
    /// `prefetch` while the average job is short enough for it.
    fn capacity(&self) -> usize {
        self.cfg.workers.saturating_mul(self.cfg.worker_pipeline.max(1)).saturating_add(self.prefetch_in_force())
    }

    /// Jobs prefetched while the average job runs shorter than
    /// `prefetch_below`: `prefetch`, at most as many as keep the workers
    /// busy for `prefetch_span` at the average length (1 ms jobs, 2
    /// workers, 0.25 s: 500) and as take `prefetch_bytes` at the average
    /// payload size (none while the local queue takes that much); else 0
    /// (longer jobs wait at the router).
    /// None before a job has finished: their length is unknown, and jobs
    /// prefetched cannot be handed back — a job manager that started
    /// first would keep a backlog of long jobs from the others.
    fn prefetch_in_force(&self) -> usize {
        if self.stats.runs() == 0 {
            return 0;
        }
        let avg = self.stats.job_secs_avg();
        if avg.is_nan() || avg >= self.cfg.prefetch_below.as_secs_f64() {
            return 0;
        }
        if self.workers.queued_bytes() >= self.cfg.prefetch_bytes {
            return 0;
        }
        let span = self.cfg.workers as f64 * self.cfg.prefetch_span.as_secs_f64();
        // A float past usize::MAX saturates; a zero average gives infinity.
        let covered = (span / avg.max(0.0)).floor();
        let by_time = if covered.is_nan() { 0 } else { covered as usize };
        let by_bytes = self.cfg.prefetch_bytes / self.stats.payload_bytes_avg().max(1);
        self.cfg.prefetch.min(by_time).min(by_bytes)
    }

    /// How long a backlogged job manager's REPLYs may linger now: half
    /// the time the jobs waiting here take to start at the average job
    /// length (a result then waits at most half as long again as the jobs
    /// queued behind it — the longer the jobs, the larger the batch it
    /// may gather), at least [`BASE_LINGER`], never past `reply_linger`
    /// (0: never).
    pub fn reply_linger(&self) -> Duration {
        let cap = self.cfg.reply_linger;
        if cap.is_zero() {
            return Duration::ZERO;
        }
        let avg = self.stats.job_secs_avg();
        let queue_wait = if avg.is_finite() && avg > 0.0 {
            self.workers.not_started() as f64 * avg / self.cfg.workers.max(1) as f64
        } else {
            0.0
        };
        let half = Duration::from_secs_f64((queue_wait / 2.0).clamp(0.0, cap.as_secs_f64()));
        cap.min(half.max(BASE_LINGER))
    }

    /// `max_memory_per_worker` in force (0: off).
    pub fn max_memory_per_worker(&self) -> u64 {
        self.cfg.max_memory_per_worker
    }

    pub fn handle_vec(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle(event, now, &mut out);
        out
    }

    /// Connects to the router and starts every worker.
    fn on_start(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.connect(now, out);
        for slot in 0..self.workers.slots.len() {
            self.spawn(slot, out);
        }
    }

    fn send_reply(&mut self, msgid: &str, reply: JobReply, out: &mut Vec<Action>) {
        self.send_reply_json(msgid, reply.to_json(), out);
    }

    /// A job's REPLY, after what the job said and is not sent yet (its
    /// checkpoint must be at the router before its failure is handled).
    fn send_reply_json(&mut self, msgid: &str, reply_json: String, out: &mut Vec<Action>) {
        self.update_before_reply(msgid, out);
        self.keep_report(msgid, &reply_json);
        out.push(Action::Send(Message::new(Command::Reply(Reply::Result {
            reply_json,
            orig_msgid: msgid.to_owned(),
        }))));
    }

    /// Keeps a REPLY until the router confirms it (past the byte budget
    /// the oldest go, counted: a router gone for very long).
    fn keep_report(&mut self, msgid: &str, reply_json: &str) {
        let dropped = self.reports.sent(msgid, reply_json);
        self.stats.errors_of("unconfirmed_reports_dropped", dropped);
    }

    /// After an ACK: the REPLYs of late go again (the router drops the ones
    /// it has), so none is lost with a crashed router or a dropped link.
    fn resend_recent_reports(&mut self, out: &mut Vec<Action>) {
        if !self.reports.is_empty() {
            info!(reports = self.reports.len(), "sending recent job reports again after (re)attaching");
        }
        for (msgid, reply_json) in self.reports.resend() {
            out.push(Action::Send(Message::new(Command::Reply(Reply::Result {
                reply_json: reply_json.to_owned(),
                orig_msgid: msgid.to_owned(),
            }))));
        }
    }
}
