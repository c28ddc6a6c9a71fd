//! The engine's vocabulary: reservation ids, statuses, end reasons, operator events and the
//! read-only views handed to callers.

use std::fmt;

use crate::catalog::{CaravanIdx, HolderIdx, ProvinceIdx, SlotIdx};
use crate::season::Stage;

/// A reservation's public id: where it lives (its province's shard and its slot there) and
/// 128 random bits that make it unguessable. Shown as 44 lowercase hex digits: 4 for the
/// shard, 8 for the slot, 32 for the secret. Finding a reservation is an array index and a
/// comparison of the secret, with no global map on the reservation path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    /// The province shard that holds it.
    pub shard: ProvinceIdx,
    /// Its position among the shard's reservations.
    pub slot: SlotIdx,
    /// 128 random bits.
    pub secret: u128,
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}{:08x}{:032x}",
            self.shard.0, self.slot.0, self.secret
        )
    }
}

impl ReservationId {
    /// Characters of the text form.
    pub const TEXT_LEN: usize = 44;

    /// Parses the 44-hex-digit text form; returns `None` for anything else.
    pub fn parse(text: &str) -> Option<ReservationId> {
        if text.len() != Self::TEXT_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(ReservationId {
            shard: ProvinceIdx(u16::from_str_radix(text.get(0..4)?, 16).ok()?),
            slot: SlotIdx(u32::from_str_radix(text.get(4..12)?, 16).ok()?),
            secret: u128::from_str_radix(text.get(12..)?, 16).ok()?,
        })
    }
}

/// Where a reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// A waiting-list offer, waiting for the holder to accept it before its deadline.
    Offered,
    /// A hold moving through its stages.
    Held,
    /// Every stage done: a final registration.
    Confirmed,
    /// Cancelled by the holder (or the offer declined), or ended by a death.
    Cancelled,
    /// A stage or offer deadline passed.
    Expired,
    /// Rejected at the medical examination.
    Rejected,
}

impl Status {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Offered => "offered",
            Status::Held => "held",
            Status::Confirmed => "confirmed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
        }
    }

    /// Every status, in on-disk code order.
    pub const ALL: [Status; 6] = [
        Status::Offered,
        Status::Held,
        Status::Confirmed,
        Status::Cancelled,
        Status::Expired,
        Status::Rejected,
    ];

    /// Parses the contract's spelling; returns `None` for anything else.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether a reservation in this status occupies a seat.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Offered | Status::Held | Status::Confirmed)
    }
}

/// Why a reservation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The holder cancelled a hold or a confirmed registration.
    HolderCancelled,
    /// A stage deadline passed.
    StageExpired,
    /// The medical examination rejected the pilgrim.
    MedicalRejected,
    /// The pilgrim died.
    Deceased,
    /// A waiting-list offer was not accepted in time.
    OfferExpired,
    /// The holder declined a waiting-list offer.
    OfferDeclined,
}

impl EndReason {
    const ALL: [EndReason; 6] = [
        EndReason::HolderCancelled,
        EndReason::StageExpired,
        EndReason::MedicalRejected,
        EndReason::Deceased,
        EndReason::OfferExpired,
        EndReason::OfferDeclined,
    ];

    /// The status a reservation ends in for this reason.
    pub fn status(self) -> Status {
        match self {
            EndReason::HolderCancelled | EndReason::Deceased | EndReason::OfferDeclined => {
                Status::Cancelled
            }
            EndReason::StageExpired | EndReason::OfferExpired => Status::Expired,
            EndReason::MedicalRejected => Status::Rejected,
        }
    }

    /// A stable snake_case name for reports and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::HolderCancelled => "holder_cancelled",
            EndReason::StageExpired => "stage_expired",
            EndReason::MedicalRejected => "medical_rejected",
            EndReason::Deceased => "deceased",
            EndReason::OfferExpired => "offer_expired",
            EndReason::OfferDeclined => "offer_declined",
        }
    }

    /// The stable one-byte code used on disk.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason with on-disk code `code`, if and only if it is one.
    pub fn from_code(code: u8) -> Option<EndReason> {
        EndReason::ALL.get(usize::from(code)).copied()
    }
}

/// An event reported by an operator (caravan manager, payment gateway, medical centre).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperatorEvent {
    /// Completes the `documents` stage.
    DocumentsReceived,
    /// Completes the `first_payment` stage.
    FirstPaymentReceived,
    /// Completes the `medical` stage.
    MedicalApproved,
    /// Completes the `final_payment` stage.
    FinalPaymentReceived,
    /// Ends the registration: the pilgrim failed the medical examination.
    MedicalRejected,
    /// Ends the registration: the pilgrim died.
    Deceased,
}

impl OperatorEvent {
    /// Every event.
    pub const ALL: [OperatorEvent; 6] = [
        OperatorEvent::DocumentsReceived,
        OperatorEvent::FirstPaymentReceived,
        OperatorEvent::MedicalApproved,
        OperatorEvent::FinalPaymentReceived,
        OperatorEvent::MedicalRejected,
        OperatorEvent::Deceased,
    ];

    /// The contract's spelling (`documents_received`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorEvent::DocumentsReceived => "documents_received",
            OperatorEvent::FirstPaymentReceived => "first_payment_received",
            OperatorEvent::MedicalApproved => "medical_approved",
            OperatorEvent::FinalPaymentReceived => "final_payment_received",
            OperatorEvent::MedicalRejected => "medical_rejected",
            OperatorEvent::Deceased => "deceased",
        }
    }

    /// Parses the contract's spelling; returns `None` for anything else.
    pub fn parse(text: &str) -> Option<OperatorEvent> {
        OperatorEvent::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The stage this event completes, or `None` for the events that end a registration.
    pub fn completes(self) -> Option<Stage> {
        match self {
            OperatorEvent::DocumentsReceived => Some(Stage::Documents),
            OperatorEvent::FirstPaymentReceived => Some(Stage::FirstPayment),
            OperatorEvent::MedicalApproved => Some(Stage::Medical),
            OperatorEvent::FinalPaymentReceived => Some(Stage::FinalPayment),
            OperatorEvent::MedicalRejected | OperatorEvent::Deceased => None,
        }
    }
}

/// A reservation as stored in its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub id: ReservationId,
    pub holder: HolderIdx,
    pub caravan: CaravanIdx,
    pub status: Status,
    /// The pending stage while `Held`; `None` otherwise.
    pub stage: Option<Stage>,
    /// The deadline while live and not confirmed; `None` otherwise.
    pub deadline_ms: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub end_reason: Option<EndReason>,
}

/// A read-only copy of a reservation, for callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationView {
    /// The public id.
    pub id: ReservationId,
    /// The holder's national ID.
    pub national_id: u64,
    /// The holder's catalog index.
    pub holder: HolderIdx,
    /// The caravan's catalog index.
    pub caravan: CaravanIdx,
    /// The caravan's province.
    pub province: ProvinceIdx,
    /// Where the reservation stands.
    pub status: Status,
    /// The pending stage while held.
    pub stage: Option<Stage>,
    /// The deadline of the pending stage or offer, while there is one.
    pub deadline_ms: Option<i64>,
    /// When the reservation (or offer) was made.
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
    /// Why it ended, once it has.
    pub end_reason: Option<EndReason>,
}

/// A holder's place on their province's waiting list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitlistPlace {
    /// The province whose list it is.
    pub province: ProvinceIdx,
    /// 1-based position: 1 is next in line.
    pub position: u64,
}

/// A holder's waiting-list situation: their place while waiting, their offer once made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitlistStatus {
    /// The province whose list it is.
    pub province: ProvinceIdx,
    /// The place while still waiting; `None` once an offer was made.
    pub position: Option<u64>,
    /// The open offer, if one was made and is still open.
    pub offer: Option<ReservationView>,
}
