//! Router settings: EventMQ's key names and defaults. Documented with the
//! same defaults in the repo's `settings.toml` and `docs/settings.md`.

use serde::Deserialize;
use std::time::Duration;

/// Everything `emq-router` can be told.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouterSettings {
    /// Where clients (and schedulers) connect.
    pub frontend_addr: String,
    /// Where job managers connect.
    pub backend_addr: String,
    /// Where `emq-cli` connects.
    pub administrative_addr: String,
    /// Seconds between heartbeats the router sends to every peer.
    pub heartbeat_interval: f64,
    /// Seconds of silence after which a peer is declared dead.
    pub heartbeat_timeout: f64,
    /// Most jobs buffered per queue while no slot is free.
    pub hwm: usize,
    /// ZeroMQ high-water mark of each socket (messages per peer pipe).
    pub socket_hwm: i32,
    /// Recent jobs remembered for JOB_STATUS (oldest dropped first).
    pub job_history: usize,
    /// Seconds before the first retry of a failed `retry-count` job.
    pub retry_delay: f64,
    /// Each further retry waits this many times longer.
    pub retry_multiplier: f64,
    /// Most dead letters kept.
    pub dead_letter_max: usize,
    /// Refuse jobs for unserved queues when `default` has no job manager.
    pub reject_unknown_queues: bool,
    /// HTTP endpoint for /metrics, /api/status and the dashboard; empty = off.
    pub http_addr: String,
    /// Log filter when `RUST_LOG` is unset (`info`, `debug`, ...).
    pub log_level: String,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            frontend_addr: "tcp://127.0.0.1:47291".into(),
            backend_addr: "tcp://127.0.0.1:47290".into(),
            administrative_addr: "tcp://127.0.0.1:47293".into(),
            heartbeat_interval: 3.0,
            heartbeat_timeout: 5.0,
            hwm: 10_000,
            socket_hwm: 100_000,
            job_history: 100_000,
            retry_delay: 1.0,
            retry_multiplier: 2.0,
            dead_letter_max: 10_000,
            reject_unknown_queues: false,
            http_addr: "127.0.0.1:47294".into(),
            log_level: "info".into(),
        }
    }
}

impl RouterSettings {
    /// Rejects values that would make the router misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.heartbeat_interval > 0.0 && self.heartbeat_interval.is_finite()) {
            return Err(format!("heartbeat_interval must be > 0, got {}", self.heartbeat_interval));
        }
        if !(self.heartbeat_timeout > 0.0 && self.heartbeat_timeout.is_finite()) {
            return Err(format!("heartbeat_timeout must be > 0, got {}", self.heartbeat_timeout));
        }
        if self.hwm == 0 {
            return Err("hwm must be at least 1".into());
        }
        for (k, a) in [
            ("frontend_addr", &self.frontend_addr),
            ("backend_addr", &self.backend_addr),
            ("administrative_addr", &self.administrative_addr),
        ] {
            if !a.contains("://") {
                return Err(format!("{k} {a:?} is not a ZeroMQ endpoint like tcp://127.0.0.1:47291"));
            }
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_timeout)
    }
}
