//! `BATCH ready_count (reply_json orig_msgid)*` — our extension, job
//! manager → router only, and only when the router said it takes them (a
//! `"batch": true` in its heartbeat's extra frame, answering an INFORM
//! whose features include [`FEATURE_BATCH`]): the REPLYs and READYs of one
//! poll pass in one message. The router handles it exactly as the REPLYs in
//! order, then `ready_count` READYs (a REPLY always before the READY that
//! frees its slot). EventMQ peers never see one.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// The INFORM feature (and heartbeat flag) that turns batches on.
pub const FEATURE_BATCH: &str = "batch";

/// Most REPLYs one batch carries (a job manager flushes at this count).
pub const MAX_BATCH_REPLIES: usize = 1024;

/// Several REPLYs and READYs in one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// READYs, after the replies.
    pub ready: u32,
    /// `(reply_json, orig_msgid)`, in the order the jobs finished.
    pub replies: Vec<(String, String)>,
}

impl Batch {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let ready_raw = p.next_string()?;
        let ready = ready_raw.parse().map_err(|_| DecodeErrorKind::BadJson {
            field: "BATCH ready count",
            reason: format!("{ready_raw:?} is not a count"),
        })?;
        let rest = p.rest()?;
        if rest.len() % 2 != 0 || rest.len() / 2 > MAX_BATCH_REPLIES {
            return Err(DecodeErrorKind::BadJson {
                field: "BATCH replies",
                reason: format!(
                    "{} frames: expected pairs of reply_json, orig_msgid (at most {MAX_BATCH_REPLIES})",
                    rest.len()
                ),
            });
        }
        let mut it = rest.into_iter();
        let mut replies = Vec::new();
        while let (Some(json), Some(orig)) = (it.next(), it.next()) {
            replies.push((json, orig));
        }
        Ok(Batch { ready, replies })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.ready.to_string().into_bytes());
        for (json, orig) in &self.replies {
            out.push(json.as_bytes().to_vec());
            out.push(orig.as_bytes().to_vec());
        }
    }
}

/// `REQUESTS (msgid queue headers payload)*` — our extension, router → our
/// job manager only (one that asked for batches at INFORM): the jobs a
/// poll pass hands it, in one message. Each is exactly a REQUEST with that
/// msgid, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requests {
    pub jobs: Vec<(String, crate::Request)>,
}

impl Requests {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let rest = p.rest()?;
        if rest.len() % 4 != 0 || rest.len() / 4 > MAX_BATCH_REPLIES {
            return Err(DecodeErrorKind::BadJson {
                field: "REQUESTS jobs",
                reason: format!(
                    "{} frames: expected groups of msgid, queue, headers, payload (at most {MAX_BATCH_REPLIES})",
                    rest.len()
                ),
            });
        }
        let mut it = rest.into_iter();
        let mut jobs = Vec::new();
        while let (Some(msgid), Some(queue), Some(headers), Some(payload)) =
            (it.next(), it.next(), it.next(), it.next())
        {
            jobs.push((msgid, crate::Request { queue, headers, payload }));
        }
        Ok(Requests { jobs })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        for (msgid, r) in &self.jobs {
            out.push(msgid.as_bytes().to_vec());
            out.push(r.queue.as_bytes().to_vec());
            out.push(r.headers.as_bytes().to_vec());
            out.push(r.payload.as_bytes().to_vec());
        }
    }
}
