//! The catalog's binary cache: the loaded catalog written to one checked, versioned file, so a
//! restart does not parse the CSV files again.
//!
//! The cache is used only when the SHA-256 of the three CSV files (`provinces.csv`,
//! `caravans.csv`, `holders.csv`) equals the one it was written from; their sizes and
//! modification times are a cheap first check, but the hash decides. A cache that is missing,
//! stale, of another version, damaged (its checksum fails) or that does not decode into a
//! valid catalog is ignored with a log line, and the CSV files are loaded and the cache
//! rewritten. Decoding checks every index, text span and uniqueness, so a cache that passed
//! its checksums still cannot make an inconsistent catalog.
//!
//! File layout (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `MIQATCAT` |
//! | 4 | format version ([`CACHE_VERSION`]) |
//! | 3 x (8 + 8) | size and modification time (ns since 1970, 0 if unknown) of each CSV file |
//! | 32 | SHA-256 of the CSV files (each as its name, its length, its bytes) |
//! | 8 | body length |
//! | 4 | CRC-32C of the body |
//! | 4 | CRC-32C of everything above |
//! | body | provinces, cities, caravans, then holders (below) |
//!
//! The body: provinces (`u32` count; id, English name, Persian name), cities (count; province
//! index, name), caravans (count; id, province, city, manager, phone, price group, route,
//! departure day, price, capacity), holders (count; the text arena as a `u64` length and
//! UTF-8 bytes; then per holder national id, receipt day, province, status, city and the
//! tracking code's and receipt number's spans in the arena), and the catalog's fingerprint.
//! Strings are a `u32` length and UTF-8 bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::{
    Caravan, Catalog, CatalogBuilder, CityIdx, HolderIdx, HolderRow, ProvinceIdx, ReceiptStatus,
    Route, TextSpan,
};
use crate::load::{LoadError, LoadReport, load_catalog_with_report};
use crate::record::{Reader, put_i32, put_u16, put_u32, put_u64};

/// The cache file format version; a file of any other version is ignored and rewritten.
pub const CACHE_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"MIQATCAT";
/// The CSV files the catalog is built from, in the order they are hashed.
const CSV_FILES: [&str; 3] = ["provinces.csv", "caravans.csv", "holders.csv"];
const HEADER_BYTES: usize = 8 + 4 + CSV_FILES.len() * 16 + 32 + 8 + 4 + 4;

/// How [`load_catalog_cached`] got the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// From the cache: the CSV files' hash matched.
    Used,
    /// From the CSV files, because of `reason` (no cache, stale, damaged, ...); the cache was
    /// rewritten unless `written` is false (the folder is read-only, or the CSV files changed
    /// while they were loaded).
    Rebuilt {
        /// Why the cache was not used.
        reason: String,
        /// Whether a fresh cache file was written.
        written: bool,
    },
}

/// Size and modification time of one CSV file: the quick check before the hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: u64,
}

/// Loads the catalog of `dir` (as [`load_catalog_with_report`]) through the cache file at
/// `cache`: from the cache when it matches the CSV files, else from the CSV files, then
/// rewriting the cache. Errors are the CSV loader's; a cache problem is never an error.
pub fn load_catalog_cached(
    dir: &Path,
    cache: &Path,
) -> Result<(Catalog, LoadReport, CacheUse), LoadError> {
    let stamps = match stamps(dir) {
        Ok(stamps) => stamps,
        // A CSV file is missing or unreadable: the CSV loader names the problem.
        Err(_) => {
            let (catalog, report) = load_catalog_with_report(dir)?;
            let reason = "a CSV file could not be read for its hash".to_owned();
            return Ok((catalog, report, rebuilt(reason, false)));
        }
    };
    let reason = match read_cache(dir, cache, &stamps) {
        Ok(catalog) => {
            let report = report_of(&catalog);
            if report.holders_without_caravan > 0 {
                tracing::warn!(
                    holders = report.holders_without_caravan,
                    cities = report.cities_without_caravan,
                    "some holders live in a city without any caravan: they can never find a seat"
                );
            }
            tracing::info!(cache = %cache.display(), "catalog loaded from its cache");
            return Ok((catalog, report, CacheUse::Used));
        }
        Err(reason) => reason,
    };
    tracing::info!(cache = %cache.display(), %reason, "catalog cache not used; loading the CSV files");
    let before = hash_csv(dir);
    let (catalog, report) = load_catalog_with_report(dir)?;
    let after = hash_csv(dir);
    let written = match (before, after, self::stamps(dir)) {
        (Ok(before), Ok(after), Ok(now)) if before == after && now == stamps => {
            match write_cache(cache, &catalog, &stamps, &before) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(cache = %cache.display(), error = %e, "catalog cache not written");
                    false
                }
            }
        }
        _ => {
            tracing::warn!(
                "the CSV files changed while they were loaded; catalog cache not written"
            );
            false
        }
    };
    Ok((catalog, report, rebuilt(reason, written)))
}

fn rebuilt(reason: String, written: bool) -> CacheUse {
    CacheUse::Rebuilt { reason, written }
}

fn stamps(dir: &Path) -> io::Result<[Stamp; 3]> {
    let mut out = [Stamp {
        size: 0,
        mtime_ns: 0,
    }; 3];
    for (stamp, name) in out.iter_mut().zip(CSV_FILES) {
        let meta = std::fs::metadata(dir.join(name))?;
        stamp.size = meta.len();
        stamp.mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(out)
}

/// SHA-256 over each CSV file's name, length and bytes, read in blocks.
fn hash_csv(dir: &Path) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 18];
    for name in CSV_FILES {
        let mut file = File::open(dir.join(name))?;
        let len = file.metadata()?.len();
        hasher.update(name.as_bytes());
        hasher.update(len.to_le_bytes());
        let mut read = 0u64;
        loop {
            let n = file.read(&mut block)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            hasher.update(&block[..n]);
        }
        if read != len {
            return Err(io::Error::other(format!(
                "{name} changed while it was hashed"
            )));
        }
    }
    Ok(hasher.finalize().into())
}

/// The catalog from the cache file, or why it cannot be used. The CSV files are hashed on a
/// second thread while the cache is read and decoded.
fn read_cache(dir: &Path, cache: &Path, stamps: &[Stamp; 3]) -> Result<Catalog, String> {
    let mut file = File::open(cache).map_err(|e| format!("no cache ({e})"))?;
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact(&mut header)
        .map_err(|e| format!("cache header unreadable ({e})"))?;
    let crc_at = HEADER_BYTES - 4;
    let header_crc = u32::from_le_bytes([
        header[crc_at],
        header[crc_at + 1],
        header[crc_at + 2],
        header[crc_at + 3],
    ]);
    if &header[..8] != MAGIC {
        return Err("not a catalog cache file".into());
    }
    if crc32c::crc32c(&header[..crc_at]) != header_crc {
        return Err("cache header checksum fails".into());
    }
    let mut r = Reader::new(&header[8..crc_at]);
    let version = r.u32()?;
    if version != CACHE_VERSION {
        return Err(format!(
            "cache format version {version}, this build reads {CACHE_VERSION}"
        ));
    }
    for (stamp, name) in stamps.iter().zip(CSV_FILES) {
        let cached = Stamp {
            size: r.u64()?,
            mtime_ns: r.u64()?,
        };
        if cached != *stamp {
            return Err(format!("{name} changed since the cache was written"));
        }
    }
    let hash: [u8; 32] = r.take(32)?.try_into().map_err(|_| "hash length")?;
    let body_len = usize::try_from(r.u64()?).map_err(|_| "body too long")?;
    let body_crc = r.u32()?;
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| hash_csv(dir));
        let decoded = read_body(&mut file, body_len, body_crc);
        let csv_hash = hashing
            .join()
            .map_err(|_| "hashing the CSV files panicked".to_owned())?
            .map_err(|e| format!("CSV files unreadable for their hash ({e})"))?;
        if csv_hash != hash {
            return Err("the CSV files' hash differs from the cache's".to_owned());
        }
        decoded
    })
}

fn read_body(file: &mut File, body_len: usize, body_crc: u32) -> Result<Catalog, String> {
    let on_disk = file.metadata().map_err(|e| e.to_string())?.len();
    if on_disk != (HEADER_BYTES + body_len) as u64 {
        return Err(format!(
            "cache is {on_disk} bytes, its header says {}",
            HEADER_BYTES + body_len
        ));
    }
    let mut body = vec![0u8; body_len];
    file.read_exact(&mut body)
        .map_err(|e| format!("cache body unreadable ({e})"))?;
    if crc32c::crc32c(&body) != body_crc {
        return Err("cache body checksum fails".into());
    }
    decode(&body).map_err(|e| format!("cache body does not decode: {e}"))
}

/// Writes the cache beside its final name and renames it into place, so a reader never sees
/// half a file.
fn write_cache(
    cache: &Path,
    catalog: &Catalog,
    stamps: &[Stamp; 3],
    hash: &[u8; 32],
) -> io::Result<()> {
    let mut body = Vec::with_capacity(catalog.holders.len() * 48 + (1 << 16));
    encode(catalog, &mut body);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    put_u32(&mut header, CACHE_VERSION);
    for stamp in stamps {
        put_u64(&mut header, stamp.size);
        put_u64(&mut header, stamp.mtime_ns);
    }
    header.extend_from_slice(hash);
    put_u64(&mut header, body.len() as u64);
    put_u32(&mut header, crc32c::crc32c(&body));
    let header_crc = crc32c::crc32c(&header);
    put_u32(&mut header, header_crc);
    debug_assert_eq!(header.len(), HEADER_BYTES);
    if let Some(parent) = cache.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut temporary = PathBuf::from(cache);
    temporary.as_mut_os_string().push(".tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(&header)?;
    file.write_all(&body)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&temporary, cache)
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_u32(out, text.len() as u32);
    out.extend_from_slice(text.as_bytes());
}

fn get_str<'a>(r: &mut Reader<'a>) -> Result<&'a str, String> {
    let len = r.u32()? as usize;
    std::str::from_utf8(r.take(len)?).map_err(|e| format!("text is not UTF-8: {e}"))
}

fn encode(c: &Catalog, out: &mut Vec<u8>) {
    put_u32(out, c.provinces.len() as u32);
    for p in &c.provinces {
        put_u32(out, p.id);
        put_str(out, &p.name_en);
        put_str(out, &p.name_fa);
    }
    put_u32(out, c.cities.len() as u32);
    for city in &c.cities {
        put_u16(out, city.province.0);
        put_str(out, &city.name);
    }
    put_u32(out, c.caravans.len() as u32);
    for v in &c.caravans {
        put_str(out, &v.id);
        put_u16(out, v.province.0);
        put_u32(out, v.city.0);
        put_str(out, &v.manager);
        put_str(out, &v.phone);
        put_str(out, &v.price_group);
        out.push(match v.route {
            Route::MedinaFirst => 0,
            Route::MedinaSecond => 1,
        });
        put_i32(out, v.departure_day);
        put_u64(out, v.price_rial);
        put_u32(out, v.capacity);
    }
    put_u32(out, c.holders.len() as u32);
    put_u64(out, c.text.len() as u64);
    out.extend_from_slice(c.text.as_bytes());
    for row in &c.holders {
        put_u64(out, row.national_id);
        put_i32(out, row.receipt_day);
        put_u16(out, row.province.0);
        out.push(match row.status {
            ReceiptStatus::Valid => 0,
            ReceiptStatus::NeedsConversion => 1,
        });
        put_u32(out, row.city.0);
        put_u32(out, row.tracking_code.start);
        put_u32(out, row.tracking_code.len);
        put_u32(out, row.receipt_no.start);
        put_u32(out, row.receipt_no.len);
    }
    put_u64(out, c.fingerprint);
}

/// Rebuilds the catalog: provinces, cities and caravans through [`CatalogBuilder`] (the CSV
/// loader's checks); holders row by row, each index, text span and national ID checked.
fn decode(body: &[u8]) -> Result<Catalog, String> {
    let mut r = Reader::new(body);
    let mut b = CatalogBuilder::new();
    let provinces = r.u32()?;
    for _ in 0..provinces {
        let id = r.u32()?;
        let name_en = get_str(&mut r)?;
        let name_fa = get_str(&mut r)?;
        b.add_province(id, name_en, name_fa)?;
    }
    let cities = r.u32()?;
    for expected in 0..cities {
        let province = ProvinceIdx(r.u16()?);
        if province.index() >= b.catalog.provinces.len() {
            return Err(format!("city {expected} of unknown province {province}"));
        }
        let name = get_str(&mut r)?;
        if b.city(province, name) != CityIdx(expected) {
            return Err(format!("city {expected} listed twice"));
        }
    }
    let caravans = r.u32()?;
    for _ in 0..caravans {
        let id = get_str(&mut r)?.to_owned();
        let province = ProvinceIdx(r.u16()?);
        let city = CityIdx(r.u32()?);
        let manager = get_str(&mut r)?.to_owned();
        let phone = get_str(&mut r)?.to_owned();
        let price_group = get_str(&mut r)?.to_owned();
        let route = match r.u8()? {
            0 => Route::MedinaFirst,
            1 => Route::MedinaSecond,
            code => return Err(format!("unknown route code {code}")),
        };
        b.add_caravan(Caravan {
            id,
            province,
            city,
            manager,
            phone,
            price_group,
            route,
            departure_day: r.i32()?,
            price_rial: r.u64()?,
            capacity: r.u32()?,
        })?;
    }
    let holders = r.u32()? as usize;
    let text_len = usize::try_from(r.u64()?).map_err(|_| "text too long")?;
    let text = std::str::from_utf8(r.take(text_len)?)
        .map_err(|e| format!("holder text is not UTF-8: {e}"))?;
    let rows = r.take(
        holders
            .checked_mul(HOLDER_ROW_BYTES)
            .ok_or("too many holders")?,
    )?;
    let fingerprint = r.u64()?;
    r.finish()?;
    let mut c = b.catalog;
    c.text = text.to_owned();
    c.holders.reserve_exact(holders);
    c.holder_by_national_id.reserve(holders);
    for (at, row) in rows.chunks_exact(HOLDER_ROW_BYTES).enumerate() {
        let row = holder_row(&c, row, at)?;
        let Some(count) = c.holders_by_province.get_mut(row.province.index()) else {
            return Err(format!("holder {at}: unknown province {}", row.province));
        };
        let row = HolderRow {
            local: *count,
            ..row
        };
        *count += 1;
        let idx = HolderIdx(at as u32);
        if c.holder_by_national_id
            .insert(row.national_id, idx)
            .is_some()
        {
            return Err(format!(
                "national ID {:010} is listed twice",
                row.national_id
            ));
        }
        c.holders.push(row);
    }
    // The fingerprint is the one computed from the CSV files (checked by the body's
    // checksum): recomputing it would cost a pass over every byte of the holders' text.
    c.fingerprint = fingerprint;
    Ok(c)
}

/// Bytes of one holder in the cache: national id, receipt day, province, status, city and
/// the two text spans.
const HOLDER_ROW_BYTES: usize = 8 + 4 + 2 + 1 + 4 + 4 * 4;

/// One holder's row, every index and span checked against `c` (`local` is set by the caller).
fn holder_row(c: &Catalog, bytes: &[u8], at: usize) -> Result<HolderRow, String> {
    let mut r = Reader::new(bytes);
    let national_id = r.u64()?;
    let receipt_day = r.i32()?;
    let province = ProvinceIdx(r.u16()?);
    let status = match r.u8()? {
        0 => ReceiptStatus::Valid,
        1 => ReceiptStatus::NeedsConversion,
        code => return Err(format!("holder {at}: unknown receipt status code {code}")),
    };
    let city = CityIdx(r.u32()?);
    match c.cities.get(city.index()) {
        Some(found) if found.province == province => {}
        _ => return Err(format!("holder {at}: city not of the holder's province")),
    }
    let mut span = || -> Result<TextSpan, String> {
        let span = TextSpan {
            start: r.u32()?,
            len: r.u32()?,
        };
        let (start, end) = (span.start as usize, span.start as usize + span.len as usize);
        if span.len == 0 || c.text.get(start..end).is_none() {
            return Err(format!("holder {at}: text span out of bounds or empty"));
        }
        Ok(span)
    };
    let tracking_code = span()?;
    let receipt_no = span()?;
    Ok(HolderRow {
        national_id,
        receipt_day,
        province,
        status,
        city,
        local: 0,
        tracking_code,
        receipt_no,
    })
}

/// What the CSV loader would have reported for `catalog`.
fn report_of(catalog: &Catalog) -> LoadReport {
    let mut per_city = vec![0usize; catalog.cities.len()];
    for row in &catalog.holders {
        if let Some(n) = per_city.get_mut(row.city.index()) {
            *n += 1;
        }
    }
    let mut report = LoadReport {
        provinces: catalog.provinces.len(),
        cities: catalog.cities.len(),
        caravans: catalog.caravans.len(),
        seats: catalog.caravans.iter().map(|v| u64::from(v.capacity)).sum(),
        holders: catalog.holders.len(),
        ..LoadReport::default()
    };
    for (city, &count) in per_city.iter().enumerate() {
        if count > 0 && catalog.caravans_of_city(CityIdx(city as u32)).is_empty() {
            report.holders_without_caravan += count;
            report.cities_without_caravan += 1;
        }
    }
    report
}
