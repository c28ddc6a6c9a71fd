//! The engine facade: every decision (reserve, cancel, accept, operator events, waiting list,
//! schedule, expiry), each taken under exactly one shard's lock and logged before it is applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam::utils::CachePadded;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::catalog::{CaravanIdx, Catalog, HolderIdx, ProvinceIdx};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::machine::{Command, Ctx, Decision, Reply, Shard, ShardState, decide, decide_schedule};
use crate::model::{
    EndReason, OperatorEvent, ReservationId, ReservationView, Status, WaitlistPlace, WaitlistStatus,
};
use crate::record::Record;
use crate::season::{Schedule, Season, Wave, WaveOrder};
use crate::sync::{AtomicI64, Mutex};
use crate::wal::{Durability, MissingRecords, Ticket, Wal};

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

/// Counts for operators and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Seats over all caravans.
    pub seats_total: u64,
    /// Seats not held, offered or confirmed.
    pub seats_free: u64,
    /// Reservations by status, in [`Status`] order: offered, held, confirmed, cancelled,
    /// expired, rejected.
    pub by_status: [u64; 6],
    /// Holders on waiting lists.
    pub waiting: u64,
    /// Reservations expired by a deadline (stage or offer) since start.
    pub expirations: u64,
}

/// Filter for [`Engine::reservations`].
#[derive(Clone, Debug, Default)]
pub struct ReservationFilter {
    /// Only this province.
    pub province: Option<ProvinceIdx>,
    /// Only this caravan.
    pub caravan: Option<CaravanIdx>,
    /// Only this status.
    pub status: Option<Status>,
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
                    p as ProvinceIdx,
                    Arc::clone(&schedule),
                    first,
                    last,
                ))
            })
            .collect();
        let mut caravan_local = vec![0u32; catalog.caravans().len()];
        for p in 0..province_count {
            for (slot, &c) in catalog
                .caravans_of_province(p as ProvinceIdx)
                .iter()
                .enumerate()
            {
                caravan_local[c as usize] = slot as u32;
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
    /// applies its record, and reads the answer from the state. Returns the reply, whether it
    /// was a retry's original answer, and the ticket to wait on.
    fn run(
        &self,
        p: usize,
        st: &mut ShardState,
        command: Command<'_>,
        now_ms: i64,
    ) -> Result<(Reply, Option<Ticket>), EngineError> {
        let secret = self.new_secret(p);
        match decide(st, &self.ctx(), command, now_ms, secret)? {
            Decision::Commit { record, reply } => {
                let ticket = self.commit_decided(p, st, &record, now_ms)?;
                Ok((reply, ticket))
            }
            Decision::CommitThenRefuse { record, refusal } => {
                self.commit_decided(p, st, &record, now_ms)?;
                Err(refusal)
            }
            // What is staged may be the decision this request retries: it must be durable
            // before the answer leaves.
            Decision::Answer(reply) => Ok((reply, self.ticket_for_staged(p))),
        }
    }

    /// Commits a decided record, counting expiries and waking the expiry thread for a new
    /// earlier deadline.
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
                .get(id.slot as usize)
                .and_then(|r| r.deadline_ms),
            _ => None,
        };
        let ticket = self.commit(p, st, record)?;
        if let Some(deadline_ms) = expired_deadline {
            self.note_expiry(now_ms - deadline_ms);
        }
        self.wake_expiry_if_earlier(record.new_deadline_ms());
        Ok(ticket)
    }

    fn note_expiry(&self, lateness_ms: i64) {
        self.expirations.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("miqat_expirations_total").increment(1);
        metrics::histogram!("miqat_expiry_lateness_seconds")
            .record(lateness_ms.max(0) as f64 / 1000.0);
    }

    /// The reservation a reply names, as the state shows it, with whether nothing new was
    /// decided.
    fn reservation_reply(
        &self,
        st: &ShardState,
        reply: Reply,
    ) -> Result<(ReservationView, bool), EngineError> {
        match reply {
            Reply::Reservation { slot, again } => Ok((
                st.view(&self.catalog, slot)
                    .ok_or(EngineError::ReservationNotFound)?,
                again,
            )),
            Reply::Replayed(view) => Ok((view, true)),
            _ => Err(EngineError::IdempotencyKeyReused),
        }
    }

    /// Runs a command that answers with a reservation, on shard `p`.
    fn run_on_reservation(
        &self,
        p: usize,
        command: Command<'_>,
    ) -> Result<Committed<(ReservationView, bool)>, EngineError> {
        let shard = self.shards.get(p).ok_or(EngineError::ReservationNotFound)?;
        let now_ms = self.now_ms();
        let mut st = shard.state.lock();
        let (reply, ticket) = self.run(p, &mut st, command, now_ms)?;
        let value = self.reservation_reply(&st, reply)?;
        Ok(Committed { value, ticket })
    }

    /// The shard of `holder`'s province.
    fn holder_shard(&self, holder: HolderIdx) -> Result<usize, EngineError> {
        let h = self
            .catalog
            .holder_facts(holder)
            .ok_or(EngineError::InvalidCredentials)?;
        Ok(usize::from(h.province))
    }

    /// Reserves a seat in `caravan` for `holder`, or says precisely why not. With an
    /// idempotency key seen before for this holder and caravan, returns the original
    /// reservation (`replayed`); with the same key and another caravan, refuses.
    pub fn reserve(
        &self,
        holder: HolderIdx,
        caravan: CaravanIdx,
        idempotency_key: Option<&[u8]>,
    ) -> Result<Committed<ReserveOutcome>, EngineError> {
        let p = self.holder_shard(holder)?;
        self.catalog
            .caravans()
            .get(caravan as usize)
            .ok_or(EngineError::CaravanNotFound)?;
        let key = checked_key(idempotency_key)?;
        let done = self.run_on_reservation(
            p,
            Command::Reserve {
                holder,
                caravan,
                key,
            },
        )?;
        let (reservation, replayed) = done.value;
        Ok(Committed {
            value: ReserveOutcome {
                reservation,
                replayed,
            },
            ticket: done.ticket,
        })
    }

    /// Cancels the holder's reservation `id` (declines it, if it is an offer); its seat goes
    /// to the waiting list or back to the pool. Cancelling a reservation the holder already
    /// cancelled (or an offer they declined) decides nothing and answers it again, so a
    /// retried cancel gets the same answer; one that ended otherwise (expired, rejected, a
    /// death) is an invalid transition. See [`Engine::cancel_outcome`] to tell them apart.
    pub fn cancel(
        &self,
        holder: HolderIdx,
        id: ReservationId,
    ) -> Result<Committed<ReservationView>, EngineError> {
        first_of(self.cancel_outcome(holder, id, None)?)
    }

    /// [`Engine::cancel`] under an optional `Idempotency-Key`, with `true` beside the view if
    /// and only if nothing new was decided: a retry with a key seen before for this cancel
    /// (the original answer), or a reservation the holder had already cancelled. A key seen
    /// before for another request is refused ([`EngineError::IdempotencyKeyReused`]).
    pub fn cancel_outcome(
        &self,
        holder: HolderIdx,
        id: ReservationId,
        idempotency_key: Option<&[u8]>,
    ) -> Result<Committed<(ReservationView, bool)>, EngineError> {
        let key = checked_key(idempotency_key)?;
        let p = self.holder_shard(holder)?;
        self.run_on_reservation(p, Command::Cancel { holder, id, key })
    }

    /// Accepts the waiting-list offer `id` of `holder`: it becomes a hold at the first stage.
    pub fn accept_offer(
        &self,
        holder: HolderIdx,
        id: ReservationId,
    ) -> Result<Committed<ReservationView>, EngineError> {
        first_of(self.accept_offer_keyed(holder, id, None)?)
    }

    /// [`Engine::accept_offer`] under an optional `Idempotency-Key`: a retry with a key seen
    /// before for this accept answers the original (`true` beside it); a key seen for another
    /// request is refused.
    pub fn accept_offer_keyed(
        &self,
        holder: HolderIdx,
        id: ReservationId,
        idempotency_key: Option<&[u8]>,
    ) -> Result<Committed<(ReservationView, bool)>, EngineError> {
        let key = checked_key(idempotency_key)?;
        let p = self.holder_shard(holder)?;
        self.run_on_reservation(p, Command::Accept { holder, id, key })
    }

    /// Applies an operator's event to reservation `id`: completes the pending stage (the last
    /// one confirms), or ends the registration for a medical rejection or a death.
    pub fn operator_event(
        &self,
        id: ReservationId,
        event: OperatorEvent,
    ) -> Result<Committed<ReservationView>, EngineError> {
        first_of(self.operator_event_keyed(id, event, None)?)
    }

    /// [`Engine::operator_event`] under an optional `Idempotency-Key` (remembered with the
    /// reservation's holder): a retry with a key seen before for this event on this
    /// reservation answers the original (`true` beside it); a key seen for another request is
    /// refused.
    pub fn operator_event_keyed(
        &self,
        id: ReservationId,
        event: OperatorEvent,
        idempotency_key: Option<&[u8]>,
    ) -> Result<Committed<(ReservationView, bool)>, EngineError> {
        let key = checked_key(idempotency_key)?;
        self.run_on_reservation(usize::from(id.shard), Command::Event { id, event, key })
    }

    /// Puts `holder` on their province's waiting list (or reports their place if already
    /// there). Refused while the holder's city still has free seats, while they hold a seat,
    /// and whenever they could not reserve by the schedule.
    pub fn join_waitlist(
        &self,
        holder: HolderIdx,
    ) -> Result<Committed<WaitlistPlace>, EngineError> {
        first_of(self.join_waitlist_keyed(holder, None)?)
    }

    /// [`Engine::join_waitlist`] under an optional `Idempotency-Key`: a retry with a key seen
    /// before for a join answers the place the holder got then (`true` beside it), whatever
    /// happened since; a key seen for another request is refused.
    pub fn join_waitlist_keyed(
        &self,
        holder: HolderIdx,
        idempotency_key: Option<&[u8]>,
    ) -> Result<Committed<(WaitlistPlace, bool)>, EngineError> {
        let key = checked_key(idempotency_key)?;
        let p = self.holder_shard(holder)?;
        let now_ms = self.now_ms();
        let mut st = self.shards[p].state.lock();
        let (reply, ticket) = self.run(p, &mut st, Command::Join { holder, key }, now_ms)?;
        let (position, replayed) = match reply {
            Reply::PlaceReplayed(position) => (position, true),
            _ => (st.waitlist.position(holder).unwrap_or(0), false),
        };
        let place = WaitlistPlace {
            province: st.province,
            position,
        };
        Ok(Committed {
            value: (place, replayed),
            ticket,
        })
    }

    /// Returns the holder if and only if `national_id` is listed and `tracking_code` is theirs.
    /// An unknown ID and a wrong code give the same error, compared in constant time.
    pub fn authenticate(
        &self,
        national_id: u64,
        tracking_code: &str,
    ) -> Result<HolderIdx, EngineError> {
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

    /// Free seats of `caravan` (0 for an unknown one), without taking any lock.
    pub fn free_seats(&self, caravan: CaravanIdx) -> u32 {
        let Some(c) = self.catalog.caravans().get(caravan as usize) else {
            return 0;
        };
        let slot = self.caravan_local[caravan as usize] as usize;
        self.shards[usize::from(c.province)].counters.free[slot].load(Ordering::Acquire)
    }

    /// Free seats of a whole province, without taking any lock.
    pub fn province_free_seats(&self, province: ProvinceIdx) -> u32 {
        self.province_counter(province, |c| &c.free_total)
    }

    /// Live holds and offers (not yet confirmed) of a province, without taking any lock.
    pub fn province_holds_live(&self, province: ProvinceIdx) -> u32 {
        self.province_counter(province, |c| &c.holds_live)
    }

    /// Holders waiting in a province, without taking any lock.
    pub fn province_waiting(&self, province: ProvinceIdx) -> u32 {
        self.province_counter(province, |c| &c.waiting)
    }

    /// One of a province's lock-free counters (0 for an unknown province).
    fn province_counter(
        &self,
        province: ProvinceIdx,
        counter: impl Fn(&crate::machine::ShardCounters) -> &crate::sync::AtomicU32,
    ) -> u32 {
        self.shards
            .get(usize::from(province))
            .map_or(0, |s| counter(&s.counters).load(Ordering::Acquire))
    }

    /// Seats of a province over all its caravans.
    pub fn province_seats_total(&self, province: ProvinceIdx) -> u64 {
        self.catalog
            .caravans_of_province(province)
            .iter()
            .map(|&c| u64::from(self.catalog.caravans()[c as usize].capacity))
            .sum()
    }

    /// The holder's waiting-list situation: their place while waiting, or their open offer;
    /// `None` if neither.
    pub fn waitlist_status(&self, holder: HolderIdx) -> Option<WaitlistStatus> {
        let h = self.catalog.holder_facts(holder)?;
        let st = self.shards[usize::from(h.province)].state.lock();
        if let Some(position) = st.waitlist.position(holder) {
            return Some(WaitlistStatus {
                province: h.province,
                position: Some(position),
                offer: None,
            });
        }
        let idx = st.live_of(h.local)?;
        let view = st.view(&self.catalog, idx)?;
        (view.status == Status::Offered).then_some(WaitlistStatus {
            province: h.province,
            position: None,
            offer: Some(view),
        })
    }

    /// Replaces the registration schedule (a postponement, a staggered opening). Logged like
    /// any decision; survives restarts (the logged schedule wins over the season file).
    /// Refuses, with [`EngineError::ScheduleOutOfOrder`], a schedule that opens a wider cutoff
    /// before a narrower one in some province; see [`Engine::replace_schedule_with`].
    pub fn replace_schedule(&self, waves: Vec<Wave>) -> Result<Committed<()>, EngineError> {
        self.replace_schedule_with(waves, WaveOrder::Strict)
    }

    /// [`Engine::replace_schedule`], with the wave order check as `order` says. The record is
    /// logged on the global shard, then applied to every province's state.
    pub fn replace_schedule_with(
        &self,
        waves: Vec<Wave>,
        order: WaveOrder,
    ) -> Result<Committed<()>, EngineError> {
        let now_ms = self.now_ms();
        let record = decide_schedule(&self.ctx(), waves, order, now_ms)?;
        let mut global = self.global.lock();
        let ticket = match &self.wal {
            Some(wal) => {
                let mut payload = Vec::new();
                record.encode(&mut payload);
                Some(wal.append(self.shards.len() as u16, record.kind(), &payload)?)
            }
            None => None,
        };
        self.apply_schedule(&mut global, &record);
        Ok(Committed { value: (), ticket })
    }

    /// Applies a schedule record to the global view and to every province's state.
    pub(crate) fn apply_schedule(&self, global: &mut Arc<Schedule>, record: &Record) {
        let Record::Schedule { waves, .. } = record else {
            return;
        };
        *global = Arc::new(Schedule {
            waves: waves.clone(),
        });
        self.schedule_replaced.store(true, Ordering::Release);
        let ctx = self.ctx();
        for shard in self.shards.iter() {
            if let Err(e) = shard.state.lock().apply(&ctx, &shard.counters, record) {
                panic!("a schedule record did not apply: {e}");
            }
        }
    }

    /// The schedule in force.
    pub fn schedule(&self) -> Arc<Schedule> {
        Arc::clone(&self.global.lock())
    }

    /// The reservation `id`, for operators.
    pub fn reservation(&self, id: ReservationId) -> Option<ReservationView> {
        let st = self.shards.get(usize::from(id.shard))?.state.lock();
        let idx = st.find(id)?;
        st.view(&self.catalog, idx)
    }

    /// The holder's reservation `id`; `None` if it is missing or someone else's.
    pub fn reservation_of(&self, holder: HolderIdx, id: ReservationId) -> Option<ReservationView> {
        let h = self.catalog.holder_facts(holder)?;
        let st = self.shards[usize::from(h.province)].state.lock();
        let idx = st.find(id)?;
        let view = st.view(&self.catalog, idx)?;
        (view.holder == holder).then_some(view)
    }

    /// The holder's latest reservation (live or ended), if they ever had one.
    pub fn latest_reservation(&self, holder: HolderIdx) -> Option<ReservationView> {
        let h = self.catalog.holder_facts(holder)?;
        let st = self.shards[usize::from(h.province)].state.lock();
        let idx = *st.latest.get(h.local as usize)?;
        st.view(&self.catalog, idx)
    }

    /// Reservations matching `filter`, in province then creation order, skipping `offset` and
    /// returning at most `limit`.
    pub fn reservations(
        &self,
        filter: &ReservationFilter,
        offset: usize,
        limit: usize,
    ) -> Vec<ReservationView> {
        let mut out = Vec::new();
        let mut skipped = 0usize;
        for (p, shard) in self.shards.iter().enumerate() {
            if filter.province.is_some_and(|want| usize::from(want) != p) {
                continue;
            }
            let st = shard.state.lock();
            for (idx, r) in st.reservations.iter().enumerate() {
                if filter.caravan.is_some_and(|c| c != r.caravan)
                    || filter.status.is_some_and(|s| s != r.status)
                {
                    continue;
                }
                if skipped < offset {
                    skipped += 1;
                    continue;
                }
                if out.len() >= limit {
                    return out;
                }
                if let Some(view) = st.view(&self.catalog, idx as u32) {
                    out.push(view);
                }
            }
        }
        out
    }

    /// Counts over the whole engine (locks each shard in turn).
    pub fn stats(&self) -> EngineStats {
        let mut stats = EngineStats {
            expirations: self.expirations.load(Ordering::Relaxed),
            ..EngineStats::default()
        };
        for (p, shard) in self.shards.iter().enumerate() {
            stats.seats_total += self.province_seats_total(p as ProvinceIdx);
            stats.seats_free += u64::from(shard.counters.free_total.load(Ordering::Acquire));
            let st = shard.state.lock();
            for r in &st.reservations {
                stats.by_status[r.status as usize] += 1;
            }
            stats.waiting += st.waitlist.len() as u64;
        }
        stats
    }

    /// Records committed since start, over all shards.
    pub fn records_committed(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counters.records.load(Ordering::Relaxed))
            .sum()
    }

    /// The earliest pending deadline over all shards (possibly one already handled).
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let next = self
            .shards
            .iter()
            .map(|s| s.counters.next_deadline_ms.load(Ordering::SeqCst))
            .min()
            .unwrap_or(i64::MAX);
        (next != i64::MAX).then_some(next)
    }

    /// Expires every hold and offer whose deadline is at or before now, exactly once each,
    /// passing their seats on. Returns how many expired and the ticket of the last one.
    pub fn expire_due(&self) -> Result<(usize, Option<Ticket>), EngineError> {
        let now_ms = self.now_ms();
        let mut expired = 0usize;
        let mut last_ticket = None;
        for p in 0..self.shards.len() {
            if self.shards[p]
                .counters
                .next_deadline_ms
                .load(Ordering::Acquire)
                > now_ms
            {
                continue;
            }
            loop {
                let (count, ticket, more) = self.expire_batch(p, now_ms)?;
                expired += count;
                last_ticket = ticket.or(last_ticket);
                if !more {
                    break;
                }
            }
        }
        Ok((expired, last_ticket))
    }

    /// Expires up to [`EXPIRY_BATCH_MAX`] due deadlines of shard `p`; returns whether more may
    /// be due.
    fn expire_batch(
        &self,
        p: usize,
        now_ms: i64,
    ) -> Result<(usize, Option<Ticket>, bool), EngineError> {
        let counters = &self.shards[p].counters;
        let mut st = self.shards[p].state.lock();
        let mut count = 0usize;
        let mut ticket = None;
        while count < EXPIRY_BATCH_MAX {
            st.prune_timers(counters);
            // A failed commit leaves the timer in place: the deadline stays pending.
            let (reply, t) = self.run(p, &mut st, Command::ExpireDue, now_ms)?;
            if !matches!(reply, Reply::Expired) {
                break;
            }
            ticket = t.or(ticket);
            count += 1;
        }
        st.prune_timers(counters);
        let more = st.earliest_timer().is_some_and(|(d, _)| d <= now_ms);
        Ok((count, ticket, more))
    }

    fn wake_expiry_if_earlier(&self, deadline_ms: Option<i64>) {
        // i64::MIN while no expiry thread sleeps: nothing to wake.
        let planned = self.expiry_planned_ms.load(Ordering::SeqCst);
        if deadline_ms.is_some_and(|d| planned != i64::MIN && d < planned) {
            let (lock, condvar) = &self.expiry_wake;
            // The flag makes a wake-up between two checks of the expiry thread not lost.
            let mut woken = lock.lock();
            if !*woken {
                *woken = true;
                condvar.notify_one();
            }
        }
    }

    /// Blocks until the decision's record is durable (at once without a log or with
    /// `Durability::None`). Returns an error if and only if the log failed: then the decision
    /// must not be acknowledged.
    pub fn wait<T>(&self, committed: &Committed<T>) -> Result<(), EngineError> {
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

    /// Runs the expiry loop on a thread until [`Engine::stop`]: it sleeps until the next
    /// deadline (at most `idle_max`), expires what is due, and snapshots now and then.
    pub fn spawn_expiry_thread(
        self: &Arc<Self>,
        idle_max: Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let engine = Arc::clone(self);
        std::thread::Builder::new()
            .name("miqat-expiry".into())
            .spawn(move || engine.expiry_loop(idle_max))
    }

    fn expiry_loop(&self, idle_max: Duration) {
        while !self.stopping.load(Ordering::Acquire) {
            match self.expire_due() {
                Ok(_) => {}
                Err(EngineError::Overloaded) => {
                    // The log is saturated for a moment: the deadlines stay pending; retry.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "expiry stopped: the log refused a decision");
                    return;
                }
            }
            if self.records_committed() - self.records_at_snapshot.load(Ordering::Relaxed)
                >= self.config.snapshot_every_records
                && let Err(e) = self.snapshot()
            {
                tracing::error!(error = %e, "snapshot failed");
            }
            let now_ms = self.now_ms();
            let sleep_ms = self
                .next_deadline_ms()
                .map_or(idle_max.as_millis() as i64, |d| d - now_ms)
                .clamp(0, idle_max.as_millis() as i64);
            let (lock, condvar) = &self.expiry_wake;
            let mut woken = lock.lock();
            if !*woken && sleep_ms > 0 {
                // Published under the lock: a decision that reads it and finds its deadline
                // earlier takes the same lock to wake us, so no wake-up is lost.
                // SeqCst pairs with the decision side (deadline published, then the plan read):
                // either it sees this plan and wakes us, or we see its deadline here.
                let planned = now_ms + sleep_ms;
                self.expiry_planned_ms.store(planned, Ordering::SeqCst);
                if self.next_deadline_ms().is_none_or(|d| d >= planned) {
                    let _ = condvar.wait_for(&mut woken, Duration::from_millis(sleep_ms as u64));
                }
                self.expiry_planned_ms.store(i64::MIN, Ordering::SeqCst);
            }
            *woken = false;
        }
    }

    /// Asks the expiry thread to finish.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let (lock, condvar) = &self.expiry_wake;
        *lock.lock() = true;
        condvar.notify_all();
    }

    /// Checks the invariants over the whole state: no caravan above capacity, counters equal
    /// to what they count, at most one live reservation per holder, waiting holders hold no
    /// seat. Returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (p, shard) in self.shards.iter().enumerate() {
            let st = shard.state.lock();
            let caravans = self.catalog.caravans_of_province(p as ProvinceIdx);
            let mut live = vec![0u32; caravans.len()];
            let mut live_per_holder = rustc_hash::FxHashMap::<HolderIdx, u32>::default();
            for r in st.reservations.iter().filter(|r| r.status.is_live()) {
                live[self.caravan_local[r.caravan as usize] as usize] += 1;
                *live_per_holder.entry(r.holder).or_default() += 1;
            }
            let mut free_total = 0u32;
            for (slot, &c) in caravans.iter().enumerate() {
                let capacity = self.catalog.caravans()[c as usize].capacity;
                let caravan_id = &self.catalog.caravans()[c as usize].id;
                if live[slot] > capacity {
                    return Err(format!(
                        "caravan {caravan_id} holds {} for {capacity} seats",
                        live[slot]
                    ));
                }
                if live[slot] != st.occupied[slot] {
                    return Err(format!("caravan {caravan_id}: occupancy counter drifted"));
                }
                let free = shard.counters.free[slot].load(Ordering::Acquire);
                if free != capacity - live[slot] {
                    return Err(format!("caravan {caravan_id}: free-seat counter drifted"));
                }
                free_total += free;
            }
            if free_total != shard.counters.free_total.load(Ordering::Acquire) {
                return Err(format!("province {p}: free-seat total drifted"));
            }
            if let Some((holder, n)) = live_per_holder.iter().find(|(_, n)| **n > 1) {
                return Err(format!("holder {holder} has {n} live reservations"));
            }
            if let Some((holder, _, _)) = st
                .waitlist
                .iter()
                .find(|(holder, _, _)| live_per_holder.contains_key(holder))
            {
                return Err(format!("holder {holder} waits while holding a seat"));
            }
        }
        Ok(())
    }
}

fn receipt_day_ranges(catalog: &Catalog) -> Vec<(i32, i32)> {
    let mut ranges = vec![(i32::MAX, i32::MIN); catalog.provinces().len()];
    for idx in 0..catalog.holder_count() as u32 {
        if let Some(h) = catalog.holder_facts(idx) {
            let range = &mut ranges[usize::from(h.province)];
            range.0 = range.0.min(h.receipt_day);
            range.1 = range.1.max(h.receipt_day);
        }
    }
    ranges
        .into_iter()
        .map(|(a, b)| if a > b { (0, 0) } else { (a, b) })
        .collect()
}

/// The key bytes of an optional `Idempotency-Key` (empty for none); refused if longer than
/// [`IDEMPOTENCY_KEY_BYTES_MAX`].
fn checked_key(key: Option<&[u8]>) -> Result<&[u8], EngineError> {
    let key = key.unwrap_or(&[]);
    if key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(EngineError::InvalidField {
            field: "Idempotency-Key",
            message: format!("longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes"),
        });
    }
    Ok(key)
}

/// The answer of a keyed decision without its "replayed" flag.
fn first_of<T>(decided: Committed<(T, bool)>) -> Result<Committed<T>, EngineError> {
    Ok(Committed {
        value: decided.value.0,
        ticket: decided.ticket,
    })
}

/// Each caravan's price group as its rank among the catalog's distinct price groups in sorted
/// order (`A` 0, `B` 1, ...), so the distance between two groups is a difference of ranks.
fn price_ranks(catalog: &Catalog) -> Vec<u32> {
    let mut groups: Vec<&str> = catalog
        .caravans()
        .iter()
        .map(|c| c.price_group.as_str())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    catalog
        .caravans()
        .iter()
        .map(|c| groups.binary_search(&c.price_group.as_str()).unwrap_or(0) as u32)
        .collect()
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}
