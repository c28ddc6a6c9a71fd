//! The storage seam the log writes through: the `Storage`/`StorageFile` traits and their three
//! implementations — real files (`DirStorage`), crashable memory (`MemStorage`) and fault
//! injection (`FaultyStorage`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{WalError, io_err};

/// A flat directory of named files. The log only uses plain names (no path separators).
pub trait Storage: Send + Sync + 'static {
    /// Returns the names of all files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Returns the whole content of `name`.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Creates `name` empty (truncating it if it exists) and returns a handle appending to it.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens the existing file `name` for appending.
    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Replaces `name` with `bytes` and syncs the file (used for torn-tail copies).
    fn write_whole(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Cuts `name` to `len` bytes and syncs it.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creations, renames and removals in the directory durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// An open file that is only ever appended to.
pub trait StorageFile: Send {
    /// Appends all of `buf`; returns `Err` if and only if not all bytes could be written.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// Rejects names that could escape the directory.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid storage file name {name:?}"),
        ));
    }
    Ok(())
}

/// Real files in one directory, guarded by an exclusive lock on its `LOCK` file.
#[derive(Debug)]
pub struct DirStorage {
    dir: PathBuf,
    /// Held for the lifetime of the storage; the OS releases the lock when it is closed.
    _lock: File,
}

/// The name of the lock file inside a [`DirStorage`] directory.
const LOCK_FILE_NAME: &str = "LOCK";

impl DirStorage {
    /// Opens (creating it if missing) the data directory `path`; returns
    /// [`WalError::Locked`] if and only if another opener (any process, including this one)
    /// holds its `LOCK` file, and [`WalError::Io`] if the directory or lock file is unusable.
    pub fn open(path: impl AsRef<Path>) -> Result<DirStorage, WalError> {
        let dir = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(io_err(format!("creating data directory {}", dir.display())))?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening lock file {}", lock_path.display())))?;
        // `File::try_lock` is stable since Rust 1.89, above the workspace's declared MSRV; the
        // project builds with 1.95 and the workspace `rust-version` should be raised to match.
        #[allow(clippy::incompatible_msrv)]
        let locked = lock.try_lock();
        match locked {
            Ok(()) => Ok(DirStorage { dir, _lock: lock }),
            Err(TryLockError::WouldBlock) => Err(WalError::Locked {
                path: dir.display().to_string(),
            }),
            Err(TryLockError::Error(source)) => Err(WalError::Io {
                context: format!("locking {}", lock_path.display()),
                source,
            }),
        }
    }

    /// Returns the directory this storage manages.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }
}

/// A real file opened for appending.
struct DirFile {
    file: File,
}

impl StorageFile for DirFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Storage for DirStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // Names that are not UTF-8 cannot be ours; skip them rather than fail.
            if let Ok(name) = entry.file_name().into_string()
                && name != LOCK_FILE_NAME
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path_of(name)?)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.path_of(name)?)?;
        Ok(Box::new(DirFile { file }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().append(true).open(self.path_of(name)?)?;
        Ok(Box::new(DirFile { file }))
    }

    fn write_whole(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(self.path_of(name)?)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path_of(name)?)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path_of(from)?, self.path_of(to)?)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path_of(name)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// One in-memory file: its bytes and how many of them were synced.
#[derive(Clone, Debug)]
struct MemFile {
    /// Identity of this incarnation; handles to a removed or replaced file stop working.
    id: u64,
    data: Vec<u8>,
    synced_len: usize,
}

#[derive(Debug, Default)]
struct MemState {
    files: HashMap<String, MemFile>,
    next_id: u64,
}

impl MemState {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// In-memory files that remember how much of each file was synced, so tests can simulate
/// power loss with [`MemStorage::crash`] and friends. Clones share the same files.
///
/// Crash model: file contents beyond the synced prefix may be lost (wholly or partly, as the
/// caller chooses), while creations, renames and removals count as durable as soon as they
/// happen (as if every metadata operation were followed by a directory sync). `write_whole` and
/// `truncate` sync the file they touch.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

impl MemStorage {
    /// Returns an empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns an independent deep copy of the current files (the synced marks included).
    pub fn fork(&self) -> MemStorage {
        let state = self.state.lock();
        let copy = MemState {
            files: state.files.clone(),
            next_id: state.next_id,
        };
        MemStorage {
            state: Arc::new(Mutex::new(copy)),
        }
    }

    /// Simulates power loss: every file keeps only its synced prefix. Open handles stop working.
    pub fn crash(&self) {
        self.crash_with(|_, _| 0);
    }

    /// Simulates power loss in which each file keeps its synced prefix plus
    /// `min(keep_unsynced_bytes(name, unsynced_len), unsynced_len)` of its unsynced bytes, which
    /// is how torn tails arise. Afterwards all remaining bytes count as synced and every open
    /// handle fails with an error (the process that held them is gone).
    pub fn crash_with(&self, mut keep_unsynced_bytes: impl FnMut(&str, usize) -> usize) {
        let mut state = self.state.lock();
        let mut names: Vec<String> = state.files.keys().cloned().collect();
        // Sorted so that a seeded `keep_unsynced_bytes` sees files in a reproducible order.
        names.sort();
        for name in names {
            let id = state.new_id();
            if let Some(file) = state.files.get_mut(&name) {
                let unsynced_len = file.data.len() - file.synced_len;
                let kept = keep_unsynced_bytes(&name, unsynced_len).min(unsynced_len);
                file.data.truncate(file.synced_len + kept);
                file.synced_len = file.data.len();
                file.id = id;
            }
        }
    }

    /// Returns an independent copy of the files as they would be after
    /// [`MemStorage::crash_with`]`(keep_unsynced_bytes)`, leaving this storage untouched, so a
    /// test can "crash" while a log is still running on the original.
    pub fn crashed_copy_with(
        &self,
        keep_unsynced_bytes: impl FnMut(&str, usize) -> usize,
    ) -> MemStorage {
        let copy = self.fork();
        copy.crash_with(keep_unsynced_bytes);
        copy
    }

    /// Returns the content of `name`, or `None` if it does not exist.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        self.state.lock().files.get(name).map(|f| f.data.clone())
    }

    /// Returns how many bytes of `name` are synced, or `None` if it does not exist.
    pub fn synced_len(&self, name: &str) -> Option<usize> {
        self.state.lock().files.get(name).map(|f| f.synced_len)
    }

    /// Returns every file name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.lock().files.keys().cloned().collect();
        names.sort();
        names
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no such file {name:?}"))
}

/// A handle to one incarnation of an in-memory file.
struct MemHandle {
    state: Arc<Mutex<MemState>>,
    name: String,
    id: u64,
}

impl MemHandle {
    fn with_file<T>(&self, op: impl FnOnce(&mut MemFile) -> T) -> io::Result<T> {
        let mut state = self.state.lock();
        match state.files.get_mut(&self.name) {
            Some(file) if file.id == self.id => Ok(op(file)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{:?} was removed, replaced or lost in a crash", self.name),
            )),
        }
    }
}

impl StorageFile for MemHandle {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.with_file(|file| file.data.extend_from_slice(buf))
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with_file(|file| file.synced_len = file.data.len())
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().files.keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.contents(name).ok_or_else(|| not_found(name))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        check_name(name)?;
        let mut state = self.state.lock();
        let id = state.new_id();
        state.files.insert(
            name.to_owned(),
            MemFile {
                id,
                data: Vec::new(),
                synced_len: 0,
            },
        );
        Ok(Box::new(MemHandle {
            state: Arc::clone(&self.state),
            name: name.to_owned(),
            id,
        }))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let state = self.state.lock();
        let id = state.files.get(name).ok_or_else(|| not_found(name))?.id;
        Ok(Box::new(MemHandle {
            state: Arc::clone(&self.state),
            name: name.to_owned(),
            id,
        }))
    }

    fn write_whole(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        check_name(name)?;
        let mut state = self.state.lock();
        let id = state.new_id();
        state.files.insert(
            name.to_owned(),
            MemFile {
                id,
                data: bytes.to_vec(),
                synced_len: bytes.len(),
            },
        );
        Ok(())
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        let file = state.files.get_mut(name).ok_or_else(|| not_found(name))?;
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(file.data.len());
        file.data.truncate(len);
        file.synced_len = len;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_name(to)?;
        let mut state = self.state.lock();
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_owned(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.state
            .lock()
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an injected fault hits one call or every call from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Only the chosen call fails; later calls reach the inner storage again.
    Once,
    /// The chosen call and every later one fail.
    Persistent,
}

#[derive(Clone, Copy, Debug)]
struct FaultRule {
    /// 1-based call number (counted over the storage's lifetime) that fails first.
    at_call: u64,
    mode: FaultMode,
}

impl FaultRule {
    fn hits(&self, call: u64) -> bool {
        match self.mode {
            FaultMode::Once => call == self.at_call,
            FaultMode::Persistent => call >= self.at_call,
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    writes: AtomicU64,
    syncs: AtomicU64,
    write_rule: Mutex<Option<FaultRule>>,
    sync_rule: Mutex<Option<FaultRule>>,
}

impl Faults {
    /// Counts one call and returns the injected error if and only if a rule hits it.
    fn check(counter: &AtomicU64, rule: &Mutex<Option<FaultRule>>, what: &str) -> io::Result<()> {
        let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
        match *rule.lock() {
            Some(rule) if rule.hits(call) => Err(io::Error::other(format!(
                "injected {what} failure on call {call}"
            ))),
            _ => Ok(()),
        }
    }
}

/// Wraps any [`Storage`] and makes chosen `write_all` or `sync_data` calls on files it opened
/// fail with an `io::Error`. Clones share the fault plan.
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    /// Wraps `inner` with no faults planned.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// Makes the `nth` `write_all` call from now on (1 = the very next) fail, and with
    /// [`FaultMode::Persistent`] every later one too.
    pub fn fail_write(&self, nth: u64, mode: FaultMode) {
        let at_call = self.faults.writes.load(Ordering::SeqCst) + nth.max(1);
        *self.faults.write_rule.lock() = Some(FaultRule { at_call, mode });
    }

    /// Makes the `nth` `sync_data` call from now on (1 = the very next) fail, and with
    /// [`FaultMode::Persistent`] every later one too.
    pub fn fail_sync(&self, nth: u64, mode: FaultMode) {
        let at_call = self.faults.syncs.load(Ordering::SeqCst) + nth.max(1);
        *self.faults.sync_rule.lock() = Some(FaultRule { at_call, mode });
    }

    /// Cancels every planned fault.
    pub fn clear(&self) {
        *self.faults.write_rule.lock() = None;
        *self.faults.sync_rule.lock() = None;
    }

    /// Returns how many `write_all` calls were made so far (failed ones included).
    pub fn writes_seen(&self) -> u64 {
        self.faults.writes.load(Ordering::SeqCst)
    }

    /// Returns how many `sync_data` calls were made so far (failed ones included).
    pub fn syncs_seen(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    fn wrap(&self, inner: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(FaultyFile {
            inner,
            faults: Arc::clone(&self.faults),
        })
    }
}

struct FaultyFile {
    inner: Box<dyn StorageFile>,
    faults: Arc<Faults>,
}

impl StorageFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Faults::check(&self.faults.writes, &self.faults.write_rule, "write")?;
        self.inner.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Faults::check(&self.faults.syncs, &self.faults.sync_rule, "sync")?;
        self.inner.sync_data()
    }
}

impl Storage for FaultyStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(self.inner.create(name)?))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open_append(name)?))
    }

    fn write_whole(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_whole(name, bytes)
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mem_crash_keeps_synced_prefix_and_chosen_extra() {
        let storage = MemStorage::new();
        let mut file = storage.create("a").unwrap();
        file.write_all(b"hello").unwrap();
        file.sync_data().unwrap();
        file.write_all(b" world").unwrap();
        let copy = storage.crashed_copy_with(|_, unsynced| unsynced / 2);
        assert_eq!(copy.contents("a").unwrap(), b"hello wo");
        storage.crash();
        assert_eq!(storage.contents("a").unwrap(), b"hello");
        assert!(file.write_all(b"x").is_err(), "handles die in a crash");
    }

    #[test]
    fn faulty_storage_fails_the_chosen_call() {
        let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
        let mut file = faulty.create("a").unwrap();
        faulty.fail_write(2, FaultMode::Once);
        file.write_all(b"1").unwrap();
        assert!(file.write_all(b"2").is_err());
        file.write_all(b"3").unwrap();
        faulty.fail_sync(1, FaultMode::Persistent);
        assert!(file.sync_data().is_err());
        assert!(file.sync_data().is_err());
        assert_eq!(faulty.read("a").unwrap(), b"13");
    }

    #[test]
    fn dir_storage_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let storage = DirStorage::open(dir.path().join("data")).unwrap();
        let mut file = storage.create("x").unwrap();
        file.write_all(b"abc").unwrap();
        file.sync_data().unwrap();
        storage.truncate("x", 2).unwrap();
        storage.rename("x", "y").unwrap();
        storage.sync_dir().unwrap();
        assert_eq!(storage.read("y").unwrap(), b"ab");
        assert_eq!(storage.list().unwrap(), vec!["y".to_owned()]);
        assert!(storage.create("../escape").is_err());
    }
}
