//! Durability at the engine's boundary: acknowledged decisions survive crashes, deadlines
//! that passed while down expire at once, log I/O errors stop acknowledgements, and a damaged
//! or foreign log is refused with a message that says where.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{T0, catalog, code, opens_at, season};
use miqat_engine::clock::ManualClock;
use miqat_engine::model::{ReservationId, Status};
use miqat_engine::persist::RecoveryReport;
use miqat_engine::season::Wave;
use miqat_engine::wal::{FaultMode, FaultyStorage, MemStorage, MissingRecords, Storage};
use miqat_engine::{Engine, EngineConfig, EngineError};

fn open(
    storage: &MemStorage,
    clock: &ManualClock,
) -> Result<(Arc<Engine>, RecoveryReport), EngineError> {
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    Engine::open(
        catalog(3),
        season(),
        Arc::new(clock.clone()),
        storage,
        EngineConfig::default(),
    )
}

fn reserve(engine: &Engine, national_id: u64, caravan: &str) -> Result<ReservationId, EngineError> {
    let h = engine.catalog().holder_by_national_id(national_id).unwrap();
    let c = engine.catalog().caravan_by_id(caravan).unwrap();
    let decided = engine.reserve(h, c, None)?;
    engine.wait(&decided)?;
    Ok(decided.value.reservation.id)
}

fn segment(storage: &MemStorage) -> String {
    storage
        .names()
        .into_iter()
        .find(|n| n.starts_with("wal-"))
        .unwrap()
}

#[test]
fn acknowledged_reservations_survive_a_crash_with_and_without_snapshot() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let first = reserve(&engine, 1000, "a1").unwrap();
    engine.snapshot().unwrap();
    let second = reserve(&engine, 1001, "a1").unwrap();
    drop(engine);
    storage.crash();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.snapshot_lsn.is_some());
    assert_eq!(
        report.records_replayed, 1,
        "only the record after the snapshot is replayed"
    );
    for id in [first, second] {
        assert_eq!(engine.reservation(id).unwrap().status, Status::Held);
    }
    assert_eq!(code(reserve(&engine, 1002, "a1")), "caravan_full");
    engine.check_invariants().unwrap();
}

fn open_with(
    storage: &MemStorage,
    clock: &ManualClock,
    missing_records: MissingRecords,
) -> Result<(Arc<Engine>, RecoveryReport), EngineError> {
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    let config = EngineConfig {
        missing_records,
        ..EngineConfig::default()
    };
    Engine::open(
        catalog(3),
        season(),
        Arc::new(clock.clone()),
        storage,
        config,
    )
}

#[test]
fn a_deleted_snapshot_refuses_to_start_instead_of_starting_empty() {
    // Reserve, stop cleanly, start and stop cleanly again, lose the snapshot file: the oldest
    // segment now starts after records that only the snapshot held.
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let ids = [1000, 1001].map(|nid| reserve(&engine, nid, "a1").unwrap());
    engine.shutdown().unwrap();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.snapshot_lsn.is_some());
    engine.shutdown().unwrap();
    let snapshots: Vec<String> = storage
        .names()
        .into_iter()
        .filter(|n| n.starts_with("snapshot-"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{:?}", storage.names());
    storage.remove(&snapshots[0]).unwrap();

    let Err(err) = open(&storage, &clock) else {
        panic!("started without the snapshot's records");
    };
    let message = err.to_string();
    assert!(message.contains("are missing"), "{message}");
    assert!(message.contains("--accept-missing-records"), "{message}");
    assert!(
        storage.names().iter().any(|n| n.starts_with("wal-")),
        "a refusal removes nothing"
    );

    // The explicit override starts without them, says so, and snapshots at once so that the
    // next start needs no override.
    let (engine, report) = open_with(&storage, &clock, MissingRecords::Accept).unwrap();
    assert!(report.accepted_loss.is_some());
    for id in ids {
        assert!(engine.reservation(id).is_none());
    }
    engine.shutdown().unwrap();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.accepted_loss.is_none());
    reserve(&engine, 1000, "a1").unwrap();
    engine.check_invariants().unwrap();
}

#[test]
fn what_expired_while_down_expires_at_once_on_restart() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let id = reserve(&engine, 1000, "a1").unwrap();
    drop(engine);
    storage.crash();
    clock.set(T0 + 25_000);
    let (engine, report) = open(&storage, &clock).unwrap();
    assert_eq!(report.expired_at_start, 1);
    let view = engine.reservation(id).unwrap();
    assert_eq!(view.status, Status::Expired);
    assert_eq!(view.updated_ms, T0 + 25_000);
    assert_eq!(
        engine.free_seats(engine.catalog().caravan_by_id("a1").unwrap()),
        2
    );
    // The expiry itself was logged: a second restart does not expire it again.
    drop(engine);
    storage.crash();
    let (_, report) = open(&storage, &clock).unwrap();
    assert_eq!(report.expired_at_start, 0);
}

#[test]
fn an_fsync_error_stops_every_acknowledgement() {
    let memory = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    let clock = ManualClock::new(T0);
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let (engine, _) = Engine::open(
        catalog(3),
        season(),
        Arc::new(clock.clone()),
        storage,
        EngineConfig::default(),
    )
    .unwrap();
    let kept = reserve(&engine, 1000, "a1").unwrap();
    faulty.fail_sync(1, FaultMode::Once);
    let h = engine.catalog().holder_by_national_id(1001).unwrap();
    let c = engine.catalog().caravan_by_id("a1").unwrap();
    let decided = engine.reserve(h, c, None).unwrap();
    assert!(matches!(
        engine.wait(&decided),
        Err(EngineError::LogFailed(_))
    ));
    // Fail-stop: even though the next fsync would work, nothing is acknowledged any more.
    assert!(matches!(
        reserve(&engine, 1003, "b1"),
        Err(EngineError::LogFailed(_))
    ));
    assert!(matches!(
        engine.expire_due(),
        Ok(_) | Err(EngineError::LogFailed(_))
    ));
    drop(engine);
    memory.crash();
    let (engine, _) = open(&memory, &clock).unwrap();
    assert_eq!(engine.reservation(kept).unwrap().status, Status::Held);
    engine.check_invariants().unwrap();
}

#[test]
fn a_write_error_stops_every_acknowledgement() {
    let memory = MemStorage::new();
    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let (engine, _) = Engine::open(
        catalog(3),
        season(),
        Arc::new(ManualClock::new(T0)),
        storage,
        EngineConfig::default(),
    )
    .unwrap();
    faulty.fail_write(1, FaultMode::Persistent);
    assert!(matches!(
        reserve(&engine, 1000, "a1"),
        Err(EngineError::LogFailed(_))
    ));
    assert!(matches!(
        reserve(&engine, 1001, "a1"),
        Err(EngineError::LogFailed(_))
    ));
}

#[test]
fn a_flipped_bit_in_the_middle_refuses_start_naming_segment_and_offset() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    for (n, caravan) in [(1000, "a1"), (1001, "a1"), (1002, "a2"), (1003, "b1")] {
        reserve(&engine, n, caravan).unwrap();
    }
    drop(engine);
    storage.crash();
    let name = segment(&storage);
    let mut bytes = storage.contents(&name).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    storage.write_whole(&name, &bytes).unwrap();
    let err = open(&storage, &clock).unwrap_err().to_string();
    assert!(
        err.contains(&name) && err.contains("offset"),
        "unclear refusal: {err}"
    );
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_rest_recovered() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let first = reserve(&engine, 1000, "a1").unwrap();
    reserve(&engine, 1001, "a1").unwrap();
    drop(engine);
    storage.crash();
    let name = segment(&storage);
    let bytes = storage.contents(&name).unwrap();
    storage
        .write_whole(&name, &bytes[..bytes.len() - 5])
        .unwrap();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.torn_tail.is_some());
    assert_eq!(engine.reservation(first).unwrap().status, Status::Held);
    assert_eq!(
        engine.free_seats(engine.catalog().caravan_by_id("a1").unwrap()),
        1
    );
    engine.check_invariants().unwrap();
}

#[test]
fn a_log_of_another_catalog_is_refused() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    reserve(&engine, 1000, "a1").unwrap();
    drop(engine);
    let other: Arc<dyn Storage> = Arc::new(storage.clone());
    let err = Engine::open(
        catalog(4),
        season(),
        Arc::new(clock),
        other,
        EngineConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::Recovery(_)), "{err}");
}

#[test]
fn a_replaced_schedule_survives_restart() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let later = T0 + 3_600_000;
    let c = engine
        .replace_schedule(vec![Wave {
            name: "main".into(),
            receipts_until_day: common::CUTOFF_DAY,
            opens_at_ms: later,
            provinces: None,
            admits_earlier_receipts: false,
        }])
        .unwrap();
    engine.wait(&c).unwrap();
    drop(engine);
    storage.crash();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.schedule_from_log);
    assert_eq!(
        opens_at(&reserve(&engine, 1000, "a1").unwrap_err()),
        Some(later)
    );
    engine.snapshot().unwrap();
    drop(engine);
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.schedule_from_log, "kept through a snapshot too");
    assert_eq!(engine.schedule().waves[0].opens_at_ms, later);
}

/// A wave list as logs and snapshots wrote it before waves had `admits_earlier_receipts`:
/// one wave for every province.
fn old_waves(out: &mut Vec<u8>, name: &str, until_day: i32, opens_at_ms: i64) {
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&until_day.to_le_bytes());
    out.extend_from_slice(&opens_at_ms.to_le_bytes());
    out.extend_from_slice(&0xFFFFu16.to_le_bytes());
}

/// A log of the given catalog's shape, written by hand through the log's own API.
fn old_log(storage: &MemStorage) -> Arc<miqat_engine::wal::Wal> {
    use miqat_engine::wal::{Wal, WalConfig};
    let provinces = catalog(3).provinces().len();
    let config = WalConfig {
        log_tag: catalog(3).fingerprint(),
        ..WalConfig::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    Wal::open(storage, config, 1, vec![0; provinces + 1]).unwrap()
}

#[test]
fn a_schedule_record_of_the_old_kind_still_recovers() {
    let storage = MemStorage::new();
    let later = T0 + 3_600_000;
    let wal = old_log(&storage);
    let mut payload = T0.to_le_bytes().to_vec();
    old_waves(&mut payload, "postponed", common::CUTOFF_DAY, later);
    let global = catalog(3).provinces().len() as u16;
    // Kind 5: the schedule record as it was written before the flags byte.
    let ticket = wal.append(global, 5, &payload).unwrap();
    wal.wait_durable(ticket).unwrap();
    wal.shutdown().unwrap();
    drop(wal);
    let clock = ManualClock::new(T0);
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.schedule_from_log);
    let waves = &engine.schedule().waves;
    assert_eq!(waves.len(), 1);
    assert_eq!(
        (
            waves[0].name.as_str(),
            waves[0].opens_at_ms,
            waves[0].admits_earlier_receipts
        ),
        ("postponed", later, false)
    );
    assert_eq!(
        opens_at(&reserve(&engine, 1000, "a1").unwrap_err()),
        Some(later)
    );
}

#[test]
fn a_version_1_snapshot_still_recovers() {
    let storage = MemStorage::new();
    let later = T0 + 3_600_000;
    let wal = old_log(&storage);
    let cat = catalog(3);
    let mut payload = Vec::new();
    payload.extend_from_slice(&1u32.to_le_bytes());
    payload.extend_from_slice(&cat.fingerprint().to_le_bytes());
    payload.extend_from_slice(&(cat.provinces().len() as u32).to_le_bytes());
    payload.extend_from_slice(&0u64.to_le_bytes()); // the global shard's cut
    payload.push(1); // the schedule was replaced
    old_waves(&mut payload, "postponed", common::CUTOFF_DAY, later);
    for _ in cat.provinces() {
        payload.extend_from_slice(&0u64.to_le_bytes()); // cut
        payload.extend_from_slice(&0u64.to_le_bytes()); // next join sequence
        for _ in 0..3 {
            payload.extend_from_slice(&0u32.to_le_bytes()); // reservations, waiting, keys
        }
    }
    wal.write_snapshot(0, &payload).unwrap();
    wal.shutdown().unwrap();
    drop(wal);
    let clock = ManualClock::new(T0);
    let (engine, report) = open(&storage, &clock).unwrap();
    assert!(report.schedule_from_log);
    let waves = &engine.schedule().waves;
    assert_eq!(
        (waves[0].opens_at_ms, waves[0].admits_earlier_receipts),
        (later, false)
    );
    // A new snapshot is written in the current version and reads back the same.
    engine.snapshot().unwrap();
    drop(engine);
    let (engine, _) = open(&storage, &clock).unwrap();
    assert_eq!(engine.schedule().waves[0].opens_at_ms, later);
}

#[test]
fn admits_earlier_receipts_survives_restart_through_the_log_and_a_snapshot() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let hour = 3_600_000;
    let waves = vec![
        Wave {
            name: "main".into(),
            receipts_until_day: common::CUTOFF_DAY - 1,
            opens_at_ms: T0 + hour,
            provinces: None,
            admits_earlier_receipts: false,
        },
        Wave {
            name: "reserve".into(),
            receipts_until_day: common::CUTOFF_DAY,
            opens_at_ms: T0 + 2 * hour,
            provinces: Some(vec![1]),
            admits_earlier_receipts: true,
        },
    ];
    let c = engine.replace_schedule(waves.clone()).unwrap();
    engine.wait(&c).unwrap();
    drop(engine);
    storage.crash();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert_eq!(report.records_replayed, 1);
    assert_eq!(engine.schedule().waves, waves);
    engine.snapshot().unwrap();
    drop(engine);
    let (engine, report) = open(&storage, &clock).unwrap();
    assert_eq!(report.records_replayed, 0, "from the snapshot alone");
    assert_eq!(engine.schedule().waves, waves);
}

#[test]
fn the_log_record_count_continues_across_restarts() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    assert_eq!(engine.log_records_total(), Some(0));
    reserve(&engine, 1000, "a1").unwrap();
    reserve(&engine, 1001, "a1").unwrap();
    assert_eq!(engine.log_records_total(), Some(2));
    engine.snapshot().unwrap();
    drop(engine);
    storage.crash();
    let (engine, _) = open(&storage, &clock).unwrap();
    assert_eq!(engine.log_records_total(), Some(2));
    reserve(&engine, 1003, "b1").unwrap();
    assert_eq!(engine.log_records_total(), Some(3));
}

#[test]
fn keys_of_every_keyed_write_survive_restarts_through_the_log_and_a_snapshot() {
    use miqat_engine::model::OperatorEvent;
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let id = reserve(&engine, 1000, "a1").unwrap();
    let holder = engine.catalog().holder_by_national_id(1000).unwrap();
    let event = engine
        .operator_event_keyed(id, OperatorEvent::DocumentsReceived, Some(b"e1"))
        .unwrap();
    engine.wait(&event).unwrap();
    let cancel = engine.cancel_outcome(holder, id, Some(b"c1")).unwrap();
    engine.wait(&cancel).unwrap();
    let (event_view, cancel_view) = (event.value.0, cancel.value.0);
    let check = |engine: &Engine| {
        // Each key answers its own original decision again, and only that one.
        let again = engine
            .operator_event_keyed(id, OperatorEvent::DocumentsReceived, Some(b"e1"))
            .unwrap()
            .value;
        assert_eq!(again, (event_view.clone(), true));
        let again = engine
            .cancel_outcome(holder, id, Some(b"c1"))
            .unwrap()
            .value;
        assert_eq!(again, (cancel_view.clone(), true));
        let reused = engine.join_waitlist_keyed(holder, Some(b"e1")).unwrap_err();
        assert_eq!(reused.code(), "idempotency_key_reused");
    };
    check(&engine);
    drop(engine);
    storage.crash();
    let (engine, report) = open(&storage, &clock).unwrap();
    assert_eq!(report.records_replayed, 3, "replayed from the log");
    check(&engine);
    engine.snapshot().unwrap();
    drop(engine);
    let (engine, report) = open(&storage, &clock).unwrap();
    assert_eq!(report.records_replayed, 0, "restored from the snapshot");
    check(&engine);
}

/// Replaying shards on parallel threads recovers exactly what one thread in log order does:
/// a log of reservations, waiting-list joins and cancellations (whose seats go to waiting
/// holders as offers) in every province, opened both ways, gives byte-identical states.
#[test]
fn shards_replayed_in_parallel_recover_what_one_thread_recovers() {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = open(&storage, &clock).unwrap();
    let data = Arc::clone(engine.catalog());
    let mut reserved = Vec::new();
    for h in data.holder_indices() {
        let city = data.holder(h).unwrap().city;
        let Some(&caravan) = data.caravans_of_city(city).first() else {
            continue;
        };
        match engine.reserve(h, caravan, None) {
            Ok(decided) => {
                engine.wait(&decided).unwrap();
                reserved.push((h, decided.value.reservation.id));
            }
            Err(_) => {
                if let Ok(joined) = engine.join_waitlist(h) {
                    engine.wait(&joined).unwrap();
                }
            }
        }
    }
    for &(h, id) in reserved.iter().step_by(3) {
        let cancelled = engine.cancel(h, id).unwrap();
        engine.wait(&cancelled).unwrap();
    }
    let live = engine.state_image();
    drop(engine);
    let mut images = Vec::new();
    for replay_threads in [1, 2, 3] {
        let config = EngineConfig {
            replay_threads,
            ..EngineConfig::default()
        };
        let (engine, report) = Engine::open(
            catalog(3),
            season(),
            Arc::new(clock.clone()),
            Arc::new(storage.clone()),
            config,
        )
        .unwrap();
        assert!(report.records_replayed > reserved.len() as u64);
        images.push(engine.state_image());
    }
    assert_eq!(
        images[0], live,
        "one thread recovers the state that was live"
    );
    assert_eq!(images[1], images[0]);
    assert_eq!(images[2], images[0]);
}
