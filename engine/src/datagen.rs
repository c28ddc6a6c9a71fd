//! `miqat gen`: writes a realistic national data set (`provinces.csv`, `caravans.csv`,
//! `holders.csv`, `season.toml`) from a seed, the same bytes for the same seed.
//!
//! The shape follows public figures of recent seasons: seats per province by population share times
//! `seat_propensity`, each province's capital plus a few real cities of dispatch, caravans of
//! 115-160 seats, about 60% Medina-first, a million deposit holders whose receipt dates put
//! about 30% in the main wave (on or before 1386/01/31), a few more in the reserve wave (to
//! 1386/02/15), and about 2% old receipts that need conversion.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashSet;

use crate::calendar::{
    CalendarError, JalaliDate, TehranWallClock, national_id_check_digit, parse_tehran_datetime,
};
use crate::load::season_to_toml;
use crate::season::{Schedule, Season, Wave};

/// The project's province list: `id,name_en,name_fa,capital,population_2016,seat_propensity`.
const PROVINCES_CSV: &str = include_str!("../data/provinces.csv");

/// Most holders a data set may have.
pub const MAX_HOLDERS: u64 = 20_000_000;
/// Most seats a data set may have (a national quota is about 87,500).
pub const MAX_SEATS: u64 = 10_000_000;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenConfig {
    /// Number of deposit holders (default 1,000,000; at most [`MAX_HOLDERS`]).
    pub holders: u64,
    /// Total seats over all caravans (default 85,850; at most [`MAX_SEATS`]).
    pub seats: u64,
    /// Seed of the random generator; the same seed writes the same bytes (default 1399).
    pub seed: u64,
    /// Opening of the main wave: a Tehran Jalali wall clock or an RFC 3339 instant; `None`
    /// means `1398/12/09 10:00`. The reserve wave opens 12 days later at the same wall-clock
    /// time.
    pub opens_at: Option<String>,
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            holders: 1_000_000,
            seats: 85_850,
            seed: 1399,
            opens_at: None,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenReport {
    /// Provinces written.
    pub provinces: usize,
    /// Cities of dispatch (with at least one caravan or holder).
    pub cities: usize,
    /// Caravans written.
    pub caravans: usize,
    /// Sum of the caravans' capacities (equals [`GenConfig::seats`]).
    pub seats: u64,
    /// Holders written.
    pub holders: u64,
    /// Holders with a valid receipt dated on or before the main wave's cutoff (1386/01/31).
    pub eligible_main_wave: u64,
    /// Holders whose receipt needs conversion.
    pub needs_conversion: u64,
}

/// Why [`generate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The configuration asks for something impossible.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be written.
    #[error("{file}: {source}")]
    Io {
        /// The file's path.
        file: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded province list is malformed (a build defect).
    #[error("embedded provinces.csv: {0}")]
    Embedded(String),
}

/// One row of the embedded province list.
struct ProvinceRow {
    id: u32,
    name_en: &'static str,
    name_fa: &'static str,
    capital: &'static str,
    population: u64,
    propensity: f64,
}

/// Other real cities of dispatch of the larger provinces, with their share of the province's
/// seats (the capital gets the rest, always the largest share).
const OTHER_CITIES: &[(u32, &[(&str, f64)])] = &[
    (
        1,
        &[("Shahriar", 0.07), ("Varamin", 0.05), ("Eslamshahr", 0.05)],
    ),
    (
        2,
        &[
            ("Neyshabur", 0.12),
            ("Sabzevar", 0.10),
            ("Torbat-e Heydarieh", 0.06),
        ],
    ),
    (
        3,
        &[
            ("Kashan", 0.12),
            ("Najafabad", 0.10),
            ("Khomeyni Shahr", 0.06),
        ],
    ),
    (
        4,
        &[("Marvdasht", 0.12), ("Kazerun", 0.10), ("Jahrom", 0.08)],
    ),
    (5, &[("Dezful", 0.16), ("Abadan", 0.12), ("Behbahan", 0.08)]),
    (6, &[("Maragheh", 0.14), ("Marand", 0.10)]),
    (7, &[("Amol", 0.22), ("Babol", 0.22)]),
    (8, &[("Khoy", 0.16), ("Mahabad", 0.10)]),
    (9, &[("Sirjan", 0.15), ("Rafsanjan", 0.15)]),
    (10, &[("Zabol", 0.18)]),
    (12, &[("Lahijan", 0.15), ("Bandar-e Anzali", 0.10)]),
    (13, &[("Eslamabad-e Gharb", 0.15)]),
    (14, &[("Gonbad-e Kavus", 0.25)]),
    (16, &[("Borujerd", 0.25)]),
    (17, &[("Malayer", 0.22)]),
    (19, &[("Saveh", 0.22)]),
];

/// Telephone area codes by province id (without the leading 0).
const AREA_CODES: [(u32, &str); 31] = [
    (1, "21"),
    (2, "51"),
    (3, "31"),
    (4, "71"),
    (5, "61"),
    (6, "41"),
    (7, "11"),
    (8, "44"),
    (9, "34"),
    (10, "54"),
    (11, "26"),
    (12, "13"),
    (13, "83"),
    (14, "17"),
    (15, "76"),
    (16, "66"),
    (17, "81"),
    (18, "87"),
    (19, "86"),
    (20, "25"),
    (21, "28"),
    (22, "45"),
    (23, "77"),
    (24, "35"),
    (25, "24"),
    (26, "38"),
    (27, "58"),
    (28, "56"),
    (29, "74"),
    (30, "23"),
    (31, "84"),
];

const MEN_FIRST_NAMES: [&str; 18] = [
    "Mohammad",
    "Ali",
    "Hossein",
    "Reza",
    "Mahdi",
    "Hassan",
    "Abbas",
    "Mohsen",
    "Ahmad",
    "Mostafa",
    "Javad",
    "Hamid",
    "Saeed",
    "Majid",
    "Morteza",
    "Gholamreza",
    "Mohammadreza",
    "Alireza",
];

const WOMEN_FIRST_NAMES: [&str; 6] = [
    "Fatemeh", "Zahra", "Maryam", "Masoumeh", "Zeinab", "Sakineh",
];

const LAST_NAMES: [&str; 28] = [
    "Mohammadi",
    "Hosseini",
    "Ahmadi",
    "Rezaei",
    "Moradi",
    "Karimi",
    "Jafari",
    "Rahimi",
    "Hashemi",
    "Mousavi",
    "Ghasemi",
    "Sadeghi",
    "Kazemi",
    "Rostami",
    "Najafi",
    "Ebrahimi",
    "Amini",
    "Heidari",
    "Akbari",
    "Soltani",
    "Tavakoli",
    "Nouri",
    "Bagheri",
    "Zamani",
    "Salehi",
    "Ansari",
    "Yazdani",
    "Shahbazi",
];

/// Hotel price groups: (name, share of caravans, base price per pilgrim in rial).
const PRICE_GROUPS: [(&str, f64, u64); 4] = [
    ("A", 0.12, 2_050_000_000),
    ("B", 0.28, 1_800_000_000),
    ("C", 0.35, 1_580_000_000),
    ("D", 0.25, 1_380_000_000),
];

/// Share of caravans that fly Medina-first.
const MEDINA_FIRST_SHARE: f64 = 0.6;
/// Share of holders whose receipt needs conversion.
const NEEDS_CONVERSION_SHARE: f64 = 0.02;
/// Share of holders with a valid receipt in the main wave (to 1386/01/31).
const MAIN_WAVE_SHARE: f64 = 0.30;
/// Share of holders in the reserve wave only (1386/02/01 to 1386/02/15).
const RESERVE_ONLY_SHARE: f64 = 0.008;
/// Days between the main and the reserve wave's openings.
const RESERVE_WAVE_DELAY_DAYS: i32 = 12;
/// The main wave's opening when the configuration gives none.
const DEFAULT_OPENS_AT: &str = "1398/12/09 10:00";

/// A city of dispatch being generated.
struct GenCity {
    province: usize,
    name: &'static str,
    seats: u64,
    holders: u64,
}

/// Writes `provinces.csv`, `caravans.csv`, `holders.csv` and `season.toml` into `out_dir`
/// (created if missing), calling `progress` with a line of news now and then (every 100,000
/// holders). The same configuration writes byte-identical files.
///
/// Refuses `seats == 0`, `holders == 0`, more than [`MAX_HOLDERS`] holders or [`MAX_SEATS`]
/// seats, and an `opens_at` that does not parse.
pub fn generate(
    out_dir: &Path,
    config: &GenConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<GenReport, GenError> {
    if config.seats == 0 {
        return Err(GenError::Config("seats must be at least 1".to_owned()));
    }
    if config.seats > MAX_SEATS {
        return Err(GenError::Config(format!(
            "seats is {}, at most {MAX_SEATS} are supported",
            config.seats
        )));
    }
    if config.holders == 0 {
        return Err(GenError::Config("holders must be at least 1".to_owned()));
    }
    if config.holders > MAX_HOLDERS {
        return Err(GenError::Config(format!(
            "holders is {}, at most {MAX_HOLDERS} are supported",
            config.holders
        )));
    }
    let opens_at = config.opens_at.as_deref().unwrap_or(DEFAULT_OPENS_AT);
    let season = build_season(opens_at)?;
    std::fs::create_dir_all(out_dir).map_err(|source| GenError::Io {
        file: out_dir.display().to_string(),
        source,
    })?;

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let provinces = embedded_provinces()?;
    let weights: Vec<f64> = provinces
        .iter()
        .map(|p| p.population as f64 * p.propensity)
        .collect();
    let mut province_seats = largest_remainder(config.seats, &weights);
    fit_province_totals(&mut province_seats);
    let mut cities = Vec::new();
    for (index, province) in provinces.iter().enumerate() {
        cities.extend(province_cities(index, province, province_seats[index]));
    }
    let capacities = caravans_by_city(&province_seats, &mut cities, &mut rng);
    spread_holders(config.holders, &province_seats, &mut cities);

    let mut report = GenReport {
        provinces: provinces.len(),
        cities: cities
            .iter()
            .filter(|c| c.seats > 0 || c.holders > 0)
            .count(),
        ..GenReport::default()
    };
    write_provinces(out_dir, &provinces, &province_seats)?;
    progress(&format!("provinces.csv: {} provinces", provinces.len()));
    let (caravans, seats) = write_caravans(out_dir, &provinces, &cities, &capacities, &mut rng)?;
    report.caravans = caravans;
    report.seats = seats;
    progress(&format!("caravans.csv: {caravans} caravans, {seats} seats"));
    write_holders(
        out_dir,
        &provinces,
        &cities,
        &mut rng,
        &mut report,
        progress,
    )?;
    let season_path = out_dir.join("season.toml");
    std::fs::write(&season_path, season_to_toml(&season)).map_err(|source| GenError::Io {
        file: season_path.display().to_string(),
        source,
    })?;
    progress(&format!(
        "season.toml: waves main and reserve; {} holders eligible in the main wave",
        report.eligible_main_wave
    ));
    Ok(report)
}

/// The season: main wave at `opens_at`, reserve wave 12 days later at the same wall clock,
/// default stages and offer deadline.
fn build_season(opens_at: &str) -> Result<Season, GenError> {
    let calendar = |what: &str, e: CalendarError| GenError::Config(format!("{what}: {e}"));
    let main_ms = parse_tehran_datetime(opens_at).map_err(|e| calendar("opens_at", e))?;
    let main_clock = TehranWallClock::from_ms(main_ms).map_err(|e| calendar("opens_at", e))?;
    let reserve_date =
        JalaliDate::from_day_number(main_clock.date.to_day_number() + RESERVE_WAVE_DELAY_DAYS)
            .map_err(|e| calendar("reserve wave opening", e))?;
    let reserve_ms = TehranWallClock {
        date: reserve_date,
        ..main_clock
    }
    .to_ms()
    .map_err(|e| calendar("reserve wave opening", e))?;
    let cutoff = |y, m, d| {
        JalaliDate::new(y, m, d)
            .map(JalaliDate::to_day_number)
            .map_err(|e| calendar("wave cutoff", e))
    };
    Ok(Season {
        schedule: Schedule {
            waves: vec![
                Wave {
                    name: "main".to_owned(),
                    receipts_until_day: cutoff(1386, 1, 31)?,
                    opens_at_ms: main_ms,
                    provinces: None,
                    admits_earlier_receipts: false,
                },
                Wave {
                    name: "reserve".to_owned(),
                    receipts_until_day: cutoff(1386, 2, 15)?,
                    opens_at_ms: reserve_ms,
                    provinces: None,
                    admits_earlier_receipts: false,
                },
            ],
        },
        ..Season::default()
    })
}

fn embedded_provinces() -> Result<Vec<ProvinceRow>, GenError> {
    let mut rows = Vec::new();
    for (number, line) in PROVINCES_CSV.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| GenError::Embedded(format!("line {}: {what}", number + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [id, name_en, name_fa, capital, population, propensity] = fields[..] else {
            return Err(bad("expected 6 fields"));
        };
        rows.push(ProvinceRow {
            id: id.parse().map_err(|_| bad("id"))?,
            name_en,
            name_fa,
            capital,
            population: population.parse().map_err(|_| bad("population_2016"))?,
            propensity: propensity.parse().map_err(|_| bad("seat_propensity"))?,
        });
    }
    if rows.is_empty() {
        return Err(GenError::Embedded("no provinces".to_owned()));
    }
    Ok(rows)
}

/// Splits `total` in proportion to `weights` (equal shares if they are all zero), rounding by
/// largest remainder so that the parts sum to exactly `total`; ties go to the earlier index.
fn largest_remainder(total: u64, weights: &[f64]) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    let weights: Vec<f64> = if sum > 0.0 {
        weights.to_vec()
    } else {
        vec![1.0; weights.len()]
    };
    let sum: f64 = weights.iter().sum();
    let quotas: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut parts: Vec<u64> = quotas.iter().map(|q| q.floor() as u64).collect();
    let assigned: u64 = parts.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = quotas[a] - quotas[a].floor();
        let rb = quotas[b] - quotas[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order
        .iter()
        .cycle()
        .take(total.saturating_sub(assigned) as usize)
    {
        parts[i] += 1;
    }
    parts
}

/// The cities of a province with their seats: the capital and the province's other cities,
/// dropping any other city that would get fewer seats than one full caravan (115), or 191-229
/// seats, which cannot be split into caravans of 115-190.
fn province_cities(index: usize, province: &ProvinceRow, seats: u64) -> Vec<GenCity> {
    let others = OTHER_CITIES
        .iter()
        .find(|(id, _)| *id == province.id)
        .map_or(&[][..], |(_, list)| *list);
    let mut kept: Vec<(&'static str, f64)> = others.to_vec();
    loop {
        let capital_share = 1.0 - kept.iter().map(|(_, share)| share).sum::<f64>();
        let mut weights = vec![capital_share];
        weights.extend(kept.iter().map(|(_, share)| *share));
        let split = largest_remainder(seats, &weights);
        let smallest = split
            .iter()
            .enumerate()
            .skip(1)
            .min_by_key(|(_, s)| **s)
            .map(|(i, s)| (i, *s));
        match smallest {
            Some((i, s)) if s < 115 || (191..230).contains(&s) => {
                kept.remove(i - 1);
            }
            _ => {
                let mut cities = vec![GenCity {
                    province: index,
                    name: province.capital,
                    seats: split[0],
                    holders: 0,
                }];
                cities.extend(kept.iter().zip(&split[1..]).map(|((name, _), s)| GenCity {
                    province: index,
                    name,
                    seats: *s,
                    holders: 0,
                }));
                return cities;
            }
        }
    }
}

/// Spreads `holders` over provinces in proportion to their seats (at least one per province
/// when there are enough holders), then over each province's cities by their seats.
fn spread_holders(holders: u64, province_seats: &[u64], cities: &mut [GenCity]) {
    let provinces = province_seats.len() as u64;
    let weights: Vec<f64> = province_seats.iter().map(|&s| s as f64).collect();
    let per_province: Vec<u64> = if holders >= provinces {
        largest_remainder(holders - provinces, &weights)
            .into_iter()
            .map(|h| h + 1)
            .collect()
    } else {
        largest_remainder(holders, &weights)
    };
    for (province, &count) in per_province.iter().enumerate() {
        let members: Vec<usize> = (0..cities.len())
            .filter(|&c| cities[c].province == province)
            .collect();
        let weights: Vec<f64> = members.iter().map(|&c| cities[c].seats as f64).collect();
        for (&c, share) in members.iter().zip(largest_remainder(count, &weights)) {
            cities[c].holders = share;
        }
    }
}

/// The fewest seats a generated caravan has (the contract's range is 115-160).
const CARAVAN_SEATS_MIN: u64 = 115;
/// The most seats a generated caravan has.
const CARAVAN_SEATS_MAX: u64 = 160;
/// The average size aimed for (the national average is about 145).
const CARAVAN_SEATS_MEAN: u64 = 145;
const _: () = assert!(CARAVAN_SEATS_MIN <= CARAVAN_SEATS_MEAN);
const _: () = assert!(CARAVAN_SEATS_MEAN <= CARAVAN_SEATS_MAX);

/// How many caravans of 115-160 seats hold exactly `seats` between them, as close to an
/// average of 145 as possible; `None` if no number of such caravans does (fewer than 115
/// seats, 161-229, or 321-344).
fn caravan_count(seats: u64) -> Option<u64> {
    let fewest = seats.div_ceil(CARAVAN_SEATS_MAX);
    let most = seats / CARAVAN_SEATS_MIN;
    let target = (seats + CARAVAN_SEATS_MEAN / 2) / CARAVAN_SEATS_MEAN;
    (fewest >= 1 && fewest <= most).then(|| target.clamp(fewest, most))
}

/// Splits `seats` into `count` capacities of 115-160 summing to `seats` (the caller checked
/// with [`caravan_count`] that they exist): an even split, then random moves of 1-15 seats
/// that keep every caravan within the range.
fn caravan_sizes(seats: u64, count: u64, rng: &mut ChaCha8Rng) -> Vec<u64> {
    let mut sizes: Vec<u64> = (0..count)
        .map(|i| seats / count + u64::from(i < seats % count))
        .collect();
    if count >= 2 {
        for _ in 0..count * 3 {
            let from = rng.random_range(0..count as usize);
            let to = rng.random_range(0..count as usize);
            let amount = rng.random_range(1..=15);
            if from != to
                && sizes[from] >= CARAVAN_SEATS_MIN + amount
                && sizes[to] + amount <= CARAVAN_SEATS_MAX
            {
                sizes[from] -= amount;
                sizes[to] += amount;
            }
        }
    }
    sizes
}

/// Moves every province whose share cannot be split into caravans of 115-160 seats (1-114,
/// 161-229 or 321-344 seats) to the nearest total that can (one caravan at least), taking the
/// difference from (or giving it to) the largest province, so the national total stays exact
/// and every province's caravans fit the contract. If that cannot fit every province (data
/// sets of a few thousand seats), the proportional shares are kept as they are: a few
/// provinces then get a caravan outside the range rather than a distorted share.
fn fit_province_totals(province_seats: &mut [u64]) {
    let mut fitted = province_seats.to_vec();
    fit_each_province(&mut fitted);
    if fitted
        .iter()
        .all(|&seats| seats == 0 || caravan_count(seats).is_some())
    {
        province_seats.copy_from_slice(&fitted);
    }
}

/// The moves of [`fit_province_totals`], each made only if the largest province can give.
fn fit_each_province(province_seats: &mut [u64]) {
    let Some(largest) = (0..province_seats.len()).max_by_key(|&p| province_seats[p]) else {
        return;
    };
    for p in 0..province_seats.len() {
        let seats = province_seats[p];
        if p == largest || seats == 0 || caravan_count(seats).is_some() {
            continue;
        }
        let down = (CARAVAN_SEATS_MIN..seats)
            .rev()
            .find(|&s| caravan_count(s).is_some());
        let up = (seats..).find(|&s| caravan_count(s).is_some());
        let fitted = match (down, up) {
            (Some(down), Some(up)) if seats - down <= up - seats => down,
            (_, Some(up)) => up,
            (Some(down), None) => down,
            (None, None) => continue,
        };
        let others = province_seats[largest] + seats;
        if others < fitted || caravan_count(others - fitted).is_none() {
            continue;
        }
        province_seats[largest] = others - fitted;
        province_seats[p] = fitted;
    }
}

/// The caravans of each city (indexed like `cities`), setting each city's seats to their sum.
///
/// A province's seats are split as a whole into caravans of 115-160 ([`caravan_count`],
/// [`caravan_sizes`]) and the caravans shared among its cities in proportion to the seats
/// [`province_cities`] gave them, so the province's total stays exact and every caravan is in
/// the contract's range. Only a province whose total could not be fitted (in data sets too
/// small for [`fit_province_totals`]) keeps its cities' seats and splits each city by
/// [`split_caravans`].
fn caravans_by_city(
    province_seats: &[u64],
    cities: &mut [GenCity],
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<u64>> {
    let mut capacities = vec![Vec::new(); cities.len()];
    for (p, &seats) in province_seats.iter().enumerate() {
        let members: Vec<usize> = (0..cities.len())
            .filter(|&c| cities[c].province == p)
            .collect();
        let Some(count) = caravan_count(seats) else {
            for &c in &members {
                capacities[c] = split_caravans(cities[c].seats, rng);
            }
            continue;
        };
        let mut sizes = caravan_sizes(seats, count, rng).into_iter();
        let weights: Vec<f64> = members.iter().map(|&c| cities[c].seats as f64).collect();
        for (&c, share) in members.iter().zip(largest_remainder(count, &weights)) {
            capacities[c] = sizes.by_ref().take(share as usize).collect();
            cities[c].seats = capacities[c].iter().sum();
        }
    }
    capacities
}

/// Splits a small province's city seats into caravan capacities: one caravan up to 190
/// seats; otherwise caravans of 115-160 seats where such a split exists, else two caravans
/// as near the range as the seats allow.
fn split_caravans(seats: u64, rng: &mut ChaCha8Rng) -> Vec<u64> {
    if seats == 0 {
        return Vec::new();
    }
    if seats <= 190 {
        return vec![seats];
    }
    match caravan_count(seats) {
        Some(count) => caravan_sizes(seats, count, rng),
        None => vec![seats / 2, seats - seats / 2],
    }
}

fn create(out_dir: &Path, name: &str) -> Result<(PathBuf, BufWriter<File>), GenError> {
    let path = out_dir.join(name);
    let file = File::create(&path).map_err(|source| GenError::Io {
        file: path.display().to_string(),
        source,
    })?;
    Ok((path, BufWriter::with_capacity(1 << 20, file)))
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> GenError + '_ {
    move |source| GenError::Io {
        file: path.display().to_string(),
        source,
    }
}

/// A CSV field: quoted only if it needs to be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn write_provinces(
    out_dir: &Path,
    provinces: &[ProvinceRow],
    seats: &[u64],
) -> Result<(), GenError> {
    let (path, mut out) = create(out_dir, "provinces.csv")?;
    let mut text =
        String::from("id,name_en,name_fa,capital,population_2016,seat_propensity,seats\n");
    for (p, s) in provinces.iter().zip(seats) {
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{s}",
            p.id,
            csv_field(p.name_en),
            csv_field(p.name_fa),
            csv_field(p.capital),
            p.population,
            p.propensity
        );
    }
    out.write_all(text.as_bytes()).map_err(io_error(&path))?;
    out.flush().map_err(io_error(&path))
}

/// Picks an index by weight.
fn pick_weighted(rng: &mut ChaCha8Rng, weights: impl Iterator<Item = f64>) -> usize {
    let roll: f64 = rng.random();
    let mut acc = 0.0;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        acc += w;
        last = i;
        if roll < acc {
            return i;
        }
    }
    last
}

/// Writes `caravans.csv`; returns (caravans, seats).
fn write_caravans(
    out_dir: &Path,
    provinces: &[ProvinceRow],
    cities: &[GenCity],
    capacities: &[Vec<u64>],
    rng: &mut ChaCha8Rng,
) -> Result<(usize, u64), GenError> {
    let day = |y, m, d| JalaliDate::new(y, m, d).map(JalaliDate::to_day_number);
    let window = |from: Result<i32, CalendarError>, to: Result<i32, CalendarError>| {
        from.and_then(|f| to.map(|t| (f, t)))
            .map_err(|e| GenError::Embedded(format!("departure window: {e}")))
    };
    let medina_first_window = window(day(1399, 4, 10), day(1399, 4, 27))?;
    let medina_second_window = window(day(1399, 4, 20), day(1399, 5, 5))?;

    let total: usize = capacities.iter().map(Vec::len).sum();
    let width = total.to_string().len().max(4);

    let (path, mut out) = create(out_dir, "caravans.csv")?;
    out.write_all(
        b"id,province_id,city,manager,phone,price_group,route,departure_date,price_rial,capacity\n",
    )
    .map_err(io_error(&path))?;
    let mut number = 0usize;
    let mut seats = 0u64;
    let mut line = String::new();
    for (city, sizes) in cities.iter().zip(capacities) {
        let province = &provinces[city.province];
        let area = AREA_CODES
            .iter()
            .find(|(id, _)| *id == province.id)
            .map_or("21", |(_, code)| code);
        for &capacity in sizes {
            number += 1;
            seats += capacity;
            let (first, honorific) = if rng.random_bool(0.85) {
                let name = MEN_FIRST_NAMES[rng.random_range(0..MEN_FIRST_NAMES.len())];
                (name, "Haj ")
            } else {
                let name = WOMEN_FIRST_NAMES[rng.random_range(0..WOMEN_FIRST_NAMES.len())];
                (name, "Hajieh ")
            };
            let honorific = if rng.random_bool(0.3) { honorific } else { "" };
            let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
            let phone: u32 = rng.random_range(20_000_000..100_000_000);
            let group = pick_weighted(rng, PRICE_GROUPS.iter().map(|g| g.1));
            let (group_name, _, base_price) = PRICE_GROUPS[group];
            let medina_first = rng.random_bool(MEDINA_FIRST_SHARE);
            let (route, (from, to), route_factor) = if medina_first {
                ("medina_first", medina_first_window, 1.0)
            } else {
                ("medina_second", medina_second_window, 0.96)
            };
            let departure = JalaliDate::from_day_number(rng.random_range(from..=to))
                .map_err(|e| GenError::Embedded(format!("departure date: {e}")))?;
            let jitter: f64 = rng.random_range(0.96..1.04);
            let price = (base_price as f64 * route_factor * jitter / 1_000_000.0).round() as u64
                * 1_000_000;
            line.clear();
            let _ = writeln!(
                line,
                "C{number:0width$},{},{},{honorific}{first} {last},0{area}-{phone},{group_name},{route},{departure},{price},{capacity}",
                province.id,
                csv_field(city.name),
            );
            out.write_all(line.as_bytes()).map_err(io_error(&path))?;
        }
    }
    out.flush().map_err(io_error(&path))?;
    Ok((number, seats))
}

/// Appends `value` as exactly `width` decimal digits (zero-padded; `value` must fit).
fn push_digits(buf: &mut Vec<u8>, mut value: u64, width: usize) {
    let start = buf.len();
    buf.resize(start + width, b'0');
    for slot in buf[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn push_date(buf: &mut Vec<u8>, date: JalaliDate) {
    push_digits(buf, date.year() as u64, 4);
    buf.push(b'/');
    push_digits(buf, u64::from(date.month()), 2);
    buf.push(b'/');
    push_digits(buf, u64::from(date.day()), 2);
}

/// Ranges of receipt dates as day numbers.
struct ReceiptRanges {
    conversion_old: (i32, i32),
    conversion_toman: (i32, i32),
    main: (i32, i32),
    reserve: (i32, i32),
    later: (i32, i32),
}

fn receipt_ranges() -> Result<ReceiptRanges, GenError> {
    let day = |y, m, d| {
        JalaliDate::new(y, m, d)
            .map(JalaliDate::to_day_number)
            .map_err(|e| GenError::Embedded(format!("receipt dates: {e}")))
    };
    Ok(ReceiptRanges {
        conversion_old: (day(1360, 1, 1)?, day(1363, 12, 29)?),
        conversion_toman: (day(1377, 1, 1)?, day(1378, 12, 29)?),
        main: (day(1384, 1, 1)?, day(1386, 1, 31)?),
        reserve: (day(1386, 2, 1)?, day(1386, 2, 15)?),
        later: (day(1386, 2, 16)?, day(1392, 12, 29)?),
    })
}

fn write_holders(
    out_dir: &Path,
    provinces: &[ProvinceRow],
    cities: &[GenCity],
    rng: &mut ChaCha8Rng,
    report: &mut GenReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), GenError> {
    let ranges = receipt_ranges()?;
    // Every holder's city, shuffled so that the file interleaves provinces.
    let mut assignment: Vec<u32> =
        Vec::with_capacity(cities.iter().map(|c| c.holders as usize).sum());
    for (c, city) in cities.iter().enumerate() {
        assignment.extend(std::iter::repeat_n(c as u32, city.holders as usize));
    }
    assignment.shuffle(rng);
    let suffixes: Vec<Vec<u8>> = cities
        .iter()
        .map(|city| {
            format!(
                ",{},{}\n",
                provinces[city.province].id,
                csv_field(city.name)
            )
            .into_bytes()
        })
        .collect();

    let (path, mut out) = create(out_dir, "holders.csv")?;
    out.write_all(
        b"national_id,tracking_code,receipt_no,receipt_date,receipt_status,province_id,city\n",
    )
    .map_err(io_error(&path))?;
    let mut seen: FxHashSet<u64> = FxHashSet::default();
    seen.reserve(assignment.len());
    let total = assignment.len() as u64;
    let mut line: Vec<u8> = Vec::with_capacity(128);
    for (serial, &city) in assignment.iter().enumerate() {
        let national_id = loop {
            let first9: u64 = rng.random_range(0..1_000_000_000);
            let id = first9 * 10 + u64::from(national_id_check_digit(first9));
            if !id.is_multiple_of(1_111_111_111) && seen.insert(id) {
                break id;
            }
        };
        let tracking: u64 = rng.random_range(0..100_000_000);
        let roll: f64 = rng.random();
        let (range, valid) = if roll < NEEDS_CONVERSION_SHARE {
            let range = if rng.random_bool(0.5) {
                ranges.conversion_old
            } else {
                ranges.conversion_toman
            };
            (range, false)
        } else if roll < NEEDS_CONVERSION_SHARE + MAIN_WAVE_SHARE {
            (ranges.main, true)
        } else if roll < NEEDS_CONVERSION_SHARE + MAIN_WAVE_SHARE + RESERVE_ONLY_SHARE {
            (ranges.reserve, true)
        } else {
            (ranges.later, true)
        };
        let receipt_day = rng.random_range(range.0..=range.1);
        let receipt_date = JalaliDate::from_day_number(receipt_day)
            .map_err(|e| GenError::Embedded(format!("receipt date: {e}")))?;
        if valid && receipt_day <= ranges.main.1 {
            report.eligible_main_wave += 1;
        }
        if !valid {
            report.needs_conversion += 1;
        }

        line.clear();
        push_digits(&mut line, national_id, 10);
        line.push(b',');
        push_digits(&mut line, tracking, 8);
        line.push(b',');
        push_digits(&mut line, receipt_date.year() as u64, 4);
        line.push(b'-');
        push_digits(&mut line, serial as u64 + 1, 8);
        line.push(b',');
        push_date(&mut line, receipt_date);
        line.extend_from_slice(if valid {
            b",valid"
        } else {
            b",needs_conversion"
        });
        line.extend_from_slice(&suffixes[city as usize]);
        out.write_all(&line).map_err(io_error(&path))?;
        report.holders += 1;
        if report.holders.is_multiple_of(100_000) {
            progress(&format!(
                "holders.csv: {} / {total} holders",
                report.holders
            ));
        }
    }
    out.flush().map_err(io_error(&path))?;
    progress(&format!("holders.csv: {total} holders"));
    Ok(())
}
