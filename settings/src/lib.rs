//! # emq-settings — where every binary's settings come from
//!
//! Owns: the precedence of settings sources, lowest first —
//! 1. built-in defaults (each binary's `Default` impl, mirrored with comments
//!    in the repo's `settings.toml`),
//! 2. a TOML file: `--config PATH` (must exist), else `./settings.toml` when
//!    present,
//! 3. `EVENTMQ_<KEY>` environment variables (EventMQ's names),
//! 4. `EMQ_<KEY>` environment variables,
//! 5. command-line flags (applied by each binary after [`load`]).
//!
//! Keys are flat (`frontend_addr`, `heartbeat_interval`, ...); each binary
//! reads the keys it knows and ignores the rest, so one file serves all.
//! Also owns logging setup ([`init_logging`]), the typed [`SettingsError`],
//! and the validators every binary runs its values through ([`validate`]),
//! so that no setting value can panic a binary.
//!
//! Does not own: the settings structs themselves (each binary's crate).

use serde::de::DeserializeOwned;
use std::path::Path;
use thiserror::Error;

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "python_path",
    "allowed_paths",
    "worker_addr_failover",
    "allowed_schedulers",
    "admin_users",
    "labels",
    "allowed_commands",
];

/// A settings file or value that cannot be used. Binaries print it as one
/// line and exit with status 2; a server reloading on SIGHUP logs it and
/// keeps its old settings.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// `--config PATH` names a file that is not there (a typo must not
    /// silently fall back to the defaults).
    #[error("settings file {0} does not exist")]
    MissingFile(String),
    /// The file or an environment variable cannot be read or parsed into
    /// the settings' types (bad TOML, `EMQ_HWM=lots`, ...).
    #[error("invalid settings: {0}")]
    Unreadable(#[from] config::ConfigError),
    /// One value parsed but is out of range or malformed. Carries the key,
    /// the value as given and why it is refused, so the one line an
    /// operator sees says what to fix.
    #[error("invalid setting {key} = {value}: {why}")]
    Invalid { key: String, value: String, why: String },
    /// A key no emq program knows (a typo must not be ignored silently):
    /// where it was, and the closest known key.
    #[error("unknown setting {key} in {place}{}", closest.as_ref().map(|c| format!(" (did you mean {c}?)")).unwrap_or_default())]
    UnknownKey { key: String, place: String, closest: Option<String> },
}

/// Every key any emq program reads (one settings file serves them all):
/// anything else in the file or in an `EMQ_*` variable is an error.
/// `tests/settings_file.rs` keeps this equal to the keys of `settings.toml`.
pub const KNOWN_KEYS: &[&str] = &[
    "frontend_addr",
    "backend_addr",
    "administrative_addr",
    "hwm",
    "socket_hwm",
    "job_history",
    "results_max_bytes",
    "curve_secret_key",
    "curve_frontend_keys",
    "curve_backend_keys",
    "curve_admin_keys",
    "admin_users",
    "max_message_bytes",
    "allowed_schedulers",
    "result_ttl",
    "result_resend_window",
    "retry_delay",
    "retry_multiplier",
    "dead_letter_max",
    "reject_unknown_queues",
    "http_addr",
    "http_max_connections",
    "idempotency_ttl",
    "events_retention",
    "data_dir",
    "journal_sync",
    "journal_segment_bytes",
    "journal_url",
    "lease_ttl",
    "stop_grace",
    "buffer_memory",
    "journal_max_bytes",
    "on_full",
    "scheduler",
    "misfire",
    "max_schedules",
    "delayed_max_bytes",
    "suspect_timeout",
    "limits",
    "worker_start",
    "heartbeat_interval",
    "heartbeat_timeout",
    "heartbeat_liveness",
    "log_level",
    "log_format",
    "worker_addr",
    "worker_addr_failover",
    "queues",
    "concurrent_jobs",
    "max_job_count",
    "max_memory_per_worker",
    "global_timeout",
    "max_runtime",
    "kill_escalation",
    "worker_pipeline",
    "steal_after",
    "reply_linger",
    "prefetch",
    "prefetch_below",
    "prefetch_span",
    "prefetch_bytes",
    "spare_workers",
    "kill_grace_period",
    "reconnect_timeout",
    "subprocess_setup_func",
    "job_entry_func",
    "job_exit_func",
    "python_path",
    "python_venv",
    "allowed_paths",
    "allowed_commands",
    "command_output_bytes",
    "curve_server_key",
    "curve_key",
    "worker_user",
    "name",
    "labels",
];

/// `EMQ_*` variables that are not settings: the worker's own
/// configuration, the build's, the tests'.
/// `EMQ_TOKEN`: the HTTP API bearer token the Python client's `events()` reads.
const INTERNAL_ENV: &[&str] = &["EMQ_WORKER_CONFIG", "EMQ_PYTHON_LIBDIR", "EMQ_SKIP_INTEROP", "EMQ_TOKEN"];

/// The known key nearest to `key` (edit distance at most 3).
fn closest_key(key: &str) -> Option<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    KNOWN_KEYS.iter().map(|k| (distance(key, k), *k)).filter(|(d, _)| *d <= 3).min().map(|(_, k)| k.to_owned())
}

/// Refuses keys nobody knows: the file's top-level keys and `EMQ_*`
/// variables. (`EVENTMQ_*` are left alone: EventMQ's own programs read
/// more of them than emq does.)
fn check_known_keys(file: Option<&Path>) -> Result<(), SettingsError> {
    use config::{Config, File, FileFormat};
    if let Some(p) = file {
        let map = Config::builder()
            .add_source(File::from(p).format(FileFormat::Toml))
            .build()?
            .try_deserialize::<std::collections::HashMap<String, config::Value>>()?;
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        if let Some(k) = keys.into_iter().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(SettingsError::UnknownKey {
                key: k.clone(),
                place: format!("settings file {}", p.display()),
                closest: closest_key(k),
            });
        }
    }
    let mut vars: Vec<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
    vars.sort();
    for var in vars {
        let Some(rest) = var.strip_prefix("EMQ_") else { continue };
        let key = rest.to_ascii_lowercase();
        if INTERNAL_ENV.contains(&var.as_str()) || KNOWN_KEYS.contains(&key.as_str()) {
            continue;
        }
        return Err(SettingsError::UnknownKey {
            key,
            place: format!("environment variable {var}"),
            closest: closest_key(&rest.to_ascii_lowercase()),
        });
    }
    Ok(())
}

impl SettingsError {
    /// An [`SettingsError::Invalid`] for `key`.
    pub fn invalid(key: &str, value: impl std::fmt::Display, why: impl Into<String>) -> SettingsError {
        SettingsError::Invalid { key: key.to_owned(), value: value.to_string(), why: why.into() }
    }

    /// The key at fault, when one value is ([`SettingsError::Invalid`]).
    pub fn key(&self) -> Option<&str> {
        match self {
            SettingsError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Test support: `result` must be a refusal of `key`, worded as
    /// operators see it. Returns the message.
    pub fn expect_refusal<T>(result: Result<T, SettingsError>, key: &str) -> String {
        let Err(e) = result else { panic!("a bad {key} was accepted") };
        assert_eq!(e.key(), Some(key), "{e}");
        assert!(e.to_string().starts_with(&format!("invalid setting {key} = ")), "{e}");
        e.to_string()
    }
}

pub mod validate;

/// The router's default data directory (its journal, its admin token):
/// `$XDG_STATE_HOME/emq`, else `$HOME/.local/state/emq`.
pub fn default_data_dir() -> Option<std::path::PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    non_empty("XDG_STATE_HOME").map(|d| d.join("emq")).or_else(|| non_empty("HOME").map(|h| h.join(".local/state/emq")))
}

/// The file the router writes its admin token to, in its data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Loads settings of type `T` from the file and the environment.
pub fn load<T: DeserializeOwned>(config_path: Option<&Path>) -> Result<T, SettingsError> {
    load_from(config_path, Path::new("settings.toml"))
}

/// [`load`] with an explicit fallback file (for tests).
pub fn load_from<T: DeserializeOwned>(config_path: Option<&Path>, fallback: &Path) -> Result<T, SettingsError> {
    use config::{Config, Environment, File, FileFormat};
    let file = match config_path {
        Some(p) => Some(p),
        None if fallback.exists() => Some(fallback),
        None => None,
    };
    if config_path.is_none_or(|p| p.exists()) {
        check_known_keys(file)?;
    }
    let mut b = Config::builder();
    match config_path {
        Some(p) => {
            if !p.exists() {
                return Err(SettingsError::MissingFile(p.display().to_string()));
            }
            b = b.add_source(File::from(p).format(FileFormat::Toml).required(true));
        }
        None if fallback.exists() => {
            b = b.add_source(File::from(fallback).format(FileFormat::Toml).required(false));
        }
        None => {}
    }
    for prefix in ["EVENTMQ", "EMQ"] {
        let mut env = Environment::with_prefix(prefix).prefix_separator("_").try_parsing(true).list_separator(",");
        for k in LIST_KEYS {
            env = env.with_list_parse_key(k);
        }
        b = b.add_source(env);
    }
    Ok(b.build()?.try_deserialize()?)
}

/// `EVENTMQ_*` variables (EventMQ's names) of settings emq does not have
/// (e.g. `EVENTMQ_REDIS_HOST`), from `vars`, sorted: they are not refused
/// (EventMQ's own programs may share the environment) but must not be
/// silently ignored either.
pub fn unused_eventmq_vars(vars: impl Iterator<Item = String>) -> Vec<String> {
    let mut unused: Vec<String> = vars
        .filter(|v| v.strip_prefix("EVENTMQ_").is_some_and(|k| !KNOWN_KEYS.contains(&k.to_ascii_lowercase().as_str())))
        .collect();
    unused.sort();
    unused
}

/// Logs (one line) the `EVENTMQ_*` variables in the environment that emq
/// does not use; call after [`init_logging`].
pub fn warn_unused_eventmq_vars() {
    let unused = unused_eventmq_vars(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
    if !unused.is_empty() {
        tracing::warn!(variables = %unused.join(", "), "EventMQ settings that emq does not use: ignored");
    }
}

/// Whether log lines may carry colour escapes: only to a terminal, and
/// never with `NO_COLOR` set (https://no-color.org: any non-empty value).
pub fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Sets up `tracing` to stderr. `RUST_LOG` wins over `level` (the
/// `log_level` setting); `format` is the `log_format` setting: `text`
/// (colour only on a terminal, see [`log_colours`]) or `json` (one object
/// per line: `timestamp`, `level`, `target`, `message` and the fields —
/// msgid, queue, peer, pid, ...).
pub fn init_logging(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
    } else {
        fmt.with_target(false).with_ansi(log_colours()).try_init()
    };
}

/// Checks a `log_format` value.
pub fn check_log_format(key: &str, value: &str) -> Result<(), SettingsError> {
    match value {
        "text" | "json" => Ok(()),
        other => Err(SettingsError::invalid(key, other, "must be \"text\" or \"json\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct S {
        frontend_addr: String,
        hwm: u64,
        python_path: Vec<String>,
    }

    #[test]
    fn eventmq_variables_emq_does_not_use_are_named() {
        let vars = ["EVENTMQ_REDIS_HOST", "EVENTMQ_HWM", "EMQ_HWM", "PATH", "EVENTMQ_FRONTEND_ADDR", "EVENTMQ_A"];
        assert_eq!(
            unused_eventmq_vars(vars.iter().map(|s| s.to_string())),
            vec!["EVENTMQ_A".to_string(), "EVENTMQ_REDIS_HOST".to_string()]
        );
    }

    #[test]
    fn file_then_env_precedence() {
        let dir = std::env::temp_dir().join(format!("emq-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(&f, "frontend_addr = \"tcp://a:1\"\nhwm = 5\nhearbeat_interval = 1\n").unwrap();
        // A typo is refused, naming the closest key.
        let e = load_from::<S>(Some(&f), Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("hearbeat_interval") && e.contains("did you mean heartbeat_interval"), "{e}");
        std::fs::write(&f, "frontend_addr = \"tcp://a:1\"\nhwm = 5\n").unwrap();
        let s: S = load_from(Some(&f), Path::new("/nonexistent")).unwrap();
        assert_eq!(s.frontend_addr, "tcp://a:1");
        assert_eq!(s.hwm, 5);
        // Environment is process-wide; these keys are unique to this test.
        std::env::set_var("EVENTMQ_HWM", "7");
        std::env::set_var("EMQ_PYTHON_PATH", "/a,/b");
        let s: S = load_from(Some(&f), Path::new("/nonexistent")).unwrap();
        assert_eq!(s.hwm, 7);
        assert_eq!(s.python_path, vec!["/a", "/b"]);
        std::env::set_var("EMQ_HWM", "9");
        let s: S = load_from(Some(&f), Path::new("/nonexistent")).unwrap();
        assert_eq!(s.hwm, 9, "EMQ_ overrides EVENTMQ_");
        std::env::set_var("EMQ_HWM", "lots");
        assert!(load_from::<S>(Some(&f), Path::new("/nonexistent")).is_err());
        for k in ["EVENTMQ_HWM", "EMQ_PYTHON_PATH", "EMQ_HWM"] {
            std::env::remove_var(k);
        }
        assert!(matches!(
            load_from::<S>(Some(Path::new("/nonexistent/x.toml")), Path::new("/nonexistent")),
            Err(SettingsError::MissingFile(_))
        ));
        std::env::set_var("EMQ_HWM", "lots");
        let e = load_from::<S>(Some(&f), Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, SettingsError::Unreadable(_)), "{e}");
        std::env::remove_var("EMQ_HWM");
        std::fs::write(&f, "hwm = [").unwrap();
        assert!(load_from::<S>(Some(&f), Path::new("/nonexistent")).is_err());
    }
}
