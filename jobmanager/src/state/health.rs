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
            queued_locally: self.local_queue.len(),
            held: self
                .local_queue
                .iter()
                .chain(self.slots.iter().flat_map(|s| s.waiting.iter()))
                .map(|j| j.msgid.clone())
                .collect(),
            jobs_by_pid: self.jobs_by_pid.clone(),
            restarts: by_name(&self.restarts),
            jobs_ok: self.jobs_ok,
            jobs_failed: self.jobs_failed,
            errors: by_name(&self.errors),
            callables: self.callable_health(),
            ..Default::default()
        }
    }

    /// The name a job's callable is counted under: `module.func`, shared
    /// (one allocation per callable); past [`super::MAX_CALLABLES`] names,
    /// `other`.
    pub(super) fn callable_name(&self, p: &emq_protocol::RunPayload) -> std::sync::Arc<str> {
        let name = format!("{}.{}", p.path, p.callable);
        if let Some((k, _)) = self.callables.get_key_value(name.as_str()) {
            return k.clone();
        }
        if self.callables.len() >= super::MAX_CALLABLES {
            return std::sync::Arc::from("other");
        }
        std::sync::Arc::from(name.as_str())
    }

    /// One finished run of `callable`.
    pub(super) fn count_callable(&mut self, callable: &std::sync::Arc<str>, secs: f64, failed: bool) {
        let s = self.callables.entry(callable.clone()).or_default();
        s.runs += 1;
        s.failed += u64::from(failed);
        if s.recent.len() >= super::CALLABLE_SAMPLES {
            s.recent.pop_front();
        }
        s.recent.push_back(secs as f32);
    }

    fn callable_health(&self) -> Vec<emq_protocol::CallableHealth> {
        let mut v: Vec<emq_protocol::CallableHealth> = self
            .callables
            .iter()
            .map(|(name, s)| {
                let mut t: Vec<f32> = s.recent.iter().copied().collect();
                t.sort_by(f32::total_cmp);
                let q = |p: f64| {
                    t.get(((t.len().max(1) - 1) as f64 * p).round() as usize).map_or(0.0, |x| *x as f64 * 1000.0)
                };
                emq_protocol::CallableHealth {
                    name: name.to_string(),
                    runs: s.runs,
                    failed: s.failed,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                }
            })
            .collect();
        v.sort_by(|a, b| b.runs.cmp(&a.runs));
        v
    }
}
