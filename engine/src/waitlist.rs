//! A province's waiting list: ordered by receipt date then join order, with O(log n) positions
//! and offers that go to the first waiting holder of the freed seat's city.
//!
//! Built for replay speed (a full opening day holds hundreds of thousands of joins): a join is
//! a push onto its receipt day's sorted run, a push onto its city's heap and one hashed insert,
//! with no tree nodes to allocate. Positions are a Fenwick prefix over the days before the
//! holder's plus a binary search within its day.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::catalog::{CityIdx, HolderIdx};

/// The place of one waiting holder: its sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WaitKey {
    pub receipt_day: i32,
    pub join_seq: u64,
}

/// The waiting holders of one city, first-in-order on top. Removing a holder that is not on
/// top leaves a stale entry behind, dropped when it surfaces (or when the heap is rebuilt), so
/// the top is always a holder still waiting.
#[derive(Clone, Debug, Default)]
struct CityQueue {
    heap: BinaryHeap<Reverse<(WaitKey, HolderIdx)>>,
    live: usize,
}

/// One province's waiting list. Bounded by construction: a holder is on it at most once, and
/// only the province's own holders can join.
#[derive(Clone, Debug)]
pub(crate) struct Waitlist {
    /// Receipt days are stored relative to this, as Fenwick tree positions.
    day_base: i32,
    /// Counts of waiting holders per receipt day, as a Fenwick tree (1-based).
    day_counts: Vec<u32>,
    /// The waiting holders of each Fenwick slot (a receipt day), sorted by key.
    by_slot: FxHashMap<usize, Vec<(WaitKey, HolderIdx)>>,
    by_city: FxHashMap<CityIdx, CityQueue>,
    entries: FxHashMap<HolderIdx, (WaitKey, CityIdx)>,
    next_join_seq: u64,
}

impl Waitlist {
    /// An empty list for holders whose receipt days lie in `first_day..=last_day`.
    pub fn new(first_day: i32, last_day: i32) -> Waitlist {
        let span = (i64::from(last_day) - i64::from(first_day) + 1).clamp(1, 1 << 20) as usize;
        Waitlist {
            day_base: first_day,
            day_counts: vec![0; span + 1],
            by_slot: FxHashMap::default(),
            by_city: FxHashMap::default(),
            entries: FxHashMap::default(),
            next_join_seq: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, holder: HolderIdx) -> bool {
        self.entries.contains_key(&holder)
    }

    /// The join sequence the next joiner gets (persisted in snapshots).
    pub fn next_join_seq(&self) -> u64 {
        self.next_join_seq
    }

    pub fn set_next_join_seq(&mut self, seq: u64) {
        self.next_join_seq = seq;
    }

    /// Adds `holder`; returns `false` (and changes nothing) if it is already waiting.
    pub fn join(&mut self, holder: HolderIdx, receipt_day: i32, city: CityIdx) -> bool {
        let key = WaitKey {
            receipt_day,
            join_seq: self.next_join_seq,
        };
        self.insert(holder, key, city)
    }

    /// Adds `holder` at `key` (snapshot restore); returns `false` if it is already waiting.
    pub fn insert(&mut self, holder: HolderIdx, key: WaitKey, city: CityIdx) -> bool {
        match self.entries.entry(holder) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((key, city));
            }
        }
        // Saturating: a restored key may carry any sequence (snapshots are outside bytes).
        self.next_join_seq = self.next_join_seq.max(key.join_seq.saturating_add(1));
        let slot = self.slot_or_first(key.receipt_day);
        let run = self.by_slot.entry(slot).or_default();
        // Joins come in sequence order, so this is a push at the end but for restored keys.
        match run.last() {
            Some(&(last, _)) if last > key => {
                let at = run.partition_point(|&(k, _)| k < key);
                run.insert(at, (key, holder));
            }
            _ => run.push((key, holder)),
        }
        let queue = self.by_city.entry(city).or_default();
        queue.heap.push(Reverse((key, holder)));
        queue.live += 1;
        self.fenwick_add(slot, 1);
        true
    }

    /// Removes `holder`; returns whether it was waiting.
    pub fn remove(&mut self, holder: HolderIdx) -> bool {
        // Every reservation asks; during the rush nobody waits yet, so skip the hashing.
        if self.entries.is_empty() {
            return false;
        }
        let Some((key, city)) = self.entries.remove(&holder) else {
            return false;
        };
        let slot = self.slot_or_first(key.receipt_day);
        if let Some(run) = self.by_slot.get_mut(&slot) {
            if let Ok(at) = run.binary_search(&(key, holder)) {
                run.remove(at);
            }
            if run.is_empty() {
                self.by_slot.remove(&slot);
            }
        }
        if let Some(queue) = self.by_city.get_mut(&city) {
            queue.live = queue.live.saturating_sub(1);
            if queue.live == 0 {
                self.by_city.remove(&city);
            } else {
                let entries = &self.entries;
                // Live means waiting now with this very key in this very city: a holder who
                // left and came back elsewhere with the same key (a restore) must not revive
                // the entry left behind here.
                let waiting = |&Reverse((k, h)): &Reverse<(WaitKey, HolderIdx)>| {
                    entries
                        .get(&h)
                        .is_some_and(|&(live, live_city)| live == k && live_city == city)
                };
                if queue.heap.len() > 2 * queue.live + 64 {
                    // Mostly stale: rebuild from the holders still waiting.
                    queue.heap.retain(waiting);
                }
                while queue.heap.peek().is_some_and(|top| !waiting(top)) {
                    queue.heap.pop();
                }
            }
        }
        self.fenwick_add(slot, -1);
        true
    }

    /// The first waiting holder of `city`, if any.
    pub fn head_of_city(&self, city: CityIdx) -> Option<HolderIdx> {
        self.by_city
            .get(&city)
            .and_then(|queue| queue.heap.peek())
            .map(|&Reverse((_, holder))| holder)
    }

    /// The 1-based position of `holder` in the whole province's order.
    pub fn position(&self, holder: HolderIdx) -> Option<u64> {
        let (key, _) = self.entries.get(&holder)?;
        let slot = self.slot_or_first(key.receipt_day);
        let earlier_days = self.fenwick_prefix(slot - 1);
        let same_day_earlier =
            self.by_slot
                .get(&slot)
                .map_or(0, |run| run.partition_point(|&(k, _)| k < *key)) as u64;
        Some(earlier_days + same_day_earlier + 1)
    }

    /// Every waiting holder with its key and city, in order.
    pub fn iter(&self) -> impl Iterator<Item = (HolderIdx, WaitKey, CityIdx)> + '_ {
        let mut slots: Vec<usize> = self.by_slot.keys().copied().collect();
        slots.sort_unstable();
        slots
            .into_iter()
            .flat_map(|slot| self.by_slot.get(&slot).map_or(&[][..], Vec::as_slice))
            .map(|&(key, holder)| {
                let city = self.entries.get(&holder).map_or(CityIdx(0), |e| e.1);
                (holder, key, city)
            })
    }

    /// The 1-based Fenwick slot of `day`; days outside the range were clamped at
    /// construction, so they are clamped here the same way (days before it to the first).
    fn slot_or_first(&self, day: i32) -> usize {
        let offset = i64::from(day) - i64::from(self.day_base);
        if offset < 0 {
            return 1;
        }
        (offset as usize)
            .saturating_add(1)
            .min(self.day_counts.len() - 1)
    }

    fn fenwick_add(&mut self, slot: usize, delta: i32) {
        let mut i = slot;
        while i < self.day_counts.len() {
            self.day_counts[i] = self.day_counts[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Waiting holders in slots `1..=slot`.
    fn fenwick_prefix(&self, slot: usize) -> u64 {
        let mut i = slot.min(self.day_counts.len() - 1);
        let mut sum = 0u64;
        while i > 0 {
            sum += u64::from(self.day_counts[i]);
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_receipt_day_then_join_order() {
        let mut list = Waitlist::new(100, 200);
        assert!(list.join(HolderIdx(7), 150, CityIdx(1)));
        assert!(list.join(HolderIdx(8), 120, CityIdx(2)));
        assert!(list.join(HolderIdx(9), 150, CityIdx(1)));
        assert!(!list.join(HolderIdx(9), 150, CityIdx(1)));
        assert_eq!(list.position(HolderIdx(8)), Some(1));
        assert_eq!(list.position(HolderIdx(7)), Some(2));
        assert_eq!(list.position(HolderIdx(9)), Some(3));
        assert_eq!(list.head_of_city(CityIdx(1)), Some(HolderIdx(7)));
        assert!(list.remove(HolderIdx(7)));
        assert_eq!(list.head_of_city(CityIdx(1)), Some(HolderIdx(9)));
        assert_eq!(list.position(HolderIdx(9)), Some(2));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn restored_keys_at_the_limits_do_not_overflow() {
        let mut list = Waitlist::new(100, 200);
        let key = WaitKey {
            receipt_day: i32::MIN,
            join_seq: u64::MAX,
        };
        assert!(list.insert(HolderIdx(7), key, CityIdx(1)));
        assert_eq!(list.next_join_seq(), u64::MAX);
        assert_eq!(list.position(HolderIdx(7)), Some(1));
    }

    /// The list against a plain sorted vector: every position, every city's head and the
    /// order agree after any mix of joins, restores and removals.
    #[test]
    fn agrees_with_a_sorted_vector() {
        use proptest::prelude::*;
        let ops = proptest::collection::vec((0u8..4, 0u32..40, 95i32..210, 0u32..4), 1..300);
        proptest!(|(ops in ops)| {
            let mut list = Waitlist::new(100, 200);
            let mut model: Vec<(WaitKey, HolderIdx, CityIdx)> = Vec::new();
            for (op, holder, day, city) in ops {
                let (holder, city) = (HolderIdx(holder), CityIdx(city));
                let waiting = model.iter().any(|e| e.1 == holder);
                match op {
                    0 | 1 => {
                        let key = WaitKey { receipt_day: day, join_seq: list.next_join_seq() };
                        prop_assert_eq!(list.join(holder, day, city), !waiting);
                        if !waiting {
                            model.push((key, holder, city));
                        }
                    }
                    2 => {
                        // A restored key from earlier in the sequence.
                        let key = WaitKey { receipt_day: day, join_seq: u64::from(holder) * 7 % 11 };
                        let clash = model.iter().any(|e| e.0 == key);
                        if !clash {
                            prop_assert_eq!(list.insert(holder, key, city), !waiting);
                            if !waiting {
                                model.push((key, holder, city));
                            }
                        }
                    }
                    _ => {
                        prop_assert_eq!(list.remove(holder), waiting);
                        model.retain(|e| e.1 != holder);
                    }
                }
                // Days outside the list's range share the first or last slot.
                let slot = |d: i32| d.clamp(100, 200);
                model.sort_by_key(|e| (slot(e.0.receipt_day), e.0));
                prop_assert_eq!(list.len(), model.len());
                for (at, e) in model.iter().enumerate() {
                    prop_assert_eq!(list.position(e.1), Some(at as u64 + 1));
                }
                let listed: Vec<_> = list.iter().collect();
                let expected: Vec<_> = model.iter().map(|e| (e.1, e.0, e.2)).collect();
                prop_assert_eq!(listed, expected);
                for c in 0..4 {
                    let head = model.iter().filter(|e| e.2 == CityIdx(c)).min_by_key(|e| e.0);
                    prop_assert_eq!(list.head_of_city(CityIdx(c)), head.map(|e| e.1));
                }
            }
        });
    }
}
