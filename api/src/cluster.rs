//! The seam between the API and a replicated cluster: in cluster mode every write goes
//! through a [`Cluster`] (the consensus log) instead of straight to the engine, and the
//! engine the API reads is the replicas' applied state. The single-node server sets no
//! cluster and takes none of these paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use miqat_engine::EngineError;
use miqat_engine::engine::{WriteAnswer, WriteCommand};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::handlers::{ApiJson, PathId, audit, operator};

/// Why a cluster did not run a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRefusal {
    /// This node is not the leader: nothing was proposed. The leader's API address, when
    /// known.
    NotLeader(Option<String>),
    /// The write was proposed but its fate is not known (leadership lost, timeout).
    OutcomeUnknown,
}

/// A change of the cluster's members an operator asks for (`miqat cluster add-learner |
/// promote | remove`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a node that replicates the log and votes in nothing; it catches up (by snapshot
    /// when it starts empty) before it may be promoted.
    AddLearner {
        /// The new node's id: never the id of a node whose disk was lost.
        node_id: u64,
        /// Where the other nodes reach the new node's Raft RPCs (its `--raft-listen`).
        raft_addr: String,
    },
    /// Make a learner that has caught up a voter.
    Promote {
        /// The learner's id.
        node_id: u64,
    },
    /// Take a voter or a learner out of the cluster.
    Remove {
        /// The node's id.
        node_id: u64,
    },
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipRefusal {
    /// Only the leader changes the members: its API address, when known.
    NotLeader(Option<String>),
    /// No member has this id.
    UnknownNode(u64),
    /// The id is already a member (or a voter, for a promotion).
    AlreadyMember(u64),
    /// The node is the last voter: without it nothing could ever be committed.
    LastVoter(u64),
    /// The learner is this many entries behind the leader's log (or has not answered yet):
    /// promoting it now would stall commits until it catches up.
    LearnerBehind {
        /// The learner's id.
        node_id: u64,
        /// Entries it still lacks; `None` if it has not answered the leader yet.
        lag: Option<u64>,
    },
    /// Another membership change is still being committed.
    InProgress,
    /// The change was proposed but its fate is not known (leadership lost, timeout).
    OutcomeUnknown,
}

/// A write's fate in a cluster: refused by the cluster, or decided (granted or refused by
/// the engine) after it was committed and applied.
pub type ClusterResult = Result<Result<WriteAnswer, EngineError>, ClusterRefusal>;

/// A replicated cluster as the API sees it.
pub trait Cluster: Send + Sync + 'static {
    /// Runs `command` through the log: resolves once it is committed on a majority and
    /// applied here, with the engine's answer.
    fn submit(
        &self,
        command: WriteCommand,
    ) -> Pin<Box<dyn Future<Output = ClusterResult> + Send + '_>>;
    /// Whether this node takes writes now (it is the leader).
    fn takes_writes(&self) -> bool;
    /// The node's view of the cluster, for `GET /v1/cluster`.
    fn status(&self) -> serde_json::Value;
    /// Makes `change` through the log (leader only); resolves once it is committed, with the
    /// members after it.
    fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, MembershipRefusal>> + Send + '_>>;
    /// Resolves once this node's applied state holds every write acknowledged before the
    /// call (a read index confirmed by a majority): a read after it is linearizable. Only
    /// the leader can confirm; elsewhere `NotLeader`.
    fn read_barrier(&self)
    -> Pin<Box<dyn Future<Output = Result<(), ClusterRefusal>> + Send + '_>>;
    /// Sets the cluster's gauges (term, role, indexes, lag per follower) for a scrape.
    fn record_metrics(&self);
}

impl AppState {
    /// Puts the API in cluster mode: writes go through `cluster`. Set before serving.
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// The cluster, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.inner.cluster.get()
    }
}

/// Runs `command` through `cluster` and returns the engine's answer; a cluster refusal or an
/// engine refusal as the API error it becomes.
pub(crate) async fn replicate(
    cluster: &dyn Cluster,
    command: WriteCommand,
) -> Result<WriteAnswer, ApiError> {
    match cluster.submit(command).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(ApiError::Engine(e, None)),
        Err(ClusterRefusal::NotLeader(leader)) => Err(ApiError::NotLeader(leader)),
        Err(ClusterRefusal::OutcomeUnknown) => Err(ApiError::OutcomeUnknown),
    }
}

impl From<MembershipRefusal> for ApiError {
    fn from(refusal: MembershipRefusal) -> ApiError {
        match refusal {
            MembershipRefusal::NotLeader(leader) => ApiError::NotLeader(leader),
            MembershipRefusal::UnknownNode(id) => ApiError::NotFound(
                "node_not_found",
                format!("node {id} is not a member of the cluster"),
            ),
            MembershipRefusal::AlreadyMember(id) => ApiError::Membership(
                "node_already_member",
                format!("node {id} is already in that role"),
            ),
            MembershipRefusal::LastVoter(id) => ApiError::Membership(
                "last_voter",
                format!("node {id} is the last voter: the cluster would have none"),
            ),
            MembershipRefusal::LearnerBehind { node_id, lag } => ApiError::Membership(
                "learner_behind",
                match lag {
                    Some(lag) => format!(
                        "learner {node_id} is {lag} entries behind the leader; promote it once it has caught up"
                    ),
                    None => format!(
                        "learner {node_id} has not answered the leader yet; check its --raft-listen address"
                    ),
                },
            ),
            MembershipRefusal::InProgress => ApiError::Membership(
                "membership_change_in_progress",
                "another membership change is still being committed; retry in a moment".into(),
            ),
            MembershipRefusal::OutcomeUnknown => ApiError::OutcomeUnknown,
        }
    }
}

/// The reservation (and whether it was replayed) a write answered, or an error if it
/// answered something else.
pub(crate) fn reservation_answer(
    answer: WriteAnswer,
) -> Result<(miqat_engine::model::ReservationView, bool), ApiError> {
    match answer {
        WriteAnswer::Reservation { view, replayed } => Ok((view, replayed)),
        _ => Err(ApiError::Engine(EngineError::IdempotencyKeyReused, None)),
    }
}

/// `POST /v1/admin/cluster/learners`: the node to add as a learner.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerBody {
    /// The new node's id (its `--node-id`): never the id of a node whose disk was lost.
    pub node_id: u64,
    /// Where the other nodes reach its Raft RPCs (its `--raft-listen`, as `HOST:PORT`).
    pub raft_addr: String,
}

/// `POST /v1/admin/cluster/voters`: the learner to promote.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The learner's id.
    pub node_id: u64,
}

/// The cluster, or `404 not_found` on a single-node server.
fn clustered(state: &AppState) -> Result<&Arc<dyn Cluster>, ApiError> {
    state.cluster().ok_or(ApiError::NotFound(
        "not_found",
        "this server runs as a single node".into(),
    ))
}

async fn change(
    state: &AppState,
    headers: &HeaderMap,
    action: &'static str,
    change: MembershipChange,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = operator(state, headers)?;
    let cluster = clustered(state)?;
    let members = cluster.change_membership(change).await?;
    audit(&who, action, 1);
    Ok(Json(members))
}

/// `POST /v1/admin/cluster/learners` (operator, on the leader): add a node as a learner. It
/// receives the log (a snapshot first when it starts empty) and votes in nothing until it is
/// promoted. Answers once the change is committed, with the members after it.
#[utoipa::path(post, path = "/v1/admin/cluster/learners", tag = "operator",
    request_body = AddLearnerBody, security(("bearer" = [])),
    responses((status = 200, description = "The cluster's view after the change (as `GET /v1/cluster`)"),
        (status = 401, body = Problem), (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`not_found`: a single-node server", body = Problem),
        (status = 409, description = "`node_already_member`, `membership_change_in_progress`", body = Problem),
        (status = 421, description = "`not_leader`: send it to the node in `Miqat-Leader`", body = Problem),
        (status = 422, description = "`invalid_field`", body = Problem),
        (status = 503, description = "`outcome_unknown`: check `GET /v1/cluster`", body = Problem)))]
pub async fn add_learner(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddLearnerBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let raft_addr = body.raft_addr.trim();
    let valid = raft_addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(ApiError::InvalidField {
            field: "raft_addr".into(),
            message: format!("{raft_addr:?} is not HOST:PORT"),
        });
    }
    let add = MembershipChange::AddLearner {
        node_id: body.node_id,
        raft_addr: raft_addr.to_owned(),
    };
    change(&state, &headers, "cluster_add_learner", add).await
}

/// `POST /v1/admin/cluster/voters` (operator, on the leader): promote a learner that has
/// caught up to a voter.
#[utoipa::path(post, path = "/v1/admin/cluster/voters", tag = "operator",
    request_body = PromoteBody, security(("bearer" = [])),
    responses((status = 200, description = "The cluster's view after the change (as `GET /v1/cluster`)"),
        (status = 401, body = Problem), (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`node_not_found`: no learner has this id; `not_found`: a single-node server", body = Problem),
        (status = 409, description = "`node_already_member` (already a voter), `learner_behind`, `membership_change_in_progress`", body = Problem),
        (status = 421, description = "`not_leader`: send it to the node in `Miqat-Leader`", body = Problem),
        (status = 503, description = "`outcome_unknown`: check `GET /v1/cluster`", body = Problem)))]
pub async fn promote(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PromoteBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let promote = MembershipChange::Promote {
        node_id: body.node_id,
    };
    change(&state, &headers, "cluster_promote", promote).await
}

/// `DELETE /v1/admin/cluster/members/{id}` (operator, on the leader): take a voter or a
/// learner out of the cluster (a node whose disk died, before or after its replacement
/// joined). The last voter cannot be removed.
#[utoipa::path(delete, path = "/v1/admin/cluster/members/{id}", tag = "operator",
    params(("id" = u64, Path, description = "The node's id")), security(("bearer" = [])),
    responses((status = 200, description = "The cluster's view after the change (as `GET /v1/cluster`)"),
        (status = 401, body = Problem), (status = 403, description = "`forbidden`", body = Problem),
        (status = 404, description = "`node_not_found`; `not_found`: a single-node server", body = Problem),
        (status = 409, description = "`last_voter`, `membership_change_in_progress`", body = Problem),
        (status = 421, description = "`not_leader`: send it to the node in `Miqat-Leader`", body = Problem),
        (status = 503, description = "`outcome_unknown`: check `GET /v1/cluster`", body = Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathId(id): PathId,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node_id: u64 = id
        .parse()
        .map_err(|_| ApiError::NotFound("node_not_found", format!("{id:?} is not a node id")))?;
    change(
        &state,
        &headers,
        "cluster_remove",
        MembershipChange::Remove { node_id },
    )
    .await
}
