//! Reading a journal back at start: from the newest complete checkpoint
//! (or the oldest segment when there is none) to the end, handing every
//! record to the caller in order.
//!
//! What it does with damage: a torn tail (bad frame at the end of the
//! newest segment, nothing valid after it) is truncated with a warning —
//! that is what a crash mid-write leaves. Anything else (a bad frame with
//! valid frames after it, or in an older segment) stops the start with
//! [`JournalError::Damaged`], unless `repair` is set: then every valid
//! record is kept, the bad ranges are skipped and listed in the report.
//! An unfinished checkpoint (a crash while writing one) is dropped: the
//! older checkpoint and the segments after it are still there.

use crate::record::Record;
use crate::segment::{list_segments, next_valid_frame, read_frame, read_segment_file, BadFrame, MAGIC};
use crate::JournalError;
use std::path::{Path, PathBuf};
use tracing::warn;

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
    /// `(segment, offset, bytes dropped)` of a torn tail that was truncated.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// `(segment, from, to)` byte ranges skipped by repair.
    pub repaired: Vec<(PathBuf, u64, u64)>,
    /// Segments older than the checkpoint (to delete) and an unfinished
    /// checkpoint's segment (to delete).
    pub obsolete: Vec<PathBuf>,
    /// The highest segment number seen (a new segment gets the next one).
    pub last_seq: u64,
}

/// Where a checkpoint's begin and end stand in a segment.
fn checkpoint_in(buf: &[u8]) -> Option<(u64, bool)> {
    let (first, mut pos) = read_frame(buf, MAGIC.len()).ok()?;
    let Record::CheckpointBegin { id } = first else { return None };
    while let Ok((rec, next)) = read_frame(buf, pos) {
        if rec == (Record::CheckpointEnd { id }) {
            return Some((id, true));
        }
        pos = next;
    }
    Some((id, false))
}

/// Replays `dir`, calling `on_record` for each record in order.
pub fn replay(dir: &Path, repair: bool, mut on_record: impl FnMut(Record)) -> Result<ReplayReport, JournalError> {
    let io = |e: std::io::Error| JournalError::Io { path: dir.to_path_buf(), source: e };
    let segments = list_segments(dir).map_err(io)?;
    let mut report = ReplayReport { last_seq: segments.last().map_or(0, |s| s.0), ..Default::default() };
    if segments.is_empty() {
        return Ok(report);
    }
    // The newest segment that starts with a complete checkpoint; newer
    // segments starting with an unfinished one are garbage.
    let mut start = 0;
    let mut stop_at = segments.len();
    for (i, (_, path)) in segments.iter().enumerate().rev() {
        let buf = read_segment_file(path).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
        match checkpoint_in(&buf) {
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
    let live = &segments[start..stop_at];
    for (k, (_, path)) in live.iter().enumerate() {
        let newest = k + 1 == live.len();
        let buf = read_segment_file(path).map_err(|e| JournalError::Io { path: path.clone(), source: e })?;
        report.segments += 1;
        report.bytes += buf.len() as u64;
        let mut pos = MAGIC.len();
        while pos < buf.len() {
            match read_frame(&buf, pos) {
                Ok((rec, next)) => {
                    report.records += 1;
                    on_record(rec);
                    pos = next;
                }
                Err(bad) => {
                    let resume = next_valid_frame(&buf, pos + 1);
                    match resume {
                        None if newest => {
                            let dropped = (buf.len() - pos) as u64;
                            warn!(segment = %path.display(), offset = pos, dropped, problem = ?bad,
                                  "torn tail (crash mid-write): truncated at the last good record");
                            truncate(path, pos as u64)?;
                            report.torn_tail = Some((path.clone(), pos as u64, dropped));
                            break;
                        }
                        _ if repair => {
                            let to = resume.unwrap_or(buf.len());
                            warn!(segment = %path.display(), from = pos, to, problem = ?bad, "repair: damaged bytes skipped");
                            report.repaired.push((path.clone(), pos as u64, to as u64));
                            pos = to;
                        }
                        _ => {
                            return Err(JournalError::Damaged {
                                path: path.clone(),
                                offset: pos as u64,
                                problem: describe(&bad),
                            })
                        }
                    }
                }
            }
        }
    }
    Ok(report)
}

fn describe(bad: &BadFrame) -> String {
    match bad {
        BadFrame::Truncated => "the file ends inside a record".into(),
        BadFrame::BadLength(n) => format!("impossible record length {n}"),
        BadFrame::BadChecksum => "checksum mismatch".into(),
        BadFrame::BadRecord(e) => format!("unreadable record: {e}"),
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::Io { path: path.to_path_buf(), source: e })?;
    f.set_len(len).and_then(|_| f.sync_all()).map_err(|e| JournalError::Io { path: path.to_path_buf(), source: e })
}
