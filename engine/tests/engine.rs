//! Engine behaviour at its API: eligibility, allocation, idempotency, lifecycle, expiry,
//! waiting lists and schedule changes, all on a manual clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::check::check;
use common::{T0, catalog, opens_at, season, world_fixture};
use miqat_engine::catalog::{CaravanIdx, HolderIdx};
use miqat_engine::clock::ManualClock;
use miqat_engine::model::{OperatorEvent, ReservationId, Status};
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

/// Asserts that `result` failed with the error whose `EngineError::code()` is `code`.
#[track_caller]
fn check_err<T: std::fmt::Debug>(result: Result<T, EngineError>, code: &str) {
    match result {
        Err(e) => assert_eq!(e.code(), code, "{e}"),
        Ok(value) => panic!("expected {code}, got {value:?}"),
    }
}

#[test]
fn credentials_are_one_answer_for_unknown_id_and_wrong_code() {
    let w = world(2);
    assert_eq!(w.engine.authenticate(1000, "t0").unwrap(), w.holder(1000));
    check_err(w.engine.authenticate(1000, "t1"), "invalid_credentials");
    check_err(w.engine.authenticate(424242, "t0"), "invalid_credentials");
    check_err(w.engine.authenticate(1000, ""), "invalid_credentials");
    // People type Persian digits: the tracking code "t12" of holder 1012 as "t۱۲".
    let w = world(5);
    assert_eq!(w.engine.authenticate(1012, "t۱۲").unwrap(), w.holder(1012));
}

#[test]
fn eligibility_refusals_name_the_precise_reason() {
    check(
        &world_fixture(2),
        "
        reserve 999 a1
        reserve 998 a1
        reserve 1000 b1
        reserve 1000 c1
        free a1   # refusals change nothing
        ",
        "
        reserve 999 a1 -> receipt_needs_conversion
        reserve 998 a1 -> not_called
        reserve 1000 b1 -> province_mismatch
        reserve 1000 c1 -> province_mismatch
        free a1 -> 2
        ",
    );
    // The engine's time never goes back, so a fresh engine is needed to be before opening.
    check(
        &world_fixture(2),
        "
        at T0-60s
        reserve 1000 a1
        free a1
        ",
        "
        at T0-60s -> now T0-60s
        reserve 1000 a1 -> registration_not_open opens T0
        free a1 -> 2
        ",
    );
}

#[test]
fn seats_go_first_come_first_served_and_never_beyond_capacity() {
    check(
        &world_fixture(4),
        "
        reserve 1000 a1
        reserve 1001 a1
        free a1
        reserve 1002 a1
        reserve 1000 a2
        show 1000
        ",
        "
        reserve 1000 a1 -> a1 held documents until T0+10s
        reserve 1001 a1 -> a1 held documents until T0+10s
        free a1 -> 0
        reserve 1002 a1 -> caravan_full [a2]
        reserve 1000 a2 -> already_reserved [1000 a1 held documents until T0+10s]
        show 1000 -> a1 held documents until T0+10s
        ",
    );
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
    check_err(
        w.engine.reserve(h, a2, Some(b"k1")),
        "idempotency_key_reused",
    );
    check_err(w.engine.reserve(h, a1, Some(&[b'x'; 300])), "invalid_field");
    assert_eq!(w.free("a1"), 1);
    // The original answer, whatever happened since: a cancelled reservation replays as held.
    let _ = w.engine.cancel(h, first.reservation.id).unwrap();
    let replay = w.engine.reserve(h, a1, Some(b"k1")).unwrap().value;
    assert!(replay.replayed);
    assert_eq!(replay.reservation, first.reservation);
    let _ = w.engine.reserve(w.holder(1001), a1, None).unwrap();
    // Past the retention window the key is forgotten: the request is decided afresh.
    w.clock.advance(24 * 3_600_000 + 1);
    check_err(w.engine.reserve(h, a1, Some(b"k1")), "registration_ended");
}

#[test]
fn stages_complete_in_order_and_the_last_confirms() {
    // Each stage's deadline counts from its start; once confirmed nothing is pending, so a
    // long wait expires nothing; a confirmed holder can still be rejected at the medical.
    check(
        &world_fixture(2),
        "
        reserve 1000 a1
        event 1000 medical_approved
        advance 1s
        event 1000 documents_received
        advance 1s
        event 1000 first_payment_received
        advance 1s
        event 1000 medical_approved
        advance 1s
        event 1000 final_payment_received
        advance 10h
        expire
        event 1000 medical_rejected
        free a1
        event 1000 deceased
        ",
        "
        reserve 1000 a1 -> a1 held documents until T0+10s
        event 1000 medical_approved -> invalid_transition
        advance 1s -> now T0+1s
        event 1000 documents_received -> a1 held first_payment until T0+21s
        advance 1s -> now T0+2s
        event 1000 first_payment_received -> a1 held medical until T0+32s
        advance 1s -> now T0+3s
        event 1000 medical_approved -> a1 held final_payment until T0+43s
        advance 1s -> now T0+4s
        event 1000 final_payment_received -> a1 confirmed
        advance 10h -> now T0+36004s
        expire -> expired 0
        event 1000 medical_rejected -> a1 rejected because medical_rejected
        free a1 -> 2
        event 1000 deceased -> invalid_transition
        ",
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
        "invalid_transition",
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
    check_err(w.reserve(1000, "a1"), "registration_ended");
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
    check_err(w.engine.cancel(w.holder(1001), id), "reservation_not_found");
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
    check_err(w.reserve(1000, "a1"), "registration_ended");
    check_err(w.engine.join_waitlist(w.holder(1000)), "registration_ended");
}

#[test]
fn waiting_list_offers_freed_seats_in_order_and_passes_ignored_offers_on() {
    // City A has 3 seats (a1: 2, a2: 1); holders 1000..1005 are its holders. 1005 joins
    // before 1003, but 1003's receipt is older. A cancellation offers the seat to the head
    // (1003), not to the pool; accepting turns the offer into a hold at the first stage. The
    // next freed seat goes to 1005, who ignores it: it expires and, nobody waiting, the seat
    // returns to the pool.
    check(
        &world_fixture(6),
        "
        join 1003
        reserve 1000 a1
        reserve 1001 a1
        reserve 1002 a2
        join 1005
        join 1003
        position 1005
        join 1000
        cancel 1000
        free a1
        offer 1003
        position 1005
        accept 1003
        cancel 1003
        offer 1005
        advance 4999ms
        expire
        advance 1ms
        expire
        show 1005
        free a1
        accept 1005
        ",
        "
        join 1003 -> seats_available
        reserve 1000 a1 -> a1 held documents until T0+10s
        reserve 1001 a1 -> a1 held documents until T0+10s
        reserve 1002 a2 -> a2 held documents until T0+10s
        join 1005 -> position 1
        join 1003 -> position 1
        position 1005 -> 2
        join 1000 -> already_reserved [1000 a1 held documents until T0+10s]
        cancel 1000 -> a1 cancelled because holder_cancelled
        free a1 -> 0
        offer 1003 -> a1 offered until T0+5s
        position 1005 -> 1
        accept 1003 -> a1 held documents until T0+10s
        cancel 1003 -> a1 cancelled because holder_cancelled
        offer 1005 -> a1 offered until T0+5s
        advance 4999ms -> now T0+4999ms
        expire -> expired 0
        advance 1ms -> now T0+5s
        expire -> expired 1
        show 1005 -> a1 expired because offer_expired
        free a1 -> 1
        accept 1005 -> invalid_transition
        ",
    );
}

#[test]
fn an_ignored_offer_passes_to_the_next_waiting_holder() {
    // An offer nobody takes expires and passes to the next waiting holder; declining passes
    // it on too, and with nobody left the seat returns to the pool.
    check(
        &world_fixture(6),
        "
        reserve 1000 a1
        reserve 1001 a1
        reserve 1002 a2
        join 1003
        join 1004
        cancel 1000
        offer 1003
        advance 5s
        expire
        show 1003
        offer 1004
        free a1
        cancel 1004
        free a1
        ",
        "
        reserve 1000 a1 -> a1 held documents until T0+10s
        reserve 1001 a1 -> a1 held documents until T0+10s
        reserve 1002 a2 -> a2 held documents until T0+10s
        join 1003 -> position 1
        join 1004 -> position 2
        cancel 1000 -> a1 cancelled because holder_cancelled
        offer 1003 -> a1 offered until T0+5s
        advance 5s -> now T0+5s
        expire -> expired 1
        show 1003 -> a1 expired because offer_expired
        offer 1004 -> a1 offered until T0+10s
        free a1 -> 0
        cancel 1004 -> a1 cancelled because offer_declined
        free a1 -> 1
        ",
    );
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
    assert_eq!(opens_at(&err), Some(later), "{err}");
    // Province 2 is in no wave any more.
    let south = w.engine.catalog().holder_by_national_id(1004).unwrap();
    let err = w.engine.reserve(south, w.caravan("c1"), None).unwrap_err();
    assert_eq!(opens_at(&err), None, "{err}");
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
        "invalid_field",
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
        "invalid_field",
    );
    check_err(
        w.engine.replace_schedule(vec![wave("a", Some(vec![1, 1]))]),
        "invalid_field",
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
    assert_eq!(err.code(), "not_called", "{err}");
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

#[test]
#[should_panic(expected = "transcript differs")]
fn check_fails_when_the_transcript_differs() {
    check(
        &world_fixture(1),
        "reserve 1000 a1",
        "reserve 1000 a1 -> a1 confirmed",
    );
}

#[test]
#[should_panic(expected = "fixture line 2: unknown stage \"paperwork\"")]
fn a_fixture_that_does_not_parse_names_its_line() {
    let _ = common::fixture::parse(
        "province 1 North: city A: a1 cap 1
         stages: paperwork 10s; offers 5s",
    );
}

#[test]
fn the_fixture_numbers_holders_and_checks_national_ids_when_asked() {
    let fx = common::fixture::parse(
        "province 1 North: city A: a1 cap 1, x1..=x3 cap 2 medina_second group C
         province 2 South: city C: c1 cap 1
         holders: ids checked from 271828000; A 0..2; 7 needs_conversion day 10 in C
         stages: none; offers 5s",
    );
    let cat = &fx.catalog;
    let ids: Vec<&str> = cat.caravans().iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["a1", "x1", "x2", "x3", "c1"]);
    assert_eq!(cat.caravans()[3].capacity, 2);
    assert_eq!(cat.holder_count(), 3);
    let seventh = cat.holder_by_national_id(fx.national_id(7)).unwrap();
    let seventh = cat.holder(seventh).unwrap();
    assert_eq!(
        seventh.national_id, 2_718_280_077,
        "271828007 and its check digit 7"
    );
    assert_eq!((seventh.tracking_code, seventh.receipt_day), ("t7", 10));
    assert!(fx.season.stages.is_empty());
}
