//! `miqat serve`: load the data set, recover the engine from its data directory, and serve the
//! HTTP API until SIGTERM or SIGINT, then drain, snapshot, flush and exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use miqat_api::client_ip::IpBlock;
use miqat_api::cors::CorsPolicy;
use miqat_api::limits::Rate;
use miqat_api::principals::Principals;
use miqat_api::server::{ServeOptions, serve};
use miqat_api::{ApiConfig, AppState, admin_app, app, public_app};
use miqat_engine::catalog::cache::{CacheUse, load_catalog_cached};
use miqat_engine::clock::SystemClock;
use miqat_engine::load::load_season;
use miqat_engine::wal::{DirStorage, Durability, MissingRecords, Storage};
use miqat_engine::{Engine, EngineConfig};
use tokio::sync::watch;

/// The catalog's binary cache in the data directory (see `miqat_engine::catalog::cache`).
pub const CATALOG_CACHE_FILE: &str = "catalog.cache";

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
    /// The operator's bearer token for `/v1/admin/*` and reservation events. Prefer
    /// `--operator-token-file` or the environment variable: a command-line value is visible
    /// to other local users. Without a token, the operator endpoints answer 401.
    #[arg(long, env = "MIQAT_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// A file holding the operator's token (surrounding whitespace ignored), e.g. a container
    /// or systemd secret. Cannot be combined with `--operator-token`.
    #[arg(
        long,
        env = "MIQAT_OPERATOR_TOKEN_FILE",
        conflicts_with = "operator_token"
    )]
    pub operator_token_file: Option<PathBuf>,
    /// Serve `/metrics` and `/v1/admin/*` on this address instead of the public one (they
    /// then answer 404 there); health and `/openapi.json` are on both.
    #[arg(long, env = "MIQAT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Browser origins allowed to call the API (CORS), e.g. `https://hajj.example.ir`;
    /// repeat the flag or separate with commas. None by default: browsers on other origins
    /// are refused by their own same-origin rule.
    #[arg(
        long = "cors-origin",
        env = "MIQAT_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Reverse proxies (address or CIDR block; repeat or separate with commas) whose
    /// `X-Forwarded-For` names the client for the per-client rate limit and the access log.
    /// None by default: the header is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "MIQAT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Log one line per request (target `miqat::access`) with a request id, also sent back
    /// in `X-Request-Id`.
    #[arg(long, env = "MIQAT_ACCESS_LOG")]
    pub access_log: bool,
    /// Seconds SIGTERM waits for open connections to finish their requests before the log is
    /// flushed and the process exits (keep the supervisor's stop timeout above it).
    #[arg(long, env = "MIQAT_DRAIN_TIMEOUT_SECS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub drain_timeout_secs: f64,
    /// After the write-ahead log fails (fail-stop: nothing is acknowledged any more), seconds
    /// during which `/readyz` answers 503 so load balancers move away, before the server
    /// drains and exits with status 1 for its supervisor to restart it.
    #[arg(long, env = "MIQAT_FAIL_STOP_GRACE_SECS", default_value_t = 5.0, value_parser = positive_seconds)]
    pub fail_stop_grace_secs: f64,
    /// The principals file: callers of the operator endpoints with their roles (operator,
    /// caravan_manager, payment_gateway, medical_centre, office), each behind the SHA-256 of
    /// its bearer token (`miqat principals hash`); see docs/roles.md.
    #[arg(long, env = "MIQAT_PRINCIPALS")]
    pub principals: Option<PathBuf>,
    /// Start even if recovery proves that records which were durable once are gone (a lost
    /// snapshot, a damaged last record). The loss is logged at error level and a snapshot is
    /// taken at once. Without it, such a start is refused with the evidence.
    #[arg(long, env = "MIQAT_ACCEPT_MISSING_RECORDS")]
    pub accept_missing_records: bool,
    /// The secret waiting-room passes are signed with (HMAC-SHA256, at least 32 bytes).
    /// Without it a random one is drawn at start, and passes do not survive a restart
    /// (admitted holders poll again for a new one).
    #[arg(long, env = "MIQAT_QUEUE_PASS_SECRET", hide_env_values = true)]
    pub queue_pass_secret: Option<String>,
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
    #[arg(long, env = "MIQAT_RAFT_ELECTION_MS", default_value_t = 400)]
    pub raft_election_ms: u64,
    /// Cluster mode: take a snapshot after this many Raft entries since the last one. After a
    /// snapshot the log keeps this many entries before it (at most 1,000) for followers that
    /// lag; a follower further behind, or a new node, receives the snapshot.
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
    let durability = match args.durability.as_str() {
        "none" => {
            tracing::warn!(
                "DURABILITY IS OFF (--durability none): acknowledged reservations can be lost \
                 on a crash. For benchmarks only."
            );
            say("WARNING: --durability none: acknowledgements are NOT durable");
            Durability::None
        }
        _ => Durability::Fsync,
    };
    let Prepared {
        catalog,
        season,
        state,
        listener,
        options,
    } = prepare(&args)?;
    let admin_listener = match args.admin_listen {
        Some(addr) => Some(listen(addr).with_context(|| format!("listening (admin) on {addr}"))?),
        None => None,
    };
    say(&format!("listening on http://{}", listener.local_addr()?));
    if let Some(admin) = &admin_listener {
        say(&format!(
            "serving /metrics and /v1/admin on http://{} only",
            admin.local_addr()?
        ));
    }

    // Recovery runs off the runtime: /healthz answers meanwhile, /readyz says 503.
    let storage = open_storage(&args.data_dir)?;
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
    let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = Arc::clone(&stop_tx);
        tokio::spawn(async move {
            shutdown_signal().await;
            stop_tx.send_if_modified(|stop| stop.get_or_insert(Stop::Signal) == &Stop::Signal);
        });
    }
    let mut servers = Vec::new();
    let public_router = if admin_listener.is_some() {
        public_app(state.clone())
    } else {
        app(state.clone())
    };
    servers.push(tokio::spawn(serve(
        listener,
        public_router,
        options,
        stopped(stop_rx.clone()),
    )));
    if let Some(admin) = admin_listener {
        servers.push(tokio::spawn(serve(
            admin,
            admin_app(state.clone()),
            options,
            stopped(stop_rx.clone()),
        )));
    }
    let (engine, report) = recovering.await.context("recovery task")??;
    let expiry = engine.spawn_expiry_thread(Duration::from_millis(100))?;
    tracing::info!(
        replayed = report.records_replayed,
        expired_at_start = report.expired_at_start,
        elapsed_ms = report.elapsed_ms,
        "ready"
    );
    say(&format!(
        "ready ({} records replayed in {} ms)",
        report.records_replayed, report.elapsed_ms
    ));
    if let Some(loss) = &report.accepted_loss {
        say(&format!(
            "STARTED WITHOUT RECORDS THAT WERE ONCE DURABLE: {loss}"
        ));
    }
    state.set_engine(Arc::clone(&engine));
    tokio::spawn(watch_fail_stop(
        Arc::clone(&engine),
        Duration::from_secs_f64(args.fail_stop_grace_secs),
        Arc::clone(&stop_tx),
    ));
    for server in servers {
        server.await.context("server task")??;
    }
    if let Some(Stop::LogFailed(cause)) = stop_rx.borrow().clone() {
        engine.stop();
        let _ = expiry.join();
        anyhow::bail!(
            "the write-ahead log failed ({cause}); exiting so that a supervisor restarts the \
             server (recovery keeps every acknowledged decision)"
        );
    }
    say("draining done; flushing the log");
    let shutdown = tokio::task::spawn_blocking(move || {
        let result = engine.shutdown();
        let _ = expiry.join();
        result
    });
    shutdown.await.context("shutdown task")??;
    say("stopped cleanly");
    Ok(())
}

/// The API's configuration from the command line.
fn api_config(
    args: &ServeArgs,
    catalog: &miqat_engine::catalog::Catalog,
) -> anyhow::Result<ApiConfig> {
    let token = match &args.operator_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the operator token file {}", path.display()))?;
            let token = text.trim().to_owned();
            anyhow::ensure!(
                !token.is_empty(),
                "the operator token file {} is empty",
                path.display()
            );
            Some(token)
        }
        None => args.operator_token.clone().filter(|t| !t.is_empty()),
    };
    let principals = match &args.principals {
        Some(path) => Principals::load(path, catalog).map_err(anyhow::Error::msg)?,
        None => Principals::none(),
    };
    if token.is_none() && principals.is_empty() {
        tracing::warn!(
            "no operator token (MIQAT_OPERATOR_TOKEN or MIQAT_OPERATOR_TOKEN_FILE) and no \
             --principals: operator endpoints answer 401"
        );
    }
    tracing::info!(principals = principals.len(), "principals loaded");
    // Empty entries (an empty variable, a trailing comma) mean nothing, not an error.
    let listed = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let cors = CorsPolicy::new(&listed(&args.cors_origins))
        .map_err(|e| anyhow::anyhow!("--cors-origin: {e}"))?;
    let trusted_proxies = listed(&args.trusted_proxies)
        .iter()
        .map(|block| block.parse::<IpBlock>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?;
    Ok(ApiConfig {
        operator_token: token,
        principals,
        max_in_flight: args.max_in_flight,
        per_holder: Rate {
            per_second: args.holder_rate,
            burst: args.holder_burst,
        },
        per_client: Rate {
            per_second: args.client_rate,
            burst: args.client_burst,
        },
        cors,
        trusted_proxies,
        access_log: args.access_log,
        queue_pass_secret: match &args.queue_pass_secret {
            Some(secret) => {
                miqat_api::queue::pass_key(Some(secret.as_bytes())).map_err(anyhow::Error::msg)?;
                Some(secret.as_bytes().to_vec())
            }
            None => None,
        },
        ..ApiConfig::default()
    })
}

/// Why the servers stop.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// SIGTERM or SIGINT: drain, flush, exit 0.
    Signal,
    /// The log failed: drain and exit 1 without a final snapshot (it could not be written).
    LogFailed(String),
}

/// Resolves once a stop is decided.
async fn stopped(mut stop: watch::Receiver<Option<Stop>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// How often the server looks whether the log failed. A failed log is seen at once by every
/// request that needs it; this only bounds how soon `/readyz`'s grace period starts counting.
const FAIL_STOP_POLL: Duration = Duration::from_millis(200);

/// Waits for the log to fail, then, after `grace` (during which `/readyz` answers 503), asks
/// the servers to stop with [`Stop::LogFailed`].
async fn watch_fail_stop(
    engine: Arc<Engine>,
    grace: Duration,
    stop: Arc<watch::Sender<Option<Stop>>>,
) {
    let cause = loop {
        if let Some(cause) = engine.log_failure() {
            break cause;
        }
        if stop.borrow().is_some() {
            return;
        }
        tokio::time::sleep(FAIL_STOP_POLL).await;
    };
    tracing::error!(
        cause = %cause,
        grace_secs = grace.as_secs_f64(),
        "the write-ahead log failed: /readyz answers 503; exiting after the grace period"
    );
    tokio::time::sleep(grace).await;
    stop.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(Stop::LogFailed(cause));
            true
        } else {
            false
        }
    });
}

/// The data directory's storage. Debug builds (the tests' builds) can be told to make every
/// fsync fail once a trigger file exists (`MIQAT_DEBUG_FAIL_FSYNC_WHEN=PATH`), to test
/// fail-stop on a real process (the file is removed once armed); release builds have no such
/// hook.
fn open_storage(data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn Storage>> {
    let storage: Arc<dyn Storage> = Arc::new(DirStorage::open(data_dir)?);
    #[cfg(debug_assertions)]
    if let Some(trigger) = std::env::var_os("MIQAT_DEBUG_FAIL_FSYNC_WHEN") {
        let faulty = miqat_engine::wal::FaultyStorage::new(storage);
        let armed = faulty.clone();
        let trigger = PathBuf::from(trigger);
        std::thread::Builder::new()
            .name("miqat-fault".into())
            .spawn(move || {
                while !trigger.exists() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                armed.fail_sync(1, miqat_engine::wal::FaultMode::Persistent);
                // Removing the trigger tells the test that the fault is armed.
                let _ = std::fs::remove_file(&trigger);
            })?;
        return Ok(Arc::new(faulty));
    }
    Ok(storage)
}

/// A line for the operator: plain `miqat: ...` on stderr with the text log format, a log
/// event (one JSON object per line) with the JSON format.
pub(crate) fn say(line: &str) {
    if crate::json_logs() {
        tracing::info!(target: "miqat", "{line}");
    } else {
        eprintln!("miqat: {line}");
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

/// Installs the metrics recorder, loads the data set and the season, builds the API state and
/// binds the public listener: what both modes start from (the single node then adds its admin
/// listener and fail-stop watch).
pub(crate) fn prepare(args: &ServeArgs) -> anyhow::Result<Prepared> {
    let metrics = miqat_api::telemetry::install().context("installing the metrics recorder")?;
    // The catalog's binary cache lives in the data directory, which the server owns (the
    // data set's folder may be read-only); it is used only when the CSV files' hash matches.
    let cache = args.data_dir.join(CATALOG_CACHE_FILE);
    let (catalog, _, cache_use) = load_catalog_cached(&args.catalog, &cache)
        .with_context(|| format!("loading the data set in {}", args.catalog.display()))?;
    if let CacheUse::Rebuilt { reason, written } = &cache_use {
        tracing::info!(%reason, written, "catalog loaded from the CSV files");
    }
    let catalog = Arc::new(catalog);
    let season_path = args
        .season
        .clone()
        .unwrap_or_else(|| args.catalog.join("season.toml"));
    let season = load_season(&season_path, &catalog)?;
    let config = api_config(args, &catalog)?;
    let state = AppState::new(Arc::clone(&catalog), config, Some(metrics));
    let listener = listen(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "listening; recovering");
    let options = ServeOptions {
        request_read_timeout: Duration::from_secs_f64(args.request_read_timeout_secs),
        idle_timeout: Duration::from_secs_f64(args.idle_timeout_secs),
        connections_per_client_max: args.connections_per_client_max,
        connections_max: args.connections_max,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout_secs),
    };
    Ok(Prepared {
        catalog,
        season,
        state,
        listener,
        options,
    })
}
