//! Model-based property tests: random sequences of every operation, deadlines and clock moves
//! run against the engine and against a small reference model that states the rules plainly;
//! after each step both must agree. A second property adds snapshots and crashes with
//! recovery at random steps. Case counts: `PROPTEST_CASES` (default 1,000 each).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{CUTOFF_DAY, T0, catalog, season};
use miqat_engine::catalog::{CaravanIdx, Catalog, HolderIdx, ReceiptStatus};
use miqat_engine::clock::ManualClock;
use miqat_engine::model::{OperatorEvent, Status};
use miqat_engine::season::Stage;
use miqat_engine::wal::{MemStorage, Storage};
use miqat_engine::{Engine, EngineConfig, EngineError};
use proptest::prelude::*;

const HOLDERS_PER_CITY: u32 = 3;
const STAGES_MS: [i64; 4] = [10_000, 20_000, 30_000, 40_000];
const OFFER_MS: i64 = 5_000;

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        holder: usize,
        caravan: usize,
        key: Option<u8>,
    },
    Cancel {
        holder: usize,
    },
    Accept {
        holder: usize,
    },
    Event {
        holder: usize,
        event: usize,
    },
    Join {
        holder: usize,
    },
    Tick {
        ms: i64,
    },
    Snapshot,
    Crash,
}

fn op(with_crashes: bool) -> impl Strategy<Value = Op> {
    let holders = (HOLDERS_PER_CITY * 3 + 2) as usize;
    let crash_weight = if with_crashes { 2 } else { 0 };
    prop_oneof![
        8 => (0..holders, 0..4usize, proptest::option::of(0..3u8))
            .prop_map(|(holder, caravan, key)| Op::Reserve { holder, caravan, key }),
        3 => (0..holders).prop_map(|holder| Op::Cancel { holder }),
        2 => (0..holders).prop_map(|holder| Op::Accept { holder }),
        4 => (0..holders, 0..6usize).prop_map(|(holder, event)| Op::Event { holder, event }),
        3 => (0..holders).prop_map(|holder| Op::Join { holder }),
        4 => prop_oneof![Just(1i64), Just(4_999), Just(5_000), Just(9_999), Just(10_000), 0..45_000i64]
            .prop_map(|ms| Op::Tick { ms }),
        crash_weight => Just(Op::Snapshot),
        crash_weight => Just(Op::Crash),
    ]
}

/// The outcome of one operation, compared by kind only (ids differ by construction).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Replayed,
    Skipped,
    Err(String),
}

fn outcome_of<T>(result: Result<T, EngineError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Err(error_name(&e)),
    }
}

/// The error as clients tell errors apart: its `EngineError::code()`.
fn error_name(e: &EngineError) -> String {
    e.code().to_owned()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MRes {
    holder: usize,
    caravan: usize,
    province: u16,
    status: Status,
    stage: Option<Stage>,
    deadline_ms: Option<i64>,
    /// Ended by the holder's own cancel (a repeated cancel answers it again).
    cancelled_by_holder: bool,
}

/// The reference: the registration rules written as plainly as possible.
struct Model {
    now_ms: i64,
    holders: Vec<(u16, u32, i32, bool)>, // province, city, receipt day, valid receipt
    caravans: Vec<(u16, u32, u32)>,      // province, city, capacity
    res: Vec<MRes>,
    latest: HashMap<usize, usize>,
    waiting: Vec<(usize, i32, u64)>,
    next_join: u64,
    idem: HashMap<(usize, u8), (usize, usize)>,
}

impl Model {
    fn new(cat: &Catalog) -> Model {
        let holders = (0..cat.holder_count() as u32)
            .map(|i| {
                let h = cat.holder(HolderIdx(i)).unwrap();
                (
                    h.province.0,
                    h.city.0,
                    h.receipt_day,
                    h.receipt_status == ReceiptStatus::Valid,
                )
            })
            .collect();
        let caravans = cat
            .caravans()
            .iter()
            .map(|c| (c.province.0, c.city.0, c.capacity))
            .collect();
        Model {
            now_ms: T0,
            holders,
            caravans,
            res: Vec::new(),
            latest: HashMap::new(),
            waiting: Vec::new(),
            next_join: 0,
            idem: HashMap::new(),
        }
    }

    fn occupied(&self, caravan: usize) -> u32 {
        self.res
            .iter()
            .filter(|r| r.caravan == caravan && r.status.is_live())
            .count() as u32
    }

    /// One registration a season: a live one is `already_reserved`, an ended one final.
    fn registered(&self, holder: usize) -> Option<Outcome> {
        let &i = self.latest.get(&holder)?;
        Some(if self.res[i].status.is_live() {
            Model::err("already_reserved")
        } else {
            Model::err("registration_ended")
        })
    }

    fn err(name: &str) -> Outcome {
        Outcome::Err(name.to_owned())
    }

    fn end(&mut self, i: usize, status: Status) {
        let caravan = self.res[i].caravan;
        let r = &mut self.res[i];
        r.status = status;
        r.stage = None;
        r.deadline_ms = None;
        let city = self.caravans[caravan].1;
        let head = self
            .waiting
            .iter()
            .filter(|(h, _, _)| self.holders[*h].1 == city)
            .min_by_key(|(_, day, seq)| (*day, *seq))
            .map(|w| w.0);
        if let Some(holder) = head {
            self.waiting.retain(|w| w.0 != holder);
            self.res.push(MRes {
                holder,
                caravan,
                province: self.caravans[caravan].0,
                status: Status::Offered,
                stage: None,
                deadline_ms: Some(self.now_ms + OFFER_MS),
                cancelled_by_holder: false,
            });
            self.latest.insert(holder, self.res.len() - 1);
        }
    }

    /// Expires the holder's latest reservation if its deadline passed; true if it did.
    fn expire_if_due(&mut self, i: usize) -> bool {
        let r = &self.res[i];
        if matches!(r.status, Status::Held | Status::Offered)
            && r.deadline_ms.is_some_and(|d| d <= self.now_ms)
        {
            self.end(i, Status::Expired);
            return true;
        }
        false
    }

    fn eligible(&self, holder: usize) -> Result<(), Outcome> {
        let (_, _, day, valid) = self.holders[holder];
        if !valid {
            return Err(Model::err("receipt_needs_conversion"));
        }
        if day > CUTOFF_DAY {
            return Err(Model::err("not_called"));
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::Reserve {
                holder,
                caravan,
                key,
            } => self.reserve(holder, caravan, key),
            Op::Cancel { holder } => self.on_latest(holder, |m, i| match m.res[i].status {
                Status::Offered | Status::Held | Status::Confirmed => {
                    m.end(i, Status::Cancelled);
                    m.res[i].cancelled_by_holder = true;
                    Outcome::Ok
                }
                // A repeated cancel answers the cancelled reservation again.
                Status::Cancelled if m.res[i].cancelled_by_holder => Outcome::Ok,
                _ => Model::err("invalid_transition"),
            }),
            Op::Accept { holder } => self.on_latest(holder, |m, i| {
                if m.res[i].status != Status::Offered {
                    return Model::err("invalid_transition");
                }
                let r = &mut m.res[i];
                r.status = Status::Held;
                r.stage = Some(Stage::Documents);
                r.deadline_ms = Some(m.now_ms + STAGES_MS[0]);
                Outcome::Ok
            }),
            Op::Event { holder, event } => {
                let event = OperatorEvent::ALL[event];
                self.on_latest(holder, |m, i| m.event(i, event))
            }
            Op::Join { holder } => self.join(holder),
            Op::Tick { ms } => {
                self.now_ms += ms;
                let mut due: Vec<usize> = (0..self.res.len())
                    .filter(|&i| {
                        let r = &self.res[i];
                        matches!(r.status, Status::Held | Status::Offered)
                            && r.deadline_ms.is_some_and(|d| d <= self.now_ms)
                    })
                    .collect();
                due.sort_by_key(|&i| (self.res[i].province, self.res[i].deadline_ms, i));
                for i in due {
                    self.end(i, Status::Expired);
                }
                Outcome::Ok
            }
            Op::Snapshot | Op::Crash => Outcome::Ok,
        }
    }

    fn on_latest(
        &mut self,
        holder: usize,
        f: impl FnOnce(&mut Model, usize) -> Outcome,
    ) -> Outcome {
        let Some(&i) = self.latest.get(&holder) else {
            return Outcome::Skipped;
        };
        if self.expire_if_due(i) {
            return Model::err("invalid_transition");
        }
        f(self, i)
    }

    fn event(&mut self, i: usize, event: OperatorEvent) -> Outcome {
        let (status, stage) = (self.res[i].status, self.res[i].stage);
        match event.completes() {
            Some(done) => {
                if status != Status::Held || stage != Some(done) {
                    return Model::err("invalid_transition");
                }
                let pos = Stage::ALL.iter().position(|s| *s == done).unwrap();
                let r = &mut self.res[i];
                match Stage::ALL.get(pos + 1) {
                    Some(next) => {
                        r.stage = Some(*next);
                        r.deadline_ms = Some(self.now_ms + STAGES_MS[pos + 1]);
                    }
                    None => {
                        r.status = Status::Confirmed;
                        r.stage = None;
                        r.deadline_ms = None;
                    }
                }
                Outcome::Ok
            }
            None if event == OperatorEvent::MedicalRejected => {
                if !matches!(status, Status::Held | Status::Confirmed) {
                    return Model::err("invalid_transition");
                }
                self.end(i, Status::Rejected);
                Outcome::Ok
            }
            None => {
                if !status.is_live() {
                    return Model::err("invalid_transition");
                }
                self.end(i, Status::Cancelled);
                Outcome::Ok
            }
        }
    }

    fn reserve(&mut self, holder: usize, caravan: usize, key: Option<u8>) -> Outcome {
        if let Some(k) = key
            && let Some(&(c, i)) = self.idem.get(&(holder, k))
        {
            let _ = i;
            return if c == caravan {
                Outcome::Replayed
            } else {
                Model::err("idempotency_key_reused")
            };
        }
        let (province, city, _, valid) = self.holders[holder];
        if !valid {
            return Model::err("receipt_needs_conversion");
        }
        let (c_province, c_city, capacity) = self.caravans[caravan];
        if c_province != province || c_city != city {
            return Model::err("province_mismatch");
        }
        if let Err(e) = self.eligible(holder) {
            return e;
        }
        if let Some(e) = self.registered(holder) {
            return e;
        }
        if self.occupied(caravan) >= capacity {
            return Model::err("caravan_full");
        }
        self.res.push(MRes {
            holder,
            caravan,
            province,
            status: Status::Held,
            stage: Some(Stage::Documents),
            deadline_ms: Some(self.now_ms + STAGES_MS[0]),
            cancelled_by_holder: false,
        });
        let i = self.res.len() - 1;
        self.latest.insert(holder, i);
        self.waiting.retain(|w| w.0 != holder);
        if let Some(k) = key {
            self.idem.insert((holder, k), (caravan, i));
        }
        Outcome::Ok
    }

    fn join(&mut self, holder: usize) -> Outcome {
        let (_, city, day, valid) = self.holders[holder];
        if !valid {
            return Model::err("receipt_needs_conversion");
        }
        if self.waiting.iter().any(|w| w.0 == holder) {
            return Outcome::Ok;
        }
        if let Err(e) = self.eligible(holder) {
            return e;
        }
        if let Some(e) = self.registered(holder) {
            return e;
        }
        let free_in_city = (0..self.caravans.len())
            .any(|c| self.caravans[c].1 == city && self.occupied(c) < self.caravans[c].2);
        if free_in_city {
            return Model::err("seats_available");
        }
        self.waiting.push((holder, day, self.next_join));
        self.next_join += 1;
        Outcome::Ok
    }

    fn position(&self, holder: usize) -> Option<u64> {
        let (_, day, seq) = *self.waiting.iter().find(|w| w.0 == holder)?;
        let province = self.holders[holder].0;
        Some(
            self.waiting
                .iter()
                .filter(|w| self.holders[w.0].0 == province && (w.1, w.2) < (day, seq))
                .count() as u64
                + 1,
        )
    }
}

struct Harness {
    cat: Arc<Catalog>,
    clock: ManualClock,
    storage: Option<MemStorage>,
    engine: Arc<Engine>,
}

impl Harness {
    fn new(logged: bool) -> Harness {
        let cat = catalog(HOLDERS_PER_CITY);
        let clock = ManualClock::new(T0);
        let storage = logged.then(MemStorage::new);
        let engine = Harness::start(&cat, &clock, storage.as_ref());
        Harness {
            cat,
            clock,
            storage,
            engine,
        }
    }

    fn start(cat: &Arc<Catalog>, clock: &ManualClock, storage: Option<&MemStorage>) -> Arc<Engine> {
        let config = EngineConfig::default();
        match storage {
            None => {
                Engine::in_memory(cat.clone(), season(), Arc::new(clock.clone()), config).unwrap()
            }
            Some(storage) => {
                let storage: Arc<dyn Storage> = Arc::new(storage.clone());
                Engine::open(
                    cat.clone(),
                    season(),
                    Arc::new(clock.clone()),
                    storage,
                    config,
                )
                .unwrap()
                .0
            }
        }
    }

    fn holder(&self, h: usize) -> HolderIdx {
        HolderIdx(h as u32)
    }

    fn run(&mut self, op: &Op) -> Outcome {
        let e = &self.engine;
        let latest = |h: usize| e.latest_reservation(HolderIdx(h as u32)).map(|v| v.id);
        match *op {
            Op::Reserve {
                holder,
                caravan,
                key,
            } => {
                let key = key.map(|k| vec![b'k', k]);
                match e.reserve(
                    self.holder(holder),
                    CaravanIdx(caravan as u32),
                    key.as_deref(),
                ) {
                    Ok(c) => {
                        e.wait(&c).unwrap();
                        if c.value.replayed {
                            Outcome::Replayed
                        } else {
                            Outcome::Ok
                        }
                    }
                    Err(err) => Outcome::Err(error_name(&err)),
                }
            }
            Op::Cancel { holder } => match latest(holder) {
                None => Outcome::Skipped,
                Some(id) => self.acked(e.cancel(self.holder(holder), id)),
            },
            Op::Accept { holder } => match latest(holder) {
                None => Outcome::Skipped,
                Some(id) => self.acked(e.accept_offer(self.holder(holder), id)),
            },
            Op::Event { holder, event } => match latest(holder) {
                None => Outcome::Skipped,
                Some(id) => self.acked(e.operator_event(id, OperatorEvent::ALL[event])),
            },
            Op::Join { holder } => self.acked(e.join_waitlist(self.holder(holder))),
            Op::Tick { ms } => {
                self.clock.advance(ms);
                let (_, ticket) = e.expire_due().unwrap();
                e.wait(&miqat_engine::Committed { value: (), ticket })
                    .unwrap();
                Outcome::Ok
            }
            Op::Snapshot => {
                e.snapshot().unwrap();
                Outcome::Ok
            }
            Op::Crash => {
                if let Some(storage) = &self.storage {
                    // Power loss: whatever was not synced is gone; acknowledged work must not be.
                    storage.crash();
                    self.engine = Harness::start(&self.cat, &self.clock, Some(storage));
                }
                Outcome::Ok
            }
        }
    }

    fn acked<T>(&self, result: Result<miqat_engine::Committed<T>, EngineError>) -> Outcome {
        match result {
            Ok(c) => {
                self.engine.wait(&c).unwrap();
                Outcome::Ok
            }
            Err(e) => outcome_of::<()>(Err(e)),
        }
    }

    /// Compares every observable fact with the model; returns the first difference.
    fn check(&self, model: &Model) -> Result<(), String> {
        let e = &self.engine;
        e.check_invariants()?;
        for c in 0..model.caravans.len() {
            let want = model.caravans[c].2 - model.occupied(c);
            let got = e.free_seats(CaravanIdx(c as u32));
            if want != got {
                return Err(format!("caravan {c}: free {got}, model {want}"));
            }
        }
        for h in 0..model.holders.len() {
            let want = model.latest.get(&h).map(|&i| {
                let r = &model.res[i];
                (
                    CaravanIdx(r.caravan as u32),
                    r.status,
                    r.stage,
                    r.deadline_ms,
                )
            });
            let got = e
                .latest_reservation(HolderIdx(h as u32))
                .map(|v| (v.caravan, v.status, v.stage, v.deadline_ms));
            if want != got {
                return Err(format!("holder {h}: engine {got:?}, model {want:?}"));
            }
            let got_pos = e
                .waitlist_status(HolderIdx(h as u32))
                .and_then(|s| s.position);
            if got_pos != model.position(h) {
                return Err(format!(
                    "holder {h}: waiting position {got_pos:?}, model {:?}",
                    model.position(h)
                ));
            }
        }
        Ok(())
    }
}

fn run_case(ops: &[Op], logged: bool) -> Result<(), TestCaseError> {
    let mut harness = Harness::new(logged);
    let mut model = Model::new(&harness.cat);
    for (step, op) in ops.iter().enumerate() {
        let got = harness.run(op);
        let want = model.apply(op);
        prop_assert_eq!(&got, &want, "step {} {:?}", step, op);
        if let Err(diff) = harness.check(&model) {
            return Err(TestCaseError::fail(format!(
                "after step {step} {op:?}: {diff}"
            )));
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model(ops in proptest::collection::vec(op(false), 1..60)) {
        run_case(&ops, false)?;
    }

    #[test]
    fn engine_agrees_with_the_model_across_crashes(ops in proptest::collection::vec(op(true), 1..60)) {
        run_case(&ops, true)?;
    }
}
