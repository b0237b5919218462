//! `SCHEDULE` / `UNSCHEDULE queue headers interval_secs payload cron`.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// A periodic job order for a scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub queue: String,
    pub headers: String,
    /// Seconds as text; `-1` when `cron` is used.
    pub interval_secs: String,
    pub payload: String,
    pub cron: String,
}

impl Schedule {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Schedule {
            queue: p.next_string()?,
            headers: p.next_string()?,
            interval_secs: p.next_string()?,
            payload: p.next_string()?,
            // Older clients omit the cron frame.
            cron: p.next_optional_string()?.unwrap_or_default(),
        })
    }
    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        for f in [&self.queue, &self.headers, &self.interval_secs, &self.payload, &self.cron] {
            out.push(f.as_bytes().to_vec());
        }
    }
}
