//! Tests of the catalog's binary cache: it gives the very catalog the CSV files give; it is
//! used only when the CSV files' hash matches; a stale, damaged or foreign cache is ignored and
//! rewritten, never trusted; and CSV errors stay the CSV loader's.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use miqat_engine::catalog::cache::{CACHE_VERSION, CacheUse, load_catalog_cached};
use miqat_engine::catalog::{CaravanIdx, Catalog, CityIdx, HolderIdx, ProvinceIdx};
use miqat_engine::datagen::{GenConfig, generate};
use miqat_engine::load::load_catalog_with_report;

fn generated(holders: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = GenConfig {
        holders,
        seats: 2_000,
        ..GenConfig::default()
    };
    generate(dir.path(), &config, &mut |_| {}).unwrap();
    dir
}

/// Asserts that `a` and `b` hold the same catalog, field by field and look-up by look-up.
fn assert_same(a: &Catalog, b: &Catalog) {
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.provinces(), b.provinces());
    assert_eq!(a.cities(), b.cities());
    assert_eq!(a.caravans(), b.caravans());
    assert_eq!(a.holder_count(), b.holder_count());
    for p in 0..a.provinces().len() {
        let p = ProvinceIdx(p as u16);
        assert_eq!(a.province_holder_count(p), b.province_holder_count(p));
        assert_eq!(a.caravans_of_province(p), b.caravans_of_province(p));
        let id = a.provinces()[p.index()].id;
        assert_eq!(b.province_by_id(id), Some(p));
    }
    for (c, city) in a.cities().iter().enumerate() {
        assert_eq!(
            a.caravans_of_city(CityIdx(c as u32)),
            b.caravans_of_city(CityIdx(c as u32))
        );
        assert_eq!(
            b.city_by_name(city.province, &city.name),
            Some(CityIdx(c as u32))
        );
    }
    for (v, caravan) in a.caravans().iter().enumerate() {
        assert_eq!(b.caravan_by_id(&caravan.id), Some(CaravanIdx(v as u32)));
    }
    for h in a.holder_indices() {
        let holder = a.holder(h).unwrap();
        assert_eq!(Some(holder), b.holder(h));
        assert_eq!(b.holder_by_national_id(holder.national_id), Some(h));
    }
    assert_eq!(b.holder(HolderIdx(a.holder_count() as u32)), None);
}

fn rebuilt_reason(outcome: &CacheUse) -> &str {
    match outcome {
        CacheUse::Rebuilt { reason, written } => {
            assert!(written, "the cache was not rewritten after: {reason}");
            reason
        }
        CacheUse::Used => panic!("the cache was used"),
    }
}

fn load(dir: &Path, cache: &Path) -> (Catalog, CacheUse) {
    let (catalog, _, outcome) = load_catalog_cached(dir, cache).unwrap();
    (catalog, outcome)
}

#[test]
fn the_cache_gives_the_catalog_the_csv_files_give() {
    let dir = generated(5_000);
    let cache = dir.path().join("state").join("catalog.cache");
    let (from_csv, csv_report) = load_catalog_with_report(dir.path()).unwrap();

    let (first, first_report, outcome) = load_catalog_cached(dir.path(), &cache).unwrap();
    assert!(rebuilt_reason(&outcome).contains("no cache"), "{outcome:?}");
    assert!(cache.exists());
    assert_same(&from_csv, &first);
    assert_eq!(first_report, csv_report);

    let (second, second_report, outcome) = load_catalog_cached(dir.path(), &cache).unwrap();
    assert_eq!(outcome, CacheUse::Used);
    assert_same(&from_csv, &second);
    assert_eq!(second_report, csv_report);
}

#[test]
fn a_changed_csv_file_is_noticed_by_its_hash_even_with_the_same_size_and_time() {
    let dir = generated(2_000);
    let cache = dir.path().join("catalog.cache");
    load(dir.path(), &cache);
    let holders = dir.path().join("holders.csv");
    let modified = std::fs::metadata(&holders).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&holders).unwrap();
    // Change the last character of the first holder's tracking code (same size), then put
    // the modification time back.
    let text = String::from_utf8(bytes.clone()).unwrap();
    let line_2 = text.lines().nth(1).unwrap();
    let line_at = text.find(line_2).unwrap();
    let code = line_2.split(',').nth(1).unwrap();
    let last = line_at + line_2.find(code).unwrap() + code.len() - 1;
    bytes[last] = match bytes[last] {
        b'9' => b'0',
        b @ b'0'..=b'8' => b + 1,
        b => b ^ 0x20,
    };
    std::fs::write(&holders, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&holders)
        .unwrap()
        .set_modified(modified)
        .unwrap();

    let (catalog, outcome) = load(dir.path(), &cache);
    assert!(
        rebuilt_reason(&outcome).contains("hash"),
        "{outcome:?} should name the hash"
    );
    assert_same(&load_catalog_with_report(dir.path()).unwrap().0, &catalog);
    assert_eq!(load(dir.path(), &cache).1, CacheUse::Used);
}

#[test]
fn a_damaged_truncated_or_foreign_cache_is_ignored_and_rewritten() {
    let dir = generated(2_000);
    let cache = dir.path().join("catalog.cache");
    let from_csv = load(dir.path(), &cache).0;
    let good = std::fs::read(&cache).unwrap();
    let header_bytes = 8 + 4 + 3 * 16 + 32 + 8 + 4 + 4;

    let mut version = good.clone();
    version[8..12].copy_from_slice(&(CACHE_VERSION + 1).to_le_bytes());
    let mut header_flip = good.clone();
    header_flip[20] ^= 0x40;
    let mut body_flip = good.clone();
    let middle = header_bytes + (good.len() - header_bytes) / 2;
    body_flip[middle] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "header"),
        (
            "garbage",
            b"not a cache at all, just some bytes here".repeat(10),
            "not a catalog cache",
        ),
        ("truncated", good[..good.len() - 100].to_vec(), "bytes"),
        ("longer", [good.clone(), vec![0; 7]].concat(), "bytes"),
        ("other version", version, "checksum"),
        ("header bit flip", header_flip, "checksum"),
        ("body bit flip", body_flip, "body checksum"),
    ];
    for (name, bytes, words) in cases {
        std::fs::write(&cache, &bytes).unwrap();
        let (catalog, outcome) = load(dir.path(), &cache);
        let reason = rebuilt_reason(&outcome);
        assert!(reason.contains(words), "{name}: {reason:?} lacks {words:?}");
        assert_same(&from_csv, &catalog);
        assert_eq!(
            std::fs::read(&cache).unwrap(),
            good,
            "{name}: not rewritten"
        );
    }
}

#[test]
fn a_cache_of_another_version_with_a_valid_checksum_is_ignored() {
    let dir = generated(500);
    let cache = dir.path().join("catalog.cache");
    load(dir.path(), &cache);
    let mut bytes = std::fs::read(&cache).unwrap();
    bytes[8..12].copy_from_slice(&(CACHE_VERSION + 1).to_le_bytes());
    let header_bytes = 8 + 4 + 3 * 16 + 32 + 8 + 4 + 4;
    let crc = crc32c::crc32c(&bytes[..header_bytes - 4]);
    bytes[header_bytes - 4..header_bytes].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&cache, &bytes).unwrap();
    let (_, outcome) = load(dir.path(), &cache);
    assert!(rebuilt_reason(&outcome).contains("version"), "{outcome:?}");
}

#[test]
fn a_bad_csv_file_is_refused_even_with_a_cache_of_the_good_one() {
    let dir = generated(500);
    let cache = dir.path().join("catalog.cache");
    load(dir.path(), &cache);
    let holders = dir.path().join("holders.csv");
    let mut text = std::fs::read_to_string(&holders).unwrap();
    text.push_str("12,x,y,1385/01/10,valid,1,Tehran\n");
    std::fs::write(&holders, text).unwrap();
    let err = load_catalog_cached(dir.path(), &cache).unwrap_err();
    assert!(err.to_string().contains("holders.csv"), "{err}");
}

#[test]
fn an_unwritable_cache_place_only_costs_the_cache() {
    let dir = generated(500);
    // A directory where the file should be: it can be neither read nor replaced.
    let cache = dir.path().join("catalog.cache");
    std::fs::create_dir(&cache).unwrap();
    let (catalog, _, outcome) = load_catalog_cached(dir.path(), &cache).unwrap();
    assert!(
        matches!(outcome, CacheUse::Rebuilt { written: false, .. }),
        "{outcome:?}"
    );
    assert_eq!(catalog.holder_count(), 500);
}
