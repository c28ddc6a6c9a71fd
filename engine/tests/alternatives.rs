//! The alternatives offered with `caravan_full`: the closest caravans of the holder's city
//! with free seats (route, then price group, then departure), spread over refused holders.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::check::check;
use common::{T0, fixture, season};
use miqat_engine::catalog::{CaravanIdx, Catalog};
use miqat_engine::clock::ManualClock;
use miqat_engine::{Engine, EngineConfig, EngineError};

/// The asked-for caravan `full` (medina_first, group B, day 18,000, one seat), twelve caravans
/// exactly as close (`same0`..`same11`), and one caravan per kind of distance: another day, a
/// neighbouring price group, a far price group, the other route. Forty holders of the city,
/// national IDs 1000..1039.
const FIXTURE: &str = "
    province 1 North شمال: city A: full cap 1 group B, same0..=same11 cap 1 group B,
        later cap 1 group B departs day 18009, group_c cap 1 group C, group_d cap 1 group D,
        group_a cap 1 group A departs day 18001, second cap 1 medina_second group B
    holders: ids from 1000; receipts on day 100; 40 per city
    wave main until day 150 opens T0
    stages: documents 10s, first_payment 20s, medical 30s, final_payment 40s; offers 5s
";

fn catalog() -> Arc<Catalog> {
    fixture::parse(FIXTURE).catalog
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
    // Fill the asked-for caravan and the twelve closest ones; group_c and group_a are one
    // price group away, group_a also leaves a day later.
    check(
        FIXTURE,
        "
        reserve 1000 full
        reserve 1001 same0
        reserve 1002 same1
        reserve 1003 same2
        reserve 1004 same3
        reserve 1005 same4
        reserve 1006 same5
        reserve 1007 same6
        reserve 1008 same7
        reserve 1009 same8
        reserve 1010 same9
        reserve 1011 same10
        reserve 1012 same11
        reserve 1039 full
        ",
        "
        reserve 1000 full -> full held documents until T0+10s
        reserve 1001 same0 -> same0 held documents until T0+10s
        reserve 1002 same1 -> same1 held documents until T0+10s
        reserve 1003 same2 -> same2 held documents until T0+10s
        reserve 1004 same3 -> same3 held documents until T0+10s
        reserve 1005 same4 -> same4 held documents until T0+10s
        reserve 1006 same5 -> same5 held documents until T0+10s
        reserve 1007 same6 -> same6 held documents until T0+10s
        reserve 1008 same7 -> same7 held documents until T0+10s
        reserve 1009 same8 -> same8 held documents until T0+10s
        reserve 1010 same9 -> same9 held documents until T0+10s
        reserve 1011 same10 -> same10 held documents until T0+10s
        reserve 1012 same11 -> same11 held documents until T0+10s
        reserve 1039 full -> caravan_full [later, group_c, group_a, group_d, second]
        ",
    );
}
