//! Scoped credentials: each role of the principals file acting inside its scope, and every
//! refusal outside it (`403 forbidden` for an action the role never has, the missing object's
//! `404` for someone else's object, `401` for an unknown token); the principals file's own
//! refusals; the caravan manager's roster.

use miqat_api::principals::{Principals, token_sha256_hex};

use crate::support::*;

const MANAGER_A1: &str = "manager-a1-token";
const MANAGER_C1: &str = "manager-c1-token";
const GATEWAY: &str = "gateway-token";
const MEDICAL: &str = "medical-token";
const OFFICE_NORTH: &str = "office-north-token";
const SECOND_OPERATOR: &str = "second-operator-token";

fn principals_file() -> String {
    let entry = |id: &str, role: &str, token: &str, extra: &str| {
        format!(
            "[[principal]]\nid = \"{id}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n{extra}\n",
            token_sha256_hex(token)
        )
    };
    [
        entry(
            "mgr-a1",
            "caravan_manager",
            MANAGER_A1,
            "caravans = [\"a1\", \"a2\"]",
        ),
        entry(
            "mgr-c1",
            "caravan_manager",
            MANAGER_C1,
            "caravans = [\"c1\"]",
        ),
        entry("shaparak", "payment_gateway", GATEWAY, ""),
        entry("clinic-7", "medical_centre", MEDICAL, ""),
        entry("office-north", "office", OFFICE_NORTH, "province = 1"),
        entry("ops-2", "operator", SECOND_OPERATOR, ""),
    ]
    .concat()
}

fn fx() -> Fx {
    let principals = Principals::parse(&principals_file(), &catalog()).unwrap();
    Fx::with_config(ApiConfig {
        principals,
        ..config()
    })
}

async fn event_as(fx: &Fx, token: &str, id: &str, kind: &str) -> Resp {
    let auth = format!("Bearer {token}");
    let body = json!({ "kind": kind }).to_string();
    fx.send(
        Method::POST,
        &format!("/v1/reservations/{id}/events"),
        &[("authorization", &auth)],
        Some(&body),
    )
    .await
}

async fn get_as(fx: &Fx, token: &str, uri: &str, accept: Option<&str>) -> Resp {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(accept) = accept {
        headers.push(("accept", accept));
    }
    fx.send(Method::GET, uri, &headers, None).await
}

/// The same answer a missing object gets: status, code and every member but `detail`'s
/// wording, which names nothing either.
#[track_caller]
fn assert_same_problem(out_of_scope: &Resp, missing: &Resp) {
    assert_eq!(out_of_scope.status, missing.status, "{}", out_of_scope.text);
    assert_eq!(out_of_scope.body, missing.body, "{}", out_of_scope.text);
}

#[tokio::test]
async fn each_role_reports_exactly_its_own_events() {
    let fx = fx();
    let id = fx.reserve_ok(&a(0), "a1").await;
    // Stage by stage, each by the principal whose job it is.
    for (token, kind, stage) in [
        (MANAGER_A1, "documents_received", "first_payment"),
        (GATEWAY, "first_payment_received", "medical"),
        (MEDICAL, "medical_approved", "final_payment"),
    ] {
        let r = event_as(&fx, token, &id, kind).await;
        assert_eq!(r.status, StatusCode::OK, "{kind}: {}", r.text);
        assert_eq!(r.body["stage"], stage);
    }
    let r = event_as(&fx, GATEWAY, &id, "final_payment_received").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "confirmed");
}

#[tokio::test]
async fn an_event_outside_the_role_is_403_before_the_reservation_is_looked_up() {
    let fx = fx();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let missing = "0000000000000000000000000000000000000000000a";
    let refused: &[(&str, &[&str])] = &[
        (
            MANAGER_A1,
            &[
                "first_payment_received",
                "medical_approved",
                "final_payment_received",
                "medical_rejected",
                "deceased",
            ],
        ),
        (
            GATEWAY,
            &[
                "documents_received",
                "medical_approved",
                "medical_rejected",
                "deceased",
            ],
        ),
        (
            MEDICAL,
            &[
                "documents_received",
                "first_payment_received",
                "final_payment_received",
                "deceased",
            ],
        ),
        (
            OFFICE_NORTH,
            &[
                "documents_received",
                "first_payment_received",
                "medical_approved",
                "final_payment_received",
                "medical_rejected",
                "deceased",
            ],
        ),
    ];
    for (token, kinds) in refused {
        for kind in *kinds {
            // The same answer for a real reservation and a missing one: nothing is revealed.
            for target in [id.as_str(), missing] {
                let r = event_as(&fx, token, target, kind).await;
                assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
            }
        }
    }
    // Nothing moved.
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &a(0))
        .await;
    assert_eq!(r.body["stage"], "documents");
    assert_eq!(r.body["status"], "held");
}

#[tokio::test]
async fn a_manager_acting_on_another_caravan_gets_the_missing_reservations_404() {
    let fx = fx();
    let theirs = fx.reserve_ok(&c(0), "c1").await;
    let missing = "0000000000000000000000000000000000000000000a";
    let out_of_scope = event_as(&fx, MANAGER_A1, &theirs, "documents_received").await;
    let absent = event_as(&fx, MANAGER_A1, missing, "documents_received").await;
    assert_problem(
        &out_of_scope,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    );
    assert_same_problem(&out_of_scope, &absent);
    // Its own manager can.
    let r = event_as(&fx, MANAGER_C1, &theirs, "documents_received").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn only_operators_reach_the_admin_endpoints() {
    let fx = fx();
    for token in [MANAGER_A1, GATEWAY, MEDICAL, OFFICE_NORTH] {
        for uri in ["/v1/admin/stats", "/v1/admin/reservations"] {
            let r = get_as(&fx, token, uri, None).await;
            assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
        }
        let auth = format!("Bearer {token}");
        let r = fx
            .send(
                Method::PUT,
                "/v1/admin/waves",
                &[("authorization", &auth)],
                Some("[]"),
            )
            .await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    // Both the file's operator and the single operator token are operators.
    for token in [SECOND_OPERATOR, TOKEN] {
        let r = get_as(&fx, token, "/v1/admin/stats", None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    // A token nobody has, or none: 401.
    for auth in ["Bearer nobody", "Bearer ", "Basic c2VjcmV0", ""] {
        for uri in ["/v1/admin/stats", "/v1/caravans/a1/roster"] {
            let r = fx
                .send(Method::GET, uri, &[("authorization", auth)], None)
                .await;
            assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
}

#[tokio::test]
async fn a_manager_reads_the_roster_of_their_caravans_only() {
    let fx = fx();
    let id0 = fx.reserve_ok(&a(0), "a1").await;
    let id1 = fx.reserve_ok(&a(1), "a1").await;
    fx.cancel(&a(1), &id1).await;
    fx.reserve_ok(&c(0), "c1").await;
    let r = get_as(&fx, MANAGER_A1, "/v1/caravans/a1/roster", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["caravan_id"], "a1");
    assert_eq!(r.body["capacity"], 2);
    assert_eq!(r.body["seats_free"], 1);
    // The cancelled reservation is not on it.
    let pilgrims = r.body["pilgrims"].as_array().unwrap();
    assert_eq!(pilgrims.len(), 1, "{}", r.text);
    let p = &pilgrims[0];
    assert_eq!(p["reservation_id"], id0);
    assert_eq!(p["national_id"], a(0).national_id);
    assert_eq!(p["receipt_date"], jalali_day(100));
    assert_eq!(p["status"], "held");
    assert_eq!(p["stage"], "documents");
    assert_rfc3339_utc(&p["deadline"]);
    assert!(p.get("tracking_code").is_none());
    // CSV by Accept or by ?format=csv, the same bytes.
    let by_accept = get_as(&fx, MANAGER_A1, "/v1/caravans/a1/roster", Some("text/csv")).await;
    let by_query = get_as(&fx, MANAGER_A1, "/v1/caravans/a1/roster?format=csv", None).await;
    for r in [&by_accept, &by_query] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
        let lines: Vec<&str> = r.text.lines().collect();
        assert_eq!(lines.len(), 2, "{}", r.text);
        assert!(lines[0].starts_with("reservation_id,national_id,receipt_no,receipt_date"));
        assert!(lines[1].starts_with(&format!("{id0},{},", a(0).national_id)));
    }
    assert_eq!(by_accept.text, by_query.text);
    let r = get_as(&fx, MANAGER_A1, "/v1/caravans/a1/roster?format=xml", None).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    // The second caravan of the same manager is readable (and empty).
    let r = get_as(&fx, MANAGER_A1, "/v1/caravans/a2/roster", None).await;
    assert_eq!(r.body["pilgrims"], json!([]));
    // Another manager's caravan, and every role without rosters: the missing caravan's 404.
    let absent = get_as(&fx, MANAGER_A1, "/v1/caravans/zz9/roster", None).await;
    assert_problem(&absent, StatusCode::NOT_FOUND, "caravan_not_found");
    for token in [MANAGER_C1, GATEWAY, MEDICAL, OFFICE_NORTH] {
        let r = get_as(&fx, token, "/v1/caravans/a1/roster", None).await;
        assert_same_problem(&r, &absent);
    }
    let r = get_as(&fx, MANAGER_A1, "/v1/caravans/c1/roster", None).await;
    assert_same_problem(&r, &absent);
    // An operator reads any roster.
    let r = get_as(&fx, TOKEN, "/v1/caravans/c1/roster", None).await;
    assert_eq!(r.body["pilgrims"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn without_any_principal_the_operator_endpoints_answer_401() {
    let fx = Fx::with_config(ApiConfig {
        operator_token: None,
        ..config()
    });
    let r = get_as(&fx, "", "/v1/admin/stats", None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[test]
fn the_principals_file_is_refused_with_the_entry_and_field_named() {
    let hash = token_sha256_hex("x");
    let other = token_sha256_hex("y");
    let entry = |body: &str| format!("[[principal]]\n{body}\n");
    let check = |text: String, expect: &str| {
        let err = Principals::parse(&text, &catalog()).unwrap_err();
        assert!(err.contains(expect), "{expect:?} not in {err:?}");
    };
    let ok = |id: &str, role: &str, h: &str, extra: &str| {
        entry(&format!(
            "id = \"{id}\"\nrole = \"{role}\"\ntoken_sha256 = \"{h}\"\n{extra}"
        ))
    };
    check(ok("x", "root", &hash, ""), "principal 1 (role)");
    check(ok("x", "operator", "abc", ""), "principal 1 (token_sha256)");
    check(ok("", "operator", &hash, ""), "principal 1 (id)");
    check(
        ok("m", "caravan_manager", &hash, "caravans = [\"nope\"]"),
        "principal 1 (caravans): unknown caravan",
    );
    check(
        ok("m", "caravan_manager", &hash, ""),
        "principal 1 (caravans)",
    );
    check(ok("o", "office", &hash, ""), "principal 1 (province)");
    check(
        ok("o", "office", &hash, "province = 99"),
        "unknown province 99",
    );
    check(
        ok("g", "payment_gateway", &hash, "province = 1"),
        "principal 1 (province)",
    );
    check(
        ok("g", "payment_gateway", &hash, "caravans = [\"a1\"]"),
        "principal 1 (caravans)",
    );
    check(
        ok("g", "payment_gateway", &hash, "") + &ok("g", "operator", &other, ""),
        "principal 2 (id)",
    );
    check(
        ok("g", "payment_gateway", &hash, "") + &ok("h", "operator", &hash, ""),
        "principal 2 (token_sha256)",
    );
    check(ok("g", "operator", &hash, "colour = 1"), "colour");
    let parsed = Principals::parse(&principals_file(), &catalog()).unwrap();
    assert_eq!(parsed.len(), 6);
    // Debug output never shows a hash.
    let shown = format!("{parsed:?}");
    assert!(!shown.contains(&token_sha256_hex(GATEWAY)), "{shown}");
    assert!(shown.contains("shaparak"));
}
