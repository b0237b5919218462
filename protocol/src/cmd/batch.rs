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
        let replies = frame_pairs(p.rest()?, "BATCH replies", "reply_json, orig_msgid", 0, MAX_BATCH_REPLIES)?;
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

/// `REQUESTS (msgid queue headers payload)*` — our extension, in two
/// places, never to or from an EventMQ peer:
///
/// - router → our job manager (one that asked for batches at INFORM): the
///   jobs a poll pass hands it, in one message;
/// - our client → our router, only after that connection has received a
///   REPLIES (only our router sends one, and only to a client whose
///   REQUESTs carried [`HEADER_BATCH_REPLIES`]): jobs sent together
///   (`send_many`, `map`) in one message instead of one each.
///
/// Each job is exactly a REQUEST with that msgid, in order; the message's
/// own msgid names nothing. A router that does not take them from clients
/// refuses the message as an unexpected command — the jobs then have no
/// receipt, and a client sends them again one REQUEST each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requests {
    pub jobs: Vec<(String, crate::Request)>,
}

impl Requests {
    /// The REQUEST messages this stands for, in order.
    pub fn into_messages(self) -> impl Iterator<Item = crate::Message> {
        self.jobs.into_iter().map(|(msgid, r)| crate::Message::with_msgid(msgid, crate::Command::Request(r)))
    }

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
            if msgid.is_empty() {
                // As a REQUEST's own msgid frame: a job needs a name.
                return Err(DecodeErrorKind::BadJson {
                    field: "REQUESTS jobs",
                    reason: format!("job {} has an empty msgid", jobs.len()),
                });
            }
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

/// The REQUEST header with which our client asks for [`Replies`]: a router
/// that knows it may gather that connection's receipts and results into
/// REPLIES messages; one that does not (EventMQ's) ignores it, as EventMQ's
/// job manager does when the REQUEST reaches it.
pub const HEADER_BATCH_REPLIES: &str = "batch-replies";

/// Most bytes of replies one REPLIES carries (a router flushes past it).
pub const MAX_REPLIES_BYTES: usize = 256 << 10;

/// `REPLIES (reply_json orig_msgid)*` — our extension, router → our client
/// only, and only to a connection whose REQUEST carried
/// [`HEADER_BATCH_REPLIES`]: the receipts and results of one poll pass for
/// that client, in the order the router would have sent them as REPLYs. An
/// empty `reply_json` is a receipt for `orig_msgid` (a result's JSON is
/// never empty); anything else is exactly a REPLY `reply_json orig_msgid`.
/// Admin answers (JSON in one frame) never go in one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replies {
    /// `(reply_json or "" for a receipt, orig_msgid)`, in order.
    pub items: Vec<(String, String)>,
}

impl Replies {
    /// The REPLY this item stands for.
    pub fn reply_of(reply_json: String, orig_msgid: String) -> crate::Reply {
        if reply_json.is_empty() {
            crate::Reply::receipt(orig_msgid)
        } else {
            crate::Reply::Result { reply_json, orig_msgid }
        }
    }

    /// The item for a REPLY to a client, or the REPLY back when it cannot
    /// go in a batch (an admin answer: one frame of JSON).
    pub fn item_of(reply: crate::Reply) -> Result<(String, String), crate::Reply> {
        match reply {
            crate::Reply::Single { body } if !body.starts_with('{') && !body.is_empty() => Ok((String::new(), body)),
            crate::Reply::Result { reply_json, orig_msgid } if !reply_json.is_empty() => Ok((reply_json, orig_msgid)),
            other => Err(other),
        }
    }

    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        let items = frame_pairs(p.rest()?, "REPLIES items", "reply_json, orig_msgid", 1, MAX_BATCH_REPLIES)?;
        Ok(Replies { items })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        for (json, orig) in &self.items {
            out.push(json.as_bytes().to_vec());
            out.push(orig.as_bytes().to_vec());
        }
    }
}

/// A body of frame pairs (`BATCH`'s replies, `REPLIES`, `JOB_UPDATE`):
/// between `min` and `max` pairs of `what`, else a decode error naming
/// `field`.
pub(crate) fn frame_pairs(
    rest: Vec<String>,
    field: &'static str,
    what: &str,
    min: usize,
    max: usize,
) -> Result<Vec<(String, String)>, DecodeErrorKind> {
    if !rest.len().is_multiple_of(2) || rest.len() / 2 < min || rest.len() / 2 > max {
        return Err(DecodeErrorKind::BadJson {
            field,
            reason: format!("{} frames: expected {min} to {max} pairs of {what}", rest.len()),
        });
    }
    let mut it = rest.into_iter();
    let mut pairs = Vec::with_capacity(it.len() / 2);
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        pairs.push((a, b));
    }
    Ok(pairs)
}
