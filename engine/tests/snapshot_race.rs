//! A snapshot taken while records are staged but not yet on disk: it must not be written
//! before they are durable, or a crash could bring back decisions the log never got (and leave
//! a sequence gap that refuses the next start). Segment writes are held at a gate to force the
//! interleaving.
#![allow(clippy::unwrap_used)]

mod common;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::{T0, catalog, season};
use miqat_engine::clock::ManualClock;
use miqat_engine::wal::{MemStorage, Storage, StorageFile};
use miqat_engine::{Engine, EngineConfig, EngineError};

use parking_lot::{Condvar, Mutex};

/// `None`: writes pass; `Some(n)`: n more segment writes pass, then they block.
#[derive(Default)]
struct Gate {
    allow: Mutex<(Option<u64>, bool)>,
    cv: Condvar,
}

impl Gate {
    fn set(&self, allow: Option<u64>) {
        self.allow.lock().0 = allow;
        self.cv.notify_all();
    }
    fn wait_blocked(&self) {
        let mut g = self.allow.lock();
        while !g.1 {
            self.cv.wait_for(&mut g, Duration::from_millis(10));
        }
    }
    fn pass(&self) {
        let mut g = self.allow.lock();
        loop {
            match g.0 {
                None => return,
                Some(n) if n > 0 => {
                    g.0 = Some(n - 1);
                    return;
                }
                Some(_) => {
                    g.1 = true;
                    self.cv.notify_all();
                    self.cv.wait(&mut g);
                    g.1 = false;
                }
            }
        }
    }
}

struct GateStorage {
    inner: MemStorage,
    gate: Arc<Gate>,
}

struct GateFile {
    inner: Box<dyn StorageFile>,
    gate: Option<Arc<Gate>>,
}

impl StorageFile for GateFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(g) = &self.gate {
            g.pass();
        }
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()
    }
}

impl Storage for GateStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let inner = self.inner.create(name)?;
        let gate = name.starts_with("wal-").then(|| Arc::clone(&self.gate));
        Ok(Box::new(GateFile { inner, gate }))
    }
    fn open_append(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.inner.open_append(name)
    }
    fn write_whole(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_whole(name, bytes)
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

fn open(storage: Arc<dyn Storage>, clock: &ManualClock) -> Result<Arc<Engine>, EngineError> {
    Engine::open(
        catalog(3),
        season(),
        Arc::new(clock.clone()),
        storage,
        EngineConfig::default(),
    )
    .map(|(e, _)| e)
}

fn decide(
    engine: &Engine,
    national_id: u64,
    caravan: &str,
) -> miqat_engine::Committed<miqat_engine::ReserveOutcome> {
    let h = engine.catalog().holder_by_national_id(national_id).unwrap();
    let c = engine.catalog().caravan_by_id(caravan).unwrap();
    engine.reserve(h, c, None).unwrap()
}

/// The snapshot waits for the records it captured; a crash before they reach the disk leaves
/// no snapshot ahead of the log, and two crashes in a row recover cleanly.
#[test]
fn a_snapshot_never_holds_records_the_log_lost() {
    let mem = MemStorage::new();
    let gate = Arc::new(Gate::default());
    let storage: Arc<dyn Storage> = Arc::new(GateStorage {
        inner: mem.clone(),
        gate: Arc::clone(&gate),
    });
    let clock = ManualClock::new(T0);
    let engine = open(storage, &clock).unwrap();

    let d1 = decide(&engine, 1000, "a1");
    engine.wait(&d1).unwrap();

    gate.set(Some(0));
    let d2 = decide(&engine, 1001, "a2"); // the flusher takes it and is held at the gate
    gate.wait_blocked();
    let d3 = decide(&engine, 1002, "a1"); // staged only
    let snapshotting = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || engine.snapshot())
    };
    gate.set(Some(1)); // d2's batch passes; d3's is held
    engine.wait(&d2).unwrap();
    assert!(
        !snapshotting.is_finished(),
        "the snapshot must wait for what it captured"
    );

    // Power loss now: d3 never reached the log, and no snapshot claims it.
    let copy = mem.crashed_copy_with(|_, _| 0);
    gate.set(None);
    snapshotting.join().unwrap().unwrap();
    drop(engine);

    let engine2 = open(Arc::new(copy.clone()), &clock).expect("first recovery");
    assert!(engine2.reservation(d2.value.reservation.id).is_some());
    assert!(
        engine2.reservation(d3.value.reservation.id).is_none(),
        "a decision that never reached the log must not come back"
    );
    let d4 = decide(&engine2, 1003, "b1");
    engine2.wait(&d4).unwrap();
    drop(engine2);
    copy.crash();
    let engine3 = open(Arc::new(copy), &clock).expect("second recovery");
    assert!(engine3.reservation(d4.value.reservation.id).is_some());
    engine3.check_invariants().unwrap();
}
