//! `miqat demo`: an opening day over HTTP on one machine: generate the national data set,
//! start the server in-process on a free port, open the main wave a few seconds later through
//! the operator API, replay the opening day compressed with the load tester, crash the engine,
//! recover it from its log, check every invariant again, and write the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use miqat_api::server::{ServeOptions, serve};
use miqat_api::{ApiConfig, AppState, app};
use miqat_engine::catalog::Catalog;
use miqat_engine::clock::{Clock, SystemClock};
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::model::{ReservationView, Status};
use miqat_engine::persist::RecoveryReport;
use miqat_engine::season::{Outflow, RoomConfig, Season, Stage};
use miqat_engine::wal::DirStorage;
use miqat_engine::{Engine, EngineConfig};
use miqat_loadtest::admin::Admin;
use miqat_loadtest::baseline::LoopCall;
use miqat_loadtest::check::CheckInput;
use miqat_loadtest::plan::PlanParams;
use miqat_loadtest::run::RunOptions;
use miqat_loadtest::verdict::ServiceLimits;
use miqat_loadtest::{Extras, add_check, apply_settings, dataset, plan};

mod cluster;

/// Options of `miqat demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working folder for the data set, the engine's log and the report (default: a
    /// `miqat-demo` folder in the system's temporary directory). The log is wiped at start.
    #[arg(long, env = "MIQAT_DEMO_DIR")]
    dir: Option<PathBuf>,
    /// Deposit holders in the generated data set.
    #[arg(long, default_value_t = 1_000_000)]
    holders: u64,
    /// Seats in the generated data set (default: scaled to the journeys the machine can
    /// carry, so provinces sell out and waiting lists form; 85,850 is the national figure).
    #[arg(long)]
    seats: Option<u64>,
    /// Seed for the data set and the opening-day plan.
    #[arg(long, default_value_t = 1399)]
    seed: u64,
    /// Holders active in the rush (a sample of those the main wave calls, plus 3% who are
    /// not called); default: as many as a short calibration says this machine carries.
    #[arg(long)]
    journeys: Option<usize>,
    /// Time compression of the opening day: 60 plays its first half hour in 30 seconds
    /// (default: 60, lowered to 30 or 20 on a machine that carries too few journeys at 60).
    #[arg(long)]
    speed: Option<f64>,
    /// Extra plan parameters, `name=value` (see `miqat loadtest --list-params`).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// The send-lag p99 (ms) above which the run is invalid as a measurement.
    #[arg(long, default_value_t = 50.0)]
    max_lag_ms: f64,
    /// Thresholds of the service verdict.
    #[command(flatten)]
    limits: ServiceLimits,
    /// No live view.
    #[arg(long)]
    quiet: bool,
    /// Three nodes of a cluster instead of one in-process server: child processes, the
    /// leader SIGKILLed mid-rush and restarted, every node checked after the run.
    #[arg(long)]
    cluster: bool,
    /// With `--cluster`: the nodes' six ports (three APIs, three Raft) from this one on
    /// (default: free ports the system chooses).
    #[arg(long, requires = "cluster")]
    ports_from: Option<u16>,
    /// Run without the main wave's waiting room (holders then race, and overload is shed
    /// with 503).
    #[arg(long)]
    no_waiting_room: bool,
}

/// Deadlines short enough to expire during the demo, long enough for the planned operator
/// events to arrive first (stages), and longer than a waiting holder's look at the list
/// (offers).
const DEMO_STAGE_MS: i64 = 45_000;
const DEMO_OFFER_MS: i64 = 12_000;
/// Admission bound of the demo's server: two cores answer ~15,000 requests a second, so
/// 512 in flight is ~35 ms of queue; past it the server sheds with 503 + `Retry-After`.
const DEMO_MAX_IN_FLIGHT: usize = 512;
/// The main wave's waiting room in the demo: automatic outflow, passes valid 10 minutes,
/// joins from half an hour before the opening (the whole pre-opening storm).
const DEMO_ROOM: RoomConfig = RoomConfig {
    enabled: true,
    outflow: Outflow::Auto,
    pass_lifetime_ms: 10 * 60_000,
    pre_queue_ms: 30 * 60_000,
};
/// Until the load tester moves the opening closer, the wave opens in an hour.
const PARKED_OPENING_MS: i64 = 3_600_000;
/// How long before the wave opens the rush begins (the plan's pre-opening storm fits in it).
const OPENS_IN: Duration = Duration::from_secs(3);

/// Runs the demo; an error (non-zero exit) if any invariant fails.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if args.cluster {
        return cluster::run(args);
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("miqat-demo"));
    let data_dir = dir.join("data");
    let log_dir = dir.join("log");
    let report_dir = dir.join("report");
    println!("Miqat demo: an opening day over HTTP on one machine\n");

    args.limits.validate()?;
    let sizing = size_run(args, &dir)?;
    for line in &sizing.why {
        println!("sizing     {line}");
    }
    let gen_seconds = ensure_data_set(&data_dir, args.holders, sizing.seats, args.seed)?;
    let started = Instant::now();
    let catalog = Arc::new(load_catalog(&data_dir)?);
    let mut season = load_season(&data_dir.join("season.toml"), &catalog)?;
    shorten_for_demo(
        &mut season,
        SystemClock::system().now_ms() + PARKED_OPENING_MS,
    )?;
    if !args.no_waiting_room {
        season.rooms = vec![(season.schedule.waves[0].name.clone(), DEMO_ROOM)];
    }
    println!(
        "data set   {} provinces, {} caravans, {} seats, {} holders ({}, loaded in {} ms)",
        catalog.provinces().len(),
        catalog.caravans().len(),
        catalog
            .caravans()
            .iter()
            .map(|c| u64::from(c.capacity))
            .sum::<u64>(),
        catalog.holder_count(),
        match gen_seconds {
            Some(s) => format!("generated in {s:.1} s"),
            None => "reused".to_string(),
        },
        started.elapsed().as_millis()
    );
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("clearing {}", log_dir.display()))?;
    }
    let token = operator_token();
    let (server, _) = InProcessServer::start(&catalog, &season, &log_dir, &token)?;
    println!("server     http://{} (in this process)", server.addr);

    let data = dataset::load(&data_dir)?;
    let params = demo_params(args, sizing.speed, Some(sizing.journeys))?;
    let plan = plan::generate(&data, &params)?;
    println!(
        "plan       {} journeys (seed {}), {:.0}x: the first half hour in {:.0} s; the wave opens \
         {} s from now, stages {} s, offers {} s",
        plan.journeys.len(),
        params.seed,
        params.speed,
        params.horizon_s / params.speed,
        (OPENS_IN.as_secs_f64() - plan.lead_ms() as f64 / 1000.0).round(),
        DEMO_STAGE_MS / 1000,
        DEMO_OFFER_MS / 1000
    );
    let options = RunOptions {
        target: format!("http://{}", server.addr),
        operator_token: Some(token.clone()),
        reschedule_in: Some(OPENS_IN + Duration::from_millis(plan.lead_ms().unsigned_abs())),
        live: !args.quiet,
        max_lag_ms: args.max_lag_ms,
        // Both ends of every connection live in this process.
        connections: crate::connections_within_limit(RunOptions::default().connections, 2),
        ..RunOptions::default()
    };
    let extras = Extras {
        fcfs_min: 0.8,
        check: true,
        capacities: Some(data.capacities()),
        limits: args.limits,
        holders: Some(Arc::new(data.holder_receipts())),
        ..Extras::default()
    };
    let client = miqat_loadtest::client_runtime(None)?;
    let (mut summary, recorded) = client.block_on(miqat_loadtest::execute_with_records(
        &plan, &options, &extras,
    ))?;

    // The restarted engine gets the schedule the run set, as an operator restarting after a
    // postponement would pass the season file that says so.
    season.schedule = (*server.engine.schedule()).clone();
    // The crash: no drain, no final snapshot. Every acknowledged decision was durable before
    // its answer left, so the log must bring every one back.
    let before_crash = server
        .engine
        .reservations(&Default::default(), 0, usize::MAX);
    server.crash();
    let restarted = Instant::now();
    let (server, recovery) = InProcessServer::start(&catalog, &season, &log_dir, &token)?;
    let restart_ms = restarted.elapsed().as_millis();
    let survived = verify_recovery(&server.engine, &before_crash);
    let admin = Admin::new(&format!("http://{}", server.addr), Some(&token));
    let report = client.block_on(miqat_loadtest::check::check(
        &admin,
        "after the crash and restart",
        &CheckInput {
            recorded: &recorded,
            capacities: extras.capacities.clone(),
            fcfs_min: extras.fcfs_min,
            holders: extras.holders.as_deref(),
            since_ms: miqat_loadtest::run_started_ms(&summary),
        },
    ))?;
    add_check(&mut summary, report);
    server.crash();
    let report_path = miqat_loadtest::write_reports(&summary, &report_dir)?;

    print!("\n{}", summary.to_text());
    if !season.rooms.is_empty() {
        print_waiting_room(&summary, &recorded);
    }
    println!(
        "recovery   restarted in {restart_ms} ms: {} + {} records replayed, {} deadlines expired \
         while down",
        match recovery.snapshot_lsn {
            Some(lsn) => format!("snapshot at lsn {lsn}"),
            None => "no snapshot (the crash left none; the whole log)".to_string(),
        },
        recovery.records_replayed,
        recovery.expired_at_start
    );
    match &survived {
        Ok(n) => println!(
            "           all {n} reservations came back as they were (or expired while down)"
        ),
        Err(e) => println!("           RECOVERY FAILED: {e}"),
    }
    println!("report     {}", report_path.display());
    println!("log        {}", log_dir.display());
    // The demo's exit status is the overall verdict's: correctness, service and measurement
    // validity, plus the recovery.
    match (survived, summary.verdicts()) {
        (Err(e), _) => bail!("recovery lost or changed a reservation: {e}"),
        (Ok(_), verdicts) if verdicts.passed() => Ok(()),
        (Ok(_), verdicts) => bail!("the run {}", verdicts.headline()),
    }
}

/// The waiting room over time (queue length, admissions and median wait, from the server's
/// metrics) and the `503` answers holders got.
fn print_waiting_room(
    summary: &miqat_loadtest::summary::Summary,
    recorded: &miqat_loadtest::recorder::Recorded,
) {
    let shed_503: u64 = recorded
        .answers
        .iter()
        .filter(|(answer, _)| answer.starts_with("503"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "room       the main wave's waiting room (automatic outflow); 503 answers to holders: \
         {shed_503}"
    );
    let samples = &summary.server_metrics;
    let step = samples.len().div_ceil(12).max(1);
    println!("           t (s)   waiting   admitted/s   median wait (s)");
    for sample in samples.iter().step_by(step) {
        println!(
            "           {:>5.0}   {:>7.0}   {:>10.1}   {:>15.1}",
            sample.t_s,
            // A sum over no room yet is -0.0; a length is never negative.
            sample.queue_length.abs(),
            sample.queue_admitted_per_s,
            sample.queue_wait_p50_s
        );
    }
}

/// The process's metrics recorder, installed at the first server's start and kept for the
/// restarted one (a process has one recorder), so the load tester's samples of `/metrics`
/// see the server's own figures.
fn demo_metrics() -> Option<miqat_api::telemetry::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<miqat_api::telemetry::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| match miqat_api::telemetry::install() {
            Ok(handle) => Some(handle),
            Err(e) => {
                eprintln!("demo: no server metrics in the report: {e}");
                None
            }
        })
        .clone()
}

/// The server and engine of the demo, on their own runtime.
struct InProcessServer {
    addr: SocketAddr,
    engine: Arc<Engine>,
    expiry: std::thread::JoinHandle<()>,
    runtime: tokio::runtime::Runtime,
}

impl InProcessServer {
    fn start(
        catalog: &Arc<Catalog>,
        season: &Season,
        log_dir: &Path,
        token: &str,
    ) -> anyhow::Result<(InProcessServer, RecoveryReport)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("miqat-http")
            .enable_all()
            .build()
            .context("starting the server runtime")?;
        let storage = Arc::new(DirStorage::open(log_dir)?);
        let (engine, recovery) = Engine::open(
            Arc::clone(catalog),
            season.clone(),
            Arc::new(SystemClock::system()),
            storage,
            EngineConfig::default(),
        )?;
        let expiry = engine.spawn_expiry_thread(Duration::from_millis(20))?;
        let state = AppState::new(
            Arc::clone(catalog),
            ApiConfig {
                operator_token: Some(token.to_string()),
                max_in_flight: DEMO_MAX_IN_FLIGHT,
                ..ApiConfig::default()
            },
            demo_metrics(),
        );
        state.set_engine(Arc::clone(&engine));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding a loopback port")?;
        let addr = listener.local_addr()?;
        runtime.spawn(serve(
            listener,
            app(state),
            ServeOptions::default(),
            std::future::pending(),
        ));
        Ok((
            InProcessServer {
                addr,
                engine,
                expiry,
                runtime,
            },
            recovery,
        ))
    }

    /// Stops serving at once and abandons the engine without a snapshot or a drain. Returns
    /// once no thread of this engine is left, so the next one has the log to itself.
    fn crash(self) {
        // Tasks are dropped where they stand: in-flight requests are cut, as in a crash.
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        self.engine.stop();
        let _ = self.expiry.join();
        let mut engine = self.engine;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match Arc::try_unwrap(engine) {
                // The last handle: dropping it stops the log's flusher thread.
                Ok(last) => return drop(last),
                Err(shared) if Instant::now() < until => {
                    engine = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    tracing::warn!("the crashed engine is still referenced; continuing");
                    return;
                }
            }
        }
    }
}

/// A fresh operator token per run (the demo's server listens on loopback only).
fn operator_token() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ensure_data_set(
    data_dir: &Path,
    holders: u64,
    seats: u64,
    seed: u64,
) -> anyhow::Result<Option<f64>> {
    let marker = data_dir.join("demo-params.txt");
    let params = format!("holders={holders} seats={seats} seed={seed}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(params.as_str()) {
        return Ok(None);
    }
    let started = Instant::now();
    let config = GenConfig {
        holders,
        seats,
        seed,
        opens_at: None,
    };
    generate(data_dir, &config, &mut |line| eprintln!("  gen: {line}"))?;
    std::fs::write(&marker, params).with_context(|| format!("writing {}", marker.display()))?;
    Ok(Some(started.elapsed().as_secs_f64()))
}

fn shorten_for_demo(season: &mut Season, opens_at_ms: i64) -> anyhow::Result<()> {
    let Some(main) = season.schedule.waves.first() else {
        bail!("the season has no wave to open");
    };
    // Every wave moves by the same amount, so later waves stay later (the reserve wave
    // must not already be open when the main one opens).
    let shift_ms = opens_at_ms - main.opens_at_ms;
    for wave in &mut season.schedule.waves {
        wave.opens_at_ms = wave.opens_at_ms.saturating_add(shift_ms);
    }
    season.stages = Stage::ALL.iter().map(|s| (*s, DEMO_STAGE_MS)).collect();
    season.offer_deadline_ms = DEMO_OFFER_MS;
    Ok(())
}

/// Every reservation seen before the crash must be back, as it was or (if its deadline
/// passed while the engine was down) expired; and the engine's own invariants must hold.
fn verify_recovery(engine: &Engine, before: &[ReservationView]) -> Result<usize, String> {
    engine.check_invariants()?;
    for old in before {
        let Some(new) = engine.reservation(old.id) else {
            return Err(format!("reservation {} lost", old.id));
        };
        let expired_while_down = new.status == Status::Expired && old.status.is_live();
        if new.status != old.status && !expired_while_down {
            return Err(format!(
                "reservation {} was {} and came back {}",
                old.id,
                old.status.as_str(),
                new.status.as_str()
            ));
        }
    }
    Ok(before.len())
}

/// The demo's plan parameters at `speed` with `journeys`.
fn demo_params(args: &DemoArgs, speed: f64, journeys: Option<usize>) -> anyhow::Result<PlanParams> {
    let mut params = PlanParams {
        seed: args.seed,
        speed,
        holders: journeys,
        // A waiting holder looks every 5 minutes of opening-day time for an hour, so offers
        // (12 s at 60x) are seen before they lapse.
        waitlist_poll_s: 300.0,
        waitlist_polls: 12,
        ..PlanParams::default()
    };
    apply_settings(&mut params, &args.set)?;
    Ok(params)
}

// ---- Sizing the run to the machine -------------------------------------------------------

/// The planned busiest second may use at most this share of the measured capacity: retries,
/// alternatives, waiting lists and operator events come on top of the planned requests, and
/// other work on a shared machine comes and goes (at 0.35 a run on two shared cores kept no
/// timeouts but its generator fell 130 ms behind at the spike).
const HEADROOM: f64 = 0.2;
/// Speeds tried, fastest first; below 20x the opening day's half hour takes too long to watch.
const SPEEDS: [f64; 3] = [60.0, 30.0, 20.0];
/// Fewer journeys than this show too little; more than this is the old default.
const JOURNEYS_MIN: usize = 3_000;
const JOURNEYS_MAX: usize = 100_000;
/// Seats per journey when the seats are scaled: demand 1.4 times the seats, so provinces
/// sell out and waiting lists form.
const SEATS_PER_JOURNEY: f64 = 0.7;
const SEATS_NATIONAL: u64 = 85_850;
/// The calibration's own small data set and run.
const CALIBRATION_HOLDERS: u64 = 40_000;
const CALIBRATION_SEATS: u64 = 20_000;
const CALIBRATION_CONNECTIONS: usize = 64;
const CALIBRATION_LENGTH: Duration = Duration::from_secs(3);
const CALIBRATION_RESERVE_EVERY: usize = 5;

/// What the demo plays, and why.
struct Sizing {
    journeys: usize,
    speed: f64,
    seats: u64,
    why: Vec<String>,
}

/// What a short calibration measured on this machine.
struct Capacity {
    /// Requests a second the in-process server answered, closed loop, lists and reservations.
    server_rps: f64,
    /// Requests the generator sends per CPU-second of its own threads (trivial handler).
    generator_rps_per_core: Option<f64>,
    /// The plan's busiest planned second per journey, at each speed of `SPEEDS` (or the one
    /// asked for).
    peak_per_journey: Vec<(f64, f64)>,
}

/// Chooses journeys, speed and seats: the flags where given, else from a calibration.
fn size_run(args: &DemoArgs, dir: &Path) -> anyhow::Result<Sizing> {
    let scaled_seats = |journeys: usize| {
        let seats = (journeys as f64 * SEATS_PER_JOURNEY / 500.0).round() as u64 * 500;
        seats.clamp(1_000, SEATS_NATIONAL)
    };
    if let (Some(journeys), Some(speed)) = (args.journeys, args.speed) {
        let seats = args.seats.unwrap_or_else(|| scaled_seats(journeys));
        return Ok(Sizing {
            journeys,
            speed,
            seats,
            why: vec![format!(
                "{journeys} journeys at {speed}x as asked (no calibration); {seats} seats"
            )],
        });
    }
    println!("sizing     calibrating this machine (a few seconds)...");
    let speeds: Vec<f64> = args.speed.map_or(SPEEDS.to_vec(), |s| vec![s]);
    let capacity = calibrate(args, &dir.join("calibration"), &speeds)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // The generator shares the cores with the server; give it half.
    let generator_rps = capacity
        .generator_rps_per_core
        .map_or(f64::INFINITY, |r| r * cores / 2.0);
    let carried_rps = capacity.server_rps.min(generator_rps);
    let budget_rps = carried_rps * HEADROOM;
    let mut why = vec![format!(
        "the in-process server answered {:.0} req/s closed loop (lists and reservations, {} \
         connections, {} s); the generator sends {} req/s per CPU-second",
        capacity.server_rps,
        CALIBRATION_CONNECTIONS,
        CALIBRATION_LENGTH.as_secs(),
        capacity
            .generator_rps_per_core
            .map_or("an unknown number of".to_string(), |r| format!("{r:.0}"))
    )];
    let peak_at = |speed: f64| {
        capacity
            .peak_per_journey
            .iter()
            .find(|(s, _)| *s == speed)
            .map_or(f64::INFINITY, |(_, peak)| *peak)
    };
    let speeds: Vec<f64> = capacity.peak_per_journey.iter().map(|(s, _)| *s).collect();
    let fitting = |speed: f64| (budget_rps / peak_at(speed).max(1e-9)).floor() as usize;
    let speed = speeds
        .iter()
        .copied()
        .find(|&s| fitting(s) >= JOURNEYS_MIN)
        .or(speeds.last().copied())
        .unwrap_or(SPEEDS[0]);
    let journeys = match args.journeys {
        Some(j) => j,
        None => fitting(speed).clamp(JOURNEYS_MIN, JOURNEYS_MAX),
    };
    let seats = args.seats.unwrap_or_else(|| scaled_seats(journeys));
    why.push(format!(
        "the planned busiest second ({:.2} requests per journey at {speed}x) is kept under {:.0}% \
         of {carried_rps:.0} req/s: {journeys} journeys at {speed}x{}",
        peak_at(speed),
        HEADROOM * 100.0,
        if args.journeys.is_some() {
            " (journeys as asked)"
        } else {
            ""
        }
    ));
    why.push(match args.seats {
        Some(seats) => format!("{seats} seats as asked"),
        None => format!(
            "{seats} seats ({:.1} journeys a seat, so provinces sell out and waiting lists form; \
             --seats 85850 for the national figure)",
            journeys as f64 / seats as f64
        ),
    });
    Ok(Sizing {
        journeys,
        speed,
        seats,
        why,
    })
}

/// Measures the in-process server on a small data set of its own (real reservations, real
/// log), the generator against a trivial handler, and the plan's peak per journey.
fn calibrate(args: &DemoArgs, dir: &Path, speeds: &[f64]) -> anyhow::Result<Capacity> {
    let data_dir = dir.join("data");
    let log_dir = dir.join("log");
    ensure_data_set(&data_dir, CALIBRATION_HOLDERS, CALIBRATION_SEATS, args.seed)?;
    let catalog = Arc::new(load_catalog(&data_dir)?);
    let mut season = load_season(&data_dir.join("season.toml"), &catalog)?;
    shorten_for_demo(&mut season, SystemClock::system().now_ms() - 1_000)?;
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("clearing {}", log_dir.display()))?;
    }
    let data = dataset::load(&data_dir)?;
    let calls = calibration_calls(&data);
    let mut peak_per_journey = Vec::with_capacity(speeds.len());
    for &speed in speeds {
        let plan = plan::generate(&data, &demo_params(args, speed, None)?)?;
        let peak = plan::planned_peak_per_second(&plan) as f64 / plan.journeys.len().max(1) as f64;
        peak_per_journey.push((speed, peak));
    }
    let client = miqat_loadtest::client_runtime(None)?;
    let (server, _) = InProcessServer::start(&catalog, &season, &log_dir, &operator_token())?;
    let base = format!("http://{}", server.addr);
    let measured = client.block_on(miqat_loadtest::baseline::closed_loop_calls(
        &base,
        CALIBRATION_CONNECTIONS,
        CALIBRATION_LENGTH,
        Arc::new(calls),
    ));
    server.crash();
    let _ = std::fs::remove_dir_all(&log_dir);
    let server_rps = measured?.rps;
    let trivial = miqat_loadtest::baseline::start_trivial(Duration::from_secs(3_600))?;
    let generator = client.block_on(miqat_loadtest::baseline::closed_loop(
        &trivial.base,
        CALIBRATION_CONNECTIONS,
        Duration::from_secs(2),
        1.0 / CALIBRATION_RESERVE_EVERY as f64,
    ));
    drop(trivial);
    Ok(Capacity {
        server_rps,
        generator_rps_per_core: generator?.rps_per_core,
        peak_per_journey,
    })
}

/// Lists of every province, and one reservation in every `CALIBRATION_RESERVE_EVERY` by a
/// different called holder in a caravan of their city.
fn calibration_calls(data: &dataset::DataSet) -> Vec<LoopCall> {
    let wave = data.waves.first();
    let mut first_caravan: std::collections::HashMap<(u32, &str), &str> =
        std::collections::HashMap::new();
    for c in &data.caravans {
        first_caravan
            .entry((c.province_id, c.city.as_str()))
            .or_insert(c.id.as_str());
    }
    let reservations: Vec<LoopCall> = data
        .holders
        .iter()
        .filter(|h| dataset::DataSet::is_called(h, wave))
        .filter_map(|h| {
            let caravan = first_caravan.get(&(h.province_id, h.city.as_str()))?;
            let body = serde_json::json!({
                "national_id": h.national_id,
                "tracking_code": h.tracking_code,
                "caravan_id": caravan,
            });
            Some(LoopCall::reserve(bytes_of(&body)))
        })
        .collect();
    let provinces: Vec<u32> = {
        let mut ids: Vec<u32> = data.caravans.iter().map(|c| c.province_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut calls = Vec::with_capacity(reservations.len() * CALIBRATION_RESERVE_EVERY);
    for (i, reserve) in reservations.into_iter().enumerate() {
        calls.push(reserve);
        for k in 1..CALIBRATION_RESERVE_EVERY {
            let province = provinces[(i * CALIBRATION_RESERVE_EVERY + k) % provinces.len()];
            calls.push(LoopCall::list(format!("/v1/provinces/{province}/caravans")));
        }
    }
    calls
}

fn bytes_of(value: &serde_json::Value) -> bytes::Bytes {
    bytes::Bytes::from(value.to_string())
}
