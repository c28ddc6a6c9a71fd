//! The season's rules: registration waves, stage deadlines and the waiting-list offer deadline,
//! and the eligibility decision that the waves imply.
//!
//! The schedule is data (`season.toml`), never code: it can be replaced while the engine runs
//! (a postponement), and that replacement is a logged decision like any other.

use crate::catalog::{Catalog, ProvinceIdx};

/// One stage a hold must pass, in the order they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The original receipt and national card reach the caravan manager.
    Documents,
    /// The first instalment is paid online.
    FirstPayment,
    /// The medical examination is passed.
    Medical,
    /// The rest of the price is paid.
    FinalPayment,
}

impl Stage {
    /// Every stage in the order a reservation moves through them.
    pub const ALL: [Stage; 4] = [
        Stage::Documents,
        Stage::FirstPayment,
        Stage::Medical,
        Stage::FinalPayment,
    ];

    /// The contract's spelling (`documents`, `first_payment`, `medical`, `final_payment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Documents => "documents",
            Stage::FirstPayment => "first_payment",
            Stage::Medical => "medical",
            Stage::FinalPayment => "final_payment",
        }
    }

    /// Parses the contract's spelling; returns `None` for anything else.
    pub fn parse(text: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The stable one-byte code used on disk.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The stage with on-disk code `code`, if and only if it is one.
    pub fn from_code(code: u8) -> Option<Stage> {
        Stage::ALL.get(usize::from(code)).copied()
    }
}

/// A registration wave: one priority tier opening at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wave {
    /// The wave's name (`main`, `reserve`, ...).
    pub name: String,
    /// Receipts deposited on or before this day (days since 1970-01-01) are called.
    pub receipts_until_day: i32,
    /// The opening instant, milliseconds since the Unix epoch (UTC).
    pub opens_at_ms: i64,
    /// The public ids of the provinces this wave opens; `None` means every province.
    pub provinces: Option<Vec<u32>>,
}

/// Why a holder may not reserve now, by the schedule alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEligible {
    /// No wave that would call this holder has opened yet; `opens_at_ms` is the earliest one
    /// that will (none if no future wave calls the holder).
    NotOpen {
        /// The earliest future opening that calls this holder, if any.
        opens_at_ms: Option<i64>,
    },
    /// Waves include the province, but the receipt is later than every one's cutoff, open or to
    /// come.
    NotCalled,
}

/// The longest wave name accepted, in bytes (names are logged and snapshotted).
pub const WAVE_NAME_BYTES_MAX: usize = 200;

/// The registration schedule: the list of waves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    /// The waves, in file order.
    pub waves: Vec<Wave>,
}

impl Schedule {
    /// Returns `Ok(())` if and only if a wave that includes `province_id` has opened at or
    /// before `now_ms` and its cutoff is not earlier than `receipt_day`; otherwise the precise
    /// reason.
    pub fn eligibility(
        &self,
        province_id: u32,
        receipt_day: i32,
        now_ms: i64,
    ) -> Result<(), NotEligible> {
        let mut any_open = false;
        let mut any_including = false;
        let mut next_opening: Option<i64> = None;
        for wave in &self.waves {
            let includes = wave
                .provinces
                .as_ref()
                .is_none_or(|ids| ids.contains(&province_id));
            if !includes {
                continue;
            }
            any_including = true;
            let calls = receipt_day <= wave.receipts_until_day;
            if wave.opens_at_ms <= now_ms {
                if calls {
                    return Ok(());
                }
                any_open = true;
            } else if calls {
                next_opening =
                    Some(next_opening.map_or(wave.opens_at_ms, |t| t.min(wave.opens_at_ms)));
            }
        }
        match (any_open || any_including, next_opening) {
            // Waves exist for the province, but none (open or to come) reaches this receipt.
            (true, None) => Err(NotEligible::NotCalled),
            (_, opens_at_ms) => Err(NotEligible::NotOpen { opens_at_ms }),
        }
    }

    /// Returns an error naming the first wave that lists a province id the catalog does not
    /// have (or one twice), has an empty province list, a name out of bounds, or a name another
    /// wave has.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), String> {
        for (i, wave) in self.waves.iter().enumerate() {
            if self.waves[..i].iter().any(|w| w.name == wave.name) {
                return Err(format!("wave {:?} is listed twice", wave.name));
            }
            if let Some(ids) = &wave.provinces
                && let Some(id) = ids
                    .iter()
                    .enumerate()
                    .find_map(|(j, id)| ids[..j].contains(id).then_some(id))
            {
                return Err(format!(
                    "wave {:?}: province id {id} is listed twice",
                    wave.name
                ));
            }
            if wave.name.is_empty() || wave.name.len() > WAVE_NAME_BYTES_MAX {
                return Err(format!(
                    "wave name must be 1 to {WAVE_NAME_BYTES_MAX} bytes, not {}",
                    wave.name.len()
                ));
            }
            if let Some(ids) = &wave.provinces {
                if ids.is_empty() {
                    return Err(format!("wave {:?}: `provinces` is empty", wave.name));
                }
                if let Some(id) = ids.iter().find(|id| catalog.province_by_id(**id).is_none()) {
                    return Err(format!("wave {:?}: unknown province id {id}", wave.name));
                }
            }
        }
        Ok(())
    }

    /// Whether any wave includes the province with index `province` of `catalog`.
    pub fn mentions(&self, catalog: &Catalog, province: ProvinceIdx) -> bool {
        let Some(p) = catalog.provinces().get(usize::from(province)) else {
            return false;
        };
        self.waves
            .iter()
            .any(|w| w.provinces.as_ref().is_none_or(|ids| ids.contains(&p.id)))
    }
}

/// The season: schedule, stage deadlines and the waiting-list offer deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Season {
    /// The registration waves.
    pub schedule: Schedule,
    /// The stages a hold moves through, in order, each with its deadline counted from the
    /// stage's start. May be empty: then a reservation is confirmed at once.
    pub stages: Vec<(Stage, i64)>,
    /// How long a waiting-list offer stays open, in milliseconds.
    pub offer_deadline_ms: i64,
}

impl Season {
    /// The deadline length of the stage at `position` in [`Season::stages`], if there is one.
    pub fn stage_at(&self, position: usize) -> Option<(Stage, i64)> {
        self.stages.get(position).copied()
    }
}

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

impl Default for Season {
    /// The 1399 rules: documents in 72 hours, first payment in 7 days, medical in 14 days,
    /// final payment in 30 days, offers open for 24 hours; no waves.
    fn default() -> Season {
        Season {
            schedule: Schedule::default(),
            stages: vec![
                (Stage::Documents, 72 * HOUR_MS),
                (Stage::FirstPayment, 7 * 24 * HOUR_MS),
                (Stage::Medical, 14 * 24 * HOUR_MS),
                (Stage::FinalPayment, 30 * 24 * HOUR_MS),
            ],
            offer_deadline_ms: 24 * HOUR_MS,
        }
    }
}
