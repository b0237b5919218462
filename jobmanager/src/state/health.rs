//! The pool's health as a typed [`PoolHealth`], built once per heartbeat.
//! The poll loop adds the process figures (pid, host, load, memory, CPU)
//! and serialises it once onto the HEARTBEAT's extra frame.

use super::{JobManagerState, SlotState};
use emq_protocol::{JobHealth, PoolHealth, WorkerHealth, WorkerSlotState};
use std::time::Instant;

impl SlotState {
    /// The stage shown to operators.
    pub fn health_state(&self) -> WorkerSlotState {
        match self {
            SlotState::Starting => WorkerSlotState::Starting,
            SlotState::Idle => WorkerSlotState::Idle,
            SlotState::Busy(_) => WorkerSlotState::Busy,
            SlotState::Retiring => WorkerSlotState::Retiring,
            SlotState::Killing { .. } => WorkerSlotState::Killing,
            SlotState::Waiting { .. } => WorkerSlotState::Waiting,
            SlotState::Gone => WorkerSlotState::Gone,
        }
    }
}

impl JobManagerState {
    /// What the state machine knows about its pool: workers, jobs in
    /// flight, counters, and the name and queues it serves now.
    pub fn health(&self, now: Instant) -> PoolHealth {
        let workers = self
            .workers
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| WorkerHealth {
                slot,
                pid: s.pid,
                state: s.state.health_state(),
                jobs: s.jobs_done,
                queued: s.waiting.len(),
                spare: s.spare,
                ..Default::default()
            })
            .collect();
        let in_flight = self
            .workers
            .slots
            .iter()
            .filter_map(|s| match &s.state {
                SlotState::Busy(j) => Some(JobHealth {
                    msgid: j.msgid.clone(),
                    pid: s.pid,
                    queue: j.queue.clone(),
                    age_secs: now.saturating_duration_since(j.started).as_secs_f64(),
                }),
                _ => None,
            })
            .collect();
        let by_name =
            |m: &std::collections::BTreeMap<&'static str, u64>| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        PoolHealth {
            name: self.name.clone(),
            queues: self.cfg.queues.0.clone(),
            workers,
            in_flight,
            queued_locally: self.workers.queued().len(),
            queued_locally_bytes: self.workers.queued_bytes(),
            prefetch: self.prefetch_in_force(),
            held: self
                .workers
                .queued()
                .iter()
                .chain(self.workers.slots.iter().flat_map(|s| s.waiting.iter()))
                .map(|j| j.msgid.clone())
                .collect(),
            jobs_by_pid: self.stats.jobs_by_pid().clone(),
            restarts: by_name(self.stats.restarts()),
            jobs_ok: self.stats.jobs_ok(),
            jobs_failed: self.stats.jobs_failed(),
            errors: by_name(self.stats.errors()),
            callables: self.stats.callable_health(),
            ..Default::default()
        }
    }
}
