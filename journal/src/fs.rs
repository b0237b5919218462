//! The journal's file operations, behind one small trait: the real file
//! system ([`RealFs`]) in the router, a simulated one in tests that models
//! what a crash, a power loss or a failing disk can do (`sim.rs`).
//!
//! Owns: which operations the journal may use, and what each promises.
//! Does not own: the segment format or what is written when.

use std::io;
use std::path::{Path, PathBuf};

/// An open file, by the number the [`Fs`] gave it.
pub type FileId = u64;

/// What the journal does to files. Every promise is a POSIX one: a write
/// is in the page cache until `sync` returns Ok; a created, renamed or
/// removed name is durable only once its directory is synced; a failed
/// `sync` may have lost the file's unsynced data for good, whatever a
/// later `sync` says.
pub trait Fs: Send {
    /// Creates `path` empty (truncating what a failed earlier attempt left),
    /// for appending; mode 0600.
    fn create(&mut self, path: &Path) -> io::Result<FileId>;
    /// Writes `bytes` at the handle's position (just after what it wrote
    /// before: the end of what was appended, not of zeros written ahead
    /// by [`Fs::zero_ahead`]) and moves it past them; on error, any prefix
    /// of them may have been written.
    fn append(&mut self, f: FileId, bytes: &[u8]) -> io::Result<()>;
    /// Writes zeros over `from..to` (at or past the handle's position; the
    /// position stays): the file's blocks exist before records are written
    /// into them, so an `fdatasync` after such a write has no size or
    /// allocation to record — one disk write and a flush, not also the
    /// inode's (ext4: `ext4_write_inode` and the block bitmap, each a
    /// synchronous write of its own). On error, any part may be written.
    fn zero_ahead(&mut self, f: FileId, from: u64, to: u64) -> io::Result<()>;
    /// fdatasync: what was appended survives a power loss once this is Ok.
    fn sync(&mut self, f: FileId) -> io::Result<()>;
    /// Forgets the handle.
    fn close(&mut self, f: FileId);
    /// fsync of the directory: names created, renamed or removed in it are durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// fsync of an existing file by name (what replay trusts is made durable).
    fn sync_path(&mut self, path: &Path) -> io::Result<()>;
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Files in `dir` (names, any order).
    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    /// Cuts `path` to `len` bytes and syncs it.
    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()>;
    fn len(&mut self, path: &Path) -> io::Result<u64>;
    /// A new segment's salt: random (the OS CSPRNG for the real one).
    fn random_salt(&mut self) -> u64;
}

/// The real file system.
#[derive(Default)]
pub struct RealFs {
    files: std::collections::HashMap<FileId, std::fs::File>,
    next: FileId,
}

impl RealFs {
    fn file(&mut self, f: FileId) -> io::Result<&mut std::fs::File> {
        self.files.get_mut(&f).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "journal file not open"))
    }
}

impl Fs for RealFs {
    fn create(&mut self, path: &Path) -> io::Result<FileId> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
        self.next += 1;
        self.files.insert(self.next, file);
        Ok(self.next)
    }

    fn append(&mut self, f: FileId, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.file(f)?.write_all(bytes)
    }

    fn zero_ahead(&mut self, f: FileId, from: u64, to: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        /// Zeros to write from (in `.bss`: no binary size, no allocation).
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let file = self.file(f)?;
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self, f: FileId) -> io::Result<()> {
        self.file(f)?.sync_data()
    }

    fn close(&mut self, f: FileId) {
        self.files.remove(&f);
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn sync_path(&mut self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new().read(true).open(path)?.sync_all()
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn len(&mut self, path: &Path) -> io::Result<u64> {
        std::fs::metadata(path).map(|m| m.len())
    }

    fn random_salt(&mut self) -> u64 {
        let mut b = [0u8; 8];
        match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)) {
            Ok(()) => u64::from_le_bytes(b),
            // No salt is still a valid segment (plain checksums).
            Err(_) => 0,
        }
    }
}
