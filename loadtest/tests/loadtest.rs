//! The load tester against fake servers: plans are deterministic, a recorded plan replays the
//! same requests, and the after-run check catches a server that oversells or forgets an
//! acknowledged reservation (and passes a correct one).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use miqat_loadtest::plan::{self, Plan, PlanParams};
use miqat_loadtest::run::RunOptions;
use miqat_loadtest::{Extras, dataset, execute};
use support::{Fake, Mode, write_data_set};

fn params(seed: u64) -> PlanParams {
    PlanParams {
        seed,
        // Half an hour in three seconds; the storm before the opening lasts 0.2 s.
        speed: 600.0,
        cancel_share: 0.0,
        ..PlanParams::default()
    }
}

fn plan_for(dir: &std::path::Path, seed: u64) -> Plan {
    let data = dataset::load(dir).unwrap();
    plan::generate(&data, &params(seed)).unwrap()
}

fn options(fake: &Fake) -> RunOptions {
    RunOptions {
        target: fake.base.clone(),
        operator_token: Some("operator".into()),
        reschedule_in: Some(Duration::from_millis(300)),
        live: false,
        // The fakes run in the test's runtime; lateness is not what these tests measure.
        max_lag_ms: 1e9,
        ..RunOptions::default()
    }
}

fn extras(dir: &std::path::Path) -> Extras {
    let data = dataset::load(dir).unwrap();
    Extras {
        check: true,
        // The fakes stamp creation times in milliseconds; with 30 seats the order check
        // is about sold-out caravans, not tenths of a millisecond.
        fcfs_min: -1.0,
        capacities: Some(data.capacities()),
        holders: Some(std::sync::Arc::new(data.holder_receipts())),
        ..Extras::default()
    }
}

#[test]
fn the_same_seed_draws_the_same_plan_and_another_seed_another() {
    let dir = tempfile::tempdir().unwrap();
    write_data_set(dir.path(), 400, 20);
    let first = plan_for(dir.path(), 7);
    assert_eq!(first, plan_for(dir.path(), 7));
    assert_ne!(first.journeys, plan_for(dir.path(), 8).journeys);
    // Every tenth holder is not called: about 3% of the journeys are theirs.
    let uncalled = first.journeys.iter().filter(|j| !j.called).count();
    assert!(
        uncalled > 0 && uncalled < first.journeys.len() / 10,
        "{uncalled}"
    );
    assert!(
        first.lead_ms() < 0,
        "some holders arrive before the opening"
    );
}

#[test]
fn a_recorded_plan_reads_back_equal_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_data_set(dir.path(), 300, 20);
    let plan = plan_for(dir.path(), 3);
    let file = dir.path().join("plan.ndjson");
    plan::write(&plan, &file).unwrap();
    assert_eq!(plan::read(&file).unwrap(), plan);

    let text = std::fs::read_to_string(&file).unwrap();
    let truncated: Vec<&str> = text.lines().take(10).collect();
    std::fs::write(&file, truncated.join("\n")).unwrap();
    let error = format!("{:#}", plan::read(&file).unwrap_err());
    assert!(error.contains("truncated"), "{error}");
    std::fs::write(&file, text.replacen("\"national_id\"", "\"nationalid\"", 1)).unwrap();
    let error = format!("{:#}", plan::read(&file).unwrap_err());
    assert!(error.contains("line 2"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_sends_the_same_requests() {
    let dir = tempfile::tempdir().unwrap();
    write_data_set(dir.path(), 120, 20);
    let plan = plan_for(dir.path(), 11);
    let file = dir.path().join("plan.ndjson");
    plan::write(&plan, &file).unwrap();
    let replayed = plan::read(&file).unwrap();

    let mut sent = Vec::new();
    for p in [&plan, &replayed] {
        let fake = Fake::start(Mode::SeatEveryone, dir.path()).await;
        let extras = Extras::default();
        execute(p, &options(&fake), &extras).await.unwrap();
        let mut received = fake.received();
        received.sort();
        sent.push(received);
    }
    assert!(sent[0].len() > plan.journeys.len(), "{}", sent[0].len());
    assert!(
        sent[0]
            .iter()
            .any(|r| r.method == "POST" && r.key.is_some())
    );
    assert!(sent[0].iter().any(|r| r.uri.contains("/events")));
    assert_eq!(sent[0].len(), sent[1].len(), "as many requests");
    let first_difference = sent[0].iter().zip(&sent[1]).find(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the same requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_passes_a_correct_server() {
    let dir = tempfile::tempdir().unwrap();
    write_data_set(dir.path(), 200, 10);
    let plan = plan_for(dir.path(), 5);
    let fake = Fake::start(Mode::Correct, dir.path()).await;
    let summary = execute(&plan, &options(&fake), &extras(dir.path()))
        .await
        .unwrap();
    let check = &summary.checks[0];
    assert!(check.passed, "{:?}", check.violations);
    assert_eq!(check.live, 60, "{}", summary.to_text());
    assert_eq!(check.acknowledged, 60);
    assert!(summary.passed(), "{}", summary.to_text());
    assert!(summary.outcomes.get("rejected").copied().unwrap_or(0) > 0);
    // --reschedule-in moved the whole schedule: the reserve wave still opens 12 days after
    // the main one, not in the past.
    let waves = fake.waves();
    let opens = |i: usize| {
        waves[i]["opens_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    assert_eq!(
        opens(1).duration_since(opens(0)),
        jiff::SignedDuration::from_hours(12 * 24)
    );
    assert!(opens(0) > jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_seats_given_while_no_wave_admitted_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    // Seats for everyone, so the holders no wave calls get seats too (the fake ignores the
    // schedule) instead of finding the caravans full.
    write_data_set(dir.path(), 200, 40);
    let plan = plan_for(dir.path(), 5);
    assert!(
        plan.journeys.iter().any(|j| !j.called),
        "the plan needs uncalled holders"
    );
    let fake = Fake::start(Mode::IgnoreSchedule, dir.path()).await;
    let summary = execute(&plan, &options(&fake), &extras(dir.path()))
        .await
        .unwrap();
    let check = &summary.checks[0];
    assert!(
        check
            .violations
            .iter()
            .any(|v| v.contains("while no wave admitting them was open")),
        "{:?}",
        check.violations
    );
    assert!(!summary.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_an_overselling_server() {
    let dir = tempfile::tempdir().unwrap();
    write_data_set(dir.path(), 200, 10);
    let plan = plan_for(dir.path(), 5);
    let fake = Fake::start(Mode::Oversell, dir.path()).await;
    let summary = execute(&plan, &options(&fake), &extras(dir.path()))
        .await
        .unwrap();
    let check = &summary.checks[0];
    assert!(!check.passed);
    assert!(
        check.violations.iter().any(|v| v.contains("over capacity")),
        "{:?}",
        check.violations
    );
    assert!(!summary.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_a_forgotten_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    write_data_set(dir.path(), 200, 10);
    let plan = plan_for(dir.path(), 5);
    let fake = Fake::start(Mode::ForgetFirst, dir.path()).await;
    let summary = execute(&plan, &options(&fake), &extras(dir.path()))
        .await
        .unwrap();
    let check = &summary.checks[0];
    let missing: Vec<&String> = check
        .violations
        .iter()
        .filter(|v| v.contains("is missing"))
        .collect();
    assert_eq!(missing.len(), 1, "{:?}", check.violations);
    assert!(missing[0].contains("r00000"), "{missing:?}");
    assert!(!summary.passed());
}
