//! The timers: on every tick, a fixed list of named steps.

use super::{Action, JobManagerState, SlotState};
use emq_protocol::{JobErrorKind, JobReply};
use std::time::Instant;
use tracing::{debug, warn};

/// With several router addresses, how long an INFORM waits for an ACK at
/// one before the next is tried.
const MULTI_ADDRESS_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

impl JobManagerState {
    pub(super) fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.watch_router(now, out);
        self.heartbeat(now, out);
        self.flush_job_updates(now, out);
        self.time_out_jobs(now, out);
        self.steal_from_long_jobs(now, out);
        self.escalate_kills(now, out);
        self.respawn_waiting(now, out);
        self.end_shutdown_grace(now, out);
    }

    /// Router liveness: reconnect (to the next address) when the router has
    /// been silent too long; INFORM again while no ACK comes. Not while
    /// stopping.
    fn watch_router(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.lifecycle.is_stopping() {
            return;
        }
        if self.link.silent_for(now) >= self.cfg.router_silence_limit {
            self.stats.error("router_lost");
            warn!(silent_for = ?self.link.silent_for(now), "router silent: reconnecting");
            self.link.next_addr();
            self.connect(now, out);
        } else if let Some(sent_at) = self.link.informing_since() {
            if self.cfg.addrs.len() > 1 && now.saturating_duration_since(sent_at) >= MULTI_ADDRESS_PROBE {
                // A standby binds nothing: no answer here, try the next one.
                debug!("no ACK from this address: trying the next");
                self.link.next_addr();
                self.connect(now, out);
            } else if now.saturating_duration_since(sent_at) >= self.cfg.reconnect_timeout {
                debug!("no ACK yet: INFORM again");
                self.send_inform(now, out);
            }
        }
    }

    /// Once ACKed, a heartbeat with the pool's health every
    /// `heartbeat_interval` (also while draining, so the router keeps us).
    fn heartbeat(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.link.heartbeat_due(now, self.cfg.heartbeat_interval) {
            out.push(Action::Heartbeat(self.health(now)));
        }
    }

    /// A job past its deadline (its timeout, moved by its `extend()`s, at
    /// most `max_runtime` after it started) fails with a timeout REPLY and
    /// its worker is killed; the jobs queued behind it go back to the local
    /// queue, and a ready spare takes the slot's place.
    fn time_out_jobs(&mut self, now: Instant, out: &mut Vec<Action>) {
        for slot in 0..self.workers.slots.len() {
            let job = match &self.workers.slots[slot].state {
                SlotState::Busy(job) if now >= job.deadline => job.clone(),
                _ => continue,
            };
            let pid = self.workers.slots[slot].pid.unwrap_or(0);
            let limit = job.deadline.saturating_duration_since(job.started);
            warn!(slot, pid, msgid = %job.msgid, ?limit, extended = job.extended, "job timed out: killing its worker");
            self.stats.restart("timeout");
            self.stats.job_failed();
            let why = if limit >= self.cfg.max_runtime {
                format!("job reached max_runtime ({:.3} s)", self.cfg.max_runtime.as_secs_f64())
            } else if job.extended {
                format!("job exceeded its extended timeout ({:.3} s after it started)", limit.as_secs_f64())
            } else {
                format!("job exceeded its timeout of {:.3} s", limit.as_secs_f64())
            };
            let reply = JobReply::failed(JobErrorKind::Timeout, format!("{why}; worker pid {pid} killed"), "");
            self.send_reply(&job.msgid, reply, out);
            self.workers.slots[slot].state = SlotState::Killing { since: now, forced: false };
            out.push(Action::Kill { slot, force: false });
            self.requeue_waiting(slot);
            self.workers.promote_spare(slot);
        }
    }

    /// Jobs queued behind one that has run `steal_after` are asked back, so
    /// they can run elsewhere (one Steal at a time per worker).
    fn steal_from_long_jobs(&mut self, now: Instant, out: &mut Vec<Action>) {
        for (slot, s) in self.workers.slots.iter_mut().enumerate() {
            if let SlotState::Busy(job) = &s.state {
                if !s.waiting.is_empty()
                    && !s.steal_pending
                    && now.saturating_duration_since(job.started) >= self.cfg.steal_after
                {
                    s.steal_pending = true;
                    out.push(Action::Steal { slot });
                }
            }
        }
    }

    /// A worker that ignored SIGTERM for `kill_escalation` gets SIGKILL.
    fn escalate_kills(&mut self, now: Instant, out: &mut Vec<Action>) {
        for (slot, s) in self.workers.slots.iter_mut().enumerate() {
            if let SlotState::Killing { since, forced: false } = s.state {
                if now.saturating_duration_since(since) >= self.cfg.kill_escalation {
                    s.state = SlotState::Killing { since, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
            }
        }
    }

    /// Workers that died at start are restarted once their backoff is over
    /// (not while stopping).
    fn respawn_waiting(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.lifecycle.is_stopping() {
            return;
        }
        for slot in 0..self.workers.slots.len() {
            if matches!(self.workers.slots[slot].state, SlotState::Waiting { respawn_at } if now >= respawn_at) {
                self.spawn(slot, out);
            }
        }
    }

    /// Shutdown grace over: kill what still runs.
    fn end_shutdown_grace(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.lifecycle.grace_over(now) {
            self.kill_running("job manager stopped: kill_grace_period over", now, out);
        }
    }
}
