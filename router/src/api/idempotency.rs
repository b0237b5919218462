//! `Idempotency-Key` (IETF draft `draft-ietf-httpapi-idempotency-key-header`):
//! what was answered to a key, kept for `idempotency_ttl` across restarts
//! (`data_dir/http-idempotency.log`, one JSON line per key), and which keys
//! are being answered right now.
//!
//! The job id itself is derived from the caller and the key
//! ([`derived_msgid`]), so a crash between the router's receipt and the log
//! line still gives the same job when the client tries again (the router
//! answers a msgid it holds with its receipt, never a second job).

use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Keys remembered at most (each line ~200 bytes: ~200 MB at most).
const MAX_KEYS: usize = 1_000_000;

pub const LOG_FILE: &str = "http-idempotency.log";

/// What a key was answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered {
    pub body_sha256: String,
    pub id: String,
    pub deduplicated: bool,
    pub at: f64,
}

/// What to do with a request that has a key.
#[derive(Debug, PartialEq)]
pub enum Check {
    /// New: go on (and call [`Keys::done`] or [`Keys::abandon`]).
    Proceed,
    /// Answered before with the same body.
    Replay(Remembered),
    /// Answered before with another body: 422.
    Mismatch,
    /// Being answered now: 409.
    InProgress,
}

#[derive(Default)]
struct Inner {
    done: HashMap<(String, String), Remembered>,
    busy: HashSet<(String, String)>,
    file: Option<std::fs::File>,
    lines: usize,
}

/// The keys of one router's HTTP endpoint.
pub struct Keys {
    inner: Mutex<Inner>,
    path: PathBuf,
    ttl: f64,
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The job id of a key: the same caller, key and body always give the
/// same id (a key reused after its ttl with another body is another job).
pub fn derived_msgid(owner: &str, key: &str, body_sha256: &str) -> String {
    let h = sha256_hex(format!("emq-idempotency\0{owner}\0{key}\0{body_sha256}").as_bytes());
    format!("idem-{}", &h[..40])
}

impl Keys {
    /// Reads the log in `dir` (entries past `ttl` dropped; the log is
    /// rewritten without them).
    pub fn open(dir: &std::path::Path, ttl: f64) -> Keys {
        let path = dir.join(LOG_FILE);
        let mut inner = Inner::default();
        let now = now_unix();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let (Some(owner), Some(key), Some(body), Some(id), Some(at)) =
                    (v["owner"].as_str(), v["key"].as_str(), v["body"].as_str(), v["id"].as_str(), v["at"].as_f64())
                else {
                    continue;
                };
                if now - at > ttl || inner.done.len() >= MAX_KEYS {
                    continue;
                }
                inner.done.insert(
                    (owner.to_owned(), key.to_owned()),
                    Remembered {
                        body_sha256: body.to_owned(),
                        id: id.to_owned(),
                        deduplicated: v["deduplicated"].as_bool().unwrap_or(false),
                        at,
                    },
                );
            }
        }
        let keys = Keys { inner: Mutex::new(inner), path, ttl };
        keys.rewrite();
        keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrites the log with the live entries only.
    fn rewrite(&self) {
        let mut inner = self.lock();
        let now = now_unix();
        let ttl = self.ttl;
        inner.done.retain(|_, r| now - r.at <= ttl);
        let mut text = String::new();
        for ((owner, key), r) in &inner.done {
            text.push_str(&line(owner, key, r));
        }
        let tmp = self.path.with_extension("log.tmp");
        let written = (|| -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::OpenOptions::new().append(true).open(&self.path)
        })();
        match written {
            Ok(f) => inner.file = Some(f),
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "idempotency log: cannot write it");
                inner.file = None;
            }
        }
        inner.lines = inner.done.len();
    }

    /// Where a request with `key` stands; marks it busy when new.
    pub fn check(&self, owner: &str, key: &str, body_sha256: &str) -> Check {
        let mut inner = self.lock();
        let k = (owner.to_owned(), key.to_owned());
        if inner.busy.contains(&k) {
            return Check::InProgress;
        }
        if let Some(r) = inner.done.get(&k) {
            if now_unix() - r.at <= self.ttl {
                return if r.body_sha256 == body_sha256 { Check::Replay(r.clone()) } else { Check::Mismatch };
            }
        }
        inner.busy.insert(k);
        Check::Proceed
    }

    /// The request with `key` was answered with `id`: remembered (synced).
    pub fn done(&self, owner: &str, key: &str, body_sha256: &str, id: &str, deduplicated: bool) {
        let r = Remembered { body_sha256: body_sha256.to_owned(), id: id.to_owned(), deduplicated, at: now_unix() };
        let (rewrite, to_sync) = {
            let mut inner = self.lock();
            let k = (owner.to_owned(), key.to_owned());
            inner.busy.remove(&k);
            let l = line(owner, key, &r);
            if inner.done.len() < MAX_KEYS || inner.done.contains_key(&k) {
                inner.done.insert(k, r);
            }
            let mut to_sync = None;
            if let Some(f) = inner.file.as_mut() {
                match f.write_all(l.as_bytes()) {
                    Ok(()) => to_sync = f.try_clone().ok(),
                    Err(e) => tracing::error!(error = %e, "idempotency log: cannot append"),
                }
            }
            inner.lines += 1;
            (inner.lines > 2 * inner.done.len() + 1024, to_sync)
        };
        // Synced outside the lock: requests with other keys do not wait
        // for this one's disk (concurrent syncs share the work).
        if let Some(f) = to_sync {
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, "idempotency log: cannot sync");
            }
        }
        if rewrite {
            self.rewrite();
        }
    }

    /// The request with `key` failed before a job was made: forgotten.
    pub fn abandon(&self, owner: &str, key: &str) {
        self.lock().busy.remove(&(owner.to_owned(), key.to_owned()));
    }
}

fn line(owner: &str, key: &str, r: &Remembered) -> String {
    let mut l = serde_json::json!({"owner": owner, "key": key, "body": r.body_sha256, "id": r.id,
        "deduplicated": r.deduplicated, "at": r.at})
    .to_string();
    l.push('\n');
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_replay_mismatch_busy_and_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("emq-idem-{}", emq_protocol::new_msgid()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = Keys::open(&dir, 86400.0);
        assert_eq!(k.check("o", "k1", "b1"), Check::Proceed);
        assert_eq!(k.check("o", "k1", "b1"), Check::InProgress);
        assert_eq!(k.check("other", "k1", "b1"), Check::Proceed, "keys are per caller");
        k.done("o", "k1", "b1", "id1", false);
        assert!(matches!(k.check("o", "k1", "b1"), Check::Replay(r) if r.id == "id1"));
        assert_eq!(k.check("o", "k1", "b2"), Check::Mismatch);
        k.abandon("other", "k1");
        assert_eq!(k.check("other", "k1", "b9"), Check::Proceed);
        drop(k);
        let k = Keys::open(&dir, 86400.0);
        assert!(matches!(k.check("o", "k1", "b1"), Check::Replay(r) if r.id == "id1"), "kept across a reopen");
        assert_eq!(k.check("o", "k1", "b2"), Check::Mismatch);
        assert_ne!(derived_msgid("a", "k", "b"), derived_msgid("b", "k", "b"));
        assert_ne!(derived_msgid("a", "k", "b"), derived_msgid("a", "k", "c"));
        assert_eq!(derived_msgid("a", "k", "b"), derived_msgid("a", "k", "b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
