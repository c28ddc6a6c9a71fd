//! The state machine: the one place where decisions are made and state changes.
//!
//! A province's state ([`ShardState`]) changes only through [`ShardState::apply`] of a
//! [`crate::record::Record`]: live decisions, log replay, schedule changes and deadlines alike;
//! a snapshot image is restored through the same seat rule ([`ShardState::restore`]). Records
//! are made only by [`decide`] (and [`decide_schedule`]), which reads the state, a command and
//! the engine time and returns a record or a refusal. Both are pure: no IO, no clock, no
//! randomness but the secret the caller draws and passes in. `crate::engine::Engine` is the
//! shell around them: locks, the log, the clock, the expiry thread and wake-ups.
//!
//! The free-seat, live-hold and waiting counters ([`ShardCounters`]) are the state's lock-free
//! mirror for readers; `apply` keeps them, deterministically, in step with the state.

mod decide;
mod holders;
mod room;
mod state;

pub(crate) use decide::{Command, Decision, Reply, decide, decide_schedule};
pub use holders::TRANSFERS_CLOSE_BEFORE_OPENING_MS;
pub(crate) use holders::{Profile, ProfileChange, Receiver, decide_profile_change};
pub use room::RoomStanding;
pub(crate) use room::{JoinDecision, RoomImage, Rooms};
pub(crate) use state::{
    IdempotencyEntry, KeyAnswer, KeyedOp, Shard, ShardCounters, ShardImage, ShardState,
};

use crate::catalog::Catalog;
use crate::season::Season;

/// What the state machine reads besides a province's state: the immutable catalog and the
/// season's rules.
pub(crate) struct Ctx<'a> {
    pub catalog: &'a Catalog,
    /// Global caravan index -> index among its province's caravans.
    pub caravan_local: &'a [u32],
    /// Stage deadlines and the offer deadline.
    pub season: &'a Season,
    /// Per caravan: its price group's rank among the catalog's sorted price groups.
    pub price_rank: &'a [u32],
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_retention_ms: i64,
}
