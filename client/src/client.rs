//! [`Client`]: one DEALER connection to a router frontend, any number of
//! jobs in flight. Incoming REPLYs are sorted by shape (emqp.md,
//! extensions): one body frame is a receipt (body = the job's msgid) or a
//! JOB_STATUS answer (body = JSON, never a msgid); two body frames are a
//! result or a refusal for `orig_msgid`. Everything that arrives is kept
//! until asked for, so waiting for one job never loses another's result.

use emq_protocol::{
    AdminCommand, Command, CommandPayload, Headers, JobError, JobErrorKind, JobReply, Message, Reply, Request,
    RunPayload,
};
use emq_sender::{Sender, SenderError};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Client failures (a job's own failure is a [`JobOutcome`], not this).
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Socket(#[from] SenderError),
    #[error("no answer from the router before the deadline")]
    Deadline,
    #[error("bad callable {0:?}: expected pkg.mod.func or pkg.mod:Class.method")]
    BadCallable(String),
    #[error("refused by the router: {0}")]
    Refused(String),
    #[error("bad workflow: {0}")]
    BadWorkflow(String),
    #[error("bad job: {0}")]
    BadJob(String),
}

/// How a job should be handled (EventMQ's REQUEST headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Ask for the result (default true: the point of this client).
    pub reply_requested: bool,
    /// Requeue the job if its job manager is lost.
    pub guarantee: bool,
    /// Re-dispatches allowed after a failure.
    pub retry_count: Option<u32>,
    /// Seconds the job may run (else the job manager's global timeout).
    pub timeout: Option<u64>,
    /// Run no sooner than this long after the router accepts it
    /// (`delay:` header; the receipt comes at once).
    pub delay: Option<Duration>,
    /// Run no sooner than this time (`eta:` header).
    pub at: Option<std::time::SystemTime>,
    /// `unique:KEY`: while a job with this key in this queue is not final,
    /// the router answers with that job ([`Receipt::Deduplicated`]).
    pub unique: Option<String>,
    /// `depends_on:ID;ID`: run once these jobs are done.
    pub depends_on: Vec<String>,
    /// `on_dependency_failure:run`: run even when a dependency failed.
    pub run_on_dependency_failure: bool,
    /// `limit:NAME` or `limit:NAME/PARTITION`: the router starts the job
    /// only within that limit (see [`check_limit`]); a name the router
    /// does not know is refused.
    pub limit: Option<String>,
    /// `requires:gpu;eu`: only a job manager with all these labels (its
    /// `labels` setting) receives the job; it waits until one is there.
    pub requires: Vec<String>,
    /// `on:NAME`: only the job manager of that name (`--name`).
    pub on: Option<String>,
}

/// Longest limit name, and partition, a `limit` header may carry.
pub const MAX_LIMIT_NAME: usize = 128;
pub const MAX_LIMIT_PARTITION: usize = 256;

/// Whether `limit` is `NAME` or `NAME/PARTITION` as the router reads it:
/// a name of 1 to 128 characters, a partition of at most 256, no comma.
pub fn check_limit(limit: &str) -> Result<(), String> {
    let (name, partition) = limit.split_once('/').unwrap_or((limit, ""));
    if name.trim().is_empty() || name.trim().len() > MAX_LIMIT_NAME {
        return Err(format!(
            "limit {limit:?}: expected NAME or NAME/PARTITION, NAME of 1 to {MAX_LIMIT_NAME} characters"
        ));
    }
    if partition.len() > MAX_LIMIT_PARTITION {
        return Err(format!("limit {limit:?}: the partition is longer than {MAX_LIMIT_PARTITION} characters"));
    }
    if limit.contains(',') {
        return Err(format!("limit {limit:?}: no comma allowed"));
    }
    Ok(())
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reply_requested: true,
            guarantee: false,
            retry_count: None,
            timeout: None,
            delay: None,
            at: None,
            unique: None,
            depends_on: Vec::new(),
            run_on_dependency_failure: false,
            limit: None,
            requires: Vec::new(),
            on: None,
        }
    }
}

impl Options {
    /// The REQUEST header frame.
    pub fn headers(&self) -> String {
        Headers {
            reply_requested: self.reply_requested,
            guarantee: self.guarantee,
            retry_count: self.retry_count,
            timeout_secs: self.timeout,
            delay_secs: self.delay.map(|d| d.as_secs_f64()).filter(|d| *d > 0.0),
            eta: self.at.map(unix_seconds),
            unique: self.unique.clone(),
            depends_on: self.depends_on.clone(),
            run_on_dependency_failure: self.run_on_dependency_failure,
            limit: self.limit.clone(),
            requires: self.requires.clone(),
            on: self.on.clone(),
            ..Default::default()
        }
        .to_wire()
    }
}

/// Seconds since the Unix epoch (negative before it).
fn unix_seconds(t: std::time::SystemTime) -> f64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// How a schedule is run: EventMQ's SCHEDULE headers and ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// Every N seconds, or at each match of a cron expression (croniter's
    /// fields: 5, or 6 with the seconds last).
    pub timing: emq_protocol::Timing,
    /// Requeue a run whose job manager is lost (EventMQ's default: on).
    pub guarantee: bool,
    /// Do not run at once on scheduling (EventMQ's `nohaste`).
    pub nohaste: bool,
    /// Stop after this many runs (EventMQ's `run_count:N`).
    pub run_count: Option<u64>,
    /// The IANA time zone a cron expression is read in (UTC if none).
    pub tz: Option<String>,
    /// Skip a run while the previous one is unfinished.
    pub no_overlap: bool,
    /// Runs missed while the router was down: `skip`, `once` or `all`
    /// (else the router's `misfire` setting).
    pub misfire: Option<emq_protocol::Misfire>,
    /// Each run's timeout and retries.
    pub timeout: Option<u64>,
    pub retry_count: Option<u32>,
}

impl ScheduleSpec {
    /// Every `secs` seconds, EventMQ's defaults otherwise.
    pub fn every(secs: u64) -> Self {
        Self::with(emq_protocol::Timing::Interval(secs))
    }

    /// At each match of `cron`, EventMQ's defaults otherwise.
    pub fn cron(cron: &str) -> Self {
        Self::with(emq_protocol::Timing::Cron(cron.to_owned()))
    }

    fn with(timing: emq_protocol::Timing) -> Self {
        ScheduleSpec {
            timing,
            guarantee: true,
            nohaste: false,
            run_count: None,
            tz: None,
            no_overlap: false,
            misfire: None,
            timeout: None,
            retry_count: None,
        }
    }

    /// The SCHEDULE header frame.
    pub fn headers(&self) -> String {
        let mut h: Vec<String> = Vec::new();
        let job = Headers {
            guarantee: self.guarantee,
            retry_count: self.retry_count,
            timeout_secs: self.timeout,
            ..Default::default()
        }
        .to_wire();
        if !job.is_empty() {
            h.push(job);
        }
        if self.nohaste {
            h.push("nohaste".into());
        }
        if let Some(n) = self.run_count {
            h.push(format!("run_count:{n}"));
        }
        if let Some(tz) = &self.tz {
            h.push(format!("tz:{tz}"));
        }
        if self.no_overlap {
            h.push("no-overlap".into());
        }
        if let Some(m) = self.misfire {
            h.push(format!("misfire:{}", m.as_str()));
        }
        h.join(",")
    }
}

/// The payload EventMQ's `schedule()` sends: every one of the six keys,
/// empty ones included, so the schedule id (SHA-1 of them) is the one its
/// Python client computes for the same callable and arguments.
pub fn schedule_payload(job: &RunPayload) -> String {
    serde_json::json!(["run", {
        "callable": job.callable,
        "path": job.path,
        "args": job.args,
        "kwargs": job.kwargs,
        "class_args": job.class_args,
        "class_kwargs": job.class_kwargs,
    }])
    .to_string()
}

/// The router's answer to a REQUEST.
#[derive(Debug, Clone, PartialEq)]
pub enum Receipt {
    Accepted,
    Refused(JobError),
    /// `unique:` — the router holds a job with that key: this one (its
    /// msgid) instead of a new one.
    Deduplicated(String),
}

/// How a job ended, as seen by its client.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// It returned this value.
    Value(Value),
    /// It raised: type, message, traceback.
    Failed(JobError),
    /// It ran past its timeout and was killed.
    Timeout(JobError),
    /// Its worker (or job manager) died under it.
    WorkerDied(JobError),
    /// The router or job manager would not take it.
    Refused(JobError),
    /// No result before the deadline.
    NoReply,
}

impl JobOutcome {
    /// Sorts a reply by its `error.type`.
    pub fn from_reply(reply: JobReply) -> JobOutcome {
        match reply.error {
            None => JobOutcome::Value(reply.value),
            Some(e) => match &e.kind {
                JobErrorKind::Timeout => JobOutcome::Timeout(e),
                k if k.is_infrastructure() => JobOutcome::WorkerDied(e),
                JobErrorKind::Refused => JobOutcome::Refused(e),
                _ => JobOutcome::Failed(e),
            },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, JobOutcome::Value(_))
    }

    /// The reply JSON as the job manager wrote it (`{"value": ...}` plus
    /// `error` on failure); `None` for [`JobOutcome::NoReply`].
    pub fn to_json(&self) -> Option<Value> {
        let err = |e: &JobError| serde_json::json!({"value": e.message, "error": {"type": e.kind, "message": e.message, "traceback": e.traceback}});
        Some(match self {
            JobOutcome::Value(v) => serde_json::json!({ "value": v }),
            JobOutcome::Failed(e) | JobOutcome::Timeout(e) | JobOutcome::WorkerDied(e) | JobOutcome::Refused(e) => {
                err(e)
            }
            JobOutcome::NoReply => return None,
        })
    }
}

/// A connection to a router frontend.
pub struct Client {
    sender: Sender,
    receipts: HashMap<String, Receipt>,
    results: HashMap<String, JobOutcome>,
    /// Arrival order of results not yet taken (for [`Client::wait_any`]).
    result_order: VecDeque<String>,
    status_answers: VecDeque<Value>,
    /// Jobs sent whose outcome has not been taken yet, oldest first: what
    /// this client still waits on (asked about after a reconnect).
    pending: HashSet<String>,
    pending_order: VecDeque<String>,
    /// A secret sent with every job (`owner:` header) and every status
    /// question: the router shows this client its jobs' results from any
    /// connection, and nobody else.
    owner_token: String,
    /// Whether the router is answering (see [`RouterNotice`]).
    liveness: RouterWatch,
    /// Who hears of [`RouterNotice`]s during `wait` / `wait_any` (default:
    /// `tracing`).
    notice_hook: Option<NoticeHook>,
    /// REQUESTs without a receipt yet, oldest first: sent again under the
    /// same msgid while the router is silent (a failover to a standby, a
    /// message lost with a router that died). A router that holds the
    /// msgid answers with its receipt and makes no second job.
    unreceipted: VecDeque<(String, Message, Instant)>,
    /// Whether the router takes jobs sent together as one REQUESTS: it
    /// sent this client a REPLIES (only our router does). Until then, and
    /// again after a router refused one, jobs go one REQUEST each.
    router_takes_requests: bool,
    /// The REQUESTS sent before the router took one (its msgid, its jobs'
    /// msgids): a router that refuses one (an older emq router) answers
    /// that msgid, and its jobs then go again one REQUEST each. Emptied,
    /// and no longer kept, at the first receipt for one of their jobs.
    requests_sent: VecDeque<(String, Vec<String>)>,
    /// A job sent in a REQUESTS had its receipt: the router takes them.
    requests_confirmed: bool,
    /// The router refused a REQUESTS: later REPLIES from it (an older emq
    /// router sends them) no longer turn REQUESTS on.
    requests_refused_once: bool,
}

/// REQUESTS remembered for a refusal, at most.
const REQUESTS_REMEMBERED: usize = 8;

/// Payload bytes one REQUESTS carries at most (more jobs go in the next).
const REQUESTS_MAX_BYTES: usize = 1 << 20;

/// Requests without a receipt kept for sending again, at most.
const MAX_UNRECEIPTED: usize = 100_000;

/// How long a request waits for its receipt before it is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(2);

/// Requests sent again per pump at most (no burst after a long outage).
const RESEND_BATCH: usize = 1_000;

/// What a waiting client says about its router, once each time it changes:
/// a job the router accepted is kept in its journal while it is away, so
/// waiting on is right; but a client that hears nothing for minutes must
/// say why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterNotice {
    /// Questions to the router went unanswered for this long: it stopped,
    /// crashed or is unreachable.
    Silent(Duration),
    /// It answers again.
    Back,
}

impl std::fmt::Display for RouterNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouterNotice::Silent(d) => write!(
                f,
                "the router has not answered for {} s: it stopped or is unreachable; jobs it accepted are kept in its journal and run when it is back — still waiting",
                d.as_secs()
            ),
            RouterNotice::Back => write!(f, "the router answers again"),
        }
    }
}

/// Where a [`Client`] reports [`RouterNotice`]s.
type NoticeHook = Box<dyn FnMut(&RouterNotice) + Send>;

/// How long questions may go unanswered before the router counts as
/// silent. Our router answers a JOB_STATUS at once; the wait loops ask
/// every second.
pub const ROUTER_SILENT_AFTER: Duration = Duration::from_secs(3);

/// Tracks whether the router answers: only once it has answered a
/// question (EventMQ's router answers none, so it is never called silent).
#[derive(Debug, Default)]
struct RouterWatch {
    /// It answered a JOB_STATUS at least once.
    answers: bool,
    /// The first question sent since it last spoke.
    asked_since_heard: Option<Instant>,
    silent: bool,
    notices: VecDeque<RouterNotice>,
}

impl RouterWatch {
    fn asked(&mut self, now: Instant) {
        self.asked_since_heard.get_or_insert(now);
    }

    fn heard(&mut self) {
        self.asked_since_heard = None;
        if self.silent {
            self.silent = false;
            self.push(RouterNotice::Back);
        }
    }

    fn check(&mut self, now: Instant) {
        if !self.answers || self.silent {
            return;
        }
        if let Some(t) = self.asked_since_heard {
            let quiet = now.saturating_duration_since(t);
            if quiet >= ROUTER_SILENT_AFTER {
                self.silent = true;
                self.push(RouterNotice::Silent(quiet));
            }
        }
    }

    fn push(&mut self, n: RouterNotice) {
        // Only the latest changes matter; a client nobody asks stays small.
        if self.notices.len() >= 4 {
            self.notices.pop_front();
        }
        self.notices.push_back(n);
    }
}

/// Status answers kept for [`Client::job_status`] callers (older ones are
/// dropped: answers nobody asks for must not pile up).
const MAX_STATUS_ANSWERS: usize = 1024;

/// Pending jobs asked about per status round of [`Client::wait_any`].
const STATUS_ROUND: usize = 256;

/// How often `wait` asks the router's job record when nothing arrives, to
/// recover a result that went to an earlier connection.
const STATUS_POLL: Duration = Duration::from_secs(1);

impl Client {
    /// Connects to a router frontend (`tcp://host:47291`).
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        let ctx = zmq::Context::new();
        Ok(Self::with_sender(Sender::connect(&ctx, addr)?))
    }

    /// Connects as a CURVE client (encrypted; the router knows this
    /// client by its key's name).
    pub fn connect_curve(addr: &str, keys: &emq_sender::CurveClientKeys) -> Result<Client, ClientError> {
        let ctx = zmq::Context::new();
        Ok(Self::with_sender(Sender::connect_curve(&ctx, addr, emq_protocol::new_msgid(), 100_000, keys)?))
    }

    /// Connects under a chosen identity: a new client with an old client's
    /// identity receives the results still to come for it.
    pub fn connect_as(addr: &str, identity: &str) -> Result<Client, ClientError> {
        let ctx = zmq::Context::new();
        Ok(Self::with_sender(Sender::connect_with(&ctx, addr, identity.to_owned(), 100_000)?))
    }

    fn with_sender(sender: Sender) -> Client {
        Client {
            sender,
            receipts: HashMap::new(),
            results: HashMap::new(),
            result_order: VecDeque::new(),
            status_answers: VecDeque::new(),
            pending: HashSet::new(),
            pending_order: VecDeque::new(),
            owner_token: emq_protocol::random_hex(16),
            liveness: RouterWatch::default(),
            notice_hook: None,
            unreceipted: VecDeque::new(),
            router_takes_requests: false,
            requests_sent: VecDeque::new(),
            requests_confirmed: false,
            requests_refused_once: false,
        }
    }

    /// Where `wait` / `wait_any` report [`RouterNotice`]s (instead of
    /// `tracing`): `emq-send` prints them on stderr.
    pub fn on_router_notice(&mut self, hook: impl FnMut(&RouterNotice) + Send + 'static) {
        self.notice_hook = Some(Box::new(hook));
    }

    /// Changes in the router's liveness seen while pumping, oldest first
    /// (each said once). [`Client::wait`] and [`Client::wait_any`] log them
    /// (`tracing`, target `emq_client`); other callers show them their way.
    pub fn take_router_notices(&mut self) -> Vec<RouterNotice> {
        self.liveness.notices.drain(..).collect()
    }

    /// Whether the router has gone silent (see [`RouterNotice::Silent`]).
    pub fn router_silent(&self) -> bool {
        self.liveness.silent
    }

    fn log_router_notices(&mut self) {
        if self.liveness.notices.is_empty() {
            return;
        }
        for n in self.take_router_notices() {
            if let Some(hook) = self.notice_hook.as_mut() {
                hook(&n);
                continue;
            }
            match n {
                RouterNotice::Silent(_) => tracing::warn!(router = %self.sender.addr(), "{n}"),
                RouterNotice::Back => tracing::info!(router = %self.sender.addr(), "{n}"),
            }
        }
    }

    /// The secret this client sends with its jobs (`owner:` header): a
    /// later client given it (a restarted process, say) may read those
    /// jobs' results ([`Client::set_owner_token`]); nobody else can.
    pub fn owner_token(&self) -> &str {
        &self.owner_token
    }

    /// Takes over an earlier client's owner token (see [`Client::owner_token`]).
    pub fn set_owner_token(&mut self, token: &str) {
        self.owner_token = token.to_owned();
    }

    /// This client's identity at the router.
    pub fn identity(&self) -> &str {
        self.sender.identity()
    }

    /// Submits a job; returns its msgid at once.
    pub fn send_request(&mut self, queue: &str, job: &RunPayload, options: &Options) -> Result<String, ClientError> {
        self.send_payload(queue, job.to_wire(), options)
    }

    /// Submits a command job (a program run by a job manager whose
    /// `allowed_commands` allows it; see [`CommandPayload`]); returns its
    /// msgid at once. Its result is a [`emq_protocol::CommandResult`]; a
    /// non-zero exit is a failure (`command failed`) and retries apply.
    pub fn send_command(
        &mut self,
        queue: &str,
        command: &CommandPayload,
        options: &Options,
    ) -> Result<String, ClientError> {
        command.validate().map_err(ClientError::BadJob)?;
        self.send_payload(queue, command.to_wire(), options)
    }

    /// A REQUEST of `payload` (a payload frame) with this client's owner.
    fn send_payload(&mut self, queue: &str, payload: String, options: &Options) -> Result<String, ClientError> {
        let request = Request { queue: queue.to_owned(), headers: self.request_headers(options), payload };
        self.send_tracked(Message::new(Command::Request(request)))
    }

    /// Sends `command` (a REQUEST or WORKFLOW) under a msgid the caller
    /// chose — the same msgid twice is one job, so a caller that derives it
    /// from an idempotency key gets the first job again — and waits for the
    /// router's receipt until `deadline`. Nothing about it is kept after:
    /// the caller reads its outcome from the router's job record (an HTTP
    /// front end answering many requests on one client).
    pub fn send_as(&mut self, msgid: &str, command: Command, deadline: Instant) -> Result<Receipt, ClientError> {
        let m = Message::with_msgid(msgid.to_owned(), command);
        self.sender.send(&m)?;
        self.pending.insert(m.msgid.clone());
        let outcome = self.wait_receipt(&m.msgid, deadline);
        self.receipts.remove(&m.msgid);
        self.results.remove(&m.msgid);
        self.pending.remove(&m.msgid);
        outcome
    }

    /// The REQUEST [`Client::send_request`] would send, with this client's
    /// owner token.
    pub fn request_command(&self, queue: &str, job: &RunPayload, options: &Options) -> Command {
        self.request_payload_command(queue, job.to_wire(), options)
    }

    /// The REQUEST of a payload frame (`job.to_wire()`, or a command job's
    /// [`CommandPayload::to_wire`]), with this client's owner token and the
    /// `batch-replies` header: whoever sends it on a socket of its own
    /// gets receipts and results from our router as REPLIES too.
    pub fn request_payload_command(&self, queue: &str, payload_wire: String, options: &Options) -> Command {
        Command::Request(Request {
            queue: queue.to_owned(),
            headers: self.request_headers(options),
            payload: payload_wire,
        })
    }

    /// A REQUEST's header frame: the options', this client's owner token,
    /// and `batch-replies` — our router may then send this connection's
    /// receipts and results of a pass as one REPLIES (EventMQ's router and
    /// job manager ignore the header).
    fn request_headers(&self, options: &Options) -> String {
        let mut headers = options.headers();
        if !headers.is_empty() {
            headers.push(',');
        }
        headers.push_str("owner:");
        headers.push_str(&self.owner_token);
        headers.push(',');
        headers.push_str(emq_protocol::HEADER_BATCH_REPLIES);
        headers
    }

    /// Sends a job (REQUEST or WORKFLOW): its outcome is waited on, and it
    /// goes again under the same msgid while no receipt came.
    fn send_tracked(&mut self, m: Message) -> Result<String, ClientError> {
        self.sender.send(&m)?;
        Ok(self.track(m))
    }

    /// Keeps a sent job's msgid waited on, and the job for sending again.
    fn track(&mut self, m: Message) -> String {
        self.pending.insert(m.msgid.clone());
        self.pending_order.push_back(m.msgid.clone());
        let id = m.msgid.clone();
        if self.unreceipted.len() < MAX_UNRECEIPTED {
            self.unreceipted.push_back((id.clone(), m, Instant::now()));
        }
        id
    }

    /// Sends jobs of one queue and options together (`send_many`, `map`):
    /// once the router has shown it takes them (a REPLIES came on this
    /// connection), up to [`emq_protocol::MAX_BATCH_REPLIES`] jobs (and
    /// about a MiB of payloads) per REQUESTS message — one message, one
    /// wake-up and one parse on either side instead of one per job; one
    /// REQUEST each before. Each job is tracked exactly as
    /// [`Client::send_payload_until`]'s (its receipt, its outcome, sent
    /// again alone while unreceipted). Tries again while no router is
    /// reachable until `until`. The msgids of the jobs sent are pushed to
    /// `ids` in order, also when a later message fails.
    pub fn send_payloads_until(
        &mut self,
        queue: &str,
        payloads: &[String],
        options: &Options,
        until: Instant,
        ids: &mut Vec<String>,
    ) -> Result<(), ClientError> {
        let headers = self.request_headers(options);
        let mut rest = payloads;
        while !rest.is_empty() {
            if !self.router_takes_requests || rest.len() == 1 {
                let request = Request { queue: queue.to_owned(), headers: headers.clone(), payload: rest[0].clone() };
                let m = Message::new(Command::Request(request));
                ids.push(self.until_reachable(until, |c| {
                    c.sender.send(&m)?;
                    Ok(m.msgid.clone())
                })?);
                self.track(m);
                rest = &rest[1..];
                continue;
            }
            let (mut k, mut bytes) = (0, 0);
            while k < rest.len() && k < emq_protocol::MAX_BATCH_REPLIES && (k == 0 || bytes < REQUESTS_MAX_BYTES) {
                bytes += rest[k].len();
                k += 1;
            }
            let jobs: Vec<(String, Request)> = rest[..k]
                .iter()
                .map(|p| {
                    let r = Request { queue: queue.to_owned(), headers: headers.clone(), payload: p.clone() };
                    (emq_protocol::new_msgid(), r)
                })
                .collect();
            let batch = Message::new(Command::Requests(emq_protocol::Requests { jobs }));
            self.until_reachable(until, |c| {
                c.sender.send(&batch)?;
                Ok(String::new())
            })?;
            let Command::Requests(rs) = batch.command else { unreachable!("built as REQUESTS") };
            let mut job_ids = Vec::new();
            for m in rs.into_messages() {
                let id = self.track(m);
                if !self.requests_confirmed {
                    job_ids.push(id.clone());
                }
                ids.push(id);
            }
            if !self.requests_confirmed {
                if self.requests_sent.len() >= REQUESTS_REMEMBERED {
                    self.requests_sent.pop_front();
                }
                self.requests_sent.push_back((batch.msgid, job_ids));
            }
            rest = &rest[k..];
        }
        Ok(())
    }

    /// Whether jobs sent together go as one REQUESTS now (the router sent
    /// a REPLIES and has not refused a REQUESTS since).
    pub fn sends_requests(&self) -> bool {
        self.router_takes_requests
    }

    /// The router refused REQUESTS `msgid` (it does not take them from
    /// clients): its jobs go again one REQUEST each, and so do later ones.
    /// Whether `msgid` was one.
    fn requests_refused(&mut self, msgid: &str) -> bool {
        let Some(pos) = self.requests_sent.iter().position(|(id, _)| id == msgid) else { return false };
        let (_, jobs) = self.requests_sent.remove(pos).expect("found");
        self.router_takes_requests = false;
        self.requests_refused_once = true;
        tracing::warn!(jobs = jobs.len(), "the router does not take REQUESTS: sending its jobs one REQUEST each");
        for id in jobs {
            if let Some((_, m, _)) = self.unreceipted.iter().find(|(u, ..)| *u == id) {
                let m = m.clone();
                if let Err(e) = self.sender.send(&m) {
                    tracing::warn!(msgid = %id, error = %e, "cannot send a job again");
                }
            }
        }
        true
    }

    /// Results of `msgid` (a job this client did not send, e.g. the one a
    /// `unique` key pointed to) are kept for [`Client::wait`].
    pub fn expect(&mut self, msgid: &str) {
        if self.pending.insert(msgid.to_owned()) {
            self.pending_order.push_back(msgid.to_owned());
        }
    }

    /// Submits a workflow (see [`crate::workflow`]); returns its id (the
    /// WORKFLOW's msgid) at once. The receipt and the result come as for
    /// a job: [`Client::wait_receipt`], [`Client::wait`].
    pub fn submit_workflow(&mut self, graph: &emq_protocol::WorkflowGraph) -> Result<String, ClientError> {
        self.send_tracked(Message::new(Command::Workflow(emq_protocol::Workflow { graph: graph.clone() })))
    }

    /// [`Client::submit_workflow`] of a canvas (made into a graph with this
    /// client's owner token), trying again while no router is reachable
    /// until `until`.
    pub fn submit_canvas_until(
        &mut self,
        canvas: &crate::workflow::Canvas,
        until: Instant,
    ) -> Result<String, ClientError> {
        let graph = canvas.to_graph(&self.owner_token).map_err(ClientError::BadWorkflow)?;
        self.until_reachable(until, |c| c.submit_workflow(&graph))
    }

    /// Runs `send` again while no router is reachable (the send timed out:
    /// a client given a leader and its standbys, during a failover) until
    /// `until`, reading what arrives in between.
    fn until_reachable(
        &mut self,
        until: Instant,
        mut send: impl FnMut(&mut Self) -> Result<String, ClientError>,
    ) -> Result<String, ClientError> {
        loop {
            match send(self) {
                Err(ClientError::Socket(SenderError::Zmq(zmq::Error::EAGAIN))) if Instant::now() < until => {
                    let _ = self.pump(100);
                }
                other => return other,
            }
        }
    }

    /// [`Client::send_request`], trying again while no router is reachable
    /// (a client given a leader and its standbys, during a failover: a send
    /// gives up after a second when none of them is up) until `until`.
    pub fn send_request_until(
        &mut self,
        queue: &str,
        job: &RunPayload,
        options: &Options,
        until: Instant,
    ) -> Result<String, ClientError> {
        self.until_reachable(until, |c| c.send_request(queue, job, options))
    }

    /// [`Client::send_command`], trying again (after a reconnect) while
    /// no router is reachable, until `until`.
    pub fn send_command_until(
        &mut self,
        queue: &str,
        command: &CommandPayload,
        options: &Options,
        until: Instant,
    ) -> Result<String, ClientError> {
        self.until_reachable(until, |c| c.send_command(queue, command, options))
    }

    /// Makes (or replaces) a schedule of `job` in `queue`; waits for the
    /// router's receipt until `deadline`. Returns the schedule id (EventMQ's:
    /// the same callable and arguments always give the same id).
    pub fn schedule(
        &mut self,
        queue: &str,
        job: &RunPayload,
        spec: &ScheduleSpec,
        deadline: Instant,
    ) -> Result<String, ClientError> {
        let (interval_secs, cron) = match &spec.timing {
            emq_protocol::Timing::Interval(s) => (s.to_string(), String::new()),
            emq_protocol::Timing::Cron(c) => ("-1".to_owned(), c.clone()),
        };
        let order = emq_protocol::Schedule {
            queue: queue.to_owned(),
            headers: spec.headers(),
            interval_secs,
            payload: schedule_payload(job),
            cron,
        };
        let id = order.schedule_id().map_err(|e| ClientError::BadCallable(e.to_string()))?;
        self.send_order(Command::Schedule(order), deadline)?;
        Ok(id)
    }

    /// Removes the schedule of `job` (the same callable and arguments as
    /// scheduled); waits for the router's receipt until `deadline`.
    pub fn unschedule(&mut self, queue: &str, job: &RunPayload, deadline: Instant) -> Result<String, ClientError> {
        let order = emq_protocol::Schedule {
            queue: queue.to_owned(),
            headers: String::new(),
            interval_secs: "-1".into(),
            payload: schedule_payload(job),
            cron: String::new(),
        };
        let id = order.schedule_id().map_err(|e| ClientError::BadCallable(e.to_string()))?;
        self.send_order(Command::Unschedule(order), deadline)?;
        Ok(id)
    }

    /// Sends a SCHEDULE / UNSCHEDULE and waits for its receipt; a refusal
    /// is [`ClientError::Refused`].
    fn send_order(&mut self, command: Command, deadline: Instant) -> Result<(), ClientError> {
        let m = Message::new(command);
        self.sender.send(&m)?;
        // Pending only while its receipt is awaited (not asked about later).
        self.pending.insert(m.msgid.clone());
        let outcome = self.wait_receipt(&m.msgid, deadline);
        self.receipts.remove(&m.msgid);
        self.take_result(&m.msgid);
        self.pending.remove(&m.msgid);
        match outcome? {
            Receipt::Accepted | Receipt::Deduplicated(_) => Ok(()),
            Receipt::Refused(e) => Err(ClientError::Refused(e.message)),
        }
    }

    /// EventMQ-style convenience: `callable` is `pkg.mod.func` (split at the
    /// last dot) or `pkg.mod:Class.method`.
    pub fn defer_job(
        &mut self,
        queue: &str,
        callable: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: &Options,
    ) -> Result<String, ClientError> {
        let mut job = job_for(callable)?;
        job.args = args;
        job.kwargs = kwargs;
        self.send_request(queue, &job, options)
    }

    /// Reads whatever has arrived, waiting up to `timeout_ms` for the first
    /// message. Returns how many messages were read.
    pub fn pump(&mut self, timeout_ms: i64) -> Result<usize, ClientError> {
        let mut n = 0;
        let mut first = true;
        loop {
            let got = if first { self.sender.recv_timeout(timeout_ms)? } else { self.sender.try_recv()? };
            first = false;
            let Some(m) = got else {
                self.liveness.check(Instant::now());
                self.resend_unreceipted();
                return Ok(n);
            };
            n += 1;
            self.liveness.heard();
            let Ok(m) = m else { continue }; // garbage from a router: ignore
            match m.command {
                Command::Reply(reply) => self.on_reply(reply),
                Command::Replies(r) => {
                    self.router_takes_requests |= !self.requests_refused_once;
                    for (json, orig) in r.items {
                        self.on_reply(emq_protocol::Replies::reply_of(json, orig));
                    }
                }
                _ => {} // heartbeats and the like
            }
        }
    }

    /// A REPLY from the router (alone or from a REPLIES): a receipt, a
    /// status answer, or a job's outcome.
    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Single { body } => {
                if body.starts_with('{') {
                    self.liveness.answers = true;
                    if let Ok(v) = serde_json::from_str::<Value>(&body) {
                        self.take_status_answer(v);
                    }
                } else {
                    if !self.requests_sent.is_empty() && self.requests_sent.iter().any(|(_, jobs)| jobs.contains(&body))
                    {
                        self.requests_sent.clear();
                        self.requests_confirmed = true;
                    }
                    self.forget_unreceipted(&body);
                    if self.pending.contains(&body) {
                        // A receipt may come after its result (the router
                        // sends it once the job is on disk): only jobs
                        // still waited on keep one.
                        self.receipts.insert(body, Receipt::Accepted);
                    }
                }
            }
            Reply::Result { reply_json, orig_msgid } => {
                if !self.requests_sent.is_empty() && self.requests_refused(&orig_msgid) {
                    return;
                }
                if reply_json.contains("\"deduplicated\"") {
                    if let Some(holder) = serde_json::from_str::<Value>(&reply_json)
                        .ok()
                        .and_then(|v| v["deduplicated"].as_str().map(str::to_owned))
                    {
                        self.forget_unreceipted(&orig_msgid);
                        if self.pending.remove(&orig_msgid) {
                            self.receipts.insert(orig_msgid, Receipt::Deduplicated(holder));
                        }
                        return;
                    }
                }
                let reply = JobReply::from_json(&reply_json).unwrap_or_else(|e| {
                    JobReply::failed("BadReply", format!("unreadable reply {reply_json:?}: {e}"), "")
                });
                let outcome = JobOutcome::from_reply(reply);
                self.forget_unreceipted(&orig_msgid);
                if let JobOutcome::Refused(e) = &outcome {
                    if e.by_router {
                        self.receipts.entry(orig_msgid.clone()).or_insert(Receipt::Refused(e.clone()));
                    }
                }
                self.add_result(orig_msgid, outcome);
            }
        }
    }

    /// `msgid` has its receipt (or its outcome): nothing to send again.
    fn forget_unreceipted(&mut self, msgid: &str) {
        if self.unreceipted.is_empty() {
            return;
        }
        if self.unreceipted.front().is_some_and(|(id, ..)| id == msgid) {
            self.unreceipted.pop_front();
        } else if let Some(pos) = self.unreceipted.iter().position(|(id, ..)| id == msgid) {
            self.unreceipted.remove(pos);
        }
    }

    /// Requests whose receipt has not come for [`RESEND_AFTER`] go again
    /// under their msgid (to whichever router now answers), oldest first.
    ///
    /// Only to a router known to be ours (it answered a JOB_STATUS): it
    /// makes no second job of a msgid it holds. EventMQ's router would run
    /// each copy (and sends no receipt while no worker is free).
    fn resend_unreceipted(&mut self) {
        if !self.liveness.answers {
            return;
        }
        let Some((_, _, oldest)) = self.unreceipted.front() else { return };
        if oldest.elapsed() < RESEND_AFTER {
            return;
        }
        let now = Instant::now();
        let mut sent = 0;
        while sent < RESEND_BATCH {
            let Some((_, m, at)) = self.unreceipted.front() else { break };
            if now.saturating_duration_since(*at) < RESEND_AFTER || !matches!(self.sender.try_send(m), Ok(true)) {
                break;
            }
            let mut entry = self.unreceipted.pop_front().expect("front exists");
            entry.2 = now;
            self.unreceipted.push_back(entry);
            sent += 1;
        }
        if sent > 0 {
            tracing::debug!(requests = sent, "no receipt for a while: sent again under the same msgids");
        }
    }

    /// A result (the first one for a msgid counts; a job run twice by
    /// at-least-once delivery may report twice, and a restarted router
    /// sends the results of its last moments again). A result of a job no
    /// longer waited on — taken already, or forgotten — is dropped: kept,
    /// it would come out of [`Client::wait_any`] a second time and stay
    /// in memory for good.
    fn add_result(&mut self, msgid: String, outcome: JobOutcome) {
        if self.results.contains_key(&msgid) || !self.pending.contains(&msgid) {
            return;
        }
        if self.results.insert(msgid.clone(), outcome).is_none() {
            self.result_order.push_back(msgid);
        }
    }

    /// A JOB_STATUS answer: kept for `job_status`, and when it shows the
    /// final outcome of a job still waited on, that is its result (one
    /// that was sent while this client was away is not lost).
    fn take_status_answer(&mut self, v: Value) {
        if let Some(id) = v["msgid"].as_str() {
            if self.pending.contains(id) && !self.results.contains_key(id) {
                if let Some(o) = outcome_from_status(&v) {
                    self.add_result(id.to_owned(), o);
                }
            }
        }
        if self.status_answers.len() >= MAX_STATUS_ANSWERS {
            self.status_answers.pop_front();
        }
        self.status_answers.push_back(v);
    }

    /// The job is over for this client.
    fn settle(&mut self, msgid: &str) {
        self.receipts.remove(msgid);
        if self.pending.remove(msgid) {
            // Compact the order list now and then (it holds settled ids).
            if self.pending_order.len() > 2 * self.pending.len() + 64 {
                let pending = &self.pending;
                self.pending_order.retain(|id| pending.contains(id));
            }
        }
    }

    /// Asks the router for the records of up to `limit` jobs still waited
    /// on, taking turns (each round asks the next ones); their answers
    /// become results when final.
    fn ask_pending_status(&mut self, limit: usize) {
        let pending = &self.pending;
        self.pending_order.retain(|id| pending.contains(id));
        let n = limit.min(self.pending_order.len());
        for _ in 0..n {
            let Some(id) = self.pending_order.pop_front() else { break };
            let m = Message::new(Command::Admin(AdminCommand::JobStatus {
                job_msgid: id.clone(),
                owner_token: Some(self.owner_token.clone()),
            }));
            if self.sender.send(&m).is_ok() {
                self.liveness.asked(Instant::now());
            }
            self.pending_order.push_back(id);
        }
    }

    /// Jobs sent and not yet taken.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Waits for the router's receipt (or refusal) of `msgid`. A result
    /// counts as a receipt: the router sends the receipt once the job is on
    /// disk, which may be after the job already ran.
    pub fn wait_receipt(&mut self, msgid: &str, deadline: Instant) -> Result<Receipt, ClientError> {
        loop {
            if let Some(r) = self.receipts.remove(msgid) {
                return Ok(r);
            }
            match self.results.get(msgid) {
                Some(JobOutcome::Refused(e)) if e.by_router => return Ok(Receipt::Refused(e.clone())),
                // Any other outcome: the router accepted the job (its
                // receipt is on its way, after the journal's sync).
                Some(_) => return Ok(Receipt::Accepted),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Deadline);
            }
            self.pump(left.as_millis().max(1) as i64)?;
        }
    }

    /// Waits for the outcome of `msgid` until `deadline`. When nothing
    /// arrives for a while it asks the router's job record, so a result sent
    /// to an earlier connection is not lost.
    pub fn wait(&mut self, msgid: &str, deadline: Instant) -> JobOutcome {
        let mut last_poll = Instant::now();
        loop {
            self.log_router_notices();
            if let Some(o) = self.take_result(msgid) {
                return o;
            }
            let now = Instant::now();
            if now >= deadline {
                return JobOutcome::NoReply;
            }
            if now.duration_since(last_poll) >= STATUS_POLL {
                last_poll = now;
                if let Ok(Some(o)) = self.recover_from_record(msgid, deadline) {
                    // Asking may have heard the router come back: say so
                    // before returning (as when the REPLY itself comes).
                    self.log_router_notices();
                    return o;
                }
                continue;
            }
            let slice = deadline.saturating_duration_since(now).min(STATUS_POLL);
            if self.pump(slice.as_millis().max(1) as i64).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The next result of any job, in arrival order.
    pub fn wait_any(&mut self, deadline: Instant) -> Option<(String, JobOutcome)> {
        let mut last_heard = Instant::now();
        loop {
            self.log_router_notices();
            while let Some(id) = self.result_order.pop_front() {
                if let Some(o) = self.results.remove(&id) {
                    self.settle(&id);
                    return Some((id, o));
                }
            }
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return None;
            }
            if now.duration_since(last_heard) >= STATUS_POLL && !self.pending.is_empty() {
                // Nothing for a while: results may have gone to a connection
                // that dropped (a router restart); ask the records.
                last_heard = now;
                self.ask_pending_status(STATUS_ROUND);
            }
            if let Ok(n) = self.pump(left.min(STATUS_POLL).as_millis().max(1) as i64) {
                if n > 0 && !self.result_order.is_empty() {
                    last_heard = Instant::now();
                }
            }
        }
    }

    /// Takes every receipt (or refusal) received so far.
    pub fn drain_receipts(&mut self) -> Vec<(String, Receipt)> {
        self.receipts.drain().collect()
    }

    /// Takes the results already received for the jobs `want` says yes
    /// to, in arrival order, at most `max` (the others stay for their
    /// waiters): one call collects a whole batch of results. Also drops
    /// the arrival-order entries of results taken one by one since.
    pub fn take_results_where(&mut self, mut want: impl FnMut(&str) -> bool, max: usize) -> Vec<(String, JobOutcome)> {
        let mut out = Vec::new();
        if self.result_order.is_empty() || max == 0 {
            return out;
        }
        let order = std::mem::take(&mut self.result_order);
        let mut keep = VecDeque::with_capacity(order.len());
        for id in order {
            if !self.results.contains_key(&id) {
                continue; // taken already (take_result)
            }
            if out.len() < max && want(&id) {
                let o = self.results.remove(&id).expect("checked above");
                self.settle(&id);
                out.push((id, o));
            } else {
                keep.push_back(id);
            }
        }
        self.result_order = keep;
        out
    }

    /// Stops waiting on `msgid`: its receipt, result and place among the
    /// pending jobs are dropped (a job sent without asking for its result,
    /// once its receipt is read; jobs whose waiter gave up).
    pub fn forget(&mut self, msgid: &str) {
        self.receipts.remove(msgid);
        self.results.remove(msgid);
        self.settle(msgid);
    }

    /// [`Client::send_request`] of a payload frame the caller built
    /// ([`RunPayload::to_wire`]'s form; the job manager checks it), trying
    /// again while no router is reachable until `until` (see
    /// [`Client::send_request_until`]): many jobs of one callable are sent
    /// without building a [`RunPayload`] each.
    pub fn send_payload_until(
        &mut self,
        queue: &str,
        payload: &str,
        options: &Options,
        until: Instant,
    ) -> Result<String, ClientError> {
        self.until_reachable(until, |c| c.send_payload(queue, payload.to_owned(), options))
    }

    /// Takes an already-received result without waiting.
    pub fn take_result(&mut self, msgid: &str) -> Option<JobOutcome> {
        let o = self.results.remove(msgid)?;
        self.settle(msgid);
        Some(o)
    }

    /// The router's record of a job: state (`queued`, `dispatched`, `done`,
    /// `failed`, `refused`, `lost`), job manager, timestamps, attempts,
    /// result.
    pub fn job_status(&mut self, msgid: &str, deadline: Instant) -> Result<Value, ClientError> {
        self.ask_status(msgid)?;
        loop {
            if let Some(v) = self.take_status(msgid) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Deadline);
            }
            self.pump(left.as_millis().max(1) as i64)?;
        }
    }

    /// Sends a JOB_STATUS question without waiting; the answer (if the
    /// router sends one: EventMQ's does not) is read by [`Client::pump`]
    /// and taken with [`Client::take_status`].
    pub fn ask_status(&mut self, msgid: &str) -> Result<(), ClientError> {
        let token = self.owner_token.clone();
        self.ask_status_as(msgid, &token)
    }

    /// [`Client::ask_status`] with another client's owner token (a job sent
    /// by another process: Celery's `AsyncResult(id)`): the router shows
    /// its result only to the holder of the token it was sent with.
    pub fn ask_status_as(&mut self, msgid: &str, owner_token: &str) -> Result<(), ClientError> {
        let m = Message::new(Command::Admin(AdminCommand::JobStatus {
            job_msgid: msgid.to_owned(),
            owner_token: Some(owner_token.to_owned()),
        }));
        self.sender.send(&m)?;
        self.liveness.asked(Instant::now());
        Ok(())
    }

    /// Takes an already-received JOB_STATUS answer for `msgid`.
    /// Cancels a job (or workflow) this client sent: the router's answer
    /// (`{"cancelled": .., "was": ..}`, `{"cancelling": ..}` for a running
    /// job being stopped, or `{"error": ..}`), waiting until `deadline`.
    pub fn cancel(&mut self, msgid: &str, deadline: Instant) -> Result<Value, ClientError> {
        let m = Message::new(Command::Admin(AdminCommand::Cancel { job_msgid: msgid.to_owned() }));
        self.sender.send(&m)?;
        loop {
            if let Some(pos) = self.status_answers.iter().position(|v| v["cancel"] == msgid) {
                return Ok(self.status_answers.remove(pos).expect("position exists"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Deadline);
            }
            self.pump(left.as_millis().max(1) as i64)?;
        }
    }

    pub fn take_status(&mut self, msgid: &str) -> Option<Value> {
        let pos = self.status_answers.iter().position(|v| v["msgid"] == msgid)?;
        self.status_answers.remove(pos)
    }

    fn recover_from_record(&mut self, msgid: &str, deadline: Instant) -> Result<Option<JobOutcome>, ClientError> {
        let ask_until = (Instant::now() + Duration::from_millis(500)).min(deadline);
        let status = self.job_status(msgid, ask_until)?;
        if let Some(o) = self.take_result(msgid) {
            return Ok(Some(o));
        }
        Ok(outcome_from_status(&status))
    }

    /// Reconnects (under a new identity), keeping every receipt and result
    /// that already arrived; results of jobs sent before still reach
    /// [`Client::wait`], which recovers them from the router's job records.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        let _ = self.pump(0);
        self.sender.reopen()?;
        // Results that went to the old connection: ask for them now.
        self.ask_pending_status(usize::MAX);
        Ok(())
    }
}

/// The outcome a JOB_STATUS answer shows, once the job is over: the
/// record's result is what the client would have been sent (for a dead
/// letter, its last error). `None` while the job may still change.
pub fn outcome_from_status(status: &Value) -> Option<JobOutcome> {
    match (status["state"].as_str(), status.get("result")) {
        (Some(state), Some(r)) if is_final_state(state) && !r.is_null() => {
            let reply = serde_json::from_value::<JobReply>(r.clone()).unwrap_or_else(|_| JobReply::ok(r.clone()));
            Some(JobOutcome::from_reply(reply))
        }
        (Some("lost"), _) => Some(JobOutcome::WorkerDied(JobError {
            kind: JobErrorKind::JobManagerLost,
            message: "the job's job manager was lost".into(),
            traceback: String::new(),
            by_router: false,
            node: None,
            node_name: None,
        })),
        _ => None,
    }
}

/// Job states (as JOB_STATUS names them) after which nothing more happens
/// to a job unless an operator requeues it.
fn is_final_state(state: &str) -> bool {
    matches!(state, "done" | "failed" | "refused" | "lost" | "dead")
}

/// `pkg.mod.func` → path `pkg.mod`, callable `func`; `pkg.mod:Class.method`
/// → path `pkg.mod:Class`, callable `method`.
pub fn job_for(callable: &str) -> Result<RunPayload, ClientError> {
    let bad = || ClientError::BadCallable(callable.to_owned());
    let (path, name) = callable.rsplit_once('.').ok_or_else(bad)?;
    if path.is_empty() || name.is_empty() || name.contains(':') {
        return Err(bad());
    }
    Ok(RunPayload::new(path, name, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callable_forms() {
        let j = job_for("pkg.mod.func").unwrap();
        assert_eq!((j.path.as_str(), j.callable.as_str()), ("pkg.mod", "func"));
        let j = job_for("pkg.mod:Counter.bump").unwrap();
        assert_eq!((j.path.as_str(), j.callable.as_str()), ("pkg.mod:Counter", "bump"));
        assert!(job_for("nodot").is_err());
        assert!(job_for("mod.").is_err());
        assert!(job_for("a:b").is_err());
    }

    #[test]
    fn outcome_from_a_job_record() {
        let failed = JobReply::failed("ValueError", "boom", "tb").to_json();
        let rec = |state: &str| serde_json::json!({"state": state, "result": serde_json::from_str::<Value>(&failed).unwrap()});
        // A dead letter is over: its last error is the outcome (it used to
        // be taken for "still running", so a waiting client never heard).
        assert!(matches!(outcome_from_status(&rec("dead")), Some(JobOutcome::Failed(e)) if e.message == "boom"));
        assert!(matches!(outcome_from_status(&rec("failed")), Some(JobOutcome::Failed(_))));
        assert_eq!(outcome_from_status(&rec("retrying")), None, "a retrying job is not over");
        assert_eq!(outcome_from_status(&rec("dispatched")), None);
        assert!(matches!(
            outcome_from_status(&serde_json::json!({"state": "lost", "result": null})),
            Some(JobOutcome::WorkerDied(_))
        ));
    }

    #[test]
    fn outcomes_by_error_type() {
        let o = |k: &str| JobOutcome::from_reply(JobReply::failed(k, "m", ""));
        assert!(matches!(o("timeout"), JobOutcome::Timeout(_)));
        assert!(matches!(o("worker died"), JobOutcome::WorkerDied(_)));
        assert!(matches!(o("refused"), JobOutcome::Refused(_)));
        assert!(matches!(o("ValueError"), JobOutcome::Failed(_)));
        assert!(matches!(o("job manager lost"), JobOutcome::WorkerDied(_)));
        assert!(matches!(o("killed"), JobOutcome::WorkerDied(_)));
        assert_eq!(JobOutcome::from_reply(JobReply::ok(5.into())), JobOutcome::Value(5.into()));
        assert_eq!(JobOutcome::Value(5.into()).to_json().unwrap(), serde_json::json!({"value": 5}));
    }

    #[test]
    fn options_to_headers() {
        assert_eq!(Options::default().headers(), "reply-requested");
        let o = Options {
            reply_requested: false,
            guarantee: true,
            retry_count: Some(2),
            timeout: Some(5),
            delay: Some(Duration::from_millis(1500)),
            at: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            ..Options::default()
        };
        assert_eq!(o.headers(), "guarantee,retry-count:2,timeout:5,delay:1.5,eta:1800000000");
        let o = Options { limit: Some("api/customer-42".into()), ..Options::default() };
        assert_eq!(o.headers(), "reply-requested,limit:api/customer-42");
        assert_eq!(emq_protocol::Headers::parse(&o.headers()).limit.as_deref(), Some("api/customer-42"));
        for ok in ["api", "api/x", "api/"] {
            check_limit(ok).unwrap();
        }
        for bad in ["", "/x", " /x", "a,b", &"n".repeat(129), &format!("a/{}", "p".repeat(257))] {
            assert!(check_limit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn schedule_headers_and_eventmq_payload() {
        assert_eq!(ScheduleSpec::every(5).headers(), "guarantee", "EventMQ's default");
        let mut s = ScheduleSpec::cron("0 9 * * 1-5");
        s.nohaste = true;
        s.run_count = Some(3);
        s.tz = Some("Europe/Paris".into());
        s.no_overlap = true;
        s.misfire = Some(emq_protocol::Misfire::Skip);
        assert_eq!(s.headers(), "guarantee,nohaste,run_count:3,tz:Europe/Paris,no-overlap,misfire:skip");
        // The id EventMQ's Python gives `schedule(s, "emqjobs.add", args=(1, 2))`.
        let job = RunPayload::new("emqjobs", "add", vec![1.into(), 2.into()]);
        assert_eq!(
            emq_protocol::schedule_id_of_payload(&schedule_payload(&job)).unwrap(),
            "e037b3207577f260ad3c1dd8f4dd7db1acfb562f"
        );
    }
}
