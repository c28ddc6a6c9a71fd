//! loom models of the concurrent core: racing reserve, cancel and expire on one caravan never
//! exceed its capacity nor lose a seat, and a lock-free reader never sees more free seats than
//! exist. Run with `RUSTFLAGS="--cfg loom" cargo test -p miqat-engine --test loom --release`.
#![cfg(loom)]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc as StdArc;

use common::{T0, catalog, season};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use miqat_engine::clock::ManualClock;
use miqat_engine::{Engine, EngineConfig};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    // Bounded preemptions keep the search finite while still covering the classic races.
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn engine(clock: &ManualClock) -> StdArc<Engine> {
    Engine::in_memory(
        catalog(3),
        season(),
        StdArc::new(clock.clone()),
        EngineConfig {
            id_seed: Some(1),
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn racing_reserves_never_exceed_capacity() {
    model(|| {
        let clock = ManualClock::new(T0);
        let engine = engine(&clock);
        let cat = engine.catalog().clone();
        // Caravan a1 has 2 seats; three holders of city A race for it.
        let a1 = cat.caravan_by_id("a1").unwrap();
        let holders: Vec<miqat_engine::catalog::HolderIdx> = (1000..1003)
            .map(|n| cat.holder_by_national_id(n).unwrap())
            .collect();
        let threads: Vec<_> = holders
            .iter()
            .map(|&h| {
                let engine = engine.clone();
                thread::spawn(move || engine.reserve(h, a1, None).is_ok())
            })
            .collect();
        let won = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(won, 2, "exactly the capacity is sold");
        assert_eq!(engine.free_seats(a1), 0);
        engine.check_invariants().unwrap();
    });
}

#[test]
fn reserve_cancel_and_expire_race_without_losing_a_seat() {
    model(|| {
        let clock = ManualClock::new(T0);
        let engine = engine(&clock);
        let cat = engine.catalog().clone();
        let a1 = cat.caravan_by_id("a1").unwrap();
        let h0 = cat.holder_by_national_id(1000).unwrap();
        let h1 = cat.holder_by_national_id(1001).unwrap();
        let first = engine.reserve(h0, a1, None).unwrap().value.reservation.id;
        // The second hold, made from here on, has a deadline the expirer never reaches.
        clock.set(T0 + 5_000);
        let second_done = Arc::new(AtomicBool::new(false));

        let canceller = {
            let engine = engine.clone();
            thread::spawn(move || {
                let _ = engine.cancel(h0, first);
            })
        };
        let expirer = {
            let engine = engine.clone();
            let clock = clock.clone();
            thread::spawn(move || {
                clock.set(T0 + 10_000);
                let _ = engine.expire_due();
            })
        };
        let reserver = {
            let engine = engine.clone();
            let done = second_done.clone();
            thread::spawn(move || {
                let ok = engine.reserve(h1, a1, None).is_ok();
                done.store(ok, Ordering::Release);
                ok
            })
        };
        // A reader that knows the second reservation was made must see at most one free seat.
        if second_done.load(Ordering::Acquire) {
            assert!(
                engine.free_seats(a1) <= 1,
                "reader saw a seat that is taken"
            );
        }
        canceller.join().unwrap();
        expirer.join().unwrap();
        let second_ok = reserver.join().unwrap();
        assert!(second_ok, "a seat was free for the second holder all along");
        engine.check_invariants().unwrap();
        let stats = engine.stats();
        let live = stats.by_status[0] + stats.by_status[1] + stats.by_status[2];
        assert_eq!(u64::from(engine.free_seats(a1)) + live, 2, "no seat lost");
        // The first hold ended exactly once, by whichever came first; the second is live.
        let first_view = engine.reservation(first).unwrap();
        assert!(!first_view.status.is_live());
        assert_eq!(live, 1);
        assert_eq!(stats.by_status[3] + stats.by_status[4], 1);
        assert_eq!(stats.expirations, stats.by_status[4]);
    });
}
