//! Shared set-up for Miqat's benchmarks: national data sets, engines and reservation plans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use miqat_engine::catalog::{
    Caravan, CaravanIdx, Catalog, CatalogBuilder, HolderIdx, ReceiptStatus, Route,
};
use miqat_engine::clock::Clock;
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::season::{Schedule, Season, Wave};

/// Generates (once per process) and loads the national data set: 85,850 seats and
/// `holders` holders, seed 1399. Returns the catalog and its season with the main wave open.
pub fn national(dir: &Path, holders: u64) -> (Arc<Catalog>, Season) {
    if !dir.join("holders.csv").exists() {
        let config = GenConfig {
            holders,
            ..GenConfig::default()
        };
        generate(dir, &config, &mut |_| {}).expect("generate the data set");
    }
    let catalog = Arc::new(load_catalog(dir).expect("load the data set"));
    let season = load_season(&dir.join("season.toml"), &catalog).expect("load season.toml");
    (catalog, season)
}

/// A plan that fills every caravan with called holders of its own city: every reservation
/// in it succeeds. Ordered by province.
pub fn fill_plan(catalog: &Catalog, season: &Season) -> Vec<(HolderIdx, CaravanIdx)> {
    let cutoff = season.schedule.waves[0].receipts_until_day;
    let mut by_city: Vec<Vec<HolderIdx>> = vec![Vec::new(); catalog.cities().len()];
    for h in catalog.holder_indices() {
        let holder = catalog.holder(h).unwrap();
        if holder.receipt_status == ReceiptStatus::Valid && holder.receipt_day <= cutoff {
            by_city[holder.city.index()].push(h);
        }
    }
    let mut plan = Vec::new();
    for (c, caravan) in catalog.caravans().iter().enumerate() {
        let pool = &mut by_city[caravan.city.index()];
        for _ in 0..caravan.capacity {
            match pool.pop() {
                Some(h) => plan.push((h, CaravanIdx(c as u32))),
                None => break,
            }
        }
    }
    plan
}

/// One province, one caravan of `seats` seats, `seats` holders all called: the hot caravan.
pub fn hot_caravan(seats: u32) -> (Arc<Catalog>, Season) {
    let mut b = CatalogBuilder::new();
    let p = b.add_province(1, "Tehran", "تهران").unwrap();
    let city = b.city(p, "Tehran");
    b.add_caravan(Caravan {
        id: "HOT".into(),
        province: p,
        city,
        manager: "-".into(),
        phone: "-".into(),
        price_group: "A".into(),
        route: Route::MedinaFirst,
        departure_day: 0,
        price_rial: 1,
        capacity: seats,
    })
    .unwrap();
    b.reserve_holders(seats as usize);
    for n in 0..u64::from(seats) {
        b.add_holder(
            1_000_000_000 + n,
            "code",
            "r",
            0,
            ReceiptStatus::Valid,
            p,
            city,
        )
        .unwrap();
    }
    (Arc::new(b.build()), open_season())
}

/// A season whose single wave has been open since the epoch and calls every receipt.
pub fn open_season() -> Season {
    Season {
        schedule: Schedule {
            waves: vec![Wave {
                name: "main".into(),
                receipts_until_day: i32::MAX,
                opens_at_ms: 0,
                provinces: None,
                admits_earlier_receipts: false,
            }],
        },
        ..Season::default()
    }
}

/// A clock fixed at one instant (benchmarks must not pay for reading the system clock twice).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}

/// An in-memory engine over `catalog` whose clock stands just after the first wave opened.
pub fn engine_at_opening(catalog: &Arc<Catalog>, season: &Season) -> Arc<miqat_engine::Engine> {
    let clock = FixedClock(season.schedule.waves[0].opens_at_ms + 1);
    miqat_engine::Engine::in_memory(
        Arc::clone(catalog),
        season.clone(),
        Arc::new(clock),
        miqat_engine::EngineConfig::default(),
    )
    .expect("an engine over a valid data set")
}

/// Resident set size of this process in bytes, from `/proc/self/status` (0 if unknown).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

// ---- Helpers for the recovery, expiry and footprint measurements (added for
// docs/performance.md). ----

/// `provinces` provinces (ids 1..), each with one city, one caravan of `seats_per_province`
/// seats and as many holders, all called by [`open_season`]: the hot caravan spread over
/// shards.
pub fn caravan_per_province(provinces: u16, seats_per_province: u32) -> (Arc<Catalog>, Season) {
    let mut b = CatalogBuilder::new();
    b.reserve_holders(usize::from(provinces) * seats_per_province as usize);
    let mut national_id = 1_000_000_000u64;
    for n in 0..provinces {
        let p = b
            .add_province(u32::from(n) + 1, &format!("P{n}"), &format!("P{n}"))
            .unwrap();
        let city = b.city(p, &format!("City{n}"));
        b.add_caravan(Caravan {
            id: format!("C{n}"),
            province: p,
            city,
            manager: "-".into(),
            phone: "-".into(),
            price_group: "A".into(),
            route: Route::MedinaFirst,
            departure_day: 0,
            price_rial: 1,
            capacity: seats_per_province,
        })
        .unwrap();
        for _ in 0..seats_per_province {
            b.add_holder(national_id, "code", "r", 0, ReceiptStatus::Valid, p, city)
                .unwrap();
            national_id += 1;
        }
    }
    (Arc::new(b.build()), open_season())
}

/// `season` with a single stage (`documents`) lasting `documents_ms`: holds expire
/// `documents_ms` after they are taken unless the documents arrive.
pub fn with_short_documents_stage(mut season: Season, documents_ms: i64) -> Season {
    season.stages = vec![(miqat_engine::season::Stage::Documents, documents_ms)];
    season
}

/// The median of `samples` (0 for none); sorts them.
pub fn median(samples: &mut [std::time::Duration]) -> std::time::Duration {
    samples.sort_unstable();
    match samples.len() {
        0 => std::time::Duration::ZERO,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2,
    }
}

/// What [`make_opening_day`] logged, by kind of decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpeningDay {
    /// Reservations (every seat of [`fill_plan`]).
    pub reserves: u64,
    /// Waiting-list joins (first joins and re-joins after a cancellation).
    pub joins: u64,
    /// Cancellations (10% of the reservations); each passes its seat to the first waiting
    /// holder of the caravan's city as an offer, in the same record.
    pub cancels: u64,
    /// Offers accepted.
    pub accepts: u64,
    /// `documents_received` events (half of the reservations).
    pub documents: u64,
    /// Records the log wrote (`WalStats::records_written` before the engine is dropped).
    pub records: u64,
}

/// The engine configuration the recovery measurements use: a log without fsync and no
/// automatic snapshot.
pub fn unsynced_config() -> miqat_engine::EngineConfig {
    miqat_engine::EngineConfig {
        durability: miqat_engine::wal::Durability::None,
        snapshot_every_records: u64::MAX,
        ..miqat_engine::EngineConfig::default()
    }
}

/// Writes an opening day into the (empty) data directory `data_dir`, every decision taken at
/// `now_ms`: every reservation of [`fill_plan`], up to `joins_max` waiting-list joins spread
/// over the called holders without a seat, 10% of the reservations cancelled (their seats
/// offered to waiting holders, who accept; the cancelled holders join the waiting list again),
/// and the documents stage completed for half of the remaining reservations. The engine is
/// dropped without `shutdown()`: no snapshot, recovery has to replay the whole log.
pub fn make_opening_day(
    data_dir: &Path,
    catalog: &Arc<Catalog>,
    season: &Season,
    now_ms: i64,
    joins_max: usize,
) -> OpeningDay {
    use miqat_engine::model::{OperatorEvent, Status};
    use miqat_engine::{Engine, ReservationFilter};

    let storage = Arc::new(miqat_engine::wal::DirStorage::open(data_dir).unwrap());
    let (engine, _) = Engine::open(
        Arc::clone(catalog),
        season.clone(),
        Arc::new(FixedClock(now_ms)),
        storage,
        unsynced_config(),
    )
    .unwrap();
    let mut day = OpeningDay::default();
    let plan = fill_plan(catalog, season);
    let mut held = Vec::with_capacity(plan.len());
    for &(h, c) in &plan {
        let decided = engine.reserve(h, c, None).unwrap();
        held.push((h, decided.value.reservation.id));
        day.reserves += 1;
    }
    let mut seated = vec![false; catalog.holder_count()];
    for &(h, _) in &plan {
        seated[h.index()] = true;
    }
    let cutoff = season.schedule.waves[0].receipts_until_day;
    let candidates: Vec<HolderIdx> = catalog
        .holder_indices()
        .filter(|&h| {
            let holder = catalog.holder(h).unwrap();
            !seated[h.index()]
                && holder.receipt_status == ReceiptStatus::Valid
                && holder.receipt_day <= cutoff
        })
        .collect();
    let step = candidates.len().div_ceil(joins_max.max(1)).max(1);
    for &h in candidates.iter().step_by(step) {
        if engine.join_waitlist(h).is_ok() {
            day.joins += 1;
        }
    }
    let mut cancelled = Vec::new();
    for (i, &(h, id)) in held.iter().enumerate() {
        if i % 10 == 0 && engine.cancel(h, id).is_ok() {
            day.cancels += 1;
            cancelled.push(h);
        }
    }
    let offers = engine.reservations(
        &ReservationFilter {
            status: Some(Status::Offered),
            ..ReservationFilter::default()
        },
        0,
        usize::MAX,
    );
    for offer in offers {
        if engine.accept_offer(offer.holder, offer.id).is_ok() {
            day.accepts += 1;
        }
    }
    for h in cancelled {
        if engine.join_waitlist(h).is_ok() {
            day.joins += 1;
        }
    }
    for (i, &(_, id)) in held.iter().enumerate() {
        if i % 10 != 0
            && i % 2 == 1
            && engine
                .operator_event(id, OperatorEvent::DocumentsReceived)
                .is_ok()
        {
            day.documents += 1;
        }
    }
    // Durability::None: the flusher hands batches to the OS; wait until it wrote them all.
    let expected = day.reserves + day.joins + day.cancels + day.accepts + day.documents;
    for _ in 0..10_000 {
        let written = engine.wal_stats().unwrap().records_written;
        if written >= expected {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    day.records = engine.wal_stats().unwrap().records_written;
    drop(engine);
    day
}

/// Copies every file of `from` but its `LOCK` into the (new) directory `to`.
pub fn copy_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The number after `--name` on the command line, or `default`.
pub fn numeric_flag(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
