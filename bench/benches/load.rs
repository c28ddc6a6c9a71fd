//! Criterion bench of the data-in layer: loading the national data set (1,000,000 holders)
//! with `load::load_catalog`, and generating it with `gen::generate`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::load::load_catalog;

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = GenConfig::default();
    let report = generate(dir.path(), &config, &mut |_| {}).unwrap();
    assert_eq!(report.holders, 1_000_000);

    let mut group = c.benchmark_group("data");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("load_catalog_1m_holders", |b| {
        b.iter(|| {
            let catalog = load_catalog(dir.path()).unwrap();
            assert_eq!(catalog.holder_count(), 1_000_000);
            catalog
        })
    });
    let out = tempfile::tempdir().unwrap();
    group.bench_function("generate_1m_holders", |b| {
        b.iter(|| generate(out.path(), &config, &mut |_| {}).unwrap())
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
