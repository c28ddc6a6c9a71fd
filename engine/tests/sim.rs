//! The simulator: the engine as built passes it, the same seed replays byte for byte, and a
//! planted defect is found within a stated number of seeds (with `--features planted-defects`).
#![allow(clippy::unwrap_used)]

use miqat_engine::sim::run_seed;

#[test]
fn the_engine_as_built_passes_a_sweep_of_seeds() {
    for seed in 0..200 {
        let report = run_seed(seed, 200);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        assert_eq!(report.steps, 200);
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run_seed(42, 500);
    let b = run_seed(42, 500);
    assert_eq!(
        (a.digest, a.restarts, a.acknowledged),
        (b.digest, b.restarts, b.acknowledged)
    );
    assert!(a.acknowledged > 0 && a.restarts > 0, "{a:?}");
    assert_ne!(a.digest, run_seed(43, 500).digest);
}

#[cfg(feature = "planted-defects")]
mod planted {
    use miqat_engine::sim::{Defect, run_seed_with};

    /// Seeds within which each planted defect must be found.
    const SEEDS_MAX: u64 = 200;

    fn first_seed_finding(defect: Defect) -> Option<(u64, Vec<String>)> {
        (0..SEEDS_MAX).find_map(|seed| {
            let report = run_seed_with(seed, 300, defect);
            (!report.violations.is_empty()).then_some((seed, report.violations))
        })
    }

    #[test]
    fn a_seat_released_twice_is_found() {
        let (seed, violations) = first_seed_finding(Defect::SeatReleasedTwice)
            .unwrap_or_else(|| panic!("not found within {SEEDS_MAX} seeds"));
        eprintln!("found at seed {seed}: {violations:?}");
        assert!(violations[0].contains("invariant") || violations[0].contains("panic"));
    }

    #[test]
    fn an_acknowledgement_before_the_fsync_is_found() {
        let (seed, violations) = first_seed_finding(Defect::AckBeforeSync)
            .unwrap_or_else(|| panic!("not found within {SEEDS_MAX} seeds"));
        eprintln!("found at seed {seed}: {violations:?}");
        assert!(violations[0].contains("gone") || violations[0].contains("went back"));
    }
}
