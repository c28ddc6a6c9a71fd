//! `miqat serve`: load the data set, recover the engine from its data directory, and serve the
//! HTTP API until SIGTERM or SIGINT, then drain, snapshot, flush and exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use miqat_api::limits::Rate;
use miqat_api::server::{ServeOptions, serve};
use miqat_api::{ApiConfig, AppState, app};
use miqat_engine::clock::SystemClock;
use miqat_engine::load::{load_catalog, load_season};
use miqat_engine::wal::{DirStorage, Durability, MissingRecords};
use miqat_engine::{Engine, EngineConfig};

/// Options of `miqat serve`; every one also reads an environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The data set: provinces.csv, caravans.csv, holders.csv (and season.toml).
    #[arg(long, env = "MIQAT_CATALOG")]
    pub catalog: PathBuf,
    /// Where the write-ahead log and snapshots live (created if missing).
    #[arg(long, env = "MIQAT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "MIQAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The season file (default: season.toml in the catalog folder).
    #[arg(long, env = "MIQAT_SEASON")]
    pub season: Option<PathBuf>,
    /// `fsync` (default): acknowledge only durable decisions. `none`: benchmarks only.
    #[arg(long, env = "MIQAT_DURABILITY", default_value = "fsync", value_parser = ["fsync", "none"])]
    pub durability: String,
    /// Requests in flight at most; past it, 503 overloaded at once.
    #[arg(long, env = "MIQAT_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Requests per second per national ID (applicant endpoints); 0 disables.
    #[arg(long, env = "MIQAT_HOLDER_RATE", default_value_t = 5.0)]
    pub holder_rate: f64,
    /// Burst per national ID.
    #[arg(long, env = "MIQAT_HOLDER_BURST", default_value_t = 20)]
    pub holder_burst: u32,
    /// Requests per second per client address; 0 (default) disables (behind a proxy every
    /// request shares its address).
    #[arg(long, env = "MIQAT_CLIENT_RATE", default_value_t = 0.0)]
    pub client_rate: f64,
    /// Burst per client address.
    #[arg(long, env = "MIQAT_CLIENT_BURST", default_value_t = 100)]
    pub client_burst: u32,
    /// Seconds within which a request's headers and body together must arrive, counted from
    /// its first byte (slow headers: connection closed; slow body: 408).
    #[arg(long, env = "MIQAT_REQUEST_READ_TIMEOUT_SECS", default_value_t = 5.0, value_parser = positive_seconds)]
    pub request_read_timeout_secs: f64,
    /// Seconds a connection may stay open with no request in flight and nothing received
    /// (keep-alive between requests, or a connection that never sends a byte).
    #[arg(long, env = "MIQAT_IDLE_TIMEOUT_SECS", default_value_t = 20.0, value_parser = positive_seconds)]
    pub idle_timeout_secs: f64,
    /// Open connections per client address at most; new ones past it are closed at once.
    /// 0 disables (behind a proxy every connection shares its address).
    #[arg(long, env = "MIQAT_CONNECTIONS_PER_CLIENT_MAX", default_value_t = 2048)]
    pub connections_per_client_max: u32,
    /// Open connections at most, from all clients (about 20 KiB of memory each); new ones
    /// past it are closed at once. Keep it below the open-files limit.
    #[arg(long, env = "MIQAT_CONNECTIONS_MAX", default_value_t = 16_384)]
    pub connections_max: usize,
    /// Wall-clock steps up to this many milliseconds are followed; a larger step is logged,
    /// counted (`miqat_clock_steps_total`) and not followed until a restart, so it can neither
    /// expire holds early nor keep them past their deadline.
    #[arg(long, env = "MIQAT_CLOCK_STEP_TOLERANCE_MS", default_value_t = miqat_engine::clock::STEP_TOLERANCE_MS_DEFAULT)]
    pub clock_step_tolerance_ms: i64,
    /// The operator's bearer token for `/v1/admin/*` and reservation events. Prefer the
    /// environment variable: a command-line value is visible to other local users. Without
    /// it, the operator endpoints answer 401.
    #[arg(long, env = "MIQAT_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Start even if recovery proves that records which were durable once are gone (a lost
    /// snapshot, a damaged last record). The loss is logged at error level and a snapshot is
    /// taken at once. Without it, such a start is refused with the evidence.
    #[arg(long, env = "MIQAT_ACCEPT_MISSING_RECORDS")]
    pub accept_missing_records: bool,
    /// Log format: `text` or `json`.
    #[arg(long, env = "MIQAT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Cluster mode: every voter as `ID=HOST:PORT` (their `--raft-listen` addresses), this
    /// node included, e.g. `1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001`. Without it
    /// the server runs as a single node.
    #[arg(long, env = "MIQAT_PEERS", requires_all = ["node_id", "raft_listen"])]
    pub peers: Option<String>,
    /// Cluster mode: this node's id in `--peers` (never reuse one whose disk was lost).
    #[arg(long, env = "MIQAT_NODE_ID")]
    pub node_id: Option<u64>,
    /// Cluster mode: where this node listens for its peers' Raft RPCs and the operator's
    /// `miqat cluster` commands.
    #[arg(long, env = "MIQAT_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,
    /// Cluster mode: this node's API address as clients reach it, named to them by the other
    /// nodes in `Miqat-Leader` (default: `--listen`).
    #[arg(long, env = "MIQAT_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// Cluster mode: the leader's heartbeat interval, in milliseconds.
    #[arg(long, env = "MIQAT_RAFT_HEARTBEAT_MS", default_value_t = 100)]
    pub raft_heartbeat_ms: u64,
    /// Cluster mode: the shortest election timeout, in milliseconds (the longest is twice
    /// it): how long followers wait without a heartbeat before electing a new leader.
    #[arg(long, env = "MIQAT_RAFT_ELECTION_MS", default_value_t = 1_000)]
    pub raft_election_ms: u64,
    /// Cluster mode: take a snapshot after this many Raft entries since the last one.
    #[arg(long, env = "MIQAT_RAFT_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub raft_snapshot_every: u64,
}

/// Runs the server; returns when it has shut down cleanly.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("miqat-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args.clone()))
}

/// What both modes of the server start from: the data set, the API state and its options.
pub(crate) struct Prepared {
    pub catalog: Arc<miqat_engine::catalog::Catalog>,
    pub season: miqat_engine::season::Season,
    pub state: AppState,
    pub listener: tokio::net::TcpListener,
    pub options: ServeOptions,
}

async fn run_async(args: ServeArgs) -> anyhow::Result<()> {
    if args.peers.is_some() {
        return crate::cluster::serve_cluster(&args).await;
    }
    let Prepared {
        catalog,
        season,
        state,
        listener,
        options,
    } = prepare(&args)?;
    let durability = durability(&args);
    eprintln!("miqat: listening on http://{}", listener.local_addr()?);

    // Recovery runs off the runtime: /healthz answers meanwhile, /readyz says 503.
    let storage = Arc::new(DirStorage::open(&args.data_dir)?);
    let missing_records = if args.accept_missing_records {
        tracing::warn!(
            "--accept-missing-records: recovery may start without records it can prove are gone"
        );
        MissingRecords::Accept
    } else {
        MissingRecords::Refuse
    };
    let clock_step_tolerance_ms = args.clock_step_tolerance_ms;
    let recovering = {
        let catalog = Arc::clone(&catalog);
        tokio::task::spawn_blocking(move || {
            Engine::open(
                catalog,
                season,
                Arc::new(SystemClock::system_with_tolerance(clock_step_tolerance_ms)),
                storage,
                EngineConfig {
                    durability,
                    missing_records,
                    ..EngineConfig::default()
                },
            )
        })
    };
    let router = app(state.clone());
    let server = tokio::spawn(serve(listener, router, options, shutdown_signal()));
    let (engine, report) = recovering.await.context("recovery task")??;
    let expiry = engine.spawn_expiry_thread(Duration::from_millis(100))?;
    tracing::info!(
        replayed = report.records_replayed,
        expired_at_start = report.expired_at_start,
        elapsed_ms = report.elapsed_ms,
        "ready"
    );
    eprintln!(
        "miqat: ready ({} records replayed in {} ms)",
        report.records_replayed, report.elapsed_ms
    );
    if let Some(loss) = &report.accepted_loss {
        eprintln!("miqat: STARTED WITHOUT RECORDS THAT WERE ONCE DURABLE: {loss}");
    }
    state.set_engine(Arc::clone(&engine));
    server.await.context("server task")??;
    eprintln!("miqat: draining done; flushing the log");
    let shutdown = tokio::task::spawn_blocking(move || {
        let result = engine.shutdown();
        let _ = expiry.join();
        result
    });
    shutdown.await.context("shutdown task")??;
    eprintln!("miqat: stopped cleanly");
    Ok(())
}

/// Installs the metrics recorder, loads the data set and the season, builds the API state and
/// binds the listener: what both modes start from.
pub(crate) fn prepare(args: &ServeArgs) -> anyhow::Result<Prepared> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ])
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let catalog = Arc::new(
        load_catalog(&args.catalog)
            .with_context(|| format!("loading the data set in {}", args.catalog.display()))?,
    );
    let season_path = args
        .season
        .clone()
        .unwrap_or_else(|| args.catalog.join("season.toml"));
    let season = load_season(&season_path, &catalog)?;
    let token = args.operator_token.clone().filter(|t| !t.is_empty());
    if token.is_none() {
        tracing::warn!("MIQAT_OPERATOR_TOKEN is not set: operator endpoints answer 401");
    }
    let config = ApiConfig {
        operator_token: token,
        max_in_flight: args.max_in_flight,
        per_holder: Rate {
            per_second: args.holder_rate,
            burst: args.holder_burst,
        },
        per_client: Rate {
            per_second: args.client_rate,
            burst: args.client_burst,
        },
        ..ApiConfig::default()
    };
    let state = AppState::new(Arc::clone(&catalog), config, Some(metrics));
    let listener = listen(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "listening; recovering");
    let options = ServeOptions {
        request_read_timeout: Duration::from_secs_f64(args.request_read_timeout_secs),
        idle_timeout: Duration::from_secs_f64(args.idle_timeout_secs),
        connections_per_client_max: args.connections_per_client_max,
        connections_max: args.connections_max,
        ..ServeOptions::default()
    };
    Ok(Prepared {
        catalog,
        season,
        state,
        listener,
        options,
    })
}

fn durability(args: &ServeArgs) -> Durability {
    match args.durability.as_str() {
        "none" => {
            tracing::warn!(
                "DURABILITY IS OFF (--durability none): acknowledged reservations can be lost \
                 on a crash. For benchmarks only."
            );
            eprintln!("miqat: WARNING: --durability none: acknowledgements are NOT durable");
            Durability::None
        }
        _ => Durability::Fsync,
    }
}

/// Connections the kernel may hold completed but not yet accepted. At the opening thousands
/// connect within a second; a short queue drops their handshakes and they retry seconds later.
const LISTEN_BACKLOG: u32 = 4_096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Parses a number of seconds that is finite, above zero and at most a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds above 0 and at most 86400"
        )),
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal: no new connections; finishing in-flight requests");
}
