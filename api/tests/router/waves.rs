//! Waves: `GET /v1/waves` and the operator's `PUT /v1/admin/waves` (postponing, refusing a
//! bad or out-of-order schedule, the explicit override).

use crate::support::*;

#[tokio::test]
async fn waves_lists_the_schedule_with_rfc3339_and_jalali_times() {
    let fx = Fx::new();
    let r = fx.get("/v1/waves").await;
    assert_eq!(r.status, StatusCode::OK);
    let waves = r.body.as_array().unwrap();
    assert_eq!(waves.len(), 1);
    let wave = &waves[0];
    assert_eq!(wave["name"], "main");
    assert_eq!(wave["receipts_until"], jalali_day(CUTOFF_DAY));
    assert_rfc3339_utc(&wave["opens_at"]);
    assert_eq!(wave["opens_at"], format_rfc3339_utc(T0));
    assert_eq!(wave["opens_at"], "2020-09-13T12:26:40Z");
    assert_jalali_wall_clock(&wave["opens_at_jalali"]);
    assert_eq!(wave["opens_at_jalali"], format_tehran_jalali(T0));
    assert!(wave["provinces"].is_null());
    assert_eq!(wave["admits_earlier_receipts"], false);
}

fn wave_json(opens_at: &str, provinces: Option<Vec<u32>>) -> Value {
    json!({
        "name": "main",
        "receipts_until": jalali_day(CUTOFF_DAY),
        "opens_at": opens_at,
        "provinces": provinces,
    })
}

#[tokio::test]
async fn a_postponed_wave_closes_registration_until_its_new_opening() {
    let fx = Fx::new();
    let later = T0 + 86_400_000;
    let body = json!([wave_json(&format_rfc3339_utc(later), None)]).to_string();
    let r = fx
        .as_operator(Method::PUT, "/v1/admin/waves", Some(&body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["opens_at"], format_rfc3339_utc(later));
    assert_eq!(r.body[0]["opens_at_jalali"], format_tehran_jalali(later));

    let r = fx.get("/v1/waves").await;
    assert_eq!(r.body[0]["opens_at"], format_rfc3339_utc(later));
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    assert_eq!(r.body["opens_at"], format_rfc3339_utc(later));
    assert_eq!(r.body["opens_at_jalali"], format_tehran_jalali(later));

    // Tehran wall-clock input, and a wave for province 2 only opening now.
    let jalali_now = format_tehran_jalali(T0 - 60_000);
    let body = json!([
        wave_json(&format_tehran_jalali(later), None),
        {"name": "south", "receipts_until": jalali_day(CUTOFF_DAY), "opens_at": jalali_now,
         "provinces": [2]},
    ])
    .to_string();
    let r = fx
        .as_operator(Method::PUT, "/v1/admin/waves", Some(&body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["opens_at"], format_rfc3339_utc(later));
    assert_eq!(r.body[1]["provinces"], json!([2]));
    fx.reserve_ok(&c(0), "c1").await;
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    assert_eq!(r.body["opens_at"], format_rfc3339_utc(later));

    fx.clock.set(later);
    fx.reserve_ok(&a(0), "a1").await;
}

#[tokio::test]
async fn invalid_waves_are_422_and_change_nothing() {
    let fx = Fx::new();
    let now = format_rfc3339_utc(T0);
    let cases = [
        json!([wave_json(&now, Some(vec![99]))]),
        json!([wave_json(&now, Some(vec![]))]),
        json!([{"name": "main", "receipts_until": "1399/13/40", "opens_at": now}]),
        json!([{"name": "main", "receipts_until": "yesterday", "opens_at": now}]),
        json!([{"name": "main", "receipts_until": jalali_day(CUTOFF_DAY), "opens_at": "soon"}]),
        json!([{"name": "main", "receipts_until": jalali_day(CUTOFF_DAY),
                "opens_at": "1399/01/01 25:00"}]),
        json!([{"name": "  ", "receipts_until": jalali_day(CUTOFF_DAY), "opens_at": now}]),
    ];
    for case in cases {
        let r = fx
            .as_operator(Method::PUT, "/v1/admin/waves", Some(&case.to_string()))
            .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    }
    for body in ["{}", "[{\"name\": \"main\"}]", "not json"] {
        let r = fx
            .as_operator(Method::PUT, "/v1/admin/waves", Some(body))
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
    }
    let r = fx.get("/v1/waves").await;
    assert_eq!(r.body[0]["opens_at"], now);
    fx.reserve_ok(&a(0), "a1").await;
}

/// An operator postpones by reading the schedule, editing `opens_at` and writing it back.
#[tokio::test]
async fn the_schedule_read_from_get_waves_can_be_put_back() {
    let fx = Fx::new();
    let mut waves = fx.get("/v1/waves").await.body;
    let later = T0 + 3_600_000;
    waves[0]["opens_at"] = json!(format_rfc3339_utc(later));
    let r = fx
        .as_operator(Method::PUT, "/v1/admin/waves", Some(&waves.to_string()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[0]["opens_at"], format_rfc3339_utc(later));
}

/// The generated season's shape: `main` for receipts up to day 105 (city A's a(0)..a(5)),
/// `reserve` up to [`CUTOFF_DAY`] (city B's holders, days 110..114).
fn main_and_reserve(main_opens: i64, reserve_opens: i64, reserve_admits: Option<bool>) -> Value {
    let mut reserve = json!({"name": "reserve", "receipts_until": jalali_day(CUTOFF_DAY),
                             "opens_at": format_rfc3339_utc(reserve_opens)});
    if let Some(admits) = reserve_admits {
        reserve["admits_earlier_receipts"] = json!(admits);
    }
    json!([
        {"name": "main", "receipts_until": jalali_day(105), "opens_at": format_rfc3339_utc(main_opens)},
        reserve,
    ])
}

#[tokio::test]
async fn postponing_only_the_main_wave_is_422_schedule_out_of_order() {
    let fx = Fx::new();
    let later = T0 + 86_400_000;
    let body = main_and_reserve(later, T0, None).to_string();
    let r = fx
        .as_operator(Method::PUT, "/v1/admin/waves", Some(&body))
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "schedule_out_of_order",
    );
    let detail = r.body["detail"].as_str().unwrap();
    for words in [
        "\"main\"",
        "\"reserve\"",
        "in every province",
        &format_tehran_jalali(later),
        &format_tehran_jalali(T0),
    ] {
        assert!(detail.contains(words), "{detail:?} lacks {words}");
    }
    // Nothing changed: the one original wave is in force.
    let r = fx.get("/v1/waves").await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    // `false` is the default.
    let r = fx
        .as_operator(
            Method::PUT,
            "/v1/admin/waves?allow_wider_cutoff_first=false",
            Some(&body),
        )
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "schedule_out_of_order",
    );
    // Moving the whole schedule keeps it in order and is accepted.
    let body = main_and_reserve(later, later + 1_000, None).to_string();
    let r = fx
        .as_operator(Method::PUT, "/v1/admin/waves", Some(&body))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn an_explicit_override_accepts_it_and_main_receipts_still_wait_for_main() {
    let fx = Fx::new();
    let later = T0 + 86_400_000;
    let body = main_and_reserve(later, T0, None).to_string();
    let r = fx
        .as_operator(
            Method::PUT,
            "/v1/admin/waves?allow_wider_cutoff_first=true",
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body[1]["admits_earlier_receipts"], false);
    // a(0) is called by main: not open, though reserve is; b(0) is called by reserve.
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    assert_eq!(r.body["opens_at"], format_rfc3339_utc(later));
    fx.reserve_ok(&b(0), "b1").await;
    let r = fx.reserve(&late(), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "not_called");

    // A reserve wave that admits earlier receipts lets a(0) in at once.
    let body = main_and_reserve(later, T0, Some(true)).to_string();
    let r = fx
        .as_operator(
            Method::PUT,
            "/v1/admin/waves?allow_wider_cutoff_first=true",
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = fx.get("/v1/waves").await;
    assert_eq!(r.body[1]["admits_earlier_receipts"], true);
    assert_eq!(r.body[0]["admits_earlier_receipts"], false);
    fx.reserve_ok(&a(0), "a1").await;
}
