//! Segment files: `<dir>/<seq, 16 digits>.journal`. Format 2 starts with
//! a 28-byte header — the magic `EMQJRNL2`; a little-endian u64: the length
//! the *previous* segment is valid up to, when the writer abandoned it
//! after a failed write or sync (`u64::MAX`: no cut); a u64 salt, random
//! per segment (OS CSPRNG); a CRC32C of those 24 bytes — then frames `[len u32 LE][crc u32 LE][record]`
//! where crc is CRC32C of the salt's 8 bytes and the record: a frame inside
//! a client's payload cannot pass for a record when a reader looks for the
//! next valid frame (it cannot know the salt). Salt 0: plain CRC32C of the
//! record. Format 1 (`EMQJRNL1`, 8 bytes of magic, no cut, no salt) is still
//! read.
//!
//! Reading tells what a crash or power loss leaves at the end of the
//! newest segment (a torn or partly written tail: the log ends at its first
//! bad record) from damage in an older, closed segment (the start stops,
//! unless repair mode rewrites the segment without the damaged ranges).

use crate::fs::{FileId, Fs};
use crate::record::{Record, RecordError};
use std::io;
use std::path::{Path, PathBuf};

/// First bytes of a format-2 segment (the one written).
pub const MAGIC: &[u8; 8] = b"EMQJRNL2";
/// First bytes of a format-1 segment (read only).
pub const MAGIC_V1: &[u8; 8] = b"EMQJRNL1";
/// Bytes of a format-2 header: magic, the previous segment's cut, salt,
/// and a CRC32C of those 24 bytes (a flipped bit in the cut must not cut a
/// good segment short).
pub const HEADER: usize = 28;
/// "No cut" in a header.
const NO_CUT: u64 = u64::MAX;
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

/// Where segment `seq` is written before it is published (see
/// [`SegmentWriter::create_pending`]).
pub fn pending_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.journal.tmp"))
}

/// Segments in `dir`, oldest first.
pub fn list_segments(fs: &mut dyn Fs, dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for path in fs.list(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".journal") else { continue };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, path));
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

/// The checksum of a record body in a segment with `salt` (0: none).
fn checksum(salt: u64, body: &[u8]) -> u32 {
    if salt == 0 {
        crc32c::crc32c(body)
    } else {
        crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), body)
    }
}

/// Re-checksums every frame of `bytes` (whole frames, as [`frame`] made
/// them) for a segment with `salt`.
pub fn seal(bytes: &mut [u8], salt: u64) {
    let mut pos = 0;
    while bytes.len() - pos >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let body = pos + FRAME_HEADER;
        if bytes.len() - body < len {
            return;
        }
        let crc = checksum(salt, &bytes[body..body + len]);
        bytes[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = body + len;
    }
}

/// Reads one frame at `pos` of `buf` (no salt): `Ok((record, next_pos))`.
pub fn read_frame(buf: &[u8], pos: usize) -> Result<(Record, usize), BadFrame> {
    read_frame_salted(buf, pos, 0)
}

/// Reads one frame at `pos` of a segment with `salt`.
pub fn read_frame_salted(buf: &[u8], pos: usize, salt: u64) -> Result<(Record, usize), BadFrame> {
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
    if checksum(salt, body) != crc {
        return Err(BadFrame::BadChecksum);
    }
    let record = Record::decode(body).map_err(BadFrame::BadRecord)?;
    Ok((record, body_start + len))
}

/// The next offset after `from` where a valid frame (of a segment with
/// `salt`) starts, if any.
pub fn next_valid_frame(buf: &[u8], from: usize, salt: u64) -> Option<usize> {
    (from..buf.len().saturating_sub(FRAME_HEADER - 1)).find(|&p| read_frame_salted(buf, p, salt).is_ok())
}

/// A segment read into memory.
pub struct SegmentData {
    pub bytes: Vec<u8>,
    /// Where its frames start (after the header).
    pub data_start: usize,
    /// The length its predecessor is valid up to (see the module doc).
    pub cut_prev: Option<u64>,
    /// Its header never became whole (a crash while it was created): it
    /// holds nothing, and its cut is unknown.
    pub unborn: bool,
    /// Its frames' salt (0: none).
    pub salt: u64,
}

/// Reads a whole segment file into memory and its header.
pub fn read_segment(fs: &mut dyn Fs, path: &Path) -> io::Result<SegmentData> {
    let bytes = fs.read(path)?;
    parse_segment(bytes).map_err(|why| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display())))
}

/// The header of a segment's bytes.
pub fn parse_segment(bytes: Vec<u8>) -> Result<SegmentData, String> {
    if bytes.len() >= HEADER && &bytes[..8] == MAGIC {
        let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..24]) != crc {
            return Err("segment header checksum mismatch".into());
        }
        let cut = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let salt = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let cut_prev = (cut != NO_CUT).then_some(cut);
        return Ok(SegmentData { bytes, data_start: HEADER, cut_prev, unborn: false, salt });
    }
    if bytes.len() >= MAGIC_V1.len() && &bytes[..8] == MAGIC_V1 {
        return Ok(SegmentData { bytes, data_start: MAGIC_V1.len(), cut_prev: None, unborn: false, salt: 0 });
    }
    // Created, then a crash before its header was whole (zeros where the
    // file system had not written it yet count the same): nothing in it.
    let magic_part = &bytes[..bytes.len().min(MAGIC.len())];
    let newborn = magic_part.iter().zip(MAGIC.iter()).all(|(a, b)| a == b || *a == 0);
    // Only zeros: its data never reached the disk (a power loss right
    // after it was created, or a failed sync): nothing to read in it.
    if (bytes.len() < HEADER && newborn) || bytes.iter().all(|b| *b == 0) {
        let n = bytes.len();
        return Ok(SegmentData { bytes, data_start: n, cut_prev: None, unborn: true, salt: 0 });
    }
    Err("not an emq journal segment".into())
}

/// The header of a new segment.
fn header(cut_prev: Option<u64>, salt: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&cut_prev.unwrap_or(NO_CUT).to_le_bytes());
    h[16..24].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The segment being appended to.
pub struct SegmentWriter {
    pub seq: u64,
    /// Its frames' salt: chunks are [`seal`]ed with it before they are written.
    pub salt: u64,
    file: FileId,
    /// Bytes in the file, header included.
    pub len: u64,
    /// Where the file ends: past `len` it holds zeros written ahead.
    end: u64,
    /// How far past the records to keep zeros written ahead (0: none, the
    /// file ends with its last record). See [`Fs::zero_ahead`]: with them a
    /// group commit's `fdatasync` is one data write and a flush. Replay
    /// reads zeros after the last record as the end of the records, not as
    /// a torn tail; a segment's successor names where its records end (its
    /// header's cut), so zeros after them are never taken for damage.
    pub zero_ahead: u64,
}

impl SegmentWriter {
    /// Creates segment `seq` in `dir` — its header (with the previous
    /// segment's cut, if any) synced and its name durable before it is
    /// used. A failed attempt may leave the file; the next attempt starts
    /// it afresh.
    pub fn create(fs: &mut dyn Fs, dir: &Path, seq: u64, cut_prev: Option<u64>) -> io::Result<SegmentWriter> {
        let w = Self::begin(fs, &segment_path(dir, seq), seq, cut_prev)?;
        if let Err(e) = fs.sync_dir(dir) {
            w.close(fs);
            return Err(e);
        }
        Ok(w)
    }

    /// Segment `seq` written under a temporary name (`<seq>.journal.tmp`,
    /// which replay ignores and removes), to appear whole, by
    /// [`SegmentWriter::publish`], once its content is synced: a segment
    /// that rewrites what a failed one held, whose header cuts that one
    /// short, must not be seen before the rewrite is durable.
    pub fn create_pending(fs: &mut dyn Fs, dir: &Path, seq: u64, cut_prev: Option<u64>) -> io::Result<SegmentWriter> {
        Self::begin(fs, &pending_path(dir, seq), seq, cut_prev)
    }

    /// Renames a pending segment into place, durably.
    pub fn publish(&self, fs: &mut dyn Fs, dir: &Path) -> io::Result<()> {
        fs.rename(&pending_path(dir, self.seq), &segment_path(dir, self.seq))?;
        fs.sync_dir(dir)
    }

    fn begin(fs: &mut dyn Fs, path: &Path, seq: u64, cut_prev: Option<u64>) -> io::Result<SegmentWriter> {
        let salt = fs.random_salt().max(1);
        let file = fs.create(path)?;
        let made = fs.append(file, &header(cut_prev, salt)).and_then(|_| fs.sync(file));
        if let Err(e) = made {
            fs.close(file);
            return Err(e);
        }
        Ok(SegmentWriter { seq, salt, file, len: HEADER as u64, end: HEADER as u64, zero_ahead: 0 })
    }

    /// Appends bytes (whole frames) to the page cache, first writing
    /// `zero_ahead` bytes of zeros past them when they would pass the
    /// zeros written before. Returns by how much the file grew. On error
    /// the segment may hold any prefix of them: the caller must not append
    /// to it again (see the writer's recovery).
    pub fn write(&mut self, fs: &mut dyn Fs, bytes: &[u8]) -> io::Result<u64> {
        let before = self.end;
        let to = self.len + bytes.len() as u64;
        if self.zero_ahead > 0 && to > self.end {
            let end = to + self.zero_ahead;
            // Zeros are an optimisation: a disk that cannot take them (a
            // full one) still gets the records if it can. Whatever part of
            // them was written lies past the records: harmless.
            if fs.zero_ahead(self.file, self.end, end).is_ok() {
                self.end = end;
            }
        }
        fs.append(self.file, bytes)?;
        self.len = to;
        self.end = self.end.max(to);
        Ok(self.end - before)
    }

    /// Where the file ends (zeros written ahead included).
    pub fn file_len(&self) -> u64 {
        self.end
    }

    /// fdatasync: what was written survives power loss. On error, what was
    /// not synced before may be lost whatever a later sync says.
    pub fn sync(&mut self, fs: &mut dyn Fs) -> io::Result<()> {
        fs.sync(self.file)
    }

    pub fn close(self, fs: &mut dyn Fs) {
        fs.close(self.file);
    }
}
