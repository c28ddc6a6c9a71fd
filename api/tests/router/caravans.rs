//! Provinces and caravans: the public lists, their filters, their ETags and `304`s, and one
//! caravan by id.

use crate::support::*;

#[tokio::test]
async fn provinces_show_seats_and_follow_reservations() {
    let fx = Fx::new();
    let r = fx.get("/v1/provinces").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!([
            {"id": 1, "name_en": "North", "name_fa": "شمال", "seats_total": 4, "seats_free": 4},
            {"id": 2, "name_en": "South", "name_fa": "جنوب", "seats_total": 9, "seats_free": 9},
        ])
    );
    fx.reserve_ok(&a(0), "a1").await;
    let r = fx.get("/v1/provinces").await;
    assert_eq!(r.body[0]["seats_total"], 4);
    assert_eq!(r.body[0]["seats_free"], 3);
    assert_eq!(r.body[1]["seats_free"], 9);
}

#[tokio::test]
async fn caravans_of_a_province_show_every_member() {
    let fx = Fx::new();
    let r = fx.get("/v1/provinces/1/caravans").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(ids_of(&r.body), ["a1", "a2", "b1"]);
    assert_eq!(
        r.body[0],
        json!({
            "id": "a1",
            "province_id": 1,
            "city": "A",
            "manager": "Manager a1",
            "phone": "021-5555",
            "price_group": "A",
            "route": "medina_first",
            "departure_date": jalali_day(DEPARTURE_DAY),
            "price_rial": 1_500_000_000u64,
            "capacity": 2,
            "seats_free": 2,
        })
    );
    let r = fx.get("/v1/provinces/2/caravans").await;
    assert_eq!(
        ids_of(&r.body),
        ["c1", "d1", "d2", "d3", "d4", "d5", "d6", "d7"]
    );
}

#[tokio::test]
async fn caravan_list_filters_by_city_route_price_group_and_availability() {
    let fx = Fx::new();
    let list = |q: &'static str| {
        let fx = &fx;
        async move {
            let r = fx.get(&format!("/v1/provinces/1/caravans?{q}")).await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text);
            ids_of(&r.body)
        }
    };
    assert_eq!(list("city=A").await, ["a1", "a2"]);
    assert_eq!(list("city=B").await, ["b1"]);
    assert_eq!(list("city=C").await, Vec::<String>::new());
    assert_eq!(list("route=medina_second").await, ["a2"]);
    assert_eq!(list("route=medina_first").await, ["a1", "b1"]);
    assert_eq!(list("price_group=B").await, ["a2"]);
    assert_eq!(list("city=A&route=medina_first").await, ["a1"]);
    assert_eq!(list("available=true").await, ["a1", "a2", "b1"]);
    fx.reserve_ok(&a(0), "a2").await;
    fx.reserve_ok(&b(0), "b1").await;
    assert_eq!(list("available=true").await, ["a1"]);
    assert_eq!(list("available=false").await, ["a1", "a2", "b1"]);
    let r = fx.get("/v1/provinces/1/caravans?city=A").await;
    assert_eq!(r.body[1]["id"], "a2");
    assert_eq!(r.body[1]["seats_free"], 0);
}

#[tokio::test]
async fn caravan_list_bad_route_or_query_is_422() {
    let fx = Fx::new();
    let r = fx.get("/v1/provinces/1/caravans?route=jeddah").await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    assert_eq!(r.body["field"], "route");
    let r = fx.get("/v1/provinces/1/caravans?available=maybe").await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    let r = fx.get("/v1/provinces/1/caravans?colour=red").await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
}

#[tokio::test]
async fn unknown_province_is_404() {
    let fx = Fx::new();
    for uri in [
        "/v1/provinces/3/caravans",
        "/v1/provinces/0/caravans",
        "/v1/provinces/north/caravans",
        "/v1/provinces/-1/caravans",
        "/v1/provinces/99999999999999999999999/caravans",
        "/v1/provinces/3/caravans?city=A",
    ] {
        let r = fx.get(uri).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "province_not_found");
    }
}

#[tokio::test]
async fn weak_etags_lowercase_bearer_and_persian_digits_in_paths_are_understood() {
    let fx = Fx::new();
    let first = fx.get("/v1/provinces/1/caravans").await;
    let weak = format!("W/{}", first.header("etag").unwrap());
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", &weak)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let persian = fx.get("/v1/provinces/%DB%B1/caravans").await;
    assert_eq!(persian.status, StatusCode::OK);
    assert_eq!(persian.body, first.body);
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/stats",
            &[("authorization", "bearer secret")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/stats",
            &[("authorization", "bearer SECRET")],
            None,
        )
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn filtered_caravan_lists_are_cached_with_their_own_etags() {
    let fx = Fx::new();
    let uri = "/v1/provinces/1/caravans?city=A&available=true";
    let first = fx.get(uri).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").unwrap().to_owned();
    let ids: Vec<&str> = first
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a2"]);
    let unfiltered = fx.get("/v1/provinces/1/caravans").await;
    assert_ne!(
        unfiltered.header("etag"),
        Some(etag.as_str()),
        "each filter has its own tag"
    );
    let r = fx
        .send(Method::GET, uri, &[("if-none-match", &etag)], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    // Filling a2 drops it from the `available` list and changes the tag.
    fx.reserve_ok(&a(0), "a2").await;
    let r = fx
        .send(Method::GET, uri, &[("if-none-match", &etag)], None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1"]);
    // A city or price group the province does not have selects nothing.
    let none = fx.get("/v1/provinces/1/caravans?city=Nowhere").await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.body, serde_json::json!([]));
    let none = fx.get("/v1/provinces/1/caravans?price_group=ZZ").await;
    assert_eq!(none.body, serde_json::json!([]));
}

#[tokio::test]
async fn caravan_list_etag_answers_304_then_changes_when_a_seat_is_taken() {
    let fx = Fx::new();
    let first = fx.get("/v1/provinces/1/caravans").await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let again = fx.get("/v1/provinces/1/caravans").await;
    assert_eq!(again.header("etag"), Some(etag.as_str()));

    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", &etag)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.text.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    let list = format!("\"other\", {etag}");
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", &list)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", "\"stale\"")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // The other province's list has its own tag.
    let other = fx.get("/v1/provinces/2/caravans").await;
    assert_ne!(other.header("etag"), Some(etag.as_str()));

    fx.reserve_ok(&a(0), "a1").await;
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", &etag)],
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a seat was taken: the tag must change"
    );
    let new_etag = r.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(r.body[0]["seats_free"], 1);
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", &new_etag)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn caravan_list_with_the_default_cache_age_catches_up_within_milliseconds() {
    let fx = Fx::with_config(ApiConfig {
        list_max_age: ApiConfig::default().list_max_age,
        ..config()
    });
    let etag = fx
        .get("/v1/provinces/1/caravans")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    fx.reserve_ok(&a(0), "a1").await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    let r = fx
        .send(
            Method::GET,
            "/v1/provinces/1/caravans",
            &[("if-none-match", &etag)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn caravan_by_id_and_unknown_caravan() {
    let fx = Fx::new();
    let r = fx.get("/v1/caravans/b1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], "b1");
    assert_eq!(r.body["province_id"], 1);
    assert_eq!(r.body["city"], "B");
    assert_eq!(r.body["capacity"], 1);
    assert_eq!(r.body["seats_free"], 1);
    assert_eq!(r.body["route"], "medina_first");
    fx.reserve_ok(&b(0), "b1").await;
    assert_eq!(fx.seats_free("b1").await, 0);

    for uri in ["/v1/caravans/zz", "/v1/caravans/B1", "/v1/caravans/%20b1"] {
        let r = fx.get(uri).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "caravan_not_found");
    }
}

/// A client that accepts gzip gets the cached list compressed, under its own strong ETag;
/// either tag revalidates; `q=0` and no `Accept-Encoding` get the JSON as it is.
#[tokio::test]
async fn the_caravan_list_is_sent_gzipped_to_clients_that_accept_it() {
    use std::io::Read;
    let fx = Fx::new();
    let uri = "/v1/provinces/2/caravans?available=true";
    let plain = fx.get(uri).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.header("content-encoding").is_none());
    let gzip = |accept: &'static str| {
        let request = Request::builder()
            .uri(uri)
            .header(header::ACCEPT_ENCODING, accept)
            .body(Body::empty())
            .unwrap();
        fx.app.clone().oneshot(request)
    };
    let response = gzip("br;q=1.0, gzip;q=0.8").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let vary = response.headers()[header::VARY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(vary.contains("accept-encoding"), "{vary}");
    let gz_etag = response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(Some(gz_etag.as_str()), plain.header("etag"));
    let compressed = response.into_body().collect().await.unwrap().to_bytes();
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut decoded)
        .unwrap();
    assert_eq!(decoded, plain.text);
    for tag in [gz_etag.as_str(), plain.header("etag").unwrap()] {
        let r = fx
            .send(
                Method::GET,
                uri,
                &[("if-none-match", tag), ("accept-encoding", "gzip")],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{tag}");
        assert_eq!(r.header("etag"), Some(gz_etag.as_str()));
    }
    let refused = gzip("gzip;q=0, identity").await.unwrap();
    assert!(refused.headers().get("content-encoding").is_none());
    // A seat taken changes the list: the compressed body follows.
    fx.reserve_ok(&c(0), "c1").await;
    let after = gzip("gzip").await.unwrap();
    assert_ne!(after.headers()[header::ETAG].to_str().unwrap(), gz_etag);
}
