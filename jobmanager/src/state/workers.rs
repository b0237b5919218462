//! A worker slot's life cycle: spawned, up, running jobs (one plus a
//! pipeline queued behind it), giving jobs back, recycled, exited and
//! respawned; spares that take over a slot at once; and handing locally
//! queued jobs to workers.

use super::{Action, JobInFlight, JobManagerState, QueuedJob, SlotState, WorkerSlot};
use emq_protocol::{JobErrorKind, JobReply, QueueSpec};
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Jobs cancelled while queued at a worker remembered at most.
const MAX_CANCEL_PENDING: usize = 10_000;

/// The worker slots and the jobs waiting for them.
///
/// Owns: one [`WorkerSlot`] per worker and per spare, the local queue
/// (jobs received from the router, not yet handed to a worker), the jobs
/// the router cancelled while they sat queued at a worker, and the count
/// of workers spawned (each spawn's recycling jitter derives from it).
///
/// Keeps: the number of slots never changes (workers first, then
/// spares); the local queue is ordered by queue weight, highest first,
/// in arrival order within a weight, with jobs given back ahead of their
/// weight's; at most [`MAX_CANCEL_PENDING`] cancellations are pending.
#[derive(Debug)]
pub(super) struct Workers {
    pub(super) slots: Vec<WorkerSlot>,
    local_queue: VecDeque<QueuedJob>,
    /// Payload bytes of the jobs in `local_queue`.
    local_bytes: usize,
    /// Jobs the router asked to cancel that sit queued at a worker: a
    /// Steal takes them back (then they are answered `cancelled`), or they
    /// are stopped the moment they start.
    cancel_pending: HashSet<String>,
    /// Workers started so far (each gets its own recycling jitter).
    spawns: u64,
}

impl Workers {
    /// `workers` slots, then `spares` spare ones, none started.
    pub(super) fn new(workers: usize, spares: usize) -> Self {
        let slots = (0..workers + spares)
            .map(|i| WorkerSlot {
                state: SlotState::Gone,
                pid: None,
                jobs_done: 0,
                limit_jitter: 0,
                quick_deaths: 0,
                recycle_after_job: false,
                waiting: VecDeque::new(),
                steal_pending: false,
                spare: i >= workers,
            })
            .collect();
        Workers { slots, local_queue: VecDeque::new(), local_bytes: 0, cancel_pending: HashSet::new(), spawns: 0 }
    }

    /// An idle worker (not a spare).
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

    /// The recycling jitter of the next worker spawned.
    pub(super) fn next_spawn_jitter(&mut self) -> u16 {
        self.spawns += 1;
        spread(self.spawns)
    }

    /// Every slot is [`SlotState::Gone`].
    pub(super) fn all_gone(&self) -> bool {
        self.slots.iter().all(|s| matches!(s.state, SlotState::Gone))
    }

    /// Jobs received and not yet handed to a worker, in the order they go.
    pub(super) fn queued(&self) -> &VecDeque<QueuedJob> {
        &self.local_queue
    }

    /// Jobs here that no worker has started: the local queue and the
    /// ones queued at workers behind their running job.
    pub(super) fn not_started(&self) -> usize {
        self.local_queue.len() + self.slots.iter().map(|s| s.waiting.len()).sum::<usize>()
    }

    /// Payload bytes of the jobs in the local queue.
    pub(super) fn queued_bytes(&self) -> usize {
        self.local_bytes
    }

    /// The next job to hand out.
    pub(super) fn pop_queued(&mut self) -> Option<QueuedJob> {
        let job = self.local_queue.pop_front()?;
        self.local_bytes = self.local_bytes.saturating_sub(job.payload.len());
        Some(job)
    }

    /// Takes `msgid` out of the local queue; whether it was there.
    pub(super) fn remove_queued(&mut self, msgid: &str) -> bool {
        let Some(pos) = self.local_queue.iter().position(|j| j.msgid == msgid) else { return false };
        if let Some(job) = self.local_queue.remove(pos) {
            self.local_bytes = self.local_bytes.saturating_sub(job.payload.len());
        }
        true
    }

    /// The weight of `queue` in the queues this job manager serves.
    fn weight_of(queues: &QueueSpec, queue: &str) -> u32 {
        queues.0.iter().find(|(_, q)| q == queue).map_or(0, |(w, _)| *w)
    }

    /// Puts a job in the local queue, highest weight first: after the jobs
    /// of its weight (a new job), or before them (`front`: one given back,
    /// which was due earlier). A new job's place is looked for from the
    /// back (the queue is in weight order): with one queue, or jobs of the
    /// lowest weight, it is found at once however many are prefetched.
    pub(super) fn enqueue(&mut self, job: QueuedJob, front: bool, queues: &QueueSpec) {
        let w = Self::weight_of(queues, &job.queue);
        let pos = if front {
            self.local_queue
                .iter()
                .position(|j| Self::weight_of(queues, &j.queue) <= w)
                .unwrap_or(self.local_queue.len())
        } else {
            self.local_queue.iter().rposition(|j| Self::weight_of(queues, &j.queue) >= w).map_or(0, |i| i + 1)
        };
        self.local_bytes += job.payload.len();
        self.local_queue.insert(pos, job);
    }

    /// Jobs a worker held but never started go back to the front of the
    /// local queue, in order, to run elsewhere.
    pub(super) fn requeue_waiting(&mut self, slot: usize, queues: &QueueSpec) {
        let waiting = std::mem::take(&mut self.slots[slot].waiting);
        self.slots[slot].steal_pending = false;
        for job in waiting.into_iter().rev() {
            self.enqueue(job, true, queues);
        }
    }

    /// Busy workers holding, queued behind their running job, a job of
    /// lower weight than `queue`'s and not already asked to give jobs back:
    /// now asked (marked `steal_pending`).
    pub(super) fn steal_below(&mut self, queue: &str, queues: &QueueSpec) -> Vec<usize> {
        let w = Self::weight_of(queues, queue);
        let mut asked = Vec::new();
        for (slot, s) in self.slots.iter_mut().enumerate() {
            let lower = s.waiting.iter().any(|j| Self::weight_of(queues, &j.queue) < w);
            if !s.spare && !s.steal_pending && lower && matches!(s.state, SlotState::Busy(_)) {
                s.steal_pending = true;
                asked.push(slot);
            }
        }
        asked
    }

    /// The router cancelled `msgid`, queued at a worker: remembered (up to
    /// [`MAX_CANCEL_PENDING`]) until it is given back or starts.
    pub(super) fn cancel_later(&mut self, msgid: &str) {
        if self.cancel_pending.len() < MAX_CANCEL_PENDING {
            self.cancel_pending.insert(msgid.to_owned());
        }
    }

    /// Whether `msgid` was cancelled while queued at a worker (forgotten
    /// now: it is being dealt with).
    pub(super) fn take_cancelled(&mut self, msgid: &str) -> bool {
        self.cancel_pending.remove(msgid)
    }
}

impl JobManagerState {
    /// Settle step: starts locally queued jobs on idle workers, then queues
    /// more behind running jobs that just started (up to `worker_pipeline`).
    /// Nothing when nothing is queued.
    pub(super) fn hand_out_queued_jobs(&mut self, now: Instant, out: &mut Vec<Action>) {
        while !self.workers.queued().is_empty() {
            if let Some(slot) = self.workers.idle_slot() {
                let job = self.workers.pop_queued().expect("non-empty");
                self.start(slot, job, now, out);
            } else if let Some(slot) = self.pipeline_slot(now) {
                let job = self.workers.pop_queued().expect("non-empty");
                debug!(msgid = %job.msgid, slot, "job queued at worker");
                out.push(run_action(slot, &job));
                self.workers.slots[slot].waiting.push_back(job);
            } else {
                return;
            }
        }
    }

    /// A busy worker that can take one more job behind its running one:
    /// room in its pipeline, within `max_job_count`, not about to be
    /// recycled, and a running job young enough to be probably short.
    ///
    /// The pipeline is `worker_pipeline` deep, twice that while `prefetch`
    /// is in force (jobs shorter than `prefetch_below`): the extra jobs
    /// come from those prefetched here (what the router counts is
    /// unchanged), and a deeper pipeline lets the workers' `Done`s be read
    /// in fewer, larger bursts ([`JobManagerState::worker_read_holdoff`]).
    fn pipeline_slot(&self, now: Instant) -> Option<usize> {
        let pipeline = self.cfg.worker_pipeline.max(1);
        let depth = if self.prefetch_in_force() > 0 { pipeline.saturating_mul(2) } else { pipeline };
        self.workers
            .slots
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
        debug!(msgid = %job.msgid, slot, pid = ?self.workers.slots[slot].pid, "job started");
        out.push(run_action(slot, &job));
        self.workers.slots[slot].state = SlotState::Busy(JobInFlight::start(job, now));
    }

    /// Jobs a worker held but never started go back to the front of the
    /// local queue, in order, to run elsewhere.
    pub(super) fn requeue_waiting(&mut self, slot: usize) {
        self.workers.requeue_waiting(slot, &self.cfg.queues);
    }

    /// Puts a job in the local queue by its queue's weight (see
    /// [`Workers::enqueue`]).
    pub(super) fn enqueue(&mut self, job: QueuedJob, front: bool) {
        self.workers.enqueue(job, front, &self.cfg.queues);
    }

    /// A job of weight `w` just arrived: workers holding lower-weight jobs
    /// queued behind their running one are asked to give them back, so
    /// the new job runs next (priorities hold through prefetching).
    pub(super) fn steal_for_priority(&mut self, queue: &str, out: &mut Vec<Action>) {
        for slot in self.workers.steal_below(queue, &self.cfg.queues) {
            debug!(slot, %queue, "a higher-weight job arrived: taking back lower-weight jobs queued at the worker");
            out.push(Action::Steal { slot });
        }
    }

    pub(super) fn spawn(&mut self, slot: usize, out: &mut Vec<Action>) {
        let jitter = self.workers.next_spawn_jitter();
        let s = &mut self.workers.slots[slot];
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
        let n = self.workers.slots[slot].quick_deaths.min(6);
        Duration::from_millis(100 << n).min(Duration::from_secs(5))
    }

    pub(super) fn on_spawn_failed(&mut self, slot: usize, error: String, now: Instant) {
        warn!(slot, %error, "cannot start worker");
        self.workers.slots[slot].quick_deaths += 1;
        self.workers.slots[slot].state = SlotState::Waiting { respawn_at: now + self.backoff(slot) };
        self.stats.restart("spawn_failed");
    }

    pub(super) fn on_worker_up(&mut self, slot: usize, pid: u32, out: &mut Vec<Action>) {
        let stopping_idle = self.lifecycle.is_stopping() && self.workers.queued().is_empty();
        let s = &mut self.workers.slots[slot];
        s.pid = Some(pid);
        s.quick_deaths = 0;
        if !matches!(s.state, SlotState::Starting) {
            return;
        }
        info!(slot, pid, "worker ready");
        if stopping_idle {
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
        let s = &mut self.workers.slots[slot];
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
        self.stats.run_finished(pid, &job.callable, elapsed.as_secs_f64(), error_type.is_some());
        match &error_type {
            None => debug!(%msgid, pid, queue = %job.queue, ?elapsed, "job done"),
            Some(kind) => info!(%msgid, pid, queue = %job.queue, error_type = %kind, "job failed"),
        }
        // The reply goes out now, before settling can announce this slot again.
        self.send_reply_json(&msgid, reply_json, out);
        if let Some(next) = self.workers.slots[slot].waiting.pop_front() {
            // The worker goes straight on with the job queued behind.
            let cancelled = self.workers.take_cancelled(&next.msgid);
            self.workers.slots[slot].state = SlotState::Busy(JobInFlight::start(next, now));
            if cancelled {
                self.stop_running(slot, now, out);
            }
            return;
        }
        let stopping_idle = self.lifecycle.is_stopping() && self.workers.queued().is_empty();
        let s = &mut self.workers.slots[slot];
        let recycle = s.jobs_done >= job_limit(self.cfg.max_job_count, s) || s.recycle_after_job;
        if recycle || stopping_idle {
            if recycle && !stopping_idle {
                info!(slot, pid, jobs = s.jobs_done, "worker reached max_job_count: recycling");
                self.stats.restart("recycled");
            }
            s.state = SlotState::Retiring;
            out.push(Action::Retire { slot });
            if !stopping_idle {
                self.workers.promote_spare(slot);
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
        if self.workers.remove_queued(msgid) {
            info!(%msgid, "cancelled before it started");
            self.answer_cancelled(msgid, out);
            return;
        }
        for slot in 0..self.workers.slots.len() {
            if matches!(&self.workers.slots[slot].state, SlotState::Busy(job) if job.msgid == msgid) {
                self.stop_running(slot, now, out);
                return;
            }
            if self.workers.slots[slot].waiting.iter().any(|j| j.msgid == msgid) {
                self.workers.cancel_later(msgid);
                if !self.workers.slots[slot].steal_pending {
                    self.workers.slots[slot].steal_pending = true;
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
        let SlotState::Busy(job) = &self.workers.slots[slot].state else { return };
        let msgid = job.msgid.clone();
        let pid = self.workers.slots[slot].pid.unwrap_or(0);
        info!(slot, pid, %msgid, "cancelled while running: stopping its worker");
        self.stats.restart("cancelled");
        self.answer_cancelled(&msgid, out);
        self.workers.slots[slot].state = SlotState::Killing { since: now, forced: false };
        out.push(Action::Kill { slot, force: false });
        self.requeue_waiting(slot);
        self.workers.promote_spare(slot);
    }

    fn answer_cancelled(&mut self, msgid: &str, out: &mut Vec<Action>) {
        self.stats.job_failed();
        let reply = JobReply::failed(JobErrorKind::Cancelled, "cancelled by an operator", "");
        self.send_reply(msgid, reply, out);
    }

    /// A worker grew past `max_memory_per_worker`: an idle one retires now
    /// (a spare takes its place), a busy one after its job.
    pub(super) fn on_worker_over_memory(&mut self, slot: usize, rss_bytes: u64, out: &mut Vec<Action>) {
        let limit = self.cfg.max_memory_per_worker;
        let Some(s) = self.workers.slots.get_mut(slot) else { return };
        if limit == 0 || s.recycle_after_job {
            return;
        }
        info!(slot, pid = s.pid.unwrap_or(0), rss_bytes, limit, "worker past max_memory_per_worker: recycling");
        self.stats.restart("memory");
        match s.state {
            SlotState::Idle => {
                s.state = SlotState::Retiring;
                out.push(Action::Retire { slot });
                self.workers.promote_spare(slot);
            }
            SlotState::Busy(_) => s.recycle_after_job = true,
            _ => {}
        }
    }

    pub(super) fn on_worker_stole(&mut self, slot: usize, msgids: Vec<String>, out: &mut Vec<Action>) {
        let s = &mut self.workers.slots[slot];
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
            if self.workers.take_cancelled(&job.msgid) {
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
        let previous = std::mem::replace(&mut self.workers.slots[slot].state, SlotState::Gone);
        match previous {
            SlotState::Busy(job) => {
                self.stats.restart("died");
                self.stats.job_failed();
                warn!(slot, pid, msgid = %job.msgid, %exit, "worker died while running a job");
                let reply = JobReply::failed(
                    JobErrorKind::WorkerDied,
                    format!("worker pid {pid} died while running the job ({exit})"),
                    "",
                );
                self.send_reply(&job.msgid, reply, out);
            }
            SlotState::Idle => {
                self.stats.restart("died");
                warn!(slot, pid, %exit, "idle worker died");
            }
            SlotState::Starting => {
                self.stats.restart("died");
                self.workers.slots[slot].quick_deaths += 1;
                warn!(slot, pid, %exit, "worker died while starting");
            }
            SlotState::Retiring | SlotState::Killing { .. } => debug!(slot, pid, %exit, "worker exited"),
            SlotState::Waiting { .. } | SlotState::Gone => {}
        }
        if self.lifecycle.is_stopping() {
            // Stays gone; settling exits once every slot is.
            return;
        }
        self.workers.promote_spare(slot);
        if self.workers.slots[slot].quick_deaths > 0 {
            let at = now + self.backoff(slot);
            self.workers.slots[slot].state = SlotState::Waiting { respawn_at: at };
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

/// The command that hands `job` to the worker of `slot`.
fn run_action(slot: usize, job: &QueuedJob) -> Action {
    Action::Run {
        slot,
        msgid: job.msgid.clone(),
        payload: job.payload.clone(),
        attempt: job.attempt,
        checkpoint: job.checkpoint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> QueueSpec {
        QueueSpec(vec![(10, "high".into()), (1, "low".into())])
    }

    fn job(msgid: &str, queue: &str) -> QueuedJob {
        QueuedJob {
            msgid: msgid.into(),
            queue: queue.into(),
            callable: "m.f".into(),
            payload: String::new(),
            timeout: Duration::from_secs(1),
            attempt: 1,
            checkpoint: None,
        }
    }

    fn queued(w: &Workers) -> Vec<&str> {
        w.queued().iter().map(|j| j.msgid.as_str()).collect()
    }

    #[test]
    fn new_has_workers_then_spares_all_gone() {
        let w = Workers::new(2, 1);
        let spares: Vec<bool> = w.slots.iter().map(|s| s.spare).collect();
        assert_eq!(spares, [false, false, true]);
        assert!(w.all_gone());
        assert!(w.queued().is_empty());
        assert_eq!(w.idle_slot(), None);
    }

    #[test]
    fn the_local_queue_is_by_weight_and_given_back_jobs_go_first_in_their_weight() {
        let mut w = Workers::new(1, 0);
        let q = queues();
        w.enqueue(job("l1", "low"), false, &q);
        w.enqueue(job("h1", "high"), false, &q);
        w.enqueue(job("l2", "low"), false, &q);
        w.enqueue(job("h2", "high"), false, &q);
        w.enqueue(job("u1", "unknown"), false, &q);
        assert_eq!(queued(&w), ["h1", "h2", "l1", "l2", "u1"]);
        w.enqueue(job("l0", "low"), true, &q);
        w.enqueue(job("h0", "high"), true, &q);
        assert_eq!(queued(&w), ["h0", "h1", "h2", "l0", "l1", "l2", "u1"]);
        assert!(w.remove_queued("l1"));
        assert!(!w.remove_queued("l1"));
        assert_eq!(w.pop_queued().map(|j| j.msgid), Some("h0".into()));
        assert_eq!(queued(&w), ["h1", "h2", "l0", "l2", "u1"]);
    }

    #[test]
    fn requeued_waiting_jobs_keep_their_order_ahead_of_their_weight() {
        let mut w = Workers::new(1, 0);
        let q = queues();
        w.enqueue(job("h9", "high"), false, &q);
        w.enqueue(job("l9", "low"), false, &q);
        w.slots[0].waiting.extend([job("l1", "low"), job("h1", "high"), job("l2", "low")]);
        w.slots[0].steal_pending = true;
        w.requeue_waiting(0, &q);
        assert_eq!(queued(&w), ["h1", "h9", "l1", "l2", "l9"]);
        assert!(w.slots[0].waiting.is_empty());
        assert!(!w.slots[0].steal_pending);
    }

    #[test]
    fn an_idle_spare_takes_the_place_of_a_worker() {
        let mut w = Workers::new(1, 1);
        w.slots[1].state = SlotState::Idle;
        assert_eq!(w.idle_slot(), None, "a spare is not handed jobs");
        assert!(!w.promote_spare(1), "a spare is not replaced");
        assert!(w.promote_spare(0));
        assert!(w.slots[0].spare && !w.slots[1].spare);
        assert_eq!(w.idle_slot(), Some(1));
        assert!(!w.promote_spare(1), "no idle spare left");
    }

    #[test]
    fn steal_below_asks_busy_workers_holding_lower_weight_jobs_once() {
        let now = Instant::now();
        let q = queues();
        let mut w = Workers::new(3, 0);
        for (slot, waiting) in [(0, "low"), (1, "high"), (2, "low")] {
            w.slots[slot].state = SlotState::Busy(JobInFlight::start(job("r", "low"), now));
            w.slots[slot].waiting.push_back(job("w", waiting));
        }
        w.slots[2].spare = true;
        assert_eq!(w.steal_below("high", &q), [0]);
        assert!(w.slots[0].steal_pending);
        assert!(w.steal_below("high", &q).is_empty(), "one Steal at a time");
        assert!(w.steal_below("low", &q).is_empty());
    }

    #[test]
    fn cancellations_pending_are_taken_once_and_bounded() {
        let mut w = Workers::new(1, 0);
        w.cancel_later("a");
        assert!(w.take_cancelled("a"));
        assert!(!w.take_cancelled("a"));
        for i in 0..MAX_CANCEL_PENDING + 5 {
            w.cancel_later(&i.to_string());
        }
        assert_eq!(w.cancel_pending.len(), MAX_CANCEL_PENDING);
        assert!(!w.take_cancelled(&MAX_CANCEL_PENDING.to_string()), "past the bound: not remembered");
    }

    #[test]
    fn each_spawn_gets_the_next_jitter_deterministically() {
        let (mut a, mut b) = (Workers::new(1, 0), Workers::new(1, 0));
        let ja: Vec<u16> = (0..8).map(|_| a.next_spawn_jitter()).collect();
        let jb: Vec<u16> = (0..8).map(|_| b.next_spawn_jitter()).collect();
        assert_eq!(ja, jb);
        assert_eq!(ja[0], spread(1));
        let mut distinct = ja.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ja.len());
    }
}
