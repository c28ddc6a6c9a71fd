//! Reservation decisions per second in memory: one and two threads, spread over provinces and
//! all on one hot caravan. Every timed decision succeeds (the plan fills caravans exactly).
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use miqat_bench::{engine_at_opening, fill_plan, hot_caravan, national};
use miqat_engine::Engine;
use miqat_engine::catalog::{CaravanIdx, HolderIdx};

fn run(engine: &Engine, plan: &[(HolderIdx, CaravanIdx)]) {
    for &(h, c) in plan {
        let decided = engine.reserve(h, c, None).unwrap();
        std::hint::black_box(decided.value.reservation.id);
    }
}

fn run_threads(engine: &Engine, halves: &[Vec<(HolderIdx, CaravanIdx)>]) {
    std::thread::scope(|s| {
        for half in halves {
            s.spawn(move || run(engine, half));
        }
    });
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("miqat-bench-national");
    let (catalog, season) = national(&dir, 1_000_000);
    let plan = fill_plan(&catalog, &season);
    // Two threads on disjoint provinces: the first half of the provinces, the second half.
    let split = plan.partition_point(|&(h, _)| {
        catalog.holder(h).unwrap().province.index() < catalog.provinces().len() / 2
    });
    let spread = vec![plan[..split].to_vec(), plan[split..].to_vec()];

    let mut g = c.benchmark_group("reserve");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(plan.len() as u64));
    g.bench_function("spread/1_thread", |b| {
        b.iter_batched(
            || engine_at_opening(&catalog, &season),
            |e| run(&e, &plan),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("spread/2_threads", |b| {
        b.iter_batched(
            || engine_at_opening(&catalog, &season),
            |e| run_threads(&e, &spread),
            BatchSize::PerIteration,
        )
    });

    let seats = 100_000u32;
    let (hot, hot_season) = hot_caravan(seats);
    let hot_plan: Vec<_> = (0..seats).map(|h| (HolderIdx(h), CaravanIdx(0))).collect();
    let hot_halves = vec![
        hot_plan.iter().copied().step_by(2).collect::<Vec<_>>(),
        hot_plan
            .iter()
            .copied()
            .skip(1)
            .step_by(2)
            .collect::<Vec<_>>(),
    ];
    g.throughput(Throughput::Elements(u64::from(seats)));
    g.bench_function("hot_caravan/1_thread", |b| {
        b.iter_batched(
            || engine_at_opening(&hot, &hot_season),
            |e| run(&e, &hot_plan),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("hot_caravan/2_threads", |b| {
        b.iter_batched(
            || engine_at_opening(&hot, &hot_season),
            |e| run_threads(&e, &hot_halves),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
