//! The engine as the Raft state machine. Applying an entry runs its commands in order with
//! [`Engine::execute`] at the entry's time (never earlier than an earlier entry's: a new
//! leader whose clock is behind cannot move engine time back) and with each command's seed.
//!
//! A snapshot is the engine's own snapshot payload (the format of `docs/wal-format.md`,
//! every shard's cut 0) behind an 8-byte time floor; the last one built or installed is kept
//! in the file `raft-snapshot` (with its Raft metadata) and restored at start, and the log
//! replays what follows it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miqat_engine::Engine;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, SnapshotMeta,
    StoredMembership,
};
use parking_lot::Mutex;

use crate::codec::{Reader, Writer};
use crate::log_store::{read_small_file, write_small_file};
use crate::{BatchAnswers, NodeId, StorageError, TypeConfig, io_error};

const SNAPSHOT_FILE: &str = "raft-snapshot";

/// The Raft state machine over one engine. Clones share it.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Arc<Engine>,
    dir: PathBuf,
    /// Held while a batch is applied and while a snapshot is taken, so a snapshot's image
    /// is exactly the state at its `last_applied`.
    meta: Mutex<Meta>,
    /// Held while the snapshot file is written (taken before `meta`, never after): a built
    /// snapshot is written outside `meta`, so applying goes on meanwhile, and an older one
    /// never replaces a newer one.
    snapshot_file: Mutex<()>,
}

#[derive(Default)]
struct Meta {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// The newest entry time applied: engine time for the next entry is at least this.
    time_floor_ms: i64,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

fn snapshot_data(time_floor_ms: i64, image: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.time_ms(time_floor_ms);
    w.raw(image);
    w.out
}

impl StateMachine {
    /// The state machine over `engine` (empty, without a log of its own), restored from the
    /// snapshot kept in `dir` if there is one.
    pub fn open(engine: Arc<Engine>, dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut meta = Meta::default();
        if let Some(payload) = read_small_file(dir, SNAPSHOT_FILE)? {
            let mut r = Reader::new(&payload);
            let snapshot_meta = r.snapshot_meta().map_err(std::io::Error::other)?;
            let data = r.rest().to_vec();
            let mut d = Reader::new(&data);
            meta.time_floor_ms = d.time_ms().map_err(std::io::Error::other)?;
            engine
                .restore_image(d.rest())
                .map_err(std::io::Error::other)?;
            meta.last_applied = snapshot_meta.last_log_id;
            meta.membership = snapshot_meta.last_membership.clone();
            meta.snapshot = Some(StoredSnapshot {
                meta: snapshot_meta,
                data,
            });
        }
        Ok(StateMachine {
            shared: Arc::new(Shared {
                engine,
                dir: dir.to_path_buf(),
                meta: Mutex::new(meta),
                snapshot_file: Mutex::new(()),
            }),
        })
    }

    /// The engine this state machine drives (for reads).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// The last log id applied.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.shared.meta.lock().last_applied
    }

    /// The last log id applied and a SHA-256 of the replicated state there (the time floor
    /// and the engine's image, the bytes a snapshot carries). Taken under the apply lock, so
    /// the digest is exactly the state at that index: replicas that report the same index
    /// must report the same digest.
    pub fn digest(&self) -> (Option<LogId<NodeId>>, [u8; 32]) {
        use sha2::{Digest, Sha256};
        let meta = self.shared.meta.lock();
        let data = snapshot_data(meta.time_floor_ms, &self.shared.engine.state_image());
        (meta.last_applied, Sha256::digest(&data).into())
    }
}

impl Shared {
    /// Writes `snapshot` to the snapshot file (replaced atomically, synced); the caller
    /// holds `snapshot_file`.
    fn write_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let mut w = Writer::default();
        w.snapshot_meta(&snapshot.meta);
        w.raw(&snapshot.data);
        write_small_file(&self.dir, SNAPSHOT_FILE, &w.out).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = &self.shared;
        // Only the image is taken under `meta` (it must be the state at `last_applied`);
        // framing it and writing and syncing the file happen while entries go on applying.
        let (image, time_floor_ms, snapshot_meta) = {
            let mut meta = shared.meta.lock();
            let image = shared.engine.state_image();
            meta.snapshots_built += 1;
            let snapshot_id = match meta.last_applied {
                Some(id) => format!(
                    "{}-{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index, meta.snapshots_built
                ),
                None => format!("empty-{}", meta.snapshots_built),
            };
            let snapshot_meta = SnapshotMeta {
                last_log_id: meta.last_applied,
                last_membership: meta.membership.clone(),
                snapshot_id,
            };
            (image, meta.time_floor_ms, snapshot_meta)
        };
        let stored = StoredSnapshot {
            meta: snapshot_meta,
            data: snapshot_data(time_floor_ms, &image),
        };
        drop(image);
        let _writing = shared.snapshot_file.lock();
        let kept_is_newer = shared
            .meta
            .lock()
            .snapshot
            .as_ref()
            .is_some_and(|kept| kept.meta.last_log_id > stored.meta.last_log_id);
        if !kept_is_newer {
            shared.write_snapshot(&stored)?;
            shared.meta.lock().snapshot = Some(stored.clone());
        }
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let meta = self.shared.meta.lock();
        Ok((meta.last_applied, meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchAnswers>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = &self.shared;
        let mut meta = shared.meta.lock();
        let mut answers = Vec::new();
        for entry in entries {
            meta.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => answers.push(BatchAnswers::default()),
                EntryPayload::Normal(batch) => {
                    let now_ms = batch.now_ms.max(meta.time_floor_ms);
                    meta.time_floor_ms = now_ms;
                    let results = batch
                        .commands
                        .iter()
                        .map(|(command, seed)| shared.engine.execute(command, now_ms, *seed))
                        .collect();
                    answers.push(BatchAnswers(results));
                }
                EntryPayload::Membership(membership) => {
                    meta.membership = StoredMembership::new(Some(entry.log_id), membership);
                    answers.push(BatchAnswers::default());
                }
            }
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        snapshot_meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let shared = &self.shared;
        let data = snapshot.into_inner();
        let subject = || ErrorSubject::Snapshot(Some(snapshot_meta.signature()));
        let mut r = Reader::new(&data);
        let time_floor_ms = r
            .time_ms()
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        let _writing = shared.snapshot_file.lock();
        let mut meta = shared.meta.lock();
        shared
            .engine
            .restore_image(r.rest())
            .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
        meta.time_floor_ms = time_floor_ms;
        meta.last_applied = snapshot_meta.last_log_id;
        meta.membership = snapshot_meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: snapshot_meta.clone(),
            data,
        };
        shared.write_snapshot(&stored)?;
        meta.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let meta = self.shared.meta.lock();
        Ok(meta.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
