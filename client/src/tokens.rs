//! Client tokens for the router's HTTP API.
//!
//! A client token (`emqc_` + 64 lowercase hex digits from the OS CSPRNG)
//! may submit jobs and read its own ones; the admin token may do
//! everything (see `docs/http.md`, "Authentication"). The router's
//! `data_dir` keeps only each token's SHA-256, by name, in
//! [`TOKENS_FILE`] (`{"tokens": [...]}`, mode 0600): the token itself is
//! shown once, by [`create`], and never stored.
//!
//! Changes ([`create`], [`revoke`]) hold an exclusive `flock` on
//! `data_dir/http-tokens.lock` for their read-modify-write and replace the
//! file atomically (temporary file, fsync, rename, fsync of the
//! directory), so concurrent changes lose nothing and a reader
//! ([`load`]) sees either the old file or the new one, never a part.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The file, in the router's `data_dir`, holding the client tokens' hashes.
pub const TOKENS_FILE: &str = "http-tokens.json";

/// The lock file serializing changes to [`TOKENS_FILE`].
const LOCK_FILE: &str = "http-tokens.lock";

/// The temporary file a new [`TOKENS_FILE`] is written to before its rename.
const TEMP_FILE: &str = ".http-tokens.json.tmp";

/// At most this many client tokens.
const MAX_TOKENS: usize = 10_000;

/// What every client token starts with.
const TOKEN_PREFIX: &str = "emqc_";

/// One client token as stored: its name, its hash, when it was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientToken {
    /// Its name (`[A-Za-z0-9_.-]{1,64}`), unique among the tokens.
    pub name: String,
    /// Lowercase hex of the SHA-256 of the token ([`hash`]).
    pub sha256: String,
    /// When it was made, in unix seconds.
    pub created: f64,
}

/// The file's JSON shape.
#[derive(Serialize, Deserialize)]
struct TokensFile {
    /// Every client token, oldest first.
    tokens: Vec<ClientToken>,
}

/// Why a client token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading, writing, locking or creating a file or the directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The name is not 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
    #[error("bad token name {0:?}: 1 to 64 characters of A-Z a-z 0-9 _ . -")]
    BadName(String),
    /// A token of this name exists already.
    #[error("a client token named {0:?} exists already")]
    Exists(String),
    /// The tokens file is not what this module writes.
    #[error("{}: not a valid client tokens file: {reason}", path.display())]
    Corrupt {
        /// The tokens file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// There are 10,000 tokens already.
    #[error("at most {MAX_TOKENS} client tokens: revoke some first")]
    TooMany,
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Lowercase hex SHA-256 of the token's bytes: what [`TOKENS_FILE`] keeps.
pub fn hash(token: &str) -> String {
    to_hex(&Sha256::digest(token.as_bytes()))
}

/// The owner of jobs sent with this token: lowercase hex SHA-256 of
/// `"emq-owner:" + token`. A ZeroMQ client holding this value as its owner
/// token may read those jobs too.
pub fn owner_id(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"emq-owner:");
    h.update(token.as_bytes());
    to_hex(&h.finalize())
}

/// `a == b` in time that depends only on the lengths (which are public:
/// every stored hash has 64 digits).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The stored token whose hash is `hash(token)`, if any. Each stored hash
/// is compared in constant time.
pub fn find<'a>(tokens: &'a [ClientToken], token: &str) -> Option<&'a ClientToken> {
    let h = hash(token);
    tokens.iter().find(|t| constant_time_eq(t.sha256.as_bytes(), h.as_bytes()))
}

/// Whether `name` is 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `s` is 64 lowercase hex digits.
fn valid_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The client tokens stored in `dir` (none when the file, or `dir`, does
/// not exist). A file that cannot be read, or is not what [`create`] and
/// [`revoke`] write, is an error.
pub fn load(dir: &Path) -> Result<Vec<ClientToken>, TokenError> {
    let path = dir.join(TOKENS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TokenError::Io { path, source: e }),
    };
    let corrupt = |reason: String| TokenError::Corrupt { path: path.clone(), reason };
    let file: TokensFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut names = std::collections::HashSet::new();
    for t in &file.tokens {
        if !valid_name(&t.name) {
            return Err(corrupt(format!("bad token name {:?}", t.name)));
        }
        if !valid_hash(&t.sha256) {
            return Err(corrupt(format!("token {:?}: sha256 is not 64 lowercase hex digits", t.name)));
        }
        if !t.created.is_finite() {
            return Err(corrupt(format!("token {:?}: created is not a number of seconds", t.name)));
        }
        if !names.insert(t.name.as_str()) {
            return Err(corrupt(format!("token name {:?} appears twice", t.name)));
        }
    }
    Ok(file.tokens)
}

/// Makes a new client token named `name` (`[A-Za-z0-9_.-]{1,64}`, not
/// taken) in `dir` (created, mode 0700, if missing) and returns it:
/// `emqc_` + 64 lowercase hex digits. Only its hash is stored, so this is
/// the one time it is known.
pub fn create(dir: &Path, name: &str) -> Result<String, TokenError> {
    if !valid_name(name) {
        return Err(TokenError::BadName(name.to_owned()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TokenError::Io { path: dir.to_path_buf(), source: e })?;
    let _lock = lock(dir)?;
    let mut tokens = load(dir)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(TokenError::Exists(name.to_owned()));
    }
    if tokens.len() >= MAX_TOKENS {
        return Err(TokenError::TooMany);
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| TokenError::Random(e.to_string()))?;
    let token = format!("{TOKEN_PREFIX}{}", to_hex(&secret));
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    tokens.push(ClientToken { name: name.to_owned(), sha256: hash(&token), created });
    store(dir, &tokens)?;
    Ok(token)
}

/// Removes the client token named `name` from `dir`: `false` when there is
/// no such token.
pub fn revoke(dir: &Path, name: &str) -> Result<bool, TokenError> {
    // A name that cannot exist, or a directory without tokens: nothing to
    // change (and no directory to create).
    if !valid_name(name) || !dir.join(TOKENS_FILE).exists() {
        return Ok(false);
    }
    let _lock = lock(dir)?;
    let mut tokens = load(dir)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        return Ok(false);
    }
    store(dir, &tokens)?;
    Ok(true)
}

/// Takes the exclusive lock on `dir/http-tokens.lock`; it is released when
/// the returned value is dropped.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>, TokenError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| TokenError::Io { path: path.clone(), source: e })?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| TokenError::Io { path, source: e.into() })
}

/// Replaces `dir`'s tokens file with `tokens`, atomically and durably.
/// The caller holds the lock.
fn store(dir: &Path, tokens: &[ClientToken]) -> Result<(), TokenError> {
    let tmp = dir.join(TEMP_FILE);
    let path = dir.join(TOKENS_FILE);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| TokenError::Io { path: p, source: e }
    };
    let mut body = serde_json::to_vec_pretty(&TokensFile { tokens: tokens.to_vec() })
        .map_err(|e| TokenError::Io { path: tmp.clone(), source: e.into() })?;
    body.push(b'\n');
    // A leftover from a crash may have any mode: start afresh at 0600.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(&body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).unwrap();
            // A subdirectory that does not exist yet: `create` makes it.
            TempDir(std::env::temp_dir().join(format!("emq-tokens-test-{}", to_hex(&r))).join("data"))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[test]
    fn create_list_revoke_round_trip() {
        let d = TempDir::new();
        assert_eq!(load(&d.0).unwrap(), vec![], "no directory: no tokens");
        assert!(!revoke(&d.0, "a").unwrap());
        let a = create(&d.0, "a").unwrap();
        let b = create(&d.0, "build-bot_2.x").unwrap();
        assert_eq!(std::fs::metadata(&d.0).unwrap().permissions().mode() & 0o777, 0o700);
        for t in [&a, &b] {
            assert!(t.starts_with("emqc_") && t.len() == 5 + 64, "{t}");
            assert!(t[5..].bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{t}");
        }
        assert_ne!(a, b);
        let list = load(&d.0).unwrap();
        assert_eq!(list.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "build-bot_2.x"]);
        assert_eq!(list[0].sha256, hash(&a));
        assert!(list[0].created > 1.6e9);
        let text = std::fs::read_to_string(d.0.join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(&a[5..]) && text.contains(&hash(&a)), "only the hash is stored: {text}");
        assert!(revoke(&d.0, "a").unwrap());
        assert!(!revoke(&d.0, "a").unwrap(), "already gone");
        let list = load(&d.0).unwrap();
        assert_eq!(list.len(), 1);
        assert!(find(&list, &a).is_none(), "a revoked token is no longer found");
        assert_eq!(find(&list, &b).map(|t| t.name.as_str()), Some("build-bot_2.x"));
        let c = create(&d.0, "a").unwrap();
        assert_ne!(c, a, "a name may be used again once revoked, with a new token");
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let d = TempDir::new();
        create(&d.0, "ci").unwrap();
        assert!(matches!(create(&d.0, "ci"), Err(TokenError::Exists(n)) if n == "ci"));
        let long = "x".repeat(65);
        for bad in ["", "a b", "a/b", "é", "tab\t", "x\n", long.as_str()] {
            assert!(matches!(create(&d.0, bad), Err(TokenError::BadName(_))), "{bad:?}");
            assert!(!revoke(&d.0, bad).unwrap(), "{bad:?}");
        }
        assert!(create(&d.0, &"x".repeat(64)).is_ok());
        assert_eq!(load(&d.0).unwrap().len(), 2);
    }

    #[test]
    fn find_matches_only_the_right_token() {
        let d = TempDir::new();
        let one = create(&d.0, "one").unwrap();
        let two = create(&d.0, "two").unwrap();
        let list = load(&d.0).unwrap();
        assert_eq!(find(&list, &one).unwrap().name, "one");
        assert_eq!(find(&list, &two).unwrap().name, "two");
        let mut near = one.clone();
        near.pop();
        near.push(if one.ends_with('0') { '1' } else { '0' });
        for wrong in ["", "emqc_", near.as_str(), &one[..one.len() - 1], &format!("{one}0"), &hash(&one)] {
            assert!(find(&list, wrong).is_none(), "{wrong:?}");
        }
        assert!(find(&[], &one).is_none());
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        assert_eq!(hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(owner_id("abc"), hash("emq-owner:abc"));
        assert_ne!(owner_id("abc"), hash("abc"));
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let d = TempDir::new();
        create(&d.0, "ok").unwrap();
        let path = d.0.join(TOKENS_FILE);
        let good = std::fs::read_to_string(&path).unwrap();
        let h = hash("x");
        for bad in [
            String::new(),
            "{".into(),
            "[]".into(),
            "{\"tokens\": 3}".into(),
            "{\"tokens\": [{\"name\": \"a\"}]}".into(),
            format!("{{\"tokens\": [{{\"name\": \"a b\", \"sha256\": \"{h}\", \"created\": 1}}]}}"),
            "{\"tokens\": [{\"name\": \"a\", \"sha256\": \"ABC\", \"created\": 1}]}".into(),
            format!(
                "{{\"tokens\": [{{\"name\": \"a\", \"sha256\": \"{h}\", \"created\": 1}}, \
                 {{\"name\": \"a\", \"sha256\": \"{h}\", \"created\": 2}}]}}"
            ),
            good[..good.len() / 2].to_owned(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(matches!(load(&d.0), Err(TokenError::Corrupt { .. })), "{bad:?}");
            assert!(matches!(create(&d.0, "new"), Err(TokenError::Corrupt { .. })), "{bad:?}");
            assert!(matches!(revoke(&d.0, "ok"), Err(TokenError::Corrupt { .. })), "{bad:?}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad, "a corrupt file is left as it is");
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(load(&d.0).unwrap().len(), 1);
    }

    #[test]
    fn the_file_is_private() {
        let d = TempDir::new();
        create(&d.0, "a").unwrap();
        let path = d.0.join(TOKENS_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(revoke(&d.0, "a").unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "rewritten 0600");
        assert!(!d.0.join(TEMP_FILE).exists());
    }

    #[test]
    fn concurrent_creates_lose_nothing() {
        let d = TempDir::new();
        let tokens: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|t| {
                    let dir = &d.0;
                    s.spawn(move || (0..20).map(|i| create(dir, &format!("t{t}-{i}")).unwrap()).collect::<Vec<_>>())
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        let list = load(&d.0).unwrap();
        assert_eq!(list.len(), 40);
        for t in &tokens {
            assert!(find(&list, t).is_some());
        }
    }

    #[test]
    fn at_most_ten_thousand() {
        let d = TempDir::new();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d.0).unwrap();
        let full: Vec<ClientToken> = (0..MAX_TOKENS)
            .map(|i| ClientToken { name: format!("n{i}"), sha256: hash(&i.to_string()), created: 1.0 })
            .collect();
        store(&d.0, &full).unwrap();
        assert!(matches!(create(&d.0, "one-more"), Err(TokenError::TooMany)));
        assert!(revoke(&d.0, "n0").unwrap());
        assert!(create(&d.0, "one-more").is_ok());
    }
}
