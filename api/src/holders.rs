//! The licensed offices' endpoints: receipt priority transfers and dispatch-city changes of
//! the holders of their province (operators may do both anywhere).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use miqat_engine::calendar::{JalaliDate, format_national_id, parse_national_id};
use miqat_engine::catalog::{CityIdx, HolderIdx};
use miqat_engine::engine::WriteCommand;
use miqat_engine::{HolderProfile, TransferRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::handlers::{ApiJson, PathId, forbidden, principal};
use crate::principals::Principal;

/// The person a receipt goes to.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferReceiver {
    /// The receiver's 10-digit national ID (Persian digits accepted).
    pub national_id: String,
    /// The tracking code the receiver will authenticate with (1 to 64 bytes).
    pub tracking_code: String,
    /// The receiver's province of dispatch: the receipt's province.
    pub province_id: u32,
    /// The receiver's city of dispatch, in that province.
    pub city: String,
}

/// A receipt priority transfer.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequestBody {
    /// The receipt's number.
    pub receipt_no: String,
    /// Who receives it.
    pub to: TransferReceiver,
}

/// A dispatch-city change.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    /// The province of dispatch: the holder's own.
    pub province_id: u32,
    /// The city of dispatch, in that province.
    pub city: String,
}

/// A deposit holder's profile as it stands after transfers and dispatch changes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HolderProfileDto {
    /// Whoever holds the receipt now (10 digits).
    pub national_id: String,
    /// The receipt's number.
    pub receipt_no: String,
    /// The receipt's deposit date, Jalali `yyyy/mm/dd`: the holder's place in the queue.
    pub receipt_date: String,
    /// The holder the catalog lists, if the receipt was transferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transferred_from: Option<String>,
    /// Province of dispatch.
    pub province_id: u32,
    /// City of dispatch.
    pub city: String,
}

fn profile_json(state: &AppState, profile: &HolderProfile) -> HolderProfileDto {
    let catalog = &state.inner.catalog;
    let holder = catalog.holder(profile.holder);
    let city = &catalog.cities()[profile.city.index()];
    HolderProfileDto {
        national_id: format_national_id(profile.national_id),
        receipt_no: holder.map_or_else(String::new, |h| h.receipt_no.to_owned()),
        receipt_date: holder
            .and_then(|h| JalaliDate::from_day_number(h.receipt_day).ok())
            .map_or_else(String::new, |d| d.to_string()),
        transferred_from: profile.transferred_from.map(format_national_id),
        province_id: catalog.provinces()[usize::from(city.province)].id,
        city: city.name.clone(),
    }
}

/// The principal if its role handles transfers and dispatch changes at all (`403` if not).
fn office(state: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<Principal>, ApiError> {
    let who = principal(state, headers)?;
    if who.handles_holders() {
        Ok(who)
    } else {
        Err(forbidden(
            &who,
            "transfers and dispatch changes are for offices",
        ))
    }
}

/// The receipt `found`, if the principal serves its province; otherwise `404
/// not_found_code`, exactly as for a missing one.
fn in_scope(
    state: &AppState,
    who: &Principal,
    found: Option<HolderIdx>,
    not_found_code: &'static str,
) -> Result<HolderIdx, ApiError> {
    let province = found.and_then(|h| state.inner.catalog.holder_facts(h).map(|f| f.province));
    match (found, province) {
        (Some(holder), Some(p)) if who.serves_province(p) => Ok(holder),
        _ => Err(ApiError::NotFound(
            not_found_code,
            "no such holder or receipt".into(),
        )),
    }
}

/// The profile of `holder` after a change, as answered.
fn changed_profile(
    state: &AppState,
    holder: HolderIdx,
    not_found_code: &'static str,
) -> Result<HolderProfileDto, ApiError> {
    let profile = state
        .engine()?
        .holder_profile(holder)
        .ok_or(ApiError::NotFound(not_found_code, String::new()))?;
    Ok(profile_json(state, &profile))
}

/// The province and city named by a request, both in the catalog.
fn resolve_city(
    state: &AppState,
    field: &str,
    province_id: u32,
    city: &str,
) -> Result<CityIdx, ApiError> {
    let catalog = &state.inner.catalog;
    let invalid = |name: &str, message: String| ApiError::InvalidField {
        field: format!("{field}{name}"),
        message,
    };
    let province = catalog
        .province_by_id(province_id)
        .ok_or_else(|| invalid("province_id", format!("unknown province {province_id}")))?;
    catalog.city_by_name(province, city.trim()).ok_or_else(|| {
        invalid(
            "city",
            format!("no city {city:?} in province {province_id}"),
        )
    })
}

/// `POST /v1/admin/transfers` (an office of the receipt's province, or an operator): hand a
/// deposit receipt, and its date, to another person, once. Logged; the receiver then
/// authenticates with their own national ID and the tracking code given here and is called by
/// the receipt's date; the giver's credentials answer `403 receipt_transferred`.
#[utoipa::path(post, path = "/v1/admin/transfers", tag = "operator",
    request_body = TransferRequestBody, security(("bearer" = [])),
    responses((status = 201, body = HolderProfileDto),
        (status = 401, body = Problem), (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`receipt_not_found` (also another province's receipt)", body = Problem),
        (status = 409, description = "`transfer_used`, `transfer_closed`, `giver_has_reservation`, `receiver_holds_receipt`", body = Problem),
        (status = 422, description = "`invalid_field`, `province_change_unsupported`", body = Problem)))]
pub async fn transfer(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<TransferRequestBody>,
) -> Result<(StatusCode, Json<HolderProfileDto>), ApiError> {
    let who = office(&state, &headers)?;
    let national_id =
        parse_national_id(&body.to.national_id).map_err(|e| ApiError::InvalidField {
            field: "to.national_id".into(),
            message: e.to_string(),
        })?;
    let engine = state.engine()?;
    let found = engine.holder_by_receipt(body.receipt_no.trim());
    let holder = in_scope(&state, &who, found, "receipt_not_found")?;
    let city = resolve_city(&state, "to.", body.to.province_id, &body.to.city)?;
    let request = TransferRequest {
        holder,
        national_id,
        tracking_code: body.to.tracking_code.trim(),
        city,
        principal: &who.id,
    };
    if let Some(cluster) = state.cluster() {
        let command = WriteCommand::Transfer {
            holder,
            national_id,
            tracking_code: request.tracking_code.to_owned(),
            city,
            principal: who.id.to_string(),
        };
        crate::cluster::replicate(&**cluster, command).await?;
    } else {
        let decided = engine.transfer(request)?;
        engine.durable(decided.ticket).await?;
    }
    tracing::info!(
        target: "miqat::audit",
        principal = %who.id,
        role = who.role.as_str(),
        action = "transfer",
        receipt = %body.receipt_no.trim(),
        to = %format_national_id(national_id),
        "receipt transferred"
    );
    let profile = changed_profile(&state, holder, "receipt_not_found")?;
    Ok((StatusCode::CREATED, Json(profile)))
}

/// `PUT /v1/admin/holders/{national_id}/dispatch` (an office of the holder's province, or an
/// operator): change the province and city a holder travels from, before any wave admitting
/// them has opened. Logged.
#[utoipa::path(put, path = "/v1/admin/holders/{national_id}/dispatch", tag = "operator",
    params(("national_id" = String, Path)), request_body = DispatchRequest, security(("bearer" = [])),
    responses((status = 200, body = HolderProfileDto),
        (status = 401, body = Problem), (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`holder_not_found` (also another province's holder)", body = Problem),
        (status = 409, description = "`dispatch_frozen`", body = Problem),
        (status = 422, description = "`invalid_field`, `province_change_unsupported`", body = Problem)))]
pub async fn change_dispatch(
    State(state): State<AppState>,
    PathId(national): PathId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DispatchRequest>,
) -> Result<Json<HolderProfileDto>, ApiError> {
    let who = office(&state, &headers)?;
    let national_id = parse_national_id(&national).map_err(|e| ApiError::InvalidField {
        field: "national_id".into(),
        message: e.to_string(),
    })?;
    let engine = state.engine()?;
    let found = engine.holder_now(national_id);
    let holder = in_scope(&state, &who, found, "holder_not_found")?;
    let city = resolve_city(&state, "", body.province_id, &body.city)?;
    if let Some(cluster) = state.cluster() {
        let command = WriteCommand::Dispatch {
            holder,
            city,
            principal: who.id.to_string(),
        };
        crate::cluster::replicate(&**cluster, command).await?;
    } else {
        let decided = engine.change_dispatch(holder, city, &who.id)?;
        engine.durable(decided.ticket).await?;
    }
    tracing::info!(
        target: "miqat::audit",
        principal = %who.id,
        role = who.role.as_str(),
        action = "dispatch",
        holder = %format_national_id(national_id),
        city = %body.city.trim(),
        "dispatch city changed"
    );
    Ok(Json(changed_profile(&state, holder, "holder_not_found")?))
}
