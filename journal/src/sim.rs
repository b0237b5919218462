//! A simulated file system for tests, modelling what a crash, a power loss
//! or a failing disk can do to the journal's files — written from scratch,
//! in the spirit of FoundationDB's and TigerBeetle's storage simulators:
//!
//! - writes sit in a "page cache" until the file is synced; a power loss
//!   keeps, of each file's unsynced bytes, either a random prefix or random
//!   512-byte sectors (later parts without earlier ones; the rest zeros);
//! - names created, renamed or removed are durable only once their
//!   directory is synced; a power loss puts the directory back as it was
//!   at its last sync (a file whose name was never synced is gone);
//! - a failed fsync drops the file's dirty pages for good (what was
//!   unsynced at that moment never reaches the disk, whatever a later
//!   sync says — "fsyncgate"), and the page cache still shows them;
//! - ENOSPC / EIO on a write after a random prefix of it was written;
//! - a crash at any operation: from then on every operation fails, until
//!   [`SimFs::power_loss`] gives the state a restart would find.
//!
//! Deterministic from its seed.

use crate::fs::{FileId, Fs};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

/// A small deterministic generator (xorshift64*).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

#[derive(Clone, Default)]
struct File {
    /// What reads see (the page cache).
    data: Vec<u8>,
    /// What the disk holds.
    disk: Vec<u8>,
    /// Byte ranges of `data` whose writeback was lost (a failed sync):
    /// they reach the disk as zeros.
    lost: Vec<(usize, usize)>,
    /// The lowest offset written since the last sync: what a failed sync
    /// loses starts there (records written over synced zeros included).
    dirty_from: Option<usize>,
}

/// Which faults to inject, each "one in N operations of its kind" (0: never).
#[derive(Clone, Copy, Default)]
pub struct Faults {
    pub sync_fails: u64,
    pub write_fails: u64,
    pub create_fails: u64,
}

/// The simulated file system (one directory tree, flat names).
pub struct SimFs {
    rng: Rng,
    /// Files by path (their inode), whether or not a name points at them.
    files: HashMap<PathBuf, File>,
    /// Names as the disk has them (at the last directory sync).
    durable_names: BTreeMap<PathBuf, PathBuf>,
    /// Names as the process sees them: path → inode key.
    names: BTreeMap<PathBuf, PathBuf>,
    /// Open handles: inode, and where the next `append` writes.
    open: HashMap<FileId, (PathBuf, usize)>,
    next_id: FileId,
    next_inode: u64,
    /// Operations done; the crash comes at `crash_at`.
    pub ops: u64,
    pub crash_at: Option<u64>,
    crashed: bool,
    pub faults: Faults,
    /// Faults injected (for the report).
    pub injected: u64,
}

fn err(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, what.to_string())
}

impl SimFs {
    pub fn new(seed: u64) -> SimFs {
        SimFs {
            rng: Rng::new(seed),
            files: HashMap::new(),
            durable_names: BTreeMap::new(),
            names: BTreeMap::new(),
            open: HashMap::new(),
            next_id: 0,
            next_inode: 0,
            ops: 0,
            crash_at: None,
            crashed: false,
            faults: Faults::default(),
            injected: 0,
        }
    }

    /// Whether the simulated process has crashed.
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// One operation: fails once the process has crashed (and crashes it
    /// at `crash_at`).
    fn op(&mut self) -> io::Result<()> {
        self.ops += 1;
        if self.crash_at.is_some_and(|c| self.ops >= c) {
            self.crashed = true;
        }
        if self.crashed {
            return Err(err(io::ErrorKind::Other, "simulated crash"));
        }
        Ok(())
    }

    fn inject(&mut self, one_in: u64) -> bool {
        if one_in > 0 && self.rng.chance(one_in) {
            self.injected += 1;
            true
        } else {
            false
        }
    }

    fn inode(&mut self, path: &Path) -> io::Result<PathBuf> {
        self.names.get(path).cloned().ok_or_else(|| err(io::ErrorKind::NotFound, "no such file"))
    }

    /// Power loss (or a kernel crash) and a restart: what the disk holds
    /// becomes what everyone sees. Unsynced bytes survive in part, as a
    /// disk may have written them: a prefix, or scattered sectors.
    pub fn power_loss(&mut self) {
        if std::env::var_os("EMQTEST_SIM_TRACE").is_some() {
            eprintln!("POWER LOSS");
        }
        let mut files = HashMap::new();
        for (name, inode) in &self.durable_names {
            let Some(f) = self.files.get(inode) else { continue };
            let mut disk = f.disk.clone();
            // The unsynced bytes: from the first that differs from the
            // disk (records written over zeros written ahead and synced,
            // or past the disk's end) to the end of the page cache.
            let shared = disk.len().min(f.data.len());
            let first = (0..shared).find(|&i| f.data[i] != disk[i]).unwrap_or(shared);
            if f.data.len() > first {
                let extra = &f.data[first..];
                match self.rng.below(3) {
                    0 => {}
                    1 => {
                        let n = self.rng.below(extra.len() as u64 + 1) as usize;
                        if disk.len() < first + n {
                            disk.resize(first + n, 0);
                        }
                        disk[first..first + n].copy_from_slice(&extra[..n]);
                    }
                    _ => {
                        // Sectors: some written, some not (what the disk
                        // had there, zeros past its end), to a random end.
                        let end = self.rng.below(extra.len() as u64 + 1) as usize;
                        if disk.len() < first + end {
                            disk.resize(first + end, 0);
                        }
                        for s in (0..end).step_by(512) {
                            if self.rng.chance(2) {
                                let e = (s + 512).min(end);
                                disk[first + s..first + e].copy_from_slice(&extra[s..e]);
                            }
                        }
                    }
                }
                for &(a, b) in &f.lost {
                    for x in disk.iter_mut().take(b).skip(a) {
                        *x = 0;
                    }
                }
            }
            files.insert(name.clone(), File { data: disk.clone(), disk, lost: Vec::new(), dirty_from: None });
        }
        self.names = self.durable_names.keys().map(|n| (n.clone(), n.clone())).collect();
        self.durable_names = self.names.clone();
        self.files = files;
        self.open.clear();
        self.crashed = false;
        self.crash_at = None;
    }

    /// Only the process dies (SIGKILL): the kernel keeps everything written.
    pub fn process_crash(&mut self) {
        if std::env::var_os("EMQTEST_SIM_TRACE").is_some() {
            eprintln!("PROCESS CRASH");
        }
        // Pages whose writeback failed may be evicted: the next process
        // reads what the disk has there (zeros).
        for f in self.files.values_mut() {
            for &(a, b) in &f.lost {
                let b = b.min(f.data.len());
                for x in f.data.iter_mut().take(b).skip(a) {
                    *x = 0;
                }
            }
        }
        self.open.clear();
        self.crashed = false;
        self.crash_at = None;
    }
}

/// `bytes` written into `data` at `at` (over what is there, past its end
/// growing it; a gap before `at` reads as zeros).
fn write_at(data: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if data.len() < at + bytes.len() {
        data.resize(at + bytes.len(), 0);
    }
    data[at..at + bytes.len()].copy_from_slice(bytes);
}

impl Fs for SimFs {
    fn create(&mut self, path: &Path) -> io::Result<FileId> {
        self.op()?;
        if std::env::var_os("EMQTEST_SIM_TRACE").is_some() {
            eprintln!("create {}", path.display());
        }
        let fail = self.faults.create_fails;
        // A half-failed creation leaves the name behind.
        let inode = match self.names.get(path) {
            Some(i) => i.clone(),
            None => {
                self.next_inode += 1;
                let i = PathBuf::from(format!("inode-{}", self.next_inode));
                self.names.insert(path.to_path_buf(), i.clone());
                i
            }
        };
        let f = self.files.entry(inode.clone()).or_default();
        f.data.clear();
        // Truncation is a metadata change the disk sees at the next sync;
        // model it as immediate (what matters here is unsynced data).
        f.disk.clear();
        f.lost.clear();
        f.dirty_from = None;
        if self.inject(fail) {
            return Err(err(io::ErrorKind::Other, "simulated EIO on create"));
        }
        self.next_id += 1;
        self.open.insert(self.next_id, (inode, 0));
        Ok(self.next_id)
    }

    fn append(&mut self, f: FileId, bytes: &[u8]) -> io::Result<()> {
        self.op()?;
        let (inode, at) = self.open.get(&f).cloned().ok_or_else(|| err(io::ErrorKind::NotFound, "not open"))?;
        let fail = self.faults.write_fails;
        let failing = self.inject(fail);
        let n = if failing { self.rng.below(bytes.len() as u64) as usize } else { bytes.len() };
        let file = self.files.get_mut(&inode).expect("open file exists");
        write_at(&mut file.data, at, &bytes[..n]);
        file.dirty_from = Some(file.dirty_from.map_or(at, |d| d.min(at)));
        self.open.insert(f, (inode, at + n));
        if failing {
            return Err(err(io::ErrorKind::StorageFull, "simulated ENOSPC"));
        }
        Ok(())
    }

    fn zero_ahead(&mut self, f: FileId, from: u64, to: u64) -> io::Result<()> {
        self.op()?;
        let (inode, _) = self.open.get(&f).cloned().ok_or_else(|| err(io::ErrorKind::NotFound, "not open"))?;
        let fail = self.faults.write_fails;
        let failing = self.inject(fail);
        let len = (to.saturating_sub(from)) as usize;
        let n = if failing { self.rng.below(len as u64) as usize } else { len };
        let file = self.files.get_mut(&inode).expect("open file exists");
        write_at(&mut file.data, from as usize, &vec![0; n]);
        file.dirty_from = Some(file.dirty_from.map_or(from as usize, |d| d.min(from as usize)));
        if failing {
            return Err(err(io::ErrorKind::StorageFull, "simulated ENOSPC"));
        }
        Ok(())
    }

    fn sync(&mut self, f: FileId) -> io::Result<()> {
        self.op()?;
        let (inode, _) = self.open.get(&f).cloned().ok_or_else(|| err(io::ErrorKind::NotFound, "not open"))?;
        let fail = self.faults.sync_fails;
        let failing = self.inject(fail);
        let file = self.files.get_mut(&inode).expect("open file exists");
        if std::env::var_os("EMQTEST_SIM_TRACE").is_some() {
            eprintln!("sync {} failing={failing} data={} disk={}", inode.display(), file.data.len(), file.disk.len());
        }
        if failing {
            // Dirty pages dropped: they never reach the disk — from the
            // lowest offset written since the last sync (records written
            // over synced zeros too), and all past the disk's end.
            let synced_end = file.disk.len().min(file.data.len());
            let (a, b) = (file.dirty_from.map_or(synced_end, |d| d.min(synced_end)), file.data.len());
            if b > a {
                file.lost.push((a, b));
            }
            file.dirty_from = None;
            return Err(err(io::ErrorKind::Other, "simulated EIO on fsync"));
        }
        let mut disk = file.data.clone();
        for &(a, b) in &file.lost {
            for x in disk.iter_mut().take(b).skip(a) {
                *x = 0;
            }
        }
        file.disk = disk;
        file.dirty_from = None;
        Ok(())
    }

    fn close(&mut self, f: FileId) {
        self.open.remove(&f);
    }

    fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
        self.op()?;
        if std::env::var_os("EMQTEST_SIM_TRACE").is_some() {
            eprintln!("sync_dir {:?}", self.names);
        }
        self.durable_names = self.names.clone();
        Ok(())
    }

    fn sync_path(&mut self, path: &Path) -> io::Result<()> {
        self.op()?;
        let inode = self.inode(path)?;
        let file = self.files.get_mut(&inode).expect("named file exists");
        let mut disk = file.data.clone();
        for &(a, b) in &file.lost {
            for x in disk.iter_mut().take(b).skip(a) {
                *x = 0;
            }
        }
        file.disk = disk;
        file.dirty_from = None;
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.op()?;
        self.names.remove(path).map(|_| ()).ok_or_else(|| err(io::ErrorKind::NotFound, "no such file"))
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.op()?;
        let inode = self.names.remove(from).ok_or_else(|| err(io::ErrorKind::NotFound, "no such file"))?;
        self.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.op()?;
        Ok(self.names.keys().filter(|p| p.parent() == Some(dir)).cloned().collect())
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.op()?;
        let inode = self.inode(path)?;
        Ok(self.files[&inode].data.clone())
    }

    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.op()?;
        let inode = self.inode(path)?;
        let f = self.files.get_mut(&inode).expect("named file exists");
        f.data.truncate(len as usize);
        f.disk.truncate(len as usize);
        f.lost.retain(|&(a, _)| a < len as usize);
        f.dirty_from = f.dirty_from.filter(|&d| d < len as usize);
        Ok(())
    }

    fn len(&mut self, path: &Path) -> io::Result<u64> {
        self.op()?;
        let inode = self.inode(path)?;
        Ok(self.files[&inode].data.len() as u64)
    }

    fn random_salt(&mut self) -> u64 {
        self.rng.next()
    }
}
