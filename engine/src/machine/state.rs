//! One province's state: its seat counts, reservations, deadlines, waiting list and
//! idempotency keys; `apply`, the one function that changes it; and `restore` from a snapshot.
//!
//! A shard is the unit of locking: a decision locks exactly one shard, and applying a record is
//! the only way state changes, both live and during replay, so the log and memory cannot
//! disagree. Free-seat counters sit beside the lock as atomics, so readers never wait for it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustc_hash::FxHashMap;

use crate::catalog::{CaravanIdx, Catalog, HolderIdx, ProvinceIdx, SlotIdx};
use crate::model::{Reservation, ReservationId, ReservationView, Status};
use crate::record::{KeyOp, KeyUse, Offer, Record};
use crate::season::{ProvinceCalls, Schedule};
use crate::sync::{AtomicI64, AtomicU32, Mutex};
use crate::waitlist::{WaitKey, Waitlist};

use super::Ctx;
use super::holders::Profile;

/// Marker for "no reservation" in the per-holder table.
pub(crate) const NO_RESERVATION: SlotIdx = SlotIdx::MAX;
/// How many idempotency keys one holder keeps; older ones are forgotten first.
pub(crate) const IDEMPOTENCY_KEYS_PER_HOLDER_MAX: usize = 4;

/// What a remembered `Idempotency-Key` was used for, with its target: a retry must ask for
/// exactly this again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyedOp {
    /// A reservation in this caravan.
    Reserve { caravan: CaravanIdx },
    /// A cancel, an accept or an operator event on this reservation.
    On {
        op: KeyOp,
        reservation: ReservationId,
    },
    /// Joining the waiting list.
    Join,
}

/// The original answer of a keyed decision, as a retry gets it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyAnswer {
    /// The reservation `id` as the decision left it (its `updated` is the decision's time).
    Reservation {
        id: ReservationId,
        status: Status,
        stage: Option<crate::season::Stage>,
        deadline_ms: Option<i64>,
    },
    /// The holder's place on the waiting list right after joining.
    Place { position: u64 },
}

/// A remembered `Idempotency-Key` of one holder (an operator's event is remembered under the
/// reservation's holder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdempotencyEntry {
    pub key: Box<[u8]>,
    pub op: KeyedOp,
    pub at_ms: i64,
    pub answer: KeyAnswer,
}

/// The lock-free side of a shard: counters readers load without taking the lock.
#[derive(Debug)]
pub(crate) struct ShardCounters {
    /// Free seats per caravan of the province (local index). Lowered before a seat is taken
    /// and raised only after it is released, so a reader never sees more free seats than
    /// there are.
    pub free: Box<[AtomicU32]>,
    /// Free seats in the whole province.
    pub free_total: AtomicU32,
    /// Live holds and offers (not confirmed) in the province.
    pub holds_live: AtomicU32,
    /// The earliest pending deadline, `i64::MAX` if none (may be a stale, earlier one).
    pub next_deadline_ms: AtomicI64,
    /// Holders on the waiting list.
    pub waiting: AtomicU32,
    /// Records this shard has committed since start (per shard, so cores do not share it).
    pub records: std::sync::atomic::AtomicU64,
}

/// One province's shard.
#[derive(Debug)]
pub(crate) struct Shard {
    pub state: Mutex<ShardState>,
    pub counters: ShardCounters,
}

/// A shard's state as a snapshot holds it, decoded but not yet restored.
#[derive(Debug, Default)]
pub(crate) struct ShardImage {
    /// The waiting list's next join sequence number.
    pub next_join_seq: u64,
    /// Every reservation, in slot order (their ids' shard and slot are assigned on restore).
    pub reservations: Vec<Reservation>,
    /// Waiting holders with their place key and city.
    pub waiting: Vec<(HolderIdx, WaitKey, crate::catalog::CityIdx)>,
    /// Remembered idempotency keys by holder (local index).
    pub keys: Vec<(u32, IdempotencyEntry)>,
    /// Changed profiles (transfers, dispatch changes) by holder.
    pub profiles: Vec<(HolderIdx, Profile)>,
}

/// Everything a province's decisions read and write, behind the shard's lock.
#[derive(Debug)]
pub(crate) struct ShardState {
    pub province: ProvinceIdx,
    /// Set only through [`ShardState::set_schedule`], which keeps `calls` derived from it.
    pub schedule: Arc<Schedule>,
    /// The schedule as this province sees it, for the check every reservation makes.
    pub calls: ProvinceCalls,
    /// Live reservations per caravan (local index): never above its capacity.
    pub occupied: Vec<u32>,
    /// Every reservation of the province, at the slot its id names.
    pub reservations: Vec<Reservation>,
    /// Per holder (local index): the index of their latest reservation.
    pub latest: Vec<SlotIdx>,

    /// Pending deadlines: (deadline, reservation index). Entries go stale when a reservation
    /// moves on; a popped entry counts only if it still matches the reservation.
    pub timers: BinaryHeap<Reverse<(i64, SlotIdx)>>,
    pub waitlist: Waitlist,
    pub idempotency: FxHashMap<u32, Vec<IdempotencyEntry>>,
    /// Profiles changed since the catalog (transfers, dispatch changes), by holder (local
    /// index); empty for most provinces.
    pub profiles: FxHashMap<u32, Profile>,
    /// Reused encoding buffer, so a decision does not allocate for its record.
    pub scratch: Vec<u8>,
}

impl Shard {
    /// An empty shard for `province`.
    pub fn new(
        catalog: &Catalog,
        province: ProvinceIdx,
        schedule: Arc<Schedule>,
        first_day: i32,
        last_day: i32,
    ) -> Shard {
        let caravans = catalog.caravans_of_province(province);
        let free: Box<[AtomicU32]> = caravans
            .iter()
            .map(|&c| AtomicU32::new(catalog.caravans()[c.index()].capacity))
            .collect();
        let total: u32 = caravans
            .iter()
            .map(|&c| catalog.caravans()[c.index()].capacity)
            .fold(0u32, u32::saturating_add);
        let holders = catalog.province_holder_count(province);
        let calls = schedule.province_calls(province_public_id(catalog, province));
        let state = ShardState {
            province,
            schedule,
            calls,
            occupied: vec![0; caravans.len()],
            // Sized for the province's seats taken twice over, so the rush does not regrow.
            reservations: Vec::with_capacity(total as usize * 2),
            latest: vec![NO_RESERVATION; holders as usize],

            timers: BinaryHeap::new(),
            waitlist: Waitlist::new(first_day, last_day),
            idempotency: FxHashMap::default(),
            profiles: FxHashMap::default(),
            scratch: Vec::with_capacity(128),
        };
        Shard {
            state: Mutex::new(state),
            counters: ShardCounters {
                free,
                free_total: AtomicU32::new(total),
                holds_live: AtomicU32::new(0),
                next_deadline_ms: AtomicI64::new(i64::MAX),
                waiting: AtomicU32::new(0),
                records: std::sync::atomic::AtomicU64::new(0),
            },
        }
    }
}

/// The public id of province `p` (0 for an index the catalog does not have: no wave names it).
fn province_public_id(catalog: &Catalog, p: ProvinceIdx) -> u32 {
    catalog
        .provinces()
        .get(usize::from(p))
        .map_or(0, |pr| pr.id)
}

impl ShardState {
    /// Replaces the schedule and what this province derives from it.
    pub fn set_schedule(&mut self, catalog: &Catalog, schedule: Arc<Schedule>) {
        self.calls = schedule.province_calls(province_public_id(catalog, self.province));
        self.schedule = schedule;
    }

    /// The holder's live reservation index, if any.
    pub fn live_of(&self, local: u32) -> Option<SlotIdx> {
        let idx = *self.latest.get(local as usize)?;
        let r = self.reservations.get(idx.index())?;
        r.status.is_live().then_some(idx)
    }

    /// The reservation with this id, if it is in this shard: its slot must exist and hold
    /// the same secret.
    pub fn find(&self, id: ReservationId) -> Option<SlotIdx> {
        let r = self.reservations.get(id.slot.index())?;
        (r.id == id).then_some(id.slot)
    }

    /// The id the next reservation of this shard will have, with `secret`.
    pub fn next_id(&self, secret: u128) -> ReservationId {
        ReservationId {
            shard: self.province,
            slot: SlotIdx(self.reservations.len() as u32),
            secret,
        }
    }

    /// A caller's copy of the reservation at `idx`.
    pub fn view(&self, catalog: &Catalog, idx: SlotIdx) -> Option<ReservationView> {
        let r = self.reservations.get(idx.index())?;
        Some(ReservationView {
            id: r.id,
            national_id: self.national_id_of(catalog, r.holder),
            holder: r.holder,
            caravan: r.caravan,
            province: self.province,
            status: r.status,
            stage: r.stage,
            deadline_ms: r.deadline_ms,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            end_reason: r.end_reason,
        })
    }

    /// The remembered reservation for `key` of the holder, if the key is still retained.
    pub fn idempotency_lookup(
        &self,
        local: u32,
        key: &[u8],
        retained_since_ms: i64,
    ) -> Option<&IdempotencyEntry> {
        self.idempotency
            .get(&local)?
            .iter()
            .find(|e| &*e.key == key && e.at_ms >= retained_since_ms)
    }

    /// Remembers a keyed decision of the holder with local index `local`, forgetting their
    /// oldest key beyond [`IDEMPOTENCY_KEYS_PER_HOLDER_MAX`].
    fn remember(&mut self, local: u32, entry: IdempotencyEntry) {
        let keys = self.idempotency.entry(local).or_default();
        if keys.len() >= IDEMPOTENCY_KEYS_PER_HOLDER_MAX {
            keys.remove(0);
        }
        keys.push(entry);
    }

    /// Remembers the keyed decision `keyed` on the reservation at `idx`, answering it as it
    /// stands now (just after the decision was applied).
    fn remember_on(
        &mut self,
        ctx: &Ctx<'_>,
        keyed: &KeyUse,
        idx: SlotIdx,
        at_ms: i64,
    ) -> Result<(), String> {
        let r = &self.reservations[idx.index()];
        let local = self.local_holder(ctx, r.holder)?;
        let entry = IdempotencyEntry {
            key: keyed.key.clone().into_boxed_slice(),
            op: KeyedOp::On {
                op: keyed.op,
                reservation: r.id,
            },
            at_ms,
            answer: KeyAnswer::Reservation {
                id: r.id,
                status: r.status,
                stage: r.stage,
                deadline_ms: r.deadline_ms,
            },
        };
        self.remember(local, entry);
        Ok(())
    }

    pub(crate) fn local_holder(&self, ctx: &Ctx<'_>, holder: HolderIdx) -> Result<u32, String> {
        let h = ctx
            .catalog
            .holder_facts(holder)
            .ok_or_else(|| format!("unknown holder index {holder}"))?;
        if h.province != self.province {
            return Err(format!(
                "holder {holder} is not of province {}",
                self.province
            ));
        }
        Ok(h.local)
    }

    fn local_caravan(&self, ctx: &Ctx<'_>, caravan: CaravanIdx) -> Result<usize, String> {
        let c = ctx
            .catalog
            .caravans()
            .get(caravan.index())
            .ok_or_else(|| format!("unknown caravan index {caravan}"))?;
        if c.province != self.province {
            return Err(format!(
                "caravan {caravan} is not of province {}",
                self.province
            ));
        }
        Ok(ctx.caravan_local[caravan.index()] as usize)
    }

    fn push_timer(&mut self, counters: &ShardCounters, deadline_ms: Option<i64>, idx: SlotIdx) {
        if let Some(deadline_ms) = deadline_ms {
            // Stale entries accumulate as reservations move on; keep the heap bounded by the
            // live deadlines even when nothing falls due for days.
            self.compact_timers(counters);
            self.timers.push(Reverse((deadline_ms, idx)));
            counters
                .next_deadline_ms
                .fetch_min(deadline_ms, Ordering::SeqCst);
        }
    }

    /// The earliest timer entry, current or stale: (deadline, reservation slot).
    pub fn earliest_timer(&self) -> Option<(i64, SlotIdx)> {
        self.timers.peek().map(|Reverse(entry)| *entry)
    }

    /// Drops stale entries from the top of the timer heap and re-publishes the earliest
    /// deadline. The heap is an index over the reservations' deadlines: this never changes
    /// what `decide` or `apply` would do, only how fast the next due deadline is found.
    pub fn prune_timers(&mut self, counters: &ShardCounters) {
        while let Some((deadline_ms, idx)) = self.earliest_timer() {
            if self.timer_is_current(deadline_ms, idx) {
                break;
            }
            self.timers.pop();
        }
        self.compact_timers(counters);
        self.publish_next_deadline(counters);
    }

    /// Re-publishes the earliest deadline after timers were popped.
    pub fn publish_next_deadline(&self, counters: &ShardCounters) {
        let next = self.timers.peek().map_or(i64::MAX, |Reverse((d, _))| *d);
        counters.next_deadline_ms.store(next, Ordering::Release);
    }

    /// Whether the timer entry (`deadline_ms`, `idx`) still stands for a pending deadline.
    pub fn timer_is_current(&self, deadline_ms: i64, idx: SlotIdx) -> bool {
        self.reservations.get(idx.index()).is_some_and(|r| {
            matches!(r.status, Status::Held | Status::Offered) && r.deadline_ms == Some(deadline_ms)
        })
    }

    /// Drops stale timer entries once they outnumber the pending deadlines (the live holds and
    /// offers) twice over, so the heap stays bounded by them.
    pub fn compact_timers(&mut self, counters: &ShardCounters) {
        let pending = counters.holds_live.load(Ordering::Relaxed) as usize;
        if self.timers.len() <= 2 * pending + 4096 {
            return;
        }
        let entries: Vec<_> = std::mem::take(&mut self.timers).into_vec();
        self.timers = entries
            .into_iter()
            .filter(|Reverse((d, idx))| self.timer_is_current(*d, *idx))
            .collect();
    }

    /// Applies one decided record. Returns an error, changing nothing, if the record does not
    /// fit the state (which on replay means a damaged or foreign log).
    pub fn apply(
        &mut self,
        ctx: &Ctx<'_>,
        counters: &ShardCounters,
        record: &Record,
    ) -> Result<(), String> {
        match record {
            Record::Reserve {
                id,
                holder,
                caravan,
                at_ms,
                stage,
                deadline_ms,
                idempotency_key,
            } => {
                let local = self.local_holder(ctx, *holder)?;
                let slot = self.local_caravan(ctx, *caravan)?;
                if self.live_of(local).is_some() {
                    return Err(format!("holder {holder} already has a live reservation"));
                }
                self.check_next_id(*id)?;
                self.take_seat(ctx, counters, *caravan, slot)?;
                let status = if stage.is_some() {
                    Status::Held
                } else {
                    Status::Confirmed
                };
                let idx = self.push_reservation(Reservation {
                    id: *id,
                    holder: *holder,
                    caravan: *caravan,
                    status,
                    stage: *stage,
                    deadline_ms: *deadline_ms,
                    created_ms: *at_ms,
                    updated_ms: *at_ms,
                    end_reason: None,
                });
                self.latest[local as usize] = idx;
                if status == Status::Held {
                    counters.holds_live.fetch_add(1, Ordering::Relaxed);
                }
                if self.waitlist.remove(*holder) {
                    counters.waiting.fetch_sub(1, Ordering::Relaxed);
                }
                if !idempotency_key.is_empty() {
                    self.remember(
                        local,
                        IdempotencyEntry {
                            key: idempotency_key.clone().into_boxed_slice(),
                            op: KeyedOp::Reserve { caravan: *caravan },
                            at_ms: *at_ms,
                            answer: KeyAnswer::Reservation {
                                id: *id,
                                status,
                                stage: *stage,
                                deadline_ms: *deadline_ms,
                            },
                        },
                    );
                }
                self.push_timer(counters, *deadline_ms, idx);
            }
            Record::Advance {
                id,
                at_ms,
                stage,
                deadline_ms,
                keyed,
            } => {
                let idx = self
                    .find(*id)
                    .ok_or_else(|| format!("unknown reservation {id}"))?;
                let r = &mut self.reservations[idx.index()];
                let was = r.status;
                if !matches!(was, Status::Held | Status::Offered) {
                    return Err(format!("reservation {id} cannot advance from {was:?}"));
                }
                r.status = if stage.is_some() {
                    Status::Held
                } else {
                    Status::Confirmed
                };
                r.stage = *stage;
                r.deadline_ms = *deadline_ms;
                r.updated_ms = *at_ms;
                if r.status == Status::Confirmed {
                    counters.holds_live.fetch_sub(1, Ordering::Relaxed);
                }
                self.push_timer(counters, *deadline_ms, idx);
                if let Some(keyed) = keyed {
                    self.remember_on(ctx, keyed, idx, *at_ms)?;
                }
            }
            Record::End {
                id,
                at_ms,
                reason,
                offer,
                keyed,
            } => {
                self.apply_end(ctx, counters, *id, *at_ms, *reason, offer.as_ref())?;
                if let Some(keyed) = keyed {
                    self.remember_on(ctx, keyed, id.slot, *at_ms)?;
                }
            }
            Record::Join {
                holder,
                at_ms,
                keyed,
            } => {
                let local = self.local_holder(ctx, *holder)?;
                if self.live_of(local).is_some() {
                    return Err(format!("holder {holder} joins while holding a seat"));
                }
                let h = ctx
                    .catalog
                    .holder_facts(*holder)
                    .ok_or_else(|| format!("unknown holder {holder}"))?;
                let h = self.facts_in_force(h);
                if !self.waitlist.join(*holder, h.receipt_day, h.city) {
                    return Err(format!("holder {holder} is already waiting"));
                }
                counters.waiting.fetch_add(1, Ordering::Relaxed);
                if let Some(keyed) = keyed {
                    let position = self.waitlist.position(*holder).unwrap_or(0);
                    self.remember(
                        local,
                        IdempotencyEntry {
                            key: keyed.key.clone().into_boxed_slice(),
                            op: KeyedOp::Join,
                            at_ms: *at_ms,
                            answer: KeyAnswer::Place { position },
                        },
                    );
                }
            }
            Record::Schedule { waves, .. } => {
                self.set_schedule(
                    ctx.catalog,
                    Arc::new(Schedule {
                        waves: waves.clone(),
                    }),
                );
            }
            Record::Transfer { .. } | Record::Dispatch { .. } => self.apply_profile(ctx, record)?,
            Record::QueueSeed { .. } | Record::QueueJoin { .. } | Record::QueueAdmit { .. } => {
                return Err("a waiting-room record belongs to the global shard".into());
            }
        }
        Ok(())
    }

    /// Restores an empty shard from a snapshot's image, through the same seat rule as `apply`.
    /// Returns an error, leaving the shard unusable, if the image does not fit the catalog
    /// (a damaged or foreign snapshot): the caller refuses to start.
    pub fn restore(
        &mut self,
        ctx: &Ctx<'_>,
        counters: &ShardCounters,
        image: ShardImage,
    ) -> Result<(), String> {
        if !self.reservations.is_empty() || self.waitlist.len() > 0 {
            return Err("a snapshot is restored into an empty shard only".into());
        }
        for mut r in image.reservations {
            r.id = ReservationId {
                shard: self.province,
                slot: SlotIdx(self.reservations.len() as u32),
                secret: r.id.secret,
            };
            let local = self.local_holder(ctx, r.holder)?;
            let slot = self.local_caravan(ctx, r.caravan)?;
            if r.status.is_live() {
                if self.live_of(local).is_some() {
                    return Err(format!("holder {} has two live reservations", r.holder));
                }
                self.take_seat(ctx, counters, r.caravan, slot)?;
                if r.status != Status::Confirmed {
                    counters.holds_live.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(deadline_ms) = r.deadline_ms {
                    self.timers.push(Reverse((deadline_ms, r.id.slot)));
                }
            }
            let idx = self.push_reservation(r);
            self.latest[local as usize] = idx;
        }
        self.publish_next_deadline(counters);
        for (holder, key, city) in image.waiting {
            let local = self.local_holder(ctx, holder)?;
            if self.live_of(local).is_some() {
                return Err(format!("holder {holder} waits while holding a seat"));
            }
            if !self.waitlist.insert(holder, key, city) {
                return Err(format!("holder {holder} waits twice"));
            }
            counters.waiting.fetch_add(1, Ordering::Relaxed);
        }
        self.waitlist
            .set_next_join_seq(image.next_join_seq.max(self.waitlist.next_join_seq()));
        for (local, entry) in image.keys {
            if local as usize >= self.latest.len() {
                return Err(format!("a remembered key of unknown holder {local}"));
            }
            self.idempotency.entry(local).or_default().push(entry);
        }
        for (holder, profile) in image.profiles {
            let local = self.local_holder(ctx, holder)?;
            let in_province = ctx
                .catalog
                .cities()
                .get(profile.city.index())
                .is_some_and(|c| c.province == self.province);
            if !in_province || self.profiles.insert(local, profile).is_some() {
                return Err(format!("holder {holder}: a bad or repeated profile"));
            }
        }
        Ok(())
    }

    /// Returns an error unless `id` names the next free slot of this shard.
    fn check_next_id(&self, id: ReservationId) -> Result<(), String> {
        if id.shard != self.province || id.slot.index() != self.reservations.len() {
            return Err(format!(
                "reservation {id} does not name the next slot ({}) of shard {}",
                self.reservations.len(),
                self.province
            ));
        }
        Ok(())
    }

    fn push_reservation(&mut self, reservation: Reservation) -> SlotIdx {
        let idx = SlotIdx(self.reservations.len() as u32);
        self.reservations.push(reservation);
        idx
    }

    /// The seat rule, the one place it is written: free seats of `caravan` (of this province)
    /// are its capacity less its live reservations (held, offered, confirmed). 0 for a caravan
    /// of another province.
    pub fn seats_free(&self, ctx: &Ctx<'_>, caravan: CaravanIdx) -> u32 {
        let Some(c) = ctx.catalog.caravans().get(caravan.index()) else {
            return 0;
        };
        if c.province != self.province {
            return 0;
        }
        let slot = ctx.caravan_local[caravan.index()] as usize;
        c.capacity.saturating_sub(self.occupied[slot])
    }

    fn take_seat(
        &mut self,
        ctx: &Ctx<'_>,
        counters: &ShardCounters,
        caravan: CaravanIdx,
        slot: usize,
    ) -> Result<(), String> {
        let capacity = ctx.catalog.caravans()[caravan.index()].capacity;
        if self.seats_free(ctx, caravan) == 0 {
            return Err(format!("caravan {caravan} would be over capacity"));
        }
        // Lower the public counter first: readers may see one seat fewer for a moment, never
        // one more.
        counters.free[slot].fetch_sub(1, Ordering::AcqRel);
        counters.free_total.fetch_sub(1, Ordering::AcqRel);
        self.occupied[slot] += 1;
        assert!(self.occupied[slot] <= capacity, "caravan over capacity");
        Ok(())
    }

    fn release_seat(&mut self, counters: &ShardCounters, slot: usize) {
        assert!(
            self.occupied[slot] > 0,
            "released a seat that was not taken"
        );
        self.occupied[slot] -= 1;
        counters.free[slot].fetch_add(1, Ordering::AcqRel);
        counters.free_total.fetch_add(1, Ordering::AcqRel);
    }

    fn apply_end(
        &mut self,
        ctx: &Ctx<'_>,
        counters: &ShardCounters,
        id: ReservationId,
        at_ms: i64,
        reason: crate::model::EndReason,
        offer: Option<&Offer>,
    ) -> Result<(), String> {
        let idx = self
            .find(id)
            .ok_or_else(|| format!("unknown reservation {id}"))?;
        let (caravan, was) = {
            let r = &self.reservations[idx.index()];
            (r.caravan, r.status)
        };
        if !was.is_live() {
            return Err(format!("reservation {id} already ended"));
        }
        let slot = self.local_caravan(ctx, caravan)?;
        if let Some(offer) = offer {
            let local = self.local_holder(ctx, offer.holder)?;
            if !self.waitlist.contains(offer.holder) || self.live_of(local).is_some() {
                return Err(format!(
                    "offer to holder {} who is not waiting",
                    offer.holder
                ));
            }
            self.check_next_id(offer.id)?;
        }
        let r = &mut self.reservations[idx.index()];
        r.status = reason.status();
        r.end_reason = Some(reason);
        r.stage = None;
        r.deadline_ms = None;
        r.updated_ms = at_ms;
        if matches!(was, Status::Held | Status::Offered) {
            counters.holds_live.fetch_sub(1, Ordering::Relaxed);
        }
        match offer {
            None => self.release_seat(counters, slot),
            Some(offer) => {
                if crate::planted::active(crate::sim::Defect::SeatReleasedTwice) {
                    self.release_seat(counters, slot);
                }
                // The seat passes straight to the offeree: occupancy does not change.
                self.waitlist.remove(offer.holder);
                counters.waiting.fetch_sub(1, Ordering::Relaxed);
                let offered = self.push_reservation(Reservation {
                    id: offer.id,
                    holder: offer.holder,
                    caravan,
                    status: Status::Offered,
                    stage: None,
                    deadline_ms: Some(offer.deadline_ms),
                    created_ms: at_ms,
                    updated_ms: at_ms,
                    end_reason: None,
                });
                let local = self.local_holder(ctx, offer.holder)?;
                self.latest[local as usize] = offered;
                counters.holds_live.fetch_add(1, Ordering::Relaxed);
                self.push_timer(counters, Some(offer.deadline_ms), offered);
            }
        }
        Ok(())
    }
}
