//! What running jobs say about themselves (JOB_UPDATE from our job
//! managers): their progress, shown in JOB_STATUS while they run and kept
//! in the job's record after they end; and their checkpoint, journaled and
//! handed to a retried attempt in the `checkpoint:` header.
//!
//! Only the job manager running a job may update it (an update for a job
//! it does not run is counted and dropped). Checkpoints live until the job
//! is final, within a byte budget (a quarter of `results_max_bytes`); one
//! past it is dropped with a warning — the retry then starts from the
//! checkpoint before, or from the beginning. Progress is not journaled: a
//! restart forgets it (the job's next update brings it back).

use super::{Action, RouterState};
use emq_journal::Record;
use emq_protocol::{JobUpdates, Progress};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use tracing::warn;

/// Checkpoints of live jobs, and the progress of running ones (kept here
/// too: a long job's record may leave the bounded history while it runs).
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    by_job: HashMap<Arc<str>, Box<str>>,
    bytes: u64,
    progress: HashMap<Arc<str>, Progress>,
}

impl Checkpoints {
    /// Keeps `data` as `msgid`'s checkpoint (replacing the one before);
    /// false when it does not fit in `budget` bytes.
    pub(crate) fn set(&mut self, msgid: Arc<str>, data: &str, budget: u64) -> bool {
        let old = self.by_job.get(&msgid).map_or(0, |d| d.len() as u64);
        let new = data.len() as u64;
        if self.bytes - old + new > budget {
            return false;
        }
        self.bytes = self.bytes - old + new;
        self.by_job.insert(msgid, data.into());
        true
    }

    /// The job is final: its checkpoint and progress go.
    pub(crate) fn forget(&mut self, msgid: &str) {
        if let Some(d) = self.by_job.remove(msgid) {
            self.bytes -= d.len() as u64;
        }
        if !self.progress.is_empty() {
            self.progress.remove(msgid);
        }
    }

    pub(crate) fn get(&self, msgid: &str) -> Option<&str> {
        self.by_job.get(msgid).map(|d| &**d)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &str)> {
        self.by_job.iter().map(|(k, v)| (k, &**v))
    }

    pub(crate) fn len(&self) -> usize {
        self.by_job.len()
    }
}

impl RouterState {
    /// JOB_UPDATE from `peer`: progress into the jobs' records, checkpoints
    /// kept and journaled.
    pub(super) fn on_job_updates(&mut self, peer: &PeerId, updates: JobUpdates, out: &mut Vec<Action>) {
        for u in updates.updates {
            let runs_it = self.in_flight.get(u.msgid.as_str()).is_some_and(|j| j.job_manager == *peer);
            if !runs_it {
                // A late update of a job that just ended is common: no warning.
                self.count("update_for_unknown_job");
                tracing::debug!(%peer, msgid = %u.msgid, "JOB_UPDATE for a job this job manager does not run: dropped");
                continue;
            }
            if let Some(p) = u.progress {
                let id: Arc<str> =
                    self.in_flight.get_key_value(u.msgid.as_str()).map(|(k, _)| k.clone()).expect("runs it");
                self.set_progress(&u.msgid, p.clone());
                // An event for the stream (journaled: its offset comes
                // from the journal, like every other event's).
                let mut ev = serde_json::json!({"t": "progress", "job": &u.msgid, "done": p.done, "at": p.at});
                if let Some(t) = p.total {
                    ev["total"] = t.into();
                }
                if let Some(m) = &p.message {
                    ev["message"] = m.as_str().into();
                }
                out.push(Action::Journal(Record::Event(ev.to_string())));
                self.checkpoints.progress.insert(id, p);
            }
            if let Some(data) = u.checkpoint {
                let id: Arc<str> =
                    self.in_flight.get_key_value(u.msgid.as_str()).map(|(k, _)| k.clone()).expect("runs it");
                let budget = self.cfg.results_max_bytes / 4;
                if self.checkpoints.set(id, &data, budget) {
                    out.push(Action::Journal(Record::JobCheckpoint { msgid: u.msgid, data }));
                } else {
                    self.count("checkpoints_dropped");
                    warn!(%peer, msgid = %u.msgid, bytes = data.len(), "checkpoint dropped: checkpoints are past a quarter of results_max_bytes");
                }
            }
        }
    }

    /// Keeps `p` as the job's progress (shown by JOB_STATUS).
    fn set_progress(&mut self, msgid: &str, p: Progress) {
        if let Some(r) = self.outcomes.history.get_mut(msgid) {
            r.extra_mut().progress = Some(Box::new(p));
        }
    }

    /// Running jobs' progress (STATUS `running_progress`, the dashboard's
    /// bars): at most 200.
    pub(super) fn running_progress(&self) -> serde_json::Value {
        let out: serde_json::Map<String, serde_json::Value> = self
            .checkpoints
            .progress
            .iter()
            .filter(|(m, _)| self.in_flight.contains_key(&***m))
            .take(200)
            .map(|(m, p)| (m.to_string(), serde_json::to_value(p).unwrap_or_default()))
            .collect();
        serde_json::Value::Object(out)
    }

    /// The checkpoints as journal records (for a journal checkpoint).
    pub(super) fn checkpoint_notes_records(&self) -> Vec<Record> {
        self.checkpoints
            .iter()
            .map(|(m, d)| Record::JobCheckpoint { msgid: m.to_string(), data: d.to_owned() })
            .collect()
    }

    /// Live jobs with a checkpoint (STATUS).
    pub fn checkpointed_jobs(&self) -> usize {
        self.checkpoints.len()
    }
}
