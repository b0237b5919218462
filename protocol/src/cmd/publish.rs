//! `PUBLISH topic payload` (client → publisher). Decoded so it is not
//! mistaken for garbage; the router does not serve pub/sub yet.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// A message for subscribers of `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: String,
}

impl Publish {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Publish { topic: p.next_string()?, payload: p.next_string()? })
    }
    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.topic.as_bytes().to_vec());
        out.push(self.payload.as_bytes().to_vec());
    }
}
