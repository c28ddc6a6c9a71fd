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
use miqat_replication::node::{ClusterConfig, ClusterNode, OperatorRequest, operator_call};

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
    /// Add a node (started with an empty data directory under a new id) as a learner: it
    /// receives a snapshot and the log, and votes in nothing until it is promoted.
    AddLearner {
        #[command(flatten)]
        leader: LeaderArgs,
        /// The new node's `--node-id`; never the id of a node whose disk was lost.
        #[arg(long)]
        id: u64,
        /// The new node's `--raft-listen` address, as the other nodes reach it.
        #[arg(long)]
        raft_addr: String,
    },
    /// Make a learner that has caught up a voter.
    Promote {
        #[command(flatten)]
        leader: LeaderArgs,
        /// The learner's id.
        #[arg(long)]
        id: u64,
    },
    /// Take a node (voter or learner) out of the cluster, e.g. one whose disk died.
    Remove {
        #[command(flatten)]
        leader: LeaderArgs,
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
}

/// Where membership changes are sent: the leader's API, as an operator.
#[derive(clap::Args, Debug)]
struct LeaderArgs {
    /// The leader's API address (`HOST:PORT` of its `--listen`): membership changes are
    /// operator routes of the API (`/v1/admin/cluster/*`), made by the leader only.
    #[arg(long, env = "MIQAT_NODE")]
    node: String,
    /// The operator's bearer token.
    #[arg(long, env = "MIQAT_OPERATOR_TOKEN", hide_env_values = true)]
    token: String,
}

/// Runs `miqat cluster ...`.
pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (request, leader) = match &args.command {
        ClusterCommand::Init { node } => (
            raft_request(node, hyper::Method::POST, "/cluster/init"),
            None,
        ),
        ClusterCommand::Status { node } => (
            raft_request(node, hyper::Method::GET, "/cluster/status"),
            None,
        ),
        ClusterCommand::Digest { node } => (
            raft_request(node, hyper::Method::GET, "/cluster/digest"),
            None,
        ),
        ClusterCommand::AddLearner {
            leader,
            id,
            raft_addr,
        } => {
            let body = serde_json::json!({ "node_id": id, "raft_addr": raft_addr });
            (
                leader.request(
                    hyper::Method::POST,
                    "/v1/admin/cluster/learners".into(),
                    Some(body),
                ),
                Some(leader),
            )
        }
        ClusterCommand::Promote { leader, id } => {
            let body = serde_json::json!({ "node_id": id });
            (
                leader.request(
                    hyper::Method::POST,
                    "/v1/admin/cluster/voters".into(),
                    Some(body),
                ),
                Some(leader),
            )
        }
        ClusterCommand::Remove { leader, id } => (
            leader.request(
                hyper::Method::DELETE,
                format!("/v1/admin/cluster/members/{id}"),
                None,
            ),
            Some(leader),
        ),
    };
    let node = request.addr.clone();
    let answer = runtime
        .block_on(operator_call(OperatorRequest {
            addr: &request.addr,
            method: request.method,
            path: &request.path,
            bearer: request.bearer.as_deref(),
            json: request.json,
        }))
        .map_err(anyhow::Error::msg)?;
    if (200..300).contains(&answer.status) {
        println!("{}", answer.body);
        return Ok(());
    }
    eprintln!("{}", answer.body);
    if answer.status == 421 && leader.is_some() {
        match answer.leader {
            Some(hint) => bail!(
                "{node} is not the leader: the leader is {hint}; run the command again with --node {hint}"
            ),
            None => bail!(
                "{node} is not the leader and knows no leader yet (an election may be running): retry in a moment"
            ),
        }
    }
    let detail = serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned));
    match detail {
        Some(detail) => bail!("{node} answered {}: {detail}", answer.status),
        None => bail!("{node} answered {}", answer.status),
    }
}

/// A request the command makes, owned.
struct Request {
    addr: String,
    method: hyper::Method,
    path: String,
    bearer: Option<String>,
    json: Option<String>,
}

fn raft_request(node: &str, method: hyper::Method, path: &str) -> Request {
    Request {
        addr: node.to_owned(),
        method,
        path: path.to_owned(),
        bearer: None,
        json: None,
    }
}

impl LeaderArgs {
    fn request(
        &self,
        method: hyper::Method,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Request {
        Request {
            addr: self.node.clone(),
            method,
            path,
            bearer: Some(self.token.clone()),
            json: body.map(|b| b.to_string()),
        }
    }
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
