//! The rush read path: each province's caravan list as a ready JSON body with a strong ETag,
//! rebuilt from the engine's lock-free counters when older than a few milliseconds and only
//! re-serialized when a free-seat count actually changed.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use miqat_engine::Engine;
use miqat_engine::catalog::ProvinceIdx;
use parking_lot::RwLock;

use crate::dto::Caravan;

/// One province's cached list.
#[derive(Debug)]
pub struct CachedList {
    /// When the free-seat counts were last read.
    checked: Instant,
    /// The free seats the body shows, per caravan of the province.
    free: Vec<u32>,
    /// The strong ETag of `body`, quoted.
    pub etag: String,
    /// The JSON array of caravans.
    pub body: Bytes,
}

/// Per-province cached caravan lists.
#[derive(Debug)]
pub struct CaravanListCache {
    lists: Vec<RwLock<Option<Arc<CachedList>>>>,
    max_age: Duration,
}

impl CaravanListCache {
    /// A cache for `provinces` provinces whose entries are at most `max_age` stale.
    pub fn new(provinces: usize, max_age: Duration) -> CaravanListCache {
        CaravanListCache {
            lists: (0..provinces).map(|_| RwLock::new(None)).collect(),
            max_age,
        }
    }

    /// The province's list, at most `max_age` stale. Returns `None` for an unknown province.
    pub fn get(&self, engine: &Engine, province: ProvinceIdx) -> Option<Arc<CachedList>> {
        let slot = self.lists.get(usize::from(province))?;
        if let Some(list) = slot.read().as_ref()
            && list.checked.elapsed() < self.max_age
        {
            return Some(Arc::clone(list));
        }
        let mut guard = slot.write();
        // Another request may have refreshed it while this one waited for the lock.
        if let Some(list) = guard.as_ref()
            && list.checked.elapsed() < self.max_age
        {
            return Some(Arc::clone(list));
        }
        let caravans = engine.catalog().caravans_of_province(province);
        let free: Vec<u32> = caravans.iter().map(|&c| engine.free_seats(c)).collect();
        let fresh = match guard.as_ref() {
            Some(old) if old.free == free => CachedList {
                checked: Instant::now(),
                free,
                etag: old.etag.clone(),
                body: old.body.clone(),
            },
            _ => build(engine, province, free),
        };
        let fresh = Arc::new(fresh);
        *guard = Some(Arc::clone(&fresh));
        Some(fresh)
    }
}

fn build(engine: &Engine, province: ProvinceIdx, free: Vec<u32>) -> CachedList {
    let catalog = engine.catalog();
    let caravans = catalog.caravans_of_province(province);
    let list: Vec<Caravan> = caravans
        .iter()
        .zip(&free)
        .map(|(&c, &seats_free)| Caravan::new(catalog, c, seats_free))
        .collect();
    let body = Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
    let mut hasher = rustc_hash::FxHasher::default();
    province.hash(&mut hasher);
    catalog.fingerprint().hash(&mut hasher);
    free.hash(&mut hasher);
    CachedList {
        checked: Instant::now(),
        free,
        etag: format!("\"p{province}-{:016x}\"", hasher.finish()),
        body,
    }
}
