//! Operator events: moving a hold through its stages, refusals of the wrong stage or an
//! expired reservation, medical rejection.

use crate::support::*;

#[tokio::test]
async fn events_move_a_hold_through_every_stage_to_confirmed() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let mut at = T0;
    for (kind, stage, length_ms) in [
        ("documents_received", Some("first_payment"), Some(20_000)),
        ("first_payment_received", Some("medical"), Some(30_000)),
        ("medical_approved", Some("final_payment"), Some(40_000)),
        ("final_payment_received", None, None),
    ] {
        fx.clock.advance(1_000);
        at += 1_000;
        let r = fx.event(&id, kind).await;
        assert_eq!(r.status, StatusCode::OK, "{kind}: {}", r.text);
        assert_eq!(r.body["id"], id);
        assert_eq!(r.body["stage"], json!(stage), "{kind}");
        assert_eq!(r.body["updated_at"], format_rfc3339_utc(at));
        match length_ms {
            Some(ms) => {
                assert_eq!(r.body["status"], "held");
                assert_eq!(r.body["deadline"], format_rfc3339_utc(at + ms));
                assert_eq!(r.body["deadline_jalali"], format_tehran_jalali(at + ms));
            }
            None => {
                assert_eq!(r.body["status"], "confirmed");
                assert!(r.body["deadline"].is_null());
                assert!(r.body["deadline_jalali"].is_null());
            }
        }
    }
    // The holder sees it confirmed, and no deadline ever ends it.
    assert_eq!(fx.advance_and_expire(10 * 86_400_000), 0);
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &a(0))
        .await;
    assert_eq!(r.body["status"], "confirmed");
    assert_eq!(fx.seats_free("a1").await, 1);
    // A confirmed registration takes no more stage events.
    let r = fx.event(&id, "final_payment_received").await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "confirmed");
}

#[tokio::test]
async fn an_event_for_the_wrong_stage_is_409_and_an_unknown_kind_422() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    for kind in [
        "first_payment_received",
        "medical_approved",
        "final_payment_received",
    ] {
        let r = fx.event(&id, kind).await;
        assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
        assert_eq!(r.body["reservation_status"], "held");
    }
    for kind in ["", "documents", "DOCUMENTS_RECEIVED", "refund"] {
        let r = fx.event(&id, kind).await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(r.body["field"], "kind");
    }
    // Malformed bodies and unknown reservations.
    let auth = format!("Bearer {TOKEN}");
    let uri = format!("/v1/reservations/{id}/events");
    for body in [
        "{}",
        "{\"kind\": 3}",
        "kind=documents_received",
        "{\"kind\": \"documents_received\", \"x\": 1}",
    ] {
        let r = fx
            .send(Method::POST, &uri, &[("authorization", &auth)], Some(body))
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
    }
    let r = fx.event(&"f".repeat(32), "documents_received").await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    let r = fx.event("nope", "documents_received").await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    // Still at the first stage.
    let r = fx.event(&id, "documents_received").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["stage"], "first_payment");
}

#[tokio::test]
async fn medical_rejection_rejects_and_frees_the_seat_for_the_waiting_list() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&b(0), "b1").await;
    fx.join(&b(1)).await;
    let before = fx.get("/v1/provinces").await.body[0]["seats_free"].clone();
    // A hold still at the documents stage can be rejected.
    let r = fx.event(&id, "medical_rejected").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "rejected");
    assert_eq!(r.body["end_reason"], "medical_rejected");
    assert!(r.body["stage"].is_null());
    // The seat went to the waiting list as an offer.
    let r = fx.waitlist_me(&b(1)).await;
    assert_eq!(r.body["offer"]["caravan_id"], "b1");
    assert_eq!(fx.get("/v1/provinces").await.body[0]["seats_free"], before);
    // Once ended, further events conflict.
    let r = fx.event(&id, "medical_rejected").await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "rejected");
    let r = fx.event(&id, "deceased").await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");

    // Without waiters the seat goes back to the pool.
    let id = fx.reserve_ok(&c(0), "c1").await;
    assert_eq!(fx.seats_free("c1").await, 1);
    let r = fx.event(&id, "medical_rejected").await;
    assert_eq!(r.body["status"], "rejected");
    assert_eq!(fx.seats_free("c1").await, 2);
    // `deceased` ends a hold too (as a cancellation).
    let id = fx.reserve_ok(&c(1), "c1").await;
    let r = fx.event(&id, "deceased").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["end_reason"], "deceased");
    assert_eq!(fx.seats_free("c1").await, 2);
    // Cancelled, but not by the holder: a cancel is not a retry of anything, so it is 409.
    let r = fx.cancel(&c(1), &id).await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "cancelled");
}

#[tokio::test]
async fn an_event_for_an_expired_reservation_is_409() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    assert_eq!(fx.advance_and_expire(DOCUMENTS_MS), 1);
    let r = fx.event(&id, "documents_received").await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "expired");
    // Past the deadline but before the expiry pass: still refused, and expired on the spot.
    let id = fx.reserve_ok(&a(1), "a1").await;
    fx.clock.advance(DOCUMENTS_MS + 1);
    let r = fx.event(&id, "documents_received").await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "expired");
    assert_eq!(fx.seats_free("a1").await, 2);
}
