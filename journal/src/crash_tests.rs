//! The journal against a simulated file system ([`crate::sim`]): thousands
//! of random workloads, each crashed at a random operation (a process
//! crash, or a power loss that keeps only what was synced and some debris),
//! with failing writes, syncs and segment creations thrown in, restarted,
//! and checked against the one invariant:
//!
//! every record of a batch the writer reported durable is replayed, in
//! order, with nothing missing, doubled or foreign before it — and the
//! journal opens without help (no repair).
//!
//! Under `write` / `off` a power loss may take what was not synced, but
//! never what a checkpoint covered once the segments before it were
//! deleted.

use crate::fs::{FileId, Fs};
use crate::record::{AcceptedJob, Record};
use crate::segment::{frame, SegmentWriter};
use crate::sim::{Faults, Rng, SimFs};
use crate::{replay, settle_after_replay, Chunk, JournalStats, SyncPolicy, Writer};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The simulated process died: unwinds out of the writer (without the
/// panic hook: thousands of crashes print nothing).
struct SimCrash;

/// The simulated file system shared between the writer (which owns an
/// `Fs`) and the test (which crashes and restarts it).
#[derive(Clone)]
struct Shared(Arc<Mutex<SimFs>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut SimFs) -> io::Result<T>) -> io::Result<T> {
        let mut sim = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut sim);
        if sim.crashed() {
            drop(sim);
            std::panic::resume_unwind(Box::new(SimCrash));
        }
        r
    }
}

impl Fs for Shared {
    fn create(&mut self, path: &Path) -> io::Result<FileId> {
        self.with(|s| s.create(path))
    }
    fn append(&mut self, f: FileId, bytes: &[u8]) -> io::Result<()> {
        self.with(|s| s.append(f, bytes))
    }
    fn zero_ahead(&mut self, f: FileId, from: u64, to: u64) -> io::Result<()> {
        self.with(|s| s.zero_ahead(f, from, to))
    }
    fn sync(&mut self, f: FileId) -> io::Result<()> {
        self.with(|s| s.sync(f))
    }
    fn close(&mut self, f: FileId) {
        let _ = self.with(|s| {
            s.close(f);
            Ok(())
        });
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.with(|s| s.sync_dir(dir))
    }
    fn sync_path(&mut self, path: &Path) -> io::Result<()> {
        self.with(|s| s.sync_path(path))
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.with(|s| s.remove(path))
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.with(|s| s.rename(from, to))
    }
    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.with(|s| s.list(dir))
    }
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.with(|s| s.read(path))
    }
    fn truncate(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.with(|s| s.truncate(path, len))
    }
    fn len(&mut self, path: &Path) -> io::Result<u64> {
        self.with(|s| s.len(path))
    }
    fn random_salt(&mut self) -> u64 {
        self.with(|s| Ok(s.random_salt())).unwrap_or(0)
    }
}

fn job(k: u64) -> Record {
    Record::Accepted {
        job: AcceptedJob {
            msgid: format!("m{k}"),
            client: b"c".to_vec(),
            queue: "q".into(),
            requested_queue: None,
            headers: String::new(),
            // Payloads that hold frame-like bytes and vary in size.
            payload: format!("{}{k}", "x".repeat((k % 7 * 40) as usize)),
            received: k as f64,
        },
        attempts: 0,
    }
}

/// The replayed state as the router would rebuild it: the jobs, in order
/// (a checkpoint restates all of them).
fn state_of(records: &[Record]) -> Vec<String> {
    let mut jobs = Vec::new();
    for r in records {
        match r {
            Record::CheckpointBegin { .. } => jobs.clear(),
            Record::Accepted { job, .. } => jobs.push(job.msgid.clone()),
            _ => {}
        }
    }
    jobs
}

/// Opens the journal in the simulated directory (replay, settle, a fresh
/// segment), faults off: what a restart does. The jobs replayed.
fn open(fs: &mut Shared, dir: &Path) -> Result<(Vec<String>, SegmentWriter), String> {
    let mut records = Vec::new();
    let report = replay(fs, dir, false, |r| records.push(r)).map_err(|e| {
        let mut listing = String::new();
        if let Ok(files) = fs.list(dir) {
            let mut files = files;
            files.sort();
            for f in files {
                let b = fs.read(&f).unwrap_or_default();
                let head = crate::segment::parse_segment(b[..b.len().min(16)].to_vec()).map(|h| h.cut_prev);
                listing += &format!(
                    "\n  {} {} bytes, cut of previous {:?}, head {:?}",
                    f.display(),
                    b.len(),
                    head.ok().flatten(),
                    &b[..b.len().min(16)]
                );
            }
        }
        format!("replay: {e}{listing}")
    })?;
    settle_after_replay(fs, dir, &report).map_err(|e| format!("settle: {e}"))?;
    let seg = SegmentWriter::create(fs, dir, report.last_seq + 1, None).map_err(|e| format!("create: {e}"))?;
    Ok((state_of(&records), seg))
}

/// What one schedule found.
struct Outcome {
    crashes: u64,
    faults: u64,
}

/// One random schedule: a few rounds of work, each ended by a crash at a
/// random operation; after each restart the invariant is checked.
fn run_schedule(seed: u64) -> Result<Outcome, String> {
    let mut rng = Rng::new(seed);
    let sync = match rng.below(4) {
        0 => SyncPolicy::Write,
        1 => SyncPolicy::Off,
        _ => SyncPolicy::Fsync,
    };
    let faults =
        if rng.chance(3) { Faults { sync_fails: 30, write_fails: 30, create_fails: 20 } } else { Faults::default() };
    let dir = PathBuf::from("/data/emq");
    let mut fs = Shared(Arc::new(Mutex::new(SimFs::new(seed ^ 0xabcdef))));
    let mut crashes = 0;
    let mut checkpoint_id = 0;
    // Jobs the next restart must replay at least, and the jobs so far.
    let mut must_have = 0usize;
    for round in 0..3 {
        let (jobs, seg) = open(&mut fs, &dir)?;
        // The invariant: exactly m0..m(n-1), n at least what was promised.
        for (i, id) in jobs.iter().enumerate() {
            if *id != format!("m{i}") {
                return Err(format!("round {round}: replayed job {i} is {id}, not m{i} (policy {sync:?}): {jobs:?}"));
            }
        }
        if jobs.len() < must_have {
            return Err(format!(
                "round {round}: {} jobs replayed, {must_have} were promised (policy {sync:?})",
                jobs.len()
            ));
        }
        if round == 2 {
            break;
        }
        let mut k = jobs.len() as u64;
        let mut w =
            Writer::new(Box::new(fs.clone()), dir.clone(), sync, 8 << 10, seg, Arc::new(JournalStats::default()));
        w.set_backoff(Duration::ZERO);
        let power_loss = rng.chance(2);
        {
            let mut s = fs.0.lock().unwrap();
            s.faults = faults;
            let after = 1 + rng.below(600);
            s.crash_at = Some(s.ops + after);
        }
        // Promises made before the crash: jobs that survive a power loss,
        // and jobs that survive a process crash (what `write` and `off`
        // report durable is in the page cache).
        let promised = Arc::new(Mutex::new((must_have, must_have)));
        let run = {
            let promised = promised.clone();
            let mut rng = rng.clone();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let mut id = 0u64;
                // (batch id, jobs through it), for the durable reports.
                let mut ends: Vec<(u64, usize)> = Vec::new();
                loop {
                    // Jobs a checkpoint of this pass covers.
                    let mut checkpointed = None;
                    for _ in 0..=rng.below(2) {
                        id += 1;
                        let mut bytes = Vec::new();
                        let checkpoint = rng.chance(12);
                        if checkpoint {
                            checkpoint_id += 1;
                            frame(&Record::CheckpointBegin { id: checkpoint_id }, &mut bytes);
                            for j in 0..k {
                                frame(&job(j), &mut bytes);
                            }
                            frame(&Record::CheckpointEnd { id: checkpoint_id }, &mut bytes);
                            checkpointed = Some(k as usize);
                        } else {
                            for _ in 0..=rng.below(4) {
                                frame(&job(k), &mut bytes);
                                k += 1;
                            }
                        }
                        ends.push((id, k as usize));
                        w.write(Chunk { id, bytes, checkpoint });
                    }
                    let durable = w.end_pass();
                    let mut p = promised.lock().unwrap();
                    // Every job of a batch reported durable.
                    if let Some(n) = ends.iter().filter(|(i, _)| *i <= durable).map(|(_, n)| *n).max() {
                        p.1 = p.1.max(n);
                        if sync == SyncPolicy::Fsync {
                            p.0 = p.0.max(n);
                        }
                    }
                    // Whatever the policy: what a checkpoint covers, once
                    // the segments before it may have been deleted.
                    if let Some(n) = checkpointed {
                        p.0 = p.0.max(n);
                        p.1 = p.1.max(n);
                    }
                }
            }))
        };
        match run {
            Err(e) if e.downcast_ref::<SimCrash>().is_some() => {}
            Err(e) => std::panic::resume_unwind(e),
            Ok(()) => unreachable!("the loop ends by a crash"),
        }
        crashes += 1;
        let (power, process) = *promised.lock().unwrap();
        // What `write` / `off` reported written survives a process crash —
        // unless a failed sync made the kernel drop those pages (they may
        // be evicted before the writer rewrote them): then only `fsync`'s
        // and checkpoints' promises stand.
        let disk_failed = faults.sync_fails > 0 || faults.write_fails > 0;
        must_have = if power_loss || disk_failed { power } else { power.max(process) };
        let mut s = fs.0.lock().unwrap();
        s.faults = Faults::default();
        if power_loss {
            s.power_loss();
        } else {
            // The kernel keeps what was written: nothing written may be
            // lost, so at least what was promised stays.
            s.process_crash();
        }
    }
    let injected = fs.0.lock().unwrap().injected;
    Ok(Outcome { crashes, faults: injected })
}

/// The property test. `EMQTEST_CRASH_SCHEDULES` sets how many schedules
/// (default 3,000); `EMQTEST_CRASH_SEED` the first seed (default: from the
/// clock, printed so a failure can be replayed).
#[test]
fn random_crashes_and_disk_faults_never_lose_a_durable_record() {
    let n: u64 = std::env::var("EMQTEST_CRASH_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(3_000);
    let first: u64 = std::env::var("EMQTEST_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let (mut crashes, mut faults) = (0, 0);
    for seed in first..first + n {
        match run_schedule(seed) {
            Ok(o) => {
                crashes += o.crashes;
                faults += o.faults;
            }
            Err(why) => panic!("schedule {seed} (EMQTEST_CRASH_SEED={seed} EMQTEST_CRASH_SCHEDULES=1): {why}"),
        }
    }
    println!("{n} crash schedules from seed {first}: {crashes} simulated crashes, {faults} injected disk faults, invariant held");
}
