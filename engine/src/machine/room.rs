//! The waiting rooms as state-machine state: one queue per wave that has a room, kept on the
//! global shard. A room exists once its seed record is applied; joins and the outflow's
//! progress are records too, so replay (and a snapshot's image) rebuilds the same places and
//! the same admissions.
//!
//! `decide_*` read the rooms and return a record (or nothing to log); `apply` is the one
//! place the rooms change. Both are pure: the seed is drawn by the caller, the outflow rate is
//! the caller's.

use rustc_hash::FxHashMap;

use crate::catalog::HolderIdx;
use crate::record::Record;
use crate::waiting_room::{Standing, WaitingRoom};

/// One wave's room.
#[derive(Debug)]
pub(crate) struct Room {
    /// The wave's name.
    pub wave: String,
    /// The opening the room was seeded for (early joiners are drawn at it).
    pub opens_at_ms: i64,
    /// The seed of the early joiners' draw.
    pub seed: u64,
    queue: WaitingRoom,
    /// Every join, in arrival order, with its instant (what a snapshot stores: replaying the
    /// joins in order rebuilds the same places).
    joins: Vec<(HolderIdx, i64)>,
    /// Holder -> index in `joins`.
    joined: FxHashMap<HolderIdx, u32>,
    /// Places below this are admitted.
    pub admitted: u64,
    /// Since when the outflow has been earning admissions: the last admission, or the join
    /// that found everyone before admitted.
    pub outflow_since_ms: i64,
    /// Each move of the outflow: (admitted after it, its instant), in order.
    admissions: Vec<(u64, i64)>,
}

/// Where a holder stands in a room, as answered to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomStanding {
    /// Their place (0 first), `None` until the early joiners are drawn at the opening.
    pub place: Option<u64>,
    /// Holders not yet admitted ahead of them (0 once admitted).
    pub ahead: u64,
    /// When they were admitted, if they are.
    pub admitted_at_ms: Option<i64>,
    /// When they joined.
    pub joined_at_ms: i64,
}

impl Room {
    fn new(wave: String, opens_at_ms: i64, seed: u64) -> Room {
        Room {
            wave,
            opens_at_ms,
            seed,
            queue: WaitingRoom::new(opens_at_ms, seed),
            joins: Vec::new(),
            joined: FxHashMap::default(),
            admitted: 0,
            outflow_since_ms: opens_at_ms,
            admissions: Vec::new(),
        }
    }

    /// How many holders joined.
    pub fn len(&self) -> u64 {
        self.queue.len()
    }

    /// Holders joined and not yet admitted.
    pub fn waiting(&self) -> u64 {
        self.len().saturating_sub(self.admitted)
    }

    /// Where `holder` stands at `now_ms`, if they joined (draws the early order at the
    /// opening: the draw depends on the seed and the early joiners only, so when it happens
    /// changes nothing).
    pub fn standing(&mut self, holder: HolderIdx, now_ms: i64) -> Option<RoomStanding> {
        let &index = self.joined.get(&holder)?;
        let joined_at_ms = self.joins.get(index as usize).map_or(0, |j| j.1);
        let place = match self.queue.standing(holder, now_ms)? {
            Standing::AwaitingDraw => None,
            Standing::Place(p) => Some(p),
        };
        let admitted_at_ms = place.filter(|&p| p < self.admitted).map(|p| {
            // The first admission whose count passed the place.
            let i = self.admissions.partition_point(|&(count, _)| count <= p);
            self.admissions.get(i).map_or(self.opens_at_ms, |a| a.1)
        });
        let ahead = match place {
            None => self.waiting(),
            Some(p) => p.saturating_sub(self.admitted),
        };
        Some(RoomStanding {
            place,
            ahead,
            admitted_at_ms,
            joined_at_ms,
        })
    }

    fn join(&mut self, holder: HolderIdx, at_ms: i64) -> Result<(), String> {
        if self.joined.contains_key(&holder) {
            return Err(format!(
                "holder {holder} already joined room {:?}",
                self.wave
            ));
        }
        if at_ms >= self.opens_at_ms && self.waiting() == 0 {
            // The outflow was idle with nobody waiting: it earns from now, not from before.
            self.outflow_since_ms = self.outflow_since_ms.max(at_ms);
        }
        self.queue.join(holder, at_ms);
        self.joined.insert(holder, self.joins.len() as u32);
        self.joins.push((holder, at_ms));
        Ok(())
    }

    fn admit(&mut self, admitted: u64, at_ms: i64) -> Result<(), String> {
        if admitted <= self.admitted || admitted > self.len() {
            return Err(format!(
                "room {:?}: admitting up to {admitted} with {} admitted of {}",
                self.wave,
                self.admitted,
                self.len()
            ));
        }
        self.admitted = admitted;
        self.outflow_since_ms = at_ms;
        self.admissions.push((admitted, at_ms));
        Ok(())
    }
}

/// A room as a snapshot holds it.
#[derive(Debug)]
pub(crate) struct RoomImage {
    pub wave: String,
    pub opens_at_ms: i64,
    pub seed: u64,
    pub joins: Vec<(HolderIdx, i64)>,
    pub admissions: Vec<(u64, i64)>,
    pub outflow_since_ms: i64,
}

impl Room {
    /// The room as a snapshot holds it.
    pub fn image(&self) -> RoomImage {
        RoomImage {
            wave: self.wave.clone(),
            opens_at_ms: self.opens_at_ms,
            seed: self.seed,
            joins: self.joins.clone(),
            admissions: self.admissions.clone(),
            outflow_since_ms: self.outflow_since_ms,
        }
    }
}

/// Every waiting room, in the order they were seeded (few: one per wave at most).
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: Vec<Room>,
}

/// What deciding a join found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinDecision {
    /// The room has no seed yet: the caller draws one and logs [`Record::QueueSeed`] first.
    NeedsSeed,
    /// The holder had joined already: nothing to log.
    Joined,
    /// Log and apply this record.
    Log(Record),
}

impl Rooms {
    /// The room of wave `wave`, if it was seeded.
    pub fn get(&self, wave: &str) -> Option<&Room> {
        self.rooms.iter().find(|r| r.wave == wave)
    }

    /// The room of wave `wave`, if it was seeded, for a read that may draw.
    pub fn get_mut(&mut self, wave: &str) -> Option<&mut Room> {
        self.rooms.iter_mut().find(|r| r.wave == wave)
    }

    /// Every room.
    pub fn iter(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter()
    }

    /// Decides `holder` joining wave `wave`'s room at `now_ms`.
    pub fn decide_join(&self, wave: &str, holder: HolderIdx, now_ms: i64) -> JoinDecision {
        match self.get(wave) {
            None => JoinDecision::NeedsSeed,
            Some(room) if room.joined.contains_key(&holder) => JoinDecision::Joined,
            Some(_) => JoinDecision::Log(Record::QueueJoin {
                wave: wave.to_owned(),
                holder,
                at_ms: now_ms,
            }),
        }
    }

    /// Decides the outflow of wave `wave`'s room at `now_ms` at `per_second` places a second:
    /// the admissions earned since it last moved, never past the last joiner and never before
    /// the opening. `None` when nothing is to be logged.
    pub fn decide_admit(&self, wave: &str, per_second: f64, now_ms: i64) -> Option<Record> {
        let room = self.get(wave)?;
        if now_ms < room.opens_at_ms
            || room.waiting() == 0
            || per_second.is_nan()
            || per_second <= 0.0
        {
            return None;
        }
        let elapsed_ms = now_ms.saturating_sub(room.outflow_since_ms).max(0);
        let earned = (per_second * elapsed_ms as f64 / 1_000.0).floor();
        if earned < 1.0 {
            return None;
        }
        let earned = if earned >= u64::MAX as f64 {
            u64::MAX
        } else {
            earned as u64
        };
        let admitted = room.admitted.saturating_add(earned).min(room.len());
        Some(Record::QueueAdmit {
            wave: wave.to_owned(),
            at_ms: now_ms,
            admitted,
        })
    }

    /// Applies a waiting-room record; any other record, or one that does not fit the rooms,
    /// is an error.
    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::QueueSeed {
                wave,
                opens_at_ms,
                seed,
                ..
            } => {
                if self.get(wave).is_some() {
                    return Err(format!("room {wave:?} seeded twice"));
                }
                self.rooms
                    .push(Room::new(wave.clone(), *opens_at_ms, *seed));
                Ok(())
            }
            Record::QueueJoin {
                wave,
                holder,
                at_ms,
            } => self
                .get_mut(wave)
                .ok_or_else(|| format!("a join before room {wave:?} was seeded"))?
                .join(*holder, *at_ms),
            Record::QueueAdmit {
                wave,
                at_ms,
                admitted,
            } => self
                .get_mut(wave)
                .ok_or_else(|| format!("an admission before room {wave:?} was seeded"))?
                .admit(*admitted, *at_ms),
            other => Err(format!("record kind {} is not a room's", other.kind())),
        }
    }

    /// Restores one room from a snapshot: its seed, its joins in arrival order (which rebuild
    /// the same places), its admissions in order, and when the outflow started earning.
    pub fn restore(&mut self, image: RoomImage) -> Result<(), String> {
        let RoomImage {
            wave,
            opens_at_ms,
            seed,
            joins,
            admissions,
            outflow_since_ms,
        } = image;
        let (joins, admissions) = (&joins, &admissions);
        let seed_record = Record::QueueSeed {
            wave: wave.clone(),
            at_ms: opens_at_ms,
            opens_at_ms,
            seed,
        };
        self.apply(&seed_record)?;
        let Some(room) = self.get_mut(&wave) else {
            return Err(format!("room {wave:?} vanished while restoring"));
        };
        for &(holder, at_ms) in joins {
            room.join(holder, at_ms)?;
        }
        for &(count, at_ms) in admissions {
            room.admit(count, at_ms)?;
        }
        // Stored, not rebuilt: it depends on how joins and admissions interleaved.
        room.outflow_since_ms = outflow_since_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENS: i64 = 10_000;

    fn seeded(seed: u64) -> Rooms {
        let mut rooms = Rooms::default();
        rooms
            .apply(&Record::QueueSeed {
                wave: "main".into(),
                at_ms: 0,
                opens_at_ms: OPENS,
                seed,
            })
            .expect("seed");
        rooms
    }

    fn join(rooms: &mut Rooms, holder: u32, at_ms: i64) {
        match rooms.decide_join("main", HolderIdx(holder), at_ms) {
            JoinDecision::Log(record) => rooms.apply(&record).expect("join applies"),
            other => panic!("holder {holder}: {other:?}"),
        }
    }

    #[test]
    fn a_join_needs_a_seed_first_and_a_holder_has_one_place() {
        let rooms = Rooms::default();
        assert_eq!(
            rooms.decide_join("main", HolderIdx(1), 0),
            JoinDecision::NeedsSeed
        );
        let mut rooms = seeded(3);
        join(&mut rooms, 1, OPENS + 1);
        assert_eq!(
            rooms.decide_join("main", HolderIdx(1), OPENS + 2),
            JoinDecision::Joined
        );
        // A second join record for the same holder does not apply.
        let again = Record::QueueJoin {
            wave: "main".into(),
            holder: HolderIdx(1),
            at_ms: OPENS + 3,
        };
        assert!(rooms.apply(&again).is_err());
        assert!(
            rooms
                .apply(&Record::QueueSeed {
                    wave: "main".into(),
                    at_ms: 0,
                    opens_at_ms: OPENS,
                    seed: 4,
                })
                .is_err()
        );
    }

    #[test]
    fn the_outflow_admits_at_its_rate_from_the_opening_and_never_past_the_last_joiner() {
        let mut rooms = seeded(9);
        for h in 0..10 {
            join(&mut rooms, h, h as i64);
        }
        assert_eq!(rooms.decide_admit("main", 100.0, OPENS - 1), None);
        // 2 per second: 1.5 s after the opening, 3 places.
        let record = rooms
            .decide_admit("main", 2.0, OPENS + 1_500)
            .expect("earned");
        assert_eq!(
            record,
            Record::QueueAdmit {
                wave: "main".into(),
                at_ms: OPENS + 1_500,
                admitted: 3
            }
        );
        rooms.apply(&record).expect("admit");
        let record = rooms
            .decide_admit("main", 1_000.0, OPENS + 60_000)
            .expect("earned");
        rooms.apply(&record).expect("admit");
        assert_eq!(rooms.get("main").map(|r| r.admitted), Some(10));
        assert_eq!(rooms.decide_admit("main", 1_000.0, OPENS + 90_000), None);
        // A joiner after an idle spell earns nothing from the idle time.
        join(&mut rooms, 50, OPENS + 100_000);
        assert_eq!(rooms.decide_admit("main", 1.0, OPENS + 100_500), None);
        assert!(rooms.decide_admit("main", 1.0, OPENS + 101_000).is_some());
    }

    #[test]
    fn standing_reports_place_people_ahead_and_admission_time() {
        let mut rooms = seeded(5);
        for h in 0..4 {
            join(&mut rooms, h, 0);
        }
        let early = rooms
            .get_mut("main")
            .and_then(|room| room.standing(HolderIdx(2), OPENS - 1));
        assert_eq!(
            early.map(|s| (s.place, s.ahead)),
            Some((None, 4)),
            "drawn at the opening only"
        );
        join(&mut rooms, 7, OPENS + 10);
        let room = rooms.get_mut("main").expect("room");
        let late = room.standing(HolderIdx(7), OPENS + 10).expect("joined");
        assert_eq!(late.place, Some(4));
        assert_eq!(late.ahead, 4);
        room.admit(2, OPENS + 500).expect("admit");
        room.admit(5, OPENS + 900).expect("admit");
        let late = room.standing(HolderIdx(7), OPENS + 1_000).expect("joined");
        assert_eq!(late.admitted_at_ms, Some(OPENS + 900));
        let first = (0..4)
            .filter_map(|h| room.standing(HolderIdx(h), OPENS + 1_000))
            .find(|s| s.place == Some(0))
            .expect("someone is first");
        assert_eq!(first.admitted_at_ms, Some(OPENS + 500));
        assert_eq!(room.standing(HolderIdx(99), OPENS), None);
    }

    #[test]
    fn a_restored_room_has_the_same_places_and_admissions() {
        let mut rooms = seeded(11);
        for h in 0..20 {
            join(&mut rooms, h, h as i64);
        }
        let admit = rooms
            .decide_admit("main", 5.0, OPENS + 1_000)
            .expect("earned");
        rooms.apply(&admit).expect("admit");
        for h in 20..30 {
            join(&mut rooms, h, OPENS + 2_000 + h as i64);
        }
        let room = rooms.get_mut("main").expect("room");
        let mut copy = Rooms::default();
        copy.restore(room.image()).expect("restores");
        let restored = copy.get_mut("main").expect("room");
        for h in 0..30 {
            assert_eq!(
                room.standing(HolderIdx(h), OPENS + 5_000),
                restored.standing(HolderIdx(h), OPENS + 5_000),
                "holder {h}"
            );
        }
        assert_eq!(room.outflow_since_ms, restored.outflow_since_ms);
    }
}
