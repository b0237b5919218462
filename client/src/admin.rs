//! A client for the router's administrative socket: one command, one
//! answer. Works with EventMQ's router too (same frames).

use emq_protocol::{Command, Message};
use emq_sender::Sender;
use std::time::Duration;

/// One connection to an admin socket.
pub struct AdminClient {
    sender: Sender,
    addr: String,
}

impl AdminClient {
    pub fn connect(addr: &str) -> anyhow::Result<AdminClient> {
        Self::connect_with(addr, None)
    }

    /// [`Self::connect`], as a CURVE client when `keys` are given.
    pub fn connect_with(addr: &str, keys: Option<&emq_sender::CurveClientKeys>) -> anyhow::Result<AdminClient> {
        let ctx = zmq::Context::new();
        let sender = match keys {
            Some(k) => Sender::connect_curve(&ctx, addr, emq_protocol::new_msgid(), 100_000, k)?,
            None => Sender::connect(&ctx, addr)?,
        };
        Ok(AdminClient { sender, addr: addr.to_owned() })
    }

    /// Sends `command` (with `admin:` msgid, as emq-cli does) and waits up
    /// to `deadline` for the answer message.
    pub fn request(&self, command: Command, deadline: Duration) -> anyhow::Result<Message> {
        let m = Message::with_msgid(format!("admin:{}", emq_protocol::new_msgid()), command);
        self.sender.send(&m)?;
        let end = std::time::Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                anyhow::bail!(
                    "no answer from the router at {} within {:.1} s (is it running?)",
                    self.addr,
                    deadline.as_secs_f64()
                );
            }
            match self.sender.recv_timeout(left.as_millis().max(1) as i64)? {
                Some(Ok(answer)) if !matches!(answer.command, Command::Heartbeat(_)) => return Ok(answer),
                Some(Err(e)) => anyhow::bail!("unreadable answer from the router: {e}"),
                _ => {}
            }
        }
    }
}
