//! The event stream: what happens to jobs (and job managers), numbered.
//!
//! Owns: turning journal records into events ([`Deriver`], pure: the same
//! records in the same order give the same events with the same offsets),
//! holding them until their record is durable, the bounded durable window
//! readers read ([`store::EventWindow`], files in `data_dir/events/`), and
//! the cursor kept in journal checkpoints.
//!
//! Why offsets come from the journal: every event is a journal record (the
//! job's own records — accepted, dispatched, retrying, finished — or a
//! `Record::Event` for what no other record tells: progress, a deduplicated
//! send, a job manager coming or going). Each such record, outside a
//! checkpoint, gets the next offset, in journal order. A crash loses no
//! offset a reader saw (events are published only once their record is
//! durable) and reuses none (replay gives the same records the same
//! offsets; every start journals a cursor past anything in the window).
//! A checkpoint keeps the cursor and the events not yet synced to the
//! window's files, so what the journal forgets the files still have.
//!
//! Does not own: HTTP (`crate::api` reads the window), what the records
//! mean for the router's state (`crate::state`), the journal's format.

pub mod store;

use emq_journal::{FinalState, Record};
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Value};
use std::sync::Arc;

pub use store::{EventWindow, Filter, Item, Page, StoredEvent};

/// A result or error longer than this (bytes of JSON) is left out of an
/// event (`result_truncated`): the job's record has it.
pub const EVENT_RESULT_BYTES: usize = 4096;

/// How much of the stream is kept: bytes, and optionally age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub bytes: u64,
    /// Seconds; `None` keeps events until the byte budget pushes them out.
    pub max_age: Option<f64>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { bytes: 64 << 20, max_age: Some(7.0 * 86400.0) }
    }
}

impl std::str::FromStr for Retention {
    type Err = String;

    /// `"64MiB 7d"`, `"1GB"`, `"12h"`, `"256MiB, 30d"`: a size (B, KB,
    /// KiB, MB, MiB, GB, GiB) and/or an age (s, m, h, d). Without a size
    /// the default 64 MiB holds (every history has a byte budget).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = Retention { bytes: 64 << 20, max_age: None };
        let mut any = false;
        for tok in s.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()) {
            any = true;
            let split = tok.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(tok.len());
            let (num, unit) = tok.split_at(split);
            let n: f64 = num.parse().map_err(|_| format!("{tok:?}: expected a number and a unit, e.g. 64MiB or 7d"))?;
            if !n.is_finite() || n <= 0.0 {
                return Err(format!("{tok:?}: must be more than 0"));
            }
            let bytes = |m: f64| Some(n * m);
            let secs = |m: f64| Some(n * m);
            let (b, a) = match unit {
                "B" | "b" => (bytes(1.0), None),
                "KB" | "kB" => (bytes(1e3), None),
                "KiB" => (bytes(1024.0), None),
                "MB" => (bytes(1e6), None),
                "MiB" => (bytes(1048576.0), None),
                "GB" => (bytes(1e9), None),
                "GiB" => (bytes(1073741824.0), None),
                "s" => (None, secs(1.0)),
                "m" | "min" => (None, secs(60.0)),
                "h" => (None, secs(3600.0)),
                "d" => (None, secs(86400.0)),
                other => {
                    return Err(format!("{tok:?}: unknown unit {other:?} (B, KB, KiB, MB, MiB, GB, GiB, s, m, h, d)"))
                }
            };
            if let Some(b) = b {
                if !(65536.0..=(16u64 << 30) as f64).contains(&b) {
                    return Err(format!("{tok:?}: the size must be between 64KiB and 16GiB"));
                }
                r.bytes = b as u64;
            }
            if let Some(a) = a {
                if !(60.0..=(3650.0 * 86400.0)).contains(&a) {
                    return Err(format!("{tok:?}: the age must be between 1m and 3650d"));
                }
                r.max_age = Some(a);
            }
        }
        if !any {
            return Err("empty: give a size and/or an age, e.g. \"64MiB 7d\"".into());
        }
        Ok(r)
    }
}

/// What a job (or job manager) event says beyond its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Accepted,
    Started {
        attempt: u32,
        job_manager: String,
    },
    Requeued {
        attempts: u32,
    },
    Retrying {
        attempt: u32,
        kind: String,
        message: String,
        due: f64,
    },
    Finished {
        state: FinalState,
        result: String,
        failure: Option<(String, String)>,
    },
    /// From a `Record::Event` (progress, deduplicated, job managers): its
    /// fields as journaled, minus `t` and `o`.
    Noted(serde_json::Map<String, Value>),
    /// An event rendered before (kept in a checkpoint): published as is.
    Line(Arc<str>),
}

/// An event as the deriver makes it: rendered to JSON off the router's
/// thread (by the window's writer).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub offset: u64,
    pub kind: &'static str,
    pub job: Option<Box<str>>,
    pub queue: Option<Arc<str>>,
    pub callable: Option<Arc<str>>,
    /// The job's `owner:` token (who may read it); never shown.
    pub owner: Option<Arc<str>>,
    pub at: f64,
    pub detail: Detail,
}

impl NewEvent {
    /// The event as readers get it.
    pub fn render(&self) -> StoredEvent {
        StoredEvent {
            offset: self.offset,
            at: self.at,
            kind: self.kind,
            job: self.job.clone(),
            queue: self.queue.clone(),
            owner: self.owner.clone(),
            line: self.line(),
        }
    }

    /// [`Self::render`], taking the event: its names move instead of
    /// being copied (the events thread renders every event of every job).
    pub fn into_stored(self) -> StoredEvent {
        let line = self.line();
        StoredEvent {
            offset: self.offset,
            at: self.at,
            kind: self.kind,
            job: self.job,
            queue: self.queue,
            owner: self.owner,
            line,
        }
    }

    fn line(&self) -> Arc<str> {
        match &self.detail {
            Detail::Line(l) => l.clone(),
            Detail::Noted(_) => self.render_via_map().into(),
            _ => self.render_fields().into(),
        }
    }

    /// The JSON of a job's own event written field by field, keys in the
    /// order [`Self::render_via_map`] gives them (a `serde_json::Map` sorts
    /// its keys) and each value through the same serializer: the same bytes
    /// without building a map per event (`tests::field_by_field_rendering_is_byte_for_byte_the_maps`).
    /// The events thread renders every job event, so at 20k jobs/s this is
    /// most of its time.
    fn render_fields(&self) -> String {
        /// Writes `,"key":` (no comma before the first key, `at`).
        fn key(out: &mut Vec<u8>, k: &str) {
            if out.len() > 1 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
        }
        /// A string value, escaped as `serde_json` escapes it.
        fn string(out: &mut Vec<u8>, v: &str) {
            // Writing to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, v);
        }
        fn error(out: &mut Vec<u8>, kind: &str, message: &str) {
            out.extend_from_slice(b"{\"kind\":");
            string(out, kind);
            out.extend_from_slice(b",\"message\":");
            string(out, message);
            out.push(b'}');
        }
        fn number<T: serde::Serialize>(out: &mut Vec<u8>, v: T) {
            let _ = serde_json::to_writer(&mut *out, &v);
        }
        let d = &self.detail;
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        // The keys in the order a `serde_json::Map` sorts them: at,
        // attempt, attempts, callable, due, error, job, job_manager,
        // offset, queue, reason, result, result_truncated, type.
        key(&mut out, "at");
        number(&mut out, json!(self.at));
        match d {
            Detail::Started { attempt, .. } | Detail::Retrying { attempt, .. } => {
                key(&mut out, "attempt");
                number(&mut out, attempt);
            }
            Detail::Requeued { attempts } => {
                key(&mut out, "attempts");
                number(&mut out, attempts);
            }
            _ => {}
        }
        if let Some(c) = &self.callable {
            key(&mut out, "callable");
            string(&mut out, c);
        }
        match d {
            Detail::Retrying { kind, message, due, .. } => {
                key(&mut out, "due");
                number(&mut out, json!(due));
                key(&mut out, "error");
                error(&mut out, kind, cut(message));
            }
            Detail::Finished { failure: Some((kind, message)), .. } => {
                key(&mut out, "error");
                error(&mut out, kind, cut(message));
            }
            _ => {}
        }
        if let Some(j) = &self.job {
            key(&mut out, "job");
            string(&mut out, j);
        }
        if let Detail::Started { job_manager, .. } = d {
            key(&mut out, "job_manager");
            string(&mut out, job_manager);
        }
        key(&mut out, "offset");
        number(&mut out, self.offset);
        if let Some(q) = &self.queue {
            key(&mut out, "queue");
            string(&mut out, q);
        }
        if let Detail::Finished { state, result, .. } = d {
            match state {
                FinalState::Lost => {
                    key(&mut out, "reason");
                    string(&mut out, "lost");
                }
                FinalState::Refused => {
                    key(&mut out, "reason");
                    string(&mut out, "refused");
                }
                FinalState::Done if result.len() > EVENT_RESULT_BYTES => {
                    key(&mut out, "result_truncated");
                    out.extend_from_slice(b"true");
                }
                FinalState::Done => {
                    key(&mut out, "result");
                    number(&mut out, result_value(result));
                }
                _ => {}
            }
        }
        key(&mut out, "type");
        string(&mut out, self.kind);
        out.push(b'}');
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The JSON of the event built as a `serde_json::Map` (keys sorted):
    /// for `Noted` events, whose fields are whatever was journaled, and the
    /// reference the field-by-field rendering is tested against.
    fn render_via_map(&self) -> String {
        match &self.detail {
            Detail::Line(l) => l.to_string(),
            d => {
                let mut v = serde_json::Map::new();
                v.insert("offset".into(), self.offset.into());
                v.insert("type".into(), self.kind.into());
                if let Some(j) = &self.job {
                    v.insert("job".into(), j.as_ref().into());
                }
                if let Some(q) = &self.queue {
                    v.insert("queue".into(), q.as_ref().into());
                }
                if let Some(c) = &self.callable {
                    v.insert("callable".into(), c.as_ref().into());
                }
                v.insert("at".into(), json!(self.at));
                match d {
                    Detail::Accepted | Detail::Line(_) => {}
                    Detail::Started { attempt, job_manager } => {
                        v.insert("attempt".into(), (*attempt).into());
                        v.insert("job_manager".into(), job_manager.as_str().into());
                    }
                    Detail::Requeued { attempts } => {
                        v.insert("attempts".into(), (*attempts).into());
                    }
                    Detail::Retrying { attempt, kind, message, due } => {
                        v.insert("attempt".into(), (*attempt).into());
                        v.insert("error".into(), json!({"kind": kind, "message": cut(message)}));
                        v.insert("due".into(), json!(due));
                    }
                    Detail::Finished { state, result, failure } => {
                        if let Some((kind, message)) = failure {
                            v.insert("error".into(), json!({"kind": kind, "message": cut(message)}));
                        }
                        match state {
                            FinalState::Lost => {
                                v.insert("reason".into(), "lost".into());
                            }
                            FinalState::Refused => {
                                v.insert("reason".into(), "refused".into());
                            }
                            _ => {}
                        }
                        if *state == FinalState::Done {
                            if result.len() > EVENT_RESULT_BYTES {
                                v.insert("result_truncated".into(), true.into());
                            } else {
                                v.insert("result".into(), result_value(result));
                            }
                        }
                    }
                    Detail::Noted(fields) => {
                        for (k, val) in fields {
                            if !v.contains_key(k) {
                                let val = match val {
                                    Value::String(t) => Value::String(cut(t).to_owned()),
                                    other => other.clone(),
                                };
                                v.insert(k.clone(), val);
                            }
                        }
                    }
                }
                Value::Object(v).to_string()
            }
        }
    }
}

/// A succeeded job's result as its event shows it: the `value` of the
/// reply (`null` when the reply is not JSON).
fn result_value(result: &str) -> Value {
    serde_json::from_str::<Value>(result)
        .ok()
        .map(|r| match r {
            Value::Object(mut o) if o.contains_key("value") => o.remove("value").unwrap_or(Value::Null),
            other => other,
        })
        .unwrap_or(Value::Null)
}

/// A message cut to the event budget (on a character boundary).
fn cut(s: &str) -> &str {
    if s.len() <= EVENT_RESULT_BYTES {
        return s;
    }
    let mut end = EVENT_RESULT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The event type of a final state.
fn final_kind(s: FinalState) -> &'static str {
    match s {
        FinalState::Done => "succeeded",
        FinalState::Failed | FinalState::Lost | FinalState::Refused => "failed",
        FinalState::Dead => "dead",
        FinalState::Cancelled => "cancelled",
    }
}

/// What the events of a live job need that later records do not carry.
#[derive(Debug, Clone)]
struct JobMeta {
    queue: Arc<str>,
    callable: Option<Arc<str>>,
    owner: Option<Arc<str>>,
}

/// Interned names seen at most (queue names and callables repeat).
const INTERN_MAX: usize = 10_000;

/// Records → events, with offsets. Pure: no clock, no I/O.
#[derive(Debug)]
pub struct Deriver {
    next: u64,
    jobs: HashMap<Box<str>, JobMeta>,
    in_checkpoint: bool,
    names: HashMap<Box<str>, Arc<str>>,
    /// The time of the last record that had one (a requeue has none).
    last_at: f64,
}

impl Default for Deriver {
    fn default() -> Self {
        Deriver { next: 1, jobs: HashMap::default(), in_checkpoint: false, names: HashMap::default(), last_at: 0.0 }
    }
}

/// The `path` and `callable` of a `["run", {...}]` payload, nothing else.
#[derive(serde::Deserialize)]
struct Target {
    #[serde(default)]
    path: String,
    #[serde(default)]
    callable: String,
}

impl Deriver {
    /// The offset the next event gets.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Live jobs it keeps names for.
    pub fn live_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Moves the cursor forward (never back) to `next`, returning the
    /// record that makes a replay do the same.
    pub fn advance_to(&mut self, next: u64) -> Record {
        self.next = self.next.max(next);
        self.cursor_record()
    }

    /// The cursor as a record: the next offset, and the time a requeue
    /// (a record without one) is given.
    pub fn cursor_record(&self) -> Record {
        Record::Event(json!({"t": "cursor", "next": self.next, "at": self.last_at}).to_string())
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        if self.names.len() < INTERN_MAX {
            self.names.insert(s.into(), a.clone());
        }
        a
    }

    fn take_offset(&mut self) -> u64 {
        self.next += 1;
        self.next - 1
    }

    /// The events of one record (in journal order), into `out`.
    pub fn on_record(&mut self, rec: &Record, out: &mut Vec<NewEvent>) {
        match rec {
            Record::CheckpointBegin { .. } => {
                self.in_checkpoint = true;
                self.jobs.clear();
            }
            Record::CheckpointEnd { .. } => self.in_checkpoint = false,
            Record::Accepted { job, .. } => {
                // `["run", {"path", "callable", ...}]`: the two names only.
                let callable = serde_json::from_str::<(String, Target)>(&job.payload)
                    .ok()
                    .filter(|(_, t)| !t.path.is_empty() || !t.callable.is_empty())
                    .map(|(_, t)| format!("{}.{}", t.path, t.callable));
                self.last_at = job.received;
                let owner = emq_protocol::Headers::parse(&job.headers).owner;
                let meta = JobMeta {
                    queue: self.intern(&job.queue),
                    callable: callable.map(|c| self.intern(&c)),
                    owner: owner.map(|o| Arc::from(o.as_str())),
                };
                self.jobs.insert(job.msgid.as_str().into(), meta.clone());
                if !self.in_checkpoint {
                    let offset = self.take_offset();
                    out.push(self.event(offset, "accepted", &job.msgid, Some(&meta), job.received, Detail::Accepted));
                }
            }
            _ if self.in_checkpoint => {
                if let Record::Event(body) = rec {
                    self.on_noted(body, out);
                }
            }
            Record::Dispatched { msgid, job_manager, attempt, at } => {
                let d = Detail::Started {
                    attempt: *attempt,
                    job_manager: String::from_utf8_lossy(job_manager).into_owned(),
                };
                self.job_event("started", msgid, *at, d, out);
            }
            Record::Requeued { msgid, attempts } => {
                let at = self.last_at;
                self.job_event("requeued", msgid, at, Detail::Requeued { attempts: *attempts }, out);
            }
            Record::Retrying { msgid, failure, due, .. } => {
                let d = Detail::Retrying {
                    attempt: failure.attempt,
                    kind: failure.kind.clone(),
                    message: failure.message.clone(),
                    due: *due,
                };
                self.job_event("retrying", msgid, failure.at, d, out);
            }
            Record::Finished { msgid, state, at, result, failure } => {
                let d = Detail::Finished {
                    state: *state,
                    result: result.clone(),
                    failure: failure.as_ref().map(|f| (f.kind.clone(), f.message.clone())),
                };
                self.job_event(final_kind(*state), msgid, *at, d, out);
                // A dead letter may be requeued: its later events keep its
                // names (dead letters are bounded by `dead_letter_max`).
                if *state != FinalState::Dead {
                    self.jobs.remove(msgid.as_str());
                }
            }
            Record::Event(body) => self.on_noted(body, out),
            _ => {}
        }
    }

    fn event(
        &self,
        offset: u64,
        kind: &'static str,
        job: &str,
        meta: Option<&JobMeta>,
        at: f64,
        detail: Detail,
    ) -> NewEvent {
        NewEvent {
            offset,
            kind,
            job: Some(job.into()),
            queue: meta.map(|m| m.queue.clone()),
            callable: meta.and_then(|m| m.callable.clone()),
            owner: meta.and_then(|m| m.owner.clone()),
            at,
            detail,
        }
    }

    fn job_event(&mut self, kind: &'static str, msgid: &str, at: f64, detail: Detail, out: &mut Vec<NewEvent>) {
        self.last_at = at;
        let offset = self.take_offset();
        let meta = self.jobs.get(msgid).cloned();
        out.push(self.event(offset, kind, msgid, meta.as_ref(), at, detail));
    }

    /// A `Record::Event`: a cursor, a kept event (checkpoints), or an
    /// event no other record tells.
    fn on_noted(&mut self, body: &str, out: &mut Vec<NewEvent>) {
        let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(body) else { return };
        let t = v.remove("t").and_then(|t| t.as_str().map(str::to_owned)).unwrap_or_default();
        match t.as_str() {
            "cursor" => {
                if let Some(n) = v.get("next").and_then(Value::as_u64) {
                    self.next = self.next.max(n);
                }
                if let Some(at) = v.get("at").and_then(Value::as_f64) {
                    self.last_at = at;
                }
            }
            "ev" => {
                let (Some(line), Some(offset)) =
                    (v.get("line").and_then(Value::as_str), v.get("offset").and_then(Value::as_u64))
                else {
                    return;
                };
                let kind = v.get("type").and_then(Value::as_str).map(known_kind).unwrap_or("unknown");
                out.push(NewEvent {
                    offset,
                    kind,
                    job: v.get("job").and_then(Value::as_str).map(Into::into),
                    queue: v.get("queue").and_then(Value::as_str).map(Arc::from),
                    callable: None,
                    owner: v.get("owner").and_then(Value::as_str).map(Arc::from),
                    at: v.get("at").and_then(Value::as_f64).unwrap_or(0.0),
                    detail: Detail::Line(Arc::from(line)),
                });
            }
            _ if self.in_checkpoint => {}
            kind @ ("progress" | "deduplicated" | "jobmanager_online" | "jobmanager_offline") => {
                let kind = known_kind(kind);
                let offset = self.take_offset();
                let at = v.remove("at").and_then(|a| a.as_f64()).unwrap_or(0.0);
                let owner = v.remove("o").and_then(|o| o.as_str().map(Arc::from));
                let job = v.remove("job").and_then(|j| j.as_str().map(Box::<str>::from));
                let meta = job.as_deref().and_then(|j| self.jobs.get(j)).cloned();
                let queue = match v.remove("queue").and_then(|q| q.as_str().map(|q| self.intern(q))) {
                    Some(q) => Some(q),
                    None => meta.as_ref().map(|m| m.queue.clone()),
                };
                out.push(NewEvent {
                    offset,
                    kind,
                    job,
                    queue,
                    callable: meta.as_ref().and_then(|m| m.callable.clone()),
                    owner: owner.or_else(|| meta.and_then(|m| m.owner)),
                    at,
                    detail: Detail::Noted(v),
                });
            }
            _ => {}
        }
    }
}

/// The static name of an event type (anything else: "unknown").
pub fn known_kind(s: &str) -> &'static str {
    EVENT_TYPES.iter().find(|k| **k == s).copied().unwrap_or("unknown")
}

/// The event types a reader may filter on.
pub const EVENT_TYPES: [&str; 13] = [
    "accepted",
    "started",
    "progress",
    "retrying",
    "requeued",
    "succeeded",
    "failed",
    "dead",
    "cancelled",
    "deduplicated",
    "jobmanager_online",
    "jobmanager_offline",
    "gap",
];

/// A rendered event as a checkpoint keeps it (`Record::Event` `ev`).
pub fn kept_record(e: &StoredEvent) -> Record {
    let mut v = json!({"t": "ev", "offset": e.offset, "type": e.kind, "at": e.at, "line": &*e.line});
    if let Some(j) = &e.job {
        v["job"] = j.as_ref().into();
    }
    if let Some(q) = &e.queue {
        v["queue"] = q.as_ref().into();
    }
    if let Some(o) = &e.owner {
        v["owner"] = o.as_ref().into();
    }
    Record::Event(v.to_string())
}

/// The server's side: the deriver, events waiting for their journal batch
/// to be durable, and the window they go to.
pub struct EventLog {
    deriver: Deriver,
    /// `(batch, event)`: published once `batch` is durable.
    pending: std::collections::VecDeque<(u64, NewEvent)>,
    window: Arc<EventWindow>,
    writer: store::Writer,
    /// Events replayed at start with offsets the window already had.
    skip_upto: u64,
    scratch: Vec<NewEvent>,
    replayed: Vec<NewEvent>,
}

impl EventLog {
    /// Opens the window in `dir` (before the journal is replayed).
    pub fn open(dir: &std::path::Path, retention: Retention) -> std::io::Result<EventLog> {
        let (window, writer) = store::open(dir, retention)?;
        let skip_upto = window.last_offset();
        Ok(EventLog {
            deriver: Deriver::default(),
            pending: Default::default(),
            window,
            writer,
            skip_upto,
            scratch: Vec::new(),
            replayed: Vec::new(),
        })
    }

    /// The window readers read.
    pub fn window(&self) -> Arc<EventWindow> {
        self.window.clone()
    }

    /// A replayed record: its events, where the window lacks them, are
    /// published (the record is durable).
    pub fn on_replay(&mut self, rec: &Record) {
        self.deriver.on_record(rec, &mut self.scratch);
        for e in self.scratch.drain(..) {
            if e.offset > self.skip_upto {
                self.skip_upto = e.offset;
                self.replayed.push(e);
                if self.replayed.len() >= 4096 {
                    self.writer.publish(std::mem::take(&mut self.replayed));
                }
            }
        }
    }

    /// After the replay: the cursor past everything a reader may have
    /// seen, as a record to journal first thing.
    pub fn finish_replay(&mut self) -> Record {
        self.writer.publish(std::mem::take(&mut self.replayed));
        let past_window = self.window.last_offset() + 1;
        self.deriver.advance_to(past_window)
    }

    /// A record journaled now in batch `batch`.
    pub fn on_live(&mut self, rec: &Record, batch: u64) {
        self.deriver.on_record(rec, &mut self.scratch);
        for e in self.scratch.drain(..) {
            self.pending.push_back((batch, e));
        }
    }

    /// Publishes what waited for batches up to `durable`.
    pub fn release(&mut self, durable: u64) {
        if self.pending.front().is_none_or(|(b, _)| *b > durable) {
            return;
        }
        let n = self.pending.iter().take_while(|(b, _)| *b <= durable).count();
        let batch: Vec<NewEvent> = self.pending.drain(..n).map(|(_, e)| e).collect();
        self.writer.publish(batch);
    }

    /// Publishes everything (the journal is closed: all of it durable).
    pub fn release_all(&mut self) {
        self.release(u64::MAX);
    }

    /// What a journal checkpoint must keep of the stream: the cursor, and
    /// every event the window's files may not have on disk yet (the
    /// records they came from are about to be forgotten).
    pub fn checkpoint_records(&mut self) -> Vec<Record> {
        self.writer.sync();
        let mut out = vec![self.deriver.cursor_record()];
        // Published but not synced to the files (a failed or slow disk):
        // kept here too, or the journal would forget their only copy.
        out.extend(self.window.events_after(self.window.synced_offset()).iter().map(kept_record));
        out.extend(self.pending.iter().map(|(_, e)| kept_record(&e.render())));
        out
    }

    /// Waits until the writer has published (and synced) all it was given.
    #[cfg(test)]
    pub fn writer_sync_for_tests(&self) {
        self.writer.sync();
    }

    /// Events waiting for their batch.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next offset.
    pub fn next_offset(&self) -> u64 {
        self.deriver.next_offset()
    }

    /// Stops the writer after it wrote and synced everything published.
    pub fn close(&mut self) {
        self.writer.stop();
    }
}

#[cfg(test)]
mod tests;
