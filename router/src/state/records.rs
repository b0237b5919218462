//! The records the router keeps about peers and jobs: a [`JobManagerPeer`]
//! (one connected job manager and its free [`WorkerSlot`]s), a
//! [`SchedulerPeer`], a [`JobInFlight`] (handed to a job manager, not yet
//! reported), a [`WaitingJob`] (buffered in a queue or waiting for its
//! retry), its [`StoredRequest`], a [`DeadLetter`] and a
//! [`StaleJobManager`]. Plain data: the rooms of the state machine
//! (`intake`, `dispatch`, `peers`, `outcome`, `admin`) change them.
//!
//! Words: a *job manager* is a connected `emq-jobmanager` (or EventMQ's);
//! a *worker slot* is one job it can take now — it announces one with each
//! READY. The router never sees worker processes, only slots.

use emq_protocol::{PoolHealth, QueueSpec, Request};
use emq_receiver::PeerId;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// One free place for a job at a job manager, announced by a READY. The
/// router only counts them ([`JobManagerPeer::free_slots`]); the name is
/// here so that code and docs say "slot" for this and nothing else.
pub type WorkerSlot = u32;

/// A connected job manager: its queues, its free [`WorkerSlot`]s and what
/// it has in hand.
#[derive(Debug)]
pub struct JobManagerPeer {
    pub queues: QueueSpec,
    /// Its queue names, highest weight first (ties in the order it listed
    /// them): the order a READY takes waiting jobs in.
    pub by_weight: Vec<String>,
    /// Queue name → position in `by_weight` (lower goes first).
    pub rank: rustc_hash::FxHashMap<String, usize>,
    /// Its keys in the queues' `free` sets (queue → weight, sequence
    /// number), while it has a free slot — or, for a job manager of many
    /// queues, until it leaves (it stays in them while busy: see
    /// `dispatch.rs`).
    pub free_keys: rustc_hash::FxHashMap<String, (u32, u64)>,
    /// READYs received minus jobs handed out.
    pub free_slots: WorkerSlot,
    pub last_seen: Instant,
    /// Monotonic "last time a job went here", for least-recently-used order.
    pub last_used: u64,
    /// Jobs handed to it and not yet reported done.
    pub in_flight: usize,
    /// Msgids of jobs without `reply-requested` handed to it, oldest first,
    /// kept only until it proves it reports every job (EventMQ's job manager
    /// does not; for it a READY retires the oldest of these).
    pub unreported: VecDeque<Arc<str>>,
    /// Set once it reports a job that did not ask for a reply (or it says so
    /// at INFORM): then it is one of ours, which reports every job.
    pub reports_all_completions: bool,
    /// Wall-clock seconds of its last heartbeat, as it sent them.
    pub last_heartbeat: Option<String>,
    /// Our extension: its pool health, parsed once from its last heartbeat.
    pub health: Option<PoolHealth>,
    /// The dispatch counter at its previous READY: only jobs handed out
    /// before that READY can have been finished by its next one.
    pub last_ready_seq: u64,
    pub processed: u64,
    /// Said KBYE: gets no new jobs; forgotten once its running jobs report.
    pub leaving: bool,
    /// The CURVE user (key name) it INFORMed with, when the backend uses CURVE.
    pub user: Option<std::sync::Arc<str>>,
    /// It said it sends BATCH messages (our job manager): our heartbeats
    /// tell it we take them.
    pub batches: bool,
    /// REPLYs received from it since its INFORM: our heartbeats tell our
    /// job managers this count (once it is durable), so they can stop
    /// keeping those reports.
    pub reports_received: u64,
    /// The module prefixes it runs (its `allowed_paths`, said at INFORM):
    /// only jobs it allows go to it. `None`: anything (EventMQ's job
    /// manager, or `*`).
    pub allowed: Option<Arc<[Box<str>]>>,
    /// Its labels and name (said at INFORM): jobs sent `requires:` /
    /// `on:` go only to a job manager that has them.
    pub labels: Arc<[Box<str>]>,
    pub name: Option<Box<str>>,
    /// It runs command jobs (said `commands` at INFORM: our job manager
    /// with `allowed_commands`); no other job manager is ever sent one.
    pub runs_commands: bool,
}

impl JobManagerPeer {
    /// A job manager that has just INFORMed.
    pub fn new(queues: QueueSpec, reports_all_completions: bool, now: Instant, dispatch_seq: u64) -> Self {
        let mut order: Vec<(u32, usize, String)> =
            queues.0.iter().enumerate().map(|(i, (w, n))| (*w, i, n.clone())).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let by_weight: Vec<String> = order.into_iter().map(|(_, _, n)| n).collect();
        let rank = by_weight.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        JobManagerPeer {
            queues,
            by_weight,
            rank,
            free_keys: Default::default(),
            free_slots: 0,
            last_seen: now,
            last_used: 0,
            in_flight: 0,
            unreported: VecDeque::new(),
            reports_all_completions,
            last_heartbeat: None,
            health: None,
            last_ready_seq: dispatch_seq,
            processed: 0,
            leaving: false,
            user: None,
            reports_received: 0,
            batches: false,
            allowed: None,
            labels: Arc::from(Vec::new()),
            name: None,
            runs_commands: false,
        }
    }

    /// Whether `job` (its header frame and payload) may go to it: it allows
    /// the callable, and has the labels and name the job asks for.
    pub fn accepts(&self, headers: &str, payload: &str) -> bool {
        self.allows_payload(payload)
            && emq_protocol::Placement::of(headers).is_none_or(|p| p.fits(self.name.as_deref(), &self.labels))
    }

    /// Whether it runs a job whose payload is `payload`: a command job
    /// only if it runs commands (whichever program: its `allowed_commands`
    /// answers for that); a callable if its `allowed_paths` allow the
    /// module (a payload that names no module goes anywhere: the job
    /// manager says what is wrong).
    pub fn allows_payload(&self, payload: &str) -> bool {
        if emq_protocol::payload_is_command(payload) {
            return self.runs_commands;
        }
        match &self.allowed {
            None => true,
            Some(prefixes) => match emq_protocol::payload_module(payload) {
                Some(module) => emq_protocol::path_allowed(prefixes, &module),
                None => true,
            },
        }
    }

    /// Whether it likely has a worker with nothing to do: fewer jobs in
    /// hand than (non-spare) workers, by its last health. Without health
    /// (EventMQ's job manager: a READY is a free worker) every free slot is.
    pub fn has_idle_worker(&self) -> bool {
        match &self.health {
            Some(h) if !h.workers.is_empty() => {
                let workers = h.workers.iter().filter(|w| !w.spare).count();
                self.in_flight < workers
            }
            _ => true,
        }
    }

    /// The name it goes by in metrics and tables: its `--name`, else
    /// `host:pid` from its health; `None` before any health arrived (an
    /// EventMQ job manager never sends one).
    pub fn display_name(&self) -> Option<String> {
        // Its health's, else the name it said at INFORM (before its first
        // health report).
        display_name(self.health.as_ref()).or_else(|| self.name.as_deref().map(str::to_owned))
    }
}

/// `--name`, else `host:pid`, from a health report.
pub fn display_name(health: Option<&PoolHealth>) -> Option<String> {
    let h = health?;
    if !h.name.is_empty() {
        Some(h.name.clone())
    } else if !h.host.is_empty() && h.pid != 0 {
        Some(format!("{}:{}", h.host, h.pid))
    } else {
        None
    }
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
    pub job_manager: PeerId,
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
    /// CANCEL asked its job manager to stop it: it ends `cancelled`.
    pub cancelling: bool,
}

/// A waiting job's msgid: inline when it is at most 38 bytes (a UUID's
/// 36 characters — every EventMQ and emq msgid), else shared. A router may
/// hold a million waiting jobs and keeps history records of only the last
/// `job_history`: the older ones would each keep a 64-byte heap string
/// alive just for their id.
#[derive(Clone)]
pub enum JobId {
    Inline { len: u8, bytes: [u8; 38] },
    Shared(Arc<str>),
}

impl JobId {
    /// The id as a shared string: `history`'s when it has one (no copy).
    pub fn to_arc(&self) -> Arc<str> {
        match self {
            JobId::Shared(s) => s.clone(),
            JobId::Inline { .. } => Arc::from(&**self),
        }
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        if s.len() <= 38 {
            let mut bytes = [0u8; 38];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            JobId::Inline { len: s.len() as u8, bytes }
        } else {
            JobId::Shared(Arc::from(s))
        }
    }
}

impl From<Arc<str>> for JobId {
    fn from(s: Arc<str>) -> Self {
        if s.len() <= 38 {
            JobId::from(&*s)
        } else {
            JobId::Shared(s)
        }
    }
}

impl From<&Arc<str>> for JobId {
    fn from(s: &Arc<str>) -> Self {
        JobId::from(s.clone())
    }
}

impl std::ops::Deref for JobId {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            // Only ever filled from a `&str`: valid UTF-8.
            JobId::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default(),
            JobId::Shared(s) => s,
        }
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

/// A job waiting for a free slot (or for its retry). Kept compact (the
/// frames in one box, the msgid inline): a router may hold a million of
/// these.
#[derive(Debug)]
pub struct WaitingJob {
    pub client: PeerId,
    pub msgid: JobId,
    pub request: StoredRequest,
    /// Milliseconds since the router started (4 bytes, not a 16-byte Instant).
    pub received_ms: u32,
    /// Dispatches behind it (0 for a new job).
    pub attempts: u32,
}

impl WaitingJob {
    /// Roughly what it holds in memory (for `buffer_memory`).
    pub fn memory_bytes(&self) -> u64 {
        (std::mem::size_of::<WaitingJob>()
            + self.msgid.len()
            + self.client.as_bytes().len()
            + self.request.heap_bytes()) as u64
    }
}

/// A REQUEST's three body frames, stored exactly as received (forwarded
/// byte-identical), in one exact-size box: `"<headers len>,<queue len>;"`
/// then the headers, the queue name and the payload. One allocation and
/// 16 bytes inline instead of three boxes (48 bytes): a buffered job is
/// mostly this. The queue name is only stored when it differs from the
/// queue the job waits in (a fallback to `default`); a queue length of 0
/// means none.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    body: Box<str>,
}

impl StoredRequest {
    /// Stores `r`, which is going to wait in (or be sent from) `resolved`.
    pub fn new(r: Request, resolved: &str) -> Self {
        let queue = (r.queue != resolved).then_some(r.queue.as_str());
        Self::from_parts(queue, &r.headers, &r.payload)
    }

    /// From its parts; `queue`: the name the client asked for, when it is
    /// not where the job waits.
    pub fn from_parts(queue: Option<&str>, headers: &str, payload: &str) -> Self {
        // The queue's length + 1; 0: none (an empty name is a name).
        let queue_code = queue.map_or(0, |q| q.len() + 1);
        let queue = queue.unwrap_or("");
        let mut body = String::with_capacity(24 + headers.len() + queue.len() + payload.len());
        body.push_str(&headers.len().to_string());
        body.push(',');
        body.push_str(&queue_code.to_string());
        body.push(';');
        body.push_str(headers);
        body.push_str(queue);
        body.push_str(payload);
        StoredRequest { body: body.into_boxed_str() }
    }

    /// `(headers, requested queue, payload)`.
    fn parts(&self) -> (&str, Option<&str>, &str) {
        let b = &*self.body;
        // Written by `from_parts` only: the prefix is always there.
        let semi = b.find(';').unwrap_or(0);
        let (h, q) = b[..semi].split_once(',').unwrap_or(("0", "0"));
        let (h, q) = (h.parse::<usize>().unwrap_or(0), q.parse::<usize>().unwrap_or(0));
        let rest = &b[semi + 1..];
        let q_len = q.saturating_sub(1);
        let queue = (q > 0).then(|| rest.get(h..h + q_len).unwrap_or_default());
        (rest.get(..h).unwrap_or_default(), queue, rest.get(h + q_len..).unwrap_or_default())
    }

    /// The REQUEST as it was received; `resolved` is its queue here.
    pub fn into_request(self, resolved: &str) -> Request {
        let (h, q, p) = self.parts();
        Request { queue: q.unwrap_or(resolved).to_owned(), headers: h.to_owned(), payload: p.to_owned() }
    }

    /// The queue name the client asked for.
    pub fn queue<'a>(&'a self, resolved: &'a str) -> &'a str {
        self.requested_queue().unwrap_or(resolved)
    }

    /// The queue name the client asked for, when it is not where the job
    /// waits.
    pub fn requested_queue(&self) -> Option<&str> {
        self.parts().1
    }

    /// Forgets the requested queue name: the job now waits in that queue.
    pub fn clear_requested_queue(&mut self) {
        if self.requested_queue().is_some() {
            let (h, _, p) = self.parts();
            *self = Self::from_parts(None, h, p);
        }
    }

    /// The headers frame, as received.
    pub fn headers_str(&self) -> &str {
        self.parts().0
    }

    /// The payload frame, as received.
    pub fn payload(&self) -> &str {
        self.parts().2
    }

    pub fn headers(&self) -> emq_protocol::Headers {
        emq_protocol::Headers::parse(self.headers_str())
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.body.len()
    }

    /// Sets `attempt:N` (readable by the job as `emq.attempt`) on a re-run;
    /// a first dispatch stays byte-identical.
    pub fn mark_attempt(&mut self, attempt: u32) {
        self.mark_retry(attempt, None);
    }

    /// As [`Self::mark_attempt`], with the last checkpoint an earlier
    /// attempt kept (`checkpoint:` header, replacing one from before).
    pub fn mark_retry(&mut self, attempt: u32, checkpoint: Option<&str>) {
        let (headers, queue, payload) = self.parts();
        let kept: Vec<&str> = headers
            .split(',')
            .filter(|h| !h.is_empty() && !h.starts_with("attempt:") && !h.starts_with("checkpoint:"))
            .collect();
        let mut h = kept.join(",");
        if !h.is_empty() {
            h.push(',');
        }
        h.push_str(&format!("attempt:{attempt}"));
        if let Some(c) = checkpoint {
            h.push_str(",checkpoint:");
            h.push_str(&emq_protocol::encode_checkpoint_header(c));
        }
        *self = Self::from_parts(queue, &h, payload);
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
    pub health: Option<PoolHealth>,
    pub processed: u64,
    /// It spoke again and was told (once) to reconnect.
    pub told_to_reconnect: bool,
}

/// A job that was in flight when the router last stopped (or crashed). A
/// job manager that re-attaches may still report it; if none does by
/// `until`, it runs again (`guarantee`, retries left) or ends with
/// `router restarted`.
#[derive(Debug)]
pub struct InDoubtJob {
    pub queue: String,
    /// The job manager it was dispatched to: only that connection (the
    /// same identity, re-attached) may report it.
    pub job_manager: PeerId,
    /// `attempts` counts the dispatch that is in doubt.
    pub job: WaitingJob,
    pub until: Instant,
    /// Why it is in doubt: the router restarted, or its job manager went
    /// silent (then it ends `job manager lost` if nobody reports it).
    pub silent_job_manager: bool,
    /// The job manager's name (`--name` or host:pid) when known: the same
    /// job manager under a new connection identity may report it too.
    pub who: Option<String>,
}

/// A `guarantee` job whose job manager went silent: it was requeued (it may
/// run elsewhere), but a late report from that job manager is still taken
/// until `until`.
#[derive(Debug, Clone)]
pub struct SuspectRun {
    pub job_manager: PeerId,
    pub who: Option<String>,
    pub until: Instant,
}

#[cfg(test)]
mod stored_request_tests {
    use super::*;

    #[test]
    fn the_frames_come_back_as_they_went_in() {
        for queue in [None, Some(""), Some("nobody")] {
            for headers in ["", "guarantee,retry-count:2"] {
                let payload = r#"["run", {"path": "m;x,y", "callable": "f"}]"#;
                let mut r = StoredRequest::from_parts(queue, headers, payload);
                assert_eq!((r.requested_queue(), r.headers_str(), r.payload()), (queue, headers, payload));
                assert_eq!(r.queue("default"), queue.unwrap_or("default"));
                r.mark_attempt(2);
                assert_eq!(r.requested_queue(), queue, "a re-run keeps its queue name");
                assert!(r.headers_str().ends_with("attempt:2"));
                assert_eq!(r.payload(), payload);
                let req = r.clone().into_request("default");
                assert_eq!(req.queue, queue.unwrap_or("default"));
                r.clear_requested_queue();
                assert_eq!(r.requested_queue(), None);
            }
        }
    }

    #[test]
    fn a_msgid_is_inline_up_to_38_bytes() {
        let uuid = "8b4cf65c-e6aa-4a8e-9d1e-0123456789ab";
        assert!(matches!(JobId::from(uuid), JobId::Inline { .. }));
        assert_eq!(&*JobId::from(uuid), uuid);
        let long = "x".repeat(39);
        assert!(matches!(JobId::from(long.as_str()), JobId::Shared(_)));
        assert_eq!(&*JobId::from(long.as_str()), long);
        assert_eq!(&*JobId::from(""), "");
    }
}
