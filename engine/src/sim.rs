//! Deterministic simulation: drives the real engine (the same decide/apply, log, snapshots and
//! recovery) from one seed, with a simulated clock and simulated storage, under crashes, torn
//! and lost unsynced writes, fsync errors, bit flips in old segments, wall-clock steps and
//! restarts, checking the invariants and a reference model after every step.
//!
//! The same seed gives the same run and the same [`SeedReport::digest`]: every decision waits
//! for its record to be durable before the next step, so what reaches the simulated disk does
//! not depend on the log flusher's timing.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::catalog::{
    Caravan, CaravanIdx, Catalog, CatalogBuilder, CityIdx, HolderIdx, ReceiptStatus, Route,
};
use crate::clock::{AnchoredClock, Clock, ManualClock};
use crate::engine::{Committed, Engine, EngineConfig, ReservationFilter, TransferRequest};
use crate::model::{OperatorEvent, ReservationId, ReservationView, Status};
use crate::season::{Schedule, Season, Stage, Wave, WaveOrder};
use crate::wal::{FaultMode, FaultyStorage, MemStorage, Storage};

/// The instant every simulation starts at (2020-09-13T12:26:40Z).
const T0_MS: i64 = 1_600_000_000_000;
/// Receipts up to this day are called by the first wave.
const CUTOFF_DAY: i32 = 150;

/// A defect planted on purpose, to show that the simulator finds it (see `planted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Defect {
    /// None: the engine as built.
    None = 0,
    /// A seat passed to a waiting holder's offer is also released to the pool.
    SeatReleasedTwice = 1,
    /// A decision is acknowledged before its record is synced.
    AckBeforeSync = 2,
}

/// What one seed's run found.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Steps run (fewer than asked if a violation stopped the run).
    pub steps: u32,
    /// What went wrong, in order; empty if nothing did.
    pub violations: Vec<String>,
    /// A digest of the final state: equal for equal seeds and steps.
    pub digest: u64,
    /// Restarts (crashes, clean stops, refused corruptions) during the run.
    pub restarts: u32,
    /// Decisions acknowledged during the run.
    pub acknowledged: u64,
}

/// Runs one seed for `steps` steps with the engine as built.
pub fn run_seed(seed: u64, steps: u32) -> SeedReport {
    run_seed_with(seed, steps, Defect::None)
}

/// Runs one seed with `defect` planted (it has an effect only in builds with the
/// `planted-defects` feature). A panic inside the engine is reported as a violation.
pub fn run_seed_with(seed: u64, steps: u32, defect: Defect) -> SeedReport {
    crate::planted::plant(defect);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed);
        let done = sim.run(steps);
        (done, sim)
    }));
    crate::planted::plant(Defect::None);
    match outcome {
        Ok((done, sim)) => SeedReport {
            seed,
            steps: done,
            digest: sim.digest(),
            restarts: sim.restarts,
            acknowledged: sim.acknowledged,
            violations: sim.violations,
        },
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into());
            SeedReport {
                seed,
                steps: 0,
                violations: vec![format!("panic: {message}")],
                digest: 0,
                restarts: 0,
                acknowledged: 0,
            }
        }
    }
}

/// An acknowledged reservation as the client last saw it.
#[derive(Clone, Debug)]
struct Acked {
    holder: HolderIdx,
    caravan: CaravanIdx,
    created_ms: i64,
    status: Status,
    stage: Option<Stage>,
}

struct Sim {
    rng: ChaCha8Rng,
    seed: u64,
    catalog: Arc<Catalog>,
    season: Season,
    disk: MemStorage,
    faulty: Arc<FaultyStorage>,
    monotonic: ManualClock,
    wall: ManualClock,
    engine: Option<Arc<Engine>>,
    /// Every reservation acknowledged, as last acknowledged.
    acked: BTreeMap<ReservationId, Acked>,
    /// (holder, caravan) pairs anyone asked for, and holders who asked to wait.
    asked: BTreeSet<(HolderIdx, CaravanIdx)>,
    joined: BTreeSet<HolderIdx>,
    /// Acknowledged `Idempotency-Key`s of reserves: key -> (caravan, reservation).
    keys: BTreeMap<(HolderIdx, u8), (CaravanIdx, ReservationId)>,
    /// Acknowledged receipt transfers: receipt -> (receiver's national ID, tracking code).
    transfers: BTreeMap<HolderIdx, (u64, String)>,
    violations: Vec<String>,
    restarts: u32,
    acknowledged: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let catalog = Arc::new(random_catalog(&mut rng));
        let season = random_season(&mut rng);
        let disk = MemStorage::new();
        let faulty = Arc::new(FaultyStorage::new(Arc::new(disk.clone())));
        let mut sim = Sim {
            rng,
            seed,
            catalog,
            season,
            disk,
            faulty,
            monotonic: ManualClock::new(0),
            wall: ManualClock::new(T0_MS),
            engine: None,
            acked: BTreeMap::new(),
            asked: BTreeSet::new(),
            joined: BTreeSet::new(),
            keys: BTreeMap::new(),
            transfers: BTreeMap::new(),
            violations: Vec::new(),
            restarts: 0,
            acknowledged: 0,
        };
        sim.start();
        sim
    }

    /// Runs up to `steps` steps; stops at the first violation. Returns the steps run.
    fn run(&mut self, steps: u32) -> u32 {
        for step in 0..steps {
            if self.engine.is_none() {
                return step;
            }
            let action = self.rng.random_range(0..100u32);
            match action {
                0..=34 => self.reserve(),
                35..=42 => self.cancel(),
                43..=54 => self.event(),
                55..=62 => self.join_and_accept(),
                63..=76 => self.pass_time(),
                77..=79 => self.step_wall_clock(),
                80..=82 => self.snapshot(),
                83..=84 => self.change_schedule(),
                85..=88 => self.crash(),
                89..=91 => self.fsync_error(),
                92..=93 => self.flip_a_bit_in_an_old_segment(),
                94..=95 => self.transfer_or_change_dispatch(),
                _ => self.clean_restart(),
            }
            self.check(step);
            if !self.violations.is_empty() {
                return step + 1;
            }
        }
        steps
    }

    fn engine(&self) -> &Arc<Engine> {
        self.engine
            .as_ref()
            .expect("the simulated engine is running")
    }

    fn now(&self) -> i64 {
        self.engine().now_ms()
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    /// Opens the engine on the simulated disk; a refusal is a violation.
    fn start(&mut self) {
        let (m, w) = (self.monotonic.clone(), self.wall.clone());
        let clock: Arc<dyn Clock> = Arc::new(AnchoredClock::new(
            move || m.now_ms(),
            move || w.now_ms(),
            2_000,
        ));
        let config = EngineConfig {
            id_seed: Some(self.seed ^ u64::from(self.restarts).rotate_left(32)),
            segment_bytes_target: 2_048,
            snapshot_every_records: u64::MAX,
            ..EngineConfig::default()
        };
        let storage: Arc<dyn Storage> = self.faulty.clone();
        match Engine::open(
            Arc::clone(&self.catalog),
            self.season.clone(),
            clock,
            storage,
            config,
        ) {
            Ok((engine, _)) => self.engine = Some(engine),
            Err(e) => self.violation(format!("recovery refused a log it wrote: {e}")),
        }
    }

    fn stop_and_crash(&mut self, keep_unsynced: bool) {
        self.engine = None;
        self.restarts += 1;
        if keep_unsynced {
            let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
            self.disk
                .crash_with(|_, unsynced| rng.random_range(0..=unsynced));
        } else {
            self.disk.crash();
        }
        self.faulty.clear();
        self.start();
    }

    /// Waits for a decision's record; true if and only if it is acknowledged.
    fn durable<T>(&mut self, committed: &Committed<T>) -> bool {
        let ok = self.engine().wait(committed).is_ok();
        self.acknowledged += u64::from(ok);
        ok
    }

    fn ack(&mut self, view: &ReservationView) {
        self.acked.insert(
            view.id,
            Acked {
                holder: view.holder,
                caravan: view.caravan,
                created_ms: view.created_ms,
                status: view.status,
                stage: view.stage,
            },
        );
    }

    fn random_holder(&mut self) -> HolderIdx {
        HolderIdx(self.rng.random_range(0..self.catalog.holder_count() as u32))
    }

    fn reserve(&mut self) {
        let holder = self.random_holder();
        let Some(h) = self.catalog.holder_facts(holder) else {
            return;
        };
        let own = self.catalog.caravans_of_city(h.city);
        let caravan = if !own.is_empty() && self.rng.random_bool(0.85) {
            own[self.rng.random_range(0..own.len())]
        } else {
            CaravanIdx(
                self.rng
                    .random_range(0..self.catalog.caravans().len() as u32),
            )
        };
        let key_no: Option<u8> = self
            .rng
            .random_bool(0.4)
            .then(|| self.rng.random_range(0..3));
        let key = key_no.map(|k| format!("k{k}").into_bytes());
        self.asked.insert((holder, caravan));
        let Ok(decided) = self.engine().reserve(holder, caravan, key.as_deref()) else {
            return;
        };
        if !self.durable(&decided) {
            return;
        }
        let (view, replayed) = (decided.value.reservation, decided.value.replayed);
        if let Some(k) = key_no {
            match self.keys.get(&(holder, k)).copied() {
                // A key acknowledged before, for this caravan, must answer the original.
                Some((c, id)) if c == caravan && (!replayed || id != view.id) => {
                    self.violation(format!(
                        "a retry with key k{k} of holder {holder} answered reservation {} \
                         (replayed: {replayed}), not the original {id}",
                        view.id
                    ));
                }
                Some(_) => {}
                None => {
                    self.keys.insert((holder, k), (caravan, view.id));
                }
            }
        }
        if !replayed {
            self.ack(&view);
        }
    }

    /// An acknowledged reservation at random, if any.
    fn some_acked(&mut self) -> Option<(ReservationId, HolderIdx)> {
        if self.acked.is_empty() {
            return None;
        }
        let n = self.rng.random_range(0..self.acked.len());
        self.acked.iter().nth(n).map(|(id, a)| (*id, a.holder))
    }

    fn cancel(&mut self) {
        let Some((id, holder)) = self.some_acked() else {
            return;
        };
        if let Ok(decided) = self.engine().cancel(holder, id)
            && self.durable(&decided)
        {
            self.ack(&decided.value);
        }
    }

    fn event(&mut self) {
        let Some((id, _)) = self.some_acked() else {
            return;
        };
        let stage = self.engine().reservation(id).and_then(|r| r.stage);
        let event = match (stage, self.rng.random_range(0..10u32)) {
            (_, 0) => OperatorEvent::MedicalRejected,
            (_, 1) => OperatorEvent::Deceased,
            (Some(Stage::Documents), _) => OperatorEvent::DocumentsReceived,
            (Some(Stage::FirstPayment), _) => OperatorEvent::FirstPaymentReceived,
            (Some(Stage::Medical), _) => OperatorEvent::MedicalApproved,
            _ => OperatorEvent::FinalPaymentReceived,
        };
        if let Ok(decided) = self.engine().operator_event(id, event)
            && self.durable(&decided)
        {
            self.ack(&decided.value);
        }
    }

    fn join_and_accept(&mut self) {
        let holder = self.random_holder();
        self.joined.insert(holder);
        if let Ok(decided) = self.engine().join_waitlist(holder) {
            self.durable(&decided);
        }
        // Someone with an open offer takes it, most of the time.
        let offered = self.engine().reservations(
            &ReservationFilter {
                status: Some(Status::Offered),
                ..ReservationFilter::default()
            },
            0,
            usize::MAX,
        );
        if let Some(offer) = offered.first()
            && self.rng.random_bool(0.7)
            && let Ok(decided) = self.engine().accept_offer(offer.holder, offer.id)
            && self.durable(&decided)
        {
            self.ack(&decided.value);
        }
    }

    fn pass_time(&mut self) {
        let ms = self.rng.random_range(0..30_000i64);
        self.monotonic.advance(ms);
        self.wall.advance(ms);
        if let Ok((_, ticket)) = self.engine().expire_due() {
            let _ = self.engine().wait(&Committed { value: (), ticket });
        }
    }

    fn step_wall_clock(&mut self) {
        let step = self.rng.random_range(-3_600_000..3_600_000i64);
        self.wall.advance(step);
        let before = self.now();
        if let Ok((expired, ticket)) = self.engine().expire_due() {
            let _ = self.engine().wait(&Committed { value: (), ticket });
            let after = self.now();
            if step.abs() > 2_000 && after - before > 2_000 {
                self.violation(format!(
                    "a wall-clock step of {step} ms moved engine time by {} ms ({expired} expired)",
                    after - before
                ));
            }
        }
    }

    fn snapshot(&mut self) {
        let _ = self.engine().snapshot();
    }

    fn change_schedule(&mut self) {
        let now = self.now();
        let delay = self.rng.random_range(-60_000..60_000i64);
        let waves = vec![Wave {
            name: "main".into(),
            receipts_until_day: CUTOFF_DAY,
            opens_at_ms: now + delay,
            provinces: None,
            admits_earlier_receipts: false,
        }];
        if let Ok(decided) = self
            .engine()
            .replace_schedule_with(waves, WaveOrder::Strict)
        {
            self.durable(&decided);
        }
    }

    /// An office transfers a receipt to a newcomer (or, refused, to a holder of the catalog)
    /// or changes a holder's city within their province.
    fn transfer_or_change_dispatch(&mut self) {
        let holder = self.random_holder();
        let Some(h) = self.catalog.holder_facts(holder) else {
            return;
        };
        let cities: Vec<CityIdx> = (0..self.catalog.cities().len() as u32)
            .map(CityIdx)
            .filter(|c| self.catalog.cities()[c.index()].province == h.province)
            .collect();
        let city = cities[self.rng.random_range(0..cities.len())];
        if self.rng.random_bool(0.5) {
            if let Ok(decided) = self.engine().change_dispatch(holder, city, "sim-office") {
                self.durable(&decided);
            }
            return;
        }
        let receiver = if self.rng.random_bool(0.2) {
            // A holder of the catalog: must be refused.
            let other = self.random_holder();
            self.catalog
                .holder_facts(other)
                .map_or(0, |f| f.national_id)
        } else {
            9_000_000_000 + self.rng.random_range(0..1_000u64)
        };
        let code = format!("s{receiver}");
        let request = TransferRequest {
            holder,
            national_id: receiver,
            tracking_code: &code,
            city,
            principal: "sim-office",
        };
        let Ok(decided) = self.engine().transfer(request) else {
            return;
        };
        if self.catalog.holder_by_national_id(receiver).is_some() {
            self.violation(format!(
                "holder {receiver} of the catalog received a receipt"
            ));
            return;
        }
        if self.durable(&decided) {
            self.transfers.insert(holder, (receiver, code));
        }
    }

    fn crash(&mut self) {
        let keep = self.rng.random_bool(0.5);
        self.stop_and_crash(keep);
        self.check_durability("after a crash");
    }

    /// The next fsync fails: the decision in flight is never acknowledged, the log stops, and
    /// the process restarts with some, none or all of the unsynced bytes on disk.
    fn fsync_error(&mut self) {
        self.faulty
            .fail_sync(self.faulty.syncs_seen() + 1, FaultMode::Persistent);
        // A holder who can still take a seat, so that the decision in flight is a real one.
        let engine = Arc::clone(self.engine());
        let candidates: Vec<(HolderIdx, CaravanIdx)> = (0..self.catalog.holder_count() as u32)
            .map(HolderIdx)
            .filter(|&h| engine.latest_reservation(h).is_none())
            .filter_map(|h| {
                let city = self.catalog.holder_facts(h)?.city;
                let caravans = self.catalog.caravans_of_city(city);
                let free = caravans.iter().find(|&&c| engine.free_seats(c) > 0)?;
                Some((h, *free))
            })
            .collect();
        if !candidates.is_empty() {
            let (holder, caravan) = candidates[self.rng.random_range(0..candidates.len())];
            self.asked.insert((holder, caravan));
            // Acknowledged only if the engine says it is durable: the model then holds the
            // engine to it after the crash below.
            if let Ok(decided) = self.engine().reserve(holder, caravan, None)
                && self.durable(&decided)
                && !decided.value.replayed
            {
                self.ack(&decided.value.reservation);
            }
        }
        self.stop_and_crash(true);
        self.check_durability("after an fsync error");
    }

    /// Damages a segment that recovery reads and that is not the last: recovery must refuse;
    /// then the byte is repaired and recovery must succeed.
    fn flip_a_bit_in_an_old_segment(&mut self) {
        self.engine = None;
        self.disk.crash();
        self.restarts += 1;
        let names = self.disk.names();
        let floor = names
            .iter()
            .filter_map(|n| {
                n.strip_prefix("snapshot-")?
                    .strip_suffix(".snap")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        let mut segments: Vec<(u64, String)> = names
            .iter()
            .filter_map(|n| {
                let lsn = n.strip_prefix("wal-")?.strip_suffix(".seg")?.parse().ok()?;
                Some((lsn, n.clone()))
            })
            .collect();
        segments.sort();
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= floor + 1)
            .unwrap_or(0);
        // Segments read by recovery, all but the last, with at least one frame.
        let candidates: Vec<String> = segments
            .get(start..segments.len().saturating_sub(1))
            .unwrap_or(&[])
            .iter()
            .map(|(_, n)| n.clone())
            .filter(|n| self.disk.contents(n).is_some_and(|b| b.len() > 64))
            .collect();
        if candidates.is_empty() {
            self.start();
            return;
        }
        let name = candidates[self.rng.random_range(0..candidates.len())].clone();
        let Some(original) = self.disk.contents(&name) else {
            self.start();
            return;
        };
        let mut damaged = original.clone();
        let at = self.rng.random_range(32..damaged.len());
        damaged[at] ^= 1 << self.rng.random_range(0..8u32);
        let _ = self.disk.write_whole(&name, &damaged);
        self.start();
        if self.engine.take().is_some() {
            self.violation(format!(
                "recovery accepted {name} with a flipped bit at offset {at}"
            ));
            return;
        }
        self.violations.pop(); // the refusal start() reported is the expected outcome
        let _ = self.disk.write_whole(&name, &original);
        self.start();
        self.check_durability("after a refused corruption was repaired");
    }

    fn clean_restart(&mut self) {
        if let Some(engine) = self.engine.take()
            && let Err(e) = engine.shutdown()
        {
            self.violation(format!("a clean shutdown failed: {e}"));
            return;
        }
        self.restarts += 1;
        self.start();
        self.check_durability("after a clean restart");
    }

    /// Every acknowledged decision survived, as acknowledged or moved on from there.
    fn check_durability(&mut self, when: &str) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        let mut lost = Vec::new();
        for (id, acked) in &self.acked {
            match engine.reservation(*id) {
                None => lost.push(format!("reservation {id} is gone")),
                Some(r) if r.holder != acked.holder || r.caravan != acked.caravan => {
                    lost.push(format!("reservation {id} changed holder or caravan"))
                }
                Some(r) if r.created_ms != acked.created_ms => {
                    lost.push(format!("reservation {id} changed its creation time"))
                }
                Some(r) if progress(r.status, r.stage) < progress(acked.status, acked.stage) => {
                    lost.push(format!(
                        "reservation {id} went back from {:?}/{:?} to {:?}/{:?}",
                        acked.status, acked.stage, r.status, r.stage
                    ))
                }
                Some(r) if !acked.status.is_live() && r.status != acked.status => {
                    lost.push(format!(
                        "ended reservation {id} changed from {:?} to {:?}",
                        acked.status, r.status
                    ))
                }
                Some(_) => {}
            }
        }
        for (holder, (receiver, code)) in &self.transfers {
            if engine.authenticate(*receiver, code).ok() != Some(*holder) {
                lost.push(format!(
                    "the transfer of receipt {holder} to {receiver} is gone"
                ));
            }
            let giver = self
                .catalog
                .holder_facts(*holder)
                .map_or(0, |h| h.national_id);
            let giver_code = self.catalog.holder(*holder).map_or("", |h| h.tracking_code);
            if engine.authenticate(giver, giver_code).is_ok() {
                lost.push(format!("the giver of receipt {holder} authenticates again"));
            }
        }
        if let Some(first) = lost.first() {
            self.violation(format!("{when}: {first} ({} in all)", lost.len()));
        }
    }

    /// The invariants, and that no reservation exists that nobody asked for.
    fn check(&mut self, step: u32) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        if let Err(e) = engine.check_invariants() {
            self.violation(format!("step {step}: invariant: {e}"));
            return;
        }
        let mut registered = BTreeSet::new();
        for r in engine.reservations(&ReservationFilter::default(), 0, usize::MAX) {
            if !registered.insert(r.holder) {
                self.violation(format!(
                    "step {step}: receipt {} registered twice",
                    r.holder
                ));
                return;
            }
            let asked = self.asked.contains(&(r.holder, r.caravan));
            // A dispatch change or a transfer may have moved the holder to another city.
            let offered = self.joined.contains(&r.holder)
                && engine.holder_profile(r.holder).map(|h| h.city)
                    == self
                        .catalog
                        .caravans()
                        .get(r.caravan.index())
                        .map(|c| c.city);
            if !asked && !offered {
                self.violation(format!(
                    "step {step}: reservation {} for holder {} in caravan {} that nobody asked for",
                    r.id, r.holder, r.caravan
                ));
                return;
            }
        }
    }

    /// A digest of every reservation and of the waiting lists.
    fn digest(&self) -> u64 {
        let mut hasher = Fnv64::default();
        if let Some(engine) = &self.engine {
            for r in engine.reservations(&ReservationFilter::default(), 0, usize::MAX) {
                (r.id.secret, r.id.slot, r.holder, r.caravan).hash(&mut hasher);
                (r.status as u8, r.stage.map(Stage::code), r.deadline_ms).hash(&mut hasher);
                (r.created_ms, r.updated_ms).hash(&mut hasher);
            }
            let stats = engine.stats();
            (stats.seats_free, stats.waiting, stats.by_status).hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// How far along a reservation is: an offer, each stage in turn, confirmed, ended.
fn progress(status: Status, stage: Option<Stage>) -> u8 {
    match status {
        Status::Offered => 0,
        Status::Held => 1 + stage.map_or(0, Stage::code),
        Status::Confirmed => 10,
        _ => 11,
    }
}

/// FNV-1a, 64 bits: a digest whose value does not depend on the platform or the Rust release.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A small random catalog: 1-3 provinces, 1-2 cities each, 1-3 caravans of 1-4 seats per city,
/// 3-8 holders per city (about one in ten needing conversion, one in ten called too late).
fn random_catalog(rng: &mut ChaCha8Rng) -> Catalog {
    let mut b = CatalogBuilder::new();
    let mut national_id = 1_000u64;
    for p in 0..rng.random_range(1..=3u32) {
        let Ok(province) = b.add_province(p + 1, &format!("P{p}"), &format!("P{p}")) else {
            continue;
        };
        for c in 0..rng.random_range(1..=2u32) {
            let city = b.city(province, &format!("C{p}{c}"));
            for k in 0..rng.random_range(1..=3u32) {
                let _ = b.add_caravan(Caravan {
                    id: format!("v{p}{c}{k}"),
                    province,
                    city,
                    manager: "M".into(),
                    phone: "0".into(),
                    price_group: ["A", "B"][rng.random_range(0..2)].into(),
                    route: [Route::MedinaFirst, Route::MedinaSecond][rng.random_range(0..2)],
                    departure_day: 18_000 + rng.random_range(0..30),
                    price_rial: 1,
                    capacity: rng.random_range(1..=4),
                });
            }
            for _ in 0..rng.random_range(3..=8u32) {
                let roll = rng.random_range(0..10u32);
                let status = if roll == 0 {
                    ReceiptStatus::NeedsConversion
                } else {
                    ReceiptStatus::Valid
                };
                let day = if roll == 1 {
                    CUTOFF_DAY + 10
                } else {
                    100 + (national_id % 40) as i32
                };
                let _ = b.add_holder(
                    national_id,
                    &format!("t{national_id}"),
                    &format!("r{national_id}"),
                    day,
                    status,
                    province,
                    city,
                );
                national_id += 1;
            }
        }
    }
    b.build()
}

/// One wave open since the start; stage deadlines of 5-60 s each; offers of 3-30 s.
fn random_season(rng: &mut ChaCha8Rng) -> Season {
    Season {
        schedule: Schedule {
            waves: vec![Wave {
                name: "main".into(),
                receipts_until_day: CUTOFF_DAY,
                opens_at_ms: T0_MS,
                provinces: None,
                admits_earlier_receipts: false,
            }],
        },
        stages: Stage::ALL
            .iter()
            .map(|&s| (s, rng.random_range(5_000..60_000)))
            .collect(),
        offer_deadline_ms: rng.random_range(3_000..30_000),
        rooms: Vec::new(),
    }
}
