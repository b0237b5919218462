//! A client for the router's administrative socket: one command, one
//! answer. Works with EventMQ's router too (same frames).

use emq_protocol::{AdminCommand, Command, Message, Reply};
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

    /// Proves this connection holds the router's admin token (its
    /// `data_dir/admin.token`): the commands that change something need it.
    pub fn authenticate(&self, token: &str, deadline: Duration) -> anyhow::Result<()> {
        let v = self.json(Command::Admin(AdminCommand::Authenticate { token: token.trim().to_owned() }), deadline)?;
        anyhow::ensure!(v["authenticated"] == true, "the router refused the admin token");
        Ok(())
    }

    /// Cancels a job (buffered, delayed, retrying: removed; running: its
    /// worker is stopped) or a schedule by its id. The router's answer.
    pub fn cancel(&self, msgid: &str, deadline: Duration) -> anyhow::Result<serde_json::Value> {
        self.change(Command::Admin(AdminCommand::Cancel { job_msgid: msgid.to_owned() }), deadline)
    }

    /// Removes every buffered job of `queue`; the answer has the count.
    pub fn purge(&self, queue: &str, deadline: Duration) -> anyhow::Result<serde_json::Value> {
        self.change(Command::Admin(AdminCommand::Purge { queue: queue.to_owned() }), deadline)
    }

    /// Stops handing out `queue`'s jobs (they are still accepted and kept).
    pub fn pause(&self, queue: &str, deadline: Duration) -> anyhow::Result<serde_json::Value> {
        self.change(Command::Admin(AdminCommand::Pause { queue: queue.to_owned() }), deadline)
    }

    /// Hands out `queue`'s jobs again.
    pub fn resume(&self, queue: &str, deadline: Duration) -> anyhow::Result<serde_json::Value> {
        self.change(Command::Admin(AdminCommand::Resume { queue: queue.to_owned() }), deadline)
    }

    /// A command whose answer is one JSON frame.
    pub fn json(&self, command: Command, deadline: Duration) -> anyhow::Result<serde_json::Value> {
        match self.request(command, deadline)?.command {
            Command::Reply(Reply::Single { body }) => Ok(serde_json::from_str(&body)?),
            other => anyhow::bail!("unexpected answer {}", other.name()),
        }
    }

    /// [`Self::json`], with the router's `error` as an error.
    fn change(&self, command: Command, deadline: Duration) -> anyhow::Result<serde_json::Value> {
        let v = self.json(command, deadline)?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("router: {e}");
        }
        Ok(v)
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
