//! The alternatives offered with `caravan_full`: the closest caravans of the holder's city
//! with free seats (route, then price group, then departure), spread over refused holders.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{T0, season};
use miqat_engine::catalog::{Caravan, CaravanIdx, Catalog, CatalogBuilder, ReceiptStatus, Route};
use miqat_engine::clock::ManualClock;
use miqat_engine::{Engine, EngineConfig, EngineError};

/// The asked-for caravan `full` (medina_first, group B, day 18,000, one seat), twelve caravans
/// exactly as close (`same0`..`same11`), and one caravan per kind of distance: another day, a
/// neighbouring price group, a far price group, the other route. Forty holders of the city.
fn catalog() -> Arc<Catalog> {
    let mut b = CatalogBuilder::new();
    let province = b.add_province(1, "North", "شمال").unwrap();
    let city = b.city(province, "A");
    let mut caravans: Vec<(String, Route, &str, i32)> =
        vec![("full".into(), Route::MedinaFirst, "B", 18_000)];
    for i in 0..12 {
        caravans.push((format!("same{i}"), Route::MedinaFirst, "B", 18_000));
    }
    caravans.extend([
        ("later".into(), Route::MedinaFirst, "B", 18_009),
        ("group_c".into(), Route::MedinaFirst, "C", 18_000),
        ("group_d".into(), Route::MedinaFirst, "D", 18_000),
        ("group_a".into(), Route::MedinaFirst, "A", 18_001),
        ("second".into(), Route::MedinaSecond, "B", 18_000),
    ]);
    for (id, route, group, day) in caravans {
        b.add_caravan(Caravan {
            id,
            province,
            city,
            manager: "M".into(),
            phone: "0".into(),
            price_group: group.into(),
            route,
            departure_day: day,
            price_rial: 1,
            capacity: 1,
        })
        .unwrap();
    }
    for n in 0..40u64 {
        b.add_holder(
            1000 + n,
            &format!("t{n}"),
            &format!("r{n}"),
            100,
            ReceiptStatus::Valid,
            province,
            city,
        )
        .unwrap();
    }
    Arc::new(b.build())
}

/// How far caravan `c` is from `asked`, as the engine orders them (without the spreading).
fn distance(catalog: &Catalog, asked: CaravanIdx, c: CaravanIdx) -> (bool, u32, u32) {
    let (a, o) = (
        &catalog.caravans()[asked.index()],
        &catalog.caravans()[c.index()],
    );
    let group = |g: &str| u32::from(g.as_bytes()[0]);
    (
        o.route != a.route,
        group(&o.price_group).abs_diff(group(&a.price_group)),
        o.departure_day.abs_diff(a.departure_day),
    )
}

#[test]
fn refused_holders_get_the_closest_caravans_spread_over_every_equally_close_one() {
    let engine = Engine::in_memory(
        catalog(),
        season(),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    )
    .unwrap();
    let cat = Arc::clone(engine.catalog());
    let full = cat.caravan_by_id("full").unwrap();
    let holder = |n: u64| cat.holder_by_national_id(1000 + n).unwrap();
    let _ = engine.reserve(holder(0), full, None).unwrap();
    let mut offered = HashSet::new();
    let mut lists = HashSet::new();
    for n in 1..40 {
        let err = engine.reserve(holder(n), full, None).unwrap_err();
        assert_eq!(err.code(), "caravan_full");
        let EngineError::CaravanFull { alternatives } = err else {
            unreachable!("the code says caravan_full")
        };
        assert_eq!(alternatives.len(), 5);
        let distances: Vec<_> = alternatives
            .iter()
            .map(|&c| distance(&cat, full, c))
            .collect();
        assert!(
            distances.is_sorted(),
            "holder {n}: not ordered by closeness: {distances:?}"
        );
        // Twelve caravans are exactly as close as can be: the five always come from them.
        assert!(
            distances.iter().all(|d| *d == (false, 0, 0)),
            "{distances:?}"
        );
        offered.extend(alternatives.iter().copied());
        lists.insert(alternatives);
    }
    assert!(
        offered.len() > 5,
        "only {} distinct alternatives",
        offered.len()
    );
    assert!(lists.len() > 1);
}

#[test]
fn with_few_free_caravans_the_order_is_route_then_price_group_then_departure() {
    let engine = Engine::in_memory(
        catalog(),
        season(),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    )
    .unwrap();
    let cat = Arc::clone(engine.catalog());
    let full = cat.caravan_by_id("full").unwrap();
    // Fill the asked-for caravan and the twelve closest ones.
    let mut n = 0u64;
    let mut take = |id: &str| {
        let h = cat.holder_by_national_id(1000 + n).unwrap();
        n += 1;
        let _ = engine
            .reserve(h, cat.caravan_by_id(id).unwrap(), None)
            .unwrap();
    };
    take("full");
    for i in 0..12 {
        take(&format!("same{i}"));
    }
    let h = cat.holder_by_national_id(1039).unwrap();
    let EngineError::CaravanFull { alternatives } = engine.reserve(h, full, None).unwrap_err()
    else {
        panic!("expected caravan_full")
    };
    let ids: Vec<&str> = alternatives
        .iter()
        .map(|&c| cat.caravans()[c.index()].id.as_str())
        .collect();
    // group_c and group_a are one price group away; group_a also leaves a day later.
    assert_eq!(ids, ["later", "group_c", "group_a", "group_d", "second"]);
}
