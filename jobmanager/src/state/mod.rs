//! The job manager as a pure state machine. [`JobManagerState::handle`]
//! takes one [`Event`] and the time, and appends [`Action`]s for the poll
//! loop to perform. No sockets, no processes, no clock reads: tests drive it
//! with a fake clock.
//!
//! Slot accounting with the router: `announced` counts READYs sent minus
//! REQUESTs received since the last ACK — the router's idea of our free
//! slots. After every change, [`JobManagerState::reconcile`] sends READYs
//! until `announced` matches the idle workers not already spoken for by
//! locally queued jobs. So a READY goes out only after the previous job's
//! REPLY, a replacement worker is announced only once it is up, and a job
//! that arrives while a replacement is starting waits locally instead of
//! being lost.

#[cfg(test)]
mod tests;

use emq_protocol::{
    Command, DecodeError, Headers, Heartbeat, Inform, JobReply, Message, QueueSpec, Reply, Request, RunPayload,
};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The state machine's configuration (from [`crate::JobManagerSettings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JmConfig {
    pub queues: QueueSpec,
    pub workers: usize,
    pub max_job_count: u64,
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

    /// Whether `payload`'s module may run here.
    fn allowed(&self, payload: &RunPayload) -> bool {
        if self.allowed_paths.is_empty() {
            return true;
        }
        let (module, _) = payload.module_and_class();
        self.allowed_paths.iter().any(|p| module == p || module.starts_with(&format!("{p}.")))
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
        error_type: Option<emq_protocol::JobErrorKind>,
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
}

/// What the poll loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Replace the router socket with a new one (new identity) to `addr`.
    Connect { addr: String },
    /// Send a message to the router.
    Send(Message),
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
    pub started: Instant,
    pub deadline: Instant,
    /// Kept so a job the worker gives back unstarted can be sent again.
    payload: String,
    timeout: Duration,
    attempt: u32,
}

/// A job received from the router and not yet running.
#[derive(Debug, Clone)]
struct QueuedJob {
    msgid: String,
    queue: String,
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
    pub spawned: Instant,
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
    stopping: Option<Instant>,
    /// Jobs completed per worker pid (bounded to the most recent pids).
    pub jobs_by_pid: BTreeMap<u32, u64>,
    /// Worker replacements by reason: died, timeout, recycled.
    pub restarts: BTreeMap<&'static str, u64>,
    pub jobs_ok: u64,
    pub jobs_failed: u64,
    /// Moving average of job run time, seconds (drives prefetch).
    pub job_secs_avg: f64,
    /// Anomalies by kind (bad frames, refusals...).
    pub errors: BTreeMap<&'static str, u64>,
}

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
                spawned: now,
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
            jobs_by_pid: BTreeMap::new(),
            restarts: BTreeMap::new(),
            jobs_ok: 0,
            jobs_failed: 0,
            job_secs_avg: 0.0,
            errors: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &JmConfig {
        &self.cfg
    }

    pub fn slots(&self) -> &[WorkerSlot] {
        &self.slots
    }

    pub fn is_acked(&self) -> bool {
        self.phase == Phase::Acked
    }

    /// Handles one event, appending actions to `out`.
    pub fn handle(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        match event {
            Event::Start => {
                self.connect(now, out);
                for slot in 0..self.slots.len() {
                    self.spawn(slot, now, out);
                }
            }
            Event::Router(Ok(m)) => self.on_router(m, now, out),
            Event::Router(Err(e)) => {
                self.last_heard = now;
                *self.errors.entry("bad_router_frame").or_insert(0) += 1;
                warn!(msgid = e.msgid.as_deref().unwrap_or("-"), error = %e.kind, "malformed message from router");
            }
            Event::WorkerUp { slot, pid } => self.on_worker_up(slot, pid, now, out),
            Event::WorkerDone { slot, msgid, reply_json, error_type } => {
                self.on_worker_done(slot, msgid, reply_json, error_type, now, out)
            }
            Event::WorkerStole { slot, msgids } => self.on_worker_stole(slot, msgids, now, out),
            Event::WorkerExited { slot, pid, exit } => self.on_worker_exited(slot, pid, exit, now, out),
            Event::SpawnFailed { slot, error } => {
                warn!(slot, %error, "cannot start worker");
                self.slots[slot].quick_deaths += 1;
                self.slots[slot].state = SlotState::Waiting { respawn_at: now + self.backoff(slot) };
                *self.restarts.entry("spawn_failed").or_insert(0) += 1;
            }
            Event::Tick => self.on_tick(now, out),
            Event::Stop => self.on_stop(now, out),
            Event::Reloaded(cfg) => self.on_reloaded(cfg, now, out),
        }
    }

    /// Convenience for tests.
    pub fn handle_vec(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle(event, now, &mut out);
        out
    }

    // ---- router connection -------------------------------------------------

    fn connect(&mut self, now: Instant, out: &mut Vec<Action>) {
        let addr = self.cfg.addrs[self.addr_index % self.cfg.addrs.len()].clone();
        info!(%addr, "connecting to router");
        out.push(Action::Connect { addr });
        self.announced = 0;
        self.last_heard = now;
        self.send_inform(now, out);
    }

    fn send_inform(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Informing { sent_at: now };
        out.push(Action::Send(Message::new(Command::Inform(Inform {
            queues: self.cfg.queues.clone(),
            kind: "worker".into(),
            // We REPLY for every job: the router can track ours exactly.
            features: Some(emq_protocol::FEATURE_REPORTS_ALL.into()),
        }))));
    }

    fn on_router(&mut self, m: Message, now: Instant, out: &mut Vec<Action>) {
        self.last_heard = now;
        match m.command {
            Command::Ack(_) => {
                if self.phase != Phase::Acked {
                    info!(msgid = %m.msgid, "router acknowledged INFORM");
                    self.phase = Phase::Acked;
                    self.announced = 0;
                    self.reconcile(out);
                }
            }
            Command::Request(request) => self.on_request(m.msgid, request, now, out),
            Command::Heartbeat(_) => {}
            Command::Kbye | Command::Disconnect if self.stopping.is_none() => {
                info!(command = m.command.name(), "router said goodbye: reconnecting");
                self.connect(now, out);
            }
            Command::Kbye | Command::Disconnect => {}
            other => {
                *self.errors.entry("unexpected_router_command").or_insert(0) += 1;
                warn!(msgid = %m.msgid, command = other.name(), "unexpected command from router");
            }
        }
    }

    fn on_request(&mut self, msgid: String, request: Request, now: Instant, out: &mut Vec<Action>) {
        self.announced = self.announced.saturating_sub(1);
        let refuse = |this: &mut Self, kind: &str, message: String, out: &mut Vec<Action>| {
            *this.errors.entry("refused_jobs").or_insert(0) += 1;
            this.jobs_failed += 1;
            warn!(%msgid, queue = %request.queue, error = %message, "job refused");
            this.send_reply(&msgid, JobReply::failed(kind, message, "").to_json(), out);
        };
        match RunPayload::parse(&request.payload) {
            Err(e) => refuse(self, "BadPayload", e.to_string(), out),
            Ok(p) if !self.cfg.allowed(&p) => refuse(
                self,
                "refused",
                format!("module {:?} is not in allowed_paths {:?}", p.module_and_class().0, self.cfg.allowed_paths),
                out,
            ),
            Ok(_) if self.stopping.is_some() && self.idle_slot().is_none() => {
                refuse(self, "refused", "job manager is shutting down".into(), out)
            }
            Ok(_) => {
                debug!(%msgid, queue = %request.queue, "job received");
                let headers = request.headers();
                self.local_queue.push_back(QueuedJob {
                    msgid: msgid.clone(),
                    queue: request.queue,
                    payload: request.payload,
                    timeout: self.cfg.timeout_for(&headers),
                    attempt: headers.attempt.unwrap_or(1),
                });
                self.pump(now, out);
            }
        }
        self.reconcile(out);
    }

    /// Sends READYs until the router's count of our free slots matches the
    /// idle workers not spoken for by locally queued jobs.
    fn reconcile(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Acked || self.stopping.is_some() {
            return;
        }
        let depth = self.cfg.worker_pipeline.max(1) as u64;
        let prefetching = self.job_secs_avg < self.cfg.prefetch_below.as_secs_f64();
        let mut capacity = if prefetching { self.cfg.prefetch as u64 } else { 0 };
        let mut held = self.local_queue.len() as u64;
        for s in self.slots.iter().filter(|s| !s.spare) {
            match s.state {
                SlotState::Idle => capacity += depth,
                SlotState::Busy(_) => {
                    capacity += depth;
                    held += 1 + s.waiting.len() as u64;
                }
                _ => held += s.waiting.len() as u64,
            }
        }
        let available = capacity.saturating_sub(held);
        while self.announced < available {
            self.announced += 1;
            out.push(Action::Send(Message::new(Command::Ready)));
        }
    }

    fn send_reply(&mut self, msgid: &str, reply_json: String, out: &mut Vec<Action>) {
        out.push(Action::Send(Message::new(Command::Reply(Reply::Result {
            reply_json,
            orig_msgid: msgid.to_owned(),
        }))));
    }

    // ---- workers -----------------------------------------------------------

    fn idle_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| !s.spare && matches!(s.state, SlotState::Idle))
    }

    /// Puts a ready spare in place of `slot`, which becomes the spare (and
    /// is restarted as one). Returns whether a spare was ready.
    fn promote_spare(&mut self, slot: usize) -> bool {
        if self.slots[slot].spare {
            return false;
        }
        let Some(spare) = self.slots.iter().position(|s| s.spare && matches!(s.state, SlotState::Idle)) else {
            return false;
        };
        self.slots[spare].spare = false;
        self.slots[slot].spare = true;
        debug!(slot, spare, pid = ?self.slots[spare].pid, "spare worker takes over");
        true
    }

    /// Starts locally queued jobs on idle workers, then queues more behind
    /// running jobs that just started (up to `worker_pipeline`).
    fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        while !self.local_queue.is_empty() {
            if let Some(slot) = self.idle_slot() {
                let job = self.local_queue.pop_front().expect("non-empty");
                self.start(slot, job, now, out);
            } else if let Some(slot) = self.pipeline_slot(now) {
                let job = self.local_queue.pop_front().expect("non-empty");
                debug!(msgid = %job.msgid, slot, "job queued at worker");
                out.push(Action::Run {
                    slot,
                    msgid: job.msgid.clone(),
                    payload: job.payload.clone(),
                    attempt: job.attempt,
                });
                self.slots[slot].waiting.push_back(job);
            } else {
                return;
            }
        }
    }

    /// A busy worker that can take one more job behind its running one:
    /// room in its pipeline, within `max_job_count`, not about to be
    /// recycled, and a running job young enough to be probably short.
    fn pipeline_slot(&self, now: Instant) -> Option<usize> {
        let depth = self.cfg.worker_pipeline.max(1);
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.spare)
            .filter(|(_, s)| match &s.state {
                SlotState::Busy(job) => {
                    1 + s.waiting.len() < depth
                        && !s.recycle_after_job
                        && !s.steal_pending
                        && s.jobs_done + 1 + (s.waiting.len() as u64) < self.cfg.max_job_count
                        && now.saturating_duration_since(job.started) < self.cfg.steal_after
                }
                _ => false,
            })
            .min_by_key(|(_, s)| s.waiting.len())
            .map(|(i, _)| i)
    }

    /// Hands a job to an idle worker.
    fn start(&mut self, slot: usize, job: QueuedJob, now: Instant, out: &mut Vec<Action>) {
        debug!(msgid = %job.msgid, slot, pid = ?self.slots[slot].pid, "job started");
        out.push(Action::Run { slot, msgid: job.msgid.clone(), payload: job.payload.clone(), attempt: job.attempt });
        self.slots[slot].state = SlotState::Busy(JobInFlight {
            msgid: job.msgid,
            queue: job.queue,
            started: now,
            deadline: deadline(now, job.timeout),
            payload: job.payload,
            timeout: job.timeout,
            attempt: job.attempt,
        });
    }

    /// Jobs a worker held but never started go back to the front of the
    /// local queue, in order, to run elsewhere.
    fn requeue_waiting(&mut self, slot: usize) {
        let waiting = std::mem::take(&mut self.slots[slot].waiting);
        self.slots[slot].steal_pending = false;
        for job in waiting.into_iter().rev() {
            self.local_queue.push_front(job);
        }
    }

    fn on_worker_stole(&mut self, slot: usize, msgids: Vec<String>, now: Instant, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        s.steal_pending = false;
        let mut back = Vec::new();
        // The worker may give back the job we took for started (it had
        // finished the one before, and not yet picked this one up): then it
        // is idle, and that job runs again from here.
        if let SlotState::Busy(job) = &s.state {
            if msgids.contains(&job.msgid) {
                back.push(QueuedJob {
                    msgid: job.msgid.clone(),
                    queue: job.queue.clone(),
                    payload: job.payload.clone(),
                    timeout: job.timeout,
                    attempt: job.attempt,
                });
                s.state = SlotState::Idle;
            }
        }
        s.waiting.retain(|j| {
            if msgids.contains(&j.msgid) {
                back.push(j.clone());
                false
            } else {
                true
            }
        });
        debug!(slot, jobs = back.len(), "jobs taken back from a worker busy with a long job");
        for job in back.into_iter().rev() {
            self.local_queue.push_front(job);
        }
        self.pump(now, out);
        self.reconcile(out);
    }

    fn spawn(&mut self, slot: usize, now: Instant, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Starting;
        s.pid = None;
        s.jobs_done = 0;
        s.spawned = now;
        s.recycle_after_job = false;
        s.waiting.clear();
        s.steal_pending = false;
        out.push(Action::Spawn { slot });
    }

    fn backoff(&self, slot: usize) -> Duration {
        let n = self.slots[slot].quick_deaths.min(6);
        Duration::from_millis(100 << n).min(Duration::from_secs(5))
    }

    fn on_worker_up(&mut self, slot: usize, pid: u32, now: Instant, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        s.pid = Some(pid);
        s.quick_deaths = 0;
        if !matches!(s.state, SlotState::Starting) {
            return;
        }
        info!(slot, pid, "worker ready");
        if self.stopping.is_some() && self.local_queue.is_empty() {
            s.state = SlotState::Retiring;
            out.push(Action::Retire { slot });
            return;
        }
        s.state = SlotState::Idle;
        if s.spare {
            return;
        }
        self.pump(now, out);
        self.reconcile(out);
    }

    fn on_worker_done(
        &mut self,
        slot: usize,
        msgid: String,
        reply_json: String,
        error_type: Option<emq_protocol::JobErrorKind>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let s = &mut self.slots[slot];
        let job = match &s.state {
            SlotState::Busy(job) if job.msgid == msgid => job.clone(),
            _ => {
                // A result racing its timeout kill: the timeout reply went.
                debug!(slot, %msgid, "late result ignored");
                return;
            }
        };
        s.jobs_done += 1;
        let pid = s.pid.unwrap_or(0);
        let elapsed = now.saturating_duration_since(job.started);
        self.job_secs_avg = 0.9 * self.job_secs_avg + 0.1 * elapsed.as_secs_f64();
        match &error_type {
            None => {
                self.jobs_ok += 1;
                debug!(%msgid, pid, queue = %job.queue, ?elapsed, "job done");
            }
            Some(kind) => {
                self.jobs_failed += 1;
                info!(%msgid, pid, queue = %job.queue, error_type = %kind, "job failed");
            }
        }
        *self.jobs_by_pid.entry(pid).or_insert(0) += 1;
        if self.jobs_by_pid.len() > PID_HISTORY {
            let oldest = *self.jobs_by_pid.keys().next().expect("non-empty");
            self.jobs_by_pid.remove(&oldest);
        }
        // The reply goes out before this slot can be announced again.
        self.send_reply(&msgid, reply_json, out);
        let s = &mut self.slots[slot];
        if let Some(next) = s.waiting.pop_front() {
            // The worker goes straight on with the job queued behind.
            s.state = SlotState::Busy(JobInFlight {
                msgid: next.msgid,
                queue: next.queue,
                started: now,
                deadline: deadline(now, next.timeout),
                payload: next.payload,
                timeout: next.timeout,
                attempt: next.attempt,
            });
            self.pump(now, out);
            self.reconcile(out);
            return;
        }
        let recycle = s.jobs_done >= self.cfg.max_job_count || s.recycle_after_job;
        let stopping_idle = self.stopping.is_some() && self.local_queue.is_empty();
        if recycle || stopping_idle {
            if recycle && !stopping_idle {
                info!(slot, pid, jobs = s.jobs_done, "worker reached max_job_count: recycling");
                *self.restarts.entry("recycled").or_insert(0) += 1;
            }
            s.state = SlotState::Retiring;
            out.push(Action::Retire { slot });
            if !stopping_idle {
                self.promote_spare(slot);
            }
        } else {
            s.state = SlotState::Idle;
        }
        self.pump(now, out);
        self.reconcile(out);
        self.check_exit(out);
    }

    fn on_worker_exited(&mut self, slot: usize, pid: u32, exit: String, now: Instant, out: &mut Vec<Action>) {
        self.requeue_waiting(slot);
        let previous = std::mem::replace(&mut self.slots[slot].state, SlotState::Gone);
        match previous {
            SlotState::Busy(job) => {
                *self.restarts.entry("died").or_insert(0) += 1;
                self.jobs_failed += 1;
                warn!(slot, pid, msgid = %job.msgid, %exit, "worker died while running a job");
                let reply = JobReply::failed(
                    "worker died",
                    format!("worker pid {pid} died while running the job ({exit})"),
                    "",
                );
                self.send_reply(&job.msgid, reply.to_json(), out);
            }
            SlotState::Idle => {
                *self.restarts.entry("died").or_insert(0) += 1;
                warn!(slot, pid, %exit, "idle worker died");
            }
            SlotState::Starting => {
                *self.restarts.entry("died").or_insert(0) += 1;
                self.slots[slot].quick_deaths += 1;
                warn!(slot, pid, %exit, "worker died while starting");
            }
            SlotState::Retiring | SlotState::Killing { .. } => debug!(slot, pid, %exit, "worker exited"),
            SlotState::Waiting { .. } | SlotState::Gone => {}
        }
        if self.stopping.is_some() {
            if !self.local_queue.is_empty() {
                self.pump(now, out);
            }
            self.check_exit(out);
            return;
        }
        self.promote_spare(slot);
        self.pump(now, out);
        if self.slots[slot].quick_deaths > 0 {
            let at = now + self.backoff(slot);
            self.slots[slot].state = SlotState::Waiting { respawn_at: at };
        } else {
            self.spawn(slot, now, out);
        }
        self.reconcile(out);
    }

    // ---- time --------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Router liveness.
        if self.stopping.is_none() {
            if now.saturating_duration_since(self.last_heard) >= self.cfg.router_silence_limit {
                *self.errors.entry("router_lost").or_insert(0) += 1;
                warn!(silent_for = ?now.saturating_duration_since(self.last_heard), "router silent: reconnecting");
                self.addr_index += 1;
                self.connect(now, out);
            } else if let Phase::Informing { sent_at } = self.phase {
                if now.saturating_duration_since(sent_at) >= self.cfg.reconnect_timeout {
                    debug!("no ACK yet: INFORM again");
                    self.send_inform(now, out);
                }
            }
        }
        if self.phase == Phase::Acked
            && now.saturating_duration_since(self.last_heartbeat) >= self.cfg.heartbeat_interval
        {
            self.last_heartbeat = now;
            let health = self.health_json(now);
            let mut hb = Heartbeat::now();
            hb.health = Some(health);
            out.push(Action::Send(Message::new(Command::Heartbeat(hb))));
        }
        // Job timeouts and kill escalation.
        for slot in 0..self.slots.len() {
            match &self.slots[slot].state {
                SlotState::Busy(job) if now >= job.deadline => {
                    let job = job.clone();
                    let pid = self.slots[slot].pid.unwrap_or(0);
                    let limit = job.deadline.saturating_duration_since(job.started);
                    warn!(slot, pid, msgid = %job.msgid, ?limit, "job timed out: killing its worker");
                    *self.restarts.entry("timeout").or_insert(0) += 1;
                    self.jobs_failed += 1;
                    let reply = JobReply::failed(
                        "timeout",
                        format!("job exceeded its timeout of {:.3} s; worker pid {pid} killed", limit.as_secs_f64()),
                        "",
                    );
                    self.send_reply(&job.msgid, reply.to_json(), out);
                    self.slots[slot].state = SlotState::Killing { since: now, forced: false };
                    out.push(Action::Kill { slot, force: false });
                    self.requeue_waiting(slot);
                    self.promote_spare(slot);
                    self.pump(now, out);
                    self.reconcile(out);
                }
                SlotState::Busy(job)
                    if !self.slots[slot].waiting.is_empty()
                        && !self.slots[slot].steal_pending
                        && now.saturating_duration_since(job.started) >= self.cfg.steal_after =>
                {
                    self.slots[slot].steal_pending = true;
                    out.push(Action::Steal { slot });
                }
                SlotState::Killing { since, forced: false }
                    if now.saturating_duration_since(*since) >= self.cfg.kill_escalation =>
                {
                    let since = *since;
                    self.slots[slot].state = SlotState::Killing { since, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
                SlotState::Waiting { respawn_at } if now >= *respawn_at && self.stopping.is_none() => {
                    self.spawn(slot, now, out);
                }
                _ => {}
            }
        }
        // Shutdown grace over: kill what still runs.
        if let Some(deadline) = self.stopping {
            if now >= deadline {
                self.kill_running("job manager stopped: kill_grace_period over", now, out);
            }
        }
    }

    // ---- stopping and reloading -------------------------------------------

    fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            warn!("second stop signal: stopping now");
            self.kill_running("job manager stopped at once", now, out);
            out.push(Action::Exit(130));
            return;
        }
        let running = self.slots.iter().filter(|s| matches!(s.state, SlotState::Busy(_))).count();
        info!(running, grace = ?self.cfg.kill_grace, "stopping: no new jobs, running jobs may finish");
        self.stopping = Some(now + self.cfg.kill_grace);
        out.push(Action::Send(Message::new(Command::Kbye)));
        // Jobs received but not started will not run: fail them visibly.
        while let Some(job) = self.local_queue.pop_front() {
            self.jobs_failed += 1;
            self.send_reply(&job.msgid, JobReply::failed("refused", "job manager is shutting down", "").to_json(), out);
        }
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                SlotState::Idle | SlotState::Starting => {
                    self.slots[slot].state = SlotState::Retiring;
                    out.push(Action::Retire { slot });
                }
                SlotState::Waiting { .. } => self.slots[slot].state = SlotState::Gone,
                _ => {}
            }
        }
        self.check_exit(out);
    }

    fn kill_running(&mut self, why: &str, now: Instant, out: &mut Vec<Action>) {
        for slot in 0..self.slots.len() {
            match &self.slots[slot].state {
                SlotState::Busy(job) => {
                    let msgid = job.msgid.clone();
                    self.jobs_failed += 1;
                    self.send_reply(&msgid, JobReply::failed("killed", why, "").to_json(), out);
                    for w in std::mem::take(&mut self.slots[slot].waiting) {
                        self.jobs_failed += 1;
                        self.send_reply(&w.msgid, JobReply::failed("killed", why, "").to_json(), out);
                    }
                    self.slots[slot].state = SlotState::Killing { since: now, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
                SlotState::Retiring
                | SlotState::Starting
                | SlotState::Idle
                | SlotState::Killing { forced: false, .. } => {
                    self.slots[slot].state = SlotState::Killing { since: now, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
                _ => {}
            }
        }
    }

    fn check_exit(&mut self, out: &mut Vec<Action>) {
        if self.stopping.is_some() && self.slots.iter().all(|s| matches!(s.state, SlotState::Gone)) {
            // Jobs still queued here will not run: say so.
            while let Some(job) = self.local_queue.pop_front() {
                self.jobs_failed += 1;
                let reply = JobReply::failed("refused", "job manager stopped before the job started", "");
                self.send_reply(&job.msgid, reply.to_json(), out);
            }
            info!("all workers stopped: exiting");
            out.push(Action::Exit(0));
        }
    }

    fn on_reloaded(&mut self, cfg: JmConfig, now: Instant, out: &mut Vec<Action>) {
        let reconnect = cfg.queues != self.cfg.queues || cfg.addrs != self.cfg.addrs;
        info!(reconnect, "settings reloaded");
        if cfg.workers != self.cfg.workers {
            warn!(
                old = self.cfg.workers,
                new = cfg.workers,
                "concurrent_jobs changes need a restart; keeping the old value"
            );
        }
        let workers = self.cfg.workers;
        self.cfg = JmConfig { workers, ..cfg };
        // New Python settings apply to fresh workers: recycle each after its job.
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                SlotState::Idle => {
                    self.slots[slot].state = SlotState::Retiring;
                    out.push(Action::Retire { slot });
                }
                SlotState::Busy(_) => self.slots[slot].recycle_after_job = true,
                _ => {}
            }
        }
        if reconnect {
            self.addr_index = 0;
            self.connect(now, out);
        }
    }

    // ---- health --------------------------------------------------------------

    /// Pool health for the heartbeat's extra frame and the logs.
    pub fn health_json(&self, now: Instant) -> String {
        let workers: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let state = match &s.state {
                    SlotState::Starting => "starting",
                    SlotState::Idle => "idle",
                    SlotState::Busy(_) => "busy",
                    SlotState::Retiring => "retiring",
                    SlotState::Killing { .. } => "killing",
                    SlotState::Waiting { .. } => "waiting",
                    SlotState::Gone => "gone",
                };
                json!({"slot": i, "pid": s.pid, "state": state, "jobs": s.jobs_done, "queued": s.waiting.len(), "spare": s.spare})
            })
            .collect();
        let in_flight: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Busy(j) => Some(json!({
                    "msgid": j.msgid, "pid": s.pid, "queue": j.queue,
                    "age_secs": now.saturating_duration_since(j.started).as_secs_f64(),
                })),
                _ => None,
            })
            .collect();
        json!({
            "workers": workers,
            "in_flight": in_flight,
            "queued_locally": self.local_queue.len(),
            "jobs_by_pid": self.jobs_by_pid,
            "restarts": self.restarts,
            "jobs_ok": self.jobs_ok,
            "jobs_failed": self.jobs_failed,
            "errors": self.errors,
        })
        .to_string()
    }
}
