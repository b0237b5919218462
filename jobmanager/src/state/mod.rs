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
//! - [`health`]: the pool's [`PoolHealth`] for heartbeats.
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
mod router_link;
mod stopping;
#[cfg(test)]
mod tests;
mod tick;
mod workers;

use emq_protocol::{
    Command, DecodeError, Headers, JobErrorKind, JobReply, Message, PoolHealth, QueueSpec, Reply, RunPayload,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The state machine's configuration (from [`crate::JobManagerSettings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JmConfig {
    pub queues: QueueSpec,
    pub workers: usize,
    pub max_job_count: u64,
    /// RSS bytes past which a worker is replaced after its job (0: off).
    pub max_memory_per_worker: u64,
    pub global_timeout: Duration,
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
    /// Started, idle workers kept in reserve: one takes over at once when a
    /// worker is recycled, dies or is killed.
    pub spares: usize,
    /// A job queued behind one that has run this long is taken back
    /// (Steal) so it can run elsewhere: prefetching never strands a job.
    pub steal_after: Duration,
    /// Router addresses: the main one, then failovers.
    pub addrs: Vec<String>,
    pub allowed_paths: Vec<String>,
}

impl JmConfig {
    /// `timeout:N` when given (and > 0), else `global_timeout`.
    pub fn timeout_for(&self, h: &Headers) -> Duration {
        h.timeout_secs
            .map(|t| Duration::from_secs(t.min(emq_protocol::MAX_TIMEOUT_SECS)))
            .unwrap_or(self.global_timeout)
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
    /// Hand a job to the worker in `slot`.
    Run { slot: usize, msgid: String, payload: String, attempt: u32 },
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

#[derive(Debug, PartialEq)]
enum Phase {
    /// INFORM sent, no ACK yet.
    Informing {
        sent_at: Instant,
    },
    Acked,
}

/// The whole job manager state.
pub struct JobManagerState {
    cfg: JmConfig,
    slots: Vec<WorkerSlot>,
    local_queue: VecDeque<QueuedJob>,
    phase: Phase,
    addr_index: usize,
    last_heard: Instant,
    last_heartbeat: Instant,
    announced: u64,
    /// Set by the first stop signal: when the grace period ends.
    stopping: Option<Instant>,
    /// Jobs completed per worker pid (bounded to the most recent pids).
    /// Workers started so far (each gets its own recycling jitter).
    spawns: u64,
    pub jobs_by_pid: BTreeMap<u32, u64>,
    /// Worker replacements by reason: died, timeout, recycled.
    pub restarts: BTreeMap<&'static str, u64>,
    pub jobs_ok: u64,
    pub jobs_failed: u64,
    /// Moving average of job run time, seconds (drives prefetch).
    pub job_secs_avg: f64,
    /// Anomalies by kind (bad frames, refusals...).
    pub errors: BTreeMap<&'static str, u64>,
    /// The `--name` this job manager was started with (empty when unnamed),
    /// for its health.
    name: String,
    /// Exit with this code once the current event is settled: set when the
    /// last worker is gone while stopping, or by a second stop signal.
    exit: Option<i32>,
    /// [`Action::Exit`] went out (it goes once).
    exit_sent: bool,
    /// The time of the event being handled.
    clock: Instant,
    /// REPLYs the router has not confirmed yet, oldest first: sent again
    /// after a (re)INFORM is acknowledged, so a report lost with a router
    /// that crashed, or in a dropped connection, still arrives (the router
    /// ignores what it has). Dropped once the router's heartbeat confirms
    /// it holds them durably (a count of the REPLYs received since our
    /// INFORM).
    recent_reports: VecDeque<RecentReport>,
    recent_report_bytes: usize,
    /// REPLYs sent since the last INFORM (what the router counts).
    reports_sent: u64,
    /// Bumped at every INFORM: confirmations count from there.
    inform_epoch: u64,
    /// Jobs the router asked to cancel that sit queued at a worker: a
    /// Steal takes them back (then they are answered `cancelled`), or they
    /// are stopped the moment they start.
    cancel_pending: std::collections::HashSet<String>,
    /// The router takes BATCH messages (it said so in a heartbeat after our
    /// INFORM): the poll loop may coalesce our REPLYs and READYs.
    router_batches: bool,
    /// Per callable: runs, failures, recent run times (bounded).
    callables: std::collections::HashMap<std::sync::Arc<str>, CallableStats>,
}

/// Figures of one callable.
#[derive(Debug, Default)]
struct CallableStats {
    runs: u64,
    failed: u64,
    /// The last run times, seconds.
    recent: VecDeque<f32>,
}

/// Callables tracked at most (others count under `other`).
const MAX_CALLABLES: usize = 200;
/// Run times kept per callable.
const CALLABLE_SAMPLES: usize = 512;

/// A REPLY kept until the router confirms it.
#[derive(Debug)]
struct RecentReport {
    /// Its number among the REPLYs sent since INFORM `epoch`.
    seq: u64,
    epoch: u64,
    msgid: String,
    reply_json: String,
}

/// Bytes of unconfirmed REPLYs kept at most (oldest dropped first).
const RECENT_REPORT_BYTES: usize = 16 << 20;

const PID_HISTORY: usize = 4096;

/// `now + timeout`, saturating far in the future instead of overflowing.
fn deadline(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(emq_protocol::MAX_TIMEOUT_SECS / 10))
}

impl JobManagerState {
    pub fn new(cfg: JmConfig, now: Instant) -> Self {
        let slots = (0..cfg.workers + cfg.spares)
            .map(|i| WorkerSlot {
                state: SlotState::Gone,
                pid: None,
                jobs_done: 0,
                limit_jitter: 0,
                quick_deaths: 0,
                recycle_after_job: false,
                waiting: VecDeque::new(),
                steal_pending: false,
                spare: i >= cfg.workers,
            })
            .collect();
        JobManagerState {
            cfg,
            slots,
            local_queue: VecDeque::new(),
            phase: Phase::Informing { sent_at: now },
            addr_index: 0,
            last_heard: now,
            last_heartbeat: now,
            announced: 0,
            stopping: None,
            spawns: 0,
            jobs_by_pid: BTreeMap::new(),
            restarts: BTreeMap::new(),
            jobs_ok: 0,
            jobs_failed: 0,
            job_secs_avg: 0.0,
            errors: BTreeMap::new(),
            name: String::new(),
            exit: None,
            exit_sent: false,
            clock: now,
            recent_reports: VecDeque::new(),
            recent_report_bytes: 0,
            cancel_pending: Default::default(),
            router_batches: false,
            callables: Default::default(),
            reports_sent: 0,
            inform_epoch: 0,
        }
    }

    /// Sets the name shown in this job manager's health (its `--name`).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    pub fn slots(&self) -> &[WorkerSlot] {
        &self.slots
    }

    /// Handles one event, appending actions to `out`: the event's own
    /// handler records what happened, then [`Self::settle`] follows up.
    pub fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        self.clock = now;
        match event {
            Event::Start => self.on_start(now, out),
            Event::Router(Ok(m)) => self.on_router(m, now, out),
            Event::Router(Err(e)) => {
                self.last_heard = now;
                *self.errors.entry("bad_router_frame").or_insert(0) += 1;
                warn!(msgid = e.msgid.as_deref().unwrap_or("-"), error = %e.kind, "malformed message from router");
            }
            Event::WorkerUp { slot, pid } => self.on_worker_up(slot, pid, out),
            Event::WorkerDone { slot, msgid, reply_json, error_type } => {
                self.on_worker_done(slot, msgid, reply_json, error_type, now, out)
            }
            Event::WorkerOverMemory { slot, rss_bytes } => self.on_worker_over_memory(slot, rss_bytes, out),
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
        self.router_batches
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
        for slot in 0..self.slots.len() {
            self.spawn(slot, out);
        }
    }

    fn send_reply(&mut self, msgid: &str, reply: JobReply, out: &mut Vec<Action>) {
        self.send_reply_json(msgid, reply.to_json(), out);
    }

    fn send_reply_json(&mut self, msgid: &str, reply_json: String, out: &mut Vec<Action>) {
        self.keep_report(msgid, &reply_json);
        out.push(Action::Send(Message::new(Command::Reply(Reply::Result {
            reply_json,
            orig_msgid: msgid.to_owned(),
        }))));
    }

    /// Keeps a REPLY until the router confirms it (past the byte budget
    /// the oldest go, counted: a router gone for very long).
    fn keep_report(&mut self, msgid: &str, reply_json: &str) {
        self.reports_sent += 1;
        while self.recent_report_bytes + reply_json.len() > RECENT_REPORT_BYTES {
            let Some(old) = self.recent_reports.pop_front() else { break };
            self.recent_report_bytes -= old.msgid.len() + old.reply_json.len();
            *self.errors.entry("unconfirmed_reports_dropped").or_insert(0) += 1;
        }
        self.recent_report_bytes += msgid.len() + reply_json.len();
        self.recent_reports.push_back(RecentReport {
            seq: self.reports_sent,
            epoch: self.inform_epoch,
            msgid: msgid.to_owned(),
            reply_json: reply_json.to_owned(),
        });
    }

    /// The router's heartbeat says it holds (durably) the first `n` REPLYs
    /// sent since our INFORM: those need not be kept any more.
    pub(super) fn reports_confirmed(&mut self, n: u64) {
        while let Some(r) = self.recent_reports.front() {
            if r.epoch != self.inform_epoch || r.seq > n {
                break;
            }
            let r = self.recent_reports.pop_front().expect("front exists");
            self.recent_report_bytes -= r.msgid.len() + r.reply_json.len();
        }
    }

    /// After an ACK: the REPLYs of late go again (the router drops the ones
    /// it has), so none is lost with a crashed router or a dropped link.
    fn resend_recent_reports(&mut self, out: &mut Vec<Action>) {
        if !self.recent_reports.is_empty() {
            info!(reports = self.recent_reports.len(), "sending recent job reports again after (re)attaching");
        }
        // They count as sent on this connection again, in order.
        for r in self.recent_reports.iter_mut() {
            self.reports_sent += 1;
            r.seq = self.reports_sent;
            r.epoch = self.inform_epoch;
            out.push(Action::Send(Message::new(Command::Reply(Reply::Result {
                reply_json: r.reply_json.clone(),
                orig_msgid: r.msgid.clone(),
            }))));
        }
    }
}
