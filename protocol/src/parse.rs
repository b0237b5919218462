//! [`Parse`], a cursor over a message's body frames in the style of
//! mini-redis: each command's `parse_frames` pulls the fields it needs, in
//! order, and [`Parse::finish`] rejects leftovers. It knows nothing of
//! commands or the envelope, so `cmd/*` depend on it and on nothing above.

use crate::error::DecodeErrorKind;

/// A cursor over a message's body frames.
pub struct Parse<'a, F> {
    frames: &'a [F],
    pos: usize,
    /// Index of `frames[0]` in the whole message, for error messages.
    first_index: usize,
}

impl<'a, F: AsRef<[u8]>> Parse<'a, F> {
    /// A cursor over `frames`, the first of which is frame `first_index` of
    /// the whole message (for error messages that name frame numbers).
    pub fn new(frames: &'a [F], first_index: usize) -> Self {
        Parse { frames, pos: 0, first_index }
    }

    /// The next body frame as text; an error when missing or not UTF-8.
    pub fn next_string(&mut self) -> Result<String, DecodeErrorKind> {
        let frame = self.frames.get(self.pos).ok_or(DecodeErrorKind::TooFewFrames {
            needed: self.first_index + self.pos + 1,
            got: self.first_index + self.frames.len(),
        })?;
        let text =
            std::str::from_utf8(frame.as_ref()).map_err(|_| DecodeErrorKind::NotUtf8(self.first_index + self.pos))?;
        self.pos += 1;
        Ok(text.to_owned())
    }

    /// The next body frame as text when there is one.
    pub fn next_optional_string(&mut self) -> Result<Option<String>, DecodeErrorKind> {
        if self.pos >= self.frames.len() {
            return Ok(None);
        }
        self.next_string().map(Some)
    }

    /// How many body frames are left.
    pub fn remaining(&self) -> usize {
        self.frames.len() - self.pos
    }

    /// Rejects leftover frames: a command with more body frames than it
    /// defines is malformed, not silently truncated.
    pub fn finish(&self) -> Result<(), DecodeErrorKind> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeErrorKind::TrailingFrames(n)),
        }
    }

    /// Takes all remaining frames as text (for [`Command::Unknown`]).
    pub fn rest(&mut self) -> Result<Vec<String>, DecodeErrorKind> {
        let mut out = Vec::with_capacity(self.remaining());
        while self.remaining() > 0 {
            out.push(self.next_string()?);
        }
        Ok(out)
    }
}
