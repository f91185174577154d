//! The real-cluster driver: runs the same scenario files as the simulator against real clusters,
//! through a node agent on each host, and records histories in the shared format of
//! [`quorumlab_experiment`].
//!
//! - [`hosts`]: one network namespace per host, joined by a bridge (local labs need root).
//! - [`agent`]: the node agent, the only thing that touches processes and links on a host.
//! - [`etcd`]: a real etcd cluster's lifecycle (`cluster up/status/down`).
//! - [`run`]: one real run of a scenario: workload, leader polling, faults, measurements.
//!
//! The dependency direction is fixed: `cluster` depends on `experiment` and `proto`, never on
//! `sim`; the CLI puts the two side by side (`compare`).

pub mod agent;
pub mod etcd;
pub mod hosts;
pub mod pg_run;
pub mod postgres;
pub mod run;

pub use quorumlab_experiment::Scenario;
