//! `miqat demo`: an opening day on one machine, straight into the engine: generate the
//! national data set, open a wave, rush it from many client threads (with duplicates, wrong
//! provinces and cancellations), let short deadlines expire and pass seats to waiting lists,
//! crash, recover from the log, check every invariant, and report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use miqat_engine::catalog::{Catalog, HolderIdx};
use miqat_engine::clock::{Clock, SystemClock};
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::model::{OperatorEvent, ReservationId, Status};
use miqat_engine::season::{Season, Stage};
use miqat_engine::wal::DirStorage;
use miqat_engine::{Engine, EngineConfig, EngineError};
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Options of `miqat demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Working folder for the data set and the engine's log (default: a `miqat-demo` folder
    /// in the system's temporary directory). The log folder in it is wiped at start.
    #[arg(long, env = "MIQAT_DEMO_DIR")]
    dir: Option<PathBuf>,
    /// Deposit holders in the generated data set.
    #[arg(long, default_value_t = 1_000_000)]
    holders: u64,
    /// Seats in the generated data set.
    #[arg(long, default_value_t = 85_850)]
    seats: u64,
    /// Concurrent client threads; each waits for its decision to be durable, as a server
    /// request would.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seed for the data set and the rush.
    #[arg(long, default_value_t = 1399)]
    seed: u64,
}

/// Short deadlines, so the demo sees stages expire within seconds.
const DEMO_STAGE_MS: i64 = 8_000;
const DEMO_OFFER_MS: i64 = 3_000;
const OPENS_IN_MS: i64 = 1_500;

/// Outcome counters shared by the client threads.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn add(&self, outcome: &'static str) {
        *self.counts.lock().entry(outcome).or_default() += 1;
    }
    fn get(&self, outcome: &str) -> u64 {
        self.counts.lock().get(outcome).copied().unwrap_or(0)
    }
}

/// Runs the demo; returns an error (non-zero exit) if any invariant fails.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("miqat-demo"));
    let data_dir = dir.join("data");
    let log_dir = dir.join("log");
    println!("Miqat demo: an opening day in one process\n");

    let gen_seconds = ensure_data_set(&data_dir, args)?;
    let started = Instant::now();
    let catalog = Arc::new(load_catalog(&data_dir)?);
    let load_ms = started.elapsed().as_millis();
    let mut season = load_season(&data_dir.join("season.toml"), &catalog)?;
    let opens_at_ms = SystemClock.now_ms() + OPENS_IN_MS;
    shorten_for_demo(&mut season, opens_at_ms)?;
    let cutoff_day = season.schedule.waves[0].receipts_until_day;
    println!(
        "data set   {} provinces, {} caravans, {} seats, {} holders ({})",
        catalog.provinces().len(),
        catalog.caravans().len(),
        catalog
            .caravans()
            .iter()
            .map(|c| u64::from(c.capacity))
            .sum::<u64>(),
        catalog.holder_count(),
        match gen_seconds {
            Some(s) => format!("generated in {s:.1} s, loaded in {load_ms} ms"),
            None => format!("reused, loaded in {load_ms} ms"),
        }
    );
    println!(
        "season     wave {:?} opens in {:.1} s; stages {} s each, offers {} s (shortened for the demo)",
        season.schedule.waves[0].name,
        OPENS_IN_MS as f64 / 1000.0,
        DEMO_STAGE_MS / 1000,
        DEMO_OFFER_MS / 1000
    );

    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir)
            .with_context(|| format!("clearing {}", log_dir.display()))?;
    }
    let storage = Arc::new(DirStorage::open(&log_dir)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (engine, _) = Engine::open(
        Arc::clone(&catalog),
        season.clone(),
        Arc::clone(&clock),
        storage,
        EngineConfig::default(),
    )?;
    let expiry = engine.spawn_expiry_thread(Duration::from_millis(20))?;

    let rush = rush(&engine, &catalog, cutoff_day, opens_at_ms, args)?;
    engine.snapshot()?;
    let after_rush = engine.stats();
    let lifecycle = lifecycle(&engine, &catalog, &rush.held)?;
    let before_crash = engine.reservations(&Default::default(), 0, usize::MAX);
    let stats_before = engine.stats();

    // The crash: no clean shutdown, no final snapshot. Every decision a client saw was
    // durable before it saw it, so the log must bring every one back.
    engine.stop();
    let _ = expiry.join();
    let wal_stats = engine.wal_stats().unwrap_or_default();
    drop(engine);
    let started = Instant::now();
    let storage = Arc::new(DirStorage::open(&log_dir)?);
    let (engine, report) = Engine::open(
        Arc::clone(&catalog),
        season,
        clock,
        storage,
        EngineConfig::default(),
    )?;
    let recovery_ms = started.elapsed().as_millis();
    let verdict = verify_recovery(&engine, &before_crash);
    engine.shutdown()?;

    print_report(
        &rush,
        &after_rush,
        &lifecycle,
        &stats_before,
        &wal_stats,
        args,
    );
    println!(
        "recovery   snapshot at lsn {:?} + {} records replayed in {} ms; {} deadlines expired at start",
        report.snapshot_lsn, report.records_replayed, recovery_ms, report.expired_at_start
    );
    match verdict {
        Ok(checked) => {
            println!(
                "invariants OK: {checked} reservations survived the crash, no caravan over capacity, \
                 one live reservation per holder, counters exact"
            );
            println!("\nlog and data set: {}", dir.display());
            Ok(())
        }
        Err(e) => bail!("invariant violated after recovery: {e}"),
    }
}

fn ensure_data_set(data_dir: &Path, args: &DemoArgs) -> anyhow::Result<Option<f64>> {
    let marker = data_dir.join("demo-params.txt");
    let params = format!(
        "holders={} seats={} seed={}\n",
        args.holders, args.seats, args.seed
    );
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(params.as_str()) {
        return Ok(None);
    }
    let started = Instant::now();
    let config = GenConfig {
        holders: args.holders,
        seats: args.seats,
        seed: args.seed,
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

struct RushResult {
    attempts: u64,
    tally: Tally,
    latency_us: Histogram<u64>,
    elapsed: Duration,
    held: Vec<(HolderIdx, ReservationId)>,
    sold_out_ms: Vec<(String, u64)>,
}

/// The rush: every called holder (and some who are not) tries once, in a shuffled order,
/// from `args.clients` threads.
fn rush(
    engine: &Arc<Engine>,
    catalog: &Arc<Catalog>,
    cutoff_day: i32,
    opens_at_ms: i64,
    args: &DemoArgs,
) -> anyhow::Result<RushResult> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut order: Vec<HolderIdx> = (0..catalog.holder_count() as u32)
        .filter(|&h| {
            catalog
                .holder(h)
                .is_some_and(|h| h.receipt_day <= cutoff_day || rng.random_ratio(1, 50))
        })
        .collect();
    order.shuffle(&mut rng);
    let next = AtomicUsize::new(0);
    let tally = Tally::default();
    let held = Mutex::new(Vec::new());
    let latency = Mutex::new(Histogram::<u64>::new(3)?);
    let sold_out: Vec<AtomicU64> = (0..catalog.provinces().len())
        .map(|_| AtomicU64::new(0))
        .collect();
    let wait_ms = (opens_at_ms - SystemClock.now_ms()).max(0) as u64;
    println!(
        "rush       {} holders queue up; opening in {wait_ms} ms",
        order.len()
    );
    // A few eager clients try before the opening and are told when it opens.
    for &h in order.iter().take(20) {
        let c = catalog.caravans_of_city(catalog.holder(h).map_or(0, |h| h.city));
        if let Some(&c) = c.first() {
            match engine.reserve(h, c, None) {
                Err(e) => tally.add(e.code()),
                Ok(_) => tally.add("reserved_before_opening"),
            }
        }
    }
    std::thread::sleep(Duration::from_millis(wait_ms));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..args.clients {
            let (order, next, tally, held, latency, sold_out) =
                (&order, &next, &tally, &held, &latency, &sold_out);
            let seed = args.seed ^ (client as u64 + 1);
            scope.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut hist = Histogram::<u64>::new(3).ok();
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&h) = order.get(i) else { break };
                    let began = Instant::now();
                    let result = journey(engine, catalog, h, &mut rng, tally);
                    if let Some(hist) = hist.as_mut() {
                        let _ = hist.record(began.elapsed().as_micros() as u64);
                    }
                    if let Some(id) = result {
                        mine.push((h, id));
                        let p = catalog.holder(h).map_or(0, |h| h.province);
                        if engine.province_free_seats(p) == 0 {
                            let ms = started.elapsed().as_millis() as u64;
                            let _ = sold_out[usize::from(p)].compare_exchange(
                                0,
                                ms.max(1),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                    }
                }
                held.lock().extend(mine);
                if let Some(hist) = hist {
                    let _ = latency.lock().add(&hist);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let mut sold_out_ms: Vec<(String, u64)> = sold_out
        .iter()
        .enumerate()
        .filter_map(|(p, ms)| {
            let ms = ms.load(Ordering::Relaxed);
            (ms > 0).then(|| (catalog.provinces()[p].name_en.clone(), ms))
        })
        .collect();
    sold_out_ms.sort_by_key(|(_, ms)| *ms);
    Ok(RushResult {
        attempts: order.len() as u64,
        tally,
        latency_us: latency.into_inner(),
        elapsed,
        held: held.into_inner(),
        sold_out_ms,
    })
}

/// One holder's journey: pick a caravan of their city (cheaper, earlier ones first), reserve
/// with an idempotency key, take an alternative or join the waiting list when full; some
/// retry a duplicate, some try a caravan of another province, some cancel. Every
/// acknowledged decision is durable first. Returns the live reservation, if any.
fn journey(
    engine: &Engine,
    catalog: &Catalog,
    h: HolderIdx,
    rng: &mut ChaCha8Rng,
    tally: &Tally,
) -> Option<ReservationId> {
    let holder = catalog.holder(h)?;
    let city_caravans = catalog.caravans_of_city(holder.city);
    if city_caravans.is_empty() {
        tally.add("no_caravan_in_city");
        return None;
    }
    if rng.random_ratio(3, 100) {
        // A confused or malicious request: a caravan of another province.
        let other = rng.random_range(0..catalog.caravans().len()) as u32;
        if catalog.caravans()[other as usize].province != holder.province
            && let Err(e) = engine.reserve(h, other, None)
        {
            tally.add(e.code());
        }
    }
    // Preference skew: the first caravans of the list draw most people.
    let pick = ((rng.random::<f64>().powi(2)) * city_caravans.len() as f64) as usize;
    let caravan = city_caravans[pick.min(city_caravans.len() - 1)];
    let key = format!("{}-1", holder.national_id);
    match engine.reserve(h, caravan, Some(key.as_bytes())) {
        Ok(c) => {
            if engine.wait(&c).is_err() {
                tally.add("log_failed");
                return None;
            }
            tally.add("reserved");
            let id = c.value.reservation.id;
            if rng.random_ratio(4, 100) {
                // A double submission: the same key answers the same reservation.
                match engine.reserve(h, caravan, Some(key.as_bytes())) {
                    Ok(again) if again.value.replayed && again.value.reservation.id == id => {
                        tally.add("duplicate_replayed");
                    }
                    _ => tally.add("duplicate_mismatch"),
                }
            }
            if rng.random_ratio(5, 100) {
                if let Ok(c) = engine.cancel(h, id) {
                    let _ = engine.wait(&c);
                    tally.add("cancelled_by_holder");
                }
                return None;
            }
            Some(id)
        }
        Err(EngineError::CaravanFull { alternatives }) => {
            tally.add("caravan_full");
            match alternatives.first() {
                // A new request, so a new key: the old one belongs to the full caravan.
                Some(&alt) => retry_alternative(engine, h, alt, holder.national_id, tally),
                None => {
                    join_waitlist(engine, h, tally);
                    None
                }
            }
        }
        Err(e) => {
            tally.add(e.code());
            None
        }
    }
}

fn join_waitlist(engine: &Engine, h: HolderIdx, tally: &Tally) {
    match engine.join_waitlist(h) {
        Ok(c) => {
            if engine.wait(&c).is_ok() {
                tally.add("joined_waitlist");
            }
        }
        Err(e) => tally.add(e.code()),
    }
}

fn retry_alternative(
    engine: &Engine,
    h: HolderIdx,
    caravan: u32,
    national_id: u64,
    tally: &Tally,
) -> Option<ReservationId> {
    let key = format!("{national_id}-2");
    match engine.reserve(h, caravan, Some(key.as_bytes())) {
        Ok(c) => {
            engine.wait(&c).ok()?;
            tally.add("reserved_alternative");
            Some(c.value.reservation.id)
        }
        Err(e) => {
            tally.add(e.code());
            if matches!(e, EngineError::CaravanFull { .. }) {
                join_waitlist(engine, h, tally);
            }
            None
        }
    }
}

struct LifecycleResult {
    documents_received: u64,
    expired: u64,
    offers_accepted: u64,
    offers_made: u64,
}

/// After the rush: half the holds get their documents on time, the rest expire; freed seats
/// go to waiting lists, where half the offers are accepted and the rest expire in turn.
fn lifecycle(
    engine: &Arc<Engine>,
    catalog: &Catalog,
    held: &[(HolderIdx, ReservationId)],
) -> anyhow::Result<LifecycleResult> {
    // The caravan managers report documents as one pipelined batch: decide them all, then
    // wait for durability before counting any as acknowledged.
    let decided: Vec<_> = held
        .iter()
        .step_by(2)
        .filter_map(|(_, id)| {
            engine
                .operator_event(*id, OperatorEvent::DocumentsReceived)
                .ok()
        })
        .collect();
    for c in &decided {
        engine.wait(c)?;
    }
    let documents_received = decided.len() as u64;
    let expired_before = engine.stats().expirations;
    // Let the other half's documents deadline pass: the expiry thread frees their seats and
    // offers them to waiting holders.
    let last_deadline = engine
        .reservations(&Default::default(), 0, usize::MAX)
        .iter()
        .filter(|r| r.status == Status::Held && r.stage == Some(Stage::Documents))
        .filter_map(|r| r.deadline_ms)
        .max()
        .unwrap_or(0);
    let wait_ms = (last_deadline - SystemClock.now_ms() + 300).clamp(0, DEMO_STAGE_MS + 1_000);
    std::thread::sleep(Duration::from_millis(wait_ms as u64));
    let mut accepted = Vec::new();
    let offered = engine.reservations(
        &miqat_engine::ReservationFilter {
            status: Some(Status::Offered),
            ..Default::default()
        },
        0,
        usize::MAX,
    );
    for offer in offered.iter().step_by(2) {
        if let Ok(c) = engine.accept_offer(offer.holder, offer.id) {
            accepted.push(c);
        }
    }
    for c in &accepted {
        engine.wait(c)?;
    }
    let (offers_made, offers_accepted) = (offered.len() as u64, accepted.len() as u64);
    let _ = catalog;
    std::thread::sleep(Duration::from_millis(DEMO_OFFER_MS as u64 + 300));
    Ok(LifecycleResult {
        documents_received,
        expired: engine.stats().expirations - expired_before,
        offers_accepted,
        offers_made,
    })
}

/// Every reservation seen before the crash must be back, as it was or (if its deadline
/// passed while the engine was down) expired; and every invariant must hold.
fn verify_recovery(
    engine: &Engine,
    before: &[miqat_engine::model::ReservationView],
) -> Result<usize, String> {
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

fn print_report(
    rush: &RushResult,
    after_rush: &miqat_engine::EngineStats,
    life: &LifecycleResult,
    before_crash: &miqat_engine::EngineStats,
    wal: &miqat_engine::wal::WalStats,
    args: &DemoArgs,
) {
    let secs = rush.elapsed.as_secs_f64().max(1e-9);
    let h = &rush.latency_us;
    println!(
        "           {} journeys by {} clients in {:.2} s ({:.0} journeys/s)",
        rush.attempts,
        args.clients,
        secs,
        rush.attempts as f64 / secs
    );
    println!(
        "latency    durable decision per journey: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    println!("outcomes");
    for (name, count) in rush.tally.counts.lock().iter() {
        println!("           {name:<28} {count:>9}");
    }
    println!(
        "seats      {} of {} taken after the rush; {} holders waiting",
        after_rush.seats_total - after_rush.seats_free,
        after_rush.seats_total,
        after_rush.waiting
    );
    if !rush.sold_out_ms.is_empty() {
        let first: Vec<String> = rush
            .sold_out_ms
            .iter()
            .take(5)
            .map(|(name, ms)| format!("{name} {:.2} s", *ms as f64 / 1000.0))
            .collect();
        println!(
            "sell-out   {} provinces sold out; first: {}",
            rush.sold_out_ms.len(),
            first.join(", ")
        );
    }
    println!(
        "stages     {} documents received on time, {} holds and offers expired, {} offers made, {} accepted",
        life.documents_received, life.expired, life.offers_made, life.offers_accepted
    );
    println!(
        "state      held {}, offered {}, confirmed {}, cancelled {}, expired {}, rejected {}",
        before_crash.by_status[1],
        before_crash.by_status[0],
        before_crash.by_status[2],
        before_crash.by_status[3],
        before_crash.by_status[4],
        before_crash.by_status[5]
    );
    println!(
        "log        {} records in {} fsyncs ({:.0} records per fsync), {:.1} MiB",
        wal.records_written,
        wal.fsyncs,
        wal.records_written as f64 / wal.fsyncs.max(1) as f64,
        wal.bytes_written as f64 / (1 << 20) as f64
    );
    let _ = rush.tally.get("reserved");
}
