//! `miqat loadtest`: replays an opening-day rush against a Miqat server over HTTP and checks
//! what it did.
//!
//! A [`plan::Plan`] is drawn from a data set and a seed ([`plan::generate`]) or read from a
//! recorded NDJSON trace ([`plan::read`]). [`run::play`] plays it open loop: every request has
//! an intended send time anchored at the wave's opening, and latency is counted from it into
//! per-endpoint HdrHistograms ([`recorder`]). [`check::check`] then verifies through the
//! operator API that no caravan is over capacity, no holder holds two seats, every
//! acknowledged reservation exists and seats went first come, first served. [`summary`],
//! [`html`] and the terminal report what users felt; [`baseline`] measures a trivial handler
//! with the same client for ratios. The crate speaks only HTTP and its own trace format.

pub mod admin;
pub mod baseline;
pub mod check;
pub mod client;
pub mod cluster_check;
pub mod dataset;
pub mod follow;
pub mod html;
pub mod journey;
pub mod outcome;
pub mod plan;
pub mod recorder;
pub mod run;
pub mod server_metrics;
pub mod slo;
pub mod summary;
pub mod tls;
pub mod verdict;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::admin::Admin;
use crate::check::CheckInput;
use crate::plan::{Plan, PlanParams};
use crate::run::{Played, RunOptions};
use crate::summary::{BaselineEndpoint, BaselineReport, Summary};
use crate::verdict::ServiceLimits;

/// Options of `miqat loadtest`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// The server's base URL; several, comma-separated, for a cluster's nodes (writes follow
    /// the leader, reads go round the nodes, the check reads every node).
    #[arg(long, env = "MIQAT_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The data set the plan is drawn from (`caravans.csv`, `holders.csv`, `season.toml`).
    #[arg(
        long,
        env = "MIQAT_CATALOG",
        required_unless_present_any = ["replay", "list_params"]
    )]
    pub catalog: Option<PathBuf>,
    /// Play a recorded plan (NDJSON from `--record`) with its original timing.
    #[arg(long, conflicts_with_all = ["seed", "speed", "holders", "set"])]
    pub replay: Option<PathBuf>,
    /// Write the plan to this NDJSON file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Only write the plan (`--record`), do not play it.
    #[arg(long, requires = "record")]
    pub plan_only: bool,
    /// Seed of every random choice: the same seed draws the same plan.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Time compression: 60 plays an hour of the opening day in a minute.
    #[arg(long)]
    pub speed: Option<f64>,
    /// Active holders (journeys); default: every holder the wave calls, plus 3% who are not.
    #[arg(long)]
    pub holders: Option<usize>,
    /// The wave to rush (default: the first).
    #[arg(long)]
    pub wave: Option<String>,
    /// Any plan parameter, `name=value` (e.g. `refresh_s=5`, `early_share=0.4`); repeatable.
    /// `miqat loadtest --list-params` lists them with their defaults.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Print the plan parameters with their defaults and exit.
    #[arg(long)]
    pub list_params: bool,
    /// The operator's token: operator events, `--reschedule-in` and the after-run check.
    #[arg(long, env = "MIQAT_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Move the wave's opening to this many seconds from now first (operator).
    #[arg(long, value_name = "SECONDS")]
    pub reschedule_in: Option<f64>,
    /// Requests in flight at most (keep-alive connections).
    #[arg(long, default_value_t = 1024)]
    pub connections: usize,
    /// Seconds after its intended time a request without an answer counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Client threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Latency gate, e.g. `reserve:p99<50ms` (targets: endpoints or `seat`); repeatable.
    #[arg(long)]
    pub slo: Vec<String>,
    /// The least rank correlation of arrival and seat order that passes the FCFS check.
    #[arg(long, default_value_t = 0.8)]
    pub fcfs_min: f64,
    /// The send-lag p99 (ms) above which the run is invalid as a measurement.
    #[arg(long, default_value_t = 50.0)]
    pub max_lag_ms: f64,
    /// Thresholds of the service verdict.
    #[command(flatten)]
    pub limits: ServiceLimits,
    /// Also measure a trivial axum handler with the same client and plan; print ratios.
    #[arg(long)]
    pub baseline: bool,
    /// Skip the after-run check (it needs the operator token).
    #[arg(long)]
    pub no_check: bool,
    /// TLS for `https://` targets.
    #[command(flatten)]
    pub tls: tls::TlsArgs,
    /// Folder for `summary.json` and `report.html`.
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
    /// No live view.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `miqat loadtest`; `Ok(summary)` even when the run failed its checks (see
/// [`Summary::passed`]); `Err` when it could not run at all.
pub fn run_cli(args: &LoadtestArgs) -> anyhow::Result<Option<Summary>> {
    if args.list_params {
        let params = serde_json::to_value(PlanParams::default())?;
        if let serde_json::Value::Object(map) = params {
            for (name, value) in map {
                println!("{name} = {value}");
            }
        }
        return Ok(None);
    }
    args.limits.validate()?;
    let slos = args
        .slo
        .iter()
        .map(|s| slo::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = match &args.catalog {
        Some(dir) if args.replay.is_none() => Some(
            dataset::load(dir)
                .with_context(|| format!("reading the data set in {}", dir.display()))?,
        ),
        _ => None,
    };
    let plan = match (&args.replay, &data) {
        (Some(path), _) => plan::read(path)?,
        (None, Some(data)) => plan::generate(data, &params_from_args(args)?)?,
        (None, None) => bail!("give --catalog DIR (to draw a plan) or --replay FILE"),
    };
    eprintln!(
        "plan: {} journeys, seed {}, speed {}x, first request {:.1} s before the opening",
        plan.journeys.len(),
        plan.header.params.seed,
        plan.header.params.speed,
        -(plan.lead_ms() as f64) / 1000.0
    );
    if let Some(path) = &args.record {
        plan::write(&plan, path)?;
        eprintln!("plan written to {}", path.display());
        if args.plan_only {
            return Ok(None);
        }
    }
    let runtime = client_runtime(args.threads)?;
    let options = RunOptions {
        target: args.target.clone(),
        connections: args.connections,
        timeout: Duration::try_from_secs_f64(args.timeout)
            .map_err(|_| anyhow::anyhow!("--timeout must be a positive number of seconds"))?,
        operator_token: args.operator_token.clone(),
        reschedule_in: args
            .reschedule_in
            .map(|s| {
                Duration::try_from_secs_f64(s)
                    .map_err(|_| anyhow::anyhow!("--reschedule-in must be seconds >= 0"))
            })
            .transpose()?,
        max_lag_ms: args.max_lag_ms,
        live: !args.quiet,
        tls: tls::ClientTls::from_args(&args.tls)?,
        failover_mark: follow::FailoverMark::default(),
    };
    let extras = Extras {
        slos,
        fcfs_min: args.fcfs_min,
        check: !args.no_check,
        baseline: args.baseline,
        capacities: data.as_ref().map(|d| d.capacities()),
        limits: args.limits,
        holders: data.as_ref().map(|d| Arc::new(d.holder_receipts())),
    };
    let summary = runtime.block_on(execute(&plan, &options, &extras))?;
    write_reports(&summary, &args.out)?;
    Ok(Some(summary))
}

/// The client runtime, its threads named so the generator's CPU time can be told apart.
pub fn client_runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder
        .thread_name(baseline::CLIENT_THREAD_NAME)
        .enable_all()
        .build()
        .context("starting the client runtime")
}

fn params_from_args(args: &LoadtestArgs) -> anyhow::Result<PlanParams> {
    let mut params = PlanParams::default();
    if let Some(seed) = args.seed {
        params.seed = seed;
    }
    if let Some(speed) = args.speed {
        params.speed = speed;
    }
    params.holders = args.holders.or(params.holders);
    params.wave = args.wave.clone();
    apply_settings(&mut params, &args.set)?;
    Ok(params)
}

/// Applies `name=value` settings to `params`; unknown names and bad values are refused.
pub fn apply_settings(params: &mut PlanParams, settings: &[String]) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(&*params)?;
    for setting in settings {
        let (name, text) = setting
            .split_once('=')
            .with_context(|| format!("--set {setting:?}: expected NAME=VALUE"))?;
        let name = name.trim();
        let slot = value
            .get_mut(name)
            .with_context(|| format!("--set {setting:?}: no plan parameter named {name:?}"))?;
        *slot = serde_json::from_str(text.trim())
            .unwrap_or_else(|_| serde_json::Value::String(text.trim().to_string()));
    }
    *params = serde_json::from_value(value).context("--set: a value has the wrong type")?;
    Ok(())
}

/// What to do around playing the plan.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Latency gates.
    pub slos: Vec<slo::Slo>,
    /// FCFS threshold.
    pub fcfs_min: f64,
    /// Run the after-run check.
    pub check: bool,
    /// Measure the trivial baseline too.
    pub baseline: bool,
    /// Capacities from the data set, if known.
    pub capacities: Option<HashMap<String, u32>>,
    /// Thresholds of the service verdict.
    pub limits: ServiceLimits,
    /// Province and receipt of each holder from the data set, if known (the schedule check).
    pub holders: Option<Arc<HashMap<String, (u32, dataset::JalaliDay)>>>,
}

/// When the run started, after it set the schedule: the schedule check starts there.
pub fn run_started_ms(summary: &Summary) -> Option<i64> {
    summary
        .started_at
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Plays `plan`, checks, gates and (if asked) measures the baseline; returns the summary and
/// the records (the caller may check again later, e.g. after a restart).
pub async fn execute_with_records(
    plan: &Plan,
    options: &RunOptions,
    extras: &Extras,
) -> anyhow::Result<(Summary, recorder::Recorded)> {
    let Played {
        mut summary,
        recorded,
    } = run::play(plan, options).await?;
    if options.live {
        eprintln!("played; checking");
    }
    if extras.check {
        let input = CheckInput {
            recorded: &recorded,
            capacities: extras.capacities.clone(),
            fcfs_min: extras.fcfs_min,
            holders: extras.holders.as_deref(),
            since_ms: run_started_ms(&summary),
        };
        let targets = follow::parse_targets(&options.target)?;
        if targets.len() > 1 {
            let reports = cluster_check::check_cluster(
                &targets,
                options.operator_token.as_deref(),
                &options.tls,
                &input,
            )
            .await?;
            for report in reports {
                add_check(&mut summary, report);
            }
        } else {
            let admin = Admin::with_tls(
                &options.target,
                options.operator_token.as_deref(),
                &options.tls,
            );
            let report = check::check(&admin, "after the run", &input).await?;
            add_check(&mut summary, report);
        }
    }
    if extras.baseline {
        summary.baseline = Some(measure_baseline(plan, options, &summary).await?);
    }
    for gate in &extras.slos {
        let result = slo::evaluate(gate, &summary);
        summary.slo.push(result);
    }
    summary.limits = extras.limits;
    summary.judge();
    Ok((summary, recorded))
}

/// [`execute_with_records`] without the records.
pub async fn execute(
    plan: &Plan,
    options: &RunOptions,
    extras: &Extras,
) -> anyhow::Result<Summary> {
    Ok(execute_with_records(plan, options, extras).await?.0)
}

/// Adds a check pass to `summary` and judges it again; a violation fails the correctness
/// verdict.
pub fn add_check(summary: &mut Summary, report: summary::CheckReport) {
    summary.checks.push(report);
    summary.judge();
}

async fn measure_baseline(
    plan: &Plan,
    options: &RunOptions,
    ours: &Summary,
) -> anyhow::Result<BaselineReport> {
    if options.live {
        eprintln!("baseline: a trivial axum handler, same client, same plan");
    }
    // Room for the 3 s ceiling run before the plan's first request is due.
    let lead = Duration::from_millis(plan.lead_ms().unsigned_abs()) + Duration::from_secs(5);
    let server = tokio::task::spawn_blocking(move || baseline::start_trivial(lead)).await??;
    let reserve_share = {
        let total: u64 = ours.endpoints.iter().map(|e| e.requests).sum();
        let reserve = ours
            .endpoints
            .iter()
            .find(|e| e.name == "reserve")
            .map_or(0, |e| e.requests);
        reserve as f64 / total.max(1) as f64
    };
    let ceiling = baseline::closed_loop(
        &server.base,
        options.connections.min(64),
        Duration::from_secs(3),
        reserve_share,
    )
    .await?;
    // The same plan against the trivial handler, opening `lead` from now as it says.
    let trivial_options = RunOptions {
        target: server.base.clone(),
        operator_token: None,
        reschedule_in: None,
        live: false,
        ..options.clone()
    };
    let Played {
        summary: theirs, ..
    } = run::play(plan, &trivial_options).await?;
    let endpoints = ours
        .endpoints
        .iter()
        .filter_map(|e| {
            let t = theirs.endpoints.iter().find(|t| t.name == e.name)?;
            Some(BaselineEndpoint {
                name: e.name.clone(),
                baseline: t.latency,
                ours: e.latency,
                p50_ratio: ratio(e.latency.p50_ms, t.latency.p50_ms),
                p99_ratio: ratio(e.latency.p99_ms, t.latency.p99_ms),
            })
        })
        .collect();
    drop(tokio::task::spawn_blocking(move || drop(server)));
    Ok(BaselineReport {
        ceiling_rps: ceiling.rps,
        generator_rps_per_core: ceiling.rps_per_core,
        ceiling_latency: ceiling.latency,
        peak_ratio: ratio(ours.peak_rps as f64, ceiling.rps),
        endpoints,
    })
}

fn ratio(ours: f64, theirs: f64) -> f64 {
    if theirs > 0.0 { ours / theirs } else { 0.0 }
}

/// Writes `summary.json` and `report.html` into `dir`; returns the report's path.
pub fn write_reports(summary: &Summary, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = dir.join("summary.json");
    // Judged afresh, as the text and the HTML are: all three say the same.
    let mut judged = summary.clone();
    judged.judge();
    std::fs::write(&json, serde_json::to_vec_pretty(&judged)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let html = dir.join("report.html");
    std::fs::write(&html, html::render(summary))
        .with_context(|| format!("writing {}", html.display()))?;
    Ok(html)
}
