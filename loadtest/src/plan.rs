//! The opening-day plan: who arrives when, what they prefer and how they behave, generated
//! from a data set and a seed (same seed, same plan), and its NDJSON trace format.
//!
//! Times are milliseconds relative to the wave's opening, already compressed by `speed`, so a
//! recorded plan replays with its original timing whatever the flags of the replaying run.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{CaravanRow, DataSet};

/// The trace format's name and version, first member of a plan file's header line.
pub const PLAN_FORMAT: &str = "miqat-plan/1";

/// How the crowd behaves. Times are real seconds, before `speed` compresses them. The
/// defaults follow the domain's figures: a spike within seconds of the opening (the 30% who
/// wait act within ~10 s, about 13x the rate of the later arrivals, who decay over 5
/// minutes; the domain reports 2-25x), list refreshes every few seconds, 55-65% preferring
/// Medina-first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanParams {
    /// Seed of every random choice.
    pub seed: u64,
    /// Time compression: 60 plays an hour in a minute.
    pub speed: f64,
    /// Journeys (active holders); `None`: every holder the wave calls plus
    /// `uncalled_share` of that many who are not called.
    pub holders: Option<usize>,
    /// The wave the plan rushes (by name; `None`: the first).
    pub wave: Option<String>,
    /// How long before the opening the first holders arrive and start refreshing.
    pub lead_s: f64,
    /// Share of called holders already waiting at the opening.
    pub early_share: f64,
    /// Mean period of a waiting holder's caravan-list refresh.
    pub refresh_s: f64,
    /// Mean delay between the opening and a waiting holder's first move.
    pub reaction_s: f64,
    /// Time constant of the later arrivals' decay after the opening.
    pub decay_s: f64,
    /// No arrival, and no planned step, later than this after the opening.
    pub horizon_s: f64,
    /// Mean pause between a holder's steps (reading the list, retrying).
    pub think_s: f64,
    /// Journeys of holders the wave does not call, per called journey (they get 403s).
    pub uncalled_share: f64,
    /// Share of waiting holders who click "reserve" before the opening.
    pub early_click_share: f64,
    /// Share of holders whose first attempt carries a wrong tracking code.
    pub wrong_credentials_share: f64,
    /// Share of reservations sent twice with the same `Idempotency-Key`.
    pub double_submit_share: f64,
    /// Share of holders who re-list on `caravan_full` instead of taking an alternative.
    pub relist_share: f64,
    /// Share of holders left without a seat who join the waiting list.
    pub waitlist_share: f64,
    /// Mean period of a waiting holder's look at the waiting list.
    pub waitlist_poll_s: f64,
    /// Looks at the waiting list per waiting holder.
    pub waitlist_polls: u32,
    /// Share of reservations cancelled later.
    pub cancel_share: f64,
    /// Mean delay of a cancellation after the reservation.
    pub cancel_after_s: f64,
    /// Share of reservations whose stages an operator advances during the run.
    pub events_share: f64,
    /// Mean delay between two operator events on one reservation.
    pub event_gap_s: f64,
    /// Share of advanced reservations ended by `medical_rejected`.
    pub medical_rejected_share: f64,
    /// Zipf exponent of caravan preference (rank `k` weighs `1/(k+1)^s`).
    pub zipf_s: f64,
    /// Share of holders preferring Medina-first.
    pub medina_first_share: f64,
}

impl Default for PlanParams {
    fn default() -> PlanParams {
        PlanParams {
            seed: 1399,
            speed: 1.0,
            holders: None,
            wave: None,
            lead_s: 120.0,
            early_share: 0.3,
            refresh_s: 8.0,
            reaction_s: 10.0,
            decay_s: 300.0,
            horizon_s: 1800.0,
            think_s: 3.0,
            uncalled_share: 0.03,
            early_click_share: 0.05,
            wrong_credentials_share: 0.02,
            double_submit_share: 0.05,
            relist_share: 0.3,
            waitlist_share: 0.5,
            waitlist_poll_s: 600.0,
            waitlist_polls: 6,
            cancel_share: 0.03,
            cancel_after_s: 900.0,
            events_share: 0.5,
            event_gap_s: 300.0,
            medical_rejected_share: 0.02,
            zipf_s: 1.0,
            medina_first_share: 0.6,
        }
    }
}

/// An operator event planned on a journey's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEvent {
    /// Delay after the previous step (the reservation or the previous event).
    pub after_ms: u32,
    /// The event's kind, as the API spells it.
    pub kind: String,
}

/// One holder's opening day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journey {
    /// Index in the plan.
    pub id: u32,
    /// National ID.
    pub national_id: String,
    /// Tracking code.
    pub tracking_code: String,
    /// The holder's province.
    pub province_id: u32,
    /// The holder's city.
    pub city: String,
    /// Whether the wave calls the holder (if not, a 403 is the right answer).
    pub called: bool,
    /// First request (a caravan list).
    pub start_ms: i64,
    /// When the holder lists and then reserves; waiting holders refresh until then.
    pub act_ms: i64,
    /// Refresh period while waiting (0: no refreshes).
    pub refresh_ms: u32,
    /// Pause between steps.
    pub think_ms: u32,
    /// Preferred caravans, best first (Zipf-drawn over the city's caravans).
    pub picks: Vec<String>,
    /// A reserve sent before the opening (expects `registration_not_open`).
    pub early_click_ms: Option<i64>,
    /// The first attempt carries a wrong tracking code (expects 401).
    pub wrong_credentials: bool,
    /// The reserve is sent twice with one `Idempotency-Key`.
    pub double_submit: bool,
    /// On `caravan_full`, re-list instead of taking an alternative.
    pub relist_on_full: bool,
    /// Joins the waiting list when nothing is left.
    pub waitlist: bool,
    /// Period of the looks at the waiting list.
    pub waitlist_poll_ms: u32,
    /// Looks at the waiting list at most.
    pub waitlist_polls: u32,
    /// Cancels this long after the reservation.
    pub cancel_after_ms: Option<u32>,
    /// Operator events on the reservation.
    pub events: Vec<PlannedEvent>,
    /// Seed of the journey's own random choices (retry jitter, alternatives).
    pub rng: u64,
}

/// The header line of a plan file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    /// [`PLAN_FORMAT`].
    pub format: String,
    /// The parameters the plan was generated with.
    pub params: PlanParams,
    /// Prefix of every `Idempotency-Key` the plan sends.
    pub key_prefix: String,
    /// Number of journeys that follow.
    pub journeys: usize,
}

/// A whole plan: its header and journeys sorted by start time.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The header.
    pub header: PlanHeader,
    /// The journeys, by `start_ms`.
    pub journeys: Vec<Journey>,
}

impl Plan {
    /// The earliest first request, relative to the opening (at most 0).
    pub fn lead_ms(&self) -> i64 {
        self.journeys
            .iter()
            .map(|j| j.start_ms.min(j.early_click_ms.unwrap_or(0)))
            .min()
            .unwrap_or(0)
            .min(0)
    }
}

/// The most first requests the plan asks for in any one second (refreshes, the list and the
/// reservation at each holder's moment; retries and later reactions not counted).
pub fn planned_peak_per_second(plan: &Plan) -> u64 {
    let mut per_second: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
    for j in &plan.journeys {
        let mut at = j.start_ms;
        if j.refresh_ms > 0 {
            while at < j.act_ms {
                *per_second.entry(at.div_euclid(1000)).or_default() += 1;
                at += i64::from(j.refresh_ms);
            }
        }
        *per_second.entry(j.act_ms.div_euclid(1000)).or_default() += 2;
    }
    per_second.values().copied().max().unwrap_or(0)
}

/// Generates the plan for `data` (deterministic in `params`).
pub fn generate(data: &DataSet, params: &PlanParams) -> anyhow::Result<Plan> {
    validate(params)?;
    let wave = match &params.wave {
        None => data.waves.first(),
        Some(name) => Some(
            data.waves
                .iter()
                .find(|w| &w.name == name)
                .with_context(|| format!("season.toml has no wave named {name:?}"))?,
        ),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let (called, uncalled): (Vec<u32>, Vec<u32>) = (0..data.holders.len() as u32)
        .partition(|&i| DataSet::is_called(&data.holders[i as usize], wave));
    if called.is_empty() {
        bail!("the data set has no holder the wave calls");
    }
    let want_uncalled_per_called = params.uncalled_share;
    let total = params.holders.unwrap_or_else(|| {
        called.len() + (called.len() as f64 * want_uncalled_per_called) as usize
    });
    let n_uncalled = ((total as f64 * want_uncalled_per_called / (1.0 + want_uncalled_per_called))
        .round() as usize)
        .min(uncalled.len());
    let n_called = (total - n_uncalled.min(total)).min(called.len());
    let mut chosen: Vec<(u32, bool)> = sample(&called, n_called, &mut rng)
        .into_iter()
        .map(|h| (h, true))
        .chain(
            sample(&uncalled, n_uncalled, &mut rng)
                .into_iter()
                .map(|h| (h, false)),
        )
        .collect();
    // Interleave called and uncalled holders deterministically before times are drawn.
    shuffle(&mut chosen, &mut rng);

    let by_city = caravans_by_city(&data.caravans);
    let zipf = ZipfTables::new(params.zipf_s);
    let ms = |seconds: f64| seconds * 1000.0 / params.speed;
    let mut journeys = Vec::with_capacity(chosen.len());
    for (id, (holder_idx, called)) in chosen.into_iter().enumerate() {
        let holder = &data.holders[holder_idx as usize];
        let early = called && rng.random_bool(params.early_share);
        let (start_s, act_s) = if early {
            let start = -params.lead_s * rng.random::<f64>();
            (start, exponential(&mut rng, params.reaction_s))
        } else {
            let t = truncated_exponential(&mut rng, params.decay_s, params.horizon_s);
            (t, t)
        };
        let refresh_s = params.refresh_s * rng.random_range(0.5..1.5);
        let prefers_medina_first = rng.random_bool(params.medina_first_share);
        let city_caravans = by_city
            .get(&(holder.province_id, holder.city.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let picks = draw_picks(
            &data.caravans,
            city_caravans,
            prefers_medina_first,
            &zipf,
            &mut rng,
        );
        // Whatever a holder does after reserving fits before the horizon.
        let room_s = (params.horizon_s - act_s).max(1.0);
        let events = draw_events(params, room_s, &mut rng, &ms);
        journeys.push(Journey {
            id: id as u32,
            national_id: holder.national_id.clone(),
            tracking_code: holder.tracking_code.clone(),
            province_id: holder.province_id,
            city: holder.city.clone(),
            called,
            start_ms: ms(start_s).round() as i64,
            act_ms: ms(act_s).round() as i64,
            refresh_ms: if early {
                ms(refresh_s).max(1.0) as u32
            } else {
                0
            },
            think_ms: ms(exponential(&mut rng, params.think_s).max(0.3)) as u32,
            picks,
            early_click_ms: (early && rng.random_bool(params.early_click_share))
                .then(|| ms(-rng.random_range(0.5..5.0)).round() as i64),
            wrong_credentials: rng.random_bool(params.wrong_credentials_share),
            double_submit: rng.random_bool(params.double_submit_share),
            relist_on_full: rng.random_bool(params.relist_share),
            waitlist: rng.random_bool(params.waitlist_share),
            waitlist_poll_ms: ms(params
                .waitlist_poll_s
                .min(room_s / f64::from(params.waitlist_polls.max(1))))
                as u32,
            waitlist_polls: params.waitlist_polls,
            cancel_after_ms: rng
                .random_bool(params.cancel_share)
                .then(|| ms(exponential(&mut rng, params.cancel_after_s).min(room_s)) as u32),
            events,
            rng: rng.random(),
        });
    }
    journeys.sort_by_key(|j| (j.start_ms, j.id));
    Ok(Plan {
        header: PlanHeader {
            format: PLAN_FORMAT.into(),
            params: params.clone(),
            key_prefix: format!("lt{:08x}", params.seed as u32 ^ (params.seed >> 32) as u32),
            journeys: journeys.len(),
        },
        journeys,
    })
}

fn validate(p: &PlanParams) -> anyhow::Result<()> {
    if !(p.speed.is_finite() && p.speed > 0.0) {
        bail!("speed must be a positive number, not {}", p.speed);
    }
    let shares = [
        ("early_share", p.early_share),
        ("uncalled_share", p.uncalled_share),
        ("early_click_share", p.early_click_share),
        ("wrong_credentials_share", p.wrong_credentials_share),
        ("double_submit_share", p.double_submit_share),
        ("relist_share", p.relist_share),
        ("waitlist_share", p.waitlist_share),
        ("cancel_share", p.cancel_share),
        ("events_share", p.events_share),
        ("medical_rejected_share", p.medical_rejected_share),
        ("medina_first_share", p.medina_first_share),
    ];
    for (name, share) in shares {
        if !(0.0..=1.0).contains(&share) {
            bail!("{name} must be between 0 and 1, not {share}");
        }
    }
    for (name, seconds) in [
        ("lead_s", p.lead_s),
        ("refresh_s", p.refresh_s),
        ("reaction_s", p.reaction_s),
        ("decay_s", p.decay_s),
        ("horizon_s", p.horizon_s),
        ("think_s", p.think_s),
        ("cancel_after_s", p.cancel_after_s),
        ("event_gap_s", p.event_gap_s),
        ("waitlist_poll_s", p.waitlist_poll_s),
    ] {
        if !(seconds.is_finite() && seconds > 0.0) {
            bail!("{name} must be a positive number of seconds, not {seconds}");
        }
        // A week bounds every time of a plan, so no instant arithmetic can overflow.
        if seconds > 7.0 * 24.0 * 3600.0 {
            bail!("{name} must be at most a week (604800 s), not {seconds}");
        }
    }
    Ok(())
}

/// `k` distinct elements of `from`, in draw order.
fn sample(from: &[u32], k: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let mut pool = from.to_vec();
    let k = k.min(pool.len());
    for i in 0..k {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}

fn exponential(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Exponential with `mean`, conditioned on being below `limit` (inverse transform).
fn truncated_exponential(rng: &mut ChaCha8Rng, mean: f64, limit: f64) -> f64 {
    let mass = 1.0 - (-limit / mean).exp();
    -mean * (1.0 - rng.random::<f64>() * mass).ln()
}

fn caravans_by_city(caravans: &[CaravanRow]) -> HashMap<(u32, &str), Vec<u32>> {
    let mut map: HashMap<(u32, &str), Vec<u32>> = HashMap::new();
    for (i, c) in caravans.iter().enumerate() {
        map.entry((c.province_id, c.city.as_str()))
            .or_default()
            .push(i as u32);
    }
    map
}

/// Cumulative Zipf weights per list length, built once per length.
struct ZipfTables {
    exponent: f64,
    tables: parking_lot::Mutex<HashMap<usize, Vec<f64>>>,
}

impl ZipfTables {
    fn new(exponent: f64) -> ZipfTables {
        ZipfTables {
            exponent,
            tables: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// A rank in `0..n` with probability proportional to `1/(rank+1)^s`.
    fn draw(&self, n: usize, rng: &mut ChaCha8Rng) -> usize {
        let mut tables = self.tables.lock();
        let cumulative = tables.entry(n).or_insert_with(|| {
            let mut sum = 0.0;
            (0..n)
                .map(|k| {
                    sum += 1.0 / ((k + 1) as f64).powf(self.exponent);
                    sum
                })
                .collect()
        });
        let total = cumulative.last().copied().unwrap_or(1.0);
        let u = rng.random::<f64>() * total;
        cumulative.partition_point(|&c| c < u).min(n - 1)
    }
}

/// Up to three distinct caravans, drawn by Zipf rank over the city's caravans ordered by
/// appeal: the preferred route, a cheaper price group, an earlier departure.
fn draw_picks(
    caravans: &[CaravanRow],
    city: &[u32],
    prefers_medina_first: bool,
    zipf: &ZipfTables,
    rng: &mut ChaCha8Rng,
) -> Vec<String> {
    if city.is_empty() {
        return Vec::new();
    }
    let mut ordered: Vec<&CaravanRow> = city.iter().map(|&i| &caravans[i as usize]).collect();
    ordered.sort_by(|a, b| {
        let route = |c: &CaravanRow| c.medina_first != prefers_medina_first;
        (
            route(a),
            std::cmp::Reverse(&a.price_group),
            a.departure,
            &a.id,
        )
            .cmp(&(
                route(b),
                std::cmp::Reverse(&b.price_group),
                b.departure,
                &b.id,
            ))
    });
    let mut picks: Vec<String> = Vec::with_capacity(3);
    for _ in 0..8 {
        if picks.len() == 3.min(ordered.len()) {
            break;
        }
        let pick = &ordered[zipf.draw(ordered.len(), rng)].id;
        if !picks.contains(pick) {
            picks.push(pick.clone());
        }
    }
    picks
}

fn draw_events(
    params: &PlanParams,
    room_s: f64,
    rng: &mut ChaCha8Rng,
    ms: &impl Fn(f64) -> f64,
) -> Vec<PlannedEvent> {
    if !rng.random_bool(params.events_share) {
        return Vec::new();
    }
    const CHAIN: [&str; 4] = [
        "documents_received",
        "first_payment_received",
        "medical_approved",
        "final_payment_received",
    ];
    let steps = rng.random_range(1..=CHAIN.len());
    let gaps_s: Vec<f64> = (0..steps)
        .map(|_| exponential(rng, params.event_gap_s).max(1.0))
        .collect();
    let squeeze = (room_s / gaps_s.iter().sum::<f64>()).min(1.0);
    let mut events = Vec::with_capacity(steps);
    for (i, kind) in CHAIN.iter().take(steps).enumerate() {
        let after_ms = ms(gaps_s[i] * squeeze) as u32;
        // The medical stage is where a registration may end instead.
        let kind = if i == 2 && rng.random_bool(params.medical_rejected_share) {
            "medical_rejected"
        } else {
            kind
        };
        events.push(PlannedEvent {
            after_ms,
            kind: kind.into(),
        });
        if kind == "medical_rejected" {
            break;
        }
    }
    events
}

/// Times in a plan stay within a week of the opening: far enough for any rehearsal, near
/// enough that no instant arithmetic can overflow.
const PLAN_TIME_MS_MAX: i64 = 7 * 24 * 3_600_000;

/// Refuses a journey a file made impossible: times out of range, steps out of order, or an
/// id seen before (ids name `Idempotency-Key`s).
fn check_journey(j: &Journey, ids: &mut std::collections::HashSet<u32>) -> anyhow::Result<()> {
    let in_range = |ms: i64| ms.abs() <= PLAN_TIME_MS_MAX;
    let after: i64 = j
        .events
        .iter()
        .map(|e| i64::from(e.after_ms))
        .sum::<i64>()
        .max(i64::from(j.cancel_after_ms.unwrap_or(0)))
        + i64::from(j.waitlist_poll_ms) * i64::from(j.waitlist_polls.min(1_000));
    if !(in_range(j.start_ms)
        && in_range(j.act_ms)
        && j.early_click_ms.is_none_or(in_range)
        && in_range(after))
    {
        bail!("journey {}: a time beyond a week of the opening", j.id);
    }
    if j.act_ms < j.start_ms {
        bail!(
            "journey {}: acts ({} ms) before it starts ({} ms)",
            j.id,
            j.act_ms,
            j.start_ms
        );
    }
    if j.waitlist_polls > 1_000 {
        bail!(
            "journey {}: more than 1,000 looks at the waiting list",
            j.id
        );
    }
    if !ids.insert(j.id) {
        bail!("journey id {} appears twice", j.id);
    }
    Ok(())
}

/// Writes `plan` as NDJSON: the header line, then one journey per line.
pub fn write(plan: &Plan, path: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    write_line(&mut out, &plan.header)?;
    for journey in &plan.journeys {
        write_line(&mut out, journey)?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write_line(out: &mut impl Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Reads a plan written by [`write`]; refusals name the line.
pub fn read(path: &Path) -> anyhow::Result<Plan> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines
        .next()
        .with_context(|| format!("{}: empty file", path.display()))?
        .with_context(|| format!("reading {}", path.display()))?;
    let header: PlanHeader = serde_json::from_str(&first)
        .with_context(|| format!("{} line 1: not a plan header", path.display()))?;
    if header.format != PLAN_FORMAT {
        bail!(
            "{} line 1: format {:?}, expected {PLAN_FORMAT:?}",
            path.display(),
            header.format
        );
    }
    validate(&header.params).with_context(|| format!("{} line 1", path.display()))?;
    let mut journeys = Vec::with_capacity(header.journeys.min(1_000_000));
    let mut ids = std::collections::HashSet::new();
    for (n, line) in lines.enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let journey: Journey = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), n + 2))?;
        check_journey(&journey, &mut ids)
            .with_context(|| format!("{} line {}", path.display(), n + 2))?;
        journeys.push(journey);
    }
    if journeys.len() != header.journeys {
        bail!(
            "{}: header announces {} journeys, the file holds {} (truncated?)",
            path.display(),
            header.journeys,
            journeys.len()
        );
    }
    journeys.sort_by_key(|j| (j.start_ms, j.id));
    Ok(Plan { header, journeys })
}
