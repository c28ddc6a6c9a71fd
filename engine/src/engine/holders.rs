//! Receipt priority transfers and dispatch-city changes: the commands, and the engine-wide
//! index of transferred receipts that authentication reads (who holds which receipt now).
//!
//! A transfer must check the receiver against every province (a person holds at most one
//! receipt), so transfers take the transfers lock, then the one shard lock of the receipt's
//! province; the index is written under both, after the record is logged and applied.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::catalog::{Catalog, CityIdx, HolderIdx};
use crate::error::EngineError;
use crate::machine::{ProfileChange, decide_profile_change};
use crate::record::Record;

use super::{Committed, Engine};

/// The most bytes a receiver's tracking code may have.
pub const TRACKING_CODE_BYTES_MAX: usize = 64;
/// The most bytes of a principal's id logged with a transfer or dispatch change.
pub const PRINCIPAL_BYTES_MAX: usize = 128;

/// Who holds which receipt after transfers: receivers by national ID, and the receipts given.
#[derive(Debug, Default)]
pub(crate) struct TransferIndex {
    receivers: FxHashMap<u64, (HolderIdx, Box<str>)>,
    given: FxHashSet<HolderIdx>,
}

impl TransferIndex {
    /// Notes a transfer record (live, replayed, or restored from a snapshot).
    pub fn note(&mut self, holder: HolderIdx, national_id: u64, tracking_code: &str) {
        self.receivers
            .insert(national_id, (holder, tracking_code.into()));
        self.given.insert(holder);
    }

    /// The receipt a receiver holds, with the tracking code they authenticate with.
    pub fn receiver(&self, national_id: u64) -> Option<(HolderIdx, &str)> {
        self.receivers
            .get(&national_id)
            .map(|(h, code)| (*h, code.as_ref()))
    }

    /// True if and only if receipt `holder` was transferred away.
    pub fn is_given(&self, holder: HolderIdx) -> bool {
        self.given.contains(&holder)
    }
}

/// A holder's profile as it stands: who holds the receipt and where they travel from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderProfile {
    /// The receipt's index (stable across transfers).
    pub holder: HolderIdx,
    /// Whoever holds the receipt now.
    pub national_id: u64,
    /// The catalog's holder, if the receipt was transferred.
    pub transferred_from: Option<u64>,
    /// The city of dispatch in force.
    pub city: CityIdx,
}

/// What a transfer asks for, identities already parsed.
#[derive(Clone, Copy, Debug)]
pub struct TransferRequest<'a> {
    /// The receipt given.
    pub holder: HolderIdx,
    /// The receiver's national ID (check digit already verified).
    pub national_id: u64,
    /// The receiver's tracking code.
    pub tracking_code: &'a str,
    /// The receiver's city of dispatch, in the receipt's province.
    pub city: CityIdx,
    /// Who asks, for the log.
    pub principal: &'a str,
}

impl Engine {
    /// The receipt numbered `receipt_no`, if and only if exactly one holder of the catalog has
    /// it. The first call builds a sorted index of receipt numbers (4 bytes per holder).
    pub fn holder_by_receipt(&self, receipt_no: &str) -> Option<HolderIdx> {
        static_index(&self.receipt_index, &self.catalog, receipt_no)
    }

    /// The receipt whoever has `national_id` holds now: a receiver's transferred receipt, or
    /// a catalog holder's own unless they gave it away.
    pub fn holder_now(&self, national_id: u64) -> Option<HolderIdx> {
        let index = self.transfers.read();
        if let Some((holder, _)) = index.receiver(national_id) {
            return Some(holder);
        }
        self.catalog
            .holder_by_national_id(national_id)
            .filter(|h| !index.is_given(*h))
    }

    /// Transfers the receipt `request.holder` to another person, once. Refused
    /// (changing nothing): `receiver_holds_receipt` if the receiver is a holder of the catalog
    /// or received a receipt already; `transfer_used`, `transfer_closed`,
    /// `giver_has_reservation` as [`decide_profile_change`] says; `invalid_field` for a city
    /// outside the receipt's province or an oversized field.
    pub fn transfer(&self, request: TransferRequest<'_>) -> Result<Committed<()>, EngineError> {
        self.transfer_at(request, self.now_ms())
    }

    /// [`Engine::transfer`] at engine time `now_ms` (a replicated log entry's time).
    pub(crate) fn transfer_at(
        &self,
        request: TransferRequest<'_>,
        now_ms: i64,
    ) -> Result<Committed<()>, EngineError> {
        // Stored as authentication compares: trimmed, Persian digits as ASCII.
        let code = crate::calendar::normalize_digits(request.tracking_code.trim());
        let request = TransferRequest {
            tracking_code: &code,
            ..request
        };
        check_len(
            "to.tracking_code",
            request.tracking_code,
            TRACKING_CODE_BYTES_MAX,
        )?;
        if request.tracking_code.is_empty() {
            return Err(EngineError::InvalidField {
                field: "to.tracking_code",
                message: "must not be empty".into(),
            });
        }
        let mut index = self.transfers.write();
        if self
            .catalog
            .holder_by_national_id(request.national_id)
            .is_some()
            || index.receiver(request.national_id).is_some()
        {
            return Err(EngineError::ReceiverHoldsReceipt);
        }
        let change = ProfileChange {
            holder: request.holder,
            receiver: Some((request.national_id, request.tracking_code)),
            city: request.city,
            principal: request.principal,
        };
        let committed = self.change_profile(change, now_ms)?;
        index.note(request.holder, request.national_id, request.tracking_code);
        self.any_transfer.store(true, Ordering::Release);
        Ok(committed)
    }

    /// Changes the city of dispatch of receipt `holder` (whoever holds it now) to `city`, of
    /// the same province. Refused with `dispatch_frozen` once a wave admitting the receipt has
    /// opened or the holder registered.
    pub fn change_dispatch(
        &self,
        holder: HolderIdx,
        city: CityIdx,
        principal: &str,
    ) -> Result<Committed<()>, EngineError> {
        self.change_dispatch_at(holder, city, principal, self.now_ms())
    }

    /// [`Engine::change_dispatch`] at engine time `now_ms` (a replicated log entry's time).
    pub(crate) fn change_dispatch_at(
        &self,
        holder: HolderIdx,
        city: CityIdx,
        principal: &str,
        now_ms: i64,
    ) -> Result<Committed<()>, EngineError> {
        let change = ProfileChange {
            holder,
            receiver: None,
            city,
            principal,
        };
        self.change_profile(change, now_ms)
    }

    fn change_profile(
        &self,
        change: ProfileChange<'_>,
        now_ms: i64,
    ) -> Result<Committed<()>, EngineError> {
        check_len("principal", change.principal, PRINCIPAL_BYTES_MAX)?;
        let facts = self
            .catalog
            .holder_facts(change.holder)
            .ok_or(EngineError::InvalidCredentials)?;
        let in_province = self
            .catalog
            .cities()
            .get(change.city.index())
            .is_some_and(|c| c.province == facts.province);
        if !in_province {
            return Err(EngineError::ProvinceChangeUnsupported);
        }
        let p = usize::from(facts.province);
        let mut st = self.shards[p].state.lock();
        let record = decide_profile_change(&st, &self.ctx(), change, now_ms)?;
        let ticket = self.commit(p, &mut st, &record)?;
        Ok(Committed { value: (), ticket })
    }

    /// The profile of receipt `holder` as it stands.
    pub fn holder_profile(&self, holder: HolderIdx) -> Option<HolderProfile> {
        let facts = self.catalog.holder_facts(holder)?;
        let st = self.shards[usize::from(facts.province)].state.lock();
        let national_id = st.national_id_of(&self.catalog, holder);
        Some(HolderProfile {
            holder,
            national_id,
            transferred_from: (national_id != facts.national_id).then_some(facts.national_id),
            city: st.facts_in_force(facts).city,
        })
    }

    /// [`Engine::authenticate`] once some receipt was transferred: a receiver authenticates
    /// with the tracking code given at the transfer; a giver's own credentials, still right,
    /// answer `receipt_transferred`.
    pub(crate) fn authenticate_after_transfers(
        &self,
        index: &TransferIndex,
        national_id: u64,
        tracking_code: &str,
    ) -> Result<HolderIdx, EngineError> {
        let given = crate::calendar::normalize_digits(tracking_code.trim());
        let (found, expected) = match index.receiver(national_id) {
            Some((holder, code)) => (Some(holder), code),
            None => {
                let found = self.catalog.holder_by_national_id(national_id);
                let code = found
                    .and_then(|idx| self.catalog.holder(idx))
                    .map_or("", |h| h.tracking_code);
                (found, code)
            }
        };
        let equal = super::constant_time_eq(expected.as_bytes(), given.as_bytes());
        match found {
            Some(idx) if equal && !expected.is_empty() => {
                let is_receiver = index.receiver(national_id).is_some();
                if !is_receiver && index.is_given(idx) {
                    Err(EngineError::ReceiptTransferred)
                } else {
                    Ok(idx)
                }
            }
            _ => Err(EngineError::InvalidCredentials),
        }
    }

    /// Notes a replayed record in the transfer index (recovery).
    pub(crate) fn note_replayed(&self, record: &Record) {
        if let Record::Transfer {
            holder,
            national_id,
            tracking_code,
            ..
        } = record
        {
            let code = String::from_utf8_lossy(tracking_code);
            self.transfers.write().note(*holder, *national_id, &code);
            self.any_transfer.store(true, Ordering::Release);
        }
    }

    /// Rebuilds the transfer index from every shard's profiles (after a snapshot's restore).
    pub(crate) fn rebuild_transfer_index(&self) {
        let mut index = self.transfers.write();
        for shard in self.shards.iter() {
            let st = shard.state.lock();
            for profile in st.profiles.values() {
                if let Some(r) = &profile.receiver {
                    index.note(profile.holder, r.national_id, &r.tracking_code);
                    self.any_transfer.store(true, Ordering::Release);
                }
            }
        }
    }
}

fn check_len(field: &'static str, text: &str, max: usize) -> Result<(), EngineError> {
    if text.len() > max {
        return Err(EngineError::InvalidField {
            field,
            message: format!("longer than {max} bytes"),
        });
    }
    Ok(())
}

/// Looks `receipt_no` up in the sorted index `cell` holds, building it on first use.
fn static_index(
    cell: &OnceLock<Vec<HolderIdx>>,
    catalog: &Catalog,
    receipt_no: &str,
) -> Option<HolderIdx> {
    let sorted = cell.get_or_init(|| {
        let mut all: Vec<HolderIdx> = (0..catalog.holder_count() as u32).map(HolderIdx).collect();
        all.sort_by(|a, b| receipt_of(catalog, *a).cmp(receipt_of(catalog, *b)));
        all
    });
    let first = sorted.partition_point(|h| receipt_of(catalog, *h) < receipt_no);
    let found = *sorted.get(first)?;
    if receipt_of(catalog, found) != receipt_no {
        return None;
    }
    // A number two holders share names neither.
    let shared = sorted
        .get(first + 1)
        .is_some_and(|h| receipt_of(catalog, *h) == receipt_no);
    (!shared).then_some(found)
}

fn receipt_of(catalog: &Catalog, holder: HolderIdx) -> &str {
    catalog.holder(holder).map_or("", |h| h.receipt_no)
}
