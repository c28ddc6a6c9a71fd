//! Engine behaviour at its API: eligibility, allocation, idempotency, lifecycle, expiry,
//! waiting lists and schedule changes, all on a manual clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{T0, catalog, season};
use miqat_engine::catalog::{CaravanIdx, HolderIdx};
use miqat_engine::clock::ManualClock;
use miqat_engine::model::{EndReason, OperatorEvent, ReservationId, Status};
use miqat_engine::season::{Stage, Wave};
use miqat_engine::{Engine, EngineConfig, EngineError};

struct World {
    engine: Arc<Engine>,
    clock: ManualClock,
}

fn world(holders_per_city: u32) -> World {
    let clock = ManualClock::new(T0);
    let engine = Engine::in_memory(
        catalog(holders_per_city),
        season(),
        Arc::new(clock.clone()),
        EngineConfig {
            id_seed: Some(7),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    World { engine, clock }
}

impl World {
    fn holder(&self, national_id: u64) -> HolderIdx {
        self.engine
            .catalog()
            .holder_by_national_id(national_id)
            .unwrap()
    }
    fn caravan(&self, id: &str) -> CaravanIdx {
        self.engine.catalog().caravan_by_id(id).unwrap()
    }
    fn reserve(&self, national_id: u64, caravan: &str) -> Result<ReservationId, EngineError> {
        let out = self
            .engine
            .reserve(self.holder(national_id), self.caravan(caravan), None)?;
        Ok(out.value.reservation.id)
    }
    fn status(&self, id: ReservationId) -> (Status, Option<Stage>) {
        let v = self.engine.reservation(id).unwrap();
        (v.status, v.stage)
    }
    fn free(&self, caravan: &str) -> u32 {
        self.engine.free_seats(self.caravan(caravan))
    }
}

/// Asserts that `result` failed with an error whose debug form starts with `expect`.
fn check_err<T: std::fmt::Debug>(result: Result<T, EngineError>, expect: &str) {
    let text = format!("{:?}", result.unwrap_err());
    assert!(text.starts_with(expect), "got {text}, expected {expect}...");
}

#[test]
fn credentials_are_one_answer_for_unknown_id_and_wrong_code() {
    let w = world(2);
    assert_eq!(w.engine.authenticate(1000, "t0").unwrap(), w.holder(1000));
    check_err(w.engine.authenticate(1000, "t1"), "InvalidCredentials");
    check_err(w.engine.authenticate(424242, "t0"), "InvalidCredentials");
    check_err(w.engine.authenticate(1000, ""), "InvalidCredentials");
    // People type Persian digits: the tracking code "t12" of holder 1012 as "t۱۲".
    let w = world(5);
    assert_eq!(w.engine.authenticate(1012, "t۱۲").unwrap(), w.holder(1012));
}

#[test]
fn eligibility_refusals_name_the_precise_reason() {
    let w = world(2);
    check_err(w.reserve(999, "a1"), "ReceiptNeedsConversion");
    check_err(w.reserve(998, "a1"), "NotCalled");
    check_err(w.reserve(1000, "b1"), "ProvinceMismatch");
    check_err(w.reserve(1000, "c1"), "ProvinceMismatch");
    w.clock.set(T0 - 1);
    // The engine's time never goes back, so a fresh engine is needed to be before opening.
    let early = ManualClock::new(T0 - 60_000);
    let engine = Engine::in_memory(
        catalog(2),
        season(),
        Arc::new(early),
        EngineConfig::default(),
    )
    .unwrap();
    let err = engine
        .reserve(w.holder(1000), w.caravan("a1"), None)
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::RegistrationNotOpen {
            opens_at_ms: Some(T0)
        }
    ));
    assert_eq!(w.free("a1"), 2, "refusals change nothing");
}

#[test]
fn seats_go_first_come_first_served_and_never_beyond_capacity() {
    let w = world(4);
    let first = w.reserve(1000, "a1").unwrap();
    w.reserve(1001, "a1").unwrap();
    assert_eq!(w.free("a1"), 0);
    match w.reserve(1002, "a1") {
        Err(EngineError::CaravanFull { alternatives }) => {
            assert_eq!(alternatives, vec![w.caravan("a2")]);
        }
        other => panic!("expected caravan_full, got {other:?}"),
    }
    match w.reserve(1000, "a2") {
        Err(EngineError::AlreadyReserved { reservation }) => assert_eq!(reservation, first),
        other => panic!("expected already_reserved, got {other:?}"),
    }
    assert_eq!(w.status(first), (Status::Held, Some(Stage::Documents)));
    w.engine.check_invariants().unwrap();
}

#[test]
fn idempotency_key_replays_the_original_and_refuses_another_body() {
    let w = world(2);
    let (h, a1, a2) = (w.holder(1000), w.caravan("a1"), w.caravan("a2"));
    let first = w.engine.reserve(h, a1, Some(b"k1")).unwrap().value;
    assert!(!first.replayed);
    let again = w.engine.reserve(h, a1, Some(b"k1")).unwrap().value;
    assert!(again.replayed);
    assert_eq!(again.reservation.id, first.reservation.id);
    check_err(w.engine.reserve(h, a2, Some(b"k1")), "IdempotencyKeyReused");
    check_err(w.engine.reserve(h, a1, Some(&[b'x'; 300])), "InvalidField");
    assert_eq!(w.free("a1"), 1);
    // The original answer, whatever happened since: a cancelled reservation replays as held.
    let _ = w.engine.cancel(h, first.reservation.id).unwrap();
    let replay = w.engine.reserve(h, a1, Some(b"k1")).unwrap().value;
    assert!(replay.replayed);
    assert_eq!(replay.reservation, first.reservation);
    let _ = w.engine.reserve(w.holder(1001), a1, None).unwrap();
    // Past the retention window the key is forgotten: the request is decided afresh.
    w.clock.advance(24 * 3_600_000 + 1);
    check_err(w.engine.reserve(h, a1, Some(b"k1")), "RegistrationEnded");
}

#[test]
fn stages_complete_in_order_and_the_last_confirms() {
    let w = world(2);
    let id = w.reserve(1000, "a1").unwrap();
    check_err(
        w.engine.operator_event(id, OperatorEvent::MedicalApproved),
        "InvalidTransition",
    );
    for (event, next) in [
        (OperatorEvent::DocumentsReceived, Some(Stage::FirstPayment)),
        (OperatorEvent::FirstPaymentReceived, Some(Stage::Medical)),
        (OperatorEvent::MedicalApproved, Some(Stage::FinalPayment)),
        (OperatorEvent::FinalPaymentReceived, None),
    ] {
        w.clock.advance(1_000);
        let view = w.engine.operator_event(id, event).unwrap().value;
        assert_eq!(view.stage, next);
        assert_eq!(view.deadline_ms.is_some(), next.is_some());
    }
    assert_eq!(w.status(id).0, Status::Confirmed);
    // Nothing is pending any more: a long wait expires nothing.
    w.clock.advance(10 * 3_600_000);
    assert_eq!(w.engine.expire_due().unwrap().0, 0);
    let v = w
        .engine
        .operator_event(id, OperatorEvent::MedicalRejected)
        .unwrap()
        .value;
    assert_eq!(v.status, Status::Rejected);
    assert_eq!(v.end_reason, Some(EndReason::MedicalRejected));
    assert_eq!(w.free("a1"), 2);
    check_err(
        w.engine.operator_event(id, OperatorEvent::Deceased),
        "InvalidTransition",
    );
}

#[test]
fn a_deadline_fires_at_its_instant_not_before_and_once() {
    let w = world(2);
    let id = w.reserve(1000, "a1").unwrap();
    assert_eq!(w.engine.next_deadline_ms(), Some(T0 + 10_000));
    w.clock.set(T0 + 9_999);
    assert_eq!(w.engine.expire_due().unwrap().0, 0);
    assert_eq!(w.status(id).0, Status::Held);
    w.clock.set(T0 + 10_000);
    assert_eq!(w.engine.expire_due().unwrap().0, 1);
    assert_eq!(w.status(id).0, Status::Expired);
    assert_eq!(w.free("a1"), 2);
    assert_eq!(w.engine.expire_due().unwrap().0, 0, "exactly once");
    assert_eq!(w.engine.stats().expirations, 1);
}

#[test]
fn an_event_after_the_deadline_expires_instead_of_completing() {
    let w = world(2);
    let id = w.reserve(1000, "a1").unwrap();
    w.clock.set(T0 + 10_000);
    check_err(
        w.engine
            .operator_event(id, OperatorEvent::DocumentsReceived),
        "InvalidTransition",
    );
    assert_eq!(w.status(id).0, Status::Expired);
    assert_eq!(w.engine.expire_due().unwrap().0, 0, "already expired, once");
}

#[test]
fn a_clock_stepping_back_neither_resurrects_nor_reorders() {
    let w = world(2);
    let id = w.reserve(1000, "a1").unwrap();
    w.clock.set(T0 + 10_000);
    w.engine.expire_due().unwrap();
    w.clock.set(T0);
    assert_eq!(w.status(id).0, Status::Expired);
    check_err(w.reserve(1000, "a1"), "RegistrationEnded");
    let again = w.reserve(1001, "a1").unwrap();
    let view = w.engine.reservation(again).unwrap();
    assert_eq!(
        view.created_ms,
        T0 + 10_000,
        "engine time did not step back"
    );
}

#[test]
fn cancel_frees_the_seat_and_only_the_owner_sees_the_reservation() {
    let w = world(2);
    let id = w.reserve(1000, "a2").unwrap();
    assert!(w.engine.reservation_of(w.holder(1001), id).is_none());
    check_err(w.engine.cancel(w.holder(1001), id), "ReservationNotFound");
    let v = w.engine.cancel(w.holder(1000), id).unwrap().value;
    assert_eq!(v.status, Status::Cancelled);
    assert_eq!(w.free("a2"), 1);
    // A repeated cancel answers the cancelled reservation again and decides nothing.
    w.clock.advance(1_000);
    let again = w
        .engine
        .cancel_outcome(w.holder(1000), id, None)
        .unwrap()
        .value;
    assert_eq!(again, (v.clone(), true));
    assert_eq!(w.free("a2"), 1);
    w.reserve(1001, "a2").unwrap();
    // A choice is final: the holder who cancelled cannot take another seat or wait for one.
    check_err(w.reserve(1000, "a1"), "RegistrationEnded");
    check_err(w.engine.join_waitlist(w.holder(1000)), "RegistrationEnded");
}

#[test]
fn waiting_list_offers_freed_seats_in_order_and_passes_ignored_offers_on() {
    let w = world(6);
    // City A has 3 seats (a1: 2, a2: 1); holders 1000..1005 are its holders.
    check_err(w.engine.join_waitlist(w.holder(1003)), "SeatsAvailable");
    let r0 = w.reserve(1000, "a1").unwrap();
    w.reserve(1001, "a1").unwrap();
    w.reserve(1002, "a2").unwrap();
    // Joined out of receipt order: 1005 first, then 1003; 1003's receipt is older.
    let p5 = w.engine.join_waitlist(w.holder(1005)).unwrap().value;
    assert_eq!(p5.position, 1);
    let p3 = w.engine.join_waitlist(w.holder(1003)).unwrap().value;
    assert_eq!(p3.position, 1);
    assert_eq!(
        w.engine.waitlist_status(w.holder(1005)).unwrap().position,
        Some(2)
    );
    check_err(w.engine.join_waitlist(w.holder(1000)), "AlreadyReserved");

    // A cancellation offers the seat to the head (1003), not to the pool.
    let _ = w.engine.cancel(w.holder(1000), r0).unwrap();
    assert_eq!(w.free("a1"), 0);
    let offer = w
        .engine
        .waitlist_status(w.holder(1003))
        .unwrap()
        .offer
        .unwrap();
    assert_eq!(offer.status, Status::Offered);
    assert_eq!(offer.deadline_ms, Some(T0 + 5_000));
    assert_eq!(
        w.engine.waitlist_status(w.holder(1005)).unwrap().position,
        Some(1)
    );

    // Accept turns the offer into a hold at the first stage.
    let held = w
        .engine
        .accept_offer(w.holder(1003), offer.id)
        .unwrap()
        .value;
    assert_eq!(
        (held.status, held.stage),
        (Status::Held, Some(Stage::Documents))
    );

    // Next freed seat goes to 1005, who ignores it: it expires and, nobody waiting, the
    // seat returns to the pool.
    let r3 = held.id;
    let _ = w.engine.cancel(w.holder(1003), r3).unwrap();
    let offer5 = w
        .engine
        .waitlist_status(w.holder(1005))
        .unwrap()
        .offer
        .unwrap();
    w.clock.advance(4_999);
    assert_eq!(w.engine.expire_due().unwrap().0, 0);
    w.clock.advance(1);
    assert_eq!(w.engine.expire_due().unwrap().0, 1);
    assert_eq!(w.status(offer5.id).0, Status::Expired);
    assert_eq!(w.free("a1"), 1);
    check_err(
        w.engine.accept_offer(w.holder(1005), offer5.id),
        "InvalidTransition",
    );
    w.engine.check_invariants().unwrap();
}

#[test]
fn an_ignored_offer_passes_to_the_next_waiting_holder() {
    let w = world(6);
    let r0 = w.reserve(1000, "a1").unwrap();
    w.reserve(1001, "a1").unwrap();
    w.reserve(1002, "a2").unwrap();
    let _ = w.engine.join_waitlist(w.holder(1003)).unwrap();
    let _ = w.engine.join_waitlist(w.holder(1004)).unwrap();
    let _ = w.engine.cancel(w.holder(1000), r0).unwrap();
    let first = w
        .engine
        .waitlist_status(w.holder(1003))
        .unwrap()
        .offer
        .unwrap();
    w.clock.advance(5_000);
    assert_eq!(w.engine.expire_due().unwrap().0, 1);
    assert_eq!(w.status(first.id).0, Status::Expired);
    let second = w
        .engine
        .waitlist_status(w.holder(1004))
        .unwrap()
        .offer
        .unwrap();
    assert_eq!(second.deadline_ms, Some(T0 + 10_000));
    assert_eq!(w.free("a1"), 0);
    // Declining passes it on too; with nobody left, it returns to the pool.
    let v = w.engine.cancel(w.holder(1004), second.id).unwrap().value;
    assert_eq!(v.end_reason, Some(EndReason::OfferDeclined));
    assert_eq!(w.free("a1"), 1);
}

#[test]
fn a_postponed_wave_closes_registration_until_its_new_time() {
    let w = world(2);
    let later = T0 + 3_600_000;
    let _ = w
        .engine
        .replace_schedule(vec![Wave {
            name: "main".into(),
            receipts_until_day: common::CUTOFF_DAY,
            opens_at_ms: later,
            provinces: Some(vec![1]),
            admits_earlier_receipts: false,
        }])
        .unwrap();
    let err = w.reserve(1000, "a1").unwrap_err();
    assert!(matches!(err, EngineError::RegistrationNotOpen { opens_at_ms: Some(t) } if t == later));
    // Province 2 is in no wave any more.
    let south = w.engine.catalog().holder_by_national_id(1004).unwrap();
    let err = w.engine.reserve(south, w.caravan("c1"), None).unwrap_err();
    assert!(matches!(
        err,
        EngineError::RegistrationNotOpen { opens_at_ms: None }
    ));
    w.clock.set(later);
    w.reserve(1000, "a1").unwrap();
    check_err(
        w.engine.replace_schedule(vec![Wave {
            name: "x".into(),
            receipts_until_day: 0,
            opens_at_ms: 0,
            provinces: Some(vec![77]),
            admits_earlier_receipts: false,
        }]),
        "InvalidField",
    );
    let wave = |name: &str, provinces: Option<Vec<u32>>| Wave {
        name: name.into(),
        receipts_until_day: 0,
        opens_at_ms: 0,
        provinces,
        admits_earlier_receipts: false,
    };
    check_err(
        w.engine
            .replace_schedule(vec![wave("a", None), wave("a", None)]),
        "InvalidField",
    );
    check_err(
        w.engine.replace_schedule(vec![wave("a", Some(vec![1, 1]))]),
        "InvalidField",
    );
}

#[test]
fn a_receipt_no_wave_will_ever_reach_is_not_called_even_before_opening() {
    let early = ManualClock::new(T0 - 60_000);
    let engine = Engine::in_memory(
        catalog(2),
        season(),
        Arc::new(early),
        EngineConfig::default(),
    )
    .unwrap();
    let late = engine.catalog().holder_by_national_id(998).unwrap();
    let a1 = engine.catalog().caravan_by_id("a1").unwrap();
    let err = engine.reserve(late, a1, None).unwrap_err();
    assert!(matches!(err, EngineError::NotCalled), "{err:?}");
}

#[test]
fn confirmed_at_once_when_the_season_has_no_stages() {
    let clock = ManualClock::new(T0);
    let mut s = season();
    s.stages.clear();
    let engine =
        Engine::in_memory(catalog(2), s, Arc::new(clock), EngineConfig::default()).unwrap();
    let h = engine.catalog().holder_by_national_id(1000).unwrap();
    let c = engine.catalog().caravan_by_id("a1").unwrap();
    let v = engine.reserve(h, c, None).unwrap().value.reservation;
    assert_eq!(
        (v.status, v.stage, v.deadline_ms),
        (Status::Confirmed, None, None)
    );
}
