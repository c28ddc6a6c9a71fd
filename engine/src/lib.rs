//! Miqat's engine: seat allocation, stages and deadlines, waiting lists, write-ahead log and
//! recovery.
//!
//! The [`catalog::Catalog`] (provinces, caravans, holders) is immutable and shared. The
//! [`engine::Engine`] keeps one shard per province, each behind its own lock: a decision locks
//! exactly the shard of the holder's province, writes its [`record`] to the [`wal`] while
//! still holding it, then applies it. Free-seat counters are atomics beside the lock, so
//! readers never wait. Deadlines live in per-shard heaps driven by an injectable
//! [`clock::Clock`]. Snapshots and recovery restore the whole state.

pub mod calendar;
pub mod catalog;
pub mod clock;
pub mod datagen;
pub mod engine;
pub mod error;
pub mod load;
pub mod model;
pub mod persist;
/// The log records' byte form. Public only so that the decoder can be fuzzed from outside
/// the crate (`engine/tests/fuzz.rs`); not a stable interface.
#[doc(hidden)]
pub mod record;
pub mod season;
pub mod sim;
pub mod waiting_room;
pub mod wal;

mod machine;
mod planted;
mod sync;
mod waitlist;

pub use engine::{
    Committed, Engine, EngineConfig, EngineStats, HolderProfile, ReservationFilter, ReserveOutcome,
    RoomOf, RoomStats, TransferRequest,
};
pub use error::EngineError;
pub use machine::{RoomStanding, TRANSFERS_CLOSE_BEFORE_OPENING_MS};
