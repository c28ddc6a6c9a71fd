//! The seam between the API and a replicated cluster: in cluster mode every write goes
//! through a [`Cluster`] (the consensus log) instead of straight to the engine, and the
//! engine the API reads is the replicas' applied state. The single-node server sets no
//! cluster and takes none of these paths.

use std::future::Future;
use std::pin::Pin;

use miqat_engine::EngineError;
use miqat_engine::engine::{WriteAnswer, WriteCommand};

use crate::AppState;
use crate::error::ApiError;

/// Why a cluster did not run a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRefusal {
    /// This node is not the leader: nothing was proposed. The leader's API address, when
    /// known.
    NotLeader(Option<String>),
    /// The write was proposed but its fate is not known (leadership lost, timeout).
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
}

impl AppState {
    /// Puts the API in cluster mode: writes go through `cluster`. Set before serving.
    pub fn set_cluster(&self, cluster: std::sync::Arc<dyn Cluster>) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// The cluster, in cluster mode.
    pub fn cluster(&self) -> Option<&std::sync::Arc<dyn Cluster>> {
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
