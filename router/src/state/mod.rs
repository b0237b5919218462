//! The router as a pure state machine: [`RouterState::handle`] takes one
//! [`Event`] and the current time ([`Now`], injected so tests can run a fake
//! clock) and appends the [`Action`]s to perform. No sockets, no clock reads.
//!
//! The path of one job: a client's REQUEST arrives on the frontend → its
//! queue is resolved ([`queues`]) → a free [`WorkerSlot`] is picked (highest
//! weight, least recently used) and the REQUEST is forwarded unchanged, or
//! the job waits in the queue's buffer (bounded by `hwm`, else refused) → a
//! receipt goes to the client either way → the job manager's REPLY retires
//! the [`JobInFlight`] and, for `reply-requested` jobs, is forwarded to the
//! client → its READY frees the slot, which takes the oldest waiting job.

mod admin;
mod history;
mod queues;
#[cfg(test)]
mod tests;

use emq_protocol::{
    Ack, AdminCommand, Command, DecodeError, DecodeErrorKind, Heartbeat, Inform, JobErrorKind, JobReply, Message, QueueSpec, Reply,
    Request, DEFAULT_QUEUE,
};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub use admin::EVENTMQ_STATUS_KEYS;
pub use history::{AttemptError, JobHistory, JobRecord, JobState};
pub use queues::QueueState;

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
    /// A message (or an undecodable one) from `peer` on `socket`.
    Received { socket: SocketKind, peer: PeerId, message: Result<Message, DecodeError> },
    /// A send to `peer` failed because the peer is gone; the message is
    /// handed back so a job in it can go elsewhere.
    Unreachable { socket: SocketKind, peer: PeerId, message: Message },
    /// Time passed: heartbeats to send, silent peers to expire.
    Tick,
}

/// Something the poll loop must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send {
        socket: SocketKind,
        peer: PeerId,
        message: Message,
    },
    /// Drop anything still queued for this peer (it was forgotten; its jobs
    /// were requeued or failed, so late delivery would run them twice).
    Forget {
        socket: SocketKind,
        peer: PeerId,
    },
    /// Stop the router (after the sends before it).
    Shutdown,
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

/// The state machine's tunables (from [`crate::RouterSettings`]).
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
}

impl From<&crate::RouterSettings> for RouterConfig {
    fn from(s: &crate::RouterSettings) -> Self {
        RouterConfig {
            heartbeat_interval: s.heartbeat_interval(),
            heartbeat_timeout: s.heartbeat_timeout(),
            hwm: s.hwm,
            job_history: s.job_history,
            retry_delay: Duration::from_secs_f64(s.retry_delay.max(0.0)),
            retry_multiplier: s.retry_multiplier.max(1.0),
            dead_letter_max: s.dead_letter_max,
            reject_unknown_queues: s.reject_unknown_queues,
        }
    }
}

/// A connected job manager: its queues and free slots (one per READY).
#[derive(Debug)]
pub struct WorkerSlot {
    pub queues: QueueSpec,
    /// READYs received minus jobs handed out.
    pub free_slots: u32,
    pub last_seen: Instant,
    /// Monotonic "last time a job went here", for least-recently-used order.
    pub last_used: u64,
    /// Jobs handed to it and not yet reported done.
    pub in_flight: usize,
    /// Msgids of jobs without `reply-requested` handed to it, oldest first,
    /// kept only until it proves it reports every job (EventMQ's job manager
    /// does not; for it a READY retires the oldest of these).
    pub unreported: VecDeque<Arc<str>>,
    /// Set once it reports a job that did not ask for a reply: then it is
    /// one of ours, which reports every job. EventMQ's job manager does not,
    /// so for it a READY retires its oldest unreported job.
    pub reports_all_completions: bool,
    /// Wall-clock seconds of its last heartbeat, as it sent them.
    pub last_heartbeat: Option<String>,
    /// Our extension: the pool health JSON of its last heartbeat.
    pub health: Option<String>,
    /// The dispatch counter at its previous READY: only jobs handed out
    /// before that READY can have been finished by its next one.
    pub last_ready_seq: u64,
    pub processed: u64,
    /// Said KBYE: gets no new jobs; forgotten once its running jobs report.
    pub leaving: bool,
}

/// A connected scheduler.
#[derive(Debug)]
pub struct SchedulerPeer {
    pub last_seen: Instant,
}

/// A job handed to a job manager and not yet reported done.
#[derive(Debug)]
pub struct JobInFlight {
    pub client: PeerId,
    pub worker: PeerId,
    /// The queue it was dispatched from (after fallback to `default`).
    pub queue: String,
    pub received: Instant,
    pub dispatched: Instant,
    pub reply_requested: bool,
    pub guarantee: bool,
    /// Times it was handed out (1 on first dispatch).
    pub attempts: u32,
    /// Kept for `guarantee` and `retry-count` jobs: to requeue, retry or
    /// keep as a dead letter.
    pub request: Option<StoredRequest>,
    /// Retries allowed (`retry-count:N`; 0 when absent).
    pub retry_count: u32,
    /// The client asked us to take care of it (`guarantee` or
    /// `retry-count`): a final failure becomes a dead letter.
    pub keep: bool,
    /// Value of the router's dispatch counter when it was handed out.
    pub dispatch_seq: u64,
}

/// A job waiting for a free slot. Kept compact (boxed frames, a msgid
/// shared with its in-flight and history records): a router may hold a
/// million of these.
#[derive(Debug)]
pub struct WaitingJob {
    pub client: PeerId,
    pub msgid: Arc<str>,
    pub request: StoredRequest,
    /// Milliseconds since the router started (4 bytes, not a 16-byte Instant).
    pub received_ms: u32,
    pub attempts: u32,
}

/// A REQUEST's three body frames, stored exactly as received (forwarded
/// byte-identical), in exact-size boxes. The queue name is only stored when
/// it differs from the queue the job waits in (a fallback to `default`).
#[derive(Debug, Clone)]
pub struct StoredRequest {
    pub queue: Option<Box<str>>,
    pub headers: Box<str>,
    pub payload: Box<str>,
}

impl StoredRequest {
    /// Stores `r`, which is going to wait in (or be sent from) `resolved`.
    pub fn new(r: Request, resolved: &str) -> Self {
        let queue = (r.queue != resolved).then(|| r.queue.into_boxed_str());
        StoredRequest { queue, headers: r.headers.into(), payload: r.payload.into() }
    }

    /// The REQUEST as it was received; `resolved` is its queue here.
    pub fn into_request(self, resolved: &str) -> Request {
        Request {
            queue: self.queue.map_or_else(|| resolved.to_owned(), String::from),
            headers: self.headers.into(),
            payload: self.payload.into(),
        }
    }

    /// The queue name the client asked for.
    pub fn queue<'a>(&'a self, resolved: &'a str) -> &'a str {
        self.queue.as_deref().unwrap_or(resolved)
    }

    pub fn headers(&self) -> emq_protocol::Headers {
        emq_protocol::Headers::parse(&self.headers)
    }
}

/// A job that used up its retries (or a lost `guarantee`d job past them),
/// kept for `emq-cli dead` and `REQUEUE`.
#[derive(Debug)]
pub struct DeadLetter {
    pub msgid: Arc<str>,
    pub client: PeerId,
    pub queue: String,
    pub request: StoredRequest,
    pub attempts: u32,
    pub error_type: String,
    pub error_message: String,
    /// Unix seconds.
    pub at: f64,
}

/// A job manager removed for silence, remembered for display.
#[derive(Debug)]
pub struct StaleJobManager {
    pub queues: QueueSpec,
    pub last_seen: Instant,
    pub health: Option<String>,
    pub processed: u64,
}

/// Per-queue latency figures for STATUS (seconds from receipt to done).
#[derive(Debug, Default, Clone)]
pub struct LatencyStats {
    pub count: u64,
    pub sum: f64,
    pub max: f64,
}

/// The whole router state.
pub struct RouterState {
    cfg: RouterConfig,
    started: Instant,
    workers: HashMap<PeerId, WorkerSlot>,
    schedulers: HashMap<PeerId, SchedulerPeer>,
    queues: HashMap<String, QueueState>,
    in_flight: HashMap<Arc<str>, JobInFlight>,
    /// Resolved queue names, shared by every record that names them.
    queue_names: HashMap<String, Arc<str>>,
    lru_clock: u64,
    last_heartbeat_sent: Option<Instant>,
    /// When the next [`Event::Tick`] is due (advanced by every tick).
    next_tick_at: Instant,
    processed_by_queue: HashMap<String, u64>,
    latency_by_queue: HashMap<String, LatencyStats>,
    failed_by_queue: HashMap<String, u64>,
    retried_by_queue: HashMap<String, u64>,
    refused_by_queue: HashMap<String, u64>,
    /// Bad input and other anomalies, by kind (shown in STATUS `errors`).
    errors: BTreeMap<&'static str, u64>,
    /// Jobs accepted from clients.
    accepted: u64,
    history: JobHistory,
    /// Failed jobs waiting for their retry, by due time.
    delayed: std::collections::BTreeMap<(Instant, u64), (String, WaitingJob)>,
    delayed_seq: u64,
    /// Jobs that used up their retries (bounded, oldest dropped first).
    dead: VecDeque<DeadLetter>,
    /// Prometheus counters and latency histograms.
    pub(crate) metrics: crate::metrics::RouterMetrics,
    /// Job managers that stopped heartbeating: shown as stale for a while
    /// after they were removed, then gone.
    stale: HashMap<PeerId, StaleJobManager>,
    /// The last final failures, for the dashboard.
    recent_failures: VecDeque<serde_json::Value>,
    shutting_down: bool,
}

impl RouterState {
    pub fn new(cfg: RouterConfig, now: Now) -> Self {
        RouterState {
            cfg: cfg.clone(),
            started: now.mono,
            workers: HashMap::default(),
            schedulers: HashMap::default(),
            queues: HashMap::default(),
            in_flight: HashMap::default(),
            queue_names: HashMap::default(),
            lru_clock: 0,
            last_heartbeat_sent: None,
            next_tick_at: now.mono,
            processed_by_queue: HashMap::default(),
            latency_by_queue: HashMap::default(),
            failed_by_queue: HashMap::default(),
            retried_by_queue: HashMap::default(),
            refused_by_queue: HashMap::default(),
            errors: BTreeMap::new(),
            accepted: 0,
            history: JobHistory::new(cfg.job_history),
            delayed: Default::default(),
            delayed_seq: 0,
            dead: VecDeque::new(),
            metrics: Default::default(),
            stale: HashMap::default(),
            recent_failures: VecDeque::new(),
            shutting_down: false,
        }
    }

    /// Handles one event, appending what to do to `out`.
    pub fn handle(&mut self, event: Event, now: Now, out: &mut Vec<Action>) {
        match event {
            Event::Received { socket, peer, message: Err(e) } => self.on_decode_error(socket, &peer, e, out),
            Event::Received { socket: SocketKind::Frontend, peer, message: Ok(m) } => {
                self.on_frontend(peer, m, now, out)
            }
            Event::Received { socket: SocketKind::Backend, peer, message: Ok(m) } => self.on_backend(peer, m, now, out),
            Event::Received { socket: SocketKind::Admin, peer, message: Ok(m) } => self.on_admin(peer, m, now, out),
            Event::Unreachable { socket, peer, message } => self.on_unreachable(socket, peer, message, now, out),
            Event::Tick => self.on_tick(now, out),
        }
    }

    /// New settings from a SIGHUP reload, already validated. Bounds that
    /// shrink apply from now on (a smaller `job_history` drops the oldest
    /// records; jobs already buffered past a smaller `hwm` stay).
    pub fn reload(&mut self, cfg: RouterConfig) {
        self.history.set_cap(cfg.job_history);
        self.cfg = cfg;
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

    /// When the next [`Event::Tick`] is due.
    pub fn next_tick(&self) -> Instant {
        match self.delayed.keys().next() {
            Some((due, _)) => self.next_tick_at.min(*due),
            None => self.next_tick_at,
        }
    }

    /// Ticks often enough to check expiry at a fraction of the timeout and
    /// to send heartbeats on time, and no more often.
    fn tick_period(&self) -> Duration {
        let t = self.cfg.heartbeat_interval.min(self.cfg.heartbeat_timeout / 4);
        t.clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    fn count(&mut self, what: &'static str) {
        *self.errors.entry(what).or_insert(0) += 1;
    }

    // ---- bad input -------------------------------------------------------

    fn on_decode_error(&mut self, socket: SocketKind, peer: &PeerId, e: DecodeError, out: &mut Vec<Action>) {
        let kind = match &e.kind {
            DecodeErrorKind::TooFewFrames { .. } => "too_few_frames",
            DecodeErrorKind::MissingDelimiter => "missing_delimiter",
            DecodeErrorKind::BadVersion(_) => "bad_protocol_version",
            DecodeErrorKind::NotUtf8(_) => "not_utf8",
            DecodeErrorKind::TrailingFrames(_) => "trailing_frames",
            DecodeErrorKind::BadJson { .. } => "bad_json",
            DecodeErrorKind::EmptyMsgid => "empty_msgid",
        };
        self.count(kind);
        warn!(?socket, %peer, msgid = e.msgid.as_deref().unwrap_or("-"), command = e.command.as_deref().unwrap_or("-"),
              error = %e.kind, "malformed message");
        // Any frame is still a sign of life.
        let Some(msgid) = e.msgid.clone() else { return };
        match socket {
            SocketKind::Frontend => {
                self.count("refused");
                let reply = JobReply::failed("refused", format!("malformed message: {}", e.kind), "");
                out.push(send(
                    socket,
                    peer,
                    Command::Reply(Reply::Result { reply_json: reply.to_json(), orig_msgid: msgid }),
                ));
            }
            SocketKind::Admin => {
                let body = serde_json::json!({"error": format!("malformed message: {}", e.kind)}).to_string();
                out.push(send(socket, peer, Command::Reply(Reply::admin_answer(body))));
            }
            SocketKind::Backend => {}
        }
    }

    // ---- frontend: clients and schedulers --------------------------------

    fn on_frontend(&mut self, peer: PeerId, m: Message, now: Now, out: &mut Vec<Action>) {
        if let Some(s) = self.schedulers.get_mut(&peer) {
            s.last_seen = now.mono;
        }
        match m.command {
            Command::Request(request) => self.on_request(peer, m.msgid, request, now, out),
            Command::Inform(Inform { kind, .. }) if kind == "scheduler" => {
                info!(%peer, msgid = %m.msgid, "scheduler connected");
                self.schedulers.insert(peer.clone(), SchedulerPeer { last_seen: now.mono });
                out.push(send(SocketKind::Frontend, &peer, Command::Ack(Ack { acked_msgid: m.msgid })));
            }
            Command::Heartbeat(_) => {}
            Command::Admin(AdminCommand::JobStatus { job_msgid }) => {
                // Clients may ask too; the answer is one JSON frame (a receipt's
                // body is a msgid, never JSON, so the two cannot be confused).
                let body = self.history.status_json(&job_msgid);
                out.push(send(SocketKind::Frontend, &peer, Command::Reply(Reply::admin_answer(body))));
            }
            Command::Kbye => {
                if self.schedulers.remove(&peer).is_some() {
                    info!(%peer, "scheduler said goodbye");
                }
            }
            Command::Schedule(_) | Command::Unschedule(_) => {
                // Hand the order to a scheduler, unchanged, as EventMQ does.
                let target = self.schedulers.keys().min().cloned();
                match target {
                    Some(s) => out.push(Action::Send { socket: SocketKind::Frontend, peer: s, message: m }),
                    None => {
                        self.count("no_scheduler");
                        warn!(%peer, msgid = %m.msgid, "SCHEDULE with no scheduler connected");
                        let reply = JobReply::failed("refused", "no scheduler connected", "");
                        out.push(send(
                            SocketKind::Frontend,
                            &peer,
                            Command::Reply(Reply::Result { reply_json: reply.to_json(), orig_msgid: m.msgid }),
                        ));
                    }
                }
            }
            other => {
                self.count("unexpected_frontend_command");
                warn!(%peer, msgid = %m.msgid, command = other.name(), "unexpected command on frontend");
                let reply =
                    JobReply::failed("refused", format!("unexpected command {} on the frontend", other.name()), "");
                out.push(send(
                    SocketKind::Frontend,
                    &peer,
                    Command::Reply(Reply::Result { reply_json: reply.to_json(), orig_msgid: m.msgid }),
                ));
            }
        }
    }

    fn on_request(&mut self, client: PeerId, msgid: String, request: Request, now: Now, out: &mut Vec<Action>) {
        if self.cfg.reject_unknown_queues
            && !self.queues.get(request.queue.as_str()).is_some_and(|q| q.ever_served)
            && self.queues.get(DEFAULT_QUEUE).is_none_or(|q| q.workers.is_empty())
        {
            self.count("refused");
            self.count("refused_unknown_queue");
            self.metrics.refused.with_label_values(&[request.queue.as_str()]).inc();
            *self.refused_by_queue.entry(request.queue.clone()).or_insert(0) += 1;
            warn!(peer = %client, %msgid, queue = %request.queue, "unknown queue and no default job manager: job refused");
            let reply = JobReply::failed(
                "refused",
                format!("unknown queue {:?} and no job manager serves {DEFAULT_QUEUE:?}", request.queue),
                "",
            );
            out.push(send(
                SocketKind::Frontend,
                &client,
                Command::Reply(Reply::Result { reply_json: reply.to_json(), orig_msgid: msgid }),
            ));
            return;
        }
        if self.in_flight.contains_key(msgid.as_str())
            || self.history.get(&msgid).is_some_and(|r| matches!(r.state, JobState::Queued | JobState::Retrying))
        {
            self.count("refused");
            self.count("refused_duplicate_msgid");
            warn!(peer = %client, %msgid, "REQUEST reuses the msgid of a job not finished yet: refused");
            let reply =
                JobReply::failed("refused", format!("msgid {msgid} is already in use by an unfinished job"), "");
            out.push(send(
                SocketKind::Frontend,
                &client,
                Command::Reply(Reply::Result { reply_json: reply.to_json(), orig_msgid: msgid }),
            ));
            return;
        }
        self.accepted += 1;
        let queue = self.resolve_queue(&request.queue);
        self.metrics.accepted.with_label_values(&[queue.as_str()]).inc();
        let msgid_shared: Arc<str> = Arc::from(msgid.as_str());
        let queue_name = self.queue_name(&queue);
        self.history.insert(
            msgid_shared.clone(),
            JobRecord {
                queue: queue_name,
                state: JobState::Queued,
                worker: None,
                received: now.unix,
                dispatched: None,
                finished: None,
                attempts: 0,
                result: None,
                attempt_errors: Vec::new(),
            },
        );
        let job = WaitingJob {
            client: client.clone(),
            msgid: msgid_shared,
            request: StoredRequest::new(request, &queue),
            received_ms: self.stamp(now.mono),
            attempts: 0,
        };
        if let Some(worker) = self.pick_worker(&queue) {
            self.dispatch(worker, queue, job, now, out);
        } else {
            let hwm = self.cfg.hwm;
            let q = self.queues.entry(queue.clone()).or_default();
            if q.waiting.len() >= hwm {
                self.accepted -= 1;
                self.count("refused");
                self.metrics.refused.with_label_values(&[queue.as_str()]).inc();
                *self.refused_by_queue.entry(queue.clone()).or_insert(0) += 1;
                warn!(peer = %client, %msgid, %queue, hwm, "queue buffer full: job refused");
                let reply = JobReply::failed("refused", format!("queue {queue:?} is full ({hwm} jobs waiting)"), "");
                if let Some(r) = self.history.get_mut(&msgid) {
                    r.state = JobState::Refused;
                    r.finished = Some(now.unix);
                    r.result = Some(reply.to_json());
                }
                out.push(send(
                    SocketKind::Frontend,
                    &client,
                    Command::Reply(Reply::Result { reply_json: reply.to_json(), orig_msgid: msgid }),
                ));
                return;
            }
            debug!(%msgid, %queue, "no free slot: job buffered");
            q.waiting.push_back(job);
        }
        out.push(send(SocketKind::Frontend, &client, Command::Reply(Reply::receipt(msgid))));
    }

    /// The queue a REQUEST for `name` goes to: its own when it is (or was)
    /// served by a job manager, else `default` (EventMQ's fallback).
    fn resolve_queue(&self, name: &str) -> String {
        match self.queues.get(name) {
            Some(q) if q.ever_served => name.to_owned(),
            _ => DEFAULT_QUEUE.to_owned(),
        }
    }

    /// A job handed out earlier, waiting again (requeue, retry) with
    /// `attempts` dispatches behind it.
    fn waiting_again(&self, msgid: Arc<str>, job: &JobInFlight, request: StoredRequest, attempts: u32) -> WaitingJob {
        WaitingJob { client: job.client.clone(), msgid, request, received_ms: self.stamp(job.received), attempts }
    }

    /// `t` as milliseconds since the router started (saturating at ~49 days
    /// of age, which only affects latency figures).
    fn stamp(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.started).as_millis().min(u32::MAX as u128) as u32
    }

    /// The shared name of a resolved queue (served queues and `default`:
    /// a bounded set).
    fn queue_name(&mut self, queue: &str) -> Arc<str> {
        if let Some(n) = self.queue_names.get(queue) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(queue);
        self.queue_names.insert(queue.to_owned(), n.clone());
        n
    }

    /// Highest weight first, least recently used among equals.
    fn pick_worker(&self, queue: &str) -> Option<PeerId> {
        let q = self.queues.get(queue)?;
        let mut best: Option<(u32, u64, &PeerId)> = None;
        for (weight, peer) in &q.workers {
            let Some(w) = self.workers.get(peer) else { continue };
            if w.free_slots == 0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bw, bu, _)) => *weight > bw || (*weight == bw && w.last_used < bu),
            };
            if better {
                best = Some((*weight, w.last_used, peer));
            }
        }
        best.map(|(_, _, p)| p.clone())
    }

    fn dispatch(&mut self, worker: PeerId, queue: String, job: WaitingJob, now: Now, out: &mut Vec<Action>) {
        self.lru_clock += 1;
        let w = self.workers.get_mut(&worker).expect("picked worker exists");
        w.free_slots -= 1;
        w.last_used = self.lru_clock;
        w.in_flight += 1;
        let headers = job.request.headers();
        if !w.reports_all_completions && !headers.reply_requested {
            w.unreported.push_back(job.msgid.clone());
        }
        debug!(msgid = %job.msgid, %queue, worker = %worker, "dispatched");
        let queue_for_send = queue.clone();
        let mut job = job;
        if job.attempts >= 1 {
            // A re-run says which attempt it is (readable by the job as
            // emq.attempt); the first dispatch stays byte-identical.
            let kept: Vec<&str> =
                job.request.headers.split(',').filter(|h| !h.is_empty() && !h.starts_with("attempt:")).collect();
            let mut h = kept.join(",");
            if !h.is_empty() {
                h.push(',');
            }
            h.push_str(&format!("attempt:{}", job.attempts + 1));
            job.request.headers = h.into_boxed_str();
        }
        if let Some(r) = self.history.get_mut(&job.msgid) {
            r.state = JobState::Dispatched;
            r.worker = Some(worker.clone());
            r.dispatched = Some(now.unix);
            r.attempts = job.attempts + 1;
            if *r.queue != *queue {
                r.queue = self.queue_names.get(queue.as_str()).cloned().unwrap_or_else(|| Arc::from(queue.as_str()));
            }
        }
        let received = self.started + Duration::from_millis(job.received_ms as u64);
        self.metrics
            .latency
            .with_label_values(&[queue.as_str(), "start"])
            .observe(now.mono.saturating_duration_since(received).as_secs_f64());
        self.in_flight.insert(
            job.msgid.clone(),
            JobInFlight {
                client: job.client,
                worker: worker.clone(),
                queue,
                received: self.started + Duration::from_millis(job.received_ms as u64),
                dispatched: now.mono,
                reply_requested: headers.reply_requested,
                guarantee: headers.guarantee,
                attempts: job.attempts + 1,
                request: (headers.guarantee || headers.retry_count.is_some()).then(|| job.request.clone()),
                retry_count: headers.retry_count.unwrap_or(0),
                keep: headers.guarantee || headers.retry_count.is_some(),
                dispatch_seq: self.lru_clock,
            },
        );
        out.push(Action::Send {
            socket: SocketKind::Backend,
            peer: worker,
            message: Message::with_msgid(
                job.msgid.to_string(),
                Command::Request(job.request.into_request(&queue_for_send)),
            ),
        });
    }

    /// Hands waiting jobs to `worker` while it has free slots.
    fn drain_to(&mut self, worker: &PeerId, now: Now, out: &mut Vec<Action>) {
        loop {
            let Some(w) = self.workers.get(worker) else { return };
            if w.free_slots == 0 {
                return;
            }
            // Its queues, highest weight first.
            let mut order: Vec<&(u32, String)> = w.queues.0.iter().collect();
            order.sort_by(|a, b| b.0.cmp(&a.0));
            let found = order
                .iter()
                .find_map(|(_, name)| self.queues.get(name).filter(|q| !q.waiting.is_empty()).map(|_| name.clone()));
            let Some(queue) = found else { return };
            let job = self.queues.get_mut(&queue).and_then(|q| q.waiting.pop_front()).expect("non-empty");
            self.dispatch(worker.clone(), queue, job, now, out);
        }
    }

    /// Puts a job back at the front of its queue and hands it out if a slot
    /// is free anywhere.
    fn requeue(&mut self, queue: String, job: WaitingJob, now: Now, out: &mut Vec<Action>) {
        if let Some(worker) = self.pick_worker(&queue) {
            self.dispatch(worker, queue, job, now, out);
        } else {
            self.queues.entry(queue).or_default().waiting.push_front(job);
        }
    }

    // ---- backend: job managers -------------------------------------------

    fn on_backend(&mut self, peer: PeerId, m: Message, now: Now, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&peer) {
            w.last_seen = now.mono;
        }
        match m.command {
            Command::Inform(inform) if inform.kind != "worker" => {
                // EventMQ's router ignores other kinds too; only a job
                // manager that says so gets slots and jobs.
                self.count("bad_inform_kind");
                warn!(%peer, msgid = %m.msgid, kind = %inform.kind, "INFORM on the backend without kind \"worker\": ignored");
            }
            Command::Inform(inform) => self.on_inform(peer, m.msgid, inform, now, out),
            Command::Ready => self.on_ready(peer, m.msgid, now, out),
            Command::Reply(Reply::Result { reply_json, orig_msgid }) => {
                self.on_job_done(Some(&peer), m.msgid, reply_json, orig_msgid, now, out)
            }
            Command::Heartbeat(hb) => {
                if let Some(w) = self.workers.get_mut(&peer) {
                    w.last_heartbeat = Some(hb.timestamp);
                    if hb.health.is_some() {
                        w.health = hb.health;
                    }
                } else {
                    self.count("heartbeat_from_unknown_peer");
                    debug!(%peer, "heartbeat from unknown job manager");
                }
            }
            Command::Kbye => self.on_worker_kbye(&peer, now, out),
            other => {
                self.count("unexpected_backend_command");
                warn!(%peer, msgid = %m.msgid, command = other.name(), "unexpected command on backend");
            }
        }
    }

    fn on_inform(&mut self, peer: PeerId, msgid: String, inform: Inform, now: Now, out: &mut Vec<Action>) {
        if self.workers.contains_key(&peer) {
            // Same identity again: start over, as for a new peer.
            self.remove_worker(&peer, "re-INFORMed", now, out);
        }
        self.stale.remove(&peer);
        let reports_all = inform.has_feature(emq_protocol::FEATURE_REPORTS_ALL);
        let queues = if inform.queues.is_empty() { QueueSpec::default_queues() } else { inform.queues };
        info!(%peer, %msgid, queues = %queues.to_wire(), "job manager connected");
        for (weight, name) in &queues.0 {
            let newly_served = !self.queues.get(name).is_some_and(|q| q.ever_served);
            let q = self.queues.entry(name.clone()).or_default();
            q.ever_served = true;
            q.workers.push((*weight, peer.clone()));
            if newly_served && name != DEFAULT_QUEUE {
                // Jobs for this queue that fell back to `default` while
                // nobody served it now wait where they were sent.
                self.adopt_from_default(name);
            }
        }
        self.workers.insert(
            peer.clone(),
            WorkerSlot {
                queues,
                free_slots: 0,
                last_seen: now.mono,
                last_used: 0,
                in_flight: 0,
                unreported: VecDeque::new(),
                reports_all_completions: reports_all,
                last_heartbeat: None,
                health: None,
                last_ready_seq: self.lru_clock,
                processed: 0,
                leaving: false,
            },
        );
        out.push(send(SocketKind::Backend, &peer, Command::Ack(Ack { acked_msgid: msgid })));
    }

    fn adopt_from_default(&mut self, name: &str) {
        let Some(default) = self.queues.get_mut(DEFAULT_QUEUE) else { return };
        if !default.waiting.iter().any(|j| j.request.queue(DEFAULT_QUEUE) == name) {
            return;
        }
        let (mine, rest): (VecDeque<WaitingJob>, VecDeque<WaitingJob>) =
            std::mem::take(&mut default.waiting).into_iter().partition(|j| j.request.queue(DEFAULT_QUEUE) == name);
        default.waiting = rest;
        let n = mine.len();
        // In their own queue the name need not be stored any more.
        let mine = mine.into_iter().map(|mut j| {
            j.request.queue = None;
            j
        });
        self.queues.get_mut(name).expect("just created").waiting.extend(mine);
        info!(queue = name, jobs = n, "moved waiting jobs from default to their own queue");
    }

    fn on_ready(&mut self, peer: PeerId, msgid: String, now: Now, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&peer) else {
            self.count("ready_from_unknown_peer");
            warn!(%peer, %msgid, "READY from unknown job manager (no INFORM yet): ignored");
            return;
        };
        if !w.leaving {
            w.free_slots += 1;
        }
        let mut retired = None;
        if !w.reports_all_completions {
            // EventMQ's job manager reports only reply-requested jobs; its
            // READY after a job is the only sign that a job ended.
            // Only a job handed out before its previous READY can be the
            // one this READY reports (its first READYs announce workers).
            while let Some(id) = w.unreported.front() {
                match self.in_flight.get(id) {
                    Some(j) if j.worker == peer && j.dispatch_seq <= w.last_ready_seq => {
                        w.in_flight = w.in_flight.saturating_sub(1);
                        w.processed += 1;
                        retired = w.unreported.pop_front();
                        break;
                    }
                    Some(j) if j.worker == peer => break,
                    _ => {
                        w.unreported.pop_front();
                    }
                }
            }
        }
        w.last_ready_seq = self.lru_clock;
        let (leaving, idle) = (w.leaving, w.in_flight == 0);
        if let Some(id) = retired {
            if let Some(job) = self.in_flight.remove(&id) {
                self.record_done(&job, now);
            }
            if let Some(r) = self.history.get_mut(&id) {
                r.state = JobState::Done;
                r.finished = Some(now.unix);
            }
        }
        if leaving {
            if idle {
                self.remove_worker(&peer, "finished its last job after KBYE", now, out);
            }
            return;
        }
        self.drain_to(&peer, now, out);
    }

    /// KBYE from a job manager: no new jobs for it, but the jobs it is
    /// running may still report (a draining shutdown); it is forgotten once
    /// they have, or when it stops heartbeating.
    fn on_worker_kbye(&mut self, peer: &PeerId, now: Now, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(peer) else { return };
        info!(%peer, jobs_in_flight = w.in_flight, "job manager said goodbye");
        w.leaving = true;
        w.free_slots = 0;
        for q in self.queues.values_mut() {
            q.workers.retain(|(_, p)| p != peer);
        }
        if w.in_flight == 0 {
            self.remove_worker(peer, "said KBYE", now, out);
        }
    }

    fn on_job_done(
        &mut self,
        from: Option<&PeerId>,
        reply_msgid: String,
        reply_json: String,
        orig_msgid: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(job) = self.in_flight.remove(orig_msgid.as_str()) else {
            self.count("reply_for_unknown_job");
            warn!(peer = ?from.map(|p| p.to_string()), msgid = %reply_msgid, %orig_msgid, "REPLY for a job not in flight: ignored");
            return;
        };
        if let Some(w) = self.workers.get_mut(&job.worker) {
            w.in_flight = w.in_flight.saturating_sub(1);
            w.processed += 1;
            if !job.reply_requested && !w.reports_all_completions {
                w.reports_all_completions = true;
                w.unreported = VecDeque::new();
            }
            if w.leaving && w.in_flight == 0 {
                let worker = job.worker.clone();
                self.remove_worker(&worker, "finished its last job after KBYE", now, out);
            }
        }
        // Only a reply that mentions "error" is parsed to tell.
        let error = if reply_json.contains("\"error\"") {
            JobReply::from_json(&reply_json).ok().and_then(|r| r.error).map(|e| (e.kind, e.message))
        } else {
            None
        };
        let id: Arc<str> = Arc::from(orig_msgid.as_str());
        self.conclude(id, job, reply_json, error, now, out);
    }

    /// The end of one attempt: a failure with retries left is scheduled
    /// again (after `retry_delay × retry_multiplier^(attempt-1)`); a final
    /// failure of a job the client asked us to keep becomes a dead letter;
    /// the final outcome (only) goes to a `reply-requested` client.
    fn conclude(
        &mut self,
        id: Arc<str>,
        job: JobInFlight,
        reply_json: String,
        error: Option<(JobErrorKind, String)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if let Some((kind, message)) = &error {
            if let Some(r) = self.history.get_mut(&id) {
                r.attempt_errors.push(AttemptError {
                    attempt: job.attempts,
                    kind: kind.to_string(),
                    message: message.clone(),
                    at: now.unix,
                });
            }
            if job.request.is_some() && job.attempts <= job.retry_count {
                let factor = self.cfg.retry_multiplier.powi((job.attempts as i32 - 1).min(30));
                let delay = Duration::try_from_secs_f64(self.cfg.retry_delay.as_secs_f64() * factor)
                    .unwrap_or(Duration::from_secs(86_400))
                    .min(Duration::from_secs(86_400));
                self.count("retried");
                self.metrics.retried.with_label_values(&[job.queue.as_str()]).inc();
                *self.retried_by_queue.entry(job.queue.clone()).or_insert(0) += 1;
                info!(msgid = %id, queue = %job.queue, attempt = job.attempts, error = %kind, ?delay, "job failed: retrying");
                if let Some(r) = self.history.get_mut(&id) {
                    r.state = JobState::Retrying;
                    r.result = Some(reply_json);
                }
                let request = job.request.clone().expect("checked");
                let attempts = job.attempts;
                let waiting = self.waiting_again(id, &job, request, attempts);
                self.delayed_seq += 1;
                self.delayed.insert((now.mono + delay, self.delayed_seq), (job.queue, waiting));
                return;
            }
        }
        self.record_done(&job, now);
        let dead = error.is_some() && job.keep && job.request.is_some();
        if let Some(r) = self.history.get_mut(&id) {
            r.state = match (&error, dead) {
                (None, _) => JobState::Done,
                (Some(_), true) => JobState::Dead,
                (Some((JobErrorKind::JobManagerLost, _)), false) => JobState::Lost,
                (Some(_), false) => JobState::Failed,
            };
            r.finished = Some(now.unix);
            r.result = Some(reply_json.clone());
        }
        if let (true, Some((kind, message))) = (dead, &error) {
            self.count("dead_letters");
            warn!(msgid = %id, queue = %job.queue, attempts = job.attempts, error = %kind, "job used up its retries: dead letter");
            if self.dead.len() >= self.cfg.dead_letter_max.max(1) {
                self.dead.pop_front();
                self.count("dead_letters_dropped");
            }
            self.dead.push_back(DeadLetter {
                msgid: id.clone(),
                client: job.client.clone(),
                queue: job.queue.clone(),
                request: job.request.clone().expect("checked"),
                attempts: job.attempts,
                error_type: kind.to_string(),
                error_message: message.clone(),
                at: now.unix,
            });
        }
        self.metrics.processed.with_label_values(&[job.queue.as_str()]).inc();
        self.metrics
            .latency
            .with_label_values(&[job.queue.as_str(), "finish"])
            .observe(now.mono.saturating_duration_since(job.received).as_secs_f64());
        if let Some((kind, message)) = &error {
            *self.failed_by_queue.entry(job.queue.clone()).or_insert(0) += 1;
            self.metrics.failed.with_label_values(&[job.queue.as_str()]).inc();
            if self.recent_failures.len() >= 50 {
                self.recent_failures.pop_front();
            }
            self.recent_failures.push_back(serde_json::json!({
                "msgid": &*id, "queue": job.queue, "type": kind, "message": message, "at": now.unix,
            }));
        }
        if job.reply_requested {
            out.push(send(
                SocketKind::Frontend,
                &job.client,
                Command::Reply(Reply::Result { reply_json, orig_msgid: id.to_string() }),
            ));
        }
    }

    /// Retries that are due go back to their queue.
    fn release_due_retries(&mut self, now: Now, out: &mut Vec<Action>) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now.mono {
                return;
            }
            let (queue, job) = entry.remove();
            if let Some(r) = self.history.get_mut(&job.msgid) {
                r.state = JobState::Queued;
            }
            self.requeue(queue, job, now, out);
        }
    }

    fn record_done(&mut self, job: &JobInFlight, now: Now) {
        *self.processed_by_queue.entry(job.queue.clone()).or_insert(0) += 1;
        let l = self.latency_by_queue.entry(job.queue.clone()).or_default();
        let secs = now.mono.saturating_duration_since(job.received).as_secs_f64();
        l.count += 1;
        l.sum += secs;
        l.max = l.max.max(secs);
    }

    /// Forgets a job manager and its slots. Its unfinished jobs: `guarantee`
    /// ones go back to the front of their queue; the others fail, with an
    /// error to the client when it asked for a reply.
    fn remove_worker(&mut self, peer: &PeerId, why: &str, now: Now, out: &mut Vec<Action>) {
        let Some(w) = self.workers.remove(peer) else { return };
        out.push(Action::Forget { socket: SocketKind::Backend, peer: peer.clone() });
        for q in self.queues.values_mut() {
            q.workers.retain(|(_, p)| p != peer);
        }
        info!(%peer, why, jobs_in_flight = w.in_flight, "job manager removed");
        let mut mine: Vec<(Instant, Arc<str>)> = if w.in_flight == 0 {
            Vec::new()
        } else {
            self.in_flight.iter().filter(|(_, j)| j.worker == *peer).map(|(id, j)| (j.dispatched, id.clone())).collect()
        };
        // Oldest first, so requeued jobs keep their order at the queue front.
        mine.sort();
        for (_, id) in mine.into_iter().rev() {
            let Some(mut job) = self.in_flight.remove(&id) else { continue };
            match job.request.take() {
                Some(request) if job.guarantee => {
                    self.count("requeued");
                    if let Some(r) = self.history.get_mut(&id) {
                        r.state = JobState::Queued;
                    }
                    info!(msgid = %id, queue = %job.queue, "guaranteed job requeued after its job manager was lost");
                    let waiting = self.waiting_again(id, &job, request, job.attempts);
                    self.requeue(job.queue, waiting, now, out);
                }
                request => {
                    job.request = request;
                    self.count("lost_with_worker");
                    warn!(msgid = %id, queue = %job.queue, worker = %peer, "job manager lost with the job");
                    let message = format!("job manager {peer} {why} before the job finished");
                    let reply = JobReply::failed(JobErrorKind::JobManagerLost, message.clone(), "");
                    self.conclude(id, job, reply.to_json(), Some((JobErrorKind::JobManagerLost, message)), now, out);
                }
            }
        }
    }

    fn on_unreachable(&mut self, socket: SocketKind, peer: PeerId, message: Message, now: Now, out: &mut Vec<Action>) {
        // A client that left before its receipt is normal; a job manager or
        // scheduler that vanished is not.
        self.count(if socket == SocketKind::Backend { "unreachable_job_manager" } else { "client_gone" });
        match (socket, message.command) {
            (SocketKind::Backend, Command::Request(request)) => {
                // Never delivered: it goes back to the queue whatever its
                // headers, and the vanished job manager is forgotten.
                let msgid = message.msgid;
                warn!(%peer, %msgid, "job manager unreachable: job requeued");
                let owned = self.in_flight.get(msgid.as_str()).is_some_and(|j| j.worker == peer);
                if !owned {
                    // Already requeued (and perhaps re-dispatched) when this
                    // job manager was forgotten: nothing more to do.
                    self.remove_worker(&peer, "became unreachable", now, out);
                    return;
                }
                if let Some((key, job)) = self.in_flight.remove_entry(msgid.as_str()) {
                    if let Some(w) = self.workers.get_mut(&peer) {
                        w.in_flight = w.in_flight.saturating_sub(1);
                    }
                    self.remove_worker(&peer, "became unreachable", now, out);
                    if let Some(r) = self.history.get_mut(&msgid) {
                        r.state = JobState::Queued;
                    }
                    let request = StoredRequest::new(request, &job.queue);
                    let waiting = self.waiting_again(key, &job, request, job.attempts - 1);
                    self.requeue(job.queue, waiting, now, out);
                } else {
                    self.remove_worker(&peer, "became unreachable", now, out);
                }
            }
            (SocketKind::Backend, _) => self.remove_worker(&peer, "became unreachable", now, out),
            (SocketKind::Frontend, cmd) => {
                if self.schedulers.remove(&peer).is_some() {
                    info!(%peer, "scheduler unreachable: removed");
                } else {
                    debug!(%peer, msgid = %message.msgid, command = cmd.name(), "client gone before its reply");
                }
            }
            (SocketKind::Admin, _) => debug!(%peer, "admin client gone before its answer"),
        }
    }

    // ---- time ------------------------------------------------------------

    fn on_tick(&mut self, now: Now, out: &mut Vec<Action>) {
        self.next_tick_at = now.mono + self.tick_period();
        self.release_due_retries(now, out);
        let timeout = self.cfg.heartbeat_timeout;
        let dead: Vec<PeerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.mono.saturating_duration_since(w.last_seen) > timeout)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in dead {
            self.count("heartbeat_timeouts");
            warn!(%peer, "job manager silent past heartbeat_timeout: removed");
            if let Some(w) = self.workers.get(&peer) {
                self.stale.insert(
                    peer.clone(),
                    StaleJobManager {
                        queues: w.queues.clone(),
                        last_seen: w.last_seen,
                        health: w.health.clone(),
                        processed: w.processed,
                    },
                );
            }
            self.remove_worker(&peer, "stopped heartbeating", now, out);
        }
        // Stale job managers are shown for three more timeouts, then gone.
        self.stale.retain(|_, s| now.mono.saturating_duration_since(s.last_seen) < timeout * 4);
        self.schedulers.retain(|peer, s| {
            let alive = now.mono.saturating_duration_since(s.last_seen) <= timeout;
            if !alive {
                warn!(%peer, "scheduler silent past heartbeat_timeout: removed");
            }
            alive
        });
        let due = self
            .last_heartbeat_sent
            .is_none_or(|t| now.mono.saturating_duration_since(t) >= self.cfg.heartbeat_interval);
        if due && !self.shutting_down {
            self.last_heartbeat_sent = Some(now.mono);
            let ts = format!("{:.3}", now.unix);
            for peer in self.workers.keys() {
                out.push(send(
                    SocketKind::Backend,
                    peer,
                    Command::Heartbeat(Heartbeat { timestamp: ts.clone(), health: None }),
                ));
            }
            for peer in self.schedulers.keys() {
                out.push(send(
                    SocketKind::Frontend,
                    peer,
                    Command::Heartbeat(Heartbeat { timestamp: ts.clone(), health: None }),
                ));
            }
        }
    }

    // ---- admin -----------------------------------------------------------

    fn on_admin(&mut self, peer: PeerId, m: Message, now: Now, out: &mut Vec<Action>) {
        let answer = |body: String| send(SocketKind::Admin, &peer, Command::Reply(Reply::admin_answer(body)));
        match m.command {
            Command::Admin(AdminCommand::Hello) => {} // must stay unanswered (emq-cli quirk)
            Command::Admin(AdminCommand::Status) => out.push(answer(self.status_json(now))),
            Command::Admin(AdminCommand::RouterShowWorkers) => out.push(answer(self.workers_json(now))),
            Command::Admin(AdminCommand::RouterShowSchedulers) => out.push(answer(self.schedulers_json(now))),
            Command::Admin(AdminCommand::JobStatus { job_msgid }) => {
                out.push(answer(self.history.status_json(&job_msgid)))
            }
            Command::Admin(AdminCommand::DeadLetters) => out.push(answer(self.dead_letters_json())),
            Command::Admin(AdminCommand::Requeue { job_msgid }) => {
                let body = self.requeue_dead(&job_msgid, now, out);
                out.push(answer(body));
            }
            Command::Disconnect => {
                info!(%peer, msgid = %m.msgid, "DISCONNECT from admin: shutting down");
                self.shutting_down = true;
                out.push(send(SocketKind::Admin, &peer, Command::Ack(Ack { acked_msgid: m.msgid })));
                for p in self.workers.keys() {
                    out.push(send(SocketKind::Backend, p, Command::Kbye));
                }
                for p in self.schedulers.keys() {
                    out.push(send(SocketKind::Frontend, p, Command::Kbye));
                }
                out.push(Action::Shutdown);
            }
            other => {
                self.count("unknown_admin_command");
                warn!(%peer, msgid = %m.msgid, command = other.name(), "unknown admin command");
                let body = serde_json::json!({"error": format!("unknown admin command {}", other.name())}).to_string();
                out.push(answer(body));
            }
        }
    }

    /// `REQUEUE msgid`: a dead letter runs again, with its retries afresh.
    fn requeue_dead(&mut self, msgid: &str, now: Now, out: &mut Vec<Action>) -> String {
        let Some(pos) = self.dead.iter().position(|d| &*d.msgid == msgid) else {
            return serde_json::json!({"error": format!("no dead letter {msgid}")}).to_string();
        };
        let d = self.dead.remove(pos).expect("position exists");
        info!(%msgid, queue = %d.queue, "dead letter requeued");
        self.count("requeued_dead_letters");
        if let Some(r) = self.history.get_mut(msgid) {
            r.state = JobState::Queued;
            r.finished = None;
        }
        let waiting = WaitingJob {
            client: d.client,
            msgid: d.msgid,
            request: d.request,
            received_ms: self.stamp(now.mono),
            attempts: 0,
        };
        self.requeue(d.queue, waiting, now, out);
        serde_json::json!({"requeued": msgid}).to_string()
    }

    /// `ROUTER_DEAD_LETTERS`.
    pub fn dead_letters_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .dead
            .iter()
            .map(|d| {
                serde_json::json!({
                    "msgid": &*d.msgid, "queue": d.queue, "attempts": d.attempts,
                    "error": {"type": d.error_type, "message": d.error_message},
                    "at": d.at, "payload": &*d.request.payload,
                })
            })
            .collect();
        serde_json::json!({"dead_letters": list, "count": list.len()}).to_string()
    }

    // ---- read access (admin answers, tests) -------------------------------

    /// Connected job managers.
    pub fn workers(&self) -> &HashMap<PeerId, WorkerSlot> {
        &self.workers
    }

    /// Jobs waiting in `queue`'s buffer.
    pub fn waiting(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.waiting.len())
    }

    /// Jobs handed out and not reported done.
    pub fn in_flight(&self) -> &HashMap<Arc<str>, JobInFlight> {
        &self.in_flight
    }

    /// Anomaly counters.
    pub fn errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.errors
    }
}

fn send(socket: SocketKind, peer: &PeerId, command: Command) -> Action {
    Action::Send { socket, peer: peer.clone(), message: Message::new(command) }
}
