//! Tests of `load`: a generated data set loads whole; every refusal names file, line and field;
//! `season.toml` parses, refuses typos and round-trips through `season_to_toml`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use miqat_engine::calendar::{
    JalaliDate, format_national_id, national_id_check_digit, parse_national_id,
    parse_tehran_datetime,
};
use miqat_engine::catalog::{CaravanIdx, Catalog, HolderIdx, ProvinceIdx, ReceiptStatus, Route};
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::load::{
    LoadError, load_catalog, load_catalog_with_report, load_season, parse_season, schedule_to_toml,
    season_to_toml,
};
use miqat_engine::season::{HOUR_MS, Outflow, RoomConfig, Schedule, Season, Stage, Wave};

const PROVINCES: &str = "id,name_en,name_fa\n1,Tehran,تهران\n2,Qom,قم\n";
const CARAVANS: &str = "\
id,province_id,city,manager,phone,price_group,route,departure_date,price_rial,capacity
C1,1,Tehran,Ali Ahmadi,021-22334455,A,medina_first,1399/04/10,2000000000,150
C2,2,Qom,Reza Karimi,025-33445566,B,medina_second,1399/04/20,1700000000,120
";

/// A valid national ID made from `n`.
fn nid(n: u64) -> String {
    format_national_id(n * 10 + u64::from(national_id_check_digit(n)))
}

fn holders_csv() -> String {
    format!(
        "national_id,tracking_code,receipt_no,receipt_date,receipt_status,province_id,city\n\
         {},11111111,R1,1385/01/10,valid,1,Tehran\n\
         {},22222222,R2,1386/02/10,valid,2,Qom\n\
         {},33333333,R3,1361/05/05,needs_conversion,1,Tehran\n",
        nid(123_456_789),
        nid(1_234_567),
        nid(987_654_321)
    )
}

fn write_set(dir: &Path, provinces: &str, caravans: &str, holders: &str) {
    std::fs::write(dir.join("provinces.csv"), provinces).unwrap();
    std::fs::write(dir.join("caravans.csv"), caravans).unwrap();
    std::fs::write(dir.join("holders.csv"), holders).unwrap();
}

/// Loads the tiny data set with `file` replaced by `content` and returns the refusal.
fn refusal(file: &str, content: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let holders = holders_csv();
    write_set(dir.path(), PROVINCES, CARAVANS, &holders);
    std::fs::write(dir.path().join(file), content).unwrap();
    match load_catalog(dir.path()) {
        Ok(_) => panic!("{file} with a defect was accepted:\n{content}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `file` with `content` is refused with a message naming the file, `line`,
/// `field` and containing `words`.
fn check(file: &str, content: &str, line: u64, field: &str, words: &str) {
    let message = refusal(file, content);
    let expected = format!("{file} line {line}, field {field}: ");
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
    assert!(message.contains(words), "{message:?} lacks {words:?}");
}

/// `CARAVANS` with the second caravan's line replaced.
fn caravans_with(line: &str) -> String {
    let mut lines: Vec<&str> = CARAVANS.lines().collect();
    lines[2] = line;
    lines.join("\n") + "\n"
}

/// The tiny holders file with its third line (second holder) replaced.
fn holders_with(line: &str) -> String {
    let holders = holders_csv();
    let mut lines: Vec<&str> = holders.lines().collect();
    lines[2] = line;
    lines.join("\n") + "\n"
}

fn tiny_catalog() -> Catalog {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), PROVINCES, CARAVANS, &holders_csv());
    load_catalog(dir.path()).unwrap()
}

#[test]
fn generated_data_set_loads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = GenConfig {
        holders: 20_000,
        ..GenConfig::default()
    };
    let generated = generate(dir.path(), &config, &mut |_| {}).unwrap();
    let (catalog, report) = load_catalog_with_report(dir.path()).unwrap();
    assert_eq!(catalog.provinces().len(), 31);
    assert_eq!(report.provinces, 31);
    assert_eq!(catalog.caravans().len(), generated.caravans);
    assert_eq!(report.caravans, generated.caravans);
    assert_eq!(catalog.holder_count(), 20_000);
    assert_eq!(report.holders, 20_000);
    assert_eq!(report.cities, generated.cities);
    assert_eq!(report.holders_without_caravan, 0);
    let seats: u64 = catalog
        .caravans()
        .iter()
        .map(|c| u64::from(c.capacity))
        .sum();
    assert_eq!(seats, 85_850);
    assert_eq!(report.seats, 85_850);
    let province_total: u32 = (0..31u16)
        .map(|p| catalog.province_holder_count(ProvinceIdx(p)))
        .sum();
    assert_eq!(province_total, 20_000);

    // Every caravan is indexed by id, province and city.
    for (idx, caravan) in catalog.caravans().iter().enumerate() {
        assert_eq!(
            catalog.caravan_by_id(&caravan.id),
            Some(CaravanIdx(idx as u32))
        );
        assert!(
            catalog
                .caravans_of_province(caravan.province)
                .contains(&CaravanIdx(idx as u32))
        );
        assert!(
            catalog
                .caravans_of_city(caravan.city)
                .contains(&CaravanIdx(idx as u32))
        );
        assert_eq!(
            catalog.cities()[caravan.city.index()].province,
            caravan.province
        );
    }

    // Every holder of the file is found by national ID with the file's values, in a city of
    // its own province that has caravans.
    let mut reader = csv::Reader::from_path(dir.path().join("holders.csv")).unwrap();
    let mut eligible = 0;
    let cutoff = JalaliDate::parse("1386/01/31").unwrap().to_day_number();
    for record in reader.records() {
        let record = record.unwrap();
        let national_id = parse_national_id(&record[0]).unwrap();
        let idx = catalog.holder_by_national_id(national_id).unwrap();
        let holder = catalog.holder(idx).unwrap();
        assert_eq!(holder.tracking_code, &record[1]);
        assert_eq!(holder.receipt_no, &record[2]);
        assert_eq!(
            holder.receipt_day,
            JalaliDate::parse(&record[3]).unwrap().to_day_number()
        );
        assert_eq!(holder.receipt_status.as_str(), &record[4]);
        let province = catalog.province_by_id(record[5].parse().unwrap()).unwrap();
        assert_eq!(holder.province, province);
        let city = &catalog.cities()[holder.city.index()];
        assert_eq!(city.province, province);
        assert_eq!(city.name, &record[6]);
        assert!(!catalog.caravans_of_city(holder.city).is_empty());
        if holder.receipt_status == ReceiptStatus::Valid && holder.receipt_day <= cutoff {
            eligible += 1;
        }
    }
    assert_eq!(eligible, generated.eligible_main_wave);

    // The generated season parses against the catalog.
    let season = load_season(&dir.path().join("season.toml"), &catalog).unwrap();
    assert_eq!(season.schedule.waves.len(), 2);
    assert_eq!(season.schedule.waves[0].name, "main");
    assert_eq!(
        season.schedule.waves[0].opens_at_ms,
        parse_tehran_datetime("2020-02-28T06:30:00Z").unwrap()
    );
    assert_eq!(
        season.schedule.waves[1].opens_at_ms - season.schedule.waves[0].opens_at_ms,
        12 * 24 * HOUR_MS
    );
    assert_eq!(season.stages, Season::default().stages);
    assert_eq!(season.offer_deadline_ms, 24 * HOUR_MS);

    // Loading twice gives the same catalog.
    assert_eq!(
        load_catalog(dir.path()).unwrap().fingerprint(),
        catalog.fingerprint()
    );
}

#[test]
fn tiny_data_set_loads() {
    let catalog = tiny_catalog();
    assert_eq!(catalog.provinces().len(), 2);
    assert_eq!(catalog.caravans().len(), 2);
    assert_eq!(catalog.holder_count(), 3);
    let c1 = &catalog.caravans()[0];
    assert_eq!(c1.route, Route::MedinaFirst);
    assert_eq!(c1.price_group, "A");
    assert_eq!(c1.price_rial, 2_000_000_000);
    assert_eq!(
        c1.departure_day,
        JalaliDate::parse("1399/04/10").unwrap().to_day_number()
    );
    let idx = catalog
        .holder_by_national_id(parse_national_id(&nid(987_654_321)).unwrap())
        .unwrap();
    assert_eq!(
        catalog.holder(idx).unwrap().receipt_status,
        ReceiptStatus::NeedsConversion
    );
}

#[test]
fn column_order_bom_extra_columns_whitespace_and_persian_digits() {
    let dir = tempfile::tempdir().unwrap();
    let provinces =
        "\u{feff}name_fa,id,name_en,population\nتهران,۱,Tehran,13267637\nقم, 2 ,Qom,1\n";
    let caravans = "\
capacity,price_rial,departure_date,route,price_group,phone,manager,city,province_id,id,note
۱۵۰,۲۰۰۰۰۰۰۰۰۰,۱۳۹۹/۰۴/۱۰,medina_first,A,021-22334455,Ali Ahmadi, Tehran ,1,C1,x
 120 ,1700000000, 1399-4-20 ,medina_second,B,025-33445566,Reza Karimi,Qom,٢,C2,y
";
    let holders = format!(
        "city,province_id,receipt_status,receipt_date,receipt_no,tracking_code,national_id\n\
         Tehran,۱,valid,۱۳۸۵/۰۱/۱۰,R1,11111111, {} \n\
         Qom,2,valid,1386/2/10,R2,22222222,۰۰۱۲۳۴۵۶۷۹\n",
        nid(123_456_789)
    );
    write_set(dir.path(), provinces, caravans, &holders);
    let catalog = load_catalog(dir.path()).unwrap();
    assert_eq!(catalog.provinces()[0].name_en, "Tehran");
    assert_eq!(catalog.caravans()[0].capacity, 150);
    assert_eq!(catalog.caravans()[0].price_rial, 2_000_000_000);
    assert_eq!(catalog.caravans()[1].capacity, 120);
    assert_eq!(
        catalog.cities()[catalog.caravans()[0].city.index()].name,
        "Tehran"
    );
    assert!(catalog.holder_by_national_id(12_345_679).is_some());
    let holder = catalog.holder(HolderIdx(1)).unwrap();
    assert_eq!(
        holder.receipt_day,
        JalaliDate::parse("1386/02/10").unwrap().to_day_number()
    );
    // Holders and caravans of the same city share one city index.
    assert_eq!(
        catalog.holder(HolderIdx(0)).unwrap().city,
        catalog.caravans()[0].city
    );
}

#[test]
fn holders_in_a_city_without_caravans_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let holders = holders_with(&format!(
        "{},22222222,R2,1386/02/10,valid,2,Kashan",
        nid(1_234_567)
    ));
    write_set(dir.path(), PROVINCES, CARAVANS, &holders);
    let (catalog, report) = load_catalog_with_report(dir.path()).unwrap();
    assert_eq!(catalog.holder_count(), 3);
    assert_eq!(report.holders_without_caravan, 1);
    assert_eq!(report.cities_without_caravan, 1);
    assert_eq!(report.cities, 3);
}

#[test]
fn province_refusals() {
    check(
        "provinces.csv",
        "id,name_en,name_fa\n1,A,a\n1,B,b\n",
        3,
        "id",
        "listed twice",
    );
    check(
        "provinces.csv",
        "id,name_en,name_fa\n1,A,a\nx,B,b\n",
        3,
        "id",
        "whole number",
    );
    check(
        "provinces.csv",
        "id,name_en\n1,A\n",
        1,
        "name_fa",
        "missing column",
    );
    let message = refusal("provinces.csv", "id,name_en,name_fa\n");
    assert!(message.contains("provinces.csv: no provinces"), "{message}");
}

#[test]
fn caravan_refusals() {
    let row = |fields: [&str; 10]| caravans_with(&fields.join(","));
    let good = [
        "C2",
        "2",
        "Qom",
        "Reza",
        "025-1",
        "B",
        "medina_second",
        "1399/04/20",
        "1700000000",
        "120",
    ];
    let with = |i: usize, value: &str| {
        let mut fields = good;
        fields[i] = value;
        row(fields)
    };
    check("caravans.csv", &with(0, "C1"), 3, "id", "listed twice");
    check("caravans.csv", &with(0, ""), 3, "id", "must not be empty");
    check(
        "caravans.csv",
        &with(1, "99"),
        3,
        "province_id",
        "unknown province id 99",
    );
    check(
        "caravans.csv",
        &with(2, " "),
        3,
        "city",
        "must not be empty",
    );
    check(
        "caravans.csv",
        &with(6, "jeddah_first"),
        3,
        "route",
        "unknown route",
    );
    check(
        "caravans.csv",
        &with(7, "1404/12/30"),
        3,
        "departure_date",
        "29 days",
    );
    check(
        "caravans.csv",
        &with(7, "2020-07-01x"),
        3,
        "departure_date",
        "Jalali date",
    );
    check(
        "caravans.csv",
        &with(8, "1.7e9"),
        3,
        "price_rial",
        "whole number",
    );
    check(
        "caravans.csv",
        &with(8, "-5"),
        3,
        "price_rial",
        "whole number",
    );
    check("caravans.csv", &with(9, "0"), 3, "capacity", "at least 1");
    check(
        "caravans.csv",
        &with(9, "many"),
        3,
        "capacity",
        "whole number",
    );
    check(
        "caravans.csv",
        &with(9, "99999999999"),
        3,
        "capacity",
        "too large",
    );
    check(
        "caravans.csv",
        "id,province_id,city,manager,phone,price_group,departure_date,price_rial,capacity\n",
        1,
        "route",
        "missing column",
    );
    let message = refusal(
        "caravans.csv",
        "id,province_id,city,manager,phone,price_group,route,departure_date,price_rial,capacity\n",
    );
    assert!(message.contains("caravans.csv: no caravans"), "{message}");
    let message = refusal("caravans.csv", &caravans_with("C2,2,Qom"));
    assert!(message.contains("caravans.csv line 3: "), "{message}");
    assert!(message.contains("3 fields"), "{message}");
}

#[test]
fn holder_refusals() {
    let line = |national_id: &str, rest: &str| holders_with(&format!("{national_id},{rest}"));
    let good_rest = "22222222,R2,1386/02/10,valid,2,Qom";
    let bad = format!(
        "{}{}",
        &nid(1_234_567)[..9],
        (nid(1_234_567).as_bytes()[9] - b'0' + 1) % 10
    );
    let expected = nid(1_234_567).as_bytes()[9] - b'0';
    check(
        "holders.csv",
        &line(&bad, good_rest),
        3,
        "national_id",
        &format!(
            "check digit is {}, expected {expected}",
            bad.as_bytes()[9] - b'0'
        ),
    );
    check(
        "holders.csv",
        &line("12345", good_rest),
        3,
        "national_id",
        "10 digits",
    );
    check(
        "holders.csv",
        &line("1111111111", good_rest),
        3,
        "national_id",
        "identical",
    );
    check(
        "holders.csv",
        &line(&nid(123_456_789), good_rest),
        3,
        "national_id",
        "listed twice",
    );
    let nid2 = nid(1_234_567);
    check(
        "holders.csv",
        &line(&nid2, "22222222,R2,1386/02/10,valid,32,Qom"),
        3,
        "province_id",
        "unknown province id 32",
    );
    check(
        "holders.csv",
        &line(&nid2, "22222222,R2,1386/02/10,converted,2,Qom"),
        3,
        "receipt_status",
        "unknown status",
    );
    check(
        "holders.csv",
        &line(&nid2, "22222222,R2,1386/13/10,valid,2,Qom"),
        3,
        "receipt_date",
        "month 13",
    );
    check(
        "holders.csv",
        &line(&nid2, "22222222,R2,1190/01/01,valid,2,Qom"),
        3,
        "receipt_date",
        "outside the supported range",
    );
    check(
        "holders.csv",
        &line(&nid2, " ,R2,1386/02/10,valid,2,Qom"),
        3,
        "tracking_code",
        "must not be empty",
    );
    check(
        "holders.csv",
        &line(&nid2, "22222222,,1386/02/10,valid,2,Qom"),
        3,
        "receipt_no",
        "must not be empty",
    );
    check(
        "holders.csv",
        "national_id,receipt_no,receipt_date,receipt_status,province_id,city\n",
        1,
        "tracking_code",
        "missing column",
    );
    // A holder file with no holders is allowed (nobody waits).
    let dir = tempfile::tempdir().unwrap();
    write_set(
        dir.path(),
        PROVINCES,
        CARAVANS,
        "national_id,tracking_code,receipt_no,receipt_date,receipt_status,province_id,city\n",
    );
    assert_eq!(load_catalog(dir.path()).unwrap().holder_count(), 0);
}

#[test]
fn missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("provinces.csv"), PROVINCES).unwrap();
    let err = load_catalog(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    assert!(err.to_string().contains("caravans.csv"), "{err}");
    let err = load_season(&dir.path().join("season.toml"), &tiny_catalog()).unwrap_err();
    assert!(err.to_string().contains("season.toml"), "{err}");
}

const SEASON: &str = r#"
[[wave]]
name = "main"
receipts_until = "1386/01/31"     # Jalali date, inclusive
opens_at = "1398/12/09 10:00"

[[wave]]
name = "reserve-tehran"
receipts_until = "۱۳۸۶/۰۲/۱۵"
opens_at = "2020-03-11T11:30:00Z"
provinces = [1]

[stages]
documents = "72h"
first_payment = "7d"
medical = "14d"
final_payment = "30d"

[waitlist]
offer_deadline = "24h"
"#;

fn parse(text: &str) -> Result<Season, String> {
    parse_season(text, "season.toml", &tiny_catalog()).map_err(|e| e.to_string())
}

#[test]
fn season_parses() {
    let season = parse(SEASON).unwrap();
    let main = &season.schedule.waves[0];
    assert_eq!(main.name, "main");
    assert_eq!(
        main.receipts_until_day,
        JalaliDate::parse("1386/01/31").unwrap().to_day_number()
    );
    assert_eq!(
        main.opens_at_ms,
        parse_tehran_datetime("2020-02-28T06:30:00Z").unwrap()
    );
    assert_eq!(main.provinces, None);
    assert_eq!(season.schedule.waves[1].provinces, Some(vec![1]));
    assert_eq!(
        season,
        Season {
            schedule: season.schedule.clone(),
            ..Season::default()
        }
    );

    // Without [stages] and [waitlist]: the defaults.
    let only_waves = SEASON.split("[stages]").next().unwrap();
    assert_eq!(parse(only_waves).unwrap().stages, Season::default().stages);
    // Stages given partly keep the canonical order and skip the rest.
    let partial = format!(
        "{only_waves}[stages]\nmedical = \"2d\"\ndocuments = \"1d12h\"\n[waitlist]\noffer_deadline = \"30m\"\n"
    );
    let season = parse(&partial).unwrap();
    assert_eq!(
        season.stages,
        vec![
            (Stage::Documents, 36 * HOUR_MS),
            (Stage::Medical, 48 * HOUR_MS)
        ]
    );
    assert_eq!(season.offer_deadline_ms, HOUR_MS / 2);
    // An empty [stages] means a reservation is confirmed at once.
    assert!(
        parse(&format!("{only_waves}[stages]\n"))
            .unwrap()
            .stages
            .is_empty()
    );
}

/// Asserts that the season text is refused naming `line` and `key`, with `words`.
fn refuse_season(text: &str, line: u64, key: &str, words: &str) {
    let message = parse(text).unwrap_err();
    let expected = format!("season.toml line {line}, field {key}: ");
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
    assert!(message.contains(words), "{message:?} lacks {words:?}");
}

#[test]
fn season_refusals_name_line_and_key() {
    refuse_season(
        &SEASON.replace("opens_at = \"1398", "opens_a = \"1398"),
        5,
        "opens_a",
        "unknown field",
    );
    refuse_season(
        &SEASON.replace("[waitlist]", "[waitlst]"),
        19,
        "waitlst",
        "unknown field",
    );
    refuse_season(
        &SEASON.replace("medical =", "medicine ="),
        16,
        "medicine",
        "unknown field",
    );
    refuse_season(
        &SEASON.replace("provinces = [1]", "provinces = [1, 7]"),
        11,
        "provinces",
        "unknown province id 7",
    );
    refuse_season(
        &SEASON.replace("provinces = [1]", "provinces = []"),
        11,
        "provinces",
        "empty",
    );
    refuse_season(
        &SEASON.replace("\"72h\"", "\"72 hours\""),
        14,
        "documents",
        "invalid duration",
    );
    refuse_season(
        &SEASON.replace("\"24h\"", "\"0h\""),
        20,
        "offer_deadline",
        "longer than zero",
    );
    refuse_season(
        &SEASON.replace("1386/01/31", "1386/01/32"),
        4,
        "receipts_until",
        "day 32",
    );
    refuse_season(
        &SEASON.replace("1398/12/09 10:00", "tomorrow"),
        5,
        "opens_at",
        "Tehran wall clock",
    );
    refuse_season(
        &SEASON.replace("reserve-tehran", "main"),
        8,
        "name",
        "listed twice",
    );
    refuse_season(&SEASON.replace("\"72h\"", "72"), 14, "documents", "");
    let message = parse(&SEASON.replace("opens_at = \"1398/12/09 10:00\"\n", "")).unwrap_err();
    assert!(message.contains("opens_at"), "{message}");
    assert!(message.contains("season.toml line "), "{message}");
    let message = parse("[[wave]\nname = 1").unwrap_err();
    assert!(message.contains("season.toml line 1"), "{message}");
}

/// `SEASON` with `room` as the first wave's `[wave.room]` table (its keys start at line 7).
fn with_room(room: &str) -> String {
    SEASON.replacen(
        "opens_at = \"1398/12/09 10:00\"\n",
        &format!("opens_at = \"1398/12/09 10:00\"\n[wave.room]\n{room}"),
        1,
    )
}

#[test]
fn a_wave_room_parses_with_defaults_and_bad_values_are_refused() {
    let season = parse(&with_room("")).unwrap();
    assert_eq!(
        season.rooms,
        vec![("main".to_owned(), RoomConfig::default())]
    );
    assert_eq!(season.room("main"), Some(&RoomConfig::default()));
    assert_eq!(season.room("reserve-tehran"), None);
    let season = parse(&with_room(
        "outflow = 40\npass_lifetime = \"2m\"\npre_queue = \"1h\"\n",
    ))
    .unwrap();
    assert_eq!(
        season.room("main"),
        Some(&RoomConfig {
            enabled: true,
            outflow: Outflow::PerSecond(40.0),
            pass_lifetime_ms: 120_000,
            pre_queue_ms: HOUR_MS,
        })
    );
    let off = parse(&with_room("enabled = false\n")).unwrap();
    assert_eq!(off.room("main"), None, "a room switched off is no room");
    assert!(
        parse(&with_room("outflow = \"auto\"\n"))
            .unwrap()
            .room("main")
            .is_some()
    );

    refuse_season(&with_room("outflow = 0\n"), 7, "outflow", "above 0");
    refuse_season(&with_room("outflow = -3.5\n"), 7, "outflow", "above 0");
    refuse_season(&with_room("outflow = \"fast\"\n"), 7, "outflow", "\"auto\"");
    refuse_season(&with_room("outflow = 1e9\n"), 7, "outflow", "at most");
    refuse_season(
        &with_room("pass_lifetime = \"500ms\"\n"),
        7,
        "pass_lifetime",
        "too short",
    );
    refuse_season(
        &with_room("pre_queue = \"soon\"\n"),
        7,
        "pre_queue",
        "invalid duration",
    );
    refuse_season(&with_room("outflw = 3\n"), 7, "outflw", "unknown field");
}

#[test]
fn schedule_and_season_round_trip() {
    let ms = |text: &str| parse_tehran_datetime(text).unwrap();
    let day = |text: &str| JalaliDate::parse(text).unwrap().to_day_number();
    let schedule = Schedule {
        waves: vec![
            Wave {
                name: "main \"quoted\"".to_owned(),
                receipts_until_day: day("1386/01/31"),
                opens_at_ms: ms("1398/12/09 10:00"),
                provinces: Some(vec![1, 2]),
                admits_earlier_receipts: false,
            },
            Wave {
                name: "afternoon".to_owned(),
                receipts_until_day: day("1386/02/15"),
                // Sub-second precision is written as RFC 3339.
                opens_at_ms: ms("1398/12/21 15:00") + 250,
                provinces: None,
                admits_earlier_receipts: false,
            },
            Wave {
                name: "fold".to_owned(),
                receipts_until_day: day("1390/01/01"),
                // The second 23:30 of the night summer time ended: a wall clock cannot name it.
                opens_at_ms: ms("2021-09-21T20:00:00Z"),
                provinces: Some(vec![2]),
                admits_earlier_receipts: false,
            },
        ],
    };
    let text = schedule_to_toml(&schedule);
    let parsed = parse(&text).unwrap();
    assert_eq!(parsed.schedule, schedule, "{text}");
    assert!(text.contains("opens_at = \"1398/12/09 10:00\""), "{text}");
    assert!(
        text.contains("opens_at = \"2020-03-11T11:30:00.250Z\""),
        "{text}"
    );
    assert!(text.contains("provinces = [1, 2]"), "{text}");

    let season = Season {
        schedule,
        stages: vec![
            (Stage::Documents, 90 * 60_000),
            (Stage::FinalPayment, 10 * 24 * HOUR_MS),
        ],
        offer_deadline_ms: 1500,
        rooms: vec![(
            "afternoon".to_owned(),
            RoomConfig {
                enabled: true,
                outflow: Outflow::PerSecond(12.5),
                pass_lifetime_ms: 90_000,
                pre_queue_ms: HOUR_MS,
            },
        )],
    };
    let text = season_to_toml(&season);
    assert_eq!(parse(&text).unwrap(), season, "{text}");
    assert_eq!(
        parse(&season_to_toml(&Season::default())).unwrap(),
        Season::default()
    );
}

#[test]
fn line_numbers_are_right_in_crlf_files_too() {
    let bad = holders_with("0000000000,22222222,R2,1386/02/10,valid,2,Qom");
    let crlf = bad.replace('\n', "\r\n");
    check("holders.csv", &bad, 3, "national_id", "");
    check("holders.csv", &crlf, 3, "national_id", "");
    let caravans =
        caravans_with("C2,2,Qom,M,0,A,medina_first,1399/04/10,1,0").replace('\n', "\r\n");
    check("caravans.csv", &caravans, 3, "capacity", "");
}

#[test]
fn a_wider_cutoff_opening_first_is_refused_unless_the_season_allows_it() {
    // The generated season with only the main wave moved into the future (after reserve).
    let dir = tempfile::tempdir().unwrap();
    let config = GenConfig {
        holders: 50,
        seats: 3_000,
        ..GenConfig::default()
    };
    generate(dir.path(), &config, &mut |_| {}).unwrap();
    let text = std::fs::read_to_string(dir.path().join("season.toml")).unwrap();
    let moved = text.replacen("1398/12/09 10:00", "1398/12/28 10:00", 1);
    assert_ne!(moved, text);
    let catalog = load_catalog(dir.path()).unwrap();
    let err = parse_season(&moved, "season.toml", &catalog)
        .unwrap_err()
        .to_string();
    let reserve_line = moved
        .lines()
        .position(|l| l.starts_with("opens_at = \"1398/12/21"))
        .unwrap()
        + 1;
    let expected = format!("season.toml line {reserve_line}, field opens_at: ");
    assert!(err.contains(&expected), "{err:?} lacks {expected:?}");
    for words in [
        "\"reserve\"",
        "\"main\"",
        "1398/12/21 10:00",
        "1398/12/28 10:00",
        "in every province",
        "allow_wider_cutoff_first",
    ] {
        assert!(err.contains(words), "{err:?} lacks {words}");
    }
    // Told explicitly, it loads; and admits_earlier_receipts is read per wave.
    let allowed = format!("allow_wider_cutoff_first = true\n{moved}").replacen(
        "name = \"reserve\"",
        "name = \"reserve\"\nadmits_earlier_receipts = true",
        1,
    );
    let season = parse_season(&allowed, "season.toml", &catalog).unwrap();
    let flags: Vec<bool> = season
        .schedule
        .waves
        .iter()
        .map(|w| w.admits_earlier_receipts)
        .collect();
    assert_eq!(flags, [false, true]);
    // Written back, the schedule says both again and reads back the same.
    let written = schedule_to_toml(&season.schedule);
    assert!(
        written.starts_with("allow_wider_cutoff_first = true\n"),
        "{written}"
    );
    assert_eq!(
        parse_season(&written, "season.toml", &catalog)
            .unwrap()
            .schedule,
        season.schedule
    );
    // A wider wave for one province opening before the main wave names that province.
    let staggered = SEASON.replace(
        "opens_at = \"2020-03-11T11:30:00Z\"",
        "opens_at = \"2020-02-28T06:00:00Z\"",
    );
    refuse_season(&staggered, 10, "opens_at", "in province 1");
}
