//! Snapshot files: atomic write (temp file, sync, rename, directory sync), validation on read,
//! and pruning of the snapshots and segments a durable snapshot makes obsolete.

use super::frame::{
    SNAPSHOT_HEADER_BYTES, SnapshotHeader, is_snapshot_tmp, parse_segment_name,
    parse_snapshot_name, segment_name, snapshot_name, snapshot_tmp_name,
};
use super::{Storage, WalError, io_err};

/// Writes `payload` as the snapshot with floor `lsn_floor` and makes it durable: it is written
/// under a temporary name, synced, renamed into place and the directory is synced. Returns the
/// final file name.
pub(crate) fn write_snapshot_file(
    storage: &dyn Storage,
    log_tag: u64,
    lsn_floor: u64,
    payload: &[u8],
) -> Result<String, WalError> {
    let tmp = snapshot_tmp_name(lsn_floor);
    let name = snapshot_name(lsn_floor);
    let header = SnapshotHeader {
        lsn_floor,
        log_tag,
        payload_len: payload.len() as u64,
        payload_crc: crc32c::crc32c(payload),
    }
    .encode();
    let mut file = storage
        .create(&tmp)
        .map_err(io_err(format!("creating {tmp}")))?;
    file.write_all(&header)
        .map_err(io_err(format!("writing {tmp}")))?;
    file.write_all(payload)
        .map_err(io_err(format!("writing {tmp}")))?;
    file.sync_data().map_err(io_err(format!("syncing {tmp}")))?;
    drop(file);
    storage
        .rename(&tmp, &name)
        .map_err(io_err(format!("renaming {tmp} to {name}")))?;
    storage.sync_dir().map_err(io_err(format!(
        "syncing the directory after writing {name}"
    )))?;
    Ok(name)
}

/// Reads and validates the snapshot `name`; returns its floor and payload if and only if the
/// header and payload checks pass and its tag equals `log_tag`.
pub(crate) fn read_snapshot_file(
    storage: &dyn Storage,
    name: &str,
    log_tag: u64,
) -> Result<(u64, Vec<u8>), WalError> {
    let corrupt = |reason: String| WalError::SnapshotCorrupt {
        file: name.to_owned(),
        reason,
    };
    let mut bytes = storage
        .read(name)
        .map_err(io_err(format!("reading snapshot {name}")))?;
    let header = SnapshotHeader::decode(&bytes).map_err(corrupt)?;
    if header.log_tag != log_tag {
        return Err(WalError::TagMismatch {
            expected: log_tag,
            found: header.log_tag,
            file: name.to_owned(),
        });
    }
    if parse_snapshot_name(name) != Some(header.lsn_floor) {
        return Err(corrupt(format!(
            "header lsn floor {} does not match the file name",
            header.lsn_floor
        )));
    }
    let payload_len = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    if payload_len != header.payload_len {
        return Err(corrupt(format!(
            "payload is {payload_len} bytes but the header says {}",
            header.payload_len
        )));
    }
    let computed = crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..]);
    if computed != header.payload_crc {
        return Err(corrupt(format!(
            "payload CRC mismatch (stored {:#010x}, computed {computed:#010x})",
            header.payload_crc
        )));
    }
    bytes.drain(..SNAPSHOT_HEADER_BYTES);
    Ok((header.lsn_floor, bytes))
}

/// After the snapshot with floor `lsn_floor` is durable: removes older snapshots, leftover
/// temporary snapshots, and every segment whose records all have LSN <= `lsn_floor` — a segment
/// is removable if and only if the next segment's first LSN is <= `lsn_floor + 1` — never the
/// segment starting at `active_first_lsn`. Returns the names removed.
pub(crate) fn prune(
    storage: &dyn Storage,
    lsn_floor: u64,
    active_first_lsn: u64,
) -> Result<Vec<String>, WalError> {
    let names = storage
        .list()
        .map_err(io_err("listing the data directory to prune"))?;
    let mut doomed = Vec::new();
    let mut segments: Vec<u64> = Vec::new();
    for name in names {
        if let Some(floor) = parse_snapshot_name(&name) {
            if floor < lsn_floor {
                doomed.push(name);
            }
        } else if is_snapshot_tmp(&name) {
            doomed.push(name);
        } else if let Some(first_lsn) = parse_segment_name(&name) {
            segments.push(first_lsn);
        }
    }
    segments.sort_unstable();
    for pair in segments.windows(2) {
        let (first_lsn, next_first_lsn) = (pair[0], pair[1]);
        if first_lsn != active_first_lsn && next_first_lsn <= lsn_floor.saturating_add(1) {
            doomed.push(segment_name(first_lsn));
        }
    }
    for name in &doomed {
        storage
            .remove(name)
            .map_err(io_err(format!("removing obsolete {name}")))?;
    }
    if !doomed.is_empty() {
        storage
            .sync_dir()
            .map_err(io_err("syncing the directory after pruning"))?;
    }
    Ok(doomed)
}
