//! What the engine's tests share: the fixture language, `check(fixture, script, expect)`, and
//! the small catalog and season most tests run on.
#![allow(dead_code, clippy::unwrap_used)]

pub mod check;
pub mod fixture;

use std::sync::Arc;

use miqat_engine::EngineError;
use miqat_engine::catalog::Catalog;
use miqat_engine::season::Season;

/// The instant every test starts at.
pub const T0: i64 = fixture::T0;

/// Receipt day cutoff of the test wave.
pub const CUTOFF_DAY: i32 = 150;

/// The small world most tests run on, with `{per_city}` holders in every city: national IDs
/// 1000 + n, tracking codes "t{n}", receipt days 100 + n (all called by the wave); in city A
/// one more holder whose receipt needs conversion (999) and one called too late (998, day 200).
pub const WORLD: &str = "
    province 1 North شمال: city A: a1 cap 2, a2 cap 1; city B: b1 cap 1
    province 2 South جنوب: city C: c1 cap 2
    holders: ids from 1000; receipts from day 100; {per_city} per city
    holders: id 999 needs_conversion day 10 in A; id 998 day 200 in A
    wave main until day 150 opens T0
    stages: documents 10s, first_payment 20s, medical 30s, final_payment 40s; offers 5s
";

/// [`WORLD`] with `holders_per_city` holders in every city.
pub fn world_fixture(holders_per_city: u32) -> String {
    WORLD.replace("{per_city}", &holders_per_city.to_string())
}

/// The catalog of [`world_fixture`]`(holders_per_city)`.
pub fn catalog(holders_per_city: u32) -> Arc<Catalog> {
    fixture::parse(&world_fixture(holders_per_city)).catalog
}

/// The season of [`WORLD`]: one wave open since `T0` for receipts up to [`CUTOFF_DAY`], stages
/// of 10, 20, 30 and 40 seconds, and offers open 5 seconds.
pub fn season() -> Season {
    let season = fixture::parse(&world_fixture(0)).season;
    assert_eq!(season.schedule.waves[0].receipts_until_day, CUTOFF_DAY);
    season
}

/// The opening a refusal names, after checking by its `EngineError::code()` that it is
/// `registration_not_open` (`None`: no wave will ever open for the holder).
#[track_caller]
pub fn opens_at(err: &EngineError) -> Option<i64> {
    assert_eq!(err.code(), "registration_not_open", "{err}");
    let EngineError::RegistrationNotOpen { opens_at_ms } = err else {
        unreachable!("the code says registration_not_open")
    };
    *opens_at_ms
}

/// The `EngineError::code()` of a failed result, or `"ok"`.
pub fn code<T>(result: Result<T, EngineError>) -> &'static str {
    result.err().map_or("ok", |e| e.code())
}
