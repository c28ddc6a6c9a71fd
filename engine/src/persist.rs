//! Durability of the whole state: opening an engine from its data directory (snapshot plus log
//! replay), taking snapshots, and shutting down cleanly.
//!
//! Replay applies each logged record with the same `apply` the live engine used, so the
//! recovered state is the state that was acknowledged. A snapshot records, per shard, the last
//! record sequence it contains (its cut); replay skips records at or below the cut and insists
//! on an unbroken sequence after it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::catalog::{CaravanIdx, Catalog, CityIdx, HolderIdx, ProvinceIdx, SlotIdx};
use crate::clock::Clock;
use crate::engine::{Engine, EngineConfig};
use crate::error::EngineError;
use crate::machine::{
    IdempotencyEntry, KeyAnswer, KeyedOp, Profile, Receiver, RoomImage, ShardImage, ShardState,
};
use crate::model::{EndReason, Reservation, ReservationId, Status};
use crate::record::KeyOp;
use crate::record::{
    Reader, Record, WaveLayout, decode_waves, encode_waves, put_bytes, put_i64, put_id,
    put_opt_i64, put_stage, put_u32, put_u64, put_u128,
};
use crate::season::Season;
use crate::waitlist::WaitKey;
use crate::wal::{self, Storage, TornTail, Wal, WalConfig};

/// Snapshot payload format version written: 4 (the global part ends with the waiting rooms).
/// Version 3 (no rooms: read as none), version 2 (no profiles) and version 1 (waves without
/// flags; keys of reservations only) are still read.
const SNAPSHOT_VERSION: u32 = 4;
/// The oldest snapshot payload version still read.
const SNAPSHOT_VERSION_MIN: u32 = 1;

/// What recovery found and did.
#[derive(Debug)]
pub struct RecoveryReport {
    /// The snapshot started from: its LSN floor, if there was one.
    pub snapshot_lsn: Option<u64>,
    /// Records applied on top of the snapshot.
    pub records_replayed: u64,
    /// A torn last record that was cut off (and saved aside).
    pub torn_tail: Option<TornTail>,
    /// Holds and offers whose deadline passed while the engine was down, expired at start.
    pub expired_at_start: usize,
    /// Whether the schedule came from the log (an operator replaced it) instead of the season
    /// file.
    pub schedule_from_log: bool,
    /// Time spent recovering, in milliseconds.
    pub elapsed_ms: u64,
    /// Records that were durable once and are gone, accepted by the operator's override
    /// ([`crate::wal::MissingRecords::Accept`]); `None` if nothing was lost.
    pub accepted_loss: Option<String>,
}

/// One record read back from the log, kept until the snapshot has been applied.
struct Pending {
    shard: u16,
    shard_seq: u64,
    lsn: u64,
    kind: u8,
    start: usize,
    len: usize,
}

/// Threads that replay shards side by side at most.
const REPLAY_THREADS_MAX: usize = 4;

/// What replaying a run of records did.
struct Replayed {
    applied: u64,
    newest_ms: i64,
    schedule_seen: bool,
    /// Transfer records with their place in the log, noted in the transfer index afterwards
    /// in log order.
    transfers: Vec<(usize, Record)>,
    /// The first record that failed (its place in the log) and why.
    failure: Option<(usize, EngineError)>,
}

impl Default for Replayed {
    fn default() -> Replayed {
        Replayed {
            applied: 0,
            newest_ms: i64::MIN,
            schedule_seen: false,
            transfers: Vec::new(),
            failure: None,
        }
    }
}

impl Replayed {
    fn merge(&mut self, other: Replayed) {
        self.applied += other.applied;
        self.newest_ms = self.newest_ms.max(other.newest_ms);
        self.schedule_seen |= other.schedule_seen;
        self.transfers.extend(other.transfers);
        self.failure = match (self.failure.take(), other.failure) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
    }
}

/// Recovery's refusal of the record `rec`, saying which it is and `why`.
fn record_error(rec: &Pending, why: String) -> EngineError {
    EngineError::Recovery(format!(
        "record lsn {} (shard {}, seq {}): {why}",
        rec.lsn, rec.shard, rec.shard_seq
    ))
}

impl Engine {
    /// Opens the engine on `storage`: restores the latest snapshot, replays the log after it,
    /// checks every invariant, expires what fell due while it was down, and starts logging.
    /// Refuses to start, changing nothing on disk but a torn tail, if the log is corrupt or
    /// belongs to another catalog.
    pub fn open(
        catalog: Arc<Catalog>,
        season: Season,
        clock: Arc<dyn Clock>,
        storage: Arc<dyn Storage>,
        config: EngineConfig,
    ) -> Result<(Arc<Engine>, RecoveryReport), EngineError> {
        let started = crate::clock::Stopwatch::start();
        let mut engine = Engine::build(catalog, season, clock, config, None)?;
        let tag = engine.catalog.fingerprint();
        let mut arena = Vec::new();
        let mut pending = Vec::new();
        let recovered =
            wal::recover_with(&*storage, tag, engine.config.missing_records, &mut |rec| {
                pending.push(Pending {
                    shard: rec.shard,
                    shard_seq: rec.shard_seq,
                    lsn: rec.lsn,
                    kind: rec.kind,
                    start: arena.len(),
                    len: rec.payload.len(),
                });
                arena.extend_from_slice(rec.payload);
                Ok(())
            })
            .map_err(|e| EngineError::Recovery(e.to_string()))?;
        let shard_count = engine.shards.len() + 1;
        let mut last_seq = vec![0u64; shard_count];
        let snapshot_lsn = match &recovered.snapshot {
            Some((lsn, payload)) => {
                last_seq = engine
                    .restore_snapshot(payload)
                    .map_err(|e| EngineError::Recovery(format!("snapshot at lsn {lsn}: {e}")))?;
                Some(*lsn)
            }
            None => None,
        };
        let cut = last_seq.clone();
        let mut schedule_from_log = snapshot_lsn.is_some() && engine.schedule_in_snapshot;
        // Engine time must not step back across a restart, even if the clock is behind.
        let newest_ms = engine.newest_in_state_ms();
        let (replayed, newest_ms, schedule_in_log) = engine.replay_pending(
            &pending,
            &arena,
            &cut,
            &mut last_seq,
            recovered.accepted_loss.is_some(),
            newest_ms,
        )?;
        schedule_from_log |= schedule_in_log;
        drop(arena);
        engine.raise_time_to(newest_ms);
        if schedule_from_log && *engine.schedule() != engine.season.schedule {
            tracing::warn!(
                "the schedule replaced at run time (PUT /v1/admin/waves) is in force; the waves \
                 of the season file differ and are ignored"
            );
        }
        engine
            .check_invariants()
            .map_err(|e| EngineError::Recovery(format!("recovered state is inconsistent: {e}")))?;
        let wal_config = WalConfig {
            durability: engine.config.durability,
            segment_bytes_target: engine.config.segment_bytes_target,
            log_tag: tag,
            ..WalConfig::default()
        };
        engine.log_records_at_open = recovered.next_lsn.saturating_sub(1);
        let wal = Wal::open(storage, wal_config, recovered.next_lsn, last_seq)
            .map_err(|e| EngineError::Recovery(e.to_string()))?;
        engine.wal = Some(wal);
        let engine = Arc::new(engine);
        let (expired_at_start, ticket) = engine.expire_due()?;
        engine.wait(&crate::engine::Committed { value: (), ticket })?;
        if recovered.accepted_loss.is_some() {
            // A snapshot now covers the gap, so the next start needs no override.
            engine.snapshot()?;
        }
        let report = RecoveryReport {
            snapshot_lsn,
            records_replayed: replayed,
            torn_tail: recovered.torn_tail,
            expired_at_start,
            schedule_from_log,
            elapsed_ms: started.elapsed().as_millis() as u64,
            accepted_loss: recovered.accepted_loss,
        };
        tracing::info!(
            replayed,
            expired_at_start,
            elapsed_ms = report.elapsed_ms,
            "recovered"
        );
        Ok((engine, report))
    }

    /// Applies the records read back from the log after the snapshot's cuts, checking each
    /// shard's sequence; returns the records applied, the newest instant among them (at least
    /// `newest_ms`) and whether one replaced the schedule.
    ///
    /// Shards are independent (a record changes its own shard only), so when the log holds no
    /// schedule record (the one kind that is global) the shards are replayed on parallel
    /// threads, each in its own order; the error reported is then still the one of the first
    /// failing record in log order, as a sequential replay would report.
    fn replay_pending(
        &mut self,
        pending: &[Pending],
        arena: &[u8],
        cut: &[u64],
        last_seq: &mut [u64],
        accepted_loss: bool,
        newest_ms: i64,
    ) -> Result<(u64, i64, bool), EngineError> {
        let shard_count = last_seq.len();
        let fail = record_error;
        // Sequence checks first, in log order: they decide which records are applied.
        let mut plan: Vec<Vec<usize>> = vec![Vec::new(); shard_count];
        let mut stop: Option<(usize, EngineError)> = None;
        for (at, rec) in pending.iter().enumerate() {
            let s = usize::from(rec.shard);
            if s >= shard_count {
                stop = Some((at, fail(rec, "unknown shard".into())));
                break;
            }
            if rec.shard_seq <= cut[s] {
                continue;
            }
            if accepted_loss && rec.shard_seq > last_seq[s] + 1 {
                // The operator accepted that records before this one are gone.
                tracing::error!(
                    shard = s,
                    from = last_seq[s] + 1,
                    to = rec.shard_seq - 1,
                    "shard records missing (accepted)"
                );
                last_seq[s] = rec.shard_seq - 1;
            }
            if rec.shard_seq != last_seq[s] + 1 {
                let why = format!(
                    "expected seq {} (log and snapshot disagree)",
                    last_seq[s] + 1
                );
                stop = Some((at, fail(rec, why)));
                break;
            }
            last_seq[s] = rec.shard_seq;
            plan[s].push(at);
        }
        let global = self.shards.len();
        let workers = if plan.get(global).is_some_and(|p| !p.is_empty()) {
            // A schedule record orders itself against every shard's records: one thread.
            1
        } else if self.config.replay_threads > 0 {
            self.config.replay_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(REPLAY_THREADS_MAX))
        };
        let outcome = if workers <= 1 {
            let mut all: Vec<usize> = plan.into_iter().flatten().collect();
            all.sort_unstable();
            self.replay_in_order(pending, arena, &all)
        } else {
            self.replay_shards_in_parallel(pending, arena, plan, workers)
        };
        let first_failure = match (outcome.failure, stop) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        if let Some((_, error)) = first_failure {
            return Err(error);
        }
        for (_, record) in &outcome.transfers {
            self.note_replayed(record);
        }
        Ok((
            outcome.applied,
            newest_ms.max(outcome.newest_ms),
            outcome.schedule_seen,
        ))
    }

    /// Applies the records at `order` (indices into `pending`, ascending) one by one.
    fn replay_in_order(&self, pending: &[Pending], arena: &[u8], order: &[usize]) -> Replayed {
        let mut out = Replayed::default();
        for &at in order {
            if let Err(error) = self.replay_one(at, &pending[at], arena, &mut out) {
                out.failure = Some((at, error));
                break;
            }
        }
        out
    }

    /// Applies each shard's records on one of `workers` threads, the shards dealt out by
    /// record count, and merges what the threads found.
    fn replay_shards_in_parallel(
        &self,
        pending: &[Pending],
        arena: &[u8],
        plan: Vec<Vec<usize>>,
        workers: usize,
    ) -> Replayed {
        let mut shards: Vec<Vec<usize>> = plan.into_iter().filter(|p| !p.is_empty()).collect();
        shards.sort_unstable_by_key(|p| std::cmp::Reverse(p.len()));
        let mut lots: Vec<(usize, Vec<Vec<usize>>)> = vec![(0, Vec::new()); workers];
        for shard in shards {
            if let Some(lightest) = lots.iter_mut().min_by_key(|lot| lot.0) {
                lightest.0 += shard.len();
                lightest.1.push(shard);
            }
        }
        let results: Vec<Replayed> = std::thread::scope(|scope| {
            let handles: Vec<_> = lots
                .into_iter()
                .map(|(_, lot)| {
                    scope.spawn(move || {
                        let mut merged = Replayed::default();
                        for shard in lot {
                            merged.merge(self.replay_in_order(pending, arena, &shard));
                        }
                        merged
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Replayed {
                        failure: Some((
                            0,
                            EngineError::Recovery("a replay thread panicked".into()),
                        )),
                        ..Replayed::default()
                    })
                })
                .collect()
        });
        let mut out = Replayed::default();
        for result in results {
            out.merge(result);
        }
        out.transfers.sort_by_key(|(at, _)| *at);
        out
    }

    /// Decodes and applies one record.
    fn replay_one(
        &self,
        at: usize,
        rec: &Pending,
        arena: &[u8],
        out: &mut Replayed,
    ) -> Result<(), EngineError> {
        let fail = |why: String| record_error(rec, why);
        let record = Record::decode(rec.kind, &arena[rec.start..rec.start + rec.len], rec.shard)
            .map_err(fail)?;
        self.replay(usize::from(rec.shard), &record).map_err(fail)?;
        out.newest_ms = out.newest_ms.max(record.at_ms());
        out.schedule_seen |= matches!(record, Record::Schedule { .. });
        out.applied += 1;
        if matches!(record, Record::Transfer { .. }) {
            out.transfers.push((at, record));
        }
        Ok(())
    }

    /// Applies one replayed record to shard `s` (the last index is the global shard).
    fn replay(&self, s: usize, record: &Record) -> Result<(), String> {
        if s == self.shards.len() {
            return match record {
                Record::Schedule { .. } => {
                    let mut global = self.global.lock();
                    self.apply_schedule(&mut global, record);
                    Ok(())
                }
                Record::QueueSeed { .. } | Record::QueueJoin { .. } | Record::QueueAdmit { .. } => {
                    self.rooms.lock().apply(record)
                }
                _ => {
                    Err("only schedule and waiting-room records belong to the global shard".into())
                }
            };
        }
        if matches!(record, Record::Schedule { .. }) {
            return Err("a schedule record in a province shard".into());
        }
        let shard = &self.shards[s];
        let mut st = shard.state.lock();
        st.apply(&self.ctx(), &shard.counters, record)?;
        Ok(())
    }

    /// Writes a snapshot of the whole state and lets the log drop what it covers. Without a
    /// log it does nothing.
    pub fn snapshot(&self) -> Result<(), EngineError> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let _one_at_a_time = self.snapshot_lock.lock();
        // Everything durable now is in the state captured below (see the module docs).
        let lsn_floor = wal.durable_lsn();
        let (out, cuts) = self.encode_image(|shard| wal.staged_seq(shard));
        // The state captured may include records staged but not yet on disk. Writing the
        // snapshot before they are would let it hold decisions the log lost in a crash (never
        // acknowledged, and a gap in the log's sequence after it): wait for every cut first.
        for (shard, seq) in cuts {
            if seq > 0 {
                wal.wait_durable(crate::wal::Ticket { shard, seq })?;
            }
        }
        self.records_at_snapshot
            .store(self.records_committed(), Ordering::Relaxed);
        wal.write_snapshot(lsn_floor, &out)?;
        Ok(())
    }

    /// The snapshot payload of the whole state (module docs: the format), each shard's cut
    /// read by `cut_of` under its lock; returns the payload and the cuts it wrote.
    fn encode_image(&self, mut cut_of: impl FnMut(u16) -> u64) -> (Vec<u8>, Vec<(u16, u64)>) {
        let mut out = Vec::with_capacity(1 << 20);
        put_u32(&mut out, SNAPSHOT_VERSION);
        put_u64(&mut out, self.catalog.fingerprint());
        put_u32(&mut out, self.shards.len() as u32);
        let mut cuts = Vec::with_capacity(self.shards.len() + 1);
        {
            let global = self.global.lock();
            let cut = cut_of(self.shards.len() as u16);
            cuts.push((self.shards.len() as u16, cut));
            put_u64(&mut out, cut);
            out.push(u8::from(self.schedule_replaced.load(Ordering::Acquire)));
            encode_waves(&mut out, &global.waves, WaveLayout::V2);
            encode_rooms(&mut out, &self.rooms.lock());
        }
        for (p, shard) in self.shards.iter().enumerate() {
            let st = shard.state.lock();
            let cut = cut_of(p as u16);
            cuts.push((p as u16, cut));
            put_u64(&mut out, cut);
            encode_shard(&mut out, &st);
        }
        (out, cuts)
    }

    /// The whole state in the snapshot payload format, with every shard's cut 0: what a
    /// replicated state machine's snapshot carries (its position is the consensus log's, not
    /// this engine's). The caller makes sure no command runs meanwhile.
    pub fn state_image(&self) -> Vec<u8> {
        self.encode_image(|_| 0).0
    }

    /// Replaces the whole state by `image` (from [`Engine::state_image`] or a snapshot file),
    /// in place: every shard is emptied, then restored through the seat rule, then every
    /// invariant is checked. The caller makes sure no command runs meanwhile. On an error the
    /// state is unusable and the caller must stop.
    pub fn restore_image(&self, image: &[u8]) -> Result<(), EngineError> {
        let ranges = crate::engine::receipt_day_ranges(&self.catalog);
        let schedule = Arc::new(self.season.schedule.clone());
        *self.global.lock() = Arc::clone(&schedule);
        self.schedule_replaced.store(false, Ordering::Release);
        *self.rooms.lock() = crate::machine::Rooms::default();
        for (p, shard) in self.shards.iter().enumerate() {
            let (first, last) = ranges[p];
            let fresh = crate::machine::Shard::new(
                &self.catalog,
                ProvinceIdx(p as u16),
                Arc::clone(&schedule),
                first,
                last,
            );
            std::mem::swap(&mut *shard.state.lock(), &mut *fresh.state.lock());
            reset_counters(&fresh.counters, &shard.counters);
        }
        self.restore_image_into(image)
            .map_err(|e| EngineError::Recovery(format!("state image: {e}")))?;
        self.check_invariants()
            .map_err(|e| EngineError::Recovery(format!("restored state is inconsistent: {e}")))
    }

    /// Restores a snapshot into this empty engine; returns each shard's cut.
    fn restore_snapshot(&mut self, payload: &[u8]) -> Result<Vec<u64>, String> {
        let (cuts, replaced) = self.restore_image_into(payload)?;
        self.schedule_in_snapshot = replaced;
        Ok(cuts)
    }

    /// Restores a snapshot payload into empty shards; returns each shard's cut and whether
    /// the payload's schedule had been replaced.
    fn restore_image_into(&self, payload: &[u8]) -> Result<(Vec<u64>, bool), String> {
        let mut r = Reader::new(payload);
        let version = r.u32()?;
        if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&version) {
            return Err(format!("unsupported snapshot version {version}"));
        }
        let layout = if version == 1 {
            WaveLayout::V1
        } else {
            WaveLayout::V2
        };
        if r.u64()? != self.catalog.fingerprint() {
            return Err("taken over another catalog".into());
        }
        let shards = r.u32()? as usize;
        if shards != self.shards.len() {
            return Err(format!(
                "{shards} provinces in the snapshot, {} in the catalog",
                self.shards.len()
            ));
        }
        let mut cuts = vec![0u64; shards + 1];
        cuts[shards] = r.u64()?;
        let replaced = r.u8()? != 0;
        let waves = decode_waves(&mut r, layout)?;
        if version >= 4 {
            let mut rooms = self.rooms.lock();
            *rooms = crate::machine::Rooms::default();
            for image in decode_rooms(&mut r)? {
                rooms.restore(image)?;
            }
        }
        if replaced {
            // The schedule in force when the snapshot was taken, applied as its record would be.
            let record = Record::Schedule { at_ms: 0, waves };
            let mut global = self.global.lock();
            self.apply_schedule(&mut global, &record);
        }
        for (p, cut) in cuts.iter_mut().enumerate().take(shards) {
            *cut = r.u64()?;
            let image = decode_shard(&mut r, version, ProvinceIdx(p as u16))?;
            let shard = &self.shards[p];
            shard
                .state
                .lock()
                .restore(&self.ctx(), &shard.counters, image)?;
        }
        r.finish()?;
        self.rebuild_transfer_index();
        Ok((cuts, replaced))
    }

    /// Stops the expiry thread, takes a final snapshot and flushes the log. Returns an error
    /// if the log could not be made durable.
    pub fn shutdown(&self) -> Result<(), EngineError> {
        self.stop();
        if let Some(wal) = &self.wal {
            self.snapshot()?;
            wal.shutdown()?;
        }
        Ok(())
    }

    /// The cause of the log's fail-stop, if and only if a write or fsync of the log failed:
    /// from then on the engine acknowledges nothing, and only a restart (recovery) helps.
    pub fn log_failure(&self) -> Option<String> {
        self.wal.as_ref().and_then(|w| w.failure())
    }

    /// Write-ahead log counters since this process opened the log, if the engine logs.
    pub fn wal_stats(&self) -> Option<wal::WalStats> {
        self.wal.as_ref().map(|w| w.stats())
    }

    /// Records in the log since it was created, across restarts: the last LSN recovery found
    /// plus the records written since. `None` without a log.
    pub fn log_records_total(&self) -> Option<u64> {
        self.wal
            .as_ref()
            .map(|w| self.log_records_at_open + w.stats().records_written)
    }
}

/// Sets every counter of `to` to its value in `from` (a fresh shard's), except the records
/// committed, which count on.
fn reset_counters(from: &crate::machine::ShardCounters, to: &crate::machine::ShardCounters) {
    for (f, t) in from.free.iter().zip(to.free.iter()) {
        t.store(f.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    to.free_total
        .store(from.free_total.load(Ordering::Relaxed), Ordering::Relaxed);
    to.holds_live
        .store(from.holds_live.load(Ordering::Relaxed), Ordering::Relaxed);
    to.waiting
        .store(from.waiting.load(Ordering::Relaxed), Ordering::Relaxed);
    to.next_deadline_ms.store(
        from.next_deadline_ms.load(Ordering::Relaxed),
        Ordering::SeqCst,
    );
}

/// The waiting rooms (version 4): `u32 count`, then per room `bytes wave, i64 opens_at,
/// u64 seed, i64 outflow_since, u32 joins, (u32 holder, i64 at)*, u32 admissions,
/// (u64 admitted, i64 at)*`.
fn encode_rooms(out: &mut Vec<u8>, rooms: &crate::machine::Rooms) {
    let rooms: Vec<RoomImage> = rooms.iter().map(|room| room.image()).collect();
    put_u32(out, rooms.len() as u32);
    for room in rooms {
        put_bytes(out, room.wave.as_bytes());
        put_i64(out, room.opens_at_ms);
        put_u64(out, room.seed);
        put_i64(out, room.outflow_since_ms);
        put_u32(out, room.joins.len() as u32);
        for (holder, at_ms) in &room.joins {
            put_u32(out, holder.0);
            put_i64(out, *at_ms);
        }
        put_u32(out, room.admissions.len() as u32);
        for (admitted, at_ms) in &room.admissions {
            put_u64(out, *admitted);
            put_i64(out, *at_ms);
        }
    }
}

fn decode_rooms(r: &mut Reader<'_>) -> Result<Vec<RoomImage>, String> {
    let count = r.u32()? as usize;
    let mut rooms = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let wave = r.text("a room's wave name")?;
        let opens_at_ms = r.i64()?;
        let seed = r.u64()?;
        let outflow_since_ms = r.i64()?;
        let joins = r.u32()? as usize;
        let mut image = RoomImage {
            wave,
            opens_at_ms,
            seed,
            joins: Vec::with_capacity(joins.min(1 << 20)),
            admissions: Vec::new(),
            outflow_since_ms,
        };
        for _ in 0..joins {
            image.joins.push((HolderIdx(r.u32()?), r.i64()?));
        }
        let admissions = r.u32()? as usize;
        for _ in 0..admissions {
            image.admissions.push((r.u64()?, r.i64()?));
        }
        rooms.push(image);
    }
    Ok(rooms)
}

fn encode_shard(out: &mut Vec<u8>, st: &ShardState) {
    put_u64(out, st.waitlist.next_join_seq());
    put_u32(out, st.reservations.len() as u32);
    for r in &st.reservations {
        put_u128(out, r.id.secret);
        put_u32(out, r.holder.0);
        put_u32(out, r.caravan.0);
        out.push(r.status as u8);
        put_stage(out, r.stage);
        put_opt_i64(out, r.deadline_ms);
        put_i64(out, r.created_ms);
        put_i64(out, r.updated_ms);
        out.push(r.end_reason.map_or(0xFF, EndReason::code));
    }
    put_u32(out, st.waitlist.len() as u32);
    for (holder, key, city) in st.waitlist.iter() {
        put_u32(out, holder.0);
        put_u32(out, key.receipt_day as u32);
        put_u64(out, key.join_seq);
        put_u32(out, city.0);
    }
    let mut entries: Vec<_> = st
        .idempotency
        .iter()
        .flat_map(|(local, list)| list.iter().map(move |e| (*local, e)))
        .collect();
    // In holder order (each holder's keys in their own order), not the map's: the same state
    // then always has the same bytes, so replicas' images can be compared.
    entries.sort_by_key(|(local, _)| *local);
    put_u32(out, entries.len() as u32);
    for (local, e) in entries {
        put_u32(out, local);
        put_bytes(out, &e.key);
        put_i64(out, e.at_ms);
        match e.op {
            KeyedOp::Reserve { caravan } => {
                out.push(ENTRY_RESERVE);
                put_u32(out, caravan.0);
            }
            KeyedOp::On { op, reservation } => {
                out.push(op.code());
                put_id(out, reservation);
            }
            KeyedOp::Join => out.push(KeyOp::Join.code()),
        }
        match e.answer {
            KeyAnswer::Reservation {
                id,
                status,
                stage,
                deadline_ms,
            } => {
                out.push(0);
                put_id(out, id);
                out.push(status as u8);
                put_stage(out, stage);
                put_opt_i64(out, deadline_ms);
            }
            KeyAnswer::Place { position } => {
                out.push(1);
                put_u64(out, position);
            }
        }
    }
    encode_profiles(out, st);
}

/// A shard's changed profiles (version 3): `u32 count`, then per profile `u32 holder,
/// u32 city, u8 transferred` and, if transferred, `u64 national_id, bytes tracking_code`.
fn encode_profiles(out: &mut Vec<u8>, st: &ShardState) {
    let mut profiles: Vec<&Profile> = st.profiles.values().collect();
    // Map order is not deterministic; a snapshot's bytes should be.
    profiles.sort_unstable_by_key(|p| p.holder);
    put_u32(out, profiles.len() as u32);
    for p in profiles {
        put_u32(out, p.holder.0);
        put_u32(out, p.city.0);
        match &p.receiver {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                put_u64(out, r.national_id);
                put_bytes(out, r.tracking_code.as_bytes());
            }
        }
    }
}

fn decode_profiles(r: &mut Reader<'_>) -> Result<Vec<(HolderIdx, Profile)>, String> {
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let holder = HolderIdx(r.u32()?);
        let city = CityIdx(r.u32()?);
        let receiver = match r.u8()? {
            0 => None,
            1 => Some(Receiver {
                national_id: r.u64()?,
                tracking_code: String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| "a receiver's tracking code is not UTF-8")?
                    .into_boxed_str(),
            }),
            other => return Err(format!("bad transferred flag {other}")),
        };
        out.push((
            holder,
            Profile {
                holder,
                receiver,
                city,
            },
        ));
    }
    Ok(out)
}

/// The operation code of a reservation's key in a snapshot (the others are [`KeyOp::code`]).
const ENTRY_RESERVE: u8 = 0xFF;

/// Reads one remembered key after its holder and key bytes, in the snapshot `version`.
fn decode_entry(
    r: &mut Reader<'_>,
    shard: ProvinceIdx,
    version: u32,
) -> Result<(KeyedOp, i64, KeyAnswer), String> {
    if version == 1 {
        // Version 1 remembered reservations only.
        let caravan = CaravanIdx(r.u32()?);
        let id = r.id(shard)?;
        let at_ms = r.i64()?;
        let stage = r.stage()?;
        let deadline_ms = r.opt_i64()?;
        let status = if stage.is_some() {
            Status::Held
        } else {
            Status::Confirmed
        };
        let answer = KeyAnswer::Reservation {
            id,
            status,
            stage,
            deadline_ms,
        };
        return Ok((KeyedOp::Reserve { caravan }, at_ms, answer));
    }
    let at_ms = r.i64()?;
    let op = match r.u8()? {
        ENTRY_RESERVE => KeyedOp::Reserve {
            caravan: CaravanIdx(r.u32()?),
        },
        code => match KeyOp::from_code(code).ok_or_else(|| format!("unknown key use {code}"))? {
            KeyOp::Join => KeyedOp::Join,
            op => KeyedOp::On {
                op,
                reservation: r.id(shard)?,
            },
        },
    };
    let answer = match r.u8()? {
        0 => {
            let id = r.id(shard)?;
            let code = r.u8()?;
            let status = *Status::ALL
                .get(usize::from(code))
                .ok_or_else(|| format!("unknown status {code}"))?;
            KeyAnswer::Reservation {
                id,
                status,
                stage: r.stage()?,
                deadline_ms: r.opt_i64()?,
            }
        }
        1 => KeyAnswer::Place { position: r.u64()? },
        other => return Err(format!("unknown key answer {other}")),
    };
    Ok((op, at_ms, answer))
}

fn decode_shard(
    r: &mut Reader<'_>,
    version: u32,
    province: ProvinceIdx,
) -> Result<ShardImage, String> {
    let mut image = ShardImage {
        next_join_seq: r.u64()?,
        ..ShardImage::default()
    };
    let count = r.u32()? as usize;
    for slot in 0..count {
        let secret = r.u128()?;
        let id = ReservationId {
            shard: province,
            slot: SlotIdx(slot as u32),
            secret,
        };
        let holder = HolderIdx(r.u32()?);
        let caravan = CaravanIdx(r.u32()?);
        let status_code = r.u8()?;
        let status = *Status::ALL
            .get(usize::from(status_code))
            .ok_or_else(|| format!("unknown status {status_code}"))?;
        let stage = r.stage()?;
        let deadline_ms = r.opt_i64()?;
        let created_ms = r.i64()?;
        let updated_ms = r.i64()?;
        let end_reason = match r.u8()? {
            0xFF => None,
            code => Some(EndReason::from_code(code).ok_or_else(|| format!("bad reason {code}"))?),
        };
        image.reservations.push(Reservation {
            id,
            holder,
            caravan,
            status,
            stage,
            deadline_ms,
            created_ms,
            updated_ms,
            end_reason,
        });
    }
    let waiting = r.u32()? as usize;
    for _ in 0..waiting {
        let holder = HolderIdx(r.u32()?);
        let receipt_day = r.u32()? as i32;
        let join_seq = r.u64()?;
        let city = CityIdx(r.u32()?);
        let key = WaitKey {
            receipt_day,
            join_seq,
        };
        image.waiting.push((holder, key, city));
    }
    let entries = r.u32()? as usize;
    for _ in 0..entries {
        let local = r.u32()?;
        let key = r.bytes()?.to_vec().into_boxed_slice();
        let (op, at_ms, answer) = decode_entry(r, province, version)?;
        let entry = IdempotencyEntry {
            key,
            op,
            at_ms,
            answer,
        };
        image.keys.push((local, entry));
    }
    if version >= 3 {
        image.profiles = decode_profiles(r)?;
    }
    Ok(image)
}
