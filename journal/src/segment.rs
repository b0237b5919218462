//! Segment files: `<dir>/<seq, 16 digits>.journal`, each starting with an
//! 8-byte magic, then frames `[len u32 LE][crc32c u32 LE][record]`.
//!
//! Reading tells a torn tail (a crash mid-write: a bad frame at the end of
//! the last segment, nothing valid after it — truncated with a warning)
//! from damage (a bad frame with valid frames after it, or in an older
//! segment — the start stops, unless repair mode skips to the next valid
//! frame and reports what it dropped).

use crate::record::{Record, RecordError};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every segment: what the file is and its format version.
pub const MAGIC: &[u8; 8] = b"EMQJRNL1";
/// Length and checksum before each record.
pub const FRAME_HEADER: usize = 8;
/// Largest record accepted when reading (a length beyond it is damage).
pub const MAX_RECORD_BYTES: usize = 1 << 30;

/// Appends `record` to `out` as one frame.
pub fn frame(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    record.encode(out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The file of segment `seq`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.journal"))
}

/// Segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".journal") else { continue };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A frame that could be decoded, at its offset in the file.
pub struct Frame {
    pub offset: u64,
    pub record: Record,
}

/// Why a frame at `offset` is not valid.
#[derive(Debug)]
pub enum BadFrame {
    /// The file ends inside the frame.
    Truncated,
    /// The length is beyond [`MAX_RECORD_BYTES`].
    BadLength(usize),
    /// The checksum does not match.
    BadChecksum,
    /// Checksum fine, contents do not parse.
    BadRecord(RecordError),
}

/// Reads one frame at `pos` of `buf`: `Ok((record, next_pos))`.
pub fn read_frame(buf: &[u8], pos: usize) -> Result<(Record, usize), BadFrame> {
    if buf.len() - pos < FRAME_HEADER {
        return Err(BadFrame::Truncated);
    }
    let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        return Err(BadFrame::BadLength(len));
    }
    let body_start = pos + FRAME_HEADER;
    if buf.len() - body_start < len {
        return Err(BadFrame::Truncated);
    }
    let body = &buf[body_start..body_start + len];
    if crc32c::crc32c(body) != crc {
        return Err(BadFrame::BadChecksum);
    }
    let record = Record::decode(body).map_err(BadFrame::BadRecord)?;
    Ok((record, body_start + len))
}

/// The next offset after `from` where a valid frame starts, if any.
pub fn next_valid_frame(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(FRAME_HEADER - 1)).find(|&p| read_frame(buf, p).is_ok())
}

/// Reads a whole segment file into memory, checking its magic.
pub fn read_segment_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    if buf.len() < MAGIC.len() || &buf[..MAGIC.len()] != MAGIC {
        if buf.len() < MAGIC.len() && MAGIC.starts_with(&buf) {
            // Created, then a crash before the magic was whole: empty.
            return Ok(MAGIC.to_vec());
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an emq journal segment", path.display()),
        ));
    }
    Ok(buf)
}

/// The segment being appended to.
pub struct SegmentWriter {
    pub seq: u64,
    file: File,
    /// Bytes in the file, magic included.
    pub len: u64,
}

impl SegmentWriter {
    /// Creates segment `seq` in `dir` (and makes its name durable).
    pub fn create(dir: &Path, seq: u64) -> io::Result<SegmentWriter> {
        let path = segment_path(dir, seq);
        // Job arguments and results: for this user only.
        let mut file = std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().create_new(true).append(true), 0o600)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(SegmentWriter { seq, file, len: MAGIC.len() as u64 })
    }

    /// Appends bytes (whole frames) to the page cache.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// fdatasync: what was written survives power loss.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// fsync of a directory, so created and deleted names are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
