//! The engine facade: every decision (reserve, cancel, accept, operator events, waiting list,
//! schedule, expiry), each taken under exactly one shard's lock and logged before it is applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam::utils::CachePadded;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::catalog::{CaravanIdx, Catalog, HolderIdx, ProvinceIdx, ReceiptStatus};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::model::{
    EndReason, OperatorEvent, ReservationId, ReservationView, Status, WaitlistPlace, WaitlistStatus,
};
use crate::record::{KeyOp, KeyUse, Offer, Record};
use crate::season::{NotEligible, Schedule, Season, Wave, WaveOrder};
use crate::shard::{Ctx, KeyAnswer, KeyedOp, Shard, ShardState};
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
        }
    }

    /// The id of the next reservation of `st`'s shard, with a fresh 128-bit secret.
    fn new_id(&self, st: &ShardState) -> ReservationId {
        let rng = usize::from(st.province) % self.rng.len();
        st.next_id(self.rng[rng].lock().random())
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

    /// Reserves a seat in `caravan` for `holder`, or says precisely why not. With an
    /// idempotency key seen before for this holder and caravan, returns the original
    /// reservation (`replayed`); with the same key and another caravan, refuses.
    pub fn reserve(
        &self,
        holder: HolderIdx,
        caravan: CaravanIdx,
        idempotency_key: Option<&[u8]>,
    ) -> Result<Committed<ReserveOutcome>, EngineError> {
        let h = self
            .catalog
            .holder_facts(holder)
            .ok_or(EngineError::InvalidCredentials)?;
        let c = self
            .catalog
            .caravans()
            .get(caravan as usize)
            .ok_or(EngineError::CaravanNotFound)?;
        let key = checked_key(idempotency_key)?;
        let now_ms = self.now_ms();
        let p = usize::from(h.province);
        let shard = &self.shards[p];
        let mut st = shard.state.lock();
        if let Some((at_ms, answer)) =
            self.key_replay(&st, h.local, key, KeyedOp::Reserve { caravan }, now_ms)?
        {
            // The original answer: the reservation as it was created, whatever happened to it
            // since.
            let reservation = self.replayed_view(&st, at_ms, answer)?;
            return Ok(Committed {
                value: ReserveOutcome {
                    reservation,
                    replayed: true,
                },
                ticket: self.ticket_for_staged(p),
            });
        }
        if h.receipt_status == ReceiptStatus::NeedsConversion {
            return Err(EngineError::ReceiptNeedsConversion);
        }
        if c.province != h.province || c.city != h.city {
            return Err(EngineError::ProvinceMismatch);
        }
        self.check_schedule(&st.schedule, h.province, h.receipt_day, now_ms)?;
        Self::check_first_registration(&st, h.local)?;
        let slot = self.caravan_local[caravan as usize] as usize;
        if st.occupied[slot] >= c.capacity {
            return Err(EngineError::CaravanFull {
                alternatives: self.alternatives(h.city, caravan, holder),
            });
        }
        let (stage, deadline_ms) = self.first_stage(now_ms);
        let record = Record::Reserve {
            id: self.new_id(&st),
            holder,
            caravan,
            at_ms: now_ms,
            stage,
            deadline_ms,
            idempotency_key: key.to_vec(),
        };
        let ticket = self.commit(p, &mut st, &record)?;
        let idx = st.latest[h.local as usize];
        let reservation = st
            .view(&self.catalog, idx)
            .ok_or(EngineError::ReservationNotFound)?;
        drop(st);
        self.wake_expiry_if_earlier(deadline_ms);
        Ok(Committed {
            value: ReserveOutcome {
                reservation,
                replayed: false,
            },
            ticket,
        })
    }

    /// If `key` (non-empty) was used by the holder with local index `local` and is still
    /// retained: `Ok(Some(original answer))` if it was used for `op`, and
    /// [`EngineError::IdempotencyKeyReused`] if for anything else. `Ok(None)` for a new key
    /// or none.
    fn key_replay(
        &self,
        st: &ShardState,
        local: u32,
        key: &[u8],
        op: KeyedOp,
        now_ms: i64,
    ) -> Result<Option<(i64, KeyAnswer)>, EngineError> {
        if key.is_empty() {
            return Ok(None);
        }
        let since = now_ms.saturating_sub(self.config.idempotency_retention_ms);
        match st.idempotency_lookup(local, key, since) {
            None => Ok(None),
            Some(entry) if entry.op == op => Ok(Some((entry.at_ms, entry.answer))),
            Some(_) => Err(EngineError::IdempotencyKeyReused),
        }
    }

    /// The reservation a replayed answer names, as the keyed decision left it at `at_ms`.
    fn replayed_view(
        &self,
        st: &ShardState,
        at_ms: i64,
        answer: KeyAnswer,
    ) -> Result<ReservationView, EngineError> {
        let KeyAnswer::Reservation {
            id,
            status,
            stage,
            deadline_ms,
        } = answer
        else {
            return Err(EngineError::IdempotencyKeyReused);
        };
        let idx = st.find(id).ok_or(EngineError::ReservationNotFound)?;
        let mut view = st
            .view(&self.catalog, idx)
            .ok_or(EngineError::ReservationNotFound)?;
        view.status = status;
        view.stage = stage;
        view.deadline_ms = deadline_ms;
        view.updated_ms = at_ms;
        if status.is_live() {
            view.end_reason = None;
        }
        Ok(view)
    }

    /// A holder registers once a season: a live reservation answers `already_reserved`; an
    /// ended one (cancelled, expired, rejected, a declined or lapsed offer) answers
    /// `registration_ended`, since a choice is final and a death or medical rejection ends the
    /// registration for good.
    fn check_first_registration(st: &ShardState, local: u32) -> Result<(), EngineError> {
        let Some(&latest) = st.latest.get(local as usize) else {
            return Ok(());
        };
        let Some(r) = st.reservations.get(latest as usize) else {
            return Ok(());
        };
        if r.status.is_live() {
            Err(EngineError::AlreadyReserved { reservation: r.id })
        } else {
            Err(EngineError::RegistrationEnded { reservation: r.id })
        }
    }

    fn check_schedule(
        &self,
        schedule: &Schedule,
        province: ProvinceIdx,
        receipt_day: i32,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let province_id = self.catalog.provinces()[usize::from(province)].id;
        schedule
            .eligibility(province_id, receipt_day, now_ms)
            .map_err(|why| match why {
                NotEligible::NotOpen { opens_at_ms } => {
                    EngineError::RegistrationNotOpen { opens_at_ms }
                }
                NotEligible::NotCalled => EngineError::NotCalled,
            })
    }

    fn first_stage(&self, now_ms: i64) -> (Option<crate::season::Stage>, Option<i64>) {
        match self.season.stage_at(0) {
            Some((stage, length_ms)) => (Some(stage), Some(now_ms.saturating_add(length_ms))),
            None => (None, None),
        }
    }

    /// Up to [`ALTERNATIVES_MAX`] caravans of `city` with free seats, other than `asked`,
    /// read from the lock-free counters, closest to `asked` first: the same route first, then
    /// the nearest price group (by rank in the catalog's sorted price groups), then the
    /// nearest departure date. Caravans equally close are ordered by a hash of `holder` and
    /// the caravan, so holders refused on the same caravan are spread over all the equally
    /// close ones instead of herding to the same five. With `asked` not a caravan (a waiting
    /// list refusal), only the hash orders them.
    pub fn alternatives(
        &self,
        city: crate::catalog::CityIdx,
        asked: CaravanIdx,
        holder: HolderIdx,
    ) -> Vec<CaravanIdx> {
        let caravans = self.catalog.caravans();
        let asked_caravan = caravans.get(asked as usize);
        let closeness = |c: CaravanIdx| -> (u8, u32, u32, u64) {
            let spread = spread_hash(holder, c);
            let Some(a) = asked_caravan else {
                return (0, 0, 0, spread);
            };
            let other = &caravans[c as usize];
            (
                u8::from(other.route != a.route),
                self.price_rank[c as usize].abs_diff(self.price_rank[asked as usize]),
                other.departure_day.abs_diff(a.departure_day),
                spread,
            )
        };
        let mut found: Vec<((u8, u32, u32, u64), CaravanIdx)> = self
            .catalog
            .caravans_of_city(city)
            .iter()
            .copied()
            .filter(|&c| c != asked && self.free_seats(c) > 0)
            .map(|c| (closeness(c), c))
            .collect();
        if found.len() > ALTERNATIVES_MAX {
            found.select_nth_unstable(ALTERNATIVES_MAX - 1);
            found.truncate(ALTERNATIVES_MAX);
        }
        found.sort_unstable();
        found.into_iter().map(|(_, c)| c).collect()
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
        counter: impl Fn(&crate::shard::ShardCounters) -> &crate::sync::AtomicU32,
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

    /// The seat freed in `caravan`, offered to the first waiting holder of its city, if any.
    fn offer_for(&self, st: &ShardState, caravan: CaravanIdx, now_ms: i64) -> Option<Offer> {
        let city = self.catalog.caravans()[caravan as usize].city;
        let holder = st.waitlist.head_of_city(city)?;
        Some(Offer {
            id: self.new_id(st),
            holder,
            deadline_ms: now_ms.saturating_add(self.season.offer_deadline_ms),
        })
    }

    /// Ends the reservation at `idx` for `reason`, passing its seat on; `keyed` when a request
    /// with an `Idempotency-Key` asked for it.
    fn end(
        &self,
        p: usize,
        st: &mut ShardState,
        idx: u32,
        reason: EndReason,
        now_ms: i64,
        keyed: Option<KeyUse>,
    ) -> Result<Option<Ticket>, EngineError> {
        let r = &st.reservations[idx as usize];
        let (id, caravan) = (r.id, r.caravan);
        let offer = self.offer_for(st, caravan, now_ms);
        let offer_deadline = offer.as_ref().map(|o| o.deadline_ms);
        let record = Record::End {
            id,
            at_ms: now_ms,
            reason,
            offer,
            keyed,
        };
        let ticket = self.commit(p, st, &record)?;
        self.wake_expiry_if_earlier(offer_deadline);
        Ok(ticket)
    }

    /// If the deadline of the reservation at `idx` has passed, expires it now (so no event can
    /// slip in after its deadline just because the expiry pass has not run yet) and returns
    /// the error to give the caller.
    fn expire_if_due(
        &self,
        p: usize,
        st: &mut ShardState,
        idx: u32,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let r = &st.reservations[idx as usize];
        let due = matches!(r.status, Status::Held | Status::Offered)
            && r.deadline_ms.is_some_and(|d| d <= now_ms);
        if !due {
            return Ok(());
        }
        let reason = if r.status == Status::Offered {
            EndReason::OfferExpired
        } else {
            EndReason::StageExpired
        };
        let deadline_ms = r.deadline_ms.unwrap_or(now_ms);
        let _ = self.end(p, st, idx, reason, now_ms, None)?;
        self.note_expiry(now_ms - deadline_ms);
        Err(EngineError::InvalidTransition {
            status: reason.status(),
            detail: "the deadline has passed".into(),
        })
    }

    fn note_expiry(&self, lateness_ms: i64) {
        self.expirations.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("miqat_expirations_total").increment(1);
        metrics::histogram!("miqat_expiry_lateness_seconds")
            .record(lateness_ms.max(0) as f64 / 1000.0);
    }

    /// Locks the shard of `holder`'s province and finds their reservation `id`; someone
    /// else's reservation is not found, like a missing one.
    fn holder_reservation_locked(
        &self,
        holder: HolderIdx,
        id: ReservationId,
    ) -> Result<(usize, crate::sync::MutexGuard<'_, ShardState>, u32), EngineError> {
        let h = self
            .catalog
            .holder_facts(holder)
            .ok_or(EngineError::InvalidCredentials)?;
        let p = usize::from(h.province);
        let st = self.shards[p].state.lock();
        let idx = st.find(id).ok_or(EngineError::ReservationNotFound)?;
        if st.reservations[idx as usize].holder != holder {
            return Err(EngineError::ReservationNotFound);
        }
        Ok((p, st, idx))
    }

    fn committed_view(
        &self,
        st: &ShardState,
        idx: u32,
        ticket: Option<Ticket>,
    ) -> Result<Committed<ReservationView>, EngineError> {
        let value = st
            .view(&self.catalog, idx)
            .ok_or(EngineError::ReservationNotFound)?;
        Ok(Committed { value, ticket })
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
        let now_ms = self.now_ms();
        let (p, mut st, idx) = self.holder_reservation_locked(holder, id)?;
        let op = KeyedOp::On {
            op: KeyOp::Cancel,
            reservation: id,
        };
        if let Some(done) = self.replay_view(&st, p, holder, key, op, now_ms)? {
            return Ok(done);
        }
        self.expire_if_due(p, &mut st, idx, now_ms)?;
        let r = &st.reservations[idx as usize];
        let reason = match r.status {
            Status::Offered => EndReason::OfferDeclined,
            Status::Held | Status::Confirmed => EndReason::HolderCancelled,
            Status::Cancelled
                if matches!(
                    r.end_reason,
                    Some(EndReason::HolderCancelled | EndReason::OfferDeclined)
                ) =>
            {
                // The cancel this retries may still be on its way to disk.
                let done = self.committed_view(&st, idx, self.ticket_for_staged(p))?;
                return Ok(Committed {
                    value: (done.value, true),
                    ticket: done.ticket,
                });
            }
            status => {
                return Err(EngineError::InvalidTransition {
                    status,
                    detail: "the reservation has already ended".into(),
                });
            }
        };
        let keyed = key_use(KeyOp::Cancel, key);
        let ticket = self.end(p, &mut st, idx, reason, now_ms, keyed)?;
        let done = self.committed_view(&st, idx, ticket)?;
        Ok(Committed {
            value: (done.value, false),
            ticket: done.ticket,
        })
    }

    /// The original answer to a retry of a keyed request on a reservation of shard `p`
    /// (`holder`'s, whose key it is), if `key` was seen for `op`; see `key_replay`.
    fn replay_view(
        &self,
        st: &ShardState,
        p: usize,
        holder: HolderIdx,
        key: &[u8],
        op: KeyedOp,
        now_ms: i64,
    ) -> Result<Option<Committed<(ReservationView, bool)>>, EngineError> {
        let local = self
            .catalog
            .holder_facts(holder)
            .ok_or(EngineError::ReservationNotFound)?
            .local;
        let Some((at_ms, answer)) = self.key_replay(st, local, key, op, now_ms)? else {
            return Ok(None);
        };
        Ok(Some(Committed {
            value: (self.replayed_view(st, at_ms, answer)?, true),
            // The decision this retries may still be on its way to disk.
            ticket: self.ticket_for_staged(p),
        }))
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
        let now_ms = self.now_ms();
        let (p, mut st, idx) = self.holder_reservation_locked(holder, id)?;
        let op = KeyedOp::On {
            op: KeyOp::Accept,
            reservation: id,
        };
        if let Some(done) = self.replay_view(&st, p, holder, key, op, now_ms)? {
            return Ok(done);
        }
        self.expire_if_due(p, &mut st, idx, now_ms)?;
        let status = st.reservations[idx as usize].status;
        if status != Status::Offered {
            return Err(EngineError::InvalidTransition {
                status,
                detail: "only an open offer can be accepted".into(),
            });
        }
        let (stage, deadline_ms) = self.first_stage(now_ms);
        let record = Record::Advance {
            id,
            at_ms: now_ms,
            stage,
            deadline_ms,
            keyed: key_use(KeyOp::Accept, key),
        };
        let ticket = self.commit(p, &mut st, &record)?;
        let view = st
            .view(&self.catalog, idx)
            .ok_or(EngineError::ReservationNotFound)?;
        drop(st);
        self.wake_expiry_if_earlier(deadline_ms);
        Ok(Committed {
            value: (view, false),
            ticket,
        })
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
        let now_ms = self.now_ms();
        let p = usize::from(id.shard);
        let shard = self.shards.get(p).ok_or(EngineError::ReservationNotFound)?;
        let mut st = shard.state.lock();
        let idx = st.find(id).ok_or(EngineError::ReservationNotFound)?;
        let holder = st.reservations[idx as usize].holder;
        let op = KeyedOp::On {
            op: KeyOp::Event(event),
            reservation: id,
        };
        if let Some(done) = self.replay_view(&st, p, holder, key, op, now_ms)? {
            return Ok(done);
        }
        let keyed = key_use(KeyOp::Event(event), key);
        self.expire_if_due(p, &mut st, idx, now_ms)?;
        let (status, stage) = {
            let r = &st.reservations[idx as usize];
            (r.status, r.stage)
        };
        let invalid = |detail: String| EngineError::InvalidTransition { status, detail };
        let ticket = match event.completes() {
            Some(done) => {
                if status != Status::Held || stage != Some(done) {
                    return Err(invalid(format!(
                        "{} completes the {} stage, but the reservation is {}{}",
                        event.as_str(),
                        done.as_str(),
                        status.as_str(),
                        stage.map_or(String::new(), |s| format!(" at {}", s.as_str())),
                    )));
                }
                let position = self.season.stages.iter().position(|(s, _)| *s == done);
                let next = position.and_then(|i| self.season.stage_at(i + 1));
                let (stage, deadline_ms) = match next {
                    Some((s, length_ms)) => (Some(s), Some(now_ms.saturating_add(length_ms))),
                    None => (None, None),
                };
                let record = Record::Advance {
                    id,
                    at_ms: now_ms,
                    stage,
                    deadline_ms,
                    keyed,
                };
                let ticket = self.commit(p, &mut st, &record)?;
                self.wake_expiry_if_earlier(deadline_ms);
                ticket
            }
            None => {
                let (reason, allowed) = match event {
                    OperatorEvent::MedicalRejected => (
                        EndReason::MedicalRejected,
                        matches!(status, Status::Held | Status::Confirmed),
                    ),
                    _ => (EndReason::Deceased, status.is_live()),
                };
                if !allowed {
                    return Err(invalid(format!(
                        "{} does not apply to a {} reservation",
                        event.as_str(),
                        status.as_str()
                    )));
                }
                self.end(p, &mut st, idx, reason, now_ms, keyed)?
            }
        };
        let done = self.committed_view(&st, idx, ticket)?;
        Ok(Committed {
            value: (done.value, false),
            ticket: done.ticket,
        })
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
        let h = self
            .catalog
            .holder_facts(holder)
            .ok_or(EngineError::InvalidCredentials)?;
        if h.receipt_status == ReceiptStatus::NeedsConversion {
            return Err(EngineError::ReceiptNeedsConversion);
        }
        let now_ms = self.now_ms();
        let p = usize::from(h.province);
        let mut st = self.shards[p].state.lock();
        let place = |st: &ShardState| WaitlistPlace {
            province: h.province,
            position: st.waitlist.position(holder).unwrap_or(0),
        };
        if let Some((_, answer)) = self.key_replay(&st, h.local, key, KeyedOp::Join, now_ms)? {
            let KeyAnswer::Place { position } = answer else {
                return Err(EngineError::IdempotencyKeyReused);
            };
            return Ok(Committed {
                value: (
                    WaitlistPlace {
                        province: h.province,
                        position,
                    },
                    true,
                ),
                ticket: self.ticket_for_staged(p),
            });
        }
        if st.waitlist.contains(holder) {
            return Ok(Committed {
                value: (place(&st), false),
                ticket: self.ticket_for_staged(p),
            });
        }
        self.check_schedule(&st.schedule, h.province, h.receipt_day, now_ms)?;
        Self::check_first_registration(&st, h.local)?;
        let alternatives = self.alternatives(h.city, CaravanIdx::MAX, holder);
        if !alternatives.is_empty() {
            return Err(EngineError::SeatsAvailable { alternatives });
        }
        let record = Record::Join {
            holder,
            at_ms: now_ms,
            keyed: key_use(KeyOp::Join, key),
        };
        let ticket = self.commit(p, &mut st, &record)?;
        Ok(Committed {
            value: (place(&st), false),
            ticket,
        })
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

    /// [`Engine::replace_schedule`], with the wave order check as `order` says.
    pub fn replace_schedule_with(
        &self,
        waves: Vec<Wave>,
        order: WaveOrder,
    ) -> Result<Committed<()>, EngineError> {
        let schedule = Schedule { waves };
        schedule
            .validate(&self.catalog)
            .map_err(|message| EngineError::InvalidField {
                field: "waves",
                message,
            })?;
        if order == WaveOrder::Strict {
            schedule
                .check_order()
                .map_err(|e| EngineError::ScheduleOutOfOrder { message: e.message })?;
        }
        let now_ms = self.now_ms();
        let record = Record::Schedule {
            at_ms: now_ms,
            waves: schedule.waves.clone(),
        };
        let mut global = self.global.lock();
        let ticket = match &self.wal {
            Some(wal) => {
                let mut payload = Vec::new();
                record.encode(&mut payload);
                Some(wal.append(self.shards.len() as u16, record.kind(), &payload)?)
            }
            None => None,
        };
        let schedule = Arc::new(schedule);
        self.schedule_replaced.store(true, Ordering::Release);
        *global = Arc::clone(&schedule);
        for shard in self.shards.iter() {
            shard.state.lock().schedule = Arc::clone(&schedule);
        }
        Ok(Committed { value: (), ticket })
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
        let (_, st, idx) = self.holder_reservation_locked(holder, id).ok()?;
        st.view(&self.catalog, idx)
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

    /// Expires up to [`EXPIRY_BATCH_MAX`] due deadlines of shard `p`; returns whether more are
    /// due.
    fn expire_batch(
        &self,
        p: usize,
        now_ms: i64,
    ) -> Result<(usize, Option<Ticket>, bool), EngineError> {
        let mut st = self.shards[p].state.lock();
        let mut count = 0usize;
        let mut ticket = None;
        while let Some(&std::cmp::Reverse((deadline_ms, idx))) = st.timers.peek() {
            if deadline_ms > now_ms || count >= EXPIRY_BATCH_MAX {
                break;
            }
            st.timers.pop();
            if !st.timer_is_current(deadline_ms, idx) {
                continue;
            }
            let reason = if st.reservations[idx as usize].status == Status::Offered {
                EndReason::OfferExpired
            } else {
                EndReason::StageExpired
            };
            match self.end(p, &mut st, idx, reason, now_ms, None) {
                Ok(t) => ticket = t.or(ticket),
                Err(e) => {
                    // Not expired after all (the log refused): keep the deadline pending.
                    st.timers.push(std::cmp::Reverse((deadline_ms, idx)));
                    st.publish_next_deadline(&self.shards[p].counters);
                    return Err(e);
                }
            }
            self.note_expiry(now_ms - deadline_ms);
            count += 1;
        }
        st.compact_timers(&self.shards[p].counters);
        st.publish_next_deadline(&self.shards[p].counters);
        let more = st
            .timers
            .peek()
            .is_some_and(|std::cmp::Reverse((d, _))| *d <= now_ms);
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

/// The key's use to log with a decision, if a key was given.
fn key_use(op: KeyOp, key: &[u8]) -> Option<KeyUse> {
    (!key.is_empty()).then(|| KeyUse {
        op,
        key: key.to_vec(),
    })
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

/// A well-mixed 64-bit hash of (holder, caravan) (SplitMix64's finalizer): a stable,
/// per-holder order among equally close alternatives.
fn spread_hash(holder: HolderIdx, caravan: CaravanIdx) -> u64 {
    let mut z = (u64::from(holder) << 32 | u64::from(caravan)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}
