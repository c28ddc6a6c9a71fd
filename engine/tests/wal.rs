//! Integration tests of the write-ahead log: round trips, torn tails, corruption, fail-stop,
//! group commit, rotation and snapshots, the async durability future, crash properties and the
//! directory lock. All deterministic: no sleeps, seeded randomness.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use miqat_engine::wal::{
    DirStorage, Durability, FRAME_HEADER_BYTES, FaultMode, FaultyStorage, MemStorage,
    MissingRecords, Recovered, SEGMENT_HEADER_BYTES, Storage, Ticket, Wal, WalConfig, WalError,
    recover, recover_with,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TAG: u64 = 0x4d49_5141_545f_5447;

/// A replayed record: (lsn, shard, shard_seq, kind, payload).
type Rec = (u64, u16, u64, u8, Vec<u8>);

fn config() -> WalConfig {
    WalConfig {
        log_tag: TAG,
        ..WalConfig::default()
    }
}

fn collect(storage: &dyn Storage, tag: u64) -> Result<(Recovered, Vec<Rec>), WalError> {
    let mut records = Vec::new();
    let recovered = recover(storage, tag, &mut |r| {
        records.push((r.lsn, r.shard, r.shard_seq, r.kind, r.payload.to_vec()));
        Ok(())
    })?;
    Ok((recovered, records))
}

fn open_mem(storage: &MemStorage, config: WalConfig, next_lsn: u64, seqs: Vec<u64>) -> Arc<Wal> {
    Wal::open(Arc::new(storage.clone()), config, next_lsn, seqs).unwrap()
}

fn payload_for(shard: u16, seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (u64::from(shard) * 31 + seq * 7 + i as u64) as u8)
        .collect()
}

fn segment_names(storage: &MemStorage) -> Vec<String> {
    storage
        .names()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .collect()
}

fn seqs_after(recovered: &Recovered, shards: usize) -> Vec<u64> {
    (0..shards)
        .map(|s| {
            recovered
                .last_shard_seqs
                .get(&(s as u16))
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn round_trip_keeps_per_shard_order_and_contiguous_lsns() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 4]);
    std::thread::scope(|scope| {
        for shard in 0..4u16 {
            let wal = &wal;
            scope.spawn(move || {
                for seq in 1..=50u64 {
                    let ticket = wal
                        .append(shard, shard as u8, &payload_for(shard, seq, 10))
                        .unwrap();
                    assert_eq!(ticket, Ticket { shard, seq });
                }
            });
        }
    });
    assert_eq!(wal.staged_seq(2), 50);
    assert_eq!(wal.sync_now().unwrap(), 200);
    wal.shutdown().unwrap();

    let (recovered, records) = collect(&storage, TAG).unwrap();
    assert_eq!(recovered.next_lsn, 201);
    assert_eq!(recovered.records_replayed, 200);
    assert!(recovered.torn_tail.is_none());
    let mut next_seq = [1u64; 4];
    for (i, (lsn, shard, seq, kind, payload)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
        assert_eq!(*seq, next_seq[usize::from(*shard)]);
        assert_eq!(*kind, *shard as u8);
        assert_eq!(*payload, payload_for(*shard, *seq, 10));
        next_seq[usize::from(*shard)] += 1;
    }
    assert_eq!(next_seq, [51; 4]);
}

#[test]
fn append_refuses_oversized_payloads_and_unknown_shards() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 2]);
    let big = vec![0u8; 64 * 1024 + 1];
    assert!(matches!(
        wal.append(0, 0, &big),
        Err(WalError::RecordTooLarge { bytes }) if bytes == big.len()
    ));
    assert!(matches!(
        wal.append(2, 0, b"x"),
        Err(WalError::UnknownShard { shard: 2, .. })
    ));
    assert_eq!(
        wal.append(0, 0, &big[1..]).unwrap().seq,
        1,
        "64 KiB exactly is allowed"
    );
    wal.shutdown().unwrap();
    assert!(matches!(wal.append(0, 0, b"x"), Err(WalError::Closed)));
}

#[test]
fn backpressure_past_staged_bytes_max() {
    let storage = MemStorage::new();
    let config = WalConfig {
        staged_bytes_max: FRAME_HEADER_BYTES + 9,
        ..config()
    };
    let wal = open_mem(&storage, config, 1, vec![0]);
    assert!(matches!(
        wal.append(0, 0, &[0; 10]),
        Err(WalError::Backpressure)
    ));
    assert_eq!(
        wal.staged_seq(0),
        0,
        "a refused append consumes no sequence number"
    );
    let ticket = wal.append(0, 0, &[0; 9]).unwrap();
    assert_eq!(ticket.seq, 1);
    // Once the flusher has written it, the room is available again.
    wal.wait_durable(ticket).unwrap();
    assert_eq!(wal.append(0, 0, &[0; 9]).unwrap().seq, 2);
    wal.shutdown().unwrap();
}

#[test]
fn torn_last_record_at_every_byte_offset() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 3]);
    for i in 0..6u64 {
        let shard = (i % 3) as u16;
        wal.append(shard, 1, &payload_for(shard, i, 20 + i as usize))
            .unwrap();
        // One batch per record so the last frame is the last record appended.
        wal.sync_now().unwrap();
    }
    wal.shutdown().unwrap();
    let segment = "wal-00000000000000000001.seg";
    let full = storage.contents(segment).unwrap();
    let last_frame_bytes = FRAME_HEADER_BYTES + 25;
    let last_start = full.len() - last_frame_bytes;
    let (_, all_records) = collect(&storage.fork(), TAG).unwrap();
    assert_eq!(all_records.len(), 6);
    let last_shard = all_records[5].1;

    for cut in last_start..full.len() {
        let copy = storage.fork();
        copy.write_whole(segment, &full[..cut]).unwrap();
        let (recovered, records) = collect(&copy, TAG).unwrap();
        assert_eq!(records, all_records[..5], "cut at {cut}");
        assert_eq!(recovered.next_lsn, 6);
        if cut == last_start {
            assert!(recovered.torn_tail.is_none(), "a clean cut is not torn");
        } else {
            let torn = recovered.torn_tail.clone().unwrap();
            assert_eq!(torn.segment, segment);
            assert_eq!(torn.offset, last_start as u64);
            assert_eq!(torn.bytes, (cut - last_start) as u64);
            assert_eq!(torn.saved_as, format!("torn-{segment}-{last_start}.bin"));
            assert_eq!(
                copy.contents(&torn.saved_as).unwrap(),
                full[last_start..cut]
            );
            assert_eq!(copy.contents(segment).unwrap().len(), last_start);
        }
        // The log continues after the repair: the next record gets the next lsn.
        let seqs = seqs_after(&recovered, 3);
        let wal = open_mem(&copy, config(), recovered.next_lsn, seqs.clone());
        let ticket = wal.append(last_shard, 9, b"after").unwrap();
        assert_eq!(ticket.seq, seqs[usize::from(last_shard)] + 1);
        wal.wait_durable(ticket).unwrap();
        wal.shutdown().unwrap();
        let (again, records) = collect(&copy, TAG).unwrap();
        assert!(again.torn_tail.is_none());
        assert_eq!(records.len(), 6);
        assert_eq!(records[5].0, 6);
        assert_eq!(records[5].4, b"after");
    }
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0]);
    wal.append(0, 0, b"one").unwrap();
    wal.shutdown().unwrap();
    let segment = "wal-00000000000000000001.seg";
    let mut bytes = storage.contents(segment).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(&[0u8; 4096]);
    storage.write_whole(segment, &bytes).unwrap();
    let (recovered, records) = collect(&storage, TAG).unwrap();
    assert_eq!(records.len(), 1);
    let torn = recovered.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.bytes), (end as u64, 4096));
}

/// A log of six records, one batch each, whose last record has `last_len` payload bytes
/// (never zero bytes); returns the storage, the segment's bytes and where the last frame starts.
fn six_records(last_len: usize) -> (MemStorage, Vec<u8>, usize) {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 2]);
    for i in 0..6u64 {
        let len = if i == 5 { last_len } else { 24 };
        let payload: Vec<u8> = (0..len).map(|j| 1 + (j % 250) as u8).collect();
        wal.append((i % 2) as u16, 1, &payload).unwrap();
        wal.sync_now().unwrap();
    }
    wal.shutdown().unwrap();
    let full = storage.contents(SEGMENT).unwrap();
    let last_start = full.len() - FRAME_HEADER_BYTES - last_len;
    (storage, full, last_start)
}

const SEGMENT: &str = "wal-00000000000000000001.seg";

#[test]
fn flipped_bit_in_the_last_record_is_corruption_not_a_torn_tail() {
    let (storage, full, last_start) = six_records(40);
    for byte in last_start..full.len() {
        for bit in [0u8, 4, 7] {
            let copy = storage.fork();
            let mut bytes = full.clone();
            bytes[byte] ^= 1 << bit;
            copy.write_whole(SEGMENT, &bytes).unwrap();
            let err = collect(&copy, TAG).unwrap_err();
            let WalError::Corrupt { offset, .. } = &err else {
                panic!("byte {byte} bit {bit}: unexpected {err}");
            };
            assert_eq!(*offset, last_start as u64, "byte {byte} bit {bit}");
            assert!(err.to_string().contains("damaged, not torn"), "{err}");
            assert_eq!(copy.contents(SEGMENT).unwrap(), bytes, "nothing is cut");
        }
    }
    // The operator's override drops the damaged record, keeps its bytes aside, and says so.
    let mut bytes = full.clone();
    bytes[last_start + FRAME_HEADER_BYTES + 3] ^= 0x20;
    storage.write_whole(SEGMENT, &bytes).unwrap();
    let mut replayed = 0;
    let recovered = recover_with(&storage, TAG, MissingRecords::Accept, &mut |_| {
        replayed += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(replayed, 5);
    assert!(recovered.accepted_loss.unwrap().contains("damaged"));
    let torn = recovered.torn_tail.unwrap();
    assert_eq!(
        storage.contents(&torn.saved_as).unwrap(),
        bytes[last_start..]
    );
}

#[test]
fn a_last_record_with_an_unwritten_sector_is_a_torn_tail() {
    // A last record over several sectors whose later sector never reached the disk (the file
    // length was extended, the data was not): reads back as zeros, so it is a torn write.
    let (storage, full, last_start) = six_records(1500);
    let sector = 512;
    let unwritten_from = (last_start / sector + 1) * sector;
    for unwritten_to in [unwritten_from + sector, full.len()] {
        let copy = storage.fork();
        let mut bytes = full.clone();
        bytes[unwritten_from..unwritten_to].fill(0);
        copy.write_whole(SEGMENT, &bytes).unwrap();
        let (recovered, records) = collect(&copy, TAG).unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(recovered.torn_tail.unwrap().offset, last_start as u64);
        assert!(recovered.accepted_loss.is_none());
    }
}

#[test]
fn a_lost_snapshot_is_refused_as_missing_records_even_without_later_records() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 2]);
    for i in 1..=20u64 {
        wal.append((i % 2) as u16, 0, &payload_for(0, i, 20))
            .unwrap();
    }
    let durable = wal.sync_now().unwrap();
    wal.write_snapshot(durable, b"state@20").unwrap();
    wal.shutdown().unwrap();
    // A clean stop and start leaves a segment that starts after the snapshot's floor.
    let (recovered, _) = collect(&storage, TAG).unwrap();
    let wal = open_mem(
        &storage,
        config(),
        recovered.next_lsn,
        seqs_after(&recovered, 2),
    );
    wal.write_snapshot(20, b"state@20").unwrap();
    wal.shutdown().unwrap();
    let snapshot = "snapshot-00000000000000000020.snap";
    assert!(
        storage.contents(snapshot).is_some(),
        "{:?}",
        storage.names()
    );
    let before = storage.names();
    storage.remove(snapshot).unwrap();

    let err = collect(&storage, TAG).unwrap_err();
    let WalError::RecordsMissing { first, last, .. } = &err else {
        panic!("unexpected {err}");
    };
    assert_eq!((*first, *last), (1, 20));
    let message = err.to_string();
    for evidence in [
        "records 1 to 20",
        "no snapshot",
        "wal-",
        "--accept-missing-records",
    ] {
        assert!(message.contains(evidence), "{evidence:?} in {message}");
    }
    let mut after = storage.names();
    after.push(snapshot.to_owned());
    after.sort();
    assert_eq!(after, before, "a refusal changes nothing on disk");

    // The override starts without them and never reuses their sequence numbers.
    let recovered = recover_with(&storage, TAG, MissingRecords::Accept, &mut |_| Ok(())).unwrap();
    assert_eq!(recovered.next_lsn, 21);
    assert!(recovered.accepted_loss.unwrap().contains("records 1 to 20"));
}

#[test]
fn flipped_bit_in_a_middle_record_is_corruption_naming_file_and_offset() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 2]);
    for i in 0..10u64 {
        wal.append((i % 2) as u16, 0, &payload_for(0, i, 16))
            .unwrap();
    }
    wal.shutdown().unwrap();
    let segment = "wal-00000000000000000001.seg";
    let full = storage.contents(segment).unwrap();
    let frame_bytes = FRAME_HEADER_BYTES + 16;
    let start = SEGMENT_HEADER_BYTES + 4 * frame_bytes;
    for byte in start..start + frame_bytes {
        for bit in [0u8, 3, 7] {
            let copy = storage.fork();
            let mut bytes = full.clone();
            bytes[byte] ^= 1 << bit;
            copy.write_whole(segment, &bytes).unwrap();
            let err = collect(&copy, TAG).unwrap_err();
            match &err {
                WalError::Corrupt {
                    segment: s, offset, ..
                } => {
                    assert_eq!(s, segment);
                    assert_eq!(*offset, start as u64, "byte {byte} bit {bit}");
                }
                other => panic!("byte {byte} bit {bit}: unexpected {other}"),
            }
            let message = err.to_string();
            assert!(message.contains(segment), "{message}");
            assert!(message.contains(&format!("offset {start}")), "{message}");
            assert!(copy.names().iter().all(|n| !n.starts_with("torn-")));
        }
    }
}

#[test]
fn corruption_before_a_later_segment_with_records_is_refused() {
    let storage = MemStorage::new();
    let config = WalConfig {
        segment_bytes_target: 1,
        ..config()
    };
    let wal = open_mem(&storage, config, 1, vec![0]);
    for _ in 0..3 {
        wal.append(0, 0, b"payload").unwrap();
        wal.sync_now().unwrap();
    }
    wal.shutdown().unwrap();
    let segments = segment_names(&storage);
    assert!(segments.len() >= 3);
    // Cut the first segment's only record in half: a later segment holds records, so this is
    // not a torn tail.
    let first = storage.contents(&segments[0]).unwrap();
    storage
        .write_whole(&segments[0], &first[..first.len() - 3])
        .unwrap();
    let err = collect(&storage, TAG).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { segment, offset: 32, .. } if *segment == segments[0]),
        "{err}"
    );
}

fn fail_stop_case(inject: impl Fn(&FaultyStorage)) {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    let wal = Wal::open(Arc::new(faulty.clone()), config(), 1, vec![0; 2]).unwrap();
    let good = wal.append(0, 0, b"good").unwrap();
    wal.wait_durable(good).unwrap();
    assert_eq!(wal.durable_lsn(), 1);

    inject(&faulty);
    let doomed = wal.append(1, 0, b"doomed").unwrap();
    let err = wal.wait_durable(doomed).unwrap_err();
    let WalError::Failed { cause } = &err else {
        panic!("expected Failed, got {err}");
    };
    assert!(cause.contains("injected"), "{cause}");
    assert!(wal.failure().is_some());
    // Fail-stop: nothing is acknowledged any more, even though a retry might now succeed.
    faulty.clear();
    assert!(matches!(
        wal.append(0, 0, b"later"),
        Err(WalError::Failed { .. })
    ));
    assert!(matches!(
        wal.is_durable(doomed),
        Err(WalError::Failed { .. })
    ));
    assert!(matches!(wal.is_durable(good), Err(WalError::Failed { .. })));
    assert!(matches!(wal.sync_now(), Err(WalError::Failed { .. })));
    assert!(matches!(
        block_on(wal.durable(doomed)),
        Err(WalError::Failed { .. })
    ));
    assert_eq!(wal.durable_lsn(), 1, "the failed batch is never published");
    assert!(matches!(wal.shutdown(), Err(WalError::Failed { .. })));
}

#[test]
fn write_error_fails_the_log_for_good() {
    fail_stop_case(|faulty| faulty.fail_write(1, FaultMode::Once));
}

#[test]
fn fsync_error_fails_the_log_for_good() {
    fail_stop_case(|faulty| faulty.fail_sync(1, FaultMode::Once));
}

#[test]
fn waiters_blocked_before_the_failure_are_released_with_failed() {
    let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
    faulty.fail_sync(3, FaultMode::Persistent); // open uses one sync; the 2nd batch fails
    let wal = Wal::open(Arc::new(faulty.clone()), config(), 1, vec![0; 8]).unwrap();
    let results: Vec<Result<(), WalError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u16)
            .map(|shard| {
                let wal = &wal;
                scope.spawn(move || {
                    let mut last = Ok(());
                    for _ in 0..50 {
                        match wal.append(shard, 0, b"x") {
                            Ok(ticket) => last = wal.wait_durable(ticket),
                            Err(err) => return Err(err),
                        }
                        last.clone()?;
                    }
                    last
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(WalError::Failed { .. })))
    );
}

#[test]
fn group_commit_on_real_files_uses_few_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(DirStorage::open(dir.path()).unwrap());
    let wal = Wal::open(storage.clone(), config(), 1, vec![0; 8]).unwrap();
    let tickets: Vec<Vec<Ticket>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u16)
            .map(|shard| {
                let wal = &wal;
                scope.spawn(move || {
                    (0..2000u64)
                        .map(|i| wal.append(shard, 0, &payload_for(shard, i, 48)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for shard_tickets in &tickets {
        wal.wait_durable(*shard_tickets.last().unwrap()).unwrap();
    }
    for ticket in tickets.iter().flatten() {
        assert!(wal.is_durable(*ticket).unwrap());
    }
    let stats = wal.stats();
    assert_eq!(stats.records_written, 16_000);
    assert!(
        stats.fsyncs * 10 < stats.records_written,
        "group commit should batch: {stats:?}"
    );
    wal.shutdown().unwrap();
    drop(wal);
    let (recovered, records) = collect(&*storage, TAG).unwrap();
    assert_eq!(recovered.records_replayed, 16_000);
    assert_eq!(records.last().unwrap().0, 16_000);
}

#[test]
fn rotation_snapshot_and_pruning() {
    let storage = MemStorage::new();
    let config = WalConfig {
        segment_bytes_target: 300,
        ..config()
    };
    let wal = open_mem(&storage, config.clone(), 1, vec![0; 3]);
    let mut floor = 0;
    for i in 1..=100u64 {
        wal.append((i % 3) as u16, 0, &payload_for(0, i, 20))
            .unwrap();
        if i % 10 == 0 {
            let durable = wal.sync_now().unwrap();
            assert_eq!(durable, i);
            if i == 60 {
                floor = durable;
                assert!(matches!(
                    wal.write_snapshot(floor + 1, b"too far"),
                    Err(WalError::SnapshotAhead { .. })
                ));
                wal.write_snapshot(30, b"state@30").unwrap();
                wal.write_snapshot(floor, b"state@60").unwrap();
            }
        }
    }
    wal.shutdown().unwrap();
    assert!(wal.stats().segments_created >= 5, "{:?}", wal.stats());

    let names = storage.names();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("snapshot-")).count(),
        1,
        "older snapshots are deleted: {names:?}"
    );
    let firsts: Vec<u64> = segment_names(&storage)
        .iter()
        .map(|n| n[4..24].parse().unwrap())
        .collect();
    // sync_now returns after the flusher's cycle (rotation included), so the segment set was
    // settled when the snapshot pruned: the segment holding lsn 61 is kept, every segment
    // holding only records <= 60 is gone.
    assert!(firsts[0] <= floor + 1, "{firsts:?}");
    assert!(
        firsts.get(1).is_none_or(|&next| next > floor + 1),
        "{firsts:?}"
    );

    let (recovered, records) = collect(&storage, TAG).unwrap();
    assert_eq!(recovered.snapshot, Some((60, b"state@60".to_vec())));
    assert_eq!(records.len(), 40);
    assert_eq!(records[0].0, 61);
    assert_eq!(records.last().unwrap().0, 100);

    // A leftover temporary snapshot is ignored and removed.
    storage
        .write_whole("snapshot-00000000000000000099.tmp", b"half")
        .unwrap();
    let (again, _) = collect(&storage, TAG).unwrap();
    assert_eq!(again.snapshot, recovered.snapshot);
    assert!(
        storage
            .contents("snapshot-00000000000000000099.tmp")
            .is_none()
    );

    // A corrupt snapshot refuses start, naming the file.
    let snap = "snapshot-00000000000000000060.snap";
    let mut bytes = storage.contents(snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    storage.write_whole(snap, &bytes).unwrap();
    let err = collect(&storage, TAG).unwrap_err();
    assert!(matches!(err, WalError::SnapshotCorrupt { .. }), "{err}");
    assert!(err.to_string().contains(snap), "{err}");
}

#[test]
fn recovery_across_segments_after_rotation() {
    let storage = MemStorage::new();
    let config = WalConfig {
        segment_bytes_target: 100,
        ..config()
    };
    let wal = open_mem(&storage, config.clone(), 1, vec![0; 2]);
    for i in 0..30u64 {
        let ticket = wal
            .append((i % 2) as u16, 0, &payload_for(1, i, 30))
            .unwrap();
        if i % 4 == 0 {
            wal.wait_durable(ticket).unwrap();
        }
    }
    wal.shutdown().unwrap();
    assert!(segment_names(&storage).len() > 3);
    let (recovered, records) = collect(&storage, TAG).unwrap();
    assert_eq!(recovered.next_lsn, 31);
    let lsns: Vec<u64> = records.iter().map(|r| r.0).collect();
    assert_eq!(lsns, (1..=30).collect::<Vec<_>>());

    // Reopen twice without appending: the empty segments must not confuse recovery.
    for _ in 0..2 {
        let (recovered, _) = collect(&storage, TAG).unwrap();
        let wal = open_mem(
            &storage,
            config.clone(),
            recovered.next_lsn,
            seqs_after(&recovered, 2),
        );
        wal.shutdown().unwrap();
    }
    let (recovered, records) = collect(&storage, TAG).unwrap();
    assert_eq!((recovered.next_lsn, records.len()), (31, 30));
}

#[test]
fn replay_callback_error_names_segment_offset_and_lsn() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0]);
    for _ in 0..3 {
        wal.append(0, 0, b"abc").unwrap();
    }
    wal.shutdown().unwrap();
    let err = recover(&storage, TAG, &mut |r| {
        if r.lsn == 2 {
            Err("engine rejects it".to_owned())
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    let message = err.to_string();
    let offset = SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 3;
    assert!(
        message.contains("wal-00000000000000000001.seg"),
        "{message}"
    );
    assert!(message.contains(&format!("offset {offset}")), "{message}");
    assert!(
        message.contains("lsn 2") && message.contains("engine rejects it"),
        "{message}"
    );
}

#[test]
fn torn_segment_header_of_the_last_segment_is_set_aside() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0]);
    wal.append(0, 0, b"kept").unwrap();
    wal.shutdown().unwrap();
    storage
        .write_whole("wal-00000000000000000002.seg", b"MIQATW")
        .unwrap();
    let (recovered, records) = collect(&storage, TAG).unwrap();
    assert_eq!((records.len(), recovered.next_lsn), (1, 2));
    let torn = recovered.torn_tail.unwrap();
    assert_eq!(torn.segment, "wal-00000000000000000002.seg");
    assert_eq!(storage.contents(&torn.saved_as).unwrap(), b"MIQATW");
    assert!(storage.contents("wal-00000000000000000002.seg").is_none());
}

/// Wakes a parked thread; the minimal executor for [`block_on`].
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn durable_future_resolves_without_a_runtime() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0; 2]);
    for round in 0..200u64 {
        let ticket = wal.append((round % 2) as u16, 0, b"async").unwrap();
        block_on(wal.durable(ticket)).unwrap();
        assert!(wal.is_durable(ticket).unwrap());
    }
    // Many futures at once, resolved from another thread's appends.
    let tickets: Vec<Ticket> = (0..50).map(|_| wal.append(1, 0, b"x").unwrap()).collect();
    let joined = std::thread::scope(|scope| {
        let handles: Vec<_> = tickets
            .iter()
            .map(|&t| {
                let wal = &wal;
                scope.spawn(move || block_on(wal.durable(t)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(joined.iter().all(Result::is_ok));
    wal.shutdown().unwrap();
}

#[test]
fn durability_none_acknowledges_without_fsync_and_sync_now_syncs() {
    let storage = MemStorage::new();
    let config = WalConfig {
        durability: Durability::None,
        segment_bytes_target: 200,
        ..config()
    };
    let wal = open_mem(&storage, config, 1, vec![0]);
    let mut last = None;
    for _ in 0..20 {
        last = Some(wal.append(0, 0, &[7; 40]).unwrap());
    }
    wal.wait_durable(last.unwrap()).unwrap();
    assert_eq!(wal.sync_now().unwrap(), 20);
    // After sync_now everything survives a crash.
    let crashed = storage.crashed_copy_with(|_, _| 0);
    let (_, records) = collect(&crashed, TAG).unwrap();
    assert_eq!(records.len(), 20);
    wal.shutdown().unwrap();
}

#[test]
fn tag_mismatch_is_refused() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0]);
    wal.append(0, 0, b"x").unwrap();
    wal.shutdown().unwrap();
    let err = collect(&storage, TAG ^ 1).unwrap_err();
    match &err {
        WalError::TagMismatch {
            expected,
            found,
            file,
        } => {
            assert_eq!((*expected, *found), (TAG ^ 1, TAG));
            assert_eq!(file, "wal-00000000000000000001.seg");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("different log"));
}

#[test]
fn dir_storage_lock_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let first = DirStorage::open(dir.path()).unwrap();
    let err = DirStorage::open(dir.path()).unwrap_err();
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("already in use"));
    drop(first);
    DirStorage::open(dir.path()).unwrap();
}

#[test]
fn open_refuses_segments_beyond_next_lsn() {
    let storage = MemStorage::new();
    let wal = open_mem(&storage, config(), 1, vec![0]);
    wal.append(0, 0, b"x").unwrap();
    wal.append(0, 0, b"y").unwrap();
    wal.shutdown().unwrap();
    // Reopening at lsn 1 would replace wal-1, which holds records.
    let err = Wal::open(Arc::new(storage.clone()), config(), 1, vec![0]).unwrap_err();
    assert!(err.to_string().contains("already holds records"), "{err}");
    let wal = open_mem(&storage, config(), 3, vec![2]);
    wal.shutdown().unwrap();
    let err = Wal::open(Arc::new(storage.clone()), config(), 2, vec![1]).unwrap_err();
    assert!(err.to_string().contains("starts after next_lsn"), "{err}");
}

#[derive(Clone, Debug)]
enum Op {
    Append { shard: u16, len: usize },
    Sync,
    WaitLast,
    Snapshot,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u16..3, 0usize..80).prop_map(|(shard, len)| Op::Append { shard, len }),
        1 => Just(Op::Sync),
        2 => Just(Op::WaitLast),
        1 => Just(Op::Snapshot),
    ]
}

fn encode_counts(counts: &[u64]) -> Vec<u8> {
    counts.iter().flat_map(|c| c.to_le_bytes()).collect()
}

fn decode_counts(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x4d49_5141),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Crash at a random point keeping random unsynced bytes: recovery yields, per shard, a
    /// prefix of what was appended that includes everything acknowledged durable; the log is
    /// appendable afterwards.
    #[test]
    fn crash_recovery_yields_a_prefix_with_every_acknowledged_record(
        ops in proptest::collection::vec(op_strategy(), 1..60),
        segment_bytes_target in prop_oneof![Just(64u64), Just(400), Just(1 << 20)],
        fsync in any::<bool>(),
        crash_seed in any::<u64>(),
    ) {
        const SHARDS: usize = 3;
        let storage = MemStorage::new();
        // Durability::None leaves most bytes unsynced, so its crashes tear much more often;
        // there only what sync_now covered counts as acknowledged.
        let durability = if fsync { Durability::Fsync } else { Durability::None };
        let config = WalConfig { segment_bytes_target, durability, ..config() };
        let wal = open_mem(&storage, config.clone(), 1, vec![0; SHARDS]);
        let mut appended: Vec<Vec<Vec<u8>>> = vec![Vec::new(); SHARDS];
        let mut tickets: Vec<Ticket> = Vec::new();
        let mut synced_counts = [0u64; SHARDS];
        for op in &ops {
            match *op {
                Op::Append { shard, len } => {
                    let seq = appended[usize::from(shard)].len() as u64 + 1;
                    let payload = payload_for(shard, seq, len);
                    let ticket = wal.append(shard, shard as u8, &payload).unwrap();
                    prop_assert_eq!(ticket.seq, seq);
                    appended[usize::from(shard)].push(payload);
                    tickets.push(ticket);
                }
                Op::Sync => {
                    wal.sync_now().unwrap();
                    for s in 0..SHARDS { synced_counts[s] = appended[s].len() as u64; }
                }
                Op::WaitLast => {
                    if let Some(&t) = tickets.last() { wal.wait_durable(t).unwrap(); }
                }
                Op::Snapshot => {
                    // This thread is the only appender, so after sync_now the snapshot's state
                    // (the per-shard counts) is exactly the records with lsn <= floor.
                    let floor = wal.sync_now().unwrap();
                    let counts: Vec<u64> = appended.iter().map(|a| a.len() as u64).collect();
                    synced_counts.copy_from_slice(&counts);
                    wal.write_snapshot(floor, &encode_counts(&counts)).unwrap();
                }
            }
        }
        // What is acknowledged before the crash must survive it.
        let mut acknowledged = synced_counts;
        for t in tickets.iter().filter(|_| fsync) {
            if wal.is_durable(*t).unwrap() {
                let a = &mut acknowledged[usize::from(t.shard)];
                *a = (*a).max(t.seq);
            }
        }
        let mut rng = StdRng::seed_from_u64(crash_seed);
        let crashed = storage.crashed_copy_with(|_, unsynced| match rng.random_range(0..3) {
            0 => 0,
            1 => unsynced,
            _ => rng.random_range(0..=unsynced),
        });
        drop(wal);

        let mut records: Vec<Rec> = Vec::new();
        let recovered = recover(&crashed, TAG, &mut |r| {
            records.push((r.lsn, r.shard, r.shard_seq, r.kind, r.payload.to_vec()));
            Ok(())
        });
        let recovered = match recovered {
            Ok(r) => r,
            Err(err) => return Err(TestCaseError::fail(format!("recovery failed: {err}"))),
        };
        let (floor, mut counts) = match &recovered.snapshot {
            Some((floor, payload)) => (*floor, decode_counts(payload)),
            None => (0, vec![0; SHARDS]),
        };
        for (i, (lsn, shard, seq, _, payload)) in records.iter().enumerate() {
            prop_assert_eq!(*lsn, floor + 1 + i as u64);
            let s = usize::from(*shard);
            prop_assert_eq!(*seq, counts[s] + 1, "shard {} continues its prefix", s);
            prop_assert_eq!(payload, &appended[s][(*seq - 1) as usize]);
            counts[s] += 1;
        }
        for s in 0..SHARDS {
            prop_assert!(counts[s] >= acknowledged[s], "shard {} lost acknowledged records", s);
            prop_assert!(counts[s] <= appended[s].len() as u64);
        }
        prop_assert_eq!(recovered.next_lsn, floor + 1 + records.len() as u64);

        // The repaired log accepts appends and recovers cleanly again.
        let wal = open_mem(&crashed, config, recovered.next_lsn, counts.clone());
        let ticket = wal.append(0, 0, b"after-crash").unwrap();
        wal.wait_durable(ticket).unwrap();
        wal.shutdown().unwrap();
        let (again, more) = collect(&crashed, TAG).unwrap();
        prop_assert!(again.torn_tail.is_none());
        prop_assert_eq!(more.last().map(|r| r.4.clone()), Some(b"after-crash".to_vec()));
        prop_assert_eq!(again.next_lsn, recovered.next_lsn + 1);
    }
}
