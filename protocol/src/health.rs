//! [`PoolHealth`]: what a job manager says about its pool in the extra frame
//! of its HEARTBEAT (our extension; EventMQ's router ignores the frame).
//!
//! One typed value, built once per heartbeat by the job manager, serialised
//! once onto the wire, parsed once by the router (bounded by
//! [`MAX_HEALTH_BYTES`]) and read as a value from then on by STATUS, the
//! metrics and the dashboard. Every field has a default, so a peer that
//! sends fewer fields (an older job manager) still parses.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Largest health frame the router parses; a bigger one is ignored (and
/// counted) instead of stalling the poll loop on a huge JSON document.
pub const MAX_HEALTH_BYTES: usize = 256 * 1024;

/// Why a health frame was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HealthError {
    #[error("health frame of {0} bytes is over the {MAX_HEALTH_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("health frame is not valid health JSON: {0}")]
    BadJson(String),
}

/// A job manager's pool, as of one heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolHealth {
    /// The job manager's `--name` (empty when unnamed).
    pub name: String,
    pub host: String,
    /// The job manager's pid.
    pub pid: u32,
    /// The queues it serves, `(weight, name)`, as INFORMed.
    pub queues: Vec<(u32, String)>,
    /// The host's 1, 5 and 15 minute load averages.
    pub load_avg: Vec<f64>,
    /// The job manager process itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// One entry per worker slot (spares included).
    pub workers: Vec<WorkerHealth>,
    /// Jobs running now.
    pub in_flight: Vec<JobHealth>,
    /// Jobs received and not yet handed to a worker.
    pub queued_locally: usize,
    /// Payload bytes of those jobs (what prefetching holds is bounded by
    /// the job manager's `prefetch_bytes`).
    pub queued_locally_bytes: usize,
    /// Extra jobs it asks for now beyond its workers' pipelines
    /// (`prefetch` in force: 0 before a job has finished, while jobs run
    /// longer than `prefetch_below`, or while the local queue holds
    /// `prefetch_bytes`).
    pub prefetch: usize,
    /// Msgids of the jobs it holds that are not running yet (queued here
    /// or behind a running job at a worker): with `in_flight`, what a
    /// restarted router learns is still in hand.
    pub held: Vec<String>,
    /// Jobs completed per worker pid (the most recent pids).
    pub jobs_by_pid: BTreeMap<u32, u64>,
    /// Worker replacements by reason (`died`, `timeout`, `recycled`, ...).
    pub restarts: BTreeMap<String, u64>,
    pub jobs_ok: u64,
    pub jobs_failed: u64,
    /// Anomalies by kind.
    pub errors: BTreeMap<String, u64>,
    /// Per callable (`module.func`): runs, failures and run times.
    pub callables: Vec<CallableHealth>,
}

/// One callable's figures at one job manager.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallableHealth {
    /// `module.func` or `module:Class.method`.
    pub name: String,
    pub runs: u64,
    pub failed: u64,
    /// Run time percentiles over its last runs (up to 512), milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One worker slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerHealth {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: WorkerSlotState,
    /// Jobs run by the current process.
    pub jobs: u64,
    /// Jobs queued at the worker behind its running one.
    pub queued: usize,
    /// Kept in reserve, not announced to the router.
    pub spare: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
}

/// Life-cycle stage of a worker slot, as shown to operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerSlotState {
    Starting,
    Idle,
    Busy,
    Retiring,
    Killing,
    /// Waiting to be restarted after dying at start (backoff).
    Waiting,
    Gone,
    /// A state this version does not know (a newer peer).
    #[default]
    #[serde(other)]
    Unknown,
}

/// One running job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobHealth {
    pub msgid: String,
    pub pid: Option<u32>,
    pub queue: String,
    pub age_secs: f64,
}

impl PoolHealth {
    /// The heartbeat frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("health serialises")
    }

    /// Reads a heartbeat frame, refusing one over [`MAX_HEALTH_BYTES`]
    /// before looking at it.
    pub fn from_json(raw: &str) -> Result<PoolHealth, HealthError> {
        if raw.len() > MAX_HEALTH_BYTES {
            return Err(HealthError::TooLarge(raw.len()));
        }
        serde_json::from_str(raw).map_err(|e| HealthError::BadJson(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let h = PoolHealth {
            name: "a".into(),
            pid: 7,
            workers: vec![WorkerHealth { slot: 0, pid: Some(9), state: WorkerSlotState::Busy, ..Default::default() }],
            jobs_by_pid: [(9, 3)].into_iter().collect(),
            ..Default::default()
        };
        let json = h.to_json();
        assert!(json.contains(r#""state":"busy""#), "{json}");
        assert!(json.contains(r#""jobs_by_pid":{"9":3}"#), "{json}");
        assert_eq!(PoolHealth::from_json(&json).unwrap(), h);
        // Older or newer peers: missing fields default, unknown states are kept as such.
        let h = PoolHealth::from_json(r#"{"workers":[{"state":"hibernating"}],"extra":1}"#).unwrap();
        assert_eq!(h.workers[0].state, WorkerSlotState::Unknown);
        assert!(matches!(PoolHealth::from_json("[1]"), Err(HealthError::BadJson(_))));
        let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_HEALTH_BYTES));
        assert!(matches!(PoolHealth::from_json(&huge), Err(HealthError::TooLarge(_))));
    }
}
