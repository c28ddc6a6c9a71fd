//! Reservations: reserve (and every refusal of it), idempotency keys, the applicant's reads,
//! cancel, and a request abandoned while it waits for the disk.

use crate::support::*;

#[tokio::test]
async fn reserve_answers_201_with_the_whole_reservation_and_its_location() {
    let fx = Fx::new();
    let h = a(0);
    let r = fx.reserve(&h, "a1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("idempotent-replayed").is_none());
    let body = &r.body;
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        id.len(),
        44,
        "4 hex shard, 8 hex slot, 32 hex (128 random bits) secret"
    );
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/reservations/{id}").as_str())
    );
    assert_eq!(body["national_id"], h.national_id);
    assert_eq!(body["caravan_id"], "a1");
    assert_eq!(body["province_id"], 1);
    assert_eq!(body["status"], "held");
    assert_eq!(body["stage"], "documents");
    assert_rfc3339_utc(&body["deadline"]);
    assert_eq!(body["deadline"], format_rfc3339_utc(T0 + DOCUMENTS_MS));
    assert_jalali_wall_clock(&body["deadline_jalali"]);
    assert_eq!(
        body["deadline_jalali"],
        format_tehran_jalali(T0 + DOCUMENTS_MS)
    );
    assert_eq!(body["created_at"], format_rfc3339_utc(T0));
    assert_eq!(body["created_at_jalali"], format_tehran_jalali(T0));
    assert_eq!(body["updated_at"], format_rfc3339_utc(T0));
    assert_eq!(body["updated_at_jalali"], format_tehran_jalali(T0));
    assert!(body.get("end_reason").is_none());

    // A second holder gets another, unrelated id.
    let other = fx.reserve_ok(&a(1), "a1").await;
    assert_ne!(other, id);
}

#[tokio::test]
async fn reserve_with_a_malformed_body_is_400() {
    let fx = Fx::new();
    let h = a(0);
    let cases: Vec<(&str, Option<&str>, String)> = vec![
        ("not JSON", Some("application/json"), "hello".into()),
        (
            "truncated JSON",
            Some("application/json"),
            "{\"national_id\":".into(),
        ),
        ("empty body", Some("application/json"), String::new()),
        ("an array", Some("application/json"), "[]".into()),
        (
            "a number for a string",
            Some("application/json"),
            json!({"national_id": nid(0), "tracking_code": "t0", "caravan_id": "a1"}).to_string(),
        ),
        (
            "a missing field",
            Some("application/json"),
            json!({"national_id": h.national_id, "tracking_code": "t0"}).to_string(),
        ),
        (
            "an unknown field",
            Some("application/json"),
            json!({"national_id": h.national_id, "tracking_code": "t0", "caravan_id": "a1",
                   "seats": 3})
            .to_string(),
        ),
        (
            "null for a string",
            Some("application/json"),
            json!({"national_id": null, "tracking_code": "t0", "caravan_id": "a1"}).to_string(),
        ),
        ("no content type", None, reserve_body(&h, "a1")),
        (
            "a form",
            Some("application/x-www-form-urlencoded"),
            "a=b".into(),
        ),
    ];
    for (what, content_type, body) in cases {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/v1/reservations");
        if let Some(t) = content_type {
            req = req.header(header::CONTENT_TYPE, t);
        }
        let r = send_request(&fx.app, req.body(Body::from(body)).unwrap()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
        assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
    }
    // Nothing was reserved.
    assert_eq!(fx.seats_free("a1").await, 2);
}

#[tokio::test]
async fn reserve_with_a_bad_national_id_is_422_and_persian_digits_are_accepted() {
    let fx = Fx::new();
    let good = a(0).national_id;
    let last = good.as_bytes()[9] - b'0';
    let bad_check = format!("{}{}", &good[..9], (last + 1) % 10);
    assert!(parse_national_id(&bad_check).is_err());
    for bad in [
        bad_check.as_str(),
        "123",
        "1111111111",
        "12345678901",
        "12345abcde",
        "",
    ] {
        let h = Holder {
            national_id: bad.into(),
            tracking_code: "t0".into(),
        };
        let r = fx.reserve(&h, "a1").await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        assert_eq!(r.body["field"], "national_id", "{bad:?}");
    }

    let persian: String = good
        .chars()
        .map(|c| char::from_u32(0x06F0 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    let h = Holder {
        national_id: format!(" {persian} "),
        tracking_code: "t0".into(),
    };
    let r = fx.reserve(&h, "a1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["national_id"], good);
    // The same holder in ASCII digits finds the same reservation.
    let id = r.body["id"].as_str().unwrap();
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &a(0))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The national ID is documented as "Persian digits accepted"; in the `X-National-Id` header
/// they arrive as UTF-8 bytes.
#[tokio::test]
async fn persian_digits_in_the_national_id_header_are_accepted() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let persian: String = a(0)
        .national_id
        .chars()
        .map(|c| char::from_u32(0x06F0 + c.to_digit(10).unwrap()).unwrap())
        .collect();
    let req = Request::builder()
        .uri(format!("/v1/reservations/{id}"))
        .header(
            "x-national-id",
            HeaderValue::from_bytes(persian.as_bytes()).unwrap(),
        )
        .header("x-tracking-code", "t0")
        .body(Body::empty())
        .unwrap();
    let r = send_request(&fx.app, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], id);
}

#[tokio::test]
async fn invalid_credentials_is_one_answer_for_an_unknown_id_and_a_wrong_code() {
    let fx = Fx::new();
    let unknown = Holder {
        national_id: format_national_id(nid(500)),
        tracking_code: "t500".into(),
    };
    let wrong_code = Holder {
        national_id: a(0).national_id,
        tracking_code: "t1".into(),
    };
    let empty_code = Holder {
        national_id: a(0).national_id,
        tracking_code: String::new(),
    };
    let r1 = fx.reserve(&unknown, "a1").await;
    let r2 = fx.reserve(&wrong_code, "a1").await;
    let r3 = fx.reserve(&empty_code, "a1").await;
    assert_problem(&r1, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(r1.text, r2.text);
    assert_eq!(r1.text, r3.text);
    assert_eq!(r1.headers.len(), r2.headers.len());
    // Before the caravan is even looked at.
    let r4 = fx.reserve(&unknown, "no-such-caravan").await;
    assert_eq!(r1.text, r4.text);
    // The same answer on the other applicant endpoints.
    let r = fx.join(&wrong_code).await;
    assert_eq!(r.text, r1.text);
    let r = fx.waitlist_me(&unknown).await;
    assert_eq!(r.text, r1.text);
}

#[tokio::test]
async fn registration_not_open_carries_opens_at() {
    let opens = T0 + 3 * 3_600_000;
    let fx = Fx::build(season_opening_at(opens), config());
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    assert_eq!(r.body["opens_at"], format_rfc3339_utc(opens));
    assert_eq!(r.body["opens_at_jalali"], format_tehran_jalali(opens));
    assert_rfc3339_utc(&r.body["opens_at"]);
    assert_jalali_wall_clock(&r.body["opens_at_jalali"]);
    // The waiting list is not open either.
    let r = fx.join(&a(0)).await;
    assert_problem(&r, StatusCode::FORBIDDEN, "registration_not_open");
    // It opens on time.
    fx.clock.set(opens);
    fx.reserve_ok(&a(0), "a1").await;
}

#[tokio::test]
async fn an_unconverted_receipt_is_403() {
    let fx = Fx::new();
    let r = fx.reserve(&unconverted(), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "receipt_needs_conversion");
    let r = fx.join(&unconverted()).await;
    assert_problem(&r, StatusCode::FORBIDDEN, "receipt_needs_conversion");
}

#[tokio::test]
async fn a_receipt_after_every_open_cutoff_is_403_not_called() {
    let fx = Fx::new();
    let r = fx.reserve(&late(), "a1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "not_called");
    assert!(r.body.get("opens_at").is_none());
}

#[tokio::test]
async fn another_province_or_city_is_403_province_mismatch() {
    let fx = Fx::new();
    let r = fx.reserve(&a(0), "c1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "province_mismatch");
    let r = fx.reserve(&a(0), "b1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "province_mismatch");
    let r = fx.reserve(&c(0), "d1").await;
    assert_problem(&r, StatusCode::FORBIDDEN, "province_mismatch");
    assert_eq!(fx.seats_free("b1").await, 1);
    assert_eq!(fx.seats_free("c1").await, 2);
}

#[tokio::test]
async fn an_unknown_caravan_is_404() {
    let fx = Fx::new();
    for caravan in ["zz", "", "A1", "a1\u{0}"] {
        let r = fx.reserve(&a(0), caravan).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "caravan_not_found");
    }
}

#[tokio::test]
async fn a_full_caravan_is_409_with_up_to_five_alternatives_of_the_city() {
    let fx = Fx::new();
    fx.reserve_ok(&d(0), "d1").await;
    let r = fx.reserve(&d(1), "d1").await;
    assert_problem(&r, StatusCode::CONFLICT, "caravan_full");
    let alternatives = r.body["alternatives"].as_array().unwrap();
    assert_eq!(alternatives.len(), 5, "{}", r.text);
    for alt in alternatives {
        let id = alt["id"].as_str().unwrap();
        assert!(id.starts_with('d') && id != "d1", "{id}");
        assert!(alt["seats_free"].as_u64().unwrap() > 0);
        assert_eq!(alt["route"], "medina_second");
        assert_eq!(alt["price_group"], "C");
        assert_eq!(alt["departure_date"], jalali_day(DEPARTURE_DAY));
        assert_eq!(alt["price_rial"], 1_500_000_000u64);
    }

    // City A: a2 full, a1 still free, so one alternative; then none.
    fx.reserve_ok(&a(0), "a2").await;
    let r = fx.reserve(&a(1), "a2").await;
    assert_problem(&r, StatusCode::CONFLICT, "caravan_full");
    assert_eq!(ids_of(&r.body["alternatives"]), ["a1"]);
    assert_eq!(r.body["alternatives"][0]["seats_free"], 2);
    fx.reserve_ok(&a(1), "a1").await;
    fx.reserve_ok(&a(2), "a1").await;
    let r = fx.reserve(&a(3), "a1").await;
    assert_problem(&r, StatusCode::CONFLICT, "caravan_full");
    assert_eq!(r.body["alternatives"], json!([]));
}

#[tokio::test]
async fn a_second_reservation_is_409_already_reserved_with_the_live_id() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    for caravan in ["a1", "a2"] {
        let r = fx.reserve(&a(0), caravan).await;
        assert_problem(&r, StatusCode::CONFLICT, "already_reserved");
        assert_eq!(r.body["reservation_id"], id);
    }
    assert_eq!(fx.seats_free("a1").await, 1);
    // A choice is final: once cancelled, the holder cannot take another seat.
    assert_eq!(fx.cancel(&a(0), &id).await.status, StatusCode::OK);
    let again = fx.reserve(&a(0), "a2").await;
    assert_problem(&again, StatusCode::CONFLICT, "registration_ended");
    assert_eq!(again.body["reservation_id"], id);
}

#[tokio::test]
async fn the_same_key_and_body_replays_the_original_reservation() {
    let fx = Fx::new();
    let first = fx.reserve_keyed(&a(0), "a1", "k-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.header("idempotent-replayed").is_none());
    let again = fx.reserve_keyed(&a(0), "a1", "k-1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    // Only one seat was taken.
    assert_eq!(fx.seats_free("a1").await, 1);
    // A retry after time has passed still finds it.
    fx.clock.advance(1_000);
    let later = fx.reserve_keyed(&a(0), "a1", "k-1").await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_eq!(later.body["id"], first.body["id"]);
    // Without the key, the retry is a second reservation attempt.
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::CONFLICT, "already_reserved");
    // Keys are per holder: another holder's identical key is a new reservation.
    let other = fx.reserve_keyed(&a(1), "a1", "k-1").await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert!(other.header("idempotent-replayed").is_none());
    assert_ne!(other.body["id"], first.body["id"]);
}

#[tokio::test]
async fn the_same_key_with_another_caravan_is_422_reused() {
    let fx = Fx::new();
    let first = fx.reserve_keyed(&a(0), "a1", "k-2").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let r = fx.reserve_keyed(&a(0), "a2", "k-2").await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(fx.seats_free("a2").await, 1);
}

#[tokio::test]
async fn an_empty_or_oversized_key_is_422() {
    let fx = Fx::new();
    let r = fx.reserve_keyed(&a(0), "a1", "").await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(r.body["field"], "Idempotency-Key");
    let r = fx.reserve_keyed(&a(0), "a1", &"k".repeat(256)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(fx.seats_free("a1").await, 2);
    let r = fx.reserve_keyed(&a(0), "a1", &"k".repeat(255)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// `method uri` with a JSON `body`, extra `headers` and an `Idempotency-Key`.
async fn keyed(
    fx: &Fx,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    key: &str,
    body: Option<&str>,
) -> Resp {
    let mut all = headers.to_vec();
    all.push(("idempotency-key", key));
    fx.send(method, uri, &all, body).await
}

/// Checks that `again` repeats `first`: the same status and body, marked as replayed.
#[track_caller]
fn assert_replayed(first: &Resp, again: &Resp) {
    assert_eq!(again.status, first.status, "{}", again.text);
    assert_eq!(again.body, first.body);
    assert!(first.header("idempotent-replayed").is_none());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn every_write_replays_its_original_answer_for_the_same_key() {
    let fx = Fx::new();
    let auth = format!("Bearer {TOKEN}");
    let operator = [("authorization", auth.as_str())];
    // Waiting-list join: the place the holder got, even after the list moved on.
    let first = fx.reserve_ok(&b(0), "b1").await;
    let join = |h: Holder| {
        let fx = &fx;
        async move {
            keyed(
                fx,
                Method::POST,
                "/v1/waitlist",
                &[],
                "join-1",
                Some(&creds_body(&h)),
            )
            .await
        }
    };
    let joined = join(b(1)).await;
    assert_eq!(joined.status, StatusCode::CREATED, "{}", joined.text);
    assert_eq!(joined.body["position"], 1);
    assert_eq!(fx.join(&b(2)).await.status, StatusCode::CREATED);

    // Cancel: the same answer for the same key, the seat freed once.
    let uri = format!("/v1/reservations/{first}");
    let cancelled = keyed(&fx, Method::DELETE, &uri, &creds(&b(0)), "cancel-1", None).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    fx.clock.advance(1_000);
    let again = keyed(&fx, Method::DELETE, &uri, &creds(&b(0)), "cancel-1", None).await;
    assert_replayed(&cancelled, &again);
    // The same key for another request of the holder's is refused.
    let r = keyed(
        &fx,
        Method::POST,
        "/v1/waitlist",
        &[],
        "cancel-1",
        Some(&creds_body(&b(0))),
    )
    .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );

    // b(1) was offered the seat and has left the list; the join retry still answers 201 at
    // place 1, as the first time.
    assert_replayed(&joined, &join(b(1)).await);

    // Accept: replayed after the offer became a hold (a plain retry would be 409).
    let offer = fx.waitlist_me(&b(1)).await.body["offer"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/v1/reservations/{offer}/accept");
    let body = creds_body(&b(1));
    let accepted = keyed(&fx, Method::POST, &uri, &[], "accept-1", Some(&body)).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(accepted.body["status"], "held");
    fx.clock.advance(1_000);
    assert_replayed(
        &accepted,
        &keyed(&fx, Method::POST, &uri, &[], "accept-1", Some(&body)).await,
    );
    let r = fx.accept(&b(1), &offer).await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");

    // Operator event: replayed after the hold moved on; another event under the key is 422.
    let uri = format!("/v1/reservations/{offer}/events");
    let documents = json!({"kind": "documents_received"}).to_string();
    let done = keyed(
        &fx,
        Method::POST,
        &uri,
        &operator,
        "event-1",
        Some(&documents),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["stage"], "first_payment");
    let paid = json!({"kind": "first_payment_received"}).to_string();
    assert_eq!(
        keyed(&fx, Method::POST, &uri, &operator, "event-2", Some(&paid))
            .await
            .status,
        StatusCode::OK
    );
    assert_replayed(
        &done,
        &keyed(
            &fx,
            Method::POST,
            &uri,
            &operator,
            "event-1",
            Some(&documents),
        )
        .await,
    );
    let r = keyed(&fx, Method::POST, &uri, &operator, "event-1", Some(&paid)).await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    // Empty and oversized keys are refused on these writes too.
    let r = keyed(&fx, Method::POST, &uri, &operator, "", Some(&paid)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let long = "k".repeat(256);
    let r = keyed(&fx, Method::POST, &uri, &operator, &long, Some(&paid)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
}

#[tokio::test]
async fn own_reservation_reads_and_someone_elses_is_404_like_a_missing_one() {
    let fx = Fx::new();
    let mine = fx.reserve(&a(0), "a1").await;
    let id = mine.body["id"].as_str().unwrap().to_owned();
    let uri = format!("/v1/reservations/{id}");
    let r = fx.as_holder(Method::GET, &uri, &a(0)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, mine.body);

    let theirs = fx.as_holder(Method::GET, &uri, &a(1)).await;
    assert_problem(&theirs, StatusCode::NOT_FOUND, "reservation_not_found");
    let other_province = fx.as_holder(Method::GET, &uri, &c(0)).await;
    let missing_id = format!("{:032x}", u128::from_str_radix(&id, 16).unwrap() ^ 1);
    let missing = fx
        .as_holder(
            Method::GET,
            &format!("/v1/reservations/{missing_id}"),
            &a(1),
        )
        .await;
    assert_eq!(theirs.text, missing.text);
    assert_eq!(theirs.text, other_province.text);
    // Cancelling or accepting someone else's reservation is the same 404, and changes nothing.
    let r = fx.cancel(&a(1), &id).await;
    assert_eq!(r.text, missing.text);
    let r = fx.accept(&a(1), &id).await;
    assert_eq!(r.text, missing.text);
    assert_eq!(
        fx.as_holder(Method::GET, &uri, &a(0)).await.body["status"],
        "held"
    );

    for malformed in [
        "xyz",
        "0123",
        &id[..31],
        &format!("{id}0"),
        &id.replace(|_: char| true, "g")[..32],
    ] {
        let r = fx
            .as_holder(Method::GET, &format!("/v1/reservations/{malformed}"), &a(0))
            .await;
        assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    }
    // Upper-case hex is the same id.
    let r = fx
        .as_holder(
            Method::GET,
            &format!("/v1/reservations/{}", id.to_uppercase()),
            &a(0),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn applicant_reads_need_credentials_in_the_headers() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let uri = format!("/v1/reservations/{id}");
    let r = fx.get(&uri).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let r = fx
        .send(
            Method::GET,
            &uri,
            &[("x-national-id", &a(0).national_id)],
            None,
        )
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let r = fx
        .send(Method::GET, &uri, &[("x-tracking-code", "t0")], None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let wrong = Holder {
        national_id: a(0).national_id,
        tracking_code: "t1".into(),
    };
    let r = fx.as_holder(Method::GET, &uri, &wrong).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let bad = Holder {
        national_id: "12".into(),
        tracking_code: "t0".into(),
    };
    let r = fx.as_holder(Method::GET, &uri, &bad).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let r = fx.send(Method::DELETE, &uri, &[], None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    let r = fx.get("/v1/waitlist/me").await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    // The failed attempts did not cancel it.
    assert_eq!(fx.seats_free("a1").await, 1);
}

#[tokio::test]
async fn cancel_answers_cancelled_frees_the_seat_and_a_second_cancel_answers_it_again() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&b(0), "b1").await;
    assert_eq!(fx.seats_free("b1").await, 0);
    fx.clock.advance(1_000);
    let r = fx.cancel(&b(0), &id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], id);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["end_reason"], "holder_cancelled");
    assert!(r.body["stage"].is_null());
    assert_eq!(r.body["updated_at"], format_rfc3339_utc(T0 + 1_000));
    assert_eq!(r.body["created_at"], format_rfc3339_utc(T0));
    assert_eq!(fx.seats_free("b1").await, 1);

    assert!(r.header("idempotent-replayed").is_none());
    let first = r.body;

    // A retried cancel answers the same cancelled reservation, and frees nothing twice.
    fx.clock.advance(1_000);
    let r = fx.cancel(&b(0), &id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, first);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(fx.seats_free("b1").await, 1);
    // Someone else's cancelled reservation is still not found.
    let r = fx.cancel(&b(1), &id).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    // The holder can still read it.
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &b(0))
        .await;
    assert_eq!(r.body["status"], "cancelled");
}

#[tokio::test]
async fn a_cancel_past_the_deadline_finds_the_reservation_expired() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&b(0), "b1").await;
    fx.clock.advance(DOCUMENTS_MS);
    let r = fx.cancel(&b(0), &id).await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(r.body["reservation_status"], "expired");
    assert_eq!(fx.seats_free("b1").await, 1);
    // Still 409 when retried: an expired reservation was not cancelled by the holder.
    let r = fx.cancel(&b(0), &id).await;
    assert_problem(&r, StatusCode::CONFLICT, "invalid_transition");
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &b(0))
        .await;
    assert_eq!(r.body["status"], "expired");
    assert_eq!(r.body["end_reason"], "stage_expired");
}

/// A client that gives up (or times out) while its reservation waits for the disk leaves no
/// half-made decision: the reservation is whole, durable once the log catches up, survives a
/// crash, and the client's retry with the same key gets exactly it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_waiting_for_the_disk_leaves_no_half_made_decision() {
    use miqat_engine::wal::{MemStorage, Storage};
    let memory = MemStorage::new();
    let open = |memory: &MemStorage| {
        let storage: Arc<dyn Storage> = Arc::new(memory.clone());
        Engine::open(
            catalog(),
            season_opening_at(T0),
            Arc::new(ManualClock::new(T0)),
            storage,
            EngineConfig::default(),
        )
        .unwrap()
        .0
    };
    let state = AppState::new(catalog(), config(), None);
    let engine = open(&memory);
    state.set_engine(Arc::clone(&engine));
    let router = app(state);
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": a(0).tracking_code,
        "caravan_id": "a1",
    })
    .to_string();
    let request = || {
        Request::post("/v1/reservations")
            .header("content-type", "application/json")
            .header("idempotency-key", "retry-me")
            .body(Body::from(body.clone()))
            .unwrap()
    };
    // The client gives up at the first moment the handler has to wait.
    let abandoned =
        tokio::time::timeout(Duration::from_nanos(1), router.clone().oneshot(request())).await;
    drop(abandoned);
    engine.check_invariants().unwrap();
    let held = engine.stats().by_status[1];
    assert!(held <= 1, "at most the one reservation");

    // The retry gets the reservation the first request made (or makes it, if the first never
    // reached the engine): exactly one either way, answered only once durable.
    let retry = router.clone().oneshot(request()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    let replayed = retry.headers().get("idempotent-replayed").is_some();
    let json: Value =
        serde_json::from_slice(&retry.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        replayed,
        held == 1,
        "a retry replays what the abandoned request decided"
    );
    assert_eq!(engine.stats().by_status[1], 1);

    // Power loss right after the retry's 201: the reservation is there.
    drop(router);
    drop(engine);
    memory.crash();
    let recovered = open(&memory);
    let id = miqat_engine::model::ReservationId::parse(&id).unwrap();
    assert_eq!(
        recovered.reservation(id).map(|v| v.status),
        Some(miqat_engine::model::Status::Held)
    );
    recovered.check_invariants().unwrap();
}
