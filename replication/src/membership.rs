//! The operator's membership changes (add a learner, promote it, remove a node), the read
//! barrier that makes a read linearizable, and the cluster's gauges at scrape time: the
//! parts of [`ClusterNode`] that act on the cluster's configuration rather than on writes.

use std::collections::BTreeSet;

use miqat_api::cluster::{ClusterRefusal, MembershipChange, MembershipRefusal};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::NodeId;
use crate::network::post;
use crate::node::{ClusterNode, WRITE_TIMEOUT};

/// How long a follower waits for the leader's read index.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

/// A learner further behind the leader's log than this many entries is not promoted: as a
/// voter it would hold back commits until it caught up.
pub const PROMOTE_LAG_MAX: u64 = 100;

impl ClusterNode {
    /// Makes `change` through the log, on the leader; answers the node's view after it.
    pub async fn change_members(
        &self,
        change: MembershipChange,
    ) -> Result<serde_json::Value, MembershipRefusal> {
        if !self.is_leader() {
            return Err(MembershipRefusal::NotLeader(self.leader_api()));
        }
        let (membership, last_log_index, replication) = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            (
                m.membership_config.membership().clone(),
                m.last_log_index.unwrap_or(0),
                m.replication.clone(),
            )
        };
        let is_member = |id: NodeId| membership.get_node(&id).is_some();
        let is_voter = |id: NodeId| membership.voter_ids().any(|v| v == id);
        let (subject, proposal) = match change {
            MembershipChange::AddLearner { node_id, raft_addr } => {
                if is_member(node_id) {
                    return Err(MembershipRefusal::AlreadyMember(node_id));
                }
                tracing::info!(node_id, %raft_addr, "adding a learner");
                let node = BasicNode { addr: raft_addr };
                let raft = self.raft().clone();
                (
                    node_id,
                    Box::pin(async move { raft.add_learner(node_id, node, false).await })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
                )
            }
            MembershipChange::Promote { node_id } => {
                if is_voter(node_id) {
                    return Err(MembershipRefusal::AlreadyMember(node_id));
                }
                if !is_member(node_id) {
                    return Err(MembershipRefusal::UnknownNode(node_id));
                }
                let matched = replication
                    .as_ref()
                    .and_then(|r| r.get(&node_id).copied().flatten());
                let lag = matched.map(|log_id| last_log_index.saturating_sub(log_id.index));
                if lag.is_none_or(|lag| lag > PROMOTE_LAG_MAX) {
                    return Err(MembershipRefusal::LearnerBehind { node_id, lag });
                }
                tracing::info!(node_id, "promoting a learner");
                let raft = self.raft().clone();
                let voters = BTreeSet::from([node_id]);
                (
                    node_id,
                    Box::pin(async move {
                        raft.change_membership(ChangeMembers::AddVoterIds(voters), false)
                            .await
                    })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
                )
            }
            MembershipChange::Remove { node_id } => {
                if !is_member(node_id) {
                    return Err(MembershipRefusal::UnknownNode(node_id));
                }
                let ids = BTreeSet::from([node_id]);
                let change = if is_voter(node_id) {
                    if membership.voter_ids().count() == 1 {
                        return Err(MembershipRefusal::LastVoter(node_id));
                    }
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                tracing::info!(node_id, "removing a node");
                let raft = self.raft().clone();
                (
                    node_id,
                    Box::pin(async move { raft.change_membership(change, false).await })
                        as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>,
                )
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, proposal).await {
            Ok(Ok(_)) => Ok(self.status_json()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(MembershipRefusal::NotLeader(self.leader_api()))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(match e {
                    ChangeMembershipError::InProgress(_) => MembershipRefusal::InProgress,
                    ChangeMembershipError::EmptyMembership(_) => {
                        MembershipRefusal::LastVoter(subject)
                    }
                    ChangeMembershipError::LearnerNotFound(l) => {
                        MembershipRefusal::UnknownNode(l.node_id)
                    }
                })
            }
            Ok(Err(RaftError::Fatal(e))) => {
                tracing::error!(error = %e, "a membership change met a fatal error");
                Err(MembershipRefusal::OutcomeUnknown)
            }
            Err(_) => Err(MembershipRefusal::OutcomeUnknown),
        }
    }

    /// Waits until this node has applied everything committed before the call (Raft's read
    /// index): the leader confirms its leadership with a majority; a follower asks the leader
    /// for that index (`POST /raft/read-index`) and waits until it has applied it. A node
    /// that can do neither answers `NotLeader` with its hint.
    pub async fn read_index(&self) -> Result<(), ClusterRefusal> {
        let not_leader = || ClusterRefusal::NotLeader(self.leader_api());
        if self.is_leader() {
            return match tokio::time::timeout(WRITE_TIMEOUT, self.raft().ensure_linearizable())
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a read could not confirm the leadership");
                    Err(not_leader())
                }
                Err(_) => Err(not_leader()),
            };
        }
        let leader_raft_addr = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            m.current_leader.and_then(|leader| {
                m.membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|node| node.addr.clone())
            })
        };
        let Some(addr) = leader_raft_addr else {
            return Err(not_leader());
        };
        let answer = post(
            self.client(),
            &addr,
            "/raft/read-index",
            Vec::new(),
            READ_INDEX_TIMEOUT,
        )
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "the leader gave no read index");
            not_leader()
        })?;
        let index = <[u8; 8]>::try_from(&answer[..])
            .map(u64::from_le_bytes)
            .map_err(|_| not_leader())?;
        self.raft()
            .wait(Some(WRITE_TIMEOUT))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| not_leader())
    }

    /// Sets the cluster's gauges from openraft's metrics (at scrape time).
    pub fn record_gauges(&self) {
        let metrics = self.raft().metrics();
        let m = metrics.borrow();
        let is_leader = m.state == ServerState::Leader;
        metrics::gauge!("miqat_raft_term").set(m.current_term as f64);
        metrics::gauge!("miqat_raft_is_leader").set(if is_leader { 1.0 } else { 0.0 });
        metrics::gauge!("miqat_raft_leader_known").set(if m.current_leader.is_some() {
            1.0
        } else {
            0.0
        });
        let last_log_index = m.last_log_index.unwrap_or(0);
        metrics::gauge!("miqat_raft_last_log_index").set(last_log_index as f64);
        metrics::gauge!("miqat_raft_applied_index")
            .set(m.last_applied.map_or(0, |l| l.index) as f64);
        let mut reported = Vec::new();
        if let (true, Some(replication)) = (is_leader, m.replication.as_ref()) {
            let membership = m.membership_config.membership();
            // The commit index: the highest index a majority of the voters holds.
            let mut voter_matched: Vec<u64> = membership
                .voter_ids()
                .map(|id| {
                    if id == self.id() {
                        last_log_index
                    } else {
                        replication
                            .get(&id)
                            .copied()
                            .flatten()
                            .map_or(0, |l| l.index)
                    }
                })
                .collect();
            voter_matched.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(commit) = voter_matched.get(voter_matched.len() / 2) {
                metrics::gauge!("miqat_raft_commit_index").set(*commit as f64);
            }
            for (id, matched) in replication.iter().filter(|(id, _)| **id != self.id()) {
                let matched = matched.map_or(0, |l| l.index);
                metrics::gauge!("miqat_raft_replication_lag_entries", "follower" => id.to_string())
                    .set(last_log_index.saturating_sub(matched) as f64);
                reported.push(*id);
            }
        }
        // A follower this node no longer replicates to (it lost the leadership, or the node
        // left) has no lag to report: NaN, which no alert's comparison matches.
        let mut previous = self.lag_reported.lock();
        for id in previous.iter().filter(|id| !reported.contains(id)) {
            metrics::gauge!("miqat_raft_replication_lag_entries", "follower" => id.to_string())
                .set(f64::NAN);
        }
        *previous = reported;
    }
}

/// `POST /raft/read-index` (a peer, for a read on a follower): the index a linearizable read
/// must see applied, once this node confirmed with a majority that it still leads; 8 bytes,
/// little-endian. 421 if it does not lead.
pub(crate) async fn serve_read_index(State(node): State<Arc<ClusterNode>>) -> Response {
    if !node.is_leader() {
        return (StatusCode::MISDIRECTED_REQUEST, "not the leader").into_response();
    }
    match tokio::time::timeout(WRITE_TIMEOUT, node.raft().get_read_log_id()).await {
        Ok(Ok((read_log_id, _applied))) => {
            let index = read_log_id.map_or(0, |l| l.index);
            (StatusCode::OK, index.to_le_bytes().to_vec()).into_response()
        }
        Ok(Err(e)) => (StatusCode::MISDIRECTED_REQUEST, e.to_string()).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no majority confirmed the leadership in time",
        )
            .into_response(),
    }
}
