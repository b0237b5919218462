//! # emq-pgjournal — the router's journal and leader lease on PostgreSQL
//!
//! Owns: the PostgreSQL form of the job journal ([`PgJournal`], behind the
//! same [`JobLog`] trait as the file journal: the same records, group
//! commit — every batch the router submitted while the previous commit was
//! in flight goes in one row of one transaction — and checkpoints that
//! delete what they cover in the same transaction), the schema and its
//! version ([`schema`]), and leadership: the lease row with its epoch, the
//! fencing token ([`Election`] for standbys, [`lease::LeaseKeeper`] for the
//! leader).
//!
//! Does not own: what the records mean (the router's `recovery` room), when
//! the router binds or stops (its `ha` module), or sockets. PostgreSQL's
//! own replication and failover (`target_session_attrs=read-write` in the
//! URL picks the primary) are the database's business.

pub mod db;
pub mod lease;
pub mod schema;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use db::{Db, DbError};
use emq_journal::segment::{frame, read_frame};
use emq_journal::{drain_pipe, JobLog, JournalStats, PendingBatch, Record, SyncPolicy};
use futures_util::{pin_mut, TryStreamExt};
use lease::LeaseShared;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{error, info, warn};

/// What the PostgreSQL journal could not do at start.
#[derive(Debug, Error)]
pub enum PgError {
    #[error("PostgreSQL at {url}: {why}")]
    Db { url: String, why: String },
    #[error("PostgreSQL journal schema is version {found}, newer than this router's {ours}: upgrade the router")]
    NewerSchema { found: i32, ours: i32 },
    #[error("PostgreSQL journal row {seq}: {why}")]
    Damaged { seq: u64, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Creates the schema when missing and checks its version.
pub fn ensure_schema(db: &mut Db) -> Result<(), DbError> {
    let sql = format!("BEGIN; {} COMMIT;", schema::CREATE);
    db.call(None, |c| async move {
        let r = c.batch_execute(&sql).await;
        (c, r)
    })?;
    let version: i32 = db.call(None, |c| async move {
        let r = c.query_one(schema::SCHEMA_VERSION, &[]).await.map(|row| row.get(0));
        (c, r)
    })?;
    if version > schema::VERSION {
        return Err(DbError::Failed(PgError::NewerSchema { found: version, ours: schema::VERSION }.to_string()));
    }
    Ok(())
}

/// Who leads, as the database says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaderInfo {
    pub epoch: i64,
    pub holder: String,
    /// Seconds until the lease expires (negative: expired).
    pub expires_in: f64,
    pub failovers: i64,
}

/// Another router seen in the database lately.
#[derive(Debug, Clone)]
pub struct RouterSeen {
    pub holder: String,
    pub http_addr: String,
    pub frontend_addr: String,
    pub role: String,
    pub seen_secs_ago: f64,
}

/// A router that does not lead: tries to take the lease, says it is there.
pub struct Election {
    db: Db,
    url: String,
    pub holder: String,
    pub ttl: Duration,
}

impl Election {
    pub fn new(url: &str, holder: String, ttl: Duration) -> std::io::Result<Election> {
        let db = Db::new(url, (ttl / 2).max(Duration::from_millis(500)))?;
        Ok(Election { db, url: url.to_owned(), holder, ttl })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn ensure_schema(&mut self) -> Result<(), DbError> {
        ensure_schema(&mut self.db)
    }

    /// One attempt: `Some((epoch, sent))` when the lease was ours to take
    /// (expired by the database's clock), with when the statement left.
    pub fn try_acquire(&mut self) -> Result<Option<(i64, Instant)>, DbError> {
        let holder = self.holder.clone();
        let secs = self.ttl.as_secs_f64();
        let sent = Instant::now();
        let row = self.db.call(None, |c| async move {
            let r = c.query_opt(schema::ACQUIRE, &[&holder, &secs]).await;
            (c, r)
        })?;
        Ok(row.map(|r| (r.get::<_, i64>(0), sent)))
    }

    /// Who leads now.
    pub fn leader(&mut self) -> Result<LeaderInfo, DbError> {
        leader(&mut self.db)
    }

    /// Records this router as present (role `standby` or `leader`).
    pub fn present(&mut self, http: &str, frontend: &str, role: &str) -> Result<(), DbError> {
        present(&mut self.db, &self.holder, http, frontend, role)
    }

    /// The routers seen in the last minute.
    pub fn routers(&mut self) -> Result<Vec<RouterSeen>, DbError> {
        routers(&mut self.db)
    }

    /// The connection, handed to the lease keeper once the lease is ours.
    pub fn into_db(self) -> Db {
        self.db
    }
}

pub fn leader(db: &mut Db) -> Result<LeaderInfo, DbError> {
    db.call(None, |c| async move {
        let r = c.query_one(schema::LEADER, &[]).await.map(|row| LeaderInfo {
            epoch: row.get(0),
            holder: row.get(1),
            expires_in: row.get(2),
            failovers: row.get(3),
        });
        (c, r)
    })
}

pub fn present(db: &mut Db, holder: &str, http: &str, frontend: &str, role: &str) -> Result<(), DbError> {
    let args = (holder.to_owned(), http.to_owned(), frontend.to_owned(), role.to_owned());
    db.call(None, |c| async move {
        let r = c.execute(schema::PRESENT, &[&args.0, &args.1, &args.2, &args.3]).await.map(|_| ());
        (c, r)
    })
}

pub fn routers(db: &mut Db) -> Result<Vec<RouterSeen>, DbError> {
    db.call(None, |c| async move {
        let r = c.query(schema::ROUTERS, &[]).await.map(|rows| {
            rows.iter()
                .map(|row| RouterSeen {
                    holder: row.get(0),
                    http_addr: row.get(1),
                    frontend_addr: row.get(2),
                    role: row.get(3),
                    seen_secs_ago: row.get(4),
                })
                .collect()
        });
        (c, r)
    })
}

/// The leader and the routers seen, as STATUS shows them.
pub fn ha_json(leader: &LeaderInfo, routers: &[RouterSeen]) -> serde_json::Value {
    serde_json::json!({
        "leader": leader.holder,
        "leader_epoch": leader.epoch,
        "failovers": leader.failovers,
        "leader_lease_expires_in": leader.expires_in,
        "routers": routers.iter().map(|r| serde_json::json!({
            "holder": r.holder, "role": r.role, "http_addr": r.http_addr,
            "frontend_addr": r.frontend_addr, "seen_secs_ago": r.seen_secs_ago,
        })).collect::<Vec<_>>(),
    })
}

/// Largest body of one checkpoint row (a checkpoint of many jobs is split
/// into parts, all in one transaction).
const CHECKPOINT_PART_BYTES: usize = 8 << 20;
/// Largest group of batches in one commit.
const GROUP_MAX_BYTES: usize = 32 << 20;

enum ToWriter {
    Batch { id: u64, bytes: Vec<u8>, records: u64 },
    Checkpoint { id: u64, parts: Vec<(Vec<u8>, u64)> },
}

/// What replay found.
#[derive(Debug, Default, Clone)]
pub struct PgReplayReport {
    pub rows: u64,
    pub records: u64,
    pub bytes: u64,
}

/// The journal on PostgreSQL, written by a thread of its own under the
/// lease's fence.
pub struct PgJournal {
    tx: Option<Sender<ToWriter>>,
    durable: Arc<AtomicU64>,
    notify_r: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
    batch: PendingBatch,
    stats: Arc<JournalStats>,
    bytes_since_checkpoint: u64,
    fenced: Arc<Mutex<Option<String>>>,
    lease: Arc<LeaseShared>,
}

impl PgJournal {
    /// Replays the journal through `on_record` (after the lease was taken:
    /// every commit of an earlier epoch is visible), then starts the
    /// writer on its own connection.
    pub fn open(
        url: &str,
        lease: Arc<LeaseShared>,
        on_record: impl FnMut(Record),
    ) -> Result<(PgJournal, PgReplayReport), PgError> {
        let dberr = |e: DbError| PgError::Db { url: redact(url), why: e.to_string() };
        let mut db = Db::new(url, Duration::from_secs(10))?;
        ensure_schema(&mut db).map_err(dberr)?;
        let report = replay(&mut db, on_record)?;
        let stats = Arc::new(JournalStats::default());
        let _ = stats.sync.set("postgresql");
        stats.disk_bytes.store(report.bytes, Ordering::Relaxed);
        let (notify_r, notify_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(std::io::Error::from)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let durable = Arc::new(AtomicU64::new(0));
        let fenced = Arc::new(Mutex::new(None));
        db.timeout = Duration::from_secs(2).max(lease_ttl_hint(&lease));
        let writer = PgWriter {
            db,
            lease: lease.clone(),
            stats: stats.clone(),
            durable: durable.clone(),
            fenced: fenced.clone(),
            notify_w,
            reachable: true,
        };
        let thread = std::thread::Builder::new().name("emq-pgjournal".into()).spawn(move || writer.run(rx))?;
        Ok((
            PgJournal {
                tx: Some(tx),
                durable,
                notify_r,
                thread: Some(thread),
                batch: PendingBatch::default(),
                stats,
                bytes_since_checkpoint: report.bytes,
                fenced,
                lease,
            },
            report,
        ))
    }
}

/// Commits wait at most about a lease: past it the router stops anyway.
fn lease_ttl_hint(lease: &LeaseShared) -> Duration {
    lease.valid_until().saturating_duration_since(Instant::now())
}

/// Reads every row in commit order, streaming (a journal of a million
/// jobs is never held whole).
fn replay(db: &mut Db, mut on_record: impl FnMut(Record)) -> Result<PgReplayReport, PgError> {
    let mut report = PgReplayReport::default();
    let mut damage: Option<PgError> = None;
    let rep = &mut report;
    let dmg = &mut damage;
    let cb = &mut on_record;
    db.call(Some(Duration::from_secs(3600)), |c| async move {
        let r = async {
            let rows = c.query_raw(schema::REPLAY, std::iter::empty::<i64>()).await?;
            pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                let body: &[u8] = row.get(0);
                rep.rows += 1;
                rep.bytes += body.len() as u64;
                let mut pos = 0;
                while pos < body.len() {
                    match read_frame(body, pos) {
                        Ok((record, next)) => {
                            rep.records += 1;
                            cb(record);
                            pos = next;
                        }
                        Err(e) => {
                            *dmg = Some(PgError::Damaged { seq: rep.rows, why: format!("{e:?} at byte {pos}") });
                            return Ok(());
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        (c, r)
    })
    .map_err(|e| PgError::Db { url: "journal_url".into(), why: e.to_string() })?;
    match damage {
        Some(d) => Err(d),
        None => Ok(report),
    }
}

impl JobLog for PgJournal {
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
        let Some((id, bytes, records)) = self.batch.take(Vec::new()) else { return };
        self.bytes_since_checkpoint += bytes.len() as u64;
        self.stats.queued_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let _ = tx.send(ToWriter::Batch { id, bytes, records });
        }
    }

    fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn checkpoint(&mut self, records: &mut dyn Iterator<Item = Record>) {
        self.submit();
        let mut parts = vec![(Vec::with_capacity(1 << 20), 0u64)];
        let id = self.batch.allocate();
        frame(&Record::CheckpointBegin { id }, &mut parts[0].0);
        for r in records {
            if parts.last().is_some_and(|p| p.0.len() >= CHECKPOINT_PART_BYTES) {
                parts.push((Vec::with_capacity(1 << 20), 0));
            }
            let last = parts.last_mut().expect("one part");
            frame(&r, &mut last.0);
            last.1 += 1;
        }
        frame(&Record::CheckpointEnd { id }, &mut parts.last_mut().expect("one part").0);
        self.bytes_since_checkpoint = 0;
        let bytes: usize = parts.iter().map(|p| p.0.len()).sum();
        self.stats.queued_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let _ = tx.send(ToWriter::Checkpoint { id, parts });
        }
    }

    fn bytes_since_checkpoint(&self) -> u64 {
        self.bytes_since_checkpoint
    }

    fn close(&mut self) {
        self.submit();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if self.lease.valid() {
                // The writer drains what is queued (it gives up when the
                // lease runs out), then ends.
                let _ = t.join();
            }
            // Else: a writer blocked on a dead connection is left to end by
            // itself; nothing it could still commit is accepted (fenced).
        }
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
        SyncPolicy::Fsync
    }

    fn fenced(&self) -> Option<String> {
        self.fenced.lock().ok().and_then(|f| f.clone())
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's side.
struct PgWriter {
    db: Db,
    lease: Arc<LeaseShared>,
    stats: Arc<JournalStats>,
    durable: Arc<AtomicU64>,
    fenced: Arc<Mutex<Option<String>>>,
    notify_w: OwnedFd,
    reachable: bool,
}

/// How one commit attempt ended.
enum Commit {
    Done,
    Fenced,
    Failed(DbError),
}

impl From<Result<bool, DbError>> for Commit {
    /// A commit attempt's answer: committed (true), fenced (false), or not known.
    fn from(r: Result<bool, DbError>) -> Commit {
        match r {
            Ok(true) => Commit::Done,
            Ok(false) => Commit::Fenced,
            Err(e) => Commit::Failed(e),
        }
    }
}

impl PgWriter {
    fn run(mut self, rx: Receiver<ToWriter>) {
        let mut next: Option<ToWriter> = None;
        loop {
            let first = match next.take() {
                Some(m) => m,
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            let done = match first {
                ToWriter::Checkpoint { id, parts } => {
                    let bytes: u64 = parts.iter().map(|p| p.0.len() as u64).sum();
                    let ok = self.until_committed(|w| w.commit_checkpoint(id, &parts));
                    if ok {
                        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                        self.stats.disk_bytes.store(bytes, Ordering::Relaxed);
                    }
                    self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    ok.then_some(id)
                }
                ToWriter::Batch { id, bytes, records } => {
                    // Group commit: every batch queued meanwhile, in one row.
                    let (mut last, mut body, mut n) = (id, bytes, records);
                    loop {
                        if body.len() >= GROUP_MAX_BYTES {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(ToWriter::Batch { id, bytes, records }) => {
                                last = id;
                                body.extend_from_slice(&bytes);
                                n += records;
                            }
                            Ok(cp) => {
                                next = Some(cp);
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    let ok = self.until_committed(|w| w.commit_batch(last, &body, n));
                    if ok {
                        self.stats.records.fetch_add(n, Ordering::Relaxed);
                        self.stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        self.stats.disk_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    }
                    self.stats.queued_bytes.fetch_sub(body.len() as u64, Ordering::Relaxed);
                    ok.then_some(last)
                }
            };
            match done {
                Some(id) => {
                    self.durable.store(id, Ordering::Release);
                    let _ = nix::unistd::write(&self.notify_w, &[1]);
                }
                None => {
                    // Fenced or the lease ran out: nothing more is committed.
                    let _ = nix::unistd::write(&self.notify_w, &[2]);
                    return;
                }
            }
        }
    }

    /// Retries `attempt` until it commits (true), or the router may no
    /// longer commit: fenced, or its lease window ran out (false).
    fn until_committed(&mut self, mut attempt: impl FnMut(&mut Self) -> Commit) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            if !self.lease.valid() {
                self.fence(self.lease.why_lost().unwrap_or_else(|| "lease lost".into()));
                return false;
            }
            let t = Instant::now();
            match attempt(self) {
                Commit::Done => {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                    self.stats.sync_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if !self.reachable {
                        info!("PostgreSQL journal: committing again");
                        self.reachable = true;
                    }
                    return true;
                }
                Commit::Fenced => {
                    self.fence(format!(
                        "the journal refused a commit: epoch {} is no longer the lease's (another router leads)",
                        self.lease.epoch
                    ));
                    return false;
                }
                Commit::Failed(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    if self.reachable {
                        warn!(error = %e, "PostgreSQL journal: commit failed; no new receipts until it commits (retrying)");
                        self.reachable = false;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn fence(&self, why: String) {
        error!(why = %why, "PostgreSQL journal: this router may no longer commit");
        if let Ok(mut f) = self.fenced.lock() {
            f.get_or_insert(why);
        }
    }

    fn commit_batch(&mut self, batch: u64, body: &[u8], records: u64) -> Commit {
        let (epoch, holder) = (self.lease.epoch, self.lease.holder.clone());
        let batch = batch as i64;
        let records = records.min(i32::MAX as u64) as i32;
        let (append, committed) = match (self.db.prepared(schema::APPEND), self.db.prepared(schema::COMMITTED)) {
            (Ok(a), Ok(c)) => (a, c),
            (Err(e), _) | (_, Err(e)) => return Commit::Failed(e),
        };
        let r = self.db.call(None, |c| async move {
            let r = async {
                let n = c.execute(&append, &[&epoch, &holder, &batch, &0i32, &false, &records, &body]).await?;
                if n == 1 {
                    return Ok(true);
                }
                // Nothing inserted: fenced, or committed by an attempt
                // whose answer was lost.
                Ok(c.query_opt(&committed, &[&epoch, &batch]).await?.is_some())
            }
            .await;
            (c, r)
        });
        Commit::from(r)
    }

    fn commit_checkpoint(&mut self, id: u64, parts: &[(Vec<u8>, u64)]) -> Commit {
        let (epoch, holder) = (self.lease.epoch, self.lease.holder.clone());
        let batch = id as i64;
        let bytes: usize = parts.iter().map(|p| p.0.len()).sum();
        let limit = Duration::from_secs(10) + Duration::from_millis((bytes / (1 << 20)) as u64 * 200);
        let idle_ms = (lease_ttl_hint(&self.lease).as_millis() as u64 / 2).max(500);
        let idle_limit = format!("SET LOCAL idle_in_transaction_session_timeout = {idle_ms}");
        let r = self.db.call(Some(limit), |mut c| async move {
            let r = async {
                if c.query_opt(schema::COMMITTED, &[&epoch, &batch]).await?.is_some() {
                    return Ok(true);
                }
                let tx = c.transaction().await?;
                // A session stuck mid-transaction (its router frozen or cut
                // off) must not hold the lease row for hours.
                tx.batch_execute(&idle_limit).await?;
                for (part, (body, records)) in parts.iter().enumerate() {
                    let (part, records) = (part as i32, (*records).min(i32::MAX as u64) as i32);
                    let n = tx
                        .execute(schema::APPEND_PART, &[&epoch, &batch, &part, &true, &records, &body.as_slice()])
                        .await?;
                    if n != 1 {
                        // Committed by an earlier attempt whose answer was lost?
                        tx.rollback().await?;
                        return Ok(c.query_opt(schema::COMMITTED, &[&epoch, &batch]).await?.is_some());
                    }
                }
                // The fence last: the lease row is locked only from here
                // to the commit.
                if tx.query_opt(schema::FENCE, &[&epoch, &holder]).await?.is_none() {
                    tx.rollback().await?;
                    return Ok(false);
                }
                tx.execute(schema::DELETE_BEFORE, &[&epoch, &batch]).await?;
                tx.commit().await?;
                Ok(true)
            }
            .await;
            (c, r)
        });
        Commit::from(r)
    }
}

/// A parsed PostgreSQL URL (for settings validation).
pub use tokio_postgres::config::SslMode;
pub use tokio_postgres::Config as UrlConfig;
