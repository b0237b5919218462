//! Stopping (drain, then kill after the grace period; a second signal
//! stops at once), the exit check, and reloading settings on SIGHUP.

use super::{Action, JmConfig, JobManagerState, SlotState};
use emq_protocol::{Command, JobErrorKind, JobReply, Message};
use std::time::Instant;
use tracing::{info, warn};

/// Whether the job manager is stopping, and its exit.
///
/// Owns: when the shutdown grace period ends (set by the first stop
/// signal), the exit code once decided, and whether [`Action::Exit`] went.
///
/// Keeps: once stopping, always stopping, with the first signal's
/// deadline; [`Action::Exit`] goes out at most once ([`Self::take_exit`]).
#[derive(Debug, Default)]
pub(super) struct Lifecycle {
    /// Set by the first stop signal: when the grace period ends.
    stopping: Option<Instant>,
    /// Exit with this code once the current event is settled: set when the
    /// last worker is gone while stopping, or by a second stop signal.
    exit: Option<i32>,
    /// [`Action::Exit`] went out (it goes once).
    exit_sent: bool,
}

impl Lifecycle {
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Stopping, running jobs may finish until `grace_until` (a later
    /// call keeps the first deadline).
    pub(super) fn stop(&mut self, grace_until: Instant) {
        self.stopping.get_or_insert(grace_until);
    }

    /// Stopping and the grace period is over.
    pub(super) fn grace_over(&self, now: Instant) -> bool {
        self.stopping.is_some_and(|deadline| now >= deadline)
    }

    /// Exit with `code` (the last one asked for, if it has not gone yet).
    pub(super) fn exit_with(&mut self, code: i32) {
        self.exit = Some(code);
    }

    /// An exit code was decided.
    pub(super) fn exiting(&self) -> bool {
        self.exit.is_some()
    }

    /// The exit code, the first time it is asked for once decided.
    pub(super) fn take_exit(&mut self) -> Option<i32> {
        match (self.exit, self.exit_sent) {
            (Some(code), false) => {
                self.exit_sent = true;
                Some(code)
            }
            _ => None,
        }
    }
}

impl JobManagerState {
    pub(super) fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.lifecycle.is_stopping() {
            warn!("second stop signal: stopping now");
            self.kill_running("job manager stopped at once", now, out);
            self.lifecycle.exit_with(130);
            return;
        }
        let running = self.workers.slots.iter().filter(|s| matches!(s.state, SlotState::Busy(_))).count();
        info!(running, grace = ?self.cfg.kill_grace, "stopping: no new jobs, running jobs may finish");
        self.lifecycle.stop(now + self.cfg.kill_grace);
        out.push(Action::Send(Message::new(Command::Kbye)));
        // Jobs received but not started will not run: fail them visibly.
        while let Some(job) = self.workers.pop_queued() {
            self.stats.job_failed();
            self.send_reply(
                &job.msgid,
                JobReply::failed(JobErrorKind::Refused, "job manager is shutting down", ""),
                out,
            );
        }
        for slot in 0..self.workers.slots.len() {
            match self.workers.slots[slot].state {
                SlotState::Idle | SlotState::Starting => {
                    self.workers.slots[slot].state = SlotState::Retiring;
                    out.push(Action::Retire { slot });
                }
                SlotState::Waiting { .. } => self.workers.slots[slot].state = SlotState::Gone,
                _ => {}
            }
        }
    }

    /// Fails every running and queued-at-a-worker job as `killed` and
    /// SIGKILLs every worker still there.
    pub(super) fn kill_running(&mut self, why: &str, now: Instant, out: &mut Vec<Action>) {
        for slot in 0..self.workers.slots.len() {
            match &self.workers.slots[slot].state {
                SlotState::Busy(job) => {
                    let msgid = job.msgid.clone();
                    self.stats.job_failed();
                    self.send_reply(&msgid, JobReply::failed(JobErrorKind::Killed, why, ""), out);
                    for w in std::mem::take(&mut self.workers.slots[slot].waiting) {
                        self.stats.job_failed();
                        self.send_reply(&w.msgid, JobReply::failed(JobErrorKind::Killed, why, ""), out);
                    }
                    self.workers.slots[slot].state = SlotState::Killing { since: now, forced: true };
                    out.push(Action::Kill { slot, force: true });
                }
                SlotState::Retiring
                | SlotState::Starting
                | SlotState::Idle
                | SlotState::Killing { forced: false, .. } => {
                    self.workers.slots[slot].state = SlotState::Killing { since: now, forced: true };
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
        if !self.lifecycle.exiting() && self.lifecycle.is_stopping() && self.workers.all_gone() {
            // Jobs still queued here will not run: say so.
            while let Some(job) = self.workers.pop_queued() {
                self.stats.job_failed();
                let reply = JobReply::failed(JobErrorKind::Refused, "job manager stopped before the job started", "");
                self.send_reply(&job.msgid, reply, out);
            }
            info!("all workers stopped: exiting");
            self.lifecycle.exit_with(0);
        }
        if let Some(code) = self.lifecycle.take_exit() {
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
        for slot in 0..self.workers.slots.len() {
            match self.workers.slots[slot].state {
                SlotState::Idle => {
                    self.workers.slots[slot].state = SlotState::Retiring;
                    out.push(Action::Retire { slot });
                }
                SlotState::Busy(_) => self.workers.slots[slot].recycle_after_job = true,
                _ => {}
            }
        }
        if reconnect {
            self.link.first_addr();
            self.connect(now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stopping_keeps_the_first_deadline() {
        let t0 = Instant::now();
        let mut l = Lifecycle::default();
        assert!(!l.is_stopping());
        assert!(!l.grace_over(t0));
        l.stop(t0 + Duration::from_secs(10));
        l.stop(t0 + Duration::from_secs(20));
        assert!(l.is_stopping());
        assert!(!l.grace_over(t0 + Duration::from_secs(9)));
        assert!(l.grace_over(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_exit_goes_out_once() {
        let mut l = Lifecycle::default();
        assert!(!l.exiting());
        assert_eq!(l.take_exit(), None);
        l.exit_with(0);
        assert!(l.exiting());
        assert_eq!(l.take_exit(), Some(0));
        assert_eq!(l.take_exit(), None);
        l.exit_with(130);
        assert_eq!(l.take_exit(), None, "an exit already went");
    }

    #[test]
    fn the_last_exit_code_asked_for_before_it_goes_wins() {
        let mut l = Lifecycle::default();
        l.exit_with(0);
        l.exit_with(130);
        assert_eq!(l.take_exit(), Some(130));
    }
}
