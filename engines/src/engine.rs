//! What the experiment asks of a storage engine, and the settings both engines share.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::workload::Op;

/// How durable an acknowledged write is, the same for both engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Each commit waits for its WAL record to be synced (Postgres `synchronous_commit = on`,
    /// RocksDB `WriteOptions::sync`).
    Synced,
    /// Commits return once the WAL record is written, not synced (Postgres
    /// `synchronous_commit = off`, RocksDB without sync): a crash may lose the last moments.
    Relaxed,
}

/// The settings both engines run with, written into the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shared {
    pub durability: Durability,
    /// Postgres `shared_buffers` and RocksDB's block cache, in MiB.
    pub cache_mib: u64,
    pub value_bytes: usize,
    pub threads: usize,
}

/// The engine's own count of what it wrote to disk, and what it holds there.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Written {
    /// WAL bytes written.
    pub wal_bytes: u64,
    /// Data-file bytes written: Postgres pages written out, RocksDB flushes and compactions.
    pub data_bytes: u64,
}

impl Written {
    pub fn total(&self) -> u64 {
        self.wal_bytes + self.data_bytes
    }

    /// What was written between `before` and `self`.
    pub fn since(&self, before: &Written) -> Written {
        Written {
            wal_bytes: self.wal_bytes.saturating_sub(before.wal_bytes),
            data_bytes: self.data_bytes.saturating_sub(before.data_bytes),
        }
    }
}

/// Bytes on disk: the data (table and index, or SST files) and the write-ahead log.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Footprint {
    pub data_bytes: u64,
    pub wal_bytes: u64,
}

impl Footprint {
    pub fn total(&self) -> u64 {
        self.data_bytes + self.wal_bytes
    }
}

/// One storage engine holding one key space.
pub trait Engine: Sync {
    /// `postgres` or `rocksdb`.
    fn name(&self) -> &'static str;
    /// Writes keys `from..to` in one batch (one transaction, one write batch), values from
    /// `value`.
    fn load_batch(&self, from: u64, to: u64, value: &dyn Fn(u64, &mut [u8])) -> Result<()>;
    /// What a careful operator does after a bulk load, before serving (Postgres: `VACUUM
    /// (ANALYZE)`, which sets the visibility map and statistics autovacuum would otherwise set
    /// during the first measured phases). Counted in the load.
    fn after_load(&self) -> Result<()> {
        Ok(())
    }
    /// A client for one worker thread (Postgres: its own connection).
    fn client(&self) -> Result<Box<dyn Client + '_>>;
    /// Puts what is in memory on disk, as the engine would eventually (Postgres `CHECKPOINT`,
    /// RocksDB a memtable flush), so the bytes written count what the operations cost.
    fn settle(&self) -> Result<()>;
    fn written(&self) -> Result<Written>;
    fn footprint(&self) -> Result<Footprint>;
    /// Waits (up to `limit`) until the engine's own background work is idle, so one engine's
    /// compactions do not run during the other's phase on the same cores. Returns whether it
    /// went idle.
    fn quiesce(&self, limit: std::time::Duration) -> Result<bool>;
    /// The value stored under `key`, for checking that both engines hold the same data.
    fn fetch(&self, key: u64) -> Result<Option<Vec<u8>>>;
    /// Bytes compaction still owes (RocksDB's estimate); `None` for an engine without one.
    fn compaction_debt(&self) -> Result<Option<u64>>;
    /// The engine's settings as it reports them, for the report.
    fn settings(&self) -> Result<Vec<(String, String)>>;
}

/// One worker's handle on an engine.
pub trait Client {
    /// Carries out `op`; `value` is the bytes a write writes.
    fn apply(&mut self, op: Op, value: &[u8]) -> Result<()>;

    /// Work a fresh client does once before the clock starts (Postgres: prepare its statements
    /// and load the table's metadata into its new backend), so the first operations of a phase
    /// do not carry it.
    fn warm_up(&mut self) -> Result<()> {
        Ok(())
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Synced => "synced",
            Durability::Relaxed => "relaxed",
        })
    }
}
