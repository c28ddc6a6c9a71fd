//! Plays a plan against a server, open loop: anchors it at the wave's opening, starts each
//! journey at its planned time, samples seats per province, shows a live view, and turns the
//! records into a [`Summary`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::task::JoinSet;

use crate::admin::{Admin, Province, Wave, shift_schedule};
use crate::client::Http;
use crate::journey::{self, Context};
use crate::outcome::{Endpoint, Outcome};
use crate::plan::Plan;
use crate::recorder::{Recorded, Recorder, percentiles};
use crate::server_metrics::{self, ServerMetrics};
use crate::summary::{
    EndpointSummary, JourneySummary, LagSummary, PercentilePoint, PlanInfo, SeatsTimeline, SellOut,
    Summary, TimelinePoint,
};

/// How to play a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Base URL of the server (`http://host:port`).
    pub target: String,
    /// Requests in flight at most (keep-alive connections).
    pub connections: usize,
    /// A request without an answer after this long (from its intended time) is a timeout.
    pub timeout: Duration,
    /// The operator's token: operator events, rescheduling and the after-run check need it.
    pub operator_token: Option<String>,
    /// Move the wave's opening to this long from now before playing (operator).
    pub reschedule_in: Option<Duration>,
    /// The send-lag p99 above which the run is invalid.
    pub max_lag_ms: f64,
    /// Print a live view to stderr.
    pub live: bool,
    /// TLS settings for an `https://` target.
    pub tls: crate::tls::ClientTls,
    /// When a cluster's node was killed during the run, if one was (the failover gap).
    pub failover_mark: crate::follow::FailoverMark,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            target: "http://127.0.0.1:8080".into(),
            connections: 1024,
            timeout: Duration::from_secs(10),
            operator_token: None,
            reschedule_in: None,
            max_lag_ms: 50.0,
            live: true,
            tls: crate::tls::ClientTls::default(),
            failover_mark: crate::follow::FailoverMark::default(),
        }
    }
}

/// What a run leaves for the check and the reports.
pub struct Played {
    /// The summary so far (no checks, gates or baseline yet).
    pub summary: Summary,
    /// The raw records.
    pub recorded: Recorded,
}

/// Plays `plan` against `options.target`.
pub async fn play(plan: &Plan, options: &RunOptions) -> anyhow::Result<Played> {
    let admin = Admin::with_tls(
        &options.target,
        options.operator_token.as_deref(),
        &options.tls,
    );
    admin
        .wait_ready(Duration::from_secs(60))
        .await
        .with_context(|| format!("reaching {}", options.target))?;
    let lead = Duration::from_millis(plan.lead_ms().unsigned_abs());
    let (wave, opens_at_ms) = anchor_wave(&admin, plan, options, lead).await?;
    let started_at = jiff::Timestamp::now();
    let until_opening = opens_at_ms - started_at.as_millisecond();
    // The plan's first request must still lie ahead (100 ms of slack for the calls above).
    if until_opening + plan.lead_ms() < -100 {
        bail!(
            "wave {:?} opens at {}, but the plan's first request is due {:.1} s before the \
             opening, which has passed; pass --reschedule-in (with the operator token) to move \
             the opening, or use a server whose wave opens later",
            wave.name,
            wave.opens_at,
            lead.as_secs_f64()
        );
    }
    let now = Instant::now();
    let opening = if until_opening >= 0 {
        now + Duration::from_millis(until_opening.unsigned_abs())
    } else {
        now.checked_sub(Duration::from_millis(until_opening.unsigned_abs()))
            .unwrap_or(now)
    };
    let lead_whole_s = lead.as_secs() + u64::from(lead.subsec_nanos() > 0);
    let run_start = opening
        .checked_sub(Duration::from_secs(lead_whole_s))
        .unwrap_or(opening);
    let recorder = Arc::new(Recorder::new(run_start));
    let http = Arc::new(Http::with_tls(
        &options.target,
        options.connections,
        options.timeout,
        Arc::clone(&recorder),
        &options.tls,
    )?);
    // Journeys go through the waiting room when a wave of the server has one.
    let waiting_room = admin
        .waves()
        .await
        .is_ok_and(|waves| waves.iter().any(|w| w.waiting_room));
    let ctx = Arc::new(Context {
        waiting_room,
        http,
        opening,
        key_prefix: plan.header.key_prefix.clone(),
        operator_authorization: options
            .operator_token
            .as_ref()
            .map(|t| format!("Bearer {t}")),
    });
    let provinces = admin.provinces().await?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_seats(
        admin.clone(),
        opening,
        Arc::clone(&samples),
        stop_rx.clone(),
    ));
    let server_metrics = Arc::new(Mutex::new(ServerMetrics::default()));
    let server_sampler = tokio::spawn(server_metrics::sample(
        admin.clone(),
        opening,
        Duration::from_secs(1),
        Arc::clone(&server_metrics),
        stop_rx.clone(),
    ));
    let sealer = tokio::spawn(seal_seconds(Arc::clone(&recorder), stop_rx.clone()));
    let live = options.live.then(|| {
        tokio::spawn(live_view(
            Arc::clone(&recorder),
            opening,
            plan.journeys.len(),
            stop_rx,
        ))
    });

    let first_due = ctx.at(plan.lead_ms());
    let mut journeys = JoinSet::new();
    for j in &plan.journeys {
        // Start each task shortly before its first request; it sleeps until the exact time.
        let wake = ctx
            .at(j.start_ms)
            .checked_sub(Duration::from_millis(20))
            .unwrap_or(opening);
        tokio::time::sleep_until(wake.into()).await;
        journeys.spawn(journey::run(Arc::clone(&ctx), j.clone()));
        while let Some(ended) = journeys.try_join_next() {
            note_crash(&recorder, ended);
        }
    }
    while let Some(ended) = journeys.join_next().await {
        note_crash(&recorder, ended);
    }
    let finished = Instant::now();
    let _ = stop_tx.send(true);
    let _ = sampler.await;
    let _ = sealer.await;
    let _ = server_sampler.await;
    if let Some(live) = live {
        let _ = live.await;
    }
    let recorded = recorder.finish();
    let seats = seats_timeline(&provinces, &samples.lock());
    let mut summary = summarize(
        plan,
        options,
        &recorded,
        &SummaryInputs {
            wave: &wave,
            started_at,
            lead_whole_s,
            duration: finished.saturating_duration_since(first_due.max(run_start)),
            seats,
        },
    );
    let server = std::mem::take(&mut *server_metrics.lock());
    summary.server_version = server.version;
    summary.server_metrics = server.samples;
    summary.cluster = ctx
        .http
        .cluster()
        .map(|c| c.report_with(&options.failover_mark));
    Ok(Played { summary, recorded })
}

/// A journey task that panicked is a defect of the tester: it fails the run, never vanishes.
fn note_crash(recorder: &Recorder, ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        recorder.violation(format!("a journey crashed in the load tester: {e}"));
    }
}

/// Finds the plan's wave and, if asked, moves its opening; returns it and its opening (ms).
async fn anchor_wave(
    admin: &Admin,
    plan: &Plan,
    options: &RunOptions,
    lead: Duration,
) -> anyhow::Result<(Wave, i64)> {
    let mut waves = admin.waves().await?;
    let index = match &plan.header.params.wave {
        Some(name) => waves
            .iter()
            .position(|w| &w.name == name)
            .with_context(|| format!("the server has no wave named {name:?}"))?,
        None if waves.is_empty() => bail!("the server's schedule has no wave"),
        None => 0,
    };
    if let Some(delay) = options.reschedule_in {
        if !admin.is_operator() {
            bail!("--reschedule-in needs the operator token (--operator-token)");
        }
        // The plan's storm must fit before the opening.
        let delay = delay.max(lead + Duration::from_secs(1));
        let opens = jiff::Timestamp::now()
            + jiff::SignedDuration::from_millis(i64::try_from(delay.as_millis()).unwrap_or(0));
        let opens = opens.round(jiff::Unit::Millisecond).unwrap_or(opens);
        // The whole schedule moves, spacing kept: moving the main wave alone would leave a
        // reserve wave (whose cutoff covers the main wave's receipts) open in the past.
        shift_schedule(&mut waves, index, opens)?;
        if options.live {
            for (i, w) in waves.iter().enumerate() {
                if i != index && w.opens()? < opens {
                    eprintln!(
                        "note: wave {:?} opens before the rushed wave {:?} and is open already",
                        w.name, waves[index].name
                    );
                }
            }
        }
        admin.put_waves(&waves).await?;
        waves = admin.waves().await?;
    }
    let wave = waves[index].clone();
    let opens = wave.opens()?;
    Ok((wave, opens.as_millisecond()))
}

/// Seconds since the opening, and free seats by province id.
type SeatSample = (f64, Vec<(u32, u64)>);

/// Samples free seats per province every 250 ms until stopped.
async fn sample_seats(
    admin: Admin,
    opening: Instant,
    samples: Arc<Mutex<Vec<SeatSample>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Ok(provinces) = admin.provinces().await {
            let t = seconds_since(opening, Instant::now());
            let free = provinces.iter().map(|p| (p.id, p.seats_free)).collect();
            samples.lock().push((t, free));
        }
    }
}

/// Seals each second of the timeline once it is over, keeping memory flat over long runs.
async fn seal_seconds(recorder: Arc<Recorder>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => recorder.seal_before(recorder.second_of(Instant::now())),
            _ = stop.changed() => return,
        }
    }
}

fn seconds_since(opening: Instant, at: Instant) -> f64 {
    if at >= opening {
        at.duration_since(opening).as_secs_f64()
    } else {
        -opening.duration_since(at).as_secs_f64()
    }
}

/// Once a second: countdown or time since the opening, requests per second, outcomes, p99.
async fn live_view(
    recorder: Arc<Recorder>,
    opening: Instant,
    journeys: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shown = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let now = Instant::now();
        let clock = if now < opening {
            format!(
                "opening in {:5.1} s",
                opening.duration_since(now).as_secs_f64()
            )
        } else {
            format!(
                "T+{:6.1} s        ",
                now.duration_since(opening).as_secs_f64()
            )
        };
        let second = recorder.second_of(now);
        recorder.seal_before(second);
        let live = recorder.live(second.saturating_sub(1));
        let line = format!(
            "{clock} | {:>6} req/s | ok {} | 304 {} | rejected {} | shed {} | failed {} | p99 {:.1} ms | {} journeys planned",
            live.last_second_requests,
            live.outcomes[Outcome::Ok as usize],
            live.outcomes[Outcome::NotModified as usize],
            live.outcomes[Outcome::Rejected as usize],
            live.outcomes[Outcome::Shed as usize],
            Outcome::ALL
                .iter()
                .filter(|o| o.is_failure())
                .map(|o| live.outcomes[*o as usize])
                .sum::<u64>(),
            live.last_second_p99_ms,
            journeys
        );
        shown += 1;
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if shown % 5 == 1 {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}

fn seats_timeline(provinces: &[Province], samples: &[SeatSample]) -> SeatsTimeline {
    let order: Vec<u32> = provinces.iter().map(|p| p.id).collect();
    SeatsTimeline {
        provinces: provinces
            .iter()
            .map(|p| (p.id, p.name_en.clone()))
            .collect(),
        seats_total: provinces.iter().map(|p| p.seats_total).collect(),
        samples: samples
            .iter()
            .map(|(t, free)| {
                let by_id: BTreeMap<u32, u64> = free.iter().copied().collect();
                let values = order
                    .iter()
                    .map(|id| by_id.get(id).copied().unwrap_or(0))
                    .collect();
                (*t, values)
            })
            .collect(),
    }
}

struct SummaryInputs<'a> {
    wave: &'a Wave,
    started_at: jiff::Timestamp,
    lead_whole_s: u64,
    duration: Duration,
    seats: SeatsTimeline,
}

fn summarize(
    plan: &Plan,
    options: &RunOptions,
    recorded: &Recorded,
    inputs: &SummaryInputs<'_>,
) -> Summary {
    let requests = recorded.requests();
    let duration_s = inputs.duration.as_secs_f64().max(1e-3);
    let outcomes: BTreeMap<String, u64> = Outcome::ALL
        .iter()
        .map(|o| (o.name().to_string(), recorded.outcome_total(*o)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let endpoints = Endpoint::ALL
        .iter()
        .filter(|e| recorded.outcomes[**e as usize].iter().sum::<u64>() > 0)
        .map(|e| EndpointSummary {
            name: e.name().to_string(),
            requests: recorded.outcomes[*e as usize].iter().sum(),
            outcomes: Outcome::ALL
                .iter()
                .map(|o| {
                    (
                        o.name().to_string(),
                        recorded.outcomes[*e as usize][*o as usize],
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency: percentiles(&recorded.latency[*e as usize]),
        })
        .collect();
    let seated = ["seated", "seated_from_waitlist"]
        .iter()
        .map(|k| recorded.endings.get(k).copied().unwrap_or(0))
        .sum::<u64>();
    let lag = percentiles(&recorded.lag);
    let offset_s = inputs.lead_whole_s as f64;
    let timeline: Vec<TimelinePoint> = recorded
        .seconds
        .iter()
        .enumerate()
        .map(|(i, s)| TimelinePoint {
            t_s: i as f64 - offset_s,
            outcomes: Outcome::ALL
                .iter()
                .map(|o| (o.name().to_string(), s.outcomes[*o as usize]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            p50_ms: s.p50_ms,
            p99_ms: s.p99_ms,
            reserve_p99_ms: s.reserve_p99_ms,
            send_lag_p99_ms: s.lag_p99_ms,
        })
        .collect();
    let peak_rps = recorded
        .seconds
        .iter()
        .map(|s| s.outcomes.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let sell_out = sell_outs(&inputs.seats, plan.header.params.speed);
    let mut summary = Summary {
        target: options.target.clone(),
        started_at: inputs.started_at.to_string(),
        opens_at: inputs.wave.opens_at.clone(),
        plan: PlanInfo {
            seed: plan.header.params.seed,
            speed: plan.header.params.speed,
            journeys: plan.journeys.len(),
            lead_s: -(plan.lead_ms() as f64) / 1000.0,
            planned_requests: planned_requests(plan),
        },
        duration_s,
        timeout_s: options.timeout.as_secs_f64(),
        requests,
        throughput_rps: requests as f64 / duration_s,
        peak_rps,
        outcomes,
        answers: recorded.answers.clone(),
        endpoints,
        journeys: JourneySummary {
            endings: recorded
                .endings
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
            time_to_seat: percentiles(&recorded.time_to_seat),
        },
        goodput_per_s: seated as f64 / duration_s,
        retry_amplification: requests as f64
            / requests.saturating_sub(recorded.retries).max(1) as f64,
        connection_wait: percentiles(&recorded.queue),
        send_lag: LagSummary {
            p50_ms: lag.p50_ms,
            p99_ms: lag.p99_ms,
            max_ms: lag.max_ms,
            limit_ms: options.max_lag_ms,
            valid: lag.p99_ms <= options.max_lag_ms,
        },
        timeline,
        seats: inputs.seats.clone(),
        sell_out,
        latency_distribution: distribution(&recorded.latency),
        ..Summary::default()
    };
    summary.client_violations = recorded.violations.clone();
    summary
}

/// The percentiles the distribution chart draws: up to p99.999, closer together in the tail.
const DISTRIBUTION_PERCENTILES: [f64; 16] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999,
    100.0,
];

/// Latency of every request, answered or not, at [`DISTRIBUTION_PERCENTILES`].
fn distribution(per_endpoint: &[Histogram<u64>]) -> Vec<PercentilePoint> {
    let Some(first) = per_endpoint.first() else {
        return Vec::new();
    };
    let mut all = Histogram::<u64>::new_from(first);
    for h in per_endpoint {
        if all.add(h).is_err() {
            return Vec::new();
        }
    }
    if all.is_empty() {
        return Vec::new();
    }
    DISTRIBUTION_PERCENTILES
        .iter()
        .map(|&percentile| PercentilePoint {
            percentile,
            ms: all.value_at_percentile(percentile) as f64 / 1000.0,
        })
        .collect()
}

/// Requests the plan asks for if nobody retried or reacted.
pub fn planned_requests(plan: &Plan) -> u64 {
    plan.journeys
        .iter()
        .map(|j| {
            let refreshes = if j.refresh_ms > 0 && j.act_ms > j.start_ms {
                (j.act_ms - j.start_ms)
                    .unsigned_abs()
                    .div_ceil(u64::from(j.refresh_ms))
            } else {
                0
            };
            refreshes
                + 2
                + u64::from(j.early_click_ms.is_some())
                + u64::from(j.wrong_credentials)
                + u64::from(j.double_submit)
        })
        .sum()
}

fn sell_outs(seats: &SeatsTimeline, speed: f64) -> Vec<SellOut> {
    let mut out: Vec<SellOut> = seats
        .provinces
        .iter()
        .enumerate()
        .filter_map(|(i, (id, name))| {
            let (t, _) = seats
                .samples
                .iter()
                .find(|(t, free)| *t >= 0.0 && free.get(i) == Some(&0))?;
            Some(SellOut {
                province_id: *id,
                name: name.clone(),
                run_s: *t,
                day_s: *t * speed,
            })
        })
        .collect();
    out.sort_by(|a, b| a.run_s.total_cmp(&b.run_s));
    out
}
