//! Reading a data set: the catalog from `provinces.csv`, `caravans.csv` and `holders.csv`, and
//! the season from `season.toml` (formats in the README and docs/operations.md); and writing a schedule or season
//! back as TOML.
//!
//! Every refusal is a [`LoadError`] that names the file, the line (1-based; a CSV header is
//! line 1) and the field, so an operator can fix the file without guessing. Columns are found
//! by header name in any order; extra columns are ignored; a UTF-8 byte-order mark is
//! tolerated; fields are trimmed; Persian and Arabic-Indic digits are accepted in numbers and
//! dates.
//!
//! Loading is built for a million holders: one reused [`csv::ByteRecord`], no allocation per
//! row beyond what the catalog itself stores, national IDs and dates parsed by hand.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;

use csv::ByteRecord;
use serde::Deserialize;
use toml::Spanned;

use crate::calendar::{
    JalaliDate, format_duration_ms, format_rfc3339_utc, format_tehran_jalali, parse_duration_ms,
    parse_national_id, parse_tehran_datetime,
};
use crate::catalog::{
    Caravan, Catalog, CatalogBuilder, CityIdx, ProvinceIdx, ReceiptStatus, Route,
};
use crate::season::{Outflow, RoomConfig, Schedule, Season, Stage, Wave};

/// Why a data set was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The content of a file is wrong. Displayed as `FILE line N, field F: MESSAGE`, leaving
    /// out the line or field when unknown.
    #[error("{}", data_error_text(.file, .line, .field, .message))]
    Data {
        /// The file, as the loader was given it (a path or a name).
        file: String,
        /// The 1-based line, if the problem has one (a CSV header is line 1).
        line: Option<u64>,
        /// The column or TOML key, if the problem has one.
        field: Option<String>,
        /// What is wrong, in words.
        message: String,
    },
    /// A file could not be opened or read.
    #[error("{file}: {source}")]
    Io {
        /// The file's path.
        file: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

fn data_error_text(
    file: &str,
    line: &Option<u64>,
    field: &Option<String>,
    message: &str,
) -> String {
    let mut out = file.to_owned();
    if let Some(line) = line {
        out.push_str(&format!(" line {line}"));
    }
    if let Some(field) = field {
        if line.is_some() {
            out.push(',');
        }
        out.push_str(&format!(" field {field}"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

impl LoadError {
    fn data(
        file: &str,
        line: Option<u64>,
        field: Option<&str>,
        message: impl fmt::Display,
    ) -> Self {
        LoadError::Data {
            file: file.to_owned(),
            line,
            field: field.map(str::to_owned),
            message: message.to_string(),
        }
    }
}

/// What a catalog load found, beyond the catalog itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Provinces loaded.
    pub provinces: usize,
    /// Distinct (province, city) pairs named by caravans or holders.
    pub cities: usize,
    /// Caravans loaded.
    pub caravans: usize,
    /// Sum of the caravans' capacities.
    pub seats: u64,
    /// Deposit holders loaded.
    pub holders: usize,
    /// Holders whose city has no caravan: allowed, but they can never find a seat.
    pub holders_without_caravan: usize,
    /// Cities named by holders that have no caravan.
    pub cities_without_caravan: usize,
}

/// Loads the catalog from `provinces.csv`, `caravans.csv` and `holders.csv` in `dir`.
/// Same as [`load_catalog_with_report`] without the report.
pub fn load_catalog(dir: &Path) -> Result<Catalog, LoadError> {
    load_catalog_with_report(dir).map(|(catalog, _)| catalog)
}

/// Loads the catalog from `provinces.csv` (`id,name_en,name_fa`), `caravans.csv`
/// (`id,province_id,city,manager,phone,price_group,route,departure_date,price_rial,capacity`)
/// and `holders.csv`
/// (`national_id,tracking_code,receipt_no,receipt_date,receipt_status,province_id,city`) in
/// `dir`, and reports what it found.
///
/// Refuses, naming file, line and field: a missing column, a duplicate id or national ID, an
/// unknown `province_id`, `route` or `receipt_status`, a capacity that is zero or not a number,
/// a price that is not a number, an invalid Jalali date, an invalid national ID, an empty
/// tracking code, receipt number, caravan id or city, and a `caravans.csv` without caravans.
/// Holders whose city has no caravan are accepted, counted in
/// [`LoadReport::holders_without_caravan`] and logged with `tracing::warn!`.
pub fn load_catalog_with_report(dir: &Path) -> Result<(Catalog, LoadReport), LoadError> {
    let mut builder = CatalogBuilder::new();
    let mut report = LoadReport::default();
    let mut cities = CityCache::default();
    load_provinces(dir, &mut builder, &mut report)?;
    load_caravans(dir, &mut builder, &mut cities, &mut report)?;
    let holders_by_city = load_holders(dir, &mut builder, &mut cities, &mut report)?;
    let catalog = builder.build();
    report.cities = catalog.cities().len();
    for (city, &count) in holders_by_city.iter().enumerate() {
        if count > 0 && catalog.caravans_of_city(CityIdx(city as u32)).is_empty() {
            report.holders_without_caravan += count;
            report.cities_without_caravan += 1;
        }
    }
    if report.holders_without_caravan > 0 {
        tracing::warn!(
            holders = report.holders_without_caravan,
            cities = report.cities_without_caravan,
            "some holders live in a city without any caravan: they can never find a seat"
        );
    }
    tracing::info!(
        provinces = report.provinces,
        cities = report.cities,
        caravans = report.caravans,
        seats = report.seats,
        holders = report.holders,
        "catalog loaded"
    );
    Ok((catalog, report))
}

/// An open CSV file with its columns resolved.
struct CsvInput {
    file: String,
    /// Added to the csv reader's line numbers: it reports lines one too low in files with
    /// CRLF line ends (it counts a record's line before the previous line's `\n`).
    line_offset: u64,
    reader: csv::Reader<BufReader<File>>,
    columns: Vec<usize>,
    size_bytes: u64,
}

impl CsvInput {
    /// Opens `dir/name` and finds each of `required` in the header row.
    fn open(dir: &Path, name: &str, required: &[&str]) -> Result<CsvInput, LoadError> {
        let path = dir.join(name);
        let file = path.display().to_string();
        let handle = File::open(&path).map_err(|source| LoadError::Io {
            file: file.clone(),
            source,
        })?;
        let size_bytes = handle.metadata().map(|m| m.len()).unwrap_or(0);
        let line_offset = u64::from(first_line_ends_with_crlf(&path));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .buffer_capacity(1 << 16)
            .from_reader(BufReader::with_capacity(1 << 16, handle));
        let headers = reader
            .byte_headers()
            .map_err(|e| csv_error(&file, e, 0))?
            .clone();
        let names: Vec<String> = headers
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                let raw = if i == 0 {
                    raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
                } else {
                    raw
                };
                String::from_utf8_lossy(raw).trim().to_owned()
            })
            .collect();
        if names.iter().all(String::is_empty) {
            return Err(LoadError::data(
                &file,
                Some(1),
                None,
                "the header row is missing",
            ));
        }
        let mut columns = Vec::with_capacity(required.len());
        for &column in required {
            let mut found = names
                .iter()
                .enumerate()
                .filter(|(_, n)| n.as_str() == column);
            match (found.next(), found.next()) {
                (Some((i, _)), None) => columns.push(i),
                (Some(_), Some(_)) => {
                    return Err(LoadError::data(
                        &file,
                        Some(1),
                        Some(column),
                        "the column appears twice in the header",
                    ));
                }
                (None, _) => {
                    return Err(LoadError::data(
                        &file,
                        Some(1),
                        Some(column),
                        format!("missing column (the header has: {})", names.join(",")),
                    ));
                }
            }
        }
        Ok(CsvInput {
            file,
            line_offset,
            reader,
            columns,
            size_bytes,
        })
    }

    /// Reads the next record into `record`; returns its line, or `None` at the end.
    fn next(&mut self, record: &mut ByteRecord) -> Result<Option<u64>, LoadError> {
        match self.reader.read_byte_record(record) {
            Ok(true) => Ok(Some(
                record.position().map_or(0, |p| p.line()) + self.line_offset,
            )),
            Ok(false) => Ok(None),
            Err(e) => Err(csv_error(&self.file, e, self.line_offset)),
        }
    }
}

/// Whether the file's first line ends with CRLF (it decides how csv's line numbers read).
fn first_line_ends_with_crlf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4096];
    let Ok(n) = File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    head[..n]
        .iter()
        .position(|&b| b == b'\n')
        .is_some_and(|i| i > 0 && head[i - 1] == b'\r')
}

fn csv_error(file: &str, error: csv::Error, line_offset: u64) -> LoadError {
    let line = error
        .position()
        .map(|p| p.line() + if p.line() > 1 { line_offset } else { 0 });
    match error.into_kind() {
        csv::ErrorKind::Io(source) => LoadError::Io {
            file: file.to_owned(),
            source,
        },
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => LoadError::data(
            file,
            line,
            None,
            format!("the row has {len} fields, the header has {expected_len}"),
        ),
        other => LoadError::data(file, line, None, format!("{other:?}")),
    }
}

/// One field of a row, checked and parsed; errors carry the field's name.
struct Row<'r> {
    file: &'r str,
    line: u64,
    record: &'r ByteRecord,
}

impl<'r> Row<'r> {
    fn error(&self, field: &str, message: impl fmt::Display) -> LoadError {
        LoadError::data(self.file, Some(self.line), Some(field), message)
    }

    /// The trimmed text of column `index` (named `field` in errors).
    fn text(&self, index: usize, field: &str) -> Result<&'r str, LoadError> {
        let raw = self.record.get(index).unwrap_or(b"");
        std::str::from_utf8(raw)
            .map(str::trim)
            .map_err(|_| self.error(field, "not valid UTF-8"))
    }

    /// Like [`Row::text`], but refuses an empty field.
    fn required(&self, index: usize, field: &str) -> Result<&'r str, LoadError> {
        let text = self.text(index, field)?;
        if text.is_empty() {
            return Err(self.error(field, "must not be empty"));
        }
        Ok(text)
    }

    /// A whole number (Persian digits accepted).
    fn number<T: FromStr>(&self, index: usize, field: &str) -> Result<T, LoadError> {
        let text = self.text(index, field)?;
        let normalized = crate::calendar::normalize_digits(text);
        if normalized.is_empty() || !normalized.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(field, format!("expected a whole number, found {text:?}")));
        }
        normalized
            .parse::<T>()
            .map_err(|_| self.error(field, format!("{text} is too large")))
    }

    /// A Jalali date as a day number.
    fn date(&self, index: usize, field: &str) -> Result<i32, LoadError> {
        let text = self.text(index, field)?;
        JalaliDate::parse(text)
            .map(JalaliDate::to_day_number)
            .map_err(|e| self.error(field, e))
    }

    /// A `province_id` that the catalog lists.
    fn province(
        &self,
        index: usize,
        field: &str,
        builder: &CatalogBuilder,
    ) -> Result<ProvinceIdx, LoadError> {
        let id: u32 = self.number(index, field)?;
        builder
            .province_by_id(id)
            .ok_or_else(|| self.error(field, format!("unknown province id {id}")))
    }
}

/// Interns cities without allocating for names already seen.
#[derive(Default)]
struct CityCache {
    by_province: Vec<Vec<(Box<str>, CityIdx)>>,
}

impl CityCache {
    fn get(&mut self, builder: &mut CatalogBuilder, province: ProvinceIdx, name: &str) -> CityIdx {
        let slot = usize::from(province);
        if self.by_province.len() <= slot {
            self.by_province.resize_with(slot + 1, Vec::new);
        }
        let list = &mut self.by_province[slot];
        if let Some((_, idx)) = list.iter().find(|(known, _)| &**known == name) {
            return *idx;
        }
        let idx = builder.city(province, name);
        list.push((name.into(), idx));
        idx
    }
}

fn load_provinces(
    dir: &Path,
    builder: &mut CatalogBuilder,
    report: &mut LoadReport,
) -> Result<(), LoadError> {
    const FIELDS: [&str; 3] = ["id", "name_en", "name_fa"];
    let mut input = CsvInput::open(dir, "provinces.csv", &FIELDS)?;
    let [id_col, en_col, fa_col] = [input.columns[0], input.columns[1], input.columns[2]];
    let mut record = ByteRecord::new();
    while let Some(line) = input.next(&mut record)? {
        let row = Row {
            file: &input.file,
            line,
            record: &record,
        };
        let id: u32 = row.number(id_col, "id")?;
        let name_en = row.required(en_col, "name_en")?;
        let name_fa = row.text(fa_col, "name_fa")?;
        builder
            .add_province(id, name_en, name_fa)
            .map_err(|e| row.error("id", e))?;
        report.provinces += 1;
    }
    if report.provinces == 0 {
        return Err(LoadError::data(
            &input.file,
            None,
            None,
            "no provinces are listed",
        ));
    }
    Ok(())
}

fn load_caravans(
    dir: &Path,
    builder: &mut CatalogBuilder,
    cities: &mut CityCache,
    report: &mut LoadReport,
) -> Result<(), LoadError> {
    const FIELDS: [&str; 10] = [
        "id",
        "province_id",
        "city",
        "manager",
        "phone",
        "price_group",
        "route",
        "departure_date",
        "price_rial",
        "capacity",
    ];
    let mut input = CsvInput::open(dir, "caravans.csv", &FIELDS)?;
    let c = input.columns.clone();
    let mut record = ByteRecord::new();
    while let Some(line) = input.next(&mut record)? {
        let row = Row {
            file: &input.file,
            line,
            record: &record,
        };
        let id = row.required(c[0], "id")?;
        let province = row.province(c[1], "province_id", builder)?;
        let city_name = row.required(c[2], "city")?;
        let manager = row.text(c[3], "manager")?;
        let phone = row.text(c[4], "phone")?;
        let price_group = row.required(c[5], "price_group")?;
        let route_text = row.text(c[6], "route")?;
        let route = Route::parse(route_text).ok_or_else(|| {
            row.error(
                "route",
                format!("unknown route {route_text:?} (expected medina_first or medina_second)"),
            )
        })?;
        let departure_day = row.date(c[7], "departure_date")?;
        let price_rial: u64 = row.number(c[8], "price_rial")?;
        let capacity: u32 = row.number(c[9], "capacity")?;
        if capacity == 0 {
            return Err(row.error("capacity", "must be at least 1"));
        }
        let city = cities.get(builder, province, city_name);
        builder
            .add_caravan(Caravan {
                id: id.to_owned(),
                province,
                city,
                manager: manager.to_owned(),
                phone: phone.to_owned(),
                price_group: price_group.to_owned(),
                route,
                departure_day,
                price_rial,
                capacity,
            })
            .map_err(|e| row.error("id", e))?;
        report.caravans += 1;
        report.seats += u64::from(capacity);
    }
    if report.caravans == 0 {
        return Err(LoadError::data(
            &input.file,
            None,
            None,
            "no caravans are listed",
        ));
    }
    Ok(())
}

/// Loads the holders; returns the number of holders per city.
fn load_holders(
    dir: &Path,
    builder: &mut CatalogBuilder,
    cities: &mut CityCache,
    report: &mut LoadReport,
) -> Result<Vec<usize>, LoadError> {
    const FIELDS: [&str; 7] = [
        "national_id",
        "tracking_code",
        "receipt_no",
        "receipt_date",
        "receipt_status",
        "province_id",
        "city",
    ];
    /// A generated row is about 60 bytes; erring low only costs a regrowth.
    const BYTES_PER_ROW_ESTIMATE: u64 = 56;
    let mut input = CsvInput::open(dir, "holders.csv", &FIELDS)?;
    let c = input.columns.clone();
    let estimate = (input.size_bytes / BYTES_PER_ROW_ESTIMATE).min(50_000_000) as usize;
    builder.reserve_holders(estimate);
    let mut per_city: Vec<usize> = Vec::new();
    let mut record = ByteRecord::new();
    while let Some(line) = input.next(&mut record)? {
        let row = Row {
            file: &input.file,
            line,
            record: &record,
        };
        let national_id = parse_national_id(row.text(c[0], "national_id")?)
            .map_err(|e| row.error("national_id", e))?;
        let tracking_code = row.required(c[1], "tracking_code")?;
        let receipt_no = row.required(c[2], "receipt_no")?;
        let receipt_day = row.date(c[3], "receipt_date")?;
        let status_text = row.text(c[4], "receipt_status")?;
        let status = ReceiptStatus::parse(status_text).ok_or_else(|| {
            row.error(
                "receipt_status",
                format!("unknown status {status_text:?} (expected valid or needs_conversion)"),
            )
        })?;
        let province = row.province(c[5], "province_id", builder)?;
        let city_name = row.required(c[6], "city")?;
        let city = cities.get(builder, province, city_name);
        builder
            .add_holder(
                national_id,
                tracking_code,
                receipt_no,
                receipt_day,
                status,
                province,
                city,
            )
            .map_err(|e| row.error("national_id", e))?;
        let slot = city.index();
        if per_city.len() <= slot {
            per_city.resize(slot + 1, 0);
        }
        per_city[slot] += 1;
        report.holders += 1;
    }
    Ok(per_city)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeasonFile {
    #[serde(default)]
    allow_wider_cutoff_first: bool,
    #[serde(default)]
    wave: Vec<WaveFile>,
    stages: Option<StagesFile>,
    waitlist: Option<WaitlistFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaveFile {
    name: Spanned<String>,
    receipts_until: Spanned<String>,
    opens_at: Spanned<String>,
    provinces: Option<Spanned<Vec<u32>>>,
    #[serde(default)]
    admits_earlier_receipts: bool,
    room: Option<RoomFile>,
}

/// `[wave.room]`: the wave's waiting room.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomFile {
    enabled: Option<bool>,
    outflow: Option<Spanned<toml::Value>>,
    pass_lifetime: Option<Spanned<String>>,
    pre_queue: Option<Spanned<String>>,
}

/// The most places a fixed outflow may admit per second.
pub const ROOM_OUTFLOW_PER_SECOND_MAX: f64 = 1_000_000.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StagesFile {
    documents: Option<Spanned<String>>,
    first_payment: Option<Spanned<String>>,
    medical: Option<Spanned<String>>,
    final_payment: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitlistFile {
    offer_deadline: Option<Spanned<String>>,
}

/// Reads `season.toml` at `path` and checks it against `catalog`; see [`parse_season`].
pub fn load_season(path: &Path, catalog: &Catalog) -> Result<Season, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        file: file.clone(),
        source,
    })?;
    parse_season(&text, &file, catalog)
}

/// Parses a `season.toml` text (`file_name` is used in errors) and checks it against
/// `catalog`.
///
/// `[[wave]]` tables need `name` (unique), `receipts_until` (a Jalali date, inclusive) and
/// `opens_at` (Tehran Jalali wall clock or RFC 3339, see
/// [`parse_tehran_datetime`]), and may list `provinces` (public ids the catalog must know) and
/// set `admits_earlier_receipts` (default false). A schedule where, in some province, a wave
/// with a wider cutoff opens strictly before one with a narrower cutoff is refused (at the
/// wider wave's `opens_at`, see [`Schedule::check_order`]) unless the top-level key
/// `allow_wider_cutoff_first = true` comes before the first `[[wave]]`.
/// `[stages]` may give any of `documents`, `first_payment`, `medical`, `final_payment` as
/// durations (see [`parse_duration_ms`]); they are kept in that order and absent ones are
/// skipped; without `[stages]` the defaults of [`Season::default`] apply. `[waitlist]
/// offer_deadline` defaults to 24 hours. Unknown keys are refused. Errors name the file, the
/// line and the key.
pub fn parse_season(text: &str, file_name: &str, catalog: &Catalog) -> Result<Season, LoadError> {
    let parsed: SeasonFile = toml::from_str(text).map_err(|e| toml_error(text, file_name, &e))?;
    let at = |span: std::ops::Range<usize>, key: &str, message: String| {
        LoadError::data(
            file_name,
            Some(line_of(text, span.start)),
            Some(key),
            message,
        )
    };
    let defaults = Season::default();
    let mut waves = Vec::with_capacity(parsed.wave.len());
    let mut rooms = Vec::new();
    let mut names = HashSet::new();
    for wave in &parsed.wave {
        let name = wave.name.get_ref().trim();
        if name.is_empty() {
            return Err(at(wave.name.span(), "name", "must not be empty".to_owned()));
        }
        if !names.insert(name.to_owned()) {
            return Err(at(
                wave.name.span(),
                "name",
                format!("wave {name:?} is listed twice"),
            ));
        }
        let receipts_until_day = JalaliDate::parse(wave.receipts_until.get_ref())
            .map_err(|e| at(wave.receipts_until.span(), "receipts_until", e.to_string()))?
            .to_day_number();
        let opens_at_ms = parse_tehran_datetime(wave.opens_at.get_ref())
            .map_err(|e| at(wave.opens_at.span(), "opens_at", e.to_string()))?;
        let built = Wave {
            name: name.to_owned(),
            receipts_until_day,
            opens_at_ms,
            provinces: wave.provinces.as_ref().map(|p| p.get_ref().clone()),
            admits_earlier_receipts: wave.admits_earlier_receipts,
        };
        if let Some(provinces) = &wave.provinces {
            let single = Schedule {
                waves: vec![built.clone()],
            };
            single
                .validate(catalog)
                .map_err(|e| at(provinces.span(), "provinces", e))?;
        }
        if let Some(room) = &wave.room {
            rooms.push((name.to_owned(), parse_room(room, &at)?));
        }
        waves.push(built);
    }
    if waves.is_empty() {
        tracing::warn!(
            file = file_name,
            "season has no [[wave]]: registration never opens"
        );
    }
    let stages = match &parsed.stages {
        None => defaults.stages.clone(),
        Some(file) => {
            let given = [
                (Stage::Documents, &file.documents),
                (Stage::FirstPayment, &file.first_payment),
                (Stage::Medical, &file.medical),
                (Stage::FinalPayment, &file.final_payment),
            ];
            let mut stages = Vec::with_capacity(given.len());
            for (stage, value) in given {
                if let Some(value) = value {
                    let ms = parse_duration_ms(value.get_ref())
                        .map_err(|e| at(value.span(), stage.as_str(), e.to_string()))?;
                    stages.push((stage, ms));
                }
            }
            stages
        }
    };
    let offer_deadline_ms = match parsed
        .waitlist
        .as_ref()
        .and_then(|w| w.offer_deadline.as_ref())
    {
        None => defaults.offer_deadline_ms,
        Some(value) => parse_duration_ms(value.get_ref())
            .map_err(|e| at(value.span(), "offer_deadline", e.to_string()))?,
    };
    let schedule = Schedule { waves };
    schedule
        .validate(catalog)
        .map_err(|e| LoadError::data(file_name, None, Some("provinces"), e))?;
    if !parsed.allow_wider_cutoff_first
        && let Err(e) = schedule.check_order()
    {
        let span = parsed.wave[e.wider].opens_at.span();
        return Err(at(span, "opens_at", e.message));
    }
    Ok(Season {
        schedule,
        stages,
        offer_deadline_ms,
        rooms,
    })
}

/// A wave's `[wave.room]`: `enabled` (default true), `outflow` (places per second, a
/// positive number up to [`ROOM_OUTFLOW_PER_SECOND_MAX`], or `"auto"`, the default),
/// `pass_lifetime` (a duration of at least one second, default 10m) and `pre_queue` (how long
/// before the opening holders may join, default 30m). `at` makes an error at a key's span.
fn parse_room(
    room: &RoomFile,
    at: &dyn Fn(std::ops::Range<usize>, &str, String) -> LoadError,
) -> Result<RoomConfig, LoadError> {
    let defaults = RoomConfig::default();
    let outflow = match &room.outflow {
        None => defaults.outflow,
        Some(value) => {
            let rate = match value.get_ref() {
                toml::Value::String(text) if text.trim() == "auto" => None,
                toml::Value::Integer(n) => Some(*n as f64),
                toml::Value::Float(x) => Some(*x),
                _ => {
                    return Err(at(
                        value.span(),
                        "outflow",
                        "must be a number of places per second or \"auto\"".to_owned(),
                    ));
                }
            };
            match rate {
                None => Outflow::Auto,
                Some(rate)
                    if rate.is_finite() && rate > 0.0 && rate <= ROOM_OUTFLOW_PER_SECOND_MAX =>
                {
                    Outflow::PerSecond(rate)
                }
                Some(rate) => {
                    return Err(at(
                        value.span(),
                        "outflow",
                        format!(
                            "{rate} places per second: must be above 0 and at most \
                             {ROOM_OUTFLOW_PER_SECOND_MAX}"
                        ),
                    ));
                }
            }
        }
    };
    let duration = |value: &Option<Spanned<String>>, key: &str, default: i64, min: i64| {
        let Some(value) = value else {
            return Ok(default);
        };
        let ms =
            parse_duration_ms(value.get_ref()).map_err(|e| at(value.span(), key, e.to_string()))?;
        if ms < min {
            return Err(at(
                value.span(),
                key,
                format!("{ms} ms is too short: at least {min} ms"),
            ));
        }
        Ok(ms)
    };
    Ok(RoomConfig {
        enabled: room.enabled.unwrap_or(true),
        outflow,
        pass_lifetime_ms: duration(
            &room.pass_lifetime,
            "pass_lifetime",
            defaults.pass_lifetime_ms,
            1_000,
        )?,
        pre_queue_ms: duration(&room.pre_queue, "pre_queue", defaults.pre_queue_ms, 0)?,
    })
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> u64 {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u64
}

fn toml_error(text: &str, file_name: &str, error: &toml::de::Error) -> LoadError {
    let message = error.message().trim().to_owned();
    let span = error.span();
    let line = span.as_ref().map(|s| line_of(text, s.start));
    let key = key_in_message(&message).or_else(|| {
        let span = span.as_ref()?;
        let start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line_text = text[start..].lines().next().unwrap_or("").trim();
        if let Some(header) = line_text.strip_prefix('[') {
            Some(
                header
                    .trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_owned(),
            )
        } else {
            let (key, _) = line_text.split_once('=')?;
            Some(key.trim().to_owned())
        }
    });
    LoadError::Data {
        file: file_name.to_owned(),
        line,
        field: key.filter(|k| !k.is_empty()),
        message,
    }
}

/// The key named in serde's "unknown field `x`" or "missing field `x`" messages.
fn key_in_message(message: &str) -> Option<String> {
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(at) = message.find(prefix) {
            let rest = &message[at + prefix.len()..];
            let end = rest.find('`')?;
            return Some(rest[..end].to_owned());
        }
    }
    None
}

/// Writes `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes the schedule as `[[wave]]` tables that [`parse_season`] reads back to the same
/// waves: `receipts_until` as a Jalali date and `opens_at` as a Tehran Jalali wall clock, or as
/// an RFC 3339 instant (with the wall clock in a comment) when the wall clock would not name
/// the same instant (sub-minute precision, or the second pass through a daylight-saving fold).
/// A cutoff day outside the supported Jalali years is written as a value the parser refuses,
/// with a comment saying why, rather than silently as another day.
/// A schedule that opens a wider cutoff first gets `allow_wider_cutoff_first = true` before
/// its waves, and a wave that admits earlier receipts says so.
pub fn schedule_to_toml(schedule: &Schedule) -> String {
    waves_to_toml(schedule, &[])
}

/// The `[[wave]]` tables of `schedule`, each followed by its `[wave.room]` from `rooms`.
fn waves_to_toml(schedule: &Schedule, rooms: &[(String, RoomConfig)]) -> String {
    let mut out = String::new();
    if schedule.check_order().is_err() {
        out.push_str("allow_wider_cutoff_first = true\n\n");
    }
    for (i, wave) in schedule.waves.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("[[wave]]\n");
        out.push_str(&format!("name = {}\n", toml_string(&wave.name)));
        match JalaliDate::from_day_number(wave.receipts_until_day) {
            Ok(date) => out.push_str(&format!("receipts_until = \"{date}\"\n")),
            Err(e) => out.push_str(&format!(
                "# {e}\nreceipts_until = \"day {}\"\n",
                wave.receipts_until_day
            )),
        }
        let wall_clock = format_tehran_jalali(wave.opens_at_ms);
        if parse_tehran_datetime(&wall_clock) == Ok(wave.opens_at_ms) {
            out.push_str(&format!("opens_at = \"{wall_clock}\"\n"));
        } else {
            out.push_str(&format!(
                "opens_at = \"{}\"   # {wall_clock} Tehran\n",
                format_rfc3339_utc(wave.opens_at_ms)
            ));
        }
        if let Some(ids) = &wave.provinces {
            let list: Vec<String> = ids.iter().map(u32::to_string).collect();
            out.push_str(&format!("provinces = [{}]\n", list.join(", ")));
        }
        if wave.admits_earlier_receipts {
            out.push_str("admits_earlier_receipts = true\n");
        }
        if let Some((_, room)) = rooms.iter().find(|(name, _)| *name == wave.name) {
            out.push_str(&room_to_toml(room));
        }
    }
    out
}

/// A `[wave.room]` table that [`parse_room`] reads back to `room`.
fn room_to_toml(room: &RoomConfig) -> String {
    let outflow = match room.outflow {
        Outflow::Auto => "\"auto\"".to_owned(),
        Outflow::PerSecond(rate) => format!("{rate:?}"),
    };
    format!(
        "[wave.room]\nenabled = {}\noutflow = {outflow}\npass_lifetime = \"{}\"\npre_queue = \"{}\"\n",
        room.enabled,
        format_duration_ms(room.pass_lifetime_ms),
        format_duration_ms(room.pre_queue_ms)
    )
}

/// Writes a whole season as a commented `season.toml` that [`parse_season`] reads back to the
/// same season: the waves (see [`schedule_to_toml`]), `[stages]` in order and `[waitlist]`.
pub fn season_to_toml(season: &Season) -> String {
    let mut out = String::from(
        "# Miqat season: registration waves, stage deadlines and the waiting-list offer deadline.\n\
         #\n\
         # Each [[wave]] is one priority tier:\n\
         #   name            unique name of the wave\n\
         #   receipts_until  Jalali date (yyyy/mm/dd), inclusive: receipts deposited on or before\n\
         #                   it are called by this wave\n\
         #   opens_at        Tehran wall clock in Jalali (yyyy/mm/dd HH:MM) or an RFC 3339 instant\n\
         #   provinces       optional list of province ids opening at this time (default: all)\n\
         #   admits_earlier_receipts\n\
         #                   optional, default false: also admit receipts an earlier-cutoff\n\
         #                   wave calls, even before that wave opens\n\
         #\n\
         # A receipt is called by the first wave (of its province) whose cutoff covers it and\n\
         # registers once that wave opens. A wave with a wider cutoff may not open before one\n\
         # with a narrower cutoff unless `allow_wider_cutoff_first = true` comes first.\n\
         #\n\
         # A wave's optional [wave.room] puts a waiting room in front of it (docs/waiting-room.md):\n\
         #   enabled         default true\n\
         #   outflow         places admitted per second, or \"auto\" (default): as fast as\n\
         #                   reservations are decided without shedding\n\
         #   pass_lifetime   how long an admitted holder's pass is valid (default 10m)\n\
         #   pre_queue       how long before the opening holders may join (default 30m); they\n\
         #                   are drawn into a random order at the opening\n\n",
    );
    out.push_str(&waves_to_toml(&season.schedule, &season.rooms));
    out.push_str(
        "\n# Deadline of each stage of a hold, counted from the stage's start (units d, h, m, s,\n\
         # ms). A stage left out is skipped; the stages always run in this order.\n\
         [stages]\n",
    );
    for (stage, ms) in &season.stages {
        out.push_str(&format!(
            "{} = \"{}\"\n",
            stage.as_str(),
            format_duration_ms(*ms)
        ));
    }
    out.push_str(
        "\n# How long a seat offered to the head of a province's waiting list stays open.\n\
         [waitlist]\n",
    );
    out.push_str(&format!(
        "offer_deadline = \"{}\"\n",
        format_duration_ms(season.offer_deadline_ms)
    ));
    out
}
