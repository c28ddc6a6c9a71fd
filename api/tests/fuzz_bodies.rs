//! Byte fuzzer (proptest, stable Rust) for the JSON bodies of every POST, PUT and DELETE route,
//! driven through `miqat_api::app` with `tower::ServiceExt::oneshot`: arbitrary bytes,
//! arbitrary JSON, and valid bodies with fields replaced, removed, added or their text
//! mutated. Every answer is a success or a 4xx in `application/problem+json` with a `code`;
//! never a 5xx, never a panic. Cases: `MIQAT_FUZZ_CASES` (see `docs/testing.md`).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use miqat_api::limits::Rate;
use miqat_api::{ApiConfig, AppState, app};
use miqat_engine::calendar::{format_national_id, national_id_check_digit};
use miqat_engine::catalog::{Caravan, Catalog, CatalogBuilder, ReceiptStatus, Route};
use miqat_engine::clock::ManualClock;
use miqat_engine::season::{Schedule, Season, Stage, Wave};
use miqat_engine::{Engine, EngineConfig};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Cases per target when `MIQAT_FUZZ_CASES` is not set.
const CASES_DEFAULT: u32 = 1_000;
/// The instant the tests run at.
const T0: i64 = 1_600_000_000_000;
/// The operator's token.
const TOKEN: &str = "secret";

fn config() -> ProptestConfig {
    let cases = std::env::var("MIQAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT);
    ProptestConfig {
        cases,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------------
// A small world: one province, one city, two caravans, four holders
// ------------------------------------------------------------------------------------------

fn nid(n: u64) -> String {
    let first9 = 314_159_000 + n;
    format_national_id(first9 * 10 + u64::from(national_id_check_digit(first9)))
}

fn catalog() -> Arc<Catalog> {
    let mut b = CatalogBuilder::new();
    let province = b.add_province(1, "North", "شمال").unwrap();
    let city = b.city(province, "A");
    for (id, capacity) in [("a1", 1), ("a2", 2)] {
        b.add_caravan(Caravan {
            id: id.into(),
            province,
            city,
            manager: "M".into(),
            phone: "0".into(),
            price_group: "A".into(),
            route: Route::MedinaFirst,
            departure_day: 18_000,
            price_rial: 1,
            capacity,
        })
        .unwrap();
    }
    for n in 0..4u64 {
        let first9 = 314_159_000 + n;
        b.add_holder(
            first9 * 10 + u64::from(national_id_check_digit(first9)),
            &format!("t{n}"),
            &format!("r{n}"),
            100,
            ReceiptStatus::Valid,
            province,
            city,
        )
        .unwrap();
    }
    Arc::new(b.build())
}

fn season() -> Season {
    Season {
        schedule: Schedule {
            waves: vec![Wave {
                name: "main".into(),
                receipts_until_day: 150,
                opens_at_ms: T0,
                provinces: None,
                admits_earlier_receipts: false,
            }],
        },
        stages: vec![(Stage::Documents, 10_000), (Stage::Medical, 20_000)],
        offer_deadline_ms: 5_000,
        rooms: Vec::new(),
    }
}

/// An app whose holder 0 holds a1 (so ids in paths can name a real reservation).
struct World {
    app: Router,
    reservation: String,
}

fn world() -> World {
    let catalog = catalog();
    let config = ApiConfig {
        operator_token: Some(TOKEN.into()),
        per_holder: Rate {
            per_second: 1_000_000.0,
            burst: 1_000_000,
        },
        list_max_age: Duration::ZERO,
        ..ApiConfig::default()
    };
    let state = AppState::new(Arc::clone(&catalog), config, None);
    let engine = Engine::in_memory(
        catalog,
        season(),
        Arc::new(ManualClock::new(T0 + 1)),
        EngineConfig {
            id_seed: Some(7),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let holder = engine
        .catalog()
        .holder_by_national_id(nid(0).parse().unwrap())
        .unwrap();
    let caravan = engine.catalog().caravan_by_id("a1").unwrap();
    let reservation = engine
        .reserve(holder, caravan, None)
        .unwrap()
        .value
        .reservation
        .id;
    state.set_engine(engine);
    World {
        app: app(state),
        reservation: reservation.to_string(),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

// ------------------------------------------------------------------------------------------
// Routes and bodies
// ------------------------------------------------------------------------------------------

/// A route that takes a body (or, for DELETE, none but headers), with a valid body for it.
#[derive(Clone, Copy, Debug)]
enum Target {
    Reserve,
    Cancel,
    Accept,
    Event,
    Join,
    Waves,
}

const TARGETS: [Target; 6] = [
    Target::Reserve,
    Target::Cancel,
    Target::Accept,
    Target::Event,
    Target::Join,
    Target::Waves,
];

impl Target {
    fn method(self) -> Method {
        match self {
            Target::Cancel => Method::DELETE,
            Target::Waves => Method::PUT,
            _ => Method::POST,
        }
    }

    fn path(self, id: &str) -> String {
        match self {
            Target::Reserve => "/v1/reservations".into(),
            Target::Cancel => format!("/v1/reservations/{id}"),
            Target::Accept => format!("/v1/reservations/{id}/accept"),
            Target::Event => format!("/v1/reservations/{id}/events"),
            Target::Join => "/v1/waitlist".into(),
            Target::Waves => "/v1/admin/waves".into(),
        }
    }

    fn valid_body(self) -> Value {
        let creds = json!({ "national_id": nid(1), "tracking_code": "t1" });
        match self {
            Target::Reserve => {
                json!({ "national_id": nid(1), "tracking_code": "t1", "caravan_id": "a2" })
            }
            Target::Cancel | Target::Accept | Target::Join => creds,
            Target::Event => json!({ "kind": "documents_received" }),
            Target::Waves => json!([
                { "name": "main", "receipts_until": "1386/01/31",
                  "opens_at": "1398/12/09 10:00", "provinces": [1],
                  "admits_earlier_receipts": true },
                { "name": "late", "receipts_until": "1390/01/01",
                  "opens_at": "2020-09-20T00:00:00Z" }
            ]),
        }
    }
}

/// Strings that break fields: empty, huge numbers, impossible dates, odd characters.
const WORDS: [&str; 18] = [
    "",
    " ",
    "0",
    "-1",
    "18446744073709551616",
    "۱۲۳۴۵۶۷۸۹۰",
    "1403/13/40",
    "0000/00/00",
    "9999/12/29",
    "-9999/01/01 00:00",
    "9999-12-31T23:59:59Z",
    "-009999-01-01T00:00:00Z",
    "+275760-09-13T00:00:00Z",
    "1398/12/09 25:61",
    "\u{0}",
    "\u{202e}",
    "documents_received",
    "a1",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS.to_vec()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "national_id", "tracking_code", "caravan_id", "kind", "name", "receipts_until",
            "opens_at", "opens_at_jalali", "provinces", "admits_earlier_receipts",
        ]).prop_map(str::to_owned),
        1 => "[a-z_]{0,8}",
    ]
}

/// A change to a valid body.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace (or add) a field of the body, or of one of its array's objects.
    Set(Index, String, Value),
    /// Remove a field.
    Remove(Index, Index),
    /// Replace the whole body.
    Whole(Value),
    /// Deeply nested arrays.
    Nest(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), field_name(), json_value()).prop_map(|(i, k, v)| Edit::Set(i, k, v)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, k)| Edit::Remove(i, k)),
        1 => json_value().prop_map(Edit::Whole),
        1 => (1usize..300).prop_map(Edit::Nest),
    ]
}

/// The objects of a body: itself, or its array's elements.
fn objects(body: &mut Value) -> Vec<&mut serde_json::Map<String, Value>> {
    match body {
        Value::Object(map) => vec![map],
        Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).collect(),
        _ => Vec::new(),
    }
}

fn apply(body: &mut Value, edits: &[Edit]) {
    for e in edits {
        match e {
            Edit::Set(i, key, value) => {
                let mut objs = objects(body);
                if !objs.is_empty() {
                    let n = objs.len();
                    objs[i.index(n)].insert(key.clone(), value.clone());
                }
            }
            Edit::Remove(i, k) => {
                let mut objs = objects(body);
                if !objs.is_empty() {
                    let n = objs.len();
                    let obj = &mut objs[i.index(n)];
                    if let Some(key) = obj.keys().nth(k.index(obj.len().max(1))).cloned() {
                        obj.remove(&key);
                    }
                }
            }
            Edit::Whole(v) => *body = v.clone(),
            Edit::Nest(depth) => {
                *body = Value::from("x");
                for _ in 0..*depth {
                    *body = Value::Array(vec![body.take()]);
                }
            }
        }
    }
}

/// Text-level damage to the serialized body.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(Index),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<Index>().prop_map(Damage::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::SetByte(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

fn damaged(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let len = bytes.len();
        match d {
            Damage::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Damage::SetByte(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Damage::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

/// What else a request carries.
#[derive(Clone, Debug)]
struct Extras {
    /// The path's id: the real reservation's, or fuzzed text.
    id: Option<String>,
    /// `Content-Type`: JSON, absent, or something else.
    content_type: Option<&'static str>,
    /// An `Idempotency-Key`, as bytes.
    key: Option<Vec<u8>>,
    /// The holder's credentials in headers (for DELETE and a bodiless accept).
    header_creds: bool,
}

fn extras() -> impl Strategy<Value = Extras> {
    (
        prop::option::weighted(0.3, "[0-9a-zA-Z%_-]{0,60}"),
        prop::sample::select(vec![
            Some("application/json"),
            Some("application/json"),
            Some("application/json"),
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
        ]),
        prop::option::weighted(0.3, prop::collection::vec(any::<u8>(), 0..300)),
        any::<bool>(),
    )
        .prop_map(|(id, content_type, key, header_creds)| Extras {
            id,
            content_type,
            key,
            header_creds,
        })
}

// ------------------------------------------------------------------------------------------
// Sending and checking
// ------------------------------------------------------------------------------------------

/// Sends `body` to `target` and checks the answer: a success, or a 4xx
/// problem+json with a non-empty `code`; never a 5xx.
fn check(target: Target, body: Vec<u8>, extras: &Extras) -> StatusCode {
    WORLD.with(|world| send_and_check(world, target, body, extras))
}

thread_local! {
    /// One world per test thread: building one per case would cost more than the case, and
    /// the state the cases leave (cancelled, replaced waves) is more input.
    static WORLD: World = world();
}

fn send_and_check(world: &World, target: Target, body: Vec<u8>, extras: &Extras) -> StatusCode {
    let id = extras.id.clone().unwrap_or(world.reservation.clone());
    let mut builder = Request::builder()
        .method(target.method())
        .uri(target.path(&id));
    if let Some(ct) = extras.content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    if let Some(key) = extras
        .key
        .as_ref()
        .and_then(|k| HeaderValue::from_bytes(k).ok())
    {
        builder = builder.header("idempotency-key", key);
    }
    if matches!(target, Target::Event | Target::Waves) {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    }
    if extras.header_creds {
        builder = builder
            .header("x-national-id", nid(0))
            .header("x-tracking-code", "t0");
    }
    let Ok(request) = builder.body(Body::from(body.clone())) else {
        // A path the fuzzer made that is not a URI: no request to send.
        return StatusCode::BAD_REQUEST;
    };
    let (status, content_type, answer) = runtime().block_on(async {
        let response = world.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, bytes)
    });
    let shown = String::from_utf8_lossy(&body);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !status.is_server_error(),
        "{target:?} {shown:?} -> {status} {text}"
    );
    if status.is_client_error() {
        assert_eq!(
            content_type, "application/problem+json",
            "{target:?} {shown:?} -> {status} {text}"
        );
        let problem: Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{target:?} -> {status}: not JSON ({e}): {text}"));
        let code = problem["code"].as_str().unwrap_or("");
        assert!(
            !code.is_empty(),
            "{target:?} -> {status} without a code: {text}"
        );
        assert_eq!(problem["status"], status.as_u16(), "{text}");
    } else {
        assert!(
            status.is_success(),
            "{target:?} {shown:?} -> {status} {text}"
        );
    }
    status
}

fn target() -> impl Strategy<Value = Target> {
    prop::sample::select(TARGETS.to_vec())
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes as the body of every route.
    #[test]
    fn bodies_of_arbitrary_bytes(
        target in target(),
        body in prop::collection::vec(any::<u8>(), 0..300),
        extras in extras(),
    ) {
        check(target, body, &extras);
    }

    /// Arbitrary JSON as the body of every route.
    #[test]
    fn bodies_of_arbitrary_json(target in target(), body in json_value(), extras in extras()) {
        check(target, serde_json::to_vec(&body).unwrap(), &extras);
    }

    /// Valid bodies with fields replaced, removed or added, then sometimes damaged as text.
    #[test]
    fn bodies_mutated(
        target in target(),
        edits in prop::collection::vec(edit(), 0..4),
        damage in prop::collection::vec(damage(), 0..3),
        extras in extras(),
    ) {
        let mut body = target.valid_body();
        apply(&mut body, &edits);
        check(target, damaged(serde_json::to_vec(&body).unwrap(), &damage), &extras);
    }
}

/// The valid bodies succeed, so the mutations start from requests that get through (accept
/// and join are refused by the state: no offer, seats free).
#[test]
fn valid_bodies_succeed() {
    for target in [
        Target::Reserve,
        Target::Event,
        Target::Waves,
        Target::Cancel,
    ] {
        let extras = Extras {
            id: None,
            content_type: Some("application/json"),
            key: None,
            header_creds: matches!(target, Target::Cancel),
        };
        let status = check(
            target,
            serde_json::to_vec(&target.valid_body()).unwrap(),
            &extras,
        );
        assert!(status.is_success(), "{target:?} -> {status}");
    }
}
