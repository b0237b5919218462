//! Command jobs: a REQUEST whose payload is `["command", {"argv": [...],
//! "env": {...}, "cwd": "/dir", "stdin": "text"}]` runs a program (no
//! shell) instead of a Python callable.
//!
//! Only our job managers run them: they say [`FEATURE_COMMANDS`] at INFORM
//! (when their `allowed_commands` is not empty) and a router hands a command
//! job to no other job manager — an EventMQ job manager never receives one,
//! because its action is not `"run"` and [`payload_is_command`] tells the
//! router so from the payload's first bytes, headers or not.
//!
//! This module owns the wire form, its validation and the result's shape
//! ([`CommandResult`]); it does not run anything (that is `emq-pool`) and
//! does not decide what may run (the job manager's `allowed_commands`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Feature token in a job manager's INFORM: it runs command jobs.
pub const FEATURE_COMMANDS: &str = "commands";

/// Most arguments of one command (the program included).
pub const MAX_ARGV: usize = 4096;

/// Most environment variables a command job may set.
pub const MAX_ENV: usize = 1024;

/// What a command job runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPayload {
    /// The program and its arguments, run as they are (no shell, no
    /// globbing): `["/bin/echo", "hi"]`. A bare program name is looked up
    /// on the job manager's safe `PATH`, never on one the job sets.
    pub argv: Vec<String>,
    /// Variables set over the job manager's small safe base (`PATH`); no
    /// other variable of the job manager reaches the command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Absolute directory to run in (else the worker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Text written to the command's standard input (else it reads an
    /// empty stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

impl CommandPayload {
    /// A command running `argv` with nothing else set.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> CommandPayload {
        CommandPayload { argv: argv.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// The payload frame: `["command", {...}]`.
    pub fn to_wire(&self) -> String {
        serde_json::to_string(&("command", self)).expect("command serialises")
    }

    /// Parses a REQUEST payload frame that [`payload_is_command`] said is a
    /// command, and checks it ([`CommandPayload::validate`]).
    pub fn parse(raw: &str) -> Result<CommandPayload, String> {
        let (action, p): (String, CommandPayload) =
            serde_json::from_str(raw).map_err(|e| format!("bad command payload: {e}"))?;
        if action != "command" {
            return Err(format!("not a command payload (action {action:?})"));
        }
        p.validate()?;
        Ok(p)
    }

    /// What makes a command unrunnable, said before anything runs: an
    /// empty `argv`, a NUL byte anywhere `execve` would cut it, a variable
    /// name with `=`, a relative `cwd`, more than [`MAX_ARGV`] arguments
    /// or [`MAX_ENV`] variables.
    pub fn validate(&self) -> Result<(), String> {
        let Some(program) = self.argv.first() else {
            return Err("argv must name a program: it is empty".into());
        };
        if program.is_empty() {
            return Err("argv[0] (the program) is empty".into());
        }
        if self.argv.len() > MAX_ARGV {
            return Err(format!("argv has {} items (at most {MAX_ARGV})", self.argv.len()));
        }
        if let Some(i) = self.argv.iter().position(|a| a.contains('\0')) {
            return Err(format!("argv[{i}] contains a NUL byte"));
        }
        if self.env.len() > MAX_ENV {
            return Err(format!("env has {} variables (at most {MAX_ENV})", self.env.len()));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(format!("env name {k:?} is not a variable name (empty, or has = or NUL)"));
            }
            if v.contains('\0') {
                return Err(format!("env {k} contains a NUL byte"));
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(format!("cwd must be an absolute directory, not {cwd:?}"));
            }
        }
        Ok(())
    }

    /// The program as asked for (`argv[0]`).
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }
}

/// Whether a REQUEST payload is a command job (`["command", ...]`). Reads
/// the first bytes only in the usual spellings (the router asks this for
/// every job it places); anything unusual — an escaped action — is parsed.
pub fn payload_is_command(raw: &str) -> bool {
    let rest = raw.trim_start();
    let Some(rest) = rest.strip_prefix('[') else { return false };
    let rest = rest.trim_start();
    if rest.starts_with("\"command\"") {
        return true;
    }
    if rest.starts_with("\"run\"") || !rest.starts_with('"') {
        return false;
    }
    // `"\u0063ommand"` and the like: the long way.
    #[derive(Deserialize)]
    struct Action<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>, serde::de::IgnoredAny);
    serde_json::from_str::<Action<'_>>(raw).is_ok_and(|Action(a, _)| a == "command")
}

/// What a payload runs, as one name for people and tables: `pkg.mod.func`
/// (or `pkg.mod:Class.method`) for a callable, `command:/bin/echo` for a
/// command job (the name job managers count it under); `None` when
/// unreadable.
pub fn payload_name(raw: &str) -> Option<String> {
    if payload_is_command(raw) {
        return CommandPayload::parse(raw).ok().map(|c| format!("command:{}", c.program()));
    }
    crate::RunPayload::parse(raw).ok().map(|p| format!("{}.{}", p.path, p.callable))
}

/// A command job's result, the job's `value` (also inside the error of a
/// failed one): its exit, and the tails of its output as text.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandResult {
    /// Its exit status; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The last `command_output_bytes` of its standard output (invalid
    /// UTF-8 replaced).
    pub stdout: String,
    /// The same of its standard error.
    pub stderr: String,
    /// Bytes of standard output left out before `stdout` (0: all of it).
    pub stdout_cut: u64,
    /// Bytes of standard error left out before `stderr`.
    pub stderr_cut: u64,
}

impl CommandResult {
    /// It exited with 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// How it ended, in words: `exit code 1`, `killed by signal 9`.
    pub fn describe_end(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "ended without a status".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_detection() {
        let mut c = CommandPayload::new(["/bin/echo", "hi"]);
        c.env.insert("A".into(), "1".into());
        c.cwd = Some("/tmp".into());
        c.stdin = Some("in".into());
        let wire = c.to_wire();
        assert!(wire.starts_with(r#"["command",{"argv":["/bin/echo","hi"]"#), "{wire}");
        assert!(payload_is_command(&wire));
        assert_eq!(CommandPayload::parse(&wire).unwrap(), c);
        let minimal = CommandPayload::new(["true"]).to_wire();
        assert_eq!(minimal, r#"["command",{"argv":["true"]}]"#);
        assert!(payload_is_command(" [ \"command\" , {\"argv\": [\"x\"]}]"));
        assert!(payload_is_command(r#"["\u0063ommand", {"argv": ["x"]}]"#));
        assert_eq!(payload_name(&c.to_wire()).as_deref(), Some("command:/bin/echo"));
        assert_eq!(payload_name(r#"["run", {"path": "m", "callable": "f"}]"#).as_deref(), Some("m.f"));
        assert_eq!(payload_name("[]"), None);
        for not in [r#"["run", {"path": "m", "callable": "f"}]"#, "", "[", "{}", r#"["commander", {}]"#, "[1, 2]"] {
            assert!(!payload_is_command(not), "{not}");
        }
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let bad = |c: CommandPayload, what: &str| {
            let e = c.validate().unwrap_err();
            assert!(e.contains(what), "{e} should mention {what}");
        };
        bad(CommandPayload::new(Vec::<String>::new()), "empty");
        bad(CommandPayload::new([""]), "argv[0]");
        bad(CommandPayload::new(["/bin/echo", "a\0b"]), "argv[1]");
        bad(CommandPayload { env: [("A=B".into(), "1".into())].into(), ..CommandPayload::new(["x"]) }, "A=B");
        bad(CommandPayload { env: [("A".into(), "\0".into())].into(), ..CommandPayload::new(["x"]) }, "NUL");
        bad(CommandPayload { cwd: Some("tmp".into()), ..CommandPayload::new(["x"]) }, "cwd");
        bad(CommandPayload::new(vec!["x"; MAX_ARGV + 1]), "argv has");
        assert!(CommandPayload::parse(r#"["command", {"argv": ["x"], "shell": true}]"#).unwrap_err().contains("shell"));
        assert!(CommandPayload::parse(r#"["command", {"argv": []}]"#).is_err());
        assert!(CommandPayload::parse(r#"["run", {"argv": ["x"]}]"#).is_err());
    }

    #[test]
    fn result_shape() {
        let r = CommandResult { exit_code: Some(0), stdout: "hi\n".into(), ..Default::default() };
        assert!(r.succeeded());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"exit_code": 0, "stdout": "hi\n", "stderr": "", "stdout_cut": 0, "stderr_cut": 0})
        );
        let killed = CommandResult { exit_code: None, signal: Some(9), ..Default::default() };
        assert_eq!(killed.describe_end(), "killed by signal 9");
        assert!(!killed.succeeded());
    }
}
