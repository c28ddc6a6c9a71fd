//! Miqat's replicated cluster: the engine's state machine replicated by Raft (openraft), the
//! only crate that uses openraft.
//!
//! The log carries **commands** ([`CommandBatch`]: many writes per entry, stamped with the
//! leader's time and a random seed per command); every replica runs them in log order with
//! [`miqat_engine::Engine::execute`], so all replicas make the same decisions, and the
//! idempotency table, part of the engine's state, is replicated with them. A write is
//! answered only once its entry is committed (on a majority's disk) and applied.
//!
//! - [`log_store`]: the Raft log and vote on disk (`docs/raft-log-format.md`).
//! - [`state_machine`]: the engine as the Raft state machine; snapshots are the engine's
//!   snapshot payload.
//! - [`network`]: peer RPCs over HTTP on the `--raft-listen` address.
//! - [`node`]: one cluster member: the Raft instance, group commit, status.
//! - [`membership`]: the operator's membership changes, the read barrier, the gauges.

// openraft's traits return its own `StorageError` (over 200 bytes): not ours to shrink.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod state_machine;

use miqat_engine::EngineError;
use miqat_engine::engine::{WriteAnswer, WriteCommand};

/// A node's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The cluster's types for openraft.
    pub TypeConfig:
        D = CommandBatch,
        R = BatchAnswers,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One Raft entry's writes: the leader's time for all of them, and each command with the
/// seed its new ids draw from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandBatch {
    /// The leader's clock when it made the batch (never earlier than a previous batch's once
    /// applied: see [`state_machine`]).
    pub now_ms: i64,
    /// The writes, in order, with their seeds.
    pub commands: Vec<(WriteCommand, u128)>,
}

/// The answers to one entry's commands, in order (empty for a blank or membership entry).
#[derive(Debug, Default)]
pub struct BatchAnswers(pub Vec<Result<WriteAnswer, EngineError>>);

/// Raft's storage error with this crate's node id.
pub type StorageError = openraft::StorageError<NodeId>;

/// A storage error reading or writing `subject`.
pub(crate) fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}
