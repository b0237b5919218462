//! # emq-journal — the router's append-only job journal
//!
//! Owns: the on-disk format of what happened to every accepted job
//! ([`Record`], framed with a length and a CRC32C in segment files), group
//! commit on a journal thread (everything the router appended in one pass
//! of its poll loop is written and synced together; the router learns which
//! batch is durable through [`Journal::durable`] and a pipe it polls),
//! checkpoints that bound replay time and let old segments be deleted, and
//! replay at start with torn-tail truncation and optional repair.
//!
//! Does not own: what the records mean for the router's state (the router's
//! `recovery` room), when receipts go out (the router's poll loop holds
//! them until their batch is durable), or sockets.
//!
//! The router talks to it through the [`JobLog`] trait, so that another
//! store (e.g. PostgreSQL for a standby router) can take its place.

pub mod fs;
pub mod handoff;
pub mod record;
mod replay;
pub mod segment;
#[cfg(test)]
mod sim;

pub use record::{AcceptedJob, AttemptFailure, FinalState, FinishedJob, Record, RecordError, ScheduleEntry};
pub use replay::{replay, ReplayReport};

use crossbeam_channel::Receiver;
use fs::{Fs, RealFs};
use handoff::{HandoffReceiver, HandoffSender};
use segment::{frame, SegmentWriter};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{error, info, warn};

/// What a journal could not do.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "journal segment {path} is damaged at byte {offset} ({problem}); \
         start with --journal-repair to keep every valid record and drop the damaged ones"
    )]
    Damaged { path: PathBuf, offset: u64, problem: String },
    #[error("journal directory {path} is in use by another router (lock held)")]
    Locked { path: PathBuf },
}

/// When a receipt may go out, and what a crash can take away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After fdatasync: accepted jobs survive a power loss or kernel crash.
    Fsync,
    /// After write(2): they survive a crash of the router process (the
    /// kernel still has them), not a power loss.
    Write,
    /// Receipts do not wait; the journal is written in the background:
    /// a crash may lose the last moments of accepted jobs.
    Off,
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(SyncPolicy::Fsync),
            "write" => Ok(SyncPolicy::Write),
            "off" => Ok(SyncPolicy::Off),
            other => Err(format!("{other:?} is not one of \"fsync\", \"write\", \"off\"")),
        }
    }
}

/// How to open a journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Keep going past damaged records (skipping them) instead of stopping.
    pub repair: bool,
}

/// Figures for STATUS, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// The sync policy, as configured (`fsync`, `write`, `off`).
    pub sync: std::sync::OnceLock<&'static str>,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_micros: AtomicU64,
    pub bytes: AtomicU64,
    pub records: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Bytes on disk in live segments.
    pub disk_bytes: AtomicU64,
    /// Write or sync failures (each retried).
    pub errors: AtomicU64,
    /// Bytes handed to the writer and not yet written (a disk slower than
    /// the router shows here).
    pub queued_bytes: AtomicU64,
}

impl JournalStats {
    /// The figures as JSON (STATUS `journal`).
    pub fn to_json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "sync": self.sync.get().copied().unwrap_or("-"),
            "batches": get(&self.batches),
            "syncs": get(&self.syncs),
            "sync_micros": get(&self.sync_micros),
            "bytes": get(&self.bytes),
            "records": get(&self.records),
            "checkpoints": get(&self.checkpoints),
            "disk_bytes": get(&self.disk_bytes),
            "errors": get(&self.errors),
            "queued_bytes": get(&self.queued_bytes),
        })
    }
}

/// The store the router writes its job records to. [`Journal`] is the
/// file-based one; a networked store implements the same calls.
pub trait JobLog {
    /// Adds a record to the batch of the current poll pass.
    fn append(&mut self, record: &Record);
    /// The id the current batch will have: what a receipt for a job
    /// accepted in this pass must wait for.
    fn current_batch(&self) -> u64;
    /// What a message sent now must wait for to promise that every record
    /// appended so far is durable: the current batch when it holds
    /// records, else the last one handed to the writer (an empty batch is
    /// never submitted, so waiting for it would wait forever).
    fn covering_batch(&self) -> u64;
    /// Ends the pass: hands the batch to the writer (nothing when empty).
    fn submit(&mut self);
    /// The highest batch id that is durable (per the sync policy).
    fn durable(&self) -> u64;
    /// Writes a checkpoint: `records` describe all live state; once it is
    /// durable, everything before it may be deleted.
    fn checkpoint(&mut self, records: &mut dyn Iterator<Item = Record>);
    /// Bytes written since the last checkpoint.
    fn bytes_since_checkpoint(&self) -> u64;
    /// Waits until everything submitted is durable, then stops the writer.
    fn close(&mut self);
    /// The fd the poll loop watches: readable when a batch became durable
    /// (or the store has something to say, e.g. it was fenced).
    fn notify_fd(&self) -> RawFd;
    /// Empties the notification pipe.
    fn drain_notify(&self);
    /// The figures.
    fn stats(&self) -> &JournalStats;
    /// The figures, shared (for STATUS and `/metrics`).
    fn stats_handle(&self) -> Arc<JournalStats>;
    /// When receipts may go out.
    fn sync_policy(&self) -> SyncPolicy;
    /// Why this store refuses to go on (a shared store taken over by
    /// another router: it must stop at once), if it does.
    fn fenced(&self) -> Option<String> {
        None
    }
}

/// The batch a poll pass builds: its framed records, and the id it will
/// have (what a receipt for a job accepted in this pass waits for). Shared
/// by the file and PostgreSQL journals.
#[derive(Debug)]
pub struct PendingBatch {
    bytes: Vec<u8>,
    records: u64,
    next_id: u64,
}

impl Default for PendingBatch {
    fn default() -> Self {
        PendingBatch { bytes: Vec::new(), records: 0, next_id: 1 }
    }
}

impl PendingBatch {
    /// Adds one framed record.
    pub fn append(&mut self, record: &Record) {
        frame(record, &mut self.bytes);
        self.records += 1;
    }

    /// The id the batch being built will have.
    pub fn current(&self) -> u64 {
        self.next_id
    }

    /// The id covering everything appended so far: the current batch when
    /// it holds records, else the last one taken (an empty batch is never
    /// handed over, so waiting for it would wait forever).
    pub fn covering(&self) -> u64 {
        if self.bytes.is_empty() {
            self.next_id - 1
        } else {
            self.next_id
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The last id handed out.
    pub fn last(&self) -> u64 {
        self.next_id - 1
    }

    /// Takes the batch — `(id, bytes, records)`, `None` when empty — and
    /// goes on building in `buffer`.
    pub fn take(&mut self, buffer: Vec<u8>) -> Option<(u64, Vec<u8>, u64)> {
        if self.bytes.is_empty() {
            return None;
        }
        let bytes = std::mem::replace(&mut self.bytes, buffer);
        let records = std::mem::take(&mut self.records);
        Some((self.allocate(), bytes, records))
    }

    /// An id for something handed over besides the batches (a checkpoint).
    pub fn allocate(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }
}

/// Batch buffers handed back by the writer for reuse, at most.
const SPARE_BUFFERS: usize = 8;
/// Larger buffers (a burst's) are freed, not kept.
const SPARE_BUFFER_MAX: usize = 256 << 10;

enum ToWriter {
    Batch { id: u64, bytes: Vec<u8>, records: u64 },
    Checkpoint { id: u64, bytes: Vec<u8> },
}

/// The file journal: a writer thread appending to segment files.
pub struct Journal {
    tx: Option<HandoffSender<ToWriter>>,
    durable: Arc<AtomicU64>,
    notify_r: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
    batch: PendingBatch,
    /// Batch buffers the writer is done with, for the next batches: the
    /// writer thread freeing them would leave their memory with the
    /// allocator of this thread, in use again only when it next
    /// allocates that size (tens of MB of RSS after a burst).
    spare: Receiver<Vec<u8>>,
    sync: SyncPolicy,
    stats: Arc<JournalStats>,
    bytes_since_checkpoint: u64,
    next_checkpoint_id: u64,
    _lock: std::fs::File,
    dir: PathBuf,
}

impl Journal {
    /// Opens (creating it when missing) the journal in `opts.dir`, replays
    /// it through `on_record`, and starts the writer on a fresh segment.
    pub fn open(opts: &JournalOptions, on_record: impl FnMut(Record)) -> Result<(Journal, ReplayReport), JournalError> {
        let dir = &opts.dir;
        let io = |e| JournalError::Io { path: dir.clone(), source: e };
        let created = !dir.exists();
        make_private_dir(dir).map_err(io)?;
        let mut fs: Box<dyn Fs> = Box::new(RealFs::default());
        if created {
            // Its name durable too: a power loss must not take the new directory.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent).map_err(io)?;
            }
        }
        let lock = lock_dir(dir)?;
        let report = replay(fs.as_mut(), dir, opts.repair, on_record)?;
        settle_after_replay(fs.as_mut(), dir, &report)?;
        let writer = SegmentWriter::create(fs.as_mut(), dir, report.last_seq + 1, None).map_err(io)?;
        let stats = Arc::new(JournalStats::default());
        let _ = stats.sync.set(match opts.sync {
            SyncPolicy::Fsync => "fsync",
            SyncPolicy::Write => "write",
            SyncPolicy::Off => "off",
        });
        // What the segments take on disk now (zeros written ahead past a
        // closed segment's cut included, and the new segment's header):
        // what `journal_max_bytes` is held against, as the writer counts.
        let on_disk: u64 = report.live.iter().map(|p| fs.len(p).unwrap_or(0)).sum();
        stats.disk_bytes.store(on_disk + writer.file_len(), Ordering::Relaxed);
        let durable = Arc::new(AtomicU64::new(0));
        let (notify_r, notify_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io(std::io::Error::from(e)))?;
        let (tx, rx) = handoff::handoff();
        let (spare_tx, spare) = crossbeam_channel::bounded(SPARE_BUFFERS);
        let thread = {
            let w = Writer::new(fs, dir.clone(), opts.sync, opts.segment_bytes.max(1 << 20), writer, stats.clone());
            let durable = durable.clone();
            std::thread::Builder::new()
                .name("emq-journal".into())
                .spawn(move || writer_loop(rx, spare_tx, w, durable, notify_w))
                .map_err(io)?
        };
        let journal = Journal {
            tx: Some(tx),
            durable,
            notify_r,
            thread: Some(thread),
            batch: PendingBatch::default(),
            spare,
            sync: opts.sync,
            stats,
            bytes_since_checkpoint: report.bytes,
            next_checkpoint_id: report.checkpoint.unwrap_or(0) + 1,
            _lock: lock,
            dir: dir.clone(),
        };
        Ok((journal, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl JobLog for Journal {
    fn append(&mut self, record: &Record) {
        self.batch.append(record);
    }

    fn current_batch(&self) -> u64 {
        self.batch.current()
    }

    fn covering_batch(&self) -> u64 {
        self.batch.covering()
    }

    fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let next = self.spare.try_recv().unwrap_or_default();
        let Some((id, bytes, records)) = self.batch.take(next) else { return };
        self.bytes_since_checkpoint += bytes.len() as u64;
        self.stats.queued_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let _ = tx.send(ToWriter::Batch { id, bytes, records });
        }
    }

    fn durable(&self) -> u64 {
        match self.sync {
            // Receipts do not wait for the writer.
            SyncPolicy::Off => self.batch.last(),
            _ => self.durable.load(Ordering::Acquire),
        }
    }

    fn checkpoint(&mut self, records: &mut dyn Iterator<Item = Record>) {
        self.submit();
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        let mut bytes = Vec::with_capacity(1 << 20);
        frame(&Record::CheckpointBegin { id }, &mut bytes);
        for r in records {
            frame(&r, &mut bytes);
        }
        frame(&Record::CheckpointEnd { id }, &mut bytes);
        self.bytes_since_checkpoint = 0;
        self.stats.queued_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let id = self.batch.allocate();
        if let Some(tx) = &self.tx {
            let _ = tx.send(ToWriter::Checkpoint { id, bytes });
        }
    }

    fn bytes_since_checkpoint(&self) -> u64 {
        self.bytes_since_checkpoint
    }

    fn notify_fd(&self) -> RawFd {
        self.notify_r.as_raw_fd()
    }

    fn drain_notify(&self) {
        drain_pipe(&self.notify_r);
    }

    fn stats(&self) -> &JournalStats {
        &self.stats
    }

    fn stats_handle(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    fn sync_policy(&self) -> SyncPolicy {
        self.sync
    }

    fn close(&mut self) {
        self.submit();
        self.tx = None; // the writer drains what is queued, then ends
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Empties a non-blocking notification pipe.
pub fn drain_pipe(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n < buf.len() {
            break;
        }
    }
}

/// The journal holds job arguments and results: `dir` is created 0700 and
/// its files are this user's only (0600); a directory or files left more
/// open by an earlier version are closed up, and that is said.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        // Only a directory of ours that is not a shared one (sticky, like
        // /tmp) is changed; otherwise it is only said.
        if meta.uid() == me && mode & 0o1000 == 0 {
            warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "data_dir was readable by others: made 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        } else {
            warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o7777), "data_dir is readable by others and not ours to change: give the router a private directory");
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(m) = entry.metadata() else { continue };
        if m.is_file() && m.uid() == me && m.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// One router per journal directory: an exclusive lock on `dir/lock`.
fn lock_dir(dir: &Path) -> Result<std::fs::File, JournalError> {
    let path = dir.join("lock");
    let f = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new().create(true).truncate(false).write(true),
        0o600,
    )
    .open(&path)
    .map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(locked) => {
            locked.unlock().map_err(|(_, e)| JournalError::Io { path: path.clone(), source: e.into() }).and_then(|f| {
                // Re-take it for the life of the journal (Flock unlocks on drop).
                let raw = f.as_raw_fd();
                // SAFETY: flock(2) on an fd we own, with no memory effects.
                if unsafe { nix::libc::flock(raw, nix::libc::LOCK_EX | nix::libc::LOCK_NB) } != 0 {
                    return Err(JournalError::Locked { path: dir.to_path_buf() });
                }
                Ok(f)
            })
        }
        Err(_) => Err(JournalError::Locked { path: dir.to_path_buf() }),
    }
}

fn writer_loop(
    rx: HandoffReceiver<ToWriter>,
    spare: crossbeam_channel::Sender<Vec<u8>>,
    mut w: Writer,
    durable: Arc<AtomicU64>,
    notify_w: OwnedFd,
) {
    // Everything queued since the last pass is written and synced together
    // (group commit); the thread sleeps without spinning when there is
    // nothing (see `handoff`).
    let mut msgs = Vec::new();
    while rx.recv_all(&mut msgs) {
        for m in msgs.drain(..) {
            let (id, bytes, checkpoint, records) = match m {
                ToWriter::Batch { id, bytes, records } => (id, bytes, false, records),
                ToWriter::Checkpoint { id, bytes } => (id, bytes, true, 0),
            };
            w.stats.queued_bytes.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
            w.stats.records.fetch_add(records, Ordering::Relaxed);
            w.stats.batches.fetch_add(1, Ordering::Relaxed);
            w.write(Chunk { id, bytes, checkpoint });
        }
        let id = w.end_pass();
        for mut bytes in w.take_spent() {
            if bytes.capacity() <= SPARE_BUFFER_MAX {
                bytes.clear();
                let _ = spare.try_send(bytes);
            }
        }
        durable.store(id, Ordering::Release);
        let _ = nix::unistd::write(&notify_w, &[1]);
    }
    // The router closed the journal: make everything durable.
    w.finish();
}

/// What is written in one go: a batch of one poll pass, or a checkpoint
/// (which starts a segment of its own).
pub(crate) struct Chunk {
    pub id: u64,
    pub bytes: Vec<u8>,
    pub checkpoint: bool,
}

/// The journal writer, synchronous (its thread is [`writer_loop`]; tests
/// drive it directly over a simulated file system).
///
/// What it promises: [`Writer::end_pass`] returns only ids of batches that
/// are durable by the sync policy — for `fsync`, synced. A failed write or
/// sync is never retried in place: after a failed fdatasync the kernel may
/// have dropped the dirty pages, so a later success proves nothing
/// ("fsyncgate"), and after a partial write the segment holds half a
/// batch. Instead the segment is abandoned at the length known good, and
/// everything written after that is written again from memory into a new
/// segment whose header names that length (replay reads the abandoned one
/// only up to it). Receipts wait meanwhile; it is logged and counted.
/// A checkpoint is synced before the segments it covers are deleted,
/// whatever the sync policy.
pub(crate) struct Writer {
    fs: Box<dyn Fs>,
    dir: PathBuf,
    sync: SyncPolicy,
    segment_bytes: u64,
    seg: SegmentWriter,
    /// Length of `seg` known synced.
    good_len: u64,
    /// Chunks in `seg` past `good_len` (written, not synced), in order:
    /// written again after a failure. At most a segment's worth.
    unsynced: Vec<Chunk>,
    /// The highest id durable by the policy.
    durable_id: u64,
    /// Segments before this one are covered by a checkpoint, to delete
    /// once it is durable.
    obsolete_before: Option<u64>,
    /// Buffers of chunks that are durable (handed back for reuse).
    spent: Vec<Vec<u8>>,
    pub(crate) stats: Arc<JournalStats>,
    /// In a failure episode (logged once, and when it ends).
    failing: bool,
    /// Backoff between attempts while the disk fails.
    backoff: Duration,
    /// Zeros kept written ahead of the records in each segment
    /// ([`SegmentWriter::zero_ahead`]).
    zero_ahead: u64,
}

impl Writer {
    pub(crate) fn new(
        fs: Box<dyn Fs>,
        dir: PathBuf,
        sync: SyncPolicy,
        segment_bytes: u64,
        seg: SegmentWriter,
        stats: Arc<JournalStats>,
    ) -> Writer {
        let mut seg = seg;
        let zero_ahead = zero_ahead_for(segment_bytes);
        seg.zero_ahead = zero_ahead;
        let good_len = seg.len;
        Writer {
            fs,
            dir,
            sync,
            segment_bytes,
            seg,
            good_len,
            unsynced: Vec::new(),
            durable_id: 0,
            obsolete_before: None,
            spent: Vec::new(),
            stats,
            failing: false,
            backoff: Duration::from_millis(200),
            zero_ahead,
        }
    }

    /// Sets the pause between attempts while the disk fails (tests: none).
    #[cfg(test)]
    pub(crate) fn set_backoff(&mut self, d: Duration) {
        self.backoff = d;
    }

    /// The file system (tests look at it).
    /// Writes one chunk to the page cache (a checkpoint, or a full
    /// segment, starts a new segment first).
    pub(crate) fn write(&mut self, chunk: Chunk) {
        if chunk.checkpoint || self.seg.len >= self.segment_bytes {
            self.rotate();
        }
        self.append_or_recover(chunk);
    }

    /// Ends a poll pass: syncs (`fsync`; any policy when a checkpoint waits
    /// to delete what it covers) and returns the highest durable id.
    pub(crate) fn end_pass(&mut self) -> u64 {
        if (self.sync == SyncPolicy::Fsync || self.obsolete_before.is_some()) && !self.unsynced.is_empty() {
            let t = Instant::now();
            if !self.try_sync() {
                self.recover(Vec::new());
            }
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.stats.sync_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if let Some(before) = self.obsolete_before {
            if self.unsynced.iter().all(|c| !c.checkpoint) {
                self.obsolete_before = None;
                self.delete_before(before);
            }
        }
        self.durable_id
    }

    /// Buffers of durable chunks, for reuse.
    pub(crate) fn take_spent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.spent)
    }

    /// At close: everything durable, and the zeros written ahead cut off
    /// (a journal closed well ends with its last record; after a crash the
    /// next replay cuts them).
    pub(crate) fn finish(&mut self) {
        if !self.unsynced.is_empty() && !self.try_sync() {
            self.recover(Vec::new());
        }
        if self.seg.file_len() > self.seg.len {
            let path = segment::segment_path(&self.dir, self.seg.seq);
            if let Err(e) = self.fs.truncate(&path, self.seg.len) {
                warn!(segment = %path.display(), error = %e, "journal: cannot cut the zeros written ahead at close (the next start does)");
            }
        }
    }

    /// The current segment synced, then a new one started.
    fn rotate(&mut self) {
        if !self.unsynced.is_empty() && !self.try_sync() {
            self.recover(Vec::new());
        }
        // Synced whole: the next segment names where its records end (zeros
        // written ahead follow them).
        self.start_segment(Some(self.seg.len));
    }

    fn append_or_recover(&mut self, mut chunk: Chunk) {
        segment::seal(&mut chunk.bytes, self.seg.salt);
        match self.seg.write(self.fs.as_mut(), &chunk.bytes) {
            Ok(grew) => self.wrote(chunk, grew),
            Err(e) => {
                self.failed("write", &e);
                self.recover(vec![chunk]);
            }
        }
    }

    /// `chunk` is in the current segment, whose file grew by `grew` bytes
    /// (zeros written ahead included).
    fn wrote(&mut self, chunk: Chunk, grew: u64) {
        let n = chunk.bytes.len() as u64;
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        self.stats.disk_bytes.fetch_add(grew, Ordering::Relaxed);
        if chunk.checkpoint {
            self.obsolete_before = Some(self.seg.seq);
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        if self.sync != SyncPolicy::Fsync {
            // `write` / `off`: written is what they promise.
            self.durable_id = self.durable_id.max(chunk.id);
        }
        self.unsynced.push(chunk);
    }

    /// fdatasync of the current segment: true when it worked (what was in
    /// it is durable).
    fn try_sync(&mut self) -> bool {
        match self.seg.sync(self.fs.as_mut()) {
            Ok(()) => {
                self.good_len = self.seg.len;
                for c in self.unsynced.drain(..) {
                    self.durable_id = self.durable_id.max(c.id);
                    self.spent.push(c.bytes);
                }
                if self.failing {
                    self.failing = false;
                    info!(segment = self.seg.seq, "journal: writing and syncing again; receipts go out");
                }
                true
            }
            Err(e) => {
                self.failed("sync", &e);
                false
            }
        }
    }

    fn failed(&mut self, what: &str, e: &std::io::Error) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing {
            error!(error = %e, segment = self.seg.seq, good_len = self.good_len,
                   "journal: {what} failed; what was not durable is written again from memory into a new segment (never retried in place); receipts wait");
        }
        self.failing = true;
    }

    /// A new segment after the current one, whose header says the current
    /// one is valid up to `cut` (None: all of it). Retried until it can be
    /// made (a full disk may clear); receipts wait meanwhile.
    fn start_segment(&mut self, cut: Option<u64>) {
        let next = self.seg.seq + 1;
        loop {
            match SegmentWriter::create(self.fs.as_mut(), &self.dir, next, cut) {
                Ok(mut s) => {
                    s.zero_ahead = self.zero_ahead;
                    let old = std::mem::replace(&mut self.seg, s);
                    old.close(self.fs.as_mut());
                    self.good_len = self.seg.len;
                    return;
                }
                Err(e) => {
                    self.failed("segment creation", &e);
                    std::thread::sleep(self.backoff);
                }
            }
        }
    }

    /// After a failed write or sync: the current segment is abandoned at
    /// `good_len` (what it holds synced); its unsynced chunks and `pending`
    /// are written again from memory. The first new segment carries the
    /// cut in its header, so it is written under a temporary name and
    /// published only once synced: until then a restart reads the old
    /// segment whole (a process crash keeps what `write` promised; a power
    /// loss ends the log at its first bad record). A checkpoint still opens
    /// a segment of its own. Repeats, with a pause, until it works;
    /// failed attempts reuse the temporary name (no pile of files).
    fn recover(&mut self, pending: Vec<Chunk>) {
        let mut todo: std::collections::VecDeque<Chunk> = self.unsynced.drain(..).chain(pending).collect();
        loop {
            if !self.rewrite_first(&mut todo) {
                std::thread::sleep(self.backoff);
                continue;
            }
            // What is left starts with a checkpoint: ordinary segments.
            let mut ok = true;
            while let Some(mut chunk) = todo.pop_front() {
                if chunk.checkpoint {
                    if !self.unsynced.is_empty() && !self.try_sync() {
                        todo.push_front(chunk);
                        ok = false;
                        break;
                    }
                    self.start_segment(Some(self.seg.len));
                }
                segment::seal(&mut chunk.bytes, self.seg.salt);
                match self.seg.write(self.fs.as_mut(), &chunk.bytes) {
                    Ok(_) => {
                        if chunk.checkpoint {
                            self.obsolete_before = Some(self.seg.seq);
                        }
                        self.unsynced.push(chunk);
                    }
                    Err(e) => {
                        self.failed("write", &e);
                        todo.push_front(chunk);
                        ok = false;
                        break;
                    }
                }
            }
            if ok && self.try_sync() {
                return;
            }
            for c in self.unsynced.drain(..).rev() {
                todo.push_front(c);
            }
            std::thread::sleep(self.backoff);
        }
    }

    /// The first segment of a recovery (see [`Writer::recover`]): the
    /// chunks of `todo` up to a checkpoint (or one checkpoint and what
    /// follows it up to the next), written, synced and published. False
    /// (and `todo` as it was) when any step failed.
    fn rewrite_first(&mut self, todo: &mut std::collections::VecDeque<Chunk>) -> bool {
        let next = self.seg.seq + 1;
        let mut fresh = match SegmentWriter::create_pending(self.fs.as_mut(), &self.dir, next, Some(self.good_len)) {
            Ok(mut s) => {
                s.zero_ahead = self.zero_ahead;
                s
            }
            Err(e) => {
                self.failed("segment creation", &e);
                return false;
            }
        };
        let mut written: Vec<Chunk> = Vec::new();
        let mut failure = None;
        // Up to the next checkpoint: one may only open the segment.
        while todo.front().is_some_and(|c| !c.checkpoint || written.is_empty()) {
            let mut chunk = todo.pop_front().expect("front exists");
            segment::seal(&mut chunk.bytes, fresh.salt);
            if let Err(e) = fresh.write(self.fs.as_mut(), &chunk.bytes) {
                todo.push_front(chunk);
                failure = Some(("write", e));
                break;
            }
            written.push(chunk);
        }
        if failure.is_none() {
            if let Err(e) = fresh.sync(self.fs.as_mut()).and_then(|_| fresh.publish(self.fs.as_mut(), &self.dir)) {
                failure = Some(("sync", e));
            }
        }
        if let Some((what, e)) = failure {
            self.failed(what, &e);
            fresh.close(self.fs.as_mut());
            for c in written.into_iter().rev() {
                todo.push_front(c);
            }
            return false;
        }
        let old = std::mem::replace(&mut self.seg, fresh);
        old.close(self.fs.as_mut());
        self.good_len = self.seg.len;
        if written.iter().any(|c| c.checkpoint) {
            self.obsolete_before = Some(self.seg.seq);
        }
        for c in written {
            self.durable_id = self.durable_id.max(c.id);
            self.spent.push(c.bytes);
        }
        if self.failing {
            self.failing = false;
            info!(
                segment = self.seg.seq,
                "journal: rewritten into a new segment; writing and syncing again, receipts go out"
            );
        }
        true
    }

    /// Deletes the segments a durable checkpoint covers (and makes that
    /// durable).
    fn delete_before(&mut self, seq: u64) {
        let Ok(segments) = segment::list_segments(self.fs.as_mut(), &self.dir) else { return };
        let mut freed = 0;
        for (s, path) in segments {
            if s >= seq {
                break;
            }
            let len = self.fs.len(&path).unwrap_or(0);
            match self.fs.remove(&path) {
                Ok(()) => freed += len,
                Err(e) => warn!(segment = %path.display(), error = %e, "cannot delete a checkpointed segment"),
            }
        }
        let _ = self.fs.sync_dir(&self.dir);
        let stats = &self.stats;
        stats.disk_bytes.fetch_sub(freed.min(stats.disk_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
    }
}

/// Zeros to keep written ahead of the records: a sixteenth of a segment,
/// at most 1 MiB (a new block range every ~100 group commits of 1 ms jobs;
/// a segment file at most that much longer than its records).
fn zero_ahead_for(segment_bytes: u64) -> u64 {
    (segment_bytes / 16).clamp(512, 1 << 20)
}

/// After replay, before anything is deleted or written: what replay
/// trusts (the checkpoint it started from and every segment after it) is
/// made durable — it may have been read from the page cache of a process
/// that crashed before syncing it, and a new segment after it would make a
/// later power loss's torn tail look like damage — then the segments it
/// covers go, durably.
pub(crate) fn settle_after_replay(fs: &mut dyn Fs, dir: &Path, report: &ReplayReport) -> Result<(), JournalError> {
    for path in &report.live {
        fs.sync_path(path).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
    }
    for old in &report.obsolete {
        if let Err(e) = fs.remove(old) {
            warn!(segment = %old.display(), error = %e, "cannot delete an obsolete segment");
        }
    }
    fs.sync_dir(dir).map_err(|e| JournalError::Io { path: dir.to_path_buf(), source: e })
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;
