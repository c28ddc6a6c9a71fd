//! The OpenAPI 3.1 document: generated from the handlers' annotations, then completed in one
//! place with what every operation shares (the statuses any `/v1` request can meet, problem
//! documents as `application/problem+json` with `code` as an enum, the `Retry-After`,
//! `ETag`, `Location` and `Idempotent-Replayed` headers, examples). It is built once and
//! served as bytes; a test compares its paths with [`crate::ROUTES`] both ways.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ERROR_CODES;
use crate::{dto, error, handlers};

/// The API description, as the annotations give it.
#[derive(OpenApi)]
#[openapi(
    info(title = "Miqat", description = "Hajj caravan registration: seats, holds, waiting lists."),
    paths(
        handlers::waves, handlers::provinces, handlers::province_caravans, handlers::caravan,
        handlers::reserve, handlers::get_reservation, handlers::cancel, handlers::accept,
        handlers::join_waitlist, handlers::waitlist_me, handlers::event,
        handlers::admin_reservations, handlers::admin_stats, handlers::replace_waves,
        handlers::healthz, handlers::readyz, handlers::cluster_status, crate::metrics_text, serve,
        crate::ops::summary, crate::ops::page,
        crate::roster::roster, crate::holders::transfer, crate::holders::change_dispatch,
        crate::cluster::add_learner, crate::cluster::promote, crate::cluster::remove,
        crate::queue::join, crate::queue::me,
    ),
    components(schemas(
        dto::ReserveRequest, dto::Credentials, dto::EventRequest, dto::Reservation, dto::Province,
        dto::Caravan, dto::CaravanSummary, dto::WaveDto, dto::WaitlistPlace, dto::ReservationPage,
        dto::Stats, dto::StatusCounts, error::Problem,
        crate::ops::OpsSummary, crate::ops::OpsProvince, crate::ops::OpsCounters, crate::ops::Buckets,
        crate::ops::NextWave,
        crate::roster::Roster, crate::roster::RosterEntry, crate::holders::TransferRequestBody,
        crate::holders::TransferReceiver, crate::holders::DispatchRequest,
        crate::holders::HolderProfileDto, crate::cluster::AddLearnerBody,
        crate::cluster::PromoteBody,
        crate::holders::HolderProfileDto, crate::queue::QueueJoinRequest,
        crate::queue::QueueStatus,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The content type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The complete document (built on first use).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
        complete(&mut doc);
        doc
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn serve() -> Response {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| serde_json::to_vec(document()).unwrap_or_default());
    let mut response = bytes.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What each error status means, with the codes it can carry.
fn status_description(status: u16) -> &'static str {
    match status {
        400 => "`malformed_request`: the body is not the JSON asked for",
        401 => {
            "`invalid_credentials` (unknown national ID or wrong tracking code), or \
             `unauthorized` (operator token missing or wrong)"
        }
        403 => {
            "`registration_not_open` (carries `opens_at`), `receipt_needs_conversion`, \
             `not_called` or `province_mismatch`"
        }
        404 => {
            "`caravan_not_found`, `reservation_not_found` (also someone else's), \
             `province_not_found`, `not_waiting` or `not_found`"
        }
        408 => "`request_timeout`: the body did not arrive within the read deadline",
        409 => {
            "`caravan_full` (carries `alternatives`), `already_reserved` (carries \
             `reservation_id`), `invalid_transition`, `seats_available` or `registration_ended`"
        }
        413 => "`body_too_large`: bodies are limited to 16 KiB",
        422 => {
            "`invalid_field` (names `field`), `idempotency_key_reused` or `schedule_out_of_order`"
        }
        429 => "`rate_limited`: retry after `Retry-After` seconds",
        500 => "`internal_error`: the log failed; nothing was acknowledged",
        503 => {
            "`overloaded` (admission control shed the request) or `not_ready` (recovery \
             running); retry after `Retry-After` seconds"
        }
        _ => "",
    }
}

/// Fills in what the annotations leave to this one place.
fn complete(doc: &mut Value) {
    complete_problem_schema(doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if let Some(operation) = operation.as_object_mut() {
                complete_operation(path, method, operation);
            }
        }
    }
}

fn complete_problem_schema(doc: &mut Value) {
    let Some(problem) = doc.pointer_mut("/components/schemas/Problem/properties") else {
        return;
    };
    problem["code"] = json!({
        "type": "string",
        "enum": ERROR_CODES,
        "description": "A stable machine-readable code clients branch on.",
    });
    problem["opens_at"]["format"] = json!("date-time");
    problem["type"]["enum"] = json!(["about:blank"]);
}

fn complete_operation(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let tags: Vec<String> = operation
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let has_body = operation.contains_key("requestBody");
    let keyed = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
    let responses = operation
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    if path.starts_with("/v1/") {
        let identified = tags.iter().any(|t| t == "applicant" || t == "operator");
        let mut reachable = vec![413, 429, 503];
        if has_body {
            reachable.extend([400, 408]);
        }
        if identified {
            // Credentials or a token are checked; a national ID or a key can be malformed;
            // decisions wait for the log, which can fail.
            reachable.extend([401, 422, 500]);
        }
        if path.contains('{') {
            reachable.push(404);
        }
        for status in reachable {
            responses
                .entry(status.to_string())
                .or_insert_with(|| json!({}));
        }
    }
    for (status, response) in responses.iter_mut() {
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        complete_response(status, response, keyed);
    }
    if path == "/v1/provinces/{id}/caravans" && method == "get" {
        add_caravan_list_headers(operation);
    }
    if path == "/v1/reservations" && method == "post" {
        add_reservation_examples(operation);
    }
    if path.starts_with("/v1/queue") {
        add_queue_headers(operation);
    }
}

/// The waiting room's answers: `ETag` on 200 and 304, `Retry-After` (when to poll next) on 200.
fn add_queue_headers(operation: &mut Map<String, Value>) {
    let Some(responses) = operation.get_mut("responses") else {
        return;
    };
    for status in ["200", "304"] {
        if let Some(response) = responses.get_mut(status) {
            response["headers"]["ETag"] = json!({
                "description": "Tag of this standing; send it back in `If-None-Match`",
                "schema": { "type": "string" }
            });
        }
    }
    if let Some(ok) = responses.get_mut("200") {
        ok["headers"]["Retry-After"] = json!({
            "description": "Seconds to wait before polling `GET /v1/queue/me` again (absent \
                            once admitted)",
            "schema": { "type": "integer", "minimum": 0 }
        });
    }
}

fn complete_response(status: u16, response: &mut Value, keyed: bool) {
    if status >= 400 {
        response["content"] = json!({
            PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } }
        });
        let described = response["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty());
        if !described {
            response["description"] = json!(status_description(status));
        }
    } else if response["description"].as_str().is_none_or(str::is_empty) {
        response["description"] = json!(match status {
            201 => "Created, and durable on disk",
            304 => "Not modified: the `If-None-Match` tag is current",
            _ => "Success",
        });
    }
    if matches!(status, 429 | 503) {
        response["headers"]["Retry-After"] = json!({
            "description": "Seconds to wait before retrying",
            "schema": { "type": "integer", "minimum": 0 }
        });
    }
    if keyed && (200..300).contains(&status) {
        response["headers"]["Idempotent-Replayed"] = json!({
            "description": "`true` when this answer repeats an earlier decision made with \
                            the same `Idempotency-Key`",
            "schema": { "type": "string", "enum": ["true"] }
        });
    }
}

fn add_caravan_list_headers(operation: &mut Map<String, Value>) {
    let etag = json!({
        "description": "Strong tag of this list; send it back in `If-None-Match`",
        "schema": { "type": "string" }
    });
    for status in ["200", "304"] {
        if let Some(response) = operation
            .get_mut("responses")
            .and_then(|r| r.get_mut(status))
        {
            response["headers"]["ETag"] = etag.clone();
        }
    }
    if let Some(ok) = operation
        .get_mut("responses")
        .and_then(|r| r.get_mut("200"))
    {
        ok["headers"]["Content-Encoding"] = json!({
            "description": "`gzip` when the request's `Accept-Encoding` accepts it (the \
                            gzip representation has its own ETag)",
            "schema": { "type": "string", "enum": ["gzip"] }
        });
    }
    let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
    if let Some(parameters) = parameters.as_array_mut() {
        parameters.push(json!({
            "name": "If-None-Match",
            "in": "header",
            "required": false,
            "description": "A tag from an earlier answer's `ETag`: 304 if the list is unchanged",
            "schema": { "type": "string" }
        }));
    }
}

fn add_reservation_examples(operation: &mut Map<String, Value>) {
    let Some(responses) = operation.get_mut("responses") else {
        return;
    };
    responses["201"]["headers"]["Location"] = json!({
        "description": "The new reservation: `/v1/reservations/{id}`",
        "schema": { "type": "string" }
    });
    responses["409"]["content"][PROBLEM_JSON]["examples"] = json!({
        "caravan_full": { "value": {
            "type": "about:blank", "title": "Caravan is full", "status": 409,
            "code": "caravan_full", "detail": "the caravan is full",
            "alternatives": [{
                "id": "C0042", "route": "medina_first", "price_group": "B",
                "departure_date": "1399/05/02", "price_rial": 1_500_000_000_u64,
                "seats_free": 12
            }]
        }}
    });
    responses["403"]["content"][PROBLEM_JSON]["examples"] = json!({
        "registration_not_open": { "value": {
            "type": "about:blank", "title": "Registration not open", "status": 403,
            "code": "registration_not_open",
            "detail": "registration is not open for this holder yet; it opens at 1398/12/09 10:00 \
                       Tehran time",
            "opens_at": "2020-02-28T06:30:00Z", "opens_at_jalali": "1398/12/09 10:00"
        }}
    });
}
