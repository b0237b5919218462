//! The frame envelope shared by every command: `"" / "eMQP/1.0" / COMMAND /
//! MSGID / body...`. The body frames are read by each command through a
//! [`Parse`] cursor (in `parse.rs`), so the command modules never import
//! from here: the dependency runs one way, envelope → commands → cursor.

use crate::cmd::Command;
use crate::error::{DecodeError, DecodeErrorKind};
use crate::parse::Parse;

/// The only protocol version this crate speaks (frame 1).
pub const PROTOCOL_VERSION: &str = "eMQP/1.0";

/// One eMQP message as a DEALER sees it: everything after the routing
/// identity that a ROUTER socket prepends.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Frame 3: unique id of this message.
    pub msgid: String,
    /// Frame 2 and the body frames, typed.
    pub command: Command,
}

impl Message {
    /// A message with a fresh msgid.
    pub fn new(command: Command) -> Self {
        Message { msgid: crate::new_msgid(), command }
    }

    /// A message with a given msgid (e.g. forwarding a REQUEST unchanged).
    pub fn with_msgid(msgid: impl Into<String>, command: Command) -> Self {
        Message { msgid: msgid.into(), command }
    }

    /// Decodes frames `"" / "eMQP/1.0" / COMMAND / MSGID / body...`.
    /// Never panics, whatever the bytes.
    pub fn from_frames<F: AsRef<[u8]>>(frames: &[F]) -> Result<Message, DecodeError> {
        let err = |kind, command: Option<&str>, msgid: Option<&str>| DecodeError {
            kind,
            command: command.map(str::to_owned),
            msgid: msgid.map(str::to_owned),
        };
        if frames.len() < 4 {
            // Still try to surface the command and msgid for the log line.
            let command = frames.get(2).and_then(|f| std::str::from_utf8(f.as_ref()).ok());
            return Err(err(DecodeErrorKind::TooFewFrames { needed: 4, got: frames.len() }, command, None));
        }
        let command = std::str::from_utf8(frames[2].as_ref()).ok();
        let msgid = std::str::from_utf8(frames[3].as_ref()).ok();
        if !frames[0].as_ref().is_empty() {
            return Err(err(DecodeErrorKind::MissingDelimiter, command, msgid));
        }
        let version = frames[1].as_ref();
        if version != PROTOCOL_VERSION.as_bytes() {
            return Err(err(
                DecodeErrorKind::BadVersion(String::from_utf8_lossy(version).into_owned()),
                command,
                msgid,
            ));
        }
        let Some(name) = command else {
            return Err(err(DecodeErrorKind::NotUtf8(2), None, msgid));
        };
        let Some(msgid) = msgid else {
            return Err(err(DecodeErrorKind::NotUtf8(3), Some(name), None));
        };
        if msgid.is_empty() {
            return Err(err(DecodeErrorKind::EmptyMsgid, Some(name), None));
        }
        let mut parse = Parse::new(&frames[4..], 4);
        match Command::parse_frames(name, &mut parse) {
            Ok(command) => Ok(Message { msgid: msgid.to_owned(), command }),
            Err(kind) => Err(err(kind, Some(name), Some(msgid))),
        }
    }

    /// Encodes to frames, starting with the empty delimiter.
    pub fn to_frames(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::with_capacity(8);
        frames.push(Vec::new());
        frames.push(PROTOCOL_VERSION.as_bytes().to_vec());
        frames.push(self.command.name().as_bytes().to_vec());
        frames.push(self.msgid.as_bytes().to_vec());
        self.command.write_body(&mut frames);
        frames
    }
}
