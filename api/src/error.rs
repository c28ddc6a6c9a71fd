//! The API's one error type and its mapping to `application/problem+json` (RFC 9457) with a
//! stable `code`: every engine refusal and every request defect is turned into HTTP here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use miqat_engine::EngineError;
use miqat_engine::calendar::{format_rfc3339_utc, format_tehran_jalali};
use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::CaravanSummary;

/// An RFC 9457 problem document, as sent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the `code` says what happened.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short human-readable summary.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// A stable machine-readable code clients branch on.
    pub code: &'static str,
    /// What exactly went wrong.
    pub detail: String,
    /// `registration_not_open`: when the holder's wave opens (RFC 3339 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    /// `registration_not_open`: the same instant in Tehran wall clock (Jalali).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at_jalali: Option<String>,
    /// `caravan_full`, `seats_available`: up to five caravans of the holder's city with free
    /// seats; for `caravan_full` the closest to the one asked for first (same route, then
    /// nearest price group, then nearest departure), equally close ones in an order of the
    /// holder's own so that refused holders are spread over them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<Vec<CaravanSummary>>,
    /// `already_reserved`: the holder's live reservation; `registration_ended`: the ended one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    /// `invalid_field`: the offending field; `schedule_out_of_order`: `waves`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `invalid_transition`: where the reservation stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_status: Option<&'static str>,
}

/// Everything a handler can answer with instead of success.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not the JSON asked for.
    Malformed(String),
    /// 422: a field is present but not acceptable.
    InvalidField {
        /// The field's name.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 401: missing or wrong operator token.
    Unauthorized,
    /// 403: the principal's role never allows this action (nothing was looked up).
    Forbidden(String),
    /// 404 for an unknown route parameter that is not a caravan or reservation.
    NotFound(&'static str, String),
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 413: the body is larger than the limit.
    BodyTooLarge(usize),
    /// 408: the request (headers and body) was not received within this many seconds.
    RequestTimeout(u64),
    /// 429 with `Retry-After` seconds.
    RateLimited(u64),
    /// 503 with `Retry-After` seconds: admission control shed the request.
    Overloaded(u64),
    /// 503: recovery is still running.
    NotReady,
    /// 503 (`/readyz`): the write-ahead log failed with this cause; the process is exiting.
    Stopped(String),
    /// A refusal (or failure) of the engine, with caravan summaries already resolved.
    Engine(EngineError, Option<Vec<CaravanSummary>>),
    /// 421 (cluster mode): this node does not take writes; the leader's API address, when
    /// known, goes in the `Miqat-Leader` header. Nothing was decided.
    NotLeader(Option<String>),
    /// 503 with `Retry-After` (cluster mode): the write may or may not have been decided
    /// (leadership changed or a timeout while it was in flight); retry with the same
    /// `Idempotency-Key` to learn its outcome.
    OutcomeUnknown,
    /// 409 (cluster mode): a membership change refused, with its code and why.
    Membership(&'static str, String),
    /// Cluster mode: this operation is not replicated yet, so it is refused rather than made
    /// on one node only.
    NotReplicated(&'static str),
    /// 403: the holder's waiting room is active and the reservation carries no valid pass.
    QueuePass(QueuePassProblem),
}

/// Why a reservation's waiting-room pass was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuePassProblem {
    /// No `Miqat-Queue-Pass` header.
    Required,
    /// Not a pass, or forged or altered.
    Invalid,
    /// Genuine, but another holder's or another wave's.
    NotYours,
    /// Genuine and the holder's, but past its expiry.
    Expired,
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ApiError::Engine(e, None)
    }
}

impl ApiError {
    fn problem(&self) -> (StatusCode, Problem, Option<u64>) {
        let mut p = Problem {
            kind: "about:blank",
            title: "",
            status: 0,
            code: "",
            detail: String::new(),
            opens_at: None,
            opens_at_jalali: None,
            alternatives: None,
            reservation_id: None,
            field: None,
            reservation_status: None,
        };
        let mut retry_after = None;
        let status = match self {
            ApiError::Malformed(detail) => {
                set(&mut p, "Malformed request", "malformed_request", detail);
                StatusCode::BAD_REQUEST
            }
            ApiError::InvalidField { field, message } => {
                set(
                    &mut p,
                    "Invalid field",
                    "invalid_field",
                    &format!("{field}: {message}"),
                );
                p.field = Some(field.clone());
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Unauthorized => {
                set(
                    &mut p,
                    "Unauthorized",
                    "unauthorized",
                    "operator endpoints need `Authorization: Bearer <token>`",
                );
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(detail) => {
                set(&mut p, "Forbidden", "forbidden", detail);
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound(code, detail) => {
                set(&mut p, "Not found", code, detail);
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => {
                set(
                    &mut p,
                    "Method not allowed",
                    "method_not_allowed",
                    "this route does not take that method",
                );
                StatusCode::METHOD_NOT_ALLOWED
            }
            ApiError::BodyTooLarge(limit) => {
                set(
                    &mut p,
                    "Body too large",
                    "body_too_large",
                    &format!("request bodies are limited to {limit} bytes"),
                );
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout(seconds) => {
                set(
                    &mut p,
                    "Request timeout",
                    "request_timeout",
                    &format!("the request was not received within {seconds} s"),
                );
                StatusCode::REQUEST_TIMEOUT
            }
            ApiError::RateLimited(seconds) => {
                set(
                    &mut p,
                    "Too many requests",
                    "rate_limited",
                    "slow down and retry later",
                );
                retry_after = Some(*seconds);
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Overloaded(seconds) => {
                set(
                    &mut p,
                    "Overloaded",
                    "overloaded",
                    "the server is at capacity; retry after the given delay",
                );
                retry_after = Some(*seconds);
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotReady => {
                set(
                    &mut p,
                    "Not ready",
                    "not_ready",
                    "recovery is still running",
                );
                retry_after = Some(1);
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Stopped(cause) => {
                set(
                    &mut p,
                    "Not ready",
                    "not_ready",
                    &format!(
                        "the write-ahead log failed ({cause}): nothing is acknowledged any more \
                         and the process exits to be restarted"
                    ),
                );
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotLeader(_) => {
                set(
                    &mut p,
                    "Not the leader",
                    "not_leader",
                    "this node does not take writes; send them to the node in the Miqat-Leader header",
                );
                StatusCode::MISDIRECTED_REQUEST
            }
            ApiError::Membership(code, detail) => {
                set(&mut p, "Membership change refused", code, detail);
                StatusCode::CONFLICT
            }
            ApiError::QueuePass(problem) => {
                let (code, detail) = match problem {
                    QueuePassProblem::Required => (
                        "queue_pass_required",
                        "this wave has a waiting room: join it (POST /v1/queue), poll GET \
                         /v1/queue/me until admitted, then send its pass in the Miqat-Queue-Pass \
                         header",
                    ),
                    QueuePassProblem::Invalid => (
                        "queue_pass_invalid",
                        "the Miqat-Queue-Pass header is not a pass this server signed",
                    ),
                    QueuePassProblem::NotYours => (
                        "queue_pass_not_yours",
                        "the pass was issued to another holder or for another wave",
                    ),
                    QueuePassProblem::Expired => (
                        "queue_pass_expired",
                        "the pass has expired; a pass is valid for the room's pass lifetime \
                         from admission",
                    ),
                };
                set(&mut p, "Queue pass refused", code, detail);
                StatusCode::FORBIDDEN
            }
            ApiError::NotReplicated(what) => {
                set(
                    &mut p,
                    "Not available in cluster mode",
                    "not_replicated",
                    &format!(
                        "{what} is not replicated in this version: it is refused in cluster mode, so that no node changes alone"
                    ),
                );
                StatusCode::NOT_IMPLEMENTED
            }
            ApiError::OutcomeUnknown => {
                set(
                    &mut p,
                    "Outcome unknown",
                    "outcome_unknown",
                    "the write may or may not have been made; retry with the same Idempotency-Key",
                );
                retry_after = Some(1);
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Engine(e, alternatives) => {
                let (status, retry) = engine_problem(&mut p, e, alternatives.clone());
                retry_after = retry;
                status
            }
        };
        p.status = status.as_u16();
        (status, p, retry_after)
    }
}

fn set(p: &mut Problem, title: &'static str, code: &'static str, detail: &str) {
    p.title = title;
    p.code = code;
    p.detail = detail.to_owned();
}

fn engine_problem(
    p: &mut Problem,
    e: &EngineError,
    alternatives: Option<Vec<CaravanSummary>>,
) -> (StatusCode, Option<u64>) {
    let detail = e.to_string();
    let code = e.code();
    let status = match e {
        EngineError::InvalidCredentials => {
            set(p, "Invalid credentials", code, &detail);
            StatusCode::UNAUTHORIZED
        }
        EngineError::ReceiptNeedsConversion => {
            set(p, "Receipt needs conversion", code, &detail);
            StatusCode::FORBIDDEN
        }
        EngineError::RegistrationNotOpen { opens_at_ms } => {
            set(p, "Registration not open", code, &detail);
            p.opens_at = opens_at_ms.map(format_rfc3339_utc);
            p.opens_at_jalali = opens_at_ms.map(format_tehran_jalali);
            if let Some(jalali) = &p.opens_at_jalali {
                p.detail = format!("{detail}; it opens at {jalali} Tehran time");
            }
            StatusCode::FORBIDDEN
        }
        EngineError::NotCalled => {
            set(p, "Not called", code, &detail);
            StatusCode::FORBIDDEN
        }
        EngineError::ProvinceMismatch => {
            set(p, "Province mismatch", code, &detail);
            StatusCode::FORBIDDEN
        }
        EngineError::CaravanNotFound => {
            set(p, "Caravan not found", code, &detail);
            StatusCode::NOT_FOUND
        }
        EngineError::ReservationNotFound => {
            set(p, "Reservation not found", code, &detail);
            StatusCode::NOT_FOUND
        }
        EngineError::CaravanFull { .. } => {
            set(p, "Caravan is full", code, &detail);
            p.alternatives = Some(alternatives.unwrap_or_default());
            StatusCode::CONFLICT
        }
        EngineError::AlreadyReserved { reservation } => {
            set(p, "Already reserved", code, &detail);
            p.reservation_id = Some(reservation.to_string());
            StatusCode::CONFLICT
        }
        EngineError::InvalidTransition { status, .. } => {
            set(p, "Invalid transition", code, &detail);
            p.reservation_status = Some(status.as_str());
            StatusCode::CONFLICT
        }
        EngineError::IdempotencyKeyReused => {
            set(p, "Idempotency key reused", code, &detail);
            StatusCode::UNPROCESSABLE_ENTITY
        }
        EngineError::SeatsAvailable { .. } => {
            set(p, "Seats available", code, &detail);
            p.alternatives = Some(alternatives.unwrap_or_default());
            StatusCode::CONFLICT
        }
        EngineError::RegistrationEnded { reservation } => {
            set(p, "Registration ended", code, &detail);
            p.reservation_id = Some(reservation.to_string());
            StatusCode::CONFLICT
        }
        EngineError::InvalidField { field, message } => {
            set(p, "Invalid field", code, &format!("{field}: {message}"));
            p.field = Some((*field).to_owned());
            StatusCode::UNPROCESSABLE_ENTITY
        }
        EngineError::ScheduleOutOfOrder { .. } => {
            set(p, "Schedule out of order", code, &detail);
            p.field = Some("waves".to_owned());
            StatusCode::UNPROCESSABLE_ENTITY
        }
        EngineError::TransferUsed => {
            set(p, "Transfer used", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::TransferClosed => {
            set(p, "Transfers closed", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::GiverHasReservation => {
            set(p, "Giver has a reservation", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::ReceiverHoldsReceipt => {
            set(p, "Receiver holds a receipt", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::DispatchFrozen => {
            set(p, "Dispatch city frozen", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::ProvinceChangeUnsupported => {
            set(p, "Province change unsupported", code, &detail);
            StatusCode::UNPROCESSABLE_ENTITY
        }
        EngineError::ReceiptTransferred => {
            set(p, "Receipt transferred", code, &detail);
            StatusCode::FORBIDDEN
        }
        EngineError::NoWaitingRoom => {
            set(p, "No waiting room", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::QueueNotOpen { opens_at_ms } => {
            set(p, "Waiting room not open", code, &detail);
            p.opens_at = Some(format_rfc3339_utc(*opens_at_ms));
            p.opens_at_jalali = Some(format_tehran_jalali(*opens_at_ms));
            p.detail = format!(
                "{detail}; holders may join from {} Tehran time",
                format_tehran_jalali(*opens_at_ms)
            );
            StatusCode::CONFLICT
        }
        EngineError::ProvinceSoldOut => {
            set(p, "Province sold out", code, &detail);
            StatusCode::CONFLICT
        }
        EngineError::Overloaded => {
            set(p, "Overloaded", code, &detail);
            return (StatusCode::SERVICE_UNAVAILABLE, Some(1));
        }
        EngineError::LogFailed(_) | EngineError::Config(_) | EngineError::Recovery(_) => {
            // Logged once here: a 5xx is an operator's problem, not the client's.
            tracing::error!(error = %e, "engine failure");
            set(
                p,
                "Internal error",
                code,
                "the server cannot make decisions durable; nothing was acknowledged",
            );
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    (status, None)
}

impl ApiError {
    /// The stable code this error is sent with (for metrics).
    pub fn code(&self) -> &'static str {
        self.problem().1.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, problem, retry_after) = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ApiError::NotLeader(Some(leader)) = &self
            && let Ok(value) = HeaderValue::from_str(leader)
        {
            headers.insert("miqat-leader", value);
        }
        response.extensions_mut().insert(ErrorCode(problem.code));
        response
    }
}

/// The `code` of an error response, left in the response's extensions for metrics and logs.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// Every `code` a problem document can carry: the enum of the OpenAPI document's
/// `Problem.code`, so that generated clients can branch on it. A test checks that every error
/// the API can build is listed.
pub const ERROR_CODES: &[&str] = &[
    "malformed_request",
    "invalid_field",
    "invalid_credentials",
    "unauthorized",
    "registration_not_open",
    "receipt_needs_conversion",
    "not_called",
    "province_mismatch",
    "not_found",
    "province_not_found",
    "caravan_not_found",
    "reservation_not_found",
    "not_waiting",
    "method_not_allowed",
    "request_timeout",
    "caravan_full",
    "already_reserved",
    "invalid_transition",
    "seats_available",
    "registration_ended",
    "idempotency_key_reused",
    "schedule_out_of_order",
    "body_too_large",
    "rate_limited",
    "internal_error",
    "overloaded",
    "not_ready",
    "forbidden",
    "receipt_transferred",
    "receipt_not_found",
    "holder_not_found",
    "transfer_used",
    "transfer_closed",
    "giver_has_reservation",
    "receiver_holds_receipt",
    "dispatch_frozen",
    "province_change_unsupported",
    "not_leader",
    "outcome_unknown",
    "node_not_found",
    "node_already_member",
    "last_voter",
    "learner_behind",
    "membership_change_in_progress",
    "not_replicated",
    "no_waiting_room",
    "queue_not_open",
    "province_sold_out",
    "queue_pass_required",
    "queue_pass_invalid",
    "queue_pass_not_yours",
    "queue_pass_expired",
];

#[cfg(test)]
mod tests {
    use super::*;
    use miqat_engine::model::{ReservationId, Status};

    /// One error of every kind the API builds; a new variant must be added here (the match
    /// below does not compile otherwise).
    fn every_error() -> Vec<ApiError> {
        let reservation =
            ReservationId::parse(&"0".repeat(ReservationId::TEXT_LEN)).expect("a reservation id");
        let engine_errors = vec![
            EngineError::InvalidCredentials,
            EngineError::ReceiptNeedsConversion,
            EngineError::RegistrationNotOpen { opens_at_ms: None },
            EngineError::NotCalled,
            EngineError::ProvinceMismatch,
            EngineError::CaravanNotFound,
            EngineError::ReservationNotFound,
            EngineError::CaravanFull {
                alternatives: Vec::new(),
            },
            EngineError::IdempotencyKeyReused,
            EngineError::SeatsAvailable {
                alternatives: Vec::new(),
            },
            EngineError::InvalidField {
                field: "f",
                message: "m".into(),
            },
            EngineError::ScheduleOutOfOrder {
                message: "m".into(),
            },
            EngineError::AlreadyReserved { reservation },
            EngineError::RegistrationEnded { reservation },
            EngineError::InvalidTransition {
                status: Status::Expired,
                detail: "d".into(),
            },
            EngineError::Overloaded,
            EngineError::LogFailed("disk".into()),
            EngineError::Config("c".into()),
            EngineError::Recovery("r".into()),
            EngineError::TransferUsed,
            EngineError::TransferClosed,
            EngineError::GiverHasReservation,
            EngineError::ReceiverHoldsReceipt,
            EngineError::DispatchFrozen,
            EngineError::ProvinceChangeUnsupported,
            EngineError::ReceiptTransferred,
            EngineError::NoWaitingRoom,
            EngineError::QueueNotOpen { opens_at_ms: 0 },
            EngineError::ProvinceSoldOut,
        ];
        let mut errors: Vec<ApiError> = engine_errors.into_iter().map(ApiError::from).collect();
        errors.extend([
            ApiError::Malformed("x".into()),
            ApiError::InvalidField {
                field: "f".into(),
                message: "m".into(),
            },
            ApiError::Unauthorized,
            ApiError::MethodNotAllowed,
            ApiError::BodyTooLarge(1),
            ApiError::RequestTimeout(1),
            ApiError::RateLimited(1),
            ApiError::Overloaded(1),
            ApiError::NotReady,
            ApiError::Stopped("disk".into()),
            ApiError::Forbidden("f".into()),
            ApiError::NotLeader(Some("127.0.0.1:1".into())),
            ApiError::OutcomeUnknown,
            ApiError::NotReplicated("x"),
            ApiError::QueuePass(QueuePassProblem::Required),
            ApiError::QueuePass(QueuePassProblem::Invalid),
            ApiError::QueuePass(QueuePassProblem::NotYours),
            ApiError::QueuePass(QueuePassProblem::Expired),
        ]);
        for code in [
            "node_already_member",
            "last_voter",
            "learner_behind",
            "membership_change_in_progress",
        ] {
            errors.push(ApiError::Membership(code, String::new()));
        }
        for code in [
            "not_found",
            "province_not_found",
            "not_waiting",
            "receipt_not_found",
            "holder_not_found",
            "node_not_found",
        ] {
            errors.push(ApiError::NotFound(code, String::new()));
        }
        for e in &errors {
            // Exhaustive: a new variant fails to compile until it is listed above.
            match e {
                ApiError::Malformed(_)
                | ApiError::InvalidField { .. }
                | ApiError::Unauthorized
                | ApiError::NotFound(..)
                | ApiError::MethodNotAllowed
                | ApiError::BodyTooLarge(_)
                | ApiError::RequestTimeout(_)
                | ApiError::RateLimited(_)
                | ApiError::Overloaded(_)
                | ApiError::NotReady
                | ApiError::Stopped(_)
                | ApiError::Forbidden(_)
                | ApiError::NotLeader(_)
                | ApiError::OutcomeUnknown
                | ApiError::Membership(..)
                | ApiError::NotReplicated(_)
                | ApiError::QueuePass(_)
                | ApiError::Engine(..) => {}
            }
        }
        errors
    }

    #[test]
    fn every_code_sent_is_in_the_documented_enum() {
        let errors = every_error();
        assert!(errors.len() >= 30, "{}", errors.len());
        for e in &errors {
            assert!(
                ERROR_CODES.contains(&e.code()),
                "{:?} sends code {:?}, missing from ERROR_CODES",
                e,
                e.code()
            );
        }
    }
}
