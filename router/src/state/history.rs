//! A bounded record of recent jobs (setting `job_history`, oldest dropped
//! first): what state each is in, where it was sent, when, how many times,
//! and its result. Answers `JOB_STATUS`.
//!
//! Every change of a job's state goes through [`JobHistory::mark`], which
//! keeps the timestamps consistent with the state (dispatched when handed
//! out, finished when final, cleared when the job waits again); the caller
//! attaches what comes with the change (result, job manager) to the record
//! `mark` hands back.

use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting in a queue buffer for a free slot.
    Queued,
    /// Handed to a job manager.
    Dispatched,
    /// Finished; the result has no `error`.
    Done,
    /// Finished with an `error` (exception, timeout, worker died...).
    Failed,
    /// Not accepted (queue full, malformed).
    Refused,
    /// Its job manager vanished and it was not `guarantee`d.
    Lost,
    /// Failed; waiting for its next attempt.
    Retrying,
    /// Accepted with `delay:` / `eta:`; waiting for its time.
    Delayed,
    /// Cancelled (or purged) before it finished.
    Cancelled,
    /// Used up its retries: kept in the dead letters.
    Dead,
    /// Waiting for other jobs (a workflow node, `depends_on`).
    Held,
}

impl JobState {
    /// Nothing more happens to the job (unless an operator requeues a dead letter).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done
                | JobState::Failed
                | JobState::Refused
                | JobState::Lost
                | JobState::Dead
                | JobState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Dispatched => "dispatched",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Refused => "refused",
            JobState::Lost => "lost",
            JobState::Retrying => "retrying",
            JobState::Delayed => "delayed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
            JobState::Held => "held",
        }
    }
}

/// One job's record.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub queue: Arc<str>,
    pub state: JobState,
    /// The job manager it was last handed to.
    pub job_manager: Option<PeerId>,
    /// Unix seconds.
    pub received: f64,
    pub dispatched: Option<f64>,
    pub finished: Option<f64>,
    pub attempts: u32,
    /// The reply JSON, once finished (or of the last failed attempt).
    pub result: Option<String>,
    /// The client connection that sent it: it may read the result.
    pub client: Option<PeerId>,
    /// What most jobs do not have, boxed so a record of a plain job stays
    /// small (the router keeps `job_history` of them, 100,000 by default).
    pub extra: Option<Box<RecordExtra>>,
}

/// The rarer parts of a [`JobRecord`].
#[derive(Debug, Clone, Default)]
pub struct RecordExtra {
    /// Every failed attempt: which, why, when.
    pub attempt_errors: Vec<AttemptError>,
    /// The CURVE user it came from (the key's name), when the frontend
    /// uses CURVE.
    pub user: Option<Arc<str>>,
    /// The `owner:` token it was sent with: whoever presents it may read
    /// the result (a client that reconnected under a new identity).
    pub owner: Option<Box<str>>,
    /// The schedule that fired it and the time it was due (unix seconds).
    pub schedule: Option<(Box<str>, f64)>,
    /// The REQUEST headers it was sent with (when there were any).
    pub headers: Option<Box<str>>,
    /// Runs beyond the one whose result counts (a job manager that was
    /// silent came back with a report for a job that ran again meanwhile).
    pub duplicate_runs: u32,
    /// How far the job said it is (JOB_UPDATE), the last value.
    pub progress: Option<Box<emq_protocol::Progress>>,
}

impl JobRecord {
    /// A job just accepted into `queue`, received at `received` (unix seconds).
    pub fn queued(queue: Arc<str>, received: f64) -> Self {
        JobRecord {
            queue,
            state: JobState::Queued,
            job_manager: None,
            received,
            dispatched: None,
            finished: None,
            attempts: 0,
            result: None,
            client: None,
            extra: None,
        }
    }

    /// The rarer parts, made on first use.
    pub fn extra_mut(&mut self) -> &mut RecordExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub fn attempt_errors(&self) -> &[AttemptError] {
        self.extra.as_ref().map_or(&[], |e| &e.attempt_errors)
    }

    pub fn user(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.user.as_deref())
    }

    pub fn owner(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.owner.as_deref())
    }

    /// Sets the CURVE user and owner token (nothing is stored for neither).
    pub fn set_sender(&mut self, user: Option<Arc<str>>, owner: Option<String>) {
        if user.is_some() || owner.is_some() {
            let e = self.extra_mut();
            e.user = user;
            e.owner = owner.map(String::into_boxed_str);
        }
    }

    /// Whether `peer` (presenting `token`) may read this job's result and
    /// errors: the connection that sent it, or the holder of its owner
    /// token (compared in constant time).
    pub fn readable_by(&self, peer: &PeerId, token: Option<&str>) -> bool {
        self.client.as_ref() == Some(peer)
            || matches!((self.owner(), token), (Some(o), Some(t)) if constant_time_eq(o.as_bytes(), t.as_bytes()))
    }
}

/// Headers as shown: an `owner:` token is a secret (whoever presents it
/// reads the job's result), so only that there is one is shown.
fn redact_owner(headers: &str) -> String {
    headers
        .split(',')
        .map(|h| if h.trim_start().starts_with("owner:") { "owner:(hidden)" } else { h })
        .collect::<Vec<_>>()
        .join(",")
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One failed attempt of a job.
#[derive(Debug, Clone)]
pub struct AttemptError {
    pub attempt: u32,
    pub kind: String,
    pub message: String,
    /// The Python traceback, when the job manager sent one (at most 8 KiB;
    /// not journaled: gone after a restart).
    pub traceback: String,
    /// Unix seconds.
    pub at: f64,
}

/// Recent jobs by msgid, bounded in number (`job_history`) and in the
/// bytes of the results they keep (`results_max_bytes`).
///
/// Records sit in arrival order in a ring, found through an index of
/// sequence numbers; they only ever leave from the front (the oldest). A
/// map of whole records churned by inserts and removals doubled its table
/// (tombstones: hashbrown grows rather than rehash in place once more than
/// half full), 38 MB for the default 100,000; the ring holds records
/// densely and the index entries are 24 bytes.
#[derive(Debug)]
pub struct JobHistory {
    cap: usize,
    /// Records oldest first: `ring[i]` has sequence number `base + i`.
    ring: VecDeque<(Arc<str>, JobRecord)>,
    base: u64,
    /// msgid → sequence number.
    index: HashMap<Arc<str>, u64>,
    /// Bytes of results kept, at most `results_max_bytes`.
    result_bytes: usize,
    results_max_bytes: usize,
    /// Sequence numbers of the records whose result is kept, oldest result
    /// first (evicted first); those of forgotten records are skipped, and
    /// dropped in bulk before they could outnumber the records.
    with_results: VecDeque<u64>,
}

/// What a JOB_STATUS shows in place of a result that was not kept.
const RESULT_NOT_KEPT: &str = r#"{"value": null, "result_not_kept": "larger than the router keeps, or evicted to stay within results_max_bytes; the client that asked for a reply got it in full"}"#;

impl JobHistory {
    pub fn new(cap: usize) -> Self {
        JobHistory {
            cap,
            // Exactly `job_history` records (a doubled ring would keep up to
            // a third more slots than it ever fills); pages are touched
            // only as records come.
            ring: VecDeque::with_capacity(cap.min(1 << 18)),
            base: 0,
            index: HashMap::default(),
            result_bytes: 0,
            results_max_bytes: 256 << 20,
            with_results: VecDeque::new(),
        }
    }

    /// Where `msgid`'s record is in the ring.
    fn position(&self, msgid: &str) -> Option<usize> {
        let i = self.index.get(msgid)?.checked_sub(self.base)? as usize;
        // Always in range (records leave the ring and the index together);
        // checked all the same: a wrong index must not panic the router.
        (i < self.ring.len()).then_some(i)
    }

    /// The byte budget of kept results.
    pub fn set_results_max_bytes(&mut self, n: usize) {
        self.results_max_bytes = n;
        self.evict_results(0);
    }

    /// Keeps `result` as `msgid`'s result. One larger than a sixteenth of
    /// the budget is not kept (a note says so: a small JOB_STATUS must not
    /// fetch a huge answer); older results are evicted to stay within
    /// `results_max_bytes`. A refusal flood or a few huge results cannot
    /// grow the router.
    pub fn set_result(&mut self, msgid: &str, result: String) {
        let Some(i) = self.position(msgid) else { return };
        let seq = self.base + i as u64;
        let r = &mut self.ring[i].1;
        // The note that stands for a result not kept was never counted.
        let old = r.result.take().filter(|o| o != RESULT_NOT_KEPT).map_or(0, |o| o.len());
        self.result_bytes = self.result_bytes.saturating_sub(old);
        if result.len() > self.results_max_bytes / 16 {
            r.result = Some(RESULT_NOT_KEPT.to_owned());
            return;
        }
        let len = result.len();
        r.result = Some(result);
        if old == 0 {
            self.with_results.push_back(seq);
            if self.with_results.len() > 2 * self.ring.len() + 1024 {
                let base = self.base;
                self.with_results.retain(|s| *s >= base);
            }
        }
        self.result_bytes += len;
        self.evict_results(0);
    }

    /// Drops the oldest kept results until `room` more bytes fit.
    fn evict_results(&mut self, room: usize) {
        while self.result_bytes + room > self.results_max_bytes {
            let Some(seq) = self.with_results.pop_front() else { break };
            let Some(r) = seq.checked_sub(self.base).and_then(|i| self.ring.get_mut(i as usize)).map(|e| &mut e.1)
            else {
                continue;
            };
            if let Some(old) = r.result.take() {
                if old != RESULT_NOT_KEPT {
                    self.result_bytes = self.result_bytes.saturating_sub(old.len());
                }
                r.result = Some(RESULT_NOT_KEPT.to_owned());
            }
        }
    }

    /// Forgets the oldest record, with the bytes of its result.
    fn forget_oldest(&mut self) {
        let Some((id, r)) = self.ring.pop_front() else { return };
        self.base += 1;
        self.index.remove(&*id);
        if let Some(res) = r.result.filter(|x| x != RESULT_NOT_KEPT) {
            self.result_bytes = self.result_bytes.saturating_sub(res.len());
        }
    }

    /// Records a new job (a repeated msgid replaces its record).
    pub fn insert(&mut self, msgid: Arc<str>, record: JobRecord) {
        if self.cap == 0 {
            return;
        }
        if let Some(i) = self.position(&msgid) {
            self.ring[i].1 = record;
            return;
        }
        while self.ring.len() >= self.cap {
            self.forget_oldest();
        }
        self.index.insert(msgid.clone(), self.base + self.ring.len() as u64);
        self.ring.push_back((msgid, record));
    }

    /// Forgets finished jobs (and their results) that finished before
    /// `before` (unix seconds), oldest first; stops at the first record
    /// that is still live or recent (records are in arrival order, so a
    /// long-running old job holds back the expiry of the ones after it).
    /// Returns how many went.
    pub fn expire_finished(&mut self, before: f64) -> usize {
        let mut n = 0;
        while let Some((_, r)) = self.ring.front() {
            if !(r.state.is_final() && r.finished.is_some_and(|f| f < before)) {
                break;
            }
            self.forget_oldest();
            n += 1;
        }
        n
    }

    /// Changes the bound, dropping the oldest records beyond it.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
        while self.ring.len() > cap {
            self.forget_oldest();
        }
        if cap.min(1 << 18) > self.ring.capacity() {
            self.ring.reserve_exact(cap.min(1 << 18) - self.ring.len());
        }
    }

    /// Records that `msgid` is now in `state`, and sets the timestamp that
    /// goes with it: `dispatched` on dispatch, `finished` on a final state,
    /// no `finished` while it waits again. Returns the record for the
    /// details of the change; `None` when the job is not (or no longer)
    /// remembered.
    pub fn mark(&mut self, msgid: &str, state: JobState, now: f64) -> Option<&mut JobRecord> {
        self.mark_shared(msgid, state, now).map(|(_, r)| r)
    }

    /// [`Self::mark`], with the shared string the record is kept under
    /// (for maps that key by the msgid too: no copy of it).
    pub fn mark_shared(&mut self, msgid: &str, state: JobState, now: f64) -> Option<(&Arc<str>, &mut JobRecord)> {
        let i = self.position(msgid)?;
        let (key, r) = &mut self.ring[i];
        r.state = state;
        match state {
            JobState::Dispatched => r.dispatched = Some(now),
            JobState::Queued | JobState::Retrying | JobState::Delayed => r.finished = None,
            s if s.is_final() => r.finished = Some(now),
            _ => {}
        }
        Some((&*key, r))
    }

    /// Adds a failed attempt to `msgid`'s record (its state changes
    /// separately, through [`Self::mark`]).
    pub fn record_attempt_error(&mut self, msgid: &str, error: AttemptError) {
        if let Some(r) = self.get_mut(msgid) {
            r.extra_mut().attempt_errors.push(error);
        }
    }

    pub fn get_mut(&mut self, msgid: &str) -> Option<&mut JobRecord> {
        let i = self.position(msgid)?;
        Some(&mut self.ring[i].1)
    }

    pub fn get(&self, msgid: &str) -> Option<&JobRecord> {
        let i = self.position(msgid)?;
        Some(&self.ring[i].1)
    }

    /// Records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &JobRecord)> {
        self.ring.iter().map(|(id, r)| (id, r))
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The `JOB_STATUS` answer for `msgid`, with its result and error
    /// messages only when `full` (the asker may read them: see
    /// [`JobRecord::readable_by`]); others see the state and times.
    pub fn status_json(&self, msgid: &str, full: bool) -> String {
        match self.get(msgid) {
            Some(r) if !full => json!({
                "msgid": msgid,
                "user": r.user(),
                "state": r.state.as_str(),
                "queue": &*r.queue,
                "attempts": r.attempts,
                "received": r.received,
                "dispatched": r.dispatched,
                "finished": r.finished,
                "result_hidden": "only the client that sent the job (or its owner token) or an authenticated admin may read its result",
            }),
            None => json!({"msgid": msgid, "error": "unknown job (never seen, or older than job_history)"}),
            Some(r) => json!({
                "msgid": msgid,
                "state": r.state.as_str(),
                "queue": &*r.queue,
                "worker": r.job_manager.as_ref().map(|w| w.to_string()),
                "user": r.user(),
                "attempts": r.attempts,
                "received": r.received,
                "dispatched": r.dispatched,
                "finished": r.finished,
                "result": r.result.as_deref().map(|s| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.to_owned()))),
                "schedule": r.extra.as_ref().and_then(|e| e.schedule.as_ref()).map(|(id, fired)| json!({"id": &**id, "fired_at": fired})),
                "duplicate_runs": r.extra.as_ref().map_or(0, |e| e.duplicate_runs),
                "progress": r.extra.as_ref().and_then(|e| e.progress.as_deref()),
                "headers": r.extra.as_ref().and_then(|e| e.headers.as_deref()).map(redact_owner),
                "attempt_errors": r.attempt_errors().iter().map(|e| json!({
                    "attempt": e.attempt, "type": e.kind, "message": e.message, "at": e.at, "traceback": e.traceback,
                })).collect::<Vec<_>>(),
            }),
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> JobRecord {
        JobRecord::queued(Arc::from("q"), 1.0)
    }

    #[test]
    fn bounded_oldest_first() {
        let mut h = JobHistory::new(2);
        h.insert(Arc::from("a"), rec());
        h.insert(Arc::from("b"), rec());
        h.insert(Arc::from("a"), rec()); // replace, no growth
        h.insert(Arc::from("c"), rec());
        assert!(h.get("a").is_none());
        assert!(h.get("b").is_some() && h.get("c").is_some());
        assert_eq!(h.len(), 2);
        assert!(h.status_json("a", true).contains("unknown job"));
        let mut z = JobHistory::new(0);
        z.insert(Arc::from("a"), rec());
        assert!(z.is_empty());
    }

    #[test]
    fn the_ring_finds_records_after_the_oldest_went() {
        let mut h = JobHistory::new(3);
        for id in ["a", "b", "c", "d", "e"] {
            h.insert(Arc::from(id), rec());
            h.mark(id, JobState::Done, 2.0);
        }
        let ids: Vec<&str> = h.iter().map(|(k, _)| &**k).collect();
        assert_eq!(ids, ["c", "d", "e"], "oldest first");
        h.set_result("d", "{\"value\": 1}".into());
        assert_eq!(h.get("d").and_then(|r| r.result.as_deref()), Some("{\"value\": 1}"));
        assert_eq!(h.get("e").map(|r| r.state), Some(JobState::Done));
        // Expiry stops at the first record still live.
        h.mark("d", JobState::Dispatched, 3.0);
        assert_eq!(h.expire_finished(10.0), 1);
        assert!(h.get("c").is_none() && h.get("d").is_some() && h.get("e").is_some());
        h.set_cap(1);
        assert_eq!(h.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(), ["e"]);
        assert_eq!(h.result_bytes, 0, "the forgotten result's bytes are given back");
        h.insert(Arc::from("f"), rec());
        assert!(h.get("e").is_none() && h.get("f").is_some());
    }

    #[test]
    fn kept_results_are_accounted_and_their_list_stays_bounded() {
        let mut h = JobHistory::new(100);
        for i in 0..10_000 {
            let id = format!("j{i}");
            h.insert(Arc::from(id.as_str()), rec());
            h.set_result(&id, "{\"value\": 1}".into());
        }
        assert!(h.with_results.len() <= 2 * 100 + 1024, "{}", h.with_results.len());
        assert_eq!(h.result_bytes, 100 * "{\"value\": 1}".len(), "only the records kept count");
        // A result too big to keep, then a normal one: counted once.
        h.set_results_max_bytes(16 * 64);
        let before = h.result_bytes;
        h.set_result("j9999", "x".repeat(100));
        assert_eq!(h.get("j9999").and_then(|r| r.result.as_deref()), Some(RESULT_NOT_KEPT));
        h.set_result("j9999", "{\"value\": 2}".into());
        assert!(h.result_bytes <= before, "{} > {before}", h.result_bytes);
        assert!(h.result_bytes <= 16 * 64);
    }
}
