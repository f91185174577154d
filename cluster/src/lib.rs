//! The real-cluster driver: runs the same scenario files as the simulator against real clusters,
//! through a node agent on each host, and records histories in the shared format of
//! [`quorumlab_experiment`]. The layout mirrors the simulator's: one folder per system.
//!
//! - [`hosts`]: one network namespace per host, joined by a bridge (local labs need root).
//! - [`agent`]: the node agent, the only thing that touches processes and links on a host.
//! - [`machines`]: systemd-nspawn machines that behave like VMs (own systemd, SSH), on a bridge.
//! - [`inventory`]: the Ansible inventory that names hosts for provisioning and for runs alike.
//! - [`pki`]: the lab's CA and the agents' and driver's certificates (the agent speaks only TLS).
//! - [`lab`]: hosts, agents and `lab.json` — what every system's lab is made of, and `down`.
//! - [`netns`]: a tokio runtime inside one host's namespace, for driver code that runs *on* a host.
//! - [`run`]: what every real run shares: fired faults, errors, the real lab's fault contract.
//! - [`etcd`]: a real etcd cluster (`cluster up etcd`) and one real run of an etcd scenario.
//! - [`postgres`]: Postgres under Patroni on the lab's etcd, and one real run of a Postgres scenario.
//! - [`sharded`]: Postgres shards with the chunk map in the lab's etcd, a router, and chunk moves
//!   by logical replication.
//!
//! The dependency direction is fixed: `cluster` depends on `experiment` and `proto`, never on
//! `sim`; the CLI puts the two side by side (`compare`).

pub mod agent;
pub mod etcd;
pub mod hosts;
pub mod inventory;
pub mod lab;
pub mod machines;
pub mod mongodb;
pub mod netns;
pub mod pki;
pub mod postgres;
pub mod run;
pub mod sharded;

pub use quorumlab_experiment::Scenario;
