//! Job manager settings: EventMQ's key names and defaults, plus ours
//! (`python_path`, `python_venv`, `allowed_paths`, `worker_addr_failover`).
//! Documented in the repo's `settings.toml` and `docs/settings.md`.

use emq_pool::WorkerConfig;
use emq_protocol::{QueueSpec, QueueSpecError};
use serde::Deserialize;
use std::time::Duration;

/// `queues` as it may be written: `"a,b"`, `"20:heavy,10:default"`, JSON
/// text, or a TOML list of `[weight, "name"]` pairs / names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum QueuesSetting {
    Pairs(Vec<(u32, String)>),
    Names(Vec<String>),
    Text(String),
}

impl QueuesSetting {
    pub fn parse(&self) -> Result<QueueSpec, QueueSpecError> {
        let spec = match self {
            QueuesSetting::Pairs(p) => QueueSpec(p.clone()),
            QueuesSetting::Names(n) => QueueSpec(n.iter().map(|n| (emq_protocol::DEFAULT_WEIGHT, n.clone())).collect()),
            QueuesSetting::Text(t) => QueueSpec::parse_cli(t)?,
        };
        Ok(if spec.is_empty() { QueueSpec::default_queues() } else { spec })
    }
}

/// Everything `emq-jobmanager` can be told.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobManagerSettings {
    /// The router's backend address.
    pub worker_addr: String,
    /// Further router addresses, tried in turn when the current one is lost.
    pub worker_addr_failover: Vec<String>,
    /// Queues to serve, with weights.
    pub queues: QueuesSetting,
    /// Worker processes (one job at a time each).
    pub concurrent_jobs: usize,
    /// Jobs after which a worker process is replaced.
    pub max_job_count: u64,
    /// Seconds a job may run when its REQUEST has no `timeout:N` header.
    pub global_timeout: f64,
    /// Seconds running jobs get to finish after SIGTERM/SIGINT/SIGQUIT.
    pub kill_grace_period: f64,
    /// Seconds between SIGTERM and SIGKILL for a timed-out job's worker.
    pub kill_escalation: f64,
    /// Jobs a worker may hold: one running plus the rest queued behind it.
    pub worker_pipeline: usize,
    /// Seconds after which jobs queued behind a running job are taken back.
    pub steal_after: f64,
    /// Extra jobs held by the job manager beyond its workers' pipelines,
    /// while jobs are short (average below `prefetch_below` seconds).
    pub prefetch: usize,
    pub prefetch_below: f64,
    /// Started, idle workers kept in reserve for instant replacement.
    pub spare_workers: usize,
    pub heartbeat_interval: f64,
    pub heartbeat_timeout: f64,
    /// Router silence of `heartbeat_timeout × heartbeat_liveness` → reconnect.
    pub heartbeat_liveness: f64,
    /// Seconds between INFORMs until the router ACKs.
    pub reconnect_timeout: f64,
    /// Dotted path run once in each worker at start.
    pub subprocess_setup_func: String,
    /// Dotted path run in the worker before every job.
    pub job_entry_func: String,
    /// Dotted path run in the worker after every job.
    pub job_exit_func: String,
    /// Directories prepended to the workers' `sys.path`.
    pub python_path: Vec<String>,
    /// Virtualenv whose site-packages the workers add (else `VIRTUAL_ENV`).
    pub python_venv: String,
    /// Module prefixes jobs may name; empty = any (with a warning).
    pub allowed_paths: Vec<String>,
    /// Name prefix of this job manager's identity at the router.
    pub name: String,
    pub log_level: String,
}

impl Default for JobManagerSettings {
    fn default() -> Self {
        JobManagerSettings {
            worker_addr: "tcp://127.0.0.1:47290".into(),
            worker_addr_failover: Vec::new(),
            queues: QueuesSetting::Text(r#"[[10, "default"]]"#.into()),
            concurrent_jobs: 4,
            max_job_count: 1024,
            global_timeout: 300.0,
            kill_grace_period: 300.0,
            kill_escalation: 1.0,
            worker_pipeline: 2,
            steal_after: 0.01,
            prefetch: 64,
            prefetch_below: 0.005,
            spare_workers: 1,
            heartbeat_interval: 3.0,
            heartbeat_timeout: 5.0,
            heartbeat_liveness: 3.0,
            reconnect_timeout: 5.0,
            subprocess_setup_func: String::new(),
            job_entry_func: String::new(),
            job_exit_func: String::new(),
            python_path: Vec::new(),
            python_venv: String::new(),
            allowed_paths: Vec::new(),
            name: String::new(),
            log_level: "info".into(),
        }
    }
}

fn secs(v: f64, key: &str) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{key} must be a positive number of seconds, got {v}"))
    }
}

fn optional(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

impl JobManagerSettings {
    /// The state machine's configuration; errors are one-line messages.
    pub fn to_config(&self) -> Result<crate::state::JmConfig, String> {
        let queues = self.queues.parse().map_err(|e| format!("queues: {e}"))?;
        if self.concurrent_jobs == 0 {
            return Err("concurrent_jobs must be at least 1".into());
        }
        if self.max_job_count == 0 {
            return Err("max_job_count must be at least 1".into());
        }
        let mut addrs = vec![self.worker_addr.clone()];
        addrs.extend(self.worker_addr_failover.iter().filter(|a| !a.is_empty()).cloned());
        for a in &addrs {
            if !a.contains("://") {
                return Err(format!("router address {a:?} is not a ZeroMQ endpoint like tcp://127.0.0.1:47290"));
            }
        }
        Ok(crate::state::JmConfig {
            queues,
            workers: self.concurrent_jobs,
            max_job_count: self.max_job_count,
            global_timeout: secs(self.global_timeout, "global_timeout")?,
            kill_grace: Duration::from_secs_f64(self.kill_grace_period.max(0.0)),
            kill_escalation: secs(self.kill_escalation, "kill_escalation")?,
            worker_pipeline: self.worker_pipeline.max(1),
            steal_after: secs(self.steal_after, "steal_after")?,
            prefetch: self.prefetch,
            prefetch_below: secs(self.prefetch_below, "prefetch_below")?,
            spares: self.spare_workers,
            heartbeat_interval: secs(self.heartbeat_interval, "heartbeat_interval")?,
            router_silence_limit: secs(self.heartbeat_timeout, "heartbeat_timeout")?
                .mul_f64(self.heartbeat_liveness.max(1.0)),
            reconnect_timeout: secs(self.reconnect_timeout, "reconnect_timeout")?,
            addrs,
            allowed_paths: self.allowed_paths.iter().filter(|p| !p.is_empty()).cloned().collect(),
        })
    }

    /// What each worker process is told.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            python_path: self.python_path.clone(),
            python_venv: optional(&self.python_venv),
            subprocess_setup_func: optional(&self.subprocess_setup_func),
            job_entry_func: optional(&self.job_entry_func),
            job_exit_func: optional(&self.job_exit_func),
            log_level: self.log_level.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_setting_forms() {
        let q = |s: QueuesSetting| s.parse().unwrap().0;
        assert_eq!(q(QueuesSetting::Text("a,b".into())), vec![(10, "a".to_string()), (10, "b".to_string())]);
        assert_eq!(q(QueuesSetting::Text("20:heavy,10:default".into()))[0], (20, "heavy".to_string()));
        assert_eq!(q(QueuesSetting::Text(r#"[[20,"heavy"]]"#.into())), vec![(20, "heavy".to_string())]);
        assert_eq!(q(QueuesSetting::Pairs(vec![(5, "x".into())])), vec![(5, "x".to_string())]);
        assert_eq!(q(QueuesSetting::Text("".into())), vec![(10, "default".to_string())]);
        assert!(QueuesSetting::Text("x:y".into()).parse().is_err());
    }

    #[test]
    fn header_timeout_or_global() {
        let s = JobManagerSettings::default();
        let c = s.to_config().unwrap();
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("timeout:5")), Duration::from_secs(5));
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("timeout:0")), Duration::from_secs(300));
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("")), Duration::from_secs(300));
        let bad = JobManagerSettings { concurrent_jobs: 0, ..Default::default() };
        assert!(bad.to_config().is_err());
        let bad = JobManagerSettings { worker_addr: "nope".into(), ..Default::default() };
        assert!(bad.to_config().is_err());
    }
}
