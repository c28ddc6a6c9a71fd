//! Errors: hostile bodies, headers and paths, unknown routes and wrong methods are refused
//! with a problem document, never a 500 or a panic.

use crate::support::*;

#[tokio::test]
async fn hostile_bodies_are_refused_cleanly() {
    let fx = Fx::new();
    let nid0 = a(0).national_id;
    let long_id = "a".repeat(10_000);
    let bodies = [
        json!({"national_id": 1e308, "tracking_code": "t0", "caravan_id": "a1"}).to_string(),
        format!(
            "{{\"national_id\": {}, \"tracking_code\": \"t0\", \"caravan_id\": \"a1\"}}",
            "9".repeat(5_000)
        ),
        json!({"national_id": "9".repeat(5_000), "tracking_code": "t0", "caravan_id": "a1"})
            .to_string(),
        json!({"national_id": "18446744073709551616", "tracking_code": "t0", "caravan_id": "a1"})
            .to_string(),
        json!({"national_id": "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
               "tracking_code": "t0", "caravan_id": "a1"})
        .to_string(),
        json!({"national_id": nid0, "tracking_code": "t0\u{0}", "caravan_id": "a1"}).to_string(),
        json!({"national_id": nid0, "tracking_code": "\u{0}", "caravan_id": "\u{0}"}).to_string(),
        json!({"national_id": nid0, "tracking_code": "t0", "caravan_id": long_id}).to_string(),
        json!({"national_id": "۱۲۳۴۵۶۷۸۹۰١٢", "tracking_code": "t0", "caravan_id": "a1"})
            .to_string(),
        json!({"national_id": "１２３４５６７８９０", "tracking_code": "t0", "caravan_id": "a1"})
            .to_string(),
        json!({"national_id": "\u{202e}0123456789", "tracking_code": "t0", "caravan_id": "a1"})
            .to_string(),
        "[".repeat(10_000),
        "{\"national_id\": \"\\ud800\", \"tracking_code\": \"t0\", \"caravan_id\": \"a1\"}".into(),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x7b]).into_owned(),
    ];
    for body in &bodies {
        let r = fx
            .send(Method::POST, "/v1/reservations", &[], Some(body))
            .await;
        assert_handled(&r, &body.chars().take(80).collect::<String>());
        assert!(r.status.is_client_error(), "{}: {}", r.status, r.text);
        let r = fx.send(Method::POST, "/v1/waitlist", &[], Some(body)).await;
        assert_handled(&r, "waitlist");
        let r = fx
            .as_operator(
                Method::POST,
                &format!("/v1/reservations/{}/events", "0".repeat(32)),
                Some(body),
            )
            .await;
        assert_handled(&r, "events");
        let r = fx
            .as_operator(Method::PUT, "/v1/admin/waves", Some(body))
            .await;
        assert_handled(&r, "waves");
    }
    // Raw invalid UTF-8 bytes as a body.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/reservations")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b'{', 0xff, 0xfe, 0x00, b'}']))
        .unwrap();
    let r = send_request(&fx.app, req).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_request");
    // Extreme numbers in wave dates and query strings.
    let huge_waves = json!([{"name": "x", "receipts_until": "99999999/01/01",
                             "opens_at": "+999999-01-01T00:00:00Z", "provinces": [4294967295u32]}]);
    let r = fx
        .as_operator(
            Method::PUT,
            "/v1/admin/waves",
            Some(&huge_waves.to_string()),
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    // Nothing was reserved by any of it.
    assert_eq!(fx.seats_free("a1").await, 2);
}

/// Paging parameters at the edge of `usize` must not overflow (a panic in debug builds).
#[tokio::test]
async fn extreme_paging_numbers_are_handled() {
    let fx = Fx::new();
    fx.reserve_ok(&a(0), "a1").await;
    for uri in [
        "/v1/admin/reservations?offset=18446744073709551615&limit=18446744073709551615",
        "/v1/admin/reservations?offset=18446744073709551615",
        "/v1/admin/reservations?limit=0",
        "/v1/admin/reservations?offset=99999999999999999999999999",
        "/v1/admin/reservations?province=99999999999999999999",
    ] {
        let r = fx.as_operator(Method::GET, uri, None).await;
        assert_handled(&r, uri);
    }
}

#[tokio::test]
async fn hostile_headers_are_refused_cleanly() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let invalid = HeaderValue::from_bytes(&[0xff, 0xfe, b'1', 0x80]).unwrap();
    let cases: Vec<(Method, String, &str)> = vec![
        (
            Method::GET,
            format!("/v1/reservations/{id}"),
            "x-national-id",
        ),
        (
            Method::GET,
            format!("/v1/reservations/{id}"),
            "x-tracking-code",
        ),
        (
            Method::DELETE,
            format!("/v1/reservations/{id}"),
            "x-national-id",
        ),
        (Method::GET, "/v1/waitlist/me".into(), "x-national-id"),
        (Method::GET, "/v1/admin/stats".into(), "authorization"),
        (
            Method::GET,
            "/v1/provinces/1/caravans".into(),
            "if-none-match",
        ),
        (Method::GET, "/v1/admin/reservations".into(), "accept"),
    ];
    for (method, uri, name) in cases {
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        if name != "x-national-id" {
            req = req.header("x-national-id", a(0).national_id.as_str());
        }
        if name != "x-tracking-code" {
            req = req.header("x-tracking-code", "t0");
        }
        if name == "accept" {
            req = req.header("authorization", format!("Bearer {TOKEN}"));
        }
        let req = req
            .header(name, invalid.clone())
            .body(Body::empty())
            .unwrap();
        let r = send_request(&fx.app, req).await;
        assert_handled(&r, &format!("{method} {uri} with a bad {name}"));
    }
    // An idempotency key of raw bytes is just bytes.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/reservations")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", invalid.clone())
        .body(Body::from(reserve_body(&a(1), "a1")))
        .unwrap();
    let r = send_request(&fx.app, req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // A national ID of 10,000 characters in a header.
    let long = "1".repeat(10_000);
    let r = fx
        .send(
            Method::GET,
            "/v1/waitlist/me",
            &[("x-national-id", &long), ("x-tracking-code", "t0")],
            None,
        )
        .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    // The reservation is untouched.
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &a(0))
        .await;
    assert_eq!(r.body["status"], "held");
}

#[tokio::test]
async fn path_ids_of_ten_thousand_characters_are_404() {
    let fx = Fx::new();
    let long = "f".repeat(10_000);
    let r = fx.get(&format!("/v1/caravans/{long}")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "caravan_not_found");
    let r = fx.get(&format!("/v1/provinces/{long}/caravans")).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "province_not_found");
    let r = fx
        .as_holder(Method::GET, &format!("/v1/reservations/{long}"), &a(0))
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    let r = fx.cancel(&a(0), &long).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    let r = fx.accept(&a(0), &long).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    let r = fx.event(&long, "documents_received").await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    // Percent-encoded NUL bytes and slashes.
    for id in ["%00", "a1%00", "%2F..%2Fadmin%2Fstats", "%E2%80%AE"] {
        let r = fx.get(&format!("/v1/caravans/{id}")).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "caravan_not_found");
        let r = fx
            .as_holder(Method::GET, &format!("/v1/reservations/{id}"), &a(0))
            .await;
        assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    }
}

#[tokio::test]
async fn an_unknown_route_is_a_problem_404() {
    let fx = Fx::new();
    for uri in [
        "/v1/nothing",
        "/v1/",
        "/v2/waves",
        "/v1/admin",
        "/v1/reservations/x/y/z",
    ] {
        let r = fx.get(uri).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
}

/// CONTRACT: "Every error is `application/problem+json`", including a wrong method.
#[tokio::test]
async fn a_wrong_method_is_a_problem_document() {
    let fx = Fx::new();
    for (method, uri) in [
        (Method::PUT, "/v1/provinces"),
        (Method::DELETE, "/v1/waves"),
        (Method::GET, "/v1/waitlist"),
        (Method::POST, "/v1/admin/stats"),
    ] {
        let r = fx.send(method.clone(), uri, &[], None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{method} {uri}: 405 with body {:?}",
            r.text
        );
    }
}

/// CONTRACT: "Every error is `application/problem+json`", including a path id that is not
/// UTF-8 once percent-decoded.
#[tokio::test]
async fn a_path_id_that_is_not_utf8_is_a_problem_document() {
    let fx = Fx::new();
    for uri in [
        "/v1/caravans/%FF",
        "/v1/provinces/%FF/caravans",
        "/v1/reservations/%C0%80",
    ] {
        let r = fx.as_holder(Method::GET, uri, &a(0)).await;
        assert_handled(&r, uri);
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{uri}: {} {:?}",
            r.status,
            r.text
        );
    }
}
