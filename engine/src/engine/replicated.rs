//! The engine as a replicated state machine: owned write commands with their byte form, and
//! [`Engine::execute`], which decides and applies one of them at a time and randomness given
//! by the caller (a consensus log's entry), never by this process's clock or generator.
//!
//! In cluster mode every replica runs the same commands in the same log order with the same
//! `now_ms` and secrets, so every replica makes the same decisions; the engine then runs
//! without its own log (the consensus log is the log) and without its expiry thread (expiry
//! is a command in the log too).

use std::sync::atomic::Ordering;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use crate::catalog::{CaravanIdx, CityIdx, HolderIdx, ProvinceIdx};
use crate::error::EngineError;
use crate::machine::{Command, Decision, Reply, ShardState, decide, decide_schedule};
use crate::model::{OperatorEvent, ReservationId, ReservationView, WaitlistPlace};
use crate::record::{
    KeyOp, Reader, WaveLayout, decode_waves, encode_waves, put_bytes, put_id, put_u16, put_u32,
};
use crate::season::{Wave, WaveOrder};

use super::holders::TransferRequest;
use super::ops::checked_key;
use super::{EXPIRY_BATCH_MAX, Engine};

/// A write as the replicated log carries it: ids resolved to indices, the key owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteCommand {
    /// A seat in `caravan` for `holder` ([`Engine::reserve`]).
    Reserve {
        /// Who reserves.
        holder: HolderIdx,
        /// Where.
        caravan: CaravanIdx,
        /// The `Idempotency-Key` (empty for none).
        key: Vec<u8>,
    },
    /// The holder cancels (or declines) reservation `id` ([`Engine::cancel_outcome`]).
    Cancel {
        /// Whose.
        holder: HolderIdx,
        /// Which.
        id: ReservationId,
        /// The `Idempotency-Key` (empty for none).
        key: Vec<u8>,
    },
    /// The holder accepts their offer `id` ([`Engine::accept_offer_keyed`]).
    Accept {
        /// Whose.
        holder: HolderIdx,
        /// Which.
        id: ReservationId,
        /// The `Idempotency-Key` (empty for none).
        key: Vec<u8>,
    },
    /// An operator's event on reservation `id` ([`Engine::operator_event_keyed`]).
    Event {
        /// Which.
        id: ReservationId,
        /// What happened.
        event: OperatorEvent,
        /// The `Idempotency-Key` (empty for none).
        key: Vec<u8>,
    },
    /// The holder joins their province's waiting list ([`Engine::join_waitlist_keyed`]).
    Join {
        /// Who.
        holder: HolderIdx,
        /// The `Idempotency-Key` (empty for none).
        key: Vec<u8>,
    },
    /// Expire every hold and offer whose deadline is at or before the command's time.
    ExpireDue,
    /// Replace the registration schedule ([`Engine::replace_schedule_with`]).
    Schedule {
        /// The new waves.
        waves: Vec<Wave>,
        /// Whether wave order is checked.
        order: WaveOrder,
    },
    /// An office hands receipt `holder` to another person ([`Engine::transfer`]).
    Transfer {
        /// The receipt given.
        holder: HolderIdx,
        /// The receiver's national ID.
        national_id: u64,
        /// The receiver's tracking code.
        tracking_code: String,
        /// The receiver's city of dispatch.
        city: CityIdx,
        /// Who asks, for the log.
        principal: String,
    },
    /// An office changes the city of dispatch of receipt `holder`
    /// ([`Engine::change_dispatch`]).
    Dispatch {
        /// The receipt.
        holder: HolderIdx,
        /// The new city of dispatch.
        city: CityIdx,
        /// Who asks, for the log.
        principal: String,
    },
}

/// What an executed [`WriteCommand`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAnswer {
    /// The reservation as it stands after the command; `replayed` when nothing new was
    /// decided (a retry with a known key, or an already-done request).
    Reservation {
        /// The reservation.
        view: ReservationView,
        /// Whether it repeats an earlier answer.
        replayed: bool,
    },
    /// The holder's waiting-list place.
    Place {
        /// The place.
        place: WaitlistPlace,
        /// Whether it repeats an earlier answer.
        replayed: bool,
    },
    /// Deadlines expired by an [`WriteCommand::ExpireDue`].
    Expired(usize),
    /// The schedule was replaced.
    ScheduleReplaced,
    /// A holder's profile (who holds the receipt, where they travel from) was changed.
    ProfileChanged,
}

const TAG_RESERVE: u8 = 1;
const TAG_CANCEL: u8 = 2;
const TAG_ACCEPT: u8 = 3;
const TAG_EVENT: u8 = 4;
const TAG_JOIN: u8 = 5;
const TAG_EXPIRE: u8 = 6;
const TAG_SCHEDULE: u8 = 7;
const TAG_TRANSFER: u8 = 8;
const TAG_DISPATCH: u8 = 9;

impl WriteCommand {
    /// Appends the command's byte form (a tag byte, then its fields little-endian; keys and
    /// ids as the log records write them) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            WriteCommand::Reserve {
                holder,
                caravan,
                key,
            } => {
                out.push(TAG_RESERVE);
                put_u32(out, holder.0);
                put_u32(out, caravan.0);
                put_bytes(out, key);
            }
            WriteCommand::Cancel { holder, id, key } | WriteCommand::Accept { holder, id, key } => {
                out.push(if matches!(self, WriteCommand::Cancel { .. }) {
                    TAG_CANCEL
                } else {
                    TAG_ACCEPT
                });
                put_u32(out, holder.0);
                put_u16(out, id.shard.0);
                put_id(out, *id);
                put_bytes(out, key);
            }
            WriteCommand::Event { id, event, key } => {
                out.push(TAG_EVENT);
                put_u16(out, id.shard.0);
                put_id(out, *id);
                out.push(KeyOp::Event(*event).code());
                put_bytes(out, key);
            }
            WriteCommand::Join { holder, key } => {
                out.push(TAG_JOIN);
                put_u32(out, holder.0);
                put_bytes(out, key);
            }
            WriteCommand::ExpireDue => out.push(TAG_EXPIRE),
            WriteCommand::Schedule { waves, order } => {
                out.push(TAG_SCHEDULE);
                out.push(u8::from(*order == WaveOrder::Strict));
                encode_waves(out, waves, WaveLayout::V2);
            }
            WriteCommand::Transfer {
                holder,
                national_id,
                tracking_code,
                city,
                principal,
            } => {
                out.push(TAG_TRANSFER);
                put_u32(out, holder.0);
                out.extend_from_slice(&national_id.to_le_bytes());
                put_bytes(out, tracking_code.as_bytes());
                put_u32(out, city.0);
                put_bytes(out, principal.as_bytes());
            }
            WriteCommand::Dispatch {
                holder,
                city,
                principal,
            } => {
                out.push(TAG_DISPATCH);
                put_u32(out, holder.0);
                put_u32(out, city.0);
                put_bytes(out, principal.as_bytes());
            }
        }
    }

    /// Reads a command from exactly `bytes` (as [`WriteCommand::encode`] wrote it). Refuses
    /// damaged, unknown or trailing input.
    pub fn decode(bytes: &[u8]) -> Result<WriteCommand, String> {
        let mut r = Reader::new(bytes);
        let command = match r.u8()? {
            TAG_RESERVE => WriteCommand::Reserve {
                holder: HolderIdx(r.u32()?),
                caravan: CaravanIdx(r.u32()?),
                key: r.bytes()?.to_vec(),
            },
            tag @ (TAG_CANCEL | TAG_ACCEPT) => {
                let holder = HolderIdx(r.u32()?);
                let shard = ProvinceIdx(r.u16()?);
                let id = r.id(shard)?;
                let key = r.bytes()?.to_vec();
                if tag == TAG_CANCEL {
                    WriteCommand::Cancel { holder, id, key }
                } else {
                    WriteCommand::Accept { holder, id, key }
                }
            }
            TAG_EVENT => {
                let shard = ProvinceIdx(r.u16()?);
                let id = r.id(shard)?;
                let event = match KeyOp::from_code(r.u8()?) {
                    Some(KeyOp::Event(event)) => event,
                    _ => return Err("unknown operator event".into()),
                };
                WriteCommand::Event {
                    id,
                    event,
                    key: r.bytes()?.to_vec(),
                }
            }
            TAG_JOIN => WriteCommand::Join {
                holder: HolderIdx(r.u32()?),
                key: r.bytes()?.to_vec(),
            },
            TAG_EXPIRE => WriteCommand::ExpireDue,
            TAG_SCHEDULE => {
                let order = if r.u8()? != 0 {
                    WaveOrder::Strict
                } else {
                    WaveOrder::AllowWiderCutoffFirst
                };
                WriteCommand::Schedule {
                    order,
                    waves: decode_waves(&mut r, WaveLayout::V2)?,
                }
            }
            TAG_TRANSFER => WriteCommand::Transfer {
                holder: HolderIdx(r.u32()?),
                national_id: r.u64()?,
                tracking_code: utf8(r.bytes()?, "tracking code")?,
                city: CityIdx(r.u32()?),
                principal: utf8(r.bytes()?, "principal")?,
            },
            TAG_DISPATCH => WriteCommand::Dispatch {
                holder: HolderIdx(r.u32()?),
                city: CityIdx(r.u32()?),
                principal: utf8(r.bytes()?, "principal")?,
            },
            tag => return Err(format!("unknown command tag {tag}")),
        };
        r.finish()?;
        Ok(command)
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

impl Engine {
    /// Decides and applies `command` at engine time `now_ms`, drawing the random part of any
    /// new reservation id from `seed`. Deterministic: the same state, command, time and seed
    /// always give the same answer and the same new state. Nothing is logged here: the caller
    /// runs this for entries its replicated log has already committed. A refusal changes
    /// nothing (except a deadline found already passed, which is expired first, as the
    /// single-node engine does).
    pub fn execute(
        &self,
        command: &WriteCommand,
        now_ms: i64,
        seed: u128,
    ) -> Result<WriteAnswer, EngineError> {
        self.raise_time_to(now_ms);
        match command {
            WriteCommand::Reserve {
                holder,
                caravan,
                key,
            } => {
                self.catalog
                    .caravans()
                    .get(caravan.index())
                    .ok_or(EngineError::CaravanNotFound)?;
                let p = self.holder_shard(*holder)?;
                let command = Command::Reserve {
                    holder: *holder,
                    caravan: *caravan,
                    key: checked_key(Some(key))?,
                };
                self.execute_on_reservation(p, command, now_ms, seed)
            }
            WriteCommand::Cancel { holder, id, key } => {
                let p = self.holder_shard(*holder)?;
                let command = Command::Cancel {
                    holder: *holder,
                    id: *id,
                    key: checked_key(Some(key))?,
                };
                self.execute_on_reservation(p, command, now_ms, seed)
            }
            WriteCommand::Accept { holder, id, key } => {
                let p = self.holder_shard(*holder)?;
                let command = Command::Accept {
                    holder: *holder,
                    id: *id,
                    key: checked_key(Some(key))?,
                };
                self.execute_on_reservation(p, command, now_ms, seed)
            }
            WriteCommand::Event { id, event, key } => {
                let command = Command::Event {
                    id: *id,
                    event: *event,
                    key: checked_key(Some(key))?,
                };
                self.execute_on_reservation(usize::from(id.shard), command, now_ms, seed)
            }
            WriteCommand::Join { holder, key } => {
                let p = self.holder_shard(*holder)?;
                let command = Command::Join {
                    holder: *holder,
                    key: checked_key(Some(key))?,
                };
                let mut st = self.shards[p].state.lock();
                let reply = self.decide_and_apply(p, &mut st, command, now_ms, seed)?;
                let (position, replayed) = match reply {
                    Reply::PlaceReplayed(position) => (position, true),
                    _ => (st.waitlist.position(*holder).unwrap_or(0), false),
                };
                Ok(WriteAnswer::Place {
                    place: WaitlistPlace {
                        province: st.province,
                        position,
                    },
                    replayed,
                })
            }
            WriteCommand::ExpireDue => Ok(WriteAnswer::Expired(self.expire_due_at(now_ms, seed)?)),
            WriteCommand::Schedule { waves, order } => {
                let record = decide_schedule(&self.ctx(), waves.clone(), *order, now_ms)?;
                let mut global = self.global.lock();
                self.apply_schedule(&mut global, &record);
                Ok(WriteAnswer::ScheduleReplaced)
            }
            WriteCommand::Transfer {
                holder,
                national_id,
                tracking_code,
                city,
                principal,
            } => {
                let request = TransferRequest {
                    holder: *holder,
                    national_id: *national_id,
                    tracking_code,
                    city: *city,
                    principal,
                };
                // No ticket to wait for: the engine has no log of its own here, and the
                // consensus log holds the command durably before it is executed.
                let _no_ticket = self.transfer_at(request, now_ms)?;
                Ok(WriteAnswer::ProfileChanged)
            }
            WriteCommand::Dispatch {
                holder,
                city,
                principal,
            } => {
                let _no_ticket = self.change_dispatch_at(*holder, *city, principal, now_ms)?;
                Ok(WriteAnswer::ProfileChanged)
            }
        }
    }

    /// Whether a deadline of some shard is at or before `now_ms`: a leader asks this to know
    /// when to put an [`WriteCommand::ExpireDue`] in the log.
    pub fn has_due_deadline(&self, now_ms: i64) -> bool {
        self.shards
            .iter()
            .any(|s| s.counters.next_deadline_ms.load(Ordering::Acquire) <= now_ms)
    }

    fn execute_on_reservation(
        &self,
        p: usize,
        command: Command<'_>,
        now_ms: i64,
        seed: u128,
    ) -> Result<WriteAnswer, EngineError> {
        let shard = self.shards.get(p).ok_or(EngineError::ReservationNotFound)?;
        let mut st = shard.state.lock();
        let reply = self.decide_and_apply(p, &mut st, command, now_ms, seed)?;
        let (view, replayed) = self.reservation_reply(&st, reply, |v, r| (v, r))?;
        Ok(WriteAnswer::Reservation { view, replayed })
    }

    /// `Engine::run` with the secret given instead of drawn.
    fn decide_and_apply(
        &self,
        p: usize,
        st: &mut ShardState,
        command: Command<'_>,
        now_ms: i64,
        secret: u128,
    ) -> Result<Reply, EngineError> {
        match decide(st, &self.ctx(), command, now_ms, secret)? {
            Decision::Commit { record, reply } => {
                self.commit_decided(p, st, &record, now_ms)?;
                Ok(reply)
            }
            Decision::CommitThenRefuse { record, refusal } => {
                self.commit_decided(p, st, &record, now_ms)?;
                Err(refusal)
            }
            Decision::Answer(reply) => Ok(reply),
        }
    }

    /// The expiry pass at a given time, each new offer's secret drawn from a generator seeded
    /// by `seed` (so every replica draws the same ones).
    fn expire_due_at(&self, now_ms: i64, seed: u128) -> Result<usize, EngineError> {
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..16].copy_from_slice(&seed.to_le_bytes());
        seed_bytes[16..].copy_from_slice(&seed.to_be_bytes());
        let mut secrets = ChaCha12Rng::from_seed(seed_bytes);
        let mut expired = 0usize;
        for p in 0..self.shards.len() {
            let counters = &self.shards[p].counters;
            if counters.next_deadline_ms.load(Ordering::Acquire) > now_ms {
                continue;
            }
            let mut st = self.shards[p].state.lock();
            // Bounded like the single-node pass, but run to the end: the command must expire
            // the same set on every replica.
            for _ in 0..EXPIRY_BATCH_MAX * 1024 {
                st.prune_timers(counters);
                let reply = self.decide_and_apply(
                    p,
                    &mut st,
                    Command::ExpireDue,
                    now_ms,
                    secrets.random(),
                )?;
                if !matches!(reply, Reply::Expired) {
                    break;
                }
                expired += 1;
            }
            st.prune_timers(counters);
        }
        Ok(expired)
    }
}
