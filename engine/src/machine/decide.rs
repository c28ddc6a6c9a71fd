//! `decide`: a command and a province's state in, a record to log (or a refusal) out. Pure:
//! no IO, no clock, no randomness but the secret the caller drew and passed in, so the same
//! state and command always decide the same way (the simulator relies on it).

use crate::catalog::{CaravanIdx, HolderFacts, HolderIdx, ReceiptStatus, SlotIdx};
use crate::error::EngineError;
use crate::model::{EndReason, OperatorEvent, ReservationId, ReservationView, Status};
use crate::record::{KeyOp, KeyUse, Offer, Record};
use crate::season::{NotEligible, ProvinceCalls, Schedule, Stage, Wave, WaveOrder};

use super::Ctx;
use super::state::{KeyAnswer, KeyedOp, ShardState};
use crate::engine::ALTERNATIVES_MAX;

/// What a caller asks of one province. Ids are already resolved to indices; `key` is the
/// request's `Idempotency-Key` (empty for none), at most
/// [`crate::engine::IDEMPOTENCY_KEY_BYTES_MAX`] bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Command<'k> {
    /// A seat in `caravan` for `holder`.
    Reserve {
        holder: HolderIdx,
        caravan: CaravanIdx,
        key: &'k [u8],
    },
    /// The holder cancels their reservation (or declines their offer).
    Cancel {
        holder: HolderIdx,
        id: ReservationId,
        key: &'k [u8],
    },
    /// The holder accepts their waiting-list offer.
    Accept {
        holder: HolderIdx,
        id: ReservationId,
        key: &'k [u8],
    },
    /// An operator's event on a reservation.
    Event {
        id: ReservationId,
        event: OperatorEvent,
        key: &'k [u8],
    },
    /// The holder joins their province's waiting list.
    Join { holder: HolderIdx, key: &'k [u8] },
    /// The earliest pending deadline, if it has passed (the caller prunes stale timers first:
    /// see [`ShardState::prune_timers`]).
    ExpireDue,
}

/// What the caller must do.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Log `record`, apply it, then answer `reply` from the new state.
    Commit { record: Record, reply: Reply },
    /// Log and apply `record` (a deadline that had already passed), then refuse: no change is
    /// accepted after a deadline just because the expiry pass has not run yet.
    CommitThenRefuse {
        record: Record,
        refusal: EngineError,
    },
    /// Nothing new to decide: answer `reply` from the state as it stands, once what is staged
    /// is durable (it may be the decision this request retries).
    Answer(Reply),
}

/// The answer a decision gives, read from the state by the caller.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The reservation at `slot`; `again` when nothing new was decided (an already-done
    /// request).
    Reservation { slot: SlotIdx, again: bool },
    /// The original answer to a retried keyed request.
    Replayed(ReservationView),
    /// The holder's place on the waiting list as it stands.
    Place,
    /// The place a retried join got then.
    PlaceReplayed(u64),
    /// A deadline was expired.
    Expired,
    /// No answer (nothing was due).
    Nothing,
}

/// Decides `command` on the province state `st` at engine time `now_ms`. `secret` is the
/// random part of a reservation id, used if and only if the decision creates a reservation
/// (a reserve, or an offer of a freed seat). Returns the refusal, changing nothing, when the
/// command cannot be granted.
#[inline]
pub(crate) fn decide(
    st: &ShardState,
    ctx: &Ctx<'_>,
    command: Command<'_>,
    now_ms: i64,
    secret: u128,
) -> Result<Decision, EngineError> {
    match command {
        Command::Reserve {
            holder,
            caravan,
            key,
        } => reserve(st, ctx, holder, caravan, key, now_ms, secret),
        Command::Cancel { holder, id, key } => {
            let idx = holder_reservation(st, holder, id)?;
            on_reservation(st, ctx, idx, KeyOp::Cancel, key, now_ms, secret)
        }
        Command::Accept { holder, id, key } => {
            let idx = holder_reservation(st, holder, id)?;
            on_reservation(st, ctx, idx, KeyOp::Accept, key, now_ms, secret)
        }
        Command::Event { id, event, key } => {
            let idx = st.find(id).ok_or(EngineError::ReservationNotFound)?;
            on_reservation(st, ctx, idx, KeyOp::Event(event), key, now_ms, secret)
        }
        Command::Join { holder, key } => join(st, ctx, holder, key, now_ms),
        Command::ExpireDue => Ok(expire_due(st, ctx, now_ms, secret)),
    }
}

/// The holder's facts with the city of dispatch in force (a dispatch change or a transfer may
/// have moved it).
#[inline]
fn facts<'c>(
    st: &ShardState,
    ctx: &Ctx<'c>,
    holder: HolderIdx,
) -> Result<HolderFacts, EngineError> {
    match ctx.catalog.holder_facts(holder) {
        Some(h) => Ok(st.facts_in_force(h)),
        None => Err(EngineError::InvalidCredentials),
    }
}

#[inline]
fn reserve(
    st: &ShardState,
    ctx: &Ctx<'_>,
    holder: HolderIdx,
    caravan: CaravanIdx,
    key: &[u8],
    now_ms: i64,
    secret: u128,
) -> Result<Decision, EngineError> {
    let h = facts(st, ctx, holder)?;
    let Some(c) = ctx.catalog.caravans().get(caravan.index()) else {
        return Err(EngineError::CaravanNotFound);
    };
    if let Some((at_ms, answer)) =
        key_replay(st, ctx, h.local, key, KeyedOp::Reserve { caravan }, now_ms)?
    {
        // The original answer: the reservation as it was created, whatever happened since.
        return Ok(Decision::Answer(Reply::Replayed(replayed_view(
            st, ctx, at_ms, answer,
        )?)));
    }
    if h.receipt_status == ReceiptStatus::NeedsConversion {
        return Err(EngineError::ReceiptNeedsConversion);
    }
    if c.province != h.province || c.city != h.city {
        return Err(EngineError::ProvinceMismatch);
    }
    check_schedule(&st.calls, &h, now_ms)?;
    check_first_registration(st, h.local)?;
    if st.seats_free(ctx, caravan) == 0 {
        return Err(EngineError::CaravanFull {
            alternatives: alternatives(st, ctx, h.city, caravan, holder),
        });
    }
    let (stage, deadline_ms) = first_stage(ctx, now_ms);
    let id = st.next_id(secret);
    Ok(Decision::Commit {
        record: Record::Reserve {
            id,
            holder,
            caravan,
            at_ms: now_ms,
            stage,
            deadline_ms,
            idempotency_key: key.to_vec(),
        },
        reply: Reply::Reservation {
            slot: id.slot,
            again: false,
        },
    })
}

/// The slot of the holder's reservation `id`; someone else's is not found, like a missing one.
fn holder_reservation(
    st: &ShardState,
    holder: HolderIdx,
    id: ReservationId,
) -> Result<SlotIdx, EngineError> {
    let idx = st.find(id).ok_or(EngineError::ReservationNotFound)?;
    if st.reservations[idx.index()].holder != holder {
        return Err(EngineError::ReservationNotFound);
    }
    Ok(idx)
}

/// A cancel, an accept or an operator event on the reservation at `idx`.
fn on_reservation(
    st: &ShardState,
    ctx: &Ctx<'_>,
    idx: SlotIdx,
    op: KeyOp,
    key: &[u8],
    now_ms: i64,
    secret: u128,
) -> Result<Decision, EngineError> {
    let r = &st.reservations[idx.index()];
    let keyed_op = KeyedOp::On {
        op,
        reservation: r.id,
    };
    let local = facts(st, ctx, r.holder)
        .map_err(|_| EngineError::ReservationNotFound)?
        .local;
    if let Some((at_ms, answer)) = key_replay(st, ctx, local, key, keyed_op, now_ms)? {
        return Ok(Decision::Answer(Reply::Replayed(replayed_view(
            st, ctx, at_ms, answer,
        )?)));
    }
    if let Some(decision) = expire_if_due(st, ctx, idx, now_ms, secret) {
        return Ok(decision);
    }
    let keyed = key_use(op, key);
    let (status, stage) = (r.status, r.stage);
    let invalid = |detail: String| EngineError::InvalidTransition { status, detail };
    let reply = Reply::Reservation {
        slot: idx,
        again: false,
    };
    match op {
        KeyOp::Cancel => {
            let reason = match status {
                Status::Offered => EndReason::OfferDeclined,
                Status::Held | Status::Confirmed => EndReason::HolderCancelled,
                Status::Cancelled
                    if matches!(
                        r.end_reason,
                        Some(EndReason::HolderCancelled | EndReason::OfferDeclined)
                    ) =>
                {
                    // A retried cancel: answer it again.
                    return Ok(Decision::Answer(Reply::Reservation {
                        slot: idx,
                        again: true,
                    }));
                }
                _ => return Err(invalid("the reservation has already ended".into())),
            };
            let record = end_record(st, ctx, idx, reason, now_ms, keyed, secret);
            Ok(Decision::Commit { record, reply })
        }
        KeyOp::Accept => {
            if status != Status::Offered {
                return Err(invalid("only an open offer can be accepted".into()));
            }
            let (stage, deadline_ms) = first_stage(ctx, now_ms);
            let record = Record::Advance {
                id: r.id,
                at_ms: now_ms,
                stage,
                deadline_ms,
                keyed,
            };
            Ok(Decision::Commit { record, reply })
        }
        KeyOp::Event(event) => {
            let record = match event.completes() {
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
                    let (stage, deadline_ms) = stage_after(ctx, done, now_ms);
                    Record::Advance {
                        id: r.id,
                        at_ms: now_ms,
                        stage,
                        deadline_ms,
                        keyed,
                    }
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
                    end_record(st, ctx, idx, reason, now_ms, keyed, secret)
                }
            };
            Ok(Decision::Commit { record, reply })
        }
        KeyOp::Join => Err(invalid("joining is not an action on a reservation".into())),
    }
}

fn join(
    st: &ShardState,
    ctx: &Ctx<'_>,
    holder: HolderIdx,
    key: &[u8],
    now_ms: i64,
) -> Result<Decision, EngineError> {
    let h = facts(st, ctx, holder)?;
    if h.receipt_status == ReceiptStatus::NeedsConversion {
        return Err(EngineError::ReceiptNeedsConversion);
    }
    if let Some((_, answer)) = key_replay(st, ctx, h.local, key, KeyedOp::Join, now_ms)? {
        let KeyAnswer::Place { position } = answer else {
            return Err(EngineError::IdempotencyKeyReused);
        };
        return Ok(Decision::Answer(Reply::PlaceReplayed(position)));
    }
    if st.waitlist.contains(holder) {
        return Ok(Decision::Answer(Reply::Place));
    }
    check_schedule(&st.calls, &h, now_ms)?;
    check_first_registration(st, h.local)?;
    let alternatives = alternatives(st, ctx, h.city, CaravanIdx::MAX, holder);
    if !alternatives.is_empty() {
        return Err(EngineError::SeatsAvailable { alternatives });
    }
    Ok(Decision::Commit {
        record: Record::Join {
            holder,
            at_ms: now_ms,
            keyed: key_use(KeyOp::Join, key),
        },
        reply: Reply::Place,
    })
}

/// Expires the earliest pending deadline if it has passed. The timers' top must be current
/// (pruned by the caller).
fn expire_due(st: &ShardState, ctx: &Ctx<'_>, now_ms: i64, secret: u128) -> Decision {
    let Some((deadline_ms, idx)) = st.earliest_timer() else {
        return Decision::Answer(Reply::Nothing);
    };
    if deadline_ms > now_ms || !st.timer_is_current(deadline_ms, idx) {
        return Decision::Answer(Reply::Nothing);
    }
    let reason = expiry_reason(st.reservations[idx.index()].status);
    Decision::Commit {
        record: end_record(st, ctx, idx, reason, now_ms, None, secret),
        reply: Reply::Expired,
    }
}

fn expiry_reason(status: Status) -> EndReason {
    if status == Status::Offered {
        EndReason::OfferExpired
    } else {
        EndReason::StageExpired
    }
}

/// If the deadline of the reservation at `idx` has passed: expire it, then refuse.
fn expire_if_due(
    st: &ShardState,
    ctx: &Ctx<'_>,
    idx: SlotIdx,
    now_ms: i64,
    secret: u128,
) -> Option<Decision> {
    let r = &st.reservations[idx.index()];
    let due = matches!(r.status, Status::Held | Status::Offered)
        && r.deadline_ms.is_some_and(|d| d <= now_ms);
    if !due {
        return None;
    }
    let reason = expiry_reason(r.status);
    Some(Decision::CommitThenRefuse {
        record: end_record(st, ctx, idx, reason, now_ms, None, secret),
        refusal: EngineError::InvalidTransition {
            status: reason.status(),
            detail: "the deadline has passed".into(),
        },
    })
}

/// Ends the reservation at `idx` for `reason`; its seat is offered to the first waiting holder
/// of the caravan's city, if any, in the same record.
fn end_record(
    st: &ShardState,
    ctx: &Ctx<'_>,
    idx: SlotIdx,
    reason: EndReason,
    now_ms: i64,
    keyed: Option<KeyUse>,
    secret: u128,
) -> Record {
    let r = &st.reservations[idx.index()];
    let city = ctx.catalog.caravans()[r.caravan.index()].city;
    let offer = st.waitlist.head_of_city(city).map(|holder| Offer {
        id: st.next_id(secret),
        holder,
        deadline_ms: now_ms.saturating_add(ctx.season.offer_deadline_ms),
    });
    Record::End {
        id: r.id,
        at_ms: now_ms,
        reason,
        offer,
        keyed,
    }
}

/// If `key` (non-empty) was used by the holder with local index `local` and is still retained:
/// `Ok(Some(original answer))` if it was used for `op`, and
/// [`EngineError::IdempotencyKeyReused`] if for anything else. `Ok(None)` for a new key or none.
#[inline]
fn key_replay(
    st: &ShardState,
    ctx: &Ctx<'_>,
    local: u32,
    key: &[u8],
    op: KeyedOp,
    now_ms: i64,
) -> Result<Option<(i64, KeyAnswer)>, EngineError> {
    if key.is_empty() {
        return Ok(None);
    }
    let since = now_ms.saturating_sub(ctx.idempotency_retention_ms);
    match st.idempotency_lookup(local, key, since) {
        None => Ok(None),
        Some(entry) if entry.op == op => Ok(Some((entry.at_ms, entry.answer))),
        Some(_) => Err(EngineError::IdempotencyKeyReused),
    }
}

/// The reservation a replayed answer names, as the keyed decision left it at `at_ms`.
fn replayed_view(
    st: &ShardState,
    ctx: &Ctx<'_>,
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
        .view(ctx.catalog, idx)
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

/// The key's use to log with a decision, if a key was given.
fn key_use(op: KeyOp, key: &[u8]) -> Option<KeyUse> {
    (!key.is_empty()).then(|| KeyUse {
        op,
        key: key.to_vec(),
    })
}

/// A holder registers once a season: a live reservation answers `already_reserved`; an ended
/// one (cancelled, expired, rejected, a declined or lapsed offer) answers
/// `registration_ended`, since a choice is final and a death or medical rejection ends the
/// registration for good.
fn check_first_registration(st: &ShardState, local: u32) -> Result<(), EngineError> {
    let Some(&latest) = st.latest.get(local as usize) else {
        return Ok(());
    };
    let Some(r) = st.reservations.get(latest.index()) else {
        return Ok(());
    };
    if r.status.is_live() {
        Err(EngineError::AlreadyReserved { reservation: r.id })
    } else {
        Err(EngineError::RegistrationEnded { reservation: r.id })
    }
}

fn check_schedule(calls: &ProvinceCalls, h: &HolderFacts, now_ms: i64) -> Result<(), EngineError> {
    calls
        .eligibility(h.receipt_day, now_ms)
        .map_err(|why| match why {
            NotEligible::NotOpen { opens_at_ms } => {
                EngineError::RegistrationNotOpen { opens_at_ms }
            }
            NotEligible::NotCalled => EngineError::NotCalled,
        })
}

/// The first stage and its deadline from `now_ms` (none: the reservation is confirmed at once).
fn first_stage(ctx: &Ctx<'_>, now_ms: i64) -> (Option<Stage>, Option<i64>) {
    match ctx.season.stage_at(0) {
        Some((stage, length_ms)) => (Some(stage), Some(now_ms.saturating_add(length_ms))),
        None => (None, None),
    }
}

/// The stage after `done` and its deadline (none: the reservation is confirmed).
fn stage_after(ctx: &Ctx<'_>, done: Stage, now_ms: i64) -> (Option<Stage>, Option<i64>) {
    let position = ctx.season.stages.iter().position(|(s, _)| *s == done);
    match position.and_then(|i| ctx.season.stage_at(i + 1)) {
        Some((stage, length_ms)) => (Some(stage), Some(now_ms.saturating_add(length_ms))),
        None => (None, None),
    }
}

/// Up to [`ALTERNATIVES_MAX`] caravans of `city` with free seats, other than `asked`, closest
/// to `asked` first: the same route first, then the nearest price group (by rank in the
/// catalog's sorted price groups), then the nearest departure date. Caravans equally close
/// are ordered by a hash of `holder` and the caravan, so holders refused on the same caravan
/// are spread over all the equally close ones instead of herding to the same five. With
/// `asked` not a caravan (a waiting-list refusal), only the hash orders them. A city's
/// caravans all belong to the holder's province, so the shard's own counts are exact.
pub(crate) fn alternatives(
    st: &ShardState,
    ctx: &Ctx<'_>,
    city: crate::catalog::CityIdx,
    asked: CaravanIdx,
    holder: HolderIdx,
) -> Vec<CaravanIdx> {
    let caravans = ctx.catalog.caravans();
    let asked_caravan = caravans.get(asked.index());
    let closeness = |c: CaravanIdx| -> (u8, u32, u32, u64) {
        let spread = spread_hash(holder, c);
        let Some(a) = asked_caravan else {
            return (0, 0, 0, spread);
        };
        let other = &caravans[c.index()];
        (
            u8::from(other.route != a.route),
            ctx.price_rank[c.index()].abs_diff(ctx.price_rank[asked.index()]),
            other.departure_day.abs_diff(a.departure_day),
            spread,
        )
    };
    let mut found: Vec<((u8, u32, u32, u64), CaravanIdx)> = ctx
        .catalog
        .caravans_of_city(city)
        .iter()
        .copied()
        .filter(|&c| c != asked && st.seats_free(ctx, c) > 0)
        .map(|c| (closeness(c), c))
        .collect();
    if found.len() > ALTERNATIVES_MAX {
        found.select_nth_unstable(ALTERNATIVES_MAX - 1);
        found.truncate(ALTERNATIVES_MAX);
    }
    found.sort_unstable();
    found.into_iter().map(|(_, c)| c).collect()
}

/// A well-mixed 64-bit hash of (holder, caravan) (SplitMix64's finalizer): a stable,
/// per-holder order among equally close alternatives.
fn spread_hash(holder: HolderIdx, caravan: CaravanIdx) -> u64 {
    let mut z = (u64::from(holder) << 32 | u64::from(caravan)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Decides a schedule replacement: validated against the catalog and, unless `order` allows
/// otherwise, refused when a wider cutoff opens before a narrower one.
pub(crate) fn decide_schedule(
    ctx: &Ctx<'_>,
    waves: Vec<Wave>,
    order: WaveOrder,
    now_ms: i64,
) -> Result<Record, EngineError> {
    let schedule = Schedule { waves };
    schedule
        .validate(ctx.catalog)
        .map_err(|message| EngineError::InvalidField {
            field: "waves",
            message,
        })?;
    if order == WaveOrder::Strict {
        schedule
            .check_order()
            .map_err(|e| EngineError::ScheduleOutOfOrder { message: e.message })?;
    }
    Ok(Record::Schedule {
        at_ms: now_ms,
        waves: schedule.waves,
    })
}
