//! Journal tests on real files in a temporary directory: round trips,
//! group commit, checkpoints, torn tails, damage and repair.

use super::*;
use crate::fs::RealFs;
use crate::record::AcceptedJob;
use crate::segment::segment_path;

fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    segment::list_segments(&mut RealFs::default(), dir)
}

fn tmpdir(tag: &str) -> PathBuf {
    let mut n = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut n));
    let d = std::env::temp_dir().join(format!("emq-journal-{tag}-{}", u64::from_le_bytes(n)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(dir: &Path) -> JournalOptions {
    JournalOptions { dir: dir.to_path_buf(), sync: SyncPolicy::Fsync, segment_bytes: 1 << 20, repair: false }
}

fn accepted(i: u64) -> Record {
    Record::Accepted {
        job: AcceptedJob {
            msgid: format!("m{i}"),
            client: b"client".to_vec(),
            queue: "default".into(),
            requested_queue: None,
            headers: "guarantee".into(),
            payload: format!(r#"["run", {{"path": "a", "callable": "b", "args": [{i}]}}]"#),
            received: i as f64,
        },
        attempts: 0,
    }
}

/// A closed journal in a fresh directory holding jobs `0..n`; returns the
/// directory and its newest segment.
fn journal_with(tag: &str, n: u64) -> (PathBuf, PathBuf) {
    let dir = tmpdir(tag);
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    for i in 0..n {
        j.append(&accepted(i));
    }
    j.close();
    drop(j);
    let path = list_segments(&dir).unwrap().last().unwrap().1.clone();
    (dir, path)
}

/// The salt in a segment's header.
fn salt_of(bytes: &[u8]) -> u64 {
    segment::parse_segment(bytes.to_vec()).unwrap().salt
}

fn read_all(dir: &Path, repair: bool) -> Result<(Vec<Record>, ReplayReport), JournalError> {
    let mut out = Vec::new();
    let report = replay(&mut RealFs::default(), dir, repair, |r| out.push(r))?;
    settle_after_replay(&mut RealFs::default(), dir, &report)?;
    Ok((out, report))
}

fn wait_durable(j: &Journal, id: u64) {
    let t = Instant::now();
    while j.durable() < id {
        assert!(t.elapsed() < Duration::from_secs(20), "batch {id} never became durable");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn batches_become_durable_and_replay_in_order() {
    let dir = tmpdir("order");
    let (mut j, report) = Journal::open(&opts(&dir), |_| panic!("empty journal")).unwrap();
    assert_eq!(report.records, 0);
    let mut last = 0;
    for batch in 0..50 {
        for i in 0..20 {
            j.append(&accepted(batch * 20 + i));
        }
        last = j.current_batch();
        j.submit();
    }
    wait_durable(&j, last);
    assert!(j.stats().syncs.load(Ordering::Relaxed) >= 1);
    j.close();
    drop(j);
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 1000);
    assert_eq!(records[999], accepted(999));
    assert!(report.torn_tail.is_none());
    // Reopening continues in a new segment; both are replayed.
    let mut seen = 0;
    let (mut j, _) = Journal::open(&opts(&dir), |_| seen += 1).unwrap();
    assert_eq!(seen, 1000);
    j.append(&accepted(1000));
    j.close();
    drop(j);
    assert_eq!(read_all(&dir, false).unwrap().0.len(), 1001);
}

#[test]
fn a_second_router_cannot_open_the_same_journal() {
    let dir = tmpdir("lock");
    let (_j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    assert!(matches!(Journal::open(&opts(&dir), |_| {}), Err(JournalError::Locked { .. })));
}

#[test]
fn checkpoint_supersedes_and_deletes_older_segments() {
    let dir = tmpdir("checkpoint");
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    for i in 0..100 {
        j.append(&accepted(i));
    }
    j.submit();
    // Only job 7 is still live.
    j.checkpoint(&mut std::iter::once(accepted(7)));
    let id = j.current_batch() - 1;
    j.append(&accepted(200));
    j.submit();
    wait_durable(&j, id + 1);
    j.close();
    drop(j);
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(report.checkpoint, Some(1));
    let jobs: Vec<&str> = records.iter().filter_map(|r| r.msgid()).collect();
    assert_eq!(jobs, vec!["m7", "m200"], "the checkpoint and what came after it");
    assert_eq!(list_segments(&dir).unwrap().len(), 1, "segments before the checkpoint are deleted");
}

#[test]
fn unfinished_checkpoint_is_ignored() {
    let (dir, path) = journal_with("unfinished", 10);
    let last = list_segments(&dir).unwrap().last().unwrap().0;
    assert_eq!(segment_path(&dir, last), path);
    // A crash while writing a checkpoint: its begin and some records, no end.
    let mut bytes = segment::MAGIC.to_vec();
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes()); // no salt
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    frame(&Record::CheckpointBegin { id: 1 }, &mut bytes);
    frame(&accepted(3), &mut bytes);
    std::fs::write(segment_path(&dir, last + 1), &bytes).unwrap();
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 10, "the ten jobs, not the partial checkpoint");
    assert_eq!(report.obsolete, vec![segment_path(&dir, last + 1)]);
    assert!(!segment_path(&dir, last + 1).exists(), "deleted once what replay trusts is synced");
}

#[test]
fn torn_tail_is_truncated_at_every_offset() {
    let (dir, path) = journal_with("torn", 5);
    let whole = std::fs::read(&path).unwrap();
    let mut frame_ends = Vec::new();
    let mut pos = segment::HEADER;
    while let Ok((_, next)) = segment::read_frame_salted(&whole, pos, salt_of(&whole)) {
        frame_ends.push(next);
        pos = next;
    }
    for cut in segment::HEADER..whole.len() {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let (records, report) = read_all(&dir, false).unwrap();
        let whole_frames = frame_ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(records.len(), whole_frames, "cut at {cut}");
        if cut == segment::HEADER || frame_ends.contains(&cut) {
            assert!(report.torn_tail.is_none());
        } else {
            assert!(report.torn_tail.is_some(), "cut at {cut}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                frame_ends.iter().filter(|&&e| e <= cut).max().copied().unwrap_or(segment::HEADER)
            );
        }
    }
}

#[test]
fn damage_in_an_older_segment_stops_unless_repair_which_rewrites_it() {
    let (dir, path) = journal_with("damage", 5);
    // A later start: the damaged segment is no longer the newest.
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    j.append(&accepted(5));
    j.close();
    drop(j);
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a byte inside the second record's body.
    let (_, second) = segment::read_frame_salted(&bytes, segment::HEADER, salt_of(&bytes)).unwrap();
    bytes[second + 20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    match read_all(&dir, false) {
        Err(JournalError::Damaged { offset, .. }) => assert_eq!(offset as usize, second),
        other => panic!("expected damage, got {:?}", other.map(|r| r.0.len())),
    }
    let (records, report) = read_all(&dir, true).unwrap();
    assert_eq!(records.len(), 5, "every valid record kept");
    assert_eq!(report.repaired.len(), 1);
    assert!(!records.contains(&accepted(1)));
    // Repair rewrote the segment: a plain start is clean again.
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!((records.len(), report.repaired.len()), (5, 0));
}

/// Power-loss debris at the end of the newest segment — a record that
/// does not check with intact bytes after it (later sectors reached the
/// disk, earlier ones did not) — ends the log there: the start goes on by
/// itself, and the file is cut.
#[test]
fn debris_in_the_newest_segment_ends_the_log_without_help() {
    let (dir, path) = journal_with("debris", 6);
    let mut bytes = std::fs::read(&path).unwrap();
    let (_, second) = segment::read_frame_salted(&bytes, segment::HEADER, salt_of(&bytes)).unwrap();
    for b in &mut bytes[second..second + 16] {
        *b = 0;
    }
    std::fs::write(&path, &bytes).unwrap();
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records, vec![accepted(0)], "the log ends at the first bad record");
    assert_eq!(report.torn_tail.as_ref().map(|t| t.1 as usize), Some(second));
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, second, "cut there");
    let (records, _) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 1, "and the next start is plain");
}

/// A message that promises only "everything appended so far is durable"
/// (the router's heartbeat confirming reports) must not wait for an empty
/// batch: empty batches are never submitted. Idle, it covers nothing new.
#[test]
fn covering_batch_of_an_idle_journal_is_already_durable() {
    let dir = tmpdir("covering");
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    assert!(j.covering_batch() <= j.durable(), "nothing appended: nothing to wait for");
    j.append(&accepted(1));
    let covering = j.covering_batch();
    assert_eq!(covering, j.current_batch(), "a pending record: wait for its batch");
    assert!(covering > j.durable());
    j.submit();
    assert_eq!(j.covering_batch(), covering, "submitted, not yet durable: still that batch");
    wait_durable(&j, covering);
    assert!(j.covering_batch() <= j.durable(), "idle again: nothing to wait for");
}

/// A frame a client could smuggle inside its payload carries a plain
/// checksum; real frames are checksummed with their segment's secret salt,
/// so repair's search for the next valid frame never takes the smuggled
/// one for a record.
#[test]
fn repair_never_takes_a_frame_without_the_segments_salt() {
    let (dir, path) = journal_with("salt", 3);
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    j.close();
    drop(j);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_ne!(salt_of(&bytes), 0, "segments are salted");
    bytes.extend_from_slice(&[0x55; 8]);
    frame(&accepted(999), &mut bytes); // a frame as frame() makes it: no salt
    std::fs::write(&path, &bytes).unwrap();
    let (records, report) = read_all(&dir, true).unwrap();
    assert_eq!(records, vec![accepted(0), accepted(1), accepted(2)], "the smuggled record is not replayed");
    assert_eq!(report.repaired.len(), 1);
}

#[test]
fn a_pending_batch_counts_ids_and_an_empty_one_is_never_waited_for() {
    let mut b = crate::PendingBatch::default();
    assert_eq!((b.current(), b.covering(), b.last()), (1, 0, 0), "nothing appended: nothing to wait for");
    assert!(b.take(Vec::new()).is_none(), "an empty batch is never handed over");
    b.append(&crate::Record::CheckpointBegin { id: 9 });
    assert_eq!(b.covering(), 1, "a receipt now waits for batch 1");
    let (id, bytes, records) = b.take(Vec::new()).expect("one batch");
    assert_eq!((id, records), (1, 1));
    assert!(!bytes.is_empty());
    assert_eq!((b.current(), b.covering(), b.last()), (2, 1, 1));
    assert_eq!(b.allocate(), 2, "a checkpoint takes the next id");
    assert_eq!((b.current(), b.covering()), (3, 2));
}

/// A job with a payload of about `bytes` (to fill segments quickly).
fn big(i: u64, bytes: usize) -> Record {
    let Record::Accepted { mut job, attempts } = accepted(i) else { unreachable!() };
    job.payload = format!(r#"["run", {{"path": "a", "callable": "b", "args": ["{}"]}}]"#, "x".repeat(bytes));
    Record::Accepted { job, attempts }
}

/// A journal in a fresh directory with jobs `0..5` durable: its directory,
/// its segment (sequence and path), the segment's bytes while it was open
/// (zeros written ahead of the records) and after a graceful close.
fn five_jobs_open_and_closed(tag: &str) -> (PathBuf, u64, PathBuf, Vec<u8>, Vec<u8>) {
    let dir = tmpdir(tag);
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    for i in 0..5 {
        j.append(&accepted(i));
    }
    let id = j.current_batch();
    j.submit();
    wait_durable(&j, id);
    let (last, path) = list_segments(&dir).unwrap().last().unwrap().clone();
    let while_open = std::fs::read(&path).unwrap();
    j.close();
    drop(j);
    let closed = std::fs::read(&path).unwrap();
    (dir, last, path, while_open, closed)
}

/// Zeros are written ahead of the records while a segment is open (a
/// group commit's fdatasync then has no size or block allocation to
/// record); a journal closed well ends with its last record, and what a
/// crash leaves — the zeros after the last record — is read as the end of
/// the records, not as a torn tail, and cut at the next start.
#[test]
fn zeros_written_ahead_end_the_records_quietly() {
    let (dir, _, path, while_open, closed) = five_jobs_open_and_closed("zeros");
    assert!(
        while_open.len() > closed.len(),
        "zeros written ahead while open: {} vs {}",
        while_open.len(),
        closed.len()
    );
    assert_eq!(&while_open[..closed.len()], &closed[..], "the records are the same bytes");
    assert!(while_open[closed.len()..].iter().all(|b| *b == 0), "only zeros after them");
    // The state a crash (or a power loss) leaves: the records, then zeros.
    std::fs::write(&path, &while_open).unwrap();
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 5);
    assert!(report.torn_tail.is_none(), "zeros after the last record are not a torn tail");
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, closed.len(), "cut to the last record");
    // Zeros after a torn record are still a torn tail.
    let mut torn = while_open.clone();
    torn[closed.len() - 3] ^= 0xff;
    std::fs::write(&path, &torn).unwrap();
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 4, "the damaged last record is dropped");
    assert!(report.torn_tail.is_some());
}

/// An open journal in a fresh directory whose 1,400 records of ~1 KB
/// (1.4 MB, in batches of 100) are durable: a full 1 MiB segment, and a
/// second one still open.
fn big_records_in_two_segments(tag: &str) -> (PathBuf, Journal) {
    let dir = tmpdir(tag);
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    for i in 0..1_400 {
        j.append(&big(i, 1_000));
        if i % 100 == 99 {
            j.submit();
        }
    }
    wait_durable(&j, j.covering_batch());
    (dir, j)
}

/// A segment left for the next one (full) keeps the zeros written ahead
/// of it; the next segment's header names where its records end, so they
/// are neither damage nor an abandoned segment's rest, and a bad byte
/// before that end is still damage.
#[test]
fn a_full_segment_ends_where_its_successor_says() {
    let (dir, mut j) = big_records_in_two_segments("rotated");
    j.close();
    drop(j);
    let segments = list_segments(&dir).unwrap();
    assert_eq!(segments.len(), 2, "1.4 MB of records in 1 MiB segments");
    let first = std::fs::read(&segments[0].1).unwrap();
    let next = segment::parse_segment(std::fs::read(&segments[1].1).unwrap()).unwrap();
    let end = next.cut_prev.expect("the successor names where the full segment's records end") as usize;
    assert!(
        first.len() > end && first[end..].iter().all(|b| *b == 0),
        "zeros after the records: {} > {end}",
        first.len()
    );
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 1_400);
    assert!(report.torn_tail.is_none() && report.repaired.is_empty());
    assert_eq!(std::fs::read(&segments[0].1).unwrap().len(), first.len(), "nothing cut in a closed segment");
    // Damage before the end is still damage.
    let mut bad = first.clone();
    bad[end - 3] ^= 0xff;
    std::fs::write(&segments[0].1, &bad).unwrap();
    assert!(matches!(read_all(&dir, false), Err(JournalError::Damaged { .. })));
}

/// After a restart the journal counts what its segments take on disk —
/// zeros written ahead past a closed segment's cut included — as its
/// writer does while it runs: the figure `journal_max_bytes` holds against
/// does not drift low with every restart.
#[test]
fn disk_bytes_after_a_restart_is_what_the_segments_take() {
    let (dir, j) = big_records_in_two_segments("disk-bytes");
    drop(j); // a crash: the newest segment keeps its zeros too
    let (j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    let files: u64 = list_segments(&dir).unwrap().iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(list_segments(&dir).unwrap().len(), 3, "two replayed, one new");
    assert_eq!(j.stats().disk_bytes.load(Ordering::Relaxed), files);
}

/// A segment with zeros written ahead whose successor — the one naming
/// where its records end — is an unfinished checkpoint: replay drops the
/// checkpoint and cuts the segment to its records, so the next start (a
/// new segment that names no cut) reads it whole. Zeros at the end of an
/// older segment that no successor explains are synced records lost:
/// damage, as before zeros were written ahead.
#[test]
fn zeros_ahead_before_a_dropped_checkpoint_and_before_no_cut() {
    let (dir, last, path, while_open, closed) = five_jobs_open_and_closed("zeros-unfinished");
    let records_end = closed.len();
    std::fs::write(&path, &while_open).unwrap();
    // The successor: its header names the cut, then an unfinished checkpoint.
    let mut next = segment::MAGIC.to_vec();
    next.extend_from_slice(&(records_end as u64).to_le_bytes());
    next.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32c::crc32c(&next);
    next.extend_from_slice(&crc.to_le_bytes());
    frame(&Record::CheckpointBegin { id: 1 }, &mut next);
    frame(&accepted(0), &mut next);
    std::fs::write(segment_path(&dir, last + 1), &next).unwrap();
    let (records, _) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 5);
    assert!(!segment_path(&dir, last + 1).exists(), "the unfinished checkpoint is dropped");
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, records_end, "cut to its records");
    // The next start: a new segment (no cut), then a later start reads both.
    let (mut j, _) = Journal::open(&opts(&dir), |_| {}).unwrap();
    j.append(&accepted(5));
    j.close();
    drop(j);
    let (records, report) = read_all(&dir, false).unwrap();
    assert_eq!(records.len(), 6);
    assert!(report.torn_tail.is_none());
    // Zeros where an older segment's last records were, no cut to say so.
    let mut lost = std::fs::read(&path).unwrap();
    let at = lost.len() - 100;
    lost[at..].fill(0);
    std::fs::write(&path, &lost).unwrap();
    assert!(matches!(read_all(&dir, false), Err(JournalError::Damaged { .. })), "lost records are damage");
}
