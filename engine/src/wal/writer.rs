//! The live log: per-shard staging buffers, the group-commit flusher thread, durability
//! tracking (blocking and `Future`-based waits), fail-stop handling and snapshots.
//!
//! Append path: the caller (already holding its engine shard lock) locks only its shard's
//! stage, encodes a frame with placeholder LSN and CRC, bumps the shard's sequence number and
//! nudges the flusher. No lock is shared between shards on this path.
//!
//! Flusher cycle: take every non-empty stage buffer (shard by shard, so per-shard order is
//! kept), assign consecutive global LSNs and CRCs, write the batch with one `write_all`, issue
//! one `fdatasync`, then publish the per-shard durable sequence numbers and wake waiters.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crossbeam::utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use super::frame::{
    FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES, SegmentHeader, decode_frame,
    parse_segment_name, seal_frames, segment_name, stage_frame,
};
use super::snapshot::{prune, write_snapshot_file};
use super::{Durability, Storage, StorageFile, Ticket, WalConfig, WalError, WalStats, io_err};

/// One shard's staging area.
#[derive(Debug)]
struct Stage {
    /// Encoded frames not yet taken by the flusher, LSN and CRC still zero.
    buf: Vec<u8>,
    /// The last `shard_seq` handed out for this shard.
    last_seq: u64,
}

/// Monotonic counters behind [`WalStats`].
#[derive(Debug, Default)]
struct StatsCounters {
    batches: AtomicU64,
    fsyncs: AtomicU64,
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    segments_created: AtomicU64,
}

/// Registered async waiters, keyed by the id of their [`DurableFuture`].
#[derive(Default)]
struct WakerRegistry {
    next_id: u64,
    waiting: HashMap<u64, (Ticket, Waker)>,
}

/// State shared by the [`Wal`] handle, its futures and the flusher thread.
struct Inner {
    storage: Arc<dyn Storage>,
    config: WalConfig,
    /// Cache-padded so shards appending on different cores do not false-share.
    stages: Box<[CachePadded<Mutex<Stage>>]>,
    /// The highest `shard_seq` per shard known durable.
    durable_seqs: Box<[AtomicU64]>,
    durable_lsn: AtomicU64,
    /// Bytes appended but not yet written by the flusher.
    staged_bytes: AtomicUsize,
    /// Set by appenders (and `sync_now`) to ask the flusher for a cycle; cleared by the
    /// flusher at the start of a cycle. Only the appender flipping it false→true touches the
    /// flusher's mutex, so a busy flusher costs appenders no syscall.
    pending: AtomicBool,
    flusher_mx: Mutex<()>,
    flusher_cv: Condvar,
    /// Set once shutdown starts: appends are refused from then on.
    closed: AtomicBool,
    /// Tells the flusher to do one last cycle and exit.
    stop: AtomicBool,
    /// Set when the flusher thread has left its loop (after shutdown or failure).
    flusher_exited: AtomicBool,
    /// Waiters for durability and for `sync_now` sleep here; the flusher notifies after
    /// publishing.
    durable_mx: Mutex<()>,
    durable_cv: Condvar,
    wakers: Mutex<WakerRegistry>,
    sync_requested: AtomicU64,
    sync_completed: AtomicU64,
    /// The fail-stop cause; set at most once.
    failed: OnceLock<String>,
    /// First LSN of the segment the flusher writes to (never pruned).
    active_first_lsn: AtomicU64,
    /// Serialises snapshot writers.
    snapshot_mx: Mutex<()>,
    stats: StatsCounters,
}

impl Inner {
    fn failed_error(&self) -> Option<WalError> {
        self.failed.get().map(|cause| WalError::Failed {
            cause: cause.clone(),
        })
    }

    /// Enters the failed state for good (first error wins), logs it once and wakes everyone.
    fn fail(&self, cause: String) {
        if self.failed.set(cause.clone()).is_ok() {
            tracing::error!(cause = %cause, "write-ahead log failed; it accepts nothing more");
        }
        self.wake_waiters(true);
    }

    /// Asks the flusher for a cycle.
    fn nudge(&self) {
        // The plain load first keeps appenders from bouncing the flag's cache line with
        // read-modify-writes while the flusher is busy and the flag is already set.
        if !self.pending.load(Ordering::SeqCst) && !self.pending.swap(true, Ordering::SeqCst) {
            // Taking the mutex orders this notify after the flusher's check of `pending`.
            let _guard = self.flusher_mx.lock();
            self.flusher_cv.notify_one();
        }
    }

    fn is_durable(&self, ticket: Ticket) -> Result<bool, WalError> {
        if let Some(err) = self.failed_error() {
            return Err(err);
        }
        let durable =
            self.durable_seqs
                .get(usize::from(ticket.shard))
                .ok_or(WalError::UnknownShard {
                    shard: ticket.shard,
                    shards: self.durable_seqs.len(),
                })?;
        Ok(durable.load(Ordering::Acquire) >= ticket.seq)
    }

    /// Wakes blocked waiters and the async waiters whose tickets are durable (all of them if
    /// `everyone`).
    fn wake_waiters(&self, everyone: bool) {
        {
            let _guard = self.durable_mx.lock();
            self.durable_cv.notify_all();
        }
        let ready: Vec<Waker> = {
            let mut registry = self.wakers.lock();
            if registry.waiting.is_empty() {
                return;
            }
            let mut ready = Vec::new();
            registry.waiting.retain(|_, (ticket, waker)| {
                let done = everyone
                    || self
                        .durable_seqs
                        .get(usize::from(ticket.shard))
                        .is_none_or(|d| d.load(Ordering::Acquire) >= ticket.seq);
                if done {
                    ready.push(waker.clone());
                }
                !done
            });
            ready
        };
        // Woken outside the registry lock: a waker may poll its future inline.
        for waker in ready {
            waker.wake();
        }
    }
}

/// The write-ahead log. Shared as `Arc<Wal>`; dropping the last handle stops the flusher.
pub struct Wal {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("config", &self.inner.config)
            .field("durable_lsn", &self.durable_lsn())
            .field("failed", &self.inner.failed.get())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Starts a log whose next record gets LSN `next_lsn` and whose shard `i` continues after
    /// `shard_seqs[i]` (the last sequence number already applied, 0 if none); the number of
    /// shards is `shard_seqs.len()`. Creates and syncs a fresh segment named after `next_lsn`
    /// and starts the flusher thread.
    ///
    /// Returns [`WalError::InvalidArgument`] if `next_lsn` is 0, there are no shards or more
    /// than 65,536, a segment starting after `next_lsn` exists, or the segment named after
    /// `next_lsn` already holds records (run [`super::recover`] and pass its `next_lsn`);
    /// [`WalError::Io`] if the segment cannot be created.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: WalConfig,
        next_lsn: u64,
        shard_seqs: Vec<u64>,
    ) -> Result<Arc<Wal>, WalError> {
        if next_lsn == 0 {
            return Err(WalError::InvalidArgument {
                reason: "next_lsn must be at least 1 (LSNs start at 1)".to_owned(),
            });
        }
        if shard_seqs.is_empty() || shard_seqs.len() > usize::from(u16::MAX) + 1 {
            return Err(WalError::InvalidArgument {
                reason: format!(
                    "shard count must be between 1 and 65536, got {}",
                    shard_seqs.len()
                ),
            });
        }
        let names = storage
            .list()
            .map_err(io_err("listing the data directory"))?;
        if let Some(beyond) = names
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .find(|&first_lsn| first_lsn > next_lsn)
        {
            return Err(WalError::InvalidArgument {
                reason: format!(
                    "segment {} starts after next_lsn {next_lsn}; open with the next_lsn that recovery returns",
                    segment_name(beyond)
                ),
            });
        }
        // The new segment replaces a same-named one; that is only safe if it holds no record.
        let own_name = segment_name(next_lsn);
        if names.contains(&own_name) {
            let bytes = storage
                .read(&own_name)
                .map_err(io_err(format!("reading segment {own_name}")))?;
            if decode_frame(&bytes, SEGMENT_HEADER_BYTES).is_ok() {
                return Err(WalError::InvalidArgument {
                    reason: format!(
                        "segment {own_name} already holds records at or after next_lsn {next_lsn}; open with the next_lsn that recovery returns"
                    ),
                });
            }
        }

        let stages = shard_seqs
            .iter()
            .map(|&last_seq| {
                CachePadded::new(Mutex::new(Stage {
                    buf: Vec::new(),
                    last_seq,
                }))
            })
            .collect();
        let durable_seqs = shard_seqs.iter().map(|&s| AtomicU64::new(s)).collect();
        let inner = Arc::new(Inner {
            storage,
            config,
            stages,
            durable_seqs,
            durable_lsn: AtomicU64::new(next_lsn - 1),
            staged_bytes: AtomicUsize::new(0),
            pending: AtomicBool::new(false),
            flusher_mx: Mutex::new(()),
            flusher_cv: Condvar::new(),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            flusher_exited: AtomicBool::new(false),
            durable_mx: Mutex::new(()),
            durable_cv: Condvar::new(),
            wakers: Mutex::new(WakerRegistry::default()),
            sync_requested: AtomicU64::new(0),
            sync_completed: AtomicU64::new(0),
            failed: OnceLock::new(),
            active_first_lsn: AtomicU64::new(next_lsn),
            snapshot_mx: Mutex::new(()),
            stats: StatsCounters::default(),
        });

        let shard_count = shard_seqs.len();
        let mut flusher = Flusher {
            inner: Arc::clone(&inner),
            file: None,
            segment_name: String::new(),
            segment_bytes: 0,
            next_lsn,
            batch: Vec::new(),
            spare: vec![Vec::new(); shard_count],
            taken: Vec::with_capacity(shard_count),
            unsynced: false,
            dir_unsynced: false,
        };
        flusher
            .start_segment()
            .map_err(|(context, source)| WalError::Io { context, source })?;
        let handle = std::thread::Builder::new()
            .name("miqat-wal-flusher".to_owned())
            .spawn(move || flusher.run())
            .map_err(io_err("spawning the write-ahead log flusher thread"))?;
        Ok(Arc::new(Wal {
            inner,
            flusher: Mutex::new(Some(handle)),
        }))
    }

    /// Stages a record for `shard` and returns its ticket; the record becomes durable later
    /// (see [`Wal::wait_durable`]). Call it while holding the engine's lock for that shard so
    /// the shard's record order equals its decision order.
    ///
    /// Returns [`WalError::RecordTooLarge`] if and only if the payload exceeds
    /// [`PAYLOAD_BYTES_MAX`]; [`WalError::UnknownShard`] for a shard not below the shard count;
    /// [`WalError::Failed`] once the log has failed; [`WalError::Closed`] after shutdown began;
    /// [`WalError::Backpressure`] if staging it would exceed `staged_bytes_max`. On error the
    /// shard's sequence number is not consumed.
    pub fn append(&self, shard: u16, kind: u8, payload: &[u8]) -> Result<Ticket, WalError> {
        let inner = &*self.inner;
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(WalError::RecordTooLarge {
                bytes: payload.len(),
            });
        }
        if let Some(err) = inner.failed_error() {
            return Err(err);
        }
        if inner.closed.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let stage = inner
            .stages
            .get(usize::from(shard))
            .ok_or(WalError::UnknownShard {
                shard,
                shards: inner.stages.len(),
            })?;
        let frame_bytes = FRAME_HEADER_BYTES + payload.len();
        let seq = {
            let mut stage = stage.lock();
            let before = inner.staged_bytes.fetch_add(frame_bytes, Ordering::AcqRel);
            if before + frame_bytes > inner.config.staged_bytes_max {
                inner.staged_bytes.fetch_sub(frame_bytes, Ordering::AcqRel);
                return Err(WalError::Backpressure);
            }
            let seq = stage.last_seq + 1;
            stage_frame(&mut stage.buf, shard, kind, seq, payload);
            stage.last_seq = seq;
            seq
        };
        inner.nudge();
        Ok(Ticket { shard, seq })
    }

    /// Returns the last sequence number staged for `shard` (0 if none, or if the shard does not
    /// exist).
    pub fn staged_seq(&self, shard: u16) -> u64 {
        self.inner
            .stages
            .get(usize::from(shard))
            .map_or(0, |stage| stage.lock().last_seq)
    }

    /// Returns the highest LSN such that it and every lower LSN are durable (written, under
    /// [`Durability::None`]). It stays at its last value after a failure.
    pub fn durable_lsn(&self) -> u64 {
        self.inner.durable_lsn.load(Ordering::Acquire)
    }

    /// Returns `Ok(true)` if and only if the ticket's record is durable; `Err(Failed)` once the
    /// log has failed (even for tickets acknowledged before), `Err(UnknownShard)` for a bad
    /// shard.
    pub fn is_durable(&self, ticket: Ticket) -> Result<bool, WalError> {
        self.inner.is_durable(ticket)
    }

    /// Blocks the calling thread until the ticket's record is durable. Returns `Ok(())` if and
    /// only if it is; `Err(Failed)` if the log failed first, `Err(Closed)` if the flusher
    /// stopped without writing it.
    pub fn wait_durable(&self, ticket: Ticket) -> Result<(), WalError> {
        let inner = &*self.inner;
        if inner.is_durable(ticket)? {
            return Ok(());
        }
        let mut guard = inner.durable_mx.lock();
        loop {
            if inner.is_durable(ticket)? {
                return Ok(());
            }
            if inner.flusher_exited.load(Ordering::Acquire) {
                return Err(WalError::Closed);
            }
            inner.durable_cv.wait(&mut guard);
        }
    }

    /// Returns a future that resolves like [`Wal::wait_durable`] without blocking a thread; the
    /// flusher wakes it. Needs no particular async runtime.
    pub fn durable(self: &Arc<Self>, ticket: Ticket) -> DurableFuture {
        DurableFuture {
            wal: Arc::clone(self),
            ticket,
            registration: None,
        }
    }

    /// Writes and syncs everything staged before the call (also under [`Durability::None`]) and
    /// returns the durable LSN. Returns `Err(Failed)` if the log failed, `Err(Closed)` if the
    /// flusher has stopped.
    pub fn sync_now(&self) -> Result<u64, WalError> {
        let inner = &*self.inner;
        if let Some(err) = inner.failed_error() {
            return Err(err);
        }
        if inner.flusher_exited.load(Ordering::Acquire) {
            return Err(WalError::Closed);
        }
        let generation = inner.sync_requested.fetch_add(1, Ordering::SeqCst) + 1;
        inner.nudge();
        let mut guard = inner.durable_mx.lock();
        loop {
            if let Some(err) = inner.failed_error() {
                return Err(err);
            }
            if inner.sync_completed.load(Ordering::Acquire) >= generation {
                return Ok(self.durable_lsn());
            }
            if inner.flusher_exited.load(Ordering::Acquire) {
                return Err(WalError::Closed);
            }
            inner.durable_cv.wait(&mut guard);
        }
    }

    /// Atomically writes a snapshot covering every record with LSN <= `lsn_floor`, then removes
    /// older snapshots and every segment whose records all have LSN <= `lsn_floor` (never the
    /// active segment). Snapshots are always synced, whatever the configured durability.
    ///
    /// Returns [`WalError::SnapshotAhead`] if `lsn_floor` exceeds [`Wal::durable_lsn`],
    /// `Err(Failed)` if the log failed, and [`WalError::Io`] if writing failed — in which case
    /// the previous snapshot is still in place. A snapshot I/O error does not fail the log.
    pub fn write_snapshot(&self, lsn_floor: u64, payload: &[u8]) -> Result<(), WalError> {
        let inner = &*self.inner;
        if let Some(err) = inner.failed_error() {
            return Err(err);
        }
        let durable_lsn = self.durable_lsn();
        if lsn_floor > durable_lsn {
            return Err(WalError::SnapshotAhead {
                lsn_floor,
                durable_lsn,
            });
        }
        let _serialised = inner.snapshot_mx.lock();
        let storage = &*inner.storage;
        let name = write_snapshot_file(storage, inner.config.log_tag, lsn_floor, payload)?;
        let removed = prune(
            storage,
            lsn_floor,
            inner.active_first_lsn.load(Ordering::Acquire),
        )?;
        tracing::info!(snapshot = %name, removed = removed.len(), "wrote write-ahead log snapshot");
        Ok(())
    }

    /// Writes and syncs everything staged, then stops the flusher thread. Appends are refused
    /// from the start of the call (an append racing with the call may still be accepted; if
    /// the final cycle misses it, waiting for its ticket returns [`WalError::Closed`]). Returns `Err(Failed)` if the log failed; calling it again is
    /// a no-op returning `Ok(())`.
    pub fn shutdown(&self) -> Result<(), WalError> {
        let Some(handle) = self.flusher.lock().take() else {
            return Ok(());
        };
        self.inner.closed.store(true, Ordering::Release);
        let synced = self.sync_now().map(|_| ());
        self.stop_flusher(handle);
        match self.inner.failed_error() {
            Some(err) => Err(err),
            None => synced,
        }
    }

    fn stop_flusher(&self, handle: JoinHandle<()>) {
        self.inner.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.inner.flusher_mx.lock();
            self.inner.flusher_cv.notify_one();
        }
        if handle.join().is_err() {
            tracing::error!("write-ahead log flusher thread panicked");
        }
    }

    /// Returns a snapshot of the flusher's counters.
    pub fn stats(&self) -> WalStats {
        let s = &self.inner.stats;
        WalStats {
            batches: s.batches.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            records_written: s.records_written.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            segments_created: s.segments_created.load(Ordering::Relaxed),
            staged_bytes: self.inner.staged_bytes.load(Ordering::Relaxed) as u64,
            staged_bytes_max: self.inner.config.staged_bytes_max as u64,
        }
    }

    /// Returns the number of shards the log was opened with.
    pub fn shard_count(&self) -> usize {
        self.inner.stages.len()
    }

    /// Returns the fail-stop cause if and only if the log has failed.
    pub fn failure(&self) -> Option<String> {
        self.inner.failed.get().cloned()
    }
}

impl Drop for Wal {
    /// Stops the flusher (it writes what is staged first; under [`Durability::Fsync`] that is
    /// also synced). Never panics.
    fn drop(&mut self) {
        if let Some(handle) = self.flusher.get_mut().take() {
            self.inner.closed.store(true, Ordering::Release);
            self.stop_flusher(handle);
        }
    }
}

/// Resolves to `Ok(())` once a ticket is durable, or to the error [`Wal::wait_durable`] would
/// return. Created by [`Wal::durable`].
pub struct DurableFuture {
    wal: Arc<Wal>,
    ticket: Ticket,
    /// Id of this future's entry in the waker registry, if registered.
    registration: Option<u64>,
}

impl DurableFuture {
    fn unregister(&mut self) {
        if let Some(id) = self.registration.take() {
            self.wal.inner.wakers.lock().waiting.remove(&id);
        }
    }

    fn settled(&mut self) -> Option<Result<(), WalError>> {
        let inner = &*self.wal.inner;
        match inner.is_durable(self.ticket) {
            Err(err) => Some(Err(err)),
            Ok(true) => Some(Ok(())),
            Ok(false) if inner.flusher_exited.load(Ordering::Acquire) => {
                Some(Err(WalError::Closed))
            }
            Ok(false) => None,
        }
    }
}

impl Future for DurableFuture {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(result) = this.settled() {
            this.unregister();
            return Poll::Ready(result);
        }
        {
            let mut registry = this.wal.inner.wakers.lock();
            let id = match this.registration {
                Some(id) => id,
                None => {
                    registry.next_id += 1;
                    registry.next_id
                }
            };
            registry
                .waiting
                .insert(id, (this.ticket, cx.waker().clone()));
            this.registration = Some(id);
        }
        // Re-check after registering: the flusher may have published between the first check
        // and the registration, and would then not have seen our waker.
        if let Some(result) = this.settled() {
            this.unregister();
            return Poll::Ready(result);
        }
        Poll::Pending
    }
}

impl Drop for DurableFuture {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// An error inside the flusher: what it was doing, and the I/O error.
type FlushError = (String, std::io::Error);

/// State owned by the flusher thread.
struct Flusher {
    inner: Arc<Inner>,
    file: Option<Box<dyn StorageFile>>,
    segment_name: String,
    segment_bytes: u64,
    next_lsn: u64,
    /// Reused batch buffer.
    batch: Vec<u8>,
    /// Per-shard empty buffers swapped into the stages so allocations are reused.
    spare: Vec<Vec<u8>>,
    /// (shard, last seq) of the stages taken in the current cycle.
    taken: Vec<(u16, u64)>,
    /// Bytes written to the active segment since its last sync.
    unsynced: bool,
    /// A segment was created since the last directory sync.
    dir_unsynced: bool,
}

impl Flusher {
    fn run(mut self) {
        loop {
            {
                let mut guard = self.inner.flusher_mx.lock();
                while !self.inner.pending.load(Ordering::SeqCst)
                    && !self.inner.stop.load(Ordering::SeqCst)
                {
                    self.inner.flusher_cv.wait(&mut guard);
                }
            }
            let stopping = self.inner.stop.load(Ordering::SeqCst);
            if let Err((context, source)) = self.cycle() {
                self.inner.fail(format!("{context}: {source}"));
                break;
            }
            if stopping {
                break;
            }
        }
        self.inner.flusher_exited.store(true, Ordering::Release);
        self.inner.wake_waiters(true);
    }

    fn sync_file(&mut self) -> Result<(), FlushError> {
        let started = crate::clock::Stopwatch::start();
        if let Some(file) = self.file.as_mut() {
            file.sync_data()
                .map_err(|e| (format!("syncing segment {}", self.segment_name), e))?;
        }
        metrics::histogram!("miqat_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        self.inner.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.unsynced = false;
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), FlushError> {
        let Some(file) = self.file.as_mut() else {
            return Err((
                "writing to the write-ahead log".to_owned(),
                std::io::Error::other("no active segment"),
            ));
        };
        file.write_all(buf)
            .map_err(|e| (format!("writing segment {}", self.segment_name), e))?;
        self.segment_bytes += buf.len() as u64;
        self.unsynced = true;
        self.inner
            .stats
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Creates the segment starting at `next_lsn` and makes it the active one.
    fn start_segment(&mut self) -> Result<(), FlushError> {
        let name = segment_name(self.next_lsn);
        let file = self
            .inner
            .storage
            .create(&name)
            .map_err(|e| (format!("creating segment {name}"), e))?;
        self.file = Some(file);
        self.segment_name = name;
        self.segment_bytes = 0;
        let header = SegmentHeader {
            first_lsn: self.next_lsn,
            log_tag: self.inner.config.log_tag,
        }
        .encode();
        self.write(&header)?;
        self.dir_unsynced = true;
        if self.inner.config.durability == Durability::Fsync {
            self.sync_file()?;
            self.sync_dir()?;
        }
        self.inner
            .active_first_lsn
            .store(self.next_lsn, Ordering::Release);
        self.inner
            .stats
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), FlushError> {
        self.inner.storage.sync_dir().map_err(|e| {
            (
                format!("syncing the directory after creating {}", self.segment_name),
                e,
            )
        })?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Takes every staged frame, writes it as one batch, syncs, rotates the segment if it is
    /// full, publishes; then serves a pending `sync_now`.
    fn cycle(&mut self) -> Result<(), FlushError> {
        let inner = Arc::clone(&self.inner);
        inner.pending.store(false, Ordering::SeqCst);
        // Read after clearing `pending`: a `sync_now` that bumped the generation before this
        // load has all its predecessors' appends staged already, so this cycle covers them.
        let sync_generation = inner.sync_requested.load(Ordering::SeqCst);

        self.batch.clear();
        self.taken.clear();
        for (index, stage) in inner.stages.iter().enumerate() {
            let spare = &mut self.spare[index];
            let last_seq = {
                let mut stage = stage.lock();
                if stage.buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut stage.buf, spare);
                stage.last_seq
            };
            self.batch.extend_from_slice(spare);
            spare.clear();
            // Index < stage count <= 65,536, so it fits in a u16.
            self.taken.push((index as u16, last_seq));
        }

        if !self.batch.is_empty() {
            let first_lsn = self.next_lsn;
            let records = seal_frames(&mut self.batch, &mut self.next_lsn);
            let batch_bytes = self.batch.len();
            // Taken out for the call so `write` can borrow `self` mutably; put back right after
            // so its allocation is reused.
            let batch = std::mem::take(&mut self.batch);
            let written = self.write(&batch);
            self.batch = batch;
            written?;
            inner.staged_bytes.fetch_sub(batch_bytes, Ordering::AcqRel);
            if inner.config.durability == Durability::Fsync {
                self.sync_file()?;
            }
            let stats = &inner.stats;
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.records_written.fetch_add(records, Ordering::Relaxed);
            metrics::histogram!("miqat_wal_batch_records").record(records as f64);
            metrics::counter!("miqat_wal_records_total").increment(records);
            metrics::counter!("miqat_wal_bytes_total").increment(batch_bytes as u64);
            tracing::trace!(
                first_lsn,
                records,
                batch_bytes,
                "wrote write-ahead log batch"
            );
            // Rotate before publishing: once a waiter is released the flusher touches no file
            // for that batch any more, so a caller that waited and then stops (or, in tests,
            // simulates a crash) never races with a segment creation.
            if self.segment_bytes >= inner.config.segment_bytes_target {
                if self.unsynced {
                    // Under Durability::None the old segment is synced once here, so
                    // `sync_now` only ever has to sync the active segment.
                    self.sync_file()?;
                }
                self.start_segment()?;
            }
            self.publish();
        }

        // Served last so that when `sync_now` returns the cycle is complete and the set of
        // segment files is settled.
        if sync_generation > inner.sync_completed.load(Ordering::Acquire) {
            if self.unsynced {
                self.sync_file()?;
            }
            if self.dir_unsynced {
                self.sync_dir()?;
            }
            inner
                .sync_completed
                .store(sync_generation, Ordering::Release);
            inner.wake_waiters(false);
        }
        Ok(())
    }

    /// Makes the batch just written visible as durable and wakes its waiters.
    fn publish(&self) {
        let inner = &*self.inner;
        for &(shard, last_seq) in &self.taken {
            inner.durable_seqs[usize::from(shard)].store(last_seq, Ordering::Release);
        }
        inner
            .durable_lsn
            .store(self.next_lsn - 1, Ordering::Release);
        inner.wake_waiters(false);
    }
}
