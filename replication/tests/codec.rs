//! The byte forms of the cluster's entries and peer RPCs read back as written, refuse damage,
//! and the `--peers` list parses or is refused with a reason.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use miqat_replication::codec::{Reader, Writer};
use miqat_replication::node::ClusterConfig;
use miqat_replication::{CommandBatch, TypeConfig};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use common::Data;

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = (1..=3)
        .map(|i| (i, BasicNode::new(format!("127.0.0.1:700{i}"))))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

#[test]
fn an_append_request_with_every_kind_of_entry_reads_back_as_written() {
    let data = Data::new();
    let batch = CommandBatch {
        now_ms: 1_700_000_000_123,
        commands: vec![
            (data.reserve(5, b"key"), u128::MAX - 3),
            (data.reserve(6, b""), 0),
            (miqat_engine::engine::WriteCommand::ExpireDue, 99),
        ],
    };
    let request = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(4, 2),
        prev_log_id: Some(log_id(3, 1, 41)),
        leader_commit: None,
        entries: vec![
            Entry {
                log_id: log_id(4, 2, 42),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(4, 2, 43),
                payload: EntryPayload::Normal(batch),
            },
            Entry {
                log_id: log_id(4, 2, 44),
                payload: EntryPayload::Membership(membership()),
            },
        ],
    };
    let mut w = Writer::default();
    w.append_request(&request);
    let mut r = Reader::new(&w.out);
    let back = r.append_request().unwrap();
    r.finish().unwrap();
    assert_eq!(back.vote, request.vote);
    assert_eq!(back.prev_log_id, request.prev_log_id);
    assert_eq!(back.leader_commit, request.leader_commit);
    assert_eq!(back.entries, request.entries);

    // Every cut short of the whole is refused, never a panic.
    for len in 0..w.out.len() {
        let mut r = Reader::new(&w.out[..len]);
        assert!(
            r.append_request().is_err(),
            "a prefix of {len} bytes decoded"
        );
    }
}

#[test]
fn votes_answers_and_snapshot_metadata_read_back_as_written() {
    let vote = VoteRequest::new(Vote::new(7, 3), Some(log_id(6, 1, 100)));
    let mut w = Writer::default();
    w.vote_request(&vote);
    assert_eq!(Reader::new(&w.out).vote_request().unwrap(), vote);

    let answer = VoteResponse::new(Vote::new(7, 3), None, true);
    let mut w = Writer::default();
    w.vote_response(&answer);
    assert_eq!(Reader::new(&w.out).vote_response().unwrap(), answer);

    for response in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, 9))),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(Vote::new(9, 2)),
    ] {
        let mut w = Writer::default();
        w.append_response(&response);
        assert_eq!(Reader::new(&w.out).append_response().unwrap(), response);
    }

    let meta = SnapshotMeta::<u64, BasicNode> {
        last_log_id: Some(log_id(2, 1, 500)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
        snapshot_id: "2-1-500-3".into(),
    };
    let mut w = Writer::default();
    w.snapshot_meta(&meta);
    assert_eq!(Reader::new(&w.out).snapshot_meta().unwrap(), meta);
}

#[test]
fn a_count_larger_than_the_data_is_refused_before_allocating() {
    let mut w = Writer::default();
    w.vote(&Vote::new(1, 1));
    w.out.push(0); // no prev
    w.out.push(0); // no commit
    w.out.extend_from_slice(&u32::MAX.to_le_bytes()); // entries
    assert!(Reader::new(&w.out).append_request().is_err());
}

#[test]
fn the_peer_list_parses_or_says_what_is_wrong() {
    let peers = ClusterConfig::parse_peers("1=127.0.0.1:7001, 2=h2:7002,3=h3:7003").unwrap();
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[&2], "h2:7002");
    for (bad, why) in [
        ("", "no peers"),
        ("1=a:1,1=b:2", "named twice"),
        ("one=a:1", "not a number"),
        ("1", "expected ID=HOST:PORT"),
        ("1=nohost", "expected ID=HOST:PORT"),
    ] {
        let e = ClusterConfig::parse_peers(bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}
