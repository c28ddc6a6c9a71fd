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
    for h in 0..catalog.holder_count() as u32 {
        let holder = catalog.holder(h).unwrap();
        if holder.receipt_status == ReceiptStatus::Valid && holder.receipt_day <= cutoff {
            by_city[holder.city as usize].push(h);
        }
    }
    let mut plan = Vec::new();
    for (c, caravan) in catalog.caravans().iter().enumerate() {
        let pool = &mut by_city[caravan.city as usize];
        for _ in 0..caravan.capacity {
            match pool.pop() {
                Some(h) => plan.push((h, c as CaravanIdx)),
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

/// Resident set size of this process in bytes, from `/proc/self/status` (0 if unknown).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
