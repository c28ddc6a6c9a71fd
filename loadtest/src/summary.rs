//! The run's summary: what the JSON report holds, what the HTML report draws and what the
//! terminal prints at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::server_metrics::ServerSample;
use crate::verdict::{self, ServiceLimits, Verdicts};

/// Everything a run found, serialized as `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// The layout of this document: [`SCHEMA_VERSION`].
    #[serde(default)]
    pub schema_version: u32,
    /// Whether the run passed overall (the verdict's `overall`, for CI to read first).
    #[serde(default)]
    pub passed: bool,
    /// Whether the run measured what it planned (the generator kept to the plan); a run that
    /// is not valid says nothing about the server.
    #[serde(default)]
    pub valid: bool,
    /// The load tester's version.
    #[serde(default)]
    pub tool_version: String,
    /// The server's version and git revision, from its `miqat_build_info` metric.
    #[serde(default)]
    pub server_version: Option<String>,
    /// The server's base URL.
    pub target: String,
    /// When the run started (RFC 3339 UTC).
    pub started_at: String,
    /// The wave's opening (RFC 3339 UTC).
    pub opens_at: String,
    /// The plan that was played.
    pub plan: PlanInfo,
    /// Seconds from the first request to the last answer.
    pub duration_s: f64,
    /// Seconds after its intended time a request without an answer counted as timed out.
    #[serde(default)]
    pub timeout_s: f64,
    /// Requests sent (every retry counts).
    pub requests: u64,
    /// Requests per second over the run.
    pub throughput_rps: f64,
    /// The busiest second's requests.
    pub peak_rps: u64,
    /// Requests by outcome class (see [`crate::outcome::Outcome`]).
    pub outcomes: BTreeMap<String, u64>,
    /// Answers by `status code` (e.g. `409 caravan_full`).
    pub answers: BTreeMap<String, u64>,
    /// Per endpoint.
    pub endpoints: Vec<EndpointSummary>,
    /// Per journey.
    pub journeys: JourneySummary,
    /// Seated journeys per second of the run.
    pub goodput_per_s: f64,
    /// Requests sent per request sent once (retries after 429/503 or a lost answer add to
    /// it; re-lists and alternatives are new requests, not retries).
    pub retry_amplification: f64,
    /// Waits for a free client connection (counted in latency; a long wait means the client's
    /// `--connections` held requests back, so the server saw less than the planned load).
    #[serde(default)]
    pub connection_wait: Percentiles,
    /// How late the generator sent requests against their intended time.
    pub send_lag: LagSummary,
    /// One point per second of the run.
    pub timeline: Vec<TimelinePoint>,
    /// Free seats per province over time.
    pub seats: SeatsTimeline,
    /// When each province sold out (provinces that did).
    pub sell_out: Vec<SellOut>,
    /// The after-run checks (one per check pass, e.g. before and after a restart).
    pub checks: Vec<CheckReport>,
    /// Latency gates asked for with `--slo`.
    pub slo: Vec<SloResult>,
    /// The same client against a trivial handler, when asked for.
    pub baseline: Option<BaselineReport>,
    /// Contradictions the client saw itself during the run (one key answered with two
    /// reservations, a crashed journey); each fails the correctness verdict.
    #[serde(default)]
    pub client_violations: Vec<String>,
    /// The server's own figures, scraped from its `/metrics` once a second.
    #[serde(default)]
    pub server_metrics: Vec<ServerSample>,
    /// Latency of every request by percentile, for the distribution chart.
    #[serde(default)]
    pub latency_distribution: Vec<PercentilePoint>,
    /// The thresholds of the service verdict.
    #[serde(default)]
    pub limits: ServiceLimits,
    /// The verdicts, judged from the figures above by [`crate::verdict::judge`] (written by
    /// [`Summary::judge`]; the reports judge afresh, so they cannot disagree with the data).
    #[serde(default)]
    pub verdict: Verdicts,
    /// A run against several targets (a cluster): how its writes ended and what following
    /// the leader cost; absent for a single target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
}

impl ClusterReport {
    /// The report's line in the terminal summary.
    pub fn line(&self) -> String {
        format!(
            "cluster    {} nodes; writes ok {}, refused {}, unknown {}; {} redirects, {} resends; \
             longest gap between acknowledged writes {:.0} ms{}",
            self.targets.len(),
            self.writes_ok,
            self.writes_refused,
            self.writes_unknown,
            self.redirects,
            self.resends,
            self.longest_write_gap_ms,
            self.failover_gap_ms
                .map_or(String::new(), |g| format!("; failover gap {g:.0} ms"))
        )
    }
}

/// How a run's writes to a cluster ended: each write (one idempotency key, resent as often
/// as it took) counts once, by its final outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The nodes, as given to `--target`.
    pub targets: Vec<String>,
    /// Writes a node acknowledged (2xx).
    pub writes_ok: u64,
    /// Writes the engine refused (a 4xx other than `421 not_leader`).
    pub writes_refused: u64,
    /// Writes that never got a definite answer (no answer, `503 outcome_unknown` or `421`
    /// to the last resend); the after-run check resolves each by resending it with its key.
    pub writes_unknown: u64,
    /// `421 not_leader` answers followed to another node.
    pub redirects: u64,
    /// Writes sent again after a redirect, a lost connection or an unknown outcome.
    pub resends: u64,
    /// The longest time between two acknowledged writes (ms): a failover shows here.
    pub longest_write_gap_ms: f64,
    /// When a node was killed during the run: from the kill to the first write acknowledged
    /// after it (ms); `None` when nothing was killed or nothing acknowledged after.
    #[serde(default)]
    pub failover_gap_ms: Option<f64>,
}

/// The layout version of `summary.json`: 2 added `schema_version`, `passed`, `valid`, the
/// versions, `server_metrics` and `latency_distribution`; 3 added `cluster` (present only for
/// a run against several targets).
pub const SCHEMA_VERSION: u32 = 3;

/// One point of the latency distribution.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// The percentile (e.g. 99.9).
    pub percentile: f64,
    /// Latency at it, milliseconds.
    pub ms: f64,
}

/// The plan's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanInfo {
    /// Seed.
    pub seed: u64,
    /// Time compression.
    pub speed: f64,
    /// Journeys.
    pub journeys: usize,
    /// Seconds before the opening the first request is due.
    pub lead_s: f64,
    /// Requests planned (first attempts, before retries and reactions).
    pub planned_requests: u64,
}

/// Latency percentiles in milliseconds, measured from the intended send time.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One endpoint's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointSummary {
    /// The endpoint (`list`, `reserve`, ...).
    pub name: String,
    /// Requests.
    pub requests: u64,
    /// Requests by outcome class.
    pub outcomes: BTreeMap<String, u64>,
    /// Latency of every request, answered or not.
    pub latency: Percentiles,
}

/// How journeys ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JourneySummary {
    /// Journeys by ending (`seated`, `seated_from_waitlist`, `waitlisted`, `sold_out`,
    /// `not_called`, `failed`).
    pub endings: BTreeMap<String, u64>,
    /// From the holder's decision to act until the seat was theirs.
    pub time_to_seat: Percentiles,
}

/// Generator lateness.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LagSummary {
    /// Median lag.
    pub p50_ms: f64,
    /// 99th percentile lag.
    pub p99_ms: f64,
    /// Largest lag.
    pub max_ms: f64,
    /// The p99 above which the run is invalid.
    pub limit_ms: f64,
    /// `p99_ms <= limit_ms`: the generator kept to the plan.
    pub valid: bool,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the opening (negative before it), run time.
    pub t_s: f64,
    /// Requests answered in this second, by outcome class.
    pub outcomes: BTreeMap<String, u64>,
    /// Median latency of the requests answered in this second.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// 99th percentile of the reservations answered in this second.
    pub reserve_p99_ms: f64,
    /// 99th percentile of how late the generator sent the requests answered in this second.
    #[serde(default)]
    pub send_lag_p99_ms: f64,
}

/// Free seats per province, sampled while the run goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeatsTimeline {
    /// Province ids and English names, in the order of each sample's values.
    pub provinces: Vec<(u32, String)>,
    /// Seats in each province at the start.
    pub seats_total: Vec<u64>,
    /// Samples: seconds since the opening and free seats per province.
    pub samples: Vec<(f64, Vec<u64>)>,
}

/// A province's sell-out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SellOut {
    /// Province id.
    pub province_id: u32,
    /// English name.
    pub name: String,
    /// Seconds after the opening, run time (sampling resolution).
    pub run_s: f64,
    /// The same in opening-day time (`run_s * speed`).
    pub day_s: f64,
}

/// One pass of the after-run checker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckReport {
    /// What was checked (e.g. `after the run`, `after the restart`).
    pub label: String,
    /// No violation.
    pub passed: bool,
    /// Each violation in words (the first few; `violation_count` counts them all).
    pub violations: Vec<String>,
    /// Violations found, all of them.
    #[serde(default)]
    pub violation_count: u64,
    /// Reservations the server lists.
    pub reservations: u64,
    /// Live (offered, held or confirmed) among them.
    pub live: u64,
    /// 201s the client saw, each found on the server.
    pub acknowledged: u64,
    /// Requests without an answer, resolved by resending with their key.
    pub resolved: u64,
    /// Spearman rank correlation of the intended send time and the server's creation time
    /// of the seated reservations (1 is perfect first-come-first-served).
    pub fcfs_rank_correlation: Option<f64>,
}

/// A latency gate from `--slo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SloResult {
    /// The gate as written (`reserve:p99<50ms`).
    pub gate: String,
    /// What was measured, in milliseconds.
    pub measured_ms: f64,
    /// The bound the measure must stay below, in milliseconds.
    #[serde(default)]
    pub bound_ms: f64,
    /// Whether it held.
    pub passed: bool,
}

/// The same client against a trivial axum JSON handler.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BaselineReport {
    /// Requests per second the trivial handler answered, closed loop.
    pub ceiling_rps: f64,
    /// The generator's requests per second per CPU-second it used (client threads only).
    pub generator_rps_per_core: Option<f64>,
    /// Latency of the closed-loop ceiling run.
    pub ceiling_latency: Percentiles,
    /// Our peak second against the ceiling.
    pub peak_ratio: f64,
    /// Per endpoint: our p50 and p99 against the trivial handler's, same open-loop schedule.
    pub endpoints: Vec<BaselineEndpoint>,
}

/// One endpoint against the baseline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BaselineEndpoint {
    /// Endpoint.
    pub name: String,
    /// The trivial handler's latency for the same requests.
    pub baseline: Percentiles,
    /// Ours.
    pub ours: Percentiles,
    /// `ours.p50 / baseline.p50`.
    pub p50_ratio: f64,
    /// `ours.p99 / baseline.p99`.
    pub p99_ratio: f64,
}

impl Summary {
    /// The verdicts judged from this summary's figures and thresholds.
    pub fn verdicts(&self) -> Verdicts {
        verdict::judge(self)
    }

    /// Stores [`Summary::verdicts`] in `verdict` (for `summary.json`).
    pub fn judge(&mut self) {
        self.verdict = self.verdicts();
        self.schema_version = SCHEMA_VERSION;
        self.passed = self.verdict.passed();
        self.valid = self.valid();
        self.tool_version = env!("CARGO_PKG_VERSION").to_owned();
    }

    /// Whether the run passed overall: correctness (when checked), service and measurement
    /// validity all passed.
    pub fn passed(&self) -> bool {
        self.verdicts().passed()
    }

    /// Whether the generator kept to the plan, so the latency figures are measurements of
    /// the server under the planned load.
    pub fn valid(&self) -> bool {
        self.send_lag.valid
    }

    /// The end-of-run text for the terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "run        {} journeys (seed {}, speed {}x) against {}; {:.1} s, {} requests, {:.0} req/s (peak second {})",
            self.plan.journeys,
            self.plan.seed,
            self.plan.speed,
            self.target,
            self.duration_s,
            self.requests,
            self.throughput_rps,
            self.peak_rps
        );
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "outcomes   {}", outcomes.join(", "));
        let mut answers: Vec<(&String, &u64)> = self.answers.iter().collect();
        answers.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let answers: Vec<String> = answers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "answers    {}", answers.join(", "));
        let endings: Vec<String> = self
            .journeys
            .endings
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "journeys   {}; goodput {:.1} seated/s; retry amplification {:.2}x",
            endings.join(", "),
            self.goodput_per_s,
            self.retry_amplification
        );
        let t = &self.journeys.time_to_seat;
        let _ = writeln!(
            out,
            "to a seat  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (decision to acknowledged seat)",
            t.p50_ms, t.p99_ms, t.max_ms
        );
        let _ = writeln!(
            out,
            "latency    {:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "endpoint", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for e in &self.endpoints {
            let l = &e.latency;
            let _ = writeln!(
                out,
                "           {:<14} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
                e.name, e.requests, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        let _ = writeln!(
            out,
            "conn wait  p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms (waiting for one of the client's connections)",
            self.connection_wait.p50_ms, self.connection_wait.p99_ms, self.connection_wait.max_ms
        );
        let _ = writeln!(
            out,
            "send lag   p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms: {}",
            self.send_lag.p50_ms,
            self.send_lag.p99_ms,
            self.send_lag.max_ms,
            if self.send_lag.valid {
                "the generator kept to the plan".to_string()
            } else {
                format!(
                    "INVALID RUN, the generator fell behind (p99 above {} ms)",
                    self.send_lag.limit_ms
                )
            }
        );
        if !self.sell_out.is_empty() {
            let first = &self.sell_out[0];
            let _ = writeln!(
                out,
                "sell-out   {} of {} provinces sold out; first {} after {:.1} s ({:.0} s of opening-day time)",
                self.sell_out.len(),
                self.seats.provinces.len(),
                first.name,
                first.run_s,
                first.day_s
            );
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                out,
                "baseline   trivial axum handler, same client: {:.0} req/s closed loop; our peak second {:.2}x of it{}",
                b.ceiling_rps,
                b.peak_ratio,
                match b.generator_rps_per_core {
                    Some(r) => format!("; generator {r:.0} req/s per core"),
                    None => String::new(),
                }
            );
            for e in &b.endpoints {
                let _ = writeln!(
                    out,
                    "           {:<14} p50 {:.2} vs {:.2} ms ({:.1}x)  p99 {:.2} vs {:.2} ms ({:.1}x)",
                    e.name,
                    e.ours.p50_ms,
                    e.baseline.p50_ms,
                    e.p50_ratio,
                    e.ours.p99_ms,
                    e.baseline.p99_ms,
                    e.p99_ratio
                );
            }
        }
        if let Some(cluster) = &self.cluster {
            let _ = writeln!(out, "{}", cluster.line());
        }
        for c in &self.checks {
            let _ = writeln!(
                out,
                "check      {}: {} ({} reservations, {} live, {} acknowledged found, {} unanswered resolved, FCFS rank correlation {})",
                c.label,
                if c.passed { "PASSED" } else { "FAILED" },
                c.reservations,
                c.live,
                c.acknowledged,
                c.resolved,
                c.fcfs_rank_correlation
                    .map_or("n/a".to_string(), |r| format!("{r:.3}"))
            );
            for v in &c.violations {
                let _ = writeln!(out, "           violation: {v}");
            }
        }
        for s in &self.slo {
            let _ = writeln!(
                out,
                "slo        {}: measured {:.2} ms, {}",
                s.gate,
                s.measured_ms,
                if s.passed { "held" } else { "MISSED" }
            );
        }
        let verdicts = self.verdicts();
        let _ = writeln!(out, "verdict    {}", verdicts.headline());
        for line in verdicts.lines() {
            let _ = writeln!(
                out,
                "           {:<12} {:<11} {}",
                line.label, line.word, line.detail
            );
        }
        for v in &self.client_violations {
            let _ = writeln!(out, "           client saw: {v}");
        }
        out
    }
}
