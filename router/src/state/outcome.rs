//! Outcomes: a job manager's REPLY ends one attempt of a job. A failure
//! with retries left waits for its retry (after `retry_delay ×
//! retry_multiplier^(attempt-1)`); a final failure of a job the client asked
//! us to keep becomes a dead letter (which an operator can REQUEUE); the
//! final outcome — and only it — goes to a `reply-requested` client.

use super::JobHistory;
use super::{send, Action, AttemptError, DeadLetter, JobInFlight, JobState, Now, RouterState, SocketKind, WaitingJob};
use emq_journal::{AttemptFailure, FinalState, Record};
use emq_protocol::{Command, JobErrorKind, JobReply, Reply};
use emq_receiver::PeerId;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Longest wait before a retry, whatever the settings multiply to.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);

/// Final failures kept for the dashboard.
const RECENT_FAILURES: usize = 50;

/// Most results remembered as sent lately ([`Outcomes::recent_answers`]):
/// ~2.6 s at 100,000 jobs/s, ~10 MiB.
const RECENT_ANSWERS_MAX: usize = 1 << 18;

/// What finished: job records and results (for JOB_STATUS), dead letters,
/// the last failures (dashboard), and results waiting for their client.
pub(crate) struct Outcomes {
    pub(crate) history: JobHistory,
    /// Jobs that used up their retries (bounded, oldest dropped first).
    pub(crate) dead: VecDeque<DeadLetter>,
    /// The last final failures, for the dashboard.
    pub(crate) recent_failures: VecDeque<serde_json::Value>,
    /// Results whose client was not connected when they were sent: sent
    /// again at every tick (see [`super::undelivered`]).
    pub(crate) undelivered: super::undelivered::UndeliveredResults,
    /// Msgids kept in `undelivered` at start (`finish_restore`) whose
    /// `ResultPending` record is still to write (at the first tick).
    pub(crate) pending_unjournaled: Vec<String>,
    /// Results sent to their client within `result_resend_window` (unix
    /// time, msgid, client): a checkpoint names their clients
    /// (`ResultClient`), so a kill soon after it still sends them again.
    pub(crate) recent_answers: VecDeque<(f64, Arc<str>, PeerId)>,
}

impl Outcomes {
    pub(crate) fn new(history: JobHistory) -> Self {
        Outcomes {
            history,
            dead: VecDeque::new(),
            recent_failures: VecDeque::new(),
            undelivered: Default::default(),
            pending_unjournaled: Vec::new(),
            recent_answers: VecDeque::new(),
        }
    }
}

impl RouterState {
    /// A REPLY from job manager `from` for `orig_msgid`.
    pub(super) fn on_job_done(
        &mut self,
        from: &PeerId,
        reply_msgid: String,
        reply_json: String,
        orig_msgid: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        match self.in_flight.get(orig_msgid.as_str()).map(|j| j.job_manager.clone()) {
            Some(owner) if owner != *from => {
                // A job manager that was silent, back with a late report.
                if self.take_late_report(from, &orig_msgid, &reply_json, now, out) {
                    return;
                }
                // Only the job manager the job was handed to may end it: a
                // peer that INFORMs on the backend must not be able to
                // hand any client a forged result.
                self.count("forged_reply");
                warn!(peer = %from, %owner, msgid = %reply_msgid, %orig_msgid,
                      "REPLY for a job dispatched to another job manager: dropped");
                return;
            }
            Some(_) => {}
            // A job that was running when the router stopped: its job
            // manager re-attached and reports it now.
            None => {
                self.adopt_in_doubt(&orig_msgid, from, now, out);
                if !self.in_flight.contains_key(orig_msgid.as_str())
                    && (self.take_late_report(from, &orig_msgid, &reply_json, now, out)
                        || self.take_superseded_report(from, &orig_msgid))
                {
                    return;
                }
            }
        }
        let Some(job) = self.in_flight.remove(orig_msgid.as_str()) else {
            // Already settled (job managers send recent reports again after
            // a reconnect, so this is common and not worth a warning) or unknown.
            self.count("reply_for_unknown_job");
            tracing::debug!(peer = %from, msgid = %reply_msgid, %orig_msgid, "REPLY for a job not in flight: ignored");
            return;
        };
        if let Some(jm) = self.peers.job_managers.get_mut(&job.job_manager) {
            jm.in_flight = jm.in_flight.saturating_sub(1);
            jm.processed += 1;
            if !job.reply_requested && !jm.reports_all_completions {
                jm.reports_all_completions = true;
                jm.unreported = Default::default();
            }
            if jm.leaving && jm.in_flight == 0 {
                let peer = job.job_manager.clone();
                self.remove_job_manager(&peer, "finished its last job after KBYE", now, out);
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

    /// The end of one attempt, with its reply and error (if it failed).
    pub(super) fn conclude(
        &mut self,
        id: Arc<str>,
        job: JobInFlight,
        reply_json: String,
        error: Option<(JobErrorKind, String)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        // The attempt is over: its limit's slot is free.
        self.limits.ended(&id);
        if job.cancelling && error.is_some() {
            // Stopped on CANCEL: no retry, no dead letter.
            let message = "cancelled by an operator while running".to_owned();
            let reply_json = JobReply::failed(JobErrorKind::Cancelled, message.clone(), "").to_json();
            return self.conclude_cancelled(id, job, reply_json, message, now, out);
        }
        if let Some((kind, message)) = &error {
            let error = AttemptError {
                attempt: job.attempts,
                kind: kind.to_string(),
                message: message.clone(),
                at: now.unix,
                traceback: traceback_of(&reply_json),
            };
            self.outcomes.history.record_attempt_error(&id, error);
            if job.request.is_some() && job.attempts <= job.retry_count {
                let failure = AttemptFailure {
                    attempt: job.attempts,
                    kind: kind.to_string(),
                    message: message.clone(),
                    at: now.unix,
                };
                return self.schedule_retry(id, job, failure, reply_json, now, out);
            }
        }
        let dead = error.is_some() && job.keep && job.request.is_some();
        let state = match (&error, dead) {
            (None, _) => JobState::Done,
            (Some(_), true) => JobState::Dead,
            (Some((JobErrorKind::JobManagerLost | JobErrorKind::RouterRestarted, _)), false) => JobState::Lost,
            (Some(_), false) => JobState::Failed,
        };
        self.outcomes.history.mark(&id, state, now.unix);
        self.outcomes.history.set_result(&id, reply_json.clone());
        self.checkpoints.forget(&id);
        out.push(Action::Journal(Record::Finished {
            msgid: id.to_string(),
            state: final_state(state),
            at: now.unix,
            result: reply_json.clone(),
            failure: error.as_ref().map(|(kind, message)| AttemptFailure {
                attempt: job.attempts,
                kind: kind.to_string(),
                message: message.clone(),
                at: now.unix,
            }),
        }));
        let secs = now.mono.saturating_duration_since(job.received);
        self.telemetry.stats.finished(&job.queue, secs.as_secs_f64(), error.is_some());
        self.telemetry.metrics.observe_finish(&job.queue, secs);
        if let Some((kind, message)) = &error {
            self.remember_failure(&id, &job.queue, kind, message, now);
            if dead {
                self.keep_dead_letter(id.clone(), &job, kind, message, now);
            }
        }
        self.schedule_job_finished(&id);
        // A job a schedule fired has no client to answer.
        if job.reply_requested && !job.client.as_bytes().is_empty() {
            self.note_answered(id.clone(), job.client.clone(), now.unix);
            out.push(send(
                SocketKind::Frontend,
                &job.client,
                Command::Reply(Reply::Result { reply_json, orig_msgid: id.to_string() }),
            ));
        }
    }

    /// A result went to `client` at `at`: remembered for
    /// `result_resend_window` (within [`RECENT_ANSWERS_MAX`]).
    fn note_answered(&mut self, id: Arc<str>, client: PeerId, at: f64) {
        let window = self.cfg.result_resend_window.as_secs_f64();
        if window <= 0.0 {
            return;
        }
        let recent = &mut self.outcomes.recent_answers;
        while recent.front().is_some_and(|(t, ..)| *t < at - window) || recent.len() >= RECENT_ANSWERS_MAX {
            recent.pop_front();
        }
        recent.push_back((at, id, client));
    }

    /// Bytes of results kept for absent clients (`undelivered`): the
    /// history's budget, at least 1 MiB.
    pub(super) fn undelivered_budget(&self) -> usize {
        (self.cfg.results_max_bytes as usize).max(1 << 20)
    }

    /// The end of a running job stopped by CANCEL.
    fn conclude_cancelled(
        &mut self,
        id: Arc<str>,
        job: JobInFlight,
        reply_json: String,
        message: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let request = self.waiting_from_in_flight(id.clone(), &job);
        let queue = job.queue.clone();
        self.end_unrun(queue, request, JobErrorKind::Cancelled, &message, now, out);
        self.outcomes.history.set_result(&id, reply_json);
        if let Some(r) = self.outcomes.history.get_mut(&id) {
            r.attempts = job.attempts;
        }
    }

    /// A failed attempt with retries left waits for its retry.
    fn schedule_retry(
        &mut self,
        id: Arc<str>,
        job: JobInFlight,
        failure: AttemptFailure,
        reply_json: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let factor = self.cfg.retry_multiplier.powi((job.attempts as i32 - 1).min(30));
        let delay = Duration::try_from_secs_f64(self.cfg.retry_delay.as_secs_f64() * factor)
            .unwrap_or(MAX_RETRY_DELAY)
            .min(MAX_RETRY_DELAY);
        self.count("retried");
        self.telemetry.stats.retried(&job.queue);
        info!(msgid = %id, queue = %job.queue, attempt = job.attempts, error = %failure.kind, ?delay, "job failed: retrying");
        self.outcomes.history.mark(&id, JobState::Retrying, now.unix);
        self.outcomes.history.set_result(&id, reply_json.clone());
        out.push(Action::Journal(Record::Retrying {
            msgid: id.to_string(),
            failure,
            due: now.unix + delay.as_secs_f64(),
            result: reply_json,
        }));
        let request = job.request.clone().expect("a job with retries keeps its request");
        let waiting = self.waiting_again(id, &job, request, job.attempts);
        self.add_timer(now.unix + delay.as_secs_f64(), super::Timer::Job { queue: job.queue, job: waiting }, now);
    }

    /// A job that used up its retries is kept (bounded, oldest dropped).
    fn keep_dead_letter(&mut self, id: Arc<str>, job: &JobInFlight, kind: &JobErrorKind, message: &str, now: Now) {
        self.count("dead_letters");
        warn!(msgid = %id, queue = %job.queue, attempts = job.attempts, error = %kind, "job used up its retries: dead letter");
        if self.outcomes.dead.len() >= self.cfg.dead_letter_max.max(1) {
            self.outcomes.dead.pop_front();
            self.count("dead_letters_dropped");
        }
        self.outcomes.dead.push_back(DeadLetter {
            msgid: id,
            client: job.client.clone(),
            queue: job.queue.clone(),
            request: job.request.clone().expect("a dead letter keeps its request"),
            attempts: job.attempts,
            error_type: kind.to_string(),
            error_message: message.to_owned(),
            at: now.unix,
        });
    }

    /// The last final failures, for the dashboard.
    fn remember_failure(&mut self, id: &str, queue: &str, kind: &JobErrorKind, message: &str, now: Now) {
        if self.outcomes.recent_failures.len() >= RECENT_FAILURES {
            self.outcomes.recent_failures.pop_front();
        }
        self.outcomes.recent_failures.push_back(serde_json::json!({
            "msgid": id, "queue": queue, "type": kind, "message": message, "at": now.unix,
        }));
    }

    /// Whether a job under `msgid` is buffered, in flight, in doubt or
    /// waiting for a retry.
    fn is_live(&self, msgid: &str) -> bool {
        self.in_flight.contains_key(msgid)
            || self.suspects.in_doubt.contains_key(msgid)
            || self.timers.find_job(msgid).is_some()
            || self.outcomes.history.get(msgid).is_some_and(|r| {
                matches!(r.state, JobState::Queued | JobState::Dispatched | JobState::Delayed | JobState::Retrying)
            })
    }

    /// `REQUEUE msgid`: a dead letter runs again, with its retries afresh.
    pub(super) fn requeue_dead_letter(&mut self, msgid: &str, now: Now, out: &mut Vec<Action>) -> String {
        let Some(pos) = self.outcomes.dead.iter().position(|d| &*d.msgid == msgid) else {
            return serde_json::json!({"error": format!("no dead letter {msgid}")}).to_string();
        };
        if self.is_live(msgid) {
            // A new job took the msgid since: two live jobs under one msgid
            // would corrupt the tracking of both.
            self.count("requeue_refused_live");
            return serde_json::json!({"error": format!("msgid {msgid} is in use by a live job again: not requeued")})
                .to_string();
        }
        let d = self.outcomes.dead.remove(pos).expect("position exists");
        info!(%msgid, queue = %d.queue, "dead letter requeued");
        self.count("requeued_dead_letters");
        let waiting = WaitingJob {
            client: d.client,
            msgid: d.msgid.into(),
            request: d.request,
            received_ms: self.stamp(now.mono),
            attempts: 0,
        };
        self.requeue(d.queue, waiting, now, out);
        serde_json::json!({"requeued": msgid}).to_string()
    }
}

/// The traceback in a failed job's reply (at most 8 KiB of its end).
fn traceback_of(reply_json: &str) -> String {
    let tb = JobReply::from_json(reply_json).ok().and_then(|r| r.error).map(|e| e.traceback).unwrap_or_default();
    match tb.len() {
        n if n <= 8192 => tb,
        n => {
            let mut start = n - 8192;
            while !tb.is_char_boundary(start) {
                start += 1;
            }
            format!("…{}", &tb[start..])
        }
    }
}

/// The journal's name for a final job state.
pub(super) fn final_state(state: JobState) -> FinalState {
    match state {
        JobState::Failed => FinalState::Failed,
        JobState::Lost => FinalState::Lost,
        JobState::Dead => FinalState::Dead,
        JobState::Refused => FinalState::Refused,
        JobState::Cancelled => FinalState::Cancelled,
        _ => FinalState::Done,
    }
}
