//! The waiting rooms' shell: which room a holder belongs to, joining (drawing and logging the
//! room's seed first), reading a holder's standing without a shard lock, and moving the
//! outflow on. Every change is a record logged on the global shard under the rooms' lock,
//! then applied by `machine::Rooms::apply`, as replay applies it.

use rand::Rng;

use super::{Committed, Engine};
use crate::catalog::HolderIdx;
use crate::error::EngineError;
use crate::machine::{JoinDecision, RoomStanding};
use crate::record::Record;
use crate::season::RoomConfig;
use crate::wal::Ticket;

/// The room a holder belongs to: their admitting wave's, when it has one that is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomOf {
    /// The wave's index in the schedule (what a pass names).
    pub wave_index: u32,
    /// The wave's name (what the room is kept under).
    pub wave: String,
    /// The wave's opening.
    pub opens_at_ms: i64,
    /// The room's configuration.
    pub config: RoomConfig,
}

impl RoomOf {
    /// When holders may start joining.
    pub fn joins_from_ms(&self) -> i64 {
        self.opens_at_ms.saturating_sub(self.config.pre_queue_ms)
    }
}

/// One room's counts, for metrics and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomStats {
    /// The wave's name.
    pub wave: String,
    /// Holders who joined.
    pub joined: u64,
    /// Places admitted.
    pub admitted: u64,
    /// Holders joined and not yet admitted.
    pub waiting: u64,
    /// The wave's opening.
    pub opens_at_ms: i64,
}

impl Engine {
    /// The room holder `holder` belongs to, if their admitting wave has one (see
    /// [`crate::season::Schedule::admitting_wave`]).
    pub fn room_of(&self, holder: HolderIdx) -> Option<RoomOf> {
        if self.season.rooms.is_empty() {
            return None;
        }
        let facts = self.catalog.holder_facts(holder)?;
        let province = self.catalog.provinces().get(usize::from(facts.province))?;
        let schedule = self.schedule();
        let index = schedule.admitting_wave(province.id, facts.receipt_day)?;
        let wave = schedule.waves.get(index)?;
        let config = *self.season.room(&wave.name)?;
        Some(RoomOf {
            wave_index: index as u32,
            wave: wave.name.clone(),
            opens_at_ms: wave.opens_at_ms,
            config,
        })
    }

    /// `holder` joins their room: joining again changes nothing and answers the same. The
    /// room's seed is drawn (from the engine's generator, seeded by the operating system) and
    /// logged before its first place is given. Refused with [`EngineError::NoWaitingRoom`],
    /// [`EngineError::QueueNotOpen`] before the pre-queue window, or
    /// [`EngineError::ProvinceSoldOut`] when no seat of the province is free.
    pub fn queue_join(
        &self,
        holder: HolderIdx,
    ) -> Result<Committed<(RoomOf, RoomStanding)>, EngineError> {
        let room_of = self.room_of(holder).ok_or(EngineError::NoWaitingRoom)?;
        let now_ms = self.now_ms();
        if now_ms < room_of.joins_from_ms() {
            return Err(EngineError::QueueNotOpen {
                opens_at_ms: room_of.joins_from_ms(),
            });
        }
        let province = self
            .catalog
            .holder_facts(holder)
            .ok_or(EngineError::InvalidCredentials)?
            .province;
        let mut rooms = self.rooms.lock();
        let mut ticket = None;
        if rooms.get(&room_of.wave).is_none() {
            let seed: u64 = self.rng[0].lock().random();
            let record = Record::QueueSeed {
                wave: room_of.wave.clone(),
                at_ms: now_ms,
                opens_at_ms: room_of.opens_at_ms,
                seed,
            };
            ticket = self.log_global(&record)?;
            rooms.apply(&record).map_err(EngineError::Recovery)?;
        }
        match rooms.decide_join(&room_of.wave, holder, now_ms) {
            JoinDecision::Log(record) => {
                if self.province_free_seats(province) == 0 {
                    return Err(EngineError::ProvinceSoldOut);
                }
                ticket = self.log_global(&record)?.or(ticket);
                rooms.apply(&record).map_err(EngineError::Recovery)?;
            }
            JoinDecision::Joined => {}
            JoinDecision::NeedsSeed => {
                return Err(EngineError::Recovery(format!(
                    "room {:?} has no seed after seeding",
                    room_of.wave
                )));
            }
        }
        let standing = rooms
            .get_mut(&room_of.wave)
            .and_then(|room| room.standing(holder, now_ms))
            .ok_or_else(|| EngineError::Recovery("a joined holder has no standing".into()))?;
        Ok(Committed {
            value: (room_of, standing),
            ticket,
        })
    }

    /// Where `holder` stands in their room now, if they joined it. Takes the rooms' lock
    /// only (no shard lock).
    pub fn queue_standing(&self, holder: HolderIdx) -> Option<(RoomOf, RoomStanding)> {
        let room_of = self.room_of(holder)?;
        let now_ms = self.now_ms();
        let standing = self
            .rooms
            .lock()
            .get_mut(&room_of.wave)?
            .standing(holder, now_ms)?;
        Some((room_of, standing))
    }

    /// Moves wave `wave`'s outflow on to now at `per_second` places a second (the configured
    /// rate, or the measured one of an automatic outflow): logs the admissions earned since
    /// it last moved, if any. Returns the ticket of the record logged.
    pub fn advance_room(&self, wave: &str, per_second: f64) -> Result<Option<Ticket>, EngineError> {
        let now_ms = self.now_ms();
        let mut rooms = self.rooms.lock();
        let Some(record) = rooms.decide_admit(wave, per_second, now_ms) else {
            return Ok(None);
        };
        let ticket = self.log_global(&record)?;
        rooms.apply(&record).map_err(EngineError::Recovery)?;
        Ok(ticket)
    }

    /// Every room's counts.
    pub fn room_stats(&self) -> Vec<RoomStats> {
        self.rooms
            .lock()
            .iter()
            .map(|room| RoomStats {
                wave: room.wave.clone(),
                joined: room.len(),
                admitted: room.admitted,
                waiting: room.waiting(),
                opens_at_ms: room.opens_at_ms,
            })
            .collect()
    }

    /// Logs `record` on the global shard (nothing without a log).
    fn log_global(&self, record: &Record) -> Result<Option<Ticket>, EngineError> {
        let Some(wal) = &self.wal else {
            return Ok(None);
        };
        let mut payload = Vec::new();
        record.encode(&mut payload);
        Ok(Some(wal.append(
            self.shards.len() as u16,
            record.kind(),
            &payload,
        )?))
    }
}
