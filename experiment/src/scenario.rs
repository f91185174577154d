//! Scenarios: what to run, as data.
//!
//! A scenario file (TOML, in `scenarios/`) names the system under test, its topology, the client
//! workload, a schedule of faults and how long to run. The simulator and the real driver read the
//! same file, so a prediction and a measurement always answer the same question. The built-in
//! scenarios are compiled into the binary; any other `.toml` path works too, so a user can write a
//! new scenario without touching Rust.
//!
//! Faults name nodes symbolically (`leader`, `follower`, `rest`, `n3`): the runner resolves them at
//! the moment the fault fires, because which node leads is only known then.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fault::{Chaos, Fault, FaultStep, NodeRef};
use crate::postgres::PostgresSettings;
use crate::system::{System, SystemName};

/// Scenario files shipped with quorumlab, by name.
const BUILTIN: &[(&str, &str)] = &[
    (
        "etcd-leader-kill",
        include_str!("../../scenarios/etcd-leader-kill.toml"),
    ),
    (
        "etcd-leader-isolate",
        include_str!("../../scenarios/etcd-leader-isolate.toml"),
    ),
    (
        "etcd-minority-partition",
        include_str!("../../scenarios/etcd-minority-partition.toml"),
    ),
    (
        "etcd-bridge-partition",
        include_str!("../../scenarios/etcd-bridge-partition.toml"),
    ),
    (
        "etcd-chaos",
        include_str!("../../scenarios/etcd-chaos.toml"),
    ),
    ("pg-lag", include_str!("../../scenarios/pg-lag.toml")),
    (
        "pg-failover",
        include_str!("../../scenarios/pg-failover.toml"),
    ),
    (
        "pg-isolate-primary",
        include_str!("../../scenarios/pg-isolate-primary.toml"),
    ),
];

/// Largest cluster a scenario may ask for; Raft clusters beyond 7 voters are not a lab topic.
pub const NODES_MAX: usize = 7;

/// Why a scenario could not be loaded. Each message is one line that names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither a built-in name nor a readable file.
    #[error("unknown scenario '{name}' (built-in: {known}; or give a path to a .toml file)")]
    Unknown {
        /// What the user asked for.
        name: String,
        /// Comma-separated built-in names.
        known: String,
    },
    /// The file exists but could not be read.
    #[error("cannot read scenario file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML for a scenario.
    #[error("malformed scenario {source_name}: {reason}")]
    Malformed {
        /// File path or built-in name.
        source_name: String,
        /// What the parser said, folded to one line.
        reason: String,
    },
    /// The file parsed but describes something that cannot run.
    #[error("invalid scenario {name}: {reason}")]
    Invalid {
        /// Scenario name.
        name: String,
        /// What is impossible about it.
        reason: String,
    },
}

/// A complete scenario: the system under test with its settings, topology, workload, faults and
/// duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ScenarioFile", into = "ScenarioFile")]
pub struct Scenario {
    /// Name used on the command line and in reports.
    pub name: String,
    /// One or two sentences for the learner: what happens and what to look for.
    pub description: String,
    /// System under test, with the settings only it has.
    pub system: System,
    /// Nodes and their timing.
    pub topology: Topology,
    /// Simulated network defaults (the real driver uses the real network).
    pub network: Network,
    /// The clients and what they send.
    pub workload: Workload,
    /// Total run time, in milliseconds.
    pub duration_ms: u64,
    /// Faults at fixed times.
    pub faults: Vec<FaultStep>,
    /// Faults drawn at random from the seed, in addition to `faults`.
    pub chaos: Option<Chaos>,
}

/// A scenario as its TOML file (and its JSON form) spells it: the system's name, and each
/// system's settings table beside it. [`Scenario`] reads and writes through this shape, so files
/// and recorded runs keep their layout while the code sees one [`System`] value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    system: SystemName,
    topology: Topology,
    #[serde(default)]
    network: Network,
    workload: Workload,
    duration_ms: u64,
    #[serde(default)]
    faults: Vec<FaultStep>,
    #[serde(default)]
    chaos: Option<Chaos>,
    /// Replication and failover settings (required when `system = "postgres"`).
    #[serde(default)]
    postgres: Option<PostgresSettings>,
}

impl TryFrom<ScenarioFile> for Scenario {
    type Error = String;

    fn try_from(file: ScenarioFile) -> Result<Scenario, String> {
        let system = System::from_parts(file.system, file.postgres)?;
        Ok(Scenario {
            name: file.name,
            description: file.description,
            system,
            topology: file.topology,
            network: file.network,
            workload: file.workload,
            duration_ms: file.duration_ms,
            faults: file.faults,
            chaos: file.chaos,
        })
    }
}

impl From<Scenario> for ScenarioFile {
    fn from(s: Scenario) -> ScenarioFile {
        let (system, postgres) = s.system.into_parts();
        ScenarioFile {
            name: s.name,
            description: s.description,
            system,
            topology: s.topology,
            network: s.network,
            workload: s.workload,
            duration_ms: s.duration_ms,
            faults: s.faults,
            chaos: s.chaos,
            postgres,
        }
    }
}

/// Cluster shape and Raft timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Number of voting members (3 or 5 in the shipped scenarios).
    pub nodes: usize,
    /// Leader heartbeat interval (etcd `--heartbeat-interval`, default 100 ms).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Election timeout (etcd `--election-timeout`, default 1000 ms); randomized in [t, 2t).
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    100
}

fn default_election_timeout_ms() -> u64 {
    1000
}

/// Simulated one-way message latency bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Lowest one-way latency, in milliseconds.
    pub latency_ms_min: u64,
    /// Highest one-way latency, in milliseconds.
    pub latency_ms_max: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            latency_ms_min: 1,
            latency_ms_max: 5,
        }
    }
}

/// Client workload: how many clients, how fast, which operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Number of independent clients; each has at most one operation in flight.
    pub clients: usize,
    /// Total operations per second across all clients (open loop, divided evenly).
    pub rate_per_s: u64,
    /// Relative weight of `put`.
    pub put: u32,
    /// Relative weight of `get`.
    pub get: u32,
    /// Relative weight of compare-and-swap.
    pub cas: u32,
    /// Number of distinct keys.
    pub keys: u32,
    /// How long a client waits for one attempt before giving up on it.
    pub timeout_ms: u64,
    /// How many further attempts after a definite refusal (not-leader); a timeout is never retried,
    /// because its outcome is unknown.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_retries() -> u32 {
    3
}

impl Scenario {
    /// Names of the scenarios compiled into quorumlab.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(name, _)| *name).collect()
    }

    /// Loads a built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((name, text)) = BUILTIN.iter().find(|(name, _)| *name == name_or_path) {
            return Scenario::parse(text, name);
        }
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") || path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            return Scenario::parse(&text, &path.display().to_string());
        }
        Err(ScenarioError::Unknown {
            name: name_or_path.to_string(),
            known: Scenario::builtin_names().join(", "),
        })
    }

    /// Parses and validates scenario TOML; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Malformed {
            source_name: source_name.to_string(),
            reason: e.message().replace('\n', " "),
        })?;
        let name = file.name.clone();
        let scenario =
            Scenario::try_from(file).map_err(|reason| ScenarioError::Invalid { name, reason })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Returns the scenario with a different node count, validated again.
    pub fn with_nodes(mut self, nodes: usize) -> Result<Scenario, ScenarioError> {
        self.topology.nodes = nodes;
        self.validate()?;
        Ok(self)
    }

    /// Checks everything that would make the scenario impossible to run.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.check_shape()
            .and_then(|()| self.check_system())
            .and_then(|()| self.faults.iter().try_for_each(|s| self.check_fault(s)))
            .and_then(|()| self.check_chaos())
            .map_err(|reason| ScenarioError::Invalid {
                name: self.name.clone(),
                reason,
            })
    }

    /// Topology, network, workload and duration.
    fn check_shape(&self) -> Result<(), String> {
        let nodes = self.topology.nodes;
        if nodes == 0 || nodes > NODES_MAX {
            return Err(format!(
                "topology.nodes is {nodes}; it must be 1 to {NODES_MAX}"
            ));
        }
        let t = &self.topology;
        if t.heartbeat_ms == 0 || t.election_timeout_ms < 2 * t.heartbeat_ms {
            return Err(format!(
                "election_timeout_ms ({}) must be at least twice heartbeat_ms ({}), which must be > 0",
                t.election_timeout_ms, t.heartbeat_ms
            ));
        }
        if self.network.latency_ms_min > self.network.latency_ms_max {
            return Err("network.latency_ms_min exceeds latency_ms_max".into());
        }
        let w = &self.workload;
        if w.clients == 0 || w.keys == 0 || w.timeout_ms == 0 {
            return Err("workload.clients, keys and timeout_ms must be > 0".into());
        }
        if w.put + w.get + w.cas == 0 {
            return Err("workload mix is empty: put + get + cas weights are 0".into());
        }
        if self.duration_ms == 0 {
            return Err("duration_ms must be > 0".into());
        }
        Ok(())
    }

    /// What the system's own settings require.
    fn check_system(&self) -> Result<(), String> {
        let nodes = self.topology.nodes;
        match &self.system {
            System::Etcd => Ok(()),
            System::Postgres(pg) => {
                if nodes < 2 {
                    return Err(format!(
                        "a Postgres scenario needs at least 1 replica (topology.nodes >= 2); it asks for {}",
                        nodes.saturating_sub(1)
                    ));
                }
                pg.validate()?;
                let phases_ms: u64 = pg.phases.iter().map(|p| p.ms).sum();
                if phases_ms > self.duration_ms {
                    return Err(format!(
                        "postgres phases last {phases_ms} ms, longer than duration_ms ({})",
                        self.duration_ms
                    ));
                }
                Ok(())
            }
        }
    }

    /// One scheduled fault: in the run, naming nodes that exist, with sensible parameters.
    fn check_fault(&self, step: &FaultStep) -> Result<(), String> {
        let nodes = self.topology.nodes;
        let label = step.fault.label();
        if step.at_ms > self.duration_ms {
            return Err(format!(
                "fault '{label}' at {} ms is after the end of the run ({} ms)",
                step.at_ms, self.duration_ms
            ));
        }
        for node in step.fault.node_refs() {
            if let NodeRef::Node(id) = node {
                if id.index() >= nodes {
                    return Err(format!(
                        "fault '{label}' names {node}, but the cluster has only {nodes} nodes (n1..n{nodes})"
                    ));
                }
            }
        }
        match &step.fault {
            Fault::Partition { groups } if groups.len() < 2 || groups.iter().any(Vec::is_empty) => {
                Err("a partition needs at least two non-empty groups".into())
            }
            Fault::Loss { rate } | Fault::Duplicate { rate } if !(0.0..=1.0).contains(rate) => {
                Err(format!("rate {rate} is not a probability in [0, 1]"))
            }
            Fault::Delay { ms_max } if *ms_max < self.network.latency_ms_min => {
                Err("delay ms_max is below network.latency_ms_min".into())
            }
            Fault::Bridge { .. } if nodes < 3 => {
                Err("a bridge partition needs at least 3 nodes".into())
            }
            _ => Ok(()),
        }
    }

    /// The chaos window lies within the run.
    fn check_chaos(&self) -> Result<(), String> {
        match &self.chaos {
            Some(chaos) if chaos.from_ms >= chaos.to_ms || chaos.to_ms > self.duration_ms => {
                Err("chaos window must satisfy from_ms < to_ms <= duration_ms".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_scenario_parses_and_validates() {
        for name in Scenario::builtin_names() {
            let s = Scenario::load(name).unwrap();
            assert_eq!(s.name, name);
        }
    }

    #[test]
    fn unknown_scenario_names_the_builtins() {
        let err = Scenario::load("etcd-nope").unwrap_err().to_string();
        assert!(err.contains("unknown scenario 'etcd-nope'"), "{err}");
        assert!(err.contains("etcd-leader-kill"), "{err}");
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let err = Scenario::parse("name = ", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("malformed scenario x.toml"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn zero_nodes_and_missing_nodes_are_rejected() {
        let base = Scenario::load("etcd-leader-isolate").unwrap();
        let err = base.clone().with_nodes(0).unwrap_err().to_string();
        assert!(err.contains("topology.nodes is 0"), "{err}");
        let mut s = base;
        s.faults.push(FaultStep {
            at_ms: 10,
            fault: Fault::Crash {
                node: NodeRef::Node(crate::NodeId(9)),
            },
        });
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("names n9"), "{err}");
    }
}
