//! Cold start and replay in wall time and in CPU time of the whole process, alternating the
//! variants within one run: the catalog from its CSV files or from its binary cache, and the
//! full opening day's replay on one thread or on the shards' parallel threads. CPU time is
//! the figure to trust on a machine shared with other work (wall time then measures the
//! other work too).
//!
//! `cold_start [rounds]` (default 5) prints the medians of wall time and the mean CPU time.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use miqat_bench::{FixedClock, make_opening_day, median, national, unsynced_config};
use miqat_engine::catalog::Catalog;
use miqat_engine::catalog::cache::{CacheUse, load_catalog_cached};
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::season::Season;
use miqat_engine::wal::DirStorage;
use miqat_engine::{Engine, EngineConfig};

/// CPU time of the whole process (user + system, every thread), in milliseconds.
fn process_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) * 10.0
}

#[derive(Default)]
struct Measure {
    wall: Vec<Duration>,
    cpu_ms: f64,
}

impl Measure {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let cpu = process_cpu_ms();
        let started = Instant::now();
        let out = f();
        self.wall.push(started.elapsed());
        self.cpu_ms += process_cpu_ms() - cpu;
        out
    }

    fn line(&mut self, name: &str, records: Option<u64>) {
        let rounds = self.wall.len() as f64;
        let wall = median(&mut self.wall).as_secs_f64() * 1e3;
        let cpu = self.cpu_ms / rounds;
        let rate = records.map_or(String::new(), |r| {
            format!(
                " -> {:.2} M records/s by wall, {:.2} M records per CPU-second",
                r as f64 / wall / 1e3,
                r as f64 / cpu / 1e3
            )
        });
        println!("{name}: wall median {wall:.1} ms, CPU mean {cpu:.1} ms{rate}");
    }
}

fn open(
    catalog: &Arc<Catalog>,
    season: &Season,
    now_ms: i64,
    dir: &Path,
    threads: usize,
) -> (Arc<Engine>, u64) {
    let (engine, report) = Engine::open(
        Arc::clone(catalog),
        season.clone(),
        Arc::new(FixedClock(now_ms)),
        Arc::new(DirStorage::open(dir).unwrap()),
        EngineConfig {
            replay_threads: threads,
            ..unsynced_config()
        },
    )
    .unwrap();
    assert_eq!(report.expired_at_start, 0);
    (engine, report.records_replayed)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let data = std::env::temp_dir().join("miqat-bench-national");
    let (catalog, season) = national(&data, 1_000_000);
    let now_ms = season.schedule.waves[0].opens_at_ms + 1;
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let day = make_opening_day(&full, &catalog, &season, now_ms, 300_000);
    println!("opening day: {day:?}");
    let cache = tmp.path().join("catalog.cache");
    let (_, _, first) = load_catalog_cached(&data, &cache).unwrap();
    assert!(matches!(first, CacheUse::Rebuilt { written: true, .. }));

    let (mut csv, mut cached, mut one, mut parallel, mut cold) = Default::default();
    let (csv, cached, one, parallel, cold): (
        &mut Measure,
        &mut Measure,
        &mut Measure,
        &mut Measure,
        &mut Measure,
    ) = (&mut csv, &mut cached, &mut one, &mut parallel, &mut cold);
    let mut records = 0;
    for _ in 0..rounds {
        let loaded = csv.time(|| {
            let catalog = load_catalog(&data).unwrap();
            let season = load_season(&data.join("season.toml"), &catalog).unwrap();
            (catalog, season)
        });
        drop(loaded);
        let loaded = cached.time(|| {
            let (catalog, _, used) = load_catalog_cached(&data, &cache).unwrap();
            assert_eq!(used, CacheUse::Used);
            let season = load_season(&data.join("season.toml"), &catalog).unwrap();
            (catalog, season)
        });
        drop(loaded);
        // Each engine is dropped outside the timing.
        let (engine, replayed) = one.time(|| open(&catalog, &season, now_ms, &full, 1));
        records = replayed;
        drop(engine);
        let opened = parallel.time(|| open(&catalog, &season, now_ms, &full, 0));
        drop(opened);
        let opened = cold.time(|| {
            let (catalog, _, used) = load_catalog_cached(&data, &cache).unwrap();
            assert_eq!(used, CacheUse::Used);
            let season = load_season(&data.join("season.toml"), &catalog).unwrap();
            open(&Arc::new(catalog), &season, now_ms, &full, 0)
        });
        drop(opened);
    }
    println!("{rounds} alternating rounds, {records} records in the day's log");
    csv.line("catalog from CSV + season", None);
    cached.line("catalog from its cache + season", None);
    one.line("Engine::open, full day, 1 replay thread", Some(records));
    parallel.line(
        "Engine::open, full day, shards on parallel threads",
        Some(records),
    );
    cold.line(
        "cold start: catalog from cache + season + Engine::open",
        None,
    );
}
