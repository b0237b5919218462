//! Typed decode errors. A server logs them with the peer and the msgid (when
//! one could be read) and answers the peer where a reply is due.

use thiserror::Error;

/// Why a multipart message could not be turned into a [`crate::Message`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind} (command {command:?}, msgid {msgid:?})")]
pub struct DecodeError {
    /// What went wrong.
    pub kind: DecodeErrorKind,
    /// The command name, when frame 2 was readable.
    pub command: Option<String>,
    /// The msgid, when frame 3 was readable — needed to answer the peer.
    pub msgid: Option<String>,
}

/// The kinds of decode failure, one per way a frame list can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeErrorKind {
    /// Fewer than the 4 header frames, or fewer body frames than the
    /// command needs.
    #[error("too few frames: needed {needed}, got {got}")]
    TooFewFrames { needed: usize, got: usize },
    /// Frame 0 must be the empty delimiter.
    #[error("frame 0 is not the empty delimiter")]
    MissingDelimiter,
    /// Frame 1 is not `eMQP/1.0`.
    #[error("unsupported protocol version {0:?}")]
    BadVersion(String),
    /// A frame is not valid UTF-8 (all eMQP frames are text).
    #[error("frame {0} is not valid UTF-8")]
    NotUtf8(usize),
    /// More body frames than the command defines.
    #[error("{0} unexpected trailing frame(s)")]
    TrailingFrames(usize),
    /// A body frame that must be JSON is not, or has the wrong shape.
    #[error("bad JSON in {field}: {reason}")]
    BadJson { field: &'static str, reason: String },
    /// An empty msgid frame: nothing could be matched to it later.
    #[error("empty msgid")]
    EmptyMsgid,
}
