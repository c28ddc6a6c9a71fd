//! The JSON shapes of the API (requests and responses) and their conversion from engine
//! types: times as RFC 3339 UTC with a Tehran wall-clock Jalali twin.

use miqat_engine::calendar::{
    JalaliDate, format_national_id, format_rfc3339_utc, format_tehran_jalali,
};
use miqat_engine::catalog::{CaravanIdx, Catalog};
use miqat_engine::model::ReservationView;
use miqat_engine::season::Wave;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A holder's credentials plus the caravan they want.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// 10-digit national ID (Persian digits accepted).
    pub national_id: String,
    /// The tracking code from the holder's profile.
    pub tracking_code: String,
    /// The caravan's id.
    pub caravan_id: String,
}

/// A holder's credentials.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// 10-digit national ID (Persian digits accepted).
    pub national_id: String,
    /// The tracking code from the holder's profile.
    pub tracking_code: String,
}

/// An operator's event for a reservation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// One of `documents_received`, `first_payment_received`, `medical_approved`,
    /// `final_payment_received`, `medical_rejected`, `deceased`.
    pub kind: String,
}

/// A reservation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reservation {
    /// 44 hex digits: shard (4), slot (8) and a 128-bit random secret (32).
    pub id: String,
    /// The holder's national ID (10 digits).
    pub national_id: String,
    /// The caravan's id.
    pub caravan_id: String,
    /// The caravan's province id.
    pub province_id: u32,
    /// `offered`, `held`, `confirmed`, `cancelled`, `expired` or `rejected`.
    pub status: &'static str,
    /// The pending stage while held: `documents`, `first_payment`, `medical`, `final_payment`.
    pub stage: Option<&'static str>,
    /// The deadline of the pending stage or offer (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub deadline: Option<String>,
    /// The same deadline in Tehran wall clock, Jalali.
    pub deadline_jalali: Option<String>,
    /// When it was made (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The same instant in Tehran wall clock, Jalali.
    pub created_at_jalali: String,
    /// When it last changed (RFC 3339 UTC).
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The same instant in Tehran wall clock, Jalali.
    pub updated_at_jalali: String,
    /// Why it ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<&'static str>,
    /// The holder the catalog lists for the receipt, when it was transferred to the holder
    /// named in `national_id` (receipt priority transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transferred_from: Option<String>,
}

impl Reservation {
    /// The API form of `view`.
    pub fn from_view(catalog: &Catalog, view: &ReservationView) -> Reservation {
        let caravan = &catalog.caravans()[view.caravan.index()];
        Reservation {
            id: view.id.to_string(),
            national_id: format_national_id(view.national_id),
            caravan_id: caravan.id.clone(),
            province_id: catalog.provinces()[usize::from(view.province)].id,
            status: view.status.as_str(),
            stage: view.stage.map(|s| s.as_str()),
            deadline: view.deadline_ms.map(format_rfc3339_utc),
            deadline_jalali: view.deadline_ms.map(format_tehran_jalali),
            created_at: format_rfc3339_utc(view.created_ms),
            created_at_jalali: format_tehran_jalali(view.created_ms),
            updated_at: format_rfc3339_utc(view.updated_ms),
            updated_at_jalali: format_tehran_jalali(view.updated_ms),
            end_reason: view.end_reason.map(|r| r.as_str()),
            transferred_from: None,
        }
    }

    /// [`Reservation::from_view`] with `transferred_from` filled in: for the operator's export
    /// only, since the giver's national ID is not the receiver's to see.
    pub fn from_view_for_operator(catalog: &Catalog, view: &ReservationView) -> Reservation {
        Reservation {
            transferred_from: catalog
                .holder_facts(view.holder)
                .map(|h| h.national_id)
                .filter(|&listed| listed != view.national_id)
                .map(format_national_id),
            ..Reservation::from_view(catalog, view)
        }
    }
}

/// A province with its seat counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Province {
    /// Public id.
    pub id: u32,
    /// English name.
    pub name_en: String,
    /// Persian name.
    pub name_fa: String,
    /// Seats over all the province's caravans.
    pub seats_total: u64,
    /// Seats not held, offered or confirmed.
    pub seats_free: u32,
}

/// A caravan with its free seats.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Caravan {
    /// Public id.
    pub id: String,
    /// Owning province's id.
    pub province_id: u32,
    /// City of dispatch.
    pub city: String,
    /// Caravan manager.
    pub manager: String,
    /// Manager's phone.
    pub phone: String,
    /// Hotel price group.
    pub price_group: String,
    /// `medina_first` or `medina_second`.
    pub route: &'static str,
    /// Departure date, Jalali `yyyy/mm/dd`.
    pub departure_date: String,
    /// Price per pilgrim in rial.
    pub price_rial: u64,
    /// Seats.
    pub capacity: u32,
    /// Seats free now (at most a few milliseconds stale on the list).
    pub seats_free: u32,
}

impl Caravan {
    /// The API form of caravan `idx` with `seats_free`.
    pub fn new(catalog: &Catalog, idx: CaravanIdx, seats_free: u32) -> Caravan {
        let c = &catalog.caravans()[idx.index()];
        Caravan {
            id: c.id.clone(),
            province_id: catalog.provinces()[usize::from(c.province)].id,
            city: catalog.cities()[c.city.index()].name.clone(),
            manager: c.manager.clone(),
            phone: c.phone.clone(),
            price_group: c.price_group.clone(),
            route: c.route.as_str(),
            departure_date: jalali_day(c.departure_day),
            price_rial: c.price_rial,
            capacity: c.capacity,
            seats_free,
        }
    }
}

/// A caravan offered as an alternative.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CaravanSummary {
    /// Public id.
    pub id: String,
    /// `medina_first` or `medina_second`.
    pub route: &'static str,
    /// Hotel price group.
    pub price_group: String,
    /// Departure date, Jalali.
    pub departure_date: String,
    /// Price per pilgrim in rial.
    pub price_rial: u64,
    /// Seats free now.
    pub seats_free: u32,
}

impl CaravanSummary {
    /// The summary of caravan `idx`.
    pub fn new(catalog: &Catalog, idx: CaravanIdx, seats_free: u32) -> CaravanSummary {
        let c = &catalog.caravans()[idx.index()];
        CaravanSummary {
            id: c.id.clone(),
            route: c.route.as_str(),
            price_group: c.price_group.clone(),
            departure_date: jalali_day(c.departure_day),
            price_rial: c.price_rial,
            seats_free,
        }
    }
}

/// A registration wave. A receipt is *called* by the first wave of its province whose
/// `receipts_until` covers it (the smallest such cutoff; several waves with that cutoff all
/// call it), and its holder may register once a wave calling them has opened, or a wave of
/// the province whose cutoff covers the receipt and that `admits_earlier_receipts` has.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveDto {
    /// The wave's name.
    pub name: String,
    /// Receipts deposited on or before this Jalali date are called.
    pub receipts_until: String,
    /// Opening instant: RFC 3339, or Tehran wall clock `yyyy/mm/dd HH:MM` (Jalali) on input.
    pub opens_at: String,
    /// The opening in Tehran wall clock, Jalali (ignored on input, so a schedule read with
    /// `GET /v1/waves` can be edited and sent back).
    #[serde(default)]
    pub opens_at_jalali: String,
    /// Province ids this wave opens; absent or null for every province.
    #[serde(default)]
    pub provinces: Option<Vec<u32>>,
    /// Whether this wave also admits receipts that a wave with an earlier cutoff calls, even
    /// before that wave opens (optional on input, default false).
    #[serde(default)]
    pub admits_earlier_receipts: bool,
    /// Whether the wave has a waiting room that is on: its holders join `POST /v1/queue` and
    /// reserve with the pass it gives (ignored on input: rooms are configured in the season
    /// file).
    #[serde(default)]
    pub waiting_room: bool,
}

impl WaveDto {
    /// The API form of `wave`.
    pub fn from_wave(wave: &Wave) -> WaveDto {
        WaveDto {
            name: wave.name.clone(),
            receipts_until: jalali_day(wave.receipts_until_day),
            opens_at: format_rfc3339_utc(wave.opens_at_ms),
            opens_at_jalali: format_tehran_jalali(wave.opens_at_ms),
            provinces: wave.provinces.clone(),
            admits_earlier_receipts: wave.admits_earlier_receipts,
            waiting_room: false,
        }
    }
}

/// A place on a waiting list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WaitlistPlace {
    /// The province whose list it is.
    pub province_id: u32,
    /// 1-based position (1 is next); null once an offer was made.
    pub position: Option<u64>,
    /// The open offer, if any: accept it with `POST /v1/reservations/{id}/accept`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer: Option<Reservation>,
}

/// A page of reservations for operators.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReservationPage {
    /// The reservations of this page.
    pub items: Vec<Reservation>,
    /// How many were skipped.
    pub offset: usize,
    /// The page size asked for.
    pub limit: usize,
    /// The offset of the next page, if there may be one.
    pub next_offset: Option<usize>,
}

/// Engine-wide counts for operators.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    /// Seats over all caravans.
    pub seats_total: u64,
    /// Seats free.
    pub seats_free: u64,
    /// Reservations by status.
    pub reservations: StatusCounts,
    /// Holders on waiting lists.
    pub waiting: u64,
    /// Deadlines expired since start.
    pub expirations: u64,
    /// Records in the write-ahead log since it was created (its last LSN), restarts included.
    pub log_records: u64,
    /// Log records written by this process (since it started).
    pub log_records_since_start: u64,
    /// Log fsyncs by this process (since it started; fsyncs are not logged).
    pub log_fsyncs: u64,
}

/// Reservations by status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusCounts {
    /// Open waiting-list offers.
    pub offered: u64,
    /// Holds moving through stages.
    pub held: u64,
    /// Final registrations.
    pub confirmed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Expired by a deadline.
    pub expired: u64,
    /// Rejected at the medical examination.
    pub rejected: u64,
}

/// A day number as a Jalali date, or the Gregorian ISO date outside the Jalali range.
pub fn jalali_day(day: i32) -> String {
    match JalaliDate::from_day_number(day) {
        Ok(date) => date.to_string(),
        Err(_) => format!("day {day}"),
    }
}
