//! Tests of `calendar`: Jalali conversion (cross-checked against ICU4X's Persian calendar),
//! Tehran time through the time-zone database, digits, durations and national IDs.
#![allow(clippy::unwrap_used)]

use icu_calendar::Date;
use icu_calendar::cal::Persian;
use jiff::civil::date;
use miqat_engine::calendar::{
    CalendarError, JalaliDate, MAX_JALALI_YEAR, MIN_JALALI_YEAR, NationalIdError, TehranWallClock,
    days_in_month, format_duration_ms, format_national_id, format_rfc3339_utc,
    format_tehran_jalali, is_leap_year, national_id_check_digit, normalize_digits,
    parse_duration_ms, parse_national_id, parse_tehran_datetime, tehran_offset_seconds,
};
use proptest::prelude::*;

fn jd(year: i32, month: u8, day: u8) -> JalaliDate {
    JalaliDate::new(year, month, day).unwrap()
}

fn rfc(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// ICU4X's Persian date of a Gregorian date, as (year, month, day).
fn icu_persian(g: jiff::civil::Date) -> (i32, u8, u8) {
    let iso = Date::try_new_iso(i32::from(g.year()), g.month() as u8, g.day() as u8).unwrap();
    let p = iso.to_calendar(Persian::new());
    (p.extended_year(), p.month().ordinal, p.day_of_month().0)
}

/// The years in which ICU4X (astronomical, 52.5 degrees east) departs from the 33-year rule:
/// it makes 1503, 1602 and 1635 leap instead of 1502, 1601 and 1634, so from Esfand 30 of the
/// rule's leap year to the end of the next year the two calendars are one day apart.
fn icu_disagrees(d: JalaliDate) -> bool {
    matches!(
        (d.year(), d.month(), d.day()),
        (1502 | 1601 | 1634, 12, 30) | (1503 | 1602, _, _)
    )
}

#[test]
fn leap_years_follow_the_33_year_rule() {
    for year in [1399, 1403, 1408, 1370, 1375, 1379, 1383, 1387, 1391, 1395] {
        assert!(is_leap_year(year), "{year} is leap");
    }
    for year in [1398, 1400, 1401, 1402, 1404, 1405, 1406, 1407, 1409] {
        assert!(!is_leap_year(year), "{year} is not leap");
    }
    assert_eq!(days_in_month(1403, 12), 30);
    assert_eq!(days_in_month(1404, 12), 29);
    assert_eq!(days_in_month(1404, 7), 30);
    assert_eq!(days_in_month(1404, 6), 31);
    assert_eq!(days_in_month(1404, 13), 0);
}

#[test]
fn anchors() {
    assert_eq!(jd(1404, 1, 1).to_gregorian(), date(2025, 3, 21));
    assert_eq!(jd(1398, 12, 9).to_gregorian(), date(2020, 2, 28));
    assert_eq!(jd(1399, 12, 30).to_gregorian(), date(2021, 3, 20));
    assert_eq!(jd(1403, 12, 30).to_gregorian(), date(2025, 3, 20));
    assert_eq!(jd(1400, 1, 1).to_gregorian(), date(2021, 3, 21));
    assert_eq!(jd(1408, 12, 30).to_gregorian(), date(2030, 3, 20));
    assert_eq!(jd(1409, 1, 1).to_gregorian(), date(2030, 3, 21));
    assert_eq!(jd(1386, 1, 31).to_gregorian(), date(2007, 4, 20));
    assert_eq!(jd(1348, 10, 11).to_day_number(), 0, "1970-01-01");
    assert_eq!(
        JalaliDate::from_gregorian(date(2025, 3, 21)).unwrap(),
        jd(1404, 1, 1)
    );
    assert_eq!(JalaliDate::from_day_number(0).unwrap(), jd(1348, 10, 11));
}

#[test]
fn invalid_dates_are_refused() {
    assert_eq!(
        JalaliDate::new(1404, 12, 30),
        Err(CalendarError::InvalidDay {
            year: 1404,
            month: 12,
            day: 30,
            days_in_month: 29
        })
    );
    assert!(matches!(
        JalaliDate::parse("1402/07/31"),
        Err(CalendarError::InvalidDay { .. })
    ));
    assert!(JalaliDate::parse("1404/12/30").is_err());
    assert!(JalaliDate::parse("1408/12/30").is_ok());
    assert!(matches!(
        JalaliDate::new(1404, 13, 1),
        Err(CalendarError::InvalidMonth { month: 13 })
    ));
    assert!(JalaliDate::new(1404, 0, 1).is_err());
    assert!(JalaliDate::new(1404, 1, 0).is_err());
    assert!(matches!(
        JalaliDate::new(1243, 1, 1),
        Err(CalendarError::YearOutOfRange { year: 1243 })
    ));
    assert!(JalaliDate::new(1635, 1, 1).is_err());
    assert!(JalaliDate::new(MIN_JALALI_YEAR, 1, 1).is_ok());
    assert!(JalaliDate::new(MAX_JALALI_YEAR, 12, 30).is_ok());
    let first = jd(MIN_JALALI_YEAR, 1, 1).to_day_number();
    let last = jd(MAX_JALALI_YEAR, 12, 30).to_day_number();
    assert!(JalaliDate::from_day_number(first - 1).is_err());
    assert!(JalaliDate::from_day_number(last + 1).is_err());
    assert!(JalaliDate::from_day_number(i32::MIN).is_err());
    assert!(JalaliDate::from_day_number(i32::MAX).is_err());
    assert!(JalaliDate::from_gregorian(date(1800, 1, 1)).is_err());
    let message = JalaliDate::parse("1402/07/31").unwrap_err().to_string();
    assert!(message.contains("has 30 days"), "{message}");
}

#[test]
fn parsing_and_display() {
    assert_eq!(jd(1398, 12, 9).to_string(), "1398/12/09");
    for text in [
        "1398/12/09",
        "1398-12-09",
        "1398/12/9",
        " 1398/12/09\t",
        "۱۳۹۸/۱۲/۰۹",
        "١٣٩٨/١٢/٠٩",
        "۱۳۹۸-۱۲-۹",
    ] {
        assert_eq!(
            JalaliDate::parse(text).unwrap(),
            jd(1398, 12, 9),
            "{text:?}"
        );
    }
    for text in [
        "",
        "1398/12",
        "1398/12/09/1",
        "1398/123/09",
        "13981209",
        "1398/12/0x",
        "abc",
    ] {
        assert!(
            matches!(JalaliDate::parse(text), Err(CalendarError::Syntax { .. })),
            "{text:?}"
        );
    }
    assert_eq!(
        "1403/12/30".parse::<JalaliDate>().unwrap(),
        jd(1403, 12, 30)
    );
}

#[test]
fn every_day_matches_jiff_and_icu() {
    let first = jd(MIN_JALALI_YEAR, 1, 1).to_day_number();
    let last = jd(MAX_JALALI_YEAR, 12, 30).to_day_number();
    let mut gregorian = jd(MIN_JALALI_YEAR, 1, 1).to_gregorian();
    assert_eq!(gregorian, date(1865, 3, 21));
    let epoch = date(1970, 1, 1);
    assert_eq!(
        i64::from(first),
        (gregorian - epoch).get_days() as i64,
        "day numbers agree with jiff"
    );
    let mut previous: Option<JalaliDate> = None;
    let mut disagreements = 0;
    for day in first..=last {
        let ours = JalaliDate::from_day_number(day).unwrap();
        assert_eq!(ours.to_day_number(), day);
        assert_eq!(ours.to_gregorian(), gregorian, "{ours}");
        assert_eq!(JalaliDate::from_gregorian(gregorian).unwrap(), ours);
        if let Some(prev) = previous {
            assert!(prev < ours);
        }
        let icu = icu_persian(gregorian);
        if icu_disagrees(ours) {
            disagreements += 1;
        } else {
            assert_eq!((ours.year(), ours.month(), ours.day()), icu, "{gregorian}");
        }
        previous = Some(ours);
        gregorian = gregorian.tomorrow().unwrap();
    }
    assert_eq!(disagreements, 3 + 2 * 365);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn icu_to_ours(year in MIN_JALALI_YEAR..=MAX_JALALI_YEAR, month in 1u8..=12, day in 1u8..=31) {
        let icu = Date::try_new_persian(year, month, day);
        let ours = JalaliDate::new(year, month, day);
        if !matches!(year, 1502 | 1503 | 1601 | 1602 | 1634) || month < 12 {
            prop_assert_eq!(icu.is_ok(), ours.is_ok());
        }
        if let (Ok(icu), Ok(ours)) = (icu, ours)
            && !icu_disagrees(ours) {
                let iso = icu.to_iso();
                let g = date(iso.extended_year() as i16, iso.month().ordinal as i8, iso.day_of_month().0 as i8);
                prop_assert_eq!(ours.to_gregorian(), g);
                prop_assert_eq!(JalaliDate::from_gregorian(g).unwrap(), ours);
            }
    }

    #[test]
    fn ours_to_icu(offset in 0i32..143_000) {
        let day = jd(MIN_JALALI_YEAR, 1, 1).to_day_number() + offset;
        if let Ok(ours) = JalaliDate::from_day_number(day) {
            prop_assume!(!icu_disagrees(ours));
            prop_assert_eq!((ours.year(), ours.month(), ours.day()), icu_persian(ours.to_gregorian()));
            prop_assert_eq!(JalaliDate::parse(&ours.to_string()).unwrap(), ours);
        }
    }

    #[test]
    fn duration_round_trip(ms in 1i64..1_000_000_000_000) {
        prop_assert_eq!(parse_duration_ms(&format_duration_ms(ms)).unwrap(), ms);
    }

    #[test]
    fn national_id_round_trip(first9 in 0u64..1_000_000_000) {
        let id = first9 * 10 + u64::from(national_id_check_digit(first9));
        let text = format_national_id(id);
        let repeated = text.bytes().all(|b| b == text.as_bytes()[0]);
        prop_assert_eq!(parse_national_id(&text).is_ok(), !repeated);
        let wrong = first9 * 10 + (u64::from(national_id_check_digit(first9)) + 1) % 10;
        prop_assert!(parse_national_id(&format_national_id(wrong)).is_err());
    }
}

#[test]
fn tehran_wall_clock_to_utc() {
    let ms = parse_tehran_datetime("1398/12/09 10:00").unwrap();
    assert_eq!(ms, rfc("2020-02-28T06:30:00Z"));
    assert_eq!(format_rfc3339_utc(ms), "2020-02-28T06:30:00Z");
    assert_eq!(format_tehran_jalali(ms), "1398/12/09 10:00");
    assert_eq!(parse_tehran_datetime("۱۳۹۸/۱۲/۰۹ ۱۰:۰۰").unwrap(), ms);
    assert_eq!(parse_tehran_datetime(" 1398-12-9 10:00:00 ").unwrap(), ms);
    assert_eq!(parse_tehran_datetime("2020-02-28T06:30:00Z").unwrap(), ms);
    assert_eq!(
        parse_tehran_datetime("2020-02-28T10:00:00+03:30").unwrap(),
        ms
    );
    assert_eq!(
        parse_tehran_datetime("1398/12/09 10:00:05").unwrap(),
        ms + 5000
    );
    assert_eq!(format_tehran_jalali(ms + 5000), "1398/12/09 10:00:05");
    assert_eq!(format_tehran_jalali(ms + 500), "1398/12/09 10:00");
    assert_eq!(format_rfc3339_utc(ms + 5), "2020-02-28T06:30:00.005Z");
    assert_eq!(format_rfc3339_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_rfc3339_utc(-1), "1969-12-31T23:59:59.999Z");
    assert_eq!(tehran_offset_seconds(ms), 12_600);
}

#[test]
fn tehran_summer_time_history() {
    let offset = |text: &str| tehran_offset_seconds(parse_tehran_datetime(text).unwrap());
    assert_eq!(offset("1400/04/01 10:00"), 16_200, "2021 summer: +04:30");
    assert_eq!(offset("1401/04/01 10:00"), 16_200, "2022 summer: +04:30");
    assert_eq!(offset("1385/04/01 10:00"), 12_600, "2006: no summer time");
    assert_eq!(offset("1386/04/01 10:00"), 12_600, "2007: no summer time");
    assert_eq!(
        offset("1387/04/01 10:00"),
        16_200,
        "2008: summer time again"
    );
    assert_eq!(offset("1402/04/01 10:00"), 12_600, "2023: abolished");
    assert_eq!(offset("1400/10/01 10:00"), 12_600, "winter");
    assert_eq!(
        parse_tehran_datetime("1400/04/01 10:00").unwrap(),
        rfc("2021-06-22T05:30:00Z")
    );
    assert_eq!(
        format_tehran_jalali(rfc("2021-06-22T05:30:00Z")),
        "1400/04/01 10:00"
    );
}

#[test]
fn gap_and_fold_use_compatible_disambiguation() {
    // Clocks went from 1400/01/02 00:00 (+03:30) to 01:00 (+04:30): 00:30 never happened and
    // means the same instant as 01:30 +04:30.
    let gap = parse_tehran_datetime("1400/01/02 00:30").unwrap();
    assert_eq!(gap, rfc("2021-03-21T21:00:00Z"));
    assert_eq!(format_tehran_jalali(gap), "1400/01/02 01:30");
    // Clocks went back from 1400/06/31 00:00 (+04:30) to 1400/06/30 23:00 (+03:30): 23:30
    // happened twice; the earlier one is chosen.
    let fold = parse_tehran_datetime("1400/06/30 23:30").unwrap();
    assert_eq!(fold, rfc("2021-09-21T19:00:00Z"));
    assert_eq!(format_tehran_jalali(fold + 3_600_000), "1400/06/30 23:30");
}

#[test]
fn wall_clock_round_trip_and_errors() {
    let clock = TehranWallClock::from_ms(rfc("2020-02-28T06:30:00.250Z")).unwrap();
    assert_eq!(clock.date, jd(1398, 12, 9));
    assert_eq!(
        (clock.hour, clock.minute, clock.second, clock.millisecond),
        (10, 0, 0, 250)
    );
    assert_eq!(clock.to_ms().unwrap(), rfc("2020-02-28T06:30:00.250Z"));
    for text in [
        "1398/12/09",
        "1398/12/09 25:00",
        "1398/12/09 10:60",
        "2020-02-28T06:30:00",
        "x",
    ] {
        assert!(parse_tehran_datetime(text).is_err(), "{text:?}");
    }
    assert!(matches!(
        parse_tehran_datetime("1404/12/30 10:00"),
        Err(CalendarError::InvalidDay { .. })
    ));
    // Far outside the Jalali range the Jalali form falls back to RFC 3339.
    assert_eq!(
        format_tehran_jalali(rfc("1800-01-01T00:00:00Z")),
        "1800-01-01T00:00:00Z"
    );
}

#[test]
fn digits() {
    assert_eq!(normalize_digits("۰۱۲۳۴۵۶۷۸۹"), "0123456789");
    assert_eq!(normalize_digits("٠١٢٣٤٥٦٧٨٩"), "0123456789");
    assert_eq!(normalize_digits("تهران ۱۴"), "تهران 14");
    assert!(matches!(
        normalize_digits("abc 12"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(matches!(
        normalize_digits("تهران"),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[test]
fn durations() {
    let h = 3_600_000;
    assert_eq!(parse_duration_ms("72h").unwrap(), 72 * h);
    assert_eq!(parse_duration_ms("7d").unwrap(), 7 * 24 * h);
    assert_eq!(parse_duration_ms("30m").unwrap(), 30 * 60_000);
    assert_eq!(parse_duration_ms("45s").unwrap(), 45_000);
    assert_eq!(parse_duration_ms("1500ms").unwrap(), 1500);
    assert_eq!(parse_duration_ms("1d12h").unwrap(), 36 * h);
    assert_eq!(
        parse_duration_ms("1d 12h 30m").unwrap(),
        36 * h + 30 * 60_000
    );
    assert_eq!(parse_duration_ms("۷۲h").unwrap(), 72 * h);
    for text in [
        "",
        "0h",
        "-1h",
        "h",
        "12",
        "1x",
        "1h1d",
        "1h1h",
        "99999999999999999999d",
        "9999999999999d",
    ] {
        assert!(
            matches!(
                parse_duration_ms(text),
                Err(CalendarError::InvalidDuration { .. })
            ),
            "{text:?}"
        );
    }
    assert_eq!(format_duration_ms(72 * h), "72h");
    assert_eq!(format_duration_ms(24 * h), "24h");
    assert_eq!(format_duration_ms(7 * 24 * h), "7d");
    assert_eq!(format_duration_ms(30 * 24 * h), "30d");
    assert_eq!(format_duration_ms(90 * 60_000), "1h30m");
    assert_eq!(format_duration_ms(1500), "1s500ms");
}

#[test]
fn national_ids() {
    assert_eq!(parse_national_id("0012345679"), Ok(12_345_679));
    assert_eq!(national_id_check_digit(1_234_567), 9);
    assert_eq!(format_national_id(12_345_679), "0012345679");
    assert_eq!(parse_national_id(" ۰۰۱۲۳۴۵۶۷۹ "), Ok(12_345_679));
    assert_eq!(
        parse_national_id("0012345673"),
        Err(NationalIdError::CheckDigit {
            found: 3,
            expected: 9
        })
    );
    assert_eq!(
        parse_national_id("0012345673").unwrap_err().to_string(),
        "check digit is 3, expected 9"
    );
    assert_eq!(
        parse_national_id("1111111111"),
        Err(NationalIdError::Repeated)
    );
    assert_eq!(
        parse_national_id("0000000000"),
        Err(NationalIdError::Repeated)
    );
    assert_eq!(
        parse_national_id("12345"),
        Err(NationalIdError::Length { found: 5 })
    );
    assert_eq!(
        parse_national_id(""),
        Err(NationalIdError::Length { found: 0 })
    );
    assert_eq!(
        parse_national_id("00123456x9"),
        Err(NationalIdError::NotDigit { found: 'x' })
    );
    // A well-known valid example of the rule: s = 2*10+... r = s mod 11.
    let first9 = 123_456_789u64;
    let check = national_id_check_digit(first9);
    let sum: u64 = (1..=9).map(|d| d * (11 - d)).sum();
    let r = (sum % 11) as u8;
    assert_eq!(check, if r < 2 { r } else { 11 - r });
}
