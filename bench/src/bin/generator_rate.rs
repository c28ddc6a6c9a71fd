//! The load tester's own ceiling: its client, recording every request into the same
//! histograms as a real run, driving a trivial axum handler closed loop. Prints answers per
//! second and per CPU-second of the client's threads (the generator must sustain 40,000 per
//! core), over three runs.
//!
//! `cargo run --release -p miqat-bench --bin generator_rate -- [--connections N] [--seconds S]`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use miqat_bench::numeric_flag;
use miqat_loadtest::baseline::{closed_loop, start_trivial};

fn main() {
    let connections = numeric_flag("--connections", 64.0) as usize;
    let seconds = numeric_flag("--seconds", 5.0) as u64;
    let server = start_trivial(Duration::from_secs(3600)).unwrap();
    let client = miqat_loadtest::client_runtime(None).unwrap();
    let mut per_core = Vec::new();
    for run in 1..=3 {
        // A fifth of the requests are reservations (POST with a JSON body), the rest lists.
        let ceiling = client
            .block_on(closed_loop(
                &server.base,
                connections,
                Duration::from_secs(seconds),
                0.2,
            ))
            .unwrap();
        println!(
            "run {run}: {:.0} answers/s over {connections} connections, p50 {:.2} ms, p99 {:.2} ms; generator {} per client CPU-second",
            ceiling.rps,
            ceiling.latency.p50_ms,
            ceiling.latency.p99_ms,
            ceiling
                .rps_per_core
                .map_or("n/a".to_string(), |r| format!("{r:.0}")),
        );
        if let Some(r) = ceiling.rps_per_core {
            per_core.push(r);
        }
    }
    per_core.sort_by(f64::total_cmp);
    if let Some(median) = per_core.get(per_core.len() / 2) {
        println!(
            "median generator rate: {median:.0} requests per client CPU-second (target 40,000)"
        );
    }
}
