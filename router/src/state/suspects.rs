//! Slow is not dead: a job manager silent past `heartbeat_timeout` is
//! *suspected*, not declared dead with its jobs. Its `guarantee` jobs go
//! back to their queue at once (they may run elsewhere); its other jobs
//! wait, in doubt, for `suspect_timeout`. When it comes back — a long GC
//! pause, a frozen VM, SIGSTOP — its late reports are taken:
//!
//! - a job still waiting here (in doubt, or requeued and not yet run
//!   again) ends with the late report, and nothing runs twice;
//! - a job that was handed out again meanwhile ends with the late report
//!   (the first result), and the second run's report is recorded as a
//!   duplicate run in the job's status;
//! - a job that already ended elsewhere keeps its outcome; the late report
//!   is recorded as a duplicate run.
//!
//! The client hears once: the first result. The job manager's old
//! connection is told to reconnect (DISCONNECT), so it INFORMs afresh
//! instead of heartbeating into the void; under its new identity it is
//! recognised by its name (`--name`, else host:pid from its health).

use super::{Action, InDoubtJob, JobInFlight, Now, RouterState, SocketKind};
use crate::state::records::SuspectRun;
use emq_protocol::{Command, JobErrorKind, JobReply, Message};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use tracing::{info, warn};

/// Suspect runs remembered at most (a flood of lost job managers cannot
/// grow the router without bound).
const MAX_SUSPECTS: usize = 100_000;

/// Runs whose outcome is not known yet because their job manager went
/// silent (suspects) or the router stopped (in doubt), and jobs whose
/// result came from a late report while another run was under way.
#[derive(Default)]
pub(crate) struct Suspects {
    /// `guarantee` jobs requeued from a silent job manager, whose late
    /// report is still taken.
    pub(crate) runs: HashMap<Arc<str>, super::records::SuspectRun>,
    /// Jobs whose result came from a late report while another run was
    /// under way at this job manager: its report is a duplicate run.
    pub(crate) superseded: HashMap<Arc<str>, PeerId>,
    /// Jobs that were running when the router last stopped: a job manager
    /// that re-attaches may report them; else they run again or fail.
    pub(crate) in_doubt: HashMap<Arc<str>, InDoubtJob>,
}

impl RouterState {
    /// Tick step (for a job manager silent past `heartbeat_timeout`): its
    /// jobs are suspect, then it is removed (shown as stale).
    pub(super) fn suspect_job_manager(&mut self, peer: &PeerId, why: &str, now: Now, out: &mut Vec<Action>) {
        let who = self.peers.job_managers.get(peer).and_then(|jm| jm.display_name());
        let until = now.mono + self.cfg.suspect_timeout;
        let mine: Vec<Arc<str>> =
            self.in_flight.iter().filter(|(_, j)| j.job_manager == *peer).map(|(id, _)| id.clone()).collect();
        for id in mine {
            let guarantee = self.in_flight.get(&id).is_some_and(|j| j.guarantee && j.request.is_some());
            if guarantee {
                // Requeued by remove_job_manager below; a late report is still taken.
                if self.suspects.runs.len() < MAX_SUSPECTS {
                    self.suspects.runs.insert(id, SuspectRun { job_manager: peer.clone(), who: who.clone(), until });
                }
                continue;
            }
            let Some(j) = self.in_flight.remove(&id) else { continue };
            if let Some(jm) = self.peers.job_managers.get_mut(peer) {
                jm.in_flight = jm.in_flight.saturating_sub(1);
            }
            self.count("suspect_jobs_in_doubt");
            let job = self.waiting_from_in_flight(id.clone(), &j);
            self.suspects.in_doubt.insert(
                id,
                InDoubtJob {
                    queue: j.queue,
                    job_manager: peer.clone(),
                    job,
                    until,
                    silent_job_manager: true,
                    who: who.clone(),
                },
            );
        }
        self.remove_job_manager(peer, why, now, out);
    }

    /// `peer` just named itself (its first health on this connection): a
    /// job manager still listed under another identity with the same name
    /// and CURVE user is this one's earlier connection — it reconnected
    /// because the router was silent to it (a router paused, a cut
    /// connection), not because it lost its jobs. The earlier connection
    /// is retired without failing anything: its jobs are in doubt, claimed
    /// at once by this connection's health (the jobs it runs or holds) and
    /// by its reports, so a REPLY through the new identity is taken, not
    /// dropped as forged, and nothing is declared lost while it runs.
    pub(super) fn retire_earlier_connections(&mut self, peer: &PeerId, now: Now, out: &mut Vec<Action>) {
        let Some(jm) = self.peers.job_managers.get(peer) else { return };
        let Some(name) = jm.display_name() else { return };
        let user = jm.user.clone();
        let earlier: Vec<PeerId> = self
            .peers
            .job_managers
            .iter()
            .filter(|(p, j)| *p != peer && j.user == user && j.display_name().as_deref() == Some(name.as_str()))
            .map(|(p, _)| p.clone())
            .collect();
        for old in earlier {
            self.count("job_manager_reconnected");
            info!(job_manager = %peer, earlier = %old, name = %name, "job manager reconnected under a new identity: its jobs go with it");
            self.put_in_doubt(&old, now);
            self.remove_job_manager(&old, "reconnected under a new identity", now, out);
        }
    }

    /// Whether `peer` is the job manager `owner` (same connection), or the
    /// same job manager reconnected under a new identity (same name).
    pub(super) fn same_job_manager(&self, peer: &PeerId, owner: &PeerId, who: Option<&str>) -> bool {
        if peer == owner {
            return true;
        }
        let Some(who) = who else { return false };
        let now_named = self.peers.job_managers.get(peer).and_then(|jm| jm.display_name());
        now_named.as_deref() == Some(who)
    }

    /// A REPLY for `msgid` from `from` that is not the job's current owner:
    /// taken when `from` is the suspected job manager the job was taken
    /// from (true: handled here).
    pub(super) fn take_late_report(
        &mut self,
        from: &PeerId,
        msgid: &str,
        reply_json: &str,
        now: Now,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(s) = self.suspects.runs.get(msgid) else { return false };
        if !self.same_job_manager(from, &s.job_manager, s.who.as_deref()) {
            return false;
        }
        let s = self.suspects.runs.remove(msgid).expect("just found");
        let id: Arc<str> = Arc::from(msgid);
        self.count("late_reports_taken");
        // Its result is the job's result, wherever the job is now.
        let job: Option<JobInFlight> = if let Some(j) = self.in_flight.remove(msgid) {
            // Handed out again meanwhile: the other run's report will be a duplicate.
            if let Some(jm) = self.peers.job_managers.get_mut(&j.job_manager) {
                jm.in_flight = jm.in_flight.saturating_sub(1);
            }
            self.suspects.superseded.insert(id.clone(), j.job_manager.clone());
            Some(j)
        } else if let Some((queue, waiting)) = self.take_waiting(msgid) {
            let attempt = waiting.attempts.max(1);
            self.take_in_flight(s.job_manager.clone(), queue, waiting, attempt, false, now);
            self.in_flight.remove(msgid)
        } else {
            None
        };
        match job {
            Some(job) => {
                info!(%msgid, job_manager = %from, "late report from a job manager that was silent: taken");
                let error = late_error(reply_json);
                self.conclude(id, job, reply_json.to_owned(), error, now, out);
            }
            None => {
                // Already ended elsewhere: the first outcome stands.
                self.record_duplicate_run(msgid, from);
            }
        }
        true
    }

    /// A report for a job whose result was already taken from another run.
    pub(super) fn take_superseded_report(&mut self, from: &PeerId, msgid: &str) -> bool {
        match self.suspects.superseded.get(msgid) {
            Some(owner) if owner == from => {
                self.suspects.superseded.remove(msgid);
                self.record_duplicate_run(msgid, from);
                true
            }
            _ => false,
        }
    }

    fn record_duplicate_run(&mut self, msgid: &str, from: &PeerId) {
        self.count("duplicate_runs");
        warn!(%msgid, job_manager = %from, "a job ran twice (its job manager was silent and came back): the first result stands");
        if let Some(r) = self.outcomes.history.get_mut(msgid) {
            r.extra_mut().duplicate_runs += 1;
        }
    }

    /// Takes a job that waits in a queue buffer (memory part) or in the
    /// timers (retry), with its queue.
    fn take_waiting(&mut self, msgid: &str) -> Option<(String, super::WaitingJob)> {
        let key = self.timers.find_job(msgid);
        if let Some(key) = key {
            if let Some(super::Timer::Job { queue, job }) = self.take_timer(&key) {
                return Some((queue, job));
            }
        }
        if let Some(p) = self.limits.take_parked(msgid) {
            return Some((p.queue, p.job));
        }
        let queue = self.outcomes.history.get(msgid).map(|r| r.queue.to_string())?;
        let q = self.dispatch.queues.get_mut(&queue)?;
        let pos = q.waiting.iter().position(|j| &*j.msgid == msgid)?;
        let job = q.waiting.remove(pos)?;
        self.dispatch.buffered_bytes = self.dispatch.buffered_bytes.saturating_sub(job.memory_bytes());
        Some((queue, job))
    }

    /// Health from `peer` lists jobs it runs or holds: a suspect job it
    /// still runs, requeued here and not run again yet, is its again (no
    /// second run).
    pub(super) fn reclaim_suspects(&mut self, peer: &PeerId, held: &[String], now: Now) {
        for msgid in held {
            let Some(s) = self.suspects.runs.get(msgid.as_str()) else { continue };
            if !self.same_job_manager(peer, &s.job_manager, s.who.as_deref())
                || self.in_flight.contains_key(msgid.as_str())
            {
                continue;
            }
            if let Some((queue, waiting)) = self.take_waiting(msgid) {
                self.suspects.runs.remove(msgid.as_str());
                self.count("suspect_jobs_reclaimed");
                info!(%msgid, job_manager = %peer, "a job manager that was silent still runs the job: it is its again");
                let attempt = waiting.attempts.max(1);
                self.take_in_flight(peer.clone(), queue, waiting, attempt, false, now);
            }
        }
    }

    /// A message from a job manager that was removed for silence: it is
    /// told once to reconnect, so it INFORMs afresh.
    pub(super) fn wake_stale(&mut self, peer: &PeerId, out: &mut Vec<Action>) {
        let Some(s) = self.peers.stale.get_mut(peer) else { return };
        if s.told_to_reconnect {
            return;
        }
        s.told_to_reconnect = true;
        self.count("stale_job_manager_woke");
        info!(%peer, "a job manager removed for silence spoke again: telling it to reconnect");
        out.push(Action::Send {
            socket: SocketKind::Backend,
            peer: peer.clone(),
            message: Message::new(Command::Disconnect),
        });
    }

    /// Tick step: suspect runs past `suspect_timeout` are forgotten.
    pub(super) fn expire_suspects(&mut self, now: Now) {
        if !self.suspects.runs.is_empty() {
            self.suspects.runs.retain(|_, s| s.until > now.mono);
        }
        if self.suspects.runs.is_empty() && !self.suspects.superseded.is_empty() && self.in_flight.is_empty() {
            self.suspects.superseded.clear();
        }
    }
}

/// The error of a late report, if it is one.
fn late_error(reply_json: &str) -> Option<(JobErrorKind, String)> {
    if !reply_json.contains("\"error\"") {
        return None;
    }
    JobReply::from_json(reply_json).ok().and_then(|r| r.error).map(|e| (e.kind, e.message))
}
