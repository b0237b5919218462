//! Router settings: EventMQ's key names and defaults. Documented with the
//! same defaults in the repo's `settings.toml` and `docs/settings.md`.

use crate::state::RouterConfig;
use emq_settings::validate::{self as v, Zero};
use emq_settings::SettingsError;
use serde::Deserialize;

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
    /// Most jobs buffered per queue while no slot is free; 0 = no count
    /// limit (the default: `buffer_memory` and `journal_max_bytes` bound
    /// the buffers instead, with back-pressure rather than refusals).
    pub hwm: usize,
    /// ZeroMQ high-water mark of each socket (messages per peer pipe).
    pub socket_hwm: i32,
    /// Recent jobs remembered for JOB_STATUS (oldest dropped first).
    pub job_history: usize,
    /// Seconds a finished job's record and result are kept (for JOB_STATUS
    /// and clients that missed the result).
    pub result_ttl: f64,
    /// Seconds of results before a router stopped without a checkpoint
    /// (killed, crashed, power lost) that go to their clients again after
    /// its restart: a result handed to ZeroMQ just before the kill may not
    /// have left the process.
    pub result_resend_window: f64,
    /// Bytes of job results the router keeps for JOB_STATUS (oldest
    /// evicted first; a result larger than a sixteenth of it is not kept).
    pub results_max_bytes: u64,
    /// The router's CURVE secret key file (`emq keygen` writes NAME.key);
    /// empty: no CURVE (plaintext sockets).
    pub curve_secret_key: String,
    /// Per socket, a directory of allowed client public keys (`*.pub`;
    /// the file name is the user name). A socket with a directory (and a
    /// secret key) is CURVE-only; one without stays plaintext (e.g. a
    /// frontend on loopback for unmodified EventMQ clients).
    pub curve_frontend_keys: String,
    pub curve_backend_keys: String,
    pub curve_admin_keys: String,
    /// CURVE users of the admin socket who may change things (no token
    /// needed).
    pub admin_users: Vec<String>,
    /// Largest message any peer may send (ZeroMQ's `ZMQ_MAXMSGSIZE` on
    /// all three sockets): a peer sending a bigger one is disconnected
    /// before the router holds it.
    pub max_message_bytes: u64,
    /// Who may INFORM as a scheduler on the frontend: CURVE user names, or
    /// `*` for any peer (e.g. EventMQ's emq-scheduler on a trusted host).
    /// Empty (the default): nobody.
    pub allowed_schedulers: Vec<String>,
    /// Seconds before the first retry of a failed `retry-count` job.
    pub retry_delay: f64,
    /// Each further retry waits this many times longer.
    pub retry_multiplier: f64,
    /// Most dead letters kept.
    pub dead_letter_max: usize,
    /// Refuse jobs for unserved queues when `default` has no job manager.
    pub reject_unknown_queues: bool,
    /// HTTP endpoint for /metrics, /api/status, the dashboard and the HTTP
    /// API v1; empty = off.
    pub http_addr: String,
    /// Connections the HTTP endpoint serves at once; more are answered 503.
    pub http_max_connections: usize,
    /// Seconds an HTTP `Idempotency-Key` is remembered (at least 86400).
    pub idempotency_ttl: f64,
    /// How much of the event stream is kept: a size and/or an age
    /// (`"64MiB 7d"`).
    pub events_retention: String,
    /// Log filter when `RUST_LOG` is unset (`info`, `debug`, ...).
    pub log_level: String,
    /// `text` (colour only on a terminal) or `json` (one object per line).
    pub log_format: String,
    /// Where the journal lives; empty = the per-user state directory
    /// (`$XDG_STATE_HOME/emq`, else `~/.local/state/emq`).
    pub data_dir: String,
    /// When a receipt may go out: `fsync` (the job survives a power loss),
    /// `write` (survives a router crash), `off` (no waiting).
    pub journal_sync: String,
    /// A journal segment is closed past this many bytes.
    pub journal_segment_bytes: u64,
    /// PostgreSQL URL of a shared journal (high availability: routers that
    /// share it elect one leader); empty = the file journal in `data_dir`.
    /// E.g. `postgresql://emq@db1,db2/emq?target_session_attrs=read-write`.
    pub journal_url: String,
    /// Seconds a leader's lease lasts without a renewal (with `journal_url`):
    /// a standby takes over at most this long after the leader is gone.
    pub lease_ttl: f64,
    /// Seconds job managers get to report running jobs on a graceful stop.
    pub stop_grace: f64,
    /// Bytes of buffered jobs the router holds in memory; past it the
    /// frontend is full.
    pub buffer_memory: u64,
    /// Bytes of journal on disk; past it (after a checkpoint) the frontend
    /// is full.
    pub journal_max_bytes: u64,
    /// When full: `wait` (stop reading the frontend: clients' sends wait in
    /// ZeroMQ, nothing is lost) or `refuse` (an error reply per REQUEST).
    pub on_full: String,
    /// Who runs SCHEDULE orders: `internal` (the router itself, kept in its
    /// journal) or `external` (forwarded to an EventMQ `emq-scheduler` that
    /// INFORMs on the frontend, as EventMQ's router does; it must also be
    /// in `allowed_schedulers`). Never both, so nothing fires twice.
    pub scheduler: String,
    /// Runs a schedule missed while the router was down: `skip` (none),
    /// `once` (one run at start for any number missed), `all` (every one,
    /// at most 10,000). A schedule's `misfire:` header overrides it.
    pub misfire: String,
    /// Most schedules kept (a SCHEDULE past it is refused).
    pub max_schedules: usize,
    /// Bytes of delayed jobs (`delay:` / `eta:`) held in memory; a delayed
    /// REQUEST past it is refused.
    pub delayed_max_bytes: u64,
    /// Seconds a job manager that went silent (past `heartbeat_timeout`)
    /// has to come back with its late reports: its non-`guarantee` jobs end
    /// `job manager lost` only then (its `guarantee` jobs run elsewhere at
    /// once, and a late report is still taken).
    pub suspect_timeout: f64,
    /// Limits per key: `NAME = { concurrency = N, rate = "N/PERIOD" }`
    /// (either or both). A job names one with `limit:NAME` or
    /// `limit:NAME/PARTITION` (counted per partition). In a TOML file a
    /// `[limits]` table; in `EMQ_LIMITS` a string
    /// `"NAME=concurrency:N rate:N/PERIOD; NAME=..."`.
    pub limits: LimitsSetting,
}

/// One limit as written in the settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LimitSetting {
    /// Jobs of a key running at once.
    pub concurrency: Option<i64>,
    /// `"N/PERIOD"`: at most N starts in any PERIOD (`500ms`, `1s`, `10s`,
    /// `1m`, `1h`).
    pub rate: Option<String>,
}

/// The `limits` setting: a table (TOML) or its one-line form (environment).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LimitsSetting {
    Table(std::collections::BTreeMap<String, LimitSetting>),
    Text(String),
}

impl Default for LimitsSetting {
    fn default() -> Self {
        LimitsSetting::Table(Default::default())
    }
}

/// Most limits configured.
pub const MAX_LIMITS: usize = 10_000;

impl LimitsSetting {
    /// The limits, validated: names of 1–128 characters without `/`, `,`,
    /// `:` or spaces; concurrency 1 to 1,000,000; a rate `N/PERIOD`; at
    /// least one of the two.
    pub fn to_specs(&self) -> Result<Vec<(String, crate::state::limits::LimitSpec)>, SettingsError> {
        let table = match self {
            LimitsSetting::Table(t) => t.clone(),
            LimitsSetting::Text(text) => Self::parse_text(text)?,
        };
        if table.len() > MAX_LIMITS {
            return Err(SettingsError::invalid("limits", table.len(), format!("at most {MAX_LIMITS} limits")));
        }
        let mut out = Vec::new();
        for (name, l) in table {
            let key = format!("limits.{name}");
            if name.is_empty()
                || name.len() > 128
                || name.chars().any(|c| c == '/' || c == ',' || c == ':' || c == ';' || c.is_whitespace())
            {
                return Err(SettingsError::invalid(
                    "limits",
                    &name,
                    "a limit name is 1 to 128 characters, without '/', ',', ':', ';' or spaces",
                ));
            }
            let concurrency = match l.concurrency {
                Some(c) => Some(v::count(&format!("{key}.concurrency"), c, 1, 1_000_000)? as u32),
                None => None,
            };
            let rate = match &l.rate {
                Some(r) => Some(
                    crate::state::limits::LimitSpec::parse_rate(r)
                        .map_err(|why| SettingsError::invalid(&format!("{key}.rate"), r, why))?,
                ),
                None => None,
            };
            if concurrency.is_none() && rate.is_none() {
                return Err(SettingsError::invalid(&key, "{}", "give concurrency, rate or both"));
            }
            out.push((name, crate::state::limits::LimitSpec { concurrency, rate }));
        }
        Ok(out)
    }

    /// `"api=concurrency:3 rate:50/10s; scan=concurrency:1"`.
    fn parse_text(text: &str) -> Result<std::collections::BTreeMap<String, LimitSetting>, SettingsError> {
        let mut table = std::collections::BTreeMap::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| SettingsError::invalid("limits", item, why.to_owned());
            let (name, rest) = item.split_once('=').ok_or_else(|| bad("expected NAME=concurrency:N rate:N/PERIOD"))?;
            let mut l = LimitSetting::default();
            for part in rest.split_whitespace() {
                match part.split_once(':') {
                    Some(("concurrency", n)) => {
                        l.concurrency = Some(n.parse().map_err(|_| bad("concurrency must be a count"))?)
                    }
                    Some(("rate", r)) => l.rate = Some(r.to_owned()),
                    _ => return Err(bad("expected concurrency:N and/or rate:N/PERIOD")),
                }
            }
            table.insert(name.trim().to_owned(), l);
        }
        Ok(table)
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            frontend_addr: "tcp://127.0.0.1:47291".into(),
            backend_addr: "tcp://127.0.0.1:47290".into(),
            administrative_addr: "tcp://127.0.0.1:47293".into(),
            heartbeat_interval: 3.0,
            heartbeat_timeout: 5.0,
            hwm: 0,
            socket_hwm: 100_000,
            job_history: 100_000,
            result_ttl: 86_400.0,
            result_resend_window: 2.0,
            allowed_schedulers: Vec::new(),
            max_message_bytes: 16 << 20,
            results_max_bytes: 256 << 20,
            curve_secret_key: String::new(),
            curve_frontend_keys: String::new(),
            curve_backend_keys: String::new(),
            curve_admin_keys: String::new(),
            admin_users: Vec::new(),
            retry_delay: 1.0,
            retry_multiplier: 2.0,
            dead_letter_max: 10_000,
            reject_unknown_queues: false,
            http_addr: "127.0.0.1:47294".into(),
            http_max_connections: 64,
            idempotency_ttl: 86400.0,
            events_retention: "64MiB 7d".into(),
            log_level: "info".into(),
            log_format: "text".into(),
            data_dir: String::new(),
            journal_sync: "fsync".into(),
            journal_segment_bytes: 64 << 20,
            journal_url: String::new(),
            lease_ttl: 4.0,
            stop_grace: 10.0,
            buffer_memory: 1 << 30,
            journal_max_bytes: 16 << 30,
            on_full: "wait".into(),
            scheduler: "internal".into(),
            misfire: "once".into(),
            max_schedules: 1_000_000,
            delayed_max_bytes: 1 << 30,
            suspect_timeout: 60.0,
            limits: LimitsSetting::default(),
        }
    }
}

/// Sanity bound for the router's job counts (`hwm`, `job_history`,
/// `dead_letter_max`): far above any real need, and a value like `1e300`
/// turned into a count is a typo, not a wish.
pub const MAX_JOBS: usize = 1_000_000_000;

/// Largest `retry_multiplier`: retries past a factor of 1000 each would
/// hit the router's one-day retry cap after two attempts anyway.
pub const MAX_RETRY_MULTIPLIER: f64 = 1000.0;

/// Longest `retry_delay`: one day, the cap the router applies to any retry.
pub const MAX_RETRY_DELAY: f64 = 86_400.0;

impl RouterSettings {
    /// The state machine's configuration, every key validated: the only way
    /// from settings to a [`RouterConfig`], at start and on SIGHUP, so that
    /// no value (`inf`, `NaN`, negative, huge, port 99999) can panic or
    /// misconfigure a running router. The error names the key and why.
    pub fn to_config(&self) -> Result<RouterConfig, SettingsError> {
        self.check_addresses()?;
        v::count("socket_hwm", self.socket_hwm, 1, i32::MAX)?;
        v::log_filter("log_level", &self.log_level)?;
        emq_settings::check_log_format("log_format", &self.log_format)?;
        v::count("max_message_bytes", self.max_message_bytes, 1024, 1 << 31)?;
        v::count("http_max_connections", self.http_max_connections, 1, 100_000)?;
        if !(86400.0..=(3650.0 * 86400.0)).contains(&self.idempotency_ttl) {
            return Err(SettingsError::invalid(
                "idempotency_ttl",
                self.idempotency_ttl.to_string(),
                "must be between 86400 (24 h) and 315360000 seconds",
            ));
        }
        self.retention()?;
        self.journal_options(false)?;
        Ok(RouterConfig {
            heartbeat_interval: v::seconds("heartbeat_interval", self.heartbeat_interval, Zero::Refused)?,
            heartbeat_timeout: v::seconds("heartbeat_timeout", self.heartbeat_timeout, Zero::Refused)?,
            hwm: v::count("hwm", self.hwm, 0, MAX_JOBS)?,
            job_history: v::count("job_history", self.job_history, 0, MAX_JOBS)?,
            result_ttl: v::seconds("result_ttl", self.result_ttl, Zero::Allowed)?,
            result_resend_window: v::seconds_at_most(
                "result_resend_window",
                self.result_resend_window,
                Zero::Allowed,
                3600.0,
            )?,
            results_max_bytes: v::count("results_max_bytes", self.results_max_bytes, 1 << 16, 1 << 40)?,
            admin_users: self.admin_users.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
            allowed_schedulers: self
                .allowed_schedulers
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            retry_delay: v::seconds_at_most("retry_delay", self.retry_delay, Zero::Allowed, MAX_RETRY_DELAY)?,
            retry_multiplier: v::multiplier("retry_multiplier", self.retry_multiplier, MAX_RETRY_MULTIPLIER)?,
            dead_letter_max: v::count("dead_letter_max", self.dead_letter_max, 0, MAX_JOBS)?,
            reject_unknown_queues: self.reject_unknown_queues,
            stop_grace: v::seconds("stop_grace", self.stop_grace, Zero::Allowed)?,
            buffer_memory: v::count("buffer_memory", self.buffer_memory, 1 << 20, 1 << 50)?,
            journal_max_bytes: v::count("journal_max_bytes", self.journal_max_bytes, 16 << 20, 1 << 56)?,
            scheduler_external: match self.scheduler.as_str() {
                "internal" => false,
                "external" => true,
                other => {
                    return Err(SettingsError::invalid("scheduler", other, "must be \"internal\" or \"external\""));
                }
            },
            misfire: emq_protocol::Misfire::parse(&self.misfire).ok_or_else(|| {
                SettingsError::invalid("misfire", &self.misfire, "must be \"skip\", \"once\" or \"all\"")
            })?,
            max_schedules: v::count("max_schedules", self.max_schedules, 0, MAX_JOBS)?,
            delayed_max_bytes: v::count("delayed_max_bytes", self.delayed_max_bytes, 0, 1 << 50)?,
            suspect_timeout: v::seconds("suspect_timeout", self.suspect_timeout, Zero::Allowed)?,
            limits: self.limits.to_specs()?,
            refuse_when_full: match self.on_full.as_str() {
                "wait" => false,
                "refuse" => true,
                other => {
                    return Err(SettingsError::invalid("on_full", other, "must be \"wait\" or \"refuse\""));
                }
            },
        })
    }

    /// `events_retention`, parsed.
    pub fn retention(&self) -> Result<crate::events::Retention, SettingsError> {
        self.events_retention
            .parse()
            .map_err(|why: String| SettingsError::invalid("events_retention", &self.events_retention, &why))
    }

    /// Where and how to keep the journal. `repair` comes from the
    /// `--journal-repair` flag (never a setting: it is a one-off decision).
    pub fn journal_options(&self, repair: bool) -> Result<emq_journal::JournalOptions, SettingsError> {
        let sync = self
            .journal_sync
            .parse::<emq_journal::SyncPolicy>()
            .map_err(|why| SettingsError::invalid("journal_sync", &self.journal_sync, why))?;
        let segment_bytes = v::count("journal_segment_bytes", self.journal_segment_bytes, 1 << 20, 1 << 40)?;
        let dir = match self.data_dir.trim() {
            "" => emq_settings::default_data_dir().ok_or_else(|| {
                SettingsError::invalid("data_dir", "", "no XDG_STATE_HOME or HOME to put it under: set data_dir")
            })?,
            d => std::path::PathBuf::from(d),
        };
        Ok(emq_journal::JournalOptions { dir, sync, segment_bytes, repair })
    }

    /// The three ZeroMQ endpoints and the HTTP address.
    fn check_addresses(&self) -> Result<(), SettingsError> {
        for (k, a) in [
            ("frontend_addr", &self.frontend_addr),
            ("backend_addr", &self.backend_addr),
            ("administrative_addr", &self.administrative_addr),
        ] {
            v::zmq_endpoint(k, a)?;
        }
        v::http_addr("http_addr", &self.http_addr)?;
        self.lease()?;
        Ok(())
    }

    /// The shared journal's URL and lease, when `journal_url` is set.
    pub fn lease(&self) -> Result<Option<(String, std::time::Duration)>, SettingsError> {
        let url = self.journal_url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(SettingsError::invalid("journal_url", emq_pgjournal::redact(url), "not a postgresql:// URL"));
        }
        let Ok(parsed) = url.parse::<emq_pgjournal::UrlConfig>() else {
            return Err(SettingsError::invalid(
                "journal_url",
                emq_pgjournal::redact(url),
                "not a valid PostgreSQL URL",
            ));
        };
        if matches!(parsed.get_ssl_mode(), emq_pgjournal::SslMode::Require) {
            // Said now rather than as a connection that never succeeds.
            return Err(SettingsError::invalid(
                "journal_url",
                emq_pgjournal::redact(url),
                "sslmode=require: this router does not speak TLS to PostgreSQL \
                 (use a trusted network or a TLS proxy, and sslmode=disable or prefer)",
            ));
        }
        if !(self.lease_ttl.is_finite() && (1.0..=300.0).contains(&self.lease_ttl)) {
            return Err(SettingsError::invalid("lease_ttl", self.lease_ttl.to_string(), "seconds between 1 and 300"));
        }
        Ok(Some((url.to_owned(), std::time::Duration::from_secs_f64(self.lease_ttl))))
    }

    /// Rejects values that would make the router misbehave (all of
    /// [`Self::to_config`]'s checks).
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.to_config().map(|_| ())
    }

    /// Keys whose values differ from `old`'s, for the SIGHUP log.
    pub fn changed_keys(&self, old: &RouterSettings) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($($k:ident),*) => {$(if self.$k != old.$k { out.push(stringify!($k)); })*};
        }
        cmp!(
            frontend_addr,
            backend_addr,
            administrative_addr,
            heartbeat_interval,
            heartbeat_timeout,
            hwm,
            socket_hwm,
            job_history,
            result_ttl,
            result_resend_window,
            allowed_schedulers,
            max_message_bytes,
            results_max_bytes,
            curve_secret_key,
            curve_frontend_keys,
            curve_backend_keys,
            curve_admin_keys,
            admin_users,
            retry_delay,
            retry_multiplier,
            dead_letter_max,
            reject_unknown_queues,
            http_addr,
            http_max_connections,
            idempotency_ttl,
            events_retention,
            log_level,
            log_format,
            data_dir,
            journal_sync,
            journal_segment_bytes,
            journal_url,
            lease_ttl,
            stop_grace,
            buffer_memory,
            journal_max_bytes,
            on_full
        );
        out
    }

    /// Keys that only take effect on a restart: the bound sockets and the
    /// HTTP listener (rebinding would drop every peer's connection), and
    /// the sockets' high-water mark (fixed when they are bound).
    pub const RESTART_KEYS: &'static [&'static str] = &[
        "frontend_addr",
        "backend_addr",
        "administrative_addr",
        "http_addr",
        "http_max_connections",
        "idempotency_ttl",
        "events_retention",
        "socket_hwm",
        "log_level",
        "log_format",
        "data_dir",
        "journal_sync",
        "journal_segment_bytes",
        "journal_url",
        "lease_ttl",
        "max_message_bytes",
        "curve_secret_key",
        "curve_frontend_keys",
        "curve_backend_keys",
        "curve_admin_keys",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `to_config` of the defaults with one change must fail naming `key`.
    fn refused(key: &str, change: impl FnOnce(&mut RouterSettings)) -> String {
        let mut s = RouterSettings::default();
        change(&mut s);
        SettingsError::expect_refusal(s.to_config(), key)
    }

    #[test]
    fn journal_url_and_lease_ttl_are_checked() {
        refused("journal_url", |s| s.journal_url = "mysql://emq@db/emq".into());
        refused("journal_url", |s| s.journal_url = "postgresql://emq@db/emq?sslmode=nonsense".into());
        refused("journal_url", |s| s.journal_url = "postgresql://emq@db/emq?sslmode=require".into());
        refused("lease_ttl", |s| {
            s.journal_url = "postgresql://emq@db/emq".into();
            s.lease_ttl = 0.5;
        });
        refused("lease_ttl", |s| {
            s.journal_url = "postgresql://emq@db/emq".into();
            s.lease_ttl = f64::NAN;
        });
        let s = RouterSettings {
            journal_url: "postgresql://emq@db1,db2/emq?target_session_attrs=read-write".into(),
            ..Default::default()
        };
        let (url, ttl) = s.lease().unwrap().expect("a shared journal");
        assert!(url.contains("db1,db2"));
        assert_eq!(ttl, Duration::from_secs(4));
        assert!(RouterSettings::default().lease().unwrap().is_none(), "the file journal by default");
    }

    #[test]
    fn limits_come_from_a_table_a_file_or_one_line_and_bad_ones_say_why() {
        let dir = std::env::temp_dir().join(format!("emq-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(
            &file,
            "log_level = \"info\"\n[limits]\nApi = { concurrency = 3, rate = \"50/10s\" }\nreports = { concurrency = 1 }\n",
        )
        .unwrap();
        let s: RouterSettings = emq_settings::load_from(Some(&file), &file).unwrap();
        let c = s.to_config().unwrap();
        let names: Vec<&str> = c.limits.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Api", "reports"], "names keep their case");
        assert_eq!(c.limits[0].1.concurrency, Some(3));
        assert_eq!(c.limits[0].1.rate, Some((50, Duration::from_secs(10))));
        let text = LimitsSetting::Text("api=concurrency:3 rate:50/10s; reports=concurrency:1".into());
        let specs = text.to_specs().unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].1.concurrency, Some(1));
        for bad in ["api", "api=threads:3", "api=concurrency:x", "a/b=concurrency:1", "api=", "api=concurrency:0"] {
            let e = LimitsSetting::Text(bad.into()).to_specs().unwrap_err();
            assert!(e.to_string().contains("limits"), "{bad}: {e}");
        }
        let e = LimitsSetting::Text("api=rate:5/1d".into()).to_specs().unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn defaults_are_valid() {
        let c = RouterSettings::default().to_config().unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(5));
        assert_eq!(c.retry_delay, Duration::from_secs(1));
        assert_eq!((c.hwm, c.job_history, c.dead_letter_max), (0, 100_000, 10_000));
        assert!(!c.refuse_when_full, "full means back-pressure by default");
        assert_eq!(c.retry_multiplier, 2.0);
    }

    #[test]
    fn every_duration_refuses_inf_nan_negative_huge() {
        for bad in [f64::INFINITY, f64::NAN, -1.0, 1e300, f64::NEG_INFINITY] {
            refused("heartbeat_interval", |s| s.heartbeat_interval = bad);
            refused("heartbeat_timeout", |s| s.heartbeat_timeout = bad);
            refused("retry_delay", |s| s.retry_delay = bad);
            refused("retry_multiplier", |s| s.retry_multiplier = bad);
        }
        refused("heartbeat_interval", |s| s.heartbeat_interval = 0.0);
        refused("heartbeat_timeout", |s| s.heartbeat_timeout = 0.0);
        refused("retry_multiplier", |s| s.retry_multiplier = 0.5);
        refused("retry_delay", |s| s.retry_delay = 86_401.0);
        let zero_delay = RouterSettings { retry_delay: 0.0, ..Default::default() };
        assert_eq!(zero_delay.to_config().unwrap().retry_delay, Duration::ZERO);
    }

    #[test]
    fn counts_and_addresses() {
        refused("buffer_memory", |s| s.buffer_memory = 0);
        refused("journal_max_bytes", |s| s.journal_max_bytes = 1);
        refused("on_full", |s| s.on_full = "sometimes".into());
        refused("scheduler", |s| s.scheduler = "both".into());
        refused("misfire", |s| s.misfire = "never".into());
        refused("max_schedules", |s| s.max_schedules = usize::MAX);
        refused("journal_sync", |s| s.journal_sync = "always".into());
        refused("hwm", |s| s.hwm = usize::MAX);
        refused("job_history", |s| s.job_history = usize::MAX);
        refused("dead_letter_max", |s| s.dead_letter_max = usize::MAX);
        refused("socket_hwm", |s| s.socket_hwm = 0);
        refused("socket_hwm", |s| s.socket_hwm = -1);
        let e = refused("frontend_addr", |s| s.frontend_addr = "tcp://127.0.0.1:99999".into());
        assert!(e.contains("99999"), "{e}");
        refused("backend_addr", |s| s.backend_addr = "tcp://127.0.0.1".into());
        refused("administrative_addr", |s| s.administrative_addr = "nonsense".into());
        refused("http_addr", |s| s.http_addr = "127.0.0.1:65536".into());
        refused("log_level", |s| s.log_level = "info=bogus[".into());
        let off = RouterSettings { http_addr: String::new(), ..Default::default() };
        off.to_config().unwrap();
    }

    #[test]
    fn changed_keys_name_what_differs() {
        let a = RouterSettings::default();
        let b = RouterSettings { hwm: 3, frontend_addr: "tcp://127.0.0.1:1".into(), ..Default::default() };
        assert_eq!(b.changed_keys(&a), vec!["frontend_addr", "hwm"]);
        assert!(a.changed_keys(&a).is_empty());
    }
}
