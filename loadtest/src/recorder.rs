//! Records every request of a run: HdrHistograms of latency (from the intended send time) per
//! endpoint and per second, send lag, outcome counts, journey endings, and the ledger of
//! acknowledgements the after-run check verifies. Sharded by thread so recording never
//! contends.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::outcome::{Endpoint, Outcome};
use crate::summary::Percentiles;

/// Latencies are recorded in microseconds up to this bound (longer ones saturate).
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// How a journey ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Reserved a seat directly.
    Seated,
    /// Got a seat by accepting a waiting-list offer.
    SeatedFromWaitlist,
    /// On a waiting list at the end of the run.
    Waitlisted,
    /// Found no seat and did not (or could not) wait.
    SoldOut,
    /// Correctly refused: not called, or an unconverted receipt.
    NotCalled,
    /// Gave up on failures (errors, timeouts, unexpected answers).
    Failed,
}

impl Ending {
    const ALL: [Ending; 6] = [
        Ending::Seated,
        Ending::SeatedFromWaitlist,
        Ending::Waitlisted,
        Ending::SoldOut,
        Ending::NotCalled,
        Ending::Failed,
    ];

    /// The ending's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Ending::Seated => "seated",
            Ending::SeatedFromWaitlist => "seated_from_waitlist",
            Ending::Waitlisted => "waitlisted",
            Ending::SoldOut => "sold_out",
            Ending::NotCalled => "not_called",
            Ending::Failed => "failed",
        }
    }
}

/// A reservation the client saw acknowledged (201, or 200 on accepting an offer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Acknowledged {
    /// The reservation's id.
    pub id: String,
    /// The holder.
    pub national_id: String,
    /// The caravan.
    pub caravan_id: String,
}

/// A reservation request that never got an answer: the check resends it with its key.
#[derive(Debug, Clone)]
pub struct Unanswered {
    /// The `Idempotency-Key` it carried.
    pub key: String,
    /// Its JSON body.
    pub body: String,
    /// The holder.
    pub national_id: String,
    /// The waiting-room pass it carried, if any.
    pub pass: Option<String>,
}

/// A seat taken directly, for the first-come-first-served check.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Intended send time of the successful request, microseconds since the run started.
    pub intended_us: u64,
    /// The server's `created_at`, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// How often one answer (status and problem code; status 0 for no answer) was seen.
struct AnswerCount {
    status: u16,
    code: String,
    count: u64,
}

#[derive(Default)]
struct Second {
    outcomes: [u64; Outcome::ALL.len()],
    all: Option<Histogram<u64>>,
    reserve: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
}

struct Shard {
    latency: Vec<Histogram<u64>>,
    outcomes: [[u64; Outcome::ALL.len()]; Endpoint::ALL.len()],
    answers: Vec<AnswerCount>,
    lag: Histogram<u64>,
    queue: Histogram<u64>,
    seconds: Vec<Second>,
    time_to_seat: Histogram<u64>,
    endings: [u64; Ending::ALL.len()],
    acknowledged: Vec<Acknowledged>,
    unanswered: Vec<Unanswered>,
    arrivals: Vec<Arrival>,
    violations: Vec<String>,
}

fn histogram(significant: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, significant)
        .expect("constant bounds within hdrhistogram's limits")
}

impl Shard {
    fn new() -> Shard {
        Shard {
            latency: Endpoint::ALL.iter().map(|_| histogram(3)).collect(),
            outcomes: [[0; Outcome::ALL.len()]; Endpoint::ALL.len()],
            answers: Vec::new(),
            lag: histogram(3),
            queue: histogram(3),
            seconds: Vec::new(),
            time_to_seat: histogram(3),
            endings: [0; Ending::ALL.len()],
            acknowledged: Vec::new(),
            unanswered: Vec::new(),
            arrivals: Vec::new(),
            violations: Vec::new(),
        }
    }
}

/// The run's recorder; cheap to share behind an `Arc`.
pub struct Recorder {
    run_start: Instant,
    shards: Vec<Mutex<Shard>>,
    /// Seconds already merged over the shards and reduced to their figures, so memory for
    /// histograms is held only for the last second or two, however long the run.
    sealed: Mutex<Vec<SealedSecond>>,
    retries: AtomicU64,
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

/// One request's record.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// When the request was meant to leave.
    pub intended: Instant,
    /// When the generator got to it (before waiting for a connection).
    pub dispatched: Instant,
    /// When it got a connection (`None` if it never did).
    pub connected: Option<Instant>,
    /// When the answer (or the failure) arrived.
    pub done: Instant,
    /// The outcome class.
    pub outcome: Outcome,
    /// Status and problem code, for the answers table (`None` for no answer).
    pub answer: Option<(u16, Option<&'a str>)>,
}

impl Recorder {
    /// A recorder whose timeline starts at `run_start`.
    pub fn new(run_start: Instant) -> Recorder {
        let shards = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            * 2;
        Recorder {
            run_start,
            shards: (0..shards).map(|_| Mutex::new(Shard::new())).collect(),
            sealed: Mutex::new(Vec::new()),
            retries: AtomicU64::new(0),
        }
    }

    /// When the run started.
    pub fn run_start(&self) -> Instant {
        self.run_start
    }

    fn shard(&self) -> parking_lot::MutexGuard<'_, Shard> {
        let index = SHARD.with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed));
            }
            s.get()
        });
        self.shards[index % self.shards.len()].lock()
    }

    /// Records one request.
    pub fn request(&self, r: RequestRecord<'_>) {
        let latency_us = micros(r.done.saturating_duration_since(r.intended));
        let lag_us = micros(r.dispatched.saturating_duration_since(r.intended));
        let queue_us = micros(
            r.connected
                .unwrap_or(r.done)
                .saturating_duration_since(r.dispatched),
        );
        let second = r.done.saturating_duration_since(self.run_start).as_secs() as usize;
        let endpoint = r.endpoint as usize;
        let outcome = r.outcome as usize;
        let mut shard = self.shard();
        shard.latency[endpoint].saturating_record(latency_us);
        shard.outcomes[endpoint][outcome] += 1;
        shard.lag.saturating_record(lag_us);
        shard.queue.saturating_record(queue_us);
        if shard.seconds.len() <= second {
            shard.seconds.resize_with(second + 1, Second::default);
        }
        let bucket = &mut shard.seconds[second];
        bucket.outcomes[outcome] += 1;
        bucket
            .all
            .get_or_insert_with(|| histogram(2))
            .saturating_record(latency_us);
        bucket
            .lag
            .get_or_insert_with(|| histogram(2))
            .saturating_record(lag_us);
        if r.endpoint == Endpoint::Reserve {
            bucket
                .reserve
                .get_or_insert_with(|| histogram(2))
                .saturating_record(latency_us);
        }
        // A handful of distinct answers: a scan finds the slot without allocating.
        let (status, code) = match r.answer {
            Some((status, code)) => (status, code.unwrap_or("")),
            None => (0, r.outcome.name()),
        };
        match shard
            .answers
            .iter_mut()
            .find(|a| a.status == status && a.code == code)
        {
            Some(slot) => slot.count += 1,
            None => shard.answers.push(AnswerCount {
                status,
                code: code.to_string(),
                count: 1,
            }),
        }
    }

    /// Records how a journey ended; `time_to_seat` for seated ones.
    pub fn ending(&self, ending: Ending, time_to_seat: Option<Duration>) {
        let mut shard = self.shard();
        shard.endings[ending as usize] += 1;
        if let Some(t) = time_to_seat {
            shard.time_to_seat.saturating_record(micros(t));
        }
    }

    /// Records an acknowledged reservation.
    pub fn acknowledged(&self, ack: Acknowledged) {
        self.shard().acknowledged.push(ack);
    }

    /// Records a reservation request left without an answer.
    pub fn unanswered(&self, request: Unanswered) {
        self.shard().unanswered.push(request);
    }

    /// Records a seat taken directly.
    pub fn arrival(&self, intended: Instant, created_ms: i64) {
        let intended_us = micros(intended.saturating_duration_since(self.run_start));
        self.shard().arrivals.push(Arrival {
            intended_us,
            created_ms,
        });
    }

    /// Records a contract violation the client saw itself (e.g. one key, two answers).
    pub fn violation(&self, text: String) {
        let mut shard = self.shard();
        if shard.violations.len() < 100 {
            shard.violations.push(text);
        }
    }

    /// Counts a retry (a request sent again after 429/503 or a lost answer).
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Merges every second before `second` over the shards and keeps only its figures.
    pub fn seal_before(&self, second: usize) {
        let mut sealed = self.sealed.lock();
        while sealed.len() < second {
            let index = sealed.len();
            let mut total = Second::default();
            for shard in &self.shards {
                let mut shard = shard.lock();
                if let Some(s) = shard.seconds.get_mut(index) {
                    merge_second(&mut total, std::mem::take(s));
                }
            }
            sealed.push(total.seal());
        }
    }

    /// The second (since the run started) `at` falls in.
    pub fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.run_start).as_secs() as usize
    }

    /// Totals so far and the figures of one sealed second, for the live view.
    pub fn live(&self, second: usize) -> Live {
        let mut live = Live::default();
        for shard in &self.shards {
            let shard = shard.lock();
            for row in &shard.outcomes {
                for (total, n) in live.outcomes.iter_mut().zip(row) {
                    *total += n;
                }
            }
        }
        if let Some(s) = self.sealed.lock().get(second) {
            live.last_second_requests = s.outcomes.iter().sum();
            live.last_second_p99_ms = s.p99_ms;
        }
        live
    }

    /// Merges the shards into one result.
    pub fn finish(&self) -> Recorded {
        let seconds = self
            .shards
            .iter()
            .map(|s| s.lock().seconds.len())
            .max()
            .unwrap_or(0);
        self.seal_before(seconds);
        let mut out = Recorded {
            latency: Endpoint::ALL.iter().map(|_| histogram(3)).collect(),
            outcomes: [[0; Outcome::ALL.len()]; Endpoint::ALL.len()],
            answers: BTreeMap::new(),
            lag: histogram(3),
            queue: histogram(3),
            seconds: self.sealed.lock().clone(),
            time_to_seat: histogram(3),
            endings: BTreeMap::new(),
            acknowledged: Vec::new(),
            unanswered: Vec::new(),
            arrivals: Vec::new(),
            violations: Vec::new(),
            retries: self.retries.load(Ordering::Relaxed),
        };
        for shard in &self.shards {
            let shard = shard.lock();
            for (into, from) in out.latency.iter_mut().zip(&shard.latency) {
                let _ = into.add(from);
            }
            for (e, row) in shard.outcomes.iter().enumerate() {
                for (o, n) in row.iter().enumerate() {
                    out.outcomes[e][o] += n;
                }
            }
            for a in &shard.answers {
                let key = match (a.status, a.code.as_str()) {
                    (0, outcome) => outcome.to_string(),
                    (status, "") => status.to_string(),
                    (status, code) => format!("{status} {code}"),
                };
                *out.answers.entry(key).or_default() += a.count;
            }
            let _ = out.lag.add(&shard.lag);
            let _ = out.queue.add(&shard.queue);
            let _ = out.time_to_seat.add(&shard.time_to_seat);
            for (i, n) in shard.endings.iter().enumerate() {
                *out.endings.entry(Ending::ALL[i].name()).or_default() += n;
            }
            out.acknowledged.extend(shard.acknowledged.iter().cloned());
            out.unanswered.extend(shard.unanswered.iter().cloned());
            out.arrivals.extend(shard.arrivals.iter().copied());
            out.violations.extend(shard.violations.iter().cloned());
        }
        out
    }
}

fn merge_second(total: &mut Second, second: Second) {
    for (t, n) in total.outcomes.iter_mut().zip(second.outcomes) {
        *t += n;
    }
    for (target, source) in [
        (&mut total.all, second.all),
        (&mut total.reserve, second.reserve),
        (&mut total.lag, second.lag),
    ] {
        if let Some(h) = source {
            match target {
                Some(t) => {
                    let _ = t.add(&h);
                }
                None => *target = Some(h),
            }
        }
    }
}

impl Second {
    fn seal(self) -> SealedSecond {
        let p99 = |h: &Option<Histogram<u64>>| h.as_ref().map_or(0.0, |h| percentiles(h).p99_ms);
        SealedSecond {
            outcomes: self.outcomes,
            p50_ms: self.all.as_ref().map_or(0.0, |h| percentiles(h).p50_ms),
            p99_ms: p99(&self.all),
            reserve_p99_ms: p99(&self.reserve),
            lag_p99_ms: p99(&self.lag),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What the live view shows.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests by outcome class so far.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Requests answered in the second asked for.
    pub last_second_requests: u64,
    /// Their 99th percentile latency.
    pub last_second_p99_ms: f64,
}

/// One second of the timeline, merged over the shards and reduced to its figures.
#[derive(Debug, Clone, Default)]
pub struct SealedSecond {
    /// Answers by outcome class.
    pub outcomes: [u64; Outcome::ALL.len()],
    /// Median latency of the requests answered in this second (ms).
    pub p50_ms: f64,
    /// Their 99th percentile (ms).
    pub p99_ms: f64,
    /// 99th percentile of the reservations answered in this second (ms).
    pub reserve_p99_ms: f64,
    /// 99th percentile send lag of the requests answered in this second (ms).
    pub lag_p99_ms: f64,
}

/// The merged record of a run.
pub struct Recorded {
    /// Latency per endpoint (µs), indexed by `Endpoint as usize`.
    pub latency: Vec<Histogram<u64>>,
    /// Outcomes per endpoint.
    pub outcomes: [[u64; Outcome::ALL.len()]; Endpoint::ALL.len()],
    /// Answers by `status code`.
    pub answers: BTreeMap<String, u64>,
    /// Send lag (µs).
    pub lag: Histogram<u64>,
    /// Waits for a free connection (µs).
    pub queue: Histogram<u64>,
    /// Per second since the run started.
    pub seconds: Vec<SealedSecond>,
    /// Decision to seat (µs).
    pub time_to_seat: Histogram<u64>,
    /// Journeys by ending.
    pub endings: BTreeMap<&'static str, u64>,
    /// Every acknowledgement seen.
    pub acknowledged: Vec<Acknowledged>,
    /// Every reservation request left without an answer.
    pub unanswered: Vec<Unanswered>,
    /// Seats taken directly.
    pub arrivals: Vec<Arrival>,
    /// Contract violations the client saw.
    pub violations: Vec<String>,
    /// Requests sent again after 429/503 or a lost answer.
    pub retries: u64,
}

impl Recorded {
    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().flatten().sum()
    }

    /// Requests of one outcome class over all endpoints.
    pub fn outcome_total(&self, outcome: Outcome) -> u64 {
        self.outcomes.iter().map(|row| row[outcome as usize]).sum()
    }
}

/// Percentiles of a microsecond histogram, in milliseconds (zeros when empty).
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}
