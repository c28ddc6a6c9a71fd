//! The engine's reads: free seats from the lock-free counters, reservations, the waiting list,
//! the schedule, counts for operators, and the invariant check over the whole state.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::catalog::{CaravanIdx, HolderIdx, ProvinceIdx, SlotIdx};
use crate::model::{ReservationId, ReservationView, Status, WaitlistStatus};
use crate::season::Schedule;

use super::Engine;

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

impl Engine {
    /// Free seats of `caravan` (0 for an unknown one), without taking any lock.
    pub fn free_seats(&self, caravan: CaravanIdx) -> u32 {
        let Some(c) = self.catalog.caravans().get(caravan.index()) else {
            return 0;
        };
        let slot = self.caravan_local[caravan.index()] as usize;
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
            .map(|&c| u64::from(self.catalog.caravans()[c.index()].capacity))
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
                if let Some(view) = st.view(&self.catalog, SlotIdx(idx as u32)) {
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
            stats.seats_total += self.province_seats_total(ProvinceIdx(p as u16));
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

    /// Checks the invariants over the whole state: no caravan above capacity, counters equal
    /// to what they count, at most one live reservation per holder, waiting holders hold no
    /// seat. Returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (p, shard) in self.shards.iter().enumerate() {
            let st = shard.state.lock();
            let caravans = self.catalog.caravans_of_province(ProvinceIdx(p as u16));
            let mut live = vec![0u32; caravans.len()];
            let mut live_per_holder = rustc_hash::FxHashMap::<HolderIdx, u32>::default();
            for r in st.reservations.iter().filter(|r| r.status.is_live()) {
                live[self.caravan_local[r.caravan.index()] as usize] += 1;
                *live_per_holder.entry(r.holder).or_default() += 1;
            }
            let mut free_total = 0u32;
            for (slot, &c) in caravans.iter().enumerate() {
                let capacity = self.catalog.caravans()[c.index()].capacity;
                let caravan_id = &self.catalog.caravans()[c.index()].id;
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
