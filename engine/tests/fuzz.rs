//! Byte fuzzers (proptest, stable Rust) for every engine decoder of outside bytes: log segments
//! and frames (`wal::recover`), engine records (`Record::decode`), snapshot files and payloads
//! (`wal::recover`, `Engine::open`), and `season.toml` and the CSV files (`load`).
//!
//! Each target feeds arbitrary bytes and structure-aware mutations of valid inputs
//! (truncations, bit flips, length fields set to huge values, splices, CRCs fixed so that the
//! mutation reaches the decoder behind the checksum) and checks: no panic, a clear error that
//! names what the decoder knows (file, segment, offset), and no work proportional to a length
//! field that the bytes do not back. Cases per target: `MIQAT_FUZZ_CASES` (see
//! `docs/testing.md`); a failure prints the minimal input, and proptest saves its seed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use common::{T0, catalog, season};
use miqat_engine::calendar::{format_national_id, national_id_check_digit};
use miqat_engine::catalog::Catalog;
use miqat_engine::clock::ManualClock;
use miqat_engine::load::{LoadError, load_catalog, load_season};
use miqat_engine::model::OperatorEvent;
use miqat_engine::record::{Record, kind};
use miqat_engine::season::Wave;
use miqat_engine::wal::{
    FRAME_HEADER_BYTES, MemStorage, MissingRecords, SEGMENT_HEADER_BYTES, SNAPSHOT_HEADER_BYTES,
    Storage, Wal, WalConfig, WalError, recover_with,
};
use miqat_engine::{Engine, EngineConfig, EngineError};
use proptest::prelude::*;
use proptest::sample::Index;

// ------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------

/// Cases per target when `MIQAT_FUZZ_CASES` is not set: all targets together stay within
/// about a minute in a debug build on a shared two-core machine.
const CASES_DEFAULT: u32 = 1_000;

/// Longest a decoder may take to refuse an input of a few hundred bytes that claims a huge
/// length: generous for a loaded machine, far below the time a buffer of the claimed size
/// would take to fill.
const REFUSAL_MS_MAX: u128 = 500;

fn cases() -> u32 {
    std::env::var("MIQAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------------
// Mutations of valid inputs
// ------------------------------------------------------------------------------------------

/// Values that break length and count fields: zero, one, around byte and word limits, the
/// payload maximum and its neighbours, and the largest values.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    0x7F,
    0xFF,
    0x100,
    0xFFFE,
    0xFFFF,
    0x1_0000,
    0x1_0001,
    0x7FFF_FFFF,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];

/// One change to a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    /// Cut the input at a position.
    Truncate(Index),
    /// Flip one bit.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    SetByte(Index, u8),
    /// Write an interesting value, `width` bytes little-endian, at a position.
    SetInt(Index, u8, u64),
    /// Write an interesting value into a known field (a length, a count, an LSN) of the input.
    SetField(Index, u8, u64),
    /// Remove up to `n` bytes.
    Delete(Index, usize),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Copy a piece of another valid input over a position.
    Splice(Index, Index, usize),
    /// Repeat a piece of the input right after itself.
    Duplicate(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop::sample::select(INTERESTING.to_vec());
    let width = prop::sample::select(vec![1u8, 2, 4, 8]);
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        (any::<Index>(), width.clone(), interesting.clone())
            .prop_map(|(i, w, v)| Mutation::SetInt(i, w, v)),
        (any::<Index>(), width, interesting).prop_map(|(i, w, v)| Mutation::SetField(i, w, v)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), any::<Index>(), 1usize..256)
            .prop_map(|(i, j, n)| Mutation::Splice(i, j, n)),
        (any::<Index>(), 1usize..128).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

/// Applies `mutations` to `bytes`; `fields` are offsets of known integer fields, `donor` is
/// another valid input to splice from.
fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation], fields: &[usize], donor: &[u8]) {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::FlipBit(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Mutation::SetByte(i, v) if len > 0 => bytes[i.index(len)] = *v,
            Mutation::SetInt(i, width, v) if len > 0 => put_int(bytes, i.index(len), *width, *v),
            Mutation::SetField(i, width, v) if !fields.is_empty() => {
                put_int(bytes, fields[i.index(fields.len())], *width, *v);
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Splice(i, j, n) if len > 0 && !donor.is_empty() => {
                let from = j.index(donor.len());
                let piece = &donor[from..(from + n).min(donor.len())];
                let at = i.index(len);
                let end = (at + piece.len()).min(len);
                bytes[at..end].copy_from_slice(&piece[..end - at]);
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let at = i.index(len);
                let piece = bytes[at..(at + n).min(len)].to_vec();
                let end = at + piece.len();
                bytes.splice(end..end, piece);
            }
            _ => {}
        }
    }
}

/// Writes the low `width` bytes of `value` little-endian at `at`, as far as the input goes.
fn put_int(bytes: &mut [u8], at: usize, width: u8, value: u64) {
    let raw = value.to_le_bytes();
    for (k, b) in raw.iter().take(usize::from(width)).enumerate() {
        if let Some(slot) = bytes.get_mut(at + k) {
            *slot = *b;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The on-disk layout, re-read here so that mutations can fix checksums
// ------------------------------------------------------------------------------------------

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// CRC32C over `bytes` with the 4-byte field at `skip` left out.
fn crc_without(bytes: &[u8], skip: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..skip]);
    crc32c::crc32c_append(crc, &bytes[skip + 4..])
}

/// One frame of a segment: where it starts, its kind, shard and payload range.
#[derive(Clone, Debug)]
struct FrameAt {
    at: usize,
    shard: u16,
    kind: u8,
    payload: std::ops::Range<usize>,
}

/// The frames of a segment as the writer laid them out (stops at the first implausible one).
fn frames_of(segment: &[u8]) -> Vec<FrameAt> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while let Some(len) = u32_at(segment, at) {
        let end = at + FRAME_HEADER_BYTES + len as usize;
        if end > segment.len() {
            break;
        }
        out.push(FrameAt {
            at,
            shard: u16::from_le_bytes([segment[at + 16], segment[at + 17]]),
            kind: segment[at + 18],
            payload: at + FRAME_HEADER_BYTES..end,
        });
        at = end;
    }
    out
}

/// Offsets of a segment's integer fields: the header's LSN and tag, and each frame's length,
/// LSN, shard and shard sequence.
fn segment_fields(segment: &[u8]) -> Vec<usize> {
    let mut fields = vec![8, 16, 24];
    for f in frames_of(segment) {
        fields.extend([f.at, f.at + 8, f.at + 16, f.at + 18, f.at + 20]);
    }
    fields
}

/// Recomputes the header CRC and every frame CRC that the layout still allows, so that a
/// mutation behind a checksum reaches the checks after it.
fn fix_segment_crcs(segment: &mut [u8]) {
    if segment.len() >= SEGMENT_HEADER_BYTES {
        let crc = crc_without(&segment[..SEGMENT_HEADER_BYTES], 12);
        segment[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let mut at = SEGMENT_HEADER_BYTES;
    while let Some(len) = u32_at(segment, at) {
        let end = at + FRAME_HEADER_BYTES + len as usize;
        if end > segment.len() {
            break;
        }
        let crc = crc_without(&segment[at..end], 4);
        segment[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// Makes a snapshot file's header agree with its (possibly mutated) payload: length, payload
/// CRC, header CRC.
fn fix_snapshot(file: &mut [u8]) {
    if file.len() < SNAPSHOT_HEADER_BYTES {
        return;
    }
    let payload_len = (file.len() - SNAPSHOT_HEADER_BYTES) as u64;
    file[32..40].copy_from_slice(&payload_len.to_le_bytes());
    let payload_crc = crc32c::crc32c(&file[SNAPSHOT_HEADER_BYTES..]);
    file[40..44].copy_from_slice(&payload_crc.to_le_bytes());
    let crc = crc_without(&file[..SNAPSHOT_HEADER_BYTES], 12);
    file[12..16].copy_from_slice(&crc.to_le_bytes());
}

// ------------------------------------------------------------------------------------------
// Valid inputs: a real engine's log and snapshot
// ------------------------------------------------------------------------------------------

/// Files of a data directory, by name.
type Files = Vec<(String, Vec<u8>)>;

/// What a real engine wrote: its log without a snapshot, and a later state with one.
struct Corpus {
    /// Every segment of a log holding every record kind the engine writes, no snapshot.
    log: Files,
    /// A snapshot and the segments after it.
    with_snapshot: Files,
    /// (kind, shard, payload) of every record in `log`, plus a hand-made kind 5.
    records: Vec<(u8, u16, Vec<u8>)>,
}

fn files_of(storage: &MemStorage) -> Files {
    storage
        .names()
        .into_iter()
        .filter_map(|n| storage.contents(&n).map(|c| (n, c)))
        .collect()
}

fn storage_of(files: &Files) -> MemStorage {
    let storage = MemStorage::new();
    for (name, bytes) in files {
        storage.write_whole(name, bytes).unwrap();
    }
    storage
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        id_seed: Some(7),
        // Small segments, so that the log spans several.
        segment_bytes_target: 512,
        ..EngineConfig::default()
    }
}

fn open_engine(
    storage: &MemStorage,
    missing: MissingRecords,
) -> Result<(Arc<Engine>, miqat_engine::persist::RecoveryReport), EngineError> {
    Engine::open(
        catalog(3),
        season(),
        Arc::new(ManualClock::new(T0)),
        Arc::new(storage.clone()),
        EngineConfig {
            missing_records: missing,
            ..engine_config()
        },
    )
}

/// Drives a real engine through every kind of decision.
fn write_corpus() -> Corpus {
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let (engine, _) = Engine::open(
        catalog(3),
        season(),
        Arc::new(clock.clone()),
        Arc::new(storage.clone()),
        engine_config(),
    )
    .unwrap();
    let c = engine.catalog().clone();
    let holder = |nid: u64| c.holder_by_national_id(nid).unwrap();
    let caravan = |id: &str| c.caravan_by_id(id).unwrap();
    let reserve = |nid: u64, car: &str, key: Option<&[u8]>| {
        let d = engine.reserve(holder(nid), caravan(car), key).unwrap();
        engine.wait(&d).unwrap();
        d.value.reservation.id
    };
    let r1000 = reserve(1000, "a1", Some(b"k-reserve"));
    let r1001 = reserve(1001, "a1", None);
    let _ = reserve(1002, "a2", None);
    let r1003 = reserve(1003, "b1", None);
    let d = engine
        .join_waitlist_keyed(holder(1004), Some(b"k-join"))
        .unwrap();
    engine.wait(&d).unwrap();
    let d = engine.join_waitlist_keyed(holder(1005), None).unwrap();
    engine.wait(&d).unwrap();
    let d = engine
        .operator_event_keyed(r1000, OperatorEvent::DocumentsReceived, Some(b"k-event"))
        .unwrap();
    engine.wait(&d).unwrap();
    let d = engine
        .operator_event(r1001, OperatorEvent::DocumentsReceived)
        .unwrap();
    engine.wait(&d).unwrap();
    // Cancelling b1 offers the seat to 1004, who accepts it.
    let d = engine
        .cancel_outcome(holder(1003), r1003, Some(b"k-cancel"))
        .unwrap();
    engine.wait(&d).unwrap();
    let offer = engine.latest_reservation(holder(1004)).unwrap().id;
    let d = engine
        .accept_offer_keyed(holder(1004), offer, Some(b"k-accept"))
        .unwrap();
    engine.wait(&d).unwrap();
    let d = engine
        .operator_event(r1001, OperatorEvent::Deceased)
        .unwrap();
    engine.wait(&d).unwrap();
    let mut waves = season().schedule.waves;
    waves.push(Wave {
        name: "reserve".into(),
        receipts_until_day: 300,
        opens_at_ms: T0 + 1_000,
        provinces: Some(vec![2]),
        admits_earlier_receipts: true,
    });
    let d = engine.replace_schedule(waves).unwrap();
    engine.wait(&d).unwrap();
    let _ = reserve(1006, "c1", None);
    clock.advance(11_000);
    let (expired, ticket) = engine.expire_due().unwrap();
    assert!(expired > 0, "the corpus has an expiry");
    engine
        .wait(&miqat_engine::Committed { value: (), ticket })
        .unwrap();
    let log = files_of(&storage);
    engine.snapshot().unwrap();
    let _ = reserve(1007, "c1", Some(b"k-late"));
    let with_snapshot = files_of(&storage);
    drop(engine);

    let mut records = Vec::new();
    for (name, bytes) in &log {
        if name.starts_with("wal-") {
            for f in frames_of(bytes) {
                records.push((f.kind, f.shard, bytes[f.payload].to_vec()));
            }
        }
    }
    records.push((kind::SCHEDULE, 2, schedule_v1_payload()));
    for k in [1u8, 2, 3, 4, 5, 6, 7, 8, 9] {
        assert!(
            records.iter().any(|r| r.0 == k),
            "the corpus lacks record kind {k}"
        );
    }
    assert!(
        with_snapshot.iter().any(|(n, _)| n.ends_with(".snap")),
        "the corpus has a snapshot"
    );
    Corpus {
        log,
        with_snapshot,
        records,
    }
}

/// A kind 5 (schedule without wave flags) payload: one wave for every province.
fn schedule_v1_payload() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&T0.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(b"main");
    out.extend_from_slice(&150i32.to_le_bytes());
    out.extend_from_slice(&T0.to_le_bytes());
    out.extend_from_slice(&0xFFFFu16.to_le_bytes());
    out
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(write_corpus)
}

fn segments(files: &Files) -> Vec<usize> {
    (0..files.len())
        .filter(|&i| files[i].0.starts_with("wal-"))
        .collect()
}

// ------------------------------------------------------------------------------------------
// Checks
// ------------------------------------------------------------------------------------------

/// The log tag the corpus was written with (the test catalog's fingerprint).
fn tag() -> u64 {
    catalog(3).fingerprint()
}

/// How far [`check_recovery`] checks that a repaired directory needs no second repair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Segment names the writer made (contents may be damaged): a second recovery reads the
    /// same records and repairs nothing.
    Written,
    /// Arbitrary segment names: recovery skips segments before the last one that may hold the
    /// first needed record, and only reads them once those after them are removed, so a
    /// second recovery may repair what the first skipped (see `docs/testing.md`).
    Arbitrary,
}

/// Recovers `files` and checks the outcome: an error names a file that exists and an offset
/// inside it; a success hands over contiguous LSNs above the snapshot's floor, a second
/// recovery of the repaired directory (of a [`Shape::Written`] one) finds the same records
/// and nothing to repair, and the log opens for writing at the LSN recovery returned.
fn check_recovery(files: &Files, missing: MissingRecords, shape: Shape) {
    let storage = storage_of(files);
    let mut lsns = Vec::new();
    let result = recover_with(&storage, tag(), missing, &mut |r| {
        lsns.push(r.lsn);
        Ok(())
    });
    let size = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.len());
    match result {
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
            match &e {
                WalError::Corrupt {
                    segment,
                    offset,
                    reason,
                } => {
                    let len = size(segment).unwrap_or_else(|| panic!("{message}: no such file"));
                    assert!(*offset as usize <= len, "{message}: offset past the end");
                    assert!(!reason.is_empty(), "{message}");
                }
                WalError::SnapshotCorrupt { file, reason } => {
                    assert!(size(file).is_some(), "{message}: no such file");
                    assert!(!reason.is_empty(), "{message}");
                }
                WalError::TagMismatch { file, .. }
                | WalError::RecordsMissing { segment: file, .. } => {
                    assert!(size(file).is_some(), "{message}: no such file");
                }
                other => panic!("unexpected error kind: {other}"),
            }
        }
        Ok(recovered) => {
            assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1), "{lsns:?}");
            let floor = recovered.snapshot.as_ref().map_or(0, |s| s.0);
            assert!(lsns.iter().all(|&l| l > floor), "{lsns:?} vs floor {floor}");
            assert_eq!(recovered.records_replayed, lsns.len() as u64);
            if missing == MissingRecords::Refuse && shape == Shape::Written {
                let mut again = Vec::new();
                let second = recover_with(&storage, tag(), missing, &mut |r| {
                    again.push(r.lsn);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("a repaired directory is refused: {e}"));
                assert_eq!(again, lsns, "a second recovery reads other records");
                assert_eq!(second.torn_tail, None, "a second recovery repairs again");
                assert_eq!(second.next_lsn, recovered.next_lsn);
            }
            let shards = recovered
                .last_shard_seqs
                .keys()
                .max()
                .map_or(1, |&s| usize::from(s) + 1);
            let mut seqs = vec![0u64; shards];
            for (&s, &seq) in &recovered.last_shard_seqs {
                seqs[usize::from(s)] = seq;
            }
            let config = WalConfig {
                log_tag: tag(),
                ..WalConfig::default()
            };
            let wal = Wal::open(Arc::new(storage.clone()), config, recovered.next_lsn, seqs)
                .unwrap_or_else(|e| panic!("the recovered log does not open: {e}"));
            drop(wal);
        }
    }
}

/// Opens an engine on `files` and checks the outcome: a refusal is a recovery error with a
/// message; an engine that opens keeps every invariant.
fn check_open(files: &Files, missing: MissingRecords) {
    let storage = storage_of(files);
    match open_engine(&storage, missing) {
        Ok((engine, _)) => {
            engine.check_invariants().unwrap();
            engine.stop();
        }
        Err(e) => {
            assert!(matches!(e, EngineError::Recovery(_)), "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Decodes a record and checks the outcome: an error says something; a record decoded from
/// bytes encodes to the same bytes (kind 5 is read only, so it is compared after re-decoding).
fn check_record(kind: u8, payload: &[u8], shard: u16) {
    match Record::decode(kind, payload, shard) {
        Err(message) => assert!(!message.is_empty(), "empty error for kind {kind}"),
        Ok(record) => {
            let mut out = Vec::new();
            record.encode(&mut out);
            if kind == kind::SCHEDULE {
                assert_eq!(Record::decode(record.kind(), &out, shard).unwrap(), record);
            } else {
                assert_eq!(record.kind(), kind);
                assert_eq!(out, payload, "{record:?} does not round-trip");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Log segments and frames
// ------------------------------------------------------------------------------------------

fn any_missing() -> impl Strategy<Value = MissingRecords> {
    prop_oneof![Just(MissingRecords::Refuse), Just(MissingRecords::Accept)]
}

/// A segment file name: mostly the LSNs around the corpus's, sometimes an extreme one.
fn segment_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => 1u64..40,
        1 => prop::sample::select(vec![0, u64::MAX - 1, u64::MAX]),
    ]
    .prop_map(|lsn| format!("wal-{lsn:020}.seg"))
}

/// A segment header for `first_lsn` with the corpus's tag, followed by `rest`.
fn with_valid_header(first_lsn: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; SEGMENT_HEADER_BYTES];
    out[..8].copy_from_slice(b"MIQATWAL");
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    out[24..32].copy_from_slice(&tag().to_le_bytes());
    out.extend_from_slice(rest);
    fix_segment_crcs(&mut out);
    out
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary files named like segments, some behind a valid header (with frames whose
    /// CRCs were fixed), alone or beside the corpus's valid segments.
    #[test]
    fn segments_of_arbitrary_bytes(
        fuzzed in prop::collection::vec(
            (segment_name(), prop::collection::vec(any::<u8>(), 0..600), any::<bool>()), 1..3),
        beside_valid in any::<bool>(),
        missing in any_missing(),
    ) {
        let mut files = if beside_valid { corpus().log.clone() } else { Vec::new() };
        for (name, bytes, headed) in fuzzed {
            let first_lsn = name[4..24].parse().unwrap();
            let bytes = if headed { with_valid_header(first_lsn, &bytes) } else { bytes };
            files.retain(|(n, _)| *n != name);
            files.push((name, bytes));
        }
        check_recovery(&files, missing, Shape::Arbitrary);
    }

    /// The corpus's segments with some of them mutated, with or without CRCs fixed afterwards.
    #[test]
    fn segments_mutated(
        target in any::<Index>(),
        donor in any::<Index>(),
        ms in mutations(),
        fix_crcs in any::<bool>(),
        second in prop::option::of((any::<Index>(), mutations())),
        missing in any_missing(),
        snapshot in any::<bool>(),
    ) {
        let mut files = if snapshot { corpus().with_snapshot.clone() } else { corpus().log.clone() };
        let segs = segments(&files);
        let donor = files[segs[donor.index(segs.len())]].1.clone();
        let mut edits = vec![(target, ms)];
        edits.extend(second);
        for (target, ms) in edits {
            let i = segs[target.index(segs.len())];
            let bytes = &mut files[i].1;
            let fields = segment_fields(bytes);
            mutate(bytes, &ms, &fields, &donor);
            if fix_crcs {
                fix_segment_crcs(bytes);
            }
        }
        check_recovery(&files, missing, Shape::Written);
    }

    // --------------------------------------------------------------------------------------
    // Engine records
    // --------------------------------------------------------------------------------------

    /// Arbitrary payloads for every kind (and unknown kinds).
    #[test]
    fn records_of_arbitrary_bytes(
        kind in prop_oneof![4 => 0u8..=10, 1 => any::<u8>()],
        payload in prop::collection::vec(any::<u8>(), 0..200),
        shard in any::<u16>(),
    ) {
        check_record(kind, &payload, shard);
    }

    /// Mutated payloads of real records of every kind, sometimes decoded as another kind.
    #[test]
    fn records_mutated(
        which in any::<Index>(),
        donor in any::<Index>(),
        ms in mutations(),
        other_kind in prop::option::weighted(0.2, 0u8..=10),
    ) {
        let records = &corpus().records;
        let (kind, shard, payload) = &records[which.index(records.len())];
        let mut payload = payload.clone();
        // Fields of every record: the slot/holder at 0, the secret's words, lengths and counts
        // wherever they fall; SetInt covers the rest.
        let fields: Vec<usize> = (0..payload.len()).step_by(2).collect();
        mutate(&mut payload, &ms, &fields, &records[donor.index(records.len())].2);
        check_record(other_kind.unwrap_or(*kind), &payload, *shard);
    }

    /// Real records with mutated payloads, CRCs fixed, replayed by `Engine::open`: the
    /// decoder and the replay behind it refuse with a message or keep every invariant.
    #[test]
    fn records_mutated_through_engine_open(
        target in any::<Index>(),
        frame in any::<Index>(),
        ms in mutations(),
        snapshot in any::<bool>(),
    ) {
        let mut files = if snapshot { corpus().with_snapshot.clone() } else { corpus().log.clone() };
        let segs = segments(&files);
        let i = segs[target.index(segs.len())];
        let bytes = &mut files[i].1;
        let frames = frames_of(bytes);
        if let Some(f) = frames.get(frame.index(frames.len().max(1))) {
            let mut payload = bytes[f.payload.clone()].to_vec();
            let fields: Vec<usize> = (0..payload.len()).step_by(2).collect();
            mutate(&mut payload, &ms, &fields, &[]);
            payload.truncate(64 * 1024);
            let new_len = (payload.len() as u32).to_le_bytes();
            bytes.splice(f.payload.clone(), payload);
            bytes[f.at..f.at + 4].copy_from_slice(&new_len);
            fix_segment_crcs(bytes);
        }
        check_open(&files, MissingRecords::Refuse);
    }

    // --------------------------------------------------------------------------------------
    // Snapshots
    // --------------------------------------------------------------------------------------

    /// Mutated snapshot files (header and payload, checksums left as they fall) and arbitrary
    /// bytes under a snapshot's name, through `wal::recover`.
    #[test]
    fn snapshot_files_mutated(
        ms in mutations(),
        arbitrary in prop::option::weighted(0.2, prop::collection::vec(any::<u8>(), 0..200)),
        fix in any::<bool>(),
        missing in any_missing(),
    ) {
        let mut files = corpus().with_snapshot.clone();
        let i = files.iter().position(|(n, _)| n.ends_with(".snap")).unwrap();
        let log = corpus().log.iter().find(|(n, _)| n.starts_with("wal-")).unwrap().1.clone();
        let bytes = &mut files[i].1;
        match arbitrary {
            Some(random) => *bytes = random,
            None => mutate(bytes, &ms, &[8, 16, 24, 32, 40, 44], &log),
        }
        if fix {
            fix_snapshot(bytes);
        }
        check_recovery(&files, missing, Shape::Written);
    }

    /// A valid snapshot file wrapping a mutated payload (length and CRCs fixed), through
    /// `Engine::open`: the payload decoder itself is reached.
    #[test]
    fn snapshot_payloads_through_engine_open(
        ms in mutations(),
        with_log in any::<bool>(),
    ) {
        let mut files = corpus().with_snapshot.clone();
        if !with_log {
            files.retain(|(n, _)| n.ends_with(".snap"));
        }
        let i = files.iter().position(|(n, _)| n.ends_with(".snap")).unwrap();
        let bytes = &mut files[i].1;
        let mut payload = bytes.split_off(SNAPSHOT_HEADER_BYTES);
        let fields: Vec<usize> = (0..payload.len()).step_by(4).collect();
        let donor = payload.clone();
        mutate(&mut payload, &ms, &fields, &donor);
        bytes.extend_from_slice(&payload);
        fix_snapshot(bytes);
        check_open(&files, MissingRecords::Refuse);
    }
}

// ------------------------------------------------------------------------------------------
// Huge length fields are refused before anything of their size is allocated or read
// ------------------------------------------------------------------------------------------

/// Runs `f` and asserts that it finished within [`REFUSAL_MS_MAX`].
fn quickly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let elapsed = started.elapsed().as_millis();
    assert!(elapsed <= REFUSAL_MS_MAX, "{what} took {elapsed} ms");
    out
}

#[test]
fn huge_frame_lengths_are_refused_quickly() {
    let first = corpus()
        .log
        .iter()
        .find(|(n, _)| n.starts_with("wal-"))
        .unwrap()
        .clone();
    for len in [0x1_0001u32, 0x7FFF_FFFF, u32::MAX] {
        for fix in [false, true] {
            let mut bytes = first.1.clone();
            bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4]
                .copy_from_slice(&len.to_le_bytes());
            if fix {
                // The CRC covers the length field, so fixing it can only be attempted.
                fix_segment_crcs(&mut bytes);
            }
            let files = vec![(first.0.clone(), bytes)];
            quickly(&format!("a frame of length {len:#x}"), || {
                check_recovery(&files, MissingRecords::Refuse, Shape::Written);
            });
        }
    }
}

#[test]
fn huge_snapshot_payload_lengths_are_refused_quickly() {
    let snap = corpus()
        .with_snapshot
        .iter()
        .find(|(n, _)| n.ends_with(".snap"))
        .unwrap()
        .clone();
    for len in [u64::from(u32::MAX), u64::MAX / 2, u64::MAX] {
        let mut bytes = snap.1.clone();
        bytes[32..40].copy_from_slice(&len.to_le_bytes());
        let crc = crc_without(&bytes[..SNAPSHOT_HEADER_BYTES], 12);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        let storage = storage_of(&vec![(snap.0.clone(), bytes)]);
        let err = quickly(&format!("a snapshot of length {len:#x}"), || {
            recover_with(&storage, tag(), MissingRecords::Refuse, &mut |_| Ok(())).unwrap_err()
        });
        assert!(
            matches!(&err, WalError::SnapshotCorrupt { file, .. } if *file == snap.0),
            "{err}"
        );
        assert!(err.to_string().contains("header says"), "{err}");
    }
}

#[test]
fn huge_counts_in_records_are_refused_quickly() {
    // A schedule claiming u32::MAX waves, each wave a u16::MAX-byte name or u16::MAX - 1
    // provinces, in a payload of a few bytes.
    for kind in [kind::SCHEDULE, kind::SCHEDULE_V2] {
        let mut payload = T0.to_le_bytes().to_vec();
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = quickly("u32::MAX waves", || {
            Record::decode(kind, &payload, 2).unwrap_err()
        });
        assert!(err.contains("truncated"), "{err}");
        payload.extend_from_slice(&u16::MAX.to_le_bytes());
        let err = quickly("a 64 KiB name", || {
            Record::decode(kind, &payload, 2).unwrap_err()
        });
        assert!(err.contains("truncated"), "{err}");
        payload.truncate(12);
        payload.extend_from_slice(&0u16.to_le_bytes());
        payload.extend_from_slice(&[0u8; 12]);
        payload.extend_from_slice(&0xFFFEu16.to_le_bytes());
        let err = quickly("0xFFFE provinces", || {
            Record::decode(kind, &payload, 2).unwrap_err()
        });
        assert!(err.contains("truncated"), "{err}");
    }
    // A reservation whose idempotency key claims 64 KiB.
    let mut payload = vec![0u8; 4 + 16 + 4 + 4 + 8 + 1 + 8];
    payload[36] = 0xFF;
    payload.extend_from_slice(&u16::MAX.to_le_bytes());
    let err = quickly("a 64 KiB key", || {
        Record::decode(kind::RESERVE, &payload, 0).unwrap_err()
    });
    assert!(err.contains("truncated"), "{err}");
}

/// Offsets in the corpus's snapshot payload of the first province's reservation, waiting and
/// key counts, found by walking the layout of `docs/wal-format.md`.
fn snapshot_counts(payload: &[u8]) -> [usize; 3] {
    let mut at = 4 + 8 + 4 + 8 + 1;
    let waves = u32_at(payload, at).unwrap();
    at += 4;
    for _ in 0..waves {
        let name = u16::from_le_bytes([payload[at], payload[at + 1]]) as usize;
        at += 2 + name + 4 + 8;
        let provinces = u16::from_le_bytes([payload[at], payload[at + 1]]);
        at +=
            2 + if provinces == 0xFFFF {
                0
            } else {
                4 * provinces as usize
            } + 1;
    }
    // The waiting rooms (snapshot version 4): the corpus has none.
    assert_eq!(
        u32_at(payload, at),
        Some(0),
        "rooms in the corpus's snapshot"
    );
    at += 4;
    at += 8 + 8; // cut, next_join_seq
    let reservations_at = at;
    let n = u32_at(payload, at).unwrap() as usize;
    at += 4 + n * (16 + 4 + 4 + 1 + 1 + 8 + 8 + 8 + 1);
    let waiting_at = at;
    let w = u32_at(payload, at).unwrap() as usize;
    at += 4 + w * (4 + 4 + 8 + 4);
    [reservations_at, waiting_at, at]
}

#[test]
fn huge_counts_in_snapshot_payloads_are_refused_quickly() {
    let snap = corpus()
        .with_snapshot
        .iter()
        .find(|(n, _)| n.ends_with(".snap"))
        .unwrap()
        .clone();
    let payload = &snap.1[SNAPSHOT_HEADER_BYTES..];
    let mut targets = vec![4 + 8 + 4 + 8 + 1]; // the wave count
    targets.extend(snapshot_counts(payload));
    for at in targets {
        for count in [u32::MAX, u32::MAX / 2] {
            let mut bytes = snap.1.clone();
            let field = SNAPSHOT_HEADER_BYTES + at;
            bytes[field..field + 4].copy_from_slice(&count.to_le_bytes());
            fix_snapshot(&mut bytes);
            let storage = storage_of(&vec![(snap.0.clone(), bytes)]);
            let err = quickly(&format!("count {count:#x} at payload byte {at}"), || {
                open_engine(&storage, MissingRecords::Refuse)
                    .map(|_| ())
                    .unwrap_err()
            });
            let message = err.to_string();
            assert!(message.contains("snapshot at lsn"), "{message}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// season.toml and the CSV files
// ------------------------------------------------------------------------------------------

const PROVINCES: &str = "id,name_en,name_fa\n1,Tehran,تهران\n2,Qom,قم\n";
const CARAVANS: &str = "\
id,province_id,city,manager,phone,price_group,route,departure_date,price_rial,capacity
C1,1,Tehran,Ali Ahmadi,021-22334455,A,medina_first,1399/04/10,2000000000,150
C2,2,Qom,Reza Karimi,025-33445566,B,medina_second,1399/04/20,1700000000,120
";

/// A valid national ID made from its first nine digits.
fn nid(first9: u64) -> String {
    format_national_id(first9 * 10 + u64::from(national_id_check_digit(first9)))
}

fn holders_csv() -> String {
    format!(
        "national_id,tracking_code,receipt_no,receipt_date,receipt_status,province_id,city\n\
         {},11111111,R1,1385/01/10,valid,1,Tehran\n\
         {},22222222,R2,1386/02/10,valid,2,Qom\n\
         {},33333333,R3,1361/05/05,needs_conversion,1,Tehran\n",
        nid(123_456_789),
        nid(1_234_567),
        nid(987_654_321)
    )
}
const SEASON: &str = r#"
[[wave]]
name = "main"
receipts_until = "1386/01/31"
opens_at = "1398/12/09 10:00"

[[wave]]
name = "reserve-tehran"
receipts_until = "۱۳۸۶/۰۲/۱۵"
opens_at = "2020-03-11T11:30:00Z"
provinces = [1]
admits_earlier_receipts = true

[stages]
documents = "72h"
first_payment = "7d"
medical = "14d"
final_payment = "30d"

[waitlist]
offer_deadline = "24h"
"#;

/// The data set's file names.
const DATA_SET: [&str; 4] = [
    "provinces.csv",
    "caravans.csv",
    "holders.csv",
    "season.toml",
];

/// The valid content of the data set's file `name`.
fn valid_text(name: &str) -> String {
    match name {
        "provinces.csv" => PROVINCES.to_owned(),
        "caravans.csv" => CARAVANS.to_owned(),
        "holders.csv" => holders_csv(),
        _ => SEASON.to_owned(),
    }
}

/// Values that break text fields: empty, signs, overflowing numbers, impossible dates and
/// durations, control and multi-byte characters, quotes and separators.
const WORDS: [&str; 24] = [
    "",
    "0",
    "-1",
    "+",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "1403/13/40",
    "0000/00/00",
    "9999/12/29",
    "-9999/01/01",
    "1398/12/09 25:61",
    "9999999999d",
    "-5h",
    "1e309",
    "\"",
    ",",
    "\n",
    "\u{0}",
    "\u{202e}",
    "۹۹۹۹۹۹۹۹۹۹۹۹۹۹۹۹۹۹۹۹",
    "[[wave]]",
    "nan",
    "inf",
];

/// A change to a text file that keeps its lines recognisable.
#[derive(Clone, Debug)]
enum TextMutation {
    /// A byte-level mutation.
    Bytes(Vec<Mutation>),
    /// Replace the `n`-th field (split at commas, `=` and quotes) with a word.
    Field(Index, Index),
    /// Repeat a line.
    DuplicateLine(Index),
    /// Remove a line.
    DeleteLine(Index),
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    prop_oneof![
        mutations().prop_map(TextMutation::Bytes),
        (any::<Index>(), any::<Index>()).prop_map(|(f, w)| TextMutation::Field(f, w)),
        any::<Index>().prop_map(TextMutation::DuplicateLine),
        any::<Index>().prop_map(TextMutation::DeleteLine),
    ]
}

fn mutate_text(text: &str, ms: &[TextMutation]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for m in ms {
        match m {
            TextMutation::Bytes(ms) => mutate(&mut bytes, ms, &[], SEASON.as_bytes()),
            TextMutation::Field(f, w) => {
                let separators: Vec<usize> = (0..bytes.len())
                    .filter(|&i| matches!(bytes[i], b',' | b'=' | b'"' | b'\n'))
                    .collect();
                if separators.len() < 2 {
                    continue;
                }
                let k = f.index(separators.len() - 1);
                let (from, to) = (separators[k] + 1, separators[k + 1]);
                let word = WORDS[w.index(WORDS.len())].as_bytes();
                bytes.splice(from..to.max(from), word.iter().copied());
            }
            TextMutation::DuplicateLine(i) | TextMutation::DeleteLine(i) => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let k = i.index(lines.len());
                if matches!(m, TextMutation::DeleteLine(_)) {
                    lines.remove(k);
                } else {
                    let line = lines[k].clone();
                    lines.insert(k, line);
                }
                bytes = lines.join(&b'\n');
            }
        }
    }
    bytes
}

fn tiny_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_data_set(dir.path(), None);
        load_catalog(dir.path()).unwrap()
    })
}

fn write_data_set(dir: &Path, replaced: Option<(&str, &[u8])>) {
    for name in DATA_SET {
        match replaced {
            Some((r, bytes)) if r == name => std::fs::write(dir.join(name), bytes),
            _ => std::fs::write(dir.join(name), valid_text(name)),
        }
        .unwrap();
    }
}

/// Checks a load outcome: a refusal names the file and, when it names a line, one that exists.
fn check_load<T>(result: Result<T, LoadError>, file: &str, bytes: &[u8]) {
    let Err(e) = result else { return };
    let message = e.to_string();
    // A defect in one file may show in another (a caravan of a province that is gone).
    let named = DATA_SET.iter().any(|name| message.contains(name));
    assert!(
        named,
        "{message:?} does not name the file (mutated: {file})"
    );
    if let LoadError::Data {
        file: named,
        line,
        message: what,
        ..
    } = &e
    {
        assert!(!what.trim().is_empty(), "{message:?} says nothing");
        let content = if named.ends_with(file) {
            bytes.to_vec()
        } else {
            let name = DATA_SET.iter().find(|n| named.ends_with(*n)).unwrap();
            valid_text(name).into_bytes()
        };
        let lines = content.split(|&b| b == b'\n').count() as u64;
        if let Some(line) = line {
            assert!(
                *line >= 1 && *line <= lines,
                "{message:?}: line {line} of {lines}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// A data set with one of its files mutated, loaded whole: catalog then season.
    #[test]
    fn data_set_files_mutated(
        which in 0usize..DATA_SET.len(),
        ms in prop::collection::vec(text_mutation(), 1..4),
    ) {
        let name = DATA_SET[which];
        let bytes = mutate_text(&valid_text(name), &ms);
        let dir = tempfile::tempdir().unwrap();
        write_data_set(dir.path(), Some((name, &bytes)));
        if name == "season.toml" {
            let result = load_season(&dir.path().join(name), tiny_catalog());
            check_load(result, name, &bytes);
        } else {
            let result = load_catalog(dir.path());
            check_load(result, name, &bytes);
        }
    }

    /// Arbitrary bytes as each file.
    #[test]
    fn data_set_files_of_arbitrary_bytes(
        which in 0usize..DATA_SET.len(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let name = DATA_SET[which];
        let dir = tempfile::tempdir().unwrap();
        write_data_set(dir.path(), Some((name, &bytes)));
        if name == "season.toml" {
            check_load(load_season(&dir.path().join(name), tiny_catalog()), name, &bytes);
        } else {
            check_load(load_catalog(dir.path()), name, &bytes);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Regressions: defects the fuzzers found
// ------------------------------------------------------------------------------------------

/// A snapshot whose reservation carries a deadline near `i64::MIN` used to be accepted, and
/// the expiry pass at start then overflowed computing how late the deadline fired.
#[test]
fn a_snapshot_deadline_out_of_range_is_refused() {
    let snap = corpus()
        .with_snapshot
        .iter()
        .find(|(n, _)| n.ends_with(".snap"))
        .unwrap()
        .clone();
    let [reservations_at, ..] = snapshot_counts(&snap.1[SNAPSHOT_HEADER_BYTES..]);
    // The first reservation's deadline: after the count, secret, holder, caravan, status, stage.
    let deadline_at = SNAPSHOT_HEADER_BYTES + reservations_at + 4 + 16 + 4 + 4 + 1 + 1;
    for deadline_ms in [i64::MIN + 1, -(1i64 << 60), i64::MAX] {
        let mut bytes = snap.1.clone();
        bytes[deadline_at..deadline_at + 8].copy_from_slice(&deadline_ms.to_le_bytes());
        fix_snapshot(&mut bytes);
        let storage = storage_of(&vec![(snap.0.clone(), bytes)]);
        let err = open_engine(&storage, MissingRecords::Refuse)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("snapshot at lsn"), "{err}");
        assert!(err.contains("out of range"), "{err}");
    }
}

/// Records carry instants too: one out of range is refused by the decoder.
#[test]
fn a_record_instant_out_of_range_is_refused() {
    let (_, shard, payload) = corpus()
        .records
        .iter()
        .find(|r| r.0 == kind::JOIN)
        .unwrap()
        .clone();
    for at_ms in [i64::MIN + 1, i64::MAX, (1i64 << 53) + 1] {
        let mut bad = payload.clone();
        bad[4..12].copy_from_slice(&at_ms.to_le_bytes());
        let err = Record::decode(kind::JOIN, &bad, shard).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }
    let mut edge = payload.clone();
    edge[4..12].copy_from_slice(&(1i64 << 53).to_le_bytes());
    assert!(Record::decode(kind::JOIN, &edge, shard).is_ok());
}
