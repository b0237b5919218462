//! A worker slot's life cycle: spawned, up, running jobs (one plus a
//! pipeline queued behind it), giving jobs back, recycled, exited and
//! respawned; spares that take over a slot at once; and handing locally
//! queued jobs to workers.

use super::{Action, JobInFlight, JobManagerState, QueuedJob, SlotState, WorkerSlot, PID_HISTORY};
use emq_protocol::{JobErrorKind, JobReply};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

impl JobManagerState {
    pub(super) fn idle_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| !s.spare && matches!(s.state, SlotState::Idle))
    }

    /// Puts a ready spare in place of `slot`, which becomes the spare (and
    /// is restarted as one). Returns whether a spare was ready.
    pub(super) fn promote_spare(&mut self, slot: usize) -> bool {
        if self.slots[slot].spare {
            return false;
        }
        let Some(spare) = self.slots.iter().position(|s| s.spare && matches!(s.state, SlotState::Idle)) else {
            return false;
        };
        self.slots[spare].spare = false;
        self.slots[slot].spare = true;
        debug!(slot, spare, pid = ?self.slots[spare].pid, "spare worker takes over");
        true
    }

    /// Settle step: starts locally queued jobs on idle workers, then queues
    /// more behind running jobs that just started (up to `worker_pipeline`).
    /// Nothing when nothing is queued.
    pub(super) fn hand_out_queued_jobs(&mut self, now: Instant, out: &mut Vec<Action>) {
        while !self.local_queue.is_empty() {
            if let Some(slot) = self.idle_slot() {
                let job = self.local_queue.pop_front().expect("non-empty");
                self.start(slot, job, now, out);
            } else if let Some(slot) = self.pipeline_slot(now) {
                let job = self.local_queue.pop_front().expect("non-empty");
                debug!(msgid = %job.msgid, slot, "job queued at worker");
                out.push(Action::Run {
                    slot,
                    msgid: job.msgid.clone(),
                    payload: job.payload.clone(),
                    attempt: job.attempt,
                });
                self.slots[slot].waiting.push_back(job);
            } else {
                return;
            }
        }
    }

    /// A busy worker that can take one more job behind its running one:
    /// room in its pipeline, within `max_job_count`, not about to be
    /// recycled, and a running job young enough to be probably short.
    fn pipeline_slot(&self, now: Instant) -> Option<usize> {
        let depth = self.cfg.worker_pipeline.max(1);
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.spare)
            .filter(|(_, s)| match &s.state {
                SlotState::Busy(job) => {
                    1 + s.waiting.len() < depth
                        && !s.recycle_after_job
                        && !s.steal_pending
                        && s.jobs_done + 1 + (s.waiting.len() as u64) < job_limit(self.cfg.max_job_count, s)
                        && now.saturating_duration_since(job.started) < self.cfg.steal_after
                }
                _ => false,
            })
            .min_by_key(|(_, s)| s.waiting.len())
            .map(|(i, _)| i)
    }

    /// Hands a job to an idle worker.
    fn start(&mut self, slot: usize, job: QueuedJob, now: Instant, out: &mut Vec<Action>) {
        debug!(msgid = %job.msgid, slot, pid = ?self.slots[slot].pid, "job started");
        out.push(Action::Run { slot, msgid: job.msgid.clone(), payload: job.payload.clone(), attempt: job.attempt });
        self.slots[slot].state = SlotState::Busy(JobInFlight::start(job, now));
    }

    /// Jobs a worker held but never started go back to the front of the
    /// local queue, in order, to run elsewhere.
    pub(super) fn requeue_waiting(&mut self, slot: usize) {
        let waiting = std::mem::take(&mut self.slots[slot].waiting);
        self.slots[slot].steal_pending = false;
        for job in waiting.into_iter().rev() {
            self.enqueue(job, true);
        }
    }

    /// The weight of `queue` in the queues this job manager serves.
    fn weight_of(cfg: &super::JmConfig, queue: &str) -> u32 {
        cfg.queues.0.iter().find(|(_, q)| q == queue).map_or(0, |(w, _)| *w)
    }

    /// Puts a job in the local queue, highest weight first: after the jobs
    /// of its weight (a new job), or before them (`front`: one given back,
    /// which was due earlier).
    pub(super) fn enqueue(&mut self, job: QueuedJob, front: bool) {
        let cfg = &self.cfg;
        let w = Self::weight_of(cfg, &job.queue);
        let pos = self
            .local_queue
            .iter()
            .position(|j| {
                let wj = Self::weight_of(cfg, &j.queue);
                if front {
                    wj <= w
                } else {
                    wj < w
                }
            })
            .unwrap_or(self.local_queue.len());
        self.local_queue.insert(pos, job);
    }

    /// A job of weight `w` just arrived: workers holding lower-weight jobs
    /// queued behind their running one are asked to give them back, so
    /// the new job runs next (priorities hold through prefetching).
    pub(super) fn steal_for_priority(&mut self, queue: &str, out: &mut Vec<Action>) {
        let w = Self::weight_of(&self.cfg, queue);
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            let lower = s.waiting.iter().any(|j| Self::weight_of(&self.cfg, &j.queue) < w);
            if !s.spare && !s.steal_pending && lower && matches!(s.state, SlotState::Busy(_)) {
                self.slots[slot].steal_pending = true;
                debug!(slot, %queue, "a higher-weight job arrived: taking back lower-weight jobs queued at the worker");
                out.push(Action::Steal { slot });
            }
        }
    }

    pub(super) fn spawn(&mut self, slot: usize, out: &mut Vec<Action>) {
        self.spawns += 1;
        let jitter = spread(self.spawns);
        let s = &mut self.slots[slot];
        s.state = SlotState::Starting;
        s.pid = None;
        s.jobs_done = 0;
        s.limit_jitter = jitter;
        s.recycle_after_job = false;
        s.waiting.clear();
        s.steal_pending = false;
        out.push(Action::Spawn { slot });
    }

    fn backoff(&self, slot: usize) -> Duration {
        let n = self.slots[slot].quick_deaths.min(6);
        Duration::from_millis(100 << n).min(Duration::from_secs(5))
    }

    pub(super) fn on_spawn_failed(&mut self, slot: usize, error: String, now: Instant) {
        warn!(slot, %error, "cannot start worker");
        self.slots[slot].quick_deaths += 1;
        self.slots[slot].state = SlotState::Waiting { respawn_at: now + self.backoff(slot) };
        *self.restarts.entry("spawn_failed").or_insert(0) += 1;
    }

    pub(super) fn on_worker_up(&mut self, slot: usize, pid: u32, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        s.pid = Some(pid);
        s.quick_deaths = 0;
        if !matches!(s.state, SlotState::Starting) {
            return;
        }
        info!(slot, pid, "worker ready");
        if self.stopping.is_some() && self.local_queue.is_empty() {
            s.state = SlotState::Retiring;
            out.push(Action::Retire { slot });
            return;
        }
        // Not a spare: it takes queued jobs and is announced when settling.
        s.state = SlotState::Idle;
    }

    pub(super) fn on_worker_done(
        &mut self,
        slot: usize,
        msgid: String,
        reply_json: String,
        error_type: Option<JobErrorKind>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let s = &mut self.slots[slot];
        let job = match &s.state {
            SlotState::Busy(job) if job.msgid == msgid => job.clone(),
            _ => {
                // A result racing its timeout kill: the timeout reply went.
                debug!(slot, %msgid, "late result ignored");
                return;
            }
        };
        s.jobs_done += 1;
        let pid = s.pid.unwrap_or(0);
        let elapsed = now.saturating_duration_since(job.started);
        self.job_secs_avg = 0.9 * self.job_secs_avg + 0.1 * elapsed.as_secs_f64();
        self.count_callable(&job.callable, elapsed.as_secs_f64(), error_type.is_some());
        match &error_type {
            None => {
                self.jobs_ok += 1;
                debug!(%msgid, pid, queue = %job.queue, ?elapsed, "job done");
            }
            Some(kind) => {
                self.jobs_failed += 1;
                info!(%msgid, pid, queue = %job.queue, error_type = %kind, "job failed");
            }
        }
        *self.jobs_by_pid.entry(pid).or_insert(0) += 1;
        if self.jobs_by_pid.len() > PID_HISTORY {
            let oldest = *self.jobs_by_pid.keys().next().expect("non-empty");
            self.jobs_by_pid.remove(&oldest);
        }
        // The reply goes out now, before settling can announce this slot again.
        self.send_reply_json(&msgid, reply_json, out);
        let s = &mut self.slots[slot];
        if let Some(next) = s.waiting.pop_front() {
            // The worker goes straight on with the job queued behind.
            let cancelled = self.cancel_pending.remove(&next.msgid);
            s.state = SlotState::Busy(JobInFlight::start(next, now));
            if cancelled {
                self.stop_running(slot, now, out);
            }
            return;
        }
        let recycle = s.jobs_done >= job_limit(self.cfg.max_job_count, s) || s.recycle_after_job;
        let stopping_idle = self.stopping.is_some() && self.local_queue.is_empty();
        if recycle || stopping_idle {
            if recycle && !stopping_idle {
                info!(slot, pid, jobs = s.jobs_done, "worker reached max_job_count: recycling");
                *self.restarts.entry("recycled").or_insert(0) += 1;
            }
            s.state = SlotState::Retiring;
            out.push(Action::Retire { slot });
            if !stopping_idle {
                self.promote_spare(slot);
            }
        } else {
            s.state = SlotState::Idle;
        }
    }

    /// The router's CANCEL: a job still in the local queue is answered
    /// `cancelled` at once; one queued at a worker is taken back (a Steal)
    /// or stopped when it starts; a running one has its worker stopped
    /// (SIGTERM, then SIGKILL after `kill_escalation`) and a fresh worker
    /// takes the slot. Unknown (already finished): nothing to do.
    pub(super) fn on_cancel(&mut self, msgid: &str, now: Instant, out: &mut Vec<Action>) {
        if let Some(pos) = self.local_queue.iter().position(|j| j.msgid == msgid) {
            self.local_queue.remove(pos);
            info!(%msgid, "cancelled before it started");
            self.answer_cancelled(msgid, out);
            return;
        }
        for slot in 0..self.slots.len() {
            if matches!(&self.slots[slot].state, SlotState::Busy(job) if job.msgid == msgid) {
                self.stop_running(slot, now, out);
                return;
            }
            if self.slots[slot].waiting.iter().any(|j| j.msgid == msgid) {
                if self.cancel_pending.len() < 10_000 {
                    self.cancel_pending.insert(msgid.to_owned());
                }
                if !self.slots[slot].steal_pending {
                    self.slots[slot].steal_pending = true;
                    out.push(Action::Steal { slot });
                }
                return;
            }
        }
        debug!(%msgid, "CANCEL for a job not here (finished already?)");
    }

    /// Stops the job running in `slot` on CANCEL: its worker is killed
    /// (the jobs queued behind it run elsewhere here) and it is answered
    /// `cancelled`.
    fn stop_running(&mut self, slot: usize, now: Instant, out: &mut Vec<Action>) {
        let SlotState::Busy(job) = &self.slots[slot].state else { return };
        let msgid = job.msgid.clone();
        let pid = self.slots[slot].pid.unwrap_or(0);
        info!(slot, pid, %msgid, "cancelled while running: stopping its worker");
        *self.restarts.entry("cancelled").or_insert(0) += 1;
        self.answer_cancelled(&msgid, out);
        self.slots[slot].state = SlotState::Killing { since: now, forced: false };
        out.push(Action::Kill { slot, force: false });
        self.requeue_waiting(slot);
        self.promote_spare(slot);
    }

    fn answer_cancelled(&mut self, msgid: &str, out: &mut Vec<Action>) {
        self.jobs_failed += 1;
        let reply = JobReply::failed(JobErrorKind::Cancelled, "cancelled by an operator", "");
        self.send_reply(msgid, reply, out);
    }

    /// A worker grew past `max_memory_per_worker`: an idle one retires now
    /// (a spare takes its place), a busy one after its job.
    pub(super) fn on_worker_over_memory(&mut self, slot: usize, rss_bytes: u64, out: &mut Vec<Action>) {
        let limit = self.cfg.max_memory_per_worker;
        let Some(s) = self.slots.get_mut(slot) else { return };
        if limit == 0 || s.recycle_after_job {
            return;
        }
        info!(slot, pid = s.pid.unwrap_or(0), rss_bytes, limit, "worker past max_memory_per_worker: recycling");
        *self.restarts.entry("memory").or_insert(0) += 1;
        match s.state {
            SlotState::Idle => {
                s.state = SlotState::Retiring;
                out.push(Action::Retire { slot });
                self.promote_spare(slot);
            }
            SlotState::Busy(_) => s.recycle_after_job = true,
            _ => {}
        }
    }

    pub(super) fn on_worker_stole(&mut self, slot: usize, msgids: Vec<String>, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        s.steal_pending = false;
        let mut back = Vec::new();
        // The worker may give back the job we took for started (it had
        // finished the one before, and not yet picked this one up): then it
        // is idle, and that job runs again from here.
        if let SlotState::Busy(job) = &s.state {
            if msgids.contains(&job.msgid) {
                back.push(job.unstarted());
                s.state = SlotState::Idle;
            }
        }
        s.waiting.retain(|j| {
            if msgids.contains(&j.msgid) {
                back.push(j.clone());
                false
            } else {
                true
            }
        });
        debug!(slot, jobs = back.len(), "jobs taken back from a worker");
        for job in back.into_iter().rev() {
            if self.cancel_pending.remove(&job.msgid) {
                self.answer_cancelled(&job.msgid, out);
                continue;
            }
            self.enqueue(job, true);
        }
    }

    pub(super) fn on_worker_exited(
        &mut self,
        slot: usize,
        pid: u32,
        exit: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.requeue_waiting(slot);
        let previous = std::mem::replace(&mut self.slots[slot].state, SlotState::Gone);
        match previous {
            SlotState::Busy(job) => {
                *self.restarts.entry("died").or_insert(0) += 1;
                self.jobs_failed += 1;
                warn!(slot, pid, msgid = %job.msgid, %exit, "worker died while running a job");
                let reply = JobReply::failed(
                    JobErrorKind::WorkerDied,
                    format!("worker pid {pid} died while running the job ({exit})"),
                    "",
                );
                self.send_reply(&job.msgid, reply, out);
            }
            SlotState::Idle => {
                *self.restarts.entry("died").or_insert(0) += 1;
                warn!(slot, pid, %exit, "idle worker died");
            }
            SlotState::Starting => {
                *self.restarts.entry("died").or_insert(0) += 1;
                self.slots[slot].quick_deaths += 1;
                warn!(slot, pid, %exit, "worker died while starting");
            }
            SlotState::Retiring | SlotState::Killing { .. } => debug!(slot, pid, %exit, "worker exited"),
            SlotState::Waiting { .. } | SlotState::Gone => {}
        }
        if self.stopping.is_some() {
            // Stays gone; settling exits once every slot is.
            return;
        }
        self.promote_spare(slot);
        if self.slots[slot].quick_deaths > 0 {
            let at = now + self.backoff(slot);
            self.slots[slot].state = SlotState::Waiting { respawn_at: at };
        } else {
            self.spawn(slot, out);
        }
    }
}

/// Jobs the process in `s` runs before it is recycled: `max_job_count`
/// less up to a sixteenth of it, different for each process (as gunicorn's
/// `max_requests_jitter`). Workers that started together would otherwise
/// reach the count together, and the second would go before the spare that
/// replaced the first is up: a slot short for a few milliseconds at every
/// round.
pub(super) fn job_limit(max_job_count: u64, s: &WorkerSlot) -> u64 {
    // In u128: `max_job_count` may be set near u64::MAX ("never").
    max_job_count - (u128::from(max_job_count / 16) * u128::from(s.limit_jitter) / 65_536) as u64
}

/// A well-spread 16-bit value for the n-th spawn (splitmix64): which
/// process gets which jitter needs no secrecy, only spread, and keeps the
/// state machine deterministic.
fn spread(n: u64) -> u16 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 48) as u16
}
