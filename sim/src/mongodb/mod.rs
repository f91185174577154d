//! The MongoDB model: a replica set under protocol version 1 — heartbeats, elections with dry
//! runs, priority takeover, the oplog pulled by secondaries, the majority commit point, write and
//! read concerns, step-down and rollback.
//!
//! Reading order: [`oplog`] (optimes, entries, the common point), [`member`] (one member as a
//! pure state machine: its messages, timers and client calls; then `member/election.rs` and
//! `member/sync.rs`, the elections and the oplog between members), [`host`] (how a member meets the simulated network), [`clients`] (the
//! application and its instruments), [`run`] (one scenario run and its measurements, the same
//! ones the real driver takes).

pub mod clients;
pub mod host;
pub mod member;
pub mod oplog;
pub mod run;

pub use run::{run_mongo, MongoSimRun};
