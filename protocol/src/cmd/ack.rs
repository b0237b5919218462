//! `ACK acked_msgid`: the router's answer to INFORM (and to an admin
//! DISCONNECT, where EventMQ acks the admin msgid).

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// Acknowledges the message whose msgid it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The msgid of the INFORM (or DISCONNECT) being acknowledged.
    pub acked_msgid: String,
}

impl Ack {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Ack { acked_msgid: p.next_string()? })
    }
    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.acked_msgid.as_bytes().to_vec());
    }
}
