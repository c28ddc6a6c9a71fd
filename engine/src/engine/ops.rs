//! The commands callers give the engine: reserve, cancel, accept an offer, operator events,
//! joining the waiting list, and replacing the schedule. Each resolves its shard, decides with
//! the state machine and commits the record (see `Engine::run`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::catalog::{CaravanIdx, HolderIdx};
use crate::error::EngineError;
use crate::machine::{Command, Reply, decide_schedule};
use crate::model::{OperatorEvent, ReservationId, ReservationView, WaitlistPlace};
use crate::record::Record;
use crate::season::{Schedule, Wave, WaveOrder};

use super::{Committed, Engine, IDEMPOTENCY_KEY_BYTES_MAX, ReserveOutcome};

impl Engine {
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
        if self.catalog.caravans().get(caravan.index()).is_none() {
            return Err(EngineError::CaravanNotFound);
        }
        let key = checked_key(idempotency_key)?;
        self.run_on_reservation(
            p,
            Command::Reserve {
                holder,
                caravan,
                key,
            },
            |reservation, replayed| ReserveOutcome {
                reservation,
                replayed,
            },
        )
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
        self.run_on_reservation(p, Command::Cancel { holder, id, key }, |v, r| (v, r))
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
        self.run_on_reservation(p, Command::Accept { holder, id, key }, |v, r| (v, r))
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
        self.run_on_reservation(
            usize::from(id.shard),
            Command::Event { id, event, key },
            |v, r| (v, r),
        )
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
        let ran = self.run(p, &mut st, Command::Join { holder, key }, now_ms)?;
        let ticket = ran.ticket;
        let (position, replayed) = match ran.reply {
            Reply::PlaceReplayed(position) => (position, true),
            _ => (st.waitlist.position(holder).unwrap_or(0), false),
        };
        let place = WaitlistPlace {
            province: st.province,
            position,
        };
        drop(st);
        self.wake_expiry_if_earlier(ran.wake_at);
        Ok(Committed {
            value: (place, replayed),
            ticket,
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
}

/// The key bytes of an optional `Idempotency-Key` (empty for none); refused if longer than
/// [`IDEMPOTENCY_KEY_BYTES_MAX`].
pub(super) fn checked_key(key: Option<&[u8]>) -> Result<&[u8], EngineError> {
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
