//! One cluster member: opens the log store and the state machine in the data directory,
//! starts openraft, serves the peer RPCs and the operator's `/cluster/*` routes on the
//! `--raft-listen` address, and offers the API its write path ([`ClusterNode`] is the API's
//! [`Cluster`]).
//!
//! **Group commit**: writes queue up; one task takes all that are waiting (up to
//! [`BATCH_COMMANDS_MAX`]) into one [`CommandBatch`], stamped with this node's engine time
//! and a fresh seed per command, and proposes it as one Raft entry, while up to
//! [`BATCHES_IN_FLIGHT_MAX`] earlier entries are still on their way. Each write is answered
//! when its entry is committed (on a majority's disk) and applied here.
//!
//! **Expiry**: the leader checks its applied state every [`EXPIRY_TICK`] and proposes an
//! [`WriteCommand::ExpireDue`] when a deadline has passed; every replica expires the same
//! reservations at the same point of the log, so a hold never expires twice, and a new
//! leader picks up whatever is pending.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use miqat_api::cluster::{
    Cluster, ClusterRefusal, ClusterResult, MembershipChange, MembershipRefusal,
};
use miqat_engine::Engine;
use miqat_engine::engine::WriteCommand;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::log_store::LogStore;
use crate::network::{HttpClient, PeerNetwork, RPC_BODY_BYTES_MAX, http_client};
use crate::state_machine::StateMachine;
use crate::{CommandBatch, NodeId, TypeConfig};

/// Commands in one Raft entry at most.
pub const BATCH_COMMANDS_MAX: usize = 2_048;
/// Entries proposed and not yet applied, at most; further writes wait in the queue (and so
/// join larger batches).
pub const BATCHES_IN_FLIGHT_MAX: usize = 8;
/// Writes waiting for a batch, at most; past it a write is refused as overloaded.
const QUEUE_MAX: usize = 65_536;
/// How often the leader looks for passed deadlines.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// How long a write may wait for its entry to be applied before its outcome is reported
/// unknown.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a node asks its peers for their API addresses once it knows them all.
pub const PEER_ADDRESS_REFRESH: Duration = Duration::from_secs(2);

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id (unique in the cluster, never reused after its disk was lost).
    pub node_id: NodeId,
    /// Where peers reach this node's Raft RPCs.
    pub raft_listen: SocketAddr,
    /// Every voter's id and Raft address, this node's included.
    pub peers: BTreeMap<NodeId, String>,
    /// This node's API address as clients reach it (for other nodes' `Miqat-Leader` hint).
    pub api_addr: String,
    /// Where the Raft log, vote and snapshot live.
    pub dir: PathBuf,
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout range, in milliseconds: a follower that hears no leader for a random
    /// time in it starts an election.
    pub election_timeout_ms: (u64, u64),
    /// Take a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
}

impl ClusterConfig {
    /// Parses `1=HOST:PORT,2=HOST:PORT,...`.
    pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
        let mut peers = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected ID=HOST:PORT"))?;
            let id: NodeId = id
                .trim()
                .parse()
                .map_err(|_| format!("{item:?}: the node id is not a number"))?;
            let addr = addr.trim();
            if addr.is_empty() || !addr.contains(':') {
                return Err(format!("{item:?}: expected ID=HOST:PORT"));
            }
            if peers.insert(id, addr.to_owned()).is_some() {
                return Err(format!("node {id} is named twice"));
            }
        }
        if peers.is_empty() {
            return Err("no peers".into());
        }
        Ok(peers)
    }
}

struct Proposal {
    command: WriteCommand,
    reply: oneshot::Sender<ClusterResult>,
}

/// A running cluster member.
pub struct ClusterNode {
    id: NodeId,
    raft: Raft<TypeConfig>,
    engine: Arc<Engine>,
    peers: BTreeMap<NodeId, String>,
    /// Peers' API addresses as they told them (`GET /raft/node`).
    peer_api: Mutex<HashMap<NodeId, String>>,
    api_addr: String,
    queue: mpsc::Sender<Proposal>,
    expiry_in_flight: AtomicBool,
    /// The state machine Raft drives (a clone sharing its state), for the state digest.
    state_machine: StateMachine,
    /// Peer RPCs of our own (the read index).
    client: HttpClient,
    /// The followers whose lag the gauges last reported (see [`ClusterNode::record_gauges`]).
    pub(crate) lag_reported: Mutex<Vec<NodeId>>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("id", &self.id).finish()
    }
}

impl ClusterNode {
    /// Opens the node's storage in `config.dir` over `engine` (empty, without a log of its
    /// own), starts Raft and listens for peers. Returns once the Raft listener is bound.
    pub async fn start(
        config: ClusterConfig,
        engine: Arc<Engine>,
    ) -> Result<Arc<ClusterNode>, String> {
        if !config.peers.contains_key(&config.node_id) {
            return Err(format!(
                "--peers does not name this node ({})",
                config.node_id
            ));
        }
        let (log, report) = LogStore::open(&config.dir).map_err(|e| format!("Raft log: {e}"))?;
        tracing::info!(entries = report.entries, "Raft log opened");
        let sm = StateMachine::open(Arc::clone(&engine), &config.dir)
            .map_err(|e| format!("Raft snapshot: {e}"))?;
        let raft_config = Config {
            cluster_name: "miqat".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            // A follower further behind than what is kept receives the snapshot.
            max_in_snapshot_log_to_keep: config.snapshot_every_entries.min(1_000),
            snapshot_max_chunk_size: 4 << 20,
            ..Config::default()
        }
        .validate()
        .map_err(|e| format!("Raft configuration: {e}"))?;
        let client = http_client();
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            PeerNetwork::new(client.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| format!("starting Raft: {e}"))?;
        let (queue, proposals) = mpsc::channel(QUEUE_MAX);
        let node = Arc::new(ClusterNode {
            id: config.node_id,
            raft,
            engine,
            peers: config.peers.clone(),
            peer_api: Mutex::new(HashMap::from([(config.node_id, config.api_addr.clone())])),
            api_addr: config.api_addr.clone(),
            queue,
            expiry_in_flight: AtomicBool::new(false),
            state_machine: sm,
            client: client.clone(),
            lag_reported: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(config.raft_listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", config.raft_listen))?;
        let router = node.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "the Raft listener stopped");
            }
        });
        tokio::spawn(Arc::clone(&node).propose_batches(proposals));
        tokio::spawn(Arc::clone(&node).learn_peer_addresses(client));
        tokio::spawn(Arc::clone(&node).expire_when_due());
        tokio::spawn(Arc::clone(&node).count_leader_changes());
        Ok(node)
    }

    fn router(self: &Arc<Self>) -> Router {
        let peers = Router::new()
            .route("/raft/append", post(crate::network::serve_append))
            .route("/raft/vote", post(crate::network::serve_vote))
            .route("/raft/snapshot", post(crate::network::serve_snapshot))
            .with_state(self.raft.clone());
        let operator = Router::new()
            .route("/raft/node", get(serve_node))
            .route("/cluster/init", post(serve_init))
            .route("/cluster/status", get(serve_status))
            .route("/cluster/digest", get(serve_digest))
            .route(
                "/raft/read-index",
                post(crate::membership::serve_read_index),
            )
            .with_state(Arc::clone(self));
        peers
            .merge(operator)
            .layer(axum::extract::DefaultBodyLimit::max(RPC_BODY_BYTES_MAX))
    }

    /// Makes the cluster of every node in `--peers`, with this node as the first leader
    /// candidate. Only once, on one node; a cluster already made says so.
    pub async fn initialize(&self) -> Result<(), String> {
        let members: BTreeMap<NodeId, BasicNode> = self
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err("the cluster is already initialized".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The Raft instance (for tests and shutdown).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
    }

    /// The HTTP client for this node's own peer RPCs.
    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    pub(crate) fn leader_api(&self) -> Option<String> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.peer_api.lock().get(&leader).cloned()
    }

    /// Queues `command` for the next batch; resolves with its outcome.
    async fn submit_command(&self, command: WriteCommand) -> ClusterResult {
        if !self.is_leader() {
            return Err(ClusterRefusal::NotLeader(self.leader_api()));
        }
        let (reply, answer) = oneshot::channel();
        if self.queue.try_send(Proposal { command, reply }).is_err() {
            return Ok(Err(miqat_engine::EngineError::Overloaded));
        }
        match answer.await {
            Ok(result) => result,
            // The batch task went away with it (shutdown): it may have been proposed.
            Err(_) => Err(ClusterRefusal::OutcomeUnknown),
        }
    }

    /// Takes waiting writes into batches and proposes each as one entry.
    async fn propose_batches(self: Arc<Self>, mut proposals: mpsc::Receiver<Proposal>) {
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        while let Some(first) = proposals.recv().await {
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                return;
            };
            // Everything that queued while the permit was awaited joins this batch.
            let mut waiting = vec![first];
            while waiting.len() < BATCH_COMMANDS_MAX {
                match proposals.try_recv() {
                    Ok(p) => waiting.push(p),
                    Err(_) => break,
                }
            }
            let mut rng = rand::rng();
            let mut commands = Vec::with_capacity(waiting.len());
            let mut replies = Vec::with_capacity(waiting.len());
            for p in waiting {
                commands.push((p.command, rng.random::<u128>()));
                replies.push(p.reply);
            }
            let batch = CommandBatch {
                now_ms: self.engine.now_ms(),
                commands,
            };
            let raft = self.raft.clone();
            let leader_api = self.leader_api();
            tokio::spawn(async move {
                let proposed = std::time::Instant::now();
                let outcome = tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(batch)).await;
                drop(permit);
                if let Ok(Ok(_)) = &outcome {
                    metrics::histogram!("miqat_raft_append_seconds")
                        .record(proposed.elapsed().as_secs_f64());
                }
                match outcome {
                    Ok(Ok(response)) => {
                        let answers = response.data.0;
                        if answers.len() != replies.len() {
                            tracing::error!("an entry's answers do not match its commands");
                        }
                        let mut answers = answers.into_iter();
                        for reply in replies {
                            let answer = answers.next().ok_or(ClusterRefusal::OutcomeUnknown);
                            let _ = reply.send(answer);
                        }
                    }
                    Ok(Err(e)) => {
                        // A proposal refused before it was appended would be NotLeader, but
                        // openraft answers the same for an appended entry a new leader
                        // truncated, which a later leader may still commit: unknown.
                        let refusal = match &e {
                            RaftError::APIError(ClientWriteError::ForwardToLeader(_))
                            | RaftError::APIError(ClientWriteError::ChangeMembershipError(_))
                            | RaftError::Fatal(_) => ClusterRefusal::OutcomeUnknown,
                        };
                        tracing::warn!(error = %e, leader = ?leader_api, "a batch's outcome is unknown");
                        for reply in replies {
                            let _ = reply.send(Err(refusal.clone()));
                        }
                    }
                    Err(_) => {
                        tracing::warn!("a batch was not applied within {WRITE_TIMEOUT:?}");
                        for reply in replies {
                            let _ = reply.send(Err(ClusterRefusal::OutcomeUnknown));
                        }
                    }
                }
            });
        }
    }

    /// Asks each member (and each peer of `--peers`) for its API address, every half second
    /// while one is unknown, else every [`PEER_ADDRESS_REFRESH`]: a node restarted on another
    /// API address is named rightly in the `Miqat-Leader` hint within that time.
    async fn learn_peer_addresses(self: Arc<Self>, client: HttpClient) {
        loop {
            let mut members: BTreeMap<NodeId, String> = self.peers.clone();
            {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                for (id, node) in m.membership_config.membership().nodes() {
                    members.insert(*id, node.addr.clone());
                }
            }
            let mut all_known = true;
            for (id, addr) in &members {
                if *id == self.id {
                    continue;
                }
                match fetch_node(&client, addr).await {
                    Ok((peer_id, api)) if peer_id == *id => {
                        self.peer_api.lock().insert(*id, api);
                    }
                    Ok((peer_id, _)) => {
                        tracing::error!(expected = id, found = peer_id, %addr, "a peer answers with another node id");
                        all_known = false;
                    }
                    Err(_) => all_known = false,
                }
            }
            let pause = if all_known {
                PEER_ADDRESS_REFRESH
            } else {
                Duration::from_millis(500)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Counts the changes of leader this node sees (`miqat_raft_leader_changes_total`).
    async fn count_leader_changes(self: Arc<Self>) {
        metrics::counter!("miqat_raft_leader_changes_total").absolute(0);
        let mut watch = self.raft.metrics();
        let mut leader = watch.borrow().current_leader;
        while watch.changed().await.is_ok() {
            let now = watch.borrow().current_leader;
            if now.is_some() && now != leader {
                metrics::counter!("miqat_raft_leader_changes_total").increment(1);
                tracing::info!(leader = ?now, "the cluster has a new leader");
            }
            if now.is_some() {
                leader = now;
            }
        }
    }

    /// The leader's expiry ticks (module docs).
    async fn expire_when_due(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.is_leader()
                || !self.engine.has_due_deadline(self.engine.now_ms())
                || self.expiry_in_flight.swap(true, Ordering::AcqRel)
            {
                continue;
            }
            let node = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = node.submit_command(WriteCommand::ExpireDue).await {
                    tracing::debug!(error = ?e, "an expiry tick did not apply");
                }
                node.expiry_in_flight.store(false, Ordering::Release);
            });
        }
    }

    /// The node's view of the cluster, as `GET /v1/cluster` and `/cluster/status` show it.
    pub fn status_json(&self) -> serde_json::Value {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let last_log_index = m.last_log_index.unwrap_or(0);
        let members: Vec<serde_json::Value> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                serde_json::json!({
                    "id": id,
                    "raft_addr": node.addr,
                    "api_addr": self.peer_api.lock().get(id),
                    "voter": m.membership_config.membership().voter_ids().any(|v| v == *id),
                })
            })
            .collect();
        let followers: Option<Vec<serde_json::Value>> = m.replication.as_ref().map(|r| {
            r.iter()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, matched)| {
                    let matched = matched.map_or(0, |l| l.index);
                    serde_json::json!({
                        "id": id,
                        "matched_index": matched,
                        "lag": last_log_index.saturating_sub(matched),
                    })
                })
                .collect()
        });
        serde_json::json!({
            "node_id": self.id,
            "role": role,
            "term": m.current_term,
            "leader": m.current_leader,
            "leader_api": m.current_leader.and_then(|l| self.peer_api.lock().get(&l).cloned()),
            "api_addr": self.api_addr,
            "last_log_index": last_log_index,
            "applied_index": m.last_applied.map_or(0, |l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
            "purged_index": m.purged.map(|l| l.index),
            "members": members,
            "followers": followers,
            "millis_since_quorum_ack": m.millis_since_quorum_ack,
        })
    }
}

impl Cluster for ClusterNode {
    fn submit(
        &self,
        command: WriteCommand,
    ) -> Pin<Box<dyn Future<Output = ClusterResult> + Send + '_>> {
        Box::pin(self.submit_command(command))
    }

    fn takes_writes(&self) -> bool {
        self.is_leader()
    }

    fn status(&self) -> serde_json::Value {
        self.status_json()
    }

    fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, MembershipRefusal>> + Send + '_>>
    {
        Box::pin(self.change_members(change))
    }

    fn read_barrier(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<(), ClusterRefusal>> + Send + '_>> {
        Box::pin(self.read_index())
    }

    fn record_metrics(&self) {
        self.record_gauges();
    }
}

/// Asks the node at `raft_addr` for its id and API address.
async fn fetch_node(client: &HttpClient, raft_addr: &str) -> Result<(NodeId, String), String> {
    let uri = format!("http://{raft_addr}/raft/node");
    let request = hyper::Request::get(uri)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(1), client.request(request))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let id = value["node_id"].as_u64().ok_or("no node_id")?;
    let api = value["api_addr"].as_str().ok_or("no api_addr")?;
    Ok((id, api.to_owned()))
}

/// `GET /raft/node`: this node's id and API address.
async fn serve_node(State(node): State<Arc<ClusterNode>>) -> Response {
    axum::Json(serde_json::json!({ "node_id": node.id, "api_addr": node.api_addr })).into_response()
}

/// `POST /cluster/init`: initialize the cluster from this node's `--peers`.
async fn serve_init(State(node): State<Arc<ClusterNode>>) -> Response {
    match node.initialize().await {
        Ok(()) => axum::Json(serde_json::json!({ "initialized": true })).into_response(),
        Err(e) => (
            axum::http::StatusCode::CONFLICT,
            axum::Json(serde_json::json!({ "initialized": false, "error": e })),
        )
            .into_response(),
    }
}

/// `GET /cluster/status`: as `GET /v1/cluster`.
async fn serve_status(State(node): State<Arc<ClusterNode>>) -> Response {
    axum::Json(node.status_json()).into_response()
}

/// `GET /cluster/digest`: the applied index and the SHA-256 of the replicated state there
/// (`{"applied_index", "applied_term", "digest"}`), to compare replicas.
async fn serve_digest(State(node): State<Arc<ClusterNode>>) -> Response {
    let (applied, digest) = node.state_machine.digest();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    axum::Json(serde_json::json!({
        "applied_index": applied.map_or(0, |l| l.index),
        "applied_term": applied.map(|l| l.leader_id.term),
        "digest": hex,
    }))
    .into_response()
}

/// An operator's request to a node: `method path` on `addr` (a Raft address for `miqat
/// cluster init|status`, an API address for the `/v1/admin/cluster/*` routes), with a bearer
/// token and a JSON body when given.
#[derive(Debug, Clone)]
pub struct OperatorRequest<'a> {
    /// `HOST:PORT`.
    pub addr: &'a str,
    /// The method.
    pub method: hyper::Method,
    /// The path.
    pub path: &'a str,
    /// The operator's token, if the route wants one.
    pub bearer: Option<&'a str>,
    /// A JSON body.
    pub json: Option<String>,
}

/// A node's answer to an [`OperatorRequest`].
#[derive(Debug, Clone)]
pub struct OperatorAnswer {
    /// The status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// The `Miqat-Leader` header, if any.
    pub leader: Option<String>,
}

/// Sends an operator's request and returns the answer.
pub async fn operator_call(request: OperatorRequest<'_>) -> Result<OperatorAnswer, String> {
    let client = http_client();
    let addr = request.addr;
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(format!("http://{addr}{}", request.path));
    if let Some(token) = request.bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if request.json.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let body = bytes::Bytes::from(request.json.unwrap_or_default());
    let http_request = builder
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    // A membership change waits for its commit, at most the write timeout.
    let limit = WRITE_TIMEOUT + Duration::from_secs(5);
    let response = tokio::time::timeout(limit, client.request(http_request))
        .await
        .map_err(|_| format!("{addr} did not answer within {limit:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.status().as_u16();
    let leader = response
        .headers()
        .get("miqat-leader")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(OperatorAnswer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        leader,
    })
}
