//! TEMPORARY stub of the write-ahead log API, replaced by the real module.
#![allow(missing_docs, dead_code, unused_variables)]
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability { #[default] Fsync, None }
#[derive(Clone, Debug)]
pub struct WalConfig { pub durability: Durability, pub segment_bytes_target: u64, pub staged_bytes_max: usize, pub log_tag: u64 }
impl Default for WalConfig { fn default() -> Self { WalConfig { durability: Durability::Fsync, segment_bytes_target: 64 << 20, staged_bytes_max: 256 << 20, log_tag: 0 } } }
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket { pub shard: u16, pub seq: u64 }
#[derive(thiserror::Error, Debug)]
pub enum WalError {
    #[error("io {context}: {source}")] Io { context: String, source: std::io::Error },
    #[error("failed: {cause}")] Failed { cause: String },
    #[error("backpressure")] Backpressure,
    #[error("too large {bytes}")] RecordTooLarge { bytes: usize },
    #[error("corrupt {segment} at {offset}: {reason}")] Corrupt { segment: String, offset: u64, reason: String },
    #[error("tag mismatch")] TagMismatch { expected: u64, found: u64, file: String },
}
pub struct RecordRef<'a> { pub lsn: u64, pub shard: u16, pub shard_seq: u64, pub kind: u8, pub payload: &'a [u8] }
#[derive(Debug)]
pub struct TornTail { pub segment: String, pub offset: u64, pub bytes: u64, pub saved_as: String }
pub struct Recovered { pub snapshot: Option<(u64, Vec<u8>)>, pub next_lsn: u64, pub torn_tail: Option<TornTail>, pub records_replayed: u64 }
pub trait Storage: Send + Sync + 'static {}
pub fn recover(storage: &dyn Storage, log_tag: u64, on_record: &mut dyn FnMut(RecordRef<'_>) -> Result<(), String>) -> Result<Recovered, WalError> { unimplemented!() }
pub struct Wal;
pub struct DurableFuture;
impl std::future::Future for DurableFuture { type Output = Result<(), WalError>; fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> { unimplemented!() } }
#[derive(Clone, Debug, Default)]
pub struct WalStats { pub batches: u64, pub fsyncs: u64, pub records_written: u64, pub bytes_written: u64, pub segments_created: u64 }
impl Wal {
    pub fn open(storage: Arc<dyn Storage>, config: WalConfig, next_lsn: u64, shard_seqs: Vec<u64>) -> Result<Arc<Wal>, WalError> { unimplemented!() }
    pub fn append(&self, shard: u16, kind: u8, payload: &[u8]) -> Result<Ticket, WalError> { unimplemented!() }
    pub fn staged_seq(&self, shard: u16) -> u64 { unimplemented!() }
    pub fn durable_lsn(&self) -> u64 { unimplemented!() }
    pub fn is_durable(&self, t: Ticket) -> Result<bool, WalError> { unimplemented!() }
    pub fn wait_durable(&self, t: Ticket) -> Result<(), WalError> { unimplemented!() }
    pub fn durable(self: &Arc<Self>, t: Ticket) -> DurableFuture { unimplemented!() }
    pub fn sync_now(&self) -> Result<u64, WalError> { unimplemented!() }
    pub fn write_snapshot(&self, lsn_floor: u64, payload: &[u8]) -> Result<(), WalError> { unimplemented!() }
    pub fn shutdown(&self) -> Result<(), WalError> { unimplemented!() }
    pub fn stats(&self) -> WalStats { unimplemented!() }
}
