//! The Raft log store and state machine: openraft's own storage conformance suite, the log's
//! crash behaviour, and the state machine's determinism across replicas and snapshots.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use miqat_engine::engine::WriteAnswer;
use miqat_replication::log_store::LogStore;
use miqat_replication::state_machine::StateMachine;
use miqat_replication::{BatchAnswers, CommandBatch, StorageError, TypeConfig};
use openraft::storage::{
    RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use common::Data;

/// Builds a fresh log store and state machine in a new temporary directory for each test of
/// the suite.
struct Builder {
    data: Data,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = LogStore::open(&dir.path().join("log")).unwrap();
        let sm = StateMachine::open(self.data.engine(), &dir.path().join("sm")).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder { data: Data::new() }).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, batch: CommandBatch) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(batch),
    }
}

async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    log.blocking_append(entries).await.unwrap();
}

#[tokio::test]
async fn the_log_reopens_with_its_entries_vote_and_purge_point_and_cuts_a_torn_tail() {
    let data = Data::new();
    let dir = tempfile::tempdir().unwrap();
    let batch = CommandBatch {
        now_ms: data.opening_ms(),
        commands: vec![(data.reserve(3, b"k"), 42)],
    };
    {
        let (mut log, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report.entries, 0);
        let entries = (1..=5).map(|i| entry(1, i, batch.clone())).collect();
        append(&mut log, entries).await;
        log.save_vote(&openraft::Vote::new(2, 1)).await.unwrap();
        log.truncate(log_id(1, 5)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
    }
    // A crash in the middle of an append leaves half a frame at the end.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("raft-log"))
        .unwrap();
    file.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
    drop(file);

    let (mut log, report) = LogStore::open(dir.path()).unwrap();
    assert_eq!(report.entries, 2, "entries 3 and 4 remain");
    assert!(report.cut_at.is_some());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(openraft::Vote::new(2, 1))
    );
    let read = log.try_get_log_entries(3..5).await.unwrap();
    assert_eq!(read.len(), 2);
    match &read[0].payload {
        EntryPayload::Normal(b) => assert_eq!(b, &batch),
        other => panic!("entry 3 came back as {other:?}"),
    }
    // Appending after the cut tail continues the log.
    append(&mut log, vec![entry(2, 5, batch.clone())]).await;
    drop(log);
    let (mut log, report) = LogStore::open(dir.path()).unwrap();
    assert_eq!(report.cut_at, None);
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 5))
    );
}

#[tokio::test]
async fn a_damaged_last_frame_is_cut() {
    let data = Data::new();
    let dir = tempfile::tempdir().unwrap();
    let batch = CommandBatch {
        now_ms: data.opening_ms(),
        commands: vec![(data.reserve(1, b""), 1)],
    };
    {
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        append(
            &mut log,
            (1..=3).map(|i| entry(1, i, batch.clone())).collect(),
        )
        .await;
    }
    let path = dir.path().join("raft-log");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (mut log, report) = LogStore::open(dir.path()).unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 2))
    );
}

fn reservations(answers: &BatchAnswers) -> Vec<String> {
    answers
        .0
        .iter()
        .map(|a| match a {
            Ok(WriteAnswer::Reservation { view, replayed }) => format!("{} {replayed}", view.id),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("refused: {e}"),
        })
        .collect()
}

#[tokio::test]
async fn replicas_applying_the_same_entries_decide_alike_and_a_snapshot_carries_keys() {
    let data = Data::new();
    let dir = tempfile::tempdir().unwrap();
    let now = data.opening_ms() + 1_000;
    let first = CommandBatch {
        now_ms: now,
        commands: (0..60u32)
            .map(|h| {
                (
                    data.reserve(h, format!("key-{h}").as_bytes()),
                    u128::from(h) * 7919,
                )
            })
            .collect(),
    };
    // The same keys again, with other seeds: every one must answer the original.
    let retry = CommandBatch {
        now_ms: now - 500,
        commands: (0..60u32)
            .map(|h| {
                (
                    data.reserve(h, format!("key-{h}").as_bytes()),
                    u128::from(h) + 5,
                )
            })
            .collect(),
    };
    let mut a = StateMachine::open(data.engine(), &dir.path().join("a")).unwrap();
    let mut b = StateMachine::open(data.engine(), &dir.path().join("b")).unwrap();
    let a1 = a.apply(vec![entry(1, 1, first.clone())]).await.unwrap();
    let b1 = b.apply(vec![entry(1, 1, first.clone())]).await.unwrap();
    let granted = reservations(&a1[0]);
    assert_eq!(granted, reservations(&b1[0]));
    assert!(
        granted.iter().any(|r| r.ends_with(" false")),
        "some reservation was granted: {granted:?}"
    );
    assert_eq!(a.engine().state_image(), b.engine().state_image());

    // A third replica starts from a's snapshot and answers the retries as the others do.
    let snapshot = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut c = StateMachine::open(data.engine(), &dir.path().join("c")).unwrap();
    c.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(c.engine().state_image(), a.engine().state_image());
    let a2 = a.apply(vec![entry(1, 2, retry.clone())]).await.unwrap();
    let c2 = c.apply(vec![entry(1, 2, retry.clone())]).await.unwrap();
    let replayed = reservations(&a2[0]);
    assert_eq!(replayed, reservations(&c2[0]));
    for (before, after) in granted.iter().zip(&replayed) {
        if let Some(id) = before.strip_suffix(" false") {
            assert_eq!(after, &format!("{id} true"), "a retry answers the original");
        }
    }
    assert_eq!(a.engine().state_image(), c.engine().state_image());
    a.engine().check_invariants().unwrap();

    // A state machine reopened on c's directory starts from the kept snapshot.
    let reopened = StateMachine::open(data.engine(), &dir.path().join("c")).unwrap();
    assert_eq!(reopened.last_applied(), Some(log_id(1, 1)));
}

#[tokio::test]
async fn an_expiry_entry_expires_the_same_holds_on_every_replica_once() {
    let data = Data::new();
    let dir = tempfile::tempdir().unwrap();
    let now = data.opening_ms() + 1_000;
    let reserve = CommandBatch {
        now_ms: now,
        commands: (0..40u32)
            .map(|h| (data.reserve(h, b""), u128::from(h) + 1))
            .collect(),
    };
    // Far past every stage deadline.
    let later = now + 400 * 24 * 3_600_000;
    let expire = CommandBatch {
        now_ms: later,
        commands: vec![(miqat_engine::engine::WriteCommand::ExpireDue, 77)],
    };
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let mut sm = StateMachine::open(data.engine(), &dir.path().join(name)).unwrap();
        let granted = sm.apply(vec![entry(1, 1, reserve.clone())]).await.unwrap();
        let held = granted[0].0.iter().filter(|a| a.is_ok()).count();
        assert!(held > 0, "some holds were granted");
        assert!(sm.engine().has_due_deadline(later));
        let first = sm.apply(vec![entry(1, 2, expire.clone())]).await.unwrap();
        assert!(
            matches!(first[0].0[..], [Ok(WriteAnswer::Expired(n))] if n == held),
            "every hold expires: {:?}",
            first[0]
        );
        let again = sm.apply(vec![entry(1, 3, expire.clone())]).await.unwrap();
        assert!(
            matches!(again[0].0[..], [Ok(WriteAnswer::Expired(0))]),
            "nothing expires twice: {:?}",
            again[0]
        );
        assert!(!sm.engine().has_due_deadline(later));
        sm.engine().check_invariants().unwrap();
        replicas.push(sm);
    }
    assert_eq!(
        replicas[0].engine().state_image(),
        replicas[1].engine().state_image()
    );
}

#[tokio::test]
async fn a_damaged_frame_before_intact_entries_refuses_the_start_and_cuts_nothing() {
    let data = Data::new();
    let dir = tempfile::tempdir().unwrap();
    let batch = CommandBatch {
        now_ms: data.opening_ms(),
        commands: vec![(data.reserve(1, b""), 1)],
    };
    {
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        append(
            &mut log,
            (1..=3).map(|i| entry(1, i, batch.clone())).collect(),
        )
        .await;
    }
    let path = dir.path().join("raft-log");
    let mut bytes = std::fs::read(&path).unwrap();
    // The first frame's last payload byte: entries 2 and 3 after it are intact.
    let (_, report) = LogStore::open(dir.path()).unwrap();
    assert_eq!(report.entries, 3);
    let frames = bytes.len() - 8; // the file's magic is 8 bytes
    let first_frame_end = 8 + frames / 3;
    bytes[first_frame_end - 1] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let refused = match LogStore::open(dir.path()) {
        Ok(_) => panic!("a log damaged before intact entries was opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("entry 1") && refused.contains("damaged"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "nothing was cut from the log"
    );
}
