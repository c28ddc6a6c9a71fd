//! Small hand-made catalogs and seasons shared by the engine's tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use miqat_engine::catalog::{Caravan, Catalog, CatalogBuilder, ReceiptStatus, Route};
use miqat_engine::season::{Schedule, Season, Stage, Wave};

/// The instant every test starts at.
pub const T0: i64 = 1_600_000_000_000;
/// Receipt day cutoff of the test wave.
pub const CUTOFF_DAY: i32 = 150;

/// A catalog: province 1 ("North") with cities A (caravans a1 cap 2, a2 cap 1) and B (b1 cap
/// 1); province 2 ("South") with city C (c1 cap 2). Holders: `holders_per_city` per city,
/// national IDs 1000 + n, tracking code "t{n}", receipt day 100 + n (all called by the
/// wave), and one extra holder in city A with a receipt needing conversion (id 999) and one
/// called too late (id 998, day 200).
pub fn catalog(holders_per_city: u32) -> Arc<Catalog> {
    let mut b = CatalogBuilder::new();
    let north = b.add_province(1, "North", "شمال").unwrap();
    let south = b.add_province(2, "South", "جنوب").unwrap();
    let a = b.city(north, "A");
    let bb = b.city(north, "B");
    let c = b.city(south, "C");
    for (id, province, city, capacity) in [
        ("a1", north, a, 2),
        ("a2", north, a, 1),
        ("b1", north, bb, 1),
        ("c1", south, c, 2),
    ] {
        b.add_caravan(Caravan {
            id: id.into(),
            province,
            city,
            manager: "M".into(),
            phone: "0".into(),
            price_group: "A".into(),
            route: Route::MedinaFirst,
            departure_day: 18_000,
            price_rial: 1,
            capacity,
        })
        .unwrap();
    }
    let mut n = 0u64;
    for (province, city) in [(north, a), (north, bb), (south, c)] {
        for _ in 0..holders_per_city {
            b.add_holder(
                1000 + n,
                &format!("t{n}"),
                &format!("r{n}"),
                100 + n as i32,
                ReceiptStatus::Valid,
                province,
                city,
            )
            .unwrap();
            n += 1;
        }
    }
    b.add_holder(
        999,
        "old",
        "r-old",
        10,
        ReceiptStatus::NeedsConversion,
        north,
        a,
    )
    .unwrap();
    b.add_holder(998, "late", "r-late", 200, ReceiptStatus::Valid, north, a)
        .unwrap();
    Arc::new(b.build())
}

/// A season with one wave open since `T0` for receipts up to [`CUTOFF_DAY`], stages of 10,
/// 20, 30 and 40 seconds, and offers open 5 seconds.
pub fn season() -> Season {
    Season {
        schedule: Schedule {
            waves: vec![Wave {
                name: "main".into(),
                receipts_until_day: CUTOFF_DAY,
                opens_at_ms: T0,
                provinces: None,
                admits_earlier_receipts: false,
            }],
        },
        stages: vec![
            (Stage::Documents, 10_000),
            (Stage::FirstPayment, 20_000),
            (Stage::Medical, 30_000),
            (Stage::FinalPayment, 40_000),
        ],
        offer_deadline_ms: 5_000,
    }
}
