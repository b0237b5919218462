//! Spilled buffers: when the jobs buffered in memory pass `buffer_memory`,
//! further jobs of a queue go to that queue's *disk tail* instead, in
//! order, and come back a chunk at a time as the memory part drains. The
//! router's memory then stays near `buffer_memory` however long the backlog
//! grows: a spilled job costs no memory at all.
//!
//! The disk tail is not what makes a job durable — the journal is; the
//! spill files are scratch space, emptied at every start (the journal's
//! replay rebuilds the buffers, spilling again past the budget). The store
//! is injected ([`SpillStore`]): [`FileSpill`] in the router, [`MemSpill`]
//! in tests, so the state machine stays free of I/O it cannot fake.

use super::{StoredRequest, WaitingJob};
use emq_journal::segment::{frame, read_frame};
use emq_journal::{AcceptedJob, Record};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// Where jobs that do not fit in memory wait, per queue, in order.
pub trait SpillStore: Send {
    /// Appends `job` to the end of `queue`'s disk tail.
    fn push(&mut self, queue: &str, job: &WaitingJob) -> io::Result<()>;
    /// Takes the oldest jobs of `queue`'s tail, about `max_bytes` of them
    /// (at least one when there is one).
    fn pop_chunk(&mut self, queue: &str, max_bytes: usize) -> io::Result<Vec<WaitingJob>>;
    /// Jobs in `queue`'s tail.
    fn len(&self, queue: &str) -> usize;
    /// Jobs in every tail.
    fn total(&self) -> usize;
    /// Bytes of every tail.
    fn bytes(&self) -> u64;
    /// Every job of `queue`'s tail, in order, without taking them (for a
    /// checkpoint).
    fn for_each(&mut self, queue: &str, f: &mut dyn FnMut(WaitingJob)) -> io::Result<()>;
}

/// The job as a journal `Accepted` record (the same encoding, so nothing
/// new to trust): `received` carries the router-relative milliseconds.
fn encode(job: &WaitingJob, out: &mut Vec<u8>) {
    let rec = Record::Accepted {
        job: AcceptedJob {
            msgid: job.msgid.to_string(),
            client: job.client.as_bytes().to_vec(),
            queue: String::new(),
            requested_queue: job.request.requested_queue().map(str::to_owned),
            headers: job.request.headers_str().to_owned(),
            payload: job.request.payload().to_owned(),
            received: job.received_ms as f64,
        },
        attempts: job.attempts,
    };
    frame(&rec, out);
}

fn decode(rec: Record) -> Option<WaitingJob> {
    let Record::Accepted { job, attempts } = rec else { return None };
    Some(WaitingJob {
        client: PeerId::from(job.client.as_slice()),
        msgid: super::JobId::from(job.msgid.as_str()),
        request: StoredRequest::from_parts(job.requested_queue.as_deref(), &job.headers, &job.payload),
        received_ms: job.received as u32,
        attempts,
    })
}

/// Spill files in a directory: `<dir>/<n>.spill`, one per queue, appended
/// at the end and read from the head; truncated to nothing once read.
pub struct FileSpill {
    dir: PathBuf,
    files: HashMap<String, SpillFile>,
    next: u64,
    bytes: u64,
    total: usize,
}

struct SpillFile {
    file: File,
    /// Next byte to read.
    head: u64,
    /// End of what was written.
    tail: u64,
    count: usize,
    /// Written, not yet in the file.
    pending: Vec<u8>,
}

impl FileSpill {
    /// Spill files go in `dir`, emptied first (what was there is rebuilt
    /// from the journal).
    pub fn new(dir: PathBuf) -> io::Result<FileSpill> {
        let _ = std::fs::remove_dir_all(&dir);
        emq_journal::make_private_dir(&dir)?;
        Ok(FileSpill { dir, files: HashMap::default(), next: 0, bytes: 0, total: 0 })
    }

    fn file(&mut self, queue: &str) -> io::Result<&mut SpillFile> {
        if !self.files.contains_key(queue) {
            self.next += 1;
            let path = self.dir.join(format!("{}.spill", self.next));
            let file = std::os::unix::fs::OpenOptionsExt::mode(
                OpenOptions::new().create(true).truncate(true).read(true).write(true),
                0o600,
            )
            .open(path)?;
            self.files.insert(queue.to_owned(), SpillFile { file, head: 0, tail: 0, count: 0, pending: Vec::new() });
        }
        Ok(self.files.get_mut(queue).expect("just inserted"))
    }
}

impl SpillFile {
    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.seek(SeekFrom::Start(self.tail))?;
            self.file.write_all(&self.pending)?;
            self.tail += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    /// Reads `[from, from + len)`.
    fn read(&mut self, from: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.file.seek(SeekFrom::Start(from))?;
        self.file.read_exact(&mut buf)?;
        Ok(buf)
    }
}

impl SpillStore for FileSpill {
    fn push(&mut self, queue: &str, job: &WaitingJob) -> io::Result<()> {
        let f = self.file(queue)?;
        let before = f.pending.len();
        encode(job, &mut f.pending);
        let added = (f.pending.len() - before) as u64;
        f.count += 1;
        if f.pending.len() >= 1 << 16 {
            f.flush()?;
        }
        self.bytes += added;
        self.total += 1;
        Ok(())
    }

    fn pop_chunk(&mut self, queue: &str, max_bytes: usize) -> io::Result<Vec<WaitingJob>> {
        let Some(f) = self.files.get_mut(queue) else { return Ok(Vec::new()) };
        f.flush()?;
        let len = ((f.tail - f.head) as usize).min(max_bytes.max(1 << 16));
        let buf = f.read(f.head, len)?;
        let mut out = Vec::new();
        let mut pos = 0;
        while let Ok((rec, next)) = read_frame(&buf, pos) {
            if let Some(job) = decode(rec) {
                out.push(job);
            }
            pos = next;
        }
        if pos == 0 && f.tail > f.head {
            // One record larger than the chunk: read exactly it.
            let header = f.read(f.head, 8)?;
            let n = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize + 8;
            let buf = f.read(f.head, n)?;
            let (rec, next) = read_frame(&buf, 0)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("spill file damaged: {e:?}")))?;
            out.extend(decode(rec));
            pos = next;
        }
        f.head += pos as u64;
        f.count -= out.len().min(f.count);
        self.total -= out.len().min(self.total);
        self.bytes = self.bytes.saturating_sub(pos as u64);
        if f.head >= f.tail && f.pending.is_empty() {
            // Read to the end: start the file over (its space comes back).
            f.file.set_len(0)?;
            f.head = 0;
            f.tail = 0;
        }
        Ok(out)
    }

    fn len(&self, queue: &str) -> usize {
        self.files.get(queue).map_or(0, |f| f.count)
    }

    fn total(&self) -> usize {
        self.total
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn for_each(&mut self, queue: &str, cb: &mut dyn FnMut(WaitingJob)) -> io::Result<()> {
        let Some(f) = self.files.get_mut(queue) else { return Ok(()) };
        f.flush()?;
        let mut at = f.head;
        while at < f.tail {
            let len = ((f.tail - at) as usize).min(8 << 20);
            let buf = f.read(at, len)?;
            let mut pos = 0;
            while let Ok((rec, next)) = read_frame(&buf, pos) {
                if let Some(job) = decode(rec) {
                    cb(job);
                }
                pos = next;
            }
            if pos == 0 {
                let header = f.read(at, 8)?;
                let n = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize + 8;
                let buf = f.read(at, n)?;
                if let Ok((rec, next)) = read_frame(&buf, 0) {
                    if let Some(job) = decode(rec) {
                        cb(job);
                    }
                    pos = next;
                } else {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "spill file damaged"));
                }
            }
            at += pos as u64;
        }
        Ok(())
    }
}

/// Disk tails kept in memory, encoded as on disk (tests, and routers
/// without a data directory).
#[derive(Default)]
pub struct MemSpill {
    queues: HashMap<String, VecDeque<Vec<u8>>>,
    bytes: u64,
    total: usize,
}

impl SpillStore for MemSpill {
    fn push(&mut self, queue: &str, job: &WaitingJob) -> io::Result<()> {
        let mut buf = Vec::new();
        encode(job, &mut buf);
        self.bytes += buf.len() as u64;
        self.total += 1;
        self.queues.entry(queue.to_owned()).or_default().push_back(buf);
        Ok(())
    }

    fn pop_chunk(&mut self, queue: &str, max_bytes: usize) -> io::Result<Vec<WaitingJob>> {
        let Some(q) = self.queues.get_mut(queue) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut taken = 0;
        while let Some(buf) = q.front() {
            if !out.is_empty() && taken + buf.len() > max_bytes {
                break;
            }
            let buf = q.pop_front().expect("non-empty");
            taken += buf.len();
            self.bytes -= buf.len() as u64;
            self.total -= 1;
            if let Ok((rec, _)) = read_frame(&buf, 0) {
                out.extend(decode(rec));
            }
        }
        Ok(out)
    }

    fn len(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.len())
    }

    fn total(&self) -> usize {
        self.total
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn for_each(&mut self, queue: &str, f: &mut dyn FnMut(WaitingJob)) -> io::Result<()> {
        for buf in self.queues.get(queue).into_iter().flatten() {
            if let Ok((rec, _)) = read_frame(buf, 0) {
                f(decode(rec).expect("we wrote an Accepted record"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: u32) -> WaitingJob {
        WaitingJob {
            client: PeerId::from("c"),
            msgid: super::super::JobId::from(format!("m{i}").as_str()),
            request: StoredRequest::from_parts(None, "h", &format!("p{i}")),
            received_ms: i,
            attempts: 0,
        }
    }

    fn exercise(s: &mut dyn SpillStore) {
        for i in 0..1000 {
            s.push("q", &job(i)).unwrap();
        }
        assert_eq!((s.len("q"), s.total()), (1000, 1000));
        let mut seen = 0;
        s.for_each("q", &mut |j| {
            assert_eq!(j.received_ms, seen);
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 1000);
        let mut next = 0;
        while s.len("q") > 0 {
            let chunk = s.pop_chunk("q", 2000).unwrap();
            assert!(!chunk.is_empty());
            for j in chunk {
                assert_eq!(&*j.msgid, format!("m{next}"), "in order");
                next += 1;
            }
        }
        assert_eq!((next, s.total(), s.bytes()), (1000, 0, 0));
        s.push("q", &job(7)).unwrap();
        assert_eq!(&*s.pop_chunk("q", 1).unwrap()[0].payload_str(), "p7", "reused after it emptied");
    }

    impl WaitingJob {
        fn payload_str(&self) -> String {
            self.request.payload().to_owned()
        }
    }

    #[test]
    fn file_and_memory_tails_keep_order() {
        let dir = std::env::temp_dir().join(format!("emq-spill-test-{}", std::process::id()));
        exercise(&mut FileSpill::new(dir.clone()).unwrap());
        exercise(&mut MemSpill::default());
        let _ = std::fs::remove_dir_all(dir);
    }
}
