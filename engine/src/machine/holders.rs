//! Changes to a deposit holder's profile after the catalog was loaded, decided and applied per
//! province: receipt priority transfers (the receipt, and its date, pass to another person)
//! and dispatch-city changes. Both are closed once a wave admitting the receipt has opened.

use crate::catalog::{CityIdx, HolderFacts, HolderIdx};
use crate::error::EngineError;
use crate::record::Record;
use crate::season::NotEligible;

use super::Ctx;
use super::state::ShardState;

/// Transfers of a receipt close this long before a wave admitting it opens. A holder's
/// request authenticates, then decides, in one synchronous call; with this margin a giver's
/// request that authenticated just before their receipt was transferred cannot be decided
/// after the opening under the receipt that is no longer theirs.
pub const TRANSFERS_CLOSE_BEFORE_OPENING_MS: i64 = 10_000;

/// A holder's profile as changed since the catalog was loaded (kept per province, by the
/// holder's index among the province's holders).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Profile {
    /// The receipt (the catalog's holder index).
    pub holder: HolderIdx,
    /// After a transfer: who holds the receipt now.
    pub receiver: Option<Receiver>,
    /// The city of dispatch in force.
    pub city: CityIdx,
}

/// The person a receipt was transferred to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Receiver {
    pub national_id: u64,
    pub tracking_code: Box<str>,
}

/// What a transfer or a dispatch change asks for; the receiver's identity was checked
/// against every province by the caller, under the transfers lock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProfileChange<'k> {
    pub holder: HolderIdx,
    /// `Some` for a transfer: the receiver's national ID and tracking code.
    pub receiver: Option<(u64, &'k str)>,
    /// The city of dispatch after the change (of the holder's province).
    pub city: CityIdx,
    /// The principal asking, as logged with the record.
    pub principal: &'k str,
}

impl ShardState {
    /// The holder's facts with the profile's city in force, for decisions of this province.
    pub fn facts_in_force(&self, mut facts: HolderFacts) -> HolderFacts {
        if self.profiles.is_empty() {
            // The rush's path: no profile ever changed in this province.
            return facts;
        }
        if let Some(profile) = self.profiles.get(&facts.local) {
            facts.city = profile.city;
        }
        facts
    }

    /// The national ID of whoever holds receipt `holder` now.
    pub fn national_id_of(&self, catalog: &crate::catalog::Catalog, holder: HolderIdx) -> u64 {
        let Some(facts) = catalog.holder_facts(holder) else {
            return 0;
        };
        match self.profiles.get(&facts.local) {
            Some(Profile {
                receiver: Some(r), ..
            }) => r.national_id,
            _ => facts.national_id,
        }
    }

    /// Applies a `Transfer` or `Dispatch` record; any other record is an error.
    pub(crate) fn apply_profile(&mut self, ctx: &Ctx<'_>, record: &Record) -> Result<(), String> {
        let (holder, receiver, city) = match record {
            Record::Transfer {
                holder,
                national_id,
                tracking_code,
                city,
                ..
            } => {
                let code = String::from_utf8(tracking_code.clone())
                    .map_err(|_| "a transfer's tracking code is not UTF-8".to_owned())?;
                let receiver = Receiver {
                    national_id: *national_id,
                    tracking_code: code.into_boxed_str(),
                };
                (*holder, Some(receiver), *city)
            }
            Record::Dispatch { holder, city, .. } => (*holder, None, *city),
            other => return Err(format!("not a profile record: {other:?}")),
        };
        let local = self.local_holder(ctx, holder)?;
        let in_province = ctx
            .catalog
            .cities()
            .get(city.index())
            .is_some_and(|c| c.province == self.province);
        if !in_province {
            return Err(format!("city {city} is not of province {}", self.province));
        }
        if self.latest.get(local as usize) != Some(&super::state::NO_RESERVATION)
            || self.waitlist.position(holder).is_some()
        {
            return Err(format!("holder {holder} changes profile after registering"));
        }
        let facts = ctx
            .catalog
            .holder_facts(holder)
            .ok_or_else(|| format!("unknown holder {holder}"))?;
        let profile = self.profiles.entry(local).or_insert(Profile {
            holder,
            receiver: None,
            city: facts.city,
        });
        if receiver.is_some() {
            if profile.receiver.is_some() {
                return Err(format!("receipt of holder {holder} transferred twice"));
            }
            profile.receiver = receiver;
        }
        profile.city = city;
        Ok(())
    }
}

/// Decides a transfer (`change.receiver` set) or a dispatch change of `change.holder`, whose
/// province this shard is. Refuses, changing nothing: a second transfer of one receipt
/// (`transfer_used`); either, once a wave admitting the receipt has opened in the province
/// (`transfer_closed`, `dispatch_frozen`); a transfer whose giver holds or held a reservation or
/// waits on the list (`giver_has_reservation`); a dispatch change of a registered holder
/// (`dispatch_frozen`).
pub(crate) fn decide_profile_change(
    st: &ShardState,
    ctx: &Ctx<'_>,
    change: ProfileChange<'_>,
    now_ms: i64,
) -> Result<Record, EngineError> {
    let facts = ctx
        .catalog
        .holder_facts(change.holder)
        .ok_or(EngineError::InvalidCredentials)?;
    let profile = st.profiles.get(&facts.local);
    let transfer = change.receiver.is_some();
    if transfer && profile.is_some_and(|p| p.receiver.is_some()) {
        return Err(EngineError::TransferUsed);
    }
    let province_id = ctx.catalog.provinces()[usize::from(facts.province)].id;
    let closing_ms = if transfer {
        now_ms.saturating_add(TRANSFERS_CLOSE_BEFORE_OPENING_MS)
    } else {
        now_ms
    };
    let open = match st
        .schedule
        .eligibility(province_id, facts.receipt_day, closing_ms)
    {
        Ok(()) => true,
        Err(NotEligible::NotOpen { .. } | NotEligible::NotCalled) => false,
    };
    let registered = st
        .latest
        .get(facts.local as usize)
        .is_some_and(|&slot| slot != super::state::NO_RESERVATION)
        || st.waitlist.position(change.holder).is_some();
    match (transfer, open, registered) {
        (true, true, _) => return Err(EngineError::TransferClosed),
        (true, false, true) => return Err(EngineError::GiverHasReservation),
        (false, true, _) | (false, false, true) => return Err(EngineError::DispatchFrozen),
        _ => {}
    }
    let principal = change.principal.as_bytes().to_vec();
    Ok(match change.receiver {
        Some((national_id, tracking_code)) => Record::Transfer {
            holder: change.holder,
            at_ms: now_ms,
            national_id,
            tracking_code: tracking_code.as_bytes().to_vec(),
            city: change.city,
            principal,
        },
        None => Record::Dispatch {
            holder: change.holder,
            at_ms: now_ms,
            city: change.city,
            principal,
        },
    })
}
