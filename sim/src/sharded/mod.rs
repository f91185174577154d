//! The sharded-cluster model (`system = "sharded"`): config servers (the etcd model, holding the
//! routing table), shards, routers and the balancer, with chunk migrations as a protocol.
//!
//! Read in this order: `routing` (chunk entries and versions as the config store keeps them, in
//! the experiment crate, shared with the real cluster), `shard` (one shard as a pure state
//! machine, donor and recipient sides of a migration), `config` (the config servers' client),
//! `host` (the shard host and the world), `clients` (routers with their application clients, and
//! the balancer), `plan` (where a run starts, a growth replay included) and `run` (`run_sharded`:
//! faults on time and at migration steps, the end-state check).

pub mod clients;
pub mod config;
pub mod host;
pub mod plan;
pub mod run;
pub mod shard;

/// The routing table's entries and chunk bounds, shared with the real cluster.
pub use quorumlab_experiment::routing;
pub use run::{run_sharded, ShardedBuild, ShardedSim, ShardedSimRun, STEP_MS_DEFAULT};
