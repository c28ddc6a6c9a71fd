//! The waiting list: joining once the city is full, offers made, accepted, declined or
//! ignored.

use crate::support::*;

#[tokio::test]
async fn the_waiting_list_is_joined_only_once_the_city_is_full() {
    let fx = Fx::new();
    let r = fx.join(&b(1)).await;
    assert_problem(&r, StatusCode::CONFLICT, "seats_available");
    assert_eq!(ids_of(&r.body["alternatives"]), ["b1"]);

    fx.reserve_ok(&b(0), "b1").await;
    let r = fx.join(&b(1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body, json!({"province_id": 1, "position": 1}));
    let r = fx.join(&b(2)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body, json!({"province_id": 1, "position": 2}));
    // Joining again reports the same place.
    let r = fx.join(&b(1)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["position"], 1);

    let r = fx.waitlist_me(&b(2)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"province_id": 1, "position": 2}));
    // City A of the same province still has seats.
    let r = fx.join(&a(0)).await;
    assert_problem(&r, StatusCode::CONFLICT, "seats_available");
    // In an order of the holder's own (spread over holders), so compared as a set.
    let mut ids = ids_of(&r.body["alternatives"]);
    ids.sort();
    assert_eq!(ids, ["a1", "a2"]);
    // A holder with a seat cannot wait.
    let r = fx.join(&b(0)).await;
    assert_problem(&r, StatusCode::CONFLICT, "already_reserved");
    // Not waiting, no offer.
    let r = fx.waitlist_me(&b(3)).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_waiting");
    // The waiting list needs a JSON body like the others.
    let r = fx
        .send(
            Method::POST,
            "/v1/waitlist",
            &[],
            Some("{\"national_id\": 1}"),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
}

#[tokio::test]
async fn a_cancellation_offers_the_seat_and_the_offer_is_accepted_with_body_or_headers() {
    let fx = Fx::new();
    let first = fx.reserve_ok(&b(0), "b1").await;
    assert_eq!(fx.join(&b(1)).await.status, StatusCode::CREATED);
    assert_eq!(fx.join(&b(2)).await.status, StatusCode::CREATED);

    assert_eq!(fx.cancel(&b(0), &first).await.status, StatusCode::OK);
    let r = fx.waitlist_me(&b(1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["province_id"], 1);
    assert!(r.body["position"].is_null());
    let offer = &r.body["offer"];
    assert_eq!(offer["status"], "offered");
    assert_eq!(offer["caravan_id"], "b1");
    assert_eq!(offer["national_id"], b(1).national_id);
    assert_eq!(offer["deadline"], format_rfc3339_utc(T0 + OFFER_MS));
    let offer_id = offer["id"].as_str().unwrap().to_owned();
    assert_eq!(fx.waitlist_me(&b(2)).await.body["position"], 1);
    // The seat is spoken for.
    assert_eq!(fx.seats_free("b1").await, 0);
    // Nobody else can accept it, and the waiter behind cannot either.
    let r = fx.accept(&b(2), &offer_id).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");

    // Accepted with the credentials in the body.
    fx.clock.advance(1_000);
    let r = fx.accept(&b(1), &offer_id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], offer_id);
    assert_eq!(r.body["status"], "held");
    assert_eq!(r.body["stage"], "documents");
    assert_eq!(
        r.body["deadline"],
        format_rfc3339_utc(T0 + 1_000 + DOCUMENTS_MS)
    );
    // Accepting twice is a conflict.
    let r = fx.accept(&b(1), &offer_id).await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "held");
    let r = fx.waitlist_me(&b(1)).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_waiting");

    // Cancelled again: the next waiter accepts with an empty body and header credentials.
    assert_eq!(fx.cancel(&b(1), &offer_id).await.status, StatusCode::OK);
    let r = fx.waitlist_me(&b(2)).await;
    let second_offer = r.body["offer"]["id"].as_str().unwrap().to_owned();
    let r = fx
        .send(
            Method::POST,
            &format!("/v1/reservations/{second_offer}/accept"),
            &creds(&b(2)),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "held");
    assert_eq!(r.body["national_id"], b(2).national_id);

    // An empty body without headers is refused like other missing credentials.
    let r = fx
        .send(
            Method::POST,
            &format!("/v1/reservations/{second_offer}/accept"),
            &[],
            None,
        )
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    // A body that is not the credentials is malformed.
    let r = fx
        .send(
            Method::POST,
            &format!("/v1/reservations/{second_offer}/accept"),
            &[],
            Some("{\"national_id\": \"x\"}"),
        )
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
}

#[tokio::test]
async fn a_declined_offer_passes_to_the_next_waiter() {
    let fx = Fx::new();
    let first = fx.reserve_ok(&b(0), "b1").await;
    fx.join(&b(1)).await;
    fx.join(&b(2)).await;
    fx.cancel(&b(0), &first).await;
    let offer = fx.waitlist_me(&b(1)).await.body["offer"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = fx.cancel(&b(1), &offer).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["end_reason"], "offer_declined");
    let r = fx.waitlist_me(&b(2)).await;
    assert_eq!(r.body["offer"]["status"], "offered");
}

#[tokio::test]
async fn an_ignored_offer_passes_to_the_next_waiter() {
    let fx = Fx::new();
    let first = fx.reserve_ok(&b(0), "b1").await;
    fx.join(&b(1)).await;
    fx.join(&b(2)).await;
    fx.cancel(&b(0), &first).await;
    let offer = fx.waitlist_me(&b(1)).await.body["offer"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Not yet due.
    assert_eq!(fx.advance_and_expire(OFFER_MS - 1), 0);
    assert_eq!(
        fx.waitlist_me(&b(1)).await.body["offer"]["id"],
        offer.as_str()
    );
    // Due: the offer expires and the seat goes to the next waiter.
    assert_eq!(fx.advance_and_expire(1), 1);
    let r = fx.waitlist_me(&b(1)).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_waiting");
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{offer}"), &b(1))
        .await;
    assert_eq!(r.body["status"], "expired");
    assert_eq!(r.body["end_reason"], "offer_expired");
    let r = fx.accept(&b(1), &offer).await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "expired");

    let r = fx.waitlist_me(&b(2)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["offer"]["status"], "offered");
    assert_eq!(r.body["offer"]["national_id"], b(2).national_id);
    assert_eq!(
        r.body["offer"]["deadline"],
        format_rfc3339_utc(T0 + 2 * OFFER_MS)
    );
    let second = r.body["offer"]["id"].as_str().unwrap().to_owned();
    assert_ne!(second, offer);
    let r = fx.accept(&b(2), &second).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "held");
    // Nobody is left waiting: an expired hold would now free the seat.
    assert_eq!(fx.advance_and_expire(DOCUMENTS_MS), 1);
    assert_eq!(fx.seats_free("b1").await, 1);
}
