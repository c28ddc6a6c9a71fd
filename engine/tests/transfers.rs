//! Property tests of receipt priority transfers and dispatch-city changes: random transfers,
//! dispatch changes, reservations by givers, receivers and bystanders, clock moves, snapshots
//! and crashes. After every step: no receipt has a second registration, no person holds two
//! receipts, a giver can no longer register, a receiver authenticates to the receipt they got,
//! and recovery from the log gives back the same owners and reservations.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{T0, fixture};
use miqat_engine::catalog::{CaravanIdx, Catalog, CityIdx, HolderIdx, ProvinceIdx};
use miqat_engine::clock::ManualClock;
use miqat_engine::wal::{MemStorage, Storage};
use miqat_engine::{Engine, EngineConfig, EngineError, ReservationFilter, TransferRequest};
use proptest::prelude::*;

/// One province, two cities, caravans smaller than the crowd; the wave opens at T0+30s
/// (transfers close 10 s before).
const WORLD: &str = "
    province 1 North شمال: city A: a1 cap 2; city B: b1 cap 1
    holders: ids from 1000; receipts from day 100; 3 per city
    wave main until day 150 opens T0+30s
    stages: documents 10s, first_payment 20s, medical 30s, final_payment 40s; offers 5s
";
/// People who hold no receipt of the catalog: national IDs 5000 + n.
const NEWCOMERS: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    /// Receipt `receipt` (a catalog holder's index) to person `to`.
    Transfer {
        receipt: u32,
        to: usize,
        city: u8,
    },
    Dispatch {
        person: usize,
        city: u8,
    },
    /// Person `person` authenticates and reserves.
    Reserve {
        person: usize,
        caravan: u32,
    },
    Tick {
        ms: i64,
    },
    Snapshot,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..6, 0usize..10, 0u8..2).prop_map(|(receipt, to, city)| Op::Transfer { receipt, to, city }),
        1 => (0usize..10, 0u8..2).prop_map(|(person, city)| Op::Dispatch { person, city }),
        3 => (0usize..10, 0u32..2).prop_map(|(person, caravan)| Op::Reserve { person, caravan }),
        1 => (1i64..15_000).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Crash),
    ]
}

struct Harness {
    catalog: Arc<Catalog>,
    clock: ManualClock,
    storage: MemStorage,
    engine: Arc<Engine>,
    /// Everyone: the catalog's holders, then the newcomers, as (national ID, tracking code).
    people: Vec<(u64, String)>,
    /// Who holds each receipt now, as the test saw transfers succeed.
    owner: HashMap<HolderIdx, u64>,
    givers: HashSet<u64>,
}

impl Harness {
    fn new() -> Harness {
        let catalog = fixture::parse(WORLD).catalog;
        let clock = ManualClock::new(T0);
        let storage = MemStorage::new();
        let engine = Harness::start(&catalog, &clock, &storage);
        let mut people = Vec::new();
        let mut owner = HashMap::new();
        for i in 0..catalog.holder_count() as u32 {
            let h = catalog.holder(HolderIdx(i)).unwrap();
            people.push((h.national_id, h.tracking_code.to_owned()));
            owner.insert(HolderIdx(i), h.national_id);
        }
        for n in 0..NEWCOMERS {
            people.push((5000 + n, format!("new{n}")));
        }
        Harness {
            catalog,
            clock,
            storage,
            engine,
            people,
            owner,
            givers: HashSet::new(),
        }
    }

    fn start(catalog: &Arc<Catalog>, clock: &ManualClock, storage: &MemStorage) -> Arc<Engine> {
        let storage: Arc<dyn Storage> = Arc::new(storage.clone());
        let season = fixture::parse(WORLD).season;
        Engine::open(
            catalog.clone(),
            season,
            Arc::new(clock.clone()),
            storage,
            EngineConfig::default(),
        )
        .unwrap()
        .0
    }

    fn city(&self, n: u8) -> CityIdx {
        let name = if n == 0 { "A" } else { "B" };
        self.catalog.city_by_name(ProvinceIdx(0), name).unwrap()
    }

    fn run(&mut self, op: &Op) -> Result<(), String> {
        let e = Arc::clone(&self.engine);
        match *op {
            Op::Transfer { receipt, to, city } => {
                let (national_id, code) = self.people[to % self.people.len()].clone();
                let result = e.transfer(TransferRequest {
                    holder: HolderIdx(receipt),
                    national_id,
                    tracking_code: &code,
                    city: self.city(city),
                    principal: "office-test",
                });
                match result {
                    Ok(done) => {
                        e.wait(&done).unwrap();
                        let holds_one = self.owner.values().any(|&o| o == national_id)
                            || self.givers.contains(&national_id);
                        if holds_one {
                            return Err(format!("{national_id} received a second receipt"));
                        }
                        let giver = self.owner.insert(HolderIdx(receipt), national_id).unwrap();
                        self.givers.insert(giver);
                    }
                    Err(
                        EngineError::TransferUsed
                        | EngineError::TransferClosed
                        | EngineError::GiverHasReservation
                        | EngineError::ReceiverHoldsReceipt,
                    ) => {}
                    Err(other) => return Err(format!("transfer: unexpected {other}")),
                }
            }
            Op::Dispatch { person, city } => {
                let (national_id, _) = self.people[person % self.people.len()];
                if let Some(holder) = e.holder_now(national_id) {
                    match e.change_dispatch(holder, self.city(city), "office-test") {
                        Ok(done) => e.wait(&done).unwrap(),
                        Err(EngineError::DispatchFrozen) => {}
                        Err(other) => return Err(format!("dispatch: unexpected {other}")),
                    }
                }
            }
            Op::Reserve { person, caravan } => {
                let (national_id, code) = self.people[person % self.people.len()].clone();
                match e.authenticate(national_id, &code) {
                    Ok(holder) => {
                        if self.givers.contains(&national_id)
                            && !self.owner.values().any(|&o| o == national_id)
                        {
                            return Err(format!("giver {national_id} authenticated"));
                        }
                        if self.owner.get(&holder) != Some(&national_id) {
                            return Err(format!("{national_id} authenticated to {holder:?}"));
                        }
                        if let Ok(done) = e.reserve(holder, CaravanIdx(caravan), None) {
                            e.wait(&done).unwrap();
                        }
                    }
                    Err(EngineError::ReceiptTransferred) => {
                        if !self.givers.contains(&national_id) {
                            return Err(format!("{national_id} refused as a giver"));
                        }
                    }
                    Err(EngineError::InvalidCredentials) => {
                        if self.owner.values().any(|&o| o == national_id) {
                            return Err(format!("the owner {national_id} cannot authenticate"));
                        }
                    }
                    Err(other) => return Err(format!("authenticate: unexpected {other}")),
                }
            }
            Op::Tick { ms } => self.clock.advance(ms),
            Op::Snapshot => e.snapshot().map_err(|err| err.to_string())?,
            Op::Crash => {
                self.storage.crash();
                self.engine = Harness::start(&self.catalog, &self.clock, &self.storage);
            }
        }
        Ok(())
    }

    /// What must hold after every step.
    fn check(&self) -> Result<(), String> {
        let e = &self.engine;
        e.check_invariants()?;
        let all = e.reservations(&ReservationFilter::default(), 0, usize::MAX);
        let mut per_receipt: HashMap<HolderIdx, usize> = HashMap::new();
        let mut per_person: HashMap<u64, usize> = HashMap::new();
        for r in &all {
            *per_receipt.entry(r.holder).or_default() += 1;
            *per_person.entry(r.national_id).or_default() += 1;
            if self.owner.get(&r.holder) != Some(&r.national_id) {
                return Err(format!("{r:?} does not name the receipt's owner"));
            }
        }
        if let Some((receipt, n)) = per_receipt.iter().find(|(_, n)| **n > 1) {
            return Err(format!("receipt {receipt:?} registered {n} times"));
        }
        if let Some((person, n)) = per_person.iter().find(|(_, n)| **n > 1) {
            return Err(format!("person {person} registered {n} times"));
        }
        for (national_id, _) in &self.people {
            let want = self
                .owner
                .iter()
                .find(|(_, o)| *o == national_id)
                .map(|(h, _)| *h);
            let got = e.holder_now(*national_id);
            if got != want {
                return Err(format!("{national_id} holds {got:?}, expected {want:?}"));
            }
        }
        Ok(())
    }
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut harness = Harness::new();
    for (step, op) in ops.iter().enumerate() {
        let checked = harness.run(op).and_then(|()| harness.check());
        if let Err(why) = checked {
            return Err(TestCaseError::fail(format!(
                "after step {step} {op:?}: {why}"
            )));
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn transfers_never_register_one_receipt_twice(ops in proptest::collection::vec(op(), 1..50)) {
        run_case(&ops)?;
    }
}

#[test]
fn a_transfer_and_a_dispatch_change_survive_a_snapshot_and_a_replay() {
    let mut h = Harness::new();
    h.run(&Op::Transfer {
        receipt: 0,
        to: 6,
        city: 1,
    })
    .unwrap();
    h.run(&Op::Dispatch { person: 1, city: 1 }).unwrap();
    h.run(&Op::Snapshot).unwrap();
    h.run(&Op::Transfer {
        receipt: 2,
        to: 7,
        city: 0,
    })
    .unwrap();
    h.run(&Op::Crash).unwrap();
    h.check().unwrap();
    let e = &h.engine;
    let receiver = h.people[6].0;
    assert_eq!(e.holder_now(receiver), Some(HolderIdx(0)));
    assert_eq!(e.holder_now(h.people[7].0), Some(HolderIdx(2)));
    let profile = e.holder_profile(HolderIdx(1)).unwrap();
    assert_eq!(profile.city, h.city(1));
    let profile = e.holder_profile(HolderIdx(0)).unwrap();
    assert_eq!(profile.national_id, receiver);
    assert_eq!(profile.transferred_from, Some(h.people[0].0));
    assert_eq!(
        e.authenticate(h.people[0].0, &h.people[0].1)
            .unwrap_err()
            .code(),
        "receipt_transferred"
    );
    // The receiver, now in city B, registers in b1 at the opening.
    h.run(&Op::Tick { ms: 30_000 }).unwrap();
    let e = &h.engine;
    let holder = e.authenticate(receiver, &h.people[6].1).unwrap();
    let b1 = h.catalog.caravan_by_id("b1").unwrap();
    let done = e.reserve(holder, b1, None).unwrap();
    e.wait(&done).unwrap();
    h.run(&Op::Crash).unwrap();
    h.check().unwrap();
    let all = h
        .engine
        .reservations(&ReservationFilter::default(), 0, usize::MAX);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].national_id, receiver);
}

/// In cluster mode a transfer and a dispatch change travel as [`WriteCommand`] bytes in the
/// consensus log: every replica that executes them in order ends with the same owners,
/// cities and refusals, and a transfer cannot be replayed into a second one.
#[test]
fn transfers_and_dispatch_changes_run_alike_on_every_replica_from_their_bytes() {
    use miqat_engine::engine::{WriteAnswer, WriteCommand};

    let catalog = fixture::parse(WORLD).catalog;
    let replica = || {
        Engine::in_memory(
            Arc::clone(&catalog),
            fixture::parse(WORLD).season,
            Arc::new(ManualClock::new(T0)),
            EngineConfig::default(),
        )
        .unwrap()
    };
    let (a, b) = (replica(), replica());
    let city_b = catalog.city_by_name(ProvinceIdx(0), "B").unwrap();
    let commands = [
        WriteCommand::Transfer {
            holder: HolderIdx(0),
            national_id: 5000,
            tracking_code: "new0".into(),
            city: city_b,
            principal: "office-north".into(),
        },
        WriteCommand::Dispatch {
            holder: HolderIdx(1),
            city: city_b,
            principal: "office-north".into(),
        },
        // The same receipt again: refused on every replica.
        WriteCommand::Transfer {
            holder: HolderIdx(0),
            national_id: 5001,
            tracking_code: "new1".into(),
            city: city_b,
            principal: "office-north".into(),
        },
    ];
    let mut answers = Vec::new();
    for command in &commands {
        let mut bytes = Vec::new();
        command.encode(&mut bytes);
        let decoded = WriteCommand::decode(&bytes).unwrap();
        assert_eq!(&decoded, command);
        let on_a = a.execute(&decoded, T0 + 1_000, 7).map_err(|e| e.code());
        let on_b = b.execute(&decoded, T0 + 1_000, 7).map_err(|e| e.code());
        assert_eq!(on_a, on_b);
        answers.push(on_a);
    }
    assert_eq!(
        answers,
        vec![
            Ok(WriteAnswer::ProfileChanged),
            Ok(WriteAnswer::ProfileChanged),
            Err("transfer_used"),
        ]
    );
    for replica in [&a, &b] {
        assert_eq!(replica.holder_now(5000), Some(HolderIdx(0)));
        assert_eq!(replica.holder_now(5001), None);
        assert_eq!(replica.holder_profile(HolderIdx(1)).unwrap().city, city_b);
        assert_eq!(replica.authenticate(5000, "new0").unwrap(), HolderIdx(0));
    }
    // A command cut short or followed by stray bytes is refused, never half read.
    let mut bytes = Vec::new();
    commands[0].encode(&mut bytes);
    assert!(WriteCommand::decode(&bytes[..bytes.len() - 1]).is_err());
    bytes.push(0);
    assert!(WriteCommand::decode(&bytes).is_err());
}
