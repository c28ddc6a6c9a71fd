//! Admission control and abuse limits: a bound on requests in flight (past it, an immediate
//! `503 overloaded`), GCRA rate limits keyed by national ID and by client address, and a cap on
//! open connections per client address, all in fixed-size tables, so memory stays the same
//! under a million distinct keys.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounded in-flight work: a request either gets a permit at once or is shed.
#[derive(Debug, Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    /// Admits at most `max_in_flight` requests at a time.
    pub fn new(max_in_flight: usize) -> Admission {
        let limit = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A permit if and only if fewer than the limit are in flight; never waits.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second; 0 disables the limit.
    pub per_second: f64,
    /// Requests allowed back to back.
    pub burst: u32,
}

/// A keyed GCRA limiter over a fixed table of cells. Keys hash to cells; two keys that share
/// a cell share a budget (stricter, never looser), which is the price of a memory bound that
/// does not grow with the number of keys.
#[derive(Debug)]
pub struct KeyedLimiter {
    /// Per cell: the theoretical arrival time in nanoseconds since `epoch`.
    cells: Box<[AtomicU64]>,
    mask: usize,
    emission_ns: u64,
    tolerance_ns: u64,
    epoch: Instant,
    enabled: bool,
}

impl KeyedLimiter {
    /// A limiter with `2^cells_log2` cells (at most 2^24) enforcing `rate` per key.
    pub fn new(rate: Rate, cells_log2: u32) -> KeyedLimiter {
        let size = 1usize << cells_log2.min(24);
        let enabled = rate.per_second > 0.0 && rate.per_second.is_finite();
        let emission_ns = if enabled {
            (1e9 / rate.per_second).max(1.0) as u64
        } else {
            0
        };
        KeyedLimiter {
            cells: (0..size).map(|_| AtomicU64::new(0)).collect(),
            mask: size - 1,
            emission_ns,
            tolerance_ns: emission_ns.saturating_mul(u64::from(rate.burst.max(1) - 1)),
            epoch: Instant::now(),
            enabled,
        }
    }

    /// Counts one request for `key`: `Ok(())` if it is within the rate, otherwise how long to
    /// wait before the next one would be.
    pub fn check<K: Hash>(&self, key: &K) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let cell = &self.cells[(rustc_hash::FxBuildHasher.hash_one(key) as usize) & self.mask];
        // Offset by the tolerance so a fresh cell (0) allows a full burst at start.
        let now = self.epoch.elapsed().as_nanos() as u64 + self.tolerance_ns + self.emission_ns;
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance_ns {
                return Err(Duration::from_nanos(start - now - self.tolerance_ns));
            }
            match cell.compare_exchange_weak(
                tat,
                start + self.emission_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Bytes this limiter holds, whatever the number of keys.
    pub fn memory_bytes(&self) -> usize {
        self.cells.len() * std::mem::size_of::<AtomicU64>()
    }
}

/// Open connections per client address, counted in a fixed table of cells. Addresses hash to
/// cells; two addresses that share a cell share a cap (stricter, never looser), the price of a
/// memory bound that does not grow with the number of addresses.
#[derive(Debug)]
pub struct ConnectionCap {
    cells: Box<[AtomicU32]>,
    mask: usize,
    per_client_max: u32,
}

/// One open connection counted against its client's cap; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionPermit {
    cap: Arc<ConnectionCap>,
    cell: usize,
}

impl ConnectionCap {
    /// A cap of `per_client_max` connections per address (0: no cap) over `2^cells_log2`
    /// cells (at most 2^24).
    pub fn new(per_client_max: u32, cells_log2: u32) -> ConnectionCap {
        let size = 1usize << cells_log2.min(24);
        ConnectionCap {
            cells: (0..size).map(|_| AtomicU32::new(0)).collect(),
            mask: size - 1,
            per_client_max,
        }
    }

    /// A permit if and only if `client` has fewer than the cap open (always, without a cap).
    pub fn try_open<K: Hash>(self: &Arc<Self>, client: &K) -> Option<ConnectionPermit> {
        let cell = (rustc_hash::FxBuildHasher.hash_one(client) as usize) & self.mask;
        let counter = &self.cells[cell];
        let before = counter.fetch_add(1, Ordering::AcqRel);
        if self.per_client_max != 0 && before >= self.per_client_max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionPermit {
            cap: Arc::clone(self),
            cell,
        })
    }

    /// Connections open now for `client` (and any address sharing its cell).
    pub fn open_for<K: Hash>(&self, client: &K) -> u32 {
        let cell = (rustc_hash::FxBuildHasher.hash_one(client) as usize) & self.mask;
        self.cells[cell].load(Ordering::Acquire)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.cap.cells[self.cell].fetch_sub(1, Ordering::AcqRel);
    }
}

/// Seconds for a `Retry-After` header: at least one, rounded up.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = KeyedLimiter::new(
            Rate {
                per_second: 1.0,
                burst: 3,
            },
            10,
        );
        for _ in 0..3 {
            assert!(limiter.check(&"holder").is_ok());
        }
        let wait = limiter.check(&"holder").unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(limiter.check(&"someone else").is_ok());
    }

    #[test]
    fn connection_cap_counts_per_client_and_gives_places_back() {
        let cap = Arc::new(ConnectionCap::new(2, 16));
        let a: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let b: std::net::IpAddr = "127.0.0.3".parse().unwrap();
        let first = cap.try_open(&a).unwrap();
        let _second = cap.try_open(&a).unwrap();
        assert!(cap.try_open(&a).is_none(), "a third connection is refused");
        assert_eq!(cap.open_for(&a), 2, "a refusal leaves the count as it was");
        assert!(cap.try_open(&b).is_some(), "another client has its own cap");
        drop(first);
        assert!(
            cap.try_open(&a).is_some(),
            "a closed connection frees its place"
        );
        let uncapped = Arc::new(ConnectionCap::new(0, 4));
        let permits: Vec<_> = (0..1000).filter_map(|_| uncapped.try_open(&a)).collect();
        assert_eq!(permits.len(), 1000);
    }

    #[test]
    fn memory_stays_fixed_under_a_million_keys() {
        let limiter = KeyedLimiter::new(
            Rate {
                per_second: 5.0,
                burst: 10,
            },
            16,
        );
        let before = limiter.memory_bytes();
        for key in 0..1_000_000u64 {
            let _ = limiter.check(&key);
        }
        assert_eq!(limiter.memory_bytes(), before);
    }

    #[test]
    fn admission_sheds_past_the_bound() {
        let admission = Admission::new(2);
        let a = admission.try_admit().unwrap();
        let _b = admission.try_admit().unwrap();
        assert!(admission.try_admit().is_none());
        drop(a);
        assert!(admission.try_admit().is_some());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
