//! The season's rules: registration waves, stage deadlines and the waiting-list offer deadline,
//! and the eligibility decision that the waves imply.
//!
//! The schedule is data (`season.toml`), never code: it can be replaced while the engine runs
//! (a postponement), and that replacement is a logged decision like any other.
//!
//! The rule, in the domain's terms: a receipt is *called* by the first wave (of the holder's
//! province) whose cutoff covers it, and its holder registers once that wave opens; a later
//! wave admits earlier receipts only if it says so (`admits_earlier_receipts`). So postponing
//! the main wave closes registration for main-wave receipts even while the reserve wave is
//! open. See [`Schedule::eligibility`] and [`Schedule::check_order`].

use crate::calendar::{JalaliDate, format_tehran_jalali};
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
    /// Whether this wave also admits receipts that an earlier-cutoff wave calls (a holder
    /// called by a narrower wave that has not opened yet may register here). Default false:
    /// a wave admits only the receipts it calls.
    pub admits_earlier_receipts: bool,
}

impl Wave {
    /// Whether this wave opens for province `province_id`.
    pub fn includes(&self, province_id: u32) -> bool {
        self.provinces
            .as_ref()
            .is_none_or(|ids| ids.contains(&province_id))
    }

    /// Where both waves open.
    fn overlap(&self, other: &Wave) -> Overlap {
        let smallest =
            |ids: &mut dyn Iterator<Item = u32>| ids.min().map_or(Overlap::None, Overlap::Province);
        match (&self.provinces, &other.provinces) {
            (None, None) => Overlap::Everywhere,
            (Some(ids), None) | (None, Some(ids)) => smallest(&mut ids.iter().copied()),
            (Some(a), Some(b)) => smallest(&mut a.iter().copied().filter(|id| b.contains(id))),
        }
    }
}

/// Where two waves both open.
enum Overlap {
    /// Both open in every province.
    Everywhere,
    /// They share provinces; this is the smallest public id among them.
    Province(u32),
    /// They share no province.
    None,
}

/// Whether a new schedule may open a wider cutoff before a narrower one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaveOrder {
    /// Refuse it (the default): see [`Schedule::check_order`].
    #[default]
    Strict,
    /// Accept it: the operator said so explicitly.
    AllowWiderCutoffFirst,
}

/// A schedule that opens a wider cutoff strictly before a narrower one in some province,
/// which [`Schedule::check_order`] refuses unless told to allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfOrder {
    /// Index in [`Schedule::waves`] of the wave with the narrower cutoff (opening later).
    pub narrower: usize,
    /// Index of the wave with the wider cutoff (opening earlier).
    pub wider: usize,
    /// The province where both open (the smallest shared id); `None` when both open
    /// everywhere.
    pub province_id: Option<u32>,
    /// The message: both waves, their cutoffs and openings, and the province.
    pub message: String,
}

impl std::fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One province's calls, from [`Schedule::province_calls`]: each distinct cutoff of the
/// waves that include the province, in ascending order, with the first instant at which a
/// receipt that cutoff calls may register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvinceCalls {
    any_wave: bool,
    calls: Vec<(i32, i64)>,
}

impl ProvinceCalls {
    /// [`Schedule::eligibility`] for this province, without scanning the waves.
    #[inline]
    pub fn eligibility(&self, receipt_day: i32, now_ms: i64) -> Result<(), NotEligible> {
        match self
            .calls
            .iter()
            .find(|&&(cutoff, _)| cutoff >= receipt_day)
        {
            Some(&(_, opens_at_ms)) if opens_at_ms <= now_ms => Ok(()),
            Some(&(_, opens_at_ms)) => Err(NotEligible::NotOpen {
                opens_at_ms: Some(opens_at_ms),
            }),
            None if self.any_wave => Err(NotEligible::NotCalled),
            None => Err(NotEligible::NotOpen { opens_at_ms: None }),
        }
    }
}

/// Why a holder may not reserve now, by the schedule alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEligible {
    /// No wave that would admit this holder has opened yet; `opens_at_ms` is the earliest one
    /// that will (none if no future wave admits the holder).
    NotOpen {
        /// The earliest future opening that admits this holder, if any.
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
    /// Returns `Ok(())` if and only if the holder of a receipt dated `receipt_day` in province
    /// `province_id` may register at `now_ms`; otherwise the precise reason.
    ///
    /// Only the waves that include the province count. The holder is *called* by the
    /// wave(s) with the smallest cutoff (`receipts_until_day`) on or after the receipt day:
    /// the first wave whose cutoff covers the receipt. They may register once a wave that
    /// calls them has opened, or once a wave with a cutoff covering the receipt that
    /// [`Wave::admits_earlier_receipts`] has opened. Otherwise: [`NotEligible::NotCalled`] if
    /// no wave covers the receipt (there are waves for the province), else
    /// [`NotEligible::NotOpen`] with the earliest future opening of a wave that would admit
    /// the holder (`None` when no wave includes the province at all).
    pub fn eligibility(
        &self,
        province_id: u32,
        receipt_day: i32,
        now_ms: i64,
    ) -> Result<(), NotEligible> {
        // One pass (every decision asks): the narrowest cutoff that covers the receipt, the
        // earliest opening among the waves at that cutoff, and the earliest opening among
        // covering waves that admit earlier receipts.
        let mut any_includes = false;
        let mut calling: Option<(i32, i64)> = None;
        let mut admitting_opens = i64::MAX;
        for wave in &self.waves {
            if !wave.includes(province_id) {
                continue;
            }
            any_includes = true;
            let cutoff = wave.receipts_until_day;
            if cutoff < receipt_day {
                continue;
            }
            calling = match calling {
                Some((c, _)) if cutoff > c => calling,
                Some((c, opens)) if cutoff == c => Some((c, opens.min(wave.opens_at_ms))),
                _ => Some((cutoff, wave.opens_at_ms)),
            };
            if wave.admits_earlier_receipts {
                admitting_opens = admitting_opens.min(wave.opens_at_ms);
            }
        }
        let Some((_, calling_opens)) = calling else {
            return if any_includes {
                Err(NotEligible::NotCalled)
            } else {
                Err(NotEligible::NotOpen { opens_at_ms: None })
            };
        };
        let first_opening = calling_opens.min(admitting_opens);
        if first_opening <= now_ms {
            Ok(())
        } else {
            Err(NotEligible::NotOpen {
                opens_at_ms: Some(first_opening),
            })
        }
    }

    /// The index of the wave whose opening lets the holder of a receipt dated `receipt_day`
    /// in province `province_id` register: among the waves that would admit them (see
    /// [`Schedule::eligibility`]), the one opening first (the first in file order on a tie).
    /// `None` if no wave admits them.
    pub fn admitting_wave(&self, province_id: u32, receipt_day: i32) -> Option<usize> {
        let covering = || {
            self.waves.iter().enumerate().filter(move |(_, w)| {
                w.includes(province_id) && w.receipts_until_day >= receipt_day
            })
        };
        let calling_cutoff = covering().map(|(_, w)| w.receipts_until_day).min()?;
        covering()
            .filter(|(_, w)| w.receipts_until_day == calling_cutoff || w.admits_earlier_receipts)
            .min_by_key(|(i, w)| (w.opens_at_ms, *i))
            .map(|(i, _)| i)
    }

    /// The schedule as one province sees it, precomputed for [`ProvinceCalls::eligibility`],
    /// which every reservation asks.
    pub fn province_calls(&self, province_id: u32) -> ProvinceCalls {
        let mut cutoffs: Vec<i32> = self
            .waves
            .iter()
            .filter(|w| w.includes(province_id))
            .map(|w| w.receipts_until_day)
            .collect();
        cutoffs.sort_unstable();
        cutoffs.dedup();
        let calls = cutoffs
            .iter()
            .map(|&cutoff| {
                // Opens for receipts this cutoff calls: a wave at the cutoff, or a wider one
                // that admits earlier receipts.
                let first_opening = self
                    .waves
                    .iter()
                    .filter(|w| w.includes(province_id) && w.receipts_until_day >= cutoff)
                    .filter(|w| w.receipts_until_day == cutoff || w.admits_earlier_receipts)
                    .map(|w| w.opens_at_ms)
                    .min()
                    .unwrap_or(i64::MAX);
                (cutoff, first_opening)
            })
            .collect();
        ProvinceCalls {
            any_wave: !cutoffs.is_empty(),
            calls,
        }
    }

    /// Returns `Ok(())` if and only if, in every province, no wave opens strictly before
    /// another wave of the province with a narrower cutoff; otherwise the first such pair (in
    /// file order of the narrower wave, then of the wider one). A wider wave opening first
    /// would leave the holders the narrower wave calls waiting while later receipts register,
    /// which is never what a postponement of the narrower wave alone means; a season that
    /// wants it says so (`allow_wider_cutoff_first`).
    pub fn check_order(&self) -> Result<(), OutOfOrder> {
        for (n, narrow) in self.waves.iter().enumerate() {
            for (w, wide) in self.waves.iter().enumerate() {
                if wide.receipts_until_day <= narrow.receipts_until_day
                    || wide.opens_at_ms >= narrow.opens_at_ms
                {
                    continue;
                }
                let province_id = match narrow.overlap(wide) {
                    Overlap::None => continue,
                    Overlap::Everywhere => None,
                    Overlap::Province(id) => Some(id),
                };
                let place = province_id.map_or("in every province".to_owned(), |id| {
                    format!("in province {id}")
                });
                let message = format!(
                    "wave {:?} (receipts until {}) opens at {} Tehran, before wave {:?} \
                     (receipts until {}) opens at {} {place}: a wider cutoff must not open \
                     before a narrower one (allow it explicitly with allow_wider_cutoff_first)",
                    wide.name,
                    day_text(wide.receipts_until_day),
                    format_tehran_jalali(wide.opens_at_ms),
                    narrow.name,
                    day_text(narrow.receipts_until_day),
                    format_tehran_jalali(narrow.opens_at_ms),
                );
                return Err(OutOfOrder {
                    narrower: n,
                    wider: w,
                    province_id,
                    message,
                });
            }
        }
        Ok(())
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
        self.waves.iter().any(|w| w.includes(p.id))
    }
}

/// A day number as a Jalali date, or the bare number outside the supported years.
fn day_text(day: i32) -> String {
    JalaliDate::from_day_number(day).map_or_else(|_| format!("day {day}"), |d| d.to_string())
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
    /// The waiting rooms, by wave name: a wave without an entry (or with one switched off)
    /// has no room, and its holders reserve directly.
    pub rooms: Vec<(String, RoomConfig)>,
}

/// How a wave's waiting room lets holders through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outflow {
    /// Admit this many places per second.
    PerSecond(f64),
    /// Admit as fast as reservations are being decided without shedding (the API measures
    /// it and passes the rate in).
    Auto,
}

impl Eq for Outflow {}

/// One wave's waiting room (`[wave.room]` in `season.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    /// Whether the room is on (a room switched off is no room at all).
    pub enabled: bool,
    /// How places are admitted.
    pub outflow: Outflow,
    /// How long a pass stays valid once issued, in milliseconds.
    pub pass_lifetime_ms: i64,
    /// How long before the wave's opening holders may join (and are drawn at random), in
    /// milliseconds.
    pub pre_queue_ms: i64,
}

impl Default for RoomConfig {
    /// On, automatic outflow, passes valid 10 minutes, joining from 30 minutes before the
    /// opening.
    fn default() -> RoomConfig {
        RoomConfig {
            enabled: true,
            outflow: Outflow::Auto,
            pass_lifetime_ms: 10 * 60_000,
            pre_queue_ms: 30 * 60_000,
        }
    }
}

impl Season {
    /// The room of the wave named `wave`, if it has one that is on.
    pub fn room(&self, wave: &str) -> Option<&RoomConfig> {
        self.rooms
            .iter()
            .find(|(name, room)| name == wave && room.enabled)
            .map(|(_, room)| room)
    }
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
            rooms: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The rule as the contract states it, written for clarity, not speed: the waves that
    /// cover the receipt; among them those at the narrowest cutoff and those that admit
    /// earlier receipts; open when one of those has opened.
    fn eligibility_by_definition(
        waves: &[Wave],
        province_id: u32,
        receipt_day: i32,
        now_ms: i64,
    ) -> Result<(), NotEligible> {
        let covering: Vec<&Wave> = waves
            .iter()
            .filter(|w| w.includes(province_id) && w.receipts_until_day >= receipt_day)
            .collect();
        let Some(cutoff) = covering.iter().map(|w| w.receipts_until_day).min() else {
            return if waves.iter().any(|w| w.includes(province_id)) {
                Err(NotEligible::NotCalled)
            } else {
                Err(NotEligible::NotOpen { opens_at_ms: None })
            };
        };
        let openings: Vec<i64> = covering
            .iter()
            .filter(|w| w.receipts_until_day == cutoff || w.admits_earlier_receipts)
            .map(|w| w.opens_at_ms)
            .collect();
        if openings.iter().any(|&t| t <= now_ms) {
            Ok(())
        } else {
            Err(NotEligible::NotOpen {
                opens_at_ms: openings.into_iter().min(),
            })
        }
    }

    fn arb_wave() -> impl Strategy<Value = Wave> {
        (
            0i32..6,
            0i64..6,
            proptest::option::of(proptest::collection::vec(1u32..4, 0..3)),
            any::<bool>(),
        )
            .prop_map(|(cutoff, opens, provinces, admits)| Wave {
                name: String::new(),
                receipts_until_day: cutoff,
                opens_at_ms: opens,
                provinces,
                admits_earlier_receipts: admits,
            })
    }

    proptest! {
        #[test]
        fn eligibility_agrees_with_its_definition(
            waves in proptest::collection::vec(arb_wave(), 0..5),
            province_id in 1u32..4,
            receipt_day in 0i32..7,
            now_ms in 0i64..7,
        ) {
            let schedule = Schedule { waves: waves.clone() };
            let by_definition = eligibility_by_definition(&waves, province_id, receipt_day, now_ms);
            prop_assert_eq!(
                schedule.eligibility(province_id, receipt_day, now_ms),
                by_definition
            );
            prop_assert_eq!(
                schedule.province_calls(province_id).eligibility(receipt_day, now_ms),
                by_definition
            );
        }
    }
}
