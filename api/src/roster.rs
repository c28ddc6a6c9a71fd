//! A caravan's roster for its manager (or an operator): who holds a seat in it, with the
//! receipt and the pending stage, as JSON or CSV.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use miqat_engine::calendar::{
    JalaliDate, format_national_id, format_rfc3339_utc, format_tehran_jalali,
};
use miqat_engine::model::ReservationView;
use miqat_engine::{EngineError, ReservationFilter};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::handlers::{PathId, audit, principal};

/// One pilgrim of a roster: a live reservation (offered, held or confirmed) of the caravan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RosterEntry {
    /// The reservation's id.
    pub reservation_id: String,
    /// The holder's national ID (10 digits).
    pub national_id: String,
    /// The deposit receipt's number.
    pub receipt_no: String,
    /// The receipt's deposit date, Jalali `yyyy/mm/dd`.
    pub receipt_date: String,
    /// `offered`, `held` or `confirmed`.
    pub status: &'static str,
    /// The pending stage while held (`documents`, ...), or null.
    pub stage: Option<&'static str>,
    /// The pending stage's or offer's deadline (RFC 3339 UTC), or null.
    pub deadline: Option<String>,
    /// The same deadline in Tehran wall clock, Jalali.
    pub deadline_jalali: Option<String>,
    /// When the seat was taken (RFC 3339 UTC).
    pub created_at: String,
}

/// A caravan's roster.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Roster {
    /// The caravan's id.
    pub caravan_id: String,
    /// Its seats.
    pub capacity: u32,
    /// Seats free now.
    pub seats_free: u32,
    /// The live reservations, oldest first.
    pub pilgrims: Vec<RosterEntry>,
}

/// Options of the roster.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RosterQuery {
    /// `csv` for a CSV export (as with `Accept: text/csv`), `json` (default) otherwise.
    pub format: Option<String>,
}

/// `GET /v1/caravans/{id}/roster` (the caravan's manager, or an operator): the caravan's live
/// reservations. Another manager's caravan answers `404 caravan_not_found`, like a missing
/// one; a role that never reads rosters gets the same 404.
#[utoipa::path(get, path = "/v1/caravans/{id}/roster", tag = "operator",
    params(("id" = String, Path), RosterQuery), security(("bearer" = [])),
    responses((status = 200, body = Roster, description = "JSON, or CSV (`text/csv`) with `Accept: text/csv` or `?format=csv`"),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn roster(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    query: Result<Query<RosterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::InvalidField {
        field: "query".into(),
        message: e.body_text(),
    })?;
    let csv = match query.format.as_deref() {
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv")),
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::InvalidField {
                field: "format".into(),
                message: format!("{other:?} is not csv or json"),
            });
        }
    };
    let engine = state.engine()?;
    let catalog = engine.catalog();
    let caravan = catalog
        .caravan_by_id(&id)
        .filter(|&c| who.runs_caravan(c))
        .ok_or(EngineError::CaravanNotFound)?;
    let facts = &catalog.caravans()[caravan.index()];
    let filter = ReservationFilter {
        province: Some(facts.province),
        caravan: Some(caravan),
        status: None,
    };
    let pilgrims: Vec<RosterEntry> = engine
        .reservations(&filter, 0, usize::MAX)
        .iter()
        .filter(|v| v.status.is_live())
        .map(|v| entry(&state, v))
        .collect();
    audit(&who, "roster", pilgrims.len());
    if csv {
        return Ok(csv_response(&pilgrims));
    }
    Ok(Json(Roster {
        caravan_id: facts.id.clone(),
        capacity: facts.capacity,
        seats_free: engine.free_seats(caravan),
        pilgrims,
    })
    .into_response())
}

fn entry(state: &AppState, view: &ReservationView) -> RosterEntry {
    let holder = state.inner.catalog.holder(view.holder);
    RosterEntry {
        reservation_id: view.id.to_string(),
        national_id: format_national_id(view.national_id),
        receipt_no: holder.map_or_else(String::new, |h| h.receipt_no.to_owned()),
        receipt_date: holder
            .and_then(|h| JalaliDate::from_day_number(h.receipt_day).ok())
            .map_or_else(String::new, |d| d.to_string()),
        status: view.status.as_str(),
        stage: view.stage.map(|s| s.as_str()),
        deadline: view.deadline_ms.map(format_rfc3339_utc),
        deadline_jalali: view.deadline_ms.map(format_tehran_jalali),
        created_at: format_rfc3339_utc(view.created_ms),
    }
}

fn csv_response(pilgrims: &[RosterEntry]) -> Response {
    let mut out = String::from(
        "reservation_id,national_id,receipt_no,receipt_date,status,stage,deadline,created_at\n",
    );
    for p in pilgrims {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            p.reservation_id,
            p.national_id,
            crate::handlers::csv_field(&p.receipt_no),
            p.receipt_date,
            p.status,
            p.stage.unwrap_or(""),
            p.deadline.as_deref().unwrap_or(""),
            p.created_at,
        ));
    }
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    response
}
