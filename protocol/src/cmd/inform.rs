//! `INFORM queues kind [features]`: a job manager (kind `worker`, on the
//! backend) or a scheduler (kind `scheduler`, on the frontend) announces
//! itself. Our extension: an optional third frame of comma-separated
//! feature tokens (EventMQ's router reads only the first two frames).

use crate::error::DecodeErrorKind;
use crate::parse::Parse;
use crate::queues::QueueSpec;

/// A peer's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inform {
    /// `(weight, name)` pairs; empty means "the router's default queues".
    pub queues: QueueSpec,
    /// `"worker"` or `"scheduler"`.
    pub kind: String,
    /// Our extension: features of the sender, e.g. `reports-all` (it
    /// sends a REPLY for every job, not only `reply-requested` ones).
    pub features: Option<String>,
}

/// Feature token: the job manager reports every finished job.
pub const FEATURE_REPORTS_ALL: &str = "reports-all";

impl Inform {
    /// Whether the sender declared `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.as_deref().is_some_and(|f| f.split(',').any(|t| t.trim() == feature))
    }
}

impl Inform {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let raw = p.next_string()?;
        let queues = QueueSpec::from_wire(&raw)
            .map_err(|e| DecodeErrorKind::BadJson { field: "queues", reason: e.to_string() })?;
        // EventMQ always sends the kind; a missing one is empty, which no
        // role accepts (a stray frame list must not pass for a job manager).
        let kind = p.next_optional_string()?.unwrap_or_default();
        let features = p.next_optional_string()?;
        Ok(Inform { queues, kind, features })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.queues.to_wire().into_bytes());
        out.push(self.kind.as_bytes().to_vec());
        if let Some(f) = &self.features {
            out.push(f.as_bytes().to_vec());
        }
    }
}
