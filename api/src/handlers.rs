//! The HTTP handlers of CONTRACT's API, one per route, each turning a request into one engine
//! call and its answer into JSON; errors go through [`ApiError`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use miqat_engine::calendar::{JalaliDate, parse_national_id, parse_tehran_datetime};
use miqat_engine::catalog::{CaravanIdx, HolderIdx, ProvinceIdx, Route};
use miqat_engine::engine::{WriteAnswer, WriteCommand};
use miqat_engine::model::{OperatorEvent, ReservationId, Status};
use miqat_engine::season::{Wave, WaveOrder};
use miqat_engine::{EngineError, ReservationFilter, ReserveOutcome};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::cache::ListKey;
use crate::dto::{
    Caravan, CaravanSummary, Credentials, EventRequest, Province, Reservation, ReservationPage,
    ReserveRequest, Stats, StatusCounts, WaitlistPlace, WaveDto,
};
use crate::error::{ApiError, Problem};
use crate::limits::retry_after_seconds;
use crate::principals::Principal;

/// `Json<T>` whose rejections are our problem documents (400 / 413).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::BodyTooLarge(crate::BODY_BYTES_MAX))
            }
            Err(e) => Err(ApiError::Malformed(e.body_text())),
        }
    }
}

/// A path id; an id that is not valid UTF-8 cannot name anything, so it answers 404.
pub struct PathId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(PathId(id)),
            Err(e) => Err(ApiError::NotFound("not_found", e.body_text())),
        }
    }
}

pub(crate) fn national_id(text: &str) -> Result<u64, ApiError> {
    parse_national_id(text).map_err(|e| ApiError::InvalidField {
        field: "national_id".into(),
        message: e.to_string(),
    })
}

/// Validates the national ID, authenticates, then applies the per-holder rate limit.
///
/// Successful and failed logins count in separate budgets of the same rate: someone who only
/// knows a holder's national ID can exhaust the failure budget (and so can no longer guess
/// tracking codes), but cannot lock the holder out of their own account.
pub(crate) fn authenticate(
    state: &AppState,
    national: &str,
    code: &str,
) -> Result<HolderIdx, ApiError> {
    let id = national_id(national)?;
    let limited = |wait| ApiError::RateLimited(retry_after_seconds(wait));
    match state.engine()?.authenticate(id, code) {
        Ok(holder) => {
            state
                .inner
                .holder_limiter
                .check(&(id, true))
                .map_err(limited)?;
            Ok(holder)
        }
        Err(e) => {
            state
                .inner
                .holder_limiter
                .check(&(id, false))
                .map_err(limited)?;
            Err(e.into())
        }
    }
}

pub(crate) fn header_credentials(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<HolderIdx, ApiError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::trim)
            .unwrap_or("")
    };
    let national = get("x-national-id");
    if national.is_empty() {
        return Err(EngineError::InvalidCredentials.into());
    }
    authenticate(state, national, get("x-tracking-code"))
}

fn reservation_id(text: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(text).ok_or(ApiError::Engine(EngineError::ReservationNotFound, None))
}

fn summaries(state: &AppState, caravans: &[CaravanIdx]) -> Vec<CaravanSummary> {
    let Ok(engine) = state.engine() else {
        return Vec::new();
    };
    caravans
        .iter()
        .map(|&c| CaravanSummary::new(engine.catalog(), c, engine.free_seats(c)))
        .collect()
}

/// Resolves caravan alternatives of an engine refusal into summaries.
fn refusal(state: &AppState, e: EngineError) -> ApiError {
    match &e {
        EngineError::CaravanFull { alternatives }
        | EngineError::SeatsAvailable { alternatives } => {
            let list = summaries(state, alternatives);
            ApiError::Engine(e, Some(list))
        }
        _ => ApiError::Engine(e, None),
    }
}

fn reservation_json(state: &AppState, view: &miqat_engine::model::ReservationView) -> Reservation {
    Reservation::from_view(&state.inner.catalog, view)
}

/// `GET /v1/waves`: the registration schedule in force.
///
/// Which wave admits which holder: only the waves that include the holder's province count. A
/// receipt is *called* by the wave(s) with the smallest `receipts_until` on or after the
/// receipt's date (the first wave whose cutoff covers it). The holder may reserve or join the
/// waiting list once a wave that calls them has opened, or once a wave of the province whose
/// cutoff covers the receipt and that has `admits_earlier_receipts: true` has opened. Before
/// that, `403 registration_not_open` carries the earliest such opening; a receipt no wave of
/// the province covers gets `403 not_called`. Postponing the main wave therefore closes
/// registration for main-wave receipts even while a reserve wave is open.
#[utoipa::path(get, path = "/v1/waves", tag = "public",
    responses((status = 200, body = [WaveDto])))]
pub async fn waves(State(state): State<AppState>) -> Result<Json<Vec<WaveDto>>, ApiError> {
    let engine = state.engine()?;
    let schedule = engine.schedule();
    Ok(Json(
        schedule
            .waves
            .iter()
            .map(|wave| WaveDto {
                waiting_room: engine.season().room(&wave.name).is_some(),
                ..WaveDto::from_wave(wave)
            })
            .collect(),
    ))
}

/// `GET /v1/provinces`: every province with its seats.
#[utoipa::path(get, path = "/v1/provinces", tag = "public",
    responses((status = 200, body = [Province])))]
pub async fn provinces(State(state): State<AppState>) -> Result<Json<Vec<Province>>, ApiError> {
    let engine = state.engine()?;
    let list = engine
        .catalog()
        .provinces()
        .iter()
        .enumerate()
        .map(|(p, prov)| Province {
            id: prov.id,
            name_en: prov.name_en.clone(),
            name_fa: prov.name_fa.clone(),
            seats_total: engine.province_seats_total(ProvinceIdx(p as u16)),
            seats_free: engine.province_free_seats(ProvinceIdx(p as u16)),
        })
        .collect();
    Ok(Json(list))
}

/// Filters of the caravan list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CaravanQuery {
    /// Only caravans of this city.
    pub city: Option<String>,
    /// Only this route: `medina_first` or `medina_second`.
    pub route: Option<String>,
    /// Only this price group.
    pub price_group: Option<String>,
    /// `true`: only caravans with free seats.
    pub available: Option<bool>,
}

/// `GET /v1/provinces/{id}/caravans`: the page everyone refreshes during the rush: a cached
/// body (per filter) with a strong `ETag` (`If-None-Match` answers 304).
#[utoipa::path(get, path = "/v1/provinces/{id}/caravans", tag = "public",
    params(("id" = u32, Path, description = "Province id"), CaravanQuery),
    responses((status = 200, body = [Caravan]), (status = 304), (status = 404, body = Problem)))]
pub async fn province_caravans(
    State(state): State<AppState>,
    PathId(id): PathId,
    query: Result<Query<CaravanQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let not_found = || ApiError::NotFound("province_not_found", format!("no province {id:?}"));
    let province = miqat_engine::calendar::normalize_digits(&id)
        .parse::<u32>()
        .ok()
        .and_then(|id| engine.catalog().province_by_id(id))
        .ok_or_else(not_found)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidField {
        field: "query".into(),
        message: e.body_text(),
    })?;
    let catalog = engine.catalog();
    let route = match query.route.as_deref() {
        None => None,
        Some(text) => Some(Route::parse(text).ok_or_else(|| ApiError::InvalidField {
            field: "route".into(),
            message: "must be medina_first or medina_second".into(),
        })?),
    };
    // A city or price group the province does not have selects nothing: answer an empty list
    // without creating a cache entry, so the cache stays bounded by the catalog.
    let city = match query.city.as_deref() {
        None => None,
        Some(name) => match catalog.city_by_name(province, name.trim()) {
            Some(city) => Some(city),
            None => return Ok(Json(Vec::<Caravan>::new()).into_response()),
        },
    };
    let price_group = query.price_group.as_deref().map(str::trim);
    if let Some(group) = price_group
        && !catalog
            .caravans_of_province(province)
            .iter()
            .any(|&c| catalog.caravans()[c.index()].price_group == group)
    {
        return Ok(Json(Vec::<Caravan>::new()).into_response());
    }
    let key = ListKey {
        province,
        city,
        route,
        price_group: price_group.map(str::to_owned),
        available_only: query.available == Some(true),
    };
    let list = state.inner.cache.get(engine, &key);
    let gzip = accepts_gzip(&headers);
    let etag_header = if gzip {
        &list.etag_gzip_header
    } else {
        &list.etag_header
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // If-None-Match compares weakly (RFC 9110): a proxy may have marked the tag W/,
            // and a tag of the other encoding names the same list.
            v.split(',').any(|t| {
                let t = t.trim();
                let t = t.strip_prefix("W/").unwrap_or(t);
                t == "*" || t == list.etag || t == list.etag_gzip
            })
        });
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = if gzip {
            list.gzip_body().clone()
        } else {
            list.body.clone()
        };
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if gzip {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag_header.clone());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(response)
}

/// Returns true if and only if `Accept-Encoding` accepts gzip (`gzip` or `*`, without
/// `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// `GET /v1/caravans/{id}`: one caravan with its free seats.
#[utoipa::path(get, path = "/v1/caravans/{id}", tag = "public",
    params(("id" = String, Path, description = "Caravan id")),
    responses((status = 200, body = Caravan), (status = 404, body = Problem)))]
pub async fn caravan(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Caravan>, ApiError> {
    let engine = state.engine()?;
    let c = engine
        .catalog()
        .caravan_by_id(&id)
        .ok_or(ApiError::Engine(EngineError::CaravanNotFound, None))?;
    Ok(Json(Caravan::new(
        engine.catalog(),
        c,
        engine.free_seats(c),
    )))
}

/// `POST /v1/reservations`: take a seat. The 201 leaves only once the reservation is durable.
/// A retry with the same `Idempotency-Key` answers the original reservation.
#[utoipa::path(post, path = "/v1/reservations", tag = "applicant",
    request_body = ReserveRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry key, up to 255 bytes"),
        ("Miqat-Queue-Pass" = Option<String>, Header, description = "The waiting room's pass (from `GET /v1/queue/me` once admitted); required while the room of the holder's wave is active")),
    responses((status = 201, body = Reservation), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, description = "`queue_pass_required`, `queue_pass_invalid`, `queue_pass_not_yours`, `queue_pass_expired` (the waiting room), or an eligibility refusal", body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem),
        (status = 503, body = Problem)))]
pub async fn reserve(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReserveRequest>,
) -> Result<Response, ApiError> {
    let holder = authenticate(&state, &body.national_id, &body.tracking_code)?;
    let engine = state.engine()?;
    if let Err(e) = crate::queue::check_pass(
        &state,
        engine,
        holder,
        national_id(&body.national_id)?,
        &headers,
    ) {
        state
            .inner
            .request_metrics
            .reservation(Some(e.code()), false);
        return Err(e);
    }
    let caravan = engine
        .catalog()
        .caravan_by_id(body.caravan_id.trim())
        .ok_or(ApiError::Engine(EngineError::CaravanNotFound, None))?;
    let key = idempotency_key(&headers)?;
    if let Some(cluster) = state.cluster() {
        let command = WriteCommand::Reserve {
            holder,
            caravan,
            key: key.unwrap_or_default().to_vec(),
        };
        let (reservation, replayed) = match crate::cluster::replicate(&**cluster, command).await {
            Ok(answer) => crate::cluster::reservation_answer(answer)?,
            Err(ApiError::Engine(e, _)) => {
                let e = refusal(&state, e);
                metrics::counter!("miqat_reservations_total", "outcome" => e.code()).increment(1);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        return Ok(reserved(
            &state,
            ReserveOutcome {
                reservation,
                replayed,
            },
        ));
    }
    // The decision is made and logged in one synchronous call: a client that goes away while
    // waiting below cannot leave it half-made, and a retry with its key finds it.
    let decided = match engine.reserve(holder, caravan, key) {
        Ok(decided) => decided,
        Err(e) => {
            if matches!(e, EngineError::AlreadyReserved { .. }) {
                // The live reservation it names may still be on its way to disk.
                engine.durable(engine.holder_barrier(holder)).await?;
            }
            let e = refusal(&state, e);
            state
                .inner
                .request_metrics
                .reservation(Some(e.code()), false);
            return Err(e);
        }
    };
    engine.durable(decided.ticket).await?;
    Ok(reserved(&state, decided.value))
}

/// The `201` of a reservation.
fn reserved(state: &AppState, outcome: ReserveOutcome) -> Response {
    state
        .inner
        .request_metrics
        .reservation(None, outcome.replayed);
    let mut response = (
        StatusCode::CREATED,
        Json(reservation_json(state, &outcome.reservation)),
    )
        .into_response();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/v1/reservations/{}", outcome.reservation.id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    mark_replayed(&mut response, outcome.replayed);
    response
}

/// The optional `Idempotency-Key` header every write takes; an empty one is refused (an
/// oversized one is refused by the engine).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(ApiError::InvalidField {
            field: "Idempotency-Key".into(),
            message: "must not be empty".into(),
        }),
        Some(v) => Ok(Some(v.as_bytes())),
    }
}

/// Marks an answer that repeats an earlier decision instead of making a new one.
fn mark_replayed(response: &mut Response, replayed: bool) {
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
}

/// The reservation of a keyed write as JSON, marked if it was replayed.
fn replayable(
    state: &AppState,
    status: StatusCode,
    (view, replayed): (miqat_engine::model::ReservationView, bool),
) -> Response {
    let mut response = (status, Json(reservation_json(state, &view))).into_response();
    mark_replayed(&mut response, replayed);
    response
}

/// `GET /v1/reservations/{id}`: the holder's own reservation (credentials in headers). In
/// cluster mode the read is linearizable on every node: it waits until this node has applied
/// every write acknowledged before it (the leader's read index).
#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "applicant",
    params(("id" = String, Path), ("X-National-Id" = String, Header), ("X-Tracking-Code" = String, Header)),
    responses((status = 200, body = Reservation), (status = 401, body = Problem), (status = 403, description = "`receipt_transferred`: the holder gave their receipt away", body = Problem), (status = 404, body = Problem),
        (status = 421, description = "Cluster mode: `not_leader`, this node could not learn the leader's read index (no leader known or reachable); retry on the node in `Miqat-Leader`", body = Problem)))]
pub async fn get_reservation(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Json<Reservation>, ApiError> {
    let holder = header_credentials(&state, &headers)?;
    let id = reservation_id(&id)?;
    let engine = state.engine()?;
    if let Some(cluster) = state.cluster() {
        // Linearizable: everything acknowledged before this read is applied here first.
        cluster
            .read_barrier()
            .await
            .map_err(|refusal| match refusal {
                crate::cluster::ClusterRefusal::NotLeader(leader) => ApiError::NotLeader(leader),
                crate::cluster::ClusterRefusal::OutcomeUnknown => ApiError::NotLeader(None),
            })?;
    }
    let view = engine
        .reservation_of(holder, id)
        .ok_or(ApiError::Engine(EngineError::ReservationNotFound, None))?;
    // Show only what a crash cannot take back.
    engine.durable(engine.holder_barrier(holder)).await?;
    Ok(Json(reservation_json(&state, &view)))
}

/// `DELETE /v1/reservations/{id}`: cancel (or decline an offer); the seat goes to the
/// waiting list. Idempotent: cancelling a reservation the holder already cancelled answers
/// 200 with it again (header `idempotent-replayed: true`); one that expired or was rejected
/// answers `409 invalid_transition`.
#[utoipa::path(delete, path = "/v1/reservations/{id}", tag = "applicant",
    params(("id" = String, Path), ("X-National-Id" = String, Header), ("X-Tracking-Code" = String, Header),
        ("Idempotency-Key" = Option<String>, Header, description = "Retry key, up to 255 bytes: a retry with it gets the original answer (header `idempotent-replayed: true`); reused for another request: 422 `idempotency_key_reused`")),
    responses((status = 200, body = Reservation), (status = 401, body = Problem), (status = 403, description = "`receipt_transferred`: the holder gave their receipt away", body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn cancel(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let holder = header_credentials(&state, &headers)?;
    let id = reservation_id(&id)?;
    let engine = state.engine()?;
    if let Some(cluster) = state.cluster() {
        let key = idempotency_key(&headers)?.unwrap_or_default().to_vec();
        let command = WriteCommand::Cancel { holder, id, key };
        let answer = crate::cluster::replicate(&**cluster, command).await?;
        let decided = crate::cluster::reservation_answer(answer)?;
        return Ok(replayable(&state, StatusCode::OK, decided));
    }
    let decided = engine.cancel_outcome(holder, id, idempotency_key(&headers)?)?;
    engine.durable(decided.ticket).await?;
    Ok(replayable(&state, StatusCode::OK, decided.value))
}

/// `POST /v1/reservations/{id}/accept`: accept a waiting-list offer (credentials in the body,
/// or in the headers when the body is empty).
#[utoipa::path(post, path = "/v1/reservations/{id}/accept", tag = "applicant",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry key, up to 255 bytes: a retry with it gets the original answer (header `idempotent-replayed: true`); reused for another request: 422 `idempotency_key_reused`")), request_body = Option<Credentials>,
    responses((status = 200, body = Reservation), (status = 401, body = Problem), (status = 403, description = "`receipt_transferred`: the holder gave their receipt away", body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn accept(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(crate::BODY_BYTES_MAX)
        } else {
            ApiError::Malformed(e.body_text())
        }
    })?;
    let holder = if body.iter().all(u8::is_ascii_whitespace) {
        header_credentials(&state, &headers)?
    } else {
        let creds: Credentials = parse_body(&body)?;
        authenticate(&state, &creds.national_id, &creds.tracking_code)?
    };
    let id = reservation_id(&id)?;
    let engine = state.engine()?;
    if let Some(cluster) = state.cluster() {
        let key = idempotency_key(&headers)?.unwrap_or_default().to_vec();
        let command = WriteCommand::Accept { holder, id, key };
        let answer = crate::cluster::replicate(&**cluster, command).await?;
        let decided = crate::cluster::reservation_answer(answer)?;
        return Ok(replayable(&state, StatusCode::OK, decided));
    }
    let decided = engine.accept_offer_keyed(holder, id, idempotency_key(&headers)?)?;
    engine.durable(decided.ticket).await?;
    Ok(replayable(&state, StatusCode::OK, decided.value))
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// `POST /v1/waitlist`: join the province's waiting list (only once the holder's city has no
/// free seat).
#[utoipa::path(post, path = "/v1/waitlist", tag = "applicant", request_body = Credentials,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry key, up to 255 bytes: a retry with it gets the original answer (header `idempotent-replayed: true`); reused for another request: 422 `idempotency_key_reused`")),
    responses((status = 201, body = WaitlistPlace), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub async fn join_waitlist(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let holder = authenticate(&state, &body.national_id, &body.tracking_code)?;
    let engine = state.engine()?;
    let (joined, replayed) = if let Some(cluster) = state.cluster() {
        let key = idempotency_key(&headers)?.unwrap_or_default().to_vec();
        let command = WriteCommand::Join { holder, key };
        match crate::cluster::replicate(&**cluster, command).await {
            Ok(WriteAnswer::Place { place, replayed }) => (place, replayed),
            Ok(_) => return Err(ApiError::Engine(EngineError::IdempotencyKeyReused, None)),
            Err(ApiError::Engine(e, _)) => return Err(refusal(&state, e)),
            Err(e) => return Err(e),
        }
    } else {
        let decided = engine
            .join_waitlist_keyed(holder, idempotency_key(&headers)?)
            .map_err(|e| refusal(&state, e))?;
        engine.durable(decided.ticket).await?;
        decided.value
    };
    let place = WaitlistPlace {
        province_id: engine.catalog().provinces()[usize::from(joined.province)].id,
        position: Some(joined.position),
        offer: None,
    };
    let mut response = (StatusCode::CREATED, Json(place)).into_response();
    mark_replayed(&mut response, replayed);
    Ok(response)
}

/// `GET /v1/waitlist/me`: the holder's position, or their open offer.
#[utoipa::path(get, path = "/v1/waitlist/me", tag = "applicant",
    params(("X-National-Id" = String, Header), ("X-Tracking-Code" = String, Header)),
    responses((status = 200, body = WaitlistPlace), (status = 401, body = Problem), (status = 403, description = "`receipt_transferred`: the holder gave their receipt away", body = Problem), (status = 404, body = Problem)))]
pub async fn waitlist_me(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<WaitlistPlace>, ApiError> {
    let holder = header_credentials(&state, &headers)?;
    let engine = state.engine()?;
    let status = engine.waitlist_status(holder).ok_or(ApiError::NotFound(
        "not_waiting",
        "the holder is not on a waiting list and has no open offer".into(),
    ))?;
    engine.durable(engine.holder_barrier(holder)).await?;
    Ok(Json(WaitlistPlace {
        province_id: engine.catalog().provinces()[usize::from(status.province)].id,
        position: status.position,
        offer: status.offer.as_ref().map(|v| reservation_json(&state, v)),
    }))
}

/// The principal whose bearer token the request carries (`401 unauthorized` if none is
/// known; see [`crate::principals::Principals::authenticate`]).
pub(crate) fn principal(state: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110); the token is not.
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    state
        .inner
        .principals
        .authenticate(given)
        .ok_or(ApiError::Unauthorized)
}

/// The principal of the request if it is an operator: `403 forbidden` for any other role.
pub(crate) fn operator(state: &AppState, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
    let who = principal(state, headers)?;
    if who.is_operator() {
        Ok(who)
    } else {
        Err(forbidden(&who, "this endpoint is for operators"))
    }
}

/// Logs an action `who` took, with how many items it touched or returned.
pub(crate) fn audit(who: &Principal, action: &'static str, items: usize) {
    tracing::info!(
        target: "miqat::audit",
        principal = %who.id,
        role = who.role.as_str(),
        action,
        items,
        "operator action"
    );
}

/// `403 forbidden` for an action `who`'s role never has, logged for the audit trail.
pub(crate) fn forbidden(who: &Principal, why: &str) -> ApiError {
    tracing::warn!(
        target: "miqat::audit",
        principal = %who.id,
        role = who.role.as_str(),
        refused = why,
        "action outside the principal's role"
    );
    ApiError::Forbidden(format!("{} ({}): {why}", who.id, who.role.as_str()))
}

/// `POST /v1/reservations/{id}/events` (operator): complete the pending stage, or end the
/// registration (`medical_rejected`, `deceased`).
#[utoipa::path(post, path = "/v1/reservations/{id}/events", tag = "operator",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry key, up to 255 bytes: a retry with it gets the original answer (header `idempotent-replayed: true`); reused for another request: 422 `idempotency_key_reused`")), request_body = EventRequest, security(("bearer" = [])),
    responses((status = 200, body = Reservation), (status = 401, body = Problem), (status = 403, description = "`forbidden`: the principal's role does not allow it", body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn event(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EventRequest>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers)?;
    let kind = OperatorEvent::parse(body.kind.trim()).ok_or_else(|| ApiError::InvalidField {
        field: "kind".into(),
        message: format!("unknown event {:?}", body.kind),
    })?;
    if !who.may_report(kind) {
        return Err(forbidden(&who, "the role does not report this event"));
    }
    let id = reservation_id(&id)?;
    let engine = state.engine()?;
    if !who.acts_on_any_reservation() {
        // A caravan manager: someone else's caravan's reservation is as good as missing. A
        // reservation never changes caravan, so the check cannot go stale.
        let caravan = engine.reservation(id).map(|r| r.caravan);
        if !caravan.is_some_and(|c| who.runs_caravan(c)) {
            return Err(EngineError::ReservationNotFound.into());
        }
    }
    if let Some(cluster) = state.cluster() {
        let key = idempotency_key(&headers)?.unwrap_or_default().to_vec();
        let command = WriteCommand::Event {
            id,
            event: kind,
            key,
        };
        let answer = crate::cluster::replicate(&**cluster, command).await?;
        let decided = crate::cluster::reservation_answer(answer)?;
        return Ok(replayable(&state, StatusCode::OK, decided));
    }
    let decided = engine.operator_event_keyed(id, kind, idempotency_key(&headers)?)?;
    engine.durable(decided.ticket).await?;
    tracing::info!(
        target: "miqat::audit",
        principal = %who.id,
        role = who.role.as_str(),
        action = "event",
        reservation = %id,
        kind = kind.as_str(),
        replayed = decided.value.1,
        "reservation event"
    );
    Ok(replayable(&state, StatusCode::OK, decided.value))
}

/// Filters and paging of the operator's reservation list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AdminQuery {
    /// Province id.
    pub province: Option<u32>,
    /// Caravan id.
    pub caravan: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Reservations to skip.
    pub offset: Option<usize>,
    /// Page size (default 1,000, at most 10,000; CSV exports are not paged by default).
    pub limit: Option<usize>,
}

/// `GET /v1/admin/reservations` (operator): JSON pages, or CSV with `Accept: text/csv`.
#[utoipa::path(get, path = "/v1/admin/reservations", tag = "operator", params(AdminQuery),
    security(("bearer" = [])),
    responses((status = 200, body = ReservationPage), (status = 401, body = Problem), (status = 403, description = "`forbidden`: the principal's role does not allow it", body = Problem), (status = 422, body = Problem)))]
pub async fn admin_reservations(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AdminQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let who = operator(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::InvalidField {
        field: "query".into(),
        message: e.body_text(),
    })?;
    let engine = state.engine()?;
    let catalog = engine.catalog();
    let invalid = |field: &str, message: &str| ApiError::InvalidField {
        field: field.into(),
        message: message.into(),
    };
    let filter = ReservationFilter {
        province: match q.province {
            None => None,
            Some(id) => Some(
                catalog
                    .province_by_id(id)
                    .ok_or_else(|| invalid("province", "unknown province"))?,
            ),
        },
        caravan: match q.caravan.as_deref() {
            None => None,
            Some(id) => Some(
                catalog
                    .caravan_by_id(id)
                    .ok_or_else(|| invalid("caravan", "unknown caravan"))?,
            ),
        },
        status: match q.status.as_deref() {
            None => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| invalid("status", "unknown status"))?),
        },
    };
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    let offset = q.offset.unwrap_or(0);
    let limit = if csv {
        q.limit.unwrap_or(usize::MAX).max(1)
    } else {
        q.limit.unwrap_or(1_000).clamp(1, 10_000)
    };
    let views = engine.reservations(&filter, offset, limit);
    audit(&who, "export", views.len());
    let items: Vec<Reservation> = views
        .iter()
        .map(|v| Reservation::from_view_for_operator(&state.inner.catalog, v))
        .collect();
    if csv {
        let mut out = String::from(
            "id,national_id,caravan_id,province_id,status,stage,deadline,created_at,updated_at,end_reason,transferred_from\n",
        );
        for r in &items {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                r.id,
                r.national_id,
                csv_field(&r.caravan_id),
                r.province_id,
                r.status,
                r.stage.unwrap_or(""),
                r.deadline.as_deref().unwrap_or(""),
                r.created_at,
                r.updated_at,
                r.end_reason.unwrap_or(""),
                r.transferred_from.as_deref().unwrap_or("")
            ));
        }
        let mut response = out.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        return Ok(response);
    }
    let next_offset = (items.len() == limit).then(|| offset.saturating_add(limit));
    Ok(Json(ReservationPage {
        items,
        offset,
        limit,
        next_offset,
    })
    .into_response())
}

pub(crate) fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// `GET /v1/admin/stats` (operator): engine-wide counts.
#[utoipa::path(get, path = "/v1/admin/stats", tag = "operator", security(("bearer" = [])),
    responses((status = 200, body = Stats), (status = 401, body = Problem), (status = 403, description = "`forbidden`: the principal's role does not allow it", body = Problem)))]
pub async fn admin_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    let who = operator(&state, &headers)?;
    let engine = state.engine()?;
    let s = engine.stats();
    audit(&who, "stats", 0);
    let wal = engine.wal_stats().unwrap_or_default();
    Ok(Json(Stats {
        seats_total: s.seats_total,
        seats_free: s.seats_free,
        reservations: StatusCounts {
            offered: s.by_status[0],
            held: s.by_status[1],
            confirmed: s.by_status[2],
            cancelled: s.by_status[3],
            expired: s.by_status[4],
            rejected: s.by_status[5],
        },
        waiting: s.waiting,
        expirations: s.expirations,
        log_records: engine.log_records_total().unwrap_or(0),
        log_records_since_start: wal.records_written,
        log_fsyncs: wal.fsyncs,
    }))
}

/// Options of `PUT /v1/admin/waves`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WavesQuery {
    /// `true`: accept a schedule in which, in some province, a wave with a wider cutoff opens
    /// before a wave with a narrower cutoff (refused by default with
    /// `422 schedule_out_of_order`).
    pub allow_wider_cutoff_first: Option<bool>,
}

/// `PUT /v1/admin/waves` (operator): replace the schedule (a postponement); logged, and it
/// survives restarts.
///
/// A schedule that, in some province, opens a wave with a wider cutoff strictly before a wave
/// with a narrower cutoff is refused with `422 schedule_out_of_order` (the detail names both
/// waves, their openings and the province) unless `?allow_wider_cutoff_first=true`: moving
/// only the main wave into the future must not leave main-wave receipts waiting while the
/// reserve wave takes later ones. Other defects answer `422 invalid_field`.
#[utoipa::path(put, path = "/v1/admin/waves", tag = "operator", request_body = [WaveDto],
    params(WavesQuery), security(("bearer" = [])),
    responses((status = 200, body = [WaveDto]), (status = 401, body = Problem), (status = 403, description = "`forbidden`: the principal's role does not allow it", body = Problem),
        (status = 422, description = "`invalid_field`, or `schedule_out_of_order`", body = Problem)))]
pub async fn replace_waves(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WavesQuery>, axum::extract::rejection::QueryRejection>,
    ApiJson(body): ApiJson<Vec<WaveDto>>,
) -> Result<Json<Vec<WaveDto>>, ApiError> {
    let who = operator(&state, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidField {
        field: "query".into(),
        message: e.body_text(),
    })?;
    let order = if query.allow_wider_cutoff_first == Some(true) {
        WaveOrder::AllowWiderCutoffFirst
    } else {
        WaveOrder::Strict
    };
    let mut waves = Vec::with_capacity(body.len());
    for (i, w) in body.iter().enumerate() {
        let field = |name: &str| format!("[{i}].{name}");
        let receipts =
            JalaliDate::parse(&w.receipts_until).map_err(|e| ApiError::InvalidField {
                field: field("receipts_until"),
                message: e.to_string(),
            })?;
        let opens_at_ms =
            parse_tehran_datetime(&w.opens_at).map_err(|e| ApiError::InvalidField {
                field: field("opens_at"),
                message: e.to_string(),
            })?;
        if w.name.trim().is_empty() {
            return Err(ApiError::InvalidField {
                field: field("name"),
                message: "must not be empty".into(),
            });
        }
        waves.push(Wave {
            name: w.name.trim().to_owned(),
            receipts_until_day: receipts.to_day_number(),
            opens_at_ms,
            provinces: w.provinces.clone(),
            admits_earlier_receipts: w.admits_earlier_receipts,
        });
    }
    let engine = state.engine()?;
    if let Some(cluster) = state.cluster() {
        crate::cluster::replicate(&**cluster, WriteCommand::Schedule { waves, order }).await?;
    } else {
        let decided = engine.replace_schedule_with(waves, order)?;
        engine.durable(decided.ticket).await?;
    }
    audit(&who, "replace_waves", body.len());
    Ok(Json(
        engine
            .schedule()
            .waves
            .iter()
            .map(WaveDto::from_wave)
            .collect(),
    ))
}

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = String,
        content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: recovery is done, requests are accepted and the log works; in cluster
/// mode, only on the leader (elsewhere `421 not_leader` with the `Miqat-Leader` hint).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 421, description = "Cluster mode: not the leader", body = Problem),
        (status = 503, description = "`not_ready`: recovery still running, or the write-ahead log \
            failed (fail-stop: nothing is acknowledged any more and the process exits after \
            its grace period so that a supervisor restarts it)", body = Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.engine().is_err() {
        return ApiError::NotReady.into_response();
    }
    if let Some(cause) = state.log_failure() {
        return ApiError::Stopped(cause).into_response();
    }
    if let Some(cluster) = state.cluster() {
        // A load balancer sends writes only to the node that takes them.
        return if cluster.takes_writes() {
            "ready\n".into_response()
        } else {
            let leader = cluster.status()["leader_api"].as_str().map(str::to_owned);
            ApiError::NotLeader(leader).into_response()
        };
    }
    "ready\n".into_response()
}

/// The client address a request came from, when the server knows it.
pub fn client_addr(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// `GET /v1/cluster`: this node's view of the cluster (role, term, leader, commit and
/// applied index, members, lag per follower); 404 on a single-node server.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses((status = 200, description = "The cluster as this node sees it"),
        (status = 404, body = Problem)))]
pub async fn cluster_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.cluster() {
        Some(cluster) => Ok(Json(cluster.status()).into_response()),
        None => Err(ApiError::NotFound(
            "not_clustered",
            "this server runs as a single node".into(),
        )),
    }
}
