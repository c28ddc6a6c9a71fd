//! Engine time under a misbehaving wall clock: a step beyond the tolerance neither expires
//! holds early nor keeps them alive past their deadline on the monotonic clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{T0, catalog, season};
use miqat_engine::clock::{AnchoredClock, Clock, ManualClock};
use miqat_engine::model::Status;
use miqat_engine::{Engine, EngineConfig};

#[test]
fn a_forward_wall_clock_step_does_not_mass_expire_holds() {
    let monotonic = ManualClock::new(0);
    let wall = ManualClock::new(T0);
    let (m, w) = (monotonic.clone(), wall.clone());
    let clock = Arc::new(AnchoredClock::new(
        move || m.now_ms(),
        move || w.now_ms(),
        2_000,
    ));
    let engine = Engine::in_memory(catalog(3), season(), clock, EngineConfig::default()).unwrap();
    let held: Vec<_> = [1000, 1001]
        .into_iter()
        .map(|nid| {
            let h = engine.catalog().holder_by_national_id(nid).unwrap();
            let c = engine.catalog().caravan_by_id("a1").unwrap();
            engine.reserve(h, c, None).unwrap().value.reservation.id
        })
        .collect();

    // The wall clock jumps a day ahead (a bad NTP server, an operator's typo): the documents
    // deadline (10 s) has not passed on the monotonic clock, so nothing expires.
    wall.advance(86_400_000);
    monotonic.advance(1_000);
    let (expired, _) = engine.expire_due().unwrap();
    assert_eq!(expired, 0);
    for id in &held {
        assert_eq!(engine.reservation(*id).unwrap().status, Status::Held);
    }

    // Time goes on at the monotonic rate: the deadline passes 10 s after the reservation.
    monotonic.advance(9_000);
    wall.advance(9_000);
    let (expired, _) = engine.expire_due().unwrap();
    assert_eq!(expired, 2);
    for id in &held {
        assert_eq!(engine.reservation(*id).unwrap().status, Status::Expired);
    }
    engine.check_invariants().unwrap();
}
