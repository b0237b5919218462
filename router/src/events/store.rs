//! The window of recent events: in memory for readers, and in files
//! (`data_dir/events/<first offset>.events`, one `OWNER\tJSON` line per
//! event) so a restart has them again. Bounded by [`Retention`]: the
//! oldest events go first, whole files are deleted once nothing in them
//! is kept.
//!
//! One writer thread renders events, appends them to the files and the
//! window, and wakes waiting readers; the router's thread only hands it
//! batches. The files need no sync per event: an event lost from them in a
//! crash is derived again from the journal (see the module above); they
//! are synced before a journal checkpoint forgets those records.

use super::{NewEvent, Retention};
use crossbeam_channel::Sender;
use emq_journal::handoff::{handoff, Empty, HandoffReceiver, HandoffSender};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// A file is closed and the next one started past this size.
const FILE_BYTES: u64 = 8 << 20;

/// Events a reader looks at per call at most (filters may skip many).
const SCAN_MAX: usize = 50_000;

/// One published event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub offset: u64,
    pub at: f64,
    pub kind: &'static str,
    pub job: Option<Box<str>>,
    pub queue: Option<Arc<str>>,
    /// Who may read it besides an admin (the job's owner token).
    pub owner: Option<Arc<str>>,
    /// The JSON readers get.
    pub line: Arc<str>,
}

impl StoredEvent {
    fn cost(&self) -> u64 {
        (self.line.len() + self.job.as_ref().map_or(0, |j| j.len()) + 96) as u64
    }
}

/// What a reader wants.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub types: Option<Vec<String>>,
    pub queue: Option<String>,
    pub job: Option<String>,
    /// Only events of jobs with this owner (a client token's reader).
    pub owner: Option<String>,
}

impl Filter {
    fn matches(&self, e: &StoredEvent) -> bool {
        if let Some(o) = &self.owner {
            if e.owner.as_deref() != Some(o.as_str()) {
                return false;
            }
        }
        if let Some(t) = &self.types {
            if !t.iter().any(|t| t == e.kind) {
                return false;
            }
        }
        if let Some(q) = &self.queue {
            if e.queue.as_deref() != Some(q.as_str()) {
                return false;
            }
        }
        if let Some(j) = &self.job {
            if e.job.as_deref() != Some(j.as_str()) {
                return false;
            }
        }
        true
    }
}

/// One thing a reader gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Offsets `from..=to` are not available (pruned, or never held here).
    Gap {
        from: u64,
        to: u64,
    },
    Event {
        offset: u64,
        kind: Box<str>,
        line: Arc<str>,
    },
}

impl Item {
    /// The offset a reader resumes after.
    pub fn offset(&self) -> u64 {
        match self {
            Item::Gap { to, .. } => *to,
            Item::Event { offset, .. } => *offset,
        }
    }

    /// The JSON of it.
    pub fn json(&self) -> String {
        match self {
            Item::Gap { from, to } => serde_json::json!({"type": "gap", "from": from, "to": to}).to_string(),
            Item::Event { line, .. } => line.to_string(),
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            Item::Gap { .. } => "gap",
            Item::Event { kind, .. } => kind,
        }
    }
}

/// A reader's answer: items in offset order; `next` is the offset to ask
/// after next time (everything up to it was looked at).
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    pub next: u64,
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<StoredEvent>,
    bytes: u64,
    /// The oldest offset the window can vouch for.
    first: u64,
    /// The newest offset published (first - 1 when none).
    last: u64,
    retention: Retention,
    /// Files: (first offset, path, bytes), oldest first.
    files: VecDeque<(u64, PathBuf, u64)>,
}

impl Inner {
    fn push(&mut self, e: StoredEvent) {
        if e.offset <= self.last {
            return;
        }
        self.bytes += e.cost();
        self.last = e.offset;
        self.events.push_back(e);
    }

    fn prune(&mut self, now_unix: f64) {
        while let Some(front) = self.events.front() {
            let too_old = self.retention.max_age.is_some_and(|a| front.at > 0.0 && now_unix - front.at > a);
            if self.bytes <= self.retention.bytes && !too_old {
                break;
            }
            let e = self.events.pop_front().expect("front");
            self.bytes -= e.cost();
            self.first = e.offset + 1;
        }
    }
}

/// The events readers read. Shared with the HTTP threads.
#[derive(Debug)]
pub struct EventWindow {
    inner: Mutex<Inner>,
    cond: Condvar,
    /// Every event up to this offset is synced to the files.
    synced: std::sync::atomic::AtomicU64,
}

impl EventWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every event up to this offset is synced to the files.
    pub fn synced_offset(&self) -> u64 {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Published events after `offset` (what a checkpoint must keep when
    /// the files may not have them).
    pub fn events_after(&self, offset: u64) -> Vec<StoredEvent> {
        let i = self.lock();
        let start = i.events.partition_point(|e| e.offset <= offset);
        i.events.range(start..).cloned().collect()
    }

    /// The newest offset published (0 when none ever was).
    pub fn last_offset(&self) -> u64 {
        self.lock().last
    }

    /// `(first, last, events, bytes)`, for STATUS and metrics.
    pub fn figures(&self) -> (u64, u64, usize, u64) {
        let i = self.lock();
        (i.first, i.last, i.events.len(), i.bytes)
    }

    /// Up to `max` items after `after` that pass `filter`, waiting up to
    /// `wait` for the first when there are none yet.
    pub fn read(&self, after: u64, max: usize, filter: &Filter, wait: Duration) -> Page {
        let deadline = Instant::now() + wait;
        let mut inner = self.lock();
        let mut cur = after;
        loop {
            let page = Self::read_locked(&inner, cur, max.max(1), filter);
            let now = Instant::now();
            if !page.items.is_empty() || now >= deadline {
                return page;
            }
            if page.next > cur {
                // Events the filter skipped: look further (without waiting)
                // until one matches or there is nothing more.
                cur = page.next;
                continue;
            }
            inner = self.cond.wait_timeout(inner, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn read_locked(inner: &Inner, after: u64, max: usize, filter: &Filter) -> Page {
        let mut page = Page { items: Vec::new(), next: after };
        let mut expect = after.saturating_add(1);
        if expect > inner.last {
            return page;
        }
        // Gaps whatever the filter: a reader must know what it missed.
        let gaps = true;
        if expect < inner.first {
            if gaps {
                page.items.push(Item::Gap { from: expect, to: inner.first - 1 });
            }
            expect = inner.first;
            page.next = inner.first - 1;
        }
        let start = inner.events.partition_point(|e| e.offset < expect);
        for e in inner.events.range(start..).take(SCAN_MAX) {
            if e.offset > expect {
                if gaps {
                    page.items.push(Item::Gap { from: expect, to: e.offset - 1 });
                }
                page.next = e.offset - 1;
            }
            if filter.matches(e) {
                page.items.push(Item::Event { offset: e.offset, kind: e.kind.into(), line: e.line.clone() });
            }
            expect = e.offset + 1;
            page.next = e.offset;
            if page.items.len() >= max {
                break;
            }
        }
        page
    }
}

enum ToWriter {
    Publish(Vec<NewEvent>),
    Sync(Sender<()>),
    Stop(Sender<()>),
}

/// The router's handle on the writer thread.
pub struct Writer {
    tx: Option<HandoffSender<ToWriter>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Hands events (in offset order) to the writer.
    pub fn publish(&self, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(ToWriter::Publish(events));
        }
    }

    /// Waits until everything handed over is in the window and synced to
    /// the files (before a journal checkpoint).
    pub fn sync(&self) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if let Some(tx) = &self.tx {
            if tx.send(ToWriter::Sync(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_secs(60));
            }
        }
    }

    /// Writes and syncs what it has, then ends the thread.
    pub fn stop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            if tx.send(ToWriter::Stop(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_secs(60));
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn file_name(first: u64) -> String {
    format!("{first:020}.events")
}

/// One line of a file: `OWNER\tJSON` (`-` for no owner).
fn parse_line(line: &str) -> Option<StoredEvent> {
    let (owner, json) = line.split_once('\t')?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(StoredEvent {
        offset: v.get("offset")?.as_u64()?,
        at: v.get("at").and_then(|a| a.as_f64()).unwrap_or(0.0),
        kind: super::known_kind(v.get("type")?.as_str()?),
        job: v.get("job").and_then(|j| j.as_str()).map(Into::into),
        queue: v.get("queue").and_then(|q| q.as_str()).map(Arc::from),
        owner: (owner != "-").then(|| Arc::from(owner)),
        line: Arc::from(json),
    })
}

fn write_line(out: &mut Vec<u8>, e: &StoredEvent) {
    match &e.owner {
        // Owners are tokens a client chose: no tab or newline can be in
        // one (headers are split on them), but be sure.
        Some(o) if !o.contains(['\t', '\n']) => out.extend_from_slice(o.as_bytes()),
        _ => out.push(b'-'),
    }
    out.push(b'\t');
    out.extend_from_slice(e.line.as_bytes());
    out.push(b'\n');
}

/// Opens (creates) the window in `dir`: the files read back (a torn last
/// line cut off), the writer thread started.
pub fn open(dir: &Path, retention: Retention) -> std::io::Result<(Arc<EventWindow>, Writer)> {
    emq_journal::make_private_dir(dir)?;
    // One router per directory: a second one started by mistake must not
    // read (and cut) a file the first is writing.
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!("{} is in use by another router ({e})", dir.display()),
        )
    })?;
    let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let n = p.file_name()?.to_str()?.strip_suffix(".events")?.parse::<u64>().ok()?;
            Some((n, p))
        })
        .collect();
    names.sort();
    let mut inner = Inner { events: VecDeque::new(), bytes: 0, first: 1, last: 0, retention, files: VecDeque::new() };
    let count = names.len();
    for (i, (first, path)) in names.into_iter().enumerate() {
        let f = std::fs::File::open(&path)?;
        let mut good = 0u64;
        let mut reader = std::io::BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) if line.ends_with('\n') => match parse_line(line.trim_end_matches('\n')) {
                    Some(e) if e.offset > inner.last => {
                        if inner.events.is_empty() {
                            inner.first = e.offset;
                        }
                        good += line.len() as u64;
                        inner.push(e);
                    }
                    _ => break,
                },
                _ => break,
            }
        }
        let len = std::fs::metadata(&path)?.len();
        if good < len {
            if i + 1 == count {
                warn!(file = %path.display(), kept = good, dropped = len - good, "events: torn tail cut off (a crash mid-write)");
            } else {
                warn!(file = %path.display(), kept = good, dropped = len - good, "events: damaged lines dropped");
            }
            std::fs::OpenOptions::new().write(true).open(&path)?.set_len(good)?;
        }
        inner.files.push_back((first, path, good));
    }
    inner.prune(now_unix());
    let synced = std::sync::atomic::AtomicU64::new(inner.last);
    let window = Arc::new(EventWindow { inner: Mutex::new(inner), cond: Condvar::new(), synced });
    let (tx, rx) = handoff();
    let w = window.clone();
    let d = dir.to_path_buf();
    let thread = std::thread::Builder::new().name("emq-events".into()).spawn(move || {
        let _lock = lock;
        writer_loop(&d, &w, &rx)
    })?;
    Ok((window, Writer { tx: Some(tx), thread: Some(thread) }))
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The writer thread: render, append, publish, prune. Everything queued
/// since it last looked is taken at once (`handoff`: no spinning while it
/// waits) and goes to the window under one lock and to the file in one
/// write.
fn writer_loop(dir: &Path, window: &EventWindow, rx: &HandoffReceiver<ToWriter>) {
    let mut file: Option<std::fs::File> = None;
    let mut dirty = false;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut last_sync = Instant::now();
    let mut msgs = Vec::new();
    let mut rendered = Vec::new();
    loop {
        if rx.recv_all_timeout(&mut msgs, Duration::from_secs(1)) == Err(Empty::Closed) {
            return;
        }
        let mut replies = Vec::new();
        let mut stop = false;
        if msgs.is_empty() {
            // Idle: events past their age go even when nothing new comes.
            window.lock().prune(now_unix());
        }
        for msg in msgs.drain(..) {
            match msg {
                ToWriter::Publish(events) => rendered.extend(events.into_iter().map(NewEvent::into_stored)),
                ToWriter::Sync(done) => replies.push(done),
                ToWriter::Stop(done) => {
                    replies.push(done);
                    stop = true;
                }
            }
        }
        if !rendered.is_empty() {
            buf.clear();
            for e in &rendered {
                write_line(&mut buf, e);
            }
            let first_offset = rendered.first().map_or(0, |e| e.offset);
            {
                let mut inner = window.inner.lock().unwrap_or_else(|p| p.into_inner());
                for e in rendered.drain(..) {
                    inner.push(e);
                }
                inner.prune(now_unix());
            }
            window.cond.notify_all();
            if let Err(e) = append(dir, window, &mut file, &buf, first_offset) {
                error!(error = %e, "events: cannot write to the events files (the journal still has them)");
                file = None;
            }
            dirty = true;
        }
        if dirty && (!replies.is_empty() || last_sync.elapsed() >= Duration::from_secs(1)) {
            let upto = window.last_offset();
            let synced = match &file {
                Some(f) => match f.sync_data() {
                    Ok(()) => true,
                    Err(e) => {
                        error!(error = %e, "events: sync failed");
                        false
                    }
                },
                None => false,
            };
            if synced {
                window.synced.store(upto, std::sync::atomic::Ordering::Release);
                dirty = false;
            }
            last_sync = Instant::now();
            remove_old_files(window);
        }
        for done in replies {
            let _ = done.send(());
        }
        if stop {
            return;
        }
    }
}

/// Appends `bytes` (events from `first_offset` on) to the newest file,
/// starting a new one past [`FILE_BYTES`].
fn append(
    dir: &Path,
    window: &EventWindow,
    file: &mut Option<std::fs::File>,
    bytes: &[u8],
    first_offset: u64,
) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    // The newest file's length as the window counts it (set from the file
    // when it was read back or created, grown only by whole writes): where
    // a failed write is cut back to, with no stat per batch.
    let newest_len = window.lock().files.back().map(|(_, _, size)| *size);
    let start_new = newest_len.is_none_or(|size| size >= FILE_BYTES);
    let before = if start_new { 0 } else { newest_len.unwrap_or(0) };
    if start_new {
        // The old file synced outside the window's lock (readers and the
        // router's figures never wait for a disk).
        if let Some(f) = file.take() {
            f.sync_data()?;
        }
        let path = dir.join(file_name(first_offset));
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        window.lock().files.push_back((first_offset, path, 0));
        *file = Some(f);
    } else if file.is_none() {
        let path = window.lock().files.back().map(|f| f.1.clone()).expect("a file");
        *file = Some(std::fs::OpenOptions::new().create(true).append(true).open(&path)?);
    }
    let f = file.as_mut().expect("open");
    if let Err(e) = f.write_all(bytes) {
        // No torn line left in the middle of a file: cut back to where
        // this batch began (its events are in the journal still).
        let _ = f.set_len(before);
        return Err(e);
    }
    if let Some(last) = window.lock().files.back_mut() {
        last.2 += bytes.len() as u64;
    }
    Ok(())
}

/// Deletes files all of whose events are older than the window.
fn remove_old_files(window: &EventWindow) {
    let doomed: Vec<PathBuf> = {
        let mut inner = window.lock();
        let mut out = Vec::new();
        while inner.files.len() >= 2 && inner.files[1].0 <= inner.first {
            out.push(inner.files.pop_front().expect("two").1);
        }
        out
    };
    for p in doomed {
        if let Err(e) = std::fs::remove_file(&p) {
            warn!(file = %p.display(), error = %e, "events: cannot remove an old file");
        }
    }
}

#[cfg(test)]
pub(crate) fn window_for_tests(retention: Retention) -> EventWindow {
    EventWindow {
        inner: Mutex::new(Inner {
            events: VecDeque::new(),
            bytes: 0,
            first: 1,
            last: 0,
            retention,
            files: VecDeque::new(),
        }),
        cond: Condvar::new(),
        synced: std::sync::atomic::AtomicU64::new(0),
    }
}

#[cfg(test)]
impl EventWindow {
    pub(crate) fn push_for_tests(&self, e: StoredEvent, now_unix: f64) {
        let mut i = self.lock();
        i.push(e);
        i.prune(now_unix);
    }
}
