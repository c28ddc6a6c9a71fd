//! Calendar and text edges of the domain: Jalali (Solar Hijri) dates, Tehran wall-clock time,
//! Persian digits, durations such as `72h`, and Iranian national IDs (kod-e melli).
//!
//! Inside the engine an instant is an `i64` count of milliseconds since the Unix epoch (UTC)
//! and a date is an `i32` *day number*: days since 1970-01-01 in the proleptic Gregorian
//! calendar. Everything in this module converts between those and what people read and type.
//!
//! # Jalali arithmetic
//!
//! Leap years follow the 33-year arithmetic rule: year `y` is leap if and only if
//! `(25 * y + 11).rem_euclid(33) < 8`, over the supported range
//! [`MIN_JALALI_YEAR`]`..=`[`MAX_JALALI_YEAR`]. Years outside it are refused with
//! [`CalendarError::YearOutOfRange`] instead of being computed wrongly. For every day of
//! 1244..=1501 the rule gives the same dates as ICU4X's astronomical Persian calendar (tested
//! day by day). Further out, astronomical predictions depend on the meridian chosen: ICU4X,
//! computing for 52.5 degrees east, makes 1503, 1602 and 1635 leap instead of 1502, 1601 and
//! 1634, so the two disagree by one day from Esfand 30 of 1502, 1601 and 1634 through the end
//! of the following year. Registration dates (1360..=1410) are far from those years.
//!
//! Conversions work on day counts: the first day of year `y` is
//! `FARVARDIN_1404 + 365 * (y - 1404) + leaps(y) - leaps(1404)`, where `leaps(y) =
//! floor((8 * y + 21) / 33)` counts the leap years before `y` (it grows by one exactly after a
//! year the rule above calls leap).

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The first Jalali year this module converts.
pub const MIN_JALALI_YEAR: i32 = 1244;
/// The last Jalali year this module converts.
pub const MAX_JALALI_YEAR: i32 = 1634;

/// Day number of 1 Farvardin 1404 (2025-03-21), the anchor of every conversion.
const FARVARDIN_1404_DAY: i32 = 20_168;
/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Why a date, time, duration or national ID was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The Jalali year is outside [`MIN_JALALI_YEAR`]`..=`[`MAX_JALALI_YEAR`].
    #[error("Jalali year {year} is outside the supported range 1244..=1634")]
    YearOutOfRange {
        /// The refused year.
        year: i64,
    },
    /// The month is not in `1..=12`.
    #[error("month {month} does not exist (Jalali months are 1..=12)")]
    InvalidMonth {
        /// The refused month.
        month: u8,
    },
    /// The day does not exist in that month of that year.
    #[error("day {day} does not exist in {year}/{month:02} (that month has {days_in_month} days)")]
    InvalidDay {
        /// The year.
        year: i32,
        /// The month.
        month: u8,
        /// The refused day.
        day: u8,
        /// How many days the month has.
        days_in_month: u8,
    },
    /// A day number or instant falls outside the supported Jalali years.
    #[error("{what} is outside the supported Jalali years 1244..=1634")]
    OutOfRange {
        /// What was out of range, in words (e.g. `day number 900000`).
        what: String,
    },
    /// The text does not have the expected shape.
    #[error("{input:?} is not {expected}")]
    Syntax {
        /// The refused text.
        input: String,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A time of day is out of range.
    #[error("{input:?}: {reason}")]
    InvalidTime {
        /// The refused text.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A duration was refused.
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// The refused text.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// The `Asia/Tehran` time zone or a conversion through it failed.
    #[error("Asia/Tehran time zone: {0}")]
    TimeZone(String),
}

/// Why a national ID (kod-e melli) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NationalIdError {
    /// Not exactly ten digits.
    #[error("a national ID has exactly 10 digits, found {found}")]
    Length {
        /// Number of characters found (after trimming).
        found: usize,
    },
    /// A character that is not a digit.
    #[error("a national ID has only digits, found {found:?}")]
    NotDigit {
        /// The offending character.
        found: char,
    },
    /// All ten digits are the same (such numbers pass the check digit but are never issued).
    #[error("a national ID cannot have ten identical digits")]
    Repeated,
    /// The last digit does not match the check digit of the first nine.
    #[error("check digit is {found}, expected {expected}")]
    CheckDigit {
        /// The tenth digit as given.
        found: u8,
        /// The check digit the first nine digits imply.
        expected: u8,
    },
}

/// A valid date of the Jalali (Solar Hijri) calendar within the supported years.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JalaliDate {
    year: i32,
    month: u8,
    day: u8,
}

/// Whether Jalali year `year` has 366 days (Esfand has 30 days), by the 33-year rule.
pub fn is_leap_year(year: i32) -> bool {
    (25 * i64::from(year) + 11).rem_euclid(33) < 8
}

/// The number of days of `month` (1..=12) in Jalali `year`; 0 for a month outside 1..=12.
pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1..=6 => 31,
        7..=11 => 30,
        12 if is_leap_year(year) => 30,
        12 => 29,
        _ => 0,
    }
}

/// Leap years before `year` counted from a fixed origin (only differences are meaningful).
fn leaps_before(year: i32) -> i64 {
    (8 * i64::from(year) + 21).div_euclid(33)
}

/// Day number of 1 Farvardin of `year` (no range check).
fn year_start_day(year: i32) -> i64 {
    i64::from(FARVARDIN_1404_DAY) + 365 * (i64::from(year) - 1404) + leaps_before(year)
        - leaps_before(1404)
}

fn check_year(year: i64) -> Result<i32, CalendarError> {
    if (i64::from(MIN_JALALI_YEAR)..=i64::from(MAX_JALALI_YEAR)).contains(&year) {
        Ok(year as i32)
    } else {
        Err(CalendarError::YearOutOfRange { year })
    }
}

impl JalaliDate {
    /// The date `year/month/day`, or an error naming what does not exist (year outside
    /// 1244..=1634, month outside 1..=12, day past the end of the month).
    pub fn new(year: i32, month: u8, day: u8) -> Result<JalaliDate, CalendarError> {
        check_year(i64::from(year))?;
        if !(1..=12).contains(&month) {
            return Err(CalendarError::InvalidMonth { month });
        }
        let days = days_in_month(year, month);
        if day == 0 || day > days {
            return Err(CalendarError::InvalidDay {
                year,
                month,
                day,
                days_in_month: days,
            });
        }
        Ok(JalaliDate { year, month, day })
    }

    /// The year (Anno Persico).
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month, 1 (Farvardin) ..= 12 (Esfand).
    pub fn month(self) -> u8 {
        self.month
    }

    /// The day of the month, from 1.
    pub fn day(self) -> u8 {
        self.day
    }

    /// Whether this date's year is a leap year.
    pub fn is_leap_year(self) -> bool {
        is_leap_year(self.year)
    }

    /// The number of days of this date's month.
    pub fn days_in_month(self) -> u8 {
        days_in_month(self.year, self.month)
    }

    /// Parses `yyyy/mm/dd`: the separators may be `/` or `-`, month and day may have one or two
    /// digits, Persian (۰-۹) and Arabic-Indic (٠-٩) digits are accepted, and surrounding
    /// whitespace is ignored. The date must exist.
    pub fn parse(text: &str) -> Result<JalaliDate, CalendarError> {
        let normalized = normalize_digits(text.trim());
        let bytes = normalized.as_bytes();
        let syntax = || CalendarError::Syntax {
            input: text.to_owned(),
            expected: "a Jalali date yyyy/mm/dd",
        };
        let (year, rest) = take_number(bytes, 1, 4).ok_or_else(syntax)?;
        let rest = take_separator(rest).ok_or_else(syntax)?;
        let (month, rest) = take_number(rest, 1, 2).ok_or_else(syntax)?;
        let rest = take_separator(rest).ok_or_else(syntax)?;
        let (day, rest) = take_number(rest, 1, 2).ok_or_else(syntax)?;
        if !rest.is_empty() {
            return Err(syntax());
        }
        JalaliDate::new(year as i32, month as u8, day as u8)
    }

    /// The day number (days since 1970-01-01, proleptic Gregorian) of this date.
    pub fn to_day_number(self) -> i32 {
        let month = i64::from(self.month);
        let day_of_year = if month <= 6 {
            31 * (month - 1)
        } else {
            186 + 30 * (month - 7)
        } + i64::from(self.day)
            - 1;
        // Within 1244..=1634 the result is between -44,000 and 104,000: it fits.
        (year_start_day(self.year) + day_of_year) as i32
    }

    /// The Jalali date of day number `day_number`, or [`CalendarError::OutOfRange`] if it falls
    /// outside the supported years.
    pub fn from_day_number(day_number: i32) -> Result<JalaliDate, CalendarError> {
        let day = i64::from(day_number);
        let first = year_start_day(MIN_JALALI_YEAR);
        let after_last = year_start_day(MAX_JALALI_YEAR + 1);
        if day < first || day >= after_last {
            return Err(CalendarError::OutOfRange {
                what: format!("day number {day_number}"),
            });
        }
        // A year is 365 + 8/33 days on average: estimate, then correct by at most a step.
        let mut year =
            1404 + ((day - i64::from(FARVARDIN_1404_DAY)) * 33).div_euclid(12_053) as i32;
        while year_start_day(year) > day {
            year -= 1;
        }
        while year_start_day(year + 1) <= day {
            year += 1;
        }
        let day_of_year = day - year_start_day(year);
        let (month, day_of_month) = if day_of_year < 186 {
            (day_of_year / 31 + 1, day_of_year % 31 + 1)
        } else {
            ((day_of_year - 186) / 30 + 7, (day_of_year - 186) % 30 + 1)
        };
        Ok(JalaliDate {
            year,
            month: month as u8,
            day: day_of_month as u8,
        })
    }

    /// The same day in the proleptic Gregorian calendar.
    pub fn to_gregorian(self) -> jiff::civil::Date {
        let (year, month, day) = civil_from_day_number(i64::from(self.to_day_number()));
        // Supported Jalali years map to Gregorian 1865..=2256, always a valid jiff date.
        jiff::civil::date(year as i16, month as i8, day as i8)
    }

    /// The Jalali date of a Gregorian date, or [`CalendarError::OutOfRange`] outside the
    /// supported years.
    pub fn from_gregorian(date: jiff::civil::Date) -> Result<JalaliDate, CalendarError> {
        let day = day_number_from_civil(
            i64::from(date.year()),
            date.month() as u32,
            date.day() as u32,
        );
        let day = i32::try_from(day).map_err(|_| CalendarError::OutOfRange {
            what: format!("Gregorian date {date}"),
        })?;
        JalaliDate::from_day_number(day)
    }
}

impl fmt::Display for JalaliDate {
    /// Writes `yyyy/mm/dd`, e.g. `1398/12/09`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}/{:02}/{:02}", self.year, self.month, self.day)
    }
}

impl std::str::FromStr for JalaliDate {
    type Err = CalendarError;

    /// Same as [`JalaliDate::parse`].
    fn from_str(text: &str) -> Result<JalaliDate, CalendarError> {
        JalaliDate::parse(text)
    }
}

/// Reads `min..=max` ASCII digits; returns the value and the rest.
fn take_number(bytes: &[u8], min: usize, max: usize) -> Option<(u32, &[u8])> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len < min || len > max {
        return None;
    }
    let value = bytes[..len]
        .iter()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    Some((value, &bytes[len..]))
}

fn take_separator(bytes: &[u8]) -> Option<&[u8]> {
    match bytes.split_first() {
        Some((b'/' | b'-', rest)) => Some(rest),
        _ => None,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12, day 1..=31).
fn day_number_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count from 1 March of year 0 so that the leap day ends the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian (year, month, day) of a day number.
fn civil_from_day_number(day_number: i64) -> (i64, u32, u32) {
    let days = day_number + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Returns `text` with Persian (۰-۹) and Arabic-Indic (٠-٩) digits replaced by ASCII digits;
/// borrows when there is nothing to replace.
pub fn normalize_digits(text: &str) -> Cow<'_, str> {
    if text.is_ascii() || !text.chars().any(|c| ascii_digit_of(c).is_some()) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| ascii_digit_of(c).unwrap_or(c))
            .collect(),
    )
}

fn ascii_digit_of(c: char) -> Option<char> {
    let base = match c {
        '\u{06F0}'..='\u{06F9}' => 0x06F0,
        '\u{0660}'..='\u{0669}' => 0x0660,
        _ => return None,
    };
    char::from_digit(c as u32 - base, 10)
}

static TEHRAN: LazyLock<Result<TimeZone, String>> =
    LazyLock::new(|| TimeZone::get("Asia/Tehran").map_err(|e| e.to_string()));

fn tehran() -> Result<&'static TimeZone, CalendarError> {
    TEHRAN
        .as_ref()
        .map_err(|message| CalendarError::TimeZone(message.clone()))
}

/// A Tehran wall-clock reading: a Jalali date and a time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TehranWallClock {
    /// The Jalali date in Tehran.
    pub date: JalaliDate,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
    /// Millisecond, 0..=999.
    pub millisecond: u16,
}

impl TehranWallClock {
    /// What a clock in Tehran showed at instant `ms` (milliseconds since the Unix epoch), using
    /// the time-zone database (so +04:30 in the summers that had daylight saving time).
    pub fn from_ms(ms: i64) -> Result<TehranWallClock, CalendarError> {
        let timestamp = Timestamp::from_millisecond(ms).map_err(|_| CalendarError::OutOfRange {
            what: format!("instant {ms} ms"),
        })?;
        let offset_ms = i64::from(tehran()?.to_offset(timestamp).seconds()) * 1000;
        let local_ms = ms + offset_ms;
        let day =
            i32::try_from(local_ms.div_euclid(DAY_MS)).map_err(|_| CalendarError::OutOfRange {
                what: format!("instant {ms} ms"),
            })?;
        let date = JalaliDate::from_day_number(day)?;
        let of_day_ms = local_ms.rem_euclid(DAY_MS);
        Ok(TehranWallClock {
            date,
            hour: (of_day_ms / 3_600_000) as u8,
            minute: (of_day_ms / 60_000 % 60) as u8,
            second: (of_day_ms / 1000 % 60) as u8,
            millisecond: (of_day_ms % 1000) as u16,
        })
    }

    /// The instant this Tehran wall-clock reading names, in milliseconds since the Unix epoch.
    ///
    /// A reading that does not exist (skipped when clocks went forward) or that happened twice
    /// (when clocks went back) is resolved with jiff's "compatible" rule, the one RFC 5545 and
    /// Temporal use: in a gap the clock reading is taken with the offset in force *before* the
    /// gap (so `1400/01/02 00:30`, which never happened, means 01:30 +04:30); in a fold the
    /// *earlier* of the two instants is chosen.
    pub fn to_ms(&self) -> Result<i64, CalendarError> {
        if self.hour > 23 || self.minute > 59 || self.second > 59 || self.millisecond > 999 {
            return Err(CalendarError::InvalidTime {
                input: format!(
                    "{:02}:{:02}:{:02}.{:03}",
                    self.hour, self.minute, self.second, self.millisecond
                ),
                reason: "time of day out of range".to_owned(),
            });
        }
        let date = self.date.to_gregorian();
        let datetime = date.at(
            self.hour as i8,
            self.minute as i8,
            self.second as i8,
            i32::from(self.millisecond) * 1_000_000,
        );
        let timestamp = tehran()?
            .to_ambiguous_timestamp(datetime)
            .compatible()
            .map_err(|e| CalendarError::TimeZone(e.to_string()))?;
        Ok(timestamp.as_millisecond())
    }
}

impl fmt::Display for TehranWallClock {
    /// Writes `yyyy/mm/dd HH:MM`, adding `:SS` only when the seconds are not zero
    /// (milliseconds are not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:02}:{:02}", self.date, self.hour, self.minute)?;
        if self.second != 0 {
            write!(f, ":{:02}", self.second)?;
        }
        Ok(())
    }
}

/// Parses an instant given either as a Tehran wall clock in Jalali, `yyyy/mm/dd HH:MM` or
/// `yyyy/mm/dd HH:MM:SS` (Persian digits and `-` separators accepted, see
/// [`JalaliDate::parse`]), or as an RFC 3339 instant with `Z` or an offset
/// (`2020-02-28T06:30:00Z`, `2020-02-28T10:00:00+03:30`). Returns milliseconds since the Unix
/// epoch. Wall-clock readings in a daylight-saving gap or fold are resolved as documented at
/// [`TehranWallClock::to_ms`] ("compatible").
pub fn parse_tehran_datetime(text: &str) -> Result<i64, CalendarError> {
    let normalized = normalize_digits(text.trim());
    let jalali = parse_wall_clock(&normalized, text);
    match jalali {
        Ok(clock) => clock.to_ms(),
        Err(jalali_error) => match normalized.parse::<Timestamp>() {
            Ok(timestamp) => Ok(timestamp.as_millisecond()),
            Err(_) => match jalali_error {
                CalendarError::Syntax { .. } => Err(CalendarError::Syntax {
                    input: text.to_owned(),
                    expected: "a Tehran wall clock `yyyy/mm/dd HH:MM[:SS]` or an RFC 3339 instant",
                }),
                other => Err(other),
            },
        },
    }
}

fn parse_wall_clock(normalized: &str, original: &str) -> Result<TehranWallClock, CalendarError> {
    let syntax = || CalendarError::Syntax {
        input: original.to_owned(),
        expected: "a Tehran wall clock `yyyy/mm/dd HH:MM[:SS]`",
    };
    let (date_text, time_text) = normalized.split_once(' ').ok_or_else(syntax)?;
    let time = time_text.trim_start().as_bytes();
    let (hour, rest) = take_number(time, 1, 2).ok_or_else(syntax)?;
    let rest = rest.strip_prefix(b":").ok_or_else(syntax)?;
    let (minute, rest) = take_number(rest, 2, 2).ok_or_else(syntax)?;
    let (second, rest) = match rest.strip_prefix(b":") {
        Some(rest) => take_number(rest, 2, 2).ok_or_else(syntax)?,
        None => (0, rest),
    };
    if !rest.is_empty() {
        return Err(syntax());
    }
    let date = match JalaliDate::parse(date_text) {
        Ok(date) => date,
        Err(CalendarError::Syntax { .. }) => return Err(syntax()),
        Err(other) => return Err(other),
    };
    if hour > 23 || minute > 59 || second > 59 {
        return Err(CalendarError::InvalidTime {
            input: original.to_owned(),
            reason: format!("{hour:02}:{minute:02}:{second:02} is not a time of day"),
        });
    }
    Ok(TehranWallClock {
        date,
        hour: hour as u8,
        minute: minute as u8,
        second: second as u8,
        millisecond: 0,
    })
}

/// Formats instant `ms` as Tehran wall clock in Jalali, `1398/12/12 10:00`, with `:SS` only
/// when the seconds are not zero (milliseconds are dropped). An instant outside the supported
/// Jalali years is written as [`format_rfc3339_utc`] does instead.
pub fn format_tehran_jalali(ms: i64) -> String {
    match TehranWallClock::from_ms(ms) {
        Ok(clock) => clock.to_string(),
        Err(_) => format_rfc3339_utc(ms),
    }
}

/// Formats instant `ms` as RFC 3339 in UTC, `2020-02-28T06:30:00Z`, with `.mmm` only when the
/// milliseconds are not zero. Years outside 0..=9999 are written with a sign and six digits.
pub fn format_rfc3339_utc(ms: i64) -> String {
    let day = ms.div_euclid(DAY_MS);
    let of_day_ms = ms.rem_euclid(DAY_MS);
    let (year, month, day_of_month) = civil_from_day_number(day);
    let mut out = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+07}")
    };
    out.push_str(&format!(
        "-{month:02}-{day_of_month:02}T{:02}:{:02}:{:02}",
        of_day_ms / 3_600_000,
        of_day_ms / 60_000 % 60,
        of_day_ms / 1000 % 60
    ));
    if of_day_ms % 1000 != 0 {
        out.push_str(&format!(".{:03}", of_day_ms % 1000));
    }
    out.push('Z');
    out
}

/// Tehran's offset from UTC at instant `ms`, in seconds (12,600 for +03:30, 16,200 for
/// +04:30). An instant outside jiff's range (years -9999..=9999) or a missing time-zone
/// database gives Iran Standard Time, 12,600.
pub fn tehran_offset_seconds(ms: i64) -> i32 {
    match (Timestamp::from_millisecond(ms), tehran()) {
        (Ok(timestamp), Ok(tz)) => tz.to_offset(timestamp).seconds(),
        _ => 12_600,
    }
}

/// Units of a duration, largest first: (suffix, milliseconds).
const DURATION_UNITS: [(&str, i64); 5] = [
    ("d", DAY_MS),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a positive duration into milliseconds: one or more `<number><unit>` parts with units
/// `d`, `h`, `m`, `s`, `ms`, each at most once and largest first (`72h`, `7d`, `1d12h`,
/// `2m30s`, `1500ms`). Persian digits and whitespace between parts are accepted. Zero,
/// negative, empty and overflowing durations are refused.
pub fn parse_duration_ms(text: &str) -> Result<i64, CalendarError> {
    let normalized = normalize_digits(text.trim());
    let fail = |reason: &str| CalendarError::InvalidDuration {
        input: text.to_owned(),
        reason: reason.to_owned(),
    };
    let mut rest = normalized.as_bytes();
    if rest.is_empty() {
        return Err(fail("it is empty; write e.g. 72h, 7d or 1d12h"));
    }
    if rest.first() == Some(&b'-') {
        return Err(fail("it is negative"));
    }
    let mut total: i64 = 0;
    let mut next_unit = 0usize;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(fail("expected a number followed by d, h, m, s or ms"));
        }
        let mut value: i64 = 0;
        for &b in &rest[..digits] {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(b - b'0')))
                .ok_or_else(|| fail("it is too long"))?;
        }
        rest = &rest[digits..];
        let letters = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..letters];
        rest = rest[letters..].trim_ascii_start();
        let position = DURATION_UNITS
            .iter()
            .position(|(suffix, _)| suffix.as_bytes() == unit)
            .ok_or_else(|| fail("units are d, h, m, s and ms"))?;
        if position < next_unit {
            return Err(fail("each unit at most once, largest first (e.g. 1d12h)"));
        }
        next_unit = position + 1;
        total = value
            .checked_mul(DURATION_UNITS[position].1)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| fail("it is too long"))?;
    }
    if total == 0 {
        return Err(fail("it must be longer than zero"));
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration_ms`] reads it: whole days of 7 or more as `Nd`,
/// whole hours as `Nh` (so `72h` and `24h` stay as written), anything else as parts largest
/// first (`1h30m`, `1500ms` is `1s500ms`). Zero or negative gives `0ms`, which the parser
/// refuses.
pub fn format_duration_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0ms".to_owned();
    }
    if ms % DAY_MS == 0 && ms / DAY_MS >= 7 {
        return format!("{}d", ms / DAY_MS);
    }
    if ms % 3_600_000 == 0 {
        return format!("{}h", ms / 3_600_000);
    }
    let mut out = String::new();
    let mut rest = ms;
    for (suffix, unit_ms) in DURATION_UNITS {
        if rest >= unit_ms {
            out.push_str(&format!("{}{suffix}", rest / unit_ms));
            rest %= unit_ms;
        }
    }
    out
}

/// The check digit of a national ID whose first nine digits are `first9` (read as nine digits,
/// zero-padded): `r = Σ digit[i] * (10 - i) mod 11`, and the check digit is `r` if `r < 2`,
/// else `11 - r`. Only the last nine decimal digits of `first9` are used.
pub fn national_id_check_digit(first9: u64) -> u8 {
    let mut rest = first9 % 1_000_000_000;
    let mut sum = 0u64;
    // The last of the nine digits has weight 2, the first weight 10.
    for weight in 2..=10 {
        sum += (rest % 10) * weight;
        rest /= 10;
    }
    let r = (sum % 11) as u8;
    if r < 2 { r } else { 11 - r }
}

/// Parses an Iranian national ID (kod-e melli): after trimming and [`normalize_digits`],
/// exactly ten digits (leading zeros allowed), not all the same, whose last digit is the check
/// digit of the first nine (see [`national_id_check_digit`]). Returns the ten digits as a
/// number.
pub fn parse_national_id(text: &str) -> Result<u64, NationalIdError> {
    let trimmed = text.trim();
    let normalized = normalize_digits(trimmed);
    let bytes = normalized.as_bytes();
    if let Some(found) = normalized.chars().find(|c| !c.is_ascii_digit()) {
        if normalized.chars().count() != 10 {
            return Err(NationalIdError::Length {
                found: normalized.chars().count(),
            });
        }
        return Err(NationalIdError::NotDigit { found });
    }
    if bytes.len() != 10 {
        return Err(NationalIdError::Length { found: bytes.len() });
    }
    let value = bytes
        .iter()
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    if bytes.iter().all(|&b| b == bytes[0]) {
        return Err(NationalIdError::Repeated);
    }
    let expected = national_id_check_digit(value / 10);
    let found = (value % 10) as u8;
    if found != expected {
        return Err(NationalIdError::CheckDigit { found, expected });
    }
    Ok(value)
}

/// Writes a national ID as ten digits, zero-padded (`0012345679`).
pub fn format_national_id(national_id: u64) -> String {
    format!("{national_id:010}")
}
