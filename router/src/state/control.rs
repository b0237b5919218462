//! Control: what operators (and a job's own client) do to jobs and queues
//! — CANCEL a job (buffered, delayed, retrying, in doubt: removed at once;
//! running: its job manager is told to stop it, and it ends `cancelled`
//! when that is reported) or a schedule by its id; PURGE a queue's buffer;
//! PAUSE / RESUME a queue (jobs still accepted and kept, none handed out).
//! Every change is journaled; a cancelled job never retries and never
//! becomes a dead letter; a `reply-requested` client gets a `cancelled`
//! error as its result.

use super::{send, Action, JobState, Now, RouterState, SocketKind, Timer, WaitingJob};
use emq_journal::{AttemptFailure, FinalState, Record};
use emq_protocol::{AdminCommand, Command, JobErrorKind, JobReply, Reply, DEFAULT_QUEUE};
use emq_receiver::PeerId;
use serde_json::{json, Value};
use std::sync::Arc;
use tracing::info;

/// What a CANCEL did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// Removed before it ran (or a schedule removed).
    Removed(&'static str),
    /// Running: its job manager was told to stop it.
    Stopping,
    Refused(String),
}

impl RouterState {
    /// `CANCEL msgid` (a job's msgid, or a schedule's id).
    pub(super) fn cancel(&mut self, msgid: &str, now: Now, out: &mut Vec<Action>) -> CancelOutcome {
        if self.timers.schedules.contains_key(msgid) {
            self.remove_schedule(msgid, "cancelled", out);
            return CancelOutcome::Removed("schedule");
        }
        // A schedule by the short id `emq-cli schedules` shows (a unique
        // prefix), unless it is a job's msgid.
        if self.outcomes.history.get(msgid).is_none() {
            if let Ok(id) = self.schedule_id_for(msgid) {
                self.remove_schedule(&id, "cancelled", out);
                return CancelOutcome::Removed("schedule");
            }
        }
        let why = "cancelled by an operator";
        // Running at a job manager.
        if let Some(j) = self.in_flight.get_mut(msgid) {
            let ours = self.peers.job_managers.get(&j.job_manager).is_some_and(|jm| jm.reports_all_completions);
            if !ours {
                return CancelOutcome::Refused(
                    "the job is running on a job manager that cannot stop a single job (EventMQ's); it will finish"
                        .into(),
                );
            }
            j.cancelling = true;
            let peer = j.job_manager.clone();
            info!(%msgid, job_manager = %peer, "cancel: asking the job manager to stop the job");
            out.push(send(
                SocketKind::Backend,
                &peer,
                Command::Admin(AdminCommand::Cancel { job_msgid: msgid.to_owned() }),
            ));
            return CancelOutcome::Stopping;
        }
        if let Some(d) = self.suspects.in_doubt.remove(msgid) {
            self.end_unrun(d.queue, d.job, JobErrorKind::Cancelled, why, now, out);
            return CancelOutcome::Removed("in doubt");
        }
        // Waiting for its time (delay / eta) or for its retry.
        let key = self.timers.find_job(msgid);
        if let Some(key) = key {
            if let Some(Timer::Job { queue, job }) = self.take_timer(&key) {
                let what = if job.attempts == 0 { "delayed" } else { "retrying" };
                self.end_unrun(queue, job, JobErrorKind::Cancelled, why, now, out);
                return CancelOutcome::Removed(what);
            }
        }
        // Waiting for its limit.
        if let Some(p) = self.limits.take_parked(msgid) {
            self.end_unrun(p.queue, p.job, JobErrorKind::Cancelled, why, now, out);
            return CancelOutcome::Removed("waiting for its limit");
        }
        // Buffered: the memory part of its queue, else its disk tail.
        let queue = self.outcomes.history.get(msgid).map(|r| r.queue.to_string());
        let queues: Vec<String> = match queue {
            Some(q) => vec![q, DEFAULT_QUEUE.to_owned()],
            None => self.dispatch.queues.keys().cloned().collect(),
        };
        for q in queues {
            let Some(state) = self.dispatch.queues.get_mut(&q) else { continue };
            if let Some(pos) = state.waiting.iter().position(|j| &*j.msgid == msgid) {
                let job = state.waiting.remove(pos).expect("position exists");
                self.dispatch.buffered_bytes = self.dispatch.buffered_bytes.saturating_sub(job.memory_bytes());
                self.end_unrun(q, job, JobErrorKind::Cancelled, why, now, out);
                return CancelOutcome::Removed("buffered");
            }
        }
        if self.outcomes.history.get(msgid).is_some_and(|r| r.state == JobState::Queued)
            && self.dispatch.spill.total() > 0
        {
            // In a disk tail: skipped when it is read back.
            let id: Arc<str> = Arc::from(msgid);
            self.dispatch.cancelled_spilled.insert(id.clone());
            self.outcomes.history.mark(msgid, JobState::Cancelled, now.unix);
            self.journal_cancelled(msgid, why, 0, now, out);
            return CancelOutcome::Removed("buffered on disk");
        }
        match self.outcomes.history.get(msgid) {
            Some(r) if r.state.is_final() => {
                CancelOutcome::Refused(format!("job {msgid} already ended ({})", r.state.as_str()))
            }
            _ => CancelOutcome::Refused(format!("no live job or schedule {msgid}")),
        }
    }

    /// The admin answer of a CANCEL.
    pub(super) fn cancel_json(&mut self, msgid: &str, now: Now, out: &mut Vec<Action>) -> Value {
        if let Some(answer) = self.cancel_in_workflows(msgid, now, out) {
            return answer;
        }
        match self.cancel(msgid, now, out) {
            CancelOutcome::Removed(what) => json!({"cancelled": msgid, "was": what}),
            CancelOutcome::Stopping => json!({"cancelling": msgid, "was": "running"}),
            CancelOutcome::Refused(why) => json!({"error": why}),
        }
    }

    /// `PURGE queue`: every buffered job of `queue` ends `cancelled`.
    pub(super) fn purge(&mut self, queue: &str, now: Now, out: &mut Vec<Action>) -> Value {
        let mut n = 0u64;
        while let Some(job) = self.unbuffer(queue) {
            self.end_unrun(queue.to_owned(), job, JobErrorKind::Cancelled, "purged by an operator", now, out);
            n += 1;
        }
        for job in self.limits.take_parked_of_queue(queue) {
            self.end_unrun(queue.to_owned(), job, JobErrorKind::Cancelled, "purged by an operator", now, out);
            n += 1;
        }
        info!(%queue, jobs = n, "queue purged");
        self.count("purged_jobs");
        json!({"purged": n, "queue": queue})
    }

    /// `PAUSE queue` / `RESUME queue`.
    pub(super) fn set_paused(&mut self, queue: &str, paused: bool, now: Now, out: &mut Vec<Action>) -> Value {
        let q = self.dispatch.queues.entry(queue.to_owned()).or_default();
        let changed = q.paused != paused;
        q.paused = paused;
        if changed {
            info!(%queue, paused, "queue {}", if paused { "paused" } else { "resumed" });
            out.push(Action::Journal(Record::QueuePaused { queue: queue.to_owned(), paused }));
        }
        if !paused {
            // Free slots may be waiting for exactly these jobs.
            let jms: Vec<PeerId> =
                self.peers.job_managers.iter().filter(|(_, j)| j.free_slots > 0).map(|(p, _)| p.clone()).collect();
            for jm in jms {
                self.drain_to(&jm, now, out);
            }
        }
        json!({"queue": queue, "paused": paused, "waiting": self.queue_len(queue)})
    }

    /// Whether `queue` is paused.
    pub(super) fn is_paused(&self, queue: &str) -> bool {
        self.dispatch.queues.get(queue).is_some_and(|q| q.paused)
    }

    /// A job that will not run (cancelled, purged): its record, the
    /// journal, its client (when it asked for a reply) and its schedule
    /// learn so.
    pub(super) fn end_unrun(
        &mut self,
        queue: String,
        job: WaitingJob,
        kind: JobErrorKind,
        message: &str,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let reply = JobReply::failed(kind, message, "").to_json();
        // An in-doubt job held its limit's slot; a released one its turn.
        self.limits.ended(&job.msgid);
        self.limits.forget_released(&job.msgid);
        self.outcomes.history.mark(&job.msgid, JobState::Cancelled, now.unix);
        self.outcomes.history.set_result(&job.msgid, reply.clone());
        self.journal_cancelled(&job.msgid, message, job.attempts, now, out);
        self.telemetry.stats.finished(&queue, 0.0, true);
        self.count("cancelled_jobs");
        self.schedule_job_finished(&job.msgid);
        let client = job.client.clone();
        if !client.as_bytes().is_empty() && job.request.headers().reply_requested {
            out.push(send(
                SocketKind::Frontend,
                &client,
                Command::Reply(Reply::Result { reply_json: reply, orig_msgid: job.msgid.to_string() }),
            ));
        }
    }

    fn journal_cancelled(&mut self, msgid: &str, message: &str, attempt: u32, now: Now, out: &mut Vec<Action>) {
        self.checkpoints.forget(msgid);
        out.push(Action::Journal(Record::Finished {
            msgid: msgid.to_owned(),
            state: FinalState::Cancelled,
            at: now.unix,
            result: String::new(),
            failure: Some(AttemptFailure {
                attempt,
                kind: JobErrorKind::Cancelled.to_string(),
                message: message.to_owned(),
                at: now.unix,
            }),
        }));
    }

    /// `DELETE_DEAD msgid`: a dead letter is forgotten (not run).
    pub(super) fn delete_dead_letter(&mut self, msgid: &str, now: Now, out: &mut Vec<Action>) -> Value {
        let Some(pos) = self.outcomes.dead.iter().position(|d| &*d.msgid == msgid) else {
            return json!({"error": format!("no dead letter {msgid}")});
        };
        let d = self.outcomes.dead.remove(pos).expect("position exists");
        info!(%msgid, queue = %d.queue, "dead letter deleted");
        self.count("dead_letters_deleted");
        self.outcomes.history.mark(msgid, JobState::Failed, now.unix);
        out.push(Action::Journal(Record::Finished {
            msgid: msgid.to_owned(),
            state: FinalState::Failed,
            at: now.unix,
            result: String::new(),
            failure: None,
        }));
        json!({"deleted": msgid})
    }

    /// Paused queues (STATUS, checkpoints).
    pub fn paused_queues(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.dispatch.queues.iter().filter(|(_, q)| q.paused).map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }
}
