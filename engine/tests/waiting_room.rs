//! The waiting room through the engine: one place per holder, the pre-queue window, the
//! outflow, sold-out provinces, and the same order after recovery (from the log alone and from
//! a snapshot), since the seed and every join are logged.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{T0, catalog, code, season};
use miqat_engine::catalog::HolderIdx;
use miqat_engine::clock::ManualClock;
use miqat_engine::season::{Outflow, RoomConfig, Season};
use miqat_engine::wal::{MemStorage, Storage};
use miqat_engine::{Engine, EngineConfig};

const HOLDERS_PER_CITY: u32 = 6;
/// The room's wave opens a minute after `T0`; joins are taken from `T0`.
const OPENS: i64 = T0 + 60_000;

fn room_season() -> Season {
    let mut season = season();
    season.schedule.waves[0].opens_at_ms = OPENS;
    season.rooms = vec![(
        "main".to_owned(),
        RoomConfig {
            enabled: true,
            outflow: Outflow::PerSecond(2.0),
            pass_lifetime_ms: 60_000,
            pre_queue_ms: 60_000,
        },
    )];
    season
}

fn open(storage: &MemStorage, clock: &ManualClock) -> Arc<Engine> {
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    Engine::open(
        catalog(HOLDERS_PER_CITY),
        room_season(),
        Arc::new(clock.clone()),
        storage,
        EngineConfig::default(),
    )
    .unwrap()
    .0
}

fn holder(engine: &Engine, national_id: u64) -> HolderIdx {
    engine.catalog().holder_by_national_id(national_id).unwrap()
}

fn join(engine: &Engine, national_id: u64) -> Option<u64> {
    let joined = engine.queue_join(holder(engine, national_id)).unwrap();
    engine.wait(&joined).unwrap();
    joined.value.1.place
}

/// Every holder's place (national ID order), as the engine reports it now.
fn places(engine: &Engine, ids: &[u64]) -> Vec<Option<u64>> {
    ids.iter()
        .map(|&id| {
            engine
                .queue_standing(holder(engine, id))
                .and_then(|(_, s)| s.place)
        })
        .collect()
}

#[test]
fn joins_open_with_the_pre_queue_window_and_one_holder_has_one_place() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0 - 1);
    let engine = open(&storage, &clock);
    let h = holder(&engine, 1000);
    assert_eq!(code(engine.queue_join(h)), "queue_not_open");
    clock.set(T0);
    assert_eq!(join(&engine, 1000), None, "early joiners wait for the draw");
    assert_eq!(join(&engine, 1000), None);
    assert_eq!(engine.room_stats()[0].joined, 1);
    clock.set(OPENS + 1);
    let (room, standing) = engine.queue_standing(h).unwrap();
    assert_eq!((room.wave.as_str(), standing.place), ("main", Some(0)));
    assert_eq!(join(&engine, 1001), Some(1));
    assert_eq!(
        join(&engine, 1001),
        Some(1),
        "joining again: the same place"
    );
    assert_eq!(engine.room_stats()[0].joined, 2);
    // A holder the wave does not call has no room.
    assert_eq!(
        code(engine.queue_join(holder(&engine, 998))),
        "no_waiting_room"
    );
}

#[test]
fn the_outflow_admits_at_the_configured_rate_after_the_opening() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let engine = open(&storage, &clock);
    for id in 1000..1006 {
        join(&engine, id);
    }
    assert_eq!(
        engine.advance_room("main", 2.0).unwrap(),
        None,
        "not open yet"
    );
    clock.set(OPENS + 2_000);
    let ticket = engine.advance_room("main", 2.0).unwrap();
    engine
        .wait(&miqat_engine::Committed { value: (), ticket })
        .unwrap();
    let stats = &engine.room_stats()[0];
    assert_eq!((stats.admitted, stats.waiting), (4, 2));
    let admitted: Vec<_> = (1000..1006)
        .filter_map(|id| engine.queue_standing(holder(&engine, id)))
        .filter(|(_, s)| s.admitted_at_ms == Some(OPENS + 2_000))
        .collect();
    assert_eq!(admitted.len(), 4);
}

#[test]
fn the_order_survives_recovery_from_the_log_and_from_a_snapshot() {
    let ids: Vec<u64> = (1000..1000 + 3 * u64::from(HOLDERS_PER_CITY)).collect();
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let engine = open(&storage, &clock);
    for &id in &ids[..10] {
        join(&engine, id);
    }
    clock.set(OPENS + 500);
    for &id in &ids[10..14] {
        join(&engine, id);
    }
    clock.set(OPENS + 3_000);
    let ticket = engine.advance_room("main", 2.0).unwrap();
    engine
        .wait(&miqat_engine::Committed { value: (), ticket })
        .unwrap();
    let before = places(&engine, &ids);
    let stats = engine.room_stats();
    assert!(before[..14].iter().all(Option::is_some));
    drop(engine);
    storage.crash();

    // From the log alone.
    let engine = open(&storage, &clock);
    assert_eq!(places(&engine, &ids), before);
    assert_eq!(engine.room_stats(), stats);
    // Joins after recovery queue behind, and a snapshot keeps it all.
    for &id in &ids[14..] {
        join(&engine, id);
    }
    let before = places(&engine, &ids);
    engine.snapshot().unwrap();
    let stats = engine.room_stats();
    drop(engine);
    storage.crash();
    let engine = open(&storage, &clock);
    assert_eq!(places(&engine, &ids), before);
    assert_eq!(engine.room_stats(), stats);
}

#[test]
fn holders_of_a_sold_out_province_are_told_at_once() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(OPENS);
    let engine = open(&storage, &clock);
    // Province 2 (city C) has one caravan, c1, of 2 seats; its holders are 1000 + 2 * 6 ...
    let c1 = engine.catalog().caravan_by_id("c1").unwrap();
    let south: Vec<u64> = (1000..1000 + 3 * u64::from(HOLDERS_PER_CITY))
        .filter(|&id| {
            engine
                .catalog()
                .holder(holder(&engine, id))
                .unwrap()
                .province
                .0
                == 1
        })
        .collect();
    assert!(south.len() >= 3, "{south:?}");
    for &id in &south[..2] {
        let decided = engine.reserve(holder(&engine, id), c1, None).unwrap();
        engine.wait(&decided).unwrap();
    }
    assert_eq!(
        code(engine.queue_join(holder(&engine, south[2]))),
        "province_sold_out"
    );
}
