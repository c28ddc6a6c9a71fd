//! Criterion benchmark of the write-ahead log: durable records per second through group commit
//! on the real disk (`DirStorage`, `Durability::Fsync`), and the same load without fsync
//! (`Durability::None`) as the ceiling set by staging, sealing and writing alone.
//!
//! Four producer threads (one shard each) append 48-byte payloads continuously and wait for
//! durability only on every 1,000th ticket (pipelined), as the engine's shards would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_main};
use miqat_engine::wal::{DirStorage, Durability, Wal, WalConfig, WalStats};

const PRODUCERS: u16 = 4;
const PAYLOAD_BYTES: usize = 48;
const WAIT_EVERY_RECORDS: u64 = 1_000;

/// Appends `records` records spread over the producers and returns the wall time until the
/// last one is durable.
fn run_producers(wal: &Wal, records: u64) -> Duration {
    let per_producer = records.div_ceil(u64::from(PRODUCERS));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for shard in 0..PRODUCERS {
            scope.spawn(move || {
                let payload = [shard as u8; PAYLOAD_BYTES];
                let mut last = None;
                for i in 1..=per_producer {
                    let ticket = wal.append(shard, 1, &payload).expect("append failed");
                    if i % WAIT_EVERY_RECORDS == 0 {
                        wal.wait_durable(ticket).expect("wait_durable failed");
                    }
                    last = Some(ticket);
                }
                if let Some(ticket) = last {
                    wal.wait_durable(ticket).expect("wait_durable failed");
                }
            });
        }
    });
    started.elapsed()
}

fn bench_variant(c: &mut Criterion, name: &str, durability: Durability) {
    let dir = tempfile::tempdir().expect("creating a temporary data directory");
    let storage = Arc::new(DirStorage::open(dir.path()).expect("opening DirStorage"));
    let config = WalConfig {
        durability,
        ..WalConfig::default()
    };
    let wal = Wal::open(storage, config, 1, vec![0; usize::from(PRODUCERS)]).expect("open");

    // Totals over every timed call (criterion's warm-up calls included), so records, time and
    // fsyncs describe the same work.
    let mut measured_records = 0u64;
    let mut measured_time = Duration::ZERO;
    let mut measured_fsyncs = 0u64;
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let fsyncs_before = wal.stats().fsyncs;
            let elapsed = run_producers(&wal, iters);
            measured_fsyncs += wal.stats().fsyncs - fsyncs_before;
            measured_records += iters.div_ceil(u64::from(PRODUCERS)) * u64::from(PRODUCERS);
            measured_time += elapsed;
            elapsed
        });
    });
    group.finish();

    let stats: WalStats = wal.stats();
    wal.shutdown().expect("shutdown");
    let seconds = measured_time.as_secs_f64().max(f64::EPSILON);
    eprintln!(
        "wal/{name}: {:.0} records/s, {:.0} fsyncs/s, {:.1} records per fsync, {:.1} records per batch \
         (totals: {} records, {} batches, {} fsyncs, {} segments, {:.1} MiB)",
        measured_records as f64 / seconds,
        measured_fsyncs as f64 / seconds,
        measured_records as f64 / measured_fsyncs.max(1) as f64,
        stats.records_written as f64 / stats.batches.max(1) as f64,
        stats.records_written,
        stats.batches,
        stats.fsyncs,
        stats.segments_created,
        stats.bytes_written as f64 / (1024.0 * 1024.0),
    );
}

fn wal_group_commit(c: &mut Criterion) {
    bench_variant(c, "fsync_4_producers_48B", Durability::Fsync);
    bench_variant(c, "no_fsync_4_producers_48B", Durability::None);
}

/// Holds the macro-generated group function, which cannot carry a doc comment.
mod harness {
    use super::{Criterion, Duration, wal_group_commit};

    criterion::criterion_group! {
        name = benches;
        config = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        targets = wal_group_commit
    }
}
criterion_main!(harness::benches);
