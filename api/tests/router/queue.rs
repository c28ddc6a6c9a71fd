//! The waiting room: joining (one place per holder, the pre-queue window, sold-out provinces),
//! polling (`Retry-After`, `ETag`/`304`, the pass once admitted), and every refusal of a
//! reservation's pass while the room is active.

use miqat_engine::season::{Outflow, RoomConfig};

use crate::support::*;

/// The wave opens a minute after `T0`; joins from 30 s before; 2 places a second; passes of
/// 30 s.
const OPENS: i64 = T0 + 60_000;
const JOINS_FROM: i64 = OPENS - 30_000;
const PASS_MS: i64 = 30_000;

/// The app with the room, its clock at [`JOINS_FROM`].
fn room_fx() -> Fx {
    let fx = room_fx_at_t0();
    fx.clock.set(JOINS_FROM);
    fx
}

fn room_fx_at_t0() -> Fx {
    let mut season = season_opening_at(OPENS);
    season.rooms = vec![(
        "main".to_owned(),
        RoomConfig {
            enabled: true,
            outflow: Outflow::PerSecond(2.0),
            pass_lifetime_ms: PASS_MS,
            pre_queue_ms: 30_000,
        },
    )];
    Fx::build(season, config())
}

async fn join(fx: &Fx, h: &Holder) -> Resp {
    fx.send(Method::POST, "/v1/queue", &[], Some(&creds_body(h)))
        .await
}

async fn me(fx: &Fx, h: &Holder) -> Resp {
    fx.as_holder(Method::GET, "/v1/queue/me", h).await
}

async fn reserve_with_pass(fx: &Fx, h: &Holder, caravan: &str, pass: &str) -> Resp {
    fx.send(
        Method::POST,
        "/v1/reservations",
        &[("miqat-queue-pass", pass)],
        Some(&reserve_body(h, caravan)),
    )
    .await
}

/// Polls until `h` is admitted (moving the clock a second at a time) and returns the pass.
async fn pass_of(fx: &Fx, h: &Holder) -> String {
    for _ in 0..120 {
        let r = me(fx, h).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.body["status"] == "admitted" {
            return r.body["pass"].as_str().unwrap().to_owned();
        }
        fx.clock.advance(1_000);
    }
    panic!("never admitted");
}

#[tokio::test]
async fn joining_gives_one_place_per_holder_and_early_joiners_wait_for_the_draw() {
    let fx = room_fx_at_t0();
    let early = join(&fx, &a(0)).await;
    assert_problem(&early, StatusCode::CONFLICT, "queue_not_open");
    assert_eq!(early.body["opens_at"], format_rfc3339_utc(JOINS_FROM));
    fx.clock.set(JOINS_FROM);
    let first = join(&fx, &a(0)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["status"], "waiting");
    assert_eq!(first.body["wave"], "main");
    assert!(first.body.get("position").is_none(), "{}", first.text);
    assert_eq!(first.header("retry-after"), Some("30"));
    let again = join(&fx, &a(0)).await;
    assert_eq!(again.body, first.body);
    join(&fx, &a(1)).await;
    fx.clock.set(OPENS);
    let late = join(&fx, &c(0)).await;
    assert_eq!(late.body["position"], 3, "{}", late.text);
    assert_eq!(late.body["people_ahead"], 2);
    assert_eq!(join(&fx, &c(0)).await.body["position"], 3);
    let early = me(&fx, &a(0)).await;
    let place = early.body["position"].as_u64().unwrap();
    assert!(place == 1 || place == 2, "{}", early.text);
    assert!(early.body["estimated_wait_seconds"].as_u64().is_some());
    assert!(early.header("retry-after").is_some());
}

#[tokio::test]
async fn polling_answers_304_for_an_unchanged_standing_and_404_before_joining() {
    let fx = room_fx();
    assert_problem(&me(&fx, &a(0)).await, StatusCode::NOT_FOUND, "not_found");
    join(&fx, &a(0)).await;
    let r = me(&fx, &a(0)).await;
    let etag = r.header("etag").unwrap().to_owned();
    let holder = a(0);
    let mut headers = creds(&holder);
    headers.push(("if-none-match", &etag));
    let unchanged = fx.send(Method::GET, "/v1/queue/me", &headers, None).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.header("etag"), Some(etag.as_str()));
    // Holders without a room (called by no wave) are told so.
    assert_problem(
        &join(&fx, &late()).await,
        StatusCode::CONFLICT,
        "no_waiting_room",
    );
}

#[tokio::test]
async fn a_reservation_needs_a_valid_pass_while_the_room_is_active() {
    let fx = room_fx();
    join(&fx, &a(0)).await;
    join(&fx, &a(1)).await;
    fx.clock.set(OPENS);
    assert_problem(
        &fx.reserve(&a(0), "a1").await,
        StatusCode::FORBIDDEN,
        "queue_pass_required",
    );
    assert_problem(
        &reserve_with_pass(&fx, &a(0), "a1", "v1.1.0.1.00").await,
        StatusCode::FORBIDDEN,
        "queue_pass_invalid",
    );
    let pass = pass_of(&fx, &a(0)).await;
    let admitted = me(&fx, &a(0)).await;
    assert!(admitted.header("retry-after").is_none());
    assert!(admitted.body["pass_expires_at"].is_string());
    // Another holder's pass, and a tampered one.
    pass_of(&fx, &a(1)).await;
    assert_problem(
        &reserve_with_pass(&fx, &a(1), "a1", &pass).await,
        StatusCode::FORBIDDEN,
        "queue_pass_not_yours",
    );
    let tampered = pass.replacen(".0.", ".1.", 1);
    assert_problem(
        &reserve_with_pass(&fx, &a(0), "a1", &tampered).await,
        StatusCode::FORBIDDEN,
        "queue_pass_invalid",
    );
    let r = reserve_with_pass(&fx, &a(0), "a1", &pass).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Past its lifetime, a pass is refused.
    fx.clock.advance(PASS_MS + 1_000);
    let pass_b = me(&fx, &a(1)).await.body["pass"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_problem(
        &reserve_with_pass(&fx, &a(1), "a1", &pass_b).await,
        StatusCode::FORBIDDEN,
        "queue_pass_expired",
    );
}

#[tokio::test]
async fn before_the_opening_the_engine_answers_and_without_a_room_no_pass_is_needed() {
    let fx = room_fx();
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    let plain = Fx::new();
    assert_problem(
        &plain
            .send(Method::POST, "/v1/queue", &[], Some(&creds_body(&a(0))))
            .await,
        StatusCode::CONFLICT,
        "no_waiting_room",
    );
    assert_eq!(plain.reserve(&a(0), "a1").await.status, StatusCode::CREATED);
}

/// Takes every seat of province 2 (c1: 2 seats, d1..=d7: 1 each) through the engine.
fn sell_out_province_2(fx: &Fx) {
    let mut holders = vec![c(0), c(1)];
    holders.extend((0..7).map(d));
    let caravans = ["c1", "c1", "d1", "d2", "d3", "d4", "d5", "d6", "d7"];
    for (h, caravan) in holders.iter().zip(caravans) {
        let holder = fx
            .engine
            .catalog()
            .holder_by_national_id(parse_national_id(&h.national_id).unwrap())
            .unwrap();
        let caravan = fx.engine.catalog().caravan_by_id(caravan).unwrap();
        let decided = fx.engine.reserve(holder, caravan, None).unwrap();
        fx.engine.wait(&decided).unwrap();
    }
}

#[tokio::test]
async fn holders_of_a_sold_out_province_are_told_at_once() {
    let fx = room_fx();
    assert_eq!(join(&fx, &c(2)).await.status, StatusCode::OK);
    fx.clock.set(OPENS);
    sell_out_province_2(&fx);
    // Waiting, not yet admitted: told to stop waiting, with no poll hint.
    let r = me(&fx, &c(2)).await;
    assert_eq!(r.body["status"], "sold_out", "{}", r.text);
    assert!(r.header("retry-after").is_none());
    assert!(r.body.get("poll_after_seconds").is_none());
    // A new joiner is refused at once.
    assert_problem(
        &join(&fx, &c(3)).await,
        StatusCode::CONFLICT,
        "province_sold_out",
    );
    // Province 1 still queues.
    assert_eq!(join(&fx, &a(0)).await.body["status"], "waiting");
}
