//! What running jobs said about themselves (progress, checkpoint) on its
//! way to the router as JOB_UPDATE, and a job's `extend()`.
//!
//! Only a router that takes batches gets JOB_UPDATE (ours; EventMQ's never
//! does). Updates are coalesced per job — last progress wins, last
//! checkpoint wins — and flushed at most every [`FLUSH_EVERY`], a flush
//! carrying every pending job (at most [`MAX_JOB_UPDATES`] per message).
//! A job's pending update also goes just before its REPLY (so the router
//! has the checkpoint before it handles the failure that retries the job);
//! only running jobs' updates are taken, so nothing is kept for a job that
//! ended.

use super::{deadline, Action, JobManagerState, SlotState};
use emq_protocol::{Command, JobUpdate, JobUpdates, Message, Progress, MAX_JOB_UPDATES};
use std::time::{Duration, Instant};
use tracing::debug;

/// At most one JOB_UPDATE flush this often (a REPLY may bring one sooner).
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Running jobs' updates not sent to the router yet.
///
/// Owns: one [`JobUpdate`] per job with something to say (in the order
/// they first said it) and when the last flush went.
///
/// Keeps: at most one entry per msgid, each with a progress or a
/// checkpoint; entries only for jobs running when they were recorded (the
/// caller checks), removed when their job's REPLY goes.
#[derive(Debug, Default)]
pub(super) struct PendingUpdates {
    jobs: Vec<JobUpdate>,
    last_flush: Option<Instant>,
}

impl PendingUpdates {
    /// Records what a job said (last progress and last checkpoint win).
    pub(super) fn record(&mut self, msgid: &str, progress: Option<Progress>, checkpoint: Option<String>) {
        if progress.is_none() && checkpoint.is_none() {
            return;
        }
        let entry = match self.jobs.iter().position(|u| u.msgid == msgid) {
            Some(i) => &mut self.jobs[i],
            None => {
                self.jobs.push(JobUpdate { msgid: msgid.to_owned(), ..Default::default() });
                self.jobs.last_mut().expect("just pushed")
            }
        };
        if progress.is_some() {
            entry.progress = progress;
        }
        if checkpoint.is_some() {
            entry.checkpoint = checkpoint;
        }
    }

    /// Takes what `msgid` said out of the pending updates.
    pub(super) fn take(&mut self, msgid: &str) -> Option<JobUpdate> {
        let i = self.jobs.iter().position(|u| u.msgid == msgid)?;
        Some(self.jobs.remove(i))
    }

    /// Something is pending and the last flush is [`FLUSH_EVERY`] old.
    pub(super) fn due(&self, now: Instant) -> bool {
        !self.jobs.is_empty() && self.last_flush.is_none_or(|t| now.saturating_duration_since(t) >= FLUSH_EVERY)
    }

    /// Everything pending, as JOB_UPDATE messages of at most
    /// [`MAX_JOB_UPDATES`] jobs each; the flush counts as done at `now`.
    pub(super) fn flush(&mut self, now: Instant) -> Vec<Message> {
        self.last_flush = Some(now);
        let mut out = Vec::new();
        let mut jobs = std::mem::take(&mut self.jobs).into_iter().peekable();
        while jobs.peek().is_some() {
            let updates: Vec<JobUpdate> = jobs.by_ref().take(MAX_JOB_UPDATES).collect();
            out.push(Message::new(Command::JobUpdate(JobUpdates { updates })));
        }
        out
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }
}

impl JobManagerState {
    /// A worker's report of its running job: kept for the next flush.
    /// From a job that is not running there (any more) it is dropped.
    pub(super) fn on_worker_update(
        &mut self,
        slot: usize,
        msgid: String,
        progress: Option<Progress>,
        checkpoint: Option<String>,
    ) {
        if !self.runs(slot, &msgid) {
            debug!(slot, %msgid, "update of a job that is not running here: dropped");
            return;
        }
        if checkpoint.as_ref().is_some_and(|c| c.len() > emq_protocol::MAX_CHECKPOINT_BYTES) {
            self.stats.error("bad_checkpoint");
            return;
        }
        self.updates.record(&msgid, progress, checkpoint);
    }

    /// The running job asked for its timeout to start again: its deadline
    /// becomes `now + seconds`, never past its start + `max_runtime`.
    pub(super) fn on_worker_extend(&mut self, slot: usize, msgid: String, seconds: f64, now: Instant) {
        let max_runtime = self.cfg.max_runtime;
        let Some(SlotState::Busy(job)) = self.workers.slots.get_mut(slot).map(|s| &mut s.state) else { return };
        if job.msgid != msgid || !seconds.is_finite() || seconds < 0.0 {
            debug!(slot, %msgid, seconds, "extend of a job that is not running here (or a bad value): ignored");
            return;
        }
        let asked = deadline(now, Duration::from_secs_f64(seconds.min(emq_protocol::MAX_TIMEOUT_SECS as f64)));
        job.deadline = asked.min(deadline(job.started, max_runtime));
        job.extended = true;
        debug!(%msgid, seconds, capped = job.deadline < asked, "job extended its timeout");
    }

    /// Whether `msgid` is the job running in `slot`.
    fn runs(&self, slot: usize, msgid: &str) -> bool {
        matches!(self.workers.slots.get(slot).map(|s| &s.state), Some(SlotState::Busy(job)) if job.msgid == msgid)
    }

    /// Tick step: pending updates go when the last flush is old enough,
    /// to a router that takes them.
    pub(super) fn flush_job_updates(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.link.batches() && self.updates.due(now) {
            out.extend(self.updates.flush(now).into_iter().map(Action::Send));
        }
    }

    /// Just before `msgid`'s REPLY: its pending update goes first (alone;
    /// the others wait for their flush — the poll loop puts the updates of
    /// a pass in one JOB_UPDATE ahead of its BATCH), or is dropped when
    /// the router takes no JOB_UPDATE.
    pub(super) fn update_before_reply(&mut self, msgid: &str, out: &mut Vec<Action>) {
        let Some(update) = self.updates.take(msgid) else { return };
        if self.link.batches() {
            out.push(Action::Send(Message::new(Command::JobUpdate(JobUpdates { updates: vec![update] }))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(done: f64) -> Option<Progress> {
        Some(Progress { done, total: None, message: None, at: 1.0 })
    }

    fn sent(m: &Message) -> &[JobUpdate] {
        match &m.command {
            Command::JobUpdate(u) => &u.updates,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn last_progress_and_last_checkpoint_win_per_job_in_first_said_order() {
        let mut u = PendingUpdates::default();
        u.record("a", p(1.0), None);
        u.record("b", None, Some("[1]".into()));
        u.record("a", None, Some("{}".into()));
        u.record("a", p(2.0), None);
        u.record("b", None, Some("[2]".into()));
        u.record("c", None, None);
        assert_eq!(u.len(), 2, "nothing said: no entry");
        let t = Instant::now();
        assert!(u.due(t));
        let msgs = u.flush(t);
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            sent(&msgs[0]),
            [
                JobUpdate { msgid: "a".into(), progress: p(2.0), checkpoint: Some("{}".into()) },
                JobUpdate { msgid: "b".into(), progress: None, checkpoint: Some("[2]".into()) },
            ]
        );
        assert!(!u.due(t) && u.len() == 0);
        u.record("a", p(3.0), None);
        assert!(!u.due(t + FLUSH_EVERY - Duration::from_millis(1)), "at most every 100 ms");
        assert!(u.due(t + FLUSH_EVERY));
        assert_eq!(u.take("a").map(|a| a.progress), Some(p(3.0)));
        assert!(!u.due(t + FLUSH_EVERY) && u.take("a").is_none());
    }

    #[test]
    fn a_flush_splits_at_max_job_updates() {
        let mut u = PendingUpdates::default();
        for i in 0..MAX_JOB_UPDATES + 3 {
            u.record(&i.to_string(), p(i as f64), None);
        }
        let msgs = u.flush(Instant::now());
        let sizes: Vec<usize> = msgs.iter().map(|m| sent(m).len()).collect();
        assert_eq!(sizes, [MAX_JOB_UPDATES, 3]);
    }
}
