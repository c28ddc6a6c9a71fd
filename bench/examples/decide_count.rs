//! Reservation decisions per CPU-second of the deciding thread, and a run for counting
//! instructions under callgrind (`--toggle-collect=*run_plan*`): two measures that other load
//! on a shared machine disturbs far less than wall time.
//!
//! `decide_count [hot|spread] [rounds]` prints the median over `rounds` fresh engines.
#![allow(clippy::unwrap_used, missing_docs)]

use miqat_bench::{engine_at_opening, fill_plan, hot_caravan, national};
use miqat_engine::Engine;
use miqat_engine::catalog::{CaravanIdx, HolderIdx};

#[inline(never)]
fn run_plan(engine: &Engine, plan: &[(HolderIdx, CaravanIdx)]) {
    for &(h, c) in plan {
        let decided = engine.reserve(h, c, None).unwrap();
        std::hint::black_box(decided.value.reservation.id);
    }
}

/// CPU time this thread has run, in nanoseconds (Linux: `/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "hot".into());
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let (catalog, season, plan) = if mode == "spread" {
        let dir = std::env::temp_dir().join("miqat-decide-count");
        let (catalog, season) = national(&dir, 200_000);
        let plan = fill_plan(&catalog, &season);
        (catalog, season, plan)
    } else {
        let (catalog, season) = hot_caravan(50_000);
        let plan = (0..50_000u32)
            .map(|h| (HolderIdx(h), CaravanIdx(0)))
            .collect();
        (catalog, season, plan)
    };
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let e = engine_at_opening(&catalog, &season);
        let before = thread_cpu_ns();
        run_plan(&e, &plan);
        let spent = thread_cpu_ns().saturating_sub(before).max(1);
        rates.push(plan.len() as f64 * 1e9 / spent as f64);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "{mode}: {} decisions, median {:.3} M decisions per CPU-second over {rounds} rounds",
        plan.len(),
        median / 1e6
    );
}
