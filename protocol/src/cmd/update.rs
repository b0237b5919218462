//! `JOB_UPDATE (msgid update_json)*` — our extension, job manager → router
//! only, and only to a router that takes batches (the same `"batch": true`
//! heartbeat flag as [`super::Batch`]): what running jobs said about
//! themselves since the last one — their progress (last value wins) and
//! their checkpoint (kept with the job, handed to a retried attempt in the
//! `checkpoint:` header). EventMQ peers never see one.
//!
//! `update_json` is an object with `progress` (`{"done", "total",
//! "message", "at"}`) and/or `checkpoint` (any JSON value, at most
//! [`MAX_CHECKPOINT_BYTES`] as text).

use crate::error::DecodeErrorKind;
use crate::parse::Parse;
use serde::{Deserialize, Serialize};

/// Most jobs one JOB_UPDATE carries (a job manager flushes at this count).
pub const MAX_JOB_UPDATES: usize = 1024;
/// Largest checkpoint kept with a job (its JSON text).
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;
/// Longest progress message kept (longer ones are cut at a char boundary).
pub const MAX_PROGRESS_MESSAGE: usize = 1024;

/// How far a running job is, as it said last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Work done, in the job's own unit.
    pub done: f64,
    /// Work in all, when the job knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Unix seconds when the job said it.
    pub at: f64,
}

/// What one running job said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobUpdate {
    pub msgid: String,
    pub progress: Option<Progress>,
    /// The checkpoint's JSON text.
    pub checkpoint: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct UpdateBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint: Option<serde_json::Value>,
}

impl JobUpdate {
    /// The update's JSON frame.
    pub fn body_json(&self) -> String {
        let checkpoint = self.checkpoint.as_deref().and_then(|c| serde_json::from_str(c).ok());
        serde_json::to_string(&UpdateBody { progress: self.progress.clone(), checkpoint })
            .unwrap_or_else(|_| "{}".into())
    }

    /// Reads one `(msgid, update_json)` pair; a bad one says why.
    pub fn from_frames(msgid: String, json: &str) -> Result<JobUpdate, DecodeErrorKind> {
        let bad = |reason: String| DecodeErrorKind::BadJson { field: "JOB_UPDATE update", reason };
        let body: UpdateBody = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let checkpoint = body.checkpoint.map(|c| c.to_string());
        if checkpoint.as_ref().is_some_and(|c| c.len() > MAX_CHECKPOINT_BYTES) {
            return Err(bad(format!("checkpoint larger than {MAX_CHECKPOINT_BYTES} bytes")));
        }
        let progress = match body.progress {
            Some(p) if !p.done.is_finite() || p.total.is_some_and(|t| !t.is_finite()) || !p.at.is_finite() => {
                return Err(bad("progress values must be finite numbers".into()))
            }
            Some(mut p) => {
                if let Some(m) = &mut p.message {
                    if m.len() > MAX_PROGRESS_MESSAGE {
                        let mut end = MAX_PROGRESS_MESSAGE;
                        while !m.is_char_boundary(end) {
                            end -= 1;
                        }
                        m.truncate(end);
                    }
                }
                Some(p)
            }
            None => None,
        };
        Ok(JobUpdate { msgid, progress, checkpoint })
    }
}

/// Several running jobs' updates in one message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobUpdates {
    pub updates: Vec<JobUpdate>,
}

impl JobUpdates {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let pairs =
            super::batch::frame_pairs(p.rest()?, "JOB_UPDATE updates", "msgid, update_json", 0, MAX_JOB_UPDATES)?;
        let updates =
            pairs.into_iter().map(|(msgid, json)| JobUpdate::from_frames(msgid, &json)).collect::<Result<_, _>>()?;
        Ok(JobUpdates { updates })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        for u in &self.updates {
            out.push(u.msgid.as_bytes().to_vec());
            out.push(u.body_json().into_bytes());
        }
    }
}

/// A checkpoint as the value of a `checkpoint:` header: `%` and `,` (the
/// header separator) escaped.
pub fn encode_checkpoint_header(json: &str) -> String {
    json.replace('%', "%25").replace(',', "%2C")
}

/// The JSON text of a `checkpoint:` header value.
pub fn decode_checkpoint_header(value: &str) -> String {
    value.replace("%2C", ",").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Message};

    #[test]
    fn updates_round_trip_and_bad_ones_say_why() {
        let u = JobUpdates {
            updates: vec![
                JobUpdate {
                    msgid: "a".into(),
                    progress: Some(Progress { done: 3.0, total: Some(10.0), message: Some("x".into()), at: 1.5 }),
                    checkpoint: None,
                },
                JobUpdate { msgid: "b".into(), progress: None, checkpoint: Some(r#"{"ids":[1,2],"page":7}"#.into()) },
            ],
        };
        let m = Message::with_msgid("m1", Command::JobUpdate(u.clone()));
        let back = Message::from_frames(&m.to_frames()).unwrap();
        assert_eq!(back.command, Command::JobUpdate(u));
        for (json, why) in [
            ("{", "EOF"),
            (r#"{"progress":{"done":"x","at":1}}"#, "invalid type"),
            (&format!(r#"{{"checkpoint":"{}"}}"#, "x".repeat(MAX_CHECKPOINT_BYTES)), "larger than"),
        ] {
            let e = JobUpdate::from_frames("a".into(), json).unwrap_err();
            assert!(e.to_string().contains(why), "{json:.40}: {e}");
        }
        let long = JobUpdate::from_frames(
            "a".into(),
            &format!(r#"{{"progress":{{"done":1,"at":1,"message":"{}"}}}}"#, "é".repeat(1000)),
        )
        .unwrap();
        assert!(long.progress.unwrap().message.unwrap().len() <= MAX_PROGRESS_MESSAGE);
    }

    #[test]
    fn a_checkpoint_survives_the_header_encoding() {
        let json = r#"{"a":"50%,x","b":[1,2,3],"c":"%2C"}"#;
        let h =
            crate::Headers::parse(&format!("reply-requested,checkpoint:{},attempt:2", encode_checkpoint_header(json)));
        assert_eq!(h.checkpoint.as_deref(), Some(json));
        assert_eq!(h.attempt, Some(2));
        assert_eq!(crate::Headers::parse(&h.to_wire()), h);
    }
}
