//! `INFORM queues kind`: a job manager (kind `worker`, on the backend) or a
//! scheduler (kind `scheduler`, on the frontend) announces itself.

use crate::error::DecodeErrorKind;
use crate::frame::Parse;
use crate::queues::QueueSpec;

/// A peer's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inform {
    /// `(weight, name)` pairs; empty means "the router's default queues".
    pub queues: QueueSpec,
    /// `"worker"` or `"scheduler"`.
    pub kind: String,
}

impl Inform {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let raw = p.next_string()?;
        let queues = QueueSpec::from_wire(&raw)
            .map_err(|e| DecodeErrorKind::BadJson { field: "queues", reason: e.to_string() })?;
        // EventMQ always sends the kind; be lenient when it is missing.
        let kind = p.next_optional_string()?.unwrap_or_else(|| "worker".to_owned());
        Ok(Inform { queues, kind })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.queues.to_wire().into_bytes());
        out.push(self.kind.as_bytes().to_vec());
    }
}
