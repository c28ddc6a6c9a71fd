//! The byte form of everything the cluster writes to disk or sends to a peer: log entries,
//! votes, memberships, snapshot metadata and the peer RPCs. Little-endian, length-prefixed,
//! no self-description: both ends are this crate (docs/raft-log-format.md).

use std::collections::{BTreeMap, BTreeSet};

use miqat_engine::engine::WriteCommand;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use crate::{CommandBatch, NodeId, TypeConfig};

/// Appends values to a buffer.
#[derive(Default)]
pub struct Writer {
    /// What was written so far.
    pub out: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u128(&mut self, v: u128) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.out.extend_from_slice(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// A log id: term, leader node, index.
    pub fn log_id(&mut self, id: &LogId<NodeId>) {
        self.u64(id.leader_id.term);
        self.u64(id.leader_id.node_id);
        self.u64(id.index);
    }

    /// An optional log id: a flag byte, then the id.
    pub fn opt_log_id(&mut self, id: &Option<LogId<NodeId>>) {
        match id {
            Some(id) => {
                self.u8(1);
                self.log_id(id);
            }
            None => self.u8(0),
        }
    }

    /// A vote: term, node, committed.
    pub fn vote(&mut self, v: &Vote<NodeId>) {
        self.u64(v.leader_id.term);
        self.u64(v.leader_id.node_id);
        self.bool(v.committed);
    }

    /// A membership: its configurations (sets of voter ids), then every node with its
    /// address.
    pub fn membership(&mut self, m: &Membership<NodeId, BasicNode>) {
        let configs = m.get_joint_config();
        self.u32(configs.len() as u32);
        for config in configs {
            self.u32(config.len() as u32);
            for id in config {
                self.u64(*id);
            }
        }
        let nodes: Vec<_> = m.nodes().collect();
        self.u32(nodes.len() as u32);
        for (id, node) in nodes {
            self.u64(*id);
            self.bytes(node.addr.as_bytes());
        }
    }

    /// A membership with the log id that set it.
    pub fn stored_membership(&mut self, m: &StoredMembership<NodeId, BasicNode>) {
        self.opt_log_id(m.log_id());
        self.membership(m.membership());
    }

    /// A batch of commands: the leader's time, then each command's seed and bytes.
    pub fn batch(&mut self, b: &CommandBatch) {
        self.i64(b.now_ms);
        self.u32(b.commands.len() as u32);
        let mut scratch = Vec::new();
        for (command, seed) in &b.commands {
            self.u128(*seed);
            scratch.clear();
            command.encode(&mut scratch);
            self.bytes(&scratch);
        }
    }

    /// A log entry: its id, then a payload tag (0 blank, 1 commands, 2 membership) and payload.
    pub fn entry(&mut self, e: &Entry<TypeConfig>) {
        self.log_id(&e.log_id);
        match &e.payload {
            EntryPayload::Blank => self.u8(0),
            EntryPayload::Normal(batch) => {
                self.u8(1);
                self.batch(batch);
            }
            EntryPayload::Membership(m) => {
                self.u8(2);
                self.membership(m);
            }
        }
    }

    /// Snapshot metadata.
    pub fn snapshot_meta(&mut self, m: &SnapshotMeta<NodeId, BasicNode>) {
        self.opt_log_id(&m.last_log_id);
        self.stored_membership(&m.last_membership);
        self.bytes(m.snapshot_id.as_bytes());
    }

    /// An append-entries request.
    pub fn append_request(&mut self, r: &AppendEntriesRequest<TypeConfig>) {
        self.vote(&r.vote);
        self.opt_log_id(&r.prev_log_id);
        self.opt_log_id(&r.leader_commit);
        self.u32(r.entries.len() as u32);
        for e in &r.entries {
            self.entry(e);
        }
    }

    /// An append-entries response.
    pub fn append_response(&mut self, r: &AppendEntriesResponse<NodeId>) {
        match r {
            AppendEntriesResponse::Success => self.u8(0),
            AppendEntriesResponse::PartialSuccess(id) => {
                self.u8(1);
                self.opt_log_id(id);
            }
            AppendEntriesResponse::Conflict => self.u8(2),
            AppendEntriesResponse::HigherVote(v) => {
                self.u8(3);
                self.vote(v);
            }
        }
    }

    /// A vote request.
    pub fn vote_request(&mut self, r: &VoteRequest<NodeId>) {
        self.vote(&r.vote);
        self.opt_log_id(&r.last_log_id);
    }

    /// A vote response.
    pub fn vote_response(&mut self, r: &VoteResponse<NodeId>) {
        self.vote(&r.vote);
        self.bool(r.vote_granted);
        self.opt_log_id(&r.last_log_id);
    }

    /// One chunk of a snapshot.
    pub fn snapshot_request(&mut self, r: &InstallSnapshotRequest<TypeConfig>) {
        self.vote(&r.vote);
        self.snapshot_meta(&r.meta);
        self.u64(r.offset);
        self.bytes(&r.data);
        self.bool(r.done);
    }

    /// The answer to a snapshot chunk.
    pub fn snapshot_response(&mut self, r: &InstallSnapshotResponse<NodeId>) {
        self.vote(&r.vote);
    }

    /// A string.
    pub fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// A u64.
    pub fn number(&mut self, v: u64) {
        self.u64(v);
    }
}

/// Reads values back; running off the end or meeting a bad value is an error, never a panic.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable cluster data at byte {at}: {why}")]
pub struct DecodeError {
    at: usize,
    why: String,
}

type Result<T> = std::result::Result<T, DecodeError>;

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    fn fail<T>(&self, why: impl Into<String>) -> Result<T> {
        Err(DecodeError {
            at: self.pos,
            why: why.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
        {
            Some(end) => {
                let slice = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => self.fail("truncated"),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => self.fail(format!("bad flag {b}")),
        }
    }
    /// A count that cannot claim more items than the bytes left could hold.
    fn count(&mut self, item_bytes_min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_bytes_min) > self.bytes.len() - self.pos {
            return self.fail(format!("count {n} exceeds the data"));
        }
        Ok(n)
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            self.fail("trailing bytes")
        }
    }

    /// See [`Writer::log_id`].
    pub fn log_id(&mut self) -> Result<LogId<NodeId>> {
        let term = self.u64()?;
        let node = self.u64()?;
        let index = self.u64()?;
        Ok(LogId::new(CommittedLeaderId::new(term, node), index))
    }

    /// See [`Writer::opt_log_id`].
    pub fn opt_log_id(&mut self) -> Result<Option<LogId<NodeId>>> {
        if self.bool()? {
            Ok(Some(self.log_id()?))
        } else {
            Ok(None)
        }
    }

    /// See [`Writer::vote`].
    pub fn vote(&mut self) -> Result<Vote<NodeId>> {
        let term = self.u64()?;
        let node = self.u64()?;
        Ok(if self.bool()? {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        })
    }

    /// See [`Writer::membership`].
    pub fn membership(&mut self) -> Result<Membership<NodeId, BasicNode>> {
        let config_count = self.count(4)?;
        let mut configs = Vec::with_capacity(config_count);
        for _ in 0..config_count {
            let n = self.count(8)?;
            let mut set = BTreeSet::new();
            for _ in 0..n {
                set.insert(self.u64()?);
            }
            configs.push(set);
        }
        let node_count = self.count(12)?;
        let mut nodes = BTreeMap::new();
        for _ in 0..node_count {
            let id = self.u64()?;
            let addr = self.string()?;
            nodes.insert(id, BasicNode { addr });
        }
        Ok(Membership::new(configs, nodes))
    }

    /// See [`Writer::stored_membership`].
    pub fn stored_membership(&mut self) -> Result<StoredMembership<NodeId, BasicNode>> {
        let log_id = self.opt_log_id()?;
        Ok(StoredMembership::new(log_id, self.membership()?))
    }

    /// See [`Writer::batch`].
    pub fn batch(&mut self) -> Result<CommandBatch> {
        let now_ms = self.i64()?;
        let n = self.count(20)?;
        let mut commands = Vec::with_capacity(n);
        for _ in 0..n {
            let seed = self.u128()?;
            let bytes = self.bytes()?;
            match WriteCommand::decode(bytes) {
                Ok(command) => commands.push((command, seed)),
                Err(why) => return self.fail(why),
            }
        }
        Ok(CommandBatch { now_ms, commands })
    }

    /// See [`Writer::entry`].
    pub fn entry(&mut self) -> Result<Entry<TypeConfig>> {
        let log_id = self.log_id()?;
        let payload = match self.u8()? {
            0 => EntryPayload::Blank,
            1 => EntryPayload::Normal(self.batch()?),
            2 => EntryPayload::Membership(self.membership()?),
            tag => return self.fail(format!("unknown entry payload {tag}")),
        };
        Ok(Entry { log_id, payload })
    }

    /// See [`Writer::snapshot_meta`].
    pub fn snapshot_meta(&mut self) -> Result<SnapshotMeta<NodeId, BasicNode>> {
        Ok(SnapshotMeta {
            last_log_id: self.opt_log_id()?,
            last_membership: self.stored_membership()?,
            snapshot_id: self.string()?,
        })
    }

    /// See [`Writer::append_request`].
    pub fn append_request(&mut self) -> Result<AppendEntriesRequest<TypeConfig>> {
        let vote = self.vote()?;
        let prev_log_id = self.opt_log_id()?;
        let leader_commit = self.opt_log_id()?;
        let n = self.count(25)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(self.entry()?);
        }
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
    }

    /// See [`Writer::append_response`].
    pub fn append_response(&mut self) -> Result<AppendEntriesResponse<NodeId>> {
        Ok(match self.u8()? {
            0 => AppendEntriesResponse::Success,
            1 => AppendEntriesResponse::PartialSuccess(self.opt_log_id()?),
            2 => AppendEntriesResponse::Conflict,
            3 => AppendEntriesResponse::HigherVote(self.vote()?),
            tag => return self.fail(format!("unknown append response {tag}")),
        })
    }

    /// See [`Writer::vote_request`].
    pub fn vote_request(&mut self) -> Result<VoteRequest<NodeId>> {
        let vote = self.vote()?;
        Ok(VoteRequest::new(vote, self.opt_log_id()?))
    }

    /// See [`Writer::vote_response`].
    pub fn vote_response(&mut self) -> Result<VoteResponse<NodeId>> {
        let vote = self.vote()?;
        let granted = self.bool()?;
        Ok(VoteResponse::new(vote, self.opt_log_id()?, granted))
    }

    /// See [`Writer::snapshot_request`].
    pub fn snapshot_request(&mut self) -> Result<InstallSnapshotRequest<TypeConfig>> {
        Ok(InstallSnapshotRequest {
            vote: self.vote()?,
            meta: self.snapshot_meta()?,
            offset: self.u64()?,
            data: self.bytes()?.to_vec(),
            done: self.bool()?,
        })
    }

    /// See [`Writer::snapshot_response`].
    pub fn snapshot_response(&mut self) -> Result<InstallSnapshotResponse<NodeId>> {
        Ok(InstallSnapshotResponse { vote: self.vote()? })
    }

    /// See [`Writer::string`].
    pub fn string(&mut self) -> Result<String> {
        let bytes = self.bytes()?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => self.fail("not UTF-8"),
        }
    }

    /// See [`Writer::number`].
    pub fn number(&mut self) -> Result<u64> {
        self.u64()
    }

    /// The raw remainder (a snapshot's image after its header).
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }

    /// See [`Writer::batch`]'s time field, read alone.
    pub fn time_ms(&mut self) -> Result<i64> {
        self.i64()
    }
}

impl Writer {
    /// See [`Reader::time_ms`].
    pub fn time_ms(&mut self, v: i64) {
        self.i64(v);
    }
    /// Raw bytes without a length (a snapshot's image).
    pub fn raw(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }
}
