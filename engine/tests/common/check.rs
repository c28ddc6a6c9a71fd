//! `check(fixture, script, expect)`: runs a script of engine commands over a fixture and
//! compares the transcript with the expected text, showing a line diff when they differ.
//!
//! Script commands, one per line (holders by national ID, reservations by their holder's
//! latest one; blank lines and `#` comments skipped):
//!
//! ```text
//! reserve NID CARAVAN [key K]   -> the reservation, `(replayed)` for a replay, or the error
//! cancel NID                    -> the holder's latest reservation after cancelling it
//! event NID EVENT               -> an operator event (documents_received, ...) on it
//! join NID                      -> `position P`
//! accept NID                    -> accepts the holder's open offer (else their latest one)
//! show NID                      -> the holder's latest reservation, or `none`
//! offer NID                     -> the holder's open offer, or `none`
//! position NID                  -> the holder's waiting-list position, or `none`
//! free CARAVAN                  -> free seats of the caravan
//! advance DURATION | at TIME    -> moves the manual clock (engine time never steps back)
//! expire                        -> `expired N`, the expiry pass
//! ```
//!
//! The transcript has one line per command, `COMMAND -> OUTCOME`; a reservation reads
//! `CARAVAN STATUS [STAGE] [until TIME] [because REASON]`, an error reads as its
//! `EngineError::code()` with its data (`caravan_full [a2]`, `registration_not_open opens T0`,
//! `already_reserved [1000 a1 held documents until T0+10s]`: whose reservation it is).
//! The engine starts at the first command other than `at`, with its clock at `T0` unless an
//! `at` came first, and its invariants are checked after every command.
#![allow(dead_code, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::sync::Arc;

use miqat_engine::clock::{Clock, ManualClock};
use miqat_engine::model::{OperatorEvent, ReservationView};
use miqat_engine::{Engine, EngineConfig, EngineError};

use super::fixture::{self, T0, duration_ms, time, time_ms};

/// Runs `script` over the engine built from `fixture` and compares the transcript with
/// `expect` (each line trimmed, blank lines skipped).
#[track_caller]
pub fn check(fixture: &str, script: &str, expect: &str) {
    let actual = transcript(fixture, script);
    let (want, got) = (normalize(expect), normalize(&actual));
    if want != got {
        panic!(
            "transcript differs (- expected, + actual):\n{}\nwhole transcript:\n{actual}",
            diff(&want, &got)
        );
    }
}

/// The transcript of `script` over `fixture`, one `COMMAND -> OUTCOME` line per command.
pub fn transcript(fixture: &str, script: &str) -> String {
    let fx = fixture::parse(fixture);
    let clock = ManualClock::new(T0);
    let mut engine: Option<Arc<Engine>> = None;
    let mut out = String::new();
    for line in script.lines() {
        let command = line.split('#').next().unwrap_or("").trim();
        if command.is_empty() {
            continue;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        if let ["at", at] = words[..] {
            clock.set(time_ms(at).unwrap());
            writeln!(out, "{command} -> now {}", time(clock.now_ms())).unwrap();
            continue;
        }
        let engine = engine.get_or_insert_with(|| {
            Engine::in_memory(
                Arc::clone(&fx.catalog),
                fx.season.clone(),
                Arc::new(clock.clone()),
                EngineConfig {
                    id_seed: Some(7),
                    ..EngineConfig::default()
                },
            )
            .unwrap()
        });
        let outcome = run(engine, &clock, &words).unwrap_or_else(|e| describe_error(engine, &e));
        writeln!(out, "{command} -> {outcome}").unwrap();
        if let Err(e) = engine.check_invariants() {
            panic!("invariants broken after `{command}`: {e}\n{out}");
        }
    }
    out
}

fn run(engine: &Engine, clock: &ManualClock, words: &[&str]) -> Result<String, EngineError> {
    let cat = engine.catalog();
    let holder = |nid: &str| {
        let nid: u64 = nid.parse().unwrap();
        cat.holder_by_national_id(nid)
            .unwrap_or_else(|| panic!("no holder with national ID {nid}"))
    };
    let latest = |nid: &str| {
        engine
            .latest_reservation(holder(nid))
            .unwrap_or_else(|| panic!("holder {nid} has no reservation"))
            .id
    };
    let caravan = |id: &str| {
        cat.caravan_by_id(id)
            .unwrap_or_else(|| panic!("no caravan {id}"))
    };
    Ok(match *words {
        ["reserve", nid, c] | ["reserve", nid, c, "key", _] => {
            let key = words.get(4).map(|k| k.as_bytes());
            let out = engine.reserve(holder(nid), caravan(c), key)?.value;
            let replayed = if out.replayed { " (replayed)" } else { "" };
            format!("{}{replayed}", view(engine, &out.reservation))
        }
        ["cancel", nid] => view(engine, &engine.cancel(holder(nid), latest(nid))?.value),
        ["event", nid, event] => {
            let event = OperatorEvent::parse(event).unwrap_or_else(|| panic!("no event {event}"));
            view(engine, &engine.operator_event(latest(nid), event)?.value)
        }
        ["join", nid] => format!(
            "position {}",
            engine.join_waitlist(holder(nid))?.value.position
        ),
        ["accept", nid] => {
            let offer = engine.waitlist_status(holder(nid)).and_then(|s| s.offer);
            let id = offer.map_or_else(|| latest(nid), |o| o.id);
            view(engine, &engine.accept_offer(holder(nid), id)?.value)
        }
        ["show", nid] => engine
            .latest_reservation(holder(nid))
            .map_or_else(|| "none".to_owned(), |v| view(engine, &v)),
        ["offer", nid] => engine
            .waitlist_status(holder(nid))
            .and_then(|s| s.offer)
            .map_or_else(|| "none".to_owned(), |v| view(engine, &v)),
        ["position", nid] => engine
            .waitlist_status(holder(nid))
            .and_then(|s| s.position)
            .map_or_else(|| "none".to_owned(), |p| p.to_string()),
        ["free", c] => engine.free_seats(caravan(c)).to_string(),
        ["advance", d] => {
            clock.advance(duration_ms(d).unwrap());
            format!("now {}", time(clock.now_ms()))
        }
        ["expire"] => format!("expired {}", engine.expire_due()?.0),
        _ => panic!("unknown script command {words:?}"),
    })
}

/// `CARAVAN STATUS [STAGE] [until TIME] [because REASON]`.
fn view(engine: &Engine, v: &ReservationView) -> String {
    let caravan = &engine.catalog().caravans()[v.caravan.index()].id;
    let mut s = format!("{caravan} {}", v.status.as_str());
    if let Some(stage) = v.stage {
        write!(s, " {}", stage.as_str()).unwrap();
    }
    if let Some(deadline) = v.deadline_ms {
        write!(s, " until {}", time(deadline)).unwrap();
    }
    if let Some(reason) = v.end_reason.filter(|r| r.as_str() != v.status.as_str()) {
        write!(s, " because {}", reason.as_str()).unwrap();
    }
    s
}

/// The error's `code()`, with the data a client would branch on.
fn describe_error(engine: &Engine, e: &EngineError) -> String {
    let code = e.code();
    let caravan = |c: &miqat_engine::catalog::CaravanIdx| {
        engine.catalog().caravans()[(*c).index()].id.clone()
    };
    match e {
        EngineError::CaravanFull { alternatives } => {
            let ids: Vec<String> = alternatives.iter().map(caravan).collect();
            format!("{code} [{}]", ids.join(", "))
        }
        EngineError::RegistrationNotOpen { opens_at_ms } => match opens_at_ms {
            Some(at) => format!("{code} opens {}", time(*at)),
            None => format!("{code} opens never"),
        },
        EngineError::AlreadyReserved { reservation } => {
            let v = engine.reservation(*reservation).unwrap();
            format!("{code} [{} {}]", v.national_id, view(engine, &v))
        }
        _ => code.to_owned(),
    }
}

fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A line diff by longest common subsequence: `  ` same, `- ` expected only, `+ ` actual only.
pub fn diff(want: &[String], got: &[String]) -> String {
    let (n, m) = (want.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if want[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && want[i] == got[j] {
            writeln!(out, "  {}", want[i]).unwrap();
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            writeln!(out, "- {}", want[i]).unwrap();
            i += 1;
        } else {
            writeln!(out, "+ {}", got[j]).unwrap();
            j += 1;
        }
    }
    out
}
