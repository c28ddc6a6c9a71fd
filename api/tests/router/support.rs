//! What the router's tests share: the catalog and season they run on, the app over an
//! in-memory engine on a manual clock (`Fx`), request helpers, and checks of answers
//! (problem documents, RFC 3339 and Jalali times). Its `use`s are the tests' prelude.

pub use std::sync::Arc;
pub use std::time::Duration;

pub use axum::Router;
pub use axum::body::Body;
pub use axum::extract::ConnectInfo;
pub use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
pub use http_body_util::BodyExt;
pub use miqat_api::limits::Rate;
pub use miqat_api::{ApiConfig, AppState, app};
pub use miqat_engine::calendar::{
    JalaliDate, format_national_id, format_rfc3339_utc, format_tehran_jalali,
    national_id_check_digit, parse_national_id,
};
pub use miqat_engine::catalog::Catalog;
pub use miqat_engine::clock::ManualClock;
pub use miqat_engine::season::Season;

use crate::fixture;
pub use miqat_engine::{Engine, EngineConfig};
pub use serde_json::{Value, json};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tower::ServiceExt;

// ------------------------------------------------------------------------------------------
// Catalog, season and fixture
// ------------------------------------------------------------------------------------------

/// The instant every test starts at (2020-09-13T12:26:40Z).
pub const T0: i64 = fixture::T0;
/// Receipts deposited on or before this day are called by the test wave.
pub const CUTOFF_DAY: i32 = 150;
/// Departure day of every caravan.
pub const DEPARTURE_DAY: i32 = 18_000;
/// The operator's token.
pub const TOKEN: &str = "secret";
/// Stage lengths and the offer deadline of the test season, in milliseconds.
pub const DOCUMENTS_MS: i64 = 10_000;
pub const OFFER_MS: i64 = 5_000;

/// A valid national ID (check digit included) for holder number `n`.
pub fn nid(n: u64) -> u64 {
    let first9 = 271_828_000 + n;
    first9 * 10 + u64::from(national_id_check_digit(first9))
}

/// A holder's credentials as a client sends them.
#[derive(Clone, Debug)]
pub struct Holder {
    pub national_id: String,
    pub tracking_code: String,
}

pub fn holder(n: u64) -> Holder {
    Holder {
        national_id: format_national_id(nid(n)),
        tracking_code: format!("t{n}"),
    }
}

/// Holders of city A (province 1): numbers 0..7.
pub fn a(i: u64) -> Holder {
    holder(i)
}
/// Holders of city B (province 1): numbers 10..15.
pub fn b(i: u64) -> Holder {
    holder(10 + i)
}
/// Holders of city C (province 2): numbers 20..25.
pub fn c(i: u64) -> Holder {
    holder(20 + i)
}
/// Holders of city D (province 2): numbers 30..40.
pub fn d(i: u64) -> Holder {
    holder(30 + i)
}
/// City A's holder whose receipt needs conversion.
pub fn unconverted() -> Holder {
    holder(90)
}
/// City A's holder whose receipt is later than the wave's cutoff.
pub fn late() -> Holder {
    holder(91)
}

/// The catalog and season, in the fixture language (see `fixture.rs` for its grammar).
/// Holders are numbered: city A 0..7, B 10..15, C 20..25, D 30..40, receipt day 100 + n; in
/// city A, 90's receipt needs conversion and 91's is later than the wave's cutoff.
pub const FIXTURE: &str = "
    province 1 North شمال: city A: a1 cap 2, a2 cap 1 medina_second group B; city B: b1 cap 1
    province 2 South جنوب: city C: c1 cap 2; city D: d1..=d7 cap 1 medina_second group C
    caravans: manager Manager {id}; phone 021-5555; price 1500000000
    holders: ids checked from 271828000; receipts from day 100; A 0..7; B 10..15; C 20..25
    holders: D 30..40; 90 needs_conversion day 10 in A; 91 day 200 in A
    wave main until day 150 opens T0
    stages: documents 10s, first_payment 20s, medical 30s, final_payment 40s; offers 5s
";

/// The catalog of [`FIXTURE`]: province 1 "North" with cities A (a1, a2) and B (b1), province
/// 2 "South" with cities C (c1) and D (d1..d7).
pub fn catalog() -> Arc<Catalog> {
    let fx = fixture::parse(FIXTURE);
    assert!(
        fx.catalog
            .caravans()
            .iter()
            .all(|c| c.departure_day == DEPARTURE_DAY)
    );
    assert_eq!(
        fx.national_id(7),
        nid(7),
        "the fixture numbers holders as `nid` does"
    );
    fx.catalog
}

/// The season of [`FIXTURE`] with its wave opening at `opens_at_ms`: receipts up to
/// [`CUTOFF_DAY`]; stages of 10, 20, 30 and 40 seconds; offers open 5 seconds.
pub fn season_opening_at(opens_at_ms: i64) -> Season {
    let mut season = fixture::parse(FIXTURE).season;
    assert_eq!(season.stages[0].1, DOCUMENTS_MS);
    assert_eq!(season.offer_deadline_ms, OFFER_MS);
    let wave = &mut season.schedule.waves[0];
    assert_eq!(wave.receipts_until_day, CUTOFF_DAY);
    wave.opens_at_ms = opens_at_ms;
    season
}

/// The operator token set, a generous per-holder rate and an uncached caravan list.
pub fn config() -> ApiConfig {
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
pub struct Fx {
    pub app: Router,
    pub engine: Arc<Engine>,
    pub clock: ManualClock,
}

impl Fx {
    pub fn new() -> Fx {
        Fx::build(season_opening_at(T0), config())
    }

    pub fn with_config(config: ApiConfig) -> Fx {
        Fx::build(season_opening_at(T0), config)
    }

    pub fn build(season: Season, config: ApiConfig) -> Fx {
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

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        send(&self.app, method, uri, headers, body).await
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, &[], None).await
    }

    /// `method uri` with the holder's credentials in the headers.
    pub async fn as_holder(&self, method: Method, uri: &str, h: &Holder) -> Resp {
        self.send(method, uri, &creds(h), None).await
    }

    /// `method uri` with the operator's token.
    pub async fn as_operator(&self, method: Method, uri: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.send(method, uri, &[("authorization", &auth)], body)
            .await
    }

    pub async fn reserve(&self, h: &Holder, caravan: &str) -> Resp {
        self.send(
            Method::POST,
            "/v1/reservations",
            &[],
            Some(&reserve_body(h, caravan)),
        )
        .await
    }

    pub async fn reserve_keyed(&self, h: &Holder, caravan: &str, key: &str) -> Resp {
        self.send(
            Method::POST,
            "/v1/reservations",
            &[("idempotency-key", key)],
            Some(&reserve_body(h, caravan)),
        )
        .await
    }

    /// Reserves and returns the new reservation's id.
    pub async fn reserve_ok(&self, h: &Holder, caravan: &str) -> String {
        let r = self.reserve(h, caravan).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn cancel(&self, h: &Holder, id: &str) -> Resp {
        self.as_holder(Method::DELETE, &format!("/v1/reservations/{id}"), h)
            .await
    }

    pub async fn join(&self, h: &Holder) -> Resp {
        self.send(Method::POST, "/v1/waitlist", &[], Some(&creds_body(h)))
            .await
    }

    pub async fn waitlist_me(&self, h: &Holder) -> Resp {
        self.as_holder(Method::GET, "/v1/waitlist/me", h).await
    }

    pub async fn accept(&self, h: &Holder, id: &str) -> Resp {
        self.send(
            Method::POST,
            &format!("/v1/reservations/{id}/accept"),
            &[],
            Some(&creds_body(h)),
        )
        .await
    }

    pub async fn event(&self, id: &str, kind: &str) -> Resp {
        self.as_operator(
            Method::POST,
            &format!("/v1/reservations/{id}/events"),
            Some(&json!({ "kind": kind }).to_string()),
        )
        .await
    }

    /// Free seats of caravan `id` as the public read shows them.
    pub async fn seats_free(&self, id: &str) -> u64 {
        let r = self.get(&format!("/v1/caravans/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["seats_free"].as_u64().unwrap()
    }

    /// Moves the clock by `ms` and runs the expiry pass.
    pub fn advance_and_expire(&self, ms: i64) -> usize {
        self.clock.advance(ms);
        self.engine.expire_due().unwrap().0
    }
}

pub fn reserve_body(h: &Holder, caravan: &str) -> String {
    json!({
        "national_id": h.national_id,
        "tracking_code": h.tracking_code,
        "caravan_id": caravan,
    })
    .to_string()
}

pub fn creds_body(h: &Holder) -> String {
    json!({ "national_id": h.national_id, "tracking_code": h.tracking_code }).to_string()
}

pub fn creds(h: &Holder) -> Vec<(&str, &str)> {
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
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request; a body is sent as `application/json`.
pub async fn send(
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
pub async fn send_request(app: &Router, request: Request<Body>) -> Resp {
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
pub fn assert_problem(r: &Resp, status: StatusCode, code: &str) {
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
pub fn assert_handled(r: &Resp, what: &str) {
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
pub fn assert_rfc3339_utc(value: &Value) {
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
pub fn assert_jalali_wall_clock(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    let (date, time) = text.split_once(' ').unwrap();
    assert!(JalaliDate::parse(date).is_ok(), "not a Jalali date: {text}");
    assert!(time.len() >= 5 && time.as_bytes()[2] == b':', "{text}");
}

pub fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn jalali_day(day: i32) -> String {
    JalaliDate::from_day_number(day).unwrap().to_string()
}
