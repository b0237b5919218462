//! Frames between the job manager and a worker: a 4-byte little-endian
//! length, then that many bytes of JSON. Commands go on the worker's stdin;
//! answers come back on the worker's original stdout, which the worker moves
//! to a private descriptor before Python starts (so `print()` in a job goes
//! to stderr instead of corrupting frames).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Largest frame accepted (a job's payload or result), 256 MiB.
pub const MAX_FRAME: usize = 256 << 20;

/// Job manager → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run one job; `payload` is the REQUEST's payload frame, already
    /// validated by the job manager.
    Run {
        msgid: String,
        payload: String,
        /// Which attempt this is (1 = first run), readable by the job as
        /// `emq.attempt` so at-least-once jobs can be made idempotent.
        #[serde(default = "first_attempt")]
        attempt: u32,
        /// The last checkpoint an earlier attempt kept (JSON text, from the
        /// REQUEST's `checkpoint:` header), readable by the job as
        /// `emq.current_job().last_checkpoint`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
    /// [`ToWorker::Run`] as this build's job manager writes it: the payload
    /// inline as the JSON it is (the job manager parsed it before), not as
    /// an escaped string — no escaping there, no unescaping here: about a
    /// fifth of a no-op job's instructions in the worker. `Run` stays for a
    /// job manager of an earlier build (a binary replaced on disk while it
    /// runs starts workers of the new one).
    RunInline {
        msgid: String,
        payload: InlineJson,
        #[serde(default = "first_attempt")]
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
    /// Give back every job received but not started yet (they are queued
    /// behind a job that runs long); answered with [`FromWorker::Stolen`].
    Steal,
    /// Finish the jobs already received, then exit (recycling, shutdown).
    Shutdown,
}

fn first_attempt() -> u32 {
    1
}

/// A JSON text carried as it is inside a frame ([`ToWorker::RunInline`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InlineJson(Box<serde_json::value::RawValue>);

impl InlineJson {
    /// `text` when it is one JSON value (else `Err(text)`, untouched).
    pub fn new(text: String) -> Result<InlineJson, String> {
        match serde_json::from_str::<&serde_json::value::RawValue>(&text) {
            Ok(raw) => Ok(InlineJson(raw.to_owned())),
            Err(_) => Err(text),
        }
    }

    /// The JSON text (as it came, whitespace at its ends left out).
    pub fn into_string(self) -> String {
        Box::<str>::from(self.0).into_string()
    }
}

impl PartialEq for InlineJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl ToWorker {
    /// The frame that runs job `msgid`: [`ToWorker::RunInline`], or
    /// [`ToWorker::Run`] should `payload` not be one JSON value.
    pub fn run(msgid: String, payload: String, attempt: u32, checkpoint: Option<String>) -> ToWorker {
        match InlineJson::new(payload) {
            Ok(payload) => ToWorker::RunInline { msgid, payload, attempt, checkpoint },
            Err(payload) => ToWorker::Run { msgid, payload, attempt, checkpoint },
        }
    }
}

/// Worker → job manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Python is up and the setup function ran; ready for jobs.
    Ready { pid: u32 },
    /// A job finished. `reply_json` is the REPLY frame as it goes to the
    /// router; `error_type` is set when the job failed.
    Done { msgid: String, reply_json: String, error_type: Option<emq_protocol::JobErrorKind> },
    /// Jobs handed back after [`ToWorker::Steal`], never started.
    Stolen { msgids: Vec<String> },
    /// What the running job said about itself since the last one (the
    /// worker coalesces: last progress and last checkpoint win, at most one
    /// every [`crate::report::REPORT_EVERY`], the last one before `Done`).
    Update {
        msgid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<emq_protocol::Progress>,
        /// The checkpoint's JSON text (at most
        /// [`emq_protocol::MAX_CHECKPOINT_BYTES`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
    /// The running job asked for its timeout to start again: `seconds`
    /// from when the job manager reads this (the worker already took off
    /// the time the request waited on its side).
    Extend { msgid: String, seconds: f64 },
    /// A command job's program started in process group `pgid`: the job
    /// manager's kills of this worker reach that group too, until the job's
    /// `Done` (see [`crate::command`]).
    CommandStarted { msgid: String, pgid: i32 },
}

/// What a worker needs to know, passed in [`crate::WORKER_CONFIG_ENV`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Prepended to `sys.path`, in order.
    pub python_path: Vec<String>,
    /// A virtualenv whose site-packages is added (else `VIRTUAL_ENV`).
    pub python_venv: Option<String>,
    /// Dotted path of a function run once at worker start.
    pub subprocess_setup_func: Option<String>,
    /// Dotted path of a function run before every job.
    pub job_entry_func: Option<String>,
    /// Dotted path of a function run after every job.
    pub job_exit_func: Option<String>,
    /// Log filter for the worker's own messages.
    pub log_level: String,
    /// `text` or `json`, as its job manager's.
    #[serde(default)]
    pub log_format: String,
    /// `(uid, gid)` the worker runs as (setting `worker_user`), so a job
    /// never runs as root unless asked; `None`: the job manager's own.
    #[serde(default)]
    pub run_as: Option<(u32, u32)>,
    /// Modules the warm template imports before forking workers (the
    /// modules `allowed_paths` names exactly).
    #[serde(default)]
    pub preload: Vec<String>,
    /// Programs command jobs may run (setting `allowed_commands`: absolute
    /// paths or globs; empty: none), checked again in the worker.
    #[serde(default)]
    pub allowed_commands: Vec<String>,
    /// Bytes of each output stream a command job keeps (its tail; setting
    /// `command_output_bytes`; 0, as in `WorkerConfig::default()`, reads as
    /// the default 1 MiB).
    #[serde(default = "default_output_bytes")]
    pub command_output_bytes: usize,
}

/// The default of `command_output_bytes`.
pub fn default_output_bytes() -> usize {
    1 << 20
}

/// Encodes one frame.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let body = serde_json::to_vec(value).expect("wire types serialise");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes one frame and flushes.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    w.write_all(&encode(value))?;
    w.flush()
}

/// Reads one frame, blocking; `Ok(None)` on a clean end of stream.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reassembles frames from bytes that arrive in arbitrary pieces
/// (non-blocking reads in the job manager's poll loop).
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuffer {
    /// Appends bytes just read.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if any.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Option<io::Result<T>> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            self.compact();
            return None;
        }
        let n = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if n > MAX_FRAME {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {n} bytes"))));
        }
        if avail.len() < 4 + n {
            self.compact();
            return None;
        }
        let r = serde_json::from_slice(&avail[4..4 + n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        self.start += 4 + n;
        Some(r)
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_arbitrary_splits() {
        let msgs = vec![
            FromWorker::Ready { pid: 7 },
            FromWorker::Done { msgid: "m".into(), reply_json: r#"{"value":5}"#.into(), error_type: None },
            FromWorker::Done { msgid: "n".into(), reply_json: "{}".into(), error_type: Some("ValueError".into()) },
            FromWorker::Update {
                msgid: "m".into(),
                progress: Some(emq_protocol::Progress { done: 1.0, total: None, message: None, at: 2.5 }),
                checkpoint: Some(r#"{"k":[1]}"#.into()),
            },
            FromWorker::Extend { msgid: "m".into(), seconds: 1.5 },
            FromWorker::CommandStarted { msgid: "m".into(), pgid: 4242 },
        ];
        let bytes: Vec<u8> = msgs.iter().flat_map(encode).collect();
        for chunk in [1, 3, 7, bytes.len()] {
            let mut fb = FrameBuffer::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                fb.extend(piece);
                while let Some(f) = fb.next_frame::<FromWorker>() {
                    got.push(f.unwrap());
                }
            }
            assert_eq!(got, msgs, "chunk size {chunk}");
        }
    }

    #[test]
    fn blocking_reader_round_trip_and_eof() {
        let run = ToWorker::Run { msgid: "a".into(), payload: "[]".into(), attempt: 1, checkpoint: None };
        let retried = ToWorker::Run {
            msgid: "a".into(),
            payload: "[]".into(),
            attempt: 2,
            checkpoint: Some("{\"step\":2}".into()),
        };
        let payload = r#"["run", {"path": "a.b", "callable": "f", "args": ["x\"y", {"k": [1, 2.5, null]}]}]"#;
        let inline = ToWorker::run("b".into(), payload.into(), 1, None);
        assert!(matches!(&inline, ToWorker::RunInline { .. }), "JSON goes inline");
        let encoded = encode(&inline);
        assert!(encoded.windows(payload.len()).any(|w| w == payload.as_bytes()), "as it is, not escaped");
        let not_json = ToWorker::run("c".into(), "[1,".into(), 3, Some("{}".into()));
        assert_eq!(
            not_json,
            ToWorker::Run { msgid: "c".into(), payload: "[1,".into(), attempt: 3, checkpoint: Some("{}".into()) }
        );
        let mut bytes = encode(&run);
        bytes.extend(encode(&retried));
        bytes.extend(encoded);
        bytes.extend(encode(&not_json));
        bytes.extend(encode(&ToWorker::Shutdown));
        let mut r = &bytes[..];
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), Some(run));
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), Some(retried));
        match read_frame::<ToWorker>(&mut r).unwrap() {
            Some(ToWorker::RunInline { msgid, payload: p, attempt: 1, checkpoint: None }) => {
                assert_eq!(msgid, "b");
                assert_eq!(p.into_string(), payload);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), Some(not_json));
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), Some(ToWorker::Shutdown));
        assert_eq!(read_frame::<ToWorker>(&mut r).unwrap(), None);
        let huge = (u32::MAX).to_le_bytes();
        assert!(read_frame::<ToWorker>(&mut &huge[..]).is_err());
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;

    /// A payload nested deeper than serde_json's recursion limit (128)
    /// still makes a frame the worker reads back (a raw value is skipped
    /// over without recursion): the worker, not its frame reader, refuses
    /// the job as a bad payload, and lives on.
    #[test]
    fn deeply_nested_payload_round_trips_as_a_frame() {
        for d in [127usize, 129, 100_000] {
            let p = format!("{}{}", "[".repeat(d), "]".repeat(d));
            let f = ToWorker::run("m".into(), p.clone(), 1, None);
            let bytes = encode(&f);
            match read_frame::<ToWorker>(&mut &bytes[..]).unwrap() {
                Some(ToWorker::RunInline { payload, .. }) => assert_eq!(payload.into_string(), p, "depth {d}"),
                other => panic!("depth {d}: {other:?}"),
            }
        }
    }
}
