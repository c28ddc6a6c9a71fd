//! Cluster mode of `miqat serve` (`--peers`) and the operator's `miqat cluster` commands.
//! The engine runs without a log of its own: the replicated Raft log in `DATA_DIR/raft` is
//! the log, and every write goes through it (see the `miqat-replication` crate).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use miqat_api::app;
use miqat_api::server::serve;
use miqat_engine::clock::SystemClock;
use miqat_engine::{Engine, EngineConfig};
use miqat_replication::node::{ClusterConfig, ClusterNode, operator_call};

use crate::serve::{Prepared, ServeArgs, prepare, shutdown_signal};

/// Options of `miqat cluster`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Make the cluster of the nodes in this node's `--peers` (once, on one node).
    Init {
        /// The node's `--raft-listen` address.
        #[arg(long, env = "MIQAT_NODE")]
        node: String,
    },
    /// Print the node's view of the cluster as JSON: role, term, leader, log and applied
    /// index, members, lag per follower.
    Status {
        /// The node's `--raft-listen` address.
        #[arg(long, env = "MIQAT_NODE")]
        node: String,
    },
    /// Print the node's applied index and the SHA-256 of its replicated state there as JSON:
    /// nodes at the same applied index must print the same digest.
    Digest {
        /// The node's `--raft-listen` address.
        #[arg(long, env = "MIQAT_NODE")]
        node: String,
    },
}

/// Runs `miqat cluster ...`.
pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (method, node, path) = match &args.command {
        ClusterCommand::Init { node } => (hyper::Method::POST, node, "/cluster/init"),
        ClusterCommand::Status { node } => (hyper::Method::GET, node, "/cluster/status"),
        ClusterCommand::Digest { node } => (hyper::Method::GET, node, "/cluster/digest"),
    };
    let (status, body) = runtime
        .block_on(operator_call(node, method, path))
        .map_err(anyhow::Error::msg)?;
    println!("{body}");
    if !(200..300).contains(&status) {
        bail!("{node} answered {status}");
    }
    Ok(())
}

/// `miqat serve --peers ...`: serves the API over a replicated engine until SIGTERM or
/// SIGINT.
pub async fn serve_cluster(args: &ServeArgs) -> anyhow::Result<()> {
    let (Some(peers), Some(node_id), Some(raft_listen)) =
        (&args.peers, args.node_id, args.raft_listen)
    else {
        bail!("cluster mode needs --peers, --node-id and --raft-listen");
    };
    if args.durability != "fsync" {
        bail!("cluster mode always syncs its log: --durability none is refused");
    }
    let peers = ClusterConfig::parse_peers(peers).map_err(anyhow::Error::msg)?;
    if peers.len() < 3 {
        tracing::warn!(
            voters = peers.len(),
            "fewer than three voters: one failure stops the cluster"
        );
    }
    let Prepared {
        catalog,
        season,
        state,
        listener,
        options,
    } = prepare(args)?;
    let api_addr = match &args.advertise_api {
        Some(addr) => addr.clone(),
        None => listener.local_addr()?.to_string(),
    };
    eprintln!("miqat: listening on http://{api_addr} (cluster node {node_id})");
    let engine = Engine::in_memory(
        catalog,
        season,
        Arc::new(SystemClock::system_with_tolerance(
            args.clock_step_tolerance_ms,
        )),
        EngineConfig::default(),
    )?;
    let config = ClusterConfig {
        node_id,
        raft_listen,
        peers,
        api_addr,
        dir: args.data_dir.join("raft"),
        heartbeat_ms: args.raft_heartbeat_ms,
        election_timeout_ms: (args.raft_election_ms, args.raft_election_ms * 2),
        snapshot_every_entries: args.raft_snapshot_every,
    };
    let node = ClusterNode::start(config, Arc::clone(&engine))
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!("miqat: cluster node {node_id} ready; peers on http://{raft_listen}");
    state.set_cluster(Arc::clone(&node) as Arc<dyn miqat_api::cluster::Cluster>);
    state.set_engine(engine);
    let router = app(state.clone());
    serve(listener, router, options, shutdown_signal())
        .await
        .context("server")?;
    eprintln!("miqat: draining done; stopping Raft");
    tokio::time::timeout(Duration::from_secs(5), node.shutdown())
        .await
        .ok();
    eprintln!("miqat: stopped cleanly");
    Ok(())
}
