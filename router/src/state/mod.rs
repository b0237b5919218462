//! The router as a pure state machine: [`RouterState::handle`] takes one
//! [`Event`] and the current time ([`Now`], injected so tests can run a fake
//! clock) and appends the [`Action`]s to perform. No sockets, no clock reads.
//!
//! The path of one job, room by room:
//! 1. [`intake`]: a client's REQUEST arrives on the frontend; its queue is
//!    resolved (its own when served, else `default`), a job record is made
//!    ([`history`]) — or the job is refused with one `refuse()`.
//! 2. [`dispatch`]: a free [`WorkerSlot`] of a [`JobManagerPeer`] is picked
//!    (highest weight, least recently used) and the REQUEST is forwarded
//!    unchanged; with no free slot the job waits in its queue's buffer
//!    (bounded by `buffer_memory`, and `hwm` when set). A receipt goes to
//!    the client either way, once the job is journaled.
//! 3. [`peers`]: job managers INFORM, announce slots with READY, heartbeat
//!    (with their pool health), say KBYE or vanish — their unfinished jobs
//!    are then requeued or failed.
//! 4. [`outcome`]: the job manager's REPLY ends the [`JobInFlight`]: a
//!    failure with retries left waits for its retry, a final failure of a
//!    kept job becomes a dead letter, and a `reply-requested` client gets
//!    the final result. Counts go to [`QueueStats`].
//! 5. [`admin`]: STATUS, ROUTER_SHOW_WORKERS, JOB_STATUS, dead letters,
//!    REQUEUE, DISCONNECT, and the `/metrics` and `/api/status` views.
//!
//! [`records`] holds the data types they share.

mod admin;
mod control;
mod dispatch;
mod history;
mod intake;
pub mod limits;
mod outcome;
mod peers;
mod progress;
mod queues;
mod records;
mod recovery;
pub mod spill;
mod stats;
mod suspects;
#[cfg(test)]
mod tests;
mod timers;
mod undelivered;
mod workflows;

use emq_journal::Record;
use emq_protocol::{Command, DecodeError, Message};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use admin::EVENTMQ_STATUS_KEYS;
pub use history::{AttemptError, JobHistory, JobRecord, JobState};
pub use intake::Refusal;
pub use queues::QueueState;
pub use records::{
    DeadLetter, InDoubtJob, JobId, JobInFlight, JobManagerPeer, SchedulerPeer, StaleJobManager, StoredRequest,
    WaitingJob, WorkerSlot,
};
pub use recovery::RestoreSummary;
pub use stats::{LatencyStats, QueueCounts, QueueStats, OTHER_QUEUE};
pub use timers::{no_client, ScheduleState, Timer, TimerKey};

/// Counters of things that happen in normal operation: shown under
/// `activity`, never under `errors` (nor as anomalies on the dashboard).
pub const ACTIVITY_COUNTERS: &[&str] = &[
    "cancelled_jobs",
    "dead_letters",
    "dead_letters_deleted",
    "duplicate_requests_answered",
    "in_doubt_requeued",
    "in_doubt_settled",
    "job_manager_reconnected",
    "late_reports_taken",
    "purged_jobs",
    "reply_for_unknown_job",
    "requeued",
    "requeued_dead_letters",
    "results_resent_after_restart",
    "retried",
    "schedule_runs",
    "suspect_jobs_reclaimed",
];

/// Which of the router's sockets a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// Clients and schedulers.
    Frontend,
    /// Job managers.
    Backend,
    /// `emq-cli`.
    Admin,
}

/// Something that happened to the router.
#[derive(Debug)]
pub enum Event {
    /// A message (or an undecodable one) from `peer` on `socket`; `user`
    /// is the name of the CURVE key it came with (None on a plaintext
    /// socket).
    Received { socket: SocketKind, peer: PeerId, message: Result<Message, DecodeError>, user: Option<Arc<str>> },
    /// A send to `peer` failed because the peer is gone; the message is
    /// handed back so a job in it can go elsewhere.
    Unreachable { socket: SocketKind, peer: PeerId, message: Message },
    /// Time passed: heartbeats to send, silent peers to expire, and due
    /// timers.
    Tick,
    /// A timer (delayed job, retry, schedule) is due before the next tick:
    /// only due timers are taken.
    Timers,
    /// SIGTERM / SIGINT: the first stops gracefully (no new jobs, running
    /// ones may report for `stop_grace`), a second one stops at once.
    Stop,
}

/// Something the poll loop must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send {
        socket: SocketKind,
        peer: PeerId,
        message: Message,
    },
    /// Send once every record journaled before it is durable: a receipt
    /// promises the job is on disk.
    SendDurable {
        socket: SocketKind,
        peer: PeerId,
        message: Message,
    },
    /// Append a record to the journal (in this pass's group commit).
    Journal(Record),
    /// Drop anything still queued for this peer (it was forgotten; its jobs
    /// were requeued or failed, so late delivery would run them twice).
    Forget {
        socket: SocketKind,
        peer: PeerId,
    },
    /// Stop the router (after the sends before it).
    Shutdown,
    /// Replace `data_dir/admin.token` with this token (`ROTATE_TOKEN`).
    WriteAdminToken(String),
}

/// The injected clock: a monotonic instant for timing, wall-clock seconds
/// for heartbeat timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub unix: f64,
}

impl Now {
    /// The real time.
    pub fn real() -> Self {
        Now {
            mono: Instant::now(),
            unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }

    /// `self` moved forward by `d` (for tests).
    pub fn after(self, d: Duration) -> Self {
        Now { mono: self.mono + d, unix: self.unix + d.as_secs_f64() }
    }
}

/// The state machine's tunables, validated (from `RouterSettings::to_config`).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub hwm: usize,
    /// Jobs remembered for JOB_STATUS.
    pub job_history: usize,
    /// First retry delay; each further retry waits `retry_multiplier` times longer.
    pub retry_delay: Duration,
    pub retry_multiplier: f64,
    /// Most dead letters kept (oldest dropped first).
    pub dead_letter_max: usize,
    /// Refuse REQUESTs for a queue nobody serves when `default` has no job
    /// manager either (instead of buffering them in `default`).
    pub reject_unknown_queues: bool,
    /// On a graceful stop, how long job managers get to report the jobs
    /// they are running before the router exits anyway.
    pub stop_grace: Duration,
    /// Who may INFORM as a scheduler on the frontend (and then receive
    /// every client's SCHEDULE orders): CURVE user names, or `*` for any
    /// peer. Empty (the default): nobody.
    pub allowed_schedulers: Vec<String>,
    /// CURVE users (key names) of the admin socket who may change things
    /// without the token.
    pub admin_users: Vec<String>,
    /// How long a finished job's record and result are kept for
    /// JOB_STATUS and clients that missed the result (`job_history` bounds
    /// their number too).
    pub result_ttl: Duration,
    /// Results that finished this long before the last journaled moment
    /// of a router that stopped without a checkpoint go to their clients
    /// again at restart (see `recovery`).
    pub result_resend_window: Duration,
    /// Bytes of results kept for JOB_STATUS (oldest evicted first; one
    /// larger than a sixteenth of it is not kept).
    pub results_max_bytes: u64,
    /// Bytes of buffered jobs held in memory before buffers spill to disk.
    pub buffer_memory: u64,
    /// Journal bytes on disk before the frontend is full.
    pub journal_max_bytes: u64,
    /// When full, refuse REQUESTs (else the poll loop stops reading the
    /// frontend: back-pressure, nothing lost).
    pub refuse_when_full: bool,
    /// SCHEDULE orders go to an external EventMQ scheduler (else the
    /// router runs them itself).
    pub scheduler_external: bool,
    /// What happens to runs missed while the router was down.
    pub misfire: emq_protocol::Misfire,
    /// Most schedules kept.
    pub max_schedules: usize,
    /// Bytes of delayed jobs held.
    pub delayed_max_bytes: u64,
    /// How long a silent job manager's jobs wait for its late reports
    /// (non-`guarantee` jobs end `job manager lost` after it).
    pub suspect_timeout: Duration,
    /// Limits per key (`limits`): name → concurrency and rate.
    pub limits: Vec<(String, limits::LimitSpec)>,
}

/// The whole router state: the settings, then one room per concern. Each
/// room's type owns its data and keeps its invariants; the rooms' behaviour
/// (what an event does) is in the `impl RouterState` of the room's file.
pub struct RouterState {
    cfg: RouterConfig,
    /// Start, tick and heartbeat times; the graceful stop.
    lifecycle: Lifecycle,
    /// Connected job managers and schedulers, and recently lost ones.
    peers: peers::Peers,
    /// Queues, their buffers (memory part and disk tails) and free slots.
    dispatch: dispatch::Dispatch,
    /// Jobs handed out and not reported done.
    in_flight: HashMap<Arc<str>, JobInFlight>,
    /// Runs whose job manager went silent or whose router stopped: their
    /// late reports are still taken (see [`suspects`]).
    suspects: suspects::Suspects,
    /// Delayed jobs, retries and schedules, by due time (see [`timers`]).
    timers: timers::Timers,
    /// Authenticated admin sessions and the token.
    admin: admin::Admin,
    /// Anomalies and activity, by kind; jobs accepted.
    counters: stats::Counters,
    /// Per-queue counts, latency histograms, the dashboard's series, the
    /// journal's and leadership's figures.
    pub(crate) telemetry: stats::Telemetry,
    /// Finished jobs: records and results, dead letters, recent failures,
    /// results waiting for their client.
    outcomes: outcome::Outcomes,
    /// Jobs that wait for other jobs: workflows, `depends_on`, `unique`
    /// keys (see [`workflows`]).
    workflows: workflows::Workflows,
    /// Limits per key: running jobs per key and partition, rate windows,
    /// jobs waiting for their limit (see [`limits`]).
    limits: limits::Limits,
    /// Checkpoints of live jobs (see [`progress`]).
    checkpoints: progress::Checkpoints,
    /// Jobs being rebuilt from the journal (only during a restore).
    restoring: Option<Box<recovery::Restoring>>,
    /// The CURVE user of the message being handled (None: plaintext).
    user: Option<Arc<str>>,
}

/// Start, tick and heartbeat times, and the graceful stop.
pub(crate) struct Lifecycle {
    pub(crate) started: Instant,
    pub(crate) last_heartbeat_sent: Option<Instant>,
    /// When the next [`Event::Tick`] is due (advanced by every tick).
    pub(crate) next_tick_at: Instant,
    /// A graceful stop is under way; the router exits at this time at the
    /// latest.
    pub(crate) stopping: Option<Instant>,
    /// KBYE sent and Shutdown asked for.
    pub(crate) shutting_down: bool,
}

impl RouterState {
    pub fn new(cfg: RouterConfig, now: Now) -> Self {
        let mut history = JobHistory::new(cfg.job_history);
        history.set_results_max_bytes(cfg.results_max_bytes as usize);
        let mut limits = limits::Limits::default();
        limits.set_specs(cfg.limits.iter().cloned());
        RouterState {
            cfg,
            lifecycle: Lifecycle {
                started: now.mono,
                last_heartbeat_sent: None,
                next_tick_at: now.mono,
                stopping: None,
                shutting_down: false,
            },
            peers: Default::default(),
            dispatch: Default::default(),
            in_flight: HashMap::default(),
            suspects: Default::default(),
            timers: Default::default(),
            admin: Default::default(),
            counters: Default::default(),
            telemetry: Default::default(),
            outcomes: outcome::Outcomes::new(history),
            workflows: Default::default(),
            limits,
            checkpoints: Default::default(),
            restoring: None,
            user: None,
        }
    }

    /// Handles one event, appending what to do to `out`. The single entry
    /// point: each arm hands the event to the room that owns it.
    pub fn handle(&mut self, event: Event, now: Now, out: &mut Vec<Action>) {
        let start = out.len();
        match event {
            Event::Received { socket, peer, message: Err(e), .. } => self.on_decode_error(socket, &peer, e, out),
            Event::Received { socket: SocketKind::Frontend, peer, message: Ok(m), user } => {
                self.user = user;
                self.on_frontend(peer, m, now, out)
            }
            Event::Received { socket: SocketKind::Backend, peer, message: Ok(m), user } => {
                self.user = user;
                self.on_backend(peer, m, now, out)
            }
            Event::Received { socket: SocketKind::Admin, peer, message: Ok(m), user } => {
                self.user = user;
                self.on_admin(peer, m, now, out)
            }
            Event::Unreachable { socket, peer, message } => self.on_unreachable(socket, peer, message, now, out),
            Event::Tick => self.on_tick(now, out),
            Event::Timers => self.release_due_timers(now, out),
            Event::Stop => self.on_stop(now, out),
        }
        if self.workflows.watching() || !self.workflows.steps.is_empty() {
            // Jobs that ended in this event release (or cancel) what waits for them.
            self.follow_ends(start, now, out);
        }
        if self.limits.due(now.mono) {
            // Slots freed and rate windows opened in this event start what
            // waited for them.
            self.release_limited(now, out);
        }
        if self.lifecycle.stopping.is_some() {
            // The last running job may just have reported.
            self.finish_stop(now, out);
        }
    }

    /// New settings from a SIGHUP reload, already validated. Bounds that
    /// shrink apply from now on (a smaller `job_history` drops the oldest
    /// records; jobs already buffered past a smaller `hwm` stay).
    pub fn reload(&mut self, cfg: RouterConfig) {
        self.outcomes.history.set_cap(cfg.job_history);
        self.outcomes.history.set_results_max_bytes(cfg.results_max_bytes as usize);
        self.limits.set_specs(cfg.limits.iter().cloned());
        self.cfg = cfg;
    }

    /// Where STATUS reads the journal's figures from.
    pub fn set_journal_stats(&mut self, stats: Arc<emq_journal::JournalStats>) {
        self.telemetry.journal_stats = Some(stats);
    }

    /// The settings in force.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Convenience for tests: [`Self::handle`] into a fresh vector.
    pub fn handle_vec(&mut self, event: Event, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle(event, now, &mut out);
        out
    }

    /// When the next [`Event::Tick`] is due: the tick period, or sooner
    /// when a timer (delayed job, retry, schedule) is due sooner.
    pub fn next_tick(&self) -> Instant {
        let due = match (self.first_timer(), self.limits.first_wake()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match due {
            Some(due) => self.lifecycle.next_tick_at.min(due),
            None => self.lifecycle.next_tick_at,
        }
    }

    /// Ticks often enough to check expiry at a fraction of the timeout and
    /// to send heartbeats on time, and no more often.
    fn tick_period(&self) -> Duration {
        let t = self.cfg.heartbeat_interval.min(self.cfg.heartbeat_timeout / 4);
        t.clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Whether the periodic steps are due ([`Event::Tick`]); else only a
    /// timer is ([`Event::Timers`]).
    pub fn tick_due(&self, now: Instant) -> bool {
        now >= self.lifecycle.next_tick_at
    }

    /// Time passed: the tick's steps, in order.
    fn on_tick(&mut self, now: Now, out: &mut Vec<Action>) {
        self.lifecycle.next_tick_at = now.mono + self.tick_period();
        self.release_due_timers(now, out);
        self.expire_in_doubt(now, out);
        self.expire_silent_job_managers(now, out);
        self.expire_suspects(now);
        self.forget_old_stale_job_managers(now);
        self.expire_silent_schedulers(now);
        self.expire_results(now);
        self.forget_idle_limits(now);
        self.retry_undelivered(now, out);
        self.sample_series(now);
        self.send_heartbeats(now, out);
        self.finish_stop(now, out);
    }

    /// Tick step: results whose client was away go again (those past
    /// `result_ttl` are given up: the job record still holds them).
    fn retry_undelivered(&mut self, now: Now, out: &mut Vec<Action>) {
        for msgid in std::mem::take(&mut self.outcomes.pending_unjournaled) {
            out.push(Action::Journal(Record::ResultPending { msgid }));
        }
        for (peer, message) in self.outcomes.undelivered.take_for_retry(now.mono, self.cfg.result_ttl) {
            out.push(Action::Send { socket: SocketKind::Frontend, peer, message });
        }
        for _ in 0..self.outcomes.undelivered.take_given_up() {
            self.count("results_undeliverable");
        }
        for msgid in self.outcomes.undelivered.take_settled() {
            out.push(Action::Journal(Record::ResultDelivered { msgid }));
        }
    }

    /// Tick step: every [`SERIES_STEP`], a point of the last hour's series.
    fn sample_series(&mut self, now: Now) {
        if self.telemetry.series.back().is_some_and(|p| now.unix - p.t < SERIES_STEP.as_secs_f64()) {
            return;
        }
        let (processed, failed) =
            self.telemetry.stats.iter().fold((0, 0), |(p, f), (_, c)| (p + c.processed, f + c.failed));
        if self.telemetry.series.len() >= SERIES_POINTS {
            self.telemetry.series.pop_front();
        }
        self.telemetry.series.push_back(SeriesPoint {
            t: now.unix,
            processed,
            failed,
            waiting: self.buffered() as u64 + self.timers.delayed_jobs as u64,
            in_flight: self.in_flight.len() as u64,
        });
    }

    /// The series as columns (for `/api/status`).
    pub fn series_json(&self) -> serde_json::Value {
        let col = |f: fn(&SeriesPoint) -> serde_json::Value| self.telemetry.series.iter().map(f).collect::<Vec<_>>();
        serde_json::json!({
            "step_secs": SERIES_STEP.as_secs(),
            "t": col(|p| p.t.into()),
            "processed": col(|p| p.processed.into()),
            "failed": col(|p| p.failed.into()),
            "waiting": col(|p| p.waiting.into()),
            "in_flight": col(|p| p.in_flight.into()),
        })
    }

    /// Tick step: finished jobs older than `result_ttl` are forgotten.
    fn expire_results(&mut self, now: Now) {
        let n = self.outcomes.history.expire_finished(now.unix - self.cfg.result_ttl.as_secs_f64());
        if n > 0 {
            tracing::debug!(records = n, "finished jobs past result_ttl forgotten");
        }
    }

    /// A stop signal: the first begins a graceful stop, a second one ends
    /// it now.
    fn on_stop(&mut self, now: Now, out: &mut Vec<Action>) {
        match self.lifecycle.stopping {
            Some(_) => {
                tracing::warn!(in_flight = self.in_flight.len(), "second stop: stopping now");
                self.lifecycle.stopping = Some(now.mono);
            }
            None => self.begin_stop(now),
        }
        self.finish_stop(now, out);
    }

    /// No new jobs from now on (REQUESTs are refused, buffered jobs stay
    /// buffered); job managers have `stop_grace` to report what they run.
    fn begin_stop(&mut self, now: Now) {
        tracing::info!(in_flight = self.in_flight.len(), grace = ?self.cfg.stop_grace,
            "stopping: no new jobs; waiting for running jobs to report");
        self.lifecycle.stopping = Some(now.mono + self.cfg.stop_grace);
    }

    /// Tick step: once nothing is in flight (or the grace is over), say
    /// goodbye to peers and ask the loop to exit. What is buffered, waiting
    /// for a retry or still running stays in the journal for the next start.
    fn finish_stop(&mut self, now: Now, out: &mut Vec<Action>) {
        let Some(deadline) = self.lifecycle.stopping else { return };
        if self.lifecycle.shutting_down || (!self.in_flight.is_empty() && now.mono < deadline) {
            return;
        }
        self.lifecycle.shutting_down = true;
        let buffered = self.buffered();
        tracing::info!(
            buffered,
            waiting_for_time = self.timers.by_due.len(),
            in_flight = self.in_flight.len(),
            dead_letters = self.outcomes.dead.len(),
            "router stopping: these jobs are kept in the journal for the next start"
        );
        for p in self.peers.job_managers.keys() {
            out.push(send(SocketKind::Backend, p, Command::Kbye));
        }
        for p in self.peers.schedulers.keys() {
            out.push(send(SocketKind::Frontend, p, Command::Kbye));
        }
        out.push(Action::Shutdown);
    }

    /// Whether jobs may be handed out (not while stopping).
    fn dispatching(&self) -> bool {
        self.lifecycle.stopping.is_none()
    }

    /// Counts an anomaly the poll loop saw (shown in STATUS `errors`).
    pub fn count_anomaly(&mut self, what: &'static str) {
        self.count(what);
    }

    /// Counts one event of kind `what`: normal activity (see
    /// [`ACTIVITY_COUNTERS`]) or an anomaly.
    fn count(&mut self, what: &'static str) {
        self.counters.count(what);
    }

    /// `t` as milliseconds since the router started (saturating at ~49 days
    /// of age, which only affects latency figures).
    fn stamp(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.lifecycle.started).as_millis().min(u32::MAX as u128) as u32
    }

    // ---- read access (admin answers, tests) -------------------------------

    /// Connected job managers.
    /// Whether `peer` is our job manager and asked for batches (the poll
    /// loop then sends it a pass's REQUESTs as one REQUESTS).
    pub fn batches_to(&self, peer: &PeerId) -> bool {
        self.peers.job_managers.get(peer).is_some_and(|jm| jm.batches)
    }

    pub fn job_managers(&self) -> &HashMap<PeerId, JobManagerPeer> {
        &self.peers.job_managers
    }

    /// Jobs waiting in `queue`'s buffer.
    pub fn waiting(&self, queue: &str) -> usize {
        self.queue_len(queue)
    }

    /// Jobs handed out and not reported done.
    pub fn in_flight(&self) -> &HashMap<Arc<str>, JobInFlight> {
        &self.in_flight
    }

    /// Bytes of the jobs waiting in the in-memory part of queue buffers.
    pub fn buffered_bytes(&self) -> u64 {
        self.dispatch.buffered_bytes
    }

    /// Bytes of the buffers' disk tails.
    pub fn spilled_bytes(&self) -> u64 {
        self.dispatch.spill.bytes()
    }

    /// Where buffers spill past `buffer_memory` (the poll loop gives a
    /// directory-backed store; the default keeps the tails in memory).
    pub fn set_spill(&mut self, spill: Box<dyn spill::SpillStore>) {
        self.dispatch.spill = spill;
    }

    /// The poll loop says whether the disk budget is used up.
    pub fn set_disk_full(&mut self, full: bool) {
        self.dispatch.disk_full = full;
    }

    /// Puts a job in `queue`'s buffer (see [`dispatch::Dispatch::buffer`]).
    fn buffer(&mut self, queue: String, job: WaitingJob, front: bool) {
        if let Err(e) = self.dispatch.buffer(queue, job, front, self.cfg.buffer_memory) {
            // Never lost: kept in memory (the journal has it).
            self.count("spill_errors");
            tracing::error!(error = %e, "cannot spill a buffered job to disk; kept in memory");
        }
    }

    /// Takes the oldest job of `queue`'s buffer (see
    /// [`dispatch::Dispatch::unbuffer`]).
    fn unbuffer(&mut self, queue: &str) -> Option<WaitingJob> {
        let (job, err) = self.dispatch.unbuffer(queue, self.cfg.buffer_memory);
        if let Some(e) = err {
            self.count("spill_errors");
            tracing::error!(error = %e, %queue, "cannot read buffered jobs back from disk");
        }
        job
    }

    /// Jobs waiting in `queue`'s buffer (memory part and disk tail).
    fn queue_len(&self, queue: &str) -> usize {
        self.dispatch.queue_len(queue)
    }

    /// Jobs waiting in any queue.
    pub fn buffered(&self) -> usize {
        self.dispatch.buffered() + self.limits.parked()
    }

    /// Anomaly counters.
    pub fn errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.counters.errors
    }

    /// Counts of normal activity (STATUS `activity`).
    pub fn activity(&self) -> &BTreeMap<&'static str, u64> {
        &self.counters.activity
    }

    /// Per-queue counts.
    pub fn stats(&self) -> &QueueStats {
        &self.telemetry.stats
    }
}

/// Seconds between two points of the dashboard's series.
pub const SERIES_STEP: Duration = Duration::from_secs(10);
/// Points kept: one hour.
const SERIES_POINTS: usize = 360;

/// One point of the dashboard's series: running totals and levels.
#[derive(Debug, Clone, Copy)]
pub struct SeriesPoint {
    pub t: f64,
    pub processed: u64,
    pub failed: u64,
    /// Buffered and delayed jobs.
    pub waiting: u64,
    pub in_flight: u64,
}

/// A send of a new message (fresh msgid) to `peer`.
fn send(socket: SocketKind, peer: &PeerId, command: Command) -> Action {
    Action::Send { socket, peer: peer.clone(), message: Message::new(command) }
}
