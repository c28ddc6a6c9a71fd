//! Recovery: how fast `Engine::open` replays a full opening day, and how long start-up takes.
//!
//! Set-up (untimed, once): the national data set (1 M holders, 85,850 seats), then an opening
//! day written to a real data directory (`DirStorage`, no fsync) by [`make_opening_day`]: every
//! seat reserved, waiting-list joins, 10% cancelled and their offers accepted, documents for
//! half. The engine is dropped without `shutdown()`, so there is no snapshot and opening
//! replays the whole log. A second directory holds the same day plus a snapshot and a short
//! tail.
//!
//! Timed: `Engine::open` on that directory (a fresh `DirStorage` each time; dropping the
//! engine is not timed). The clock is fixed at the instant the day was made, so nothing
//! expires at open and each open leaves the log as it found it (but for the empty segment
//! the previous open started, which recovery removes). Also timed, to split start-up:
//! `load_catalog` + `load_season` (CSV to catalog), building an empty engine
//! (`Engine::in_memory`), reading the log alone (`wal::recover` with a no-op callback), and
//! `check_invariants` on the recovered engine. Medians and replay rates go to stderr.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_main};
use miqat_bench::{
    FixedClock, OpeningDay, copy_data_dir, make_opening_day, median, national, unsynced_config,
};
use miqat_engine::catalog::Catalog;
use miqat_engine::catalog::cache::{CacheUse, load_catalog_cached};
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::model::OperatorEvent;
use miqat_engine::season::Season;
use miqat_engine::wal::{DirStorage, recover};
use miqat_engine::{Engine, ReservationFilter};

/// Waiting-list joins in the opening day (spread over every province).
const JOINS_MAX: usize = 300_000;
/// `documents_received` events logged after the snapshot (the short tail).
const TAIL_RECORDS: usize = 10_000;

fn open(catalog: &Arc<Catalog>, season: &Season, now_ms: i64, dir: &Path) -> Arc<Engine> {
    let storage = Arc::new(DirStorage::open(dir).unwrap());
    let (engine, report) = Engine::open(
        Arc::clone(catalog),
        season.clone(),
        Arc::new(FixedClock(now_ms)),
        storage,
        unsynced_config(),
    )
    .unwrap();
    assert_eq!(report.expired_at_start, 0, "open must not change the log");
    engine
}

/// Times `Engine::open` on `dir` (the drop of the engine is not timed) and prints the median
/// with the replay rate.
fn bench_open(
    c: &mut Criterion,
    name: &str,
    catalog: &Arc<Catalog>,
    season: &Season,
    now_ms: i64,
    dir: &Path,
) {
    let probe = {
        let storage = Arc::new(DirStorage::open(dir).unwrap());
        let (engine, report) = Engine::open(
            Arc::clone(catalog),
            season.clone(),
            Arc::new(FixedClock(now_ms)),
            storage,
            unsynced_config(),
        )
        .unwrap();
        drop(engine);
        report
    };
    let replayed = probe.records_replayed;
    let mut samples = Vec::new();
    let mut g = c.benchmark_group("recovery");
    g.throughput(Throughput::Elements(replayed));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let engine = open(catalog, season, now_ms, dir);
                let took = started.elapsed();
                total += took;
                samples.push(took);
                drop(engine);
            }
            total
        })
    });
    g.finish();
    let m = median(&mut samples);
    eprintln!(
        "recovery/{name}: snapshot {:?}, {replayed} records replayed, median open {:.1} ms \
         over {} opens -> {:.2} M records/s (replayed / whole open)",
        probe.snapshot_lsn,
        m.as_secs_f64() * 1e3,
        samples.len(),
        replayed as f64 / m.as_secs_f64() / 1e6,
    );
}

/// Runs `f` `n` times and returns the median wall time.
fn time_median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    median(&mut samples)
}

fn print_split(catalog: &Arc<Catalog>, season: &Season, now_ms: i64, data: &Path, dir: &Path) {
    const RUNS: usize = 5;
    let load = time_median(RUNS, || {
        let catalog = load_catalog(data).unwrap();
        let season = load_season(&data.join("season.toml"), &catalog).unwrap();
        std::hint::black_box((catalog, season));
    });
    let build = time_median(RUNS, || {
        let engine = Engine::in_memory(
            Arc::clone(catalog),
            season.clone(),
            Arc::new(FixedClock(now_ms)),
            unsynced_config(),
        )
        .unwrap();
        std::hint::black_box(&engine);
    });
    let mut frames = 0u64;
    let read = time_median(RUNS, || {
        let storage = DirStorage::open(dir).unwrap();
        frames = 0;
        recover(&storage, catalog.fingerprint(), &mut |_| {
            frames += 1;
            Ok(())
        })
        .unwrap();
    });
    let engine = open(catalog, season, now_ms, dir);
    let check = time_median(RUNS, || engine.check_invariants().unwrap());
    drop(engine);
    // Cold start through the catalog's binary cache: the first load writes it.
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("catalog.cache");
    let (_, _, first) = load_catalog_cached(data, &cache).unwrap();
    assert!(
        matches!(first, CacheUse::Rebuilt { written: true, .. }),
        "{first:?}"
    );
    let cached = time_median(RUNS, || {
        let (catalog, _, used) = load_catalog_cached(data, &cache).unwrap();
        assert_eq!(used, CacheUse::Used);
        let season = load_season(&data.join("season.toml"), &catalog).unwrap();
        std::hint::black_box((catalog, season));
    });
    let mut cold = Vec::new();
    let mut cold_catalog = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let (catalog, _, used) = load_catalog_cached(data, &cache).unwrap();
        assert_eq!(used, CacheUse::Used);
        let season = load_season(&data.join("season.toml"), &catalog).unwrap();
        let loaded = started.elapsed();
        let engine = open(&Arc::new(catalog), &season, now_ms, dir);
        cold.push(started.elapsed());
        cold_catalog.push(loaded);
        drop(engine);
    }
    let cold = median(&mut cold);
    let cold_catalog = median(&mut cold_catalog);
    eprintln!(
        "recovery/cold_start (medians of {RUNS}): catalog from its cache + season {:.1} ms \
         (alone: {:.1} ms) | catalog from its cache + season + Engine::open of the full day \
         {:.1} ms",
        cold_catalog.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3,
    );
    let engine = open(catalog, season, now_ms, dir);
    let log_bytes: u64 = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    drop(engine);
    eprintln!(
        "recovery/split (medians of {RUNS}): load_catalog+load_season {:.1} ms | \
         Engine::in_memory (empty build) {:.1} ms | wal::recover read+check only {:.1} ms \
         ({frames} frames, {:.1} MiB of segments, {:.2} M frames/s) | check_invariants {:.1} ms",
        load.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        log_bytes as f64 / (1024.0 * 1024.0),
        frames as f64 / read.as_secs_f64() / 1e6,
        check.as_secs_f64() * 1e3,
    );
}

/// Copies the full day to `to`, opens it, snapshots, logs a short tail and drops the engine
/// without `shutdown()`.
fn make_snapshot_variant(
    catalog: &Arc<Catalog>,
    season: &Season,
    now_ms: i64,
    from: &Path,
    to: &Path,
) -> usize {
    copy_data_dir(from, to);
    let engine = open(catalog, season, now_ms, to);
    engine.snapshot().unwrap();
    let held = engine.reservations(
        &ReservationFilter {
            status: Some(miqat_engine::model::Status::Held),
            ..ReservationFilter::default()
        },
        0,
        usize::MAX,
    );
    let mut tail = 0;
    for r in held
        .iter()
        .filter(|r| r.stage.is_some_and(|s| s.as_str() == "documents"))
    {
        if tail >= TAIL_RECORDS {
            break;
        }
        if engine
            .operator_event(r.id, OperatorEvent::DocumentsReceived)
            .is_ok()
        {
            tail += 1;
        }
    }
    drop(engine);
    tail
}

fn recovery(c: &mut Criterion) {
    let data = std::env::temp_dir().join("miqat-bench-national");
    let (catalog, season) = national(&data, 1_000_000);
    let now_ms = season.schedule.waves[0].opens_at_ms + 1;
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let started = Instant::now();
    let day: OpeningDay = make_opening_day(&full, &catalog, &season, now_ms, JOINS_MAX);
    eprintln!(
        "recovery/set-up: opening day written in {:.1} s: {day:?}",
        started.elapsed().as_secs_f64()
    );
    let snap = tmp.path().join("snapshot");
    let tail = make_snapshot_variant(&catalog, &season, now_ms, &full, &snap);
    eprintln!("recovery/set-up: snapshot variant with a tail of {tail} records");

    print_split(&catalog, &season, now_ms, &data, &full);
    bench_open(
        c,
        "open_full_day_log_only",
        &catalog,
        &season,
        now_ms,
        &full,
    );
    bench_open(
        c,
        "open_snapshot_plus_tail",
        &catalog,
        &season,
        now_ms,
        &snap,
    );
}

/// Holds the macro-generated group function, which cannot carry a doc comment.
mod harness {
    use super::{Criterion, Duration, recovery};

    criterion::criterion_group! {
        name = benches;
        config = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(15));
        targets = recovery
    }
}
criterion_main!(harness::benches);
