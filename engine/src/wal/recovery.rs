//! Recovery: finds the latest snapshot, replays every later record in LSN order, cuts off and
//! saves a torn tail, and refuses anything that is corruption rather than an interrupted write.

use std::collections::BTreeMap;

use super::frame::{
    FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES, SegmentHeader, decode_frame,
    get_u32, get_u64, is_snapshot_tmp, parse_segment_name, parse_snapshot_name, snapshot_name,
    torn_name,
};
use super::snapshot::read_snapshot_file;
use super::{Storage, WalError, io_err};

/// One record handed to the recovery callback; `payload` borrows the segment bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Global log sequence number.
    pub lsn: u64,
    /// The shard that appended the record.
    pub shard: u16,
    /// The record's per-shard sequence number.
    pub shard_seq: u64,
    /// Caller-defined record kind.
    pub kind: u8,
    /// The record's payload.
    pub payload: &'a [u8],
}

/// A torn tail that recovery cut off and saved aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file the bytes came from.
    pub segment: String,
    /// Byte offset in that file where the torn bytes began (the file now ends there, or was
    /// removed if it held no records).
    pub offset: u64,
    /// How many bytes were cut off.
    pub bytes: u64,
    /// The file the cut bytes were saved to.
    pub saved_as: String,
}

/// What recovery does when it can prove that acknowledged records are gone: the oldest
/// segment starts after the records the snapshot covers (a lost or older snapshot), or the
/// last record was fully written yet fails its checksum (damage, not a torn write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingRecords {
    /// Refuse to start with [`WalError::RecordsMissing`] or [`WalError::Corrupt`] (default).
    #[default]
    Refuse,
    /// An operator's explicit override: start without those records, log the loss at error
    /// level and report it in [`Recovered::accepted_loss`].
    Accept,
}

/// What [`recover`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The latest snapshot as (lsn floor, payload), if any.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// The LSN the next appended record must get: pass it to [`super::Wal::open`].
    pub next_lsn: u64,
    /// The torn tail cut off, if there was one.
    pub torn_tail: Option<TornTail>,
    /// How many records were handed to the callback.
    pub records_replayed: u64,
    /// For each shard with replayed records, the last `shard_seq` replayed.
    pub last_shard_seqs: BTreeMap<u16, u64>,
    /// What was lost and accepted under [`MissingRecords::Accept`]; `None` if nothing was.
    /// The caller should take a snapshot at once so that the next start needs no override.
    pub accepted_loss: Option<String>,
}

/// Reads the latest valid snapshot and calls `on_record` for every record with an LSN above its
/// floor (all records if there is no snapshot), in LSN order. Must run before
/// [`super::Wal::open`], never concurrently with a live log on the same storage.
///
/// Repairs what an interrupted write leaves behind: removes leftover temporary snapshots, cuts
/// a torn tail off the last segment holding records (saving the bytes as
/// `torn-{segment}-{offset}.bin`), and removes trailing segments that hold no records.
///
/// Returns `Ok` if and only if the snapshot and every record passed their checks and the
/// callback accepted every record. Errors: [`WalError::SnapshotCorrupt`] for a damaged latest
/// snapshot; [`WalError::TagMismatch`] for a file from another log; [`WalError::Corrupt`]
/// (naming segment and byte offset) for a damaged frame or header that valid records follow,
/// an LSN gap or a per-shard sequence gap; [`WalError::Replay`] if `on_record` returns `Err`.
pub fn recover(
    storage: &dyn Storage,
    log_tag: u64,
    on_record: &mut dyn FnMut(RecordRef<'_>) -> Result<(), String>,
) -> Result<Recovered, WalError> {
    recover_with(storage, log_tag, MissingRecords::Refuse, on_record)
}

/// [`recover`] with an explicit policy for records that are provably missing; see
/// [`MissingRecords`]. With [`MissingRecords::Refuse`] it is exactly [`recover`], which also
/// returns [`WalError::RecordsMissing`] when the oldest segment starts after the records the
/// snapshot covers, whether or not the segments hold records.
pub fn recover_with(
    storage: &dyn Storage,
    log_tag: u64,
    missing: MissingRecords,
    on_record: &mut dyn FnMut(RecordRef<'_>) -> Result<(), String>,
) -> Result<Recovered, WalError> {
    let names = storage
        .list()
        .map_err(io_err("listing the data directory"))?;
    let mut dir_changed = false;
    let mut snapshot_floors = Vec::new();
    let mut segments = Vec::new();
    for name in names {
        if is_snapshot_tmp(&name) {
            tracing::warn!(file = %name, "removing leftover temporary snapshot");
            storage
                .remove(&name)
                .map_err(io_err(format!("removing leftover {name}")))?;
            dir_changed = true;
        } else if let Some(floor) = parse_snapshot_name(&name) {
            snapshot_floors.push(floor);
        } else if let Some(first_lsn) = parse_segment_name(&name) {
            segments.push((first_lsn, name));
        }
    }
    let latest_snapshot = snapshot_floors
        .iter()
        .max()
        .map(|&floor| snapshot_name(floor));
    let snapshot = match &latest_snapshot {
        Some(name) => Some(read_snapshot_file(storage, name, log_tag)?),
        None => None,
    };
    let lsn_floor = snapshot.as_ref().map_or(0, |(floor, _)| *floor);
    segments.sort_unstable();
    // Start at the last segment that may hold lsn_floor + 1; earlier ones hold only records the
    // snapshot covers.
    let start = segments
        .iter()
        .rposition(|(first_lsn, _)| *first_lsn <= lsn_floor.saturating_add(1))
        .unwrap_or(0);

    let mut replay = Replay {
        storage,
        log_tag,
        lsn_floor,
        on_record,
        next_lsn: None,
        last_shard_seqs: BTreeMap::new(),
        records_replayed: 0,
        torn_tail: None,
        dir_changed,
        missing,
        latest_snapshot,
        accepted_loss: None,
    };
    replay.run(&segments[start..])?;
    if replay.dir_changed {
        storage
            .sync_dir()
            .map_err(io_err("syncing the directory after recovery repairs"))?;
    }
    let next_lsn = replay
        .next_lsn
        .unwrap_or(0)
        .max(lsn_floor.saturating_add(1));
    tracing::info!(
        lsn_floor,
        next_lsn,
        records = replay.records_replayed,
        torn = replay.torn_tail.is_some(),
        "write-ahead log recovered"
    );
    Ok(Recovered {
        snapshot,
        next_lsn,
        torn_tail: replay.torn_tail,
        records_replayed: replay.records_replayed,
        last_shard_seqs: replay.last_shard_seqs,
        accepted_loss: replay.accepted_loss,
    })
}

/// Returns the offset of the first position at or after `from` where a valid frame with an
/// LSN of at least `lsn_min` starts, if and only if there is one.
fn find_valid_frame(bytes: &[u8], from: usize, lsn_min: u64) -> Option<usize> {
    let last_start = bytes.len().checked_sub(FRAME_HEADER_BYTES)?;
    (from..=last_start).find(|&at| {
        // Cheap field checks first so that only plausible positions pay for a CRC.
        let plausible = bytes.get(at + 19) == Some(&0)
            && get_u32(bytes, at).is_some_and(|len| {
                (len as usize) <= PAYLOAD_BYTES_MAX
                    && at + FRAME_HEADER_BYTES + len as usize <= bytes.len()
            })
            && get_u64(bytes, at + 8).is_some_and(|lsn| lsn >= lsn_min);
        plausible && decode_frame(bytes, at).is_ok()
    })
}

/// Bytes of the aligned units in which a disk writes atomically; a torn write leaves whole
/// units unwritten (read back as zeros) or cuts the file short.
const SECTOR_BYTES: usize = 512;

/// Tells a damaged last frame from a torn write, for the invalid frame at `at` that no valid
/// frame follows. Returns a description of the damage if and only if the frame was written
/// whole: its declared length fits in the file and no sector of it reads as unwritten (all
/// zeros), yet it fails its checks; or its length field alone is wrong (a frame with the
/// length of the remaining bytes checks out). Anything else is taken for a torn write.
fn damaged_last_frame(bytes: &[u8], at: usize) -> Option<String> {
    let rest = bytes.get(at..)?;
    if rest.iter().all(|&b| b == 0) {
        return None;
    }
    let declared = get_u32(bytes, at).map_or(usize::MAX, |len| len as usize);
    let end = at
        .checked_add(FRAME_HEADER_BYTES)
        .and_then(|n| n.checked_add(declared))
        .filter(|&end| declared <= PAYLOAD_BYTES_MAX && end <= bytes.len());
    match end {
        Some(end) => {
            let first_sector = at / SECTOR_BYTES;
            let unwritten = (first_sector..end.div_ceil(SECTOR_BYTES)).any(|sector| {
                let from = (sector * SECTOR_BYTES).max(at);
                let to = ((sector + 1) * SECTOR_BYTES).min(end);
                bytes[from..to].iter().all(|&b| b == 0)
            });
            (!unwritten).then(|| {
                format!(
                    "its {declared}-byte length fits in the file and every sector of it was written"
                )
            })
        }
        None => {
            let whole = rest.len().checked_sub(FRAME_HEADER_BYTES)?;
            let mut repaired = rest.to_vec();
            repaired[..4].copy_from_slice(&u32::try_from(whole).ok()?.to_le_bytes());
            decode_frame(&repaired, 0).is_ok().then(|| {
                format!(
                    "its length field says {declared} bytes, but the {whole} bytes present form a \
                     record whose checksum matches"
                )
            })
        }
    }
}

/// Returns true if and only if `bytes` (a whole segment file) contains a valid frame anywhere
/// after its header position.
fn holds_records(bytes: &[u8]) -> bool {
    find_valid_frame(bytes, SEGMENT_HEADER_BYTES.min(bytes.len()), 1).is_some()
}

/// The replay state while walking segments.
struct Replay<'s, 'f> {
    storage: &'s dyn Storage,
    log_tag: u64,
    lsn_floor: u64,
    on_record: &'f mut dyn FnMut(RecordRef<'_>) -> Result<(), String>,
    /// The LSN the next frame must carry, once known.
    next_lsn: Option<u64>,
    last_shard_seqs: BTreeMap<u16, u64>,
    records_replayed: u64,
    torn_tail: Option<TornTail>,
    dir_changed: bool,
    missing: MissingRecords,
    /// The file name of the snapshot recovery started from, for messages.
    latest_snapshot: Option<String>,
    accepted_loss: Option<String>,
}

impl Replay<'_, '_> {
    fn load(&self, name: &str) -> Result<Vec<u8>, WalError> {
        self.storage
            .read(name)
            .map_err(io_err(format!("reading segment {name}")))
    }

    /// Returns true if and only if some segment in `later` holds a valid frame.
    fn later_hold_records(&self, later: &[(u64, String)]) -> Result<bool, WalError> {
        for (_, name) in later {
            if holds_records(&self.load(name)?) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn run(&mut self, segments: &[(u64, String)]) -> Result<(), WalError> {
        for (index, (name_lsn, name)) in segments.iter().enumerate() {
            let later = &segments[index + 1..];
            let bytes = self.load(name)?;
            let corrupt = |offset: u64, reason: String| WalError::Corrupt {
                segment: name.clone(),
                offset,
                reason,
            };
            let header = match SegmentHeader::decode(&bytes) {
                Ok(header) => header,
                Err(reason) => {
                    if holds_records(&bytes) || self.later_hold_records(later)? {
                        return Err(corrupt(0, reason));
                    }
                    // A segment whose creation was interrupted: nothing in it or after it.
                    return self.discard_trailing(&segments[index..], Some(bytes));
                }
            };
            if header.log_tag != self.log_tag {
                return Err(WalError::TagMismatch {
                    expected: self.log_tag,
                    found: header.log_tag,
                    file: name.clone(),
                });
            }
            if header.first_lsn != *name_lsn {
                return Err(corrupt(
                    0,
                    format!(
                        "header says the first lsn is {} but the file name says {name_lsn}",
                        header.first_lsn
                    ),
                ));
            }
            let expected = self.next_lsn.unwrap_or(self.lsn_floor.saturating_add(1));
            let fits = match self.next_lsn {
                Some(next) => header.first_lsn == next,
                // The first segment read must not start past the first record we need.
                None => header.first_lsn <= expected,
            };
            if self.next_lsn.is_none() && header.first_lsn > expected {
                // The oldest segment read starts after the records the snapshot covers: those
                // records were durable once (a segment is only created at the next LSN), so
                // this is a lost or older snapshot, never an interrupted write.
                self.records_missing(name, header.first_lsn, expected)?;
                self.next_lsn = Some(header.first_lsn);
                if self.scan_segment(name, &bytes, later)? {
                    return self.discard_trailing(later, None);
                }
                continue;
            }
            if !fits {
                if holds_records(&bytes) || self.later_hold_records(later)? {
                    return Err(corrupt(
                        0,
                        format!(
                            "segment starts at lsn {} but the log continues at lsn {expected}: records are missing",
                            header.first_lsn
                        ),
                    ));
                }
                // Created ahead of a batch that never reached the disk: holds nothing.
                return self.discard_trailing(&segments[index..], Some(bytes));
            }
            self.next_lsn = Some(header.first_lsn);
            if self.scan_segment(name, &bytes, later)? {
                return self.discard_trailing(later, None);
            }
        }
        Ok(())
    }

    /// Replays the frames of one segment. Returns true if and only if it ended in a torn tail
    /// (which was cut off); later segments then hold no records.
    fn scan_segment(
        &mut self,
        name: &str,
        bytes: &[u8],
        later: &[(u64, String)],
    ) -> Result<bool, WalError> {
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset < bytes.len() {
            let expected = self.next_lsn.unwrap_or(1);
            let frame = match decode_frame(bytes, offset) {
                Ok(frame) => frame,
                Err(reason) => {
                    if let Some(valid_at) = find_valid_frame(bytes, offset + 1, expected) {
                        return Err(WalError::Corrupt {
                            segment: name.to_owned(),
                            offset: offset as u64,
                            reason: format!(
                                "{reason}; a valid frame follows at offset {valid_at}, so this is not a torn tail"
                            ),
                        });
                    }
                    if self.later_hold_records(later)? {
                        return Err(WalError::Corrupt {
                            segment: name.to_owned(),
                            offset: offset as u64,
                            reason: format!(
                                "{reason}; later segments hold records, so this is not a torn tail"
                            ),
                        });
                    }
                    if let Some(damage) = damaged_last_frame(bytes, offset) {
                        self.damaged_last_record(name, offset, &reason, &damage)?;
                    }
                    self.cut_torn_tail(name, bytes, offset)?;
                    return Ok(true);
                }
            };
            let corrupt = |reason: String| WalError::Corrupt {
                segment: name.to_owned(),
                offset: offset as u64,
                reason,
            };
            if frame.lsn != expected {
                return Err(corrupt(format!(
                    "lsn gap: expected lsn {expected}, found {}",
                    frame.lsn
                )));
            }
            if frame.lsn > self.lsn_floor {
                let last = self.last_shard_seqs.get(&frame.shard).copied();
                if let Some(last) = last.filter(|&last| frame.shard_seq != last.saturating_add(1)) {
                    return Err(corrupt(format!(
                        "shard {} sequence gap at lsn {}: expected shard_seq {}, found {}",
                        frame.shard,
                        frame.lsn,
                        last.saturating_add(1),
                        frame.shard_seq
                    )));
                }
                self.last_shard_seqs.insert(frame.shard, frame.shard_seq);
                let record = RecordRef {
                    lsn: frame.lsn,
                    shard: frame.shard,
                    shard_seq: frame.shard_seq,
                    kind: frame.kind,
                    payload: frame.payload,
                };
                (self.on_record)(record).map_err(|message| WalError::Replay {
                    segment: name.to_owned(),
                    offset: offset as u64,
                    lsn: frame.lsn,
                    message,
                })?;
                self.records_replayed += 1;
            }
            self.next_lsn = Some(frame.lsn + 1);
            offset += frame.frame_bytes;
        }
        Ok(false)
    }

    /// Records `first_lsn - 1` and below back to `expected` are gone: refuses, or under the
    /// operator's override logs the loss and goes on.
    fn records_missing(
        &mut self,
        name: &str,
        first_lsn: u64,
        expected: u64,
    ) -> Result<(), WalError> {
        let error = WalError::RecordsMissing {
            first: expected,
            last: first_lsn - 1,
            segment: name.to_owned(),
            snapshot: self.latest_snapshot.clone(),
        };
        self.accept_or_refuse(error)
    }

    /// The last frame of the log was written whole but fails its checks: refuses, or under the
    /// operator's override logs the loss (the bytes are then cut off and saved like a torn tail).
    fn damaged_last_record(
        &mut self,
        name: &str,
        offset: usize,
        reason: &str,
        damage: &str,
    ) -> Result<(), WalError> {
        let error = WalError::Corrupt {
            segment: name.to_owned(),
            offset: offset as u64,
            reason: format!(
                "{reason}; the last record is damaged, not torn ({damage}); an acknowledged \
                 record would be lost: restore the data directory from a backup, or start with \
                 --accept-missing-records to drop it (the bytes are kept aside)"
            ),
        };
        self.accept_or_refuse(error)
    }

    fn accept_or_refuse(&mut self, error: WalError) -> Result<(), WalError> {
        match self.missing {
            MissingRecords::Refuse => Err(error),
            MissingRecords::Accept => {
                tracing::error!(
                    loss = %error,
                    "STARTING WITHOUT RECORDS THAT WERE ONCE DURABLE (--accept-missing-records)"
                );
                let note = error.to_string();
                self.accepted_loss = Some(match self.accepted_loss.take() {
                    Some(earlier) => format!("{earlier}; {note}"),
                    None => note,
                });
                Ok(())
            }
        }
    }

    /// Saves `bytes[offset..]` aside and truncates the segment at `offset`.
    fn cut_torn_tail(&mut self, name: &str, bytes: &[u8], offset: usize) -> Result<(), WalError> {
        let saved_as = torn_name(name, offset as u64);
        self.storage
            .write_whole(&saved_as, &bytes[offset..])
            .map_err(io_err(format!(
                "saving the torn tail of {name} as {saved_as}"
            )))?;
        self.storage
            .truncate(name, offset as u64)
            .map_err(io_err(format!("truncating {name} at offset {offset}")))?;
        self.dir_changed = true;
        tracing::warn!(
            segment = %name,
            offset,
            bytes = bytes.len() - offset,
            saved_as = %saved_as,
            "cut a torn tail off the write-ahead log"
        );
        self.note_torn(name, offset, bytes.len() - offset, saved_as);
        Ok(())
    }

    fn note_torn(&mut self, name: &str, offset: usize, bytes: usize, saved_as: String) {
        if self.torn_tail.is_none() {
            self.torn_tail = Some(TornTail {
                segment: name.to_owned(),
                offset: offset as u64,
                bytes: bytes as u64,
                saved_as,
            });
        }
    }

    /// Removes segments that hold no records and come after the end of the log, saving any
    /// bytes they hold beyond a valid header. `first` is the already-loaded first one's content.
    fn discard_trailing(
        &mut self,
        segments: &[(u64, String)],
        mut first: Option<Vec<u8>>,
    ) -> Result<(), WalError> {
        for (_, name) in segments {
            let bytes = match first.take() {
                Some(bytes) => bytes,
                None => self.load(name)?,
            };
            let keep_from = match SegmentHeader::decode(&bytes) {
                Ok(_) => SEGMENT_HEADER_BYTES,
                Err(_) => 0,
            };
            if bytes.len() > keep_from || keep_from == 0 {
                let saved_as = torn_name(name, keep_from as u64);
                self.storage
                    .write_whole(&saved_as, &bytes[keep_from..])
                    .map_err(io_err(format!(
                        "saving the torn content of {name} as {saved_as}"
                    )))?;
                self.note_torn(name, keep_from, bytes.len() - keep_from, saved_as);
            }
            self.storage.remove(name).map_err(io_err(format!(
                "removing record-less trailing segment {name}"
            )))?;
            self.dir_changed = true;
            tracing::warn!(segment = %name, "removed a trailing segment that holds no records");
        }
        Ok(())
    }
}
