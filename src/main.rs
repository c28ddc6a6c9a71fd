//! The `miqat` command line: one binary over the engine, the API and the load tester (`gen`,
//! `serve`, `loadtest`, `demo`, `sim`).

mod cluster;
mod demo;
mod serve;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use miqat_engine::datagen::{GenConfig, generate};

/// The version `--version` prints: the package's, and the git revision it was built from
/// (`unknown` outside a git checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("MIQAT_GIT_REVISION"),
    ")"
);

/// Whether log lines are JSON objects (`miqat serve --log-format json`).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Returns true if and only if the process logs one JSON object per line: then every line
/// for the operator goes through `tracing`, never plain `eprintln!`.
pub(crate) fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// Miqat: the registration-rush engine for Hajj caravan seats.
#[derive(Parser, Debug)]
#[command(name = "miqat", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a realistic national data set: provinces.csv, caravans.csv, holders.csv and
    /// season.toml.
    Gen {
        /// The folder to write into (created if missing).
        #[arg(long, env = "MIQAT_GEN_OUT")]
        out: PathBuf,
        /// Number of deposit holders.
        #[arg(long, default_value_t = 1_000_000)]
        holders: u64,
        /// Seats over all provinces.
        #[arg(long, default_value_t = 85_850)]
        seats: u64,
        /// Seed: the same seed writes the same files.
        #[arg(long, default_value_t = 1399)]
        seed: u64,
        /// When the main wave opens: Tehran wall clock `yyyy/mm/dd HH:MM` (Jalali) or RFC 3339.
        #[arg(long)]
        opens_at: Option<String>,
    },
    /// Recover from the data directory and serve the HTTP API (see README); with `--peers`,
    /// as one node of a replicated cluster.
    Serve(Box<serve::ServeArgs>),
    /// Operate a cluster: `init` makes it, `status` shows a node's view of it,
    /// `add-learner`, `promote` and `remove` change its members.
    Cluster(cluster::ClusterArgs),
    /// The whole story on one machine: generate the data set, open a wave, rush it from many
    /// threads, let deadlines expire, crash, recover from the log, check every invariant, and
    /// print a report.
    Demo(demo::DemoArgs),
    /// Replay an opening-day rush against a server over HTTP, check every invariant through
    /// the operator API afterwards, and write a JSON summary and an HTML report.
    Loadtest(Box<miqat_loadtest::LoadtestArgs>),
    /// Run the deterministic simulator: the real engine under random commands, crashes, torn
    /// writes, fsync errors, bit flips and clock steps, from seeds; every violation is printed
    /// with the command that replays it. Exits 1 if any was found.
    Sim(sim::SimArgs),
    /// Principals of the operator endpoints (see docs/roles.md).
    #[command(subcommand)]
    Principals(PrincipalsCommand),
}

#[derive(Subcommand, Debug)]
enum PrincipalsCommand {
    /// Print the `token_sha256` of a bearer token for the principals file. The token is read
    /// from the first line of standard input, so it never appears in a process list.
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (json, default_level) = match &cli.command {
        Command::Serve(args) => (args.log_format == "json", "info"),
        // The simulator causes torn tails and clock steps on purpose: their logs are noise.
        Command::Sim(_) => (false, "off"),
        _ => (false, "warn"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIQAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour codes only for a terminal: a log redirected to a file stays plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        JSON_LOGS.store(true, Ordering::Relaxed);
        // One object per line, the message among the fields, so every line parses alone.
        logs.json().flatten_event(true).init();
        tracing::info!(target: "miqat", version = VERSION, "starting");
    } else {
        logs.init();
    }
    // Thousands of connections (a rush, or the load tester's both ends in the demo) need more
    // open files than many systems' default soft limit; raise it to the hard limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let result = match cli.command {
        Command::Gen {
            out,
            holders,
            seats,
            seed,
            opens_at,
        } => run_gen(out, holders, seats, seed, opens_at),
        Command::Serve(args) => serve::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Sim(args) => {
            return if sim::run(&args) == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Principals(PrincipalsCommand::Hash) => hash_token(),
        Command::Loadtest(mut args) => {
            args.connections = connections_within_limit(args.connections, 1);
            return run_loadtest(&args);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json_logs() => {
            tracing::error!(target: "miqat", error = format!("{e:#}"), "exiting with an error");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("miqat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_gen(
    out: PathBuf,
    holders: u64,
    seats: u64,
    seed: u64,
    opens_at: Option<String>,
) -> anyhow::Result<()> {
    let config = GenConfig {
        holders,
        seats,
        seed,
        opens_at,
    };
    let started = std::time::Instant::now();
    let report = generate(&out, &config, &mut |line| eprintln!("  {line}"))?;
    println!(
        "wrote {} provinces, {} cities, {} caravans, {} seats, {} holders ({} called by the main wave) to {} in {:.1} s",
        report.provinces,
        report.cities,
        report.caravans,
        report.seats,
        report.holders,
        report.eligible_main_wave,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `miqat principals hash`: the hex SHA-256 of the token on standard input's first line.
fn hash_token() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let token = line.trim();
    if token.is_empty() {
        anyhow::bail!("no token on standard input");
    }
    println!("{}", miqat_api::principals::token_sha256_hex(token));
    Ok(())
}

/// `miqat loadtest`: exit 0 only when the overall verdict passed (correctness when checked,
/// service and measurement validity), 1 when it failed, 2 when the run could not happen.
fn run_loadtest(args: &miqat_loadtest::LoadtestArgs) -> ExitCode {
    match miqat_loadtest::run_cli(args) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(summary)) => {
            print!("{}", summary.to_text());
            println!("report     {}", args.out.join("report.html").display());
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("miqat: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// At most `wanted` client connections, so that `ends_per_connection` sockets each (2 when
/// the server runs in the same process) fit the open-files limit with room to spare.
pub(crate) fn connections_within_limit(wanted: usize, ends_per_connection: usize) -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let room = usize::try_from(limit.saturating_sub(256)).unwrap_or(usize::MAX);
    let fitting = (room / ends_per_connection.max(1)).max(16);
    if fitting < wanted {
        eprintln!(
            "miqat: {wanted} connections would pass the open-files limit ({limit}); using {fitting}"
        );
    }
    wanted.min(fitting)
}
