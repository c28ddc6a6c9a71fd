//! Write-ahead log: the public surface (configuration, tickets, errors, statistics) and the
//! wiring of the storage seam, the frame layout, the group-commit writer, snapshots and recovery.
//!
//! Each engine shard appends its decision records while holding its own shard lock, into its
//! own staging buffer; one background flusher assigns global LSNs, writes a batch and issues
//! one `fdatasync` for the whole batch (group commit). See `docs/wal-format.md` for the byte
//! layout and the recovery rules.

mod frame;
mod recovery;
mod snapshot;
mod storage;
mod writer;

pub use frame::{
    FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES, SNAPSHOT_HEADER_BYTES,
};
pub use recovery::{MissingRecords, RecordRef, Recovered, TornTail, recover, recover_with};
pub use storage::{DirStorage, FaultMode, FaultyStorage, MemStorage, Storage, StorageFile};
pub use writer::{DurableFuture, Wal};

/// How the flusher makes a written batch durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// One `fdatasync` per batch; a ticket is durable once the batch holding it was synced.
    #[default]
    Fsync,
    /// No `fdatasync` per batch: a ticket counts as durable as soon as its batch was handed to
    /// the operating system. For benchmarks only; [`Wal::sync_now`] still syncs.
    None,
}

/// Tuning knobs of a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Whether batches are synced to stable storage before being acknowledged.
    pub durability: Durability,
    /// The flusher starts a new segment after a batch once the active segment holds at least
    /// this many bytes (a batch is never split across segments).
    pub segment_bytes_target: u64,
    /// Upper bound on bytes appended but not yet written by the flusher; past it
    /// [`Wal::append`] returns [`WalError::Backpressure`].
    pub staged_bytes_max: usize,
    /// Caller-chosen fingerprint stored in every segment and snapshot header; recovery refuses
    /// files carrying a different tag.
    pub log_tag: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            segment_bytes_target: 64 * 1024 * 1024,
            staged_bytes_max: 256 * 1024 * 1024,
            log_tag: 0,
        }
    }
}

/// Identifies one appended record: its shard and its per-shard sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The shard the record was appended to.
    pub shard: u16,
    /// The record's `shard_seq` (1 for a shard's first record ever).
    pub seq: u64,
}

/// Counters describing the flusher's work since [`Wal::open`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written (each holds at least one record).
    pub batches: u64,
    /// `fdatasync` calls on segment files (batches, `sync_now`, rotation, segment creation).
    pub fsyncs: u64,
    /// Records written to segments.
    pub records_written: u64,
    /// Bytes written to segments, headers included.
    pub bytes_written: u64,
    /// Segments created, including the one [`Wal::open`] starts.
    pub segments_created: u64,
    /// Bytes appended and not yet written by the flusher, now.
    pub staged_bytes: u64,
    /// The configured bound on staged bytes ([`WalConfig::staged_bytes_max`]).
    pub staged_bytes_max: u64,
}

/// Everything that can go wrong in the write-ahead log.
#[derive(thiserror::Error, Debug)]
pub enum WalError {
    /// A storage operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the log was doing, naming the file involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The log hit a write or sync error earlier and stopped for good (fail-stop); nothing is
    /// acknowledged any more. `cause` is the message of the original error.
    #[error("write-ahead log failed earlier and accepts nothing more: {cause}")]
    Failed {
        /// The original error's message.
        cause: String,
    },
    /// More than `staged_bytes_max` bytes are waiting for the flusher; retry later.
    #[error("write-ahead log is backlogged (staged bytes over the configured maximum)")]
    Backpressure,
    /// The payload exceeds [`PAYLOAD_BYTES_MAX`].
    #[error("record payload of {bytes} bytes exceeds the {PAYLOAD_BYTES_MAX}-byte maximum")]
    RecordTooLarge {
        /// The rejected payload's length.
        bytes: usize,
    },
    /// A segment holds bytes that are neither a valid record nor a torn tail.
    #[error("corrupt write-ahead log segment {segment} at byte offset {offset}: {reason}")]
    Corrupt {
        /// The segment file name.
        segment: String,
        /// Byte offset of the bad frame (or header) in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Records that were durable once are gone: the oldest segment starts after the records
    /// the snapshot (if any) covers.
    #[error(
        "records {first} to {last} of the write-ahead log are missing: the oldest segment {segment} \
         starts at lsn {}, but {} covers only the records before lsn {first}; they were durable \
         once. Restore the snapshot that covered them (a snapshot-*.snap file from a backup) into \
         the data directory, or start with --accept-missing-records to go on without them (the \
         loss is logged)",
        last + 1,
        snapshot.as_deref().map_or_else(|| "no snapshot".to_owned(), |s| format!("the latest snapshot {s}"))
    )]
    RecordsMissing {
        /// The first missing LSN.
        first: u64,
        /// The last missing LSN.
        last: u64,
        /// The oldest segment, which starts at `last + 1`.
        segment: String,
        /// The snapshot recovery found, if any.
        snapshot: Option<String>,
    },
    /// A snapshot file fails its checks.
    #[error("corrupt snapshot {file}: {reason}")]
    SnapshotCorrupt {
        /// The snapshot file name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file was written for a different log (catalog fingerprint).
    #[error(
        "{file} belongs to a different log: its log tag is {found:#018x}, expected {expected:#018x} (was the catalog changed?)"
    )]
    TagMismatch {
        /// The tag the caller expects.
        expected: u64,
        /// The tag stored in the file.
        found: u64,
        /// The file name.
        file: String,
    },
    /// The recovery callback refused a record.
    #[error("replaying lsn {lsn} from segment {segment} at byte offset {offset} failed: {message}")]
    Replay {
        /// The segment file name.
        segment: String,
        /// Byte offset of the record's frame.
        offset: u64,
        /// The record's LSN.
        lsn: u64,
        /// The callback's message.
        message: String,
    },
    /// The shard number is not below the shard count given to [`Wal::open`].
    #[error("shard {shard} does not exist (the log was opened with {shards} shards)")]
    UnknownShard {
        /// The requested shard.
        shard: u16,
        /// The number of shards.
        shards: usize,
    },
    /// The snapshot's LSN floor is above the durable LSN, so it could cover records that may
    /// still be lost.
    #[error("snapshot lsn floor {lsn_floor} is above the durable lsn {durable_lsn}")]
    SnapshotAhead {
        /// The requested floor.
        lsn_floor: u64,
        /// The durable LSN at the time of the call.
        durable_lsn: u64,
    },
    /// The data directory is locked by another opener.
    #[error("data directory {path} is already in use by another process (lock file is held)")]
    Locked {
        /// The directory path.
        path: String,
    },
    /// A caller-supplied argument is unusable.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// The log was shut down (or its flusher stopped) before the request could complete.
    #[error("write-ahead log is shut down")]
    Closed,
}

impl Clone for WalError {
    /// Clones the error; an `Io` source is rebuilt from its kind and message because
    /// `std::io::Error` itself is not `Clone`.
    fn clone(&self) -> Self {
        match self {
            Self::Io { context, source } => Self::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Self::Failed { cause } => Self::Failed {
                cause: cause.clone(),
            },
            Self::Backpressure => Self::Backpressure,
            Self::RecordTooLarge { bytes } => Self::RecordTooLarge { bytes: *bytes },
            Self::Corrupt {
                segment,
                offset,
                reason,
            } => Self::Corrupt {
                segment: segment.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Self::RecordsMissing {
                first,
                last,
                segment,
                snapshot,
            } => Self::RecordsMissing {
                first: *first,
                last: *last,
                segment: segment.clone(),
                snapshot: snapshot.clone(),
            },
            Self::SnapshotCorrupt { file, reason } => Self::SnapshotCorrupt {
                file: file.clone(),
                reason: reason.clone(),
            },
            Self::TagMismatch {
                expected,
                found,
                file,
            } => Self::TagMismatch {
                expected: *expected,
                found: *found,
                file: file.clone(),
            },
            Self::Replay {
                segment,
                offset,
                lsn,
                message,
            } => Self::Replay {
                segment: segment.clone(),
                offset: *offset,
                lsn: *lsn,
                message: message.clone(),
            },
            Self::UnknownShard { shard, shards } => Self::UnknownShard {
                shard: *shard,
                shards: *shards,
            },
            Self::SnapshotAhead {
                lsn_floor,
                durable_lsn,
            } => Self::SnapshotAhead {
                lsn_floor: *lsn_floor,
                durable_lsn: *durable_lsn,
            },
            Self::Locked { path } => Self::Locked { path: path.clone() },
            Self::InvalidArgument { reason } => Self::InvalidArgument {
                reason: reason.clone(),
            },
            Self::Closed => Self::Closed,
        }
    }
}

/// Builds a closure mapping an `io::Error` to [`WalError::Io`] with the given context.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> WalError {
    let context = context.into();
    move |source| WalError::Io { context, source }
}
