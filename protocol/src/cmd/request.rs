//! `REQUEST queue_name headers payload`: a job. The router forwards it to a
//! job manager byte-identical, so headers and payload stay raw text here;
//! [`Request::headers`] and [`crate::RunPayload::parse`] read them.

use crate::error::DecodeErrorKind;
use crate::headers::Headers;
use crate::parse::Parse;

/// A job as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The queue the client asked for (kept unchanged even when the router
    /// falls back to `default`, as EventMQ does).
    pub queue: String,
    /// Comma-separated headers, raw.
    pub headers: String,
    /// The JSON payload, raw (`["run", {...}]`).
    pub payload: String,
}

impl Request {
    /// Parsed headers; unknown ones are ignored.
    pub fn headers(&self) -> Headers {
        Headers::parse(&self.headers)
    }

    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Request { queue: p.next_string()?, headers: p.next_string()?, payload: p.next_string()? })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.queue.as_bytes().to_vec());
        out.push(self.headers.as_bytes().to_vec());
        out.push(self.payload.as_bytes().to_vec());
    }
}
