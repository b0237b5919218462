//! # CURVE on the bound side: keys, allow-lists and the ZAP handler
//!
//! ZeroMQ's CURVE mechanism encrypts a connection and proves that the
//! client holds the secret key behind its public key. It does not decide
//! *which* public keys may connect: libzmq asks a ZAP handler (ZeroMQ RFC 27)
//! served on `inproc://zeromq.zap.01` in the same context. [`ZapHandler`] is
//! that handler: one allow-list per ZAP domain (one domain per socket —
//! frontend, backend, admin), answering "200" with the key's *name* as the
//! user id when the client's public key is listed, "400" otherwise. libzmq
//! then attaches the user id to every message from that peer as the
//! `User-Id` property, which [`crate::Receiver::try_recv`] returns in
//! [`crate::Incoming::user`].
//!
//! Without a running handler libzmq lets every CURVE client in (ZAP is
//! optional in libzmq 4.3), which is why [`crate::Receiver::bind_curve`]
//! takes a `&ZapHandler`: a CURVE socket cannot be bound with nobody
//! checking its clients.
//!
//! Key files (written by `emq keygen`, read here): one Z85 line (40
//! characters, ZeroMQ's text form of a 32-byte key) per file; `NAME.pub`
//! holds the public key, `NAME.key` the secret key. Empty lines and lines
//! starting with `#` are ignored, so keys can carry a comment.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use thiserror::Error;

/// The endpoint libzmq sends ZAP requests to (fixed by RFC 27).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// Z85's alphabet: libzmq's decoder silently accepts other characters (and
/// decodes them to garbage), so keys are checked against it first.
const Z85_CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Failures around keys, allow-lists and the ZAP handler.
#[derive(Debug, Error)]
pub enum CurveError {
    /// The libzmq in this build has no CURVE (built without libsodium).
    #[error("this libzmq has no CURVE support (built without libsodium)")]
    Unsupported,
    /// A key is not 40 Z85 characters.
    #[error("invalid CURVE key{}: expected 40 Z85 characters", .0.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    InvalidKey(Option<PathBuf>),
    /// A key file or directory could not be read or written. (The field
    /// is not named `source`, so `{:#}` chains do not print it twice.)
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// Two entries of one allow-list share a name or a key: a user id must
    /// name exactly one key.
    #[error("duplicate allow-list entry {0:?}")]
    Duplicate(String),
    /// A key name that cannot be a file stem or a user id.
    #[error("invalid key name {0:?}: use letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    /// The ZAP endpoint is taken: another handler already runs in this
    /// context (libzmq allows one per context).
    #[error("cannot start the ZAP handler: {0}")]
    ZapBind(zmq::Error),
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// A 32-byte CURVE key (public or secret), kept in binary form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Parses the 40-character Z85 text form.
    pub fn from_z85(text: &str) -> Result<Key, CurveError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Key, CurveError> {
        let bad = || CurveError::InvalidKey(path.map(Path::to_path_buf));
        let text = text.trim();
        if text.len() != 40 || !text.bytes().all(|b| Z85_CHARS.contains(&b)) {
            return Err(bad());
        }
        let bytes = zmq::z85_decode(text).map_err(|_| bad())?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Key(key))
    }

    /// Reads a key file: the first line that is neither empty nor a `#`
    /// comment.
    pub fn from_file(path: &Path) -> Result<Key, CurveError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CurveError::Io { path: path.to_owned(), error: source })?;
        let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
        Self::parse(line, Some(path))
    }

    /// The 40-character Z85 text form.
    pub fn to_z85(&self) -> String {
        // 32 bytes is a multiple of 4: encoding cannot fail.
        zmq::z85_encode(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for Key {
    /// Never prints the bytes: a secret key must not end up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Whether this build's libzmq can do CURVE. It can when built through the
/// workspace's patched zmq-sys (libzmq with libsodium).
pub fn curve_available() -> bool {
    zmq::has("curve") == Some(true)
}

/// A key name: used as a file stem and as the peer's user id in logs, so
/// kept to a plain, printable set.
pub fn check_name(name: &str) -> Result<(), CurveError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CurveError::InvalidName(name.to_owned()))
    }
}

/// The files [`write_key_pair`] wrote.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// `DIR/NAME.pub`: the public key, to hand to the other side.
    pub public_path: PathBuf,
    /// `DIR/NAME.key`: the secret key, mode 0600.
    pub secret_path: PathBuf,
    /// The public key.
    pub public: Key,
}

/// Generates a key pair and writes `DIR/NAME.pub` and `DIR/NAME.key` (mode
/// 0600, created with that mode so it is never readable by others, even
/// briefly). Existing files are not overwritten: replacing a key by mistake
/// locks its holders out.
pub fn write_key_pair(dir: &Path, name: &str) -> Result<KeyFiles, CurveError> {
    use std::os::unix::fs::OpenOptionsExt;
    check_name(name)?;
    if !curve_available() {
        return Err(CurveError::Unsupported);
    }
    let pair = zmq::CurveKeyPair::new()?;
    let (public, secret) = (Key(pair.public_key), Key(pair.secret_key));
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CurveError + '_ {
        move |source| CurveError::Io { path: path.to_owned(), error: source }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let public_path = dir.join(format!("{name}.pub"));
    let secret_path = dir.join(format!("{name}.key"));
    for p in [&public_path, &secret_path] {
        if p.exists() {
            return Err(CurveError::Io {
                path: p.clone(),
                error: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists (not overwritten)"),
            });
        }
    }
    let write = |path: &Path, mode: u32, key: &Key| -> Result<(), CurveError> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io(path))?;
        writeln!(f, "{key}").map_err(io(path))?;
        f.sync_all().map_err(io(path))
    };
    write(&secret_path, 0o600, &secret)?;
    write(&public_path, 0o644, &public)?;
    Ok(KeyFiles { public_path, secret_path, public })
}

/// The client public keys allowed on one socket, each with a name (the
/// user id the router reports for that peer).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    by_key: HashMap<Key, String>,
}

impl AllowList {
    /// An empty list: refuses everyone.
    pub fn new() -> AllowList {
        AllowList::default()
    }

    /// Adds `name` with its public key in Z85.
    pub fn insert(&mut self, name: &str, public_z85: &str) -> Result<(), CurveError> {
        self.insert_key(name, Key::from_z85(public_z85)?)
    }

    /// Adds `name` with its public key.
    pub fn insert_key(&mut self, name: &str, key: Key) -> Result<(), CurveError> {
        check_name(name)?;
        if self.by_key.contains_key(&key) || self.by_key.values().any(|n| n == name) {
            return Err(CurveError::Duplicate(name.to_owned()));
        }
        self.by_key.insert(key, name.to_owned());
        Ok(())
    }

    /// Builds a list from `(name, public_key_z85)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<AllowList, CurveError> {
        let mut list = AllowList::new();
        for (name, key) in pairs {
            list.insert(name, key)?;
        }
        Ok(list)
    }

    /// Loads every `*.pub` file of `dir` (name = file stem). Other files
    /// are ignored, so a directory may also hold secret keys or notes; an
    /// unreadable or malformed `.pub` file is an error, not a silent skip
    /// (a typo must not lock a client out without a word).
    pub fn from_dir(dir: &Path) -> Result<AllowList, CurveError> {
        let io = |error| CurveError::Io { path: dir.to_owned(), error };
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
        paths.sort();
        let mut list = AllowList::new();
        for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "pub") && p.is_file()) {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            list.insert_key(name, Key::from_file(path)?)?;
        }
        Ok(list)
    }

    /// The name of `key`, when allowed.
    pub fn name_of(&self, key: &Key) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when nobody is allowed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The names, sorted (for logs and status pages).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_key.values().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// The allow-lists per ZAP domain, shared between the handler thread and
/// the owner who reloads them.
type Domains = Arc<RwLock<HashMap<String, AllowList>>>;

/// The ZAP handler of one ZeroMQ context: a thread answering libzmq's
/// authentication requests from the allow-list of the request's domain.
/// Unknown domains, other mechanisms than CURVE and malformed requests are
/// refused. Stopped (and its thread joined) on drop.
pub struct ZapHandler {
    domains: Domains,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the handler thread looks at its stop flag while idle: the
/// bound on how long dropping the handler takes.
const ZAP_POLL_MS: i64 = 100;

impl ZapHandler {
    /// Binds `inproc://zeromq.zap.01` in `ctx` and starts the thread. Start
    /// it before binding CURVE sockets in the same context (libzmq only
    /// consults a handler that exists when a client connects).
    pub fn start(ctx: &zmq::Context) -> Result<ZapHandler, CurveError> {
        if !curve_available() {
            return Err(CurveError::Unsupported);
        }
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT).map_err(CurveError::ZapBind)?;
        let domains: Domains = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (domains, stop) = (domains.clone(), stop.clone());
            std::thread::Builder::new()
                .name("emq-zap".into())
                .spawn(move || serve(socket, domains, stop))
                .map_err(|e| CurveError::Io { path: PathBuf::from("emq-zap thread"), error: e })?
        };
        Ok(ZapHandler { domains, stop, thread: Some(thread) })
    }

    /// Sets (or replaces: this is the reload) the allow-list of `domain`.
    /// Takes effect for the next connection; peers already authenticated
    /// stay connected until they reconnect.
    pub fn set_domain(&self, domain: &str, list: AllowList) {
        self.domains.write().unwrap_or_else(|e| e.into_inner()).insert(domain.to_owned(), list);
    }

    /// Forgets `domain`: every new connection to it is refused.
    pub fn remove_domain(&self, domain: &str) {
        self.domains.write().unwrap_or_else(|e| e.into_inner()).remove(domain);
    }

    /// The names allowed in `domain` (`None`: unknown domain).
    pub fn names(&self, domain: &str) -> Option<Vec<String>> {
        let d = self.domains.read().unwrap_or_else(|e| e.into_inner());
        d.get(domain).map(|l| l.names().into_iter().map(str::to_owned).collect())
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: zmq::Socket, domains: Domains, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match socket.poll(zmq::POLLIN, ZAP_POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            // ETERM: the context is going away; nothing more to serve.
            Err(_) => return,
        }
        let request = match socket.recv_multipart(0) {
            Ok(r) => r,
            Err(zmq::Error::EINTR) | Err(zmq::Error::EAGAIN) => continue,
            Err(_) => return,
        };
        let reply = answer(&request, &domains);
        if socket.send_multipart(reply, 0).is_err() {
            return;
        }
    }
}

/// RFC 27 request: version, request id, domain, address, identity,
/// mechanism, credentials…; reply: version, request id, status code, status
/// text, user id, metadata.
fn answer(request: &[Vec<u8>], domains: &Domains) -> Vec<Vec<u8>> {
    let reply = |id: &[u8], code: &str, text: &str, user: &str| {
        vec![
            b"1.0".to_vec(),
            id.to_vec(),
            code.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            user.as_bytes().to_vec(),
            Vec::new(),
        ]
    };
    let id = request.get(1).map(Vec::as_slice).unwrap_or(b"");
    if request.len() < 6 || request[0] != b"1.0" {
        return reply(id, "500", "malformed ZAP request", "");
    }
    let domain = String::from_utf8_lossy(&request[2]);
    if request[5] != b"CURVE" {
        return reply(id, "400", "only CURVE is accepted", "");
    }
    let Some(key) = request.get(6).and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()) else {
        return reply(id, "500", "malformed CURVE credentials", "");
    };
    let d = domains.read().unwrap_or_else(|e| e.into_inner());
    match d.get(domain.as_ref()).and_then(|l| l.name_of(&Key(key))) {
        Some(name) => reply(id, "200", "OK", name),
        None => reply(id, "400", "unknown key", ""),
    }
}

/// A bound socket's CURVE server settings: its secret key and the ZAP
/// domain whose allow-list admits its clients.
#[derive(Clone)]
pub struct CurveServer {
    /// The server's secret key (clients are given the public one).
    pub secret: Key,
    /// The ZAP domain, e.g. `frontend`, `backend`, `admin`: one per socket,
    /// so each socket has its own allow-list.
    pub domain: String,
}

impl fmt::Debug for CurveServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurveServer").field("domain", &self.domain).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libzmq_has_curve() {
        assert_eq!(zmq::has("curve"), Some(true), "the patched zmq-sys must build libzmq with libsodium");
        assert!(curve_available());
    }

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let pair = zmq::CurveKeyPair::new().unwrap();
        let k = Key(pair.public_key);
        assert_eq!(Key::from_z85(&k.to_z85()).unwrap(), k);
        assert!(Key::from_z85("short").is_err());
        assert!(Key::from_z85(&"\"".repeat(40)).is_err());
        assert_eq!(format!("{k:?}"), "Key(..)");
    }

    #[test]
    fn keygen_files_and_dir_allow_list() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("emq-curve-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = write_key_pair(&dir, "alice").unwrap();
        let b = write_key_pair(&dir, "bob").unwrap();
        assert!(write_key_pair(&dir, "alice").is_err(), "never overwrites");
        assert!(write_key_pair(&dir, "../x").is_err());
        let mode = std::fs::metadata(&a.secret_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let list = AllowList::from_dir(&dir).unwrap();
        assert_eq!(list.names(), ["alice", "bob"]);
        assert_eq!(list.name_of(&a.public), Some("alice"));
        assert_eq!(list.name_of(&b.public), Some("bob"));
        assert_eq!(Key::from_file(&a.public_path).unwrap(), a.public);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn zap_answers() {
        let pair = zmq::CurveKeyPair::new().unwrap();
        let domains: Domains = Arc::default();
        domains
            .write()
            .unwrap()
            .insert("fe".into(), AllowList::from_pairs([("alice", Key(pair.public_key).to_z85().as_str())]).unwrap());
        let req = |domain: &str, mech: &str, cred: &[u8]| {
            vec![
                b"1.0".to_vec(),
                b"7".to_vec(),
                domain.into(),
                b"127.0.0.1".to_vec(),
                vec![],
                mech.into(),
                cred.to_vec(),
            ]
        };
        let r = answer(&req("fe", "CURVE", &pair.public_key), &domains);
        assert_eq!((r[2].as_slice(), r[4].as_slice()), (&b"200"[..], &b"alice"[..]));
        assert_eq!(r[1], b"7");
        assert_eq!(answer(&req("be", "CURVE", &pair.public_key), &domains)[2], b"400");
        assert_eq!(answer(&req("fe", "CURVE", &[1; 32]), &domains)[2], b"400");
        assert_eq!(answer(&req("fe", "NULL", &[]), &domains)[2], b"400");
        assert_eq!(answer(&req("fe", "CURVE", &[1; 3]), &domains)[2], b"500");
        assert_eq!(answer(&[b"2.0".to_vec()], &domains)[2], b"500");
    }
}
