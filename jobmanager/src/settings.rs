//! Job manager settings: EventMQ's key names and defaults, plus ours
//! (`python_path`, `python_venv`, `allowed_paths`, `worker_addr_failover`).
//! Documented in the repo's `settings.toml` and `docs/settings.md`.

use emq_pool::WorkerConfig;
use emq_protocol::{QueueSpec, QueueSpecError};
use emq_settings::validate::{self as v, Zero};
use emq_settings::SettingsError;
use serde::Deserialize;
#[cfg(test)]
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

    /// The value as written, for error messages.
    fn shown(&self) -> String {
        match self {
            QueuesSetting::Pairs(p) => format!("{p:?}"),
            QueuesSetting::Names(n) => format!("{n:?}"),
            QueuesSetting::Text(t) => format!("{t:?}"),
        }
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
    /// Bytes of RSS past which a worker is replaced after its current job
    /// (Celery's `worker_max_memory_per_child`); 0 = no limit.
    pub max_memory_per_worker: u64,
    /// Seconds a job may run when its REQUEST has no `timeout:N` header.
    pub global_timeout: f64,
    /// Seconds a job may run at most, whatever its timeout and however
    /// often it calls `extend()`.
    pub max_runtime: f64,
    /// Seconds running jobs get to finish after SIGTERM/SIGINT/SIGQUIT.
    pub kill_grace_period: f64,
    /// Seconds between SIGTERM and SIGKILL for a timed-out job's worker.
    pub kill_escalation: f64,
    /// Jobs a worker may hold: one running plus the rest queued behind it.
    pub worker_pipeline: usize,
    /// Seconds after which jobs queued behind a running job are taken back.
    pub steal_after: f64,
    /// Seconds a REPLY may wait to go out with the next ones while every
    /// worker has another job queued here (0: never waits).
    pub reply_linger: f64,
    /// Extra jobs held by the job manager beyond its workers' pipelines,
    /// while jobs are short (average below `prefetch_below` seconds).
    pub prefetch: usize,
    pub prefetch_below: f64,
    /// Seconds of the workers' time the prefetched jobs may cover at most
    /// (at the average job length): what one job manager may hold back
    /// from the others.
    pub prefetch_span: f64,
    /// Bytes of job payloads the prefetched jobs may take at most (at the
    /// average payload size); none are prefetched while the jobs waiting
    /// here take this much.
    pub prefetch_bytes: u64,
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
    /// Programs command jobs may run: absolute paths or globs (`/usr/bin/*`,
    /// `/opt/tools/**`; `*` alone: any); empty = none — command jobs are
    /// then never sent here.
    pub allowed_commands: Vec<String>,
    /// Bytes of a command job's standard output, and of its standard
    /// error, kept (the tail; what came before is counted as cut).
    pub command_output_bytes: u64,
    /// Name prefix of this job manager's identity at the router (and the
    /// name jobs sent `on:NAME` ask for).
    pub name: String,
    /// Labels jobs can require (`requires:gpu;eu`): `["gpu", "eu"]`.
    pub labels: Vec<String>,
    /// Largest message the router may send (`ZMQ_MAXMSGSIZE`).
    pub max_message_bytes: u64,
    /// The router's CURVE public key file; with `curve_key`, the router
    /// connection is encrypted and authenticated by this key pair.
    pub curve_server_key: String,
    /// This job manager's CURVE secret key file (`emq keygen`; NAME.pub
    /// beside it).
    pub curve_key: String,
    /// The user workers run as (a name or a numeric uid); empty: the job
    /// manager's own. A job manager started as root warns unless set.
    pub worker_user: String,
    /// How workers start: `fork` (from a warm template process that has
    /// Python up and the allowed modules imported: about a millisecond per
    /// replacement) or `exec` (each starts its own interpreter).
    pub worker_start: String,
    pub log_level: String,
    /// `text` (colour only on a terminal) or `json` (one object per line).
    pub log_format: String,
}

impl Default for JobManagerSettings {
    fn default() -> Self {
        JobManagerSettings {
            worker_addr: "tcp://127.0.0.1:47290".into(),
            worker_addr_failover: Vec::new(),
            queues: QueuesSetting::Text(r#"[[10, "default"]]"#.into()),
            concurrent_jobs: 4,
            max_job_count: 1024,
            max_memory_per_worker: 0,
            global_timeout: 300.0,
            max_runtime: 86_400.0,
            kill_grace_period: 300.0,
            kill_escalation: 1.0,
            worker_pipeline: 4,
            steal_after: 0.01,
            reply_linger: 0.05,
            prefetch: 512,
            prefetch_below: 0.005,
            prefetch_span: 0.25,
            prefetch_bytes: 64 << 20,
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
            allowed_commands: Vec::new(),
            command_output_bytes: 1 << 20,
            labels: Vec::new(),
            name: String::new(),
            max_message_bytes: 16 << 20,
            worker_user: String::new(),
            worker_start: "fork".into(),
            curve_server_key: String::new(),
            curve_key: String::new(),
            log_level: "info".into(),
            log_format: "text".into(),
        }
    }
}

fn optional(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

/// Most worker processes (`concurrent_jobs`) and spares: each is a Python
/// process, so beyond this a typo (`-J 100000`) would fork without end.
pub const MAX_WORKERS: usize = 1024;

/// Most jobs one worker may hold (`worker_pipeline`): each is a slot the
/// router hands a job to, and a job queued behind a long one waits.
pub const MAX_PIPELINE: usize = 1024;

/// Most extra jobs held by the job manager (`prefetch`): each is an extra
/// READY sent at once.
pub const MAX_PREFETCH: usize = 65_536;

/// Largest `heartbeat_liveness`: a factor on `heartbeat_timeout`; beyond
/// this a lost router would go unnoticed for ages.
pub const MAX_LIVENESS: f64 = 1000.0;

impl JobManagerSettings {
    /// The state machine's configuration, every key validated (at start and
    /// on SIGHUP): no value can panic the job manager, and the error names
    /// the key, the value and why.
    pub fn to_config(&self) -> Result<crate::state::JmConfig, SettingsError> {
        v::count("max_message_bytes", self.max_message_bytes, 1024, 1 << 31)?;
        self.worker_identity()?;
        self.curve_keys()?;
        let queues =
            self.queues.parse().map_err(|e| SettingsError::invalid("queues", self.queues.shown(), e.to_string()))?;
        // `A,B`: the router and its standbys, tried in turn (as with
        // worker_addr_failover) — whichever leads answers.
        let mut addrs = Vec::new();
        for a in self.worker_addr.split(',').map(str::trim) {
            v::zmq_endpoint("worker_addr", a)?;
            addrs.push(a.to_owned());
        }
        for a in self.worker_addr_failover.iter().filter(|a| !a.is_empty()) {
            v::zmq_endpoint("worker_addr_failover", a)?;
            addrs.push(a.clone());
        }
        v::log_filter("log_level", &self.log_level)?;
        emq_settings::check_log_format("log_format", &self.log_format)?;
        let heartbeat_timeout = v::seconds("heartbeat_timeout", self.heartbeat_timeout, Zero::Refused)?;
        let liveness = v::multiplier("heartbeat_liveness", self.heartbeat_liveness, MAX_LIVENESS)?;
        // The product is a duration too: bounded like any other, checked
        // before `Duration` arithmetic could overflow.
        let silence = heartbeat_timeout.as_secs_f64() * liveness;
        let router_silence_limit = v::seconds("heartbeat_liveness", silence, Zero::Refused).map_err(|_| {
            SettingsError::invalid(
                "heartbeat_liveness",
                format!("{liveness:?}"),
                format!("heartbeat_timeout × heartbeat_liveness must be at most {} seconds", v::MAX_SECONDS),
            )
        })?;
        Ok(crate::state::JmConfig {
            queues,
            workers: v::count("concurrent_jobs", self.concurrent_jobs, 1, MAX_WORKERS)?,
            max_job_count: v::count("max_job_count", self.max_job_count, 1, u64::MAX)?,
            max_memory_per_worker: v::count("max_memory_per_worker", self.max_memory_per_worker, 0, 1 << 50)?,
            global_timeout: v::seconds("global_timeout", self.global_timeout, Zero::Refused)?,
            max_runtime: v::seconds("max_runtime", self.max_runtime, Zero::Refused)?,
            kill_grace: v::seconds("kill_grace_period", self.kill_grace_period, Zero::Allowed)?,
            kill_escalation: v::seconds("kill_escalation", self.kill_escalation, Zero::Refused)?,
            worker_pipeline: v::count("worker_pipeline", self.worker_pipeline, 1, MAX_PIPELINE)?,
            steal_after: v::seconds("steal_after", self.steal_after, Zero::Refused)?,
            reply_linger: v::seconds_at_most("reply_linger", self.reply_linger, Zero::Allowed, 0.1)?,
            prefetch: v::count("prefetch", self.prefetch, 0, MAX_PREFETCH)?,
            prefetch_below: v::seconds("prefetch_below", self.prefetch_below, Zero::Refused)?,
            prefetch_span: v::seconds_at_most("prefetch_span", self.prefetch_span, Zero::Refused, 3600.0)?,
            prefetch_bytes: v::count("prefetch_bytes", self.prefetch_bytes, 65536, 1 << 40)? as usize,
            spares: v::count("spare_workers", self.spare_workers, 0, MAX_WORKERS)?,
            heartbeat_interval: v::seconds("heartbeat_interval", self.heartbeat_interval, Zero::Refused)?,
            router_silence_limit,
            reconnect_timeout: v::seconds("reconnect_timeout", self.reconnect_timeout, Zero::Refused)?,
            addrs,
            allowed_paths: self.allowed_callables()?,
            allowed_commands: self.checked_commands()?,
            command_output_bytes: v::count("command_output_bytes", self.command_output_bytes, 1024, 1 << 30)?,
            labels: self.checked_labels()?,
        })
    }

    /// `allowed_commands`: each `*`, or an absolute path or glob (`/…`)
    /// without `.`/`..` components; at most 1,024.
    fn checked_commands(&self) -> Result<Vec<String>, SettingsError> {
        let list: Vec<String> =
            self.allowed_commands.iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
        if list.len() > 1024 {
            return Err(SettingsError::invalid("allowed_commands", list.len(), "at most 1024 entries"));
        }
        for p in &list {
            let normal = p.starts_with('/') && !p[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..");
            if p != "*" && (!normal || p.contains([',', '\0'])) {
                return Err(SettingsError::invalid(
                    "allowed_commands",
                    p,
                    "each entry is an absolute program path or glob (/usr/bin/echo, /opt/tools/*), or * for any",
                ));
            }
        }
        Ok(list)
    }

    /// `labels`: each 1 to 64 of `A-Z a-z 0-9 _ - . :`, at most 32.
    fn checked_labels(&self) -> Result<Vec<String>, SettingsError> {
        if self.labels.len() > emq_protocol::MAX_LABELS {
            return Err(SettingsError::invalid("labels", self.labels.join(","), "at most 32 labels"));
        }
        if let Some(bad) = self.labels.iter().find(|l| !emq_protocol::valid_label(l)) {
            return Err(SettingsError::invalid("labels", bad, "a label is 1 to 64 of A-Z a-z 0-9 _ - . :"));
        }
        Ok(self.labels.clone())
    }

    /// `allowed_paths`, required: closed by default — a job manager that
    /// would run any importable callable (`os.system` included) for whoever
    /// reaches the router does not start unless told so with `["*"]`.
    fn allowed_callables(&self) -> Result<Vec<String>, SettingsError> {
        let paths: Vec<String> =
            self.allowed_paths.iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
        if paths.is_empty() {
            return Err(SettingsError::invalid(
                "allowed_paths",
                "[]",
                "no callable may run: list the module prefixes jobs may name, e.g. allowed_paths = [\"myapp.tasks\"] \
                 (EMQ_ALLOWED_PATHS=myapp.tasks), or allow everything explicitly with [\"*\"]",
            ));
        }
        Ok(paths)
    }

    /// `worker_user` as `(uid, gid)`: a user name (its primary group), or
    /// a numeric uid (same-numbered gid).
    pub fn worker_identity(&self) -> Result<Option<(u32, u32)>, SettingsError> {
        let u = self.worker_user.trim();
        if u.is_empty() {
            return Ok(None);
        }
        if let Ok(uid) = u.parse::<u32>() {
            return Ok(Some((uid, uid)));
        }
        match nix::unistd::User::from_name(u) {
            Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
            _ => Err(SettingsError::invalid("worker_user", u, "no such user on this machine")),
        }
    }

    /// The CURVE keys for the router connection (both files or neither).
    pub fn curve_keys(&self) -> Result<Option<emq_sender::CurveClientKeys>, SettingsError> {
        match (self.curve_server_key.trim(), self.curve_key.trim()) {
            ("", "") => Ok(None),
            ("", _) => Err(SettingsError::invalid("curve_server_key", "", "needed with curve_key")),
            (_, "") => Err(SettingsError::invalid("curve_key", "", "needed with curve_server_key")),
            (server, key) => {
                let key = std::path::Path::new(key);
                emq_sender::CurveClientKeys::from_files(std::path::Path::new(server), &key.with_extension("pub"), key)
                    .map(Some)
                    .map_err(|e| SettingsError::invalid("curve_key", key.display(), e.to_string()))
            }
        }
    }

    /// What each worker process is told.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            run_as: self.worker_identity().ok().flatten(),
            python_path: self.python_path.clone(),
            python_venv: optional(&self.python_venv),
            subprocess_setup_func: optional(&self.subprocess_setup_func),
            job_entry_func: optional(&self.job_entry_func),
            job_exit_func: optional(&self.job_exit_func),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            preload: self.allowed_paths.iter().filter(|p| !p.contains('*')).cloned().collect(),
            allowed_commands: self.checked_commands().unwrap_or_default(),
            command_output_bytes: self.command_output_bytes.clamp(1024, 1 << 30) as usize,
        }
    }

    /// Whether workers are forked from a warm template (`worker_start`).
    pub fn fork_workers(&self) -> Result<bool, SettingsError> {
        match self.worker_start.as_str() {
            "fork" => Ok(true),
            "exec" => Ok(false),
            other => Err(SettingsError::invalid("worker_start", other, "must be \"fork\" or \"exec\"")),
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
        let s = JobManagerSettings { allowed_paths: vec!["*".into()], ..Default::default() };
        let c = s.to_config().unwrap();
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("timeout:5")), Duration::from_secs(5));
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("timeout:0")), Duration::from_secs(300));
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("")), Duration::from_secs(300));
        assert_eq!(c.max_runtime, Duration::from_secs(86_400));
        let short = JobManagerSettings { max_runtime: 60.0, ..s };
        let c = short.to_config().unwrap();
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("timeout:500")), Duration::from_secs(60));
        assert_eq!(c.timeout_for(&emq_protocol::Headers::parse("")), Duration::from_secs(60), "capped too");
    }

    /// `to_config` of the defaults with one change must fail naming `key`.
    fn refused(key: &str, change: impl FnOnce(&mut JobManagerSettings)) -> String {
        let mut s = JobManagerSettings { allowed_paths: vec!["*".into()], ..Default::default() };
        change(&mut s);
        SettingsError::expect_refusal(s.to_config(), key)
    }

    #[test]
    fn every_duration_refuses_inf_nan_negative_huge() {
        for bad in [f64::INFINITY, f64::NAN, -1.0, 1e300, f64::NEG_INFINITY] {
            refused("global_timeout", |s| s.global_timeout = bad);
            refused("max_runtime", |s| s.max_runtime = bad);
            refused("kill_grace_period", |s| s.kill_grace_period = bad);
            refused("kill_escalation", |s| s.kill_escalation = bad);
            refused("steal_after", |s| s.steal_after = bad);
            refused("reply_linger", |s| s.reply_linger = bad);
            refused("prefetch_below", |s| s.prefetch_below = bad);
            refused("prefetch_span", |s| s.prefetch_span = bad);
            refused("heartbeat_interval", |s| s.heartbeat_interval = bad);
            refused("heartbeat_timeout", |s| s.heartbeat_timeout = bad);
            refused("heartbeat_liveness", |s| s.heartbeat_liveness = bad);
            refused("reconnect_timeout", |s| s.reconnect_timeout = bad);
        }
        for key in ["global_timeout", "max_runtime", "heartbeat_interval", "heartbeat_timeout", "reconnect_timeout"] {
            refused(key, |s| match key {
                "global_timeout" => s.global_timeout = 0.0,
                "max_runtime" => s.max_runtime = 0.0,
                "heartbeat_interval" => s.heartbeat_interval = 0.0,
                "heartbeat_timeout" => s.heartbeat_timeout = 0.0,
                _ => s.reconnect_timeout = 0.0,
            });
        }
        // Each factor in range, the product not: no Duration overflow.
        let e = refused("heartbeat_liveness", |s| {
            s.heartbeat_timeout = 1e8;
            s.heartbeat_liveness = 999.0;
        });
        assert!(e.contains("heartbeat_timeout × heartbeat_liveness"), "{e}");
        refused("heartbeat_liveness", |s| s.heartbeat_liveness = 0.5);
        let grace0 =
            JobManagerSettings { kill_grace_period: 0.0, allowed_paths: vec!["*".into()], ..Default::default() };
        assert_eq!(grace0.to_config().unwrap().kill_grace, Duration::ZERO);
    }

    #[test]
    fn counts_addresses_and_queues() {
        refused("concurrent_jobs", |s| s.concurrent_jobs = 0);
        refused("concurrent_jobs", |s| s.concurrent_jobs = 1025);
        refused("max_job_count", |s| s.max_job_count = 0);
        refused("worker_pipeline", |s| s.worker_pipeline = 0);
        refused("worker_pipeline", |s| s.worker_pipeline = usize::MAX);
        refused("prefetch", |s| s.prefetch = usize::MAX);
        refused("spare_workers", |s| s.spare_workers = 100_000);
        refused("worker_addr", |s| s.worker_addr = "nope".into());
        let e = refused("worker_addr", |s| s.worker_addr = "tcp://127.0.0.1:99999".into());
        assert!(e.contains("99999"), "{e}");
        refused("worker_addr_failover", |s| s.worker_addr_failover = vec!["tcp://h".into()]);
        refused("worker_addr", |s| s.worker_addr = "tcp://127.0.0.1:1,nope".into());
        let two = JobManagerSettings {
            worker_addr: "tcp://127.0.0.1:1, tcp://127.0.0.1:2".into(),
            worker_addr_failover: vec!["tcp://127.0.0.1:3".into()],
            allowed_paths: vec!["*".into()],
            ..Default::default()
        };
        assert_eq!(
            two.to_config().unwrap().addrs,
            vec!["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"],
            "a router and its standbys, in turn"
        );
        refused("queues", |s| s.queues = QueuesSetting::Text("x:y".into()));
        refused("log_level", |s| s.log_level = "info=bogus[".into());
        let ok =
            JobManagerSettings { prefetch: 0, spare_workers: 0, allowed_paths: vec!["*".into()], ..Default::default() };
        ok.to_config().unwrap();
        // worker_user: a name, a uid, or an error naming the key.
        let with = |u: &str| JobManagerSettings { worker_user: u.into(), ..Default::default() };
        assert_eq!(with("").worker_identity().unwrap(), None);
        assert_eq!(with("1234").worker_identity().unwrap(), Some((1234, 1234)));
        assert_eq!(with("root").worker_identity().unwrap(), Some((0, 0)));
        assert_eq!(with("root").worker_config().run_as, Some((0, 0)));
        refused("worker_user", |s| s.worker_user = "no-such-user-here".into());
        // Closed by default: no allowed_paths, no job manager.
        let e = refused("allowed_paths", |s| s.allowed_paths = vec![]);
        assert!(e.contains("[\"*\"]"), "{e}");
        refused("allowed_paths", |s| s.allowed_paths = vec!["  ".into()]);
    }
}
