//! The journal's records and their binary encoding.
//!
//! A record says what happened to one job (accepted, dispatched, waiting
//! again, retrying, finished) or marks a checkpoint. Encoding is a tag byte
//! followed by fixed-width little-endian numbers and length-prefixed byte
//! strings: no schema machinery, no escaping of the JSON payloads inside,
//! and decoding of arbitrary bytes never panics (it returns
//! [`RecordError`]). The frame around each record (length and CRC32C) is
//! in `segment.rs`.

use thiserror::Error;

/// Why bytes are not a record. Only seen for damaged files: a frame whose
/// checksum matched but whose contents do not parse (a bug or a format
/// change), reported with the segment and offset by the reader.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("record ends early (needed {needed} more bytes)")]
    Short { needed: usize },
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    #[error("unknown job state code {0}")]
    UnknownState(u8),
    #[error("text field is not UTF-8")]
    NotUtf8,
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// A job as it was accepted: everything needed to run it again.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedJob {
    pub msgid: String,
    /// The client's ZeroMQ identity (results go back to it).
    pub client: Vec<u8>,
    /// The queue it waits in (after fallback to `default`).
    pub queue: String,
    /// The queue name the client asked for, when different.
    pub requested_queue: Option<String>,
    pub headers: String,
    pub payload: String,
    /// Unix seconds.
    pub received: f64,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFailure {
    pub attempt: u32,
    pub kind: String,
    pub message: String,
    /// Unix seconds.
    pub at: f64,
}

/// Where a finished job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    Done,
    Failed,
    /// Its job manager was lost (or the router restarted) and it could not run again.
    Lost,
    /// Used up its retries: kept as a dead letter.
    Dead,
    Refused,
    /// Cancelled or purged before it finished.
    Cancelled,
}

impl FinalState {
    fn code(self) -> u8 {
        match self {
            FinalState::Done => 0,
            FinalState::Failed => 1,
            FinalState::Lost => 2,
            FinalState::Dead => 3,
            FinalState::Refused => 4,
            FinalState::Cancelled => 5,
        }
    }

    fn from_code(c: u8) -> Result<Self, RecordError> {
        Ok(match c {
            0 => FinalState::Done,
            1 => FinalState::Failed,
            2 => FinalState::Lost,
            3 => FinalState::Dead,
            4 => FinalState::Refused,
            5 => FinalState::Cancelled,
            other => return Err(RecordError::UnknownState(other)),
        })
    }
}

/// A finished job as its history record keeps it (written in checkpoints,
/// so JOB_STATUS answers survive a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedJob {
    pub msgid: String,
    pub queue: String,
    pub state: FinalState,
    pub job_manager: Option<Vec<u8>>,
    pub received: f64,
    pub dispatched: Option<f64>,
    pub finished: f64,
    pub attempts: u32,
    pub result: Option<String>,
    pub failures: Vec<AttemptFailure>,
}

/// A schedule as the router keeps it (EventMQ's SCHEDULE order plus what
/// the router learnt running it).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleEntry {
    /// EventMQ's id: SHA-1 hex of the callable and its arguments.
    pub id: String,
    pub queue: String,
    /// The SCHEDULE's header frame as received (schedule-only headers and
    /// the fired jobs' headers).
    pub headers: String,
    /// Seconds between runs; -1 when `cron` is used.
    pub interval_secs: i64,
    pub cron: String,
    pub payload: String,
    /// Unix seconds of the next run.
    pub next_due: f64,
    /// Runs so far.
    pub runs: u64,
    /// Runs left; `None` for ever.
    pub runs_left: Option<u64>,
    /// Unix seconds it was (last) scheduled.
    pub created: f64,
    /// The CURVE user that scheduled it (none on a plaintext frontend).
    pub user: Option<String>,
}

/// One entry of the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Accepted from a client; its receipt waits until this is durable.
    /// In a checkpoint, `attempts` dispatches were behind it already.
    Accepted {
        job: AcceptedJob,
        attempts: u32,
    },
    /// Handed to a job manager (attempt number `attempt`).
    Dispatched {
        msgid: String,
        job_manager: Vec<u8>,
        attempt: u32,
        at: f64,
    },
    /// Waiting in its queue again, at the front (its job manager was lost,
    /// its retry came due, or a dead letter was requeued), with `attempts`
    /// dispatches behind it.
    Requeued {
        msgid: String,
        attempts: u32,
    },
    /// An attempt failed; the next one is due at `due` (unix seconds).
    Retrying {
        msgid: String,
        failure: AttemptFailure,
        due: f64,
        result: String,
    },
    /// The final outcome. `failure` is set when it failed.
    Finished {
        msgid: String,
        state: FinalState,
        at: f64,
        result: String,
        failure: Option<AttemptFailure>,
    },
    /// A finished job's history (checkpoints only).
    History(FinishedJob),
    /// A checkpoint starts: the records up to the matching end describe
    /// all live state; nothing before it is needed any more.
    CheckpointBegin {
        id: u64,
    },
    CheckpointEnd {
        id: u64,
    },
    /// An accepted job (its `Accepted` record is before this) waits until
    /// `due` (unix seconds) before it is queued: `delay:` / `eta:`.
    Delayed {
        msgid: String,
        due: f64,
    },
    /// A schedule was made or replaced (in checkpoints: one per schedule).
    ScheduleSet(ScheduleEntry),
    /// A schedule was removed (UNSCHEDULE, or its runs were used up).
    ScheduleRemoved {
        id: String,
    },
    /// A schedule fired at `at` as job `msgid` (its `Accepted` record is
    /// before this); it fires next at `next_due`.
    ScheduleFired {
        id: String,
        msgid: String,
        at: f64,
        next_due: f64,
    },
    /// An operator paused (or resumed) a queue.
    QueuePaused {
        queue: String,
        paused: bool,
    },
    /// A finished job's result could not reach its client (not connected:
    /// the router had just restarted): it is sent again until it does,
    /// also after a restart (in checkpoints: one per result still waiting).
    ResultPending {
        msgid: String,
    },
    /// ... and now it went out.
    ResultDelivered {
        msgid: String,
    },
    /// In a checkpoint, after the finished jobs' history (whose records do
    /// not keep clients): the client a result is still to reach
    /// (`ResultPending`), or reached in the last moments before the
    /// checkpoint, and when — a restart after a kill sends those again
    /// (the router's `result_resend_window`).
    ResultClient {
        msgid: String,
        client: Vec<u8>,
        at: f64,
    },
    /// The workflows room's own record (a workflow or a held job accepted,
    /// a node's input, a workflow's end): JSON the router's `workflows`
    /// module writes and reads; the journal only stores it.
    Workflow(String),
    /// A running job kept a checkpoint (its JSON text): a retried attempt
    /// is handed the last one; dropped when the job is final.
    JobCheckpoint {
        msgid: String,
        data: String,
    },
    /// The event stream's own record (JSON the router's `events` module
    /// writes and reads: an event no other record tells — progress, a
    /// deduplicated send, a job manager coming or going — or the event
    /// cursor): the journal only stores it.
    Event(String),
}

impl Record {
    /// The job it is about (none for checkpoint markers).
    pub fn msgid(&self) -> Option<&str> {
        match self {
            Record::Accepted { job, .. } => Some(&job.msgid),
            Record::Dispatched { msgid, .. }
            | Record::Requeued { msgid, .. }
            | Record::Retrying { msgid, .. }
            | Record::Finished { msgid, .. } => Some(msgid),
            Record::History(h) => Some(&h.msgid),
            Record::Delayed { msgid, .. } | Record::ScheduleFired { msgid, .. } => Some(msgid),
            Record::ResultPending { msgid } | Record::ResultDelivered { msgid } => Some(msgid),
            Record::ResultClient { msgid, .. } => Some(msgid),
            Record::JobCheckpoint { msgid, .. } => Some(msgid),
            Record::CheckpointBegin { .. }
            | Record::CheckpointEnd { .. }
            | Record::ScheduleSet(_)
            | Record::ScheduleRemoved { .. }
            | Record::QueuePaused { .. }
            | Record::Workflow(_)
            | Record::Event(_) => None,
        }
    }

    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Record::Accepted { job, attempts } => {
                w.u8(1);
                w.str(&job.msgid);
                w.bytes(&job.client);
                w.str(&job.queue);
                w.opt_str(job.requested_queue.as_deref());
                w.str(&job.headers);
                w.str(&job.payload);
                w.f64(job.received);
                w.u32(*attempts);
            }
            Record::Dispatched { msgid, job_manager, attempt, at } => {
                w.u8(2);
                w.str(msgid);
                w.bytes(job_manager);
                w.u32(*attempt);
                w.f64(*at);
            }
            Record::Requeued { msgid, attempts } => {
                w.u8(3);
                w.str(msgid);
                w.u32(*attempts);
            }
            Record::Retrying { msgid, failure, due, result } => {
                w.u8(4);
                w.str(msgid);
                w.failure(failure);
                w.f64(*due);
                w.str(result);
            }
            Record::Finished { msgid, state, at, result, failure } => {
                w.u8(5);
                w.str(msgid);
                w.u8(state.code());
                w.f64(*at);
                w.str(result);
                match failure {
                    None => w.u8(0),
                    Some(f) => {
                        w.u8(1);
                        w.failure(f);
                    }
                }
            }
            Record::History(h) => {
                w.u8(6);
                w.str(&h.msgid);
                w.str(&h.queue);
                w.u8(h.state.code());
                match &h.job_manager {
                    None => w.u8(0),
                    Some(p) => {
                        w.u8(1);
                        w.bytes(p);
                    }
                }
                w.f64(h.received);
                w.f64(h.dispatched.unwrap_or(f64::NAN));
                w.f64(h.finished);
                w.u32(h.attempts);
                w.opt_str(h.result.as_deref());
                w.u32(h.failures.len() as u32);
                for f in &h.failures {
                    w.failure(f);
                }
            }
            Record::CheckpointBegin { id } => {
                w.u8(7);
                w.u64(*id);
            }
            Record::CheckpointEnd { id } => {
                w.u8(8);
                w.u64(*id);
            }
            Record::Delayed { msgid, due } => {
                w.u8(9);
                w.str(msgid);
                w.f64(*due);
            }
            Record::ScheduleSet(e) => {
                w.u8(10);
                w.str(&e.id);
                w.str(&e.queue);
                w.str(&e.headers);
                w.u64(e.interval_secs as u64);
                w.str(&e.cron);
                w.str(&e.payload);
                w.f64(e.next_due);
                w.u64(e.runs);
                w.u64(e.runs_left.unwrap_or(u64::MAX));
                w.f64(e.created);
                w.opt_str(e.user.as_deref());
            }
            Record::ScheduleRemoved { id } => {
                w.u8(11);
                w.str(id);
            }
            Record::QueuePaused { queue, paused } => {
                w.u8(13);
                w.str(queue);
                w.u8(u8::from(*paused));
            }
            Record::ResultPending { msgid } => {
                w.u8(14);
                w.str(msgid);
            }
            Record::ResultDelivered { msgid } => {
                w.u8(15);
                w.str(msgid);
            }
            Record::ResultClient { msgid, client, at } => {
                w.u8(19);
                w.str(msgid);
                w.bytes(client);
                w.f64(*at);
            }
            Record::Workflow(body) => {
                w.u8(16);
                w.str(body);
            }
            Record::Event(body) => {
                w.u8(18);
                w.str(body);
            }
            Record::JobCheckpoint { msgid, data } => {
                w.u8(17);
                w.str(msgid);
                w.str(data);
            }
            Record::ScheduleFired { id, msgid, at, next_due } => {
                w.u8(12);
                w.str(id);
                w.str(msgid);
                w.f64(*at);
                w.f64(*next_due);
            }
        }
    }

    /// Decodes one whole record.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let rec = match r.u8()? {
            1 => Record::Accepted {
                job: AcceptedJob {
                    msgid: r.str()?,
                    client: r.bytes()?,
                    queue: r.str()?,
                    requested_queue: r.opt_str()?,
                    headers: r.str()?,
                    payload: r.str()?,
                    received: r.f64()?,
                },
                attempts: r.u32()?,
            },
            2 => Record::Dispatched { msgid: r.str()?, job_manager: r.bytes()?, attempt: r.u32()?, at: r.f64()? },
            3 => Record::Requeued { msgid: r.str()?, attempts: r.u32()? },
            4 => Record::Retrying { msgid: r.str()?, failure: r.failure()?, due: r.f64()?, result: r.str()? },
            5 => Record::Finished {
                msgid: r.str()?,
                state: FinalState::from_code(r.u8()?)?,
                at: r.f64()?,
                result: r.str()?,
                failure: match r.u8()? {
                    0 => None,
                    _ => Some(r.failure()?),
                },
            },
            6 => {
                let msgid = r.str()?;
                let queue = r.str()?;
                let state = FinalState::from_code(r.u8()?)?;
                let job_manager = match r.u8()? {
                    0 => None,
                    _ => Some(r.bytes()?),
                };
                let received = r.f64()?;
                let dispatched = Some(r.f64()?).filter(|d| !d.is_nan());
                let finished = r.f64()?;
                let attempts = r.u32()?;
                let result = r.opt_str()?;
                let n = r.u32()? as usize;
                // Each failure takes at least 20 bytes: bound the allocation
                // by what is there, not by what the count claims.
                let mut failures = Vec::with_capacity(n.min(r.remaining() / 20));
                for _ in 0..n {
                    failures.push(r.failure()?);
                }
                Record::History(FinishedJob {
                    msgid,
                    queue,
                    state,
                    job_manager,
                    received,
                    dispatched,
                    finished,
                    attempts,
                    result,
                    failures,
                })
            }
            7 => Record::CheckpointBegin { id: r.u64()? },
            8 => Record::CheckpointEnd { id: r.u64()? },
            9 => Record::Delayed { msgid: r.str()?, due: r.f64()? },
            10 => Record::ScheduleSet(ScheduleEntry {
                id: r.str()?,
                queue: r.str()?,
                headers: r.str()?,
                interval_secs: r.u64()? as i64,
                cron: r.str()?,
                payload: r.str()?,
                next_due: r.f64()?,
                runs: r.u64()?,
                runs_left: Some(r.u64()?).filter(|n| *n != u64::MAX),
                created: r.f64()?,
                user: r.opt_str()?,
            }),
            11 => Record::ScheduleRemoved { id: r.str()? },
            13 => Record::QueuePaused { queue: r.str()?, paused: r.u8()? != 0 },
            12 => Record::ScheduleFired { id: r.str()?, msgid: r.str()?, at: r.f64()?, next_due: r.f64()? },
            14 => Record::ResultPending { msgid: r.str()? },
            15 => Record::ResultDelivered { msgid: r.str()? },
            16 => Record::Workflow(r.str()?),
            17 => Record::JobCheckpoint { msgid: r.str()?, data: r.str()? },
            18 => Record::Event(r.str()?),
            19 => Record::ResultClient { msgid: r.str()?, client: r.bytes()?, at: r.f64()? },
            other => return Err(RecordError::UnknownTag(other)),
        };
        match r.remaining() {
            0 => Ok(rec),
            n => Err(RecordError::Trailing(n)),
        }
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn failure(&mut self, f: &AttemptFailure) {
        self.u32(f.attempt);
        self.str(&f.kind);
        self.str(&f.message);
        self.f64(f.at);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.remaining() < n {
            return Err(RecordError::Short { needed: n - self.remaining() });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> Result<f64, RecordError> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, RecordError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, RecordError> {
        String::from_utf8(self.bytes()?).map_err(|_| RecordError::NotUtf8)
    }
    fn opt_str(&mut self) -> Result<Option<String>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }
    fn failure(&mut self) -> Result<AttemptFailure, RecordError> {
        Ok(AttemptFailure { attempt: self.u32()?, kind: self.str()?, message: self.str()?, at: self.f64()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn samples() -> Vec<Record> {
        let f = AttemptFailure { attempt: 1, kind: "ValueError".into(), message: "boom".into(), at: 5.5 };
        vec![
            Record::Accepted {
                job: AcceptedJob {
                    msgid: "m1".into(),
                    client: vec![0, 1, 2],
                    queue: "default".into(),
                    requested_queue: Some("nosuch".into()),
                    headers: "guarantee".into(),
                    payload: r#"["run", {"path": "a", "callable": "b"}]"#.into(),
                    received: 1.25,
                },
                attempts: 0,
            },
            Record::Dispatched { msgid: "m1".into(), job_manager: b"jm".to_vec(), attempt: 1, at: 2.0 },
            Record::Requeued { msgid: "m1".into(), attempts: 1 },
            Record::Retrying { msgid: "m1".into(), failure: f.clone(), due: 9.0, result: "{}".into() },
            Record::Finished {
                msgid: "m1".into(),
                state: FinalState::Dead,
                at: 10.0,
                result: "{}".into(),
                failure: Some(f.clone()),
            },
            Record::Finished {
                msgid: "m2".into(),
                state: FinalState::Done,
                at: 10.0,
                result: "5".into(),
                failure: None,
            },
            Record::History(FinishedJob {
                msgid: "m3".into(),
                queue: "q".into(),
                state: FinalState::Failed,
                job_manager: Some(b"jm".to_vec()),
                received: 1.0,
                dispatched: None,
                finished: 3.0,
                attempts: 2,
                result: Some("{}".into()),
                failures: vec![f.clone(), f],
            }),
            Record::CheckpointBegin { id: 7 },
            Record::CheckpointEnd { id: 7 },
            Record::Delayed { msgid: "d".into(), due: 1.7e9 },
            Record::ScheduleSet(ScheduleEntry {
                id: "e037b3207577f260ad3c1dd8f4dd7db1acfb562f".into(),
                queue: "default".into(),
                headers: "guarantee,run_count:3".into(),
                interval_secs: -1,
                cron: "* * * * * 30".into(),
                payload: r#"["run", {"path": "a", "callable": "b"}]"#.into(),
                next_due: 1.7e9,
                runs: 2,
                runs_left: Some(1),
                created: 1.6e9,
                user: Some("alice".into()),
            }),
            Record::ScheduleSet(ScheduleEntry {
                id: "x".into(),
                queue: "q".into(),
                headers: String::new(),
                interval_secs: 5,
                cron: String::new(),
                payload: String::new(),
                next_due: 3.0,
                runs: 0,
                runs_left: None,
                created: 1.0,
                user: None,
            }),
            Record::ScheduleRemoved { id: "x".into() },
            Record::ScheduleFired { id: "x".into(), msgid: "m".into(), at: 2.0, next_due: 7.0 },
            Record::QueuePaused { queue: "q".into(), paused: true },
            Record::ResultPending { msgid: "r".into() },
            Record::ResultDelivered { msgid: "r".into() },
            Record::ResultClient { msgid: "r".into(), client: b"c\x00\xff".to_vec(), at: 5.5 },
            Record::Workflow(r#"{"t":"flow"}"#.into()),
            Record::JobCheckpoint { msgid: "c".into(), data: r#"{"page":3}"#.into() },
            Record::Event(r#"{"t":"cursor","next":7}"#.into()),
            Record::Finished {
                msgid: "c".into(),
                state: FinalState::Cancelled,
                at: 1.0,
                result: String::new(),
                failure: None,
            },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for rec in samples() {
            let mut buf = Vec::new();
            rec.encode(&mut buf);
            assert_eq!(Record::decode(&buf).unwrap(), rec);
            // Any truncation is an error, never a panic or a wrong record.
            for cut in 0..buf.len() {
                assert!(Record::decode(&buf[..cut]).is_err(), "{rec:?} cut at {cut}");
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }
    }
}
