//! Reading a journal back at start: from the newest complete checkpoint
//! (or the oldest segment when there is none) to the end, handing every
//! record to the caller in order.
//!
//! What it does with what a crash, a power loss or a failing disk leaves
//! (as PostgreSQL and SQLite do at the end of their logs):
//! - the newest segment ends at its first record that does not check — a
//!   torn or partly written tail, later bytes that reached the disk when
//!   earlier ones did not: the file is cut there, loudly, saying how much
//!   was dropped; the router comes back by itself;
//! - a segment the writer abandoned after a failed write or sync is read
//!   only up to the length the next segment's header gives (what was
//!   rewritten from memory is in that next segment), and cut there;
//! - a segment whose header never became whole (a crash while it was
//!   created) holds nothing and is removed;
//! - a bad record inside an older, closed segment is damage: the start
//!   stops with [`JournalError::Damaged`], unless `repair` is set — then
//!   the segment is rewritten without the damaged ranges (listed in the
//!   report), so the next plain start finds it clean;
//! - an unfinished checkpoint (a crash while writing one) is dropped: the
//!   older checkpoint and the segments after it are still there.
//!
//! Replay itself deletes nothing: [`crate::Journal::open`] first makes
//! what replay trusts durable, then deletes what it covers.

use crate::fs::Fs;
use crate::record::Record;
use crate::segment::{
    list_segments, next_valid_frame, parse_segment, read_frame_salted, read_segment, BadFrame, HEADER,
};
use crate::JournalError;
use std::path::{Path, PathBuf};
use tracing::{error, warn};

/// What a replay found.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    /// Segments read.
    pub segments: usize,
    /// Records handed to the caller.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// The checkpoint replay started from.
    pub checkpoint: Option<u64>,
    /// `(segment, offset, bytes dropped)` of the newest segment's tail that
    /// was cut (torn, or power-loss debris).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// `(segment, from, to)` byte ranges dropped by repair.
    pub repaired: Vec<(PathBuf, u64, u64)>,
    /// Segments older than the checkpoint, an unfinished checkpoint's
    /// segment, a segment that was never born: to delete once what replay
    /// trusts is durable.
    pub obsolete: Vec<PathBuf>,
    /// The segments replayed (to sync before anything is deleted).
    pub live: Vec<PathBuf>,
    /// The highest segment number seen (a new segment gets the next one).
    pub last_seq: u64,
}

/// Whether the records in `buf[start..end]` open with a checkpoint, and
/// whether it is complete.
fn checkpoint_in(buf: &[u8], start: usize, salt: u64) -> Option<(u64, bool)> {
    let (first, mut pos) = read_frame_salted(buf, start, salt).ok()?;
    let Record::CheckpointBegin { id } = first else { return None };
    while let Ok((rec, next)) = read_frame_salted(buf, pos, salt) {
        if rec == (Record::CheckpointEnd { id }) {
            return Some((id, true));
        }
        pos = next;
    }
    Some((id, false))
}

/// A segment's bytes as they count: up to the cut its successor names.
fn read_counted(fs: &mut dyn Fs, path: &Path, cut: Option<u64>) -> Result<(Vec<u8>, usize, u64), JournalError> {
    read_counted_tail(fs, path, cut).map(|(bytes, start, salt, _)| (bytes, start, salt))
}

/// [`read_counted`], and whether what the cut left out is only zeros
/// (written ahead of the records: the segment ended well there).
fn read_counted_tail(
    fs: &mut dyn Fs,
    path: &Path,
    cut: Option<u64>,
) -> Result<(Vec<u8>, usize, u64, bool), JournalError> {
    let seg = read_segment(fs, path).map_err(|e| JournalError::Io { path: path.to_path_buf(), source: e })?;
    let mut bytes = seg.bytes;
    let mut zeros_after = true;
    if let Some(c) = cut {
        let c = (c as usize).max(seg.data_start);
        if bytes.len() > c {
            zeros_after = bytes[c..].iter().all(|b| *b == 0);
            bytes.truncate(c);
        }
    }
    Ok((bytes, seg.data_start, seg.salt, zeros_after))
}

/// Replays `dir`, calling `on_record` for each record in order.
pub fn replay(
    fs: &mut dyn Fs,
    dir: &Path,
    repair: bool,
    mut on_record: impl FnMut(Record),
) -> Result<ReplayReport, JournalError> {
    let io = |e: std::io::Error| JournalError::Io { path: dir.to_path_buf(), source: e };
    let mut segments = list_segments(fs, dir).map_err(io)?;
    let mut report = ReplayReport { last_seq: segments.last().map_or(0, |s| s.0), ..Default::default() };
    // A segment the writer was rewriting when it died, never published.
    for path in fs.list(dir).map_err(io)? {
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".journal.tmp")) {
            report.obsolete.push(path);
        }
    }
    // Headers: which segments were never born, and each one's cut.
    let mut heads = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        let head = fs.read(path).map(|b| {
            // The header, or the whole file when it may be all zeros.
            let n =
                if b.len() >= HEADER && b[..HEADER].iter().all(|x| *x == 0) { b.len() } else { b.len().min(HEADER) };
            parse_segment(b[..n].to_vec())
        });
        match head {
            Ok(Ok(h)) => heads.push((h.unborn, h.cut_prev)),
            Ok(Err(why)) => {
                return Err(JournalError::Damaged { path: path.clone(), offset: 0, problem: why });
            }
            Err(e) => return Err(JournalError::Io { path: path.clone(), source: e }),
        }
    }
    // A segment never born (no whole header, or only zeros: nothing of it
    // reached the disk) holds nothing: removed.
    let mut k = 0;
    while k < heads.len() {
        if heads[k].0 {
            let (_, path) = segments.remove(k);
            heads.remove(k);
            warn!(segment = %path.display(), "segment with no whole header (its creation was cut short, or none of it reached the disk): removed");
            report.obsolete.push(path);
        } else {
            k += 1;
        }
    }
    if segments.is_empty() {
        return Ok(report);
    }
    let cut_of = |i: usize| heads.get(i + 1).and_then(|h| h.1);
    // The newest segment that starts with a complete checkpoint; newer
    // segments starting with an unfinished one are garbage.
    let mut start = 0;
    let mut stop_at = segments.len();
    for i in (0..segments.len()).rev() {
        let path = segments[i].1.clone();
        let (buf, data_start, salt) = read_counted(fs, &path, cut_of(i))?;
        match checkpoint_in(&buf, data_start, salt) {
            Some((id, true)) => {
                start = i;
                report.checkpoint = Some(id);
                break;
            }
            Some((id, false)) => {
                warn!(segment = %path.display(), checkpoint = id, "unfinished checkpoint (crash while writing it): ignored");
                stop_at = i;
            }
            None => {}
        }
    }
    report.obsolete.extend(segments[..start].iter().map(|s| s.1.clone()));
    report.obsolete.extend(segments[stop_at..].iter().map(|s| s.1.clone()));
    for i in start..stop_at {
        let path = segments[i].1.clone();
        // Only the last segment can end torn: every older one (also one
        // before an unfinished checkpoint) was synced before the next began.
        let newest = i + 1 == segments.len();
        let cut = cut_of(i);
        let whole_len = fs.len(&path).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
        let (buf, data_start, salt, zeros_after) = read_counted_tail(fs, &path, cut)?;
        // Zeros past the cut were written ahead of records that never
        // came (the writer moved on to the next segment): nothing to say —
        // unless the segment that names the cut is about to be dropped (an
        // unfinished checkpoint): then this one is cut to its records now,
        // so that it ends there when no successor says so.
        if (buf.len() as u64) < whole_len && !zeros_after {
            warn!(segment = %path.display(), valid_to = buf.len(), dropped = whole_len - buf.len() as u64,
                  "segment abandoned after a failed write or sync: read up to where the next one says (its rest was rewritten there)");
            fs.truncate(&path, buf.len() as u64).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
        } else if (buf.len() as u64) < whole_len && i + 1 == stop_at && stop_at < segments.len() {
            fs.truncate(&path, buf.len() as u64).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
        }
        report.segments += 1;
        report.bytes += buf.len() as u64;
        report.live.push(path.clone());
        let mut pos = data_start;
        let mut damaged: Vec<(usize, usize)> = Vec::new();
        while pos < buf.len() {
            match read_frame_salted(&buf, pos, salt) {
                Ok((rec, next)) => {
                    report.records += 1;
                    on_record(rec);
                    pos = next;
                }
                // The newest segment, zeros to the end: written ahead of
                // records, none came (or their write did not reach the
                // disk: never synced, never acknowledged). The records end
                // here; the file is cut to them (the next segment's header
                // will name no cut). In an older segment zeros before its
                // cut are records lost after they were synced: damage.
                Err(_) if newest && buf[pos..].iter().all(|b| *b == 0) => {
                    let dropped = (buf.len() - pos) as u64;
                    fs.truncate(&path, pos as u64).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
                    report.bytes -= dropped;
                    break;
                }
                Err(bad) if newest => {
                    let dropped = (buf.len() - pos) as u64;
                    let later = next_valid_frame(&buf, pos + 1, salt).is_some();
                    if later {
                        error!(segment = %path.display(), offset = pos, dropped, problem = ?bad,
                               "the journal ends here: a record that does not check, with intact-looking bytes after it (a power loss wrote later parts and not earlier ones); the rest of the segment is dropped");
                    } else {
                        warn!(segment = %path.display(), offset = pos, dropped, problem = ?bad,
                              "torn tail (crash mid-write): cut at the last good record");
                    }
                    fs.truncate(&path, pos as u64).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
                    report.torn_tail = Some((path.clone(), pos as u64, dropped));
                    report.bytes -= dropped;
                    break;
                }
                Err(_) if repair => {
                    let to = next_valid_frame(&buf, pos + 1, salt).unwrap_or(buf.len());
                    warn!(segment = %path.display(), from = pos, to, "repair: damaged bytes dropped");
                    report.repaired.push((path.clone(), pos as u64, to as u64));
                    damaged.push((pos, to));
                    pos = to;
                }
                Err(bad) => {
                    return Err(JournalError::Damaged {
                        path: path.clone(),
                        offset: pos as u64,
                        problem: describe(&bad),
                    })
                }
            }
        }
        if !damaged.is_empty() {
            rewrite_without(fs, dir, &path, &buf, &damaged)?;
        }
    }
    Ok(report)
}

/// Repair: `path` written again without the `damaged` byte ranges (a new
/// file synced, renamed over it, the directory synced), so the next start
/// finds it clean.
fn rewrite_without(
    fs: &mut dyn Fs,
    dir: &Path,
    path: &Path,
    buf: &[u8],
    damaged: &[(usize, usize)],
) -> Result<(), JournalError> {
    let err = |e| JournalError::Io { path: path.to_path_buf(), source: e };
    let mut clean = Vec::with_capacity(buf.len());
    let mut pos = 0;
    for &(from, to) in damaged {
        clean.extend_from_slice(&buf[pos..from]);
        pos = to;
    }
    clean.extend_from_slice(&buf[pos..]);
    let tmp = path.with_extension("repaired");
    let f = fs.create(&tmp).map_err(err)?;
    let written = fs.append(f, &clean).and_then(|_| fs.sync(f));
    fs.close(f);
    written.map_err(err)?;
    fs.rename(&tmp, path).map_err(err)?;
    fs.sync_dir(dir).map_err(err)?;
    Ok(())
}

fn describe(bad: &BadFrame) -> String {
    match bad {
        BadFrame::Truncated => "the file ends inside a record".into(),
        BadFrame::BadLength(n) => format!("impossible record length {n}"),
        BadFrame::BadChecksum => "checksum mismatch".into(),
        BadFrame::BadRecord(e) => format!("unreadable record: {e}"),
    }
}
