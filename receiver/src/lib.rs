//! # emq-receiver — the bound ROUTER side of eMQP
//!
//! Owns: a bound ZeroMQ ROUTER socket with `ROUTER_MANDATORY` set, the peer
//! identity frame ([`PeerId`]), decoding of incoming frames into typed
//! [`Message`]s (or a typed decode error tied to the peer), and typed sends
//! whose failures are typed too: a vanished peer is
//! [`SendError::Unreachable`], a full pipe is [`SendError::WouldBlock`] (the
//! caller keeps the message and retries — never drops it).
//!
//! Optionally a CURVE server ([`Receiver::bind_curve`], module [`curve`]):
//! encrypted connections, clients admitted by a ZAP handler from a per-socket
//! allow-list, and each message tagged with the client key's name
//! ([`Incoming::user`]). Plaintext stays the default.
//!
//! Does not own: what to do with a message (router state machine), retry
//! queues, or polling policy.

use emq_protocol::{DecodeError, Message};
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

pub mod curve;
pub use curve::{AllowList, CurveError, CurveServer, Key, ZapHandler};

/// A peer's routing identity (frame 0 as a ROUTER receives it). Cheap to
/// clone: the router keeps it in many records.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(Arc<[u8]>);

impl PeerId {
    /// The raw identity bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for PeerId {
    /// Looked up by its bytes (see [`PeerCache`]): hashes and compares as
    /// the bytes do.
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// The identities of peers seen lately, so every message from one peer
/// shares one [`PeerId`] allocation instead of a copy each: a million jobs
/// buffered from one client hold one identity, not a million (64 bytes per
/// buffered job saved). Bounded: past [`PeerCache::MAX`] entries those no
/// longer held anywhere else are dropped (all, if that is not enough).
#[derive(Default)]
pub struct PeerCache {
    peers: std::collections::HashSet<PeerId>,
}

impl PeerCache {
    /// Identities kept at most.
    pub const MAX: usize = 65_536;

    /// The shared [`PeerId`] for these identity bytes.
    pub fn intern(&mut self, bytes: &[u8]) -> PeerId {
        if let Some(p) = self.peers.get(bytes) {
            return p.clone();
        }
        if self.peers.len() >= Self::MAX {
            self.peers.retain(|p| Arc::strong_count(&p.0) > 1);
            if self.peers.len() >= Self::MAX / 2 {
                self.peers.clear();
            }
        }
        let p = PeerId::from(bytes);
        self.peers.insert(p.clone());
        p
    }
}

impl From<&[u8]> for PeerId {
    fn from(b: &[u8]) -> Self {
        PeerId(Arc::from(b))
    }
}

impl From<&str> for PeerId {
    fn from(s: &str) -> Self {
        PeerId(Arc::from(s.as_bytes()))
    }
}

impl fmt::Display for PeerId {
    /// UTF-8 identities (EventMQ's UUID strings) print as text, others as hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => f.write_str(s),
            _ => {
                f.write_str("0x")?;
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// What arrived from one peer: a typed message, or why it could not be read.
#[derive(Debug)]
pub struct Incoming {
    pub peer: PeerId,
    pub message: Result<Message, DecodeError>,
    /// On a CURVE socket: the name of the client's key, as the ZAP handler
    /// reported it (libzmq's `User-Id` message property) — who sent this,
    /// for logs and job records. `None` on plaintext sockets.
    pub user: Option<String>,
}

/// Socket-level failures.
#[derive(Debug, Error)]
pub enum ReceiverError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: zmq::Error },
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// CURVE was asked for but cannot be set up.
    #[error("CURVE: {0}")]
    Curve(#[from] CurveError),
}

/// Why a send did not happen. The message is handed back so nothing is lost.
#[derive(Debug, Error)]
pub enum SendError {
    /// The peer is not connected (EHOSTUNREACH under `ROUTER_MANDATORY`).
    #[error("peer {0} is unreachable")]
    Unreachable(PeerId),
    /// The peer's pipe is at its high-water mark; retry later.
    #[error("peer {0} would block (pipe full)")]
    WouldBlock(PeerId),
    /// Any other socket error.
    #[error("zmq send to {0}: {1}")]
    Zmq(PeerId, zmq::Error),
}

/// A bound ROUTER socket speaking eMQP.
pub struct Receiver {
    socket: zmq::Socket,
    addr: String,
    /// A CURVE server socket: messages carry a `User-Id` to read.
    curve: bool,
    /// Identities of recent senders, shared by their messages.
    peers: std::cell::RefCell<PeerCache>,
}

impl Receiver {
    /// Binds a ROUTER to `addr` (e.g. `tcp://127.0.0.1:47291`), with
    /// `ROUTER_MANDATORY` and the given high-water marks.
    pub fn bind(ctx: &zmq::Context, addr: &str, hwm: i32) -> Result<Receiver, ReceiverError> {
        Self::bind_inner(ctx, addr, hwm, -1, None)
    }

    /// [`Self::bind`], refusing messages larger than `max_message_bytes`
    /// (`ZMQ_MAXMSGSIZE`; -1 = no limit): a peer that sends one is
    /// disconnected before its message is held. Set before binding — the
    /// listener copies its options then.
    pub fn bind_with(
        ctx: &zmq::Context,
        addr: &str,
        hwm: i32,
        max_message_bytes: i64,
    ) -> Result<Receiver, ReceiverError> {
        Self::bind_inner(ctx, addr, hwm, max_message_bytes, None)
    }

    /// Binds a ROUTER like [`Receiver::bind_with`], as a CURVE server: only
    /// clients holding a key in the allow-list of `server.domain` (in
    /// `zap`, which must run in the same `ctx`) get through, encrypted, and
    /// each message says whose key it was ([`Incoming::user`]). Plaintext
    /// clients are refused by libzmq during the handshake. Taking the
    /// handler by reference keeps a CURVE socket from running unchecked
    /// (libzmq admits every key when no handler is bound).
    pub fn bind_curve(
        ctx: &zmq::Context,
        addr: &str,
        hwm: i32,
        server: &CurveServer,
        zap: &ZapHandler,
    ) -> Result<Receiver, ReceiverError> {
        Self::bind_curve_with(ctx, addr, hwm, -1, server, zap)
    }

    /// [`Self::bind_curve`] with a `max_message_bytes` limit.
    pub fn bind_curve_with(
        ctx: &zmq::Context,
        addr: &str,
        hwm: i32,
        max_message_bytes: i64,
        server: &CurveServer,
        zap: &ZapHandler,
    ) -> Result<Receiver, ReceiverError> {
        let _ = zap;
        if !curve::curve_available() {
            return Err(CurveError::Unsupported.into());
        }
        Self::bind_inner(ctx, addr, hwm, max_message_bytes, Some(server))
    }

    fn bind_inner(
        ctx: &zmq::Context,
        addr: &str,
        hwm: i32,
        max_message_bytes: i64,
        curve: Option<&CurveServer>,
    ) -> Result<Receiver, ReceiverError> {
        let socket = ctx.socket(zmq::ROUTER)?;
        if let Some(c) = curve {
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(&c.secret.0)?;
            socket.set_zap_domain(&c.domain)?;
        }
        socket.set_router_mandatory(true)?;
        // No handover: a newcomer that connects under a live peer's
        // identity must not take over its route (and its results). A
        // client that reconnects does so under a new identity and finds
        // its jobs by msgid and owner token.
        socket.set_router_handover(false)?;
        socket.set_maxmsgsize(max_message_bytes)?;
        socket.set_sndhwm(hwm)?;
        socket.set_rcvhwm(hwm)?;
        // Give KBYEs a moment to leave on shutdown, but never hang exit.
        socket.set_linger(500)?;
        socket.bind(addr).map_err(|source| ReceiverError::Bind { addr: addr.to_owned(), source })?;
        let addr = socket.get_last_endpoint().ok().and_then(|r| r.ok()).unwrap_or_else(|| addr.to_owned());
        Ok(Receiver { socket, addr, curve: curve.is_some(), peers: Default::default() })
    }

    /// The bound endpoint (with the real port when bound to `:0` / `*`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The underlying socket, for polling.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// Waits up to `limit` for one message (tools and tests; the router's
    /// poll loop uses [`Self::try_recv`]).
    pub fn recv_timeout(&self, limit: std::time::Duration) -> Result<Option<Incoming>, ReceiverError> {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            let left = end.saturating_duration_since(std::time::Instant::now()).as_millis().clamp(1, 50) as i64;
            if self.socket.poll(zmq::POLLIN, left)? > 0 {
                if let Some(m) = self.try_recv()? {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    /// Receives one message without blocking: `Ok(None)` when nothing is
    /// waiting. A message without an identity frame cannot happen on a
    /// ROUTER, but is reported as an empty peer rather than a panic.
    pub fn try_recv(&self) -> Result<Option<Incoming>, ReceiverError> {
        if self.curve {
            return self.try_recv_curve();
        }
        match self.socket.recv_multipart(zmq::DONTWAIT) {
            Ok(mut frames) => {
                let peer = if frames.is_empty() {
                    PeerId::from(&b""[..])
                } else {
                    self.peers.borrow_mut().intern(&frames.remove(0))
                };
                let message = Message::from_frames(&frames);
                Ok(Some(Incoming { peer, message, user: None }))
            }
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Receiver::try_recv`] on a CURVE socket: the identity frame is read
    /// as a `zmq::Message` to get at its `User-Id` property (which libzmq
    /// copies onto the identity frame from the peer's metadata); the rest
    /// as on the plain path. Kept apart so the plain path pays nothing.
    fn try_recv_curve(&self) -> Result<Option<Incoming>, ReceiverError> {
        let mut first = match self.socket.recv_msg(zmq::DONTWAIT) {
            Ok(m) => m,
            Err(zmq::Error::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut user = first.gets("User-Id").map(str::to_owned);
        let peer = self.peers.borrow_mut().intern(&first[..]);
        let mut frames = Vec::new();
        let mut more = first.get_more();
        while more {
            // The rest of a multipart message is already here (ZeroMQ
            // delivers messages whole): this does not block.
            let mut m = self.socket.recv_msg(0)?;
            if user.is_none() {
                user = m.gets("User-Id").map(str::to_owned);
            }
            more = m.get_more();
            frames.push(m.to_vec());
        }
        let message = Message::from_frames(&frames);
        Ok(Some(Incoming { peer, message, user: user.filter(|u| !u.is_empty()) }))
    }

    /// Whether this socket is a CURVE server.
    pub fn is_curve(&self) -> bool {
        self.curve
    }

    /// Sends `message` to `peer` without blocking.
    pub fn send(&self, peer: &PeerId, message: &Message) -> Result<(), SendError> {
        self.send_frames(peer, &message.to_frames())
    }

    /// Sends pre-encoded frames (from [`Message::to_frames`]) to `peer`.
    /// Under `ROUTER_MANDATORY` a failure shows up on the identity frame, so
    /// a message is either queued whole or not at all.
    pub fn send_frames(&self, peer: &PeerId, frames: &[Vec<u8>]) -> Result<(), SendError> {
        let flags = zmq::DONTWAIT | zmq::SNDMORE;
        if let Err(e) = self.socket.send(peer.as_bytes(), flags) {
            return Err(match e {
                zmq::Error::EHOSTUNREACH => SendError::Unreachable(peer.clone()),
                zmq::Error::EAGAIN => SendError::WouldBlock(peer.clone()),
                e => SendError::Zmq(peer.clone(), e),
            });
        }
        let last = frames.len().saturating_sub(1);
        for (i, f) in frames.iter().enumerate() {
            let flags = if i == last { zmq::DONTWAIT } else { zmq::DONTWAIT | zmq::SNDMORE };
            self.socket.send(&f[..], flags).map_err(|e| SendError::Zmq(peer.clone(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identity_is_one_allocation() {
        let mut c = PeerCache::default();
        let a = c.intern(b"client-1");
        let b = c.intern(b"client-1");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, PeerId::from("client-1"));
        assert!(!Arc::ptr_eq(&a.0, &c.intern(b"client-2").0));
    }

    #[test]
    fn the_cache_stays_bounded_and_keeps_identities_in_use() {
        let mut c = PeerCache::default();
        let held = c.intern(b"held");
        for i in 0..(3 * PeerCache::MAX) {
            c.intern(format!("peer-{i}").as_bytes());
            assert!(c.peers.len() <= PeerCache::MAX);
        }
        // Still shared unless everything had to go.
        let again = c.intern(b"held");
        assert_eq!(again, held);
    }
}
