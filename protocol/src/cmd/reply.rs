//! `REPLY`: one body frame (a receipt carrying `orig_msgid`, or an admin
//! answer carrying JSON) or two (`reply_json`, `orig_msgid`: a job's result
//! or a refusal). Clients tell receipt from result by the frame count.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// A reply, by shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// One body frame. From the frontend: a receipt whose body is the
    /// accepted REQUEST's msgid. From the admin socket: a JSON answer.
    Single { body: String },
    /// Two body frames: the outcome of the job `orig_msgid` (result or
    /// refusal) as `{"value": ..., "error": {...}?}`.
    Result { reply_json: String, orig_msgid: String },
}

impl Reply {
    /// A receipt for an accepted REQUEST.
    pub fn receipt(orig_msgid: impl Into<String>) -> Self {
        Reply::Single { body: orig_msgid.into() }
    }

    /// An admin answer.
    pub fn admin_answer(json: impl Into<String>) -> Self {
        Reply::Single { body: json.into() }
    }

    /// The job this reply is about: the receipt's body or the result's
    /// `orig_msgid`.
    pub fn orig_msgid(&self) -> &str {
        match self {
            Reply::Single { body } => body,
            Reply::Result { orig_msgid, .. } => orig_msgid,
        }
    }

    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let first = p.next_string()?;
        Ok(match p.next_optional_string()? {
            None => Reply::Single { body: first },
            Some(orig_msgid) => Reply::Result { reply_json: first, orig_msgid },
        })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        match self {
            Reply::Single { body } => out.push(body.as_bytes().to_vec()),
            Reply::Result { reply_json, orig_msgid } => {
                out.push(reply_json.as_bytes().to_vec());
                out.push(orig_msgid.as_bytes().to_vec());
            }
        }
    }
}
