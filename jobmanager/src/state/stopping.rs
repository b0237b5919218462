//! Stopping (drain, then kill after the grace period; a second signal
//! stops at once), the exit check, and reloading settings on SIGHUP.

use super::{Action, JmConfig, JobManagerState, SlotState};
use emq_protocol::{Command, JobErrorKind, JobReply, Message};
use std::time::Instant;
use tracing::{info, warn};

impl JobManagerState {
    pub(super) fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            warn!("second stop signal: stopping now");
            self.kill_running("job manager stopped at once", now, out);
            self.exit = Some(130);
            return;
        }
        let running = self.slots.iter().filter(|s| matches!(s.state, SlotState::Busy(_))).count();
        info!(running, grace = ?self.cfg.kill_grace, "stopping: no new jobs, running jobs may finish");
        self.stopping = Some(now + self.cfg.kill_grace);
        out.push(Action::Send(Message::new(Command::Kbye)));
        // Jobs received but not started will not run: fail them visibly.
        while let Some(job) = self.local_queue.pop_front() {
            self.jobs_failed += 1;
            self.send_reply(
                &job.msgid,
                JobReply::failed(JobErrorKind::Refused, "job manager is shutting down", ""),
                out,
            );
        }
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                SlotState::Idle | SlotState::Starting => {
                    self.slots[slot].state = SlotState::Retiring;
                    out.push(Action::Retire { slot });
                }
                SlotState::Waiting { .. } => self.slots[slot].state = SlotState::Gone,
                _ => {}
            }
        }
    }

    /// Fails every running and queued-at-a-worker job as `killed` and
    /// SIGKILLs every worker still there.
    pub(super) fn kill_running(&mut self, why: &str, now: Instant, out: &mut Vec<Action>) {
        for slot in 0..self.slots.len() {
            match &self.slots[slot].state {
                SlotState::Busy(job) => {
                    let msgid = job.msgid.clone();
                    self.jobs_failed += 1;
                    self.send_reply(&msgid, JobReply::failed(JobErrorKind::Killed, why, ""), out);
                    for w in std::mem::take(&mut self.slots[slot].waiting) {
                        self.jobs_failed += 1;
                        self.send_reply(&w.msgid, JobReply::failed(JobErrorKind::Killed, why, ""), out);
                    }
                    self.slots[slot].state = SlotState::Killing { since: now, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
                SlotState::Retiring
                | SlotState::Starting
                | SlotState::Idle
                | SlotState::Killing { forced: false, .. } => {
                    self.slots[slot].state = SlotState::Killing { since: now, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
                _ => {}
            }
        }
    }

    /// Settle step: while stopping, once every worker is gone, fail what is
    /// still queued here and exit 0; or exit with the code a second stop
    /// signal asked for. `Exit` goes out once.
    pub(super) fn check_exit(&mut self, out: &mut Vec<Action>) {
        if self.exit.is_none()
            && self.stopping.is_some()
            && self.slots.iter().all(|s| matches!(s.state, SlotState::Gone))
        {
            // Jobs still queued here will not run: say so.
            while let Some(job) = self.local_queue.pop_front() {
                self.jobs_failed += 1;
                let reply = JobReply::failed(JobErrorKind::Refused, "job manager stopped before the job started", "");
                self.send_reply(&job.msgid, reply, out);
            }
            info!("all workers stopped: exiting");
            self.exit = Some(0);
        }
        if let (Some(code), false) = (self.exit, self.exit_sent) {
            self.exit_sent = true;
            out.push(Action::Exit(code));
        }
    }

    pub(super) fn on_reloaded(&mut self, cfg: JmConfig, now: Instant, out: &mut Vec<Action>) {
        let reconnect = cfg.queues != self.cfg.queues || cfg.addrs != self.cfg.addrs;
        info!(reconnect, "settings reloaded");
        if cfg.workers != self.cfg.workers {
            warn!(
                old = self.cfg.workers,
                new = cfg.workers,
                "concurrent_jobs changes need a restart; keeping the old value"
            );
        }
        let workers = self.cfg.workers;
        self.cfg = JmConfig { workers, ..cfg };
        // New Python settings apply to fresh workers: recycle each after its job.
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                SlotState::Idle => {
                    self.slots[slot].state = SlotState::Retiring;
                    out.push(Action::Retire { slot });
                }
                SlotState::Busy(_) => self.slots[slot].recycle_after_job = true,
                _ => {}
            }
        }
        if reconnect {
            self.addr_index = 0;
            self.connect(now, out);
        }
    }
}
