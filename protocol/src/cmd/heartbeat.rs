//! `HEARTBEAT unix_timestamp [health_json]`. EventMQ sends only the
//! timestamp; our job manager may append pool health, which EventMQ's router
//! ignores.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// Liveness signal. Any frame from a peer counts as liveness; this one
/// exists for when there is nothing else to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's wall clock as text, e.g. `"1700000000.123"`.
    pub timestamp: String,
    /// Our extension: pool health as JSON.
    pub health: Option<String>,
}

impl Heartbeat {
    /// A heartbeat stamped with the current wall-clock time.
    pub fn now() -> Self {
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Heartbeat { timestamp: format!("{t:.3}"), health: None }
    }

    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Heartbeat { timestamp: p.next_string()?, health: p.next_optional_string()? })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.timestamp.as_bytes().to_vec());
        if let Some(h) = &self.health {
            out.push(h.as_bytes().to_vec());
        }
    }
}
