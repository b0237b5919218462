//! # emq-sender — the connecting DEALER side of eMQP
//!
//! Owns: a DEALER socket with its own identity (a UUID4 string, as EventMQ
//! uses), connecting to one address, sending and receiving typed
//! [`Message`]s, and reconnecting — under a new identity, as EventMQ's job
//! manager does after losing its router, so the router sees a new peer.
//!
//! Optionally a CURVE client ([`Sender::connect_curve`]): encrypted, and
//! authenticated by its key pair to a router that knows its public key. The
//! keys are kept, so [`Sender::reconnect`] and [`Sender::reopen`] stay
//! CURVE clients.
//!
//! Also [`io_context`]: the ZeroMQ context the router and the job manager
//! make, whose own threads ([`IoThreads`]) go `SCHED_BATCH` while their
//! owner has work waiting.
//!
//! Does not own: what the messages mean (job manager, clients), heartbeat
//! timing, or failover policy.

use emq_protocol::{DecodeError, Message};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// ZeroMQ's own threads (the I/O thread that does the socket reads and
/// writes, and the reaper) in a context made by [`io_context`]: normal
/// threads while the machine has room, `SCHED_BATCH` while the owner says
/// it is saturated ([`IoThreads::follow_load`]).
///
/// Why: each send into an idle connection wakes the I/O thread, and a
/// normal thread woken on a busy core pre-empts what runs there — the
/// router's or job manager's own loop in the middle of its pass (then the
/// I/O thread wakes again for the pass's next send), or a worker running a
/// job. A batch thread is not pre-empted for: it runs when that core's
/// thread sleeps (the loop, at the end of its pass, by then with every
/// message of the pass to write) or at the next tick. That is what a
/// saturated machine wants (measured with every core running 1 ms jobs:
/// context switches per job 3.3 → 2.1, the router loop's pre-emptions per
/// job 0.5 → 0.2; scenario 2, no-op jobs, +16 %), and what an idle one
/// does not: one job at a time, the message then waits for the rest of the
/// pass (scenario 3's p50 +60 µs). So the owner switches: batch while it
/// has work waiting (the router: jobs buffered; the job manager: jobs
/// queued past its workers), normal again once it has had none for
/// [`IoThreads::CALM`].
pub struct IoThreads {
    tids: Vec<nix::libc::pid_t>,
    batch: bool,
    last_saturated: Option<std::time::Instant>,
}

impl IoThreads {
    /// How long the owner must have had no work waiting before ZeroMQ's
    /// threads are normal again (no switching back and forth per pass).
    pub const CALM: std::time::Duration = std::time::Duration::from_millis(50);

    /// Batch while `saturated`, normal once it has not been for
    /// [`Self::CALM`]. A syscall per thread only when the policy changes.
    pub fn follow_load(&mut self, saturated: bool, now: std::time::Instant) {
        if saturated {
            self.last_saturated = Some(now);
            if !self.batch {
                self.set(true);
            }
        } else if self.batch && self.last_saturated.is_none_or(|t| now.duration_since(t) >= Self::CALM) {
            self.set(false);
        }
    }

    /// Whether ZeroMQ's threads are batch now.
    pub fn is_batch(&self) -> bool {
        self.batch
    }

    /// The threads' ids (tests).
    pub fn tids(&self) -> &[nix::libc::pid_t] {
        &self.tids
    }

    fn set(&mut self, batch: bool) {
        use nix::libc;
        let param = libc::sched_param { sched_priority: 0 };
        let policy = if batch { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
        for &tid in &self.tids {
            // SAFETY: sched_setscheduler on a thread of this process by id,
            // with a valid sched_param. A thread that is gone (ESRCH) or a
            // sandbox that refuses the call leaves things as they were.
            unsafe { libc::sched_setscheduler(tid, policy, &param) };
        }
        self.batch = batch;
    }
}

/// This process's thread ids.
fn thread_ids() -> std::collections::BTreeSet<nix::libc::pid_t> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// A ZeroMQ context with its threads started, and those threads (see
/// [`IoThreads`]). ZeroMQ starts them with a context's first socket: the
/// threads that appear around a throw-away socket are its. (A thread
/// another part of the process starts at that very moment would be taken
/// for one of them: it would share their policy, no more.)
pub fn io_context() -> (zmq::Context, IoThreads) {
    let ctx = zmq::Context::new();
    let before = thread_ids();
    drop(ctx.socket(zmq::PAIR));
    let tids = thread_ids().difference(&before).copied().collect();
    (ctx, IoThreads { tids, batch: false, last_saturated: None })
}

/// Socket-level failures.
#[derive(Debug, Error)]
pub enum SenderError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: zmq::Error },
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    /// A key is not 40 Z85 characters (or its file cannot be read).
    #[error("invalid CURVE key {0}")]
    InvalidKey(String),
    /// The libzmq in this build has no CURVE (built without libsodium).
    #[error("this libzmq has no CURVE support (built without libsodium)")]
    CurveUnsupported,
}

/// Z85's alphabet: libzmq's decoder accepts other characters silently.
const Z85_CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Decodes a 40-character Z85 key; `what` names it in the error.
fn z85_key(text: &str, what: &str) -> Result<[u8; 32], SenderError> {
    let text = text.trim();
    let bad = || SenderError::InvalidKey(what.to_owned());
    if text.len() != 40 || !text.bytes().all(|b| Z85_CHARS.contains(&b)) {
        return Err(bad());
    }
    zmq::z85_decode(text).map_err(|_| bad())?.try_into().map_err(|_| bad())
}

/// Reads a key file as `emq keygen` writes them: the first line that is
/// neither empty nor a `#` comment, in Z85.
fn key_file(path: &Path) -> Result<[u8; 32], SenderError> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SenderError::InvalidKey(format!("{what}: {e}")))?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    z85_key(line, &what)
}

/// The keys a CURVE client needs: the server's public key (to know it talks
/// to the right router) and its own key pair (whose public half the
/// router's allow-list names). Binary, 32 bytes each.
#[derive(Clone, PartialEq, Eq)]
pub struct CurveClientKeys {
    pub server_public: [u8; 32],
    pub public: [u8; 32],
    pub secret: [u8; 32],
}

impl CurveClientKeys {
    /// From the three keys in Z85 text.
    pub fn from_z85(server_public: &str, public: &str, secret: &str) -> Result<Self, SenderError> {
        Ok(CurveClientKeys {
            server_public: z85_key(server_public, "(server public key)")?,
            public: z85_key(public, "(client public key)")?,
            secret: z85_key(secret, "(client secret key)")?,
        })
    }

    /// From key files: the server's `.pub`, and this client's `NAME.pub`
    /// and `NAME.key` (as `emq keygen` writes them).
    pub fn from_files(server_public: &Path, public: &Path, secret: &Path) -> Result<Self, SenderError> {
        Ok(CurveClientKeys {
            server_public: key_file(server_public)?,
            public: key_file(public)?,
            secret: key_file(secret)?,
        })
    }

    /// From `DIR/NAME.pub` and `DIR/NAME.key`, plus the server's public key
    /// file.
    pub fn from_key_dir(server_public: &Path, dir: &Path, name: &str) -> Result<Self, SenderError> {
        let stem: PathBuf = dir.join(name);
        Self::from_files(server_public, &stem.with_extension("pub"), &stem.with_extension("key"))
    }
}

impl fmt::Debug for CurveClientKeys {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurveClientKeys(..)")
    }
}

/// A connected DEALER socket speaking eMQP.
pub struct Sender {
    ctx: zmq::Context,
    socket: zmq::Socket,
    addr: String,
    identity: String,
    hwm: i32,
    /// Kept for reconnects: a new socket must be a CURVE client too.
    curve: Option<CurveClientKeys>,
}

impl Sender {
    /// Connects a DEALER with a fresh UUID4 identity.
    pub fn connect(ctx: &zmq::Context, addr: &str) -> Result<Sender, SenderError> {
        Self::connect_with(ctx, addr, emq_protocol::new_msgid(), 100_000)
    }

    /// Connects a DEALER with the given identity and high-water mark.
    pub fn connect_with(ctx: &zmq::Context, addr: &str, identity: String, hwm: i32) -> Result<Sender, SenderError> {
        let socket = Self::open(ctx, addr, &identity, hwm, None)?;
        Ok(Sender { ctx: ctx.clone(), socket, addr: addr.to_owned(), identity, hwm, curve: None })
    }

    /// Connects a DEALER as a CURVE client with `keys` (encrypted; the
    /// router admits it only if its allow-list has `keys.public`). A router
    /// that refuses the key, or is not a CURVE server, never sees a
    /// message: ZeroMQ keeps retrying the handshake quietly, so the caller
    /// notices only by silence (no reply).
    pub fn connect_curve(
        ctx: &zmq::Context,
        addr: &str,
        identity: String,
        hwm: i32,
        keys: &CurveClientKeys,
    ) -> Result<Sender, SenderError> {
        if zmq::has("curve") != Some(true) {
            return Err(SenderError::CurveUnsupported);
        }
        let socket = Self::open(ctx, addr, &identity, hwm, Some(keys))?;
        Ok(Sender { ctx: ctx.clone(), socket, addr: addr.to_owned(), identity, hwm, curve: Some(keys.clone()) })
    }

    fn open(
        ctx: &zmq::Context,
        addr: &str,
        identity: &str,
        hwm: i32,
        curve: Option<&CurveClientKeys>,
    ) -> Result<zmq::Socket, SenderError> {
        let socket = ctx.socket(zmq::DEALER)?;
        if let Some(k) = curve {
            // Must precede connect: the mechanism is fixed per connection.
            socket.set_curve_serverkey(&k.server_public)?;
            socket.set_curve_publickey(&k.public)?;
            socket.set_curve_secretkey(&k.secret)?;
        }
        socket.set_identity(identity.as_bytes())?;
        socket.set_sndhwm(hwm)?;
        socket.set_rcvhwm(hwm)?;
        socket.set_linger(1000)?;
        socket.set_reconnect_ivl(100)?;
        // A standby that takes over binds within seconds: find it within
        // half a second, not after an exponential back-off.
        socket.set_reconnect_ivl_max(500)?;
        // `A,B`: a router and its standbys. Only a connection that is up
        // takes messages (a standby binds nothing), so whichever leads
        // gets them; a message never waits at one that is down.
        let addrs: Vec<&str> = addr.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        if addrs.len() > 1 {
            socket.set_immediate(true)?;
            // With none of them up a send would wait for ever: give up
            // after a second (the caller's loop tries again).
            socket.set_sndtimeo(1000)?;
        }
        for a in addrs {
            socket.connect(a).map_err(|source| SenderError::Connect { addr: a.to_owned(), source })?;
        }
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

    /// Whether this is a CURVE client.
    pub fn is_curve(&self) -> bool {
        self.curve.is_some()
    }

    /// Drops the socket and connects a new one to `addr` under a new
    /// identity (the router must treat it as a new peer).
    pub fn reconnect(&mut self, addr: &str) -> Result<(), SenderError> {
        let identity = emq_protocol::new_msgid();
        let socket = Self::open(&self.ctx, addr, &identity, self.hwm, self.curve.as_ref())?;
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
        let socket = Self::open(&self.ctx, &self.addr, &identity, self.hwm, self.curve.as_ref())?;
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

    /// Stops the monitor [`Self::watch_connection`] started. Must come
    /// before its [`ConnectionWatch`] is dropped while this socket lives on
    /// (e.g. lingering after close): libzmq sends monitor events with a
    /// blocking send from its I/O thread, and an event for a PAIR nobody
    /// reads any more blocks that thread — and with it every connection of
    /// the context — for good.
    pub fn stop_watching(&mut self) {
        // SAFETY: a live socket pointer; a NULL endpoint is libzmq's
        // documented way to stop monitoring.
        unsafe {
            zmq_sys::zmq_socket_monitor(self.socket.as_mut_ptr(), std::ptr::null(), 0);
        }
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

/// Whether something listens at a `tcp://host:port` address, asked once
/// with a plain TCP connect (a quick look before anything is sent, so a
/// wrong address is said at once instead of as a silence later).
/// `Err` only for a definite no — the connection refused, or a name that
/// does not resolve — with a line saying so; any other transport, or an
/// answer that is not a definite no (a slow network, a time-out), is `Ok`:
/// ZeroMQ keeps trying then, as it should.
pub fn refuses_connections(addr: &str) -> Result<(), String> {
    // `A,B`: fine when any of them is.
    if addr.contains(',') {
        let mut last = Ok(());
        for a in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            last = refuses_connections(a);
            if last.is_ok() {
                return Ok(());
            }
        }
        return last;
    }
    use std::net::{TcpStream, ToSocketAddrs};
    let Some(hostport) = addr.strip_prefix("tcp://") else { return Ok(()) };
    let targets: Vec<_> = match hostport.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return Err(format!("no router at {addr}: cannot resolve {hostport:?} ({e})")),
    };
    let mut refused = 0;
    for a in &targets {
        match TcpStream::connect_timeout(a, std::time::Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => {}
        }
    }
    if refused > 0 && refused == targets.len() {
        Err(format!("no router at {addr}: connection refused"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod probe_tests {
    use super::refuses_connections;

    #[test]
    fn a_closed_port_is_refused_and_an_open_one_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = format!("tcp://{}", l.local_addr().unwrap());
        assert_eq!(refuses_connections(&open), Ok(()));
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l2.local_addr().unwrap().port();
        drop(l2);
        let closed = format!("tcp://127.0.0.1:{port}");
        let e = refuses_connections(&closed).unwrap_err();
        assert_eq!(e, format!("no router at {closed}: connection refused"));
        assert_eq!(refuses_connections("ipc:///tmp/x"), Ok(()), "only tcp is looked at");
        assert_eq!(refuses_connections(&format!("{closed},{open}")), Ok(()), "one of a list answers");
        assert!(refuses_connections(&format!("{closed},{closed}")).is_err());
    }
}

#[cfg(test)]
mod io_context_tests {
    use super::{io_context, IoThreads};
    use nix::libc;
    use std::time::{Duration, Instant};

    fn policies(t: &IoThreads) -> Vec<i32> {
        // SAFETY: reads policies of this process's threads by id.
        t.tids().iter().map(|&tid| unsafe { libc::sched_getscheduler(tid) }).collect()
    }

    #[test]
    fn zeromq_threads_go_batch_under_load_and_back_when_calm() {
        let (ctx, mut io) = io_context();
        // The I/O thread and the reaper (other tests may start threads
        // at the same moment; those would be counted too).
        assert!(io.tids().len() >= 2, "threads found: {:?}", io.tids());
        assert!(policies(&io).iter().all(|&p| p == libc::SCHED_OTHER), "normal at first");
        let t0 = Instant::now();
        io.follow_load(true, t0);
        assert!(io.is_batch());
        assert!(policies(&io).iter().all(|&p| p == libc::SCHED_BATCH), "batch under load: {:?}", policies(&io));
        io.follow_load(false, t0 + Duration::from_millis(10));
        assert!(io.is_batch(), "not back before CALM");
        io.follow_load(false, t0 + IoThreads::CALM);
        assert!(!io.is_batch());
        assert!(policies(&io).iter().all(|&p| p == libc::SCHED_OTHER), "normal again: {:?}", policies(&io));
        // SAFETY: reads the calling thread's policy.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER, "the caller was never touched");
        // And the context works.
        let a = ctx.socket(zmq::PAIR).unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        a.bind("inproc://io-context-test").unwrap();
        b.connect("inproc://io-context-test").unwrap();
        b.send("x", 0).unwrap();
        assert_eq!(a.recv_bytes(0).unwrap(), b"x");
    }
}
