//! Expiry: the cost of `Engine::expire_due` per expired hold.
//!
//! `hot_caravan/1M`: one province, one caravan of 1,000,000 seats, 1,000,000 holds taken at
//! one instant (manual clock) with the season's 72-hour documents stage; the clock is moved
//! past the deadline and one `expire_due()` call expiring all of them is timed. `spread`: the
//! national data set (85,850 seats over every province) filled the same way. Engines are
//! built outside the timing (`iter_batched`, one engine per sample) and dropped outside it.
//! No log (`Engine::in_memory`): this is the in-memory cost of an expiry; with a log each
//! expiry also appends an `End` record.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_main};
use miqat_bench::{fill_plan, hot_caravan, national};
use miqat_engine::catalog::{CaravanIdx, Catalog, HolderIdx};
use miqat_engine::clock::ManualClock;
use miqat_engine::season::{HOUR_MS, Season};
use miqat_engine::{Engine, EngineConfig};

/// The documents stage of the default season.
const DOCUMENTS_MS: i64 = 72 * HOUR_MS;

/// An engine with every seat of `plan` held, and its clock already past every deadline.
fn held(catalog: &Arc<Catalog>, season: &Season, plan: &[(HolderIdx, CaravanIdx)]) -> Arc<Engine> {
    let start = season.schedule.waves[0].opens_at_ms + 1;
    let clock = ManualClock::new(start);
    let engine = Engine::in_memory(
        Arc::clone(catalog),
        season.clone(),
        Arc::new(clock.clone()),
        EngineConfig::default(),
    )
    .unwrap();
    for &(h, c) in plan {
        let decided = engine.reserve(h, c, None).unwrap();
        debug_assert!(decided.value.reservation.deadline_ms.is_some());
    }
    clock.advance(season.stages[0].1 + 1);
    engine
}

fn expire_all(engine: Arc<Engine>, expected: usize) -> Arc<Engine> {
    let (expired, _) = engine.expire_due().unwrap();
    assert_eq!(expired, expected);
    engine
}

fn expiry(c: &mut Criterion) {
    let mut g = c.benchmark_group("expiry");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));

    let seats = 1_000_000u32;
    let (hot, hot_season) = hot_caravan(seats);
    assert_eq!(hot_season.stages[0].1, DOCUMENTS_MS);
    let hot_plan: Vec<_> = (0..seats).map(|h| (HolderIdx(h), CaravanIdx(0))).collect();
    g.throughput(Throughput::Elements(u64::from(seats)));
    g.bench_function("hot_caravan/1M_holds", |b| {
        b.iter_batched(
            || held(&hot, &hot_season, &hot_plan),
            |e| expire_all(e, seats as usize),
            BatchSize::PerIteration,
        )
    });
    drop(hot);

    let dir = std::env::temp_dir().join("miqat-bench-national");
    let (catalog, season) = national(&dir, 1_000_000);
    let plan = fill_plan(&catalog, &season);
    g.throughput(Throughput::Elements(plan.len() as u64));
    g.bench_function("spread/national_85850_holds", |b| {
        b.iter_batched(
            || held(&catalog, &season, &plan),
            |e| expire_all(e, plan.len()),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Holds the macro-generated group function, which cannot carry a doc comment.
mod harness {
    use super::{Criterion, expiry};

    criterion::criterion_group! {
        name = benches;
        config = Criterion::default();
        targets = expiry
    }
}
criterion_main!(harness::benches);
