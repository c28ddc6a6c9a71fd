//! Test support: a small hand-made data set, and a fake Miqat server whose behaviour a test
//! chooses (correct, overselling, forgetting an acknowledgement, or seating everyone) and
//! which records every request it receives.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use parking_lot::Mutex;

/// Writes a data set of two provinces (three caravans of `capacity` seats each) and
/// `holders` holders, every tenth of them not called by the wave.
pub fn write_data_set(dir: &Path, holders: usize, capacity: u32) {
    let mut caravans = String::from(
        "id,province_id,city,manager,phone,price_group,route,departure_date,price_rial,capacity\n",
    );
    for (i, (province, city)) in [(1, "Tehran"), (2, "Bandar Abbas")].iter().enumerate() {
        for k in 0..3 {
            let route = if k % 2 == 0 {
                "medina_first"
            } else {
                "medina_second"
            };
            caravans.push_str(&format!(
                "C{}{k},{province},{city},Manager,021-0000000{k},{},{route},1399/05/0{},1500000000,{capacity}\n",
                i + 1,
                ["A", "B", "C"][k],
                k + 1
            ));
        }
    }
    std::fs::write(dir.join("caravans.csv"), caravans).unwrap();
    let mut rows = String::from(
        "national_id,tracking_code,receipt_no,receipt_date,receipt_status,province_id,city\n",
    );
    for h in 0..holders {
        let (province, city) = if h % 2 == 0 {
            (1, "Tehran")
        } else {
            (2, "Bandar Abbas")
        };
        let receipt = if h % 10 == 9 {
            "1390/01/01"
        } else {
            "1385/01/01"
        };
        rows.push_str(&format!(
            "{:010},{:08},R-{h},{receipt},valid,{province},{city}\n",
            1_000_000 + h,
            h
        ));
    }
    std::fs::write(dir.join("holders.csv"), rows).unwrap();
    std::fs::write(
        dir.join("season.toml"),
        "[[wave]]\nname = \"main\"\nreceipts_until = \"1386/01/31\"\nopens_at = \"1398/12/09 10:00\"\n",
    )
    .unwrap();
}

/// How the fake server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Capacity and one seat per holder respected.
    Correct,
    /// Never full: every request gets a seat.
    Oversell,
    /// Correct, but the operator export leaves out the first reservation it acknowledged.
    ForgetFirst,
    /// Every reservation succeeds with an id derived from its key; answers depend only on
    /// the request, never on timing.
    SeatEveryone,
    /// Correct about seats, but seats anyone at any time: before the opening and holders no
    /// wave calls.
    IgnoreSchedule,
}

/// A request as the fake server received it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// `Idempotency-Key`, if any.
    pub key: Option<String>,
    /// Body.
    pub body: String,
}

struct Reservation {
    id: String,
    national_id: String,
    caravan_id: String,
    province_id: u32,
    live: bool,
    created_at: String,
}

struct Inner {
    mode: Mode,
    /// The schedule as `GET /v1/waves` shows it: main, then reserve 12 days later.
    waves: serde_json::Value,
    /// Receipt date (`yyyy/mm/dd`) by national ID.
    receipts: HashMap<String, String>,
    capacity: HashMap<String, (u32, String, u32)>,
    order: Vec<String>,
    reservations: Vec<Reservation>,
    by_key: HashMap<String, (StatusCode, String)>,
    received: Vec<Received>,
}

/// A running fake server.
#[derive(Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    /// Its base URL.
    pub base: String,
}

impl Fake {
    /// Starts the fake on a free port of the current runtime, with the caravans of `dir`.
    pub async fn start(mode: Mode, dir: &Path) -> Fake {
        let mut capacity = HashMap::new();
        let mut order = Vec::new();
        let text = std::fs::read_to_string(dir.join("caravans.csv")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            capacity.insert(
                f[0].to_string(),
                (
                    f[1].parse().unwrap(),
                    f[2].to_string(),
                    f[9].parse().unwrap(),
                ),
            );
            order.push(f[0].to_string());
        }
        let mut receipts = HashMap::new();
        let text = std::fs::read_to_string(dir.join("holders.csv")).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            receipts.insert(f[0].to_string(), f[3].to_string());
        }
        let inner = Arc::new(Mutex::new(Inner {
            mode,
            waves: serde_json::json!([
                {"name": "main", "receipts_until": "1386/01/31", "opens_at": "2020-02-28T06:30:00Z"},
                {"name": "reserve", "receipts_until": "1386/02/15", "opens_at": "2020-03-11T06:30:00Z"}
            ]),
            receipts,
            capacity,
            order,
            reservations: Vec::new(),
            by_key: HashMap::new(),
            received: Vec::new(),
        }));
        let router = Router::new()
            .route("/readyz", get(|| async { "ready" }))
            .route("/v1/waves", get(waves))
            .route("/v1/admin/waves", put(put_waves))
            .route("/v1/provinces", get(provinces))
            .route("/v1/provinces/{id}/caravans", get(caravans))
            .route("/v1/reservations", post(reserve))
            .route("/v1/reservations/{id}", delete(ok_empty))
            .route("/v1/reservations/{id}/events", post(ok_empty))
            .route("/v1/reservations/{id}/accept", post(ok_empty))
            .route("/v1/waitlist", post(join_waitlist))
            .route("/v1/waitlist/me", get(waitlist_me))
            .route("/v1/admin/reservations", get(export))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&inner),
                record,
            ))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Fake {
            inner,
            base: format!("http://{addr}"),
        }
    }

    /// Every request received, except the fake's own reads of schedule and seats.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().received.clone()
    }

    /// The schedule as it stands.
    pub fn waves(&self) -> serde_json::Value {
        self.inner.lock().waves.clone()
    }
}

type Shared = State<Arc<Mutex<Inner>>>;

async fn record(
    State(inner): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 16)
        .await
        .unwrap_or_default();
    let uri: &Uri = &parts.uri;
    let path = uri.path();
    let measured = !(path == "/readyz"
        || path == "/v1/provinces"
        || path.starts_with("/v1/admin")
        || path == "/v1/waves");
    if measured {
        inner.lock().received.push(Received {
            method: parts.method.to_string(),
            uri: uri.to_string(),
            key: parts
                .headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_string()),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    next.run(axum::extract::Request::from_parts(parts, bytes.into()))
        .await
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

fn problem(status: StatusCode, code: &str, extra: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        format!(
            r#"{{"type":"about:blank","status":{},"code":"{code}"{extra}}}"#,
            status.as_u16()
        ),
    )
        .into_response()
}

async fn waves(State(inner): Shared) -> Response {
    let waves = inner.lock().waves.to_string();
    json(StatusCode::OK, waves)
}

async fn put_waves(State(inner): Shared, body: Bytes) -> Response {
    inner.lock().waves = serde_json::from_slice(&body).unwrap();
    json(StatusCode::OK, String::from_utf8_lossy(&body).into_owned())
}

/// The schedule's answer to a holder now, by the fake's own simple rule: only the main wave
/// calls anyone in this data set (receipts of 1385 or 1390), and only once it opened.
fn schedule_refusal(inner: &Inner, national_id: &str) -> Option<Response> {
    let receipt = inner.receipts.get(national_id)?;
    if receipt.as_str() > "1386/02/15" {
        return Some(problem(StatusCode::FORBIDDEN, "not_called", ""));
    }
    let opens: jiff::Timestamp = inner.waves[0]["opens_at"].as_str()?.parse().ok()?;
    (jiff::Timestamp::now() < opens)
        .then(|| problem(StatusCode::FORBIDDEN, "registration_not_open", ""))
}

fn free_seats(inner: &Inner, caravan: &str) -> u32 {
    let capacity = inner.capacity[caravan].2;
    let taken = inner
        .reservations
        .iter()
        .filter(|r| r.live && r.caravan_id == caravan)
        .count() as u32;
    capacity.saturating_sub(taken)
}

async fn provinces(State(inner): Shared) -> Response {
    let inner = inner.lock();
    let rows: Vec<String> = [1u32, 2]
        .iter()
        .map(|p| {
            let ids: Vec<&String> = inner
                .order
                .iter()
                .filter(|c| inner.capacity[*c].0 == *p)
                .collect();
            let total: u32 = ids.iter().map(|c| inner.capacity[*c].2).sum();
            let free: u32 = ids.iter().map(|c| free_seats(&inner, c)).sum();
            format!(
                r#"{{"id":{p},"name_en":"P{p}","name_fa":"","seats_total":{total},"seats_free":{free}}}"#
            )
        })
        .collect();
    json(StatusCode::OK, format!("[{}]", rows.join(",")))
}

async fn caravans(State(inner): Shared, UrlPath(id): UrlPath<u32>) -> Response {
    let inner = inner.lock();
    let rows: Vec<String> = inner
        .order
        .iter()
        .filter(|c| inner.capacity[*c].0 == id)
        .map(|c| {
            let free = if inner.mode == Mode::SeatEveryone {
                inner.capacity[c].2
            } else {
                free_seats(&inner, c)
            };
            format!(
                r#"{{"id":"{c}","capacity":{},"seats_free":{free}}}"#,
                inner.capacity[c].2
            )
        })
        .collect();
    json(StatusCode::OK, format!("[{}]", rows.join(",")))
}

#[derive(serde::Deserialize)]
struct ReserveBody {
    national_id: String,
    caravan_id: String,
}

async fn reserve(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let body: ReserveBody = serde_json::from_slice(&body).unwrap();
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let mut inner = inner.lock();
    if let Some((status, text)) = inner.by_key.get(&key) {
        return json(*status, text.clone());
    }
    let Some(&(province_id, _, _)) = inner.capacity.get(&body.caravan_id) else {
        return problem(StatusCode::NOT_FOUND, "caravan_not_found", "");
    };
    let created_at = jiff::Timestamp::now().to_string();
    if inner.mode == Mode::SeatEveryone {
        let text = format!(
            r#"{{"id":"id-{key}","caravan_id":"{}","created_at":"{created_at}"}}"#,
            body.caravan_id
        );
        return json(StatusCode::CREATED, text);
    }
    if inner.mode != Mode::IgnoreSchedule
        && let Some(refusal) = schedule_refusal(&inner, &body.national_id)
    {
        return refusal;
    }
    if let Some(live) = inner
        .reservations
        .iter()
        .find(|r| r.live && r.national_id == body.national_id)
    {
        let extra = format!(r#","reservation_id":"{}""#, live.id);
        return problem(StatusCode::CONFLICT, "already_reserved", &extra);
    }
    if inner.mode != Mode::Oversell && free_seats(&inner, &body.caravan_id) == 0 {
        let alternatives: Vec<String> = inner
            .order
            .iter()
            .filter(|c| inner.capacity[*c].0 == province_id && free_seats(&inner, c) > 0)
            .map(|c| format!(r#"{{"id":"{c}"}}"#))
            .collect();
        let extra = format!(r#","alternatives":[{}]"#, alternatives.join(","));
        return problem(StatusCode::CONFLICT, "caravan_full", &extra);
    }
    let id = format!("r{:05}", inner.reservations.len());
    let text = format!(
        r#"{{"id":"{id}","caravan_id":"{}","created_at":"{created_at}"}}"#,
        body.caravan_id
    );
    inner.reservations.push(Reservation {
        id,
        national_id: body.national_id,
        caravan_id: body.caravan_id,
        province_id,
        live: true,
        created_at,
    });
    inner
        .by_key
        .insert(key, (StatusCode::CREATED, text.clone()));
    json(StatusCode::CREATED, text)
}

async fn ok_empty() -> Response {
    json(StatusCode::OK, "{}".into())
}

async fn join_waitlist() -> Response {
    json(
        StatusCode::CREATED,
        r#"{"province_id":1,"position":1}"#.into(),
    )
}

async fn waitlist_me() -> Response {
    json(StatusCode::OK, r#"{"province_id":1,"position":1}"#.into())
}

async fn export(State(inner): Shared, _query: Query<HashMap<String, String>>) -> Response {
    let inner = inner.lock();
    let skip = usize::from(inner.mode == Mode::ForgetFirst);
    let mut out = String::from(
        "id,national_id,caravan_id,province_id,status,stage,deadline,created_at,updated_at,end_reason\n",
    );
    for r in inner.reservations.iter().skip(skip) {
        out.push_str(&format!(
            "{},{},{},{},{},documents,,{},{},\n",
            r.id,
            r.national_id,
            r.caravan_id,
            r.province_id,
            if r.live { "held" } else { "cancelled" },
            r.created_at,
            r.created_at
        ));
    }
    (StatusCode::OK, [("content-type", "text/csv")], out).into_response()
}
