//! The engine: the shell around the state machine (`crate::machine`). It owns what touches the
//! world: the shard locks, the log, the clock, the secrets for new ids, the expiry thread and
//! its wake-ups. Every command is decided by `machine::decide` under exactly one shard's lock,
//! logged while that lock is held, then applied (`Engine::run`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::catalog::{Catalog, HolderIdx, ProvinceIdx};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::machine::{Command, Ctx, Decision, Reply, Shard, ShardState, decide};
use crate::model::{EndReason, ReservationView, Status};
use crate::record::Record;
use crate::season::{Schedule, Season};
use crate::sync::{AtomicI64, Mutex};
use crate::wal::{Durability, MissingRecords, Ticket, Wal};

mod derived;
mod expiry;
mod holders;
mod ops;
mod reads;
mod replicated;
mod room;

use derived::price_ranks;
pub(crate) use derived::receipt_day_ranges;
pub use holders::{HolderProfile, PRINCIPAL_BYTES_MAX, TRACKING_CODE_BYTES_MAX, TransferRequest};
pub use reads::{EngineStats, ReservationFilter};
pub use replicated::{WriteAnswer, WriteCommand};
pub use room::{RoomOf, RoomStats};

/// The longest `Idempotency-Key` accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// How many alternatives a `caravan_full` answer carries at most.
pub const ALTERNATIVES_MAX: usize = 5;
/// How many deadlines one pass expires per shard before letting other work take the lock.
const EXPIRY_BATCH_MAX: usize = 1024;

/// How the engine runs; [`EngineConfig::default`] is what production wants.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `Fsync` (default): a decision is acknowledged only once its record is on disk.
    /// `None`: for benchmarks only.
    pub durability: Durability,
    /// How long an `Idempotency-Key` is remembered (default 24 hours).
    pub idempotency_retention_ms: i64,
    /// Take a snapshot after this many logged records (checked by the expiry thread).
    pub snapshot_every_records: u64,
    /// Rotate log segments after about this many bytes.
    pub segment_bytes_target: u64,
    /// Seed for reservation ids; `None` (default) seeds from the operating system. Only tests
    /// set it.
    pub id_seed: Option<u64>,
    /// What recovery does when records that were durable once are provably gone: refuse to
    /// start (default), or, on an operator's explicit override, start without them.
    pub missing_records: MissingRecords,
    /// Threads that replay the log's shards side by side at start (0, the default: as many
    /// as the machine has cores, at most 4; 1: one thread, in log order).
    pub replay_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            durability: Durability::Fsync,
            idempotency_retention_ms: 24 * 3_600_000,
            snapshot_every_records: 1_000_000,
            segment_bytes_target: 64 << 20,
            id_seed: None,
            missing_records: MissingRecords::Refuse,
            replay_threads: 0,
        }
    }
}

/// A decision's answer and the ticket to wait on before telling anyone about it.
#[must_use = "a decision must not be acknowledged before its ticket is durable"]
#[derive(Debug)]
pub struct Committed<T> {
    /// The answer.
    pub value: T,
    /// The log position that must be durable first; `None` when running without a log.
    pub ticket: Option<Ticket>,
}

/// The answer to a reservation request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveOutcome {
    /// The reservation, as it stands now.
    pub reservation: ReservationView,
    /// True if and only if this was a retry with a known `Idempotency-Key` and nothing new was
    /// decided.
    pub replayed: bool,
}

/// What [`Engine::run`] did: the reply to read from the state, the ticket to wait on, and
/// the new deadline to wake the expiry thread for once the shard's lock is dropped.
struct Ran {
    reply: Reply,
    ticket: Option<Ticket>,
    wake_at: Option<i64>,
}

/// The engine. Share it as `Arc<Engine>`; every method takes `&self`.
pub struct Engine {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) season: Season,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: EngineConfig,
    pub(crate) shards: Box<[CachePadded<Shard>]>,
    /// The schedule as the global shard sees it; its WAL shard index is `shards.len()`.
    pub(crate) global: Mutex<Arc<Schedule>>,
    pub(crate) caravan_local: Vec<u32>,
    /// Per caravan: its price group's rank (see `price_ranks`).
    price_rank: Vec<u32>,
    pub(crate) wal: Option<Arc<Wal>>,
    pub(crate) rng: Box<[CachePadded<parking_lot::Mutex<ChaCha12Rng>>]>,
    last_now_ms: AtomicI64,
    expirations: AtomicU64,
    /// The sum of the shards' record counters when the last snapshot was taken.
    pub(crate) records_at_snapshot: AtomicU64,
    /// Records the log held before this process opened it (the last LSN recovery found; 0
    /// for a new log or without one).
    pub(crate) log_records_at_open: u64,
    pub(crate) stopping: AtomicBool,
    /// Whether the schedule was ever replaced through the log (it then wins over the file).
    pub(crate) schedule_replaced: AtomicBool,
    /// Set while restoring a snapshot whose schedule had been replaced.
    pub(crate) schedule_in_snapshot: bool,
    pub(crate) snapshot_lock: parking_lot::Mutex<()>,
    expiry_wake: (parking_lot::Mutex<bool>, parking_lot::Condvar),
    /// When the expiry thread plans to wake next; a decision wakes it earlier only if its
    /// deadline comes before that (so the rush does not touch the thread's lock).
    expiry_planned_ms: AtomicI64,
    /// Who holds which receipt after transfers (see `holders.rs`); taken before a shard lock.
    pub(crate) transfers: parking_lot::RwLock<holders::TransferIndex>,
    /// Holders sorted by receipt number, built on the first transfer.
    pub(crate) receipt_index: std::sync::OnceLock<Vec<HolderIdx>>,
    /// Set, for good, once `transfers` holds a transfer.
    pub(crate) any_transfer: AtomicBool,
    /// The waiting rooms (state of the global shard beside the schedule); taken after
    /// `global` when both are.
    pub(crate) rooms: parking_lot::Mutex<crate::machine::Rooms>,
}

/// How `record` ends a waiting-list offer, if it does: `accepted`, `lapsed` or `declined`.
/// Read before the record is applied (an accepted offer is no longer one after).
fn offer_outcome(st: &ShardState, record: &Record) -> Option<&'static str> {
    match record {
        Record::End {
            reason: EndReason::OfferExpired,
            ..
        } => Some("lapsed"),
        Record::End {
            reason: EndReason::OfferDeclined,
            ..
        } => Some("declined"),
        Record::Advance { id, .. } => st
            .reservations
            .get(id.slot.index())
            .is_some_and(|r| r.status == Status::Offered)
            .then_some("accepted"),
        _ => None,
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("provinces", &self.shards.len())
            .field("logged", &self.wal.is_some())
            .finish()
    }
}

impl Engine {
    /// Builds an engine with empty state over `catalog` and `season`, without a log (decisions
    /// live in memory only). Returns an error if the season's waves name unknown provinces.
    pub fn in_memory(
        catalog: Arc<Catalog>,
        season: Season,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, EngineError> {
        Ok(Arc::new(Engine::build(
            catalog, season, clock, config, None,
        )?))
    }

    pub(crate) fn build(
        catalog: Arc<Catalog>,
        season: Season,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        wal: Option<Arc<Wal>>,
    ) -> Result<Engine, EngineError> {
        season
            .schedule
            .validate(&catalog)
            .map_err(EngineError::Config)?;
        let schedule = Arc::new(season.schedule.clone());
        let province_count = catalog.provinces().len();
        if province_count >= usize::from(u16::MAX) {
            return Err(EngineError::Config("too many provinces".into()));
        }
        let ranges = receipt_day_ranges(&catalog);
        let shards: Box<[CachePadded<Shard>]> = (0..province_count)
            .map(|p| {
                let (first, last) = ranges[p];
                CachePadded::new(Shard::new(
                    &catalog,
                    ProvinceIdx(p as u16),
                    Arc::clone(&schedule),
                    first,
                    last,
                ))
            })
            .collect();
        let mut caravan_local = vec![0u32; catalog.caravans().len()];
        for p in 0..province_count {
            for (slot, &c) in catalog
                .caravans_of_province(ProvinceIdx(p as u16))
                .iter()
                .enumerate()
            {
                caravan_local[c.index()] = slot as u32;
            }
        }
        let mut seed_rng = match config.id_seed {
            Some(seed) => ChaCha12Rng::seed_from_u64(seed),
            None => ChaCha12Rng::from_os_rng(),
        };
        let rng = (0..province_count.max(1))
            .map(|_| {
                CachePadded::new(parking_lot::Mutex::new(ChaCha12Rng::from_rng(
                    &mut seed_rng,
                )))
            })
            .collect();
        let now_ms = clock.now_ms();
        let price_rank = price_ranks(&catalog);
        Ok(Engine {
            catalog,
            season,
            clock,
            config,
            shards,
            global: Mutex::new(schedule),
            caravan_local,
            price_rank,
            wal,
            rng,
            last_now_ms: AtomicI64::new(now_ms),
            expirations: AtomicU64::new(0),
            records_at_snapshot: AtomicU64::new(0),
            log_records_at_open: 0,
            stopping: AtomicBool::new(false),
            schedule_replaced: AtomicBool::new(false),
            schedule_in_snapshot: false,
            snapshot_lock: parking_lot::Mutex::new(()),
            expiry_wake: (parking_lot::Mutex::new(false), parking_lot::Condvar::new()),
            expiry_planned_ms: AtomicI64::new(i64::MIN),
            transfers: parking_lot::RwLock::new(holders::TransferIndex::default()),
            rooms: parking_lot::Mutex::new(crate::machine::Rooms::default()),
            receipt_index: std::sync::OnceLock::new(),
            any_transfer: AtomicBool::new(false),
        })
    }

    /// The catalog the engine serves.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The season's stage and offer rules (the schedule may since have been replaced: see
    /// [`Engine::schedule`]).
    pub fn season(&self) -> &Season {
        &self.season
    }

    /// The engine's time: the clock's, but never earlier than a time it already used, so a
    /// clock stepping back cannot reorder decisions or bring a deadline back.
    pub fn now_ms(&self) -> i64 {
        let now = self.clock.now_ms();
        // A read first: the shared line is written only when time moved, not per decision.
        let before = self.last_now_ms.load(Ordering::Acquire);
        if now <= before {
            return before;
        }
        let before = self.last_now_ms.fetch_max(now, Ordering::AcqRel);
        now.max(before)
    }

    /// Moves engine time forward to at least `at_ms` (recovery: the newest recorded instant).
    pub(crate) fn raise_time_to(&self, at_ms: i64) {
        self.last_now_ms.fetch_max(at_ms, Ordering::AcqRel);
    }

    /// The newest instant any reservation of the current state records.
    pub(crate) fn newest_in_state_ms(&self) -> i64 {
        self.shards
            .iter()
            .filter_map(|s| {
                s.state
                    .lock()
                    .reservations
                    .iter()
                    .map(|r| r.updated_ms)
                    .max()
            })
            .max()
            .unwrap_or(i64::MIN)
    }

    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            catalog: &self.catalog,
            caravan_local: &self.caravan_local,
            season: &self.season,
            price_rank: &self.price_rank,
            idempotency_retention_ms: self.config.idempotency_retention_ms,
        }
    }

    /// A fresh 128-bit secret for the id of a reservation shard `p` may create: the only
    /// randomness a decision uses, drawn here so that `decide` stays pure.
    fn new_secret(&self, p: usize) -> u128 {
        self.rng[p % self.rng.len()].lock().random()
    }

    /// Decides `command` on shard `p` (locked as `st`) and carries the decision out: logs and
    /// applies its record, and reads the answer from the state. The caller wakes the expiry
    /// thread for [`Ran::wake_at`] once it has dropped the shard's lock.
    #[inline]
    fn run(
        &self,
        p: usize,
        st: &mut ShardState,
        command: Command<'_>,
        now_ms: i64,
    ) -> Result<Ran, EngineError> {
        let secret = self.new_secret(p);
        // Matched without `?`: the decision is used where it was built, not moved first.
        match decide(st, &self.ctx(), command, now_ms, secret) {
            Err(refusal) => Err(refusal),
            // The record is borrowed where `decide` built it: moving it out costs a copy.
            Ok(Decision::Commit { ref record, reply }) => {
                let ticket = self.commit_decided(p, st, record, now_ms)?;
                Ok(Ran {
                    reply,
                    ticket,
                    wake_at: record.new_deadline_ms(),
                })
            }
            Ok(Decision::CommitThenRefuse {
                ref record,
                refusal,
            }) => {
                self.commit_decided(p, st, record, now_ms)?;
                // Rare (a deadline found passed by a request): wake under the lock rather
                // than carry the deadline through the refusal.
                self.wake_expiry_if_earlier(record.new_deadline_ms());
                Err(refusal)
            }
            // What is staged may be the decision this request retries: it must be durable
            // before the answer leaves.
            Ok(Decision::Answer(reply)) => Ok(Ran {
                reply,
                ticket: self.ticket_for_staged(p),
                wake_at: None,
            }),
        }
    }

    /// Commits a decided record, counting expiries.
    #[inline(always)]
    fn commit_decided(
        &self,
        p: usize,
        st: &mut ShardState,
        record: &Record,
        now_ms: i64,
    ) -> Result<Option<Ticket>, EngineError> {
        let expired_deadline = match record {
            Record::End {
                id,
                reason: EndReason::StageExpired | EndReason::OfferExpired,
                ..
            } => st
                .reservations
                .get(id.slot.index())
                .and_then(|r| r.deadline_ms),
            _ => None,
        };
        let offer_outcome = offer_outcome(st, record);
        let ticket = self.commit(p, st, record)?;
        if let Some(deadline_ms) = expired_deadline {
            self.note_expiry(now_ms - deadline_ms);
        }
        if let Record::End { offer: Some(_), .. } = record {
            metrics::counter!("miqat_waitlist_offers_made_total").increment(1);
        }
        if let Some(outcome) = offer_outcome {
            metrics::counter!("miqat_waitlist_offers_ended_total", "outcome" => outcome)
                .increment(1);
        }
        Ok(ticket)
    }

    /// The reservation a reply names, as the state shows it, with whether nothing new was
    /// decided, shaped by `answer`.
    #[inline]
    fn reservation_reply<T>(
        &self,
        st: &ShardState,
        reply: Reply,
        answer: impl FnOnce(ReservationView, bool) -> T,
    ) -> Result<T, EngineError> {
        match reply {
            Reply::Reservation { slot, again } => match st.view(&self.catalog, slot) {
                Some(view) => Ok(answer(view, again)),
                None => Err(EngineError::ReservationNotFound),
            },
            Reply::Replayed(view) => Ok(answer(view, true)),
            _ => Err(EngineError::IdempotencyKeyReused),
        }
    }

    /// Runs a command that answers with a reservation, on shard `p`; `answer` shapes the
    /// reservation and whether nothing new was decided into the caller's type (built in
    /// place: the answer is not copied from one shape into another).
    #[inline]
    fn run_on_reservation<T>(
        &self,
        p: usize,
        command: Command<'_>,
        answer: impl FnOnce(ReservationView, bool) -> T,
    ) -> Result<Committed<T>, EngineError> {
        let Some(shard) = self.shards.get(p) else {
            return Err(EngineError::ReservationNotFound);
        };
        let now_ms = self.now_ms();
        let mut st = shard.state.lock();
        let ran = self.run(p, &mut st, command, now_ms)?;
        let value = self.reservation_reply(&st, ran.reply, answer)?;
        drop(st);
        // After the lock: the rush's decisions do not queue behind the expiry thread's lock.
        self.wake_expiry_if_earlier(ran.wake_at);
        Ok(Committed {
            value,
            ticket: ran.ticket,
        })
    }

    /// The shard of `holder`'s province.
    fn holder_shard(&self, holder: HolderIdx) -> Result<usize, EngineError> {
        let Some(h) = self.catalog.holder_facts(holder) else {
            return Err(EngineError::InvalidCredentials);
        };
        Ok(usize::from(h.province))
    }

    /// Returns the holder if and only if `national_id` is listed and `tracking_code` is theirs.
    /// An unknown ID and a wrong code give the same error, compared in constant time.
    pub fn authenticate(
        &self,
        national_id: u64,
        tracking_code: &str,
    ) -> Result<HolderIdx, EngineError> {
        // A load of a line nobody writes during the rush; the index's lock only once some
        // receipt was transferred.
        if self.any_transfer.load(Ordering::Acquire) {
            let transfers = self.transfers.read();
            return self.authenticate_after_transfers(&transfers, national_id, tracking_code);
        }
        let found = self.catalog.holder_by_national_id(national_id);
        let expected = found
            .and_then(|idx| self.catalog.holder(idx))
            .map_or("", |h| h.tracking_code);
        let given = crate::calendar::normalize_digits(tracking_code.trim());
        let equal = constant_time_eq(expected.as_bytes(), given.as_bytes());
        match found {
            Some(idx) if equal && !expected.is_empty() => Ok(idx),
            _ => Err(EngineError::InvalidCredentials),
        }
    }

    /// Logs `record` for `shard` and applies it to `state`. The caller holds the shard's lock,
    /// so the log order is the decision order. On a log error nothing is applied.
    pub(crate) fn commit(
        &self,
        shard: usize,
        state: &mut ShardState,
        record: &Record,
    ) -> Result<Option<Ticket>, EngineError> {
        let ticket = match &self.wal {
            Some(wal) => {
                state.scratch.clear();
                record.encode(&mut state.scratch);
                Some(wal.append(shard as u16, record.kind(), &state.scratch)?)
            }
            None => None,
        };
        if let Err(e) = state.apply(&self.ctx(), &self.shards[shard].counters, record) {
            // Every check apply makes was made by the decision: this is a bug, and going on
            // would let memory and log disagree.
            panic!("decided record {record:?} did not apply: {e}");
        }
        self.shards[shard]
            .counters
            .records
            .fetch_add(1, Ordering::Relaxed);
        Ok(ticket)
    }

    /// A ticket covering everything staged so far for `shard`: waiting on it makes an earlier
    /// decision that a retry refers to durable before the retry is answered.
    fn ticket_for_staged(&self, shard: usize) -> Option<Ticket> {
        self.wal.as_ref().map(|wal| Ticket {
            shard: shard as u16,
            seq: wal.staged_seq(shard as u16),
        })
    }

    /// A ticket covering every decision staged so far in `holder`'s province: an answer that
    /// shows the holder's state (a read, or `already_reserved`) waits on it, so it never shows
    /// a decision that a crash could still take back.
    pub fn holder_barrier(&self, holder: HolderIdx) -> Option<Ticket> {
        let h = self.catalog.holder_facts(holder)?;
        self.ticket_for_staged(usize::from(h.province))
    }

    /// Blocks until the decision's record is durable (at once without a log or with
    /// `Durability::None`). Returns an error if and only if the log failed: then the decision
    /// must not be acknowledged.
    pub fn wait<T>(&self, committed: &Committed<T>) -> Result<(), EngineError> {
        if crate::planted::active(crate::sim::Defect::AckBeforeSync) {
            return Ok(());
        }
        match (&self.wal, committed.ticket) {
            (Some(wal), Some(ticket)) => Ok(wal.wait_durable(ticket)?),
            _ => Ok(()),
        }
    }

    /// A future that resolves once `ticket` is durable, for async callers (no runtime thread
    /// is blocked on the disk).
    pub async fn durable(&self, ticket: Option<Ticket>) -> Result<(), EngineError> {
        match (&self.wal, ticket) {
            (Some(wal), Some(ticket)) => Ok(wal.durable(ticket).await?),
            _ => Ok(()),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}
