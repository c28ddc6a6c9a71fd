//! The engine's one error type: every refusal a client or operator can meet, and the log's
//! failures.

use crate::catalog::CaravanIdx;
use crate::model::{ReservationId, Status};
use crate::wal::WalError;

/// Why the engine refused or could not complete a request. A refusal changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Unknown national ID or wrong tracking code (one answer for both).
    #[error("unknown national ID or wrong tracking code")]
    InvalidCredentials,
    /// The holder's receipt is an old one that must be converted first.
    #[error("the deposit receipt must be converted to a current receipt before registering")]
    ReceiptNeedsConversion,
    /// No wave calling this holder has opened yet.
    #[error("registration is not open for this holder yet")]
    RegistrationNotOpen {
        /// The earliest opening that will call the holder, if any is scheduled.
        opens_at_ms: Option<i64>,
    },
    /// Open waves do not reach this holder's receipt date, and no later wave will.
    #[error("the receipt's date is later than every open wave's cutoff")]
    NotCalled,
    /// The caravan is not of the holder's province and city.
    #[error("the caravan is not in the holder's province and city")]
    ProvinceMismatch,
    /// No such caravan.
    #[error("no such caravan")]
    CaravanNotFound,
    /// No such reservation (or someone else's).
    #[error("no such reservation")]
    ReservationNotFound,
    /// The caravan has no free seat.
    #[error("the caravan is full")]
    CaravanFull {
        /// Up to five caravans of the holder's city with free seats.
        alternatives: Vec<CaravanIdx>,
    },
    /// The holder already holds a live reservation.
    #[error("the holder already has a live reservation")]
    AlreadyReserved {
        /// The live reservation.
        reservation: ReservationId,
    },
    /// The reservation cannot make this move.
    #[error("invalid transition from {}: {detail}", status.as_str())]
    InvalidTransition {
        /// Where the reservation stands.
        status: Status,
        /// What was asked and why it does not fit.
        detail: String,
    },
    /// The `Idempotency-Key` was used before with a different request.
    #[error("the Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Joining the waiting list while the holder's city still has free seats.
    #[error("seats are still free in the holder's city; reserve one instead")]
    SeatsAvailable {
        /// Caravans of the holder's city with free seats.
        alternatives: Vec<CaravanIdx>,
    },
    /// The holder's registration for this season has ended (cancelled, expired, rejected,
    /// deceased, or an offer declined or lapsed): a choice is final.
    #[error("the holder's registration for this season has ended; a choice is final")]
    RegistrationEnded {
        /// The ended reservation.
        reservation: ReservationId,
    },
    /// A field of the request is not acceptable.
    #[error("invalid {field}: {message}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A new schedule opens a wider cutoff before a narrower one in some province, and the
    /// operator did not allow it explicitly.
    #[error("{message}")]
    ScheduleOutOfOrder {
        /// Both waves, their cutoffs and openings, and the province.
        message: String,
    },
    /// The receipt was transferred once already.
    #[error("this receipt was transferred once already; a receipt is transferred at most once")]
    TransferUsed,
    /// A wave admitting the receipt has opened, or opens within
    /// [`crate::TRANSFERS_CLOSE_BEFORE_OPENING_MS`]: transfers of it are closed.
    #[error(
        "transfers of this receipt are closed: a wave admitting it opens within 10 seconds or has opened"
    )]
    TransferClosed,
    /// The giver holds or held a reservation, or waits on the waiting list.
    #[error("the giver holds or held a reservation this season, or is on a waiting list")]
    GiverHasReservation,
    /// The receiver already holds a deposit receipt (their own or a transferred one).
    #[error("the receiver already holds a deposit receipt")]
    ReceiverHoldsReceipt,
    /// A wave admitting the holder has opened, or they registered: the dispatch city is frozen.
    #[error(
        "the dispatch city is frozen: a wave admitting this holder has opened, or they registered"
    )]
    DispatchFrozen,
    /// The change would move the holder to another province, which this version cannot do.
    #[error(
        "moving a holder to another province is not supported; the city must be of the receipt's province"
    )]
    ProvinceChangeUnsupported,
    /// The holder gave their receipt away in a transfer: they can no longer register.
    #[error("this holder's receipt was transferred to another person; they can no longer register")]
    ReceiptTransferred,
    /// The holder's wave has no waiting room (they reserve directly).
    #[error("the wave that admits this holder has no waiting room; reserve directly")]
    NoWaitingRoom,
    /// The waiting room does not take joins yet.
    #[error("the waiting room is not open yet")]
    QueueNotOpen {
        /// When it opens for joins.
        opens_at_ms: i64,
    },
    /// Every seat of the holder's province is taken: queuing would be in vain.
    #[error("every seat of this holder's province is taken; the waiting list is open instead")]
    ProvinceSoldOut,
    /// The log cannot take more records right now; retry later.
    #[error("the write-ahead log is saturated; retry shortly")]
    Overloaded,
    /// The log failed; nothing will be acknowledged any more (fail-stop).
    #[error("the write-ahead log failed; no decision can be acknowledged: {0}")]
    LogFailed(String),
    /// The season or catalog does not fit the engine.
    #[error("configuration: {0}")]
    Config(String),
    /// Recovery refused to start.
    #[error("recovery: {0}")]
    Recovery(String),
}

impl EngineError {
    /// The stable snake_case code clients branch on (the HTTP API's problem `code`).
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::InvalidCredentials => "invalid_credentials",
            EngineError::ReceiptNeedsConversion => "receipt_needs_conversion",
            EngineError::RegistrationNotOpen { .. } => "registration_not_open",
            EngineError::NotCalled => "not_called",
            EngineError::ProvinceMismatch => "province_mismatch",
            EngineError::CaravanNotFound => "caravan_not_found",
            EngineError::ReservationNotFound => "reservation_not_found",
            EngineError::CaravanFull { .. } => "caravan_full",
            EngineError::AlreadyReserved { .. } => "already_reserved",
            EngineError::InvalidTransition { .. } => "invalid_transition",
            EngineError::IdempotencyKeyReused => "idempotency_key_reused",
            EngineError::SeatsAvailable { .. } => "seats_available",
            EngineError::RegistrationEnded { .. } => "registration_ended",
            EngineError::InvalidField { .. } => "invalid_field",
            EngineError::ScheduleOutOfOrder { .. } => "schedule_out_of_order",
            EngineError::TransferUsed => "transfer_used",
            EngineError::TransferClosed => "transfer_closed",
            EngineError::GiverHasReservation => "giver_has_reservation",
            EngineError::ReceiverHoldsReceipt => "receiver_holds_receipt",
            EngineError::DispatchFrozen => "dispatch_frozen",
            EngineError::ProvinceChangeUnsupported => "province_change_unsupported",
            EngineError::ReceiptTransferred => "receipt_transferred",
            EngineError::NoWaitingRoom => "no_waiting_room",
            EngineError::QueueNotOpen { .. } => "queue_not_open",
            EngineError::ProvinceSoldOut => "province_sold_out",
            EngineError::Overloaded => "overloaded",
            EngineError::LogFailed(_) | EngineError::Config(_) | EngineError::Recovery(_) => {
                "internal_error"
            }
        }
    }
}

impl From<WalError> for EngineError {
    fn from(e: WalError) -> EngineError {
        match e {
            WalError::Backpressure => EngineError::Overloaded,
            other => EngineError::LogFailed(other.to_string()),
        }
    }
}
