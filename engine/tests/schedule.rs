//! The schedule's rule: which wave admits which receipt (`Schedule::eligibility`), the order
//! check that refuses a wider cutoff opening first (`Schedule::check_order`), and both through
//! the engine's decisions.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{T0, catalog, opens_at, season};
use miqat_engine::clock::ManualClock;
use miqat_engine::season::{NotEligible, Schedule, Wave, WaveOrder};
use miqat_engine::{Engine, EngineConfig};

const HOUR: i64 = 3_600_000;

/// A wave `name` for receipts up to `until`, opening at `opens`, in `provinces` (all if empty).
fn wave(name: &str, until: i32, opens: i64, provinces: &[u32]) -> Wave {
    Wave {
        name: name.into(),
        receipts_until_day: until,
        opens_at_ms: opens,
        provinces: (!provinces.is_empty()).then(|| provinces.to_vec()),
        admits_earlier_receipts: false,
    }
}

fn admitting(mut w: Wave) -> Wave {
    w.admits_earlier_receipts = true;
    w
}

/// Checks the answer for a holder of `province` with receipt day `receipt` at `now`.
fn check(waves: &[Wave], province: u32, receipt: i32, now: i64, expect: Result<(), NotEligible>) {
    let schedule = Schedule {
        waves: waves.to_vec(),
    };
    assert_eq!(
        schedule.eligibility(province, receipt, now),
        expect,
        "province {province}, receipt day {receipt}, at {now}, waves {waves:?}"
    );
}

fn not_open(at: i64) -> Result<(), NotEligible> {
    Err(NotEligible::NotOpen {
        opens_at_ms: Some(at),
    })
}

#[test]
fn a_holder_is_called_by_the_first_wave_whose_cutoff_covers_the_receipt() {
    let waves = [
        wave("main", 100, T0, &[]),
        wave("reserve", 115, T0 + HOUR, &[]),
    ];
    // A main receipt: open at T0.
    check(&waves, 1, 100, T0 - 1, not_open(T0));
    check(&waves, 1, 100, T0, Ok(()));
    // A reserve receipt: not called by main, only by reserve.
    check(&waves, 1, 101, T0, not_open(T0 + HOUR));
    check(&waves, 1, 115, T0 + HOUR, Ok(()));
    // Later than every cutoff: not called, before and after the openings.
    check(&waves, 1, 116, T0 - 1, Err(NotEligible::NotCalled));
    check(&waves, 1, 116, T0 + HOUR, Err(NotEligible::NotCalled));
    // Two waves with the same (first covering) cutoff both call the holder.
    let twins = [wave("a", 100, T0 + HOUR, &[]), wave("b", 100, T0, &[])];
    check(&twins, 1, 50, T0, Ok(()));
    // No wave includes the province at all: not open, with no opening to wait for.
    check(
        &[wave("north", 100, T0, &[1])],
        2,
        50,
        T0,
        Err(NotEligible::NotOpen { opens_at_ms: None }),
    );
}

#[test]
fn an_open_wider_wave_does_not_admit_receipts_a_narrower_wave_calls() {
    // The case: main postponed, reserve already open.
    let waves = [
        wave("main", 100, T0 + 2 * HOUR, &[]),
        wave("reserve", 115, T0, &[]),
    ];
    check(&waves, 1, 90, T0 + HOUR, not_open(T0 + 2 * HOUR));
    check(&waves, 1, 110, T0 + HOUR, Ok(()));
    check(&waves, 1, 90, T0 + 2 * HOUR, Ok(()));
    // Unless the wider wave says it admits earlier receipts: then its opening is the one to
    // wait for, and it admits them at once.
    let waves = [
        wave("main", 100, T0 + 2 * HOUR, &[]),
        admitting(wave("reserve", 115, T0 + HOUR, &[])),
    ];
    check(&waves, 1, 90, T0, not_open(T0 + HOUR));
    check(&waves, 1, 90, T0 + HOUR, Ok(()));
    // A wave admitting earlier receipts never admits later ones than its own cutoff.
    check(&waves, 1, 116, T0 + 2 * HOUR, Err(NotEligible::NotCalled));
}

#[test]
fn staggered_provinces_are_called_by_their_own_waves() {
    let waves = [
        wave("main-10", 100, T0, &[1]),
        wave("main-15", 100, T0 + 5 * HOUR, &[2]),
        wave("reserve", 115, T0 + 24 * HOUR, &[]),
    ];
    check(&waves, 1, 90, T0, Ok(()));
    check(&waves, 2, 90, T0, not_open(T0 + 5 * HOUR));
    check(&waves, 2, 90, T0 + 5 * HOUR, Ok(()));
    // Province 2's first covering wave for a main receipt is its own main wave, even though
    // province 1's main wave is open; reserve receipts wait for the reserve wave everywhere.
    check(&waves, 2, 110, T0 + 5 * HOUR, not_open(T0 + 24 * HOUR));
    // A province only a wider wave includes: that wave calls all its receipts.
    let waves = [
        wave("main", 100, T0 + HOUR, &[1]),
        wave("reserve", 115, T0, &[]),
    ];
    check(&waves, 2, 90, T0, Ok(()));
    check(&waves, 1, 90, T0, not_open(T0 + HOUR));
}

#[test]
fn the_order_check_refuses_a_wider_cutoff_opening_first_and_names_both_waves() {
    let day = |text: &str| {
        miqat_engine::calendar::JalaliDate::parse(text)
            .unwrap()
            .to_day_number()
    };
    let at = |text: &str| miqat_engine::calendar::parse_tehran_datetime(text).unwrap();
    let schedule = Schedule {
        waves: vec![
            wave("main", day("1386/01/31"), at("1398/12/28 10:00"), &[]),
            wave("reserve", day("1386/02/15"), at("1398/12/21 10:00"), &[]),
        ],
    };
    let err = schedule.check_order().unwrap_err();
    assert_eq!((err.narrower, err.wider, err.province_id), (0, 1, None));
    for words in [
        "\"reserve\"",
        "\"main\"",
        "1398/12/21 10:00",
        "1398/12/28 10:00",
        "1386/01/31",
        "1386/02/15",
        "in every province",
    ] {
        assert!(
            err.message.contains(words),
            "{:?} lacks {words}",
            err.message
        );
    }
    // Narrower first, the same opening, or no shared province: in order.
    for waves in [
        vec![
            wave("main", 100, T0, &[]),
            wave("reserve", 115, T0 + HOUR, &[]),
        ],
        vec![wave("main", 100, T0, &[]), wave("reserve", 115, T0, &[])],
        vec![
            wave("main", 100, T0 + HOUR, &[1]),
            wave("reserve", 115, T0, &[2]),
        ],
    ] {
        assert_eq!(Schedule { waves }.check_order(), Ok(()));
    }
    // A stagger sharing one province names it.
    let err = Schedule {
        waves: vec![
            wave("main", 100, T0 + HOUR, &[4, 2, 3]),
            wave("reserve", 115, T0, &[5, 3, 2]),
        ],
    }
    .check_order()
    .unwrap_err();
    assert_eq!(err.province_id, Some(2));
    assert!(err.message.contains("in province 2"), "{}", err.message);
}

fn engine_at(now: i64) -> (Arc<Engine>, ManualClock) {
    let clock = ManualClock::new(now);
    let engine = Engine::in_memory(
        catalog(2),
        season(),
        Arc::new(clock.clone()),
        EngineConfig::default(),
    )
    .unwrap();
    (engine, clock)
}

#[test]
fn postponing_only_the_main_wave_is_refused_unless_allowed_and_then_closes_main_receipts() {
    let (engine, _clock) = engine_at(T0);
    let main = common::CUTOFF_DAY;
    let waves = vec![
        wave("main", main - 2, T0 + HOUR, &[]),
        wave("reserve", main, T0 - HOUR, &[]),
    ];
    let err = engine.replace_schedule(waves.clone()).unwrap_err();
    assert_eq!(err.code(), "schedule_out_of_order");
    assert!(err.to_string().contains("\"reserve\""), "{err}");
    // Nothing changed.
    assert_eq!(engine.schedule().waves.len(), 1);
    let _ = engine
        .replace_schedule_with(waves, WaveOrder::AllowWiderCutoffFirst)
        .unwrap();
    // Holder 1000 (receipt day 100) is called by main: not open yet, though reserve is.
    let holder = engine.catalog().holder_by_national_id(1000).unwrap();
    let a1 = engine.catalog().caravan_by_id("a1").unwrap();
    let err = engine.reserve(holder, a1, None).unwrap_err();
    assert_eq!(opens_at(&err), Some(T0 + HOUR));
    let err = engine.join_waitlist(holder).unwrap_err();
    assert_eq!(err.code(), "registration_not_open");
    // Holder 998 (receipt day 200) is later than both cutoffs.
    let late = engine.catalog().holder_by_national_id(998).unwrap();
    assert_eq!(
        engine.reserve(late, a1, None).unwrap_err().code(),
        "not_called"
    );
}
