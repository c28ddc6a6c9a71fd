//! On-disk byte layout: segment headers, record frames, snapshot headers and file names.
//!
//! All integers are little-endian and fixed width. Decoding never trusts a length read from
//! disk: every slice is bounds-checked and a bad input yields a reason, not a panic.

/// Magic bytes opening every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"MIQATWAL";
/// Magic bytes opening every snapshot file.
pub(crate) const SNAPSHOT_MAGIC: [u8; 8] = *b"MIQATSNP";
/// The only format version this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Size of a segment header: magic, version, header CRC, first LSN, log tag.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a record frame header: len, crc, lsn, shard, kind, reserved, shard_seq.
pub const FRAME_HEADER_BYTES: usize = 28;
/// Size of a snapshot header.
pub const SNAPSHOT_HEADER_BYTES: usize = 48;
/// Largest record payload [`crate::wal::Wal::append`] accepts (64 KiB).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Reads a little-endian u16 at `at`, or `None` if the buffer is too short.
pub(crate) fn get_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    let mut raw = [0u8; 2];
    raw.copy_from_slice(bytes);
    Some(u16::from_le_bytes(raw))
}

/// Reads a little-endian u32 at `at`, or `None` if the buffer is too short.
pub(crate) fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    let mut raw = [0u8; 4];
    raw.copy_from_slice(bytes);
    Some(u32::from_le_bytes(raw))
}

/// Reads a little-endian u64 at `at`, or `None` if the buffer is too short.
pub(crate) fn get_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(bytes);
    Some(u64::from_le_bytes(raw))
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// LSN of the first record the segment holds (or would hold).
    pub(crate) first_lsn: u64,
    /// The log tag the segment was written with.
    pub(crate) log_tag: u64,
}

/// CRC32C of a 32-byte segment header with its CRC field (bytes 12..16) left out.
fn segment_header_crc(header: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..12]);
    crc32c::crc32c_append(crc, &header[16..SEGMENT_HEADER_BYTES])
}

impl SegmentHeader {
    /// Returns the 32 header bytes for this segment.
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[24..32].copy_from_slice(&self.log_tag.to_le_bytes());
        let crc = segment_header_crc(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `file`; returns `Err(reason)` if and only if the file
    /// is shorter than a header, or the magic, version or header CRC is wrong.
    pub(crate) fn decode(file: &[u8]) -> Result<Self, String> {
        let Some(header) = file.get(..SEGMENT_HEADER_BYTES) else {
            return Err(format!(
                "segment header is short: {} of {SEGMENT_HEADER_BYTES} bytes",
                file.len()
            ));
        };
        if header[..8] != SEGMENT_MAGIC {
            return Err("segment header magic is not MIQATWAL".to_owned());
        }
        let stored_crc = get_u32(header, 12).unwrap_or_default();
        let computed_crc = segment_header_crc(header);
        if stored_crc != computed_crc {
            return Err(format!(
                "segment header CRC mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
            ));
        }
        let version = get_u32(header, 8).unwrap_or_default();
        if version != FORMAT_VERSION {
            return Err(format!(
                "unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        Ok(Self {
            first_lsn: get_u64(header, 16).unwrap_or_default(),
            log_tag: get_u64(header, 24).unwrap_or_default(),
        })
    }
}

/// A frame decoded from disk whose CRC checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    /// Global log sequence number.
    pub(crate) lsn: u64,
    /// Shard the record belongs to.
    pub(crate) shard: u16,
    /// Caller-defined record kind.
    pub(crate) kind: u8,
    /// Per-shard sequence number.
    pub(crate) shard_seq: u64,
    /// The payload bytes.
    pub(crate) payload: &'a [u8],
    /// Bytes the whole frame occupies (header plus payload).
    pub(crate) frame_bytes: usize,
}

/// CRC32C of a frame: the len field, then everything after the crc field through the payload.
fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[..4]);
    crc32c::crc32c_append(crc, &frame[8..])
}

/// Decodes the frame starting at `at`; returns `Err(reason)` if and only if the bytes there are
/// not a complete frame with a matching CRC, a zero reserved byte and an allowed length.
pub(crate) fn decode_frame(buf: &[u8], at: usize) -> Result<Frame<'_>, String> {
    let available = buf.len().saturating_sub(at);
    let Some(len) = get_u32(buf, at) else {
        return Err(format!("incomplete frame header: {available} bytes left"));
    };
    let len = len as usize;
    if len > PAYLOAD_BYTES_MAX {
        return Err(format!(
            "frame length {len} exceeds the {PAYLOAD_BYTES_MAX}-byte maximum"
        ));
    }
    let frame_bytes = FRAME_HEADER_BYTES + len;
    let Some(frame) = at.checked_add(frame_bytes).and_then(|end| buf.get(at..end)) else {
        return Err(format!(
            "incomplete frame: {available} of {frame_bytes} bytes present"
        ));
    };
    let stored_crc = get_u32(frame, 4).unwrap_or_default();
    let computed_crc = frame_crc(frame);
    if stored_crc != computed_crc {
        return Err(format!(
            "frame CRC mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
        ));
    }
    if frame[19] != 0 {
        return Err(format!("frame reserved byte is {} (must be 0)", frame[19]));
    }
    Ok(Frame {
        lsn: get_u64(frame, 8).unwrap_or_default(),
        shard: get_u16(frame, 16).unwrap_or_default(),
        kind: frame[18],
        shard_seq: get_u64(frame, 20).unwrap_or_default(),
        payload: &frame[FRAME_HEADER_BYTES..],
        frame_bytes,
    })
}

/// Appends a frame for staging: LSN and CRC are left zero until [`seal_frames`] fills them.
/// The caller has already checked `payload.len() <= PAYLOAD_BYTES_MAX`.
pub(crate) fn stage_frame(buf: &mut Vec<u8>, shard: u16, kind: u8, shard_seq: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.reserve(FRAME_HEADER_BYTES + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]); // crc placeholder
    buf.extend_from_slice(&[0u8; 8]); // lsn placeholder
    buf.extend_from_slice(&shard.to_le_bytes());
    buf.push(kind);
    buf.push(0); // reserved
    buf.extend_from_slice(&shard_seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Assigns consecutive LSNs starting at `*next_lsn` to the staged frames in `frames` and fills
/// in their CRCs; returns the number of frames sealed. `frames` must hold only whole frames
/// produced by [`stage_frame`] (memory this process wrote, never disk input).
pub(crate) fn seal_frames(frames: &mut [u8], next_lsn: &mut u64) -> u64 {
    let mut at = 0usize;
    let mut sealed = 0u64;
    while at + FRAME_HEADER_BYTES <= frames.len() {
        let len = get_u32(frames, at).unwrap_or_default() as usize;
        let end = (at + FRAME_HEADER_BYTES + len).min(frames.len());
        let frame = &mut frames[at..end];
        frame[8..16].copy_from_slice(&next_lsn.to_le_bytes());
        let crc = frame_crc(frame);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        *next_lsn += 1;
        sealed += 1;
        at = end;
    }
    sealed
}

/// A decoded snapshot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotHeader {
    /// Every record with an LSN at or below this is reflected in the snapshot.
    pub(crate) lsn_floor: u64,
    /// The log tag the snapshot was written with.
    pub(crate) log_tag: u64,
    /// Length of the payload following the header.
    pub(crate) payload_len: u64,
    /// CRC32C of the payload.
    pub(crate) payload_crc: u32,
}

/// CRC32C of a 48-byte snapshot header with its CRC field (bytes 12..16) left out.
fn snapshot_header_crc(header: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..12]);
    crc32c::crc32c_append(crc, &header[16..SNAPSHOT_HEADER_BYTES])
}

impl SnapshotHeader {
    /// Returns the 48 header bytes for this snapshot.
    pub(crate) fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut out = [0u8; SNAPSHOT_HEADER_BYTES];
        out[..8].copy_from_slice(&SNAPSHOT_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.lsn_floor.to_le_bytes());
        out[24..32].copy_from_slice(&self.log_tag.to_le_bytes());
        out[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        out[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        // bytes 44..48 are reserved and stay zero
        let crc = snapshot_header_crc(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the header at the start of `file`; returns `Err(reason)` if and only if the file
    /// is shorter than a header, or the magic, version, header CRC or reserved field is wrong.
    pub(crate) fn decode(file: &[u8]) -> Result<Self, String> {
        let Some(header) = file.get(..SNAPSHOT_HEADER_BYTES) else {
            return Err(format!(
                "snapshot header is short: {} of {SNAPSHOT_HEADER_BYTES} bytes",
                file.len()
            ));
        };
        if header[..8] != SNAPSHOT_MAGIC {
            return Err("snapshot header magic is not MIQATSNP".to_owned());
        }
        let stored_crc = get_u32(header, 12).unwrap_or_default();
        let computed_crc = snapshot_header_crc(header);
        if stored_crc != computed_crc {
            return Err(format!(
                "snapshot header CRC mismatch (stored {stored_crc:#010x}, computed {computed_crc:#010x})"
            ));
        }
        let version = get_u32(header, 8).unwrap_or_default();
        if version != FORMAT_VERSION {
            return Err(format!(
                "unsupported snapshot format version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        if get_u32(header, 44) != Some(0) {
            return Err("snapshot header reserved field is not zero".to_owned());
        }
        Ok(Self {
            lsn_floor: get_u64(header, 16).unwrap_or_default(),
            log_tag: get_u64(header, 24).unwrap_or_default(),
            payload_len: get_u64(header, 32).unwrap_or_default(),
            payload_crc: get_u32(header, 40).unwrap_or_default(),
        })
    }
}

/// Parses `{prefix}{20 decimal digits}{suffix}`; returns the number if and only if the name has
/// exactly that shape.
fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Returns the file name of the segment whose first record has LSN `first_lsn`.
pub(crate) fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.seg")
}

/// Returns the first LSN encoded in `name` if and only if it is a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    parse_numbered(name, "wal-", ".seg")
}

/// Returns the file name of the snapshot with LSN floor `lsn_floor`.
pub(crate) fn snapshot_name(lsn_floor: u64) -> String {
    format!("snapshot-{lsn_floor:020}.snap")
}

/// Returns the temporary name a snapshot is written under before its rename.
pub(crate) fn snapshot_tmp_name(lsn_floor: u64) -> String {
    format!("snapshot-{lsn_floor:020}.tmp")
}

/// Returns the LSN floor encoded in `name` if and only if it is a snapshot file name.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<u64> {
    parse_numbered(name, "snapshot-", ".snap")
}

/// Returns true if and only if `name` is a leftover temporary snapshot file.
pub(crate) fn is_snapshot_tmp(name: &str) -> bool {
    name.starts_with("snapshot-") && name.ends_with(".tmp")
}

/// Returns the name under which recovery saves the torn bytes of `segment` from `offset` on.
pub(crate) fn torn_name(segment: &str, offset: u64) -> String {
    format!("torn-{segment}-{offset}.bin")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            first_lsn: 42,
            log_tag: 0xfeed,
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), header);
        assert!(SegmentHeader::decode(&bytes[..31]).is_err());
        bytes[20] ^= 1;
        assert!(SegmentHeader::decode(&bytes).unwrap_err().contains("CRC"));
    }

    #[test]
    fn frame_seals_and_decodes() {
        let mut buf = Vec::new();
        stage_frame(&mut buf, 3, 7, 1, b"hello");
        stage_frame(&mut buf, 3, 8, 2, b"");
        let mut next_lsn = 10;
        assert_eq!(seal_frames(&mut buf, &mut next_lsn), 2);
        assert_eq!(next_lsn, 12);
        let first = decode_frame(&buf, 0).unwrap();
        assert_eq!(
            (first.lsn, first.shard, first.kind, first.shard_seq),
            (10, 3, 7, 1)
        );
        assert_eq!(first.payload, b"hello");
        let second = decode_frame(&buf, first.frame_bytes).unwrap();
        assert_eq!(
            (second.lsn, second.shard_seq, second.payload.len()),
            (11, 2, 0)
        );
        for cut in 0..buf.len() {
            if cut != first.frame_bytes {
                let end_ok = decode_frame(&buf[..cut], 0).is_ok()
                    && cut >= first.frame_bytes
                    && decode_frame(&buf[..cut], first.frame_bytes).is_ok();
                assert!(!end_ok, "cut {cut} should not decode both frames");
            }
        }
        assert!(
            decode_frame(&[0u8; 64], 0).is_err(),
            "zeros are never a frame"
        );
    }

    #[test]
    fn names_parse_only_their_exact_shape() {
        assert_eq!(parse_segment_name(&segment_name(7)), Some(7));
        assert_eq!(
            parse_snapshot_name(&snapshot_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_name("wal-7.seg"), None);
        assert!(is_snapshot_tmp(&snapshot_tmp_name(3)));
        assert_eq!(torn_name("wal-1.seg", 5), "torn-wal-1.seg-5.bin");
    }
}
