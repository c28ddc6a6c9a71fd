//! The server's Prometheus metrics: the recorder with per-metric buckets and its upkeep, HELP
//! text for every family, counters registered at zero, handles the request path keeps instead
//! of looking labels up, and the process and build metrics added at scrape time.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Unit};
/// The recorder's handle, which renders `/metrics`.
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use rustc_hash::FxHashMap;

/// Latency buckets (seconds), for requests and `fsync`: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Records per log batch: powers of two up to 16384.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0,
];
/// How late an expiry ran after its deadline (seconds): 1 ms to 5 minutes.
pub const LATENESS_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How often the recorder's upkeep drains histogram samples into their buckets: without it
/// every sample stays in memory until the next scrape, and nobody may scrape.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The git revision this crate was built from (`unknown` outside a git checkout).
pub const GIT_SHA: &str = env!("MIQAT_GIT_SHA");
/// The version of the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every error `code` a problem document can carry, for counters that are kept by code.
pub const CODES: &[&str] = &[
    "malformed_request",
    "invalid_field",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "body_too_large",
    "request_timeout",
    "rate_limited",
    "overloaded",
    "not_ready",
    "invalid_credentials",
    "receipt_needs_conversion",
    "registration_not_open",
    "not_called",
    "province_mismatch",
    "caravan_not_found",
    "reservation_not_found",
    "caravan_full",
    "already_reserved",
    "invalid_transition",
    "idempotency_key_reused",
    "seats_available",
    "registration_ended",
    "schedule_out_of_order",
    "queue_pass_required",
    "queue_pass_invalid",
    "queue_pass_not_yours",
    "queue_pass_expired",
    "no_waiting_room",
    "queue_not_open",
    "province_sold_out",
    "internal_error",
];

/// The codes `POST /v1/reservations` can be refused with, registered at zero.
const RESERVE_REFUSALS: &[&str] = &[
    "malformed_request",
    "invalid_field",
    "invalid_credentials",
    "receipt_needs_conversion",
    "registration_not_open",
    "not_called",
    "province_mismatch",
    "caravan_not_found",
    "caravan_full",
    "already_reserved",
    "idempotency_key_reused",
    "registration_ended",
    "queue_pass_required",
    "queue_pass_invalid",
    "queue_pass_not_yours",
    "queue_pass_expired",
    "rate_limited",
    "overloaded",
    "not_ready",
    "internal_error",
];

/// `(name, unit, help)` of every counter family.
const COUNTERS: &[(&str, Unit, &str)] = &[
    (
        "miqat_queue_admitted_total",
        Unit::Count,
        "Places a wave's waiting room has admitted (its rate is the admissions per second).",
    ),
    (
        "miqat_http_requests_total",
        Unit::Count,
        "HTTP requests answered by the router, by method, route and status.",
    ),
    (
        "miqat_http_refusals_total",
        Unit::Count,
        "Requests answered with a problem document, by route and error code.",
    ),
    (
        "miqat_reservations_total",
        Unit::Count,
        "Answers to POST /v1/reservations by outcome: reserved, replayed, or the refusal code.",
    ),
    (
        "miqat_admission_rejections_total",
        Unit::Count,
        "Requests refused before any work: overloaded (shed at the in-flight limit) or rate_limited (per client address).",
    ),
    (
        "miqat_connections_closed_total",
        Unit::Count,
        "Connections closed, by reason (finished, idle_timeout, header_timeout, shutdown, error, connections_max, per_client_cap).",
    ),
    (
        "miqat_requests_refused_unread_total",
        Unit::Count,
        "Requests refused before their body was read, by reason.",
    ),
    (
        "miqat_wal_records_total",
        Unit::Count,
        "Records written to the write-ahead log since start.",
    ),
    (
        "miqat_wal_bytes_total",
        Unit::Bytes,
        "Bytes written to the write-ahead log since start, frame headers included.",
    ),
    (
        "miqat_expirations_total",
        Unit::Count,
        "Holds and offers ended because their deadline passed.",
    ),
    (
        "miqat_clock_steps_total",
        Unit::Count,
        "Wall-clock steps larger than the tolerance, not followed until a restart.",
    ),
    (
        "miqat_waitlist_offers_made_total",
        Unit::Count,
        "Freed seats offered to the first holder waiting in their city.",
    ),
    (
        "miqat_waitlist_offers_ended_total",
        Unit::Count,
        "Waiting-list offers that ended, by outcome: accepted, lapsed (deadline passed) or declined.",
    ),
    (
        "miqat_raft_leader_changes_total",
        Unit::Count,
        "Cluster mode: times this node saw a new leader (elections that ended with a leader).",
    ),
];

/// `(name, unit, help)` of every gauge family.
const GAUGES: &[(&str, Unit, &str)] = &[
    (
        "miqat_queue_length",
        Unit::Count,
        "Holders in a wave's waiting room not yet admitted, at scrape time.",
    ),
    (
        "miqat_queue_joined",
        Unit::Count,
        "Holders who joined a wave's waiting room, at scrape time.",
    ),
    (
        "miqat_queue_outflow_per_second",
        Unit::Count,
        "The waiting room's outflow rate last used: places admitted per second (configured, \
         or the automatic one).",
    ),
    (
        "miqat_build_info",
        Unit::Count,
        "Always 1; the labels name the version and the git revision of the running server.",
    ),
    (
        "miqat_connections_open",
        Unit::Count,
        "Connections open now.",
    ),
    (
        "miqat_requests_in_flight",
        Unit::Count,
        "Requests admitted and not yet answered, at scrape time.",
    ),
    (
        "miqat_requests_in_flight_limit",
        Unit::Count,
        "Requests in flight at most; past it requests are shed with 503 overloaded.",
    ),
    (
        "miqat_seats_capacity",
        Unit::Count,
        "Seats over all caravans of a province (free, held, offered and confirmed together).",
    ),
    (
        "miqat_seats_free",
        Unit::Count,
        "Seats of a province not held, offered or confirmed, at scrape time.",
    ),
    (
        "miqat_holds_live",
        Unit::Count,
        "Holds and offers of a province not yet confirmed, at scrape time.",
    ),
    (
        "miqat_waitlist_length",
        Unit::Count,
        "Holders waiting in a province, at scrape time.",
    ),
    (
        "miqat_clock_untrusted_offset_seconds",
        Unit::Seconds,
        "The last wall-clock step not followed; 0 once the clock is trusted again.",
    ),
    (
        "miqat_wal_failed",
        Unit::Count,
        "1 once the log has failed (fail-stop: writes are refused and the process exits after \
         its grace), else 0.",
    ),
    (
        "miqat_wal_staged_bytes",
        Unit::Bytes,
        "Log bytes staged and not yet written, at scrape time.",
    ),
    (
        "miqat_wal_staged_bytes_limit",
        Unit::Bytes,
        "Staged log bytes at most; past it decisions are refused with 503 overloaded.",
    ),
    (
        "miqat_raft_term",
        Unit::Count,
        "Cluster mode: this node's Raft term; it grows by one or more with each election.",
    ),
    (
        "miqat_raft_is_leader",
        Unit::Count,
        "Cluster mode: 1 while this node is the leader (takes writes), else 0.",
    ),
    (
        "miqat_raft_leader_known",
        Unit::Count,
        "Cluster mode: 1 while this node knows a leader, else 0 (an election is running or the node is cut off).",
    ),
    (
        "miqat_raft_last_log_index",
        Unit::Count,
        "Cluster mode: the index of the last entry in this node's Raft log.",
    ),
    (
        "miqat_raft_commit_index",
        Unit::Count,
        "Cluster mode, on the leader: the highest log index a majority of the voters holds on disk.",
    ),
    (
        "miqat_raft_applied_index",
        Unit::Count,
        "Cluster mode: the index of the last entry this node applied to its state.",
    ),
    (
        "miqat_raft_replication_lag_entries",
        Unit::Count,
        "Cluster mode, on the leader: entries of the leader's log a follower does not hold yet, by follower id (NaN once this node no longer replicates to it).",
    ),
];

/// `(name, unit, help)` of every histogram family.
const HISTOGRAMS: &[(&str, Unit, &str)] = &[
    (
        "miqat_queue_wait_seconds",
        Unit::Seconds,
        "How long admitted holders waited in a wave's waiting room, from the later of their \
         join and the opening to their admission.",
    ),
    (
        "miqat_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival at the router to its answer, by method and route.",
    ),
    (
        "miqat_wal_fsync_seconds",
        Unit::Seconds,
        "Duration of each fdatasync of the write-ahead log.",
    ),
    (
        "miqat_wal_batch_records",
        Unit::Count,
        "Records per batch the log flusher writes and syncs at once.",
    ),
    (
        "miqat_expiry_lateness_seconds",
        Unit::Seconds,
        "How long after its deadline a hold or offer was expired.",
    ),
    (
        "miqat_raft_append_seconds",
        Unit::Seconds,
        "Cluster mode, on the leader: time from proposing a batch of writes to its commit on a majority and its apply here.",
    ),
];

/// Installs the Prometheus recorder as the process's global recorder, describes every
/// family, registers the counters at zero and starts the upkeep thread.
///
/// # Errors
/// When a recorder is already installed or a bucket list is empty.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("miqat_wal_batch_records".into()),
            BATCH_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("miqat_expiry_lateness_seconds".into()),
            LATENESS_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    register_at_zero();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("miqat-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the metrics upkeep thread did not start");
    }
    Ok(handle)
}

fn describe() {
    for &(name, unit, help) in COUNTERS {
        metrics::describe_counter!(name, unit, help);
    }
    for &(name, unit, help) in GAUGES {
        metrics::describe_gauge!(name, unit, help);
    }
    for &(name, unit, help) in HISTOGRAMS {
        metrics::describe_histogram!(name, unit, help);
    }
}

/// Registers the counters whose labels are known in advance, so that a dashboard's `rate()`
/// sees them from the first scrape on instead of only after the first event.
fn register_at_zero() {
    for reason in ["overloaded", "rate_limited"] {
        metrics::counter!("miqat_admission_rejections_total", "reason" => reason).absolute(0);
    }
    for outcome in ["reserved", "replayed"].iter().chain(RESERVE_REFUSALS) {
        metrics::counter!("miqat_reservations_total", "outcome" => *outcome).absolute(0);
    }
    for outcome in ["accepted", "lapsed", "declined"] {
        metrics::counter!("miqat_waitlist_offers_ended_total", "outcome" => outcome).absolute(0);
    }
    for reason in [
        "finished",
        "idle_timeout",
        "header_timeout",
        "shutdown",
        "error",
        "connections_max",
        "per_client_cap",
    ] {
        metrics::counter!("miqat_connections_closed_total", "reason" => reason).absolute(0);
    }
    for reason in ["body_too_large", "body_error", "body_timeout"] {
        metrics::counter!("miqat_requests_refused_unread_total", "reason" => reason).absolute(0);
    }
    for name in [
        "miqat_wal_records_total",
        "miqat_wal_bytes_total",
        "miqat_expirations_total",
        "miqat_clock_steps_total",
        "miqat_waitlist_offers_made_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    // Histograms without labels, so that their buckets are exported before the first sample.
    for name in [
        "miqat_wal_fsync_seconds",
        "miqat_wal_batch_records",
        "miqat_expiry_lateness_seconds",
    ] {
        drop(metrics::histogram!(name));
    }
    metrics::gauge!("miqat_build_info", "version" => VERSION, "git_sha" => GIT_SHA).set(1.0);
    metrics::gauge!("miqat_connections_open").set(0.0);
    metrics::gauge!("miqat_clock_untrusted_offset_seconds").set(0.0);
}

/// The methods requests are counted under; anything else is `other`.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "other"];
/// The statuses with a handle of their own; any other status is looked up on the slow path.
const STATUSES: [u16; 18] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500, 503, 504,
];

/// The method's index in [`METHODS`].
pub(crate) fn method_index(method: &axum::http::Method) -> usize {
    use axum::http::Method;
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::HEAD => 4,
        Method::OPTIONS => 5,
        _ => 6,
    }
}

/// Handles of one route, registered on first use and kept.
struct RouteHandles {
    route: String,
    duration: [OnceLock<Histogram>; METHODS.len()],
    requests: Box<[OnceLock<Counter>]>,
    refusals: Box<[OnceLock<Counter>]>,
}

impl RouteHandles {
    fn new(route: &str) -> RouteHandles {
        RouteHandles {
            route: route.to_owned(),
            duration: Default::default(),
            requests: (0..METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            refusals: (0..CODES.len()).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// The request path's metric handles: after a route's first request with a given method,
/// status or code, counting it is an array index and an atomic add, no label lookup.
pub(crate) struct RequestMetrics {
    routes: FxHashMap<String, RouteHandles>,
    codes: FxHashMap<&'static str, usize>,
    reservations: Box<[OnceLock<Counter>]>,
    reserved: OnceLock<Counter>,
    replayed: OnceLock<Counter>,
    overloaded: OnceLock<Counter>,
    rate_limited: OnceLock<Counter>,
}

/// Why admission control refused a request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rejection {
    /// Shed at the in-flight limit.
    Overloaded,
    /// Over the per-client rate.
    RateLimited,
}

impl RequestMetrics {
    /// Handles for `routes` (the router's paths); other routes are counted on the slow path.
    pub(crate) fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> RequestMetrics {
        RequestMetrics {
            routes: routes
                .into_iter()
                .map(|r| (r.to_owned(), RouteHandles::new(r)))
                .collect(),
            codes: CODES.iter().enumerate().map(|(i, c)| (*c, i)).collect(),
            reservations: (0..CODES.len()).map(|_| OnceLock::new()).collect(),
            reserved: OnceLock::new(),
            replayed: OnceLock::new(),
            overloaded: OnceLock::new(),
            rate_limited: OnceLock::new(),
        }
    }

    /// Counts one request admission control refused.
    pub(crate) fn admission_rejected(&self, why: Rejection) {
        match why {
            Rejection::Overloaded => self.overloaded.get_or_init(|| {
                metrics::counter!("miqat_admission_rejections_total", "reason" => "overloaded")
            }),
            Rejection::RateLimited => self.rate_limited.get_or_init(|| {
                metrics::counter!("miqat_admission_rejections_total", "reason" => "rate_limited")
            }),
        }
        .increment(1);
    }

    /// Counts one answered request and records its duration; `code` is the problem's code
    /// for a refusal.
    pub(crate) fn observe(
        &self,
        method: usize,
        route: &str,
        status: u16,
        code: Option<&'static str>,
        seconds: f64,
    ) {
        let method_name = METHODS[method.min(METHODS.len() - 1)];
        let Some(handles) = self.routes.get(route) else {
            slow_observe(method_name, route.to_owned(), status, code, seconds);
            return;
        };
        handles.duration[method.min(METHODS.len() - 1)]
            .get_or_init(|| {
                metrics::histogram!("miqat_http_request_duration_seconds",
                    "method" => method_name, "route" => handles.route.clone())
            })
            .record(seconds);
        match STATUSES.iter().position(|&s| s == status) {
            Some(s) => handles.requests[method * STATUSES.len() + s]
                .get_or_init(|| {
                    metrics::counter!("miqat_http_requests_total", "method" => method_name,
                        "route" => handles.route.clone(), "status" => status.to_string())
                })
                .increment(1),
            None => metrics::counter!("miqat_http_requests_total", "method" => method_name,
                "route" => handles.route.clone(), "status" => status.to_string())
            .increment(1),
        }
        if let Some(code) = code {
            match self.codes.get(code) {
                Some(&c) => handles.refusals[c]
                    .get_or_init(|| {
                        metrics::counter!("miqat_http_refusals_total",
                            "route" => handles.route.clone(), "code" => code)
                    })
                    .increment(1),
                None => metrics::counter!("miqat_http_refusals_total",
                    "route" => handles.route.clone(), "code" => code)
                .increment(1),
            }
        }
    }

    /// Counts one answer to `POST /v1/reservations`: `None` for a reservation (new or
    /// `replayed`), else the refusal's code.
    pub(crate) fn reservation(&self, refusal: Option<&'static str>, replayed: bool) {
        let counter = match refusal {
            None if replayed => self.replayed.get_or_init(
                || metrics::counter!("miqat_reservations_total", "outcome" => "replayed"),
            ),
            None => self.reserved.get_or_init(
                || metrics::counter!("miqat_reservations_total", "outcome" => "reserved"),
            ),
            Some(code) => match self.codes.get(code) {
                Some(&c) => self.reservations[c].get_or_init(
                    || metrics::counter!("miqat_reservations_total", "outcome" => code),
                ),
                None => {
                    metrics::counter!("miqat_reservations_total", "outcome" => code).increment(1);
                    return;
                }
            },
        };
        counter.increment(1);
    }
}

fn slow_observe(
    method: &'static str,
    route: String,
    status: u16,
    code: Option<&'static str>,
    seconds: f64,
) {
    metrics::histogram!("miqat_http_request_duration_seconds",
        "method" => method, "route" => route.clone())
    .record(seconds);
    if let Some(code) = code {
        metrics::counter!("miqat_http_refusals_total", "route" => route.clone(), "code" => code)
            .increment(1);
    }
    metrics::counter!("miqat_http_requests_total",
        "method" => method, "route" => route, "status" => status.to_string())
    .increment(1);
}

/// Appends the standard `process_*` families (CPU, memory, open files, start time, threads),
/// read from `/proc` on Linux; elsewhere nothing is appended.
pub fn render_process_metrics(out: &mut String) {
    let Some(process) = ProcessSample::read() else {
        return;
    };
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        process.cpu_seconds,
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        process.resident_bytes,
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        process.virtual_bytes,
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        process.open_fds,
    );
    if let Some(max) = process.max_fds {
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        process.start_time_seconds,
    );
    family(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        process.threads,
    );
}

/// What `/proc/self` says about this process.
struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: f64,
    threads: f64,
}

/// Linux reports times in `/proc` in units of `USER_HZ`, which is 100 on every architecture
/// Linux supports (the kernel converts for user space).
const USER_HZ: f64 = 100.0;

impl ProcessSample {
    fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        // Field n of proc(5) is fields[n - 3] here (pid and comm precede the cut).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let status_kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find_map(|l| l.strip_prefix("Max open files"))
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|soft| soft.parse::<f64>().ok())
            });
        Some(ProcessSample {
            cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
            resident_bytes: status_kib("VmRSS:")? * 1024.0,
            virtual_bytes: field(23)?,
            open_fds,
            max_fds,
            start_time_seconds: boot_time + field(22)? / USER_HZ,
            threads: field(20)?,
        })
    }
}
