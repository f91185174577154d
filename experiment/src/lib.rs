//! The lab's shared vocabulary, used alike by the simulator (`quorumlab-sim`) and the real-cluster
//! driver (`quorumlab-cluster`).
//!
//! Six words run through quorumlab, after etcd's robustness tests: a **scenario** (a TOML data file)
//! names a topology, a **workload** and a schedule of **faults**; running it records a **history** of
//! client operations; a **checker** judges the history; a **report** shows what happened. Nothing here
//! does I/O beyond reading a scenario file, and nothing knows whether the cluster was simulated or real.

pub mod checker;
pub mod consistency;
pub mod edn;
pub mod fault;
pub mod history;
pub mod history_page;
pub mod jepsen;
pub mod jepsen_log;
pub mod measure;
pub mod mongodb;
pub mod node;
pub mod postgres;
mod problem;
pub mod rebalance;
pub mod register;
pub mod replication;
pub mod replset;
pub mod report;
pub mod routing;
pub mod secret;
pub mod sharded;

pub mod scenario;
pub mod stats;
pub mod system;

pub use checker::{check_history, CheckLimits, Verdict};
pub use fault::{Fault, FaultStep, NodeRef};
pub use history::{History, Op, OpKind, Outcome};
pub use measure::{Distribution, RunSummary, SafetyCounts};
pub use node::NodeId;
pub use scenario::{Scenario, ScenarioError};
pub use system::{System, SystemName};
