//! quorumlab's deterministic simulator.
//!
//! Real consensus code, simulated world: each etcd member is tikv's `raft` crate (a port of etcd's
//! own Raft library) wrapped in a pure state machine ([`node::EtcdNode`]), run on a
//! [turmoil](https://docs.rs/turmoil) host with a simulated network and clock. A run is a pure
//! function of the scenario and the seed ([`run::run`]); a sweep runs many seeds in parallel
//! ([`sweep::sweep`]).
//!
//! Reading order for a learner: [`node`] (how an election and a write happen), [`host`] (how the
//! node meets the network), [`run`] (how faults are injected), [`invariants`] (what must never
//! break).

pub mod host;
pub mod invariants;
pub mod mongodb;
pub mod node;
pub mod postgres;
pub mod run;
pub mod sharded;
pub mod shrink;
pub mod sweep;
pub mod trace;
pub mod wire;

pub use run::{run, RunConfig, RunOutput, SimError};
