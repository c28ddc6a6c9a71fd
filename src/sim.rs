//! `miqat sim`: runs the deterministic simulator over many seeds and reports every violation
//! with the one command that replays it.

use std::time::Instant;

use miqat_engine::sim::run_seed;

/// Options of `miqat sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// How many seeds to run, starting at `--first-seed`.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// Run this one seed only, and print its state digest.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The first seed of a `--seeds` run.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Steps per seed.
    #[arg(long, default_value_t = 300)]
    pub steps: u32,
}

/// Runs the seeds; returns the number of violations found.
pub fn run(args: &SimArgs) -> u64 {
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let mut violations = 0u64;
    let mut failing = 0u64;
    for &seed in &seeds {
        let report = run_seed(seed, args.steps);
        if args.seed.is_some() {
            println!(
                "seed {seed}: {} steps, {} restarts, {} acknowledged, digest {:016x}",
                report.steps, report.restarts, report.acknowledged, report.digest
            );
        }
        if !report.violations.is_empty() {
            failing += 1;
            violations += report.violations.len() as u64;
            for v in &report.violations {
                println!("seed {seed}: VIOLATION at step {}: {v}", report.steps);
            }
            println!(
                "seed {seed}: replay with: miqat sim --seed {seed} --steps {}",
                args.steps
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if args.seed.is_none() {
        eprintln!(
            "sim: {:.0} seeds/s ({} seeds in {elapsed:.1} s), {failing} failing",
            seeds.len() as f64 / elapsed.max(1e-9),
            seeds.len()
        );
    }
    println!(
        "sim: {} seeds, {} steps, {violations} violations",
        seeds.len(),
        args.steps
    );
    violations
}
