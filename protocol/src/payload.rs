//! The `run` payload of a REQUEST and the JSON of a job's reply.
//!
//! Payload: `["run", {"path": "pkg.mod", "callable": "f", "args": [...],
//! "kwargs": {...}, "class_args": [...], "class_kwargs": {...}}]`; `path` may
//! be `pkg.mod:Class`, then `callable` names a method of an instance.
//!
//! Reply: `{"value": ...}` as EventMQ writes it, plus an `error` object
//! (`type`, `message`, `traceback`) whenever the job failed, timed out or its
//! worker died — old consumers keep reading `value`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPayload {
    /// Dotted module path, optionally `:ClassName`.
    pub path: String,
    /// Function name, or method name when `path` names a class.
    pub callable: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kwargs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_args: Vec<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub class_kwargs: Map<String, Value>,
}

/// Why a payload frame is not a runnable job.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload must be a JSON array [\"run\", {{...}}]")]
    NotAnArray,
    #[error("unknown payload action {0:?} (only \"run\" is supported)")]
    UnknownAction(String),
    #[error("bad run arguments: {0}")]
    BadRunArguments(String),
}

impl RunPayload {
    /// A payload for `path` + `callable` with positional args.
    pub fn new(path: impl Into<String>, callable: impl Into<String>, args: Vec<Value>) -> Self {
        RunPayload {
            path: path.into(),
            callable: callable.into(),
            args,
            kwargs: Map::new(),
            class_args: Vec::new(),
            class_kwargs: Map::new(),
        }
    }

    /// Parses a REQUEST payload frame.
    pub fn parse(raw: &str) -> Result<RunPayload, PayloadError> {
        // The usual case straight into the struct (no `Value` tree: this
        // runs twice per job, in the job manager and in the worker); any
        // failure goes the long way, which says precisely what is wrong.
        if let Ok((action, p)) = serde_json::from_str::<(std::borrow::Cow<'_, str>, RunPayload)>(raw) {
            if action == "run" && !p.path.is_empty() && !p.callable.is_empty() {
                return Ok(p);
            }
        }
        let v: Value = serde_json::from_str(raw).map_err(|e| PayloadError::NotJson(e.to_string()))?;
        let Value::Array(mut items) = v else { return Err(PayloadError::NotAnArray) };
        if items.len() != 2 {
            return Err(PayloadError::NotAnArray);
        }
        let body = items.pop().unwrap_or(Value::Null);
        match items.pop() {
            Some(Value::String(action)) if action == "run" => {}
            Some(Value::String(action)) => return Err(PayloadError::UnknownAction(action)),
            _ => return Err(PayloadError::NotAnArray),
        }
        let p: RunPayload = serde_json::from_value(body).map_err(|e| PayloadError::BadRunArguments(e.to_string()))?;
        if p.path.is_empty() || p.callable.is_empty() {
            return Err(PayloadError::BadRunArguments("path and callable must be non-empty".into()));
        }
        Ok(p)
    }

    /// The payload frame: `["run", {...}]`.
    pub fn to_wire(&self) -> String {
        serde_json::to_string(&("run", self)).expect("payload serialises")
    }

    /// `(module, class)` from `path`: `pkg.mod:Class` → `("pkg.mod", Some("Class"))`.
    pub fn module_and_class(&self) -> (&str, Option<&str>) {
        match self.path.split_once(':') {
            Some((m, c)) => (m, Some(c)),
            None => (&self.path, None),
        }
    }
}

/// The module a payload names (`pkg.mod`, also of `pkg.mod:Class`), read
/// without building its arguments (serde skips them): what a router needs
/// to hand a job only to a job manager that allows it. `None` for a payload
/// that is not `["run", {"path": ...}]`.
pub fn payload_module(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct PathOnly<'a> {
        #[serde(borrow)]
        path: std::borrow::Cow<'a, str>,
    }
    let (action, p) = serde_json::from_str::<(std::borrow::Cow<'_, str>, PathOnly<'_>)>(raw).ok()?;
    if action != "run" || p.path.is_empty() {
        return None;
    }
    Some(match p.path {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.split_once(':').map_or(s, |(m, _)| m)),
        std::borrow::Cow::Owned(s) => {
            std::borrow::Cow::Owned(s.split_once(':').map_or(s.as_str(), |(m, _)| m).to_owned())
        }
    })
}

/// What kind of failure ended a job: one of ours, or the type name of the
/// Python exception the job raised. On the wire it is the `error.type`
/// string, unchanged from what earlier versions (and EventMQ-facing tools)
/// read, so the enum only changes how Rust code compares kinds: never as
/// bare strings scattered over crates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum JobErrorKind {
    /// Ran past its timeout; its worker was killed (`"timeout"`).
    Timeout,
    /// Stopped by a job manager shutdown past its grace period (`"killed"`).
    Killed,
    /// Its worker process died under it (`"worker died"`).
    WorkerDied,
    /// Its job manager vanished (silence, unreachable, restart) before it
    /// reported the job, and the job could not be run again (`"job manager lost"`).
    JobManagerLost,
    /// It was running when the router stopped or crashed, and no job
    /// manager reported it after the restart (`"router restarted"`).
    RouterRestarted,
    /// Not accepted: queue full, unknown queue, callable not allowed,
    /// shutting down, malformed (`"refused"`).
    Refused,
    /// Cancelled by an operator (or its owner) before it finished
    /// (`"cancelled"`): never retried, never a dead letter.
    Cancelled,
    /// The REQUEST payload is not a runnable `["run", {...}]` (`"BadPayload"`).
    BadPayload,
    /// A reply a client could not read (`"BadReply"`).
    BadReply,
    /// A command job's program exited non-zero or was killed by a signal
    /// (`"command failed"`); the error's message says how, its traceback
    /// is the tail of the command's standard error.
    CommandFailed,
    /// Anything else: the Python exception's type name (`ValueError`,
    /// `ImportError`, ...) or a kind a newer peer sent.
    Exception(String),
}

impl JobErrorKind {
    /// The `error.type` string on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            JobErrorKind::Timeout => "timeout",
            JobErrorKind::Killed => "killed",
            JobErrorKind::WorkerDied => "worker died",
            JobErrorKind::JobManagerLost => "job manager lost",
            JobErrorKind::RouterRestarted => "router restarted",
            JobErrorKind::Refused => "refused",
            JobErrorKind::Cancelled => "cancelled",
            JobErrorKind::BadPayload => "BadPayload",
            JobErrorKind::BadReply => "BadReply",
            JobErrorKind::CommandFailed => "command failed",
            JobErrorKind::Exception(name) => name,
        }
    }

    /// The job did not fail by itself: the machinery around it did (its
    /// worker or job manager went away, or it was stopped).
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            JobErrorKind::WorkerDied
                | JobErrorKind::JobManagerLost
                | JobErrorKind::RouterRestarted
                | JobErrorKind::Killed
        )
    }
}

impl From<&str> for JobErrorKind {
    fn from(s: &str) -> Self {
        match s {
            "timeout" => JobErrorKind::Timeout,
            "killed" => JobErrorKind::Killed,
            "worker died" => JobErrorKind::WorkerDied,
            "job manager lost" => JobErrorKind::JobManagerLost,
            "router restarted" => JobErrorKind::RouterRestarted,
            "refused" => JobErrorKind::Refused,
            "cancelled" => JobErrorKind::Cancelled,
            "BadPayload" => JobErrorKind::BadPayload,
            "BadReply" => JobErrorKind::BadReply,
            "command failed" => JobErrorKind::CommandFailed,
            other => JobErrorKind::Exception(other.to_owned()),
        }
    }
}

impl From<String> for JobErrorKind {
    fn from(s: String) -> Self {
        match JobErrorKind::from(s.as_str()) {
            JobErrorKind::Exception(_) => JobErrorKind::Exception(s),
            known => known,
        }
    }
}

impl From<JobErrorKind> for String {
    fn from(k: JobErrorKind) -> String {
        match k {
            JobErrorKind::Exception(name) => name,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for JobErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed job's error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// Exception type name (`ValueError`), or one of ours: `timeout`,
    /// `worker died`, `refused`, ...
    #[serde(rename = "type")]
    pub kind: JobErrorKind,
    pub message: String,
    #[serde(default)]
    pub traceback: String,
    /// Set when the router itself refused the REQUEST (it was never
    /// accepted, no receipt will come) — as opposed to a job manager that
    /// refused a job the router had accepted. A receipt may arrive after a
    /// job's outcome (receipts wait for the journal), so clients need to
    /// tell the two apart. Absent on the wire when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_router: bool,
    /// A workflow's failure: the node that failed (its msgid and name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A job's outcome as it goes in `reply_json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReply {
    /// The return value; on failure the error text, as EventMQ did.
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

impl JobReply {
    /// A successful result.
    pub fn ok(value: Value) -> Self {
        JobReply { value, error: None }
    }

    /// A failure; `value` carries the message for EventMQ-era readers.
    pub fn failed(kind: impl Into<JobErrorKind>, message: impl Into<String>, traceback: impl Into<String>) -> Self {
        let message = message.into();
        JobReply {
            value: Value::String(message.clone()),
            error: Some(JobError {
                kind: kind.into(),
                message,
                traceback: traceback.into(),
                by_router: false,
                node: None,
                node_name: None,
            }),
        }
    }

    /// The router's own refusal of a REQUEST (see [`JobError::by_router`]).
    pub fn refused_by_router(message: impl Into<String>) -> Self {
        let mut r = JobReply::failed(JobErrorKind::Refused, message, "");
        if let Some(e) = r.error.as_mut() {
            e.by_router = true;
        }
        r
    }

    /// Serialises to the `reply_json` frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("reply serialises")
    }

    /// Reads a `reply_json` frame (lenient: a non-object becomes the value).
    pub fn from_json(raw: &str) -> Result<JobReply, serde_json::Error> {
        let v: Value = serde_json::from_str(raw)?;
        if v.get("value").is_some() || v.get("error").is_some() {
            serde_json::from_value(v)
        } else {
            Ok(JobReply::ok(v))
        }
    }

    /// True when the job failed.
    pub fn is_error(&self) -> bool {
        self.error.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_eventmq_payload() {
        let p = RunPayload::parse(r#"["run", {"path": "benchjobs", "callable": "add", "args": [2, 3]}]"#).unwrap();
        assert_eq!(p.path, "benchjobs");
        assert_eq!(p.args, vec![json!(2), json!(3)]);
        assert_eq!(RunPayload::parse(&p.to_wire()).unwrap(), p);
        assert_eq!(p.module_and_class(), ("benchjobs", None));
    }

    #[test]
    fn class_paths() {
        let p = RunPayload::parse(
            r#"["run", {"path": "pkg.mod:Counter", "callable": "bump", "class_args": [5], "class_kwargs": {"step": 2}}]"#,
        )
        .unwrap();
        assert_eq!(p.module_and_class(), ("pkg.mod", Some("Counter")));
        assert_eq!(p.class_kwargs["step"], json!(2));
    }

    #[test]
    fn rejects_bad_payloads() {
        assert!(matches!(RunPayload::parse("nope"), Err(PayloadError::NotJson(_))));
        assert_eq!(RunPayload::parse("{}"), Err(PayloadError::NotAnArray));
        assert!(matches!(RunPayload::parse(r#"["walk", {}]"#), Err(PayloadError::UnknownAction(_))));
        assert!(matches!(RunPayload::parse(r#"["run", {"path": 3}]"#), Err(PayloadError::BadRunArguments(_))));
        assert!(matches!(
            RunPayload::parse(r#"["run", {"path": "", "callable": "f"}]"#),
            Err(PayloadError::BadRunArguments(_))
        ));
        assert_eq!(RunPayload::parse(r#"["run", {"path": "m", "callable": "f"}, 3]"#), Err(PayloadError::NotAnArray));
        assert!(matches!(
            RunPayload::parse(r#"["run", {"path": "m", "callable": "f", "args": null}]"#),
            Err(PayloadError::BadRunArguments(_))
        ));
    }

    #[test]
    fn payload_module_reads_the_path_only() {
        let raw = r#"["run", {"args": [{"path": "not.this"}], "path": "pkg.mod:Cls", "callable": "m"}]"#;
        assert_eq!(payload_module(raw).as_deref(), Some("pkg.mod"));
        assert_eq!(payload_module(r#"["run", {"path": "a\u002eb", "callable": "f"}]"#).as_deref(), Some("a.b"));
        assert_eq!(payload_module(r#"["stop", {"path": "a"}]"#), None);
        assert_eq!(payload_module("not json"), None);
        assert_eq!(payload_module(r#"["run", {"callable": "f"}]"#), None);
    }

    #[test]
    fn the_fast_path_reads_what_the_long_way_reads() {
        // Unknown keys ignored, a repeated key: the last one (as a JSON
        // object read into a map), escapes decoded.
        let p = RunPayload::parse(r#"["run", {"path": "m", "callable": "f", "x": 1, "args": ["a\u00e9"]}]"#).unwrap();
        assert_eq!((p.path.as_str(), p.callable.as_str(), p.args.clone()), ("m", "f", vec![json!("aé")]));
        let p = RunPayload::parse(r#"["run", {"path": "m", "callable": "f", "callable": "g"}]"#).unwrap();
        assert_eq!(p.callable, "g");
    }

    #[test]
    fn error_kinds_keep_their_wire_strings() {
        use JobErrorKind::*;
        for (kind, wire) in [
            (Timeout, "timeout"),
            (Killed, "killed"),
            (WorkerDied, "worker died"),
            (JobManagerLost, "job manager lost"),
            (RouterRestarted, "router restarted"),
            (Refused, "refused"),
            (Cancelled, "cancelled"),
            (BadPayload, "BadPayload"),
            (BadReply, "BadReply"),
            (CommandFailed, "command failed"),
            (Exception("ValueError".into()), "ValueError"),
        ] {
            let json = JobReply::failed(kind.clone(), "m", "").to_json();
            assert!(json.contains(&format!("\"type\":\"{wire}\"")), "{json}");
            assert_eq!(JobReply::from_json(&json).unwrap().error.unwrap().kind, kind);
            assert_eq!(JobErrorKind::from(wire), kind);
        }
    }

    #[test]
    fn reply_json_shapes() {
        assert_eq!(JobReply::ok(json!(5)).to_json(), r#"{"value":5}"#);
        let f = JobReply::failed("ValueError", "boom", "Traceback...");
        let back = JobReply::from_json(&f.to_json()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.value, json!("boom"));
        assert_eq!(JobReply::from_json("7").unwrap(), JobReply::ok(json!(7)));
    }
}
