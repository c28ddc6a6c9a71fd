//! Tests of `gen`: determinism, seat totals, caravan sizes, receipt mix and national IDs of the
//! generated data set.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;

use miqat_engine::calendar::{JalaliDate, parse_national_id};
use miqat_engine::datagen::{GenConfig, GenError, GenReport, generate};

const FILES: [&str; 4] = [
    "provinces.csv",
    "caravans.csv",
    "holders.csv",
    "season.toml",
];

fn config(holders: u64, seats: u64, seed: u64) -> GenConfig {
    GenConfig {
        holders,
        seats,
        seed,
        opens_at: None,
    }
}

fn run(dir: &Path, config: &GenConfig) -> GenReport {
    generate(dir, config, &mut |_| {}).unwrap()
}

/// Rows of a CSV file as maps from column name to value.
fn rows(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn day(text: &str) -> i32 {
    JalaliDate::parse(text).unwrap().to_day_number()
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let report_a = run(a.path(), &config(5_000, 85_850, 7));
    let report_b = run(b.path(), &config(5_000, 85_850, 7));
    run(c.path(), &config(5_000, 85_850, 8));
    assert_eq!(report_a, report_b);
    for name in FILES {
        let bytes_a = std::fs::read(a.path().join(name)).unwrap();
        let bytes_b = std::fs::read(b.path().join(name)).unwrap();
        assert_eq!(bytes_a, bytes_b, "{name}");
    }
    for name in ["caravans.csv", "holders.csv"] {
        let bytes_a = std::fs::read(a.path().join(name)).unwrap();
        let bytes_c = std::fs::read(c.path().join(name)).unwrap();
        assert_ne!(bytes_a, bytes_c, "{name}");
    }
}

#[test]
fn national_data_set_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut news = Vec::new();
    let report = generate(dir.path(), &config(20_000, 85_850, 1399), &mut |line| {
        news.push(line.to_owned())
    })
    .unwrap();
    assert!(news.iter().any(|l| l.contains("holders.csv")), "{news:?}");
    assert_eq!(report.provinces, 31);
    assert_eq!(report.seats, 85_850);
    assert_eq!(report.holders, 20_000);
    assert!(
        (570..=600).contains(&report.caravans),
        "{} caravans",
        report.caravans
    );

    let provinces = rows(&dir.path().join("provinces.csv"));
    assert_eq!(provinces.len(), 31);
    let seats_of: HashMap<String, u64> = provinces
        .iter()
        .map(|p| (p["id"].clone(), p["seats"].parse().unwrap()))
        .collect();
    assert_eq!(seats_of.values().sum::<u64>(), 85_850);
    // Razavi Khorasan (1.54x) gets far more than Ilam (0.20x).
    assert!(seats_of["2"] > 10 * seats_of["31"]);

    let caravans = rows(&dir.path().join("caravans.csv"));
    assert_eq!(caravans.len(), report.caravans);
    let mut ids = HashSet::new();
    let mut city_seats: HashMap<(String, String), u64> = HashMap::new();
    let mut medina_first = 0;
    let (first, last) = (day("1399/04/10"), day("1399/05/05"));
    for (i, c) in caravans.iter().enumerate() {
        assert!(ids.insert(c["id"].clone()));
        assert_eq!(c["id"], format!("C{:04}", i + 1));
        let capacity: u64 = c["capacity"].parse().unwrap();
        assert!((1..=190).contains(&capacity), "{c:?}");
        *city_seats
            .entry((c["province_id"].clone(), c["city"].clone()))
            .or_default() += capacity;
        let price: u64 = c["price_rial"].parse().unwrap();
        assert!((1_200_000_000..=2_200_000_000).contains(&price), "{c:?}");
        assert!(["A", "B", "C", "D"].contains(&c["price_group"].as_str()));
        assert!((first..=last).contains(&day(&c["departure_date"])));
        let phone = c["phone"].as_bytes();
        assert!(
            phone.len() == 12 && phone[0] == b'0' && phone[3] == b'-',
            "{c:?}"
        );
        if c["route"] == "medina_first" {
            medina_first += 1;
        } else {
            assert_eq!(c["route"], "medina_second");
        }
    }
    let share = f64::from(medina_first) / caravans.len() as f64;
    assert!((0.52..=0.68).contains(&share), "medina_first share {share}");
    assert_eq!(city_seats.values().sum::<u64>(), 85_850);
    // Caravans hold 115-160 seats, as the contract says.
    for c in &caravans {
        let capacity: u64 = c["capacity"].parse().unwrap();
        assert!((115..=160).contains(&capacity), "{c:?}");
    }
    assert!(city_seats.contains_key(&("2".to_owned(), "Neyshabur".to_owned())));
    assert!(city_seats.contains_key(&("3".to_owned(), "Kashan".to_owned())));

    let holders = rows(&dir.path().join("holders.csv"));
    assert_eq!(holders.len(), 20_000);
    let cutoff_main = day("1386/01/31");
    let cutoff_reserve = day("1386/02/15");
    let mut national_ids = HashSet::new();
    let mut receipts = HashSet::new();
    let (mut conversion, mut main, mut reserve_only, mut on_or_before_main) = (0, 0, 0, 0);
    let mut city_holders: HashMap<(String, String), u64> = HashMap::new();
    let mut province_holders: HashMap<String, u64> = HashMap::new();
    for h in &holders {
        let id = parse_national_id(&h["national_id"]).unwrap();
        assert!(national_ids.insert(id));
        assert!(receipts.insert(h["receipt_no"].clone()));
        assert_eq!(h["tracking_code"].len(), 8);
        assert!(h["tracking_code"].bytes().all(|b| b.is_ascii_digit()));
        let receipt = JalaliDate::parse(&h["receipt_date"]).unwrap();
        let receipt_day = receipt.to_day_number();
        if receipt_day <= cutoff_main {
            on_or_before_main += 1;
        }
        match h["receipt_status"].as_str() {
            "needs_conversion" => {
                conversion += 1;
                assert!(
                    (1360..=1363).contains(&receipt.year())
                        || (1377..=1378).contains(&receipt.year()),
                    "{h:?}"
                );
            }
            "valid" => {
                assert!((1384..=1392).contains(&receipt.year()), "{h:?}");
                if receipt_day <= cutoff_main {
                    main += 1;
                } else if receipt_day <= cutoff_reserve {
                    reserve_only += 1;
                }
            }
            other => panic!("status {other}"),
        }
        *city_holders
            .entry((h["province_id"].clone(), h["city"].clone()))
            .or_default() += 1;
        *province_holders
            .entry(h["province_id"].clone())
            .or_default() += 1;
    }
    let share = |n: u64| n as f64 / 20_000.0;
    assert!((0.01..=0.03).contains(&share(conversion)), "{conversion}");
    assert!((0.25..=0.35).contains(&share(main)), "{main}");
    assert!((0.25..=0.37).contains(&share(on_or_before_main)));
    assert!(
        reserve_only > 0 && share(reserve_only) < 0.03,
        "{reserve_only}"
    );
    assert_eq!(report.eligible_main_wave, main);
    assert_eq!(report.needs_conversion, conversion);
    assert_eq!(province_holders.len(), 31);
    // Every holder lives in a city that has caravans, in the proportion of its seats.
    for ((province, city), &count) in &city_holders {
        let seats = city_seats[&(province.clone(), city.clone())];
        let province_total = province_holders[province] as f64;
        let province_seats = seats_of[province] as f64;
        let expected = province_total * seats as f64 / province_seats;
        assert!(
            (count as f64 - expected).abs() <= 1.0,
            "{city}: {count} vs {expected}"
        );
    }

    let season = std::fs::read_to_string(dir.path().join("season.toml")).unwrap();
    for needle in [
        "name = \"main\"",
        "receipts_until = \"1386/01/31\"",
        "opens_at = \"1398/12/09 10:00\"",
        "name = \"reserve\"",
        "receipts_until = \"1386/02/15\"",
        "opens_at = \"1398/12/21 10:00\"",
        "documents = \"72h\"",
        "first_payment = \"7d\"",
        "medical = \"14d\"",
        "final_payment = \"30d\"",
        "offer_deadline = \"24h\"",
        "# ",
    ] {
        assert!(season.contains(needle), "{needle} in\n{season}");
    }
}

#[test]
fn seat_totals_are_exact_for_any_quota() {
    for (seats, holders) in [
        (1, 1),
        (30, 10),
        (1_000, 100),
        (12_345, 3_000),
        (200_001, 500),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let report = run(dir.path(), &config(holders, seats, 1));
        assert_eq!(report.seats, seats);
        assert_eq!(report.holders, holders);
        let caravans = rows(&dir.path().join("caravans.csv"));
        let total: u64 = caravans
            .iter()
            .map(|c| c["capacity"].parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, seats);
        assert!(
            caravans
                .iter()
                .all(|c| (1..=190).contains(&c["capacity"].parse::<u64>().unwrap()))
        );
        assert_eq!(rows(&dir.path().join("holders.csv")).len() as u64, holders);
    }
}

#[test]
fn opening_can_be_given_and_reserve_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(100, 2_000, 1);
    c.opens_at = Some("۱۴۰۵/۰۲/۰۱ ۱۵:۳۰".to_owned());
    run(dir.path(), &c);
    let season = std::fs::read_to_string(dir.path().join("season.toml")).unwrap();
    assert!(
        season.contains("opens_at = \"1405/02/01 15:30\""),
        "{season}"
    );
    assert!(
        season.contains("opens_at = \"1405/02/13 15:30\""),
        "{season}"
    );
    c.opens_at = Some("2020-02-28T06:30:00Z".to_owned());
    run(dir.path(), &c);
    let season = std::fs::read_to_string(dir.path().join("season.toml")).unwrap();
    assert!(
        season.contains("opens_at = \"1398/12/09 10:00\""),
        "{season}"
    );
}

#[test]
fn impossible_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refuse = |c: GenConfig, needle: &str| {
        let err = generate(dir.path(), &c, &mut |_| {}).unwrap_err();
        assert!(matches!(err, GenError::Config(_)), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    };
    refuse(config(10, 0, 1), "seats must be at least 1");
    refuse(config(0, 10, 1), "holders must be at least 1");
    refuse(config(20_000_001, 10, 1), "at most 20000000");
    let mut bad = config(10, 10, 1);
    bad.opens_at = Some("1404/12/30 10:00".to_owned());
    refuse(bad, "opens_at");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = generate(&file, &config(10, 10, 1), &mut |_| {}).unwrap_err();
    assert!(matches!(err, GenError::Io { .. }), "{err}");
    assert!(err.to_string().contains("a-file"), "{err}");
}

#[test]
fn defaults_are_the_national_figures() {
    let c = GenConfig::default();
    assert_eq!((c.holders, c.seats, c.seed), (1_000_000, 85_850, 1399));
    assert_eq!(c.opens_at, None);
}

#[test]
fn every_caravan_holds_115_to_160_and_province_totals_stay_exact() {
    for (seats, seed) in [
        (85_850, 1399),
        (85_850, 7),
        (87_500, 1),
        (60_000, 2),
        (120_000, 3),
        (200_001, 4),
        (30_000, 5),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let report = run(dir.path(), &config(2_000, seats, seed));
        assert_eq!(report.seats, seats);
        let provinces = rows(&dir.path().join("provinces.csv"));
        let mut by_province: HashMap<String, u64> = HashMap::new();
        let caravans = rows(&dir.path().join("caravans.csv"));
        assert_eq!(caravans.len(), report.caravans);
        for c in &caravans {
            let capacity: u64 = c["capacity"].parse().unwrap();
            assert!(
                (115..=160).contains(&capacity),
                "{seats} seats, seed {seed}: {c:?}"
            );
            *by_province.entry(c["province_id"].clone()).or_default() += capacity;
        }
        for p in &provinces {
            let expected: u64 = p["seats"].parse().unwrap();
            assert_eq!(
                by_province.get(&p["id"]).copied().unwrap_or(0),
                expected,
                "{seats} seats, seed {seed}: province {}",
                p["id"]
            );
        }
        let average = seats as f64 / caravans.len() as f64;
        assert!((135.0..=155.0).contains(&average), "average {average}");
    }
}
