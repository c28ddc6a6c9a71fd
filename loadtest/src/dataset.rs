//! Reads what the plan needs from a data set's files (`caravans.csv`, `holders.csv`,
//! `season.toml`), as any client of the published file formats would: no engine code.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// A Jalali calendar day as `(year, month, day)`; orders like the calendar.
pub type JalaliDay = (u16, u8, u8);

/// A caravan as the plan sees it.
#[derive(Debug, Clone)]
pub struct CaravanRow {
    /// Public id.
    pub id: String,
    /// Province id.
    pub province_id: u32,
    /// City of dispatch.
    pub city: String,
    /// Hotel price group (`A` is dearest).
    pub price_group: String,
    /// `true` for `medina_first`.
    pub medina_first: bool,
    /// Departure day.
    pub departure: JalaliDay,
    /// Seats.
    pub capacity: u32,
}

/// A deposit holder as the plan sees it.
#[derive(Debug, Clone)]
pub struct HolderRow {
    /// 10 ASCII digits.
    pub national_id: String,
    /// The tracking code.
    pub tracking_code: String,
    /// Receipt date.
    pub receipt: JalaliDay,
    /// `false` for `needs_conversion`.
    pub receipt_valid: bool,
    /// Province id.
    pub province_id: u32,
    /// City of residence.
    pub city: String,
}

/// The wave a plan is built for (from `season.toml`).
#[derive(Debug, Clone)]
pub struct WaveRow {
    /// The wave's name.
    pub name: String,
    /// Receipts on or before this day are called.
    pub receipts_until: JalaliDay,
    /// Provinces opening; `None` for all.
    pub provinces: Option<Vec<u32>>,
}

/// A data set's caravans, holders and waves.
#[derive(Debug, Clone, Default)]
pub struct DataSet {
    /// Every caravan, in file order.
    pub caravans: Vec<CaravanRow>,
    /// Every holder, in file order.
    pub holders: Vec<HolderRow>,
    /// The season's waves, in file order (empty without `season.toml`).
    pub waves: Vec<WaveRow>,
}

impl DataSet {
    /// Capacity of each caravan by id.
    pub fn capacities(&self) -> HashMap<String, u32> {
        self.caravans
            .iter()
            .map(|c| (c.id.clone(), c.capacity))
            .collect()
    }

    /// Province and receipt day of each holder, by national ID (what
    /// the after-run check needs to judge the schedule).
    pub fn holder_receipts(&self) -> HashMap<String, (u32, JalaliDay)> {
        self.holders
            .iter()
            .map(|h| (h.national_id.clone(), (h.province_id, h.receipt)))
            .collect()
    }

    /// Seats of all caravans.
    pub fn seats_total(&self) -> u64 {
        self.caravans.iter().map(|c| u64::from(c.capacity)).sum()
    }

    /// Whether `holder` is called by `wave` (valid receipt, on or before the cutoff, province
    /// opening).
    pub fn is_called(holder: &HolderRow, wave: Option<&WaveRow>) -> bool {
        let Some(wave) = wave else {
            return holder.receipt_valid;
        };
        holder.receipt_valid
            && holder.receipt <= wave.receipts_until
            && wave
                .provinces
                .as_ref()
                .is_none_or(|p| p.contains(&holder.province_id))
    }
}

/// Loads `caravans.csv`, `holders.csv` and (if present) `season.toml` from `dir`. Every
/// refusal names the file and line.
pub fn load(dir: &Path) -> anyhow::Result<DataSet> {
    let caravans = read_csv(&dir.join("caravans.csv"), |row: CaravanCsv, line| {
        Ok(CaravanRow {
            departure: parse_day(&row.departure_date)
                .with_context(|| format!("line {line}: departure_date"))?,
            medina_first: row.route.trim() == "medina_first",
            id: row.id.trim().to_owned(),
            province_id: row.province_id,
            city: row.city.trim().to_owned(),
            price_group: row.price_group.trim().to_owned(),
            capacity: row.capacity,
        })
    })?;
    let holders = read_csv(&dir.join("holders.csv"), |row: HolderCsv, line| {
        Ok(HolderRow {
            receipt: parse_day(&row.receipt_date)
                .with_context(|| format!("line {line}: receipt_date"))?,
            receipt_valid: row.receipt_status.trim() == "valid",
            national_id: ascii_digits(row.national_id.trim()),
            tracking_code: ascii_digits(row.tracking_code.trim()),
            province_id: row.province_id,
            city: row.city.trim().to_owned(),
        })
    })?;
    let season = dir.join("season.toml");
    let waves = if season.exists() {
        read_waves(&season)?
    } else {
        Vec::new()
    };
    if caravans.is_empty() {
        bail!("{}: no caravans", dir.join("caravans.csv").display());
    }
    Ok(DataSet {
        caravans,
        holders,
        waves,
    })
}

#[derive(Deserialize)]
struct CaravanCsv {
    id: String,
    province_id: u32,
    city: String,
    price_group: String,
    route: String,
    departure_date: String,
    capacity: u32,
}

#[derive(Deserialize)]
struct HolderCsv {
    national_id: String,
    tracking_code: String,
    receipt_date: String,
    receipt_status: String,
    province_id: u32,
    city: String,
}

fn read_csv<Raw, Row>(
    path: &Path,
    mut convert: impl FnMut(Raw, u64) -> anyhow::Result<Row>,
) -> anyhow::Result<Vec<Row>>
where
    Raw: serde::de::DeserializeOwned,
{
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for record in reader.deserialize::<Raw>() {
        let line = rows.len() as u64 + 2;
        let raw = record.with_context(|| format!("{} line {line}", path.display()))?;
        rows.push(convert(raw, line).with_context(|| path.display().to_string())?);
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct SeasonToml {
    #[serde(default)]
    wave: Vec<WaveToml>,
}

#[derive(Deserialize)]
struct WaveToml {
    name: String,
    receipts_until: String,
    provinces: Option<Vec<u32>>,
}

fn read_waves(path: &Path) -> anyhow::Result<Vec<WaveRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let season: SeasonToml =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    season
        .wave
        .into_iter()
        .map(|w| {
            Ok(WaveRow {
                receipts_until: parse_day(&w.receipts_until).with_context(|| {
                    format!("{}: wave {:?} receipts_until", path.display(), w.name)
                })?,
                name: w.name,
                provinces: w.provinces,
            })
        })
        .collect()
}

/// Persian and Arabic-Indic digits to ASCII; anything else unchanged.
pub fn ascii_digits(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{06F0}'..='\u{06F9}' => char::from(b'0' + (c as u32 - 0x06F0) as u8),
            '\u{0660}'..='\u{0669}' => char::from(b'0' + (c as u32 - 0x0660) as u8),
            _ => c,
        })
        .collect()
}

/// Parses a Jalali `yyyy/mm/dd` (any digits) into a comparable day; range checks only.
pub fn parse_day(text: &str) -> anyhow::Result<JalaliDay> {
    let text = ascii_digits(text.trim());
    let mut parts = text.split('/');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("{text:?} is not a yyyy/mm/dd date");
    };
    let (y, m, d): (u16, u8, u8) = (
        y.parse().with_context(|| format!("year in {text:?}"))?,
        m.parse().with_context(|| format!("month in {text:?}"))?,
        d.parse().with_context(|| format!("day in {text:?}"))?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        bail!("{text:?} is not a Jalali date");
    }
    Ok((y, m, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_in_any_digits_and_order_like_the_calendar() {
        assert_eq!(parse_day("1386/01/31").ok(), Some((1386, 1, 31)));
        assert_eq!(parse_day("۱۳۸۶/۲/۵").ok(), Some((1386, 2, 5)));
        assert!(parse_day("1386/13/01").is_err());
        assert!(parse_day("1386-01-01").is_err());
        assert!(parse_day("1386/2/1").ok() > parse_day("1386/01/31").ok());
    }
}
