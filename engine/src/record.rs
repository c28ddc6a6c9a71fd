//! The engine's log records: every decision as bytes, and back.
//!
//! A record states an outcome, never a request: replaying it needs no clock, no schedule and
//! no eligibility check, so replay gives exactly the state the live engine had. The byte
//! layout of each kind is in `docs/wal-format.md`; all integers are little-endian.

use crate::catalog::{CaravanIdx, CityIdx, HolderIdx, ProvinceIdx, SlotIdx};
use crate::model::{EndReason, OperatorEvent, ReservationId};
use crate::season::{Stage, Wave};

/// On-disk marker for "no stage" / "no deadline".
const NONE_U8: u8 = 0xFF;
/// On-disk marker for "every province" in a wave.
const ALL_PROVINCES: u16 = 0xFFFF;

/// A seat given to the head of a waiting list, made in the same decision that freed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub id: ReservationId,
    pub holder: HolderIdx,
    pub deadline_ms: i64,
}

/// What a keyed decision other than a reservation was asked for: a retry with the same
/// `Idempotency-Key` must ask for the same again to get the original answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// The holder cancelled (or declined an offer).
    Cancel,
    /// The holder accepted an offer.
    Accept,
    /// The holder joined the waiting list.
    Join,
    /// An operator reported an event.
    Event(OperatorEvent),
}

impl KeyOp {
    /// The one-byte code on disk: 0 cancel, 1 accept, 2 join, 16 + n the n-th event of
    /// [`OperatorEvent::ALL`].
    pub fn code(self) -> u8 {
        match self {
            KeyOp::Cancel => 0,
            KeyOp::Accept => 1,
            KeyOp::Join => 2,
            KeyOp::Event(e) => {
                16 + OperatorEvent::ALL.iter().position(|x| *x == e).unwrap_or(0) as u8
            }
        }
    }

    /// The operation with on-disk code `code`, if and only if it is one.
    pub fn from_code(code: u8) -> Option<KeyOp> {
        match code {
            0 => Some(KeyOp::Cancel),
            1 => Some(KeyOp::Accept),
            2 => Some(KeyOp::Join),
            n => OperatorEvent::ALL
                .get(usize::from(n.checked_sub(16)?))
                .map(|e| KeyOp::Event(*e)),
        }
    }
}

/// The `Idempotency-Key` a decision was made under, and what it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUse {
    pub op: KeyOp,
    pub key: Vec<u8>,
}

/// One logged decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A holder took a seat: a hold at `stage`, or confirmed at once when there are no stages.
    Reserve {
        id: ReservationId,
        holder: HolderIdx,
        caravan: CaravanIdx,
        at_ms: i64,
        stage: Option<Stage>,
        deadline_ms: Option<i64>,
        idempotency_key: Vec<u8>,
    },
    /// A stage was completed or an offer accepted: the reservation moves to `stage`, or is
    /// confirmed when `stage` is `None`.
    Advance {
        id: ReservationId,
        at_ms: i64,
        stage: Option<Stage>,
        deadline_ms: Option<i64>,
        keyed: Option<KeyUse>,
    },
    /// A reservation ended; its seat went to `offer` or back to the pool.
    End {
        id: ReservationId,
        at_ms: i64,
        reason: EndReason,
        offer: Option<Offer>,
        keyed: Option<KeyUse>,
    },
    /// A holder joined their province's waiting list.
    Join {
        holder: HolderIdx,
        at_ms: i64,
        keyed: Option<KeyUse>,
    },
    /// The registration schedule was replaced. Written as kind `SCHEDULE_V2`; kind
    /// `SCHEDULE` (before waves had `admits_earlier_receipts`) still decodes, as false.
    Schedule { at_ms: i64, waves: Vec<Wave> },
    /// A receipt priority transfer: receipt `holder` (and its date) passed to the person
    /// `national_id`, who authenticates with `tracking_code` and travels from `city`; asked by
    /// `principal`. Logged on the receipt's province.
    Transfer {
        holder: HolderIdx,
        at_ms: i64,
        national_id: u64,
        tracking_code: Vec<u8>,
        city: CityIdx,
        principal: Vec<u8>,
    },
    /// Whoever holds receipt `holder` now travels from `city`; asked by `principal`.
    Dispatch {
        holder: HolderIdx,
        at_ms: i64,
        city: CityIdx,
        principal: Vec<u8>,
    },
    /// The waiting room of wave `wave` opened with `seed` (drawn from the operating system,
    /// outside the state machine) for a wave opening at `opens_at_ms`: logged on the global
    /// shard before any place is given, so a replay draws the same order.
    QueueSeed {
        wave: String,
        at_ms: i64,
        opens_at_ms: i64,
        seed: u64,
    },
    /// `holder` joined wave `wave`'s waiting room. Logged on the global shard.
    QueueJoin {
        wave: String,
        holder: HolderIdx,
        at_ms: i64,
    },
    /// Wave `wave`'s room now admits every place below `admitted`. Logged on the global shard.
    QueueAdmit {
        wave: String,
        at_ms: i64,
        admitted: u64,
    },
}

/// The one-byte record kinds on disk.
pub mod kind {
    pub const RESERVE: u8 = 1;
    pub const ADVANCE: u8 = 2;
    pub const END: u8 = 3;
    pub const JOIN: u8 = 4;
    /// A schedule whose waves carry no flags (logs written before
    /// `admits_earlier_receipts`); read only.
    pub const SCHEDULE: u8 = 5;
    /// A schedule whose waves end with a flags byte.
    pub const SCHEDULE_V2: u8 = 6;
    /// `ADVANCE` made under an `Idempotency-Key`: its payload, then the key's use.
    pub const ADVANCE_KEYED: u8 = 7;
    /// `END` made under an `Idempotency-Key`.
    pub const END_KEYED: u8 = 8;
    /// `JOIN` made under an `Idempotency-Key`.
    pub const JOIN_KEYED: u8 = 9;
    /// A receipt priority transfer.
    pub const TRANSFER: u8 = 10;
    /// A dispatch-city change.
    pub const DISPATCH: u8 = 11;
    /// A waiting room's seed.
    pub const QUEUE_SEED: u8 = 12;
    /// A holder joined a waiting room.
    pub const QUEUE_JOIN: u8 = 13;
    /// A waiting room's outflow moved on.
    pub const QUEUE_ADMIT: u8 = 14;
}

/// How a wave list is laid out on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaveLayout {
    /// Name, cutoff, opening, provinces (schedule records of kind 5, snapshots version 1).
    V1,
    /// The same followed by a flags byte: bit 0 `admits_earlier_receipts`, other bits zero.
    V2,
}

/// Bit 0 of a wave's flags byte.
const WAVE_ADMITS_EARLIER: u8 = 1;

impl Record {
    /// The record's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Reserve { .. } => kind::RESERVE,
            Record::Advance { keyed: None, .. } => kind::ADVANCE,
            Record::Advance { .. } => kind::ADVANCE_KEYED,
            Record::End { keyed: None, .. } => kind::END,
            Record::End { .. } => kind::END_KEYED,
            Record::Join { keyed: None, .. } => kind::JOIN,
            Record::Join { .. } => kind::JOIN_KEYED,
            Record::Schedule { .. } => kind::SCHEDULE_V2,
            Record::Transfer { .. } => kind::TRANSFER,
            Record::Dispatch { .. } => kind::DISPATCH,
            Record::QueueSeed { .. } => kind::QUEUE_SEED,
            Record::QueueJoin { .. } => kind::QUEUE_JOIN,
            Record::QueueAdmit { .. } => kind::QUEUE_ADMIT,
        }
    }

    /// The instant the decision was made.
    pub fn at_ms(&self) -> i64 {
        match self {
            Record::Reserve { at_ms, .. }
            | Record::Advance { at_ms, .. }
            | Record::End { at_ms, .. }
            | Record::Join { at_ms, .. }
            | Record::Schedule { at_ms, .. }
            | Record::Transfer { at_ms, .. }
            | Record::Dispatch { at_ms, .. }
            | Record::QueueSeed { at_ms, .. }
            | Record::QueueJoin { at_ms, .. }
            | Record::QueueAdmit { at_ms, .. } => *at_ms,
        }
    }

    /// The deadline this record sets, if any: a new hold's or stage's, or a freed seat's offer.
    pub fn new_deadline_ms(&self) -> Option<i64> {
        match self {
            Record::Reserve { deadline_ms, .. } | Record::Advance { deadline_ms, .. } => {
                *deadline_ms
            }
            Record::End { offer, .. } => offer.as_ref().map(|o| o.deadline_ms),
            Record::Join { .. }
            | Record::Schedule { .. }
            | Record::Transfer { .. }
            | Record::Dispatch { .. }
            | Record::QueueSeed { .. }
            | Record::QueueJoin { .. }
            | Record::QueueAdmit { .. } => None,
        }
    }

    /// Appends the payload bytes (without the kind) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Reserve {
                id,
                holder,
                caravan,
                at_ms,
                stage,
                deadline_ms,
                idempotency_key,
            } => {
                put_id(out, *id);
                put_u32(out, holder.0);
                put_u32(out, caravan.0);
                put_i64(out, *at_ms);
                put_stage(out, *stage);
                put_opt_i64(out, *deadline_ms);
                put_bytes(out, idempotency_key);
            }
            Record::Advance {
                id,
                at_ms,
                stage,
                deadline_ms,
                keyed,
            } => {
                put_id(out, *id);
                put_i64(out, *at_ms);
                put_stage(out, *stage);
                put_opt_i64(out, *deadline_ms);
                put_key_use(out, keyed.as_ref());
            }
            Record::End {
                id,
                at_ms,
                reason,
                offer,
                keyed,
            } => {
                put_id(out, *id);
                put_i64(out, *at_ms);
                out.push(reason.code());
                match offer {
                    None => out.push(0),
                    Some(offer) => {
                        out.push(1);
                        put_id(out, offer.id);
                        put_u32(out, offer.holder.0);
                        put_i64(out, offer.deadline_ms);
                    }
                }
                put_key_use(out, keyed.as_ref());
            }
            Record::Join {
                holder,
                at_ms,
                keyed,
            } => {
                put_u32(out, holder.0);
                put_i64(out, *at_ms);
                put_key_use(out, keyed.as_ref());
            }
            Record::Schedule { at_ms, waves } => {
                put_i64(out, *at_ms);
                encode_waves(out, waves, WaveLayout::V2);
            }
            Record::Transfer {
                holder,
                at_ms,
                national_id,
                tracking_code,
                city,
                principal,
            } => {
                put_u32(out, holder.0);
                put_i64(out, *at_ms);
                put_u64(out, *national_id);
                put_bytes(out, tracking_code);
                put_u32(out, city.0);
                put_bytes(out, principal);
            }
            Record::Dispatch {
                holder,
                at_ms,
                city,
                principal,
            } => {
                put_u32(out, holder.0);
                put_i64(out, *at_ms);
                put_u32(out, city.0);
                put_bytes(out, principal);
            }
            Record::QueueSeed {
                wave,
                at_ms,
                opens_at_ms,
                seed,
            } => {
                put_bytes(out, wave.as_bytes());
                put_i64(out, *at_ms);
                put_i64(out, *opens_at_ms);
                put_u64(out, *seed);
            }
            Record::QueueJoin {
                wave,
                holder,
                at_ms,
            } => {
                put_bytes(out, wave.as_bytes());
                put_u32(out, holder.0);
                put_i64(out, *at_ms);
            }
            Record::QueueAdmit {
                wave,
                at_ms,
                admitted,
            } => {
                put_bytes(out, wave.as_bytes());
                put_i64(out, *at_ms);
                put_u64(out, *admitted);
            }
        }
    }

    /// Decodes a payload of kind `kind`; an error says what is wrong.
    pub fn decode(kind: u8, payload: &[u8], shard: u16) -> Result<Record, String> {
        let shard = ProvinceIdx(shard);
        let mut r = Reader::new(payload);
        let record = match kind {
            kind::RESERVE => Record::Reserve {
                id: r.id(shard)?,
                holder: HolderIdx(r.u32()?),
                caravan: CaravanIdx(r.u32()?),
                at_ms: r.i64()?,
                stage: r.stage()?,
                deadline_ms: r.opt_i64()?,
                idempotency_key: r.bytes()?.to_vec(),
            },
            kind::ADVANCE | kind::ADVANCE_KEYED => Record::Advance {
                id: r.id(shard)?,
                at_ms: r.i64()?,
                stage: r.stage()?,
                deadline_ms: r.opt_i64()?,
                keyed: r.key_use(kind == kind::ADVANCE_KEYED)?,
            },
            kind::END | kind::END_KEYED => {
                let id = r.id(shard)?;
                let at_ms = r.i64()?;
                let code = r.u8()?;
                let reason = EndReason::from_code(code)
                    .ok_or_else(|| format!("unknown end reason {code}"))?;
                let offer = match r.u8()? {
                    0 => None,
                    1 => Some(Offer {
                        id: r.id(shard)?,
                        holder: HolderIdx(r.u32()?),
                        deadline_ms: r.i64()?,
                    }),
                    other => return Err(format!("bad offer flag {other}")),
                };
                Record::End {
                    id,
                    at_ms,
                    reason,
                    offer,
                    keyed: r.key_use(kind == kind::END_KEYED)?,
                }
            }
            kind::JOIN | kind::JOIN_KEYED => Record::Join {
                holder: HolderIdx(r.u32()?),
                at_ms: r.i64()?,
                keyed: r.key_use(kind == kind::JOIN_KEYED)?,
            },
            kind::SCHEDULE | kind::SCHEDULE_V2 => Record::Schedule {
                at_ms: r.i64()?,
                waves: decode_waves(
                    &mut r,
                    if kind == kind::SCHEDULE {
                        WaveLayout::V1
                    } else {
                        WaveLayout::V2
                    },
                )?,
            },
            kind::TRANSFER => Record::Transfer {
                holder: HolderIdx(r.u32()?),
                at_ms: r.i64()?,
                national_id: r.u64()?,
                tracking_code: r.bytes()?.to_vec(),
                city: CityIdx(r.u32()?),
                principal: r.bytes()?.to_vec(),
            },
            kind::DISPATCH => Record::Dispatch {
                holder: HolderIdx(r.u32()?),
                at_ms: r.i64()?,
                city: CityIdx(r.u32()?),
                principal: r.bytes()?.to_vec(),
            },
            kind::QUEUE_SEED => Record::QueueSeed {
                wave: r.text("wave name")?,
                at_ms: r.i64()?,
                opens_at_ms: r.i64()?,
                seed: r.u64()?,
            },
            kind::QUEUE_JOIN => Record::QueueJoin {
                wave: r.text("wave name")?,
                holder: HolderIdx(r.u32()?),
                at_ms: r.i64()?,
            },
            kind::QUEUE_ADMIT => Record::QueueAdmit {
                wave: r.text("wave name")?,
                at_ms: r.i64()?,
                admitted: r.u64()?,
            },
            other => return Err(format!("unknown record kind {other}")),
        };
        r.finish()?;
        Ok(record)
    }
}

/// Appends a wave list in `layout` (used by the schedule record and by snapshots).
pub(crate) fn encode_waves(out: &mut Vec<u8>, waves: &[Wave], layout: WaveLayout) {
    put_u32(out, waves.len() as u32);
    for wave in waves {
        put_bytes(out, wave.name.as_bytes());
        put_i32(out, wave.receipts_until_day);
        put_i64(out, wave.opens_at_ms);
        match &wave.provinces {
            None => put_u16(out, ALL_PROVINCES),
            Some(ids) => {
                // A schedule lists at most the catalog's provinces, far below the marker.
                put_u16(out, ids.len().min(usize::from(ALL_PROVINCES - 1)) as u16);
                for id in ids.iter().take(usize::from(ALL_PROVINCES - 1)) {
                    put_u32(out, *id);
                }
            }
        }
        if layout == WaveLayout::V2 {
            out.push(if wave.admits_earlier_receipts {
                WAVE_ADMITS_EARLIER
            } else {
                0
            });
        }
    }
}

/// Reads a wave list written by [`encode_waves`] in `layout`; a V1 wave does not admit
/// earlier receipts.
pub(crate) fn decode_waves(r: &mut Reader<'_>, layout: WaveLayout) -> Result<Vec<Wave>, String> {
    let count = r.u32()? as usize;
    let mut waves = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let name = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "wave name not UTF-8")?;
        let receipts_until_day = r.i32()?;
        let opens_at_ms = r.i64()?;
        let provinces = match r.u16()? {
            ALL_PROVINCES => None,
            n => Some((0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?),
        };
        let admits_earlier_receipts = match layout {
            WaveLayout::V1 => false,
            WaveLayout::V2 => match r.u8()? {
                0 => false,
                WAVE_ADMITS_EARLIER => true,
                other => return Err(format!("wave {name:?}: unknown flags {other:#04x}")),
            },
        };
        waves.push(Wave {
            name,
            receipts_until_day,
            opens_at_ms,
            provinces,
            admits_earlier_receipts,
        });
    }
    Ok(waves)
}

/// A keyed record's tail: `u8 op, bytes key`; nothing for an unkeyed one (its kind says so).
fn put_key_use(out: &mut Vec<u8>, keyed: Option<&KeyUse>) {
    if let Some(k) = keyed {
        out.push(k.op.code());
        put_bytes(out, &k.key);
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// A reservation id within its shard: slot then secret (the shard is the record's).
pub(crate) fn put_id(out: &mut Vec<u8>, id: ReservationId) {
    put_u32(out, id.slot.0);
    put_u128(out, id.secret);
}
/// `None` is written as `i64::MIN`, which no real instant uses.
pub(crate) fn put_opt_i64(out: &mut Vec<u8>, v: Option<i64>) {
    put_i64(out, v.unwrap_or(i64::MIN));
}
pub(crate) fn put_stage(out: &mut Vec<u8>, stage: Option<Stage>) {
    out.push(stage.map_or(NONE_U8, Stage::code));
}
/// A length-prefixed (u16) byte string; callers keep it under 64 KiB.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    put_u16(out, len as u16);
    out.extend_from_slice(&bytes[..len]);
}

/// The furthest from the Unix epoch a decoded instant may lie, in milliseconds (2^53, about
/// 285,000 years): beyond every instant a clock, a season or an operator can produce, and far
/// enough from the `i64` limits that the difference of two instants cannot overflow.
pub const INSTANT_MS_MAX: i64 = 1 << 53;

/// Returns `ms` if and only if it lies within [`INSTANT_MS_MAX`] of the epoch.
fn checked_instant(ms: i64) -> Result<i64, String> {
    if ms.unsigned_abs() <= INSTANT_MS_MAX.unsigned_abs() {
        Ok(ms)
    } else {
        Err(format!(
            "instant {ms} ms is out of range (at most {INSTANT_MS_MAX} from 1970)"
        ))
    }
}

/// A bounds-checked little-endian reader: running off the end is an error, never a panic.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads an instant in milliseconds since the Unix epoch (the format's only signed 64-bit
    /// field); refuses one further than [`INSTANT_MS_MAX`] from the epoch.
    pub fn i64(&mut self) -> Result<i64, String> {
        checked_instant(i64::from_le_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    pub fn id(&mut self, shard: ProvinceIdx) -> Result<ReservationId, String> {
        Ok(ReservationId {
            shard,
            slot: SlotIdx(self.u32()?),
            secret: self.u128()?,
        })
    }
    /// Reads an optional instant: `i64::MIN` is none, anything else as [`Reader::i64`].
    pub fn opt_i64(&mut self) -> Result<Option<i64>, String> {
        match i64::from_le_bytes(self.array()?) {
            i64::MIN => Ok(None),
            v => checked_instant(v).map(Some),
        }
    }
    pub fn stage(&mut self) -> Result<Option<Stage>, String> {
        match self.u8()? {
            NONE_U8 => Ok(None),
            code => Stage::from_code(code)
                .map(Some)
                .ok_or_else(|| format!("unknown stage code {code}")),
        }
    }
    /// Reads a keyed record's tail if `keyed`, else nothing.
    pub fn key_use(&mut self, keyed: bool) -> Result<Option<KeyUse>, String> {
        if !keyed {
            return Ok(None);
        }
        let code = self.u8()?;
        let op = KeyOp::from_code(code).ok_or_else(|| format!("unknown keyed operation {code}"))?;
        let key = self.bytes()?.to_vec();
        if key.is_empty() {
            return Err("a keyed record with an empty key".into());
        }
        Ok(Some(KeyUse { op, key }))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A length-prefixed UTF-8 string; `what` names it in the error.
    pub fn text(&mut self, what: &str) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// Returns an error if and only if bytes are left over.
    pub fn finish(&self) -> Result<(), String> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.bytes.len() - self.pos))
        }
    }
}
