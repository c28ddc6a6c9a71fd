//! The rush read path: caravan lists as ready JSON bodies with strong ETags, one entry per
//! province and filter, re-read from the engine's lock-free counters when older than a few
//! milliseconds and re-serialized only when a free-seat count actually changed.
//!
//! Entries live in a `DashMap`, so concurrent readers of different lists never contend. The
//! key space is bounded by the catalog: a filter is cached only when every part of it names
//! something the province has (its cities, its price groups, the two routes); any other
//! filter matches nothing and is answered without an entry.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use flate2::Compression;
use flate2::write::GzEncoder;
use miqat_engine::Engine;
use miqat_engine::catalog::{CaravanIdx, CityIdx, ProvinceIdx, Route};

use crate::dto::Caravan;

/// Which list: a province and an optional filter, already validated against the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    /// The province.
    pub province: ProvinceIdx,
    /// Only caravans of this city.
    pub city: Option<CityIdx>,
    /// Only this route.
    pub route: Option<Route>,
    /// Only this price group (one the province has).
    pub price_group: Option<String>,
    /// Only caravans with free seats.
    pub available_only: bool,
}

/// One cached list.
#[derive(Debug)]
pub struct CachedList {
    /// When the free-seat counts were last read.
    checked: Instant,
    /// The free seats of every caravan the filter can select, in catalog order.
    free: Vec<u32>,
    /// The strong ETag of `body`, quoted.
    pub etag: String,
    /// The same, ready to send.
    pub etag_header: axum::http::HeaderValue,
    /// The strong ETag of the gzip representation (a strong validator names one encoding).
    pub etag_gzip: String,
    /// The same, ready to send.
    pub etag_gzip_header: axum::http::HeaderValue,
    /// The JSON array of caravans.
    pub body: Bytes,
    /// `body` compressed with gzip, made by the first request that accepts it and shared by
    /// every later refresh that finds the same seats.
    gzip: Arc<OnceLock<Bytes>>,
}

impl CachedList {
    /// `body` compressed with gzip (fast level: a list is a few KiB and changes often).
    pub fn gzip_body(&self) -> &Bytes {
        self.gzip.get_or_init(|| {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            // Writing to a Vec cannot fail; on the impossible error, send an empty gzip.
            let _ = encoder.write_all(&self.body);
            Bytes::from(encoder.finish().unwrap_or_default())
        })
    }
}

/// Cached caravan lists, at most `max_age` stale.
#[derive(Debug)]
pub struct CaravanListCache {
    lists: DashMap<ListKey, Arc<CachedList>, rustc_hash::FxBuildHasher>,
    max_age: Duration,
}

impl CaravanListCache {
    /// An empty cache whose entries are at most `max_age` stale.
    pub fn new(max_age: Duration) -> CaravanListCache {
        CaravanListCache {
            lists: DashMap::with_hasher(rustc_hash::FxBuildHasher),
            max_age,
        }
    }

    /// The list for `key`, at most `max_age` stale.
    pub fn get(&self, engine: &Engine, key: &ListKey) -> Arc<CachedList> {
        if let Some(list) = self.lists.get(key)
            && list.checked.elapsed() < self.max_age
        {
            return Arc::clone(&list);
        }
        let candidates = candidates(engine, key);
        let free: Vec<u32> = candidates.iter().map(|&c| engine.free_seats(c)).collect();
        let previous = self.lists.get(key).map(|l| Arc::clone(&l));
        let fresh = match previous {
            Some(old) if old.free == free => CachedList {
                checked: Instant::now(),
                free,
                etag: old.etag.clone(),
                etag_header: old.etag_header.clone(),
                etag_gzip: old.etag_gzip.clone(),
                etag_gzip_header: old.etag_gzip_header.clone(),
                body: old.body.clone(),
                gzip: Arc::clone(&old.gzip),
            },
            _ => build(engine, key, &candidates, free),
        };
        let fresh = Arc::new(fresh);
        self.lists.insert(key.clone(), Arc::clone(&fresh));
        fresh
    }

    /// Number of cached lists (bounded by the catalog).
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

/// The caravans the filter selects, free seats aside.
fn candidates(engine: &Engine, key: &ListKey) -> Vec<CaravanIdx> {
    let catalog = engine.catalog();
    catalog
        .caravans_of_province(key.province)
        .iter()
        .copied()
        .filter(|&c| {
            let caravan = &catalog.caravans()[c.index()];
            key.city.is_none_or(|city| caravan.city == city)
                && key.route.is_none_or(|r| caravan.route == r)
                && key
                    .price_group
                    .as_deref()
                    .is_none_or(|g| caravan.price_group == g)
        })
        .collect()
}

fn build(engine: &Engine, key: &ListKey, candidates: &[CaravanIdx], free: Vec<u32>) -> CachedList {
    let catalog = engine.catalog();
    let list: Vec<Caravan> = candidates
        .iter()
        .zip(&free)
        .filter(|(_, seats_free)| !key.available_only || **seats_free > 0)
        .map(|(&c, &seats_free)| Caravan::new(catalog, c, seats_free))
        .collect();
    let body = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    let mut hasher = rustc_hash::FxHasher::default();
    key.hash(&mut hasher);
    catalog.fingerprint().hash(&mut hasher);
    free.hash(&mut hasher);
    let tag = format!("p{}-{:016x}", key.province, hasher.finish());
    let etag = format!("\"{tag}\"");
    let etag_gzip = format!("\"{tag}-gz\"");
    let header = |text: &str| {
        axum::http::HeaderValue::from_str(text)
            .unwrap_or(axum::http::HeaderValue::from_static("\"\""))
    };
    CachedList {
        checked: Instant::now(),
        free,
        etag_header: header(&etag),
        etag_gzip_header: header(&etag_gzip),
        etag_gzip,
        etag,
        body,
        gzip: Arc::default(),
    }
}
