//! Expiry lateness with the real clock and the expiry thread: how long after its deadline a
//! hold is expired.
//!
//! `cargo run --release -p miqat-bench --bin expiry_lateness [-- PROVINCES [HOLDS [SPREAD_S]]]`
//!
//! An in-memory engine (`SystemClock`, no log) with the expiry thread running
//! (`spawn_expiry_thread(100 ms)`). A season whose only stage (documents) lasts 1 s. One
//! thread reserves HOLDS holds (default 1,000,000) at an even pace over SPREAD_S seconds
//! (default 10), so their deadlines are spread over 10 s and expiries overlap with new
//! reservations. PROVINCES (default 31) provinces with one caravan each share the holds;
//! `1` puts them all on one hot caravan (one shard).
//!
//! Lateness of each hold = its `updated_ms` once expired − its deadline, in engine time
//! (milliseconds: the resolution is 1 ms, a lateness of 0 means "within the same
//! millisecond"). Recorded in an HDR histogram; p50/p99/p99.9/max printed. Target: p99 <= 5 ms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use miqat_bench::{caravan_per_province, with_short_documents_stage};
use miqat_engine::catalog::{CaravanIdx, HolderIdx, ProvinceIdx};
use miqat_engine::clock::SystemClock;
use miqat_engine::model::{ReservationId, Status};
use miqat_engine::{Engine, EngineConfig};

const DOCUMENTS_MS: i64 = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let provinces: u16 = args.get(1).map_or(31, |s| s.parse().expect("PROVINCES"));
    let holds: u32 = args.get(2).map_or(1_000_000, |s| s.parse().expect("HOLDS"));
    let spread_s: f64 = args.get(3).map_or(10.0, |s| s.parse().expect("SPREAD_S"));
    let per_province = holds.div_ceil(u32::from(provinces));
    let (catalog, season) = caravan_per_province(provinces, per_province);
    let season = with_short_documents_stage(season, DOCUMENTS_MS);
    let engine = Engine::in_memory(
        Arc::clone(&catalog),
        season,
        Arc::new(SystemClock::system()),
        EngineConfig::default(),
    )
    .unwrap();
    let expiry = engine
        .spawn_expiry_thread(Duration::from_millis(100))
        .unwrap();

    // Holders interleaved over provinces: holder n of province p is p * per_province + n.
    let total = per_province * u32::from(provinces);
    let order = (0..total).map(|i| {
        let p = i % u32::from(provinces);
        let n = i / u32::from(provinces);
        p * per_province + n
    });
    let mut reserved: Vec<(HolderIdx, ReservationId, i64)> = Vec::with_capacity(total as usize);
    let per_ms = f64::from(total) / (spread_s * 1e3);
    let started = Instant::now();
    let mut behind_max_ms = 0f64;
    for (i, h) in order.map(HolderIdx).enumerate() {
        // Pace: hold i is taken no earlier than i / per_ms milliseconds after the start.
        let due_ms = i as f64 / per_ms;
        loop {
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            if elapsed_ms >= due_ms {
                behind_max_ms = behind_max_ms.max(elapsed_ms - due_ms);
                break;
            }
            if due_ms - elapsed_ms > 1.0 {
                std::thread::sleep(Duration::from_micros(500));
            } else {
                std::hint::spin_loop();
            }
        }
        let decided = engine
            .reserve(h, caravan_of(h, per_province), None)
            .unwrap();
        let r = decided.value.reservation;
        reserved.push((h, r.id, r.deadline_ms.unwrap()));
    }
    let reserving = started.elapsed();

    // Wait for every hold to expire (lock-free counters), at most 30 s past the last deadline.
    let give_up =
        Instant::now() + Duration::from_secs(30) + Duration::from_millis(DOCUMENTS_MS as u64);
    while (0..provinces)
        .map(|p| engine.province_holds_live(ProvinceIdx(p)))
        .sum::<u32>()
        > 0
        && Instant::now() < give_up
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let expiry_cpu_s = thread_cpu_seconds("miqat-expiry");
    let wall_s = started.elapsed().as_secs_f64();
    engine.stop();
    expiry.join().unwrap();

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).unwrap();
    hist.auto(true);
    let mut zero = 0u64;
    let mut not_expired = 0u64;
    for &(h, id, deadline_ms) in &reserved {
        let view = engine.reservation_of(h, id).unwrap();
        if view.status != Status::Expired {
            not_expired += 1;
            continue;
        }
        let lateness = (view.updated_ms - deadline_ms).max(0) as u64;
        if lateness == 0 {
            zero += 1;
        }
        hist.record(lateness).unwrap();
    }
    let q = |p: f64| hist.value_at_quantile(p);
    println!(
        "expiry_lateness: {total} holds over {provinces} province(s), reserved over {:.2} s \
         (pacer at most {:.1} ms behind), documents stage {DOCUMENTS_MS} ms, expiry thread idle_max 100 ms",
        reserving.as_secs_f64(),
        behind_max_ms,
    );
    println!(
        "expired {} ({} within the deadline's own millisecond), not expired {not_expired}",
        hist.len(),
        zero
    );
    println!(
        "lateness (ms, engine time, 1 ms resolution: 0 = same millisecond): p50 {} | p99 {} | p99.9 {} | max {} | mean {:.2}",
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max(),
        hist.mean()
    );
    println!(
        "expiry thread CPU: {:.2} s over {wall_s:.2} s of wall time ({:.0}% of a core)",
        expiry_cpu_s,
        100.0 * expiry_cpu_s / wall_s
    );
    println!(
        "target p99 <= 5 ms: {}",
        if q(0.99) <= 5 && not_expired == 0 {
            "reached"
        } else {
            "NOT reached"
        }
    );
}

/// The caravan of holder `h` (one caravan per province, in province order).
fn caravan_of(h: HolderIdx, per_province: u32) -> CaravanIdx {
    CaravanIdx(h.0 / per_province)
}

/// User + system CPU seconds of this process's thread named `name` (0 if not found), from
/// `/proc/self/task/*/stat`.
fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // 100 clock ticks per second on Linux.
        return (ticks(11) + ticks(12)) / 100.0;
    }
    0.0
}
