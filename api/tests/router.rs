//! The router's tests: every endpoint of CONTRACT's HTTP API and every row of its error table,
//! driven through `miqat_api::app` with `tower::ServiceExt::oneshot` (no sockets), over a small
//! hand-made catalog whose national IDs carry valid check digits.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use miqat_api::limits::Rate;
use miqat_api::{ApiConfig, AppState, app};
use miqat_engine::calendar::{
    JalaliDate, format_national_id, format_rfc3339_utc, format_tehran_jalali,
    national_id_check_digit, parse_national_id,
};
use miqat_engine::catalog::{Caravan, Catalog, CatalogBuilder, ReceiptStatus, Route};
use miqat_engine::clock::ManualClock;
use miqat_engine::season::{Schedule, Season, Stage, Wave};
use miqat_engine::{Engine, EngineConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

// ------------------------------------------------------------------------------------------
// Catalog, season and fixture
// ------------------------------------------------------------------------------------------

/// The instant every test starts at (2020-09-13T12:26:40Z).
const T0: i64 = 1_600_000_000_000;
/// Receipts deposited on or before this day are called by the test wave.
const CUTOFF_DAY: i32 = 150;
/// Departure day of every caravan.
const DEPARTURE_DAY: i32 = 18_000;
/// The operator's token.
const TOKEN: &str = "secret";
/// Stage lengths and the offer deadline of the test season, in milliseconds.
const DOCUMENTS_MS: i64 = 10_000;
const OFFER_MS: i64 = 5_000;

/// A valid national ID (check digit included) for holder number `n`.
fn nid(n: u64) -> u64 {
    let first9 = 271_828_000 + n;
    first9 * 10 + u64::from(national_id_check_digit(first9))
}

/// A holder's credentials as a client sends them.
#[derive(Clone, Debug)]
struct Holder {
    national_id: String,
    tracking_code: String,
}

fn holder(n: u64) -> Holder {
    Holder {
        national_id: format_national_id(nid(n)),
        tracking_code: format!("t{n}"),
    }
}

/// Holders of city A (province 1): numbers 0..7.
fn a(i: u64) -> Holder {
    holder(i)
}
/// Holders of city B (province 1): numbers 10..15.
fn b(i: u64) -> Holder {
    holder(10 + i)
}
/// Holders of city C (province 2): numbers 20..25.
fn c(i: u64) -> Holder {
    holder(20 + i)
}
/// Holders of city D (province 2): numbers 30..40.
fn d(i: u64) -> Holder {
    holder(30 + i)
}
/// City A's holder whose receipt needs conversion.
fn unconverted() -> Holder {
    holder(90)
}
/// City A's holder whose receipt is later than the wave's cutoff.
fn late() -> Holder {
    holder(91)
}

/// Province 1 "North": city A (a1 cap 2 medina_first group A, a2 cap 1 medina_second group B),
/// city B (b1 cap 1). Province 2 "South": city C (c1 cap 2), city D (d1..d7, cap 1 each).
fn catalog() -> Arc<Catalog> {
    let mut builder = CatalogBuilder::new();
    let north = builder.add_province(1, "North", "شمال").unwrap();
    let south = builder.add_province(2, "South", "جنوب").unwrap();
    let city_a = builder.city(north, "A");
    let city_b = builder.city(north, "B");
    let city_c = builder.city(south, "C");
    let city_d = builder.city(south, "D");
    let mut caravans = vec![
        ("a1", north, city_a, 2, Route::MedinaFirst, "A"),
        ("a2", north, city_a, 1, Route::MedinaSecond, "B"),
        ("b1", north, city_b, 1, Route::MedinaFirst, "A"),
        ("c1", south, city_c, 2, Route::MedinaFirst, "A"),
    ];
    let d_ids: Vec<String> = (1..=7).map(|i| format!("d{i}")).collect();
    for id in &d_ids {
        caravans.push((id, south, city_d, 1, Route::MedinaSecond, "C"));
    }
    for (id, province, city, capacity, route, group) in caravans {
        builder
            .add_caravan(Caravan {
                id: id.into(),
                province,
                city,
                manager: format!("Manager {id}"),
                phone: "021-5555".into(),
                price_group: group.into(),
                route,
                departure_day: DEPARTURE_DAY,
                price_rial: 1_500_000_000,
                capacity,
            })
            .unwrap();
    }
    let add = |builder: &mut CatalogBuilder, n: u64, day: i32, status, province, city| {
        builder
            .add_holder(
                nid(n),
                &format!("t{n}"),
                &format!("r{n}"),
                day,
                status,
                province,
                city,
            )
            .unwrap();
    };
    for (range, province, city) in [
        (0..7, north, city_a),
        (10..15, north, city_b),
        (20..25, south, city_c),
        (30..40, south, city_d),
    ] {
        for n in range {
            add(
                &mut builder,
                n,
                100 + n as i32,
                ReceiptStatus::Valid,
                province,
                city,
            );
        }
    }
    add(
        &mut builder,
        90,
        10,
        ReceiptStatus::NeedsConversion,
        north,
        city_a,
    );
    add(&mut builder, 91, 200, ReceiptStatus::Valid, north, city_a);
    Arc::new(builder.build())
}

/// One wave open since `opens_at_ms` for receipts up to [`CUTOFF_DAY`]; stages of 10, 20, 30
/// and 40 seconds; offers open 5 seconds.
fn season_opening_at(opens_at_ms: i64) -> Season {
    Season {
        schedule: Schedule {
            waves: vec![Wave {
                name: "main".into(),
                receipts_until_day: CUTOFF_DAY,
                opens_at_ms,
                provinces: None,
                admits_earlier_receipts: false,
            }],
        },
        stages: vec![
            (Stage::Documents, DOCUMENTS_MS),
            (Stage::FirstPayment, 20_000),
            (Stage::Medical, 30_000),
            (Stage::FinalPayment, 40_000),
        ],
        offer_deadline_ms: OFFER_MS,
    }
}

/// The operator token set, a generous per-holder rate and an uncached caravan list.
fn config() -> ApiConfig {
    ApiConfig {
        operator_token: Some(TOKEN.into()),
        per_holder: Rate {
            per_second: 1_000.0,
            burst: 1_000,
        },
        list_max_age: Duration::ZERO,
        ..ApiConfig::default()
    }
}

/// An app over an in-memory engine driven by a manual clock.
struct Fx {
    app: Router,
    engine: Arc<Engine>,
    clock: ManualClock,
}

impl Fx {
    fn new() -> Fx {
        Fx::build(season_opening_at(T0), config())
    }

    fn with_config(config: ApiConfig) -> Fx {
        Fx::build(season_opening_at(T0), config)
    }

    fn build(season: Season, config: ApiConfig) -> Fx {
        let catalog = catalog();
        let state = AppState::new(Arc::clone(&catalog), config, None);
        let clock = ManualClock::new(T0);
        let engine = Engine::in_memory(
            catalog,
            season,
            Arc::new(clock.clone()),
            EngineConfig {
                id_seed: Some(7),
                ..EngineConfig::default()
            },
        )
        .unwrap();
        state.set_engine(Arc::clone(&engine));
        Fx {
            app: app(state),
            engine,
            clock,
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        send(&self.app, method, uri, headers, body).await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, &[], None).await
    }

    /// `method uri` with the holder's credentials in the headers.
    async fn as_holder(&self, method: Method, uri: &str, h: &Holder) -> Resp {
        self.send(method, uri, &creds(h), None).await
    }

    /// `method uri` with the operator's token.
    async fn as_operator(&self, method: Method, uri: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.send(method, uri, &[("authorization", &auth)], body)
            .await
    }

    async fn reserve(&self, h: &Holder, caravan: &str) -> Resp {
        self.send(
            Method::POST,
            "/v1/reservations",
            &[],
            Some(&reserve_body(h, caravan)),
        )
        .await
    }

    async fn reserve_keyed(&self, h: &Holder, caravan: &str, key: &str) -> Resp {
        self.send(
            Method::POST,
            "/v1/reservations",
            &[("idempotency-key", key)],
            Some(&reserve_body(h, caravan)),
        )
        .await
    }

    /// Reserves and returns the new reservation's id.
    async fn reserve_ok(&self, h: &Holder, caravan: &str) -> String {
        let r = self.reserve(h, caravan).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    }

    async fn cancel(&self, h: &Holder, id: &str) -> Resp {
        self.as_holder(Method::DELETE, &format!("/v1/reservations/{id}"), h)
            .await
    }

    async fn join(&self, h: &Holder) -> Resp {
        self.send(Method::POST, "/v1/waitlist", &[], Some(&creds_body(h)))
            .await
    }

    async fn waitlist_me(&self, h: &Holder) -> Resp {
        self.as_holder(Method::GET, "/v1/waitlist/me", h).await
    }

    async fn accept(&self, h: &Holder, id: &str) -> Resp {
        self.send(
            Method::POST,
            &format!("/v1/reservations/{id}/accept"),
            &[],
            Some(&creds_body(h)),
        )
        .await
    }

    async fn event(&self, id: &str, kind: &str) -> Resp {
        self.as_operator(
            Method::POST,
            &format!("/v1/reservations/{id}/events"),
            Some(&json!({ "kind": kind }).to_string()),
        )
        .await
    }

    /// Free seats of caravan `id` as the public read shows them.
    async fn seats_free(&self, id: &str) -> u64 {
        let r = self.get(&format!("/v1/caravans/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["seats_free"].as_u64().unwrap()
    }

    /// Moves the clock by `ms` and runs the expiry pass.
    fn advance_and_expire(&self, ms: i64) -> usize {
        self.clock.advance(ms);
        self.engine.expire_due().unwrap().0
    }
}

fn reserve_body(h: &Holder, caravan: &str) -> String {
    json!({
        "national_id": h.national_id,
        "tracking_code": h.tracking_code,
        "caravan_id": caravan,
    })
    .to_string()
}

fn creds_body(h: &Holder) -> String {
    json!({ "national_id": h.national_id, "tracking_code": h.tracking_code }).to_string()
}

fn creds(h: &Holder) -> Vec<(&str, &str)> {
    vec![
        ("x-national-id", h.national_id.as_str()),
        ("x-tracking-code", h.tracking_code.as_str()),
    ]
}

// ------------------------------------------------------------------------------------------
// Sending requests and checking answers
// ------------------------------------------------------------------------------------------

/// An answer: status, headers, the body as JSON (`Null` if empty, a string if not JSON) and as
/// text.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request; a body is sent as `application/json`.
async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut builder = Request::builder().method(method).uri(uri);
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
    send_request(app, builder.body(body).unwrap()).await
}

/// Sends a request built by the caller.
async fn send_request(app: &Router, request: Request<Body>) -> Resp {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(text.clone()))
    };
    Resp {
        status,
        headers,
        body,
        text,
    }
}

/// Checks an RFC 9457 problem document with `status` and `code`.
#[track_caller]
fn assert_problem(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "problem content type; body: {}",
        r.text
    );
    let p = &r.body;
    assert_eq!(p["type"], "about:blank", "{}", r.text);
    assert!(
        p["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{}",
        r.text
    );
    assert_eq!(p["status"], status.as_u16(), "{}", r.text);
    assert_eq!(p["code"], code, "{}", r.text);
    assert!(
        p["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{}",
        r.text
    );
}

/// Checks that `r` is no server error and, if it is a client error, a problem document.
#[track_caller]
fn assert_handled(r: &Resp, what: &str) {
    assert!(
        !r.status.is_server_error(),
        "{what}: {} {}",
        r.status,
        r.text
    );
    if r.status.is_client_error() {
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{what}: {} {}",
            r.status,
            r.text
        );
    }
}

#[track_caller]
fn assert_rfc3339_utc(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let bytes = text.as_bytes();
    assert!(
        text.len() >= 20
            && text.ends_with('Z')
            && bytes[4] == b'-'
            && bytes[7] == b'-'
            && bytes[10] == b'T'
            && bytes[13] == b':'
            && bytes[16] == b':',
        "not RFC 3339 UTC: {text}"
    );
}

#[track_caller]
fn assert_jalali_wall_clock(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let (date, time) = text.split_once(' ').unwrap();
    assert!(JalaliDate::parse(date).is_ok(), "not a Jalali date: {text}");
    assert!(time.len() >= 5 && time.as_bytes()[2] == b':', "{text}");
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn jalali_day(day: i32) -> String {
    JalaliDate::from_day_number(day).unwrap().to_string()
}

// ------------------------------------------------------------------------------------------
// Operations
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_answers_even_before_recovery() {
    let state = AppState::new(catalog(), config(), None);
    let r = send(&app(state), Method::GET, "/healthz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, "ok\n");
}

#[tokio::test]
async fn readyz_and_v1_answer_503_not_ready_until_the_engine_is_set() {
    let catalog = catalog();
    let state = AppState::new(Arc::clone(&catalog), config(), None);
    let router = app(state.clone());
    let r = send(&router, Method::GET, "/readyz", &[], None).await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    assert_eq!(r.header("retry-after"), Some("1"));
    for uri in ["/v1/waves", "/v1/provinces", "/v1/provinces/1/caravans"] {
        let r = send(&router, Method::GET, uri, &[], None).await;
        assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
        assert_eq!(r.header("retry-after"), Some("1"), "{uri}");
    }
    let r = send(
        &router,
        Method::POST,
        "/v1/reservations",
        &[],
        Some(&reserve_body(&a(0), "a1")),
    )
    .await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "not_ready");

    let engine = Engine::in_memory(
        catalog,
        season_opening_at(T0),
        Arc::new(ManualClock::new(T0)),
        EngineConfig::default(),
    )
    .unwrap();
    state.set_engine(engine);
    let r = send(&router, Method::GET, "/readyz", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&router, Method::GET, "/v1/waves", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn openapi_is_3_1_and_lists_every_contract_path() {
    let fx = Fx::new();
    let r = fx.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert!(
        r.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        r.body["openapi"]
    );
    let paths = &r.body["paths"];
    for (path, methods) in [
        ("/v1/waves", &["get"][..]),
        ("/v1/provinces", &["get"]),
        ("/v1/provinces/{id}/caravans", &["get"]),
        ("/v1/caravans/{id}", &["get"]),
        ("/v1/reservations", &["post"]),
        ("/v1/reservations/{id}", &["get", "delete"]),
        ("/v1/reservations/{id}/accept", &["post"]),
        ("/v1/reservations/{id}/events", &["post"]),
        ("/v1/waitlist", &["post"]),
        ("/v1/waitlist/me", &["get"]),
        ("/v1/admin/reservations", &["get"]),
        ("/v1/admin/stats", &["get"]),
        ("/v1/admin/waves", &["put"]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
    assert!(r.body["components"]["schemas"]["Problem"].is_object());
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn metrics_answers_prometheus_text() {
    let fx = Fx::new();
    let r = fx.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

// ------------------------------------------------------------------------------------------
// Public reads
// ------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------
// POST /v1/reservations
// ------------------------------------------------------------------------------------------

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
async fn a_body_over_16_kib_is_413() {
    let fx = Fx::new();
    let padding = "x".repeat(17 * 1024);
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": padding,
        "caravan_id": "a1",
    })
    .to_string();
    let r = fx
        .send(Method::POST, "/v1/reservations", &[], Some(&body))
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Without a Content-Length (a streamed body) too.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(body.clone())];
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/waitlist")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::new(IterBody(chunks.into_iter())))
        .unwrap();
    let r = send_request(&fx.app, req).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Just under the limit is parsed (and refused for what it says, not for its size).
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": "x".repeat(15 * 1024),
        "caravan_id": "a1",
    })
    .to_string();
    let r = fx
        .send(Method::POST, "/v1/reservations", &[], Some(&body))
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_credentials");
}

/// A body of chunks without a size hint (as a client streaming without `Content-Length`).
struct IterBody(std::vec::IntoIter<Result<String, std::io::Error>>);

impl axum::body::HttpBody for IterBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(
            self.0
                .next()
                .map(|chunk| chunk.map(|s| hyper::body::Frame::data(s.into()))),
        )
    }
}

#[tokio::test]
async fn an_accept_body_over_16_kib_is_413_problem_json() {
    let fx = Fx::new();
    let body = json!({
        "national_id": a(0).national_id,
        "tracking_code": "x".repeat(17 * 1024),
    })
    .to_string();
    let r = fx
        .send(
            Method::POST,
            &format!("/v1/reservations/{}/accept", "0".repeat(32)),
            &[],
            Some(&body),
        )
        .await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
}

#[tokio::test]
async fn too_many_requests_per_holder_is_429_with_retry_after() {
    let fx = Fx::with_config(ApiConfig {
        per_holder: Rate {
            per_second: 1.0,
            burst: 1,
        },
        ..config()
    });
    fx.reserve_ok(&a(0), "a1").await;
    let r = fx.reserve(&a(0), "a1").await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Every applicant endpoint counts against the same holder.
    let r = fx.waitlist_me(&a(0)).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Someone else is not slowed down.
    fx.reserve_ok(&a(1), "a1").await;
    // Public reads are not limited per holder.
    assert_eq!(fx.get("/v1/provinces").await.status, StatusCode::OK);
}

#[tokio::test]
async fn too_many_requests_per_client_address_is_429_with_retry_after() {
    let fx = Fx::with_config(ApiConfig {
        per_client: Rate {
            per_second: 1.0,
            burst: 2,
        },
        ..config()
    });
    let from = |ip: [u8; 4]| {
        let mut req = Request::builder()
            .uri("/v1/waves")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::from((ip, 40_000))));
        req
    };
    for _ in 0..2 {
        let r = send_request(&fx.app, from([10, 0, 0, 1])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = send_request(&fx.app, from([10, 0, 0, 1])).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let seconds: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&seconds), "{seconds}");
    let r = send_request(&fx.app, from([10, 0, 0, 2])).await;
    assert_eq!(r.status, StatusCode::OK);
    // Operations endpoints are outside the limit.
    let mut req = Request::builder()
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 1], 1))));
    assert_eq!(send_request(&fx.app, req).await.status, StatusCode::OK);
}

/// A request whose body has not arrived holds its admission permit: with `max_in_flight` 1,
/// every other `/v1` request is shed with `503 overloaded` until it completes. The slow
/// request goes through hyper over an in-memory pipe, so its body can be held back.
#[tokio::test]
async fn a_full_house_is_503_overloaded_with_retry_after() {
    let fx = Fx::with_config(ApiConfig {
        max_in_flight: 1,
        ..config()
    });
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let service = hyper_util::service::TowerToHyperService::new(fx.app.clone());
    let connection = tokio::spawn(async move {
        hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .await
    });
    let body = reserve_body(&a(0), "a1");
    let head = format!(
        "POST /v1/reservations HTTP/1.1\r\nhost: miqat\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body.as_bytes()[..1]).await.unwrap();

    let mut shed = None;
    for _ in 0..2_000 {
        let r = fx.get("/v1/waves").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = shed.expect("the held request never took the only permit");
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = fx.reserve(&a(1), "a1").await;
    assert_problem(&r, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    // Operations endpoints are not shed.
    assert_eq!(fx.get("/healthz").await.status, StatusCode::OK);

    // The rest of the body arrives: the held request completes, and the house is open again.
    client.write_all(&body.as_bytes()[1..]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let mut open = false;
    for _ in 0..2_000 {
        if fx.get("/v1/waves").await.status == StatusCode::OK {
            open = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(open, "the permit was never given back");
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
}

// ------------------------------------------------------------------------------------------
// Idempotency
// ------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------
// Applicant reads and changes
// ------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------
// Operator
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn operator_endpoints_need_the_token() {
    let fx = Fx::new();
    let id = fx.reserve_ok(&a(0), "a1").await;
    let event_uri = format!("/v1/reservations/{id}/events");
    let event_body = json!({"kind": "documents_received"}).to_string();
    let waves_body = json!([{"name": "main", "receipts_until": jalali_day(CUTOFF_DAY),
                             "opens_at": format_rfc3339_utc(T0)}])
    .to_string();
    let requests: Vec<(Method, &str, Option<&str>)> = vec![
        (Method::POST, &event_uri, Some(&event_body)),
        (Method::GET, "/v1/admin/reservations", None),
        (Method::GET, "/v1/admin/stats", None),
        (Method::PUT, "/v1/admin/waves", Some(&waves_body)),
    ];
    for (method, uri, body) in &requests {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer "),
            Some("secret"),
            Some("Basic c2VjcmV0"),
            Some("Bearer secret2"),
            Some("bearer secre"),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let r = fx.send(method.clone(), uri, &headers, *body).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {auth:?}: {}",
                r.text
            );
            assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let r = fx.as_operator(method.clone(), uri, *body).await;
        assert_eq!(r.status, StatusCode::OK, "{method} {uri}: {}", r.text);
    }
    // An applicant's credentials are no operator token.
    let holder_a0 = a(0);
    let mut headers = creds(&holder_a0);
    headers.push(("authorization", "Bearer t0"));
    let r = fx
        .send(Method::GET, "/v1/admin/stats", &headers, None)
        .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // Without a configured token the operator endpoints are closed to everyone.
    let closed = Fx::with_config(ApiConfig {
        operator_token: None,
        ..config()
    });
    for auth in ["Bearer ", "Bearer secret"] {
        let r = closed
            .send(
                Method::GET,
                "/v1/admin/stats",
                &[("authorization", auth)],
                None,
            )
            .await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

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

/// Five reservations for the admin reads, in creation order: a0 and a1 hold a1, a2 is
/// confirmed in a2, b0 cancelled b1, c0 holds c1.
async fn admin_fixture() -> (Fx, Vec<String>) {
    let fx = Fx::new();
    let mut ids = Vec::new();
    ids.push(fx.reserve_ok(&a(0), "a1").await);
    ids.push(fx.reserve_ok(&a(1), "a1").await);
    ids.push(fx.reserve_ok(&a(2), "a2").await);
    ids.push(fx.reserve_ok(&b(0), "b1").await);
    ids.push(fx.reserve_ok(&c(0), "c1").await);
    for kind in [
        "documents_received",
        "first_payment_received",
        "medical_approved",
        "final_payment_received",
    ] {
        assert_eq!(fx.event(&ids[2], kind).await.status, StatusCode::OK);
    }
    assert_eq!(fx.cancel(&b(0), &ids[3]).await.status, StatusCode::OK);
    (fx, ids)
}

#[tokio::test]
async fn admin_reservations_filter_and_page() {
    let (fx, ids) = admin_fixture().await;
    let list = |q: String| {
        let fx = &fx;
        async move {
            let r = fx
                .as_operator(Method::GET, &format!("/v1/admin/reservations{q}"), None)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text);
            assert_eq!(r.header("content-type"), Some("application/json"));
            r.body
        }
    };
    let all = list(String::new()).await;
    assert_eq!(ids_of(&all["items"]), ids);
    assert_eq!(all["offset"], 0);
    assert_eq!(all["limit"], 1_000);
    assert!(all["next_offset"].is_null());
    let first = &all["items"][0];
    for member in [
        "id",
        "national_id",
        "caravan_id",
        "province_id",
        "status",
        "stage",
        "deadline",
        "deadline_jalali",
        "created_at",
        "updated_at",
    ] {
        assert!(first.get(member).is_some(), "{member} missing: {first}");
    }

    assert_eq!(ids_of(&list("?province=1".into()).await["items"]), ids[..4]);
    assert_eq!(ids_of(&list("?province=2".into()).await["items"]), ids[4..]);
    assert_eq!(ids_of(&list("?caravan=a1".into()).await["items"]), ids[..2]);
    assert_eq!(
        ids_of(&list("?status=held".into()).await["items"]),
        [ids[0].clone(), ids[1].clone(), ids[4].clone()]
    );
    assert_eq!(
        ids_of(&list("?status=confirmed".into()).await["items"]),
        [ids[2].clone()]
    );
    assert_eq!(
        ids_of(&list("?status=cancelled&province=1".into()).await["items"]),
        [ids[3].clone()]
    );
    assert_eq!(
        ids_of(&list("?status=held&province=1&caravan=a1".into()).await["items"]),
        ids[..2]
    );
    assert_eq!(list("?status=expired".into()).await["items"], json!([]));

    // Pages of two.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = list(format!("?limit=2&offset={offset}")).await;
        assert_eq!(page["offset"], offset);
        assert_eq!(page["limit"], 2);
        seen.extend(ids_of(&page["items"]));
        match page["next_offset"].as_u64() {
            Some(next) => {
                assert_eq!(next, offset as u64 + 2);
                offset = next as usize;
            }
            None => break,
        }
        assert!(seen.len() <= ids.len(), "paging never ends");
    }
    assert_eq!(seen, ids);
    let page = list("?offset=100".into()).await;
    assert_eq!(page["items"], json!([]));
    assert!(page["next_offset"].is_null());
    // The page size is capped.
    assert_eq!(list("?limit=1000000".into()).await["limit"], 10_000);
}

#[tokio::test]
async fn admin_reservations_export_csv_with_a_header_row() {
    let (fx, ids) = admin_fixture().await;
    let auth = format!("Bearer {TOKEN}");
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/reservations",
            &[("authorization", &auth), ("accept", "text/csv")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(
        lines[0],
        "id,national_id,caravan_id,province_id,status,stage,deadline,created_at,updated_at,end_reason"
    );
    assert_eq!(lines.len(), 1 + ids.len(), "{}", r.text);
    for (line, id) in lines[1..].iter().zip(&ids) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 10, "{line}");
        assert_eq!(fields[0], id);
    }
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(first[1], a(0).national_id);
    assert_eq!(first[2], "a1");
    assert_eq!(first[3], "1");
    assert_eq!(first[4], "held");
    assert_eq!(first[5], "documents");
    assert_eq!(first[6], format_rfc3339_utc(T0 + DOCUMENTS_MS));
    let cancelled: Vec<&str> = lines[4].split(',').collect();
    assert_eq!(cancelled[4], "cancelled");
    assert_eq!(cancelled[9], "holder_cancelled");

    // Filters apply to the export too.
    let r = fx
        .send(
            Method::GET,
            "/v1/admin/reservations?status=confirmed",
            &[
                ("authorization", &auth),
                ("accept", "text/csv, application/json;q=0.5"),
            ],
            None,
        )
        .await;
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.text);
    assert!(lines[1].starts_with(&ids[2]));
}

#[tokio::test]
async fn admin_reservations_with_bad_filters_are_422() {
    let fx = Fx::new();
    for q in [
        "?province=9",
        "?province=north",
        "?caravan=zz",
        "?status=pending",
        "?limit=-1",
        "?offset=x",
        "?colour=red",
    ] {
        let r = fx
            .as_operator(Method::GET, &format!("/v1/admin/reservations{q}"), None)
            .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    }
}

#[tokio::test]
async fn admin_stats_count_seats_and_reservations() {
    let (fx, _ids) = admin_fixture().await;
    let stats = || async { fx.as_operator(Method::GET, "/v1/admin/stats", None).await };
    let r = stats().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({
            "seats_total": 13,
            "seats_free": 9,
            "reservations": {"offered": 0, "held": 3, "confirmed": 1, "cancelled": 1,
                             "expired": 0, "rejected": 0},
            "waiting": 0,
            "expirations": 0,
            "log_records": 0,
            "log_records_since_start": 0,
            "log_fsyncs": 0,
        })
    );
    // City B full again, one waiter; then every hold's documents deadline passes: the held
    // a0, a1, c0 and b1 expire, b2 gets b1's seat as an offer, the confirmed a2 stays.
    fx.reserve_ok(&b(1), "b1").await;
    assert_eq!(fx.join(&b(2)).await.status, StatusCode::CREATED);
    let r = stats().await;
    assert_eq!(r.body["waiting"], 1);
    assert_eq!(r.body["reservations"]["held"], 4);
    assert_eq!(r.body["seats_free"], 8);
    assert_eq!(fx.advance_and_expire(DOCUMENTS_MS), 4);
    let r = stats().await;
    assert_eq!(
        r.body["reservations"],
        json!({"offered": 1, "held": 0, "confirmed": 1, "cancelled": 1, "expired": 4,
               "rejected": 0})
    );
    assert_eq!(r.body["waiting"], 0);
    assert_eq!(r.body["expirations"], 4);
    assert_eq!(r.body["seats_free"], 11);
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

#[tokio::test]
async fn admin_stats_log_counters_continue_after_a_restart() {
    use miqat_engine::wal::{MemStorage, Storage};
    let storage = MemStorage::new();
    let clock = ManualClock::new(T0);
    let start = || {
        let catalog = catalog();
        let storage: Arc<dyn Storage> = Arc::new(storage.clone());
        let (engine, _) = Engine::open(
            Arc::clone(&catalog),
            season_opening_at(T0),
            Arc::new(clock.clone()),
            storage,
            EngineConfig::default(),
        )
        .unwrap();
        let state = AppState::new(catalog, config(), None);
        state.set_engine(Arc::clone(&engine));
        Fx {
            app: app(state),
            engine,
            clock: clock.clone(),
        }
    };
    let stats = |fx: &Fx| {
        let fx_app = fx.app.clone();
        async move {
            let auth = format!("Bearer {TOKEN}");
            let r = send(
                &fx_app,
                Method::GET,
                "/v1/admin/stats",
                &[("authorization", &auth)],
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            r.body
        }
    };
    let fx = start();
    fx.reserve_ok(&a(0), "a1").await;
    let id = fx.reserve_ok(&b(0), "b1").await;
    assert_eq!(fx.cancel(&b(0), &id).await.status, StatusCode::OK);
    let before = stats(&fx).await;
    assert_eq!(before["log_records"], 3);
    assert_eq!(before["log_records_since_start"], 3);
    fx.engine.shutdown().unwrap();
    drop(fx);
    let fx = start();
    let after = stats(&fx).await;
    assert_eq!(after["log_records"], 3, "{after}");
    assert_eq!(after["log_records_since_start"], 0, "{after}");
    fx.reserve_ok(&a(1), "a1").await;
    assert_eq!(stats(&fx).await["log_records"], 4);
}

// ------------------------------------------------------------------------------------------
// Robustness: hostile input is refused, never a 500 or a panic
// ------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------
// A request cancelled while it waits for durability
// ------------------------------------------------------------------------------------------

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
