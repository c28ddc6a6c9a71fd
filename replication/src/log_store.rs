//! The Raft log and vote on disk (`docs/raft-log-format.md`): one append-only file of
//! checksummed frames, one entry each, plus small files for the vote and the purge point,
//! each replaced atomically. An append is acknowledged to Raft only after `fdatasync`; a vote
//! is durable before `save_vote` returns. Entries not yet purged are also kept in memory,
//! so reads never touch the disk.
//!
//! The file IO is synchronous inside the async calls: openraft runs the log store on its own
//! task and waits for each write anyway, and one `fdatasync` covers every entry of an
//! append (with many commands per entry, that is the group commit).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, Vote};
use parking_lot::Mutex;

use crate::codec::{Reader, Writer};
use crate::{NodeId, StorageError, TypeConfig, io_error};

/// The first bytes of every file this module writes: the format and its version.
const MAGIC: &[u8; 8] = b"MQRAFT01";
/// Frame header: payload length (u32), CRC-32C of the payload (u32).
const FRAME_HEADER_BYTES: usize = 8;
/// The largest frame accepted when reading (a larger length is damage, not data).
const FRAME_BYTES_MAX: usize = 256 << 20;
/// Rewrite the log file without its purged head once that head is at least this large (and
/// at least half the file).
const COMPACT_BYTES_MIN: u64 = 32 << 20;

const LOG_FILE: &str = "raft-log";
const VOTE_FILE: &str = "raft-vote";
const PURGED_FILE: &str = "raft-purged";
const COMMITTED_FILE: &str = "raft-committed";

/// The Raft log store. Clones share the same log (a clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

struct LogInner {
    dir: PathBuf,
    file: File,
    file_len: u64,
    /// Entries after the purge point, by index.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// Where each entry's frame starts in the file.
    offsets: BTreeMap<u64, u64>,
    /// Bytes at the head of the file that hold purged entries.
    dead_bytes: u64,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// What opening a log store found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Entries read back.
    pub entries: usize,
    /// A torn or damaged tail was cut off at this byte offset (it was never acknowledged:
    /// an append is acknowledged only after its whole write is synced).
    pub cut_at: Option<u64>,
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Reads the frame at `at`: its payload and the offset after it; `None` if the bytes there
/// are not a whole, intact frame.
fn read_frame(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = buf.get(at..at + FRAME_HEADER_BYTES)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > FRAME_BYTES_MAX {
        return None;
    }
    let start = at + FRAME_HEADER_BYTES;
    let payload = buf.get(start..start + len)?;
    (crc32c::crc32c(payload) == crc).then_some((payload, start + len))
}

/// The offset of an intact frame holding an entry right after the damaged frame at `at`, when
/// that frame's length can be read.
fn intact_entry_after(buf: &[u8], at: usize) -> Option<usize> {
    let header = buf.get(at..at + FRAME_HEADER_BYTES)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > FRAME_BYTES_MAX {
        return None;
    }
    let next = at + FRAME_HEADER_BYTES + len;
    let (payload, _) = read_frame(buf, next)?;
    let mut r = Reader::new(payload);
    r.entry().ok().map(|_| next)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `name` in `dir` with one frame holding `payload`: written to a temporary file,
/// synced, renamed over, and the directory synced.
pub(crate) fn write_small_file(dir: &Path, name: &str, payload: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut bytes = MAGIC.to_vec();
    frame(payload, &mut bytes);
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// The payload of a small file, `None` if there is none. A damaged one is an error: the
/// rename makes it whole or absent, never torn.
pub(crate) fn read_small_file(dir: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(dir.join(name)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !bytes.starts_with(MAGIC) {
        return Err(std::io::Error::other(format!(
            "{name}: not a Miqat Raft file"
        )));
    }
    match read_frame(&bytes, MAGIC.len()) {
        Some((payload, end)) if end == bytes.len() => Ok(Some(payload.to_vec())),
        _ => Err(std::io::Error::other(format!("{name}: damaged"))),
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. A torn tail of the log file (a crash in the
    /// middle of an append, never acknowledged) is cut off; a damaged frame followed by an
    /// intact entry, or at an entry known committed, and anything else that does not decode,
    /// is refused.
    pub fn open(dir: &Path) -> std::io::Result<(LogStore, OpenReport)> {
        std::fs::create_dir_all(dir)?;
        let purged = match read_small_file(dir, PURGED_FILE)? {
            Some(p) => {
                let mut r = Reader::new(&p);
                let id = r.log_id().map_err(|e| invalid(PURGED_FILE, e))?;
                Some(id)
            }
            None => None,
        };
        let vote = match read_small_file(dir, VOTE_FILE)? {
            Some(p) => Some(Reader::new(&p).vote().map_err(|e| invalid(VOTE_FILE, e))?),
            None => None,
        };
        let committed = match read_small_file(dir, COMMITTED_FILE)? {
            Some(p) => Reader::new(&p)
                .opt_log_id()
                .map_err(|e| invalid(COMMITTED_FILE, e))?,
            None => None,
        };
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let mut report = OpenReport::default();
        if buf.is_empty() {
            file.write_all(MAGIC)?;
            file.sync_all()?;
            sync_dir(dir)?;
            buf.extend_from_slice(MAGIC);
        } else if !buf.starts_with(MAGIC) {
            return Err(invalid(LOG_FILE, "not a Miqat Raft log"));
        }
        let mut entries = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut dead_bytes = 0u64;
        let mut at = MAGIC.len();
        let mut previous: Option<u64> = None;
        while at < buf.len() {
            let Some((payload, next)) = read_frame(&buf, at) else {
                // Only a torn last append may be cut: damage before an intact entry, or at an
                // entry known committed, lost acknowledged entries.
                let expected = previous.map_or(1, |p| p + 1);
                if let Some(intact) = intact_entry_after(&buf, at) {
                    return Err(invalid(
                        LOG_FILE,
                        format!(
                            "the frame at byte {at} (entry {expected}) is damaged and an intact entry follows at byte {intact}: \
                             acknowledged entries are damaged; refusing to start (replace this node under a new id)"
                        ),
                    ));
                }
                if let Some(c) = committed.filter(|c| c.index >= expected) {
                    return Err(invalid(
                        LOG_FILE,
                        format!(
                            "the frame at byte {at} (entry {expected}) is damaged and entries up to {} were committed: \
                             refusing to start (replace this node under a new id)",
                            c.index
                        ),
                    ));
                }
                report.cut_at = Some(at as u64);
                break;
            };
            let mut r = Reader::new(payload);
            let entry = r.entry().map_err(|e| invalid(LOG_FILE, e))?;
            r.finish().map_err(|e| invalid(LOG_FILE, e))?;
            let index = entry.log_id.index;
            if previous.is_some_and(|p| index != p + 1) {
                return Err(invalid(
                    LOG_FILE,
                    format!("entry {index} follows entry {previous:?}"),
                ));
            }
            previous = Some(index);
            if purged.is_some_and(|p| index <= p.index) {
                dead_bytes = next as u64;
            } else {
                offsets.insert(index, at as u64);
                entries.insert(index, entry);
            }
            at = next;
        }
        if let Some(cut) = report.cut_at {
            tracing::warn!(offset = cut, "cut a torn tail off the Raft log");
            file.set_len(cut)?;
            file.sync_all()?;
        }
        report.entries = entries.len();
        let file_len = report.cut_at.unwrap_or(buf.len() as u64);
        Ok((
            LogStore {
                inner: Arc::new(Mutex::new(LogInner {
                    dir: dir.to_path_buf(),
                    file,
                    file_len,
                    entries,
                    offsets,
                    dead_bytes,
                    purged,
                    vote,
                    committed,
                })),
            },
            report,
        ))
    }
}

impl LogInner {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.purged)
    }

    /// Writes the entries after the purge point to a new file and renames it over the log.
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{LOG_FILE}.tmp"));
        let mut bytes = MAGIC.to_vec();
        let mut offsets = BTreeMap::new();
        let mut w = Writer::default();
        for (index, entry) in &self.entries {
            offsets.insert(*index, bytes.len() as u64);
            w.out.clear();
            w.entry(entry);
            frame(&w.out, &mut bytes);
        }
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(LOG_FILE))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join(LOG_FILE))?;
        self.file_len = bytes.len() as u64;
        self.offsets = offsets;
        self.dead_bytes = 0;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        let mut w = Writer::default();
        w.vote(vote);
        write_small_file(&inner.dir, VOTE_FILE, &w.out)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if inner.committed == committed {
            return Ok(());
        }
        let mut w = Writer::default();
        w.opt_log_id(&committed);
        write_small_file(&inner.dir, COMMITTED_FILE, &w.out)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock();
        let mut bytes = Vec::new();
        let mut w = Writer::default();
        let mut staged = Vec::new();
        for entry in entries {
            let offset = inner.file_len + bytes.len() as u64;
            w.out.clear();
            w.entry(&entry);
            frame(&w.out, &mut bytes);
            staged.push((offset, entry));
        }
        let written = inner
            .file
            .write_all(&bytes)
            .and_then(|()| inner.file.sync_data());
        if let Err(e) = written {
            let message = e.to_string();
            callback.log_io_completed(Err(e));
            return Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, message));
        }
        inner.file_len += bytes.len() as u64;
        for (offset, entry) in staged {
            inner.offsets.insert(entry.log_id.index, offset);
            inner.entries.insert(entry.log_id.index, entry);
        }
        drop(inner);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        let Some(&offset) = inner.offsets.get(&log_id.index) else {
            return Ok(());
        };
        let result = inner
            .file
            .set_len(offset)
            .and_then(|()| inner.file.sync_all());
        result.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        inner.file_len = offset;
        inner.entries.split_off(&log_id.index);
        inner.offsets.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        let mut w = Writer::default();
        w.log_id(&log_id);
        write_small_file(&inner.dir, PURGED_FILE, &w.out)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        let kept_offsets = inner.offsets.split_off(&(log_id.index + 1));
        inner.offsets = kept_offsets;
        inner.dead_bytes = inner
            .offsets
            .values()
            .next()
            .copied()
            .unwrap_or(inner.file_len);
        // Nothing left (a snapshot covered more than the log held): rewrite at once, so the
        // next entries never follow purged ones with a gap in the file.
        if inner.entries.is_empty()
            || (inner.dead_bytes >= COMPACT_BYTES_MIN && inner.dead_bytes * 2 >= inner.file_len)
        {
            inner
                .compact()
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        }
        Ok(())
    }
}
