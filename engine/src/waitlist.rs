//! A province's waiting list: ordered by receipt date then join order, with O(log n) positions
//! and offers that go to the first waiting holder of the freed seat's city.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use crate::catalog::{CityIdx, HolderIdx};

/// The place of one waiting holder: its sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WaitKey {
    pub receipt_day: i32,
    pub join_seq: u64,
}

/// One province's waiting list. Bounded by construction: a holder is on it at most once, and
/// only the province's own holders can join.
#[derive(Clone, Debug)]
pub(crate) struct Waitlist {
    /// Receipt days are stored relative to this, as Fenwick tree positions.
    day_base: i32,
    /// Counts of waiting holders per receipt day, as a Fenwick tree (1-based).
    day_counts: Vec<u32>,
    order: BTreeMap<WaitKey, HolderIdx>,
    by_city: FxHashMap<CityIdx, BTreeSet<(WaitKey, HolderIdx)>>,
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
            order: BTreeMap::new(),
            by_city: FxHashMap::default(),
            entries: FxHashMap::default(),
            next_join_seq: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
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
        if self.entries.contains_key(&holder) {
            return false;
        }
        // Saturating: a restored key may carry any sequence (snapshots are outside bytes).
        self.next_join_seq = self.next_join_seq.max(key.join_seq.saturating_add(1));
        self.entries.insert(holder, (key, city));
        self.order.insert(key, holder);
        self.by_city.entry(city).or_default().insert((key, holder));
        self.fenwick_add(key.receipt_day, 1);
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
        self.order.remove(&key);
        if let Some(set) = self.by_city.get_mut(&city) {
            set.remove(&(key, holder));
            if set.is_empty() {
                self.by_city.remove(&city);
            }
        }
        self.fenwick_add(key.receipt_day, -1);
        true
    }

    /// The first waiting holder of `city`, if any.
    pub fn head_of_city(&self, city: CityIdx) -> Option<HolderIdx> {
        self.by_city
            .get(&city)
            .and_then(|set| set.first())
            .map(|&(_, holder)| holder)
    }

    /// The 1-based position of `holder` in the whole province's order.
    pub fn position(&self, holder: HolderIdx) -> Option<u64> {
        let (key, _) = self.entries.get(&holder)?;
        let earlier_days = self.fenwick_prefix(key.receipt_day.saturating_sub(1));
        let same_day_earlier = self
            .order
            .range(
                WaitKey {
                    receipt_day: key.receipt_day,
                    join_seq: 0,
                }..*key,
            )
            .count() as u64;
        Some(earlier_days + same_day_earlier + 1)
    }

    /// Every waiting holder with its key and city, in order.
    pub fn iter(&self) -> impl Iterator<Item = (HolderIdx, WaitKey, CityIdx)> + '_ {
        self.order.iter().map(|(key, holder)| {
            let city = self.entries.get(holder).map_or(CityIdx(0), |e| e.1);
            (*holder, *key, city)
        })
    }

    fn slot(&self, day: i32) -> Option<usize> {
        let offset = i64::from(day) - i64::from(self.day_base);
        if offset < 0 {
            return None;
        }
        let slot = offset as usize + 1;
        Some(slot.min(self.day_counts.len() - 1))
    }

    fn fenwick_add(&mut self, day: i32, delta: i32) {
        // Days outside the range were clamped at construction; clamp here the same way.
        let mut i = self.slot(day).unwrap_or(1);
        while i < self.day_counts.len() {
            self.day_counts[i] = self.day_counts[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    fn fenwick_prefix(&self, day: i32) -> u64 {
        let Some(mut i) = self.slot(day) else {
            return 0;
        };
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
}
