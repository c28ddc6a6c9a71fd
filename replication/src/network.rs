//! Peer RPCs over HTTP/1.1 on the `--raft-listen` address: `POST /raft/append`,
//! `/raft/vote` and `/raft/snapshot` carry the [`crate::codec`] bytes of openraft's requests
//! and answers. An answer's first byte says what follows: 0 the answer, 1 an error message,
//! 2 a snapshot mismatch (the sender restarts the snapshot). `GET /raft/node` tells a peer
//! this node's id and API address (for the `Miqat-Leader` hint); `/cluster/*` are the
//! operator's (see [`crate::node`]).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, SnapshotSegmentId};

use crate::codec::{DecodeError, Reader, Writer};
use crate::{NodeId, TypeConfig};

const ANSWER_OK: u8 = 0;
const ANSWER_ERROR: u8 = 1;
const ANSWER_SNAPSHOT_MISMATCH: u8 = 2;

/// The largest RPC body a node accepts (a batch of entries or a snapshot chunk).
pub const RPC_BODY_BYTES_MAX: usize = 64 << 20;

/// The HTTP client every connection to a peer shares.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new HTTP client for peer RPCs (keep-alive, no proxy).
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(500)));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Sends `body` to `http://{addr}{path}` and returns the answer's body, or why not within
/// `timeout`.
pub async fn post(
    client: &HttpClient,
    addr: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, std::io::Error> {
    let request = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .map_err(std::io::Error::other)?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(std::io::Error::other(format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            )))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{path} to {addr}: no answer within {timeout:?}"),
        )),
    }
}

/// Makes a [`PeerClient`] for each peer openraft talks to.
pub struct PeerNetwork {
    client: HttpClient,
}

impl PeerNetwork {
    /// A network over a shared HTTP client.
    pub fn new(client: HttpClient) -> PeerNetwork {
        PeerNetwork { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            client: self.client.clone(),
        }
    }
}

/// The RPCs to one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: HttpClient,
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn network_error<E: std::error::Error>(e: &DecodeError) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(e))
}

impl PeerClient {
    /// Sends one RPC and returns the answer's payload after its tag; `Err(Some(reader))`
    /// for a snapshot mismatch, with the rest to decode.
    async fn call<E: std::error::Error>(
        &self,
        path: &str,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Bytes, RPCError<NodeId, BasicNode, E>> {
        let answer = post(&self.client, &self.addr, path, body, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        match answer.first() {
            Some(&ANSWER_OK) | Some(&ANSWER_SNAPSHOT_MISMATCH) => Ok(answer),
            Some(&ANSWER_ERROR) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!(
                    "node {} refused {path}: {}",
                    self.target,
                    String::from_utf8_lossy(&answer[1..])
                )),
            ))),
            _ => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other(format!("node {}: empty answer to {path}", self.target)),
            ))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let mut w = Writer::default();
        w.append_request(&rpc);
        let answer = self.call("/raft/append", w.out, &option).await?;
        let mut r = Reader::new(&answer[1..]);
        r.append_response().map_err(|e| network_error(&e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let mut w = Writer::default();
        w.snapshot_request(&rpc);
        let answer = self.call("/raft/snapshot", w.out, &option).await?;
        let mut r = Reader::new(&answer[1..]);
        if answer[0] == ANSWER_SNAPSHOT_MISMATCH {
            let mismatch = decode_mismatch(&mut r).map_err(|e| network_error(&e))?;
            return Err(RPCError::RemoteError(RemoteError::new(
                self.target,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
            )));
        }
        r.snapshot_response().map_err(|e| network_error(&e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let mut w = Writer::default();
        w.vote_request(&rpc);
        let answer = self.call("/raft/vote", w.out, &option).await?;
        let mut r = Reader::new(&answer[1..]);
        r.vote_response().map_err(|e| network_error(&e))
    }
}

fn encode_mismatch(w: &mut Writer, m: &SnapshotMismatch) {
    w.string(&m.expect.id);
    w.number(m.expect.offset);
    w.string(&m.got.id);
    w.number(m.got.offset);
}

fn decode_mismatch(r: &mut Reader<'_>) -> Result<SnapshotMismatch, DecodeError> {
    Ok(SnapshotMismatch {
        expect: SnapshotSegmentId {
            id: r.string()?,
            offset: r.number()?,
        },
        got: SnapshotSegmentId {
            id: r.string()?,
            offset: r.number()?,
        },
    })
}

fn answer(tag: u8, payload: &[u8]) -> Response {
    let mut body = Vec::with_capacity(payload.len() + 1);
    body.push(tag);
    body.extend_from_slice(payload);
    (StatusCode::OK, body).into_response()
}

fn refuse(message: impl std::fmt::Display) -> Response {
    answer(ANSWER_ERROR, message.to_string().as_bytes())
}

fn undecodable(e: DecodeError) -> Response {
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

/// `POST /raft/append`.
pub async fn serve_append(State(raft): State<Raft<TypeConfig>>, body: Bytes) -> Response {
    let mut r = Reader::new(&body);
    let request = match r.append_request().and_then(|req| r.finish().map(|()| req)) {
        Ok(request) => request,
        Err(e) => return undecodable(e),
    };
    match raft.append_entries(request).await {
        Ok(response) => {
            let mut w = Writer::default();
            w.append_response(&response);
            answer(ANSWER_OK, &w.out)
        }
        Err(e) => refuse(e),
    }
}

/// `POST /raft/vote`.
pub async fn serve_vote(State(raft): State<Raft<TypeConfig>>, body: Bytes) -> Response {
    let mut r = Reader::new(&body);
    let request = match r.vote_request().and_then(|req| r.finish().map(|()| req)) {
        Ok(request) => request,
        Err(e) => return undecodable(e),
    };
    match raft.vote(request).await {
        Ok(response) => {
            let mut w = Writer::default();
            w.vote_response(&response);
            answer(ANSWER_OK, &w.out)
        }
        Err(e) => refuse(e),
    }
}

/// `POST /raft/snapshot`.
pub async fn serve_snapshot(State(raft): State<Raft<TypeConfig>>, body: Bytes) -> Response {
    let mut r = Reader::new(&body);
    let request = match r
        .snapshot_request()
        .and_then(|req| r.finish().map(|()| req))
    {
        Ok(request) => request,
        Err(e) => return undecodable(e),
    };
    match raft.install_snapshot(request).await {
        Ok(response) => {
            let mut w = Writer::default();
            w.snapshot_response(&response);
            answer(ANSWER_OK, &w.out)
        }
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
            let mut w = Writer::default();
            encode_mismatch(&mut w, &m);
            answer(ANSWER_SNAPSHOT_MISMATCH, &w.out)
        }
        Err(e) => refuse(e),
    }
}
