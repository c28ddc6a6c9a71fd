//! Receipt priority transfers and dispatch-city changes by offices: the receiver registers by
//! the receipt's date with their own credentials, the giver no longer can; every refusal
//! (`transfer_used`, `transfer_closed`, `giver_has_reservation`, `receiver_holds_receipt`,
//! `dispatch_frozen`, `province_change_unsupported`) and every scope (`403`, the missing
//! object's `404`).

use miqat_api::principals::{Principals, token_sha256_hex};

use crate::support::*;

const NORTH: &str = "office-north-token";
const SOUTH: &str = "office-south-token";
const GATEWAY: &str = "gateway-token";
const MANAGER: &str = "manager-token";
/// The wave opens a minute after the tests start: transfers are open until then.
const OPENS_MS: i64 = T0 + 60_000;

fn fx() -> Fx {
    let entry = |id: &str, role: &str, token: &str, extra: &str| {
        format!(
            "[[principal]]\nid = \"{id}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n{extra}\n",
            token_sha256_hex(token)
        )
    };
    let text = [
        entry("office-north", "office", NORTH, "province = 1"),
        entry("office-south", "office", SOUTH, "province = 2"),
        entry("shaparak", "payment_gateway", GATEWAY, ""),
        entry("mgr", "caravan_manager", MANAGER, "caravans = [\"a1\"]"),
    ]
    .concat();
    let principals = Principals::parse(&text, &catalog()).unwrap();
    Fx::build(
        season_opening_at(OPENS_MS),
        ApiConfig {
            principals,
            ..config()
        },
    )
}

/// A person who holds no receipt: not in the catalog.
fn newcomer(n: u64) -> Holder {
    Holder {
        national_id: format_national_id(nid(500 + n)),
        tracking_code: format!("new{n}"),
    }
}

fn transfer_body(receipt: &str, to: &Holder, province: u32, city: &str) -> String {
    json!({
        "receipt_no": receipt,
        "to": {
            "national_id": to.national_id,
            "tracking_code": to.tracking_code,
            "province_id": province,
            "city": city,
        }
    })
    .to_string()
}

async fn transfer(fx: &Fx, token: &str, body: &str) -> Resp {
    let auth = format!("Bearer {token}");
    fx.send(
        Method::POST,
        "/v1/admin/transfers",
        &[("authorization", &auth)],
        Some(body),
    )
    .await
}

async fn dispatch(fx: &Fx, token: &str, national_id: &str, province: u32, city: &str) -> Resp {
    let auth = format!("Bearer {token}");
    let body = json!({ "province_id": province, "city": city }).to_string();
    fx.send(
        Method::PUT,
        &format!("/v1/admin/holders/{national_id}/dispatch"),
        &[("authorization", &auth)],
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn a_transferred_receipt_registers_under_its_receiver_and_never_its_giver() {
    let fx = fx();
    let to = newcomer(0);
    let r = transfer(&fx, NORTH, &transfer_body("r0", &to, 1, "B")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["national_id"], to.national_id);
    assert_eq!(r.body["transferred_from"], a(0).national_id);
    assert_eq!(r.body["receipt_no"], "r0");
    assert_eq!(r.body["receipt_date"], jalali_day(100));
    assert_eq!(r.body["province_id"], 1);
    assert_eq!(r.body["city"], "B");
    // Before the opening the receiver is told when, like any holder; the giver is refused.
    let r = fx.reserve(&to, "b1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    fx.clock.advance(60_000);
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "receipt_transferred");
    let r = fx.join(&a(0)).await;
    assert_problem(&r, StatusCode::FORBIDDEN, "receipt_transferred");
    // The receiver travels from the city given at the transfer.
    let r = fx.reserve(&to, "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "province_mismatch");
    let id = fx.reserve_ok(&to, "b1").await;
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &to)
        .await;
    assert_eq!(r.body["national_id"], to.national_id);
    // The giver's national ID is the operator's to see, not the receiver's.
    assert!(r.body.get("transferred_from").is_none(), "{}", r.text);
    // A wrong code for the receiver is the usual 401.
    let wrong = Holder {
        tracking_code: "nope".into(),
        ..to.clone()
    };
    assert_problem(
        &fx.reserve(&wrong, "b1").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    // The export shows the receiver, and whom the receipt came from.
    let r = fx
        .as_operator(Method::GET, "/v1/admin/reservations", None)
        .await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["national_id"], to.national_id);
    assert_eq!(items[0]["transferred_from"], a(0).national_id);
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/reservations",
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("accept", "text/csv"),
            ],
            None,
        )
        .await;
    let row = r.text.lines().nth(1).unwrap();
    assert!(
        row.contains(&to.national_id) && row.ends_with(&a(0).national_id),
        "{row}"
    );
}

#[tokio::test]
async fn a_receipt_is_transferred_once_and_only_to_someone_without_one() {
    let fx = fx();
    let r = transfer(&fx, NORTH, &transfer_body("r0", &newcomer(0), 1, "A")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = transfer(&fx, NORTH, &transfer_body("r0", &newcomer(1), 1, "A")).await;
    assert_problem(&r, StatusCode::CONFLICT, "transfer_used");
    // A holder of the catalog, and a receiver, already hold a receipt.
    for to in [a(2), c(0), newcomer(0)] {
        let r = transfer(&fx, NORTH, &transfer_body("r1", &to, 1, "A")).await;
        assert_problem(&r, StatusCode::CONFLICT, "receiver_holds_receipt");
    }
    // Another province's city: not supported, nothing changes.
    let r = transfer(&fx, NORTH, &transfer_body("r1", &newcomer(1), 2, "C")).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "province_change_unsupported",
    );
    let r = transfer(&fx, NORTH, &transfer_body("r1", &newcomer(1), 1, "Nowhere")).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(r.body["field"], "to.city");
    let mut bad = newcomer(1);
    bad.national_id = "1234567890".into();
    let r = transfer(&fx, NORTH, &transfer_body("r1", &bad, 1, "A")).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let r = transfer(&fx, NORTH, "{\"receipt_no\": \"r1\"}").await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
    // r1 is still its holder's.
    fx.clock.advance(60_000);
    fx.reserve_ok(&a(1), "a1").await;
}

#[tokio::test]
async fn transfers_close_at_the_opening_and_refuse_a_giver_who_registered() {
    let fx = fx();
    // Transfers close 10 seconds before the opening; dispatch changes at the opening.
    fx.clock.advance(50_000);
    let r = transfer(&fx, NORTH, &transfer_body("r0", &newcomer(0), 1, "A")).await;
    assert_problem(&r, StatusCode::CONFLICT, "transfer_closed");
    let r = dispatch(&fx, NORTH, &a(6).national_id, 1, "B").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    fx.clock.advance(10_000);
    let r = transfer(&fx, NORTH, &transfer_body("r0", &newcomer(0), 1, "A")).await;
    assert_problem(&r, StatusCode::CONFLICT, "transfer_closed");
    // A holder who registered, after the wave was postponed: still refused.
    fx.reserve_ok(&a(1), "a1").await;
    fx.reserve_ok(&a(2), "a1").await;
    fx.reserve_ok(&a(0), "a2").await;
    let r = fx.join(&a(3)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mut waves = fx.engine.schedule().waves.clone();
    waves[0].opens_at_ms = T0 + 3_600_000;
    let _ = fx.engine.replace_schedule(waves).unwrap();
    for receipt in ["r1", "r3"] {
        let r = transfer(&fx, NORTH, &transfer_body(receipt, &newcomer(0), 1, "A")).await;
        assert_problem(&r, StatusCode::CONFLICT, "giver_has_reservation");
    }
    let r = dispatch(&fx, NORTH, &a(1).national_id, 1, "B").await;
    assert_problem(&r, StatusCode::CONFLICT, "dispatch_frozen");
}

#[tokio::test]
async fn only_an_office_of_the_receipts_province_or_an_operator_transfers() {
    let fx = fx();
    let missing = transfer(&fx, SOUTH, &transfer_body("r-none", &newcomer(0), 2, "C")).await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "receipt_not_found");
    let r = transfer(&fx, SOUTH, &transfer_body("r0", &newcomer(0), 2, "C")).await;
    assert_eq!(r.status, missing.status);
    assert_eq!(r.body, missing.body);
    for token in [GATEWAY, MANAGER] {
        let r = transfer(&fx, token, &transfer_body("r0", &newcomer(0), 1, "A")).await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
        let r = dispatch(&fx, token, &a(0).national_id, 1, "B").await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    let r = transfer(&fx, "nobody", &transfer_body("r0", &newcomer(0), 1, "A")).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = transfer(&fx, SOUTH, &transfer_body("r20", &newcomer(0), 2, "D")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = transfer(&fx, TOKEN, &transfer_body("r0", &newcomer(1), 1, "A")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn a_dispatch_change_moves_the_holder_to_another_city_until_their_wave_opens() {
    let fx = fx();
    let r = dispatch(&fx, NORTH, &a(4).national_id, 1, "B").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["city"], "B");
    assert_eq!(r.body["national_id"], a(4).national_id);
    assert!(r.body.get("transferred_from").is_none());
    // Scope: another province's office gets the missing holder's 404.
    let missing = dispatch(&fx, SOUTH, &format_national_id(nid(777)), 2, "C").await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "holder_not_found");
    let r = dispatch(&fx, SOUTH, &a(4).national_id, 1, "A").await;
    assert_eq!(r.body, missing.body);
    let r = dispatch(&fx, NORTH, &a(4).national_id, 2, "C").await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "province_change_unsupported",
    );
    let r = dispatch(&fx, NORTH, "12", 1, "A").await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    // A giver is no holder any more; a receiver is.
    let to = newcomer(0);
    transfer(&fx, NORTH, &transfer_body("r5", &to, 1, "A")).await;
    let r = dispatch(&fx, NORTH, &a(5).national_id, 1, "B").await;
    assert_problem(&r, StatusCode::NOT_FOUND, "holder_not_found");
    let r = dispatch(&fx, NORTH, &to.national_id, 1, "B").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["transferred_from"], a(5).national_id);
    // At the opening: frozen; the holder reserves in the new city only.
    fx.clock.advance(60_000);
    let r = dispatch(&fx, NORTH, &a(4).national_id, 1, "A").await;
    assert_problem(&r, StatusCode::CONFLICT, "dispatch_frozen");
    let r = fx.reserve(&a(4), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "province_mismatch");
    fx.reserve_ok(&a(4), "b1").await;
    // b1 (one seat) is full now: the receiver of r5, moved to B too, waits in B's list.
    let r = fx.join(&to).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn a_receivers_tracking_code_in_persian_digits_matches_its_ascii_form() {
    let fx = fx();
    let given = Holder {
        national_id: format_national_id(nid(600)),
        tracking_code: " ۱۲۳۴ ".into(),
    };
    let r = transfer(&fx, NORTH, &transfer_body("r0", &given, 1, "A")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    fx.clock.advance(60_000);
    let typed = Holder {
        tracking_code: "1234".into(),
        ..given
    };
    fx.reserve_ok(&typed, "a1").await;
}
