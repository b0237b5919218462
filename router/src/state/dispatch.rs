//! Dispatch: picking a free [`super::WorkerSlot`] for a job (highest
//! weight, then least recently used job manager), handing the job out,
//! draining a queue's buffer into a job manager that just freed slots, and
//! putting a job back at the front of its queue.

use super::limits::Handed;
use super::QueueState;
use super::{Action, JobInFlight, JobState, Now, RouterState, SocketKind, StoredRequest, WaitingJob};
use emq_journal::Record;
use emq_protocol::{Command, Message, Request, DEFAULT_QUEUE};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

/// A job manager of at most this many queues leaves their free sets when
/// it has no free slot; one of more stays (see `slot_taken`).
const EAGER_QUEUES: usize = 64;

/// Free-set entries looked at for one pick (job managers that do not allow
/// the job, or have no free slot, are skipped up to this many).
const MAX_PICK_SCAN: usize = 256;

/// Waiting jobs looked at for one job manager with `allowed_paths` when the
/// oldest ones are not for it.
const MAX_ALLOWED_SCAN: usize = 1024;

/// Queues looked at for such a job manager when its best one holds nothing
/// it allows.
const MAX_ALLOWED_QUEUES: usize = 256;

/// The queues and what waits in them: each queue's buffer (memory part,
/// then a disk tail past `buffer_memory`) and free slots.
pub(crate) struct Dispatch {
    pub(crate) queues: HashMap<String, QueueState>,
    /// Resolved queue names, shared by every record that names them.
    pub(crate) queue_names: HashMap<String, Arc<str>>,
    /// Queues that may have waiting jobs: every queue a job is put in is
    /// added; an entry found empty is dropped when looked at. A READY looks
    /// here (when it is the shorter list) instead of at each of its job
    /// manager's queues: 10,000 queues cost nothing while their buffers are
    /// empty.
    pub(crate) maybe_waiting: rustc_hash::FxHashSet<String>,
    /// Sequence numbers of the queues' free sets (see `QueueState::free`).
    pub(crate) free_seq: u64,
    /// Counts dispatches: least-recently-used order and READY bookkeeping.
    pub(crate) lru_clock: u64,
    /// Bytes of the jobs waiting in the in-memory part of queue buffers.
    pub(crate) buffered_bytes: u64,
    /// The disk tails of queue buffers (past `buffer_memory`).
    pub(crate) spill: Box<dyn super::spill::SpillStore>,
    /// The journal and spill files are past `journal_max_bytes` (set by
    /// the poll loop, which knows the disk).
    pub(crate) disk_full: bool,
    /// Jobs cancelled while in a buffer's disk tail: skipped when read back.
    pub(crate) cancelled_spilled: rustc_hash::FxHashSet<Arc<str>>,
}

impl Dispatch {
    /// Puts a job in `queue`'s buffer: at the front when it waited before
    /// (it goes next), else at the end — on disk when the memory part is
    /// past `buffer_memory` or the queue already has a disk tail (order is
    /// kept: memory part first, then the tail). A job the disk refuses is
    /// kept in memory (the error is returned for counting): never lost.
    pub(crate) fn buffer(
        &mut self,
        queue: String,
        job: WaitingJob,
        front: bool,
        buffer_memory: u64,
    ) -> std::io::Result<()> {
        let size = job.memory_bytes();
        if !self.maybe_waiting.contains(queue.as_str()) {
            self.maybe_waiting.insert(queue.clone());
        }
        let mut result = Ok(());
        let spill = !front && (self.spill.len(&queue) > 0 || self.buffered_bytes + size > buffer_memory);
        if spill {
            match self.spill.push(&queue, &job) {
                Ok(()) => {
                    self.queues.entry(queue).or_default();
                    return Ok(());
                }
                Err(e) => result = Err(e),
            }
        }
        self.buffered_bytes += size;
        let q = self.queues.entry(queue).or_default();
        if front {
            q.waiting.push_front(job);
        } else {
            q.waiting.push_back(job);
        }
        result
    }

    /// Takes the oldest job of `queue`'s buffer, reading the next chunk of
    /// its disk tail back when the memory part is empty (a read error is
    /// returned beside, for counting).
    pub(crate) fn unbuffer(&mut self, queue: &str, buffer_memory: u64) -> (Option<WaitingJob>, Option<std::io::Error>) {
        let err = self.fill_memory_part(queue, buffer_memory).err();
        let job = self.queues.get_mut(queue).and_then(|q| q.waiting.pop_front());
        if let Some(job) = &job {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(job.memory_bytes());
        }
        (job, err)
    }

    /// When `queue`'s memory part is empty, reads the next chunk of its
    /// disk tail into it.
    pub(crate) fn fill_memory_part(&mut self, queue: &str, buffer_memory: u64) -> std::io::Result<()> {
        if self.queues.get(queue).is_some_and(|q| q.waiting.is_empty()) && self.spill.len(queue) > 0 {
            return self.refill(queue, buffer_memory);
        }
        Ok(())
    }

    /// Reads a chunk of `queue`'s disk tail into its memory part. A job
    /// that fell back to `default` for a queue that is served now goes to
    /// its own queue; a job cancelled while on disk is dropped.
    fn refill(&mut self, queue: &str, buffer_memory: u64) -> std::io::Result<()> {
        let chunk = (buffer_memory / 16).clamp(64 << 10, 16 << 20) as usize;
        let jobs = self.spill.pop_chunk(queue, chunk)?;
        let mut result = Ok(());
        for mut job in jobs {
            if self.cancelled_spilled.remove(&*job.msgid) {
                continue;
            }
            let own = job.request.queue(queue).to_owned();
            if queue == DEFAULT_QUEUE && own != queue && self.queues.get(own.as_str()).is_some_and(|q| q.ever_served) {
                job.request.clear_requested_queue();
                if let Err(e) = self.buffer(own, job, false, buffer_memory) {
                    result = Err(e);
                }
                continue;
            }
            self.buffered_bytes += job.memory_bytes();
            if !self.maybe_waiting.contains(queue) {
                self.maybe_waiting.insert(queue.to_owned());
            }
            self.queues.entry(queue.to_owned()).or_default().waiting.push_back(job);
        }
        result
    }

    /// Jobs waiting in `queue`'s buffer (memory part and disk tail).
    pub(crate) fn queue_len(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.waiting.len()) + self.spill.len(queue)
    }

    /// Jobs waiting in any queue.
    pub(crate) fn buffered(&self) -> usize {
        self.queues.values().map(|q| q.waiting.len()).sum::<usize>() + self.spill.total()
    }
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            queues: HashMap::default(),
            queue_names: HashMap::default(),
            maybe_waiting: Default::default(),
            free_seq: 0,
            lru_clock: 0,
            buffered_bytes: 0,
            spill: Box::new(super::spill::MemSpill::default()),
            disk_full: false,
            cancelled_spilled: Default::default(),
        }
    }
}

impl RouterState {
    /// The job manager with a free slot for `queue`: highest weight first,
    /// then one with an idle worker (a free slot may be only prefetch room
    /// behind busy workers: a job must not wait there while another job
    /// manager of its queue has a worker free), then least recently used.
    ///
    /// With `job` (its header frame and payload), only a job manager that
    /// allows its callable (`allowed_paths`, said at INFORM) and has the
    /// labels and name it asks for (`requires:` / `on:`) is picked; `None`
    /// asks whether any slot is free at all.
    pub(super) fn pick_job_manager(&self, queue: &str, job: Option<(&str, &str)>) -> Option<PeerId> {
        if !self.dispatching() {
            return None;
        }
        let q = self.dispatch.queues.get(queue)?;
        if q.paused {
            return None;
        }
        // The first of the highest weight that has an idle worker, looking
        // at a bounded number of them; else the first.
        let mut first: Option<(u32, &PeerId)> = None;
        let mut looked = 0;
        let mut scanned = 0;
        for (std::cmp::Reverse(weight), _, peer) in &q.free {
            scanned += 1;
            if scanned > MAX_PICK_SCAN {
                break;
            }
            // A job manager of many queues stays in the sets while busy.
            let Some(jm) = self.peers.job_managers.get(peer).filter(|jm| jm.free_slots > 0) else { continue };
            if job.is_some_and(|(h, p)| !jm.accepts(h, p)) {
                continue;
            }
            looked += 1;
            if looked > 16 {
                break;
            }
            match first {
                None => first = Some((*weight, peer)),
                Some((w, _)) if w != *weight => break,
                Some(_) => {}
            }
            if jm.has_idle_worker() {
                return Some(peer.clone());
            }
        }
        first.map(|(_, p)| p.clone())
    }

    /// Hands `job` to `to` (which has a free slot), from `queue` — unless
    /// the job is over its limit: then it is parked (see [`super::limits`])
    /// and the slot stays free for the next job.
    pub(super) fn dispatch(
        &mut self,
        to: PeerId,
        queue: String,
        job: WaitingJob,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Handed {
        let mut job = match self.limit_gate(&queue, job, now) {
            Ok(job) => job,
            Err(handed) => return handed,
        };
        let attempt = job.attempts + 1;
        if attempt > 1 {
            let checkpoint = self.checkpoints.get(&job.msgid).map(str::to_owned);
            job.request.mark_retry(attempt, checkpoint.as_deref());
        }
        debug!(msgid = %job.msgid, %queue, job_manager = %to, "dispatched");
        out.push(Action::Journal(Record::Dispatched {
            msgid: job.msgid.to_string(),
            job_manager: to.as_bytes().to_vec(),
            attempt,
            at: now.unix,
        }));
        let received = self.lifecycle.started + Duration::from_millis(job.received_ms as u64);
        self.telemetry.metrics.observe_start(&queue, now.mono.saturating_duration_since(received));
        let msgid = job.msgid.to_string();
        // A workflow node (or a job others wait for) goes out only once its
        // Dispatched record is durable: after a crash it is then either in
        // doubt (its job manager reports it, or it never got it) or never
        // sent — never run twice because the dispatch was forgotten.
        let exact = self.workflows.cares(&msgid);
        let (_, request) = self.take_in_flight(to.clone(), queue, job, attempt, true, now);
        let message = Message::with_msgid(msgid, Command::Request(request));
        out.push(if exact {
            Action::SendDurable { socket: SocketKind::Backend, peer: to, message }
        } else {
            Action::Send { socket: SocketKind::Backend, peer: to, message }
        });
        Handed::Sent
    }

    /// Records `job` as in flight at `to` (attempt `attempt`): one of the
    /// job manager's slots is used (`uses_slot`; not for a job it was
    /// already running before a restart), the history says where the job
    /// is. Returns the REQUEST to send (unused when adopting a running job).
    pub(super) fn take_in_flight(
        &mut self,
        to: PeerId,
        queue: String,
        job: WaitingJob,
        attempt: u32,
        uses_slot: bool,
        now: Now,
    ) -> (Arc<str>, Request) {
        self.dispatch.lru_clock += 1;
        // One look-up: the record, and the msgid string it is kept under
        // (shared by the maps below; a new one only for a job the history
        // no longer holds).
        let queue_name = self.dispatch.queue_names.get(queue.as_str()).cloned();
        let id = match self.outcomes.history.mark_shared(&job.msgid, JobState::Dispatched, now.unix) {
            Some((key, r)) => {
                r.job_manager = Some(to.clone());
                r.attempts = attempt;
                if *r.queue != *queue {
                    r.queue = queue_name.unwrap_or_else(|| Arc::from(queue.as_str()));
                }
                key.clone()
            }
            None => job.msgid.to_arc(),
        };
        let headers = job.request.headers();
        if headers.limit.is_some() {
            self.limit_started(&id, headers.limit.as_deref(), now);
        }
        if uses_slot {
            self.slot_taken(&to, &queue);
        }
        if let Some(jm) = self.peers.job_managers.get_mut(&to) {
            jm.last_used = self.dispatch.lru_clock;
            jm.in_flight += 1;
            if !jm.reports_all_completions && !headers.reply_requested {
                jm.unreported.push_back(id.clone());
            }
        }
        let keep = headers.guarantee || headers.retry_count.is_some();
        // A limited job keeps its request too (not to run it again): a
        // checkpoint then still names its limit, so after a restart it
        // holds its slot while in doubt.
        let kept = (keep || headers.limit.is_some()).then(|| job.request.clone());
        let request = job.request.into_request(&queue);
        self.in_flight.insert(
            id.clone(),
            JobInFlight {
                client: job.client,
                job_manager: to,
                received: self.lifecycle.started + Duration::from_millis(job.received_ms as u64),
                queue,
                dispatched: now.mono,
                reply_requested: headers.reply_requested,
                guarantee: headers.guarantee,
                attempts: attempt,
                request: kept,
                retry_count: headers.retry_count.unwrap_or(0),
                keep,
                dispatch_seq: self.dispatch.lru_clock,
                cancelling: false,
            },
        );
        (id, request)
    }

    /// One of `jm`'s free slots is used by a job from `queue`: with none
    /// left it leaves every queue's free set; else it goes to the back of
    /// `queue`'s (least recently used first, per queue).
    fn slot_taken(&mut self, jm: &PeerId, queue: &str) {
        let Some(peer) = self.peers.job_managers.get_mut(jm) else { return };
        peer.free_slots = peer.free_slots.saturating_sub(1);
        if peer.free_slots == 0 && peer.queues.0.len() <= EAGER_QUEUES {
            self.leave_free_sets(jm);
            return;
        }
        // Leaving and joining every set of a job manager of 10,000 queues
        // at each full/free change would cost 10,000 updates; it stays, and
        // a pick skips it while it has no free slot.
        let Some(entry) = peer.free_keys.get_mut(queue) else { return };
        let (weight, old) = *entry;
        self.dispatch.free_seq += 1;
        let seq = self.dispatch.free_seq;
        entry.1 = seq;
        if let Some(q) = self.dispatch.queues.get_mut(queue) {
            q.free.remove(&(std::cmp::Reverse(weight), old, jm.clone()));
            q.free.insert((std::cmp::Reverse(weight), seq, jm.clone()));
        }
    }

    /// `jm` has a free slot again (it had none): it joins the free set of
    /// each of its queues, at the back.
    pub(super) fn join_free_sets(&mut self, jm: &PeerId) {
        let Some(peer) = self.peers.job_managers.get_mut(jm) else { return };
        if !peer.free_keys.is_empty() || peer.leaving {
            return;
        }
        for (weight, name) in &peer.queues.0 {
            self.dispatch.free_seq += 1;
            peer.free_keys.insert(name.clone(), (*weight, self.dispatch.free_seq));
            self.dispatch.queues.entry(name.clone()).or_default().free.insert((
                std::cmp::Reverse(*weight),
                self.dispatch.free_seq,
                jm.clone(),
            ));
        }
    }

    /// `jm` has no free slot (or is gone): out of every free set.
    pub(super) fn leave_free_sets(&mut self, jm: &PeerId) {
        let Some(peer) = self.peers.job_managers.get_mut(jm) else { return };
        let keys = std::mem::take(&mut peer.free_keys);
        for (name, (weight, seq)) in keys {
            if let Some(q) = self.dispatch.queues.get_mut(&name) {
                q.free.remove(&(std::cmp::Reverse(weight), seq, jm.clone()));
            }
        }
    }

    /// Hands waiting jobs to `jm` while it has free slots, from its
    /// highest-weight non-empty queue first.
    pub(super) fn drain_to(&mut self, jm: &PeerId, now: Now, out: &mut Vec<Action>) {
        loop {
            let Some(peer) = self.peers.job_managers.get(jm) else { return };
            if peer.free_slots == 0 || !self.dispatching() {
                return;
            }
            if peer.allowed.is_some() {
                if !self.dispatch_one_allowed(jm, now, out) {
                    return;
                }
                continue;
            }
            let Some(queue) = self.next_queue_for(jm) else { return };
            let job = self.unbuffer(&queue).expect("non-empty");
            if !peer_accepts(self, jm, &job) {
                // Pinned elsewhere (`requires:` / `on:`): it keeps its place
                // and this job manager takes the oldest job it may run.
                self.buffer(queue, job, true);
                if !self.dispatch_one_allowed(jm, now, out) {
                    return;
                }
                continue;
            }
            if let Handed::Blocked(job) = self.dispatch(jm.clone(), queue.clone(), job, now, out) {
                // Jobs waiting for their limit are at their budget: this
                // queue waits until some start.
                self.buffer(queue, job, true);
                return;
            }
        }
    }

    /// For a job manager with `allowed_paths` (or when the job at the head
    /// of its queue is pinned elsewhere): the oldest waiting job it
    /// allows, from its highest-weight queue that has one, is handed to it
    /// (jobs it does not allow wait for another job manager: no job waits
    /// behind them). Its best queue is looked at first, as for any job
    /// manager; the others only when that one holds nothing it allows (at
    /// most [`MAX_ALLOWED_QUEUES`] of them). False when there is none.
    fn dispatch_one_allowed(&mut self, jm: &PeerId, now: Now, out: &mut Vec<Action>) -> bool {
        let Some(best) = self.next_queue_for(jm) else { return false };
        if self.dispatch_allowed_from(jm, &best, now, out) {
            return true;
        }
        let Some(n_queues) = self.peers.job_managers.get(jm).map(|p| p.by_weight.len()) else { return false };
        for i in 0..n_queues.min(MAX_ALLOWED_QUEUES) {
            let Some(queue) = self.peers.job_managers.get(jm).map(|p| p.by_weight[i].clone()) else { return false };
            if queue == best || self.queue_len(&queue) == 0 || self.is_paused(&queue) {
                continue;
            }
            if self.dispatch_allowed_from(jm, &queue, now, out) {
                return true;
            }
        }
        false
    }

    /// The oldest job of `queue` (within [`MAX_ALLOWED_SCAN`]) that `jm`
    /// allows, handed to it.
    fn dispatch_allowed_from(&mut self, jm: &PeerId, queue: &str, now: Now, out: &mut Vec<Action>) -> bool {
        if let Err(e) = self.dispatch.fill_memory_part(queue, self.cfg.buffer_memory) {
            self.count("spill_errors");
            tracing::error!(error = %e, %queue, "cannot read buffered jobs back from disk");
        }
        let (Some(peer), Some(q)) = (self.peers.job_managers.get(jm), self.dispatch.queues.get(queue)) else {
            return false;
        };
        let Some(pos) = q
            .waiting
            .iter()
            .take(MAX_ALLOWED_SCAN)
            .position(|j| peer.accepts(j.request.headers_str(), j.request.payload()))
        else {
            return false;
        };
        let job = self.dispatch.queues.get_mut(queue).and_then(|q| q.waiting.remove(pos)).expect("just found");
        self.dispatch.buffered_bytes = self.dispatch.buffered_bytes.saturating_sub(job.memory_bytes());
        if let Handed::Blocked(job) = self.dispatch(jm.clone(), queue.to_owned(), job, now, out) {
            self.buffer(queue.to_owned(), job, true);
            return false;
        }
        true
    }

    /// The queue `jm` takes its next job from: its highest-weight queue with
    /// waiting jobs (not paused). Looks through the queues that may have
    /// waiting jobs or through `jm`'s own, whichever list is shorter —
    /// never sorts, never scans 10,000 empty queues per READY.
    fn next_queue_for(&mut self, jm: &PeerId) -> Option<String> {
        if self.dispatch.maybe_waiting.is_empty() {
            return None;
        }
        let peer = self.peers.job_managers.get(jm)?;
        let mut empty: Vec<String> = Vec::new();
        let found = if self.dispatch.maybe_waiting.len() < peer.by_weight.len() {
            let mut best: Option<(usize, &String)> = None;
            for name in &self.dispatch.maybe_waiting {
                if self.queue_len(name) == 0 {
                    empty.push(name.clone());
                    continue;
                }
                let Some(&rank) = peer.rank.get(name) else { continue };
                if !self.is_paused(name) && best.is_none_or(|(r, _)| rank < r) {
                    best = Some((rank, name));
                }
            }
            best.map(|(_, n)| n.clone())
        } else {
            peer.by_weight.iter().find(|name| self.queue_len(name) > 0 && !self.is_paused(name)).cloned()
        };
        for name in empty {
            self.dispatch.maybe_waiting.remove(&name);
        }
        found
    }

    /// Puts a job back at the front of its queue (marked queued) and hands
    /// it out at once if a slot is free anywhere.
    pub(super) fn requeue(&mut self, queue: String, job: WaitingJob, now: Now, out: &mut Vec<Action>) {
        self.outcomes.history.mark(&job.msgid, JobState::Queued, now.unix);
        out.push(Action::Journal(Record::Requeued { msgid: job.msgid.to_string(), attempts: job.attempts }));
        // Its earlier run (if any) holds no slot of its limit any more.
        self.limits.ended(&job.msgid);
        if let Some(jm) = self.pick_job_manager(&queue, Some((job.request.headers_str(), job.request.payload()))) {
            if let Handed::Blocked(job) = self.dispatch(jm, queue.clone(), job, now, out) {
                self.buffer(queue, job, true);
            }
        } else {
            self.buffer(queue, job, true);
        }
    }

    /// A job handed out earlier, waiting again (requeue, retry) with
    /// `attempts` dispatches behind it.
    pub(super) fn waiting_again(
        &self,
        msgid: Arc<str>,
        job: &JobInFlight,
        request: StoredRequest,
        attempts: u32,
    ) -> WaitingJob {
        WaitingJob {
            client: job.client.clone(),
            msgid: msgid.into(),
            request,
            received_ms: self.stamp(job.received),
            attempts,
        }
    }

    /// Jobs for `name` that fell back to `default` while nobody served it
    /// now wait in their own queue, in order (those in `default`'s disk
    /// tail move when they are read back).
    pub(super) fn adopt_from_default(&mut self, name: &str) {
        let Some(default) = self.dispatch.queues.get_mut(DEFAULT_QUEUE) else { return };
        if !default.waiting.iter().any(|j| j.request.queue(DEFAULT_QUEUE) == name) {
            return;
        }
        let (mine, rest): (VecDeque<WaitingJob>, VecDeque<WaitingJob>) =
            std::mem::take(&mut default.waiting).into_iter().partition(|j| j.request.queue(DEFAULT_QUEUE) == name);
        default.waiting = rest;
        let n = mine.len();
        // In their own queue the name need not be stored any more.
        let mine = mine.into_iter().map(|mut j| {
            j.request.clear_requested_queue();
            j
        });
        self.dispatch.queues.get_mut(name).expect("just created").waiting.extend(mine);
        self.dispatch.maybe_waiting.insert(name.to_owned());
        info!(queue = name, jobs = n, "moved waiting jobs from default to their own queue");
    }
}

/// Whether `jm` may run `job` (see `JobManagerPeer::accepts`).
fn peer_accepts(state: &RouterState, jm: &PeerId, job: &WaitingJob) -> bool {
    state.peers.job_managers.get(jm).is_some_and(|p| p.accepts(job.request.headers_str(), job.request.payload()))
}

#[cfg(test)]
mod room_tests {
    //! The [`Dispatch`] room's buffers alone: order, the memory budget and
    //! the disk tail.
    use super::Dispatch;
    use crate::state::{StoredRequest, WaitingJob};
    use emq_protocol::Request;

    fn job(msgid: &str) -> WaitingJob {
        let request = Request { queue: "q".into(), headers: String::new(), payload: "x".repeat(200) };
        WaitingJob {
            client: emq_receiver::PeerId::from("c"),
            msgid: msgid.into(),
            request: StoredRequest::new(request, "q"),
            received_ms: 0,
            attempts: 0,
        }
    }

    #[test]
    fn buffers_keep_order_and_bytes_across_the_disk_tail() {
        let mut d = Dispatch::default();
        let one = job("j0").memory_bytes();
        // Room for three jobs in memory; the rest go to the tail.
        for i in 0..10 {
            d.buffer("q".into(), job(&format!("j{i}")), false, one * 3).unwrap();
        }
        assert_eq!(d.queue_len("q"), 10);
        assert_eq!(d.buffered(), 10);
        assert_eq!(d.buffered_bytes, one * 3, "only the memory part counts");
        assert!(d.spill.len("q") == 7);
        d.buffer("q".into(), job("again"), true, one * 3).unwrap();
        d.cancelled_spilled.insert("j5".into());
        let mut order = Vec::new();
        while let (Some(j), None) = d.unbuffer("q", one * 3) {
            order.push(j.msgid.to_string());
        }
        assert_eq!(order, ["again", "j0", "j1", "j2", "j3", "j4", "j6", "j7", "j8", "j9"]);
        assert_eq!((d.buffered_bytes, d.buffered(), d.queue_len("q")), (0, 0, 0));
        assert!(d.cancelled_spilled.is_empty(), "a cancelled job is skipped once");
    }
}
