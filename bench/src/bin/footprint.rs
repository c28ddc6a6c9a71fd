//! Memory footprint: resident set size before loading, after `load_catalog` of the national
//! data set (1 M holders), after building the engine, and after reserving every seat.
//!
//! `cargo run --release -p miqat-bench --bin footprint [-- HOLDERS]`
//!
//! The data set is generated first (in a child process, so generation does not inflate this
//! process's resident set) in `$TMPDIR/miqat-bench-national` (or `miqat-bench-footprint-N` for
//! another holder count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use miqat_bench::{FixedClock, fill_plan, national, resident_bytes};
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::{Engine, EngineConfig};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let holders: u64 = args
        .get(1)
        .map_or(1_000_000, |s| s.parse().expect("HOLDERS"));
    let dir = if holders == 1_000_000 {
        std::env::temp_dir().join("miqat-bench-national")
    } else {
        std::env::temp_dir().join(format!("miqat-bench-footprint-{holders}"))
    };
    if args.get(2).map(String::as_str) == Some("--generate-only") {
        let _ = national(&dir, holders);
        return;
    }
    if !dir.join("holders.csv").exists() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(holders.to_string())
            .arg("--generate-only")
            .status()
            .unwrap();
        assert!(status.success(), "generating the data set failed");
    }

    let mut rows: Vec<(&str, u64)> = Vec::new();
    rows.push(("before loading", resident_bytes()));
    let catalog = Arc::new(load_catalog(&dir).expect("load_catalog"));
    let season = load_season(&dir.join("season.toml"), &catalog).expect("load_season");
    rows.push(("after load_catalog", resident_bytes()));
    let now_ms = season.schedule.waves[0].opens_at_ms + 1;
    let engine = Engine::in_memory(
        Arc::clone(&catalog),
        season.clone(),
        Arc::new(FixedClock(now_ms)),
        EngineConfig::default(),
    )
    .unwrap();
    rows.push(("after building the engine", resident_bytes()));
    let plan = fill_plan(&catalog, &season);
    let plan_bytes = plan.capacity() * std::mem::size_of_val(&plan[0]);
    for &(h, c) in &plan {
        let decided = engine.reserve(h, c, None).unwrap();
        std::hint::black_box(decided.value.reservation.id);
    }
    drop(plan);
    rows.push(("after reserving every seat", resident_bytes()));

    println!(
        "footprint: {} holders, {} caravans, {} seats reserved (the plan's {:.1} MiB freed before the last row)",
        catalog.holder_count(),
        catalog.caravans().len(),
        engine.stats().by_status.iter().sum::<u64>(),
        mib(plan_bytes as u64),
    );
    println!("| stage                      | RSS (MiB) | delta (MiB) |");
    println!("|----------------------------|----------:|------------:|");
    let mut previous = 0;
    for (stage, rss) in &rows {
        println!(
            "| {stage:<26} | {:>9.1} | {:>+11.1} |",
            mib(*rss),
            mib(*rss) - mib(previous)
        );
        previous = *rss;
    }
    let last = rows.last().map_or(0, |r| r.1);
    println!(
        "target: under 1 GiB resident with every seat reserved: {} ({:.1} MiB)",
        if last < 1 << 30 {
            "reached"
        } else {
            "NOT reached"
        },
        mib(last)
    );
}
