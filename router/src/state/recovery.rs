//! Recovery: the router's state rebuilt from its journal at start, the
//! checkpoint records that describe the live state, and the jobs "in
//! doubt" — running when the router stopped.
//!
//! Replay hands every journal record to [`RouterState::restore`] in order;
//! [`RouterState::finish_restore`] then puts each job where it was:
//! buffered jobs wait again in their queues, in their order; failed jobs
//! keep their retry's due time; dead letters and the recent job history
//! come back. A job that was in flight is *in doubt* for
//! `heartbeat_timeout`: a job manager that re-attaches and reports it
//! (running, held, or finished) settles it and nothing runs twice; the rest
//! run again (`guarantee`, retries left) or end as `router restarted`, with
//! a reply to a `reply-requested` client.

use super::outcome::final_state;
/// Least time a job that was running when the router stopped waits for its
/// job manager to come back and report it, before it runs again (or fails).
const RESTORED_IN_DOUBT_MIN: std::time::Duration = std::time::Duration::from_secs(5);

use super::{Action, DeadLetter, InDoubtJob, JobRecord, JobState, Now, RouterState, StoredRequest, WaitingJob};
use emq_journal::{AcceptedJob, AttemptFailure, FinalState, FinishedJob, Record};
use emq_protocol::{Command, Headers, JobErrorKind, JobReply, Message};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A job being rebuilt from the journal.
struct RestoredJob {
    client: PeerId,
    queue: String,
    request: StoredRequest,
    received: f64,
    attempts: u32,
    phase: Phase,
}

enum Phase {
    /// Buffered; the key orders its queue (requeued jobs go in front).
    Waiting(i64),
    /// Dispatched to this job manager identity.
    InFlight(PeerId),
    /// Waiting for its retry, due at this unix time.
    Retrying(f64),
    /// Accepted with `delay:` / `eta:`, due at this unix time.
    Delayed(f64),
    Dead {
        failure: Option<AttemptFailure>,
        at: f64,
    },
}

/// Replay in progress.
#[derive(Default)]
pub(super) struct Restoring {
    jobs: HashMap<Arc<str>, RestoredJob>,
    /// Results that had not reached their client (sent again at start).
    results_pending: rustc_hash::FxHashSet<String>,
    /// The latest unix time a record carries: about when the router stopped.
    latest_at: f64,
    /// Results handed to a client lately (a final outcome of a
    /// `reply-requested` job, or a kept result that went out at last), with
    /// when: those within `result_resend_window` of `latest_at` go again
    /// at start. Older ones are dropped as the replay moves on.
    recent_results: std::collections::VecDeque<(f64, Arc<str>)>,
    next_back: i64,
    next_front: i64,
}

/// What a restore put back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub buffered: usize,
    pub in_doubt: usize,
    pub retrying: usize,
    pub delayed: usize,
    pub schedules: usize,
    /// Schedule runs missed while the router was down (the misfire policy
    /// decided how many run now).
    pub missed_runs: usize,
    pub dead_letters: usize,
    pub history: usize,
    /// Results of the last moments before the stop sent again (see
    /// [`RouterState::finish_restore`]).
    pub results_resent: usize,
}

impl Restoring {
    /// A record's time: `latest_at` only moves forward.
    fn saw(&mut self, at: f64) {
        if at.is_finite() && at > self.latest_at {
            self.latest_at = at;
        }
    }

    /// A result went to a client at `at`; results older than `window`
    /// before the latest record are forgotten.
    fn result_sent(&mut self, msgid: Arc<str>, at: f64, window: f64) {
        if window <= 0.0 {
            return;
        }
        self.recent_results.push_back((at, msgid));
        while self.recent_results.front().is_some_and(|(t, _)| *t < self.latest_at - window) {
            self.recent_results.pop_front();
        }
    }
}

impl RouterState {
    /// Applies one journal record (replay at start, before any event).
    pub fn restore(&mut self, record: Record) {
        let r = self.restoring.get_or_insert_with(Default::default);
        match record {
            Record::Accepted { job, attempts } => {
                let msgid: Arc<str> = Arc::from(job.msgid.as_str());
                self.workflows.mark_released(&msgid);
                if job.headers.contains("unique:") {
                    if let Some(key) = emq_protocol::Headers::parse(&job.headers).unique {
                        self.workflows.claim_unique(job.requested_queue.as_deref().unwrap_or(&job.queue), &key, &msgid);
                    }
                }
                let r = self.restoring.get_or_insert_with(Default::default);
                r.saw(job.received);
                r.next_back += 1;
                let key = r.next_back;
                let request = StoredRequest::from_parts(job.requested_queue.as_deref(), &job.headers, &job.payload);
                let restored = RestoredJob {
                    client: PeerId::from(job.client.as_slice()),
                    queue: job.queue,
                    request,
                    received: job.received,
                    attempts,
                    phase: Phase::Waiting(key),
                };
                let queue = self.queue_name(&restored.queue);
                let mut record = JobRecord::queued(queue, job.received);
                record.client = Some(restored.client.clone());
                record.set_sender(None, restored.request.headers().owner);
                self.outcomes.history.insert(msgid.clone(), record);
                if let Some(rec) = self.outcomes.history.mark(&msgid, JobState::Queued, job.received) {
                    rec.attempts = attempts;
                }
                self.restoring.as_mut().expect("restoring").jobs.insert(msgid, restored);
            }
            Record::Dispatched { msgid, job_manager, attempt, at } => {
                r.saw(at);
                if let Some(j) = r.jobs.get_mut(msgid.as_str()) {
                    j.phase = Phase::InFlight(PeerId::from(job_manager.as_slice()));
                    j.attempts = attempt;
                }
                if let Some(rec) = self.outcomes.history.mark(&msgid, JobState::Dispatched, at) {
                    rec.job_manager = Some(PeerId::from(job_manager.as_slice()));
                    rec.attempts = attempt;
                }
            }
            Record::Requeued { msgid, attempts } => {
                r.next_front -= 1;
                let key = r.next_front;
                if let Some(j) = r.jobs.get_mut(msgid.as_str()) {
                    j.phase = Phase::Waiting(key);
                    j.attempts = attempts;
                }
                self.outcomes.history.mark(&msgid, JobState::Queued, 0.0);
            }
            Record::Retrying { msgid, failure, due, result } => {
                r.saw(failure.at);
                if let Some(j) = r.jobs.get_mut(msgid.as_str()) {
                    j.phase = Phase::Retrying(due);
                    j.attempts = failure.attempt;
                }
                if !failure.kind.is_empty() {
                    self.outcomes.history.record_attempt_error(&msgid, attempt_error(&failure));
                }
                self.outcomes.history.mark(&msgid, JobState::Retrying, failure.at);
                if !result.is_empty() {
                    self.outcomes.history.set_result(&msgid, result);
                }
            }
            Record::Finished { msgid, state, at, result, failure } => {
                self.checkpoints.forget(&msgid);
                if self.workflows.cares(&msgid) {
                    let ended = super::workflows::Ended::from_record(state, &result, failure.as_ref());
                    self.workflows.on_end(&msgid, &ended);
                }
                let r = self.restoring.get_or_insert_with(Default::default);
                r.saw(at);
                // Its outcome went to a client waiting for it (`conclude`).
                let window = self.cfg.result_resend_window.as_secs_f64();
                let answered = window > 0.0
                    && r.jobs
                        .get(msgid.as_str())
                        .is_some_and(|j| !j.client.as_bytes().is_empty() && j.request.headers().reply_requested);
                if answered {
                    r.result_sent(Arc::from(msgid.as_str()), at, window);
                }
                if state == FinalState::Dead {
                    if let Some(j) = r.jobs.get_mut(msgid.as_str()) {
                        j.phase = Phase::Dead { failure: failure.clone(), at };
                    }
                } else {
                    r.jobs.remove(msgid.as_str());
                }
                if let Some(f) = &failure {
                    self.outcomes.history.record_attempt_error(&msgid, attempt_error(f));
                }
                self.outcomes.history.mark(&msgid, job_state(state), at);
                if !result.is_empty() {
                    self.outcomes.history.set_result(&msgid, result);
                }
            }
            Record::History(h) => {
                r.saw(h.finished);
                let queue = self.queue_name(&h.queue);
                let result = h.result;
                let msgid: Arc<str> = Arc::from(h.msgid.as_str());
                let record = JobRecord {
                    queue,
                    state: job_state(h.state),
                    job_manager: h.job_manager.as_deref().map(PeerId::from),
                    received: h.received,
                    dispatched: h.dispatched,
                    finished: Some(h.finished),
                    attempts: h.attempts,
                    result: None,
                    // Read back only by an admin after a restart.
                    client: None,
                    extra: (!h.failures.is_empty()).then(|| {
                        Box::new(super::history::RecordExtra {
                            attempt_errors: h.failures.iter().map(attempt_error).collect(),
                            ..Default::default()
                        })
                    }),
                };
                self.outcomes.history.insert(msgid.clone(), record);
                if let Some(r) = result {
                    self.outcomes.history.set_result(&msgid, r);
                }
            }
            Record::Delayed { msgid, due } => {
                if let Some(j) = r.jobs.get_mut(msgid.as_str()) {
                    j.phase = Phase::Delayed(due);
                }
                self.outcomes.history.mark(&msgid, JobState::Delayed, 0.0);
            }
            Record::ScheduleSet(entry) => self.restore_schedule(entry),
            Record::QueuePaused { queue, paused } => self.dispatch.queues.entry(queue).or_default().paused = paused,
            Record::ScheduleRemoved { id } => {
                self.timers.schedules.remove(id.as_str());
            }
            Record::ScheduleFired { id, msgid, at, next_due } => self.restore_fired(&id, &msgid, at, next_due),
            Record::ResultPending { msgid } => {
                r.results_pending.insert(msgid);
            }
            Record::ResultDelivered { msgid } => {
                r.results_pending.remove(&msgid);
                // Went out at about the latest time recorded so far.
                let at = r.latest_at;
                r.result_sent(Arc::from(msgid.as_str()), at, self.cfg.result_resend_window.as_secs_f64());
            }
            Record::ResultClient { msgid, client, at } => {
                // After the job's history record (a checkpoint's).
                if let Some(rec) = self.outcomes.history.get_mut(&msgid) {
                    rec.client = Some(PeerId::from(client.as_slice()));
                }
                let window = self.cfg.result_resend_window.as_secs_f64();
                if at >= r.latest_at - window {
                    r.saw(at);
                    r.result_sent(Arc::from(msgid.as_str()), at, window);
                }
            }
            Record::Workflow(body) => self.restore_workflow(&body),
            Record::JobCheckpoint { msgid, data } => {
                // Replayed in order: within the budget it had when written.
                self.checkpoints.set(Arc::from(msgid.as_str()), &data, u64::MAX);
            }
            // The event stream's (the server's `events` module reads them).
            Record::Event(_) | Record::CheckpointBegin { .. } | Record::CheckpointEnd { .. } => {}
        }
    }

    /// Puts every restored job where it was (see the module doc). Jobs that
    /// were running are in doubt until `now + heartbeat_timeout`.
    pub fn finish_restore(&mut self, now: Now) -> RestoreSummary {
        let mut summary = RestoreSummary { history: self.outcomes.history.len(), ..Default::default() };
        let Some(r) = self.restoring.take() else {
            self.finish_restore_schedules(Vec::new(), now);
            return summary;
        };
        // Results that had not reached their client: sent again from the
        // job records (the client's connection is back by then, or they
        // wait for it).
        let budget = self.undelivered_budget();
        for msgid in &r.results_pending {
            if let Some((client, m)) = self.result_message_of(msgid) {
                self.outcomes.undelivered.keep(client, m, now.mono, budget);
            }
        }
        summary.results_resent = self.resend_recent_results(&r, now);
        let mut waiting: Vec<(String, i64, WaitingJob)> = Vec::new();
        let mut live_fired = Vec::new();
        for (msgid, j) in r.jobs {
            if !matches!(j.phase, Phase::Dead { .. }) && j.request.headers_str().contains("schedule:") {
                if let Some(id) = j.request.headers().schedule_id {
                    live_fired.push((msgid.clone(), id));
                }
            }
            let age = Duration::try_from_secs_f64((now.unix - j.received).max(0.0)).unwrap_or_default();
            let received = now.mono.checked_sub(age).unwrap_or(self.lifecycle.started);
            let job = WaitingJob {
                client: j.client,
                msgid: (&msgid).into(),
                request: j.request,
                received_ms: self.stamp(received),
                attempts: j.attempts,
            };
            match j.phase {
                Phase::Waiting(key) => waiting.push((j.queue, key, job)),
                Phase::InFlight(job_manager) => {
                    // Its job manager must notice the restart (or the
                    // failover), find this router and INFORM: twice the
                    // heartbeat timeout, and never under RESTORED_IN_DOUBT_MIN.
                    let until = now.mono + (self.cfg.heartbeat_timeout * 2).max(RESTORED_IN_DOUBT_MIN);
                    self.suspects.in_doubt.insert(
                        msgid,
                        InDoubtJob { queue: j.queue, job_manager, job, until, silent_job_manager: false, who: None },
                    );
                    summary.in_doubt += 1;
                }
                Phase::Retrying(due) => {
                    self.add_timer(due, super::Timer::Job { queue: j.queue, job }, now);
                    summary.retrying += 1;
                }
                Phase::Delayed(due) => {
                    self.add_timer(due, super::Timer::Job { queue: j.queue, job }, now);
                    summary.delayed += 1;
                }
                Phase::Dead { failure, at } => {
                    let (error_type, error_message) =
                        failure.map(|f| (f.kind, f.message)).unwrap_or_else(|| ("unknown".into(), String::new()));
                    self.outcomes.dead.push_back(DeadLetter {
                        msgid,
                        client: job.client,
                        queue: j.queue,
                        request: job.request,
                        attempts: job.attempts,
                        error_type,
                        error_message,
                        at,
                    });
                    summary.dead_letters += 1;
                }
            }
        }
        // Jobs in doubt hold their limit's slots until they are reported or
        // end (so a restart or failover never lets a key run over its limit).
        let limited: Vec<(Arc<str>, Option<String>)> = self
            .suspects
            .in_doubt
            .iter()
            .filter(|(_, d)| d.job.request.headers_str().contains("limit:"))
            .map(|(id, d)| (id.clone(), d.job.request.headers().limit))
            .collect();
        for (id, limit) in limited {
            self.limit_started(&id, limit.as_deref(), now);
        }
        // Oldest dead letters first, bounded as when they were made.
        self.outcomes.dead.make_contiguous().sort_by(|a, b| a.at.total_cmp(&b.at));
        while self.outcomes.dead.len() > self.cfg.dead_letter_max.max(1) {
            self.outcomes.dead.pop_front();
        }
        let (schedules, missed) = self.finish_restore_schedules(live_fired, now);
        summary.schedules = schedules;
        summary.missed_runs = missed;
        waiting.sort_by_key(|(_, key, _)| *key);
        summary.buffered = waiting.len();
        for (queue, _, job) in waiting {
            self.dispatch.queues.entry(queue.clone()).or_default().ever_served = true;
            self.buffer(queue, job, false);
        }
        info!(
            buffered = summary.buffered,
            in_doubt = summary.in_doubt,
            retrying = summary.retrying,
            delayed = summary.delayed,
            schedules = summary.schedules,
            missed_runs = summary.missed_runs,
            dead_letters = summary.dead_letters,
            history = summary.history,
            "state restored from the journal"
        );
        summary
    }

    /// A job in doubt that `peer` reports (running, held, or finished) is
    /// its again: in flight there, no slot used (it is already running).
    /// Only the job manager it was dispatched to may claim it (the same
    /// identity, re-attached); a claim from anyone else is counted as
    /// forged and changes nothing.
    pub(super) fn adopt_in_doubt(&mut self, msgid: &str, peer: &PeerId, now: Now, out: &mut Vec<Action>) {
        match self.suspects.in_doubt.get(msgid).map(|d| (d.job_manager.clone(), d.who.clone())) {
            None => return,
            Some((owner, who)) if !self.same_job_manager(peer, &owner, who.as_deref()) => {
                self.count("forged_report");
                warn!(%msgid, %peer, %owner, "a job manager claimed a job dispatched to another: ignored");
                return;
            }
            Some(_) => {}
        }
        let Some(d) = self.suspects.in_doubt.remove(msgid) else { return };
        self.count("in_doubt_settled");
        info!(%msgid, job_manager = %peer, "job in doubt reported by a job manager: it is not run again");
        let attempt = d.job.attempts.max(1);
        self.take_in_flight(peer.clone(), d.queue, d.job, attempt, false, now);
        // Journaled, so a second restart knows where it is.
        out.push(Action::Journal(Record::Dispatched {
            msgid: msgid.to_owned(),
            job_manager: peer.as_bytes().to_vec(),
            attempt,
            at: now.unix,
        }));
    }

    /// Every job in flight at `peer` is in doubt from now on (for
    /// `heartbeat_timeout`): `peer` re-INFORMed, so it may or may not still
    /// have them.
    pub(super) fn put_in_doubt(&mut self, peer: &PeerId, now: Now) {
        let mine: Vec<Arc<str>> =
            self.in_flight.iter().filter(|(_, j)| j.job_manager == *peer).map(|(id, _)| id.clone()).collect();
        if !mine.is_empty() {
            info!(%peer, jobs = mine.len(), "job manager INFORMed again: its jobs are in doubt until it reports them");
        }
        for id in mine {
            let Some(j) = self.in_flight.remove(&id) else { continue };
            let job = self.waiting_from_in_flight(id.clone(), &j);
            let until = now.mono + self.cfg.heartbeat_timeout;
            let who = self.peers.job_managers.get(peer).and_then(|jm| jm.display_name());
            self.suspects.in_doubt.insert(
                id,
                InDoubtJob { queue: j.queue, job_manager: peer.clone(), job, until, silent_job_manager: false, who },
            );
        }
    }

    /// A job in flight as a waiting job again (attempts = its dispatches).
    /// Jobs without `guarantee` or retries do not keep their request (they
    /// never run again): their headers are rebuilt so the outcome still
    /// goes to a client that asked for it.
    pub(super) fn waiting_from_in_flight(&self, msgid: Arc<str>, j: &super::JobInFlight) -> WaitingJob {
        let request = j.request.clone().unwrap_or_else(|| {
            let headers = Headers {
                reply_requested: j.reply_requested,
                guarantee: j.guarantee,
                retry_count: Some(j.retry_count).filter(|n| *n > 0),
                ..Default::default()
            }
            .to_wire();
            StoredRequest::from_parts(None, &headers, "")
        });
        WaitingJob {
            client: j.client.clone(),
            msgid: msgid.into(),
            request,
            received_ms: self.stamp(j.received),
            attempts: j.attempts,
        }
    }

    /// Tick step: jobs in doubt that nobody reported in time run again
    /// (`guarantee`; at the front of their queue) or end as `router
    /// restarted` (retried when retries are left).
    pub(super) fn expire_in_doubt(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.suspects.in_doubt.is_empty() || self.suspects.in_doubt.values().all(|d| d.until > now.mono) {
            return;
        }
        let due: Vec<Arc<str>> =
            self.suspects.in_doubt.iter().filter(|(_, d)| d.until <= now.mono).map(|(id, _)| id.clone()).collect();
        for id in due {
            let Some(d) = self.suspects.in_doubt.remove(&id) else { continue };
            let headers = d.job.request.headers();
            if headers.guarantee {
                self.count("in_doubt_requeued");
                info!(msgid = %id, queue = %d.queue, "job in doubt after a restart: requeued (guarantee)");
                self.requeue(d.queue, d.job, now, out);
                continue;
            }
            self.count("in_doubt_lost");
            let (kind, message) = if d.silent_job_manager {
                warn!(msgid = %id, queue = %d.queue, job_manager = %d.job_manager, "its job manager stayed silent past suspect_timeout: job lost");
                let m = format!(
                    "job manager {} stopped heartbeating and did not report the job within suspect_timeout",
                    d.job_manager
                );
                (JobErrorKind::JobManagerLost, m)
            } else {
                warn!(msgid = %id, queue = %d.queue, "job in doubt after a restart: no job manager reported it");
                let m = if self.telemetry.ha.is_some() {
                    "router failed over: the job was running when the leader changed, and no job manager reported it"
                        .to_owned()
                } else {
                    "the router restarted while the job was running, and no job manager reported it".to_owned()
                };
                (JobErrorKind::RouterRestarted, m)
            };
            let attempt = d.job.attempts.max(1);
            // Not a real peer: no job manager's counts change.
            let placeholder = PeerId::from(if d.silent_job_manager { "job manager lost" } else { "router restarted" });
            self.take_in_flight(placeholder, d.queue, d.job, attempt, false, now);
            let Some(job) = self.in_flight.remove(&id) else { continue };
            let reply = JobReply::failed(kind.clone(), message.clone(), "");
            self.conclude(id, job, reply.to_json(), Some((kind, message)), now, out);
        }
    }

    /// The live state as journal records, for a checkpoint: after it, no
    /// older record is needed. Jobs kept only as far as needed to finish
    /// them (an in-flight job without `guarantee` or retries is never run
    /// again, so only its headers are kept).
    pub fn checkpoint_records(&mut self, now: Now) -> Vec<Record> {
        let unix_of = |received_ms: u32| {
            let at = self.lifecycle.started + Duration::from_millis(received_ms as u64);
            now.unix - now.mono.saturating_duration_since(at).as_secs_f64()
        };
        let accepted =
            |msgid: &str, client: &PeerId, queue: &str, request: &StoredRequest, received: f64| AcceptedJob {
                msgid: msgid.to_owned(),
                client: client.as_bytes().to_vec(),
                queue: queue.to_owned(),
                requested_queue: request.requested_queue().map(str::to_owned),
                headers: request.headers_str().to_owned(),
                payload: request.payload().to_owned(),
                received,
            };
        let mut out = Vec::new();
        // Finished jobs' history first: live jobs' records are rebuilt by
        // their own records below.
        for (msgid, r) in self.outcomes.history.iter() {
            if r.state.is_final() && r.state != JobState::Dead {
                out.push(Record::History(FinishedJob {
                    msgid: msgid.to_string(),
                    queue: r.queue.to_string(),
                    state: final_state(r.state),
                    job_manager: r.job_manager.as_ref().map(|p| p.as_bytes().to_vec()),
                    received: r.received,
                    dispatched: r.dispatched,
                    finished: r.finished.unwrap_or(r.received),
                    attempts: r.attempts,
                    result: r.result.clone(),
                    failures: r
                        .attempt_errors()
                        .iter()
                        .map(|e| AttemptFailure {
                            attempt: e.attempt,
                            kind: e.kind.clone(),
                            message: e.message.clone(),
                            at: e.at,
                        })
                        .collect(),
                }));
            }
        }
        out.extend(self.result_client_records(now));
        // Then the workflows room (what is not a job yet), before the live
        // jobs: its history records are then newer than the finished ones
        // (not the first evicted after a restart).
        out.extend(self.workflow_checkpoint_records());
        for (name, q) in &self.dispatch.queues {
            for j in &q.waiting {
                let job = accepted(&j.msgid, &j.client, name, &j.request, unix_of(j.received_ms));
                out.push(Record::Accepted { job, attempts: j.attempts });
            }
        }
        for (name, j) in self.limits.parked_jobs() {
            let job = accepted(&j.msgid, &j.client, name, &j.request, unix_of(j.received_ms));
            out.push(Record::Accepted { job, attempts: j.attempts });
        }
        let names: Vec<String> = self.dispatch.queues.keys().cloned().collect();
        for name in names {
            let mut read = |j: WaitingJob| {
                let job = accepted(&j.msgid, &j.client, &name, &j.request, unix_of(j.received_ms));
                out.push(Record::Accepted { job, attempts: j.attempts });
            };
            if let Err(e) = self.dispatch.spill.for_each(&name, &mut read) {
                tracing::error!(error = %e, queue = %name, "checkpoint: cannot read the spilled buffer back");
            }
        }
        for ((due, _), timer) in &self.timers.by_due {
            let super::Timer::Job { queue, job: j } = timer else { continue };
            let job = accepted(&j.msgid, &j.client, queue, &j.request, unix_of(j.received_ms));
            out.push(Record::Accepted { job, attempts: j.attempts });
            let due = now.unix + due.saturating_duration_since(now.mono).as_secs_f64();
            if j.attempts == 0 {
                out.push(Record::Delayed { msgid: j.msgid.to_string(), due });
                continue;
            }
            // No failure to repeat: the history records carry them.
            let failure =
                AttemptFailure { attempt: j.attempts, kind: String::new(), message: String::new(), at: now.unix };
            out.push(Record::Retrying { msgid: j.msgid.to_string(), failure, due, result: String::new() });
        }
        for (msgid, d) in &self.suspects.in_doubt {
            let job = accepted(msgid, &d.job.client, &d.queue, &d.job.request, unix_of(d.job.received_ms));
            out.push(Record::Accepted { job, attempts: d.job.attempts.saturating_sub(1) });
            out.push(Record::Dispatched {
                msgid: msgid.to_string(),
                job_manager: d.job_manager.as_bytes().to_vec(),
                attempt: d.job.attempts,
                at: now.unix,
            });
        }
        for (msgid, j) in &self.in_flight {
            let w = self.waiting_from_in_flight(msgid.clone(), j);
            let received = now.unix - now.mono.saturating_duration_since(j.received).as_secs_f64();
            let job = accepted(msgid, &j.client, &j.queue, &w.request, received);
            out.push(Record::Accepted { job, attempts: j.attempts.saturating_sub(1) });
            out.push(Record::Dispatched {
                msgid: msgid.to_string(),
                job_manager: j.job_manager.as_bytes().to_vec(),
                attempt: j.attempts,
                at: now.unix,
            });
        }
        out.extend(self.checkpoint_notes_records());
        self.schedule_checkpoint_records(&mut out);
        for queue in self.paused_queues() {
            out.push(Record::QueuePaused { queue, paused: true });
        }
        for msgid in self.outcomes.undelivered.pending_ids() {
            out.push(Record::ResultPending { msgid: msgid.clone() });
        }
        for d in &self.outcomes.dead {
            let job = accepted(&d.msgid, &d.client, &d.queue, &d.request, d.at);
            out.push(Record::Accepted { job, attempts: d.attempts });
            out.push(Record::Finished {
                msgid: d.msgid.to_string(),
                state: FinalState::Dead,
                at: d.at,
                result: String::new(),
                failure: Some(AttemptFailure {
                    attempt: d.attempts,
                    kind: d.error_type.clone(),
                    message: d.error_message.clone(),
                    at: d.at,
                }),
            });
        }
        out
    }

    /// Results handed to ZeroMQ in the last `result_resend_window` before
    /// the stop go to their clients again. A send that ZeroMQ took is not
    /// a result on the wire: its I/O thread writes it a moment later, and
    /// a killed router's kernel drops what its socket still held (a
    /// connection closed with unread input is reset). No client
    /// acknowledges a result in eMQP, so the last moments are sent again —
    /// at least once; clients keep the first result per msgid. A stop
    /// that wrote its checkpoint (every graceful stop, which also lingers
    /// until its sockets are flushed) left no `Finished` record with a
    /// client behind it, so nothing goes again after it.
    ///
    /// Journaled as pending at the first tick, so a second crash before
    /// they went out sends them again too.
    fn resend_recent_results(&mut self, r: &Restoring, now: Now) -> usize {
        let since = r.latest_at - self.cfg.result_resend_window.as_secs_f64();
        let budget = self.undelivered_budget();
        let mut seen = rustc_hash::FxHashSet::default();
        let mut resent = 0;
        for (at, msgid) in r.recent_results.iter().rev() {
            if *at < since || r.results_pending.contains(&**msgid) || !seen.insert(msgid.clone()) {
                continue;
            }
            let Some((client, m)) = self.result_message_of(msgid) else { continue };
            if self.outcomes.undelivered.keep_resent(client, m, now.mono, budget) {
                self.outcomes.pending_unjournaled.push(msgid.to_string());
            }
            self.count("results_resent_after_restart");
            resent += 1;
        }
        if resent > 0 {
            info!(results = resent, window = ?self.cfg.result_resend_window, "results of the last moments before the stop sent again");
        }
        resent
    }

    /// The clients of results still pending, and of results sent within
    /// `result_resend_window` (history records do not keep clients): a
    /// kill soon after this checkpoint still sends the latter again. Not
    /// the recent ones at a graceful stop (its sockets are flushed).
    fn result_client_records(&self, now: Now) -> Vec<Record> {
        let mut out = Vec::new();
        for msgid in self.outcomes.undelivered.pending_ids() {
            let Some(rec) = self.outcomes.history.get(msgid) else { continue };
            let Some(client) = &rec.client else { continue };
            let at = rec.finished.unwrap_or(rec.received);
            out.push(Record::ResultClient { msgid: msgid.clone(), client: client.as_bytes().to_vec(), at });
        }
        if self.lifecycle.stopping.is_none() {
            let since = now.unix - self.cfg.result_resend_window.as_secs_f64();
            for (at, msgid, client) in self.outcomes.recent_answers.iter().filter(|(at, ..)| *at >= since) {
                let rec = self.outcomes.history.get(msgid);
                if rec.is_some_and(|r| r.state.is_final() && r.state != JobState::Dead) {
                    let (msgid, client) = (msgid.to_string(), client.as_bytes().to_vec());
                    out.push(Record::ResultClient { msgid, client, at: *at });
                }
            }
        }
        out
    }

    /// A finished job's result as a REPLY to its client, from its record
    /// (None without a kept result or a known client).
    fn result_message_of(&self, msgid: &str) -> Option<(PeerId, Message)> {
        let rec = self.outcomes.history.get(msgid)?;
        let (result, client) = (rec.result.clone()?, rec.client.clone()?);
        let reply = emq_protocol::Reply::Result { reply_json: result, orig_msgid: msgid.to_owned() };
        Some((client, Message::new(Command::Reply(reply))))
    }

    /// Jobs in doubt (for STATUS and tests).
    pub fn in_doubt_count(&self) -> usize {
        self.suspects.in_doubt.len()
    }

    /// Jobs buffered, delayed, retrying, in flight or in doubt, dead
    /// letters and schedules: what a checkpoint would have to keep.
    pub fn live_jobs(&self) -> usize {
        self.buffered()
            + self.timers.by_due.len()
            + self.timers.schedules.len()
            + self.in_flight.len()
            + self.suspects.in_doubt.len()
            + self.outcomes.dead.len()
            + self.workflows.held.len()
            + self.workflows.flows.len()
    }
}

fn attempt_error(f: &AttemptFailure) -> super::AttemptError {
    super::AttemptError {
        attempt: f.attempt,
        kind: f.kind.clone(),
        message: f.message.clone(),
        at: f.at,
        traceback: String::new(),
    }
}

fn job_state(s: FinalState) -> JobState {
    match s {
        FinalState::Done => JobState::Done,
        FinalState::Failed => JobState::Failed,
        FinalState::Lost => JobState::Lost,
        FinalState::Dead => JobState::Dead,
        FinalState::Refused => JobState::Refused,
        FinalState::Cancelled => JobState::Cancelled,
    }
}
