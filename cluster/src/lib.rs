//! The real-cluster driver: runs the same scenario files as the simulator against real etcd,
//! Postgres (with Patroni) and MongoDB clusters, through a node agent on each host, and records
//! histories in the shared format of [`quorumlab_experiment`].
//!
//! Not built yet: this crate holds the place in the workspace so the dependency direction is fixed
//! from the start (`cluster` depends on `experiment`, never on `sim`). See issue 3.

pub use quorumlab_experiment::Scenario;
