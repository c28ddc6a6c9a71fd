//! The waiting room over HTTP: `POST /v1/queue` (join), `GET /v1/queue/me` (standing, the
//! pass once admitted, when to poll next; `ETag`/`304`), the pass check `POST
//! /v1/reservations` makes while the holder's room is active, and the outflow: a fixed rate,
//! or an automatic one that follows the decisions the engine makes and backs off when the
//! server sheds.
//!
//! Reading a standing takes the rooms' lock only, never a shard's. The outflow moves on when
//! holders poll (at most every [`ADVANCE_EVERY_MS`] per room), as a logged record.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use miqat_engine::calendar::format_rfc3339_utc;
use miqat_engine::catalog::HolderIdx;
use miqat_engine::season::Outflow;
use miqat_engine::{Engine, RoomOf, RoomStanding};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem, QueuePassProblem};
use crate::queue_pass::{PassKey, PassRefusal};

/// The header a reservation carries its pass in.
pub const PASS_HEADER: &str = "miqat-queue-pass";
/// How often one room's outflow is brought up to date at most, in milliseconds.
pub const ADVANCE_EVERY_MS: i64 = 100;
/// The automatic outflow's rate at the start and its bounds, in places per second.
const AUTO_START_PER_SECOND: f64 = 20.0;
const AUTO_MIN_PER_SECOND: f64 = 1.0;
const AUTO_MAX_PER_SECOND: f64 = 100_000.0;
/// How often the automatic outflow adjusts its rate, in milliseconds.
const AUTO_ADJUST_EVERY_MS: i64 = 1_000;
/// Poll hints stay within these bounds, in seconds.
const POLL_MIN_SECONDS: u64 = 1;
const POLL_MAX_SECONDS: u64 = 30;

/// A holder's credentials, as `POST /v1/reservations` takes them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct QueueJoinRequest {
    /// The 10-digit national ID.
    pub national_id: String,
    /// The tracking code of the deposit.
    pub tracking_code: String,
}

/// Where a holder stands in their wave's waiting room.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatus {
    /// The wave whose room this is.
    pub wave: String,
    /// `waiting` (before the draw or behind others), `admitted` (the pass is here) or
    /// `sold_out` (every seat of the holder's province is taken: stop waiting; the waiting
    /// list is open instead).
    pub status: &'static str,
    /// The holder's place, 1 first; absent until the early joiners are drawn at the opening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Holders ahead not yet admitted.
    pub people_ahead: u64,
    /// The expected wait until admission at the current outflow, in seconds (absent once
    /// admitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_wait_seconds: Option<u64>,
    /// When to poll next, in seconds (also sent as `Retry-After`); absent once admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_after_seconds: Option<u64>,
    /// The wave's opening (RFC 3339 UTC).
    pub opens_at: String,
    /// The signed pass, once admitted: send it as `Miqat-Queue-Pass` with the reservation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// When the pass expires (RFC 3339 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_expires_at: Option<String>,
}

/// One room's automatic outflow: its rate, adjusted at most once a second.
#[derive(Debug)]
struct AutoRate {
    per_second: f64,
    adjusted_at_ms: i64,
    records_at_adjust: u64,
    shed_at_adjust: u64,
}

/// The API's side of the waiting rooms: the pass key, the outflow's rates, the requests
/// shed, and which admissions were already counted in the wait histogram.
pub struct Queue {
    key: PassKey,
    /// Per room: the last time its outflow was brought up to date.
    advanced_at_ms: parking_lot::Mutex<FxHashMap<String, i64>>,
    auto: parking_lot::Mutex<FxHashMap<String, AutoRate>>,
    /// Requests shed with `503 overloaded` (admission control), for the automatic outflow.
    shed: AtomicU64,
    /// Holders whose admission was counted in `miqat_queue_wait_seconds`.
    waits_counted: parking_lot::Mutex<FxHashSet<HolderIdx>>,
    /// The newest outflow rate used (for the gauge), as f64 bits.
    last_rate_bits: AtomicU64,
    last_rate_at_ms: AtomicI64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    /// The rooms' API side, passes signed with `key`.
    pub fn new(key: PassKey) -> Queue {
        Queue {
            key,
            advanced_at_ms: parking_lot::Mutex::new(FxHashMap::default()),
            auto: parking_lot::Mutex::new(FxHashMap::default()),
            shed: AtomicU64::new(0),
            waits_counted: parking_lot::Mutex::new(FxHashSet::default()),
            last_rate_bits: AtomicU64::new(0),
            last_rate_at_ms: AtomicI64::new(0),
        }
    }

    /// Counts one request shed with `503 overloaded`.
    pub(crate) fn note_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// The outflow rate of `room` now, in places per second: the configured one, or the
    /// automatic one, which grows by a quarter each second while nothing is shed (up to twice
    /// the records the engine decided in the last second, and at least its start) and halves
    /// when requests were shed.
    fn rate(&self, engine: &Engine, room: &RoomOf, now_ms: i64) -> f64 {
        let rate = match room.config.outflow {
            Outflow::PerSecond(rate) => rate,
            Outflow::Auto => {
                let mut auto = self.auto.lock();
                let shed = self.shed.load(Ordering::Relaxed);
                let records = engine.records_committed();
                let state = auto.entry(room.wave.clone()).or_insert(AutoRate {
                    per_second: AUTO_START_PER_SECOND,
                    adjusted_at_ms: now_ms,
                    records_at_adjust: records,
                    shed_at_adjust: shed,
                });
                let elapsed_ms = now_ms - state.adjusted_at_ms;
                if elapsed_ms >= AUTO_ADJUST_EVERY_MS {
                    let decided_per_second =
                        (records.saturating_sub(state.records_at_adjust)) as f64 * 1_000.0
                            / elapsed_ms as f64;
                    state.per_second = if shed > state.shed_at_adjust {
                        state.per_second / 2.0
                    } else {
                        (state.per_second * 1.25)
                            .min((2.0 * decided_per_second).max(AUTO_START_PER_SECOND))
                    }
                    .clamp(AUTO_MIN_PER_SECOND, AUTO_MAX_PER_SECOND);
                    state.adjusted_at_ms = now_ms;
                    state.records_at_adjust = records;
                    state.shed_at_adjust = shed;
                }
                state.per_second
            }
        };
        self.last_rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        self.last_rate_at_ms.store(now_ms, Ordering::Relaxed);
        rate
    }

    /// Brings `room`'s outflow up to now (at most every [`ADVANCE_EVERY_MS`]); returns the
    /// rate in force.
    async fn advance(&self, engine: &Engine, room: &RoomOf) -> Result<f64, ApiError> {
        let now_ms = engine.now_ms();
        let rate = self.rate(engine, room, now_ms);
        if now_ms < room.opens_at_ms {
            return Ok(rate);
        }
        {
            let mut advanced = self.advanced_at_ms.lock();
            let last = advanced.entry(room.wave.clone()).or_insert(i64::MIN);
            if now_ms.saturating_sub(*last) < ADVANCE_EVERY_MS {
                return Ok(rate);
            }
            *last = now_ms;
        }
        let ticket = engine.advance_room(&room.wave, rate)?;
        engine.durable(ticket).await?;
        Ok(rate)
    }

    /// The answer to a holder standing at `standing` in `room`, at outflow `rate`.
    fn status(
        &self,
        engine: &Engine,
        holder: HolderIdx,
        national_id: u64,
        room: &RoomOf,
        standing: RoomStanding,
        rate: f64,
    ) -> QueueStatus {
        let now_ms = engine.now_ms();
        let opens_at = format_rfc3339_utc(room.opens_at_ms);
        let sold_out = engine
            .catalog()
            .holder_facts(holder)
            .is_some_and(|f| engine.province_free_seats(f.province) == 0);
        if let Some(admitted_at_ms) = standing.admitted_at_ms {
            self.count_wait(holder, room, standing, admitted_at_ms);
            let expires_ms = admitted_at_ms.saturating_add(room.config.pass_lifetime_ms);
            return QueueStatus {
                wave: room.wave.clone(),
                status: "admitted",
                position: standing.place.map(|p| p + 1),
                people_ahead: 0,
                estimated_wait_seconds: None,
                poll_after_seconds: None,
                opens_at,
                pass: Some(self.key.sign(national_id, room.wave_index, expires_ms)),
                pass_expires_at: Some(format_rfc3339_utc(expires_ms)),
            };
        }
        let until_opening_s = (room.opens_at_ms.saturating_sub(now_ms)).max(0) as f64 / 1_000.0;
        let drain_s = if rate > 0.0 {
            standing.ahead as f64 / rate
        } else {
            f64::from(u32::MAX)
        };
        let wait_s = (until_opening_s + drain_s).ceil() as u64;
        let poll_after = if sold_out {
            None
        } else if until_opening_s > 0.0 {
            Some((until_opening_s.ceil() as u64).clamp(POLL_MIN_SECONDS, POLL_MAX_SECONDS))
        } else {
            Some(
                (drain_s / 4.0)
                    .ceil()
                    .clamp(POLL_MIN_SECONDS as f64, POLL_MAX_SECONDS as f64) as u64,
            )
        };
        QueueStatus {
            wave: room.wave.clone(),
            status: if sold_out { "sold_out" } else { "waiting" },
            position: standing.place.map(|p| p + 1),
            people_ahead: standing.ahead,
            estimated_wait_seconds: (!sold_out).then_some(wait_s),
            poll_after_seconds: poll_after,
            opens_at,
            pass: None,
            pass_expires_at: None,
        }
    }

    /// Records a holder's wait in the histogram the first time they are seen admitted.
    fn count_wait(
        &self,
        holder: HolderIdx,
        room: &RoomOf,
        standing: RoomStanding,
        admitted_at_ms: i64,
    ) {
        if !self.waits_counted.lock().insert(holder) {
            return;
        }
        // An early joiner's wait starts at the opening, not at their (earlier) join.
        let from_ms = standing.joined_at_ms.max(room.opens_at_ms);
        let wait_s = (admitted_at_ms - from_ms).max(0) as f64 / 1_000.0;
        metrics::histogram!("miqat_queue_wait_seconds", "wave" => room.wave.clone()).record(wait_s);
    }

    /// The outflow rate used last and when, for the gauge.
    fn last_rate(&self) -> (f64, i64) {
        (
            f64::from_bits(self.last_rate_bits.load(Ordering::Relaxed)),
            self.last_rate_at_ms.load(Ordering::Relaxed),
        )
    }
}

#[utoipa::path(post, path = "/v1/queue", tag = "applicant",
    request_body = QueueJoinRequest,
    responses((status = 200, body = QueueStatus, description = "The holder's standing (joining again answers the same place); `Retry-After` says when to poll `GET /v1/queue/me`"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, description = "`no_waiting_room`, `queue_not_open` (with `opens_at`: when joins open) or `province_sold_out`", body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem), (status = 503, body = Problem)))]
/// `POST /v1/queue`: the holder joins their wave's waiting room (joining again answers the
/// same place). `200` with the standing; `409 no_waiting_room`, `queue_not_open` (with
/// `opens_at`: when joins open) or `province_sold_out`.
pub async fn join(
    State(state): State<AppState>,
    crate::handlers::ApiJson(body): crate::handlers::ApiJson<QueueJoinRequest>,
) -> Result<Response, ApiError> {
    if state.cluster().is_some() {
        return Err(ApiError::NotReplicated("the waiting room"));
    }
    let holder = crate::handlers::authenticate(&state, &body.national_id, &body.tracking_code)?;
    let national_id = crate::handlers::national_id(&body.national_id)?;
    let engine = state.engine()?;
    let joined = engine.queue_join(holder)?;
    engine.durable(joined.ticket).await?;
    let (room, _) = joined.value;
    let rate = state.inner.queue.advance(engine, &room).await?;
    let (room, standing) = engine.queue_standing(holder).ok_or(ApiError::Engine(
        miqat_engine::EngineError::NoWaitingRoom,
        None,
    ))?;
    let status = state
        .inner
        .queue
        .status(engine, holder, national_id, &room, standing, rate);
    Ok(answer(status, &HeaderMap::new()))
}

#[utoipa::path(get, path = "/v1/queue/me", tag = "applicant",
    params(("X-National-Id" = String, Header), ("X-Tracking-Code" = String, Header),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` of an earlier answer")),
    responses((status = 200, body = QueueStatus, description = "The standing; `Retry-After` says when to poll next; once admitted, the pass"),
        (status = 304, description = "Unchanged since the `ETag` given"),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "`not_found`: the holder has not joined", body = Problem),
        (status = 409, description = "`no_waiting_room`", body = Problem),
        (status = 429, body = Problem), (status = 503, body = Problem)))]
/// `GET /v1/queue/me` (credentials in `X-National-Id` and `X-Tracking-Code`): the holder's
/// standing, with `Retry-After` saying when to poll next and, once admitted, the pass.
/// `ETag`/`If-None-Match` answer `304` when nothing changed. `404 not_found` if they have not
/// joined.
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if state.cluster().is_some() {
        return Err(ApiError::NotReplicated("the waiting room"));
    }
    let holder = crate::handlers::header_credentials(&state, &headers)?;
    let national_id = headers
        .get("x-national-id")
        .and_then(|v| v.to_str().ok())
        .map(crate::handlers::national_id)
        .transpose()?
        .unwrap_or(0);
    let engine = state.engine()?;
    let not_joined = || {
        ApiError::NotFound(
            "not_found",
            "the holder has not joined a waiting room (POST /v1/queue)".into(),
        )
    };
    let room = engine.room_of(holder).ok_or(ApiError::Engine(
        miqat_engine::EngineError::NoWaitingRoom,
        None,
    ))?;
    let rate = state.inner.queue.advance(engine, &room).await?;
    let (room, standing) = engine.queue_standing(holder).ok_or_else(not_joined)?;
    let status = state
        .inner
        .queue
        .status(engine, holder, national_id, &room, standing, rate);
    Ok(answer(status, &headers))
}

/// The `200` (or `304`) of a standing, with its `ETag` and poll hint.
fn answer(status: QueueStatus, request: &HeaderMap) -> Response {
    let body = serde_json::to_vec(&status).unwrap_or_default();
    let etag = format!("\"{:016x}\"", fnv1a(&body));
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(seconds) = status.poll_after_seconds {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// FNV-1a, 64 bits: a stable digest of a body for its `ETag`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The pass check of `POST /v1/reservations`: while the room of the holder's wave is active
/// (it has opened), the request must carry a valid pass of this holder for this wave.
pub(crate) fn check_pass(
    state: &AppState,
    engine: &Engine,
    holder: HolderIdx,
    national_id: u64,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if state.cluster().is_some() {
        return Ok(());
    }
    let Some(room) = engine.room_of(holder) else {
        return Ok(());
    };
    let now_ms = engine.now_ms();
    if now_ms < room.opens_at_ms {
        // Not open: the engine refuses with `registration_not_open` and its opening.
        return Ok(());
    }
    let pass = headers
        .get(PASS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(ApiError::QueuePass(QueuePassProblem::Required))?;
    state
        .inner
        .queue
        .key
        .verify(pass, national_id, room.wave_index, now_ms)
        .map_err(|refusal| {
            ApiError::QueuePass(match refusal {
                PassRefusal::Forged => QueuePassProblem::Invalid,
                PassRefusal::NotYours => QueuePassProblem::NotYours,
                PassRefusal::Expired => QueuePassProblem::Expired,
            })
        })
}

/// Sets the rooms' gauges and counters at scrape time.
pub(crate) fn record_metrics(state: &AppState, engine: &Engine) {
    for room in engine.room_stats() {
        let labels = [("wave", room.wave.clone())];
        metrics::gauge!("miqat_queue_length", &labels).set(room.waiting as f64);
        metrics::gauge!("miqat_queue_joined", &labels).set(room.joined as f64);
        metrics::counter!("miqat_queue_admitted_total", &labels).absolute(room.admitted);
    }
    let (rate, at_ms) = state.inner.queue.last_rate();
    if at_ms > 0 {
        metrics::gauge!("miqat_queue_outflow_per_second").set(rate);
    }
}

/// A pass key from `secret`, or, without one, a fresh random one (passes then do not survive
/// a restart: admitted holders poll again and get a new one).
pub fn pass_key(secret: Option<&[u8]>) -> Result<PassKey, String> {
    match secret {
        Some(secret) => PassKey::new(secret).ok_or_else(|| {
            format!(
                "the queue pass secret must be at least {} bytes",
                crate::queue_pass::PASS_KEY_BYTES_MIN
            )
        }),
        None => {
            let mut secret = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut secret);
            PassKey::new(&secret).ok_or_else(|| "a 32-byte key was refused".to_owned())
        }
    }
}
