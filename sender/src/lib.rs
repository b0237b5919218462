//! # emq-sender — the connecting DEALER side of eMQP
//!
//! Owns: a DEALER socket with its own identity (a UUID4 string, as EventMQ
//! uses), connecting to one address, sending and receiving typed
//! [`Message`]s, and reconnecting — under a new identity, as EventMQ's job
//! manager does after losing its router, so the router sees a new peer.
//!
//! Does not own: what the messages mean (job manager, clients), heartbeat
//! timing, or failover policy.

use emq_protocol::{DecodeError, Message};
use thiserror::Error;

/// Socket-level failures.
#[derive(Debug, Error)]
pub enum SenderError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: zmq::Error },
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A connected DEALER socket speaking eMQP.
pub struct Sender {
    ctx: zmq::Context,
    socket: zmq::Socket,
    addr: String,
    identity: String,
    hwm: i32,
}

impl Sender {
    /// Connects a DEALER with a fresh UUID4 identity.
    pub fn connect(ctx: &zmq::Context, addr: &str) -> Result<Sender, SenderError> {
        Self::connect_with(ctx, addr, emq_protocol::new_msgid(), 100_000)
    }

    /// Connects a DEALER with the given identity and high-water mark.
    pub fn connect_with(ctx: &zmq::Context, addr: &str, identity: String, hwm: i32) -> Result<Sender, SenderError> {
        let socket = Self::open(ctx, addr, &identity, hwm)?;
        Ok(Sender { ctx: ctx.clone(), socket, addr: addr.to_owned(), identity, hwm })
    }

    fn open(ctx: &zmq::Context, addr: &str, identity: &str, hwm: i32) -> Result<zmq::Socket, SenderError> {
        let socket = ctx.socket(zmq::DEALER)?;
        socket.set_identity(identity.as_bytes())?;
        socket.set_sndhwm(hwm)?;
        socket.set_rcvhwm(hwm)?;
        socket.set_linger(1000)?;
        socket.set_reconnect_ivl(100)?;
        socket.set_reconnect_ivl_max(2000)?;
        socket.connect(addr).map_err(|source| SenderError::Connect { addr: addr.to_owned(), source })?;
        Ok(socket)
    }

    /// This socket's identity as the router sees it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The underlying socket, for polling.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// Drops the socket and connects a new one to `addr` under a new
    /// identity (the router must treat it as a new peer).
    pub fn reconnect(&mut self, addr: &str) -> Result<(), SenderError> {
        let identity = emq_protocol::new_msgid();
        let socket = Self::open(&self.ctx, addr, &identity, self.hwm)?;
        // Pending outgoing frames of the old identity are discarded: the
        // router forgot that identity anyway.
        let _ = self.socket.set_linger(0);
        self.socket = socket;
        self.identity = identity;
        self.addr = addr.to_owned();
        Ok(())
    }

    /// Connects a new socket to the same address under a new identity.
    /// The old socket is dropped with its linger, so messages already sent
    /// on it still leave: a reconnect loses no job. (Reusing the identity
    /// would let the router's handover cut the old connection while a
    /// message is still on it.)
    pub fn reopen(&mut self) -> Result<(), SenderError> {
        let identity = emq_protocol::new_msgid();
        let socket = Self::open(&self.ctx, &self.addr, &identity, self.hwm)?;
        self.socket = socket;
        self.identity = identity;
        Ok(())
    }

    /// Watches this socket's connection: a [`ConnectionWatch`] reports each
    /// time the TCP connection drops and comes back (a restarted router
    /// accepts the reconnect, but does not know the peer yet).
    pub fn watch_connection(&self) -> Result<ConnectionWatch, SenderError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let endpoint = format!("inproc://emq-sender-monitor-{}-{n}", std::process::id());
        let events = zmq::SocketEvent::CONNECTED.to_raw() as i32 | zmq::SocketEvent::DISCONNECTED.to_raw() as i32;
        self.socket.monitor(&endpoint, events)?;
        let pair = self.ctx.socket(zmq::PAIR)?;
        pair.connect(&endpoint)?;
        Ok(ConnectionWatch { socket: pair, disconnected: false })
    }

    /// Sends a message; blocks only when the pipe is at its high-water mark.
    pub fn send(&self, message: &Message) -> Result<(), SenderError> {
        self.socket.send_multipart(message.to_frames(), 0)?;
        Ok(())
    }

    /// Sends without blocking; `Ok(false)` when the pipe is full.
    pub fn try_send(&self, message: &Message) -> Result<bool, SenderError> {
        match self.socket.send_multipart(message.to_frames(), zmq::DONTWAIT) {
            Ok(()) => Ok(true),
            Err(zmq::Error::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one message without blocking: `Ok(None)` when nothing waits.
    pub fn try_recv(&self) -> Result<Option<Result<Message, DecodeError>>, SenderError> {
        match self.socket.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => Ok(Some(Message::from_frames(&frames))),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout_ms` (−1: forever) for one message.
    pub fn recv_timeout(&self, timeout_ms: i64) -> Result<Option<Result<Message, DecodeError>>, SenderError> {
        if self.socket.poll(zmq::POLLIN, timeout_ms)? == 0 {
            return Ok(None);
        }
        self.try_recv()
    }
}

/// What happened to a watched connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Connected again after a disconnect (the first connect is not reported).
    Reconnected,
    Disconnected,
}

/// ZeroMQ's socket monitor for one [`Sender`], read without blocking.
pub struct ConnectionWatch {
    socket: zmq::Socket,
    disconnected: bool,
}

impl ConnectionWatch {
    /// For polling.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The events since the last call.
    pub fn events(&mut self) -> Vec<ConnectionEvent> {
        let mut out = Vec::new();
        while let Ok(frames) = self.socket.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = frames.first().filter(|f| f.len() >= 2) else { continue };
            let event = u16::from_le_bytes([head[0], head[1]]);
            if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                self.disconnected = true;
                out.push(ConnectionEvent::Disconnected);
            } else if event == zmq::SocketEvent::CONNECTED.to_raw() && self.disconnected {
                self.disconnected = false;
                out.push(ConnectionEvent::Reconnected);
            }
        }
        out
    }
}
