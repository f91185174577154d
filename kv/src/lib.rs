//! quorumlab's durability lab: a small key-value store whose only defence against a crash is
//! its write-ahead log.
//!
//! - [`record`]: the log's framed records (length, CRC-32C, sequence number, payload), the
//!   operations they carry, and [`record::scan`], which reads a log and stops at the first torn,
//!   corrupt or out-of-sequence record.
//! - [`store`]: [`Store`], a table in memory over a log file in a directory: a write is
//!   acknowledged only once it is durable under the store's [`Fsync`] policy, and opening a
//!   store replays its log and cuts off whatever follows the valid prefix. [`Shared`] lets
//!   threads write to one store, sharing each `fdatasync` under [`Fsync::Batch`] (group commit).
//! - [`simdisk`]: [`simdisk::SimDisk`], a page cache over durable storage where only `fsync`
//!   makes bytes (file sync) and names (directory sync) durable, and a seeded crash keeps some
//!   pending writes, in any order, whole or torn by sector.
//! - [`disk`]: [`Disk`], what the store asks of a disk; [`FsDisk`] and the simulated disk.
//! - [`crashsim`]: one seeded power cut of the store on the simulated disk, and its check;
//!   [`Broken`] builds that the check must catch.
//!
//! Checkpoints ([`Store::checkpoint`]) write the table to a snapshot (temporary file, sync,
//! rename, directory sync) and empty the log. The command line (`quorumlab kv`, with the crash sweep, the real SIGKILL
//! crash test and the benchmark) is in the `quorumlab` package.

pub mod crashsim;
pub mod disk;
pub mod record;
pub mod simdisk;
pub mod store;

pub use disk::{Disk, FsDisk};
pub use store::{Broken, Fsync, Shared, Store};

/// Why a store operation failed; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key or value over the limits.
    #[error("{0}")]
    Limit(String),
    /// The directory is not a store (or not one this version can read).
    #[error("{0}")]
    NotAStore(String),
    /// A sync failed earlier: what the page cache holds can no longer be trusted to reach the
    /// disk, so the store takes no more writes (reopen it to recover from the log).
    #[error("the store failed a sync and takes no more writes: {0}")]
    Failed(String),
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
}
